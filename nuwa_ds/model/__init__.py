"""The NUWA-Infinity model (PyTorch only; no DeepSpeed here)."""

from nuwa_ds.model.generation import GenerationConfig, GenerationResult
from nuwa_ds.model.nuwa import NuwaInfinity, NuwaOutput
from nuwa_ds.model.orders import ORDERS, ContextTable, context_table

__all__ = ["NuwaInfinity", "NuwaOutput", "GenerationConfig", "GenerationResult", "ORDERS", "ContextTable",
           "context_table"]
