"""AddSPD (Graphormer's spatial and centrality encodings) against networkx."""
import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data

from gtpe.transforms import AddRRWP, AddSPD, precompute
from gtpe.transforms.spd import _sparse_spd
from graph_utils import permuted

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs(draw, max_nodes=14):
    """Random multigraphs: directed edges, duplicates, self-loops, isolated nodes."""
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 2 * n))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    return Data(edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1), num_nodes=n)


def random_graph(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return Data(edge_index=torch.randint(0, n, (2, m), generator=g), num_nodes=n)


def nx_graph(d, directed):
    G = nx.DiGraph() if directed else nx.Graph()
    G.add_nodes_from(range(d.num_nodes))
    G.add_edges_from(d.edge_index.t().tolist())
    G.remove_edges_from(list(nx.selfloop_edges(G)))
    return G


def reference(d, max_dist, directed):
    """networkx: (pairs [2, M] sorted by (source, target), distances [M], in/out degree)."""
    G = nx_graph(d, directed)
    pairs, dist = [], []
    for i in range(d.num_nodes):
        lengths = nx.single_source_shortest_path_length(G, i, cutoff=max_dist)
        for j in sorted(lengths):
            pairs.append((i, j))
            dist.append(lengths[j])
    idx = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    if directed:
        ind = [G.in_degree(i) for i in range(d.num_nodes)]
        outd = [G.out_degree(i) for i in range(d.num_nodes)]
    else:
        ind = outd = [G.degree(i) for i in range(d.num_nodes)]
    return idx, np.array(dist, dtype=np.int64), np.array(ind), np.array(outd)


def check(out, d, max_dist, directed):
    idx, dist, ind, outd = reference(d, max_dist, directed)
    for key in ('spd_index', 'spd_val', 'in_degree', 'out_degree'):
        assert out[key].dtype == torch.long, key
    np.testing.assert_array_equal(out.spd_index.numpy().reshape(2, -1), idx)
    np.testing.assert_array_equal(out.spd_val.numpy(), dist)
    np.testing.assert_array_equal(out.in_degree.numpy(), ind)
    np.testing.assert_array_equal(out.out_degree.numpy(), outd)


@SETTINGS
@given(graphs(), st.integers(1, 6), st.booleans())
def test_matches_networkx_on_random_graphs(d, max_dist, directed):
    check(AddSPD(max_dist, directed)(d.clone()), d, max_dist, directed)
    check(AddSPD(max_dist, directed, dense_max_nodes=0)(d.clone()), d, max_dist, directed)


def test_disconnected_graph_has_no_pairs_across_components():
    # two triangles (0-1-2, 3-4-5), a path 6-7-8 and an isolated node 9
    und = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (6, 7), (7, 8)]
    ei = torch.tensor(und + [(b, a) for a, b in und]).t()
    d = Data(edge_index=ei, num_nodes=10)
    comp = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    for t in (AddSPD(4), AddSPD(4, dense_max_nodes=0)):
        out = t(d.clone())
        check(out, d, 4, False)
        assert torch.equal(comp[out.spd_index[0]], comp[out.spd_index[1]])
        assert out.spd_index.size(1) == 9 + 9 + 9 + 1
        assert int(out.spd_val.max()) == 2                       # 6 -> 8
        assert out.in_degree.tolist() == [2, 2, 2, 2, 2, 2, 1, 2, 1, 0]


def test_directed_paths_follow_edge_directions():
    # 0 -> 1 -> 2 -> 3 and 3 -> 1: from 3, node 2 is 2 steps away; nothing reaches 0
    d = Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 1]]), num_nodes=4)
    out = AddSPD(5, directed=True)(d.clone())
    got = {(i, j): v for (i, j), v in zip(out.spd_index.t().tolist(), out.spd_val.tolist())}
    assert got == {(0, 0): 0, (0, 1): 1, (0, 2): 2, (0, 3): 3, (1, 1): 0, (1, 2): 1,
                   (1, 3): 2, (2, 1): 2, (2, 2): 0, (2, 3): 1, (3, 1): 1, (3, 2): 2,
                   (3, 3): 0}
    assert out.in_degree.tolist() == [0, 2, 1, 1]
    assert out.out_degree.tolist() == [1, 1, 1, 1]
    check(out, d, 5, True)
    # directed=False: the symmetrised graph (0-1, 1-2, 2-3, 3-1), symmetric distances
    und = AddSPD(5)(d.clone())
    check(und, d, 5, False)
    D = torch.full((4, 4), -1)
    D[und.spd_index[0], und.spd_index[1]] = und.spd_val
    assert torch.equal(D, D.t()) and int(D[0, 3]) == 2 and bool((D >= 0).all())
    assert torch.equal(und.in_degree, und.out_degree) and und.in_degree.tolist() == [1, 3, 2, 2]


@SETTINGS
@given(graphs(max_nodes=12), st.integers(1, 5))
def test_undirected_input_gives_the_same_result_either_way(d, max_dist):
    ei = torch.cat([d.edge_index, d.edge_index.flip(0)], 1)      # both directions stored
    u = Data(edge_index=ei, num_nodes=d.num_nodes)
    a, b = AddSPD(max_dist, directed=True)(u.clone()), AddSPD(max_dist)(u.clone())
    for key in ('spd_index', 'spd_val', 'in_degree', 'out_degree'):
        assert torch.equal(a[key], b[key]), key


@SETTINGS
@given(graphs(max_nodes=12), st.integers(1, 5))
def test_pairs_have_the_orientation_of_rrwp_index(d, max_dist):
    # directed: (i, j) is a pair iff j is reachable from i in <= max_dist steps, the pairs of
    # AddRRWP(max_dist + 1), and phi(i, j) is the first t with (P^t)_ij > 0
    K = max_dist + 1
    spd = AddSPD(max_dist, directed=True)(d.clone())
    rr = AddRRWP(K)(d.clone())
    assert torch.equal(spd.spd_index, rr.rrwp_index)
    first = (rr.rrwp_val > 0).to(torch.int8).argmax(1)
    assert torch.equal(spd.spd_val, first.long())


def test_known_values_edge_cases_and_degrees():
    empty = torch.empty(2, 0, dtype=torch.long)
    d = AddSPD()(Data(edge_index=empty, num_nodes=0))
    assert d.spd_index.shape == (2, 0) and d.spd_val.shape == (0,)
    assert d.in_degree.shape == (0,) and d.out_degree.shape == (0,)
    d = AddSPD()(Data(num_nodes=0))                                 # no edge_index at all
    assert d.spd_index.shape == (2, 0) and d.in_degree.shape == (0,)
    d = AddSPD()(Data(edge_index=empty, num_nodes=1))
    assert d.spd_index.tolist() == [[0], [0]] and d.spd_val.tolist() == [0]
    assert d.in_degree.tolist() == [0] and d.out_degree.tolist() == [0]
    # self-loops are ignored (distance and degree), duplicates count once
    for t in (AddSPD(3), AddSPD(3, directed=True), AddSPD(3, dense_max_nodes=0)):
        d = t(Data(edge_index=torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 0, 1, 2]]),
                   num_nodes=3))
        assert d.spd_index.tolist() == [[0, 0, 1, 1, 2], [0, 1, 0, 1, 2]]
        assert d.spd_val.tolist() == [0, 1, 1, 0, 0]
        assert d.in_degree.tolist() == [1, 1, 0] and d.out_degree.tolist() == [1, 1, 0]
    # a path of 10 nodes: max_dist bounds the pairs; a max_dist past the diameter keeps all
    path = torch.stack([torch.arange(9), torch.arange(1, 10)])
    p = Data(edge_index=path, num_nodes=10)
    for dense in (128, 0):
        out = AddSPD(1, dense_max_nodes=dense)(p.clone())
        assert out.spd_index.size(1) == 10 + 2 * 9 and set(out.spd_val.tolist()) == {0, 1}
        out = AddSPD(1000, dense_max_nodes=dense)(p.clone())
        assert out.spd_index.size(1) == 100
        assert int(out.spd_val[out.spd_index[0] * 10 + out.spd_index[1] == 9]) == 9
        assert int(out.spd_val.max()) == 9
        out = AddSPD(1000, directed=True, dense_max_nodes=dense)(p.clone())
        assert out.spd_index.size(1) == 55 and bool((out.spd_index[0] <= out.spd_index[1]).all())


def test_edge_weight_is_not_read():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    ref = AddSPD(3)(Data(edge_index=ei, num_nodes=3))
    d = AddSPD(3)(Data(edge_index=ei, edge_weight=torch.tensor([-1.0, 5.0, 0.0, 2.0]),
                       num_nodes=3))
    for key in ('spd_index', 'spd_val', 'in_degree', 'out_degree'):
        assert torch.equal(d[key], ref[key])
    assert AddSPD.batch_keys == ('edge_index',)


KEYS = ('spd_index', 'spd_val', 'in_degree', 'out_degree')


@SETTINGS
@given(st.lists(graphs(max_nodes=20), min_size=1, max_size=6), st.booleans())
def test_batch_equals_collated_per_graph_and_round_trips(ds, directed):
    t = AddSPD(3, directed)
    batch = t(Batch.from_data_list([d.clone() for d in ds]))
    ref = Batch.from_data_list([t(d.clone()) for d in ds])
    for key in KEYS:
        assert torch.equal(batch[key], ref[key]), key
    for a, d in zip(batch.to_data_list(), ds):
        check(a, d, 3, directed)


def test_batch_mixing_dense_buckets_and_the_sparse_search():
    # sizes <= 64 get their own dense bucket, 65..128 padded buckets, > 128 the sparse
    # search; graphs in mixed order, sparse enough to be disconnected
    ds = [random_graph(n, max(1, n // 2), seed) for seed, n in
          enumerate((70, 5, 130, 64, 9, 100, 5, 1, 150))]
    for directed in (False, True):
        t = AddSPD(4, directed)
        threads = torch.get_num_threads()
        batch = t(Batch.from_data_list([d.clone() for d in ds]))
        assert torch.get_num_threads() == threads
        ref = Batch.from_data_list([t(d.clone()) for d in ds])
        for key in KEYS:
            assert torch.equal(batch[key], ref[key]), key
        for a, d in zip(batch.to_data_list(), ds):
            check(a, d, 4, directed)


@pytest.mark.parametrize('directed', [False, True])
def test_sparse_search_equals_dense_path_on_a_larger_graph(directed):
    d = random_graph(300, 700, seed=5)
    sparse = AddSPD(6, directed, dense_max_nodes=0)(d.clone())
    dense = AddSPD(6, directed, dense_max_nodes=300)(d.clone())
    for key in KEYS:
        assert torch.equal(sparse[key], dense[key]), key
    assert sparse.spd_index.size(1) > 5000                        # a real test: many pairs
    check(sparse, d, 6, directed)


def test_sparse_search_result_does_not_depend_on_the_block_of_sources():
    d = random_graph(60, 150, seed=2)
    ei = torch.unique(d.edge_index[0] * 60 + d.edge_index[1])
    row, col = ei // 60, ei % 60
    rowptr = torch.zeros(61, dtype=torch.long)
    rowptr[1:] = torch.bincount(row, minlength=60).cumsum(0)
    sources = torch.arange(3, 60, 2)

    def sorted_triples(max_pairs):
        s, t, v = _sparse_spd(rowptr, col, sources, 60, 4, max_pairs=max_pairs)
        order = torch.argsort(s * 60 + t)
        return torch.stack([s[order], t[order], v[order]])
    one = sorted_triples(1)                      # one source per block
    assert torch.equal(one, sorted_triples(1 << 30))
    assert torch.equal(one, sorted_triples(50))
    assert set(one[0].tolist()) == set(sources.tolist())


@SETTINGS
@given(graphs(max_nodes=16), st.randoms(use_true_random=False), st.booleans())
def test_permutation_equivariance(d, rnd, directed):
    n = d.num_nodes
    perm = torch.tensor(rnd.sample(range(n), n), dtype=torch.long)
    d_p = permuted(d, perm)
    for t in (AddSPD(4, directed), AddSPD(4, directed, dense_max_nodes=0)):
        out, out_p = t(d.clone()), t(d_p)
        D, D_p = torch.full((n, n), -1), torch.full((n, n), -1)
        D[out.spd_index[0], out.spd_index[1]] = out.spd_val
        D_p[out_p.spd_index[0], out_p.spd_index[1]] = out_p.spd_val
        assert torch.equal(D_p, D[perm][:, perm])
        assert torch.equal(out_p.in_degree, out.in_degree[perm])
        assert torch.equal(out_p.out_degree, out.out_degree[perm])


def test_precompute_equals_per_graph_calls_in_every_batch_position():
    ds = [random_graph(n, 2 * n, seed) for seed, n in
          enumerate([int(x) for x in torch.randint(1, 25, (30,),
                                                   generator=torch.Generator().manual_seed(0))])]
    ds[7] = random_graph(140, 200, seed=99)                       # one graph on the sparse path
    t = AddSPD(3, directed=True)
    ref = [t(d.clone()) for d in ds]
    for batch_size in (1, 4, 7, 100):                           # every graph, other positions
        out = precompute(ds, [t], batch_size=batch_size, progress=False)
        for o, r in zip(out, ref):
            for key in KEYS:
                assert torch.equal(o[key], r[key]), (batch_size, key)
    for o, d in zip(out, ds):
        check(o, d, 3, True)


@pytest.mark.parametrize('value', [0, -1, True, False, 2.0, 2.5, '3', None])
def test_bad_max_dist_is_one_clear_error(value):
    with pytest.raises(ValueError, match=rf'^AddSPD: max_dist must be an integer >= 1, '
                                         rf'got {value!r}$'):
        AddSPD(max_dist=value)


def test_other_arguments_and_repr():
    for bad in (1, 'yes', None):
        with pytest.raises(ValueError, match=rf'AddSPD: directed must be a bool, got {bad!r}'):
            AddSPD(3, directed=bad)
    with pytest.raises(ValueError, match=r'AddSPD: dense_max_nodes must be an integer >= 0'):
        AddSPD(3, dense_max_nodes=-1)
    assert AddSPD(np.int64(4)).max_dist == 4 and type(AddSPD(np.int32(2)).max_dist) is int
    assert repr(AddSPD(2, directed=True, dense_max_nodes=0)) == \
        'AddSPD(max_dist=2, directed=True, dense_max_nodes=0)'
    assert repr(AddSPD()) == 'AddSPD(max_dist=5, directed=False, dense_max_nodes=128)'


def test_sparse_search_memory_follows_the_pairs_not_n_squared():
    # a path of 200,000 nodes: N^2 entries would be 4e10 (320 GB as long); the pairs within
    # 2 hops are ~5N
    n = 200_000
    i = torch.arange(n - 1)
    d = Data(edge_index=torch.stack([i, i + 1]), num_nodes=n)
    out = AddSPD(2, dense_max_nodes=0)(d)
    assert out.spd_index.size(1) == n + 2 * (n - 1) + 2 * (n - 2)
    assert torch.equal(out.spd_val, (out.spd_index[0] - out.spd_index[1]).abs())
    assert out.in_degree[0] == 1 and int(out.in_degree[1:-1].min()) == 2


def test_dense_expansion_stops_once_no_pair_is_added(monkeypatch):
    calls = []
    bmm = torch.bmm

    def counting(*args, **kwargs):
        calls.append(1)
        return bmm(*args, **kwargs)
    monkeypatch.setattr(torch, 'bmm', counting)
    out = AddSPD(10_000)(Data(edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]), num_nodes=4))
    assert int(out.spd_val.max()) == 3
    assert len(calls) == 4                 # distances 1, 2, 3, then a step that adds nothing


# -- spd_path_index (path_len > 0): one shortest path per pair, for Graphormer's Eq. 7 -------
def nx_path(G, i, j):
    """The lexicographically smallest shortest node sequence i -> j (networkx)."""
    return min(nx.all_shortest_paths(G, i, j))


def check_paths(out, d, max_dist, path_len, directed, offset=0):
    """Every column of spd_path_index against networkx: starts at i, follows edges of
    edge_index (either direction unless directed), min(phi, path_len) real steps then padding,
    ends at j iff phi <= path_len, and is the smallest shortest node sequence, truncated."""
    check(out, d, max_dist, directed)
    P = out.spd_path_index
    assert P.dtype == torch.long and P.shape == (path_len + 1, out.spd_index.size(1))
    G = nx_graph(d, directed)
    edges = set(map(tuple, d.edge_index.t().tolist()))
    for m, ((i, j), phi) in enumerate(zip(out.spd_index.t().tolist(), out.spd_val.tolist())):
        p = P[:, m].tolist()
        assert p[0] == i
        real = [a != b for a, b in zip(p[:-1], p[1:])]
        n = min(phi, path_len)
        assert real == [True] * n + [False] * (path_len - n), (i, j, p)
        for a, b in zip(p[:n], p[1:n + 1]):
            assert (a, b) in edges or (not directed and (b, a) in edges), (a, b)
        assert (p[-1] == j) == (phi <= path_len)
        ref = nx_path(G, i, j)
        assert len(ref) - 1 == phi                      # the path is a shortest one
        assert p == ref[:n + 1] + [ref[n]] * (path_len - n)


@SETTINGS
@given(graphs(), st.integers(1, 6), st.integers(1, 7), st.booleans())
def test_paths_match_networkx_on_random_graphs(d, max_dist, path_len, directed):
    for dense in (128, 0):
        t = AddSPD(max_dist, directed, dense_max_nodes=dense, path_len=path_len)
        check_paths(t(d.clone()), d, max_dist, path_len, directed)


def test_paths_on_disconnected_graphs_loops_duplicates_and_tiny_graphs():
    # two triangles, a path 6-7-8 stored one way only (reverse steps when undirected),
    # self-loops and duplicate edges, an isolated node 9
    und = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]
    ei = torch.tensor(und + [(b, a) for a, b in und] + [(6, 7), (7, 8), (8, 8), (6, 7), (0, 0)]).t()
    d = Data(edge_index=ei, num_nodes=10)
    for directed in (False, True):
        out = AddSPD(4, directed, path_len=2)(d.clone())
        check_paths(out, d, 4, 2, directed)
        col = {tuple(c): k for k, c in enumerate(out.spd_index.t().tolist())}
        if directed:
            assert (8, 6) not in col and out.spd_path_index[:, col[(6, 8)]].tolist() == [6, 7, 8]
        else:
            assert out.spd_path_index[:, col[(8, 6)]].tolist() == [8, 7, 6]
        assert out.spd_path_index[:, col[(9, 9)]].tolist() == [9, 9, 9]
    empty = torch.empty(2, 0, dtype=torch.long)
    for n in (0, 1):
        out = AddSPD(3, path_len=4)(Data(edge_index=empty, num_nodes=n))
        assert out.spd_path_index.shape == (5, n) and out.spd_path_index.tolist() == [[0] * n] * 5
    # a path of 8 nodes, path_len 3: far pairs stop after 3 steps, on the way to their end
    path = torch.stack([torch.arange(7), torch.arange(1, 8)])
    out = AddSPD(7, path_len=3)(Data(edge_index=path, num_nodes=8))
    col = {tuple(c): k for k, c in enumerate(out.spd_index.t().tolist())}
    assert out.spd_path_index[:, col[(0, 7)]].tolist() == [0, 1, 2, 3]
    assert out.spd_path_index[:, col[(6, 4)]].tolist() == [6, 5, 4, 4]
    assert out.spd_path_index[:, col[(2, 2)]].tolist() == [2, 2, 2, 2]


def test_path_len_keeps_the_other_outputs():
    d = random_graph(30, 50, seed=3)
    for directed in (False, True):
        a = AddSPD(4, directed)(d.clone())
        b = AddSPD(4, directed, path_len=3)(d.clone())
        assert 'spd_path_index' not in a
        for key in KEYS:
            assert torch.equal(a[key], b[key]), key


@SETTINGS
@given(st.lists(graphs(max_nodes=20), min_size=1, max_size=6), st.booleans(),
       st.integers(1, 4))
def test_paths_batch_equals_collated_per_graph_and_round_trips(ds, directed, path_len):
    t = AddSPD(3, directed, path_len=path_len)
    batch = t(Batch.from_data_list([d.clone() for d in ds]))
    ref = Batch.from_data_list([t(d.clone()) for d in ds])
    for key in KEYS + ('spd_path_index',):
        assert torch.equal(batch[key], ref[key]), key
    for a, d in zip(batch.to_data_list(), ds):
        check_paths(a, d, 3, path_len, directed)


def test_paths_batch_mixing_dense_buckets_and_the_sparse_search_and_precompute():
    ds = [random_graph(n, max(1, n // 2 + 5), seed) for seed, n in
          enumerate((70, 5, 130, 64, 9, 100, 5, 1, 150))]
    for directed in (False, True):
        t = AddSPD(4, directed, path_len=3)
        batch = t(Batch.from_data_list([d.clone() for d in ds]))
        ref = Batch.from_data_list([t(d.clone()) for d in ds])
        assert torch.equal(batch.spd_path_index, ref.spd_path_index)
        for a, d in zip(batch.to_data_list()[:2], ds[:2]):       # networkx on the small ones
            check_paths(a, d, 4, 3, directed)
        sparse = AddSPD(4, directed, dense_max_nodes=0, path_len=3)(
            Batch.from_data_list([d.clone() for d in ds]))
        assert torch.equal(sparse.spd_path_index, batch.spd_path_index)
    per_graph = [t(d.clone()) for d in ds]
    for o, r in zip(precompute(ds, [t], batch_size=4, progress=False), per_graph):
        assert torch.equal(o.spd_path_index, r.spd_path_index)


def test_paths_do_not_depend_on_the_block_of_candidates():
    from gtpe.transforms.spd import _shortest_paths
    d = random_graph(80, 200, seed=4)
    out = AddSPD(6, path_len=5)(d.clone())
    ei = torch.cat([d.edge_index, d.edge_index.flip(0)], 1)   # the symmetrised graph, as CSR
    key = torch.unique(ei[0] * 80 + ei[1])
    key = key[key // 80 != key % 80]
    rowptr = torch.zeros(81, dtype=torch.long)
    rowptr[1:] = torch.bincount(key // 80, minlength=80).cumsum(0)
    for max_cand in (40, 300, 1 << 30):       # many blocks, a few, one
        p = _shortest_paths(rowptr, key % 80, out.spd_index, out.spd_val, 80, 5, max_cand=max_cand)
        assert torch.equal(p, out.spd_path_index), max_cand


@pytest.mark.parametrize('value', [-1, True, False, 2.0, '3', None])
def test_bad_path_len_is_one_clear_error(value):
    with pytest.raises(ValueError, match=rf'^AddSPD: path_len must be an integer >= 0, '
                                         rf'got {value!r}$'):
        AddSPD(3, path_len=value)


def test_path_len_repr_and_parameter_state():
    assert repr(AddSPD(2, path_len=4)) == \
        'AddSPD(max_dist=2, directed=False, dense_max_nodes=128, path_len=4)'
    assert repr(AddSPD(2, path_len=0)) == repr(AddSPD(2))
    assert AddSPD(2, path_len=np.int64(3)).path_len == 3 and AddSPD(2).path_len == 0
    # path_len=0 leaves the parameter state (gtpe.precompute's cache key) as before path_len
    assert vars(AddSPD(2, path_len=0)) == vars(AddSPD(2)) and 'path_len' not in vars(AddSPD(2))
