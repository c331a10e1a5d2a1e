"""``nuwa-ds recipe landscape-videos``: text-to-image, text-to-video and animation learned from
procedural landscape videos, and measured against held-out worlds.

    nuwa-ds recipe landscape-videos --preset gpu --out outputs/video-recipe     # one GPU, about 9 minutes
    nuwa-ds recipe landscape-videos --preset cpu --out outputs/video-recipe-cpu # 2 CPU cores, minutes

One model learns all three tasks from one kind of data: captioned clips of a camera panning over a
landscape world (``data_pipelines.landscape_video``: the pan speed and direction, drifting clouds and
a moving sun are seeded; each caption is written from the generator's parameters, so whether a
picture follows its caption can be read back from its pixels). Frame 0 of a clip given its caption
is text-to-image; the clip given its caption is text-to-video; the clip given its caption and frame 0
is animation. Captions are dropped for 10% of the training samples, which trains classifier-free
guidance.

Stages (each writing into ``--out``):

1. **clips**: training clips of ``clip_frames`` frames from training worlds; held-out clips
   ``long_factor`` times longer from other worlds (MP4 for ``prepare``, PNG frames for the scores);
2. **text encoder**: ``nuwa-ds text-encoder`` on the training captions: a word-piece tokenizer and a
   small BERT, saved with ``save_pretrained`` like any downloaded encoder, then used through
   ``train.text_encoder_path``;
3. **tokenizer**: ``tokenizer-train`` on training frames;
4. **shards**: ``prepare`` of the training clips and of the held-out clips (cut into clips of the
   training length: the validation set);
5. **train**: DeepSpeed, one rank, order ``down`` (frames outermost), validation on held-out clips;
6. **export + generate** (the export carries the text encoder and its tokenizer): text-to-image of
   held-out captions at several guidance scales, text-to-video and animation ``long_factor`` times
   longer than the training clips;
7. **eval**: caption attributes read back from the generated pixels (beside chance, random tokens,
   real frames and their VQ reconstructions), per-frame SWD by frame index and the pan's measured
   shift (``nuwa_ds.metrics.video``) beside the same floors and ceilings.
Everything goes to ``report.json``; ``overview.gif`` shows generated clips beside real ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from data_pipelines import landscape_video as LV
from nuwa_ds.config import RunConfig
from nuwa_ds.recipe_common import Stage, apply_assignments, write_report as _write_report

# Modules that import torch (the tokenizer, the model, training, export, the metrics) are imported in the
# stages that use them, as in nuwa_ds/recipe.py: `nuwa-ds recipe --help` starts at once.


@dataclass
class VideoRecipeSettings:
    train_clips: int = 3600
    """Training clips, each from its own training world (and place in it). With ``train_steps`` x
    ``micro_batch`` the clips are seen ~10 times each (4,800, 7 passes, made the clips stage 129 s of a
    one-H100 run whose evaluation then ran out of time, 2026-12-07): on CPU, 20 passes over 800 clips left frame 0 learnt by
    heart (2.96 bits on training clips, 7.64 held out) where 6.7 passes over 2,400 did not (5.25 / 5.44)
    (docs/benchmarks.md, "Frame 0 was memorised"). Rendering costs ~0.04 s per frame on one core, whatever
    ``size`` (frames are drawn at the world's scale and box-filtered down)."""
    val_clips: int = 64
    """Held-out clips (worlds the model never saw), ``long_factor`` x ``clip_frames`` frames each."""
    clip_frames: int = 4
    """Frames of a training clip (and of the model's canvas)."""
    long_factor: int = 4
    """Generated and held-out videos are this many times longer than the training clips."""
    size: tuple[int, int] = (128, 128)
    """Frame size in pixels (w, h)."""
    window: tuple[int, int] = (512, 512)
    """World pixels (w, h) a frame shows (resized to ``size``)."""
    fps: float = 8.0
    text_preset: str = "small"
    text_mlm_steps: Optional[int] = 120
    """Masked-language pre-training steps of the text encoder (None: the command's default)."""
    freeze_text_encoder: bool = False
    """Train the text encoder with the model (the library's default, ``model.freeze_text_encoder``, keeps a
    downloaded one frozen). The recipe's encoder is made here from its captions with a few MLM steps; frozen,
    it never let the model learn where the sun is ("left" is also a motion word): at CPU scale, 1,000 steps,
    two frozen / trained pairs, the sun's own tokens gained 0.32 and 0.14 bits/token from the true caption
    trained (about none frozen), the caption likelihood read the sun's place 53% / 41% trained against 34% /
    41% frozen (chance 28%), the drawn sun at guidance 3 44% against 22% (docs/decisions.md, "A text
    encoder made here, frozen by default")."""
    tokenizer_preset: str = "landscape-f8"
    tokenizer_clips: int = 400
    """Training clips whose frames the tokenizer trains on."""
    tokenizer_steps: int = 3000
    tokenizer_seconds: float = 55.0
    tokenizer_batch: int = 32
    tokenizer_crop: int = 128
    model: dict = field(default_factory=lambda: dict(
        vocab_size=1024, patch_size=8, d_global=384, n_global_layers=6, d_local=384, n_local_layers=6,
        head_dim=64, max_frames=4, extents=(2, 1, 1), row_embedding=2, rope_dims=32, max_text_len=32,
        loss_chunk_tokens=8192, aligned_bias=True, aligned_bias_init=4.0, context_noise=0.05))
    """``max_frames`` = ``clip_frames``: frames past the training length share the last frame embedding
    (the one trained for "a frame that follows another") instead of untrained ones. ``extents`` look two
    frames back: the pan speed is drawn per clip and is not in the caption, so one frame back shows
    where the camera is but not how fast it moves, and every frame would draw a speed anew
    (docs/decisions.md, "Two frames back"). ``aligned_bias`` with its prior on the frames before: without
    it the CPU run never learned to read the frame before in 1,000 steps (docs/decisions.md,
    "Aligned-token bias"). ``context_noise`` 0.05: trained without it, the H100 model's videos fell
    apart into token soup from frame 4 (its wrong tokens copied forward); with it they hold their
    landscape over 16 frames, for 0.05 bits/token of validation (docs/decisions.md, "Context noise")."""
    train_steps: int = 1100
    micro_batch: int = 32
    """Clips per step: 1,100 x 32 / 3,600 clips = 9.8 passes (64, as first planned, made 29 over 2,400)."""
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 275
    train_seconds: Optional[float] = 210.0
    """Safety limit of the training stage (the schedule is set by train_steps)."""
    train_samples: int = 0
    """``train.samples`` of the training run: sample pictures at every evaluation (0: none; each
    evaluation's pictures cost about 30 s on an H100, a tenth of the training budget)."""
    caption_dropout: float = 0.1
    ds_config: str = "zero2"
    num_workers: int = 4
    temperature: float = 1.0
    top_k: Optional[int] = 64
    video_temperatures: tuple[float, ...] = (0.7,)
    """Further temperatures for text-to-video and animation (the main sets use ``temperature``): each
    draws both sets again (same captions, first frames and seeds) and measures them as the main ones
    (attributes, per-frame SWD, motion), under ``eval.by_temperature``. A copy the model predicts at
    70% is broken in 30% of the places each frame at temperature 1: the flicker / fidelity trade-off. At
    CPU scale 0.7 beat 1.0 on every video figure but the animations' mean speed (both within 10%) and 0.4
    lost the captioned motion (docs/benchmarks.md,
    "Sampling temperature of the videos")."""
    continuation_frames: int = 2
    """A third video set (0: none): the held-out clip's first ``continuation_frames`` frames given (tokens
    kept) with its caption, the rest drawn at ``temperature``. The pan speed is neither in a caption nor
    in one frame, so animation from frame 0 can match a clip's speed only on average; from two frames the
    speed is visible and the per-clip shift error says whether the model reads and keeps it. Scored from
    the last given frame on (every interval measured has a drawn frame in it), paired, against the true
    pan (docs/decisions.md, "Continuation from two frames")."""
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    """Guidance scales of the text-to-image curve (1: no guidance)."""
    video_cfg_scale: float = 3.0
    """Guidance scale of text-to-video and animation."""
    image_prompts: int = 64
    """Held-out captions drawn at each guidance scale (text-to-image)."""
    videos: int = 32
    """Text-to-video clips and animations (each from a held-out clip's caption / first frame)."""
    gen_batch: int = 32
    seed: int = 0
    workers: int = 0
    """Processes rendering clips (0: the CPU count, at most 16)."""


PRESETS: dict[str, dict] = {
    # One GPU, planned at about 9 minutes. Measured on one H100 on 2026-12-07 with 4,800 clips and a 70 s
    # tokenizer: clips 129 s, text encoder 40, tokenizer 69, shards 27, training 176 (1,100 steps),
    # export + generation 17, then the call's limit cut the evaluation (docs/benchmarks.md, "The video
    # recipe on one H100 ... evaluation cut"). With 3,600 clips and a 55 s tokenizer the stages before
    # the evaluation are predicted at ~410 s, leaving ~2 minutes for it (threaded since).
    "gpu": {},
    # Two CPU cores, a couple of minutes: 64 x 64 frames (8 x 8 tokens), the `small` model's widths.
    "cpu": dict(train_clips=200, val_clips=8, size=(64, 64), window=(512, 512), text_preset="tiny",
                text_mlm_steps=50, tokenizer_preset="demo-f8", tokenizer_clips=50, tokenizer_steps=200,
                tokenizer_seconds=120.0, tokenizer_batch=16, tokenizer_crop=64,
                model=dict(vocab_size=1024, patch_size=4, d_global=128, n_global_layers=3, d_local=128,
                           n_local_layers=3, head_dim=32, max_frames=4, extents=(2, 1, 1), row_embedding=2, rope_dims=16,
                           max_text_len=32, loss_chunk_tokens=2048, aligned_bias=True, aligned_bias_init=4.0),
                train_steps=200, micro_batch=8, lr=2e-3, warmup_steps=20, eval_every=100, train_seconds=None,
                ds_config="zero1", num_workers=1, cfg_scales=(1.0, 3.0), image_prompts=8, videos=4, gen_batch=4),
}


def settings_for(preset: str, assignments) -> VideoRecipeSettings:
    if preset not in PRESETS:
        raise ValueError(f"unknown recipe preset {preset!r}; choose one of {', '.join(PRESETS)}")
    s = apply_assignments(VideoRecipeSettings(**PRESETS[preset]), assignments)
    if s.model.get("max_frames", s.clip_frames) < s.clip_frames:
        raise ValueError(f"model.max_frames {s.model['max_frames']} < clip_frames {s.clip_frames}")
    if s.long_factor < 1 or s.clip_frames < 2:
        raise ValueError("clip_frames must be >= 2 and long_factor >= 1")
    if s.videos > s.val_clips or s.image_prompts > s.val_clips * 8:
        raise ValueError(f"videos ({s.videos}) must be <= val_clips ({s.val_clips})")
    temps = s.video_temperatures
    temps = (temps,) if isinstance(temps, (int, float)) and not isinstance(temps, bool) else temps
    if not isinstance(temps, (list, tuple)) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0 for t in temps):
        raise ValueError(f"video_temperatures must be a list of finite numbers >= 0, got {s.video_temperatures!r}")
    k = s.continuation_frames
    if isinstance(k, bool) or not isinstance(k, int) or not (k == 0 or 2 <= k < s.clip_frames * s.long_factor):
        raise ValueError(f"continuation_frames must be 0 (none) or 2..{s.clip_frames * s.long_factor - 1} "
                         f"(fewer than the generated videos' frames), got {k!r}")
    names = [f"{t:g}" for t in temps]
    if len(set(names)) != len(names) or f"{s.temperature:g}" in names:
        raise ValueError(f"video_temperatures {list(temps)} must differ from each other and from temperature "
                         f"{s.temperature:g} (the main sets)")
    s.video_temperatures = tuple(float(t) for t in temps)
    return s


# ----------------------------------------------------------------------------------------------
# helpers


class _PartClock:
    """The seconds of each part of the evaluation, into ``table`` (the report's ``eval.seconds``): where a
    run cut by its limit spent its time."""

    def __init__(self, table: dict):
        self.table, self.last = table, time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        self.table[part] = round(now - self.last, 2)
        self.last = now


def _cycled(items: list, count: int) -> list:
    """``count`` items, going round ``items``: the held-out captions the text-to-image prompts take, and
    the clips whose attributes score them (one function for both, so prompt i is scored against its own
    caption's clip)."""
    return [items[i % len(items)] for i in range(count)]


def _clip_folder(clips: np.ndarray, folder: Path, fps: float) -> None:
    """[N, T, H, W, 3] uint8 -> folder/clip_00000/frame_000.png ... (the video metrics' layout)."""
    from PIL import Image

    for i, clip in enumerate(clips):
        sub = folder / f"clip_{i:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame).save(sub / f"frame_{t:03d}.png", compress_level=1)


def _decode_clips(tokenizer, tokens) -> np.ndarray:
    """Token clips [B, T, h, w] -> uint8 [B, T, H, W, 3] (each clip one decoder batch)."""
    import torch

    from nuwa_ds.tokenizer import to_uint8

    out = []
    with torch.no_grad():
        for b in range(tokens.shape[0]):
            pixels = tokenizer.decode(tokens[b].to(tokenizer.device)).float().cpu()
            out.append(to_uint8(pixels))
    return np.stack(out)


def _encode_clips(tokenizer, clips: np.ndarray, batch: int = 64):
    """uint8 [N, T, H, W, 3] -> tokens [N, T, h, w] (long, CPU)."""
    import torch

    from nuwa_ds.tokenizer import from_uint8

    n, t = clips.shape[:2]
    frames = clips.reshape(n * t, *clips.shape[2:])
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = torch.cat([from_uint8(f)[None] for f in frames[i:i + batch]]).to(tokenizer.device)
            out.append(tokenizer.encode(x).cpu())
    tokens = torch.cat(out)
    return tokens.reshape(n, t, *tokens.shape[1:])


def attribute_scores(read, frames_of: list, expected: list[dict], keys) -> dict:
    """Share of clips whose read-back attribute equals the expected one, per attribute and for all
    of ``keys`` at once, and each attribute's confusion table ``{asked: {read: count}}`` (is a missed sun
    not drawn, or drawn in the wrong place?)."""
    got = [read(frames) for frames in frames_of]
    per = {k: float(np.mean([g.get(k) == e[k] for g, e in zip(got, expected)])) for k in keys}
    every = float(np.mean([all(g.get(k) == e[k] for k in keys) for g, e in zip(got, expected)]))
    confusion = {k: LV.confusion_table([(e[k], g.get(k)) for g, e in zip(got, expected)]) for k in keys}
    return {"per_attribute": per, "all": every, "mean": float(np.mean(list(per.values()))), "count": len(got),
            "confusion": confusion}


def chance_scores(expected: list[dict], keys) -> dict:
    """Always answering each attribute's most common class among ``expected``."""
    per = {}
    for k in keys:
        values = [e[k] for e in expected]
        per[k] = max(values.count(v) for v in set(values)) / len(values)
    return {"per_attribute": per, "mean": float(np.mean(list(per.values())))}


def _sheet_gif(rows: list[np.ndarray], path: Path, fps: float) -> Path:
    """Clips [T, H, W, 3] side by side (T aligned; shorter ones hold their last frame) -> GIF."""
    from nuwa_ds.tokenizer import save_gif

    frames = max(len(r) for r in rows)
    padded = [np.concatenate([r, np.repeat(r[-1:], frames - len(r), 0)]) if len(r) < frames else r for r in rows]
    gap = np.full((frames, padded[0].shape[1], 4, 3), 255, np.uint8)
    strip = np.concatenate([x for r in padded for x in (r, gap)][:-1], axis=2)
    import torch

    from nuwa_ds.tokenizer import from_uint8
    return save_gif(torch.stack([from_uint8(f) for f in strip]), path, fps=fps)


# ----------------------------------------------------------------------------------------------
# the recipe


FROM_STAGES = (None, "train", "generate")
"""``from_stage``: None runs every stage; "train" reuses the clips, text encoder, tokenizer and shards in
``out`` and trains, draws and scores again (another model on the same data: the training settings may
change); "generate" reuses a finished run's clips, text encoder, tokenizer, shards and training in ``out``
and runs export, generation and evaluation again."""
DRAW_SETTINGS = ("temperature", "top_k", "video_temperatures", "continuation_frames", "cfg_scales", "video_cfg_scale",
                 "image_prompts", "videos", "gen_batch", "workers")
"""The settings only stages 6 and 7 read (and ``workers``, which changes no result): a resumed run may
change them; any other setting must equal the run's it resumes."""
TRAIN_SETTINGS = ("model", "freeze_text_encoder", "train_steps", "micro_batch", "lr", "warmup_steps", "eval_every",
                  "train_seconds", "train_samples", "caption_dropout", "ds_config", "num_workers")
"""The settings stage 5 reads besides the draw settings: a run from stage "train" may change them too,
but not the model's ``patch_size`` and ``vocab_size``, which the shards and the tokenizer fix."""
FIXED_MODEL_KEYS = ("patch_size", "vocab_size")


def run_recipe(out, preset: str = "gpu", device: str = "auto", assignments=(), from_stage: Optional[str] = None) -> dict:
    import torch

    from nuwa_ds.model import GenerationConfig, NuwaInfinity
    from nuwa_ds.model_dir import export_checkpoint

    if from_stage not in FROM_STAGES:
        raise ValueError(f"from_stage must be one of {FROM_STAGES}, got {from_stage!r}")
    s = settings_for(preset, list(assignments))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    report: dict = {"recipe": "landscape-videos", "preset": preset, "settings": dataclasses.asdict(s),
                    "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "versions": {"torch": torch.__version__}}
    started = time.perf_counter()
    if from_stage is None:
        train_specs, val_specs, tokenizer, shards = _prepare_stages(s, out, dev, report)
    else:
        train_specs, val_specs, tokenizer, shards = _resumed_stages(s, out, dev, report, from_stage)
    T, long_T = s.clip_frames, s.clip_frames * s.long_factor
    f = tokenizer.downsample
    canvas = [T, s.size[1] // f, s.size[0] // f]
    if from_stage != "generate":
        _train_stage(s, out, report, shards, canvas)
    run_dir = out / "run"
    val_clips = np.stack([LV.render_clip(spec) for spec in val_specs])  # lossless, as the frames folders
    val_attrs = [LV.true_attributes(spec) for spec in val_specs]
    val_captions = [LV.caption(a) for a in val_attrs]
    with Stage(report, "6 export + generate"):
        model_dir = export_checkpoint(run_dir, out / "model", tokenizer=str(out / "tokenizer"))
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = NuwaInfinity.from_pretrained(model_dir, device=dev, dtype=dtype)
        report["export"] = {"files": sorted(p.name for p in Path(model_dir).iterdir())}
        generated, timings = out / "generated", {}
        threads = torch.get_num_threads()
        if dev.type == "cpu":
            torch.set_num_threads(1)  # thousands of small ops: one thread (see nuwa_ds.recipe)

        def generate(name, shape, captions, cfg_scale, prompt=None, mask=None, seed=0, temperature=None):
            tic = time.perf_counter()
            clips = []
            for start in range(0, len(captions), s.gen_batch):
                part = captions[start:start + s.gen_batch]
                gen = GenerationConfig(temperature=s.temperature if temperature is None else temperature,
                                       top_k=s.top_k, seed=seed + start, cfg_scale=cfg_scale, wavefront=True)
                p = None if prompt is None else prompt[start:start + len(part)].to(dev)
                m = None if mask is None else mask[start:start + len(part)].to(dev)
                tokens = model.generate(shape, order="down", batch_size=len(part), prompt=p, prompt_mask=m,
                                        text=list(part), config=gen)
                clips.append(tokens.cpu())
            tokens = torch.cat(clips)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - tic, 2)
            return tokens

        try:
            # text-to-image: frame 0 of held-out captions, at each guidance scale
            image_caps = _cycled(val_captions, s.image_prompts)
            image_sets = {}
            for scale in s.cfg_scales:
                tokens = generate(f"text2image_cfg{scale:g}", (1, canvas[1], canvas[2]), image_caps, scale,
                                  seed=s.seed)
                image_sets[scale] = _decode_clips(tokenizer, tokens)
                _clip_folder(image_sets[scale], generated / f"text2image_cfg{scale:g}", s.fps)
            # text-to-video, long_factor x the training clips, and animation: the held-out clip's first
            # frame (its tokens kept) and caption; at the main temperature, then at each further one
            video_caps = val_captions[: s.videos]
            first = _encode_clips(tokenizer, val_clips[: s.videos, :1])
            prompt = torch.zeros(s.videos, long_T, canvas[1], canvas[2], dtype=torch.long)
            mask = torch.zeros_like(prompt, dtype=torch.bool)
            prompt[:, :1], mask[:, :1] = first, True
            video_sets, kept = {}, True
            for temperature in (None, *s.video_temperatures):
                tag = "" if temperature is None else f"_t{temperature:g}"
                t2v_tokens = generate(f"text2video{tag}", (long_T, canvas[1], canvas[2]), video_caps,
                                      s.video_cfg_scale, seed=s.seed, temperature=temperature)
                anim_tokens = generate(f"animation{tag}", (long_T, canvas[1], canvas[2]), video_caps,
                                       s.video_cfg_scale, prompt=prompt, mask=mask, seed=s.seed + 1,
                                       temperature=temperature)
                kept = kept and bool(torch.equal(anim_tokens[:, 0], first[:, 0]))
                pair = (_decode_clips(tokenizer, t2v_tokens), _decode_clips(tokenizer, anim_tokens))
                _clip_folder(pair[0], generated / f"text2video{tag}", s.fps)
                _clip_folder(pair[1], generated / f"animation{tag}", s.fps)
                video_sets[temperature] = pair
            t2v, anim = video_sets.pop(None)
            report["animation_first_frame_tokens_kept"] = kept
            cont = None
            if s.continuation_frames:  # the first frames given: the clip's own speed is visible
                k = s.continuation_frames
                given = _encode_clips(tokenizer, val_clips[: s.videos, :k])
                prompt, mask = torch.zeros_like(prompt), torch.zeros_like(mask)
                prompt[:, :k], mask[:, :k] = given, True
                cont_tokens = generate("continuation", (long_T, canvas[1], canvas[2]), video_caps,
                                       s.video_cfg_scale, prompt=prompt, mask=mask, seed=s.seed + 2)
                report["continuation_given_frames_tokens_kept"] = bool(torch.equal(cont_tokens[:, :k], given))
                cont = _decode_clips(tokenizer, cont_tokens)
                _clip_folder(cont, generated / "continuation", s.fps)
        finally:
            torch.set_num_threads(threads)
        report["generate"] = {"seconds": timings}
    _write_report(out, report)

    with Stage(report, "7 eval"):
        # the report is written after each part (cheapest first), so a run cut by an outer limit keeps
        # what its evaluation had measured
        ev = report["eval"] = {}
        clock = _PartClock(ev.setdefault("seconds", {}))
        val_tokens = _encode_clips(tokenizer, val_clips)  # once: the training length's bits read its first T frames
        ev["per_frame_bits"] = bits_by_frame(model, val_tokens[:, :T], val_captions, val_specs)
        clock("per_frame_bits")
        # the same over the whole held-out clips (long_factor x the training length): can the model predict
        # a real frame past the training length as well as frame T-1? (if so, a generated video that falls
        # apart there does so by sampling's compounding errors; if not, by the model)
        ev["per_frame_bits_long"] = bits_by_frame(model, val_tokens, val_captions, val_specs,
                                                  batch=max(1, 16 // s.long_factor), contrast=False)
        clock("per_frame_bits_long")
        # memorisation: the same bits on training and held-out clips read alike (the shards' decoded MP4s,
        # first chunks); a frame 0 far cheaper on the training clips is learnt by heart
        ev["per_frame_bits_shards"] = {
            split: bits_by_frame(model, *shard_clip_tokens(shards[split], specs, len(val_specs)))
            for split, specs in (("train", train_specs), ("val", val_specs))}
        clock("per_frame_bits_shards")
        # what the model has learnt of each caption word, read off the likelihood (not the pictures): does a
        # missed sun come from the model or from sampling?
        ev["caption_likelihood"] = caption_likelihood(model, val_tokens[:, :T], val_specs)
        clock("caption_likelihood")
        _write_report(out, report)
        evaluate(tokenizer, s, val_clips[: s.videos], val_specs, image_sets, t2v, anim, LV,
                 results=ev, save=lambda part: (clock(part), _write_report(out, report)))
        if cont is not None:
            ev["continuation"] = evaluate_continuation(s, val_clips[: s.videos], val_specs, cont, LV, seed=s.seed)
            clock("continuation")
            _write_report(out, report)
        _sheet_gif([val_clips[0], t2v[0], anim[0], val_clips[1], t2v[1], anim[1]], out / "overview.gif", s.fps)
        for temperature, (t2v_t, anim_t) in video_sets.items():
            by_t = ev.setdefault("by_temperature", {})[f"{temperature:g}"] = {}
            evaluate(tokenizer, s, val_clips[: s.videos], val_specs, None, t2v_t, anim_t, LV,
                     results=by_t, save=lambda part, t=temperature: (clock(f"t{t:g}_{part}"), _write_report(out, report)),
                     floors=False)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    _write_report(out, report)
    _print_summary(report)
    return report


def _prepare_stages(s: VideoRecipeSettings, out: Path, dev, report: dict):
    """Stages 1-4 (clips, text encoder, tokenizer, shards) into ``out`` and ``report``; returns the
    clips' specs, the tokenizer and the shards' paths that the later stages read."""
    from data_pipelines.prepare import prepare_shards
    from nuwa_ds.text_encoder import make_text_encoder
    from nuwa_ds.tokenizer import train_tokenizer

    workers = s.workers or min(16, os.cpu_count() or 1)
    for folder in ("real", "generated", "recon", "random_tokens", "run", "shards", "model", "text_encoder"):
        shutil.rmtree(out / folder, ignore_errors=True)  # a rerun starts fresh

    T, long_T = s.clip_frames, s.clip_frames * s.long_factor
    with Stage(report, "1 clips"):
        train_specs, val_specs = _specs(s)
        real = out / "real"
        LV.write_clips(real / "train", train_specs, formats=("mp4",), workers=workers, split="train", seed=s.seed,
                       progress=True)
        LV.write_clips(real / "val", val_specs, formats=("mp4", "frames"), workers=workers, split="val", seed=s.seed)
        # the tokenizer's pictures: lossless frames of some training clips
        LV.write_clips(real / "tokenizer", train_specs[: s.tokenizer_clips], formats=("frames",), workers=workers,
                       split="train", seed=s.seed)
        report["clips"] = {"train": len(train_specs), "val": len(val_specs), "train_frames": T, "val_frames": long_T}
    _write_report(out, report)

    with Stage(report, "2 text encoder"):
        captions = [LV.caption(LV.true_attributes(spec)) for spec in train_specs]
        text_dir = out / "text_encoder"
        extra = {} if s.text_mlm_steps is None else {"mlm_steps": s.text_mlm_steps}
        info = make_text_encoder(captions, text_dir, preset=s.text_preset, seed=s.seed, **extra)
        report["text_encoder"] = info
    _write_report(out, report)

    with Stage(report, "3 tokenizer"):
        frames = sorted((real / "tokenizer" / "frames").rglob("*.png"))
        tokenizer, metrics = train_tokenizer([str(p) for p in frames], out / "tokenizer",
                                             config=s.tokenizer_preset, device=str(dev), steps=s.tokenizer_steps,
                                             batch_size=s.tokenizer_batch, crop=s.tokenizer_crop,
                                             time_limit=s.tokenizer_seconds, seed=s.seed, log_every=200)
        report["tokenizer"] = {k: metrics[k] for k in ("psnr", "codebook_usage", "steps", "seconds", "restarts")}
    _write_report(out, report)
    tokenizer = tokenizer.to(dev).eval()
    f = tokenizer.downsample
    P = s.model["patch_size"]
    w_px, h_px = s.size
    if w_px % (f * P) or h_px % (f * P):
        raise ValueError(f"frames of {w_px}x{h_px} px are not whole patches of {f * P} px")

    with Stage(report, "4 shards"):
        shards = {}
        for split in ("train", "val"):
            folder = real / split
            manifest = prepare_shards([str(folder / "mp4")], out / "shards" / split, tokenizer,
                                      captions=str(folder / LV.CAPTIONS_FILE), image_size=0, patch_size=P,
                                      fps=s.fps, clip_frames=T, progress=True, overwrite=True, device=str(dev))
            shards[split] = str(out / "shards" / split / manifest["shards"])
            report.setdefault("shards", {})[split] = manifest["num_samples"]
    _write_report(out, report)
    return train_specs, val_specs, tokenizer, shards


def _train_stage(s: VideoRecipeSettings, out: Path, report: dict, shards: dict, canvas: list):
    """Stage 5: DeepSpeed training on the shards in ``out`` with the text encoder in ``out``."""
    from nuwa_ds.train import train

    text_dir = out / "text_encoder"
    with Stage(report, "5 train"):
        run_dir = out / "run"
        overrides = [f"model.{k}={json.dumps(v)}" for k, v in s.model.items()] + [
            f"model.freeze_text_encoder={json.dumps(s.freeze_text_encoder)}",
            f"data.shards={shards['train']}", f"data.canvas={json.dumps(canvas)}", 'data.orders={"down": 1.0}',
            f"data.num_workers={s.num_workers}", f"data.caption_dropout={s.caption_dropout}",
            "data.shuffle_buffer=500", f"train.text_encoder_path={text_dir}",
            f"train.run_dir={run_dir}", f"train.steps={s.train_steps}", f"train.save_every={s.train_steps}",
            "train.log_every=50", f"train.samples={s.train_samples}", f"train.warmup_steps={s.warmup_steps}", f"train.lr={s.lr}",
            f"train.micro_batch_size={s.micro_batch}", f"train.ds_config={s.ds_config}", "train.tensorboard=true",
            f"train.seed={s.seed}", "train.weight_decay=0.0",
            f"data.val_shards={shards['val']}", f"train.eval_every={s.eval_every}", "train.eval_batches=4"] + (
            [f"train.time_limit={s.train_seconds}"] if s.train_seconds else [])
        cfg = RunConfig.load("small", overrides)
        tic = time.perf_counter()
        result = train(cfg, progress=True)
        seconds = time.perf_counter() - tic
        if result.status == "diverged" or result.step < 1:
            raise RuntimeError(f"training stopped ({result.status}) at step {result.step}")
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [x for x in lines if "loss" in x and "event" not in x]
        evals = [x for x in lines if x.get("event") == "eval"]
        tokens = s.micro_batch * math.prod(canvas) * result.step
        report["train"] = {"steps": result.step, "planned_steps": s.train_steps, "status": result.status,
                           "seconds": round(seconds, 1), "tokens_per_s": tokens / seconds,
                           "first_loss": steps[0]["loss"], "final_loss": steps[-1]["loss"],
                           "final_train_bits_per_token": steps[-1]["loss"] / math.log(2),
                           "val": [{k: e[k] for k in ("step", "val_loss", "val_bits_per_token") if k in e}
                                   for e in evals]}
        if evals:
            report["train"]["final_val_bits_per_token"] = evals[-1].get("val_bits_per_token")
    _write_report(out, report)


def _specs(s: VideoRecipeSettings) -> tuple[list, list]:
    T, long_T = s.clip_frames, s.clip_frames * s.long_factor
    return (LV.sample_clip_specs(s.train_clips, split="train", frames=T, size=tuple(s.size), window=tuple(s.window),
                                 seed=s.seed),
            LV.sample_clip_specs(s.val_clips, split="val", frames=long_T, size=tuple(s.size), window=tuple(s.window),
                                 seed=s.seed))


def _resumed_stages(s: VideoRecipeSettings, out: Path, dev, report: dict, from_stage: str):
    """What :func:`_prepare_stages` returns, read from the run in ``out`` whose stages before
    ``from_stage`` finished (their report figures carried over; the earlier report kept as
    ``report.previous.json``, or ``report.previous.N.json`` when that exists). Refuses, touching nothing,
    when a setting of the reused stages differs or one of their files is missing."""
    from nuwa_ds.tokenizer import VQTokenizer

    generate = from_stage == "generate"
    path = out / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: from_stage={from_stage} needs a run of this recipe in {out}")
    old = json.loads(path.read_text())
    done = "train" if generate else "shards"
    if old.get("recipe") != "landscape-videos" or done not in old:
        raise ValueError(f"{path}: not a landscape-videos run whose {done} stage finished; run every stage instead")
    free = DRAW_SETTINGS if generate else DRAW_SETTINGS + TRAIN_SETTINGS

    def compared(settings: dict) -> dict:  # from stage train the model table may change, but not what the
        return settings if generate else {  # shards and the tokenizer fix: those entries compared on their own
            **settings, **{f"model.{k}": settings["model"].get(k) for k in FIXED_MODEL_KEYS}}

    before, after = compared(old["settings"]), compared(json.loads(json.dumps(dataclasses.asdict(s), default=str)))
    changed = sorted(k for k in after if k not in free and before.get(k) != after[k])
    if changed:
        diffs = ", ".join(f"{k} ({before.get(k)!r} -> {after[k]!r})" for k in changed)
        raise ValueError(f"from_stage={from_stage} reuses the stages in {out}, but these settings differ from that "
                         f"run's: {diffs}; only {', '.join(free)} may change")
    # everything the later stages read must be there before anything is replaced: a run whose checkpoint
    # was pruned after export must not lose its exported model to a resume that cannot finish
    if generate:
        from nuwa_ds.model_dir import find_checkpoint

        find_checkpoint(out / "run")
    for needed in ("shards/train/manifest.json", "shards/val/manifest.json", "tokenizer", "text_encoder"):
        if not (out / needed).exists():
            raise FileNotFoundError(f"{out / needed} not found: from_stage={from_stage} reuses the earlier stages' files")
    # the report it replaces is kept, and one kept before is never overwritten
    keep = next(out / name for name in ["report.previous.json", *(f"report.previous.{i}.json" for i in range(2, 10_000))]
                if not (out / name).exists())
    shutil.copyfile(path, keep)
    reused = "12345" if generate else "1234"
    for key in ("clips", "text_encoder", "tokenizer", "shards", "train")[:len(reused)]:
        report[key] = old[key]
    report["stage_seconds"] = {k: v for k, v in old.get("stage_seconds", {}).items() if k[:1] in reused}
    report["resumed_from"] = {"stage": "6 export + generate" if generate else "5 train",
                              "earlier_settings": {k: old["settings"].get(k) for k in free}}
    for folder in ("generated", "model") + (() if generate else ("run",)):
        shutil.rmtree(out / folder, ignore_errors=True)
    train_specs, val_specs = _specs(s)
    shards = {}
    for split in ("train", "val"):
        manifest = json.loads((out / "shards" / split / "manifest.json").read_text())
        shards[split] = str(out / "shards" / split / manifest["shards"])
    return train_specs, val_specs, VQTokenizer.from_pretrained(out / "tokenizer", device=dev), shards


def evaluate_continuation(s: VideoRecipeSettings, real_clips: np.ndarray, specs: list, cont: np.ndarray, LV,
                          seed: int = 0) -> dict:
    """The continuation set (clip i continues real clip i's first ``s.continuation_frames`` frames): its
    caption attributes read from the drawn frames alone (sky and sun from the first drawn frame, motion
    over them), and the video metrics paired with the real clips from the last given frame on (that frame
    is given in both, as the real frame and as its tokens' decoding, so every interval scored has a drawn
    frame), the per-clip shift error against the true pan included."""
    from nuwa_ds.metrics.video import video_report

    n, k = len(real_clips), s.continuation_frames
    attrs = [LV.true_attributes(spec) for spec in specs[:n]]
    true_dx = [-spec.true_shift for spec in specs[:n]]
    return {"given_frames": k, "scored_from_frame": k - 1,
            "attributes": attribute_scores(LV.read_attributes, list(cont[:, k:]), attrs, list(LV.ATTRIBUTES)),
            "video": video_report(list(real_clips[:, k - 1:]), list(cont[:, k - 1:]), paired=True, true_dx=true_dx,
                                  seed=seed)}


def evaluate(tokenizer, s: VideoRecipeSettings, real_clips: np.ndarray, specs: list, image_sets: Optional[dict],
             t2v: np.ndarray, anim: np.ndarray, LV, results: Optional[dict] = None, save=lambda part: None,
             floors: bool = True) -> dict:
    """Caption attributes and the video metrics of the generated sets, beside chance, real clips, their
    VQ reconstructions and decoded random tokens (all through the same reader and the same code). Each
    part goes into ``results`` (a new dict if None) as it is measured, and ``save(part)`` is called after it
    ("attributes", "text2video", "animation").
    ``specs``: every held-out clip's spec (text-to-image prompt i is held-out caption i % len(specs));
    ``real_clips`` the first of them. ``floors=False`` (a further temperature's sets): the generated sets
    only, beside real clips (the SWD and motion references), without VQ reconstructions, random tokens and
    the real clips' attribute rows, which the main call measured already."""
    import torch

    from nuwa_ds.metrics.video import video_report

    n = len(real_clips)
    attrs = [LV.true_attributes(spec) for spec in specs[:n]]
    recon = noise = None
    if floors:
        recon = _decode_clips(tokenizer, _encode_clips(tokenizer, real_clips))
        g = torch.Generator().manual_seed(s.seed)
        noise = _decode_clips(tokenizer, torch.randint(0, tokenizer.codebook_size, (n, *recon.shape[1:2],
                                                       recon.shape[2] // tokenizer.downsample,
                                                       recon.shape[3] // tokenizer.downsample), generator=g))
    results = {} if results is None else results

    # caption attributes, read back from the pixels
    read = LV.read_attributes
    image_keys = [k for k in LV.ATTRIBUTES if k != "motion"]
    video_keys = list(LV.ATTRIBUTES)
    if image_sets:  # None: the video sets alone (a further temperature)
        m = len(next(iter(image_sets.values())))
        expected = [LV.true_attributes(spec) for spec in _cycled(specs, m)]  # as the prompts were drawn
        results["text2image_attributes"] = {
            "chance": chance_scores(expected, image_keys),
            "real": attribute_scores(read, [c[:1] for c in real_clips], attrs, image_keys),
            "recon": attribute_scores(read, [c[:1] for c in recon], attrs, image_keys),
            "random_tokens": attribute_scores(read, [c[:1] for c in noise], attrs, image_keys),
            "by_cfg_scale": {f"{k:g}": attribute_scores(read, [c[:1] for c in v], expected, image_keys)
                             for k, v in image_sets.items()}}
    video_attrs = results["text2video_attributes"] = {}
    if floors:
        video_attrs.update(chance=chance_scores(attrs, video_keys),
                           real=attribute_scores(read, list(real_clips), attrs, video_keys),
                           recon=attribute_scores(read, list(recon), attrs, video_keys),
                           random_tokens=attribute_scores(read, list(noise), attrs, video_keys))
    video_attrs.update(text2video=attribute_scores(read, list(t2v), attrs, video_keys),
                       animation=attribute_scores(read, list(anim), attrs, video_keys))
    save("attributes")

    # per-frame SWD by frame index and motion (unpaired for text-to-video, paired for animation: clip i
    # continues real clip i's first frame); the real clips' true content shift is -(camera pan)
    true_dx = [-spec.true_shift for spec in specs[:n]]
    kwargs = dict(recon=list(recon), random_tokens=list(noise), seed=s.seed) if floors else dict(seed=s.seed)
    results["text2video"] = video_report(list(real_clips), list(t2v), **kwargs)
    save("text2video")
    results["animation"] = video_report(list(real_clips), list(anim), paired=True, true_dx=true_dx, **kwargs)
    save("animation")
    return results


def per_frame_bits(model, tokenizer, clips: np.ndarray, captions: list[str], specs: list, batch: int = 16,
                   contrast: bool = True) -> dict:
    """``bits_by_frame`` of uint8 clips [N, T, H, W, 3], tokenized here (for a run's folder read back, as in
    docs/benchmarks.md)."""
    return bits_by_frame(model, _encode_clips(tokenizer, clips), captions, specs, batch, contrast)


def shard_clip_tokens(shards: str, specs: list, count: int):
    """The first ``count`` clips of a split as training reads them (tokens of the decoded MP4s, from the
    shards; each clip's first ``clip_frames`` chunk only), their captions and their specs
    (``clip_{i:06d}.mp4`` is ``specs[i]``)."""
    import torch

    from data_pipelines.loader import SkipLog, expand_shards, read_shard

    tokens, captions, chosen = [], [], []
    for url in expand_shards(shards):
        for toks, meta, _ in read_shard(url, SkipLog(), count=False):
            if meta.get("frame_start", 0) != 0:
                continue
            tokens.append(torch.as_tensor(toks.astype(np.int64)))
            captions.append(meta["caption"])
            chosen.append(specs[int(Path(meta["source"]).stem.split("_")[-1])])
            if len(tokens) == count:
                return torch.stack(tokens), captions, chosen
    return torch.stack(tokens), captions, chosen


def token_bits(model, tokens, texts: Optional[list[str]], batch: int = 16):
    """Teacher-forced bits of every token of ``tokens`` [N, T, h, w] (order down) given captions ``texts``
    (one per clip; None: no caption), as a float tensor of the same shape on the CPU."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            part = tokens[i:i + batch].to(device)
            text = None if texts is None else texts[i:i + len(part)]
            logits = model(part, order="down", text=text, return_loss=False).logits.float()
            out.append(torch.nn.functional.cross_entropy(logits.flatten(0, -2), part.flatten(), reduction="none")
                       .view(part.shape).cpu() / math.log(2))
    return torch.cat(out)


def sun_token_mask(spec, grid: tuple[int, int]) -> Optional[np.ndarray]:
    """Frame 0's tokens ([h, w] bool, ``grid`` = (h, w)) whose cell overlaps the visible sun's disc, or None
    when no sun is in view. The window spans the frame's width, and frames keep the window's aspect."""
    disc = LV.sun_disc(spec)
    if disc is None:
        return None
    u, v, r = disc
    h, w = grid
    cx, cy, radius = u * w, v * w * spec.height / spec.width, r * w  # in token cells
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    nearest_x, nearest_y = np.clip(cx, xs, xs + 1), np.clip(cy, ys, ys + 1)  # the cell's point nearest the centre
    return (nearest_x - cx) ** 2 + (nearest_y - cy) ** 2 < radius ** 2


def caption_likelihood(model, tokens, specs: list, batch: int = 16) -> dict:
    """Has the model learnt what each caption word means, whatever sampling then draws? For every held-out
    clip ([N, T, h, w] tokens, their specs) and attribute, its caption is rewritten with each class of that
    attribute ("the sun on the left" -> "... in the middle", "no sun in view", ...), and the class whose
    caption gives the clip's tokens the fewest teacher-forced bits is the model's reading (a Bayes
    classifier with equal priors): ``accuracy`` against the true class beside ``chance`` (the majority
    class), the confusion table, and ``gap_bits``: the mean over clips of (fewest bits of a wrong class's
    caption - bits of the true one), > 0 when the true caption is preferred. ``sun_tokens``: on the clips
    with a sun in view, frame 0's bits/token on the tokens over the sun's disc and on the others, with the
    true caption and with "no sun in view": the sun words' worth, where they should act."""
    import torch

    if getattr(model, "text_encoder", None) is None:
        return {}
    n = len(tokens)
    specs = list(specs[:n])
    attrs = [LV.true_attributes(spec) for spec in specs]
    keys = [key for key in LV.ATTRIBUTES if key in attrs[0]]
    # every clip with its own caption, then with each rewrite, all in one list of passes
    jobs = [(i, None, None) for i in range(n)] + [(i, key, value) for key in keys for value in LV.ATTRIBUTES[key]
                                                 for i in range(n) if attrs[i][key] != value]
    texts = [LV.caption(attrs[i] if key is None else {**attrs[i], key: value}) for i, key, value in jobs]
    bits = token_bits(model, tokens[torch.tensor([i for i, _, _ in jobs])], texts, batch)
    own, own_total = bits[:n], bits[:n].sum((1, 2, 3))
    out: dict = {"clips": n}
    for key in keys:
        classes = LV.ATTRIBUTES[key]
        totals = own_total[:, None].repeat(1, len(classes))
        for j, (i, k, value) in enumerate(jobs):
            if k == key:
                totals[i, classes.index(value)] = bits[j].sum()
        truth = [a[key] for a in attrs]
        true_index = torch.tensor([classes.index(t) for t in truth])
        read = [classes[int(i)] for i in totals.argmin(1)]
        wrong = totals.clone()
        wrong[torch.arange(n), true_index] = float("inf")
        out[key] = {"accuracy": float(np.mean([t == r for t, r in zip(truth, read)])),
                    "chance": max(truth.count(v) for v in set(truth)) / n,
                    "gap_bits": float((wrong.min(1).values - own_total).mean()),
                    "confusion": LV.confusion_table(list(zip(truth, read)))}
    if "sun" in keys:
        on, off = {"true_caption": [], "no_sun_caption": []}, {"true_caption": [], "no_sun_caption": []}
        for j, (i, k, value) in enumerate(jobs):
            mask = sun_token_mask(specs[i], tuple(tokens.shape[2:])) if (k, value) == ("sun", "none") else None
            if mask is None or not mask.any():
                continue
            m = torch.from_numpy(mask)
            for name, frame in (("true_caption", own[i, 0]), ("no_sun_caption", bits[j, 0])):
                on[name].append(frame[m])
                off[name].append(frame[~m])
        if on["true_caption"]:
            out["sun_tokens"] = {
                "clips": len(on["true_caption"]), "tokens_per_clip": float(np.mean([len(x) for x in on["true_caption"]])),
                "over_the_sun": {name: round(float(torch.cat(v).mean()), 4) for name, v in on.items()},
                "elsewhere_in_frame_0": {name: round(float(torch.cat(v).mean()), 4) for name, v in off.items()}}
    return out


def bits_by_frame(model, tokens, captions: list[str], specs: list, batch: int = 16, contrast: bool = True) -> dict:
    """Does the model use the frames before, and the caption? Teacher-forced bits/token of tokenized clips
    ([N, T, h, w], with their captions and specs) by frame index, for still and panning clips apart, and
    over the tokens that repeat the previous frame's token at the same place (a model that reads the frame
    before predicts those almost for free) vs the others; beside it how many tokens repeat. ``caption``: the
    same bits by frame with each clip's own caption, another clip's (the list rolled by one) and none (what
    guidance contrasts with): what the caption is worth, read off the likelihood, not the pictures;
    ``contrast=False``: the own caption only."""
    import torch

    captions = list(captions[:len(tokens)])

    def bits(texts) -> torch.Tensor:
        return token_bits(model, tokens, texts, batch)

    nll = bits(captions)
    still = torch.tensor([spec.pan == 0 for spec in specs[:len(tokens)]])
    repeat = tokens[:, 1:] == tokens[:, :-1]

    def by_frame(rows, values=nll):
        return [round(v, 3) for v in values[rows].mean((0, 2, 3)).tolist()] if rows.any() else None

    everyone = torch.ones_like(still)
    caption = {"own": by_frame(everyone)}
    if contrast and getattr(model, "text_encoder", None) is not None:
        caption["other_clip"] = by_frame(everyone, bits(captions[1:] + captions[:1]))
        caption["none"] = by_frame(everyone, bits(None))
    return {"clips": len(tokens), "still_clips": int(still.sum()),
            "all": by_frame(everyone), "still": by_frame(still), "panning": by_frame(~still), "caption": caption,
            "repeats_previous": {"share": float(repeat.float().mean()),
                                 "share_still": float(repeat[still].float().mean()) if still.any() else None,
                                 "bits_where_repeated": float(nll[:, 1:][repeat].mean()) if repeat.any() else None,
                                 "bits_elsewhere": float(nll[:, 1:][~repeat].mean()) if (~repeat).any() else None}}


def _print_summary(report: dict):
    ev, t = report.get("eval", {}), report.get("train", {})
    print("\n== summary ==")
    print(f"train: {t.get('tokens_per_s', 0):,.0f} tokens/s, train bits/token {t.get('final_train_bits_per_token')}, "
          f"val bits/token {t.get('final_val_bits_per_token')}")
    ti = ev.get("text2image_attributes", {})
    if ti:
        curve = {k: round(v["mean"], 3) for k, v in ti["by_cfg_scale"].items()}
        print(f"text2image caption attributes (mean accuracy) by cfg scale {curve}; chance "
              f"{ti['chance']['mean']:.3f}, real {ti['real']['mean']:.3f}, random tokens {ti['random_tokens']['mean']:.3f}")
    cl = ev.get("caption_likelihood", {})
    if cl:
        print("caption words read by the likelihood (teacher-forced): " + ", ".join(
            f"{k} {cl[k]['accuracy']:.2f} (chance {cl[k]['chance']:.2f})" for k in LV.ATTRIBUTES if k in cl))
    tv = ev.get("text2video_attributes", {})
    if tv:
        print(f"video caption attributes: text2video {tv['text2video']['per_attribute']}, "
              f"animation {tv['animation']['per_attribute']}, real {tv['real']['per_attribute']}, "
              f"chance {tv['chance']['per_attribute']}")
    for name in ("text2video", "animation"):
        rows = ev.get(name, {}).get("swd", {}).get("summary", {})
        if rows:
            print(f"{name} per-frame SWD last/first quarter: "
                  + ", ".join(f"{k} {v.get('last_over_first', float('nan')):.2f}" for k, v in rows.items()))
    for temperature, by_t in [(None, ev), *ev.get("by_temperature", {}).items()]:
        sets = {name: by_t.get(name, {}).get("temporal", {}).get("sets", {}).get("fake") for name in ("text2video", "animation")}
        attrs = by_t.get("text2video_attributes", {})
        if all(sets.values()) and attrs:
            print(f"temperature {'main' if temperature is None else temperature}: "
                  + "; ".join(f"{name} jitter {m['jitter']:.2f}, aligned frame difference {m['frame_diff_aligned']:.2f}, "
                              f"motion attribute {attrs[name]['per_attribute'].get('motion')}" for name, m in sets.items()))
    cont = ev.get("continuation", {}).get("video", {}).get("temporal", {})
    if cont.get("truth", {}).get("fake"):
        fake, real = cont["truth"]["fake"], cont["truth"]["real"]
        print(f"continuation from {ev['continuation']['given_frames']} given frames: clips within 10% of the true "
              f"pan {fake['within_10pct']}/{fake['clips_scored']} (real clips {real['within_10pct']}/"
              f"{real['clips_scored']}), mean error {fake['error'] if fake['error'] is None else round(fake['error'], 3)}; "
              f"jitter {cont['sets']['fake']['jitter']:.2f}")
    pf = ev.get("per_frame_bits")
    if pf:
        rep = {k: "none" if v is None else f"{v:.2f}" for k, v in pf["repeats_previous"].items()}
        print(f"held-out bits/token by frame: still clips {pf['still']}, panning {pf['panning']}; "
              f"where a token repeats the frame before {rep['bits_where_repeated']}, elsewhere {rep['bits_elsewhere']}")
        shards = ev.get("per_frame_bits_shards")
        if shards:
            print(f"bits/token by frame, training clips {shards['train']['all']}, held-out {shards['val']['all']} "
                  "(both from the shards): a frame 0 far cheaper on the training clips is memorised")
        long = ev.get("per_frame_bits_long")
        if long:
            print(f"held-out bits/token by frame over {len(long['all'])} frames (the training length "
                  f"{len(pf['all'])}): panning {long['panning']}, still {long['still']}")
        cap = pf.get("caption", {})
        if "none" in cap:
            print(f"held-out bits/token by frame with the own caption {cap['own']}, another clip's "
                  f"{cap['other_clip']}, none {cap['none']}")
    print(f"total {report.get('total_seconds')} s; stages {report.get('stage_seconds')}")
