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
