"""Checkpoints that survive a crash at any instant, and exact resume.

Layout (``run_dir/checkpoints``)::

    latest                        the tag of the newest complete checkpoint (DeepSpeed's format)
    step_00000100/                one complete checkpoint
        mp_rank_00_model_states.pt, *optim_states.pt ...   DeepSpeed engine state (all ZeRO stages)
        nuwa_rank00000.pt ...     per rank: data loader state, RNG states (python, numpy, torch, cuda)
        run_config.json           the resolved RunConfig
        nuwa_meta.json            step, world size, ZeRO stage, code version; written last
    step_00000200.tmp/            a checkpoint being written (or left by a crash): never loaded

Publishing is two renames on the shared filesystem: the finished temporary directory becomes
``step_N`` (only after every rank has written and a barrier), then ``latest`` is replaced atomically.
A crash before the first rename leaves ``latest`` on the previous checkpoint; a crash between the two
leaves a complete ``step_N`` that ``find_latest`` also accepts. Old checkpoints beyond ``keep_last``
and stale ``.tmp`` directories are removed after publishing.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nuwa_ds import __version__
from nuwa_ds.files import fsync_dir, fsync_file, write_atomic
from nuwa_ds.training import distributed as D

TAG_RE = re.compile(r"^step_(\d{8})$")
META = "nuwa_meta.json"
RUN_CONFIG = "run_config.json"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"nuwa_rank{rank:05d}.pt"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    meta: dict

    @property
    def tag(self) -> str:
        return self.path.name


def code_version() -> str:
    """``git describe`` of the source tree when it is a checkout, else the package version."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        return __version__  # an installed package (whatever git checkout its folder may sit in)
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+git.{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


# ----------------------------------------------------------------------------------------------
# RNG states (every source a step could draw from)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Files


def read_meta(path: Path) -> Optional[dict]:
    """The metadata of a complete checkpoint directory, else None."""
    if not TAG_RE.match(path.name):
        return None
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    world = meta.get("world_size", 0)
    if not all((path / rank_file(r)).is_file() for r in range(world)):
        return None
    return meta


def complete_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root``, oldest first."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            meta = read_meta(path) if path.is_dir() else None
            if meta is not None:
                found.append(CheckpointInfo(path, int(meta["step"]), meta))
    return sorted(found, key=lambda c: c.step)


def find_latest(root: Path) -> Optional[CheckpointInfo]:
    """The checkpoint ``latest`` names if it is complete, else the newest complete one."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        meta = read_meta(path)
        if meta is not None:
            return CheckpointInfo(path, int(meta["step"]), meta)
    found = complete_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str, root: Path) -> Optional[CheckpointInfo]:
    """``auto`` (newest complete checkpoint, or None for a fresh start), a run's checkpoint root, or one
    checkpoint directory."""
    if resume == "auto":
        return find_latest(root)
    path = Path(resume)
    meta = read_meta(path)
    if meta is not None:
        return CheckpointInfo(path, int(meta["step"]), meta)
    for candidate in (path, path / "checkpoints"):
        info = find_latest(candidate) if candidate.is_dir() else None
        if info is not None:
            return info
    raise ValueError(f"--resume {resume}: no complete checkpoint there (expected a step_N directory with {META}, "
                     f"or a directory holding them)")


def check_compatible(info: CheckpointInfo, world_size: int, zero_stage: int, ds_source: str):
    """Resume needs the same number of ranks and ZeRO stage (decision: docs/decisions.md, 'different world size')."""
    saved_world = int(info.meta["world_size"])
    if saved_world != world_size:
        raise ValueError(
            f"checkpoint {info.path} was written by {saved_world} ranks; this run has {world_size}. Resume with "
            f"{saved_world} ranks (nodes x GPUs per node), or start a new run from its weights with "
            f"train.init_from={info.path} (optimizer, schedule and data position start fresh)")
    saved_stage = int(info.meta.get("zero_stage", zero_stage))
    if saved_stage != zero_stage:
        raise ValueError(f"checkpoint {info.path} was written under ZeRO stage {saved_stage}; this run uses stage "
                         f"{zero_stage} ({ds_source}): resume with the same --ds-config, or start from its weights "
                         f"with train.init_from={info.path}")


# ----------------------------------------------------------------------------------------------
# Save / load through the DeepSpeed engine


class CheckpointManager:
    def __init__(self, root: Path, rank: int, world_size: int, keep_last: int, faults=None, fsync: bool = True):
        self.root, self.rank, self.world_size, self.keep_last = Path(root), rank, world_size, keep_last
        self.faults, self.fsync = faults, fsync
        self.last_timings: dict[str, float] = {}
        """Seconds of the last save: 'write' (engine + client files, all ranks) and 'publish' (fsync, renames)."""

    def save(self, engine, step: int, loader_state: dict, meta: dict, run_config_json: str,
             extra: Optional[dict] = None) -> CheckpointInfo:
        """Write, then publish, the checkpoint of ``step`` (collective: every rank calls it); ``extra``:
        more entries of this rank's client state (e.g. the eval history), returned by ``load``."""
        tag = tag_for(step)
        tmp = self.root / f"{tag}.tmp"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash at this very step
        D.barrier()
        started = time.monotonic()
        engine.save_checkpoint(str(self.root), tag=tmp.name, client_state={"step": step}, save_latest=False)
        client = {**(extra or {}), "step": step, "rank": self.rank, "loader": loader_state, "rng": rng_state()}
        torch.save(client, tmp / rank_file(self.rank))
        if self.faults is not None:
            self.faults.during_save(step)
        D.barrier()  # every rank's files are written
        written = time.monotonic()
        if self.rank == 0:
            self._publish(tmp, tag, step, meta, run_config_json)
        D.barrier()  # no rank goes on (or exits on preemption) before the checkpoint is published
        self.last_timings = {"write": written - started, "publish": time.monotonic() - written}
        return CheckpointInfo(self.root / tag, step, {**meta, "step": step, "world_size": self.world_size})

    def _publish(self, tmp: Path, tag: str, step: int, meta: dict, run_config_json: str):
        (tmp / RUN_CONFIG).write_text(run_config_json)
        meta = {**meta, "step": step, "world_size": self.world_size, "time": time.time()}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if self.fsync:  # on stable storage before it is published: survives a node crash, not only a kill
            for path in tmp.rglob("*"):
                if path.is_file():
                    fsync_file(path)
        final = self.root / tag
        if final.exists():  # an older history reached this step too (resumed from an earlier checkpoint)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(self.root)
        write_atomic(self.root / "latest", tag)
        self._prune(keep=tag)

    def _prune(self, keep: str):
        for path in self.root.glob("step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
        complete = complete_checkpoints(self.root)
        for info in complete[: max(0, len(complete) - self.keep_last)]:
            if info.tag != keep:
                shutil.rmtree(info.path, ignore_errors=True)

    def load(self, engine, info: CheckpointInfo) -> dict:
        """Restore engine + this rank's client state from ``info``; returns the client state."""
        check_compatible(info, self.world_size, engine.zero_optimization_stage(), "this run's DeepSpeed config")
        load_path, _ = engine.load_checkpoint(str(info.path.parent), tag=info.tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {info.path}")
        client = torch.load(info.path / rank_file(self.rank), map_location="cpu", weights_only=True)
        set_rng_state(client["rng"])
        return client
