"""The torch references (ground truth) of both attention kernels: ``reference_patch_attention``
(``patch_attention.py``) and ``reference_pool_decode_attention`` (``pool_decode.py``), with the text
block they share (``TextContext``).

One file for the two, beside the kernel files rather than inside them, for two reasons:
  * they share every helper (``_attend``: one softmax over concatenated key parts; ``_context_part``:
    context blocks gathered by index with the offset and aligned-token biases; ``_text_part``;
    ``TextContext``), so splitting them would write those twice;
  * this file imports torch only, never triton: the model's ``reference`` attention backend
    (``nuwa_ds.model.attention``, which re-exports these names) runs on every device and loads no
    Triton, and the kernel files define their ``@triton.jit`` functions on import (reading
    TRITON_INTERPRET then), which the reference backend must not trigger.
Each kernel file imports its reference from here, so in the Triton tutorials' manner the kernel, its
launcher, its reference and its benchmark entry are all reachable as names of the one kernel module.

Shapes are noted ``R`` rows (patches), ``n`` query positions, ``m`` key positions per block, ``C``
context entries per row, ``H`` heads, ``D`` head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64 (the kernels' gates and the tests' measure)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@dataclass
class TextContext:
    """Text keys/values for one layer: ``k, v [Bt, S, H, D]``, ``length [Bt]`` valid tokens
    (right padding), ``index [R]`` the text row of each attention row."""

    k: torch.Tensor
    v: torch.Tensor
    length: torch.Tensor
    index: torch.Tensor


def _attend(q: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Softmax attention over concatenated key parts.

    q: [R, n, H, D]; each part is (k [R, L, H, D], v [R, L, H, D], additive bias [R, H, n|1, L]).
    Returns [R, n, H, D]. Accumulates in fp32 for low-precision inputs.
    """
    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    keys = torch.cat([p[0] for p in parts], dim=1).to(work).transpose(1, 2)  # [R, H, L, D]
    vals = torch.cat([p[1] for p in parts], dim=1).to(work).transpose(1, 2)
    n = q.shape[1]
    mask = torch.cat([p[2].to(work).expand(-1, -1, n, -1) for p in parts], dim=-1)  # [R, H, n, L]
    out = F.scaled_dot_product_attention(q.to(work).transpose(1, 2), keys, vals, attn_mask=mask)
    return out.transpose(1, 2).to(dtype)


def _aligned(table: torch.Tensor, ids: torch.Tensor, key_index: torch.Tensor,
             query_index: torch.Tensor) -> torch.Tensor:
    """``table[h, ids]`` where a key's index in its block equals the query's, else 0.

    table [H, I]; ids [R, C] (one per block of C); key_index [L] (L = C*m, index inside the block);
    query_index [R|1, n]. Returns [R, H, n, L]."""
    per_key = table[:, ids].permute(1, 0, 2).repeat_interleave(key_index.numel() // ids.shape[1], dim=-1)
    hit = key_index.view(1, 1, -1) == query_index.unsqueeze(-1)  # [R|1, n, L]
    return per_key.unsqueeze(2) * hit.unsqueeze(1).to(per_key.dtype)


def _context_part(ctx_k, ctx_v, ctx_index, ctx_bias_id, bias, aligned=None, query_index=None):
    """Gather context blocks: ([R, C*m, H, D] x2, bias [R, H, 1|n, C*m]) with -inf for padding;
    ``aligned`` [H, I] adds its term where a key's index in its block equals ``query_index`` [R|1, n]."""
    R, C = ctx_index.shape
    NB, m, H, D = ctx_k.shape
    idx = ctx_index.clamp(min=0)
    keys = ctx_k[idx].reshape(R, C * m, H, D)
    vals = ctx_v[idx].reshape(R, C * m, H, D)
    b = bias[:, ctx_bias_id].permute(1, 0, 2)  # [R, H, C]
    b = torch.where((ctx_index >= 0).unsqueeze(1), b, torch.full_like(b, NEG_INF))
    b = b.repeat_interleave(m, dim=-1).unsqueeze(2)
    if aligned is not None:  # padding stays -inf: the term is finite
        key_index = torch.arange(m, device=ctx_k.device).repeat(C)
        b = b + _aligned(aligned, ctx_bias_id, key_index, query_index)
    return keys, vals, b


def _text_part(text: TextContext, bias_text: torch.Tensor):
    """Text block rows: ([R, S, H, D] x2, bias [R, H, 1, S]) with -inf past each caption's length."""
    k, v = text.k[text.index], text.v[text.index]
    S = k.shape[1]
    valid = torch.arange(S, device=k.device).unsqueeze(0) < text.length[text.index].unsqueeze(1)  # [R, S]
    b = torch.where(valid.unsqueeze(1), bias_text.view(1, -1, 1), torch.full_like(bias_text.view(1, -1, 1), NEG_INF))
    return k, v, b.unsqueeze(2)


def reference_patch_attention(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id: int, bias,
                              causal: bool, text: Optional[TextContext] = None,
                              aligned_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SDPA over gathered blocks; the contract of ``nuwa_ds.model.attention.patch_attention``."""
    R, n, H, D = q.shape
    parts = []
    query_index = torch.arange(n, device=q.device).unsqueeze(0)  # [1, n]
    if text is not None:
        parts.append(_text_part(text, bias[:, -1]))
    if ctx_index.shape[1]:
        parts.append(_context_part(ctx_k, ctx_v, ctx_index, ctx_bias_id, bias, aligned_bias, query_index))
    own = bias[:, own_bias_id].view(1, H, 1, 1).expand(R, H, n, n)
    if aligned_bias is not None:
        own = own + aligned_bias[:, own_bias_id].view(1, H, 1, 1) * torch.eye(n, device=q.device, dtype=own.dtype)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        own = own.masked_fill(future, NEG_INF)
    parts.append((k, v, own))
    return _attend(q, parts)


def reference_pool_decode_attention(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot,
                                    own_len, own_bias_id: int, bias, text: Optional[TextContext] = None,
                                    aligned_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SDPA over gathered slots; the contract of ``nuwa_ds.model.attention.pool_decode_attention``."""
    R, H, D = q.shape
    parts = []
    query_index = (own_len - 1).view(R, 1)  # the current token's index in its patch
    if text is not None:
        parts.append(_text_part(text, bias[:, -1]))
    if ctx_slots.shape[1]:
        parts.append(_context_part(pool_k, pool_v, ctx_slots, ctx_bias_id, bias, aligned_bias, query_index))
    cache_k, cache_v = own_k[own_slot], own_v[own_slot]  # [R, n, H, D]
    n = cache_k.shape[1]
    positions = torch.arange(n, device=q.device).unsqueeze(0)
    visible = positions < own_len.unsqueeze(1)  # [R, n]
    own = bias[:, own_bias_id].view(1, H, 1).expand(R, H, n)
    if aligned_bias is not None:
        own = own + aligned_bias[:, own_bias_id].view(1, H, 1) * (positions == query_index).unsqueeze(1).to(own.dtype)
    own = torch.where(visible.unsqueeze(1), own, torch.full_like(own, NEG_INF))
    parts.append((cache_k, cache_v, own.unsqueeze(2)))
    return _attend(q.unsqueeze(1), parts).squeeze(1)


def float64_copy(text: Optional[TextContext]) -> Optional[TextContext]:
    """The text block with float64 K/V (the references run on float64 copies: the truth, not
    another rounding)."""
    return None if text is None else TextContext(text.k.double(), text.v.double(), text.length, text.index)
