"""Reading the VQGAN checkpoints users already have: taming-transformers / latent-diffusion ``.ckpt``
files (PyTorch Lightning pickles with a ``state_dict``), without executing anything from them.

``torch.load(weights_only=True)`` refuses a Lightning checkpoint whose extra entries (callbacks,
hyper-parameters) name classes it does not know. We ask torch which globals those are and map each
to :class:`OpaqueObject`, an inert stand-in that only stores what it is given: the weights load, no
foreign code runs, and the extra entries (which we never read) become placeholders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from nuwa_ds.config_base import ConfigError
from nuwa_ds.tokenizer.config import VQ_PRESETS, VQConfig

TRAINING_ONLY_PREFIXES = ("loss.",)
"""Taming checkpoints also hold the discriminator and LPIPS weights of training (``loss.*``)."""
LDM_PREFIX = "first_stage_model."
"""Whole latent-diffusion checkpoints keep the VQGAN under this prefix."""


class OpaqueObject:
    """Stands in for any class a checkpoint names but we do not trust; keeps its arguments/state."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def safe_torch_load(path) -> object:
    """``torch.load(weights_only=True)``; unknown globals become :class:`OpaqueObject` (never imported)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - retried below with stand-ins, or re-raised clearly
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a torch zip file at all
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: {first}") from None
        if not names:
            raise ValueError(f"{path} could not be loaded with weights_only=True: {first}") from None
        with torch.serialization.safe_globals([(OpaqueObject, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)


def load_taming_state_dict(path) -> dict[str, torch.Tensor]:
    """The VQGAN weights of a taming / latent-diffusion checkpoint, with training-only entries
    (``loss.*``) removed and a latent-diffusion ``first_stage_model.`` prefix stripped."""
    ckpt = safe_torch_load(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict of tensors (is it a VQGAN checkpoint?)")
    if any(k.startswith(LDM_PREFIX) for k in state):
        state = {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if "quantize.used" in state:
        raise ValueError(f"{path} uses a remapped codebook (quantize.used); remapping is not supported")
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError(f"{path} has no encoder.* weights: not a VQGAN checkpoint")
    return state


def infer_config(state: dict[str, torch.Tensor], resolution: int = 256) -> VQConfig:
    """The architecture a taming-layout state dict was built with, read off its keys and shapes.
    Attention levels are expressed relative to ``resolution`` (only their positions matter)."""

    def levels(prefix):
        return sorted({int(m.group(1)) for k in state if (m := re.match(prefix + r"\.(\d+)\.", k))})

    try:
        ch = state["encoder.conv_in.weight"].shape[0]
        down = levels("encoder.down")
        ch_mult = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in down]
        num_res_blocks = len(levels("encoder.down.0.block"))
        attn_levels = [i for i in down if f"encoder.down.{i}.attn.0.q.weight" in state]
        data = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, resolution=resolution,
                    attn_resolutions=[resolution // 2 ** i for i in attn_levels],
                    in_channels=state["encoder.conv_in.weight"].shape[1],
                    z_channels=state["encoder.conv_out.weight"].shape[0],
                    out_ch=state["decoder.conv_out.weight"].shape[0],
                    embed_dim=state["quant_conv.weight"].shape[0])
        if "quantize.embedding.weight" in state:
            data.update(quantizer="vq", n_embed=state["quantize.embedding.weight"].shape[0])
        else:
            data.update(quantizer="gumbel", n_embed=state["quantize.embed.weight"].shape[0])
    except KeyError as exc:
        raise ValueError(f"cannot infer the VQGAN architecture: key {exc} is missing") from None
    return VQConfig.from_dict(data)


def resolve_taming_config(config, state: dict[str, torch.Tensor]) -> VQConfig:
    """Turn what the user gave (None, preset name, VQConfig, dict, .yaml/.json path) into a VQConfig."""
    if config is None:
        return infer_config(state)
    if isinstance(config, VQConfig):
        return config
    if isinstance(config, dict):
        return _from_mapping(config)
    text = str(config)
    if text in VQ_PRESETS:
        return VQConfig.preset(text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"tokenizer config {text!r} is neither a preset ({', '.join(VQ_PRESETS)}) nor a file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return _from_mapping(yaml.safe_load(path.read_text()))
    return _from_mapping(json.loads(path.read_text()))


def _from_mapping(data: dict) -> VQConfig:
    if "model" in data:  # a whole taming config file
        data = data["model"]
    if "params" in data or "ddconfig" in data:
        return VQConfig.from_taming(data)
    data = {k: v for k, v in data.items() if k not in ("format", "version")}
    return VQConfig.from_dict(data)
