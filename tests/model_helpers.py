"""Shared test fixtures: tiny models with non-trivial position biases and a tiny text encoder."""

from __future__ import annotations

import torch

from kernels._reference import rel_error as relative_error  # noqa: F401  (the model tests' measure)
from nuwa_ds import NuwaConfig, NuwaInfinity


def tiny_model(seed: int = 0, **overrides) -> NuwaInfinity:
    """The `tiny` preset with random (not zero) offset biases (and aligned-token biases, with
    ``aligned_bias=True``), so position handling is exercised."""
    torch.manual_seed(seed)
    model = NuwaInfinity(NuwaConfig.preset("tiny", **overrides))
    with torch.no_grad():
        for block in [*model.global_model.blocks, *model.local_model.blocks]:
            block.offset_bias.normal_(0.0, 1.0)
            if block.aligned_bias is not None:
                block.aligned_bias.normal_(0.0, 2.0)
        for p in (model.local_model.order_embed, model.local_model.bos, model.global_model.pos,
                  model.local_model.pos):
            p.normal_(0.0, 0.5)
    return model.eval()


def write_tiny_text_encoder(directory) -> str:
    """A 1-layer T5 encoder with the byte-level ByT5 tokenizer (needs no vocabulary files)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(1)
    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu")
    T5EncoderModel(config).save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return str(directory)
