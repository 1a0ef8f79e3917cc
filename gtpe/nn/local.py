"""Local message passing for GPS layers: GINE, DirGINE (directed graphs), GatedGCN and GCN.

All are written as a handful of tensor ops (``index_select`` / :func:`~gtpe.nn.ops.scatter_sum`) instead of
:class:`torch_geometric.nn.MessagePassing`: at the size of one molecular mini-batch
(~700 nodes) Python overhead, not arithmetic, dominates the step time.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, Linear, ReLU, Sequential

from gtpe.nn.ops import check_index_shape, edge_attr_error, scatter_sum, segment_count

__all__ = ["GCN", "GINE", "DirGINE", "GatedGCN"]


def _reset(module: torch.nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class GINE(torch.nn.Module):
    r"""GIN with edge features (GINE) from `"Strategies for Pre-training Graph Neural
    Networks" <https://arxiv.org/abs/1905.12265>`_ (Hu et al., 2020).

    .. math::
        \mathbf{x}'_i = h_\Theta\Big((1+\epsilon)\,\mathbf{x}_i
            + \sum_{j\in\mathcal{N}(i)} \mathrm{ReLU}(\mathbf{x}_j + \mathbf{W}_e\mathbf{e}_{ji})\Big)

    Numerically equal to :class:`torch_geometric.nn.GINEConv` with the same ``nn`` (and the
    same ``lin`` when ``edge_dim`` is given). Without ``edge_attr`` the messages are
    :math:`\mathrm{ReLU}(\mathbf{x}_j)` (GIN on non-negative features).

    Args:
        channels: node feature size.
        nn: the network :math:`h_\Theta`; default ``Linear(C, C) - ReLU - Linear(C, C)``
            (as GraphGPS and PyG's ``examples/graph_gps.py``).
        eps: (initial) :math:`\epsilon`.
        train_eps: make :math:`\epsilon` trainable.
        edge_dim: if given, edge features of this size are mapped to ``channels`` by a linear
            layer :math:`\mathbf{W}_e`; otherwise they must already have ``channels`` features.
    """

    def __init__(
        self,
        channels: int,
        nn: torch.nn.Module | None = None,
        eps: float = 0.0,
        train_eps: bool = False,
        edge_dim: int | None = None,
    ):
        super().__init__()
        self.channels = channels
        self.nn = (
            nn
            if nn is not None
            else Sequential(Linear(channels, channels), ReLU(), Linear(channels, channels))
        )
        self.initial_eps = eps
        self.train_eps = train_eps
        if train_eps:
            self.eps = torch.nn.Parameter(torch.empty(1))
        else:
            self.register_buffer("eps", torch.empty(1))
        self.lin = Linear(edge_dim, channels) if edge_dim is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset(self.nn)
        self.eps.data.fill_(self.initial_eps)
        if self.lin is not None:
            self.lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        check_index_shape("GINE", "edge_index", edge_index)
        if edge_attr is not None:
            self._check_edge_attr("GINE", edge_attr, edge_index.size(1))
        return self._propagate(x, edge_index[0], edge_index[1], edge_attr)

    def _check_edge_attr(self, owner: str, edge_attr: Tensor, num_edges: int) -> None:
        if self.lin is not None:
            err = edge_attr_error(owner, edge_attr, num_edges, self.lin.in_features, "edge_dim", False)
        else:
            err = edge_attr_error(owner, edge_attr, num_edges, self.channels, "channels", True)
        if err is not None:
            raise ValueError(err)

    def _propagate(self, x: Tensor, src: Tensor, dst: Tensor, edge_attr: Tensor | None) -> Tensor:
        """The layer along edges ``src -> dst`` (inputs already checked)."""
        msg = x.index_select(0, src)  # x_j  [E, C]  (a fresh tensor: updated in place below)
        if edge_attr is not None:
            if self.lin is not None:
                edge_attr = self.lin(edge_attr)
            msg = msg.add_(edge_attr)
        msg = msg.relu_()
        out = scatter_sum(msg, dst, x.size(0))
        out = out + ((1 + self.eps) * x if self.train_eps or self.initial_eps != 0.0 else x)
        return self.nn(out)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, nn={self.nn})"


class DirGINE(torch.nn.Module):
    r"""Directed GINE: Dir-GNN (Rossi et al., 2023, `"Edge Directionality Improves Learning on
    Heterophilic Graphs" <https://arxiv.org/abs/2305.10498>`_) over :class:`GINE`, with separate
    weights for in- and out-edges:

    .. math::
        \mathbf{x}'_i = \alpha\,\mathrm{GINE}_{\text{out}}(\mathbf{x}, \mathcal{E}^\top)_i
            + (1-\alpha)\,\mathrm{GINE}_{\text{in}}(\mathbf{x}, \mathcal{E})_i

    :math:`\mathrm{GINE}_{\text{in}}` aggregates over the in-edges :math:`j \to i` of
    ``edge_index`` (messages :math:`\mathrm{ReLU}(\mathbf{x}_j + \mathbf{W}^{\text{in}}_e
    \mathbf{e}_{ji})`), :math:`\mathrm{GINE}_{\text{out}}` over the out-edges :math:`i \to j`
    (``edge_index`` flipped; messages :math:`\mathrm{ReLU}(\mathbf{x}_j +
    \mathbf{W}^{\text{out}}_e\mathbf{e}_{ij})`).  Each has its own :math:`h_\Theta`,
    :math:`\epsilon` and edge map.  This is PyG's
    ``torch_geometric.nn.DirGNNConv(conv, alpha, root_weight=False)`` with ``conv`` a GINE
    (``conv_in`` / ``conv_out`` hold the same weights); without ``edge_attr`` the messages are
    :math:`\mathrm{ReLU}(\mathbf{x}_j)` as in :class:`GINE`, so on non-negative ``x`` it equals
    ``DirGNNConv(GINConv(nn), alpha, root_weight=False)``.

    Args:
        channels: node feature size.
        nn: :math:`h_\Theta` of both directions (deep-copied into each; default as :class:`GINE`).
        alpha: weight of the out-edge aggregation, in ``[0, 1]`` (default ``0.5``).
        eps, train_eps, edge_dim: as :class:`GINE` (per direction).
    """

    def __init__(
        self,
        channels: int,
        nn: torch.nn.Module | None = None,
        alpha: float = 0.5,
        eps: float = 0.0,
        train_eps: bool = False,
        edge_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DirGINE: alpha must be a number in [0, 1], got {alpha!r}")
        self.channels = channels
        self.alpha = float(alpha)
        self.conv_in = GINE(channels, copy.deepcopy(nn), eps, train_eps, edge_dim)
        self.conv_out = GINE(channels, copy.deepcopy(nn), eps, train_eps, edge_dim)
        self.reset_parameters()

    @property
    def lin(self) -> Linear | None:
        """The in-edge GINE's edge map (``None`` without ``edge_dim``); both have the same shape."""
        return self.conv_in.lin

    def reset_parameters(self) -> None:
        self.conv_in.reset_parameters()
        self.conv_out.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        check_index_shape("DirGINE", "edge_index", edge_index)
        if edge_attr is not None:
            self.conv_in._check_edge_attr("DirGINE", edge_attr, edge_index.size(1))
        src, dst = edge_index[0], edge_index[1]
        x_in = self.conv_in._propagate(x, src, dst, edge_attr)  # along j -> i
        x_out = self.conv_out._propagate(x, dst, src, edge_attr)  # along the reversed edges
        return self.alpha * x_out + (1 - self.alpha) * x_in

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, nn={self.conv_in.nn}, "
            f"alpha={self.alpha})"
        )


class GatedGCN(torch.nn.Module):
    r"""Residual gated graph ConvNet from `"Residual Gated Graph ConvNets"
    <https://arxiv.org/abs/1711.07553>`_ (Bresson & Laurent, 2017), in the form used by
    GraphGPS (Rampášek et al., 2022) and Benchmarking-GNNs, with edge-feature updates:

    .. math::
        \hat{\mathbf{e}}_{ij} &= \mathbf{D}\mathbf{x}_i + \mathbf{E}\mathbf{x}_j
            + \mathbf{C}\mathbf{e}_{ij},\qquad
        \sigma_{ij} = \mathrm{sigmoid}(\hat{\mathbf{e}}_{ij}) \\
        \hat{\mathbf{x}}_i &= \mathbf{A}\mathbf{x}_i + \frac{\sum_{j\to i}\sigma_{ij}\odot
            \mathbf{B}\mathbf{x}_j}{\sum_{j\to i}\sigma_{ij} + 10^{-6}} \\
        \mathbf{x}'_i &= \mathbf{x}_i + \mathrm{Dropout}(\mathrm{ReLU}(\mathrm{BN}(\hat{\mathbf{x}}_i))),
        \qquad \mathbf{e}'_{ij} = \mathbf{e}_{ij} + \mathrm{Dropout}(\mathrm{ReLU}(\mathrm{BN}(\hat{\mathbf{e}}_{ij})))

    (:math:`i` is the target of edge :math:`j\to i`). ``A, B, D, E`` are fused into one
    ``Linear(C, 4C)`` (``lin_node``), ``C`` is ``lin_edge``. Without ``edge_attr`` the
    :math:`\mathbf{C}\mathbf{e}_{ij}` term and the edge residual are dropped.

    Returns ``(x', e')``; residual and dropout are done inside (as in GraphGPS).  With
    ``update_edges=False`` (e.g. in a model's last layer, whose edge output nobody reads) the edge
    update is skipped and ``e'`` is the input ``edge_attr`` (possibly ``None``).
    """

    def __init__(
        self,
        channels: int,
        dropout: float = 0.0,
        residual: bool = True,
        batch_norm: bool = True,
        update_edges: bool = True,
    ):
        super().__init__()
        self.channels = channels
        self.dropout = dropout
        self.residual = residual
        self.update_edges = update_edges
        self.lin_node = Linear(channels, 4 * channels)  # [A | D | E | B]
        self.lin_edge = Linear(channels, channels)  # C
        self.bn_node = BatchNorm1d(channels) if batch_norm else None
        self.bn_edge = BatchNorm1d(channels) if batch_norm and update_edges else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_node.reset_parameters()
        self.lin_edge.reset_parameters()
        if self.bn_node is not None:
            self.bn_node.reset_parameters()
        if self.bn_edge is not None:
            self.bn_edge.reset_parameters()

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        C = self.channels
        check_index_shape("GatedGCN", "edge_index", edge_index)
        if edge_attr is not None:
            err = edge_attr_error("GatedGCN", edge_attr, edge_index.size(1), C, "channels", False)
            if err is not None:
                raise ValueError(err)
        src, dst = edge_index[0], edge_index[1]
        h = self.lin_node(x)
        Ax, Dx = h[:, :C], h[:, C : 2 * C]
        EBx_j = h[:, 2 * C :].index_select(0, src)  # [E, 2C]: E x_j | B x_j
        e_hat = Dx.index_select(0, dst) + EBx_j[:, :C]
        if edge_attr is not None:
            e_hat = e_hat + self.lin_edge(edge_attr)
        sigma = torch.sigmoid(e_hat)
        num_den = torch.cat([sigma * EBx_j[:, C:], sigma], dim=-1)
        agg = scatter_sum(num_den, dst, x.size(0))
        x_hat = Ax + agg[:, :C] / (agg[:, C:] + 1e-6)

        if self.bn_node is not None:
            x_hat = self.bn_node(x_hat)
        x_hat = x_hat.relu()
        if self.dropout > 0:
            x_hat = F.dropout(x_hat, self.dropout, self.training)
        if self.residual:
            x_hat = x + x_hat
        if not self.update_edges:
            return x_hat, edge_attr
        if self.bn_edge is not None:
            e_hat = self.bn_edge(e_hat)
        e_hat = e_hat.relu()
        if self.dropout > 0:
            e_hat = F.dropout(e_hat, self.dropout, self.training)
        if self.residual and edge_attr is not None:
            e_hat = edge_attr + e_hat
        return x_hat, e_hat

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, dropout={self.dropout}, "
            f"update_edges={self.update_edges})"
        )


class GCN(torch.nn.Module):
    r"""Graph convolution from `"Semi-Supervised Classification with Graph Convolutional
    Networks" <https://arxiv.org/abs/1609.02907>`_ (Kipf & Welling, ICLR 2017):

    .. math::
        \mathbf{X}' = \hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}
            \mathbf{X}\mathbf{W} + \mathbf{b},\qquad
        \hat{\mathbf{A}} = \mathbf{A} + \mathbf{I},\quad
        \hat{D}_{ii} = \textstyle\sum_j \hat{A}_{ij}

    with :math:`A_{ij}` the number of edges :math:`j \to i` in ``edge_index`` (so
    :math:`\hat{D}_{ii}` is 1 + the in-degree; a symmetric ``edge_index`` gives Kipf's
    symmetric normalisation).  Self-loops already in ``edge_index`` are dropped before the
    :math:`\mathbf{I}` is added (each node gets exactly one loop of weight 1).  This equals
    :class:`torch_geometric.nn.GCNConv` (``normalize=True``, ``add_self_loops=True``) with the
    same weight and bias on graphs without self-loops.

    Edge features are not used: ``forward`` accepts ``edge_attr`` (as the other local modules)
    and ignores it.  The normalised edge weights depend only on ``edge_index``; pass a dict as
    ``cache`` (``GPSLayer`` passes the ``state`` its layers share in one model forward) and
    they are computed once per graph and reused by every layer that gets the same
    ``edge_index`` tensor.  On a node-sampled subgraph (neighbour loader) the degrees are the
    subgraph's, as with PyG's ``GCNConv``.

    Args:
        channels: input and output size :math:`C` (``W`` is ``[C, C]``).
        bias: learn the additive bias :math:`\mathbf{b}`.
        weight: learn :math:`\mathbf{W}`; ``False``: propagation only,
            :math:`\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}\mathbf{X} +
            \mathbf{b}` (for a layer whose linear map is applied next to it, e.g. a model's
            input encoder or linear head, so that no two linear maps are multiplied).
    """

    CACHE_KEY = "gcn_norm"

    def __init__(self, channels: int, bias: bool = True, weight: bool = True):
        super().__init__()
        self.channels = channels
        self.lin = Linear(channels, channels, bias=False) if weight else None
        self.bias = torch.nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lin is not None:  # Glorot, as Kipf & Welling (and PyG's GCNConv)
            torch.nn.init.xavier_uniform_(self.lin.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    @staticmethod
    def normalize(edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32
                  ) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(src, dst, weight)`` of :math:`\hat{\mathbf{A}}` (self-loops last) with
        ``weight`` :math:`= \hat{D}_{ii}^{-1/2}\hat{D}_{jj}^{-1/2}` for each edge
        :math:`j \to i` (``src = j``, ``dst = i``)."""
        src, dst = edge_index[0], edge_index[1]
        keep = src != dst
        loop = torch.arange(num_nodes, device=edge_index.device, dtype=edge_index.dtype)
        src = torch.cat([src[keep], loop])
        dst = torch.cat([dst[keep], loop])
        deg = segment_count(dst, num_nodes, dtype=dtype)  # >= 1: every node has its loop
        dis = deg.rsqrt()
        return src, dst, dis.index_select(0, src) * dis.index_select(0, dst)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        *,
        cache: dict | None = None,
    ) -> Tensor:
        check_index_shape("GCN", "edge_index", edge_index)
        N = x.size(0)
        norm = cache.get(self.CACHE_KEY) if cache is not None else None
        if norm is None or norm[0] is not edge_index or norm[1] != N or norm[2] != x.dtype:
            norm = (edge_index, N, x.dtype, *self.normalize(edge_index, N, x.dtype))
            if cache is not None:
                cache[self.CACHE_KEY] = norm
        src, dst, weight = norm[3:]
        h = self.lin(x) if self.lin is not None else x
        out = scatter_sum(h.index_select(0, src) * weight.unsqueeze(-1), dst, N)
        return out + self.bias if self.bias is not None else out

    def __repr__(self) -> str:
        extra = "" if self.lin is not None else ", weight=False"
        return f"{self.__class__.__name__}({self.channels}, {self.channels}{extra})"
