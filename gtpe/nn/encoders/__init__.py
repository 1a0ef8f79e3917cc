"""Positional/structural-encoding encoders and input feature encoders.

In :class:`gtpe.models.GPSModel` (as in GraphGPS) the node input encoder produces
``channels - sum(pe dims)`` features and the outputs of :class:`LapPEEncoder` (DeepSet,
Transformer or :class:`SignNetEncoder`), :class:`MagLapPEEncoder` and :class:`RWSEEncoder`
(``dim`` each) are concatenated to it, giving ``channels``; :class:`RRWPEncoder` instead *adds*
its ``channels``-dim node term (as GRIT).
"""

from .features import (
    EmbeddingEncoder,
    LinearEncoder,
    MultiEmbeddingEncoder,
    OGBAtomEncoder,
    OGBBondEncoder,
    SinusoidEncoder,
)
from .lap import EigenSetEncoder, LapPEEncoder
from .maglap import MagLapPEEncoder
from .rrwp import RRWPEncoder
from .rwse import RWSEEncoder
from .signnet import SignNetEncoder

__all__ = [
    "EigenSetEncoder",
    "EmbeddingEncoder",
    "LapPEEncoder",
    "LinearEncoder",
    "MagLapPEEncoder",
    "MultiEmbeddingEncoder",
    "OGBAtomEncoder",
    "OGBBondEncoder",
    "RRWPEncoder",
    "RWSEEncoder",
    "SignNetEncoder",
    "SinusoidEncoder",
]
