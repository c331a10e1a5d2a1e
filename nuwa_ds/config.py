"""Configuration: one dataclass per component, named presets, JSON round-trip, ``a.b=value`` overrides.

* :class:`NuwaConfig`  - the model (what ``NuwaInfinity(cfg)`` builds; saved as ``config.json``).
* :class:`DataConfig`  - where batches come from (WebDataset shards or synthetic token grids).
* :class:`TrainConfig` - optimisation, checkpointing, logging.
* :class:`RunConfig`   - the three together: what ``nuwa-ds train --config`` reads and what every
  run directory and checkpoint stores as ``config.json``.

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError` (a
``ValueError``) naming the key and what was expected, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


# ----------------------------------------------------------------------------------------------
# Generic machinery: dataclass <-> dict with type checks, and dotted overrides.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check (and gently convert: int -> float, list -> tuple) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like {list(args)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is dict:
        origin = dict
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)} "
            f"in {cls.__name__}; known keys: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = _to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _parse_scalar(text: str, tp, key: str):
    """Turn the right-hand side of ``a.b=value`` into a value of annotation ``tp``."""
    stripped = text.strip()
    if stripped.lower() in ("none", "null"):
        return None
    try:
        parsed = json.loads(stripped)
    except json.JSONDecodeError:
        parsed = stripped
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else tp
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool and isinstance(parsed, str):
        low = parsed.lower()
        if low in ("true", "yes", "on"):
            return True
        if low in ("false", "no", "off"):
            return False
    if tp is bool and parsed in (0, 1) and not isinstance(parsed, bool):
        return bool(parsed)
    if origin in (tuple, list) and isinstance(parsed, (str, int, float)):
        parsed = [json.loads(p) if p.strip() not in ("",) else p for p in str(stripped).split(",")]
    if tp is str and not isinstance(parsed, str):
        parsed = stripped
    return parsed


class ConfigBase:
    """Mixin: JSON round-trip and overrides for the config dataclasses."""

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return _from_dict(cls, data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def override(self, assignments: list[str] | tuple[str, ...]):
        """A copy with ``a.b=value`` assignments applied (values parsed as JSON where they can be)."""
        data = self.to_dict()
        hints_cls = type(self)
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.d_global=256)")
            key, text = item.split("=", 1)
            parts = key.strip().split(".")
            node, cls = data, hints_cls
            for depth, part in enumerate(parts):
                names = [f.name for f in dataclasses.fields(cls)]
                if part not in names:
                    raise ConfigError(f"unknown key {'.'.join(parts[: depth + 1])} in override {item!r}; "
                                      f"known keys here: {', '.join(names)}")
                tp = _hints(cls)[part]
                if depth == len(parts) - 1:
                    node[part] = _parse_scalar(text, tp, key)
                else:
                    if not dataclasses.is_dataclass(tp):
                        raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section; cannot set {key}")
                    node, cls = node[part], tp
        return type(self).from_dict(data)


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class NuwaConfig(ConfigBase):
    """The NUWA-Infinity model: a global patch-level stack over a local token-level decoder."""

    vocab_size: int = 16384
    """Number of VQ codes (the tokenizer's codebook size)."""
    patch_size: int = 16
    """P: a patch is P x P tokens (n = P*P positions per attention block)."""
    d_global: int = 1024
    """Width of the global (patch-level) stack."""
    n_global_layers: int = 12
    """Depth of the global stack."""
    d_local: int = 1024
    """Width of the local (token-level) decoder."""
    n_local_layers: int = 12
    """Depth of the local decoder."""
    head_dim: int = 64
    """Attention head size in both stacks (64 or 128 for the Triton kernels); heads = width / head_dim."""
    mlp_ratio: float = 4.0
    """MLP hidden width over model width."""
    extents: tuple[int, int, int] = (1, 1, 1)
    """Nearby Context Pool extents (e_t, e_h, e_w): frames back, rows and columns either side."""
    max_frames: int = 32
    """Frames with their own BOS frame embedding; later frames share the last one."""
    frame_embedding: bool = True
    """Add a frame-index embedding to each patch's BOS (helps video; harmless for images)."""
    row_embedding: int = 0
    """Absolute row signal: patch rows with their own learned embedding, added to every patch's
    global input and to its BOS (rows below the last share the last one); 0: none, the model then
    knows only relative positions. A patch's row counts from the top of the *source picture* its
    training crop was cut from (the batch's ``rows``), so a model trained on crops of tall pictures
    knows where in the picture it is, and a canvas taller than the crops stays coherent."""
    rope_dims: int = 0
    """Rotary position embedding over canvas token coordinates (``model/rope.py``): the first
    ``rope_dims`` dims of every attention head (a multiple of 4, at most head_dim) are rotated by
    the token's row (half of them) and column (the other half) on the canvas, so attention sees the
    token-level offset between a query and every key, across patch edges; 0: off (positions are
    then the learned intra-patch embedding plus the per-offset bias only)."""
    rope_base: float = 100.0
    """Longest rotary wavelength is about 2*pi*rope_base tokens (frequencies base^(-j/(rope_dims/4)))."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation (residual projections are scaled by depth)."""
    text_encoder: Optional[dict] = None
    """Text conditioning: None for none, else a transformers config dict of the text encoder
    (e.g. a T5 or CLIP text encoder). ``NuwaInfinity.attach_text_encoder(path)`` fills it from a
    local checkpoint; its weights are saved with the model."""
    max_text_len: int = 64
    """Captions are truncated to this many text tokens."""
    freeze_text_encoder: bool = True
    """Keep the text encoder's weights fixed during training."""
    attn_backend: str = "auto"
    """Patch attention implementation: 'reference' (SDPA over gathered blocks, any device),
    'triton' (kernels/patch_attention.py), or 'auto' (triton on CUDA when available)."""
    loss_backend: str = "auto"
    """Cross-entropy of each logits chunk: 'torch', 'triton' (kernels/cross_entropy.py, loss and
    gradient in one pass, in place) or 'auto' (triton on CUDA)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in the backward pass (saves activation memory)."""
    loss_chunk_tokens: int = 8192
    """Tokens per chunk of the fused linear + cross-entropy; bounds logits memory."""

    def validate(self):
        from nuwa_ds.model.orders import check_extents

        for name in ("vocab_size", "patch_size", "d_global", "n_global_layers", "d_local",
                     "n_local_layers", "head_dim", "max_frames", "max_text_len", "loss_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("d_global", "d_local"):
            if getattr(self, name) % self.head_dim:
                raise ConfigError(f"model.{name}={getattr(self, name)} is not a multiple of "
                                  f"model.head_dim={self.head_dim}")
        if self.vocab_size > 32767:
            raise ConfigError("model.vocab_size must fit int16 token shards (<= 32767)")
        try:
            check_extents(self.extents)
        except ValueError as exc:
            raise ConfigError(f"model.extents: {exc}") from None
        if self.attn_backend not in ("auto", "reference", "triton"):
            raise ConfigError(f"model.attn_backend must be auto, reference or triton, got {self.attn_backend!r}")
        if self.loss_backend not in ("auto", "torch", "triton"):
            raise ConfigError(f"model.loss_backend must be auto, torch or triton, got {self.loss_backend!r}")
        if self.mlp_ratio <= 0:
            raise ConfigError("model.mlp_ratio must be > 0")
        if self.row_embedding < 0:
            raise ConfigError(f"model.row_embedding must be >= 0 (0: off), got {self.row_embedding}")
        if self.rope_dims < 0 or self.rope_dims % 4 or self.rope_dims > self.head_dim:
            raise ConfigError(f"model.rope_dims must be a multiple of 4 in [0, head_dim={self.head_dim}] "
                              f"(0: off), got {self.rope_dims}")
        if self.rope_base <= 1:
            raise ConfigError(f"model.rope_base must be > 1, got {self.rope_base}")

    def __post_init__(self):
        self.extents = tuple(self.extents)

    @property
    def tokens_per_patch(self) -> int:
        return self.patch_size * self.patch_size

    @classmethod
    def preset(cls, name: str, **overrides) -> "NuwaConfig":
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        data = dict(MODEL_PRESETS[name])
        data.update(overrides)
        return cls.from_dict(data)


MODEL_PRESETS: dict[str, dict] = {
    # CPU tests and the demo: trains in seconds, 4x4-token patches.
    "tiny": dict(vocab_size=256, patch_size=4, d_global=64, n_global_layers=2, d_local=64,
                 n_local_layers=2, head_dim=16, max_frames=8, loss_chunk_tokens=1024),
    # A few million parameters: the demo on real pictures within CPU minutes.
    "small": dict(vocab_size=1024, patch_size=4, d_global=128, n_global_layers=3, d_local=128,
                  n_local_layers=3, head_dim=32, max_frames=8, loss_chunk_tokens=2048),
    # ~350M parameters (see docs/decisions.md for the count), 16x16-token patches, f16 VQGAN codes.
    "nuwa-350m": dict(vocab_size=16384, patch_size=16, d_global=1024, n_global_layers=12,
                      d_local=1024, n_local_layers=12, head_dim=64),
    # ~1B parameters.
    "nuwa-1b": dict(vocab_size=16384, patch_size=16, d_global=1536, n_global_layers=18,
                    d_local=1536, n_local_layers=18, head_dim=128),
}


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
        from nuwa_ds.model.orders import ORDERS

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
