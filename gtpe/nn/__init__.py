"""Neural-network modules: GPS layer, local message passing, global attention, encoders.

* :class:`GPSLayer` (``gps.py``) -- local MPNN + global attention + MLP (GraphGPS);
* :class:`GINE`, :class:`DirGINE`, :class:`GatedGCN` (``local.py``) -- lean local message
  passing (:class:`DirGINE`: in- and out-edges of directed graphs with separate weights);
* :class:`FullAttention`, :class:`LinearAttention`, :class:`ExphormerAttention`,
  :class:`GRITAttention`, :class:`GTAttention` (``attention/``);
* PE and feature encoders (``encoders/``);
* :class:`TransformerLayer` (``transformer.py``) -- a plain pre-LN Transformer encoder layer;
  :class:`GraphTokenizer`, :class:`LapNodeIdentifier`, :class:`ORFNodeIdentifier`,
  :func:`orthonormal_random_features` (``tokengt.py``) -- TokenGT's node and edge tokens.
"""

from gtpe.nn.attention import (
    CentralityEncoding,
    ExphormerAttention,
    FullAttention,
    GRITAttention,
    GraphormerAttention,
    GraphormerBias,
    GraphormerEdgeEncoding,
    GTAttention,
    LinearAttention,
)
from gtpe.nn.encoders import (
    EmbeddingEncoder,
    LapPEEncoder,
    LinearEncoder,
    MagLapPEEncoder,
    OGBAtomEncoder,
    OGBBondEncoder,
    RRWPEncoder,
    RWSEEncoder,
    SignNetEncoder,
    SinusoidEncoder,
)
from gtpe.nn.gps import GPSLayer
from gtpe.nn.local import GINE, DirGINE, GatedGCN
from gtpe.nn.tokengt import (
    GraphTokenizer,
    LapNodeIdentifier,
    ORFNodeIdentifier,
    orthonormal_random_features,
)
from gtpe.nn.transformer import TransformerLayer

__all__ = [
    "GINE",
    "DirGINE",
    "EmbeddingEncoder",
    "CentralityEncoding",
    "ExphormerAttention",
    "FullAttention",
    "GPSLayer",
    "GRITAttention",
    "GTAttention",
    "GraphormerAttention",
    "GraphormerBias",
    "GraphormerEdgeEncoding",
    "GatedGCN",
    "GraphTokenizer",
    "LapNodeIdentifier",
    "LapPEEncoder",
    "LinearAttention",
    "LinearEncoder",
    "MagLapPEEncoder",
    "ORFNodeIdentifier",
    "OGBAtomEncoder",
    "OGBBondEncoder",
    "RRWPEncoder",
    "RWSEEncoder",
    "SignNetEncoder",
    "SinusoidEncoder",
    "TransformerLayer",
    "orthonormal_random_features",
]
