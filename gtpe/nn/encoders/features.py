"""Input feature encoders: node/edge features -> ``channels``-dimensional embeddings.

* :class:`EmbeddingEncoder` -- one categorical feature (e.g. ZINC atom / bond type).
* :class:`LinearEncoder` -- dense float features (e.g. Cora bag-of-words).
* :class:`OGBAtomEncoder`, :class:`OGBBondEncoder` -- OGB's ``AtomEncoder`` / ``BondEncoder``
  (Hu et al., 2020, `"Open Graph Benchmark" <https://arxiv.org/abs/2005.00687>`_):
  :math:`\\mathbf{h} = \\sum_f \\mathbf{W}_f[x_f]` over the categorical features of
  ``ogb.utils.features.get_atom_feature_dims()`` / ``get_bond_feature_dims()``.
  The per-feature tables are stored as one table with offsets (one lookup instead of 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "EmbeddingEncoder",
    "LinearEncoder",
    "MultiEmbeddingEncoder",
    "OGBAtomEncoder",
    "OGBBondEncoder",
]


class EmbeddingEncoder(torch.nn.Module):
    r"""Embedding of one categorical feature: :math:`\mathbf{h}_i = \mathbf{W}[x_i]`.

    Accepts ``x`` of shape ``[N]`` or ``[N, 1]`` (long)."""

    def __init__(self, num_embeddings: int, channels: int):
        super().__init__()
        if num_embeddings < 1 or channels < 1:
            raise ValueError(
                f"EmbeddingEncoder: num_embeddings ({num_embeddings}) and channels "
                f"({channels}) must be positive"
            )
        self.num_embeddings = num_embeddings
        self.channels = channels
        self.emb = torch.nn.Embedding(num_embeddings, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.emb.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            if x.size(1) != 1:
                raise ValueError(
                    f"EmbeddingEncoder expects x of shape [N] or [N, 1], got {list(x.shape)}"
                )
            x = x.view(-1)
        return self.emb(x.long())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.num_embeddings}, {self.channels})"


class LinearEncoder(torch.nn.Module):
    r"""Linear map of dense features: :math:`\mathbf{h}_i = \mathbf{W}\mathbf{x}_i + \mathbf{b}`."""

    def __init__(self, in_dim: int, channels: int, bias: bool = True):
        super().__init__()
        self.in_dim = in_dim
        self.channels = channels
        self.lin = torch.nn.Linear(in_dim, channels, bias=bias)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.size(-1) != self.in_dim:
            raise ValueError(
                f"LinearEncoder: expected {self.in_dim} input features, got {x.size(-1)}"
            )
        return self.lin(x.to(self.lin.weight.dtype))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_dim}, {self.channels})"


class MultiEmbeddingEncoder(torch.nn.Module):
    r"""Sum of embeddings of several categorical features:
    :math:`\mathbf{h}_i = \sum_{f} \mathbf{W}_f[x_{i,f}]`, ``x`` long ``[N, F]``.

    The tables :math:`\mathbf{W}_f` (sizes ``dims``) live in one ``Embedding`` with
    row offsets; each slice is Xavier-uniform initialised like OGB's encoders."""

    def __init__(self, dims: Sequence[int], channels: int):
        super().__init__()
        self.dims: list[int] = [int(d) for d in dims]
        self.channels = channels
        self.emb = torch.nn.Embedding(sum(self.dims), channels)
        offsets = torch.tensor([0] + self.dims[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w in self.emb.weight.split(self.dims, dim=0):
                torch.nn.init.xavier_uniform_(w)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.size(-1) != len(self.dims):
            raise ValueError(
                f"{self.__class__.__name__}: expected {len(self.dims)} categorical "
                f"features per row, got x of shape {list(x.shape)}"
            )
        return self.emb(x.long() + self.offsets).sum(dim=1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dims}, {self.channels})"


class OGBAtomEncoder(MultiEmbeddingEncoder):
    """OGB ``AtomEncoder``: sum of embeddings of the 9 atom features (``x`` long ``[N, 9]``)."""

    def __init__(self, channels: int):
        from ogb.utils.features import get_atom_feature_dims

        super().__init__(get_atom_feature_dims(), channels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"


class OGBBondEncoder(MultiEmbeddingEncoder):
    """OGB ``BondEncoder``: sum of embeddings of the 3 bond features (``edge_attr`` long ``[E, 3]``)."""

    def __init__(self, channels: int):
        from ogb.utils.features import get_bond_feature_dims

        super().__init__(get_bond_feature_dims(), channels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"
