"""Phase correlation reads the motion between frames (nuwa_ds.metrics.temporal)."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.landscapes import World
from nuwa_ds.metrics.temporal import clip_shifts, content_shift


@pytest.mark.parametrize("seed", [3, 11])
def test_a_pan_over_a_landscape_is_read_to_a_fraction_of_a_pixel(seed):
    rng = np.random.default_rng(seed)
    world = World(seed)
    x0 = int(rng.integers(0, 10_000))
    for pan in (int(rng.integers(1, 9)), -int(rng.integers(1, 9)), 0):
        a, b = world.render(x0, 450, 128, 128), world.render(x0 + pan, 450, 128, 128)
        dy, dx = content_shift(a, b)  # the camera moved right by `pan`: the content moved left
        assert abs(dx + pan) < 0.1 and abs(dy) < 0.1, (pan, dy, dx)


def test_subpixel_and_vertical_shifts_and_a_clip():
    rng = np.random.default_rng(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(96), indexing="ij")
    # a texture with a 1/f spectrum (as pictures have), shifted by (2.5, -1.5) px through a phase ramp
    spectrum = np.fft.fft2(rng.random((96, 96))) / (1 + 96 * np.hypot(fy, fx))
    smooth = np.real(np.fft.ifft2(spectrum))
    moved = np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (fy * 2.5 + fx * -1.5))))
    dy, dx = content_shift(smooth, moved)
    assert abs(dy - 2.5) < 0.2 and abs(dx + 1.5) < 0.2  # parabolic refinement: ~0.1 px bias, (dy, dx)
    frames = [np.roll(smooth, (0, 3 * t), axis=(0, 1)) for t in range(4)]
    np.testing.assert_allclose(clip_shifts(frames), [[0, 3]] * 3, atol=0.05)


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        content_shift(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_shifts([np.zeros((8, 8))])
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 3\]"):
        content_shift(np.zeros((8, 8, 4)), np.zeros((8, 8, 4)))
