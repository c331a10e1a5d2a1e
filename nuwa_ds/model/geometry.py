"""Orders and Nearby Context Pool offsets as plain numbers: the vocabulary every other part of the
model (and its config) shares.

* ``ORDERS``: the generation orders of the Arbitrary Direction Controller, named by the direction the
  canvas grows (frames are always outermost): ``down`` (raster), ``up``, ``right`` (column by
  column), ``left``. An order's id is its index here (the order embedding's row).
* NCP extents ``(e_t, e_h, e_w)``: frames back, patch rows and columns either side that a patch sees.
* Offset ids: one per ``(dt, dr, dc)`` within the extents (``dt <= 0``), the index of the learned
  per-head bias; ``text_offset_id`` is one past them (the text block's bias).

No torch here: the model's config (``nuwa_ds.model.config``) validates with these functions, and the
CLI imports the config before torch (docs/decisions.md, "Stop signals"). The tables built from a
canvas shape (``ContextTable``) are in ``orders.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensors pass through to_patches / from_patches; this module never imports torch
    import torch

ORDERS = ("down", "up", "right", "left")


def check_order(order: str) -> int:
    """Return the order's id (its index in ``ORDERS``); ValueError for an unknown name."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    return ORDERS.index(order)


def check_extents(extents) -> tuple[int, int, int]:
    ext = tuple(int(e) for e in extents)
    if len(ext) != 3 or any(e < 0 for e in ext):
        raise ValueError(f"NCP extents must be three non-negative integers (e_t, e_h, e_w), got {extents!r}")
    return ext


def num_offsets(extents) -> int:
    """Number of distinct (dt, dr, dc) offsets within the extents (dt <= 0): size of the bias table
    without the extra text entry."""
    e_t, e_h, e_w = extents
    return (e_t + 1) * (2 * e_h + 1) * (2 * e_w + 1)


def offset_id(dt: int, dr: int, dc: int, extents) -> int:
    """Bias-table index of the offset of a key patch relative to its query patch (dt <= 0)."""
    e_t, e_h, e_w = extents
    return ((dt + e_t) * (2 * e_h + 1) + (dr + e_h)) * (2 * e_w + 1) + (dc + e_w)


def own_offset_id(extents) -> int:
    """Bias-table index of offset (0, 0, 0): a patch attending to its own block."""
    return offset_id(0, 0, 0, extents)


def text_offset_id(extents) -> int:
    """Bias-table index of the always-visible text block (one past the patch offsets)."""
    return num_offsets(extents)


# ----------------------------------------------------------------------------------------------
# Canvas <-> patches



def to_patches(tokens: torch.Tensor, P: int) -> torch.Tensor:
    """[B, T, H, W, ...] -> [B, N, n, ...], patches in canonical (t, row, col) order, tokens raster
    inside a patch."""
    B, T, H, W = tokens.shape[:4]
    rest = tokens.shape[4:]
    x = tokens.reshape(B, T, H // P, P, W // P, P, *rest).permute(0, 1, 2, 4, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape(B, T * (H // P) * (W // P), P * P, *rest)


def from_patches(patches: torch.Tensor, shape: tuple[int, int, int], P: int) -> torch.Tensor:
    """[B, N, n, ...] -> [B, T, H, W, ...] (inverse of ``to_patches``)."""
    T, H, W = shape
    B = patches.shape[0]
    rest = patches.shape[3:]
    x = patches.reshape(B, T, H // P, W // P, P, P, *rest).permute(0, 1, 2, 4, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape(B, T, H, W, *rest)


def patch_canvas(shape, P: int) -> tuple[int, int, int]:
    """Token canvas (T, H, W) -> patch canvas (T, Hp, Wp); ValueError if not patch-aligned."""
    if len(shape) != 3:
        raise ValueError(f"canvas must be (T, H, W) in tokens, got {tuple(shape)}")
    T, H, W = (int(s) for s in shape)
    if T < 1 or H < 1 or W < 1 or H % P or W % P:
        raise ValueError(f"canvas {T}x{H}x{W} tokens: T must be >= 1 and H, W positive multiples of the "
                         f"patch size {P}")
    return T, H // P, W // P
