"""Time ``prepare_shards`` on a folder of short MP4 clips (docs/benchmarks.md, "Data").

    python scripts/bench_prepare_videos.py --clips DIR --make 200 --frames 4 --size 64 --repeats 0  # the clips
    python scripts/bench_prepare_videos.py --clips DIR --workers 2 --repeats 3
    python scripts/bench_prepare_videos.py --clips DIR --workers 2 --repeats 3 --free-encode

Clips come from ``data_pipelines.landscape_video`` (``sample_clip_specs`` + ``write_clips``, MP4 only).
``--free-encode``: the tokenizer's ``encode`` returns zeros without running the network, so what is
left is decoding, resizing, cropping, bookkeeping and writing shards. Only the public
``prepare_shards`` API is used, so the same script times an older checkout: run it with
``PYTHONPATH`` set to the checkout to time. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def make_clips(folder: Path, count: int, frames: int, size: int):
    from data_pipelines.landscape_video import sample_clip_specs, write_clips

    specs = sample_clip_specs(count, split="train", frames=frames, size=(size, size))
    write_clips(folder, specs, formats=("mp4",), workers=2)


def tokenizer(free_encode: bool):
    import torch

    from nuwa_ds.tokenizer import VQConfig, VQTokenizer

    class FreeEncode(VQTokenizer):
        @torch.no_grad()
        def encode(self, images):
            f = self.downsample
            return torch.zeros(images.shape[0], images.shape[2] // f, images.shape[3] // f, dtype=torch.long)

    torch.manual_seed(0)
    cls = FreeEncode if free_encode else VQTokenizer
    return cls(VQConfig.preset("demo-f8", n_embed=256)).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", required=True, help="folder of clips (write_clips layout: DIR/mp4/*.mp4)")
    parser.add_argument("--make", type=int, default=0, help="write this many clips first")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--free-encode", action="store_true", help="tokenizer encode costs nothing")
    parser.add_argument("--ahead-pixels", type=int, default=None,
                        help="PrepareOptions.video_ahead_pixels (0: every video streamed in the main thread)")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)

    import torch

    from data_pipelines.prepare import prepare_shards

    folder = Path(args.clips)
    if args.make:
        make_clips(folder, args.make, args.frames, args.size)
    tok = tokenizer(args.free_encode)
    opts = dict(device="cpu", image_size=args.size, patch_size=2, fps=8, clip_frames=args.frames,
                batch_size=args.batch_size, workers=args.workers, progress=False)
    if args.ahead_pixels is not None:  # an older checkout has no such option
        opts["video_ahead_pixels"] = args.ahead_pixels
    for repeat in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="bench_prepare_videos_"))
        try:
            start = time.perf_counter()
            manifest = prepare_shards(folder / "mp4", out, tok, **opts)
            seconds = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
        videos = manifest["counts"].get("videos", 0)
        print(json.dumps({"label": args.label, "repeat": repeat, "workers": args.workers,
                          "free_encode": args.free_encode, "ahead_pixels": args.ahead_pixels,
                          "threads": torch.get_num_threads(), "videos": videos,
                          "samples": manifest["num_samples"], "seconds": round(seconds, 2),
                          "ms_per_clip": round(1000 * seconds / max(1, manifest["num_samples"]), 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
