"""``nuwa-ds bench generate``: whole-canvas generation through the rotating pool.

Rows (GPU defaults; ``--quick``/CPU use smaller canvases):
  * ``image``: a 1024 x 1024 image (64 x 64 tokens) at batch 1, sequential and wavefront: ms per token
    beside the weight-read roofline (bytes of parameters read per token over the copy bandwidth
    measured in the same run).
  * ``compare``: one canvas (8 x 24 patches, order ``right``) both ways: wall time ratio, and whether
    the canvases are identical (exactly so in fp32; bf16 GPU kernels are not batch-invariant).
  * ``paper_canvas``: the NUWA-Infinity paper's 38912 x 2048 painting (8 x 152 patches, 311,296 tokens),
    order ``right``, wavefront: wall time and peak memory.

``--set batch_invariant=true``: the ``compare`` pair again with ``GenerationConfig(batch_invariant=True)``
(case ``compare_invariant``, in the same run: its cost is ``x_default``, the ratio of its wall time to the
default pair's, and ``identical_canvas`` must hold there in bf16 too).

Weights are random (timing does not depend on them); ``--set canvas=WxH`` etc. override the sizes.
"""

from __future__ import annotations

import time

import torch

from nuwa_ds import NuwaConfig, NuwaInfinity
from nuwa_ds.model.generation import GenerationConfig, run_generation

METRICS = ["ms_per_token", "roofline_ms_per_token", "seconds", "peak_mem_gib"]
REQUIRED = ["case", "tokens", "seconds", "ms_per_token"]


def device_of(opts) -> torch.device:
    return torch.device(opts.device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes read + written per second by a device-to-device copy (the memory ceiling of this run)."""
    if device.type != "cuda":
        nbytes, repeats = 64 << 20, 3
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(times)[len(times) // 2]


def build_model(opts, device):
    overrides = {k[len("model."):]: v for k, v in opts.extra.items() if k.startswith("model.")}
    cfg = NuwaConfig.preset(opts.preset, **overrides)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = NuwaInfinity(cfg)
    return model.to(dtype).eval(), dtype


def roofline_ms_per_token(model, bandwidth: float) -> float:
    """Parameter bytes a token must read at batch 1 over the copy bandwidth: the local blocks and the
    head every token; the global stack and the local context projections once per patch (n tokens)."""
    elt = next(model.parameters()).element_size()
    blocks = model.local_model.blocks
    context = sum(b.context.weight.numel() for b in blocks)
    per_token = sum(p.numel() for p in blocks.parameters()) - context + model.head.weight.numel()
    per_patch = sum(p.numel() for p in model.global_model.blocks.parameters()) + context
    return 1000 * elt * (per_token + per_patch / model.config.tokens_per_patch) / bandwidth


def timed_generation(model, shape, order, wavefront, batch=1, seed=0, batch_invariant=False):
    device = next(model.parameters()).device
    config = GenerationConfig(temperature=1.0, top_k=100, seed=seed, wavefront=wavefront,
                              batch_invariant=batch_invariant)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    result = run_generation(model, shape, order, batch, config=config)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return result, seconds, peak


def _row(case, shape, order, wavefront, result, seconds, peak, roofline=None) -> dict:
    tokens = result.tokens.numel()
    row = {"case": case, "canvas_tokens": "x".join(map(str, shape)), "order": order,
           "mode": "wavefront" if wavefront else "sequential", "tokens": tokens, "steps": result.stats["steps"],
           "slots": result.stats["slots_per_canvas"], "seconds": seconds, "ms_per_token": 1000 * seconds / tokens,
           "peak_mem_gib": peak}
    if roofline is not None:
        row["roofline_ms_per_token"] = roofline
        row["x_roofline"] = row["ms_per_token"] / roofline
    return row


def sizes(opts, P: int) -> dict:
    cuda = opts.device == "cuda" and not opts.quick
    image = (1, 64, 64) if cuda else (1, 2 * P, 2 * P)
    paper = (1, 8 * P, 152 * P) if cuda else (1, 2 * P, 8 * P)
    compare = tuple(opts.extra.get("compare_canvas", (1, 8 * P, 24 * P) if cuda else (1, 2 * P, 4 * P)))
    return {"image": image, "paper": paper, "compare": compare}


def run(opts) -> dict:
    device = device_of(opts)
    model, dtype = build_model(opts, device)
    P = model.config.patch_size
    canv = sizes(opts, P)
    bandwidth = copy_bandwidth(device)
    roof = roofline_ms_per_token(model, bandwidth)
    timed_generation(model, (1, P, 2 * P), "down", True)  # warm-up: kernels compile, graphs capture
    rows = []
    for wavefront in (False, True):
        result, seconds, peak = timed_generation(model, canv["image"], "down", wavefront)
        rows.append(_row("image", canv["image"], "down", wavefront, result, seconds, peak, roof))
    same, default_seconds = {}, {}
    for invariant in (False, True) if opts.extra.get("batch_invariant") else (False,):
        case = "compare_invariant" if invariant else "compare"
        if invariant:  # its kernels compile and its graphs capture outside the timing: both schedules, two
            # patch rows (triton compiles 1 row, rows divisible by 16 and other counts as separate kernels)
            for wavefront in (False, True):
                timed_generation(model, (1, 2 * P, 2 * P), "right", wavefront, batch_invariant=True)
        seq, t_seq, p_seq = timed_generation(model, canv["compare"], "right", False, batch_invariant=invariant)
        wav, t_wav, p_wav = timed_generation(model, canv["compare"], "right", True, batch_invariant=invariant)
        identical = bool(torch.equal(seq.tokens, wav.tokens))
        agree = float((seq.tokens == wav.tokens).float().mean())  # < 1 where the kernels are not batch-invariant
        same[case] = identical
        for wavefront, result, seconds, peak in ((False, seq, t_seq, p_seq), (True, wav, t_wav, p_wav)):
            row = {**_row(case, canv["compare"], "right", wavefront, result, seconds, peak),
                   "batch_invariant": bool(result.stats["batch_invariant"])}
            if invariant:
                row["x_default"] = seconds / default_seconds[wavefront]
            else:
                default_seconds[wavefront] = seconds
            if wavefront:
                row.update(speedup_vs_sequential=t_seq / t_wav, identical_canvas=identical, tokens_equal=agree)
            rows.append(row)
    if opts.extra.get("paper_canvas", True):  # --set paper_canvas=false: without it (72 s on an H200)
        big, t_big, p_big = timed_generation(model, canv["paper"], "right", True)
        rows.append(_row("paper_canvas", canv["paper"], "right", True, big, t_big, p_big))
    return {"rows": rows, "metrics": METRICS, "required": REQUIRED, "copy_bandwidth_tb_s": bandwidth / 1e12,
            "preset": opts.preset, "dtype": str(dtype), "params": model.num_parameters(),
            "wavefront_identical": same["compare"], **(
                {"wavefront_identical_invariant": same["compare_invariant"]} if "compare_invariant" in same else {})}
