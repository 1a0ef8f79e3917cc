"""Input feature encoders: node/edge features -> ``channels``-dimensional embeddings.

* :class:`EmbeddingEncoder` -- one categorical feature (e.g. ZINC atom / bond type).
* :class:`LinearEncoder` -- dense float features (e.g. Cora bag-of-words).
* :class:`OGBAtomEncoder`, :class:`OGBBondEncoder` -- OGB's ``AtomEncoder`` / ``BondEncoder``
  (Hu et al., 2020, `"Open Graph Benchmark" <https://arxiv.org/abs/2005.00687>`_):
  :math:`\\mathbf{h} = \\sum_f \\mathbf{W}_f[x_f]` over the categorical features of
  ``ogb.utils.features.get_atom_feature_dims()`` / ``get_bond_feature_dims()``.
  The per-feature tables are stored as one table with offsets (one lookup instead of 9).
* :class:`SinusoidEncoder` -- integer features (positions, wire ids) through fixed sinusoidal
  encodings and a linear map, as Geisler et al.'s sorting-network encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from torch import Tensor

__all__ = [
    "EmbeddingEncoder",
    "LinearEncoder",
    "MultiEmbeddingEncoder",
    "OGBAtomEncoder",
    "OGBBondEncoder",
    "SinusoidEncoder",
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


class SinusoidEncoder(torch.nn.Module):
    r"""Integer features through the Transformer's sinusoidal position encoding (Vaswani et al.,
    2017, `"Attention Is All You Need" <https://arxiv.org/abs/1706.03762>`_), one per column, then
    a linear map, as the sorting-network encoder of Geisler et al. (2023, `"Transformers Meet
    Directed Graphs" <https://arxiv.org/abs/2302.00049>`_):

    .. math::
        \mathrm{PE}_d(p) &= \big[\sin(p\,\omega_0), \ldots, \sin(p\,\omega_{m-1}),
            \cos(p\,\omega_0), \ldots, \cos(p\,\omega_{m-1})\big]_{1..d},
            \qquad \omega_k = T^{-2k/d},\ m = \lceil d/2 \rceil \\
        \mathbf{h}_i &= \mathbf{W}\,\big[\mathrm{PE}_{d_1}(x_{i,1}) \Vert \cdots \Vert
            \mathrm{PE}_{d_F}(x_{i,F})\big] + \mathbf{b}

    (for odd :math:`d` the last cosine is dropped).  ``x`` is an integer tensor ``[N, F]``
    (``[N]`` when ``F = 1``); the encoding widths :math:`d_f` split ``hidden`` as evenly as
    possible (the first ``hidden % F`` columns get one more).

    Args:
        num_columns: :math:`F`, the number of integer features per node.
        channels: output size.
        max_timescale: :math:`T`, the longest wavelength is :math:`2\pi T` (default 32: positions
            up to a few tens are told apart).
        hidden: total encoding width :math:`\sum_f d_f` (default ``channels``).
    """

    def __init__(
        self,
        num_columns: int,
        channels: int,
        max_timescale: float = 32.0,
        hidden: int | None = None,
    ):
        super().__init__()
        hidden = channels if hidden is None else hidden
        for name, v in (("num_columns", num_columns), ("channels", channels), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SinusoidEncoder: {name} must be a positive integer, got {v!r}")
        if hidden < num_columns:
            raise ValueError(
                f"SinusoidEncoder: hidden ({hidden}) must be at least num_columns ({num_columns})"
            )
        if (
            isinstance(max_timescale, bool)
            or not isinstance(max_timescale, (int, float))
            or not math.isfinite(max_timescale)
            or max_timescale <= 0
        ):
            raise ValueError(
                f"SinusoidEncoder: max_timescale must be a positive number, got {max_timescale!r}"
            )
        self.num_columns, self.channels, self.hidden = num_columns, channels, hidden
        self.max_timescale = float(max_timescale)
        self.widths = [hidden // num_columns + (f < hidden % num_columns) for f in range(num_columns)]
        col, freq, is_cos = [], [], []
        for f, d in enumerate(self.widths):
            m = (d + 1) // 2
            w = [self.max_timescale ** (-2.0 * k / d) for k in range(m)]
            col += [f] * d
            freq += (w + w)[:d]
            is_cos += ([False] * m + [True] * m)[:d]
        # per encoding feature: which column it reads, its frequency, sin or cos
        self.register_buffer("col", torch.tensor(col), persistent=False)
        self.register_buffer("freq", torch.tensor(freq, dtype=torch.float64), persistent=False)
        self.register_buffer("is_cos", torch.tensor(is_cos), persistent=False)
        self.lin = torch.nn.Linear(hidden, channels)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def encode(self, x: Tensor) -> Tensor:
        r"""The fixed part, :math:`[\mathrm{PE}_{d_1}(x_{i,1}) \Vert \cdots]`: ``[N, hidden]``."""
        if x.dim() == 1 and self.num_columns == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2 or x.size(1) != self.num_columns:
            raise ValueError(
                f"SinusoidEncoder: expected x of shape [N, {self.num_columns}] (one integer "
                f"feature per column), got {list(x.shape)}"
            )
        dtype = self.lin.weight.dtype
        angle = x.index_select(1, self.col).to(dtype) * self.freq.to(dtype)  # [N, hidden]
        return torch.where(self.is_cos, angle.cos(), angle.sin())

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(self.encode(x))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.num_columns}, {self.channels}, "
            f"max_timescale={self.max_timescale:g}, hidden={self.hidden})"
        )
