"""Global attention modules for GPS-style graph transformers (all operate on PyG mini-batches).

* :class:`FullAttention`        exact softmax attention within each graph (Vaswani et al. 2017)
* :class:`LinearAttention`      Performer FAVOR+ (Choromanski et al. 2021), O(N) per graph
* :class:`ExphormerAttention`   local + expander + virtual-node sparse attention (Shirzad+ 2023)
* :class:`GRITAttention`        GRIT pair attention with degree injection (Ma et al. 2023)
* :class:`GTAttention`          GT: attention over the graph's edges with edge features
                                 (Dwivedi & Bresson 2020)
* :class:`GraphormerAttention`  full attention + Graphormer's spatial (shortest-path) bias
                                 (Ying et al. 2021); :class:`GraphormerBias`,
                                 :class:`GraphormerEdgeEncoding` (edge encoding along
                                 shortest paths), :class:`CentralityEncoding`
* :class:`SGFormerAttention`    SGFormer's simple global attention (Wu et al. 2023), O(N) per graph
* :class:`PolynormerAttention`  Polynormer's sigmoid-kernel global attention (Deng et al. 2024);
                                 :class:`PolynormerLocal` its local gated GAT layer
"""

from gtpe.nn.attention.exphormer import ExphormerAttention
from gtpe.nn.attention.full import FullAttention
from gtpe.nn.attention.graphormer import (
    CentralityEncoding,
    GraphormerAttention,
    GraphormerBias,
    GraphormerEdgeEncoding,
)
from gtpe.nn.attention.grit import GRITAttention
from gtpe.nn.attention.gt import GTAttention
from gtpe.nn.attention.linear import LinearAttention
from gtpe.nn.attention.polynormer import PolynormerAttention, PolynormerLocal
from gtpe.nn.attention.sgformer import SGFormerAttention

__all__ = [
    "CentralityEncoding",
    "ExphormerAttention",
    "FullAttention",
    "GRITAttention",
    "GTAttention",
    "GraphormerAttention",
    "GraphormerBias",
    "GraphormerEdgeEncoding",
    "LinearAttention",
    "PolynormerAttention",
    "PolynormerLocal",
    "SGFormerAttention",
]
