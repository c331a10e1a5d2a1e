"""Helpers for the multi-process training tests (no tests here): launch real ranks, read metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tiny preset on 8x8-token canvases (4 patches): each step is a few tens of ms on one CPU core
TINY = ["data.canvas=[1,8,8]", "train.log_every=1", "train.tensorboard=false"]
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "GROUP_RANK")


def clean_env(**extra) -> dict:
    """The test environment without any rank variables (each launch sets up its own) or fault hooks."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("SLURM_", "NUWA_FAULT_"))}
    env.update(DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(nproc: int, run_dir: Path, *args: str, launcher: str = "torchrun") -> list[str]:
    """``nuwa-ds train`` under plain python (nproc=0), or with nproc ranks (gloo, CPU) under torchrun or
    the deepspeed launcher (which passes --local_rank=N first, hence ``-m nuwa_ds.train``)."""
    command = ["-m", "nuwa_ds.cli", "train"]
    prefix = [sys.executable]
    if nproc and launcher == "torchrun":
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    elif nproc and launcher == "deepspeed":
        prefix += ["-m", "deepspeed.launcher.runner", f"--num_gpus={nproc}", f"--master_port={free_port()}"]
        command = ["--module", "nuwa_ds.train"]
    return [*prefix, *command, "--config", "tiny", f"train.run_dir={run_dir}", *TINY, *args]


def start(cmd: list[str], log: Path, **env) -> subprocess.Popen:
    """Start in its own session (so the test can signal the whole group) with output to ``log``."""
    return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(**env), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first listed, from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL a launch and every process of it: its group, and the ranks below it, which torchrun starts
    in sessions of their own (killing only torchrun's group leaves them running, orphaned, on the run's
    directory: paused ones wake after 120 s and train on)."""
    below = descendants(proc.pid)
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    for pid in below:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def run(cmd: list[str], log: Path, timeout: float = 240, **env) -> int:
    proc = start(cmd, log, **env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_run(proc)
        raise AssertionError(f"timed out; log:\n{log.read_text()[-3000:]}") from None


def records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def segments(run_dir: Path) -> list[dict[int, float]]:
    """Per process lifetime (split at each 'start' event): {step: loss}."""
    out: list[dict[int, float]] = []
    for rec in records(run_dir):
        if rec.get("event") == "start":
            out.append({})
        elif "loss" in rec and "event" not in rec:
            out[-1][rec["step"]] = rec["loss"]
    return out


def events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in records(run_dir) if r.get("event") == name]


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) early; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting; log:\n{log.read_text()[-3000:]}")


def logged_step(run_dir: Path, step: int):
    return lambda: any(r.get("step") == step and "loss" in r for r in records(run_dir))


def write_token_shards(directory: Path, shards: int = 2, per_shard: int = 16, shape=(1, 12, 12),
                       vocab: int = 256) -> str:
    """Small WebDataset token shards (the layout ``nuwa-ds prepare`` writes); returns the brace pattern."""
    import numpy as np
    import webdataset as wds

    from data_pipelines.samples import encode_sample

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(directory / f"tok-{s:03d}.tar"), encoder=False) as sink:
            for i in range(per_shard):
                tokens = rng.integers(0, vocab, size=shape).astype(np.int16)
                sink.write(encode_sample(f"s{s:03d}_{i:04d}", tokens, {"token_thw": list(shape)}))
    return str(directory / f"tok-{{000..{shards - 1:03d}}}.tar")


# The 2-rank runs shared by the training and export tests (``zero_runs`` in conftest.py): 12 steps of one
# micro-batch per rank accumulated twice, checkpoints at 4, 8, 12. ZeRO-1 runs under the deepspeed
# launcher (which passes --local_rank), the others under torchrun. With context noise (a draw from the torch
# RNG every micro-batch, as the video recipe trains): the exact-resume tests then show that a resumed run
# draws the same noise as the uninterrupted one (the RNG state in the checkpoint).
TWO_RANK_STEPS = ["train.steps=12", "train.save_every=4", "train.micro_batch_size=1", "train.grad_accum_steps=2",
                  "model.context_noise=0.1"]
TWO_RANK_LAUNCHERS = {1: "deepspeed", 2: "torchrun", 3: "torchrun"}
