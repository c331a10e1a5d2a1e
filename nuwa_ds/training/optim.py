"""AdamW parameter groups and the warm-up + cosine schedule.

Weight decay applies to the matrices of linear maps only (``nn.Linear`` weights and the vocabulary
head); norms, biases, token embeddings and the learned position / order / frame / offset tables are
excluded, since decaying them pulls representations toward zero without regularising capacity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from nuwa_ds.model.layers import LMHead


def _is_linear_matrix(module: nn.Module, name: str) -> bool:
    return name == "weight" and isinstance(module, (nn.Linear, LMHead))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices and the rest. A tied parameter
    (e.g. an embedding shared with the output projection) is listed once, decayed if any use is linear."""
    matrices = {id(param) for module in model.modules() for name, param in module.named_parameters(recurse=False)
                if _is_linear_matrix(module, name)}
    decay, no_decay = [], []
    for param in model.parameters():  # each parameter once, even when tied
        if param.requires_grad:
            (decay if id(param) in matrices else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict], train, device: torch.device) -> torch.optim.Optimizer:
    """torch AdamW: no JIT build anywhere; the fused kernel on CUDA, foreach on CPU."""
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.adam_eps,
                             fused=device.type == "cuda")


def lr_factor(step: int, train) -> float:
    """Multiplier of train.lr for optimizer step ``step`` (0-based): linear warm-up, cosine to min_lr_ratio."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(optimizer: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR: DeepSpeed steps it only when an update is applied and saves its state."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
