"""A non-editable install works from any directory: package data (the named DeepSpeed configs) is
found through importlib.resources, nothing reads the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_utils import ROOT, clean_env


@pytest.mark.slow
def test_installed_package_trains_from_another_directory(tmp_path):
    src = tmp_path / "src"  # a copy of what a wheel is built from (no checkout, no .git beside it)
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("nuwa_ds", "kernels", "data_pipelines"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert sorted(p.name for p in (site / "nuwa_ds" / "ds_configs").glob("*.json")) == \
        ["zero1.json", "zero2.json", "zero3.json", "zero3_offload.json"]
    shutil.rmtree(src)  # nothing may read the sources the wheel was built from
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import json, sys, nuwa_ds, nuwa_ds.cli\n"
              "rc = nuwa_ds.cli.main(['train', '--config', 'tiny', '--ds-config', 'zero2', 'train.steps=2',\n"
              "                       'train.run_dir=run', 'train.tensorboard=false'])\n"
              "print(json.dumps({'rc': rc, 'file': nuwa_ds.__file__}))\n")
    env = clean_env(PYTHONPATH=str(site))  # before site-packages (and the checkout's editable install)
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and Path(result["file"]).is_relative_to(site), result
    run = elsewhere / "run"
    assert (run / "checkpoints" / "step_00000002").is_dir()
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    import nuwa_ds

    assert start["code_version"] == nuwa_ds.__version__  # installed: no git describe of some other checkout
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
