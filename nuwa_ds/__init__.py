"""nuwa_ds: NUWA-Infinity (autoregressive over autoregressive generation of large images and long
videos) as a DeepSpeed training system. Public interface: docs/design.md,
"9. Interfaces and the model directory"."""

from nuwa_ds.config import ConfigError, DataConfig, NuwaConfig, RunConfig, TrainConfig

__version__ = "0.1.0"
__all__ = ["NuwaConfig", "RunConfig", "DataConfig", "TrainConfig", "ConfigError", "NuwaInfinity",
           "GenerationConfig", "__version__"]


def __getattr__(name: str):
    # the model (and torch) on first use, so that ``nuwa-ds`` starts without torch: ``nuwa-ds train``
    # blocks its stop signals before any library starts a thread (nuwa_ds.preemption)
    if name in ("GenerationConfig", "NuwaInfinity"):
        from nuwa_ds import model

        return getattr(model, name)
    raise AttributeError(f"module 'nuwa_ds' has no attribute {name!r}")
