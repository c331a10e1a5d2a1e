"""Seam scores: do patch boundaries stand out from the patch interiors?

For an image I ([C, H, W], pixel values on one scale, e.g. 0..255) and a block size b (pixels per
generated patch, e.g. 64 = 8 tokens x f8), with the patch grid anchored at the top-left corner:

- column gradients ``g[c, y, x] = |I[c, y, x+1] - I[c, y, x]|`` for x = 0..W-2; column x is a
  *boundary* column when ``(x + 1) % b == 0`` (the step from the last column of one patch to the
  first of the next), else an *interior* one;
- ``columns = (mean of g over boundary columns + eps) / (mean of g over interior columns + eps)``
  (means over all rows, channels and such columns; eps = 1e-3 of the pixel scale 0..255, so a flat
  image scores 1.0); ``rows`` is the same with vertical gradients and ``(y + 1) % b == 0``;
- ``both`` pools the boundary gradients of both directions (each entry once) over the pooled
  interior ones.

1.0: boundaries look like the interior; > 1: visible seams. An image with no boundary in one
direction (not wider / taller than b) has ``None`` there (and in ``both`` when it has none at all).
A folder's score is the mean of its images' scores (images with ``None`` left out).

``boundary_score`` is the outpainting variant: the gradient across one given line (between
column ``column - 1`` and ``column``, or the same for a row) over the mean gradient in the same
direction across every other line of the image.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

EPS = 1e-3

__all__ = ["seam_scores", "boundary_score", "SeamStats", "EPS"]


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column and per-row sums of absolute differences (float64): col [W-1], row [H-1]."""
    x = image.float()
    col = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(dim=(0, 1), dtype=torch.float64)
    row = (x[:, 1:, :] - x[:, :-1, :]).abs().sum(dim=(0, 2), dtype=torch.float64)
    return col, row


def _split(profile: torch.Tensor, block: int) -> tuple[float, int, float, int]:
    """(boundary sum, boundary lines, interior sum, interior lines) of one direction's profile."""
    boundary = (torch.arange(1, len(profile) + 1) % block) == 0
    return (float(profile[boundary].sum()), int(boundary.sum()), float(profile[~boundary].sum()),
            int((~boundary).sum()))


def _ratio(b_sum: float, b_count: int, i_sum: float, i_count: int) -> Optional[float]:
    if b_count == 0 or i_count == 0:
        return None
    return (b_sum / b_count + EPS) / (i_sum / i_count + EPS)


def seam_scores(image: torch.Tensor, block: int) -> dict:
    """``{"columns", "rows", "both"}`` seam scores of one [C, H, W] image for patches of ``block`` px."""
    if not isinstance(block, int) or block < 2:
        raise ValueError(f"seam block size must be an integer >= 2 (pixels), got {block!r}")
    c, h, w = image.shape
    col, row = _gradients(image)
    cb, cbn, ci, cin = _split(col, block)
    rb, rbn, ri, rin = _split(row, block)
    per_col, per_row = c * h, c * w  # gradient entries per column line / per row line
    both = None
    if cbn + rbn and cin + rin:
        both = ((cb + rb) / (cbn * per_col + rbn * per_row) + EPS) / ((ci + ri) / (cin * per_col + rin * per_row) + EPS)
    return {"columns": _ratio(cb / per_col, cbn, ci / per_col, cin),
            "rows": _ratio(rb / per_row, rbn, ri / per_row, rin), "both": both}


def boundary_score(image: torch.Tensor, *, column: Optional[int] = None, row: Optional[int] = None) -> Optional[float]:
    """Gradient across the line before ``column`` (or ``row``) over the mean gradient across all the
    other lines of that direction. ``None`` when the line is not inside the image."""
    if (column is None) == (row is None):
        raise ValueError("give exactly one of column / row")
    col, rowp = _gradients(image)
    profile, line = (col, column) if column is not None else (rowp, row)
    if not 0 < line <= len(profile) or len(profile) < 2:
        return None
    # profile[k] is the step between lines k and k+1: the line before `line` is step line-1
    others = torch.cat([profile[:line - 1], profile[line:]])
    norm = image.shape[0] * (image.shape[1] if column is not None else image.shape[2])
    return (float(profile[line - 1]) / norm + EPS) / (float(others.mean()) / norm + EPS)


class SeamStats:
    """Accumulates per-image seam scores (and boundary scores of given lines) of one image set."""

    def __init__(self, block: int, boundary_columns=(), boundary_rows=()):
        self.block = block
        self.lines = [("column", c) for c in boundary_columns] + [("row", r) for r in boundary_rows]
        self.scores: dict[str, list[float]] = {"columns": [], "rows": [], "both": []}
        self.boundaries: dict[str, list[float]] = {f"{kind}_{at}": [] for kind, at in self.lines}
        self.images = 0

    def add(self, image: torch.Tensor) -> None:
        for key, value in seam_scores(image, self.block).items():
            if value is not None:
                self.scores[key].append(value)
        for kind, at in self.lines:
            value = boundary_score(image, **{kind: at})
            if value is not None:
                self.boundaries[f"{kind}_{at}"].append(value)
        self.images += 1

    def summary(self) -> dict:
        """Means over images (None where no image had such a boundary) and the counts behind them."""
        def mean(values):
            return float(np.mean(values)) if values else None

        out = {key: mean(values) for key, values in self.scores.items()}
        out["images"] = self.images
        out["images_with"] = {key: len(values) for key, values in self.scores.items()}
        if self.lines:
            out["boundaries"] = {key: {"score": mean(values), "images": len(values)}
                                 for key, values in self.boundaries.items()}
        return out
