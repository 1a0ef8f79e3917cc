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

* ``'auto'`` (default): on CPU the ``'kernel'`` path below, or ``'fused'`` where the kernel
  cannot be built (no C compiler, ``GTPE_NATIVE=0``) or for dtypes other than float32/float64
  (both keep the softmax probabilities for backward, so both are used only while those stay
  below ``2**24`` entries); on other devices, and with attention dropout in training, the
  ``'sdpa'`` path.
* ``'kernel'``: a small C kernel (``full_kernel.c``, compiled once per machine by
  :mod:`gtpe._native`) that loops over (graph, head) blocks of their own size, straight on the
  ``[N, 3C]`` projection: no padding, no gathers, one call forward and one backward.  Where
  torch runs on GNU OpenMP (the PyPI wheels on Linux) the kernel is built with ``-fopenmp`` and
  spreads the (graph, head) blocks over torch's own OpenMP threads (``torch.set_num_threads``).
  On a ZINC batch (~750 nodes, 4 heads of 16, one thread) forward + backward take ~0.5 ms
  against ~1.1 ms for ``'fused'``, whose time goes to the per-matrix overhead of tiny batched
  matmuls and to ``exp``.  Built without OpenMP the kernel uses one thread, and ``'auto'``
  sends batches of more than ``2**20`` score entries to ``'fused'`` when torch has more than
  two threads.  Falls back to ``'fused'`` (with a warning) when the kernel is not available.
* ``'fused'``: the same size buckets, computed by one :class:`torch.autograd.Function` with a
  hand-written backward: Q/K/V rows are gathered into a padded ``[3, R, D]`` buffer with one
  ``index_select`` (padding rows read any real row; padded keys get a ``-inf`` additive mask),
  each bucket is ``softmax(baddbmm(mask, Q, K^T / sqrt(d))) @ V``, and the output is un-padded
  with one more gather.  Backward uses only gathers too (no zero-filled scatter buffers) and the
  saved probabilities.  At molecule sizes (ZINC: 9-37 nodes, head dim 16) this is ~2x faster
  than the SDPA CPU kernel, whose per-block overhead dominates there.  Not twice
  differentiable; with attention dropout in training it falls back to the SDPA path.
* ``'sdpa'`` (what ``'auto'`` uses off CPU): size-bucketed padding.  Graphs are sorted by size
  and split recursively into buckets where that lowers the padded cost :math:`\sum_b |b|\,L_b^2` by more
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

Additive attention bias (``forward(..., pair_index=, pair_bias=, default_bias=)``, e.g.
Graphormer's spatial encoding): a per-head bias :math:`b^h_{ij}` added to the scores, given
sparsely (listed pairs, one default for the rest) and run by every strategy.  It is scattered
(one ``index_put``) into a flat buffer in the score layout of the path that runs, holding
``pair_bias - default_bias`` at the listed pairs and 0 elsewhere (softmax ignores a constant
added to a whole row, so this is the same attention): the C kernel reads it beside its
scores (``B`` in ``full_kernel.c``, the layout of its saved probabilities) and its backward
writes ``dB = dS`` in the same layout; the fused path uses it as its ``baddbmm`` input and
returns ``dS`` as its gradient; the SDPA paths pass it as the float ``attn_mask`` of each
bucket (``[B, H, L, L]``, ``-inf`` on padded keys).  Autograd gathers the buffer's gradient
back to ``pair_bias`` and ``default_bias``.  The buffer has the size of the saved
probabilities.  On ZINC batches (``benchmarks/graphormer_bench.py``) the kernel path with the
bias runs forward + backward 1.4-2.5x faster than one padded SDPA call with a dense bias
(depending on the host CPU: 2.4-2.5x on 2026-12-01's VM, 1.4x on 2026-12-02's).

Nested (jagged) tensors were tried too: ``scaled_dot_product_attention`` on jagged tensors has
no CPU kernel in torch 2.13 ("No viable backend"), so they are not used.  ``batch`` must be
sorted (PyG convention); the per-call size planning needs the graph sizes on the host (one
``.tolist()``), so under ``torch.compile`` the module runs with a graph break there.  Pass a
``cache`` dict shared by the layers of one model forward (:class:`~gtpe.nn.GPSLayer` passes its
``state``) and that planning, with the fused path's index tensors, is done once per batch.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Linear, Parameter

from gtpe import _native
from gtpe.nn.ops import check_batch_shape, check_heads, scatter_softmax, scatter_sum

_STRATEGIES = ("auto", "kernel", "fused", "sdpa", "pad", "pairs", "block")


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


# The fused path keeps the softmax probabilities (sum over buckets of [b*H, L, L]) for
# backward; above this many entries the bucketed SDPA path is used instead.
_FUSED_MAX_ENTRIES = 1 << 24


def _layout(batch: Tensor, cache: dict | None) -> dict:
    """Graph sizes and bucket plan of ``batch`` (one host sync), memoised in ``cache``."""
    if cache is not None:
        info = cache.get("full_attention_layout")
        if info is not None and info["batch"] is batch:
            return info
    counts = _sorted_counts(batch)
    sizes: list[int] = counts.tolist()
    info = {
        "batch": batch,
        "counts": counts,
        "sizes": sizes,
        "buckets": _plan_buckets(sizes, True),
        "plans": {},
    }
    if cache is not None:
        cache["full_attention_layout"] = info
    return info


def _fused_pays(info: dict, qkv: Tensor, heads: int) -> bool:
    """``'auto'``: the kernel or fused path on CPU (where per-call overhead dominates at molecule
    sizes) unless the probabilities they save for backward would be large (counted with the
    buckets' padding, an upper bound for the kernel); elsewhere the SDPA kernels."""
    if qkv.device.type != "cpu":
        return False
    return sum(len(ids) * L * L for ids, L in info["buckets"]) * heads <= _FUSED_MAX_ENTRIES


def _fused_plan(info: dict, heads: int, qkv: Tensor, auto: bool) -> _FusedPlan:
    key = (heads, qkv.dtype, qkv.device, auto)
    plan = info["plans"].get(key)
    if plan is None:
        buckets = info["buckets"] if auto else _plan_buckets(info["sizes"], False)
        plan = _FusedPlan(info["batch"], info["sizes"], buckets, heads, qkv.dtype)
        info["plans"][key] = plan
    return plan


class _FusedPlan:
    """Index tensors of the ``'fused'`` path for one ``batch`` (shared by the layers with the same
    ``heads``, dtype and device).  Bucket ``j`` holds ``B_j`` graphs padded to ``L_j`` nodes in
    the rows ``[off_j, off_j + B_j H L_j)`` of a padded buffer of ``R`` rows; node ``i`` at
    position ``t`` of the ``b``-th graph of bucket ``j`` is row ``off_j + (b H + h) L_j + t`` of
    head ``h``.  Q, K, V are stacked as ``[3, R, D]``."""

    __slots__ = ("H", "R", "buckets", "gather", "grad_out", "out", "scatter_qkv")

    def __init__(
        self, batch: Tensor, sizes: list[int], buckets: list[tuple[list[int], int]], H: int, dtype
    ) -> None:
        dev = batch.device
        N = batch.numel()
        G = len(sizes)
        base, blen = [0] * G, [0] * G
        start = [0] * G
        acc = 0
        for g, n in enumerate(sizes):
            start[g] = acc
            acc += n
        self.buckets: list[tuple[int, int, int, Tensor]] = []  # (offset, B_j, L_j, bias)
        off = 0
        for ids, L in buckets:
            for b, g in enumerate(ids):
                base[g] = off + b * H * L
                blen[g] = L
            lens = torch.tensor([sizes[g] for g in ids], device=dev)
            bias = torch.zeros(len(ids), 1, 1, L, dtype=dtype, device=dev)
            bias.masked_fill_(
                (torch.arange(L, device=dev) >= lens.unsqueeze(1)).view(-1, 1, 1, L), float("-inf")
            )
            bias = bias.expand(len(ids), H, 1, L).reshape(len(ids) * H, 1, L)
            self.buckets.append((off, len(ids), L, bias))
            off += len(ids) * H * L
        R = off
        gb = torch.tensor(base, device=dev).index_select(0, batch)
        gl = torch.tensor(blen, device=dev).index_select(0, batch)
        t = torch.arange(N, device=dev) - torch.tensor(start, device=dev).index_select(0, batch)
        h = torch.arange(H, device=dev)
        row = (gb + t).unsqueeze(1) + h * gl.unsqueeze(1)  # [N, H] padded row per head
        # qkv.view(N * 3H, D): row (i, s, h) = i*3H + s*H + h  <->  padded row s*R + row[i, h]
        dst = (torch.arange(3, device=dev).view(1, 3, 1) * R + row.unsqueeze(1)).reshape(-1)
        self.scatter_qkv = dst  # [N*3H] padded row of every (node, s, head)
        # padding rows read row 0 (finite; masked as keys, discarded as queries)
        self.gather = torch.zeros(3 * R, dtype=torch.long, device=dev).index_copy_(
            0, dst, torch.arange(N * 3 * H, device=dev)
        )
        self.out = row.reshape(-1)  # [N*H] padded row of every (node, head) output
        self.grad_out = torch.full((R,), N * H, dtype=torch.long, device=dev).index_copy_(
            0, self.out, torch.arange(N * H, device=dev)
        )  # padded query rows read a zero row
        self.H, self.R = H, R


class _FusedAttention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d) + mask) V on padded per-graph blocks (one batched matmul per
    bucket), with the padding and un-padding done by gathers (also in backward) and the softmax
    probabilities saved for backward.  ``attn_bias``: ``None`` (the plan's key-padding mask) or
    the full additive mask of every bucket, flat (bucket ``j``'s ``[B_j H, L_j, L_j]`` blocks
    one after the other, ``-inf`` on padded keys), whose gradient is ``dS``."""

    @staticmethod
    def forward(ctx, qkv: Tensor, plan: _FusedPlan, D: int,  # type: ignore[override]
                attn_bias: Tensor | None = None) -> Tensor:
        N, H, R = qkv.size(0), plan.H, plan.R
        scale = 1.0 / math.sqrt(D)
        qkvp = qkv.reshape(-1, D).index_select(0, plan.gather).view(3, R, D)
        o = qkv.new_empty(R, D)
        probs = []
        boff = 0
        for off, B, L, bias in plan.buckets:
            n = B * H * L
            if attn_bias is not None:
                bias = attn_bias[boff : boff + n * L].view(B * H, L, L)
                boff += n * L
            q = qkvp[0, off : off + n].view(B * H, L, D)
            k = qkvp[1, off : off + n].view(B * H, L, D)
            v = qkvp[2, off : off + n].view(B * H, L, D)
            a = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(-1)
            torch.bmm(a, v, out=o[off : off + n].view(B * H, L, D))
            probs.append(a)
        out = o.index_select(0, plan.out).view(N, H * D)
        ctx.save_for_backward(qkvp, *probs)
        ctx.plan, ctx.D, ctx.N = plan, D, N
        ctx.bias_entries = None if attn_bias is None else attn_bias.numel()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qkvp, *probs = ctx.saved_tensors
        plan, D, N = ctx.plan, ctx.D, ctx.N
        H, R = plan.H, plan.R
        scale = 1.0 / math.sqrt(D)
        g = torch.cat([grad.reshape(-1, D), grad.new_zeros(1, D)])
        do_all = g.index_select(0, plan.grad_out)  # [R, D]
        dqkv = grad.new_empty(3, R, D)
        gbias = None
        if ctx.bias_entries is not None and len(ctx.needs_input_grad) > 3 and ctx.needs_input_grad[3]:
            gbias = grad.new_empty(ctx.bias_entries)
        boff = 0
        for (off, B, L, _), a in zip(plan.buckets, probs):
            n = B * H * L
            q = qkvp[0, off : off + n].view(B * H, L, D)
            k = qkvp[1, off : off + n].view(B * H, L, D)
            v = qkvp[2, off : off + n].view(B * H, L, D)
            do = do_all[off : off + n].view(B * H, L, D)
            torch.bmm(a.transpose(1, 2), do, out=dqkv[2, off : off + n].view(B * H, L, D))
            ds = torch._softmax_backward_data(torch.bmm(do, v.transpose(1, 2)), a, -1, a.dtype)
            if gbias is not None:
                gbias[boff : boff + n * L].view(B * H, L, L).copy_(ds)
                boff += n * L
            dq = dqkv[0, off : off + n].view(B * H, L, D)
            dk = dqkv[1, off : off + n].view(B * H, L, D)
            torch.baddbmm(dq, ds, k, beta=0.0, alpha=scale, out=dq)  # scale folded into the matmul
            torch.baddbmm(dk, ds.transpose(1, 2), q, beta=0.0, alpha=scale, out=dk)
        gqkv = dqkv.view(-1, D).index_select(0, plan.scatter_qkv).view(N, 3 * H * D)
        return (gqkv, None, None, gbias)[: len(ctx.needs_input_grad)]


# -- additive attention bias ------------------------------------------------------------------
# The sparse bias (pair_index, pair_bias, default_bias) is scattered into a flat dense buffer in
# the score layout of the path that runs: the kernel's unpadded [H, n_g, n_g] blocks (the layout
# of its probabilities), the padded buckets' [B_j H, L_j, L_j] blocks ('fused', 'sdpa', 'pad';
# -inf on padded keys), one [H, N, N] block-diagonal mask ('block') or the [P, H] pair scores
# ('pairs').  Softmax is invariant to a constant added to a whole row, so the buffer holds
# pair_bias - default_bias at the listed pairs and 0 elsewhere (exactly the same attention as
# default_bias elsewhere); the gradients of pair_bias and default_bias then come from the
# buffer's gradient (dS) by autograd through that gather.


def _bias_values(
    N: int, H: int, x: Tensor, pair_index, pair_bias, default_bias
) -> Tensor:
    """Checks the shapes of the bias arguments (no host sync) and returns ``pair_bias -
    default_bias`` (``[M, H]``, dtype of ``x``)."""
    if pair_index is None or pair_bias is None:
        given = [n for n, v in (("pair_index", pair_index), ("pair_bias", pair_bias),
                                ("default_bias", default_bias)) if v is not None]
        raise ValueError(
            "FullAttention: an attention bias needs both pair_index [2, M] and pair_bias "
            f"[M, {H}] (got only {' and '.join(given)})"
        )
    if not isinstance(pair_index, Tensor) or pair_index.dim() != 2 or pair_index.size(0) != 2 \
            or pair_index.dtype != torch.long:
        what = (f"{pair_index.dtype} of shape {tuple(pair_index.shape)}"
                if isinstance(pair_index, Tensor) else type(pair_index).__name__)
        raise ValueError(f"FullAttention: pair_index must be a long tensor of shape [2, M], got {what}")
    M = pair_index.size(1)
    if not isinstance(pair_bias, Tensor) or not pair_bias.is_floating_point() \
            or tuple(pair_bias.shape) != (M, H):
        what = (f"{pair_bias.dtype} of shape {tuple(pair_bias.shape)}"
                if isinstance(pair_bias, Tensor) else type(pair_bias).__name__)
        raise ValueError(
            f"FullAttention: pair_bias must be a float tensor of shape [M, heads] = [{M}, {H}] "
            f"(one value per pair of pair_index and head), got {what}"
        )
    for name, t in (("pair_index", pair_index), ("pair_bias", pair_bias)):
        if t.device != x.device:
            raise ValueError(f"FullAttention: {name} is on {t.device}, x on {x.device}")
    vals = pair_bias.to(x.dtype)
    if default_bias is None:
        return vals
    if isinstance(default_bias, Tensor):
        if not default_bias.is_floating_point() or default_bias.numel() not in (1, H) \
                or default_bias.dim() > 1 or default_bias.device != x.device:
            raise ValueError(
                f"FullAttention: default_bias must be a float or a float tensor of shape "
                f"[heads] = [{H}] on {x.device}, got {default_bias.dtype} of shape "
                f"{tuple(default_bias.shape)} on {default_bias.device}"
            )
        return vals - default_bias.to(x.dtype)
    if isinstance(default_bias, bool) or not isinstance(default_bias, (int, float)):
        raise ValueError(
            f"FullAttention: default_bias must be a float or a tensor of shape [{H}], "
            f"got {type(default_bias).__name__}"
        )
    return vals - float(default_bias)


def _bias_pairs(info: dict, pair_index: Tensor, batch: Tensor) -> dict:
    """Checks that ``pair_index`` holds node ids of ``batch``, each pair within one graph, no
    pair twice (two host syncs); memoised in the layout ``info`` for the same tensor, with the
    pairs' graph ``g``, local query/key ids and ``local = off_g + i n_g + j`` (``off_g = sum of
    n^2`` over the graphs before ``g``: the rank of the pair among all intra-graph pairs), and
    the scatter positions of the paths (``'pos'``)."""
    memo = info.get("bias_pairs")
    if memo is not None and memo["index"] is pair_index:
        return memo
    N, M = batch.numel(), pair_index.size(1)
    if M:
        lo, hi = (int(v) for v in torch.aminmax(pair_index))
        if lo < 0 or hi >= N:
            raise ValueError(
                f"FullAttention: pair_index holds node ids in [{lo}, {hi}], outside [0, {N})"
            )
    counts = info["counts"]
    j, i = pair_index[0], pair_index[1]
    g = batch.index_select(0, i)
    start = (counts.cumsum(0) - counts).index_select(0, g)
    li, lj = i - start, j - start
    n = counts.index_select(0, g)
    sq = counts * counts
    off = (sq.cumsum(0) - sq).index_select(0, g)
    local = off + li * n + lj
    if M:
        gj = batch.index_select(0, j)
        listed = torch.bincount(local, minlength=sum(v * v for v in info["sizes"]))
        across, twice = torch.stack([(gj != g).any(), (listed > 1).any()]).tolist()
        if across:
            m = int(torch.nonzero(gj != g)[0, 0])
            raise ValueError(
                f"FullAttention: pair_index column {m} pairs key {int(j[m])} and "
                f"query {int(i[m])} of different graphs ({int(gj[m])} and {int(g[m])}); "
                "bias pairs must lie within one graph"
            )
        if twice:
            m = int(torch.nonzero(listed.index_select(0, local) > 1)[0, 0])
            raise ValueError(
                f"FullAttention: pair_index lists the pair (key {int(j[m])}, query {int(i[m])}) "
                "more than once"
            )
    memo = {"index": pair_index, "g": g, "n": n, "off": off, "li": li, "lj": lj, "local": local,
            "pos": {}}
    info["bias_pairs"] = memo
    return memo


def _padded_bias_layout(info: dict, H: int, auto: bool) -> tuple[list[int], list[int], int]:
    """Offset of each graph's ``[H, L, L]`` block in the flat padded bias buffer, the padded
    length ``L`` of its bucket (buckets in the order of the fused/SDPA paths), and the size."""
    sizes = info["sizes"]
    buckets = info["buckets"] if auto else _plan_buckets(sizes, False)
    base, blen = [0] * len(sizes), [0] * len(sizes)
    off = 0
    for ids, L in buckets:
        for b, g in enumerate(ids):
            base[g], blen[g] = off + b * H * L * L, L
        off += len(ids) * H * L * L
    return base, blen, off


def _bias_positions(info: dict, memo: dict, batch: Tensor, kind: str, H: int) -> Tensor:
    """Flat position ``[M * H]`` of every (pair, head) in the bias buffer of ``kind``
    (``'kernel'``, ``'padded'``, ``'padded1'`` (one bucket), ``'block'``, ``'pairs'``)."""
    key = (kind, H)
    pos = memo["pos"].get(key)
    if pos is not None:
        return pos
    pair_index, local = memo["index"], memo["local"]
    N = batch.numel()
    h = torch.arange(H, device=batch.device)
    if kind == "block":  # [H, N, N]
        pos = (pair_index[1] * N + pair_index[0]).unsqueeze(1) + h * (N * N)
    elif kind == "pairs":  # [P, H], the intra-graph pairs in (graph, query, key) order
        pos = (local * H).unsqueeze(1) + h
    elif kind == "kernel":  # [H, n_g, n_g] blocks at poff_g = H off_g
        n = memo["n"]
        pos = (local + (H - 1) * memo["off"]).unsqueeze(1) + h * (n * n).unsqueeze(1)
    else:  # padded buckets: [H, L_g, L_g] blocks at base_g
        g = memo["g"]
        b, bl, _ = _padded_bias_layout(info, H, kind == "padded")
        base = torch.tensor(b, dtype=torch.long, device=batch.device).index_select(0, g)
        L = torch.tensor(bl, dtype=torch.long, device=batch.device).index_select(0, g)
        pos = (base + memo["li"] * L + memo["lj"]).unsqueeze(1) + h * (L * L).unsqueeze(1)
    pos = pos.reshape(-1)
    memo["pos"][key] = pos
    return pos


def _bias_fill(info: dict, batch: Tensor, kind: str, H: int, dtype, device) -> Tensor:
    """The bias buffer of ``kind`` without pairs: ``-inf`` on padded keys (``'padded'``) or on
    keys of other graphs (``'block'``), else 0.  Cached in ``info`` (read-only)."""
    key = ("bias_fill", kind, H, dtype, device)
    fill = info["plans"].get(key)
    if fill is not None:
        return fill
    sizes = info["sizes"]
    if kind == "block":
        same = batch.unsqueeze(0) == batch.unsqueeze(1)
        fill = torch.zeros(same.shape, dtype=dtype, device=device).masked_fill_(~same, float("-inf"))
        fill = fill.expand(H, -1, -1).reshape(-1)
    else:
        buckets = info["buckets"] if kind == "padded" else _plan_buckets(sizes, False)
        parts = []
        for ids, L in buckets:
            lens = torch.tensor([sizes[g] for g in ids], device=device)
            pad = (torch.arange(L, device=device) >= lens.unsqueeze(1)).view(-1, 1, 1, L)
            blk = torch.zeros(len(ids), 1, 1, L, dtype=dtype, device=device).masked_fill_(pad, float("-inf"))
            parts.append(blk.expand(len(ids), H, L, L).reshape(-1))
        fill = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)
    info["plans"][key] = fill
    return fill


def _scatter_bias(info, memo, batch, kind, H, vals: Tensor) -> Tensor:
    """The flat bias buffer of ``kind`` holding ``vals [M, H]`` at the listed pairs."""
    pos = _bias_positions(info, memo, batch, kind, H)
    flat = vals.reshape(-1)
    if kind in ("kernel", "pairs"):
        E = _kernel_plan(info, H).entries if kind == "kernel" else sum(n * n for n in info["sizes"]) * H
        return vals.new_zeros(E).index_put_((pos,), flat)
    fill = _bias_fill(info, batch, kind, H, vals.dtype, vals.device)
    return fill.index_put((pos,), flat)


_KERNEL_SOURCE = Path(__file__).with_name("full_kernel.c")
_KERNEL_BUILDS = {  # dtype -> (-D defines, C scalar type)
    torch.float32: ({"REAL": "float", "SUFFIX": "_f32"}, ctypes.c_float),
    torch.float64: ({"REAL": "double", "SUFFIX": "_f64", "REAL_IS_DOUBLE": "1"}, ctypes.c_double),
}
_kernels: dict[torch.dtype, tuple | None] = {}
# 'auto' with more than two torch threads and a kernel built without OpenMP (single-threaded):
# batches above this many score entries (sum over graphs of H * n_g^2; ~2 ms of work on one
# core) go to 'fused', whose batched matmuls use every thread.  (Splitting the kernel over
# Python threads was tried: it gained nothing, torch's OpenMP workers spin on the cores after
# each op.  Built with OpenMP, the kernel runs on torch's own OpenMP threads instead.)
_KERNEL_SERIAL_MAX = 1 << 20


def _kernel(dtype: torch.dtype) -> tuple | None:
    """``(forward, backward, multithreaded)`` of ``full_kernel.c`` for ``dtype`` (ctypes
    functions; ``multithreaded``: built with OpenMP, on torch's threads), or ``None`` (dtype not
    supported, ``GTPE_NATIVE=0``, no compiler, or a library that was refused, damaged or lacks
    one of the kernel's symbols: :func:`gtpe._native.load` warns once and returns ``None``)."""
    if dtype not in _KERNEL_BUILDS or not _native.enabled():
        return None
    if dtype not in _kernels:
        defines, real = _KERNEL_BUILDS[dtype]
        suffix = defines["SUFFIX"]
        names = [f"gtpe_full_attention_{f}{suffix}" for f in ("forward", "backward", "openmp")]
        lib = _native.load(_KERNEL_SOURCE, defines, openmp=True, symbols=names)
        fns = None
        if lib is not None:
            fwd = getattr(lib, "gtpe_full_attention_forward" + suffix)
            bwd = getattr(lib, "gtpe_full_attention_backward" + suffix)
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            fwd.argtypes = [p, p, p, i64, i64, i64, i64, real, p, p, p]
            bwd.argtypes = [p, p, p, i64, i64, i64, i64, real, p, p, p, p]
            fwd.restype = bwd.restype = ctypes.c_int
            fns = (fwd, bwd, bool(getattr(lib, "gtpe_full_attention_openmp" + suffix)()))
        _kernels[dtype] = fns
    return _kernels[dtype]


class _KernelPlan:
    """Host-side index arrays of the ``'kernel'`` path for one ``batch`` and head count: node
    offsets ``ptr [G+1]`` and offsets ``poff [G+1]`` of each graph's ``[H, n_g, n_g]`` block of
    probabilities (``entries`` in all)."""

    __slots__ = ("H", "entries", "poff", "ptr")

    def __init__(self, sizes: list[int], H: int) -> None:
        ptr, poff = [0], [0]
        for n in sizes:
            ptr.append(ptr[-1] + n)
            poff.append(poff[-1] + H * n * n)
        self.H = H
        self.ptr = torch.tensor(ptr, dtype=torch.int64)
        self.poff = torch.tensor(poff, dtype=torch.int64)
        self.entries = poff[-1]


def _kernel_plan(info: dict, heads: int) -> _KernelPlan:
    key = ("kernel", heads)
    if key not in info["plans"]:
        info["plans"][key] = _KernelPlan(info["sizes"], heads)
    return info["plans"][key]


def _check(code: int) -> None:
    if code != 0:
        raise MemoryError("FullAttention kernel: out of memory for its scratch buffer")


class _KernelAttention(torch.autograd.Function):
    """``softmax(Q K^T / sqrt(d) + B) V`` per graph and head by ``full_kernel.c`` (no padding);
    ``bias``: ``None`` or the scores' additive bias ``B`` in the layout of the probabilities
    (``[plan.entries]``: graph ``g``, head ``h``, query ``i``, key ``j`` at
    ``poff[g] + (h n_g + i) n_g + j``, local ids), whose gradient (``dS``) the kernel writes
    in the same layout.  The probabilities are kept for backward when an input needs a
    gradient."""

    @staticmethod
    def forward(ctx, qkv: Tensor, plan: _KernelPlan, D: int, save: bool,  # type: ignore[override]
                bias: Tensor | None = None) -> Tensor:
        fwd = _kernel(qkv.dtype)[0]
        qkv = qkv.contiguous()
        N, H = qkv.size(0), plan.H
        out = qkv.new_empty(N, H * D)
        probs = qkv.new_empty(plan.entries) if save else None
        if bias is not None:
            bias = bias.contiguous()
        G = plan.ptr.numel() - 1
        _check(fwd(qkv.data_ptr(), plan.ptr.data_ptr(), plan.poff.data_ptr(), 0, G, H, D,
                   1.0 / math.sqrt(D), out.data_ptr(), probs.data_ptr() if save else None,
                   None if bias is None else bias.data_ptr()))
        if save:
            ctx.save_for_backward(qkv, probs)
            ctx.plan, ctx.D = plan, D
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qkv, probs = ctx.saved_tensors
        plan, D = ctx.plan, ctx.D
        bwd = _kernel(qkv.dtype)[1]
        grad = grad.contiguous()
        gqkv = torch.empty_like(qkv)
        needs = ctx.needs_input_grad
        gbias = qkv.new_empty(plan.entries) if len(needs) > 4 and needs[4] else None
        G = plan.ptr.numel() - 1
        _check(bwd(qkv.data_ptr(), plan.ptr.data_ptr(), plan.poff.data_ptr(), 0, G, plan.H, D,
                   1.0 / math.sqrt(D), probs.data_ptr(), grad.data_ptr(), gqkv.data_ptr(),
                   None if gbias is None else gbias.data_ptr()))
        return (gqkv, None, None, None, gbias)[: len(needs)]


class FullAttention(torch.nn.Module):
    r"""Exact multi-head self-attention restricted to each graph of a mini-batch.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads :math:`H` (must divide ``channels``).
        dropout (float): dropout on the attention weights (as ``nn.MultiheadAttention``).
        bias (bool): learn ``in_proj_bias`` and ``out_proj.bias``.
        strategy (str): ``'auto'`` | ``'kernel'`` | ``'fused'`` | ``'sdpa'`` | ``'pad'`` |
            ``'pairs'`` | ``'block'`` (see the module docstring).  All give the same result.

    Shapes: ``x [N, C]``, ``batch [N]`` (sorted graph ids, PyG convention) -> ``[N, C]``;
    optional additive bias ``pair_index [2, M]`` (row 0 key, row 1 query), ``pair_bias [M, H]``,
    ``default_bias [H]`` (see :meth:`forward`).
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
        channels, heads = check_heads("FullAttention", channels, heads)
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

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        cache: dict | None = None,
        *,
        pair_index: Tensor | None = None,
        pair_bias: Tensor | None = None,
        default_bias: Tensor | float | None = None,
    ) -> Tensor:
        r"""``x [N, C]``, ``batch [N]`` -> ``[N, C]``.  ``cache``: optional dict shared by the
        layers of one model forward (e.g. :class:`~gtpe.nn.GPSLayer`'s ``state``); the batch
        layout (graph sizes, padding indices) is then computed once per ``batch`` tensor
        instead of once per layer (and, with a bias, the checks and scatter positions of
        ``pair_index``, once per ``pair_index`` tensor).

        Additive attention bias (optional; Graphormer's spatial encoding, see
        :class:`~gtpe.nn.attention.graphormer.GraphormerAttention`): the score of query ``i``
        and key ``j`` of the same graph becomes

        .. math:: s^h_{ij} = \frac{\langle q^h_i, k^h_j\rangle}{\sqrt{d}} + b^h_{ij},\qquad
                  b^h_{ij} = \begin{cases} \texttt{pair\_bias}[m, h] & (j, i) =
                  \texttt{pair\_index}[:, m] \\ \texttt{default\_bias}[h] &
                  \text{(j, i) not listed} \end{cases}

        * ``pair_index [2, M]`` (long, global node ids): row 0 the key ``j``, row 1 the query
          ``i`` (the reading of ``GRITAttention``'s pairs and of PyG's ``edge_index``: ``j``
          sends to ``i``), both in the same graph, each pair at most once;
        * ``pair_bias [M, heads]`` (float): the bias of each listed pair and head;
        * ``default_bias``: a float or a tensor ``[heads]`` for every pair not listed (default
          0).

        ``pair_bias`` and ``default_bias`` get gradients.  Runs on every strategy (the C kernel takes the bias as a
        dense buffer in the layout of its probabilities, the padded paths as their additive
        float mask); ``batch`` must then be sorted.  Without a bias nothing changes.
        """
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(
                f"FullAttention: expected x of shape [N, {self.channels}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is None:
            batch = x.new_zeros(N, dtype=torch.long)
        else:
            check_batch_shape("FullAttention", batch, N)
        vals = None
        if pair_index is not None or pair_bias is not None or default_bias is not None:
            vals = _bias_values(N, self.heads, x, pair_index, pair_bias, default_bias)
            if N == 0 and pair_index.size(1) > 0:
                raise ValueError("FullAttention: pair_index holds node ids, but x has no nodes")
        if N == 0:
            return self.out_proj(x)
        p = self.dropout if self.training else 0.0
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, 3C]
        if vals is not None:
            return self.out_proj(self._biased(qkv, batch, p, cache, pair_index, vals))
        strategy = self.strategy
        if strategy in ("auto", "kernel", "fused", "sdpa", "pad"):
            info = _layout(batch, cache)
            strategy = self._resolve(strategy, info, qkv, p)
            if strategy == "kernel":
                plan = _kernel_plan(info, self.heads)
                save = torch.is_grad_enabled() and qkv.requires_grad
                out = _KernelAttention.apply(qkv, plan, self.head_dim, save)
            elif strategy == "fused":
                plan = _fused_plan(info, self.heads, qkv, auto=True)
                out = _FusedAttention.apply(qkv, plan, self.head_dim)
            else:
                out = self._bucketed(qkv, batch, p, info, auto=strategy != "pad")
        elif strategy == "pairs":
            out = self._pairs(qkv, batch, p)
        else:
            out = self._block(qkv, batch, p)
        return self.out_proj(out)

    def _resolve(self, strategy: str, info: dict, qkv: Tensor, p: float) -> str:
        """The path that runs for ``strategy`` (see the module docstring): ``'auto'`` is the
        kernel on CPU, SDPA elsewhere, with attention dropout or above the probability budget;
        ``'kernel'`` and ``'fused'`` keep no dropout, so with dropout they run SDPA, and without
        a compiled kernel ``'kernel'`` runs ``'fused'``."""
        if strategy == "auto":
            if p > 0.0 or not _fused_pays(info, qkv, self.heads):
                return "sdpa"
            kernel = _kernel(qkv.dtype)
            if kernel is not None and not kernel[2] and torch.get_num_threads() > 2:
                entries = sum(n * n for n in info["sizes"]) * self.heads
                return "fused" if entries > _KERNEL_SERIAL_MAX else "kernel"
            strategy = "kernel"
        if strategy in ("kernel", "fused") and p > 0.0:
            return "sdpa"
        if strategy == "kernel" and (qkv.device.type != "cpu" or _kernel(qkv.dtype) is None):
            return "fused"
        return strategy

    def _biased(
        self, qkv: Tensor, batch: Tensor, p: float, cache: dict | None, pair_index: Tensor,
        vals: Tensor
    ) -> Tensor:
        """Every strategy with the additive bias ``vals [M, H]`` (``pair_bias - default``) at
        ``pair_index``: the bias is scattered into the score layout of the path that runs."""
        H, D = self.heads, self.head_dim
        info = _layout(batch, cache)
        memo = _bias_pairs(info, pair_index, batch)
        strategy = self.strategy
        if strategy in ("auto", "kernel", "fused", "sdpa", "pad"):
            strategy = self._resolve(strategy, info, qkv, p)
        if strategy == "kernel":
            plan = _kernel_plan(info, H)
            bias = _scatter_bias(info, memo, batch, "kernel", H, vals)
            save = torch.is_grad_enabled() and (qkv.requires_grad or bias.requires_grad)
            return _KernelAttention.apply(qkv, plan, D, save, bias)
        if strategy == "fused":
            plan = _fused_plan(info, H, qkv, auto=True)
            bias = _scatter_bias(info, memo, batch, "padded", H, vals)
            return _FusedAttention.apply(qkv, plan, D, bias)
        if strategy in ("sdpa", "pad"):
            kind = "padded" if strategy == "sdpa" else "padded1"
            bias = _scatter_bias(info, memo, batch, kind, H, vals)
            return self._bucketed(qkv, batch, p, info, auto=strategy == "sdpa", bias=bias)
        if strategy == "pairs":
            return self._pairs(qkv, batch, p, bias=_scatter_bias(info, memo, batch, "pairs", H, vals))
        return self._block(qkv, batch, p, bias=_scatter_bias(info, memo, batch, "block", H, vals))

    # -- strategies ---------------------------------------------------------------------------
    def _bucketed(
        self, qkv: Tensor, batch: Tensor, p: float, info: dict, auto: bool,
        bias: Tensor | None = None
    ) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        counts, sizes = info["counts"], info["sizes"]
        buckets = info["buckets"] if auto else _plan_buckets(sizes, False)
        if len(buckets) == 1 and len(buckets[0][0]) == 1:  # one graph: no padding at all
            q, k, v = qkv.view(1, N, 3, H, D).permute(2, 0, 3, 1, 4)
            mask = None if bias is None else bias.view(1, H, N, N)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
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
        pos = boff = 0
        for ids, L in buckets:
            nb = len(ids)
            chunk = dense[pos : pos + nb * L]
            q, k, v = chunk.view(nb, L, 3, H, D).permute(2, 0, 3, 1, 4)  # each [nb, H, L, D]
            mask = None
            if bias is not None:  # additive float mask, -inf on padded keys
                mask = bias[boff : boff + nb * H * L * L].view(nb, H, L, L)
                boff += nb * H * L * L
            elif any(sizes[g] != L for g in ids):
                lens = torch.tensor([sizes[g] for g in ids], device=qkv.device)
                mask = (torch.arange(L, device=qkv.device) < lens.unsqueeze(1)).view(nb, 1, 1, L)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            outs.append(o.transpose(1, 2).reshape(nb * L, H * D))
            pos += nb * L
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        return out.index_select(0, idx)

    def _pairs(self, qkv: Tensor, batch: Tensor, p: float, bias: Tensor | None = None) -> Tensor:
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
        if bias is not None:
            score = score + bias.view(P, H)
        alpha = scatter_softmax(score, dst, N)
        if p > 0:
            alpha = F.dropout(alpha, p=p, training=True)
        out = scatter_sum(alpha.unsqueeze(-1) * v.index_select(0, src), dst, N)  # [N, H, D]
        return out.reshape(N, H * D)

    def _block(self, qkv: Tensor, batch: Tensor, p: float, bias: Tensor | None = None) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        q, k, v = qkv.view(1, N, 3, H, D).permute(2, 0, 3, 1, 4)
        if bias is not None:  # additive float mask, -inf between graphs
            mask = bias.view(1, H, N, N)
        else:
            mask = (batch.unsqueeze(0) == batch.unsqueeze(1)).view(1, 1, N, N)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return o.transpose(1, 2).reshape(N, H * D)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.dropout}, strategy={self.strategy!r})"
        )
