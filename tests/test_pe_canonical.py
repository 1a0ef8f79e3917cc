"""Canonical eigenvector basis of LapPE / MagLapPE (gtpe.transforms._eigen.canonical_basis).

The encodings must be a function of the graph alone: the same graph alone, anywhere in a
batch, or permuted and unpermuted gives the same numbers, also inside repeated eigenvalues.
Everything is checked against an independent numpy reference built from the eigenspace
projectors of ``np.linalg.eigh``.
"""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.transforms._eigen import LaplacianSpec, spectral_pe
from gtpe.transforms.lap import AddLapPE
from gtpe.transforms.maglap import AddMagLapPE
from graph_utils import permuted
from test_pe_lap import ref_laplacian
from test_pe_maglap import ref_magnetic_laplacian

# documented tolerances (gtpe.transforms._eigen): eigenvalue clusters and pivot ties
CLUSTER_RTOL, CLUSTER_ATOL, PIVOT_TOL = 1e-6, 1e-12, 1e-6


# ----------------------------------------------------------------------------- reference
def ref_clusters(vals, scale):
    """Documented rule: consecutive eigenvalues a <= b share a cluster iff
    b - a <= CLUSTER_RTOL * |b| + CLUSTER_ATOL * scale."""
    groups = [[0]] if len(vals) else []
    for j in range(1, len(vals)):
        if vals[j] - vals[j - 1] <= CLUSTER_RTOL * abs(vals[j]) + CLUSTER_ATOL * scale:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def ref_canonical(lap):
    """Eigenvalues, canonical basis (pivoted Cholesky of every cluster's projector) and, per
    column, whether its pivot was ambiguous (another node within a relative 1e-3 of the top
    residual norm that would have given a different vector)."""
    n = lap.shape[0]
    vals, vecs = np.linalg.eigh(lap)
    scale = float(np.real(np.diag(lap)).max(initial=0.0)) or 1.0
    basis = np.zeros_like(vecs)
    ambiguous = np.zeros(n, dtype=bool)
    for group in ref_clusters(vals, scale):
        proj = vecs[:, group] @ vecs[:, group].conj().T
        amb = False
        for col in group:
            norm = np.sqrt(np.clip(np.real(np.diag(proj)), 0, None))
            top = norm.max()
            p = int(np.nonzero(norm >= (1 - PIVOT_TOL) * top)[0][0])
            v = proj[:, p] / norm[p]
            for c in np.nonzero(norm >= (1 - 1e-3) * top)[0]:
                if c != p and np.abs(proj[:, c] / norm[c] - v).max() > 1e-8:
                    amb = True
            basis[:, col] = v
            ambiguous[col] = amb
            proj = proj - np.outer(v, v.conj())
    return vals, basis, ambiguous, ref_clusters(vals, scale)


def lap_f64(data, k, norm='sym', threshold=2000, solver='auto'):
    return spectral_pe(data, LaplacianSpec(norm), k, 1, 'edge_weight', threshold, solver)


def mag_f64(data, k, q=0.25, threshold=2000, solver='auto'):
    return spectral_pe(data, LaplacianSpec('sym', q=q), k, 0, 'edge_weight', threshold, solver)


def undirected(ei):
    ei = torch.as_tensor(ei, dtype=torch.long).view(2, -1)
    return torch.cat([ei, ei.flip(0)], 1)


def cycle(n, directed=False):
    i = torch.arange(n)
    ei = torch.stack([i, (i + 1) % n])
    return ei if directed else undirected(ei)


def union(*parts):
    """Disjoint union of (edge_index, num_nodes) pairs."""
    edges, off = [], 0
    for ei, n in parts:
        edges.append(ei + off)
        off += n
    return Data(edge_index=torch.cat(edges, 1), num_nodes=off)


def symmetric_graph(rng: np.random.Generator, directed: bool = False) -> Data:
    """A small graph with automorphisms: disjoint copies, stars, cycles, complete
    (bipartite) graphs, twin leaves on a random tree; some with a random extra part."""
    kind = rng.integers(0, 7)
    if kind == 0:  # disjoint copies of a random graph
        n = int(rng.integers(2, 7))
        ei = torch.from_numpy(rng.integers(0, n, (2, 2 * n)))
        ei = ei if directed else undirected(ei)
        data = union(*[(ei, n)] * int(rng.integers(2, 4)))
    elif kind == 1:  # star with s leaves (+ a pendant path)
        s, tail = int(rng.integers(3, 8)), int(rng.integers(0, 3))
        ei = [[0] * s, list(range(1, s + 1))]
        for t in range(tail):
            ei[0].append(s + t if t else 0)
            ei[1].append(s + t + 1)
        ei = torch.tensor(ei)
        data = Data(edge_index=ei if directed else undirected(ei), num_nodes=s + tail + 1)
    elif kind == 2:
        data = Data(edge_index=cycle(int(rng.integers(4, 15)), directed), num_nodes=0)
        data.num_nodes = int(data.edge_index.max()) + 1
    elif kind == 3:  # complete bipartite K_{a,b}
        a, b = int(rng.integers(1, 5)), int(rng.integers(2, 5))
        ei = torch.cartesian_prod(torch.arange(a), torch.arange(a, a + b)).T
        data = Data(edge_index=ei if directed else undirected(ei), num_nodes=a + b)
    elif kind == 4:  # complete graph
        n = int(rng.integers(3, 7))
        ei = torch.combinations(torch.arange(n)).T
        data = Data(edge_index=ei if directed else undirected(ei), num_nodes=n)
    elif kind == 5:  # random tree with twin leaves (CF3-like groups)
        n = int(rng.integers(3, 9))
        parent = [int(rng.integers(0, i)) for i in range(1, n)]
        ei = [parent, list(range(1, n))]
        for hub in rng.choice(n, size=min(2, n), replace=False):
            for _ in range(int(rng.integers(2, 4))):
                ei[0].append(int(hub))
                ei[1].append(len(ei[1]) + 1)
        ei = torch.tensor(ei)
        data = Data(edge_index=ei if directed else undirected(ei), num_nodes=int(ei.max()) + 1)
    else:  # hypercube Q3 (vertex-transitive, eigenvalue multiplicities 1, 3, 3, 1)
        i = torch.arange(8)
        ei = torch.cat([torch.stack([i, i ^ (1 << b)]) for b in range(3)], 1)
        ei = ei[:, ei[0] < ei[1]]
        data = Data(edge_index=ei if directed else undirected(ei), num_nodes=8)
    if rng.random() < 0.3:  # plus an asymmetric random part
        n = int(rng.integers(2, 6))
        ei = torch.from_numpy(rng.integers(0, n, (2, n)))
        data = union((data.edge_index, data.num_nodes), (ei if directed else undirected(ei), n))
    return data


def family(count=100, directed=False, seed=0):
    rng = np.random.default_rng(seed)
    return [symmetric_graph(rng, directed) for _ in range(count)]


def filler():
    gen = torch.Generator().manual_seed(5)
    return [Data(edge_index=torch.randint(0, n, (2, 2 * n), generator=gen), num_nodes=n)
            for n in (13, 13, 7, 20)]


# ----------------------------------------------------------------------------- batch position
@pytest.mark.parametrize('norm', ['sym', None])
def test_cycle_alone_equals_cycle_in_any_batch_position(norm):
    g = Data(edge_index=cycle(13), num_nodes=13)
    alone_vals, alone = lap_f64(g, 8, norm)
    other = filler()
    for graphs in ([other[0], g, other[1]], [other[2], other[1], other[0], g], [g] * 3):
        batch = Batch.from_data_list(graphs)
        vals, vecs = lap_f64(batch, 8, norm)
        for i, d in enumerate(graphs):
            if d is g:
                lo = int(batch.ptr[i])
                torch.testing.assert_close(vecs[lo:lo + 13], alone, atol=1e-10, rtol=0)
                torch.testing.assert_close(vals[lo:lo + 13], alone_vals, atol=1e-10, rtol=0)


@pytest.mark.parametrize('directed', [True, False])
def test_maglap_cycle_alone_equals_cycle_in_any_batch_position(directed):
    # directed cycle with relative q = 1/2: theta = pi / n pairs the eigenvalues up
    q = 0.5 if directed else 0.25
    g = Data(edge_index=cycle(13, directed), num_nodes=13)
    alone_vals, alone = mag_f64(g, 8, q)
    assert np.diff(alone_vals[0].numpy()).min() < 1e-12  # repeated eigenvalues indeed
    other = filler()
    for graphs in ([other[0], g, other[1]], [other[2], other[1], other[0], g]):
        batch = Batch.from_data_list(graphs)
        vals, vecs = mag_f64(batch, 8, q)
        lo = int(batch.ptr[graphs.index(g)])
        torch.testing.assert_close(vecs[lo:lo + 13], alone, atol=1e-10, rtol=0)
        torch.testing.assert_close(vals[lo:lo + 13], alone_vals, atol=1e-10, rtol=0)


@pytest.mark.parametrize('encoding', ['lap_sym', 'lap_comb', 'maglap_und', 'maglap_dir'])
def test_symmetric_graphs_alone_equal_batched_in_random_orders(encoding):
    directed = encoding == 'maglap_dir'
    graphs = family(100, directed=directed, seed=1)

    def run(d):
        if encoding.startswith('lap'):
            return lap_f64(d, 6, 'sym' if encoding == 'lap_sym' else None)
        return mag_f64(d, 6)

    alone = [run(g) for g in graphs]
    rng = np.random.default_rng(2)
    for _ in range(2):
        order = rng.permutation(len(graphs))
        batch = Batch.from_data_list([graphs[i] for i in order])
        vals, vecs = run(batch)
        for pos, i in enumerate(order):
            lo, hi = int(batch.ptr[pos]), int(batch.ptr[pos + 1])
            torch.testing.assert_close(vecs[lo:hi], alone[i][1], atol=1e-10, rtol=0)
            torch.testing.assert_close(vals[lo:hi], alone[i][0], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- the rule itself
def _check_against_reference(data, vals, vecs, lap, skip, k):
    n = data.num_nodes
    ref_vals, ref_basis, _, groups = ref_canonical(lap)
    m = max(0, min(k, n - skip))
    np.testing.assert_allclose(vals[0, :m], np.clip(ref_vals[skip:skip + m], 0, None),
                               atol=1e-10)
    v = vecs[:, :m]
    np.testing.assert_allclose(v, ref_basis[:, skip:skip + m], atol=1e-8)
    np.testing.assert_allclose(v.conj().T @ v, np.eye(m), atol=1e-10)  # orthonormal
    assert np.abs(lap @ v - v * vals[0, :m]).max(initial=0) < 1e-9  # eigenvectors
    for group in groups:  # a full cluster spans the eigenspace
        cols = [g - skip for g in group if 0 <= g - skip < m]
        if len(cols) == len(group) and len(group) > 1:
            ref = np.linalg.eigh(lap)[1][:, group]
            np.testing.assert_allclose(v[:, cols] @ v[:, cols].conj().T, ref @ ref.conj().T,
                                       atol=1e-10)
    return groups


@pytest.mark.parametrize('norm', ['sym', None])
def test_lap_is_the_reference_canonical_basis(norm):
    degenerate = 0
    for data in family(60, seed=3):
        k = 7
        vals, vecs = lap_f64(data, k, norm)
        lap = ref_laplacian(data.edge_index.numpy(), data.num_nodes, None, norm)
        groups = _check_against_reference(data, vals.numpy(), vecs.numpy(), lap, 1, k)
        degenerate += any(len(g) > 1 and g[0] <= k for g in groups)
    assert degenerate > 30  # the family does exercise repeated eigenvalues


@pytest.mark.parametrize('directed', [True, False])
def test_maglap_is_the_reference_canonical_basis(directed):
    degenerate = 0
    for data in family(60, directed=directed, seed=4):
        k = 7
        vals, vecs = mag_f64(data, k)
        lap = ref_magnetic_laplacian(data.edge_index.numpy(), data.num_nodes, 0.25)
        groups = _check_against_reference(data, vals.numpy(), vecs.numpy(), lap, 0, k)
        degenerate += any(len(g) > 1 and g[0] < k for g in groups)
    assert degenerate > 20


def test_pivot_entry_is_real_positive_and_maximal():
    # K_{2,3} + a 6-cycle, magnetic q=0.25 on a symmetric digraph (complex arithmetic)
    data = union((undirected(torch.cartesian_prod(torch.arange(2), torch.arange(2, 5)).T), 5),
                 (cycle(6), 6))
    for vals, vecs in [lap_f64(data, 10), mag_f64(data, 11)]:
        for j in range(vecs.size(1)):
            col = vecs[:, j]
            top = col.abs().max()
            p = int(torch.nonzero(col.abs() >= top * (1 - 1e-6))[0])
            assert col[p].real > 0 and (not col.is_complex() or col[p].imag == 0)


def test_cluster_cut_by_the_window_takes_the_first_pivots():
    # 9-cycle (sym): eigenvalues 0, then pairs. k=3 keeps one pair and the first of the next.
    data = Data(edge_index=cycle(9), num_nodes=9)
    lap = ref_laplacian(data.edge_index.numpy(), 9, None, 'sym')
    _, basis, _, groups = ref_canonical(lap)
    assert [len(g) for g in groups] == [1, 2, 2, 2, 2]
    for k in (1, 2, 3, 4):
        _, vecs = lap_f64(data, k)
        np.testing.assert_allclose(vecs.numpy(), basis[:, 1:1 + k], atol=1e-10)
    # LapPE's skipped first column is the first pivot of a repeated zero eigenvalue
    # (two triangles): the kept one is the second pivot, the other triangle
    two = union((cycle(3), 3), (cycle(3), 3))
    _, vecs = lap_f64(two, 1, None)
    np.testing.assert_allclose(vecs[:, 0].numpy(), [0, 0, 0] + [3 ** -0.5] * 3, atol=1e-12)


def test_nearly_repeated_eigenvalues_form_one_cluster():
    # an 8-cycle with one edge 1 + 1e-9: every pair splits by ~1e-10 < the cluster
    # tolerance, so each pair is one (rotation-free) eigenspace, and its vectors have a
    # residual of at most that split
    ei = cycle(8)
    w = torch.ones(ei.size(1), dtype=torch.float64)
    w[0] = w[8] = 1 + 1e-9
    data = Data(edge_index=ei, edge_weight=w, num_nodes=8)
    lap = ref_laplacian(ei.numpy(), 8, w.numpy(), None)
    ref_vals, basis, _, groups = ref_canonical(lap)
    assert [len(g) for g in groups] == [1, 2, 2, 2, 1]
    assert 0 < np.diff(ref_vals)[1] < 1e-8
    vals, vecs = lap_f64(data, 7, None)
    np.testing.assert_allclose(vecs.numpy(), basis[:, 1:], atol=1e-8)
    v = vecs.numpy()
    assert np.abs(lap @ v - v * vals[0].numpy()).max() < 1e-8
    others = filler()[:2]
    for g in others:
        g.edge_weight = torch.ones(g.edge_index.size(1), dtype=torch.float64)
    batch = Batch.from_data_list(others + [data])
    _, bvecs = lap_f64(batch, 7, None)
    torch.testing.assert_close(bvecs[-8:], vecs, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- permutations
def unambiguous_graph() -> Data:
    """A repeated eigenvalue without automorphisms behind it: the zero eigenvalue of K2 + P4 + P5
    (three components, each of whose projector diagonals differ: combinatorial 1/2, 1/4, 1/5;
    'sym' d_i / vol = 1/2, <= 1/3, <= 1/4), so every pivot is unambiguous."""
    def path(n):
        i = torch.arange(n - 1)
        return undirected(torch.stack([i, i + 1]))
    return union((path(2), 2), (path(4), 4), (path(5), 5))


@pytest.mark.parametrize('norm', ['sym', None])
def test_permuted_then_unpermuted(norm):
    checked_basis = 0
    rng = np.random.default_rng(7)
    graphs = family(60, seed=8) + [unambiguous_graph()]
    for data in graphs:
        n, k = data.num_nodes, 8
        perm = torch.from_numpy(rng.permutation(n))
        vals, vecs = lap_f64(data, k, norm)
        pvals, pvecs = lap_f64(permuted(data, perm), k, norm)  # node perm[i] -> i
        v, pv = vecs[perm].numpy(), pvecs.numpy()
        np.testing.assert_allclose(pvals.numpy(), vals[perm].numpy(), atol=1e-10)
        lap = ref_laplacian(data.edge_index.numpy(), n, None, norm)
        _, _, ambiguous, groups = ref_canonical(lap)
        for group in groups:
            cols = [g - 1 for g in group if 0 <= g - 1 < min(k, n - 1)]
            if not cols:
                continue
            if len(cols) == len(group):  # same eigenspace
                np.testing.assert_allclose(pv[:, cols] @ pv[:, cols].T,
                                           v[:, cols] @ v[:, cols].T, atol=1e-10)
            if not ambiguous[group].any():  # same vectors where the pivots are unambiguous
                np.testing.assert_allclose(pv[:, cols], v[:, cols], atol=1e-10)
                checked_basis += len(group) > 1
    assert checked_basis >= 3


def test_unambiguous_graph_has_unambiguous_repeated_eigenvalues():
    data = unambiguous_graph()
    for norm in ('sym', None):
        lap = ref_laplacian(data.edge_index.numpy(), data.num_nodes, None, norm)
        _, _, ambiguous, groups = ref_canonical(lap)
        assert any(len(g) > 1 and not ambiguous[g].any() for g in groups)


def test_maglap_permuted_then_unpermuted():
    rng = np.random.default_rng(9)
    checked_basis = 0
    for data in family(60, directed=True, seed=10) + [unambiguous_graph()]:
        n, k = data.num_nodes, 8
        perm = torch.from_numpy(rng.permutation(n))
        vals, vecs = mag_f64(data, k)
        pvals, pvecs = mag_f64(permuted(data, perm), k)
        v, pv = vecs[perm].numpy(), pvecs.numpy()
        np.testing.assert_allclose(pvals.numpy(), vals[perm].numpy(), atol=1e-10)
        lap = ref_magnetic_laplacian(data.edge_index.numpy(), n, 0.25)
        _, _, ambiguous, groups = ref_canonical(lap)
        for group in groups:
            cols = [g for g in group if g < min(k, n)]
            if len(cols) == len(group):
                np.testing.assert_allclose(pv[:, cols] @ pv[:, cols].conj().T,
                                           v[:, cols] @ v[:, cols].conj().T, atol=1e-10)
            if cols and not ambiguous[group].any():
                np.testing.assert_allclose(pv[:, cols], v[:, cols], atol=1e-10)
                checked_basis += len(group) > 1
    assert checked_basis >= 3


# ----------------------------------------------------------------------------- sparse path
@pytest.mark.parametrize('solver', ['auto', 'shift_invert', 'lanczos'])
@pytest.mark.parametrize('norm', ['sym', None])
def test_sparse_path_gives_the_dense_canonical_basis(solver, norm):
    # components: a 140-cycle (pairs), two triangles, K_{1,4}, an edge, isolated nodes
    star = undirected(torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]]))
    data = union((cycle(140), 140), (cycle(3), 3), (star, 5), (cycle(3), 3),
                 (undirected(torch.tensor([[0], [1]])), 2), (torch.zeros(2, 0, dtype=torch.long), 3))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(data.num_nodes))
    data = permuted(data, perm)  # interleave the components
    for k in (3, 8):  # k=3 (comb.): cuts the zero cluster of the 8 components
        dense_vals, dense = lap_f64(data, k, norm)
        vals, vecs = lap_f64(data, k, norm, threshold=50, solver=solver)
        torch.testing.assert_close(vals, dense_vals, atol=1e-9, rtol=0)
        torch.testing.assert_close(vecs, dense, atol=1e-10, rtol=0)


@pytest.mark.parametrize('solver', ['auto', 'lanczos'])
def test_sparse_path_cycle_cluster_cut_by_window(solver):
    # one large component whose pair cluster is cut by the window: the solver must fetch the
    # whole cluster (magnetic, undirected 120-cycle and two copies of a directed 60-cycle)
    und = Data(edge_index=cycle(120), num_nodes=120)
    for k in (2, 4):
        dense_vals, dense = mag_f64(und, k)
        vals, vecs = mag_f64(und, k, threshold=50, solver=solver)
        torch.testing.assert_close(vals, dense_vals, atol=1e-9, rtol=0)
        torch.testing.assert_close(vecs, dense, atol=1e-10, rtol=0)
    two = union((cycle(60, True), 60), (cycle(60, True), 60))
    dense_vals, dense = mag_f64(two, 3)
    vals, vecs = mag_f64(two, 3, threshold=50, solver=solver)
    torch.testing.assert_close(vecs, dense, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- precompute
def test_precompute_does_not_depend_on_the_batch_size():
    from gtpe.transforms.precompute import precompute
    graphs = family(40, seed=11)
    a = precompute(graphs, [AddLapPE(k=6), AddMagLapPE(k=6)], batch_size=40, progress=False)
    b = precompute(graphs[::-1], [AddLapPE(k=6), AddMagLapPE(k=6)], batch_size=3,
                   progress=False)[::-1]
    for x, y in zip(a, b):
        for key in ('lap_pe', 'lap_eigval', 'maglap_pe', 'maglap_eigval'):
            torch.testing.assert_close(x[key], y[key], atol=1e-6, rtol=0)
