"""Graphormer's spatial bias and centrality encoding against dense float64 references built
from networkx shortest paths (not from AddSPD's output)."""
import math

import networkx as nx
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.nn.attention import FullAttention
from gtpe.nn.attention.graphormer import (
    EDGE_BIAS_KEY,
    CentralityEncoding,
    GraphormerAttention,
    GraphormerBias,
    GraphormerEdgeEncoding,
)
from gtpe.transforms import AddSPD

C, H = 16, 4
STRATEGIES = ["auto", "kernel", "fused", "sdpa", "pad", "pairs", "block"]
SIZES = [7, 1, 12, 20, 5, 9]


def _graphs(sizes=SIZES, seed=0):
    """Random sparse graphs, directed edges, some disconnected (pairs beyond reach)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        m = max(n // 2 + 1, int(1.2 * n))
        ei = torch.randint(0, n, (2, m), generator=g)
        out.append(Data(x=torch.randn(n, C, generator=g, dtype=torch.float64), edge_index=ei, num_nodes=n))
    return out


def _batch(graphs, max_dist, directed=False):
    return Batch.from_data_list([AddSPD(max_dist, directed)(d.clone()) for d in graphs])


def _nx_dist(d, directed):
    G = nx.DiGraph() if directed else nx.Graph()
    G.add_nodes_from(range(d.num_nodes))
    G.add_edges_from(d.edge_index.t().tolist())
    return dict(nx.all_pairs_shortest_path_length(G))  # [a][b]: hops a -> b


def _dense_reference(layer, graphs, cutoff, directed, edge=None):
    """softmax(Q K^T / sqrt(d) + B) V per graph, float64, B[h, i, j] = E[min(phi(j -> i), D + 1)]
    with phi from networkx; pairs beyond ``cutoff`` (AddSPD's max_dist) or unreachable: E[D+1];
    ``edge[(g, j, i)]`` (if given) is added to B[:, i, j] of graph g."""
    fa, E = layer.attn, layer.spatial.embedding.weight.double()
    D = layer.max_dist
    W, b = fa.in_proj_weight.double(), fa.in_proj_bias.double()
    d_h = fa.head_dim
    outs = []
    for d in graphs:
        n = d.num_nodes
        dist = _nx_dist(d, directed)
        B = torch.empty(H, n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                phi = dist[j].get(i)
                bucket = D + 1 if phi is None or phi > cutoff else min(phi, D + 1)
                B[:, i, j] = E[bucket]
                if edge is not None and (len(outs), j, i) in edge:
                    B[:, i, j] += edge[(len(outs), j, i)]
        q, k, v = (d.x.double() @ W.T + b).view(n, 3, H, d_h).unbind(1)
        S = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d_h) + B
        outs.append(torch.einsum("hij,jhd->ihd", S.softmax(-1), v).reshape(n, C))
    return torch.cat(outs) @ fa.out_proj.weight.double().T + fa.out_proj.bias.double()


def _layer(strategy="auto", max_dist=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layer = GraphormerAttention(C, heads=H, max_dist=max_dist, strategy=strategy).to(dtype)
    with torch.no_grad():  # biases of the size of the scores, so that a wrong bias shows
        layer.spatial.embedding.weight.normal_(0, 2)
        layer.attn.in_proj_bias.normal_()
    return layer


def _require_kernel():
    from gtpe import _native
    from gtpe.nn.attention.full import _kernel

    if _native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert _kernel(torch.float32) is not None and _kernel(torch.float64) is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_graphormer_attention_matches_dense_reference(strategy):
    """Every FullAttention strategy; AddSPD(max_dist=2) leaves out farther and unreachable
    pairs (the default bias), directed and undirected; 1e-10 (float64) and 1e-6 (float32)."""
    if strategy == "kernel":
        _require_kernel()
    graphs = _graphs()
    for directed in (False, True):
        data = _batch(graphs, 2, directed)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
            layer = _layer(strategy, dtype=dtype)
            ref = _dense_reference(layer, graphs, 2, directed)
            out = layer(data.x.to(dtype), data.batch, data.spd_index, data.spd_val)
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_distances_beyond_max_dist_take_the_far_bias():
    """AddSPD(max_dist=5) pairs at distance 4-5 with GraphormerBias(max_dist=3): the far row,
    exactly as if they were not listed."""
    graphs = _graphs(seed=1)
    data = _batch(graphs, 5)
    assert int(data.spd_val.max()) > 3
    layer = _layer(max_dist=3)
    out = layer(data.x, data.batch, data.spd_index, data.spd_val)
    torch.testing.assert_close(out, _dense_reference(layer, graphs, 5, False), rtol=1e-10, atol=1e-10)
    pair_index, pair_bias, default = layer.spatial(data.spd_index, data.spd_val)
    far = data.spd_val > 3
    assert torch.equal(pair_bias[far], default.expand(int(far.sum()), H))
    assert torch.equal(pair_bias[~far], layer.spatial.embedding.weight[data.spd_val[~far]])
    # GraphormerAttention passes the table shifted by the far row (default 0): same attention
    _, shifted = layer.spatial.shifted(data.spd_index, data.spd_val)
    torch.testing.assert_close(shifted, pair_bias - default, rtol=0, atol=1e-15)
    direct = layer.attn(data.x, data.batch, pair_index=pair_index, pair_bias=pair_bias, default_bias=default)
    torch.testing.assert_close(direct, out, rtol=1e-12, atol=1e-12)


def test_orientation_query_sees_distance_from_key():
    """Directed path 0 -> 1 -> 2: query 2 sees key 0 at distance 2, query 0 sees key 2 as
    unreachable (far); ``spd_index.flip(0)`` gives the paper's literal phi(query -> key).  A
    probe attention with zero queries/keys and one-hot values outputs its probabilities."""
    d = Data(edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=3)
    data = _batch([d], 3, directed=True)
    paths = {(int(s), int(e)): int(v) for (s, e), v in zip(data.spd_index.t(), data.spd_val)}
    assert paths[(0, 2)] == 2 and (2, 0) not in paths
    spatial = _layer().spatial
    E = spatial.embedding.weight.detach()
    _, pb, default = (t.detach() if isinstance(t, torch.Tensor) else t
                      for t in spatial(data.spd_index, data.spd_val))
    probe = FullAttention(C, heads=1, strategy="fused").double()
    with torch.no_grad():
        probe.in_proj_weight.zero_()
        probe.in_proj_bias.zero_()
        probe.in_proj_weight[2 * C :] = torch.eye(C)
        probe.out_proj.weight.copy_(torch.eye(C))
        probe.out_proj.bias.zero_()
    x = torch.eye(3, C, dtype=torch.float64)
    for index, literal in ((data.spd_index, False), (data.spd_index.flip(0), True)):
        P = probe(x, None, pair_index=index, pair_bias=pb[:, :1], default_bias=default[:1])[:, :3]
        B = torch.full((3, 3), float(default[0]), dtype=torch.float64)
        for (s, e), v in paths.items():  # path s -> e of v hops
            query, key = (s, e) if literal else (e, s)
            B[query, key] = E[v, 0]
        torch.testing.assert_close(P, B.softmax(-1), rtol=1e-12, atol=1e-12)


def test_graphormer_gradients_kernel_equal_fused_and_reach_every_parameter():
    _require_kernel()
    data = _batch(_graphs(), 2)
    grads = []
    for s in ("kernel", "fused"):
        layer = _layer(s)
        x = data.x.clone().requires_grad_()
        out = layer(x, data.batch, data.spd_index, data.spd_val)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # rows of distances that occur (0..2) and the far row get gradients; row 3 (none at
    # distance 3 with AddSPD(max_dist=2)) none
    g = grads[0][-1]  # spatial.embedding.weight, the last parameter
    assert (g[[0, 1, 2, 4]].abs().sum(1) > 0).all() and g[3].abs().sum() == 0


def test_graphormer_gradcheck_fused():
    data = _batch(_graphs([4, 1, 5], seed=2), 2)
    layer = _layer("fused")

    def f(x, table):
        with torch.no_grad():
            layer.spatial.embedding.weight.copy_(table)
        pi, _, _ = layer.spatial(data.spd_index, data.spd_val)
        far = layer.max_dist + 1
        return layer.attn(x, data.batch, pair_index=pi, pair_bias=table[data.spd_val.clamp_max(far)],
                          default_bias=table[far])

    table = layer.spatial.embedding.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (data.x.clone().requires_grad_(), table))


def test_graphormer_permutation_equivariance_and_isolation():
    graphs = _graphs()
    layer = _layer("auto")
    data = _batch(graphs, 2)
    out = layer(data.x, data.batch, data.spd_index, data.spd_val)
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(len(graphs), generator=g).tolist()
    permuted, perms = [], []
    for o in order:
        d = graphs[o]
        perm = torch.randperm(d.num_nodes, generator=g)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        permuted.append(Data(x=d.x[perm], edge_index=inv[d.edge_index], num_nodes=d.num_nodes))
        perms.append(perm + data.ptr[o])
    pdata = _batch(permuted, 2)
    torch.testing.assert_close(layer(pdata.x, pdata.batch, pdata.spd_index, pdata.spd_val),
                               out[torch.cat(perms)], rtol=1e-10, atol=1e-10)
    # another edge in graph 2 changes its distances: only graph 2's rows change
    changed = [d.clone() for d in graphs]
    changed[2].edge_index = torch.cat([changed[2].edge_index, torch.tensor([[0], [11]])], 1)
    cdata = _batch(changed, 2)
    out2 = layer(cdata.x, cdata.batch, cdata.spd_index, cdata.spd_val)
    other = data.batch != 2
    torch.testing.assert_close(out2[other], out[other], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[~other], out[~other])


def test_centrality_encoding_matches_networkx_degrees_clipped():
    graphs = _graphs()
    data = _batch(graphs, 2, directed=True)
    torch.manual_seed(0)
    enc = CentralityEncoding(C, max_degree=2).double()
    out = enc(data.x, data.in_degree, data.out_degree)
    ref = []
    for d in graphs:
        G = nx.DiGraph()
        G.add_nodes_from(range(d.num_nodes))
        G.add_edges_from((a, b) for a, b in d.edge_index.t().tolist() if a != b)
        for i in range(d.num_nodes):
            ref.append(enc.z_in.weight[min(G.in_degree(i), 2)] + enc.z_out.weight[min(G.out_degree(i), 2)])
    assert int(data.in_degree.max()) > 2  # clipping exercised
    torch.testing.assert_close(out, data.x + torch.stack(ref), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert enc.z_in.weight.grad.abs().sum() > 0 and enc.z_out.weight.grad.abs().sum() > 0


def test_missing_spd_attributes_name_the_transform():
    data = Batch.from_data_list(_graphs([3, 4]))  # no AddSPD
    layer = _layer()
    missing = r"are missing: .*gtpe\.transforms\.AddSPD"
    with pytest.raises(ValueError, match=r"GraphormerAttention: spd_index / spd_val " + missing):
        layer(data.x, data.batch, getattr(data, "spd_index", None), getattr(data, "spd_val", None))
    with pytest.raises(ValueError, match=r"GraphormerBias: .*gtpe\.transforms\.AddSPD"):
        layer.spatial(None, None)
    with pytest.raises(ValueError, match=r"CentralityEncoding: in_degree / out_degree " + missing):
        CentralityEncoding(C, 3).double()(data.x, getattr(data, "in_degree", None), None)


def test_bad_input_and_repr():
    data = _batch(_graphs([3, 4]), 2)
    layer = _layer()
    with pytest.raises(ValueError, match=r"spd_val must be an integer tensor of shape \[M\]"):
        layer(data.x, data.batch, data.spd_index, data.spd_val.double())
    with pytest.raises(ValueError, match=r"spd_val holds negative values"):
        layer(data.x, data.batch, data.spd_index, data.spd_val - 1)
    with pytest.raises(ValueError, match=r"spd_index must have shape \[2, \d+\]"):
        layer(data.x, data.batch, data.spd_index[:, :-1], data.spd_val)
    with pytest.raises(ValueError, match="different graphs"):  # pairs across graphs
        bad = data.spd_index.clone()
        bad[0, 0] = data.num_nodes - 1
        layer(data.x, data.batch, bad, data.spd_val)
    with pytest.raises(ValueError, match=r"out_degree must be an integer tensor of shape \[7\]"):
        CentralityEncoding(C, 3).double()(data.x, data.in_degree, data.out_degree[:-1])
    for bad_max in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_dist must be an integer >= 1"):
            GraphormerBias(H, bad_max)
    with pytest.raises(ValueError, match="max_degree must be an integer >= 0"):
        CentralityEncoding(C, -1)
    assert repr(layer) == "GraphormerAttention(16, heads=4, dropout=0.0, max_dist=3, strategy='auto')"
    assert repr(layer.spatial) == "GraphormerBias(heads=4, max_dist=3)"
    assert repr(CentralityEncoding(C, 5)) == "CentralityEncoding(16, max_degree=5)"
    before = layer.spatial.embedding.weight.clone()
    layer.reset_parameters()
    assert layer.spatial.embedding.weight.std() < 0.1 and not torch.equal(before, layer.spatial.embedding.weight)


# -- the edge encoding (Eq. 7) ---------------------------------------------------------------
def _edge_graphs(seed=3):
    """Random graphs with several shortest paths, edges stored one way only, self-loops and a
    duplicate of the first edge (with its own features); float64 edge features [E, H]."""
    graphs = _graphs(SIZES, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for d in graphs:
        if d.edge_index.size(1):
            d.edge_index = torch.cat([d.edge_index, d.edge_index[:, :1]], 1)
        d.edge_attr = torch.randn(d.edge_index.size(1), H, generator=g, dtype=torch.float64)
    return graphs


def _nx_path(d, directed, a, b):
    G = nx.DiGraph() if directed else nx.Graph()
    G.add_nodes_from(range(d.num_nodes))
    G.add_edges_from((u, v) for u, v in d.edge_index.t().tolist() if u != v)
    return min(nx.all_shortest_paths(G, a, b))  # the smallest shortest node sequence


def _eq7_reference(graphs, data, W, directed):
    """{(graph, start, end): c [H]} for every pair of ``data.spd_index``, float64, written from
    Eq. 7: c = 1/N sum_{n < N} x_{e_n} W_n, N = min(phi, P), along networkx's smallest shortest
    path start -> end; e_n the first edge a -> b of edge_index, else the first b -> a."""
    P = W.size(0)
    out = {}
    for m in range(data.spd_index.size(1)):
        gi = int(data.batch[data.spd_index[0, m]])
        d, off = graphs[gi], int(data.ptr[gi])
        s, e = (int(v) - off for v in data.spd_index[:, m])
        path = _nx_path(d, directed, s, e)
        edges = d.edge_index.t().tolist()
        n_steps = min(len(path) - 1, P)
        c = torch.zeros(H, dtype=torch.float64)
        for n in range(n_steps):
            a, b = path[n], path[n + 1]
            k = edges.index([a, b]) if [a, b] in edges else edges.index([b, a])
            c += d.edge_attr[k] @ W[n]
        out[(gi, s, e)] = c / max(n_steps, 1)
    return out


@pytest.mark.parametrize("directed", [False, True])
def test_edge_encoding_matches_dense_eq7_reference(directed):
    """Paths truncated at P = 2 (pairs up to distance 4 listed); spd_path_index computed with
    a longer path_len reads the same; the first of duplicate edges; reverse steps (undirected)."""
    graphs = _edge_graphs()
    torch.manual_seed(0)
    enc = GraphormerEdgeEncoding(H, path_len=2).double()
    with torch.no_grad():
        enc.weight.normal_()
    for path_len in (2, 5):
        data = Batch.from_data_list([AddSPD(4, directed, path_len=path_len)(d.clone()) for d in graphs])
        assert int(data.spd_val.max()) > 2
        out = enc(data.edge_attr, data.edge_index, data.spd_path_index)
        ref = _eq7_reference(graphs, data, enc.weight, directed)
        keys = [(int(data.batch[s]), int(s - data.ptr[data.batch[s]]), int(e - data.ptr[data.batch[s]]))
                for s, e in data.spd_index.t()]
        torch.testing.assert_close(out, torch.stack([ref[k] for k in keys]), rtol=1e-12, atol=1e-12)
        assert bool((out[data.spd_val == 0] == 0).all())
        assert out.shape == (data.spd_index.size(1), H)
        # num_nodes given: the same
        torch.testing.assert_close(enc(data.edge_attr, data.edge_index, data.spd_path_index,
                                       num_nodes=data.num_nodes), out, rtol=0, atol=0)
    if not directed:  # graph 0 stores some edges one way only: reverse steps were looked up
        und = set(map(tuple, graphs[0].edge_index.t().tolist()))
        assert any((b, a) not in und for a, b in und)


def test_edge_encoding_gradients_and_float32():
    graphs = _edge_graphs(seed=4)
    data = Batch.from_data_list([AddSPD(3, path_len=3)(d.clone()) for d in graphs])
    enc = GraphormerEdgeEncoding(H, path_len=3).double()
    x = data.edge_attr.clone().requires_grad_()
    out = enc(x, data.edge_index, data.spd_path_index)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    assert enc.weight.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every hop's matrix
    assert x.grad.abs().sum() > 0
    out32 = enc.float()(data.edge_attr.float(), data.edge_index, data.spd_path_index)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["auto", "sdpa"])
def test_graphormer_attention_with_edge_bias_matches_dense_reference(strategy):
    """b_phi(j, i) + c_ji at the listed pairs (edge_bias argument, or the cache entry that
    GPSModel uses), float64."""
    graphs = _edge_graphs()
    data = Batch.from_data_list([AddSPD(2, path_len=2)(d.clone()) for d in graphs])
    layer = _layer(strategy)
    enc = GraphormerEdgeEncoding(H, 2).double()
    with torch.no_grad():
        enc.weight.normal_()
    c = enc(data.edge_attr, data.edge_index, data.spd_path_index)
    edge = _eq7_reference(graphs, data, enc.weight.detach(), False)
    ref = _dense_reference(layer, graphs, 2, False, edge=edge)
    out = layer(data.x, data.batch, data.spd_index, data.spd_val, edge_bias=c)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    cached = layer(data.x, data.batch, data.spd_index, data.spd_val, cache={EDGE_BIAS_KEY: c})
    torch.testing.assert_close(cached, out, rtol=0, atol=0)
    plain = layer(data.x, data.batch, data.spd_index, data.spd_val)
    assert not torch.allclose(plain, out)
    out.sum().backward()
    assert enc.weight.grad.abs().sum() > 0


def test_edge_encoding_errors_and_repr():
    graphs = _edge_graphs()
    data = Batch.from_data_list([AddSPD(2, path_len=2)(d.clone()) for d in graphs])
    enc = GraphormerEdgeEncoding(H, 3).double()
    with pytest.raises(ValueError, match=r"spd_path_index is missing: .*AddSPD\(max_dist=\.\.\., path_len=3\)"):
        enc(data.edge_attr, data.edge_index, None)
    with pytest.raises(ValueError, match=r"path_len >= 3 \(gtpe\.transforms\.AddSPD\(max_dist=\.\.\., path_len=3\)\)"):
        enc(data.edge_attr, data.edge_index, data.spd_path_index)  # 3 rows: path_len 2
    enc = GraphormerEdgeEncoding(H, 2).double()
    with pytest.raises(ValueError, match=r"edge_attr must be a float tensor \[E, heads\]"):
        enc(data.edge_attr[:, :2], data.edge_index, data.spd_path_index)
    with pytest.raises(ValueError, match=r"is not an edge of edge_index in either direction"):
        keep = data.batch[data.edge_index[0]] != 0  # graph 0's edges gone: its paths are not
        enc(data.edge_attr[keep], data.edge_index[:, keep], data.spd_path_index)
    with pytest.raises(ValueError, match=r"is not an edge of edge_index in either direction"):
        enc(data.edge_attr[:0], data.edge_index[:, :0], data.spd_path_index)  # no edges
    with pytest.raises(ValueError, match=r"GraphormerAttention: edge_bias must be a float tensor \[M, heads\]"):
        _layer()(data.x, data.batch, data.spd_index, data.spd_val,
                 edge_bias=torch.zeros(data.spd_index.size(1) - 1, H, dtype=torch.float64))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="path_len must be an integer >= 1"):
            GraphormerEdgeEncoding(H, bad)
    assert repr(enc) == "GraphormerEdgeEncoding(heads=4, path_len=2)"
    before = enc.weight.detach().clone()
    enc.reset_parameters()
    assert enc.weight.std() < 0.1 and not torch.equal(before, enc.weight)
