"""FLOP accounting for MFU (the convention of docs/design.md, "8. Training system").

Training FLOPs per token = 6 * N_matmul + 12 * sum over layers of (d * S_attended), where N_matmul
counts the parameters used in matrix products per token (blocks, local context projections, the
vocabulary head; not embedding lookups or the frozen text encoder) and S_attended is the average
number of keys a query attends to, counting only the blocks actually attended (each whole, as for
a causal LM in the PaLM convention): own block + context blocks + text tokens.
"""

from __future__ import annotations

from nuwa_ds.model import orders as O

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM, the MFU denominator
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def matmul_params(cfg) -> int:
    """Parameters entering a matmul for every token (per token of both stacks)."""
    def block(d):
        hidden = int(round(d * cfg.mlp_ratio / 64)) * 64 or int(d * cfg.mlp_ratio)
        return 3 * d * d + d * d + 2 * d * hidden

    g = cfg.n_global_layers * block(cfg.d_global)
    loc = cfg.n_local_layers * (block(cfg.d_local) + 2 * cfg.d_global * cfg.d_local)
    return g + loc + cfg.vocab_size * cfg.d_local


def attended_keys(cfg, token_canvas, order: str, text_len: int = 0) -> float:
    """Average keys per query (own block + context blocks + text) for one canvas and order."""
    T, H, W = token_canvas
    P = cfg.patch_size
    table = O.context_table((T, H // P, W // P), order, cfg.extents)
    n = cfg.tokens_per_patch
    blocks = (table.ctx_index >= 0).sum(1).float().mean().item() + 1.0
    return blocks * n + text_len


def train_flops_per_token(cfg, token_canvas, order: str = "down", text_len: int = 0) -> float:
    S = attended_keys(cfg, token_canvas, order, text_len)
    attn = 12 * S * (cfg.n_global_layers * cfg.d_global + cfg.n_local_layers * cfg.d_local)
    return 6 * matmul_params(cfg) + attn


def peak_flops(device_name: str) -> float:
    """Dense bf16 peak of a known GPU by name (H100 if unknown, stated in every report)."""
    for key, value in PEAK_FLOPS.items():
        if key in device_name:
            return value
    return H100_BF16_PEAK
