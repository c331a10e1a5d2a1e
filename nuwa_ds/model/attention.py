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

Backends: ``reference`` (SDPA over gathered blocks, any device, the ground truth; defined in
``kernels/_reference.py``, torch only, and re-exported here with ``TextContext``) and ``triton``
(``kernels/``), chosen per call by name. Shapes are noted ``R`` rows (patches), ``n`` query
positions, ``m`` key positions per block, ``C`` context entries per row, ``H`` heads, ``D`` head size.
"""

from __future__ import annotations

from typing import Optional

import torch

# The references live beside the kernels (kernels/_reference.py, torch only: importing it loads no
# Triton); these names stay importable from here, where the model and the tests import them.
from kernels._reference import TextContext, reference_patch_attention, reference_pool_decode_attention


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
                          backend: str = "reference", aligned_bias: Optional[torch.Tensor] = None,
                          split_units: Optional[int] = None) -> torch.Tensor:
    """One query token per row against pool slots; returns [R, H, D].

    q:              [R, H, D] the current token's query.
    pool_k, pool_v: [S, m, H, D] context K/V of every pool slot at this layer (views of the pool).
    ctx_slots:      [R, C] slot of each context patch, -1 for none; ctx_bias_id [R, C].
    own_k, own_v:   [S, n, H, D] own-patch KV caches at this layer (views of the pool).
    own_slot:       [R] slot holding each row's cache; own_len [R] valid cache entries (incl. current).
    aligned_bias:   [H, I] or None, as in ``patch_attention`` (the query's index is own_len - 1).
    split_units:    ``triton`` backend: a split size fixed in key units, so that a row's output does not
                    depend on the batch (batch-invariant generation); the reference has no splits.
    """
    if backend == "triton":
        from kernels.pool_decode import pool_decode_attention as triton_pool_decode  # lazily: see patch_attention

        return triton_pool_decode(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len,
                                  own_bias_id, bias, text, aligned_bias=aligned_bias, split_units=split_units)
    return reference_pool_decode_attention(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot,
                                           own_len, own_bias_id, bias, text, aligned_bias)
