"""``nuwa-ds bench decode``: the token step of the local decoder through the pool, by rows decoded
together (batch x wavefront width): ms per step, tokens/s, and at one row the ratio to the
weight-read roofline (parameter bytes per token over the copy bandwidth measured in the same run).
``--set batch_invariant=true``: each row count again with ``GenerationConfig(batch_invariant=True)``,
beside the default, with its cost (``x_default``: its step time over the default's, same run).
``--set profile=true`` (or a list of row counts, ``profile=[1,128]``): each row count's timed run again under the torch profiler, and per token step the
kernels launched, the time the device spent in them and the span from the first kernel's start to the
last one's end, with the kernels that take the most time (``profile`` in the report; on CPU the
top-level operators instead of kernels). The busy share (kernel time over the span) says how much of a
step is launch gaps, what fusing kernels can win; the kernel table says where the bytes go."""

from __future__ import annotations

from nuwa_ds.bench.generate import build_model, copy_bandwidth, device_of, roofline_ms_per_token, timed_generation

PROFILE_KERNELS = 25
"""Kernels (or CPU operators) listed per profiled row count, most device time first."""


def step_profile(run, steps: int, device) -> dict:
    """``run()`` under the torch profiler, summarised per token step (``steps`` of them in the run):
    kernel launches, the device's busy time in kernels, the span from the first kernel's start to the
    last one's end, and the kernels (by name) that take the most time. On CPU the top-level operators
    stand in for kernels. Kernels inside a replayed CUDA graph are recorded one by one (CUPTI)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        run()
    if cuda:
        events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        events = [e for e in prof.events() if e.device_type == DeviceType.CPU and e.cpu_parent is None
                  and e.name.startswith("aten::")]
    if not events:
        raise RuntimeError(f"the profiler recorded no {'kernels' if cuda else 'operators'}: nothing to report")
    start = min(e.time_range.start for e in events)
    end = max(e.time_range.end for e in events)
    busy = sum(e.time_range.elapsed_us() for e in events)
    by_name: dict = {}
    for e in events:
        count, total = by_name.get(e.name, (0, 0.0))
        by_name[e.name] = (count + 1, total + e.time_range.elapsed_us())
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:PROFILE_KERNELS]
    return {"unit": "kernels" if cuda else "cpu operators", "token_steps": steps,
            "launches_per_step": len(events) / steps, "busy_us_per_step": busy / steps,
            "span_us_per_step": (end - start) / steps, "busy_share": busy / max(end - start, 1e-9),
            "distinct": len(by_name),
            "top": [{"name": name[:120], "per_step": count / steps, "us_per_step": total / steps,
                     "us_each": total / count} for name, (count, total) in top]}

METRICS = ["ms_per_step", "tokens_per_s"]
REQUIRED = ["rows", "ms_per_step", "tokens_per_s"]


def run(opts) -> dict:
    device = device_of(opts)
    model, dtype = build_model(opts, device)
    P = model.config.patch_size
    bandwidth = copy_bandwidth(device)
    roof = roofline_ms_per_token(model, bandwidth)
    batches = opts.extra.get("rows", [1, 2] if opts.quick or device.type != "cuda" else [1, 8, 32, 128])
    shape = (1, P, 4 * P)  # 4 patches in a row: sequential steps of `batch` rows each
    profile = opts.extra.get("profile", False)
    if not (isinstance(profile, bool) or (isinstance(profile, list) and all(isinstance(r, int) for r in profile))):
        raise ValueError(f"profile must be true, false or a list of row counts, got {profile!r}")
    profiled = batches if profile is True else (profile or [])
    rows, profiles = [], []
    for batch in batches:
        default = None
        for invariant in (False, True) if opts.extra.get("batch_invariant") else (False,):
            # this row count's first use: compile, capture
            timed_generation(model, shape, "right", False, batch=batch, batch_invariant=invariant)
            result, seconds, _ = timed_generation(model, shape, "right", False, batch=batch, batch_invariant=invariant)
            steps = result.stats["steps"] * model.config.tokens_per_patch
            row = {"rows": batch, "ms_per_step": 1000 * seconds / steps, "tokens_per_s": result.tokens.numel() / seconds,
                   "batch_invariant": result.stats["batch_invariant"]}
            if batch == 1:
                row["roofline_ms"] = roof
                row["x_roofline"] = row["ms_per_step"] / roof
            if default is not None:
                row["x_default"] = row["ms_per_step"] / default
            default = row["ms_per_step"]
            rows.append(row)
            if batch in profiled:
                prof = {"rows": batch, "batch_invariant_asked": invariant, "batch_invariant": row["batch_invariant"],
                        **step_profile(lambda: timed_generation(model, shape, "right", False, batch=batch,
                                                                batch_invariant=invariant), steps, device)}
                profiles.append(prof)
                print(f"profile, {batch} rows{', invariant asked' if invariant else ''}: "
                      f"{prof['launches_per_step']:.0f} {prof['unit']} per token step, busy "
                      f"{prof['busy_us_per_step']:.0f} us of a {prof['span_us_per_step']:.0f} us span "
                      f"({100 * prof['busy_share']:.0f}%)")
    report = {"rows": [{"suite": "decode", **r} for r in rows], "metrics": METRICS, "required": REQUIRED,
              "copy_bandwidth_tb_s": bandwidth / 1e12, "preset": opts.preset, "dtype": str(dtype)}
    if profiles:
        report["profile"] = profiles
    return report
