"""Orders and Nearby Context Pool tables, checked against a brute-force construction."""

import itertools

import pytest
import torch

from nuwa_ds.model import orders as O

CANVASES = [(1, 1, 1), (1, 3, 4), (1, 4, 3), (2, 3, 3), (3, 2, 5)]
EXTENTS = [(0, 0, 0), (0, 1, 1), (1, 1, 1), (0, 2, 2), (2, 1, 0)]


def brute_force(shape, order, extents):
    """Plain loops straight from the definition in docs/design.md, "1. Canvas, patches and orders"."""
    T, Hp, Wp = shape
    e_t, e_h, e_w = extents
    if order == "down":
        seq = [(t, r, c) for t in range(T) for r in range(Hp) for c in range(Wp)]
    elif order == "up":
        seq = [(t, r, c) for t in range(T) for r in reversed(range(Hp)) for c in range(Wp)]
    elif order == "right":
        seq = [(t, r, c) for t in range(T) for c in range(Wp) for r in range(Hp)]
    else:
        seq = [(t, r, c) for t in range(T) for c in reversed(range(Wp)) for r in range(Hp)]
    step = {p: i for i, p in enumerate(seq)}
    ctx = {}
    for (t, r, c) in seq:
        found = []
        for (kt, kr, kc) in seq:
            if (kt, kr, kc) == (t, r, c) or step[(kt, kr, kc)] > step[(t, r, c)]:
                continue
            if t - e_t <= kt <= t and abs(kr - r) <= e_h and abs(kc - c) <= e_w:
                found.append(((kt * Hp + kr) * Wp + kc, O.offset_id(kt - t, kr - r, kc - c, extents)))
        ctx[(t * Hp + r) * Wp + c] = sorted(found, key=lambda x: x[1])
    canon_seq = [(t * Hp + r) * Wp + c for (t, r, c) in seq]
    return canon_seq, ctx


@pytest.mark.parametrize("shape", CANVASES)
@pytest.mark.parametrize("extents", EXTENTS)
@pytest.mark.parametrize("order", O.ORDERS)
def test_table_matches_brute_force(shape, order, extents):
    table = O.context_table(shape, order, extents)
    seq, ctx = brute_force(shape, order, extents)
    assert table.sequence.tolist() == seq
    assert table.position[table.sequence].tolist() == list(range(len(seq)))
    for p in range(table.num_patches):
        row = [(int(i), int(o)) for i, o in zip(table.ctx_index[p], table.ctx_offset[p]) if i >= 0]
        assert row == ctx[p], f"patch {p}"
        # padding only at the end
        valid = (table.ctx_index[p] >= 0).tolist()
        assert valid == sorted(valid, reverse=True)
    # last consumer: latest step among patches that read p, or p's own step
    for p in range(table.num_patches):
        readers = [table.position[q].item() for q in range(table.num_patches) if p in [i for i, _ in ctx[q]]]
        assert table.last_consumer[p].item() == max(readers, default=table.position[p].item())


@pytest.mark.parametrize("order", O.ORDERS)
def test_no_patch_sees_itself_or_the_future(order):
    extents = (1, 2, 2)
    table = O.context_table((2, 4, 5), order, extents)
    e_t, e_h, e_w = extents
    for p in range(table.num_patches):
        for i in table.ctx_index[p][table.ctx_index[p] >= 0].tolist():
            assert i != p
            assert table.position[i] < table.position[p]
    # offsets within the extents: decode the ids back
    valid = table.ctx_index >= 0
    ids = table.ctx_offset[valid]
    dc = ids % (2 * e_w + 1) - e_w
    dr = (ids // (2 * e_w + 1)) % (2 * e_h + 1) - e_h
    dt = ids // ((2 * e_w + 1) * (2 * e_h + 1)) - e_t
    assert (dt <= 0).all() and (dt >= -e_t).all() and (dr.abs() <= e_h).all() and (dc.abs() <= e_w).all()
    assert not ((dt == 0) & (dr == 0) & (dc == 0)).any()


@pytest.mark.parametrize("order", O.ORDERS)
def test_waves_are_independent_and_respect_dependencies(order):
    table = O.context_table((2, 4, 6), order, (1, 1, 1))
    for p in range(table.num_patches):
        deps = table.ctx_index[p][table.ctx_index[p] >= 0]
        assert all(table.wave[d] < table.wave[p] for d in deps.tolist())
    assert sorted(torch.cat(table.waves()).tolist()) == list(range(table.num_patches))


def test_wavefront_step_count_raster():
    # docs/design.md, "6. Beyond the paper": raster order, e_h = e_w = 1 -> about Hp + 2 * Wp waves instead of Hp * Wp
    Hp, Wp = 6, 10
    table = O.context_table((1, Hp, Wp), "down", (0, 1, 1))
    assert table.num_waves == 2 * (Hp - 1) + Wp
    assert len(table.steps(wavefront=False)) == Hp * Wp


def test_slots_do_not_grow_with_width():
    slots = [O.context_table((1, 2, w), "right", (0, 1, 1)).slots_needed(False) for w in (5, 20, 40, 150)]
    assert len(set(slots)) == 1 and slots[0] <= 2 * 2 + 1


def test_tables_are_cached():
    assert O.context_table((1, 3, 3), "down", (0, 1, 1)) is O.context_table((1, 3, 3), "down", [0, 1, 1])


@pytest.mark.parametrize("bad", [(-1, 1, 1), (0, -2, 1), (1, 1)])
def test_bad_extents(bad):
    with pytest.raises(ValueError, match="extents"):
        O.context_table((1, 2, 2), "down", bad)


def test_bad_order_and_shape():
    with pytest.raises(ValueError, match="unknown order"):
        O.context_table((1, 2, 2), "diagonal", (0, 1, 1))
    with pytest.raises(ValueError, match="patch canvas"):
        O.context_table((1, 0, 2), "down", (0, 1, 1))


def test_offset_ids_are_a_bijection():
    ext = (1, 2, 1)
    ids = [O.offset_id(dt, dr, dc, ext) for dt, dr, dc in itertools.product(range(-1, 1), range(-2, 3), range(-1, 2))]
    assert sorted(ids) == list(range(O.num_offsets(ext)))
    assert O.text_offset_id(ext) == O.num_offsets(ext)
