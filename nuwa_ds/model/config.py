"""The model's configuration: :class:`NuwaConfig` (what ``NuwaInfinity(cfg)`` builds, saved as
``config.json`` beside the weights) and its named presets.

No torch here: ``nuwa_ds.config`` re-exports these names and is imported by the CLI before torch is
(docs/decisions.md, "Stop signals").
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional

from nuwa_ds.config_base import ConfigBase, ConfigError
from nuwa_ds.model.geometry import check_extents


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
    """Longest rotary wavelength is about 2*pi*rope_base / rope_max_freq tokens (frequencies
    rope_max_freq * base^(-j/(rope_dims/4)))."""
    rope_max_freq: float = 1.0
    """Highest rotary frequency, radians per token (at most pi). A higher one tells a key at the
    query's own position from its neighbours more sharply: on the copy probe (docs/benchmarks.md,
    "Can the model learn to copy the frame before?") pi/2 found the frame before ~300 steps sooner."""
    aligned_bias: bool = False
    """A second learned per-head bias table, by patch offset like the first, added only to the key at
    the query's own position in each block (the same canvas token one whole patch, or one frame, away):
    "the same pixel in the frame before" is then one scalar to learn instead of a sharp match of
    positions (docs/decisions.md, "Aligned-token bias"). Off for models saved before it existed."""
    aligned_bias_init: float = 0.0
    """Starting value of the aligned-token bias for the offsets straight back in time (the same place
    one or more frames before; other offsets start at 0): a prior that the frame before holds the
    same pixel, which the model may unlearn. Needs ``aligned_bias``; 0: no prior."""
    aligned_bias_prior_heads: Optional[int] = None
    """How many heads of each layer (the first ones) start with that prior; None: all of them. The
    others start at 0 and stay free for what is not a copy (the first frame, the text)."""
    global_time_context: bool = True
    """Whether the global stack attends to patches of earlier frames. False: a frame's global states hold
    that frame alone (its own patches before it, and the text), so frame t is predicted from frames t,
    t-1 .. t-extents[0] only, whatever the depth: clips of extents[0] + 2 frames then show the model every
    context a video of any length gives it. True: each global layer looks extents[0] frames further back,
    and with clips shorter than layers x extents[0] frames the model never sees a frame that far from a
    clip's start (docs/decisions.md, "Context noise"). Images are unaffected."""
    context_noise: float = 0.0
    """Training only: each token the global stack reads is replaced by a uniformly drawn one with this
    probability. The global states are only ever the *context* of other patches (a patch's own tokens
    reach its decoding through the local stack, untouched), so the model learns to predict through wrong
    tokens in the frames and patches before, as its own sampling leaves them, instead of copying them
    forward (docs/decisions.md, "Context noise"). Validation and generation read clean tokens. 0: off."""
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
        if isinstance(self.context_noise, bool) or not isinstance(self.context_noise, (int, float)) \
                or not (0.0 <= self.context_noise < 1.0):
            raise ConfigError(f"model.context_noise must be in [0, 1), got {self.context_noise}")
        if self.aligned_bias_init and not self.aligned_bias:
            raise ConfigError("model.aligned_bias_init needs model.aligned_bias=true")
        if not math.isfinite(self.aligned_bias_init):
            raise ConfigError(f"model.aligned_bias_init must be finite, got {self.aligned_bias_init}")
        if self.aligned_bias_prior_heads is not None:
            heads = min(self.d_global, self.d_local) // self.head_dim
            if not self.aligned_bias_init:
                raise ConfigError("model.aligned_bias_prior_heads needs model.aligned_bias_init (the prior it places)")
            if not 1 <= self.aligned_bias_prior_heads <= heads:
                raise ConfigError(f"model.aligned_bias_prior_heads must be in [1, {heads}] (the heads of the "
                                  f"narrower stack) or None for all, got {self.aligned_bias_prior_heads}")
        if not 0 < self.rope_max_freq <= math.pi:
            raise ConfigError(f"model.rope_max_freq must be in (0, pi] radians per token, got {self.rope_max_freq}")

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
