r"""Random regular expander overlay of Exphormer.

Shirzad et al., "Exphormer: Sparse Transformers for Graphs", ICML 2023
(https://arxiv.org/abs/2303.06147).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from gtpe.transforms import _sparse as sp
from gtpe.transforms._validate import check_float, check_int

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2^32`` for ``0 <= x < 2^32`` in int64 without overflow."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """The 'lowbias32' integer hash (C. Wellons) on int64 tensors holding 32-bit values;
    pure integer arithmetic, hence identical on every device."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def ramanujan_bound(degree: int) -> float:
    """``2 sqrt(2d - 1)``: the Ramanujan bound of a ``2d``-regular graph."""
    return 2.0 * math.sqrt(2 * degree - 1)


class AddExpanderEdges(BaseTransform):
    r"""Random regular expander overlay of Exphormer (Shirzad et al., ICML 2023).

    For a graph with ``n > 2d + 1`` nodes (``d = degree``) draw ``d`` uniformly random
    permutations :math:`\sigma_1, \dots, \sigma_d` of its nodes and add both directions of
    every pair :math:`(i, \sigma_k(i))`.  The result is a ``2d``-regular multigraph (every node
    has ``2d`` outgoing and ``2d`` incoming edges; a fixed point :math:`\sigma_k(i) = i`
    gives two self-loops ``i -> i``), symmetric, with adjacency
    :math:`A = \sum_k (\Pi_k + \Pi_k^\top)`, whose top eigenvalue is ``2d``.  By Friedman's
    theorem such a graph is nearly Ramanujan with high probability; every draw is checked:
    it is accepted if

    .. math:: \lambda = \max_{i \geq 2} |\lambda_i(A)| \leq 2\sqrt{2d-1} + \texttt{tol}

    and :math:`\lambda < 2d` (connected, not bipartite) (``tol = 0.5`` by default; graphs up
    to ``dense_check_nodes`` nodes use dense
    ``eigvalsh``, larger ones ARPACK ``eigsh``), otherwise redrawn, up to ``max_retries``
    draws; if no draw passes, the draw with the smallest ``lambda`` is kept (a draw with
    ``lambda = 2d``, i.e. disconnected or bipartite, is kept only if all draws are).

    With ``degree = 1`` the overlay is a union of cycles (2-regular); it is not an expander
    (the best draw, e.g. one odd cycle, is kept).

    Tiny graphs: ``n <= 2d + 1`` get the complete graph without self-loops (``n - 1 <= 2d``
    edges per node and direction, the optimal expander on ``n`` nodes; ``n = 1``: no edges).

    Writes ``data.expander_index [2, 2 d n]`` (long, sorted by (row, col), duplicates kept).

    Randomness: the permutations of a graph come from a counter-based integer hash of
    ``(seed, n, hash of the graph's edge set, draw number, permutation number, node)``,
    turned into a permutation by sorting the hashed keys.  A graph therefore gets the same
    overlay alone or at any position of any Batch (a Batch equals the collated per-graph
    results), the same seed gives the same output bit for bit on every device, and graphs
    with different structure get different overlays.

    Args:
        degree (int): ``d``, the number of permutations (default 3: a 6-regular overlay).
        seed (int): the seed, an integer in ``[0, 2**64)``.  There is no unseeded mode:
            ``seed=None`` is an error (the overlay is a function of the seed and the graph).
        max_retries (int): maximal number of draws per graph (>= 1).
        tol (float): slack over the Ramanujan bound ``2 sqrt(2d - 1)`` (finite, >= 0).
        dense_check_nodes (int): largest graph checked with dense ``eigvalsh``.
        check_max_nodes (int): largest graph whose draw is checked at all; larger graphs keep
            their first draw unchecked (a random ``2d``-regular graph is within any
            :math:`\epsilon` of the Ramanujan bound with probability :math:`1 - o(1)` as
            :math:`n` grows, Friedman 2008; and the sparse eigensolver for the second
            eigenvalue, whose neighbours crowd the spectrum's edge, slows down sharply with
            :math:`n`: it did not finish in 25 minutes at :math:`10^6` nodes on a 2-core CPU).

    ``edge_index`` must hold integer node ids in ``[0, N)`` and, in a Batch, no edge between
    two graphs (``ValueError`` otherwise); ``edge_weight`` is not read.
    """
    supports_batch = True
    batch_keys = ('edge_index',)  # what forward reads (gtpe.precompute)

    def __init__(self, degree: int = 3, seed: int = 0, max_retries: int = 10,
                 tol: float = 0.5, dense_check_nodes: int = 512,
                 check_max_nodes: int = 20_000) -> None:
        name = 'AddExpanderEdges'
        self.degree = check_int(degree, 'degree', name)
        if seed is None or isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"AddExpanderEdges: seed must be an integer in [0, 2**64) (the "
                             f"overlay is a deterministic function of the seed and the graph; "
                             f"there is no unseeded mode), got {seed!r}")
        self.seed = check_int(seed, 'seed', name, minimum=0, maximum=2**64)
        self.max_retries = check_int(max_retries, 'max_retries', name)
        self.tol = check_float(tol, 'tol', name)
        self.dense_check_nodes = check_int(dense_check_nodes, 'dense_check_nodes', name,
                                           minimum=0)
        self.check_max_nodes = check_int(check_max_nodes, 'check_max_nodes', name, minimum=0)

    @property
    def threshold(self) -> float:
        """Largest accepted ``max_{i>=2} |lambda_i|``: ``2 sqrt(2d-1) + tol``, and always below
        ``2d`` (connected and not bipartite)."""
        return min(ramanujan_bound(self.degree) + self.tol, 2.0 * self.degree - 1e-6)

    # ------------------------------------------------------------------ randomness
    def _graph_hash(self, ei: Tensor, ptr: Tensor, nb: Tensor) -> Tensor:
        """Per-graph 32-bit hash of (seed, n, multiset of local edges)."""
        device = ei.device
        G = ptr.numel() - 1
        ptr_d = ptr.to(device)
        n = (ptr_d[1:] - ptr_d[:-1])
        h = torch.zeros(G, dtype=torch.long, device=device)
        if ei.size(1):
            g = nb[ei[0]]
            s = ei[0] - ptr_d[g]
            t = ei[1] - ptr_d[g]
            e = _mix32(_mix32(s + 0x9E3779B9) ^ t)
            h.index_add_(0, g, e)
            h = h & _M32
        base = _mix32(torch.full((G,), self.seed & _M32, dtype=torch.long, device=device)
                      ^ _mix32(torch.full((G,), (self.seed >> 32) & _M32, dtype=torch.long,
                                          device=device) + 0x85EBCA6B))
        return _mix32(_mix32(base ^ (n & _M32)) ^ h)

    def _draw(self, gids: Tensor, attempt: Tensor, ghash: Tensor, ptr: Tensor,
              device) -> Tensor:
        """Edges (global ids, unsorted) of draw ``attempt[g]`` for the graphs ``gids``."""
        d = self.degree
        ptr_d = ptr.to(device)
        gids = gids.to(device)
        start = ptr_d[gids]
        n = ptr_d[gids + 1] - start
        B = gids.numel()
        tot = int(n.sum())
        # node list of the selected graphs, d copies
        gslot = torch.repeat_interleave(torch.arange(B, device=device), n)        # [tot]
        local = torch.arange(tot, device=device) - torch.repeat_interleave(
            torch.cumsum(n, 0) - n, n)
        node = start[gslot] + local
        k = torch.arange(d, device=device).repeat_interleave(tot)                  # [d*tot]
        gs = gslot.repeat(d)
        loc = local.repeat(d)
        stream = _mix32(ghash[gids][gs] ^ _mix32(attempt.to(device)[gids][gs] * d + k + 1))
        h1 = _mix32(stream ^ loc)
        h2 = _mix32(h1 ^ 0x68E31DA4)
        key = (h1 << 30) | (h2 >> 2)                                              # 62 bits
        group = k * B + gs
        o1 = torch.sort(key, stable=True).indices
        o2 = torch.sort(group[o1], stable=True).indices
        order = o1[o2]                      # grouped by (k, graph), random order inside
        # position p of group (k, g) maps the p-th node of g to the p-th sorted node
        src = node.repeat(d)
        dst = src[order]
        return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])

    # ------------------------------------------------------------------ spectral check
    def _second_eig(self, edges: Tensor, gids: Tensor, ptr: Tensor, nb: Tensor) -> Tensor:
        """``max_{i>=2} |lambda_i(A)|`` per graph of ``gids`` (CPU float64)."""
        sizes = (ptr[1:] - ptr[:-1]).clone()
        keep = torch.zeros_like(sizes, dtype=torch.bool)
        keep[gids.cpu()] = True
        sizes_sel = torch.where(keep, sizes, torch.zeros_like(sizes))
        lam = torch.zeros(ptr.numel() - 1, dtype=torch.float64)
        ge = sp.GraphEdges(edges, None, ptr, nb)
        for n_pad, ids in sp.dense_groups(sizes_sel, self.dense_check_nodes, 1 << 20):
            A = sp.dense_adjacency(ge, ids, n_pad)
            ev = torch.linalg.eigvalsh(A).cpu()               # ascending; padding adds 0s
            top = ev[:, -1]
            second = torch.maximum(ev[:, -2].abs(), ev[:, 0].abs())
            lam[ids] = torch.where(top > 0, second, torch.zeros_like(top))
        big = torch.nonzero(sizes_sel > self.dense_check_nodes).view(-1).tolist()
        for g in big:
            lam[g] = self._second_eig_sparse(ge, g)
        return lam

    def _second_eig_sparse(self, ge: sp.GraphEdges, g: int) -> float:
        import numpy as np
        import scipy.sparse as ssp
        from scipy.sparse.linalg import eigsh
        loc, _ = ge.local(g)
        e = loc.cpu().numpy()
        n = int(e.max()) + 1 if e.size else 1
        A = ssp.csr_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
        v0 = np.cos(np.arange(n) * 0.7 + 0.3)
        vals = eigsh(A, k=2, which='LM', v0=v0, return_eigenvectors=False, tol=1e-6)
        vals = np.sort(np.abs(vals))
        return float(vals[0])

    # ------------------------------------------------------------------ forward
    def forward(self, data):
        d = self.degree
        ei, _, ptr = sp.get_edges(data, 'AddExpanderEdges', weights=False)
        device = ei.device
        G = ptr.numel() - 1
        sizes = ptr[1:] - ptr[:-1]
        nb = sp.node_graph(ptr, device)
        ghash = self._graph_hash(ei, ptr, nb)
        parts = []
        # tiny graphs: complete graph without self-loops
        tiny = torch.nonzero((sizes >= 2) & (sizes <= 2 * d + 1)).view(-1)
        if tiny.numel():
            for n in torch.unique(sizes[tiny]).tolist():
                ids = tiny[sizes[tiny] == n].to(device)
                r, c = torch.nonzero(~torch.eye(n, dtype=torch.bool, device=device),
                                     as_tuple=True)
                off = ptr.to(device)[ids].view(-1, 1)
                parts.append(torch.stack([(off + r).view(-1), (off + c).view(-1)]))
        rand = torch.nonzero(sizes > 2 * d + 1).view(-1)
        if rand.numel():
            attempt = torch.zeros(G, dtype=torch.long)
            best_lam = torch.full((G,), float('inf'), dtype=torch.float64)
            best_att = torch.zeros(G, dtype=torch.long)
            # graphs above check_max_nodes: the first draw, unchecked
            unchecked = rand[sizes[rand] > self.check_max_nodes]
            if unchecked.numel():
                parts.append(self._draw(unchecked, attempt, ghash, ptr, device))
            todo = rand[sizes[rand] <= self.check_max_nodes]
            thr = self.threshold
            for a in range(self.max_retries if todo.numel() else 0):
                attempt[todo] = a
                edges = self._draw(todo, attempt, ghash, ptr, device)
                lam = self._second_eig(edges, todo, ptr, nb)[todo]
                better = lam < best_lam[todo] - 1e-9
                best_lam[todo[better]] = lam[better]
                best_att[todo[better]] = a
                ok = lam <= thr
                if bool(ok.all()):
                    parts.append(edges)
                    todo = todo[:0]
                    break
                if bool(ok.any()):
                    okg = todo[ok]
                    okmask = torch.zeros(G, dtype=torch.bool, device=device)
                    okmask[okg.to(device)] = True
                    parts.append(edges[:, okmask[nb[edges[0]]]])
                todo = todo[~ok]
            if todo.numel():  # no draw passed: keep the best draw
                parts.append(self._draw(todo, best_att, ghash, ptr, device))
        if parts:
            edges = torch.cat(parts, 1)
            N = int(ptr[-1])
            order = torch.sort(edges[0] * N + edges[1], stable=True).indices
            edges = edges[:, order]
        else:
            edges = torch.empty(2, 0, dtype=torch.long, device=device)
        counts = torch.bincount(nb[edges[0]].cpu(), minlength=G) if edges.numel() else \
            torch.zeros(G, dtype=torch.long)
        sp.set_attr(data, 'expander_index', edges, counts=counts, increment=True)
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(degree={self.degree}, seed={self.seed}, '
                f'max_retries={self.max_retries}, tol={self.tol}, '
                f'dense_check_nodes={self.dense_check_nodes}, '
                f'check_max_nodes={self.check_max_nodes})')
