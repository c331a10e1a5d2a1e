"""Multi-scale sliced Wasserstein distance (SWD) over Laplacian-pyramid patches, after Karras et al.
2018 (Progressive GAN, appendix D): no trained network, so no download.

Per image: a Laplacian pyramid (5-tap binomial filter [1, 4, 6, 4, 1] / 16 in each direction,
mirror borders, keep every second pixel; the band of level k is ``G_k - up(G_{k+1})``, the coarsest
level is the Gaussian itself), with levels from full resolution down to the last one whose short
side is still >= ``min_size`` (16) px. From every level, random 7x7x3 neighbourhoods (descriptors,
147 numbers) are drawn, ``descriptors`` of them per ``descriptor_area`` (256x256) px of the
image's full-resolution area, the same count at every level (a 256x256 image gives 128 per level as
in the paper; a 4096x256 canvas 16 times as many). Per set and level, each colour channel of the
descriptors is normalised by that set's own mean and standard deviation (over all its descriptors
and the 49 positions). Per level, SWD = the mean over ``dir_repeats x dirs_per_repeat`` random unit
directions of the mean absolute difference between the sorted projections of the two sets (the 1-D
Wasserstein-1 distance), after the larger set is subsampled to the size of the smaller. Reported
x 1e3, per level and as the mean over levels, as in the paper. Every random choice comes from
``numpy.random.default_rng([seed, ...])`` streams, so the same inputs and seed give the same number.

Python: ``swd`` (two lists of images), or ``DescriptorSet`` + ``swd_between`` to reuse one set's
descriptors across comparisons (``nuwa_ds.metrics.quality`` does that).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NHOOD = 7  # descriptor side (px)
DESCRIPTOR_DIM = 3 * NHOOD * NHOOD
SCALE = 1e3  # reported values are SWD x 1e3, as in the paper

# stream tags for default_rng([seed, tag, ...]); one per kind of random choice
_TAG_POSITIONS, _TAG_DIRECTIONS, _TAG_SUBSAMPLE, _TAG_CAP = 11, 12, 13, 14

__all__ = ["num_levels", "laplacian_pyramid", "descriptor_counts", "DescriptorSet", "normalize_descriptors",
           "sliced_wasserstein", "swd_between", "swd", "SCALE", "DESCRIPTOR_DIM"]

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float32) / 16.0


def num_levels(height: int, width: int, min_size: int = 16) -> int:
    """Pyramid levels of an image: full size, then ceil(size / 2) each level, while the short side
    is >= ``min_size``. 0 when the image itself is smaller."""
    levels, h, w = 0, height, width
    while min(h, w) >= min_size:
        levels += 1
        h, w = (h + 1) // 2, (w + 1) // 2
    return levels


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5x5 binomial filter of [C, H, W] with mirror borders (scipy's 'mirror')."""
    c = x.shape[0]
    k = _BINOMIAL.to(x)
    x = F.pad(x[None], (2, 2, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.pad(x, (0, 0, 2, 2), mode="reflect")
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)[0]


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, ::2, ::2]


def _up(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero insertion to twice the size, the binomial filter x 4, cropped to (height, width)."""
    c, h, w = x.shape
    up = x.new_zeros(c, 2 * h, 2 * w)
    up[:, ::2, ::2] = x
    return 4.0 * _blur(up)[:, :height, :width]


def laplacian_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[C, H, W] (any dtype; computed in float32 on the pixel scale given) -> ``levels`` tensors,
    finest first: band-pass levels ``G_k - up(G_{k+1})`` and the Gaussian ``G_{levels-1}`` last."""
    if levels < 1:
        raise ValueError(f"a pyramid needs at least one level, got {levels}")
    gaussian = [image.float()]
    for _ in range(levels - 1):
        gaussian.append(_down(gaussian[-1]))
    bands = [g - _up(g_next, g.shape[1], g.shape[2]) for g, g_next in zip(gaussian, gaussian[1:])]
    return bands + [gaussian[-1]]


def descriptor_counts(sizes: Sequence[tuple[int, int]], descriptors: int = 128, descriptor_area: int = 256 * 256,
                      max_descriptors: Optional[int] = None) -> list[int]:
    """Descriptors per level for each image (height, width): ``descriptors`` per ``descriptor_area``
    px of area, rounded, at least 1. With ``max_descriptors``, the density of the whole set is
    lowered (counts rounded down) so that the set's total per level stays within it (unless the
    at-least-1 rule alone exceeds it) (memory: ~600 bytes a descriptor)."""
    areas = np.array([h * w for h, w in sizes], dtype=np.float64)
    density = descriptors / descriptor_area
    if max_descriptors is not None and areas.sum() * density > max_descriptors:
        density = max_descriptors / areas.sum()
        return [max(1, int(a * density)) for a in areas]  # rounded down: within the cap
    return [max(1, int(round(a * density))) for a in areas]


class DescriptorSet:
    """Raw (not yet normalised) pyramid descriptors of one image set, per level, with the index of
    the image each row came from. Descriptor positions of image ``index`` are drawn from
    ``default_rng([seed, 11, tag, index])``."""

    def __init__(self, levels: int, seed: int = 0, tag: int = 0):
        self.levels, self.seed, self.tag = levels, seed, tag
        self._rows: list[list[np.ndarray]] = [[] for _ in range(levels)]
        self.images = 0

    def add(self, image: torch.Tensor, count: int, index: Optional[int] = None) -> None:
        """``count`` descriptors per level from one [3, H, W] image (uint8 or float, one scale for all)."""
        self.add_pyramid(laplacian_pyramid(image, self.levels), count, index)

    def add_pyramid(self, bands: Sequence[torch.Tensor], count: int, index: Optional[int] = None) -> None:
        """``add`` for an image whose pyramid (``laplacian_pyramid(image, levels)``) is already made,
        e.g. by one batched call over many frames (the filter is per channel: [N * 3, H, W] in one go)."""
        if len(bands) != self.levels:
            raise ValueError(f"expected a pyramid of {self.levels} levels, got {len(bands)}")
        index = self.images if index is None else index
        rng = np.random.default_rng([self.seed, _TAG_POSITIONS, self.tag, index])
        for level, band in enumerate(bands):
            _, h, w = band.shape
            if h < NHOOD or w < NHOOD:
                raise ValueError(f"pyramid level {level} is {h}x{w} px, smaller than a {NHOOD}x{NHOOD} descriptor")
            ys = torch.from_numpy(rng.integers(0, h - NHOOD + 1, count))
            xs = torch.from_numpy(rng.integers(0, w - NHOOD + 1, count))
            off = torch.arange(NHOOD)
            patches = band[:, (ys[:, None] + off)[:, :, None], (xs[:, None] + off)[:, None, :]]  # [3, n, 7, 7]
            self._rows[level].append(patches.permute(1, 0, 2, 3).reshape(count, DESCRIPTOR_DIM).numpy())
        self.images += 1

    def level(self, level: int) -> np.ndarray:
        """float32 [n, 147] raw descriptors of one level (channel-major: 3 x 7 x 7)."""
        rows = self._rows[level]
        if len(rows) > 1:
            self._rows[level] = rows = [np.concatenate(rows)]
        return rows[0] if rows else np.zeros((0, DESCRIPTOR_DIM), np.float32)

    def __len__(self) -> int:
        return len(self.level(0)) if self.levels else 0


def normalize_descriptors(desc: np.ndarray) -> np.ndarray:
    """Per colour channel: subtract the mean and divide by the standard deviation over all
    descriptors and positions of the set (float64). A constant channel is only centred."""
    d = desc.astype(np.float64).reshape(len(desc), 3, NHOOD * NHOOD)
    mean = d.mean(axis=(0, 2), keepdims=True)
    std = d.std(axis=(0, 2), keepdims=True)
    d = (d - mean) / np.where(std > 0, std, 1.0)
    return d.reshape(len(desc), DESCRIPTOR_DIM)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                       rng: Optional[np.random.Generator] = None) -> float:
    """Mean over ``dir_repeats x dirs_per_repeat`` random unit directions of the mean absolute
    difference between the sorted projections of ``a`` and ``b`` (equal row counts). Not scaled."""
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equal shapes, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(0) if rng is None else rng
    dists = []
    for _ in range(dir_repeats):
        dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa = np.sort(a @ dirs, axis=0)
        pb = np.sort(b @ dirs, axis=0)
        dists.append(np.abs(pa - pb).mean())
    return float(np.mean(dists))


def _subsample(desc: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(desc) == n:
        return desc
    return desc[np.sort(rng.permutation(len(desc))[:n])]


def swd_between(a: DescriptorSet, b: DescriptorSet, *, count: Optional[int] = None, dir_repeats: int = 4,
                dirs_per_repeat: int = 128, seed: int = 0) -> dict:
    """SWD x 1e3 between two descriptor sets: ``{"levels": [per level, finest first], "mean": ...,
    "descriptors": n}``. Each set is normalised on all its rows, then subsampled to ``n`` rows (the
    smaller set's size, or ``count`` when given and not larger). Directions depend only on (seed,
    level), so one seed compares every pair along the same directions."""
    if a.levels != b.levels:
        raise ValueError(f"descriptor sets have {a.levels} and {b.levels} levels")
    n = min(len(a), len(b))
    if count is not None:
        n = min(n, count)
    if n < 2:
        raise ValueError(f"SWD needs at least 2 descriptors per set, got {n}")
    levels = []
    for level in range(a.levels):
        da = _subsample(normalize_descriptors(a.level(level)), n,
                        np.random.default_rng([seed, _TAG_SUBSAMPLE, level, a.tag]))
        db = _subsample(normalize_descriptors(b.level(level)), n,
                        np.random.default_rng([seed, _TAG_SUBSAMPLE, level, b.tag]))
        dist = sliced_wasserstein(da, db, dir_repeats=dir_repeats, dirs_per_repeat=dirs_per_repeat,
                                  rng=np.random.default_rng([seed, _TAG_DIRECTIONS, level]))
        levels.append(dist * SCALE)
    return {"levels": levels, "mean": float(np.mean(levels)), "descriptors": n}


def swd(images_a: Iterable[torch.Tensor], images_b: Iterable[torch.Tensor], *, descriptors: int = 128,
        descriptor_area: int = 256 * 256, min_size: int = 16, dir_repeats: int = 4, dirs_per_repeat: int = 128,
        max_descriptors: Optional[int] = 65536, seed: int = 0) -> dict:
    """SWD x 1e3 between two lists of [3, H, W] images (any sizes, one pixel scale): per level and
    mean, plus the level count and descriptor counts. See the module docstring for the definition."""
    check_settings(descriptors, descriptor_area, min_size, dir_repeats, dirs_per_repeat, max_descriptors)
    images_a, images_b = list(images_a), list(images_b)
    if not images_a or not images_b:
        raise ValueError("SWD needs at least one image per set")
    sizes = [[tuple(im.shape[1:]) for im in images] for images in (images_a, images_b)]
    levels = min(num_levels(h, w, min_size) for s in sizes for h, w in s)
    if levels < 1:
        raise ValueError(f"SWD needs images of at least {min_size}x{min_size} px")
    sets = []
    for tag, (images, s) in enumerate(zip((images_a, images_b), sizes)):
        counts = descriptor_counts(s, descriptors, descriptor_area, max_descriptors)
        ds = DescriptorSet(levels, seed=seed, tag=tag)
        for index, (image, count) in enumerate(zip(images, counts)):
            ds.add(image, count, index)
        sets.append(ds)
    result = swd_between(sets[0], sets[1], dir_repeats=dir_repeats, dirs_per_repeat=dirs_per_repeat, seed=seed)
    result.update(num_levels=levels, samples=[len(sets[0]), len(sets[1])], seed=seed)
    return result


def level_scales(levels: int) -> list[str]:
    """Names of the levels, finest first: '1', '1/2', '1/4', ..."""
    return ["1" if k == 0 else f"1/{2 ** k}" for k in range(levels)]


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_settings(descriptors, descriptor_area, min_size, dir_repeats, dirs_per_repeat, max_descriptors) -> None:
    for name, value in (("descriptors", descriptors), ("descriptor_area", descriptor_area),
                        ("dir_repeats", dir_repeats), ("dirs_per_repeat", dirs_per_repeat)):
        _check_positive(name, value)
    _check_positive("min_size", min_size)
    if min_size < NHOOD:
        raise ValueError(f"min_size must be >= {NHOOD} (the descriptor side), got {min_size}")
    if max_descriptors is not None:
        _check_positive("max_descriptors", max_descriptors)

