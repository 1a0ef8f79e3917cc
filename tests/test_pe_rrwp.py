import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data

from gtpe.transforms import AddRRWP
from graph_utils import permuted

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs(draw, max_nodes=12, weighted=None):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 2 * n))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    d = Data(edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1), num_nodes=n)
    if weighted if weighted is not None else draw(st.booleans()):
        d.edge_weight = torch.tensor(draw(st.lists(st.floats(0.1, 3.0), min_size=m,
                                                   max_size=m)), dtype=torch.float32)
    return d


def ref_rrwp(d, K):
    """Dense float64 reference: T[i, j] = [I, P, ..., P^(K-1)]_ij, pairs = nonzero rows."""
    n = d.num_nodes
    A = np.zeros((n, n))
    w = (d.edge_weight.double().numpy() if getattr(d, 'edge_weight', None) is not None
         else np.ones(d.edge_index.size(1)))
    np.add.at(A, (d.edge_index[0].numpy(), d.edge_index[1].numpy()), w)
    deg = A.sum(1, keepdims=True)
    P = np.divide(A, deg, out=np.zeros_like(A), where=deg > 0)
    mats, X = [np.eye(n)], np.eye(n)
    for _ in range(K - 1):
        X = X @ P
        mats.append(X)
    T = np.stack(mats, -1)
    i, j = np.nonzero((T != 0).any(-1))               # row-major = sorted by (row, col)
    return np.stack([np.diagonal(m) for m in mats], 1), np.stack([i, j]), T[i, j]


def check(out, d, K):
    diag, idx, val = ref_rrwp(d, K)
    assert out.rrwp.dtype == torch.float32 and out.rrwp_val.dtype == torch.float32
    assert out.rrwp_index.dtype == torch.long
    np.testing.assert_array_equal(out.rrwp_index.numpy(), idx)
    np.testing.assert_allclose(out.rrwp.numpy(), diag, atol=1e-6)
    np.testing.assert_allclose(out.rrwp_val.numpy(), val, atol=1e-6)


@SETTINGS
@given(graphs(), st.integers(1, 8))
def test_rrwp_matches_dense_reference(d, K):
    check(AddRRWP(K)(d.clone()), d, K)
    check(AddRRWP(K, dense_max_nodes=0)(d.clone()), d, K)      # sparse row-block path


@SETTINGS
@given(st.booleans().flatmap(lambda w: st.lists(graphs(max_nodes=20, weighted=w), min_size=1,
                                                max_size=6)))
def test_batch_equals_collated_per_graph(ds):
    t = AddRRWP(6)
    batch = t(Batch.from_data_list([d.clone() for d in ds]))
    ref = Batch.from_data_list([t(d.clone()) for d in ds])
    for key in ('rrwp', 'rrwp_index', 'rrwp_val'):
        assert torch.equal(batch[key], ref[key]), key
    for a, d in zip(batch.to_data_list(), ds):
        check(a, d, 6)


def test_edge_cases_and_known_values():
    # single node: only the identity pair
    d = AddRRWP(4)(Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=1))
    assert torch.equal(d.rrwp_index, torch.tensor([[0], [0]]))
    assert torch.equal(d.rrwp_val, torch.tensor([[1., 0, 0, 0]]))
    assert torch.equal(d.rrwp, torch.tensor([[1., 0, 0, 0]]))
    # path 0-1-2: P = [[0,1,0],[.5,0,.5],[0,1,0]]
    d = AddRRWP(3)(Data(edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=4))
    # node 3 is isolated: only (3, 3) with [1, 0, 0]
    assert d.rrwp_index.size(1) == 10
    assert torch.equal(d.rrwp_index[:, -1], torch.tensor([3, 3]))
    assert torch.allclose(d.rrwp[:3], torch.tensor([[1., 0, .5], [1, 0, 1], [1, 0, .5]]))
    k = ((d.rrwp_index[0] == 0) & (d.rrwp_index[1] == 2)).nonzero().item()
    assert torch.allclose(d.rrwp_val[k], torch.tensor([0., 0, .5]))
    # directed edge 0->1 only: (1, 0) is not a pair
    d = AddRRWP(3)(Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2))
    assert d.rrwp_index.tolist() == [[0, 0, 1], [0, 1, 1]]


def test_medium_graph_sparse_path_and_repr():
    g = torch.Generator().manual_seed(0)
    n = 140                                            # > dense_max_nodes: sparse path
    ei = torch.randint(0, n, (2, 300), generator=g)
    d = Data(edge_index=ei, num_nodes=n)
    check(AddRRWP(5)(d.clone()), d, 5)
    r = repr(AddRRWP(7, dense_max_nodes=3))
    assert 'walk_length=7' in r and 'dense_max_nodes=3' in r


def test_batch_mixing_exact_padded_and_sparse_buckets():
    # sizes <= 64 get their own dense bucket, 65..128 padded buckets, > 128 the sparse path;
    # graphs in mixed order, some disconnected (not every pair is a pair)
    g = torch.Generator().manual_seed(1)
    ds = []
    for n in (70, 5, 130, 64, 9, 100, 5, 1):
        m = max(1, n // 2)
        ei = torch.randint(0, n, (2, m), generator=g)
        ds.append(Data(edge_index=ei, num_nodes=n))
    t = AddRRWP(4)
    threads = torch.get_num_threads()
    batch = t(Batch.from_data_list([d.clone() for d in ds]))
    assert torch.get_num_threads() == threads                  # restored after the dense work
    ref = Batch.from_data_list([t(d.clone()) for d in ds])
    for key in ('rrwp', 'rrwp_index', 'rrwp_val'):
        assert torch.equal(batch[key], ref[key]), key
    for a, d in zip(batch.to_data_list(), ds):
        check(a, d, 4)


def dense_pairs(out, n, K):
    T = torch.zeros(n, n, K)
    T[out.rrwp_index[0], out.rrwp_index[1]] = out.rrwp_val
    return T


@SETTINGS
@given(graphs(max_nodes=16), st.randoms(use_true_random=False))
def test_permutation_equivariance(d, rnd):
    n, K = d.num_nodes, 6
    perm = torch.tensor(rnd.sample(range(n), n), dtype=torch.long)
    d_p = permuted(d, perm)
    for t in (AddRRWP(K), AddRRWP(K, dense_max_nodes=0)):   # dense and sparse paths
        out, out_p = t(d.clone()), t(d_p)
        np.testing.assert_allclose(out_p.rrwp.numpy(), out.rrwp[perm].numpy(), atol=1e-6)
        T, T_p = dense_pairs(out, n, K), dense_pairs(out_p, n, K)
        np.testing.assert_allclose(T_p.numpy(), T[perm][:, perm].numpy(), atol=1e-6)
        assert out_p.rrwp_index.size(1) == out.rrwp_index.size(1)  # same pair set, relabelled
