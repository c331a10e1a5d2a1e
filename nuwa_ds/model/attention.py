"""Patch-block-sparse attention: the one call every stack, task and backend goes through.

Two entry points (docs/design.md, "3. Training in parallel" and "4. Generation and the rotating pool"):

``patch_attention`` - queries of a patch attend, in one softmax, to
  * the key blocks of its context patches, read by index from ``ctx_k/ctx_v`` (``[NB, m, H, D]``,
    any strides: rows of the same batch in training, pool slots in generation),
  * its own block ``k/v`` (full for the global stack, causal for the local stack),
  * an optional always-visible text block,
  with a learned per-head bias ``bias[h, offset_id]`` added to every logit of a block, and
  optionally a second one, ``aligned_bias[h, offset_id]``, added only to the logit of the key at
  the query's own index in each context block and in its own block (the same canvas token a whole
  patch or frame away; ``model.aligned_bias``).

``pool_decode_attention`` - one query token per row against its context slots and its own KV
  cache, both read from the pool tensors by slot index (generation's inner loop).

Backends: ``reference`` (SDPA over gathered blocks, any device, the ground truth) and ``triton``
(``kernels/``), chosen per call by name. Shapes are noted ``R`` rows (patches), ``n`` query
positions, ``m`` key positions per block, ``C`` context entries per row, ``H`` heads, ``D`` head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


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


def resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if name not in ("reference", "triton"):
        raise ValueError(f"unknown attention backend {name!r}; choose reference, triton or auto")
    return name


def patch_attention(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id: int, bias, causal: bool,
                    text: Optional[TextContext] = None, backend: str = "reference",
                    aligned_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Block-sparse attention of docs/design.md, "3. Training in parallel"; returns [R, n, H, D].

    q, k, v:      [R, n, H, D] the rows' own queries, keys and values.
    ctx_k, ctx_v: [NB, m, H, D] blocks the rows may read as context (any strides).
    ctx_index:    [R, C] block index into ctx_k per context entry, -1 for none.
    ctx_bias_id:  [R, C] bias-table column of each context entry.
    own_bias_id:  bias-table column of the own block.
    bias:         [H, I] per-head bias table; its last column is the text block's.
    causal:       own block causal (local decoder) or full (global stack).
    aligned_bias: [H, I] or None: added to the logit of the key whose index in its block equals the
                  query's (context and own blocks; never the text block).
    """
    if backend == "triton":
        # the kernels (and triton) load with this backend only: the reference backend runs without them,
        # and TRITON_INTERPRET is read when the kernels are defined
        from kernels.patch_attention import patch_attention as triton_patch_attention

        return triton_patch_attention(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id, bias,
                                      causal, text, aligned_bias=aligned_bias)
    return reference_patch_attention(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id, bias,
                                     causal, text, aligned_bias)


def pool_decode_attention(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len,
                          own_bias_id: int, bias, text: Optional[TextContext] = None,
                          backend: str = "reference", aligned_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One query token per row against pool slots; returns [R, H, D].

    q:              [R, H, D] the current token's query.
    pool_k, pool_v: [S, m, H, D] context K/V of every pool slot at this layer (views of the pool).
    ctx_slots:      [R, C] slot of each context patch, -1 for none; ctx_bias_id [R, C].
    own_k, own_v:   [S, n, H, D] own-patch KV caches at this layer (views of the pool).
    own_slot:       [R] slot holding each row's cache; own_len [R] valid cache entries (incl. current).
    aligned_bias:   [H, I] or None, as in ``patch_attention`` (the query's index is own_len - 1).
    """
    if backend == "triton":
        from kernels.pool_decode import pool_decode_attention as triton_pool_decode  # lazily: see patch_attention

        return triton_pool_decode(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len,
                                  own_bias_id, bias, text, aligned_bias=aligned_bias)
    return reference_pool_decode_attention(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot,
                                           own_len, own_bias_id, bias, text, aligned_bias)
