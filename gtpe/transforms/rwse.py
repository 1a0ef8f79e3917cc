r"""Random-walk structural encoding (RWSE).

Dwivedi et al., "Graph Neural Networks with Learnable Structural and Positional
Representations", ICLR 2022 (https://arxiv.org/abs/2110.07875).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from gtpe.transforms import _sparse as sp
from gtpe.transforms._validate import check_int

_METHODS = ('auto', 'exact', 'mc')


def _dense_rwse(P: Tensor, K: int) -> Tensor:
    r"""``diag(P^t)`` for t = 1..K of a batch ``P [B, n, n]`` -> ``[B, n, K]``.

    Only the powers ``P^1..P^m`` with ``m = ceil(K/2)`` are formed (``m - 1`` bmm); the rest
    use ``diag(P^{a+b})_i = sum_j (P^a)_{ij} (P^b)_{ji}``."""
    m = (K + 1) // 2
    B, n, _ = P.shape
    out = P.new_empty(B, n, K)
    X = P
    pows = [P]
    out[:, :, 0] = P.diagonal(dim1=1, dim2=2)
    for t in range(2, m + 1):
        X = torch.bmm(X, P)
        pows.append(X)
        out[:, :, t - 1] = X.diagonal(dim1=1, dim2=2)
    Qt = pows[m - 1].transpose(1, 2).contiguous()
    for t in range(m + 1, K + 1):
        out[:, :, t - 1] = (Qt * pows[t - m - 1]).sum(1)
    return out


def _is_symmetric(rowptr: Tensor, col: Tensor, val: Tensor, n: int) -> bool:
    row = torch.repeat_interleave(torch.arange(n, device=col.device), rowptr[1:] - rowptr[:-1])
    key = row * n + col
    tkey = col * n + row
    perm = torch.argsort(tkey)
    return bool(torch.equal(key, tkey[perm])) and bool(torch.equal(val, val[perm]))


def _exact_sparse_rwse(rowptr: Tensor, col: Tensor, val: Tensor, n: int, K: int,
                       max_block_elems: int = 1 << 23) -> Tensor:
    r"""Exact ``diag(P^t)`` of one graph without forming ``P^t``: columns ``P^t e_i`` are
    propagated for blocks of source nodes (``O(K * nnz * n)`` time, ``O(n * block)``
    memory).  For a symmetric ``A`` the symmetric ``S = D^{-1/2} A D^{-1/2}`` is used
    (``diag(P^t) = diag(S^t)``) with ``diag(S^{2s}) = ||S^s e_i||^2`` and
    ``diag(S^{2s-1}) = <S^{s-1} e_i, S^s e_i>``, halving the work."""
    device = col.device
    row = torch.repeat_interleave(torch.arange(n, device=device), rowptr[1:] - rowptr[:-1])
    deg = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, row, val)
    sym = _is_symmetric(rowptr, col, val, n)
    if sym:
        dis = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
        M = sp.csr_tensor(rowptr, col, dis[row] * val * dis[col], n)
        steps = (K + 1) // 2
    else:
        dinv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-300), torch.zeros_like(deg))
        M = sp.csr_tensor(rowptr, col, dinv[row] * val, n)
        steps = K
    out = torch.zeros(n, K, dtype=torch.float64, device=device)
    block = max(1, min(n, max_block_elems // max(n, 1)))
    for s in range(0, n, block):
        idx = torch.arange(s, min(n, s + block), device=device)
        b = idx.numel()
        Y = torch.zeros(n, b, dtype=torch.float64, device=device)
        Y[idx, torch.arange(b, device=device)] = 1.0
        ar = torch.arange(b, device=device)
        for step in range(1, steps + 1):
            Z = torch.sparse.mm(M, Y)
            if sym:
                out[idx, 2 * step - 2] = (Y * Z).sum(0)          # t = 2s - 1
                if 2 * step - 1 < K:
                    out[idx, 2 * step - 1] = (Z * Z).sum(0)      # t = 2s
            else:
                out[idx, step - 1] = Z[idx, ar]
            Y = Z
    return out


def _row_search(rowptr: Tensor, arr: Tensor, u: Tensor, q: Tensor, steps: int,
                right: bool = False) -> Tensor:
    """Vectorised binary search of ``q`` inside the sorted row segments
    ``arr[rowptr[u]:rowptr[u+1]]`` (``steps >= log2(max row length + 1)`` rounds).  Returns the
    insertion position (left, or right if ``right``), in ``[rowptr[u], rowptr[u+1]]``.  Rows
    are short and contiguous, so this is much faster than a global ``searchsorted``."""
    lo = rowptr[u]
    hi = rowptr[u + 1]
    last = max(arr.numel() - 1, 0)
    for _ in range(steps):
        mid = (lo + hi) >> 1
        v = arr[mid.clamp_max(last)]
        go = (v <= q) if right else (v < q)
        go = go & (mid < hi)
        lo = torch.where(go, mid + 1, lo)
        hi = torch.where(go, hi, mid)
    return lo


def _mc_rwse(rowptr: Tensor, col: Tensor, val: Tensor, n: int, K: int, num_walks: int,
             seed: int, max_walkers: int = 1 << 21) -> Tensor:
    r"""Monte-Carlo estimate of ``diag(P^t)``, Rao-Blackwellised on the last step.

    From every node ``i`` start ``W = num_walks`` independent walks ``X_0 = i, X_1, ...``
    with ``X_s ~ P[X_{s-1}, :]``.  Since ``P(X_t = i | X_{t-1}) = P[X_{t-1}, i]``,

    .. math:: \widehat{\mathrm{diag}(P^t)}_i = \frac{1}{W} \sum_w P[X^w_{t-1}, i]

    is unbiased and has lower variance than counting returns ``1{X_t = i}`` (t = 1 is exact;
    t = 2 averages ``1/d`` of the sampled neighbours).  Walks that reach a node without
    out-edges stop (their later terms are 0), matching ``P = D^{-1} A`` with zero rows.
    Cost ``O(n W K log(max degree))``, memory ``O(min(n W, max_walkers))``."""
    device = col.device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    counts = rowptr[1:] - rowptr[:-1]
    row = torch.repeat_interleave(torch.arange(n, device=device), counts)
    deg = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, row, val)
    pval = val / deg[row]                               # P values (row-sorted CSR)
    cw = torch.zeros_like(val)                          # within-row cumulative weights
    if val.numel():
        cs = torch.cumsum(val, 0)
        cw = cs - torch.cat([cs.new_zeros(1), cs])[rowptr[:-1]][row]
    uniform = bool((val == val[0]).all()) if val.numel() else True
    max_deg = int(counts.max()) if n else 0
    steps = max(1, int(max_deg).bit_length())
    nnz = col.numel()
    out = torch.zeros(n, K, dtype=torch.float64, device=device)
    W = int(num_walks)
    nodes_per_chunk = max(1, max_walkers // W)
    zero = torch.zeros((), dtype=torch.float64, device=device)

    # two 62-bit neighbourhood signatures per node (a Bloom filter of every row's columns)
    ar = torch.arange(n, device=device)
    hbit = (ar * 0x9E3779B1 >> 7) % 62
    hbit2 = (ar * 0x85EBCA6B >> 9) % 62
    sigs = []
    for hb in (hbit, hbit2):
        bits = torch.zeros(n, 62, dtype=torch.bool, device=device)
        if nnz:
            bits[row, hb[col]] = True
        sigs.append((bits.long() << torch.arange(62, device=device)).sum(1))
    sig, sig2 = sigs

    for s in range(0, n, nodes_per_chunk):
        src = torch.arange(s, min(n, s + nodes_per_chunk), device=device)
        origin = src.repeat_interleave(W)
        obit = hbit[origin]
        obit2 = hbit2[origin]
        cur = origin.clone()
        alive = torch.ones_like(cur, dtype=torch.bool)
        nb = src.numel()
        for t in range(1, K + 1):
            if nnz:                                     # P[cur, origin]
                # cheap exact pre-filter: origin can only be an out-neighbour of cur if its
                # signature bit is set in cur's neighbourhood signature
                cand = alive & (((sig[cur] >> obit) & 1) == 1)
                ci = torch.nonzero(cand).view(-1)
                ci = ci[((sig2[cur[ci]] >> obit2[ci]) & 1) == 1]
                cu, co = cur[ci], origin[ci]
                pos = _row_search(rowptr, col, cu, co, steps)
                pos_c = pos.clamp_max(nnz - 1)
                hit = (pos < rowptr[cu + 1]) & (col[pos_c] == co)
                term = torch.zeros(cur.numel(), dtype=torch.float64, device=device)
                term[ci] = torch.where(hit, pval[pos_c], zero)
                out[src, t - 1] = term.view(nb, W).mean(1)
            if t == K or not nnz:
                break
            du = counts[cur]
            alive = alive & (du > 0)
            r = torch.rand(cur.numel(), generator=gen, device=device, dtype=torch.float64)
            if uniform:
                pos = rowptr[cur] + (r * du).long().clamp_max((du - 1).clamp_min(0))
            else:
                pos = _row_search(rowptr, cw, cur, r * deg[cur], steps, right=True)
                pos = torch.minimum(pos, rowptr[cur + 1] - 1)
            cur = torch.where(alive, col[pos.clamp(0, nnz - 1)], cur)
    return out


def _symmetrised(ei: Tensor, w: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """Coalesced edges of :math:`A^s` (see :class:`AddRWSE`'s ``undirected``): weights of
    duplicate edges add up, zero-weight edges are dropped, pairs present in both directions
    get the mean of the two sums and the others the sum."""
    device = ei.device
    w = torch.ones(ei.size(1), dtype=torch.float64, device=device) if w is None else w
    keep = w > 0
    ei, w = ei[:, keep], w[keep]
    key = ei[0] * n + ei[1]
    present = torch.unique(key)                      # the pattern of A (sorted)
    both = torch.cat([key, ei[1] * n + ei[0]])
    uniq, inv = torch.unique(both, return_inverse=True)
    val = torch.zeros(uniq.numel(), dtype=torch.float64, device=device)
    val.index_add_(0, inv, torch.cat([w, w]))        # A + A^T
    row, col = uniq // n, uniq % n
    reciprocal = torch.isin(uniq, present) & torch.isin(col * n + row, present)
    val = torch.where(reciprocal, val / 2, val)
    return torch.stack([row, col]), val


class AddRWSE(BaseTransform):
    r"""Random-walk structural encoding (Dwivedi et al., ICLR 2022):

    .. math:: \mathrm{rwse}_i = \big[(P)_{ii}, (P^2)_{ii}, \dots, (P^K)_{ii}\big],
              \qquad P = D^{-1} A,

    the probability that a random walk from node ``i`` is back at ``i`` after ``t`` steps.
    Writes ``data.rwse [N, walk_length]`` (float32).

    ``A_ij`` is the total weight of the edges ``i -> j`` of ``edge_index`` (``data.edge_weight``
    if present, else 1): duplicate edges add up (multigraph), a self-loop ``i -> i`` is a
    step that stays at ``i``, and a directed input gives the walk along edge directions
    (``D`` = weighted out-degree).  A node without out-edges (e.g. isolated) has a zero row of
    ``P`` and gets an all-zero encoding.  Weights must be finite and non-negative;
    ``edge_index`` must hold integer node ids in ``[0, N)`` and, in a Batch, no edge between
    two graphs (``ValueError`` otherwise: a float or bool ``edge_index`` is not truncated).

    Methods (per graph of ``n`` nodes):

    * ``n <= dense_max_nodes``: exact, dense float64 ``[B, n_pad, n_pad]`` batched matmuls
      over size buckets (all graphs of a Batch at once; ``ceil(K/2)`` powers and
      ``diag(P^{a+b})_i = sum_j (P^a)_ij (P^b)_ji``);
    * ``'exact'`` (larger graphs): sparse propagation of blocks of unit vectors, never
      materialising ``P^t`` (``O(K nnz n)`` time);
    * ``'mc'``: Monte-Carlo estimate with ``num_walks`` walks per node, Rao-Blackwellised on
      the last step (``(1/W) sum_w P[X_{t-1}^w, i]``, unbiased; ``t = 1`` exact); the
      generator of every graph is ``torch.Generator().manual_seed(seed)``, so results are
      reproducible and a Batch equals the per-graph results.  Absolute error
      ``~ sqrt(diag(P^t)_i * max_j P_ji / W)``: on a 5,000-node random graph with mean
      degree 20 and ``W = 32`` the mean abs error is 1.6e-3 at ``t = 2`` (values ~5e-2)
      and ~3.5e-4 for ``t >= 5`` (values ~2e-4: there the estimate is mostly noise around
      the stationary value), max abs error <= 1.4e-2 (``benchmarks/pe_bench.py --mc-error``);
    * ``'auto'``: dense / exact up to ``exact_max_nodes`` nodes, ``'mc'`` above.

    Args:
        walk_length (int): ``K``, the number of steps, an integer >= 1 (default 20; a
            ``bool`` or ``float`` is an error).
        method (str): ``'auto'``, ``'exact'`` or ``'mc'``.
        exact_max_nodes (int): node threshold of ``'auto'`` (>= 0, default 5,000).
        num_walks (int): walks per node for ``'mc'`` (>= 1, default 32).
        seed (int): seed of the ``'mc'`` generator, in ``[0, 2**64)``.
        dense_max_nodes (int): graphs up to this size use the dense batched path (>= 0).
        undirected (bool): walk on the symmetrised graph instead of along edge directions,
            with :class:`AddLapPE`'s rule: :math:`A^s_{uv} = (A_{uv} + A_{vu}) / 2` where both
            directions exist, else :math:`A_{uv} + A_{vu}` (an undirected input is left
            unchanged); unlike :class:`AddLapPE` a self-loop is kept (a step that stays, as
            in the directed walk). On a directed acyclic graph the directed walk never returns, so its
            encoding is all zero; this is the structural encoding graph transformers use on
            directed data. (default ``False``)
    """
    supports_batch = True
    batch_keys = ('edge_index', 'edge_weight')  # what forward reads (gtpe.precompute)
    undirected = False

    def __init__(self, walk_length: int = 20, method: str = 'auto',
                 exact_max_nodes: int = 5_000, num_walks: int = 32, seed: int = 0,
                 dense_max_nodes: int = 128, undirected: bool = False) -> None:
        name = 'AddRWSE'
        if undirected is not True and undirected is not False:
            raise ValueError(f"AddRWSE: undirected must be a bool, got {undirected!r}")
        if undirected:  # the default lives on the class: precompute cache keys made before
            self.undirected = True  # this option existed stay valid
        self.walk_length = check_int(walk_length, 'walk_length', name)
        if method not in _METHODS:
            raise ValueError(f"AddRWSE: method must be one of {_METHODS}, got {method!r}")
        self.method = method
        self.exact_max_nodes = check_int(exact_max_nodes, 'exact_max_nodes', name, minimum=0)
        self.num_walks = check_int(num_walks, 'num_walks', name)
        self.seed = check_int(seed, 'seed', name, minimum=0, maximum=2**64)
        self.dense_max_nodes = check_int(dense_max_nodes, 'dense_max_nodes', name, minimum=0)

    def _graph_method(self, n: int) -> str:
        if self.method == 'mc':
            return 'mc'
        if n <= self.dense_max_nodes:
            return 'dense'
        if self.method == 'exact' or n <= self.exact_max_nodes:
            return 'exact'
        return 'mc'

    def forward(self, data):
        K = self.walk_length
        ei, w, ptr = sp.get_edges(data, 'AddRWSE')
        device = ei.device
        N = int(ptr[-1])
        if self.undirected:
            ei, w = _symmetrised(ei, w, N)
        sizes = ptr[1:] - ptr[:-1]
        out = torch.zeros(N, K, dtype=torch.float64, device=device)
        nb = sp.node_graph(ptr, device)
        ge = sp.GraphEdges(ei, w, ptr, nb)
        methods = [self._graph_method(int(n)) for n in sizes.tolist()]
        dense_max = self.dense_max_nodes if self.method != 'mc' else 0
        with sp.single_thread(device.type == 'cpu'):
            for n_pad, gids in sp.dense_groups(sizes, dense_max, exact_max=64):
                A = sp.dense_adjacency(ge, gids, n_pad)
                R = _dense_rwse(sp.row_normalize(A), K)           # [B, n_pad, K]
                mask, nodes = sp.node_index_of(ptr, gids, n_pad, device)
                out[nodes] = R[mask]
        for g, meth in enumerate(methods):
            n = int(sizes[g])
            if meth == 'dense' or n == 0:
                continue
            s = int(ptr[g])
            loc, lw = ge.local(g)
            rowptr, col, val = sp.coalesce_csr(loc, lw, n)
            if meth == 'exact':
                out[s:s + n] = _exact_sparse_rwse(rowptr, col, val, n, K)
            else:
                out[s:s + n] = _mc_rwse(rowptr, col, val, n, K, self.num_walks, self.seed)
        sp.set_attr(data, 'rwse', out.to(torch.float32))
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(walk_length={self.walk_length}, '
                f'method={self.method!r}, exact_max_nodes={self.exact_max_nodes}, '
                f'num_walks={self.num_walks}, seed={self.seed}, '
                f'dense_max_nodes={self.dense_max_nodes}'
                + (', undirected=True)' if self.undirected else ')'))
