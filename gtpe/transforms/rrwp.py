r"""Relative random-walk probabilities (RRWP) of GRIT.

Ma et al., "Graph Inductive Biases in Transformers without Message Passing", ICML 2023
(https://arxiv.org/abs/2305.17589).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from gtpe.transforms import _sparse as sp
from gtpe.transforms._validate import check_int


def _dense_rrwp(P: Tensor, valid: Tensor, K: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """``[I, P, ..., P^(K-1)]`` of a batch ``P [B, n, n]`` (the identity only on the real nodes
    ``valid [B, n]``).  Returns ``(diag [B, n, K], flat [M] or None, val [M, K] float32)``:
    the flat indices ``(b * n + i) * n + j`` of the nonzero pairs in (graph, row, col) order
    (``None``: all ``B n^2`` entries, in that order) and their values.  All entries are
    >= 0, so a pair is nonzero iff the sum over the K matrices is."""
    B, n, _ = P.shape
    T = P.new_empty(K, B, n, n)                   # all powers, contiguous per power
    T[0] = torch.diag_embed(valid.to(P.dtype))
    if K > 1:
        T[1] = P
    for t in range(2, K):
        torch.bmm(T[t - 1], P, out=T[t])
    diag = T.diagonal(dim1=2, dim2=3).permute(1, 2, 0)   # [B, n, K]
    flat_T = T.view(K, -1)
    keep = flat_T.sum(0) > 0
    # one transposing, converting copy into pair-major float32 rows
    val = torch.empty(flat_T.size(1), K, dtype=torch.float32, device=P.device)
    val.copy_(flat_T.t())
    if bool(keep.all()):
        return diag, None, val
    flat = torch.nonzero(keep).view(-1)
    return diag, flat, val.index_select(0, flat)


def _sparse_rrwp(rowptr: Tensor, col: Tensor, val: Tensor, n: int, K: int,
                 max_block_elems: int = 1 << 23) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of ``[I, P, ..., P^(K-1)]`` of one graph for blocks of source nodes (sparse
    propagation with ``P^T``; never the full ``n x n x K`` tensor).  Returns ``(diag [n, K],
    index [2, M] local, sorted by (row, col), val [M, K])``."""
    device = col.device
    row = torch.repeat_interleave(torch.arange(n, device=device), rowptr[1:] - rowptr[:-1])
    deg = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, row, val)
    dinv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-300), torch.zeros_like(deg))
    pv = dinv[row] * val
    # P^T in CSR: rows = col of P
    perm = torch.argsort(col * n + row)
    tcol = row[perm]
    trow = col[perm]
    tptr = torch.zeros(n + 1, dtype=torch.long, device=device)
    tptr[1:] = torch.bincount(trow, minlength=n).cumsum(0)
    PT = sp.csr_tensor(tptr, tcol, pv[perm], n)
    diag = torch.zeros(n, K, dtype=torch.float64, device=device)
    idx_parts: list[Tensor] = []
    val_parts: list[Tensor] = []
    block = max(1, min(n, max_block_elems // max(n * K, 1)))
    for s in range(0, n, block):
        src = torch.arange(s, min(n, s + block), device=device)
        b = src.numel()
        ar = torch.arange(b, device=device)
        Y = torch.zeros(n, b, dtype=torch.float64, device=device)
        Y[src, ar] = 1.0
        stack = torch.zeros(b, n, K, dtype=torch.float64, device=device)
        stack[:, :, 0] = Y.t()
        for t in range(1, K):
            Y = torch.sparse.mm(PT, Y)                       # column k = row src[k] of P^t
            stack[:, :, t] = Y.t()
        diag[src] = stack[ar, src]
        nz = (stack != 0).any(-1)                            # [b, n]
        r, c = torch.nonzero(nz, as_tuple=True)              # row-major order
        idx_parts.append(torch.stack([src[r], c]))
        val_parts.append(stack[r, c])
    return diag, torch.cat(idx_parts, 1), torch.cat(val_parts, 0)


class AddRRWP(BaseTransform):
    r"""Relative random-walk probabilities of GRIT (Ma et al., ICML 2023):

    .. math:: \mathbf{P}_{ij} = \big[I_{ij}, P_{ij}, (P^2)_{ij}, \dots,
              (P^{K-1})_{ij}\big] \in \mathbb{R}^K, \qquad P = D^{-1} A,

    for every ordered pair ``(i, j)`` of the same graph with a nonzero entry in any of the
    ``K = walk_length`` matrices (i.e. ``j`` reachable from ``i`` in at most ``K - 1`` steps;
    the diagonal is always included).  Writes

    * ``data.rrwp [N, K]``: the diagonal ``P_ii`` (column 0 is 1),
    * ``data.rrwp_index [2, M]`` (long): the pairs, sorted by (row, col), no duplicates
      (global node ids of a Batch),
    * ``data.rrwp_val [M, K]``: their values,

    all float32, computed in float64.  ``A`` as in :class:`~gtpe.transforms.AddRWSE`
    (``edge_weight`` if present, duplicates summed, self-loops kept, edge directions kept;
    a node without out-edges has a zero row of ``P``; a float/bool ``edge_index``, ids
    outside ``[0, N)`` or an edge between two graphs of a Batch are a ``ValueError``).  Graphs up to ``dense_max_nodes``
    nodes use batched dense float64 matmuls over size buckets; larger graphs sparse
    propagation over blocks of rows (memory ``O(M K)`` for the output, as GRIT).

    Args:
        walk_length (int): ``K``, the number of channels including the identity, an integer
            >= 1 (default 21; a ``bool`` or ``float`` is an error).
        dense_max_nodes (int): graphs up to this size use the dense batched path (>= 0;
            0: every graph takes the sparse path).
    """
    supports_batch = True
    batch_keys = ('edge_index', 'edge_weight')  # what forward reads (gtpe.precompute)

    def __init__(self, walk_length: int = 21, dense_max_nodes: int = 128) -> None:
        self.walk_length = check_int(walk_length, 'walk_length', 'AddRRWP')
        self.dense_max_nodes = check_int(dense_max_nodes, 'dense_max_nodes', 'AddRRWP',
                                         minimum=0)

    def forward(self, data):
        K = self.walk_length
        ei, w, ptr = sp.get_edges(data, 'AddRRWP')
        device = ei.device
        N = int(ptr[-1])
        G = ptr.numel() - 1
        sizes = ptr[1:] - ptr[:-1]
        nb = sp.node_graph(ptr, device)
        ge = sp.GraphEdges(ei, w, ptr, nb)
        diag = torch.zeros(N, K, dtype=torch.float64, device=device)
        # segments: (graph ids, per-graph pair counts, pair index [2, c] global, values
        # [c, K]), each in (graph, row, col) order; placed into graph order at the end
        segs: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        ptr_d = ptr.to(device)
        with sp.single_thread(device.type == 'cpu'):
            for n_pad, gids in sp.dense_groups(sizes, self.dense_max_nodes, exact_max=64):
                A = sp.dense_adjacency(ge, gids, n_pad)
                valid, nodes = sp.node_index_of(ptr, gids, n_pad, device)
                d, flat, v = _dense_rrwp(sp.row_normalize(A), valid, K)
                diag[nodes] = d[valid]
                B = gids.numel()
                start = ptr_d[gids.to(device)]
                if flat is None:                       # every (i, j) of every graph
                    ar = torch.arange(n_pad, device=device)
                    i = ar.repeat_interleave(n_pad).repeat(B)
                    j = ar.repeat(B * n_pad)
                    b_start = start.repeat_interleave(n_pad * n_pad)
                    cnt = torch.full((B,), n_pad * n_pad, dtype=torch.long)
                else:
                    b = flat // (n_pad * n_pad)
                    i = (flat // n_pad) % n_pad
                    j = flat % n_pad
                    b_start = start[b]
                    cnt = torch.bincount(b, minlength=B).cpu()
                segs.append((gids.cpu(), cnt, torch.stack([b_start + i, b_start + j]), v))
        for g in torch.nonzero(sizes > self.dense_max_nodes).view(-1).tolist():
            n, s = int(sizes[g]), int(ptr[g])
            loc, lw = ge.local(g)
            rowptr, col, val = sp.coalesce_csr(loc, lw, n)
            d, idx, v = _sparse_rrwp(rowptr, col, val, n, K)
            diag[s:s + n] = d
            segs.append((torch.tensor([g]), torch.tensor([idx.size(1)]), idx + s,
                         v.to(torch.float32)))
        counts = torch.zeros(G, dtype=torch.long)
        for gids, cnt, _, _ in segs:
            counts[gids] = cnt
        off = torch.zeros(G, dtype=torch.long)
        off[1:] = counts.cumsum(0)[:-1]
        M = int(counts.sum())
        index = torch.empty(2, M, dtype=torch.long, device=device)
        value = torch.empty(M, K, dtype=torch.float32, device=device)
        for gids, cnt, idx, v in segs:
            # every graph's pairs are one contiguous block in the segment and in the
            # graph-ordered output: one slice copy per graph (a row-wise index_copy_ is ~2x
            # slower for these short rows)
            src = 0
            for o, c in zip(off[gids].tolist(), cnt.tolist()):
                if c:
                    value[o:o + c].copy_(v[src:src + c])
                    index[:, o:o + c].copy_(idx[:, src:src + c])
                    src += c
        sp.set_attr(data, 'rrwp', diag.to(torch.float32))
        sp.set_attr(data, 'rrwp_index', index, counts=counts, increment=True)
        sp.set_attr(data, 'rrwp_val', value, counts=counts)
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(walk_length={self.walk_length}, '
                f'dense_max_nodes={self.dense_max_nodes})')
