r"""Segment (scatter) reductions and the segment softmax used by every sparse attention.

All functions reduce the rows of ``src`` (shape ``[E, *]``) into ``num_segments`` segments
given by ``index`` (shape ``[E]``, long, values in ``[0, num_segments)``; it does **not** need
to be sorted).  Results have shape ``[num_segments, *]``.

Functions
---------
``scatter_sum(src, index, num_segments)``
    :math:`\mathrm{out}_s = \sum_{e: \mathrm{index}_e = s} \mathrm{src}_e` (empty segment: 0).
``scatter_mean(src, index, num_segments)``
    sum divided by the segment size (empty segment: 0).
``scatter_max(src, index, num_segments)``
    element-wise maximum per segment (empty segment: 0).
``scatter_softmax(src, index, num_segments)``
    :math:`\mathrm{out}_e = \exp(\mathrm{src}_e - m_s) / \sum_{e': \mathrm{index}_{e'}=s}
    \exp(\mathrm{src}_{e'} - m_s)` with :math:`s = \mathrm{index}_e` and :math:`m_s` the
    (detached) segment maximum.  Numerically stable: entries equal to ``-inf`` get weight 0,
    a fully masked segment (all ``-inf``) gives zeros (never NaN) with zero, finite gradients.
``segment_count(index, num_segments, dtype=None)``
    number of entries per segment (``[num_segments]``).
``edge_dot(q, k, dst, src, weight=None)``
    :math:`s_{e} = \sum_d q_{\mathrm{dst}_e, :, d}\, k_{\mathrm{src}_e, :, d}\, w_{e, :, d}`
    for ``q [Nq, H, D]``, ``k [Nk, H, D]``, ``weight [E, H, D]`` or ``[1, H, D]`` -> ``[E, H]``.
``edge_aggregate(v, alpha, src, dst, num_segments)``
    :math:`\mathrm{out}_i = \sum_{e: \mathrm{dst}_e = i} \alpha_{e, :}\, v_{\mathrm{src}_e, :, :}`
    for ``v [Nv, H, D]``, ``alpha [E, H]`` -> ``[num_segments, H, D]``.

The two edge ops are fused gather-reduce kernels written as autograd functions that save only
their inputs and recompute the gathered ``[E, H, D]`` rows in the backward pass, so a sparse
attention layer keeps no per-edge feature tensors alive between forward and backward (memory
:math:`O(E H)` instead of several :math:`O(E H D)` activations).  Their backward passes are
built from differentiable ops, so double backward works too.

Backend
-------
The backend is chosen once, here, from the environment variable ``GTPE_SCATTER_BACKEND``:

* ``torch`` (default): native ``Tensor.index_add_`` / ``Tensor.scatter_reduce_``;
  works on every device, under ``torch.compile`` and with autograd (incl. double backward).
* ``torch_scatter``: the ``torch-scatter`` extension (``pip install gtpe[scatter]``).  Only use
  it where you measured it faster on your hardware; requesting it without the package raises.

Why native is the default even when torch-scatter is installed: ``benchmarks/scatter_bench.py``
(torch 2.13 CPU, torch-scatter 2.1.2, 1 thread, forward + backward) measured torch-scatter's
``scatter_sum`` — the reduction every layer uses — 2.1x slower on a ZINC mini-batch and 1.1x
slower on a 100k-node / 1M-edge graph; only ``scatter_max`` with gradients was faster there
(0.65x), and no layer back-propagates through a segment max. Every reduction of ``gtpe.nn``
goes through this module, so the variable switches all of them.

:func:`backend` returns the active backend name.

Input checks
------------
Used by the layers; each raises a one-line ``ValueError`` naming the argument, what it got and
what is expected: :func:`check_positive_int`, :func:`check_heads`, :func:`check_index_shape`,
:func:`check_batch_shape`, :func:`edge_attr_error` (shapes and dtypes only: no device sync) and
:func:`check_index_range` (value ranges of several index tensors with one min/max reduction each
and a single host sync for all of them; callers skip it while compiling or tracing, see
:func:`checks_enabled`).
"""

from __future__ import annotations

import operator
import os

import torch
from torch import Tensor

__all__ = [
    "backend",
    "edge_aggregate",
    "edge_dot",
    "scatter_max",
    "scatter_mean",
    "scatter_softmax",
    "scatter_sum",
    "segment_count",
    "check_batch_shape",
    "check_heads",
    "check_index_range",
    "check_index_shape",
    "check_positive_int",
    "checks_enabled",
    "edge_attr_error",
]

_BACKENDS = ("torch", "torch_scatter")


def _select_backend() -> str:
    name = os.environ.get("GTPE_SCATTER_BACKEND", "torch").strip().lower().replace("-", "_")
    if name not in _BACKENDS:
        raise ValueError(f"GTPE_SCATTER_BACKEND must be one of {_BACKENDS}, got {name!r}")
    if name == "torch_scatter":
        try:
            import torch_scatter  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "GTPE_SCATTER_BACKEND=torch_scatter but torch-scatter is not installed "
                "(pip install torch-scatter, or unset GTPE_SCATTER_BACKEND)"
            ) from exc
    return name


_BACKEND = _select_backend()


def backend() -> str:
    """Name of the active scatter backend (``'torch'`` or ``'torch_scatter'``)."""
    return _BACKEND


def _expand_index(index: Tensor, src: Tensor) -> Tensor:
    # index [E] -> [E, *] broadcast to src's shape (for scatter_reduce).
    return index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)


def scatter_sum(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    r"""Sum of ``src`` rows per segment:
    :math:`\mathrm{out}_s=\sum_{\mathrm{index}_e=s}\mathrm{src}_e`."""
    if _BACKEND == "torch_scatter":  # pragma: no cover - optional dependency
        import torch_scatter

        return torch_scatter.scatter(src, index, dim=0, dim_size=num_segments, reduce="sum")
    out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def segment_count(index: Tensor, num_segments: int, dtype: torch.dtype | None = None) -> Tensor:
    """Number of entries of each segment, shape ``[num_segments]``."""
    cnt = torch.bincount(index, minlength=num_segments)
    return cnt if dtype is None else cnt.to(dtype)


def scatter_mean(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of ``src`` rows per segment (empty segments give 0)."""
    out = scatter_sum(src, index, num_segments)
    cnt = segment_count(index, num_segments, dtype=src.dtype).clamp_min(1)
    return out / cnt.view((-1,) + (1,) * (src.dim() - 1))


def scatter_max(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Element-wise maximum per segment (empty segments give 0).

    Gradients flow to the arg-max entries (ties share the gradient evenly, as in
    ``torch.scatter_reduce(reduce='amax')``).
    """
    if _BACKEND == "torch_scatter":  # pragma: no cover - optional dependency
        import torch_scatter

        return torch_scatter.scatter(src, index, dim=0, dim_size=num_segments, reduce="max")
    out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    return out.scatter_reduce(0, _expand_index(index, src), src, reduce="amax", include_self=False)


def _segment_max_detached(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    # Max used only as a shift for the softmax: no gradient needed (softmax is shift invariant).
    src = src.detach()
    out = src.new_full((num_segments,) + tuple(src.shape[1:]), float("-inf"))
    out = out.scatter_reduce(0, _expand_index(index, src), src, reduce="amax", include_self=True)
    # Empty or fully masked (-inf) segments: shift by 0 so that (-inf) - 0 = -inf -> exp = 0.
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def scatter_softmax(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    r"""Softmax of ``src`` over the entries of each segment (dimension 0).

    .. math::
        \mathrm{out}_e = \frac{\exp(\mathrm{src}_e - m_s)}
                              {\sum_{e':\,\mathrm{index}_{e'}=s} \exp(\mathrm{src}_{e'} - m_s)},
        \qquad s=\mathrm{index}_e,\; m_s = \max_{e':\,\mathrm{index}_{e'}=s}\mathrm{src}_{e'}.

    ``src`` may have trailing dimensions (e.g. ``[E, heads]``), normalised independently.
    ``-inf`` entries get weight 0; segments whose entries are all ``-inf`` give all zeros.
    """
    if index.numel() != src.size(0):
        raise ValueError(
            f"scatter_softmax: index has {index.numel()} entries but src has {src.size(0)} rows"
        )
    m = _segment_max_detached(src, index, num_segments)
    ex = torch.exp(src - m.index_select(0, index))
    denom = scatter_sum(ex, index, num_segments)
    # denom >= 1 for every segment with a finite entry (its max contributes exp(0) = 1);
    # denom == 0 only for empty / fully masked segments, whose entries are all exp(-inf) = 0.
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return ex / denom.index_select(0, index)


def _sum_to(t: Tensor, like: Tensor) -> Tensor:
    # reduce a broadcast [E, H, D] gradient to a [1, H, D] weight
    return t.sum(0, keepdim=True) if like.size(0) == 1 and t.size(0) != 1 else t


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, weight, dst, src):  # type: ignore[override]
        kw = k.index_select(0, src)
        if weight is not None:
            kw = kw * weight
        out = (q.index_select(0, dst) * kw).sum(-1)
        ctx.save_for_backward(q, k, weight, dst, src)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, weight, dst, src = ctx.saved_tensors
        g = grad.unsqueeze(-1)  # [E, H, 1]
        gq = gk = gw = None
        if ctx.needs_input_grad[0]:
            kw = k.index_select(0, src)
            if weight is not None:
                kw = kw * weight
            gq = scatter_sum(g * kw, dst, q.size(0))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            qd = q.index_select(0, dst) * g
            if ctx.needs_input_grad[2]:
                gw = _sum_to(qd * k.index_select(0, src), weight)
            if ctx.needs_input_grad[1]:
                gk = scatter_sum(qd * weight if weight is not None else qd, src, k.size(0))
        return gq, gk, gw, None, None


def edge_dot(
    q: Tensor, k: Tensor, dst: Tensor, src: Tensor, weight: Tensor | None = None
) -> Tensor:
    r"""Per-edge, per-head scores :math:`s_{e,h} = \langle q_{\mathrm{dst}_e,h},
    k_{\mathrm{src}_e,h} \odot w_{e,h}\rangle`.

    ``q [Nq, H, D]``, ``k [Nk, H, D]``, ``dst``/``src [E]``, ``weight [E, H, D]``, ``[1, H, D]``
    (broadcast to all edges) or ``None`` -> ``[E, H]``.  Memory-lean (see the module docstring).
    """
    if weight is not None and weight.size(0) not in (1, src.numel()):
        raise ValueError(
            f"edge_dot: weight must have {src.numel()} or 1 rows, got {tuple(weight.shape)}"
        )
    return _EdgeDot.apply(q, k, weight, dst, src)


class _EdgeAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, alpha, src, dst, num_segments):  # type: ignore[override]
        out = scatter_sum(v.index_select(0, src) * alpha.unsqueeze(-1), dst, num_segments)
        ctx.save_for_backward(v, alpha, src, dst)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        v, alpha, src, dst = ctx.saved_tensors
        gd = grad.index_select(0, dst)  # [E, H, D]
        gv = ga = None
        if ctx.needs_input_grad[0]:
            gv = scatter_sum(gd * alpha.unsqueeze(-1), src, v.size(0))
        if ctx.needs_input_grad[1]:
            ga = (gd * v.index_select(0, src)).sum(-1)
        return gv, ga, None, None, None


def edge_aggregate(v: Tensor, alpha: Tensor, src: Tensor, dst: Tensor, num_segments: int) -> Tensor:
    r"""Attention-weighted sum of source rows per target:
    :math:`\mathrm{out}_{i,h} = \sum_{e:\,\mathrm{dst}_e = i} \alpha_{e,h}\, v_{\mathrm{src}_e,h}`.

    ``v [Nv, H, D]``, ``alpha [E, H]``, ``src``/``dst [E]`` -> ``[num_segments, H, D]``.
    Memory-lean (see the module docstring).
    """
    if alpha.size(0) != src.numel() or dst.numel() != src.numel():
        raise ValueError(
            f"edge_aggregate: alpha ({alpha.size(0)}), src ({src.numel()}) and dst "
            f"({dst.numel()}) must have the same number of edges"
        )
    return _EdgeAggregate.apply(v, alpha, src, dst, num_segments)


# ---------------------------------------------------------------------------------------------
# Input checks


def check_positive_int(owner: str, name: str, value: object, alt: str = "") -> int:
    """``value`` as an ``int``; raises unless it is a positive int (or a numpy / torch integer
    scalar; not a float or bool).  ``alt`` is added to the message (e.g. ``' or None'``)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        v = 0
    if v < 1:
        raise ValueError(f"{owner}: {name} must be a positive int{alt}, got {value!r}")
    return v


def check_heads(owner: str, channels: object, heads: object) -> tuple[int, int]:
    """``(channels, heads)`` as ints; raises unless both are positive ints and ``heads``
    divides ``channels``."""
    c = check_positive_int(owner, "channels", channels)
    h = check_positive_int(owner, "heads", heads)
    if c % h != 0:
        raise ValueError(f"{owner}: channels ({c}) must be a positive multiple of heads ({h})")
    return c, h


def _is_index_dtype(t: Tensor) -> bool:
    return t.dtype in (torch.int64, torch.int32)


def check_index_shape(owner: str, name: str, index: Tensor, cols: str = "E") -> None:
    """``index`` must be an integer (``torch.long`` or ``int32``) tensor of shape ``[2, cols]``."""
    if not isinstance(index, Tensor):
        raise ValueError(f"{owner}: {name} must be a tensor [2, {cols}], got {type(index).__name__}")
    if not _is_index_dtype(index):
        raise ValueError(
            f"{owner}: {name} must be an integer tensor (torch.long) [2, {cols}]; got {index.dtype}"
        )
    if index.dim() != 2 or index.size(0) != 2:
        raise ValueError(f"{owner}: {name} must be [2, {cols}]; got shape {list(index.shape)}")


def check_batch_shape(owner: str, batch: Tensor, num_nodes: int) -> None:
    """``batch`` must be an integer tensor of shape ``[num_nodes]``."""
    if not isinstance(batch, Tensor) or not _is_index_dtype(batch):
        got = batch.dtype if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(
            f"{owner}: batch must be an integer tensor (torch.long) [N] of graph ids; got {got}"
        )
    if batch.dim() != 1 or batch.size(0) != num_nodes:
        raise ValueError(
            f"{owner}: batch must be [N] = [{num_nodes}]; got shape {list(batch.shape)}"
        )


_EMBED_HINT = " — embed integer {} types first (torch.nn.Embedding)"


def edge_attr_error(
    owner: str, edge_attr: Tensor, num_edges: int, width: int, label: str, edge_dim_hint: bool
) -> str | None:
    """The one-line error for an ``edge_attr`` that is not a float ``[num_edges, width]`` tensor
    (``label`` names ``width``: ``'channels'`` or ``'edge_dim'``; ``edge_dim_hint``: the module
    can map other widths with ``edge_dim``), or ``None`` when it is fine.  Shape checks only."""
    shape = list(edge_attr.shape)
    floating = edge_attr.is_floating_point()
    right_shape = shape == [num_edges, width]
    if right_shape and floating:
        return None
    want = f"[E, {label}] = [{num_edges}, {width}]" + (" or pass edge_dim" if edge_dim_hint else "")
    if edge_attr.dim() == 1:
        got = f"a 1-D tensor of shape {shape}"
    elif right_shape:  # only the dtype is wrong
        want = "a float tensor " + want
        got = f"{edge_attr.dtype} of shape {shape}"
    else:
        got = f"shape {shape}"
    hint = ""
    if not floating:
        hint = _EMBED_HINT.format("edge")
    elif edge_dim_hint and edge_attr.dim() == 2 and edge_attr.size(0) == num_edges:
        hint = f" (pass edge_dim={edge_attr.size(1)} to map them to {width})"
    elif edge_dim_hint and edge_attr.dim() == 1:
        hint = " (use edge_attr.view(-1, 1) with edge_dim=1)"
    return f"{owner}: edge_attr must be {want}; got {got}{hint}"


def checks_enabled() -> bool:
    """Value checks that read tensors on the host are skipped under ``torch.compile``, TorchScript
    and ``torch.jit.trace`` (they would add a graph break / bake in the values)."""
    return not (
        torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()
    )


def check_index_range(owner: str, items: list[tuple[str, Tensor, int | None, str]]) -> None:
    r"""Raise unless every ``(name, index, bound, what)`` has values in ``[0, bound)``
    (``what`` names the bound, e.g. ``'N'``; ``bound=None``: only ``>= 0``).  One ``aminmax``
    per tensor and one host sync for all of them; empty tensors are skipped."""
    items = [it for it in items if it[1].numel() > 0]
    if not items:
        return
    mm = [v for _, t, _, _ in items for v in torch.aminmax(t)]
    stats = torch.stack(mm).tolist()  # the one host sync: [min_0, max_0, min_1, max_1, ...]
    for k, (name, _, bound, what) in enumerate(items):
        lo, hi = stats[2 * k], stats[2 * k + 1]
        if lo >= 0 and (bound is None or hi < bound):
            continue
        ids = "graph ids" if name == "batch" else "node ids"
        want = ">= 0" if bound is None else f"in [0, {what}) = [0, {bound})"
        raise ValueError(f"{owner}: {name} must hold {ids} {want}; got min {lo}, max {hi}")


def make_norm(norm: str | None, channels: int, error: str) -> torch.nn.Module | None:
    """``BatchNorm1d`` (``'batch'``/``'batch_norm'``), ``LayerNorm`` (``'layer'``/``'layer_norm'``)
    or ``None`` (``None``) over ``channels`` features; any other ``norm`` raises
    ``ValueError(error)`` (the caller's message names it and the accepted values)."""
    if norm is None:
        return None
    if norm in ("batch", "batch_norm"):
        return torch.nn.BatchNorm1d(channels)
    if norm in ("layer", "layer_norm"):
        return torch.nn.LayerNorm(channels)
    raise ValueError(error)

