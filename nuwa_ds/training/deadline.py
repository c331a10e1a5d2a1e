"""The Slurm job's end time: the second line of defence behind the stop signals (issue 20).

A stop signal can be missed for reasons outside the process (a batch script that does not forward it,
a job submitted without ``--signal``, a signal sent ~30 s late by the controller's cycle, a node
daemon that drops it). So under Slurm the trainer also reads the job's end time and, once fewer than
``train.deadline_margin`` seconds are left, votes to stop through the same per-step all-reduce as a
signal: every rank finishes the same step, the run checkpoints and exits 75 for a requeue.

Only rank 0 reads the end time (one query to the controller per job, not per rank); its vote is
enough, the all-reduce tells every other rank. The read: Slurm 22.05 (the version here) exports no
end time to the job (newer releases set ``SLURM_JOB_END_TIME``, but an environment variable cannot
follow a later ``scontrol update``), so the controller is asked, ``squeue -h -j $SLURM_JOB_ID -o '%S|%e'``, with ``TZ=UTC0`` and
``SLURM_TIME_FORMAT=standard`` in the command's environment: its ISO times are then UTC whatever the
node's zone or the user's time format, and parse without guessing. ``SLURM_JOB_END_TIME`` is the
fallback where squeue cannot be run. The end time is read at the start (synchronously) and again
every ``RECHECK_S`` seconds and after every checkpoint (in a background thread, so a slow controller
never holds a step), since ``scontrol update TimeLimit=...`` or a suspension moves it. A failed
re-read keeps the last known end time; an end time Slurm does not know (``NONE``: an UNLIMITED job)
turns the defence off, with one log line. A requeued job starts with a new start and end time, so
it stops again only when it is itself inside the margin; a job whose whole time limit is not longer
than the margin would stop after the first step of every requeue, so the defence is off for it
(and says so).
"""

from __future__ import annotations

import calendar
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

DEFAULT_MARGIN_S = 300.0
"""``train.deadline_margin`` default: the lead ``slurm/train.sbatch`` asks of the USR1 signal."""
RECHECK_S = 120.0
"""Seconds between re-reads of the end time (also re-read after each checkpoint)."""
QUERY_TIMEOUT_S = 20.0
"""How long one ``squeue`` may take before the read counts as failed."""

_UNKNOWN = {"", "NONE", "UNKNOWN", "N/A", "UNLIMITED", "INFINITE", "INVALID"}


def parse_slurm_time(text: str) -> Optional[float]:
    """Seconds since the epoch of a Slurm time printed as UTC in the standard format
    (``2026-12-02T04:00:25``); None for what Slurm prints when it does not know (NONE, Unknown, N/A)
    and for anything that does not parse."""
    text = text.strip()
    if text.upper() in _UNKNOWN:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def format_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


@dataclass(frozen=True)
class JobTimes:
    """What Slurm says about the job's time: start and end (epoch seconds; None when unknown)."""

    start: Optional[float]
    end: Optional[float]
    source: str
    """Where it was read: ``squeue`` or ``SLURM_JOB_END_TIME``."""
    raw: str = ""
    """The text read, for the log."""


def read_job_times(job_id: str, environ: Mapping[str, str] = os.environ,
                   run: Callable = subprocess.run, timeout: float = QUERY_TIMEOUT_S) -> tuple[Optional[JobTimes], str]:
    """The job's start and end time from the controller (squeue), else from ``SLURM_JOB_END_TIME``.
    Returns ``(times, "")``, or ``(None, why)`` when neither could be read (a failure, not 'unlimited':
    an UNLIMITED job reads as ``JobTimes(end=None)``)."""
    env = {**environ, "TZ": "UTC0", "SLURM_TIME_FORMAT": "standard"}
    why = ""
    try:
        proc = run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%S|%e"], env=env, capture_output=True,
                   text=True, timeout=timeout)
        lines = [line.strip() for line in proc.stdout.splitlines() if "|" in line]
        if proc.returncode == 0 and lines:
            # one line per component of a heterogeneous job: the earliest end is the one that matters
            starts, ends = zip(*(line.split("|", 1) for line in lines))
            start = [t for t in map(parse_slurm_time, starts) if t is not None]
            end = [t for t in map(parse_slurm_time, ends) if t is not None]
            return JobTimes(min(start) if start else None, min(end) if end else None, "squeue", lines[0]), ""
        why = f"squeue exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200] or 'no such job'}"
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"squeue failed: {exc}"
    end_env = environ.get("SLURM_JOB_END_TIME", "").strip()
    if end_env:
        try:
            end = float(end_env)
        except ValueError:
            return None, f"{why}; SLURM_JOB_END_TIME={end_env!r} is not a number"
        start_env = environ.get("SLURM_JOB_START_TIME", "").strip()
        start = float(start_env) if start_env.isdigit() else None
        # 0 or a far-future value is what an unlimited job gets
        return JobTimes(start, end if 0 < end < 2**32 else None, "SLURM_JOB_END_TIME", end_env), ""
    return None, why


class SlurmDeadline:
    """Rank 0's vote to stop ``margin`` seconds before the end of its Slurm job (``due()``, asked at
    every step boundary like ``StopRequest.poll``). ``log(message, **fields)`` gets every line worth
    saying (the trainer makes them ``deadline`` events); it is called only from the caller's thread.

    ``clock``: wall-clock seconds since the epoch (Slurm's times are wall-clock); ``read``: a
    ``read_job_times``-like function of the job id; ``background=False`` re-reads synchronously
    (tests)."""

    def __init__(self, margin: Optional[float], environ: Mapping[str, str] = os.environ,
                 log: Callable[..., None] = lambda message, **fields: print(f"[nuwa-ds] {message}", flush=True),
                 clock: Callable[[], float] = time.time, read: Optional[Callable] = None,
                 recheck: float = RECHECK_S, background: bool = True):
        self.margin = float(margin) if margin else 0.0
        self.job_id = environ.get("SLURM_JOB_ID", "").strip()
        self.log, self.clock, self.recheck, self.background = log, clock, recheck, background
        self.read = read or (lambda job_id: read_job_times(job_id, environ))
        self.end: Optional[float] = None
        """The end time in force (None: the defence is off or not yet known)."""
        self.triggered = False
        self._next_read = float("inf")
        self._pending: Optional[tuple] = None
        self._thread: Optional[threading.Thread] = None
        self._failed = False
        self._off_reason: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.margin > 0 and bool(self.job_id)

    def start(self) -> "SlurmDeadline":
        """The first read (synchronous); logs the one line that says whether the defence is on."""
        if not self.enabled:
            why = "not a Slurm job" if not self.job_id else "train.deadline_margin is 0"
            self.log(f"deadline: off ({why}): only a stop signal or train.time_limit stops the run early",
                     state="off", reason=why, job_id=self.job_id or None, margin=self.margin)
            return self
        self._apply(*self.read(self.job_id))
        self._next_read = self.clock() + self.recheck
        return self

    def refresh(self):
        """Re-read the end time soon (the trainer calls it after each checkpoint)."""
        if self.enabled and not self.triggered:
            self._next_read = min(self._next_read, self.clock())

    def due(self) -> bool:
        """True once fewer than ``margin`` seconds are left before the job's end (stays True)."""
        if not self.enabled or self.triggered:
            return self.triggered
        now = self.clock()
        if self._pending is not None:
            result, self._pending = self._pending, None
            self._apply(*result)
        if now >= self._next_read and (self._thread is None or not self._thread.is_alive()):
            self._next_read = now + self.recheck
            if self.background:
                self._thread = threading.Thread(target=self._read_into_pending, name="nuwa-slurm-deadline",
                                                daemon=True)
                self._thread.start()
            else:
                self._apply(*self.read(self.job_id))
        if self.end is not None and now >= self.end - self.margin:
            self.triggered = True
            self.log(f"deadline: Slurm job {self.job_id} ends at {format_utc(self.end)} (in {self.end - now:.0f} s), "
                     f"stopping {self.margin:.0f} s before it (train.deadline_margin): checkpoint after this step, "
                     f"then exit for a requeue", state="due", job_id=self.job_id, end_time=self.end,
                     seconds_left=round(self.end - now, 1), margin=self.margin)
        return self.triggered

    def _read_into_pending(self):
        try:
            self._pending = self.read(self.job_id)
        except Exception as exc:  # never let a re-read kill the run; the last end time stays
            self._pending = (None, f"reading the end time raised {exc!r}")

    def _apply(self, times: Optional[JobTimes], why: str):
        fields = {"job_id": self.job_id, "margin": self.margin}
        if times is None:  # the read failed: keep what we knew, say so once
            if not self._failed:
                self._failed = True
                kept = (f"keeping the last end time, {format_utc(self.end)}" if self.end is not None
                        else "the defence is off until a read succeeds")
                self.log(f"deadline: could not read the end time of Slurm job {self.job_id} ({why}); {kept}; "
                         f"retrying every {self.recheck:.0f} s", state="unknown", reason=why, **fields)
            return
        self._failed = False
        end, off = times.end, None
        if end is None:
            off = f"Slurm job {self.job_id} has no end time ({times.source}: {times.raw or 'empty'}, e.g. UNLIMITED)"
        elif times.start is not None and end - times.start <= self.margin:
            off = (f"the time limit of Slurm job {self.job_id} ({end - times.start:.0f} s) is not longer than "
                   f"train.deadline_margin ({self.margin:.0f} s): every requeue would stop after its first step")
        if off is not None:
            self.end = None
            if off != self._off_reason:
                self._off_reason = off
                self.log(f"deadline: off: {off}; only a stop signal or train.time_limit stops the run before the "
                         f"job's end", state="off", reason=off, source=times.source, **fields)
            return
        previous, self.end, self._off_reason = self.end, end, None
        if end != previous:
            left = end - self.clock()
            was = f", was {format_utc(previous)}" if previous is not None else ""
            self.log(f"deadline: Slurm job {self.job_id} ends at {format_utc(end)} (in {left:.0f} s, from "
                     f"{times.source}{was}); the run checkpoints and exits {self.margin:.0f} s before it "
                     f"(train.deadline_margin)", state="armed", end_time=end, seconds_left=round(left, 1),
                     source=times.source, **fields)


__all__ = ["SlurmDeadline", "JobTimes", "read_job_times", "parse_slurm_time", "DEFAULT_MARGIN_S", "RECHECK_S"]
