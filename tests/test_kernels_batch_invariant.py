"""Batch-invariant matmul and RMSNorm (issue 16): against float64 references on fresh random inputs,
and the invariance itself: a row's bits alone equal its bits in batches of other sizes and contents."""

from __future__ import annotations

import pytest
import torch

import kernels._common as common
from kernels._reference import rel_error
from kernels.batch_invariant import (batch_invariant_linear, batch_invariant_rms_norm, reference_linear,
                                     reference_rms_norm)

DEVICE = "cuda" if torch.cuda.is_available() and not common.INTERPRET else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def fresh_inputs():
    """Fresh random inputs on every run (the seed is printed by pytest's -rP when a check fails)."""
    seed = torch.seed() % 2 ** 31
    torch.manual_seed(seed)
    print(f"seed {seed}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n,k", [(1, 96, 80), (37, 64, 128), (5, 130, 72)])
def test_linear_matches_reference(rows, n, k, dtype):
    """Odd sizes: rows, outputs and the reduction each end inside a tile."""
    x = torch.randn(rows, k, dtype=dtype, device=DEVICE)
    w = torch.randn(n, k, dtype=dtype, device=DEVICE) / k ** 0.5
    y = batch_invariant_linear(x, w)
    assert y.dtype == dtype and y.shape == (rows, n)
    assert rel_error(y, reference_linear(x, w)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_rows_are_the_same_bits_in_any_batch(dtype):
    """Row i alone, inside batches of 3, 17 and 40 rows (other contents around it, other tile
    positions), and through a strided view: the same bits."""
    x = torch.randn(40, 96, dtype=dtype, device=DEVICE)
    w = torch.randn(72, 96, dtype=dtype, device=DEVICE)
    full = batch_invariant_linear(x, w)
    for batch in (1, 3, 17):
        for start in (0, 5, 40 - batch):
            assert torch.equal(batch_invariant_linear(x[start:start + batch], w), full[start:start + batch])
    padded = torch.randn(40, 2, 96, dtype=dtype, device=DEVICE)
    padded[:, 1] = x
    assert torch.equal(batch_invariant_linear(padded[:, 1], w), full)  # rows 2 x 96 apart in memory
    assert torch.equal(batch_invariant_linear(x.view(8, 5, 96), w), full.view(8, 5, 72))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 100])
def test_rms_norm_matches_reference_and_is_batch_invariant(dim, dtype):
    x = torch.randn(23, dim, dtype=dtype, device=DEVICE) * 3
    weight = torch.randn(dim, dtype=dtype, device=DEVICE)
    y = batch_invariant_rms_norm(x, weight, 1e-5)
    assert y.dtype == dtype and rel_error(y, reference_rms_norm(x, weight, 1e-5)) <= TOLERANCE[dtype]
    for start, batch in ((0, 1), (7, 1), (3, 9)):
        assert torch.equal(batch_invariant_rms_norm(x[start:start + batch], weight, 1e-5), y[start:start + batch])


def test_bad_input_raises_value_error():
    x = torch.randn(4, 32, device=DEVICE)
    with pytest.raises(ValueError, match="last dimension"):
        batch_invariant_linear(x, torch.randn(8, 16, device=DEVICE))
    with pytest.raises(ValueError, match="share dtype"):
        batch_invariant_linear(x, torch.randn(8, 32, device=DEVICE, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x must be a tensor"):
        batch_invariant_rms_norm(x, torch.ones(16, device=DEVICE), 1e-5)


def test_benchmark_entry_is_found_and_checks_its_rows():
    """The file's ``benchmark`` is what ``nuwa-ds bench kernels`` finds; on CPU its rows (interpreter)
    carry the error against the reference and the invariance of row 0."""
    import kernels.batch_invariant as BI
    from nuwa_ds.bench.kernels import kernel_benchmarks

    assert kernel_benchmarks()["batch_invariant"] is BI.benchmark
    rows = BI.benchmark(device="cpu")
    assert {r["kernel"] for r in rows} == {"batch_invariant_linear", "batch_invariant_rms_norm",
                                          "batch_invariant_norm_linear", "batch_invariant_norm_linear_gelu",
                                          "batch_invariant_linear_residual"}
    assert all(r["ok"] and r["invariant"] and r["worst_rel_error"] < 1e-5 and r["ms"] > 0 for r in rows)


FUSIONS = {"norm": dict(norm=True), "gelu": dict(gelu=True), "norm+gelu": dict(norm=True, gelu=True),
           "residual": dict(residual=True)}


def _fused_args(x, n, kind, dtype):
    k = x.shape[-1]
    return dict(norm_weight=torch.randn(k, dtype=dtype, device=DEVICE) if kind.get("norm") else None, eps=1e-5,
                gelu=bool(kind.get("gelu")),
                residual=torch.randn(*x.shape[:-1], n, dtype=dtype, device=DEVICE) if kind.get("residual") else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_fused_linear_matches_reference_and_is_batch_invariant(fusion, dtype):
    """The token step's fusions (norm before, GELU after, residual added): against the float64 reference
    of the same ops, and row i alone = row i of batches of other sizes, bit for bit. Odd sizes: K ends
    inside a chunk, so the norm's sum of squares has a ragged last chunk."""
    x = torch.randn(21, 2, 100, dtype=dtype, device=DEVICE) * 3
    w = torch.randn(72, 100, dtype=dtype, device=DEVICE) / 10
    args = _fused_args(x, 72, FUSIONS[fusion], dtype)
    y = batch_invariant_linear(x, w, **args)
    assert y.dtype == dtype and y.shape == (21, 2, 72)
    assert rel_error(y, reference_linear(x, w, **args)) <= TOLERANCE[dtype]
    for start, batch in ((0, 1), (9, 1), (4, 7)):
        part = {k: (v[start:start + batch] if k == "residual" and v is not None else v) for k, v in args.items()}
        assert torch.equal(batch_invariant_linear(x[start:start + batch], w, **part), y[start:start + batch])


def test_fused_norm_feeds_the_matmul_what_the_norm_kernel_writes():
    """fp32: the fused norm's rows, rounded as the norm writes them, give the matmul of the unfused pair
    within the last bits (the two sum the squares in different orders)."""
    x = torch.randn(9, 130, device=DEVICE)
    w, nw = torch.randn(40, 130, device=DEVICE), torch.randn(130, device=DEVICE)
    fused = batch_invariant_linear(x, w, norm_weight=nw, eps=1e-6)
    unfused = batch_invariant_linear(batch_invariant_rms_norm(x, nw, 1e-6), w)
    assert rel_error(fused, unfused) <= 1e-6


def test_fused_linear_rejects_bad_inputs():
    x, w = torch.randn(3, 8, device=DEVICE), torch.randn(5, 8, device=DEVICE)
    with pytest.raises(ValueError, match="norm_weight"):
        batch_invariant_linear(x, w, norm_weight=torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        batch_invariant_linear(x, w, residual=torch.zeros(3, 4, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        batch_invariant_linear(x, w, residual=torch.zeros(3, 5, dtype=torch.float64, device=DEVICE))
