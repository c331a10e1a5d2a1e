"""``nuwa-ds bench {train,kernels,decode,generate,data,all}``: the users' benchmarking tool.

Each suite is a module ``nuwa_ds/bench/<suite>.py`` with ``run(opts: BenchOptions) -> dict``: a
JSON-able dict with at least ``"rows"`` (a list of flat dicts, printed as the table) and any
further figures. This module adds the device, versions, date and command, prints each suite's
table, and writes the whole report as JSON (schema: docs/benchmarks.md, checked by
``validate_report``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

from nuwa_ds.config_base import ConfigBase, cli

SUITES = ("train", "kernels", "decode", "generate", "data")


@dataclass
class BenchOptions:
    device: str = "auto"
    """'cuda', 'cpu' or 'auto' (cuda when available)."""
    preset: str = "nuwa-350m"
    """Model preset the model-level suites use."""
    quick: bool = False
    """Fewer repetitions and smaller sizes (CI smoke runs)."""
    compare_baseline: bool = False
    """Also run the off-the-shelf reference (HF GPT-2 under DeepSpeed) in the same process."""
    zero_stages: tuple[int, ...] = (2, 3)
    """ZeRO stages for the train suite."""
    micro_batch_size: int = 0
    """Examples per step for the train suite (0: the preset's)."""
    steps: int = 0
    """Timed steps (0: the suite's default)."""
    extra: dict = field(default_factory=dict)
    """Suite-specific key=value settings (--set key=value)."""


def environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    for mod in ("triton", "deepspeed", "webdataset", "transformers"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is reported, not fatal
            info[mod] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), sm_count=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        import os

        info.update(gpu=None, cpu_count=os.cpu_count())
    return info


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def validate_report(report: dict) -> list[str]:
    """Problems with a report (empty list when it follows the schema)."""
    problems = []
    for key in ("date", "command", "device", "environment", "suites"):
        if key not in report:
            problems.append(f"missing top-level key {key!r}")
    for name, suite in report.get("suites", {}).items():
        rows = suite.get("rows")
        if not isinstance(rows, list) or not rows:
            problems.append(f"suite {name}: no rows")
            continue
        for i, row in enumerate(rows):
            for metric in suite.get("metrics", []):
                if metric in row and row[metric] is not None and not _finite_positive(row[metric]):
                    problems.append(f"suite {name} row {i}: {metric}={row[metric]!r} is not finite and positive")
            missing = [m for m in suite.get("required", []) if m not in row]
            if missing:
                problems.append(f"suite {name} row {i}: missing {missing}")
    return problems


def print_table(name: str, rows: list[dict]):
    if not rows:
        return
    cols = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols}
    print(f"\n== {name} ==")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(widths[c]) for c in cols))


@dataclass
class BenchCommand(ConfigBase):
    """Everything ``nuwa-ds bench`` is told; its flags are generated from these fields. The suite is one
    positional choice; what a suite alone reads is given with ``--set key=value``."""

    suite: Literal[(*SUITES, "all")] = field(metadata=cli(positional=True))
    """What to measure."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto (cuda when available), cuda or cpu."""
    preset: Optional[str] = field(default=None, metadata=cli(metavar="NAME"))
    """Model preset (default: nuwa-350m on GPU, tiny on CPU)."""
    out: Optional[str] = field(default=None, metadata=cli(metavar="JSON"))
    """Write the JSON report here."""
    quick: bool = False
    """Fewer repetitions, smaller sizes (always on a CPU)."""
    compare_baseline: bool = False
    """Also run the off-the-shelf HF GPT-2 + DeepSpeed reference in the same process."""
    zero: str = field(default="2,3", metadata=cli(metavar="STAGES"))
    """ZeRO stages for the train suite, e.g. 2,3."""
    micro_batch_size: int = field(default=0, metadata=cli(metavar="N"))
    """Examples per step for the train suite (0: the preset's)."""
    steps: int = field(default=0, metadata=cli(metavar="N"))
    """Timed steps (0: the suite's default)."""
    assignments: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True,
                                                                       metavar="KEY=VALUE"))
    """A suite-specific setting (repeatable); the value is read as JSON where it parses."""

    def validate(self):
        self.zero_stages()
        self.extra()

    def zero_stages(self) -> tuple[int, ...]:
        """``--zero 2,3`` as ``(2, 3)``."""
        try:
            return tuple(int(z) for z in self.zero.split(",") if z)
        except ValueError:
            raise ValueError(f"--zero {self.zero!r}: expected comma-separated ZeRO stages, e.g. 2,3") from None

    def extra(self) -> dict:
        """The ``--set`` settings, values read as JSON where they parse."""
        extra = {}
        for item in self.assignments:
            if "=" not in item:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            key, value = item.split("=", 1)
            try:
                extra[key] = json.loads(value)
            except json.JSONDecodeError:
                extra[key] = value
        return extra

    def options(self, device: str) -> BenchOptions:
        """What the suites get on ``device`` (resolved: cuda or cpu). On a CPU the figures only smoke-test
        the suites (timings there are for relative comparisons): always quick, the tiny preset by default."""
        return BenchOptions(device=device, preset=self.preset or ("nuwa-350m" if device == "cuda" else "tiny"),
                            quick=self.quick or device == "cpu", compare_baseline=self.compare_baseline,
                            zero_stages=self.zero_stages(), micro_batch_size=self.micro_batch_size,
                            steps=self.steps, extra=self.extra())


def add_arguments(parser: argparse.ArgumentParser):
    BenchCommand.add_flags(parser)


def run(args) -> int:
    command = BenchCommand.from_args(args)  # before torch: a bad --zero / --set fails at once
    import torch

    device = command.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible")
    opts = command.options(device)
    suites = SUITES if command.suite == "all" else (command.suite,)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "nuwa-ds bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [command.suite]),
        "device": device,
        "environment": environment(device),
        "options": asdict(opts),
        "suites": {},
    }
    for name in suites:
        module = importlib.import_module(f"nuwa_ds.bench.{name}")
        result = module.run(opts)
        report["suites"][name] = result
        print_table(name, result.get("rows", []))
    problems = validate_report(report)
    if command.out:
        Path(command.out).parent.mkdir(parents=True, exist_ok=True)
        Path(command.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {command.out}")
    if problems:
        print("report problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0
