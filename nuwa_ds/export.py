"""``nuwa-ds export CKPT_DIR OUT_DIR``: a training checkpoint (any ZeRO stage) -> a model directory
that ``NuwaInfinity.from_pretrained`` loads without DeepSpeed. The format and the export itself are
``nuwa_ds/model_dir.py``'s (weights, ``config.json``, ``text_tokenizer/``, ``vq_tokenizer.json``,
``export.json``); this is its command line.
"""

from __future__ import annotations

import json

# export_checkpoint, find_checkpoint and resolve_vq_tokenizer lived here before nuwa_ds.model_dir owned the
# format: re-exported for code that imports them from here
from nuwa_ds.model_dir import (DTYPES, PROVENANCE, VQ_COPY, VQ_POINTER, export_checkpoint,  # noqa: F401
                               find_checkpoint, resolve_vq_tokenizer)


def add_arguments(parser):
    parser.add_argument("checkpoint", help="run directory, its checkpoints/ directory, or one step_N checkpoint")
    parser.add_argument("out", help="output model directory")
    parser.add_argument("--tag", default=None, help="checkpoint tag (step_N); default: the latest complete one")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="weight dtype of the export")
    parser.add_argument("--max-shard-size", default="5GB", help="split model.safetensors above this size")
    parser.add_argument("--tokenizer", default=None,
                        help=f"VQ tokenizer directory or taming .ckpt the model reads (recorded in {VQ_POINTER})")
    parser.add_argument("--copy-tokenizer", action="store_true", help=f"copy the VQ tokenizer into OUT/{VQ_COPY}")


def run(args) -> int:
    out = export_checkpoint(args.checkpoint, args.out, tag=args.tag, dtype=args.dtype,
                            max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                            copy_tokenizer=args.copy_tokenizer)
    meta = json.loads((out / PROVENANCE).read_text())
    print(f"exported step {meta['step']} (ZeRO-{meta['zero_stage']}, {meta['world_size']} ranks) to {out}")
    return 0
