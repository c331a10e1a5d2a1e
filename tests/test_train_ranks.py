"""Two real ranks (gloo, CPU; torchrun and the deepspeed launcher) under ZeRO 1, 2 and 3; exact resume
after SIGKILL."""

from __future__ import annotations

import signal

import pytest

from test_train_utils import (TWO_RANK_LAUNCHERS, TWO_RANK_STEPS, events, kill_run, logged_step, run, segments, start,
                              train_cmd, wait_for)

pytestmark = pytest.mark.slow

# global batch 4 = 2 ranks x micro-batch 1 x 2 accumulated micro-batches
STEPS = TWO_RANK_STEPS
LAUNCHERS = TWO_RANK_LAUNCHERS


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_ranks_train_and_agree(zero_runs, stage):
    run_dir = zero_runs(stage)
    (losses,) = segments(run_dir)
    assert sorted(losses) == list(range(1, 13))
    first, last = [losses[s] for s in (1, 2, 3)], [losses[s] for s in (10, 11, 12)]
    assert sum(last) / 3 < sum(first) / 3 - 0.2, losses  # the loss falls
    (check,) = events(run_dir, "replica_check")
    assert len(check["digests"]) == 2 and check["equal"] and len(set(check["digests"])) == 1
    (start_event,) = events(run_dir, "start")
    assert start_event["world_size"] == 2 and start_event["launcher"] == LAUNCHERS[stage]
    # checkpoints of steps 4, 8, 12 were written; keep_last=3 keeps all, 'latest' names the last
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_00000012"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000004", "step_00000008", "step_00000012"]
    assert {p.name for p in (ckpt / "step_00000012").glob("nuwa_rank*.pt")} == {"nuwa_rank00000.pt",
                                                                                 "nuwa_rank00001.pt"}


def test_exact_resume_after_sigkill(zero_runs, tmp_path):
    """SIGKILL between checkpoints, then --resume auto: every step's loss equals the uninterrupted run's,
    bit for bit (fp32 on CPU), so the data order, the optimizer and the schedule all resumed exactly."""
    (reference,) = segments(zero_runs(2))
    run_dir, log = tmp_path / "run", tmp_path / "killed.txt"
    cmd = train_cmd(2, run_dir, "train.ds_config=zero2", *STEPS)
    proc = start(cmd, log, NUWA_FAULT_PAUSE_AT_STEP=6)  # checkpoint at 4, killed after step 6
    wait_for(lambda: logged_step(run_dir, 6)() and "pausing after step 6" in log.read_text(), proc, log)
    kill_run(proc)  # torchrun and its ranks
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"

    assert run(cmd + ["--resume", "auto"], tmp_path / "resumed.txt") == 0
    killed, resumed = segments(run_dir)
    assert sorted(killed) == list(range(1, 7)) and sorted(resumed) == list(range(5, 13))
    (resume_event,) = events(run_dir, "resume")
    assert resume_event["step"] == 4
    for segment in (killed, resumed):
        for step, loss in segment.items():
            assert loss == reference[step], (step, loss, reference[step])  # bitwise
