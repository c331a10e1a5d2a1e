"""``nuwa-ds demo``: the whole path on real photographs, on CPU, in minutes.

1. ``tokenizer-train``: a small VQ tokenizer (f8, 1024 codes) on photographs shipped inside
   scikit-image (public domain / CC0), with its reconstruction PSNR;
2. ``prepare``: the photographs -> VQ tokens -> WebDataset shards;
3. ``train``: the ``small`` model under DeepSpeed (one rank) reading those shards;
4. ``export``: the checkpoint -> ``model.safetensors`` + ``config.json``;
5. ``generate``: a panorama four times wider than any training crop (order ``right``, through the
   rotating pool) and an outpainting of one photograph to the right, decoded to PNG.

Everything lands in ``--out`` (default ``outputs/demo``); ``summary.json`` holds the figures.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--out", default="outputs/demo", help="output directory")
    parser.add_argument("--tokenizer-seconds", type=float, default=150.0, help="time budget of the tokenizer stage: loading, training, saving and its evaluation")
    parser.add_argument("--steps", type=int, default=600, help="training steps of the model")
    parser.add_argument("--seed", type=int, default=0)


def _stage(name: str):
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


def run(args) -> int:
    from data_pipelines.prepare import prepare_shards
    from nuwa_ds.cli import main as cli
    from nuwa_ds.config import RunConfig
    from nuwa_ds.export import export_checkpoint
    from nuwa_ds.tokenizer import demo_pictures, from_uint8, save_png, train_tokenizer
    from nuwa_ds.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    t = _stage("1/5 pictures and tokenizer")
    pictures = out / "pictures"
    for name, array in demo_pictures().items():
        save_png(from_uint8(array), pictures / f"{name}.png")
    tokenizer, metrics = train_tokenizer(str(pictures), out / "tokenizer", config="demo-f8", seed=args.seed,
                                         time_limit=args.tokenizer_seconds)
    summary["tokenizer"] = {"psnr_db": metrics["psnr"], "codebook_usage": metrics["codebook_usage"],
                            "steps": metrics["steps"], "seconds": round(time.perf_counter() - t, 1)}
    print(f"tokenizer: PSNR {metrics['psnr']:.2f} dB on the demo photographs "
          f"(reconstructions: {out / 'tokenizer' / 'reconstruction.png'})")

    t = _stage("2/5 prepare shards")
    P = RunConfig.preset("small").model.patch_size
    manifest = prepare_shards([str(pictures)], out / "shards", tokenizer, image_size=256, patch_size=P,
                              progress=False, overwrite=True, device="cpu")
    summary["shards"] = {"samples": manifest["num_samples"], "shards": manifest["num_shards"],
                         "seconds": round(time.perf_counter() - t, 1)}

    t = _stage("3/5 train (DeepSpeed, one rank)")
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time the demo runs
    cfg = RunConfig.load("small", [
        f"data.shards={out / 'shards' / manifest['shards']}", "data.canvas=[1,16,16]", "data.num_workers=1",
        "data.caption_dropout=0.0", f"train.run_dir={out / 'run'}", f"train.steps={args.steps}",
        f"train.save_every={args.steps}", "train.log_every=50", "train.warmup_steps=30", "train.lr=2e-3",
        "train.ds_config=zero1", "train.tensorboard=false", f"train.seed={args.seed}",
    ])
    result = train(cfg, progress=False)
    if result.status != "finished":
        raise RuntimeError(f"training stopped early ({result.status}) at step {result.step}")
    losses = [json.loads(line).get("loss") for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    summary["train"] = {"steps": args.steps, "first_loss": losses[0], "final_loss": losses[-1],
                        "seconds": round(time.perf_counter() - t, 1)}

    t = _stage("4/5 export")
    model_dir = export_checkpoint(out / "run", out / "model", tokenizer=str(out / "tokenizer"))
    summary["export"] = {"dir": str(model_dir), "seconds": round(time.perf_counter() - t, 1)}

    t = _stage("5/5 generate")
    f = tokenizer.downsample
    unit = f * P
    runs = {
        "panorama.png": ["--size", f"{16 * unit}x{4 * unit}", "--order", "right", "--top-k", "64"],
        "outpaint_right.png": ["--task", "outpaint", "--input", str(pictures / "coffee.png"), "--direction", "right",
                               "--size", f"{12 * unit}x{4 * unit}", "--top-k", "64"],
    }
    for name, extra in runs.items():
        if cli(["generate", str(model_dir), *extra, "--seed", str(args.seed), "--out", str(out / name)]) != 0:
            raise RuntimeError(f"generation of {name} failed")
    summary["generate"] = {"files": [str(out / n) for n in runs], "seconds": round(time.perf_counter() - t, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {', '.join(runs)} and summary.json to {out}")
    return 0
