"""``nuwa-ds bench decode``: the token step of the local decoder through the pool, by rows decoded
together (batch x wavefront width): ms per step, tokens/s, and at one row the ratio to the
weight-read roofline (parameter bytes per token over the copy bandwidth measured in the same run).
``--set batch_invariant=true``: each row count again with ``GenerationConfig(batch_invariant=True)``,
beside the default, with its cost (``x_default``: its step time over the default's, same run)."""

from __future__ import annotations

from nuwa_ds.bench.generate import build_model, copy_bandwidth, device_of, roofline_ms_per_token, timed_generation

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
    rows = []
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
    return {"rows": [{"suite": "decode", **r} for r in rows], "metrics": METRICS, "required": REQUIRED,
            "copy_bandwidth_tb_s": bandwidth / 1e12, "preset": opts.preset, "dtype": str(dtype)}
