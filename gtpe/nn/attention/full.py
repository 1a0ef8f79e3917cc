r"""Exact multi-head softmax attention within each graph of a PyG mini-batch.

Vaswani et al., "Attention Is All You Need" (NeurIPS 2017), as the global module of GraphGPS
(Rampášek et al., "Recipe for a General, Powerful, Scalable Graph Transformer", NeurIPS 2022):

.. math::
    \mathbf{x}'_i = W_O \big\Vert_{h=1}^{H} \sum_{j \in G(i)}
        \operatorname{softmax}_j\Big(\frac{\langle W^h_Q x_i, W^h_K x_j\rangle}{\sqrt{d}}\Big)
        W^h_V x_j,\qquad d = C / H,

where :math:`G(i)` is the set of nodes of the graph that contains :math:`i`.  Nothing flows
between graphs.  Parameters are laid out as in :class:`torch.nn.MultiheadAttention`
(``in_proj_weight [3C, C]``, ``in_proj_bias [3C]``, ``out_proj = Linear(C, C)``), so weights can
be copied from one (e.g. PyG's ``GPSConv.attn``) and the outputs agree per graph.

How the graphs are batched (``strategy``; all give the same result):

* ``'auto'`` (default): size-bucketed padding.  Graphs are sorted by size and split
  recursively into buckets where that lowers the padded cost :math:`\sum_b |b|\,L_b^2` by more
  than the (estimated) cost of one extra kernel call; each bucket is padded only to its own
  largest graph and goes through one :func:`torch.nn.functional.scaled_dot_product_attention`
  call with a key-padding mask (no mask when all its graphs have the same size).  Q/K/V and the
  output projection act on the ``[N, C]`` node rows, not on padded rows.  ZINC-like batches
  (9-37 nodes) get 1-4 buckets; a batch with a few large graphs no longer pads every small
  graph to the largest one.
* ``'pad'``: a single bucket (pad every graph to the largest one, like ``to_dense_batch``).
* ``'pairs'``: sparse attention over all intra-graph pairs with :func:`gtpe.nn.ops.scatter_softmax`
  (memory :math:`O(\sum_g n_g^2)`; 3-4x slower than ``'auto'`` on CPU, kept for comparison).
* ``'block'``: one attention over all :math:`N` nodes with a block-diagonal mask
  (memory :math:`O(N^2)`; kept for comparison).

Nested (jagged) tensors were tried too: ``scaled_dot_product_attention`` on jagged tensors has
no CPU kernel in torch 2.13 ("No viable backend"), so they are not used.  ``batch`` must be
sorted (PyG convention); the per-call size planning needs the graph sizes on the host (one
``.tolist()``), so under ``torch.compile`` the module runs with a graph break there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter

from gtpe.nn.ops import scatter_softmax, scatter_sum

_STRATEGIES = ("auto", "pad", "pairs", "block")


# Estimated fixed cost of one extra attention call, in units of one (query, key) pair of work.
_CALL_OVERHEAD = 4096


def _split(sizes: list[int], lo: int, hi: int, out: list[tuple[int, int]]) -> None:
    # sizes sorted ascending; range [lo, hi) padded to sizes[hi - 1] costs (hi - lo) * L^2.
    L2 = sizes[hi - 1] ** 2
    single = (hi - lo) * L2
    best, best_t = single, -1
    for t in range(lo + 1, hi):
        if sizes[t - 1] == sizes[t]:
            continue
        c = (t - lo) * sizes[t - 1] ** 2 + (hi - t) * L2
        if c < best:
            best, best_t = c, t
    if best_t < 0 or best + _CALL_OVERHEAD >= single:
        out.append((lo, hi))
        return
    _split(sizes, lo, best_t, out)
    _split(sizes, best_t, hi, out)


def _plan_buckets(sizes: list[int], auto: bool) -> list[tuple[list[int], int]]:
    r"""Group graph ids by size.  Returns ``[(graph_ids, padded_len), ...]`` (empty graphs skipped).

    ``auto=False``: one bucket.  ``auto=True``: sort the graphs by size and split recursively
    at the point that minimises the padded attention cost :math:`\sum_b |b| L_b^2`, as long as
    a split saves more than the estimated cost of one extra attention call.
    """
    ids = [g for g, n in enumerate(sizes) if n > 0]
    if not ids:
        return []
    if not auto:
        return [(ids, max(sizes[g] for g in ids))]
    ids.sort(key=lambda g: sizes[g])
    srt = [sizes[g] for g in ids]
    ranges: list[tuple[int, int]] = []
    _split(srt, 0, len(srt), ranges)
    return [(ids[lo:hi], srt[hi - 1]) for lo, hi in ranges]


def _sorted_counts(batch: Tensor) -> Tensor:
    """Nodes per graph; raises if ``batch`` is not sorted (graphs must be contiguous)."""
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(
            "FullAttention: batch must be sorted (nodes of a graph contiguous, PyG convention)"
        )
    return torch.bincount(batch)


class FullAttention(torch.nn.Module):
    r"""Exact multi-head self-attention restricted to each graph of a mini-batch.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads :math:`H` (must divide ``channels``).
        dropout (float): dropout on the attention weights (as ``nn.MultiheadAttention``).
        bias (bool): learn ``in_proj_bias`` and ``out_proj.bias``.
        strategy (str): ``'auto'`` | ``'pad'`` | ``'pairs'`` | ``'block'``
            (see the module docstring).  All give the same result.

    Shapes: ``x [N, C]``, ``batch [N]`` (sorted graph ids, PyG convention) -> ``[N, C]``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if channels <= 0 or heads <= 0 or channels % heads != 0:
            raise ValueError(
                f"FullAttention: channels ({channels}) must be a positive multiple "
                f"of heads ({heads})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FullAttention: dropout must be in [0, 1), got {dropout}")
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"FullAttention: strategy must be one of {_STRATEGIES}, got {strategy!r}"
            )
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.dropout = float(dropout)
        self.strategy = strategy
        self.in_proj_weight = Parameter(torch.empty(3 * channels, channels))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * channels))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(channels, channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as torch.nn.MultiheadAttention.
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        if self.out_proj.bias is not None:
            torch.nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, batch: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(
                f"FullAttention: expected x of shape [N, {self.channels}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is None:
            batch = x.new_zeros(N, dtype=torch.long)
        elif batch.shape != (N,):
            raise ValueError(
                f"FullAttention: batch must have shape [{N}], got {tuple(batch.shape)}"
            )
        if N == 0:
            return self.out_proj(x)
        p = self.dropout if self.training else 0.0
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, 3C]
        strategy = self.strategy
        if strategy in ("auto", "pad"):
            out = self._bucketed(qkv, batch, p, auto=strategy != "pad")
        elif strategy == "pairs":
            out = self._pairs(qkv, batch, p)
        else:
            out = self._block(qkv, batch, p)
        return self.out_proj(out)

    # -- strategies ---------------------------------------------------------------------------
    def _bucketed(self, qkv: Tensor, batch: Tensor, p: float, auto: bool) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        counts = _sorted_counts(batch)
        sizes: list[int] = counts.tolist()
        buckets = _plan_buckets(sizes, auto)
        if len(buckets) == 1 and len(buckets[0][0]) == 1:  # one graph: no padding at all
            q, k, v = qkv.view(1, N, 3, H, D).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            return o.transpose(1, 2).reshape(N, H * D)
        # Flat padded buffer: graph g occupies [offset_g, offset_g + L_bucket(g)).
        offsets = [0] * len(sizes)
        base = 0
        for ids, L in buckets:
            for g in ids:
                offsets[g] = base
                base += L
        total = base
        start = counts.cumsum(0) - counts  # first node of each graph
        off = torch.tensor(offsets, dtype=torch.long, device=qkv.device)
        idx = torch.arange(N, device=qkv.device) + (off - start).index_select(0, batch)  # [N]
        dense = qkv.new_zeros(total, qkv.size(1)).index_copy(0, idx, qkv)  # [total, 3C]
        outs = []
        pos = 0
        for ids, L in buckets:
            nb = len(ids)
            chunk = dense[pos : pos + nb * L]
            q, k, v = chunk.view(nb, L, 3, H, D).permute(2, 0, 3, 1, 4)  # each [nb, H, L, D]
            mask = None
            if any(sizes[g] != L for g in ids):
                lens = torch.tensor([sizes[g] for g in ids], device=qkv.device)
                mask = (torch.arange(L, device=qkv.device) < lens.unsqueeze(1)).view(nb, 1, 1, L)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            outs.append(o.transpose(1, 2).reshape(nb * L, H * D))
            pos += nb * L
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        return out.index_select(0, idx)

    def _pairs(self, qkv: Tensor, batch: Tensor, p: float) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        counts = _sorted_counts(batch)
        start = counts.cumsum(0) - counts
        # all ordered pairs (i, j) of the same graph: i repeated n_g times, j over the graph
        n_i = counts.index_select(0, batch)  # [N]
        dst = torch.repeat_interleave(torch.arange(N, device=qkv.device), n_i)  # query i
        P = dst.numel()
        first = torch.repeat_interleave(n_i.cumsum(0) - n_i, n_i)
        src = start.index_select(0, batch.index_select(0, dst)) + (
            torch.arange(P, device=qkv.device) - first
        )
        q, k, v = qkv.view(N, 3, H, D).unbind(1)
        score = (q.index_select(0, dst) * k.index_select(0, src)).sum(-1) / math.sqrt(D)  # [P, H]
        alpha = scatter_softmax(score, dst, N)
        if p > 0:
            alpha = F.dropout(alpha, p=p, training=True)
        out = scatter_sum(alpha.unsqueeze(-1) * v.index_select(0, src), dst, N)  # [N, H, D]
        return out.reshape(N, H * D)

    def _block(self, qkv: Tensor, batch: Tensor, p: float) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        q, k, v = qkv.view(1, N, 3, H, D).permute(2, 0, 3, 1, 4)
        mask = (batch.unsqueeze(0) == batch.unsqueeze(1)).view(1, 1, N, N)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return o.transpose(1, 2).reshape(N, H * D)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.dropout}, strategy={self.strategy!r})"
        )
