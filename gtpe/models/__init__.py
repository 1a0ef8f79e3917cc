"""Models assembled from :mod:`gtpe.nn` layers, built from config dataclasses.

:func:`model_class` picks the class of a config: :class:`GPSModel` (``arch='gps'``) or
:class:`TokenGTModel` (``arch='tokengt'``); both take the same constructor arguments.
"""

from gtpe.models.config import (
    ConfigError,
    ExpanderConfig,
    GPSModelConfig,
    LapPEConfig,
    MagLapPEConfig,
    ORFConfig,
    PEConfig,
    RRWPConfig,
    SPDConfig,
    RWSEConfig,
)
from gtpe.models.gps_model import GPSModel
from gtpe.models.tokengt_model import TokenGTModel


def model_class(config: GPSModelConfig) -> type[GPSModel] | type[TokenGTModel]:
    """The model class of ``config``: :class:`GPSModel` for ``arch='gps'``,
    :class:`TokenGTModel` for ``arch='tokengt'`` (same constructor arguments)."""
    if config.arch == "tokengt":
        return TokenGTModel
    if config.arch == "gps":
        return GPSModel
    raise ConfigError(f"model_class: unknown arch {config.arch!r}")

__all__ = [
    "ConfigError",
    "ExpanderConfig",
    "GPSModel",
    "GPSModelConfig",
    "LapPEConfig",
    "MagLapPEConfig",
    "ORFConfig",
    "PEConfig",
    "RRWPConfig",
    "SPDConfig",
    "RWSEConfig",
    "TokenGTModel",
    "model_class",
]
