"""``nuwa-ds generate MODEL_DIR --task ...``: images and videos of any size, every task.

Tasks and the order each uses (ADC, docs/design.md, "1. Canvas, patches and orders"):

| task | needs | order |
| --- | --- | --- |
| unconditional | --size | down (right for canvases wider than 2:1) |
| text2image | --prompt | down |
| outpaint | --input, --direction | the direction (the given picture is placed on the opposite side) |
| animate | --input (first frame), --frames | down, frames outermost |
| text2video | --prompt, --frames | down |

Before anything is allocated the pool and activation memory is estimated; if it does not fit, the
command refuses and names the largest size that does.
"""

from __future__ import annotations

import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.model import GenerationConfig, NuwaInfinity
from nuwa_ds.model.geometry import ORDERS
from nuwa_ds.model.attention import resolve_backend
from nuwa_ds.model.generation import GenerationResult, estimate_generation_memory
from nuwa_ds.model_dir import VQ_POINTER, load_config_json, resolve_vq_tokenizer
from nuwa_ds.tokenizer import VQTokenizer, load_image, resolve_device, save_media

Task = Literal["unconditional", "text2image", "outpaint", "animate", "text2video"]
TASKS = typing.get_args(Task)


@dataclass
class GenerateOptions(ConfigBase):
    """Everything ``nuwa-ds generate`` is told; its flags are generated from these fields."""

    model_dir: str = field(metadata=cli(positional=True))
    """Exported model directory (model.safetensors + config.json)."""
    task: Task = "unconditional"
    """What to generate: unconditional (--size), text2image (--prompt), outpaint (--input, --direction),
    animate (--input, --frames) or text2video (--prompt, --frames)."""
    size: Optional[str] = None
    """WxH in pixels, multiples of the patch in pixels (default: 4x4 patches; for outpaint the input
    grown by half in --direction)."""
    frames: Optional[int] = None
    """Frames (video tasks; default 4)."""
    direction: Literal["left", "right", "up", "down"] = "right"
    """Outpaint: the direction the canvas grows."""
    input: Optional[str] = None
    """Outpaint: the picture to extend; animate: the first frame."""
    prompt: Optional[str] = None
    """Text for text2image / text2video."""
    order: Optional[Literal[ORDERS]] = None
    """Override the task's generation order."""
    top: int = field(default=0, metadata=cli(metavar="PX"))
    """Where the canvas's top lies in the training pictures, in pixels from their top (a multiple of
    the patch in pixels); read by models trained with model.row_embedding (e.g. 448 for a strip at the
    horizon of 1024-pixel-tall landscape views)."""
    sampling: GenerationConfig = field(default_factory=lambda: GenerationConfig(wavefront=True))
    """How tokens are drawn: its fields are flags; the command decodes wavefronts by default (same result)."""
    batch: int = 1
    """Canvases generated together."""
    out: str = "outputs/generated.png"
    """.png (images), .gif or .mp4 (videos); a batch writes NAME_0.png, NAME_1.png..."""
    fps: float = 8.0
    """Frames per second of a .gif / .mp4."""
    tokenizer: Optional[str] = None
    """VQ tokenizer directory or taming .ckpt (default: the model's reference)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to run (auto: the GPU when there is one)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Model dtype (auto: bf16 on GPU, fp32 on CPU)."""
    max_memory_gb: Optional[float] = None
    """Memory the generation may use beyond the weights (default: what is free)."""
    save_tokens: bool = False
    """Also write the token canvas as .npy."""


def add_arguments(parser):
    GenerateOptions.add_flags(parser)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WxH in pixels, e.g. 512x256") from None
    if w < 1 or h < 1:
        raise ValueError(f"--size {text!r}: sizes must be positive")
    return w, h


def check_pixel_size(w: int, h: int, unit: int):
    for name, v in (("width", w), ("height", h)):
        if v % unit:
            lo, hi = max(unit, v // unit * unit), (v // unit + 1) * unit
            raise ValueError(f"--size: {name} {v} px is not a multiple of the patch ({unit} px = patch_size x "
                             f"tokenizer downsampling); use {lo} or {hi}")


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def task_order(task: str, direction: str, w: int, h: int) -> str:
    if task == "outpaint":
        return direction
    if task == "unconditional" and w > 2 * h:
        return "right"  # the pool then holds a few columns, however wide the canvas
    return "down"


def largest_fitting(cfg, shape, order, batch, wavefront, guided, dtype, backend, budget) -> tuple | None:
    """The largest token canvas along the dimension the pool grows with that fits ``budget``."""
    P = cfg.patch_size
    T, H, W = shape
    axis = 2 if order in ("down", "up") else 1  # rows-first orders keep a row of slots: width limits
    lo, hi, best = 1, shape[axis] // P, None
    while lo <= hi:
        mid = (lo + hi) // 2
        trial = [T, H, W]
        trial[axis] = mid * P
        need = estimate_generation_memory(cfg, tuple(trial), order, batch, wavefront, guided, dtype, backend)["total"]
        if need <= budget:
            best, lo = tuple(trial), mid + 1
        else:
            hi = mid - 1
    return best


def _resize(image: torch.Tensor, w: int, h: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(-1, 1)


def _cover(image: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Scale to cover (w, h), then centre-crop."""
    _, ih, iw = image.shape
    scale = max(w / iw, h / ih)
    sw, sh = max(w, round(iw * scale)), max(h, round(ih * scale))
    scaled = _resize(image, sw, sh)
    top, left = (sh - h) // 2, (sw - w) // 2
    return scaled[:, top : top + h, left : left + w]


def build_prompt(task, image, tokenizer, canvas_px, frames, direction, batch, f):
    """(prompt tokens [B, T, H, W], mask) for outpaint / animate; the given region is encoded once."""
    W, H = canvas_px
    if task == "animate":
        first = _cover(image, W, H)
        tokens = tokenizer.encode(first[None].to(tokenizer.device)).cpu()  # [1, h, w]
        prompt = torch.zeros(batch, frames, H // f, W // f, dtype=torch.long)
        mask = torch.zeros_like(prompt, dtype=torch.bool)
        prompt[:, 0], mask[:, 0] = tokens[0], True
        return prompt, mask
    _, ih, iw = image.shape
    if direction in ("left", "right"):
        gw = max(f, round(iw * H / ih / f) * f)
        if gw >= W:
            raise ValueError(f"--input scaled to the canvas height is {gw} px wide, not narrower than the canvas "
                             f"({W} px): nothing to outpaint; widen --size")
        given = _resize(image, gw, H)
    else:
        gh = max(f, round(ih * W / iw / f) * f)
        if gh >= H:
            raise ValueError(f"--input scaled to the canvas width is {gh} px high, not lower than the canvas "
                             f"({H} px): nothing to outpaint; heighten --size")
        given = _resize(image, W, gh)
    tokens = tokenizer.encode(given[None].to(tokenizer.device)).cpu()[0]  # [h, w]
    h, w = tokens.shape
    prompt = torch.zeros(batch, 1, H // f, W // f, dtype=torch.long)
    mask = torch.zeros_like(prompt, dtype=torch.bool)
    rows = slice(0, h) if direction != "up" else slice(H // f - h, H // f)
    cols = slice(0, w) if direction != "left" else slice(W // f - w, W // f)
    prompt[:, 0, rows, cols], mask[:, 0, rows, cols] = tokens, True
    return prompt, mask


@dataclass
class Plan:
    """What one ``nuwa-ds generate`` makes, settled from the arguments before anything large is allocated."""

    task: str
    video: bool
    frames: int
    size_px: tuple[int, int]  # (W, H)
    order: str
    shape: tuple[int, int, int]  # tokens (T, H, W)
    f: int  # the VQ tokenizer's downsampling: pixels per token
    unit: int  # pixels per patch
    guided: bool  # classifier-free guidance: every canvas decoded with and without its caption
    image: Optional[torch.Tensor]  # the given picture (outpaint, animate), [3, h, w] in [-1, 1]


def pick_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """--device and --dtype: the GPU when there is one, bf16 on it and fp32 on the CPU ('cuda' without a
    GPU is a clear error)."""
    chosen = resolve_device(device)
    return chosen, {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype) or \
        (torch.bfloat16 if chosen.type == "cuda" else torch.float32)


def load_vq_tokenizer(model_dir, override: Optional[str], cfg, device) -> VQTokenizer:
    """The VQ tokenizer the model names (or --tokenizer), checked against the model's vocabulary."""
    tok_dir = resolve_vq_tokenizer(model_dir, override)
    if tok_dir is None or not Path(tok_dir).exists():
        raise ValueError(f"{model_dir} names no VQ tokenizer ({VQ_POINTER}) and --tokenizer was not given "
                         f"(or {tok_dir} is missing): pass --tokenizer DIR (or a taming .ckpt)")
    tokenizer = (VQTokenizer.from_taming_checkpoint(tok_dir, device=device) if Path(tok_dir).is_file()
                 else VQTokenizer.from_pretrained(tok_dir, device=device))
    if tokenizer.codebook_size != cfg.vocab_size:
        raise ValueError(f"tokenizer {tok_dir} has {tokenizer.codebook_size} codes, the model {cfg.vocab_size}")
    return tokenizer


def task_frames(opts) -> tuple[bool, int]:
    """(video, frames): whether the task makes videos, and the frames of each canvas (--frames, or 4 for
    a video and 1 for a picture)."""
    video = opts.task in ("animate", "text2video")
    frames = opts.frames if opts.frames is not None else (4 if video else 1)
    if frames < 1 or (video and frames < 2):
        raise ValueError(f"--frames {frames}: {opts.task} needs at least 2 frames" if video else
                         "--frames must be >= 1")
    return video, frames


def check_out(opts):
    """--out names a file of a kind the canvases can be written as; checked before any work."""
    suffix = Path(opts.out).suffix.lower()
    _, frames = task_frames(opts)
    if suffix not in (".png", ".gif", ".mp4"):
        raise ValueError(f"--out {opts.out}: write .png (images), .gif or .mp4 (videos)")
    if frames == 1 and suffix != ".png":
        raise ValueError(f"--out {opts.out}: a single image is written as .png")
    if frames > 1 and suffix == ".png":
        raise ValueError(f"--out {opts.out}: {frames} frames are written as .gif or .mp4")


def check_task(opts, cfg) -> tuple[bool, int]:
    """The task's inputs are there; returns (video, frames)."""
    task = opts.task
    video, frames = task_frames(opts)
    if task in ("text2image", "text2video") and not opts.prompt:
        raise ValueError(f"--task {task} needs --prompt TEXT")
    if task in ("outpaint", "animate"):
        if not opts.input:
            raise ValueError(f"--task {task} needs --input IMAGE")
        if not Path(opts.input).is_file():
            raise FileNotFoundError(f"--input {opts.input} not found")
    if opts.prompt and cfg.text_encoder is None:
        raise ValueError(f"{opts.model_dir} has no text encoder: --prompt cannot be used with this model")
    return video, frames


def canvas_size(opts, image: Optional[torch.Tensor], unit: int) -> tuple[int, int]:
    """(W, H) in pixels: --size, or for outpaint the input grown by half in --direction, or 4 x 4 patches."""
    if opts.size:
        W, H = parse_size(opts.size)
    elif opts.task == "outpaint":
        _, ih, iw = image.shape
        W, H = (round(iw * 1.5 / unit) * unit, round(ih / unit) * unit) if opts.direction in ("left", "right") else \
            (round(iw / unit) * unit, round(ih * 1.5 / unit) * unit)
        W, H = max(W, 2 * unit), max(H, unit)
    else:
        W = H = 4 * unit
    check_pixel_size(W, H, unit)
    return W, H


def plan_generation(opts, cfg, f: int) -> Plan:
    video, frames = check_task(opts, cfg)
    unit = f * cfg.patch_size
    image = load_image(opts.input) if opts.input else None
    W, H = canvas_size(opts, image, unit)
    if opts.top < 0 or opts.top % unit:
        raise ValueError(f"--top {opts.top}: must be a non-negative multiple of the patch ({unit} px)")
    guided = opts.sampling.uses_guidance(bool(opts.prompt))  # check_task: a prompt means a text encoder
    return Plan(task=opts.task, video=video, frames=frames, size_px=(W, H),
                order=opts.order or task_order(opts.task, opts.direction, W, H), shape=(frames, H // f, W // f),
                f=f, unit=unit, guided=guided, image=image)


def check_memory(cfg, plan: Plan, opts, device: torch.device, dtype: torch.dtype):
    """Print the estimate; refuse, naming the largest canvas that fits, when it exceeds the budget."""
    backend = resolve_backend(cfg.attn_backend, device)  # the backend the model will run
    need = estimate_generation_memory(cfg, plan.shape, plan.order, opts.batch, opts.sampling.wavefront, plan.guided,
                                      dtype, backend)
    budget = int(opts.max_memory_gb * 2**30) if opts.max_memory_gb is not None else free_memory_bytes(device)
    W, H = plan.size_px
    print(f"canvas {W}x{H} px x {plan.frames} frame(s) = {plan.shape[1]}x{plan.shape[2]} tokens/frame, order "
          f"{plan.order}; estimated pool {need['pool'] / 2**20:.1f} MiB ({need['slots_per_canvas']} slots/canvas) + "
          f"activations {need['activations'] / 2**20:.1f} MiB; available {budget / 2**20:.0f} MiB")
    if need["total"] > budget:
        best = largest_fitting(cfg, plan.shape, plan.order, opts.batch, opts.sampling.wavefront, plan.guided, dtype,
                               backend, budget)
        hint = (f"the largest that fits is {best[2] * plan.f}x{best[1] * plan.f} px" if best else
                "not even one patch along the growing side fits; lower --batch or free memory")
        raise ValueError(f"this generation needs about {need['total'] / 2**20:.0f} MiB beyond the weights but only "
                         f"{budget / 2**20:.0f} MiB is available: {hint}")


def sample_canvas(model, tokenizer, plan: Plan, opts, device: torch.device) -> tuple[GenerationResult, float]:
    """The token canvases [B, T, H, W] with the pool's statistics, and the seconds they took."""
    from tqdm import tqdm

    prompt = mask = None
    if plan.image is not None:
        prompt, mask = build_prompt(plan.task, plan.image, tokenizer, plan.size_px, plan.frames, opts.direction,
                                    opts.batch, plan.f)
        prompt, mask = prompt.to(device), mask.to(device)
    text = [opts.prompt] * opts.batch if opts.prompt else None
    P = model.config.patch_size
    total = plan.shape[0] * (plan.shape[1] // P) * (plan.shape[2] // P)  # patches per canvas
    start = time.perf_counter()
    with tqdm(total=total, unit="patch", desc="generating") as bar:
        result = model.generate(plan.shape, order=plan.order, batch_size=opts.batch, prompt=prompt, prompt_mask=mask,
                                text=text, config=opts.sampling, progress=bar.update, rows=opts.top // plan.unit,
                                return_result=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def write_media(tokens: torch.Tensor, tokenizer, plan: Plan, opts, device: torch.device) -> list[str]:
    """Decode each canvas to --out (``_b`` before the suffix for a batch), with --save-tokens its .npy."""
    out = Path(opts.out)  # its suffix was checked before the generation (check_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for b in range(opts.batch):
        pixels = torch.cat([tokenizer.decode_tiled(tokens[b, t : t + 1].to(device)) for t in range(plan.frames)])
        target = out if opts.batch == 1 else out.with_name(f"{out.stem}_{b}{out.suffix}")
        written.append(str(save_media(pixels.float().cpu(), target, fps=opts.fps)))
        if opts.save_tokens:
            import numpy as np

            np.save(target.with_suffix(".npy"), tokens[b].cpu().numpy().astype(np.int16))
    return written


def run(args) -> int:
    opts = GenerateOptions.from_args(args)
    check_out(opts)  # before anything is loaded: a bad name must not cost a generation
    cfg = load_config_json(opts.model_dir)
    device, dtype = pick_device(opts.device, opts.dtype)
    tokenizer = load_vq_tokenizer(opts.model_dir, opts.tokenizer, cfg, device)
    plan = plan_generation(opts, cfg, tokenizer.downsample)
    check_memory(cfg, plan, opts, device, dtype)
    model = NuwaInfinity.from_pretrained(opts.model_dir, device=device, dtype=dtype)
    result, seconds = sample_canvas(model, tokenizer, plan, opts, device)
    tokens, stats = result.tokens, result.stats
    written = write_media(tokens, tokenizer, plan, opts, device)
    summary = {"task": plan.task, "order": plan.order, "size_px": list(plan.size_px), "top_px": opts.top,
               "frames": plan.frames, "tokens": list(tokens.shape),
               "seconds": round(seconds, 3), "ms_per_token": 1000 * seconds / tokens.numel(), "files": written,
               **{k: stats[k] for k in ("steps", "patches", "slots_per_canvas", "peak_slots_in_use")}}
    print(json.dumps(summary))
    return 0
