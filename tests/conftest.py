"""Test environment: CPU DeepSpeed, the Triton interpreter, no network. Set before any import of
triton/deepspeed (the interpreter flag must precede every @triton.jit definition)."""

import os
import shutil

if shutil.which("nvidia-smi") is None:  # CPU machine: CPU DeepSpeed, Triton kernels in the interpreter
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n 2` (scripts/test.sh) each worker owns one of the two cores: one intra-op thread, in
    # the worker and in the programs it starts (a second thread waits on the busy core; see one_torch_thread)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# Under `pytest -n 2 --dist loadgroup` (scripts/test.sh) a group runs whole on one worker. A group is a test
# module, except modules that share what a session makes once (zero_runs, the trained demo tokenizer): they
# are one group. The two Slurm modules each bring up a cluster of their own (own config, ports, job ids). The
# groups that take longest start first, so that no worker is left alone with a long one at the end
# (docs/decisions.md, "CI under 10 minutes").
SHARED_GROUPS = {"test_train_ranks": "zero_runs", "test_export": "zero_runs", "test_validation": "zero_runs",
                 "test_data": "demo_tokenizer", "test_tokenizer": "demo_tokenizer"}
LONGEST_FIRST = ["demo_tokenizer", "zero_runs", "test_slurm_multinode", "test_stop_stress", "test_slurm", "test_demo",
                 "test_recipe", "test_video_recipe", "test_checkpoint_faults", "test_samples", "test_generation",
                 "test_bench", "test_preemption", "test_text_encoder", "test_train_bench", "test_eval", "test_install"]


def _group(item) -> str:
    module = item.path.stem
    return SHARED_GROUPS.get(module, module)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' collection order is the order work is handed out
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: a module keeps its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
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
