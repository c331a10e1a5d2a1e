"""The VQ tokenizer: taming checkpoints, encode/decode, tiled decode, persistence, training, media I/O."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import made_once, shared_dir
from nuwa_ds.tokenizer import (VQConfig, VQTokenizer, demo_pictures, from_uint8, load_image, psnr, resolve_device,
                               save_gif, save_mp4, save_png, to_uint8)

# ----------------------------------------------------------------------------------------------
# A taming-format checkpoint, written from taming-transformers' construction rules (restated here
# independently of nuwa_ds: the names and shapes a real `VQModel` / `GumbelVQ` state_dict has).


def taming_shapes(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, embed_dim, n_embed,
                  gumbel=False, in_channels=3, out_ch=3) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{proj}", c, c, 1)

    def middle(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        resnet(f"{prefix}.mid.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_channels, ch, 3)
    res, block_in = resolution, ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * mult)
            block_in = ch * mult
            if res in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    middle("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, z_channels, 3)

    block_in, res = ch * ch_mult[-1], resolution // 2 ** (levels - 1)
    conv("decoder.conv_in", z_channels, block_in, 3)
    middle("decoder", block_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if res in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, out_ch, 3)
    conv("quant_conv", z_channels, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    if gumbel:
        conv("quantize.proj", z_channels, n_embed, 1)
        shapes["quantize.embed.weight"] = (n_embed, embed_dim)
    else:
        shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    return shapes


# (name, taming model.params as in the released configs but with a small `ch`, expected f)
TAMING_CONFIGS = {
    "f16-16384": (dict(target="taming.models.vqgan.VQModel", params=dict(
        embed_dim=256, n_embed=16384, ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3,
                                                    out_ch=3, ch=32, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                                                    attn_resolutions=[16], dropout=0.0))), 16),
    "f8-ldm-16384": (dict(target="ldm.models.autoencoder.VQModel", params=dict(
        embed_dim=4, n_embed=16384, ddconfig=dict(double_z=False, z_channels=4, resolution=256, in_channels=3,
                                                  out_ch=3, ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=2,
                                                  attn_resolutions=[32], dropout=0.0))), 8),
    "f8-gumbel-8192": (dict(target="taming.models.vqgan.GumbelVQ", params=dict(
        embed_dim=64, n_embed=8192, kl_weight=1e-8, ddconfig=dict(double_z=False, z_channels=64, resolution=256,
                                                                  in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2, 4],
                                                                  num_res_blocks=2, attn_resolutions=[32],
                                                                  dropout=0.0))), 8),
}


def write_taming_checkpoint(path, model_section: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PyTorch Lightning-style .ckpt as taming writes it: random weights under `state_dict`, the
    training-only discriminator/LPIPS weights (`loss.*`), and extra entries naming classes that are
    not importable here (a Lightning callback, argparse.Namespace hyper-parameters)."""
    params = model_section["params"]
    dd = params["ddconfig"]
    shapes = taming_shapes(dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["attn_resolutions"], dd["resolution"],
                           dd["z_channels"], params["embed_dim"], params["n_embed"],
                           gumbel="Gumbel" in model_section["target"])
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4, generator=g)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1, generator=g)

    module_name = "pytorch_lightning.callbacks.model_checkpoint"
    fake = types.ModuleType(module_name)

    class ModelCheckpoint:  # stands for the real Lightning class, which is not installed here
        def __init__(self):
            self.best_model_path = "logs/last.ckpt"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module_name, "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    parents = ["pytorch_lightning", "pytorch_lightning.callbacks", module_name]
    for name in parents[:-1]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[module_name] = fake
    try:
        torch.save({"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}},
                    "checkpoint": ModelCheckpoint(), "hyper_parameters": argparse.Namespace(lr=4.5e-6)}, path)
    finally:
        for name in parents:
            sys.modules.pop(name, None)
    return state


@pytest.mark.parametrize("name", list(TAMING_CONFIGS))
def test_taming_checkpoint_loads_with_every_key(tmp_path, name):
    model_section, f = TAMING_CONFIGS[name]
    ckpt = tmp_path / "last.ckpt"
    state = write_taming_checkpoint(ckpt, model_section)
    yaml_text = json.dumps({"model": model_section})  # JSON is YAML: a taming config file
    (tmp_path / "model.yaml").write_text(yaml_text)

    tok = VQTokenizer.from_taming_checkpoint(ckpt, tmp_path / "model.yaml")
    # from_taming_checkpoint is strict: it raises on any missing / unexpected key; check values too
    own = tok.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("loss.")}
    assert set(own) == set(expected)
    assert all(torch.equal(own[k], expected[k]) for k in expected)
    assert tok.downsample == f and tok.codebook_size == model_section["params"]["n_embed"]

    images = torch.rand(2, 3, 2 * f, 3 * f) * 2 - 1
    tokens = tok.encode(images)
    assert tokens.shape == (2, 2, 3) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < tok.codebook_size
    assert tok.decode(tokens).shape == (2, 3, 2 * f, 3 * f)

    # without a config the architecture is read off the weights, giving the same model
    inferred = VQTokenizer.from_taming_checkpoint(ckpt)
    assert torch.equal(inferred.encode(images), tokens)


def test_taming_checkpoint_mismatch_is_a_clear_error(tmp_path):
    model_section, _ = TAMING_CONFIGS["f8-ldm-16384"]
    ckpt = tmp_path / "bad.ckpt"
    state = write_taming_checkpoint(ckpt, model_section)
    del state["decoder.conv_out.bias"]
    state["quant_conv.weight"] = torch.zeros(5, 4, 1, 1)
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.bias.*quant_conv\.weight"):
        VQTokenizer.from_taming_checkpoint(ckpt, VQConfig.from_taming(model_section))
    with pytest.raises(FileNotFoundError):
        VQTokenizer.from_taming_checkpoint(tmp_path / "absent.ckpt", "ldm-f8-16384")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        VQTokenizer.from_taming_checkpoint(tmp_path / "junk.ckpt", "ldm-f8-16384")


def test_encode_picks_the_nearest_code_and_bad_input_is_refused():
    torch.manual_seed(0)
    tok = VQTokenizer(VQConfig.preset("demo-f8", n_embed=300)).eval()
    images = torch.rand(3, 3, 24, 40) * 2 - 1
    latents = tok.latents(images).detach()  # (3, e, 3, 5)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    expected = torch.cdist(flat, tok.quantize.embedding.weight).argmin(1).view(3, 3, 5)
    assert torch.equal(tok.quantize.codes(latents, chunk=7), expected)  # chunking changes nothing
    assert torch.equal(tok.encode(images), expected)

    with pytest.raises(ValueError, match="multiple of the downsampling factor 8"):
        tok.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        tok.decode(torch.full((1, 2, 2), 300))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="tile"):
        tok.decode_tiled(torch.zeros(1, 4, 4, dtype=torch.long), tile=4, overlap=4)
    half = VQTokenizer(VQConfig.preset("demo-f8", n_embed=300)).eval().to(torch.bfloat16)
    half.load_state_dict(tok.state_dict())
    assert half.encode(images).shape == (3, 3, 5) and half.decode(expected).dtype == torch.bfloat16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------------------------
# A tokenizer trained on the demo photographs, shared by this file and test_data.py (cached on disk).

TRAIN_STEPS = 150  # a quarter of the demo's training; the demo's own PSNR is in docs/benchmarks.md


def trained_demo_tokenizer(tmp_path_factory) -> tuple[VQTokenizer, dict]:
    """Trained once per run (by one xdist worker), shared with tests/test_data.py."""
    cache = shared_dir(tmp_path_factory) / "demo_tokenizer"
    with made_once(cache) as todo:
        if todo:
            from nuwa_ds.tokenizer.train import train_tokenizer

            return train_tokenizer("demo", cache, codebook_size=256, device="cpu", steps=TRAIN_STEPS, batch_size=8,
                                   log_every=0)
    return VQTokenizer.from_pretrained(cache), json.loads((cache / "metrics.json").read_text())


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    return trained_demo_tokenizer(tmp_path_factory)


@pytest.mark.slow
def test_training_learns_to_reconstruct_the_photographs(demo_tokenizer, tmp_path_factory):
    tok, metrics = demo_tokenizer
    untrained = VQTokenizer(tok.config).eval()
    f = tok.downsample
    before, after = [], []
    for array in demo_pictures().values():
        image = from_uint8(array[: array.shape[0] // f * f, : array.shape[1] // f * f])[None]
        before.append(psnr(image, untrained.decode(untrained.encode(image))))
        after.append(psnr(image, tok.decode(tok.encode(image))))
    assert np.mean(after) == pytest.approx(metrics["psnr"], abs=1e-6)
    # 150 steps reach 16.7-18.4 dB over seeds (untrained: ~10 dB); the 600-step demo run ~24 dB
    assert metrics["psnr"] > 15.0 and metrics["psnr"] > np.mean(before) + 5.0, (metrics["psnr"], before)
    assert metrics["codebook_usage"] > 0.5  # dead codes are restarted
    assert (shared_dir(tmp_path_factory) / "demo_tokenizer" / "reconstruction.png").is_file()


@pytest.mark.slow
def test_tiled_decode_matches_whole_decode_without_seams(demo_tokenizer):
    tok, _ = demo_tokenizer
    pictures = demo_pictures(["astronaut", "coffee"])
    images = torch.stack([from_uint8(a[:384, :504]) for a in pictures.values()])  # 2 x (48 x 63 tokens)
    tokens = tok.encode(images)
    whole = tok.decode(tokens)
    # the canvas fits one tile: exactly the whole decode
    assert torch.equal(tok.decode_tiled(tokens, tile=64, overlap=8), whole)

    def column_steps(image):  # how abruptly the difference to the whole decode changes, per column
        diff = image - whole
        return (diff[..., 1:] - diff[..., :-1]).abs().mean(dim=(0, 1, 2))

    # 2 x 3 windows per picture, windows of both pictures mixed in one decoder call
    blended = tok.decode_tiled(tokens, tile=32, overlap=12, tiles_per_batch=5)
    hard = tok.decode_tiled(tokens, tile=32, overlap=0, canvas_norm=False)  # windows meet at pixel 256
    local = tok.decode_tiled(tokens, tile=32, overlap=12, canvas_norm=False)
    assert blended.shape == hard.shape == local.shape == whole.shape
    assert psnr(whole, blended) > 35.0  # canvas statistics: measured 41-45 dB; window statistics: 23-34 dB
    assert psnr(whole, blended) > psnr(whole, local) + 3.0
    seam = float(column_steps(hard)[32 * tok.downsample - 1])
    assert float(column_steps(blended).max()) < 0.25 * seam  # no step where windows meet
    assert all("forward" not in vars(m) for m in tok.decoder.modules())  # the GroupNorm override is gone


def test_save_and_load_pretrained_round_trip(tmp_path):
    tok = VQTokenizer(VQConfig.preset("demo-f8", n_embed=64)).eval()
    tok.save_pretrained(tmp_path / "tok")
    again = VQTokenizer.from_pretrained(tmp_path / "tok")
    assert again.config == tok.config
    images = torch.rand(2, 3, 16, 24) * 2 - 1
    tokens = tok.encode(images)
    assert torch.equal(again.encode(images), tokens)
    assert torch.equal(again.decode(tokens), tok.decode(tokens))
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):
        VQTokenizer.from_pretrained(tmp_path / "nothing")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    config["n_embed"] = 65
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        VQTokenizer.from_pretrained(tmp_path / "tok")


def test_tokenizer_train_command(tmp_path, capsys):
    from nuwa_ds.cli import main

    (tmp_path / "pics").mkdir()
    for name, array in demo_pictures(["coffee", "chelsea"]).items():
        save_png(from_uint8(array[:96, :128]), tmp_path / "pics" / f"{name}.png")
    rc = main(["tokenizer-train", "--images", str(tmp_path / "pics"), "--out", str(tmp_path / "tok"),
               "--steps", "2", "--batch-size", "2", "--codebook-size", "32", "--device", "cpu"])
    assert rc == 0
    assert "PSNR" in capsys.readouterr().out
    assert VQTokenizer.from_pretrained(tmp_path / "tok").codebook_size == 32
    assert main(["tokenizer-train", "--images", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# tokenizer-train's budget and interruptions (issue 21), on real processes

ROOT = Path(__file__).resolve().parents[1]


def small_picture_folder(directory, count: int = 8):
    """``count`` 96x128 crops of two photographs: training steps and evaluation batches of a few ms."""
    directory.mkdir()
    pictures = list(demo_pictures(["coffee", "chelsea"]).items())
    for k in range(count):
        name, array = pictures[k % 2]
        y, x = 30 * (k // 2), 25 * (k // 2)
        save_png(from_uint8(np.ascontiguousarray(array[y:y + 96, x:x + 128])), directory / f"{name}{k}.png")
    return directory


def tokenizer_train_cmd(pictures, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nuwa_ds.cli", "tokenizer-train", "--images", str(pictures), "--out", str(out),
            "--batch-size", "2", "--crop", "32", "--codebook-size", "32", "--device", "cpu", *extra]


def start_process(cmd: list[str], log, **env) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NUWA_FAULT_")}
    environ.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore::FutureWarning",
                   **{k: str(v) for k, v in env.items()})
    return subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for_line(text: str, proc: subprocess.Popen, log, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never printed {text!r} (rc {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def assert_usable_tokenizer(directory, codes: int = 32):
    tok = VQTokenizer.from_pretrained(directory)
    assert tok.codebook_size == codes
    tokens = tok.encode(torch.rand(1, 3, 32, 48) * 2 - 1)
    assert tokens.shape == (1, 4, 6) and 0 <= int(tokens.min()) and int(tokens.max()) < codes
    assert not list(directory.glob(".saving-*"))  # no half-written save left behind


@pytest.mark.slow
def test_tokenizer_train_killed_during_evaluation_leaves_a_usable_tokenizer(tmp_path):
    pictures = small_picture_folder(tmp_path / "pics")
    out, log = tmp_path / "tok", tmp_path / "log.txt"
    proc = start_process(tokenizer_train_cmd(pictures, out, "--steps", "5", "--eval-pictures", "all",
                                             "--eval-batch-size", "1"), log, NUWA_FAULT_PAUSE_IN_EVAL=2)
    wait_for_line("pausing in evaluation after batch 2", proc, log)
    proc.kill()  # SIGKILL: no handler runs
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert_usable_tokenizer(out)
    metrics = json.loads((out / "metrics.json").read_text())  # written with the weights, before the evaluation
    assert metrics["status"] == "evaluating" and metrics["steps"] == 5 and metrics["eval_pictures"] == 0
    assert metrics["pictures_total"] == 8 and not (out / "reconstruction.png").exists()


@pytest.mark.slow
def test_tokenizer_train_sigusr1_saves_and_exits_75(tmp_path):
    from nuwa_ds.training.preemption import REQUEUE_EXIT_CODE

    pictures = small_picture_folder(tmp_path / "pics")
    out, log = tmp_path / "tok", tmp_path / "log.txt"
    proc = start_process(tokenizer_train_cmd(pictures, out, "--steps", "1000"), log, NUWA_FAULT_PAUSE_AT_STEP=4)
    wait_for_line("pausing after step 4", proc, log)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=120) == REQUEUE_EXIT_CODE, log.read_text()[-3000:]
    assert_usable_tokenizer(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by"] == metrics["signal"] == "SIGUSR1" and metrics["steps"] == 4
    assert metrics["status"] == "stopped" and metrics["eval_pictures"] == 0 and metrics["psnr"] is None


@pytest.mark.slow
def test_tokenizer_train_time_limit_bounds_the_whole_command(tmp_path):
    """The trainer's own figures, not the outside clock: it stopped training because the next step,
    the save and the (estimated) evaluation would not have fitted, and what it then measured itself
    (save, evaluation batches) stays within the limit plus one of each of its own steps / batches."""
    pictures = small_picture_folder(tmp_path / "pics")
    out, log, limit = tmp_path / "tok", tmp_path / "log.txt", 10.0
    proc = start_process(tokenizer_train_cmd(pictures, out, "--steps", "1000000", "--time-limit", str(limit),
                                             "--eval-pictures", "5", "--eval-batch-size", "2"), log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_by"] == "time_limit" and m["status"] == "complete" and m["time_limit"] == limit
    decision = m["stop_decision"]  # why training stopped: the next step would have eaten the reserve
    assert decision["elapsed"] + decision["next_step_estimate"] + decision["reserved_seconds"] >= limit
    assert decision["reserved_seconds"] >= min(m["eval_seconds_estimate"], limit / 2)
    assert m["pictures_total"] == 8 and 1 <= m["eval_pictures"] <= 5
    assert len(m["psnr_per_picture"]) == len(m["eval_indices"]) == m["eval_pictures"]
    assert m["eval_stopped_by"] in ("done", "time_limit")
    assert m["eval_stopped_by"] == "time_limit" or m["eval_pictures"] == 5
    parts = m["load_seconds"] + m["seconds"] + m["save_seconds"] + m["eval_seconds"]
    assert parts <= m["total_seconds"] + 0.2  # (`seconds` is rounded to 0.1 s)
    slack = m["step_seconds_max"] + m["save_seconds"] + m["eval_batch_seconds_max"] + 1.0
    assert m["total_seconds"] <= max(limit, m["load_seconds"]) + slack, m
    assert_usable_tokenizer(out)
    assert "of 8 pictures" in log.read_text()


def test_tokenizer_saves_are_atomic(tmp_path, monkeypatch):
    """A save interrupted between its renames leaves the previous tokenizer, or, over an earlier
    run's tokenizer of another architecture, none: never a config that does not fit the weights."""
    import nuwa_ds.tokenizer.train as T

    out = tmp_path / "tok"
    VQTokenizer(VQConfig.preset("demo-f8", n_embed=48)).save_pretrained(out)  # an earlier run, other codebook
    renames = []
    real_replace = T.os.replace

    def crash_after_first(src, dst):
        if renames:
            raise KeyboardInterrupt("killed between the renames")
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(T.os, "replace", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        T.TokenizerSaver(out).save(VQTokenizer(VQConfig.preset("demo-f8", n_embed=32)), {"steps": 1})
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory"):  # not a mismatch error
        VQTokenizer.from_pretrained(out)
    monkeypatch.setattr(T.os, "replace", real_replace)
    saver = T.TokenizerSaver(out)
    first = VQTokenizer(VQConfig.preset("demo-f8", n_embed=32))
    saver.save(first, {"steps": 1})
    assert_usable_tokenizer(out)
    renames.clear()
    monkeypatch.setattr(T.os, "replace", crash_after_first)
    second = VQTokenizer(VQConfig.preset("demo-f8", n_embed=32))
    with pytest.raises(KeyboardInterrupt):
        saver.save(second, {"steps": 2})
    loaded = VQTokenizer.from_pretrained(out)  # the new weights with their (identical) config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in second.state_dict().items())


def test_evaluation_sample_and_batches():
    from nuwa_ds.tokenizer.train import eval_batches, eval_sample

    assert eval_sample(5, 64, 0) == [0, 1, 2, 3, 4] and eval_sample(5, None, 0) == [0, 1, 2, 3, 4]
    sample = eval_sample(100, 10, 3)
    assert len(sample) == 10 == len(set(sample)) and sample == sorted(sample) and sample == eval_sample(100, 10, 3)
    pictures = [np.zeros((64 + 8 * (i % 3), 80, 3), np.uint8) for i in range(20)]
    batches = eval_batches(pictures, list(range(20)), 8, batch_size=4)
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert all(len(b) <= 4 and len({pictures[i].shape for i in b}) == 1 for b in batches)


# ----------------------------------------------------------------------------------------------
# Media


def test_png_gif_mp4_round_trip(tmp_path):
    import av
    from PIL import Image

    picture = demo_pictures(["chelsea"])["chelsea"][:64, :90]
    save_png(from_uint8(picture), tmp_path / "a.png")
    assert np.array_equal(to_uint8(load_image(tmp_path / "a.png")), picture)  # PNG is exact

    frames = torch.stack([from_uint8(np.roll(picture, 6 * t, axis=1)) for t in range(5)])  # [5, 3, 64, 90]
    save_gif(frames, tmp_path / "a.gif", fps=10)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (90, 64)
        assert gif.info["duration"] == 100

    save_mp4(frames[:, :, :63], tmp_path / "a.mp4", fps=12)  # odd height: padded for yuv420p
    with av.open(str(tmp_path / "a.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert float(stream.average_rate) == pytest.approx(12.0)
    assert len(decoded) == 5 and decoded[0].shape == (64, 90, 3)
    error = np.abs(decoded[2][:63].astype(float) - to_uint8(frames[2, :, :63]).astype(float)).mean()
    assert error < 4.0
    with pytest.raises(ValueError, match="one picture"):
        save_png(frames, tmp_path / "b.png")
