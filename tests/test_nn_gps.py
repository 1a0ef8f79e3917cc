"""GPSLayer and local message passing (GINE, GatedGCN): equivalence with PyG, a dense float64
reference, permutation equivariance, batch isolation, gradient flow, clear errors, compile."""

import copy

import pytest
import torch
from torch.nn import Linear, ReLU, Sequential
from torch_geometric.nn import GCNConv, GINEConv, GPSConv

from gtpe.nn import GPSLayer
from gtpe.nn.local import GINE, GatedGCN

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and immune to CPU oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ATTNS = ["full", "linear", "exphormer", "grit", "gt", "graphormer", None]


def random_batch(sizes, C, seed=0, dtype=torch.float32, edge_dim=None):
    """Random graphs (both edge directions), block-diagonal, with all extras a layer may need."""
    g = torch.Generator().manual_seed(seed)
    eis, exps, pairs, off = [], [], [], 0
    for n in sizes:
        m = max(1, n)
        s = torch.randint(0, n, (m,), generator=g)
        d = torch.randint(0, n, (m,), generator=g)
        eis.append(torch.stack([torch.cat([s, d]), torch.cat([d, s])]) + off)
        exps.append(
            torch.stack([torch.arange(n).repeat(2), torch.randint(0, n, (2 * n,), generator=g)])
            + off
        )
        ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = torch.rand(n, n, generator=g) < 0.6
        keep |= torch.eye(n, dtype=torch.bool)
        pairs.append(torch.stack([ii[keep], jj[keep]]) + off)
        off += n
    ei, exp, pi = torch.cat(eis, 1), torch.cat(exps, 1), torch.cat(pairs, 1)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    N = int(sum(sizes))
    out = {
        "x": torch.randn(N, C, generator=g, dtype=dtype),
        "edge_index": ei,
        "batch": batch,
        "edge_attr": torch.randn(ei.size(1), edge_dim or C, generator=g, dtype=dtype),
        "expander_index": exp,
        "pair_index": pi,
        "pair_attr": torch.randn(pi.size(1), C, generator=g, dtype=dtype),
        "spd_index": pi,  # Graphormer's pairs: any pairs of a graph, with a distance each
        "spd_val": torch.randint(0, 7, (pi.size(1),), generator=g),
    }
    return {k: v.to(DEVICE) for k, v in out.items()}


def call(layer, d, **over):
    d = {**d, **over}
    return layer(
        d["x"],
        d["edge_index"],
        d["batch"],
        d["edge_attr"],
        expander_index=d["expander_index"],
        pair_index=d["pair_index"],
        pair_attr=d["pair_attr"],
        spd_index=d["spd_index"],
        spd_val=d["spd_val"],
        num_graphs=int(d["batch"].max()) + 1,
    )


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edge_dim", [None, 5])
def test_gine_equals_pyg_gineconv(edge_dim):
    torch.manual_seed(0)
    C = 16
    ref = GINEConv(
        Sequential(Linear(C, C), ReLU(), Linear(C, C)), eps=0.3, train_eps=True, edge_dim=edge_dim
    ).to(DEVICE)
    mine = GINE(C, nn=copy.deepcopy(ref.nn), eps=0.3, train_eps=True, edge_dim=edge_dim).to(DEVICE)
    mine.load_state_dict(ref.state_dict())
    d = random_batch([6, 9, 4], C, edge_dim=edge_dim)
    a = ref(d["x"], d["edge_index"], d["edge_attr"])
    b = mine(d["x"], d["edge_index"], d["edge_attr"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # gradients agree too
    a.square().sum().backward()
    b.square().sum().backward()
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), mine.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)


def test_gine_without_edge_attr_is_gin_and_checks_dims():
    C = 8
    layer = GINE(C).to(DEVICE)
    d = random_batch([5, 3], C)
    x, ei = d["x"], d["edge_index"]
    agg = torch.zeros_like(x).index_add_(0, ei[1], x[ei[0]].relu())
    torch.testing.assert_close(layer(x, ei), layer.nn(agg + x))
    with pytest.raises(ValueError, match="edge_dim"):
        layer(x, ei, torch.randn(ei.size(1), C + 1, device=DEVICE))


def gatedgcn_dense_reference(layer, x, ei, e):
    """Loop/dense float64 re-statement of Bresson & Laurent's gated GCN (GraphGPS form)."""
    C = layer.channels
    W, b = layer.lin_node.weight.double(), layer.lin_node.bias.double()
    A, D, E, B = [(W[k * C : (k + 1) * C], b[k * C : (k + 1) * C]) for k in range(4)]
    Cw, Cb = layer.lin_edge.weight.double(), layer.lin_edge.bias.double()
    x, e = x.double(), e.double()
    lin = lambda p, v: v @ p[0].T + p[1]
    e_hat = torch.stack(
        [lin(D, x[i]) + lin(E, x[j]) + (e[k] @ Cw.T + Cb) for k, (j, i) in enumerate(ei.T.tolist())]
    )
    sig = torch.sigmoid(e_hat)
    num = torch.zeros_like(x)
    den = torch.zeros_like(x)
    for k, (j, i) in enumerate(ei.T.tolist()):
        num[i] += sig[k] * lin(B, x[j])
        den[i] += sig[k]
    x_hat = lin(A, x) + num / (den + 1e-6)
    bn = lambda v: (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + 1e-5)
    return x + bn(x_hat).relu(), e + bn(e_hat).relu()


def test_gatedgcn_matches_dense_reference():
    torch.manual_seed(1)
    C = 6
    layer = GatedGCN(C).to(DEVICE).train()
    d = random_batch([5, 4], C, seed=3)
    x_out, e_out = layer(d["x"], d["edge_index"], d["edge_attr"])
    x_ref, e_ref = gatedgcn_dense_reference(
        layer, d["x"].cpu(), d["edge_index"].cpu(), d["edge_attr"].cpu()
    )
    torch.testing.assert_close(x_out.double().cpu(), x_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(e_out.double().cpu(), e_ref, atol=1e-4, rtol=1e-4)
    # the same layer in float64 agrees with the reference to rounding
    x64, e64 = layer.double()(d["x"].double(), d["edge_index"], d["edge_attr"].double())
    torch.testing.assert_close(x64.cpu(), x_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(e64.cpu(), e_ref, atol=1e-10, rtol=1e-10)
    layer.float()
    # update_edges=False returns the input edge features unchanged
    layer2 = GatedGCN(C, update_edges=False).to(DEVICE)
    x2, e2 = layer2(d["x"], d["edge_index"], d["edge_attr"])
    assert e2 is d["edge_attr"] and x2.shape == d["x"].shape


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("edge_dim", [None, 7])
def test_gpslayer_equals_pyg_gpsconv(train, edge_dim):
    torch.manual_seed(0)
    C, H = 32, 4
    conv = GPSConv(
        C,
        GINEConv(Sequential(Linear(C, C), ReLU(), Linear(C, C)), edge_dim=edge_dim),
        heads=H,
        attn_type="multihead",
    ).to(DEVICE)
    # non-trivial norm statistics/affine parameters
    with torch.no_grad():
        for n in (conv.norm1, conv.norm2, conv.norm3):
            n.module.weight.uniform_(0.5, 1.5)
            n.module.bias.uniform_(-0.5, 0.5)
            n.module.running_mean.uniform_(-0.2, 0.2)
            n.module.running_var.uniform_(0.5, 2.0)
    layer = GPSLayer.from_pyg(conv)
    assert layer.local_type == "gine" and layer.attn_type == "full"
    conv.train(train)
    layer.train(train)
    d = random_batch([7, 12, 1, 5, 9], C, edge_dim=edge_dim)
    a = conv(d["x"], d["edge_index"], d["batch"], edge_attr=d["edge_attr"])
    b = layer(d["x"], d["edge_index"], d["batch"], d["edge_attr"])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if train:  # running statistics were updated identically
        torch.testing.assert_close(conv.norm3.module.running_mean, layer.norm3.running_mean)
        a.square().sum().backward()
        b.square().sum().backward()
        torch.testing.assert_close(
            conv.attn.in_proj_weight.grad, layer.attn.in_proj_weight.grad, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            conv.mlp[0].weight.grad, layer.mlp[0].weight.grad, atol=1e-4, rtol=1e-4
        )


def test_gpslayer_with_pyg_modules_equals_gpsconv():
    """A PyG MessagePassing local (with and without edge_attr) and an nn.MultiheadAttention."""
    torch.manual_seed(0)
    C = 16
    for conv_local, kw in [
        (GINEConv(Sequential(Linear(C, C), ReLU(), Linear(C, C))), True),
        (GCNConv(C, C), False),
    ]:
        conv = GPSConv(C, conv_local, heads=2).to(DEVICE).eval()
        layer = GPSLayer(C, local=conv.conv, attn=conv.attn, heads=2).to(DEVICE).eval()
        assert layer.local_type == "custom" and layer._local_takes_edge_attr == kw
        layer.mlp.load_state_dict(conv.mlp.state_dict())
        for mine, theirs in (
            (layer.norm1, conv.norm1),
            (layer.norm2, conv.norm2),
            (layer.norm3, conv.norm3),
        ):
            mine.load_state_dict(theirs.module.state_dict())
        d = random_batch([4, 6], C)
        extra = {"edge_attr": d["edge_attr"]} if kw else {}
        a = conv(d["x"], d["edge_index"], d["batch"], **extra)
        b = layer(d["x"], d["edge_index"], d["batch"], d["edge_attr"])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
def permute_within_graphs(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = d["batch"].cpu()
    perm = torch.cat(
        [
            torch.nonzero(batch == b).view(-1)[torch.randperm(int((batch == b).sum()), generator=g)]
            for b in range(int(batch.max()) + 1)
        ]
    ).to(DEVICE)  # new -> old
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=DEVICE)  # old -> new
    out = dict(d)
    out["x"] = d["x"][perm]
    for k in ("edge_index", "expander_index", "pair_index", "spd_index"):
        out[k] = inv[d[k]]
    return out, perm


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("local", ["gine", "dirgine", "gatedgcn"])
def test_gpslayer_permutation_equivariance(local, attn):
    torch.manual_seed(0)
    C = 16
    layer = GPSLayer(C, local=local, attn=attn, heads=4).to(DEVICE).eval()
    d = random_batch([6, 9, 3], C)
    dp, perm = permute_within_graphs(d)
    out, outp = call(layer, d), call(layer, dp)
    assert out.shape == (d["x"].size(0), C)
    torch.testing.assert_close(outp, out[perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ATTNS)
def test_gpslayer_no_information_between_graphs(attn):
    torch.manual_seed(0)
    C = 16
    layer = GPSLayer(C, local="gine", attn=attn, heads=4).to(DEVICE).eval()
    d = random_batch([6, 9, 5], C)
    out = call(layer, d)
    x2 = d["x"].clone()
    other = d["batch"] != 0
    x2[other] = torch.randn_like(x2[other]) * 3
    pair_attr = d["pair_attr"].clone()
    pair_attr[other[d["pair_index"][1]]] += 1.0
    spd_val = d["spd_val"].clone()
    spd_val[other[d["spd_index"][1]]] += 1
    out2 = call(layer, d, x=x2, pair_attr=pair_attr, spd_val=spd_val)
    first = d["batch"] == 0
    torch.testing.assert_close(out2[first], out[first], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out2[other], out[other])


@pytest.mark.parametrize(
    "local,attn",
    [
        (loc, a)
        for loc in ("gine", "dirgine", "gatedgcn", None)
        for a in ATTNS
        if (loc, a) != (None, None)
    ],
)
def test_gpslayer_gradients_reach_every_parameter(local, attn):
    torch.manual_seed(0)
    C = 16
    layer = (
        GPSLayer(C, local=local, attn=attn, heads=4, dropout=0.1, attn_dropout=0.1)
        .to(DEVICE)
        .train()
    )
    d = random_batch([5, 7], C)
    state = {}
    out = layer(
        d["x"],
        d["edge_index"],
        d["batch"],
        d["edge_attr"],
        expander_index=d["expander_index"],
        pair_index=d["pair_index"],
        pair_attr=d["pair_attr"],
        spd_index=d["spd_index"],
        spd_val=d["spd_val"],
        state=state,
    )
    # side outputs (updated edge/pair features, virtual nodes) are part of the layer's output
    loss = out.square().mean() + sum(
        v.float().square().mean()
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and k != "deg"
    )
    loss.backward()
    missing = [
        n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not missing, missing
    assert torch.isfinite(out).all()


def test_gpslayer_state_is_carried_between_layers():
    C = 16
    d = random_batch([5, 7], C)
    for attn, key in (("exphormer", "virtual_x"), ("grit", "pair_attr"), ("gt", "edge_attr")):
        l1 = GPSLayer(C, local=None, attn=attn).to(DEVICE).eval()
        l2 = GPSLayer(C, local=None, attn=attn).to(DEVICE).eval()
        state = {}
        h = l2(
            call(l1, d),
            d["edge_index"],
            d["batch"],
            d["edge_attr"],
            expander_index=d["expander_index"],
            pair_index=d["pair_index"],
            pair_attr=d["pair_attr"],
            state={},
        )
        x1 = l1(
            d["x"],
            d["edge_index"],
            d["batch"],
            d["edge_attr"],
            expander_index=d["expander_index"],
            pair_index=d["pair_index"],
            pair_attr=d["pair_attr"],
            state=state,
        )
        assert key in state
        h2 = l2(
            x1,
            d["edge_index"],
            d["batch"],
            d["edge_attr"],
            expander_index=d["expander_index"],
            pair_index=d["pair_index"],
            pair_attr=d["pair_attr"],
            state=state,
        )
        assert not torch.allclose(h, h2)  # the second layer used the first layer's state
    # GatedGCN: the next layer reads the updated edge features from the state
    l1 = GPSLayer(C, local="gatedgcn", attn=None).to(DEVICE)
    state = {}
    l1(d["x"], d["edge_index"], d["batch"], d["edge_attr"], state=state)
    assert state["edge_attr"].shape == d["edge_attr"].shape
    assert not torch.allclose(state["edge_attr"], d["edge_attr"])


@pytest.mark.parametrize(
    "norm,residual", [("batch", True), ("layer", True), (None, True), ("batch", False)]
)
def test_gpslayer_grit_pair_stream(norm, residual):
    """attn='grit' updates the pairs as the official GRIT layer (Ma et al., 2023):
    e' = Norm_e(e + W_Oe Dropout(e_hat)), the layer's dropout / residual / norm; float64,
    train mode (dropout on, batch statistics), the norm's formula written out."""
    C, p = 16, 0.3
    d = random_batch([5, 7], C, seed=3, dtype=torch.float64)
    torch.manual_seed(0)
    layer = GPSLayer(C, local=None, attn="grit", heads=2, norm=norm, residual=residual,
                     dropout=p).to(DEVICE).double().train()
    a = layer.attn
    assert a.pair_dropout == p and a.pair_residual is residual
    assert a.pair_norm_type == norm and (a.pair_norm is None) == (norm is None)
    if a.pair_norm is not None:
        with torch.no_grad():
            a.pair_norm.weight.normal_()
            a.pair_norm.bias.normal_()
    pi, pa = d["pair_index"], d["pair_attr"]
    state: dict = {}
    torch.manual_seed(5)
    layer(d["x"], d["edge_index"], d["batch"], d["edge_attr"], pair_index=pi, pair_attr=pa,
          state=state)
    # e_hat: a copy of the attention whose pair output is e_hat itself
    probe = copy.deepcopy(a)
    probe.pair_dropout, probe.pair_residual, probe.pair_norm = 0.0, False, None
    with torch.no_grad():
        probe.pair_out_proj.weight.copy_(torch.eye(C, dtype=torch.float64))
        probe.pair_out_proj.bias.zero_()
    _, e_hat, _ = probe(d["x"], pi, pa, d["batch"], deg=state["deg"])
    # the layer's random draws (attn_dropout=0): the node output's mask, then the pairs'
    torch.manual_seed(5)
    torch.nn.functional.dropout(torch.ones_like(d["x"]), p, training=True)
    mask = torch.nn.functional.dropout(torch.ones_like(e_hat), p, training=True)
    assert 0 < int((mask == 0).sum()) < mask.numel()
    ref = a.pair_out_proj(e_hat * mask)
    if residual:
        ref = ref + pa
    if norm == "batch":  # over the pairs, biased variance (training)
        ref = (ref - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + 1e-5)
    elif norm == "layer":  # over the channels of each pair
        ref = (ref - ref.mean(1, keepdim=True)) / torch.sqrt(
            ref.var(1, unbiased=False, keepdim=True) + 1e-5
        )
    if norm is not None:
        ref = ref * a.pair_norm.weight + a.pair_norm.bias
    torch.testing.assert_close(state["pair_attr"], ref, rtol=1e-10, atol=1e-10)
    assert state["pair_index"] is pi
    # update_pairs=False (a model's last layer): no W_Oe, no Norm_e, the pairs pass through
    last = GPSLayer(C, local=None, attn="grit", heads=2, norm=norm, residual=residual,
                    dropout=p, attn_kwargs={"update_pairs": False}).to(DEVICE).double()
    assert not any("pair_" in n for n, _ in last.named_parameters())
    assert not any("pair_" in n for n, _ in last.named_buffers())
    state = {}
    last(d["x"], d["edge_index"], d["batch"], d["edge_attr"], pair_index=pi, pair_attr=pa,
         state=state)
    assert state["pair_attr"] is pa


def test_gpslayer_errors():
    C = 16
    d = random_batch([4, 5], C)
    with pytest.raises(ValueError, match="AddExpanderEdges"):
        GPSLayer(C, attn="exphormer").to(DEVICE)(
            d["x"], d["edge_index"], d["batch"], d["edge_attr"]
        )
    with pytest.raises(ValueError, match="AddRRWP"):
        GPSLayer(C, attn="grit").to(DEVICE)(d["x"], d["edge_index"], d["batch"], d["edge_attr"])
    with pytest.raises(ValueError, match="edge_dim': None"):
        GPSLayer(C, attn="exphormer").to(DEVICE)(
            d["x"], d["edge_index"], d["batch"], None, expander_index=d["expander_index"]
        )
    with pytest.raises(ValueError, match="unknown attn"):
        GPSLayer(C, attn="performer")
    with pytest.raises(ValueError, match="unknown local"):
        GPSLayer(C, local="sage")
    with pytest.raises(ValueError, match="divisible"):
        GPSLayer(30, heads=4)
    with pytest.raises(ValueError, match="unknown norm"):
        GPSLayer(C, norm="group")
    with pytest.raises(ValueError, match="batch_first=True"):
        GPSLayer(C, attn=torch.nn.MultiheadAttention(C, 4))
    with pytest.raises(ValueError, match="both be None"):
        GPSLayer(C, local=None, attn=None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GPSLayer(C)(d["x"], d["edge_index"], d["batch"], d["edge_attr"], expander=1)
    # Exphormer without edge features
    layer = GPSLayer(C, local="gine", attn="exphormer", attn_kwargs={"edge_dim": None}).to(DEVICE)
    assert (
        layer(d["x"], d["edge_index"], d["batch"], None, expander_index=d["expander_index"]).shape
        == d["x"].shape
    )


def test_gpslayer_layer_norm_none_norm_and_repr():
    C = 16
    d = random_batch([4, 5], C)
    for norm in ("layer", None, "none"):
        layer = GPSLayer(C, local="gatedgcn", attn="full", norm=norm).to(DEVICE)
        assert layer(d["x"], d["edge_index"], d["batch"], d["edge_attr"]).shape == d["x"].shape
    r = repr(GPSLayer(C, local="gine", attn="linear", heads=2, dropout=0.1))
    assert r == (
        "GPSLayer(16, local='gine', attn='linear', heads=2, dropout=0.1, "
        "attn_dropout=0.0, norm='batch')"
    )
    layer = GPSLayer(C)
    before = layer.mlp[0].weight.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.mlp[0].weight)


def test_gpslayer_torch_compile_aot_eager():
    """One layer (gine + full) compiles (aot_eager: traced forward and backward graphs) and
    matches eager in training mode, outputs and gradients."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    C = 16
    layer = GPSLayer(C, local="gine", attn="full").to(DEVICE).train()
    ref = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="aot_eager")
    d = random_batch([5, 8, 3], C)
    out = compiled(d["x"], d["edge_index"], d["batch"], d["edge_attr"])
    out_ref = ref(d["x"], d["edge_index"], d["batch"], d["edge_attr"])
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    torch.testing.assert_close(
        layer.local.nn[0].weight.grad, ref.local.nn[0].weight.grad, atol=1e-5, rtol=1e-4
    )


def test_gpslayer_full_attention_layout_shared_through_state():
    """attn='full' layers sharing ``state`` compute the batch layout once; same outputs and
    gradients as without the shared state."""
    torch.manual_seed(0)
    C = 16
    layers = torch.nn.ModuleList([GPSLayer(C, local="gine", attn="full") for _ in range(2)])
    layers = layers.to(DEVICE).train()
    d = random_batch([5, 8, 3, 1], C)

    def run(shared):
        state, x = {}, d["x"]
        for layer in layers:
            x = layer(x, d["edge_index"], d["batch"], d["edge_attr"], state=state if shared else {})
        return x, state

    (a, state), (b, _) = run(True), run(False)
    assert state["full_attention_layout"]["batch"] is d["batch"]
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), layers[0].attn.in_proj_weight)[0]
    gb = torch.autograd.grad(b.square().sum(), layers[0].attn.in_proj_weight)[0]
    torch.testing.assert_close(ga, gb)
