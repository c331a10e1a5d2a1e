"""Compile every kernel launch for a GPU target on a machine without one, and report its resources.

    python -m kernels.compile_check [--arch 90] [--dtype bf16] [--head-dim 64]

Runs the real launchers on small CPU tensors with each kernel replaced by a recorder, then
compiles each recorded launch with triton's bundled compiler and ptxas for ``sm_<arch>``: a compile
error, register spills or a shared-memory overflow shows here, before any GPU time is spent.
Must run without ``TRITON_INTERPRET`` (the interpreter has no compiler). The GPU machine's triton
may be older than the local one; this catches most, not all, version differences.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kernels._reference import TextContext


class _Recorder:
    """Stands in for ``kernel[grid]``: records the call instead of launching."""

    def __init__(self, kernel, log: list):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.kernel, args, kwargs))

        return launch


def _compile(kernel, args, kwargs, arch: int):
    """Compile one recorded launch the way ``JITFunction.run`` would on the GPU: the same binder
    specialises integer arguments (== 1, multiples of 16) and pointer alignment, which decides
    whether loads are vectorised."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__), constexprs, options


def _resources(cubin: bytes) -> str:
    """Registers, stack and local memory (spills) from cuobjdump, plus the SASS instruction mix that
    tells whether the tensor cores and wide loads are used."""
    import collections

    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(path)],
                               capture_output=True, text=True).stdout
        sass = subprocess.run([str(tools / "cuobjdump"), "--dump-sass", str(path)], capture_output=True,
                              text=True).stdout
    res = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass, re.M))
    mix = {}
    for op, count in ops.items():
        for family in ("HGMMA", "HMMA", "LDG", "LDGSTS", "UTMALDG", "LDL", "STL", "MUFU.EX2"):
            if op.startswith(family):
                mix[op] = count
    regs = f"regs={res.group(1)} stack={res.group(2)} local={res.group(3)}" if res else "regs=?"
    return regs + " " + " ".join(f"{k}:{v}" for k, v in sorted(mix.items()))


def compile_launches(log: list, arch: int) -> list[str]:
    lines, seen = [], set()
    for kernel, args, kwargs in log:
        compiled, constexprs, options = _compile(kernel, args, dict(kwargs), arch)
        if compiled.hash in seen:
            continue
        seen.add(compiled.hash)
        names = {(p.num,): p.name for p in kernel.params if p.is_constexpr}
        flags = ",".join(f"{names[k]}={v}" for k, v in constexprs.items() if k in names)
        lines.append(f"{kernel.fn.__name__} [{flags}] warps={options.num_warps} stages={options.num_stages} "
                     f"smem={compiled.metadata.shared}B {_resources(compiled.asm['cubin'])}")
    return lines


# A 2 x 2 patch canvas in raster order with extents (0, 1, 1): the context table of
# ``nuwa_ds.model.orders.context_table((1, 2, 2), "down", (0, 1, 1))``, written out because kernels/
# imports nothing of nuwa_ds (tests/test_layering.py checks the two agree). Valid entries first, -1 pads;
# offset ids ((dr + 1) * 3 + dc + 1), the own block's 4 on padding; 10 bias columns with the text's.
EXAMPLE_CTX_INDEX = ((-1, -1, -1), (0, -1, -1), (0, 1, -1), (0, 1, 2))
EXAMPLE_CTX_OFFSET = ((4, 4, 4), (3, 4, 4), (1, 2, 4), (0, 1, 3))
EXAMPLE_OWN_OFFSET, EXAMPLE_BIAS_COLUMNS = 4, 10


def record_model_launches(dtype: torch.dtype, head_dim: int, n: int = 256) -> list:
    """Launches of a training step (global + local stack, with text; with and without the aligned-token
    bias), a decode step (split counts and a fixed split size) and the batch-invariant matmul and norm."""
    # the kernels are defined when imported: here, after main() refused TRITON_INTERPRET
    import kernels.batch_invariant as BI
    import kernels.patch_attention as PA
    import kernels.pool_decode as PD

    log: list = []
    originals = {}
    for module, names in ((PA, ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkv_kernel")),
                          (PD, ("_split_kernel", "_combine_kernel")), (BI, ("_linear_kernel", "_rms_norm_kernel"))):
        for name in names:
            originals[(module, name)] = getattr(module, name)
            setattr(module, name, _Recorder(getattr(module, name), log))
    try:
        H, D = 2, head_dim
        ctx_index, ctx_offset = torch.tensor(EXAMPLE_CTX_INDEX), torch.tensor(EXAMPLE_CTX_OFFSET)
        R, I, own = len(EXAMPLE_CTX_INDEX), EXAMPLE_BIAS_COLUMNS, EXAMPLE_OWN_OFFSET
        qkv = torch.randn(R, n, 3, H, D, dtype=dtype)
        q, k, v = qkv.unbind(2)
        ctx = torch.randn(R, n, 2, H, D, dtype=dtype).unbind(2)
        bias = torch.zeros(H, I)
        text = TextContext(torch.randn(1, 77, H, D, dtype=dtype), torch.randn(1, 77, H, D, dtype=dtype),
                     torch.tensor([7]), torch.zeros(R, dtype=torch.long))
        for causal, shared, with_text, aligned in ((False, True, True, None), (True, False, True, None),
                                                   (True, False, False, None), (False, True, True, bias),
                                                   (True, False, True, bias)):
            ck, cv = (k, v) if shared else ctx
            p = PA._check(q, k, v, ck, cv, ctx_index, ctx_offset, own, bias, causal,
                          text if with_text else None, None, aligned)
            tk, tv = (text.k, text.v) if with_text else (None, None)
            out, lse = PA._forward(p, q, k, v, ck, cv, tk, tv, bias, aligned, store_lse=True)
            PA._backward(p, out, q, k, v, ck, cv, tk, tv, bias, aligned, out, lse, needs=dict(ctx=True, text=True))
        pool = torch.randn(8, 1, 2, H, n, D, dtype=dtype)
        pk, pv = pool[:, 0, 0].transpose(1, 2), pool[:, 0, 1].transpose(1, 2)
        for splits, aligned in ((1, None), (4, None), (1, bias), (4, bias)):
            PD.pool_decode_attention(q[:, 0], pk, pv, ctx_index, ctx_offset, pk, pv, torch.arange(R),
                                     torch.full((R,), n), own, bias, text, num_splits=splits, aligned_bias=aligned)
        PD.pool_decode_attention(q[:, 0], pk, pv, ctx_index, ctx_offset, pk, pv, torch.arange(R),
                                 torch.full((R,), n), own, bias, text, split_units=2, aligned_bias=bias)
        width = H * D * 8
        BI.batch_invariant_linear(torch.randn(3, width, dtype=dtype), torch.randn(3 * width, width, dtype=dtype))
        # the token step's fusions: norm + matmul + GELU, and matmul + residual
        BI.batch_invariant_linear(torch.randn(3, width, dtype=dtype), torch.randn(4 * width, width, dtype=dtype),
                                  norm_weight=torch.ones(width, dtype=dtype), gelu=True)
        BI.batch_invariant_linear(torch.randn(3, 4 * width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype),
                                  residual=torch.randn(3, width, dtype=dtype))
        BI.batch_invariant_rms_norm(torch.randn(3, width, dtype=dtype), torch.ones(width, dtype=dtype), 1e-5)
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    return log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter cannot compile", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    for line in compile_launches(record_model_launches(dtype, args.head_dim), args.arch):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
