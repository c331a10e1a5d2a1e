"""Fused softmax cross-entropy: per-row loss and d(mean loss)/d(logits), in place, in one kernel.

The model's head (``nuwa_ds/model/layers.py``) makes logits one chunk of rows at a time and needs
two things from each chunk: the loss and the gradient ``(softmax - onehot) / M`` it folds into the
two gradient matmuls. Done with torch ops that is ~8 passes over an fp32 [rows, 16384] chunk
(cast, logsumexp, subtract, exp, one-hot fix, scale, cast back); this kernel reads the logits
twice and writes the gradient once, in the logits' own dtype and buffer:

    pass 1: per-lane online max / sum of exp over the vocabulary -> lse; loss = lse - x[target]
    pass 2: g = exp(x - lse) * scale, minus scale at the target, stored over x

In the Triton tutorials' manner this file holds the kernel, its launcher, the torch reference
(``reference_cross_entropy``) and the benchmark entry (``benchmark``) that ``nuwa-ds bench kernels``
finds here. Test: ``tests/test_kernels_cross_entropy.py``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from kernels._common import rel_error, wall_ms

# a large finite stand-in for -inf on padded lanes: exp(pad - max) is 0 without ever forming -inf - -inf
PAD: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def _cross_entropy_kernel(logits_ptr, targets_ptr, loss_ptr, stride_row, V, scale, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), PAD, tl.float32)  # running max per lane
    s = tl.zeros((BLOCK_V,), tl.float32)  # running sum of exp(x - m) per lane
    for start in range(0, V, BLOCK_V):
        valid = start + cols < V
        x = tl.load(base + start + cols, mask=valid, other=0.0).to(tl.float32)
        x = tl.where(valid, x, PAD)  # padded in fp32: PAD would overflow a 16-bit load's `other`
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    row_max = tl.max(m, axis=0)
    lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), axis=0))
    target = tl.load(targets_ptr + row)
    target_logit = tl.load(base + target).to(tl.float32)
    tl.store(loss_ptr + row, lse - target_logit)
    for start in range(0, V, BLOCK_V):
        mask = start + cols < V
        x = tl.load(base + start + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) * scale
        g = tl.where(start + cols == target, g - scale, g)
        tl.store(base + start + cols, g.to(logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """logits [R, V] (fp32/fp16/bf16, last dim contiguous; overwritten with ``scale *
    (softmax - onehot(targets))``), targets [R] int -> per-row loss [R] fp32."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be [R, V] with contiguous rows, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be [R={logits.shape[0]}], got {tuple(targets.shape)}")
    R, V = logits.shape
    loss = torch.empty(R, dtype=torch.float32, device=logits.device)
    if R == 0:
        return loss
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    block = min(triton.next_power_of_2(V), 256 if interpreting else 2048)
    _cross_entropy_kernel[(R,)](logits, targets.contiguous(), loss, logits.stride(0), V, float(scale),
                                BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return loss


def reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, scale: float):
    """(per-row loss [R] fp32, gradient [R, V] fp32) with torch, for the tests."""
    x = logits.float()
    loss = torch.logsumexp(x, dim=-1) - x.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    grad = torch.softmax(x, dim=-1) * scale
    grad[torch.arange(x.shape[0], device=x.device), targets.long()] -= scale
    return loss, grad


# ----------------------------------------------------------------------------------------------
# Benchmark: ``nuwa-ds bench kernels`` calls every kernels/ module's ``benchmark``

BENCH_SHAPES = {"cuda": ((4096, 16384), (16384, 16384), (16384, 1024)), "cpu": ((6, 300),)}
"""(rows, vocabulary) per device: a head chunk of nuwa-350m's 16384-code vocabulary at the default
``loss_chunk_tokens`` and four times that, and a small vocabulary; on CPU (the interpreter) one odd
shape, for correctness only."""


def benchmark(device: str = "cuda", measure: Optional[Callable] = None,
              dtype: Optional[torch.dtype] = None) -> list[dict]:
    """Rows of the kernel beside its reference's torch ops (which also materialise the gradient), after
    a correctness gate on a fresh copy of the same logits. ``measure(fn) -> milliseconds`` (default:
    one wall-clock call, ``_common.wall_ms``). Memory-bound: ``gbps`` counts the logits read twice and
    written once."""
    measure = measure or wall_ms
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    rows = []
    for R, V in BENCH_SHAPES["cuda" if device == "cuda" else "cpu"]:
        gen = torch.Generator(device=device).manual_seed(0)
        logits = torch.randn(R, V, device=device, dtype=dtype, generator=gen) * 4
        targets = torch.randint(0, V, (R,), device=device, generator=gen)
        ref_loss, ref_grad = reference_cross_entropy(logits, targets, 1.0 / R)
        check = logits.clone()
        loss = cross_entropy_grad_(check, targets, 1.0 / R)
        error = max(rel_error(loss, ref_loss), rel_error(check, ref_grad))
        ms = measure(lambda: cross_entropy_grad_(logits, targets, 1.0 / R))  # in place: its cost does not
        ref_ms = measure(lambda: reference_cross_entropy(logits, targets, 1.0 / R))  # depend on the values
        row = dict(kernel="cross_entropy", case=f"{R}x{V}", dtype=str(dtype).replace("torch.", ""), ms=ms,
                   gbps=3 * logits.numel() * logits.element_size() / ms / 1e6, ref_ms=ref_ms, x_ref=ref_ms / ms,
                   worst_rel_error=error, ok=error < (2e-2 if dtype == torch.bfloat16 else 1e-5))
        rows.append(row)
    return rows
