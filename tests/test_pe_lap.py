"""AddLapPE against a dense float64 numpy reference (gtpe.transforms.lap)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

from gtpe.transforms._eigen import LaplacianSpec, canonicalize, spectral_pe
from gtpe.transforms.lap import AddLapPE
from graph_utils import permuted

SETTINGS = {'max_examples': 25, 'deadline': None,
                'suppress_health_check': [HealthCheck.too_slow, HealthCheck.data_too_large]}


# ----------------------------------------------------------------------------- reference
def ref_laplacian(edge_index, n, weight=None, normalization='sym'):
    """Dense float64 Laplacian with the documented conventions (independent of gtpe)."""
    ei = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    w = np.ones(ei.shape[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    adj = np.zeros((n, n))
    for (u, v), x in zip(ei.T, w):
        if u != v and x > 0:
            adj[u, v] += x
    both = (adj > 0) & (adj.T > 0)
    sym = np.where(both, (adj + adj.T) / 2, adj + adj.T)
    deg = sym.sum(1)
    if normalization == 'sym':
        dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
        return np.eye(n) - dinv[:, None] * sym * dinv[None, :]
    return np.diag(deg) - sym


def path(n, directed=False):
    i = torch.arange(n - 1)
    if directed:
        return torch.stack([i, i + 1])
    return torch.stack([torch.cat([i, i + 1]), torch.cat([i + 1, i])])


def f64(data, k=8, normalization='sym', weight='edge_weight', threshold=2000, solver='auto'):
    """float64 eigenpairs as computed inside AddLapPE (before the float32 cast)."""
    return spectral_pe(data, LaplacianSpec(normalization), k, 1, weight, threshold, solver)


def clusters(vals, tol=1e-6):
    """Index groups of (numerically) equal eigenvalues."""
    groups, start = [], 0
    for i in range(1, len(vals) + 1):
        if i == len(vals) or vals[i] - vals[i - 1] > tol:
            groups.append(list(range(start, i)))
            start = i
    return groups


def check_against_reference(data, k, normalization, weight=None, tol=1e-9, **kw):
    n = data.num_nodes
    lap = ref_laplacian(data.edge_index.numpy(), n, weight, normalization)
    ref_vals, ref_vecs = np.linalg.eigh(lap)
    vals, vecs = f64(data, k, normalization, 'edge_weight', **kw)
    vals, vecs = vals.numpy(), vecs.numpy()
    m = max(0, min(k, n - 1))  # number of real columns
    expect = np.zeros(k)
    expect[:m] = ref_vals[1:1 + m]
    np.testing.assert_allclose(vals, np.broadcast_to(np.clip(expect, 0, None), (n, k)),
                               atol=tol)
    v = vecs[:, :m]
    assert np.abs(lap @ v - v * vals[0, :m]).max(initial=0) < tol * 10  # eigen-residual
    np.testing.assert_allclose(v.T @ v, np.eye(m), atol=tol * 10)  # orthonormal
    assert np.all(vecs[:, m:] == 0) and np.all(vals[:, m:] == 0)  # padding
    # the columns span the same spaces as the reference's, cluster by cluster
    for group in clusters(ref_vals):
        cols = [g - 1 for g in group if 1 <= g <= m]
        if len(cols) != len(group):  # cluster cut by the window (or the trivial vector)
            continue
        ours = v[:, cols] @ v[:, cols].T
        theirs = ref_vecs[:, group] @ ref_vecs[:, group].T
        np.testing.assert_allclose(ours, theirs, atol=1e-7)
    return vals, vecs


@st.composite
def graphs(draw, max_nodes=24, weighted=False):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 3 * n))
    row = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    col = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    directed = draw(st.booleans())
    ei = torch.tensor([row, col], dtype=torch.long).view(2, -1)
    data = Data(edge_index=ei, num_nodes=n)
    if weighted:
        w = draw(st.lists(st.floats(0.1, 5.0), min_size=m, max_size=m))
        data.edge_weight = torch.tensor(w, dtype=torch.float64).view(-1)
    if not directed:
        data.edge_index = torch.cat([ei, ei.flip(0)], 1)
        if weighted:
            data.edge_weight = torch.cat([data.edge_weight, data.edge_weight])
    return data


# ----------------------------------------------------------------------------- API
def test_repr_and_output_format():
    t = AddLapPE(k=4, normalization=None)
    assert repr(t) == ("AddLapPE(k=4, normalization=None, edge_weight='edge_weight', "
                       "sparse_threshold=2000, sparse_solver='auto')")
    data = Data(edge_index=path(6), num_nodes=6)
    out = t(data)
    assert out.lap_pe.shape == (6, 4) and out.lap_pe.dtype == torch.float32
    assert out.lap_eigval.shape == (6, 4) and out.lap_eigval.dtype == torch.float32
    assert not hasattr(data, 'lap_pe')  # BaseTransform works on a copy


@pytest.mark.parametrize('kwargs', [{'k': 0}, {'k': 2.0}, {'normalization': 'rw'},
                                    {'sparse_threshold': 0}, {'sparse_solver': 'arpack'}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        AddLapPE(**kwargs)


def test_invalid_inputs():
    t = AddLapPE(k=2)
    with pytest.raises(ValueError, match='outside'):
        t(Data(edge_index=torch.tensor([[0], [5]]), num_nodes=3))
    with pytest.raises(ValueError, match='non-negative'):
        t(Data(edge_index=path(3), edge_weight=torch.tensor([1.0, -1.0, 1.0, 1.0]),
               num_nodes=3))
    with pytest.raises(ValueError, match='one weight per edge'):
        t(Data(edge_index=path(3), edge_weight=torch.ones(3), num_nodes=3))
    batch = Batch.from_data_list([Data(edge_index=path(3), num_nodes=3)] * 2)
    batch.edge_index = torch.cat([batch.edge_index, torch.tensor([[0], [4]])], 1)
    with pytest.raises(ValueError, match='different graphs'):
        t(batch)


# ----------------------------------------------------------------------------- reference checks
@settings(**SETTINGS)
@given(data=graphs(), k=st.integers(1, 10), norm=st.sampled_from(['sym', None]))
def test_random_graphs_match_dense_reference(data, k, norm):
    check_against_reference(data, k, norm)
    out = AddLapPE(k=k, normalization=norm)(data)  # float32 output agrees
    vals, vecs = f64(data, k, norm)
    assert torch.equal(out.lap_pe, vecs.float()) and torch.equal(out.lap_eigval, vals.float())


@settings(**SETTINGS)
@given(data=graphs(weighted=True), k=st.integers(1, 6), norm=st.sampled_from(['sym', None]))
def test_weighted_random_graphs_match_dense_reference(data, k, norm):
    n = data.num_nodes
    lap = ref_laplacian(data.edge_index.numpy(), n, data.edge_weight.numpy(), norm)
    ref_vals = np.linalg.eigh(lap)[0]
    vals, vecs = f64(data, k, norm)
    m = max(0, min(k, n - 1))
    np.testing.assert_allclose(vals[0, :m].numpy(), np.clip(ref_vals[1:1 + m], 0, None),
                               atol=1e-9)
    v = vecs[:, :m].numpy()
    assert np.abs(lap @ v - v * vals[0, :m].numpy()).max(initial=0) < 1e-8
    # ignoring weights gives the unweighted Laplacian
    vals_u, _ = f64(data, k, norm, weight=None)
    ref_u = np.linalg.eigh(ref_laplacian(data.edge_index.numpy(), n, None, norm))[0]
    np.testing.assert_allclose(vals_u[0, :m].numpy(), np.clip(ref_u[1:1 + m], 0, None),
                               atol=1e-9)


@settings(**SETTINGS)
@given(data=graphs(max_nodes=16), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       norm=st.sampled_from(['sym', None]))
def test_permutation_equivariance(data, k, seed, norm):
    n = data.num_nodes
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    vals, vecs = f64(data, k, norm)
    pvals, pvecs = f64(permuted(data, perm), k, norm)  # node perm[i] -> i
    np.testing.assert_allclose(pvals.numpy(), vals[perm].numpy(), atol=1e-9)
    v, pv = vecs[perm].numpy(), pvecs.numpy()
    lam = vals[0].numpy()
    m = max(0, min(k, n - 1))
    ref_vals = np.linalg.eigh(ref_laplacian(data.edge_index.numpy(), n, None, norm))[0]
    for group in clusters(ref_vals):
        cols = [g - 1 for g in group if 1 <= g <= m]
        if len(cols) != len(group):
            continue
        np.testing.assert_allclose(pv[:, cols] @ pv[:, cols].T, v[:, cols] @ v[:, cols].T,
                                   atol=1e-7)
        if len(cols) == 1:  # simple eigenvalue: identical after sign canonicalisation,
            a = np.sort(np.abs(v[:, cols[0]]))[::-1]  # unless the pivot is (nearly) tied
            if n == 1 or a[0] - a[1] > 1e-3 * a[0]:
                np.testing.assert_allclose(pv[:, cols[0]], v[:, cols[0]], atol=1e-7)
    assert lam.shape == (k,)


# ----------------------------------------------------------------------------- batching, determinism
def _mixed_graphs():
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in [1, 2, 3, 5, 8, 9, 12, 17, 30, 30, 64, 65, 130]:
        ei = torch.randint(0, n, (2, 2 * n), generator=gen)
        out.append(Data(edge_index=ei, num_nodes=n))
    out.append(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=6))
    out.append(Data(edge_index=torch.tensor([[0, 0, 1], [0, 1, 0]]), num_nodes=4))
    return out


@pytest.mark.parametrize('norm', ['sym', None])
def test_batch_equals_per_graph_bitwise(norm):
    graphs_ = _mixed_graphs()
    t = AddLapPE(k=8, normalization=norm)
    batched = t(Batch.from_data_list(graphs_))
    single = [t(g) for g in graphs_]
    assert torch.equal(batched.lap_pe, torch.cat([s.lap_pe for s in single]))
    assert torch.equal(batched.lap_eigval, torch.cat([s.lap_eigval for s in single]))
    # and two runs are bit-identical
    again = t(Batch.from_data_list(graphs_))
    assert torch.equal(batched.lap_pe, again.lap_pe)
    assert torch.equal(batched.lap_eigval, again.lap_eigval)


@pytest.mark.parametrize('norm', ['sym', None])
def test_batch_to_data_list_keeps_the_encoding(norm):
    # N <= k (padded columns), a cycle (repeated eigenvalues), one node, no edges, N > k
    i = torch.arange(13)
    ring = torch.stack([torch.cat([i, (i + 1) % 13]), torch.cat([(i + 1) % 13, i])])
    graphs_ = [Data(edge_index=path(3), num_nodes=3), Data(edge_index=ring, num_nodes=13),
               Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=1),
               Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=4),
               Data(edge_index=path(9), num_nodes=9)]
    t = AddLapPE(k=5, normalization=norm)
    batch = t(Batch.from_data_list(graphs_))
    assert batch.lap_pe.shape == (30, 5)
    parts = batch.to_data_list()
    assert len(parts) == len(graphs_)
    for g, part in zip(graphs_, parts):
        ref = t(g)
        for key in ('lap_pe', 'lap_eigval'):
            assert part[key].shape == ref[key].shape == (g.num_nodes, 5)
            torch.testing.assert_close(part[key], ref[key], atol=1e-6, rtol=0)
    assert torch.all(parts[0].lap_pe[:, 2:] == 0) and torch.all(parts[0].lap_eigval[:, 2:] == 0)
    assert torch.equal(parts[2].lap_pe, torch.zeros(1, 5))
    # index_select / slicing a Batch works too
    assert torch.equal(batch[4].lap_pe, parts[4].lap_pe)


def test_batch_with_sparse_member_equals_per_graph():
    big = Data(edge_index=path(150), num_nodes=150)
    graphs_ = [Data(edge_index=path(7), num_nodes=7), big, Data(edge_index=path(3), num_nodes=3)]
    t = AddLapPE(k=5, sparse_threshold=100)
    batched = t(Batch.from_data_list(graphs_))
    single = torch.cat([t(g).lap_pe for g in graphs_])
    assert torch.equal(batched.lap_pe, single)
    j = np.arange(1, 6)
    np.testing.assert_allclose(batched.lap_eigval[7].numpy(), 1 - np.cos(np.pi * j / 149),
                               atol=1e-6)


def test_sign_rule():
    _, vecs = f64(Data(edge_index=path(9), num_nodes=9), k=8)
    for j in range(8):
        col = vecs[:, j]
        top = col.abs().max()
        first = int(torch.nonzero(col.abs() >= top * (1 - 1e-6))[0])
        assert col[first] > 0
    # canonicalize is idempotent and removes any sign flip
    flipped = vecs * torch.tensor([1.0, -1.0] * 4)
    assert torch.equal(canonicalize(flipped), vecs)


# ----------------------------------------------------------------------------- edge cases
def test_fewer_nodes_than_k_is_padded():
    out = AddLapPE(k=8)(Data(edge_index=path(3), num_nodes=3))
    assert out.lap_pe.shape == (3, 8)
    assert torch.all(out.lap_pe[:, 2:] == 0) and torch.all(out.lap_eigval[:, 2:] == 0)
    np.testing.assert_allclose(out.lap_eigval[0, :2].numpy(), [1.0, 2.0], atol=1e-6)
    assert torch.all(out.lap_pe[:, :2].abs().sum(0) > 0)
    # N == k + 1: no padding
    out = AddLapPE(k=8)(Data(edge_index=path(9), num_nodes=9))
    assert torch.all(out.lap_pe.abs().sum(0) > 0)


def test_single_node_and_empty_graph():
    out = AddLapPE(k=3)(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=1))
    assert torch.equal(out.lap_pe, torch.zeros(1, 3))
    assert torch.equal(out.lap_eigval, torch.zeros(1, 3))
    out = AddLapPE(k=3)(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=0))
    assert out.lap_pe.shape == (0, 3)


@pytest.mark.parametrize('norm,value', [('sym', 1.0), (None, 0.0)])
def test_no_edges(norm, value):
    data = Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=5)
    vals, vecs = f64(data, k=6, normalization=norm)
    assert torch.all(vals[:, :4] == value) and torch.all(vals[:, 4:] == 0)
    v = vecs[:, :4]
    torch.testing.assert_close(v.T @ v, torch.eye(4, dtype=torch.float64))
    assert torch.all(vecs[:, 4:] == 0)


def test_isolated_nodes():
    # 0-1 edge plus isolated nodes 2, 3; sym: L_ii = 1 on isolated nodes.
    data = Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=4)
    vals, _vecs = check_against_reference(data, 3, 'sym')
    np.testing.assert_allclose(vals[0], [1.0, 1.0, 2.0], atol=1e-12)
    vals, _ = check_against_reference(data, 3, None)
    np.testing.assert_allclose(vals[0], [0.0, 0.0, 2.0], atol=1e-12)


@pytest.mark.parametrize('norm', ['sym', None])
def test_disconnected_graph_keeps_second_zero(norm):
    tri = torch.tensor([[0, 1, 2, 1, 2, 0], [1, 2, 0, 0, 1, 2]])
    data = Data(edge_index=torch.cat([tri, tri + 3], 1), num_nodes=6)
    vals, vecs = check_against_reference(data, 5, norm)
    high = 1.5 if norm == 'sym' else 3.0
    np.testing.assert_allclose(vals[0], [0, high, high, high, high], atol=1e-12)
    # the kept zero-eigenvector is constant on each component (sym: D^1/2 1, regular here)
    v0 = vecs[:, 0]
    assert np.ptp(v0[:3]) < 1e-12 and np.ptp(v0[3:]) < 1e-12


@pytest.mark.parametrize('norm', ['sym', None])
def test_self_loops_and_duplicates(norm):
    base = Data(edge_index=path(6), num_nodes=6)
    loops = torch.arange(6).repeat(2, 1)
    with_loops = Data(edge_index=torch.cat([base.edge_index, loops], 1), num_nodes=6)
    t = AddLapPE(k=4, normalization=norm)
    assert torch.equal(t(with_loops).lap_pe, t(base).lap_pe)  # self-loops ignored
    # duplicate edges are summed: same as weight 2 on those edges
    dup = Data(edge_index=torch.cat([base.edge_index, base.edge_index[:, :2]], 1), num_nodes=6)
    w = torch.ones(base.edge_index.size(1))
    w[:2] = 2.0
    weighted = Data(edge_index=base.edge_index, edge_weight=w, num_nodes=6)
    assert torch.equal(t(dup).lap_pe, t(weighted).lap_pe)
    assert torch.equal(t(dup).lap_eigval, t(weighted).lap_eigval)
    check_against_reference(dup, 4, norm)


def test_edge_weight_attribute_option():
    w = torch.tensor([1.0, 3.0, 1.0, 3.0, 0.5, 0.5])
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    plain = Data(edge_index=ei, num_nodes=4)
    a = AddLapPE(k=3)(Data(edge_index=ei, edge_weight=w, num_nodes=4))
    b = AddLapPE(k=3, edge_weight='w')(Data(edge_index=ei, w=w, num_nodes=4))
    c = AddLapPE(k=3, edge_weight=None)(Data(edge_index=ei, edge_weight=w, num_nodes=4))
    assert torch.equal(a.lap_pe, b.lap_pe)
    assert torch.equal(c.lap_pe, AddLapPE(k=3)(plain).lap_pe)
    assert not torch.equal(a.lap_eigval, c.lap_eigval)
    lap = ref_laplacian(ei.numpy(), 4, w.numpy(), 'sym')
    np.testing.assert_allclose(a.lap_eigval[0].numpy(), np.linalg.eigh(lap)[0][1:], atol=1e-6)


def test_directed_input_is_symmetrised():
    t = AddLapPE(k=4)
    directed = t(Data(edge_index=path(7, directed=True), num_nodes=7))
    undirected = t(Data(edge_index=path(7), num_nodes=7))
    assert torch.equal(directed.lap_pe, undirected.lap_pe)
    # one reciprocal pair with different weights is averaged: (2 + 4) / 2 = 3
    ei = torch.tensor([[0, 1, 1], [1, 0, 2]])
    vals, _ = f64(Data(edge_index=ei, edge_weight=torch.tensor([2.0, 4.0, 3.0]), num_nodes=3),
                  k=2, normalization=None)
    np.testing.assert_allclose(vals[0].numpy(), [3.0, 9.0], atol=1e-12)  # L of 3-3 path


@pytest.mark.parametrize('norm', ['sym', None])
def test_repeated_eigenvalues(norm):
    n = 10  # cycle: eigenvalues 1 - cos(2 pi j / n) (sym), each j != 0, n/2 twice
    i = torch.arange(n)
    ring = torch.stack([torch.cat([i, (i + 1) % n]), torch.cat([(i + 1) % n, i])])
    data = Data(edge_index=ring, num_nodes=n)
    vals, _vecs = check_against_reference(data, 8, norm)
    lam = np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n)) * (1 if norm == 'sym' else 2)
    np.testing.assert_allclose(vals[0], lam[1:9], atol=1e-12)
    # complete graph: one eigenvalue of multiplicity n - 1
    full = torch.combinations(torch.arange(6)).T
    data = Data(edge_index=torch.cat([full, full.flip(0)], 1), num_nodes=6)
    vals, _ = check_against_reference(data, 5, norm)
    np.testing.assert_allclose(vals[0], np.full(5, 1.2 if norm == 'sym' else 6.0), atol=1e-12)
    t = AddLapPE(k=5, normalization=norm)
    assert torch.equal(t(data).lap_pe, t(data).lap_pe)  # deterministic inside eigenspaces


# ----------------------------------------------------------------------------- sparse path
@pytest.mark.parametrize('solver', ['auto', 'shift_invert'])
def test_sparse_path_on_long_path_matches_analytic_spectrum(solver):
    n, k = 3000, 8
    data = Data(edge_index=path(n), num_nodes=n)
    j = np.arange(1, k + 1)
    for norm, lam in [(None, 2 - 2 * np.cos(np.pi * j / n)),
                      ('sym', 1 - np.cos(np.pi * j / (n - 1)))]:
        vals, vecs = f64(data, k, norm, threshold=1000, solver=solver)
        np.testing.assert_allclose(vals[0].numpy(), lam, rtol=1e-8, atol=1e-14)
        lap = ref_laplacian_sparse(path(n).numpy(), n, norm)
        v = vecs.numpy()
        assert np.abs(lap @ v - v * vals[0].numpy()).max() < 1e-10
        np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-10)
        # analytic eigenvector of the combinatorial path: cos(pi j (i + 1/2) / n)
        if norm is None:
            ref = np.cos(np.pi * 1 * (np.arange(n) + 0.5) / n)
            ref /= np.linalg.norm(ref)
            assert abs(abs(ref @ v[:, 0]) - 1) < 1e-8


def ref_laplacian_sparse(edge_index, n, norm):
    import scipy.sparse as sp
    adj = sp.coo_matrix((np.ones(edge_index.shape[1]), tuple(edge_index)), shape=(n, n)).tocsr()
    deg = np.asarray(adj.sum(1)).ravel()
    if norm == 'sym':
        d = sp.diags(1 / np.sqrt(deg))
        return sp.identity(n) - d @ adj @ d
    return sp.diags(deg) - adj


@pytest.mark.parametrize('solver', ['auto', 'shift_invert', 'lanczos'])
@pytest.mark.parametrize('norm', ['sym', None])
def test_sparse_path_with_components_matches_dense(solver, norm):
    # components: a 120-path, a random 70-node graph, a triangle, an edge, 3 isolated nodes
    gen = torch.Generator().manual_seed(1)
    rnd = torch.randint(0, 70, (2, 200), generator=gen)
    rnd = torch.cat([rnd, path(70)], 1)  # connected
    tri = torch.tensor([[0, 1, 2], [1, 2, 0]])
    parts = [(path(120), 120), (rnd, 70), (tri, 3), (torch.tensor([[0], [1]]), 2)]
    edges, off = [], 0
    for ei, n in parts:
        edges.append(ei + off)
        off += n
    n = off + 3
    perm = torch.from_numpy(np.random.default_rng(0).permutation(n))  # interleave components
    data = Data(edge_index=perm[torch.cat(edges, 1)], num_nodes=n)
    vals, _vecs = check_against_reference(data, 8, norm, tol=1e-8, threshold=50, solver=solver)
    dense_vals, _ = f64(data, 8, norm)  # the dense path (threshold 2000)
    np.testing.assert_allclose(vals, dense_vals.numpy(), atol=1e-9)


def test_lanczos_finds_every_eigenvalue_of_a_clustered_random_spectrum():
    # a random graph's small eigenvalues crowd at the bulk edge: the Lanczos tolerance must
    # not let ARPACK stop before it has found each of them
    import scipy.linalg
    n, k = 1500, 8
    gen = torch.Generator().manual_seed(3)
    ei = torch.randint(0, n, (2, 6 * n), generator=gen)
    ei = torch.cat([ei[:, ei[0] != ei[1]], path(n)], 1)  # connected, no self-loops
    data = Data(edge_index=to_undirected(ei, num_nodes=n), num_nodes=n)  # no duplicates
    vals, vecs = f64(data, k, 'sym', threshold=100, solver='lanczos')
    lap = ref_laplacian_sparse(data.edge_index.numpy(), n, 'sym')
    ref = scipy.linalg.eigh(lap.toarray(), eigvals_only=True, subset_by_index=[1, k])
    assert np.diff(ref).min() < 2e-3  # the spectrum is clustered indeed
    np.testing.assert_allclose(vals[0].numpy(), ref, rtol=0, atol=1e-10)
    v = vecs.numpy()
    assert np.abs(lap @ v - v * vals[0].numpy()).max() < 1e-8
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    graphs_ = _mixed_graphs()
    batch = Batch.from_data_list(graphs_)
    cpu = AddLapPE(k=4)(batch)
    gpu = AddLapPE(k=4)(batch.to('cuda'))
    assert gpu.lap_pe.is_cuda
    torch.testing.assert_close(gpu.lap_eigval.cpu(), cpu.lap_eigval, atol=1e-5, rtol=0)
    assert math.isfinite(float(gpu.lap_pe.abs().sum()))
