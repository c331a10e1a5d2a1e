"""Sample pictures during training (docs/decisions.md, "Sample pictures (issue 13)"): after every
evaluation, ``train.samples`` canvases of the training size (data.canvas) and one ``train.sample_wide``
times as wide (order right), decoded by the VQ tokenizer into one grid picture:
``run_dir/samples/step_NNNNNN.png`` and the TensorBoard image ``samples``.

* **The decoder.** ``train.sample_tokenizer``, else the tokenizer that made ``data.shards`` (the
  ``tokenizer_path`` of their manifest.json, checked against the manifest's fingerprint of it). When
  none is found or it cannot be loaded: no pictures and one line at the start; a picture never fails
  a run.
* **Comparable across evaluations.** The same seed (``train.seed``) at every evaluation; generation
  draws keyed random numbers, so only the weights change between two grids. Models with
  ``model.row_embedding`` get the patch rows of the first validation crops (cut like training crops).
* **Training is untouched.** Generation runs on a plain copy of the model (no DeepSpeed hooks, no
  collectives) with the torch RNG states forked; the engine, its module's mode, the loader and the
  RNG streams are left alone, so the losses equal those of a run without pictures (tested bitwise).
* **ZeRO 1/2/3, many ranks.** Every rank fills its copy from the engine one parameter at a time under
  ``GatheredParameters`` (under ZeRO-3 each gather is a collective) and draws the same canvases, so
  no rank waits in a collective for longer than rank 0's decoding; rank 0 decodes and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data_pipelines.loader import expand_shards
from data_pipelines.prepare import MANIFEST_FILE, tokenizer_fingerprint
from nuwa_ds.model import GenerationConfig, NuwaInfinity
from nuwa_ds.tokenizer import VQConfig, VQTokenizer, save_png, to_uint8
from nuwa_ds.training import distributed as D

SAMPLES_DIR = "samples"
GAP = 4
"""White pixels between the pictures of a grid."""


def find_tokenizer(cfg) -> tuple[Optional[Path], Optional[dict], str]:
    """(path, fingerprint recorded by ``prepare`` or None, where it came from) of the decoder, or
    (None, None, why there is none)."""
    if cfg.train.sample_tokenizer is not None:
        path = Path(cfg.train.sample_tokenizer)
        if not path.exists():
            return None, None, f"train.sample_tokenizer={path} does not exist"
        return path, None, "train.sample_tokenizer"
    pattern = cfg.data.shards or cfg.data.val_shards
    if pattern is None:
        return None, None, "synthetic training data names no VQ tokenizer; set train.sample_tokenizer"
    first = expand_shards(pattern)[0]
    manifest = Path(first).parent / MANIFEST_FILE
    if "://" in first or first.startswith("pipe:") or not manifest.is_file():
        return None, None, f"no {MANIFEST_FILE} beside the shards names their VQ tokenizer; set train.sample_tokenizer"
    meta = json.loads(manifest.read_text())
    if not meta.get("tokenizer_path"):
        return None, None, (f"{manifest} does not name the tokenizer that made it (an in-memory tokenizer, or an "
                            f"older prepare); set train.sample_tokenizer")
    path = Path(meta["tokenizer_path"])
    if not path.exists():
        return None, None, f"the tokenizer {path} named by {manifest} does not exist; set train.sample_tokenizer"
    return path, meta.get("settings", {}).get("tokenizer"), str(manifest)


def load_tokenizer(cfg, device: torch.device):
    """(VQ tokenizer, how it was found) or (None, why not)."""
    try:
        path, fingerprint, origin = find_tokenizer(cfg)
        if path is None:
            return None, origin
        if path.is_file():  # a taming .ckpt: the architecture prepare recorded, else inferred from the weights
            config = VQConfig.from_dict(fingerprint["config"]) if fingerprint else None
            tokenizer = VQTokenizer.from_taming_checkpoint(path, config, device=device)
        else:
            tokenizer = VQTokenizer.from_pretrained(path, device=device)
    except Exception as exc:  # noqa: BLE001 - a picture must never fail a run
        return None, f"no VQ tokenizer could be loaded ({type(exc).__name__}: {exc}); set train.sample_tokenizer"
    if tokenizer.codebook_size != cfg.model.vocab_size:
        return None, f"the tokenizer {path} has {tokenizer.codebook_size} codes, the model {cfg.model.vocab_size}"
    if fingerprint is not None and tokenizer_fingerprint(tokenizer) != fingerprint:
        return None, f"the tokenizer {path} is not the one that made the shards ({origin}): its weights changed"
    return tokenizer, f"{path} (from {origin})"


def grid_picture(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of pictures (``[N, H, W, 3]`` uint8 each) -> one ``[H, W, 3]`` picture on white, the rows
    top to bottom, each row's pictures left to right, ``GAP`` pixels apart."""
    width = max(len(r) * (r.shape[2] + GAP) - GAP for r in rows)
    height = sum(r.shape[1] for r in rows) + GAP * (len(rows) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for row in rows:
        for i, picture in enumerate(row):
            x = i * (row.shape[2] + GAP)
            out[y:y + row.shape[1], x:x + row.shape[2]] = picture
        y += row.shape[1] + GAP
    return out


class Sampler:
    """The sample pictures of one rank's trainer. Every rank draws the same canvases (so none waits
    long in a collective for rank 0); rank 0, which holds the tokenizer, decodes and writes them."""

    def __init__(self, trainer, val_batches: list[dict]):
        cfg, train = trainer.cfg, trainer.cfg.train
        self.trainer, self.cfg, self.notes = trainer, cfg, []
        self.tokenizer = None
        self.on = bool(train.eval_every and train.samples)
        if not self.on:
            return
        main = trainer.dist.is_main
        if main:
            self.tokenizer, origin = load_tokenizer(cfg, trainer.device)
        self.on = D.all_gather_object(self.tokenizer is not None)[0]  # rank 0 decides for all (the gathers)
        if main:
            wide = f" + 1 x{train.sample_wide} wide" if train.sample_wide else ""
            self.notes.append(f"sample pictures: {train.samples}{wide} at every evaluation, decoded by {origin}"
                              if self.on else f"sample pictures off: {origin}")
        orders = cfg.data.orders
        self.order = max(orders, key=orders.get)  # the most trained order (the first of equals)
        rows = torch.cat([b["rows"] for b in val_batches if "rows" in b] or [torch.zeros(1, dtype=torch.long)])
        self.rows = rows[torch.arange(train.samples) % len(rows)]  # where the first validation crops sit

    @torch.no_grad()
    def _copy(self):
        """A plain copy of the engine's model on this rank's device. Every rank must call this
        (under ZeRO-3 each parameter is gathered collectively), also when its own copy fails."""
        module, copy, error = self.trainer.engine.module, None, None
        try:
            with torch.device("meta"):
                copy = NuwaInfinity(dataclasses.replace(module.config))
            copy = copy.to(next(module.parameters()).dtype).to_empty(device=self.trainer.device).eval()
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: raised after the gathers
            error = exc
        own = dict(copy.named_parameters()) if error is None else {}
        for name, param in D.gathered_parameters(module):
            if name in own:
                own[name].copy_(param.detach())
        if error is not None:
            raise error
        for name, buffer in module.named_buffers():
            copy.get_buffer(name).copy_(buffer)
        return copy

    def draw(self, model) -> list[torch.Tensor]:
        """Token canvases: ``train.samples`` of the training canvas, and the wide one (if any)."""
        train = self.cfg.train
        T, H, W = self.cfg.data.canvas
        gen = GenerationConfig(temperature=train.sample_temperature, top_k=train.sample_top_k, seed=train.seed,
                               wavefront=True, cuda_graph=False)  # no graph capture beside the loader's threads
        rows = self.rows if self.cfg.model.row_embedding else None
        canvases = [model.generate((T, H, W), order=self.order, batch_size=train.samples, config=gen, rows=rows)]
        if train.sample_wide:
            canvases.append(model.generate((T, H, W * train.sample_wide), order="right", batch_size=1, config=gen,
                                           rows=None if rows is None else rows[:1]))
        return canvases

    def picture(self, canvases: list[torch.Tensor]) -> np.ndarray:
        """Rank 0: the grid of decoded canvases, one row each (frames of a video side by side)."""
        tok, rows = self.tokenizer, []
        for canvas in canvases:
            frames = [tok.decode_tiled(canvas[:, t].to(tok.device)) for t in range(canvas.shape[1])]
            rows.append(to_uint8(torch.cat(frames, dim=-1)))
        return grid_picture(rows)

    def run(self, step: int, logger):
        """After an evaluation, on every rank (the engine's model stays in train mode, untouched)."""
        if not self.on:
            return
        started = time.perf_counter()
        device = self.trainer.device
        try:
            # the torch RNG states come back as they were: the training stream does not see the pictures
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                canvases = self.draw(self._copy())
            if self.tokenizer is None:  # not rank 0
                return
            picture = self.picture(canvases)
            path = save_png(picture, self.trainer.run_dir / SAMPLES_DIR / f"step_{step:06d}.png")
            logger.image(step, "samples", picture)
        except Exception as exc:  # noqa: BLE001 - a picture must never fail a run
            logger.event("samples", f"step {step}: no sample pictures ({type(exc).__name__}: {exc})",
                         step=step, error=str(exc))
            return
        seconds = time.perf_counter() - started
        logger.event("samples", f"step {step}: sample pictures {path} ({picture.shape[1]}x{picture.shape[0]} px), "
                     f"{seconds:.1f} s", step=step, path=str(path), seconds=seconds)
