"""``nuwa-ds bench train``: training throughput of the real training step under DeepSpeed.

For each ZeRO stage: the preset model trains a few steps through exactly what ``nuwa-ds train`` runs
(``Trainer.train_step``: loader, forward, backward, optimizer, the per-step all-reduce), and reports
tokens/s, MFU (docs/design.md, "8. Training system"; ``nuwa_ds.model.flops``), peak memory and a step-time breakdown
(data wait / forward / backward / optimizer, from extra steps with a device sync at each boundary,
so the throughput steps are not slowed by them). With ``--compare-baseline`` the off-the-shelf
reference runs in the same process under the same ZeRO config: HF GPT-2 24 x 1024 with a 16384
vocabulary (321M parameters, the size of ENVIRONMENT.md's figures), sequence 2048, micro-batch 8.

    nuwa-ds bench train --compare-baseline --out bench.json           # GPU: nuwa-350m, ZeRO-2 and 3, bf16
    nuwa-ds bench train --device cpu --preset tiny --quick            # CPU smoke run (seconds)
    nuwa-ds bench train --set model.attn_backend=reference            # any model./data./train. override
"""

from __future__ import annotations

import gc
import os
import resource
import tempfile
import time
from dataclasses import dataclass

import torch

from nuwa_ds.config import RunConfig, TrainConfig
from nuwa_ds.model.flops import peak_flops
from nuwa_ds.train import PhaseTimer, Trainer, _quiet_libraries, preflight
from nuwa_ds.training import distributed as D
from nuwa_ds.training import ds_config as DSC
from nuwa_ds.training import optim

METRICS = ["tokens_per_s", "mfu", "peak_mem_gib", "step_s", "data_ms", "forward_ms", "backward_ms", "optimizer_ms"]
REQUIRED = ["model", "zero_stage", "tokens_per_s", "peak_mem_gib", "step_s"]


@dataclass
class Workload:
    warmup: int
    timed: int
    breakdown: int


def workload(opts) -> Workload:
    if opts.quick:
        return Workload(warmup=1, timed=opts.steps or 2, breakdown=1)
    return Workload(warmup=3, timed=opts.steps or 10, breakdown=3)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def _reset_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _release(engine):
    destroy = getattr(engine, "destroy", None)
    if destroy is not None:
        destroy()


def _breakdown_row(totals: dict, steps: int) -> dict:
    return {f"{phase}_ms": 1e3 * totals.get(phase, 0.0) / steps for phase in ("data", "forward", "backward",
                                                                                 "optimizer")}


def _time_steps(step_fn, work: Workload, device: torch.device) -> tuple[float, int, float, dict]:
    """Warm up, time ``work.timed`` steps, then measure the phase breakdown on ``work.breakdown`` more."""
    for _ in range(work.warmup):
        step_fn(None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, tokens, flops = time.perf_counter(), 0, 0.0
    for _ in range(work.timed):
        n, f = step_fn(None)
        tokens, flops = tokens + n, flops + f
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    timer = PhaseTimer(device)
    for _ in range(work.breakdown):
        step_fn(timer)
    return elapsed, tokens, flops, _breakdown_row(timer.totals, work.breakdown)


def _row(model: str, stage: int, precision: str, micro: int, params: int, elapsed: float, tokens: int, flops: float,
         peak, device, work: Workload, **extra) -> dict:
    return {"model": model, "zero_stage": stage, "precision": precision, "micro_batch": micro,
            "params_m": round(params / 1e6, 1), "tokens_per_s": tokens / elapsed,
            "mfu": flops / elapsed / peak if peak else None, "peak_mem_gib": _peak_memory_gib(device),
            "step_s": elapsed / work.timed, **extra}


def profile_table(step_fn, device: torch.device, steps: int = 3, rows: int = 30) -> str:
    """``--set profile=true``: the kernels that take the step's time (torch profiler, device time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step_fn(None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
    print(table)
    return table


# ----------------------------------------------------------------------------------------------
# Our model through the training system


def nuwa_config(opts, stage: int, run_dir: str):
    # the preset's own micro-batch and accumulation: the bench measures what `nuwa-ds train` runs
    overrides = [f"train.ds_config=zero{stage}", f"train.run_dir={run_dir}", "train.tensorboard=false"]
    if opts.micro_batch_size:
        overrides.append(f"train.micro_batch_size={opts.micro_batch_size}")
    # the user's --set model./data./train. settings last, so they win (e.g. train.grad_accum_steps=4)
    overrides += [f"{k}={v}" for k, v in opts.extra.items() if k.split(".")[0] in ("model", "data", "train")]
    return RunConfig.load(opts.preset, overrides)


def bench_nuwa(opts, stage: int, dist, device: torch.device, work: Workload) -> dict:
    with tempfile.TemporaryDirectory(prefix="nuwa-bench-") as run_dir:
        cfg = nuwa_config(opts, stage, run_dir)
        plan = preflight(cfg, dist, device.type, None)
        _reset_memory(device)
        trainer = Trainer(cfg, plan, dist, device)
        data = iter(trainer.loader)
        counter = iter(range(1, 10**9))

        def step(timer):
            result = trainer.train_step(data, next(counter), timer=timer)
            return result.tokens, result.flops

        elapsed, tokens, flops, phases = _time_steps(step, work, device)
        if opts.extra.get("profile"):
            phases["profile"] = profile_table(step, device)
        row = _row(opts.preset, stage, plan.ds.precision, cfg.train.micro_batch_size, plan.num_parameters, elapsed,
                   tokens, flops, trainer.peak, device, work, grad_accum=cfg.train.grad_accum_steps,
                   tokens_per_step=tokens // work.timed,
                   attn_backend=trainer.engine.module.attention_backend(device),
                   canvas="x".join(map(str, cfg.data.canvas)), **phases)
        _release(trainer.engine)
        del trainer
    return row


# ----------------------------------------------------------------------------------------------
# The off-the-shelf reference: HF GPT-2 under the same DeepSpeed config


def gpt2_shape(opts, tokens_per_micro: int | None = None) -> dict:
    """The reference's shape; its micro-batch carries the same tokens as ours (``tokens_per_micro``)
    unless ``--set baseline_micro_batch=N`` says otherwise."""
    if opts.device == "cpu" or opts.preset == "tiny":
        shape = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256, seq=64, micro=2)
    else:
        shape = dict(n_layer=24, n_embd=1024, n_head=16, vocab_size=16384, seq=2048, micro=opts.micro_batch_size or 8)
    if tokens_per_micro:
        shape["micro"] = max(1, tokens_per_micro // shape["seq"])
    if "baseline_micro_batch" in opts.extra:
        shape["micro"] = int(opts.extra["baseline_micro_batch"])
    return shape


def bench_gpt2(opts, stage: int, dist, device: torch.device, work: Workload, tokens_per_micro=None,
               grad_accum: int = 1) -> dict:
    import deepspeed
    import transformers

    transformers.logging.set_verbosity_error()
    shape = gpt2_shape(opts, tokens_per_micro)
    seq, micro = shape.pop("seq"), shape.pop("micro")
    train_cfg = TrainConfig(micro_batch_size=micro, grad_accum_steps=grad_accum)
    ds = DSC.resolve(f"zero{stage}", train_cfg, dist.world_size, device.type)
    _reset_memory(device)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=seq, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
                                      **shape)
    model = transformers.GPT2LMHeadModel(config)
    params = sum(p.numel() for p in model.parameters())
    groups = optim.param_groups(model, train_cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optim.adamw(groups, train_cfg, device),
                                           config=ds.config, dist_init_required=False)
    ids = torch.randint(0, shape["vocab_size"], (micro, seq), device=device)
    # the convention for this reference (docs/design.md, "8. Training system"): 6 N (all parameters; the head is
    # tied to the embedding) + 12 L d S per token, so its 20.1% / 9.2% are directly comparable
    flops_per_token = 6 * params + 12 * shape["n_layer"] * shape["n_embd"] * seq
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    def step(timer):
        timer = timer or PhaseTimer(None)
        for _ in range(grad_accum):  # DeepSpeed applies the optimizer at the accumulation boundary
            timer.mark(None)
            loss = engine(input_ids=ids, labels=ids).loss
            timer.mark("forward")
            engine.backward(loss)
            timer.mark("backward")
            engine.step()
            timer.mark("optimizer")
        loss.item()  # the same one sync per step as the training loop's all-reduce
        tokens = ids.numel() * dist.world_size * grad_accum
        return tokens, tokens * flops_per_token

    elapsed, tokens, flops, phases = _time_steps(step, work, device)
    phases["data_ms"] = None  # token ids stay on the device: no loader
    row = _row(f"gpt2-{params / 1e6:.3g}m (HF, reference)", stage, ds.precision, micro, params, elapsed, tokens,
               flops, peak, device, work, attn_backend="sdpa", canvas=f"seq {seq}", **phases)
    _release(engine)
    del engine, model
    return row


# ----------------------------------------------------------------------------------------------


def run(opts) -> dict:
    if opts.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed picks its accelerator
    dist = D.detect()
    device = D.init(dist, "cuda" if opts.device == "cuda" else "cpu")
    _quiet_libraries()
    work = workload(opts)
    rows = []
    for stage in opts.zero_stages:
        ours = bench_nuwa(opts, stage, dist, device, work)
        rows.append(ours)
        if opts.compare_baseline:
            # same tokens per micro-batch and the same accumulation: the same tokens per optimizer step
            per_micro = ours["tokens_per_step"] // ours["grad_accum"]
            base = bench_gpt2(opts, stage, dist, device, work, per_micro, ours["grad_accum"])
            base["ratio_ours_over_this"] = ours["tokens_per_s"] / base["tokens_per_s"]
            rows.append(base)
    notes = [f"{work.timed} timed steps after {work.warmup} warm-up steps; phase breakdown from {work.breakdown} "
             f"further steps with a device sync at each phase boundary",
             "mfu: model FLOPs / (time x dense bf16 peak x ranks); nuwa: attended blocks only, gpt2: 6N + 12 L d S "
             "(docs/design.md, 8. Training system)"]
    if device.type != "cuda":
        notes.append("CPU: mfu not reported; peak_mem_gib is the process peak RSS")
    profiles = {f"{r['model']} zero{r['zero_stage']}": r.pop("profile") for r in rows if "profile" in r}
    return {"rows": rows, "metrics": METRICS, "required": REQUIRED, "world_size": dist.world_size, "notes": notes,
            "profiles": profiles}
