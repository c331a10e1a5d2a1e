"""slurm/train.sbatch on several nodes: a real Slurm cluster of three nodes on this machine
(scripts/slurm_cluster.sh: one slurmctld, one ``slurmd -N nodeK`` per node at 127.0.0.K+1), two-node jobs
of one CPU rank per node (gloo), submitted as a user does (``sbatch --nodes 2 slurm/train.sbatch ...``).

One uninterrupted two-node ZeRO-3 run is the reference: every rank reports its node, its checkpoints hold
both nodes' shards and export to what DeepSpeed's zero_to_fp32 consolidates. A pre-timeout signal
(``scancel --batch --signal=USR1``) checkpoints on both nodes, requeues the job and resumes it; a node lost
mid-run (its slurmd and ranks SIGKILLed) fails the run, Slurm requeues the job onto the nodes left and it
resumes from the last complete checkpoint. Both resumed runs compute the reference's losses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from test_slurm import _why_no_slurm, job_report, wait_until
from test_train_utils import ROOT, TINY, clean_env, events, records, segments

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = ["bash", str(ROOT / "scripts" / "slurm_cluster.sh")]
# 12 steps of one micro-batch per rank, checkpoints at 4, 8, 12; ZeRO-3 shards everything across the nodes
STEPS = ["train.steps=12", "train.save_every=4", "train.micro_batch_size=1", "train.ds_config=zero3"]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of the three-node cluster, up for this module, down (by PID) after it."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    # under /run, not pytest's tmp dir: munged runs as the munge user, which cannot enter root's 0700 dirs.
    # Own ports and job ids (train.sbatch's MASTER_PORT follows the job id), so that another cluster on the
    # machine (scripts/slurm_up.sh's, another run of this module) is no obstacle.
    base = Path("/run") / f"nuwa-slurm-test-{os.getpid()}"
    cluster = {"SLURM_CLUSTER_DIR": str(base), "SLURM_CLUSTER_NODES": "3", "SLURM_CLUSTER_PORT": str(_free_ports(4)),
               "SLURM_CLUSTER_FIRST_JOB_ID": str(10000 + os.getpid() % 500 * 4), "SLURM_CONF": str(base / "slurm.conf"),
               # a lost node is DOWN 5 s after its last answer, at the end of the second ping that failed (each
               # retries its connection for MessageTimeout, 5 s: Slurm's 10 made the loss known ~28 s after it,
               # this ~13 s); a requeued job may start 5 s after its requeue
               "SLURM_CLUSTER_SLURMD_TIMEOUT": "5", "SLURM_CLUSTER_MESSAGE_TIMEOUT": "5",
               "SLURM_CLUSTER_CRED_EXPIRE": "5"}
    env = {**os.environ, **cluster}
    try:
        up = subprocess.run([*CLUSTER, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        yield cluster
    finally:
        subprocess.run([*CLUSTER, "down"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports from 6917 (slurmctld; node K gets the K-th after)."""
    for first in range(6917, 7917, count):
        try:
            with ExitStack() as stack:
                for port in range(first, first + count):
                    stack.enter_context(socket.create_server(("0.0.0.0", port)))
            return first
        except OSError:
            continue
    raise RuntimeError("no free ports for the cluster")


def slurm(cluster, *cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **cluster}, capture_output=True, text=True, timeout=60, **kw)


def job_state(cluster, job_id: str) -> dict:
    return dict(re.findall(r"(\w+)=(\S+)", slurm(cluster, "scontrol", "show", "job", job_id).stdout))


def submit(cluster, tmp_path, name: str, *args: str, **env) -> tuple[str, object, object]:
    """``sbatch --nodes 2 slurm/train.sbatch tiny ...`` from the repository root: (job id, run dir, job log)."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job_env = clean_env(**cluster, RUN_DIR=run_dir, NPROC_PER_NODE=1, SHUTDOWN_TIMEOUT=60, RDZV_TIMEOUT=120, **env)
    proc = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", f"--job-name={name}", "--gpus-per-node=0", "--cpus-per-task=1",
         "--time=10", f"--output={log}", "slurm/train.sbatch", "tiny", *TINY, *STEPS, *args],
        cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0], run_dir, log


def wait_done(cluster, job_id: str, log, timeout: float = 240) -> dict:
    try:
        wait_until(lambda: job_state(cluster, job_id).get("JobState") in DONE, f"job {job_id} to finish", log,
                   timeout=timeout)
    finally:
        slurm(cluster, "scancel", job_id)
    return job_state(cluster, job_id)


def start_nodes(run_dir) -> list[set[str]]:
    """Per 'start' event (one per run of the job): the set of nodes its ranks ran on."""
    return [{r["node"] for r in e["ranks"]} for e in events(run_dir, "start")]


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The uninterrupted two-node run: (job id, run dir, job log)."""
    tmp = tmp_path_factory.mktemp("multinode-reference")
    job_id, run_dir, log = submit(cluster, tmp, "nuwa-2n")
    state = wait_done(cluster, job_id, log)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", job_report(state, log)
    return job_id, run_dir, log


def test_two_node_job_reports_every_rank_and_writes_one_checkpoint(reference):
    job_id, run_dir, log = reference
    text = log.read_text()
    assert "2 node(s) x 1 rank(s), rendezvous 127.0.0.2:" in text, text[-3000:]  # node1's NodeAddr, not its name
    (start,) = events(run_dir, "start")
    ranks = sorted((r["rank"], r["node"], r["world_size"]) for r in start["ranks"])
    assert ranks == [(0, "node1", 2), (1, "node2", 2)] and start["launcher"] == "torchrun"
    for rank, node in ((0, "node1"), (1, "node2")):   # every rank says where it runs, in the job log
        assert f"[nuwa-ds] rank {rank} of 2 (local rank 0) on node {node}" in text
    # one torchrun per node, each with its own log directory of per-rank logs
    logs = run_dir / "logs" / f"job{job_id}.restart0"
    assert sorted(p.name for p in logs.iterdir() if p.is_dir()) == ["node0", "node1"]
    assert segments(run_dir) and sorted(segments(run_dir)[0]) == list(range(1, 13))
    assert [e["step"] for e in events(run_dir, "checkpoint")] == [4, 8, 12]
    # each checkpoint holds the shards of the rank on node1 and of the rank on node2
    for step in (4, 8, 12):
        ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
        names = {p.name for p in ckpt.iterdir()}
        for rank in (0, 1):
            assert {f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                    f"nuwa_rank{rank:05d}.pt"} <= names, (step, names)
        meta = json.loads((ckpt / "nuwa_meta.json").read_text())
        assert meta["step"] == step and meta["world_size"] == 2
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000012"


def test_export_of_the_two_node_zero3_checkpoint_equals_zero_to_fp32(reference, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from nuwa_ds import NuwaInfinity
    from nuwa_ds.export import export_checkpoint   # what `nuwa-ds export` runs (its CLI: tests/test_export.py)

    _, run_dir, _ = reference
    out = export_checkpoint(run_dir, tmp_path / "export")
    meta = json.loads((out / "export.json").read_text())
    assert meta["step"] == 12 and meta["zero_stage"] == 3 and meta["world_size"] == 2
    reference_state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000012")
    exported = NuwaInfinity.from_pretrained(out).state_dict()
    assert set(exported) == set(reference_state)
    for name, tensor in reference_state.items():
        assert torch.equal(exported[name], tensor), name


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r and "event" not in r}


def test_usr1_checkpoints_on_both_nodes_requeues_and_resumes(cluster, reference, tmp_path):
    job_id, run_dir, log = submit(cluster, tmp_path, "nuwa-2n-usr1", NUWA_FAULT_PAUSE_AT_STEP=4)
    try:
        wait_until(lambda: "pausing after step 4" in (log.read_text() if log.exists() else "")
                   and [e["step"] for e in events(run_dir, "checkpoint")] == [4], "step 4 and its checkpoint", log)
        assert slurm(cluster, "scancel", "--batch", "--signal=USR1", job_id).returncode == 0
    finally:
        state = wait_done(cluster, job_id, log)
    text = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", job_report(state, log)
    assert "restart 0:" in text and "restart 1:" in text and "requeueing job" in text, text[-4000:]
    # both runs of the job spanned two nodes
    assert start_nodes(run_dir) == [{"node1", "node2"}, {"node1", "node2"}]
    # every rank finished step 5 and wrote its shards of the step-5 checkpoint, which the requeued job resumed
    (preempted,) = events(run_dir, "preempted")
    assert preempted["step"] == 5
    names = {p.name for p in (run_dir / "checkpoints" / "step_00000005").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    (resumed,) = events(run_dir, "resume")
    assert resumed["step"] == 5 and resumed["path"].endswith("step_00000005")
    first, second = segments(run_dir)
    assert sorted(first) == [1, 2, 3, 4, 5] and sorted(second) == list(range(6, 13))
    # the resumed steps compute what the uninterrupted run computed
    assert {**first, **second} == _losses(reference[1])
    assert events(run_dir, "end")[-1]["step"] == 12


def test_a_lost_node_fails_the_run_and_the_requeued_job_resumes_on_the_nodes_left(cluster, reference, tmp_path):
    # slow steps (0.5 s) so that the node dies mid-run; collectives give up after 60 s, not 30 minutes
    job_id, run_dir, log = submit(cluster, tmp_path, "nuwa-2n-lost", "train.collective_timeout=60",
                                  NUWA_FAULT_STEP_SECONDS=0.5)
    killed = {}
    try:
        wait_until(lambda: [e["step"] for e in events(run_dir, "checkpoint")] == [4], "the step-4 checkpoint", log)
        (start,) = events(run_dir, "start")
        killed = {r["node"]: r["pid"] for r in start["ranks"] if r["rank"] == 1}
        (node,) = killed
        kill = slurm(cluster, *CLUSTER, "kill-node", node)
        assert kill.returncode == 0, kill.stderr
        before = [e["step"] for e in events(run_dir, "checkpoint")]
        wait_until(lambda: job_state(cluster, job_id).get("Restarts") == "1", "Slurm to requeue the job", log)
        state = wait_done(cluster, job_id, log)
    finally:
        for node in killed:   # the node comes back for whatever runs next
            slurm(cluster, *CLUSTER, "start-node", node)
    text = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", job_report(state, log)
    # the first run failed, named the lost node, and no rank of it outlived the job
    first_run = text.split("restart 1:")[0]
    assert re.search(r"ranks exited with status [1-9]", first_run), first_run[-4000:]
    assert f"Node failure on {node}" in first_run, first_run[-4000:]     # srun names the lost node
    assert "training failed (status" in first_run or "SIGTERM from Slurm" in first_run, first_run[-4000:]
    # the survivor's collective failed at once (gloo reads EOF or ECONNRESET, depending on when the peer died)
    assert re.search(r"Connection (closed|reset) by peer", first_run), first_run[-4000:]
    for pid in (r["pid"] for r in events(run_dir, "start")[0]["ranks"]):
        assert not os.path.exists(f"/proc/{pid}") or "nuwa_ds" not in open(f"/proc/{pid}/cmdline").read()
    # the requeued job ran on the two nodes left and resumed from the last checkpoint completed before the loss
    nodes = start_nodes(run_dir)
    assert nodes[0] == {"node1", node} and len(nodes[1]) == 2 and node not in nodes[1], nodes
    last = before[-1]
    (resumed,) = events(run_dir, "resume")
    assert resumed["step"] == last and resumed["path"].endswith(f"step_{last:08d}")
    first, second = segments(run_dir)
    assert sorted(second) == list(range(last + 1, 13))
    reference_losses = _losses(reference[1])
    assert second == {s: reference_losses[s] for s in second}
    assert {s: first[s] for s in range(1, last + 1)} == {s: reference_losses[s] for s in range(1, last + 1)}
    assert events(run_dir, "end")[-1]["step"] == 12
