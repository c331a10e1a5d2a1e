"""``nuwa-ds demo``: the whole path on procedural landscapes, on CPU, in about six minutes.

The demo is the landscape recipe's ``cpu`` preset (``nuwa_ds.recipe``: a quarter-scale world, the
``small`` model) with the demo's budgets below, then a few headline pictures:

1. **pictures**: full-view-height strips (128 x 256 px) of training worlds, and from held-out
   worlds: validation strips, real panoramas, tall views and outpainting references;
2. **tokenizer**: ``tokenizer-train`` (f8, 1024 codes) on the strips, with its reconstruction PSNR;
3. **shards**: ``prepare`` of the training and validation strips;
4. **train**: the model under DeepSpeed (one rank), validation on the held-out strips every
   ``eval_every`` steps (val bits/token printed and kept);
5. **export + generate**: panoramas 8x the training crop's width (order ``right``, through the
   rotating pool), tall views (order ``down``) and outpainting to the right of held-out landscapes;
6. **eval**: SWD and seam scores beside their floors and ceilings (noisy with this few pictures).

``--out`` (default ``outputs/demo``) gets ``panorama.png``, ``outpaint_right.png``, ``overview.png``
(the generated pictures over real held-out ones) and ``summary.json``; the recipe's folders
(``real/``, ``generated/``, ``tokenizer/``, ``run/``, ``model/``, ``report.json``) hold the rest.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.recipe import run_recipe, settings_for

DEMO_SETTINGS: dict = dict(
    # measured on 2 cores: at the cpu preset's 240 strips, 600 steps memorise them (train 4.6 vs val 6.1
    # bits/token); at 600 strips they stay together (6.2 vs 6.2), for ~15 s more pictures and shards
    train_strips=600, train_worlds=600,
    panoramas=2, panorama_size=(4096, 512),  # world px: 1024 x 128 px, 8x the 128-px training crop's width
    views=2,
    outpaint_inputs=2, outpaint_given=512, outpaint_directions=("right",),  # a crop-sized given square
    # only the orders the demo generates in (panoramas and outpainting right, views down): measured on
    # the same tokenizer and shards, 600 steps, 4 panoramas: seams 2.6 vs 3.8 with all four orders
    orders={"right": 1.0, "down": 1.0},
    # the tokenizer by steps (as the model), so a busy machine gets the same tokenizer, only later; its
    # time limit is a safety net (a time-limited stage would stop after fewer steps when cores are shared)
    tokenizer_steps=450, tokenizer_seconds=240.0, eval_every=100,
    train_seconds=240.0,  # a safety net on a busy machine (~190 s idle); the schedule is set by train_steps
)
"""The demo's changes to the recipe's ``cpu`` preset; ``--set KEY=VALUE`` changes any
``RecipeSettings`` field further."""


def demo_settings(assignments=()):
    return settings_for("cpu", demo_assignments(assignments))


def demo_assignments(extra=()) -> list[str]:
    """The recipe's ``--set`` list: the demo's settings, then ``extra``."""
    return [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in DEMO_SETTINGS.items()] + \
        list(extra)


_DEFAULTS = demo_settings()  # the recipe's settings the demo runs with, named in --help


@dataclass
class DemoCommand(ConfigBase):
    """Everything ``nuwa-ds demo`` is told; its flags are generated from these fields. Each option left
    out keeps the demo's setting (``DEMO_SETTINGS`` over the recipe's ``cpu`` preset)."""

    out: str = field(default="outputs/demo", metadata=cli(metavar="DIR"))
    """Output directory."""
    tokenizer_seconds: Optional[float] = field(default=None, metadata=cli(metavar="SECONDS", help=(
        "time budget of the tokenizer stage: loading, training, saving and its evaluation "
        f"(default {_DEFAULTS.tokenizer_seconds:g})")))
    steps: Optional[int] = field(default=None, metadata=cli(
        metavar="N", help=f"training steps of the model (default {_DEFAULTS.train_steps})"))
    seed: Optional[int] = field(default=None, metadata=cli(help=f"seed of everything (default {_DEFAULTS.seed})"))
    device: Literal["auto", "cuda", "cpu"] = "cpu"
    """cpu (what the demo is sized for), cuda, or auto (cuda when available)."""
    assignments: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True,
                                                                       metavar="KEY=VALUE"))
    """Change one recipe setting (RecipeSettings fields), e.g. train_strips=300; repeatable."""

    def recipe_assignments(self) -> list[str]:
        """The recipe's ``--set`` list: the demo's settings, then the options given, then ``--set``'s."""
        options = {"tokenizer_seconds": self.tokenizer_seconds, "train_steps": self.steps, "seed": self.seed}
        return demo_assignments([f"{k}={v}" for k, v in options.items() if v is not None] + list(self.assignments))


def add_arguments(parser):
    DemoCommand.add_flags(parser)


def run(args) -> int:
    command = DemoCommand.from_args(args)
    out = Path(command.out)
    report = run_recipe(out, "cpu", command.device, command.recipe_assignments())
    tic = time.perf_counter()
    files = headline_pictures(out, report)
    summary = summarize(report, files, seconds=time.perf_counter() - tic)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    t, val = summary["train"], summary["train"]["val_bits_per_token"]
    print(f"\ntokenizer PSNR {summary['tokenizer']['psnr_db']:.2f} dB; {t['steps']} training steps, val bits/token "
          f"{'none' if val is None else f'{val:.2f}'} (train {t['train_bits_per_token']:.2f}); "
          f"{summary['total_seconds']} s in all")
    print(f"wrote {', '.join(Path(f).name for f in files.values())} and summary.json to {out}")
    return 0


def headline_pictures(out: Path, report: dict) -> dict[str, str]:
    """``panorama.png`` and ``outpaint_right.png`` (the first generated of each) and ``overview.png``."""
    from PIL import Image

    from nuwa_ds.tokenizer import VQConfig  # lazily: the tokenizer package imports torch (start-up)

    gen, real = out / "generated", out / "real"
    files = {}
    for name, src in (("panorama", gen / "panorama" / "panorama_00000.png"),
                      ("outpaint_right", gen / "outpaint_right" / "outpaint_right_00000.png")):
        if src.is_file():
            shutil.copyfile(src, out / f"{name}.png")
            files[name] = str(out / f"{name}.png")

    def first(folder: Path, n: int) -> list:
        return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))[:n]]

    crop = report["settings"]["canvas"][2] * VQConfig.preset(report["settings"]["tokenizer_preset"]).downsample
    pano = first(gen / "panorama", 2)
    rows = [
        (f"generated panoramas ({pano[0].width} x {pano[0].height} px, {pano[0].width // crop}x the "
         f"{crop}-px training crop's width; order right)" if pano else "generated panoramas", pano),
        ("a real panorama of a held-out world", first(real / "panorama", 1)),
        ("outpainting to the right of a held-out landscape (the given square is the left third): "
         "generated | real", first(gen / "outpaint_right", 1) + first(real / "outpaint_right", 1)),
        ("tall views (order down): generated | real", first(gen / "view", 2) + first(real / "view", 2)),
    ]
    files["overview"] = str(contact_sheet(rows, out / "overview.png"))
    return files


def contact_sheet(rows: list, path: Path, gap: int = 6) -> Path:
    """Rows of (label, [PIL images]) on a white sheet, each row's images side by side or, for images
    as wide as the sheet, one above the other."""
    from PIL import Image, ImageDraw

    rows = [(label, ims) for label, ims in rows if ims]
    width = max(sum(im.width for im in ims) + gap * (len(ims) - 1) for _, ims in rows)
    width = min(width, max(im.width for _, ims in rows for im in ims))
    layout, y = [], gap
    for label, ims in rows:
        y0 = y + 14  # the label's line
        x, line_h, placed = 0, 0, []
        for im in ims:
            if x and x + im.width > width:
                x, y0 = 0, y0 + line_h + gap
                line_h = 0
            placed.append((im, x, y0))
            x += im.width + gap
            line_h = max(line_h, im.height)
        layout.append((label, y, placed))
        y = y0 + line_h + 2 * gap
    sheet = Image.new("RGB", (width, y), "white")
    draw = ImageDraw.Draw(sheet)
    for label, ly, placed in layout:
        draw.text((2, ly), label, fill=(0, 0, 0))
        for im, x, iy in placed:
            sheet.paste(im, (x, iy))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def summarize(report: dict, files: dict, seconds: float) -> dict:
    """The figures a reader looks for first (report.json beside it holds all of them)."""
    t, tok = report["train"], report["tokenizer"]
    val = t.get("val", [])
    summary = {
        "tokenizer": {"psnr_db": tok["psnr"], "codebook_usage": tok["codebook_usage"], "steps": tok["steps"]},
        "shards": dict(report["shards"]),
        "train": {"steps": t["steps"], "planned_steps": t["planned_steps"], "status": t["status"],
                  "first_loss": t["first_loss"], "final_loss": t["final_loss"],
                  "train_bits_per_token": t["final_train_bits_per_token"],
                  "val_bits_per_token": t.get("final_val_bits_per_token"),
                  "val": val, "tokens_per_s": round(t["tokens_per_s"])},
        "generate": report.get("generate", {}),
        "files": files,
    }
    ev = report.get("eval", {})
    if "panorama" in ev:
        q = ev["panorama"]
        summary["eval"] = {
            "panorama_swd": {k: round(v["mean"], 1) for k, v in q["swd"]["scores"].items()},
            "panorama_seams": {k: round(v["both"], 3) for k, v in q["seams"]["scores"].items()},
            "outpaint_right_boundary": ev.get("outpaint_right", {}).get("boundary"),
            "note": "a handful of pictures per set: SWD is noisy here (real_a is the real-vs-real floor)",
        }
    summary["stage_seconds"] = {**report.get("stage_seconds", {}), "headline pictures": round(seconds, 1)}
    summary["total_seconds"] = round(report.get("total_seconds", 0) + seconds, 1)
    return summary
