"""kernels/pool_decode.py against the reference (nuwa_ds.model.attention) on pool views, with
NaN-poisoned outputs and partial buffers. CPU: TRITON_INTERPRET=1; GPU: run with TRITON_INTERPRET=0."""

from __future__ import annotations

import pytest
import torch

import kernels._common as common
from kernels._reference import rel_error as relative_error
from kernels.pool_decode import pool_decode_attention
from nuwa_ds.model.attention import TextContext, reference_pool_decode_attention

DEVICE = "cuda" if torch.cuda.is_available() and not common.INTERPRET else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def make_decode(dtype=torch.float32, heads=3, head_dim=16, n=16, slots=7, layers=2, with_text=False,
                aligned=False):
    """Rows as generation makes them: the pool [S, layers, 2, H, n, D] is read through the
    per-layer views; context lists have -1 holes and one row has no context at all; own caches are
    filled to different lengths (1 = only the current token)."""
    pool = torch.randn(slots, layers, 2, heads, n, head_dim, dtype=dtype, device=DEVICE)
    own = torch.randn(slots, layers, 2, heads, n, head_dim, dtype=dtype, device=DEVICE)
    layer = layers - 1
    args = dict(
        q=torch.randn(4, 3, heads, head_dim, dtype=dtype, device=DEVICE)[:, 0],  # a strided view, as in the model
        pool_k=pool[:, layer, 0].transpose(1, 2), pool_v=pool[:, layer, 1].transpose(1, 2),
        ctx_slots=torch.tensor([[2, -1, 5, 0], [-1, -1, -1, -1], [6, 1, 3, -1], [4, 4, -1, 2]], device=DEVICE),
        ctx_bias_id=torch.randint(0, 9, (4, 4), device=DEVICE),
        own_k=own[:, layer, 0].transpose(1, 2), own_v=own[:, layer, 1].transpose(1, 2),
        own_slot=torch.tensor([4, 1, 3, 0], device=DEVICE), own_len=torch.tensor([n, 1, n // 2 + 1, 3], device=DEVICE),
        own_bias_id=4, bias=torch.randn(heads, 10, device=DEVICE), text=None)
    if aligned:  # large enough to dominate a logit, so a misplaced key cannot hide
        args["aligned_bias"] = 3 * torch.randn(heads, 10, device=DEVICE)
    if with_text:
        args["text"] = TextContext(torch.randn(2, 5, heads, head_dim, dtype=dtype, device=DEVICE),
                                   torch.randn(2, 5, heads, head_dim, dtype=dtype, device=DEVICE),
                                   torch.tensor([3, 0], device=DEVICE), torch.tensor([0, 1, 0, 1], device=DEVICE))
    return args


def check(args, **launch):
    out = pool_decode_attention(**args, **launch)
    cast = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in args.items()}
    if args["text"] is not None:
        t = args["text"]
        cast["text"] = TextContext(t.k.double(), t.v.double(), t.length, t.index)
    ref = reference_pool_decode_attention(**cast)
    assert out.dtype == args["q"].dtype and out.shape == ref.shape
    assert not out.isnan().any(), "unwritten (poisoned) output elements"
    assert relative_error(out, ref) <= TOLERANCE[out.dtype], f"{relative_error(out, ref):.2e}"


@pytest.mark.parametrize("with_text", [False, True])
@pytest.mark.parametrize("splits", [1, 3, 40])
def test_matches_reference_for_any_split(splits, with_text):
    """40 splits is more than any row has units: empty splits must combine as zero weight."""
    check(make_decode(with_text=with_text), num_splits=splits)


@pytest.mark.parametrize("lanes,prefetch", [(False, False), (True, False), (False, True)])
def test_earlier_versions(lanes, prefetch):
    """v1 (one running max/sum per program, no prefetch), v2 (per-lane statistics) and v1 with
    prefetch stay correct: the benchmarks compare them with the default (v3)."""
    check(make_decode(with_text=True), num_splits=3, lanes=lanes, prefetch=prefetch)


@pytest.mark.parametrize("splits,block_n", [(1, None), (3, 8)])
def test_aligned_bias(splits, block_n):
    """The aligned-token bias: on the key at the query's index (own_len - 1) of the own cache and of
    every context block; with 8-key units that key lies in a later unit than the first."""
    check(make_decode(with_text=True, aligned=True), num_splits=splits, block_n=block_n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    check(make_decode(dtype=dtype, with_text=True), num_splits=3)


def test_odd_head_size_and_small_units():
    """D = 24 (masked head dimension) and 8-key units (several units per block, partial own cache)."""
    check(make_decode(head_dim=24, with_text=True), num_splits=3, block_n=8)


def test_default_launch_with_broadcast_lengths():
    """own_len as generation's CUDA-graph step passes it: a 0-dim position expanded (stride 0)."""
    args = make_decode(with_text=True)
    args["own_len"] = torch.tensor(6, device=DEVICE).expand(4)
    check(args)


def alone(args: dict, row: int) -> dict:
    """Row ``row`` of a decode batch as a batch of its own, its context list cut to its valid entries
    (the width a batch pads to follows its longest row)."""
    keep = args["ctx_slots"][row] >= 0
    one = dict(args, q=args["q"][row:row + 1], ctx_slots=args["ctx_slots"][row:row + 1, keep],
               ctx_bias_id=args["ctx_bias_id"][row:row + 1, keep], own_slot=args["own_slot"][row:row + 1],
               own_len=args["own_len"][row:row + 1])
    if args["text"] is not None:
        t = args["text"]
        one["text"] = TextContext(t.k, t.v, t.length, t.index[row:row + 1])
    return one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split_units", [1, 2, 1000])
def test_fixed_split_size_makes_a_row_independent_of_its_batch(split_units, dtype):
    """Batch-invariant decode (issue 16): with ``split_units`` a row's output is the same bits alone as
    beside rows with longer or shorter contexts, own caches and captions (1000 units: one split, the
    single-pass kernel, for every batch); and it still matches the reference."""
    args = make_decode(dtype=dtype, with_text=True, aligned=True)
    batch = pool_decode_attention(**args, split_units=split_units, block_n=8)
    check(args, split_units=split_units, block_n=8)
    for row in range(len(batch)):
        assert torch.equal(pool_decode_attention(**alone(args, row), split_units=split_units, block_n=8)[0],
                           batch[row]), row


def test_a_fixed_split_count_depends_on_the_batch():
    """What ``split_units`` fixes: with 3 equal ranges of the batch's longest row, a row's keys are cut
    elsewhere when it is decoded alone, and its output changes in the last bits (the test above could
    not tell a fixed split size from a fixed split count without this)."""
    torch.manual_seed(0)  # fixed inputs: that some last bit differs is certain for these, not for every draw
    args = make_decode(with_text=True, aligned=True)
    batch = pool_decode_attention(**args, num_splits=3, block_n=8)
    assert any(not torch.equal(pool_decode_attention(**alone(args, row), num_splits=3, block_n=8)[0], batch[row])
               for row in range(len(batch)))


BAD = {
    "q not [R, H, D]": (lambda a: a.update(q=a["q"][None]), "q must have 3 dimensions"),
    "pool of another head size": (lambda a: a.update(pool_k=a["pool_k"][..., :8], pool_v=a["pool_v"][..., :8]),
                                  "pool_k must be"),
    "slot out of range": (lambda a: a.update(ctx_slots=a["ctx_slots"] + 10), "ctx_slots entries must be -1 or in"),
    "own_slot per row": (lambda a: a.update(own_slot=a["own_slot"][:2]), "own_slot and own_len"),
    "own_bias_id": (lambda a: a.update(own_bias_id=10), "own_bias_id"),
    "aligned bias of another shape": (lambda a: a.update(aligned_bias=a["bias"][:, :4]),
                                      "aligned_bias must be shaped like bias"),
    "split size and count": (lambda a: a.update(split_units=2, num_splits=3), "split_units"),
    "split size 0": (lambda a: a.update(split_units=0), "split_units"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    args = make_decode()
    mutate, message = BAD[case]
    mutate(args)
    with pytest.raises(ValueError, match=message):
        pool_decode_attention(**args)


def test_benchmark_entry_is_found_and_gated_by_the_reference():
    """The file's ``benchmark`` is what ``nuwa-ds bench kernels`` finds: on CPU the gate alone (the
    patches of a raster canvas, text, two splits), on a GPU 4 and 64 rows timed after it."""
    from kernels import pool_decode as PD
    from nuwa_ds.bench.kernels import kernel_benchmarks

    assert kernel_benchmarks()["pool_decode"] is PD.benchmark
    rows = PD.benchmark(device=DEVICE)
    assert all(r["ok"] and r["kernel"] == "pool_decode_attention" for r in rows)
    if DEVICE == "cpu":
        assert [r["case"] for r in rows] == ["D16-splits2"] and rows[0]["interpreter_s"] > 0
    else:
        assert [r["rows"] for r in rows] == [4, 64, 4, 64] and all(r["tbps"] > 0 for r in rows)
