"""Export: ZeRO 1/2/3 checkpoints of 2-rank runs -> safetensors + config.json, loadable without DeepSpeed."""

import json
import subprocess
import sys

import pytest
import torch

from nuwa_ds import NuwaInfinity

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_export_equals_deepspeed_consolidation_and_logits(zero_runs, stage, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir = zero_runs(stage)
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "nuwa_ds.cli", "export", str(run_dir), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    meta = json.loads((out / "export.json").read_text())
    assert meta["step"] == 12 and meta["zero_stage"] == stage and meta["world_size"] == 2

    reference = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000012")
    model = NuwaInfinity.from_pretrained(out)
    exported = model.state_dict()
    assert set(exported) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(exported[name], tensor), name

    # the exported model computes what the trained weights compute
    trained = NuwaInfinity(model.config)
    trained.load_state_dict(reference)
    tokens = torch.randint(0, model.config.vocab_size, (2, 1, 8, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens, order="left").logits, trained.eval()(tokens, order="left").logits)


def test_export_bf16_sharded_and_bad_input(zero_runs, tmp_path):
    from nuwa_ds.export import export_checkpoint

    out = export_checkpoint(zero_runs(2), tmp_path / "bf16", tag="step_00000008", dtype="bf16",
                            max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    model = NuwaInfinity.from_pretrained(out)
    assert json.loads((out / "export.json").read_text())["step"] == 8
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with pytest.raises(ValueError, match="no complete checkpoint step_00000005"):
        export_checkpoint(zero_runs(2), tmp_path / "x", tag="step_00000005")
    with pytest.raises(FileNotFoundError):
        export_checkpoint(tmp_path / "nothing", tmp_path / "y")
    with pytest.raises(ValueError, match="dtype"):
        export_checkpoint(zero_runs(2), tmp_path / "z", dtype="int8")
