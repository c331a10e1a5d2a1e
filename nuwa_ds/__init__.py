"""nuwa_ds: NUWA-Infinity (autoregressive over autoregressive generation of large images and long
videos) as a DeepSpeed training system. Public interface: DESIGN section 9."""

from nuwa_ds.config import ConfigError, DataConfig, NuwaConfig, RunConfig, TrainConfig
from nuwa_ds.model import GenerationConfig, NuwaInfinity

__version__ = "0.1.0"
__all__ = ["NuwaConfig", "RunConfig", "DataConfig", "TrainConfig", "ConfigError", "NuwaInfinity",
           "GenerationConfig", "__version__"]
