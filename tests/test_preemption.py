"""Stop signals are never lost (issue 20): handlers re-asserted, blocked signals collected, workers quiet."""

from __future__ import annotations

import ctypes
import os
import random
import re
import signal
import threading
import time

import pytest

from nuwa_ds.training import checkpoint as C
from nuwa_ds.training.preemption import REQUEUE_EXIT_CODE, StopRequest, ignore_stop_signals
from test_train_utils import events, start, train_cmd, wait_for, write_token_shards


def _to_main_thread(sig):
    """A signal for this (main) thread: threads that imports started (torch starts one) may not block
    the stop signals, and the kernel could hand them a process-directed one."""
    signal.pthread_kill(threading.main_thread().ident, sig)


@pytest.fixture
def stop():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    request = StopRequest().install()
    yield request
    request.uninstall()
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


def test_replaced_python_handler_is_reinstalled(stop, capsys):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # what a library might do
    assert not stop.poll()
    assert signal.getsignal(signal.SIGUSR1) == stop._handle and stop.replaced == ["SIGUSR1"]
    assert "SIGUSR1 handler was replaced" in capsys.readouterr().out
    _to_main_thread(signal.SIGUSR1)
    assert stop.poll() and stop.signal_name == "SIGUSR1"


def test_pending_blocked_signal_is_collected_even_after_a_native_replacement(stop, capsys):
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal(signal.SIGTERM, 0)  # SIG_DFL behind CPython's back: getsignal() still shows our handler
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    _to_main_thread(signal.SIGTERM)  # blocked, so it neither kills us nor runs a handler
    time.sleep(0.01)
    assert signal.SIGTERM in signal.sigpending() and stop.signal_name is None
    assert stop.poll() and stop.signal_name == "SIGTERM"
    assert signal.SIGTERM not in signal.sigpending()
    assert stop.replaced == ["SIGTERM"]
    out = capsys.readouterr().out
    assert "in native code" in out and out.count("received (pid") == 1
    _to_main_thread(signal.SIGUSR1)  # a second stop signal: noted, not announced again
    assert stop.poll() and stop.signal_name == "SIGTERM" and "received" not in capsys.readouterr().out


def test_ctrl_c_twice_interrupts_at_once(stop):
    _to_main_thread(signal.SIGINT)  # never blocked: the handler runs at once
    assert stop.signal_name == "SIGINT" and stop.requested
    with pytest.raises(KeyboardInterrupt):
        _to_main_thread(signal.SIGINT)
        time.sleep(1)


def test_workers_ignore_stop_signals(stop):
    pid = os.fork()
    if pid == 0:  # like a DataLoader worker: inherits our handlers and the blocked mask
        code = 1
        try:
            ignore_stop_signals(0)
            for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), sig)
            time.sleep(0.05)
            code = 0 if stop.signal_name is None and not signal.sigpending() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ----------------------------------------------------------------------------------------------
# A real run: SIGUSR1 to the whole process group (as timeout and Slurm's --signal do)

RECEIVED = re.compile(r"(SIG\w+) received \(pid (\d+)\)")


def _stopped_run(tmp_path, name: str, send):
    """Train with 2 data workers on segments of one 4-sample shard (a segment rebuild every ~2 steps),
    call ``send(proc, log, run_dir)`` to signal it, and check the stop."""
    run_dir, log = tmp_path / name, tmp_path / f"{name}.txt"
    shards = write_token_shards(tmp_path / "shards", shards=3, per_shard=4)
    cmd = train_cmd(0, run_dir, "train.steps=100000", "train.save_every=100000", f"data.shards={shards}",
                    "data.num_workers=2", "data.shuffle_buffer=2", "data.prefetch_factor=1")
    proc = start(cmd, log)
    try:
        send(proc, log, run_dir)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == REQUEUE_EXIT_CODE, text[-3000:]
    (preempted,) = events(run_dir, "preempted")
    assert C.find_latest(run_dir / "checkpoints").step == preempted["step"]
    received = RECEIVED.findall(text)
    assert received == [("SIGUSR1", str(proc.pid))], text[-3000:]  # the trainer's line, none from workers
    return preempted["step"]


def _killpg(proc):
    try:
        os.killpg(proc.pid, signal.SIGUSR1)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigusr1_burst_to_the_group_from_worker_start_on(tmp_path):
    """A signal to the group every 10 ms from just before the workers are forked (the 'start' line comes
    right before the loop's first batch) until the run exits: every fork, worker start-up, segment
    rebuild and checkpoint falls inside the burst."""
    def send(proc, log, run_dir):
        wait_for(lambda: "training steps" in log.read_text(), proc, log)
        while proc.poll() is None:
            _killpg(proc)
            time.sleep(0.01)

    assert _stopped_run(tmp_path, "burst", send) >= 1


@pytest.mark.slow
def test_sigusr1_to_the_group_mid_run(tmp_path):
    """One signal at a random moment after step 3 (segments are rebuilt every ~2 steps), then once more
    as ``timeout`` does (to the child, then to the group)."""
    def send(proc, log, run_dir):
        wait_for(lambda: re.search(r'"step": 3\b', (run_dir / "metrics.jsonl").read_text()
                                   if (run_dir / "metrics.jsonl").exists() else ""), proc, log)
        time.sleep(random.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGUSR1)
        _killpg(proc)

    assert _stopped_run(tmp_path, "mid", send) >= 3


@pytest.mark.slow
def test_sigusr1_to_the_group_as_the_workers_fork(tmp_path):
    """One signal (twice, as ``timeout`` sends it) the moment the 'start' line is out: the loop forks the
    data workers right then, so it lands before, during or just after the fork."""
    def send(proc, log, run_dir):
        wait_for(lambda: "training steps" in log.read_text(), proc, log)
        time.sleep(random.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGUSR1)
        _killpg(proc)

    assert _stopped_run(tmp_path, "fork", send) >= 1
