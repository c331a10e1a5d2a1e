"""``nuwa-ds recipe landscapes``: the whole path on procedural landscapes, measured against held-out worlds.

    nuwa-ds recipe landscapes --preset gpu --out outputs/recipe      # one GPU, about 10 minutes
    nuwa-ds recipe landscapes --preset cpu --out outputs/recipe-cpu  # 2 CPU cores, minutes (nuwa-ds demo)

Stages (each with a progress bar, each writing into ``--out``):

1. **pictures**: full-view-height strips of training worlds (``data_pipelines.landscapes``), and from
   *other* worlds (the held-out split): validation strips, panoramas 16x the training crop's width,
   whole views 4x its height, and outpainting references;
2. **tokenizer**: ``tokenizer-train`` on the training strips (its reconstruction PSNR is the ceiling
   of every picture);
3. **shards**: ``prepare`` of the training and validation strips at native size, so each sample is a
   whole strip and the loader's crops know their row in the view (``rows``);
4. **train**: DeepSpeed, one rank, with validation on the held-out strips;
5. **export**, then **generate** in-process: panoramas (order right), tall views (order down) and
   outpainting in all four directions from held-out pictures;
6. **eval**: SWD and seam scores (``nuwa_ds.metrics.quality``) of every generated set against the
   held-out real set of the same size, beside the floors and ceilings measured the same way (real vs
   real, VQ reconstructions, shuffled real blocks, blocky noise, decoded random tokens), the row
   profile distance (does a tall canvas keep the sky on top and the water below), and the boundary
   scores of outpainting. Everything goes to ``report.json``.

A preset fixes every size; ``--set key=value`` changes one (``--set train_steps=500``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from data_pipelines.landscapes import DEFAULT_WORLD_SEED_BASE, VIEW_HEIGHT, World
from nuwa_ds.config import RunConfig
from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.recipe_common import Stage, apply_assignments, write_report as _write_report
from nuwa_ds.video_recipe import run_recipe as run_video_recipe

# Modules that import torch (the tokenizer, the model, training, export, the metrics, the loader) are imported
# in the stages that use them: `nuwa-ds recipe --help` and `nuwa-ds demo` start at once, and the worker
# processes that render pictures (and the spawned SWD workers, until they need it) never load torch.

DIRECTIONS = ("right", "left", "down", "up")


@dataclass
class RecipeSettings:
    scale: float = 1.0
    """Pictures are rendered in world pixels and resized by this factor (the CPU preset works on a
    miniature of the same world)."""
    train_strips: int = 3000
    train_worlds: int = 3000
    strip_width: int = 512
    """World pixels; strips are VIEW_HEIGHT (1024) world pixels tall."""
    val_strips: int = 128
    panoramas: int = 12
    panorama_size: tuple[int, int] = (4096, 256)
    """World pixels (w, h)."""
    panorama_top: int = 448
    views: int = 12
    view_size: tuple[int, int] = (1024, 1024)
    outpaint_inputs: int = 4
    """Held-out pictures outpainted per direction."""
    outpaint_given: int = 256
    """World pixels of the given square picture; the canvas is 3x as long in the direction."""
    outpaint_directions: tuple[str, ...] = DIRECTIONS
    """Directions outpainted (up / down need 3 x outpaint_given <= 1024, the view's height)."""
    tokenizer_preset: str = "landscape-f8"
    tokenizer_pictures: int = 300
    """Training strips the tokenizer trains (and is evaluated) on."""
    tokenizer_steps: int = 3000
    tokenizer_seconds: float = 80.0
    tokenizer_batch: int = 32
    tokenizer_crop: int = 128
    model: dict = field(default_factory=lambda: dict(
        vocab_size=1024, patch_size=8, d_global=384, n_global_layers=6, d_local=384, n_local_layers=6,
        head_dim=64, max_frames=8, row_embedding=16, rope_dims=32, loss_chunk_tokens=8192))
    canvas: tuple[int, int, int] = (1, 32, 32)
    orders: Optional[dict] = None
    """Training orders and their weights (``data.orders``); None: the loader's default, all four."""
    train_steps: int = 2000
    micro_batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 400
    train_seconds: Optional[float] = 250.0
    """Safety limit of the training stage (the schedule is set by train_steps)."""
    ds_config: str = "zero2"
    num_workers: int = 4
    temperature: float = 1.0
    top_k: Optional[int] = 64
    gen_batch: int = 8
    seed: int = 0
    workers: int = 0
    """Processes rendering pictures (0: the CPU count, at most 16)."""


PRESETS: dict[str, dict] = {
    # One H200: about 10 minutes in all (docs/benchmarks.md has the measured stage times).
    "gpu": {},
    # Two CPU cores, a few minutes: a quarter-scale world (1024-pixel views become 256 pixels), the
    # `small` model (4x4-token patches of f8 tokens: 32-pixel patches).
    "cpu": dict(scale=0.25, train_strips=240, train_worlds=240, strip_width=512, val_strips=16, panoramas=4,
                panorama_size=(2048, 512), panorama_top=384, views=4, view_size=(512, 1024), outpaint_inputs=2,
                outpaint_given=256, tokenizer_preset="demo-f8", tokenizer_steps=600, tokenizer_seconds=120.0,
                tokenizer_batch=16, tokenizer_crop=64,
                model=dict(vocab_size=1024, patch_size=4, d_global=128, n_global_layers=3, d_local=128,
                           n_local_layers=3, head_dim=32, max_frames=8, row_embedding=8, rope_dims=16,
                           loss_chunk_tokens=2048),
                canvas=(1, 16, 16), train_steps=600, micro_batch=8, lr=2e-3, warmup_steps=30, eval_every=200,
                train_seconds=None, ds_config="zero1", num_workers=1, gen_batch=4, top_k=64),
}


def settings_for(preset: str, assignments: list[str]) -> RecipeSettings:
    if preset not in PRESETS:
        raise ValueError(f"unknown recipe preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = apply_assignments(RecipeSettings(**PRESETS[preset]), assignments)
    for d in settings.outpaint_directions:
        if d not in DIRECTIONS:
            raise ValueError(f"outpaint_directions: unknown direction {d!r}; choose from {', '.join(DIRECTIONS)}")
        if d in ("down", "up") and 3 * settings.outpaint_given > VIEW_HEIGHT:
            raise ValueError(f"outpaint {d}: a canvas 3 x outpaint_given = {3 * settings.outpaint_given} world "
                             f"pixels tall does not fit the {VIEW_HEIGHT}-pixel view")
    return settings


# ----------------------------------------------------------------------------------------------
# 1. pictures


def _render_job(job):
    """(world seed, x0, y0, w, h, scale, path): render, resize, save (runs in a worker process)."""
    from PIL import Image

    seed, x0, y0, w, h, scale, path = job
    img = Image.fromarray(World(seed).render(x0, y0, w, h))
    if scale != 1.0:
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    img.save(path, compress_level=1)  # lossless either way; level 1 writes several times faster
    return path


def render_set(folder: Path, jobs: list, workers: int, desc: str) -> list[dict]:
    """Render ``jobs`` = [(seed, x0, y0, w, h, scale)] into ``folder`` (PNG) with a manifest; returns it."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(*job, str(folder / f"{desc}_{i:05d}.png")) for i, job in enumerate(jobs)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(_render_job, jobs, chunksize=4), total=len(jobs), desc=f"pictures: {desc}", unit="pic"))
    manifest = [dict(file=Path(j[6]).name, world_seed=j[0], x0=j[1], y0=j[2], width=j[3], height=j[4])
                for j in jobs]
    (folder / "landscapes.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def outpaint_geometry(direction: str, s: RecipeSettings) -> tuple[int, int, int, int]:
    """World pixels of one outpainting: (canvas width, canvas height, canvas top in the view, edge),
    ``edge`` being where the given square ends and the model takes over, counted from the canvas's
    left (right / left) or top (down / up). Left / right canvases sit at the panorama height, down /
    up canvases end at the bottom of the view."""
    g = s.outpaint_given
    if direction in ("left", "right"):
        return 3 * g, g, s.panorama_top, g if direction == "right" else 2 * g
    return g, 3 * g, VIEW_HEIGHT - 3 * g, g if direction == "down" else 2 * g


def make_pictures(out: Path, s: RecipeSettings, workers: int) -> dict:
    rng = np.random.default_rng(s.seed)
    train_base, val_base = DEFAULT_WORLD_SEED_BASE["train"], DEFAULT_WORLD_SEED_BASE["val"]
    x = lambda n: rng.integers(-500_000, 500_000, n)  # noqa: E731
    jobs = {}
    seeds = train_base + rng.integers(0, s.train_worlds, s.train_strips)
    jobs["train"] = [(int(w), int(x0), 0, s.strip_width, VIEW_HEIGHT, s.scale)
                     for w, x0 in zip(seeds, x(s.train_strips))]
    # held-out worlds: every evaluation picture comes from a world the model never saw
    val_seeds = iter(range(val_base, val_base + 10**6))
    jobs["val"] = [(next(val_seeds), int(x0), 0, s.strip_width, VIEW_HEIGHT, s.scale) for x0 in x(s.val_strips)]
    pw, ph = s.panorama_size
    jobs["panorama"] = [(next(val_seeds), int(x0), s.panorama_top, pw, ph, s.scale) for x0 in x(2 * s.panoramas)]
    vw, vh = s.view_size
    jobs["view"] = [(next(val_seeds), int(x0), 0, vw, vh, s.scale) for x0 in x(2 * s.views)]
    for direction in s.outpaint_directions:
        w, h, top, _ = outpaint_geometry(direction, s)
        jobs[f"outpaint_{direction}"] = [(next(val_seeds), int(x0), top, w, h, s.scale)
                                         for x0 in x(max(2, s.outpaint_inputs))]
    return {name: render_set(out / "real" / name, j, workers, name) for name, j in jobs.items()}


# ----------------------------------------------------------------------------------------------
# helpers


def _save_decoded(tokenizer, tokens, path: Path) -> Path:
    """Decode one token canvas [1, h, w] (tiled, canvas-wide norm statistics) to a PNG."""
    from nuwa_ds.tokenizer import save_png

    pixels = tokenizer.decode_tiled(tokens.to(tokenizer.device))
    return save_png(pixels[0].float().cpu(), path)


def _save_canvases(tokenizer, tokens, folder: Path, prefix: str, start: int = 0) -> list[Path]:
    """Decode token canvases [B, 1, h, w] to PNGs named ``{prefix}_{start + b:05d}.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_save_decoded(tokenizer, tokens[b, :1], folder / f"{prefix}_{start + b:05d}.png")
            for b in range(tokens.shape[0])]


def _load(folder: Path) -> list:
    from nuwa_ds.tokenizer import load_image

    return [load_image(p) for p in sorted(folder.glob("*.png"))]


def reconstruct(tokenizer, real: Path, folder: Path):
    """VQ round trip of every real picture (the floor any generated picture can reach)."""
    import torch

    from nuwa_ds.tokenizer import load_image

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(real.glob("*.png")):
        with torch.no_grad():
            tokens = tokenizer.encode(load_image(path)[None].to(tokenizer.device))
        _save_decoded(tokenizer, tokens, folder / path.name)


def random_token_canvases(tokenizer, real: Path, folder: Path, seed: int):
    """Uniformly random tokens decoded at the real pictures' sizes (the worst-case ceiling)."""
    import torch

    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    f = tokenizer.downsample
    for i, path in enumerate(sorted(real.glob("*.png"))[:4]):
        with Image.open(path) as img:  # the header is enough
            h, w = img.height // f, img.width // f
        tokens = torch.randint(0, tokenizer.codebook_size, (1, 1, h, w), generator=g)
        _save_canvases(tokenizer, tokens, folder, f"random_{i}")


def row_profile_distance(a: list, b: list) -> float:
    """Mean absolute difference (0..255) between the mean colour of each pixel row of two sets of
    equally tall pictures: 0 when the sky, ridges and water sit at the same heights on average."""
    pa = np.mean([im.mean(dim=2).numpy() for im in a], axis=0)  # [3, H]
    pb = np.mean([im.mean(dim=2).numpy() for im in b], axis=0)
    return float(np.abs(pa - pb).mean() * 127.5)


def vertical_repetition(images: list, period_rows: int) -> float:
    """How much a picture repeats itself downward: the mean correlation between the row-mean colour
    profile and itself shifted by ``period_rows`` (one training-crop height), over pictures."""
    scores = []
    for im in images:
        prof = im.mean(dim=2).numpy()  # [3, H]
        a, b = prof[:, :-period_rows].ravel(), prof[:, period_rows:].ravel()
        a, b = a - a.mean(), b - b.mean()
        denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
        scores.append(float((a * b).sum() / denom) if denom > 0 else 0.0)
    return float(np.mean(scores))


def position_losses(model, shards: str, order: str, batch: int = 8) -> dict:
    """Held-out bits per token by position inside a patch, on the whole strips of the ``shards``
    (the validation shards' own tokens: each strip one canvas from its picture's top). Seams start
    where a patch's first tokens guess badly from their neighbour patches: ``first_column`` (column 0,
    below row 0) and ``first_row`` (row 0, right of column 0) against ``interior`` (the rest) say how
    much worse they guess."""
    import torch
    import torch.nn.functional as F

    from data_pipelines.loader import SkipLog, expand_shards, read_shard

    P = model.config.patch_size
    device = next(model.parameters()).device
    total = torch.zeros(P, P, dtype=torch.float64)
    count = 0
    skips = SkipLog()
    strips = [tokens for url in expand_shards(shards) for tokens, _, _ in read_shard(url, skips)]
    for start in range(0, len(strips), batch):
        tokens = torch.from_numpy(np.stack(strips[start:start + batch])).long().to(device)  # [B, T, h, w]
        h, w = (tokens.shape[2] // P) * P, (tokens.shape[3] // P) * P
        tokens = tokens[:, :, :h, :w]
        with torch.no_grad():
            logits = model(tokens, order=order, return_loss=False, rows=0).logits.float()
            ce = F.cross_entropy(logits.flatten(0, -2), tokens.flatten(), reduction="none")
        ce = ce.view(-1, h // P, P, w // P, P).sum(dim=(0, 1, 3)).double().cpu()
        total += ce
        count += tokens.shape[0] * tokens.shape[1] * (h // P) * (w // P)
    bits = total / count / math.log(2)  # [P, P]
    interior = bits[1:, 1:].mean()
    groups = {"first_column": float(bits[1:, 0].mean()), "first_row": float(bits[0, 1:].mean()),
              "first_token": float(bits[0, 0]), "interior": float(interior)}
    return {"order": order, "bits_per_token": groups, "canvases": len(strips),
            "excess_over_interior": {k: v / float(interior) for k, v in groups.items() if k != "interior"},
            "map": [[round(float(x), 4) for x in row] for row in bits]}


# ----------------------------------------------------------------------------------------------
# the recipe


def run_recipe(out, preset: str = "gpu", device: str = "auto", assignments=()) -> dict:
    import torch

    from data_pipelines.prepare import prepare_shards
    from nuwa_ds.model import GenerationConfig, NuwaInfinity
    from nuwa_ds.model_dir import export_checkpoint
    from nuwa_ds.tokenizer import train_tokenizer
    from nuwa_ds.train import train

    s = settings_for(preset, list(assignments))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    workers = s.workers or min(16, os.cpu_count() or 1)
    report: dict = {"preset": preset, "settings": dataclasses.asdict(s), "device": str(dev),
                    "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "versions": {"torch": torch.__version__}}
    started = time.perf_counter()
    # a rerun into the same --out starts fresh: no stale pictures scored, no shards of an earlier tokenizer
    # reused (prepare recognises its inputs by path, and the pictures are re-rendered under the same names)
    for folder in ("real", "generated", "recon", "random_tokens", "run", "shards", "model"):
        shutil.rmtree(out / folder, ignore_errors=True)

    with Stage(report, "1 pictures"):
        sets = make_pictures(out, s, workers)
        report["pictures"] = {k: len(v) for k, v in sets.items()}
    _write_report(out, report)

    with Stage(report, "2 tokenizer"):
        # a few hundred strips hold crops enough, and keep the tokenizer's own final evaluation short
        strips = sorted((out / "real" / "train").glob("*.png"))[: s.tokenizer_pictures]
        tokenizer, metrics = train_tokenizer([str(p) for p in strips], out / "tokenizer",
                                             config=s.tokenizer_preset, device=str(dev), steps=s.tokenizer_steps,
                                             batch_size=s.tokenizer_batch, crop=s.tokenizer_crop,
                                             time_limit=s.tokenizer_seconds, seed=s.seed, log_every=200)
        report["tokenizer"] = {k: metrics[k] for k in ("psnr", "codebook_usage", "steps", "seconds", "restarts")}
        print(f"tokenizer: PSNR {metrics['psnr']:.2f} dB, usage {metrics['codebook_usage']:.0%}", flush=True)
    _write_report(out, report)
    tokenizer = tokenizer.to(dev).eval()
    f = tokenizer.downsample
    P = s.model["patch_size"]
    unit = f * P  # pixels per patch (in the scaled pictures)

    with Stage(report, "3 shards"):
        shards = {}
        for split in ("train", "val"):
            manifest = prepare_shards([str(out / "real" / split)], out / "shards" / split, tokenizer, image_size=0,
                                      patch_size=P, progress=True, overwrite=True, device=str(dev))
            shards[split] = str(out / "shards" / split / manifest["shards"])
            report.setdefault("shards", {})[split] = manifest["num_samples"]
    _write_report(out, report)

    with Stage(report, "4 train"):
        run_dir = out / "run"
        overrides = [f"model.{k}={json.dumps(v)}" for k, v in s.model.items()] + [
            f"data.shards={shards['train']}", f"data.canvas={json.dumps(list(s.canvas))}",
            f"data.num_workers={s.num_workers}", "data.caption_dropout=0.0", "data.shuffle_buffer=500",
            f"train.run_dir={run_dir}", f"train.steps={s.train_steps}", f"train.save_every={s.train_steps}",
            "train.log_every=50", f"train.warmup_steps={s.warmup_steps}", f"train.lr={s.lr}",
            f"train.micro_batch_size={s.micro_batch}", f"train.ds_config={s.ds_config}", "train.tensorboard=true",
            f"train.seed={s.seed}", "train.weight_decay=0.0"] + (
            [f"data.orders={json.dumps(s.orders)}"] if s.orders else []) + (
            [f"train.time_limit={s.train_seconds}"] if s.train_seconds else [])
        validation = [f"data.val_shards={shards['val']}", f"train.eval_every={s.eval_every}", "train.eval_batches=4"]
        cfg = RunConfig.load("small", overrides + validation)
        tic = time.perf_counter()
        result = train(cfg, progress=True)
        seconds = time.perf_counter() - tic
        if result.status == "diverged" or result.step < 1:
            raise RuntimeError(f"training stopped ({result.status}) at step {result.step}")
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [x for x in lines if "loss" in x and "event" not in x]
        evals = [x for x in lines if x.get("event") == "eval"]
        tokens = cfg.train.micro_batch_size * math.prod(s.canvas) * result.step
        report["train"] = {"steps": result.step, "planned_steps": s.train_steps, "status": result.status,
                           "seconds": round(seconds, 1), "tokens_per_s": tokens / seconds,
                           "first_loss": steps[0]["loss"], "final_loss": steps[-1]["loss"],
                           "final_train_bits_per_token": steps[-1]["loss"] / math.log(2),
                           "val": [{k: e[k] for k in ("step", "val_loss", "val_bits_per_token") if k in e}
                                   for e in evals]}
        if evals:
            report["train"]["final_val_bits_per_token"] = evals[-1].get("val_bits_per_token")
    _write_report(out, report)

    with Stage(report, "5 export + generate"):
        model_dir = export_checkpoint(run_dir, out / "model", tokenizer=str(out / "tokenizer"))
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = NuwaInfinity.from_pretrained(model_dir, device=dev, dtype=dtype)
        report["position_losses"] = {o: position_losses(model, shards["val"], o) for o in ("right", "down")}
        gen = GenerationConfig(temperature=s.temperature, top_k=s.top_k, seed=s.seed)
        generated = out / "generated"
        timings = {}

        def generate(name, shape, order, batch, top_px, prompt=None, mask=None, start=0):
            tic = time.perf_counter()
            # on a CPU, one thread: the token steps are thousands of small ops. Measured on 2 cores, two
            # 1024 x 128 panoramas: 4.7 s on 2 threads idle; on a machine busy with other work 4.0-4.2 s
            # on 1 thread and 94-117 s on 2 (each op waits for the descheduled second thread)
            threads = torch.get_num_threads()
            if dev.type == "cpu":
                torch.set_num_threads(1)
            try:
                tokens = model.generate(shape, order=order, batch_size=batch, prompt=prompt, prompt_mask=mask,
                                        config=gen, rows=top_px // unit)
            finally:
                torch.set_num_threads(threads)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - tic, 2)
            return _save_canvases(tokenizer, tokens, generated / name, name, start)

        def px(v):  # world pixels -> pixels of the scaled pictures
            return round(v * s.scale)

        pw, ph = px(s.panorama_size[0]), px(s.panorama_size[1])
        for start in range(0, s.panoramas, s.gen_batch):
            n = min(s.gen_batch, s.panoramas - start)
            gen.seed = s.seed + start
            generate("panorama", (1, ph // f, pw // f), "right", n, px(s.panorama_top), start=start)
        vw, vh = px(s.view_size[0]), px(s.view_size[1])
        for start in range(0, s.views, s.gen_batch):
            n = min(s.gen_batch, s.views - start)
            gen.seed = s.seed + start
            generate("view", (1, vh // f, vw // f), "down", n, 0, start=start)
        gen.seed = s.seed
        for direction in s.outpaint_directions:
            name = f"outpaint_{direction}"
            refs = _load(out / "real" / name)[: s.outpaint_inputs]
            prompt, mask, top = _outpaint_prompt(tokenizer, refs, direction, s, px)
            generate(name, tuple(prompt.shape[1:]), direction, len(refs), top, prompt.to(dev), mask.to(dev))
        report["generate"] = {"seconds": timings}
    _write_report(out, report)

    with Stage(report, "6 eval"):
        report["eval"] = evaluate_sets(out, tokenizer, s, unit, px, workers)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    _write_report(out, report)
    _print_summary(report)
    return report


def _outpaint_prompt(tokenizer, refs, direction, s, px):
    """Prompt tokens / mask [B, 1, h, w] holding the given square of each held-out reference, and the
    canvas top (pixels) in the view."""
    import torch

    _, _, top, edge = outpaint_geometry(direction, s)
    batch = torch.stack(refs).to(tokenizer.device)
    with torch.no_grad():
        tokens = tokenizer.encode(batch).cpu()[:, None]  # [B, 1, h, w]
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    e = px(edge) // tokenizer.downsample
    given = {"right": (slice(None), slice(0, e)), "left": (slice(None), slice(e, None)),
             "down": (slice(0, e), slice(None)), "up": (slice(e, None), slice(None))}[direction]
    mask[:, :, given[0], given[1]] = True
    return torch.where(mask, tokens, torch.zeros_like(tokens)), mask, px(top)


def _quality(real, fake, recon, noise, block, seed, threads):
    """One quality report in a worker process (CPU)."""
    import torch

    from nuwa_ds.metrics.quality import quality_report

    torch.set_num_threads(threads)
    return quality_report(real, fake, recon=recon, random_tokens=noise, block_size=block, seed=seed)


def evaluate_sets(out: Path, tokenizer, s: RecipeSettings, unit: int, px, workers: int) -> dict:
    import multiprocessing

    from nuwa_ds.metrics.seams import boundary_score

    results = {}
    names = ("panorama", "view")
    for name in names:  # on the device: VQ round trips and random tokens
        reconstruct(tokenizer, out / "real" / name, out / "recon" / name)
        random_token_canvases(tokenizer, out / "real" / name, out / "random_tokens" / name, s.seed)
    for d in s.outpaint_directions:
        reconstruct(tokenizer, out / "real" / f"outpaint_{d}", out / "recon" / f"outpaint_{d}")
    # the two SWD reports on the CPU, side by side
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_quality, out / "real" / name, out / "generated" / name, out / "recon" / name,
                                     out / "random_tokens" / name, unit, s.seed, max(1, workers // 2))
                   for name in names}
        for name in names:
            results[name] = futures[name].result()
    crop_rows = s.canvas[1] * tokenizer.downsample
    for name in names:
        real_images = _load(out / "real" / name)
        fake_images, recon_images = _load(out / "generated" / name), _load(out / "recon" / name)
        half = len(real_images) // 2
        q = results[name]
        q["row_profile"] = {"real_vs_real": row_profile_distance(real_images[:half], real_images[half:]),
                            "recon_vs_real": row_profile_distance(recon_images, real_images),
                            "fake_vs_real": row_profile_distance(fake_images, real_images)}
        if real_images[0].shape[1] > crop_rows:
            q["vertical_repetition"] = {"real": vertical_repetition(real_images, crop_rows),
                                        "recon": vertical_repetition(recon_images, crop_rows),
                                        "fake": vertical_repetition(fake_images, crop_rows)}
    for d in s.outpaint_directions:
        name = f"outpaint_{d}"
        line = px(outpaint_geometry(d, s)[3])
        key = "column" if d in ("left", "right") else "row"

        def score(folder):
            return float(np.mean([boundary_score(im, **{key: line}) for im in _load(folder)]))

        results[name] = {"boundary": {"line": {key: line}, "real": score(out / "real" / name),
                                      "recon": score(out / "recon" / name), "fake": score(out / "generated" / name)}}
    return results


def _print_summary(report: dict):
    ev = report.get("eval", {})
    print("\n== summary ==")
    t = report.get("train", {})
    print(f"train: {t.get('tokens_per_s', 0):,.0f} tokens/s, train bits/token {t.get('final_train_bits_per_token')}, "
          f"val bits/token {t.get('final_val_bits_per_token')}")
    for name in ("panorama", "view"):
        q = ev.get(name)
        if not q:
            continue
        swd, seams = q["swd"]["scores"], q["seams"]["scores"]
        print(f"{name}: SWD fake {swd['fake']['mean']:.1f}  floor(real) {swd['real_a']['mean']:.1f}  "
              f"recon {swd.get('recon', {}).get('mean', float('nan')):.1f}  shuffled "
              f"{swd['shuffled_real']['mean']:.1f} | seams fake {seams['fake']['both']}  real {seams['real']['both']}"
              f"  recon {seams.get('recon', {}).get('both')} | row profile {q['row_profile']}")
    for d in ("right", "left", "down", "up"):
        b = ev.get(f"outpaint_{d}", {}).get("boundary")
        if b:
            print(f"outpaint {d}: boundary fake {b['fake']:.3f} real {b['real']:.3f} recon {b['recon']:.3f}")
    for order, pl in report.get("position_losses", {}).items():
        print(f"held-out bits/token by position in a patch, order {order}: {pl['bits_per_token']}")
    print(f"total {report.get('total_seconds')} s; stages {report.get('stage_seconds')}")


RECIPES = {"landscapes": "pictures: panoramas, tall views, outpainting (RecipeSettings)",
           "landscape-videos": "captioned videos: text-to-image, text-to-video, animation (nuwa_ds.video_recipe)"}


@dataclass
class RecipeCommand(ConfigBase):
    """Everything ``nuwa-ds recipe`` is told; its flags are generated from these fields."""

    recipe: Literal[tuple(RECIPES)] = field(metadata=cli(
        positional=True, help="; ".join(f"{k}: {v}" for k, v in RECIPES.items())))
    preset: Literal[tuple(PRESETS)] = "gpu"
    """Sizes: gpu (one GPU, ~10 min) or cpu (2 cores, minutes)."""
    out: Optional[str] = field(default=None, metadata=cli(metavar="DIR"))
    """Output folder (default outputs/recipe or outputs/video-recipe)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto (cuda when available), cuda or cpu."""
    assignments: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True,
                                                                       metavar="KEY=VALUE"))
    """Change one setting of the preset (the recipe's settings fields), e.g. train_steps=500; repeatable."""
    from_stage: Optional[Literal["train", "generate"]] = None
    """landscape-videos only: reuse the run in --out. generate: its clips, text encoder, tokenizer, shards
    and training; export, generation and evaluation run again, e.g. with other temperatures; only the
    drawing settings (nuwa_ds.video_recipe.DRAW_SETTINGS) may differ. train: its clips, text encoder,
    tokenizer and shards; training runs again too, so the training settings (TRAIN_SETTINGS, e.g.
    model.context_noise=0.05) may differ as well."""


def add_arguments(parser):
    RecipeCommand.add_flags(parser)


def run(args) -> int:
    command = RecipeCommand.from_args(args)
    if command.recipe == "landscape-videos":
        run_video_recipe(command.out or "outputs/video-recipe", command.preset, command.device, command.assignments,
                         from_stage=command.from_stage)
    elif command.from_stage:
        raise SystemExit(f"--from-stage is for the landscape-videos recipe; {command.recipe} runs every stage")
    else:
        run_recipe(command.out or "outputs/recipe", command.preset, command.device, command.assignments)
    return 0
