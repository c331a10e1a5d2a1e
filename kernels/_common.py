"""What both kernel files share: interpreter handling, input checks, the host-side tables the
kernels walk (context entries compacted valid-first, and "which rows read block j"), and what their
``benchmark`` entries build and time with (a raster canvas's context table, CUDA-graph timing).

The kernels run compiled on a GPU (triton 3.6 there) and under ``TRITON_INTERPRET=1`` on CPU (the
pinned triton 3.9). Two rules keep one source for both:
  * in the interpreter every loaded tile is converted to fp32 at once (``UPCAST``): its bf16
    arithmetic is silently wrong (triton #11584), fp32 is exact;
  * only pointer arithmetic (no block pointers), no libdevice, no multi-config autotune.
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from kernels._reference import rel_error  # noqa: F401  (torch only, for the tests too; kernels import it from here)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Read once at import: the flag must be set before any ``@triton.jit`` is defined anyway."""

LOG2E = 1.4426950408889634
RCP_LN2 = tl.constexpr(LOG2E)
"""log2(e) for kernels (globals read inside @triton.jit must be constexpr)."""
POISON_OUTPUTS = False
"""Tests set this: every kernel output is then allocated NaN-filled, so an element that no program
writes fails the comparison instead of passing on whatever memory held."""
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def device_function(fn):
    """``triton.jit`` for helpers called from kernels.

    The interpreter re-patches ``triton.language`` on every nested call (about 2 ms each, most of
    a test's time); the calling kernel has patched the same module already, so the helpers skip it.
    Compiled kernels are unaffected: there this is plain ``triton.jit``.
    """
    jitted = triton.jit(fn)
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        if isinstance(jitted, InterpretedFunction) and hasattr(jitted, "rewrite"):
            jitted.__class__ = _NestedInterpretedFunction
    return jitted


if INTERPRET:
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted

    class _NestedInterpretedFunction(_Interpreted):
        def __call__(self, *args, **kwargs):
            return self.rewrite()(*args, **kwargs)


@device_function
def load_tile(base, rows, stride_row, cols, stride_col, row_limit, col_limit,
              ROW_MASK: tl.constexpr, COL_MASK: tl.constexpr, UPCAST: tl.constexpr):
    """Load ``base[rows, cols]`` ([len(rows), len(cols)]); out-of-range entries read 0. The masks are
    compile-time optional so aligned tiles stay unmasked (wide vector loads)."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :] * stride_col
    if ROW_MASK and COL_MASK:
        x = tl.load(ptrs, mask=(rows[:, None] < row_limit) & (cols[None, :] < col_limit), other=0.0)
    elif ROW_MASK:
        x = tl.load(ptrs, mask=rows[:, None] < row_limit, other=0.0)
    elif COL_MASK:
        x = tl.load(ptrs, mask=cols[None, :] < col_limit, other=0.0)
    else:
        x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


def alloc_output(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def block_d(head_dim: int) -> int:
    """Tile width over the head dimension: a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (as torch's default matmul); 16-bit ones use the tensor
    cores, where the setting is ignored."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_tensor(name: str, t, dims: int, dtypes=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like q")


def check_same(names: str, *tensors, attr: str):
    values = [getattr(t, attr) for t in tensors]
    if any(v != values[0] for v in values):
        raise ValueError(f"{names} must have the same {attr}, got {[str(v) for v in values]}")


INDEX_DTYPES = (torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------
# Host-side tables, cached on the index tensor they derive from. The model hands every layer of a
# step the same tensor object, so each table is built - and its values checked, which costs a
# device sync - once per step, not per layer. Stored as an attribute of that tensor, a table lives
# exactly as long as it: a CUDA graph captured over a decode step keeps reading valid memory.


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def cached_table(tensors: tuple, extra: tuple, build: Callable, derive: Optional[Callable] = None):
    """``build()`` once per (tensors' identity and version, extra); held by ``tensors[0]``.

    During CUDA-graph capture the table is not checked: ``derive()`` (``build`` without its value
    checks, which would sync) is recorded into the graph, so every replay derives the table from what
    the index tensors hold at that replay (generation refills them per patch)."""
    owner = tensors[0]
    if owner.is_cuda and torch.cuda.is_current_stream_capturing():
        # recorded into the graph under its own key, so the eager entry is never replayed and the
        # later layers of the same captured step reuse the first layer's derived table
        build, extra = derive or build, extra + ("captured",)
    store = getattr(owner, "_nuwa_kernel_tables", None)
    if store is None or store[0] != _version(owner):  # first use, or modified in place since
        store = (_version(owner), {})
        owner._nuwa_kernel_tables = store
    key = extra + tuple((id(t), _version(t)) for t in tensors[1:])
    hit = store[1].get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors[1:])):
        return hit[1]
    value = build()
    store[1][key] = ([weakref.ref(t) for t in tensors[1:]], value)
    return value


def compact_context(ctx_index: torch.Tensor, ctx_bias_id: torch.Tensor, num_blocks: int, num_bias: int,
                    names: tuple[str, str, str] = ("ctx_index", "ctx_bias_id", "ctx_k")):
    """Valid entries first (stable), as int32, plus the count per row; checks every value once.

    ctx_index [R, C] (-1 = none), ctx_bias_id [R, C] -> (index [R, C], bias_id [R, C], count [R]).
    """

    def derive():
        invalid = (ctx_index < 0).to(torch.int8)
        perm = torch.sort(invalid, dim=1, stable=True).indices
        index = ctx_index.gather(1, perm).to(torch.int32).contiguous()
        bias_id = ctx_bias_id.gather(1, perm).to(torch.int32).contiguous()
        count = (1 - invalid).sum(1, dtype=torch.int32)
        return index, bias_id, count

    def build():
        if ctx_index.numel():
            bad_block = ((ctx_index < -1) | (ctx_index >= num_blocks)).any()
            bad_bias = ((ctx_bias_id < 0) | (ctx_bias_id >= num_bias)) & (ctx_index >= 0)
            if bool(bad_block):
                raise ValueError(f"{names[0]} entries must be -1 or in [0, {num_blocks}) (blocks of {names[2]})")
            if bool(bad_bias.any()):
                raise ValueError(f"{names[1]} entries of valid context must lie in [0, {num_bias}) (columns of bias)")
        return derive()

    return cached_table((ctx_index, ctx_bias_id), ("compact", num_blocks, num_bias), build, derive)


def _build_readers(ctx_index: torch.Tensor, ctx_bias_id: torch.Tensor, num_blocks: int):
    R, C = ctx_index.shape
    device = ctx_index.device
    block = ctx_index.reshape(-1).long()
    block = torch.where(block >= 0, block, torch.full_like(block, num_blocks))  # padding -> a spare bin
    row = torch.arange(R, device=device).repeat_interleave(C)
    order = torch.argsort(block, stable=True)
    block, row, bias = block[order], row[order], ctx_bias_id.reshape(-1)[order]
    count = torch.bincount(block, minlength=num_blocks + 1)[:num_blocks]  # readers per block
    L = int(count.max()) if count.numel() else 0
    rows = torch.full((num_blocks, max(L, 1)), -1, dtype=torch.int32, device=device)
    bias_id = torch.zeros((num_blocks, max(L, 1)), dtype=torch.int32, device=device)
    if L:
        start = torch.cumsum(count, 0) - count  # where each block's run begins in the sorted list
        keep = block < num_blocks
        block, row, bias = block[keep], row[keep], bias[keep]
        slot = torch.arange(block.numel(), device=device) - start[block]
        rows[block, slot] = row.to(torch.int32)
        bias_id[block, slot] = bias.to(torch.int32)
    return rows, bias_id, count.to(torch.int32)


def readers_table(ctx_index: torch.Tensor, ctx_bias_id: torch.Tensor, num_blocks: int):
    """Transpose of the context table: for each block j, the rows that read it and with which bias id.

    -> (rows [NB, L] int32, bias_id [NB, L] int32, count [NB] int32); L = most readers of any block.
    The backward kernels walk it to sum every reader's contribution to dK/dV of a block in one
    program: each block's gradient is written once, no atomics, deterministic.
    """
    return cached_table((ctx_index, ctx_bias_id), ("readers", num_blocks),
                        lambda: _build_readers(ctx_index, ctx_bias_id, num_blocks))


def text_readers(text_index32: torch.Tensor, num_text: int, text_bias_id: int):
    """Rows reading each text row: (rows [Bt, L], bias_id [Bt, L], count [Bt]) like ``readers_table``."""

    def build():
        column = text_index32.view(-1, 1)
        return _build_readers(column, torch.full_like(column, text_bias_id), num_text)

    return cached_table((text_index32,), ("text_readers", num_text, text_bias_id), build)


def check_aligned(aligned, bias: torch.Tensor):
    """The aligned-token bias table, when given, is shaped, typed and placed like ``bias``."""
    if aligned is None:
        return
    check_tensor("aligned_bias", aligned, 2, (torch.float32, torch.float16, torch.bfloat16), bias.device)
    if aligned.shape != bias.shape:
        raise ValueError(f"aligned_bias must be shaped like bias {tuple(bias.shape)}, got {tuple(aligned.shape)}")


def check_text(text, R: int, H: int, D: int, dtype, device):
    """Shapes of a TextContext; its index/length values are checked once per tensor (cached)."""
    if text is None:
        return
    for name in ("k", "v", "length", "index"):
        if not hasattr(text, name):
            raise ValueError(f"text must be a TextContext with k, v, length, index; missing {name!r}")
    check_tensor("text.k", text.k, 4, (dtype,), device)
    check_tensor("text.v", text.v, 4, (dtype,), device)
    check_same("text.k, text.v", text.k, text.v, attr="shape")
    Bt, S, Ht, Dt = text.k.shape
    if (Ht, Dt) != (H, D):
        raise ValueError(f"text.k must be [Bt, S, {H}, {D}] (heads and head size of q), got {tuple(text.k.shape)}")
    check_tensor("text.length", text.length, 1, INDEX_DTYPES, device)
    check_tensor("text.index", text.index, 1, INDEX_DTYPES, device)
    if text.length.shape[0] != Bt:
        raise ValueError(f"text.length must have {Bt} entries (one per text row), got {text.length.shape[0]}")
    if text.index.shape[0] != R:
        raise ValueError(f"text.index must have {R} entries (one per attention row), got {text.index.shape[0]}")

    def derive():
        return text.index.to(torch.int32).contiguous(), text.length.to(torch.int32).contiguous()

    def build():
        if R and (bool((text.index < 0).any()) or bool((text.index >= Bt).any())):
            raise ValueError(f"text.index entries must lie in [0, {Bt})")
        if Bt and (bool((text.length < 0).any()) or bool((text.length > S).any())):
            raise ValueError(f"text.length entries must lie in [0, {S}]")
        return derive()

    return cached_table((text.index, text.length), ("text", Bt, S), build, derive)


def num_sms(device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


# ----------------------------------------------------------------------------------------------
# Benchmark helpers: the kernel files' ``benchmark`` entries build their problems and time them here


@dataclass(frozen=True)
class RasterContext:
    """Which patches each patch of a canvas reads as context, generated in raster order.

    ``ctx_index [N, C]``: canonical indices ``(t * Hp + r) * Wp + c`` of each patch's context
    patches, valid entries first (in offset-id order), -1 pads; ``ctx_offset [N, C]``: the bias-table
    column of each entry's offset (``own_offset`` on padding); ``num_bias``: the offset columns plus
    the text's (the last)."""

    ctx_index: torch.Tensor
    ctx_offset: torch.Tensor
    own_offset: int
    num_bias: int

    @property
    def num_patches(self) -> int:
        return self.ctx_index.shape[0]

    def batch(self, examples: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ctx_index, ctx_bias_id), both ``[examples * N, C]``: rows of ``examples`` canvases laid one
        after another, each reading blocks of its own canvas."""
        N = self.num_patches
        shift = torch.arange(examples).repeat_interleave(N).unsqueeze(1) * N
        index = self.ctx_index.repeat(examples, 1)
        return torch.where(index >= 0, index + shift, index).to(device), self.ctx_offset.repeat(examples, 1).to(device)


def raster_context(canvas: tuple[int, int, int], extents: tuple[int, int, int]) -> RasterContext:
    """The context table of a canvas ``(T, Hp, Wp)`` of patches made in raster order (frames, rows,
    columns): a patch reads every neighbour made before it within ``extents`` (frames back, rows and
    columns either way): with (0, 1, 1) its left, up-left, up and up-right neighbours. Offset ids
    ``((dt + e_t) * (2 e_h + 1) + dr + e_h) * (2 e_w + 1) + dc + e_w``.

    Torch only: kernels/ imports nothing of the project, so this writes out the model's table for
    its "down" order (``nuwa_ds.model.orders.context_table``; tests/test_kernels_patch_attention.py
    checks that the two agree) to give the benchmarks a real canvas's sparsity."""
    T, Hp, Wp = canvas
    e_t, e_h, e_w = extents
    t, r, c = (x.reshape(-1) for x in torch.meshgrid(torch.arange(T), torch.arange(Hp), torch.arange(Wp),
                                                      indexing="ij"))
    own = (t * Hp + r) * Wp + c

    def offset(dt, dr, dc):
        return ((dt + e_t) * (2 * e_h + 1) + dr + e_h) * (2 * e_w + 1) + dc + e_w

    keys, offsets = [], []
    for dt, dr, dc in itertools.product(range(-e_t, 1), range(-e_h, e_h + 1), range(-e_w, e_w + 1)):
        if (dt, dr, dc) != (0, 0, 0):
            kt, kr, kc = t + dt, r + dr, c + dc
            key = (kt * Hp + kr) * Wp + kc
            earlier = (kt >= 0) & (kr >= 0) & (kr < Hp) & (kc >= 0) & (kc < Wp) & (key < own)
            keys.append(torch.where(earlier, key, -1))
            offsets.append(offset(dt, dr, dc))
    num_bias, own_offset = (e_t + 1) * (2 * e_h + 1) * (2 * e_w + 1) + 1, offset(0, 0, 0)
    if not keys:
        empty = torch.empty(own.numel(), 0, dtype=torch.long)
        return RasterContext(empty, empty.clone(), own_offset, num_bias)
    index = torch.stack(keys, dim=1)
    valid = index >= 0
    perm = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid first, offset order kept
    C = int(valid.sum(1).max())
    index = index.gather(1, perm)[:, :C]
    ids = torch.tensor(offsets).expand_as(perm).gather(1, perm)[:, :C]
    return RasterContext(index.contiguous(), torch.where(index >= 0, ids, own_offset).contiguous(), own_offset,
                         num_bias)


def wall_ms(fn) -> float:
    """One call's wall-clock milliseconds: the default ``measure`` (in the interpreter, the
    interpreter's time, not a speed figure)."""
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def median_ms(fn, quick: bool = False) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events, L2 flushed between runs by do_bench)."""
    return float(triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100,
                                         return_mode="median"))


def graph_timed(fn, measure) -> float:
    """``measure`` of ``fn`` replayed from a CUDA graph: the GPU's time without the host's launch
    overhead (what generation, which captures its token step, pays)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return measure(graph.replay)
