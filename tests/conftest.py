"""Test environment: CPU DeepSpeed, the Triton interpreter, no network. Set before any import of
triton/deepspeed (the interpreter flag must precede every @triton.jit definition)."""

import os
import shutil

if shutil.which("nvidia-smi") is None:  # CPU machine: CPU DeepSpeed, Triton kernels in the interpreter
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def zero_runs(tmp_path_factory):
    """``zero_runs(stage)``: the run directory of one finished 2-rank (gloo) tiny training under ZeRO
    ``stage`` (``TWO_RANK_STEPS``), made once per session and shared by the training and export tests."""
    from test_train_utils import TWO_RANK_LAUNCHERS, TWO_RANK_STEPS, run, train_cmd

    done = {}

    def get(stage: int):
        if stage not in done:
            run_dir = tmp_path_factory.mktemp(f"zero{stage}")
            cmd = train_cmd(2, run_dir, f"train.ds_config=zero{stage}", *TWO_RANK_STEPS,
                            launcher=TWO_RANK_LAUNCHERS[stage])
            rc = run(cmd, run_dir / "log.txt")
            assert rc == 0, (run_dir / "log.txt").read_text()[-3000:]
            done[stage] = run_dir
        return done[stage]

    return get
