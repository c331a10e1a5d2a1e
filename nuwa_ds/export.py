"""``nuwa-ds export CKPT_DIR OUT_DIR``: a training checkpoint (any ZeRO stage) -> a model directory
that ``NuwaInfinity.from_pretrained`` loads without DeepSpeed:

    OUT_DIR/model.safetensors            (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    OUT_DIR/config.json                  the model's NuwaConfig
    OUT_DIR/tokenizer.json               which VQ tokenizer the tokens come from (a reference), if known
    OUT_DIR/text_tokenizer/              the caption tokenizer, when the model has a text encoder
    OUT_DIR/export.json                  provenance: checkpoint, step, ZeRO stage, code version

Consolidation is DeepSpeed's own (``zero_to_fp32`` in lazy mode): optimizer shards are memory-mapped
and each output shard is gathered and written before the next, so CPU memory stays near one output
shard, not the whole model several times over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from nuwa_ds.config import RunConfig
from nuwa_ds.model import NuwaInfinity
from nuwa_ds.model.persistence import INDEX, WEIGHTS
from nuwa_ds.training.checkpoint import RUN_CONFIG, CheckpointInfo, read_meta, resolve_resume

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser):
    parser.add_argument("checkpoint", help="run directory, its checkpoints/ directory, or one step_N checkpoint")
    parser.add_argument("out", help="output model directory")
    parser.add_argument("--tag", default=None, help="checkpoint tag (step_N); default: the latest complete one")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="weight dtype of the export")
    parser.add_argument("--max-shard-size", default="5GB", help="split model.safetensors above this size")
    parser.add_argument("--tokenizer", default=None,
                        help="VQ tokenizer directory or taming .ckpt the model reads (recorded in tokenizer.json)")
    parser.add_argument("--copy-tokenizer", action="store_true", help="copy the VQ tokenizer into OUT/vq_tokenizer")


def find_checkpoint(path, tag: Optional[str] = None):
    """The CheckpointInfo named by ``path`` (+ ``tag``); ValueError when there is none."""
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


def export_checkpoint(checkpoint, out, tag: Optional[str] = None, dtype: str = "fp32", max_shard_size="5GB",
                      tokenizer: Optional[str] = None, copy_tokenizer: bool = False) -> Path:
    """Consolidate ``checkpoint`` into the model directory ``out``; returns ``out``."""
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_state_dict

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    info = find_checkpoint(checkpoint, tag)
    run_cfg = RunConfig.from_json(info.path / RUN_CONFIG)
    text_path = getattr(run_cfg.train, "text_encoder_path", None)
    source = info.path.parent.parent  # the run directory
    if text_path and not (source / "text_tokenizer").is_dir() and not Path(text_path).is_dir():
        raise FileNotFoundError(f"the run trained with train.text_encoder_path={text_path}, which is gone, and "
                                f"{source / 'text_tokenizer'} (written by runs since) is missing: restore the "
                                f"text encoder folder to export this run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / WEIGHTS, out / INDEX, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    convert_zero_checkpoint_to_state_dict(str(info.path.parent), str(out), dtype=DTYPES[dtype],
                                          max_shard_size=max_shard_size, safe_serialization=True, tag=info.tag)
    model_cfg = run_cfg.model
    if model_cfg.text_encoder is None and text_path:
        # the run attached its text encoder at start-up: record its config so the export is self-contained
        from transformers import AutoConfig

        encoder_cfg = AutoConfig.from_pretrained(text_path, local_files_only=True).to_dict()
        model_cfg.text_encoder = {k: v for k, v in encoder_cfg.items() if k != "_name_or_path"}
    model_cfg.to_json(out / "config.json")
    _complete_frozen(out, info, model_cfg, dtype, max_shard_size)
    _check_keys(out, model_cfg)

    shutil.rmtree(out / "text_tokenizer", ignore_errors=True)  # no files of an earlier export's tokenizer
    if (source / "text_tokenizer").is_dir():
        shutil.copytree(source / "text_tokenizer", out / "text_tokenizer", dirs_exist_ok=True)
    elif text_path:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(text_path, local_files_only=True).save_pretrained(
            str(out / "text_tokenizer"))

    if tokenizer is not None:
        tok_dir = Path(tokenizer)
        if not tok_dir.exists():
            raise FileNotFoundError(f"VQ tokenizer {tok_dir} (a directory or a taming .ckpt) not found")
        if copy_tokenizer:
            if tok_dir.is_file():
                shutil.copy2(tok_dir, out / tok_dir.name)
                ref = tok_dir.name
            else:
                shutil.copytree(tok_dir, out / "vq_tokenizer", dirs_exist_ok=True)
                ref = "vq_tokenizer"
        else:
            ref = str(tok_dir.resolve())
        (out / "tokenizer.json").write_text(json.dumps({"vq_tokenizer": ref}, indent=2) + "\n")
    provenance = {"checkpoint": str(info.path.resolve()), "step": info.step, "dtype": dtype,
                  "zero_stage": info.meta.get("zero_stage"), "world_size": info.meta.get("world_size"),
                  "code_version": info.meta.get("code_version")}
    (out / "export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _exported_files(out: Path) -> list[Path]:
    if (out / WEIGHTS).is_file():
        return [out / WEIGHTS]
    return [out / f for f in sorted(set(json.loads((out / INDEX).read_text())["weight_map"].values()))]


def _complete_frozen(out: Path, info, model_cfg, dtype: str, max_shard_size):
    """Frozen parameters (a frozen text encoder) that DeepSpeed's converter left out, taken from the
    checkpoint's module states. Its ZeRO-0/1 checkpoints record no frozen parameters (it saves them only
    when gradients are partitioned, stage 2 and 3), so ``zero_to_fp32`` drops them; below stage 3 the
    module states hold every parameter whole, as the engine held it."""
    from accelerate import init_empty_weights
    from huggingface_hub import save_torch_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = _exported_files(out)
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

    files = _exported_files(out)
    shapes = {}
    for f in files:
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


def resolve_vq_tokenizer(model_dir, override: Optional[str] = None) -> Optional[Path]:
    """The VQ tokenizer directory a model directory refers to (or ``override``)."""
    if override is not None:
        return Path(override)
    ref = Path(model_dir) / "tokenizer.json"
    if not ref.is_file():
        return None
    path = Path(json.loads(ref.read_text())["vq_tokenizer"])
    return path if path.is_absolute() else Path(model_dir) / path


def run(args) -> int:
    out = export_checkpoint(args.checkpoint, args.out, tag=args.tag, dtype=args.dtype,
                            max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                            copy_tokenizer=args.copy_tokenizer)
    meta = json.loads((out / "export.json").read_text())
    print(f"exported step {meta['step']} (ZeRO-{meta['zero_stage']}, {meta['world_size']} ranks) to {out}")
    return 0
