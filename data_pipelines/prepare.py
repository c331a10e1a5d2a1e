"""``nuwa-ds prepare``: pictures / videos (+ captions) -> VQ tokens -> WebDataset tar shards.

Geometry (docs/decisions.md, "Shards"):

* A picture is resized (Lanczos, aspect kept) so its **short side** is ``image_size`` pixels
  (``image_size=0`` keeps the native size), then both sides are cut down to multiples of
  ``align = patch_size * f`` pixels by a centred crop (less than ``align`` pixels lost per side pair),
  so every token grid is a whole number of patches.
* A long panorama stays whole while its long side is at most ``max_aspect`` x its short side; beyond
  that it is cut into the fewest equal, evenly spaced pieces of that length that cover it (each piece
  its own sample, keys ``..._p00``, ``..._p01``; pieces may overlap slightly, nothing is dropped).
* A video is decoded with PyAV, frames sampled at ``fps`` (every frame if the source is slower), each
  frame under the same rule, and cut into clips of ``clip_frames`` consecutive sampled frames (keys
  ``..._c0000``...); a tail shorter than a clip is dropped, unless the whole video is shorter than
  one clip, which then becomes one shorter clip.

Pictures and short videos are decoded ahead in ``workers`` threads; tokenizing runs in batches of
``batch_size`` frames (across samples and sources) on the GPU when there is one (``device='auto'``);
samples are written in source order, so the samples, their keys and JSON do not depend on either
(tokens only through the encoder's rounding, which can move with the batch: docs/decisions.md,
"Prepare: videos decoded ahead").
Each finished shard updates ``prepare_state.json`` atomically; running the same command again after
an interruption continues from the last finished shard and produces the same shards as an
uninterrupted run. The result is described by ``manifest.json`` (brace pattern, sample counts, and
``tokenizer_path``: where the tokenizer was loaded from, which decodes training's sample pictures).
Every sample's JSON also names its tokenizer: ``tokenizer_sha256`` is the manifest's
``settings.tokenizer.weights_sha256`` (shards written before it was added lack the key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from data_pipelines.samples import encode_sample
from data_pipelines.sources import Captions, Source, _kind, iter_sources, open_source_image
from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.tokenizer import VQTokenizer, resolve_device
from nuwa_ds.tokenizer.media import open_video, sampled_fps

log = logging.getLogger("nuwa_ds.prepare")
STATE_FILE = "prepare_state.json"
MANIFEST_FILE = "manifest.json"
SPEED_OPTIONS = ("batch_size", "workers", "video_ahead_pixels", "progress", "overwrite")
"""Options that change how fast shards are made (or whether a bar is shown), not which samples they
hold: left out of the settings fingerprint, so a run may resume with other values."""


@dataclass
class PrepareOptions(ConfigBase):
    """How :func:`prepare_shards` cuts and writes; ``nuwa-ds prepare`` takes each field as a flag."""

    image_size: int = 256
    """Short side in pixels after resizing (0: keep the native size)."""
    patch_size: int = 16
    """Model patch size in tokens: pixel sizes are cut to multiples of patch_size * f."""
    max_aspect: float = 20.0
    """Long side / short side kept whole; longer panoramas are cut into pieces of this aspect."""
    fps: float = 8.0
    """Video frames sampled per second (every frame if the source is slower)."""
    clip_frames: int = 16
    """Sampled frames per video sample."""
    batch_size: int = 32
    """Frames per tokenizer call."""
    workers: int = 4
    """Threads decoding and resizing pictures and short videos ahead of the tokenizer."""
    video_ahead_pixels: int = 2 ** 24
    """A video is decoded whole in a worker thread, ahead of the tokenizer, when its sampled frames
    x cropped pixels are at most this (by its header, checked while decoding): 2**24 = 256 frames of
    256 x 256, 48 MiB. Longer videos, or those whose header gives no length, are streamed clip by
    clip in the main thread. 0 streams every video. Changes the speed and memory, not the samples."""
    shard_maxcount: int = 5000
    """Samples per shard at most."""
    shard_maxsize: float = 1e9
    """Bytes per shard at most (approximately)."""
    prefix: str = "shard"
    """Shard file names: {prefix}-000000.tar ..."""
    progress: bool = True
    """Show a progress bar."""
    overwrite: bool = False
    """Delete the shards of a different earlier run in the output folder instead of refusing."""
    val_fraction: float = 0.0
    """Share of the sources held out for validation (split by a hash of each source's origin, so the
    same picture always lands on the same side); written to ``val-{prefix}-*.tar`` beside the training
    shards. 0 holds nothing out."""

    def validate(self):
        if self.image_size < 0:
            raise ValueError("image_size must be >= 0 (0 keeps the native size)")
        for name in ("patch_size", "clip_frames", "batch_size", "workers", "shard_maxcount"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.video_ahead_pixels < 0:
            raise ValueError(f"video_ahead_pixels must be >= 0, got {self.video_ahead_pixels}")
        if self.max_aspect < 1:
            raise ValueError("max_aspect must be >= 1")
        if self.fps <= 0:
            raise ValueError("fps must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be within [0, 1), got {self.val_fraction}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: letters, digits, '_' and '-' only")


class SkipSource(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# Geometry


def plan_crops(width: int, height: int, image_size: int, align: int, max_aspect: float):
    """The stated resize/crop rule: ``((resized_w, resized_h), [(left, top, right, bottom), ...])``."""
    if image_size:
        scale = image_size / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    short, long = min(width, height), max(width, height)
    short_aligned = (short // align) * align
    if short_aligned == 0:
        raise SkipSource("too_small", f"short side {short}px < {align}px (one patch)")
    limit = max(align, int(max_aspect * short_aligned) // align * align)
    long_aligned = (long // align) * align
    if long_aligned <= limit:
        starts, length = [(long - long_aligned) // 2], long_aligned
    else:
        pieces = math.ceil(long / limit)
        starts = [round(i * (long - limit) / (pieces - 1)) for i in range(pieces)]
        length = limit
    s0 = (short - short_aligned) // 2
    boxes = []
    for start in starts:
        if width >= height:
            boxes.append((start, s0, start + length, s0 + short_aligned))
        else:
            boxes.append((s0, start, s0 + short_aligned, start + length))
    return (width, height), boxes


def _resize(img, size):
    from PIL import Image

    if img.size == tuple(size):
        return img
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


# ----------------------------------------------------------------------------------------------
# Output: ShardWriter + resume bookkeeping


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> dict:
    """Identifies the tokenizer's weights cheaply (config + hash of the codebook and first conv)."""
    digest = hashlib.sha256()
    for name in ("quant_conv.weight", "encoder.conv_in.weight"):
        digest.update(tokenizer.state_dict()[name].detach().float().cpu().numpy().tobytes())
    return {"config": tokenizer.config.to_dict(), "weights_sha256": digest.hexdigest()[:16]}


def held_out(origin: str, fraction: float) -> bool:
    """The validation split: a source is held out when a SHA-256 of its origin (relative path or
    tar:member), read as a number in [0, 1), is below ``fraction``; no random state involved."""
    if fraction <= 0:
        return False
    return int(hashlib.sha256(origin.encode()).hexdigest()[:16], 16) / 2**64 < fraction


def val_prefix(prefix: str) -> str:
    return f"val-{prefix}"


def brace_pattern(prefix: str, num_shards: int) -> str:
    return f"{prefix}-{{{0:06d}..{max(0, num_shards - 1):06d}}}.tar"


class ShardOutput:
    """``webdataset.ShardWriter`` plus what a restart needs, saved each time a shard is finished:
    how many shards are complete, how many sources are entirely inside them, and which samples of
    the source in progress they already hold.

    With ``--val-fraction`` a second one (``main`` set, its state ``main.state["val"]``) writes the
    held-out shards; each output's part of ``prepare_state.json`` is what it had at its own last
    finished shard (``committed``), never the other's unfinished progress."""

    def __init__(self, out_dir: Path, opts: PrepareOptions, state: dict, on_shard_closed: Optional[Callable],
                 prefix: Optional[str] = None, main: Optional["ShardOutput"] = None):
        import webdataset as wds

        self.out_dir, self.opts, self.state = out_dir, opts, state
        self.prefix = prefix or opts.prefix
        self.main, self.val = main, None
        if main is not None:
            main.val = self
        self.committed = self._snapshot()
        self.skip_keys = set(state["partial_keys"]) if state["partial_source"] is not None else set()
        self.on_shard_closed = on_shard_closed
        self.open_count = 0
        self.current_source: Optional[int] = None
        self.current_keys: list[str] = []
        self.counts: Counter = Counter(state.get("counts", {}))
        self.writer = wds.ShardWriter(str(out_dir / f"{self.prefix}-%06d.tar"), maxcount=opts.shard_maxcount,
                                      maxsize=opts.shard_maxsize, post=self._closed,
                                      start_shard=state["closed_shards"], verbose=0, encoder=False, mtime=0.0)

    def write(self, source_index: int, sample: dict):
        if source_index != self.current_source:
            self.current_source, self.current_keys = source_index, []
        self.writer.write(sample)  # may close the previous shard first (-> _closed)
        self.open_count += 1
        self.current_keys.append(sample["__key__"])

    def source_finished(self, source_index: int):
        self.state["sources_done"] = source_index + 1
        self.current_source, self.current_keys = None, []

    def _closed(self, fname: str):
        self.state["shard_samples"].append(self.open_count)
        self.state["closed_shards"] += 1
        self.state["partial_source"] = self.current_source
        self.state["partial_keys"] = list(self.current_keys)
        self.state["counts"] = dict(self.counts)
        self.open_count = 0
        self.committed = self._snapshot()
        main = self.main or self
        disk = {**main.committed, **({"val": main.val.committed} if main.val is not None else {})}
        write_json_atomic(self.out_dir / STATE_FILE, disk)
        if self.on_shard_closed is not None:
            self.on_shard_closed(Path(fname), disk)

    def _snapshot(self) -> dict:
        return json.loads(json.dumps({k: v for k, v in self.state.items() if k != "val"}))

    def close(self):
        self.writer.close()


def write_json_atomic(path: Path, data: dict):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _shard_files(out_dir: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for path in out_dir.glob(f"{prefix}-*.tar"):
        match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)\.tar", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _resume_state(out_dir: Path, settings: dict, opts: PrepareOptions) -> dict:
    """The state to continue from (fresh when nothing was started); removes unfinished shards."""
    fingerprint = settings_fingerprint(settings)
    def output():
        return {"closed_shards": 0, "shard_samples": [], "sources_done": 0, "partial_source": None,
                "partial_keys": [], "counts": {}}

    fresh = {"fingerprint": fingerprint, "settings": settings, **output(), "complete": False}
    if opts.val_fraction > 0:
        fresh["val"] = output()
    state_path = out_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    shards = _shard_files(out_dir, opts.prefix) + _shard_files(out_dir, val_prefix(opts.prefix))
    if state is not None and state.get("fingerprint") != fingerprint or state is None and shards:
        if not opts.overwrite:
            raise ValueError(f"{out_dir} holds shards of a different prepare run (other inputs, settings or "
                             f"tokenizer); choose another output folder or pass --overwrite")
        state = None
    if state is None:
        for _, path in shards:
            path.unlink()
        for name in (STATE_FILE, MANIFEST_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return fresh
    for sub, prefix in ((state, opts.prefix), (state.get("val"), val_prefix(opts.prefix))):
        for index, path in _shard_files(out_dir, prefix) if sub is not None else []:
            if index >= sub["closed_shards"]:  # a shard that was being written when the run stopped
                path.unlink()
    return state


# ----------------------------------------------------------------------------------------------
# Tokenizing


@torch.no_grad()
def encode_frames(tokenizer, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> int16 tokens [N, H/f, W/f], in batches on the tokenizer's device."""
    out = []
    for start in range(0, len(frames), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size]))
        images = chunk.to(tokenizer.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        out.append(tokenizer.encode(images).to("cpu", torch.int16).numpy())
    return np.concatenate(out)


class _Slot:
    """A sample's frames on their way through the tokenizer: token chunks arrive in frame order."""

    __slots__ = ("need", "chunks")

    def __init__(self, need: int):
        self.need, self.chunks = need, []

    def ready(self) -> bool:
        return sum(len(c) for c in self.chunks) == self.need

    def tokens(self) -> np.ndarray:
        return self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)


class FrameBatcher:
    """Frames waiting for the tokenizer, grouped by shape. A group is encoded as soon as it holds
    ``batch_size`` frames (from any samples and sources, in arrival order; a sample's frames may
    span two calls), the rest on :meth:`flush`. Each call is one ``tokenizer.encode`` of one batch."""

    def __init__(self, tokenizer, batch_size: int):
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.groups: dict[tuple, deque] = {}  # frame shape -> deque of [slot, frames not yet encoded]
        self.sizes: Counter = Counter()

    def add(self, frames: np.ndarray) -> _Slot:
        """uint8 [T, H, W, 3] -> the slot its int16 [T, h, w] tokens will arrive in."""
        slot, shape = _Slot(len(frames)), frames.shape[1:]
        self.groups.setdefault(shape, deque()).append([slot, frames])
        self.sizes[shape] += len(frames)
        while self.sizes[shape] >= self.batch_size:
            self._encode(shape, self.batch_size)
        return slot

    def flush(self):
        for shape in list(self.groups):
            while self.sizes[shape]:
                self._encode(shape, min(self.batch_size, self.sizes[shape]))
        self.groups.clear()

    def _encode(self, shape, count: int):
        group, parts, taken = self.groups[shape], [], 0
        while taken < count:
            slot, frames = group[0]
            k = min(len(frames), count - taken)
            parts.append((slot, frames[:k]))
            if k == len(frames):
                group.popleft()
            else:
                group[0][1] = frames[k:]
            taken += k
        tokens = encode_frames(self.tokenizer, np.concatenate([f for _, f in parts]), self.batch_size)
        offset = 0
        for slot, frames in parts:
            slot.chunks.append(tokens[offset:offset + len(frames)])
            offset += len(frames)
        self.sizes[shape] -= count


def _image_pieces(source: Source, opts: PrepareOptions, align: int):
    """Decode + resize + crop one picture (runs in a thread): (meta base, [(suffix, crop box, array)])."""
    try:
        img = open_source_image(source)
    except Exception as exc:  # noqa: BLE001 - a broken picture is skipped and counted, never fatal
        raise SkipSource("unreadable", str(exc)[:160]) from None
    size, boxes = plan_crops(img.width, img.height, opts.image_size, align, opts.max_aspect)
    resized = _resize(img, size)
    pieces = [("" if len(boxes) == 1 else f"_p{i:02d}", box, np.asarray(resized.crop(box)))
              for i, box in enumerate(boxes)]
    return {"source_hw": [img.height, img.width], "resized_hw": [size[1], size[0]]}, pieces


@dataclass
class _Clips:
    """A video cut into clips (:func:`_open_clips`)."""

    fps: Optional[float]
    base: dict
    boxes: list
    clips: Iterable
    """(clip index, index of its first sampled frame, that frame's time, [uint8 [T, H, W, 3] per box]);
    a generator while streaming, a list once decoded ahead."""
    estimate: Optional[int]
    """Sampled frames by the container's header (None: it does not say)."""


def _open_clips(stack: ExitStack, source: Source, opts: PrepareOptions, align: int, threads: bool = True) -> _Clips:
    """Open a video (closed with ``stack``), decode its first frame and plan its crops; its clips are
    cut as they are read. SkipSource when it is unreadable, empty or too small."""
    try:
        video = stack.enter_context(open_video(source.path))
        frames = video.frames(opts.fps, threads=threads)
        first_time, first = next(frames)
    except Exception as exc:  # noqa: BLE001 - unreadable / empty video: skipped and counted
        raise SkipSource("unreadable", str(exc)[:160] or "no frames") from None
    size, boxes = plan_crops(first.width, first.height, opts.image_size, align, opts.max_aspect)
    base = {"source_hw": [first.height, first.width], "resized_hw": [size[1], size[0]]}
    return _Clips(sampled_fps(video.info["fps"], opts.fps), base, boxes,
                  _cut_clips(_chain([(first_time, first)], frames), size, boxes, opts.clip_frames),
                  video.sampled_frames(opts.fps))


def _cut_clips(frames, size, boxes, clip_frames: int):
    """Sampled frames -> resized, cropped clips of clip_frames consecutive frames (see _Clips.clips); a
    shorter tail is dropped unless the whole video is shorter than one clip."""
    clip, start_time, clip_index, sampled = [], 0.0, 0, 0
    for t, frame in frames:
        if not clip:
            start_time = t
        resized = _resize(frame.convert("RGB"), size)
        clip.append([np.asarray(resized.crop(box)) for box in boxes])
        sampled += 1
        if len(clip) == clip_frames:
            yield clip_index, sampled - len(clip), start_time, [np.stack(p) for p in zip(*clip)]
            clip, clip_index = [], clip_index + 1
    if clip and clip_index == 0:  # the whole video is shorter than one clip
        yield 0, 0, start_time, [np.stack(p) for p in zip(*clip)]


def _video_ahead(source: Source, opts: PrepareOptions, align: int):
    """Runs in a thread: a video small enough to hold (sampled frames x cropped pixels at most
    ``opts.video_ahead_pixels``, by its header and while decoding) decoded whole, its clips a list;
    SkipSource; or None: too long, or its header gives no length, and the main thread streams it."""
    with ExitStack() as stack:
        try:
            video = _open_clips(stack, source, opts, align, threads=False)
        except SkipSource as exc:
            return exc
        per_frame = sum((right - left) * (bottom - top) for left, top, right, bottom in video.boxes)
        if video.estimate is None or video.estimate * per_frame > opts.video_ahead_pixels:
            return None
        clips, held = [], 0
        for clip in video.clips:
            held += len(clip[3][0]) * per_frame
            if held > opts.video_ahead_pixels:  # longer than its header said
                return None
            clips.append(clip)
        video.clips = clips
        return video


def _meta(source: Source, base: dict, box, tokens_thw, tokenizer, tokenizer_sha256: str, **extra) -> dict:
    f = tokenizer.downsample
    return {"source": source.origin, "kind": source.kind, **base, "crop_yx": [box[1], box[0]],
            "pixel_hw": [box[3] - box[1], box[2] - box[0]], "token_thw": list(tokens_thw), "downsample": f,
            "codebook_size": tokenizer.codebook_size, "tokenizer_sha256": tokenizer_sha256,
            "caption": source.caption, **{"fps": None, "frame_start": 0, **extra}}


class Preparer:
    """One prepare run (see the module docstring); :func:`prepare_shards` is the entry point.

    Pipeline (docs/decisions.md, "Prepare: videos decoded ahead"): up to ``lookahead`` sources are
    decoded ahead in the thread pool, pictures and videos alike, at most ``videos_ahead`` of them
    videos, each held whole only when small (``video_ahead_pixels``); longer videos are streamed
    clip by clip in the main thread when their turn comes. The main thread takes the sources in
    order and queues their samples; their frames go to the tokenizer in batches of ``batch_size``
    frames across samples and sources (:class:`FrameBatcher`), and samples are written in source
    order as their tokens arrive: the same shards as one source at a time."""

    def __init__(self, tokenizer, opts: PrepareOptions, output: ShardOutput,
                 val_output: Optional[ShardOutput] = None):
        self.tokenizer, self.opts, self.output, self.val_output = tokenizer, opts, output, val_output
        self.align = opts.patch_size * tokenizer.downsample
        # in every sample's JSON: which tokenizer made it, even for a shard that travels without manifest.json
        self.tokenizer_sha256 = tokenizer_fingerprint(tokenizer)["weights_sha256"]
        self.lookahead = max(opts.batch_size, 4 * opts.workers)
        self.videos_ahead = max(8, 2 * opts.workers)
        self.max_pending = 4 * self.lookahead
        self.batcher = FrameBatcher(tokenizer, opts.batch_size)
        self.pending: deque = deque()
        """In source order: ("sample", source, key, slot, (base, box, extra)), ("skip", source, exc),
        ("done", source, count name or None)."""

    def _out(self, source: Source) -> ShardOutput:
        """The output a source's samples (and counts) go to: held out for validation or not."""
        if self.val_output is not None and held_out(source.origin, self.opts.val_fraction):
            return self.val_output
        return self.output

    def done(self, source: Source) -> bool:
        """Already entirely in finished shards of its output (an earlier, interrupted run)."""
        return source.index < self._out(source).state["sources_done"]

    def _skip(self, source: Source, exc: SkipSource):
        self._out(source).counts[f"skipped_{exc.reason}"] += 1
        log.warning("skipping %s: %s", source.origin, exc)

    def _emit(self, source: Source, key: str, tokens: np.ndarray, meta: dict):
        if key in self._out(source).skip_keys:  # samples of the interrupted source already in finished shards
            return
        self._out(source).write(source.index, encode_sample(key, tokens, meta))
        self._out(source).counts["samples"] += 1
        self._out(source).counts["frames"] += tokens.shape[0]

    def run(self, sources: Iterable[Source], pool: ThreadPoolExecutor):
        """Prepare ``sources`` (those not done yet), in order."""
        ahead: deque = deque()  # (source, future or None), in source order
        videos = 0
        try:
            for source in sources:
                ahead.append((source, self._submit(source, pool)))
                videos += source.kind == "video"
                while len(ahead) > self.lookahead or videos > self.videos_ahead:
                    taken, future = ahead.popleft()
                    videos -= taken.kind == "video"
                    self._take(taken, future)
            while ahead:
                self._take(*ahead.popleft())
            self.batcher.flush()
            self._write_ready()
        finally:
            for _, future in ahead:  # an interrupted run decodes nothing more
                if future is not None:
                    future.cancel()

    def _submit(self, source: Source, pool: ThreadPoolExecutor):
        if source.kind != "video":
            return pool.submit(_try, _image_pieces, source, self.opts, self.align)
        if self.opts.video_ahead_pixels > 0:
            return pool.submit(_video_ahead, source, self.opts, self.align)
        return None

    def _take(self, source: Source, future):
        """A source's turn: queue its samples (streaming a long video), write what is ready."""
        result = None if future is None else future.result()
        if isinstance(result, SkipSource):
            self.pending.extend([("skip", source, result), ("done", source, None)])
        elif source.kind != "video":
            base, pieces = result
            for suffix, box, array in pieces:
                self._queue(source, source.key + suffix, array[None], (base, box, {}))
            self.pending.append(("done", source, "images"))
        elif result is not None:
            self._queue_clips(source, result)
        else:
            self._stream_video(source)
        self._write_ready()
        if len(self.pending) > self.max_pending:  # a rare frame shape holds up the queue: encode what waits
            self.batcher.flush()
            self._write_ready()

    def _queue(self, source: Source, key: str, frames: np.ndarray, meta: tuple):
        self.pending.append(("sample", source, key, self.batcher.add(frames), meta))

    def _queue_clips(self, source: Source, video: _Clips):
        for clip_index, frame_start, start_time, per_box in video.clips:
            for p, (box, frames) in enumerate(zip(video.boxes, per_box)):
                key = f"{source.key}_c{clip_index:04d}" + ("" if len(video.boxes) == 1 else f"_p{p:02d}")
                extra = {"fps": video.fps, "frame_start": frame_start, "time_start": round(start_time, 4)}
                self._queue(source, key, frames, (video.base, box, extra))
            self._write_ready()
        self.pending.append(("done", source, "videos"))

    def _stream_video(self, source: Source):
        """A video too long to hold (or of unknown length): clips are read as the tokenizer takes them."""
        self.batcher.flush()  # what came before is written first, so that nothing holds up the clips
        self._write_ready()
        with ExitStack() as stack:
            try:
                video = _open_clips(stack, source, self.opts, self.align)
            except SkipSource as exc:
                self.pending.extend([("skip", source, exc), ("done", source, None)])
                return
            self._queue_clips(source, video)

    def _write_ready(self):
        """Write the queue's head while its tokens are there."""
        pending = self.pending
        while pending:
            entry = pending[0]
            if entry[0] == "sample":
                _, source, key, slot, (base, box, extra) = entry
                if not slot.ready():
                    return
                tokens = slot.tokens()
                self._emit(source, key, tokens, _meta(source, base, box, tokens.shape, self.tokenizer,
                                                        self.tokenizer_sha256, **extra))
            elif entry[0] == "skip":
                self._skip(entry[1], entry[2])
            else:
                _, source, count = entry
                if count is not None:
                    self._out(source).counts[count] += 1
                self._out(source).source_finished(source.index)
            pending.popleft()


def _try(fn, *args):
    try:
        return fn(*args)
    except SkipSource as exc:
        return exc


def _chain(head, tail):
    yield from head
    yield from tail


def prepare_shards(inputs, out_dir, tokenizer, *, captions=None, device="auto",
                   options: PrepareOptions | None = None, on_shard_closed: Optional[Callable] = None,
                   **option_overrides) -> dict:
    """Tokenize pictures / videos into WebDataset shards in ``out_dir``; returns the manifest.

    ``inputs``: folders, ``.tar`` files of pictures, or single files. ``tokenizer``: a
    :class:`~nuwa_ds.tokenizer.VQTokenizer` or a directory written by ``save_pretrained``.
    ``captions``: optional CSV / JSONL file. ``on_shard_closed(path, state)`` is called after each
    finished shard (progress reporting)."""
    opts = options or PrepareOptions()
    for key, value in option_overrides.items():
        if not hasattr(opts, key):
            raise ValueError(f"unknown prepare option {key!r}")
        setattr(opts, key, value)
    opts.validate()
    dev = resolve_device(device)
    if not isinstance(tokenizer, VQTokenizer):
        tokenizer = VQTokenizer.from_pretrained(tokenizer)
    tokenizer = tokenizer.to(dev).eval()
    caption_table = Captions(captions)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for item in inputs:
        if not Path(item).exists():
            raise FileNotFoundError(f"input {item} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    geometry = {k: v for k, v in asdict(opts).items() if k not in SPEED_OPTIONS
                and not (k == "val_fraction" and not v)}  # unchanged fingerprint for runs without a split
    settings = {"inputs": [str(i) for i in inputs], "captions": None if captions is None else str(captions),
                "options": geometry, "tokenizer": tokenizer_fingerprint(tokenizer)}
    state = _resume_state(out_dir, settings, opts)
    if state.get("complete"):
        log.info("%s is already complete", out_dir)
        return json.loads((out_dir / MANIFEST_FILE).read_text())
    output = ShardOutput(out_dir, opts, state, on_shard_closed)
    val_output = None
    if opts.val_fraction > 0:
        val_output = ShardOutput(out_dir, opts, state["val"], on_shard_closed, val_prefix(opts.prefix), main=output)
    preparer = Preparer(tokenizer, opts, output, val_output)
    started = time.perf_counter()
    progress = _progress(inputs, opts.progress)

    def todo():
        for source in iter_sources(inputs, caption_table):
            progress.update(1)
            if not preparer.done(source):
                yield source

    with ThreadPoolExecutor(max_workers=opts.workers) as pool:
        preparer.run(todo(), pool)
    output.close()
    if val_output is not None:
        val_output.close()
    progress.close()
    return _finish(out_dir, opts, state, output, val_output, tokenizer, time.perf_counter() - started)


def _progress(inputs, enabled: bool):
    from tqdm import tqdm

    total = None
    if all(Path(i).is_dir() or Path(i).suffix.lower() != ".tar" for i in inputs):
        total = sum(1 for i in inputs for p in ([Path(i)] if Path(i).is_file() else Path(i).rglob("*"))
                    if p.is_file() and _kind(p.name))
    return tqdm(total=total, unit="src", desc="prepare", disable=not enabled, mininterval=1.0)


def _trim(out_dir: Path, prefix: str, shard_samples: list) -> list:
    shard_samples = list(shard_samples)
    while shard_samples and shard_samples[-1] == 0:  # the writer always opens one more shard
        (out_dir / f"{prefix}-{len(shard_samples) - 1:06d}.tar").unlink(missing_ok=True)
        shard_samples.pop()
    return shard_samples


def _finish(out_dir: Path, opts: PrepareOptions, state: dict, output: ShardOutput, val_output, tokenizer,
            seconds: float):
    shard_samples = _trim(out_dir, opts.prefix, state["shard_samples"])
    counts = Counter(output.counts)
    val = {}
    if val_output is not None:
        val_samples = _trim(out_dir, val_output.prefix, state["val"]["shard_samples"])
        counts.update(val_output.counts)
        val = {"val_shards": brace_pattern(val_output.prefix, len(val_samples)) if val_samples else None,
               "val_num_shards": len(val_samples), "val_samples": sum(val_samples), "val_shard_samples": val_samples,
               "val_fraction": opts.val_fraction}
        state["val"].update(shard_samples=val_samples, closed_shards=len(val_samples),
                            counts=dict(val_output.counts))
    counts = dict(counts)
    manifest = {"shards": brace_pattern(opts.prefix, len(shard_samples)), "num_shards": len(shard_samples),
                "num_samples": sum(shard_samples), "shard_samples": shard_samples, "counts": counts,
                "downsample": tokenizer.downsample, "codebook_size": tokenizer.codebook_size,
                "patch_size": opts.patch_size, "tokenizer_path": tokenizer.source,
                "seconds_last_run": round(seconds, 2),
                **val, "settings": state["settings"]}
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    state.update(complete=True, shard_samples=shard_samples, closed_shards=len(shard_samples),
                 counts=dict(output.counts))
    write_json_atomic(out_dir / STATE_FILE, state)
    return manifest


# ----------------------------------------------------------------------------------------------
# CLI


@dataclass
class PrepareCommand(ConfigBase):
    """Everything ``nuwa-ds prepare`` is told; its flags are generated from these fields."""

    inputs: list[str] = field(metadata=cli(positional=True))
    """Folders of pictures and/or videos, .tar files of pictures, or files."""
    out: str
    """Output folder for the shards, manifest.json and prepare_state.json."""
    tokenizer: Optional[str] = field(default=None, metadata=cli(one_of="tokenizer"))
    """A tokenizer folder (nuwa-ds tokenizer-train / VQTokenizer.save_pretrained)."""
    taming_ckpt: Optional[str] = field(default=None, metadata=cli(one_of="tokenizer"))
    """A taming-transformers / latent-diffusion VQGAN .ckpt."""
    taming_config: Optional[str] = None
    """Its model .yaml or a preset name (default: inferred from the weights)."""
    captions: Optional[str] = None
    """CSV / TSV / JSONL with path and caption columns."""
    device: str = "auto"
    """auto (GPU when there is one), cpu or cuda."""
    options: PrepareOptions = field(default_factory=PrepareOptions)
    """How to cut and write: its fields are flags."""


def add_arguments(parser: argparse.ArgumentParser):
    PrepareCommand.add_flags(parser)


def run(args) -> int:
    command = PrepareCommand.from_args(args)
    if command.taming_ckpt:
        tokenizer = VQTokenizer.from_taming_checkpoint(command.taming_ckpt, command.taming_config)
    else:
        tokenizer = VQTokenizer.from_pretrained(command.tokenizer)
    manifest = prepare_shards(command.inputs, command.out, tokenizer, captions=command.captions,
                              device=command.device, options=command.options)
    counts = manifest["counts"]
    print(f"{manifest['num_samples']} samples in {manifest['num_shards']} shards; "
          f"images {counts.get('images', 0)}, videos {counts.get('videos', 0)}, "
          f"skipped {sum(v for k, v in counts.items() if k.startswith('skipped_'))}")
    print(f"data.shards={Path(command.out) / manifest['shards']}")
    if manifest.get("val_shards"):
        print(f"data.val_shards={Path(command.out) / manifest['val_shards']} ({manifest['val_samples']} held out)")
    return 0
