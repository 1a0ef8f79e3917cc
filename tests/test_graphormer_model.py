"""Graphormer as a gtpe model: GPSLayer(attn='graphormer') and GPSModel(attn='graphormer',
pool='token'|'mean') against dense float64 references written from the paper's equations as
gtpe composes them (distances from networkx, not from AddSPD), invariance, graph isolation,
gradients, errors, the config and a one-epoch ZINC run."""

import math
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.models import ConfigError, GPSModel, GPSModelConfig
from gtpe.models.config import SPDConfig
from gtpe.models.gps_model import CENTRALITY_MAX_DEGREE
from gtpe.nn import GPSLayer
from gtpe.nn.attention.graphormer import GraphormerAttention
from gtpe.transforms import AddSPD

pytestmark = pytest.mark.usefixtures("one_thread")

C, H = 16, 4
F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


# -- graphs ----------------------------------------------------------------------------------
def molecules(sizes=(6, 1, 9, 4), seed=0, disconnected=True):
    """ZINC-like graphs: atom types, bond types, both edge directions; the first graph has two
    components (unreachable pairs), one graph has a single atom."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(sizes):
        s = torch.arange(n - 1)
        ei = torch.stack([s, s + 1])
        if disconnected and k == 0 and n > 3:
            ei = ei[:, ei[0] != 2]  # cut 2 - 3
        extra = torch.randint(0, n, (2, n // 3), generator=g)
        ei = torch.cat([ei, extra], 1)
        ei = ei[:, ei[0] != ei[1]]
        ei = torch.cat([ei, ei.flip(0)], 1)
        out.append(
            Data(
                x=torch.randint(0, 6, (n, 1), generator=g),
                edge_index=ei,
                edge_attr=torch.randint(0, 3, (ei.size(1),), generator=g),
                y=torch.randn(1, generator=g),
                num_nodes=n,
            )
        )
    return out


def trees(sizes=(7, 1, 9, 5), seed=0):
    """Random forests (every shortest path unique), both edge directions with their own bond
    types; graph 0 has two components."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(sizes):
        parent = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        ei = torch.tensor([parent, list(range(1, n))], dtype=torch.long).view(2, -1)
        if k == 0 and n > 3:
            ei = ei[:, ei[1] != 3]  # cut node 3 off its parent
        ei = torch.cat([ei, ei.flip(0)], 1)
        out.append(Data(x=torch.randint(0, 6, (n, 1), generator=g), edge_index=ei,
                        edge_attr=torch.randint(0, 3, (ei.size(1),), generator=g),
                        y=torch.randn(1, generator=g), num_nodes=n))
    return out


def nx_dist(d, directed=False):
    G = nx.DiGraph() if directed else nx.Graph()
    G.add_nodes_from(range(d.num_nodes))
    G.add_edges_from(d.edge_index.t().tolist())
    return dict(nx.all_pairs_shortest_path_length(G))  # [a][b]: hops a -> b


def spd_batch(graphs, max_dist, directed=False):
    return Batch.from_data_list([AddSPD(max_dist, directed)(d.clone()) for d in graphs])


def randomise(module, seed=0, scale=1.0):
    """Non-trivial values for every parameter (biases, norm affine parameters, bias tables)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / math.sqrt(p.shape[-1]))
            if p.dim() == 2 and p.size(1) == H:  # the spatial tables: biases of score size
                p.mul_(2.0 * math.sqrt(H) / scale)
    return module


# -- the dense reference ---------------------------------------------------------------------
def lin(layer, t):
    return t @ layer.weight.T + layer.bias


def layer_norm(norm, t):
    mean = t.mean(-1, keepdim=True)
    var = t.var(-1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def ref_gps_graphormer_layer(layer, x, B):
    """One graph: Graphormer attention with the bias ``B [H, n, n]`` (query, key), then GPSLayer's
    post-norm composition: a = LN2(x + Attn(x)), out = LN3(a + W2 relu(W1 a))."""
    fa = layer.attn.attn
    n, d = x.size(0), fa.head_dim
    q, k, v = lin_qkv(fa, x).view(n, 3, H, d).unbind(1)
    S = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d) + B
    att = torch.einsum("hij,jhd->ihd", S.softmax(-1), v).reshape(n, -1)
    a = layer_norm(layer.norm2, x + lin(fa.out_proj, att))
    ffn = lin(layer.mlp[3], lin(layer.mlp[0], a).relu())
    return layer_norm(layer.norm3, a + ffn)


def lin_qkv(fa, x):
    return x @ fa.in_proj_weight.T + fa.in_proj_bias


def spatial_bias(E, dist, n, max_dist, cutoff, token=False):
    """``B [H, n', n']`` from networkx distances, query i / key j: E[phi(j -> i)] for phi <= the
    layer's distance range, the "far" row otherwise (beyond ``cutoff``, AddSPD's max_dist, or
    unreachable); with ``token`` node 0 is the graph token: every pair with it gets E[max_dist+1]
    (Graphormer's t) and far is E[max_dist + 2]."""
    far = max_dist + 2 if token else max_dist + 1
    s = 1 if token else 0
    B = torch.empty(E.size(1), n + s, n + s, dtype=F64)
    if token:
        B[:, 0, :] = E[max_dist + 1].view(-1, 1)
        B[:, :, 0] = E[max_dist + 1].view(-1, 1)
    for i in range(n):
        for j in range(n):
            phi = dist[j].get(i)
            row = far if phi is None or phi > min(cutoff, max_dist) else phi
            B[:, i + s, j + s] = E[row]
    return B


# -- GPSLayer --------------------------------------------------------------------------------
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("strategy", ["auto", "sdpa"])
def test_gpslayer_graphormer_matches_dense_reference(strategy, directed):
    """GPSLayer(local=None, attn='graphormer', norm='layer') = attention with the spatial bias
    E[phi(j -> i)] (networkx distances; far and unreachable pairs share E[D+1]) + residual + norm
    + FFN + residual + norm, per graph, to 1e-8 in float64."""
    D = 2  # molecules have pairs at distance > 2 and unreachable pairs
    layer = GPSLayer(C, local=None, attn="graphormer", heads=H, norm="layer",
                     attn_kwargs={"max_dist": D, "strategy": strategy}).double().train()
    randomise(layer, seed=1)
    assert isinstance(layer.attn, GraphormerAttention) and layer.attn.max_dist == D
    graphs = molecules()
    if directed:  # one direction per edge: phi(j -> i) != phi(i -> j)
        graphs = [Data(x=d.x, edge_index=d.edge_index[:, : d.edge_index.size(1) // 2],
                       num_nodes=d.num_nodes) for d in graphs]
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(d.num_nodes, C, generator=g, dtype=F64) for d in graphs]
    b = spd_batch(graphs, max_dist=4, directed=directed)  # listed pairs beyond D too
    assert int(b.spd_val.max()) > D
    if directed:
        one = set(map(tuple, b.spd_index[:, b.spd_val == 1].t().tolist()))
        assert any((j, i) not in one for i, j in one)  # asymmetric distances
    state = {}
    out = layer(torch.cat(xs), b.edge_index, b.batch, spd_index=b.spd_index, spd_val=b.spd_val,
                state=state)
    E = layer.attn.spatial.embedding.weight
    ref = torch.cat([
        ref_gps_graphormer_layer(layer, x, spatial_bias(E, nx_dist(d, directed), d.num_nodes, D, 4))
        for d, x in zip(graphs, xs)
    ])
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)
    # the state dict is FullAttention's cache: the pairs were checked and placed for this batch
    assert state["full_attention_layout"]["bias_pairs"]["index"] is b.spd_index


def test_gpslayer_graphormer_without_spd_names_the_transform():
    layer = GPSLayer(C, local=None, attn="graphormer", heads=H)
    b = spd_batch(molecules(), 3)
    x = torch.randn(b.num_nodes, C)
    with pytest.raises(ValueError, match=r"attn='graphormer'.*gtpe\.transforms\.AddSPD"):
        layer(x, b.edge_index, b.batch)
    with pytest.raises(ValueError, match=r"gtpe\.transforms\.AddSPD"):
        layer(x, b.edge_index, b.batch, spd_index=b.spd_index)


# -- GPSModel --------------------------------------------------------------------------------
def config(pool="token", max_dist=2, layers=2, edge_encoding=0, **kw):
    spd = {"max_dist": max_dist, **({"edge_encoding": edge_encoding} if edge_encoding else {})}
    return GPSModelConfig.from_dict(dict(
        channels=C, num_layers=layers, local=None, attn="graphormer", heads=H, norm="layer",
        pool=pool, pe={"spd": spd}, **kw))


def build(cfg, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = GPSModel(cfg, out_dim=3, node_input="embedding", node_in_dim=6,
                 edge_input="embedding", edge_in_dim=3)
    return m.to(dtype)


def prepared(cfg, graphs):
    b = Batch.from_data_list([d.clone() for d in graphs])
    for t in cfg.transforms():
        b = t(b)
    return b


def edge_bias(model, d, D, token):
    """Eq. 7 as the model composes it, ``[H, n', n']`` (query i, key j): for phi(j -> i) <= D,
    1/N sum_{n < N} x_{e_n} W_n along networkx's smallest shortest path j -> i, N = min(phi,
    P), x_e the bond type's embedding to H dims, e_n the first edge a -> b of edge_index (ZINC
    stores both directions, each with its own bond features); 0 elsewhere and on token pairs."""
    W = model.edge_encoding.weight
    P = W.size(0)
    emb = model.spd_edge_encoder.emb.weight
    n, s = d.num_nodes, int(token)
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(d.edge_index.t().tolist())
    edges = d.edge_index.t().tolist()
    B = torch.zeros(H, n + s, n + s, dtype=F64)
    for j in range(n):
        for i in range(n):
            if i == j or not nx.has_path(G, j, i):
                continue
            path = min(nx.all_shortest_paths(G, j, i))
            if len(path) - 1 > D:
                continue
            N = min(len(path) - 1, P)
            c = sum(emb[d.edge_attr[edges.index(path[k:k + 2])]] @ W[k] for k in range(N))
            B[:, i + s, j + s] = c / N
    return B


@pytest.mark.parametrize("edge_encoding", [0, 2])
@pytest.mark.parametrize("pool", ["token", "mean"])
def test_model_matches_dense_reference(pool, edge_encoding):
    """GPSModel(attn='graphormer') in float64 = the dense reference: atom embedding + in/out
    degree embeddings (networkx degrees), [graph token first in each graph], two layers that
    share one spatial table (token pairs: its row max_dist + 1) [and one edge encoding, Eq. 7,
    along the smallest shortest path: rings give several], head on the token's final features
    (or on the mean over the graph's nodes)."""
    D = 2
    cfg = config(pool, max_dist=D, edge_encoding=edge_encoding)
    model = randomise(build(cfg, F64), seed=2).train()
    shared = model.layers[0].attn.spatial
    assert all(layer.attn.spatial is shared for layer in model.layers)  # one table, as the paper
    graphs = molecules()
    calls = []
    if edge_encoding:  # Eq. 7 is computed once per forward, for all layers
        model.edge_encoding.register_forward_hook(lambda *args: calls.append(1))
    out = model(prepared(cfg, graphs))
    assert len(calls) == int(edge_encoding > 0)

    E = shared.embedding.weight
    cen = model.centrality
    refs = []
    for d in graphs:
        n = d.num_nodes
        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_edges_from(d.edge_index.t().tolist())
        deg = torch.tensor([G.degree(i) for i in range(n)])
        h = model.node_encoder.emb.weight[d.x.view(-1)]  # atom type embedding
        h = h + cen.z_in.weight[deg] + cen.z_out.weight[deg]
        if pool == "token":
            h = torch.cat([model.graph_token.view(1, C), h])
        B = spatial_bias(E, nx_dist(d), n, D, D, token=pool == "token")
        if edge_encoding:
            B = B + edge_bias(model, d, D, token=pool == "token")
        for layer in model.layers:
            h = ref_gps_graphormer_layer(layer, h, B)
        refs.append(h[0] if pool == "token" else h.mean(0))
    ref = model.head(torch.stack(refs))
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)


def test_model_trains_a_step_and_gradients_reach_every_parameter():
    for pool, ee in (("token", 0), ("mean", 0), ("token", 3), ("mean", 2)):
        cfg = config(pool, max_dist=3, edge_encoding=ee)
        model = build(cfg).train()
        b = prepared(cfg, molecules(seed=1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = (model(b)[:, 0] - b.y).square().mean()
        loss.backward()
        missing = [n for n, p in model.named_parameters()
                   if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
        assert not missing, (pool, missing)
        assert (model.graph_token is not None) == (pool == "token")
        assert model.edge_encoder is None  # GINE's encoder; Eq. 7 has its own
        if ee:
            assert model.edge_encoding.weight.shape == (ee, H, H)
            assert model.spd_edge_encoder.emb.weight.shape == (3, H)
            assert model.edge_encoding.weight.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every hop
        else:  # no new parameters: checkpoints of models without the edge encoding still load
            assert model.edge_encoding is None and model.spd_edge_encoder is None
            assert not [n for n, _ in model.named_parameters() if "edge" in n]
        opt.step()
        assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
        assert model.centrality.max_degree == CENTRALITY_MAX_DEGREE == 64


def permute_graph(d, perm):
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return Data(x=d.x[perm], edge_index=inv[d.edge_index], edge_attr=d.edge_attr, y=d.y,
                num_nodes=d.num_nodes)


@pytest.mark.parametrize("local,edge_encoding", [(None, 0), ("gine", 0), (None, 2), ("gine", 3)])
@pytest.mark.parametrize("pool", ["token", "mean"])
def test_model_is_permutation_invariant_and_keeps_graphs_isolated(pool, local, edge_encoding):
    """Also with message passing beside the attention (edges renumbered around the tokens) and
    with the edge encoding, on forests there (unique shortest paths: the path AddSPD picks
    among several depends on the node numbering)."""
    cfg = config(pool, max_dist=2, edge_encoding=edge_encoding)
    cfg.local = local
    model = randomise(build(cfg, F64), seed=4).eval()
    graphs = (trees if edge_encoding else molecules)(sizes=(7, 5, 8), seed=2)
    out = model(prepared(cfg, graphs))
    g = torch.Generator().manual_seed(0)
    shuffled = [permute_graph(d, torch.randperm(d.num_nodes, generator=g)) for d in graphs]
    torch.testing.assert_close(model(prepared(cfg, shuffled)), out, rtol=1e-10, atol=1e-10)
    # graph order: the outputs follow the graphs
    torch.testing.assert_close(model(prepared(cfg, graphs[::-1])), out.flip(0),
                               rtol=1e-10, atol=1e-10)
    # isolation: other graphs' atoms and size change, graph 0's output does not
    other = (trees if edge_encoding else molecules)(sizes=(7, 11, 3), seed=9)
    other[0] = graphs[0]
    out2 = model(prepared(cfg, other))
    torch.testing.assert_close(out2[0], out[0], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out2[1], out[1])
    # a single Data object is one graph
    one = prepared(cfg, graphs[:1])
    single = cfg.transforms()[0](graphs[0].clone())
    torch.testing.assert_close(model(single), model(one), rtol=1e-10, atol=1e-10)


def test_listed_pairs_beyond_max_dist_take_the_far_bias():
    """Data precomputed with a larger AddSPD(max_dist) gives the same model output: pairs
    beyond the config's max_dist share the far bias, never the graph token's t, and get no edge
    encoding; longer paths (a larger path_len) are read up to the config's edge_encoding."""
    for pool, ee in (("token", 0), ("mean", 0), ("token", 2), ("mean", 3)):
        cfg = config(pool, max_dist=2, edge_encoding=ee)
        model = randomise(build(cfg, F64), seed=5).eval()
        graphs = molecules(sizes=(9, 8), seed=3)
        b_far = Batch.from_data_list([AddSPD(6, path_len=ee + 2)(d.clone()) for d in graphs])
        assert int(b_far.spd_val.max()) >= 4
        torch.testing.assert_close(model(b_far), model(prepared(cfg, graphs)),
                                   rtol=1e-10, atol=1e-10)


def test_missing_spd_attributes_name_the_transform():
    model = build(config("token"))
    b = Batch.from_data_list(molecules())
    with pytest.raises(ValueError, match=r"no 'in_degree'; add gtpe\.transforms\.AddSPD"):
        model(b)
    b = AddSPD(2)(b)
    del b.spd_val
    with pytest.raises(ValueError, match=r"no 'spd_val'; add gtpe\.transforms\.AddSPD"):
        model(b)
    # the edge encoding needs AddSPD's paths, from the same AddSPD, and edge features
    model = build(config("token", edge_encoding=2))
    b = AddSPD(2)(Batch.from_data_list(molecules()))
    with pytest.raises(ValueError, match=r"no 'spd_path_index'; add "
                                         r"gtpe\.transforms\.AddSPD\(max_dist=\.\.\., path_len=2\)"):
        model(b)
    b.spd_path_index = AddSPD(3, path_len=2)(Batch.from_data_list(molecules())).spd_path_index
    with pytest.raises(ValueError, match=r"spd_path_index must have one column per spd_index pair"):
        model(b)
    b = AddSPD(2, path_len=1)(Batch.from_data_list(molecules()))
    with pytest.raises(ValueError, match=r"path_len >= 2 \(gtpe\.transforms\.AddSPD"):
        model(b)
    b = AddSPD(2, path_len=2)(Batch.from_data_list(molecules()))
    del b.edge_attr
    with pytest.raises(ValueError, match=r"no 'edge_attr'; add edge features"):
        model(b)


def test_config_spd_and_token():
    c = GPSModelConfig(attn="graphormer", local=None)
    assert c.spd_config == SPDConfig(max_dist=5)  # the default, like GRIT's RRWP
    assert [repr(t) for t in c.transforms()] == [repr(AddSPD(max_dist=5))]
    c = config(max_dist=7)
    assert [repr(t) for t in c.transforms()] == [repr(AddSPD(max_dist=7))]
    c = config(max_dist=7, edge_encoding=4)
    assert [repr(t) for t in c.transforms()] == [repr(AddSPD(max_dist=7, path_len=4))]
    assert GPSModelConfig.from_dict(c.to_dict()) == c
    assert GPSModelConfig.from_dict(c.to_dict()) == c
    # used with attn='graphormer' only; left out of to_dict while unset (old experiment hashes)
    full = GPSModelConfig(attn="full", pe={"spd": {"max_dist": 3}})
    assert full.spd_config is None and full.transforms() == []
    assert "spd" not in GPSModelConfig().to_dict()["pe"]
    with pytest.raises(ConfigError, match="max_dist must be a positive integer"):
        SPDConfig(max_dist=0)
    with pytest.raises(ConfigError, match="pool='token'.*needs attn='graphormer'"):
        GPSModelConfig(attn="full", pool="token")
    with pytest.raises(ConfigError, match="pool='token'.*needs graph_level=True"):
        GPSModel(config("token"), out_dim=1, node_input="embedding", node_in_dim=6,
                 edge_input=None, graph_level=False)
    with pytest.raises(ConfigError, match=r"edge_encoding > 0 .* needs edge features, got "
                                          r"edge_input=None"):
        GPSModel(config("token", edge_encoding=2), out_dim=1, node_input="embedding",
                 node_in_dim=6, edge_input=None)
    tokengt = GPSModelConfig(arch="tokengt", local=None, attn="full", norm="layer",
                             pool="token", pe={"orf": {"dim": 8}})
    with pytest.raises(ConfigError, match=r"^GPSModel: arch 'tokengt' is another model class; build it "
                                          r"with gtpe\.models\.model_class\(config\)$"):
        GPSModel(tokengt, out_dim=1, node_input="embedding", node_in_dim=6, edge_input=None)
    # with the token the layers hold one more row (t) than max_dist
    assert build(config("token", max_dist=3)).layers[0].attn.max_dist == 4
    assert build(config("mean", max_dist=3)).layers[0].attn.max_dist == 3


# -- training and the shipped config ---------------------------------------------------------
@pytest.mark.parametrize("edge_encoding", [0, 3])
def test_one_epoch_zinc_training_with_graphormer(tmp_path, edge_encoding):
    from gtpe.train.config import load_config
    from gtpe.train.loop import train

    spd = {"max_dist": 4, "edge_encoding": edge_encoding}
    cfg = load_config(data={
        "dataset": {"name": "zinc", "limit": 64},
        "model": {"channels": 16, "num_layers": 2, "local": None, "attn": "graphormer",
                  "heads": 4, "norm": "layer", "pool": "token", "pe": {"spd": spd}},
        "train": {"epochs": 1, "batch_size": 32, "scheduler": "none", "device": "cpu"},
    })
    results = train(cfg, tmp_path / "run", progress=False)
    assert results["epochs"] == 1 and math.isfinite(results["test"]) and results["test"] > 0


def test_shipped_graphormer_config_builds_the_stated_model():
    """configs/zinc/graphormer+spd.yaml: attention only, 8 heads of 10, LayerNorm, graph token,
    AddSPD(22, path_len=5) with the edge encoding, and the parameter count its header states."""
    from gtpe.datasets import dataset_info
    from gtpe.train.config import load_config
    from gtpe.train.loop import build_model

    path = REPO / "configs" / "zinc" / "graphormer+spd.yaml"
    cfg = load_config(path)
    model = build_model(cfg, dataset_info("zinc"))
    assert "332,313 parameters" in path.read_text()
    assert sum(p.numel() for p in model.parameters()) == 332_313
    assert [repr(t) for t in cfg.model.transforms()] == [repr(AddSPD(max_dist=22, path_len=5))]
    assert model.graph_token is not None and model.layers[0].attn.max_dist == 23
    # Eq. 7 over the first 5 edges (Graphormer's multi_hop_max_dist on ZINC), 8 heads
    assert repr(model.edge_encoding) == "GraphormerEdgeEncoding(heads=8, path_len=5)"
    assert model.spd_edge_encoder.emb.weight.shape == (4, 8)
    for layer in model.layers:
        assert layer.local is None and isinstance(layer.attn, GraphormerAttention)
        assert layer.attn.heads == 8 and isinstance(layer.norm3, torch.nn.LayerNorm)
