r"""Graphormer's spatial, edge and centrality encodings on :class:`FullAttention`.

Ying et al., "Do Transformers Really Perform Bad for Graph Representation?", NeurIPS 2021
(https://arxiv.org/abs/2106.05234).  Attention with a learned per-head bias indexed by the
shortest-path distance (spatial encoding, Eq. 6), optionally plus the edge encoding along a
shortest path (Eq. 7, :class:`GraphormerEdgeEncoding`),

.. math::
    A^h_{ij} = \frac{\langle W^h_Q x_i, W^h_K x_j\rangle}{\sqrt{d}} + b^h_{\phi(j, i)}
        \;(+\, c^h_{ji}),

and node features shifted by learned in/out-degree embeddings (centrality encoding, Eq. 5),
:math:`x_i + z^-_{\deg^-(i)} + z^+_{\deg^+(i)}`.  The distances come from
:class:`gtpe.transforms.AddSPD` (``spd_index``, ``spd_val``, ``in_degree``, ``out_degree``).

Orientation: ``spd_index`` row 0 is the start of a path and row 1 its end; it is passed to
:class:`FullAttention` as ``pair_index`` (row 0 the key ``j``, row 1 the query ``i``), so query
``i`` sees the distance from key ``j`` to ``i``, as ``GRITAttention`` reads ``rrwp_index``.
On undirected graphs (Graphormer's molecules) :math:`\phi` is symmetric and both readings agree;
on directed graphs pass ``spd_index.flip(0)`` for the paper's literal :math:`\phi(v_i, v_j)`.
The edge encoding reads the same columns: :math:`c_{ji}` averages the edges of the path of
``spd_path_index`` from key ``j`` to query ``i`` (hop 1 at ``j``).  On undirected graphs this
is the paper's :math:`c_{ij}` with the path read from the other end (the same edges, the hop
weights :math:`w^E_n` numbered from ``j`` instead of ``i``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding

from gtpe.nn.attention.full import FullAttention
from gtpe.nn.ops import checks_enabled

_MISSING = "compute them with gtpe.transforms.AddSPD(max_dist=...) (as a pre_transform)"
# the key under which GraphormerAttention finds the edge encoding in its ``cache`` (GPSModel
# puts it in the state dict that GPSLayer hands its attention as the cache)
EDGE_BIAS_KEY = "graphormer_edge_bias"


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


class GraphormerEdgeEncoding(torch.nn.Module):
    r"""Graphormer's edge encoding along shortest paths (Ying et al., NeurIPS 2021, Eq. 7):

    .. math::
        c_{m} = \frac{1}{N_m} \sum_{n=1}^{N_m} x_{e_n} W^E_n, \qquad
        N_m = \min(\phi_m, P), \quad W^E_n \in \mathbb{R}^{H \times H},

    per pair ``m`` (a column of ``spd_path_index``), :math:`(e_1, \ldots, e_{N_m})` the edges
    of its path's first :math:`N_m` steps, :math:`x_e \in \mathbb{R}^H` the edge features
    already encoded to ``heads`` dims (Graphormer: one embedding per edge feature), :math:`P`
    = ``path_len`` (Graphormer's ``multi_hop_max_dist``, one learned :math:`W^E_n` per hop, the
    paper's :math:`(w^E_n)^T` for all heads at once; row vector times matrix, as its code);
    :math:`c_m = 0` for pairs without a step (``(i, i)``).  Pairs with a farther shortest path
    average their first :math:`P` edges, as Graphormer's truncation.

    ``forward(edge_attr [E, H], edge_index [2, E], spd_path_index [R, M], num_nodes=None)``
    returns ``[M, H]``; ``spd_path_index`` comes from
    :class:`gtpe.transforms.AddSPD` with ``path_len >= P`` (``R >= P + 1`` rows; only the first
    ``P + 1`` are read, so a longer path gives the same result).  A step ``(a, b)``, ``a != b``,
    takes the features of edge ``a -> b`` of ``edge_index``, or, if there is none, of ``b ->
    a`` (``AddSPD(directed=False)`` walks edges both ways); of duplicate edges the first in
    ``edge_index`` order; a step that is no edge is a ``ValueError``.  Cost: one stable sort of
    the ``2E`` edge keys, one sorted search and one gather of ``[P * M, H]`` per forward (the
    ``[E * P, H]`` products :math:`x_e W^E_n` are computed once); one host sync for the check
    (skipped under ``torch.compile`` / tracing).  ``num_nodes`` (default: the largest id + 1,
    one more sync) bounds the node ids.
    """

    def __init__(self, heads: int, path_len: int) -> None:
        super().__init__()
        self.heads = _check_int("GraphormerEdgeEncoding", "heads", heads, 1)
        self.path_len = _check_int("GraphormerEdgeEncoding", "path_len", path_len, 1)
        self.weight = torch.nn.Parameter(torch.empty(self.path_len, self.heads, self.heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.weight, std=0.02)  # as Graphormer's edge_dis_encoder

    def forward(
        self,
        edge_attr: Tensor,
        edge_index: Tensor,
        spd_path_index: Tensor | None,
        num_nodes: int | None = None,
    ) -> Tensor:
        owner, P, H = "GraphormerEdgeEncoding", self.path_len, self.heads
        if spd_path_index is None:
            raise ValueError(
                f"{owner}: spd_path_index is missing: compute it with "
                f"gtpe.transforms.AddSPD(max_dist=..., path_len={P}) (as a pre_transform)"
            )
        if not isinstance(spd_path_index, Tensor) or spd_path_index.dim() != 2 \
                or spd_path_index.dtype != torch.long or spd_path_index.size(0) < P + 1:
            what = (f"{spd_path_index.dtype} of shape {tuple(spd_path_index.shape)}"
                    if isinstance(spd_path_index, Tensor) else type(spd_path_index).__name__)
            raise ValueError(
                f"{owner}: spd_path_index must be a long tensor [path_len + 1, M] with "
                f"path_len >= {P} (gtpe.transforms.AddSPD(max_dist=..., path_len={P})), got {what}"
            )
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 \
                or edge_index.size(0) != 2 or edge_index.dtype != torch.long:
            raise ValueError(f"{owner}: edge_index must be a long tensor [2, E]")
        E = edge_index.size(1)
        if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point() \
                or tuple(edge_attr.shape) != (E, H):
            what = (f"{edge_attr.dtype} of shape {tuple(edge_attr.shape)}"
                    if isinstance(edge_attr, Tensor) else type(edge_attr).__name__)
            raise ValueError(
                f"{owner}: edge_attr must be a float tensor [E, heads] = [{E}, {H}] (edge "
                f"features encoded to one value per head), got {what}"
            )
        path = spd_path_index[: P + 1]
        M = path.size(1)
        a, b = path[:-1].reshape(-1), path[1:].reshape(-1)         # step n of pair m at n*M+m
        real = a != b                                               # the steps; then padding
        if num_nodes is None:
            num_nodes = int(torch.cat([edge_index.reshape(-1), path.reshape(-1)]).max()) + 1 \
                if E + path.numel() else 0
        N = max(int(num_nodes), 1)
        # one sorted search over the keys a * N + b of the edges, then of the reversed edges (a
        # stable sort: the first edge a -> b in edge_index order wins, any a -> b over b -> a)
        key, order = torch.sort(torch.cat([edge_index[0] * N + edge_index[1],
                                           edge_index[1] * N + edge_index[0]]), stable=True)
        q = a * N + b
        pos = torch.searchsorted(key, q).clamp_max(max(2 * E - 1, 0))
        found = key.index_select(0, pos) == q if E else torch.zeros_like(real)
        if checks_enabled() and q.numel():
            ok = ~real | (found & (a >= 0) & (a < N) & (b >= 0) & (b < N))
            if not bool(ok.all()):
                r = int(torch.nonzero(~ok)[0])
                raise ValueError(
                    f"{owner}: step {int(a[r])} -> {int(b[r])} of spd_path_index column "
                    f"{r % M} is not an edge of edge_index in either direction (node ids "
                    f"in [0, {N})): the paths must come from AddSPD on this graph"
                )
        # x_e W^E_n for every edge and hop at once, [E * P, H] (row e * P + n), and a zero row
        # E * P that every padding step reads; then a dense sum over the hops
        table = (edge_attr @ self.weight.transpose(0, 1).reshape(H, P * H)).view(E * P, H)
        table = torch.cat([table, table.new_zeros(1, H)])
        hop = torch.arange(P, device=q.device).repeat_interleave(M)
        eid = order.index_select(0, pos) % max(E, 1) if E else pos
        row = torch.where(real & found, eid * P + hop, E * P)
        out = table.index_select(0, row).view(P, M, H).sum(0)
        steps = real.view(P, M).sum(0).clamp_min(1).to(out.dtype)
        return out / steps.unsqueeze(1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(heads={self.heads}, path_len={self.path_len})"


class GraphormerAttention(torch.nn.Module):
    r"""Multi-head attention within each graph with Graphormer's spatial bias (Ying et al.,
    NeurIPS 2021, Eq. 6):

    .. math::
        x'_i = W_O \big\Vert_{h} \sum_{j \in G(i)} \operatorname{softmax}_j\Big(
            \frac{\langle W^h_Q x_i, W^h_K x_j\rangle}{\sqrt{d}} + b^h_{\phi(j, i)}\Big)
            W^h_V x_j,

    :math:`b` a :class:`GraphormerBias` (far / unreachable pairs share one bias per head),
    plus, if given, ``edge_bias`` :math:`c^h_{ji}` at the listed pairs (Eq. 7,
    :class:`GraphormerEdgeEncoding`; unlisted pairs get none),
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

    Shapes: ``x [N, C]``, ``batch [N]`` (sorted), ``spd_index [2, M]``, ``spd_val [M]``,
    ``edge_bias [M, heads]`` (optional) -> ``[N, C]``.
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
        edge_bias: Tensor | None = None,
    ) -> Tensor:
        """``cache``: as :meth:`FullAttention.forward` (layers sharing it and ``spd_index``
        check and place the pairs once).  ``edge_bias [M, heads]``: added to the spatial bias
        of the pairs of ``spd_index``; when ``None``, ``cache[EDGE_BIAS_KEY]`` if present
        (``'graphormer_edge_bias'``: how :class:`~gtpe.models.GPSModel` hands the edge encoding
        to every layer through :class:`~gtpe.nn.GPSLayer`'s ``state``)."""
        if spd_index is None or spd_val is None:
            raise ValueError(f"GraphormerAttention: spd_index / spd_val are missing: {_MISSING}")
        pair_index, pair_bias = self.spatial.shifted(spd_index, spd_val)
        if edge_bias is None and cache is not None:
            edge_bias = cache.get(EDGE_BIAS_KEY)
        if edge_bias is not None:
            M = pair_bias.size(0)
            if not isinstance(edge_bias, Tensor) or not edge_bias.is_floating_point() \
                    or tuple(edge_bias.shape) != (M, self.heads):
                what = (f"{edge_bias.dtype} of shape {tuple(edge_bias.shape)}"
                        if isinstance(edge_bias, Tensor) else type(edge_bias).__name__)
                raise ValueError(
                    f"GraphormerAttention: edge_bias must be a float tensor [M, heads] = "
                    f"[{M}, {self.heads}] (one value per pair of spd_index and head), got {what}"
                )
            pair_bias = pair_bias + edge_bias
        return self.attn(x, batch, cache, pair_index=pair_index, pair_bias=pair_bias)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.attn.dropout}, max_dist={self.max_dist}, "
            f"strategy={self.attn.strategy!r})"
        )
