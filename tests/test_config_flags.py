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
    """GenerateOptions as the old namespace's flat names (the sampling fields at the top)."""
    data = options.to_dict()
    sampling = data.pop("sampling")
    sampling.pop("cuda_graph")  # a new flag; the command captured CUDA graphs before too
    return {**data, **sampling}


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

    old = vars(old_generate_parser().parse_args(argv))
    new = GenerateOptions.from_args(new_generate_parser().parse_args(argv))
    assert flat(new) == old
    assert new.sampling.cuda_graph is True


def test_generate_keeps_every_flag_and_choice():
    old, new = old_generate_parser(), new_generate_parser()
    for flag, action in old._option_string_actions.items():
        assert flag in new._option_string_actions, flag
        assert new._option_string_actions[flag].choices == action.choices, flag
    for argv in (["m", "--wavefront", "--sequential"], ["m", "--task", "paint"], ["m", "--frames", "x"]):
        with pytest.raises(SystemExit):
            new.parse_args(argv)
