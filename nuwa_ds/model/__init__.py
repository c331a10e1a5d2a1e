"""The NUWA-Infinity model (PyTorch only; no DeepSpeed here, nothing of ``nuwa_ds`` above it).

Inside, bottom to top (docs/design.md, "11. Layers"): ``geometry`` and ``config`` (no torch); ``orders``;
``rope``, ``attention``, ``layers``, ``text``, ``flops``; ``generation`` and ``persistence``; ``nuwa``
(the ``NuwaInfinity`` module, whose ``generate`` / ``save_pretrained`` delegate downwards).
"""

__all__ = ["NuwaInfinity", "NuwaOutput", "GenerationConfig", "GenerationResult", "ORDERS", "ContextTable",
           "context_table"]


def __getattr__(name: str):
    # the classes (and torch) on first use: `nuwa_ds.config` imports `nuwa_ds.model.config` through this
    # package, and `nuwa-ds train` blocks its stop signals before torch starts threads (docs/decisions.md,
    # "Stop signals")
    if name in ("NuwaInfinity", "NuwaOutput"):
        from nuwa_ds.model import nuwa as module
    elif name in ("GenerationConfig", "GenerationResult"):
        from nuwa_ds.model import generation as module
    elif name in ("ORDERS", "ContextTable", "context_table"):
        from nuwa_ds.model import orders as module
    else:
        raise AttributeError(f"module 'nuwa_ds.model' has no attribute {name!r}")
    return getattr(module, name)
