"""Preemption: a signal asks the run to stop at the next step boundary, save, and exit for a requeue.

Slurm sends SIGUSR1 ahead of the time limit (``--signal=B:USR1@...``, forwarded to the ranks by
``slurm/train.sbatch``) and SIGTERM when it preempts or cancels a job. Those two stay blocked in
every thread and are collected at each step boundary (``StopRequest``), so no library can take them;
the training loop folds the request into its per-step all-reduce, so every rank stops after the same
step, even when the signal reached the nodes at different moments. The first Ctrl-C does the same (a
handler sets the flag); a second one interrupts at once. Data workers ignore all three
(``ignore_stop_signals``): the trainer owns the stop.

Shared by the DeepSpeed trainer (``nuwa_ds.train``), the tokenizer trainer and the data workers, so it
sits at the bottom of the layers (standard library only; docs/design.md, "11. Layers");
``nuwa_ds.training.preemption`` re-exports it under its older name.
"""

from __future__ import annotations

import os
import signal
import threading
import time

REQUEUE_EXIT_CODE = 75
"""Exit status after a checkpoint taken on a stop signal (EX_TEMPFAIL: 'try again later'); the
sbatch script requeues the job on it."""
REQUEUE_MARKER_ENV = "NUWA_REQUEUE_MARKER"
"""A file rank 0 writes after a stop for a requeue (checkpoint published), when this variable names one:
a launcher that reports a rank's 75 as its own failure (torchrun exits 1) hides the status, the file does not."""
DIVERGED_EXIT_CODE = 3
"""Exit status when max_bad_steps non-finite steps in a row stopped the run (no requeue)."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
BLOCKED_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""The scheduler's stop signals, kept blocked in every thread of a training process (see ``StopRequest``)."""


def leave_requeue_marker(step: int, checkpoint, environ=os.environ):
    """Write ``$NUWA_REQUEUE_MARKER`` (if set): the run stopped after ``step`` for a requeue, its checkpoint
    is ``checkpoint``. ``slurm/train.sbatch`` requeues the job when it finds the file."""
    path = environ.get(REQUEUE_MARKER_ENV)
    if path:
        with open(path, "w") as f:
            f.write(f"step {step} checkpoint {checkpoint}\n")


def block_stop_signals() -> set:
    """Block SIGUSR1 and SIGTERM in the calling thread and in every thread it starts from now on; returns
    the previous mask. ``nuwa-ds train`` calls it before anything starts a thread (CUDA, NCCL, DeepSpeed,
    TensorBoard, DataLoader workers all inherit the mask), so the kernel cannot hand such a signal to some
    library thread: it stays pending until the trainer collects it (``StopRequest.poll``)."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_SIGNALS)


def restore_signal_mask(previous: set):
    """Undo ``block_stop_signals``; stop signals still pending are taken first (the run is over), so
    unblocking cannot hand them to SIG_DFL and kill the process."""
    while signal.sigtimedwait(BLOCKED_SIGNALS, 0) is not None:
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int = 0):
    """``worker_init_fn`` of the data workers: the trainer owns the stop, workers ignore the stop signals
    (a worker forked by the trainer inherits its handlers and its blocked mask; ignoring a signal also
    drops it if pending) and unblock them afterwards so that nothing stays queued there."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


_SIGACTION = []


def _c_handler(sig: int):
    """The address the kernel calls for ``sig`` (what ``sigaction`` reports), or None where unknown. A
    native library can replace CPython's handler this way, which ``signal.getsignal`` never shows."""
    try:
        if not _SIGACTION:
            import ctypes

            class SigAction(ctypes.Structure):  # Linux libc: handler, sa_mask (128 bytes), flags, restorer
                _fields_ = [("handler", ctypes.c_void_p),
                            ("mask", ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
                            ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]

            _SIGACTION.extend([ctypes.CDLL(None).sigaction, SigAction, ctypes.byref])
        sigaction, SigAction, byref = _SIGACTION
        action = SigAction()
        return action.handler if sigaction(int(sig), None, byref(action)) == 0 else None
    except (OSError, AttributeError, TypeError, ValueError):
        return None


class StopRequest:
    """The stop signals of a training process, which must never be lost (issue 20, docs/decisions.md).

    * SIGUSR1 and SIGTERM are blocked in the main thread (and, via ``block_stop_signals`` early in
      ``nuwa-ds train``, in every thread): they stay pending in the kernel whatever a library does to
      the handlers, and ``poll()`` collects them with ``sigtimedwait(..., 0)`` at every step boundary.
    * Handlers stay installed too (the path for SIGINT, and for a stop signal that some library thread
      left unblocked): they only set a flag. ``poll()`` also re-asserts them, at the Python and at the
      C level, and warns once if something had replaced them.
    * SIGINT is never blocked, so a second Ctrl-C still interrupts at once.

    Only the main thread installs anything (``signal.signal`` raises elsewhere: no preemption there).
    The trainer prints the single "received" line, from ``poll()``, never from inside a handler."""

    def __init__(self):
        self.signal_name: str | None = None
        self._announced = False
        self._previous: dict = {}
        self._c_handlers: dict = {}
        self._mask = None
        self.replaced: list[str] = []
        """Signals whose handler was found replaced (and reinstalled)."""

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._note(signum)

    def _note(self, signum: int):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # not the main thread (e.g. a test runner thread): no handlers, no preemption
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
            self._c_handlers[sig] = _c_handler(sig)
        self._mask = block_stop_signals()
        return self

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def check_handlers(self):
        """Reinstall any stop handler that a library replaced since ``install`` (warns once per signal)."""
        for sig in self._previous:
            python_level = signal.getsignal(sig) != self._handle
            known = self._c_handlers[sig]
            c_level = not python_level and known is not None and _c_handler(sig) != known
            if python_level or c_level:
                name = signal.Signals(sig).name
                if name not in self.replaced:
                    self.replaced.append(name)
                    print(f"[nuwa-ds] warning: the {name} handler was replaced "
                          f"({'by ' + repr(signal.getsignal(sig)) if python_level else 'in native code'}); "
                          f"reinstalled", flush=True)
                signal.signal(sig, self._handle)
                self._c_handlers[sig] = _c_handler(sig)

    def poll(self) -> bool:
        """Collect pending stop signals and re-assert the handlers (call at every step boundary); True
        once a stop was requested. Prints the one "received" line of the process."""
        if self.installed:
            while True:
                info = signal.sigtimedwait(BLOCKED_SIGNALS, 0)
                if info is None:
                    break
                self._note(info.si_signo)
            self.check_handlers()
        if self.signal_name is not None and not self._announced:
            self._announced = True
            print(f"[nuwa-ds] {self.signal_name} received (pid {os.getpid()}): checkpoint after this step, then exit",
                  flush=True)
        return self.signal_name is not None

    def uninstall(self):
        if not self.installed:
            return
        self.poll()  # whatever is pending now is noted, not left for the restored handlers
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        restore_signal_mask(self._mask)

    @property
    def requested(self) -> bool:
        return self.poll()


class Faults:
    """Fault injection for the tests of the guarantees above; inert unless its variables are set.

    * ``NUWA_FAULT_NAN_STEPS=3,7``   - the loss of these optimizer steps is multiplied by NaN.
    * ``NUWA_FAULT_PAUSE_AT_STEP=k`` - after step k (logged, checkpointed if due) wait until a stop
      signal arrives (at most 120 s), so a test can kill or signal the run at a known point.
    * ``NUWA_FAULT_KILL_IN_SAVE=k``  - SIGKILL this process while the checkpoint of step k is half
      written (engine files on disk, not yet published).
    * ``NUWA_FAULT_PAUSE_IN_EVAL=k`` - (tokenizer-train) after evaluation batch k wait like
      ``NUWA_FAULT_PAUSE_AT_STEP``, so a test can kill the run during its evaluation.
    * ``NUWA_FAULT_STEP_SECONDS=s``  - sleep s seconds after every optimizer step (a slow run whose
      pace a test knows, e.g. to change the Slurm job's time limit while it trains).
    * ``NUWA_FAULT_OPTIMIZER_SECONDS=s`` - sleep s seconds inside every optimizer step (after the
      update, before the step's all-reduce), so a test can aim a signal at that phase.
    * ``NUWA_FAULT_SAVE_SECONDS=s``  - sleep s seconds inside every checkpoint write (files written, not
      yet published), so a test can aim a signal at that phase.
    """

    def __init__(self, environ=os.environ):
        self.nan_steps = {int(s) for s in environ.get("NUWA_FAULT_NAN_STEPS", "").split(",") if s.strip()}
        self.pause_at = int(environ.get("NUWA_FAULT_PAUSE_AT_STEP", "0") or 0)
        self.kill_in_save = int(environ.get("NUWA_FAULT_KILL_IN_SAVE", "0") or 0)
        self.pause_eval_at = int(environ.get("NUWA_FAULT_PAUSE_IN_EVAL", "0") or 0)
        self.step_seconds = float(environ.get("NUWA_FAULT_STEP_SECONDS", "0") or 0)
        self.optimizer_seconds = float(environ.get("NUWA_FAULT_OPTIMIZER_SECONDS", "0") or 0)
        self.save_seconds = float(environ.get("NUWA_FAULT_SAVE_SECONDS", "0") or 0)

    def loss(self, step: int, loss):
        return loss * float("nan") if step in self.nan_steps else loss

    def pause(self, step: int, stop: StopRequest):
        if self.step_seconds > 0:
            time.sleep(self.step_seconds)
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

    def in_optimizer_step(self):
        if self.optimizer_seconds > 0:
            time.sleep(self.optimizer_seconds)

    def during_save(self, step: int):
        if self.save_seconds > 0:
            time.sleep(self.save_seconds)
        if step == self.kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)
