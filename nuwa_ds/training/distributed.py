"""Who am I: one entrypoint under plain python, torchrun, the ``deepspeed`` launcher and ``srun``.

torchrun and the deepspeed launcher export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
Under ``srun`` without torchrun each task knows only SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; we
translate them, and rendezvous on the first host of the allocation. Under plain python we are the
only rank and pick a free port ourselves (otherwise DeepSpeed tries MPI discovery and fails).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    """'python', 'torchrun', 'deepspeed' (its launcher) or 'srun'."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """First hostname of a Slurm node list (``scontrol show hostnames``; plain names without it)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    if "[" in nodelist:
        raise ValueError(f"cannot expand the Slurm node list {nodelist!r} without scontrol; set MASTER_ADDR")
    return nodelist.split(",")[0]


def _under_srun() -> bool:
    # SLURM_STEP_NUM_TASKS exists only inside a job step (srun); the batch script itself has SLURM_PROCID=0
    # but is not one of N training tasks.
    return "SLURM_STEP_NUM_TASKS" in os.environ and "SLURM_PROCID" in os.environ


def detect(local_rank_arg: int | None = None) -> DistEnv:
    """Read (and, for python / srun, complete) the process-group environment."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if local_rank_arg is None else "deepspeed"  # the deepspeed launcher adds --local_rank
        if "LOCAL_RANK" not in env:
            env["LOCAL_RANK"] = str(local_rank_arg if local_rank_arg is not None else 0)
        env.setdefault("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", "1"))
    elif _under_srun():
        launcher = "srun"
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_STEP_NUM_TASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env["LOCAL_WORLD_SIZE"] = env.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST",
                                                                                              "127.0.0.1"))))
        # as slurm/train.sbatch: per job, below the ephemeral port range (32768-60999)
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 12000))
    else:
        launcher = "python"
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    if local_rank_arg is not None and int(env["LOCAL_RANK"]) != local_rank_arg:
        raise ValueError(f"--local_rank={local_rank_arg} disagrees with LOCAL_RANK={env['LOCAL_RANK']}")
    return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                   int(env["LOCAL_WORLD_SIZE"]), launcher)


def placement(dist: DistEnv) -> dict:
    """Where this rank runs: its global and local rank, the world size, the Slurm node (SLURMD_NODENAME,
    else the host name), host and PID. Every rank prints it at start; rank 0 records all of them."""
    return {"rank": dist.rank, "local_rank": dist.local_rank, "world_size": dist.world_size,
            "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "host": socket.gethostname(), "pid": os.getpid()}


def device_type() -> str:
    """'cuda' when a GPU is visible and DeepSpeed is not forced onto the CPU."""
    if os.environ.get("DS_ACCELERATOR", "").lower() == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_cpu_threads(dist: DistEnv):
    """Share the cores among the ranks of a node unless OMP_NUM_THREADS says otherwise (torchrun sets 1)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, dist.local_world_size))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def init(dist: DistEnv, device_kind: str, timeout_s: float = 1800.0) -> torch.device:
    """Start the process group (nccl on GPU, gloo on CPU; collectives fail after ``timeout_s``) and
    return this rank's device."""
    from datetime import timedelta

    import deepspeed

    # DeepSpeed JIT-builds a shared-memory all-reduce for CPU on every init (48 s cold): not needed with gloo.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if device_kind == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={dist.local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                             f"start at most one rank per GPU")
        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)
    else:
        set_cpu_threads(dist)
        device = torch.device("cpu")
    # The groups DeepSpeed creates later (new_group, timeout=None: ZeRO's data-parallel group) take torch's
    # module default (30 min), not the world group's timeout: set the default itself.
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timedelta(seconds=timeout_s)
    deepspeed.init_distributed(dist_backend="nccl" if device_kind == "cuda" else "gloo", auto_mpi_discovery=False,
                               timeout=timedelta(seconds=timeout_s))
    return device


def shutdown():
    """Tear the process group down before the interpreter exits: a gloo group still alive at exit can
    abort the process from a C++ destructor ("terminate called without an active exception") after a
    run that otherwise finished."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as tdist

    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(values)
    return values


def barrier():
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()


def all_gather_object(obj) -> list:
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def gathered_parameters(module: torch.nn.Module):
    """``(name, full parameter)`` of ``module``, one at a time: under ZeRO-3 each is gathered for the
    body of the loop (a collective: every rank must run the whole loop); otherwise a plain walk."""
    import deepspeed

    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            yield name, param
