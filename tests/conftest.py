"""Test environment: CPU DeepSpeed, the Triton interpreter, no network. Set before any import of
triton/deepspeed (the interpreter flag must precede every @triton.jit definition)."""

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

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


# Under `pytest -n 2 --dist loadfile` (scripts/test.sh) a test module runs whole on one worker, so its module
# fixtures are made once. Work is handed out in the workers' collection order: the modules that take longest
# start first, so that no worker is left alone with a long one at the end (docs/decisions.md, "CI under 10
# minutes"). What several modules share (zero_runs, the trained demo tokenizer) is made once per run, by
# whichever worker asks first (shared_dir); the order also keeps a worker from waiting for it: test_data trains the
# demo tokenizer while the other worker runs the video recipe, test_tokenizer comes after it, and test_export
# makes zero_runs before test_validation and test_train_ranks ask. The two Slurm modules (mostly waiting for
# Slurm) start far apart, beside modules that keep the cores busy. A worker that has at most 2 tests left takes
# its next module at once (xdist's loadscope), so a one-test module starts beside the module after it in this list.
LONGEST_FIRST = ["test_video_recipe", "test_data", "test_slurm_multinode", "test_tokenizer", "test_export",
                 "test_stop_stress", "test_train_ranks", "test_validation", "test_slurm", "test_demo", "test_recipe",
                 "test_kernels_model", "test_checkpoint_faults", "test_kernels_pool_decode", "test_samples",
                 "test_preemption", "test_generation", "test_bench", "test_text_encoder", "test_train_bench",
                 "test_eval", "test_install"]


def shared_dir(tmp_path_factory) -> Path:
    """A folder that every pytest-xdist worker of this run sees (the parent of their basetemps), or the
    basetemp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def made_once(folder: Path):
    """``with made_once(folder) as todo:`` - ``todo`` is True for the one process (of every xdist worker)
    that must make ``folder``; the others wait for it, then find it made."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = Path(f"{folder}.done")
        todo = not done.exists()
        if todo:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield todo
        done.touch()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' collection order is the order work is handed out
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module keeps its order
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def zero_runs(tmp_path_factory):
    """``zero_runs(stage)``: the run directory of one finished 2-rank (gloo) tiny training under ZeRO
    ``stage`` (``TWO_RANK_STEPS``), made once per run (by one xdist worker) and shared by the training,
    export and validation tests."""
    from test_train_utils import TWO_RANK_LAUNCHERS, TWO_RANK_STEPS, run, train_cmd

    done = {}

    def get(stage: int):
        if stage not in done:
            run_dir = shared_dir(tmp_path_factory) / f"zero{stage}"
            with made_once(run_dir) as todo:
                if todo:
                    cmd = train_cmd(2, run_dir, f"train.ds_config=zero{stage}", *TWO_RANK_STEPS,
                                    launcher=TWO_RANK_LAUNCHERS[stage])
                    rc = run(cmd, run_dir / "log.txt")
                    assert rc == 0, (run_dir / "log.txt").read_text()[-3000:]
            done[stage] = run_dir
        return done[stage]

    return get
