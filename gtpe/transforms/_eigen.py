r"""Shared eigen-solvers for the spectral positional encodings (:mod:`lap`, :mod:`maglap`).

Everything here works on a single graph *or* on a :class:`~torch_geometric.data.Batch`
(graphs given by ``ptr``), and the output is a function of the graph alone (see
*Canonicalisation*): the same graph gives the same numbers alone, anywhere in a batch,
through the dense or the sparse solver.

* **small graphs** (``N <= sparse_threshold``) are bucketed by a padded size that depends
  only on ``N`` (:func:`bucket_size`), stacked into dense ``[B, n, n]`` float64 (complex128
  for the magnetic Laplacian) matrices on the tensors' device and solved with one batched
  :func:`torch.linalg.eigh` per bucket. Padding nodes get an isolated diagonal entry larger
  than any real eigenvalue, so they sort last and never mix with the real eigenpairs.
* **large graphs** are split into connected components; small components go through the
  dense path, large ones through a sparse solver (:func:`sparse_smallest`): shift-invert
  Lanczos around a tiny negative shift with a sparse LU (robust on path-like graphs whose
  small eigenvalues cluster like :math:`(\pi j / N)^2`) when a reverse Cuthill--McKee
  envelope says the factorisation is cheap, plain Lanczos (``which='SA'``) otherwise
  (expander-like graphs, whose spectral gap is large). The k smallest eigenpairs of the
  components are merged (:func:`sparse_graph_eigenpairs`).

Graph conventions (shared by both encodings):

* self-loops and edges of weight 0 are ignored; duplicate edges are summed;
* directed input is symmetrised as in Geisler et al. (2023):
  :math:`(A_s)_{uv} = (A_{uv} + A_{vu}) / 2` if both directions exist, else
  :math:`A_{uv} + A_{vu}` (an undirected input is left unchanged);
* ``'sym'`` normalisation :math:`L = I - D^{-1/2} A_s D^{-1/2}` with :math:`D^{-1/2}_{ii} = 0`
  for isolated nodes, so an isolated node has :math:`L_{ii} = 1` (as PyG's ``get_laplacian``);
  ``None`` is the combinatorial :math:`L = D - A_s` (isolated node: :math:`L_{ii} = 0`).

Canonicalisation. An eigensolver's vectors are fixed only up to a sign/phase and, inside a
repeated eigenvalue, up to a rotation of the eigenspace, which ``eigh`` chooses differently
depending on the graph's position in a batched call or on the device (a 13-node cycle differed
by 0.55 between "alone" and "second in a batch"). The output is made a function of the
eigenspaces, hence of the graph:

* **clusters**: the ascending eigenvalues are grouped; consecutive :math:`a \le b` are one
  (repeated) eigenvalue iff :math:`b - a \le 10^{-6} |b| + 10^{-12} s` (``CLUSTER_RTOL``,
  ``CLUSTER_ATOL``) with :math:`s = \max_i L_{ii}` (1 for the normalised Laplacians, the
  largest weighted degree for :math:`D - A`). Solver noise on an exactly repeated eigenvalue
  is ~1e-15 s (dense) or ~1e-10 :math:`|\lambda|` (Lanczos), far inside; the relative term
  keeps the tiny but distinct smallest eigenvalues of long paths apart (N = 3000:
  :math:`\lambda_1 \approx 5 \cdot 10^{-7}`). Eigenvalues closer than this are treated as
  one eigenspace (their vectors then have residual at most the gap).
* **multiplicity one**: the sign (phase) rule of :func:`canonicalize`: the pivot, the lowest
  node whose modulus is within a relative ``SIGN_TOL = 1e-6`` of the column's maximum, is
  made real and positive.
* **multiplicity m > 1**: the basis is the pivoted Cholesky factor of the eigenspace's
  projector :math:`P = V V^H` (:func:`pivoted_basis`; the projector does not depend on the
  basis :math:`V` the solver returned): pivot = lowest node whose residual norm
  :math:`\sqrt{R_{pp}}` is within ``SIGN_TOL`` of the largest, :math:`v = R e_p/\sqrt{R_{pp}}`,
  :math:`R \leftarrow R - v v^H`, m times; columns in pivot order. Each vector's pivot entry
  is real, positive and within ``SIGN_TOL`` of its largest modulus; for m = 1 the rule is
  the sign rule above. The eigenvalues reported are the solver's (ascending; within a
  cluster they agree to the cluster tolerance).
* the whole cluster is canonicalised before the window of kept columns is cut: a cluster cut
  by the k-th column contributes its first pivots, and LapPE's skipped first column is the
  first pivot of its cluster (for a disconnected graph, of the zero eigenspace).
* **ties**: a tie (two nodes within ``SIGN_TOL`` that give different vectors) is broken by
  the lowest node index. Relabelling the nodes therefore permutes the output rows exactly
  when no pivot is tied; in a vertex-transitive graph (a cycle) or with twin nodes the basis
  depends on the labelling, while the eigenspaces (:math:`P`) never do.
* **accuracy**: a graph alone and in any batch, or through the dense and the sparse
  solver, agree to float64 rounding (1e-10; the sparse solver to its 1e-10 residual), not
  necessarily bit for bit; the float32 outputs may differ in the last bit. Repeating the
  same call is bit-identical.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gtpe.transforms._validate import batch_ptr, check_edge_index

SIGN_TOL = 1e-6
"""Relative tolerance under which two moduli (entries, or residual norms in
:func:`pivoted_basis`) count as tied when choosing a pivot."""

CLUSTER_RTOL = 1e-6
CLUSTER_ATOL = 1e-12
"""Consecutive eigenvalues :math:`a \\le b` form one cluster (a repeated eigenvalue) iff
:math:`b - a \\le` ``CLUSTER_RTOL`` :math:`|b| +` ``CLUSTER_ATOL`` :math:`\\max_i L_{ii}`."""

DEFAULT_SPARSE_THRESHOLD = 2000
"""Graphs (or connected components) with more nodes than this use the sparse solver."""

SOLVERS = ('auto', 'shift_invert', 'lanczos')

_MAX_CHUNK_ELEMS = 1 << 22  # at most B * n^2 matrix entries per batched eigh call
_SMALL_EIGH = 256  # CPU eigh of matrices up to this size runs single-threaded
_ENVELOPE_BUDGET = 30_000_000  # RCM envelope (entries) below which shift-invert is used
_ZERO_TOL = 1e-9  # eigenvalues below this (times the spectrum scale) count as 0 when merging
# Lanczos stops when every Ritz pair has residual ||L v - lam v|| <= _LANCZOS_TOL * |lam|:
# 1e-10 is 1000x below the float32 precision of the stored encodings and ~1.5x cheaper than
# scipy's default (machine precision) on the 100k-node benchmark graph.
_LANCZOS_TOL = 1e-10
_SPLIT_MATVEC_NNZ = 200_000  # Lanczos mat-vecs with more stored entries use torch's thread count


def _single_threaded_blas():
    """Limit numpy/scipy BLAS to one thread inside the sparse solver.

    ARPACK's tall-skinny BLAS calls gain nothing from threads, and an OpenBLAS pool competing
    with torch's made the 100k-node solve 7x slower on 2 cores. Local to the call (needs
    ``threadpoolctl``; a no-op without it).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api='blas')


@contextlib.contextmanager
def _single_threaded_torch(active: bool):
    """Run small batched CPU eigh calls on one intra-op thread (restored afterwards).

    torch loops over the batch and MKL threads each tiny (n <= 256) matrix: on 2 busy cores
    that was 20-40x slower than one thread. Not thread-safe w.r.t. other torch threads
    changing the setting concurrently.
    """
    if not active:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class LaplacianSpec:
    """Which Laplacian to build: real (``q is None``) or magnetic with potential ``q``."""

    normalization: str | None = 'sym'
    q: float | None = None
    q_absolute: bool = False

    @property
    def magnetic(self) -> bool:
        return self.q is not None


def bucket_size(n: int) -> int:
    """Padded size of a graph with ``n`` nodes (depends on ``n`` only): none up to 64 nodes
    (one bucket per size: eigh is O(n^3), and small-graph datasets fill every size), then
    <= 12.5% padding."""
    if n <= 64:
        return n
    step = max(8, (1 << (int(n).bit_length() - 1)) // 8)
    return -(-n // step) * step


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------
def prepare_edges(data, weight_attr: str | None, ptr: Tensor, device: torch.device,
                  owner: str) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(row, col, weight float64)`` without self-loops and zero-weight edges
    (:func:`gtpe.transforms._validate.check_edge_index`: integer ids in ``[0, N)``, no edge
    between two graphs of a Batch)."""
    edge_index = check_edge_index(data, owner, ptr).to(device)
    num_edges = edge_index.size(1)
    weight = getattr(data, weight_attr, None) if weight_attr else None
    if weight is None:
        weight = torch.ones(num_edges, dtype=torch.float64, device=device)
    else:
        if not torch.is_tensor(weight) or weight.numel() != num_edges:
            raise ValueError(f"data.{weight_attr} must be a tensor with one weight per edge "
                             f"({num_edges}), got shape "
                             f"{list(weight.shape) if torch.is_tensor(weight) else type(weight)}")
        weight = weight.detach().reshape(-1).to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError(f"data.{weight_attr} must be finite and non-negative")
    row, col = edge_index[0], edge_index[1]
    keep = (row != col) & (weight > 0)
    return row[keep], col[keep], weight[keep]


def effective_q(spec: LaplacianSpec, row: Tensor, col: Tensor, num_nodes: int,
                ptr: Tensor, node_graph: Tensor) -> Tensor:
    """Per-graph potential q [B] (float64, CPU).

    Relative q (Geisler et al. 2023, reference implementation): ``q / max(min(m, N), 1)``
    with ``m`` the number of non-reciprocal directed edges (u->v present, v->u absent, after
    removing self-loops and merging duplicates) and ``N`` the graph's number of nodes.
    """
    num_graphs = ptr.numel() - 1
    q = torch.full((num_graphs,), float(spec.q), dtype=torch.float64)
    if spec.q_absolute or num_graphs == 0:
        return q
    keys = torch.unique(row * num_nodes + col)
    u, v = keys // num_nodes, keys % num_nodes
    nonrec = ~torch.isin(v * num_nodes + u, keys)
    m = torch.bincount(node_graph[u[nonrec]], minlength=num_graphs).cpu().to(torch.float64)
    sizes = ptr.diff().to(torch.float64)
    return q / torch.clamp(torch.minimum(m, sizes), min=1.0)


# --------------------------------------------------------------------------------------
# Canonicalisation
# --------------------------------------------------------------------------------------
def canonicalize(vecs: Tensor, row_mask: Tensor | None = None) -> Tensor:
    """Fix the sign (real) or phase (complex) of every column of ``vecs`` [..., n, k].

    Each column is multiplied by ``conj(p) / |p|`` where ``p`` is its pivot: the entry of
    lowest row index whose modulus is >= ``(1 - SIGN_TOL)`` times the column's maximum
    modulus (rows outside ``row_mask`` [..., n] are ignored). Afterwards the pivot is real
    and positive. All-zero (padding) columns stay zero. This is the rule for eigenvalues of
    multiplicity one; repeated ones go through :func:`pivoted_basis`.
    """
    mag = vecs.abs()
    if row_mask is not None:
        mag = mag * row_mask.unsqueeze(-1).to(mag.dtype)
    top = mag.amax(dim=-2, keepdim=True)
    cand = (mag >= top * (1.0 - SIGN_TOL)) & (mag > 0)
    idx = cand.to(torch.uint8).argmax(dim=-2, keepdim=True)  # first maximal entry
    pivot = vecs.gather(-2, idx)
    if vecs.is_complex():
        modulus = pivot.abs()
        factor = torch.where(modulus > 0, pivot.conj() / torch.where(modulus > 0, modulus, 1.0),
                             torch.ones_like(pivot))
        # the pivot becomes exactly |p| (the product leaves a rounding-level imaginary part)
        return (vecs * factor).scatter(-2, idx, modulus.to(vecs.dtype))
    else:
        factor = torch.where(pivot < 0, -1.0, 1.0).to(vecs.dtype)
    return vecs * factor


def _row_sq_norms(w: Tensor) -> Tensor:
    """Squared Euclidean norms of the rows of ``w`` [..., n, m] (real or complex) -> [..., n]."""
    if w.is_complex():
        w = torch.view_as_real(w).flatten(-2)
    return w.square().sum(-1)


def pivoted_basis(basis: Tensor, steps: int) -> Tensor:
    r"""Canonical basis of the eigenspaces spanned by the columns of ``basis`` [C, n, m]
    (orthonormal columns, zero columns and zero rows allowed): its first ``steps`` vectors,
    [C, n, steps].

    Pivoted Cholesky of the projector :math:`P = V V^H` (which does not depend on the basis
    :math:`V` the solver returned): with :math:`R = P`, repeat ``steps`` times: pivot ``p`` =
    lowest node whose residual norm :math:`\sqrt{R_{pp}}` is >= ``(1 - SIGN_TOL)`` times the
    largest; :math:`v = R e_p / \sqrt{R_{pp}}`; :math:`R \leftarrow R - v v^H` (the
    projector onto the rest of the eigenspace). Then :math:`v_p = \sqrt{R_{pp}}` is real and
    positive and, by Cauchy--Schwarz (:math:`|R_{jp}|^2 \le R_{jj} R_{pp}`), within the tie
    tolerance of the largest modulus of :math:`v`; for ``m == 1`` this is :func:`canonicalize`.
    Computed on :math:`W` with :math:`R = W W^H` (``W <- W (I - a a^H)``,
    :math:`a = \overline{W_{p,:}} / \|W_{p,:}\|`): O(steps n m), all eigenspaces batched.
    Steps beyond an eigenspace's dimension give meaningless columns (callers drop them).
    """
    num, n, _ = basis.shape
    work = basis.clone()
    out = basis.new_zeros(num, n, steps)
    rows = torch.arange(num, device=basis.device)
    tie = (1.0 - SIGN_TOL) ** 2  # on squared norms
    for s in range(steps):
        sq = _row_sq_norms(work)  # [C, n] residual diagonal R_jj
        top = sq.amax(-1, keepdim=True)
        p = (sq >= top * tie).to(torch.uint8).argmax(-1)  # [C] first tied maximum
        npiv = sq[rows, p].sqrt().clamp_min(1e-300)  # [C]
        a = work[rows, p].conj() / npiv.unsqueeze(-1).to(work.dtype)  # [C, m], unit
        v = torch.bmm(work, a.unsqueeze(-1)).squeeze(-1)  # [C, n] = R e_p / sqrt(R_pp)
        v[rows, p] = npiv.to(v.dtype)  # exactly real and positive
        out[:, :, s] = v
        if s + 1 < steps:
            work = torch.baddbmm(work, v.unsqueeze(-1), a.conj().unsqueeze(1), alpha=-1)
    return out


def cluster_joins(lam: Tensor, scale: Tensor) -> Tensor:
    r"""``joins[..., j]``: eigenvalue ``j + 1`` belongs to the cluster of eigenvalue ``j``.

    ``lam`` [..., n] ascending, ``scale`` [...] the spectrum scale :math:`s = \max_i L_{ii}`.
    Consecutive :math:`a \le b` are one cluster iff
    :math:`b - a \le \text{CLUSTER\_RTOL}\,|b| + \text{CLUSTER\_ATOL}\, s`.
    """
    gap = lam[..., 1:] - lam[..., :-1]
    return gap <= CLUSTER_RTOL * lam[..., 1:].abs() + CLUSTER_ATOL * scale.unsqueeze(-1)


def canonical_basis(lam: Tensor, vec: Tensor, sizes: Tensor, scale: Tensor, ncols: int
                    ) -> Tensor:
    """Canonical eigenvectors 0 .. ncols-1 of a bucket of padded graphs (see the module
    docstring): ``lam`` [b, n] ascending (the real ones first), ``vec`` [b, n, n],
    ``sizes`` [b] real nodes, ``scale`` [b]. Returns [b, n, ncols].

    Columns of multiplicity-one eigenvalues: :func:`canonicalize`. A cluster of m > 1
    eigenvalues that starts before ``ncols`` (it may end after: a cut cluster contributes its
    first pivots): :func:`pivoted_basis` of its whole eigenspace; all such clusters of the
    bucket in one batched call (each as its graph's eigenvectors with the other columns
    zeroed, which leaves the projector unchanged).
    """
    num_graphs, n, _ = vec.shape
    device = vec.device
    local = torch.arange(n, device=device)
    real = local.unsqueeze(0) < sizes.unsqueeze(1)  # [b, n]
    out = canonicalize(vec[:, :, :ncols], real)
    if n < 2:
        return out
    joins = cluster_joins(lam, scale) & real[:, 1:]  # padding eigenvalues stay apart
    if not bool(joins[:, :ncols].any()):  # the common case: no repeated eigenvalue in reach
        return out
    is_first = torch.ones_like(real)
    is_first[:, 1:] = ~joins
    cid = is_first.cumsum(1)  # [b, n] cluster id of every column
    repeated = is_first.clone()
    repeated[:, :-1] &= joins  # first column of a cluster of size > 1
    repeated[:, ncols:] = False  # ... that starts in the window
    g, s0 = torch.nonzero(repeated, as_tuple=True)  # [C]
    member = cid[g] == cid[g, s0].unsqueeze(1)  # [C, n] the cluster's columns
    mult = member.sum(1)
    steps = torch.clamp(ncols - s0, max=mult)  # pivots needed in the window
    ext = int((s0 + mult).max())  # columns 0 .. ext-1 hold every such cluster
    keep = member[:, :ext].unsqueeze(1) & real[g].unsqueeze(2)
    canon = pivoted_basis(vec[g, :, :ext] * keep.to(vec.dtype), int(steps.max()))
    c_idx, t_idx = torch.nonzero(torch.arange(canon.size(2), device=device).unsqueeze(0)
                                 < steps.unsqueeze(1), as_tuple=True)
    out[g[c_idx], :, s0[c_idx] + t_idx] = canon[c_idx, :, t_idx]
    return out


def pivoted_basis_blocks(blocks: list[tuple[np.ndarray, np.ndarray]], steps: int, n: int
                         ) -> np.ndarray:
    """:func:`pivoted_basis` of one eigenspace given block-diagonally, [n, steps] (numpy).

    ``blocks``: ``(node ids, W [n_c, m_c])`` per connected component (distinct node ids), the
    eigenspace being the direct sum of the components' parts. The projector is block
    diagonal, so a step only deflates the block of its pivot; pivots and ties are chosen over
    all nodes exactly as in :func:`pivoted_basis` (lowest node id among the tied maxima).
    Memory is the blocks' own, however many components share the eigenvalue.
    """
    dtype = np.result_type(*[w.dtype for _, w in blocks])
    out = np.zeros((n, steps), dtype=dtype)
    works = [np.array(w, dtype=dtype) for _, w in blocks]
    ids = np.concatenate([i for i, _ in blocks])
    owner = np.concatenate([np.full(i.size, b) for b, (i, _) in enumerate(blocks)])
    offset = np.concatenate([[0], np.cumsum([i.size for i, _ in blocks])])
    def sq_norms(w):
        return np.square(w.real).sum(1) + np.square(w.imag).sum(1) if np.iscomplexobj(w) \
            else np.square(w).sum(1)

    sq = np.concatenate([sq_norms(w) for w in works])
    for s in range(steps):
        cand = np.nonzero(sq >= sq.max() * (1.0 - SIGN_TOL) ** 2)[0]
        r = int(cand[np.argmin(ids[cand])])  # lowest node id among the tied maxima
        b = int(owner[r])
        work, p = works[b], r - int(offset[b])
        npiv = max(math.sqrt(float(sq[r])), 1e-300)
        a = work[p].conj() / npiv
        v = work @ a
        v[p] = npiv
        out[blocks[b][0], s] = v
        works[b] = work - np.outer(v, a.conj())
        sq[offset[b]:offset[b + 1]] = sq_norms(works[b])
    return out


# --------------------------------------------------------------------------------------
# Dense batched path
# --------------------------------------------------------------------------------------
def _dense_laplacian(row: Tensor, col: Tensor, w: Tensor, slot: Tensor, sizes: Tensor,
                     n: int, spec: LaplacianSpec, q: Tensor | None) -> Tensor:
    """Dense padded Laplacians [B, n, n] of the graphs in one bucket.

    ``row``/``col`` are local node ids, ``slot`` the graph's position in the bucket,
    ``sizes`` [B] the real number of nodes, ``q`` [B] the magnetic potential.
    """
    num_graphs = sizes.numel()
    device = w.device
    adj = torch.zeros(num_graphs, n, n, dtype=torch.float64, device=device)
    adj.index_put_((slot, row, col), w, accumulate=True)
    adj_t = adj.transpose(1, 2)
    pattern = adj > 0
    both = pattern & pattern.transpose(1, 2)
    sym = torch.where(both, (adj + adj_t) / 2, adj + adj_t)
    deg = sym.sum(-1)  # [B, n]
    real = torch.arange(n, device=device).unsqueeze(0) < sizes.unsqueeze(1)  # [B, n]
    if spec.normalization == 'sym' or spec.magnetic:
        dinv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
        off = dinv.unsqueeze(2) * sym * dinv.unsqueeze(1)
        diag = torch.ones_like(deg)
        pad_value = torch.full_like(deg, 3.0)  # spectrum of sym. Laplacians lies in [0, 2]
    else:
        off = sym
        diag = deg
        pad_value = (2.0 * deg.amax(-1, keepdim=True) + 1.0).expand_as(deg)
    if spec.magnetic:
        direction = pattern.to(torch.float64) - pattern.transpose(1, 2).to(torch.float64)
        theta = (2.0 * math.pi) * q.to(device).view(-1, 1, 1) * direction
        off = torch.polar(off, theta)  # off * exp(i theta), Hermitian
    lap = -off
    diag = torch.where(real, diag, pad_value)
    lap.diagonal(dim1=1, dim2=2).add_(diag.to(lap.dtype))
    return lap


def dense_eigenpairs(row: Tensor, col: Tensor, w: Tensor, ptr: Tensor, spec: LaplacianSpec,
                     q: Tensor | None, num: int, start: int, canonical: bool = True
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenpairs ``start .. start+num-1`` (ascending) of every graph given by ``ptr``.

    ``row``/``col`` are global node ids (edges must stay inside their graph). Returns
    ``evals`` [B, num] float64, ``valid`` [B, num] bool (``start + j < N_g``) and ``vecs``
    [N, num] (float64, complex128 if magnetic) in the global node order; invalid columns are 0.
    ``canonical``: the canonical basis (:func:`canonical_basis`, whole clusters, also those
    reaching below ``start``), else eigh's vectors as they are.
    """
    device = w.device
    sizes = ptr.diff()
    num_graphs = sizes.numel()
    num_nodes = int(ptr[-1])
    dtype = torch.complex128 if spec.magnetic else torch.float64
    evals = torch.zeros(num_graphs, num, dtype=torch.float64, device=device)
    valid = torch.zeros(num_graphs, num, dtype=torch.bool, device=device)
    vecs = torch.zeros(num_nodes, num, dtype=dtype, device=device)
    if num_graphs == 0 or num == 0:
        return evals, valid, vecs
    ptr_dev = ptr.to(device)
    node_graph = torch.repeat_interleave(torch.arange(num_graphs, device=device),
                                         sizes.to(device))
    edge_graph = node_graph[row]
    if edge_graph.numel() > 1 and not bool((edge_graph[1:] >= edge_graph[:-1]).all()):
        order = torch.sort(edge_graph, stable=True).indices   # group the edges by graph
        row, col, w, edge_graph = row[order], col[order], w[order], edge_graph[order]
    eptr = torch.zeros(num_graphs + 1, dtype=torch.long)
    eptr[1:] = torch.bincount(edge_graph.cpu(), minlength=num_graphs).cumsum(0)
    table = torch.tensor([bucket_size(s) for s in range(int(sizes.max()) + 1)],
                         dtype=torch.long)
    padded = table[sizes]
    for n in sorted(set(padded.tolist())):
        if n == 0:
            continue
        members = torch.nonzero(padded == n).view(-1)
        chunk = max(1, _MAX_CHUNK_ELEMS // (n * n))
        for lo in range(0, members.numel(), chunk):
            gids_cpu = members[lo:lo + chunk]
            gids = gids_cpu.to(device)
            # the bucket's edges: the graphs' contiguous edge ranges, graph by graph
            e_lo = eptr[gids_cpu]
            e_cnt = eptr[gids_cpu + 1] - e_lo
            e_off = torch.cumsum(e_cnt, 0) - e_cnt
            pos = (torch.repeat_interleave(e_lo - e_off, e_cnt) +
                   torch.arange(int(e_cnt.sum()))).to(device)
            eslot = torch.repeat_interleave(torch.arange(gids.numel()), e_cnt).to(device)
            base = ptr_dev[edge_graph[pos]]
            g_sizes = sizes.to(device)[gids]
            lap = _dense_laplacian(row[pos] - base, col[pos] - base, w[pos],
                                   eslot, g_sizes, n, spec,
                                   None if q is None else q[gids_cpu])
            local = torch.arange(n, device=device).unsqueeze(0)
            rmask = local < g_sizes.unsqueeze(1)  # [b, n]
            scale = torch.where(rmask, lap.diagonal(dim1=1, dim2=2).real, 0.0).amax(-1)
            scale = torch.where(scale > 0, scale, 1.0)  # max_i L_ii of each graph
            with _single_threaded_torch(lap.device.type == 'cpu' and n <= _SMALL_EIGH):
                lam, vec = torch.linalg.eigh(lap)  # ascending; padding eigenvalues sort last
            ncols = min(start + num, n)  # eigenvectors 0 .. ncols-1 are needed
            if canonical:  # whole clusters, also those cut by the window or by `start`
                vec = canonical_basis(lam, vec, g_sizes, scale, ncols)
            cols = torch.arange(start, start + num, device=device)
            ok = cols.unsqueeze(0) < g_sizes.unsqueeze(1)  # [b, num]
            take = cols.clamp(max=ncols - 1)
            lam = torch.where(ok, lam[:, take], torch.zeros((), dtype=lam.dtype, device=device))
            vec = torch.where(ok.unsqueeze(1), vec[:, :, take],
                              torch.zeros((), dtype=vec.dtype, device=device))
            evals[gids] = lam
            valid[gids] = ok
            target = (ptr_dev[gids].unsqueeze(1) + local)[rmask]
            vecs[target] = vec[rmask]
    return evals, valid, vecs


# --------------------------------------------------------------------------------------
# Sparse path (one large graph, on CPU with scipy)
# --------------------------------------------------------------------------------------
def sparse_laplacian(row: np.ndarray, col: np.ndarray, w: np.ndarray, n: int,
                     spec: LaplacianSpec, q: float):
    """Sparse CSR Laplacian of one graph (same conventions as the dense path)."""
    import scipy.sparse as sp

    adj = sp.coo_matrix((w, (row, col)), shape=(n, n)).tocsr()  # sums duplicates
    adj.sum_duplicates()
    adj.eliminate_zeros()
    pattern = adj.copy()
    pattern.data[:] = 1.0
    both = pattern.multiply(pattern.T).tocsr()
    total = (adj + adj.T).tocsr()
    sym = (total - 0.5 * total.multiply(both)).tocsr()
    sym.eliminate_zeros()
    deg = np.asarray(sym.sum(axis=1)).ravel()
    if spec.normalization == 'sym' or spec.magnetic:
        dinv = np.zeros(n)
        nz = deg > 0
        dinv[nz] = 1.0 / np.sqrt(deg[nz])
        off = sp.diags(dinv) @ sym @ sp.diags(dinv)
        diag = np.ones(n)
    else:
        off = sym
        diag = deg
    off = off.tocoo()
    if spec.magnetic:
        pat = pattern.tocoo()
        keys = np.sort(pat.row.astype(np.int64) * n + pat.col)
        fwd = np.isin(off.row.astype(np.int64) * n + off.col, keys, assume_unique=False)
        bwd = np.isin(off.col.astype(np.int64) * n + off.row, keys, assume_unique=False)
        theta = 2.0 * math.pi * q * (fwd.astype(np.float64) - bwd.astype(np.float64))
        data = off.data * np.exp(1j * theta)
    else:
        data = off.data
    lap = sp.coo_matrix((-data, (off.row, off.col)), shape=(n, n)).tocsr()
    lap = (lap + sp.diags(diag.astype(lap.dtype))).tocsr()
    lap.sum_duplicates()
    return lap


def _envelope(pattern) -> int:
    """Envelope (profile) size of ``pattern`` after reverse Cuthill--McKee reordering."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    perm = reverse_cuthill_mckee(pattern.tocsr(), symmetric_mode=True)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    coo = pattern.tocoo()
    r, c = inv[coo.row], inv[coo.col]
    first = np.arange(pattern.shape[0], dtype=np.int64)
    np.minimum.at(first, r, c.astype(np.int64))
    return int((np.arange(pattern.shape[0], dtype=np.int64) - first).sum())


@contextlib.contextmanager
def _row_split_operator(lap, threads: int):
    """``lap`` as an operator whose mat-vec runs ``threads`` row blocks in parallel.

    scipy's CSR mat-vec releases the GIL, so the blocks run on separate cores; each row is
    computed exactly as in ``lap @ x`` (bitwise equal, deterministic). ~1.8x faster mat-vecs
    on 2 cores for the 100k-node / 2M-entry benchmark Laplacian. ``threads <= 1``: ``lap``.
    """
    n = lap.shape[0]
    if threads <= 1 or lap.nnz < _SPLIT_MATVEC_NNZ:
        yield lap
        return
    from concurrent.futures import ThreadPoolExecutor

    from scipy.sparse.linalg import LinearOperator

    bounds = np.searchsorted(lap.indptr, np.linspace(0, lap.nnz, threads + 1)[1:-1])
    blocks = [lap[lo:hi] for lo, hi in zip([0, *bounds], [*bounds, n])]  # ~equal nnz each
    with ThreadPoolExecutor(threads - 1) as pool:
        def matvec(x):
            x = np.asarray(x).ravel()
            rest = [pool.submit(b.dot, x) for b in blocks[1:]]
            return np.concatenate([blocks[0].dot(x)] + [f.result() for f in rest])
        yield LinearOperator((n, n), matvec=matvec, dtype=lap.dtype)


def sparse_smallest(lap, nev: int, solver: str = 'auto') -> tuple[np.ndarray, np.ndarray]:
    """``nev`` smallest eigenpairs of a sparse Hermitian PSD matrix (one connected graph).

    ``'shift_invert'``: Lanczos on :math:`(L + \\sigma I)^{-1}` with a sparse LU and
    :math:`\\sigma = 10^{-8}\\max_i L_{ii}`, so the clustered small eigenvalues of path-like
    graphs become well separated large ones. ``'lanczos'``: plain Lanczos, ``which='SA'``.
    ``'auto'``: shift-invert when the RCM envelope is below ``3e7`` entries (the LU is
    cheap), else Lanczos (``ncv >= 40``, relative residual ``_LANCZOS_TOL``; falling back to
    shift-invert if it does not converge).
    The result is refined by a Rayleigh--Ritz step, so the vectors are orthonormal and the
    values ascending. The start vector is deterministic (seeded by the size).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh, splu

    n = lap.shape[0]
    rng = np.random.default_rng(n)
    v0 = rng.standard_normal(n)
    if np.iscomplexobj(lap.data):
        v0 = v0 + 1j * rng.standard_normal(n)
    if solver == 'auto':
        solver = 'shift_invert' if _envelope(lap) <= _ENVELOPE_BUDGET else 'lanczos'
    vecs = None
    if solver == 'lanczos':
        try:
            # A wide Krylov space (ncv >= 40) needs ~3x fewer mat-vecs than scipy's default
            # (ncv=20) on the clustered spectrum edge of random graphs. tol stays tight: with a
            # loose one (1e-3), ARPACK can declare convergence while missing the smallest
            # eigenvalue.
            with _row_split_operator(lap.tocsr(), torch.get_num_threads()) as op:
                _, vecs = eigsh(op, k=nev, which='SA', v0=v0, ncv=min(n, max(2 * nev + 1, 40)),
                                tol=_LANCZOS_TOL)
        except ArpackNoConvergence:
            warnings.warn("Lanczos did not converge; retrying with shift-invert", RuntimeWarning)
            solver = 'shift_invert'
    if solver == 'shift_invert':
        scale = float(np.abs(lap.diagonal()).max()) or 1.0
        sigma = -1e-8 * scale
        shifted = (lap - sigma * sp.identity(n, dtype=lap.dtype, format='csr')).tocsc()
        lu = splu(shifted, permc_spec='MMD_AT_PLUS_A', diag_pivot_thresh=0.0,
                  options={'SymmetricMode': True})
        op = LinearOperator((n, n), matvec=lu.solve, dtype=lap.dtype)
        _, vecs = eigsh(lap, k=nev, sigma=sigma, which='LM', OPinv=op, v0=v0,
                        ncv=min(n, max(2 * nev + 1, 20)), tol=0)
    elif vecs is None:
        raise ValueError(f"unknown sparse solver {solver!r}; expected one of {SOLVERS}")
    # Rayleigh--Ritz refinement: orthonormal basis, exact ordering inside the subspace.
    basis, _ = np.linalg.qr(vecs)
    small = basis.conj().T @ (lap @ basis)
    small = (small + small.conj().T) / 2
    lam, rot = np.linalg.eigh(small)
    return lam, basis @ rot


def _component_eigenpairs(lap, labels: np.ndarray, counts: np.ndarray, comps: np.ndarray,
                          want: int, r: np.ndarray, c: np.ndarray, wt: np.ndarray,
                          spec: LaplacianSpec, q: float, threshold: int, solver: str
                          ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``min(want, n_c)`` smallest eigenpairs of each component in ``comps``:
    ``{comp: (node ids, values [m], vectors [n_c, m])}`` (not canonicalised). Components
    with at most ``threshold`` nodes are solved together (dense batched), larger ones with
    :func:`sparse_smallest`."""
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    small = comps[counts[comps] <= threshold]
    if small.size:
        is_small = np.zeros(counts.size, dtype=bool)
        is_small[small] = True
        nodes = np.nonzero(is_small[labels])[0]
        order = nodes[np.argsort(labels[nodes], kind='stable')]  # grouped by component
        new_id = np.full(labels.size, -1, dtype=np.int64)
        new_id[order] = np.arange(order.size)
        emask = is_small[labels[r]]
        sub_counts = counts[small]
        ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(sub_counts)]).astype(np.int64))
        qs = None if not spec.magnetic else torch.full((small.size,), float(q),
                                                       dtype=torch.float64)
        ev, ok, vv = dense_eigenpairs(torch.from_numpy(new_id[r[emask]]),
                                      torch.from_numpy(new_id[c[emask]]),
                                      torch.from_numpy(wt[emask]), ptr, spec, qs,
                                      min(want, int(sub_counts.max())), 0, canonical=False)
        ev, ok, vv = ev.numpy(), ok.numpy(), vv.numpy()
        for i, comp in enumerate(small):
            m = int(ok[i].sum())
            lo, hi = int(ptr[i]), int(ptr[i + 1])
            out[int(comp)] = (order[lo:hi], ev[i, :m], vv[lo:hi, :m])
    for comp in comps[counts[comps] > threshold]:
        ids = np.nonzero(labels == comp)[0]
        sub = lap[ids][:, ids]
        m = min(want, ids.size)
        if m >= ids.size - 1:  # ARPACK needs nev < n - 1: tiny problem, solve densely
            lam, vec = np.linalg.eigh(sub.toarray())
            lam, vec = lam[:m], vec[:, :m]
        else:
            lam, vec = sparse_smallest(sub, m, solver)
        out[int(comp)] = (ids, lam, vec)
    return out


def sparse_graph_eigenpairs(row: Tensor, col: Tensor, w: Tensor, n: int, spec: LaplacianSpec,
                            q: float, num: int, threshold: int, solver: str
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """``num`` smallest eigenpairs of one (large) graph with local ids ``row``/``col``.

    Returns ``evals`` [num], ``valid`` [num], ``vecs`` [n, num] (CPU), canonicalised by the
    same rule as the dense path (:func:`canonical_basis`).
    Connected components are solved separately (dense batched if small) and merged; a
    repeated eigenvalue may be shared by several components (its eigenspace is the direct
    sum of theirs: :func:`pivoted_basis_blocks`). A component solved only partly (its
    ``want`` smallest pairs) whose last eigenvalue falls into a cluster reaching the window
    may hide more of that eigenspace: its ``want`` is doubled and it is solved again (rare:
    it needs a repeated eigenvalue exactly at the window's end).
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    r, c, wt = row.cpu().numpy(), col.cpu().numpy(), w.cpu().numpy()
    lap = sparse_laplacian(r, c, wt, n, spec, q)
    pattern = sp.coo_matrix((np.ones(r.size), (r, c)), shape=(n, n)).tocsr()
    ncomp, labels = connected_components(pattern, directed=True, connection='weak')
    counts = np.bincount(labels, minlength=ncomp)
    scale = float(np.abs(lap.diagonal()).max(initial=0.0)) or 1.0
    want = np.full(ncomp, num, dtype=np.int64)
    parts = _component_eigenpairs(lap, labels, counts, np.arange(ncomp), num, r, c, wt, spec,
                                  q, threshold, solver)
    while True:
        comps = np.array(sorted(parts))
        vals = np.concatenate([parts[k][1] for k in comps])
        comp_of = np.concatenate([np.full(parts[k][1].size, k) for k in comps])
        pos = np.concatenate([np.arange(parts[k][1].size) for k in comps])
        key = np.where(np.abs(vals) < _ZERO_TOL * scale, 0.0, vals)
        order = np.lexsort((pos, comp_of, key))
        svals = vals[order]
        joins = svals[1:] - svals[:-1] <= CLUSTER_RTOL * np.abs(svals[1:]) + CLUSTER_ATOL * scale
        end = min(num, order.size)  # sorted positions 0 .. end-1 are kept
        last = end - 1  # extend the window's last cluster to its end
        while 0 <= last < joins.size and joins[last]:
            last += 1
        # a partly solved component whose last eigenvalue sits at or before `last` may have
        # more eigenvalues in the window's clusters
        spos = np.empty(order.size, dtype=np.int64)
        spos[order] = np.arange(order.size)
        ends = np.cumsum([parts[k][1].size for k in comps]) - 1
        partial = np.array([parts[k][1].size < counts[k] for k in comps], dtype=bool)
        redo = comps[partial & (spos[ends] <= last)] if order.size else comps[:0]
        if not redo.size:
            break
        want[redo] = np.minimum(2 * want[redo], counts[redo])
        for wv in np.unique(want[redo]):
            parts.update(_component_eigenpairs(lap, labels, counts, redo[want[redo] == wv],
                                               int(wv), r, c, wt, spec, q, threshold, solver))
    dtype = np.complex128 if spec.magnetic else np.float64
    evals = np.zeros(num)
    valid = np.zeros(num, dtype=bool)
    vecs = np.zeros((n, num), dtype=dtype)
    evals[:end] = svals[:end]
    valid[:end] = True
    for j in range(end):
        k, p = comp_of[order[j]], pos[order[j]]
        vecs[parts[k][0], j] = parts[k][2][:, p]
    vecs_t = canonicalize(torch.from_numpy(vecs))  # multiplicity one
    vecs = vecs_t.numpy()
    # repeated eigenvalues reaching the window: the pivoted basis of the whole eigenspace
    first = 0
    while first < end:
        stop = first
        while stop < joins.size and joins[stop]:
            stop += 1
        if stop > first:  # cluster = sorted positions first .. stop
            members = order[first:stop + 1]
            blocks = []
            for k in np.unique(comp_of[members]):
                mine = members[comp_of[members] == k]
                blocks.append((parts[k][0], parts[k][2][:, np.sort(pos[mine])]))
            steps = min(stop + 1, end) - first
            vecs[:, first:first + steps] = pivoted_basis_blocks(blocks, steps, n)
        first = stop + 1
    return torch.from_numpy(evals), torch.from_numpy(valid), torch.from_numpy(vecs)


# --------------------------------------------------------------------------------------
# Entry point used by the transforms
# --------------------------------------------------------------------------------------
def spectral_pe(data, spec: LaplacianSpec, k: int, skip: int, weight_attr: str | None,
                sparse_threshold: int, solver: str, owner: str = 'AddLapPE'
                ) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``skip .. skip+k-1`` of every graph of ``data`` (a Data or a Batch).

    Returns per-node eigenvalues [N, k] (float64) and canonicalised eigenvectors [N, k]
    (float64, complex128 if magnetic) on the device of ``data.edge_index``; columns that do
    not exist (``skip + j >= N_g``) are 0 in both.
    """
    num_nodes = int(data.num_nodes or 0)
    ptr = batch_ptr(data, owner)
    edge_index = getattr(data, 'edge_index', None)
    device = edge_index.device if isinstance(edge_index, Tensor) else torch.device('cpu')
    row, col, w = prepare_edges(data, weight_attr, ptr, device, owner)
    num_graphs = ptr.numel() - 1
    sizes = ptr.diff()
    node_graph = torch.repeat_interleave(torch.arange(num_graphs, device=device),
                                         sizes.to(device))
    q = effective_q(spec, row, col, num_nodes, ptr, node_graph) if spec.magnetic else None

    dtype = torch.complex128 if spec.magnetic else torch.float64
    out_vals = torch.zeros(num_nodes, k, dtype=torch.float64, device=device)
    out_vecs = torch.zeros(num_nodes, k, dtype=dtype, device=device)
    large = sizes > sparse_threshold
    if bool((~large).any()):
        small_ids = torch.nonzero(~large).view(-1)
        if bool(large.any()):  # restrict to the small graphs, renumbered contiguously
            keep_node = (~large).to(device)[node_graph]
            new_id = torch.cumsum(keep_node.long(), 0) - 1
            emask = keep_node[row]
            s_row, s_col, s_w = new_id[row[emask]], new_id[col[emask]], w[emask]
            s_sizes = sizes[small_ids]
            s_ptr = torch.cat([s_sizes.new_zeros(1), s_sizes.cumsum(0)])
            nodes = torch.nonzero(keep_node).view(-1)
        else:
            s_row, s_col, s_w, s_ptr, nodes = row, col, w, ptr, None
        # many tiny kernels: one thread (see _single_threaded_torch); big eigh keep threads
        with _single_threaded_torch(device.type == 'cpu'
                                    and int(sizes[small_ids].max()) <= _SMALL_EIGH):
            ev, _, vv = dense_eigenpairs(s_row, s_col, s_w, s_ptr, spec,
                                         None if q is None else q[small_ids], k, skip)
        s_graph = torch.repeat_interleave(torch.arange(s_ptr.numel() - 1, device=device),
                                          s_ptr.diff().to(device))
        if nodes is None:
            out_vals, out_vecs = ev[s_graph], vv
        else:
            out_vals[nodes], out_vecs[nodes] = ev[s_graph], vv
    for g in torch.nonzero(large).view(-1).tolist():
        lo, hi = int(ptr[g]), int(ptr[g + 1])
        emask = (row >= lo) & (row < hi)
        with _single_threaded_blas():
            ev, _, vv = sparse_graph_eigenpairs(row[emask] - lo, col[emask] - lo, w[emask],
                                                hi - lo, spec, 0.0 if q is None else float(q[g]),
                                                k + skip, sparse_threshold, solver)
        vv = vv[:, skip:]  # canonical already (whole clusters, before skipping)
        out_vals[lo:hi] = ev[skip:].to(device).unsqueeze(0)
        out_vecs[lo:hi] = vv.to(device)
    return out_vals.clamp_min_(0.0), out_vecs
