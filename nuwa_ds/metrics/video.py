"""Video quality without downloaded networks: per-frame SWD by frame index (does a long video drift?)
and temporal consistency (does it move like the real clips?), each beside floors and ceilings
measured by the same code.

Sets (folders of clips, or lists of uint8 ``[T, H, W, 3]`` clips; every frame of every set one size):

- ``real``: held-out real clips, split by the seeded permutation of ``quality.split_halves`` into
  half A (``real_a``, the floor) and half B (``real_b``, the SWD reference);
- ``fake``: generated clips; ``paired=True`` says fake clip ``i`` continues / animates real clip
  ``i`` (sorted order), e.g. generated from its first frame;
- ``recon`` (optional): e.g. VQ reconstructions of real clips, matched to them by name (file or
  folder stem; list position for lists). One whose real clip lies in half B is left out of SWD;
- ``random_tokens`` (optional): e.g. decodes of uniformly random tokens (a ceiling);
- ``shuffled_real`` (temporal only): every real clip with its frames in a seeded non-identity
  permutation: real frames, no motion (a temporal ceiling; its SWD would equal the real one).

Per-frame SWD: the fake frames at index ``t`` against *all* frames of real half B pooled (the
reference is one set for every ``t``; see docs/decisions.md), with one descriptor count per index for
every row; rows ``real_a`` (floor), ``recon`` (VQ floor), ``random_tokens`` (ceiling). Summaries per
row: mean over the first and the last quarter of its indices, their ratio, and the last quarter over
the mean of the recon row.

Temporal: per clip, the shifts of consecutive frames by block matching (``temporal.clip_shifts``);
per set, speed, direction, jitter and frame-to-frame differences; every set's speed error and
frame-difference ratio against the real clips; with ``paired``, per-clip shift errors and whether
the first frame was kept.

Python: ``load_clips``, ``video_report``, ``format_video_report``.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from nuwa_ds.metrics.quality import split_halves
from nuwa_ds.metrics.swd import (DescriptorSet, NHOOD, check_settings, laplacian_pyramid, level_scales, num_levels,
                                 swd_between)
from nuwa_ds.metrics.temporal import clip_shifts
from nuwa_ds.tokenizer.media import iter_video_frames  # PyAV, as `prepare` reads videos

PathLike = Union[str, Path]
ClipSource = Union[PathLike, Sequence[np.ndarray], dict]

VIDEO_FILE_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# descriptor-set tags (they key the random streams of each set); the others key the shuffles
SWD_TAGS = {"real_a": 0, "real_b": 1, "fake": 2, "recon": 3, "random_tokens": 4}
_TAG_SHUFFLE_FRAMES = 31
SWD_ROLES = {"real_a": "floor: real half A", "fake": "score", "recon": "VQ floor: reconstructions",
             "random_tokens": "ceiling: random tokens"}
TEMPORAL_ROLES = {"real": "reference", "real_a": "floor: real half A vs half B", "fake": "score",
                  "recon": "floor: reconstructions", "random_tokens": "ceiling: random tokens",
                  "shuffled_real": "ceiling: real frames shuffled"}

__all__ = ["load_clips", "video_report", "format_video_report", "shuffle_frames", "clip_motion"]


# ----------------------------------------------------------------------------- loading

def _read_frame(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as exc:  # truncated / not a picture: name the file
        raise ValueError(f"cannot read frame {path}: {exc}") from exc


def _read_video(path: Path) -> list[np.ndarray]:
    try:
        if path.suffix.lower() == ".gif":  # Pillow composes every GIF frame onto the canvas
            from PIL import Image, ImageSequence

            with Image.open(path) as im:
                return [np.asarray(frame.convert("RGB")).copy() for frame in ImageSequence.Iterator(im)]
        return [np.asarray(image.convert("RGB")) for _, image in iter_video_frames(path)]
    except Exception as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from exc


def _stack(frames: list[np.ndarray], source: Path) -> np.ndarray:
    if not frames:
        raise ValueError(f"clip {source} holds no frames")
    sizes = sorted({f.shape[:2] for f in frames})
    if len(sizes) > 1:
        raise ValueError(f"clip {source} mixes frame sizes {sizes} (height, width)")
    return np.stack(frames).astype(np.uint8, copy=False)


def _clip_entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder not found: {folder}")
    entries = sorted(p for p in folder.iterdir()
                     if (p.is_file() and p.suffix.lower() in VIDEO_FILE_SUFFIXES) or p.is_dir())
    if not entries:
        pictures = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
        hint = (f"; it holds {len(pictures)} picture(s): a clip given as frames is a sub-folder, so point at "
                f"the folder above it") if pictures else ""
        raise ValueError(f"clip folder {folder} holds no clips (video files {', '.join(VIDEO_FILE_SUFFIXES)} "
                         f"or sub-folders of frame pictures){hint}")
    return entries


def load_clip(path: PathLike) -> np.ndarray:
    """One clip: a video file, or a folder of frame pictures (sorted by name) -> uint8 [T, H, W, 3]."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise ValueError(f"frame folder {path} holds no pictures ({', '.join(FRAME_SUFFIXES)})")
        return _stack([_read_frame(p) for p in frames], path)
    if not path.is_file():
        raise FileNotFoundError(f"clip not found: {path}")
    return _stack(_read_video(path), path)


def _load_named(folder: PathLike) -> tuple[list[str], list[np.ndarray]]:
    entries = _clip_entries(Path(folder))
    return [p.stem if p.is_file() else p.name for p in entries], [load_clip(p) for p in entries]


def load_clips(folder: PathLike) -> list[np.ndarray]:
    """The clips of ``folder``, sorted by name: each ``.gif`` / ``.mp4`` / ``.webm`` (/ ``.mov`` ...) file
    (GIFs by Pillow, the rest by PyAV as ``prepare`` reads them) and each sub-folder of frame pictures
    (frames sorted by name) is one uint8 ``[T, H, W, 3]`` clip. Other files are ignored."""
    return _load_named(folder)[1]


def _as_clips(source: ClipSource, role: str) -> tuple[list[str], list[np.ndarray], str]:
    """(names, clips, description) of a folder, a list of clips (named by position) or a dict."""
    if isinstance(source, (str, Path)):
        names, clips = _load_named(source)
        where = str(source)
    else:
        items = list(source.items()) if isinstance(source, dict) else [(str(i), c) for i, c in enumerate(source)]
        names, clips = [str(n) for n, _ in items], [np.asarray(c) for _, c in items]
        where = f"{len(clips)} clips given in memory"
        if not clips:
            raise ValueError(f"{role}: no clips given")
    for name, clip in zip(names, clips):
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"{role} clip {name}: expected uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
        if len(clip) < 2:
            raise ValueError(f"{role} clip {name} has {len(clip)} frame(s); motion needs at least 2")
    return names, clips, where


# ----------------------------------------------------------------------------- derived clips, motion

def shuffle_frames(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip with its frames in a random permutation, never the identity (T >= 2)."""
    perm = rng.permutation(len(clip))
    while np.array_equal(perm, np.arange(len(clip))):
        perm = rng.permutation(len(clip))
    return clip[perm]


def _aligned_difference(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """Mean |b - a| (0..255, over RGB) where the content of ``a`` moved by (dy, dx) to ``b``: compared
    on the overlap ``a[y, x]`` vs ``b[y + dy, x + dx]``; the whole frame when there is none left."""
    h, w = a.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        dy = dx = 0
    a_part = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    b_part = b[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return float(np.abs(b_part.astype(np.float32) - a_part.astype(np.float32)).mean())


def clip_motion(clip: np.ndarray) -> dict:
    """Motion of one clip: ``shifts`` [T-1, 2] (dy, dx) between consecutive frames (content moving
    right: dx > 0), ``velocity`` (mean dx, px/frame), ``dy`` (mean dy), ``jitter`` (std of dx),
    ``frame_diff`` (mean |frame t+1 - frame t|, 0..255) and ``frame_diff_aligned`` (the same after
    undoing the estimated shift rounded to whole pixels, on the overlap)."""
    shifts = clip_shifts(clip)
    diffs = [_aligned_difference(clip[t], clip[t + 1], 0, 0) for t in range(len(clip) - 1)]
    aligned = [_aligned_difference(clip[t], clip[t + 1], int(round(dy)), int(round(dx)))
               for t, (dy, dx) in enumerate(shifts)]
    return {"shifts": shifts, "velocity": float(shifts[:, 1].mean()), "dy": float(shifts[:, 0].mean()),
            "jitter": float(shifts[:, 1].std()), "frame_diff": float(np.mean(diffs)),
            "frame_diff_aligned": float(np.mean(aligned))}


def _parallel_map(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on threads (NumPy's FFTs and sorts release the GIL): the same results in
    the same order, each item computed alone, so the figures do not depend on the thread count."""
    workers = min(len(items), os.cpu_count() or 1, 16)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _set_motion(motions: list[dict]) -> dict:
    velocity = np.array([m["velocity"] for m in motions])
    return {"clips": len(motions),
            "speed": float(np.abs(velocity).mean()),  # px/frame, mean over clips of |mean dx|
            "velocity": float(velocity.mean()),
            "right": float((velocity > 0).mean()),  # fraction of clips whose content moves right
            "dy": float(np.mean([m["dy"] for m in motions])),
            "jitter": float(np.mean([m["jitter"] for m in motions])),
            "frame_diff": float(np.mean([m["frame_diff"] for m in motions])),
            "frame_diff_aligned": float(np.mean([m["frame_diff_aligned"] for m in motions])),
            "clip_velocity": [round(v, 4) for v in velocity.tolist()]}


MIN_FRAME_DIFF = 0.1
"""Grey levels: a reference frame difference below it (a pure shift, once aligned) gives no ratio."""


def _relative(value: float, reference: float, floor: float = 0.0) -> Optional[float]:
    return None if reference <= floor else float(value / reference)


def _compare_motion(summary: dict, reference: dict) -> dict:
    """Speed error and frame-difference ratios of one set against the reference set."""
    error = _relative(abs(summary["speed"] - reference["speed"]), reference["speed"])
    return {"speed_error": error,
            "frame_diff_ratio": _relative(summary["frame_diff"], reference["frame_diff"], MIN_FRAME_DIFF),
            "frame_diff_aligned_ratio": _relative(summary["frame_diff_aligned"], reference["frame_diff_aligned"],
                                                  MIN_FRAME_DIFF)}


def _paired_motion(motions: list[dict], real_motions: list[dict], clips: list[np.ndarray],
                   real_clips: list[np.ndarray], min_speed: float) -> dict:
    """Per pair (clip i vs real clip i): |v - v_real| / |v_real| over the pairs whose real clip moves
    at least ``min_speed`` px/frame, |v - v_real| over all, and whether frame 0 equals the real one."""
    errors = [abs(m["velocity"] - r["velocity"]) / abs(r["velocity"])
              for m, r in zip(motions, real_motions) if abs(r["velocity"]) >= min_speed]
    first = [int(np.abs(c[0].astype(np.int16) - r[0].astype(np.int16)).max()) for c, r in zip(clips, real_clips)]
    absolute = [abs(m["velocity"] - r["velocity"]) for m, r in zip(motions, real_motions)]
    return {"pairs": len(motions), "pairs_scored": len(errors),
            "shift_error": float(np.mean(errors)) if errors else None,
            "shift_error_px": float(np.mean(absolute)),  # every pair, still ones too (px/frame)
            "clip_shift_error": [round(e, 4) for e in errors],
            "first_frame_equal": all(d == 0 for d in first),
            "first_frame_equal_clips": sum(d == 0 for d in first),
            "first_frame_max_abs_diff": max(first)}


# ----------------------------------------------------------------------------- per-frame SWD

def _clip_pyramids(clip: np.ndarray, levels: int) -> list[list[torch.Tensor]]:
    """uint8 [T, H, W, 3] -> per frame its pyramid (``laplacian_pyramid``), made in one batched call
    (the filter is per channel, so the bands equal those of each frame alone, bitwise)."""
    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # [T, 3, H, W]
    t, c, h, w = frames.shape
    bands = [b.reshape(t, c, *b.shape[1:]) for b in laplacian_pyramid(frames.reshape(t * c, h, w), levels)]
    return [[b[k] for b in bands] for k in range(t)]


def _per_frame_count(descriptors: int, clips: int, cap: int) -> int:
    return max(1, min(cap, math.ceil(descriptors / max(clips, 1))))


def _frame_swd(sets: dict[str, list[np.ndarray]], reference: list[np.ndarray], *, levels: int, descriptors: int,
               cap: int, seed: int, dir_repeats: int, dirs_per_repeat: int) -> dict:
    """Rows of SWD x 1e3 by frame index: each set's frames at index t vs the pooled reference frames."""
    ref_frames = sum(len(c) for c in reference)
    ref_count = _per_frame_count(descriptors, ref_frames, cap)
    ref = DescriptorSet(levels, seed=seed, tag=SWD_TAGS["real_b"])
    for k, clip in enumerate(reference):
        for t, bands in enumerate(_clip_pyramids(clip, levels)):
            ref.add_pyramid(bands, ref_count, k * 100_000 + t)
    length = max(len(c) for c in sets["fake"])
    per_frame = {name: _per_frame_count(descriptors, len(clips), cap) for name, clips in sets.items()}
    by_index = {}  # per set and frame index: the descriptors of that index's frames (None: no clip that long)
    for name, clips in sets.items():
        by_index[name] = [DescriptorSet(levels, seed=seed, tag=SWD_TAGS[name]) if any(len(c) > t for c in clips)
                          else None for t in range(length)]
        for k, clip in enumerate(clips):
            for t, bands in enumerate(_clip_pyramids(clip[:length], levels)):
                by_index[name][t].add_pyramid(bands, per_frame[name], k * 100_000 + t)
    counts = [min([descriptors, len(ref)] + [len(by_index[name][t]) for name in sets if by_index[name][t] is not None])
              for t in range(length)]
    jobs = [(name, t) for t in range(length) for name in sets]
    for d in [ref] + [d for row in by_index.values() for d in row if d is not None]:
        for level in range(levels):
            d.level(level)  # joined once here: the threads below only read the sets

    def one(job) -> Optional[float]:
        name, t = job
        d = by_index[name][t]
        return None if d is None else swd_between(d, ref, count=counts[t], dir_repeats=dir_repeats,
                                                  dirs_per_repeat=dirs_per_repeat, seed=seed)["mean"]

    rows = {name: [] for name in sets}
    for (name, _), value in zip(jobs, _parallel_map(one, jobs)):
        rows[name].append(value)
    return {"rows": rows, "descriptors": counts, "descriptors_per_frame": per_frame,
            "reference": {"clips": len(reference), "frames": ref_frames, "descriptors_per_frame": ref_count,
                          "descriptors": len(ref)}}


def _quarters(row: list[Optional[float]]) -> dict:
    values = [v for v in row if v is not None]
    q = max(1, len(values) // 4)
    first, last = float(np.mean(values[:q])), float(np.mean(values[-q:]))
    return {"frames": len(values), "quarter": q, "mean": float(np.mean(values)), "first_quarter": first,
            "last_quarter": last, "last_over_first": _relative(last, first)}


# ----------------------------------------------------------------------------- the report

def _check_truth(true_dx, clips: int) -> Optional[list[float]]:
    if true_dx is None:
        return None
    values = [true_dx] * clips if np.isscalar(true_dx) else list(true_dx)
    if len(values) != clips:
        raise ValueError(f"true_dx: {len(values)} values for {clips} real clips (give one, or one per clip)")
    if not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in values):
        raise ValueError(f"true_dx must be finite shifts in px/frame, got {true_dx!r}")
    if np.isscalar(true_dx) and true_dx == 0:
        raise ValueError("true_dx 0: a still camera has no relative speed error; give the pan's shift")
    return [float(v) for v in values]


def video_report(real: ClipSource, fake: ClipSource, *, recon: Optional[ClipSource] = None,
                 random_tokens: Optional[ClipSource] = None, paired: bool = False, seed: int = 0,
                 descriptors: int = 2048, min_size: int = 16, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                 min_speed: float = 0.25, true_dx: Union[None, float, Sequence[float]] = None, swd: bool = True,
                 temporal: bool = True) -> dict:
    """Per-frame SWD (x 1e3) by frame index and temporal consistency of ``fake`` beside floors and
    ceilings (module docstring). ``descriptors``: per level, frame index and set, spread over that
    index's clips (at most as many per frame as the coarsest level has 7x7 positions); every row at
    one index is subsampled to the same count. ``min_speed`` (px/frame): pairs whose real clip moves
    slower are left out of the paired shift error. ``true_dx`` (px/frame, when known: the real clips'
    content shift per frame, one number or one per real clip; a camera panning right by p px/frame
    gives -p): the real clips' estimates are compared with it clip by clip (the estimator's own
    error; clips truly slower than ``min_speed`` left out), with ``paired`` the fake clips' too, and
    with one number every set's speed. Returns a JSON-ready dict."""
    check_settings(descriptors, 256 * 256, min_size, dir_repeats, dirs_per_repeat, None)
    if not (swd or temporal):
        raise ValueError("nothing to compute: enable swd and/or temporal")
    start = time.perf_counter()
    sources = {"real": real, "fake": fake, "recon": recon, "random_tokens": random_tokens}
    loaded = {role: _as_clips(src, role) for role, src in sources.items() if src is not None}
    sizes = {role: sorted({c.shape[1:3] for c in clips}) for role, (_, clips, _) in loaded.items()}
    for role, s in sizes.items():
        if len(s) > 1:
            raise ValueError(f"{role} clips differ in frame size {s}: every frame of every set must be one size")
    if len({s[0] for s in sizes.values()}) > 1:
        raise ValueError("sets differ in frame size (height, width): "
                         + ", ".join(f"{role} {s[0]}" for role, s in sizes.items()))
    height, width = sizes["real"][0]
    real_names, real_clips, _ = loaded["real"]
    fake_clips = loaded["fake"][1]
    if len(real_clips) < 2:
        raise ValueError(f"real: {len(real_clips)} clip(s); the real-vs-real floor splits them into two halves, "
                         f"give at least 2 (better 2x as many as the fake clips)")
    if paired and len(fake_clips) != len(real_clips):
        raise ValueError(f"paired: fake clip i continues real clip i, but there are {len(fake_clips)} fake and "
                         f"{len(real_clips)} real clips")
    truth = _check_truth(true_dx, len(real_clips))
    half_a, half_b = split_halves(len(real_clips), seed)
    in_b = set(half_b)
    result = {"seed": seed, "paired": paired, "frame_size": [height, width],
              "sets": {role: {"source": where, "clips": len(clips), "frames": [min(map(len, clips)),
                                                                                max(map(len, clips))]}
                       for role, (_, clips, where) in loaded.items()}}
    result["sets"]["real"].update(half_a=len(half_a), half_b=len(half_b))
    recon_real = None  # index of the real clip each recon clip reconstructs (by name), or None
    if "recon" in loaded:
        index_of = {name: i for i, name in enumerate(real_names)}
        recon_real = [index_of.get(name) for name in loaded["recon"][0]]
        result["sets"]["recon"]["matched_to_real"] = sum(i is not None for i in recon_real)

    if swd:
        levels = num_levels(height, width, min_size)
        if levels < 1:
            raise ValueError(f"frames are {height}x{width} px; SWD needs at least {min_size}x{min_size}")
        coarse = (height, width)
        for _ in range(levels - 1):
            coarse = ((coarse[0] + 1) // 2, (coarse[1] + 1) // 2)
        cap = (coarse[0] - NHOOD + 1) * (coarse[1] - NHOOD + 1)  # distinct positions of the coarsest level
        fake_for_swd = fake_clips
        if paired:  # a fake clip animated from a half-B clip would be compared with its own source
            fake_for_swd = [c for i, c in enumerate(fake_clips) if i not in in_b]
        swd_sets = {"real_a": [real_clips[i] for i in half_a], "fake": fake_for_swd}
        if "recon" in loaded:
            keep = [c for c, i in zip(loaded["recon"][1], recon_real) if i not in in_b]
            result["sets"]["recon"]["left_out_half_b"] = len(recon_real) - len(keep)
            if not keep:
                raise ValueError("recon: every clip reconstructs a real clip of half B (the SWD reference); "
                                 "give reconstructions of more real clips")
            swd_sets["recon"] = keep
        if "random_tokens" in loaded:
            swd_sets["random_tokens"] = loaded["random_tokens"][1]
        frame = _frame_swd(swd_sets, [real_clips[i] for i in half_b], levels=levels, descriptors=descriptors,
                           cap=cap, seed=seed, dir_repeats=dir_repeats, dirs_per_repeat=dirs_per_repeat)
        summary = {name: _quarters(row) for name, row in frame["rows"].items()}
        recon_mean = summary["recon"]["mean"] if "recon" in summary else None
        for s in summary.values():
            s["last_quarter_over_recon"] = None if recon_mean is None else _relative(s["last_quarter"], recon_mean)
        frame.update(summary=summary, levels=levels, level_scales=level_scales(levels),
                     fake_clips_used=len(fake_for_swd), roles={n: SWD_ROLES[n] for n in frame["rows"]},
                     reference_set="real half B, every frame pooled")
        result["swd"] = frame
    swd_s = time.perf_counter() - start

    if temporal:
        motion = {"real": _parallel_map(clip_motion, real_clips), "fake": _parallel_map(clip_motion, fake_clips)}
        shuffled = [shuffle_frames(c, np.random.default_rng([seed, _TAG_SHUFFLE_FRAMES, i]))
                    for i, c in enumerate(real_clips)]
        motion["shuffled_real"] = _parallel_map(clip_motion, shuffled)
        for role in ("recon", "random_tokens"):
            if role in loaded:
                motion[role] = _parallel_map(clip_motion, loaded[role][1])
        sets = {role: _set_motion(m) for role, m in motion.items()}
        sets["real_a"] = _set_motion([motion["real"][i] for i in half_a])
        real_b = _set_motion([motion["real"][i] for i in half_b])
        for role, s in sets.items():
            if role != "real":
                s.update(_compare_motion(s, real_b if role == "real_a" else sets["real"]))
        if truth is not None:
            if len(set(truth)) == 1 and truth[0] != 0:
                for summary_of_set in sets.values():
                    summary_of_set["true_speed_error"] = abs(summary_of_set["speed"] - abs(truth[0])) / abs(truth[0])
            compared = {"real": motion["real"]}
            if paired:
                compared["fake"] = motion["fake"]
            result_truth = {"true_dx": truth[0] if len(set(truth)) == 1 else "per clip"}
            for role, motions in compared.items():
                errors = [abs(m["velocity"] - dx) / abs(dx) for m, dx in zip(motions, truth) if abs(dx) >= min_speed]
                result_truth[role] = {"clips_scored": len(errors), "within_10pct": sum(e <= 0.1 for e in errors),
                                      "error": float(np.mean(errors)) if errors else None}
        order = ["real", "real_a", "fake", "recon", "random_tokens", "shuffled_real"]
        temporal_result = {"sets": {r: sets[r] for r in order if r in sets},
                           "roles": {r: TEMPORAL_ROLES[r] for r in order if r in sets},
                           "min_speed": min_speed}
        if truth is not None:
            temporal_result["truth"] = result_truth
        pairs = {"shuffled_real": _paired_motion(motion["shuffled_real"], motion["real"], shuffled, real_clips,
                                                 min_speed)}
        if paired:
            pairs["fake"] = _paired_motion(motion["fake"], motion["real"], fake_clips, real_clips, min_speed)
        if "recon" in loaded:
            matched = [(k, i) for k, i in enumerate(recon_real) if i is not None]
            if matched:
                pairs["recon"] = _paired_motion([motion["recon"][k] for k, _ in matched],
                                                [motion["real"][i] for _, i in matched],
                                                [loaded["recon"][1][k] for k, _ in matched],
                                                [real_clips[i] for _, i in matched], min_speed)
        temporal_result["paired"] = {r: pairs[r] for r in ("fake", "recon", "shuffled_real") if r in pairs}
        result["temporal"] = temporal_result
    result["seconds"] = {"swd": round(swd_s, 3), "total": round(time.perf_counter() - start, 3)}
    return result


# ----------------------------------------------------------------------------- printing

def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_video_report(report: dict) -> list[str]:
    """The printed tables: every score beside its floors and ceilings."""
    lines = []
    if "swd" in report:
        s = report["swd"]
        ref = s["reference"]
        lines.append(f"Per-frame SWD x1e3 vs real half B pooled ({ref['clips']} clips, {ref['frames']} frames), "
                     f"levels {' '.join(s['level_scales'])}, {min(s['descriptors'])}-{max(s['descriptors'])} "
                     f"descriptors per level and index, seed {report['seed']}:")
        for name, row in s["rows"].items():
            q = s["summary"][name]
            curve = " ".join(_fmt(v, ".1f") for v in row)
            lines.append(f"  {name:<14} first quarter {q['first_quarter']:8.2f}  last quarter {q['last_quarter']:8.2f}"
                         f"  last/first {_fmt(q['last_over_first'], '.3f')}  last/recon "
                         f"{_fmt(q['last_quarter_over_recon'], '.3f')}  {s['roles'][name]}")
            lines.append(f"  {'':<14} by frame: {curve}")
    if "temporal" in report:
        t = report["temporal"]
        lines.append("Temporal (block matching between consecutive frames; dx > 0: content moves right):")
        for name, m in t["sets"].items():
            lines.append(f"  {name:<14} speed {m['speed']:6.3f} px/frame  right {m['right']:4.2f}  "
                         f"jitter {m['jitter']:6.3f}  frame diff {m['frame_diff']:6.2f} (aligned "
                         f"{m['frame_diff_aligned']:6.2f})  speed error {_fmt(m.get('speed_error'))}  diff ratio "
                         f"{_fmt(m.get('frame_diff_ratio'))} (aligned {_fmt(m.get('frame_diff_aligned_ratio'))})"
                         + (f"  vs true shift {m['true_speed_error']:.3f}" if "true_speed_error" in m else "")
                         + f"  {t['roles'][name]}")
        for role, figures in t.get("truth", {}).items():
            if role != "true_dx":
                lines.append(f"  vs true shift ({t['truth']['true_dx']}): {role} clips within 10% "
                             f"{figures['within_10pct']}/{figures['clips_scored']}, "
                             f"mean error {_fmt(figures['error'])}")
        for name, p in t["paired"].items():
            lines.append(f"  paired {name:<7} shift error {_fmt(p['shift_error'])} ({p['pairs_scored']}/{p['pairs']} "
                         f"pairs; {p['shift_error_px']:.3f} px/frame over all)  first frame equal {p['first_frame_equal_clips']}/{p['pairs']} (max abs diff "
                         f"{p['first_frame_max_abs_diff']})")
    return lines
