"""Motion between video frames, read from the pixels.

``content_shift(a, b)`` answers "by how many pixels did the picture move from frame ``a`` to frame
``b``" by block matching over the whole frame: the shift ``s`` that minimises the variance of the
difference ``b[p + s] - a[p]`` over the overlap of the two frames (a squared difference blind to a
change of brightness), for every whole-pixel shift up to ``max_shift`` at once (FFT correlations: the
cross term, each frame's sum and energy over the overlap), refined to a fraction of a pixel by one
Gauss-Newton step on the overlap (Lucas & Kanade 1981). The frames are luma, blurred by a Gaussian
of ``blur`` px (only where its whole neighbourhood lies inside the frame) and mean-removed.

Why not phase correlation (Kuglin & Hines 1975, what this module used first): it whitens the
spectrum, so every frequency votes equally, and in frames decoded from tokens most frequencies carry
the decoder's texture at the token grid rather than the moving picture: they vote for "no motion".
On VQ reconstructions of 12 panning held-out clips (8 frames; the CPU video recipe's f8 tokenizer)
phase correlation read the speed with a relative error of 0.92 (64 px) / 0.93 (128 px), block
matching (``blur`` 2 px) 0.08 / 0.06, while on the real clips both are within 3%
(docs/decisions.md, "Motion by block matching"). ``phase_correlation`` stays for comparison.

Sign: content that moves right (the camera pans left) gives ``dx > 0``; content moving down ``dy > 0``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_LUMA = np.array([0.299, 0.587, 0.114])

DEFAULT_BLUR = 2.0
"""Gaussian sigma (px) applied before block matching: a quarter of an f8 token. Relative speed error
on 12 panning held-out clips (docs/decisions.md), sigma 0 / 1 / 2 / 3 / 4 px: real frames 0.011 /
0.003 / 0.003 / 0.003 / 0.005 (64 px); their VQ reconstructions 0.31 / 0.12 / 0.08 / 0.06 / 0.05 (64 px)
and 0.19 / 0.09 / 0.06 / 0.04 / 0.04 (128 px). Each sigma costs a border of 3 sigma px."""

__all__ = ["luma", "content_shift", "clip_shifts", "phase_correlation", "DEFAULT_BLUR"]


def luma(frame: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] (any range) -> float64 [H, W]."""
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim == 3:
        if frame.shape[-1] not in (1, 3):
            raise ValueError(f"frames are [H, W] or [H, W, 3], got shape {frame.shape}")
        frame = frame[..., 0] if frame.shape[-1] == 1 else frame @ _LUMA
    elif frame.ndim != 2:
        raise ValueError(f"frames are [H, W] or [H, W, 3], got shape {frame.shape}")
    return frame


def _blur_radius(sigma: float) -> int:
    return int(np.ceil(3 * sigma)) if sigma > 0 else 0


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian (truncated at 3 sigma) over the pixels whose whole neighbourhood lies in
    the frame: the result is ``2 * radius`` px smaller on each axis (a padded border would differ
    between two frames of a pan and bias the match)."""
    radius = _blur_radius(sigma)
    if radius == 0:
        return image
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    width = 2 * radius + 1  # each axis in turn: every valid window times the taps (symmetric), one matmul
    image = sliding_window_view(image, width, axis=0) @ taps
    return sliding_window_view(image, width, axis=1) @ taps


def _refine(before: float, centre: float, after: float) -> float:
    """Offset of a parabola's vertex through three equally spaced samples around a maximum, in
    [-0.5, 0.5] (``phase_correlation``'s peak)."""
    denom = before - 2.0 * centre + after
    if denom >= 0.0:  # not a maximum (flat): no refinement
        return 0.0
    return float(np.clip(0.5 * (before - after) / denom, -0.5, 0.5))


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    la, lb = luma(a), luma(b)
    if la.shape != lb.shape:
        raise ValueError(f"frames differ in size: {la.shape} vs {lb.shape}")
    if min(la.shape) < 4:
        raise ValueError(f"frames of {la.shape[0]}x{la.shape[1]} px are too small to measure motion")
    return la, lb


class _Matcher:
    """Block matching of frames of one size: the FFTs of the overlap mask made once."""

    def __init__(self, height: int, width: int, blur: float, max_shift: Optional[int]):
        self.blur = blur
        height, width = height - 2 * _blur_radius(blur), width - 2 * _blur_radius(blur)  # after the blur
        if min(height, width) < 4:
            raise ValueError(f"frames too small to measure motion with a blur of {blur} px")
        self.max_shift = min(height, width) // 2 if max_shift is None else int(max_shift)
        if not 1 <= self.max_shift <= min(height, width) // 2:
            raise ValueError(f"max_shift must be in [1, {min(height, width) // 2}] px for these frames "
                             f"(blur {blur} px), got {self.max_shift}")
        self.H, self.W = 2 * height, 2 * width  # zero padding: correlations without wrap-around
        m = self.max_shift
        self.rows = np.r_[self.H - m:self.H, 0:m + 1]  # shifts -m..m in order, as indices of the padded grid
        self.cols = np.r_[self.W - m:self.W, 0:m + 1]
        self.ones = self._spectrum(np.ones((height, width)))
        self.count = self._correlate(self.ones, self.ones)  # pixels in the overlap, per shift

    def _spectrum(self, x: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(x, s=(self.H, self.W))

    def _correlate(self, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        """sum_p x[p] y[p + s] for every shift s, restricted to |s| <= max_shift."""
        full = np.fft.irfft2(np.conj(fx) * fy, s=(self.H, self.W))
        return full[np.ix_(self.rows, self.cols)]

    def prepare(self, frame: np.ndarray):
        x = _gaussian_blur(luma(frame), self.blur)
        x = x - x.mean()
        return x, self._spectrum(x), self._spectrum(x * x)

    def shift(self, pa, pb) -> tuple[float, float]:
        (a, sa, qa), (b, sb, qb) = pa, pb
        cross = self._correlate(sa, sb)
        energy = self._correlate(qa, self.ones) + self._correlate(self.ones, qb)
        count = np.maximum(self.count, 1.0)
        offset = (self._correlate(self.ones, sb) - self._correlate(sa, self.ones)) / count  # mean of b - a
        msd = (energy - 2.0 * cross) / count - offset ** 2  # the difference's variance: a brightness change
        # between the frames (the sun, a cloud) moves no match
        m = self.max_shift
        iy, ix = np.unravel_index(int(np.argmin(msd)), msd.shape)
        if msd[m, m] <= msd[iy, ix] + 1e-12 * max(1.0, float(msd[m, m])):  # a tie (e.g. flat frames): no motion
            iy, ix = m, m
        return _subpixel(a, b, int(iy) - self.max_shift, int(ix) - self.max_shift)


def _subpixel(a: np.ndarray, b: np.ndarray, sy: int, sx: int) -> tuple[float, float]:
    """The whole-pixel shift (sy, sx) refined by one Gauss-Newton step on the overlap (Lucas & Kanade
    1981): b[p + s + d] ~ b[p + s] + d . grad b, least squares in d and a brightness offset, d kept
    within half a pixel."""
    h, w = a.shape
    a_o = a[max(0, -sy):h - max(0, sy), max(0, -sx):w - max(0, sx)]
    gy, gx = np.gradient(b)
    window = (slice(max(0, sy), h - max(0, -sy)), slice(max(0, sx), w - max(0, -sx)))
    b_o, gy, gx = b[window], gy[window], gx[window]
    r = (b_o - a_o).ravel()
    g = np.stack([gy.ravel(), gx.ravel()], 1)
    r, g = r - r.mean(), g - g.mean(0)  # the offset's least-squares value taken out
    m = g.T @ g
    if np.linalg.cond(m) > 1e8:  # a flat or one-directional picture: keep the whole-pixel shift
        return float(sy), float(sx)
    d = np.clip(-np.linalg.solve(m, g.T @ r), -0.5, 0.5)
    return float(sy + d[0]), float(sx + d[1])

def content_shift(a: np.ndarray, b: np.ndarray, *, blur: float = DEFAULT_BLUR,
                  max_shift: Optional[int] = None) -> tuple[float, float]:
    """(dy, dx) in pixels by which the content of frame ``a`` moved to give frame ``b`` (block
    matching, module docstring); shifts up to ``max_shift`` px on each axis (default: half the smaller
    side, less the blur's border)."""
    la, lb = _check_pair(a, b)
    matcher = _Matcher(*la.shape, blur, max_shift)
    return matcher.shift(matcher.prepare(la), matcher.prepare(lb))


def clip_shifts(frames: Sequence[np.ndarray], *, blur: float = DEFAULT_BLUR, max_shift: Optional[int] = None,
                method: str = "block") -> np.ndarray:
    """[T-1, 2]: (dy, dx) between each pair of consecutive frames of one clip; ``method`` "block"
    (``content_shift``) or "phase" (``phase_correlation``, for comparison)."""
    if len(frames) < 2:
        raise ValueError("a clip needs at least 2 frames to measure motion")
    if method == "phase":
        first = luma(frames[0])
        w = _window(*first.shape)
        return np.array([phase_correlation(frames[t], frames[t + 1], w) for t in range(len(frames) - 1)])
    if method != "block":
        raise ValueError(f"method must be 'block' or 'phase', got {method!r}")
    lumas = [luma(f) for f in frames]  # each frame converted once
    for frame in lumas[1:]:
        _check_pair(lumas[0], frame)
    matcher = _Matcher(*lumas[0].shape, blur, max_shift)
    prepared = [matcher.prepare(f) for f in lumas]
    return np.array([matcher.shift(prepared[t], prepared[t + 1]) for t in range(len(frames) - 1)])


def _window(height: int, width: int) -> np.ndarray:
    return np.outer(np.hanning(height), np.hanning(width))


def phase_correlation(a: np.ndarray, b: np.ndarray, window: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(dy, dx) by phase correlation: luma, mean-removed, Hann-windowed; the normalised cross-power
    spectrum's inverse transform peaks at the shift, refined by a parabola. Exact on real pans, but
    biased towards zero on frames decoded from tokens (module docstring). Shifts lie in
    (-size/2, size/2]."""
    la, lb = _check_pair(a, b)
    height, width = la.shape
    w = _window(height, width) if window is None else window
    fa = np.fft.rfft2((la - la.mean()) * w)
    fb = np.fft.rfft2((lb - lb.mean()) * w)
    cross = fb * np.conj(fa)
    magnitude = np.abs(cross)
    cross = np.where(magnitude > 1e-12 * max(magnitude.max(), 1e-300), cross / np.maximum(magnitude, 1e-300), 0.0)
    surface = np.fft.irfft2(cross, s=(height, width))
    py, px = np.unravel_index(int(np.argmax(surface)), surface.shape)
    dy = py + _refine(surface[(py - 1) % height, px], surface[py, px], surface[(py + 1) % height, px])
    dx = px + _refine(surface[py, (px - 1) % width], surface[py, px], surface[py, (px + 1) % width])
    if dy > height / 2:
        dy -= height
    if dx > width / 2:
        dx -= width
    return float(dy), float(dx)
