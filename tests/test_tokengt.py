"""TokenGT as a gtpe model (gtpe.models.TokenGTModel, gtpe.nn.tokengt, gtpe.nn.TransformerLayer):
a dense float64 reference written from the paper's equations (tokens built per graph by hand,
plain per-graph softmax attention), invariances, batch isolation, gradients, the node
identifiers (ORF, LapPE sign flips), errors, a one-epoch ZINC run and the shipped config."""

import math
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.models import ConfigError, GPSModel, GPSModelConfig, TokenGTModel, model_class
from gtpe.nn import (
    LapNodeIdentifier,
    LinearAttention,
    ORFNodeIdentifier,
    TransformerLayer,
    orthonormal_random_features,
)
from gtpe.nn.tokengt import token_layout
from gtpe.transforms import AddLapPE

pytestmark = pytest.mark.usefixtures("one_thread")

C, H, K = 16, 4, 4
F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


# -- graphs ----------------------------------------------------------------------------------
def molecules(sizes=(6, 3, 4), seed=0, edgeless=(2,)):
    """Graphs with atom and bond types, both edge directions listed, AddLapPE(K) node ids:
    graph 1 has N <= K (zero-padded eigenvectors), the graphs in ``edgeless`` have no edges."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        if i in edgeless:
            ei = torch.empty(2, 0, dtype=torch.long)
        else:
            s = torch.arange(n - 1)
            extra = torch.randint(0, n, (2, n // 2), generator=g)
            ei = torch.cat([torch.stack([s, s + 1]), extra], 1)
            ei = ei[:, ei[0] != ei[1]]
            ei = torch.cat([ei, ei.flip(0)], 1)
        d = Data(
            x=torch.randint(0, 6, (n, 1), generator=g),
            edge_index=ei,
            edge_attr=torch.randint(0, 3, (ei.size(1),), generator=g),
            y=torch.randn(1, generator=g),
            num_nodes=n,
        )
        out.append(AddLapPE(K)(d))
    return out


def batch(graphs):
    return Batch.from_data_list([d.clone() for d in graphs])


def config(pool="token", attn="full", node_id="lap", layers=2, **kw):
    pe = {"lap": {"k": K, "dim": 4}} if node_id == "lap" else {"orf": {"dim": K}}
    return GPSModelConfig.from_dict(dict(
        channels=C, num_layers=layers, local=None, attn=attn, heads=H, norm="layer", pool=pool,
        arch="tokengt", pe=pe, **kw))


def build(cfg, dtype=torch.float32, seed=0, edges=True, graph_level=True):
    torch.manual_seed(seed)
    m = TokenGTModel(cfg, out_dim=3, node_input="embedding", node_in_dim=6,
                     edge_input="embedding" if edges else None, edge_in_dim=3,
                     graph_level=graph_level)
    return m.to(dtype)


def randomise(module, seed=0):
    """Non-trivial values for every parameter (biases, LayerNorm affine parameters, tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[-1]))
    return module


# -- the dense reference ---------------------------------------------------------------------
def lin(layer, t):
    return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def layer_norm(norm, t):
    mean = t.mean(-1, keepdim=True)
    var = t.var(-1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gelu(t):
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))


def attention(fa, t):
    """Multi-head softmax self-attention over all tokens of one graph."""
    n, d = t.size(0), fa.head_dim
    q, k, v = (t @ fa.in_proj_weight.T + fa.in_proj_bias).view(n, 3, H, d).unbind(1)
    S = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d)
    return lin(fa.out_proj, torch.einsum("hij,jhd->ihd", S.softmax(-1), v).reshape(n, -1))


def reference(model, d, pool, graph_level=True):
    """TokenGT on one graph from the equations: tokens [graph token; X_v + W_p[P_v||P_v] + E^V;
    X_uv + W_p[P_u||P_v] + E^E], pre-LN layers, final LN, readout, head."""
    tok = model.tokenizer
    n = d.num_nodes
    P = d.lap_pe.double()
    X = model.node_encoder.emb.weight[d.x.view(-1)]
    u, v = d.edge_index
    if model.edge_encoder is not None:
        Xe = model.edge_encoder.emb.weight[d.edge_attr.view(-1)]
    else:
        Xe = tok.edge_feature.expand(u.numel(), C)
    Wp = tok.id_proj.weight
    EV, EE = tok.type_emb.weight
    nodes = X + torch.cat([P, P], 1) @ Wp.T + EV
    edges = Xe + torch.cat([P[u], P[v]], 1) @ Wp.T + EE
    h = torch.cat([tok.graph_token.view(1, C), nodes, edges])
    for layer in model.layers:
        h = h + attention(layer.attn, layer_norm(layer.norm1, h))
        h = h + lin(layer.lin2, gelu(lin(layer.lin1, layer_norm(layer.norm2, h))))
    z = layer_norm(model.norm, h)
    if not graph_level:
        r = z[1 : 1 + n]
    elif pool == "token":
        r = z[:1]
    elif pool == "mean":
        r = z[1 : 1 + n].mean(0, keepdim=True)
    else:
        r = z[1 : 1 + n].sum(0, keepdim=True)
    return lin(model.head[2], lin(model.head[0], r).relu())


@pytest.mark.parametrize(
    "pool,graph_level,edges",
    [("token", True, True), ("mean", True, True), ("add", True, False), ("mean", False, False)],
)
def test_model_matches_dense_reference(pool, graph_level, edges):
    """Eval mode, float64, three graphs: one with N <= k (padded eigenvectors), one without
    edges; edge_input=None gives every edge token the learned constant."""
    cfg = config(pool)
    model = randomise(build(cfg, F64, edges=edges, graph_level=graph_level), seed=1).eval()
    graphs = molecules()
    assert graphs[1].num_nodes <= K and graphs[2].edge_index.size(1) == 0
    assert (graphs[1].lap_pe[:, -1] == 0).all()  # the padding is in the data
    out = model(batch(graphs))
    ref = torch.cat([reference(model, d, pool, graph_level) for d in graphs])
    assert out.shape == ((3, 3) if graph_level else (sum(d.num_nodes for d in graphs), 3))
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)


def permute_graph(d, perm):
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return Data(x=d.x[perm], edge_index=inv[d.edge_index], edge_attr=d.edge_attr, y=d.y,
                lap_pe=d.lap_pe[perm], num_nodes=d.num_nodes)


def shuffle_edges(d, perm):
    return Data(x=d.x, edge_index=d.edge_index[:, perm], edge_attr=d.edge_attr[perm], y=d.y,
                lap_pe=d.lap_pe, num_nodes=d.num_nodes)


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_invariances_and_batch_isolation(pool):
    """Node permutation (x, edge_index, lap_pe permuted together), edge order, graph order and
    the other graphs of the batch do not change a graph's output."""
    model = randomise(build(config(pool), F64), seed=2).eval()
    graphs = molecules(sizes=(7, 5, 8), seed=3, edgeless=())
    out = model(batch(graphs))
    g = torch.Generator().manual_seed(0)
    permuted = [permute_graph(d, torch.randperm(d.num_nodes, generator=g)) for d in graphs]
    torch.testing.assert_close(model(batch(permuted)), out, rtol=1e-10, atol=1e-10)
    shuffled = [shuffle_edges(d, torch.randperm(d.edge_index.size(1), generator=g))
                for d in graphs]
    torch.testing.assert_close(model(batch(shuffled)), out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(batch(graphs[::-1])), out.flip(0), rtol=1e-10, atol=1e-10)
    other = molecules(sizes=(9, 4, 7), seed=5)
    out2 = model(batch([other[0], graphs[1], other[1]]))
    torch.testing.assert_close(out2[1], out[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(graphs[1]), out[1:2], rtol=1e-10, atol=1e-10)  # one Data


def test_node_level_output_follows_the_nodes():
    model = randomise(build(config("mean"), F64, graph_level=False), seed=3).eval()
    graphs = molecules(sizes=(6, 5), seed=4, edgeless=())
    out = model(batch(graphs))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    out_p = model(batch([permute_graph(graphs[0], perm), graphs[1]]))
    torch.testing.assert_close(out_p[:6], out[:6][perm], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_p[6:], out[6:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("node_id,pool,edges", [("lap", "token", True), ("orf", "mean", False)])
def test_gradients_reach_every_parameter(node_id, pool, edges):
    cfg = config(pool, node_id=node_id)
    model = build(cfg, edges=edges).train()
    b = batch(molecules(seed=1))
    loss = model(b).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not missing
    assert (model.tokenizer.edge_feature is None) == edges


# -- tokens ----------------------------------------------------------------------------------
def test_token_layout_orders_graph_nodes_edges_per_graph():
    """[graph token, nodes, edges] per graph, graphs in order, sorted token batch; edges keep
    their order within their graph even when edge_index interleaves graphs."""
    b = torch.tensor([0, 0, 1, 1, 1])
    ei = torch.tensor([[2, 0, 3, 1], [3, 1, 4, 0]])  # graph 1, graph 0, graph 1, graph 0
    lay = token_layout(b, ei, 2)
    assert lay.graph_pos.tolist() == [0, 5] and lay.num_tokens == 2 + 5 + 4
    assert lay.node_pos.tolist() == [1, 2, 6, 7, 8]
    assert lay.edge_pos.tolist() == [9, 3, 10, 4]
    assert lay.batch.tolist() == [0] * 5 + [1] * 6
    with pytest.raises(ValueError, match="different graphs"):
        token_layout(b, torch.tensor([[0], [3]]), 2)


# -- node identifiers ------------------------------------------------------------------------
def test_orthonormal_random_features():
    """Rows orthonormal for n <= d (zero columns beyond n), columns orthonormal for n > d;
    a generator makes the draw reproducible; seed mode: one matrix per size, whatever the batch."""
    d = 4
    sizes = [3, 4, 7, 1, 0, 7]
    P = orthonormal_random_features(sizes, d, dtype=F64)
    assert P.shape == (sum(sizes), d)
    start = 0
    for n in sizes:
        Pg = P[start : start + n]
        start += n
        if n == 0:
            continue
        if n <= d:
            torch.testing.assert_close(Pg @ Pg.T, torch.eye(n, dtype=F64))
            assert (Pg[:, n:] == 0).all()
        else:
            torch.testing.assert_close(Pg.T @ Pg, torch.eye(d, dtype=F64))
    # the construction: first d columns of Q diag(sign(diag R)), Q R = a Gaussian draw
    A = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    Q, R = torch.linalg.qr(A)
    expected = (Q * torch.diagonal(R, dim1=-2, dim2=-1).sign().unsqueeze(-2))[0, :, :d]
    got = orthonormal_random_features([6], d, torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    a = orthonormal_random_features(sizes, d, torch.Generator().manual_seed(3))
    assert torch.equal(a, orthonormal_random_features(sizes, d, torch.Generator().manual_seed(3)))
    assert not torch.equal(a[7:14], a[15:22])  # two graphs of 7 nodes: two draws
    s = orthonormal_random_features([3, 7, 7], d, seed=5)
    assert torch.equal(s[3:10], s[10:17])
    assert torch.equal(orthonormal_random_features([7], d, seed=5), s[3:10])
    assert not torch.allclose(orthonormal_random_features([7], d, seed=6), s[3:10])


def test_orf_identifiers_fixed_in_eval_fresh_in_training():
    ident = ORFNodeIdentifier(K, seed=0)
    b = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1])
    ident.eval()
    torch.testing.assert_close(ident(b, 2), ident(b, 2), rtol=0, atol=0)
    ident.train()
    assert not torch.allclose(ident(b, 2), ident(b, 2))
    # the model: deterministic evaluation, graph isolation in eval, new draws in training
    model = build(config("token", node_id="orf"), F64).eval()
    graphs = molecules(seed=2)
    out = model(batch(graphs))
    torch.testing.assert_close(model(batch(graphs)), out, rtol=0, atol=0)
    torch.testing.assert_close(model(graphs[0]), out[:1], rtol=1e-10, atol=1e-10)
    model.train()
    assert not torch.allclose(model(batch(graphs)), model(batch(graphs)))


def test_lap_sign_flip_only_in_training():
    ident = LapNodeIdentifier(K)
    graphs = molecules(sizes=(6, 5, 7), edgeless=())
    b = batch(graphs)
    ident.eval()
    assert torch.equal(ident(b.lap_pe, b.batch, 3), b.lap_pe)
    ident.train()
    torch.manual_seed(0)
    seen = set()
    for _ in range(8):
        P = ident(b.lap_pe, b.batch, 3)
        for g in range(3):
            rows = b.batch == g
            ratio = P[rows] / b.lap_pe[rows]  # one sign per graph and eigenvector
            assert ((ratio == 1) | (ratio == -1)).all()
            assert (ratio == ratio[:1]).all()
            seen.update(ratio[0].tolist())
    assert seen == {1.0, -1.0}
    model = randomise(build(config("token"), F64), seed=6)
    model.eval()
    torch.testing.assert_close(model(b), model(b), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(b), model(b))


# -- errors, linear attention, the factory ---------------------------------------------------
def test_errors_and_factory():
    model = build(config("token"))
    b = batch(molecules())
    del b.lap_pe
    with pytest.raises(ValueError, match=r"no 'lap_pe'.*gtpe\.transforms\.AddLapPE\(k=4\)"):
        model(b)
    b.lap_pe = torch.zeros(b.num_nodes, K + 1)
    with pytest.raises(ValueError, match=r"lap_pe of shape \[N, 4\].*AddLapPE\(k=4\)"):
        model(b)
    gps = GPSModelConfig(channels=C, heads=H)
    with pytest.raises(ConfigError, match="arch='tokengt'"):
        TokenGTModel(gps, out_dim=1, node_input="embedding", node_in_dim=6, edge_input=None)
    assert model_class(gps) is GPSModel and model_class(config()) is TokenGTModel
    with pytest.raises(ValueError, match="attn must be one of"):
        TransformerLayer(C, H, attn="gt")


def test_directed_models_tokenise_edges_as_given():
    """directed=True changes nothing (one token per listed edge either way); reversing the
    edges changes the output (identifiers [P_u || P_v] are ordered)."""
    graphs = [Data(x=d.x, edge_index=d.edge_index[:, : d.edge_index.size(1) // 2],
                   edge_attr=d.edge_attr[: d.edge_index.size(1) // 2], lap_pe=d.lap_pe,
                   num_nodes=d.num_nodes) for d in molecules(sizes=(6, 5), edgeless=())]
    b = batch(graphs)
    model = randomise(build(config("token"), F64), seed=7).eval()
    torch.manual_seed(0)
    directed = TokenGTModel(config("token"), out_dim=3, node_input="embedding", node_in_dim=6,
                            edge_input="embedding", edge_in_dim=3, directed=True).double()
    directed.load_state_dict(model.state_dict())
    out = model(b)
    torch.testing.assert_close(directed.eval()(b), out, rtol=0, atol=0)
    b.edge_index = b.edge_index.flip(0)
    assert not torch.allclose(model(b), out)


def test_transformer_layer_dropout_only_in_training():
    layer = TransformerLayer(C, H, dropout=0.5)
    x, bt = torch.randn(7, C), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    ref = layer.eval()(x, bt)
    torch.testing.assert_close(layer(x, bt), ref, rtol=0, atol=0)
    assert not torch.allclose(layer.train()(x, bt), ref)


def test_linear_attention_path_runs():
    model = build(config("mean", attn="linear", node_id="orf"))
    assert all(isinstance(layer.attn, LinearAttention) for layer in model.layers)
    assert "attn='linear'" in repr(model.layers[0])
    out = model(batch(molecules()))
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.layers[0].attn.in_proj_weight.grad.abs().sum() > 0


# -- training and the shipped config ---------------------------------------------------------
SHIPPED = REPO / "configs" / "zinc" / "tokengt+lappe.yaml"


def test_one_epoch_zinc_training_with_the_shipped_config(tmp_path):
    from gtpe.train.config import load_config
    from gtpe.train.loop import train

    cfg = load_config(SHIPPED, overrides=["train.epochs=1", "dataset.limit=64",
                                          "model.num_layers=2", "train.device=cpu"])
    results = train(cfg, tmp_path / "run", progress=False)
    assert results["epochs"] == 1 and math.isfinite(results["test"]) and results["test"] > 0


def test_shipped_config_builds_the_stated_model():
    """configs/zinc/tokengt+lappe.yaml: TokenGT with AddLapPE(16) identifiers, 8 heads,
    the graph token, and the parameter count its header states (also gtpe bench's count)."""
    from gtpe.datasets import dataset_info
    from gtpe.train.config import load_config
    from gtpe.train.grid import param_count
    from gtpe.train.loop import build_model

    cfg = load_config(SHIPPED)
    model = build_model(cfg, dataset_info("zinc"))
    assert isinstance(model, TokenGTModel)
    n = sum(p.numel() for p in model.parameters())
    assert f"{n:,} parameters" in SHIPPED.read_text()
    assert param_count(cfg) == n
    assert param_count(cfg, channels=64) < n
    assert [repr(t) for t in cfg.model.transforms()] == [repr(AddLapPE(k=16))]
    assert model.node_id.k == 16 and model.config.pool == "token"
    assert all(layer.heads == 8 for layer in model.layers)
