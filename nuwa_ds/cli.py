"""``nuwa-ds``: one console script, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their command runs, so ``nuwa-ds --help`` is instant and a command's heavy imports
(DeepSpeed, WebDataset, PyAV) never slow the others down.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from nuwa_ds import __version__
from nuwa_ds.preemption import block_stop_signals

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("nuwa_ds.demo", "the whole path on procedural landscapes (the recipe's cpu preset), on CPU, in ~6 minutes"),
    "tokenizer-train": ("nuwa_ds.tokenizer.train", "train a VQ tokenizer (for users without a pretrained VQGAN)"),
    "prepare": ("data_pipelines.prepare", "images / videos (+ captions) -> VQGAN tokens -> WebDataset shards"),
    "landscapes": ("data_pipelines.landscapes",
                   "procedural landscape pictures of any size (training data and held-out references)"),
    "landscape-videos": ("data_pipelines.landscape_video",
                         "procedural landscape videos (pans, drifting clouds, moving suns) with captions and ground truth"),
    "text-encoder": ("nuwa_ds.text_encoder",
                     "a small BERT text encoder + tokenizer trained on your captions (no download)"),
    "train": ("nuwa_ds.train", "DeepSpeed training; under python, torchrun, deepspeed or srun"),
    "export": ("nuwa_ds.export", "ZeRO checkpoint -> model.safetensors + config.json"),
    "generate": ("nuwa_ds.generate", "images / videos of any size, every task, PNG / GIF / MP4 out"),
    "bench": ("nuwa_ds.bench", "throughput: training, kernels vs peers, decode, generation, data"),
    "recipe": ("nuwa_ds.recipe", "data -> tokenizer -> shards -> training -> generation -> eval, on landscape pictures or videos"),
    "eval": ("nuwa_ds.evaluate", "FID / Block-FID with user-supplied Inception weights; SWD and seam scores without"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<16} {desc}" for name, (_, desc) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="nuwa-ds",
        description="NUWA-Infinity on DeepSpeed: train, export and generate arbitrarily large images and videos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\nEach command has --help.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # before the command's heavy imports: `--time-limit`s count from here
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose one of {', '.join(COMMANDS)}")
    module_name, desc = COMMANDS[name]
    if name == "train":  # before torch is imported: every thread of the process inherits the mask
        block_stop_signals()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"nuwa-ds {name}: this command is not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"nuwa-ds {name}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_intermixed_args(rest)  # options may follow positionals (key=value overrides)
    args.command_started = started
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # bad input: a clear message, no traceback (NUWA_DEBUG=1 shows it)
        if os.environ.get("NUWA_DEBUG"):
            raise
        print(f"nuwa-ds {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
