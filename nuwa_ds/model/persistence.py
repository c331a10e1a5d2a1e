"""save_pretrained / from_pretrained: the model's own files in a model directory, ``model.safetensors``
(sharded above a size limit, with an index) + ``config.json`` (+ the text tokenizer's files). No pickle,
no DeepSpeed. The directory as a whole (the VQ tokenizer it names, export from a ZeRO checkpoint) is
``nuwa_ds/model_dir.py``'s; this part sits in the model so that ``NuwaInfinity`` saves and loads itself
without the layers above (docs/design.md, "9. Interfaces and the model directory")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from nuwa_ds.model.config import NuwaConfig

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARDS = "model-*-of-*.safetensors"
"""The names of the weight shards (ours and ``zero_to_fp32``'s), as a glob pattern."""
CONFIG = "config.json"
TEXT_TOKENIZER = "text_tokenizer"
"""The caption tokenizer's folder (Hugging Face files), when the model has a text encoder."""


def write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = 5 * 2**30):
    """Write tensors as one safetensors file, or as shards + index when above ``max_shard_bytes``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    seen = set()
    for name, tensor in state.items():
        if tensor.numel() and tensor.data_ptr() in seen:  # tied weights (e.g. T5 embeddings): store a copy
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.contiguous()
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def has_weights(directory: Path) -> bool:
    return (directory / WEIGHTS).is_file() or (directory / INDEX).is_file()


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files holding ``directory``'s weights: the one file, or the index's shards."""
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    if (directory / INDEX).is_file():
        index = json.loads((directory / INDEX).read_text())
        return [directory / fname for fname in sorted(set(index["weight_map"].values()))]
    raise FileNotFoundError(f"no {WEIGHTS} or {INDEX} in {directory}")


def remove_weights(directory: Path):
    """Delete every weight file of ``directory`` (before writing new ones, so no shard of older ones stays)."""
    for stale in [directory / WEIGHTS, directory / INDEX, *directory.glob(SHARDS)]:
        stale.unlink(missing_ok=True)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for path in weight_files(directory):
        state.update(load_file(str(path)))
    return state


def save_pretrained(model, directory, dtype: Optional[torch.dtype] = None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    write_weights(state, directory)
    model.config.to_json(directory / CONFIG)
    if model.text_tokenizer is not None:
        model.text_tokenizer.save_pretrained(str(directory / TEXT_TOKENIZER))


def load_config_json(directory) -> NuwaConfig:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a NUWA model directory")
    return NuwaConfig.from_dict(json.loads(path.read_text()))


def load_pretrained(cls, directory, device="cpu", dtype: Optional[torch.dtype] = None):
    """``cls`` (``NuwaInfinity``) built from ``directory``'s config on the meta device, then its weights."""
    directory = Path(directory)
    cfg = load_config_json(directory)
    state = read_weights(directory)
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device: the model is never built twice
        model = cls(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"weights in {directory} do not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    if (directory / TEXT_TOKENIZER).is_dir():
        import transformers

        model.text_tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory / TEXT_TOKENIZER),
                                                                          local_files_only=True)
        model.text_tokenizer.padding_side = "right"
    return model.eval()
