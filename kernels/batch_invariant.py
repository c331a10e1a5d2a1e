"""Batch-invariant matmul and RMSNorm for the token step (issue 16).

On a GPU the same row can come out of ``x @ w.T`` or ``rms_norm(x)`` with other last bits depending on
how many rows are computed together: cuBLAS picks its algorithm (tile shape, split-K) by the row count,
and a reduction kernel picks how to split a row by the tensor's shape. In generation a last-bit logit
difference flips a near-tie and every later patch inherits it, so the wavefront schedule (many rows)
and the sequential one (few rows) draw different canvases from one seed.

Here each row's result is computed the same way whatever the batch:
  * ``batch_invariant_linear``: ``y = x @ w.T``, fixed tiles (``BLOCK_M`` x ``BLOCK_N``, ``BLOCK_K``) for
    every row count, no split-K: output element (i, j) is the fp32 sum over K in ``BLOCK_K`` chunks in
    one order, whichever rows share its tile (a tile's other rows only fill other lanes of the same
    MMA). Rows are padded to the tile by masked loads, never by copies.
  * ``batch_invariant_rms_norm``: one program per row, the whole row in one block: a row's sum of
    squares is reduced by the same tree whatever the other rows.
The decode attention's piece is ``pool_decode_attention(split_units=...)``: a split size fixed in keys.

In the Triton tutorials' manner this file holds the kernels, their launchers and the torch references
(``reference_linear``, ``reference_rms_norm``) and the benchmark entry (``benchmark``) that ``nuwa-ds
bench kernels`` finds here: each kernel beside the torch op it stands in for (cuBLAS, ``F.rms_norm``)
at the token step's row counts, with its error and its invariance. The tests (``tests/test_kernels_batch_invariant.py``)
check both against the references on fresh random inputs and check the invariance itself: every row's
bits alone equal its bits in batches of other sizes. The GPU cost against cuBLAS / torch is measured by
``nuwa-ds bench decode`` once the token step uses them (issue 16).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._common import (INTERPRET, SUPPORTED_DTYPES, alloc_output, check_tensor, dot_precision, rel_error,
                             wall_ms)

BLOCK_M = 16
"""Rows per tile: the smallest MMA height; a token step of 1-16 rows reads each weight tile once."""
BLOCK_N = 64
BLOCK_K = 64


@triton.jit
def _gelu_tanh(x):
    """GELU, tanh approximation (as ``F.gelu(approximate="tanh")``), written with exp (one spelling for
    every triton version): 0.5 x (1 + tanh z) = x / (1 + exp(-2z)), which keeps its relative accuracy for
    negative x (1 - 2/(exp(2z)+1) cancels there); z held above -40 so that exp(-2z) stays finite."""
    z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * tl.maximum(z, -40.0)))


@triton.jit
def _linear_kernel(X, W, Y, NW, R, M, N, K, s_xm, s_xk, s_wn, s_wk, s_ym, s_yn, s_rm, s_rn, eps,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                   DOT_PREC: tl.constexpr, NORM: tl.constexpr, GELU: tl.constexpr, RESIDUAL: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = X + rows[:, None].to(tl.int64) * s_xm
    if NORM:  # the row's RMS first: its sum of squares over K in BLOCK_K chunks, one order for every batch
        squares = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            x = tl.load(x_rows + ks[None, :] * s_xk, mask=(rows[:, None] < M) & (ks[None, :] < K),
                        other=0.0).to(tl.float32)
            squares += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(squares, 1) / K + eps)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        x = tl.load(x_rows + ks[None, :] * s_xk, mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
        if NORM:  # the normalised row in x's dtype, as the unfused norm would have written it
            nw = tl.load(NW + ks, mask=ks < K, other=0.0).to(tl.float32)
            x = (x.to(tl.float32) * rstd[:, None] * nw[None, :]).to(X.dtype.element_ty)
        w = tl.load(W + cols[None, :].to(tl.int64) * s_wn + ks[:, None] * s_wk,
                    mask=(cols[None, :] < N) & (ks[:, None] < K), other=0.0)
        if UPCAST:  # the interpreter's dot of 16-bit tiles is not exact: fp32 there (products of 16-bit values are)
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=DOT_PREC)
    if GELU:
        acc = _gelu_tanh(acc)
    out_mask = (rows[:, None] < M) & (cols[None, :] < N)
    if RESIDUAL:  # y = residual + x @ w.T, rounded once
        acc += tl.load(R + rows[:, None].to(tl.int64) * s_rm + cols[None, :] * s_rn, mask=out_mask,
                       other=0.0).to(tl.float32)
    tl.store(Y + rows[:, None].to(tl.int64) * s_ym + cols[None, :] * s_yn, acc.to(Y.dtype.element_ty), mask=out_mask)


def batch_invariant_linear(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: Optional[torch.Tensor] = None,
                           eps: float = 1e-5, gelu: bool = False, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.T`` (``F.linear`` without bias): x [..., K], weight [N, K], one dtype; returns
    [..., N] in x's dtype, each row's bits independent of the other rows and of their count.

    Fused around it for the token step (issue 19), each optional: ``norm_weight`` [K] normalises x's rows
    first (``F.rms_norm(x, (K,), norm_weight, eps)``, its result in x's dtype as that op would write it),
    ``gelu`` applies ``F.gelu(approximate="tanh")`` to the fp32 product, ``residual`` [..., N] is added
    before the one rounding to x's dtype. One kernel instead of two or three; the same invariance."""
    check_tensor("weight", weight, 2, SUPPORTED_DTYPES)
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor [..., K]")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"x and weight must share dtype and device, got {x.dtype}/{x.device} and "
                         f"{weight.dtype}/{weight.device}")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x's last dimension {x.shape[-1]} != weight's {K}")
    if norm_weight is not None:
        check_tensor("norm_weight", norm_weight, 1, SUPPORTED_DTYPES)
        if norm_weight.shape[0] != K or norm_weight.device != x.device:
            raise ValueError(f"norm_weight must have x's row length {K} and device {x.device}, got "
                             f"{norm_weight.shape[0]} on {norm_weight.device}")
        norm_weight = norm_weight.contiguous()
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != (*x.shape[:-1], N) \
                or residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(f"residual must be a {x.dtype} tensor of shape {(*x.shape[:-1], N)} on {x.device}")
        residual = residual.reshape(M, N)
    y = alloc_output((M, N), x.dtype, x.device)
    if M:
        r = residual if residual is not None else y
        grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
        _linear_kernel[grid](x2, weight, y, norm_weight if norm_weight is not None else weight, r, M, N, K,
                             *x2.stride(), *weight.stride(), *y.stride(), *r.stride(), float(eps),
                             BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, UPCAST=INTERPRET,
                             DOT_PREC=dot_precision(x.dtype), NORM=norm_weight is not None, GELU=bool(gelu),
                             RESIDUAL=residual is not None)
    return y.view(*x.shape[:-1], N)


@triton.jit
def _rms_norm_kernel(X, Wt, Y, D, s_xm, s_ym, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    x = tl.load(X + row * s_xm + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
    w = tl.load(Wt + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * s_ym + offs, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


def batch_invariant_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.rms_norm(x, (D,), weight, eps)`` for x [..., D] (last dimension contiguous), in fp32 inside,
    x's dtype out; one program per row."""
    check_tensor("weight", weight, 1, SUPPORTED_DTYPES)
    if not isinstance(x, torch.Tensor) or x.dtype not in SUPPORTED_DTYPES or x.shape[-1:] != weight.shape:
        raise ValueError(f"x must be a tensor [..., {weight.shape[0]}] of {[str(d) for d in SUPPORTED_DTYPES]}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on one device, got {x.device} and {weight.device}")
    weight = weight.contiguous()
    D = weight.shape[0]
    x2 = x.reshape(-1, D)
    if x2.shape[0] and x2.stride(1) != 1:
        x2 = x2.contiguous()
    y = alloc_output(x2.shape, x.dtype, x.device)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](x2, weight, y, D, x2.stride(0), y.stride(0), float(eps),
                                         BLOCK_D=triton.next_power_of_2(D))
    return y.view(x.shape)


def reference_linear(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: Optional[torch.Tensor] = None,
                     eps: float = 1e-5, gelu: bool = False, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ground truth in float64 (the normalised rows rounded to x's dtype first, as the kernel feeds its
    matmul)."""
    if norm_weight is not None:
        x = reference_rms_norm(x, norm_weight, eps).to(x.dtype)
    y = x.double() @ weight.double().T
    if gelu:
        y = F.gelu(y, approximate="tanh")
    return y if residual is None else y + residual.double()


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


# ----------------------------------------------------------------------------------------------
# Benchmark: ``nuwa-ds bench kernels`` calls ``benchmark`` (on CPU in the interpreter, tiny shapes)

BENCH_SHAPES = {"cuda": [(1024, 3072), (1024, 4096), (4096, 1024)], "cpu": [(48, 40), (40, 80)]}
"""(K, N) of the token step's matmuls at nuwa-350m's width: qkv, MLP up, MLP down."""
BENCH_ROWS = {"cuda": (1, 32, 128), "cpu": (3,)}


def benchmark(device: str = "cuda", measure: Optional[Callable] = None,
              dtype: Optional[torch.dtype] = None) -> list[dict]:
    """Rows of each kernel beside the torch op it replaces, same inputs: ``x_ref`` = torch's time / ours
    (below 1: the invariance costs that much), ``gbps`` the weight (matmul) or row (norm) bytes read,
    ``invariant`` whether row 0 alone has the same bits as row 0 of the batch, ``ok`` that and the error
    against the float64 reference. ``measure(fn) -> milliseconds`` (default: one wall-clock call)."""
    measure = measure or wall_ms
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    gen = torch.Generator(device=device).manual_seed(0)
    name = str(dtype).replace("torch.", "")
    key = "cuda" if device == "cuda" else "cpu"
    shapes, row_counts = BENCH_SHAPES[key], BENCH_ROWS[key]
    rows = []
    for K, N in shapes:
        w = torch.randn(N, K, device=device, dtype=dtype, generator=gen) / K ** 0.5
        for M in row_counts:
            x = torch.randn(M, K, device=device, dtype=dtype, generator=gen)
            y = batch_invariant_linear(x, w)
            error = rel_error(y, reference_linear(x, w))
            invariant = bool(torch.equal(batch_invariant_linear(x[:1], w)[0], y[0]))
            ms = measure(lambda: batch_invariant_linear(x, w))
            ref_ms = measure(lambda: F.linear(x, w))
            rows.append(dict(kernel="batch_invariant_linear", case=f"{M}x{K}->{N}", dtype=name, ms=ms, ref_ms=ref_ms,
                             x_ref=ref_ms / ms, gbps=w.numel() * w.element_size() / ms / 1e6, worst_rel_error=error,
                             invariant=invariant, ok=invariant and error < tol))
        # the fusions of the token step against the unfused torch ops they replace (norm + matmul [+ GELU];
        # matmul + residual): what the fewer launches buy at these sizes
        for M in row_counts:
            x = torch.randn(M, K, device=device, dtype=dtype, generator=gen)
            nw = torch.randn(K, device=device, dtype=dtype, generator=gen)
            res = torch.randn(M, N, device=device, dtype=dtype, generator=gen)
            gelu = N > K  # the MLP's up projection
            cases = {"norm_linear" + ("_gelu" if gelu else ""): (
                         dict(norm_weight=nw, gelu=gelu),
                         lambda: (F.gelu if gelu else (lambda t, approximate: t))(
                             F.linear(F.rms_norm(x, (K,), nw, 1e-5), w), approximate="tanh")),
                     "linear_residual": (dict(residual=res), lambda: res + F.linear(x, w))}
            for kernel, (args, torch_op) in cases.items():
                y = batch_invariant_linear(x, w, **args)
                error = rel_error(y, reference_linear(x, w, **args))
                part = {k: (v[:1] if k == "residual" else v) for k, v in args.items()}
                invariant = bool(torch.equal(batch_invariant_linear(x[:1], w, **part)[0], y[0]))
                ms = measure(lambda: batch_invariant_linear(x, w, **args))
                ref_ms = measure(torch_op)
                rows.append(dict(kernel=f"batch_invariant_{kernel}", case=f"{M}x{K}->{N}", dtype=name, ms=ms,
                                 ref_ms=ref_ms, x_ref=ref_ms / ms, gbps=w.numel() * w.element_size() / ms / 1e6,
                                 worst_rel_error=error, invariant=invariant, ok=invariant and error < tol))
        if (K, N) == shapes[0]:  # the norm, once, at width K
            weight = torch.randn(K, device=device, dtype=dtype, generator=gen)
            for M in row_counts:
                x = torch.randn(M, K, device=device, dtype=dtype, generator=gen)
                y = batch_invariant_rms_norm(x, weight, 1e-5)
                error = rel_error(y, reference_rms_norm(x, weight, 1e-5))
                invariant = bool(torch.equal(batch_invariant_rms_norm(x[:1], weight, 1e-5)[0], y[0]))
                ms = measure(lambda: batch_invariant_rms_norm(x, weight, 1e-5))
                ref_ms = measure(lambda: F.rms_norm(x, (K,), weight, 1e-5))
                rows.append(dict(kernel="batch_invariant_rms_norm", case=f"{M}x{K}", dtype=name, ms=ms, ref_ms=ref_ms,
                                 x_ref=ref_ms / ms, gbps=2 * x.numel() * x.element_size() / ms / 1e6,
                                 worst_rel_error=error, invariant=invariant, ok=invariant and error < tol))
    return rows
