"""``nuwa-ds bench kernels``: the Triton kernels beside their peers, after a correctness gate.

In the Triton tutorials' manner every kernel file holds its kernel, launcher, torch reference and a
``benchmark(device, measure)`` entry; this module is the runner: it finds the entries
(``kernel_benchmarks``) and, on a GPU, adds what is not one kernel's own business: the peers, tile and
decode sweeps, the copy bandwidth, the settings and the report. What each attention kernel file owns
and this runner calls (so nothing is written or run twice): the problem builders (``bench_inputs``;
raster-order context tables from ``kernels._common.raster_context``, no ``nuwa_ds.model.orders``),
the correctness gates (``check_case``) and the kernel's own timing (``time_case``).

GPU (one process, side by side):
  * checks   bf16, D = 64 and 128: forward and every gradient of ``patch_attention`` (both
             stacks, with text) and ``pool_decode_attention`` against the float64 reference
             (the kernel files' ``check_case``);
  * patch    fwd and fwd+bwd TFLOP/s counting only attended (query, key) pairs, 16x16-token
             patches, canvases 4x4, 8x8 and 3 frames of 4x4, extents (0,1,1) and (1,1,1); beside
             FlexAttention with the same block mask and bias (compiled) and dense cuDNN SDPA causal
             over the whole sequence (what one runs without the NCP);
  * decode   TB/s of K/V read from pool slots, beside cuDNN SDPA decode on the same K/V laid out
             contiguously and the GPU's copy bandwidth measured in the same run;
  * entries  the ``benchmark`` function of every other kernels/ module that has one (so far
             ``cross_entropy``: GB/s beside its torch reference, after a correctness gate). The two
             attention files' entries (``SUITE_OWN``) are not called here: the rows above are theirs,
             over the settings' cases and with the peers in the same row.
CPU (``--device cpu``): every kernel file's entry under the Triton interpreter on tiny shapes (for the
attention kernels their gate alone); correctness only, its times say nothing about a GPU.

Settings (``--set key=value``): head_dims=[64,128], stacks=["local"], peers=true (or a list of case
names that get peers), checks=true, decode_versions=false (time decode v1/v2 beside v3),
decode_splits=[] (split counts to time for 64 decode rows), entries=true (the kernel files' own entries),
decode=true, sweep=[] (head dims whose tile alternatives to time), decode_sweep=false, cases="all" or a
list of case names. Decode times are CUDA-graph replays (the GPU's time; ``eager_ms`` adds the host's).
FLOP convention: fwd = 4 D H x attended pairs (a causal own block counts n(n+1)/2 pairs), fwd+bwd =
3.5 x fwd; dense causal SDPA counts S^2/2 pairs per sequence.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kernels.patch_attention import PatchCase

# The kernels (kernels.*, and triton) are imported inside the functions that run them: TRITON_INTERPRET is
# read when they are defined, and on a CPU ``run`` may still have to start an interpreter process first.

# tile alternatives (block_m, block_n, warps, stages) timed by ``--set sweep=[64,128]``
SWEEP = {
    "fwd": ((64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3), (64, 64, 8, 3), (64, 32, 4, 3)),
    "dq": ((64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 4, 3), (64, 64, 8, 2), (32, 64, 4, 3)),
    "dkv": ((64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3)),
}
FLEX_OPTIONS = ({}, {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2, "BLOCK_M1": 32, "BLOCK_N1": 64,
                     "BLOCK_M2": 64, "BLOCK_N2": 32})
SUITE_OWN = ("patch_attention", "pool_decode")
"""Kernel files whose ``benchmark`` entry the GPU suite does not call: it runs the same pieces of those
files itself (gates, timings) over its settings' cases, with the peers in the same rows."""


def _timer(quick: bool):
    from kernels._common import median_ms

    return lambda fn: median_ms(fn, quick)


# ----------------------------------------------------------------------------------------------
# Peers


def _flex_setup(case: PatchCase, inputs):
    """FlexAttention over the batch's token sequence with the same block mask and per-head bias.
    The local stack reads two key sets: they are given to flex pre-concatenated (copy not timed)."""
    from torch.nn.attention.flex_attention import create_block_mask

    table, B, H, D, n = inputs["table"], case.batch, case.heads, case.head_dim, case.patch ** 2
    N = table.num_patches
    S = N * n
    allowed = torch.zeros(N, N, dtype=torch.bool)
    bias_id = torch.full((N, N), inputs["own_bias_id"], dtype=torch.long)
    rows = torch.arange(N).unsqueeze(1).expand_as(table.ctx_index)
    valid = table.ctx_index >= 0
    allowed[rows[valid], table.ctx_index[valid]] = True
    bias_id[rows[valid], table.ctx_index[valid]] = table.ctx_offset[valid]
    device = inputs["q"].device
    allowed, bias_id = allowed.to(device), bias_id.to(device)
    bias = inputs["bias"].detach()  # flex gets no bias gradient (favours flex slightly)

    def seq(t):  # [R, n, H, D] -> [B, H, S, D] contiguous leaf
        return t.detach().reshape(B, S, H, D).transpose(1, 2).contiguous().requires_grad_()

    q = seq(inputs["q"])
    if case.stack == "local":
        k = torch.cat([seq(inputs["ctx_k"]), seq(inputs["k"])], dim=2).detach().requires_grad_()
        v = torch.cat([seq(inputs["ctx_v"]), seq(inputs["v"])], dim=2).detach().requires_grad_()

        def mask_mod(b, h, q_idx, kv_idx):
            qp, in_ctx = q_idx // n, kv_idx < S
            kp = torch.where(in_ctx, kv_idx // n, (kv_idx - S) // n)
            own = (kp == qp) & (kv_idx - S <= q_idx)
            return torch.where(in_ctx, allowed[qp, kp], own)

        def score_mod(score, b, h, q_idx, kv_idx):
            qp = q_idx // n
            kp = torch.where(kv_idx < S, kv_idx // n, qp)
            return score + bias[h, bias_id[qp, kp]]

        kv_len = 2 * S
    else:
        k, v = seq(inputs["k"]), seq(inputs["v"])

        def mask_mod(b, h, q_idx, kv_idx):
            qp, kp = q_idx // n, kv_idx // n
            return allowed[qp, kp] | (kp == qp)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, bias_id[q_idx // n, kv_idx // n]]

        kv_len = S
    block_mask = create_block_mask(mask_mod, None, None, S, kv_len, device=device, BLOCK_SIZE=128)
    return q, k, v, score_mod, block_mask


def bench_flex(case, inputs, measure, out_grad) -> dict:
    from torch.nn.attention.flex_attention import flex_attention

    from kernels.patch_attention import fwd_bwd

    torch._dynamo.reset()
    q, k, v, score_mod, block_mask = _flex_setup(case, inputs)
    flex = torch.compile(flex_attention, dynamic=False)
    grad = out_grad.detach().reshape(case.batch, -1, case.heads, case.head_dim).transpose(1, 2).contiguous()
    errors = []
    for options in FLEX_OPTIONS:
        try:
            fn = lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask,  # noqa: E731
                              kernel_options=options or None)
            fwd = measure(fn)
            fwdbwd = measure(fwd_bwd(fn, [q, k, v], grad))
            result = dict(flex_fwd_ms=fwd, flex_fwdbwd_ms=fwdbwd, flex_options=str(options or "default"))
            if errors:
                result["flex_fallback_reason"] = " | ".join(errors)
            return result
        except Exception as exc:  # noqa: BLE001 - e.g. the default tiles overflow shared memory: try the next
            errors.append(f"{options or 'default'}: {type(exc).__name__}: {str(exc)[:200]}")
            torch._dynamo.reset()
    return dict(flex_error=" | ".join(errors))


def bench_dense_cudnn(case, inputs, measure) -> dict:
    """Causal SDPA (cuDNN backend) over each example's whole token sequence."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.patch_attention import fwd_bwd

    B, H, D = case.batch, case.heads, case.head_dim
    S = inputs["table"].num_patches * case.patch ** 2
    q, k, v = (torch.randn(B, H, S, D, dtype=inputs["q"].dtype, device=inputs["q"].device, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)

    def fn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    try:
        fwd, fwdbwd = measure(fn), measure(fwd_bwd(fn, [q, k, v], grad))
    except Exception as exc:  # noqa: BLE001 - no cuDNN attention on this GPU / build: say so in the row
        return dict(cudnn_error=f"{type(exc).__name__}: {str(exc)[:200]}")
    flops = 4 * D * H * B * S * S / 2
    return dict(cudnn_fwd_ms=fwd, cudnn_fwdbwd_ms=fwdbwd, cudnn_fwdbwd_tflops=3.5 * flops / fwdbwd / 1e9)


# ----------------------------------------------------------------------------------------------
# Our kernels


def bench_patch_case(case: PatchCase, measure, peers: bool, configs=None) -> dict:
    """The kernel file's row (``time_case``), and with ``peers`` dense cuDNN and FlexAttention beside it."""
    from kernels.patch_attention import bench_inputs, forward_flops, time_case

    inputs = bench_inputs(case, "cuda", torch.bfloat16)
    row = time_case(case, inputs, measure, configs)
    if peers:
        flops, fwdbwd = forward_flops(inputs), row["fwdbwd_ms"]
        row.update(bench_dense_cudnn(case, inputs, measure))
        row.update(bench_flex(case, inputs, measure, torch.randn_like(inputs["q"])))
        if "flex_fwdbwd_ms" in row:
            row["flex_fwdbwd_tflops"] = 3.5 * flops / row["flex_fwdbwd_ms"] / 1e9
            row["x_flex"] = row["flex_fwdbwd_ms"] / fwdbwd
        if "cudnn_fwdbwd_ms" in row:
            row["x_cudnn"] = row["cudnn_fwdbwd_ms"] / fwdbwd
    return row


def sweep_tiles(case: PatchCase, measure) -> list[dict]:
    """Time the fwd / dq / dkv kernels alone under alternative tiles (the rest at defaults)."""
    from kernels.patch_attention import (TileConfig, _backward, _check, _forward, bench_inputs, call_args,
                                         default_configs)

    inputs = bench_inputs(case, "cuda", torch.bfloat16)
    args = call_args(inputs)
    n = case.patch ** 2
    base = default_configs(n, n, case.head_dim)
    candidates = {kernel: [TileConfig(*c) for c in configs] for kernel, configs in SWEEP.items()}
    grad = torch.randn_like(inputs["q"])
    rows = []
    for kernel in ("fwd", "dq", "dkv"):
        for cfg in candidates[kernel]:
            configs = dict(base, **{kernel: cfg})
            try:
                p = _check(**{k: args[k] for k in ("q", "k", "v", "ctx_k", "ctx_v", "ctx_index", "ctx_bias_id",
                                                   "own_bias_id", "bias", "causal", "text")}, configs=configs)
                ck, cv = (args["k"], args["v"]) if p.shared_kv else (args["ctx_k"], args["ctx_v"])
                out, lse = _forward(p, args["q"], args["k"], args["v"], ck, cv, None, None, args["bias"], None, True)
                if kernel == "fwd":
                    ms = measure(lambda: _forward(p, args["q"], args["k"], args["v"], ck, cv, None, None, args["bias"],
                                                  None, True))
                else:
                    ms = measure(lambda: _backward(p, grad, args["q"], args["k"], args["v"], ck, cv, None, None,
                                                   args["bias"], None, out, lse, needs=dict(ctx=True, text=False)))
                rows.append(dict(case=case.name, kernel=kernel, block_m=cfg.block_m, block_n=cfg.block_n,
                                 warps=cfg.num_warps, stages=cfg.num_stages, ms=ms,
                                 default=cfg == base[kernel]))
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: recorded, the sweep goes on
                rows.append(dict(case=case.name, kernel=kernel, config=str(cfg), error=f"{type(exc).__name__}: "
                                 f"{str(exc)[:120]}"))
    return rows


def bench_decode(rows, head_dim, measure, ctx=4, splits=None, block_n=None, num_warps=4, lanes=True, prefetch=True,
                 peers=True) -> dict:
    """The kernel file's row (``time_case``: CUDA-graph replays), and with ``peers`` its eager time and
    cuDNN decode on the same K/V laid out contiguously."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels._common import graph_timed
    from kernels.pool_decode import PATCH_KEYS, WIDTH, bench_inputs, kv_bytes_read, time_case

    heads, n = WIDTH // head_dim, PATCH_KEYS
    args = bench_inputs(rows, heads, head_dim, ctx, n, "cuda", torch.bfloat16)
    row, fn = time_case(args, measure, splits=splits, block_n=block_n, num_warps=num_warps, lanes=lanes,
                        prefetch=prefetch)
    if not peers:
        return row
    row["eager_ms"] = measure(fn)  # with the host's checks and launch (ungraphed callers pay this)
    # cuDNN decode on the same K/V, contiguous [R, H, L, D]
    L = (ctx + 1) * n
    q = args["q"].unsqueeze(2)
    k = torch.randn(rows, heads, L, head_dim, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)

    def sdpa():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    try:
        cudnn = graph_timed(sdpa, measure)
        nbytes = kv_bytes_read(args["ctx_slots"], args["own_len"], n, heads, head_dim, 2)
        row.update(cudnn_ms=cudnn, cudnn_tbps=nbytes / cudnn / 1e9)
    except Exception as exc:  # noqa: BLE001
        row["cudnn_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return row


def sweep_decode(head_dim, measure) -> list[dict]:
    """64 rows: tile width, warps and v1/v2 statistics; 4 rows: how many splits."""
    rows = []
    for lanes in (True, False):
        for block_n in (32, 64, 128):
            for warps in (4, 8):
                try:
                    rows.append(bench_decode(64, head_dim, measure, block_n=block_n, num_warps=warps, lanes=lanes,
                                             peers=False))
                except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                    rows.append(dict(case=f"R64-D{head_dim}", block_n=block_n, warps=warps, lanes=lanes,
                                     error=f"{type(exc).__name__}: {str(exc)[:120]}"))
    for splits in (1, 2, 4, 8, 16):
        rows.append(bench_decode(4, head_dim, measure, splits=splits, peers=False))
    return rows


def copy_bandwidth(measure) -> float:
    """Device-to-device copy of 2 GiB, bytes read + written: the memory ceiling of this run (TB/s)."""
    x = torch.empty(2 ** 30, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = measure(lambda: y.copy_(x))
    del x, y
    return 2 * 2 ** 31 / ms / 1e9


# ----------------------------------------------------------------------------------------------
# Suites


def _settings(opts) -> dict:
    s = dict(head_dims=[64, 128], stacks=["local"], peers=True, checks=True, decode=True, sweep=[], decode_sweep=False,
             decode_versions=False, decode_splits=[], cases="all", entries=True)
    s.update(opts.extra)
    return s


def _cases(settings) -> list[PatchCase]:
    from kernels.patch_attention import CANVASES, EXTENTS, PatchCase

    cases = [PatchCase(name, canvas, batch, ext, d, stack)
             for stack in settings["stacks"] for d in settings["head_dims"]
             for name, canvas, batch in CANVASES for ext in EXTENTS]
    if settings["cases"] != "all":
        cases = [c for c in cases if c.name in settings["cases"]]
    return cases


def kernel_benchmarks() -> dict:
    """``{module name: benchmark}`` for every kernels/ module with a ``benchmark(device, measure)`` entry
    (rows with ``kernel``, ``case`` and ``ok``)."""
    import importlib
    import pkgutil

    import kernels

    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.name.startswith("_"):
            entry = getattr(importlib.import_module(f"kernels.{info.name}"), "benchmark", None)
            if callable(entry):
                found[info.name] = entry
    return found


def _run_entries(result: dict, device: str, measure=None, skip=()):
    """Each kernel file's own benchmark (but those in ``skip``): its rows, and its correctness as a check
    (with the per-output errors where the row has them)."""
    for name, entry in kernel_benchmarks().items():
        if name in skip:
            continue
        for row in entry(device=device, measure=measure):
            check = {k: row[k] for k in ("kernel", "case", "dtype", "ok", "worst_rel_error") if k in row}
            if "errors" in row:
                check["errors"] = row.pop("errors")
            result["rows"].append(row)
            result["checks"].append(check)
            _progress(name, row)


def _progress(kind: str, row: dict):
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items() if k != "errors"}
    print(f"[kernels] {kind}: {shown}", flush=True)


def _run_cuda(opts) -> dict:
    from kernels import patch_attention as PA, pool_decode as PD

    settings = _settings(opts)
    measure = _timer(opts.quick)
    result = {"checks": [], "rows": [], "sweep": [], "settings": settings}
    if settings["checks"]:
        for d in settings["head_dims"]:
            for stack in ("local", "global"):
                check = PA.check_case(PA.gate_case(d, stack), "cuda", torch.bfloat16)
                result["checks"].append(check)
                _progress("check", check)
            for splits in (None, 3):
                check = PD.check_case("cuda", torch.bfloat16, d, splits)
                result["checks"].append(check)
                _progress("check", check)
    if settings["decode"]:
        bandwidth = copy_bandwidth(measure)
        for d in settings["head_dims"]:
            for rows in (4, 64):
                row = bench_decode(rows, d, measure)
                row["copy_tbps"] = bandwidth
                result["rows"].append(row)
                _progress("decode", row)
    peers = settings["peers"]
    for case in _cases(settings):
        row = bench_patch_case(case, measure, peers=peers is True or (isinstance(peers, list) and case.name in peers))
        result["rows"].append(row)
        _progress("patch", row)
    for d in settings["head_dims"]:
        for splits in settings["decode_splits"]:
            row = bench_decode(64, d, measure, splits=splits, peers=False)
            result["sweep"].append(row)
            _progress("decode-splits", row)
    for d in settings["head_dims"] if settings["decode_versions"] else []:
        for lanes, prefetch, name in ((False, False, "v1"), (True, False, "v2"), (False, True, "v1+prefetch")):
            row = bench_decode(64, d, measure, lanes=lanes, prefetch=prefetch, peers=False)
            row["version"] = name
            result["sweep"].append(row)
            _progress("decode-version", row)
    for d in settings["head_dims"] if settings["decode_sweep"] else []:
        for row in sweep_decode(d, measure):
            result["sweep"].append(row)
            _progress("decode-sweep", row)
    for d in settings["sweep"] or []:
        for row in sweep_tiles(PA.PatchCase("4x4", (1, 4, 4), 8, (0, 1, 1), d, "local"), measure):
            result["sweep"].append(row)
            _progress("sweep", row)
    if settings["entries"]:
        _run_entries(result, "cuda", measure, skip=SUITE_OWN)
    result["ok"] = all(c["ok"] for c in result["checks"])
    result["metrics"] = ["fwd_ms", "fwd_tflops", "fwdbwd_ms", "fwdbwd_tflops", "flex_fwd_ms", "flex_fwdbwd_ms",
                         "flex_fwdbwd_tflops", "cudnn_fwd_ms", "cudnn_fwdbwd_ms", "cudnn_fwdbwd_tflops", "x_flex",
                         "x_cudnn", "ms", "tbps", "eager_ms", "cudnn_ms", "cudnn_tbps", "copy_tbps", "gbps", "ref_ms",
                         "x_ref"]
    result["required"] = ["kernel", "case"]
    if not result["ok"]:
        print("[kernels] CORRECTNESS CHECKS FAILED: timings of wrong kernels are not results", flush=True)
    return result


def _run_cpu(opts) -> dict:
    """Interpreter smoke run: every kernel file's ``benchmark`` entry, each on tiny or odd shapes,
    correctness against its reference; times are the interpreter's (not a speed figure)."""
    result = {"checks": [], "rows": [], "note": "Triton interpreter on CPU: correctness only; times are not speed"}
    _run_entries(result, "cpu")
    result["ok"] = all(c["ok"] for c in result["checks"])
    result["metrics"] = ["interpreter_s"]
    result["required"] = ["kernel", "case", "ok"]
    return result


def _interpreter_ready() -> bool:
    """True when every @triton.jit function so far was made for the interpreter (the flag is read
    when a function is decorated: triton's own library is decorated at ``import triton``)."""
    import sys

    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET") == "1"
    import triton

    return bool(triton.knobs.runtime.interpret) and not isinstance(
        triton.language.standard.sum, triton.runtime.jit.JITFunction)


def run(opts) -> dict:
    if opts.device != "cpu":
        return _run_cuda(opts)
    if os.environ.get("TRITON_INTERPRET", "1") != "1":
        raise ValueError("the kernels suite on CPU runs the Triton interpreter: unset TRITON_INTERPRET or set it to 1")
    if _interpreter_ready():
        return _run_cpu(opts)
    # triton was imported without the interpreter flag (the report reads its version first): run the
    # suite in a fresh interpreter process and take its result
    import json
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "nuwa_ds.bench.kernels"], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"kernels suite (interpreter process) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # the CPU suite in a process that set TRITON_INTERPRET=1 before importing triton
    import json

    from nuwa_ds.bench import BenchOptions

    print(json.dumps(_run_cpu(BenchOptions(device="cpu", quick=True))))
