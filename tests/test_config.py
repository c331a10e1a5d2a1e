import json

import pytest

from nuwa_ds.config import MODEL_PRESETS, RUN_PRESETS, ConfigError, NuwaConfig, RunConfig


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_model_preset_json_round_trip(name):
    cfg = NuwaConfig.preset(name)
    again = NuwaConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.extents, tuple)


@pytest.mark.parametrize("name", list(RUN_PRESETS))
def test_run_preset_round_trip(name, tmp_path):
    cfg = RunConfig.preset(name)
    path = tmp_path / "run.json"
    cfg.to_json(path)
    assert RunConfig.from_json(path) == cfg
    assert RunConfig.load(str(path)) == cfg


def test_overrides_parse_by_field_type():
    cfg = RunConfig.preset("tiny").override([
        "model.d_global=128", "model.extents=0,2,2", "train.lr=1e-3", "model.frame_embedding=false",
        "data.shards=null", "model.attn_backend=reference", "data.orders={\"down\": 1.0}",
        "train.betas=[0.9,0.99]",
    ])
    assert cfg.model.d_global == 128 and cfg.model.extents == (0, 2, 2)
    assert cfg.train.lr == 1e-3 and cfg.model.frame_embedding is False
    assert cfg.data.shards is None and cfg.data.orders == {"down": 1.0}
    assert cfg.train.betas == (0.9, 0.99)


@pytest.mark.parametrize("item, message", [
    ("model.d_globl=128", "unknown key model.d_globl"),
    ("model.d_global=abc", "model.d_global: expected an integer"),
    ("model.d_global=1.5", "expected an integer"),
    ("train.steps=true", "expected an integer"),
    ("model.frame_embedding=maybe", "expected true or false"),
    ("model.extents=1,1", "expected 3 values"),
    ("model.extents=-1,1,1", "extents"),
    ("model.d_global=100", "multiple of model.head_dim"),
    ("model.attn_backend=flash", "attn_backend"),
    ("nothing", "key=value"),
    ("train.precision=fp8", "precision"),
    ("data.orders={\"diag\": 1}", "unknown order"),
])
def test_bad_overrides_are_rejected_clearly(item, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.preset("tiny").override([item])


def test_unknown_keys_in_json_are_rejected(tmp_path):
    data = RunConfig.preset("tiny").to_dict()
    data["model"]["hidden"] = 3
    with pytest.raises(ConfigError, match="unknown key model.hidden"):
        RunConfig.from_json(json.dumps(data))
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_json(tmp_path / "missing.json")


def test_canvas_must_be_patch_aligned():
    with pytest.raises(ConfigError, match="multiples of model.patch_size"):
        RunConfig.preset("tiny").override(["data.canvas=1,10,16"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset"):
        NuwaConfig.preset("huge")
