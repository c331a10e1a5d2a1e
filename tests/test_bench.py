"""`nuwa-ds bench all` on CPU: every suite runs and the JSON report follows the documented schema."""

import json
import subprocess
import sys

import pytest

from nuwa_ds.bench import SUITES, validate_report

pytestmark = pytest.mark.slow


def test_bench_all_on_cpu_writes_a_valid_report(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "nuwa_ds.cli", "bench", "all", "--device", "cpu", "--preset",
                           "tiny", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert validate_report(report) == []
    assert set(report["suites"]) == set(SUITES)
    assert report["device"] == "cpu" and report["environment"]["torch"]
    for name, suite in report["suites"].items():
        assert suite["rows"], name
        for row in suite["rows"]:
            for metric in suite["metrics"]:
                value = row.get(metric)
                assert value is None or value > 0, (name, metric, value)
    # no wall-time assertion: how fast a shared CI machine is today says nothing about the code


def test_report_validation_catches_problems():
    good = {"date": "d", "command": "c", "device": "cpu", "environment": {}, "suites": {
        "x": {"rows": [{"a": 1.0}], "metrics": ["a"], "required": ["a"]}}}
    assert validate_report(good) == []
    bad = json.loads(json.dumps(good))
    bad["suites"]["x"]["rows"][0]["a"] = float("nan")
    assert validate_report(bad)
    bad["suites"]["x"]["rows"] = [{}]
    assert any("missing" in p for p in validate_report(bad))
    del bad["date"]
    assert any("date" in p for p in validate_report(bad))


def test_step_profile_counts_the_operators_of_each_step():
    """``bench decode --set profile=true``'s summary: per step, the launches, busy time within the span
    and the operators by name (on CPU the top-level aten operators stand in for kernels)."""
    import torch

    from nuwa_ds.bench.decode import step_profile

    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def three_steps():
        for _ in range(3):
            torch.relu(torch.mm(a, b) + a)

    prof = step_profile(three_steps, 3, torch.device("cpu"))
    assert prof["unit"] == "cpu operators" and prof["launches_per_step"] == 3 and prof["distinct"] == 3
    assert {row["name"] for row in prof["top"]} == {"aten::mm", "aten::add", "aten::relu"}
    assert all(row["per_step"] == 1 for row in prof["top"])
    assert 0 < prof["busy_us_per_step"] <= prof["span_us_per_step"] and 0 < prof["busy_share"] <= 1
    with pytest.raises(RuntimeError, match="no operators"):
        step_profile(lambda: None, 1, torch.device("cpu"))
