"""AddMagLapPE against a dense complex128 numpy reference (gtpe.transforms.maglap)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data

from gtpe.transforms._eigen import LaplacianSpec, canonicalize, spectral_pe
from gtpe.transforms.lap import AddLapPE
from gtpe.transforms.maglap import AddMagLapPE
from graph_utils import permuted

SETTINGS = {'max_examples': 25, 'deadline': None,
                'suppress_health_check': [HealthCheck.too_slow, HealthCheck.data_too_large]}


def ref_magnetic_laplacian(edge_index, n, q, q_absolute=False, weight=None):
    """Dense complex128 magnetic Laplacian (Geisler et al. 2023), independent of gtpe."""
    ei = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    w = np.ones(ei.shape[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    adj = np.zeros((n, n))
    for (u, v), x in zip(ei.T, w):
        if u != v and x > 0:
            adj[u, v] += x
    pat = (adj > 0).astype(float)
    if not q_absolute:
        m = ((pat > 0) & (pat.T == 0)).sum()  # non-reciprocal edges
        q = q / max(min(m, n), 1)
    sym = np.where((pat > 0) & (pat.T > 0), (adj + adj.T) / 2, adj + adj.T)
    deg = sym.sum(1)
    dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    herm = dinv[:, None] * sym * dinv[None, :] * np.exp(2j * np.pi * q * (pat - pat.T))
    return np.eye(n) - herm


def f64(data, k=8, q=0.25, q_absolute=False, threshold=2000, solver='auto'):
    spec = LaplacianSpec('sym', q=q, q_absolute=q_absolute)
    return spectral_pe(data, spec, k, 0, 'edge_weight', threshold, solver)


def clusters(vals, tol=1e-6):
    groups, start = [], 0
    for i in range(1, len(vals) + 1):
        if i == len(vals) or vals[i] - vals[i - 1] > tol:
            groups.append(list(range(start, i)))
            start = i
    return groups


def check_against_reference(data, k, q, q_absolute=False, tol=1e-9, **kw):
    n = data.num_nodes
    w = getattr(data, 'edge_weight', None)
    lap = ref_magnetic_laplacian(data.edge_index.numpy(), n, q, q_absolute,
                                 None if w is None else w.numpy())
    np.testing.assert_allclose(lap, lap.conj().T, atol=1e-15)  # Hermitian
    ref_vals, ref_vecs = np.linalg.eigh(lap)
    vals, vecs = f64(data, k, q, q_absolute, **kw)
    vals, vecs = vals.numpy(), vecs.numpy()
    m = min(k, n)
    expect = np.zeros(k)
    expect[:m] = np.clip(ref_vals[:m], 0, None)
    np.testing.assert_allclose(vals, np.broadcast_to(expect, (n, k)), atol=tol)
    v = vecs[:, :m]
    assert np.abs(lap @ v - v * vals[0, :m]).max(initial=0) < 10 * tol  # Hermitian residual
    np.testing.assert_allclose(v.conj().T @ v, np.eye(m), atol=10 * tol)
    assert np.all(vecs[:, m:] == 0) and np.all(vals[:, m:] == 0)
    for group in clusters(ref_vals):
        if group[-1] >= m:
            continue
        ours = v[:, group] @ v[:, group].conj().T
        theirs = ref_vecs[:, group] @ ref_vecs[:, group].conj().T
        np.testing.assert_allclose(ours, theirs, atol=1e-7)
    return vals, vecs


@st.composite
def digraphs(draw, max_nodes=20):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 3 * n))
    row = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    col = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    return Data(edge_index=torch.tensor([row, col], dtype=torch.long).view(2, -1), num_nodes=n)


def dicycle(n):
    i = torch.arange(n)
    return torch.stack([i, (i + 1) % n])


# ----------------------------------------------------------------------------- API
def test_repr_and_output_format():
    t = AddMagLapPE(k=3, q=0.1, q_absolute=True)
    assert repr(t) == ("AddMagLapPE(k=3, q=0.1, q_absolute=True, edge_weight='edge_weight', "
                       "sparse_threshold=2000, sparse_solver='auto')")
    out = t(Data(edge_index=dicycle(5), num_nodes=5))
    assert out.maglap_pe.shape == (5, 3, 2) and out.maglap_pe.dtype == torch.float32
    assert out.maglap_eigval.shape == (5, 3) and out.maglap_eigval.dtype == torch.float32


@pytest.mark.parametrize('kwargs', [{'k': 0}, {'q': -0.1}, {'q': float('nan')},
                                    {'q_absolute': 1}, {'sparse_solver': 'x'}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        AddMagLapPE(**kwargs)


# ----------------------------------------------------------------------------- reference
@settings(**SETTINGS)
@given(data=digraphs(), k=st.integers(1, 10), q=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
       q_absolute=st.booleans())
def test_random_digraphs_match_dense_reference(data, k, q, q_absolute):
    check_against_reference(data, k, q, q_absolute)
    out = AddMagLapPE(k=k, q=q, q_absolute=q_absolute)(data)
    vals, vecs = f64(data, k, q, q_absolute)
    assert torch.equal(out.maglap_pe, torch.view_as_real(vecs).float())
    assert torch.equal(out.maglap_eigval, vals.float())


@settings(**SETTINGS)
@given(data=digraphs(max_nodes=14), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_permutation_equivariance(data, k, seed):
    n = data.num_nodes
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    vals, vecs = f64(data, k)
    pvals, pvecs = f64(permuted(data, perm), k)
    np.testing.assert_allclose(pvals.numpy(), vals[perm].numpy(), atol=1e-9)
    v, pv = vecs[perm].numpy(), pvecs.numpy()
    ref_vals = np.linalg.eigvalsh(ref_magnetic_laplacian(data.edge_index.numpy(), n, 0.25))
    for group in clusters(ref_vals):
        if group[-1] >= min(k, n):
            continue
        np.testing.assert_allclose(pv[:, group] @ pv[:, group].conj().T,
                                   v[:, group] @ v[:, group].conj().T, atol=1e-7)
        if len(group) == 1:  # simple eigenvalue, unambiguous pivot: identical vectors
            a = np.sort(np.abs(v[:, group[0]]))[::-1]
            if n == 1 or a[0] - a[1] > 1e-3 * a[0]:
                np.testing.assert_allclose(pv[:, group[0]], v[:, group[0]], atol=1e-7)


def test_directed_cycle_analytic_spectrum():
    # L = I - (e^{i theta} S + e^{-i theta} S^T) / 2: eigenvalues 1 - cos(2 pi j / n + theta)
    n, q = 12, 0.1
    vals, vecs = check_against_reference(Data(edge_index=dicycle(n), num_nodes=n), n, q, True)
    expect = np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n + 2 * np.pi * q))
    np.testing.assert_allclose(vals[0], expect, atol=1e-12)
    # every eigenvector of the cycle has constant modulus; the pivot (node 0) is real positive
    np.testing.assert_allclose(np.abs(vecs), 1 / np.sqrt(n), atol=1e-12)
    np.testing.assert_allclose(vecs[0], 1 / np.sqrt(n), atol=1e-12)
    # a directed cycle is not gauge-equivalent to the undirected one for q > 0
    lap_vals = AddLapPE(k=2)(Data(edge_index=dicycle(n), num_nodes=n)).lap_eigval[0]
    assert abs(vals[0, 0] - 0.0) > 1e-3 and abs(float(lap_vals[0]) - 1 + np.cos(2 * np.pi / n)) < 1e-6


# ----------------------------------------------------------------------------- q
def test_q_zero_reduces_to_sym_lap_pe():
    gen = torch.Generator().manual_seed(3)
    for n in [5, 9, 16, 25]:
        data = Data(edge_index=torch.randint(0, n, (2, 2 * n), generator=gen), num_nodes=n)
        k = 6
        mag = AddMagLapPE(k=k + 1, q=0.0)(data)
        lap = AddLapPE(k=k, normalization='sym')(data)
        torch.testing.assert_close(mag.maglap_eigval[:, 1:], lap.lap_eigval, atol=1e-6, rtol=0)
        assert mag.maglap_pe[..., 1].abs().max() < 1e-6  # purely real
        lam = lap.lap_eigval[0].double().numpy()
        ref = ref_magnetic_laplacian(data.edge_index.numpy(), n, 0.0)
        for group in clusters(np.linalg.eigvalsh(ref)):
            cols = [g - 1 for g in group if 1 <= g <= k]
            if len(cols) != len(group) or cols[-1] >= n - 1:
                continue
            a = mag.maglap_pe[:, [c + 1 for c in cols], 0].double()
            b = lap.lap_pe[:, cols].double()
            torch.testing.assert_close(a @ a.T, b @ b.T, atol=1e-5, rtol=0)
            if len(cols) == 1:  # same sign rule: the very same vector
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert lam.shape == (k,)


@pytest.mark.parametrize('graph', ['cycle', 'bipartite', 'disconnected'])
def test_q_zero_keeps_the_trivial_eigenvector(graph):
    # AddMagLapPE(q=0) is not AddLapPE column for column: its column 0 is the trivial
    # eigenvector D^{1/2} 1 / sqrt(vol) (eigenvalue 0); LapPE('sym')'s columns follow it, the
    # very same vectors also inside repeated eigenvalues (11-cycle: pairs; K_{2,4}: 1 four
    # times; N = 6 <= k pads one column in both; triangle + P4: the zero eigenvalue twice)
    if graph == 'cycle':
        ei, n = dicycle(11), 11
    elif graph == 'bipartite':
        ei, n = torch.cartesian_prod(torch.arange(2), torch.arange(2, 6)).T, 6
    else:
        ei, n = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 6]]), 7
    data = Data(edge_index=torch.cat([ei, ei.flip(0)], 1), num_nodes=n)
    k = 6
    mag = AddMagLapPE(k=k + 1, q=0.0)(data)
    lap = AddLapPE(k=k, normalization='sym')(data)
    deg = torch.bincount(data.edge_index[0], minlength=n).double()
    col0 = mag.maglap_pe[:, 0, 0].double()
    comp = col0.abs() > 1e-6  # one connected component
    assert comp.sum() == (3 if graph == 'disconnected' else n)
    torch.testing.assert_close(col0[comp], (deg[comp] / deg[comp].sum()).sqrt(),
                               atol=1e-6, rtol=0)
    assert torch.all(mag.maglap_eigval[:, 0].abs() < 1e-6)
    assert mag.maglap_pe[..., 1].abs().max() < 1e-6  # real
    torch.testing.assert_close(mag.maglap_pe[:, 1:, 0], lap.lap_pe, atol=1e-6, rtol=0)
    torch.testing.assert_close(mag.maglap_eigval[:, 1:], lap.lap_eigval, atol=1e-6, rtol=0)
    ref = np.linalg.eigvalsh(ref_magnetic_laplacian(data.edge_index.numpy(), n, 0.0))
    assert np.diff(ref[:k + 1]).min() < 1e-9  # repeated eigenvalues are compared too


def test_undirected_graph_is_real_for_any_q():
    i = torch.arange(7)
    und = torch.stack([torch.cat([i[:-1], i[1:]]), torch.cat([i[1:], i[:-1]])])
    out = AddMagLapPE(k=4, q=0.4, q_absolute=True)(Data(edge_index=und, num_nodes=7))
    assert torch.all(out.maglap_pe[..., 1] == 0)


def test_relative_vs_absolute_q():
    # 2 non-reciprocal edges (0->1, 1->2), one reciprocal pair (2<->3), 5 nodes
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 2, 0]])  # 4->0 makes m = 3
    data = Data(edge_index=ei, num_nodes=5)
    rel = AddMagLapPE(k=5, q=0.25)(data)
    ab = AddMagLapPE(k=5, q=0.25 / 3, q_absolute=True)(data)
    assert torch.equal(rel.maglap_pe, ab.maglap_pe)
    assert torch.equal(rel.maglap_eigval, ab.maglap_eigval)
    check_against_reference(data, 5, 0.25, False)
    # m is capped at N: a tournament on 5 nodes has 10 non-reciprocal edges -> q / 5
    tour = torch.combinations(torch.arange(5)).T
    data = Data(edge_index=tour, num_nodes=5)
    rel = AddMagLapPE(k=5, q=0.25)(data)
    ab = AddMagLapPE(k=5, q=0.05, q_absolute=True)(data)
    assert torch.equal(rel.maglap_pe, ab.maglap_pe)
    assert not torch.equal(rel.maglap_pe, AddMagLapPE(k=5, q=0.25, q_absolute=True)(data).maglap_pe)


def test_phase_canonicalisation():
    n = 9
    data = Data(edge_index=torch.cat([dicycle(n), torch.tensor([[0, 4], [4, 7]])], 1),
                num_nodes=n)
    _, vecs = f64(data, k=n, q=0.3, q_absolute=True)
    # pivot (first entry with maximal modulus) is real and positive
    for j in range(n):
        col = vecs[:, j]
        top = col.abs().max()
        p = int(torch.nonzero(col.abs() >= top * (1 - 1e-6))[0])
        assert col[p].imag == 0 and col[p].real > 0
    # invariance: any unit phase per column gives back the same vectors
    phases = torch.polar(torch.ones(n, dtype=torch.float64),
                         torch.linspace(-3, 3, n, dtype=torch.float64))
    torch.testing.assert_close(canonicalize(vecs * phases), vecs, atol=1e-14, rtol=0)


# ----------------------------------------------------------------------------- edge cases
def test_padding_single_node_and_no_edges():
    out = AddMagLapPE(k=4)(Data(edge_index=dicycle(3), num_nodes=3))
    assert torch.all(out.maglap_pe[:, 3:] == 0) and torch.all(out.maglap_eigval[:, 3:] == 0)
    assert torch.all(out.maglap_pe[:, :3].abs().sum((0, 2)) > 0)
    out = AddMagLapPE(k=2)(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=1))
    assert torch.equal(out.maglap_pe, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    assert torch.equal(out.maglap_eigval, torch.tensor([[1.0, 0.0]]))  # isolated: L_ii = 1
    data = Data(edge_index=torch.tensor([[0, 0, 1], [0, 1, 1]]), num_nodes=4)  # loops, isolated
    vals, _ = check_against_reference(data, 4, 0.25)
    np.testing.assert_allclose(vals[0], [0, 1, 1, 2], atol=1e-12)


def test_duplicates_and_weights():
    base = dicycle(6)
    dup = Data(edge_index=torch.cat([base, base[:, :1]], 1), num_nodes=6)
    w = torch.ones(6)
    w[0] = 2
    weighted = Data(edge_index=base, edge_weight=w, num_nodes=6)
    t = AddMagLapPE(k=4, q=0.2)
    assert torch.equal(t(dup).maglap_pe, t(weighted).maglap_pe)
    check_against_reference(weighted, 4, 0.2)


def test_batch_equals_per_graph_and_determinism():
    gen = torch.Generator().manual_seed(0)
    graphs = [Data(edge_index=torch.randint(0, n, (2, 2 * n), generator=gen), num_nodes=n)
              for n in [1, 2, 4, 7, 9, 16, 33, 40, 70]]
    graphs.append(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=3))
    t = AddMagLapPE(k=8, q=0.25)
    batched = t(Batch.from_data_list(graphs))
    single = [t(g) for g in graphs]
    assert torch.equal(batched.maglap_pe, torch.cat([s.maglap_pe for s in single]))
    assert torch.equal(batched.maglap_eigval, torch.cat([s.maglap_eigval for s in single]))
    again = t(Batch.from_data_list(graphs))
    assert torch.equal(batched.maglap_pe, again.maglap_pe)


def test_batch_to_data_list_keeps_the_encoding():
    # N < k (padded columns), a directed cycle, repeated eigenvalues, one node, no edges
    graphs = [Data(edge_index=dicycle(3), num_nodes=3), Data(edge_index=dicycle(13), num_nodes=13),
              Data(edge_index=torch.cat([dicycle(5), dicycle(5).flip(0)], 1), num_nodes=5),
              Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=1),
              Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=4)]
    t = AddMagLapPE(k=4, q=0.25)
    batch = t(Batch.from_data_list(graphs))
    assert batch.maglap_pe.shape == (26, 4, 2)
    parts = batch.to_data_list()
    assert len(parts) == len(graphs)
    for g, part in zip(graphs, parts):
        ref = t(g)
        assert part.maglap_pe.shape == ref.maglap_pe.shape == (g.num_nodes, 4, 2)
        assert part.maglap_eigval.shape == ref.maglap_eigval.shape == (g.num_nodes, 4)
        torch.testing.assert_close(part.maglap_pe, ref.maglap_pe, atol=1e-6, rtol=0)
        torch.testing.assert_close(part.maglap_eigval, ref.maglap_eigval, atol=1e-6, rtol=0)
    assert torch.all(parts[0].maglap_pe[:, 3:] == 0)
    assert torch.all(parts[0].maglap_eigval[:, 3:] == 0)
    assert torch.equal(batch[1].maglap_pe, parts[1].maglap_pe)


@pytest.mark.parametrize('solver', ['auto', 'shift_invert', 'lanczos'])
def test_sparse_path_matches_reference(solver):
    # directed cycle of 150 (analytic spectrum) + a random directed 60-node part + isolated
    n1, n2 = 150, 60
    gen = torch.Generator().manual_seed(2)
    rnd = torch.cat([torch.randint(0, n2, (2, 150), generator=gen), dicycle(n2)], 1) + n1
    data = Data(edge_index=torch.cat([dicycle(n1), rnd], 1), num_nodes=n1 + n2 + 2)
    check_against_reference(data, 6, 0.25, tol=1e-8, threshold=50, solver=solver)
    dense_vals, _ = f64(data, 6, 0.25)
    sparse_vals, _ = f64(data, 6, 0.25, threshold=50, solver=solver)
    torch.testing.assert_close(sparse_vals, dense_vals, atol=1e-9, rtol=0)
