import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import AddRandomWalkPE

from gtpe.transforms import AddExpanderEdges, AddRWSE
from graph_utils import permuted

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs(draw, max_nodes=12, weighted=None):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 3 * n))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    d = Data(edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1), num_nodes=n)
    if weighted if weighted is not None else draw(st.booleans()):
        w = draw(st.lists(st.floats(0.1, 3.0), min_size=m, max_size=m))
        d.edge_weight = torch.tensor(w, dtype=torch.float32)
    return d


def dense_P(d):
    """Reference P = D^-1 A in float64 numpy (duplicates summed, zero rows stay zero)."""
    n = d.num_nodes
    A = np.zeros((n, n))
    w = (d.edge_weight.double().numpy() if getattr(d, 'edge_weight', None) is not None
         else np.ones(d.edge_index.size(1)))
    np.add.at(A, (d.edge_index[0].numpy(), d.edge_index[1].numpy()), w)
    deg = A.sum(1, keepdims=True)
    return np.divide(A, deg, out=np.zeros_like(A), where=deg > 0)


def ref_rwse(d, K):
    P = dense_P(d)
    X = np.eye(d.num_nodes)
    out = []
    for _ in range(K):
        X = X @ P
        out.append(np.diag(X).copy())
    return np.stack(out, 1) if out else np.zeros((d.num_nodes, 0))


@SETTINGS
@given(graphs())
def test_rwse_matches_dense_reference(d):
    K = 9
    ref = ref_rwse(d, K)
    out = AddRWSE(K)(d.clone()).rwse
    assert out.shape == (d.num_nodes, K) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    # the sparse exact path (used for large graphs) gives the same numbers
    out_sparse = AddRWSE(K, dense_max_nodes=0)(d.clone()).rwse
    np.testing.assert_allclose(out_sparse.numpy(), ref, atol=1e-6)


@SETTINGS
@given(st.lists(graphs(max_nodes=20, weighted=False), min_size=1, max_size=6))
def test_batch_equals_per_graph(ds):
    t = AddRWSE(7)
    batch = t(Batch.from_data_list([d.clone() for d in ds]))
    per = [t(d.clone()).rwse for d in ds]
    assert torch.allclose(batch.rwse, torch.cat(per), atol=1e-7)
    for a, b in zip(batch.to_data_list(), per):
        assert torch.allclose(a.rwse, b, atol=1e-7)


def test_matches_pyg_on_simple_undirected_graph():
    g = torch.Generator().manual_seed(1)
    n = 30
    A = (torch.rand(n, n, generator=g) < 0.15).triu(1)
    A = A | A.t()
    d = Data(edge_index=A.nonzero().t().contiguous(), num_nodes=n)
    ours = AddRWSE(20)(d.clone()).rwse
    pyg = AddRandomWalkPE(20, attr_name='pe')(d.clone()).pe
    torch.testing.assert_close(ours, pyg.float(), atol=1e-6, rtol=0)


def test_edge_cases():
    # single node without edges, isolated nodes -> zero rows
    d = AddRWSE(4)(Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=1))
    assert torch.equal(d.rwse, torch.zeros(1, 4))
    d = AddRWSE(4)(Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=4))
    assert torch.equal(d.rwse[2:], torch.zeros(2, 4))
    assert torch.allclose(d.rwse[:2], torch.tensor([[0., 1, 0, 1]] * 2))
    # a node whose only edge is a self-loop returns with probability 1
    d = AddRWSE(3)(Data(edge_index=torch.tensor([[0], [0]]), num_nodes=2))
    assert torch.allclose(d.rwse, torch.tensor([[1., 1, 1], [0, 0, 0]]))
    # duplicate edges add up: 0->1 twice, 0->2 once => P[0,1] = 2/3
    d = Data(edge_index=torch.tensor([[0, 0, 0, 1, 2], [1, 1, 2, 0, 0]]), num_nodes=3)
    assert abs(AddRWSE(2)(d).rwse[0, 1].item() - 1.0) < 1e-6      # always back after 2
    assert abs(AddRWSE(2)(d).rwse[1, 1].item() - 2 / 3) < 1e-6
    # directed cycle of length 3: returns exactly at t = 3, 6, ...
    d = AddRWSE(6)(Data(edge_index=torch.tensor([[0, 1, 2], [1, 2, 0]]), num_nodes=3))
    assert torch.allclose(d.rwse, torch.tensor([[0., 0, 1, 0, 0, 1]] * 3))
    # disconnected: two components computed independently
    ei = torch.tensor([[0, 1, 2, 3, 3, 4, 4, 2], [1, 0, 3, 2, 4, 3, 2, 4]])
    d = AddRWSE(2)(Data(edge_index=ei, num_nodes=5))
    assert torch.allclose(d.rwse[:2, 1], torch.ones(2))
    assert torch.allclose(d.rwse[2:, 1], torch.full((3,), 0.5))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        AddRWSE(0)
    with pytest.raises(ValueError):
        AddRWSE(4, method='bogus')
    d = Data(edge_index=torch.tensor([[0], [1]]), edge_weight=torch.tensor([-1.0]), num_nodes=2)
    with pytest.raises(ValueError, match='non-negative'):
        AddRWSE(4)(d)
    r = repr(AddRWSE(5, method='mc', num_walks=7, seed=3))
    for s in ('walk_length=5', "method='mc'", 'num_walks=7', 'seed=3', 'exact_max_nodes'):
        assert s in r


def _regular_graph(n, degree, seed):
    e = AddExpanderEdges(degree, seed=seed, max_retries=1)(Data(num_nodes=n)).expander_index
    return Data(edge_index=e, num_nodes=n)


def test_sparse_exact_on_medium_graph():
    # directed + weighted medium graph through the sparse propagation path
    g = torch.Generator().manual_seed(0)
    n = 150
    ei = torch.randint(0, n, (2, 600), generator=g)
    d = Data(edge_index=ei, edge_weight=torch.rand(600, generator=g) + 0.1, num_nodes=n)
    np.testing.assert_allclose(AddRWSE(8, dense_max_nodes=16)(d.clone()).rwse.numpy(),
                               ref_rwse(d, 8), atol=1e-6)
    # symmetric graph: the halving trick (diag S^{2s} = ||S^s e_i||^2)
    d = _regular_graph(200, 3, 0)
    np.testing.assert_allclose(AddRWSE(9, dense_max_nodes=16)(d.clone()).rwse.numpy(),
                               ref_rwse(d, 9), atol=1e-6)


def test_monte_carlo_estimator_error():
    """MC estimate vs exact on a 1,000-node 10-regular (multi)graph.

    Every estimate is a mean of W iid terms P[X_{t-1}, i] in [0, c], c = max_j P_ji <= 2/10
    (multi-edges of the permutation graph have multiplicity <= 2 with overwhelming
    probability; we compute c exactly).  Hoeffding: P(|err| > c sqrt(ln(2/delta) / (2W)))
    <= delta; with delta = 1e-9 a union bound over 1,000 x 12 entries fails with prob.
    < 1.2e-5.  The mean abs error is bounded by the standard deviation c / (2 sqrt(W))
    (Popoviciu) in expectation; we allow 1.5x that.  The signed mean over nodes is unbiased
    with sd <= c / (2 sqrt(W n)); we allow 8 sd.  t = 1 is exact (Rao-Blackwellised)."""
    n, W, K = 1000, 64, 12
    d = _regular_graph(n, 5, 1)
    exact = torch.from_numpy(ref_rwse(d, K))
    est = AddRWSE(K, method='mc', num_walks=W, seed=0)(d.clone()).rwse.double()
    P = dense_P(d)
    c = P.max()
    err = est - exact
    assert err[:, 0].abs().max() < 1e-6
    assert err.abs().max() <= c * math.sqrt(math.log(2 / 1e-9) / (2 * W))
    assert err.abs().mean() <= 1.5 * c / (2 * math.sqrt(W))
    assert err.mean(0).abs().max() <= 8 * c / (2 * math.sqrt(W * n))
    # deterministic given the seed; a Batch equals the per-graph results
    est2 = AddRWSE(K, method='mc', num_walks=W, seed=0)(d.clone()).rwse
    assert torch.equal(est2, est.float())
    small = _regular_graph(60, 2, 2)
    t = AddRWSE(K, method='mc', num_walks=8, seed=5)
    b = t(Batch.from_data_list([small, d]))
    assert torch.equal(b.rwse, torch.cat([t(small.clone()).rwse, t(d.clone()).rwse]))
    assert not torch.equal(AddRWSE(K, method='mc', num_walks=8, seed=6)(small.clone()).rwse,
                           t(small.clone()).rwse)


def test_mc_handles_dangling_and_weights():
    # directed path 0->1->2 (2 has no out-edges) plus weighted 2-cycle 3<->4
    d = Data(edge_index=torch.tensor([[0, 1, 3, 3, 4], [1, 2, 4, 3, 3]]),
             edge_weight=torch.tensor([1., 1., 3., 1., 2.]), num_nodes=5)
    est = AddRWSE(6, method='mc', num_walks=4000, seed=0)(d.clone()).rwse
    exact = torch.from_numpy(ref_rwse(d, 6)).float()
    assert torch.equal(est[:3], torch.zeros(3, 6))
    assert (est - exact).abs().max() < 0.05


def test_auto_selects_mc_above_threshold():
    d = _regular_graph(300, 3, 3)
    t = AddRWSE(6, exact_max_nodes=100, num_walks=16)
    assert torch.equal(t(d.clone()).rwse,
                       AddRWSE(6, method='mc', num_walks=16)(d.clone()).rwse)
    t = AddRWSE(6, exact_max_nodes=1000)
    assert [t._graph_method(n) for n in (20, 500, 2000)] == ['dense', 'exact', 'mc']
    assert AddRWSE(6, method='exact')._graph_method(10 ** 6) == 'exact'


@SETTINGS
@given(graphs(max_nodes=16), st.randoms(use_true_random=False))
def test_permutation_equivariance(d, rnd):
    perm = torch.tensor(rnd.sample(range(d.num_nodes), d.num_nodes), dtype=torch.long)
    for t in (AddRWSE(7), AddRWSE(7, dense_max_nodes=0)):   # dense and sparse exact paths
        out, out_p = t(d.clone()).rwse, t(permuted(d, perm)).rwse
        np.testing.assert_allclose(out_p.numpy(), out[perm].numpy(), atol=1e-6)


def ref_rwse_undirected(d, K):
    """Reference of ``undirected=True``: A^s = (A + A^T)/2 where both directions exist, else
    A + A^T (zero-weight edges absent), then the walk on A^s."""
    n = d.num_nodes
    A = np.zeros((n, n))
    w = (d.edge_weight.double().numpy() if getattr(d, 'edge_weight', None) is not None
         else np.ones(d.edge_index.size(1)))
    np.add.at(A, (d.edge_index[0].numpy(), d.edge_index[1].numpy()), w)
    S = A + A.T
    S = np.where((A > 0) & (A.T > 0), S / 2, S)
    deg = S.sum(1, keepdims=True)
    P = np.divide(S, deg, out=np.zeros_like(S), where=deg > 0)
    X, out = np.eye(n), []
    for _ in range(K):
        X = X @ P
        out.append(np.diag(X).copy())
    return np.stack(out, 1)


@SETTINGS
@given(graphs())
def test_undirected_matches_dense_reference(d):
    K = 7
    ref = ref_rwse_undirected(d, K)
    np.testing.assert_allclose(AddRWSE(K, undirected=True)(d.clone()).rwse.numpy(), ref,
                               atol=1e-6)
    big = AddRWSE(K, undirected=True, dense_max_nodes=0)(d.clone()).rwse  # sparse exact path
    np.testing.assert_allclose(big.numpy(), ref, atol=1e-6)


def test_undirected_on_dag_and_symmetric_input():
    # a directed path never returns: the directed encoding is zero, the undirected one is not
    path = Data(edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]), num_nodes=4)
    assert AddRWSE(4)(path.clone()).rwse.abs().sum() == 0
    und = AddRWSE(4, undirected=True)(path.clone()).rwse
    sym = Data(edge_index=torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]), num_nodes=4)
    assert torch.equal(und, AddRWSE(4)(sym.clone()).rwse)
    # an undirected input is left unchanged
    assert torch.equal(AddRWSE(4, undirected=True)(sym.clone()).rwse, AddRWSE(4)(sym.clone()).rwse)
    # in a Batch, at any position, each graph gets its own numbers
    b = Batch.from_data_list([sym, path, path])
    out = AddRWSE(4, undirected=True)(b).rwse
    assert torch.equal(out[4:8], und) and torch.equal(out[8:], und)
    assert 'undirected=True' in repr(AddRWSE(4, undirected=True))
    assert 'undirected' not in repr(AddRWSE(4))
    with pytest.raises(ValueError, match='undirected must be a bool'):
        AddRWSE(4, undirected=1)
