"""The model on the Triton backend: training forward/backward equals the reference backend, and
teacher-forced decoding through the pool (pool_decode_attention + patch_attention on pool slots)
equals the parallel forward. CPU: TRITON_INTERPRET=1 (slow: every attention call is interpreted);
GPU: run with TRITON_INTERPRET=0."""

from __future__ import annotations

import pytest
import torch

import kernels._common as common
from model_helpers import relative_error, tiny_model, write_tiny_text_encoder

DEVICE = "cuda" if torch.cuda.is_available() and not common.INTERPRET else "cpu"
# head_dim 32 -> 2 heads: the interpreter's time grows with rows x heads, not with head size
SMALL = dict(extents=(1, 1, 1), head_dim=32)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("t5"))


def _model(backend: str, text_dir, aligned: bool = False):
    model = tiny_model(attn_backend=backend, aligned_bias=aligned, **SMALL).attach_text_encoder(text_dir)
    return model.to(DEVICE).train()


@pytest.mark.slow
@pytest.mark.parametrize("aligned", [False, True])
def test_training_step_equals_reference_backend(text_dir, aligned):
    """Loss, logits and every parameter gradient: two frames (e_t = 1 reaches back a frame), two
    patches per frame, one order, a caption (text K/V gradients flow into the projections); with and
    without the aligned-token bias (model.aligned_bias)."""
    tokens = torch.randint(0, 256, (1, 2, 4, 8), device=DEVICE)
    results = []
    for backend in ("reference", "triton"):
        model = _model(backend, text_dir, aligned)
        out = model(tokens, order="left", text=["a red fox"])
        out.loss.backward()
        results.append((out.loss.detach(), out.logits.detach(), {n: p.grad for n, p in model.named_parameters()
                                                                   if p.grad is not None}))
    (ref_loss, ref_logits, ref_grads), (loss, logits, grads) = results
    assert relative_error(logits, ref_logits) <= 1e-5
    assert abs(float(loss - ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert grads.keys() == ref_grads.keys() and any("offset_bias" in n for n in grads)
    assert any("aligned_bias" in n for n in grads) == aligned
    for name, g in grads.items():
        assert relative_error(g, ref_grads[name]) <= 1e-4, name


@pytest.mark.slow
@pytest.mark.parametrize("aligned", [False, True])
def test_teacher_forced_decode_through_the_pool_equals_parallel_forward(text_dir, aligned):
    """Token-by-token decoding reads context slots and the own cache in place from the pool
    (pool_decode_attention) and runs the global stack on pool slots (patch_attention), with a
    caption (text K/V read by both kernels). Empty captions are covered by the kernel tests. With the
    aligned-token bias the canvas has two frames, so the frame before is read through it."""
    model = _model("triton", text_dir, aligned).eval()
    tokens = torch.randint(0, 256, (1, 2 if aligned else 1, 4, 8), device=DEVICE)
    text = ["a red fox"]
    with torch.no_grad():
        parallel = model(tokens, order="right", text=text).logits
    pooled = model.teacher_forced_decode(tokens, order="right", text=text)
    assert relative_error(pooled, parallel) <= 1e-4
