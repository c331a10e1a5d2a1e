"""What the recipes share: stage timing, the report file, ``--set key=value`` onto a settings dataclass."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path


def apply_assignments(settings, assignments):
    """``--set key=value`` items (values read as JSON where they parse, lists as tuples) onto a
    settings dataclass; unknown keys are refused with the known ones named. ``key.sub=value`` sets one
    entry of a dict setting (``model.context_noise=0.05``), keeping the others."""
    hints = {f.name for f in dataclasses.fields(settings)}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key, _, sub = key.partition(".")
        if key not in hints:
            raise ValueError(f"--set {key}: unknown setting; known: {', '.join(sorted(hints))}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        value = tuple(value) if isinstance(value, list) else value
        if sub:
            table = getattr(settings, key)
            if not isinstance(table, dict):
                raise ValueError(f"--set {key}.{sub}: {key} is not a table of settings")
            value = {**table, sub: value}
        setattr(settings, key, value)
    return settings


class Stage:
    """Prints a stage header and records its wall time in the report."""

    def __init__(self, report: dict, name: str):
        self.report, self.name = report, name

    def __enter__(self):
        print(f"\n== {self.name} ==", flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        seconds = round(time.perf_counter() - self.start, 1)
        self.report.setdefault("stage_seconds", {})[self.name] = seconds
        print(f"== {self.name}: {seconds} s ==", flush=True)
        return False


def write_report(out: Path, report: dict):
    """``out/report.json``, replaced whole (written beside it, then renamed): a run killed or copied
    while it writes never leaves a truncated report."""
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out / "report.json")
