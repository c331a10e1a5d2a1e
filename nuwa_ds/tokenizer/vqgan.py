"""A VQGAN (encoder, vector quantizer, decoder) laid out like taming-transformers' ``VQModel``.

Module and parameter names follow taming's ``Encoder`` / ``Decoder`` / ``VectorQuantizer2`` /
``GumbelQuantize`` exactly (``encoder.down.{i}.block.{j}.norm1.weight``, ``quantize.embedding.weight``,
``quant_conv``, ``post_quant_conv``...), so the checkpoints users already have (taming f16 / 16384
codes, latent-diffusion's vq-f8, the Gumbel f8) load with no renaming, and a tokenizer trained here can
be read by their code too. Only inference paths live here; ``train.py`` adds the training losses.

Shapes: images ``[B, 3, H, W]`` in [-1, 1]; latents ``[B, embed_dim, h, w]`` with ``h = H / f``;
tokens ``[B, h, w]`` (int64 code indices).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nuwa_ds.tokenizer.checkpoints import load_taming_state_dict, resolve_taming_config
from nuwa_ds.tokenizer.config import VQ_PRESETS, VQConfig

WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "tokenizer_config.json"
FORMAT = "nuwa_ds.vqgan"


# ----------------------------------------------------------------------------------------------
# Building blocks (taming/modules/diffusionmodules/model.py layout, no timestep embedding)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # taming names the 1x1 channel-changing shortcut `nin_shortcut`
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head of width C; SDPA scales by C^-0.5 as taming does
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # taming pads right/bottom only (asymmetric), then a stride-2 3x3 conv
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid_block(channels: int, cfg: VQConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.dropout, cfg.norm_groups)
    mid.attn_1 = AttnBlock(channels, cfg.norm_groups)
    mid.block_2 = ResnetBlock(channels, channels, cfg.dropout, cfg.norm_groups)
    return mid


def _level(in_ch: int, out_ch: int, n_blocks: int, attn: bool, cfg: VQConfig) -> nn.Module:
    """One resolution level: `block` (ResnetBlocks) and `attn` (an AttnBlock after each block, or none)."""
    level = nn.Module()
    level.block = nn.ModuleList()
    level.attn = nn.ModuleList()
    for _ in range(n_blocks):
        level.block.append(ResnetBlock(in_ch, out_ch, cfg.dropout, cfg.norm_groups))
        in_ch = out_ch
        if attn:
            level.attn.append(AttnBlock(out_ch, cfg.norm_groups))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = cfg.resolution, cfg.ch
        for i, width in enumerate(widths):
            level = _level(block_in, width, cfg.num_res_blocks, res in cfg.attn_resolutions, cfg)
            block_in = width
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = _mid_block(block_in, cfg)
        self.norm_out = group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, z, H/f, W/f)
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid_block(block_in, cfg)
        levels = []
        for i in reversed(range(n)):  # built lowest resolution first, stored in taming's index order
            width = cfg.ch * cfg.ch_mult[i]
            level = _level(block_in, width, cfg.num_res_blocks + 1, res in cfg.attn_resolutions, cfg)
            block_in = width
            if i != 0:
                level.upsample = Upsample(width)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, z, h, w) -> (B, 3, h*f, w*f)
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook (taming ``VectorQuantizer2``): ``embedding.weight`` [n_embed, embed_dim]."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """(B, e, h, w) -> (B, h, w) indices of the nearest codes, in chunks of positions so the
        (positions x n_embed) distance matrix stays small (16384 codes x 8192 rows = 512 MiB fp32)."""
        B, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e).float()
        book = self.embedding.weight.float()
        book_sq = (book * book).sum(1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, flat.shape[0], chunk):
            rows = flat[start:start + chunk]
            # |z - c|^2 = |z|^2 - 2 z.c + |c|^2 ; |z|^2 is constant per row and does not change the argmin
            out[start:start + chunk] = torch.addmm(book_sq, rows, book.t(), alpha=-2.0).argmin(1)
        return out.view(B, h, w)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, e, h, w)
        return self.embedding(tokens).permute(0, 3, 1, 2)


class GumbelQuantizer(nn.Module):
    """Taming ``GumbelQuantize`` at inference: the token is the argmax of ``proj`` (1x1 conv to n_embed
    logits); its vector is ``embed.weight[token]``."""

    def __init__(self, z_channels: int, embed_dim: int, n_embed: int):
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        return self.proj(z).argmax(1)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# The tokenizer


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; 'cuda' without a GPU is a ValueError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is visible")
    return device


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, size): every `stride`, the last one flush with the end."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


def _ramp(length: int, ramp: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D tile weights: 1 inside, a linear ramp (never 0) over `ramp` pixels at each side that
    overlaps a neighbouring tile, so overlapping tiles cross-fade instead of meeting at a seam."""
    w = torch.ones(length)
    if ramp > 0:
        up = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if at_start:
            w[:ramp] = up
        if at_end:
            w[length - ramp:] = up.flip(0)
    return w


class _TilePlan:
    """Window origins (in tokens) on an (h, w) token canvas and each window's share of every output
    pixel: its ramp weight divided by the sum of all windows' weights there (shares sum to 1)."""

    def __init__(self, h: int, w: int, tile: int, overlap: int, f: int):
        self.f, self.th, self.tw = f, min(tile, h), min(tile, w)
        self.pixels = (h * f, w * f)
        ys, xs = _tile_starts(h, self.th, tile - overlap), _tile_starts(w, self.tw, tile - overlap)
        self.origins = [(y, x) for y in ys for x in xs]
        ramp = overlap * f
        self._weights = {(y, x): _ramp(self.th * f, ramp, y > 0, y + self.th < h)[:, None]
                         * _ramp(self.tw * f, ramp, x > 0, x + self.tw < w)[None, :] for y, x in self.origins}
        total = torch.zeros(self.pixels)
        for (y, x), weight in self._weights.items():
            total[self.pixel_slices(y, x)] += weight
        self._shares = {(y, x): weight / total[self.pixel_slices(y, x)] for (y, x), weight in self._weights.items()}

    def pixel_slices(self, y: int, x: int) -> tuple[slice, slice]:
        f = self.f
        return slice(y * f, (y + self.th) * f), slice(x * f, (x + self.tw) * f)

    def share(self, y: int, x: int) -> torch.Tensor:  # (th*f, tw*f)
        return self._shares[(y, x)]


class CanvasNorms:
    """While active, the decoder's GroupNorms either collect per-sample group statistics of the
    whole canvas from windows (each position weighted by its window's share, so every position
    counts once) or normalise windows with the collected statistics instead of their own."""

    def __init__(self, decoder: nn.Module, batch: int):
        self.norms = [m for m in decoder.modules() if isinstance(m, nn.GroupNorm)]
        self.batch, self.collecting = batch, True
        self.sums = {id(m): torch.zeros(3, batch, m.num_groups, dtype=torch.float64) for m in self.norms}
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.samples = self.shares = None

    def __enter__(self):
        for norm in self.norms:
            norm.forward = lambda x, norm=norm: self._forward(norm, x)  # instance attribute, removed on exit
        return self

    def __exit__(self, *exc):
        for norm in self.norms:
            del norm.forward

    def set_windows(self, samples: torch.Tensor, shares: torch.Tensor):
        self.samples, self.shares = samples, shares  # (n,), (n, 1, th*f, tw*f)

    def use_collected(self):
        for norm in self.norms:
            s0, s1, s2 = self.sums[id(norm)]
            mean = s1 / s0
            var = (s2 / s0 - mean * mean).clamp_min(0.0)
            self.stats[id(norm)] = (mean.float(), var.float())
        self.collecting = False

    def _forward(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        n, C, H, W = x.shape
        G = norm.num_groups
        if not self.collecting:
            mean, var = (t[self.samples].to(x.device) for t in self.stats[id(norm)])  # (n, G)
            xg = x.float().reshape(n, G, -1)
            y = ((xg - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)).reshape(n, C, H, W).to(x.dtype)
            return y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
        share = F.interpolate(self.shares, size=(H, W), mode="area")  # (n, 1, H, W): this layer's resolution
        xg = x.double().reshape(n, G, C // G, H, W)
        weighted = xg * share.double()[:, :, None]
        parts = torch.stack([share.double().sum(dim=(1, 2, 3))[:, None].expand(n, G) * (C // G),
                             weighted.sum(dim=(2, 3, 4)), (weighted * xg).sum(dim=(2, 3, 4))])  # (3, n, G)
        self.sums[id(norm)].index_add_(1, self.samples, parts.cpu())
        return F.group_norm(x, G, norm.weight, norm.bias, norm.eps)


class VQTokenizer(nn.Module):
    """Images <-> token grids. ``encode`` / ``decode`` / ``decode_tiled``; ``save_pretrained`` /
    ``from_pretrained`` (safetensors + JSON); ``from_taming_checkpoint`` for taming ``.ckpt`` files."""

    def __init__(self, config: VQConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.quantizer == "vq":
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        else:
            self.quantize = GumbelQuantizer(config.z_channels, config.embed_dim, config.n_embed)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.source: str | None = None
        """Where the weights were loaded from (a directory or .ckpt, absolute); None when made in memory.
        ``prepare`` records it in the manifest, so training can decode its sample pictures."""

    # -- properties the rest of the project reads
    @property
    def downsample(self) -> int:
        """f: pixels per token along each side."""
        return self.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- encode / decode
    def _check_images(self, images: torch.Tensor):
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        f = self.downsample
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the downsampling "
                             f"factor {f}; crop or resize first")

    def _check_tokens(self, tokens: torch.Tensor):
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [B, h, w], got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-quantization latents (B, e, h, w) (what training quantizes)."""
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], ``[B, 3, H, W]`` (H, W multiples of f) -> tokens ``[B, H/f, W/f]``."""
        self._check_images(images)
        images = images.to(self.device, next(self.parameters()).dtype)  # fp32, or bf16 if the model was cast
        return self.quantize.codes(self.latents(images))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h, w]`` -> images ``[B, 3, h*f, w*f]`` in [-1, 1]."""
        self._check_tokens(tokens)
        tokens = tokens.to(self.device, torch.long)
        return self.decode_latents(self.quantize.lookup(tokens)).clamp_(-1.0, 1.0)

    @torch.no_grad()
    def decode_tiled(self, tokens: torch.Tensor, tile: int = 32, overlap: int = 8, tiles_per_batch: int = 8,
                     canvas_norm: bool = True) -> torch.Tensor:
        """Decode a canvas too large to decode at once: overlapping ``tile x tile``-token windows,
        decoded a batch of windows at a time and cross-faded over the overlap (linear ramps), so no
        seam shows. The output is assembled on the CPU; only windows visit the device.

        ``canvas_norm`` (default): the decoder's GroupNorms use statistics of the whole canvas instead
        of each window's, gathered by a first pass over the windows (so the decode costs two passes).
        Without it, windows differ in tone where their content differs. Equal to :meth:`decode` when
        the canvas fits one tile; otherwise close (the middle attention still sees one window)."""
        self._check_tokens(tokens)
        if tile < 1 or not 0 <= overlap < tile:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
        B, h, w = tokens.shape
        if h <= tile and w <= tile:
            return self.decode(tokens).cpu()
        plan = _TilePlan(h, w, tile, overlap, self.downsample)
        windows = [(b, y, x) for b in range(B) for y, x in plan.origins]
        if not canvas_norm:
            return self._decode_windows(tokens, windows, plan, tiles_per_batch, None)
        with CanvasNorms(self.decoder, B) as norms:
            self._decode_windows(tokens, windows, plan, tiles_per_batch, norms)  # pass 1: statistics
            norms.use_collected()
            return self._decode_windows(tokens, windows, plan, tiles_per_batch, norms)  # pass 2: pixels

    def _decode_windows(self, tokens, windows, plan: "_TilePlan", per_batch: int, norms) -> torch.Tensor:
        B = tokens.shape[0]
        collecting = norms is not None and norms.collecting
        out = None if collecting else torch.zeros(B, self.config.out_ch, *plan.pixels)
        for start in range(0, len(windows), per_batch):
            chunk = windows[start:start + per_batch]
            batch = torch.stack([tokens[b, y:y + plan.th, x:x + plan.tw] for b, y, x in chunk])
            if norms is not None:  # which sample each window belongs to, and its share of each position
                norms.set_windows(torch.tensor([b for b, _, _ in chunk]),
                                  torch.stack([plan.share(y, x) for _, y, x in chunk])[:, None].to(self.device))
            pixels = self.decode(batch).float().cpu()  # (n, 3, th*f, tw*f)
            if collecting:
                continue
            for (b, y, x), img in zip(chunk, pixels):
                ys, xs = plan.pixel_slices(y, x)
                out[b, :, ys, xs] += img * plan.share(y, x)
        return out

    # -- persistence
    def save_pretrained(self, directory) -> Path:
        """``tokenizer.safetensors`` + ``tokenizer_config.json`` (no pickle)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"format": FORMAT, "version": 1, **self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory, device="cpu") -> "VQTokenizer":
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a tokenizer directory "
                                        f"(written by VQTokenizer.save_pretrained / nuwa-ds tokenizer-train)")
        meta = json.loads((directory / CONFIG_FILE).read_text())
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{directory / CONFIG_FILE} is not a {FORMAT} config")
        meta.pop("version", None)
        model = cls(VQConfig.from_dict(meta))
        model.load_weights(load_file(str(directory / WEIGHTS_FILE)), source=str(directory))
        model.source = str(directory.resolve())
        return model.to(resolve_device(device)).eval()

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict"):
        """Strict load with one clear error listing missing, unexpected and mis-shaped keys."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise ValueError(f"weights in {source} do not match the tokenizer config: "
                             f"missing {missing[:6]}{'...' if len(missing) > 6 else ''} ({len(missing)}), "
                             f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''} "
                             f"({len(unexpected)}), shape mismatches {shapes[:4]}")
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_taming_checkpoint(cls, ckpt_path, config=None, device="cpu") -> "VQTokenizer":
        """A taming-transformers / latent-diffusion VQGAN ``.ckpt``. ``config``: a :class:`VQConfig`,
        a preset name, a taming ``model.params`` dict, a path to the model's ``.yaml`` / ``.json``,
        or None to infer the architecture from the weights."""
        state = load_taming_state_dict(ckpt_path)
        cfg = resolve_taming_config(config, state)
        model = cls(cfg)
        model.load_weights(state, source=str(ckpt_path))
        model.source = str(Path(ckpt_path).resolve())
        return model.to(resolve_device(device)).eval()


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on 8-bit values (as image codecs report it)."""
    ref = ((reference.clamp(-1, 1) + 1) * 127.5).round()
    est = ((estimate.clamp(-1, 1) + 1) * 127.5).round()
    mse = float(((ref - est) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


__all__ = ["VQConfig", "VQ_PRESETS", "VQTokenizer", "resolve_device", "psnr"]
