"""Validation during training: a fixed held-out set, its loss every ``train.eval_every`` steps, the
eval history (kept in checkpoints), sample pictures after each evaluation (``samples.py``), and the
loss-curve picture at the end (docs/decisions.md, "Validation (issue 13)").

* **The set is fixed.** It is built once per process from ``data.val_shards`` (or, for synthetic
  training data, from synthetic grids of a stream no training rank draws) as a list of global
  micro-batches ``0..world*eval_batches-1``; batch ``j`` depends only on ``(data.seed, j)`` and the
  shards, never on the rank, the step or the training stream. Rank ``r`` evaluates batches
  ``r, r+W, r+2W, ...``: disjoint, and every rank runs the same number of forwards (ZeRO-3's
  gathers are collectives). Crops and orders are seeded per batch, caption dropout is off.
* **The value is exact across a resume.** The set is rebuilt identically, the weights at step k are
  the same bits after a resume (the training resume is exact), and the sums are reduced in float64
  in a fixed order; evaluation touches no RNG and no data stream, so it does not change training.
* ``model_inputs(batch, device)`` is the one place where a batch becomes the engine's keyword
  arguments (training and evaluation): keys beyond tokens / orders / text (such as ``rows``) are
  passed through.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data_pipelines.loader import (LoaderSpec, TokenStream, check_shards, choose_canvas, expand_shards, full_batches,
                                   usable_samples)
from data_pipelines.synthetic import SyntheticLoader
from nuwa_ds.training import distributed as D
from nuwa_ds.training.samples import Sampler

log = logging.getLogger("nuwa_ds.validation")
VAL_SALT = 0x5641  # 'VA': the validation set's RNG stream (training streams use restart 0, 1, ...)
HISTORY_FILE = "eval_history.json"
CURVE_FILE = "loss_curve.png"
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# Batches -> engine arguments


def model_inputs(batch: dict, device: torch.device) -> dict:
    """Keyword arguments of the model's forward for one loader batch (tensors moved to ``device``).

    ``tokens``, ``orders`` -> ``order`` and ``text`` are mapped; every other key not starting with
    ``_`` (e.g. ``rows``, the patch row of each crop) is passed through under its own name."""
    text = batch.get("text")
    if text is not None:
        text = {k: v.to(device, non_blocking=True) for k, v in text.items()}
    inputs = {"tokens": batch["tokens"].to(device, non_blocking=True), "order": batch["orders"], "text": text,
              "return_logits": False}
    for key, value in batch.items():
        if key in ("tokens", "orders", "text") or key.startswith("_"):
            continue
        inputs[key] = value.to(device, non_blocking=True) if torch.is_tensor(value) else value
    return inputs


# ----------------------------------------------------------------------------------------------
# The fixed validation set


def _synthetic_batches(data_cfg, model_cfg, micro_batch_size: int, count: int) -> list[dict]:
    # rank -1: a stream of the same seed that no training rank (0..W-1) ever draws
    source = SyntheticLoader(data_cfg, model_cfg, -1, 1, micro_batch_size)
    return [source.batch_at(j) for j in range(count)]


def _shard_batches(data_cfg, model_cfg, micro_batch_size: int, count: int, text_tokenizer) -> list[dict]:
    """Global batches 0..count-1 (fewer if the shards hold fewer full batches) from data.val_shards."""
    urls = expand_shards(data_cfg.val_shards)
    spec = LoaderSpec.build(data_cfg, model_cfg, urls, micro_batch_size, caption_dropout=0.0, shuffle_buffer=1)
    stream = TokenStream(spec, 0, (0, 0), VAL_SALT, text_tokenizer)  # crops/orders: its seeded make_batch
    rng = np.random.default_rng([data_cfg.seed, VAL_SALT])
    samples: list = []
    buckets: dict[tuple, list[int]] = {c: [] for c in spec.canvases}
    B = micro_batch_size
    # shards in a seeded order, read until enough full batches are pooled (same on every rank)
    for u in rng.permutation(len(urls)):
        for sample in usable_samples(urls[int(u)], spec, stream.skips):
            buckets[choose_canvas(sample[0].shape, spec.canvases)].append(len(samples))
            samples.append(sample)
        if sum(len(b) // B for b in buckets.values()) >= count:
            break
    cut = full_batches(buckets, B)
    chosen = [cut[int(i)] for i in rng.permutation(len(cut))[:count]]
    return [stream.make_batch(samples, canvas, indices, 0, j) for j, (canvas, indices) in enumerate(chosen)]


def build_val_batches(data_cfg, model_cfg, rank: int, world_size: int, micro_batch_size: int, eval_batches: int,
                      text_tokenizer=None) -> list[dict]:
    """This rank's micro-batches of the fixed validation set (the same number on every rank)."""
    count = world_size * eval_batches
    if data_cfg.val_shards is None:
        batches = _synthetic_batches(data_cfg, model_cfg, micro_batch_size, count)
    else:
        batches = _shard_batches(data_cfg, model_cfg, micro_batch_size, count, text_tokenizer)
    usable = len(batches) // world_size * world_size
    if usable == 0:
        raise ValueError(f"data.val_shards={data_cfg.val_shards!r} holds {len(batches)} full micro-batches of "
                         f"{micro_batch_size} usable samples, fewer than the {world_size} ranks; write more "
                         f"held-out samples (nuwa-ds prepare --val-fraction) or lower train.micro_batch_size")
    if usable < count:
        log.warning("validation set: %d micro-batches per rank instead of train.eval_batches=%d (the val shards "
                    "hold no more full batches)", usable // world_size, eval_batches)
    return batches[rank:usable:world_size]


def check_val_shards(cfg) -> None:
    """Preflight: the val shard files exist when validation is on."""
    if cfg.train.eval_every and cfg.data.val_shards is not None:
        try:
            check_shards(cfg.data.val_shards)
        except ValueError as exc:
            raise ValueError(str(exc).replace("data.shards", "data.val_shards", 1)) from None


# ----------------------------------------------------------------------------------------------
# Evaluation in the training loop


class Validator:
    """The fixed set of one rank, the evaluation, its sample pictures, and the run's eval history."""

    def __init__(self, trainer, text_tokenizer=None):
        cfg = trainer.cfg
        self.trainer, self.every, self.steps = trainer, cfg.train.eval_every, cfg.train.steps
        self.history: list[dict] = []
        self.batches: list[dict] = []
        if self.every:
            self.batches = build_val_batches(cfg.data, cfg.model, trainer.dist.rank, trainer.dist.world_size,
                                             cfg.train.micro_batch_size, cfg.train.eval_batches, text_tokenizer)
        self.sampler = Sampler(trainer, self.batches)
        self.notes = self.sampler.notes  # printed at the start of the run

    # -- checkpoint client state ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"eval_history": [dict(h) for h in self.history]}

    def load_state_dict(self, client: dict):
        self.history = [dict(h) for h in client.get("eval_history", [])]

    # -- evaluation ---------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.steps)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, int]:
        """(mean loss in nats per token, tokens) over the whole set, all ranks."""
        engine, device = self.trainer.engine, self.trainer.device
        was_training = engine.module.training
        engine.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = 0
        try:
            for batch in self.batches:
                loss = engine(**model_inputs(batch, device)).loss
                n = batch["tokens"].numel()
                loss_sum += loss.detach().double() * n
                tokens += n
        finally:
            if was_training:
                engine.train()
        totals = D.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(tokens), dtype=torch.float64,
                                                                      device=device)])).tolist()
        return totals[0] / totals[1], int(totals[1])

    def run(self, step: int, logger) -> dict:
        started = time.perf_counter()
        val_loss, tokens = self.evaluate()
        entry = {"step": step, "val_loss": val_loss, "val_bits_per_token": val_loss / LN2, "val_tokens": tokens}
        self.history = [h for h in self.history if h["step"] < step] + [entry]
        seconds = time.perf_counter() - started
        finite = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
        logger.event("eval", f"step {step}: val loss {val_loss:.4f} ({val_loss / LN2:.4f} bits/token) on {tokens} "
                     f"tokens, {seconds:.1f} s", **finite, seconds=seconds)
        logger.scalars(step, {"val/loss": val_loss, "val/bits_per_token": val_loss / LN2})
        self.sampler.run(step, logger)  # every rank, model back in train mode
        return entry

    def finish(self, run_dir: Path, is_main: bool):
        """End of training (rank 0): eval_history.json (when validating) and loss_curve.png."""
        if not is_main:
            return
        if self.every:
            (run_dir / HISTORY_FILE).write_text(json.dumps(self.history, indent=1) + "\n")
        try:
            plot_loss_curve(run_dir / "metrics.jsonl", run_dir / CURVE_FILE)
        except Exception as exc:  # noqa: BLE001 - a picture must never fail a finished run
            log.warning("could not draw %s: %s", run_dir / CURVE_FILE, exc)


# ----------------------------------------------------------------------------------------------
# The loss curve


def read_curves(metrics_path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """({step: train loss}, {step: val loss}) of the history that survived: a 'start' event at step s
    (a resume from the checkpoint of step s, or a fresh start at 0) drops what was logged after s."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for line in Path(metrics_path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        event, step = rec.get("event"), rec.get("step")
        if event == "start":
            for curve in (train, val):
                for s in [s for s in curve if s > (step or 0)]:
                    del curve[s]
        elif event == "eval" and rec.get("val_loss") is not None:
            val[int(step)] = float(rec["val_loss"])
        elif event is None and rec.get("loss") is not None:
            train[int(step)] = float(rec["loss"])
    return dict(sorted(train.items())), dict(sorted(val.items()))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def plot_loss_curve(metrics_path: Path, out_path: Path, size: tuple[int, int] = (640, 400)) -> Optional[Path]:
    """Train loss (line) and val loss (points) against step, drawn with Pillow; None without data."""
    from PIL import Image, ImageDraw

    train, val = read_curves(metrics_path)
    if not train and not val:
        return None
    W, H = size
    left, right, top, bottom = 64, 16, 28, 44
    steps = [*train, *val]
    values = [*train.values(), *val.values()]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or max(abs(y0) * 0.05, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def xy(step, value):
        return (left + (step - x0) / (x1 - x0) * (W - left - right),
                top + (y1 - value) / (y1 - y0) * (H - top - bottom))

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    black, grey, blue, red = (0, 0, 0), (225, 225, 225), (31, 119, 180), (214, 39, 40)
    for t in _ticks(y0, y1):
        _, y = xy(x0, t)
        draw.line([(left, y), (W - right, y)], fill=grey)
        draw.text((left - 6, y), f"{t:.3g}", fill=black, anchor="rm")
    for t in _ticks(x0, x1):
        if t == int(t):
            x, _ = xy(t, y0)
            draw.line([(x, H - bottom), (x, H - bottom + 4)], fill=black)
            draw.text((x, H - bottom + 6), str(int(t)), fill=black, anchor="mt")
    draw.line([(left, top), (left, H - bottom), (W - right, H - bottom)], fill=black, width=1)
    draw.text(((left + W - right) / 2, H - 6), "step", fill=black, anchor="mb")
    draw.text((6, top - 16), "loss (nats/token)", fill=black)
    if len(train) > 1:
        draw.line([xy(s, v) for s, v in train.items()], fill=blue, width=2)
    elif train:
        x, y = xy(*next(iter(train.items())))
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=blue)
    if len(val) > 1:
        draw.line([xy(s, v) for s, v in val.items()], fill=red, width=1)
    for s, v in val.items():
        x, y = xy(s, v)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=red, outline=black)
    legend_x = W - right - 150
    draw.line([(legend_x, top - 14), (legend_x + 20, top - 14)], fill=blue, width=2)
    draw.text((legend_x + 26, top - 14), "train loss", fill=black, anchor="lm")
    draw.ellipse([legend_x + 86, top - 18, legend_x + 94, top - 10], fill=red, outline=black)
    draw.text((legend_x + 100, top - 14), "val loss", fill=black, anchor="lm")
    out_path = Path(out_path)
    img.save(out_path)
    return out_path
