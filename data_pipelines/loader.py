"""Token shards -> training batches, resumable to the exact batch (the loader contract in ``__init__.py``).

How a rank's batches are made (docs/decisions.md, "Loader"):

* The rank runs ``S = max(1, num_workers)`` **streams**; the DataLoader's workers take batches from
  them in turn, so batch ``j`` of the rank is batch ``j // S`` of stream ``j % S``.
* **Shards are split, then resampled.** Stream ``s`` of rank ``r`` is global stream
  ``g = r * S + s`` of ``world_size * S``; it draws shards with replacement from its own slice
  ``shards[g::world_size * S]`` (our explicit node + worker splitter). With fewer shards than global
  streams every stream draws from all shards (different seeds), so no worker is ever left empty.
* A stream works in **segments**: segment ``k`` draws shards with the RNG seeded by
  ``(seed, restart, r, s, k)``, reads whole shards (WebDataset's tar reader) until ``shuffle_buffer``
  usable samples are pooled, shuffles them, puts each sample in the canvas (aspect bucket) that fits it
  and is closest to its aspect ratio, and cuts every bucket into full micro-batches (a bucket's
  remainder is dropped) in a shuffled order. Crops (patch-aligned), orders and caption dropout of
  batch ``b`` come from an RNG seeded by ``(..., k, b)``.
* So a stream's position is just ``(segment, batch)``. Each batch carries its stream's position and
  skip counts back to the main process; ``state_dict()`` is those positions plus the rank's batch
  count, and ``load_state_dict()`` restarts every stream where it stood: the same batches follow,
  with any number of workers, on every rank.

Every rank yields a batch per step forever (shards are resampled), so no collective waits on a rank
that ran dry. Corrupt input is skipped, counted by reason and logged with its shard and key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipelines.samples import BadSample, decode_sample
from nuwa_ds.model.orders import ORDERS
from nuwa_ds.preemption import ignore_stop_signals

log = logging.getLogger("nuwa_ds.data")
MAX_SHARDS_PER_SEGMENT = 64
"""A segment stops reading shards here even if it has fewer than shuffle_buffer samples."""
MAX_EMPTY_SEGMENTS = 20
"""Segments in a row without a single batch before the stream gives up with an error."""


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a stream needs (picklable, sent to the DataLoader workers)."""

    urls: tuple[str, ...]
    canvases: tuple[tuple[int, int, int], ...]
    patch_size: int
    vocab_size: int
    batch_size: int
    orders: tuple[str, ...]
    order_weights: tuple[float, ...]
    caption_dropout: float
    max_text_len: int
    shuffle_buffer: int
    seed: int
    rank: int
    world_size: int
    num_streams: int

    @classmethod
    def build(cls, data_cfg, model_cfg, urls, batch_size: int, *, rank: int = 0, world_size: int = 1,
              num_streams: int = 1, caption_dropout: float | None = None,
              shuffle_buffer: int | None = None) -> "LoaderSpec":
        """The spec of ``urls`` under the data / model config (canvases and orders checked);
        ``caption_dropout`` / ``shuffle_buffer`` default to the data config's."""
        P = model_cfg.patch_size
        canvases = tuple(tuple(int(x) for x in c) for c in [data_cfg.canvas, *data_cfg.canvases])
        for canvas in canvases:
            if canvas[1] % P or canvas[2] % P:
                raise ValueError(f"data.canvas {canvas}: H and W must be multiples of model.patch_size={P}")
        orders = tuple(o for o, w in data_cfg.orders.items() if w > 0)
        for order in orders:
            if order not in ORDERS:
                raise ValueError(f"data.orders: unknown order {order!r}")
        return cls(urls=tuple(urls), canvases=tuple(dict.fromkeys(canvases)), patch_size=P,
                   vocab_size=model_cfg.vocab_size, batch_size=batch_size, orders=orders,
                   order_weights=tuple(float(data_cfg.orders[o]) for o in orders),
                   caption_dropout=data_cfg.caption_dropout if caption_dropout is None else caption_dropout,
                   max_text_len=model_cfg.max_text_len,
                   shuffle_buffer=data_cfg.shuffle_buffer if shuffle_buffer is None else shuffle_buffer,
                   seed=data_cfg.seed, rank=rank, world_size=world_size, num_streams=num_streams)

    def fingerprint(self) -> str:
        """What must not change for a saved state to resume the same batches."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("rank",)}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def shard_pool(self, stream: int) -> tuple[str, ...]:
        total = self.world_size * self.num_streams
        if len(self.urls) < total:
            return self.urls
        return self.urls[self.rank * self.num_streams + stream::total]


def expand_shards(pattern: str) -> list[str]:
    """A brace pattern (``'a-{000..009}.tar'``, several joined by ``::``) -> shard URLs; local paths
    must exist (a FileNotFoundError names how many are missing)."""
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    if not urls:
        raise ValueError(f"data.shards {pattern!r} names no shards")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards of data.shards={pattern!r} do not exist "
                                f"(first: {missing[0]})")
    return urls


def check_shards(pattern: str):
    """Every local shard file of a brace pattern exists (URLs and pipes are the loader's business)."""
    if "://" in pattern or pattern.startswith("pipe:"):
        return
    import braceexpand

    paths = list(braceexpand.braceexpand(pattern))
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"data.shards: {len(missing)} of {len(paths)} shard files do not exist (first: {missing[0]}); "
                         f"fix the pattern or write the shards with `nuwa-ds prepare`")


def source_patch_row(meta: dict, patch_size: int) -> int:
    """The patch row at which a sample's token grid starts in its (resized) source picture:
    ``prepare`` records the crop's top in pixels (``crop_yx``) and the tokenizer's factor
    (``downsample``); 0 when the sample does not say."""
    crop, f = meta.get("crop_yx"), meta.get("downsample")
    if not crop or not f:
        return 0
    return int(crop[0]) // (int(f) * patch_size)


# ----------------------------------------------------------------------------------------------
# Reading shards


class SkipLog:
    """Counts skipped input by reason; logs each (shard, key, reason) once per process."""

    def __init__(self):
        self.counts: Counter = Counter()
        self._seen: set = set()

    def skip(self, reason: str, shard: str, key: str | None, detail: str = "", count: bool = True):
        if count:
            self.counts[reason] += 1
        if (shard, key, reason) not in self._seen:
            self._seen.add((shard, key, reason))
            log.warning("skipping %s in shard %s%s%s", reason, shard, f" key {key}" if key else "",
                        f": {detail}" if detail else "")


def read_shard(url: str, skips: SkipLog, count: bool = True) -> list[tuple[np.ndarray, dict, str]]:
    """Every usable sample of one shard as (tokens int16 [T, H, W], meta, key); the rest is skipped."""
    from webdataset.tariterators import tarfile_samples

    errors: list[Exception] = []

    def keep_going(exn: Exception) -> bool:
        errors.append(exn)
        return True

    samples = []
    for raw in tarfile_samples([{"url": url}], handler=keep_going):
        key = raw.get("__key__")
        try:
            tokens, meta = decode_sample(raw)
        except BadSample as bad:
            skips.skip(bad.reason, url, key, str(bad), count)
            continue
        samples.append((tokens, meta, key))
    if errors:
        truncated = samples or any(isinstance(e, (tarfile.ReadError, EOFError)) and "unexpected end" in str(e)
                                   for e in errors)
        skips.skip("truncated_shard" if truncated else "unreadable_shard", url, None, str(errors[0])[:160], count)
    return samples


def choose_canvas(shape, canvases) -> tuple[int, int, int] | None:
    """The canvas a sample of token shape ``(T, H, W)`` is bucketed into: the fitting canvas closest in
    aspect ratio to the sample (larger one on a tie); None when it fits none (too small)."""
    T, H, W = shape
    fits = [c for c in canvases if c[0] <= T and c[1] <= H and c[2] <= W]
    if not fits:
        return None
    aspect = np.log(H / W)
    return min(fits, key=lambda c: (abs(np.log(c[1] / c[2]) - aspect), -c[0] * c[1] * c[2]))


def usable_samples(url: str, spec: LoaderSpec, skips: SkipLog, count: bool = True):
    """The samples of one shard whose tokens fit the vocabulary and some canvas, as (tokens, meta,
    key); the others are skipped (and counted) by reason."""
    for tokens, meta, key in read_shard(url, skips, count):
        if int(tokens.min()) < 0 or int(tokens.max()) >= spec.vocab_size:
            skips.skip("token_out_of_range", url, key, f"vocab_size={spec.vocab_size}", count)
        elif choose_canvas(tokens.shape, spec.canvases) is None:
            skips.skip("too_small", url, key, f"{tokens.shape} < every canvas", count)
        else:
            yield tokens, meta, key


def full_batches(buckets: dict, batch_size: int) -> list[tuple]:
    """(canvas, [sample indices]) for every full micro-batch of each canvas bucket, in bucket order
    (a bucket's remainder is dropped)."""
    B = batch_size
    return [(c, idx[k:k + B]) for c, idx in buckets.items() for k in range(0, len(idx) - B + 1, B)]


# ----------------------------------------------------------------------------------------------
# One stream


def _aligned_offset(rng: np.random.Generator, slack: int, patch: int) -> int:
    """A crop origin in [0, slack] on the patch grid (patch-aligned crops)."""
    return int(rng.integers(0, slack // patch + 1)) * patch


class TokenStream:
    """Batches of one stream, from position ``(segment, batch)`` on; see the module docstring."""

    def __init__(self, spec: LoaderSpec, stream: int, start: tuple[int, int], restart: int, text_tokenizer=None):
        self.spec, self.stream, self.restart = spec, stream, restart
        self.segment, self.batch = start
        self.text_tokenizer = text_tokenizer
        self.skips = SkipLog()
        self.pool = spec.shard_pool(stream)

    def _rng(self, *extra: int) -> np.random.Generator:
        s = self.spec
        return np.random.default_rng([s.seed, self.restart, s.rank, self.stream, *extra])

    def build_segment(self, segment: int, count: bool = True):
        """(samples, batches): batches are (canvas, [sample indices]) in the order they are served."""
        spec, rng = self.spec, self._rng(segment)
        samples: list[tuple[np.ndarray, dict, str]] = []
        for _ in range(MAX_SHARDS_PER_SEGMENT):
            url = self.pool[int(rng.integers(len(self.pool)))]
            samples.extend(usable_samples(url, spec, self.skips, count))
            if len(samples) >= spec.shuffle_buffer:
                break
        buckets: dict[tuple, list[int]] = {c: [] for c in spec.canvases}
        for i in rng.permutation(len(samples)):
            buckets[choose_canvas(samples[i][0].shape, spec.canvases)].append(int(i))
        batches = full_batches(buckets, spec.batch_size)
        return samples, [batches[i] for i in rng.permutation(len(batches))]

    def make_batch(self, samples, canvas, indices, segment: int, index: int) -> dict:
        spec, rng = self.spec, self._rng(segment, index, 1)
        T, H, W = canvas
        tokens = np.empty((len(indices), T, H, W), dtype=np.int16)
        rows = np.empty(len(indices), dtype=np.int64)
        for n, i in enumerate(indices):
            grid = samples[i][0]
            t0 = int(rng.integers(0, grid.shape[0] - T + 1))
            y0 = _aligned_offset(rng, grid.shape[1] - H, spec.patch_size)
            x0 = _aligned_offset(rng, grid.shape[2] - W, spec.patch_size)
            tokens[n] = grid[t0:t0 + T, y0:y0 + H, x0:x0 + W]
            rows[n] = source_patch_row(samples[i][1], spec.patch_size) + y0 // spec.patch_size
        weights = np.asarray(spec.order_weights, dtype=np.float64)
        orders = [spec.orders[k] for k in rng.choice(len(spec.orders), size=len(indices), p=weights / weights.sum())]
        dropped = rng.random(len(indices)) < spec.caption_dropout
        captions = [None if drop else samples[i][1].get("caption") for i, drop in zip(indices, dropped)]
        return {"tokens": torch.from_numpy(tokens).long(), "orders": orders, "text": self.tokenize(captions),
                "rows": torch.from_numpy(rows)}

    def tokenize(self, captions: list) -> dict | None:
        """Right-padded to max_text_len; a dropped or missing caption is an all-zero attention_mask row."""
        tok = self.text_tokenizer
        if tok is None:
            return None
        texts = [c if isinstance(c, str) and c.strip() else "" for c in captions]
        enc = tok(texts, padding="max_length", truncation=True, max_length=self.spec.max_text_len,
                  return_tensors="pt")
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        empty = torch.tensor([not t for t in texts])
        mask[empty] = 0
        ids[empty] = tok.pad_token_id if tok.pad_token_id is not None else 0
        return {"input_ids": ids, "attention_mask": mask}

    def __iter__(self):
        empty, resuming = 0, self.batch > 0
        while True:
            # rebuilding the segment we resume inside must not count its skips a second time
            samples, batches = self.build_segment(self.segment, count=not resuming)
            resuming = False
            if not batches:
                empty += 1
                if empty >= MAX_EMPTY_SEGMENTS:
                    raise RuntimeError(
                        f"data stream {self.stream} of rank {self.spec.rank}: {empty} segments in a row gave no "
                        f"full batch of {self.spec.batch_size} (skipped so far: {dict(self.skips.counts)}); the "
                        f"shards hold too few usable samples for the canvases {list(self.spec.canvases)}")
            else:
                empty = 0
            for index in range(self.batch, len(batches)):
                canvas, indices = batches[index]
                batch = self.make_batch(samples, canvas, indices, self.segment, index)
                following = (self.segment, index + 1) if index + 1 < len(batches) else (self.segment + 1, 0)
                batch["_stream"] = {"stream": self.stream, "segment": following[0], "batch": following[1],
                                    "counts": dict(self.skips.counts)}
                yield batch
            self.segment, self.batch = self.segment + 1, 0


class _StreamsDataset(torch.utils.data.IterableDataset):
    """Worker ``w`` serves stream ``(position + w) % S``: the DataLoader's round-robin over workers then
    continues the rank's sequence where ``position`` left it."""

    def __init__(self, spec: LoaderSpec, position: int, streams: list, restart: int, text_tokenizer):
        self.spec, self.position, self.streams = spec, position, streams
        self.restart, self.text_tokenizer = restart, text_tokenizer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        stream = (self.position + worker) % self.spec.num_streams
        yield from TokenStream(self.spec, stream, tuple(self.streams[stream]), self.restart, self.text_tokenizer)


# ----------------------------------------------------------------------------------------------
# The loader


class ShardLoader:
    """Batches for one rank from WebDataset token shards (``data_cfg.shards``); see the module docstring.

    ``state_dict()`` is this rank's state. To checkpoint every rank in one file, gather the states
    (e.g. ``torch.distributed.all_gather_object``) and save ``{"ranks": [state_0, state_1, ...]}``:
    ``load_state_dict`` accepts that too and takes its own rank's entry."""

    def __init__(self, data_cfg, model_cfg, rank: int, world_size: int, micro_batch_size: int, text_tokenizer=None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not data_cfg.shards:
            raise ValueError("data.shards is empty: give a shard pattern (nuwa-ds prepare prints it)")
        self.cfg = data_cfg
        self.num_workers = data_cfg.num_workers
        self.spec = LoaderSpec.build(data_cfg, model_cfg, expand_shards(data_cfg.shards), micro_batch_size,
                                     rank=rank, world_size=world_size, num_streams=max(1, data_cfg.num_workers))
        self.text_tokenizer = text_tokenizer
        self.position = 0
        self.restart = 0
        self.streams = [[0, 0] for _ in range(self.spec.num_streams)]
        self._base_counts: Counter = Counter()
        self._session_counts: dict[int, dict] = {}

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def counts(self) -> dict:
        """Skipped input by reason (missing_tokens, wrong_dtype, unreadable_json, truncated_shard...)."""
        total = Counter(self._base_counts)
        for counts in self._session_counts.values():
            total.update(counts)
        return dict(total)

    def state_dict(self) -> dict:
        return {"kind": "shards", "version": 1, "rank": self.rank, "world_size": self.spec.world_size,
                "num_streams": self.spec.num_streams, "fingerprint": self.spec.fingerprint(),
                "seed": self.spec.seed, "restart": self.restart, "position": self.position,
                "streams": [list(s) for s in self.streams], "counts": self.counts}

    def load_state_dict(self, state: dict):
        if "ranks" in state:
            ranks = state["ranks"]
            if self.rank >= len(ranks):
                raise ValueError(f"loader state holds {len(ranks)} ranks; this is rank {self.rank}")
            state = ranks[self.rank]
        if state.get("kind") != "shards":
            raise ValueError(f"loader state of kind {state.get('kind')!r} cannot resume a shard loader")
        if state.get("rank") != self.rank:
            raise ValueError(f"loader state of rank {state.get('rank')} given to rank {self.rank}")
        self.position = int(state["position"])
        self._base_counts, self._session_counts = Counter(state.get("counts", {})), {}
        if state.get("fingerprint") == self.spec.fingerprint():
            self.restart = int(state["restart"])
            self.streams = [list(s) for s in state["streams"]]
            return
        # Different shards, canvases, batch size, workers or world size: the old sequence cannot be
        # continued. Start fresh streams on new seeds rather than replay the data from its beginning.
        warnings.warn(f"rank {self.rank}: the data settings changed since this loader state was saved; "
                      f"continuing with a new data order (exact resume needs the same shards, canvases, "
                      f"batch size, workers and world size)", stacklevel=2)
        self.restart = int(state.get("restart", 0)) + self.position + 1
        self.streams = [[0, 0] for _ in range(self.spec.num_streams)]

    def __iter__(self):
        self._base_counts, self._session_counts = Counter(self.counts), {}  # fold the last session in
        dataset = _StreamsDataset(self.spec, self.position, [list(s) for s in self.streams], self.restart,
                                  self.text_tokenizer)
        if self.num_workers == 0:
            batches = iter(dataset)
        else:
            batches = iter(torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=self.cfg.prefetch_factor,
                persistent_workers=False, worker_init_fn=ignore_stop_signals))  # the trainer owns the stop
        for batch in batches:
            info = batch.pop("_stream")
            self.streams[info["stream"]] = [info["segment"], info["batch"]]
            self._session_counts[info["stream"]] = info["counts"]
            self.position += 1
            yield batch
