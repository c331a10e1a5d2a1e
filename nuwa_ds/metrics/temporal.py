"""Motion between video frames, read from the pixels: phase correlation (Kuglin & Hines 1975).

``content_shift(a, b)`` answers "by how many pixels did the picture move from frame ``a`` to frame
``b``": the normalised cross-power spectrum of the two frames is a pure phase ramp for a translation,
its inverse transform a peak at the shift. The frames are luma, mean-removed and Hann-windowed (the
content that enters and leaves at the borders of a pan would otherwise put a peak at zero), and the
peak is refined to a fraction of a pixel by a parabola through it and its two neighbours on each axis.

Sign: content that moves right (the camera pans left) gives ``dx > 0``; content moving down ``dy > 0``.
A shift is only defined modulo the frame size; the result lies in (-size/2, size/2].
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114])


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


def _window(height: int, width: int) -> np.ndarray:
    return np.outer(np.hanning(height), np.hanning(width))


def _refine(before: float, peak: float, after: float) -> float:
    """Offset of a parabola's vertex through three equally spaced samples, in [-0.5, 0.5]."""
    denom = before - 2.0 * peak + after
    if denom >= 0.0:  # not a maximum (flat): no refinement
        return 0.0
    return float(np.clip(0.5 * (before - after) / denom, -0.5, 0.5))


def content_shift(a: np.ndarray, b: np.ndarray, window: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(dy, dx) in pixels by which the content of frame ``a`` moved to give frame ``b``."""
    la, lb = luma(a), luma(b)
    if la.shape != lb.shape:
        raise ValueError(f"frames differ in size: {la.shape} vs {lb.shape}")
    height, width = la.shape
    if height < 4 or width < 4:
        raise ValueError(f"frames of {height}x{width} px are too small for phase correlation")
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


def clip_shifts(frames: Sequence[np.ndarray]) -> np.ndarray:
    """[T-1, 2]: (dy, dx) between each pair of consecutive frames of one clip."""
    if len(frames) < 2:
        raise ValueError("a clip needs at least 2 frames to measure motion")
    first = luma(frames[0])
    w = _window(*first.shape)
    return np.array([content_shift(frames[t], frames[t + 1], w) for t in range(len(frames) - 1)])
