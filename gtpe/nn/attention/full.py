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
    probabilities saved for backward."""

    @staticmethod
    def forward(ctx, qkv: Tensor, plan: _FusedPlan, D: int) -> Tensor:  # type: ignore[override]
        N, H, R = qkv.size(0), plan.H, plan.R
        scale = 1.0 / math.sqrt(D)
        qkvp = qkv.reshape(-1, D).index_select(0, plan.gather).view(3, R, D)
        o = qkv.new_empty(R, D)
        probs = []
        for off, B, L, bias in plan.buckets:
            n = B * H * L
            q = qkvp[0, off : off + n].view(B * H, L, D)
            k = qkvp[1, off : off + n].view(B * H, L, D)
            v = qkvp[2, off : off + n].view(B * H, L, D)
            a = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale).softmax(-1)
            torch.bmm(a, v, out=o[off : off + n].view(B * H, L, D))
            probs.append(a)
        out = o.index_select(0, plan.out).view(N, H * D)
        ctx.save_for_backward(qkvp, *probs)
        ctx.plan, ctx.D, ctx.N = plan, D, N
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
        for (off, B, L, _), a in zip(plan.buckets, probs):
            n = B * H * L
            q = qkvp[0, off : off + n].view(B * H, L, D)
            k = qkvp[1, off : off + n].view(B * H, L, D)
            v = qkvp[2, off : off + n].view(B * H, L, D)
            do = do_all[off : off + n].view(B * H, L, D)
            torch.bmm(a.transpose(1, 2), do, out=dqkv[2, off : off + n].view(B * H, L, D))
            ds = torch._softmax_backward_data(torch.bmm(do, v.transpose(1, 2)), a, -1, a.dtype)
            dq = dqkv[0, off : off + n].view(B * H, L, D)
            dk = dqkv[1, off : off + n].view(B * H, L, D)
            torch.baddbmm(dq, ds, k, beta=0.0, alpha=scale, out=dq)  # scale folded into the matmul
            torch.baddbmm(dk, ds.transpose(1, 2), q, beta=0.0, alpha=scale, out=dk)
        gqkv = dqkv.view(-1, D).index_select(0, plan.scatter_qkv).view(N, 3 * H * D)
        return gqkv, None, None


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
            fwd.argtypes = [p, p, p, i64, i64, i64, i64, real, p, p]
            bwd.argtypes = [p, p, p, i64, i64, i64, i64, real, p, p, p]
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
    """``softmax(Q K^T / sqrt(d)) V`` per graph and head by ``full_kernel.c`` (no padding);
    the probabilities are kept for backward when the input needs a gradient."""

    @staticmethod
    def forward(ctx, qkv: Tensor, plan: _KernelPlan, D: int, save: bool) -> Tensor:  # type: ignore[override]
        fwd = _kernel(qkv.dtype)[0]
        qkv = qkv.contiguous()
        N, H = qkv.size(0), plan.H
        out = qkv.new_empty(N, H * D)
        probs = qkv.new_empty(plan.entries) if save else None
        G = plan.ptr.numel() - 1
        _check(fwd(qkv.data_ptr(), plan.ptr.data_ptr(), plan.poff.data_ptr(), 0, G, H, D,
                   1.0 / math.sqrt(D), out.data_ptr(), probs.data_ptr() if save else None))
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
        G = plan.ptr.numel() - 1
        _check(bwd(qkv.data_ptr(), plan.ptr.data_ptr(), plan.poff.data_ptr(), 0, G, plan.H, D,
                   1.0 / math.sqrt(D), probs.data_ptr(), grad.data_ptr(), gqkv.data_ptr()))
        return gqkv, None, None, None


class FullAttention(torch.nn.Module):
    r"""Exact multi-head self-attention restricted to each graph of a mini-batch.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads :math:`H` (must divide ``channels``).
        dropout (float): dropout on the attention weights (as ``nn.MultiheadAttention``).
        bias (bool): learn ``in_proj_bias`` and ``out_proj.bias``.
        strategy (str): ``'auto'`` | ``'fused'`` | ``'sdpa'`` | ``'pad'`` | ``'pairs'`` |
            ``'block'``
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

    def forward(self, x: Tensor, batch: Tensor | None = None, cache: dict | None = None) -> Tensor:
        r"""``x [N, C]``, ``batch [N]`` -> ``[N, C]``.  ``cache``: optional dict shared by the
        layers of one model forward (e.g. :class:`~gtpe.nn.GPSLayer`'s ``state``); the batch
        layout (graph sizes, padding indices) is then computed once per ``batch`` tensor
        instead of once per layer."""
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(
                f"FullAttention: expected x of shape [N, {self.channels}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is None:
            batch = x.new_zeros(N, dtype=torch.long)
        else:
            check_batch_shape("FullAttention", batch, N)
        if N == 0:
            return self.out_proj(x)
        p = self.dropout if self.training else 0.0
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, 3C]
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

    # -- strategies ---------------------------------------------------------------------------
    def _bucketed(self, qkv: Tensor, batch: Tensor, p: float, info: dict, auto: bool) -> Tensor:
        N = qkv.size(0)
        H, D = self.heads, self.head_dim
        counts, sizes = info["counts"], info["sizes"]
        buckets = info["buckets"] if auto else _plan_buckets(sizes, False)
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
