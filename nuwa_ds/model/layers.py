"""Transformer building blocks of both stacks, and the fused linear + cross-entropy head.

Blocks never decide where their context comes from: they hand their projections to a *layout*
(training: all patches of the batch at once, see ``nuwa.ParallelLayout``; generation: slots of the
rotating pool, see ``generation``), which runs the patch attention and returns its output. That
is how one set of blocks serves training, teacher-forced decoding and sampling, for every order.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class _InvariantOps(threading.local):
    """The matmul and norm the blocks use while ``batch_invariant_ops`` is on in this thread (None: the
    modules' own forward, cuBLAS and torch's norm): kernels whose rows are the same bits whatever the
    batch. Only where no gradient is recorded (generation): ``linear`` and ``RMSNorm`` ignore it
    otherwise."""

    linear: Optional[Callable] = None  # (x, weight, *, norm_weight, eps, gelu, residual) -> x @ weight.T
    rms_norm: Optional[Callable] = None  # (x, weight, eps)


INVARIANT = _InvariantOps()


@contextmanager
def batch_invariant_ops(enabled: bool = True):
    """Within it, every matmul and RMSNorm of the blocks, the head and the text projection runs the
    batch-invariant Triton kernels (``kernels/batch_invariant.py``; generation with the ``triton``
    backend, issue 16); ``enabled=False`` turns them off inside (a default generation nested in an
    invariant one). Not for training: it calls the weights directly, past ZeRO-3's module hooks, so it
    acts only where no gradient is recorded. Each block then runs as four matmul kernels with the norms,
    the GELU and the residual adds inside them (``Block._fused_forward``), the head's norm inside its
    matmul (issue 19: fewer kernels per token step)."""
    saved = INVARIANT.linear, INVARIANT.rms_norm
    if enabled:
        from kernels.batch_invariant import batch_invariant_linear, batch_invariant_rms_norm  # lazily: no triton here

        INVARIANT.linear, INVARIANT.rms_norm = batch_invariant_linear, batch_invariant_rms_norm
    else:
        INVARIANT.linear = INVARIANT.rms_norm = None
    try:
        yield
    finally:
        INVARIANT.linear, INVARIANT.rms_norm = saved


def invariant_active() -> bool:
    """Whether the batch-invariant kernels run here: ``batch_invariant_ops`` is on in this thread and no
    gradient is recorded."""
    return INVARIANT.linear is not None and not torch.is_grad_enabled()


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, or the batch-invariant matmul of its weight where ``invariant_active()``."""
    if not invariant_active():
        return module(x)
    y = INVARIANT.linear(x, module.weight)
    return y if module.bias is None else y + module.bias


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if invariant_active():
            return INVARIANT.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(round(dim * ratio / 64)) * 64 or int(dim * ratio)
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.proj, F.gelu(linear(self.fc, x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block whose attention is run by a layout (see the module docstring);
    the two stacks differ only in ``attend``."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, num_bias: int, eps: float,
                 aligned_bias: bool = False):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.norm1 = RMSNorm(dim, eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = RMSNorm(dim, eps)
        self.mlp = MLP(dim, mlp_ratio)
        # per-head bias by patch offset; last column is the text block (ADC positions)
        self.offset_bias = nn.Parameter(torch.zeros(self.heads, num_bias))
        # per-head bias by patch offset for the key at the query's own position only (model.aligned_bias)
        self.aligned_bias = nn.Parameter(torch.zeros(self.heads, num_bias)) if aligned_bias else None

    def attend(self, layout, layer: int, q, k, v) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, layout, layer: int) -> torch.Tensor:
        R, n, dim = x.shape  # rows (patches), positions, width
        if invariant_active():  # generation, batch-invariant: four matmul kernels with the rest inside them
            return self._fused_forward(x, layout, layer)
        q, k, v = linear(self.qkv, self.norm1(x)).view(R, n, 3, self.heads, self.head_dim).unbind(2)
        attn = self.attend(layout, layer, q, k, v)  # [R, n, H, D]
        x = x + linear(self.proj, attn.reshape(R, n, dim))
        return x + self.mlp(self.norm2(x))

    def _fused_forward(self, x: torch.Tensor, layout, layer: int) -> torch.Tensor:
        """The same block (its linears have no bias): norm1 + qkv, attention, proj + residual, norm2 + fc +
        GELU, proj + residual."""
        R, n, dim = x.shape
        mm = INVARIANT.linear
        qkv = mm(x, self.qkv.weight, norm_weight=self.norm1.weight, eps=self.norm1.eps)
        q, k, v = qkv.view(R, n, 3, self.heads, self.head_dim).unbind(2)
        attn = self.attend(layout, layer, q, k, v)
        x = mm(attn.reshape(R, n, dim), self.proj.weight, residual=x)
        h = mm(x, self.mlp.fc.weight, norm_weight=self.norm2.weight, eps=self.norm2.eps, gelu=True)
        return mm(h, self.mlp.proj.weight, residual=x)


class GlobalBlock(Block):
    """Patch-level block: a patch's tokens attend bidirectionally to themselves and to the same
    layer's states of its NCP context patches."""

    def text_kv(self, text_states: torch.Tensor):
        """Keys/values of the text block from the same projections as the tokens: [Bt, S, H, D] x2.
        Goes through ``linear(self.qkv, ...)`` (in training the module's own forward, so ZeRO-3 gathers
        the weight); the unused query third costs little at caption lengths."""
        qkv = linear(self.qkv, text_states).view(*text_states.shape[:2], 3, self.heads, self.head_dim)
        return qkv[:, :, 1], qkv[:, :, 2]

    MASKED = -1.0e4
    """Bias of a masked offset: exp of it is 0 in fp32 and bf16, and a block of keys all masked stays
    finite in the kernels' online softmax (where -inf minus -inf would not)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, num_bias: int, eps: float,
                 aligned_bias: bool = False, earlier_frames: int = 0):
        super().__init__(dim, head_dim, mlp_ratio, num_bias, eps, aligned_bias)
        # model.global_time_context=False: the first ``earlier_frames`` offsets of the bias table (those of
        # earlier frames) masked; not saved (it follows from the config)
        mask = None
        if earlier_frames:
            mask = torch.zeros(num_bias)
            mask[:earlier_frames] = self.MASKED
        self.register_buffer("time_mask", mask, persistent=False)

    def attend(self, layout, layer, q, k, v):
        bias = self.offset_bias if self.time_mask is None else self.offset_bias + self.time_mask
        return layout.global_attend(layer, q, k, v, bias, self.text_kv, self.aligned_bias)


class LocalBlock(Block):
    """Token-level decoder block: causal over its own patch, plus context keys/values projected
    from the *global* states of the NCP context patches (never its own patch's global state)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int, mlp_ratio: float, num_bias: int, eps: float,
                 aligned_bias: bool = False):
        super().__init__(dim, head_dim, mlp_ratio, num_bias, eps, aligned_bias)
        self.context = nn.Linear(context_dim, 2 * dim, bias=False)

    def context_kv(self, states: torch.Tensor):
        """Context keys/values from global-stack states (or text states) [..., S, context_dim]."""
        kv = linear(self.context, states)
        return kv.view(*states.shape[:-1], 2, self.heads, self.head_dim).unbind(-3)

    def attend(self, layout, layer, q, k, v):
        return layout.local_attend(layer, q, k, v, self.offset_bias, self.context_kv, self.aligned_bias)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` without holding the [M, V] logits.

    Logits are made one chunk of rows at a time; their gradient is formed at once (softmax minus
    one-hot) and folded into grad_h / grad_weight, so forward + backward cost the same three
    matmuls as the unfused version while peak memory is one chunk of logits. With ``fused`` the
    chunk's loss and gradient come from one Triton kernel working in place (kernels/cross_entropy.py).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, fused: bool):
        M = h.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, M, chunk):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            if fused:
                # lazily, as the attention kernels: the torch loss runs without triton
                from kernels.cross_entropy import cross_entropy_grad_

                probs = hc @ weight.t()  # [c, V], becomes the gradient in place
                loss += cross_entropy_grad_(probs, tc, 1.0 / M).sum()
            else:
                logits = (hc @ weight.t()).float()  # [c, V]
                lse = torch.logsumexp(logits, dim=-1)
                loss += (lse - logits.gather(1, tc.unsqueeze(1)).squeeze(1)).sum()
                probs = torch.exp_(logits.sub_(lse.unsqueeze(1)))
                probs[torch.arange(hc.shape[0], device=h.device), tc] -= 1.0
                probs = probs.div_(M).to(h.dtype)
            grad_h[s : s + chunk] = probs @ weight
            grad_w += (probs.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss / M

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None


class LMHead(nn.Module):
    """Final norm + vocabulary projection; the loss path never materialises all logits."""

    def __init__(self, dim: int, vocab: int, eps: float, chunk: int, backend: str = "auto"):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.weight = nn.Parameter(torch.empty(vocab, dim))
        self.chunk, self.backend = chunk, backend

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = False):
        """h [M, d] -> (mean loss or None, logits [M, V] or None)."""
        if targets is None and return_logits and invariant_active():  # the norm inside the matmul
            return None, INVARIANT.linear(h, self.weight, norm_weight=self.norm.weight, eps=self.norm.eps)
        h = self.norm(h)
        loss = logits = None
        if targets is not None:
            if torch.is_grad_enabled() and (h.requires_grad or self.weight.requires_grad):
                fused = self.backend == "triton" or (self.backend == "auto" and h.is_cuda)
                loss = _LinearCrossEntropy.apply(h, self.weight, targets, self.chunk, fused)
            else:
                total = sum(F.cross_entropy((h[s : s + self.chunk] @ self.weight.t()).float(),
                                            targets[s : s + self.chunk], reduction="sum")
                            for s in range(0, h.shape[0], self.chunk))
                loss = total / h.shape[0]
        if return_logits:
            logits = INVARIANT.linear(h, self.weight) if invariant_active() else h @ self.weight.t()
        return loss, logits


def init_weights(module: nn.Module, std: float, num_layers: int):
    """GPT-2 style: normal(0, std) everywhere, residual output projections scaled by 1/sqrt(2L)."""
    for name, p in module.named_parameters():
        if name.endswith(("offset_bias", "aligned_bias")):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            scale = 1 / math.sqrt(2 * num_layers) if name.endswith(("proj.weight",)) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)
