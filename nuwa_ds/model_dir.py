"""The model directory: what ``nuwa-ds export`` and ``save_pretrained`` write and ``from_pretrained``,
``nuwa-ds generate`` and ``train.init_from`` read (docs/design.md, "9. Interfaces and the model directory").

    DIR/model.safetensors      the weights (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    DIR/config.json            the model's NuwaConfig (with the text encoder's config when one is attached)
    DIR/text_tokenizer/        the caption tokenizer (Hugging Face files), when the model has a text encoder
    DIR/vq_tokenizer.json      {"vq_tokenizer": PATH}: the VQ tokenizer the tokens come from (absolute, or
                               relative to DIR); exports before it was renamed call it tokenizer.json
    DIR/vq_tokenizer/          export --copy-tokenizer: the VQ tokenizer itself (or the taming .ckpt file)
    DIR/export.json            export: provenance (checkpoint, step, dtype, ZeRO stage, world size, code version)

This module owns the format: every name above, the export from a training checkpoint of any ZeRO stage,
the weights a new run starts from, and which VQ tokenizer and text encoder go with a model. The model's
own files (weights, ``config.json``, ``text_tokenizer/``) are read and written by
``nuwa_ds/model/persistence.py``, below, so that ``NuwaInfinity`` saves and loads itself without the layers
above it; this module goes through it for them.

Consolidation is DeepSpeed's own (``zero_to_fp32`` in lazy mode): optimizer shards are memory-mapped and
each output shard is gathered and written before the next, so CPU memory stays near one output shard, not
the whole model several times over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from nuwa_ds.config import RunConfig
from nuwa_ds.model import NuwaInfinity
from nuwa_ds.model.persistence import (CONFIG, INDEX, TEXT_TOKENIZER, WEIGHTS, has_weights, load_config_json,
                                       read_weights, remove_weights, weight_files)
from nuwa_ds.training.checkpoint import RUN_CONFIG, CheckpointInfo, read_meta, resolve_resume

__all__ = ["CONFIG", "INDEX", "TEXT_TOKENIZER", "WEIGHTS", "VQ_POINTER", "LEGACY_VQ_POINTER", "VQ_COPY",
           "PROVENANCE", "DTYPES", "load_config_json", "resolve_vq_tokenizer", "write_vq_pointer",
           "find_checkpoint", "export_checkpoint", "read_initial_weights", "load_initial_weights"]

VQ_POINTER = "vq_tokenizer.json"
"""``{"vq_tokenizer": PATH}``: which VQ tokenizer the model's tokens come from."""
LEGACY_VQ_POINTER = "tokenizer.json"
"""The pointer's name before it was renamed (docs/decisions.md, "The VQ tokenizer pointer"): still read,
when it is one (it holds the ``vq_tokenizer`` key; a Hugging Face tokenizer file of that name is not)."""
VQ_COPY = "vq_tokenizer"
"""The folder ``export --copy-tokenizer`` copies a VQ tokenizer directory into."""
PROVENANCE = "export.json"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------
# Which VQ tokenizer goes with a model


def _read_vq_pointer(path: Path, legacy: bool) -> Optional[str]:
    """The reference a pointer file holds; None when there is none (a legacy-named file that is not ours)."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except ValueError:
        if legacy:
            return None
        raise ValueError(f"{path} is not JSON: expected {{\"vq_tokenizer\": PATH}}") from None
    ref = content.get("vq_tokenizer") if isinstance(content, dict) else None
    if isinstance(ref, str):
        return ref
    if legacy:
        return None
    raise ValueError(f"{path}: expected {{\"vq_tokenizer\": PATH}}, got {str(content)[:80]}")


def resolve_vq_tokenizer(model_dir, override: Optional[str] = None) -> Optional[Path]:
    """The VQ tokenizer (a directory or a taming ``.ckpt``) a model directory refers to, or ``override``;
    None when it names none."""
    if override is not None:
        return Path(override)
    directory = Path(model_dir)
    for name, legacy in ((VQ_POINTER, False), (LEGACY_VQ_POINTER, True)):
        ref = _read_vq_pointer(directory / name, legacy)
        if ref is not None:
            path = Path(ref)
            return path if path.is_absolute() else directory / path
    return None


def write_vq_pointer(out: Path, tokenizer: str, copy: bool):
    """Record (and with ``copy`` copy into ``out``) the VQ tokenizer the model reads."""
    tok_dir = Path(tokenizer)
    if not tok_dir.exists():
        raise FileNotFoundError(f"VQ tokenizer {tok_dir} (a directory or a taming .ckpt) not found")
    if copy:
        if tok_dir.is_file():
            shutil.copy2(tok_dir, out / tok_dir.name)
            ref = tok_dir.name
        else:
            shutil.copytree(tok_dir, out / VQ_COPY, dirs_exist_ok=True)
            ref = VQ_COPY
    else:
        ref = str(tok_dir.resolve())
    (out / VQ_POINTER).write_text(json.dumps({"vq_tokenizer": ref}, indent=2) + "\n")
    if _read_vq_pointer(out / LEGACY_VQ_POINTER, legacy=True) is not None:
        (out / LEGACY_VQ_POINTER).unlink()  # an earlier export's pointer under the old name: not two answers


# ----------------------------------------------------------------------------------------------
# From a training checkpoint


def find_checkpoint(path, tag: Optional[str] = None) -> CheckpointInfo:
    """The checkpoint named by ``path`` (a run directory, its ``checkpoints/``, or one ``step_N``) and
    ``tag``; the latest complete one without a tag. ValueError when there is none."""
    path = Path(path)
    if tag is not None:
        for root in (path, path / "checkpoints", path.parent):
            meta = read_meta(root / tag) if (root / tag).is_dir() else None
            if meta is not None:
                return CheckpointInfo(root / tag, int(meta["step"]), meta)
        raise ValueError(f"no complete checkpoint {tag} under {path}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return resolve_resume(str(path), path)


def read_initial_weights(path) -> dict[str, torch.Tensor]:
    """The weights in a model directory, or the fp32 weights of a (ZeRO) checkpoint of a run."""
    source = Path(path)
    if has_weights(source):
        return read_weights(source)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    info = find_checkpoint(source)
    return get_fp32_state_dict_from_zero_checkpoint(str(info.path.parent), tag=info.tag)


def load_initial_weights(model, path: str):
    """train.init_from: an exported / save_pretrained directory, or a (ZeRO) checkpoint of a run."""
    missing, unexpected = model.load_state_dict(read_initial_weights(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"train.init_from={path}: weights do not fit this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def export_checkpoint(checkpoint, out, tag: Optional[str] = None, dtype: str = "fp32", max_shard_size="5GB",
                      tokenizer: Optional[str] = None, copy_tokenizer: bool = False) -> Path:
    """Consolidate ``checkpoint`` into the model directory ``out``; returns ``out``."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    info = find_checkpoint(checkpoint, tag)
    run_cfg = RunConfig.from_json(info.path / RUN_CONFIG)
    text_path = getattr(run_cfg.train, "text_encoder_path", None)
    run_dir = info.path.parent.parent
    if text_path and not (run_dir / TEXT_TOKENIZER).is_dir() and not Path(text_path).is_dir():
        raise FileNotFoundError(f"the run trained with train.text_encoder_path={text_path}, which is gone, and "
                                f"{run_dir / TEXT_TOKENIZER} (written by runs since) is missing: restore the "
                                f"text encoder folder to export this run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_weights_and_config(out, info, run_cfg.model, text_path, dtype, max_shard_size)
    _write_text_tokenizer(out, run_dir, text_path)
    if tokenizer is not None:
        write_vq_pointer(out, tokenizer, copy_tokenizer)
    provenance = {"checkpoint": str(info.path.resolve()), "step": info.step, "dtype": dtype,
                  "zero_stage": info.meta.get("zero_stage"), "world_size": info.meta.get("world_size"),
                  "code_version": info.meta.get("code_version")}
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _write_weights_and_config(out: Path, info: CheckpointInfo, model_cfg, text_path, dtype: str, max_shard_size):
    """The checkpoint's weights (DeepSpeed's converter, then the frozen ones it leaves out) and the model's
    config (with the text encoder's, when the run attached one), checked against a meta-device build."""
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_state_dict

    remove_weights(out)
    convert_zero_checkpoint_to_state_dict(str(info.path.parent), str(out), dtype=DTYPES[dtype],
                                          max_shard_size=max_shard_size, safe_serialization=True, tag=info.tag)
    if model_cfg.text_encoder is None and text_path:
        # the run attached its text encoder at start-up: record its config so the export is self-contained
        from transformers import AutoConfig

        encoder_cfg = AutoConfig.from_pretrained(text_path, local_files_only=True).to_dict()
        model_cfg.text_encoder = {k: v for k, v in encoder_cfg.items() if k != "_name_or_path"}
    model_cfg.to_json(out / CONFIG)
    _complete_frozen(out, info, model_cfg, dtype, max_shard_size)
    _check_keys(out, model_cfg)


def _write_text_tokenizer(out: Path, run_dir: Path, text_path: Optional[str]):
    """The caption tokenizer the run trained with: the run's copy, else from ``train.text_encoder_path``."""
    shutil.rmtree(out / TEXT_TOKENIZER, ignore_errors=True)  # no files of an earlier export's tokenizer
    if (run_dir / TEXT_TOKENIZER).is_dir():
        shutil.copytree(run_dir / TEXT_TOKENIZER, out / TEXT_TOKENIZER, dirs_exist_ok=True)
    elif text_path:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(text_path, local_files_only=True).save_pretrained(str(out / TEXT_TOKENIZER))


def _complete_frozen(out: Path, info, model_cfg, dtype: str, max_shard_size):
    """Frozen parameters (a frozen text encoder) that DeepSpeed's converter left out, taken from the
    checkpoint's module states. Its ZeRO-0/1 checkpoints record no frozen parameters (it saves them only
    when gradients are partitioned, stage 2 and 3), so ``zero_to_fp32`` drops them; below stage 3 the
    module states hold every parameter whole, as the engine held it."""
    from accelerate import init_empty_weights
    from huggingface_hub import save_torch_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = weight_files(out)
    have = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            have.update(handle.keys())
    with init_empty_weights():
        model = NuwaInfinity(model_cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing = frozen - have
    states = sorted(info.path.glob("*mp_rank_00_model_states.pt"))
    if not missing or (info.meta.get("zero_stage") or 0) >= 3 or not states:
        return
    module = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    if not missing <= set(module):
        return  # _check_keys names what is missing
    state = {}
    for f in files:
        state.update(load_file(str(f)))
        f.unlink()
    (out / INDEX).unlink(missing_ok=True)
    state.update({k: module[k].to(DTYPES[dtype]).contiguous() for k in sorted(missing)})
    save_torch_state_dict(state, out, max_shard_size=max_shard_size, safe_serialization=True)


def _check_keys(out: Path, model_cfg):
    """The exported tensors are exactly the model's: same names and shapes."""
    from accelerate import init_empty_weights
    from safetensors import safe_open

    shapes = {}
    for f in weight_files(out):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    with init_empty_weights():
        expected = {k: tuple(v.shape) for k, v in NuwaInfinity(model_cfg).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"exported weights do not match the model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
