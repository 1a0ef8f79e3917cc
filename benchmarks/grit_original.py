r"""A minimal port of the official GRIT layer, for timing gtpe against it.

Ma et al., "Graph Inductive Biases in Transformers without Message Passing" (ICML 2023);
official code github.com/LiamMa/GRIT, ``grit/layer/grit_layer.py``
(``MultiHeadAttentionLayerGritSparse``, ``GritTransformerLayer``) with the ZINC configuration
(``configs/GRIT/zinc-GRIT-RRWP.yaml``: ReLU, clamp 5, ``edge_enhance``, ``O_e``, ``norm_e``,
``update_e``, degree scaler, batch norm).  Written anew for current PyG/torch with the same
math and the same sequence of tensor operations (``torch_scatter`` scatters and the file's
``pyg_softmax`` through ``torch_geometric.utils.scatter`` / ``softmax``; ``opt_einsum``
contractions as ``torch.einsum``).  For a pair :math:`j \to i` (``edge_index[0]`` the key,
``edge_index[1]`` the query), per head:

.. math::
    \hat e_{ij} = \mathrm{ReLU}\big(\rho((Q_i + K_j) \odot E^w_{ij}) + E^b_{ij}\big),\quad
    \alpha_{ij} = \operatorname{softmax}_j(\operatorname{clamp}(\hat e_{ij} A, \pm 5)),\quad
    \hat x_i = \textstyle\sum_j \alpha_{ij} V_j + (\sum_j \alpha_{ij} \hat e_{ij}) W_{Ev},

then the layer: degree scaler :math:`\hat x \theta_1 + \log(1 + d)\,\hat x \theta_2`,
:math:`O_h`, residual, BatchNorm, FFN with residual and BatchNorm for the nodes, and
:math:`e' = \mathrm{BN}_e(e + O_e\, \mathrm{Dropout}(\hat e))` for the pairs.

gtpe's ``GPSLayer(local=None, attn='grit')`` computes the same (tests/test_original_ports.py:
equal outputs and gradients at copied weights; with dropout, equal masks in the same places
for the node, pair and FFN dropouts); gtpe's ``GPSModel`` skips the last layer's pair update,
which the official model computes and discards.

The official pipeline builds the pairs with ``RRWPLinearEdgeEncoder`` (``torch_sparse``
coalesce and a per-graph Python loop for the full-graph padding); that is an encoder, outside
the layer, and the timed models here share gtpe's ``RRWPEncoder`` pairs instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, Linear, Parameter
from torch_geometric.utils import scatter, softmax


class OrigGritAttention(torch.nn.Module):
    """The official ``MultiHeadAttentionLayerGritSparse`` (act ReLU, ``edge_enhance``).

    ``forward(x [N, C], edge_index [2, M], edge_attr [M, C])`` returns
    ``(wV [N, H, D], wE [M, C])``.
    """

    def __init__(self, dim: int, heads: int, use_bias: bool = False, clamp: float = 5.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        D = dim // heads
        self.heads, self.head_dim = heads, D
        self.clamp = abs(clamp)
        self.dropout = torch.nn.Dropout(dropout)
        self.Q = Linear(dim, D * heads, bias=True)
        self.K = Linear(dim, D * heads, bias=use_bias)
        self.E = Linear(dim, D * heads * 2, bias=True)
        self.V = Linear(dim, D * heads, bias=use_bias)
        for lin in (self.Q, self.K, self.E, self.V):
            torch.nn.init.xavier_normal_(lin.weight)
        self.Aw = Parameter(torch.zeros(D, heads, 1))
        torch.nn.init.xavier_normal_(self.Aw)
        self.VeRow = Parameter(torch.zeros(D, heads, D))
        torch.nn.init.xavier_normal_(self.VeRow)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        H, D = self.heads, self.head_dim
        Q_h = self.Q(x).view(-1, H, D)
        K_h = self.K(x).view(-1, H, D)
        V_h = self.V(x).view(-1, H, D)
        E = self.E(edge_attr).view(-1, H, 2 * D)
        # propagate_attention, op for op
        src = K_h[edge_index[0]]
        dest = Q_h[edge_index[1]]
        score = src + dest
        E_w, E_b = E[:, :, :D], E[:, :, D:]
        score = score * E_w
        score = torch.sqrt(torch.relu(score)) - torch.sqrt(torch.relu(-score))
        score = score + E_b
        score = torch.relu(score)
        e_t = score
        wE = score.flatten(1)
        score = torch.einsum("ehd,dhc->ehc", score, self.Aw)
        score = torch.clamp(score, min=-self.clamp, max=self.clamp)
        score = softmax(score, edge_index[1], num_nodes=x.size(0), dim=0)  # [M, H, 1]
        score = self.dropout(score)
        msg = V_h[edge_index[0]] * score
        wV = scatter(msg, edge_index[1], dim=0, dim_size=x.size(0), reduce="sum")
        rowV = scatter(e_t * score, edge_index[1], dim=0, dim_size=x.size(0), reduce="sum")
        rowV = torch.einsum("nhd,dhc->nhc", rowV, self.VeRow)
        return wV + rowV, wE


class OrigGritLayer(torch.nn.Module):
    """The official ``GritTransformerLayer`` (batch norm, residual, ``O_e``, ``norm_e``).

    ``forward(x, edge_index, edge_attr, log_deg [N, 1])`` returns ``(x_out, e_out)``.
    ``update_e=False`` (the official option) returns the input pairs, after computing the
    updated ones as the official layer does.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, attn_dropout: float = 0.0,
                 update_e: bool = True) -> None:
        super().__init__()
        self.dropout = dropout
        self.update_e = update_e
        self.attention = OrigGritAttention(dim, heads, dropout=attn_dropout)
        self.O_h = Linear(dim, dim)
        self.O_e = Linear(dim, dim)
        self.deg_coef = Parameter(torch.zeros(1, dim, 2))
        torch.nn.init.xavier_normal_(self.deg_coef)
        self.batch_norm1_h = BatchNorm1d(dim)
        self.batch_norm1_e = BatchNorm1d(dim)
        self.FFN_h_layer1 = Linear(dim, 2 * dim)
        self.FFN_h_layer2 = Linear(2 * dim, dim)
        self.batch_norm2_h = BatchNorm1d(dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                log_deg: Tensor) -> tuple[Tensor, Tensor]:
        num_nodes = x.size(0)
        h_in1, e_in1 = x, edge_attr
        h_attn, e_attn = self.attention(x, edge_index, edge_attr)
        h = h_attn.view(num_nodes, -1)
        h = F.dropout(h, self.dropout, training=self.training)
        h = torch.stack([h, h * log_deg], dim=-1)
        h = (h * self.deg_coef).sum(dim=-1)
        h = self.O_h(h)
        e = F.dropout(e_attn.flatten(1), self.dropout, training=self.training)
        e = self.O_e(e)
        h = h_in1 + h
        e = e + e_in1
        h = self.batch_norm1_h(h)
        e = self.batch_norm1_e(e)
        h_in2 = h
        h = self.FFN_h_layer1(h)
        h = F.relu(h)
        h = F.dropout(h, self.dropout, training=self.training)
        h = self.FFN_h_layer2(h)
        h = self.batch_norm2_h(h_in2 + h)
        return h, (e if self.update_e else e_in1)


class OrigGritModel(torch.nn.Module):
    """A stack of :class:`OrigGritLayer` behind ``encoder`` (``encoder(data)`` returns a dict
    with ``x [N, C]``, ``pair_index [2, M]``, ``pair_attr [M, C]``, as gtpe's
    ``GPSModel.encode``), with mean pooling and ``head``.  The degree is the out-degree of
    ``data.edge_index`` (the official RRWP transform's ``deg``, row sums of A).  Every layer
    updates the pairs, the last one too (unused, as in the official model)."""

    def __init__(self, encoder, head: torch.nn.Module, dim: int, layers: int,
                 heads: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.layers = torch.nn.ModuleList([OrigGritLayer(dim, heads) for _ in range(layers)])

    def forward(self, data) -> Tensor:
        kw = self.encoder(data)
        x, pair_index, pair_attr = kw["x"], kw["pair_index"], kw["pair_attr"]
        n = x.size(0)
        deg = scatter(torch.ones_like(data.edge_index[0], dtype=x.dtype), data.edge_index[0],
                      dim=0, dim_size=n, reduce="sum")
        log_deg = torch.log(deg + 1).view(n, 1)
        for layer in self.layers:
            x, pair_attr = layer(x, pair_index, pair_attr, log_deg)
        num_graphs = int(data.num_graphs)
        pooled = scatter(x, data.batch, dim=0, dim_size=num_graphs, reduce="mean")
        return self.head(pooled)
