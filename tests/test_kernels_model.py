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


@pytest.mark.slow
def test_batch_invariant_generation_wiring(text_dir):
    """GenerationConfig(batch_invariant=True) on the triton backend: every matmul, norm and decode
    attention of generation runs the batch-invariant kernels, and captions are encoded one by one
    (issue 16). Here (CPU: the interpreter) it gives the reference backend's logits for given tokens,
    and example 0's canvas alone equals example 0 of a batch of two, with guidance (whether the GPU's
    default path would differ is for the GPU tests)."""
    from nuwa_ds.model import GenerationConfig
    from nuwa_ds.model.generation import run_generation

    shape, text = (1, 4, 8), ["a red fox", "a blue sea"]
    tokens = torch.randint(0, 256, (1, *shape), device=DEVICE)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = {}
    for backend in ("reference", "triton"):
        model = _model(backend, text_dir, aligned=True).eval()
        result = run_generation(model, shape, "right", 1, prompt=tokens, prompt_mask=mask, text=text[:1],
                                config=GenerationConfig(batch_invariant=True), return_logits=True)
        assert result.stats["batch_invariant"] is (backend == "triton")
        logits[backend] = result.logits
    assert relative_error(logits["triton"], logits["reference"]) <= 1e-5

    cfg = GenerationConfig(batch_invariant=True, top_k=50, seed=7, cfg_scale=2.0, wavefront=True)
    both = model.generate((1, 4, 4), "right", batch_size=2, text=text, config=cfg)  # one patch: the interpreter is slow
    assert torch.equal(model.generate((1, 4, 4), "right", batch_size=1, text=text[:1], config=cfg)[0], both[0])


def test_fused_block_and_head_compute_the_block_and_head():
    """In the batch-invariant mode a block is four fused matmuls (norm1+qkv, proj+residual,
    norm2+fc+GELU, proj+residual) and the head's norm runs inside its matmul: the same functions as
    the modules' own forwards (fp32: within 1e-5), and a row alone has the bits it has in the batch.
    Random norm weights, so a norm left out or applied twice would show."""
    from nuwa_ds.model.layers import Block, LMHead, batch_invariant_ops

    class Mixing(Block):  # a stand-in for the pool attention: any function of q, k and v
        def attend(self, layout, layer, q, k, v):
            return 0.5 * q + k * v

    torch.manual_seed(0)
    block, head = Mixing(64, 16, 4.0, 3, 1e-5).to(DEVICE), LMHead(64, 96, 1e-5, 1024).to(DEVICE)
    with torch.no_grad():
        for p in (*block.parameters(), *head.parameters()):
            p.normal_(0, 0.3)
        x = torch.randn(5, 3, 64, device=DEVICE)
        plain, (_, plain_logits) = block(x, None, 0), head(x[:, 0], return_logits=True)
        with batch_invariant_ops():
            fused, (_, logits) = block(x, None, 0), head(x[:, 0], return_logits=True)
            row, (_, row_logits) = block(x[2:3], None, 0), head(x[2:3, 0], return_logits=True)
    assert relative_error(fused, plain) <= 1e-5 and relative_error(logits, plain_logits) <= 1e-5
    assert torch.equal(row[0], fused[2]) and torch.equal(row_logits[0], logits[2])
