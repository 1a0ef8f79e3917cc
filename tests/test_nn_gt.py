"""GT (Dwivedi & Bresson 2020): GTAttention and GPSLayer(attn='gt') against float64 references
written from the paper's equations (loops over edges and heads), equivariance, graph isolation,
gradients, nodes without in-edges, errors, the model wiring and a short ZINC training run."""

import math

import pytest
import torch

from gtpe.models import GPSModel, GPSModelConfig
from gtpe.nn import GPSLayer, GTAttention

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
C, H = 8, 2
F64 = torch.float64


def graphs(sizes, seed=0, edge_dim=C, isolated=True, device="cpu"):
    """Random directed multigraph-free edge sets per graph (block-diagonal batch); with
    ``isolated`` the last node of the first graph has no incoming edge."""
    g = torch.Generator().manual_seed(seed)
    eis, off = [], 0
    for k, n in enumerate(sizes):
        keep = torch.rand(n, n, generator=g) < 0.45
        keep.fill_diagonal_(False)
        if isolated and k == 0:
            keep[n - 1, :] = False  # keep[i, j]: edge j -> i
        i, j = keep.nonzero().T
        eis.append(torch.stack([j, i]) + off)
        off += n
    ei = torch.cat(eis, 1)
    perm = torch.randperm(ei.size(1), generator=g)  # edges in no particular order
    ei = ei[:, perm]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(off, C, generator=g, dtype=F64)
    ea = torch.randn(ei.size(1), edge_dim, generator=g, dtype=F64) if edge_dim else None
    mv = (lambda t: None if t is None else t.to(device))
    return mv(x), mv(ei), mv(batch), mv(ea)


def randomise(module, seed=0, scale=1.0):
    """Non-trivial values for every parameter (biases, norm affine parameters included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / math.sqrt(p.shape[-1]))
    return module


def lin(layer, t):
    return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def batch_norm_train(bn, t):
    mean = t.mean(0)
    var = t.var(0, unbiased=False)
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def ref_attention(m, x, ei, ea, clamp, eps=0.0, aggregate=False):
    """The paper's equations, one edge and one head at a time: (x_out, w_hat [E, C], s [E, H]);
    ``eps`` is added to the softmax denominator (the paper's code: 1e-6); ``aggregate``: return
    the aggregate before ``out_proj`` instead of x_out."""
    N, E = x.size(0), ei.size(1)
    Hh, D = m.heads, m.head_dim
    W = m.in_proj_weight
    b = m.in_proj_bias if m.in_proj_bias is not None else torch.zeros(3 * m.channels, dtype=x.dtype)
    Q = x @ W[: m.channels].T + b[: m.channels]
    K = x @ W[m.channels : 2 * m.channels].T + b[m.channels : 2 * m.channels]
    V = x @ W[2 * m.channels :].T + b[2 * m.channels :]
    Ee = lin(m.edge_proj, ea) if ea is not None else None
    w_hat = torch.zeros(E, m.channels, dtype=x.dtype)
    s = torch.zeros(E, Hh, dtype=x.dtype)
    for e in range(E):
        j, i = int(ei[0, e]), int(ei[1, e])
        for h in range(Hh):
            sl = slice(h * D, (h + 1) * D)
            vec = Q[i, sl] * K[j, sl] / math.sqrt(D)
            if Ee is not None:
                vec = vec * Ee[e, sl]
            w_hat[e, sl] = vec
            sc = vec.sum()
            s[e, h] = sc.clamp(-clamp, clamp) if clamp is not None else sc
    agg = torch.zeros(N, m.channels, dtype=x.dtype)
    for i in range(N):
        inc = [e for e in range(E) if int(ei[1, e]) == i]
        for h in range(Hh):
            sl = slice(h * D, (h + 1) * D)
            if not inc:
                continue  # no incoming edge: nothing to aggregate
            z = sum(torch.exp(s[e, h]) for e in inc) + eps
            for e in inc:
                agg[i, sl] += torch.exp(s[e, h]) / z * V[int(ei[0, e]), sl]
    return (agg if aggregate else lin(m.out_proj, agg)), w_hat, s


def test_gt_softmax_is_within_1_5e_4_of_the_papers_code():
    """The paper's code divides by sum exp(s) + 1e-6; with the clamp that changes every
    aggregate by a relative 1e-6 / (z + 1e-6) < 1.5e-4 (z >= exp(-5))."""
    m = GTAttention(C, heads=H, edge_dim=C).double()
    randomise(m, seed=3, scale=6.0)
    x, ei, batch, ea = graphs([7, 5], seed=1)
    mine, _, s = ref_attention(m, x, ei, ea, 5.0, aggregate=True)
    theirs, _, _ = ref_attention(m, x, ei, ea, 5.0, eps=1e-6, aggregate=True)
    assert (s <= -4.9).any()  # some scores near the bottom of the clamp (small z)
    rel = ((mine - theirs).abs() / mine.abs().clamp_min(1e-300)).max()
    assert 1e-8 < rel < 1.5e-4
    torch.testing.assert_close(m(x, ei, ea)[0], lin(m.out_proj, mine), rtol=1e-10, atol=1e-10)


def ref_edge_update(m, ea, w_hat):
    e1 = batch_norm_train(m.edge_norm1, ea + lin(m.edge_out_proj, w_hat))
    ffn = lin(m.edge_mlp[3], lin(m.edge_mlp[0], e1).relu())
    return batch_norm_train(m.edge_norm2, e1 + ffn)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "edge_dim,update_edges,clamp,bias",
    [(C, True, 5.0, False), (C, False, 5.0, True), (5, False, None, False), (None, False, 5.0, True)],
)
def test_gt_attention_matches_paper_equations(device, edge_dim, update_edges, clamp, bias):
    torch.manual_seed(0)
    m = GTAttention(
        C, heads=H, edge_dim=edge_dim, update_edges=update_edges, clamp=clamp, bias=bias
    ).double()
    randomise(m, scale=4.0)  # large scores: the clamp is active on some edges
    x, ei, batch, ea = graphs([7, 5], edge_dim=edge_dim)
    out, e_out = m.to(device).train()(x.to(device), ei.to(device), None if ea is None else ea.to(device))
    m = m.cpu()
    ref, w_hat, s = ref_attention(m, x, ei, ea, clamp)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    raw = w_hat.view(-1, H, C // H).sum(-1)
    assert (raw.abs() > 5).any() and (raw.abs() < 5).any()  # both sides of the clamp are tested
    if update_edges:
        torch.testing.assert_close(e_out.cpu(), ref_edge_update(m, ea, w_hat), rtol=1e-10, atol=1e-10)
    else:
        assert e_out is None


def test_gpslayer_gt_is_the_papers_layer():
    """GPSLayer(local=None, attn='gt', norm='batch') in training mode = the paper's full layer:
    h' = BN(h + O_h(attn)), h'' = BN(h' + FFN_h(h')) and the edge stream, from the equations."""
    torch.manual_seed(0)
    layer = GPSLayer(C, local=None, attn="gt", heads=H, norm="batch").double().train()
    randomise(layer, seed=1, scale=2.0)
    assert layer.attn.update_edges and layer.attn.edge_dim == C
    x, ei, batch, ea = graphs([6, 4, 5], seed=3)
    state = {}
    out = layer(x, ei, batch, ea, state=state)
    a, w_hat, _ = ref_attention(layer.attn, x, ei, ea, 5.0)
    h1 = batch_norm_train(layer.norm2, x + a)
    ffn = lin(layer.mlp[3], lin(layer.mlp[0], h1).relu())
    torch.testing.assert_close(out, batch_norm_train(layer.norm3, h1 + ffn), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        state["edge_attr"], ref_edge_update(layer.attn, ea, w_hat), rtol=1e-10, atol=1e-10
    )
    # the next layer reads the updated edge features from the state
    layer2 = GPSLayer(C, local="gine", attn="gt", heads=H).double().eval()
    y = layer2(out, ei, batch, ea, state=dict(state))
    assert not torch.allclose(y, layer2(out, ei, batch, ea, state={}))


def _relabel(ei, perm):
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv[ei]


@pytest.mark.parametrize("device", DEVICES)
def test_gt_permutation_equivariance_and_graph_isolation(device):
    torch.manual_seed(0)
    m = GTAttention(C, heads=H, edge_dim=C, update_edges=True).double().to(device).eval()
    randomise(m, seed=2)
    x, ei, batch, ea = graphs([6, 7, 4], seed=5, device=device)
    out, e_out = m(x, ei, ea)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(x.size(0), generator=g).to(device)
    eperm = torch.randperm(ei.size(1), generator=g).to(device)
    pout, pe_out = m(x[perm], _relabel(ei, perm)[:, eperm], ea[eperm])
    torch.testing.assert_close(pout, out[perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pe_out, e_out[eperm], rtol=1e-12, atol=1e-12)
    # graph 1 changes, graphs 0 and 2 (nodes and edges) do not
    other = batch.to(device) == 1
    eo = other[ei[1]]
    x2, ea2 = x.clone(), ea.clone()
    x2[other] = torch.randn_like(x2[other]) * 3
    ea2[eo] += 1.0
    out2, e_out2 = m(x2, ei, ea2)
    torch.testing.assert_close(out2[~other], out[~other], rtol=0, atol=1e-12)
    torch.testing.assert_close(e_out2[~eo], e_out[~eo], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[other], out[other])
    assert not torch.allclose(e_out2[eo], e_out[eo])


@pytest.mark.parametrize("update_edges", [True, False])
def test_gt_gradients_reach_every_parameter(update_edges):
    torch.manual_seed(0)
    m = GTAttention(
        C, heads=H, dropout=0.1, edge_dim=C, update_edges=update_edges, edge_dropout=0.1, bias=True
    ).train()
    x, ei, batch, ea = (t.float() if t.is_floating_point() else t for t in graphs([6, 5], seed=2))
    out, e_out = m(x, ei, ea)
    loss = (out * torch.randn_like(out)).sum()
    if update_edges:
        loss = loss + (e_out * torch.randn_like(e_out)).sum()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert (e_out is None) == (not update_edges)


def test_node_without_in_edges_gets_out_proj_bias():
    """A node without incoming edges aggregates nothing: its output is O_h(0) = out_proj.bias,
    finite, with finite gradients; a graph without any edge too."""
    m = GTAttention(C, heads=H, edge_dim=C, update_edges=True).double().train()
    randomise(m, seed=4)
    x, ei, batch, ea = graphs([5, 4], seed=6)
    n = 4  # the last node of graph 0
    assert not (ei[1] == n).any() and (ei[0] == n).any()
    x.requires_grad_(True)
    out, e_out = m(x, ei, ea)
    torch.testing.assert_close(out[n], m.out_proj.bias, rtol=0, atol=0)
    assert not torch.allclose(out[n - 1], m.out_proj.bias)
    (out.sum() + e_out.sum()).backward()
    assert torch.isfinite(x.grad).all()
    # no edges at all
    empty = torch.empty(2, 0, dtype=torch.long)
    out0, e0 = m.eval()(x.detach(), empty, ea[:0])
    torch.testing.assert_close(out0, m.out_proj.bias.expand(x.size(0), C))
    assert e0.shape == (0, C)


def test_gt_errors_and_repr():
    x = torch.randn(3, C)
    ei = torch.tensor([[0, 1], [1, 2]])
    m = GTAttention(C, heads=H, edge_dim=3)
    bad = [
        (lambda: m(x, ei), "edge_attr is required"),
        (lambda: m(x, ei, torch.randn(3, 3)), r"edge_attr must be"),
        (lambda: m(x, ei, torch.zeros(2, 3, dtype=torch.long)), r"edge_attr must be"),
        (lambda: m(torch.randn(3, 5), ei, torch.randn(2, 3)), r"expected x"),
        (lambda: m(x, ei.float(), torch.randn(2, 3)), "edge_index must be an integer"),
        (lambda: m(x, ei[:1], torch.randn(2, 3)), r"edge_index must be \[2, E\]"),
        (lambda: GTAttention(C, heads=H)(x, ei, torch.randn(2, 3)), "edge_dim=None"),
        (lambda: GTAttention(C, heads=3), "multiple of heads"),
        (lambda: GTAttention(C, heads=H, dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: GTAttention(C, heads=H, edge_dim=0), "edge_dim must be"),
        (lambda: GTAttention(C, heads=H, edge_dim=3, update_edges=True), "update_edges=True"),
        (lambda: GTAttention(C, heads=H, update_edges=True), "update_edges=True"),
        (lambda: GTAttention(C, heads=H, clamp=0), "clamp must be"),
        (lambda: GTAttention(C, heads=H, edge_norm="group"), "unknown edge_norm"),
        (lambda: GPSLayer(C, local="gatedgcn", attn="gt", attn_kwargs={"update_edges": True}),
         "both would update"),
        (lambda: GPSLayer(C, local=None, attn="gt", norm="group"), "GPSLayer: unknown norm"),
    ]
    for fn, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fn()
    assert repr(m) == (
        "GTAttention(8, heads=2, dropout=0.0, edge_dim=3, update_edges=False, clamp=5.0)"
    )
    # GPSLayer: edge features required unless built without them
    layer = GPSLayer(C, local=None, attn="gt", heads=H)
    with pytest.raises(ValueError, match="edge_dim': None"):
        layer(x, ei, None, None)
    layer = GPSLayer(C, local=None, attn="gt", heads=H, attn_kwargs={"edge_dim": None})
    assert layer(x, ei, None, None).shape == x.shape and layer.attn.update_edges is False
    with pytest.raises(ValueError, match=r"edge_attr must be \[E, channels\] = \[2, 8\]"):
        GPSLayer(C, local=None, attn="gt", heads=H)(x, ei, None, torch.randn(2, 5))
    # beside GatedGCN (which updates the edges) GT only reads them
    assert GPSLayer(C, local="gatedgcn", attn="gt", heads=H).attn.update_edges is False
    assert GPSLayer(C, local="gine", attn="gt", heads=H, edge_dim=5).attn.update_edges is False


def test_gt_compiles_aot_eager():
    torch._dynamo.reset()
    m = GTAttention(C, heads=H, edge_dim=C, update_edges=True).train()
    x, ei, batch, ea = (t.float() if t.is_floating_point() else t for t in graphs([4, 5], seed=7))
    compiled = torch.compile(m, backend="aot_eager")
    out, e = compiled(x, ei, ea)
    ref, e_ref = m(x, ei, ea)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e, e_ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ model
def test_gps_model_wires_gt():
    """GT = GPSModel(local=None, attn='gt'): edge encoder built, the edge stream updated in
    every layer but the last (whose edge output nobody reads), no edge features without them."""
    cfg = GPSModelConfig(channels=16, num_layers=3, local=None, attn="gt", heads=4)
    kw = dict(out_dim=1, node_input="embedding", node_in_dim=6)
    model = GPSModel(cfg, edge_input="embedding", edge_in_dim=3, **kw)
    assert model.edge_encoder is not None
    assert [layer.attn.update_edges for layer in model.layers] == [True, True, False]
    assert all(layer.attn.edge_dim == 16 for layer in model.layers)
    bare = GPSModel(cfg, edge_input=None, **kw)
    assert bare.edge_encoder is None and all(la.attn.edge_dim is None for la in bare.layers)
    gated = GPSModel(
        GPSModelConfig(channels=16, num_layers=2, local="gatedgcn", attn="gt"),
        edge_input="embedding", edge_in_dim=3, **kw,
    )
    assert [la.attn.update_edges for la in gated.layers] == [False, False]


def test_one_epoch_zinc_training_with_gt(tmp_path):
    from gtpe.train.config import load_config
    from gtpe.train.loop import train

    config = load_config(
        data={
            "dataset": {"name": "zinc", "limit": 64},
            "model": {"channels": 16, "num_layers": 2, "local": None, "attn": "gt", "heads": 4,
                      "pe": {"lap": {"k": 4, "dim": 4}}},
            "train": {"epochs": 1, "batch_size": 32, "scheduler": "none", "device": "cpu"},
        }
    )
    results = train(config, tmp_path / "run", progress=False)
    assert results["epochs"] == 1 and math.isfinite(results["test"]) and results["test"] > 0


def test_shipped_gt_config_builds_the_stated_model():
    """configs/zinc/gt+lappe.yaml: GT layers without message passing, BatchNorm, 8 heads, LapPE,
    and the parameter count its header states."""
    from pathlib import Path

    from gtpe.datasets import dataset_info
    from gtpe.train.config import load_config
    from gtpe.train.loop import build_model

    path = Path(__file__).resolve().parents[1] / "configs" / "zinc" / "gt+lappe.yaml"
    config = load_config(path)
    model = build_model(config, dataset_info("zinc"))
    assert "336,721 parameters" in path.read_text()
    assert sum(p.numel() for p in model.parameters()) == 336_721
    assert all(la.local is None and isinstance(la.attn, GTAttention) for la in model.layers)
    assert all(isinstance(la.norm3, torch.nn.BatchNorm1d) for la in model.layers)
    assert all(la.attn.heads == 8 for la in model.layers) and model.lap_encoder is not None
