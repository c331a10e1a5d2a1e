"""kernels/patch_attention.py against the reference (nuwa_ds.model.attention), forward and every
input gradient, on fresh random inputs with NaN-poisoned outputs.

On CPU the kernels run under TRITON_INTERPRET=1 (conftest); on a GPU machine run this file with
TRITON_INTERPRET=0 and the same checks run compiled, on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

import kernels._common as common
from kernels._reference import rel_error as relative_error
from kernels.patch_attention import patch_attention
from nuwa_ds.model import ORDERS
from nuwa_ds.model import orders as O
from nuwa_ds.model.attention import TextContext, reference_patch_attention

DEVICE = "cuda" if torch.cuda.is_available() and not common.INTERPRET else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def batch_context(shape, orders, extents):
    """Context rows of a batch (one order per example), as the model's ``batch_tables`` builds them."""
    tables = [O.context_table(shape, o, extents) for o in orders]
    N, C = tables[0].num_patches, max(t.max_context for t in tables)
    rows, offsets = [], []
    for b, t in enumerate(tables):
        idx = torch.nn.functional.pad(t.ctx_index, (0, C - t.max_context), value=-1)
        rows.append(torch.where(idx >= 0, idx + b * N, idx))
        offsets.append(torch.nn.functional.pad(t.ctx_offset, (0, C - t.max_context), value=O.own_offset_id(extents)))
    return torch.cat(rows), torch.cat(offsets), N


def make_problem(shape=(1, 2, 3), orders=("down",), extents=(0, 1, 1), heads=2, head_dim=16, patch=4,
                 dtype=torch.float32, stack="local", text_lengths=None, text_len=7, aligned=False):
    """Random leaves shaped like the model's: q/k/v are strided views of one [R, n, 3, H, D]
    projection; the local stack's context K/V are views of another; text K/V views of a third;
    with ``aligned`` an aligned-token bias table beside the offset bias."""
    n = patch * patch
    ctx_index, ctx_bias_id, N = batch_context(shape, orders, extents)
    R = N * len(orders)
    num_bias = O.num_offsets(extents) + 1
    leaves = {"qkv": torch.randn(R, n, 3, heads, head_dim, dtype=dtype, device=DEVICE),
              "bias": torch.randn(heads, num_bias, device=DEVICE)}
    if aligned:  # large enough to dominate a logit, so a misplaced diagonal cannot hide
        leaves["aligned"] = 3 * torch.randn(heads, num_bias, device=DEVICE)
    if stack == "local":
        leaves["ctx_kv"] = torch.randn(R, n, 2, heads, head_dim, dtype=dtype, device=DEVICE)
    if text_lengths is not None:
        leaves["text_kv"] = torch.randn(len(orders), text_len, 2, heads, head_dim, dtype=dtype, device=DEVICE)
    for t in leaves.values():
        t.requires_grad_()
    call = dict(ctx_index=ctx_index.to(DEVICE), ctx_bias_id=ctx_bias_id.to(DEVICE),
                own_bias_id=O.own_offset_id(extents), causal=stack == "local")
    text_index = torch.arange(len(orders)).repeat_interleave(N).to(DEVICE)
    lengths = torch.tensor(text_lengths, device=DEVICE) if text_lengths is not None else None
    return leaves, call, text_index, lengths


def attention_inputs(leaves, text_index, lengths, cast=None):
    """(q, k, v, ctx_k, ctx_v, bias, text) from the leaves, optionally through a dtype cast (the
    reference runs on float64 copies so it is the truth, not another rounding)."""
    get = (lambda t: t.to(cast)) if cast is not None else (lambda t: t)
    q, k, v = get(leaves["qkv"]).unbind(2)
    ctx_k, ctx_v = get(leaves["ctx_kv"]).unbind(2) if "ctx_kv" in leaves else (k, v)
    text = None
    if "text_kv" in leaves:
        tk, tv = get(leaves["text_kv"]).unbind(2)
        text = TextContext(tk, tv, lengths, text_index)
    return q, k, v, ctx_k, ctx_v, get(leaves["bias"]), text


def check_against_reference(leaves, call, text_index, lengths):
    dtype = leaves["qkv"].dtype
    q, k, v, ck, cv, bias, text = attention_inputs(leaves, text_index, lengths)
    aligned = leaves.get("aligned")
    out = patch_attention(q, k, v, ck, cv, bias=bias, text=text, aligned_bias=aligned, **call)
    rq, rk, rv, rck, rcv, rbias, rtext = attention_inputs(leaves, text_index, lengths, cast=torch.float64)
    ref = reference_patch_attention(rq, rk, rv, rck, rcv, bias=rbias, text=rtext,
                                    aligned_bias=None if aligned is None else aligned.double(), **call)
    assert out.dtype == dtype and out.shape == ref.shape
    assert not out.isnan().any(), "unwritten (poisoned) output elements"
    tol = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tol, f"forward: {relative_error(out, ref):.2e}"

    grad = torch.randn_like(ref)
    names = list(leaves)
    got = torch.autograd.grad(out, [leaves[k] for k in names], grad.to(dtype), allow_unused=True)
    want = torch.autograd.grad(ref, [leaves[k] for k in names], grad, allow_unused=True)
    for name, g, w in zip(names, got, want):
        w = torch.zeros_like(leaves[name], dtype=torch.float64) if w is None else w  # e.g. context never read
        assert not g.isnan().any(), f"d{name}: unwritten (poisoned) gradient elements"
        err = relative_error(g, w)
        assert err <= (tol if name not in ("bias", "aligned") else 4 * tol), f"d{name}: {err:.2e}"


# the smallest canvases where every order gives each extent a different context pattern
CANVAS = {(0, 1, 1): (1, 2, 2), (1, 1, 1): (2, 1, 2), (0, 2, 2): (1, 2, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("extents", list(CANVAS))
@pytest.mark.parametrize("order", ORDERS)
def test_every_order_and_extent(order, extents):
    """Global (full own block, context = the rows' own K/V) and local (causal, separate context
    source) stacks alternate so each order and each extent meets both; text on half of them."""
    i = ORDERS.index(order) + list(CANVAS).index(extents)
    stack = ("global", "local")[i % 2]
    text = [5] if i % 4 < 2 else None
    heads = 3 if i % 4 == 1 else 1  # odd head counts; more heads only multiply the interpreter's time
    check_against_reference(*make_problem(CANVAS[extents], (order,), extents, heads=heads, stack=stack,
                                          text_lengths=text))


@pytest.mark.parametrize("stack", ["global", "local"])
def test_aligned_bias(stack):
    """The aligned-token bias (model.aligned_bias) on a two-frame canvas with text: forward and every
    gradient, both tables' included; the frame before is a context block at the same place."""
    check_against_reference(*make_problem((2, 1, 2), ("down",), (1, 1, 1), heads=2, stack=stack,
                                          text_lengths=[5], aligned=True))


def test_aligned_bias_odd_tiles_and_pool_slots():
    """n = 9 (masked tiles: the diagonal must stay on the query's own index) and context read from
    pool slots with holes, with the aligned bias."""
    check_against_reference(*make_problem((1, 1, 2), ("down",), (0, 1, 1), heads=1, head_dim=24, patch=3,
                                          stack="local", aligned=True))
    S, H, D, n, R = 6, 2, 16, 16, 4
    pool = torch.randn(S, 2, H, n, D, device=DEVICE, requires_grad=True)
    qkv = torch.randn(R, n, 3, H, D, device=DEVICE, requires_grad=True)
    bias = torch.randn(H, 10, device=DEVICE, requires_grad=True)
    aligned = (3 * torch.randn(H, 10, device=DEVICE)).requires_grad_()
    ctx_index = torch.tensor([[3, -1, 5], [-1, -1, -1], [0, 3, -1], [-1, 5, 3]], device=DEVICE)
    ctx_bias_id = torch.randint(0, 9, (R, 3), device=DEVICE)

    def run(fn, cast):
        q, k, v = qkv.to(cast).unbind(2)
        pk, pv = pool.to(cast)[:, 0].transpose(1, 2), pool.to(cast)[:, 1].transpose(1, 2)
        return fn(q, k, v, pk, pv, ctx_index, ctx_bias_id, 4, bias.to(cast), causal=True,
                  aligned_bias=aligned.to(cast))

    out, ref = run(patch_attention, torch.float32), run(reference_patch_attention, torch.float64)
    assert relative_error(out, ref) <= 2e-5
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [qkv, pool, bias, aligned], grad.float())
    want = torch.autograd.grad(ref, [qkv, pool, bias, aligned], grad)
    for g, w in zip(got, want):
        assert relative_error(g, w) <= 1e-4


@pytest.mark.parametrize("stack", ["global", "local"])
def test_text_with_an_empty_caption_and_mixed_orders(stack):
    """Two examples with different orders in one batch; the second caption has length 0 (its text
    block is fully masked), the first is the full text width."""
    check_against_reference(*make_problem((1, 1, 2), ("up", "left"), (0, 1, 1), heads=3, stack=stack,
                                          text_lengths=[7, 0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stack", ["global", "local"])
def test_low_precision_inputs(dtype, stack):
    check_against_reference(*make_problem((1, 2, 2), ("right",), (0, 1, 1), heads=1, dtype=dtype, stack=stack,
                                          text_lengths=[6]))


@pytest.mark.parametrize("stack", ["global", "local"])
def test_no_context_at_all(stack):
    """Extents (0, 0, 0): the context table has zero columns; only the own block (and text)."""
    check_against_reference(*make_problem((1, 1, 3), ("down",), (0, 0, 0), heads=1, stack=stack,
                                          text_lengths=[3]))


def test_odd_patch_and_head_sizes():
    """n = 9 and D = 24 are no powers of two: every tile is masked on both axes."""
    check_against_reference(*make_problem((1, 1, 2), ("down",), (0, 1, 1), heads=3, head_dim=24, patch=3,
                                          stack="local", text_lengths=[5]))


def test_context_read_from_pool_slots_with_holes():
    """Generation's call: context K/V are strided views of a pool [S, layers, 2, H, n, D]; the
    context list has -1 holes between valid entries and blocks read by several rows."""
    S, L, H, D, n, R = 6, 2, 2, 16, 16, 4
    pool = torch.randn(S, L, 2, H, n, D, device=DEVICE, requires_grad=True)
    qkv = torch.randn(R, n, 3, H, D, device=DEVICE, requires_grad=True)
    bias = torch.randn(H, 10, device=DEVICE, requires_grad=True)
    ctx_index = torch.tensor([[3, -1, 5], [-1, -1, -1], [0, 3, -1], [-1, 5, 3]], device=DEVICE)
    ctx_bias_id = torch.randint(0, 9, (R, 3), device=DEVICE)
    own = 4

    def run(fn, cast):
        q, k, v = qkv.to(cast).unbind(2)
        pk, pv = pool.to(cast)[:, 1, 0].transpose(1, 2), pool.to(cast)[:, 1, 1].transpose(1, 2)
        return fn(q, k, v, pk, pv, ctx_index, ctx_bias_id, own, bias.to(cast), causal=False)

    out, ref = run(patch_attention, torch.float32), run(reference_patch_attention, torch.float64)
    assert relative_error(out, ref) <= 2e-5
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [qkv, pool, bias], grad.float())
    want = torch.autograd.grad(ref, [qkv, pool, bias], grad)
    for g, w in zip(got, want):
        assert relative_error(g, w) <= 1e-4
    assert got[1][:, 0].abs().max() == 0 and got[1][[1, 2, 4]].abs().max() == 0  # unread layer and slots


def test_backward_is_deterministic():
    leaves, call, text_index, lengths = make_problem((1, 1, 2), ("down",), (0, 1, 1), heads=1, stack="global",
                                                     text_lengths=[4])
    q, k, v, ck, cv, bias, text = attention_inputs(leaves, text_index, lengths)
    out = patch_attention(q, k, v, ck, cv, bias=bias, text=text, **call)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, list(leaves.values()), grad, retain_graph=True)
    second = torch.autograd.grad(out, list(leaves.values()), grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _valid_args():
    leaves, call, text_index, lengths = make_problem((1, 2, 2), ("down",), (0, 1, 1), heads=2, stack="local",
                                                     text_lengths=[4])
    q, k, v, ck, cv, bias, text = attention_inputs(leaves, text_index, lengths)
    return dict(q=q, k=k, v=v, ctx_k=ck, ctx_v=cv, bias=bias, text=text, **call)


BAD = {
    "k of another shape": (lambda a: a.update(k=a["k"][:, :8]), "same shape"),
    "ctx_k in another dtype": (lambda a: a.update(ctx_k=a["ctx_k"].double()), "ctx_k must have dtype"),
    "context block out of range": (lambda a: a.update(ctx_index=a["ctx_index"].clamp(min=0) + 4),
                                   "ctx_index entries must be -1 or in"),
    "bias id out of range": (lambda a: a.update(ctx_bias_id=a["ctx_bias_id"] + 100), "ctx_bias_id entries"),
    "bias with wrong heads": (lambda a: a.update(bias=a["bias"][:1]), "bias must be"),
    "own bias id": (lambda a: a.update(own_bias_id=99), "own_bias_id"),
    "text index out of range": (lambda a: a.update(text=TextContext(a["text"].k, a["text"].v, a["text"].length,
                                                                    a["text"].index + 1)), "text.index entries"),
    "text longer than its keys": (lambda a: a.update(text=TextContext(a["text"].k, a["text"].v,
                                                                      a["text"].length + 50, a["text"].index)),
                                  "text.length entries"),
    "float index": (lambda a: a.update(ctx_index=a["ctx_index"].float()), "ctx_index must have dtype"),
    "aligned bias of another shape": (lambda a: a.update(aligned_bias=a["bias"][:, :3]),
                                      "aligned_bias must be shaped like bias"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    args = _valid_args()
    mutate, message = BAD[case]
    mutate(args)
    with pytest.raises(ValueError, match=message):
        patch_attention(**args)


def test_raster_context_is_the_models_down_order():
    """The benchmarks' torch-only context table (kernels/ imports nothing of nuwa_ds) is the model's
    for raster order: the benchmark measures the sparsity the model runs."""
    from kernels._common import raster_context

    for canvas in ((1, 1, 1), (1, 2, 3), (1, 4, 4), (3, 4, 4), (2, 3, 5), (2, 1, 3)):
        for extents in ((0, 0, 0), (0, 1, 1), (1, 1, 1), (2, 1, 2), (1, 0, 0)):
            ours, model = raster_context(canvas, extents), O.context_table(canvas, "down", extents)
            assert torch.equal(ours.ctx_index, model.ctx_index), (canvas, extents)
            assert torch.equal(ours.ctx_offset, model.ctx_offset), (canvas, extents)
            assert (ours.own_offset, ours.num_bias) == (O.own_offset_id(extents), O.num_offsets(extents) + 1)


def test_benchmark_entry_is_found_and_gated_by_the_reference():
    """The file's ``benchmark`` (kernel beside its reference) is what ``nuwa-ds bench kernels`` finds; on
    CPU the gate alone (both stacks, every gradient), on a GPU a small case timed after it."""
    from kernels import patch_attention as PA
    from nuwa_ds.bench.kernels import kernel_benchmarks

    assert kernel_benchmarks()["patch_attention"] is PA.benchmark
    rows = PA.benchmark(device=DEVICE, cases=[PA.PatchCase("2x2", (1, 2, 2), 2, (0, 1, 1), 64, "global")])
    assert all(r["ok"] and r["kernel"] == "patch_attention" and r["worst_rel_error"] < 1e-2 for r in rows)
    if DEVICE == "cpu":
        assert [r["case"] for r in rows] == ["local-1x2-e011-D16", "global-1x2-e011-D16"]
        assert set(rows[0]["errors"]) == {"out", "dq", "dk", "dv", "dctx_k", "dctx_v", "dbias", "dtext_k", "dtext_v"}
        assert all(r["interpreter_s"] > 0 for r in rows)
    else:
        assert [r["case"] for r in rows] == ["global-2x2-e011-D64"]
        assert rows[0]["fwd_ms"] > 0 and rows[0]["fwdbwd_tflops"] > 0
