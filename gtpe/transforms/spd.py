r"""Shortest-path distances and degrees: Graphormer's spatial and centrality encodings, and
(``path_len > 0``) one shortest path per pair for its edge encoding.

Ying et al., "Do Transformers Really Perform Bad for Graph Representation?", NeurIPS 2021
(https://arxiv.org/abs/2106.05234).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from gtpe.transforms import _sparse as sp
from gtpe.transforms._validate import check_int


def _dense_spd(A: Tensor, valid: Tensor, max_dist: int) -> Tensor:
    """Hop distances of a batch of graphs, ``A [B, n, n]`` (nonzero: an edge ``i -> j``) with
    the real nodes ``valid [B, n]``, by frontier expansion: the nodes first reached at step
    ``t`` are ``(F_{t-1} A > 0) & ~R_{t-1}`` (``F`` the previous frontier, ``R`` everything
    reached so far).  Returns ``D [B, n, n]`` long, ``-1`` where ``j`` is not reached from ``i``
    within ``max_dist`` steps (and on padding)."""
    Af = (A > 0).to(torch.float32)                # 0/1 products: sums are exact, > 0 is robust
    R = torch.diag_embed(valid)                   # bool [B, n, n]
    D = torch.full(A.shape, -1, dtype=torch.long, device=A.device)
    D[R] = 0
    F = R.to(torch.float32)
    for t in range(1, max_dist + 1):
        new = (torch.bmm(F, Af) > 0) & ~R
        if not bool(new.any()):
            break
        D[new] = t
        R |= new
        F = new.to(torch.float32)
    return D


def _merge(a: Tensor, a_val: Tensor, b: Tensor, b_val: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two sorted, disjoint key arrays (with values) into one sorted array (two sorted
    searches and a scatter, no sort)."""
    pos_a = torch.arange(a.numel(), device=a.device) + torch.searchsorted(b, a)
    pos_b = torch.arange(b.numel(), device=b.device) + torch.searchsorted(a, b)
    keys = torch.empty(a.numel() + b.numel(), dtype=a.dtype, device=a.device)
    vals = torch.empty_like(keys)
    keys[pos_a], keys[pos_b] = a, b
    vals[pos_a], vals[pos_b] = a_val, b_val
    return keys, vals


def _sparse_spd(rowptr: Tensor, col: Tensor, sources: Tensor, N: int, max_dist: int,
                max_pairs: int = 1 << 22) -> tuple[Tensor, Tensor, Tensor]:
    """Breadth-first search, limited to ``max_dist`` steps, from every node of ``sources``
    (sorted global ids) over the CSR graph ``(rowptr, col)`` of ``N`` nodes, for blocks of
    sources at once.  A reached pair ``(s, v)`` is the key ``s * N + v``; one step expands the
    frontier pairs ``(s, u)`` to ``(s, v)`` for the out-neighbours ``v`` of ``u`` and keeps the
    keys not yet visited (sorted search).  Time and memory grow with the number of pairs within
    ``max_dist`` (and their frontier's out-edges), never with ``N^2``; the block of sources
    adapts so that one block holds about ``max_pairs`` pairs or candidates.  Returns
    ``(src, dst, dist)`` sorted by (src, dst)."""
    device = col.device
    keys: list[Tensor] = []
    dists: list[Tensor] = []
    total = sources.numel()
    s, block = 0, min(total, 256)
    while s < total:
        src = sources[s:s + block]
        s += src.numel()
        visited = src * N + src                                 # sorted: sources are sorted
        dist = torch.zeros_like(src)
        front_s, front_u = src, src
        peak = src.numel()
        for t in range(1, max_dist + 1):
            lo = rowptr[front_u]
            deg = rowptr[front_u + 1] - lo
            n_cand = int(deg.sum())
            if n_cand == 0:
                break
            peak = max(peak, n_cand)
            owner = torch.repeat_interleave(torch.arange(deg.numel(), device=device), deg)
            first = torch.cumsum(deg, 0) - deg
            v = col[lo[owner] + torch.arange(n_cand, device=device) - first[owner]]
            cand = torch.unique(front_s[owner] * N + v)          # sorted, no duplicates
            pos = torch.searchsorted(visited, cand).clamp_max(visited.numel() - 1)
            new = cand[visited[pos] != cand]
            if new.numel() == 0:
                break
            front_s, front_u = new // N, new % N
            visited, dist = _merge(visited, dist, new, torch.full_like(new, t))
        keys.append(visited)                                    # blocks in source order
        dists.append(dist)
        per_source = max(visited.numel(), peak) / src.numel()
        block = int(max(1, min(total, max_pairs // max(per_source, 1.0))))
    if not keys:
        e = torch.empty(0, dtype=torch.long, device=device)
        return e, e, e
    key = torch.cat(keys)
    return key // N, key % N, torch.cat(dists)


def _shortest_paths(rowptr: Tensor, col: Tensor, index: Tensor, val: Tensor, N: int,
                    path_len: int, max_cand: int = 1 << 22) -> Tensor:
    """One shortest path per pair, as node sequences ``[path_len + 1, M]``: column ``m`` walks
    from ``index[0, m]`` toward ``index[1, m]`` over the CSR graph ``(rowptr, col)`` (sorted,
    no duplicates), truncated to ``path_len`` steps, then padded by repeating its last node.
    ``index [2, M]`` must be sorted by the key ``source * N + target`` and closed under the
    walk (every pair ``(v, target)`` at distance ``< val`` listed, which holds for all pairs
    within ``max_dist``), ``val [M]`` the distances.  Each step moves to the smallest-id
    out-neighbour ``v`` of the current node with ``phi(v, target) = phi(current, target) - 1``
    (a listed pair found by a sorted search), so the path is the lexicographically smallest
    shortest node sequence and a graph gives the same path alone or in a Batch.  Candidates
    are processed in blocks of about ``max_cand`` out-edges."""
    device = index.device
    M = index.size(1)
    out = torch.empty(path_len + 1, M, dtype=torch.long, device=device)
    src, dst = index[0], index[1]
    out[0] = src
    if M == 0:
        return out
    pair_key = src * N + dst
    cur = src.clone()
    act = torch.nonzero(val > 0).view(-1)            # pairs still walking
    for t in range(1, path_len + 1):
        if act.numel():
            rem = val[act] - (t - 1)                    # distance left before this step
            lo = rowptr[cur[act]]
            deg = rowptr[cur[act] + 1] - lo
            n_cand = int(deg.sum())
            block = max(1, act.numel() * max_cand // max(n_cand, 1))
            for s in range(0, act.numel(), block):
                a, r, lo_b, deg_b = act[s:s + block], rem[s:s + block], lo[s:s + block], \
                    deg[s:s + block]
                owner = torch.repeat_interleave(torch.arange(a.numel(), device=device), deg_b)
                first = torch.cumsum(deg_b, 0) - deg_b
                v = col[lo_b[owner] + torch.arange(owner.numel(), device=device) - first[owner]]
                key = v * N + dst[a][owner]
                pos = torch.searchsorted(pair_key, key).clamp_max(M - 1)
                ok = (pair_key[pos] == key) & (val[pos] == r[owner] - 1)
                nxt = torch.full_like(a, N).scatter_reduce_(0, owner[ok], v[ok], 'amin')
                cur[a] = nxt                            # found: a shortest path goes on
            act = act[rem > 1]
        out[t] = cur
    return out


class AddSPD(BaseTransform):
    r"""Shortest-path distances and degrees, Graphormer's spatial and centrality encodings
    (Ying et al., NeurIPS 2021):

    .. math:: \phi(i, j) = \min\{\, t \ge 0 : (A^t)_{ij} > 0 \,\},
              \qquad \deg^-(i) = |\{ j \ne i : A_{ji} > 0 \}|,
              \quad \deg^+(i) = |\{ j \ne i : A_{ij} > 0 \}|,

    the number of edges on a shortest path from ``i`` to ``j`` (hops; ``A_ij > 0`` iff there is
    an edge ``i -> j``; ``phi(i, i) = 0``).  Writes

    * ``data.spd_index [2, M]`` (long): every ordered pair ``(i, j)`` of the same graph with
      ``phi(i, j) <= max_dist``, including ``(i, i)``, sorted by (source ``i``, target ``j``),
      no duplicates (global node ids of a Batch).  Row 0 is the start of the path, row 1 its
      end: the orientation of ``rrwp_index`` (whose ``P_ij`` is the step ``i -> j``), so for
      ``directed=True`` the pairs are exactly those of ``AddRRWP(max_dist + 1)`` on the
      unweighted graph.  Pairs farther apart, or in different components, are absent;
    * ``data.spd_val [M]`` (long): their distances ``phi(i, j)`` in ``0..max_dist``;
    * ``data.in_degree [N]``, ``data.out_degree [N]`` (long): the number of distinct in-/
      out-neighbours, self-loops not counted;
    * with ``path_len > 0``, ``data.spd_path_index [path_len + 1, M]`` (long), for Graphormer's
      edge encoding (Eq. 7): column ``m`` holds the nodes of one shortest path from
      ``spd_index[0, m]`` to ``spd_index[1, m]``, truncated to its first ``path_len`` edges
      (Graphormer's ``multi_hop_max_dist``) and padded by repeating its last node.  Row 0 is
      ``spd_index[0, m]``; rows ``1..min(phi, path_len)`` are the real steps, each an edge of
      the graph described below (with ``directed=False`` possibly stored in ``edge_index`` in
      the other direction only), so consecutive real nodes differ; every later row repeats the
      last one (a step with ``node[t] == node[t + 1]`` is padding; no ``-1``).  The last row is
      ``spd_index[1, m]`` iff ``phi <= path_len``.  The path is the lexicographically smallest
      shortest node sequence (every step goes to the smallest-id neighbour still on a shortest
      path): independent of the edge order, and the same alone or in a Batch.  Global node
      ids, like ``spd_index``, so PyG collates it as it is (``'index'`` in the name:
      concatenated along the last dimension, incremented by the node offset).

    The graph is the set of edges of ``edge_index``: duplicate edges count once, self-loops
    are ignored (``phi(i, i) = 0`` anyway) and ``edge_weight`` is neither read nor checked.
    With ``directed=False`` (default, Graphormer on molecules) it is symmetrised first: an edge
    in either direction is a step both ways, ``phi`` is symmetric and ``in_degree ==
    out_degree`` is the undirected degree.  With ``directed=True`` paths follow the edge
    directions and both degrees are those of the directed graph.  An undirected input (both
    directions stored) gives the same result either way.  ``edge_index`` must hold integer
    node ids in ``[0, N)`` and, in a Batch, no edge between two graphs (``ValueError``).

    Graphs up to ``dense_max_nodes`` nodes are processed all at once, bucketed by size, by
    frontier expansion with batched dense 0/1 matmuls (``max_dist`` of them at most, fewer
    once no pair is added); larger graphs by a breadth-first search limited to ``max_dist``
    steps over sparse pair sets (time and memory of the order of the number of pairs within
    ``max_dist``, never ``N^2``).  A graph gives the same output alone or anywhere in a Batch.

    Args:
        max_dist (int): the largest distance kept, an integer >= 1 (default 5; a ``bool`` or
            ``float`` is an error).
        directed (bool): follow edge directions (``True``) or symmetrise (``False``).
        dense_max_nodes (int): graphs up to this size take the dense batched path (>= 0;
            0: every graph takes the sparse search).
        path_len (int): the number of edges of each pair's shortest path written to
            ``spd_path_index`` (>= 0; default 0: none, no ``spd_path_index``).  Paths come from
            the distances by a sorted search, ``path_len`` steps over the pairs' out-edges (no
            ``N^2`` tables on the sparse path).
    """
    supports_batch = True
    batch_keys = ('edge_index',)  # what forward reads (gtpe.precompute)
    # a class default: AddSPD(path_len=0) keeps the parameter state (gtpe.precompute's cache
    # fingerprint) of transforms made before path_len existed
    path_len = 0

    def __init__(self, max_dist: int = 5, directed: bool = False,
                 dense_max_nodes: int = 128, path_len: int = 0) -> None:
        self.max_dist = check_int(max_dist, 'max_dist', 'AddSPD')
        if directed is not True and directed is not False:
            raise ValueError(f"AddSPD: directed must be a bool, got {directed!r}")
        self.directed = directed
        self.dense_max_nodes = check_int(dense_max_nodes, 'dense_max_nodes', 'AddSPD',
                                         minimum=0)
        path_len = check_int(path_len, 'path_len', 'AddSPD', minimum=0)
        if path_len:
            self.path_len = path_len

    def forward(self, data):
        ei, _, ptr = sp.get_edges(data, 'AddSPD', weights=False)
        device = ei.device
        N = int(ptr[-1])
        G = ptr.numel() - 1
        sizes = ptr[1:] - ptr[:-1]
        # the graph: self-loops dropped, symmetrised unless directed, duplicates merged
        ei = ei[:, ei[0] != ei[1]]
        if not self.directed:
            ei = torch.cat([ei, ei.flip(0)], 1)
        key = torch.unique(ei[0] * N + ei[1])                   # sorted by (row, col)
        row, col = key // max(N, 1), key % max(N, 1)
        out_degree = torch.bincount(row, minlength=N)
        in_degree = torch.bincount(col, minlength=N)

        nb = sp.node_graph(ptr, device)
        # parts (source, target, distance), each sorted by (source, target), holding whole
        # graphs (a dense chunk, or the sparse search over all large graphs)
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        ge = sp.GraphEdges(torch.stack([row, col]), None, ptr, nb)
        ptr_d = ptr.to(device)
        with sp.single_thread(device.type == 'cpu'):
            for n_pad, gids in sp.dense_groups(sizes, self.dense_max_nodes, exact_max=64):
                A = sp.dense_adjacency(ge, gids, n_pad)
                valid, _ = sp.node_index_of(ptr, gids, n_pad, device)
                D = _dense_spd(A, valid, self.max_dist).view(-1)
                flat = torch.nonzero(D >= 0).view(-1)         # (graph, source, target) order
                start = ptr_d[gids.to(device)][flat // (n_pad * n_pad)]
                parts.append((start + (flat // n_pad) % n_pad, start + flat % n_pad, D[flat]))
        big = (sizes > self.dense_max_nodes).to(device)[nb]
        if bool(big.any()):
            rowptr = torch.zeros(N + 1, dtype=torch.long, device=device)
            rowptr[1:] = torch.cumsum(out_degree, 0)
            parts.append(_sparse_spd(rowptr, col, torch.nonzero(big).view(-1), N,
                                     self.max_dist))
        # place every graph's pairs at its offset in the graph-ordered output (no global sort)
        graph_of = [nb[src] for src, _, _ in parts]
        part_counts = [torch.bincount(g, minlength=G) for g in graph_of]
        counts = sum(part_counts, torch.zeros(G, dtype=torch.long, device=device))
        off = torch.cumsum(counts, 0) - counts
        M = int(counts.sum())
        index = torch.empty(2, M, dtype=torch.long, device=device)
        val = torch.empty(M, dtype=torch.long, device=device)
        for (src, dst, dist), g, cnt in zip(parts, graph_of, part_counts):
            first = (torch.cumsum(cnt, 0) - cnt)[g]           # first pair of g in the part
            pos = off[g] + torch.arange(g.numel(), device=device) - first
            index[0, pos], index[1, pos], val[pos] = src, dst, dist
        counts = counts.cpu()
        sp.set_attr(data, 'spd_index', index, counts=counts, increment=True)
        sp.set_attr(data, 'spd_val', val, counts=counts)
        if self.path_len:
            rowptr = torch.zeros(N + 1, dtype=torch.long, device=device)
            rowptr[1:] = torch.cumsum(out_degree, 0)
            with sp.single_thread(device.type == 'cpu'):
                paths = _shortest_paths(rowptr, col, index, val, N, self.path_len)
            sp.set_attr(data, 'spd_path_index', paths, counts=counts, increment=True)
        sp.set_attr(data, 'in_degree', in_degree)
        sp.set_attr(data, 'out_degree', out_degree)
        return data

    def __repr__(self) -> str:
        path = f', path_len={self.path_len}' if self.path_len else ''
        return (f'{self.__class__.__name__}(max_dist={self.max_dist}, '
                f'directed={self.directed}, dense_max_nodes={self.dense_max_nodes}{path})')
