"""Generation orders (the Arbitrary Direction Controller) and Nearby Context Pool tables.

A canvas of patches has shape ``(T, Hp, Wp)``: frames, patch rows, patch columns. Patches are
addressed by their *canonical* index ``(t * Hp + r) * Wp + c`` everywhere in the model; an order
only decides in which sequence they are generated, and hence which neighbours are already there
when a patch is made.

For one (shape, order, extents) this module builds the :class:`ContextTable` that every other
part reads: training attention (which key blocks each query patch sees), the generation pool
(which slots to read, when a slot may be freed) and the wavefront schedule. The order names and the
offset arithmetic (``ORDERS``, ``check_order``, ``offset_id``...) are in ``geometry.py`` (no torch)
and re-exported here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from nuwa_ds.model.geometry import (ORDERS, check_extents, check_order, num_offsets, offset_id, own_offset_id,
                                    text_offset_id)

__all__ = ["ORDERS", "check_order", "check_extents", "num_offsets", "offset_id", "own_offset_id", "text_offset_id",
           "patch_sequence", "ContextTable", "context_table"]


def patch_sequence(shape, order: str) -> torch.Tensor:
    """Canonical patch indices in generation order, LongTensor [N]. Frames are always outermost."""
    T, Hp, Wp = shape
    check_order(order)
    rows = torch.arange(Hp)
    cols = torch.arange(Wp)
    if order == "up":
        rows = rows.flip(0)
    if order == "left":
        cols = cols.flip(0)
    if order in ("down", "up"):  # row by row, each row left -> right
        r, c = torch.meshgrid(rows, cols, indexing="ij")
    else:  # column by column, each column top -> bottom
        c, r = torch.meshgrid(cols, rows, indexing="ij")
    within_frame = (r * Wp + c).reshape(-1)
    frames = torch.arange(T).repeat_interleave(Hp * Wp) * (Hp * Wp)
    return frames + within_frame.repeat(T)


@dataclass(frozen=True)
class ContextTable:
    """Everything the model needs to know about one (shape, order, extents).

    Attributes (N = T * Hp * Wp patches, C = most context patches any patch has):
      sequence:      [N] canonical patch index at each step of the order.
      position:      [N] step at which each canonical patch is generated (inverse of sequence).
      ctx_index:     [N, C] canonical indices of each patch's context patches, -1 for padding.
                     Valid entries first, sorted by offset id.
      ctx_offset:    [N, C] bias-table id of each context entry's offset (own_offset for padding).
      last_consumer: [N] step of the last patch that reads this patch as context; the patch's own
                     step when nobody does. After that step its pool slot may be freed.
      wave:          [N] wavefront index: 0 for patches without context, else 1 + the largest
                     wave among its context patches. Patches of one wave are independent.
    """

    shape: tuple[int, int, int]
    order: str
    extents: tuple[int, int, int]
    sequence: torch.Tensor
    position: torch.Tensor
    ctx_index: torch.Tensor
    ctx_offset: torch.Tensor
    last_consumer: torch.Tensor
    wave: torch.Tensor

    @property
    def num_patches(self) -> int:
        return self.sequence.numel()

    @property
    def max_context(self) -> int:
        return self.ctx_index.shape[1]

    @property
    def num_waves(self) -> int:
        return int(self.wave.max()) + 1 if self.num_patches else 0

    def waves(self) -> list[torch.Tensor]:
        """Canonical patch indices of each wave, each wave listed in generation order."""
        wave_in_order = self.wave[self.sequence]
        return [self.sequence[wave_in_order == w] for w in range(self.num_waves)]

    def steps(self, wavefront: bool) -> list[torch.Tensor]:
        """The schedule: one tensor of canonical patch indices per sequential step."""
        if wavefront:
            return self.waves()
        return [self.sequence[i : i + 1] for i in range(self.num_patches)]

    def lifetimes(self, wavefront: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(step at which each canonical patch is made, step after which its slot is free: that of
        its last consumer) when following ``steps(wavefront)``; both [N]."""
        step_of = torch.empty(self.num_patches, dtype=torch.long)
        for s, patches in enumerate(self.steps(wavefront)):
            step_of[patches] = s
        return step_of, step_of[self.sequence[self.last_consumer]]

    def slots_needed(self, wavefront: bool) -> int:
        """Most patches alive at once (allocated before a step, freed after their last consumer's
        step) when following ``steps(wavefront)``: the pool's slot count per canvas."""
        if not self.num_patches:
            return 0
        made, freed = self.lifetimes(wavefront)
        alive = torch.zeros(int(freed.max()) + 2, dtype=torch.long)
        alive.index_add_(0, made, torch.ones_like(made))
        alive.index_add_(0, freed + 1, -torch.ones_like(made))
        return int(alive.cumsum(0).max())


def _canvas_shape(shape) -> tuple[int, int, int]:
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or any(s < 1 for s in dims):
        raise ValueError(f"patch canvas must be (T, Hp, Wp) with every size >= 1, got {shape!r}")
    return dims


@functools.lru_cache(maxsize=256)
def _build_table(shape: tuple[int, int, int], order: str, extents: tuple[int, int, int]) -> ContextTable:
    T, Hp, Wp = shape
    e_t, e_h, e_w = extents
    N = T * Hp * Wp
    sequence = patch_sequence(shape, order)
    position = torch.empty(N, dtype=torch.long)
    position[sequence] = torch.arange(N)

    t, r, c = torch.meshgrid(torch.arange(T), torch.arange(Hp), torch.arange(Wp), indexing="ij")
    t, r, c = t.reshape(-1), r.reshape(-1), c.reshape(-1)
    candidates, offsets = [], []
    for dt in range(-e_t, 1):
        for dr in range(-e_h, e_h + 1):
            for dc in range(-e_w, e_w + 1):
                if (dt, dr, dc) == (0, 0, 0):
                    continue
                kt, kr, kc = t + dt, r + dr, c + dc
                inside = (kt >= 0) & (kr >= 0) & (kr < Hp) & (kc >= 0) & (kc < Wp)
                key = torch.where(inside, (kt * Hp + kr) * Wp + kc, torch.zeros_like(kt))
                earlier = inside & (position[key] < position)
                candidates.append(torch.where(earlier, key, torch.full_like(key, -1)))
                offsets.append(offset_id(dt, dr, dc, extents))
    own = own_offset_id(extents)
    if candidates:
        cand = torch.stack(candidates, dim=1)  # [N, all offsets], already sorted by offset id
        off = torch.tensor(offsets).expand_as(cand)
        valid = cand >= 0
        # stable sort moves valid entries to the front while keeping offset-id order among them
        perm = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
        cand, off, valid = cand.gather(1, perm), off.gather(1, perm), valid.gather(1, perm)
        C = int(valid.sum(1).max()) if N else 0
        ctx_index = cand[:, :C].contiguous()
        ctx_offset = torch.where(valid[:, :C], off[:, :C], torch.full_like(off[:, :C], own)).contiguous()
    else:
        ctx_index = torch.empty(N, 0, dtype=torch.long)
        ctx_offset = torch.empty(N, 0, dtype=torch.long)

    # last consumer: the latest step among the patches that list this one as context
    last_consumer = position.clone()
    valid = ctx_index >= 0
    if valid.any():
        consumers = position.unsqueeze(1).expand_as(ctx_index)[valid]
        last_consumer.scatter_reduce_(0, ctx_index[valid], consumers, reduce="amax")

    # wave: longest chain of context dependencies ending at the patch (visited in order)
    wave = torch.zeros(N, dtype=torch.long)
    for p in sequence.tolist():
        deps = ctx_index[p][ctx_index[p] >= 0]
        if deps.numel():
            wave[p] = wave[deps].max() + 1
    return ContextTable(shape, order, extents, sequence, position, ctx_index, ctx_offset, last_consumer, wave)


def context_table(shape, order: str, extents) -> ContextTable:
    """The cached :class:`ContextTable` of a patch canvas ``(T, Hp, Wp)``."""
    check_order(order)
    return _build_table(_canvas_shape(shape), order, check_extents(extents))
