"""`nuwa-ds demo` end to end with small budgets: every stage runs and writes its files."""

import json
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_path(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "nuwa_ds.cli", "demo", "--out", str(out), "--steps", "10",
                           "--tokenizer-seconds", "5"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokenizer"]["psnr_db"] > 0 and summary["shards"]["samples"] == 4
    assert summary["train"]["steps"] == 10
    assert (out / "model" / "model.safetensors").is_file() and (out / "tokenizer" / "reconstruction.png").is_file()
    with Image.open(out / "panorama.png") as img:
        assert img.size == (512, 128)
    with Image.open(out / "outpaint_right.png") as img:
        assert img.size == (384, 128)
