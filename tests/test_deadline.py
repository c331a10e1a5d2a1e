"""The second line of defence behind the stop signals (issue 20): under Slurm the trainer reads the job's
end time and stops train.deadline_margin seconds before it. Parsing and decision on a fake clock here;
under the real Slurm in tests/test_slurm.py."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import threading
import time

import pytest

from nuwa_ds.config import ConfigError, TrainConfig
from nuwa_ds.training.deadline import JobTimes, SlurmDeadline, parse_slurm_time, read_job_times
from nuwa_ds.training.preemption import REQUEUE_EXIT_CODE
from test_train_utils import events, run, train_cmd

T0 = float(calendar.timegm((2026, 12, 2, 4, 0, 25, 0, 0, 0)))  # 2026-12-02T04:00:25 UTC


def test_parse_slurm_time_reads_utc_and_refuses_the_unknown():
    assert parse_slurm_time("2026-12-02T04:00:25") == T0
    assert parse_slurm_time(" 2026-12-02T04:00:25\n") == T0
    for text in ("NONE", "Unknown", "N/A", "UNLIMITED", "", "2026-12-02 04:00:25", "04:00:25", "tomorrow"):
        assert parse_slurm_time(text) is None, text


class FakeSqueue:
    def __init__(self, stdout="", returncode=0, stderr="", raises=None):
        self.stdout, self.returncode, self.stderr, self.raises = stdout, returncode, stderr, raises
        self.calls = []

    def __call__(self, args, env, **kwargs):
        self.calls.append((args, env, kwargs))
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(args, self.returncode, self.stdout, self.stderr)


def test_read_job_times_asks_squeue_in_utc_standard_format():
    fake = FakeSqueue("2026-12-02T03:58:25|2026-12-02T04:00:25\n")
    times, why = read_job_times("17", {"TZ": "Asia/Tokyo", "SLURM_TIME_FORMAT": "relative", "PATH": "/x"}, run=fake)
    assert why == "" and times == JobTimes(T0 - 120, T0, "squeue", "2026-12-02T03:58:25|2026-12-02T04:00:25")
    (args, env, kwargs), = fake.calls
    assert args == ["squeue", "--noheader", "--jobs=17", "--format=%S|%e"]
    assert env["TZ"] == "UTC0" and env["SLURM_TIME_FORMAT"] == "standard" and env["PATH"] == "/x"
    assert kwargs["timeout"] > 0
    # an UNLIMITED job: Slurm prints NONE for the end; a heterogeneous job: the earliest end
    assert read_job_times("17", {}, run=FakeSqueue("2026-12-02T03:58:25|NONE\n"))[0].end is None
    het = FakeSqueue("2026-12-02T03:58:25|2026-12-02T04:00:25\n2026-12-02T03:58:25|2026-12-02T05:00:25\n")
    assert read_job_times("17", {}, run=het)[0].end == T0


def test_read_job_times_falls_back_to_the_environment_and_reports_failures():
    missing = FakeSqueue(raises=FileNotFoundError("squeue"))
    times, why = read_job_times("17", {"SLURM_JOB_END_TIME": str(int(T0)), "SLURM_JOB_START_TIME": str(int(T0 - 60))},
                                run=missing)
    assert times == JobTimes(T0 - 60, T0, "SLURM_JOB_END_TIME", str(int(T0))) and why == ""
    times, why = read_job_times("17", {}, run=missing)
    assert times is None and "squeue failed" in why
    times, why = read_job_times("17", {}, run=FakeSqueue(returncode=1, stderr="slurm_load_jobs error: Invalid job id"))
    assert times is None and "Invalid job id" in why
    times, why = read_job_times("17", {}, run=FakeSqueue(raises=subprocess.TimeoutExpired("squeue", 20)))
    assert times is None and "timed out" in why


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _deadline(reads, margin=300.0, clock=None, environ=None, recheck=120.0):
    """A SlurmDeadline on a fake clock whose reads come from ``reads`` (a list, last one repeats)."""
    log, queue = [], list(reads)

    def read(job_id):
        assert job_id == "17"
        return queue.pop(0) if len(queue) > 1 else queue[0]

    d = SlurmDeadline(margin, environ={"SLURM_JOB_ID": "17"} if environ is None else environ,
                      log=lambda message, **fields: log.append((fields["state"], message)),
                      clock=clock or Clock(T0), read=read, recheck=recheck, background=False)
    return d, log


def test_stops_margin_seconds_before_the_end_and_stays_stopped():
    clock = Clock(T0)
    d, log = _deadline([(JobTimes(T0 - 10, T0 + 3600, "squeue"), "")], clock=clock)
    d.start()
    assert [s for s, _ in log] == ["armed"] and "ends at 2026-12-02 05:00:25 UTC (in 3600 s" in log[0][1]
    assert "300 s before it" in log[0][1]
    for now in (T0, T0 + 3000, T0 + 3299.9):
        clock.now = now
        assert not d.due()
    clock.now = T0 + 3300
    assert d.due() and d.triggered
    assert log[-1][0] == "due" and "Slurm job 17 ends at 2026-12-02 05:00:25 UTC" in log[-1][1]
    assert "stopping 300 s before it" in log[-1][1]
    clock.now = T0 + 3400
    assert d.due() and len(log) == 2  # said once


@pytest.mark.parametrize("environ, margin, reason", [({}, 300, "not a Slurm job"),
                                                     ({"SLURM_JOB_ID": "17"}, 0, "train.deadline_margin is 0"),
                                                     ({"SLURM_JOB_ID": "17"}, None, "train.deadline_margin is 0")])
def test_off_outside_slurm_or_without_a_margin_with_one_line(environ, margin, reason):
    clock = Clock(T0)
    d, log = _deadline([(JobTimes(T0, T0 + 1, "squeue"), "")], margin=margin, clock=clock, environ=environ)
    d.start()
    clock.now = T0 + 10**6
    assert not d.due() and not d.enabled
    assert len(log) == 1 and log[0][0] == "off" and reason in log[0][1]


def test_unlimited_job_and_a_limit_within_the_margin_turn_it_off_with_one_line():
    clock = Clock(T0)
    d, log = _deadline([(JobTimes(T0, None, "squeue", "2026-12-02T04:00:25|NONE"), "")], clock=clock, recheck=10)
    d.start()
    for k in range(5):
        clock.now = T0 + 100 * k
        assert not d.due()
    assert len(log) == 1 and log[0][0] == "off" and "has no end time" in log[0][1] and "NONE" in log[0][1]
    # a 4 minute job with the default 300 s margin would stop after one step of every requeue
    d, log = _deadline([(JobTimes(T0, T0 + 240, "squeue"), "")], clock=Clock(T0 + 5))
    d.start()
    assert not d.due() and len(log) == 1 and "not longer than train.deadline_margin (300 s)" in log[0][1]


def test_rereads_pick_up_a_shortened_limit_and_keep_the_last_end_time_when_a_read_fails():
    clock = Clock(T0)
    start = T0 - 60
    reads = [(JobTimes(start, start + 7200, "squeue"), ""),           # at start: 2 h
             (None, "squeue timed out"), (None, "squeue timed out"),  # two failed re-reads
             (JobTimes(start, start + 600, "squeue"), "")]            # scontrol update TimeLimit=10
    d, log = _deadline(reads, clock=clock, recheck=120)
    d.start()
    clock.now = T0 + 120
    assert not d.due()  # failed re-read: the end time stays, said once
    clock.now = T0 + 240
    assert not d.due()
    assert [s for s, _ in log] == ["armed", "unknown"] and "keeping the last end time" in log[1][1]
    clock.now = T0 + 300  # before the next recheck, but a checkpoint asks for a re-read
    d.refresh()
    assert d.due()  # ends at T0 + 540, 240 s from now: inside the margin
    assert [s for s, _ in log] == ["armed", "unknown", "armed", "due"]
    assert "ends at 2026-12-02 04:09:25 UTC" in log[2][1] and "was 2026-12-02 05:59:25 UTC" in log[2][1]


def test_a_requeued_job_with_a_new_end_time_does_not_stop_at_once():
    # the first run stopped inside the margin; the requeued job (same id) starts 2 min later with the
    # full limit again: the trainer of the new run reads the new times and trains on
    first_start = T0 - 3600 + 200
    clock = Clock(T0)
    d, log = _deadline([(JobTimes(first_start, first_start + 3600, "squeue"), "")], clock=clock)
    assert d.start().due()
    clock.now = T0 + 120
    d, log = _deadline([(JobTimes(T0 + 110, T0 + 110 + 3600, "squeue"), "")], clock=clock)
    d.start()
    assert not d.due() and [s for s, _ in log] == ["armed"]
    clock.now = T0 + 110 + 3300
    assert d.due()


def test_a_slow_reread_runs_in_the_background_and_never_holds_a_step():
    release, reads = threading.Event(), []

    def read(job_id):
        reads.append(time.monotonic())
        if len(reads) > 1:
            release.wait(10)  # the controller is slow to answer the re-read
            return JobTimes(T0 - 60, T0 + 300, "squeue"), ""  # shortened: inside the margin
        return JobTimes(T0 - 60, T0 + 7200, "squeue"), ""

    clock, log = Clock(T0), []
    d = SlurmDeadline(300, environ={"SLURM_JOB_ID": "17"}, log=lambda m, **f: log.append(f["state"]), clock=clock,
                      read=read, recheck=60).start()
    clock.now = T0 + 60
    started = time.monotonic()
    assert not d.due() and not d.due()  # the re-read started, the steps go on
    assert time.monotonic() - started < 1 and len(reads) == 2
    release.set()
    d._thread.join(5)
    assert d.due() and log == ["armed", "armed", "due"]  # its answer lands at the next step


def test_config_key():
    assert TrainConfig().deadline_margin == 300
    TrainConfig(deadline_margin=0).validate()
    TrainConfig(deadline_margin=None).validate()
    with pytest.raises(ConfigError, match="deadline_margin"):
        TrainConfig(deadline_margin=-1).validate()


FAKE_SQUEUE = """#!/bin/sh
# a stand-in for squeue: the job started 1000 s ago and ends in END_IN seconds (UTC, standard format)
[ "$TZ" = UTC0 ] && [ "$SLURM_TIME_FORMAT" = standard ] || {{ echo "TZ $TZ, format $SLURM_TIME_FORMAT" >&2; exit 1; }}
now=$(date +%s)
echo "$(date -u -d @$((now - 1000)) +%Y-%m-%dT%H:%M:%S)|$(date -u -d @$((now + {end_in})) +%Y-%m-%dT%H:%M:%S)"
"""


@pytest.mark.slow
def test_trainer_stops_for_a_requeue_before_the_job_ends(tmp_path):
    """One rank with SLURM_JOB_ID set and a stand-in squeue saying the job ends in 100 s: with a 120 s
    margin the first step's vote stops the run: checkpoint, exit 75, the requeue marker, one 'due' event."""
    bin_dir, run_dir, log = tmp_path / "bin", tmp_path / "run", tmp_path / "log.txt"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(FAKE_SQUEUE.format(end_in=100))
    (bin_dir / "squeue").chmod(0o755)
    marker = tmp_path / "requeue"
    cmd = train_cmd(0, run_dir, "train.steps=50", "train.save_every=100", "train.deadline_margin=120")
    rc = run(cmd, log, timeout=240, SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             TZ="JST-9", NUWA_REQUEUE_MARKER=marker)
    text = log.read_text()
    assert rc == REQUEUE_EXIT_CODE, text[-3000:]
    armed, due = events(run_dir, "deadline")
    assert armed["state"] == "armed" and armed["source"] == "squeue" and 95 <= armed["seconds_left"] <= 100
    assert abs(armed["end_time"] - (armed["time"] + armed["seconds_left"])) < 1  # UTC read as UTC under TZ=JST-9
    assert due["state"] == "due" and due["margin"] == 120
    (preempted,) = events(run_dir, "preempted")
    assert preempted["step"] == 1 and preempted["cause"] == "the Slurm job's end (train.deadline_margin)"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000001"
    assert marker.read_text().startswith("step 1 checkpoint ")
    assert "Slurm job 4242 ends at" in text and "stopping 120 s before it" in text
    assert json.loads((run_dir / "run_config.json").read_text())["train"]["deadline_margin"] == 120
