"""``nuwa-ds export CKPT_DIR OUT_DIR``: a training checkpoint (any ZeRO stage) -> a model directory
that ``NuwaInfinity.from_pretrained`` loads without DeepSpeed. The format and the export itself are
``nuwa_ds/model_dir.py``'s (weights, ``config.json``, ``text_tokenizer/``, ``vq_tokenizer.json``,
``export.json``); this is its command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Optional

from nuwa_ds.config_base import ConfigBase, cli
# export_checkpoint, find_checkpoint and resolve_vq_tokenizer lived here before nuwa_ds.model_dir owned the
# format: re-exported for code that imports them from here
from nuwa_ds.model_dir import (DTYPES, PROVENANCE, VQ_COPY, VQ_POINTER, export_checkpoint,  # noqa: F401
                               find_checkpoint, resolve_vq_tokenizer)


@dataclass
class ExportCommand(ConfigBase):
    """Everything ``nuwa-ds export`` is told; its flags are generated from these fields."""

    checkpoint: str = field(metadata=cli(positional=True))
    """Run directory, its checkpoints/ directory, or one step_N checkpoint."""
    out: str = field(metadata=cli(positional=True))
    """Output model directory."""
    tag: Optional[str] = None
    """Checkpoint tag (step_N); default: the latest complete one."""
    dtype: Literal[tuple(DTYPES)] = "fp32"
    """Weight dtype of the export."""
    max_shard_size: str = "5GB"
    """Split model.safetensors above this size."""
    tokenizer: Optional[str] = field(default=None, metadata=cli(
        help=f"VQ tokenizer directory or taming .ckpt the model reads (recorded in {VQ_POINTER})"))
    copy_tokenizer: bool = field(default=False, metadata=cli(help=f"copy the VQ tokenizer into OUT/{VQ_COPY}"))


def add_arguments(parser):
    ExportCommand.add_flags(parser)


def run(args) -> int:
    command = ExportCommand.from_args(args)
    out = export_checkpoint(command.checkpoint, command.out, tag=command.tag, dtype=command.dtype,
                            max_shard_size=command.max_shard_size, tokenizer=command.tokenizer,
                            copy_tokenizer=command.copy_tokenizer)
    meta = json.loads((out / PROVENANCE).read_text())
    print(f"exported step {meta['step']} (ZeRO-{meta['zero_stage']}, {meta['world_size']} ranks) to {out}")
    return 0
