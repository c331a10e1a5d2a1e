"""Block matching reads the motion between frames (nuwa_ds.metrics.temporal), also through a coarse
code, where phase correlation reads none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_pipelines.landscapes import World
from nuwa_ds.metrics.temporal import clip_shifts, content_shift, phase_correlation


@pytest.mark.parametrize("seed", [3, 11])
def test_a_pan_over_a_landscape_is_read_to_a_fraction_of_a_pixel(seed):
    rng = np.random.default_rng(seed)
    world = World(seed)
    x0 = int(rng.integers(0, 10_000))
    for pan in (int(rng.integers(1, 9)), -int(rng.integers(1, 9)), 0):
        a, b = world.render(x0, 450, 128, 128), world.render(x0 + pan, 450, 128, 128)
        for dy, dx in (content_shift(a, b), phase_correlation(a, b)):  # the camera moved right by `pan`
            assert abs(dx + pan) < 0.1 and abs(dy) < 0.1, (pan, dy, dx)


def _smooth_texture(rng, size):
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    return np.fft.fft2(rng.random((size, size))) / (1 + size * np.hypot(fy, fx)), fy, fx  # a 1/f spectrum


def test_subpixel_and_vertical_shifts_and_a_clip():
    spectrum, fy, fx = _smooth_texture(np.random.default_rng(0), 96)
    smooth = np.real(np.fft.ifft2(spectrum))
    moved = np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (fy * 2.5 + fx * -1.5))))  # a phase ramp
    dy, dx = content_shift(smooth, moved)
    assert abs(dy - 2.5) < 0.05 and abs(dx + 1.5) < 0.05, (dy, dx)
    dy, dx = phase_correlation(smooth, moved)
    assert abs(dy - 2.5) < 0.2 and abs(dx + 1.5) < 0.2  # parabolic refinement: ~0.1 px bias
    frames = [np.roll(smooth, (0, 3 * t), axis=(0, 1)) for t in range(4)]
    np.testing.assert_allclose(clip_shifts(frames), [[0, 3]] * 3, atol=0.05)
    np.testing.assert_allclose(clip_shifts(frames, method="phase"), [[0, 3]] * 3, atol=0.05)
    with pytest.raises(ValueError, match="max_shift"):
        clip_shifts(frames, max_shift=60)  # beyond half the frame


def _through_a_coarse_code(frame: np.ndarray) -> np.ndarray:
    """What a decoder of f8 tokens gives back, roughly: the means of 8x8 blocks on 16 levels, upsampled
    smoothly (bicubic) onto the fixed grid."""
    x = torch.tensor(frame, dtype=torch.float32).permute(2, 0, 1)[None]
    code = torch.round(F.avg_pool2d(x, 8) / 16) * 16
    up = F.interpolate(code, scale_factor=8, mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).clamp(0, 255).numpy().astype(np.uint8)


def test_block_matching_reads_a_pan_through_a_coarse_code_where_phase_correlation_does_not():
    world = World(5)
    for pan in (1, 3):
        clip = [_through_a_coarse_code(world.render(300 + pan * t, 450, 64, 64)) for t in range(8)]
        block = clip_shifts(clip)[:, 1].mean()
        phase = clip_shifts(clip, method="phase")[:, 1].mean()
        assert abs(block + pan) < 0.25 * pan, (pan, block)
        assert abs(phase + pan) > 0.5 * pan, (pan, phase)  # the grid votes for "no motion"


def test_bad_frames_are_refused():
    for shift in (content_shift, phase_correlation):
        with pytest.raises(ValueError, match="differ in size"):
            shift(np.zeros((8, 8)), np.zeros((8, 9)))
        with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 3\]"):
            shift(np.zeros((8, 8, 4)), np.zeros((8, 8, 4)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_shifts([np.zeros((8, 8))])
    with pytest.raises(ValueError, match="differ in size"):
        clip_shifts([np.zeros((16, 16)), np.zeros((16, 16)), np.zeros((16, 17))])
    with pytest.raises(ValueError, match="method"):
        clip_shifts([np.zeros((16, 16))] * 2, method="optical")


def test_flat_frames_do_not_move():
    flat = [np.full((32, 32, 3), 90, np.uint8)] * 3
    np.testing.assert_array_equal(clip_shifts(flat), np.zeros((2, 2)))
