"""Synthetic token grids: learnable, deterministic, exactly resumable; for smoke tests and benchmarks.

Each example is a periodic pattern ``(a*row + b*col + c*frame + d) mod vocab`` with small random
integers: the next token follows from the context, so the loss falls quickly, while no two
examples need be alike. Batch ``i`` of rank ``r`` depends only on (seed, r, i).
"""

from __future__ import annotations

import random

import torch

from nuwa_ds.model.orders import ORDERS


def synthetic_grid(generator: torch.Generator, canvas, vocab: int) -> torch.Tensor:
    T, H, W = canvas
    a, b, c, d = (int(x) for x in torch.randint(0, 7, (4,), generator=generator))
    t, r, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return ((a * r + b * w + c * t + d * 11) % vocab).long()


class SyntheticLoader:
    def __init__(self, data_cfg, model_cfg, rank: int, world_size: int, micro_batch_size: int):
        self.cfg, self.vocab = data_cfg, model_cfg.vocab_size
        self.rank, self.world_size, self.batch = rank, world_size, micro_batch_size
        self.position = 0  # batches already yielded by this rank
        self.canvases = [tuple(data_cfg.canvas), *[tuple(c) for c in data_cfg.canvases]]
        self.orders = [o for o, w in data_cfg.orders.items() if w > 0]
        self.weights = [data_cfg.orders[o] for o in self.orders]

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "seed": self.cfg.seed, "rank": self.rank, "position": self.position}

    def load_state_dict(self, state: dict):
        if state.get("kind") != "synthetic":
            raise ValueError(f"loader state of kind {state.get('kind')!r} cannot resume a synthetic loader")
        self.position = int(state["position"])

    def batch_at(self, index: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.cfg.seed, self.rank, index)) & 0x7FFFFFFF)
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        canvas = self.canvases[rng.randrange(len(self.canvases))] if len(self.canvases) > 1 else self.canvases[0]
        tokens = torch.stack([synthetic_grid(g, canvas, self.vocab) for _ in range(self.batch)])
        orders = rng.choices(self.orders, weights=self.weights, k=self.batch)
        assert all(o in ORDERS for o in orders)
        return {"tokens": tokens, "orders": orders, "text": None, "rows": torch.zeros(self.batch, dtype=torch.long)}

    def __iter__(self):
        while True:
            batch = self.batch_at(self.position)
            self.position += 1
            yield batch
