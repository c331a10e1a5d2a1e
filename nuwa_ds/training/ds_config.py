"""DeepSpeed config: locate the JSON, fill it from the train config, and check it before any engine starts.

One source of truth per number. The shipped ``nuwa_ds/ds_configs/*.json`` hold the engine's knobs
(ZeRO stage, buckets, prefetch, offload) and nothing else; the train config holds the optimisation
(batch sizes, precision, clipping, learning rate, AdamW's numbers). The resolver writes the latter
into the DeepSpeed dict. A file may state one of those numbers (a config brought from elsewhere) only
if it agrees with the train config: a contradiction is an error naming both and the fix, never a
silent override.
Everything here is pure Python on dicts: it runs before ``deepspeed`` is imported.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

SHIPPED_DS_CONFIGS = resources.files("nuwa_ds") / "ds_configs"
"""The named configs (zero1, zero2, zero3, zero3_offload): package data, found in a checkout and in an
installed wheel alike."""

# keys the resolver owns: a file may state them (for readability) but the train config decides
_BATCH_KEYS = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "train_batch_size": "train.global_batch_size",
}


@dataclass
class ResolvedDSConfig:
    config: dict
    """The dict handed to ``deepspeed.initialize`` (also written to run_dir/ds_config.json)."""
    source: str
    """Where it came from (path)."""
    stage: int
    precision: str
    """'bf16' or 'fp32'."""
    json_optimizer: bool
    """True when the file names an optimizer (DeepSpeed builds it, e.g. CPU Adam for offload)."""


def locate(name_or_path: str) -> Path:
    """A path to an existing JSON file, or a name (``zero2`` or ``zero2.json``) of a file in
    ``./ds_configs/`` (the user's own, first) or of a shipped config."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = name_or_path[:-5] if name_or_path.endswith(".json") else name_or_path
    own = Path.cwd() / "ds_configs" / f"{stem}.json"
    if own.is_file():
        return own
    shipped = SHIPPED_DS_CONFIGS / f"{stem}.json"
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name[:-5] for p in SHIPPED_DS_CONFIGS.iterdir() if p.name.endswith(".json"))
    raise ValueError(f"DeepSpeed config {name_or_path!r} not found: give a JSON file or one of {', '.join(names)}")


def load(name_or_path: str) -> tuple[dict, Path]:
    path = locate(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"DeepSpeed config {path} must be a JSON object")
    return data, path


def _find_auto(node, prefix="") -> Optional[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            found = _find_auto(value, f"{prefix}{key}.")
            if found:
                return found
    elif node == "auto":
        return prefix[:-1]
    return None


def check_batch_triad(train, world_size: int, file_config: dict) -> int:
    """micro x accumulation x world size = global batch; returns it or raises naming the number to change."""
    micro, accum = train.micro_batch_size, train.grad_accum_steps
    implied = micro * accum * world_size
    ours = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum}
    for key, train_key in _BATCH_KEYS.items():
        if key in file_config and key in ours and file_config[key] != ours[key]:
            raise ValueError(f"DeepSpeed config sets {key}={file_config[key]} but {train_key}={ours[key]}: "
                             f"remove {key} from the DeepSpeed config (nuwa-ds fills it in) or set "
                             f"{train_key}={file_config[key]}")
    for wanted, origin in ((train.global_batch_size, "train.global_batch_size"),
                           (file_config.get("train_batch_size"), "train_batch_size in the DeepSpeed config")):
        if wanted is None or wanted == implied:
            continue
        per_step = micro * world_size
        if wanted % per_step == 0:
            fix = f"set train.grad_accum_steps={wanted // per_step}"
        else:
            fix = (f"{wanted} is not a multiple of micro_batch_size x world size = {micro} x {world_size}: change "
                   f"train.micro_batch_size, the number of ranks (nodes x GPUs per node) or {origin}")
        raise ValueError(f"batch triad: {origin}={wanted} but train.micro_batch_size ({micro}) x "
                         f"train.grad_accum_steps ({accum}) x world size ({world_size}) = {implied}; {fix}")
    return implied


def _offload_devices(zero: dict) -> list[str]:
    return [zero.get(k, {}).get("device", "none") for k in ("offload_optimizer", "offload_param")
            if zero.get(k, {}).get("device", "none") not in (None, "none")]


def resolve(name_or_path: str, train, world_size: int, device_type: str) -> ResolvedDSConfig:
    """Load a DeepSpeed config and fill it from ``train`` (a TrainConfig) for ``world_size`` ranks."""
    raw, path = load(name_or_path)
    auto = _find_auto(raw)
    if auto:
        raise ValueError(f"DeepSpeed config {path}: {auto} is 'auto'; write a number (batch sizes, precision and "
                         f"clipping come from the train config)")
    if raw.get("fp16", {}).get("enabled"):
        raise ValueError(f"DeepSpeed config {path}: fp16 is not supported (bf16 needs no loss scaling); remove "
                         f"the fp16 section and set train.precision=bf16")
    if "scheduler" in raw:
        raise ValueError(f"DeepSpeed config {path}: remove 'scheduler'; the schedule is train.lr, "
                         f"train.warmup_steps and train.min_lr_ratio (warm-up + cosine)")
    cfg = copy.deepcopy(raw)
    global_batch = check_batch_triad(train, world_size, raw)
    cfg.update(train_micro_batch_size_per_gpu=train.micro_batch_size,
               gradient_accumulation_steps=train.grad_accum_steps, train_batch_size=global_batch)

    zero = cfg.setdefault("zero_optimization", {"stage": 0})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage must be 0-3, got {stage!r}")
    offload = _offload_devices(zero)
    if offload and device_type != "cuda":
        raise ValueError(f"DeepSpeed config {path} offloads to {offload[0]}, which needs a GPU (on CPU everything "
                         f"already lives in CPU memory): use --ds-config zero3")
    if "offload_param" in zero and zero["offload_param"].get("device", "none") != "none" and stage != 3:
        raise ValueError(f"DeepSpeed config {path}: offload_param needs zero_optimization.stage=3")

    precision = train.precision
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    bf16 = precision == "bf16"
    if "enabled" in raw.get("bf16", {}) and bool(raw["bf16"]["enabled"]) != bf16:
        raise ValueError(f"DeepSpeed config {path} sets bf16.enabled={str(raw['bf16']['enabled']).lower()} but "
                         f"train.precision={train.precision} gives {precision} on {device_type}: remove bf16.enabled "
                         f"from the DeepSpeed config (nuwa-ds fills it in) or set train.precision="
                         f"{'bf16' if raw['bf16']['enabled'] else 'fp32'}")
    cfg["bf16"] = {**raw.get("bf16", {}), "enabled": bf16}
    if "gradient_clipping" in raw and raw["gradient_clipping"] != train.grad_clip:
        raise ValueError(f"DeepSpeed config {path} sets gradient_clipping={raw['gradient_clipping']} but "
                         f"train.grad_clip={train.grad_clip}: remove gradient_clipping from the DeepSpeed config "
                         f"(nuwa-ds fills it in) or set train.grad_clip={raw['gradient_clipping']}")
    cfg["gradient_clipping"] = train.grad_clip

    json_optimizer = "optimizer" in cfg
    if json_optimizer:
        opt = cfg["optimizer"]
        if str(opt.get("type", "")).lower() not in ("adam", "adamw"):
            raise ValueError(f"DeepSpeed config {path}: optimizer type {opt.get('type')!r} unsupported; use AdamW "
                             f"(or remove the section: nuwa-ds then uses torch AdamW)")
        ours = {"lr": train.lr, "betas": list(train.betas), "eps": train.adam_eps, "weight_decay": train.weight_decay}
        names = {"lr": "train.lr", "betas": "train.betas", "eps": "train.adam_eps", "weight_decay": "train.weight_decay"}
        for key, value in opt.get("params", {}).items():
            if key in ours and (list(value) if isinstance(value, (list, tuple)) else value) != ours[key]:
                raise ValueError(f"DeepSpeed config {path} sets optimizer.params.{key}={value} but {names[key]}="
                                 f"{ours[key]}: remove it from the DeepSpeed config (nuwa-ds fills it in) or set "
                                 f"{names[key]}={value}")
        opt["params"] = {**opt.get("params", {}), **ours}
        if opt["type"].lower() == "adam":
            opt["params"]["adam_w_mode"] = True
    return ResolvedDSConfig(cfg, str(path), stage, precision, json_optimizer)


def check_fits_model(resolved: ResolvedDSConfig, param_numels: dict[str, int]):
    """ZeRO-3 settings against the model's parameters (shapes from a meta-device build).

    ZeRO-3 gathers one whole parameter at a time, so the live-parameter budget must hold the largest
    one (the vocabulary head / embeddings), and prefetching needs a positive bucket."""
    zero = resolved.config.get("zero_optimization", {})
    if resolved.stage != 3 or not param_numels:
        return
    name, largest = max(param_numels.items(), key=lambda kv: kv[1])
    live = zero.get("stage3_max_live_parameters", 1_000_000_000)
    if live < largest:
        raise ValueError(f"DeepSpeed config {resolved.source}: stage3_max_live_parameters={live} is smaller than the "
                         f"largest parameter ({name}, {largest} elements); raise it to at least {largest}")
    reuse = zero.get("stage3_max_reuse_distance", 1_000_000_000)
    if reuse < largest:
        raise ValueError(f"DeepSpeed config {resolved.source}: stage3_max_reuse_distance={reuse} is smaller than the "
                         f"largest parameter ({name}, {largest} elements); raise it to at least {largest}")
    if zero.get("stage3_prefetch_bucket_size", 1) <= 0:
        raise ValueError(f"DeepSpeed config {resolved.source}: stage3_prefetch_bucket_size must be > 0")
