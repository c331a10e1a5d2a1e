"""``nuwa-ds landscapes``: a procedural landscape world with ground truth at any size.

No photo collection can be downloaded, yet the model is trained on small crops and must generate
seamless panoramas and large canvases, and the quality metrics need held-out "real" pictures of
those sizes. A :class:`World` is an infinite-in-x (and, by extension, in y) seeded picture:
``World(seed).render(x0, y0, width, height)`` returns any window of it, and every pixel is a pure
function of its integer world coordinates and the world's parameters, so a window of a large render
equals the small render of that window bitwise (no per-render normalisation, noise evaluated at
absolute coordinates, only compactly supported effects summed in a fixed order).

Vertical layout, in world pixels (a *view* is ``VIEW_HEIGHT = 1024`` rows, y in [0, 1024)):

* ``y < horizon``: sky. A gradient from the zenith colour (y <= 0; it goes on unchanged upward) to
  the horizon colour, plus a horizon glow in the last ~30% above the horizon line.
* Suns: one per sun cell of ``sun_period`` px (seeded per world in [1600, 2600]) along x, at a
  seeded x inside the cell (15%-85%) and a seeded height y in [120, horizon - 40] (low suns set
  behind the ridges). Disk plus a compactly supported halo (radius ~ 650 px). A 4096 px panorama
  shows one to three suns, a 256 px crop usually none (but often some halo). Night palettes make
  it a paler, smaller moon.
* Clouds: 2-D fractal value noise (5 octaves), stretched horizontally and compressed toward the
  horizon (perspective), seeded coverage; lit by the sun halo.
* Ridges: 3 or 4 mountain ranges (1-D fractal / ridged noise of x for the ridge line, up to ~150-360
  px above the water line; nearer ranges sink into wide valleys), the far ones taller, lighter and hazier (blended toward the haze colour by depth), the near ones darker with
  some 2-D texture; mist gathers at their feet. All ranges stand on the water line.
* ``y >= horizon``: water. ``horizon`` is seeded per world in [HORIZON_MIN, HORIZON_MAX] = [600, 700].
  A mirror image of everything above about the water line (row ``horizon + d`` reflects row
  ``horizon - 1 - d``), displaced by integer ripples (vertical and horizontal, stronger toward the
  bottom), tinted and darkened with depth toward the water colour. Water goes on downward forever.

Useful windows: ``y0 = 480, height 256`` shows sky, ridges and water in every world (panoramas
``--size 4096x256 --y 480``); ``--size 1024x1024 --y 0`` a whole view; ``--size 256x1024 --y 0``
full-view-height strips (absolute row position); random 256x256 crops (y0 uniform in [0, 768])
range from pure sky to pure water.

Palettes (dawn, noon, dusk, night, misty, golden) are chosen per world, jittered per world, and drift
slowly along x between two variants of the world's palette.

Determinism: integer hashing (splitmix64 on uint64) of (world seed, lattice coordinates), float64
for lattice coordinates, float32 and only +, -, *, /, sqrt, floor, rint, min/max for the rest
(correctly rounded IEEE operations: identical on every machine; no exp/sin/pow, no reductions over
pixels, no global random state).

The CLI writes crops of many worlds as PNG/JPEG files plus ``landscapes.json`` (world seed, x0, y0,
width, height of every file, the generator version, the split and its world-seed range). Training
and held-out splits use disjoint world-seed ranges (``--split train`` / ``--split val``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from nuwa_ds.config_base import ConfigBase, cli

GENERATOR_VERSION = "landscapes-1"
VIEW_HEIGHT = 1024
"""Rows of one view: y in [0, VIEW_HEIGHT). Outside it the world goes on (sky upward, water downward)."""
HORIZON_MIN, HORIZON_MAX = 600, 700
"""Range of the seeded water line (first water row) of a world."""
SUN_PERIOD_RANGE = (1600, 2600)
"""Width of a sun cell along x (one sun per cell), seeded per world."""
SUN_REACH = 650.0
"""Radius of a sun's halo: beyond it a sun adds exactly nothing."""
MANIFEST_FILE = "landscapes.json"
DEFAULT_WORLD_SEED_BASE = {"train": 0, "val": 1_000_000}
"""Default first world seed per split: disjoint ranges unless --worlds exceeds 1,000,000."""

_M64 = (1 << 64) - 1
F32 = np.float32


# ---------------------------------------------------------------------------------------------
# hashing and noise (pure functions of absolute coordinates)
# ---------------------------------------------------------------------------------------------
def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _key(*parts: int) -> int:
    """A 64-bit key from small integers (python ints, so no numpy overflow warnings)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _M64)) * 0xD6E8FEB86659FD93 & _M64
        h ^= h >> 32
    return h


def _u64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64).view(np.uint64)


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float32 in [0, 1) (24 bits, exact)."""
    return (h >> np.uint64(40)).astype(F32) * F32(1.0 / (1 << 24))


def _table1(key: int, cells: np.ndarray) -> np.ndarray:
    return _unit(_mix(_u64(cells) ^ np.uint64(key)))


def _table2(key: int, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    hx = _mix(_u64(cx) ^ np.uint64(key))
    return _unit(_mix(hx[None, :] + _u64(cy)[:, None] * np.uint64(0x9E3779B97F4A7C15)))


def _cells(u: np.ndarray):
    """Lattice cell (int64), smoothstep weight (float32) of float64 lattice coordinates."""
    c = np.floor(u)
    f = (u - c).astype(F32)
    return c.astype(np.int64), f * f * (F32(3) - F32(2) * f)


def value_noise1(key: int, u: np.ndarray) -> np.ndarray:
    """Smooth 1-D value noise in [0, 1) at float64 lattice coordinates ``u``."""
    c, s = _cells(u)
    lo = int(c.min())
    t = _table1(key, np.arange(lo, int(c.max()) + 2, dtype=np.int64))
    v0, v1 = t[c - lo], t[c - lo + 1]
    return v0 + (v1 - v0) * s


def value_noise2(key: int, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) on the grid rows ``v`` x columns ``u`` (float64 lattice
    coordinates, 1-D each) -> float32 [len(v), len(u)]. Per point: lerp_v(lerp_u(..), lerp_u(..))."""
    cu, su = _cells(u)
    cv, sv = _cells(v)
    lu, lv = int(cu.min()), int(cv.min())
    t = _table2(key, np.arange(lv, int(cv.max()) + 2, dtype=np.int64),
                np.arange(lu, int(cu.max()) + 2, dtype=np.int64))
    iu = cu - lu
    a, b = t[:, iu], t[:, iu + 1]
    rows = a + (b - a) * su[None, :]  # [lattice rows, columns]
    iv = cv - lv
    r0, r1 = rows[iv], rows[iv + 1]
    return r0 + (r1 - r0) * sv[:, None]


def fbm1(key: int, x: np.ndarray, period: float, octaves: int, ridged: bool = False) -> np.ndarray:
    """Fractal 1-D noise in [0, 1] of float64 ``x`` (pixels); first octave of ``period`` px."""
    total = np.zeros(x.shape, F32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        n = value_noise1(_key(key, o), x / (period / 2.0 ** o) + 17.31 * o)
        if ridged:
            n = F32(1) - np.abs(F32(2) * n - F32(1))
        total += n * F32(amp)
        norm += amp
        amp *= 0.5
    return total * F32(1.0 / norm)


def fbm2(key: int, v: np.ndarray, u: np.ndarray, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Fractal 2-D noise in [0, 1] on the grid ``v`` x ``u`` (float64 lattice units of octave 0)."""
    total = None
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        sc = 2.0 ** o
        n = value_noise2(_key(key, o), v * sc + 5.17 * o, u * sc + 11.73 * o)
        total = n * F32(amp) if total is None else total + n * F32(amp)
        norm += amp
        amp *= gain
    return total * F32(1.0 / norm)


def _clip01(a):
    return np.minimum(np.maximum(a, F32(0)), F32(1))


def _lerp(a, b, t):
    return a + (b - a) * t


# ---------------------------------------------------------------------------------------------
# palettes
# ---------------------------------------------------------------------------------------------
def _rgb(h: str) -> tuple:
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


PALETTES = {
    # zenith, horizon, glow, sun, cloud_lit, cloud_dark, ridge_near, haze, water, night
    "noon": dict(zenith="2f6fc4", horizon="a9d2f0", glow="e8f2f8", sun="fffbe8", cloud_lit="ffffff",
                 cloud_dark="b4c2d2", ridge_near="2e4a34", haze="a6c4dc", water="1d4a6e", night=0),
    "dawn": dict(zenith="3d4f8f", horizon="f2b38f", glow="ffd9a8", sun="fff0c8", cloud_lit="ffc9a6",
                 cloud_dark="8a7090", ridge_near="3a3450", haze="c8a8b4", water="2e3a5e", night=0),
    "dusk": dict(zenith="1f2a5a", horizon="f07a4a", glow="ffb060", sun="ffe0a0", cloud_lit="ff9a70",
                 cloud_dark="5a3a5a", ridge_near="2a1e30", haze="a0607a", water="231c3c", night=0),
    "night": dict(zenith="060a1c", horizon="24305a", glow="4a5a80", sun="e8eef8", cloud_lit="5a6688",
                  cloud_dark="1a2038", ridge_near="0a0e18", haze="2a3456", water="0a1024", night=1),
    "misty": dict(zenith="8ea4b4", horizon="d8dee2", glow="f0f0ea", sun="fbf6e6", cloud_lit="eef0f0",
                  cloud_dark="a8b2ba", ridge_near="4a5a5e", haze="ccd4d8", water="6a7c86", night=0),
    "golden": dict(zenith="4a78b0", horizon="f4d49a", glow="ffe6b0", sun="fff4d0", cloud_lit="fff0d0",
                   cloud_dark="a89a94", ridge_near="3c4030", haze="d4c4a8", water="3a5068", night=0),
}
_COLOR_KEYS = ("zenith", "horizon", "glow", "sun", "cloud_lit", "cloud_dark", "ridge_near", "haze", "water")


# ---------------------------------------------------------------------------------------------
# the world
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Range:
    key: int
    base: float  # lowest ridge height above the water line (px)
    amp: float  # height variation (px)
    period: float  # first-octave period (px)
    ridged: bool
    contrast: float  # stretch of the fractal profile around 0.5
    depth: float  # 1 = farthest, 0 = nearest


def _profile(rg: _Range, x: np.ndarray) -> np.ndarray:
    """A range's ridge profile in [0, 1] at float64 columns ``x`` (elementwise: a pure function of x)."""
    prof = fbm1(rg.key, x, rg.period, octaves=6, ridged=rg.ridged)
    mid = F32(0.62 if rg.ridged else 0.5)  # typical profile value
    z = (prof - mid) * F32(2 * rg.contrast)  # soft contrast stretch, no flat tops
    c = F32(rg.contrast / (1.0 + rg.contrast))
    prof = _clip01(F32(0.5) + F32(0.5) * z / ((F32(1) + np.abs(z)) * c))
    if rg.depth < 1.0:  # wide valleys: nearer ranges sometimes sink to the water line
        val = value_noise1(_key(rg.key, 1), x / (rg.period * 3.0))
        val = _clip01((val - F32(0.2)) * F32(1.6))
        val = val * val * (F32(3) - F32(2) * val)
        prof = prof * (F32(0.1) + F32(0.9) * val)
    return prof


class World:
    """A seeded landscape, infinite in x; ``render(x0, y0, width, height)`` -> uint8 [h, w, 3].

    Every pixel depends only on its integer world coordinates (x, y) and ``seed``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        k = _key(0x1A7D5CA9E, self.seed)
        r = [float(v) for v in _table1(k, np.arange(64, dtype=np.int64))]  # per-world parameters
        names = sorted(PALETTES)
        self.palette_name = names[min(int(r[0] * len(names)), len(names) - 1)]
        pal = PALETTES[self.palette_name]
        self.night = bool(pal["night"])
        self.horizon = int(HORIZON_MIN + min(int(r[1] * (HORIZON_MAX - HORIZON_MIN + 1)), HORIZON_MAX - HORIZON_MIN))
        self.sun_period = float(SUN_PERIOD_RANGE[0] + r[2] * (SUN_PERIOD_RANGE[1] - SUN_PERIOD_RANGE[0]))
        self.sun_radius = (9.0 + 5.0 * r[3]) if self.night else (16.0 + 12.0 * r[3])
        self.cloud_cover = 0.35 + 0.35 * r[4]  # threshold: larger -> fewer clouds
        if self.palette_name == "misty":
            self.cloud_cover = 0.3 + 0.2 * r[4]
        self.cloud_soft = 0.12 + 0.1 * r[5]
        self.cloud_period = 500.0 + 500.0 * r[6]
        self.mist = (0.55 + 0.3 * r[7]) if self.palette_name == "misty" else (0.15 + 0.35 * r[7])
        self.drift_period = 5000.0 + 5000.0 * r[8]
        self.light_side = 1.0 if r[27] > 0.5 else -1.0
        n_ranges = 3 + (r[9] > 0.5)
        scale = 0.75 + 0.5 * r[10]
        self.ranges = []
        for i in range(n_ranges):  # far to near
            depth = 1.0 - i / (n_ranges - 1)
            top = scale * (190.0 + 110.0 * depth) * (0.8 + 0.4 * r[11 + i])
            base = top * (0.1 + 0.25 * depth) * r[15 + i]
            self.ranges.append(_Range(key=_key(k, 100 + i), base=base, amp=top - base,
                                      period=(350.0 + 550.0 * r[19 + i]),
                                      ridged=r[23 + i] > 0.45, contrast=1.6 + 1.0 * r[28 + i],
                                      depth=depth))
        # two variants of the palette, jittered per world; columns drift between them
        self._pal = []
        for v in range(2):
            cols = {}
            for j, name in enumerate(_COLOR_KEYS):
                jit = _table1(_key(k, 200 + v, j), np.arange(3, dtype=np.int64)) - F32(0.5)
                amt = 0.05 if v == 0 else 0.10
                c = np.array(_rgb(pal[name]), F32) + jit * F32(2 * amt)
                cols[name] = _clip01(c).astype(F32)
            self._pal.append(cols)
        self._k = k

    def __repr__(self):
        return (f"World(seed={self.seed}, palette={self.palette_name!r}, horizon={self.horizon}, "
                f"ranges={len(self.ranges)}, sun_period={self.sun_period:.0f})")

    # -- per-column quantities ---------------------------------------------------------------
    def _palette(self, xs: np.ndarray) -> dict:
        """Colours per column: float32 [1, W, 3] each."""
        t = value_noise1(_key(self._k, 300), xs.astype(np.float64) / self.drift_period)
        t = (t * t * (F32(3) - F32(2) * t))[None, :, None]
        a, b = self._pal
        return {name: _lerp(a[name][None, None, :], b[name][None, None, :], t) for name in _COLOR_KEYS}

    def suns(self, x_lo: float, x_hi: float, sun_dy: float = 0.0) -> list:
        """Suns (x, y) whose halo reaches columns [x_lo, x_hi), by increasing sun index; ``sun_dy``
        moves every sun down by that many px (``sun_rise * t`` for frame t of a clip; < 0 is up)."""
        P = self.sun_period
        out = []
        for c in range(math.floor((x_lo - SUN_REACH) / P) - 1, math.floor((x_hi + SUN_REACH) / P) + 2):
            h = _table1(_key(self._k, 400), np.array([2 * c, 2 * c + 1], dtype=np.int64))
            sx = (c + 0.15 + 0.7 * float(h[0])) * P
            sy = 120.0 + float(h[1]) * (self.horizon - 160.0) + sun_dy
            if sx + SUN_REACH >= x_lo and sx - SUN_REACH <= x_hi:
                out.append((sx, sy))
        return out

    def ridge_lines(self, xs) -> np.ndarray:
        """float32 [ranges, len(xs)]: the ridge line (first covered row, fractional) of each range, far
        to near, at integer columns ``xs``; the same arithmetic as the render (a range covers row y of
        column x from ``y >= line - 0.5``)."""
        xf = np.asarray(xs, dtype=np.int64).astype(np.float64).reshape(-1)
        return np.stack([F32(self.horizon) - (F32(rg.base) + F32(rg.amp) * _profile(rg, xf)) for rg in self.ranges])

    # -- the scene above the water line ------------------------------------------------------
    def _above(self, xs: np.ndarray, ys: np.ndarray, cloud_dx: float = 0.0, sun_dy: float = 0.0) -> np.ndarray:
        """Sky, suns, clouds and ridges on the grid rows ``ys`` x columns ``xs`` (int64, every
        y < horizon) -> float32 [len(ys), len(xs), 3] in [0, 1]. ``cloud_dx`` moves the clouds right,
        ``sun_dy`` the suns down (px; 0.0 for the still world)."""
        H = self.horizon
        pal = self._palette(xs)
        xf = xs.astype(np.float64)
        yf = ys.astype(np.float64)
        # sky gradient
        t = _clip01((ys.astype(F32) / F32(H)))[:, None, None]
        t2 = t * t
        img = _lerp(pal["zenith"], pal["horizon"], t2)
        t4 = t2 * t2
        g = t4 * t4 * t  # horizon glow
        img = img + (pal["glow"] - img) * (g * F32(0.6))
        # suns: halo (compact support, fixed order) and disk
        halo = np.zeros((len(ys), len(xs)), F32)
        disk = np.zeros_like(halo)
        R = F32(self.sun_radius)
        for sx, sy in self.suns(float(xs[0]), float(xs[-1]) + 1.0, sun_dy):
            dx = (xf - sx).astype(F32)
            dy = (yf - sy).astype(F32)
            d2 = (dx * dx)[None, :] + (dy * dy * F32(1.6))[:, None]
            d = np.sqrt(d2)
            q = _clip01(F32(1) - d * F32(1.0 / SUN_REACH))
            q2 = q * q
            q8 = q2 * q2
            q8 = q8 * q8
            halo += q2 * q * F32(0.35) + q8 * q8 * F32(0.9)
            disk = np.maximum(disk, _clip01(R - np.sqrt((dx * dx)[None, :] + (dy * dy)[:, None]) + F32(0.5)))
        hs = F32(0.45) if self.night else F32(1.0)
        img = img + (pal["sun"] - img) * _clip01(halo * hs)[..., None]
        img = _lerp(img, pal["sun"], disk[..., None])
        # clouds: rows compressed toward the horizon, fading out just above it
        depth = np.sqrt(np.maximum(H - yf, 0.0) + 60.0)
        v = depth * (24.0 / math.sqrt(self.cloud_period))
        u = (xf - cloud_dx) / self.cloud_period  # cloud_dx = 0.0 leaves xf unchanged (exact)
        n = fbm2(_key(self._k, 500), v, u * 0.55, octaves=5)
        fade = _clip01((F32(H - 30) - ys.astype(F32)) * F32(1.0 / 160.0))[:, None]
        cov = F32(self.cloud_cover)
        dens = _clip01((n - cov) * F32(1.0 / self.cloud_soft)) * fade
        dens = dens * (F32(3) - F32(2) * dens) * dens
        shade = _clip01((n - cov) * F32(2.5))  # thicker -> darker core
        ccol = _lerp(pal["cloud_lit"], pal["cloud_dark"], shade[..., None] * F32(0.8))
        ccol = ccol + (pal["sun"] - ccol) * _clip01(halo * F32(0.8))[..., None]
        img = _lerp(img, ccol, (dens * F32(0.92))[..., None])
        # ridges, far to near; mist at their feet
        atmos = _lerp(pal["haze"], pal["horizon"], F32(0.45))
        texture = None
        for rg in self.ranges:
            xe = np.concatenate([xf - 8.0, xf, xf + 8.0])
            prof_e = _profile(rg, xe)
            n = len(xf)
            prof = prof_e[n:2 * n]
            h = F32(H) - (F32(rg.base) + F32(rg.amp) * prof)  # ridge line (float32 row)
            first = int(np.searchsorted(ys, math.floor(float(h.min())) - 1))
            if first >= len(ys):
                continue
            yr = ys[first:].astype(F32)
            below = yr[:, None] - h[None, :]  # px below the ridge line
            a = _clip01(below + F32(0.5))
            dz = rg.depth * (2.0 - rg.depth)
            col = _lerp(pal["ridge_near"], atmos, F32(0.08 + 0.82 * dz))  # [1, W, 3]
            if rg.depth < 0.6:
                if texture is None:
                    texture = fbm2(_key(self._k, 600), yf / 60.0, xf / 55.0, octaves=4)
                tx = texture[first:] - F32(0.5)
                # slope light from the ridge line (sun side per world) fading downward, gullies below
                slope = ((prof_e[2 * n:] - prof_e[:n]) * F32(rg.amp * 0.08 * self.light_side))[None, :]
                fall = _clip01(F32(1) - below * F32(1.0 / 70.0))
                fall = fall * fall
                lit = _clip01(slope * F32(0.5) + F32(0.5)) - F32(0.5)
                gain = F32(1.0 - rg.depth)
                col = col * (F32(1) + ((lit * fall * F32(0.6) + tx * F32(0.35)) * gain)[..., None])
            mist = _clip01((yr[:, None] - F32(H - 15 - 45 * rg.depth)) * F32(1.0 / 45.0))
            mist = mist * F32(self.mist * (0.4 + 0.6 * rg.depth))
            col = col + (atmos - col) * mist[..., None]
            sub = img[first:]
            img[first:] = sub + (col - sub) * a[..., None]
        return img

    # -- the whole picture -------------------------------------------------------------------
    def render_float(self, x0: int, y0: int, width: int, height: int, *, t: float = 0,
                     cloud_drift: float = 0.0, sun_rise: float = 0.0) -> np.ndarray:
        """float32 [height, width, 3] in [0, 1]; see :meth:`render` for the time arguments."""
        x0, y0, width, height = _check_window(x0, y0, width, height)
        cloud_dx, sun_dy = _offsets(t, cloud_drift, sun_rise)
        H = self.horizon
        xs = np.arange(x0, x0 + width, dtype=np.int64)
        ys = np.arange(y0, y0 + height, dtype=np.int64)
        out = np.empty((height, width, 3), F32)
        n_sky = int(np.clip(H - y0, 0, height))
        if n_sky == height:
            out[:] = self._above(xs, ys, cloud_dx, sun_dy)
        elif n_sky:  # sky and water: one _above call serves the sky rows and their reflection
            out[n_sky:], out[:n_sky] = self._water(xs, ys[n_sky:], cloud_dx, sun_dy, sky_from=y0)
        else:
            out[:] = self._water(xs, ys, cloud_dx, sun_dy)
        return out

    def _water(self, xs: np.ndarray, ys: np.ndarray, cloud_dx: float = 0.0, sun_dy: float = 0.0,
               sky_from: Optional[int] = None):
        """Water rows ``ys``; with ``sky_from``, also the sky rows [sky_from, horizon) of columns ``xs``,
        cut from the same ``_above`` grid as the reflection (bitwise what a separate call gives:
        ``_above`` is a pure function of each pixel's coordinates, which the window tests check)."""
        H = self.horizon
        d = (ys - H).astype(np.float64)  # 0 at the water line
        df = d.astype(F32)
        # ripples: horizontal streaks, denser near the horizon, amplitude growing with depth
        v = np.sqrt(d + 4.0) * 3.2
        u = xs.astype(np.float64) / 70.0
        r1 = fbm2(_key(self._k, 700), v, u, octaves=3) - F32(0.5)
        r2 = fbm2(_key(self._k, 701), v * 1.3, u * 0.5, octaves=2) - F32(0.5)
        amp_y = (F32(1.5) + df * F32(0.05))[:, None]
        amp_x = (F32(0.5) + df * F32(0.012))[:, None]
        dy = np.rint(r1 * amp_y).astype(np.int64)
        dx = np.rint(r2 * amp_x).astype(np.int64)
        ry = np.minimum((2 * H - 1 - ys)[:, None] + dy, H - 1)  # mirror row, rippled
        mx = int(np.abs(dx).max()) if dx.size else 0
        rlo, rhi = int(ry.min()), int(ry.max())
        if sky_from is not None:  # rhi <= H - 1: the grid runs on to the last sky row
            rlo, rhi = min(rlo, int(sky_from)), H - 1
        src = self._above(np.arange(xs[0] - mx, xs[-1] + mx + 1, dtype=np.int64),
                          np.arange(rlo, rhi + 1, dtype=np.int64), cloud_dx, sun_dy)
        cols = np.arange(len(xs), dtype=np.int64)[None, :] + mx + dx
        refl = src[ry - rlo, cols]
        pal = self._palette(xs)
        # reflectivity falls with depth (Fresnel-like), ripples brighten/darken streaks
        k = (F32(0.88) - F32(0.45) * _clip01(df * F32(1.0 / 420.0)))[:, None, None]
        shade = F32(1) + r1[..., None] * F32(0.25)
        w = pal["water"]
        img = (w + (refl * F32(0.95) - w) * k) * shade
        edge = _clip01(F32(1) - df * F32(1.0 / 3.0))[:, None, None] * F32(0.15)  # bright shore line
        img = img + (pal["haze"] - img) * edge
        if sky_from is None:
            return img
        return img, src[int(sky_from) - rlo:, mx:mx + len(xs)]

    def render(self, x0: int, y0: int, width: int, height: int, *, t: float = 0,
               cloud_drift: float = 0.0, sun_rise: float = 0.0) -> np.ndarray:
        """uint8 [height, width, 3]: the window with top-left world pixel (x0, y0).

        Time: at time ``t`` (frames) the clouds have moved ``cloud_drift * t`` px right and every sun
        ``sun_rise * t`` px down (< 0: up); ridges and water stand still (the water reflects the moved
        sky). ``t = 0`` (or both rates 0) is the still world, bitwise. A pure function of (seed,
        window, t, rates): the offsets are single correctly rounded float64 products."""
        f = self.render_float(x0, y0, width, height, t=t, cloud_drift=cloud_drift, sun_rise=sun_rise)
        return np.rint(_clip01(f) * F32(255)).astype(np.uint8)


def _offsets(t, cloud_drift, sun_rise) -> tuple[float, float]:
    """(cloud_dx, sun_dy) in px at time t; exactly 0.0 at t = 0."""
    for name, val in (("t", t), ("cloud_drift", cloud_drift), ("sun_rise", sun_rise)):
        if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(val)):
            raise ValueError(f"{name} must be a finite number, got {val!r}")
    t = float(t)
    return float(cloud_drift) * t + 0.0, float(sun_rise) * t + 0.0  # + 0.0: no -0.0


def _check_window(x0, y0, width, height):
    for name, val in (("x0", x0), ("y0", y0), ("width", width), ("height", height)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {val!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    return int(x0), int(y0), int(width), int(height)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height), both positive."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 256x256), got {text!r}")
    w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {w}x{h}")
    return w, h


def write_dataset(out_dir, *, count: int, size: Sequence[int] = (256, 256),
                  world_seeds: Sequence[int] = range(64), y_range: Optional[Sequence[int]] = None,
                  y: Optional[int] = None, format: str = "png", seed: int = 0, split: Optional[str] = None,
                  x_range: Sequence[int] = (-1_000_000, 1_000_000), progress: bool = False) -> dict:
    """Write ``count`` crops of the worlds ``world_seeds`` to ``out_dir`` as ``landscape_{i:06d}.png``
    (or ``.jpg``) and ``landscapes.json``; returns the manifest.

    ``size`` is (width, height). Crop i takes a world seed, x0 in ``x_range`` and y0 in ``y_range``
    (inclusive; default ``(0, VIEW_HEIGHT - height)``, clamped at 0) from ``np.random.default_rng(seed)``,
    unless ``y`` fixes y0. The manifest lists per file its world seed, x0, y0, width, height.
    """
    from PIL import Image

    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}x{height}")
    if int(count) <= 0:
        raise ValueError(f"count must be positive, got {count}")
    fmt = str(format).lower()
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in ("png", "jpg"):
        raise ValueError(f"format must be png or jpg, got {format!r}")
    seeds = [int(s) for s in world_seeds]
    if not seeds:
        raise ValueError("world_seeds is empty")
    if y is not None:
        y_lo = y_hi = int(y)
    else:
        y_lo, y_hi = (0, max(0, VIEW_HEIGHT - height)) if y_range is None else (int(y_range[0]), int(y_range[1]))
        if y_hi < y_lo:
            raise ValueError(f"y_range must satisfy lo <= hi, got {(y_lo, y_hi)}")
    x_lo, x_hi = int(x_range[0]), int(x_range[1])
    if x_hi < x_lo:
        raise ValueError(f"x_range must satisfy lo <= hi, got {(x_lo, x_hi)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(seed))
    worlds: dict[int, World] = {}
    files = []
    it = range(int(count))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="landscapes", unit="img", dynamic_ncols=True)
    for i in it:
        ws = seeds[int(rng.integers(0, len(seeds)))]
        x0 = int(rng.integers(x_lo, x_hi + 1))
        y0 = int(rng.integers(y_lo, y_hi + 1))
        world = worlds.get(ws)
        if world is None:
            if len(worlds) > 256:
                worlds.clear()
            world = worlds[ws] = World(ws)
        pic = world.render(x0, y0, width, height)
        name = f"landscape_{i:06d}.{fmt}"
        img = Image.fromarray(pic)
        if fmt == "png":
            img.save(out / name, format="PNG", compress_level=6)
        else:
            img.save(out / name, format="JPEG", quality=95)
        files.append({"file": name, "world_seed": ws, "x0": x0, "y0": y0, "width": width, "height": height,
                      "palette": world.palette_name, "horizon": world.horizon})
    manifest = {
        "generator": "data_pipelines.landscapes",
        "generator_version": GENERATOR_VERSION,
        "view_height": VIEW_HEIGHT,
        "split": split,
        "world_seeds": _describe_seeds(seeds),
        "seed": int(seed),
        "size": [width, height],
        "y0": int(y) if y is not None else [y_lo, y_hi],
        "x_range": [x_lo, x_hi],
        "format": fmt,
        "count": len(files),
        "files": files,
    }
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST_FILE)
    return manifest


def _describe_seeds(seeds: list) -> dict:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return {"start": seeds[0], "stop": seeds[0] + len(seeds)}
    return {"list": seeds}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@dataclass
class LandscapesCommand(ConfigBase):
    """Everything ``nuwa-ds landscapes`` is told; its flags are generated from these fields."""

    out: str
    """Output folder for the pictures and landscapes.json."""
    count: int = 1000
    """Number of pictures."""
    size: str = "256x256"
    """WIDTHxHEIGHT, e.g. 256x256 (training crops), 4096x256 (panoramas), 1024x1024 (canvases), 256x1024
    (full-view-height strips)."""
    split: Literal[tuple(DEFAULT_WORLD_SEED_BASE)] = field(default="train", metadata=cli(help=(
        f"train or val: disjoint default world-seed ranges (train from {DEFAULT_WORLD_SEED_BASE['train']}, "
        f"val from {DEFAULT_WORLD_SEED_BASE['val']})")))
    worlds: int = 256
    """Number of distinct world seeds."""
    world_seed_base: Optional[int] = None
    """First world seed (default: by --split); seeds are [base, base + worlds)."""
    y: str = field(default="random", metadata=cli(help=(
        f"top row y0 of every picture, or 'random' (uniform in [0, {VIEW_HEIGHT} - height])")))
    format: Literal["png", "jpg"] = "png"
    """Picture file format."""
    seed: int = 0
    """Seed of the crop positions."""
    progress: bool = True
    """A progress bar."""

    def validate(self):
        parse_size(self.size)
        if self.count <= 0:
            raise ValueError(f"--count must be positive, got {self.count}")
        if self.worlds <= 0:
            raise ValueError(f"--worlds must be positive, got {self.worlds}")
        if self.world_seed_base is None and self.worlds > 1_000_000:
            raise ValueError("--worlds above 1000000 needs an explicit --world-seed-base to keep splits disjoint")
        self.top_row()

    def top_row(self) -> Optional[int]:
        """``--y`` as the pictures' top row, or None for random rows."""
        if self.y.lower() == "random":
            return None
        try:
            return int(self.y)
        except ValueError:
            raise ValueError(f"--y must be an integer or 'random', got {self.y!r}") from None


def add_arguments(parser: argparse.ArgumentParser):
    LandscapesCommand.add_flags(parser)


def run(args) -> int:
    command = LandscapesCommand.from_args(args)
    width, height = parse_size(command.size)
    base = DEFAULT_WORLD_SEED_BASE[command.split] if command.world_seed_base is None else command.world_seed_base
    manifest = write_dataset(command.out, count=command.count, size=(width, height),
                             world_seeds=range(base, base + command.worlds), y=command.top_row(), format=command.format,
                             seed=command.seed, split=command.split, progress=command.progress)
    print(f"{manifest['count']} pictures {width}x{height} of {command.worlds} worlds "
          f"(seeds [{base}, {base + command.worlds}), split {command.split}) in {command.out}")
    return 0
