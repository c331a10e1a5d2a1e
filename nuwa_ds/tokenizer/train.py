"""``nuwa-ds tokenizer-train``: train a VQ tokenizer from pictures (for users without a pretrained VQGAN).

Losses: reconstruction (L1 + MSE on pixels) and commitment (beta * |z_e - sg(z_q)|^2). The codebook
is not trained by gradients but by exponential moving averages of the encoder outputs assigned to
each code (VQ-VAE-2), and a code that falls out of use is restarted on a random encoder output of the
current batch, so the whole codebook stays in use. Perceptual (LPIPS) and adversarial losses are not
used: their weights are not available offline, and pixel losses alone reach a recognisable
reconstruction (see docs/benchmarks.md for the PSNR).

Data: random crops (with flips and a random downscale) of the given pictures. Only the files'
headers are read before training; the crops are drawn from the seeded generator in order and their
pixels decoded, resampled and cropped by a thread pool a few batches ahead of the step, with a
bounded cache of decoded pictures, so neither the time before the first step nor the memory grows
with the number of pictures, and the batches do not depend on the threads. The function form,
:func:`train_tokenizer`, is what ``nuwa-ds demo`` calls.

Budgets and interruptions (issue 21, docs/decisions.md): the weights are saved (atomically) before
the evaluation and every ``save_every`` steps / ``save_every_seconds``; the evaluation is batched, on
a seeded sample of ``eval_pictures`` pictures, and ``time_limit`` bounds loading + training + saving +
evaluation together. Under the CLI, SIGUSR1 / SIGTERM / the first Ctrl-C save and exit with 75.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.files import fsync_dir, fsync_file, write_atomic
from nuwa_ds.preemption import REQUEUE_EXIT_CODE, Faults, StopRequest
from nuwa_ds.tokenizer.media import DEMO_PICTURES, IMAGE_SUFFIXES, demo_pictures, from_uint8, save_png
from nuwa_ds.tokenizer.vqgan import CONFIG_FILE, WEIGHTS_FILE, VQConfig, VQTokenizer, psnr, resolve_device


def _eval_count(text: str) -> int | None:
    """``--eval-pictures``: a positive number, or 'all' (None)."""
    if text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {text!r}")
    return value


@dataclass
class TrainOptions(ConfigBase):
    """How :func:`train_tokenizer` trains; ``nuwa-ds tokenizer-train`` takes each field as a flag."""

    steps: int = 600
    """Optimizer steps (the time limit may stop training earlier)."""
    batch_size: int = 16
    """Crops per step."""
    crop: int = 64
    """Crop side in pixels (a multiple of the downsampling factor)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (warm-up, then cosine to 5%)."""
    beta: float = 0.25
    """Commitment loss weight."""
    ema_decay: float = 0.95
    """Codebook EMA decay (per step; lower adapts faster, useful for short runs)."""
    ae_warmup_steps: int | None = None
    """Steps trained as a plain autoencoder before the codebook is initialised on the latents
    (k-means++) and quantisation starts; None: a tenth of the steps, at most 100."""
    restart_threshold: float = 0.1
    """A code whose EMA assignment count falls below this fraction of the mean count is restarted
    on a vector of the batch (a mean-relative threshold acts as fast with any codebook size)."""
    seed: int = 0
    """Initialisation and crop sampling seed."""
    time_limit: float | None = field(default=None, metadata=cli(metavar="SECONDS", help=(
        "budget of the whole command, counted from its start (imports included): loading the pictures, "
        "training, the final save and the evaluation. Training stops early enough for the save and the "
        "estimated evaluation (timed on one picture before training; at most half the budget is reserved for "
        "it) to fit; the evaluation stops before a batch that would overrun and metrics.json says how many "
        "pictures it covered. At least one step and one evaluation batch always run, so a budget shorter than "
        "that is exceeded by them. Default: no limit (all --steps)")))
    """Budget in seconds of the whole call (loading, training, saving, evaluation): training stops
    early enough for the final save and the estimated evaluation to fit, and the evaluation stops
    when the budget runs out (at most half the budget is reserved for it; at least one step and one
    evaluation batch always run). None: all steps, the whole evaluation sample."""
    save_every: int = field(default=0, metadata=cli(metavar="STEPS"))
    """With an output directory: save the tokenizer every this many steps (0: off)."""
    save_every_seconds: float | None = field(default=300.0, metadata=cli(metavar="SECONDS"))
    """With an output directory: save the tokenizer when this many seconds passed since the last
    save (None / 0: off). Saves are atomic; the final save happens before the evaluation anyway."""
    eval_pictures: int | None = field(default=64, metadata=cli(type=_eval_count, metavar="N|all"))
    """Pictures in the final evaluation: a seeded random sample of this many (None, 'all' on the command
    line: every picture)."""
    eval_batch_size: int = 16
    """Pictures of one size per evaluation batch (also capped at ~1M pixels per batch)."""
    progress: bool | None = None
    """Evaluation progress bar (tqdm); None: when stderr is a terminal."""
    log_every: int = 100
    """Steps between progress lines (0: quiet)."""
    data_workers: int | None = field(default=None, metadata=cli(metavar="N"))
    """Threads decoding and cropping pictures ahead of the training step (and reading headers,
    decoding evaluation pictures); None: min(8, CPUs). The results do not depend on it."""
    picture_cache_mb: float = field(default=1024.0, metadata=cli(metavar="MB"))
    """Decoded pictures, at the crop scales, kept in memory (least recently used out first; 0: none):
    0.34 MB for a 256x256 picture at all three. Memory does not grow with the number of pictures
    beyond this; a cache that holds them all makes a crop a copy."""


# ----------------------------------------------------------------------------------------------
# Data


PREFETCH_BATCHES = 3
"""Training batches being prepared ahead of the step that uses them."""
SCALES = (1.0, 0.75, 0.5)
"""Crop scales: full, 3/4 and 1/2 size (the tokenizer sees the scales at which `prepare` resizes)."""
_ORIENTATION_TAG = 0x0112


def worker_count(requested: int | None = None) -> int:
    """Threads decoding and cropping pictures: ``requested``, or min(8, the CPUs this process may use)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"data_workers must be >= 1 (or None), got {requested}")
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class PictureError(ValueError):
    """A picture that cannot be read or decoded; the message names the file."""


def _transpose_method(orientation: int):
    from PIL import Image

    T = Image.Transpose
    return {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
            7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)


def _read_header(path: Path) -> tuple[int, int, int]:
    """``(height, width, EXIF orientation)`` of a picture file as a viewer shows it (the orientation
    applied), from its header: the pixels are not decoded."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"picture {path} does not exist")
    try:
        with Image.open(path) as img:
            width, height = img.size
            # the base class reads only what opening parsed (a PNG's own getexif() would decode the pixels)
            orientation = Image.Image.getexif(img).get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # Pillow: OSError, SyntaxError, ValueError, struct.error, DecompressionBombError...
        raise PictureError(f"picture {path} cannot be read: {exc}") from exc
    orientation = orientation if isinstance(orientation, int) and _transpose_method(orientation) else 1
    return (width, height, orientation) if orientation in (5, 6, 7, 8) else (height, width, orientation)


class Pictures:
    """The pictures by index: sizes known up front, pixels decoded when first needed.

    Files are opened once up front to read their headers (size, EXIF orientation; in a thread pool)
    and decoded on demand. :meth:`level` gives a picture at one of the crop scales (1: as decoded;
    else Lanczos-resized, as the whole-picture pyramid of earlier versions was), computed when first
    asked for and kept in a least-recently-used cache of at most ``cache_mb`` megabytes (0: none),
    so memory does not grow with the number of pictures. Arrays given by the caller are used as
    they are. Thread-safe: a level wanted by several threads at once is computed once. A file that
    cannot be decoded raises :class:`PictureError` naming it."""

    def __init__(self, sources: list, sizes: list[tuple[int, int]], orientations: list[int] | None = None,
                 cache_mb: float = 1024.0):
        import threading

        self.sources, self.sizes = sources, [tuple(int(v) for v in s) for s in sizes]
        self.orientations = orientations or [1] * len(sources)
        self.cache_bytes = int(max(0.0, cache_mb) * 2 ** 20)
        self._cache: OrderedDict[tuple[int, float], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[tuple[int, float], Future] = {}
        self._lock = threading.Lock()
        self.decoded = 0
        """Files decoded so far (one evicted from the cache and needed again counts again)."""

    @classmethod
    def from_arrays(cls, arrays, cache_mb: float = 1024.0) -> "Pictures":
        arrays = [_checked_array(k, a) for k, a in enumerate(arrays)]
        return cls(arrays, [a.shape[:2] for a in arrays], cache_mb=cache_mb)

    def __len__(self) -> int:
        return len(self.sources)

    def size(self, index: int) -> tuple[int, int]:
        """``(height, width)``."""
        return self.sizes[index]

    def name(self, index: int) -> str:
        source = self.sources[index]
        return f"picture {index}" if isinstance(source, np.ndarray) else f"picture {source}"

    def level_size(self, index: int, scale: float) -> tuple[int, int]:
        """``(height, width)`` of the picture at ``scale``."""
        H, W = self.sizes[index]
        return round(H * scale), round(W * scale)

    def _decode(self, index: int) -> np.ndarray:
        from PIL import Image

        source = self.sources[index]
        if isinstance(source, np.ndarray):
            return np.ascontiguousarray(source[..., :3])
        try:
            with Image.open(source) as img:
                img.load()
                method = _transpose_method(self.orientations[index])
                array = np.asarray((img.transpose(method) if method is not None else img).convert("RGB"))
        except Exception as exc:
            raise PictureError(f"picture {source} cannot be decoded: {exc}") from exc
        if array.shape[:2] != self.sizes[index]:
            raise PictureError(f"picture {source} is {array.shape[1]}x{array.shape[0]}, its header said "
                               f"{self.sizes[index][1]}x{self.sizes[index][0]} (changed during training?)")
        with self._lock:
            self.decoded += 1
        return array

    def _compute(self, index: int, scale: float) -> np.ndarray:
        if scale == 1.0:
            return self._decode(index)
        from PIL import Image

        h, w = self.level_size(index, scale)
        return np.asarray(Image.fromarray(self.level(index, 1.0)).resize((w, h), Image.Resampling.LANCZOS))

    def level(self, index: int, scale: float = 1.0) -> np.ndarray:
        """``[H, W, 3]`` uint8 of the picture at ``scale`` (read-only: it may be cached and shared)."""
        key = (index, float(scale))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        if not owner:
            return pending.result()
        try:
            array = self._compute(index, scale)
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            if array.nbytes <= self.cache_bytes:
                self._cache[key] = array
                self._cached_bytes += array.nbytes
                while self._cached_bytes > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.nbytes
        pending.set_result(array)
        return array

    def array(self, index: int) -> np.ndarray:
        """``[H, W, 3]`` uint8 (arrays the caller gave: as given, RGBA included)."""
        source = self.sources[index]
        return source if isinstance(source, np.ndarray) else self.level(index, 1.0)

    __getitem__ = array


def _checked_array(index: int, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"picture {index}: expected uint8 [H, W, 3] pixels, got {array.dtype} {array.shape}")
    return array


def _as_pictures(pictures) -> Pictures:
    return pictures if isinstance(pictures, Pictures) else Pictures.from_arrays(pictures, cache_mb=0)


def _load_pictures(images, workers: int | None = None, cache_mb: float = 1024.0) -> Pictures:
    """Paths, a folder, arrays, or the string 'demo' -> :class:`Pictures`. Files: only their headers
    are read here (by a thread pool; missing or unreadable files are refused, naming them), the
    pixels are decoded when training or the evaluation first needs them."""
    if isinstance(images, (str, Path)) and str(images) == "demo":
        return Pictures.from_arrays(list(demo_pictures().values()), cache_mb=cache_mb)
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        images = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("no pictures to train on")
    arrays = {k: _checked_array(k, item) for k, item in enumerate(images) if isinstance(item, np.ndarray)}
    files = [k for k in range(len(images)) if k not in arrays]
    with ThreadPoolExecutor(max_workers=worker_count(workers)) as pool:  # Pillow releases the GIL on I/O
        headers = dict(zip(files, pool.map(_read_header, [Path(images[k]) for k in files])))
    sources = [arrays[k] if k in arrays else Path(images[k]) for k in range(len(images))]
    sizes = [arrays[k].shape[:2] if k in arrays else headers[k][:2] for k in range(len(images))]
    orientations = [1 if k in arrays else headers[k][2] for k in range(len(images))]
    return Pictures(sources, sizes, orientations, cache_mb=cache_mb)


class CropSampler:
    """Random crops with flips at three scales of each picture (full, 3/4 and 1/2 size), so the
    tokenizer sees the scales at which `prepare` will later resize pictures.

    A crop is drawn uniformly over the (picture, scale) pairs whose scaled picture holds the crop,
    then its position and flip: all from the seeded generator, in the caller's thread (:meth:`draw`),
    the same draws as the earlier sampler that held every picture's pyramid. Its pixels
    (:meth:`crop`) are a pure function of that draw: a slice of the scaled picture
    (:meth:`Pictures.level`: decoded, Lanczos-resized and cached on first use), flipped: bitwise
    the earlier sampler's crops. :meth:`stream` prepares batches in a thread pool ahead of use; the
    batches depend neither on the pool's size, nor on the cache, nor on timing."""

    def __init__(self, pictures, crop: int, seed: int):
        self.pictures = _as_pictures(pictures)
        self.crop_size = crop
        level_picture, level_scale = [], []
        for i in range(len(self.pictures)):
            H, W = self.pictures.size(i)
            for s, scale in enumerate(SCALES):
                if min(round(W * scale), round(H * scale)) >= crop:
                    level_picture.append(i)
                    level_scale.append(s)
        if not level_picture:
            raise ValueError(f"every picture is smaller than the {crop}-pixel crop")
        self.level_picture = np.asarray(level_picture, dtype=np.int64)
        self.level_scale = np.asarray(level_scale, dtype=np.int8)
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, size: int) -> list[tuple[int, float, int, int, bool]]:
        """The next ``size`` crops: ``(picture, scale, y, x, flip)``, y and x in the scaled picture."""
        g, c = self.generator, self.crop_size
        out = []
        for _ in range(size):
            k = int(torch.randint(len(self.level_picture), (1,), generator=g))
            picture, scale = int(self.level_picture[k]), SCALES[self.level_scale[k]]
            h, w = self.pictures.level_size(picture, scale)
            y = int(torch.randint(h - c + 1, (1,), generator=g))
            x = int(torch.randint(w - c + 1, (1,), generator=g))
            out.append((picture, scale, y, x, bool(torch.rand((), generator=g) < 0.5)))
        return out

    def crop(self, spec: tuple[int, float, int, int, bool]) -> np.ndarray:
        """The ``[crop, crop, 3]`` uint8 pixels of a drawn crop (a view: copy before writing)."""
        picture, scale, y, x, flip = spec
        c = self.crop_size
        patch = self.pictures.level(picture, scale)[y:y + c, x:x + c]
        return patch[:, ::-1] if flip else patch

    def batch(self, size: int) -> torch.Tensor:  # (size, 3, crop, crop) in [-1, 1], prepared here and now
        return from_uint8(np.stack([self.crop(spec) for spec in self.draw(size)]))

    def stream(self, size: int, workers: int | None = None, depth: int = PREFETCH_BATCHES) -> "CropStream":
        return CropStream(self, size, worker_count(workers), depth)


class CropStream:
    """Batches of a :class:`CropSampler`, ``depth`` of them prepared ahead by a pool of ``workers``
    threads (Pillow releases the GIL while decoding and resampling) while the caller trains on the
    current one. The crops are drawn in the caller's thread, in order, so the batches are the same
    whatever the pool does. ``wait_seconds``: how long :meth:`next` waited for its batch."""

    def __init__(self, sampler: CropSampler, size: int, workers: int, depth: int = PREFETCH_BATCHES):
        self.sampler, self.size = sampler, size
        self.chunk = max(1, math.ceil(size / (2 * workers)))  # a few tasks per worker and batch
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenizer-crops")
        self.pending: deque = deque()
        self.wait_seconds = 0.0
        try:
            for _ in range(max(1, depth)):
                self._submit()
        except BaseException:
            self.close()
            raise

    def _fill(self, out: np.ndarray, specs: list, start: int):
        for j in range(start, min(start + self.chunk, len(specs))):
            out[j] = self.sampler.crop(specs[j])

    def _submit(self):
        specs = self.sampler.draw(self.size)
        c = self.sampler.crop_size
        out = np.empty((self.size, c, c, 3), np.uint8)
        futures = [self.pool.submit(self._fill, out, specs, k) for k in range(0, self.size, self.chunk)]
        self.pending.append((out, futures))

    def next(self) -> torch.Tensor:
        """The next batch: ``(size, 3, crop, crop)`` uint8 (see :func:`_model_input`)."""
        out, futures = self.pending.popleft()
        self._submit()  # keep the pool busy while this one is awaited
        t = time.perf_counter()
        for future in futures:
            future.result()  # a picture that cannot be decoded raises here, naming its file
        self.wait_seconds += time.perf_counter() - t
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _model_input(batch: torch.Tensor, device) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> contiguous float in [-1, 1] on ``device`` (as :func:`from_uint8`)."""
    return batch.to(device).contiguous().float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# The EMA codebook (updates `quantize.embedding.weight` in place; no extra parameters)


class EMACodebook:
    """EMA codebook with k-means++ initialisation and a restart policy that cannot thrash.

    * **Initialisation**: k-means++ seeding on the encoder outputs of the first batch, then a few
      Lloyd iterations, so the codes start spread over the data instead of on random (often
      near-identical) rows of smooth pictures.
    * **Restarts**: a code is dead when no vector was assigned to it in the last ``patience`` steps
      *and* its EMA assignment count is below ``threshold x`` the mean count (rarely used codes are
      not dead: they are the codebook's tail). Restarts begin after ``warmup`` steps, a restarted
      code gets ``patience`` steps to gather assignments before it can be restarted again, and at
      most ``max_per_step`` codes are restarted per step. A restarted code moves onto a batch vector drawn with
      probability proportional to its squared quantisation error (k-means++ again), i.e. where the
      codebook serves the data worst, not onto a random (likely well-served) vector.
    """

    def __init__(self, model: VQTokenizer, decay: float, restart_threshold: float, generator: torch.Generator,
                 warmup: int = 10, patience: int | None = None, max_per_step: int | None = None,
                 kmeans_iters: int = 10):
        weight = model.quantize.embedding.weight
        K = weight.shape[0]
        self.weight, self.decay, self.threshold, self.g = weight, decay, restart_threshold, generator
        self.warmup = warmup
        # a restarted code needs about 1 / (1 - decay) steps for its EMA count to reflect its use
        self.patience = patience if patience is not None else max(10, round(2 / (1 - decay)))
        self.max_per_step = max_per_step if max_per_step is not None else max(1, K // 64)
        self.kmeans_iters = kmeans_iters
        self.count = torch.ones(K, device=weight.device)  # reset to the mean at init_from
        self.total = weight.detach().clone()
        self.last_used = torch.zeros(K, dtype=torch.long, device=weight.device)
        self.initialised = False
        self.restarts = 0
        self.steps = 0

    def _draw(self, weights: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` row indices drawn with probability proportional to ``weights`` (CPU generator)."""
        w = weights.double().cpu().clamp_min(0)
        if float(w.sum()) <= 0:
            w = torch.ones_like(w)
        return torch.multinomial(w, count, replacement=count > int((w > 0).sum()), generator=self.g).to(weights.device)

    @torch.no_grad()
    def init_from(self, vectors: torch.Tensor):
        """k-means++ seeding on encoder outputs, then Lloyd iterations (no gradient, fp32)."""
        K = self.weight.shape[0]
        first = int(torch.randint(vectors.shape[0], (1,), generator=self.g))
        centres = [vectors[first]]
        nearest = ((vectors - vectors[first]) ** 2).sum(1)
        for _ in range(1, K):
            pick = int(self._draw(nearest, 1))
            centres.append(vectors[pick])
            nearest = torch.minimum(nearest, ((vectors - vectors[pick]) ** 2).sum(1))
        book = torch.stack(centres)
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(vectors, book).argmin(1)
            counts = torch.bincount(assign, minlength=K).float()
            sums = torch.zeros_like(book).index_add_(0, assign, vectors)
            used = counts > 0
            book[used] = sums[used] / counts[used, None]
        mean = vectors.shape[0] / K  # assignments per code and step, on average
        self.count.fill_(mean)
        self.weight.copy_(book)
        self.total.copy_(book * mean)
        self.initialised = True

    @torch.no_grad()
    def update(self, vectors: torch.Tensor, codes: torch.Tensor):
        """vectors (N, e) fp32, codes (N,): EMA of counts and sums, then restart (a few) dead codes."""
        K = self.weight.shape[0]
        self.steps += 1
        counts = torch.bincount(codes, minlength=K).float()
        sums = torch.zeros_like(self.total).index_add_(0, codes, vectors)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.total.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.count.sum()
        smoothed = (self.count + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing: no division by 0
        self.weight.copy_(self.total / smoothed[:, None])
        self.last_used[counts > 0] = self.steps
        if self.steps <= self.warmup:
            return
        mean = n / K
        dead = (self.count < self.threshold * mean) & (self.steps - self.last_used >= self.patience)
        dead = dead.nonzero().flatten()
        if not len(dead):
            return
        dead = dead[torch.argsort(self.count[dead])][: self.max_per_step]  # the least used first
        error = ((vectors - self.weight[codes]) ** 2).sum(1)  # each vector's squared quantisation error
        pick = self._draw(error, len(dead))
        self.weight[dead] = vectors[pick]
        self.total[dead] = vectors[pick] * mean
        self.count[dead] = mean
        self.last_used[dead] = self.steps  # a fresh code gets `patience` steps before it can be dead again
        self.restarts += len(dead)


# ----------------------------------------------------------------------------------------------
# Training


def _lr_at(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def training_step(model: VQTokenizer, codebook: EMACodebook, images: torch.Tensor, beta: float,
                  quantize: bool = True):
    """One forward with the straight-through estimator; returns (loss, recon, codes). With
    ``quantize=False`` (the autoencoder warm-up) the decoder reads the latents as they are and the
    codebook is left alone (codes is None)."""
    z = model.latents(images)  # (B, e, h, w)
    B, e, h, w = z.shape
    if not quantize:
        recon = model.decode_latents(z)
        return F.l1_loss(recon, images) + F.mse_loss(recon, images), recon, None
    flat = z.permute(0, 2, 3, 1).reshape(-1, e)
    if not codebook.initialised:
        codebook.init_from(flat.detach().float())
    codes = model.quantize.codes(z.detach()).flatten()
    z_q = model.quantize.embedding(codes)  # (N, e), no gradient needed: EMA-trained
    commit = F.mse_loss(flat, z_q.detach())
    z_st = flat + (z_q - flat).detach()  # straight-through: decoder gradients reach the encoder
    recon = model.decode_latents(z_st.view(B, h, w, e).permute(0, 3, 1, 2))
    loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + beta * commit
    codebook.update(flat.detach().float(), codes)
    return loss, recon, codes


EVAL_BATCH_PIXELS = 16 * 256 * 256
"""At most this many pixels per evaluation batch (the decoder's activations scale with it)."""
SHOWN_PICTURES = 8
"""Pictures in reconstruction.png (the first of the evaluation sample)."""


def eval_sample(count: int, size: int | None, seed: int) -> list[int]:
    """Sorted indices of the pictures evaluated: a seeded random choice of ``size`` (None: all)."""
    if size is None or size >= count:
        return list(range(count))
    if size < 1:
        raise ValueError(f"eval_pictures must be >= 1 or None (all), got {size}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, size=size, replace=False))


def eval_batches(pictures, indices: list[int], f: int, batch_size: int = 16,
                 seed: int = 0) -> list[list[int]]:
    """Pictures of one (cropped to multiples of f) size per batch, at most ``batch_size`` and about
    EVAL_BATCH_PIXELS pixels each; batches in a seeded random order, so an evaluation cut short by
    the time limit covers a random part of the sample rather than its smallest pictures.
    ``pictures``: :class:`Pictures` or a list of arrays (only the sizes are read)."""
    pictures = _as_pictures(pictures)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        H, W = _cropped_size(pictures.size(i), f)
        if H == 0 or W == 0:
            raise ValueError(f"{pictures.name(i)} ({pictures.size(i)[1]}x{pictures.size(i)[0]}) is smaller than "
                             f"the downsampling factor {f}")
        groups.setdefault((H, W), []).append(i)
    batches = []
    for (H, W), members in groups.items():
        per = max(1, min(batch_size, EVAL_BATCH_PIXELS // (H * W)))
        batches += [members[k:k + per] for k in range(0, len(members), per)]
    order = np.random.default_rng(seed).permutation(len(batches))
    return [batches[k] for k in order]


def _cropped_size(size: tuple[int, int], f: int) -> tuple[int, int]:
    """(H, W) of a picture of ``size`` (H, W) cut down to multiples of the downsampling factor f."""
    return size[0] // f * f, size[1] // f * f


def _cropped(array: np.ndarray, f: int) -> np.ndarray:
    H, W = _cropped_size(array.shape, f)
    return array[:H, :W]


def _pixels(pictures: Pictures, indices, f: int) -> int:
    return sum(math.prod(_cropped_size(pictures.size(i), f)) for i in indices)


@torch.no_grad()
def evaluate(model: VQTokenizer, pictures, indices: list[int] | None = None, *,
             batch_size: int = 16, seed: int = 0, deadline: float | None = None, stop: StopRequest | None = None,
             faults: Faults | None = None, progress: bool | None = False, workers: int | None = None) -> dict:
    """Whole-picture reconstruction PSNR (8-bit) and codebook usage of ``pictures[indices]`` (default:
    all), pictures cropped to multiples of f, batched by size on the model's device. ``pictures``:
    :class:`Pictures` or a list of arrays; only the evaluated pictures are decoded, the next batch's
    by ``workers`` threads while the current one is encoded and decoded.

    ``deadline`` (a ``time.perf_counter()`` value): no batch is started that the measured per-pixel
    rate says would end after it (the first batch always runs); a stop signal ends it too.
    ``eval_pictures`` says how many pictures the figures cover, ``eval_stopped_by`` why it ended
    (``done``, ``time_limit`` or the signal's name)."""
    pictures = _as_pictures(pictures)
    was_training = model.training
    model.eval()
    f = model.downsample
    indices = list(range(len(pictures))) if indices is None else list(indices)
    batches = eval_batches(pictures, indices, f, batch_size, seed)
    pool = ThreadPoolExecutor(max_workers=worker_count(workers), thread_name_prefix="tokenizer-eval")

    def load(number: int) -> list[Future]:  # decode a batch's pictures in the background
        return [pool.submit(pictures.array, i) for i in batches[number]] if number < len(batches) else []

    shown = set(indices[:SHOWN_PICTURES])
    scores: dict[int, float] = {}
    used: set[int] = set()
    pairs: dict[int, tuple] = {}
    started, pixels_done, batch_max, stopped_by = time.perf_counter(), 0, 0.0, "done"
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm import tqdm

    bar = tqdm(total=len(indices), desc="tokenizer evaluation", unit="pic", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        ahead = load(0)
        for number, batch in enumerate(batches):
            pixels = _pixels(pictures, batch, f)
            if number and stop is not None and stop.requested:
                stopped_by = stop.signal_name
                break
            if number and deadline is not None:
                rate = pixels_done / max(time.perf_counter() - started, 1e-9)  # pixels per second so far
                if time.perf_counter() + pixels / rate > deadline:
                    stopped_by = "time_limit"
                    break
            t = time.perf_counter()
            arrays = [future.result() for future in ahead]
            ahead = load(number + 1)
            images = torch.stack([from_uint8(_cropped(array, f)) for array in arrays])
            tokens = model.encode(images)
            recon = model.decode(tokens).cpu()
            for j, i in enumerate(batch):
                scores[i] = psnr(images[j:j + 1], recon[j:j + 1])
                if i in shown:
                    pairs[i] = (images[j], recon[j])
            used.update(tokens.unique().tolist())
            pixels_done += pixels
            batch_max = max(batch_max, time.perf_counter() - t)
            bar.update(len(batch))
            if faults is not None:
                faults.pause_in_eval(number + 1, stop)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        model.train(was_training)
    done = sorted(scores)
    return {"psnr": float(np.mean([scores[i] for i in done])) if done else None,
            "psnr_per_picture": [scores[i] for i in done], "codebook_usage": len(used) / model.codebook_size,
            "eval_pictures": len(done), "pictures_total": len(pictures), "eval_indices": done,
            "eval_stopped_by": stopped_by, "eval_seconds": round(time.perf_counter() - started, 3),
            "eval_batch_seconds_max": round(batch_max, 3), "pairs": [pairs[i] for i in sorted(pairs)]}


# ----------------------------------------------------------------------------------------------
# Saving (atomic) and the time budget


class TokenizerSaver:
    """Saves into ``out`` so that a kill at any moment leaves either the previous complete tokenizer
    or the new one (or, the first time over an earlier run's tokenizer of another architecture, none):
    the files are written into ``out/.saving-PID`` and renamed into place, weights before config."""

    def __init__(self, out):
        self.out = Path(out)
        self.saves, self.seconds, self.last_seconds, self.first = 0, 0.0, None, True

    def save(self, model: VQTokenizer, metrics: dict | None = None) -> float:
        t = time.perf_counter()
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".saving-{os.getpid()}"
        if self.first:  # leftovers of a killed run; an earlier run's figures do not describe this one
            for old in out.glob(".saving-*"):
                shutil.rmtree(old, ignore_errors=True)
            for name in ("metrics.json", "reconstruction.png"):
                (out / name).unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for name in os.listdir(tmp):
            fsync_file(tmp / name)
        if self.first and (out / CONFIG_FILE).is_file() and \
                (out / CONFIG_FILE).read_bytes() != (tmp / CONFIG_FILE).read_bytes():
            (out / CONFIG_FILE).unlink()  # never pair another architecture's config with these weights
        for name in (WEIGHTS_FILE, CONFIG_FILE, "metrics.json"):
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
        shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(out)
        self.first = False
        self.saves += 1
        self.last_seconds = time.perf_counter() - t
        self.seconds += self.last_seconds
        return self.last_seconds


def _serialise_seconds(model: VQTokenizer) -> float:
    """Time to serialise the weights in memory: the floor of a save's cost (estimate before any save)."""
    from safetensors.torch import save

    t = time.perf_counter()
    save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    return time.perf_counter() - t


@torch.no_grad()
def _probe_eval_rate(model: VQTokenizer, pictures: Pictures, index: int) -> float:
    """Pixels per second of encode + decode on one picture, timed on a second call: the first one pays
    one-time costs (CUDA context, cuDNN algorithm search: seconds on a GPU, where it once made the
    estimate reserve half a 100 s budget for a 5 s evaluation); the caller adds a margin."""
    was_training = model.training
    model.eval()
    image = from_uint8(_cropped(pictures.array(index), model.downsample))[None]
    with torch.no_grad():
        model.decode(model.encode(image)).cpu()
        t = time.perf_counter()
        model.decode(model.encode(image)).cpu()
    model.train(was_training)
    return image.shape[2] * image.shape[3] / max(time.perf_counter() - t, 1e-9)


# ----------------------------------------------------------------------------------------------
# train_tokenizer


def train_tokenizer(images="demo", out_dir=None, *, config: VQConfig | str = "demo-f8",
                    codebook_size: int | None = None, device: str = "auto", options: TrainOptions | None = None,
                    stop_signals: bool = False, started_at: float | None = None,
                    **option_overrides) -> tuple[VQTokenizer, dict]:
    """Train a VQ tokenizer on pictures and return ``(tokenizer, metrics)``.

    ``images``: file paths, a folder, ``[H, W, 3]`` uint8 arrays, or ``"demo"`` (the scikit-image
    photographs). ``metrics``: ``psnr`` (dB, whole pictures, mean over the evaluated ones; None if
    none was), ``psnr_per_picture`` (of ``eval_indices``), ``codebook_usage`` (over the evaluated
    pictures), ``eval_pictures`` / ``pictures_total``, ``steps``, ``seconds`` (training),
    ``restarts``, ``loss``, ``stopped_by`` (``steps``, ``time_limit`` or a signal's name), the
    budget's figures (``load_seconds``, ``save_seconds``, ``eval_seconds``, ``total_seconds``,
    ``stop_decision``...). With ``out_dir`` the tokenizer is saved there (``save_pretrained``, before
    the evaluation and every ``save_every`` steps / ``save_every_seconds``) with ``metrics.json`` and
    ``reconstruction.png`` (originals over reconstructions) once evaluated.

    ``stop_signals`` (the CLI): SIGUSR1 / SIGTERM / the first Ctrl-C stop training after the current
    step (or the evaluation after its current batch), save, and return (``stopped_by`` names the
    signal). ``started_at``: the ``time.perf_counter()`` from which ``time_limit`` counts (default:
    the call)."""
    origin = time.perf_counter() if started_at is None else started_at
    opts = options or TrainOptions()
    for key, value in option_overrides.items():
        if not hasattr(opts, key):
            raise ValueError(f"unknown training option {key!r}; known: {', '.join(TrainOptions.__annotations__)}")
        setattr(opts, key, value)
    cfg = VQConfig.preset(config) if isinstance(config, str) else config
    if codebook_size is not None:
        cfg = VQConfig.from_dict({**cfg.to_dict(), "n_embed": codebook_size})
    if cfg.quantizer != "vq":
        raise ValueError("tokenizer training supports the 'vq' quantizer (EMA codebook) only")
    if opts.steps < 1 or opts.batch_size < 1 or opts.eval_batch_size < 1:
        raise ValueError("steps, batch_size and eval_batch_size must be >= 1")
    if opts.crop % cfg.downsample:
        raise ValueError(f"crop {opts.crop} must be a multiple of the downsampling factor {cfg.downsample}")
    if opts.time_limit is not None and opts.time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {opts.time_limit}")
    if opts.eval_pictures is not None and opts.eval_pictures < 1:
        raise ValueError(f"eval_pictures must be >= 1 or None (all), got {opts.eval_pictures}")
    worker_count(opts.data_workers)  # refuses a count < 1
    pictures = _load_pictures(images, opts.data_workers, opts.picture_cache_mb)
    dev = resolve_device(device)

    torch.manual_seed(opts.seed)
    model = VQTokenizer(cfg).to(dev).train()
    sampler = CropSampler(pictures, opts.crop, opts.seed)
    codebook = EMACodebook(model, opts.ema_decay, opts.restart_threshold,
                           torch.Generator().manual_seed(opts.seed + 1))
    params = [p for n, p in model.named_parameters() if not n.startswith("quantize.")]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sample = eval_sample(len(pictures), opts.eval_pictures, opts.seed)
    eval_batches(pictures, sample, cfg.downsample)  # too-small pictures are refused before training
    saver = TokenizerSaver(out_dir) if out_dir is not None else None
    faults = Faults()
    stop = StopRequest()
    if stop_signals:
        stop.install()
    try:
        return _train(model, codebook, sampler, optimizer, params, pictures, sample, dev, cfg, opts, origin,
                      saver, stop, faults)
    finally:
        stop.uninstall()


def _train(model, codebook, sampler, optimizer, params, pictures, sample, dev, cfg, opts, origin, saver,
           stop: StopRequest, faults: Faults) -> tuple[VQTokenizer, dict]:
    limit = opts.time_limit
    deadline = None if limit is None else origin + limit
    load_seconds = time.perf_counter() - origin
    budget: dict = {"time_limit": limit, "load_seconds": round(load_seconds, 3)}
    reserve = eval_reserve = save_estimate = 0.0
    if limit is not None:
        # what must still fit after the last step: the final save and the evaluation (at most half the budget)
        f = model.downsample
        eval_pixels = _pixels(pictures, sample, f)
        rate = _probe_eval_rate(model, pictures, max(sample, key=lambda i: math.prod(pictures.size(i))))
        eval_estimate = 1.25 * eval_pixels / rate
        save_estimate = 3.0 * _serialise_seconds(model) + 0.2 if saver is not None else 0.0
        eval_reserve = min(eval_estimate, 0.5 * limit) + 0.5  # + metrics.json, reconstruction.png
        reserve = eval_reserve + save_estimate
        budget.update(eval_seconds_estimate=round(eval_estimate, 3), save_seconds_estimate=round(save_estimate, 3),
                      reserved_seconds=round(reserve, 3))
        if opts.log_every:
            print(f"tokenizer time limit {limit:g}s: {load_seconds:.1f}s spent loading, {reserve:.1f}s reserved for "
                  f"saving and evaluating {len(sample)} pictures (estimated {eval_estimate:.1f}s)", flush=True)

    # autoencoder warm-up: the codebook is placed (k-means++) on latents that already carry the pictures
    warmup = opts.ae_warmup_steps if opts.ae_warmup_steps is not None else min(100, opts.steps // 10)
    start, steps_done, losses, step_times = time.perf_counter(), 0, [], []
    last_save = start

    def save_due(steps_done: int, now: float) -> bool:
        return saver is not None and bool((opts.save_every and steps_done % opts.save_every == 0) or
                                          (opts.save_every_seconds and now - last_save >= opts.save_every_seconds))

    stopped_by, decision = "steps", None
    # crops are drawn here, in order, and prepared by a thread pool a few batches ahead of the step
    stream = sampler.stream(opts.batch_size, opts.data_workers)
    try:
        for step in range(opts.steps):
            if deadline is not None and steps_done:
                now = time.perf_counter()
                save_cost = max(save_estimate, saver.last_seconds or 0.0) if saver is not None else 0.0
                reserve = eval_reserve + save_cost  # the final save, measured once a periodic one happened
                next_step = max(step_times[-20:]) + (save_cost if save_due(step + 1, now) else 0.0)
                if now + next_step + reserve >= deadline:
                    stopped_by = "time_limit"
                    decision = {"elapsed": round(now - origin, 3), "next_step_estimate": round(next_step, 3),
                                "reserved_seconds": round(reserve, 3)}
                    break
            t = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, opts.steps, opts.lr)
            batch = _model_input(stream.next(), dev)  # prepared in the background; waits only if not ready
            loss, _, _ = training_step(model, codebook, batch, opts.beta, quantize=step >= warmup)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step_times.append(time.perf_counter() - t)
            steps_done = step + 1
            elapsed = time.perf_counter() - start
            if opts.log_every and steps_done % opts.log_every == 0:
                print(f"tokenizer step {steps_done}/{opts.steps}  loss {np.mean(losses[-opts.log_every:]):.4f}  "
                      f"restarts {codebook.restarts}  {elapsed:.0f}s", flush=True)
            faults.pause(steps_done, stop)
            if stop.requested:
                stopped_by = stop.signal_name
                break
            if steps_done < opts.steps and save_due(steps_done, time.perf_counter()):
                saver.save(model, _train_metrics(steps_done, start, codebook, losses, step_times, dev, cfg,
                                                 stopped_by, budget, "training", len(pictures)))
                last_save = time.perf_counter()
    finally:
        stream.close()  # before the save and the evaluation: no background work left
    budget["data_wait_seconds"] = round(stream.wait_seconds, 3)
    seconds = time.perf_counter() - start
    if decision is not None:
        budget["stop_decision"] = decision
    metrics = _train_metrics(steps_done, start, codebook, losses, step_times, dev, cfg, stopped_by, budget,
                             "evaluating", len(pictures), seconds)
    if saver is not None:  # before any evaluation: a kill from here on leaves this tokenizer
        saver.save(model, metrics if stopped_by in ("steps", "time_limit") else {**metrics, "status": "stopped"})
    model.eval()
    if stopped_by in ("steps", "time_limit"):
        result = evaluate(model, pictures, sample, batch_size=opts.eval_batch_size, seed=opts.seed,
                          deadline=deadline, stop=stop, faults=faults, progress=opts.progress,
                          workers=opts.data_workers)
    else:  # a stop signal: save and leave, no evaluation
        result = {"psnr": None, "psnr_per_picture": [], "codebook_usage": None, "eval_pictures": 0,
                  "pictures_total": len(pictures), "eval_indices": [], "eval_stopped_by": stopped_by,
                  "eval_seconds": 0.0, "eval_batch_seconds_max": 0.0, "pairs": []}
    pairs = result.pop("pairs")
    metrics.update(result)
    signal_name = stopped_by if stopped_by not in ("steps", "time_limit") else (
        result["eval_stopped_by"] if result["eval_stopped_by"] not in ("done", "time_limit") else None)
    metrics["status"] = "stopped" if signal_name else "complete"
    metrics["signal"] = signal_name
    if saver is not None:
        metrics["save_seconds"] = round(saver.seconds, 3)
        if pairs:
            save_png(_side_by_side(pairs), saver.out / ".reconstruction.png.tmp")
            os.replace(saver.out / ".reconstruction.png.tmp", saver.out / "reconstruction.png")
    metrics["total_seconds"] = round(time.perf_counter() - origin, 3)
    if saver is not None:
        write_atomic(saver.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        model.source = str(saver.out.resolve())
    return model, metrics


def _train_metrics(steps_done, start, codebook, losses, step_times, dev, cfg, stopped_by, budget, status,
                   pictures_total, seconds=None) -> dict:
    """The figures known once training stopped (the evaluation's are added later)."""
    seconds = time.perf_counter() - start if seconds is None else seconds
    return {"status": status, "psnr": None, "psnr_per_picture": [], "codebook_usage": None, "eval_pictures": 0,
            "pictures_total": pictures_total, "steps": steps_done, "seconds": round(seconds, 1),
            "restarts": codebook.restarts, "loss": float(np.mean(losses[-20:])) if losses else None,
            "device": str(dev), "config": cfg.to_dict(), "stopped_by": stopped_by,
            "step_seconds_max": round(max(step_times), 3) if step_times else 0.0, **budget}


def _side_by_side(pairs, height: int = 192) -> torch.Tensor:
    """Originals (top row) over reconstructions (bottom row), each scaled to `height` pixels."""
    tops, bottoms = [], []
    for original, recon in pairs:
        scale = height / original.shape[1]
        size = (height, max(1, round(original.shape[2] * scale)))
        tops.append(F.interpolate(original[None], size=size, mode="area")[0])
        bottoms.append(F.interpolate(recon[None], size=size, mode="area")[0])
    return torch.cat([torch.cat(tops, dim=2), torch.cat(bottoms, dim=2)], dim=1)


# ----------------------------------------------------------------------------------------------
# CLI


@dataclass
class TokenizerTrainCommand(ConfigBase):
    """Everything ``nuwa-ds tokenizer-train`` is told; its flags are generated from these fields."""

    out: str
    """Directory for tokenizer.safetensors + tokenizer_config.json."""
    images: str = field(default="demo", metadata=cli(help=(
        "a folder of pictures, or 'demo' for the photographs shipped with scikit-image "
        f"({', '.join(DEMO_PICTURES)})")))
    preset: str = "demo-f8"
    """Architecture preset (VQConfig.preset names)."""
    codebook_size: int | None = None
    """Number of codes (default: the preset's)."""
    device: str = "auto"
    """auto (GPU when there is one), cpu or cuda."""
    training: TrainOptions = field(default_factory=TrainOptions)
    """How to train: its fields are flags."""


def add_arguments(parser: argparse.ArgumentParser):
    TokenizerTrainCommand.add_flags(parser)
    parser.epilog = ("SIGUSR1, SIGTERM or a first Ctrl-C: the tokenizer is saved after the current step (or, "
                     f"during the evaluation, the metrics so far are written) and the command exits with "
                     f"{REQUEUE_EXIT_CODE}.")


def run(args) -> int:
    command = TokenizerTrainCommand.from_args(args)
    _, metrics = train_tokenizer(command.images, command.out, config=command.preset,
                                 codebook_size=command.codebook_size, device=command.device, options=command.training,
                                 stop_signals=True, started_at=getattr(args, "command_started", None))
    figures = (f"PSNR {metrics['psnr']:.2f} dB on {metrics['eval_pictures']} of {metrics['pictures_total']} pictures"
               if metrics["psnr"] is not None else "not evaluated")
    if metrics["eval_stopped_by"] not in ("done", None) and metrics["eval_pictures"]:
        figures += f" (evaluation stopped by {metrics['eval_stopped_by']})"
    usage = f", codebook usage {metrics['codebook_usage']:.0%}" if metrics["codebook_usage"] is not None else ""
    print(f"tokenizer saved to {command.out}: {figures}{usage}, {metrics['steps']} steps in {metrics['seconds']:.0f}s "
          f"on {metrics['device']} (stopped by {metrics['stopped_by']}), {metrics['total_seconds']:.0f}s in all",
          flush=True)
    if metrics["signal"]:
        print(f"[nuwa-ds] stopped by {metrics['signal']}: exit {REQUEUE_EXIT_CODE}", flush=True)
        return REQUEUE_EXIT_CODE
    return 0
