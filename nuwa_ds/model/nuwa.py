"""NUWA-Infinity: a global patch-level stack over a local token-level decoder (docs/design.md,
"2. The model").

Shapes: B batch, T frames, H x W tokens, P patch side, n = P*P tokens per patch,
N = T * (H/P) * (W/P) patches, R = B*N rows (one per patch), K vocabulary, C context entries.

Training runs both stacks over all patches at once (``ParallelLayout``); generation and
``teacher_forced_decode`` run the very same blocks through the rotating pool (``generation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from nuwa_ds.model import orders as O
from nuwa_ds.model import persistence
from nuwa_ds.model import rope as rope_
from nuwa_ds.model.attention import TextContext, patch_attention, resolve_backend
from nuwa_ds.model.config import NuwaConfig
from nuwa_ds.model.generation import GenerationConfig, run_generation
from nuwa_ds.model.geometry import from_patches, patch_canvas, to_patches
from nuwa_ds.model.layers import (GlobalBlock, LMHead, LocalBlock, RMSNorm, init_weights, invariant_active,
                                  linear)
from nuwa_ds.model.persistence import load_config_json  # noqa: F401 - re-exported from its former home
from nuwa_ds.model.text import build_text_encoder, check_text_length, load_text_encoder

OrderArg = Union[str, Sequence[str]]


@dataclass
class NuwaOutput:
    loss: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]  # [B, T, H, W, K]


# ----------------------------------------------------------------------------------------------
# Training layout: every patch of the batch at once


@dataclass
class BatchTables:
    """Context tables of a batch (one order per example), flattened to rows R = B*N."""

    ctx_rows: torch.Tensor  # [R, C] row index (b*N + patch) of each context entry, -1 for none
    ctx_offset: torch.Tensor  # [R, C] bias-table id
    frame: torch.Tensor  # [R] frame index of each row's patch
    batch: torch.Tensor  # [R] example of each row
    row: torch.Tensor  # [R] patch row of each row's patch inside its canvas


def batch_tables(shape, orders: list[str], extents, device) -> BatchTables:
    tables = [O.context_table(shape, o, extents) for o in orders]
    N, C = tables[0].num_patches, max(t.max_context for t in tables)
    own = O.own_offset_id(extents)
    rows, offs = [], []
    for b, t in enumerate(tables):
        pad = C - t.max_context
        idx = torch.nn.functional.pad(t.ctx_index, (0, pad), value=-1)
        rows.append(torch.where(idx >= 0, idx + b * N, idx))
        offs.append(torch.nn.functional.pad(t.ctx_offset, (0, pad), value=own))
    T, Hp, Wp = shape
    frame = torch.arange(T).repeat_interleave(Hp * Wp).repeat(len(orders))
    batch = torch.arange(len(orders)).repeat_interleave(N)
    row = torch.arange(Hp).repeat_interleave(Wp).repeat(T * len(orders))
    return BatchTables(torch.cat(rows).to(device), torch.cat(offs).to(device), frame.to(device), batch.to(device),
                       row.to(device))


def row_embedding(table: Optional[nn.Parameter], rows: Optional[torch.Tensor]):
    """The absolute-row term of each patch row (rows [R] long, from the source picture's top), or 0."""
    if table is None:
        return 0
    if rows is None:
        raise ValueError("this model has a row embedding: pass the patch rows")
    return table[rows.clamp(0, table.shape[0] - 1)]


class ParallelLayout:
    """Teacher-forced training: all R patch rows at once; context blocks are other rows."""

    def __init__(self, tables: BatchTables, own_offset: int, backend: str, text_states=None, text_length=None,
                 rotation: rope_.Rotation = None):
        self.tables, self.own_offset, self.backend = tables, own_offset, backend
        self.text_states, self.text_length = text_states, text_length
        self.rotation = rotation  # (cos, sin) [R, n, rope_dims/2] of every row's tokens, or None
        self.global_states: Optional[torch.Tensor] = None  # [R, n, d_global], set between the stacks

    def _text(self, text_kv) -> Optional[TextContext]:
        if self.text_states is None:
            return None
        k, v = text_kv(self.text_states)
        return TextContext(k, v, self.text_length, self.tables.batch)

    def global_attend(self, layer, q, k, v, bias, text_kv, aligned=None):
        t = self.tables
        q, k = rope_.apply_rotation(q, self.rotation), rope_.apply_rotation(k, self.rotation)
        return patch_attention(q, k, v, k, v, t.ctx_rows, t.ctx_offset, self.own_offset, bias, causal=False,
                               text=self._text(text_kv), backend=self.backend, aligned_bias=aligned)

    def local_attend(self, layer, q, k, v, bias, context_kv, aligned=None):
        t = self.tables
        ck, cv = context_kv(self.global_states)  # [R, n, H, D] each
        q, k, ck = (rope_.apply_rotation(x, self.rotation) for x in (q, k, ck))
        return patch_attention(q, k, v, ck, cv, t.ctx_rows, t.ctx_offset, self.own_offset, bias, causal=True,
                               text=self._text(context_kv), backend=self.backend, aligned_bias=aligned)


# ----------------------------------------------------------------------------------------------
# The two stacks


class GlobalStack(nn.Module):
    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        nb = O.num_offsets(cfg.extents) + 1
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_global)
        self.pos = nn.Parameter(torch.zeros(cfg.tokens_per_patch, cfg.d_global))  # intra-patch position
        self.row_embed = nn.Parameter(torch.zeros(cfg.row_embedding, cfg.d_global)) if cfg.row_embedding else None
        # offsets of earlier frames come first in the bias table (dt < 0): how many the global stack masks
        earlier = 0 if cfg.global_time_context else O.offset_id(0, -cfg.extents[1], -cfg.extents[2], cfg.extents)
        self.blocks = nn.ModuleList(GlobalBlock(cfg.d_global, cfg.head_dim, cfg.mlp_ratio, nb, cfg.norm_eps,
                                                cfg.aligned_bias, earlier) for _ in range(cfg.n_global_layers))
        self.norm = RMSNorm(cfg.d_global, cfg.norm_eps)
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, patches: torch.Tensor, layout, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """patches [R, n] complete patch tokens (rows [R]: absolute patch rows, for the row embedding)
        -> global states [R, n, d_global] (after the final norm)."""
        x = self.embed(patches) + self.pos
        if self.row_embed is not None:
            x = x + row_embedding(self.row_embed, rows).unsqueeze(1)
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, layout, i, use_reentrant=False)
            else:
                x = block(x, layout, i)
        return self.norm(x)


class LocalStack(nn.Module):
    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        nb = O.num_offsets(cfg.extents) + 1
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_local)
        self.pos = nn.Parameter(torch.zeros(cfg.tokens_per_patch, cfg.d_local))
        self.bos = nn.Parameter(torch.zeros(cfg.d_local))
        self.order_embed = nn.Parameter(torch.zeros(len(O.ORDERS), cfg.d_local))
        self.frame_embed = nn.Parameter(torch.zeros(cfg.max_frames, cfg.d_local)) if cfg.frame_embedding else None
        self.row_embed = nn.Parameter(torch.zeros(cfg.row_embedding, cfg.d_local)) if cfg.row_embedding else None
        self.blocks = nn.ModuleList(LocalBlock(cfg.d_local, cfg.d_global, cfg.head_dim, cfg.mlp_ratio, nb,
                                               cfg.norm_eps, cfg.aligned_bias) for _ in range(cfg.n_local_layers))
        self.max_frames = cfg.max_frames
        self.checkpointing = cfg.activation_checkpointing

    def begin_of_patch(self, order_id: torch.Tensor, frame: torch.Tensor,
                       rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """BOS_i [R, d_local]: learned BOS + order embedding (+ frame embedding) (+ row embedding)."""
        x = self.bos + self.order_embed[order_id]
        if self.frame_embed is not None:
            x = x + self.frame_embed[frame.clamp(max=self.max_frames - 1)]
        if self.row_embed is not None:
            x = x + row_embedding(self.row_embed, rows)
        return x

    def inputs(self, patches: torch.Tensor, order_id: torch.Tensor, frame: torch.Tensor,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[BOS_i, x_0 .. x_{n-2}] + positions: [R, n, d_local] (teacher forcing)."""
        bos = self.begin_of_patch(order_id, frame, rows).unsqueeze(1)
        return torch.cat([bos, self.embed(patches[:, :-1])], dim=1) + self.pos

    def forward(self, patches, order_id, frame, layout, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.inputs(patches, order_id, frame, rows)
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, layout, i, use_reentrant=False)
            else:
                x = block(x, layout, i)
        return x


# ----------------------------------------------------------------------------------------------
# The model


class NuwaInfinity(nn.Module):
    """See module docstring; the public interface: docs/design.md, "9. Interfaces and the model directory"."""

    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.global_model = GlobalStack(cfg)
        self.local_model = LocalStack(cfg)
        self.head = LMHead(cfg.d_local, cfg.vocab_size, cfg.norm_eps, cfg.loss_chunk_tokens, cfg.loss_backend)
        init_weights(self, cfg.init_std, cfg.n_global_layers + cfg.n_local_layers)
        if cfg.aligned_bias_init:  # the prior of model.aligned_bias_init: the same place, frames before
            back = [O.offset_id(-dt, 0, 0, cfg.extents) for dt in range(1, cfg.extents[0] + 1)]
            with torch.no_grad():
                for block in [*self.global_model.blocks, *self.local_model.blocks]:
                    block.aligned_bias[:cfg.aligned_bias_prior_heads, back] = cfg.aligned_bias_init
        self.text_encoder = None
        self.text_proj = None
        self.text_tokenizer = None
        if cfg.text_encoder is not None:
            self._build_text_encoder(cfg.text_encoder)

    # -- text conditioning ------------------------------------------------------------------------

    def _build_text_encoder(self, hf_config: dict):
        self.text_encoder, width = build_text_encoder(hf_config)
        check_text_length(self.text_encoder.config, self.config.max_text_len)
        self.text_proj = nn.Linear(width, self.config.d_global, bias=False)
        nn.init.normal_(self.text_proj.weight, std=self.config.init_std)
        if self.config.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.train(self.training)  # a frozen encoder stays in eval mode (no dropout)

    def attach_text_encoder(self, path: str):
        """Load a transformers text encoder and its tokenizer from a local directory."""
        encoder, tokenizer = load_text_encoder(path)
        # the encoder's own config, minus where it was loaded from (no machine paths in checkpoints)
        self.config.text_encoder = {k: v for k, v in encoder.config.to_dict().items() if k != "_name_or_path"}
        self._build_text_encoder(self.config.text_encoder)
        self.text_encoder.load_state_dict(encoder.state_dict())
        self.text_tokenizer = tokenizer
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_encoder is not None and self.config.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    def tokenize_text(self, captions: Sequence[str], device=None) -> dict:
        if self.text_tokenizer is None:
            raise ValueError("captions given as strings need a text tokenizer: attach_text_encoder(path) first, "
                             "or pass {'input_ids', 'attention_mask'}")
        enc = self.text_tokenizer(list(captions), padding="max_length", truncation=True,
                                  max_length=self.config.max_text_len, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode_text(self, text, batch_size: int, device):
        """text -> (states [B, S, d_global], length [B]) or None. ``text`` is None, a list of
        captions, or a dict with right-padded ``input_ids`` and ``attention_mask`` [B, S]; a row whose
        mask is all zero is unconditional (caption dropped)."""
        if text is None:
            return None
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder (config.text_encoder is None); pass text=None")
        if isinstance(text, (list, tuple)):
            text = self.tokenize_text(text, device)
        ids, mask = text["input_ids"].to(device), text["attention_mask"].to(device)
        if ids.shape[0] != batch_size:
            raise ValueError(f"text batch {ids.shape[0]} does not match token batch {batch_size}")
        length = mask.long().sum(1)
        if not torch.equal(mask.bool(), torch.arange(mask.shape[1], device=device) < length.unsqueeze(1)):
            raise ValueError("text attention_mask must be right-padded (ones, then zeros)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            if not invariant_active():
                states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            else:  # batch-invariant generation: each caption alone, at its own length (the batch's padding
                # would change the encoder's shapes), zero states after it (never attended: ``length``)
                states = None
                for i, n in enumerate(length.tolist()):
                    one = self.text_encoder(input_ids=ids[i:i + 1, :max(n, 1)],
                                            attention_mask=mask[i:i + 1, :max(n, 1)]).last_hidden_state
                    if states is None:
                        states = one.new_zeros(ids.shape[0], ids.shape[1], one.shape[-1])
                    states[i, :one.shape[1]] = one[0]
        return linear(self.text_proj, states.to(self.text_proj.weight.dtype)), length

    # -- checks -----------------------------------------------------------------------------------

    def check_tokens(self, tokens: torch.Tensor):
        if tokens.dim() != 4:
            raise ValueError(f"tokens must be [B, T, H, W], got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        patch_canvas(tokens.shape[1:], self.config.patch_size)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def order_list(self, order: OrderArg, batch: int) -> list[str]:
        orders = [order] * batch if isinstance(order, str) else list(order)
        if len(orders) != batch:
            raise ValueError(f"got {len(orders)} orders for a batch of {batch}")
        for o in orders:
            O.check_order(o)
        return orders

    def attention_backend(self, device) -> str:
        return resolve_backend(self.config.attn_backend, torch.device(device))

    def token_rotation(self, pshape, device) -> rope_.Rotation:
        """(cos, sin) [N, n, rope_dims/2] of every token of a (T, Hp, Wp) patch canvas (canonical
        patch order), or None for a model without ``rope_dims``."""
        cfg = self.config
        if not cfg.rope_dims:
            return None
        coords = rope_.patch_token_coordinates(pshape, cfg.patch_size, device)
        return rope_.rotation(coords, cfg.rope_dims, cfg.rope_base, cfg.rope_max_freq)

    # -- training forward -------------------------------------------------------------------------

    def patch_rows(self, rows, batch: int, device) -> Optional[torch.Tensor]:
        """``rows`` (None, an int, or [B] ints: the patch row of each example's top in its source
        picture) -> LongTensor [B], or None for a model without a row embedding."""
        if not self.config.row_embedding:
            return None
        rows = torch.as_tensor(0 if rows is None else rows, dtype=torch.long, device=device)
        rows = rows.expand(batch) if rows.dim() == 0 else rows
        if rows.shape != (batch,) or bool((rows < 0).any()):
            raise ValueError(f"rows must be one non-negative patch row per example ({batch}), got {rows.tolist()}")
        return rows

    def forward(self, tokens: torch.Tensor, order: OrderArg = "down", text=None, return_logits: bool = True,
                return_loss: bool = True, rows=None) -> NuwaOutput:
        """Teacher-forced forward over all patches in parallel.

        tokens [B, T, H, W] (H, W multiples of P); ``order`` one name or one per example; ``rows``
        (models with ``row_embedding``): the patch row of each example's top in its source picture.
        Returns loss (mean cross-entropy over all tokens) and logits [B, T, H, W, K]."""
        cfg = self.config
        self.check_tokens(tokens)
        B, T, H, W = tokens.shape
        shape = patch_canvas((T, H, W), cfg.patch_size)
        orders = self.order_list(order, B)
        device = tokens.device
        tables = batch_tables(shape, orders, cfg.extents, device)
        patches = to_patches(tokens.long(), cfg.patch_size).reshape(-1, cfg.tokens_per_patch)  # [R, n]
        text_ctx = self.encode_text(text, B, device)
        rotation = self.token_rotation(shape, device)
        if rotation is not None:  # every example has the same canvas: rows are (example, patch)
            rotation = tuple(r.repeat(B, 1, 1) for r in rotation)
        layout = ParallelLayout(tables, O.own_offset_id(cfg.extents), self.attention_backend(device),
                                *(text_ctx or (None, None)), rotation=rotation)
        top = self.patch_rows(rows, B, device)
        patch_rows = None if top is None else top[tables.batch] + tables.row  # [R] absolute patch rows
        context = patches
        if self.training and cfg.context_noise > 0:  # the context of other patches only, never the own decoding
            wrong = torch.rand(patches.shape, device=device) < cfg.context_noise
            context = torch.where(wrong, torch.randint_like(patches, cfg.vocab_size), patches)
        layout.global_states = self.global_model(context, layout, patch_rows)
        order_id = torch.tensor([O.ORDERS.index(o) for o in orders], device=device)[tables.batch]
        h = self.local_model(patches, order_id, tables.frame, layout, patch_rows)  # [R, n, d_local]
        loss, logits = self.head(h.reshape(-1, h.shape[-1]), patches.reshape(-1) if return_loss else None,
                                 return_logits)
        if logits is not None:
            logits = from_patches(logits.view(B, -1, cfg.tokens_per_patch, cfg.vocab_size), (T, H, W),
                                  cfg.patch_size)
        return NuwaOutput(loss, logits)

    # -- generation (implemented in generation.py over the rotating pool) --------------------------

    @torch.no_grad()
    def teacher_forced_decode(self, tokens: torch.Tensor, order: str = "down", text=None,
                              wavefront: bool = False, rows=None) -> torch.Tensor:
        """Logits [B, T, H, W, K] of the ground-truth tokens fed through the pooled, token-by-token
        generation path; equals ``forward(tokens).logits`` (the invariant of docs/design.md,
        "3. Training in parallel")."""
        self.check_tokens(tokens)
        mask = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        result = run_generation(self, tuple(tokens.shape[1:]), order, tokens.shape[0], prompt=tokens,
                                prompt_mask=mask, text=text, config=GenerationConfig(wavefront=wavefront),
                                return_logits=True, rows=rows)
        return result.logits

    @torch.no_grad()
    def generate(self, shape, order: str = "down", batch_size: int = 1, prompt=None, prompt_mask=None, text=None,
                 config=None, progress=None, rows=None, return_result: bool = False):
        """Sample a token canvas [B, T, H, W] of ``shape`` (T, H, W) tokens through the rotating pool.
        ``prompt`` tokens are kept (not sampled) where ``prompt_mask`` is true; ``rows`` (models with
        ``row_embedding``): the patch row of the canvas top in the training pictures' frame (default 0).
        With ``return_result`` the ``GenerationResult`` (tokens and the pool's statistics), else the tokens."""
        result = run_generation(self, shape, order, batch_size, prompt=prompt, prompt_mask=prompt_mask, text=text,
                                config=config or GenerationConfig(), progress=progress, rows=rows)
        return result if return_result else result.tokens

    # -- persistence --------------------------------------------------------------------------------

    def save_pretrained(self, directory, dtype: Optional[torch.dtype] = None):
        persistence.save_pretrained(self, directory, dtype)

    @classmethod
    def from_pretrained(cls, directory, device="cpu", dtype: Optional[torch.dtype] = None) -> "NuwaInfinity":
        return persistence.load_pretrained(cls, directory, device, dtype)

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        total = 0
        for name, p in self.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            if exclude_embeddings and name.endswith(("embed.weight",)):
                continue
            total += p.numel()
        return total

