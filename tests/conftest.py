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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Token-by-token decoding is thousands of small ops: on a CPU one intra-op thread is as fast as two
    when the machine is idle, and when the other core is busy each op waits for the descheduled second
    thread (nuwa_ds.recipe measured 4 s vs ~100 s). Measured here, tests/test_generation.py + test_rope.py
    on a busy 2-core machine: 404 s on 2 threads, 31 s on 1. The ranks the tests launch run on one thread
    already (OMP_NUM_THREADS=1 in test_train_utils.clean_env). Module scope: the modules' shared fixtures
    (the memorised grid, the generate CLI's model) run under it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
