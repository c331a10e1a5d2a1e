"""``nuwa-ds train``: DeepSpeed training of NUWA-Infinity under python, torchrun, deepspeed or srun.

    nuwa-ds train --config tiny train.steps=100                       # one process, sets up its own rank
    torchrun --nproc-per-node 8 -m nuwa_ds.cli train --config nuwa-350m --ds-config zero2 --resume auto
    deepspeed --num_gpus 8 --module nuwa_ds.train --config nuwa-350m            # adds --local_rank=N
    srun --ntasks-per-node 8 python -m nuwa_ds.cli train --config nuwa-350m      # one task per GPU
    sbatch --nodes 4 slurm/train.sbatch nuwa-350m train.steps=100000  # see README "Training"

Order of work: everything that can be wrong with the inputs is checked first (``preflight``: config,
DeepSpeed config and batch triad, shards, ZeRO-3 settings against the model's shapes, the checkpoint to
resume and its compatibility) without allocating the model; then the process group starts, the engine
is built and ``Trainer.fit`` runs the loop. Python API: ``train(run_config, resume="auto")``.

Exit codes: 0 finished, 75 stopped after saving (requeue me: a stop signal, train.time_limit, or the
Slurm job's end time less train.deadline_margin), 3 too many non-finite steps in a row (the last good
checkpoint is named), 2 bad input. After a stop for a requeue, rank 0 also writes the file named by
``NUWA_REQUEUE_MARKER`` if set (``slurm/train.sbatch`` sets it: torchrun reports a rank's 75 as its own 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from data_pipelines import build_loader
from data_pipelines.loader import check_shards
from nuwa_ds.cli import main as cli_main
from nuwa_ds.config import RunConfig
from nuwa_ds.model import NuwaInfinity
from nuwa_ds.model.flops import peak_flops, train_flops_per_token
from nuwa_ds.model.persistence import TEXT_TOKENIZER
from nuwa_ds.model.text import check_text_length
from nuwa_ds.model_dir import load_initial_weights
from nuwa_ds.preemption import (DIVERGED_EXIT_CODE, REQUEUE_EXIT_CODE, Faults, StopRequest, block_stop_signals,
                                leave_requeue_marker, restore_signal_mask)
from nuwa_ds.training import checkpoint as C
from nuwa_ds.training import distributed as D
from nuwa_ds.training import ds_config as DSC
from nuwa_ds.training import optim
from nuwa_ds.training.deadline import SlurmDeadline
from nuwa_ds.training.metrics import RunLogger
from nuwa_ds.training.validation import LN2, Validator, check_val_shards, model_inputs


# ----------------------------------------------------------------------------------------------
# Preflight: every check that needs no allocation


@dataclass
class Plan:
    ds: DSC.ResolvedDSConfig
    resume_from: Optional[C.CheckpointInfo]
    num_parameters: int
    """All parameters of the model (from the meta-device build; ZeRO-3 engines hold only a shard)."""
    notes: list[str] = field(default_factory=list)


def meta_parameter_shapes(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = NuwaInfinity(dataclasses.replace(cfg.model))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "text_encoder":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare_with_checkpoint(cfg: RunConfig, info: C.CheckpointInfo, shapes: dict) -> list[str]:
    """Refuse a checkpoint whose model has other parameter shapes; list every other difference."""
    saved = RunConfig.from_json(info.path / C.RUN_CONFIG)
    saved_shapes = meta_parameter_shapes(saved)
    attached_text = cfg.train.text_encoder_path is not None
    mismatched = sorted(k for k in set(shapes) | set(saved_shapes) if shapes.get(k) != saved_shapes.get(k)
                        and not (attached_text and k.startswith("text_")))
    old, new = _flatten(saved.to_dict()), _flatten(cfg.to_dict())
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if mismatched:
        model_diffs = [d for d in diffs if d.startswith("model.")] or ["(no config field differs)"]
        raise ValueError(f"checkpoint {info.path} holds a model of another shape ({len(mismatched)} parameters differ, "
                         f"e.g. {mismatched[0]}: {saved_shapes.get(mismatched[0])} -> {shapes.get(mismatched[0])}); "
                         f"differences: {'; '.join(model_diffs)}. Use the checkpoint's config "
                         f"({info.path / C.RUN_CONFIG}) or a new train.run_dir")
    return diffs


def check_text_encoder(path: str, max_text_len: int):
    """train.text_encoder_path is a transformers folder whose encoder reads model.max_text_len tokens."""
    from transformers import AutoConfig

    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"train.text_encoder_path={path} has no config.json: give a local transformers model folder "
                         f"(a downloaded CLIP / T5 / BERT, or one made by `nuwa-ds text-encoder`)")
    try:
        check_text_length(AutoConfig.from_pretrained(path, local_files_only=True), max_text_len)
    except ValueError as exc:
        raise ValueError(f"train.text_encoder_path={path}: {exc}") from None


def preflight(cfg: RunConfig, dist: D.DistEnv, device_kind: str, resume: Optional[str]) -> Plan:
    """All input checks, before any rank allocates memory; raises ValueError naming the fix."""
    cfg.validate()
    ds = DSC.resolve(cfg.train.ds_config, cfg.train, dist.world_size, device_kind)
    if cfg.data.shards is not None:
        check_shards(cfg.data.shards)
    check_val_shards(cfg)
    for key in ("init_from", "text_encoder_path"):
        path = getattr(cfg.train, key)
        if path is not None and not Path(path).exists():
            raise ValueError(f"train.{key}={path} does not exist")
    if cfg.train.text_encoder_path is not None:
        check_text_encoder(cfg.train.text_encoder_path, cfg.model.max_text_len)
    shapes = meta_parameter_shapes(cfg)
    numels = {name: int(torch.Size(shape).numel()) for name, shape in shapes.items()}
    DSC.check_fits_model(ds, numels)
    notes: list[str] = []
    resume_from = None
    if resume:
        resume_from = C.resolve_resume(resume, Path(cfg.train.run_dir) / "checkpoints")
    if resume_from is not None:
        C.check_compatible(resume_from, dist.world_size, ds.stage, ds.source)
        notes += [f"config differs from the checkpoint's: {d}"
                  for d in compare_with_checkpoint(cfg, resume_from, shapes)]
    return Plan(ds, resume_from, sum(numels.values()), notes)


# ----------------------------------------------------------------------------------------------
# The model and its weights


def build_model(cfg: RunConfig):
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = NuwaInfinity(cfg.model)
    if cfg.train.text_encoder_path is not None:
        model.attach_text_encoder(cfg.train.text_encoder_path)
    if cfg.train.init_from is not None:
        load_initial_weights(model, cfg.train.init_from)
    return model


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class StepResult:
    loss: float
    """Mean loss over micro-batches and ranks (NaN/inf when non-finite)."""
    tokens: int
    """Tokens over all ranks."""
    flops: float
    """Model FLOPs over all ranks (the MFU convention of docs/design.md, "8. Training system")."""
    stop: bool
    """Some rank got a stop signal."""
    applied: bool
    """The optimizer update was applied (DeepSpeed skips it on non-finite gradients)."""


@dataclass
class TrainResult:
    status: str
    """'finished', 'preempted' or 'diverged'."""
    step: int
    checkpoint: Optional[Path]
    run_dir: Path

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "preempted": REQUEUE_EXIT_CODE, "diverged": DIVERGED_EXIT_CODE}[self.status]


class PhaseTimer:
    """Wall time per phase of a step, synchronising the device at each boundary (benchmarks); with
    ``device=None`` it does nothing, which is what training uses."""

    def __init__(self, device: Optional[torch.device]):
        self.device, self.totals, self._last = device, {}, None

    def mark(self, phase: Optional[str]):
        """End ``phase`` (None: just start the clock)."""
        if self.device is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if phase is not None and self._last is not None:
            self.totals[phase] = self.totals.get(phase, 0.0) + now - self._last
        self._last = now


class Trainer:
    """The engine, the loader and the checkpoint manager of one rank."""

    def __init__(self, cfg: RunConfig, plan: Plan, dist: D.DistEnv, device: torch.device):
        import deepspeed

        self.cfg, self.plan, self.dist, self.device = cfg, plan, dist, device
        self.run_dir = Path(cfg.train.run_dir)
        model = build_model(cfg)
        groups = optim.param_groups(model, cfg.train.weight_decay)
        client_optimizer = None if plan.ds.json_optimizer else optim.adamw(groups, cfg.train, device)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=client_optimizer, model_parameters=groups if plan.ds.json_optimizer else None,
            config=plan.ds.config, lr_scheduler=lambda opt: optim.schedule(opt, cfg.train), dist_init_required=False)
        self.loader = build_loader(cfg.data, cfg.model, dist.rank, dist.world_size, cfg.train.micro_batch_size,
                                   text_tokenizer=model.text_tokenizer)
        self.validation = Validator(self, text_tokenizer=model.text_tokenizer)
        self.text_tokenizer = model.text_tokenizer
        self.faults = Faults()
        self.checkpoints = C.CheckpointManager(self.run_dir / "checkpoints", dist.rank, dist.world_size,
                                               cfg.train.keep_last, self.faults, cfg.train.checkpoint_fsync)
        self.peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self._flops_per_token: dict = {}
        self.code_version = C.code_version()

    # -- one optimizer step ------------------------------------------------------------------------

    def flops_per_token(self, canvas: tuple, order: str, text_len: int) -> float:
        key = (canvas, order, text_len)
        if key not in self._flops_per_token:
            self._flops_per_token[key] = train_flops_per_token(self.cfg.model, canvas, order, text_len)
        return self._flops_per_token[key]

    def _batch_flops(self, batch: dict) -> tuple[int, float]:
        tokens = batch["tokens"]
        canvas, per_example = tuple(tokens.shape[1:]), tokens[0].numel()
        text = batch.get("text")
        text_len = int(text["attention_mask"].sum(1).float().mean().round()) if text is not None else 0
        flops = sum(per_example * self.flops_per_token(canvas, o, text_len) for o in batch["orders"])
        return tokens.numel(), flops

    def train_step(self, data_iter, step: int, stop_requested: Union[bool, Callable[[], bool]] = False,
                   timer: Optional[PhaseTimer] = None) -> StepResult:
        """Accumulate grad_accum_steps micro-batches, step the optimizer, and agree on the outcome with all ranks.

        ``stop_requested``: this rank's vote to stop, or a callable asked just before the all-reduce
        (so a signal that came during the step's work stops the run after this very step)."""
        engine, accum = self.engine, self.cfg.train.grad_accum_steps
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = flops = 0.0
        timer = timer or PhaseTimer(None)
        for micro in range(accum):
            timer.mark(None)
            batch = next(data_iter)
            inputs = model_inputs(batch, self.device)
            timer.mark("data")
            loss = engine(**inputs).loss
            loss = self.faults.loss(step, loss)
            timer.mark("forward")
            engine.backward(loss)
            timer.mark("backward")
            engine.step()  # applies the update at the accumulation boundary
            if micro == accum - 1:
                self.faults.in_optimizer_step()
            timer.mark("optimizer")
            loss_sum += loss.detach().double()
            n, f = self._batch_flops(batch)
            tokens, flops = tokens + n, flops + f
        # one small all-reduce per step: mean loss, work done, and whether any rank must stop
        totals = torch.stack([loss_sum, torch.tensor(tokens, dtype=torch.float64, device=self.device),
                              torch.tensor(flops, dtype=torch.float64, device=self.device),
                              torch.tensor(float(stop_requested() if callable(stop_requested) else stop_requested),
                                           dtype=torch.float64, device=self.device)])
        totals = D.all_reduce_sum(totals).tolist()
        return StepResult(loss=totals[0] / (accum * self.dist.world_size), tokens=int(totals[1]), flops=totals[2],
                          stop=totals[3] > 0, applied=bool(engine.was_step_applied()))

    # -- checkpoints, replicas ------------------------------------------------------------------

    def save(self, step: int, logger: RunLogger) -> C.CheckpointInfo:
        started = time.monotonic()
        meta = {"zero_stage": self.plan.ds.stage, "precision": self.plan.ds.precision,
                "code_version": self.code_version, "ds_config": self.plan.ds.source,
                "skipped_steps": int(self.engine.skipped_steps)}
        info = self.checkpoints.save(self.engine, step, self.loader.state_dict(), meta, self.cfg.to_json(),
                                     extra=self.validation.state_dict())
        seconds, split = time.monotonic() - started, self.checkpoints.last_timings
        logger.event("checkpoint", f"checkpoint {info.path} ({seconds:.1f} s: write {split['write']:.1f} s, "
                     f"publish {split['publish']:.1f} s)", step=step, path=str(info.path), seconds=seconds,
                     write_s=split["write"], publish_s=split["publish"])
        return info

    def parameter_digest(self) -> str:
        """SHA-256 over the full parameters (gathered one at a time under ZeRO-3)."""
        digest = hashlib.sha256()
        for name, param in D.gathered_parameters(self.engine.module):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def check_replicas(self, step: int, logger: RunLogger):
        digests = D.all_gather_object(self.parameter_digest())
        equal = len(set(digests)) == 1
        logger.event("replica_check", None, step=step, equal=equal, digests=digests)
        if not equal:
            raise RuntimeError(f"step {step}: ranks hold different parameters ({digests}); stopping")

    # -- the run ----------------------------------------------------------------------------------

    def write_run_files(self):
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.to_json(self.run_dir / "run_config.json")
        (self.run_dir / "ds_config.json").write_text(json.dumps(self.plan.ds.config, indent=2) + "\n")
        if self.text_tokenizer is not None:
            # the caption tokenizer travels with the run: export takes it from here, so the export
            # needs nothing from train.text_encoder_path (its weights are in the checkpoint already)
            self.text_tokenizer.save_pretrained(str(self.run_dir / TEXT_TOKENIZER))

    def resume(self, logger: RunLogger):
        """Engine, loader and RNG states from the checkpoint preflight chose (if any)."""
        info = self.plan.resume_from
        if info is None:
            return
        client = self.checkpoints.load(self.engine, info)
        if int(client["step"]) != info.step:
            raise RuntimeError(f"{info.path}: rank {self.dist.rank} holds step {client['step']}, meta says {info.step}")
        self.loader.load_state_dict(client["loader"])
        self.validation.load_state_dict(client)
        logger.event("resume", f"resumed from {info.path} at step {info.step}", step=info.step, path=str(info.path))

    def metrics(self, result: StepResult, seconds: float, lr: float) -> dict:
        grad_norm = self.engine.get_global_grad_norm()
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, peak RSS
        flops_per_s = result.flops / seconds
        return {"loss": result.loss, "bits_per_token": result.loss / LN2, "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens_per_s": result.tokens / seconds, "step_time_s": seconds,
                "mfu": flops_per_s / (self.peak * self.dist.world_size) if self.peak else None,
                "mem_gib": mem, "skipped_steps": int(self.engine.skipped_steps)}

    def fit(self, progress: Optional[bool] = None) -> TrainResult:
        train = self.cfg.train
        start_step = self.plan.resume_from.step if self.plan.resume_from is not None else 0
        # TensorBoard drops what a killed run logged after this step (purge_step), so curves do not fork
        logger = RunLogger(self.run_dir, self.dist.is_main, train.steps, start_step, train.log_every,
                           train.tensorboard, progress)
        stop = StopRequest().install()
        try:
            self.resume(logger)
            self.write_run_files()
            for note in [*self.plan.notes, *self.validation.notes]:
                logger.print(f"[nuwa-ds] {note}")
            here = D.placement(self.dist)
            print(f"[nuwa-ds] rank {here['rank']} of {here['world_size']} (local rank {here['local_rank']}) on node "
                  f"{here['node']} (host {here['host']}, PID {here['pid']})", flush=True)
            ranks = D.all_gather_object(here)
            logger.event("start", f"training steps {start_step + 1}..{train.steps} on {self.dist.world_size} rank(s) "
                         f"({self.device.type}, ZeRO-{self.plan.ds.stage}, {self.plan.ds.precision}, "
                         f"{self.plan.num_parameters / 1e6:.2f}M parameters), run dir {self.run_dir}",
                         step=start_step, world_size=self.dist.world_size, launcher=self.dist.launcher, ranks=ranks,
                         code_version=self.code_version)
            return self._loop(start_step, logger, stop)
        finally:
            stop.uninstall()
            logger.close()

    def _loop(self, start_step: int, logger: RunLogger, stop: StopRequest) -> TrainResult:
        train = self.cfg.train
        data_iter = iter(self.loader)
        saved_step = start_step if self.plan.resume_from is not None else None
        bad_in_row = 0
        time_limit_at = time.monotonic() + train.time_limit if train.time_limit is not None else None
        timed_out = False
        # rank 0 watches the Slurm job's end time; its vote reaches every rank through the all-reduce
        slurm = (SlurmDeadline(train.deadline_margin, log=lambda message, **fields: logger.event(
            "deadline", message, **fields)).start() if self.dist.is_main else None)

        def vote() -> bool:  # this rank's stop vote: a stop signal, train.time_limit, or the job's end near
            nonlocal timed_out
            signalled = bool(stop.poll())
            timed_out = timed_out or (time_limit_at is not None and time.monotonic() >= time_limit_at)
            return signalled or timed_out or (slurm is not None and slurm.due())

        for step in range(start_step + 1, train.steps + 1):
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            result = self.train_step(data_iter, step, vote)
            logger.step(step, self.metrics(result, time.perf_counter() - started, lr))
            bad_in_row = 0 if result.applied else bad_in_row + 1
            if not result.applied:
                logger.event("skip", f"step {step}: loss {result.loss} / non-finite gradients, update skipped "
                             f"({bad_in_row} in a row)", step=step, loss=repr(result.loss))
                if bad_in_row >= train.max_bad_steps:
                    last = C.find_latest(self.run_dir / "checkpoints")
                    named = str(last.path) if last else "none (no checkpoint written yet)"
                    logger.event("diverged", f"{bad_in_row} non-finite steps in a row: stopping at step {step}; "
                                 f"last good checkpoint: {named}", step=step, checkpoint=named)
                    return TrainResult("diverged", step, last.path if last else None, self.run_dir)
            if train.replica_check_every and step % train.replica_check_every == 0:
                self.check_replicas(step, logger)
            if self.validation.due(step):  # before the save: the checkpoint's eval history includes it
                self.validation.run(step, logger)
            if step % train.save_every == 0 and bad_in_row == 0:
                self.save(step, logger)
                saved_step = step
                if slurm is not None:
                    slurm.refresh()  # a checkpoint is a good moment to look again (TimeLimit updates, suspends)
            self.faults.pause(step, stop)
            if result.stop:
                info = self.save(step, logger) if saved_step != step else None
                path = info.path if info else self.run_dir / "checkpoints" / C.tag_for(step)
                cause = stop.signal_name or ("train.time_limit" if timed_out else
                                             "the Slurm job's end (train.deadline_margin)" if slurm and slurm.triggered
                                             else None)
                if cause is None:  # another rank's vote: a signal to the whole group can reach this rank
                    stop.poll()  # a moment after it voted; by now it is pending here, and it is the cause
                    cause = stop.signal_name or "a stop on another rank"
                logger.event("preempted", f"stopped by {cause} after step {step}; resume with --resume auto",
                             step=step, checkpoint=str(path), cause=cause)
                return TrainResult("preempted", step, path, self.run_dir)
        final = train.steps
        if saved_step != final:
            self.save(final, logger)
        self.check_replicas(final, logger)
        self.validation.finish(self.run_dir, self.dist.is_main)
        logger.event("end", f"finished {final} steps", step=final)
        return TrainResult("finished", final, self.run_dir / "checkpoints" / C.tag_for(final), self.run_dir)


# ----------------------------------------------------------------------------------------------
# Entry points


def _quiet_libraries():
    if os.environ.get("NUWA_DEBUG"):
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed")
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)


def train(cfg: RunConfig, resume: Optional[str] = None, local_rank: Optional[int] = None,
          progress: Optional[bool] = None) -> TrainResult:
    """Train ``cfg`` on this process's rank (the python API of ``nuwa-ds train``).

    ``resume``: None (fresh), ``"auto"`` (newest complete checkpoint under run_dir, or fresh), or a
    checkpoint / checkpoint-root path. Raises ValueError on bad input before allocating anything."""
    # before CUDA, the process group, DeepSpeed and the loader start their threads, which inherit the
    # mask: a stop signal then waits in the kernel for the trainer (preemption.StopRequest), in no thread
    mask = block_stop_signals() if threading.current_thread() is threading.main_thread() else None
    try:
        dist = D.detect(local_rank)
        kind = D.device_type()
        plan = preflight(cfg, dist, kind, resume)
        _quiet_libraries()
        device = D.init(dist, kind, cfg.train.collective_timeout)
        try:
            trainer = Trainer(cfg, plan, dist, device)
            try:
                result = trainer.fit(progress)
                if result.status == "preempted" and dist.is_main:
                    leave_requeue_marker(result.step, result.checkpoint)
                # every rank got here (all stop after the same step): tear the group down together, not
                # while rank 0 still writes its last files - a rank on another node that closed its
                # connections first aborted in gloo ("terminate called without an active exception")
                D.barrier()
                return result
            finally:
                trainer.engine.destroy()  # ZeRO-3 hooks and buffers, before the process group goes
        finally:
            D.shutdown()
    finally:
        if mask is not None:
            restore_signal_mask(mask)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config", required=True, help="run preset (tiny, small, nuwa-350m, nuwa-1b) or JSON file")
    parser.add_argument("--ds-config", default=None,
                        help="DeepSpeed JSON or a name in ds_configs/ (zero1, zero2, zero3, zero3_offload); "
                             "default: train.ds_config")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto': continue from the newest complete checkpoint in train.run_dir (fresh start "
                             "if none); or a checkpoint directory")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")


def run(args) -> int:
    # the stop signals stay blocked in this process to its end: one that comes after the run (during
    # teardown) waits unnoticed instead of killing the process (SIG_DFL) and changing its exit status
    block_stop_signals()
    overrides = list(args.overrides)
    if args.ds_config:
        overrides.append(f"train.ds_config={args.ds_config}")
    cfg = RunConfig.load(args.config, overrides)
    result = train(cfg, resume=args.resume, local_rank=args.local_rank, progress=args.progress)
    return result.exit_code


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m nuwa_ds.train ...``: the same command for launchers that put their own flags first
    (``deepspeed --module nuwa_ds.train`` passes ``--local_rank=N`` before our arguments)."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


__all__ = ["train", "preflight", "Trainer", "TrainResult", "Plan", "add_arguments", "run", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
