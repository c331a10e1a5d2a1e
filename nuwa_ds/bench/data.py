"""``nuwa-ds bench data``: how fast shards are made and how fast the loader delivers tokens.

* ``prepare``: pictures (JPEGs cut from the shipped photographs, 256-384 px) -> decode, resize, crop,
  tokenize, write shards; images/s and tokens/s end to end. Tokenizer weights are random (speed does
  not depend on them); the architecture is ``--set tokenizer=<preset>`` (default: the taming f16
  VQGAN on a GPU, the CPU demo tokenizer on a CPU).
* ``loader``: token shards -> batches through :class:`~data_pipelines.loader.ShardLoader` with
  ``--set workers=N`` DataLoader workers (default 2) and in-process (0 workers); tokens/s delivered
  after a warm-up. Canvas and batch follow the preset (``--set canvas=64``, ``--set batch=8``).

Goal (issue 3): the loader should deliver >= 1M tokens/s per node, 10x what one GPU consumes at the
training target; each loader row reports its fraction of that.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from data_pipelines import build_loader
from data_pipelines.prepare import prepare_shards
from data_pipelines.samples import encode_sample
from nuwa_ds.config import DataConfig, NuwaConfig
from nuwa_ds.tokenizer import VQConfig, VQTokenizer
from nuwa_ds.tokenizer.media import demo_pictures

GOAL_TOKENS_PER_S = 1_000_000


def _pictures(folder: Path, count: int, seed: int = 0):
    """`count` JPEGs: random crops (256-384 px sides) of the shipped photographs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = list(demo_pictures().values())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = int(rng.integers(256, min(384, src.shape[0]) + 1)), int(rng.integers(256, min(384, src.shape[1]) + 1))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        Image.fromarray(np.ascontiguousarray(src[y:y + h, x:x + w])).save(folder / f"img{i:05d}.jpg", quality=92)


def bench_prepare(tmp: Path, device: str, count: int, preset: str, patch_size: int) -> dict:
    import torch

    _pictures(tmp / "pictures", count)
    _pictures(tmp / "warm-up", 2, seed=1)
    torch.manual_seed(0)
    tokenizer = VQTokenizer(VQConfig.preset(preset)).eval()
    # warm-up (first-call kernel selection, CUDA context) on two other pictures
    prepare_shards(tmp / "warm-up", tmp / "warm-up-shards", tokenizer, device=device, patch_size=patch_size,
                   progress=False, image_size=256)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    manifest = prepare_shards(tmp / "pictures", tmp / "shards", tokenizer, device=device, patch_size=patch_size,
                              image_size=256, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(int(np.prod(s)) for s in _token_shapes(tmp / "shards"))
    return {"what": "prepare", "device": device, "tokenizer": preset, "workers": None, "canvas": None,
            "batch": None, "items": manifest["counts"]["images"], "seconds": round(seconds, 3),
            "images_per_s": manifest["counts"]["images"] / seconds, "tokens_per_s": tokens / seconds,
            "goal_tokens_per_s": None, "fraction_of_goal": None}


def _token_shapes(folder: Path):
    import io
    import tarfile

    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".tokens.npy"):
                    yield np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False).shape


def write_token_shards(folder: Path, shards: int, per_shard: int, side: int, vocab: int, seed: int = 0) -> str:
    """Synthetic token shards (one [1, side, side] grid per sample, a short caption) for the loader."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"bench-{s:04d}.tar"), encoder=False) as sink:
            for i in range(per_shard):
                tokens = rng.integers(0, vocab, size=(1, side, side), dtype=np.int16)
                sink.write(encode_sample(f"s{s:04d}_{i:06d}", tokens, {"caption": f"sample {i}"}))
    return str(folder / f"bench-{{0000..{shards - 1:04d}}}.tar")


def bench_loader(pattern: str, model_cfg, canvas: int, batch: int, workers: int, batches: int, warmup: int) -> dict:
    cfg = DataConfig(shards=pattern, canvas=(1, canvas, canvas), num_workers=workers, shuffle_buffer=1000)
    loader = build_loader(cfg, model_cfg, 0, 1, batch)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(iterator)["tokens"].numel()
    seconds = time.perf_counter() - start
    del iterator
    per_s = tokens / seconds
    return {"what": "loader", "device": "cpu", "tokenizer": None, "workers": workers, "canvas": f"1x{canvas}x{canvas}",
            "batch": batch, "items": batches, "seconds": round(seconds, 3), "images_per_s": batches * batch / seconds,
            "tokens_per_s": per_s, "goal_tokens_per_s": GOAL_TOKENS_PER_S,
            "fraction_of_goal": per_s / GOAL_TOKENS_PER_S}


def run(opts) -> dict:
    extra = opts.extra
    quick = opts.quick
    model_cfg = NuwaConfig.preset(opts.preset)
    preset = extra.get("tokenizer", "taming-f16-16384" if opts.device == "cuda" else "demo-f8")
    canvas = int(extra.get("canvas", 64 if model_cfg.patch_size >= 16 else 16 * model_cfg.patch_size))
    batch = int(extra.get("batch", opts.micro_batch_size or 8))
    workers = int(extra.get("workers", 2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(bench_prepare(tmp / "prepare", opts.device, int(extra.get("images", 12 if quick else 96)), preset,
                                  int(extra.get("patch_size", 16))))
        pattern = write_token_shards(tmp / "tokens", shards=8 if quick else 16, per_shard=100 if quick else 400,
                                     side=canvas, vocab=model_cfg.vocab_size)
        # enough batches that every stream rebuilds segments (reads shards) inside the timed window
        steps = opts.steps or (400 if quick else 1500)
        for n in sorted({workers, 0}, reverse=True):
            rows.append(bench_loader(pattern, model_cfg, canvas, batch, n, steps, warmup=5 if quick else 20))
    return {"rows": rows, "metrics": ["seconds", "images_per_s", "tokens_per_s", "fraction_of_goal"],
            "required": ["what", "device", "seconds", "tokens_per_s"], "goal_tokens_per_s": GOAL_TOKENS_PER_S}
