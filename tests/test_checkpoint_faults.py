"""Crash-safety of checkpoints, preemption, and the non-finite-loss guard, on real processes."""

from __future__ import annotations

import os
import signal

import pytest

from nuwa_ds.training import checkpoint as C
from nuwa_ds.training.preemption import DIVERGED_EXIT_CODE, REQUEUE_EXIT_CODE
from test_train_utils import events, run, segments, start, train_cmd, wait_for, write_token_shards

pytestmark = pytest.mark.slow


def test_kill_during_checkpoint_write_then_sigusr1_then_resume(tmp_path):
    """One history, three processes (plain python, ZeRO-3, one rank, WebDataset token shards read by a
    DataLoader worker, so the loader's state in the checkpoint is exercised too):

    1. SIGKILL while the checkpoint of step 6 is half written: step 3 stays the one that loads.
    2. --resume auto continues from step 3; SIGUSR1 during step 8 -> it finishes the step, saves and
       exits with the requeue code.
    3. --resume auto continues from step 8 and finishes. Losses of repeated steps agree bitwise.
    """
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    shards = write_token_shards(tmp_path / "shards")
    cmd = train_cmd(0, run_dir, "train.ds_config=zero3", "train.steps=10", "train.save_every=3",
                    "train.tensorboard=true", f"data.shards={shards}", "data.num_workers=1", "data.shuffle_buffer=8")

    rc = run(cmd, tmp_path / "1.txt", NUWA_FAULT_KILL_IN_SAVE=6)
    assert rc == -signal.SIGKILL
    half = ckpt / "step_00000006.tmp"
    assert half.is_dir() and (half / C.rank_file(0)).is_file() and not (half / C.META).exists()
    assert (ckpt / "latest").read_text() == "step_00000003"
    latest = C.find_latest(ckpt)
    assert latest.step == 3 and latest.path.name == "step_00000003"

    log = tmp_path / "2.txt"
    proc = start(cmd + ["--resume", "auto"], log, NUWA_FAULT_PAUSE_AT_STEP=7)
    wait_for(lambda: "pausing after step 7" in log.read_text(), proc, log)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=120) == REQUEUE_EXIT_CODE, log.read_text()[-3000:]
    (preempted,) = events(run_dir, "preempted")
    assert preempted["step"] == 8 and preempted["checkpoint"].endswith("step_00000008")
    assert (ckpt / "latest").read_text() == "step_00000008"
    assert not half.exists()  # the half-written directory was cleaned up by the next save

    assert run(cmd + ["--resume", "auto"], tmp_path / "3.txt") == 0
    first, second, third = segments(run_dir)
    assert sorted(first) == [1, 2, 3, 4, 5, 6] and sorted(second) == [4, 5, 6, 7, 8] and sorted(third) == [9, 10]
    assert [e["step"] for e in events(run_dir, "resume")] == [3, 8]
    for step in (4, 5, 6):
        assert first[step] == second[step], step
    assert events(run_dir, "end")[-1]["step"] == 10

    # TensorBoard: one loss per step across the three processes (a resumed run purges what the killed
    # one logged after its checkpoint), equal to the values of the history that survived
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tb"))
    board.Reload()
    scalars = board.Scalars("train/loss")
    assert [e.step for e in scalars] == list(range(1, 11))
    kept = {**first, **second, **third}
    assert all(abs(e.value - kept[e.step]) < 1e-6 for e in scalars)
    assert {"train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/peak_mem_gib"} <= set(board.Tags()["scalars"])


def test_nonfinite_losses_skip_then_stop(tmp_path):
    """A NaN loss skips its update and training goes on; max_bad_steps of them in a row stop the run
    with the last good checkpoint named, from whose weights a new run can start (train.init_from)."""
    run_dir = tmp_path / "run"
    cmd = train_cmd(0, run_dir, "train.ds_config=zero1", "train.steps=12", "train.save_every=4",
                    "train.max_bad_steps=3")
    rc = run(cmd, tmp_path / "log.txt", NUWA_FAULT_NAN_STEPS="2,6,7,8")
    assert rc == DIVERGED_EXIT_CODE, (tmp_path / "log.txt").read_text()[-3000:]
    assert [e["step"] for e in events(run_dir, "skip")] == [2, 6, 7, 8]
    (losses,) = segments(run_dir)
    assert sorted(losses) == list(range(1, 9))
    assert all(losses[s] is None for s in (2, 6, 7, 8)) and all(losses[s] > 0 for s in (1, 3, 4, 5))
    (diverged,) = events(run_dir, "diverged")
    assert diverged["step"] == 8 and diverged["checkpoint"].endswith("step_00000004")
    assert "last good checkpoint" in (tmp_path / "log.txt").read_text()
    # no checkpoint was written during the bad streak
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000004"]

    # the way on that the message names: a new run from those weights (fresh optimizer and data). Same
    # seed and first batch as the run above, so only the loaded weights can change its first loss.
    fresh = tmp_path / "fresh"
    cmd = train_cmd(0, fresh, "train.ds_config=zero2", "train.steps=1", f"train.init_from={run_dir / 'checkpoints'}")
    assert run(cmd, tmp_path / "fresh.txt") == 0, (tmp_path / "fresh.txt").read_text()[-3000:]
    (restarted,) = segments(fresh)
    assert restarted[1] < losses[1] - 0.01, (restarted[1], losses[1])
