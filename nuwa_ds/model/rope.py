"""Rotary position embedding over canvas token coordinates (``model.rope_dims``).

Learned intra-patch positions tell a query *where in its patch* a key sits, and the per-offset
bias *which neighbour patch*; but the logit ``q . k`` of two keys at the same intra-patch position
in different neighbours is the same up to that scalar bias, so "the token right above me, in the
patch above" is hard to express. Rotating queries and keys by their (row, column) on the canvas
makes ``q . k`` a function of the token-level offset between them, across patch edges, and the
same on every canvas (translation invariant): what a patch learns about its neighbours at one
place holds at every place of a canvas 16x wider than the training crop.

Layout of one head's ``D`` dims: the first ``rope_dims`` are rotated in two halves ``[a | b]``
(``a`` rotated against ``b``, the "rotate half" convention); of their ``rope_dims / 2`` angles the
first half follow the token row, the second the token column, with frequencies
``base ** (-j / (rope_dims / 4))``. The remaining ``D - rope_dims`` dims are left as they are, so
content-only attention (the text block, whose keys have no position) keeps a channel.

Rotations are absolute per token and computed in float32 from integer coordinates, so training,
the generation pool and every schedule rotate a token identically.
"""

from __future__ import annotations

from typing import Optional

import torch

Rotation = Optional[tuple[torch.Tensor, torch.Tensor]]  # (cos, sin), each [R, n, rope_dims / 2]


def patch_token_coordinates(pshape, P: int, device=None) -> torch.Tensor:
    """(row, column) in tokens of every token of every patch of a (T, Hp, Wp) patch canvas, patches
    in canonical order, tokens raster inside a patch: long [N, P*P, 2]."""
    T, Hp, Wp = pshape
    prow = torch.arange(Hp, device=device).repeat_interleave(Wp).repeat(T)  # [N]
    pcol = torch.arange(Wp, device=device).repeat(Hp * T)
    inner = torch.arange(P * P, device=device)
    rows = prow.unsqueeze(1) * P + inner // P
    cols = pcol.unsqueeze(1) * P + inner % P
    return torch.stack([rows, cols], dim=-1)


def rotation(coords: torch.Tensor, rope_dims: int, base: float,
             max_freq: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """coords long [..., 2] (token row, column) -> (cos, sin) float32 [..., rope_dims / 2];
    frequencies ``max_freq * base ** (-j / (rope_dims / 4))`` radians per token."""
    quarter = rope_dims // 4
    freqs = max_freq * base ** (-torch.arange(quarter, device=coords.device, dtype=torch.float64) / quarter)
    freqs = freqs.to(torch.float32)
    angles = torch.cat([coords[..., :1].float() * freqs, coords[..., 1:].float() * freqs], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rotation(x: torch.Tensor, rot: Rotation) -> torch.Tensor:
    """x [R, L, H, D] rotated by (cos, sin) [R, L, r/2] on its first r dims (every head alike);
    unchanged when ``rot`` is None. Computed in float32, returned in x's dtype."""
    if rot is None:
        return x
    cos, sin = rot
    half = cos.shape[-1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [R, L, 1, r/2]
    xf = x.float()
    a, b, rest = xf[..., :half], xf[..., half:2 * half], xf[..., 2 * half:]
    out = torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)
    return out.to(x.dtype)


def select(rot: Rotation, index: torch.Tensor, dim: int) -> Rotation:
    """The rotation of a subset of rows (dim 0) or positions (dim 1); None stays None."""
    if rot is None:
        return None
    return rot[0].index_select(dim, index), rot[1].index_select(dim, index)
