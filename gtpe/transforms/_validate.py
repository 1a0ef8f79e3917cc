"""Argument and input checks shared by the PE transforms (one wording everywhere).

:func:`check_edge_index` is the single gate a transform's ``forward`` passes its input through:
``edge_index`` must be an integer tensor ``[2, E]`` (float, complex and bool tensors are
rejected, not truncated), every id in ``[0, num_nodes)``, and in a
:class:`~torch_geometric.data.Batch` every edge must stay inside one graph (the batch is
block-diagonal).  :func:`check_int` and :func:`check_float` check constructor arguments.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch_geometric.data import Batch

__all__ = ['batch_ptr', 'check_edge_index', 'check_float', 'check_int']


def check_int(value, name: str, owner: str, minimum: int | None = 1,
              maximum: int | None = None) -> int:
    """``int(value)`` if ``value`` is an integer (Python or numpy; ``bool`` is not) in
    ``[minimum, maximum)``, else ``ValueError("<owner>: <name> must be an integer >= ..., got
    <value!r>")``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, torch.Tensor))
    if ok:
        value = int(value)
        ok = (minimum is None or value >= minimum) and (maximum is None or value < maximum)
    if not ok:
        if maximum is not None:
            bound = f' in [{minimum}, {_pow2(maximum)})'
        elif minimum is not None:
            bound = f' >= {minimum}'
        else:
            bound = ''
        raise ValueError(f"{owner}: {name} must be an integer{bound}, got {value!r}")
    return value


def _pow2(n: int) -> str:
    return f'2**{n.bit_length() - 1}' if n > 1024 and n & (n - 1) == 0 else str(n)


def check_float(value, name: str, owner: str, minimum: float | None = 0.0) -> float:
    """``float(value)`` if ``value`` is a finite real number (not ``bool``) ``>= minimum``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, torch.Tensor))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (minimum is None or value >= minimum)
    if not ok:
        bound = f' >= {minimum:g}' if minimum is not None else ''
        raise ValueError(f"{owner}: {name} must be a finite number{bound}, got {value!r}")
    return value


def batch_ptr(data, owner: str) -> Tensor:
    """``ptr [B+1]`` (CPU long) of the graphs in ``data``: a Batch's ``ptr`` (or counts of its
    ``batch`` vector), ``[0, N]`` for a single graph.  A ``ptr`` that does not end at
    ``num_nodes`` is an error."""
    N = int(data.num_nodes or 0)
    if isinstance(data, Batch):
        ptr = getattr(data, 'ptr', None)
        if ptr is None and getattr(data, 'batch', None) is not None:
            counts = torch.bincount(data.batch.cpu(), minlength=data.num_graphs)
            ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        if ptr is not None:
            ptr = ptr.detach().to('cpu', torch.long)
            if int(ptr[-1]) != N:
                raise ValueError(f"{owner}: Batch.ptr ends at {int(ptr[-1])} but the batch has "
                                 f"{N} nodes (num_nodes)")
            return ptr
    return torch.tensor([0, N], dtype=torch.long)


def check_edge_index(data, owner: str, ptr: Tensor | None = None) -> Tensor:
    """``data.edge_index`` as a long tensor ``[2, E]`` on its device, after checking it.

    Raises ``ValueError("<owner>: edge_index ...")`` when it is not a tensor of shape ``[2, E]``,
    has a non-integer dtype (float/complex/bool), holds an id outside ``[0, num_nodes)``, or, in
    a Batch (``ptr`` given, or taken from the Batch), connects nodes of two different graphs.
    A missing ``edge_index`` is an empty edge set."""
    ei = getattr(data, 'edge_index', None)
    if ei is None:
        device = torch.device('cpu')
        for key in ('x', 'pos', 'edge_attr', 'batch'):
            v = getattr(data, key, None)
            if isinstance(v, Tensor):
                device = v.device
                break
        return torch.empty(2, 0, dtype=torch.long, device=device)
    if not isinstance(ei, Tensor):
        raise ValueError(f"{owner}: edge_index must be a tensor [2, E], got {type(ei).__name__}")
    if ei.is_floating_point() or ei.is_complex() or ei.dtype == torch.bool:
        raise ValueError(f"{owner}: edge_index must be an integer tensor of node ids, got "
                         f"{ei.dtype} (a {'bool' if ei.dtype == torch.bool else 'fractional'} "
                         f"edge_index is not rounded or cast; convert it with .long() where "
                         f"that is meant)")
    if ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"{owner}: edge_index must have shape [2, E], got {list(ei.shape)}")
    ei = ei.to(torch.long)
    N = int(data.num_nodes or 0)
    if ei.numel():
        lo, hi = int(ei.min()), int(ei.max())
        if lo < 0 or hi >= N:
            bad = int(torch.nonzero(((ei < 0) | (ei >= N)).any(0))[0])
            s, t = ei[:, bad].tolist()
            raise ValueError(f"{owner}: edge_index has node ids outside [0, {N}) (min {lo}, "
                             f"max {hi}; first bad edge {bad}: {s} -> {t})")
    if ptr is None:
        ptr = batch_ptr(data, owner)
    if ptr.numel() > 2 and ei.numel():
        bounds = ptr[1:-1].to(ei.device)
        g = torch.bucketize(ei, bounds, right=True)                 # graph of every endpoint
        cross = g[0] != g[1]
        if bool(cross.any()):
            bad = int(torch.nonzero(cross)[0])
            s, t = ei[:, bad].tolist()
            gs, gt = g[:, bad].tolist()
            raise ValueError(f"{owner}: edge_index connects nodes of different graphs of the "
                             f"batch (edge {bad}: node {s} of graph {gs} -> node {t} of graph "
                             f"{gt}); a Batch must be block-diagonal")
    return ei
