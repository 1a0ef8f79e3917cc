"""Direction-aware models (issue 11): DirGINE against PyG's DirGNNConv and a float64 brute force,
GPSModel(directed=True) (symmetrised edges for direction-blind locals, directed edges for
'dirgine'), a constructed pair of graphs that differ only by direction, the sinusoid node encoder
and the multi-q / phase MagLapPE config."""

import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.models import ConfigError, GPSModel, GPSModelConfig, MagLapPEConfig
from gtpe.nn import DirGINE, GPSLayer, SinusoidEncoder
from gtpe.nn.encoders import MagLapPEEncoder
from gtpe.transforms import AddMagLapPE

pytestmark = pytest.mark.usefixtures('one_thread')


def mlp(C, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.ReLU(), torch.nn.Linear(C, C))


def random_digraph(n, m, seed, C=None, edge_dim=None):
    """A random directed graph (no self-loops, no reciprocal pairs) with n nodes, ~m edges."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 3 * m), generator=g)
    ei = ei[:, ei[0] < ei[1]]  # i < j: acyclic, no reciprocal edges
    ei = torch.unique(ei, dim=1)[:, :m]
    flip = torch.rand(ei.size(1), generator=g) < 0.5
    ei = torch.where(flip, ei.flip(0), ei)  # random directions (may now have cycles)
    out = {'edge_index': ei}
    if C is not None:
        out['x'] = torch.randn(n, C, generator=g)
    if edge_dim is not None:
        out['edge_attr'] = torch.randn(ei.size(1), edge_dim, generator=g)
    return out


# ------------------------------------------------------------------------------------------------
# (b) DirGINE = PyG DirGNNConv(GINConv) and a float64 brute force with edge features
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('alpha', [0.5, 0.3])
def test_dirgine_equals_pyg_dirgnnconv(alpha):
    """Without edge features GINE's messages are ReLU(x_j): equal to GIN's x_j for x >= 0."""
    from torch_geometric.nn import DirGNNConv, GINConv

    C = 8
    d = random_digraph(12, 30, seed=1, C=C)
    d['x'] = d['x'].abs()
    ref = DirGNNConv(GINConv(mlp(C, 0), train_eps=True), alpha=alpha, root_weight=False)
    with torch.no_grad():  # distinct weights and eps per direction
        ref.conv_out.nn.load_state_dict(mlp(C, 1).state_dict())
        ref.conv_in.eps.fill_(0.25)
        ref.conv_out.eps.fill_(-0.5)
    mine = DirGINE(C, alpha=alpha, train_eps=True)
    with torch.no_grad():
        mine.conv_in.nn.load_state_dict(ref.conv_in.nn.state_dict())
        mine.conv_out.nn.load_state_dict(ref.conv_out.nn.state_dict())
        mine.conv_in.eps.copy_(ref.conv_in.eps)
        mine.conv_out.eps.copy_(ref.conv_out.eps)
    want = ref(d['x'], d['edge_index'])
    got = mine(d['x'], d['edge_index'])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the two directions really are different functions here
    assert not torch.allclose(mine.conv_in(d['x'], d['edge_index']),
                              mine.conv_out(d['x'], d['edge_index'].flip(0)), atol=1e-3)


def dirgine_brute_force(layer, x, ei, ea):
    """Float64 loops over the edges: in-GINE along j -> i, out-GINE along the reversed edges."""
    x, ea = x.double(), ea.double()
    N = x.size(0)

    def agg(conv, reverse):
        lin = conv.lin
        W, b = lin.weight.detach().double(), lin.bias.detach().double()
        s = torch.zeros_like(x)
        for e in range(ei.size(1)):
            j, i = int(ei[0, e]), int(ei[1, e])
            if reverse:
                i, j = j, i
            s[i] += torch.relu(x[j] + W @ ea[e] + b)
        h = (1 + float(conv.eps)) * x + s
        return conv.nn.double()(h)

    with torch.no_grad():
        out = layer.alpha * agg(layer.conv_out, True) + (1 - layer.alpha) * agg(layer.conv_in, False)
    layer.float()
    assert out.shape == (N, x.size(1))
    return out


def test_dirgine_with_edge_features_matches_float64_brute_force():
    C, D = 6, 3
    d = random_digraph(10, 25, seed=2, C=C, edge_dim=D)
    torch.manual_seed(0)
    layer = DirGINE(C, alpha=0.7, eps=0.1, edge_dim=D)
    got = layer(d['x'], d['edge_index'], d['edge_attr'])
    want = dirgine_brute_force(layer, d['x'], d['edge_index'], d['edge_attr'])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert layer.conv_in.lin is not layer.conv_out.lin  # separate edge maps per direction


def test_dirgine_errors_and_repr():
    with pytest.raises(ValueError, match='alpha must be a number in \\[0, 1\\]'):
        DirGINE(4, alpha=1.5)
    layer = DirGINE(4, edge_dim=2)
    x, ei = torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match='^DirGINE: edge_attr must be'):
        layer(x, ei, torch.randn(2, 5))
    assert repr(layer).startswith('DirGINE(4, nn=') and 'alpha=0.5' in repr(layer)


def permuted(d, perm):
    """The same graph with node i renamed to inv[i] (node perm[k] becomes node k)."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    out = dict(d)
    out['edge_index'] = inv[d['edge_index']]
    for key in ('x',):
        if key in d:
            out[key] = d[key][perm]
    return out


def test_dirgine_permutation_equivariance():
    C = 5
    d = random_digraph(9, 20, seed=3, C=C, edge_dim=C)
    layer = DirGINE(C)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    p = permuted(d, perm)
    out = layer(d['x'], d['edge_index'], d['edge_attr'])
    out_p = layer(p['x'], p['edge_index'], p['edge_attr'])
    torch.testing.assert_close(out_p, out[perm], rtol=1e-5, atol=1e-6)


def test_gpslayer_dirgine_passes_edge_features():
    """GPSLayer(local='dirgine'): h = x + DirGINE(x, edge_index, edge_attr), then the MLP."""
    C = 8
    d = random_digraph(7, 12, seed=4, C=C, edge_dim=3)
    layer = GPSLayer(C, local='dirgine', attn=None, norm=None, edge_dim=3).eval()
    assert isinstance(layer.local, DirGINE) and layer.local.lin.in_features == 3
    h = d['x'] + layer.local(d['x'], d['edge_index'], d['edge_attr'])
    want = h + layer.mlp(h)
    got = layer(d['x'], d['edge_index'], edge_attr=d['edge_attr'])
    torch.testing.assert_close(got, want)
    assert 'dirgine' in repr(layer)
    with pytest.raises(ValueError, match='edge_attr'):
        layer(d['x'], d['edge_index'], edge_attr=torch.randn(12, 4))


# ------------------------------------------------------------------------------------------------
# GPSModel(directed=...)
# ------------------------------------------------------------------------------------------------
def graph(edges, x, edge_types):
    ei = torch.tensor(edges, dtype=torch.long).t().contiguous()
    return Data(x=torch.tensor(x).view(-1, 1), edge_index=ei,
                edge_attr=torch.tensor(edge_types), y=torch.zeros(1))


# (a) a directed 6-cycle and the same cycle with one edge reversed: as undirected graphs (with
# their node and edge features) they are identical.  Every node has two neighbours, so the sums
# over the symmetrised neighbourhoods add the same two numbers (a + b = b + a exactly).
X, TYPES = [0, 3, 1, 4, 2, 5], [0, 1, 2, 0, 1, 2]
G_A = graph([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)], X, TYPES)
G_B = graph([(0, 1), (1, 2), (3, 2), (3, 4), (4, 5), (5, 0)], X, TYPES)


def undirected(d):
    pairs = {}
    for e, (s, t) in enumerate(d.edge_index.t().tolist()):
        pairs[frozenset((s, t))] = int(d.edge_attr[e])
    return pairs


def model(local='gine', attn='full', pe=None, directed=True, graph_level=False, seed=0, **kw):
    cfg = GPSModelConfig.from_dict(dict(channels=16, num_layers=2, local=local, attn=attn,
                                        heads=2, pe=pe or {}))
    torch.manual_seed(seed)
    return GPSModel(cfg, out_dim=2, node_input=kw.pop('node_input', 'embedding'),
                    node_in_dim=kw.pop('node_in_dim', 6), edge_input='embedding', edge_in_dim=3,
                    graph_level=graph_level, directed=directed, **kw).eval()


def prepared(graphs, cfg):
    b = Batch.from_data_list(graphs)
    for t in cfg.transforms():
        b = t(b)
    return b


def test_pair_direction_blind_vs_direction_aware():
    assert undirected(G_A) == undirected(G_B)  # the pair's precondition
    assert not torch.equal(G_A.edge_index, G_B.edge_index)
    with torch.no_grad():
        for local in ('gine', 'gatedgcn'):  # direction-blind: exactly the same outputs
            m = model(local)
            ya, yb = m(Batch.from_data_list([G_A])), m(Batch.from_data_list([G_B]))
            assert torch.equal(ya, yb), local
        m = model('dirgine')  # direction-aware local
        ya, yb = m(Batch.from_data_list([G_A])), m(Batch.from_data_list([G_B]))
        assert (ya - yb).abs().max() > 1e-3
        # without directed=True the direction-blind GINE reads the directed edges (one way only)
        m = model('gine', directed=False)
        ya, yb = m(Batch.from_data_list([G_A])), m(Batch.from_data_list([G_B]))
        assert (ya - yb).abs().max() > 1e-3


@pytest.mark.parametrize('q,phase', [(0.25, 'canonical'), ([0.1, 0.25], 'invariant')])
def test_pair_maglap_tells_direction_apart_with_direction_blind_local(q, phase):
    pe = {'maglap': {'k': 3, 'q': q, 'dim': 4, 'phase': phase}}
    m = model('gine', pe=pe)
    cfg = m.config
    assert any(isinstance(t, AddMagLapPE) for t in cfg.transforms())
    with torch.no_grad():
        ya = m(prepared([G_A], cfg))
        yb = m(prepared([G_B], cfg))
    assert (ya - yb).abs().max() > 1e-3
    # control: with q = 0 the (canonical) PE is that of the symmetrised graph: blind again.
    # (phase='invariant' is not: its tokens sum over in- and out-edges separately.)
    pe0 = {'maglap': {'k': 3, 'q': 0.0, 'dim': 4, 'phase': 'canonical'}}
    m0 = model('gine', pe=pe0)
    with torch.no_grad():
        ya, yb = m0(prepared([G_A], m0.config)), m0(prepared([G_B], m0.config))
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5)


def symmetrised(b):
    out = b.clone()
    out.edge_index = torch.cat([b.edge_index, b.edge_index.flip(0)], dim=1)
    out.edge_attr = torch.cat([b.edge_attr, b.edge_attr], dim=0)
    return out


def zinc_like(seed=0, sizes=(5, 9, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        d = random_digraph(n, 2 * n, seed=seed * 100 + n)
        E = d['edge_index'].size(1)
        out.append(Data(x=torch.randint(0, 6, (n, 1), generator=g), edge_index=d['edge_index'],
                        edge_attr=torch.randint(0, 3, (E,), generator=g), y=torch.zeros(1)))
    return out


@pytest.mark.parametrize('local,attn', [
    (loc, a) for loc in ('gine', 'gatedgcn', 'dirgine', None)
    for a in ('full', 'exphormer', 'grit', None) if (loc, a) != (None, None)])
def test_directed_model_equals_undirected_model_on_symmetrised_edges(local, attn):
    """directed=True with a direction-blind local = directed=False on the symmetrised batch (every
    layer, including Exphormer's and GRIT's edge use, reads the symmetrised edges); 'dirgine' and
    local=None read the edges as given."""
    as_given = local in ('dirgine', None)
    pe = {'rwse': {'walk_length': 4, 'dim': 4}}
    m_dir = model(local, attn, pe=pe, directed=True, graph_level=True)
    m_und = model(local, attn, pe=pe, directed=False, graph_level=True)
    m_und.load_state_dict(m_dir.state_dict())
    b = prepared(zinc_like(), m_dir.config)  # PEs of the directed graphs, in both runs
    with torch.no_grad():
        got = m_dir(b)
        want = m_und(b if as_given else symmetrised(b))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kw = m_dir.encode(b)
    if as_given:
        assert kw['edge_index'] is b.edge_index
    else:  # built once in encode, shared by all layers
        assert kw['edge_index'].size(1) == 2 * b.edge_index.size(1)
        assert kw['edge_attr'].size(0) == 2 * b.edge_index.size(1)


def test_directed_false_is_the_default_and_leaves_edges_untouched():
    pe = {'maglap': {'k': 3, 'dim': 4}}
    cfg = GPSModelConfig.from_dict(dict(channels=16, num_layers=2, heads=2, pe=pe))
    kw = dict(out_dim=2, node_input='embedding', node_in_dim=6, edge_input='embedding',
              edge_in_dim=3)
    torch.manual_seed(0)
    omitted = GPSModel(cfg, **kw)
    torch.manual_seed(0)
    explicit = GPSModel(cfg, directed=False, **kw)
    b = prepared(zinc_like(seed=1), cfg)
    torch.manual_seed(1)  # training mode: batch statistics, MagLapPE's random sign flips
    y_omitted = omitted(b)
    torch.manual_seed(1)
    assert torch.equal(y_omitted, explicit(b))
    assert omitted.directed is False and 'directed=False' in repr(omitted)
    assert 'directed=True' in repr(model())
    enc = omitted.encode(b)
    assert enc['edge_index'] is b.edge_index


def test_maglap_encoder_gets_the_directed_edges():
    pe = {'maglap': {'k': 3, 'dim': 4, 'phase': 'invariant', 'q': [0.1, 0.2]}}
    m = model('gine', pe=pe)
    assert isinstance(m.maglap_encoder, MagLapPEEncoder)
    assert (m.maglap_encoder.num_q, m.maglap_encoder.phase) == (2, 'invariant')
    seen = []
    hook = m.maglap_encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs['edge_index']), with_kwargs=True)
    b = prepared([G_A, G_B], m.config)
    m(b)
    hook.remove()
    assert len(seen) == 1 and seen[0] is b.edge_index


@pytest.mark.parametrize('local', ['gine', 'dirgine'])
def test_directed_model_permutation_equivariance(local):
    m = model(local, pe={'rwse': {'walk_length': 4, 'dim': 4}})
    d = zinc_like(seed=2, sizes=(9,))[0]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(9)
    p = Data(x=d.x[perm], edge_index=inv[d.edge_index], edge_attr=d.edge_attr, y=d.y)
    with torch.no_grad():
        out = m(prepared([d], m.config))
        out_p = m(prepared([p], m.config))
    torch.testing.assert_close(out_p, out[perm], rtol=1e-4, atol=1e-5)


def test_directed_model_graphs_in_a_batch_are_isolated():
    m = model('dirgine', pe={'maglap': {'k': 3, 'q': [0.1, 0.25], 'dim': 4,
                                        'phase': 'invariant'}})
    graphs = zinc_like(seed=3)
    other = list(graphs)
    g0 = other[0]
    other[0] = Data(x=(g0.x + 1) % 6, edge_index=g0.edge_index.flip(0),
                    edge_attr=g0.edge_attr, y=g0.y)
    with torch.no_grad():
        y1 = m(prepared(graphs, m.config))
        y2 = m(prepared(other, m.config))
    n0 = graphs[0].num_nodes
    assert (y1[:n0] - y2[:n0]).abs().max() > 1e-3  # the changed graph changes
    torch.testing.assert_close(y1[n0:], y2[n0:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('local', ['gine', 'dirgine'])
def test_directed_model_gradients_reach_every_parameter(local):
    pe = {'maglap': {'k': 3, 'q': [0.0, 0.25], 'dim': 4, 'phase': 'invariant'},
          'rwse': {'walk_length': 4, 'dim': 4}}
    m = model(local, pe=pe, graph_level=True, node_input='sinusoid', node_in_dim=2).train()
    graphs = []
    for i, d in enumerate(zinc_like(seed=4)):
        n = d.num_nodes
        d.x = torch.stack([torch.arange(n), torch.arange(n).flip(0) + i], dim=1)
        graphs.append(d)
    b = prepared(graphs, m.config)
    m(b).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_sinusoid_node_input_in_gpsmodel():
    m = model('dirgine', node_input='sinusoid', node_in_dim=2)
    assert isinstance(m.node_encoder, SinusoidEncoder) and m.node_encoder.num_columns == 2
    d = zinc_like(seed=5, sizes=(4,))[0]
    d.x = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 3]])
    assert m(Batch.from_data_list([d])).shape == (4, 2)
    d.x = torch.tensor([[0], [1], [0], [2]])
    with pytest.raises(ValueError, match=r'SinusoidEncoder: expected x of shape \[N, 2\]'):
        m(Batch.from_data_list([d]))
    with pytest.raises(ConfigError, match='sinusoid'):
        model(node_input='sinusoid', node_in_dim=0)


# ------------------------------------------------------------------------------------------------
# (f) SinusoidEncoder
# ------------------------------------------------------------------------------------------------
def sinusoid_reference(x, widths, T):
    """Float64 loops: column f -> [sin(p w_0..w_{m-1}), cos(p w_0..w_{m-1})][:d_f], w_k = T^(-2k/d_f)."""
    rows = []
    for row in x.tolist():
        feats = []
        for p, d in zip(row, widths):
            m = (d + 1) // 2
            w = [T ** (-2.0 * k / d) for k in range(m)]
            feats += ([math.sin(p * wk) for wk in w] + [math.cos(p * wk) for wk in w])[:d]
        rows.append(feats)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize('F,hidden,T', [(2, 8, 32.0), (3, 11, 10.0), (1, 5, 32.0)])
def test_sinusoid_encoder_matches_float64_reference(F, hidden, T):
    enc = SinusoidEncoder(F, 6, max_timescale=T, hidden=hidden)
    assert sum(enc.widths) == hidden and max(enc.widths) - min(enc.widths) <= 1
    x = torch.randint(0, 20, (13, F), generator=torch.Generator().manual_seed(F))
    want = sinusoid_reference(x, enc.widths, T)
    torch.testing.assert_close(enc.encode(x).double(), want, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(enc.double().encode(x), want, rtol=1e-12, atol=1e-12)
    enc.float()
    torch.testing.assert_close(enc(x), enc.lin(enc.encode(x)))
    if F == 1:  # [N] works for one column
        torch.testing.assert_close(enc(x.view(-1)), enc(x))


def test_sinusoid_encoder_defaults_and_errors():
    enc = SinusoidEncoder(2, 10)
    assert enc.max_timescale == 32.0 and enc.widths == [5, 5] and enc.hidden == 10
    assert repr(enc) == 'SinusoidEncoder(2, 10, max_timescale=32, hidden=10)'
    with pytest.raises(ValueError, match=r'expected x of shape \[N, 2\].*got \[4, 3\]'):
        enc(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='hidden'):
        SinusoidEncoder(3, 2)
    with pytest.raises(ValueError, match='max_timescale'):
        SinusoidEncoder(2, 8, max_timescale=0)


# ------------------------------------------------------------------------------------------------
# (g) config: local 'dirgine', MagLapPE q lists and phase
# ------------------------------------------------------------------------------------------------
def test_config_round_trip_with_q_list_and_phase():
    d = {'channels': 32, 'local': 'dirgine',
         'pe': {'maglap': {'k': 4, 'q': [0.0, 0.1, 0.25], 'dim': 8, 'phase': 'invariant'}}}
    cfg = GPSModelConfig.from_dict(d)
    assert cfg.pe.maglap.q == [0.0, 0.1, 0.25] and cfg.pe.maglap.num_q == 3
    assert cfg.pe.maglap.phase == 'invariant'
    assert GPSModelConfig.from_dict(cfg.to_dict()) == cfg
    (t,) = cfg.transforms()
    assert isinstance(t, AddMagLapPE) and t.k == 4 and tuple(t.q) == (0.0, 0.1, 0.25)
    single = MagLapPEConfig(q=0.3)
    assert single.q == 0.3 and single.num_q == 1 and single.phase == 'canonical'
    (t,) = GPSModelConfig(pe={'maglap': single}).transforms()
    assert isinstance(t.q, float) and t.q == 0.3
    assert MagLapPEConfig(q=(0.1, 0.2)).q == [0.1, 0.2]  # a tuple becomes a list (YAML form)
    # num_q is what the model's encoder is built with
    m = GPSModel(cfg, out_dim=1, node_input='embedding', node_in_dim=3, edge_input=None)
    assert m.maglap_encoder.num_q == 3 and m.maglap_encoder.phase == 'invariant'


def test_experiment_yaml_with_q_list_and_dirgine():
    from gtpe.train.config import ConfigError as TrainConfigError
    from gtpe.train.config import load_config

    base = {'dataset': {'name': 'zinc'},
            'model': {'channels': 32, 'local': 'dirgine',
                      'pe': {'maglap': {'k': 4, 'q': [0.05, 0.25], 'phase': 'invariant'}}}}
    cfg = load_config(data=base)
    assert cfg.model.local == 'dirgine' and cfg.model.pe.maglap.q == [0.05, 0.25]
    cfg = load_config(data=base, overrides=['model.pe.maglap.q=[0.1, 0.2, 0.3]'])
    assert cfg.model.pe.maglap.q == [0.1, 0.2, 0.3]
    cfg = load_config(data=base, overrides=['model.pe.maglap.q=0.5'])
    assert cfg.model.pe.maglap.q == 0.5
    for override, where in [('model.pe.maglap.q=[]', 'model.pe.maglap.q'),
                            ('model.pe.maglap.q=[0.1, -0.2]', 'model.pe.maglap.q'),
                            ('model.pe.maglap.phase=complex', 'model.pe.maglap.phase'),
                            ('model.local=dirgin', 'model.local')]:
        with pytest.raises(TrainConfigError, match=f'^{where}'):
            load_config(data=base, overrides=[override])


@pytest.mark.parametrize('maglap,match', [
    ({'q': []}, 'non-empty list'),
    ({'q': [0.1, -0.2]}, 'non-negative'),
    ({'q': -0.1}, 'non-negative'),
    ({'q': [0.1, 0.1]}, 'repeat'),
    ({'q': [0.1, True]}, 'non-negative'),
    ({'q': float('nan')}, 'non-negative'),
    ({'q': 'big'}, 'non-negative'),
    ({'phase': 'complex'}, "phase must be one of \\('canonical', 'invariant'\\)"),
])
def test_bad_maglap_values_are_config_errors(maglap, match):
    with pytest.raises(ConfigError, match=match):
        GPSModelConfig.from_dict({'pe': {'maglap': maglap}})


def test_unknown_local_is_a_config_error():
    with pytest.raises(ConfigError, match="local must be one of .*'dirgine'.*got 'dirgin'"):
        GPSModelConfig(local='dirgin')
    assert isinstance(model('dirgine').layers[0].local, DirGINE)



def test_rwse_config_undirected_reaches_the_transform():
    from gtpe.models import GPSModelConfig
    from gtpe.models.config import ConfigError
    cfg = GPSModelConfig.from_dict({'pe': {'rwse': {'walk_length': 5, 'dim': 8,
                                                    'undirected': True}}})
    (t,) = cfg.transforms()
    assert t.undirected is True and t.walk_length == 5
    assert GPSModelConfig.from_dict({'pe': {'rwse': {}}}).transforms()[0].undirected is False
    assert GPSModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match='undirected'):
        GPSModelConfig.from_dict({'pe': {'rwse': {'undirected': 'yes'}}})
