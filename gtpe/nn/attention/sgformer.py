r"""SGFormer's simple global attention, one linear-time layer per graph of a PyG mini-batch.

Wu et al., `"SGFormer: Simplifying and Empowering Transformers for Large-Graph
Representations" <https://arxiv.org/abs/2306.10759>`_ (NeurIPS 2023), Eq. (3)-(4).  For the
:math:`n` nodes of one graph with features :math:`Z` and each head,

.. math::
    Q = Z W_Q + b_Q,\quad K = Z W_K + b_K,\quad V = Z W_V + b_V,\qquad
    \tilde Q = \frac{Q}{\lVert Q\rVert_F},\quad \tilde K = \frac{K}{\lVert K\rVert_F},

.. math::
    D = \operatorname{diag}\!\Big(\mathbf 1 + \tfrac1n \tilde Q\big(\tilde K^\top \mathbf 1\big)\Big),
    \qquad
    Z' = D^{-1}\Big[V + \tfrac1n \tilde Q\big(\tilde K^\top V\big)\Big]
       = \frac{n V + \tilde Q(\tilde K^\top V)}{n + \tilde Q(\tilde K^\top \mathbf 1)},

and the heads (each :math:`C` wide) are averaged, as in the official code.  The paper's residual
mix :math:`\beta Z' + (1-\beta) Z` is left to the caller (``GPSLayer`` adds the residual).
Products are taken right to left, so the cost is :math:`O(n H C^2)` time and :math:`O(H C^2)`
extra memory per graph: no :math:`n \times n` matrix.  :math:`\lVert\cdot\rVert_F` is taken over
all nodes and heads of the graph (the official code's ``torch.norm(qs, p=2)``); since
:math:`\tilde Q \tilde K^\top = Q K^\top / (\lVert Q\rVert_F \lVert K\rVert_F)`, the two norms
scale the small :math:`C \times (C+1)` context of each graph instead of :math:`Q` and :math:`K`.
``qk_norm='node'`` normalises each node's per-head query and key to unit length instead, as
PyG's :class:`torch_geometric.nn.attention.SGFormerAttention` does.

Each graph of a batch attends only to itself (:math:`n` is its own size).  PyG's module pads the
graphs to the largest one and counts the padding in :math:`n` and in the normaliser, so it
agrees with this module only when the graphs have the same size.

The per-graph sums are computed by :class:`GraphLayout` (also used by
:mod:`gtpe.nn.attention.polynormer`): plain sums for one graph, batched matmuls over the graphs
padded into size classes otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from gtpe.nn.ops import check_batch_shape, check_positive_int, scatter_sum

__all__ = ["GraphLayout", "SGFormerAttention"]

QK_NORMS = ("graph", "node")


class GraphLayout:
    r"""Per-graph sums of a linear attention as batched matmuls.

    For a batch of graphs (``batch [N]`` graph ids, sorted or not; ``None`` = one graph) it
    computes, for every graph :math:`g`,

    * :meth:`context`: :math:`\sum_{j \in g} k_j v_j^\top` (``k [N, H, m]``, ``v [N, H, e]`` ->
      ``[B, H, m, e]``),
    * :meth:`apply`: :math:`q_i\, \mathrm{ctx}_{g(i)}` (``q [N, H, m]``, ``ctx [B, H, m, e]`` ->
      ``[N, H, e]``),
    * :meth:`sum` / :meth:`expand`: segment sums ``[N, *] -> [B, *]`` and back ``[B, *] -> [N, *]``.

    One graph: plain sums.  Graphs of equal size in a sorted batch: the node tensors are viewed
    as ``[B, L, ...]`` (no copy).  Otherwise the nodes are placed in zero-padded ``[B_c, L_c]``
    blocks, one block for all graphs when that pads at most ``max_padding`` times ``N`` rows,
    else one block per size class :math:`\lceil\log_2 n_g\rceil` (at most twice the nodes in
    each), so memory stays :math:`O(N)` however uneven the sizes.  Padded rows are zero, so
    they add nothing to a context.  Building a layout reads the graph sizes on the host (a
    device sync; pass ``num_graphs`` to save another).
    """

    def __init__(
        self,
        batch: Tensor | None,
        num_nodes: int,
        num_graphs: int | None = None,
        max_padding: float = 2.0,
    ) -> None:
        N = int(num_nodes)
        self.num_nodes = N
        self.batch = batch
        if batch is not None and num_graphs is None:
            num_graphs = int(batch.max()) + 1 if N > 0 else 1
        B = 1 if batch is None else int(num_graphs)  # type: ignore[arg-type]
        self.num_graphs = B
        self.single = B == 1
        self.dense = False
        self._buckets: list[tuple[Tensor | None, Tensor, Tensor | None, int, int]] = []
        if self.single:
            self.batch = None
            self.counts = torch.full((1,), N, dtype=torch.long)
            return
        assert batch is not None
        dev = batch.device
        counts = torch.bincount(batch, minlength=B)
        self.counts = counts
        unsorted = (batch[1:] < batch[:-1]).any().view(1) if N > 1 else counts.new_zeros(1)
        stats = torch.cat([counts, unsorted.long()]).tolist()  # the host sync
        sizes, is_sorted = stats[:B], not stats[B]
        L = max(sizes)
        start = counts.cumsum(0) - counts
        if is_sorted and B * L == N:  # equal sizes, sorted: [N, ...] is [B, L, ...]
            self.dense, self.L = True, L
            return
        ar = torch.arange(N, device=dev)
        if is_sorted:
            rank = ar - start.index_select(0, batch)
        else:  # position of each node within its graph, in the order given
            order = torch.argsort(batch, stable=True)
            rank = torch.empty_like(ar).index_copy_(
                0, order, ar - start.index_select(0, batch.index_select(0, order))
            )
        if B * L <= max_padding * N:  # one padded block for all graphs
            self._buckets.append((None, batch * L + rank, None, B, L))
            return
        # one block per size class ceil(log2(n)); empty graphs are in no block
        classes = [math.ceil(math.log2(n)) if n > 0 else -1 for n in sizes]
        bucket_of: list[int] = []
        local_id = [0] * B
        members: dict[int, list[int]] = {}
        for g, c in enumerate(classes):
            if c >= 0:
                local_id[g] = len(members.setdefault(c, []))
                members[c].append(g)
        keys = sorted(members)
        slot = {c: i for i, c in enumerate(keys)}
        bucket_of = [slot[c] if c >= 0 else len(keys) for c in classes]
        node_bucket = torch.tensor(bucket_of, device=dev).index_select(0, batch)
        order = torch.argsort(node_bucket, stable=True)
        lid = torch.tensor(local_id, device=dev)
        node_counts = [sum(sizes[g] for g in members[c]) for c in keys]
        for c, nodes in zip(keys, order.split(node_counts)):
            Lc = max(sizes[g] for g in members[c])
            gb = batch.index_select(0, nodes)
            pos = lid.index_select(0, gb) * Lc + rank.index_select(0, nodes)
            graphs = torch.tensor(members[c], device=dev)
            self._buckets.append((nodes, pos, graphs, len(members[c]), Lc))

    # -- segment sums --------------------------------------------------------------------------
    def sum(self, t: Tensor) -> Tensor:
        """``[N, *] -> [B, *]``: sum of the rows of each graph."""
        if self.single:
            return t.sum(0, keepdim=True)
        if self.dense:
            return t.reshape(self.num_graphs, self.L, *t.shape[1:]).sum(1)
        assert self.batch is not None
        return scatter_sum(t, self.batch, self.num_graphs)

    def expand(self, t: Tensor) -> Tensor:
        """``[B, *] -> [N, *]`` (each node gets its graph's row; ``[1, *]`` for one graph)."""
        if self.single:
            return t
        if self.dense:
            return t.repeat_interleave(self.L, dim=0)
        assert self.batch is not None
        return t.index_select(0, self.batch)

    # -- batched matmuls -----------------------------------------------------------------------
    @staticmethod
    def _pad(t: Tensor, nodes: Tensor | None, pos: Tensor, Bc: int, Lc: int) -> Tensor:
        src = t if nodes is None else t.index_select(0, nodes)
        z = t.new_zeros((Bc * Lc,) + tuple(t.shape[1:])).index_copy(0, pos, src)
        return z.view((Bc, Lc) + tuple(t.shape[1:]))

    def context(self, k: Tensor, v: Tensor) -> Tensor:
        r"""``k [N, H, m]``, ``v [N, H, e]`` -> ``[B, H, m, e]``:
        :math:`\sum_{j \in g} k_j v_j^\top` per graph and head."""
        if self.single:
            return torch.einsum("nhm,nhe->hme", k, v).unsqueeze(0)
        B = self.num_graphs
        if self.dense:
            L = self.L
            return torch.einsum("blhm,blhe->bhme", k.reshape(B, L, *k.shape[1:]), v.reshape(B, L, *v.shape[1:]))
        ctxs, ids = [], []
        for nodes, pos, graphs, Bc, Lc in self._buckets:
            kp, vp = self._pad(k, nodes, pos, Bc, Lc), self._pad(v, nodes, pos, Bc, Lc)
            ctxs.append(torch.einsum("blhm,blhe->bhme", kp, vp))
            if graphs is None:
                return ctxs[0]
            ids.append(graphs)
        H, m, e = k.size(1), k.size(2), v.size(2)
        out = k.new_zeros(B, H, m, e)  # graphs without nodes keep a zero context
        return out.index_copy(0, torch.cat(ids), torch.cat(ctxs))

    def apply(self, q: Tensor, ctx: Tensor) -> Tensor:
        r"""``q [N, H, m]``, ``ctx [B, H, m, e]`` -> ``[N, H, e]``: :math:`q_i\,\mathrm{ctx}_{g(i)}`."""
        N, H, e = q.size(0), q.size(1), ctx.size(-1)
        if self.single:
            return torch.einsum("nhm,hme->nhe", q, ctx[0])
        if self.dense:
            B, L = self.num_graphs, self.L
            return torch.einsum("blhm,bhme->blhe", q.reshape(B, L, H, -1), ctx).reshape(N, H, e)
        outs, ids = [], []
        for nodes, pos, graphs, Bc, Lc in self._buckets:
            c = ctx if graphs is None else ctx.index_select(0, graphs)
            o = torch.einsum("blhm,bhme->blhe", self._pad(q, nodes, pos, Bc, Lc), c)
            o = o.reshape(Bc * Lc, H, e).index_select(0, pos)
            if nodes is None:
                return o
            outs.append(o)
            ids.append(nodes)
        return q.new_zeros(N, H, e).index_copy(0, torch.cat(ids), torch.cat(outs))


class SGFormerAttention(torch.nn.Module):
    r"""SGFormer's simple global attention within each graph (see the module docstring).

    Args:
        channels (int): input/output size :math:`C` (every head is :math:`C` wide, as in
            SGFormer; the heads are averaged).
        heads (int): number of heads :math:`H`.
        bias (bool): learn :math:`b_Q, b_K, b_V` (the official code's ``nn.Linear`` default;
            PyG's ``qkv_bias`` defaults to ``False``).
        qk_norm (str): ``'graph'`` (the paper: :math:`Q / \lVert Q\rVert_F` over the graph's
            nodes and heads, same for :math:`K`) or ``'node'`` (each node's per-head query and
            key scaled to unit length, as PyG's ``SGFormerAttention``).

    The projections are one parameter ``in_proj_weight [3 H C, C]`` (rows :math:`W_Q`,
    :math:`W_K`, :math:`W_V`, head-major; applied as three matmuls, whose contiguous outputs
    keep the elementwise ops fast) and ``in_proj_bias [3 H C]``.
    ``forward(x [N, C], batch [N] = None, num_graphs = None) -> [N, C]``; ``num_graphs``
    saves a device sync; an empty batch gives ``[0, C]``.  A graph whose queries (or keys) are
    all zero gets :math:`\tilde Q = 0` (output :math:`V`), not NaN.
    """

    def __init__(
        self, channels: int, heads: int = 1, bias: bool = True, qk_norm: str = "graph"
    ) -> None:
        super().__init__()
        # every head is C wide (heads need not divide channels)
        channels = check_positive_int("SGFormerAttention", "channels", channels)
        heads = check_positive_int("SGFormerAttention", "heads", heads)
        if qk_norm not in QK_NORMS:
            raise ValueError(
                f"SGFormerAttention: qk_norm must be one of {QK_NORMS}, got {qk_norm!r}"
            )
        self.channels = channels
        self.heads = heads
        self.qk_norm = qk_norm
        self.in_proj_weight = Parameter(torch.empty(3 * heads * channels, channels))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * heads * channels))
        else:
            self.register_parameter("in_proj_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as three torch.nn.Linear(C, H * C) (the official code): fan_in = C
        torch.nn.init.kaiming_uniform_(self.in_proj_weight, a=math.sqrt(5))
        if self.in_proj_bias is not None:
            bound = 1.0 / math.sqrt(self.channels)
            torch.nn.init.uniform_(self.in_proj_bias, -bound, bound)

    def forward(
        self, x: Tensor, batch: Tensor | None = None, num_graphs: int | None = None
    ) -> Tensor:
        C, H = self.channels, self.heads
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(
                f"SGFormerAttention: expected x of shape [N, {C}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is not None:
            check_batch_shape("SGFormerAttention", batch, N)
        if N == 0:
            return x * 0.0
        layout = GraphLayout(batch, N, num_graphs)
        # three matmuls, not one fused [N, 3HC] output: contiguous q, k, v keep the elementwise
        # ops below (and their backward) on contiguous memory, about twice as fast on CPU
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (
            F.linear(x, w, b).view(N, H, C) for w, b in zip(self.in_proj_weight.chunk(3), bias)
        )
        tiny = torch.finfo(x.dtype).tiny
        n = layout.expand(layout.counts.to(device=x.device, dtype=x.dtype)).view(-1, 1, 1)
        scale = None
        if self.qk_norm == "graph":
            # 1 / (||Q_g||_F ||K_g||_F), applied to the [C, C+1] context of each graph
            ssq = layout.sum(torch.stack([q.square().sum((1, 2)), k.square().sum((1, 2))], -1))
            scale = ssq.prod(-1).clamp_min(tiny).rsqrt()  # [B]
        else:
            # q_i / |q_i| is not formed: (o_i / |q_i| + n v_i) / (. + n) = (o_i + n |q_i| v_i) / (. + n |q_i|)
            n = n * torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(tiny**0.5)
            # k / |k| as a product with the [N, H, 1] reciprocal: a lighter backward than a division
            k = k * torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(tiny**0.5).reciprocal()
        # [B, H, C, C+1]: K^T V and K^T 1 side by side -> numerator and normaliser in one matmul
        ctx = torch.cat([layout.context(k, v), layout.sum(k).unsqueeze(-1)], dim=-1)
        if scale is not None:
            ctx = ctx * scale.view(-1, 1, 1, 1)
        # split, not slices: its backward is one cat (slices would each zero-fill [N, H, C+1])
        num, den = layout.apply(q, ctx).split([C, 1], dim=-1)  # [N, H, C], [N, H, 1]
        out = torch.addcmul(num, v, n) * (den + n).reciprocal()  # [N, H, C]
        return out.squeeze(1) if H == 1 else out.mean(1)

    @classmethod
    def from_pyg(cls, module: torch.nn.Module) -> SGFormerAttention:
        """An :class:`SGFormerAttention` with the weights of PyG's
        ``torch_geometric.nn.attention.SGFormerAttention`` (``head_channels == channels``),
        ``qk_norm='node'`` (PyG's normalisation)."""
        C, H = module.q.in_features, module.heads
        if module.head_channels != C:
            raise ValueError(
                f"SGFormerAttention.from_pyg: needs head_channels == channels ({C}), "
                f"got head_channels={module.head_channels}"
            )
        bias = module.q.bias is not None
        out = cls(C, heads=H, bias=bias, qk_norm="node").to(module.q.weight.device)
        out = out.to(module.q.weight.dtype)
        with torch.no_grad():
            out.in_proj_weight.copy_(torch.cat([module.q.weight, module.k.weight, module.v.weight]))
            if bias:
                out.in_proj_bias.copy_(torch.cat([module.q.bias, module.k.bias, module.v.bias]))
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"bias={self.in_proj_bias is not None}, qk_norm={self.qk_norm!r})"
        )
