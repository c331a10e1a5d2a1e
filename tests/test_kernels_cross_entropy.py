"""The fused cross-entropy kernel against torch on fresh random inputs, and the model's loss and
gradients through it (CPU: Triton interpreter)."""

import pytest
import torch

from kernels.cross_entropy import cross_entropy_grad_, reference_cross_entropy
from model_helpers import tiny_model

# compiled on a GPU machine, interpreted on CPU (conftest sets TRITON_INTERPRET there)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("rows, vocab", [(7, 300), (33, 256), (5, 1000)])
def test_loss_and_gradient_match_torch(dtype, tol, rows, vocab):
    logits = (torch.randn(rows, vocab, device=DEVICE) * 3).to(dtype)
    targets = torch.randint(0, vocab, (rows,), device=DEVICE)
    ref_loss, ref_grad = reference_cross_entropy(logits, targets, scale=0.25)
    work = logits.clone()
    loss = cross_entropy_grad_(work, targets, scale=0.25)
    assert torch.allclose(loss, ref_loss, rtol=tol, atol=tol)
    assert torch.allclose(work.float(), ref_grad, rtol=tol, atol=tol * 0.25)
    assert torch.allclose(work.float().sum(1), torch.zeros(rows, device=DEVICE), atol=tol)  # softmax - onehot sums to 0


def test_strided_rows_and_bad_input():
    big = torch.randn(6, 512, device=DEVICE)
    keep = big[:, 300:].clone()
    view = big[:, :300]  # rows 512 apart, last dim contiguous
    targets = torch.randint(0, 300, (6,), device=DEVICE)
    ref_loss, ref_grad = reference_cross_entropy(view, targets, 1.0)
    loss = cross_entropy_grad_(view, targets, 1.0)
    assert torch.allclose(loss, ref_loss, atol=1e-5) and torch.allclose(view, ref_grad, atol=1e-6)
    assert torch.equal(big[:, 300:], keep)  # columns outside the view are not touched
    with pytest.raises(ValueError, match="contiguous rows"):
        cross_entropy_grad_(torch.randn(4, 8, device=DEVICE).t(), torch.zeros(8, dtype=torch.long, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_grad_(torch.randn(4, 8, device=DEVICE), torch.zeros(3, dtype=torch.long, device=DEVICE), 1.0)


def test_model_loss_and_gradients_equal_with_the_fused_kernel():
    tokens = torch.randint(0, 256, (2, 1, 8, 8), device=DEVICE)
    results = []
    for backend in ("torch", "triton"):
        model = tiny_model(loss_backend=backend, loss_chunk_tokens=40).to(DEVICE).train()
        loss = model(tokens, order="right", return_logits=False).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def test_benchmark_entry_is_found_and_gated_by_the_reference():
    """The file's ``benchmark`` (kernel beside its reference) is what ``nuwa-ds bench kernels`` runs."""
    from kernels import cross_entropy
    from nuwa_ds.bench.kernels import kernel_benchmarks

    assert kernel_benchmarks()["cross_entropy"] is cross_entropy.benchmark
    rows = cross_entropy.benchmark(device=DEVICE)  # on CPU one odd shape in the interpreter
    assert [r["case"] for r in rows] == [f"{R}x{V}" for R, V in cross_entropy.BENCH_SHAPES[DEVICE]]
    assert all(r["ok"] and r["ms"] > 0 and r["gbps"] > 0 for r in rows)
