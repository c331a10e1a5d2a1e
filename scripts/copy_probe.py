"""Can the model learn to copy the frame before? A probe of the temporal path (issue 17).

Clips of 4 frames whose frame 0 is uniform random tokens and whose frames 1-3 repeat it: a model
that reads the frame before predicts frames 1-3 for free, one that does not stays at log2(vocab)
bits. Trains each named variant with plain AdamW (no DeepSpeed) and prints held-out bits/token by
frame every ``--every`` steps, as JSON lines.

    python scripts/copy_probe.py --device cuda --steps 2000 --variant base --variant rope0
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from nuwa_ds.model import NuwaInfinity
from nuwa_ds.model.config import NuwaConfig

BASE = dict(vocab_size=1024, patch_size=4, d_global=128, n_global_layers=3, d_local=128, n_local_layers=3,
            head_dim=32, max_frames=4, extents=(2, 1, 1), row_embedding=0, rope_dims=16, loss_chunk_tokens=8192)
GPU = dict(BASE, d_global=384, n_global_layers=6, d_local=384, n_local_layers=6, head_dim=64, rope_dims=32)
VARIANTS = {
    "base": {}, "rope0": dict(rope_dims=0), "extents111": dict(extents=(1, 1, 1)),
    "gpu": GPU, "gpu_rope0": dict(GPU, rope_dims=0),
    "small": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1),
    "small_rope0": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, rope_dims=0),
    "small_rope_pi2": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, rope_max_freq=1.5707963),
    "gpu_rope_pi2": dict(GPU, rope_max_freq=1.5707963),
    "small_aligned": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, aligned_bias=True),
    "small_aligned_rope0": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, aligned_bias=True,
                                rope_dims=0),
    "small_aligned_init4": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, aligned_bias=True,
                                aligned_bias_init=4.0),
    "small_aligned_init2": dict(d_global=64, n_global_layers=1, d_local=64, n_local_layers=1, aligned_bias=True,
                                aligned_bias_init=2.0),
    "aligned": dict(aligned_bias=True), "aligned_init4": dict(aligned_bias=True, aligned_bias_init=4.0),
    "gpu_aligned": dict(GPU, aligned_bias=True),
    "gpu_aligned_init4": dict(GPU, aligned_bias=True, aligned_bias_init=4.0),
}


def run(name: str, overrides: dict, steps: int, every: int, device: str, lr: float, batch: int, symbols: int,
        seed: int):
    torch.manual_seed(seed)
    cfg = NuwaConfig(**{**BASE, **overrides})
    model = NuwaInfinity(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    g = torch.Generator(device="cpu").manual_seed(seed + 1)

    def clips(n):
        first = torch.randint(0, symbols, (n, 1, 8, 8), generator=g)
        return first.repeat(1, 4, 1, 1).to(device)

    held_out = clips(64)
    tic = time.perf_counter()
    for step in range(1, steps + 1):
        warm = min(1.0, step / 100)
        for group in opt.param_groups:
            group["lr"] = lr * warm
        loss = model(clips(batch), order="down", return_logits=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                logits = model(held_out, order="down", return_loss=False).logits.float()
            model.train()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, -2), held_out.flatten(), reduction="none")
            bits = (nll.view(held_out.shape) / math.log(2)).mean((0, 2, 3)).tolist()
            print(json.dumps({"variant": name, "step": step, "bits_by_frame": [round(b, 3) for b in bits],
                              "chance_bits": round(math.log2(symbols), 3),
                              "seconds": round(time.perf_counter() - tic, 1)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--symbols", type=int, default=256, help="frame 0 draws from the first SYMBOLS tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in args.variant or ["base"]:
        run(name, VARIANTS[name], args.steps, args.every, args.device, args.lr, args.batch, args.symbols, args.seed)


if __name__ == "__main__":
    main()
