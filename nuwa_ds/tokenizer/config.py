"""The VQGAN's architecture: :class:`VQConfig` (taming's ``ddconfig`` + ``n_embed`` / ``embed_dim``)
and the named presets (taming / latent-diffusion checkpoints, and ours).

No torch here: the checkpoint reader (``checkpoints.py``) and the model (``vqgan.py``) both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nuwa_ds.config_base import ConfigBase, ConfigError


@dataclass
class VQConfig(ConfigBase):
    """The VQGAN architecture (taming's ``ddconfig`` + ``n_embed`` / ``embed_dim``)."""

    ch: int = 128
    """Base channel width; level i has ch * ch_mult[i] channels."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Channel multiplier per resolution level; the downsampling factor f is 2 ** (len - 1)."""
    num_res_blocks: int = 2
    """Residual blocks per level in the encoder (the decoder has one more per level, as in taming)."""
    attn_resolutions: tuple[int, ...] = (16,)
    """Levels whose spatial size (counted from ``resolution``) gets self-attention blocks."""
    resolution: int = 256
    """Nominal training resolution: only decides where attention blocks sit (any input size works)."""
    z_channels: int = 256
    """Channels of the encoder output / decoder input."""
    embed_dim: int = 256
    """Width of a codebook vector."""
    n_embed: int = 16384
    """Codebook size (number of tokens)."""
    in_channels: int = 3
    """Image channels in."""
    out_ch: int = 3
    """Image channels out."""
    dropout: float = 0.0
    """Dropout inside residual blocks (training only)."""
    quantizer: str = "vq"
    """'vq' (nearest codebook vector, taming VectorQuantizer2) or 'gumbel' (taming GumbelQuantize:
    argmax of a 1x1 projection at inference)."""
    norm_groups: int = 32
    """GroupNorm groups (taming fixes 32); must divide every channel count."""

    def validate(self):
        for name in ("ch", "num_res_blocks", "resolution", "z_channels", "embed_dim", "n_embed",
                     "in_channels", "out_ch", "norm_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tokenizer.{name} must be >= 1, got {getattr(self, name)}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"tokenizer.ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        if self.quantizer not in ("vq", "gumbel"):
            raise ConfigError(f"tokenizer.quantizer must be 'vq' or 'gumbel', got {self.quantizer!r}")
        for width in {self.ch * m for m in self.ch_mult}:
            if width % self.norm_groups:
                raise ConfigError(f"tokenizer: channel width {width} (ch * ch_mult) is not a multiple of "
                                  f"norm_groups={self.norm_groups}")
        if self.quantizer == "gumbel" and self.embed_dim != self.z_channels:
            # taming's GumbelVQ feeds quant_conv's embed_dim channels into a proj built for z_channels
            raise ConfigError("tokenizer: a gumbel quantizer needs embed_dim == z_channels (as in taming)")
        if self.n_embed > 32767:
            raise ConfigError("tokenizer.n_embed must fit int16 token shards (<= 32767)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("tokenizer.dropout must be within [0, 1)")

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def preset(cls, name: str, **overrides) -> "VQConfig":
        if name not in VQ_PRESETS:
            raise ConfigError(f"unknown tokenizer preset {name!r}; choose one of {', '.join(VQ_PRESETS)}")
        return cls.from_dict({**VQ_PRESETS[name], **overrides})

    @classmethod
    def from_taming(cls, params: dict) -> "VQConfig":
        """From a taming / latent-diffusion ``model.params`` dict (``ddconfig``, ``n_embed``,
        ``embed_dim``; a ``target`` naming ``GumbelVQ`` selects the Gumbel quantizer)."""
        if "params" in params and "ddconfig" not in params:  # the whole `model:` section
            target = params.get("target", "")
            params = dict(params["params"], _target=target)
        if "ddconfig" not in params:
            raise ConfigError("a taming config needs model.params.ddconfig (and n_embed, embed_dim)")
        dd = dict(params["ddconfig"])
        if dd.pop("double_z", False):
            raise ConfigError("ddconfig.double_z=true is a KL autoencoder, not a VQGAN")
        known = {"ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels",
                 "in_channels", "out_ch", "dropout"}
        data = {k: v for k, v in dd.items() if k in known}
        data["n_embed"] = params["n_embed"]
        data["embed_dim"] = params["embed_dim"]
        if "Gumbel" in str(params.get("_target", "")) or "kl_weight" in params:
            data["quantizer"] = "gumbel"
        return cls.from_dict(data)


VQ_PRESETS: dict[str, dict] = {
    # taming-transformers vqgan_imagenet_f16_16384 (the usual NUWA tokenizer): 256 px -> 16 x 16 tokens.
    "taming-f16-16384": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                             z_channels=256, embed_dim=256, n_embed=16384),
    # taming-transformers vqgan_imagenet_f16_1024.
    "taming-f16-1024": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                            z_channels=256, embed_dim=256, n_embed=1024),
    # latent-diffusion first_stage_models/vq-f8 (taming VQModel layout, 4-dim codes).
    "ldm-f8-16384": dict(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[32],
                         z_channels=4, embed_dim=4, n_embed=16384),
    # taming-transformers vqgan_gumbel_f8 (GumbelVQ).
    "taming-gumbel-f8-8192": dict(ch=128, ch_mult=[1, 1, 2, 4], num_res_blocks=2, attn_resolutions=[32],
                                  z_channels=256, embed_dim=256, n_embed=8192, quantizer="gumbel"),
    # Ours, for `nuwa-ds tokenizer-train` on CPU (the demo): f8, narrow (a CPU minute buys more steps
    # of a narrow model, which beats fewer steps of a wide one), attention only in the middle blocks,
    # 8-dim codes (low-dimensional codes keep most of the codebook in use).
    "demo-f8": dict(ch=16, ch_mult=[1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[], resolution=32,
                    z_channels=64, embed_dim=8, n_embed=1024, norm_groups=8),
    # Ours, for `nuwa-ds tokenizer-train` on a GPU (the landscape recipe): the same f8 layout and
    # 8-dim codes, 4x the width and two residual blocks per level.
    "landscape-f8": dict(ch=64, ch_mult=[1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[], resolution=32,
                         z_channels=64, embed_dim=8, n_embed=1024, norm_groups=16),
}
