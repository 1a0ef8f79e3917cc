"""Shared helpers for the batched PE transforms (graph slicing, dense buckets, Batch bookkeeping).

A :class:`~torch_geometric.data.Batch` is treated as a block-diagonal graph: graph ``g``
owns the nodes ``ptr[g]:ptr[g+1]``.  Transforms compute per-graph quantities for all
graphs at once and write their outputs with :func:`set_attr`, which also records the
per-graph slices/increments in the Batch (``_slice_dict``/``_inc_dict``) so that
``Batch.to_data_list()`` and :func:`gtpe.precompute` split the results exactly as PyG's
collate of the per-graph results would.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch_geometric.data import Batch

from gtpe.transforms._validate import batch_ptr, check_edge_index


def is_batch(data) -> bool:
    return isinstance(data, Batch) and getattr(data, '_slice_dict', None) is not None


@contextlib.contextmanager
def single_thread(active: bool = True):
    """Run the enclosed (many tiny) CPU ops on one intra-op thread, restoring the previous
    setting afterwards.  The dense bucket work is a stream of small kernels: with 2 OpenMP
    threads on busy cores each one pays a fork/join barrier and the whole precompute was
    5-10x slower (ZINC train: LapPE 11.6 s -> 1.5 s, RRWP 22.7 s -> 3.9 s).  Not thread-safe
    w.r.t. other Python threads changing torch's thread count concurrently."""
    if not active:
        yield
        return
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def device_of(data) -> torch.device:
    for key in ('edge_index', 'x', 'pos', 'edge_attr'):
        v = getattr(data, key, None)
        if isinstance(v, Tensor):
            return v.device
    return torch.device('cpu')


def edge_weight_of(data, num_edges: int, device, owner: str = 'transform') -> Tensor | None:
    """``data.edge_weight`` validated (one finite, non-negative weight per edge) or ``None``."""
    w = getattr(data, 'edge_weight', None)
    if w is None:
        return None
    if not isinstance(w, Tensor):
        raise ValueError(f"{owner}: edge_weight must be a tensor [num_edges={num_edges}], got "
                         f"{type(w).__name__}")
    w = w.reshape(-1) if w.dim() == 2 and w.size(-1) == 1 else w
    if w.dim() != 1 or w.numel() != num_edges:
        raise ValueError(f"{owner}: edge_weight must have shape [num_edges={num_edges}], got "
                         f"{list(w.shape)}")
    w = w.to(device, torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{owner}: edge_weight must be finite and non-negative")
    return w


def get_edges(data, owner: str = 'transform', weights: bool = True
              ) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(edge_index [2, E] long, edge_weight float64 or None, ptr [B+1] CPU long)`` of ``data``
    after
    :func:`gtpe.transforms._validate.check_edge_index` (integer ids in ``[0, N)``, no edge
    between two graphs of a Batch); errors name ``owner``.  ``weights=False`` neither reads
    nor checks ``edge_weight``."""
    ptr = batch_ptr(data, owner)
    ei = check_edge_index(data, owner, ptr)
    return ei, edge_weight_of(data, ei.size(1), ei.device, owner) if weights else None, ptr


def node_graph(ptr: Tensor, device) -> Tensor:
    """``batch [N]``: graph id of every node."""
    counts = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel()), counts).to(device)


def bucket_size(n: int, exact_max: int = 0) -> int:
    """Padded size of the dense bucket holding graphs of ``n`` nodes (a function of ``n``
    only, so a graph is padded identically whether it comes alone or inside a Batch).
    Graphs of up to ``exact_max`` nodes are not padded (one bucket per size: no wasted
    ``n^3`` work; worth it where buckets are full, e.g. molecules)."""
    if n <= exact_max:
        return n
    if n <= 8:
        return 8
    if n <= 64:
        return -(-n // 8) * 8
    return -(-n // 32) * 32


def dense_groups(sizes: Tensor, max_nodes: int, max_elems: int = 1 << 18,
                 exact_max: int = 0) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(n_pad, graph_ids)`` for the graphs with ``1 <= n <= max_nodes``, grouped by
    padded size (:func:`bucket_size`) and chunked so that one ``[B, n_pad, n_pad]`` block has
    at most ``max_elems`` entries."""
    sizes = sizes.cpu()
    sel = torch.nonzero((sizes >= 1) & (sizes <= max_nodes)).view(-1)
    if sel.numel() == 0:
        return
    table = torch.tensor([bucket_size(n, exact_max) for n in range(int(sizes[sel].max()) + 1)],
                         dtype=torch.long)
    pads = table[sizes[sel]]
    for n_pad in torch.unique(pads).tolist():
        ids = sel[pads == n_pad]
        step = max(1, max_elems // (n_pad * n_pad))
        for s in range(0, ids.numel(), step):
            yield n_pad, ids[s:s + step]


class GraphEdges:
    """The edges of a (batched) graph grouped by graph, with local node ids.

    ``src``/``dst`` are local ids, ``weight`` float64 (or ``None``), edges of graph ``g`` at
    ``eptr[g]:eptr[g+1]`` (in their original relative order)."""

    def __init__(self, edge_index: Tensor, edge_weight: Tensor | None, ptr: Tensor,
                 node_batch: Tensor) -> None:
        device = edge_index.device
        G = ptr.numel() - 1
        g = node_batch[edge_index[0]] if edge_index.numel() else \
            torch.empty(0, dtype=torch.long, device=device)
        if g.numel() > 1 and not bool((g[1:] >= g[:-1]).all()):
            perm = torch.sort(g, stable=True).indices
            g, edge_index = g[perm], edge_index[:, perm]
            edge_weight = edge_weight[perm] if edge_weight is not None else None
        start = ptr.to(device)[g]
        self.device = device
        self.src = edge_index[0] - start
        self.dst = edge_index[1] - start
        self.weight = edge_weight
        self.graph_of = g
        counts = torch.bincount(g.cpu(), minlength=G) if g.numel() else \
            torch.zeros(G, dtype=torch.long)
        self.eptr = torch.zeros(G + 1, dtype=torch.long)
        self.eptr[1:] = counts.cumsum(0)

    def positions(self, gids: Tensor) -> Tensor:
        """Positions of the edges of the graphs ``gids`` (graph by graph)."""
        gids = gids.cpu()
        lo = self.eptr[gids]
        cnt = self.eptr[gids + 1] - lo
        off = torch.cumsum(cnt, 0) - cnt
        pos = torch.repeat_interleave(lo - off, cnt) + torch.arange(int(cnt.sum()))
        return pos.to(self.device)

    def local(self, g: int) -> tuple[Tensor, Tensor | None]:
        a, b = int(self.eptr[g]), int(self.eptr[g + 1])
        w = self.weight[a:b] if self.weight is not None else None
        return torch.stack([self.src[a:b], self.dst[a:b]]), w


def dense_adjacency(ge: GraphEdges, gids: Tensor, n_pad: int) -> Tensor:
    """``A [B, n_pad, n_pad]`` float64 of the graphs ``gids``; duplicate edges are summed
    (multigraph semantics), self-loops kept on the diagonal, padding rows are zero."""
    device = ge.device
    B = gids.numel()
    A = torch.zeros(B * n_pad * n_pad, dtype=torch.float64, device=device)
    pos = ge.positions(gids)
    if pos.numel():
        cnt = (ge.eptr[gids.cpu() + 1] - ge.eptr[gids.cpu()]).to(device)
        slot = torch.repeat_interleave(torch.arange(B, device=device), cnt)
        w = (ge.weight[pos] if ge.weight is not None else
             torch.ones(pos.numel(), dtype=torch.float64, device=device))
        A.index_add_(0, (slot * n_pad + ge.src[pos]) * n_pad + ge.dst[pos], w)
    return A.view(B, n_pad, n_pad)


def row_normalize(A: Tensor) -> Tensor:
    """``P = D^{-1} A`` (rows of zero degree stay zero)."""
    deg = A.sum(-1, keepdim=True)
    return torch.where(deg > 0, A / deg.clamp_min(1e-300), torch.zeros_like(A))


def node_index_of(ptr: Tensor, graph_ids: Tensor, n_pad: int, device) -> tuple[Tensor, Tensor]:
    """(``mask [B, n_pad]`` of real nodes, global node ids of those entries)."""
    ptr = ptr.to(device)
    gids = graph_ids.to(device)
    start = ptr[gids]
    n = ptr[gids + 1] - start
    ar = torch.arange(n_pad, device=device)
    mask = ar.unsqueeze(0) < n.unsqueeze(1)
    return mask, (start.unsqueeze(1) + ar.unsqueeze(0))[mask]


def coalesce_csr(edge_index: Tensor, edge_weight: Tensor | None, N: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Coalesced ``(rowptr, col, value)`` of ``A`` (duplicates summed, sorted by row, col)."""
    device = edge_index.device
    w = (edge_weight if edge_weight is not None else
         torch.ones(edge_index.size(1), dtype=torch.float64, device=device))
    key = edge_index[0] * N + edge_index[1]
    ukey, inv = torch.unique(key, sorted=True, return_inverse=True)
    val = torch.zeros(ukey.numel(), dtype=torch.float64, device=device).index_add_(0, inv, w)
    row, col = ukey // max(N, 1), ukey % max(N, 1)
    rowptr = torch.zeros(N + 1, dtype=torch.long, device=device)
    rowptr[1:] = torch.bincount(row, minlength=N).cumsum(0)
    return rowptr, col, val


def csr_tensor(rowptr: Tensor, col: Tensor, val: Tensor, N: int) -> Tensor:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)   # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(rowptr, col, val, (N, N), check_invariants=False)


def set_attr(data, key: str, value: Tensor, counts: Tensor | None = None,
             increment: bool = False, cat_dim: int = 0) -> None:
    """Set ``data[key] = value``; on a Batch also record ``_slice_dict``/``_inc_dict``.

    ``counts [B]`` is the size of every graph's part along ``cat_dim`` (defaults to the
    node counts); ``increment`` marks index attributes that hold global node ids (their
    per-graph increment is the node offset ``ptr[g]``)."""
    data[key] = value
    if not is_batch(data):
        return
    ptr = batch_ptr(data, 'transform')
    if counts is None:
        counts = ptr[1:] - ptr[:-1]
    counts = counts.to('cpu', torch.long)
    # copies: a Batch shallow-copied by BaseTransform.__call__ shares these dicts
    data._slice_dict = dict(data._slice_dict)
    data._inc_dict = dict(data._inc_dict)
    slices = torch.zeros(counts.numel() + 1, dtype=torch.long)
    slices[1:] = counts.cumsum(0)
    data._slice_dict[key] = slices
    data._inc_dict[key] = (ptr[:-1].clone() if increment else
                           torch.zeros(counts.numel(), dtype=torch.long))
