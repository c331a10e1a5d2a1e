"""Patch-block-sparse attention in Triton: forward, backward, autograd (docs/design.md,
"3. Training in parallel" and "5. Kernels").

Queries of patch row r attend, in one softmax, to
  * its own block ``k[r], v[r]`` (``n`` keys; full for the global stack, causal for the local one),
  * the context blocks ``ctx_k[j], ctx_v[j]`` for each j in ``ctx_index[r]`` (``m`` keys each, any
    strides: other rows of the batch in training, pool slots in generation; never gathered),
  * an optional text block (the valid prefix of a caption's keys),
with ``bias[h, id]`` added to every logit of a block, optionally ``aligned[h, id]`` added to the
logit of the key at the query's own index in each own/context block (``HAS_ALIGNED``), and scale
1/sqrt(D).

In the Triton tutorials' manner this file holds the kernels, their launcher and autograd wrapper, the
torch reference (``reference_patch_attention``, the ground truth, imported from ``_reference.py``: torch
only, shared with ``pool_decode.py`` and with the model's ``reference`` backend) and the benchmark
entry (``benchmark``) that ``nuwa-ds bench kernels`` finds here, with its parts: the problem
(``PatchCase``, ``bench_inputs``: canvases in raster order, context tables from
``_common.raster_context``), the correctness gate (``check_case``: forward and every gradient against
the float64 reference on fresh random inputs) and the kernel's timing (``time_case``). The GPU suite
(``nuwa_ds/bench/kernels.py``) calls those pieces over its settings' cases and keeps what compares
this kernel with others or with itself: FlexAttention and dense cuDNN peers, tile sweeps (they reach
into ``_check``/``_forward``/``_backward``). Tests: ``tests/test_kernels_patch_attention.py``.

Kernels (one program per (row, head, tile), flattened into a 1-D grid):
  ``_fwd_kernel``     one query tile; online softmax (base 2) over own tiles (first: every query
                      row then meets a visible key in its first tile), context tiles, text tiles;
                      stores O and the log-sum-exp.
  ``_bwd_dq_kernel``  one query tile; recomputes P, forms dS = P (dP - delta), accumulates dQ and
                      stores the sum of dS of every key tile (the bias gradient, summed on the host).
  ``_bwd_dkv_kernel`` one key tile of one block; walks every query tile that reads it (its own row
                      if the block is a row's own block, then the rows listed in the transposed
                      context table) and writes dK, dV once: no atomics, deterministic.

Versions (timings: docs/kernels.md):
  v1  the three kernels above; context walked as one flat loop over (entry, tile) so the compiler
      pipelines it across block boundaries; causal tiles split into unmasked + diagonal parts.
  v2  64-query tiles, 4 warps at D=64 (from an H100 sweep): fwd+bwd 2.14 -> 1.69 ms on 4x4 patches.
  v3  the same at D=128 (dK/dV 2 stages): backward 1.76 -> ~1.2 ms.
  v4  the aligned-token bias (``model.aligned_bias``): one select per tile where a key's index in
      its block equals the query's; its gradient is the per-tile sum of dS on that diagonal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from kernels._common import (INDEX_DTYPES, INTERPRET, LOG2E, MAX_HEAD_DIM, RCP_LN2, SUPPORTED_DTYPES, alloc_output,
                             block_d, check_aligned, check_same, check_tensor, check_text, compact_context,
                             device_function, dot_precision, load_tile, median_ms, raster_context, readers_table,
                             rel_error, text_readers)
from kernels._reference import TextContext, float64_copy, reference_patch_attention

# ----------------------------------------------------------------------------------------------
# Kernels


@device_function
def _tile_bias(b, a, rows, cols, HAS_ALIGNED: tl.constexpr):
    """The bias of one tile: the block's scalar ``b``, plus ``a`` where rows[i] == cols[j] (a key at the
    query's own index in its block) with the aligned bias; rows, cols index inside the blocks."""
    if HAS_ALIGNED:  # one return: triton types every return statement, taken or not
        tile = b + tl.where(rows[:, None] == cols[None, :], a, 0.0)
    else:
        tile = b
    return tile


@device_function
def _softmax_step(acc, m_i, l_i, q, k, v, bias2, qk_scale, valid, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key tile of the online softmax in base 2. q [BM, BD], k/v [BN, BD], valid [BM, BN]."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale + bias2
    if MASKED:
        s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(
    Q, K, V, CK, CV, TK, TV, Bias, Aligned, CtxIdx, CtxBid, CtxCnt, TIdx, TLen, Out, Lse,
    s_qr, s_qn, s_qh, s_qd, s_kr, s_kn, s_kh, s_kd, s_vr, s_vn, s_vh, s_vd,
    s_ckb, s_ckn, s_ckh, s_ckd, s_cvb, s_cvn, s_cvh, s_cvd,
    s_tkb, s_tkn, s_tkh, s_tkd, s_tvb, s_tvn, s_tvh, s_tvd,
    s_or, s_on, s_oh, s_od, s_bh, s_ah, C, H, own_bid, text_bid, qk_scale,
    N_Q: tl.constexpr, M_K: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_TEXT: tl.constexpr,
    HAS_ALIGNED: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    NUM_QT: tl.constexpr = (N_Q + BLOCK_M - 1) // BLOCK_M
    MASK_N: tl.constexpr = N_Q % BLOCK_N != 0
    MASK_Q: tl.constexpr = N_Q % BLOCK_M != 0
    MASK_M: tl.constexpr = M_K % BLOCK_N != 0
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    CTX_TILES: tl.constexpr = (M_K + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    qt, rh = pid % NUM_QT, pid // NUM_QT
    r, h = (rh // H).to(tl.int64), rh % H
    q0 = qt * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q + r * s_qr + h * s_qh, offs_m, s_qn, offs_d, s_qd, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bias_h = Bias + h * s_bh
    aligned_h = Aligned + h * s_ah

    # own block: keys [0, lo) are visible to every query of the tile, [lo, hi) need the causal mask
    k_own, v_own = K + r * s_kr + h * s_kh, V + r * s_vr + h * s_vh
    b_own = tl.load(bias_h + own_bid).to(tl.float32) * RCP_LN2
    a_own = tl.load(aligned_h + own_bid).to(tl.float32) * RCP_LN2 if HAS_ALIGNED else 0.0
    if CAUSAL:
        lo = (q0 // BLOCK_N) * BLOCK_N
        hi = tl.minimum(q0 + BLOCK_M, N_Q)
    else:
        lo = N_Q
        hi = N_Q
    for start in range(0, lo, BLOCK_N):
        keys = start + offs_n
        k = load_tile(k_own, keys, s_kn, offs_d, s_kd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        v = load_tile(v_own, keys, s_vn, offs_d, s_vd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, _tile_bias(b_own, a_own, offs_m, keys, HAS_ALIGNED),
                                      qk_scale, keys[None, :] < N_Q, MASK_N, DOT_PREC)
    for start in range(lo, hi, BLOCK_N):
        keys = start + offs_n
        k = load_tile(k_own, keys, s_kn, offs_d, s_kd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        v = load_tile(v_own, keys, s_vn, offs_d, s_vd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        valid = (keys[None, :] <= offs_m[:, None]) & (keys[None, :] < N_Q)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, _tile_bias(b_own, a_own, offs_m, keys, HAS_ALIGNED),
                                      qk_scale, valid, True, DOT_PREC)

    # context blocks: one flat loop over (entry, tile) so loads pipeline across blocks
    count = tl.load(CtxCnt + r)
    for it in range(0, count * CTX_TILES):
        e = it // CTX_TILES
        keys = (it % CTX_TILES) * BLOCK_N + offs_n
        blk = tl.load(CtxIdx + r * C + e).to(tl.int64)
        bid = tl.load(CtxBid + r * C + e)
        b = tl.load(bias_h + bid).to(tl.float32) * RCP_LN2
        if HAS_ALIGNED:
            b = _tile_bias(b, tl.load(aligned_h + bid).to(tl.float32) * RCP_LN2, offs_m, keys, HAS_ALIGNED)
        k = load_tile(CK + blk * s_ckb + h * s_ckh, keys, s_ckn, offs_d, s_ckd, M_K, HEAD_DIM, MASK_M, MASK_D, UPCAST)
        v = load_tile(CV + blk * s_cvb + h * s_cvh, keys, s_cvn, offs_d, s_cvd, M_K, HEAD_DIM, MASK_M, MASK_D, UPCAST)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, b, qk_scale, keys[None, :] < M_K, MASK_M, DOT_PREC)

    if HAS_TEXT:
        t = tl.load(TIdx + r).to(tl.int64)
        text_len = tl.load(TLen + t)
        b_text = tl.load(bias_h + text_bid).to(tl.float32) * RCP_LN2
        for start in range(0, text_len, BLOCK_N):
            keys = start + offs_n
            k = load_tile(TK + t * s_tkb + h * s_tkh, keys, s_tkn, offs_d, s_tkd, text_len, HEAD_DIM, True, MASK_D,
                          UPCAST)
            v = load_tile(TV + t * s_tvb + h * s_tvh, keys, s_tvn, offs_d, s_tvd, text_len, HEAD_DIM, True, MASK_D,
                          UPCAST)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, b_text, qk_scale, keys[None, :] < text_len, True,
                                          DOT_PREC)

    out = acc / l_i[:, None]
    o_ptrs = Out + r * s_or + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))
    if STORE_LSE:
        tl.store(Lse + (r * H + h) * N_Q + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < N_Q)


@device_function
def _dq_step(dq, q, do, k, v, lse, delta, bias2, qk_scale, valid, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    """dQ contribution of one key tile; also returns the tile's dS (its sums are the bias gradients)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale + bias2
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        p = tl.where(valid, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq, ds


@device_function
def _store_bias_sums(ds, rows, cols, dbias, daligned, tile, HAS_ALIGNED: tl.constexpr):
    """Store a tile's sum of dS (bias gradient) and, with the aligned bias, its sum over the keys at
    the query's own index (rows[i] == cols[j])."""
    tl.store(dbias + tile, tl.sum(tl.sum(ds, 1), 0))
    if HAS_ALIGNED:
        tl.store(daligned + tile, tl.sum(tl.sum(tl.where(rows[:, None] == cols[None, :], ds, 0.0), 1), 0))


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, CK, CV, TK, TV, Bias, Aligned, CtxIdx, CtxBid, CtxCnt, TIdx, TLen, O, DO, Lse, Delta, DQ, DBias,
    DAligned,
    s_qr, s_qn, s_qh, s_qd, s_kr, s_kn, s_kh, s_kd, s_vr, s_vn, s_vh, s_vd,
    s_ckb, s_ckn, s_ckh, s_ckd, s_cvb, s_cvn, s_cvh, s_cvd,
    s_tkb, s_tkn, s_tkh, s_tkd, s_tvb, s_tvn, s_tvh, s_tvd,
    s_or, s_on, s_oh, s_od, s_dor, s_don, s_doh, s_dod, s_dqr, s_dqn, s_dqh, s_dqd,
    s_bh, s_ah, C, H, own_bid, text_bid, qk_scale, sm_scale, NUM_TILES,
    N_Q: tl.constexpr, M_K: tl.constexpr, TEXT_TILES: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_TEXT: tl.constexpr, HAS_ALIGNED: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    NUM_QT: tl.constexpr = (N_Q + BLOCK_M - 1) // BLOCK_M
    MASK_N: tl.constexpr = N_Q % BLOCK_N != 0
    MASK_Q: tl.constexpr = N_Q % BLOCK_M != 0
    MASK_M: tl.constexpr = M_K % BLOCK_N != 0
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    OWN_TILES: tl.constexpr = (N_Q + BLOCK_N - 1) // BLOCK_N
    CTX_TILES: tl.constexpr = (M_K + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    qt, rh = pid % NUM_QT, pid // NUM_QT
    r, h = (rh // H).to(tl.int64), rh % H
    q0 = qt * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q + r * s_qr + h * s_qh, offs_m, s_qn, offs_d, s_qd, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
    do = load_tile(DO + r * s_dor + h * s_doh, offs_m, s_don, offs_d, s_dod, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
    o = load_tile(O + r * s_or + h * s_oh, offs_m, s_on, offs_d, s_od, N_Q, HEAD_DIM, MASK_Q, MASK_D, True)
    delta = tl.sum(o * do.to(tl.float32), 1)  # [BM] rowsum(dO * O), read again by the dK/dV kernel
    row_stat = (r * H + h) * N_Q + offs_m
    tl.store(Delta + row_stat, delta, mask=offs_m < N_Q)
    lse = tl.load(Lse + row_stat, mask=offs_m < N_Q, other=float("inf"))  # padded rows: P = 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bias_h = Bias + h * s_bh
    aligned_h = Aligned + h * s_ah
    # per key tile sums of dS: [R, H, NUM_QT, NUM_TILES], tiles = own, then context (entry-major), then text;
    # DAligned the same for the aligned keys (own and context tiles only)
    dbias = DBias + ((r * H + h) * NUM_QT + qt) * NUM_TILES
    daligned = DAligned + ((r * H + h) * NUM_QT + qt) * NUM_TILES

    k_own, v_own = K + r * s_kr + h * s_kh, V + r * s_vr + h * s_vh
    b_own = tl.load(bias_h + own_bid).to(tl.float32) * RCP_LN2
    a_own = tl.load(aligned_h + own_bid).to(tl.float32) * RCP_LN2 if HAS_ALIGNED else 0.0
    if CAUSAL:
        lo = (q0 // BLOCK_N) * BLOCK_N
        hi = tl.minimum(q0 + BLOCK_M, N_Q)
    else:
        lo = N_Q
        hi = N_Q
    for start in range(0, lo, BLOCK_N):
        keys = start + offs_n
        k = load_tile(k_own, keys, s_kn, offs_d, s_kd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        v = load_tile(v_own, keys, s_vn, offs_d, s_vd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        dq, ds = _dq_step(dq, q, do, k, v, lse, delta, _tile_bias(b_own, a_own, offs_m, keys, HAS_ALIGNED), qk_scale,
                          keys[None, :] < N_Q, MASK_N, DOT_PREC)
        _store_bias_sums(ds, offs_m, keys, dbias, daligned, start // BLOCK_N, HAS_ALIGNED)
    for start in range(lo, hi, BLOCK_N):
        keys = start + offs_n
        k = load_tile(k_own, keys, s_kn, offs_d, s_kd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        v = load_tile(v_own, keys, s_vn, offs_d, s_vd, N_Q, HEAD_DIM, MASK_N, MASK_D, UPCAST)
        valid = (keys[None, :] <= offs_m[:, None]) & (keys[None, :] < N_Q)
        dq, ds = _dq_step(dq, q, do, k, v, lse, delta, _tile_bias(b_own, a_own, offs_m, keys, HAS_ALIGNED), qk_scale,
                          valid, True, DOT_PREC)
        _store_bias_sums(ds, offs_m, keys, dbias, daligned, start // BLOCK_N, HAS_ALIGNED)

    count = tl.load(CtxCnt + r)
    for it in range(0, count * CTX_TILES):
        e = it // CTX_TILES
        keys = (it % CTX_TILES) * BLOCK_N + offs_n
        blk = tl.load(CtxIdx + r * C + e).to(tl.int64)
        bid = tl.load(CtxBid + r * C + e)
        b = tl.load(bias_h + bid).to(tl.float32) * RCP_LN2
        if HAS_ALIGNED:
            b = _tile_bias(b, tl.load(aligned_h + bid).to(tl.float32) * RCP_LN2, offs_m, keys, HAS_ALIGNED)
        k = load_tile(CK + blk * s_ckb + h * s_ckh, keys, s_ckn, offs_d, s_ckd, M_K, HEAD_DIM, MASK_M, MASK_D, UPCAST)
        v = load_tile(CV + blk * s_cvb + h * s_cvh, keys, s_cvn, offs_d, s_cvd, M_K, HEAD_DIM, MASK_M, MASK_D, UPCAST)
        dq, ds = _dq_step(dq, q, do, k, v, lse, delta, b, qk_scale, keys[None, :] < M_K, MASK_M, DOT_PREC)
        _store_bias_sums(ds, offs_m, keys, dbias, daligned, OWN_TILES + it, HAS_ALIGNED)

    if HAS_TEXT:
        t = tl.load(TIdx + r).to(tl.int64)
        text_len = tl.load(TLen + t)
        b_text = tl.load(bias_h + text_bid).to(tl.float32) * RCP_LN2
        for start in range(0, text_len, BLOCK_N):
            keys = start + offs_n
            k = load_tile(TK + t * s_tkb + h * s_tkh, keys, s_tkn, offs_d, s_tkd, text_len, HEAD_DIM, True, MASK_D,
                          UPCAST)
            v = load_tile(TV + t * s_tvb + h * s_tvh, keys, s_tvn, offs_d, s_tvd, text_len, HEAD_DIM, True, MASK_D,
                          UPCAST)
            dq, ds = _dq_step(dq, q, do, k, v, lse, delta, b_text, qk_scale, keys[None, :] < text_len, True, DOT_PREC)
            tl.store(dbias + NUM_TILES - TEXT_TILES + start // BLOCK_N, tl.sum(tl.sum(ds, 1), 0))

    dq_ptrs = DQ + r * s_dqr + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :] * s_dqd
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


@device_function
def _dkv_step(dk, dv, k, v, q, do, lse, delta, bias2, qk_scale, valid, MASKED: tl.constexpr,
              DOT_PREC: tl.constexpr):
    """dK, dV contribution of one query tile to a key tile (transposed: rows are keys)."""
    st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale + bias2  # [BN, BM]
    pt = tl.math.exp2(st - lse[None, :])
    if MASKED:
        pt = tl.where(valid, pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@device_function
def _load_queries(Q, DO, Lse, Delta, row, h, H, offs_m, offs_d, s_qr, s_qn, s_qh, s_qd,
                  s_dor, s_don, s_doh, s_dod, N_Q: tl.constexpr, HEAD_DIM: tl.constexpr, MASK_Q: tl.constexpr,
                  MASK_D: tl.constexpr, UPCAST: tl.constexpr):
    """q, dO [BM, BD] and lse, delta [BM] of one query tile of row ``row``; padded rows get lse=inf
    (so P = 0 there and no mask is needed)."""
    q = load_tile(Q + row * s_qr + h * s_qh, offs_m, s_qn, offs_d, s_qd, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
    do = load_tile(DO + row * s_dor + h * s_doh, offs_m, s_don, offs_d, s_dod, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
    stat = (row * H + h) * N_Q + offs_m
    if MASK_Q:
        lse = tl.load(Lse + stat, mask=offs_m < N_Q, other=float("inf"))
        delta = tl.load(Delta + stat, mask=offs_m < N_Q, other=0.0)
    else:
        lse = tl.load(Lse + stat)
        delta = tl.load(Delta + stat)
    return q, do, lse, delta


@triton.jit
def _bwd_dkv_kernel(
    Q, DO, Lse, Delta, Bias, Aligned, K, V, DK, DV, Readers, ReaderBid, ReaderCnt, KeyLen,
    s_qr, s_qn, s_qh, s_qd, s_dor, s_don, s_doh, s_dod,
    s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
    s_bh, s_ah, s_readers, H, own_bid, qk_scale, sm_scale,
    N_Q: tl.constexpr, KEYS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_OWN: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_KEY_LEN: tl.constexpr, MASK_KEYS: tl.constexpr, HAS_ALIGNED: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    NUM_KT: tl.constexpr = (KEYS + BLOCK_N - 1) // BLOCK_N
    NUM_QT: tl.constexpr = (N_Q + BLOCK_M - 1) // BLOCK_M
    MASK_Q: tl.constexpr = N_Q % BLOCK_M != 0
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    pid = tl.program_id(0)
    kt, bh = pid % NUM_KT, pid // NUM_KT
    blk, h = (bh // H).to(tl.int64), bh % H
    k0 = kt * BLOCK_N
    keys = k0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if HAS_KEY_LEN:
        key_len = tl.load(KeyLen + blk)
    else:
        key_len = KEYS
    k = load_tile(K + blk * s_kb + h * s_kh, keys, s_kn, offs_d, s_kd, key_len, HEAD_DIM, MASK_KEYS, MASK_D, UPCAST)
    v = load_tile(V + blk * s_vb + h * s_vh, keys, s_vn, offs_d, s_vd, key_len, HEAD_DIM, MASK_KEYS, MASK_D, UPCAST)
    # keys past the valid length must get zero gradient (text padding); keys past the block are not stored
    key_valid = keys[:, None] < key_len
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    bias_h = Bias + h * s_bh
    aligned_h = Aligned + h * s_ah

    if HAS_OWN:  # block ``blk`` is also row ``blk``'s own block
        b_own = tl.load(bias_h + own_bid).to(tl.float32) * RCP_LN2
        a_own = tl.load(aligned_h + own_bid).to(tl.float32) * RCP_LN2 if HAS_ALIGNED else 0.0
        if CAUSAL:
            lo = (k0 // BLOCK_M) * BLOCK_M  # earlier query tiles see none of these keys
            mid = tl.minimum(((k0 + BLOCK_N + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, NUM_QT * BLOCK_M)
        else:
            lo = 0
            mid = 0
        for q0 in range(lo, mid, BLOCK_M):  # tiles crossing the diagonal
            offs = q0 + offs_m
            q, do, lse, delta = _load_queries(Q, DO, Lse, Delta, blk, h, H, offs, offs_d, s_qr, s_qn, s_qh, s_qd,
                                              s_dor, s_don, s_doh, s_dod, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
            dk, dv = _dkv_step(dk, dv, k, v, q, do, lse, delta, _tile_bias(b_own, a_own, keys, offs, HAS_ALIGNED),
                               qk_scale, offs[None, :] >= keys[:, None], True, DOT_PREC)
        for q0 in range(mid, N_Q, BLOCK_M):
            offs = q0 + offs_m
            q, do, lse, delta = _load_queries(Q, DO, Lse, Delta, blk, h, H, offs, offs_d, s_qr, s_qn, s_qh, s_qd,
                                              s_dor, s_don, s_doh, s_dod, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
            dk, dv = _dkv_step(dk, dv, k, v, q, do, lse, delta, _tile_bias(b_own, a_own, keys, offs, HAS_ALIGNED),
                               qk_scale, key_valid, False, DOT_PREC)

    count = tl.load(ReaderCnt + blk)
    for it in range(0, count * NUM_QT):
        e = it // NUM_QT
        q0 = (it % NUM_QT) * BLOCK_M
        row = tl.load(Readers + blk * s_readers + e).to(tl.int64)
        bid = tl.load(ReaderBid + blk * s_readers + e)
        b = tl.load(bias_h + bid).to(tl.float32) * RCP_LN2
        offs = q0 + offs_m
        if HAS_ALIGNED:
            b = _tile_bias(b, tl.load(aligned_h + bid).to(tl.float32) * RCP_LN2, keys, offs, HAS_ALIGNED)
        q, do, lse, delta = _load_queries(Q, DO, Lse, Delta, row, h, H, offs, offs_d, s_qr, s_qn, s_qh, s_qd,
                                          s_dor, s_don, s_doh, s_dod, N_Q, HEAD_DIM, MASK_Q, MASK_D, UPCAST)
        dk, dv = _dkv_step(dk, dv, k, v, q, do, lse, delta, b, qk_scale, key_valid, HAS_KEY_LEN, DOT_PREC)

    out_mask = (keys[:, None] < KEYS) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + blk * s_dkb + h * s_dkh + keys[:, None] * s_dkn + offs_d[None, :] * s_dkd
    dv_ptrs = DV + blk * s_dvb + h * s_dvh + keys[:, None] * s_dvn + offs_d[None, :] * s_dvd
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=out_mask)


# ----------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_configs(n: int, m: int, head_dim: int) -> dict[str, TileConfig]:
    """Tiles per kernel. Interpreter: the largest tiles (its time grows with programs x loop trips).
    GPU: measured choices for H100 (docs/kernels.md); small patches shrink the tiles."""
    if INTERPRET:
        t = max(16, min(64, triton.next_power_of_2(max(n, m))))
        cfg = TileConfig(t, t, 4, 1)
        return {"fwd": cfg, "dq": cfg, "dkv": cfg}
    cap = max(16, triton.next_power_of_2(min(n, m)))
    big = head_dim > 64

    def fit(bm, bn, warps, stages):
        return TileConfig(min(bm, cap), min(bn, cap), warps, stages)

    # H100 sweeps of 2026-11-25 (docs/kernels.md, v2 and v3): 64-query tiles and 4 warps win at both
    # head sizes (more programs per SM; 8 warps or 128-wide tiles lost up to 2x)
    if big:  # (the dK/dV tiles spill a little under triton 3.9's offline compile, yet timed fastest on 3.6)
        return {"fwd": fit(64, 64, 4, 3), "dq": fit(64, 64, 4, 2), "dkv": fit(64, 64, 4, 2)}
    return {"fwd": fit(64, 64, 4, 3), "dq": fit(64, 64, 4, 3), "dkv": fit(64, 64, 4, 3)}


# ----------------------------------------------------------------------------------------------
# Launchers


@dataclass
class _Problem:
    """Everything the kernels need besides q/k/v tensors: checked once per call."""

    R: int
    n: int
    m: int
    H: int
    D: int
    num_bias: int
    own_bid: int
    text_bid: int
    causal: bool
    shared_kv: bool  # ctx_k is k and ctx_v is v (global stack): one dK/dV pass serves both roles
    ctx_index: torch.Tensor  # [R, C] int32 valid-first
    ctx_bias_id: torch.Tensor  # [R, C] int32
    ctx_count: torch.Tensor  # [R] int32
    ctx_index_raw: torch.Tensor  # as given (the readers table is cached on it)
    ctx_bias_raw: torch.Tensor
    num_blocks: int
    text_index: Optional[torch.Tensor]  # [R] int32
    text_length: Optional[torch.Tensor]  # [Bt] int32
    configs: dict

    @property
    def C(self) -> int:
        return self.ctx_index.shape[1]


def _common_args(p: _Problem, D: int):
    return dict(HEAD_DIM=D, BLOCK_D=block_d(D), N_Q=p.n)


def _forward(p: _Problem, q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned, store_lse: bool):
    """-> out [R, n, H, D] (q's dtype), lse [R, H, n] fp32 (base 2) or None."""
    R, n, H, D = q.shape
    out = alloc_output((R, n, H, D), q.dtype, q.device)
    lse = alloc_output((R, H, n), torch.float32, q.device) if store_lse else out
    cfg = p.configs["fwd"]
    has_text = text_k is not None
    tk, tv = (text_k, text_v) if has_text else (q, q)
    grid = (R * H * triton.cdiv(n, cfg.block_m),)
    al = bias if aligned is None else aligned
    _fwd_kernel[grid](
        q, k, v, ctx_k, ctx_v, tk, tv, bias, al, p.ctx_index, p.ctx_bias_id, p.ctx_count,
        p.text_index if has_text else p.ctx_count, p.text_length if has_text else p.ctx_count, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *ctx_k.stride(), *ctx_v.stride(), *tk.stride(), *tv.stride(),
        *out.stride(), bias.stride(0), al.stride(0), p.C, H, p.own_bid, p.text_bid, LOG2E / math.sqrt(D),
        M_K=p.m, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=p.causal, HAS_TEXT=has_text,
        HAS_ALIGNED=aligned is not None, STORE_LSE=store_lse, UPCAST=INTERPRET, DOT_PREC=dot_precision(q.dtype),
        **_common_args(p, D),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, (lse if store_lse else None)


def _backward(p: _Problem, grad_out, q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned, out, lse,
              needs: dict):
    """-> dict of gradients (dq, dk, dv, dck, dcv, dtk, dtv, dbias, daligned), each allocated once and
    written once by exactly one program per element."""
    R, n, H, D = q.shape
    dev = q.device
    has_text = text_k is not None
    tk, tv = (text_k, text_v) if has_text else (q, q)
    scale = 1.0 / math.sqrt(D)
    common = dict(UPCAST=INTERPRET, DOT_PREC=dot_precision(q.dtype), **_common_args(p, D))
    text_tiles = triton.cdiv(text_k.shape[1], p.configs["dq"].block_n) if has_text else 0

    # 1. dQ, delta = rowsum(dO * O), and per-tile sums of dS for the bias gradient
    cfg = p.configs["dq"]
    num_qt = triton.cdiv(n, cfg.block_m)
    own_tiles, ctx_tiles = triton.cdiv(n, cfg.block_n), triton.cdiv(p.m, cfg.block_n)
    num_tiles = own_tiles + p.C * ctx_tiles + text_tiles
    dq = alloc_output((R, n, H, D), q.dtype, dev)
    delta = alloc_output((R, H, n), torch.float32, dev)
    dbias_tiles = torch.zeros((R, H, num_qt, max(num_tiles, 1)), dtype=torch.float32, device=dev)
    has_aligned = aligned is not None
    al = aligned if has_aligned else bias
    daligned_tiles = torch.zeros_like(dbias_tiles) if has_aligned else dbias_tiles
    _bwd_dq_kernel[(R * H * num_qt,)](
        q, k, v, ctx_k, ctx_v, tk, tv, bias, al, p.ctx_index, p.ctx_bias_id, p.ctx_count,
        p.text_index if has_text else p.ctx_count, p.text_length if has_text else p.ctx_count,
        out, grad_out, lse, delta, dq, dbias_tiles, daligned_tiles,
        *q.stride(), *k.stride(), *v.stride(), *ctx_k.stride(), *ctx_v.stride(), *tk.stride(), *tv.stride(),
        *out.stride(), *grad_out.stride(), *dq.stride(), bias.stride(0), al.stride(0), p.C, H, p.own_bid,
        p.text_bid, LOG2E * scale, scale, dbias_tiles.shape[-1], M_K=p.m, TEXT_TILES=text_tiles,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=p.causal, HAS_TEXT=has_text, HAS_ALIGNED=has_aligned,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )

    # 2. dK, dV: own blocks (+ context readers when the context is the rows' own K/V), context, text
    cfg = p.configs["dkv"]
    dkv_args = (q, grad_out, lse, delta, bias, al)
    strides_qdo = (*q.stride(), *grad_out.stride())

    def dkv(src_k, src_v, num_blocks, keys, has_own, readers, key_len=None):
        gk = alloc_output((num_blocks, keys, H, D), src_k.dtype, dev)
        gv = alloc_output((num_blocks, keys, H, D), src_v.dtype, dev)
        rows, rbid, rcnt = readers
        if num_blocks == 0 or keys == 0:
            return gk.zero_(), gv.zero_()
        _bwd_dkv_kernel[(num_blocks * H * triton.cdiv(keys, cfg.block_n),)](
            *dkv_args, src_k, src_v, gk, gv, rows, rbid, rcnt, key_len if key_len is not None else rcnt,
            *strides_qdo, *src_k.stride(), *src_v.stride(), *gk.stride(), *gv.stride(), bias.stride(0),
            al.stride(0), rows.stride(0), H, p.own_bid, LOG2E * scale, scale, KEYS=keys, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, HAS_OWN=has_own, CAUSAL=p.causal, HAS_KEY_LEN=key_len is not None,
            MASK_KEYS=key_len is not None or keys % cfg.block_n != 0,
            HAS_ALIGNED=has_aligned and key_len is None,  # text keys (key_len) have no aligned bias
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
        )
        return gk, gv

    no_readers = lambda count: (torch.full((count, 1), -1, dtype=torch.int32, device=dev),  # noqa: E731
                                torch.zeros((count, 1), dtype=torch.int32, device=dev),
                                torch.zeros(count, dtype=torch.int32, device=dev))
    grads = dict(dq=dq, dck=None, dcv=None, dtk=None, dtv=None)
    ctx_readers = readers_table(p.ctx_index_raw, p.ctx_bias_raw, p.num_blocks) if p.C else no_readers(p.num_blocks)
    if p.shared_kv:
        grads["dk"], grads["dv"] = dkv(k, v, R, n, True, ctx_readers)
    else:
        grads["dk"], grads["dv"] = dkv(k, v, R, n, True, no_readers(R))
        if needs["ctx"]:
            grads["dck"], grads["dcv"] = dkv(ctx_k, ctx_v, p.num_blocks, p.m, False, ctx_readers)
    if has_text and needs["text"]:
        readers = text_readers(p.text_index, text_k.shape[0], p.text_bid)
        grads["dtk"], grads["dtv"] = dkv(text_k, text_v, text_k.shape[0], text_k.shape[1], False, readers,
                                         key_len=p.text_length)

    # 3. bias: sum the per-tile dS sums into their blocks, then into bias columns
    def columns(tiles: torch.Tensor, with_text: bool) -> torch.Tensor:
        part = tiles.sum(2)  # [R, H, tiles]
        own = part[:, :, :own_tiles].sum(-1, keepdim=True)  # [R, H, 1]
        ctx_part = part[:, :, own_tiles:own_tiles + p.C * ctx_tiles].reshape(R, H, p.C, ctx_tiles).sum(-1)
        per_block = [own, ctx_part]
        ids = [torch.full((R, 1), p.own_bid, dtype=torch.long, device=dev), p.ctx_bias_id.long()]
        if with_text:
            per_block.append(part[:, :, num_tiles - text_tiles:num_tiles].sum(-1, keepdim=True))
            ids.append(torch.full((R, 1), p.text_bid, dtype=torch.long, device=dev))
        sums = torch.cat(per_block, dim=2)  # [R, H, blocks]
        table = torch.zeros((H, p.num_bias), dtype=torch.float32, device=dev)
        table.index_add_(1, torch.cat(ids, dim=1).reshape(-1), sums.permute(1, 0, 2).reshape(H, -1))
        return table

    grads["dbias"] = columns(dbias_tiles, has_text).to(bias.dtype)
    grads["daligned"] = columns(daligned_tiles, False).to(aligned.dtype) if has_aligned else None
    return grads


class _PatchAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned, problem: _Problem):
        ck = k if problem.shared_kv else ctx_k
        cv = v if problem.shared_kv else ctx_v
        out, lse = _forward(problem, q, k, v, ck, cv, text_k, text_v, bias, aligned, store_lse=True)
        ctx.save_for_backward(q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned, out, lse)
        ctx.problem = problem
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned, out, lse = ctx.saved_tensors
        p = ctx.problem
        ck = k if p.shared_kv else ctx_k
        cv = v if p.shared_kv else ctx_v
        needs = ctx.needs_input_grad
        g = _backward(p, grad_out, q, k, v, ck, cv, text_k, text_v, bias, aligned, out, lse,
                      needs=dict(ctx=needs[3] or needs[4], text=needs[5] or needs[6]))
        return (g["dq"], g["dk"], g["dv"], g["dck"], g["dcv"], g["dtk"], g["dtv"], g["dbias"], g["daligned"],
                None)


# ----------------------------------------------------------------------------------------------
# Public entry point


def _check(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id, bias, causal, text, configs,
           aligned=None) -> _Problem:
    check_tensor("q", q, 4, SUPPORTED_DTYPES)
    dev, dtype = q.device, q.dtype
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, 4, (dtype,), dev)
    check_same("q, k, v", q, k, v, attr="shape")
    R, n, H, D = q.shape
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head size {D} > {MAX_HEAD_DIM} is not supported by the Triton kernels")
    for name, t in (("ctx_k", ctx_k), ("ctx_v", ctx_v)):
        check_tensor(name, t, 4, (dtype,), dev)
    check_same("ctx_k, ctx_v", ctx_k, ctx_v, attr="shape")
    NB, m, Hc, Dc = ctx_k.shape
    if (Hc, Dc) != (H, D):
        raise ValueError(f"ctx_k must be [NB, m, {H}, {D}] (heads and head size of q), got {tuple(ctx_k.shape)}")
    check_tensor("ctx_index", ctx_index, 2, INDEX_DTYPES, dev)
    check_tensor("ctx_bias_id", ctx_bias_id, 2, INDEX_DTYPES, dev)
    if ctx_index.shape[0] != R or ctx_bias_id.shape != ctx_index.shape:
        raise ValueError(f"ctx_index and ctx_bias_id must both be [R={R}, C], got {tuple(ctx_index.shape)} and "
                         f"{tuple(ctx_bias_id.shape)}")
    check_tensor("bias", bias, 2, (torch.float32, torch.float16, torch.bfloat16), dev)
    if bias.shape[0] != H:
        raise ValueError(f"bias must be [H={H}, I], got {tuple(bias.shape)}")
    num_bias = bias.shape[1]
    if not 0 <= int(own_bias_id) < num_bias:
        raise ValueError(f"own_bias_id {own_bias_id} outside the bias table's {num_bias} columns")
    check_aligned(aligned, bias)
    if m == 0 and ctx_index.shape[1]:
        raise ValueError("ctx_k has blocks of 0 keys")
    text_tables = check_text(text, R, H, D, dtype, dev)
    index, bias_id, count = compact_context(ctx_index, ctx_bias_id, NB, num_bias)
    shared = ctx_k is k and ctx_v is v
    return _Problem(R, n, m, H, D, num_bias, int(own_bias_id), num_bias - 1, bool(causal), shared, index, bias_id,
                    count, ctx_index, ctx_bias_id, NB, *(text_tables or (None, None)),
                    configs=configs or default_configs(n, m, D))


def patch_attention(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id: int, bias, causal: bool,
                    text=None, configs: Optional[dict] = None, aligned_bias=None) -> torch.Tensor:
    """Block-sparse patch attention; same contract as ``nuwa_ds.model.attention.patch_attention``.

    q, k, v [R, n, H, D]; ctx_k, ctx_v [NB, m, H, D]; ctx_index, ctx_bias_id [R, C]; bias [H, I]
    (last column: text); text a TextContext or None; aligned_bias [H, I] or None. Returns [R, n, H, D]
    in q's dtype. Differentiable in q, k, v, ctx_k, ctx_v, text.k, text.v, bias and aligned_bias.
    ``configs`` overrides the tiles (benchmarks).
    """
    p = _check(q, k, v, ctx_k, ctx_v, ctx_index, ctx_bias_id, own_bias_id, bias, causal, text, configs,
               aligned_bias)
    if p.R == 0 or p.n == 0:
        return torch.empty_like(q)
    text_k, text_v = (text.k, text.v) if text is not None else (None, None)
    tensors = (q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _PatchAttentionFn.apply(q, k, v, None if p.shared_kv else ctx_k, None if p.shared_kv else ctx_v,
                                       text_k, text_v, bias, aligned_bias, p)
    return _forward(p, q, k, v, ctx_k, ctx_v, text_k, text_v, bias, aligned_bias, store_lse=False)[0]


def attended_pairs(ctx_index: torch.Tensor, n: int, m: int, causal: bool, text_length=None, text_index=None) -> int:
    """(query, key) pairs actually attended: the useful work of one head (FLOPs = 4 D H pairs fwd)."""
    R = ctx_index.shape[0]
    own = n * (n + 1) // 2 if causal else n * n
    pairs = R * own + int((ctx_index >= 0).sum()) * n * m
    if text_length is not None:
        pairs += int(text_length[text_index].sum()) * n
    return pairs


# ----------------------------------------------------------------------------------------------
# Benchmark: ``nuwa-ds bench kernels`` calls ``benchmark`` on CPU; on a GPU its suite runs the same
# pieces (``bench_inputs``, ``check_case``, ``time_case``) over its settings' cases, peers beside them

PATCH = 16
WIDTH = 1024
"""Heads = WIDTH / head_dim, as in the nuwa-350m preset."""
CANVASES = (("4x4", (1, 4, 4), 8), ("8x8", (1, 8, 8), 2), ("3x4x4", (3, 4, 4), 2))
"""(name, canvas in patches (T, Hp, Wp), batch): ~24-32k tokens per call."""
EXTENTS = ((0, 1, 1), (1, 1, 1))


@dataclass(frozen=True)
class PatchCase:
    """One problem: ``batch`` canvases of ``patch`` x ``patch``-token patches in raster order."""

    canvas_name: str
    canvas: tuple[int, int, int]
    batch: int
    extents: tuple[int, int, int]
    head_dim: int
    stack: str  # "local": causal own block, context from another tensor; "global": full, context = k
    patch: int = PATCH
    num_heads: int = 0  # 0: WIDTH / head_dim

    @property
    def name(self) -> str:
        e = "".join(map(str, self.extents))
        return f"{self.stack}-{self.canvas_name}-e{e}-D{self.head_dim}"

    @property
    def heads(self) -> int:
        return self.num_heads or max(1, WIDTH // self.head_dim)


def gate_case(head_dim: int, stack: str, device: str = "cuda") -> PatchCase:
    """The correctness gate's problem: two patches on CPU (the interpreter), a 2 x 2 canvas on a GPU."""
    if device == "cpu":
        return PatchCase("1x2", (1, 1, 2), 1, (0, 1, 1), head_dim, stack, patch=4, num_heads=2)
    return PatchCase("2x2", (1, 2, 2), 1, (0, 1, 1), head_dim, stack)


def bench_inputs(case: PatchCase, device, dtype, text_len: int = 0) -> dict:
    """Random leaves laid out as the model's (q, k, v and context each [R, n, H, D]), the context tables
    of the batch, a text block of up to ``text_len`` tokens per canvas, and ``table`` (one canvas's
    ``RasterContext``)."""
    table = raster_context(case.canvas, case.extents)
    N, B, H, D, n = table.num_patches, case.batch, case.heads, case.head_dim, case.patch ** 2
    R = B * N
    ctx_index, ctx_bias_id = table.batch(B, device)
    leaf = lambda *shape: torch.randn(*shape, dtype=dtype, device=device).requires_grad_()  # noqa: E731
    q, k, v = leaf(R, n, H, D), leaf(R, n, H, D), leaf(R, n, H, D)
    ctx_k, ctx_v = (leaf(R, n, H, D), leaf(R, n, H, D)) if case.stack == "local" else (k, v)
    bias = (torch.randn(H, table.num_bias, device=device) * 0.5).requires_grad_()
    text = None
    if text_len:
        length = torch.randint(0, text_len + 1, (B,), device=device)
        length[0] = text_len
        text = TextContext(leaf(B, text_len, H, D), leaf(B, text_len, H, D), length,
                           torch.arange(B, device=device).repeat_interleave(N))
    return dict(q=q, k=k, v=v, ctx_k=ctx_k, ctx_v=ctx_v, ctx_index=ctx_index, ctx_bias_id=ctx_bias_id,
                own_bias_id=table.own_offset, bias=bias, causal=case.stack == "local", text=text, table=table)


def named_leaves(inputs: dict) -> dict:
    """The differentiable inputs by name (the global stack's context is k/v itself: listed once)."""
    out = {}
    for name in ("q", "k", "v", "ctx_k", "ctx_v", "bias"):
        if all(inputs[name] is not t for t in out.values()):
            out[name] = inputs[name]
    if inputs["text"] is not None:
        out.update(text_k=inputs["text"].k, text_v=inputs["text"].v)
    return out


def call_args(inputs: dict) -> dict:
    """``inputs`` as keyword arguments of ``patch_attention`` and its reference."""
    return {k: v for k, v in inputs.items() if k != "table"}


def forward_flops(inputs: dict) -> int:
    """4 D H x the (query, key) pairs attended (a causal own block counts n(n+1)/2)."""
    q, text = inputs["q"], inputs["text"]
    R, n, H, D = q.shape
    pairs = attended_pairs(inputs["ctx_index"], n, n, inputs["causal"], text.length if text is not None else None,
                           text.index if text is not None else None)
    return 4 * D * H * pairs


def fwd_bwd(fn, leaves, out_grad):
    """``fn`` forward and backward, the leaves' gradients cleared first."""
    def run():
        for t in leaves:
            t.grad = None
        fn().backward(out_grad)

    return run


def check_case(case: PatchCase, device, dtype, text_len: int = 77) -> dict:
    """The correctness gate: forward and every gradient against the float64 reference on fresh random
    inputs (text on). The bias gradient sums dS over whole blocks: cancellation leaves it a larger
    relative error, allowed 4x the tolerance."""
    inputs = bench_inputs(case, device, dtype, text_len=text_len)
    args = call_args(inputs)
    named = named_leaves(inputs)
    leaves = list(named.values())
    out = patch_attention(**args)
    double = {id(t): t.double() for t in leaves}
    ref_args = dict(args, **{k: double[id(args[k])] for k in ("q", "k", "v", "ctx_k", "ctx_v", "bias")})
    ref_args["text"] = float64_copy(args["text"])
    ref = reference_patch_attention(**ref_args)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad.to(dtype))
    want = torch.autograd.grad(ref, leaves, grad)
    errors = {"out": rel_error(out, ref)}
    for name, g, w in zip(named, got, want):
        errors[f"d{name}"] = rel_error(g, w) if not g.isnan().any() else float("inf")
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-5
    ok = all(err <= (4 * tol if name == "dbias" else tol) for name, err in errors.items())
    return dict(kernel="patch_attention", case=case.name, dtype=str(dtype).replace("torch.", ""),
                worst_rel_error=max(errors.values()), ok=ok, errors={k: float(f"{v:.3g}") for k, v in errors.items()})


def time_case(case: PatchCase, inputs: dict, measure, configs: Optional[dict] = None) -> dict:
    """The kernel's row: forward and forward + backward ms and TFLOP/s (useful pairs only; fwd+bwd
    counted as 3.5 x fwd)."""
    args = call_args(inputs)
    fn = lambda: patch_attention(**args, configs=configs)  # noqa: E731
    flops = forward_flops(inputs)
    fwd = measure(fn)
    fwdbwd = measure(fwd_bwd(fn, list(named_leaves(inputs).values()), torch.randn_like(inputs["q"])))
    return dict(kernel="patch_attention", case=case.name, stack=case.stack, canvas=case.canvas_name, batch=case.batch,
                extents=",".join(map(str, case.extents)), D=case.head_dim, H=case.heads,
                tokens=inputs["q"].shape[0] * case.patch ** 2, fwd_ms=fwd, fwd_tflops=flops / fwd / 1e9,
                fwdbwd_ms=fwdbwd, fwdbwd_tflops=3.5 * flops / fwdbwd / 1e9)


def benchmark(device: str = "cuda", measure: Optional[Callable] = None, dtype: Optional[torch.dtype] = None,
              cases: Optional[list] = None) -> list[dict]:
    """GPU: the local stack on ``CANVASES`` x ``EXTENTS`` at D = 64 and 128 (or ``cases``), each row
    after the gate of its (stack, head size) on a 2 x 2 canvas (the kernel's code does not depend on
    the canvas). ``measure(fn) -> ms`` defaults to ``median_ms``. CPU (the interpreter): the gate
    alone, both stacks on two 4 x 4-token patches; ``interpreter_s`` is its time, not a speed."""
    if device == "cpu":
        rows = []
        for stack in ("local", "global"):
            start = time.perf_counter()
            gate = check_case(gate_case(16, stack, "cpu"), "cpu", dtype or torch.float32, text_len=5)
            rows.append(dict(gate, interpreter_s=time.perf_counter() - start))
        return rows
    measure, dtype = measure or median_ms, dtype or torch.bfloat16
    cases = cases or [PatchCase(name, canvas, batch, ext, d, "local")
                      for d in (64, 128) for name, canvas, batch in CANVASES for ext in EXTENTS]
    gates, rows = {}, []
    for case in cases:
        key = (case.head_dim, case.stack)
        if key not in gates:
            gates[key] = check_case(gate_case(*key), device, dtype)
        gate = gates[key]
        row = time_case(case, bench_inputs(case, device, dtype), measure)
        rows.append(dict(row, worst_rel_error=gate["worst_rel_error"], ok=gate["ok"], gate=gate["case"]))
    return rows
