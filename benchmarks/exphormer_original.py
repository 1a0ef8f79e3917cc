r"""A minimal port of the official Exphormer layers, for timing gtpe against them.

Shirzad et al., "Exphormer: Sparse Transformers for Graphs" (ICML 2023); official code
github.com/hamed1375/Exphormer: ``graphgps/layer/Exphormer.py`` (``ExphormerAttention``),
``graphgps/encoder/exp_edge_fixer.py`` (``ExpanderEdgeFixer``) and
``graphgps/layer/multi_model_layer.py`` (``LocalModel`` / ``GlobalModel`` / ``MultiLayer``,
the GINE + Exphormer block of its configs).  Written anew for current PyG/torch with the same
math and the same sequence of tensor operations (scatters through ``torch_geometric.utils``
instead of ``torch_scatter``).  For an edge :math:`j \to i` of the joint edge set (graph edges,
expander edges, virtual-node edges), per head:

.. math::
    w_{ij} = \exp\Big(\operatorname{clamp}\big(\textstyle\sum_d
             \frac{K_j \odot Q_i}{\sqrt{d}} \odot E_{ij},\ \pm 5\big)\Big),\qquad
    x'_i = \frac{\sum_j w_{ij} V_j}{\sum_j w_{ij} + 10^{-6}},

with :math:`Q, K, V, E` bias-free linear maps (``use_bias=False`` in ``GlobalModel``) and no
output projection (the official ``O_h`` is commented out).  :math:`E_{ij} = E(a_{ij})` for the
attributes :math:`a_{ij}` of every edge: the encoded edge features on graph edges, one learned
embedding on expander edges, and per virtual node one embedding for the edges into it and one
for the edges out of it.  The virtual nodes start from a learned embedding; each layer's
attention output at the virtual nodes is the next layer's virtual state.

Differences from the official code, each in its favour (less work than it does):

* ``ExpanderEdgeFixer`` re-offsets the per-graph expander edges in a Python loop over
  ``batch.to_data_list()`` every forward; here the expander edges come already offset by PyG's
  collation (``expander_index`` of :class:`gtpe.transforms.AddExpanderEdges`).

What gtpe's :class:`~gtpe.nn.attention.ExphormerAttention` does differently (so that the two
compute the same thing only in the configuration of ``tests/test_original_ports.py``): an exact
max-shifted softmax instead of the clamp and the :math:`10^{-6}`; biases in the projections and
an output projection (set to zero / the identity there); one ``type_emb`` row per edge kind
instead of :math:`E` applied to embeddings (equal for :math:`E \cdot a = ` that row), the same
row for both directions of the virtual edges; virtual nodes numbered graph-major (``N + g V + v``)
instead of index-major (``N + v B + g``; the same for one virtual node).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, Dropout, Embedding, Linear, ReLU, Sequential
from torch_geometric.utils import scatter


class OrigExphormerAttention(torch.nn.Module):
    """The official ``ExphormerAttention`` (``use_virt_nodes`` as ``num_virtual > 0``).

    ``forward(h, edge_index, edge_attr, virt_h=None)`` with ``h [N, C]`` the real nodes,
    ``virt_h [B * V, C]`` (or ``None``), ``edge_index [2, E]`` / ``edge_attr [E, C]`` the joint
    edge set of :class:`OrigExpanderEdgeFixer` returns ``(h_out [N, C], virt_out [B * V, C])``.
    ``clamp`` and ``eps`` are the official constants (5, 1e-6); the test sets ``eps=0``.
    """

    def __init__(self, dim: int, heads: int, use_bias: bool = False, clamp: float = 5.0,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError("hidden dimension is not divisible by the number of heads")
        self.heads, self.head_dim = heads, dim // heads
        self.clamp, self.eps = clamp, eps
        self.Q = Linear(dim, dim, bias=use_bias)
        self.K = Linear(dim, dim, bias=use_bias)
        self.E = Linear(dim, dim, bias=use_bias)
        self.V = Linear(dim, dim, bias=use_bias)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor,
                virt_h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        H, D = self.heads, self.head_dim
        num_node = h.size(0)
        if virt_h is not None:
            h = torch.cat([h, virt_h], dim=0)
        q = self.Q(h).view(-1, H, D)
        k = self.K(h).view(-1, H, D)
        e = self.E(edge_attr).view(-1, H, D)
        v = self.V(h).view(-1, H, D)
        # propagate_attention, op for op
        src, dst = edge_index[0], edge_index[1]
        score = torch.mul(k[src], q[dst])
        score = score / math.sqrt(D)
        score = torch.mul(score, e)
        score = torch.exp(score.sum(-1, keepdim=True).clamp(-self.clamp, self.clamp))  # [E, H, 1]
        msg = v[src] * score
        wV = scatter(msg, dst, dim=0, dim_size=h.size(0), reduce="sum")
        Z = scatter(score, dst, dim=0, dim_size=h.size(0), reduce="sum")
        out = (wV / (Z + self.eps)).view(-1, H * D)
        return out[:num_node], out[num_node:]


class OrigExpanderEdgeFixer(torch.nn.Module):
    """The official ``ExpanderEdgeFixer`` (``add_edge_index=True``, expander edges on,
    ``num_virt_node`` virtual nodes): the joint edge set and its attributes, and the initial
    virtual-node states.

    ``forward(edge_index, edge_attr, expander_index, batch, num_graphs)`` returns
    ``(edge_index_all [2, E'], edge_attr_all [E', C], virt_h [V * B, C] or None)``; virtual
    node ``(v, g)`` is row ``N + v * B + g`` of the joint node set.
    """

    def __init__(self, dim: int, num_virt_node: int = 1) -> None:
        super().__init__()
        self.num_virt_node = num_virt_node
        self.exp_edge_attr = Embedding(1, dim)
        if num_virt_node > 0:
            self.virt_node_emb = Embedding(num_virt_node, dim)
            self.virt_edge_out_emb = Embedding(num_virt_node, dim)
            self.virt_edge_in_emb = Embedding(num_virt_node, dim)

    def forward(self, edge_index: Tensor, edge_attr: Tensor, expander_index: Tensor,
                batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, Tensor | None]:
        device = edge_index.device
        num_node = batch.size(0)
        index_sets = [edge_index, expander_index]
        attr_sets = [
            edge_attr,
            self.exp_edge_attr(torch.zeros(expander_index.size(1), dtype=torch.long, device=device)),
        ]
        virt_h = None
        if self.num_virt_node > 0:
            global_h, virt_edges, virt_attrs = [], [], []
            arange = torch.arange(num_node, device=device).view(1, -1)
            for idx in range(self.num_virt_node):
                global_h.append(
                    self.virt_node_emb(torch.zeros(num_graphs, dtype=torch.long, device=device) + idx)
                )
                virt = (batch + (num_node + idx * num_graphs)).view(1, -1)
                into = torch.cat([arange, virt], dim=0)  # real -> virtual
                virt_edges.append(into)
                virt_attrs.append(self.virt_edge_in_emb(
                    torch.zeros(into.size(1), dtype=torch.long, device=device) + idx))
                out = torch.cat([virt, arange], dim=0)  # virtual -> real
                virt_edges.append(out)
                virt_attrs.append(self.virt_edge_out_emb(
                    torch.zeros(out.size(1), dtype=torch.long, device=device) + idx))
            virt_h = torch.cat(global_h, dim=0)
            index_sets.append(torch.cat(virt_edges, dim=1))
            attr_sets.append(torch.cat(virt_attrs, dim=0))
        return torch.cat(index_sets, dim=1), torch.cat(attr_sets, dim=0), virt_h


class OrigGINEExphormerLayer(torch.nn.Module):
    """The official ``MultiLayer(['GINE', 'Exphormer'])`` with batch norm: a ``LocalModel``
    (``GINEConv``, dropout, residual, BatchNorm), a ``GlobalModel`` (Exphormer attention,
    dropout, residual, BatchNorm), their sum, then :math:`h + \\mathrm{FFN}(h)` and BatchNorm.

    ``forward(x, edge_index, edge_attr, exp_index, exp_attr, virt_h)`` (the last three from
    :class:`OrigExpanderEdgeFixer`) returns ``(x_out, virt_out)``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, num_virt_node: int = 1) -> None:
        super().__init__()
        from torch_geometric.nn import GINEConv
        from torch_geometric.nn import Linear as PygLinear

        self.local_model = GINEConv(Sequential(PygLinear(dim, dim), ReLU(), PygLinear(dim, dim)))
        self.norm1_local = BatchNorm1d(dim)
        self.dropout_local = Dropout(dropout)
        self.self_attn = OrigExphormerAttention(dim, heads, use_bias=False)
        self.norm1_attn = BatchNorm1d(dim)
        self.dropout_attn = Dropout(dropout)
        self.ff_linear1 = Linear(dim, 2 * dim)
        self.ff_linear2 = Linear(2 * dim, dim)
        self.norm2 = BatchNorm1d(dim)
        self.ff_dropout1 = Dropout(dropout)
        self.ff_dropout2 = Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, exp_index: Tensor,
                exp_attr: Tensor, virt_h: Tensor | None) -> tuple[Tensor, Tensor]:
        h_local = self.local_model(x, edge_index, edge_attr)
        h_local = self.norm1_local(x + self.dropout_local(h_local))
        h_attn, virt_out = self.self_attn(x, exp_index, exp_attr, virt_h)
        h_attn = self.norm1_attn(x + self.dropout_attn(h_attn))
        h = h_local + h_attn
        h = h + self.ff_dropout2(self.ff_linear2(self.ff_dropout1(F.relu(self.ff_linear1(h)))))
        return self.norm2(h), virt_out


class OrigExphormerModel(torch.nn.Module):
    """A stack of :class:`OrigGINEExphormerLayer` behind ``encoder`` (``encoder(data)`` returns a
    dict with ``x [N, C]`` and ``edge_attr [E, C]``, as gtpe's ``GPSModel.encode``) with mean
    pooling and ``head``."""

    def __init__(self, encoder, head: torch.nn.Module, dim: int, layers: int, heads: int,
                 num_virt_node: int = 1) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.fixer = OrigExpanderEdgeFixer(dim, num_virt_node)
        self.layers = torch.nn.ModuleList(
            [OrigGINEExphormerLayer(dim, heads, num_virt_node=num_virt_node) for _ in range(layers)]
        )

    def forward(self, data) -> Tensor:
        kw = self.encoder(data)
        x, edge_attr = kw["x"], kw["edge_attr"]
        num_graphs = int(data.num_graphs)
        exp_index, exp_attr, virt_h = self.fixer(
            data.edge_index, edge_attr, data.expander_index, data.batch, num_graphs
        )
        for layer in self.layers:
            x, virt_h = layer(x, data.edge_index, edge_attr, exp_index, exp_attr, virt_h)
        pooled = scatter(x, data.batch, dim=0, dim_size=num_graphs, reduce="mean")
        return self.head(pooled)
