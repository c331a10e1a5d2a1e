"""``nuwa-ds tokenizer-train``: train a VQ tokenizer from pictures (for users without a pretrained VQGAN).

Losses: reconstruction (L1 + MSE on pixels) and commitment (beta * |z_e - sg(z_q)|^2). The codebook
is not trained by gradients but by exponential moving averages of the encoder outputs assigned to
each code (VQ-VAE-2), and a code that falls out of use is restarted on a random encoder output of the
current batch, so the whole codebook stays in use. Perceptual (LPIPS) and adversarial losses are not
used: their weights are not available offline, and pixel losses alone reach a recognisable
reconstruction (see docs/benchmarks.md for the PSNR).

Data: random crops (with flips and a random downscale) of the given pictures. The function form,
:func:`train_tokenizer`, is what ``nuwa-ds demo`` calls.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nuwa_ds.tokenizer.media import (DEMO_PICTURES, IMAGE_SUFFIXES, demo_pictures, from_uint8, open_rgb,
                                     save_png)
from nuwa_ds.tokenizer.vqgan import VQConfig, VQTokenizer, psnr, resolve_device


@dataclass
class TrainOptions:
    steps: int = 600
    """Optimizer steps (the time limit may stop training earlier)."""
    batch_size: int = 16
    """Crops per step."""
    crop: int = 64
    """Crop side in pixels (a multiple of the downsampling factor)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (warm-up, then cosine to 5%)."""
    beta: float = 0.25
    """Commitment loss weight."""
    ema_decay: float = 0.95
    """Codebook EMA decay (per step; lower adapts faster, useful for short runs)."""
    ae_warmup_steps: int | None = None
    """Steps trained as a plain autoencoder before the codebook is initialised on the latents
    (k-means++) and quantisation starts; None: a tenth of the steps, at most 100."""
    restart_threshold: float = 0.1
    """A code whose EMA assignment count falls below this fraction of the mean count is restarted
    on a vector of the batch (a mean-relative threshold acts as fast with any codebook size)."""
    seed: int = 0
    """Initialisation and crop sampling seed."""
    time_limit: float | None = None
    """Stop after this many seconds of training (the demo's budget); None: run all steps."""
    log_every: int = 100
    """Steps between progress lines (0: quiet)."""


# ----------------------------------------------------------------------------------------------
# Data


def _load_pictures(images) -> list[np.ndarray]:
    """Paths, a folder, arrays, or the string 'demo' -> list of [H, W, 3] uint8."""
    if isinstance(images, (str, Path)) and str(images) == "demo":
        return list(demo_pictures().values())
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        images = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    out = []
    for item in images:
        if isinstance(item, np.ndarray):
            out.append(item if item.ndim == 3 else np.repeat(item[..., None], 3, -1))
        else:
            if not Path(item).is_file():
                raise FileNotFoundError(f"picture {item} does not exist")
            out.append(np.asarray(open_rgb(item)))
    if not out:
        raise ValueError("no pictures to train on")
    return out


class CropSampler:
    """Random crops with flips from a pyramid of each picture (full, 3/4 and 1/2 size), so the
    tokenizer sees the scales at which `prepare` will later resize pictures."""

    def __init__(self, pictures: list[np.ndarray], crop: int, seed: int):
        from PIL import Image

        self.crop = crop
        self.levels = []
        for array in pictures:
            img = Image.fromarray(array[..., :3])
            for scale in (1.0, 0.75, 0.5):
                w, h = round(img.width * scale), round(img.height * scale)
                if min(w, h) >= crop:
                    self.levels.append(from_uint8(np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))))
        if not self.levels:
            raise ValueError(f"every picture is smaller than the {crop}-pixel crop")
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> torch.Tensor:  # (size, 3, crop, crop)
        g, c = self.generator, self.crop
        out = []
        for _ in range(size):
            img = self.levels[int(torch.randint(len(self.levels), (1,), generator=g))]
            y = int(torch.randint(img.shape[1] - c + 1, (1,), generator=g))
            x = int(torch.randint(img.shape[2] - c + 1, (1,), generator=g))
            patch = img[:, y:y + c, x:x + c]
            out.append(patch.flip(-1) if torch.rand((), generator=g) < 0.5 else patch)
        return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# The EMA codebook (updates `quantize.embedding.weight` in place; no extra parameters)


class EMACodebook:
    """EMA codebook with k-means++ initialisation and a restart policy that cannot thrash.

    * **Initialisation**: k-means++ seeding on the encoder outputs of the first batch, then a few
      Lloyd iterations, so the codes start spread over the data instead of on random (often
      near-identical) rows of smooth pictures.
    * **Restarts**: a code is dead when no vector was assigned to it in the last ``patience`` steps
      *and* its EMA assignment count is below ``threshold x`` the mean count (rarely used codes are
      not dead: they are the codebook's tail). Restarts begin after ``warmup`` steps, a restarted
      code gets ``patience`` steps to gather assignments before it can be restarted again, and at
      most ``max_per_step`` codes are restarted per step. A restarted code moves onto a batch vector drawn with
      probability proportional to its squared quantisation error (k-means++ again), i.e. where the
      codebook serves the data worst, not onto a random (likely well-served) vector.
    """

    def __init__(self, model: VQTokenizer, decay: float, restart_threshold: float, generator: torch.Generator,
                 warmup: int = 10, patience: int | None = None, max_per_step: int | None = None,
                 kmeans_iters: int = 10):
        weight = model.quantize.embedding.weight
        K = weight.shape[0]
        self.weight, self.decay, self.threshold, self.g = weight, decay, restart_threshold, generator
        self.warmup = warmup
        # a restarted code needs about 1 / (1 - decay) steps for its EMA count to reflect its use
        self.patience = patience if patience is not None else max(10, round(2 / (1 - decay)))
        self.max_per_step = max_per_step if max_per_step is not None else max(1, K // 64)
        self.kmeans_iters = kmeans_iters
        self.count = torch.ones(K, device=weight.device)  # reset to the mean at init_from
        self.total = weight.detach().clone()
        self.last_used = torch.zeros(K, dtype=torch.long, device=weight.device)
        self.initialised = False
        self.restarts = 0
        self.steps = 0

    def _draw(self, weights: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` row indices drawn with probability proportional to ``weights`` (CPU generator)."""
        w = weights.double().cpu().clamp_min(0)
        if float(w.sum()) <= 0:
            w = torch.ones_like(w)
        return torch.multinomial(w, count, replacement=count > int((w > 0).sum()), generator=self.g).to(weights.device)

    @torch.no_grad()
    def init_from(self, vectors: torch.Tensor):
        """k-means++ seeding on encoder outputs, then Lloyd iterations (no gradient, fp32)."""
        K = self.weight.shape[0]
        first = int(torch.randint(vectors.shape[0], (1,), generator=self.g))
        centres = [vectors[first]]
        nearest = ((vectors - vectors[first]) ** 2).sum(1)
        for _ in range(1, K):
            pick = int(self._draw(nearest, 1))
            centres.append(vectors[pick])
            nearest = torch.minimum(nearest, ((vectors - vectors[pick]) ** 2).sum(1))
        book = torch.stack(centres)
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(vectors, book).argmin(1)
            counts = torch.bincount(assign, minlength=K).float()
            sums = torch.zeros_like(book).index_add_(0, assign, vectors)
            used = counts > 0
            book[used] = sums[used] / counts[used, None]
        mean = vectors.shape[0] / K  # assignments per code and step, on average
        self.count.fill_(mean)
        self.weight.copy_(book)
        self.total.copy_(book * mean)
        self.initialised = True

    @torch.no_grad()
    def update(self, vectors: torch.Tensor, codes: torch.Tensor):
        """vectors (N, e) fp32, codes (N,): EMA of counts and sums, then restart (a few) dead codes."""
        K = self.weight.shape[0]
        self.steps += 1
        counts = torch.bincount(codes, minlength=K).float()
        sums = torch.zeros_like(self.total).index_add_(0, codes, vectors)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.total.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.count.sum()
        smoothed = (self.count + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing: no division by 0
        self.weight.copy_(self.total / smoothed[:, None])
        self.last_used[counts > 0] = self.steps
        if self.steps <= self.warmup:
            return
        mean = n / K
        dead = (self.count < self.threshold * mean) & (self.steps - self.last_used >= self.patience)
        dead = dead.nonzero().flatten()
        if not len(dead):
            return
        dead = dead[torch.argsort(self.count[dead])][: self.max_per_step]  # the least used first
        error = ((vectors - self.weight[codes]) ** 2).sum(1)  # each vector's squared quantisation error
        pick = self._draw(error, len(dead))
        self.weight[dead] = vectors[pick]
        self.total[dead] = vectors[pick] * mean
        self.count[dead] = mean
        self.last_used[dead] = self.steps  # a fresh code gets `patience` steps before it can be dead again
        self.restarts += len(dead)


# ----------------------------------------------------------------------------------------------
# Training


def _lr_at(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def training_step(model: VQTokenizer, codebook: EMACodebook, images: torch.Tensor, beta: float,
                  quantize: bool = True):
    """One forward with the straight-through estimator; returns (loss, recon, codes). With
    ``quantize=False`` (the autoencoder warm-up) the decoder reads the latents as they are and the
    codebook is left alone (codes is None)."""
    z = model.latents(images)  # (B, e, h, w)
    B, e, h, w = z.shape
    if not quantize:
        recon = model.decode_latents(z)
        return F.l1_loss(recon, images) + F.mse_loss(recon, images), recon, None
    flat = z.permute(0, 2, 3, 1).reshape(-1, e)
    if not codebook.initialised:
        codebook.init_from(flat.detach().float())
    codes = model.quantize.codes(z.detach()).flatten()
    z_q = model.quantize.embedding(codes)  # (N, e), no gradient needed: EMA-trained
    commit = F.mse_loss(flat, z_q.detach())
    z_st = flat + (z_q - flat).detach()  # straight-through: decoder gradients reach the encoder
    recon = model.decode_latents(z_st.view(B, h, w, e).permute(0, 3, 1, 2))
    loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + beta * commit
    codebook.update(flat.detach().float(), codes)
    return loss, recon, codes


@torch.no_grad()
def evaluate(model: VQTokenizer, pictures: list[np.ndarray]) -> dict:
    """Whole-picture reconstruction PSNR (8-bit) and codebook usage, pictures cropped to multiples of f."""
    model.eval()
    f = model.downsample
    scores, used = [], set()
    recons = []
    for array in pictures:
        H, W = (array.shape[0] // f) * f, (array.shape[1] // f) * f
        image = from_uint8(array[:H, :W])[None]
        tokens = model.encode(image)
        recon = model.decode(tokens).cpu()
        scores.append(psnr(image, recon))
        used.update(tokens.unique().tolist())
        recons.append((image[0], recon[0]))
    model.train()
    return {"psnr": float(np.mean(scores)), "psnr_per_picture": scores,
            "codebook_usage": len(used) / model.codebook_size, "pairs": recons}


def train_tokenizer(images="demo", out_dir=None, *, config: VQConfig | str = "demo-f8",
                    codebook_size: int | None = None, device: str = "auto", options: TrainOptions | None = None,
                    **option_overrides) -> tuple[VQTokenizer, dict]:
    """Train a VQ tokenizer on pictures and return ``(tokenizer, metrics)``.

    ``images``: file paths, a folder, ``[H, W, 3]`` uint8 arrays, or ``"demo"`` (the scikit-image
    photographs). ``metrics``: ``psnr`` (dB, whole pictures), ``codebook_usage``, ``steps``,
    ``seconds``, ``restarts``, ``loss``. With ``out_dir`` the tokenizer is saved there
    (``save_pretrained``) with ``metrics.json`` and ``reconstruction.png`` (originals over
    reconstructions)."""
    opts = options or TrainOptions()
    for key, value in option_overrides.items():
        if not hasattr(opts, key):
            raise ValueError(f"unknown training option {key!r}; known: {', '.join(TrainOptions.__annotations__)}")
        setattr(opts, key, value)
    cfg = VQConfig.preset(config) if isinstance(config, str) else config
    if codebook_size is not None:
        cfg = VQConfig.from_dict({**cfg.to_dict(), "n_embed": codebook_size})
    if cfg.quantizer != "vq":
        raise ValueError("tokenizer training supports the 'vq' quantizer (EMA codebook) only")
    if opts.steps < 1 or opts.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    if opts.crop % cfg.downsample:
        raise ValueError(f"crop {opts.crop} must be a multiple of the downsampling factor {cfg.downsample}")
    pictures = _load_pictures(images)
    dev = resolve_device(device)

    torch.manual_seed(opts.seed)
    model = VQTokenizer(cfg).to(dev).train()
    sampler = CropSampler(pictures, opts.crop, opts.seed)
    codebook = EMACodebook(model, opts.ema_decay, opts.restart_threshold,
                           torch.Generator().manual_seed(opts.seed + 1))
    params = [p for n, p in model.named_parameters() if not n.startswith("quantize.")]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)

    # autoencoder warm-up: the codebook is placed (k-means++) on latents that already carry the pictures
    warmup = opts.ae_warmup_steps if opts.ae_warmup_steps is not None else min(100, opts.steps // 10)
    start, step, losses = time.perf_counter(), 0, []
    for step in range(opts.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, opts.steps, opts.lr)
        batch = sampler.batch(opts.batch_size).to(dev)
        loss, _, _ = training_step(model, codebook, batch, opts.beta, quantize=step >= warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - start
        if opts.log_every and (step + 1) % opts.log_every == 0:
            print(f"tokenizer step {step + 1}/{opts.steps}  loss {np.mean(losses[-opts.log_every:]):.4f}  "
                  f"restarts {codebook.restarts}  {elapsed:.0f}s", flush=True)
        if opts.time_limit is not None and elapsed >= opts.time_limit:
            break
    seconds = time.perf_counter() - start
    model.eval()
    result = evaluate(model, pictures)
    pairs = result.pop("pairs")
    metrics = {**result, "steps": step + 1, "seconds": round(seconds, 1), "restarts": codebook.restarts,
               "loss": float(np.mean(losses[-20:])), "device": str(dev), "config": cfg.to_dict()}
    if out_dir is not None:
        out = model.save_pretrained(out_dir)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_png(_side_by_side(pairs), out / "reconstruction.png")
    return model, metrics


def _side_by_side(pairs, height: int = 192) -> torch.Tensor:
    """Originals (top row) over reconstructions (bottom row), each scaled to `height` pixels."""
    tops, bottoms = [], []
    for original, recon in pairs:
        scale = height / original.shape[1]
        size = (height, max(1, round(original.shape[2] * scale)))
        tops.append(F.interpolate(original[None], size=size, mode="area")[0])
        bottoms.append(F.interpolate(recon[None], size=size, mode="area")[0])
    return torch.cat([torch.cat(tops, dim=2), torch.cat(bottoms, dim=2)], dim=1)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--images", default="demo",
                        help="a folder of pictures, or 'demo' for the photographs shipped with scikit-image "
                             f"({', '.join(DEMO_PICTURES)})")
    parser.add_argument("--out", required=True, help="directory for tokenizer.safetensors + tokenizer_config.json")
    parser.add_argument("--preset", default="demo-f8", help="architecture preset (VQConfig.preset names)")
    parser.add_argument("--codebook-size", type=int, default=None, help="number of codes (default: the preset's)")
    parser.add_argument("--steps", type=int, default=TrainOptions.steps)
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size)
    parser.add_argument("--crop", type=int, default=TrainOptions.crop)
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")


def run(args) -> int:
    _, metrics = train_tokenizer(args.images, args.out, config=args.preset, codebook_size=args.codebook_size,
                                 device=args.device, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                                 lr=args.lr, time_limit=args.time_limit, seed=args.seed)
    print(f"tokenizer saved to {args.out}: PSNR {metrics['psnr']:.2f} dB on {len(metrics['psnr_per_picture'])} "
          f"pictures, codebook usage {metrics['codebook_usage']:.0%}, {metrics['steps']} steps in "
          f"{metrics['seconds']:.0f}s on {metrics['device']}")
    return 0
