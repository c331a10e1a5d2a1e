"""What a run reports, on rank 0: a progress bar, TensorBoard scalars and images, ``metrics.jsonl``.

``metrics.jsonl`` gets one line per logged step (``{"step", "loss", "lr", ...}``; null where a value
is not finite) and one per event
(``{"event": "start" | "resume" | "checkpoint" | "skip" | "preempted" | "diverged" | "replica_check"
| "eval" | "samples" | "end", ...}``); it is appended to, so a resumed run continues the same file. On
a terminal the progress bar shows step, loss, tokens/s and ETA; in a batch log (no TTY) a plain line
is printed every ``log_every`` steps instead of carriage-return noise.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

TB_SCALARS = {"loss": "train/loss", "bits_per_token": "train/bits_per_token", "lr": "train/lr",
              "grad_norm": "train/grad_norm",
              "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu", "mem_gib": "perf/peak_mem_gib",
              "skipped_steps": "train/skipped_steps", "step_time_s": "perf/step_time_s"}


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RunLogger:
    def __init__(self, run_dir: Path, is_main: bool, total_steps: int, start_step: int, log_every: int,
                 tensorboard: bool, progress: Optional[bool] = None):
        self.is_main, self.total, self.log_every = is_main, total_steps, log_every
        self.start_step = start_step
        self.started = time.monotonic()
        self.jsonl = self.tb = self.bar = None
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.1)

    def print(self, text: str):
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def event(self, name: str, message: Optional[str] = None, **fields):
        if not self.is_main:
            return
        self.jsonl.write(json.dumps({"event": name, "time": time.time(), **fields}) + "\n")
        if message:
            self.print(f"[nuwa-ds] {message}")

    def scalars(self, step: int, values: dict):
        """TensorBoard scalars under their own tags (e.g. ``val/loss``); non-finite values are left out."""
        if self.tb is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.tb.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, picture):
        """A TensorBoard image (``[H, W, 3]`` uint8) under ``tag`` (e.g. ``samples``)."""
        if self.tb is not None:
            self.tb.add_image(tag, picture, step, dataformats="HWC")

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.started) / done * (self.total - step)

    def step(self, step: int, metrics: dict):
        """Every step: the progress bar; every log_every steps (and the last): JSONL, TensorBoard, a line."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.3g}",
                                 refresh=False)
        if step % self.log_every and step != self.total:
            return
        # strict JSON for every reader (jq, pandas): a non-finite value is written as null
        finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **finite}, allow_nan=False) + "\n")
        if self.tb is not None:
            for key, tag in TB_SCALARS.items():
                value = metrics.get(key)
                if value is not None and math.isfinite(value):
                    self.tb.add_scalar(tag, value, step)
        if self.bar is None:
            shown = " ".join(f"{k} {_fmt(metrics[k])}" for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu",
                                                                    "mem_gib") if metrics.get(k) is not None)
            self.print(f"step {step}/{self.total} {shown} eta {format_duration(self.eta(step))}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
