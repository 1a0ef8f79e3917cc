"""Relative random-walk probability (RRWP) encoder of GRIT."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear

from gtpe.nn.ops import scatter_sum

__all__ = ["RRWPEncoder"]


class RRWPEncoder(torch.nn.Module):
    r"""Node and pair encoder of the relative random-walk probabilities of `"Graph Inductive
    Biases in Transformers without Message Passing" <https://arxiv.org/abs/2305.17589>`_
    (GRIT, Ma et al., 2023).

    With :math:`\mathbf{P}_{ij} = [\mathbf{I}, \mathbf{P}, \ldots, \mathbf{P}^{K-1}]_{ij}`
    (``data.rrwp_val`` on the pairs ``data.rrwp_index``; ``data.rrwp`` its diagonal, from
    :class:`gtpe.transforms.AddRRWP`):

    .. math::
        \mathbf{h}_i = \mathbf{W}_n \mathbf{P}_{ii}, \qquad
        \mathbf{e}_{ij} = \mathbf{W}_p \mathbf{P}_{ij} + \mathbf{b}_p
            + [\,(i,j)\in\mathcal{E}\,]\;\mathbf{e}^{\mathrm{in}}_{ij}

    for the column :math:`(i, j)` of ``rrwp_index`` (``i = rrwp_index[0]``, where the walk
    starts), i.e. the (already embedded, ``channels``-dim) input edge features are added on
    the pairs that are graph edges :math:`i \to j` (``edge_index`` column ``(i, j)``; pairs
    that are edges but not RRWP pairs are added too; the result is coalesced, sorted by
    (i, j)).  ``h`` is **added** to the node embedding (as in GRIT).  The output keeps this
    (row, col) order, as GRIT's ``rrwp_linear`` edge encoder: in
    :class:`~gtpe.nn.attention.GRITAttention` row 0 is the key and row 1 the query, so the
    query :math:`j` sees :math:`\mathbf{P}_{ij}` of the key :math:`i` (walks from the key to
    the query) and the edge :math:`i \to j`, as the official code.

    ``forward(rrwp, rrwp_index, rrwp_val, edge_index=None, edge_attr=None)`` returns
    ``(h [N, channels], pair_index [2, M'], pair_attr [M', channels])``.  With ``pairs=False``
    only the node term exists (:meth:`encode_nodes`), for models whose attention does not use
    pair features.
    """

    def __init__(self, walk_length: int, channels: int, pairs: bool = True):
        super().__init__()
        if walk_length < 1 or channels < 1:
            raise ValueError(
                f"RRWPEncoder: walk_length ({walk_length}) and channels ({channels}) "
                f"must be positive"
            )
        self.walk_length = walk_length
        self.channels = channels
        self.node_lin = Linear(walk_length, channels, bias=False)
        self.pair_lin = Linear(walk_length, channels) if pairs else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.node_lin.weight)
        if self.pair_lin is not None:
            torch.nn.init.xavier_uniform_(self.pair_lin.weight)
            torch.nn.init.zeros_(self.pair_lin.bias)

    def encode_nodes(self, rrwp: Tensor) -> Tensor:
        """Only the node term :math:`\\mathbf{W}_n \\mathbf{P}_{ii}` (``[N, channels]``)."""
        if rrwp.dim() != 2 or rrwp.size(1) != self.walk_length:
            raise ValueError(
                f"RRWPEncoder: expected rrwp [N, {self.walk_length}], got "
                f"{list(rrwp.shape)} (AddRRWP(walk_length) must match the encoder)"
            )
        return self.node_lin(rrwp)

    def forward(
        self,
        rrwp: Tensor,
        rrwp_index: Tensor,
        rrwp_val: Tensor,
        edge_index: Tensor | None = None,
        edge_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        K = self.walk_length
        if self.pair_lin is None:
            raise ValueError("RRWPEncoder(pairs=False) only encodes nodes: use encode_nodes()")
        if rrwp.dim() != 2 or rrwp.size(1) != K or rrwp_val.dim() != 2 or rrwp_val.size(1) != K:
            raise ValueError(
                f"RRWPEncoder: expected rrwp [N, {K}] and rrwp_val [M, {K}], got "
                f"{list(rrwp.shape)} and {list(rrwp_val.shape)} "
                f"(AddRRWP(walk_length) must match the encoder)"
            )
        if (
            rrwp_index.dim() != 2
            or rrwp_index.size(0) != 2
            or rrwp_index.size(1) != rrwp_val.size(0)
        ):
            raise ValueError(
                f"RRWPEncoder: rrwp_index must be [2, {rrwp_val.size(0)}], got "
                f"{list(rrwp_index.shape)}"
            )
        h = self.node_lin(rrwp)
        pair_attr = self.pair_lin(rrwp_val)
        pair_index = rrwp_index
        if edge_attr is not None:
            if edge_index is None:
                raise ValueError("RRWPEncoder: edge_attr given without edge_index")
            if edge_attr.dim() != 2 or edge_attr.size(1) != self.channels:
                raise ValueError(
                    f"RRWPEncoder: edge_attr must be embedded to [E, {self.channels}]"
                    f", got {list(edge_attr.shape)}"
                )
            n = rrwp.size(0)
            idx = torch.cat([rrwp_index, edge_index], dim=1)
            key = idx[0] * n + idx[1]
            uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
            attr = torch.cat([pair_attr, edge_attr.to(pair_attr.dtype)], dim=0)
            pair_attr = scatter_sum(attr, inv, uniq.numel())
            pair_index = torch.stack([uniq // n, uniq % n], dim=0)
        return h, pair_index, pair_attr

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(walk_length={self.walk_length}, channels={self.channels})"
        )
