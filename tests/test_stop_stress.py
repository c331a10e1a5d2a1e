"""Stress test of the stop signals (issue 20): SIGUSR1 or SIGTERM to the whole process group of 2 ranks
with 2 data workers each, at seeded random moments aimed at the phases of a run, trial after trial.

One history, chained: trial k's ``--resume auto`` is trial k+1's run, so N trials cost N + 1 short
launches plus one uninterrupted reference run. Every trial must stop within one step of the signal on
both ranks, checkpoint that step, exit 75 on both ranks, print one "received" line per rank (none from
the workers), and the resumed history must repeat the reference run's losses bit for bit (fp32 on CPU).

The ranks are started the way ``srun`` starts tasks (one process per rank, the rank in the environment,
no launcher process in between), all in one process group that the test signals as ``timeout`` and
Slurm do; torchrun's forwarding of the signals is tested under Slurm (``test_slurm.py``). Every other
start-up trial launches fresh interpreters (the signal may fall in the imports); the other trials fork
their ranks from a server that imported torch and DeepSpeed once (``tests/rank_zygote.py``): from
``nuwa_ds.cli`` on, such a rank runs the user's code path, and a trial costs ~1-2 s instead of the
~5-15 s of a fresh launch's imports and interpreter teardown, which is what lets 30 trials fit the
suite's budget.

Moments (the phase cycles with the trial, the delay within it is seeded):

* ``startup``: after both ranks blocked the stop signals (``/proc/PID/status``), anywhere in the
  imports (fresh interpreters), DeepSpeed's set-up and the checkpoint load, before the first step;
* ``fork``: when the run logs its start, which is when the loader forks its data workers;
* ``data``: mid-run, while batches are loaded and the workers rebuild their segments (2 samples each,
  so each worker rebuilds every other batch);
* ``optimizer``: inside an optimizer step (``NUWA_FAULT_OPTIMIZER_SECONDS`` makes it last);
* ``checkpoint``: while a checkpoint is being written (``NUWA_FAULT_SAVE_SECONDS`` makes it last).

A signal that comes before the process has blocked the stop signals (the first milliseconds of the
interpreter, ~0.05 s after the launch here, before ``nuwa_ds.cli`` runs) takes the default action and kills the rank: no program can
catch it there, so the trials start at the block. ``NUWA_STRESS_TRIALS`` / ``NUWA_STRESS_SEED`` run
more trials or other moments.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nuwa_ds.training import checkpoint as C
from nuwa_ds.training.preemption import REQUEUE_EXIT_CODE
from rank_zygote import Zygote
from test_train_utils import ROOT, clean_env, events, free_port, records, segments, train_cmd, write_token_shards

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("NUWA_STRESS_TRIALS", "30"))
"""The issue's 30 (docs/benchmarks.md: the test's cost on 2 idle cores)."""
SEED = int(os.environ.get("NUWA_STRESS_SEED", "20"))
PHASES = ("startup", "fork", "data", "optimizer", "checkpoint")
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STEPS = 4 * TRIALS + 12
"""Steps of the history: a trial advances it by 1-6 steps (2 on average)."""
SAVE_EVERY = 2
OPTIMIZER_SECONDS = 0.15
SAVE_SECONDS = 0.2
RECEIVED = re.compile(r"(SIG\w+) received \(pid (\d+)\)")
STOP_MASK = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1))


@dataclass
class Launch:
    procs: list[subprocess.Popen]
    logs: list[Path]
    started: float
    """time.time() at the launch"""
    blocked: float = 0.0
    """time.time() when both ranks had blocked the stop signals"""

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- rank {r} log (pid {p.pid}) ---\n{log.read_text()[-chars:]}"
                         for r, (p, log) in enumerate(zip(self.procs, self.logs)))

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def kill(self):
        try:
            os.killpg(self.procs[0].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in self.procs:
            p.wait()


def launch(run_dir: Path, shards: str, log_dir: Path, name: str, resume: bool, zygote: Zygote | None = None,
           **faults) -> Launch:
    """Both ranks, each a ``nuwa-ds train`` process, in one new process group (rank 0's): fresh
    interpreters, or forked by ``zygote``."""
    cmd = train_cmd(0, run_dir, "train.ds_config=zero2", f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}",
                    "train.micro_batch_size=1", "train.grad_accum_steps=1", f"data.shards={shards}",
                    "data.num_workers=2", "data.shuffle_buffer=2", "data.prefetch_factor=1")
    cmd += ["--resume", "auto"] if resume else []
    port, procs, logs, started = free_port(), [], [], time.time()
    for rank in range(2):
        env = clean_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=port, **faults)
        group = procs[0].pid if procs else 0
        logs.append(log_dir / f"{name}.rank{rank}.txt")
        if zygote is not None:  # cmd is [python, -m, nuwa_ds.cli, train, ...]
            procs.append(zygote.start(cmd[3:], env, logs[-1], pgid=group))
            continue
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT,
                                      preexec_fn=lambda group=group: os.setpgid(0, group)))
    return Launch(procs, logs, started)


def stop_signals_blocked(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return blocked & STOP_MASK == STOP_MASK


def wait_until(predicate, run: Launch, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if not run.running():
            raise AssertionError(f"a rank exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def step_times(run_dir: Path) -> list[tuple[int, float]]:
    """(step, time logged) of the steps logged since the last start event."""
    out: list[tuple[int, float]] = []
    for rec in records(run_dir):
        if rec.get("event") == "start":
            out = []
        elif "loss" in rec and "event" not in rec:
            out.append((rec["step"], rec["time"]))
    return out


class Metrics:
    """What a launch appends to ``metrics.jsonl``, read incrementally (the test polls it every few ms)."""

    def __init__(self, run_dir: Path):
        self.path, self.offset, self.text = run_dir / "metrics.jsonl", 0, ""
        if self.path.exists():
            self.offset = self.path.stat().st_size

    def read(self) -> str:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            whole = chunk[:chunk.rfind(b"\n") + 1]
            self.offset += len(whole)
            self.text += whole.decode()
        return self.text

    def started(self) -> bool:
        return '"event": "start"' in self.read()

    def steps(self) -> int:
        return self.read().count('"loss": ')


def aim(phase: str, rng: random.Random, run: Launch, run_dir: Path, metrics: Metrics, startup_s: float):
    """Wait for the moment of ``phase`` (plus a seeded delay); returns a description of it."""
    wait_until(lambda: all(stop_signals_blocked(p.pid) for p in run.procs), run, "the ranks to block the stop signals")
    run.blocked = time.time()
    if phase == "startup":  # a fraction of the last launch's start-up, cut short if this one is quicker
        delay = rng.uniform(0, 0.9 * startup_s)
        end = time.monotonic() + delay
        while time.monotonic() < end and not metrics.started():
            time.sleep(0.01)
        return f"{delay:.3f} s after both ranks blocked the signals" + (" (cut short by the start)"
                                                                        if metrics.started() else "")
    wait_until(metrics.started, run, "the start event")
    if phase == "fork":
        delay = rng.uniform(0, 0.15)
    elif phase == "data":
        wait_until(lambda: metrics.steps() > 0, run, "a first step")
        delay = rng.uniform(0, 0.12)
    elif phase == "optimizer":  # a logged step; the next step's optimizer phase lasts OPTIMIZER_SECONDS
        first = metrics.steps()
        wait_until(lambda: metrics.steps() > first, run, "a step")
        delay = rng.uniform(0.04, 0.9 * OPTIMIZER_SECONDS)
    else:  # checkpoint: its directory exists while it is written, for SAVE_SECONDS at least
        ckpt = run_dir / "checkpoints"
        wait_until(lambda: any(ckpt.glob("step_*.tmp")), run, "a checkpoint write", timeout=60)
        delay = rng.uniform(0, 0.7 * SAVE_SECONDS)
    time.sleep(delay)
    return f"{delay:.3f} s after the {phase} mark"


def check_trial(run: Launch, run_dir: Path, phase: str, sig: signal.Signals, sent_at: float,
                start_step: int) -> tuple[int, bool]:
    """The trial's stop: exit 75 on both ranks, one "received" line each, the checkpoint of the stop
    step, and that step within one step of the signal. Returns the stop step less the steps logged before the signal
    (1: the step in progress), and whether the signal came provably before that step's all-reduce (then
    the stop must be that very step)."""
    codes = [p.wait(timeout=120) for p in run.procs]
    assert codes == [REQUEUE_EXIT_CODE] * 2, f"exit codes {codes}"
    for p, log in zip(run.procs, run.logs):
        received = RECEIVED.findall(log.read_text())
        assert received == [(sig.name, str(p.pid))], f"'received' lines of pid {p.pid}: {received}"
    stopped = events(run_dir, "preempted")[-1]
    stop = stopped["step"]
    assert stopped["cause"] == sig.name, stopped
    # The step in progress at the signal is the first one not yet logged. It is the last, unless the
    # signal fell between its all-reduce (where the vote is taken) and its log line: then the next one.
    logged = [t for _, t in step_times(run_dir) if t < sent_at]
    done = start_step + len(logged)
    assert done + 1 <= stop <= done + 2, f"stopped after step {stop}; {done} steps were done at the signal"
    # That all-reduce cannot come before the last log line (or the start) plus the slow phase in between
    # (the next step's optimizer sleep, the checkpoint of this step): a signal before it must stop the
    # very step in progress.
    last = logged[-1] if logged else events(run_dir, "start")[-1]["time"]
    slow = {"optimizer": OPTIMIZER_SECONDS, "checkpoint": SAVE_SECONDS if done % SAVE_EVERY == 0 and logged else 0}
    before_vote = sent_at < last + slow.get(phase, 0) or (not logged and phase == "startup"
                                                           and sent_at < events(run_dir, "start")[-1]["time"])
    if before_vote:
        assert stop == done + 1, f"stopped after step {stop}, though the signal came before step {done + 1}'s vote"
    latest = C.find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.step == stop, f"latest checkpoint {latest}, stop step {stop}"
    assert {p.name for p in latest.path.glob("nuwa_rank*.pt")} == {C.rank_file(0), C.rank_file(1)}
    return stop - done, before_vote


@pytest.fixture
def zygote():
    server = Zygote(ROOT, clean_env())
    yield server
    server.close()


def test_stop_signals_at_random_moments_of_two_ranks_with_workers(tmp_path, zygote):
    shards = write_token_shards(tmp_path / "shards", shards=4, per_shard=4)
    logs = tmp_path / "logs"
    logs.mkdir()

    reference_dir = tmp_path / "reference"
    reference = launch(reference_dir, shards, logs, "reference", resume=False)
    codes = [p.wait(timeout=300) for p in reference.procs]
    assert codes == [0, 0], reference.tails()
    (expected,) = segments(reference_dir)
    assert sorted(expected) == list(range(1, STEPS + 1))
    # a start-up trial signals within a fraction of the start-up, as long as the last start-up trial of the
    # same kind of launch (fresh or forked) took; the reference run's until there is one
    startup_s = dict.fromkeys((True, False), events(reference_dir, "start")[0]["time"] - reference.started)

    run_dir, step, strict, lags, summary, timeline = tmp_path / "run", 0, 0, [], [], []
    for trial in range(TRIALS):
        rng = random.Random(f"{SEED}-{trial}")
        phase, sig = PHASES[trial % len(PHASES)], rng.choice(SIGNALS)
        twice = rng.random() < 0.25  # as timeout does: the child, then the group
        faults = {"optimizer": {"NUWA_FAULT_OPTIMIZER_SECONDS": OPTIMIZER_SECONDS},
                  "checkpoint": {"NUWA_FAULT_SAVE_SECONDS": SAVE_SECONDS}}.get(phase, {})
        what = (f"trial {trial} (NUWA_STRESS_SEED={SEED}): {sig.name}{' twice' if twice else ''} at phase {phase}, "
                f"resumed from step {step}")
        assert step < STEPS - 12, f"{what}: the trials used up the history's {STEPS} steps"
        metrics = Metrics(run_dir)
        # every other start-up trial in fresh interpreters (a signal in the imports), the rest forked
        fresh = phase == "startup" and trial % (2 * len(PHASES)) == 0
        run = launch(run_dir, shards, logs, f"trial{trial:03d}", resume=trial > 0, zygote=None if fresh else zygote,
                     **faults)
        moment = "before the moment"
        try:
            moment = aim(phase, rng, run, run_dir, metrics, startup_s[fresh])
            sent_at = time.time()
            os.killpg(run.procs[0].pid, sig)
            if twice:
                time.sleep(rng.uniform(0, 0.05))
                try:
                    os.killpg(run.procs[0].pid, sig)
                except ProcessLookupError:
                    pass
            lag, before_vote = check_trial(run, run_dir, phase, sig, sent_at, step)
            lags.append(lag)
            strict += before_vote
            if phase == "startup":
                startup_s[fresh] = events(run_dir, "start")[-1]["time"] - run.blocked
            timeline.append((run.blocked - run.started, sent_at - run.blocked, time.time() - sent_at))
            step = events(run_dir, "preempted")[-1]["step"]
            summary.append(f"{trial}:{phase}:{sig.name}->{step}")
        except Exception as failure:
            run.kill()
            raise AssertionError(f"{what}, {moment}: {type(failure).__name__}: {failure}\n"
                                 f"{run.tails()}") from None
        finally:
            if run.running():
                run.kill()
    print(f"{TRIALS} trials, stop steps: {' '.join(summary)}; steps from the signal to the stop: "
          f"{sorted(lags)}; {strict} signals provably before the next step's all-reduce")
    timings = ", ".join(f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in timeline)
    print(f"seconds from the launch to the signals blocked / to the signal / from the signal to the exit: {timings}")

    final = launch(run_dir, shards, logs, "final", resume=True, zygote=zygote)
    codes = [p.wait(timeout=300) for p in final.procs]
    assert codes == [0, 0], final.tails()
    history = segments(run_dir)
    assert len(history) == TRIALS + 1
    assert [e["step"] for e in events(run_dir, "resume")] == [e["step"] for e in events(run_dir, "preempted")]
    for n, segment in enumerate(history):
        for s, loss in segment.items():
            assert loss == expected[s], f"launch {n}, step {s}: loss {loss}, uninterrupted run {expected[s]}"
    assert max(history[-1]) == STEPS


def test_a_signal_to_one_rank_stops_both_and_names_the_other_rank(tmp_path, zygote):
    """Slurm may signal one node's ranks and not yet the other's: the rank that got nothing stops after the
    same step (the vote is in the step's all-reduce) and rank 0, which logs the event, names the cause as
    a stop on another rank; only the signalled rank prints a "received" line. (The other order, a group
    signal that lands on rank 0 just after its vote, names the signal: rank 0 collects it before naming.)"""
    shards = write_token_shards(tmp_path / "shards", shards=4, per_shard=4)
    run_dir = tmp_path / "run"
    run = launch(run_dir, shards, tmp_path, "one", resume=False, zygote=zygote)
    try:
        metrics = Metrics(run_dir)
        wait_until(lambda: metrics.steps() >= 2, run, "two steps")
        os.kill(run.procs[1].pid, signal.SIGUSR1)
        codes = [p.wait(timeout=120) for p in run.procs]
        assert codes == [REQUEUE_EXIT_CODE] * 2, run.tails()
    finally:
        if run.running():
            run.kill()
    (stopped,) = events(run_dir, "preempted")
    assert stopped["cause"] == "a stop on another rank", stopped
    assert [RECEIVED.findall(log.read_text()) for log in run.logs] == [[], [("SIGUSR1", str(run.procs[1].pid))]]
    assert C.find_latest(run_dir / "checkpoints").step == stopped["step"]
