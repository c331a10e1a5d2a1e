"""``nuwa-ds landscape-videos``: procedural video clips with ground truth and captions.

A clip is a camera panning over a :class:`~data_pipelines.landscapes.World` while its clouds drift
and its sun rises or sets: frame ``t`` is the world window at ``(x0 + pan * t, y0)`` of
``width x height`` world px, rendered at time ``t`` (``World.render(..., t=t, cloud_drift=...,
sun_rise=...)``), box-filtered down to ``size`` output px. Everything is a pure function of the
:class:`ClipSpec`: the same spec gives the same clip bitwise on every machine (the World's rules,
plus a box filter summed in a fixed order).

Ground truth: ``pan`` is an integer number of world px per frame, so the true shift between frames
is exact: ``pan * size_w / width`` output px (the content moves by minus that). The attributes a
caption states (:data:`ATTRIBUTES`) come from the generator's parameters (:func:`true_attributes`)
and are the attributes of **frame 0**: the sun moves (``sun_rise``) and may leave the frame later in
a long clip. :func:`read_attributes` reads them back from pixels only; its accuracy on real clips
(:func:`reader_accuracy`) is the ceiling for generated ones (docs/decisions.md, "Procedural video
and captions").

The CLI writes each clip as MP4 (PyAV, h264) and/or GIF (Pillow) and/or a folder of PNG frames, a
``captions.jsonl`` that ``nuwa-ds prepare --captions`` reads (keyed by relative path), and
``landscape_videos.json`` (generator version, split, every clip's spec, true attributes, caption).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from data_pipelines.landscapes import DEFAULT_WORLD_SEED_BASE, F32, GENERATOR_VERSION as WORLD_VERSION
from data_pipelines.landscapes import World, _clip01, parse_size
from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.metrics.temporal import clip_shifts

GENERATOR_VERSION = "landscape-video-1"
MANIFEST_FILE = "landscape_videos.json"
CAPTIONS_FILE = "captions.jsonl"
FORMATS = ("mp4", "gif", "frames")
SPLITS = {"train": 0, "val": 1}
MAX_FRAMES = 4096

HORIZON_ROWS = (0.55, 0.8)
"""Where the water line lies in a sampled window (share of its height from the top): every frame
shows sky, ridges and water."""
PAN_RANGE = (1.0, 4.0)
"""Pan speed of a sampled moving clip, output px per frame (rounded to whole world px)."""
CLOUD_DRIFT_RANGE = 1.5
"""Sampled cloud drift, world px per frame, uniform in [-1.5, 1.5]."""
SUN_RISE_RANGE = 0.6
"""Sampled sun motion, world px per frame, uniform in [-0.6, 0.6] (< 0 rises)."""
SUN_THIRDS = {"left": (0.1, 0.26), "centre": (0.4, 0.6), "right": (0.74, 0.9)}
"""Where a sampled clip puts its sun in frame 0 (share of the width): well inside each third."""
NO_SUN_MARGIN = 0.25
"""A sampled sunless clip keeps every sun this share of the width outside frame 0's columns."""


@dataclass
class ClipSpec:
    """One clip: a window of a world, its motion, its output size. All lengths in world px unless
    said otherwise."""

    world_seed: int
    x0: int
    """Left column of frame 0's window."""
    y0: int
    """Top row of every frame's window (the camera pans horizontally)."""
    width: int
    """Window width; a multiple of size[0] (frames are box-filtered down by an integer factor)."""
    height: int
    """Window height; a multiple of size[1]."""
    size: tuple
    """Output frame size (w, h) in px."""
    frames: int
    """Number of frames T."""
    pan: int = 0
    """Camera motion per frame (> 0: the camera moves right, so the content moves left)."""
    cloud_drift: float = 0.0
    """Cloud motion per frame (> 0: right), independent of the pan."""
    sun_rise: float = 0.0
    """Sun motion per frame along y (< 0: up)."""
    fps: float = 8.0

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size) if isinstance(self.size, (list, tuple)) else self.size
        self.validate()

    def validate(self):
        for name in ("world_seed", "x0", "y0", "width", "height", "frames", "pan"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise ValueError(f"ClipSpec.{name} must be an integer, got {val!r}")
            setattr(self, name, int(val))
        if not (isinstance(self.size, tuple) and len(self.size) == 2
                and all(isinstance(v, int) and v > 0 for v in self.size)):
            raise ValueError(f"ClipSpec.size must be (width, height) > 0, got {self.size!r}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"ClipSpec window must be positive, got {self.width}x{self.height}")
        if self.width % self.size[0] or self.height % self.size[1]:
            raise ValueError(f"ClipSpec window {self.width}x{self.height} must be an integer multiple of the "
                             f"output size {self.size[0]}x{self.size[1]} (frames are box-filtered down)")
        if not 1 <= self.frames <= MAX_FRAMES:
            raise ValueError(f"ClipSpec.frames must be in [1, {MAX_FRAMES}], got {self.frames}")
        for name in ("cloud_drift", "sun_rise", "fps"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(val)):
                raise ValueError(f"ClipSpec.{name} must be a finite number, got {val!r}")
            setattr(self, name, float(val))
        if self.fps <= 0:
            raise ValueError(f"ClipSpec.fps must be > 0, got {self.fps}")

    @property
    def scale(self) -> int:
        """World px per output px (horizontal)."""
        return self.width // self.size[0]

    @property
    def true_shift(self) -> float:
        """The camera's motion per frame in output px (> 0: right); content moves by minus this."""
        return self.pan * self.size[0] / self.width

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClipSpec":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ClipSpec fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k == "size" else v) for k, v in d.items()})


@lru_cache(maxsize=64)
def _world(seed: int) -> World:
    return World(seed)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _box_down(img: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """float32 [H, W, 3] -> [H/fy, W/fx, 3], the mean of each block, summed in a fixed order."""
    if fy == fx == 1:
        return img
    acc = img[0::fy, 0::fx].copy()
    for dy in range(fy):
        for dx in range(fx):
            if dy or dx:
                acc += img[dy::fy, dx::fx]
    return acc * F32(1.0 / (fy * fx))


def render_frame(spec: ClipSpec, t: int) -> np.ndarray:
    """Frame ``t`` of the clip: uint8 [h, w, 3]."""
    world = _world(spec.world_seed)
    f = world.render_float(spec.x0 + spec.pan * int(t), spec.y0, spec.width, spec.height, t=int(t),
                           cloud_drift=spec.cloud_drift, sun_rise=spec.sun_rise)
    f = _box_down(_clip01(f), spec.height // spec.size[1], spec.width // spec.size[0])
    return np.rint(_clip01(f) * F32(255)).astype(np.uint8)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """uint8 [T, h, w, 3]."""
    if not isinstance(spec, ClipSpec):
        raise ValueError(f"render_clip needs a ClipSpec, got {type(spec).__name__}")
    spec.validate()
    return np.stack([render_frame(spec, t) for t in range(spec.frames)])


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
SKY_FAMILY = {"dawn": "dawn", "dusk": "dusk", "golden": "golden", "misty": "misty", "night": "night",
              "noon": "noon"}
"""World palette -> sky class (palettes the reader cannot tell apart share a class)."""
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "sky": tuple(sorted(set(SKY_FAMILY.values()))),
    "sun": ("none", "left", "centre", "right"),
    "motion": ("left", "right", "still"),
}
"""Attribute -> its classes. ``sun``: where the sun's (at night the moon's) disk is in frame 0;
``motion``: where the camera moves."""


def visible_sun(spec: ClipSpec) -> Optional[tuple[float, float]]:
    """(u, v): the centre of the sun visible in frame 0 as shares of the window's width and height, or
    None. Visible: its centre inside the window and at least half a radius above every ridge line
    across the disk's columns (above the water line too)."""
    world = _world(spec.world_seed)
    R = world.sun_radius
    for sx, sy in world.suns(spec.x0, spec.x0 + spec.width):
        if not (spec.x0 <= sx < spec.x0 + spec.width and spec.y0 <= sy < spec.y0 + spec.height):
            continue
        cols = np.arange(math.floor(sx - R), math.ceil(sx + R) + 1, dtype=np.int64)
        if sy + 0.5 * R <= float(world.ridge_lines(cols).min()):
            return (sx - spec.x0) / spec.width, (sy - spec.y0) / spec.height
    return None


def sun_disc(spec: ClipSpec) -> Optional[tuple[float, float, float]]:
    """(u, v, r): the visible sun of frame 0 (:func:`visible_sun`) with its radius r as a share of the
    window's width, or None."""
    centre = visible_sun(spec)
    return None if centre is None else (*centre, _world(spec.world_seed).sun_radius / spec.width)


def _third(u: float) -> str:
    return "left" if u < 1 / 3 else ("centre" if u < 2 / 3 else "right")


def true_attributes(spec: ClipSpec) -> dict[str, str]:
    """The attributes of frame 0 from the generator's parameters; ``motion`` only when T > 1."""
    world = _world(spec.world_seed)
    sun = visible_sun(spec)
    attrs = {"sky": SKY_FAMILY[world.palette_name], "sun": "none" if sun is None else _third(sun[0])}
    if spec.frames > 1:
        attrs["motion"] = "still" if spec.pan == 0 else ("right" if spec.pan > 0 else "left")
    return attrs


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _sample_one(index: int, split: str, frames: int, size, window, seed: int, world_seed: int,
                fps: float) -> ClipSpec:
    """Clip ``index``: its classes cycle (motion fastest, then sun) so that every combination is
    equally common; everything else is drawn from the clip's own generator."""
    rng = _clip_rng(seed, split, index)
    motion = ATTRIBUTES["motion"][index % 3]
    sun = ATTRIBUTES["sun"][(index // 3) % 4]
    world = _world(world_seed)
    W, Hw = window
    H = world.horizon
    scale = W / size[0]
    pan = 0 if motion == "still" else max(1, round(float(rng.uniform(*PAN_RANGE)) * scale))
    pan = -pan if motion == "left" else pan
    cloud_drift = round(float(rng.uniform(-CLOUD_DRIFT_RANGE, CLOUD_DRIFT_RANGE)), 3)
    sun_rise = round(float(rng.uniform(-SUN_RISE_RANGE, SUN_RISE_RANGE)), 3)
    y_lo, y_hi = H - round(HORIZON_ROWS[1] * Hw), H - round(HORIZON_ROWS[0] * Hw)
    R = world.sun_radius
    for _ in range(1000):
        xc = int(rng.integers(-1_000_000, 1_000_000))
        if sun == "none":
            m = NO_SUN_MARGIN * W
            if any(xc - m <= sx <= xc + W + m for sx, _ in world.suns(xc - m, xc + W + m)):
                continue
            x0, y0 = xc, int(rng.integers(y_lo, y_hi + 1))
        else:
            sx, sy = next((s for s in world.suns(xc, xc + world.sun_period) if s[0] >= xc), (None, None))
            if sx is None:
                continue
            cols = np.arange(math.floor(sx - 2 * R), math.ceil(sx + 2 * R) + 1, dtype=np.int64)
            if sy + 1.5 * R > float(world.ridge_lines(cols).min()):
                continue  # behind (or touching) the ridges
            top = min(y_hi, math.floor(sy - R - 0.06 * Hw))  # the disk well inside the frame
            if top < y_lo:
                continue
            y0 = int(rng.integers(y_lo, top + 1))
            x0 = round(sx - float(rng.uniform(*SUN_THIRDS[sun])) * W)
        spec = ClipSpec(world_seed=world_seed, x0=int(x0), y0=int(y0), width=W, height=Hw, size=tuple(size),
                        frames=frames, pan=int(pan), cloud_drift=cloud_drift, sun_rise=sun_rise, fps=fps)
        if true_attributes(spec)["sun"] == sun:
            return spec
    raise RuntimeError(f"world {world_seed}: found no window with sun {sun!r} in 1000 tries")


def sample_clip_specs(count: int, *, split: str = "train", frames: int = 16, size=(128, 128),
                      window=(512, 512), seed: int = 0, world_seed_base: Optional[int] = None,
                      fps: float = 8.0) -> list[ClipSpec]:
    """``count`` clips, clip i of world ``world_seed_base + i`` (default: the split's base, as in
    ``nuwa-ds landscapes``: train and val worlds are disjoint). Balanced: motion left / right / still
    and sun none / left / centre / right cycle over i (every combination equally often); sky follows
    the world's palette (uniform over palettes). Clip i depends only on (seed, split, i, sizes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    size, window = _pair("size", size), _pair("window", window)
    if window[0] % size[0] or window[1] % size[1]:
        raise ValueError(f"window {window[0]}x{window[1]} must be an integer multiple of size {size[0]}x{size[1]}")
    if window[1] < 64 * (window[1] // size[1]) and window[1] < 256:
        raise ValueError(f"window height {window[1]} is too small to show sky, ridges and water (>= 256)")
    if not 1 <= int(frames) <= MAX_FRAMES:
        raise ValueError(f"frames must be in [1, {MAX_FRAMES}], got {frames}")
    if world_seed_base is None:
        if count > 1_000_000:
            raise ValueError("count above 1000000 needs an explicit world_seed_base to keep splits disjoint")
        world_seed_base = DEFAULT_WORLD_SEED_BASE[split]
    return [_sample_one(i, split, int(frames), size, window, int(seed), int(world_seed_base) + i, float(fps))
            for i in range(int(count))]


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, str):
        return parse_size(value)
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height), got {value!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{name} must be positive, got {w}x{h}")
    return w, h


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------
SKY_WORDS = {"dawn": "a pink dawn sky", "dusk": "an orange dusk sky", "golden": "a golden afternoon sky",
             "misty": "a pale misty sky", "night": "a dark night sky", "noon": "a clear blue noon sky"}
SUN_WORDS = {"none": "no sun in view", "left": "the sun on the left", "centre": "the sun in the middle",
             "right": "the sun on the right"}
MOON_WORDS = {"none": "no moon in view", "left": "the moon on the left", "centre": "the moon in the middle",
              "right": "the moon on the right"}
MOTION_WORDS = {"left": "panning left", "right": "panning right", "still": "a still camera"}
_TEMPLATES = ("{sky} over ridges and a lake, {sun}, {motion}",
              "{motion} over ridges and a lake under {sky}, {sun}",
              "ridges and a lake under {sky}, {sun}, {motion}")


def caption(attrs: dict, variant: int = 0) -> str:
    """The caption of an attribute dict (``motion`` optional: pictures). ``variant`` picks one of a
    few phrasings (any integer; deterministic); every phrasing parses back (:func:`parse_caption`)."""
    for key in ("sky", "sun"):
        if key not in attrs:
            raise ValueError(f"caption needs the attribute {key!r}, got {sorted(attrs)}")
    for key, val in attrs.items():
        if key not in ATTRIBUTES or val not in ATTRIBUTES[key]:
            raise ValueError(f"unknown attribute {key}={val!r}; classes: {ATTRIBUTES}")
    sun = (MOON_WORDS if attrs["sky"] == "night" else SUN_WORDS)[attrs["sun"]]
    sky = SKY_WORDS[attrs["sky"]]
    if "motion" not in attrs:
        return f"{sky} over ridges and a lake, {sun}"
    text = _TEMPLATES[int(variant) % len(_TEMPLATES)].format(sky=sky, sun=sun, motion=MOTION_WORDS[attrs["motion"]])
    return text


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption states (inverse of :func:`caption`)."""
    out = {}
    for key, words in (("sky", SKY_WORDS), ("sun", {**SUN_WORDS, **{f"moon {k}": v for k, v in MOON_WORDS.items()}}),
                       ("motion", MOTION_WORDS)):
        hits = {cls.split()[-1] for cls, phrase in words.items() if phrase in text}
        if len(hits) > 1:
            raise ValueError(f"caption {text!r} states several {key} classes: {sorted(hits)}")
        if hits:
            out[key] = hits.pop()
    if "sky" not in out or "sun" not in out:
        raise ValueError(f"not a landscape caption: {text!r}")
    return out


# ---------------------------------------------------------------------------------------------
# reading attributes from pixels
# ---------------------------------------------------------------------------------------------
READER_FILE = Path(__file__).with_name("landscape_video_reader.json")
"""The sky reader's fitted parameters (``fit_sky_reader``; train-split worlds only)."""
SUN_RING = 0.07
"""Radius of the ring a sun must outshine, as a share of the frame width (~1.5 sun radii)."""
SUN_BRIGHTEST = 0.975
"""Only the brightest 2.5% of the (blurred) pixels can be a sun's centre."""
SUN_CONTRAST = 0.0225
"""How much brighter (luma in [0, 1]) the sun's centre is than the brightest point of its ring."""
STILL_SHIFT = 0.5
"""Median |shift| (output px per frame) below which the camera counts as still."""
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, h, w, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 1 or min(frames.shape[1:3]) < 16:
        raise ValueError(f"frames must be at least 1 x 16 x 16 px, got {frames.shape}")
    return frames


def sky_features(frame: np.ndarray) -> np.ndarray:
    """float64 [F]: colour percentiles (10/50/90) of five horizontal bands, and the saturation and
    colour of the most saturated sky pixels (clear sky under clouds) of the top quarter."""
    f = frame.astype(np.float32) / F32(255)
    h = f.shape[0]
    out = []
    for a, b in ((0, h // 8), (h // 8, h // 4), (h // 4, h // 2), (h // 2, 3 * h // 4), (3 * h // 4, h)):
        band = f[a:b].reshape(-1, 3)
        out.append(np.percentile(band, (10, 50, 90), axis=0).ravel())
    top = f[:h // 4].reshape(-1, 3)
    sat = top.max(-1) - top.min(-1)
    out.append(np.percentile(sat, (50, 90)))
    order = np.argsort(sat, kind="stable")[-max(1, len(sat) // 10):]
    out.append(top[order].mean(0))
    return np.concatenate(out).astype(np.float64)


@lru_cache(maxsize=1)
def _sky_reader() -> dict:
    if not READER_FILE.is_file():
        raise FileNotFoundError(f"{READER_FILE} is missing: run fit_sky_reader() (nuwa-ds landscape-videos --fit-reader)")
    data = json.loads(READER_FILE.read_text())
    return {"classes": tuple(data["classes"]), "mean": np.array(data["mean"]), "precision": np.array(data["precision"])}


def read_sky(frame: np.ndarray) -> str:
    """Nearest class mean in the Mahalanobis metric of the pooled within-class covariance (LDA)."""
    reader = _sky_reader()
    d = sky_features(frame)[None] - reader["mean"]
    return reader["classes"][int(np.argmin(np.einsum("ki,ij,kj->k", d, reader["precision"], d)))]


def fit_sky_reader(specs: Sequence[ClipSpec], path=READER_FILE, first_frames=None) -> dict:
    """Fit the sky reader on frame 0 of ``specs`` (use train-split worlds) and write it to ``path``
    (``first_frames``: those frames when already rendered)."""
    frames = [render_frame(s, 0) for s in specs] if first_frames is None else first_frames
    labels = [true_attributes(s)["sky"] for s in specs]
    X = np.stack([sky_features(f) for f in frames])
    classes = ATTRIBUTES["sky"]
    missing = [c for c in classes if labels.count(c) < 2]
    if missing:
        raise ValueError(f"fit_sky_reader needs at least 2 clips of every sky class, missing {missing}")
    y = np.array(labels)
    mean = np.stack([X[y == c].mean(0) for c in classes])
    within = sum((X[y == c] - mean[i]).T @ (X[y == c] - mean[i]) for i, c in enumerate(classes)) / len(X)
    precision = np.linalg.inv(within + np.eye(len(within)) * 1e-4)  # ridge: features are correlated
    data = {"generator_version": GENERATOR_VERSION, "classes": list(classes), "fitted_on": len(specs),
            "world_seeds": [min(s.world_seed for s in specs), max(s.world_seed for s in specs)],
            "mean": np.round(mean, 6).tolist(), "precision": np.round(precision, 3).tolist()}
    Path(path).write_text(json.dumps(data))
    _sky_reader.cache_clear()
    return data


def _ring_max(L: np.ndarray, radius: float, directions: int = 16) -> np.ndarray:
    """For every pixel, the largest value of ``L`` on a ring of ``radius`` around it (edge-clamped)."""
    h, w = L.shape
    r = int(math.ceil(radius))
    pad = np.pad(L, r, mode="edge")
    out = None
    for k in range(directions):
        a = 2 * math.pi * k / directions
        dy, dx = int(round(radius * math.sin(a))), int(round(radius * math.cos(a)))
        shifted = pad[r + dy:r + dy + h, r + dx:r + dx + w]
        out = shifted if out is None else np.maximum(out, shifted)
    return out


def find_sun(frame: np.ndarray) -> Optional[tuple[float, float, float]]:
    """(u, v, contrast): the centre of the brightest isolated disc of the frame as shares of its width
    and height, or None when nothing outshines its ring by ``SUN_CONTRAST``."""
    L = (frame.astype(np.float32) / F32(255)) @ _LUMA
    p = np.pad(L, 1, mode="edge")  # 3x3 box blur: a disc's centre, not a single bright pixel
    B = sum(p[dy:dy + L.shape[0], dx:dx + L.shape[1]] for dy in range(3) for dx in range(3)) / F32(9)
    C = np.where(B >= np.quantile(B, SUN_BRIGHTEST), B - _ring_max(B, SUN_RING * L.shape[1]), F32(-1))
    y, x = np.unravel_index(int(np.argmax(C)), C.shape)
    if C[y, x] <= SUN_CONTRAST:
        return None
    return (x + 0.5) / L.shape[1], (y + 0.5) / L.shape[0], float(C[y, x])


def read_motion(frames: np.ndarray) -> str:
    """Camera direction from the median content shift between consecutive frames."""
    camera = -float(np.median(clip_shifts(list(frames))[:, 1]))
    return "still" if abs(camera) < STILL_SHIFT else ("right" if camera > 0 else "left")


def read_attributes(frames) -> dict[str, str]:
    """The attributes of a clip (uint8 [T, h, w, 3], or one frame [h, w, 3]) from its pixels: sky and
    sun from frame 0, motion (only when T > 1) from the whole clip."""
    frames = _check_frames(frames)
    sun = find_sun(frames[0])
    attrs = {"sky": read_sky(frames[0]), "sun": "none" if sun is None else _third(sun[0])}
    if len(frames) > 1:
        attrs["motion"] = read_motion(frames)
    return attrs


def confusion_table(pairs) -> dict[str, dict[str, int]]:
    """``{true class: {read class: count}}`` of (true, read) pairs (a read of None counts as "None")."""
    table: dict[str, dict[str, int]] = {}
    for t, r in pairs:
        row = table.setdefault(str(t), {})
        row[str(r)] = row.get(str(r), 0) + 1
    return table


def reader_accuracy(specs: Sequence[ClipSpec], clips: Optional[Sequence[np.ndarray]] = None) -> dict:
    """Per attribute: ``{"accuracy", "chance" (majority class share), "count", "confusion"}`` of
    :func:`read_attributes` on the clips of ``specs`` (rendered unless ``clips`` are given), plus
    ``"all"``: the share of clips with every attribute right."""
    if clips is not None and len(clips) != len(specs):
        raise ValueError(f"{len(clips)} clips for {len(specs)} specs")
    truth, read = [], []
    for i, spec in enumerate(specs):
        truth.append(true_attributes(spec))
        read.append(read_attributes(render_clip(spec) if clips is None else clips[i]))
    out = {}
    for key in ATTRIBUTES:
        pairs = [(t[key], r.get(key)) for t, r in zip(truth, read) if key in t]
        if not pairs:
            continue
        labels = [t for t, _ in pairs]
        out[key] = {"accuracy": sum(t == r for t, r in pairs) / len(pairs),
                    "chance": max(labels.count(c) for c in set(labels)) / len(labels),
                    "count": len(pairs), "confusion": confusion_table(pairs)}
    out["all"] = {"accuracy": sum(all(r.get(k) == v for k, v in t.items()) for t, r in zip(truth, read)) / len(truth),
                  "count": len(truth)}
    return out


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _mp4_error(path: Path, clip: np.ndarray) -> float:
    """Mean absolute error (0-255) of the decoded MP4 against the rendered frames."""
    import av

    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if len(decoded) != len(clip):
        raise RuntimeError(f"{path}: wrote {len(clip)} frames, decoded {len(decoded)}")
    h, w = clip.shape[1:3]
    return float(np.mean([np.abs(d[:h, :w].astype(np.int16) - c).mean() for d, c in zip(decoded, clip)]))


def _write_one(args) -> dict:
    index, spec_dict, out_dir, formats, variant = args
    # lazily: tokenizer.media imports torch, which only the processes writing files need (rendering is numpy)
    from nuwa_ds.tokenizer.media import save_gif, save_mp4, save_png

    spec = ClipSpec.from_dict(spec_dict)
    clip = render_clip(spec)
    out = Path(out_dir)
    name = f"clip_{index:06d}"
    files, record = {}, {}
    if "mp4" in formats:
        files["mp4"] = f"mp4/{name}.mp4"
        save_mp4(clip, out / files["mp4"], fps=spec.fps)
        record["mp4_mean_abs_error"] = round(_mp4_error(out / files["mp4"], clip), 4)
    if "gif" in formats:
        files["gif"] = f"gif/{name}.gif"
        save_gif(clip, out / files["gif"], fps=spec.fps)
    if "frames" in formats:
        files["frames"] = f"frames/{name}"
        for t, frame in enumerate(clip):
            save_png(frame, out / files["frames"] / f"{t:04d}.png")
    attrs = true_attributes(spec)
    return {"index": index, "files": files, "spec": spec.to_dict(), "attributes": attrs,
            "caption": caption(attrs, variant), "true_shift": spec.true_shift, **record}


def write_clips(out_dir, specs: Sequence[ClipSpec], *, formats: Sequence[str] = ("mp4",), workers: int = 0,
                split: Optional[str] = None, seed: Optional[int] = None, caption_variants: int = 1,
                progress: bool = False) -> dict:
    """Write every clip to ``out_dir`` and return the manifest (also written to ``landscape_videos.json``).

    Layout: ``mp4/clip_{i:06d}.mp4`` (h264 at the spec's fps), ``gif/clip_{i:06d}.gif``,
    ``frames/clip_{i:06d}/{t:04d}.png`` (lossless), one folder per format so that ``nuwa-ds prepare
    DIR/mp4 --captions DIR/captions.jsonl`` reads the videos alone. ``captions.jsonl``: one line
    ``{"file": <relative path>, "caption": ...}`` per written MP4 / GIF. ``caption_variants`` > 1
    rotates clip i through that many phrasings (``caption(attrs, i % caption_variants)``).
    ``workers`` > 0 renders in that many processes (same files)."""
    formats = tuple(formats.split(",")) if isinstance(formats, str) else tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
    specs = list(specs)
    if not specs:
        raise ValueError("no clips to write")
    for spec in specs:
        if not isinstance(spec, ClipSpec):
            raise ValueError(f"write_clips needs ClipSpecs, got {type(spec).__name__}")
        spec.validate()
    if int(workers) < 0 or int(caption_variants) < 1:
        raise ValueError(f"workers must be >= 0 and caption_variants >= 1, got {workers}, {caption_variants}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, s.to_dict(), str(out), formats, i % int(caption_variants)) for i, s in enumerate(specs)]
    if int(workers) > 0:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            records = list(_progress(pool.map(_write_one, jobs, chunksize=4), len(jobs), progress))
    else:
        records = list(_progress(map(_write_one, jobs), len(jobs), progress))
    lines = [json.dumps({"file": r["files"][f], "caption": r["caption"]})
             for r in records for f in ("mp4", "gif") if f in r["files"]]
    if lines:
        (out / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors = [r["mp4_mean_abs_error"] for r in records if "mp4_mean_abs_error" in r]
    manifest = {
        "generator": "data_pipelines.landscape_video",
        "generator_version": GENERATOR_VERSION,
        "world_generator_version": WORLD_VERSION,
        "split": split,
        "seed": seed,
        "count": len(records),
        "formats": list(formats),
        "captions_file": CAPTIONS_FILE if lines else None,
        "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        "mp4_mean_abs_error": round(float(np.mean(errors)), 4) if errors else None,
        "clips": records,
    }
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST_FILE)
    return manifest


def read_manifest(out_dir) -> tuple[dict, list[ClipSpec]]:
    """The manifest of a folder written by :func:`write_clips` and its clips' specs."""
    manifest = json.loads((Path(out_dir) / MANIFEST_FILE).read_text())
    return manifest, [ClipSpec.from_dict(c["spec"]) for c in manifest["clips"]]


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="clips", unit="clip", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@dataclass
class LandscapeVideosCommand(ConfigBase):
    """Everything ``nuwa-ds landscape-videos`` is told; its flags are generated from these fields."""

    out: str = field(metadata=cli(help=f"output folder (mp4/, gif/, frames/, {CAPTIONS_FILE}, {MANIFEST_FILE})"))
    count: int = 100
    """Number of clips."""
    frames: int = 16
    """Frames per clip (held-out clips: 4x the training clips)."""
    split: Literal[tuple(SPLITS)] = "train"
    """train or val: disjoint world seeds (as nuwa-ds landscapes)."""
    size: str = "128x128"
    """Output frame WIDTHxHEIGHT."""
    window: str = "512x512"
    """World px WIDTHxHEIGHT of each frame (a multiple of --size)."""
    format: str = field(default="mp4", metadata=cli(help=f"comma-separated subset of {','.join(FORMATS)}"))
    fps: float = 8.0
    """Frame rate written into the MP4 / GIF."""
    seed: int = 0
    """Seed of the clips' framing and motion."""
    world_seed_base: Optional[int] = None
    """First world seed (default: by --split)."""
    caption_variants: int = 1
    """Phrasings to rotate through (1-3)."""
    workers: int = 0
    """Rendering processes (0: this one)."""
    progress: bool = True
    """A progress bar."""

    def validate(self):
        parse_size(self.size)
        parse_size(self.window)
        if self.fps <= 0:
            raise ValueError(f"--fps must be > 0, got {self.fps}")


def add_arguments(parser: argparse.ArgumentParser):
    LandscapeVideosCommand.add_flags(parser)


def run(args) -> int:
    c = LandscapeVideosCommand.from_args(args)
    size, window = parse_size(c.size), parse_size(c.window)
    specs = sample_clip_specs(c.count, split=c.split, frames=c.frames, size=size, window=window, seed=c.seed,
                              world_seed_base=c.world_seed_base, fps=c.fps)
    manifest = write_clips(c.out, specs, formats=c.format, workers=c.workers, split=c.split, seed=c.seed,
                           caption_variants=c.caption_variants, progress=c.progress)
    err = manifest["mp4_mean_abs_error"]
    print(f"{manifest['count']} clips of {c.frames} frames {size[0]}x{size[1]} ({c.split}) in {c.out}"
          + ("" if err is None else f"; MP4 mean abs error {err:.2f}/255"))
    return 0
