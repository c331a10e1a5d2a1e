"""Pool-indexed decode attention in Triton: one query token per row against the K/V of its context
slots and its own KV cache, read in place from the rotating pool (docs/design.md,
"4. Generation and the rotating pool" and "5. Kernels").

Each row r (a patch being decoded) sees, in one softmax,
  * its own cache ``own_k[own_slot[r], :own_len[r]]`` (the tokens decoded so far, incl. this one),
  * the context slots ``pool_k[s]`` for each s in ``ctx_slots[r]`` (all m keys),
  * an optional text block (valid prefix of its caption),
with ``bias[h, id]`` added per block (and ``aligned[h, id]`` to the key at the query's own index
``own_len - 1`` in its own cache and in each context block, with ``HAS_ALIGNED``). The pool tensors
are ``[slots, layers, 2, H, n, D]``; the views passed here (``[S, m, H, D]``, strides (layer-slab, D,
n*D, 1)) are read by slot index, never gathered.

Flash-decoding: the keys of a row form a list of BLOCK_N-key units (own cache, then context
entries, then text). With few rows the (row, head) pairs cannot fill the GPU, so each pair's units
are cut into ``num_splits`` equal ranges, one program each; every program keeps a partial softmax
(max, sum, unnormalised output) and ``_combine_kernel`` merges them. With one split the first
kernel writes the output directly. Memory-bound: judged in TB/s of K/V read. Inference only.

In the Triton tutorials' manner this file holds the kernels, their launcher, the torch reference
(``reference_pool_decode_attention``, imported from ``_reference.py``: torch only, shared with
``patch_attention.py`` and with the model's ``reference`` backend) and the benchmark entry
(``benchmark``) that ``nuwa-ds bench kernels`` finds here, with its parts: the problem
(``bench_inputs``: a distinct pool slot per context block and own cache), the correctness gate
(``check_case``: the patches of a raster canvas, ``_common.raster_context``, against the float64
reference on fresh random inputs) and the kernel's timing (``time_case``: CUDA-graph replays, TB/s).
The GPU suite (``nuwa_ds/bench/kernels.py``) calls those pieces and keeps the peers
(cuDNN decode on contiguous K/V, the copy bandwidth) and the tile/split/version sweeps.
Tests: ``tests/test_kernels_pool_decode.py``.

Versions (timings: docs/kernels.md):
  v1  split kernel + combine; fp32 math on upcast tiles (free in a memory-bound kernel); one
      running max/sum per program, so every unit reduces across the tile's lanes twice.
  v2  per-lane running max/sum/output (``LANES``): no cross-lane reduction inside the loop.
  v3  ``PREFETCH``: the context loop loads unit w+1 before doing unit w's math (triton does not
      software-pipeline loads that feed no tl.dot, so v1/v2 kept one K/V pair in flight).
  v4  the aligned-token bias (``model.aligned_bias``): one select per unit.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from kernels._common import (INDEX_DTYPES, INTERPRET, LOG2E, MAX_HEAD_DIM, RCP_LN2, SUPPORTED_DTYPES, alloc_output,
                             block_d, check_aligned, check_same, check_tensor, check_text, compact_context,
                             device_function, graph_timed, load_tile, median_ms, num_sms, raster_context, rel_error)
from kernels._reference import TextContext, float64_copy, reference_pool_decode_attention


@device_function
def _decode_step(acc, m_i, l_i, q, k, v, bias2, qk_scale, valid, MASKED: tl.constexpr, LANES: tl.constexpr):
    """One unit of keys for a single query: q [BD], k/v [BN, BD] (fp32), valid [BN].

    LANES (v2): every key lane j of the tile keeps its own running max m[j], sum l[j] and output
    acc[j, :], so a unit needs no reduction across lanes (no shared memory, no barrier); the lanes
    are merged once at the end (``_merge_lanes``). Otherwise (v1) m, l are scalars and acc [BD].
    """
    s = tl.sum(k * q[None, :], 1) * qk_scale + bias2  # [BN]
    if MASKED:
        s = tl.where(valid, s, float("-inf"))
    if LANES:
        m_new = tl.maximum(m_i, s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a lane with no visible key yet stays (0, 0)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * v
    else:
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
    return acc, m_new, l_i


@device_function
def _merge_lanes(acc, m_i, l_i, LANES: tl.constexpr):
    """Per-lane statistics -> (unnormalised output [BD], max, sum); a no-op for v1."""
    if LANES:
        m = tl.max(m_i, 0)
        w = tl.math.exp2(m_i - tl.where(m == float("-inf"), 0.0, m))  # empty lanes weigh 0
        out, m_out, l_out = tl.sum(w[:, None] * acc, 0), m, tl.sum(w * l_i, 0)
    else:
        out, m_out, l_out = acc, m_i, l_i
    return out, m_out, l_out


@device_function
def _unit_bias(b, a, keys, query, HAS_ALIGNED: tl.constexpr):
    """Bias of one unit of keys: the block's scalar ``b``, plus ``a`` on the key at the query's index."""
    if HAS_ALIGNED:  # one return: triton types every return statement, taken or not
        unit = b + tl.where(keys == query, a, 0.0)
    else:
        unit = b
    return unit


@device_function
def _load_ctx_unit(PK, PV, CtxSlot, CtxBid, bias_h, aligned_h, query, r, C, h, w, live, offs_n, offs_d,
                   s_pkb, s_pkn, s_pkh, s_pkd, s_pvb, s_pvn, s_pvh, s_pvd, M_K: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK_D: tl.constexpr, HAS_ALIGNED: tl.constexpr,
                   UPCAST: tl.constexpr):
    """K, V tiles [BN, BD], bias (scalar, or [BN] with the aligned bias) and key offsets of context unit
    ``w`` (entry w // tiles, tile w % tiles); all loads masked off when not ``live`` (the prefetch past
    the last unit)."""
    CTX_TILES: tl.constexpr = (M_K + BLOCK_N - 1) // BLOCK_N
    e = w // CTX_TILES
    keys = (w % CTX_TILES) * BLOCK_N + offs_n
    slot = tl.load(CtxSlot + r * C + e, mask=live, other=0).to(tl.int64)
    bid = tl.load(CtxBid + r * C + e, mask=live, other=0)
    b = tl.load(bias_h + bid).to(tl.float32) * RCP_LN2
    if HAS_ALIGNED:
        b = _unit_bias(b, tl.load(aligned_h + bid).to(tl.float32) * RCP_LN2, keys, query, HAS_ALIGNED)
    limit = tl.where(live, M_K, 0)
    k = load_tile(PK + slot * s_pkb + h * s_pkh, keys, s_pkn, offs_d, s_pkd, limit, HEAD_DIM, True, MASK_D, UPCAST)
    v = load_tile(PV + slot * s_pvb + h * s_pvh, keys, s_pvn, offs_d, s_pvd, limit, HEAD_DIM, True, MASK_D, UPCAST)
    return k, v, b, keys


@triton.jit
def _split_kernel(
    Q, PK, PV, CtxSlot, CtxBid, CtxCnt, OK, OV, OwnSlot, OwnLen, TK, TV, TIdx, TLen, Bias, Aligned,
    Out, PartM, PartL, PartAcc,
    s_qr, s_qh, s_qd, s_pkb, s_pkn, s_pkh, s_pkd, s_pvb, s_pvn, s_pvh, s_pvd,
    s_okb, s_okn, s_okh, s_okd, s_ovb, s_ovn, s_ovh, s_ovd,
    s_tkb, s_tkn, s_tkh, s_tkd, s_tvb, s_tvn, s_tvh, s_tvd,
    s_or, s_oh, s_od, s_bh, s_ah, s_own_slot, s_own_len, C, H, own_bid, text_bid, qk_scale, units_per_split,
    num_splits,
    M_K: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TEXT: tl.constexpr, HAS_ALIGNED: tl.constexpr, SINGLE: tl.constexpr, LANES: tl.constexpr,
    PREFETCH: tl.constexpr, UPCAST: tl.constexpr,
):
    MASK_M: tl.constexpr = M_K % BLOCK_N != 0
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    CTX_TILES: tl.constexpr = (M_K + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    split, rh = pid % num_splits, pid // num_splits
    r, h = (rh // H).to(tl.int64), rh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if MASK_D:
        q = tl.load(Q + r * s_qr + h * s_qh + offs_d * s_qd, mask=offs_d < HEAD_DIM, other=0.0).to(tl.float32)
    else:
        q = tl.load(Q + r * s_qr + h * s_qh + offs_d * s_qd).to(tl.float32)
    bias_h = Bias + h * s_bh
    aligned_h = Aligned + h * s_ah

    # this program's range of units: own cache units, then context units, then text units
    own_len = tl.load(OwnLen + r * s_own_len)
    query = own_len - 1  # the query's index in its patch: the aligned key of every block
    own_units = tl.cdiv(own_len, BLOCK_N)
    ctx_units = tl.load(CtxCnt + r) * CTX_TILES
    u0 = split * units_per_split
    u1 = u0 + units_per_split

    if LANES:
        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    else:
        m_i = float("-inf")
        l_i = 0.0
        acc = tl.zeros([BLOCK_D], tl.float32)

    slot = tl.load(OwnSlot + r * s_own_slot).to(tl.int64)
    k_own, v_own = OK + slot * s_okb + h * s_okh, OV + slot * s_ovb + h * s_ovh
    b_own = tl.load(bias_h + own_bid).to(tl.float32) * RCP_LN2
    a_own = tl.load(aligned_h + own_bid).to(tl.float32) * RCP_LN2 if HAS_ALIGNED else 0.0
    for u in range(u0, tl.minimum(u1, own_units)):
        keys = u * BLOCK_N + offs_n
        k = load_tile(k_own, keys, s_okn, offs_d, s_okd, own_len, HEAD_DIM, True, MASK_D, True)
        v = load_tile(v_own, keys, s_ovn, offs_d, s_ovd, own_len, HEAD_DIM, True, MASK_D, True)
        acc, m_i, l_i = _decode_step(acc, m_i, l_i, q, k, v, _unit_bias(b_own, a_own, keys, query, HAS_ALIGNED),
                                     qk_scale, keys < own_len, True, LANES)

    # context units (most of the keys), numbered from 0 within the context segment
    lo = tl.maximum(u0, own_units) - own_units
    hi = tl.minimum(u1, own_units + ctx_units) - own_units
    if PREFETCH:  # v3: issue unit w+1's loads before unit w's math, so two units are in flight
        k_next, v_next, b_next, keys_next = _load_ctx_unit(
            PK, PV, CtxSlot, CtxBid, bias_h, aligned_h, query, r, C, h, lo, lo < hi, offs_n, offs_d, s_pkb, s_pkn,
            s_pkh, s_pkd, s_pvb, s_pvn, s_pvh, s_pvd, M_K, HEAD_DIM, BLOCK_N, MASK_D, HAS_ALIGNED, UPCAST)
        for w in range(lo, hi):
            k, v, b, keys = k_next, v_next, b_next, keys_next
            k_next, v_next, b_next, keys_next = _load_ctx_unit(
                PK, PV, CtxSlot, CtxBid, bias_h, aligned_h, query, r, C, h, w + 1, w + 1 < hi, offs_n, offs_d, s_pkb,
                s_pkn, s_pkh, s_pkd, s_pvb, s_pvn, s_pvh, s_pvd, M_K, HEAD_DIM, BLOCK_N, MASK_D, HAS_ALIGNED, UPCAST)
            acc, m_i, l_i = _decode_step(acc, m_i, l_i, q, k.to(tl.float32), v.to(tl.float32), b, qk_scale,
                                         keys < M_K, MASK_M, LANES)
    else:
        for w in range(lo, hi):
            k, v, b, keys = _load_ctx_unit(PK, PV, CtxSlot, CtxBid, bias_h, aligned_h, query, r, C, h, w, True,
                                           offs_n, offs_d, s_pkb, s_pkn, s_pkh, s_pkd, s_pvb, s_pvn, s_pvh, s_pvd,
                                           M_K, HEAD_DIM, BLOCK_N, MASK_D, HAS_ALIGNED, True)
            acc, m_i, l_i = _decode_step(acc, m_i, l_i, q, k, v, b, qk_scale, keys < M_K, MASK_M, LANES)

    if HAS_TEXT:
        t = tl.load(TIdx + r).to(tl.int64)
        text_len = tl.load(TLen + t)
        first = own_units + ctx_units
        b_text = tl.load(bias_h + text_bid).to(tl.float32) * RCP_LN2
        for u in range(tl.maximum(u0, first), tl.minimum(u1, first + tl.cdiv(text_len, BLOCK_N))):
            keys = (u - first) * BLOCK_N + offs_n
            k = load_tile(TK + t * s_tkb + h * s_tkh, keys, s_tkn, offs_d, s_tkd, text_len, HEAD_DIM, True, MASK_D,
                          True)
            v = load_tile(TV + t * s_tvb + h * s_tvh, keys, s_tvn, offs_d, s_tvd, text_len, HEAD_DIM, True, MASK_D,
                          True)
            acc, m_i, l_i = _decode_step(acc, m_i, l_i, q, k, v, b_text, qk_scale, keys < text_len, True, LANES)

    acc, m_i, l_i = _merge_lanes(acc, m_i, l_i, LANES)
    if SINGLE:
        out = acc / l_i
        tl.store(Out + r * s_or + h * s_oh + offs_d * s_od, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)
    else:  # an empty split leaves (-inf, 0, 0), which the combine weighs as zero
        tl.store(PartM + pid, m_i)
        tl.store(PartL + pid, l_i)
        tl.store(PartAcc + pid * BLOCK_D + offs_d, acc)


@triton.jit
def _combine_kernel(PartM, PartL, PartAcc, Out, s_or, s_oh, s_od, H, num_splits,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    rh = tl.program_id(0)
    r, h = (rh // H).to(tl.int64), rh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    part = rh.to(tl.int64) * num_splits + offs_s
    ms = tl.load(PartM + part, mask=offs_s < num_splits, other=float("-inf"))
    ls = tl.load(PartL + part, mask=offs_s < num_splits, other=0.0)
    accs = tl.load(PartAcc + part[:, None] * BLOCK_D + offs_d[None, :], mask=offs_s[:, None] < num_splits, other=0.0)
    m = tl.max(ms, 0)  # finite: every row has at least its current token
    w = tl.math.exp2(ms - m)
    out = tl.sum(w[:, None] * accs, 0) / tl.sum(w * ls, 0)
    tl.store(Out + r * s_or + h * s_oh + offs_d * s_od, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# Launcher


def default_block_n(head_dim: int) -> int:
    """Keys per unit: 8-16 KB of K per tile; v3 holds two units' tiles in registers."""
    if INTERPRET:
        return 64
    return 64 if head_dim <= 64 else 32


def choose_splits(rows_heads: int, max_units: int, device: torch.device) -> int:
    """Enough programs to give every SM a few (rows x heads alone often cannot), never more splits
    than a row has units."""
    sms = num_sms(device)
    if sms is None:
        return 1
    return max(1, min(max_units, triton.cdiv(4 * sms, max(rows_heads, 1))))


def _check(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len, own_bias_id, bias, text,
           aligned=None):
    check_tensor("q", q, 3, SUPPORTED_DTYPES)
    dev, dtype = q.device, q.dtype
    R, H, D = q.shape
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head size {D} > {MAX_HEAD_DIM} is not supported by the Triton kernels")
    for name, t in (("pool_k", pool_k), ("pool_v", pool_v), ("own_k", own_k), ("own_v", own_v)):
        check_tensor(name, t, 4, (dtype,), dev)
        if tuple(t.shape[2:]) != (H, D):
            raise ValueError(f"{name} must be [S, L, {H}, {D}] (heads and head size of q), got {tuple(t.shape)}")
    check_same("pool_k, pool_v", pool_k, pool_v, attr="shape")
    check_same("own_k, own_v", own_k, own_v, attr="shape")
    check_tensor("ctx_slots", ctx_slots, 2, INDEX_DTYPES, dev)
    check_tensor("ctx_bias_id", ctx_bias_id, 2, INDEX_DTYPES, dev)
    if ctx_slots.shape[0] != R or ctx_bias_id.shape != ctx_slots.shape:
        raise ValueError(f"ctx_slots and ctx_bias_id must both be [R={R}, C], got {tuple(ctx_slots.shape)} and "
                         f"{tuple(ctx_bias_id.shape)}")
    check_tensor("own_slot", own_slot, 1, INDEX_DTYPES, dev)
    check_tensor("own_len", own_len, 1, INDEX_DTYPES, dev)
    if own_slot.shape[0] != R or own_len.shape[0] != R:
        raise ValueError(f"own_slot and own_len must have R={R} entries, got {own_slot.shape[0]} and "
                         f"{own_len.shape[0]}")
    check_tensor("bias", bias, 2, (torch.float32, torch.float16, torch.bfloat16), dev)
    if bias.shape[0] != H:
        raise ValueError(f"bias must be [H={H}, I], got {tuple(bias.shape)}")
    if not 0 <= int(own_bias_id) < bias.shape[1]:
        raise ValueError(f"own_bias_id {own_bias_id} outside the bias table's {bias.shape[1]} columns")
    check_aligned(aligned, bias)
    return check_text(text, R, H, D, dtype, dev)


def pool_decode_attention(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len,
                          own_bias_id: int, bias, text=None, num_splits: Optional[int] = None,
                          block_n: Optional[int] = None, num_warps: int = 4, num_stages: int = 3,
                          lanes: bool = True, prefetch: bool = True, aligned_bias=None,
                          split_units: Optional[int] = None) -> torch.Tensor:
    """One query per row against pool slots; same contract as
    ``nuwa_ds.model.attention.pool_decode_attention``. Returns [R, H, D] in q's dtype.

    own_slot and own_len must hold in-range values (slots of own_k, 1 <= own_len <= n): they change
    every token, and checking them would cost a device sync per layer per token. Context slots and
    text indices are checked (once per tensor, cached). ``num_splits``/``block_n``/``num_warps``/
    ``num_stages``/``lanes`` (v2 per-lane softmax, else v1)/``prefetch`` (v3) override the launch
    (tests, benchmarks).

    ``split_units`` (batch-invariant decode, issue 16): every split holds this many ``block_n``-key units,
    whatever the batch, instead of ``num_splits`` equal ranges of the batch's longest row. A row's keys
    then fall into the same splits, reduced in the same order, alone or beside any other rows: its
    output does not depend on the batch (the splits a longer row adds are empty for it, and an empty
    split combines as an exact zero). The split count follows the call's padded widths (context
    entries, text length), not the row count."""
    text_tables = _check(q, pool_k, pool_v, ctx_slots, ctx_bias_id, own_k, own_v, own_slot, own_len, own_bias_id,
                         bias, text, aligned_bias)
    R, H, D = q.shape
    S, m = pool_k.shape[:2]
    n = own_k.shape[1]
    slots, slot_bias, count = compact_context(ctx_slots, ctx_bias_id, S, bias.shape[1],
                                             names=("ctx_slots", "ctx_bias_id", "pool_k"))
    out = alloc_output((R, H, D), q.dtype, q.device)
    if R == 0:
        return out
    has_text = text is not None
    tk, tv = (text.k, text.v) if has_text else (q.unsqueeze(1), q.unsqueeze(1))
    tidx, tlen = text_tables if has_text else (count, count)
    BLOCK_N = block_n or default_block_n(D)
    BLOCK_D = block_d(D)
    max_units = (triton.cdiv(n, BLOCK_N) + ctx_slots.shape[1] * triton.cdiv(m, BLOCK_N)
                 + (triton.cdiv(tk.shape[1], BLOCK_N) if has_text else 0))
    if split_units is not None:
        if num_splits is not None or split_units < 1:
            raise ValueError(f"split_units must be >= 1 and excludes num_splits, got {split_units} and {num_splits}")
        units_per_split, splits = split_units, triton.cdiv(max_units, split_units)
    else:
        splits = num_splits or choose_splits(R * H, max_units, q.device)
        splits = max(1, min(splits, max_units))
        units_per_split = triton.cdiv(max_units, splits)
    single = splits == 1
    part_m = part_l = part_acc = out
    if not single:
        part_m = alloc_output((R * H * splits,), torch.float32, q.device)
        part_l = alloc_output((R * H * splits,), torch.float32, q.device)
        part_acc = alloc_output((R * H * splits, BLOCK_D), torch.float32, q.device)
    aligned = bias if aligned_bias is None else aligned_bias
    _split_kernel[(R * H * splits,)](
        q, pool_k, pool_v, slots, slot_bias, count, own_k, own_v, own_slot, own_len, tk, tv, tidx, tlen, bias, aligned,
        out, part_m, part_l, part_acc,
        *q.stride(), *pool_k.stride(), *pool_v.stride(), *own_k.stride(), *own_v.stride(), *tk.stride(), *tv.stride(),
        *out.stride(), bias.stride(0), aligned.stride(0), own_slot.stride(0), own_len.stride(0), slots.shape[1], H,
        int(own_bias_id), bias.shape[1] - 1, LOG2E / math.sqrt(D),
        units_per_split, splits, M_K=m, HEAD_DIM=D, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, HAS_TEXT=has_text,
        HAS_ALIGNED=aligned_bias is not None, SINGLE=single, LANES=lanes, PREFETCH=prefetch, UPCAST=INTERPRET,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not single:
        _combine_kernel[(R * H,)](part_m, part_l, part_acc, out, *out.stride(), H, splits, HEAD_DIM=D,
                                  BLOCK_D=BLOCK_D, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=1)
    return out


def kv_bytes_read(ctx_slots: torch.Tensor, own_len: torch.Tensor, m: int, H: int, D: int, itemsize: int,
                  text=None) -> int:
    """Bytes of K and V one call reads (the decode's useful traffic)."""
    keys = int((ctx_slots >= 0).sum()) * m + int(own_len.sum())
    if text is not None:
        keys += int(text.length[text.index].sum())
    return 2 * keys * H * D * itemsize


# ----------------------------------------------------------------------------------------------
# Benchmark: ``nuwa-ds bench kernels`` calls ``benchmark`` on CPU; on a GPU its suite runs the same
# pieces (``bench_inputs``, ``check_case``, ``time_case``) with cuDNN decode and the copy bandwidth beside

WIDTH = 1024
"""Heads = WIDTH / head_dim, as in the nuwa-350m preset."""
PATCH_KEYS = 256
"""Keys per block: 16 x 16-token patches."""


def bench_inputs(rows: int, heads: int, head_dim: int, ctx: int, n: int, device, dtype) -> dict:
    """Pool [S, layers=2, 2, H, n, D] with a distinct slot per context patch and per own cache (so
    nothing is read twice: TB/s then counts bytes that really come from memory); full own caches (the
    patch's last token)."""
    slots = rows * (ctx + 1)
    pool = torch.randn(slots, 2, 2, heads, n, head_dim, dtype=dtype, device=device)
    own = torch.randn(slots, 2, 2, heads, n, head_dim, dtype=dtype, device=device)
    perm = torch.randperm(slots, device=device)
    return dict(q=torch.randn(rows, heads, head_dim, dtype=dtype, device=device),
                pool_k=pool[:, 1, 0].transpose(1, 2), pool_v=pool[:, 1, 1].transpose(1, 2),
                ctx_slots=perm[: rows * ctx].view(rows, ctx),
                ctx_bias_id=torch.randint(0, 9, (rows, ctx), device=device),
                own_k=own[:, 1, 0].transpose(1, 2), own_v=own[:, 1, 1].transpose(1, 2),
                own_slot=perm[rows * ctx:], own_len=torch.full((rows,), n, device=device), own_bias_id=4,
                bias=torch.randn(heads, 10, device=device), text=None)


def check_case(device, dtype, head_dim: int, splits: Optional[int]) -> dict:
    """The correctness gate against the float64 reference on fresh random inputs: the six patches of a
    2 x 3 canvas in raster order decoded at once (context as the canvas has it: none for the first
    patch, 1-4 neighbours for the others, read from pool slots), own caches filled to random lengths,
    two captions (one empty)."""
    heads = max(1, WIDTH // head_dim) if device == "cuda" else 2
    n = PATCH_KEYS if device == "cuda" else 16
    table = raster_context((1, 2, 3), (0, 1, 1))
    R, C = table.ctx_index.shape
    args = bench_inputs(R, heads, head_dim, C, n, device, dtype)
    args.update(ctx_slots=table.ctx_index.to(device), ctx_bias_id=table.ctx_offset.to(device),
                own_bias_id=table.own_offset, bias=torch.randn(heads, table.num_bias, device=device),
                own_len=torch.randint(1, n + 1, (R,), device=device),
                text=TextContext(torch.randn(2, 9, heads, head_dim, dtype=dtype, device=device),
                                 torch.randn(2, 9, heads, head_dim, dtype=dtype, device=device),
                                 torch.tensor([9, 0], device=device), torch.arange(R, device=device) % 2))
    out = pool_decode_attention(**args, num_splits=splits)
    ref_args = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in args.items()}
    ref_args["text"] = float64_copy(args["text"])
    err = rel_error(out, reference_pool_decode_attention(**ref_args))
    return dict(kernel="pool_decode_attention", case=f"D{head_dim}-splits{splits}",
                dtype=str(dtype).replace("torch.", ""),
                worst_rel_error=err, ok=bool(err <= (1e-2 if dtype == torch.bfloat16 else 2e-5)))


def time_case(args: dict, measure, splits: Optional[int] = None, block_n: Optional[int] = None, num_warps: int = 4,
              lanes: bool = True, prefetch: bool = True) -> tuple[dict, Callable]:
    """The kernel's row for ``bench_inputs``'s problem: ms (CUDA-graph replays on a GPU, the GPU's
    time: generation captures its token step) and TB/s of K/V read; and the call itself, for peers."""
    rows, heads, head_dim = args["q"].shape
    ctx, n = args["ctx_slots"].shape[1], args["own_k"].shape[1]
    device = args["q"].device
    nbytes = kv_bytes_read(args["ctx_slots"], args["own_len"], n, heads, head_dim, args["q"].element_size())
    bn = block_n or default_block_n(head_dim)
    used_splits = splits or choose_splits(rows * heads, (ctx + 1) * math.ceil(n / bn), device)
    fn = lambda: pool_decode_attention(**args, num_splits=used_splits, block_n=bn, num_warps=num_warps,  # noqa: E731
                                       lanes=lanes, prefetch=prefetch)
    ms = graph_timed(fn, measure) if device.type == "cuda" else measure(fn)
    row = dict(kernel="pool_decode_attention", case=f"R{rows}-D{head_dim}-keys{(ctx + 1) * n}", rows=rows, H=heads,
               D=head_dim, keys=(ctx + 1) * n, splits=used_splits, block_n=bn, warps=num_warps,
               version=("v3" if prefetch else "v2") if lanes else ("v1+prefetch" if prefetch else "v1"), ms=ms,
               tbps=nbytes / ms / 1e9)
    return row, fn


def benchmark(device: str = "cuda", measure: Optional[Callable] = None,
              dtype: Optional[torch.dtype] = None) -> list[dict]:
    """GPU: 4 and 64 rows at D = 64 and 128, 4 context slots + a full own cache of 256 keys each, after
    the gate of the head size (one split and three). ``measure(fn) -> ms`` defaults to ``median_ms``.
    CPU (the interpreter): the gate alone, two splits, D = 16; ``interpreter_s`` is its time."""
    if device == "cpu":
        start = time.perf_counter()
        gate = check_case("cpu", dtype or torch.float32, 16, 2)
        return [dict(gate, interpreter_s=time.perf_counter() - start)]
    measure, dtype = measure or median_ms, dtype or torch.bfloat16
    rows = []
    for head_dim in (64, 128):
        gates = [check_case(device, dtype, head_dim, splits) for splits in (None, 3)]
        for count in (4, 64):
            row, _ = time_case(bench_inputs(count, WIDTH // head_dim, head_dim, 4, PATCH_KEYS, device, dtype), measure)
            rows.append(dict(row, worst_rel_error=max(g["worst_rel_error"] for g in gates),
                             ok=all(g["ok"] for g in gates)))
    return rows
