"""Fast checks of the training system's pieces: DeepSpeed config resolution and the batch triad, bad
configs failing before anything is allocated, optimizer groups and schedule, rank detection, and how
the newest complete checkpoint is found."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nuwa_ds.config import RunConfig, TrainConfig
from nuwa_ds.training import checkpoint as C
from nuwa_ds.training import distributed as D
from nuwa_ds.training import ds_config as DSC
from nuwa_ds.training import optim
from test_train_utils import ROOT, clean_env


def train_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"micro_batch_size": 4, "grad_accum_steps": 2, **kw})


# -- DeepSpeed config -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3"])
def test_ds_configs_resolve_from_train_config(name):
    cpu = DSC.resolve(name, train_cfg(grad_clip=0.5), world_size=8, device_type="cpu")
    assert cpu.stage == int(name[-1]) and cpu.precision == "fp32" and not cpu.config["bf16"]["enabled"]
    assert cpu.config["train_micro_batch_size_per_gpu"] == 4 and cpu.config["gradient_accumulation_steps"] == 2
    assert cpu.config["train_batch_size"] == 64 and cpu.config["gradient_clipping"] == 0.5
    gpu = DSC.resolve(name, train_cfg(), world_size=8, device_type="cuda")
    assert gpu.precision == "bf16" and gpu.config["bf16"]["enabled"] and not gpu.json_optimizer
    assert DSC.resolve(name, train_cfg(precision="bf16"), 1, "cpu").config["bf16"]["enabled"]


def test_offload_config_uses_deepspeed_adamw_on_gpu_and_is_refused_on_cpu():
    gpu = DSC.resolve("zero3_offload", train_cfg(lr=1e-4, weight_decay=0.05), 8, "cuda")
    assert gpu.json_optimizer and gpu.config["optimizer"]["params"]["lr"] == 1e-4
    assert gpu.config["optimizer"]["params"]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="needs a GPU.*--ds-config zero3"):
        DSC.resolve("zero3_offload", train_cfg(), 1, "cpu")


@pytest.mark.parametrize("kwargs, world, message", [
    (dict(global_batch_size=128), 8, r"= 64; set train.grad_accum_steps=4"),
    (dict(global_batch_size=100), 8, r"100 is not a multiple of micro_batch_size x world size = 4 x 8: change "
                                     r"train.micro_batch_size, the number of ranks"),
])
def test_batch_triad_names_the_number_to_change(kwargs, world, message):
    with pytest.raises(ValueError, match=message):
        DSC.resolve("zero2", train_cfg(**kwargs), world, "cpu")
    assert DSC.resolve("zero2", train_cfg(global_batch_size=64), 8, "cpu").config["train_batch_size"] == 64


@pytest.mark.parametrize("content, message", [
    ({"train_micro_batch_size_per_gpu": 8}, r"sets train_micro_batch_size_per_gpu=8 but train.micro_batch_size=4"),
    ({"train_batch_size": 48}, r"train_batch_size in the DeepSpeed config=48 .*= 64"),
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}},
     r"zero_optimization.reduce_bucket_size is 'auto'"),
    ({"fp16": {"enabled": True}}, r"fp16 is not supported"),
    ({"scheduler": {"type": "WarmupLR"}}, r"remove 'scheduler'"),
    ({"optimizer": {"type": "Lamb"}}, r"optimizer type 'Lamb' unsupported"),
    ({"zero_optimization": {"stage": 5}}, r"stage must be 0-3"),
    # the train config owns precision, clipping and AdamW's numbers: a file may only agree with it
    ({"bf16": {"enabled": True}}, r"sets bf16.enabled=true but train.precision=auto gives fp32 on cpu: remove "
                                  r"bf16.enabled .* or set train.precision=bf16"),
    ({"gradient_clipping": 0.5}, r"sets gradient_clipping=0.5 but train.grad_clip=1.0: .* set train.grad_clip=0.5"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, r"sets optimizer.params.lr=0.1 but train.lr="),
])
def test_bad_deepspeed_configs(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        DSC.resolve(str(path), train_cfg(), 8, "cpu")


def test_a_file_may_state_what_the_train_config_says(tmp_path):
    path = tmp_path / "agreeing.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}, "gradient_clipping": 1.0,
                                "optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.95]}}}))
    train = train_cfg(precision="bf16", grad_clip=1.0, betas=(0.9, 0.95), lr=2e-4)
    resolved = DSC.resolve(str(path), train, 8, "cuda")
    assert resolved.config["bf16"]["enabled"] and resolved.config["gradient_clipping"] == 1.0
    assert resolved.config["optimizer"]["params"]["lr"] == 2e-4


def test_shipped_configs_state_only_engine_knobs():
    from importlib import resources

    for entry in (resources.files("nuwa_ds") / "ds_configs").iterdir():
        data = json.loads(entry.read_text())
        owned = {"bf16", "fp16", "gradient_clipping", "scheduler", *DSC._BATCH_KEYS} & set(data)
        assert not owned and "params" not in data.get("optimizer", {}), (entry.name, owned)


def test_unknown_deepspeed_config_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="zero1, zero2, zero3, zero3_offload"):
        DSC.locate("zero9")


def test_zero3_budget_must_hold_the_largest_parameter():
    resolved = DSC.resolve("zero3", train_cfg(), 8, "cuda")
    numels = {"head.weight": 16384 * 1024, "norm.weight": 1024}
    DSC.check_fits_model(resolved, numels)
    resolved.config["zero_optimization"]["stage3_max_live_parameters"] = 1_000_000
    with pytest.raises(ValueError, match=r"largest parameter \(head.weight, 16777216 elements\); raise it"):
        DSC.check_fits_model(resolved, numels)


# -- bad configs through the command line: fail with exit 2 before DeepSpeed is even imported ------


BAD_RUNS = {
    "unknown key": (["train.stepz=3"], "unknown key train.stepz"),
    # options may follow the key=value overrides
    "batch triad": (["train.global_batch_size=3", "--ds-config", "zero1"], "batch triad: train.global_batch_size=3"),
    "missing shards": (["data.shards=nowhere/train-{000..003}.tar"], "4 of 4 shard files do not exist"),
    "zero3 budget": (["--ds-config", "{zero3_tight}"], "stage3_max_live_parameters=1000 is smaller than"),
    "canvas": (["data.canvas=[1,10,8]"], "multiples of model.patch_size=4"),
    "resume elsewhere": (["--resume", "{missing}"], "no complete checkpoint there"),
}


@pytest.mark.slow
def test_bad_configs_fail_before_any_allocation(tmp_path):
    tight = json.loads(DSC.locate("zero3").read_text())
    tight["zero_optimization"]["stage3_max_live_parameters"] = 1000
    (tmp_path / "tight.json").write_text(json.dumps(tight))
    fill = {"{zero3_tight}": str(tmp_path / "tight.json"), "{missing}": str(tmp_path / "nothing")}
    cases = {name: [fill.get(a, a) for a in args] for name, (args, _) in BAD_RUNS.items()}
    script = (
        "import contextlib, io, json, sys\n"
        "from nuwa_ds.cli import main\n"
        "out = {}\n"
        f"for name, args in {cases!r}.items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        rc = main(['train', '--config', 'tiny', 'train.run_dir={tmp_path / 'run'}', *args])\n"
        "    out[name] = [rc, err.getvalue()]\n"
        "out['imported'] = 'deepspeed' in sys.modules\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, message) in BAD_RUNS.items():
        rc, err = result[name]
        assert rc == 2 and message in err and "nuwa-ds train: error:" in err, (name, err)
    assert result["imported"] is False  # no engine, no process group, no model: nothing was allocated
    assert not (tmp_path / "run").exists()


def _fake_checkpoint(root, step: int, world: int, cfg: RunConfig, stage: int = 2):
    path = root / C.tag_for(step)
    path.mkdir(parents=True)
    for r in range(world):
        (path / C.rank_file(r)).write_bytes(b"")
    (path / C.RUN_CONFIG).write_text(cfg.to_json())
    (path / C.META).write_text(json.dumps({"step": step, "world_size": world, "zero_stage": stage}))
    return path


@pytest.mark.slow
def test_resume_refuses_other_world_size_stage_or_model_shape(tmp_path):
    from nuwa_ds.train import preflight

    cfg = RunConfig.load("tiny", [f"train.run_dir={tmp_path}"])
    single = D.DistEnv(0, 1, 0, 1, "python")
    _fake_checkpoint(tmp_path / "checkpoints", 10, world=4, cfg=cfg)
    with pytest.raises(ValueError, match=r"written by 4 ranks; this run has 1\. Resume with 4 ranks.*train.init_from="):
        preflight(cfg, single, "cpu", "auto")
    _fake_checkpoint(tmp_path / "checkpoints", 20, world=1, cfg=cfg, stage=3)
    with pytest.raises(ValueError, match=r"ZeRO stage 3; this run uses stage 2"):
        preflight(cfg, single, "cpu", "auto")
    wider = cfg.override(["model.d_global=128"])
    _fake_checkpoint(tmp_path / "checkpoints", 30, world=1, cfg=wider)
    with pytest.raises(ValueError, match=r"another shape.*model.d_global: 128 -> 64"):
        preflight(cfg, single, "cpu", "auto")
    with pytest.raises(ValueError, match=r"step_00000010 was written by 4 ranks"):  # an explicit checkpoint
        preflight(cfg, single, "cpu", str(tmp_path / "checkpoints" / C.tag_for(10)))


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    from nuwa_ds.train import preflight

    cfg = RunConfig.load("tiny", [f"train.run_dir={tmp_path}"])
    plan = preflight(cfg, D.DistEnv(0, 1, 0, 1, "python"), "cpu", "auto")
    assert plan.resume_from is None and plan.num_parameters > 0


# -- optimizer and schedule -------------------------------------------------------------------------


def test_weight_decay_only_on_linear_matrices():
    from nuwa_ds import NuwaConfig, NuwaInfinity

    model = NuwaInfinity(NuwaConfig.preset("tiny"))
    decay, no_decay = optim.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "head.weight" in decayed and all(n.endswith(".weight") for n in decayed)
    assert {n for n in names.values() if n.endswith(("qkv.weight", "fc.weight", "context.weight"))} <= decayed
    for fragment in ("embed.weight", ".pos", "norm", "offset_bias", "bos", "order_embed", "frame_embed"):
        assert not any(fragment in n for n in decayed), fragment


def test_schedule_warms_up_then_follows_the_cosine_to_the_floor():
    train = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    factors = [optim.lr_factor(s, train) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55)
    assert optim.lr_factor(110, train) == pytest.approx(0.1) and optim.lr_factor(500, train) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


# -- rank detection -------------------------------------------------------------------------------


def _env(monkeypatch, **values):
    environ = {k: v for k, v in clean_env().items()}
    environ.update({k: str(v) for k, v in values.items()})
    monkeypatch.setattr("os.environ", environ)
    return environ


def test_detect_plain_python_sets_up_one_rank(monkeypatch):
    env = _env(monkeypatch)
    dist = D.detect()
    assert dist == D.DistEnv(0, 1, 0, 1, "python")
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and int(env["MASTER_PORT"]) > 0


def test_detect_srun_task(monkeypatch):
    env = _env(monkeypatch, SLURM_PROCID=5, SLURM_LOCALID=1, SLURM_STEP_NUM_TASKS=8,
               SLURM_STEP_TASKS_PER_NODE="2(x4)", SLURM_STEP_NODELIST="gpu-a", SLURM_JOB_ID=1234)
    assert D.detect() == D.DistEnv(5, 8, 1, 2, "srun")
    assert env["MASTER_ADDR"] == "gpu-a" and env["MASTER_PORT"] == str(20000 + 1234)


def test_detect_torchrun_and_deepspeed_launcher(monkeypatch):
    _env(monkeypatch, RANK=3, WORLD_SIZE=4, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, MASTER_ADDR="h", MASTER_PORT=1,
         SLURM_PROCID=0, SLURM_STEP_NUM_TASKS=1)  # torchrun inside an srun step: torchrun's variables win
    assert D.detect() == D.DistEnv(3, 4, 1, 2, "torchrun")
    assert D.detect(local_rank_arg=1) == D.DistEnv(3, 4, 1, 2, "deepspeed")
    with pytest.raises(ValueError, match="--local_rank=0 disagrees with LOCAL_RANK=1"):
        D.detect(local_rank_arg=0)


# -- finding the checkpoint to resume -------------------------------------------------------------


def test_find_latest_skips_incomplete_and_dangling(tmp_path):
    cfg = RunConfig.load("tiny")
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 100, 2, cfg)
    newest = _fake_checkpoint(root, 200, 2, cfg)
    C.write_atomic(root / "latest", "step_00000200")
    assert C.find_latest(root).step == 200
    (newest / C.rank_file(1)).unlink()  # a rank file missing: not complete
    assert C.find_latest(root).step == 100
    half = _fake_checkpoint(root, 300, 2, cfg)
    half.rename(root / "step_00000300.tmp")  # never published
    C.write_atomic(root / "latest", "step_00000999")  # dangling pointer
    assert C.find_latest(root).step == 100
    assert C.find_latest(tmp_path / "none") is None


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = C.rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    C.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
