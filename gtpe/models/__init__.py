"""Models assembled from :mod:`gtpe.nn` layers, built from config dataclasses.

:func:`model_class` picks the class of a config: :class:`GPSModel` (``arch='gps'``) or
:class:`TokenGTModel` (``arch='tokengt'``); both take the same constructor arguments.
"""

import torch

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


def model_class(config: GPSModelConfig) -> type[torch.nn.Module]:
    """The model class of ``config.arch`` (all take the same constructor arguments):
    :class:`GPSModel` (``gps``), :class:`TokenGTModel` (``tokengt``),
    :class:`~gtpe.models.sgformer_model.SGFormerModel` (``sgformer``),
    :class:`~gtpe.models.polynormer_model.PolynormerModel` (``polynormer``),
    :class:`~gtpe.models.largegt_model.LargeGTModel` (``largegt``),
    :class:`~gtpe.models.pyg_gps_model.PyGGPSModel` (``pyg-gps``). The last four are imported
    when asked for; each has ``check_config(config)`` for its ``arch_options``."""
    if config.arch == "gps":
        return GPSModel
    if config.arch == "tokengt":
        return TokenGTModel
    if config.arch == "sgformer":
        from gtpe.models.sgformer_model import SGFormerModel

        return SGFormerModel
    if config.arch == "polynormer":
        from gtpe.models.polynormer_model import PolynormerModel

        return PolynormerModel
    if config.arch == "largegt":
        from gtpe.models.largegt_model import LargeGTModel

        return LargeGTModel
    if config.arch == "pyg-gps":
        from gtpe.models.pyg_gps_model import PyGGPSModel

        return PyGGPSModel
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
