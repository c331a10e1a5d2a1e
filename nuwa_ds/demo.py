"""``nuwa-ds demo``: the whole path on CPU in minutes.

Trains the tiny model on synthetic token grids, then generates a canvas wider than any training
example through the rotating pool (sequential and wavefront, which must agree) and writes it to
disk as a token-id picture plus the raw tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


def add_arguments(parser):
    parser.add_argument("--out", default="outputs/demo", help="output directory")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--seed", type=int, default=0)


def tokens_to_picture(tokens: torch.Tensor, vocab: int) -> np.ndarray:
    """[H, W] token ids -> an RGB uint8 picture (a fixed colour per id) to look at the canvas."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(vocab, 3), dtype=np.uint8)
    return palette[tokens.cpu().numpy()]


def run(args) -> int:
    from PIL import Image

    from data_pipelines.synthetic import synthetic_grid
    from nuwa_ds import GenerationConfig, NuwaConfig, NuwaInfinity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    cfg = NuwaConfig.preset("tiny", extents=(0, 1, 1))
    model = NuwaInfinity(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        batch = torch.stack([synthetic_grid(g, (1, 16, 16), cfg.vocab_size) for _ in range(8)])
        loss = model(batch, order=["down", "right", "up", "left"] * 2, return_logits=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.1f}s)")
    model.eval()
    model.save_pretrained(out / "model")
    shape = (1, 16, 96)  # 4 x 24 patches: six times wider than the training canvases
    gen = GenerationConfig(temperature=0.7, top_k=20, seed=args.seed)
    canvas = model.generate(shape, order="right", config=gen)
    stats = dict(model.last_generation_stats)
    gen.wavefront = True
    wave = model.generate(shape, order="right", config=gen)
    stats_wave = model.last_generation_stats
    assert torch.equal(canvas, wave), "wavefront and sequential canvases differ"
    Image.fromarray(tokens_to_picture(canvas[0, 0], cfg.vocab_size)).resize((96 * 8, 16 * 8), Image.NEAREST) \
        .save(out / "canvas.png")
    np.save(out / "canvas_tokens.npy", canvas.numpy().astype(np.int16))
    summary = {"loss": loss.item(), "canvas_tokens": list(canvas.shape), "sequential": stats,
               "wavefront": stats_wave}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"sequential steps {stats['steps']}, wavefront steps {stats_wave['steps']}, "
          f"pool slots {stats['slots_per_canvas']} for {stats['patches']} patches")
    print(f"wrote {out / 'canvas.png'}, {out / 'model'}")
    return 0
