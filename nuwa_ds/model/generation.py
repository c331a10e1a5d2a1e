"""Generation through the rotating Nearby Context Pool (docs/design.md,
"4. Generation and the rotating pool" and "6. Beyond the paper").

For each step of the schedule (one patch, or a wavefront of patches whose context is finished):
  1. take a free slot per (example, patch);
  2. decode the patch's n tokens with the local stack; each step reads the context slots of the
     patch's NCP and its own KV cache straight from the pool (slot indices);
  3. run the global stack once on the finished patch and write its global K/V and the local
     context K/V it will offer later into its slot;
  4. free the slots whose last consumer has finished.

Prompted tokens (outpainting, animation, teacher forcing) are written instead of sampled; a fully
prompted patch skips step 2. Sampling randomness is keyed by (seed, example, patch, token), so the
sequential and wavefront schedules give the same canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.model import orders as O
from nuwa_ds.model import rope as rope_
from nuwa_ds.model.attention import TextContext, patch_attention, pool_decode_attention
from nuwa_ds.model.geometry import from_patches, patch_canvas, to_patches
from nuwa_ds.model.layers import batch_invariant_ops, invariant_active


@dataclass
class GenerationConfig(ConfigBase):
    """How tokens are drawn; ``nuwa-ds generate`` takes each field as a flag (``--top-k``...)."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_k: Optional[int] = None
    """Keep only the k most likely tokens."""
    top_p: Optional[float] = None
    """Keep the smallest set of tokens whose probability reaches p (nucleus sampling)."""
    cfg_scale: Optional[float] = None
    """Classifier-free guidance scale for text; None or 1 disables the unconditional rows."""
    seed: int = 0
    """Seed of the per-(example, patch, token) random numbers."""
    wavefront: bool = field(default=False, metadata=cli(negative=("--sequential", "One patch at a time.")))
    """Decode every patch whose context is finished together (same canvas, fewer steps)."""
    cuda_graph: bool = True
    """On CUDA, capture the token step in a CUDA graph (one per number of rows) and replay it."""
    batch_invariant: bool = False
    """With the ``triton`` attention backend (CUDA; the interpreter on CPU): every matmul, norm and
    decode attention of generation runs kernels whose rows are the same bits whatever the batch, and
    each caption is encoded alone, so that a canvas should not depend on the schedule, the batch or its
    place in it (issue 16; off until its GPU cost and bitwise result are measured). No effect with the
    ``reference`` backend."""

    def uses_guidance(self, has_text: bool) -> bool:
        """Whether classifier-free guidance runs: a caption and a scale other than None or 1 (then every
        canvas is decoded twice, with its caption and with the empty one)."""
        return has_text and self.cfg_scale is not None and self.cfg_scale != 1.0

    def validate(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # [B, T, H, W]
    logits: Optional[torch.Tensor] = None  # [B, T, H, W, K] when asked for
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Randomness keyed by position, and the sampler


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding uint32 values."""
    m = 0xFFFFFFFF
    x = x & m
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & m
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def keyed_uniform(seed: int, example: torch.Tensor, patch: torch.Tensor, token) -> torch.Tensor:
    """Uniform [0, 1) numbers, one per row, that depend only on (seed, example, patch, token);
    ``token`` is an int or a 0-dim tensor (the CUDA-graph step keeps it on the device)."""
    h = _mix32(torch.full_like(example, seed & 0xFFFFFFFF) ^ 0x9E3779B9)
    for part in (example, patch, torch.zeros_like(example) + token):  # broadcasts [R, 1] x [n] -> [R, n]
        h = _mix32(h ^ _mix32(part + 0x632BE5AB))
    return (h >> 8).to(torch.float32) / float(1 << 24)


EXACT_CDF_BITS = 29
"""Fixed-point bits of a probability in the exact CDF (batch-invariant sampling): the threshold
uniform (24 bits) x total (< 2^31) stays exact in float64."""


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor, cfg: GenerationConfig,
                  exact: bool = False) -> torch.Tensor:
    """logits [R, K] (float) + one uniform per row -> tokens [R] by inverse CDF over the filtered
    distribution (temperature, top-k, top-p); greedy when temperature is 0. ``exact`` (batch-invariant
    generation): the CDF is summed in integers (probabilities in fixed point), which add exactly in any
    order: a float cumsum's order, and so its last bits, depends on the row count on a GPU."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        # only the k best need ordering: topk is far cheaper than sorting the whole vocabulary
        top, index = torch.topk(logits, cfg.top_k, dim=-1, sorted=True)
        probs = torch.softmax(top, dim=-1)
    else:
        probs, index = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True, stable=True)
    if exact:
        probs = torch.floor(probs.double() * float(1 << EXACT_CDF_BITS)).long()  # elementwise: the same bits
    keep = torch.ones_like(probs, dtype=torch.bool)
    if cfg.top_p is not None:
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        keep &= before < (round(cfg.top_p * (1 << EXACT_CDF_BITS)) if exact else cfg.top_p)
    probs = probs * keep
    cdf = probs.cumsum(-1)
    if exact:
        threshold = torch.floor(uniform.double() * cdf[:, -1].double()).long()  # exact: 24 x 31 bits < 53
    else:
        threshold = uniform * cdf[:, -1]
    pick = torch.searchsorted(cdf, threshold.unsqueeze(1), right=True).clamp(max=probs.shape[1] - 1)
    return index.gather(1, pick).squeeze(1)


# ----------------------------------------------------------------------------------------------
# The pool


class RotatingPool:
    """Preallocated K/V slots: ``[slots, layers, 2, heads, n, head_dim]`` for the global stack, the
    local stack's context K/V, and the local stack's own KV cache of a patch being decoded."""

    def __init__(self, cfg, num_slots: int, device, dtype):
        n, D = cfg.tokens_per_patch, cfg.head_dim
        kw = dict(device=device, dtype=dtype)
        # zero-filled once: masked-out entries must never hold NaN bit patterns
        self.global_kv = torch.zeros(num_slots, cfg.n_global_layers, 2, cfg.d_global // D, n, D, **kw)
        self.context_kv = torch.zeros(num_slots, cfg.n_local_layers, 2, cfg.d_local // D, n, D, **kw)
        self.own_kv = torch.zeros(num_slots, cfg.n_local_layers, 2, cfg.d_local // D, n, D, **kw)
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self.peak_in_use = 0

    @staticmethod
    def bytes_per_slot(cfg, dtype) -> int:
        per_layer = 2 * cfg.tokens_per_patch * torch.tensor([], dtype=dtype).element_size()
        return per_layer * (cfg.d_global * cfg.n_global_layers + 2 * cfg.d_local * cfg.n_local_layers)

    @property
    def in_use(self) -> int:
        return self.num_slots - len(self._free)

    def acquire(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"pool exhausted: {count} slots asked, {len(self._free)} free of {self.num_slots}")
        slots = [self._free.pop() for _ in range(count)]
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return slots

    def release(self, slots: list[int]):
        self._free.extend(slots)

    @staticmethod
    def view(kv: torch.Tensor, layer: int):
        """(K, V) of one layer as [slots, n, heads, head_dim] views (no copy)."""
        return kv[:, layer, 0].transpose(1, 2), kv[:, layer, 1].transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Layouts: the pool side of the blocks' attention (see layers.py)


INVARIANT_SPLIT_UNITS = 4
"""Key units (of the kernel's block size) per split of the batch-invariant decode attention: a fixed
split size instead of a split count chosen by the number of rows."""


class _PoolLayout:
    def __init__(self, pool: RotatingPool, slots, ctx_slots, ctx_offset, own_offset, backend, text,
                 rotation: rope_.Rotation = None, split_units: Optional[int] = None):
        self.pool, self.slots, self.ctx_slots, self.ctx_offset = pool, slots, ctx_slots, ctx_offset
        self.own_offset, self.backend, self.text = own_offset, backend, text
        self.rotation = rotation  # (cos, sin) [R, n, rope_dims/2] of the rows' tokens, or None
        self.split_units = split_units  # batch-invariant decode (see INVARIANT_SPLIT_UNITS), or None

    def _text(self, key, layer, kv_fn) -> Optional[TextContext]:
        return self.text(key, layer, kv_fn) if self.text is not None else None


class GlobalStepLayout(_PoolLayout):
    """Global stack over finished patches: writes each layer's K/V into the rows' slots, reads the
    context from the pool."""

    def global_attend(self, layer, q, k, v, bias, text_kv, aligned=None):
        q, k = rope_.apply_rotation(q, self.rotation), rope_.apply_rotation(k, self.rotation)
        kv = self.pool.global_kv
        kv[self.slots, layer, 0] = k.transpose(1, 2)
        kv[self.slots, layer, 1] = v.transpose(1, 2)
        pool_k, pool_v = RotatingPool.view(kv, layer)
        return patch_attention(q, k, v, pool_k, pool_v, self.ctx_slots, self.ctx_offset, self.own_offset, bias,
                               causal=False, text=self._text("global", layer, text_kv), backend=self.backend,
                               aligned_bias=aligned)


class DecodeStepLayout(_PoolLayout):
    """One token of the local stack per row: appends K/V to the row's own cache at ``position``."""

    position: torch.Tensor  # [1] long tensor, shared with TokenStep (advanced inside CUDA graphs)

    def local_attend(self, layer, q, k, v, bias, context_kv, aligned=None):
        rotation = rope_.select(self.rotation, self.position, 1)  # this token's, [R, 1, rope_dims/2]
        q, k = rope_.apply_rotation(q, rotation), rope_.apply_rotation(k, rotation)
        own = self.pool.own_kv
        own[self.slots, layer, 0, :, self.position] = k[:, 0]
        own[self.slots, layer, 1, :, self.position] = v[:, 0]
        ctx_k, ctx_v = RotatingPool.view(self.pool.context_kv, layer)
        own_k, own_v = RotatingPool.view(own, layer)
        own_len = (self.position + 1).expand(self.slots.shape)
        out = pool_decode_attention(q[:, 0], ctx_k, ctx_v, self.ctx_slots, self.ctx_offset, own_k, own_v,
                                    self.slots, own_len, self.own_offset, bias,
                                    text=self._text("local", layer, context_kv), backend=self.backend,
                                    aligned_bias=aligned, split_units=self.split_units)
        return out.unsqueeze(1)


class _TextCache:
    """Per-layer text K/V, computed once per generation and shared by every step."""

    def __init__(self, states, length):
        self.states, self.length, self.cache = states, length, {}
        self.rows: Optional[torch.Tensor] = None  # text row of each attention row, set per step

    def __call__(self, key, layer, kv_fn) -> TextContext:
        if (key, layer) not in self.cache:
            self.cache[(key, layer)] = kv_fn(self.states)
        k, v = self.cache[(key, layer)]
        return TextContext(k, v, self.length, self.rows)


# ----------------------------------------------------------------------------------------------
# Memory, before anything is allocated


def estimate_generation_memory(cfg, shape, order: str, batch_size: int = 1, wavefront: bool = False,
                               guided: bool = False, dtype=None, backend: str = "reference",
                               return_logits: bool = False) -> dict:
    """Bytes the pool and the per-step activations of a generation will take (weights excluded).

    The pool depends on the order's frontier (slots per canvas), not on the canvas length; the
    activations on the widest step (rows decoded together)."""
    dtype = dtype or torch.float32
    elt = torch.tensor([], dtype=dtype).element_size()
    table = O.context_table(patch_canvas(shape, cfg.patch_size), order, cfg.extents)
    rows_b = batch_size * (2 if guided else 1)
    slots = table.slots_needed(wavefront)
    pool = rows_b * slots * RotatingPool.bytes_per_slot(cfg, dtype)
    width = max(len(w) for w in table.steps(wavefront))
    rows = rows_b * width
    n, C = cfg.tokens_per_patch, table.max_context
    d = max(cfg.d_global, cfg.d_local)
    hidden = int(d * cfg.mlp_ratio)
    heads = d // cfg.head_dim
    # global step over `rows` patches: residual, qkv, mlp hidden, and the attention itself
    act = rows * n * (4 * d + hidden) * elt
    if backend == "reference":  # gathered context blocks and the explicit mask/score matrix
        act += rows * (C + 1) * n * 2 * d * elt + 2 * rows * heads * n * (C + 1) * n * 4
    act += rows * cfg.vocab_size * 4 * 3  # decode-step logits and sampling buffers (fp32)
    canvas = batch_size * table.num_patches * n * 8
    if return_logits:
        canvas += batch_size * table.num_patches * n * cfg.vocab_size * 4
    return {"pool": pool, "activations": act, "canvas": canvas, "total": pool + act + canvas,
            "slots_per_canvas": slots, "rows_per_step": rows}


# ----------------------------------------------------------------------------------------------
# The loop


def _check_prompt(model, prompt, prompt_mask, batch_size, shape, device):
    if prompt is None:
        if prompt_mask is not None:
            raise ValueError("prompt_mask given without prompt")
        return None, None
    if prompt_mask is None:
        raise ValueError("prompt given without prompt_mask (which tokens to keep)")
    if tuple(prompt.shape) != (batch_size, *shape):
        raise ValueError(f"prompt must be [B, T, H, W] = {(batch_size, *shape)}, got {tuple(prompt.shape)}")
    mask = prompt_mask.to(device=device, dtype=torch.bool).expand(batch_size, *shape)
    given = prompt.to(device)[mask]
    if given.numel() and (int(given.min()) < 0 or int(given.max()) >= model.config.vocab_size):
        raise ValueError(f"prompt token ids must lie in [0, {model.config.vocab_size})")
    return prompt.to(device).long().masked_fill(~mask, 0), mask


@dataclass
class _Shared:
    """What every step of one generation reads: its settings, the pool, and the canvas being written."""

    model: torch.nn.Module
    config: GenerationConfig
    pool: RotatingPool
    backend: str
    own_offset: int
    order_id: int
    max_context: int
    text: Optional[_TextCache]
    guided: bool
    """Classifier-free guidance: internal rows B..2B-1 are the same canvases without their text."""
    invariant: bool
    """Batch-invariant kernels in use (``GenerationConfig.batch_invariant`` with the triton backend)."""
    canvas: torch.Tensor  # [B, N, n] tokens, written as they are decoded
    prompt: Optional[torch.Tensor]  # [B, N, n] given tokens (zero elsewhere)
    mask: Optional[torch.Tensor]  # [B, N, n] where they are given
    logits: Optional[torch.Tensor]  # [B, N, n, K] when asked for


@dataclass
class _StepRows:
    """The internal rows of one schedule step, example-major: (example row, patch) pairs and their slots."""

    example: torch.Tensor  # [R] internal example row (with guidance 0..2B-1)
    patch: torch.Tensor  # [R] canonical patch
    canvas_row: torch.Tensor  # [R] the canvas row it writes (example % B)
    slots: torch.Tensor  # [R] its pool slot
    ctx_slots: torch.Tensor  # [R, C] the slots of its context patches (-1: none)
    ctx_offset: torch.Tensor  # [R, C] their offset ids
    width: int  # patches in the step


class _Generation:
    """One generation: the canvas and its pool, where each patch lives in it, the token steppers."""

    def __init__(self, model, shape, order: str, batch_size: int, prompt, prompt_mask, text,
                 config: GenerationConfig, return_logits: bool, rows):
        cfg = model.config
        config.validate()
        self.shape = shape = tuple(int(s) for s in shape)
        pshape = patch_canvas(shape, cfg.patch_size)  # ValueError before any allocation
        order_id = O.check_order(order)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        param = next(model.parameters())
        self.device, self.dtype = device, dtype = param.device, param.dtype
        prompt, mask = _check_prompt(model, prompt, prompt_mask, batch_size, shape, device)
        self.table = table = O.context_table(pshape, order, cfg.extents)
        self.batch_size, self.P, self.n = batch_size, cfg.patch_size, cfg.tokens_per_patch
        N = table.num_patches

        text_cache, guided = _text_cache(model, text, batch_size, device, config)
        self.rows_b = 2 * batch_size if guided else batch_size
        self.schedule = table.steps(config.wavefront)
        self.slots_per_canvas = table.slots_needed(config.wavefront)
        pool = RotatingPool(cfg, self.rows_b * self.slots_per_canvas, device, dtype)
        _, self.free_after = table.lifetimes(config.wavefront)  # step after which a patch's slot is freed
        self.has_consumer = (table.last_consumer != table.position).to(device)

        prompt_p = to_patches(prompt, self.P) if prompt is not None else None
        canvas = prompt_p.clone() if prompt_p is not None else torch.zeros(batch_size, N, self.n, dtype=torch.long,
                                                                             device=device)
        logits = (torch.empty(batch_size, N, self.n, cfg.vocab_size, dtype=torch.float32, device=device)
                  if return_logits else None)
        self.shared = _Shared(model=model, config=config, pool=pool, backend=model.attention_backend(device),
                              own_offset=O.own_offset_id(cfg.extents), order_id=order_id,
                              max_context=table.max_context, text=text_cache, guided=guided,
                              invariant=invariant_active(), canvas=canvas,
                              prompt=prompt_p, mask=to_patches(mask, self.P) if mask is not None else None,
                              logits=logits)

        self.slot_of = torch.full((self.rows_b, N), -1, dtype=torch.long, device=device)
        self.to_free: dict[int, list[int]] = {}  # step -> slots freed after it
        self.token_rotation = model.token_rotation(pshape, device)  # [N, n, rope_dims/2] x2, or None
        self.frame_of = torch.arange(pshape[0], device=device).repeat_interleave(pshape[1] * pshape[2])
        self.top = model.patch_rows(rows, batch_size, device)  # [B] or None (no row embedding)
        self.row_in_canvas = torch.arange(pshape[1], device=device).repeat_interleave(pshape[2]).repeat(pshape[0])
        self.ctx_index, self.ctx_offset = table.ctx_index.to(device), table.ctx_offset.to(device)
        self.use_graph = device.type == "cuda" and config.cuda_graph
        self.steppers: dict[int, TokenStep] = {}  # by rows decoded together (one CUDA graph each)
        self.decoded = 0

    def place(self, patches: torch.Tensor) -> _StepRows:
        """1. A free pool slot per (example, patch) of the step."""
        patches, device = patches.to(self.device), self.device
        width = patches.numel()
        example = torch.arange(self.rows_b, device=device).repeat_interleave(width)
        patch = patches.repeat(self.rows_b)
        slots = torch.tensor(self.shared.pool.acquire(example.numel()), device=device)
        self.slot_of[example, patch] = slots
        for slot, p in zip(slots.tolist(), patch.tolist()):
            self.to_free.setdefault(int(self.free_after[p]), []).append(slot)
        ctx_index = self.ctx_index[patch]
        ctx_slots = torch.where(ctx_index >= 0, self.slot_of[example.unsqueeze(1), ctx_index.clamp(min=0)], ctx_index)
        return _StepRows(example=example, patch=patch, canvas_row=example % self.batch_size, slots=slots,
                         ctx_slots=ctx_slots, ctx_offset=self.ctx_offset[patch], width=width)

    def _patch_rows(self, rows: _StepRows, sel: torch.Tensor) -> Optional[torch.Tensor]:
        """The absolute patch row of the selected rows (models with ``row_embedding``), else None."""
        return None if self.top is None else self.top[rows.canvas_row[sel]] + self.row_in_canvas[rows.patch[sel]]

    def decode(self, rows: _StepRows):
        """2. The local stack decodes the patches that have tokens to sample (or logits to report)."""
        shared, B = self.shared, self.batch_size
        need = torch.ones(rows.example.numel(), dtype=torch.bool, device=self.device)
        if shared.mask is not None and shared.logits is None:
            need = ~shared.mask[rows.canvas_row, rows.patch].all(dim=1)
        if not bool(need.any()):
            return
        sel = need.nonzero().squeeze(1)
        if shared.guided:  # decode a pair (conditional, unconditional) together or not at all
            sel = sel[sel < rows.width * B]
            sel = torch.cat([sel, sel + rows.width * B])
        half = sel[: sel.numel() // 2] if shared.guided else sel
        if sel.numel() not in self.steppers:
            self.steppers[sel.numel()] = TokenStep(shared, sel.numel())
        stepper = self.steppers[sel.numel()]
        stepper.load(slots=rows.slots[sel], ctx_slots=rows.ctx_slots[sel], ctx_offset=rows.ctx_offset[sel],
                     text_rows=rows.example[sel], frame=self.frame_of[rows.patch[sel]], b=rows.canvas_row[half],
                     p=rows.patch[half], patch_rows=self._patch_rows(rows, sel),
                     rotation=rope_.select(self.token_rotation, rows.patch[sel], 0))
        stepper.run_patch(self.n, use_graph=self.use_graph)
        self.decoded += int(sel.numel()) // (2 if shared.guided else 1)

    def feed_pool(self, rows: _StepRows):
        """3. The global stack on the finished patches that someone will read: their global K/V and the
        context K/V each local layer will read from them go into their slots."""
        shared = self.shared
        run = self.has_consumer[rows.patch]
        if not bool(run.any()):
            return
        sel = run.nonzero().squeeze(1)
        slots = rows.slots[sel]
        if shared.text is not None:
            shared.text.rows = rows.example[sel]
        rotation = rope_.select(self.token_rotation, rows.patch[sel], 0)
        layout = GlobalStepLayout(shared.pool, slots, rows.ctx_slots[sel], rows.ctx_offset[sel], shared.own_offset,
                                  shared.backend, shared.text, rotation)
        model = shared.model
        states = model.global_model(shared.canvas[rows.canvas_row[sel], rows.patch[sel]], layout,
                                    self._patch_rows(rows, sel))  # [R, n, d_global]
        for i, block in enumerate(model.local_model.blocks):
            ck, cv = block.context_kv(states)
            ck = rope_.apply_rotation(ck, rotation)  # rotated once, where it is written
            shared.pool.context_kv[slots, i, 0] = ck.transpose(1, 2)
            shared.pool.context_kv[slots, i, 1] = cv.transpose(1, 2)

    def release(self, step: int):
        """4. Free the slots whose last consumer was in this step."""
        self.shared.pool.release(self.to_free.pop(step, []))

    def result(self) -> GenerationResult:
        shared, pool = self.shared, self.shared.pool
        tokens = from_patches(shared.canvas, self.shape, self.P)
        logits = from_patches(shared.logits, self.shape, self.P) if shared.logits is not None else None
        stats = dict(steps=len(self.schedule), patches=self.table.num_patches, decoded_patches=self.decoded,
                     batch_invariant=shared.invariant,
                     slots_per_canvas=self.slots_per_canvas, pool_slots=pool.num_slots,
                     peak_slots_in_use=pool.peak_in_use, slots_in_use_at_end=pool.in_use,
                     pool_bytes=pool.num_slots * RotatingPool.bytes_per_slot(shared.model.config, self.dtype))
        return GenerationResult(tokens, logits, stats)


def _text_cache(model, text, batch_size: int, device, config: GenerationConfig) -> tuple[Optional[_TextCache], bool]:
    """The captions' encoder states, shared by every step, and whether guidance is on (then the rows
    B..2B-1 are the same canvases with the empty caption)."""
    text_ctx = model.encode_text(text, batch_size, device)
    guided = config.uses_guidance(text_ctx is not None)
    if text_ctx is None:
        return None, guided
    states, length = text_ctx
    if guided:
        states, length = torch.cat([states, states]), torch.cat([length, torch.zeros_like(length)])
    return _TextCache(states, length), guided


@torch.no_grad()  # (not inference_mode: the kernels' tables track in-place refills by version counter)
def run_generation(model, shape, order: str, batch_size: int, prompt=None, prompt_mask=None, text=None,
                   config: Optional[GenerationConfig] = None, return_logits: bool = False,
                   progress: Optional[Callable[[int], None]] = None, rows=None) -> GenerationResult:
    """The four steps of the module docstring for each step of the schedule; see ``NuwaInfinity.generate``."""
    config = config or GenerationConfig()
    backend = model.attention_backend(next(model.parameters()).device)
    # the kernels run with the triton backend only; _Generation reads the switch (invariant_active)
    with batch_invariant_ops(bool(config.batch_invariant) and backend == "triton"):
        generation = _Generation(model, shape, order, batch_size, prompt, prompt_mask, text, config, return_logits,
                                 rows)
        for step, patches in enumerate(generation.schedule):
            step_rows = generation.place(patches)
            generation.decode(step_rows)
            generation.feed_pool(step_rows)
            generation.release(step)
            if progress is not None:
                progress(step_rows.width)
        return generation.result()



class TokenStep:
    """One token of the local stack for a fixed number of rows R, with every per-token input in
    device tensors (position, previous token) and every per-patch input in static buffers that
    ``load`` refills. So the same step runs eagerly on CPU, and on GPU is captured once per R in a
    CUDA graph and replayed n times per patch, for every patch decoded with R rows.

    Rows are internal rows (with guidance: the conditional rows, then the unconditional ones);
    ``b``/``p`` are the canvas row and canonical patch of the first ``half`` rows.
    """

    def __init__(self, shared: _Shared, rows: int):
        model = shared.model
        self.model, self.config, self.guided = model, shared.config, shared.guided
        self.exact_cdf = shared.invariant
        self.canvas, self.prompt_p, self.mask_p = shared.canvas, shared.prompt, shared.mask
        self.logits_out = shared.logits
        self.text_cache, self.order_id = shared.text, shared.order_id
        device = shared.canvas.device
        long = dict(dtype=torch.long, device=device)
        max_context = shared.max_context
        self.half = half = rows // 2 if shared.guided else rows
        self.slots, self.text_rows = torch.zeros(rows, **long), torch.zeros(rows, **long)
        self.ctx_slots, self.ctx_offset = torch.zeros(rows, max_context, **long), torch.zeros(rows, max_context, **long)
        self.b, self.p = torch.zeros(half, **long), torch.zeros(half, **long)
        # token index inside the patch, shape [1]: a 0-dim index would be read back to the host by
        # PyTorch's indexing (a sync, which CUDA-graph capture forbids)
        self.position = torch.zeros(1, **long)
        self.uniform = torch.zeros(half, model.config.tokens_per_patch, device=device)  # per (row, token)
        self.prev = torch.zeros(rows, **long)
        self.bos = torch.zeros(rows, model.config.d_local, device=device, dtype=next(model.parameters()).dtype)
        cfg = model.config
        self.rotation = (tuple(torch.zeros(rows, cfg.tokens_per_patch, cfg.rope_dims // 2, device=device)
                               for _ in range(2)) if cfg.rope_dims else None)
        self.layout = DecodeStepLayout(shared.pool, self.slots, self.ctx_slots, self.ctx_offset, shared.own_offset,
                                       shared.backend, shared.text, self.rotation,
                                       INVARIANT_SPLIT_UNITS if shared.invariant else None)
        self.layout.position = self.position
        self.graph = None

    def load(self, slots, ctx_slots, ctx_offset, text_rows, frame, b, p, patch_rows=None, rotation=None):
        """Point the static buffers at the next patches (same row count)."""
        for buf, value in ((self.slots, slots), (self.ctx_slots, ctx_slots), (self.ctx_offset, ctx_offset),
                           (self.text_rows, text_rows), (self.b, b), (self.p, p),
                           *zip(self.rotation or (), rotation or ())):
            buf.copy_(value)
        order = torch.full_like(slots, self.order_id)
        self.bos.copy_(self.model.local_model.begin_of_patch(order, frame, patch_rows))  # [R, d_local]
        tokens = torch.arange(self.uniform.shape[1], device=slots.device)
        self.uniform.copy_(keyed_uniform(self.config.seed, b.unsqueeze(1), p.unsqueeze(1), tokens))

    def __call__(self):
        """Decode token ``position`` of every row; advance ``position``."""
        if self.text_cache is not None:
            self.text_cache.rows = self.text_rows
        local, k = self.model.local_model, self.position
        x = torch.where(k == 0, self.bos, local.embed(self.prev)) + local.pos.index_select(0, k)
        h = x.unsqueeze(1)  # [R, 1, d_local]
        for i, block in enumerate(local.blocks):
            h = block(h, self.layout, i)
        _, logits = self.model.head(h[:, 0], return_logits=True)
        logits = logits.float()
        if self.guided:
            logits = logits[self.half :] + self.config.cfg_scale * (logits[: self.half] - logits[self.half :])
        if self.logits_out is not None:
            self.logits_out[self.b, self.p, k] = logits
        token = sample_tokens(logits, self.uniform.index_select(1, k).squeeze(1), self.config, self.exact_cdf)
        if self.mask_p is not None:
            token = torch.where(self.mask_p[self.b, self.p, k], self.prompt_p[self.b, self.p, k], token)
        self.canvas[self.b, self.p, k] = token
        self.prev.copy_(torch.cat([token, token]) if self.guided else token)
        self.position.add_(1)

    def run_patch(self, n: int, use_graph: bool):
        self.position.zero_()
        if not use_graph:
            for _ in range(n):
                self()
            return
        if self.graph is None:
            self._capture()
            self.position.zero_()
        for _ in range(n):
            self.graph.replay()

    def _capture(self):
        # warm up on a side stream (allocator, lazy kernels), then capture one step
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self()
