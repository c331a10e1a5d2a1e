"""`nuwa-ds recipe landscapes` end to end on CPU with tiny budgets: every stage runs, and the report
holds the validation, the generated sets and their floors / ceilings."""

import json
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_recipe_runs_every_stage_and_reports_floors(tmp_path):
    out = tmp_path / "recipe"
    # tokenizer_steps: nothing here scores the tokenizer (the floors and ceilings below are real vs real /
    # shuffled / noise; position losses only need bits); 2 steps still train, save, evaluate and tokenize
    # micro_batch: nothing here scores the model (10 steps stay inside the warm-up); 2 canvases a step, not 8
    sets = ["train_strips=24", "train_worlds=24", "val_strips=8", "tokenizer_steps=2", "train_steps=10",
            "eval_every=5", "micro_batch=2", "workers=2"]
    cmd = [sys.executable, "-m", "nuwa_ds.cli", "recipe", "landscapes", "--preset", "cpu", "--out", str(out),
           "--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["stage_seconds"]) == {"1 pictures", "2 tokenizer", "3 shards", "4 train",
                                            "5 export + generate", "6 eval"}
    assert report["train"]["steps"] == 10 and [e["step"] for e in report["train"]["val"]] == [5, 10]
    assert all(e["val_bits_per_token"] > 0 for e in report["train"]["val"])
    for name in ("panorama", "view"):
        q = report["eval"][name]
        swd = {k: v["mean"] for k, v in q["swd"]["scores"].items()}
        assert {"real_a", "fake", "recon", "shuffled_real", "random_tokens", "blocky_noise"} <= set(swd)
        assert swd["real_a"] < swd["blocky_noise"]  # the floor sits below the ceiling
        assert q["seams"]["scores"]["shuffled_real"]["both"] > q["seams"]["scores"]["real"]["both"]
    for order in ("right", "down"):  # held-out loss by position inside a patch (where seams begin)
        pl = report["position_losses"][order]
        assert pl["canvases"] == 8 and len(pl["map"]) == report["settings"]["model"]["patch_size"]
        assert all(0 < v < 11 for v in pl["bits_per_token"].values())  # 1024 codes: at most ~10 bits
    for d in ("right", "left", "down", "up"):
        assert set(report["eval"][f"outpaint_{d}"]["boundary"]) >= {"real", "recon", "fake"}
    with Image.open(out / "generated" / "panorama" / "panorama_00003.png") as img:
        assert img.size == (512, 128)  # 2048 x 512 world pixels at the cpu preset's quarter scale
    # the held-out worlds are not the training worlds
    train = {e["world_seed"] for e in json.loads((out / "real" / "train" / "landscapes.json").read_text())}
    held_out = {e["world_seed"] for e in json.loads((out / "real" / "panorama" / "landscapes.json").read_text())}
    assert not train & held_out
