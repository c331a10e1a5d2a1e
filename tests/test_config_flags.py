"""Command-line flags generated from a dataclass's fields (``nuwa_ds.config_base.add_flags``), and the
commands whose options moved onto them: every flag the hand-written parser had still exists and parses
every command line to the same values."""

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from nuwa_ds.config_base import ConfigBase, ConfigError, cli


@dataclass
class Inner(ConfigBase):
    rate: float = 1.0
    """A rate of 100%."""
    fast: bool = field(default=False, metadata=cli(negative=("--slow", "Go slowly.")))
    """Go fast."""


@dataclass
class Toy(ConfigBase):
    path: str = field(metadata=cli(positional=True))
    """Where."""
    out: str
    """Required: no default."""
    count: Optional[int] = None
    """How many (default: all)."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    shape: tuple[int, int, int] = (1, 2, 3)
    """Three sizes."""
    sizes: tuple[int, ...] = (4,)
    """Any number of sizes."""
    progress: Optional[bool] = None
    """A bar."""
    limit: Optional[int] = field(default=5, metadata=cli(type=lambda t: None if t == "all" else int(t),
                                                         metavar="N|all"))
    """A number or 'all'."""
    hidden: int = field(default=7, metadata=cli(skip=True))
    inner: Inner = field(default_factory=lambda: Inner(fast=True))
    source: Optional[str] = field(default=None, metadata=cli(one_of="source"))
    """One source."""
    other: Optional[str] = field(default=None, metadata=cli(one_of="source", flag="--other-source"))
    """The other source."""

    def validate(self):
        if self.count is not None and self.count < 0:
            raise ConfigError("count must be >= 0")


def parse(argv):
    parser = argparse.ArgumentParser()
    Toy.add_flags(parser)
    return parser, Toy.from_args(parser.parse_args(argv))


def test_flags_follow_the_fields():
    parser, toy = parse(["p", "--out", "o", "--source", "s"])
    assert toy == Toy(path="p", out="o", source="s")  # every default is the dataclass's
    assert toy.inner.fast is True  # a nested dataclass's defaults come from its default instance
    _, toy = parse(["p", "--out", "o", "--other-source", "t", "--count", "3", "--mode", "b", "--shape", "5", "6", "7",
                    "--sizes", "8", "9", "--no-progress", "--limit", "all", "--rate", "0.5", "--slow"])
    assert (toy.count, toy.mode, toy.shape, toy.sizes, toy.progress, toy.limit) == (3, "b", (5, 6, 7), (8, 9), False,
                                                                                      None)
    assert toy.inner == Inner(rate=0.5, fast=False) and toy.other == "t" and toy.hidden == 7
    text = parser.format_help()
    assert "How many (default: all)." in text and "A rate of 100%." in text and "N|all" in text
    assert "--hidden" not in text and "--fast" in text and "--progress, --no-progress" in text


@pytest.mark.parametrize("argv", [
    ["p", "--source", "s"],  # --out is required
    ["p", "--out", "o"],  # one of --source / --other-source is required
    ["p", "--out", "o", "--source", "s", "--other-source", "t"],  # not both
    ["p", "--out", "o", "--source", "s", "--mode", "c"],  # not a choice
    ["p", "--out", "o", "--source", "s", "--shape", "1", "2"],  # three values
    ["p", "--out", "o", "--source", "s", "--fast", "--slow"],  # a pair is exclusive
])
def test_argparse_refuses(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2


def test_the_dataclass_validates_what_was_parsed():
    with pytest.raises(ConfigError, match="count must be >= 0"):
        parse(["p", "--out", "o", "--source", "s", "--count", "-1"])


# ----------------------------------------------------------------------------------------------
# nuwa-ds generate: the parser written by hand before its options became GenerateOptions (frozen here)


def old_generate_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--task", default="unconditional",
                        choices=("unconditional", "text2image", "outpaint", "animate", "text2video"))
    parser.add_argument("--size", default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--direction", default="right", choices=("left", "right", "up", "down"))
    parser.add_argument("--input", default=None)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--order", default=None, choices=("down", "up", "right", "left"))
    parser.add_argument("--top", type=int, default=0, metavar="PX")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--cfg-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--wavefront", dest="wavefront", action="store_true", default=True)
    mode.add_argument("--sequential", dest="wavefront", action="store_false")
    parser.add_argument("--out", default="outputs/generated.png")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--max-memory-gb", type=float, default=None)
    parser.add_argument("--save-tokens", action="store_true")
    return parser


def new_generate_parser():
    from nuwa_ds.generate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def flat(options) -> dict:
    """A command's options under the old namespace's flat names (nested sections' fields at the top)."""
    out = {}
    for key, value in options.to_dict().items():
        out.update(value if isinstance(value, dict) else {key: value})
    return out


def same_parse(old_parser, new_parser, command, argv, new_fields: dict, renamed: dict | None = None):
    """``argv`` gives the same values under both parsers; fields without an old flag keep ``new_fields``.
    An old ``--no-x`` switch is compared as what its command made of it, ``x = not no_x``; ``renamed`` maps
    an old namespace name to its field's (the same flag, e.g. bench's ``--set``: ``set`` -> ``assignments``)."""
    old = vars(old_parser.parse_args(argv))
    for old_name, name in (renamed or {}).items():
        old[name] = old.pop(old_name)
    new = flat(command.from_args(new_parser.parse_args(argv)))
    for key in [k for k in old if k.startswith("no_") and k[3:] in new]:
        old[key[3:]] = not old.pop(key)
    assert {k: new.pop(k) for k in new_fields} == new_fields
    assert new == old


@pytest.mark.parametrize("argv", [
    ["m"],
    ["m", "--task", "text2image", "--prompt", "a cup", "--cfg-scale", "2.0", "--size", "64x96", "--seed", "3"],
    ["m", "--task", "outpaint", "--input", "x.png", "--direction", "left", "--size", "160x64", "--batch", "2",
     "--save-tokens", "--out", "o/x.png"],
    ["m", "--task", "animate", "--input", "x.png", "--frames", "3", "--fps", "4", "--out", "a.gif"],
    ["m", "--sequential", "--order", "down", "--max-memory-gb", "0.002", "--top", "448"],
    ["m", "--wavefront", "--temperature", "0", "--top-k", "50", "--top-p", "0.9", "--device", "cpu",
     "--dtype", "fp32", "--tokenizer", "vq"],
])
def test_generate_parses_as_before(argv):
    from nuwa_ds.generate import GenerateOptions

    # --cuda-graph is new: the command captured CUDA graphs before too; --batch-invariant is new (off by default)
    same_parse(old_generate_parser(), new_generate_parser(), GenerateOptions, argv,
               {"cuda_graph": True, "batch_invariant": False})


def keeps_every_flag(old, new):
    def choices(action):  # a list or a tuple: the same choices to argparse
        return None if action.choices is None else list(action.choices)

    for flag, action in old._option_string_actions.items():
        assert flag in new._option_string_actions, flag
        assert choices(new._option_string_actions[flag]) == choices(action), flag
        assert new._option_string_actions[flag].required == action.required, flag


def test_generate_keeps_every_flag_and_choice():
    new = new_generate_parser()
    keeps_every_flag(old_generate_parser(), new)
    for argv in (["m", "--wavefront", "--sequential"], ["m", "--task", "paint"], ["m", "--frames", "x"]):
        with pytest.raises(SystemExit):
            new.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# nuwa-ds tokenizer-train (TokenizerTrainCommand + TrainOptions) and nuwa-ds prepare (PrepareCommand +
# PrepareOptions): the hand-written parsers, frozen


def old_tokenizer_train_parser():
    from nuwa_ds.tokenizer.train import _eval_count

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default="demo")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="demo-f8")
    parser.add_argument("--codebook-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--save-every", type=int, default=0, metavar="STEPS")
    parser.add_argument("--save-every-seconds", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--eval-pictures", type=_eval_count, default=64, metavar="N|all")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--data-workers", type=int, default=None, metavar="N")
    parser.add_argument("--picture-cache-mb", type=float, default=1024.0, metavar="MB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return parser


def old_prepare_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tokenizer")
    group.add_argument("--taming-ckpt")
    parser.add_argument("--taming-config", default=None)
    parser.add_argument("--captions", default=None)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--max-aspect", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--clip-frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--shard-maxcount", type=int, default=5000)
    parser.add_argument("--shard-maxsize", type=float, default=1e9)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def new_parser(module: str):
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    return parser


@pytest.mark.parametrize("argv", [
    ["--out", "t"],
    ["--out", "t", "--images", "pics", "--preset", "taming-f16-1024", "--codebook-size", "256", "--steps", "20",
     "--batch-size", "4", "--crop", "32", "--lr", "2e-3", "--time-limit", "60", "--seed", "1", "--device", "cpu"],
    ["--out", "t", "--save-every", "5", "--save-every-seconds", "0", "--eval-pictures", "all", "--eval-batch-size",
     "2", "--data-workers", "1", "--picture-cache-mb", "0", "--no-progress"],
    ["--eval-pictures", "8", "--progress", "--out", "t"],
])
def test_tokenizer_train_parses_as_before(argv):
    from nuwa_ds.tokenizer.train import TokenizerTrainCommand, TrainOptions

    # the flags that are new keep TrainOptions' defaults, which the command used before too
    defaults = TrainOptions()
    new_fields = {k: getattr(defaults, k) for k in ("beta", "ema_decay", "ae_warmup_steps", "restart_threshold",
                                                     "log_every")}
    same_parse(old_tokenizer_train_parser(), new_parser("nuwa_ds.tokenizer.train"), TokenizerTrainCommand, argv,
               new_fields)


def test_tokenizer_train_keeps_every_flag():
    keeps_every_flag(old_tokenizer_train_parser(), new_parser("nuwa_ds.tokenizer.train"))


@pytest.mark.parametrize("argv", [
    ["a", "--out", "o", "--tokenizer", "t"],
    ["a", "b", "--out", "o", "--taming-ckpt", "x.ckpt", "--taming-config", "taming-f16-1024", "--captions", "c.csv",
     "--image-size", "0", "--patch-size", "8", "--max-aspect", "4", "--fps", "2", "--clip-frames", "4",
     "--batch-size", "8", "--workers", "1", "--shard-maxcount", "10", "--shard-maxsize", "1e6", "--prefix", "p",
     "--val-fraction", "0.1", "--device", "cpu", "--overwrite", "--no-progress"],
])
def test_prepare_parses_as_before(argv):
    from data_pipelines.prepare import PrepareCommand, PrepareOptions

    # --video-ahead-pixels is a new flag, with the old default
    same_parse(old_prepare_parser(), new_parser("data_pipelines.prepare"), PrepareCommand, argv,
               {"video_ahead_pixels": PrepareOptions.video_ahead_pixels})


def test_prepare_keeps_every_flag():
    keeps_every_flag(old_prepare_parser(), new_parser("data_pipelines.prepare"))
    with pytest.raises(SystemExit):  # one tokenizer, not both
        new_parser("data_pipelines.prepare").parse_args(["a", "--out", "o", "--tokenizer", "t", "--taming-ckpt", "c"])


# nuwa-ds export (ExportCommand) and nuwa-ds text-encoder (TextEncoderCommand): the hand-written parsers, frozen


def old_export_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--copy-tokenizer", action="store_true")
    return parser


def old_text_encoder_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--mlm-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    return parser


@pytest.mark.parametrize("argv", [
    ["run", "model"],
    ["run/checkpoints/step_00000004", "model", "--tag", "step_00000004", "--dtype", "bf16", "--max-shard-size", "1MB",
     "--tokenizer", "tok", "--copy-tokenizer"],
])
def test_export_parses_as_before(argv):
    from nuwa_ds.export import ExportCommand

    same_parse(old_export_parser(), new_parser("nuwa_ds.export"), ExportCommand, argv, {})
    keeps_every_flag(old_export_parser(), new_parser("nuwa_ds.export"))


@pytest.mark.parametrize("argv", [
    ["--captions", "c.txt", "--out", "te"],
    ["--out", "te", "--captions", "a.txt", "b.csv", "--preset", "small", "--vocab-size", "500", "--max-length", "32",
     "--mlm-steps", "0", "--batch-size", "8", "--lr", "2e-3", "--threads", "2", "--seed", "4", "--overwrite"],
])
def test_text_encoder_parses_as_before(argv):
    from nuwa_ds.text_encoder import TextEncoderCommand

    same_parse(old_text_encoder_parser(), new_parser("nuwa_ds.text_encoder"), TextEncoderCommand, argv, {})
    keeps_every_flag(old_text_encoder_parser(), new_parser("nuwa_ds.text_encoder"))


def old_eval_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", required=True)
    parser.add_argument("--fake", required=True)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--fid-method", choices=("eigh", "sqrtm"), default="eigh")
    parser.add_argument("--save-stats", default=None)
    parser.add_argument("--swd", action="store_true")
    parser.add_argument("--seams", action="store_true")
    parser.add_argument("--recon", default=None)
    parser.add_argument("--random-tokens", default=None)
    parser.add_argument("--seam-block-size", type=int, default=None)
    parser.add_argument("--boundary-column", type=int, action="append", default=[])
    parser.add_argument("--boundary-row", type=int, action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swd-descriptors", type=int, default=128)
    parser.add_argument("--swd-max-descriptors", type=int, default=65536)
    parser.add_argument("--video", action="store_true")
    parser.add_argument("--paired", action="store_true")
    parser.add_argument("--video-descriptors", type=int, default=2048)
    parser.add_argument("--true-dx", type=float, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true")
    return parser


@pytest.mark.parametrize("argv", [
    ["--real", "r", "--fake", "f"],
    ["--real", "r.npz", "--fake", "f", "--inception-weights", "w.pth", "--block-size", "256", "--batch-size", "8",
     "--device", "cpu", "--workers", "2", "--fid-method", "sqrtm", "--save-stats", "s", "--out", "o.json", "--quiet"],
    ["--real", "r", "--fake", "f", "--swd", "--seams", "--recon", "c", "--random-tokens", "t",
     "--seam-block-size", "32", "--boundary-column", "64", "--boundary-column", "128", "--boundary-row", "8",
     "--seed", "3", "--swd-descriptors", "16", "--swd-max-descriptors", "100"],
    ["--real", "r", "--fake", "f", "--video", "--paired", "--video-descriptors", "64", "--true-dx", "-1.5"],
])
def test_eval_parses_as_before(argv):
    from nuwa_ds.evaluate import EvalCommand

    same_parse(old_eval_parser(), new_parser("nuwa_ds.evaluate"), EvalCommand, argv, {})
    keeps_every_flag(old_eval_parser(), new_parser("nuwa_ds.evaluate"))
    defaults = EvalCommand.from_args(new_parser("nuwa_ds.evaluate").parse_args(["--real", "r", "--fake", "f"]))
    assert defaults.quality.boundary_column == [] and defaults.quality.boundary_row == []  # not shared lists


def old_landscapes_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--worlds", type=int, default=256)
    parser.add_argument("--world-seed-base", type=int, default=None)
    parser.add_argument("--y", default="random")
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


@pytest.mark.parametrize("argv", [
    ["--out", "o"],
    ["--out", "o", "--count", "3", "--size", "64x32", "--split", "val", "--worlds", "2", "--world-seed-base", "7",
     "--y", "100", "--format", "jpg", "--seed", "1", "--no-progress"],
])
def test_landscapes_parses_as_before(argv):
    from data_pipelines.landscapes import LandscapesCommand

    same_parse(old_landscapes_parser(), new_parser("data_pipelines.landscapes"), LandscapesCommand, argv, {})
    keeps_every_flag(old_landscapes_parser(), new_parser("data_pipelines.landscapes"))


@pytest.mark.parametrize("argv,message", [
    (["--count", "0"], "--count must be positive"), (["--worlds", "0"], "--worlds must be positive"),
    (["--y", "top"], "--y must be an integer or 'random'"), (["--size", "64"], "WIDTHxHEIGHT"),
    (["--worlds", "2000000"], "explicit --world-seed-base"),
])
def test_landscapes_refuses_bad_values(argv, message):
    from data_pipelines.landscapes import LandscapesCommand

    with pytest.raises(ValueError, match=message):
        LandscapesCommand.from_args(new_parser("data_pipelines.landscapes").parse_args(["--out", "o", *argv]))


def old_landscape_videos_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--window", default="512x512")
    parser.add_argument("--format", default="mp4")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world-seed-base", type=int, default=None)
    parser.add_argument("--caption-variants", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


@pytest.mark.parametrize("argv", [
    ["--out", "o"],
    ["--out", "o", "--count", "3", "--frames", "4", "--split", "val", "--size", "64x64", "--window", "256x256",
     "--format", "mp4,gif", "--fps", "4", "--seed", "2", "--world-seed-base", "9", "--caption-variants", "3",
     "--workers", "2", "--no-progress"],
])
def test_landscape_videos_parses_as_before(argv):
    from data_pipelines.landscape_video import LandscapeVideosCommand

    parser = new_parser("data_pipelines.landscape_video")
    same_parse(old_landscape_videos_parser(), parser, LandscapeVideosCommand, argv, {})
    keeps_every_flag(old_landscape_videos_parser(), parser)
    with pytest.raises(ValueError, match="--fps must be > 0"):
        LandscapeVideosCommand.from_args(parser.parse_args(["--out", "o", "--fps", "0"]))


# nuwa-ds bench (BenchCommand), nuwa-ds recipe (RecipeCommand) and nuwa-ds demo (DemoCommand): the hand-written
# parsers, frozen (their computed choices spelled out: SUITES + "all", RECIPES' and PRESETS' names), with what
# the old run() made of the namespace where that moved onto the dataclass


def old_bench_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("suite", choices=("train", "kernels", "decode", "generate", "data", "all"))
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--preset", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare-baseline", action="store_true")
    parser.add_argument("--zero", default="2,3")
    parser.add_argument("--micro-batch-size", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def old_bench_options(args, device):
    import json

    from nuwa_ds.bench import BenchOptions

    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return BenchOptions(device=device, preset=args.preset or ("nuwa-350m" if device == "cuda" else "tiny"),
                        quick=args.quick or device == "cpu", compare_baseline=args.compare_baseline,
                        zero_stages=tuple(int(z) for z in str(args.zero).split(",") if z),
                        micro_batch_size=args.micro_batch_size, steps=args.steps, extra=extra)


def old_recipe_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", choices=["landscapes", "landscape-videos"])
    parser.add_argument("--preset", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    return parser


def old_demo_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--tokenizer-seconds", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    return parser


def old_demo_assignments(args):
    from nuwa_ds.demo import demo_assignments

    options = {"tokenizer_seconds": args.tokenizer_seconds, "train_steps": args.steps, "seed": args.seed}
    extra = [f"{k}={v}" for k, v in options.items() if v is not None] + list(args.assignments)
    return demo_assignments(extra)


@pytest.mark.parametrize("argv", [
    ["train"],
    ["all", "--device", "cpu", "--preset", "tiny", "--out", "r/bench.json", "--quick", "--compare-baseline",
     "--zero", "3", "--micro-batch-size", "2", "--steps", "5"],
    ["kernels", "--set", "seq=128", "--set", "dtype=bf16", "--set", "sizes=[1, 2]", "--set", "note=a=b"],
    ["--quick", "--device", "cuda", "decode", "--zero", ""],
    ["data", "--zero", "2,3,", "--set", "workers=0"],
    ["generate", "--device", "auto", "--preset", "nuwa-350m"],
])
def test_bench_parses_as_before(argv):
    from nuwa_ds.bench import BenchCommand

    old_parser, parser = old_bench_parser(), new_parser("nuwa_ds.bench")
    same_parse(old_parser, parser, BenchCommand, argv, {}, renamed={"set": "assignments"})
    command = BenchCommand.from_args(parser.parse_args(argv))
    for device in ("cuda", "cpu"):  # what the suites get, as run() made it before
        assert command.options(device) == old_bench_options(old_parser.parse_args(argv), device)
    keeps_every_flag(old_parser, parser)


@pytest.mark.parametrize("argv", [
    ["landscapes"],
    ["landscape-videos", "--preset", "cpu", "--out", "o", "--device", "cpu", "--set", "train_steps=5",
     "--set", "outpaint_directions=[\"right\"]"],
    ["--set", "scale=0.5", "--device", "cuda", "landscapes", "--preset", "gpu"],
])
def test_recipe_parses_as_before(argv):
    from nuwa_ds.recipe import RecipeCommand

    # --from-stage came later (the video recipe's resume): no old flag, None unless given
    same_parse(old_recipe_parser(), new_parser("nuwa_ds.recipe"), RecipeCommand, argv, {"from_stage": None})
    keeps_every_flag(old_recipe_parser(), new_parser("nuwa_ds.recipe"))


@pytest.mark.parametrize("argv", [
    [],
    ["--out", "o", "--tokenizer-seconds", "30", "--steps", "10", "--seed", "3", "--device", "auto",
     "--set", "train_strips=300", "--set", "views=1"],
    ["--device", "cuda", "--seed", "0", "--set", "orders={\"right\": 1.0}"],
    ["--tokenizer-seconds", "1e2", "--steps", "0"],
])
def test_demo_parses_as_before(argv):
    from nuwa_ds.demo import DemoCommand

    old_parser, parser = old_demo_parser(), new_parser("nuwa_ds.demo")
    same_parse(old_parser, parser, DemoCommand, argv, {})
    keeps_every_flag(old_parser, parser)
    command = DemoCommand.from_args(parser.parse_args(argv))  # the recipe's --set list, as run() made it before
    assert command.recipe_assignments() == old_demo_assignments(old_parser.parse_args(argv))


def test_repeated_set_lists_are_not_shared():
    from nuwa_ds.bench import BenchCommand
    from nuwa_ds.demo import DemoCommand
    from nuwa_ds.recipe import RecipeCommand

    for module, command, argv in (("nuwa_ds.bench", BenchCommand, ["train"]), ("nuwa_ds.demo", DemoCommand, []),
                                  ("nuwa_ds.recipe", RecipeCommand, ["landscapes"])):
        parser = new_parser(module)
        assert command.from_args(parser.parse_args([*argv, "--set", "a=1"])).assignments == ["a=1"]
        assert command.from_args(parser.parse_args(argv)).assignments == []


@pytest.mark.parametrize("module,argv,message", [
    ("nuwa_ds.bench", [], "the following arguments are required: suite"),
    ("nuwa_ds.bench", ["gpu"], "argument suite: invalid choice: 'gpu'"),
    ("nuwa_ds.bench", ["train", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ("nuwa_ds.bench", ["train", "--steps", "x"], "argument --steps: invalid int value: 'x'"),
    ("nuwa_ds.bench", ["train", "--set"], "argument --set: expected one argument"),
    ("nuwa_ds.recipe", [], "the following arguments are required: recipe"),
    ("nuwa_ds.recipe", ["pictures"], "argument recipe: invalid choice: 'pictures'"),
    ("nuwa_ds.recipe", ["landscapes", "--preset", "big"], "argument --preset: invalid choice: 'big'"),
    ("nuwa_ds.demo", ["--steps", "1.5"], "argument --steps: invalid int value: '1.5'"),
    ("nuwa_ds.demo", ["--out"], "argument --out: expected one argument"),
    ("nuwa_ds.demo", ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_bench_recipe_demo_refuse_bad_input(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        new_parser(module).parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", "--zero", "2,x"], "--zero '2,x': expected comma-separated ZeRO stages"),
    (["kernels", "--set", "seq"], "--set 'seq': expected KEY=VALUE"),
])
def test_bench_refuses_bad_values_before_importing_torch(argv, message, capsys):
    import sys

    from nuwa_ds.cli import main

    had_torch = "torch" in sys.modules
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
    assert had_torch or "torch" not in sys.modules
