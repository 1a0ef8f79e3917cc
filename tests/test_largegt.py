"""LargeGT (Dwivedi et al. 2023): token sampling, local and codebook attention against dense
float64 references, the EMA k-means step, isolation, equivariance, config errors, training."""
import copy
import math
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from gtpe.models import GPSModelConfig, model_class
from gtpe.models.config import ConfigError
from gtpe.models.largegt_model import LargeGTModel
from gtpe.nn.codebook import CodebookAttention, EMACodebook
from gtpe.nn.largegt import LargeGTLocal, hop_tokens, propagate_hops, sample_hop_neighbors

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'

pytestmark = pytest.mark.usefixtures('one_thread')


def _graph(n=30, e=70, seed=0, feats=5):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)  # undirected, no duplicates
    return ei, torch.randn(n, feats, generator=g)


def _dense(ei, n):
    A = torch.zeros(n, n, dtype=torch.float64)
    A[ei[1], ei[0]] = 1.0  # A[i, j] = 1 for an edge j -> i
    return A


def _config(**options):
    base = {'arch': 'largegt', 'channels': 8, 'heads': 2, 'num_layers': 1, 'norm': 'batch',
            'dropout': 0.1, 'attn_dropout': 0.1,
            'arch_options': {'num_samples': 6, 'num_centroids': 5, 'global_dim': 4, **options}}
    return GPSModelConfig.from_dict(base)


def _model(cfg=None, in_dim=5, out=3, seed=0):
    torch.manual_seed(seed)
    cfg = cfg or _config()
    return model_class(cfg)(cfg, out_dim=out, node_input='linear', node_in_dim=in_dim,
                            edge_input=None, graph_level=False)


# -- tokens ---------------------------------------------------------------------------------

def test_propagate_hops_equals_dense_normalised_adjacency():
    ei, x = _graph(seed=1)
    ei = torch.cat([ei, torch.tensor([[3], [3]])], 1)  # a self-loop: replaced by the one of I
    A = _dense(ei, 30)
    A.fill_diagonal_(0)
    A_hat = A + torch.eye(30, dtype=torch.float64)
    d = A_hat.sum(1).rsqrt()
    P = d[:, None] * A_hat * d[None, :]
    x = x.double()
    out = propagate_hops(x, ei, hops=2)
    assert out.shape == (30, 3, 5)
    torch.testing.assert_close(out, torch.stack([x, P @ x, P @ P @ x], 1))


def _multiset(ei, n, i):
    A = _dense(ei, n)
    A2 = A @ A
    return A[i].nonzero().view(-1).tolist() + A2[i].nonzero().view(-1).tolist()


@pytest.mark.parametrize('K', [3, 8, 40])
def test_sampler_draws_from_the_two_hop_multiset(K):
    ei, _ = _graph(n=30, e=40, seed=2)
    ei = ei[:, (ei < 28).all(0)]  # nodes 28, 29 isolated
    targets = torch.arange(30)
    gen = torch.Generator().manual_seed(5)
    nodes = sample_hop_neighbors(ei, 30, targets, K, generator=gen)
    assert nodes.shape == (30, K) and nodes[:, 0].tolist() == list(range(30))
    for i in range(30):
        ms = _multiset(ei, 30, i)
        got = nodes[i, 1:].tolist()
        if not ms:
            assert got == [i] * (K - 1)
            continue
        mult = {v: ms.count(v) for v in set(ms)}
        drawn = {v: got.count(v) for v in set(got)}
        assert set(drawn) <= set(mult)
        if len(ms) >= K - 1:  # without replacement (a node listed twice may come twice)
            assert all(drawn[v] <= mult[v] for v in drawn)
        else:  # every element floor((K-1)/|M|) or one more times
            q = (K - 1) // len(ms)
            per_elem = sum(drawn.get(v, 0) for v in mult)
            assert per_elem == K - 1
            assert all(q * mult[v] <= drawn.get(v, 0) <= (q + 1) * mult[v] for v in mult)
    # seeded: the same generator seed gives the same sample, another seed another one
    again = sample_hop_neighbors(ei, 30, targets, K, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, nodes)
    if K == 3:
        other = sample_hop_neighbors(ei, 30, targets, K, torch.Generator().manual_seed(6))
        assert not torch.equal(other, nodes)


def test_sampler_is_uniform_over_the_multiset():
    # star: centre 0 with leaves 1..4; leaf 1's multiset = [0] + [1, 2, 3, 4] (2-walks via 0)
    ei = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 0, 0, 0, 0]])
    counts = torch.zeros(5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        counts += torch.bincount(sample_hop_neighbors(ei, 5, torch.tensor([1]), 3, gen)[0, 1:],
                                 minlength=5)
    assert counts.sum() == 800
    assert ((counts / 800 - 0.2).abs() < 0.06).all(), counts  # 2 of 5 without replacement


def test_hop_tokens_layout():
    h = torch.arange(4 * 3 * 2, dtype=torch.float).view(4, 3, 2)
    nodes = torch.tensor([[2, 0], [1, 1]])
    t = hop_tokens(h, nodes)
    assert t.shape == (2, 6, 2)
    assert torch.equal(t[0], torch.cat([h[2], h[0]]))  # node 2's hops 0,1,2 then node 0's
    assert torch.equal(t[1], torch.cat([h[1], h[1]]))


# -- local module ---------------------------------------------------------------------------

def _ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _local_reference(m, T):
    """The paper's local module, written out per sequence and per head in float64."""
    C, H = m.channels, m.heads
    Wqkv, bqkv = m.qkv.weight, m.qkv.bias
    outs = []
    for seq in T:  # [L, C]
        E = seq @ m.embed.weight.T + m.embed.bias
        Hn = _ln(E, m.norm)
        heads = []
        for h in range(H):
            def proj(which, h=h):
                rows = slice(which * H * C + h * C, which * H * C + (h + 1) * C)
                return Hn @ Wqkv[rows].T + bqkv[rows]
            Q, K, V = proj(0), proj(1), proj(2)
            heads.append(torch.softmax(Q @ K.T / math.sqrt(C), dim=-1) @ V)
        Y = torch.cat(heads, -1) @ m.out.weight.T + m.out.bias
        Z = _ln(E @ m.res.weight.T + m.res.bias + Y, m.final_norm)
        s = torch.stack([torch.cat([Z[0], Z[t]]) @ m.readout.weight[0] + m.readout.bias[0]
                         for t in range(1, len(Z))])
        a = torch.softmax(s, 0)
        outs.append(Z[0] + (a[:, None] * Z[1:]).sum(0))
    return torch.stack(outs)


def _randomise(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def test_local_module_equals_dense_float64_reference():
    m = LargeGTLocal(6, heads=3, dropout=0.3, attn_dropout=0.2).double().eval()
    _randomise(m)
    T = torch.randn(4, 7, 6, dtype=torch.float64)
    out = m(T)
    assert out.shape == (4, 18)
    torch.testing.assert_close(out, _local_reference(m, T))


def test_local_module_ignores_the_order_of_the_non_target_tokens():
    m = LargeGTLocal(6, heads=2).double().eval()
    _randomise(m, seed=1)
    T = torch.randn(3, 9, 6, dtype=torch.float64)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(8)])
    torch.testing.assert_close(m(T[:, perm]), m(T))
    swapped = T.clone()
    swapped[:, [0, 1]] = T[:, [1, 0]]  # the target token is special
    assert not torch.allclose(m(swapped), m(T))


def test_local_module_checks_shapes_and_repr():
    m = LargeGTLocal(4, heads=2)
    with pytest.raises(ValueError, match=r'tokens must be \[B, L >= 2, 4\]'):
        m(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match='dropout must be in'):
        LargeGTLocal(4, dropout=1.0)
    assert repr(m) == 'LargeGTLocal(4, heads=2, dropout=0.3)'


# -- codebook --------------------------------------------------------------------------------

def _kmeans_reference(state, x, decay, eps=1e-5, momentum=0.1):
    """One EMA k-means step of the paper's code, written out in float64."""
    B = x.shape[0]
    mean = x.mean(0)
    var_b = ((x - mean) ** 2).mean(0)
    z = (x - mean) / torch.sqrt(var_b + 1e-5)
    rm = (1 - momentum) * state['rm'] + momentum * mean
    rv = (1 - momentum) * state['rv'] + momentum * var_b * B / (B - 1)
    e = state['embedding']
    M = e.shape[0]
    assign = torch.tensor([min(range(M), key=lambda c: float(((z[b] - e[c]) ** 2).sum()))
                           for b in range(B)])
    n = torch.tensor([float((assign == c).sum()) for c in range(M)], dtype=torch.float64)
    size = decay * state['size'] + (1 - decay) * n
    tot = size.sum()
    size = (size + eps) / (tot + M * eps) * tot
    ema = decay * state['ema'] + (1 - decay) * torch.stack(
        [z[assign == c].sum(0) for c in range(M)])
    emb = ema / size[:, None]
    return {'assign': assign, 'size': size, 'ema': ema, 'embedding': emb, 'rm': rm, 'rv': rv,
            'centroids': emb * torch.sqrt(rv + 1e-5) + rm,
            'counts': decay * state['counts'] + (1 - decay) * n}


def test_codebook_update_matches_a_reference_kmeans_step():
    torch.manual_seed(0)
    cb = EMACodebook(4, 3, decay=0.9).double()
    x = torch.randn(12, 3, dtype=torch.float64) * 2 + 1
    state = {'rm': cb.bn.running_mean.clone(), 'rv': cb.bn.running_var.clone(),
             'embedding': cb.embedding.clone(), 'size': cb.cluster_size.clone(),
             'ema': cb.ema_sum.clone(), 'counts': cb.counts.clone()}
    for step in range(3):
        ref = _kmeans_reference(state, x + step, 0.9)
        assign = cb.update((x + step).requires_grad_())
        assert torch.equal(assign, ref['assign'])
        torch.testing.assert_close(cb.cluster_size, ref['size'])
        torch.testing.assert_close(cb.ema_sum, ref['ema'])
        torch.testing.assert_close(cb.embedding, ref['embedding'])
        torch.testing.assert_close(cb.bn.running_mean, ref['rm'])
        torch.testing.assert_close(cb.bn.running_var, ref['rv'])
        torch.testing.assert_close(cb.centroids, ref['centroids'])
        torch.testing.assert_close(cb.counts, ref['counts'])
        state = {'rm': ref['rm'], 'rv': ref['rv'], 'embedding': ref['embedding'],
                 'size': ref['size'], 'ema': ref['ema'], 'counts': ref['counts']}
    assert not any(b.requires_grad for b in cb.buffers())
    assert {'embedding', 'centroids', 'ema_sum', 'cluster_size', 'counts',
            'bn.running_mean', 'bn.running_var'} <= set(cb.state_dict())
    # never-assigned centroids are left out of the attention
    lc = cb.log_counts()
    assert torch.equal(torch.isinf(lc), cb.counts == 0)
    assert torch.equal(EMACodebook(3, 2).log_counts(), torch.zeros(3))  # before any update


def test_codebook_attention_equals_dense_float64_reference():
    m = CodebookAttention(4, global_dim=3, num_codes=5, heads=2, pe_dim=2).double().eval()
    _randomise(m, seed=2)
    with torch.no_grad():
        m.codebook.centroids.copy_(torch.randn(5, 5, dtype=torch.float64))
        m.codebook.counts.copy_(torch.tensor([3.0, 0.0, 1.5, 7.0, 0.2]))
    x, pe = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    out = m(x, pe)
    q_in = torch.cat([x @ m.proj.weight.T + m.proj.bias, pe], 1)
    cents, counts = m.codebook.centroids, m.codebook.counts
    ref = []
    for h in range(2):
        rows = slice(4 * h, 4 * h + 4)
        q = q_in @ m.query.weight[rows].T + m.query.bias[rows]
        k = cents @ m.key.weight[rows].T + m.key.bias[rows]
        v = cents[:, :3] @ m.value.weight[rows].T + m.value.bias[rows]
        w = torch.exp(q @ k.T / 2.0) * counts  # softmax(s + log n) = n e^s / sum
        ref.append((w / w.sum(1, keepdim=True)) @ v)
    torch.testing.assert_close(out, torch.cat(ref, 1))
    before = copy.deepcopy(m.codebook.state_dict())
    m(x, pe)  # eval mode: the codebook stays
    assert all(torch.equal(before[k], v) for k, v in m.codebook.state_dict().items())


def test_codebook_attention_output_does_not_see_its_own_update():
    m = CodebookAttention(4, global_dim=3, num_codes=3).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    m.eval()
    expect = m(x)
    m.train()
    out = m(x)  # attends with the old codebook, then updates it
    torch.testing.assert_close(out, expect)
    assert not torch.allclose(m(x), expect)


# -- model ----------------------------------------------------------------------------------

def _train_steps(model, data, steps=3):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(data).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize('conv_type', ['full', 'local', 'global'])
def test_gradients_reach_every_parameter(conv_type):
    ei, x = _graph(seed=3)
    model = _model(_config(conv_type=conv_type))
    model.train()
    model(Data(x=x, edge_index=ei)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert (model.local is None) == (conv_type == 'global')
    assert (model.glob is None) == (conv_type == 'local')


def test_gradients_with_lap_pe():
    ei, x = _graph(seed=3)
    cfg = GPSModelConfig.from_dict({'arch': 'largegt', 'channels': 8, 'heads': 1,
                                    'num_layers': 1, 'pe': {'lap': {'k': 3}},
                                    'arch_options': {'num_samples': 4, 'num_centroids': 4}})
    model = _model(cfg)
    data = Data(x=x, edge_index=ei, lap_pe=torch.randn(30, 3))
    model(data).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.glob.pe_dim == 3
    with pytest.raises(ValueError, match=r"no 'lap_pe'.*AddLapPE\(k=3\)"):
        model(Data(x=x, edge_index=ei))


def test_eval_output_ignores_nodes_outside_the_sampled_neighbourhood():
    # two components: changing the features of one leaves the other's outputs unchanged, and
    # on a path a node 5 hops away is beyond the 2-hop sample with 2-hop propagation
    ei, x = _graph(n=30, e=60, seed=4)
    path = torch.arange(30, 41)
    pe = torch.stack([path[:-1], path[1:]])
    ei = torch.cat([ei, pe, pe.flip(0)], 1)
    x = torch.cat([x, torch.randn(11, 5)])
    model = _model()
    _train_steps(model, Data(x=x, edge_index=ei))  # codebook and BN statistics move
    model.eval()
    out = model(Data(x=x, edge_index=ei))
    x2 = x.clone()
    x2[:30] += torch.randn(30, 5)  # the other component
    x2[35] += 3.0  # 5 hops from node 30
    out2 = model(Data(x=x2, edge_index=ei))
    torch.testing.assert_close(out2[30], out[30])
    assert not torch.allclose(out2[:30], out[:30])
    x3 = x.clone()
    x3[34] += 3.0  # 4 hops from node 30: seen through the propagated tokens
    assert not torch.allclose(model(Data(x=x3, edge_index=ei))[30], out[30])


def test_model_is_permutation_equivariant_when_every_neighbour_is_taken():
    # a cycle: every node's multiset (2 neighbours, 3 nodes 2 walks away) has 5 elements, and
    # K - 1 = 10 takes each twice, so the sample does not depend on the numbering
    n = 12
    src = torch.arange(n)
    ei = torch.cat([torch.stack([src, (src + 1) % n]), torch.stack([(src + 1) % n, src])], 1)
    x = torch.randn(n, 5)
    model = _model(_config(num_samples=11))
    _train_steps(model, Data(x=x, edge_index=ei))
    model.eval()
    out = model(Data(x=x, edge_index=ei))
    perm = torch.randperm(n)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    out_p = model(Data(x=x[perm], edge_index=inv[ei]))
    torch.testing.assert_close(out_p, out[perm])


def test_eval_is_deterministic_and_training_resamples_only_when_asked():
    ei, x = _graph(seed=6)
    data = Data(x=x, edge_index=ei)
    model = _model(_config(resample=True))
    model.eval()
    torch.testing.assert_close(model(data), model(data))
    fixed = model.sample(ei, 30, torch.arange(30))
    model.train()
    assert not torch.equal(model.sample(ei, 30, torch.arange(30)), fixed)
    model2 = _model(_config(resample=False))
    model2.train()
    assert torch.equal(model2.sample(ei, 30, torch.arange(30)), fixed)  # the seeded one


def test_codebook_state_is_saved_deterministic_and_resumes_exactly():
    ei, x = _graph(seed=7)
    data = Data(x=x, edge_index=ei)
    a, b = _model(seed=1), _model(seed=1)
    torch.manual_seed(2)  # dropout
    _train_steps(a, data)
    torch.manual_seed(2)
    _train_steps(b, data)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert 'glob.codebook.centroids' in a.state_dict()
    c = _model(seed=9)
    c.load_state_dict(a.state_dict())
    a.eval()
    c.eval()
    torch.testing.assert_close(c(data), a(data))


def test_neighbor_subgraph_returns_the_seeds_rows():
    from gtpe.train.node_sampling import neighbor_loader as _neighbor_loader
    ei, x = _graph(n=40, e=120, seed=8)
    g = Data(x=x, edge_index=ei, num_nodes=40)
    model = _model()
    model.eval()
    torch.manual_seed(0)
    (batch,) = list(_neighbor_loader(g, torch.tensor([3, 5, 9]), [-1, -1, -1, -1, -1], 3,
                                     shuffle=False))
    out = model(batch)
    assert out.shape == (3, 3)
    model.train()
    assert model(batch).shape == (3, 3)


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize('change, match', [
    ({'arch_options': {'num_sample': 3}},
     r"unknown arch_options key 'num_sample'; allowed: conv_type, num_samples"),
    ({'arch_options': {'conv_type': 'both'}}, r"arch_options.conv_type must be one of"),
    ({'arch_options': {'num_samples': 0}}, r"arch_options.num_samples must be a positive"),
    ({'arch_options': {'num_centroids': 2.5}}, r"num_centroids must be a positive integer"),
    ({'arch_options': {'decay': 1.0}}, r"arch_options.decay must be in \[0, 1\), got 1.0"),
    ({'arch_options': {'resample': 'yes'}}, r"resample must be true or false"),
    ({'arch_options': {'sample_seed': -1}}, r"sample_seed must be an integer >= 0"),
    ({'num_layers': 2}, r"set num_layers: 1, got 2"),
    ({'local': 'gcn'}, r"does not read model.local .*remove it"),
    ({'attn': 'linear'}, r"does not read model.attn"),
    ({'residual': False}, r"does not read model.residual"),
    ({'pe': {'rwse': {'walk_length': 4, 'dim': 4}}}, r"reads only pe.lap .*got pe.rwse"),
    ({'pe': {'lap': {'k': 2}}, 'arch_options': {'conv_type': 'local'}},
     r"pe.lap feeds the global module"),
])
def test_config_errors(change, match):
    base = {'arch': 'largegt', 'channels': 8, 'heads': 1, 'num_layers': 1}
    with pytest.raises(ConfigError, match=match):
        GPSModelConfig.from_dict({**base, **change})


def test_model_argument_errors():
    cfg = _config()
    with pytest.raises(ConfigError, match='node-level model; the dataset is graph-level'):
        LargeGTModel(cfg, out_dim=2, node_input='linear', node_in_dim=5, edge_input=None,
                     graph_level=True)
    with pytest.raises(ConfigError, match="needs float node features"):
        LargeGTModel(cfg, out_dim=2, node_input='embedding', node_in_dim=5, edge_input=None,
                     graph_level=False)
    gps = GPSModelConfig.from_dict({'channels': 8})
    with pytest.raises(ConfigError, match="needs a config with arch='largegt'"):
        LargeGTModel(gps, out_dim=2, node_input='linear', node_in_dim=5, edge_input=None,
                     graph_level=False)


# -- training -------------------------------------------------------------------------------

@pytest.mark.parametrize('loader', ['full', 'neighbor'])
def test_cora_config_trains_two_epochs(tmp_path, loader):
    from gtpe.train.config import load_config
    from gtpe.train.loop import train
    overrides = {'model.channels': 8, 'train.epochs': 2, 'train.device': 'cpu',
                 'model.arch_options': {'num_samples': 4, 'num_centroids': 8,
                                        'global_dim': 8}}
    if loader == 'neighbor':
        overrides.update({'train.loader': 'neighbor', 'train.fanouts': [5, 5],
                          'train.batch_size': 70})
    cfg = load_config(CONFIGS / 'cora' / 'largegt.yaml', overrides=overrides)
    res = train(cfg, tmp_path / 'run', progress=False)
    assert res['status'] == 'completed' and res['epochs'] == 2
    assert 0.0 <= res['test'] <= 1.0


def test_fanouts_are_one_per_sampled_hop():
    # LargeGT has one layer but samples tokens from the 2-hop neighbourhood
    from gtpe.train.config import ConfigError, load_config
    base = {'train.loader': 'neighbor', 'train.batch_size': 70}
    cfg = load_config(CONFIGS / 'cora' / 'largegt.yaml',
                      overrides={**base, 'train.fanouts': [5, 5]})
    assert cfg.model.num_layers == 1 and cfg.train.fanouts == [5, 5]
    with pytest.raises(ConfigError, match='model.arch = largegt, which samples 2 hops'):
        load_config(CONFIGS / 'cora' / 'largegt.yaml', overrides={**base, 'train.fanouts': [5]})
