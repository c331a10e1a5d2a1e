"""Preemption: a signal asks the run to stop at the next step boundary, save, and exit for a requeue.

Slurm sends SIGUSR1 ahead of the time limit (``--signal=B:USR1@...``, forwarded to the ranks by
``slurm/train.sbatch``) and SIGTERM when it preempts or cancels a job. A handler only sets a flag:
the training loop folds it into its per-step all-reduce, so every rank stops after the same step,
even when the signal reached the nodes at different moments. The first Ctrl-C does the same; a second
one interrupts at once.
"""

from __future__ import annotations

import os
import signal
import time

REQUEUE_EXIT_CODE = 75
"""Exit status after a checkpoint taken on a stop signal (EX_TEMPFAIL: 'try again later'); the
sbatch script requeues the job on it."""
DIVERGED_EXIT_CODE = 3
"""Exit status when max_bad_steps non-finite steps in a row stopped the run (no requeue)."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installs the stop-signal handlers (main thread only) and remembers the first signal received."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(f"[nuwa-ds] {self.signal_name} received (pid {os.getpid()}): checkpoint after this step, then exit",
                  flush=True)

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread): no handlers, no preemption
                break
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class Faults:
    """Fault injection for the tests of the guarantees above; inert unless its variables are set.

    * ``NUWA_FAULT_NAN_STEPS=3,7``   - the loss of these optimizer steps is multiplied by NaN.
    * ``NUWA_FAULT_PAUSE_AT_STEP=k`` - after step k (logged, checkpointed if due) wait until a stop
      signal arrives (at most 120 s), so a test can kill or signal the run at a known point.
    * ``NUWA_FAULT_KILL_IN_SAVE=k``  - SIGKILL this process while the checkpoint of step k is half
      written (engine files on disk, not yet published).
    * ``NUWA_FAULT_PAUSE_IN_EVAL=k`` - (tokenizer-train) after evaluation batch k wait like
      ``NUWA_FAULT_PAUSE_AT_STEP``, so a test can kill the run during its evaluation.
    """

    def __init__(self, environ=os.environ):
        self.nan_steps = {int(s) for s in environ.get("NUWA_FAULT_NAN_STEPS", "").split(",") if s.strip()}
        self.pause_at = int(environ.get("NUWA_FAULT_PAUSE_AT_STEP", "0") or 0)
        self.kill_in_save = int(environ.get("NUWA_FAULT_KILL_IN_SAVE", "0") or 0)
        self.pause_eval_at = int(environ.get("NUWA_FAULT_PAUSE_IN_EVAL", "0") or 0)

    def loss(self, step: int, loss):
        return loss * float("nan") if step in self.nan_steps else loss

    def pause(self, step: int, stop: StopRequest):
        if step == self.pause_at:
            self._wait(f"after step {step}", stop)

    def pause_in_eval(self, batch: int, stop: StopRequest | None):
        if batch == self.pause_eval_at:
            self._wait(f"in evaluation after batch {batch}", stop)

    @staticmethod
    def _wait(where: str, stop: StopRequest | None):
        print(f"[nuwa-ds] fault injection: pausing {where}", flush=True)
        deadline = time.monotonic() + 120
        while not (stop is not None and stop.requested) and time.monotonic() < deadline:
            time.sleep(0.05)

    def during_save(self, step: int):
        if step == self.kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)
