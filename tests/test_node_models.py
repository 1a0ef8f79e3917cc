"""SGFormerModel and PolynormerModel (arch: sgformer / polynormer): dense float64 references of
the papers' equations, equality to PyG's models with copied weights, permutation equivariance,
gradients, the two Polynormer stages, config errors, GPSLayer's attn='sgformer'/'polynormer',
and the shipped Cora/CiteSeer configs training for 2 epochs."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from gtpe.models import GPSModel, GPSModelConfig, model_class
from gtpe.models.config import ConfigError
from gtpe.models.polynormer_model import PolynormerModel
from gtpe.models.sgformer_model import SGFormerModel
from gtpe.nn import GPSLayer
from gtpe.nn.attention.polynormer import PolynormerAttention
from gtpe.nn.attention.sgformer import SGFormerAttention
from gtpe.train import load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
F_IN, C, OUT = 5, 8, 3

pytestmark = pytest.mark.usefixtures('one_thread')


def _graph(n=20, e=50, seed=0, dtype=torch.float64):
    """A random undirected graph without self-loops or repeated edges, float features."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.cat([ei, ei.flip(0)], 1).unique(dim=1)
    return Data(x=torch.randn(n, F_IN, generator=g, dtype=dtype), edge_index=ei, num_nodes=n)


def _model(arch, seed=0, graph_level=False, **cfg):
    base = ({'local': 'gcn', 'attn': 'sgformer'} if arch == 'sgformer'
            else {'local': None, 'attn': 'polynormer'})
    config = GPSModelConfig.from_dict({'arch': arch, 'channels': C, 'heads': 2, 'num_layers': 2,
                                       **base, **cfg})
    torch.manual_seed(seed)
    m = model_class(config)(config, out_dim=OUT, node_input='linear', node_in_dim=F_IN,
                            edge_input=None, graph_level=graph_level).double()
    with torch.no_grad():  # non-trivial norms and running statistics
        for mod in m.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
                mod.weight.normal_()
                mod.bias.normal_()
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


# -- dense float64 references -------------------------------------------------------------------

def _adj(ei, n):
    A = torch.zeros(n, n, dtype=torch.float64)
    A[ei[1], ei[0]] = 1.0  # A[i, j] = 1 for an edge j -> i
    return A


def _gcn_dense(h, A, conv):
    """Kipf's layer: D^-1/2 (A + I) D^-1/2 H W + b."""
    Ah = A + torch.eye(A.size(0), dtype=A.dtype)
    d = Ah.sum(1).rsqrt()
    W = conv.lin.weight if conv.lin is not None else torch.eye(h.size(1), dtype=h.dtype)
    return d[:, None] * Ah * d[None, :] @ h @ W.T + conv.bias


def _bn(h, bn):
    return (h - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias


def _ln(h, ln):
    mu = h.mean(-1, keepdim=True)
    var = h.var(-1, unbiased=False, keepdim=True)
    return (h - mu) / (var + ln.eps).sqrt() * ln.weight + ln.bias


def _sgformer_attn_dense(z, attn):
    """Eq. (3)-(4) with the n x n matrix: D^-1 [V + 1/n Q~ K~^T V], per head, heads averaged."""
    n, H = z.size(0), attn.heads
    Wq, Wk, Wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    Q, K, V = ((z @ W.T + b).view(n, H, -1) for W, b in ((Wq, bq), (Wk, bk), (Wv, bv)))
    if attn.qk_norm == 'graph':
        Q, K = Q / Q.norm(), K / K.norm()  # Frobenius norms over all nodes and heads
    else:
        Q, K = Q / Q.norm(dim=-1, keepdim=True), K / K.norm(dim=-1, keepdim=True)
    outs = []
    for h in range(H):
        S = Q[:, h] @ K[:, h].T  # [n, n]
        D = 1 + S.sum(1, keepdim=True) / n
        outs.append((V[:, h] + S @ V[:, h] / n) / D)
    return torch.stack(outs).mean(0)


def _head(m, h):
    return m.head(h)  # Linear or Linear-ReLU-Linear: plain torch modules


def sgformer_dense(m, data):
    x, n = data.x, data.num_nodes
    A = _adj(data.edge_index, n)
    o, cfg = m.opt, m.config
    # global branch
    z = x @ m.trans_encoder.lin.weight.T + m.trans_encoder.lin.bias
    if m.trans_norms is not None:
        z = _ln(z, m.trans_norms[0])
    z = torch.relu(z)
    for i, attn in enumerate(m.attns):
        a = _sgformer_attn_dense(z, attn)
        if cfg.residual:
            a = o['alpha'] * a + (1 - o['alpha']) * z
        if m.trans_norms is not None:
            a = _ln(a, m.trans_norms[i + 1])
        z = torch.relu(a) if o['trans_act'] else a
    if cfg.local is None:
        return _head(m, z)
    # GCN branch
    if o['gnn'] == 'plain':
        h = x @ m.gnn_encoder.lin.weight.T  # layer 1's weight (no bias: the GCN's bias follows)
        for i, conv in enumerate(m.convs):
            h = _gcn_dense(h, A, conv)
            if i < len(m.convs) - 1:
                h = torch.relu(_bn(h, m.gnn_norms[i]) if m.gnn_norms is not None else h)
    else:
        h = x @ m.gnn_encoder.lin.weight.T + m.gnn_encoder.lin.bias
        h0 = torch.relu(_bn(h, m.gnn_norms[0]) if m.gnn_norms is not None else h)
        h = h0
        for i, conv in enumerate(m.convs):
            h = _gcn_dense(h, A, conv)
            h = torch.relu(_bn(h, m.gnn_norms[i + 1]) if m.gnn_norms is not None else h)
            if cfg.residual:
                h = h + h0
    w = o['graph_weight']
    out = w * h + (1 - w) * z if o['aggregate'] == 'add' else torch.cat([z, h], 1)
    return _head(m, out)


SGFORMER_CASES = [
    {},  # defaults (norm: batch -> LayerNorm in the attention branch, BatchNorm in the GCN)
    {'norm': None, 'residual': False, 'head': 'linear'},
    {'arch_options': {'gnn': 'residual', 'aggregate': 'cat', 'trans_layers': 2, 'trans_act': True,
                      'alpha': 0.3, 'qk_norm': 'node'}},
    {'num_layers': 3, 'residual': False, 'arch_options': {'gnn': 'residual', 'graph_weight': 0.6}},
    {'local': None, 'heads': 1},
]


@pytest.mark.parametrize('cfg', SGFORMER_CASES)
def test_sgformer_matches_dense_reference(cfg):
    m = _model('sgformer', **cfg)
    data = _graph()
    torch.testing.assert_close(m(data), sgformer_dense(m, data))


def _polynormer_local_dense(x, A, layer):
    """One local layer: (1 - beta) LN(H * X~) + beta X~ with dense GAT scores / GCN weights."""
    n, H, d = x.size(0), layer.heads, layer.head_dim
    Wh, Wl, Wg = layer.in_proj_weight.split(C)
    bh, bl = layer.in_proj_bias.split(C)
    G = x @ Wg.T
    if layer.conv == 'gat':
        agg = []
        for h in range(H):
            Gh = G[:, h * d:(h + 1) * d]
            s = (Gh @ layer.att_src[h])[None, :] + (Gh @ layer.att_dst[h])[:, None]  # [i, j]
            s = F.leaky_relu(s, 0.2).masked_fill(A == 0, float('-inf'))
            agg.append(torch.softmax(s, 1).nan_to_num(0.0) @ Gh)
        agg = torch.cat(agg, 1)
    else:
        Ah = (A * (1 - torch.eye(n, dtype=A.dtype))) + torch.eye(n, dtype=A.dtype)
        dis = Ah.sum(1).rsqrt()
        agg = dis[:, None] * Ah * dis[None, :] @ G
    s = agg + x @ Wl.T + bl
    if layer.bn is not None:
        s = _bn(s, layer.bn)
    xt = torch.relu(s)
    hh = torch.relu(x @ Wh.T + bh)
    b = layer.beta_vector()
    return (1 - b) * _ln(hh * xt, layer.norm) + b * xt


def _polynormer_global_dense(g, attn):
    """sigma-kernel attention per head with the n x n score matrix, gate, LN, out_proj, ReLU."""
    H, d = attn.heads, attn.head_dim
    W = attn.in_proj_weight.split(C)
    gate = g @ W[0].T + attn.h_bias + attn.beta_vector()
    k = torch.sigmoid(g @ W[1].T)
    q = k if attn.qk_shared else torch.sigmoid(g @ W[2].T)
    v = g @ W[-1].T
    a = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        S = q[:, sl] @ k[:, sl].T  # [n, n] kernel scores
        a.append(S @ v[:, sl] / S.sum(1, keepdim=True))
    y = _ln(torch.cat(a, 1), attn.norm) * gate
    return torch.relu(attn.out_proj(y))


def polynormer_dense(m, data, use_global=True):
    x, n = data.x, data.num_nodes
    A = _adj(data.edge_index, n)
    if m.opt['self_loops'] and m.opt['local_conv'] == 'gat':
        A = A * (1 - torch.eye(n, dtype=A.dtype)) + torch.eye(n, dtype=A.dtype)
    h = x @ m.encoder.lin.weight.T + m.encoder.lin.bias
    loc = 0
    for layer in m.locals:
        h = _polynormer_local_dense(h, A, layer)
        loc = loc + h
    if not use_global:
        return m.local_head(loc)
    g = _ln(loc, m.global_norm)
    for attn in m.globals:
        g = _polynormer_global_dense(g, attn)
    return m.head(g)


POLYNORMER_CASES = [
    {'norm': None},  # the official code: GAT, learned beta, 2 global layers
    {'norm': 'batch', 'heads': 1, 'head': 'linear', 'arch_options': {'beta': 0.7, 'local_conv': 'gcn'}},
    {'norm': None, 'num_layers': 3, 'arch_options': {'qk_shared': False, 'global_layers': 1,
                                                      'self_loops': False, 'beta': 0.2}},
]


@pytest.mark.parametrize('cfg', POLYNORMER_CASES)
def test_polynormer_matches_dense_reference(cfg):
    m = _model('polynormer', **cfg)
    data = _graph()
    torch.testing.assert_close(m(data), polynormer_dense(m, data))


def test_polynormer_local_stage_alone():
    m = _model('polynormer', norm=None, arch_options={'global_layers': 0})
    assert m.head is None and len(m.globals) == 0
    data = _graph()
    torch.testing.assert_close(m(data), polynormer_dense(m, data, use_global=False))


# -- equality to PyG's models (same architecture, copied weights) -------------------------------

def test_sgformer_equals_pyg_sgformer():
    """PyG's SGFormer is the official large-graph variant: gnn 'residual', BatchNorm /
    LayerNorm, alpha 0.5, ReLU after attention, per-node q/k normalisation, no q/k/v bias."""
    from torch_geometric.nn.models import SGFormer

    torch.manual_seed(0)
    pyg = SGFormer(F_IN, C, OUT, trans_num_layers=2, trans_num_heads=2, gnn_num_layers=2,
                   graph_weight=0.3).eval()
    m = _model('sgformer', norm='batch', head='linear', arch_options={
        'gnn': 'residual', 'trans_layers': 2, 'trans_act': True, 'alpha': 0.5,
        'qk_norm': 'node', 'graph_weight': 0.3}).float()
    with torch.no_grad():
        for bn in pyg.graph_conv.bns:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        for p in list(pyg.graph_conv.bns.parameters()) + list(pyg.trans_conv.bns.parameters()):
            p.normal_()
        for i, a in enumerate(pyg.trans_conv.attns):
            m.attns[i] = SGFormerAttention.from_pyg(a)
        m.trans_encoder.lin.load_state_dict(pyg.trans_conv.fcs[0].state_dict())
        m.gnn_encoder.lin.load_state_dict(pyg.graph_conv.fcs[0].state_dict())
        for mine, theirs in zip(m.trans_norms, pyg.trans_conv.bns):
            mine.load_state_dict(theirs.state_dict())
        for mine, theirs in zip(m.gnn_norms, pyg.graph_conv.bns):
            mine.load_state_dict(theirs.state_dict())
        for mine, theirs in zip(m.convs, pyg.graph_conv.convs):
            mine.lin.weight.copy_(theirs.lin.weight)
            mine.bias.copy_(theirs.bias)
        m.head.load_state_dict(pyg.fc.state_dict())
    m.eval()
    data = _graph(dtype=torch.float32)
    ref = pyg(data.x, data.edge_index, torch.zeros(data.num_nodes, dtype=torch.long))
    torch.testing.assert_close(F.log_softmax(m(data), -1), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('conv', ['gat', 'gcn'])
def test_polynormer_equals_pyg_polynormer(conv):
    """PyG's Polynormer (one head: its global stage needs heads=1) with the global stage on;
    PyG has no input layer, so ours is the identity (node features of width C)."""
    from torch_geometric.nn.models import Polynormer

    torch.manual_seed(0)
    pyg = Polynormer(C, C, OUT, local_layers=2, global_layers=2, heads=1, beta=0.7,
                     qk_shared=True, post_bn=True, local_attn=conv == 'gat').double().eval()
    pyg._global = True
    config = GPSModelConfig.from_dict({
        'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'channels': C, 'heads': 1,
        'num_layers': 2, 'norm': 'batch', 'head': 'linear',
        'arch_options': {'beta': 0.7, 'local_conv': conv, 'self_loops': False}})
    m = PolynormerModel(config, out_dim=OUT, node_input='linear', node_in_dim=C,
                        edge_input=None, graph_level=False).double().eval()
    with torch.no_grad():
        for mod in list(pyg.lns) + list(pyg.post_bns) + [pyg.ln] + [a.lns for a in pyg.global_attn]:
            for p in mod.parameters():
                p.normal_()
        for bn in pyg.post_bns:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        m.encoder.lin.weight.copy_(torch.eye(C))
        m.encoder.lin.bias.zero_()
        for i, layer in enumerate(m.locals):
            lc = pyg.local_convs[i]
            layer.in_proj_weight.copy_(torch.cat([pyg.h_lins[i].weight, pyg.lins[i].weight,
                                                  lc.lin.weight]))
            bl = pyg.lins[i].bias + (lc.bias if conv == 'gcn' else 0.0)
            layer.in_proj_bias.copy_(torch.cat([pyg.h_lins[i].bias, bl]))
            if conv == 'gat':
                layer.att_src.copy_(lc.att_src[0])
                layer.att_dst.copy_(lc.att_dst[0])
            layer.norm.load_state_dict(pyg.lns[i].state_dict())
            layer.bn.load_state_dict(pyg.post_bns[i].state_dict())
        m.global_norm.load_state_dict(pyg.ln.state_dict())
        for i, a in enumerate(pyg.global_attn):
            m.globals[i] = PolynormerAttention.from_pyg(a).double()
        m.head.load_state_dict(pyg.pred_global.state_dict())
    m.eval()  # the modules from from_pyg are new (training mode)
    g = _graph()
    data = Data(x=torch.randn(g.num_nodes, C, dtype=torch.float64), edge_index=g.edge_index)
    ref = pyg(data.x, data.edge_index, torch.zeros(g.num_nodes, dtype=torch.long))
    # PyG adds 1e-6 to the global attention's normaliser (gtpe does not)
    torch.testing.assert_close(F.log_softmax(m(data), -1), ref, rtol=1e-5, atol=1e-5)


# -- equivariance, batches, gradients, stages ---------------------------------------------------

@pytest.mark.parametrize('arch,cfg', [('sgformer', {}), ('sgformer', {'arch_options': {'gnn': 'residual'}}),
                                      ('polynormer', {}), ('polynormer', {'arch_options': {'local_conv': 'gcn'}})])
def test_permutation_equivariance_and_graph_isolation(arch, cfg):
    m = _model(arch, **cfg)
    data = _graph(seed=1)
    out = m(data)
    perm = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(5))
    inv = torch.argsort(perm)
    pdata = Data(x=data.x[perm], edge_index=inv[data.edge_index], num_nodes=data.num_nodes)
    torch.testing.assert_close(m(pdata), out[perm])
    # in a batch each graph attends only to itself: its rows equal the graph alone
    other = _graph(n=13, e=30, seed=2)
    b = Batch.from_data_list([data, other])
    torch.testing.assert_close(m(b)[:data.num_nodes], out)
    # graph level: the pooled outputs are those of the graphs alone
    mg = _model(arch, graph_level=True, pool='add', **cfg)
    torch.testing.assert_close(mg(b), torch.cat([mg(data), mg(other)]))


@pytest.mark.parametrize('arch,cfg', [
    ('sgformer', {}),
    ('sgformer', {'arch_options': {'gnn': 'residual', 'aggregate': 'cat', 'trans_layers': 2}}),
    ('sgformer', {'local': None}),
    ('polynormer', {}),
    ('polynormer', {'norm': 'batch', 'arch_options': {'local_conv': 'gcn', 'qk_shared': False}}),
])
def test_gradients_reach_every_parameter(arch, cfg):
    m = _model(arch, input_dropout=0.2, dropout=0.1, **cfg).train()
    m(_graph()).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_polynormer_two_stages_and_resume():
    m = _model('polynormer', norm=None, arch_options={'local_steps': 2})
    data = _graph()
    local_ref = polynormer_dense(m, data, use_global=False)
    torch.testing.assert_close(m(data), local_ref)  # before training: the local stage
    for step in range(2):
        m.train()
        m(data).sum().backward()
        assert m.steps == step + 1
        assert all(p.grad is None for p in m.globals.parameters())  # stage 1: local only
        m.eval()
        torch.testing.assert_close(m(data), polynormer_dense(m, data, use_global=False))
    m.train()
    m(data).sum().backward()  # third training pass: the global stage
    assert all(p.grad is not None for p in m.globals.parameters())
    m.eval()
    torch.testing.assert_close(m(data), polynormer_dense(m, data))
    # the step count is in the state dict: a model restored from it continues in its stage
    fresh = _model('polynormer', seed=1, norm=None, arch_options={'local_steps': 2})
    fresh.load_state_dict(m.state_dict())
    assert fresh.steps == 3 and fresh.global_stage()
    fresh.reset_parameters()
    assert fresh.steps == 0 and not fresh.global_stage()


def test_polynormer_stages_count_epochs_once_set_epoch_is_called():
    m = _model('polynormer', norm=None, arch_options={'local_steps': 2})
    data = _graph()
    for epoch in range(4):
        m.set_epoch(epoch)
        m.train()
        for _ in range(3):  # three mini-batches: still one epoch of the stage schedule
            m.zero_grad()
            m(data).sum().backward()
            assert (all(p.grad is not None for p in m.globals.parameters())) == (epoch >= 2)
        assert m.steps == epoch
        m.eval()  # the evaluation after the epoch follows its stage
        ref = polynormer_dense(m, data, use_global=epoch >= 2)
        torch.testing.assert_close(m(data), ref)


def test_gtpe_train_counts_polynormer_epochs_under_the_neighbour_loader(tmp_path):
    from gtpe.train.checkpoint import load_checkpoint
    from gtpe.train.config import load_config
    from gtpe.train.loop import train
    cfg = load_config(CONFIGS / 'cora' / 'polynormer.yaml', overrides={
        'model.channels': 16, 'model.heads': 2, 'train.epochs': 3, 'train.device': 'cpu',
        'model.arch_options': {'global_layers': 1, 'local_steps': 2},
        'train.loader': 'neighbor', 'train.fanouts': [5, 5], 'train.batch_size': 35})
    train(cfg, tmp_path / 'run', progress=False)  # 140 training nodes: 4 batches per epoch
    state = load_checkpoint(tmp_path / 'run' / 'checkpoints' / 'last.pt')
    assert int(state['model']['steps']) == 2  # the last epoch's index, not 12 mini-batches


# -- config errors ------------------------------------------------------------------------------

@pytest.mark.parametrize('cfg,match', [
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'arch_options': {'graph_wieght': 0.5}},
     r"arch='sgformer' has no option\(s\) \['graph_wieght'\]; allowed: \['aggregate', 'alpha', "),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'arch_options': {'graph_weight': 1.5}},
     r"arch_options.graph_weight \(arch='sgformer'\) must be a number in \[0, 1\], got 1.5"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'arch_options': {'gnn': 'gat'}},
     r"arch_options.gnn .* must be one of \['plain', 'residual'\], got 'gat'"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'arch_options': {'trans_layers': 0}},
     r"trans_layers .* must be a positive integer, got 0"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'full'}, r"arch='sgformer' needs attn: sgformer"),
    ({'arch': 'sgformer', 'local': 'gine', 'attn': 'sgformer'}, r"local: gcn\) or none"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'norm': 'layer'}, r"takes norm: batch"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'attn_dropout': 0.1},
     r"arch='sgformer' does not read attn_dropout"),
    ({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer', 'pe': {'rwse': {}}},
     r"arch='sgformer' reads no positional encodings, got pe.rwse"),
    ({'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'arch_options': {'local_layers': 3}},
     r"arch='polynormer' has no option\(s\) \['local_layers'\]; allowed: \['beta', 'global_dropout', "),
    ({'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'arch_options': {'beta': -1}},
     r"arch_options.beta \(arch='polynormer'\) must be null \(learned\) or a number in \[0, 1\], got -1"),
    ({'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'arch_options': {'local_steps': 1.5}},
     r"local_steps .* must be an integer >= 0"),
    ({'arch': 'polynormer', 'local': 'gcn', 'attn': 'polynormer'}, r"set local: null, got local='gcn'"),
    ({'arch': 'polynormer', 'local': None, 'attn': 'linear'}, r"needs attn: polynormer"),
    ({'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'residual': False},
     r"arch='polynormer' does not read residual"),
    ({'arch': 'polynormer', 'local': None, 'attn': 'polynormer', 'pool': 'token'}, r"pool='token'"),
    ({'arch': 'gps', 'arch_options': {'beta': 0.5}}, r"arch='gps' reads no arch_options"),
])
def test_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        GPSModelConfig.from_dict(cfg)


def test_config_round_trip_and_constructor_checks():
    cfg = GPSModelConfig.from_dict({'arch': 'sgformer', 'local': 'gcn', 'attn': 'sgformer',
                                    'arch_options': {'graph_weight': 0.7}})
    assert GPSModelConfig.from_dict(cfg.to_dict()) == cfg
    assert model_class(cfg) is SGFormerModel
    with pytest.raises(ConfigError, match="input_dropout .* needs node_input='linear'"):
        c = GPSModelConfig.from_dict({**cfg.to_dict(), 'input_dropout': 0.5})
        SGFormerModel(c, out_dim=2, node_input='embedding', node_in_dim=4, edge_input=None)
    gps = GPSModelConfig.from_dict({'local': 'gcn', 'attn': 'full'})
    with pytest.raises(ConfigError, match="needs a config with arch='polynormer'"):
        PolynormerModel(gps, out_dim=2, node_input='linear', node_in_dim=4, edge_input=None)


# -- GPSLayer / GPSModel with attn='sgformer' / 'polynormer' ------------------------------------

@pytest.mark.parametrize('attn', ['sgformer', 'polynormer'])
def test_gps_layer_attention_equals_the_module(attn):
    torch.manual_seed(0)
    layer = GPSLayer(C, local=None, attn=attn, heads=2, norm=None, residual=False, ffn=False,
                     act=False).double().eval()
    cls = SGFormerAttention if attn == 'sgformer' else PolynormerAttention
    assert isinstance(layer.attn, cls) and layer.attn.heads == 2
    b = Batch.from_data_list([_graph(n=9, seed=1), _graph(n=14, seed=2)])
    x = torch.randn(b.num_nodes, C, dtype=torch.float64)
    ref = layer.attn(x, b.batch)
    torch.testing.assert_close(layer(x, b.edge_index, b.batch), ref)
    torch.testing.assert_close(layer(x, b.edge_index, b.batch, num_graphs=2), ref)
    # the full GPS layer: residual, norm, MLP around it
    full = GPSLayer(C, local='gcn', attn=attn, heads=2).double().eval()
    assert full(x, b.edge_index, b.batch).shape == (b.num_nodes, C)
    with pytest.raises(ValueError, match=f"attn='{attn}' has no attention-weight dropout"):
        GPSLayer(C, attn=attn, attn_dropout=0.1)


@pytest.mark.parametrize('attn', ['sgformer', 'polynormer'])
def test_gps_model_with_the_new_attention(attn):
    cfg = GPSModelConfig.from_dict({'channels': C, 'heads': 2, 'num_layers': 2, 'local': 'gcn',
                                    'attn': attn, 'norm': 'layer'})
    m = GPSModel(cfg, out_dim=OUT, node_input='linear', node_in_dim=F_IN, edge_input=None,
                 graph_level=False)
    data = _graph(dtype=torch.float32)
    out = m(data)
    out.sum().backward()
    assert out.shape == (data.num_nodes, OUT)
    assert all(p.grad is not None for p in m.parameters())


# -- shipped configs: load and train 2 epochs on Cora / CiteSeer --------------------------------

SHIPPED = ['cora/sgformer.yaml', 'cora/polynormer.yaml', 'citeseer/sgformer.yaml',
           'citeseer/polynormer.yaml', 'citeseer/gps+exphormer.yaml']


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config_trains_two_epochs(tmp_path, name):
    cfg = load_config(CONFIGS / name, overrides={'train.epochs': 2, 'train.device': 'cpu'})
    res = train(cfg, tmp_path / 'run', progress=False, log=lambda s: None)
    assert res['status'] == 'completed' and res['epochs'] == 2


@pytest.mark.parametrize('arch', ['sgformer', 'polynormer'])
def test_neighbor_loader_trains(tmp_path, arch):
    """Sampled subgraphs (seeds first): the global attention runs over each subgraph."""
    cfg = load_config(CONFIGS / 'cora' / f'{arch}.yaml', overrides={
        'train.epochs': 2, 'train.device': 'cpu', 'model.channels': 16, 'model.num_layers': 2,
        'train.loader': 'neighbor',
        'train.fanouts': [5, 5], 'train.batch_size': 70})
    res = train(cfg, tmp_path / 'run', progress=False, log=lambda s: None)
    assert res['status'] == 'completed' and res['epochs'] == 2


def test_sgformer_directed_graph_gets_the_symmetrised_gcn_branch():
    m = _model('sgformer')
    config = m.config
    torch.manual_seed(0)
    md = SGFormerModel(config, out_dim=OUT, node_input='linear', node_in_dim=F_IN, edge_input=None,
                       graph_level=False, directed=True).double().eval()
    md.load_state_dict(m.state_dict())
    data = _graph()
    one_way = data.edge_index[:, data.edge_index[0] < data.edge_index[1]]  # each edge once
    directed = Data(x=data.x, edge_index=one_way, num_nodes=data.num_nodes)
    torch.testing.assert_close(md(directed), m(data))


def test_linear_global_attention_in_gps_has_no_attention_dropout():
    from gtpe.models import ConfigError, GPSModelConfig
    for attn in ("sgformer", "polynormer"):
        assert GPSModelConfig(attn=attn, heads=1, attn_dropout=0.0).attn == attn
        with pytest.raises(ConfigError, match=f"attn='{attn}' is a linear attention without "
                                              "attention weights to drop; set attn_dropout: 0.0"):
            GPSModelConfig(attn=attn, heads=1, attn_dropout=0.2)
