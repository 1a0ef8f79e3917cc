import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data

from gtpe.transforms import AddExpanderEdges
from gtpe.transforms.expander import _mix32, ramanujan_bound

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def graph(n, m=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Data(edge_index=torch.randint(0, max(n, 1), (2, m), generator=g), num_nodes=n)


def adjacency(e, n):
    A = torch.zeros(n, n, dtype=torch.float64)
    A.index_put_((e[0], e[1]), torch.ones(e.size(1), dtype=torch.float64), accumulate=True)
    return A


@SETTINGS
@given(st.integers(1, 60), st.integers(1, 4), st.integers(0, 2 ** 40))
def test_regular_symmetric_and_spectral_gap(n, degree, seed):
    t = AddExpanderEdges(degree, seed=seed)
    e = t(graph(n, 2 * n, seed % 97)).expander_index
    assert e.dtype == torch.long
    A = adjacency(e, n)
    assert torch.equal(A, A.t())                                 # both directions
    key = e[0] * n + e[1]
    assert torch.equal(key, key.sort().values)                   # sorted by (row, col)
    if n > 2 * degree + 1:
        assert e.size(1) == 2 * degree * n
        assert torch.equal(A.sum(1), torch.full((n,), 2.0 * degree))   # 2d-regular
        ev = torch.linalg.eigvalsh(A)
        assert abs(ev[-1].item() - 2 * degree) < 1e-9
        second = max(abs(ev[0].item()), abs(ev[-2].item()))
        if degree >= 2:                                           # d = 1: cycles only
            assert second <= t.threshold + 1e-9                  # near-Ramanujan
            assert second < 2 * degree - 1e-6                     # connected, non-bipartite
    else:                                                         # tiny: complete graph
        assert torch.equal(A, 1 - torch.eye(n, dtype=torch.float64))


@SETTINGS
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(0, 1000))
def test_batch_equals_per_graph_and_no_cross_edges(sizes, seed):
    ds = [graph(n, n, i) for i, n in enumerate(sizes)]
    t = AddExpanderEdges(3, seed=seed)
    b = t(Batch.from_data_list([d.clone() for d in ds]))
    ref = Batch.from_data_list([t(d.clone()) for d in ds])
    assert torch.equal(b.expander_index, ref.expander_index)
    gb = b.batch
    assert torch.equal(gb[b.expander_index[0]], gb[b.expander_index[1]])
    for a, r in zip(b.to_data_list(), ds):
        assert torch.equal(a.expander_index, t(r.clone()).expander_index)


def test_seed_reproducibility():
    d = graph(50, 100)
    a = AddExpanderEdges(3, seed=7)(d.clone()).expander_index
    b = AddExpanderEdges(3, seed=7)(d.clone()).expander_index
    c = AddExpanderEdges(3, seed=8)(d.clone()).expander_index
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a different graph structure of the same size gets a different overlay
    e = AddExpanderEdges(3, seed=7)(graph(50, 100, seed=1)).expander_index
    assert not torch.equal(a, e)
    # pinned values: the hash is pure integer arithmetic (same output on every device)
    h = _mix32(torch.tensor([0, 1, 2 ** 32 - 1, 123456789]))
    assert h.tolist() == [_py_lowbias32(x) for x in (0, 1, 2 ** 32 - 1, 123456789)]


def _py_lowbias32(x):
    M = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M
    x ^= x >> 15
    x = (x * 0x846CA68B) & M
    x ^= x >> 16
    return x


def test_edge_cases_and_errors():
    assert AddExpanderEdges(3)(graph(1)).expander_index.shape == (2, 0)
    assert AddExpanderEdges(3)(graph(2)).expander_index.tolist() == [[0, 1], [1, 0]]
    assert AddExpanderEdges(3)(graph(0)).expander_index.shape == (2, 0)
    with pytest.raises(ValueError):
        AddExpanderEdges(0)
    r = repr(AddExpanderEdges(2, seed=5, tol=0.25))
    for s in ('degree=2', 'seed=5', 'tol=0.25', 'max_retries='):
        assert s in r
    assert math.isclose(ramanujan_bound(3), 2 * math.sqrt(5))


def test_large_graph_sparse_spectral_check():
    n = 700                                             # > dense_check_nodes: ARPACK
    t = AddExpanderEdges(3, seed=1, dense_check_nodes=100)
    e = t(graph(n)).expander_index
    A = adjacency(e, n)
    ev = torch.linalg.eigvalsh(A)
    assert max(abs(ev[0].item()), abs(ev[-2].item())) <= t.threshold
    assert torch.equal(t(graph(n)).expander_index, e)


def test_graphs_above_check_max_nodes_keep_their_first_draw_unchecked(monkeypatch):
    big, small = graph(60, 100, seed=1), graph(30, 40, seed=2)
    checked = AddExpanderEdges(3, seed=4, check_max_nodes=100)
    ref_big = checked(big.clone()).expander_index  # a checked run, for comparison
    # its first draw passed the check: the unchecked transform must give the same
    assert checked._second_eig(ref_big, torch.tensor([0]), torch.tensor([0, 60]),
                               torch.zeros(60, dtype=torch.long))[0] <= checked.threshold
    t = AddExpanderEdges(3, seed=4, check_max_nodes=50)
    assert repr(t).endswith('dense_check_nodes=512, check_max_nodes=50)')
    seen = []
    orig = AddExpanderEdges._second_eig

    def spy(self, edges, gids, ptr, nb):
        seen.append((ptr[1:] - ptr[:-1])[gids].tolist())
        return orig(self, edges, gids, ptr, nb)

    monkeypatch.setattr(AddExpanderEdges, '_second_eig', spy)
    out = t(big.clone()).expander_index
    assert seen == []  # the 60-node graph is not checked
    A = adjacency(out, 60)
    assert (A.sum(1) == 6).all() and torch.equal(A, A.T)
    assert torch.equal(out, ref_big)
    b = t(Batch.from_data_list([small.clone(), big.clone()]))  # only the small one is checked
    assert seen and all(s == [30] for s in seen), seen
    alone = [t(small.clone()).expander_index, out + 30]
    assert torch.equal(b.expander_index, torch.cat(alone, 1))
