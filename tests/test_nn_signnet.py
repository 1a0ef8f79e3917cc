"""SignNet (Lim et al., ICLR 2023) as a LapPE encoder: a dense float64 reference of
rho([phi(v_j) + phi(-v_j)]_j) with phi a GIN written as (I + A) @ H, exact sign invariance,
permutation equivariance, graph isolation, padding, gradients, the one-pass layout, the
LapPEEncoder / config / GPSModel wiring (directed graphs: the symmetrised graph)."""

import itertools

import pytest
import torch
from torch_geometric.data import Batch, Data

import gtpe.nn.encoders.signnet as signnet_module
from gtpe.models import ConfigError, GPSModel, GPSModelConfig, LapPEConfig, PEConfig
from gtpe.nn.encoders import LapPEEncoder, SignNetEncoder
from gtpe.transforms import AddLapPE

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4
SIZES = (6, 3, 8, 1, 5)  # with k=4: the 3-node graph has 2 real columns, the 1-node graph none


def random_graph(n, seed, p=0.4):
    """Undirected (both directions listed), no self-loops, random; may be disconnected."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.triu_indices(n, n, offset=1)
    keep = torch.rand(i.numel(), generator=g) < p
    ei = torch.stack([i[keep], j[keep]])
    return torch.cat([ei, ei.flip(0)], dim=1)


def lap_batch(sizes=SIZES, k=K, seed=0, dtype=torch.float64):
    t = AddLapPE(k=k)
    graphs = [t(Data(edge_index=random_graph(n, seed + s), num_nodes=n)) for s, n in enumerate(sizes)]
    b = Batch.from_data_list(graphs)
    b.lap_pe, b.lap_eigval = b.lap_pe.to(dtype), b.lap_eigval.to(dtype)
    return b


def real_columns(b, k=K):
    """[N, k] bool: column j exists for a node iff j < N_graph - 1 (AddLapPE's padding rule)."""
    n_graph = torch.bincount(b.batch)[b.batch]
    return torch.arange(k).view(1, -1) < (n_graph - 1).view(-1, 1)


def mlp_ref(h, seq):
    """Linear-ReLU-Linear[-ReLU...] from a Sequential's weights, as explicit matrix products."""
    for m in seq:
        h = h @ m.weight.T + m.bias if isinstance(m, torch.nn.Linear) else h.clamp_min(0)
    return h


def signnet_ref(enc, vec, val, edge_index, real):
    """The paper's equations, one eigenvector and one sign at a time, dense float64."""
    N = vec.size(0)
    A = torch.zeros(N, N, dtype=torch.float64)
    A.index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.size(1), dtype=A.dtype),
                 accumulate=True)  # A[i, j] = number of edges j -> i
    eye = torch.eye(N, dtype=torch.float64)

    def phi(v, lam):
        H = torch.stack([v, lam], dim=1) if enc.eigval else v.view(-1, 1)
        for layer, seq in enumerate(enc.phi):
            H = mlp_ref((eye + A) @ H, seq)
            if layer < enc.layers - 1:
                H = H.clamp_min(0)
        return H  # [N, phi_dim]

    first = enc.rho[0]
    z = first.bias.expand(N, -1).clone()
    for j in range(enc.k):
        lam = torch.where(real[:, j], val[:, j], torch.zeros_like(val[:, j]))
        out_j = phi(vec[:, j], lam) + phi(-vec[:, j], lam)
        W_j = first.weight[:, j * enc.phi_dim:(j + 1) * enc.phi_dim]
        z = z + real[:, j:j + 1] * (out_j @ W_j.T)  # padded columns: no term at all
    return mlp_ref(z, enc.rho[1:])


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,rho_layers,eigval", [(2, 2, True), (1, 1, False), (3, 3, True)])
def test_equals_dense_float64_reference(layers, rho_layers, eigval):
    torch.manual_seed(0)
    b = lap_batch()
    enc = SignNetEncoder(K, 6, hidden=10, layers=layers, rho_layers=rho_layers, phi_dim=3,
                         eigval=eigval).double()
    out = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch, b.num_graphs)
    assert out.shape == (b.num_nodes, 6)
    with torch.no_grad():
        ref = signnet_ref(enc, b.lap_pe, b.lap_eigval, b.edge_index, real_columns(b))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_exactly_sign_invariant_for_every_flip_pattern():
    torch.manual_seed(1)
    b = lap_batch()
    enc = SignNetEncoder(K, 8).double()
    ref = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch)
    for signs in itertools.product([1.0, -1.0], repeat=K):
        s = torch.tensor(signs, dtype=torch.float64)
        torch.testing.assert_close(
            enc(b.lap_pe * s, b.lap_eigval, b.edge_index, b.batch), ref, atol=1e-12, rtol=0
        )
    # each graph's eigenvectors have their own signs: flip column 1 in one graph only
    vec = b.lap_pe.clone()
    vec[b.batch == 2, 1] *= -1
    torch.testing.assert_close(enc(vec, b.lap_eigval, b.edge_index, b.batch), ref,
                               atol=1e-12, rtol=0)
    # float32 too, random subsets
    enc32, b32 = enc.float(), b.clone()
    vec32, val32 = b32.lap_pe.float(), b32.lap_eigval.float()
    ref32 = enc32(vec32, val32, b32.edge_index, b32.batch)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = torch.randint(0, 2, (K,), generator=g).float() * 2 - 1
        torch.testing.assert_close(enc32(vec32 * s, val32, b32.edge_index, b32.batch), ref32,
                                   atol=1e-5, rtol=1e-5)


def test_depends_on_the_eigenvectors_beyond_their_sign():
    """Sign invariance is not constancy: a different eigenvector changes that graph's rows."""
    torch.manual_seed(2)
    b = lap_batch()
    enc = SignNetEncoder(K, 8).double()
    ref = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch)
    vec = b.lap_pe.clone()
    rows = (b.batch == 0).nonzero().view(-1)
    vec[rows, 0] = vec[rows.flip(0), 0]  # another unit vector in column 0 of graph 0
    out = enc(vec, b.lap_eigval, b.edge_index, b.batch)
    assert not torch.allclose(out[rows], ref[rows])
    # and the graph matters, not only the eigenvectors (phi is a GNN, not a per-node MLP)
    out = enc(b.lap_pe, b.lap_eigval, b.edge_index[:, 2:], b.batch)
    assert not torch.allclose(out, ref)


def test_permutation_equivariant():
    torch.manual_seed(3)
    b = lap_batch()
    enc = SignNetEncoder(K, 8).double()
    out = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch, b.num_graphs)
    perm = torch.randperm(b.num_nodes)  # new node i is old node perm[i] (graphs interleaved)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(b.num_nodes)
    out_p = enc(b.lap_pe[perm], b.lap_eigval[perm], inv[b.edge_index], b.batch[perm],
                b.num_graphs)
    torch.testing.assert_close(out_p, out[perm], atol=1e-12, rtol=1e-10)


def test_graphs_of_a_batch_are_isolated():
    torch.manual_seed(4)
    b = lap_batch()
    enc = SignNetEncoder(K, 8).double()
    out = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch, b.num_graphs)
    for g, d in enumerate(b.to_data_list()):  # each graph alone, batch=None
        alone = enc(d.lap_pe, d.lap_eigval, d.edge_index)
        torch.testing.assert_close(alone, out[b.batch == g], atol=1e-12, rtol=1e-10)
    vec, val = b.lap_pe.clone(), b.lap_eigval.clone()
    vec[b.batch == 0] = vec[b.batch == 0].flip(0)
    val[b.batch == 0] += 0.5
    out2 = enc(vec, val, b.edge_index, b.batch)
    keep = b.batch != 0
    torch.testing.assert_close(out2[keep], out[keep], atol=1e-12, rtol=0)
    assert not torch.allclose(out2[~keep], out[~keep])


def test_padded_columns_contribute_nothing():
    torch.manual_seed(5)
    b = lap_batch()
    enc = SignNetEncoder(K, 8).double()
    out = enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch)
    pad = ~real_columns(b)
    assert pad.any() and (~pad).any()
    # garbage eigenvalues and NaN eigenvectors (GraphGPS' padding) in padded slots: ignored
    vec = b.lap_pe.masked_fill(pad, float("nan"))
    val = b.lap_eigval.masked_fill(pad, 123.0)
    torch.testing.assert_close(enc(vec, val, b.edge_index, b.batch), out, atol=1e-12, rtol=0)
    # ... even infinite ones: they never enter phi, so gradients stay finite
    val = b.lap_eigval.masked_fill(pad, float("inf"))
    enc(vec, val, b.edge_index, b.batch).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())
    # a node whose columns are all padding (the 1-node graph) gets rho(0)
    lone = b.batch == 3
    with torch.no_grad():
        rho0 = enc.rho(torch.zeros(1, K * enc.phi_dim, dtype=torch.float64))
    torch.testing.assert_close(out[lone], rho0)
    # empty input
    e = torch.zeros(0, K, dtype=torch.float64)
    assert enc(e, e, torch.zeros(2, 0, dtype=torch.long)).shape == (0, 8)


def test_gradients_reach_every_parameter():
    torch.manual_seed(6)
    b = lap_batch(dtype=torch.float32)
    enc = SignNetEncoder(K, 8, layers=3, rho_layers=3)
    enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_phi_runs_once_on_all_columns_and_both_signs(monkeypatch):
    """One edge scatter per GIN layer, and the first layer sees [N, 2k, 2] (no loop over k)."""
    b = lap_batch(dtype=torch.float32)
    enc = SignNetEncoder(K, 8, layers=3)
    calls = []
    real_scatter = signnet_module.scatter_sum

    def counting(src, index, n):
        calls.append(tuple(src.shape))
        return real_scatter(src, index, n)

    monkeypatch.setattr(signnet_module, "scatter_sum", counting)
    shapes = []
    enc.phi[0][0].register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    enc(b.lap_pe, b.lap_eigval, b.edge_index, b.batch)
    E = b.edge_index.size(1)
    assert calls == [(E, 2 * K, 2), (E, 2 * K, enc.hidden), (E, 2 * K, enc.hidden)]
    assert shapes == [(b.num_nodes, 2 * K, 2)]


def test_reset_parameters_repr_and_errors():
    enc = SignNetEncoder(K, 8)
    before = [p.detach().clone() for p in enc.parameters()]
    torch.manual_seed(123)
    enc.reset_parameters()
    assert all(not torch.equal(a, p) for a, p in zip(before, enc.parameters()))
    assert repr(enc) == ("SignNetEncoder(k=4, dim=8, hidden=16, layers=2, phi_dim=4, "
                         "rho_layers=2, eigval=True)")
    vec, ei = torch.randn(5, K), random_graph(5, 0)
    with pytest.raises(ValueError, match=r"\[N, 4\].*AddLapPE"):
        enc(vec[:, :3], vec[:, :3], ei)
    with pytest.raises(ValueError, match=r"\[N, 4\].*AddLapPE"):
        enc(vec, vec[:, :3], ei)
    with pytest.raises(ValueError, match="edge_index must be an integer tensor"):
        enc(vec, vec, ei.float())
    with pytest.raises(ValueError, match=r"edge_index must be \[2, E\]"):
        enc(vec, vec, ei[0])
    with pytest.raises(ValueError, match=r"edge_index must hold node ids in \[0, N\)"):
        enc(vec, vec, ei + 1)
    for kw, name in [({"k": 0}, "k"), ({"dim": 0}, "dim"), ({"layers": 0}, "layers"),
                     ({"hidden": 0}, "hidden"), ({"phi_dim": -1}, "phi_dim"),
                     ({"rho_layers": 0}, "rho_layers")]:
        args = {"k": K, "dim": 8, **kw}
        with pytest.raises(ValueError, match=f"SignNetEncoder: {name} must be a positive int"):
            SignNetEncoder(**args)


# ------------------------------------------------------------------------------------------------
def test_lappe_encoder_signnet_option_draws_no_random_signs():
    torch.manual_seed(7)
    b = lap_batch(dtype=torch.float32)
    enc = LapPEEncoder(K, 8, encoder="signnet", hidden=12, layers=3)
    assert isinstance(enc.net, SignNetEncoder)
    assert (enc.net.hidden, enc.net.layers) == (12, 3)
    assert repr(enc) == ("LapPEEncoder(k=4, dim=8, encoder='signnet', sign_flip=False, "
                         "sign_invariant=True)")
    enc.train()
    state = torch.get_rng_state()
    out = enc(b.lap_pe, b.lap_eigval, b.batch, b.num_graphs, edge_index=b.edge_index)
    assert torch.equal(torch.get_rng_state(), state)  # no sign flips drawn in training
    torch.testing.assert_close(out, enc.net(b.lap_pe, b.lap_eigval, b.edge_index, b.batch))
    enc.eval()
    torch.testing.assert_close(
        enc(b.lap_pe, b.lap_eigval, b.batch, edge_index=b.edge_index), out, atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="encoder='signnet'.*edge_index"):
        enc(b.lap_pe, b.lap_eigval, b.batch)
    with pytest.raises(ValueError, match="'deepset', 'transformer' or 'signnet'"):
        LapPEEncoder(K, 8, encoder="signet")


def test_lappe_encoder_deepset_unchanged_and_ignores_edge_index():
    """The other encoders build and compute as before: same parameters from the same seed
    as EigenSetEncoder alone, and edge_index is not read."""
    from gtpe.nn.encoders import EigenSetEncoder

    b = lap_batch(dtype=torch.float32)
    torch.manual_seed(0)
    enc = LapPEEncoder(K, 8).eval()
    torch.manual_seed(0)
    net = EigenSetEncoder(2, 8, "deepset", None, 2, 4, False)
    for p, q in zip(enc.parameters(), net.parameters(), strict=True):
        assert torch.equal(p, q)
    out = enc(b.lap_pe, b.lap_eigval, b.batch)
    torch.testing.assert_close(enc(b.lap_pe, b.lap_eigval, b.batch, edge_index=b.edge_index),
                               out, atol=0, rtol=0)


def test_config_accepts_signnet_and_model_trains_a_step():
    cfg = GPSModelConfig.from_dict(
        {"channels": 16, "num_layers": 2, "pe": {"lap": {"k": K, "dim": 4, "encoder": "signnet"}}}
    )
    assert cfg.pe.lap == LapPEConfig(k=K, dim=4, encoder="signnet")
    assert GPSModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="'deepset', 'transformer' or 'signnet'"):
        LapPEConfig(encoder="basisnet")
    torch.manual_seed(8)
    g = torch.Generator().manual_seed(0)
    data = []
    for n in (9, 4, 2, 12):  # ZINC-like: small graphs, node and bond types
        ei = random_graph(n, 10 + n)
        data.append(Data(x=torch.randint(0, 5, (n, 1), generator=g), edge_index=ei,
                         edge_attr=torch.randint(0, 3, (ei.size(1),), generator=g),
                         y=torch.randn(1, generator=g)))
    b = Batch.from_data_list(data)
    for t in cfg.transforms():
        b = t(b)
    model = GPSModel(cfg, out_dim=1, node_input="embedding", node_in_dim=5,
                     edge_input="embedding", edge_in_dim=3)
    assert isinstance(model.lap_encoder.net, SignNetEncoder)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = (model(b).view(-1) - b.y).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.lap_encoder.parameters())
    opt.step()
    # the model's LapPE features are the encoder on the batch's own edges
    model.eval()
    lap = model.encode(b)["x"][:, 16 - 4:]
    torch.testing.assert_close(
        lap, model.lap_encoder.net(b.lap_pe, b.lap_eigval, b.edge_index, b.batch)
    )


@pytest.mark.parametrize("local", ["dirgine", "gine"])
def test_directed_model_gives_signnet_the_symmetrised_graph(local):
    """directed=True: SignNet's GIN runs on the undirected simple graph of AddLapPE, whether or
    not the locals symmetrise (dirgine does not)."""
    torch.manual_seed(9)
    edges = torch.tensor([[0, 1, 2, 3, 3, 4, 5], [1, 2, 0, 4, 1, 3, 0]])  # 3<->4 reciprocal
    d = Data(x=torch.zeros(6, 1, dtype=torch.long), edge_index=edges,
             edge_attr=torch.zeros(7, dtype=torch.long), y=torch.zeros(1))
    cfg = GPSModelConfig(channels=8, num_layers=1, local=local, attn=None,
                         pe=PEConfig(lap=LapPEConfig(k=3, dim=4, encoder="signnet")))
    b = Batch.from_data_list([d])
    for t in cfg.transforms():
        b = t(b)
    model = GPSModel(cfg, out_dim=1, node_input="embedding", node_in_dim=1,
                     edge_input="embedding", edge_in_dim=1, directed=True).eval()
    pairs = sorted({(int(u), int(v)) for u, v in edges.T} | {(int(v), int(u)) for u, v in edges.T})
    sym = torch.tensor(pairs).T  # each undirected edge once per direction, no duplicates
    assert sym.size(1) == 12
    enc = model.lap_encoder.net
    want = enc(b.lap_pe, b.lap_eigval, sym, b.batch)
    got = model.encode(b)["x"][:, 8 - 4:]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, enc(b.lap_pe, b.lap_eigval, edges, b.batch))
