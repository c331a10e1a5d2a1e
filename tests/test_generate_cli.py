"""`nuwa-ds generate` end to end on the tiny model and a small VQ tokenizer: every task writes a file
of the requested pixel size and frame count; outpainting keeps the given tokens; memory refusal."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from model_helpers import tiny_model, write_tiny_text_encoder
from nuwa_ds.cli import main
from nuwa_ds.tokenizer import VQConfig, VQTokenizer, demo_pictures, from_uint8, save_png

# decoding loops of tiny ops: one intra-op thread (conftest.one_torch_thread says why)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    tokenizer = VQTokenizer(VQConfig.preset("demo-f8", n_embed=256, ch=16, norm_groups=8)).eval()
    tokenizer.save_pretrained(root / "vq")
    model = tiny_model().attach_text_encoder(write_tiny_text_encoder(root / "t5"))
    model.save_pretrained(root / "model")
    (root / "model" / "tokenizer.json").write_text(json.dumps({"vq_tokenizer": str(root / "vq")}))
    photo = demo_pictures(["coffee"])["coffee"]  # 400 x 600 photograph
    save_png(from_uint8(photo), root / "coffee.png")
    return root


def generate(model_dir, *args):
    return main(["generate", str(model_dir / "model"), "--temperature", "1.0", "--top-k", "50", *args])


@pytest.mark.parametrize("task, args, suffix, frames", [
    ("unconditional", ["--size", "128x64"], ".png", 1),
    ("text2image", ["--size", "64x96", "--prompt", "a cup of coffee", "--cfg-scale", "2.0"], ".png", 1),
    ("animate", ["--size", "64x64", "--frames", "3", "--input", "{photo}"], ".gif", 3),
    ("text2video", ["--size", "64x64", "--frames", "2", "--prompt", "waves"], ".mp4", 2),
])
def test_every_task_writes_the_requested_size(model_dir, tmp_path, task, args, suffix, frames):
    out = tmp_path / f"out{suffix}"
    args = [a.replace("{photo}", str(model_dir / "coffee.png")) for a in args]
    assert generate(model_dir, "--task", task, *args, "--out", str(out)) == 0
    w, h = (int(v) for v in args[args.index("--size") + 1].split("x"))
    if suffix == ".mp4":
        from nuwa_ds.tokenizer.media import video_info

        info = video_info(out)
        assert (info["width"], info["height"], info["frames"]) == (w, h, frames)
    else:
        with Image.open(out) as img:
            assert img.size == (w, h) and getattr(img, "n_frames", 1) == frames


@pytest.mark.parametrize("direction", ["right", "left", "up", "down"])
def test_outpaint_keeps_the_given_tokens(model_dir, tmp_path, direction):
    out = tmp_path / "out.png"
    size = "160x64" if direction in ("left", "right") else "96x160"
    assert generate(model_dir, "--task", "outpaint", "--input", str(model_dir / "coffee.png"), "--direction",
                    direction, "--size", size, "--out", str(out), "--save-tokens", "--batch", "2") == 0
    from nuwa_ds.generate import build_prompt

    tokenizer = VQTokenizer.from_pretrained(model_dir / "vq")
    image = from_uint8(np.asarray(Image.open(model_dir / "coffee.png").convert("RGB")))
    W, H = (int(v) for v in size.split("x"))
    prompt, mask = build_prompt("outpaint", image, tokenizer, (W, H), 1, direction, 1, tokenizer.downsample)
    for b in range(2):
        tokens = torch.from_numpy(np.load(tmp_path / f"out_{b}.npy").astype(np.int64))
        assert torch.equal(tokens[mask[0]], prompt[0][mask[0]])
        assert (~mask).any()
        with Image.open(tmp_path / f"out_{b}.png") as img:
            assert img.size == (W, H)


def test_refuses_what_does_not_fit_and_names_the_largest(model_dir, tmp_path, capsys):
    rc = generate(model_dir, "--size", "4096x64", "--order", "down", "--sequential", "--max-memory-gb", "0.002",
                  "--out", str(tmp_path / "x.png"))
    err = capsys.readouterr().err
    assert rc == 2 and "the largest that fits is" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--size", "100x64"], "not a multiple of the patch"),
    (["--task", "outpaint"], "needs --input"),
    (["--task", "text2image"], "needs --prompt"),
    (["--task", "animate", "--input", "missing.png"], "not found"),
    (["--size", "64"], "expected WxH"),
    (["--task", "text2video", "--prompt", "x", "--frames", "1"], "at least 2 frames"),
])
def test_bad_arguments_fail_clearly(model_dir, tmp_path, capsys, args, message):
    out = "x.gif" if {"animate", "text2video"} & set(args) else "x.png"  # a file the canvas can be written as
    assert generate(model_dir, *args, "--out", str(tmp_path / out)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is not there")
def test_cuda_without_a_gpu_fails_clearly(model_dir, tmp_path, capsys):
    assert generate(model_dir, "--device", "cuda", "--out", str(tmp_path / "x.png")) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.parametrize("args, out, message", [
    ([], "x.jpg", "write .png (images), .gif or .mp4 (videos)"),
    ([], "x.gif", "a single image is written as .png"),
    (["--task", "text2video", "--prompt", "waves", "--frames", "2"], "x.png", "2 frames are written as .gif or .mp4"),
    (["--frames", "3"], "x.png", "3 frames are written as .gif or .mp4"),
])
def test_bad_out_suffix_fails_before_any_work(tmp_path, capsys, args, out, message):
    # a model directory that does not exist: any work before the check would fail on it instead
    rc = main(["generate", str(tmp_path / "no-model"), *args, "--out", str(tmp_path / out)])
    captured = capsys.readouterr()
    assert rc == 2 and message in captured.err
    assert "no-model" not in captured.err and captured.out == "" and not (tmp_path / out).exists()
