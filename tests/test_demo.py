"""`nuwa-ds demo` end to end with small budgets: every stage runs on landscapes and writes its files,
validation is recorded, and the panorama is much wider than the training crop."""

import json
import math
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_path_on_landscapes(tmp_path):
    out = tmp_path / "demo"
    # tokenizer_steps: the demo's tokenizer is only checked for a PSNR (> 0); 2 steps train, save and evaluate
    # micro_batch: the model is only checked for finite validation bits; 2 canvases a step, not 8
    sets = ["train_strips=24", "train_worlds=24", "val_strips=8", "tokenizer_steps=2", "eval_every=5", "micro_batch=2",
            "workers=2"]
    cmd = [sys.executable, "-m", "nuwa_ds.cli", "demo", "--out", str(out), "--steps", "10",
           "--tokenizer-seconds", "30"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val loss" in proc.stdout and "bits/token" in proc.stdout  # the demo prints validation
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "cpu" and report["settings"]["outpaint_directions"] == ["right"]

    assert summary["tokenizer"]["psnr_db"] > 0
    assert summary["shards"] == {"train": 24, "val": 8}
    t = summary["train"]
    assert t["steps"] == 10 and t["status"] == "finished"
    assert [e["step"] for e in t["val"]] == [5, 10]
    assert all(math.isfinite(e["val_bits_per_token"]) and e["val_bits_per_token"] > 0 for e in t["val"])
    assert t["val_bits_per_token"] == t["val"][-1]["val_bits_per_token"]
    assert {"1 pictures", "2 tokenizer", "3 shards", "4 train", "5 export + generate", "6 eval"} <= \
        set(summary["stage_seconds"])
    assert all(v >= 0 for v in summary["stage_seconds"].values()) and summary["total_seconds"] > 0

    assert (out / "model" / "model.safetensors").is_file() and (out / "tokenizer" / "reconstruction.png").is_file()
    crop = report["settings"]["canvas"][2] * 8  # tokens x f8: 128 px
    with Image.open(out / "panorama.png") as img:
        assert img.size == (1024, 128) and img.width >= 8 * crop  # 4096 x 512 world px at quarter scale
    with Image.open(out / "outpaint_right.png") as img:
        assert img.size == (3 * crop, crop)  # the given 128-px square extended to three times its width
    with Image.open(out / "overview.png") as img:
        assert img.width == 1024 and img.height > 4 * 128
    for name in ("panorama", "outpaint_right", "overview"):
        assert summary["files"][name] == str(out / f"{name}.png")
