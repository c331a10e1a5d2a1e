"""Configuration: one dataclass per component, named presets, JSON round-trip, ``a.b=value`` overrides.

* :class:`NuwaConfig`  - the model (what ``NuwaInfinity(cfg)`` builds; saved as ``config.json``); defined in
  ``nuwa_ds.model.config`` (the model imports nothing above itself) and re-exported here.
* :class:`DataConfig`  - where batches come from (WebDataset shards or synthetic token grids).
* :class:`TrainConfig` - optimisation, checkpointing, logging.
* :class:`RunConfig`   - the three together: what ``nuwa-ds train --config`` reads and what every
  run directory and checkpoint stores as ``config.json``.

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError` (a
``ValueError``) naming the key and what was expected, so a typo never silently trains the wrong model
(the machinery: ``nuwa_ds.config_base``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from nuwa_ds.config_base import ConfigBase, ConfigError
from nuwa_ds.model.config import MODEL_PRESETS, NuwaConfig
from nuwa_ds.model.geometry import ORDERS

__all__ = ["ConfigBase", "ConfigError", "NuwaConfig", "MODEL_PRESETS", "DataConfig", "TrainConfig", "RunConfig",
           "RUN_PRESETS"]


# ----------------------------------------------------------------------------------------------
# Data and training (read by data_pipelines/ and nuwa_ds/train.py)


@dataclass
class DataConfig(ConfigBase):
    """Where training batches come from."""

    shards: Optional[str] = None
    """WebDataset shard pattern with braces (e.g. 'data/train-{000000..000127}.tar'); None trains
    on synthetic token grids (smoke tests, benchmarks)."""
    canvas: tuple[int, int, int] = (1, 64, 64)
    """Training canvas in tokens (T, H, W); H and W multiples of the patch size."""
    canvases: list[tuple[int, int, int]] = field(default_factory=list)
    """Extra canvas sizes (aspect buckets); each batch uses one size. Shards: a sample goes to the
    fitting canvas closest to its aspect ratio; synthetic grids: a seeded random size per batch."""
    orders: dict[str, float] = field(default_factory=lambda: {"down": 1.0, "up": 1.0, "right": 1.0, "left": 1.0})
    """Order sampling weights; one order is drawn per example."""
    caption_dropout: float = 0.1
    """Probability of dropping the caption of an example (trains classifier-free guidance)."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    samples_per_epoch: int = 100_000
    """Length of one resampled 'epoch' per rank (resampled shards never run dry)."""
    shuffle_buffer: int = 1000
    """Shards: usable samples each loader stream pools and shuffles at a time (whole shards are read
    until this many are pooled); also what bounds a worker's memory."""
    seed: int = 1234
    """Data RNG seed (crops, orders, shard sampling)."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead."""
    val_shards: Optional[str] = None
    """Validation shard pattern with braces (e.g. the ``val_shards`` of ``nuwa-ds prepare --val-fraction``'s
    manifest); used when train.eval_every > 0. None with synthetic training data validates on a fixed
    set of synthetic grids of another seed (docs/decisions.md, "Validation")."""

    def validate(self):
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ConfigError("data.caption_dropout must be within [0, 1]")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        for name, weight in self.orders.items():
            if name not in ORDERS:
                raise ConfigError(f"data.orders: unknown order {name!r}; choose from {', '.join(ORDERS)}")
            if weight < 0:
                raise ConfigError(f"data.orders.{name}: weight must be >= 0")
        if not any(w > 0 for w in self.orders.values()):
            raise ConfigError("data.orders: at least one order needs a positive weight")
        for canvas in [self.canvas, *self.canvases]:
            if len(canvas) != 3 or any(c < 1 for c in canvas):
                raise ConfigError(f"data.canvas: expected (T, H, W) token sizes >= 1, got {canvas}")
        for name in ("shuffle_buffer", "prefetch_factor", "samples_per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainConfig(ConfigBase):
    """Optimisation, checkpointing and logging for ``nuwa-ds train``."""

    run_dir: str = "runs/default"
    """Where checkpoints, logs, metrics and the resolved config go."""
    steps: int = 1000
    """Optimizer steps to train."""
    micro_batch_size: int = 8
    """Examples per rank per forward/backward (must match the DeepSpeed config)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (must match the DeepSpeed config)."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient norm clipping (written into the DeepSpeed config)."""
    precision: str = "auto"
    """'bf16', 'fp32' or 'auto' (bf16 on GPU, fp32 on CPU)."""
    seed: int = 0
    """Model initialisation and dropout seed."""
    save_every: int = 500
    """Checkpoint every this many steps (and at the end, and on preemption)."""
    keep_last: int = 3
    """Complete checkpoints kept on disk."""
    log_every: int = 10
    """Steps between metric lines."""
    max_bad_steps: int = 5
    """Non-finite losses in a row that stop the run."""
    tensorboard: bool = True
    """Write TensorBoard scalars under run_dir/tb."""
    ds_config: str = "zero2"
    """DeepSpeed config: a JSON file, or a name in ds_configs/ (zero1, zero2, zero3, zero3_offload).
    Batch sizes, precision and clipping in it are filled from this section (``nuwa-ds train --ds-config``)."""
    global_batch_size: Optional[int] = None
    """Examples per optimizer step over all ranks; when set, it must equal micro_batch_size x
    grad_accum_steps x world size (checked before any rank allocates memory)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    replica_check_every: int = 0
    """Every this many steps all ranks compare a SHA-256 of the full parameters and stop if they
    differ; 0 checks only at the end of the run (one gather of the parameters)."""
    init_from: Optional[str] = None
    """Start from these weights (a ``save_pretrained``/export directory or a checkpoint directory of
    an earlier run); optimizer, schedule and data position start fresh. Ignored when resuming."""
    text_encoder_path: Optional[str] = None
    """Local transformers text encoder directory attached at start (text-conditioned training)."""
    time_limit: Optional[float] = None
    """Seconds of training after which the run checkpoints and stops as on a stop signal (exit 75,
    so a requeue or ``--resume auto`` continues it); None: no limit."""
    deadline_margin: Optional[float] = 300.0
    """Under Slurm: seconds before the job's end time (read from Slurm at the start and re-read every
    few minutes) at which the run checkpoints and exits 75 for a requeue, as on a stop signal, even if
    no signal arrives (issue 20's second line of defence); 0 or null: off. No effect outside Slurm, or
    for a job without an end time or whose time limit is not longer than the margin (one log line says
    so). Leave the checkpoint enough time: the default matches train.sbatch's ``--signal=B:USR1@300``."""
    collective_timeout: float = 1800.0
    """Seconds a rank waits in one collective (all-reduce, barrier, ...) for the other ranks before it
    fails: a node that hangs or vanishes without closing its connections ends the run after this long
    instead of holding every other rank (torch's default: 30 minutes). A killed rank's peers fail at once."""
    checkpoint_fsync: bool = True
    """fsync every checkpoint file before publishing it, so a checkpoint survives a node crash, not
    only a killed process (costs the time to flush it to disk)."""
    eval_every: int = 0
    """Evaluate the loss on the fixed validation set (data.val_shards) every this many steps and at
    the end; 0 turns validation off."""
    eval_batches: int = 8
    """Micro-batches per rank per evaluation (the validation set has world size x this many)."""
    samples: int = 4
    """Sample pictures drawn at every evaluation on the training canvas (data.canvas), plus one wide
    canvas (train.sample_wide), decoded into one grid: run_dir/samples/step_NNNNNN.png and the
    TensorBoard image ``samples``; 0 turns them off (docs/decisions.md, "Sample pictures")."""
    sample_wide: int = 4
    """Width of the extra wide sample in training-canvas widths (generated in order right); 0: none."""
    sample_temperature: float = 1.0
    """Sampling temperature of the sample pictures (0: greedy)."""
    sample_top_k: Optional[int] = 64
    """Top-k of the sample pictures (null: the whole vocabulary)."""
    sample_tokenizer: Optional[str] = None
    """VQ tokenizer that decodes the sample pictures (a tokenizer directory or a taming .ckpt); None:
    the one that made data.shards, named in their manifest.json. None found: no pictures, one log line."""

    def validate(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "save_every", "keep_last", "log_every",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ConfigError(f"train.global_batch_size must be >= 1 (or null), got {self.global_batch_size}")
        if self.deadline_margin is not None and self.deadline_margin < 0:
            raise ConfigError(f"train.deadline_margin must be >= 0 seconds (0 or null: off), "
                              f"got {self.deadline_margin}")
        if self.collective_timeout <= 0:
            raise ConfigError(f"train.collective_timeout must be > 0 seconds, got {self.collective_timeout}")
        if self.replica_check_every < 0:
            raise ConfigError(f"train.replica_check_every must be >= 0, got {self.replica_check_every}")
        if self.eval_every < 0 or self.eval_batches < 1:
            raise ConfigError(f"train.eval_every must be >= 0 and train.eval_batches >= 1, got "
                              f"{self.eval_every} and {self.eval_batches}")
        if self.samples < 0 or self.sample_wide < 0 or self.sample_wide == 1:
            raise ConfigError(f"train.samples must be >= 0 and train.sample_wide 0 (none) or >= 2, got "
                              f"{self.samples} and {self.sample_wide}")
        if self.sample_temperature < 0 or (self.sample_top_k is not None and self.sample_top_k < 1):
            raise ConfigError(f"train.sample_temperature must be >= 0 and train.sample_top_k >= 1 (or null), got "
                              f"{self.sample_temperature} and {self.sample_top_k}")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.warmup_steps < 0:
            raise ConfigError("train.lr must be > 0, train.min_lr_ratio within [0, 1], train.warmup_steps >= 0")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("train.grad_clip and train.weight_decay must be >= 0 (0 turns them off)")


@dataclass
class RunConfig(ConfigBase):
    """A whole training run: model + data + train."""

    model: NuwaConfig = field(default_factory=NuwaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self):
        P = self.model.patch_size
        for canvas in [self.data.canvas, *self.data.canvases]:
            if canvas[1] % P or canvas[2] % P:
                raise ConfigError(f"data.canvas {tuple(canvas)}: H and W must be multiples of "
                                  f"model.patch_size={P}")
        if self.train.eval_every and self.data.shards is not None and self.data.val_shards is None:
            raise ConfigError("train.eval_every > 0 needs data.val_shards (held-out shards, e.g. from "
                              "`nuwa-ds prepare --val-fraction 0.01`; give data.shards again to validate on them)")

    @classmethod
    def preset(cls, name: str) -> "RunConfig":
        if name not in RUN_PRESETS:
            raise ConfigError(f"unknown run preset {name!r}; choose one of {', '.join(RUN_PRESETS)}")
        return cls.from_dict(RUN_PRESETS[name])

    @classmethod
    def load(cls, name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> "RunConfig":
        """A preset name or a JSON file, then ``a.b=value`` overrides."""
        if name_or_path in RUN_PRESETS:
            cfg = cls.preset(name_or_path)
        else:
            cfg = cls.from_json(name_or_path)
        return cfg.override(list(overrides)) if overrides else cfg


RUN_PRESETS: dict[str, dict] = {
    "tiny": dict(
        model=MODEL_PRESETS["tiny"],
        data=dict(canvas=[1, 16, 16], num_workers=0, samples_per_epoch=1000),
        train=dict(steps=50, micro_batch_size=2, lr=3e-3, warmup_steps=5, save_every=25, log_every=5,
                   tensorboard=False),
    ),
    "small": dict(
        model=MODEL_PRESETS["small"],
        data=dict(canvas=[1, 16, 16]),
        train=dict(steps=2000, micro_batch_size=8, lr=2e-3, warmup_steps=50, save_every=500),
    ),
    "nuwa-350m": dict(
        model=MODEL_PRESETS["nuwa-350m"],
        data=dict(canvas=[1, 64, 64]),
        # micro-batch 16 keeps one H100 busy (at 8 the host's launch path is the limit), accumulation 2
        # halves the optimizer's share: 40% MFU under ZeRO-2 (docs/benchmarks.md)
        train=dict(steps=100_000, micro_batch_size=16, grad_accum_steps=2, lr=3e-4, warmup_steps=2000,
                   save_every=1000),
    ),
    "nuwa-1b": dict(
        model=MODEL_PRESETS["nuwa-1b"],
        data=dict(canvas=[1, 64, 64]),
        train=dict(steps=100_000, micro_batch_size=4, lr=2e-4, warmup_steps=2000, save_every=1000),
    ),
}
