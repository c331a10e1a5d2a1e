"""Validation in training (issue 13): the fixed validation set and its split over ranks, the held-out
split of ``prepare --val-fraction``, the loss curve, and on 2 real ranks: val loss logged, exact across
SIGKILL + resume, and training unchanged by it."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines import build_loader
from data_pipelines.loader import SkipLog, read_shard
from nuwa_ds.config import ConfigError, DataConfig, NuwaConfig, RunConfig
from nuwa_ds.training.validation import build_val_batches, model_inputs, plot_loss_curve, read_curves
from test_train_utils import (TWO_RANK_STEPS, events, kill_run, logged_step, records, run, segments, start, train_cmd,
                              wait_for, write_token_shards)

TINY = NuwaConfig.preset("tiny")  # vocab 256, patch 4


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["orders"] == y["orders"] and torch.equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))


def test_val_set_is_fixed_disjoint_and_even_over_ranks(tmp_path):
    shards = write_token_shards(tmp_path / "val", shards=3, per_shard=8, shape=(1, 12, 12))
    cfg = DataConfig(val_shards=shards, canvas=(1, 8, 8), caption_dropout=1.0, seed=7,
                     orders={"down": 1.0, "up": 1.0, "left": 0.0})
    ranks = [build_val_batches(cfg, TINY, r, 2, 2, 3) for r in range(2)]
    assert [len(b) for b in ranks] == [3, 3] and _same(ranks[0], build_val_batches(cfg, TINY, 0, 2, 2, 3))
    assert not _same(ranks[0], ranks[1])
    # the set of 2 ranks is the set of 1 rank, dealt out: batch j of rank r is global batch r + 2j
    single = build_val_batches(cfg, TINY, 0, 1, 2, 6)
    assert _same(ranks[0], single[0::2]) and _same(ranks[1], single[1::2])
    examples = [bytes(t.numpy().astype(np.int16)) for b in single for t in b["tokens"]]
    assert len(set(examples)) == 12  # 12 distinct crops
    assert {o for b in single for o in b["orders"]} <= {"down", "up"}
    for b in single:
        assert b["tokens"].shape == (2, 1, 8, 8) and b["text"] is None
    # another data seed: other crops / orders / choice of examples
    other = build_val_batches(dataclasses.replace(cfg, seed=8), TINY, 0, 1, 2, 6)
    assert not _same(single, other)
    # asking for more than the shards hold: the same, smaller number on every rank (24 samples = 12 batches)
    big = [build_val_batches(cfg, TINY, r, 4, 2, 5) for r in range(4)]
    assert [len(b) for b in big] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="fewer than the 16 ranks"):
        build_val_batches(cfg, TINY, 0, 16, 2, 1)
    # synthetic training data: a synthetic stream no training rank draws
    synth = DataConfig(canvas=(1, 8, 8))
    s0, s1 = (build_val_batches(synth, TINY, r, 2, 2, 2) for r in range(2))
    assert _same(s0, build_val_batches(synth, TINY, 0, 2, 2, 2)) and not _same(s0, s1)
    train0 = iter(build_loader(synth, TINY, 0, 2, 2))
    assert not any(_same([v], [next(train0)]) for v in s0)


def test_model_inputs_pass_extra_keys_through():
    batch = {"tokens": torch.zeros(2, 1, 4, 4, dtype=torch.long), "orders": ["down", "up"], "text": None,
             "rows": torch.tensor([0, 3]), "_stream": {"stream": 0}}
    inputs = model_inputs(batch, torch.device("cpu"))
    assert set(inputs) == {"tokens", "order", "text", "return_logits", "rows"}
    assert inputs["order"] == ["down", "up"] and inputs["return_logits"] is False
    assert torch.equal(inputs["rows"], torch.tensor([0, 3]))


def test_config_keys():
    cfg = RunConfig.preset("tiny").override(["train.eval_every=5", "train.eval_batches=2"])
    assert cfg.train.eval_every == 5 and cfg.data.val_shards is None
    cfg.validate()
    with pytest.raises(ConfigError, match="needs data.val_shards"):
        cfg.override(["data.shards=a-{0..1}.tar"]).validate()
    with pytest.raises(ConfigError, match="eval_batches"):
        cfg.override(["train.eval_batches=0"]).validate()


def test_loss_curve_from_a_resumed_metrics_file(tmp_path):
    lines = [{"event": "start", "step": 0}, *({"step": s, "loss": 5.0 - 0.1 * s} for s in range(1, 7)),
             {"event": "eval", "step": 4, "val_loss": 4.8}, {"event": "eval", "step": 6, "val_loss": 9.9},
             {"event": "start", "step": 4},  # killed after 6, resumed from 4: 5, 6 are written again
             *({"step": s, "loss": 4.0 - 0.1 * s} for s in range(5, 9)), {"event": "eval", "step": 8, "val_loss": 4.2}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 9, "lo')  # a line cut by a kill
    train, val = read_curves(path)
    assert sorted(train) == list(range(1, 9)) and train[5] == pytest.approx(3.5) and train[4] == pytest.approx(4.6)
    assert val == {4: 4.8, 8: 4.2}
    out = plot_loss_curve(path, tmp_path / "curve.png")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (400, 640, 3)
    blue = ((img[..., 2] > 150) & (img[..., 0] < 80)).sum()
    red = ((img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)).sum()
    assert blue > 200 and red > 50  # both curves drawn, in different colours


# ----------------------------------------------------------------------------------------------
# prepare --val-fraction


def _origins(directory: Path, prefix: str) -> dict[str, bytes]:
    out = {}
    for shard in sorted(directory.glob(f"{prefix}-*.tar")):
        for tokens, meta, key in read_shard(str(shard), SkipLog()):
            out[meta["source"]] = tokens.tobytes()
    return out


def test_prepare_val_fraction_is_a_deterministic_disjoint_split(tmp_path):
    from data_pipelines.prepare import held_out, prepare_shards
    from nuwa_ds.tokenizer import demo_pictures
    from test_data import small_tokenizer

    (tmp_path / "in").mkdir()
    pics = list(demo_pictures().values())
    for i in range(16):
        array = pics[i % len(pics)]
        Image.fromarray(array[8 * i: 8 * i + 64, :64]).save(tmp_path / "in" / f"pic{i:02d}.png")
    opts = dict(device="cpu", image_size=32, patch_size=2, shard_maxcount=3, progress=False, val_fraction=0.3)
    tok = small_tokenizer()
    first = prepare_shards(tmp_path / "in", tmp_path / "a", tok, **opts)
    train, val = _origins(tmp_path / "a", "shard"), _origins(tmp_path / "a", "val-shard")
    assert first["num_samples"] == len(train) and first["val_samples"] == len(val) and len(train) + len(val) == 16
    assert 0 < len(val) < 16 and not set(train) & set(val)
    assert set(val) == {o for o in [*train, *val] if held_out(o, 0.3)}  # the split is the stated hash rule
    assert first["val_shards"] == "val-shard-{000000..%06d}.tar" % (first["val_num_shards"] - 1)
    assert first["counts"]["images"] == 16

    # the same inputs again, interrupted after the first finished training (or held-out) shard and
    # resumed: the same shards, samples and counts
    class Interrupted(Exception):
        pass

    for where in ("shard-", "val-shard-"):
        def stop(path, state):
            if path.name.startswith(where):
                raise Interrupted

        out = tmp_path / where
        with pytest.raises(Interrupted):
            prepare_shards(tmp_path / "in", out, tok, on_shard_closed=stop, **opts)
        second = prepare_shards(tmp_path / "in", out, tok, **opts)
        for key in ("shard_samples", "val_shard_samples", "counts"):
            assert second[key] == first[key], (where, key)
        for shard in [*(tmp_path / "a").glob("shard-*.tar"), *(tmp_path / "a").glob("val-shard-*.tar")]:
            assert (out / shard.name).read_bytes() == shard.read_bytes(), (where, shard.name)

    # both patterns load
    for key in ("shards", "val_shards"):
        cfg = DataConfig(shards=str(tmp_path / "a" / first[key]), canvas=(1, 4, 4), num_workers=0, shuffle_buffer=4)
        batch = next(iter(build_loader(cfg, TINY, 0, 1, 2)))
        assert batch["tokens"].shape == (2, 1, 4, 4)
    cfg = DataConfig(val_shards=str(tmp_path / "a" / first["val_shards"]), canvas=(1, 4, 4))
    assert len(build_val_batches(cfg, TINY, 0, 1, 1, 2)) == 2


# ----------------------------------------------------------------------------------------------
# On 2 real ranks


@pytest.mark.slow
def test_val_loss_exact_across_sigkill_and_resume_zero3(zero_runs, tmp_path):
    """ZeRO-3, 2 ranks, val every 2 steps on held-out token shards (synthetic training data, as the
    shared zero_runs): (1) val loss logged and finite in metrics.jsonl, the history file and the loss
    curve written; (2) training is unchanged by validation (losses equal the eval_every=0 run's bit for
    bit, which logs no eval at all); (3) killed after step 6 (checkpoint at 4) and resumed, every val
    value equals the uninterrupted run's, and the eval history survives the resume."""
    shards = write_token_shards(tmp_path / "val", shards=3, per_shard=8, shape=(1, 12, 12))
    args = ["train.ds_config=zero3", *TWO_RANK_STEPS, "train.eval_every=2", "train.eval_batches=2",
            f"data.val_shards={shards}"]
    plain = zero_runs(3)
    assert not events(plain, "eval") and not (plain / "eval_history.json").exists()
    assert all("bits_per_token" in r for r in records(plain) if "loss" in r and "event" not in r)

    ref_dir = tmp_path / "ref"
    assert run(train_cmd(2, ref_dir, *args), tmp_path / "ref.txt") == 0, (tmp_path / "ref.txt").read_text()[-3000:]
    ref = {e["step"]: e for e in events(ref_dir, "eval")}
    assert sorted(ref) == [2, 4, 6, 8, 10, 12]
    for e in ref.values():
        assert math.isfinite(e["val_loss"]) and e["val_bits_per_token"] == pytest.approx(e["val_loss"] / math.log(2))
        assert e["val_tokens"] == 2 * 2 * 1 * 64  # ranks x batches x micro-batch x 8x8 tokens
    (ref_losses,) = segments(ref_dir)
    (plain_losses,) = segments(plain)
    assert ref_losses == plain_losses  # bitwise: validation does not change training
    history = json.loads((ref_dir / "eval_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    assert Image.open(ref_dir / "loss_curve.png").size == (640, 400)
    # token shards without a manifest name no tokenizer: one line at the start, no pictures, no failure
    assert (tmp_path / "ref.txt").read_text().count("sample pictures off: no manifest.json") == 1
    assert not (ref_dir / "samples").exists() and not events(ref_dir, "samples")

    run_dir, log = tmp_path / "run", tmp_path / "killed.txt"
    cmd = train_cmd(2, run_dir, *args)
    proc = start(cmd, log, NUWA_FAULT_PAUSE_AT_STEP=6)
    wait_for(lambda: logged_step(run_dir, 6)() and "pausing after step 6" in log.read_text(), proc, log)
    kill_run(proc)  # torchrun and its ranks
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert run(cmd + ["--resume", "auto"], tmp_path / "resumed.txt") == 0, (tmp_path / "resumed.txt").read_text()[-3000:]
    starts = [i for i, r in enumerate(records(run_dir)) if r.get("event") == "start"]
    evals = [(i > starts[1], r) for i, r in enumerate(records(run_dir)) if r.get("event") == "eval"]
    # killed: 2, 4, 6; resumed from the checkpoint of step 4: 6 again, 8, 10, 12
    assert [(resumed, r["step"]) for resumed, r in evals] == [(False, 2), (False, 4), (False, 6), (True, 6),
                                                               (True, 8), (True, 10), (True, 12)]
    for resumed, e in evals:
        assert e["val_loss"] == pytest.approx(ref[e["step"]]["val_loss"], rel=1e-7, abs=0), e["step"]
    resumed_history = json.loads((run_dir / "eval_history.json").read_text())
    assert [h["step"] for h in resumed_history] == [2, 4, 6, 8, 10, 12]
    for h, r in zip(resumed_history, history):
        assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-7, abs=0)
    train_curve, val_curve = read_curves(run_dir / "metrics.jsonl")
    assert train_curve == pytest.approx(ref_losses) and sorted(val_curve) == [2, 4, 6, 8, 10, 12]
