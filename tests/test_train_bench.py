"""The train bench suite runs end to end on CPU (the CI smoke run of the GPU measurement)."""

from __future__ import annotations

import json
import sys

import pytest

from nuwa_ds.bench import validate_report
from test_train_utils import ROOT, clean_env

pytestmark = pytest.mark.slow


def test_bench_train_quick_on_cpu(tmp_path):
    import subprocess

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "nuwa_ds.cli", "bench", "train", "--device", "cpu", "--preset", "tiny",
                           "--quick", "--zero", "2", "--compare-baseline", "--out", str(out)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert validate_report(report) == []
    rows = report["suites"]["train"]["rows"]
    assert [r["model"].split(" ")[0] for r in rows] == ["tiny", "gpt2-0.121m"]
    for row in rows:
        assert row["zero_stage"] == 2 and row["precision"] == "fp32" and row["tokens_per_s"] > 0
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["optimizer_ms"] > 0
    assert rows[0]["data_ms"] > 0 and rows[0]["attn_backend"] == "reference" and rows[0]["mfu"] is None
