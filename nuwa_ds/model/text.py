"""Text conditioning: a transformers text encoder, rebuilt from its config dict or loaded from a
local directory (no hub access). Its output states become an always-visible context block."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn


def _encoder_class(model_type: str):
    import transformers

    if model_type in ("t5", "mt5", "umt5"):
        return {"t5": transformers.T5EncoderModel, "mt5": transformers.MT5EncoderModel,
                "umt5": transformers.UMT5EncoderModel}[model_type]
    if model_type == "clip_text_model":
        return transformers.CLIPTextModel
    return transformers.AutoModel


def build_text_encoder(hf_config: dict) -> tuple[nn.Module, int]:
    """An encoder with random weights from a config dict; returns (module, hidden width)."""
    import transformers

    data = dict(hf_config)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.text_encoder needs a 'model_type' (a transformers config dict)")
    config = transformers.AutoConfig.for_model(model_type, **data)
    cls = _encoder_class(model_type)
    encoder = cls(config) if cls is not transformers.AutoModel else cls.from_config(config)
    width = getattr(config, "d_model", None) or getattr(config, "hidden_size")
    return encoder, width


def check_text_length(encoder_config, max_text_len: int):
    """Captions are padded to ``max_text_len`` tokens: an encoder with learned positions (BERT, CLIP;
    not T5) must have that many, or its embedding fails with a shape error deep in transformers."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if positions is not None and positions < max_text_len:
        raise ValueError(f"the text encoder reads at most {positions} tokens but captions are padded to "
                         f"model.max_text_len={max_text_len}: set model.max_text_len={positions} (or less)")


def load_text_encoder(path: str):
    """(encoder, tokenizer) from a local transformers directory; raises FileNotFoundError if absent."""
    import transformers

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}/config.json not found: give a local transformers model directory")
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    encoder = _encoder_class(config.model_type).from_pretrained(directory, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokenizer.padding_side = "right"
    return encoder, tokenizer
