r"""Graphormer's spatial and centrality encodings on :class:`FullAttention`.

Ying et al., "Do Transformers Really Perform Bad for Graph Representation?", NeurIPS 2021
(https://arxiv.org/abs/2106.05234).  Attention with a learned per-head bias indexed by the
shortest-path distance (spatial encoding, Eq. 6),

.. math::
    A^h_{ij} = \frac{\langle W^h_Q x_i, W^h_K x_j\rangle}{\sqrt{d}} + b^h_{\phi(j, i)},

and node features shifted by learned in/out-degree embeddings (centrality encoding, Eq. 5),
:math:`x_i + z^-_{\deg^-(i)} + z^+_{\deg^+(i)}`.  The distances come from
:class:`gtpe.transforms.AddSPD` (``spd_index``, ``spd_val``, ``in_degree``, ``out_degree``).

Orientation: ``spd_index`` row 0 is the start of a path and row 1 its end; it is passed to
:class:`FullAttention` as ``pair_index`` (row 0 the key ``j``, row 1 the query ``i``), so query
``i`` sees the distance from key ``j`` to ``i``, as ``GRITAttention`` reads ``rrwp_index``.
On undirected graphs (Graphormer's molecules) :math:`\phi` is symmetric and both readings agree;
on directed graphs pass ``spd_index.flip(0)`` for the paper's literal :math:`\phi(v_i, v_j)`.
Graphormer's edge encoding along shortest paths (Eq. 7) is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding

from gtpe.nn.attention.full import FullAttention

_MISSING = "compute them with gtpe.transforms.AddSPD(max_dist=...) (as a pre_transform)"


def _check_int(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_index_vector(owner: str, name: str, t: Tensor, n: int | None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype not in (torch.long, torch.int32) \
            or (n is not None and t.numel() != n):
        what = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        want = "[M]" if n is None else f"[{n}]"
        raise ValueError(f"{owner}: {name} must be an integer tensor of shape {want}, got {what}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{owner}: {name} holds negative values (min {int(t.min())})")


class GraphormerBias(torch.nn.Module):
    r"""Graphormer's spatial encoding :math:`b_{\phi}` (Ying et al., NeurIPS 2021, Eq. 6): one
    learnable scalar per head and distance,

    .. math:: b^h_{ij} = E[\min(\phi, D + 1), h],\qquad E \in \mathbb{R}^{(D + 2) \times H},

    with :math:`D` = ``max_dist``; row :math:`D + 1` is the bias of every pair farther than
    :math:`D` or unreachable (pairs that ``AddSPD`` leaves out, and listed pairs with a
    distance above ``max_dist``).

    ``forward(spd_index [2, M], spd_val [M])`` returns ``(pair_index, pair_bias [M, H],
    default_bias [H])``, the arguments of :meth:`FullAttention.forward`'s bias.
    """

    def __init__(self, heads: int, max_dist: int) -> None:
        super().__init__()
        self.heads = _check_int("GraphormerBias", "heads", heads, 1)
        self.max_dist = _check_int("GraphormerBias", "max_dist", max_dist, 1)
        self.embedding = Embedding(self.max_dist + 2, self.heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.embedding.weight, std=0.02)  # as Graphormer's code

    def forward(self, spd_index: Tensor | None, spd_val: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        self._check(spd_index, spd_val)
        far = self.max_dist + 1
        table = self.embedding.weight  # index_select: a cheaper backward than Embedding's on CPU
        return spd_index, table.index_select(0, spd_val.clamp_max(far)), table[far]

    def shifted(self, spd_index: Tensor | None, spd_val: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(pair_index, pair_bias - default_bias)``: the same attention with a zero default
        (softmax ignores a constant added to every score of a row), one subtraction on the
        ``[D + 2, H]`` table instead of on ``[M, H]``."""
        self._check(spd_index, spd_val)
        far = self.max_dist + 1
        table = self.embedding.weight
        return spd_index, (table - table[far]).index_select(0, spd_val.clamp_max(far))

    def _check(self, spd_index: Tensor | None, spd_val: Tensor | None) -> None:
        if spd_index is None or spd_val is None:
            raise ValueError(f"GraphormerBias: spd_index / spd_val are missing: {_MISSING}")
        _check_index_vector("GraphormerBias", "spd_val", spd_val, None)
        if spd_index.dim() != 2 or spd_index.size(0) != 2 or spd_index.size(1) != spd_val.numel():
            raise ValueError(
                f"GraphormerBias: spd_index must have shape [2, {spd_val.numel()}] (one column "
                f"per spd_val), got {tuple(spd_index.shape)}"
            )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(heads={self.heads}, max_dist={self.max_dist})"


class CentralityEncoding(torch.nn.Module):
    r"""Graphormer's centrality encoding (Ying et al., NeurIPS 2021, Eq. 5):

    .. math:: x'_i = x_i + z^-_{\min(\deg^-(i), K)} + z^+_{\min(\deg^+(i), K)},

    with learned :math:`z^\pm \in \mathbb{R}^{(K + 1) \times C}`, :math:`K` = ``max_degree``
    (larger degrees share the last row).  Degrees from :class:`gtpe.transforms.AddSPD`
    (``in_degree``, ``out_degree``; equal on undirected graphs).

    Shapes: ``x [N, C]``, ``in_degree [N]``, ``out_degree [N]`` -> ``[N, C]``.
    """

    def __init__(self, channels: int, max_degree: int) -> None:
        super().__init__()
        self.channels = _check_int("CentralityEncoding", "channels", channels, 1)
        self.max_degree = _check_int("CentralityEncoding", "max_degree", max_degree, 0)
        self.z_in = Embedding(self.max_degree + 1, self.channels)
        self.z_out = Embedding(self.max_degree + 1, self.channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.z_in.weight, std=0.02)
        torch.nn.init.normal_(self.z_out.weight, std=0.02)

    def forward(self, x: Tensor, in_degree: Tensor | None, out_degree: Tensor | None) -> Tensor:
        if in_degree is None or out_degree is None:
            raise ValueError(f"CentralityEncoding: in_degree / out_degree are missing: {_MISSING}")
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(
                f"CentralityEncoding: expected x of shape [N, {self.channels}], got {tuple(x.shape)}"
            )
        for name, d in (("in_degree", in_degree), ("out_degree", out_degree)):
            _check_index_vector("CentralityEncoding", name, d, x.size(0))
        K = self.max_degree
        z_in = self.z_in.weight.index_select(0, in_degree.clamp_max(K))
        return x + z_in + self.z_out.weight.index_select(0, out_degree.clamp_max(K))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, max_degree={self.max_degree})"


class GraphormerAttention(torch.nn.Module):
    r"""Multi-head attention within each graph with Graphormer's spatial bias (Ying et al.,
    NeurIPS 2021, Eq. 6):

    .. math::
        x'_i = W_O \big\Vert_{h} \sum_{j \in G(i)} \operatorname{softmax}_j\Big(
            \frac{\langle W^h_Q x_i, W^h_K x_j\rangle}{\sqrt{d}} + b^h_{\phi(j, i)}\Big)
            W^h_V x_j,

    :math:`b` a :class:`GraphormerBias` (far / unreachable pairs share one bias per head),
    computed by :class:`FullAttention` (its C kernel on CPU, bucketed
    ``scaled_dot_product_attention`` with a float mask on GPU).  See the module docstring for
    the orientation of :math:`\phi` on directed graphs.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads (divides ``channels``).
        dropout (float): dropout on the attention weights.
        max_dist (int): largest distance with its own bias (use ``AddSPD(max_dist)`` with the
            same value or larger).
        strategy (str): :class:`FullAttention`'s strategy.

    Shapes: ``x [N, C]``, ``batch [N]`` (sorted), ``spd_index [2, M]``, ``spd_val [M]`` ->
    ``[N, C]``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        dropout: float = 0.0,
        max_dist: int = 5,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        self.attn = FullAttention(channels, heads=heads, dropout=dropout, strategy=strategy)
        self.spatial = GraphormerBias(self.attn.heads, max_dist)

    @property
    def channels(self) -> int:
        return self.attn.channels

    @property
    def heads(self) -> int:
        return self.attn.heads

    @property
    def max_dist(self) -> int:
        return self.spatial.max_dist

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        self.spatial.reset_parameters()

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        spd_index: Tensor | None = None,
        spd_val: Tensor | None = None,
        cache: dict | None = None,
    ) -> Tensor:
        """``cache``: as :meth:`FullAttention.forward` (layers sharing it and ``spd_index``
        check and place the pairs once)."""
        if spd_index is None or spd_val is None:
            raise ValueError(f"GraphormerAttention: spd_index / spd_val are missing: {_MISSING}")
        pair_index, pair_bias = self.spatial.shifted(spd_index, spd_val)
        return self.attn(x, batch, cache, pair_index=pair_index, pair_bias=pair_bias)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.attn.dropout}, max_dist={self.max_dist}, "
            f"strategy={self.attn.strategy!r})"
        )
