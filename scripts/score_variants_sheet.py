"""Video metrics of the clips in a frames sheet of scripts/gpu_video_variants.sh (``video_variants_frames.png``:
per run, rows of text-to-video, animation and continuation clip 0, every frame, after a 110 px label
column), against the recipe's real held-out clips rendered here from their specs (the same worlds, bit
for bit). For when a device call ran out of time before the recipe's own evaluation: few clips per run,
so per-quarter SWD (every frame of a quarter pooled) rather than per frame.

    python scripts/score_variants_sheet.py video_variants_frames.png --runs base noise notime [--preset gpu]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from data_pipelines import landscape_video as LV
from nuwa_ds.metrics.swd import DescriptorSet, swd_between
from nuwa_ds.metrics.video import _clip_pyramids, clip_motion
from nuwa_ds.video_recipe import _specs, settings_for

LABEL = 110
SETS = ("text2video", "animation", "continuation")


def sheet_clips(path: str, runs: list[str], size: int) -> dict[str, list[np.ndarray]]:
    sheet = np.asarray(Image.open(path).convert("RGB"))
    frames = (sheet.shape[1] - LABEL) // size
    if sheet.shape[0] != len(runs) * len(SETS) * size:
        raise ValueError(f"{path}: {sheet.shape[0]} px high, expected {len(runs)} runs x {len(SETS)} rows x {size}")
    out = {}
    for r, run in enumerate(runs):
        rows = []
        for k in range(len(SETS)):
            y = (r * len(SETS) + k) * size
            rows.append(np.stack([sheet[y:y + size, LABEL + t * size:LABEL + (t + 1) * size] for t in range(frames)]))
        out[run] = rows
    return out


def quarter_swd(clips: list[np.ndarray], reference: list[np.ndarray], levels: int = 4, per_frame: int = 128,
                seed: int = 0) -> list[float]:
    """SWD x 1e3 of each quarter of the frame indices (every clip's frames of that quarter pooled) against
    every frame of the reference clips pooled."""
    ref = DescriptorSet(levels, seed=seed, tag=1)
    for k, clip in enumerate(reference):
        for t, bands in enumerate(_clip_pyramids(clip, levels)):
            ref.add_pyramid(bands, 16, k * 1000 + t)
    length = len(clips[0])
    q = length // 4
    values = []
    for part in range(4):
        d = DescriptorSet(levels, seed=seed, tag=2)
        for k, clip in enumerate(clips):
            for t, bands in enumerate(_clip_pyramids(clip[part * q:(part + 1) * q], levels)):
                d.add_pyramid(bands, per_frame, k * 1000 + t)
        values.append(swd_between(d, ref, count=min(len(d), len(ref)), seed=seed)["mean"])
    return values


def scores(clips: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Per-quarter SWD of ``clips`` against ``reference``, and each clip's jitter and velocity (px/frame)."""
    motions = [clip_motion(c) for c in clips]
    return {"swd_by_quarter": quarter_swd(clips, reference),
            "jitter": [round(m["jitter"], 2) for m in motions], "velocity": [round(m["velocity"], 2) for m in motions]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sheet")
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--preset", default="gpu")
    args = ap.parse_args()
    s = settings_for(args.preset, [])
    _, val_specs = _specs(s)
    real = [LV.render_clip(spec) for spec in val_specs[: s.videos]]
    half = len(real) // 2
    # floors by the same code: real clips as many as a run's rows are (clip 0, the clip the animation and the
    # continuation start from, and clip 1), and the first half of the real clips
    floor = [real[0], real[0], real[1]][:len(SETS)]
    result = {"real_clips_0_1": scores(floor, real[half:]),
              "real_half_a": {"swd_by_quarter": quarter_swd(real[:half], real[half:])}}
    for run, rows in sheet_clips(args.sheet, args.runs, s.size[1]).items():
        result[run] = {**scores(rows, real[half:]), "true_velocity": [round(-val_specs[0].true_shift, 3)]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
