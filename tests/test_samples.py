"""Sample pictures during training (issue 13): the decoder found through the shards' manifest (or
train.sample_tokenizer, or none: one line, no pictures), the grid, and on 2 real ZeRO-3 ranks: a grid
PNG per evaluation with the wide canvas, the TensorBoard image, and losses unchanged, bitwise."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nuwa_ds.config import ConfigError, RunConfig
from nuwa_ds.model import NuwaInfinity
from nuwa_ds.tokenizer import VQConfig, VQTokenizer, demo_pictures
from nuwa_ds.training.distributed import DistEnv
from nuwa_ds.training.samples import GAP, Sampler, find_tokenizer, grid_picture, load_tokenizer
from nuwa_ds.training.validation import build_val_batches
from test_data import small_tokenizer
from test_train_utils import events, run, segments, train_cmd, write_token_shards

F = 8  # small_tokenizer(): demo-f8, 256 codes (the tiny model's vocabulary)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[str, Path]:
    """(shard pattern, tokenizer directory): 8 photographs of 64 x 96 px -> 8 x 12 tokens, prepared
    with a saved tokenizer, so the manifest names it."""
    from data_pipelines.prepare import prepare_shards

    root = tmp_path_factory.mktemp("prepared")
    (root / "in").mkdir()
    pics = list(demo_pictures().values())
    for i in range(8):
        Image.fromarray(pics[i % len(pics)][8 * i: 8 * i + 64, :96]).save(root / "in" / f"pic{i}.png")
    small_tokenizer().save_pretrained(root / "tok")
    manifest = prepare_shards(root / "in", root / "shards", str(root / "tok"), device="cpu", image_size=64,
                              patch_size=4, progress=False)
    return str(root / "shards" / manifest["shards"]), root / "tok"


def _cfg(*overrides: str) -> RunConfig:
    return RunConfig.preset("tiny").override(["data.canvas=[1,4,4]", "train.eval_every=2", *overrides])


def _trainer(cfg: RunConfig, model, run_dir: Path):
    """What the Sampler reads of a one-rank Trainer (the model as a ZeRO-1/2 engine holds it: whole)."""
    return types.SimpleNamespace(cfg=cfg, dist=DistEnv(0, 1, 0, 1, "python"), device=torch.device("cpu"),
                                 engine=types.SimpleNamespace(module=model), run_dir=run_dir)


class _Logger:
    def __init__(self):
        self.images, self.events = [], []

    def image(self, step, tag, picture):
        self.images.append((step, tag, picture.shape))

    def event(self, name, message=None, **fields):
        self.events.append({"event": name, **fields})


def test_tokenizer_from_the_manifest_the_override_or_none(prepared, tmp_path):
    shards, tok = prepared
    cfg = _cfg(f"data.shards={shards}", f"data.val_shards={shards}")
    path, fingerprint, origin = find_tokenizer(cfg)
    assert path == tok.resolve() and origin.endswith("manifest.json") and fingerprint["weights_sha256"]
    tokenizer, origin = load_tokenizer(cfg, "cpu")
    assert tokenizer.codebook_size == 256 and str(tok.resolve()) in origin
    # the override wins; a tokenizer of another vocabulary or other weights is refused, with the reason
    other = tmp_path / "other"
    small_tokenizer(64).save_pretrained(other)
    assert find_tokenizer(cfg.override([f"train.sample_tokenizer={other}"]))[0] == other
    tokenizer, why = load_tokenizer(cfg.override([f"train.sample_tokenizer={other}"]), "cpu")
    assert tokenizer is None and "64 codes" in why
    # shards whose manifest names a tokenizer of other weights (retrained in place): refused
    moved = tmp_path / "moved"
    shutil.copytree(Path(shards).parent, moved)
    meta = json.loads((moved / "manifest.json").read_text())
    torch.manual_seed(1)
    VQTokenizer(VQConfig.preset("demo-f8", n_embed=256)).save_pretrained(tmp_path / "retrained")
    (moved / "manifest.json").write_text(json.dumps({**meta, "tokenizer_path": str(tmp_path / "retrained")}))
    moved_shards = str(moved / Path(shards).name)
    tokenizer, why = load_tokenizer(_cfg(f"data.shards={moved_shards}", f"data.val_shards={moved_shards}"), "cpu")
    assert tokenizer is None and "weights changed" in why
    # none: synthetic data, shards without a manifest, a missing override
    assert "synthetic" in find_tokenizer(_cfg())[2]
    plain = write_token_shards(tmp_path / "plain", shards=1, per_shard=4)
    assert find_tokenizer(_cfg(f"data.shards={plain}", f"data.val_shards={plain}"))[0] is None
    missing = find_tokenizer(_cfg(f"train.sample_tokenizer={tmp_path / 'absent'}"))
    assert missing[0] is None and "does not exist" in missing[2]


def test_grid_and_config_keys():
    row = np.zeros((3, 32, 32, 3), np.uint8)
    wide = np.full((1, 32, 128, 3), 7, np.uint8)
    grid = grid_picture([row, wide])
    assert grid.shape == (32 + GAP + 32, 128, 3)  # 3 x 32 + 2 gaps = 104 < 128
    assert (grid[:32, 32:32 + GAP] == 255).all() and (grid[32 + GAP:, :] == 7).all()
    cfg = RunConfig.preset("tiny")
    assert (cfg.train.samples, cfg.train.sample_wide, cfg.train.sample_top_k) == (4, 4, 64)
    for bad in ("train.samples=-1", "train.sample_wide=1", "train.sample_top_k=0", "train.sample_temperature=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            cfg.override([bad])


def test_sampler_leaves_the_model_and_the_rng_alone(prepared, tmp_path):
    """One rank with the whole model (ZeRO-1/2): the grid PNG of 3 samples over a 4x wide one, the
    image logged, the model still in train mode with the same weights, the torch RNG state unchanged."""
    shards, _ = prepared
    cfg = _cfg(f"data.shards={shards}", f"data.val_shards={shards}", "train.samples=3", "model.row_embedding=2")
    model = NuwaInfinity(cfg.model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = Sampler(_trainer(cfg, model, tmp_path), build_val_batches(cfg.data, cfg.model, 0, 1, 2, 2))
    assert sampler.on and sampler.order == "down" and sampler.rows.shape == (3,)
    logger, rng = _Logger(), torch.get_rng_state()
    copy = sampler._copy()
    assert not copy.training and copy.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in copy.state_dict().items())
    sampler.run(6, logger)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    size = (4 * 4 * F, 4 * F + GAP + 4 * F)  # the 4x wide row (128 px) is wider than 3 x 32 + 2 gaps
    with Image.open(tmp_path / "samples" / "step_000006.png") as img:
        assert img.size == size
    assert logger.images == [(6, "samples", (size[1], size[0], 3))]
    assert logger.events[0]["event"] == "samples" and logger.events[0]["seconds"] > 0


@pytest.mark.slow
def test_sample_pictures_on_two_zero3_ranks(prepared, tmp_path):
    """2 ranks, ZeRO-3, fp32 CPU, evaluations at steps 2 and 4 on prepared shards (crops of 4 x 4
    tokens out of 8 x 12, so the row embedding's rows vary): a grid per evaluation, 2 samples of 32 x
    32 px over one 2x wide sample, in the run dir and in TensorBoard; the losses equal the run's
    without pictures bit for bit."""
    shards, _ = prepared
    args = ["train.ds_config=zero3", "train.steps=4", "train.save_every=4", "train.micro_batch_size=1",
            "train.eval_batches=1", "train.eval_every=2", "data.canvas=[1,4,4]", "model.row_embedding=2",
            f"data.shards={shards}", f"data.val_shards={shards}", "data.shuffle_buffer=8", "data.num_workers=0",
            "train.samples=2", "train.sample_wide=2"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert run(train_cmd(2, on, *args, "train.tensorboard=true"), tmp_path / "on.txt") == 0, \
        (tmp_path / "on.txt").read_text()[-3000:]
    assert run(train_cmd(2, off, *args, "train.samples=0"), tmp_path / "off.txt") == 0, \
        (tmp_path / "off.txt").read_text()[-3000:]
    assert "sample pictures: 2 + 1 x2 wide at every evaluation" in (tmp_path / "on.txt").read_text()

    size = (2 * 4 * F + GAP, 4 * F + GAP + 4 * F)  # (W, H): the 2x wide row is 64 px, narrower than 68
    pixels = {}
    for step in (2, 4):
        with Image.open(on / "samples" / f"step_{step:06d}.png") as img:
            assert img.size == size and img.mode == "RGB"
            pixels[step] = np.asarray(img)
        assert pixels[step][4 * F + GAP:, : 2 * 4 * F].std() > 0  # the wide canvas was decoded, not left white
    assert [e["step"] for e in events(on, "samples")] == [2, 4]
    assert all(e["seconds"] > 0 and e["path"].endswith(f"step_{e['step']:06d}.png") for e in events(on, "samples"))
    assert not (off / "samples").exists() and not events(off, "samples")
    assert segments(on) == segments(off)  # bitwise: the pictures do not change training

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(on / "tb"), size_guidance={"images": 0})
    board.Reload()
    images = board.Images("samples")
    assert [e.step for e in images] == [2, 4] and (images[0].width, images[0].height) == size
    assert json.loads((on / "eval_history.json").read_text())[-1]["step"] == 4

    # the grid of step 4 is what the exported weights of step 4 draw: the gathered copy held them all
    from nuwa_ds.export import export_checkpoint

    model = NuwaInfinity.from_pretrained(export_checkpoint(on, tmp_path / "model")).eval()
    cfg = RunConfig.from_json(on / "run_config.json")
    rank0_crops = build_val_batches(cfg.data, cfg.model, 0, 2, 1, 1)  # the rows rank 0 drew with
    sampler = Sampler(_trainer(cfg, model, on), rank0_crops)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran (one thread): the same reduction order on every CPU
    try:
        drawn = sampler.picture(sampler.draw(model))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(drawn, pixels[4]) and not np.array_equal(drawn, pixels[2])
