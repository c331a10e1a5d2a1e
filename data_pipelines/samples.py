"""The token-shard sample format, written by ``prepare.py`` and read by ``loader.py``.

A sample in a WebDataset tar is two members with the same key:

* ``{key}.tokens.npy`` - int16 ``[T, H, W]`` VQ token grid (T = 1 for a picture), a plain ``.npy``
  (read with ``allow_pickle=False``; an object array is rejected);
* ``{key}.json``       - metadata: ``source``, ``kind`` ('image' / 'video'), ``source_hw``,
  ``resized_hw``, ``crop_yx``, ``pixel_hw``, ``token_thw``, ``downsample``, ``codebook_size``,
  ``tokenizer_sha256`` (the hash of the tokenizer's weights that made the tokens, as in the manifest's
  ``settings.tokenizer.weights_sha256``; shards of earlier versions lack it), ``fps`` (None for
  pictures), ``frame_start``, ``caption`` (None when there is none).

Readers need only the tokens and take the optional keys with ``meta.get``, so an older shard without
``tokenizer_sha256`` reads the same.

Anything else is a bad sample with a reason (:class:`BadSample`), which readers count and log.
"""

from __future__ import annotations

import io
import json

import numpy as np

TOKENS = "tokens.npy"
META = "json"
TOKEN_DTYPE = np.int16


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def encode_sample(key: str, tokens: np.ndarray, meta: dict) -> dict:
    """The dict ``webdataset.TarWriter(encoder=False)`` writes: raw bytes per member."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [T, H, W], got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max):
        raise ValueError("tokens do not fit int16")
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain '.' (WebDataset splits names at the first dot)")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE), allow_pickle=False)
    return {"__key__": key, TOKENS: buffer.getvalue(),
            META: json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")}


def decode_tokens(data: bytes | None) -> np.ndarray:
    """``tokens.npy`` bytes -> int16 ``[T, H, W]``; BadSample otherwise."""
    if data is None:
        raise BadSample("missing_tokens")
    try:
        tokens = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable array is one kind of bad sample
        raise BadSample("unreadable_tokens", str(exc)[:120]) from None
    if tokens.dtype != TOKEN_DTYPE:
        raise BadSample("wrong_dtype", f"{tokens.dtype} instead of int16")
    if tokens.ndim != 3 or 0 in tokens.shape:
        raise BadSample("wrong_shape", f"{tokens.shape} instead of [T, H, W]")
    return tokens


def decode_meta(data: bytes | None) -> dict:
    if data is None:
        raise BadSample("missing_json")
    try:
        meta = json.loads(data.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001
        raise BadSample("unreadable_json", str(exc)[:120]) from None
    if not isinstance(meta, dict):
        raise BadSample("unreadable_json", "not a JSON object")
    return meta


def decode_sample(raw: dict) -> tuple[np.ndarray, dict]:
    """A WebDataset raw sample (member suffix -> bytes) -> (tokens, meta); BadSample if unusable."""
    tokens = decode_tokens(raw.get(TOKENS))
    meta = decode_meta(raw.get(META))
    return tokens, meta
