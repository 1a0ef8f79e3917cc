"""Node-level training (Cora: one graph with train/val/test masks): the GCN local module
against a dense float64 reference, full-batch and neighbour-sampled loaders, early stopping,
the one-line config errors, and resumption of a neighbour-sampled run."""
import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from gtpe.datasets import dataset_info
from gtpe.models import GPSModel, GPSModelConfig
from gtpe.nn import GPSLayer
from gtpe.nn.local import GCN
from gtpe.train import distributed as D
from gtpe.train import loop
from gtpe.train.config import ConfigError, load_config
from gtpe.train.loop import _NodeEvaluator, train
from gtpe.train.node_sampling import neighbor_loader as _neighbor_loader
from gtpe.train.run import evaluate_run

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'

pytestmark = pytest.mark.usefixtures('one_thread')

# a small, fast GCN on Cora (the shipped config has 64 channels and 200 epochs)
SMALL = {'dataset.normalize_features': True, 'model.channels': 16, 'train.device': 'cpu'}


def _rows(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop('seconds')
        r.pop('train_seconds')
    return rows


def _random_graph(n=30, e=90, feats=5, seed=0, self_loops=False):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n, (e,), generator=g)
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return torch.stack([src, dst]), torch.randn(n, feats, generator=g)


# -- GCN ----------------------------------------------------------------------------------------

def test_gcn_equals_dense_float64_reference():
    edge_index, _ = _random_graph(self_loops=True)  # loops (and repeated edges) on purpose
    n, C = 30, 6
    x = torch.randn(n, C, dtype=torch.float64)
    conv = GCN(C).double()
    with torch.no_grad():
        conv.bias.normal_()
    A = torch.zeros(n, n, dtype=torch.float64)
    src, dst = edge_index
    keep = src != dst  # the layer drops existing loops and adds one per node
    A.index_put_((dst[keep], src[keep]), torch.ones(int(keep.sum()), dtype=torch.float64),
                  accumulate=True)  # A[i, j] = number of edges j -> i
    A_hat = A + torch.eye(n, dtype=torch.float64)
    d = A_hat.sum(1).rsqrt()
    ref = d[:, None] * A_hat * d[None, :] @ x @ conv.lin.weight.T + conv.bias
    out = conv(x, edge_index)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # edge features are ignored; the normalisation is computed once per cache
    cache = {}
    ea = torch.randn(edge_index.size(1), C, dtype=torch.float64)
    torch.testing.assert_close(conv(x, edge_index, ea, cache=cache), ref, rtol=1e-12, atol=1e-12)
    assert cache[GCN.CACHE_KEY][0] is edge_index
    first = cache[GCN.CACHE_KEY]
    conv(x, edge_index, cache=cache)
    assert cache[GCN.CACHE_KEY] is first


def test_gcn_equals_pyg_gcnconv_and_is_permutation_equivariant():
    from torch_geometric.nn import GCNConv

    edge_index, _ = _random_graph(seed=1)
    x = torch.randn(30, 8)
    conv = GCN(8)
    theirs = GCNConv(8, 8)
    with torch.no_grad():
        theirs.lin.weight.copy_(conv.lin.weight)
        conv.bias.normal_()
        theirs.bias.copy_(conv.bias)
    torch.testing.assert_close(conv(x, edge_index), theirs(x, edge_index), rtol=1e-5, atol=1e-5)
    perm = torch.randperm(30)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(30)
    torch.testing.assert_close(conv(x[perm], inv[edge_index])[inv], conv(x, edge_index),
                               rtol=1e-5, atol=1e-5)


def test_gps_layer_gcn_plain_stack_and_gradients():
    edge_index, _ = _random_graph(seed=2)
    x = torch.randn(30, 8)
    layer = GPSLayer(8, local='gcn', attn=None, norm=None, residual=False, ffn=False)
    assert layer.mlp is None and layer.norm3 is None
    assert 'residual=False, ffn=False' in repr(layer)
    torch.testing.assert_close(layer(x, edge_index), layer.local(x, edge_index).relu())
    out_layer = GPSLayer(8, local='gcn', attn=None, norm=None, residual=False, ffn=False,
                         act=False)
    assert 'act=False' in repr(out_layer)
    torch.testing.assert_close(out_layer(x, edge_index), out_layer.local(x, edge_index))
    with pytest.raises(ValueError, match='act=False .* needs ffn=False'):
        GPSLayer(8, local='gcn', attn=None, act=False)
    # in the GPS recipe (residual + FFN) with edge features, which GCN ignores
    gps = GPSLayer(8, local='gcn', attn='full', heads=2)
    ea = torch.randn(edge_index.size(1), 8)
    out = gps(x, edge_index, edge_attr=ea)
    torch.testing.assert_close(out, gps(x, edge_index))
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in gps.parameters())
    with pytest.raises(ValueError, match='residual must be True or False'):
        GPSLayer(8, local='gcn', attn=None, residual='no')


def test_gcn_in_a_graph_level_model():
    """local: gcn works for graph-level models (ZINC-like: edge features present, not used)."""
    cfg = GPSModelConfig.from_dict({'channels': 16, 'num_layers': 2, 'local': 'gcn',
                                    'attn': 'full', 'heads': 2})
    model = GPSModel(cfg, out_dim=1, node_input='embedding', node_in_dim=5,
                     edge_input='embedding', edge_in_dim=3)
    from torch_geometric.data import Batch
    graphs = []
    for seed in range(3):
        ei, _ = _random_graph(n=8, e=20, seed=seed)
        graphs.append(Data(x=torch.randint(0, 5, (8,)), edge_index=ei,
                           edge_attr=torch.randint(0, 3, (ei.size(1),))))
    out = model(Batch.from_data_list(graphs))
    assert out.shape == (3, 1) and torch.isfinite(out).all()


def test_kipf_gcn_model_equals_dense_float64_reference():
    """local: gcn, attn: null, norm: null, residual/ffn off, linear head (eval mode): Kipf &
    Welling's 2-layer GCN with factorised weights, the last layer without ReLU:
    y = W_h (Â ReLU(Â (X W_e + b_e) W_1 + b_1) W_2 + b_2) + b_h, Â = D^-1/2 (A+I) D^-1/2."""
    edge_index, x = _random_graph(n=25, e=80, feats=7, seed=5)
    x = x.double()
    cfg = GPSModelConfig.from_dict({
        'channels': 8, 'num_layers': 2, 'local': 'gcn', 'attn': None, 'norm': None,
        'residual': False, 'ffn': False, 'head': 'linear', 'dropout': 0.5,
        'input_dropout': 0.5})
    model = GPSModel(cfg, out_dim=3, node_input='linear', node_in_dim=7, edge_input=None,
                     graph_level=False).double().eval()
    n = 25
    A = torch.zeros(n, n, dtype=torch.float64)
    A.index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.size(1),
                                                            dtype=torch.float64), accumulate=True)
    A_hat = A + torch.eye(n, dtype=torch.float64)
    d = A_hat.sum(1).rsqrt()
    A_hat = d[:, None] * A_hat * d[None, :]
    h = model.node_encoder.lin(x)
    for i, layer in enumerate(model.layers):
        h = A_hat @ h @ layer.local.lin.weight.T + layer.local.bias
        h = h.relu() if i == 0 else h
    ref = model.head(h)
    assert model.layers[-1].dropout == 0.0 and model.layers[0].dropout == 0.5
    out = model(Data(x=x, edge_index=edge_index))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not any(name.startswith('edge_encoder') for name, _ in model.named_parameters())
    # in training mode the input features and the layers' outputs are dropped
    model.train()
    assert not torch.allclose(model(Data(x=x, edge_index=edge_index)), ref)


def test_fold_linear_is_kipfs_two_layer_gcn():
    """fold_linear: the encoder and the head are the two GCN layers' weights (no products):
    y = (Â ReLU(Â (X W_0 + b_e) + b_1) + b_2) W_1 + b_h."""
    edge_index, x = _random_graph(n=25, e=80, feats=7, seed=6)
    x = x.double()
    cfg = GPSModelConfig.from_dict({
        'channels': 8, 'num_layers': 2, 'local': 'gcn', 'attn': None, 'norm': None,
        'residual': False, 'ffn': False, 'head': 'linear', 'fold_linear': True})
    model = GPSModel(cfg, out_dim=3, node_input='linear', node_in_dim=7, edge_input=None,
                     graph_level=False).double().eval()
    assert all(layer.local.lin is None for layer in model.layers)
    A = torch.zeros(25, 25, dtype=torch.float64)
    A.index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.size(1),
                                                            dtype=torch.float64), accumulate=True)
    A_hat = A + torch.eye(25, dtype=torch.float64)
    d = A_hat.sum(1).rsqrt()
    A_hat = d[:, None] * A_hat * d[None, :]
    h = (A_hat @ model.node_encoder.lin(x) + model.layers[0].local.bias).relu()
    ref = model.head(A_hat @ h + model.layers[1].local.bias)
    torch.testing.assert_close(model(Data(x=x, edge_index=edge_index)), ref, rtol=1e-12,
                               atol=1e-12)
    # a middle layer keeps its weight
    deep = GPSModel(GPSModelConfig.from_dict({**cfg.to_dict(), 'num_layers': 3}), out_dim=3,
                    node_input='linear', node_in_dim=7, edge_input=None, graph_level=False)
    assert [layer.local.lin is None for layer in deep.layers] == [True, False, True]


def test_input_dropout_needs_float_features():
    cfg = GPSModelConfig.from_dict({'channels': 8, 'num_layers': 1, 'local': 'gcn',
                                    'attn': None, 'input_dropout': 0.5})
    with pytest.raises(ValueError, match="input_dropout .* needs node_input='linear'"):
        GPSModel(cfg, out_dim=1, node_input='embedding', node_in_dim=4, edge_input=None)


# -- config errors ------------------------------------------------------------------------------

@pytest.mark.parametrize('overrides,match', [
    (['train.loader=neighbor'], r"^train\.loader: 'neighbor' needs train\.fanouts"),
    (['train.loader=neighbor', 'train.fanouts=[10, 10, 10]'],
     r'^train\.fanouts: 3 fan-outs \[10, 10, 10\] for model\.num_layers = 2; give one per layer$'),
    (['train.fanouts=[10, 10]'], r'^train\.fanouts: only used with train\.loader: neighbor'),
    (['train.loader=neighbor', 'train.fanouts=[10, 0]'], r'^train\.fanouts must be a list .*each >= 1 or -1'),
    (['dataset.limit=10'], r'^dataset\.limit: cora is a node-level dataset .* remove dataset\.limit$'),
    (['train.patience=0'], r'^train\.patience must be a positive integer'),
    (['model.head=mlp'], r"^model\.fold_linear needs a plain GCN stack .*got head='mlp'$"),
])
def test_node_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=overrides)
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('overrides,key', [
    (['train.loader=neighbor', 'train.fanouts=[5, 5]'], 'loader'),
    (['train.loader=full'], 'loader'),
    (['dataset.normalize_features=true'], None),
])
def test_graph_level_dataset_refuses_node_options(overrides, key):
    base = ['dataset.name=zinc', 'model.num_layers=2']
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=base + overrides)
    msg = str(err.value)
    assert '\n' not in msg
    if key:
        assert msg.startswith(f'train.{key}: only for node-level datasets') and 'zinc' in msg
    else:
        assert msg.startswith('dataset.normalize_features: zinc has no float node features')


def test_shipped_node_configs_load_and_keep_old_hashes():
    for path in sorted(CONFIGS.glob('cora/*.yaml')) + sorted(CONFIGS.glob('citeseer/*.yaml')):
        cfg = load_config(path)
        assert cfg.dataset.limit is None
    # keys at their defaults are not written, so older configs keep their experiment hash
    zinc = load_config(CONFIGS / 'zinc' / 'gps+rwse.yaml')
    d = zinc.to_dict()
    assert not {'loader', 'fanouts', 'patience'} & set(d['train'])
    assert not {'residual', 'ffn', 'head', 'input_dropout', 'fold_linear'} & set(d['model'])
    assert 'normalize_features' not in d['dataset']


# -- neighbour sampling -------------------------------------------------------------------------

def _node_graph(n=40, e=160, seed=0):
    edge_index, x = _random_graph(n, e, feats=6, seed=seed)
    y = torch.randint(0, 3, (n,))
    masks = torch.zeros(3, n, dtype=torch.bool)
    masks[torch.arange(n) % 3, torch.arange(n)] = True
    return Data(x=x, edge_index=edge_index, y=y, train_mask=masks[0], val_mask=masks[1],
                test_mask=masks[2])


def test_sampler_takes_min_of_fanout_and_degree_from_the_graphs_edges():
    g = _node_graph()
    torch.manual_seed(0)
    seeds = torch.tensor([3, 7, 11, 20])
    loader = _neighbor_loader(g, seeds, [2, 3], batch_size=4, shuffle=False)
    (batch,) = list(loader)
    assert batch.batch_size == 4 and batch.n_id[:4].tolist() == seeds.tolist()
    assert batch.n_id.unique().numel() == batch.n_id.numel()
    # every sampled edge is an edge of the graph (mapped back through n_id / e_id)
    glob = batch.n_id[batch.edge_index]
    assert torch.equal(glob, g.edge_index[:, batch.e_id])
    assert batch.e_id.unique().numel() == batch.e_id.numel()  # without replacement
    in_deg = torch.bincount(g.edge_index[1], minlength=g.num_nodes)
    sampled = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
    hop1 = batch.num_sampled_nodes[1]
    assert sampled[:4].tolist() == in_deg[seeds].clamp(max=2).tolist()
    assert sampled[4:4 + hop1].tolist() == in_deg[batch.n_id[4:4 + hop1]].clamp(max=3).tolist()
    assert sampled[4 + hop1:].sum() == 0  # the last hop's nodes get no in-edges


@pytest.mark.parametrize('fanouts', [[-1, -1], [1000, 1000]])
def test_neighbor_eval_equals_full_batch_when_fanouts_cover_all(fanouts):
    g = _node_graph(seed=3)
    cfg = GPSModelConfig.from_dict({'channels': 16, 'num_layers': 2, 'local': 'gine',
                                    'attn': None, 'norm': 'batch'})
    torch.manual_seed(0)
    model = GPSModel(cfg, out_dim=3, node_input='linear', node_in_dim=6, edge_input=None,
                     graph_level=False)
    model.train()
    model(g)  # BatchNorm running statistics other than the defaults
    info = dataset_info('cora')
    env = D.DistEnv(device=torch.device('cpu'))
    nodes = torch.arange(g.num_nodes)
    full = _NodeEvaluator(g, info, env, 'full').predict(model, nodes)
    sampled = _NodeEvaluator(g, info, env, 'neighbor', fanouts=fanouts, batch_size=7)
    torch.testing.assert_close(sampled.predict(model, nodes), full, rtol=1e-5, atol=1e-5)


class _Gathered(Exception):
    pass


def test_sharded_sampled_eval_equals_one_process(monkeypatch):
    """Under torchrun, ``shard=True``: rank r predicts the batches r, r + W, ... and the gathered
    predictions are one process's, with random fan-outs too (each batch samples from a generator
    seeded by its position, not from the stream left by the batches before it)."""
    g = _node_graph(n=60, e=300, seed=5)
    cfg = GPSModelConfig.from_dict({'channels': 8, 'num_layers': 2, 'local': 'gine',
                                    'attn': None, 'norm': None})
    torch.manual_seed(0)
    model = GPSModel(cfg, out_dim=3, node_input='linear', node_in_dim=6, edge_input=None,
                     graph_level=False)
    info = dataset_info('cora')
    nodes = torch.arange(3, 60, 2)  # 29 nodes: batches of 7 -> 5 batches, ranks get 3 + 2

    def evaluator(rank, world_size):
        env = D.DistEnv(rank=rank, world_size=world_size, device=torch.device('cpu'))
        return _NodeEvaluator(g, info, env, 'neighbor', fanouts=[2, 2], batch_size=7, seed=3)

    torch.manual_seed(11)
    one = evaluator(0, 1).predict(model, nodes, shard=True)
    before = torch.random.get_rng_state()
    parts = {}

    def gather_rank1(obj):
        parts[1] = obj
        raise _Gathered

    monkeypatch.setattr(loop.D, 'all_gather_objects', gather_rank1)
    with pytest.raises(_Gathered):
        evaluator(1, 2).predict(model, nodes, shard=True)
    monkeypatch.setattr(loop.D, 'all_gather_objects', lambda obj: [obj, parts[1]])
    two = evaluator(0, 2).predict(model, nodes, shard=True)
    assert parts[1][0] == list(range(7, 14)) + list(range(21, 28))  # batches 1 and 3
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global stream untouched
    # the sample is random: another seed gives other predictions
    other = _NodeEvaluator(g, info, D.DistEnv(), 'neighbor', fanouts=[2, 2], batch_size=7,
                           seed=4).predict(model, nodes)
    assert (other - one).abs().max() > 1e-4


def test_pair_attributes_follow_the_sampled_nodes():
    g = _node_graph(seed=4)
    g.expander_index = torch.stack([torch.arange(40), (torch.arange(40) + 5) % 40])
    torch.manual_seed(0)
    (batch,) = list(_neighbor_loader(g, torch.tensor([0, 1]), [3, 3], 2, shuffle=False))
    pairs = batch.n_id[batch.expander_index]
    inside = torch.isin(g.expander_index, batch.n_id).all(0)
    assert sorted(map(tuple, pairs.T.tolist())) == sorted(
        map(tuple, g.expander_index[:, inside].T.tolist()))
    assert 'expander_index' in g  # the graph itself is left as it was


# -- training on Cora ---------------------------------------------------------------------------

def test_cora_gcn_trains_full_batch_above_chance(tmp_path):
    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml',
                      overrides={**SMALL, 'train.epochs': 20, 'train.lr': 0.05})
    res = train(cfg, tmp_path / 'run', progress=False)
    assert res['status'] == 'completed' and res['epochs'] == 20
    assert res['test'] > 0.6, res  # chance: 1/7
    # evaluate (best.pt) on the test mask equals results.json's test
    ev = evaluate_run(tmp_path / 'run', split='test', progress=False)
    assert ev['value'] == pytest.approx(res['test'])


def test_cora_neighbor_loader_trains_above_chance(tmp_path):
    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides={
        **SMALL, 'train.epochs': 10, 'train.lr': 0.05, 'train.loader': 'neighbor',
        'train.fanouts': [5, 5], 'train.batch_size': 64})
    res = train(cfg, tmp_path / 'run', progress=False)
    assert res['test'] > 0.5, res


@pytest.mark.parametrize('loader', ['full', 'neighbor'])
def test_cora_exphormer_config_trains_with_either_loader(tmp_path, loader):
    """Exphormer's expander edges (node pairs) follow the sampled subgraphs."""
    overrides = {**SMALL, 'model.heads': 2, 'train.epochs': 2}
    if loader == 'neighbor':
        overrides.update({'train.loader': 'neighbor', 'train.fanouts': [5, 5],
                          'train.batch_size': 70})
    cfg = load_config(CONFIGS / 'cora' / 'gps+exphormer.yaml', overrides=overrides)
    res = train(cfg, tmp_path / 'run', progress=False)
    assert res['status'] == 'completed' and res['epochs'] == 2


def test_early_stopping_stops_and_reports_the_best_epoch(tmp_path, capsys):
    # lr so small that the predictions never change: val is best at epoch 1, the run stops
    # after `patience` more epochs, and the best epoch is what is reported and evaluated
    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides={
        **SMALL, 'train.epochs': 50, 'train.patience': 3, 'train.lr': 1e-12,
        'model.dropout': 0.0, 'model.input_dropout': 0.0})
    out = tmp_path / 'run'
    res = train(cfg, out, progress=False)
    assert res['stopped_early'] is True and res['epochs'] == 4 and res['best_epoch'] == 1
    rows = _rows(out / 'metrics.csv')
    assert len(rows) == 4 and res['test'] == float(rows[0]['test_accuracy'])
    assert 'early stopping after epoch 4' in capsys.readouterr().out
    assert evaluate_run(out, split='test', progress=False)['value'] == pytest.approx(res['test'])
    # resuming a stopped run trains no further epoch
    again = train(cfg, out, resume=True, progress=False)
    assert again['epochs'] == 4 and _rows(out / 'metrics.csv') == rows
    # without patience there is no such key
    cfg2 = load_config(CONFIGS / 'cora' / 'gcn.yaml',
                       overrides={**SMALL, 'train.epochs': 1, 'train.patience': None})
    assert 'stopped_early' not in train(cfg2, tmp_path / 'b', progress=False)


def test_early_stopping_on_a_graph_level_dataset(tmp_path):
    cfg = load_config(data={
        'dataset': {'name': 'zinc', 'limit': 48},
        'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'local': 'gcn'},
        'train': {'epochs': 6, 'batch_size': 16, 'lr': 1e-12, 'scheduler': 'none',
                  'device': 'cpu', 'patience': 1}})
    res = train(cfg, tmp_path / 'run', progress=False)
    # every epoch either improves val or ends the run one epoch later
    assert res['epochs'] - res['best_epoch'] <= 1
    assert res['stopped_early'] == (res['epochs'] < 6)


def test_neighbor_run_resumed_after_a_crash_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    overrides = {**SMALL, 'train.epochs': 3, 'train.loader': 'neighbor',
                 'train.fanouts': [4, 4], 'train.batch_size': 50}
    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=overrides)
    ref = train(copy.deepcopy(cfg), tmp_path / 'ref', progress=False)

    calls = {'n': 0}
    original = loop.compute_loss

    def crash(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2 * 3 + 2:  # in the middle of epoch 3 (3 batches per epoch)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, 'compute_loss', crash)
    with pytest.raises(KeyboardInterrupt):
        train(copy.deepcopy(cfg), tmp_path / 'killed', progress=False)
    monkeypatch.setattr(loop, 'compute_loss', original)
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    res = train(copy.deepcopy(cfg), tmp_path / 'killed', resume=True, progress=False)
    assert _rows(tmp_path / 'killed' / 'metrics.csv') == _rows(tmp_path / 'ref' / 'metrics.csv')
    for r in (res, ref):
        r.pop('seconds'), r.pop('cost')
    assert json.loads(json.dumps(res)) == json.loads(json.dumps(ref))


def test_node_level_encodings_on_the_one_graph(tmp_path, monkeypatch):
    # LapPE and RWSE of a node-level dataset: computed on its one graph (2,708 nodes: the
    # sparse eigensolver path of AddLapPE), equal to the transforms applied to the raw graph,
    # and the model trains on them with either loader
    from gtpe.datasets import load_dataset
    from gtpe.transforms import AddLapPE, AddRWSE

    monkeypatch.setenv('GTPE_DATA_ROOT', str(tmp_path / 'data'))
    over = {**SMALL, 'model.attn': None, 'train.epochs': 2,
            'model.pe': {'rwse': {'walk_length': 8, 'dim': 4}, 'lap': {'k': 4, 'dim': 4}}}
    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=over)
    info, splits = loop.load_data(cfg, progress=False)
    g = splits['train'][0]
    raw = load_dataset('cora', progress=False)['train'][0]
    assert g.num_nodes == raw.num_nodes == 2708 and g.num_nodes > AddLapPE(k=4).sparse_threshold
    torch.testing.assert_close(g.rwse, AddRWSE(walk_length=8)(raw.clone()).rwse)
    ref = AddLapPE(k=4)(raw.clone())
    torch.testing.assert_close(g.lap_eigval, ref.lap_eigval)
    torch.testing.assert_close(g.lap_pe, ref.lap_pe)
    for loader in ('full', 'neighbor'):
        extra = {} if loader == 'full' else {'train.loader': 'neighbor', 'train.fanouts': [5, 5],
                                              'train.batch_size': 70}
        res = train(load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides={**over, **extra}),
                    tmp_path / loader, progress=False)
        assert res['status'] == 'completed' and 0.0 <= res['test'] <= 1.0
