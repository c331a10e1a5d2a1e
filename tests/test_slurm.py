"""slurm/train.sbatch under a real single-node Slurm (brought up by scripts/slurm_up.sh).

2 CPU ranks train a few steps and checkpoint; the pre-timeout signal (delivered at once with
``scancel --batch --signal=USR1``) makes the job checkpoint and requeue itself; the requeued job (same
id, SLURM_RESTART_COUNT=1) resumes from that checkpoint and finishes. Without any signal, the job's
end time (moved close by ``scontrol update TimeLimit``) does the same through train.deadline_margin.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from test_train_utils import ROOT, TINY, clean_env, events, records, segments



def _why_no_slurm() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "bringing up Slurm needs root"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    # a requeued job may start again 5 s after its requeue (the script's default 10 s, Slurm's 120 s): each test's
    # requeued job starts ~5 s sooner
    up = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_up.sh")], env={**os.environ, "SLURM_CRED_EXPIRE": "5"},
                        capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]


def job_state(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def job_report(state: dict, log, tail: int = 6000) -> str:
    """A failed job's assertion message, as a string (pytest shortens a tuple's repr to ~240 characters):
    Slurm's view of the job, then the tail of the job log, which holds every rank's output (torchrun --tee)."""
    fields = " ".join(f"{k}={state.get(k)}" for k in ("JobId", "JobState", "Restarts", "ExitCode", "Reason", "NodeList"))
    text = log.read_text(errors="replace") if log.exists() else "(no job log)"
    return f"{fields}\n--- job log, last {tail} characters ---\n{text[-tail:]}"


def wait_until(predicate, what: str, log, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; job log:\n{log.read_text()[-4000:] if log.exists() else ''}")


@pytest.mark.slow
@pytest.mark.slurm
def test_train_sbatch_checkpoints_requeues_and_resumes(slurm, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    env = clean_env(RUN_DIR=run_dir, NPROC_PER_NODE=2, NUWA_FAULT_PAUSE_AT_STEP=4, SHUTDOWN_TIMEOUT=60)
    submit = subprocess.run(
        ["sbatch", "--parsable", "--job-name=nuwa-test", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
         f"--output={log}", "slurm/train.sbatch", "tiny", *TINY, "train.steps=8", "train.save_every=2",
         "train.micro_batch_size=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    try:
        # first run: steps 1-4 with checkpoints at 2 and 4, then the fault hook holds it after step 4
        wait_until(lambda: "pausing after step 4" in (log.read_text() if log.exists() else "")
                   and [e["step"] for e in events(run_dir, "checkpoint")] == [2, 4], "step 4 and its checkpoint", log)
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
        wait_until(lambda: job_state(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                   "the requeued job to finish", log)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    state = job_state(job_id)
    text = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", job_report(state, log)
    assert "restart 0:" in text and "restart 1:" in text and "requeueing job" in text, text[-4000:]
    # the ranks finished step 5, saved it and stopped; the requeued run resumed there and finished
    (preempted,) = events(run_dir, "preempted")
    assert preempted["step"] == 5
    (resumed,) = events(run_dir, "resume")
    assert resumed["step"] == 5 and resumed["path"].endswith("step_00000005")
    first, second = segments(run_dir)
    assert sorted(first) == [1, 2, 3, 4, 5] and sorted(second) == [6, 7, 8]
    assert events(run_dir, "end")[-1]["step"] == 8
    assert all(r["world_size"] == 2 and r["launcher"] == "torchrun" for r in records(run_dir)
               if r.get("event") == "start")
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000008"
    assert (run_dir / "logs" / f"job{job_id}.restart1").is_dir()  # per-job, per-restart rank logs


def _run_seconds(state: dict) -> int:
    """Slurm's RunTime (``[D-]HH:MM:SS``) in seconds."""
    days, _, clock = state["RunTime"].rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


@pytest.mark.slow
@pytest.mark.slurm
def test_train_sbatch_stops_before_the_job_end_without_a_signal(slurm, tmp_path):
    """The second line of defence (issue 20): no pre-timeout signal at all (``--signal=B:USR1@0``), the
    job's time limit shortened while it trains (``scontrol update TimeLimit``) so that it ends within
    train.deadline_margin: rank 0 re-reads the end time at the next checkpoint, every rank stops after
    the same step, the run checkpoints, exits for a requeue and the requeued job (limit set back) resumes
    and finishes. The job runs under TZ=Asia/Tokyo: the end time must still be read as what it is."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    # the limit becomes 2 minutes when the job has run 8..75 s: then 45..112 s are left, inside a 115 s margin,
    # and the new limit is still longer than the margin (else the defence turns itself off, see deadline.py)
    margin = 115
    env = clean_env(RUN_DIR=run_dir, NPROC_PER_NODE=2, SHUTDOWN_TIMEOUT=60, NUWA_FAULT_STEP_SECONDS=0.3,
                    TZ="Asia/Tokyo")
    submit = subprocess.run(
        ["sbatch", "--parsable", "--job-name=nuwa-deadline", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
         "--signal=B:USR1@0", f"--output={log}", "slurm/train.sbatch", "tiny", *TINY, "train.steps=30",
         "train.save_every=2", "train.micro_batch_size=2", f"train.deadline_margin={margin}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    try:
        wait_until(lambda: events(run_dir, "checkpoint") and _run_seconds(job_state(job_id)) >= 8,
                   "a checkpoint and 8 s of run time", log)
        running = _run_seconds(job_state(job_id))
        assert running < 75 and not events(run_dir, "end"), f"the first run was too slow or too fast ({running} s)"
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=2"], check=True, timeout=30)
        shortened_at = time.time()
        wait_until(lambda: job_state(job_id).get("Restarts") == "1", "the job to requeue itself", log, timeout=120)
        # the requeued job waits ~5 s (cred_expire) before it may start: give it its 10 minutes back meanwhile
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True, timeout=30)
        wait_until(lambda: job_state(job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                   "the requeued job to finish", log)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    state, text = job_state(job_id), log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", job_report(state, log)
    assert "USR1" not in text, text[-4000:]  # no signal came: the deadline did it
    assert "rank 0 stopped for a requeue: step" in text and "requeueing job" in text, text[-4000:]
    # first run: armed on the 10 minute limit (read as UTC despite TZ=Asia/Tokyo), re-armed on the shortened
    # one after a checkpoint, due at once; the requeued run: armed on its new end, never due
    first, moved, due, second = events(run_dir, "deadline")
    assert first["state"] == "armed" and 600 - 120 < first["end_time"] - first["time"] <= 600, first
    assert moved["state"] == "armed" and moved["end_time"] < first["end_time"] and moved["seconds_left"] < margin
    assert due["state"] == "due" and moved["time"] <= due["time"] < shortened_at + 30
    assert second["state"] == "armed" and second["seconds_left"] > margin and second["time"] > due["time"]
    (preempted,) = events(run_dir, "preempted")
    assert preempted["cause"] == "the Slurm job's end (train.deadline_margin)"
    assert preempted["time"] < moved["end_time"] - 30  # checkpointed long before Slurm's kill
    (resumed,) = events(run_dir, "resume")
    stop_step = preempted["step"]
    assert resumed["step"] == stop_step and resumed["path"].endswith(f"step_{stop_step:08d}")
    ran_first, ran_second = segments(run_dir)
    assert sorted(ran_first) == list(range(1, stop_step + 1)) and sorted(ran_second) == list(range(stop_step + 1, 31))
    assert events(run_dir, "end")[-1]["step"] == 30
    assert (run_dir / "logs" / f"job{job_id}.restart0" / "requeue").read_text().startswith(f"step {stop_step} ")
    assert not (run_dir / "logs" / f"job{job_id}.restart1" / "requeue").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_srun_tasks_are_ranks(slurm, tmp_path):
    """Without torchrun: ``srun -n 2 python -m nuwa_ds.cli train`` makes each task a rank (SLURM_PROCID)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        ["srun", "--ntasks=2", "--cpus-per-task=1", "--time=5", sys.executable, "-m", "nuwa_ds.cli", "train",
         "--config", "tiny", f"train.run_dir={run_dir}", *TINY, "train.steps=3", "train.ds_config=zero3"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (start,) = events(run_dir, "start")
    assert start["launcher"] == "srun" and start["world_size"] == 2
    (check,) = events(run_dir, "replica_check")
    assert check["equal"] and len(check["digests"]) == 2
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000003"


@pytest.mark.parametrize("script", ["train.sbatch", "bench.sbatch", "export.sbatch"])
def test_sbatch_scripts_parse(script):
    """Every script is valid bash and asks Slurm for a per-job log; train.sbatch also for the
    pre-timeout signal to its batch shell and for requeueing."""
    path = ROOT / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    directives = [line.split(None, 1)[1].strip() for line in path.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--output=logs/%x-%j.out" in directives
    if script == "train.sbatch":
        assert {"--requeue", "--open-mode=append", "--ntasks-per-node=1"} <= set(directives)
        assert any(d.startswith("--signal=B:USR1@") for d in directives)
        assert "export NUWA_REQUEUE_MARKER" in path.read_text()  # how a deadline stop under torchrun requeues
