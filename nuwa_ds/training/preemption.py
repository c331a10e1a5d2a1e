"""Stop signals, exit codes and fault injection now live in :mod:`nuwa_ds.preemption` (the tokenizer
trainer and the data workers use them too, below the training system); this name keeps working."""

from nuwa_ds.preemption import (BLOCKED_SIGNALS, DIVERGED_EXIT_CODE, REQUEUE_EXIT_CODE, REQUEUE_MARKER_ENV,
                                STOP_SIGNALS, Faults, StopRequest, block_stop_signals, ignore_stop_signals,
                                leave_requeue_marker, restore_signal_mask)

__all__ = ["BLOCKED_SIGNALS", "DIVERGED_EXIT_CODE", "REQUEUE_EXIT_CODE", "REQUEUE_MARKER_ENV", "STOP_SIGNALS",
           "Faults", "StopRequest", "block_stop_signals", "ignore_stop_signals", "leave_requeue_marker",
           "restore_signal_mask"]
