"""Image folders for FID: listing, header-only size checks, decoding, and Block-FID blocks.

Block-FID (the NUWA-Infinity paper's metric for large canvases) scores the non-overlapping
``block x block`` pixel blocks of each image instead of the whole (down-sampled) image: a 38912x2048
canvas squeezed into 299x299 says nothing about the detail a patch-wise generator produces. Blocks
are cut in raster order from the top-left corner; the right and bottom remainders narrower than a
block are dropped (never padded or resampled, so every block is real pixels at the original scale).
An image smaller than one block contributes no block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

__all__ = ["list_images", "count_blocks", "cut_blocks", "ImageFolder"]


def list_images(folder: Union[str, Path]) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive, as pytorch-fid), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as exc:  # truncated / not an image: name the file
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def count_blocks(height: int, width: int, block: int) -> int:
    return (height // block) * (width // block)


def cut_blocks(image: torch.Tensor, block: int) -> torch.Tensor:
    """[C, H, W] -> [(H // block) * (W // block), C, block, block], raster order; remainders dropped."""
    c, h, w = image.shape
    rows, cols = h // block, w // block
    x = image[:, : rows * block, : cols * block]
    x = x.reshape(c, rows, block, cols, block).permute(1, 3, 0, 2, 4)  # [rows, cols, C, block, block]
    return x.reshape(rows * cols, c, block, block)


def load_image(path: Path) -> torch.Tensor:
    """RGB uint8 [3, H, W] (grey, palette and alpha images converted to RGB as pytorch-fid does)."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFolder(torch.utils.data.Dataset):
    """Decoded images of a folder, one uint8 [3, H, W] tensor per item (sizes may differ)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index])


def scan_folder(folder: Union[str, Path], block: Optional[int]) -> tuple[list[Path], int]:
    """Image paths and, when ``block`` is given, the number of blocks they yield (headers only)."""
    paths = list_images(folder)
    if block is None:
        return paths, 0
    return paths, sum(count_blocks(*image_size(p), block) for p in paths)
