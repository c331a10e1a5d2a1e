"""Training data: WebDataset token shards (``loader.py``) or synthetic token grids (``synthetic.py``).

The contract every source keeps (the training loop relies on nothing else):

* iterating yields batches ``{"tokens": LongTensor [B, T, H, W], "orders": list[str] (B),
  "text": None | {"input_ids": LongTensor [B, S], "attention_mask": LongTensor [B, S]},
  "rows": LongTensor [B]}`` (``rows``: the patch row of each example's top in its source picture,
  read by models with ``model.row_embedding``),
  every batch of one rank the same shape, every rank the same number of batches (no hangs);
* ``state_dict()`` returns a small JSON-able dict (seed, epoch, position...), saved in every
  checkpoint; ``load_state_dict(state)`` on a freshly built loader continues with exactly the
  batches the saved one would have produced next.
"""

from __future__ import annotations


def build_loader(data_cfg, model_cfg, rank: int, world_size: int, micro_batch_size: int, text_tokenizer=None):
    """The loader for one rank: synthetic grids when ``data_cfg.shards`` is None, else shards."""
    # the loaders import torch: imported here, not with the package, so that the torch-free commands
    # (`nuwa-ds landscapes`, `landscape-videos`) start at once
    if data_cfg.shards is None:
        from data_pipelines.synthetic import SyntheticLoader

        return SyntheticLoader(data_cfg, model_cfg, rank, world_size, micro_batch_size)
    from data_pipelines.loader import ShardLoader

    return ShardLoader(data_cfg, model_cfg, rank, world_size, micro_batch_size, text_tokenizer=text_tokenizer)
