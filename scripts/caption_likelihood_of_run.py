"""The caption-likelihood probe (``nuwa_ds.video_recipe.caption_likelihood``) on a finished
landscape-videos recipe folder, over as many held-out clips as asked (the recipe's own evaluation uses
its ``val_clips``): what the trained model has learnt of each caption word, without drawing anything.

    python scripts/caption_likelihood_of_run.py OUT [OUT ...] [--clips 64] [--device cpu|cuda]

Held-out clips i < val_clips are the run's own (the same specs); further ones come from the same held-out
worlds' split and seed. Prints one JSON object per folder (name: the folder's name)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def probe(out: Path, clips: int, device: str) -> dict:
    import numpy as np
    import torch

    from data_pipelines import landscape_video as LV
    from nuwa_ds.model import NuwaInfinity
    from nuwa_ds.tokenizer import VQTokenizer
    from nuwa_ds.video_recipe import _encode_clips, caption_likelihood

    settings = json.loads((out / "report.json").read_text())["settings"]
    T = settings["clip_frames"]
    specs = LV.sample_clip_specs(clips, split="val", frames=T, size=tuple(settings["size"]),
                                 window=tuple(settings["window"]), seed=settings["seed"])
    dev = torch.device(device)
    model = NuwaInfinity.from_pretrained(out / "model", device=dev,
                                         dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    tokenizer = VQTokenizer.from_pretrained(out / "tokenizer", device=dev)
    tokens = _encode_clips(tokenizer, np.stack([LV.render_clip(spec) for spec in specs]))
    return {"run": out.name, "clips": clips, **caption_likelihood(model, tokens, specs)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for out in args.runs:
        if not (out / "model").is_dir() or not (out / "report.json").is_file():
            print(f"{out}: not a finished recipe folder (model/ and report.json needed)", file=sys.stderr)
            return 2
    for out in args.runs:
        print(json.dumps(probe(out, args.clips, args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
