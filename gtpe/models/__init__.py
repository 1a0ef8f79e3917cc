"""Models assembled from :mod:`gtpe.nn` layers, built from config dataclasses."""

from gtpe.models.config import (
    ConfigError,
    ExpanderConfig,
    GPSModelConfig,
    LapPEConfig,
    MagLapPEConfig,
    PEConfig,
    RRWPConfig,
    SPDConfig,
    RWSEConfig,
)
from gtpe.models.gps_model import GPSModel

__all__ = [
    "ConfigError",
    "ExpanderConfig",
    "GPSModel",
    "GPSModelConfig",
    "LapPEConfig",
    "MagLapPEConfig",
    "PEConfig",
    "RRWPConfig",
    "SPDConfig",
    "RWSEConfig",
]
