r"""GT: attention restricted to the graph's edges, with edge features (Graph Transformer).

Dwivedi & Bresson, `"A Generalization of Transformer Networks to Graphs"
<https://arxiv.org/abs/2012.09699>`_ (AAAI 2021 DLG workshop), the layer with edge features.
For an edge :math:`j \to i` of the given edge set and a head :math:`h` with :math:`d = C/H`
channels:

.. math::
    \hat{\mathbf{w}}_{ij} &= \frac{Q_h\mathbf{x}_i \odot K_h\mathbf{x}_j}{\sqrt{d}} \odot
        E_h\mathbf{e}_{ij} \;\in\mathbb{R}^d, \qquad
    s_{ij} = \operatorname{clamp}\Big(\textstyle\sum_{k=1}^{d} \hat{w}_{ij,k},\, -c,\, c\Big) \\
    \alpha_{ij} &= \operatorname{softmax}_{j:\,(j\to i)\in\mathcal{E}}(s_{ij}), \qquad
    \mathbf{x}'_i = O_h \big\Vert_h \textstyle\sum_j \alpha_{ij}\, V_h\mathbf{x}_j,

with :math:`c = 5` as in the paper's code (``clamp=None`` leaves the scores unclamped).  The
softmax is the max-stabilised segment softmax of :mod:`gtpe.nn.ops` (CPU and GPU); the paper's
code divides by :math:`\sum_j e^{s_{ij}} + 10^{-6}` instead, a relative difference below
:math:`1.5\cdot10^{-4}` with the clamp.  A node without incoming edges receives no message: its
aggregate is 0, so its output is :math:`O_h(\mathbf{0})`, the bias of ``out_proj``.

With ``update_edges=True`` the layer also returns the paper's updated edge features, from the
pre-softmax score vectors :math:`\hat{\mathbf{w}}_{ij}` (all heads concatenated):

.. math::
    \mathbf{e}'_{ij} = \mathrm{Norm}\big(\mathbf{e}_{ij} + O_e\,\mathrm{Dropout}
        (\Vert_h \hat{\mathbf{w}}_{ij})\big), \qquad
    \mathbf{e}''_{ij} = \mathrm{Norm}\big(\mathbf{e}'_{ij} + \mathrm{FFN}_e(\mathbf{e}'_{ij})\big),

with :math:`\mathrm{FFN}_e = \mathrm{Linear}(C, 2C) \to \mathrm{ReLU} \to \mathrm{Dropout} \to
\mathrm{Linear}(2C, C)`.  The node side's residual, norms and FFN are
:class:`~gtpe.nn.GPSLayer`'s (``GPSLayer(C, local=None, attn='gt')`` is the paper's layer).
Without ``edge_dim`` there is no :math:`E_h\mathbf{e}_{ij}` factor (the paper's layer without
edge features).

Edges are used as given (``edge_index[0]`` = source :math:`j`, ``edge_index[1]`` = target
:math:`i`); pass both directions for undirected graphs.  Time and memory :math:`O(|\mathcal{E}|
C)`; nodes of different graphs of a batch never interact (there is no edge between them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Parameter, ReLU, Sequential

from gtpe.nn.ops import (
    make_norm,
    check_heads,
    check_index_shape,
    edge_aggregate,
    edge_attr_error,
    edge_dot,
    scatter_softmax,
)

__all__ = ["GTAttention"]

_NORMS = ("batch", "layer", None)


def _edge_norm(norm: str | None, channels: int) -> torch.nn.Module | None:
    return make_norm(
        norm, channels, f"GTAttention: unknown edge_norm {norm!r}; expected one of {_NORMS}"
    )


class GTAttention(torch.nn.Module):
    r"""Graph Transformer attention over the graph's edges (Dwivedi & Bresson, 2020).

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads (must divide ``channels``).
        dropout (float): dropout on the attention weights :math:`\alpha_{ij}`.
        edge_dim (int, optional): size of ``edge_attr``; if given, the scores are multiplied
            by :math:`E_h\mathbf{e}_{ij}` (``edge_proj``) and ``edge_attr`` is required.
        update_edges (bool): also compute the updated edge features :math:`\mathbf{e}''`
            (needs ``edge_dim == channels`` for the residual).
        edge_norm (str, optional): ``'batch'``, ``'layer'`` or ``None``: the two norms of the
            edge update.
        edge_dropout (float): dropout in the edge update (on :math:`\hat{\mathbf{w}}` and in
            :math:`\mathrm{FFN}_e`).
        clamp (float, optional): clamp the scores to :math:`[-c, c]` before the softmax
            (default 5, as the paper's code); ``None``: no clamp.
        bias (bool): biases in the :math:`Q, K, V, E` projections (the paper's code has none;
            ``out_proj`` and the edge update always have biases).

    ``forward(x, edge_index, edge_attr=None)`` returns ``(x_out [N, C], e_out [E, C])``,
    ``e_out`` being ``None`` unless ``update_edges``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        dropout: float = 0.0,
        edge_dim: int | None = None,
        update_edges: bool = False,
        edge_norm: str | None = "batch",
        edge_dropout: float = 0.0,
        clamp: float | None = 5.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        channels, heads = check_heads("GTAttention", channels, heads)
        for name, p in (("dropout", dropout), ("edge_dropout", edge_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"GTAttention: {name} must be in [0, 1), got {p}")
        if edge_dim is not None and (
            isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim <= 0
        ):
            raise ValueError(f"GTAttention: edge_dim must be a positive int or None, got {edge_dim!r}")
        if update_edges and edge_dim != channels:
            raise ValueError(
                f"GTAttention: update_edges=True needs edge features of size channels="
                f"{channels} (edge_dim={channels}), got edge_dim={edge_dim}"
            )
        if clamp is not None and not (
            isinstance(clamp, (int, float)) and not isinstance(clamp, bool) and 0 < clamp < math.inf
        ):
            raise ValueError(f"GTAttention: clamp must be a positive number or None, got {clamp!r}")
        if edge_norm not in ("batch", "batch_norm", "layer", "layer_norm", None):
            raise ValueError(f"GTAttention: unknown edge_norm {edge_norm!r}; expected one of {_NORMS}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.dropout = float(dropout)
        self.edge_dim = edge_dim
        self.update_edges = bool(update_edges)
        self.edge_dropout = float(edge_dropout)
        self.clamp = None if clamp is None else float(clamp)
        self.in_proj_weight = Parameter(torch.empty(3 * channels, channels))  # Q, K, V
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * channels))
        else:
            self.register_parameter("in_proj_bias", None)
        self.edge_proj = Linear(edge_dim, channels, bias=bias) if edge_dim is not None else None
        self.out_proj = Linear(channels, channels)  # O_h
        if self.update_edges:
            self.edge_out_proj = Linear(channels, channels)  # O_e
            self.edge_mlp = Sequential(
                Linear(channels, 2 * channels), ReLU(), Dropout(edge_dropout),
                Linear(2 * channels, channels),
            )
            self.edge_norm1 = _edge_norm(edge_norm, channels)
            self.edge_norm2 = _edge_norm(edge_norm, channels)
        else:
            self.edge_out_proj = self.edge_mlp = self.edge_norm1 = self.edge_norm2 = None
        self.edge_norm = edge_norm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
        for m in (self.edge_proj, self.out_proj, self.edge_out_proj, self.edge_norm1,
                  self.edge_norm2):
            if m is not None:
                m.reset_parameters()
        if self.edge_mlp is not None:
            self.edge_mlp[0].reset_parameters()
            self.edge_mlp[3].reset_parameters()

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        C, H, D = self.channels, self.heads, self.head_dim
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != C or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"GTAttention: expected x as a float tensor [N, {C}], got {got}")
        N = x.size(0)
        check_index_shape("GTAttention", "edge_index", edge_index)
        if self.edge_proj is not None:
            if edge_attr is None:
                raise ValueError("GTAttention: edge_dim was given, so edge_attr is required")
            err = edge_attr_error(
                "GTAttention", edge_attr, edge_index.size(1), self.edge_dim, "edge_dim", False
            )
            if err is not None:
                raise ValueError(err)
        elif edge_attr is not None:
            raise ValueError("GTAttention: got edge_attr but the module was built with edge_dim=None")

        src, dst = edge_index[0], edge_index[1]
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(N, 3, H, D).unbind(1)
        scale = 1.0 / math.sqrt(D)
        e = self.edge_proj(edge_attr).view(-1, H, D) if self.edge_proj is not None else None
        w_hat: Tensor | None = None
        if self.update_edges:  # the score vectors are an output: form them once, [E, H, D]
            assert e is not None
            w_hat = q.index_select(0, dst) * k.index_select(0, src) * e * scale
            s = w_hat.sum(-1)  # [E, H]
        else:  # memory-lean fused path: no [E, H, D] tensor kept for the backward pass
            s = edge_dot(q, k, dst, src, e) * scale
        if self.clamp is not None:
            s = s.clamp(-self.clamp, self.clamp)
        alpha = scatter_softmax(s, dst, N)  # over the incoming edges of each node
        if self.dropout > 0 and self.training:
            alpha = F.dropout(alpha, p=self.dropout, training=True)
        out = self.out_proj(edge_aggregate(v, alpha, src, dst, N).reshape(N, C))
        if w_hat is None:
            return out, None

        assert edge_attr is not None and self.edge_out_proj is not None and self.edge_mlp is not None
        p = self.edge_dropout if self.training else 0.0
        h = w_hat.reshape(-1, C)
        if p > 0:
            h = F.dropout(h, p=p, training=True)
        e1 = edge_attr + self.edge_out_proj(h)
        if self.edge_norm1 is not None:
            e1 = self.edge_norm1(e1)
        e2 = e1 + self.edge_mlp(e1)
        if self.edge_norm2 is not None:
            e2 = self.edge_norm2(e2)
        return out, e2

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.dropout}, edge_dim={self.edge_dim}, "
            f"update_edges={self.update_edges}, clamp={self.clamp})"
        )
