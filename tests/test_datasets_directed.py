"""The generated directed datasets (``sorting-networks``, ``dag-distance``): labels against brute
force and networkx, determinism, registry counts, the cache, bad input, and the training loop on
them (graph level and ``'node-inductive'``)."""
import csv
import itertools
import json
import random
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import gtpe.train.loop as loop
from gtpe.datasets import DatasetError, dataset_info, describe, load_dataset
from gtpe.datasets import dag_distance as dd
from gtpe.datasets import sorting_networks as sn
from gtpe.datasets.base import GraphDataset
from gtpe.train import distributed as D
from gtpe.train.config import load_config
from gtpe.train.loop import build_model, train

pytestmark = pytest.mark.usefixtures('one_thread')

README = Path(__file__).resolve().parents[1] / 'datasets' / 'README.md'


# ---------------------------------------------------------------- independent references
def brute_sorts(ops, n):
    """Every permutation of 0..n-1 (n <= 7), else every 0-1 input, through the comparators one
    by one in plain python."""
    inputs = itertools.permutations(range(n)) if n <= 7 else itertools.product((0, 1), repeat=n)
    for values in inputs:
        v = list(values)
        for i, j in ops:
            if v[i] > v[j]:
                v[i], v[j] = v[j], v[i]
        if v != sorted(v):
            return False
    return True


def unsorted_wires(ops, n):
    """Wires where some 0-1 input's output after ``ops`` differs from its sorted version."""
    wrong = set()
    for values in itertools.product((0, 1), repeat=n):
        v = list(values)
        for i, j in ops:
            v[i], v[j] = min(v[i], v[j]), max(v[i], v[j])
        wrong |= {w for w, (a, b) in enumerate(zip(v, sorted(v))) if a != b}
    return wrong


def ops_of(g):
    return [tuple(r) for r in g.x.tolist()]


# ---------------------------------------------------------------- sorting networks
@pytest.mark.parametrize('n', [3, 4, 5, 6, 8])
def test_sorting_network_labels_are_right_by_brute_force(n):
    stats = {}
    graphs = sn.generate_sorting_networks(n, count=6, seed=10 + n, reverse=True, stats=stats)
    assert len(graphs) == 18
    assert stats['reversed_sorting'] == sum(g.y.item() for g in graphs[2::3])
    for k in range(0, 18, 3):
        pos, neg, rev = graphs[k:k + 3]
        ops = ops_of(pos)
        assert pos.y.tolist() == [1.0] and brute_sorts(ops, n)
        # the hard negative: the same network without its last comparator, and it does not sort
        assert ops_of(neg) == ops[:-1] and neg.y.tolist() == [0.0] and not brute_sorts(ops[:-1], n)
        assert ops_of(rev) == ops[::-1] and rev.y.tolist() == [float(brute_sorts(ops[::-1], n))]
        for g in (pos, neg, rev):
            assert g.x.dtype == torch.long and g.x.shape == (g.num_nodes, 2)
            assert g.y.dtype == torch.float32 and g.y.shape == (1,)
            assert g.edge_attr is None


def test_sorts_on_random_and_known_networks():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        n = rng.randint(2, 6)
        ops = [tuple(sorted(rng.sample(range(n), 2))) for _ in range(rng.randint(0, 14))]
        expected = brute_sorts(ops, n)
        seen.add(expected)
        assert sn.sorts(ops, n) == expected, (n, ops)
    assert seen == {True, False}
    # Knuth's optimal 4-wire network (5 comparators) sorts; without any one comparator it does not
    net = [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)]
    assert sn.sorts(net, 4)
    assert not any(sn.sorts(net[:k] + net[k + 1:], 4) for k in range(5))
    assert sn.sorts([], 1) and not sn.sorts([], 2)


def test_sampler_draws_among_unsorted_wires_and_never_repeats():
    rng = np.random.default_rng(5)
    for n in (4, 5, 6):
        for _ in range(5):
            ops = sn.random_sorting_network(n, rng)
            for t, (i, j) in enumerate(ops):
                assert 0 <= i < j < n
                assert {i, j} <= unsorted_wires(ops[:t], n), (n, ops, t)
                assert t == 0 or ops[t] != ops[t - 1]
            assert unsorted_wires(ops, n) == set() and unsorted_wires(ops[:-1], n) != set()


def test_edges_of_a_hand_made_network():
    ops = [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2), (1, 2)]
    # t2 <- t0 (wire 0), t1 (wire 2); t3 <- t0 (wire 1), t1 (wire 3); t4 <- t3 (wire 1), t2
    # (wire 2); t5 <- t4 on both wires: one edge
    expected = [[0, 1, 0, 1, 2, 3, 4], [2, 2, 3, 3, 4, 4, 5]]
    assert sn.network_edges(ops).tolist() == expected
    assert sn.network_edges([]).shape == (2, 0)
    for g in sn.generate_sorting_networks((5, 7), count=4, seed=3, reverse=True):
        ei = g.edge_index
        assert ei.tolist() == sn.network_edges(ops_of(g)).tolist()
        key = (ei[1] * g.num_nodes + ei[0]).tolist()          # by target, then source
        assert key == sorted(key) and len(set(key)) == len(key)  # no parallel edges
        assert bool((ei[0] < ei[1]).all())                    # earlier -> later comparator
        # each comparator has the previous comparator of each of its wires as in-neighbours
        ops = ops_of(g)
        for t, (i, j) in enumerate(ops):
            preds = {max((s for s in range(t) if w in ops[s]), default=None) for w in (i, j)}
            assert set(ei[0][ei[1] == t].tolist()) == preds - {None}


def test_sorting_networks_deterministic_and_spread_over_wires():
    def run(**kw):
        args = {'num_wires': (3, 4, 5), 'count': 7, 'seed': 1, 'reverse': True} | kw
        return sn.generate_sorting_networks(**args)

    a, b = run(), run()
    assert [(g.x.tolist(), g.edge_index.tolist(), g.y.tolist()) for g in a] == \
        [(g.x.tolist(), g.edge_index.tolist(), g.y.tolist()) for g in b]
    for other in (run(seed=2), run(stream=1)):
        assert [g.x.tolist() for g in a] != [g.x.tolist() for g in other]
    # 7 networks over (3, 4, 5) wires: 3, 2, 2, in the order given
    assert [int(g.x.max()) + 1 for g in a[::3]] == [3, 3, 3, 4, 4, 5, 5]
    assert len(run(reverse=False)) == 14


def test_networks_over_the_comparator_limit_are_drawn_again():
    stats = {}
    graphs = sn.generate_sorting_networks(5, count=6, seed=0, max_comparators=11, stats=stats)
    assert stats['discarded'] > 0
    assert all(len(ops_of(g)) <= 11 for g in graphs[::2])
    assert all(brute_sorts(ops_of(g), 5) for g in graphs[::2])
    with pytest.raises(DatasetError, match='max_comparators=6 is too small for 6 wires'):
        sn.generate_sorting_networks(6, count=1, seed=0, max_comparators=6)


@pytest.mark.parametrize('kwargs, message', [
    ({'num_wires': 2}, 'num_wires must be between 3 and 20, got 2'),
    ({'num_wires': (7, 1)}, 'num_wires must be between 3 and 20, got 1'),
    ({'num_wires': 21}, 'num_wires must be between 3 and 20, got 21'),
    ({'num_wires': ()}, 'num_wires is empty'),
    ({'num_wires': 7.5}, 'num_wires must be an integer or a list'),
    ({'num_wires': True}, 'num_wires must be an integer'),
    ({'count': 0}, 'count must be >= 1, got 0'),
    ({'seed': -1}, 'seed must be >= 0, got -1'),
    ({'seed': 1.5}, 'seed must be an integer'),
    ({'max_comparators': 5}, 'max_comparators must be >= 6, got 5'),
])
def test_sorting_networks_bad_input(kwargs, message):
    args = {'num_wires': 7, 'count': 2, 'seed': 0} | kwargs
    with pytest.raises(DatasetError, match=re.escape(message)):
        sn.generate_sorting_networks(**args)
    with pytest.raises(DatasetError, match='0 <= i < j < 4'):
        sn.sorts([(1, 0)], 4)


# ---------------------------------------------------------------- dag-distance
def test_dag_distance_labels_equal_networkx():
    graphs = dd.generate_dag_distance(60, seed=4, min_nodes=4, max_nodes=14, avg_degree=1.5,
                                      max_distance=2)
    classes = set()
    for g in graphs:
        n = g.num_nodes
        assert 4 <= n <= 14
        assert g.x.dtype == torch.long and g.x.shape == (n, 1)
        assert int(g.x.sum()) == 1 and set(g.x.view(-1).tolist()) <= {0, 1}
        source = int(g.x.view(-1).argmax())
        G = nx.DiGraph()
        G.add_nodes_from(range(n))
        G.add_edges_from(g.edge_index.t().tolist())
        assert G.number_of_edges() == g.num_edges                  # no duplicate edges
        assert nx.is_directed_acyclic_graph(G) and G.in_degree(source) == 0
        key = g.edge_index[0] * n + g.edge_index[1]
        assert key.tolist() == sorted(key.tolist())                # sorted by (source, target)
        dist = nx.single_source_shortest_path_length(G, source)
        expected = [min(dist[v], 2) if v in dist else 3 for v in range(n)]
        assert g.y.dtype == torch.long and g.y.tolist() == expected
        und = nx.single_source_shortest_path_length(G.to_undirected(), source)
        assert dd.distance_labels(g.edge_index.numpy(), n, source, 2, directed=False).tolist() \
            == [min(und[v], 2) if v in und else 3 for v in range(n)]
        classes |= set(expected)
    assert classes == {0, 1, 2, 3}   # exact distances, clipped ones and unreachable nodes


def test_dag_distance_deterministic():
    def ys(**kw):
        args = {'count': 5, 'seed': 7} | kw
        return [(g.edge_index.tolist(), g.y.tolist(), g.x.tolist())
                for g in dd.generate_dag_distance(**args)]

    assert ys() == ys()
    assert ys() != ys(seed=8) and ys() != ys(stream=2)


def test_direction_blind_posterior_equals_exact_enumeration():
    """Exact posterior on small graphs: every order with the source first, equally likely."""
    graphs = dd.generate_dag_distance(6, seed=9, min_nodes=5, max_nodes=7, avg_degree=1.5,
                                      max_distance=2)
    rng = np.random.default_rng(0)
    for g in graphs:
        n, ei = g.num_nodes, g.edge_index.numpy()
        source = int(g.x.view(-1).argmax())
        others = [v for v in range(n) if v != source]
        exact = np.zeros((n, 4))
        orders = list(itertools.permutations(others))
        for rest in orders:
            pos = {v: k for k, v in enumerate((source, *rest))}
            oriented = [(u, v) if pos[u] < pos[v] else (v, u) for u, v in ei.T.tolist()]
            G = nx.DiGraph(oriented)
            G.add_nodes_from(range(n))
            dist = nx.single_source_shortest_path_length(G, source)
            for v in range(n):
                exact[v, min(dist[v], 2) if v in dist else 3] += 1 / len(orders)
        # the direction of the given edges plays no part: flipped edges, same posterior
        est = dd.direction_blind_posterior(ei[::-1], n, source, 3000, rng, max_distance=2)
        assert np.abs(est - exact).max() < 0.04
        assert np.allclose(est.sum(1), 1.0)


def test_direction_blind_estimate_on_val(shipped):
    val = shipped['dag-distance']['val']
    got = dd.baselines([val[i] for i in range(len(val))], blind_samples=100, seed=3)
    assert got['direction_blind_bayes'] == pytest.approx(dd.BLIND_BAYES['val'], abs=0.01)
    for doc in (dd.__doc__, README.read_text()):
        assert re.sub(r'\s+', ' ', '72.9 % 72.0 % 72.1 %') in re.sub(r'[\s|≈]+', ' ', doc)
    assert [f'{100 * dd.BLIND_BAYES[s]:.1f}' for s in ('train', 'val', 'test')] == \
        ['72.9', '72.0', '72.1']


@pytest.mark.parametrize('kwargs, message', [
    ({'count': 0}, 'count must be >= 1, got 0'),
    ({'seed': -3}, 'seed must be >= 0, got -3'),
    ({'min_nodes': 1}, 'min_nodes must be >= 2, got 1'),
    ({'min_nodes': 30, 'max_nodes': 20}, 'min_nodes (30) > max_nodes (20)'),
    ({'avg_degree': 0}, 'avg_degree must be in (0, 9.5]'),
    ({'avg_degree': 10}, 'avg_degree must be in (0, 9.5]'),
    ({'avg_degree': 'x'}, 'avg_degree must be a number'),
    ({'max_distance': 0}, 'max_distance must be >= 1, got 0'),
    ({'count': 2.0}, 'count must be an integer'),
])
def test_dag_distance_bad_input(kwargs, message):
    args = {'count': 2, 'seed': 0} | kwargs
    with pytest.raises(DatasetError, match=re.escape(message)):
        dd.generate_dag_distance(**args)


# ---------------------------------------------------------------- shipped data and registry
@pytest.fixture(scope='module')
def shipped():
    """Both datasets as shipped (default test data root: built once, then cached)."""
    return {name: load_dataset(name, progress=False)
            for name in ('sorting-networks', 'dag-distance')}


def test_registry_counts_equal_the_generated_data(shipped):
    for name, splits in shipped.items():
        info = dataset_info(name)
        assert info.directed and info.generator and info.edge_input is None
        assert {s: len(ds) for s, ds in splits.items()} == info.splits
        assert sum(info.splits.values()) == info.num_graphs
        assert sum(int(ds._data.x.size(0)) for ds in splits.values()) == info.num_nodes
        assert sum(int(ds._data.edge_index.size(1)) for ds in splits.values()) == info.num_edges
        for ds in splits.values():
            assert ds._data.x.size(1) == info.num_node_features
    for split, st in sn.SPLIT_STATS.items():
        ds = shipped['sorting-networks'][split]
        assert st == {'graphs': len(ds), 'positives': int(ds._data.y.sum()),
                      'nodes': ds._data.x.size(0), 'edges': ds._data.edge_index.size(1)}
        wires = {int(ds[i].x.max()) + 1 for i in range(len(ds))}
        assert wires == set(sn.SPLIT_PARAMS[split]['num_wires'])
        sizes = (ds.slices['x'][1:] - ds.slices['x'][:-1]).double()
        lo, hi, mean = int(sizes.min()), int(sizes.max()), float(sizes.mean())
        assert f'{lo}-{hi}, mean {mean:.1f}' in README.read_text()
        assert re.search(rf'{lo}-{hi} nodes (per graph )?\(mean {mean:.1f}\)',
                         re.sub(r'\s+', ' ', sn.__doc__)), (lo, hi, mean)
    info = dataset_info('sorting-networks')
    assert (info.level, info.task, info.metric, info.num_tasks, info.node_input,
            info.node_in_dim) == ('graph', 'binary', 'accuracy', 1, 'sinusoid', 2)
    info = dataset_info('dag-distance')
    assert (info.level, info.task, info.metric, info.num_tasks, info.node_input,
            info.node_in_dim) == ('node-inductive', 'multiclass', 'accuracy', dd.NUM_CLASSES,
                                  'embedding', 2)
    nodes = [ds.slices['x'][1:] - ds.slices['x'][:-1] for ds in shipped['dag-distance'].values()]
    nodes = torch.cat(nodes)
    assert (int(nodes.min()), int(nodes.max())) == (20, 40)
    mean_nodes = dataset_info('dag-distance').avg_nodes
    assert f'mean {mean_nodes:.1f}' in dd.__doc__ and f'mean {mean_nodes:.1f} nodes' in \
        README.read_text()
    assert f'{dataset_info("dag-distance").avg_edges:.1f} edges' in README.read_text()
    train = shipped['dag-distance']['train']._data
    rates = ', '.join(f'{100 * float(r):.1f}' for r in
                      torch.bincount(train.y, minlength=dd.NUM_CLASSES) / train.y.numel())
    assert rates in re.sub(r'\s+', ' ', dd.__doc__) and rates in README.read_text()
    assert train.y.size(0) == train.x.size(0) and int(train.y.max()) == dd.NUM_CLASSES - 1
    # mean out-degree avg_degree = 2 (expected exactly 2 per node; 89k nodes)
    assert train.edge_index.size(1) / train.x.size(0) == pytest.approx(2.0, abs=0.02)


def _pct(v):
    return f'{100 * v:.1f} %'


def test_stated_baselines_are_what_the_data_give(shipped):
    readme = README.read_text()
    for split, ds in shipped['dag-distance'].items():
        got = dd.baselines([ds[i] for i in range(len(ds))])
        stated = dd.BASELINES[split]
        assert got['majority_class'] == dd.MAX_DISTANCE + 1              # 'unreachable'
        assert got['majority'] == pytest.approx(stated['majority'], abs=5e-7)
        assert got['undirected_bfs'] == pytest.approx(stated['undirected_bfs'], abs=5e-7)
    for doc in (dd.__doc__, readme):
        for key in ('majority', 'undirected_bfs'):
            row = '  '.join(_pct(dd.BASELINES[s][key]) for s in ('train', 'val', 'test'))
            assert re.sub(r'\s+', ' ', row) in re.sub(r'[\s|]+', ' ', doc), (key, row)
    # sorting networks: chance level = majority class rate per split
    for split, st in sn.SPLIT_STATS.items():
        rate = max(st['positives'], st['graphs'] - st['positives']) / st['graphs']
        assert _pct(rate) in sn.__doc__ and _pct(rate) in readme


def test_cache_generated_once_mirror_irrelevant_and_keyed_by_generator(tmp_path, monkeypatch):
    monkeypatch.setattr(sn, 'SPLIT_PARAMS', {
        'train': {'num_wires': (3, 4), 'count': 3, 'reverse': False},
        'val': {'num_wires': (5,), 'count': 1, 'reverse': True},
        'test': {'num_wires': (5,), 'count': 2, 'reverse': True}})
    first = load_dataset('sorting-networks', root=tmp_path, progress=False)
    assert first['train'].cache_status == 'built (missing)'
    assert [len(first[s]) for s in ('train', 'val', 'test')] == [6, 3, 6]
    for mirror in (None, str(tmp_path / 'no-such-mirror')):   # GTPE_MIRROR unset / broken
        if mirror is None:
            monkeypatch.delenv('GTPE_MIRROR', raising=False)
        else:
            monkeypatch.setenv('GTPE_MIRROR', mirror)
        again = load_dataset('sorting-networks', root=tmp_path, progress=False)
        assert again['test'].cache_status == 'hit'
        assert torch.equal(again['test']._data.x, first['test']._data.x)
        d = describe('sorting-networks', root=tmp_path)
        assert d['source_kind'] == 'generated' and d['mirror'] is None and d['cached']
        assert 'mirror_error' not in d
    manifest = json.loads((tmp_path / 'sorting-networks' / 'processed' / 'manifest.json')
                          .read_text())
    assert manifest['key']['source'] == 'generated'
    assert manifest['key']['generator'] == sn.cache_params()
    assert manifest['key']['numpy'] == np.__version__
    assert manifest['stats']['num_graphs'] == 15
    monkeypatch.setattr(sn, 'GENERATOR_VERSION', sn.GENERATOR_VERSION + 1)
    rebuilt = load_dataset('sorting-networks', root=tmp_path, progress=False)
    assert rebuilt['train'].cache_status == 'built (stale: generator changed)'


def test_build_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dd, 'SPLIT_COUNTS', {'train': 2, 'val': 1, 'test': 1})
    load_dataset('dag-distance', root=tmp_path)
    err = capsys.readouterr().err
    assert f'gtpe: generating dag-distance (gtpe.datasets.dag_distance, seed 0) into ' \
           f'{tmp_path / "dag-distance"} (first time only' in err
    load_dataset('dag-distance', root=tmp_path)
    assert capsys.readouterr().err == ''


# ---------------------------------------------------------------- training loop
def _config(name, limit, **model):
    return load_config(data={
        'dataset': {'name': name, 'limit': limit},
        'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'local': 'gine', 'attn': 'full',
                  **model},
        'train': {'epochs': 1, 'batch_size': 8, 'lr': 1e-3, 'scheduler': 'none',
                  'device': 'cpu'}})


def test_build_model_passes_direction_and_level():
    cfg = _config('dag-distance', 8)
    model = build_model(cfg, dataset_info('dag-distance'))
    assert model.directed and not model.graph_level
    model = build_model(_config('sorting-networks', 8), dataset_info('sorting-networks'))
    assert model.directed and model.graph_level
    assert not build_model(_config('zinc', 8), dataset_info('zinc')).directed


def test_tiny_training_run_on_sorting_networks(tmp_path, shipped):
    results = train(_config('sorting-networks', 24), tmp_path / 'run', progress=False)
    assert results['status'] == 'completed' and results['metric'] == 'accuracy'
    assert 0.0 <= results['test'] <= 1.0 and results['epochs'] == 1


def test_tiny_training_run_on_dag_distance_scores_every_node(tmp_path, shipped, monkeypatch):
    calls = []
    original = loop.compute_loss

    def spy(task, out, y, mask=None):
        loss = original(task, out, y, mask)
        calls.append((loss.item(), y.numel(), out.size(0)))
        return loss

    monkeypatch.setattr(loop, 'compute_loss', spy)
    cfg = _config('dag-distance', 20)
    out = tmp_path / 'run'
    results = train(cfg, out, progress=False)
    assert results['status'] == 'completed' and results['best_epoch'] == 1
    # every node of the batch's graphs is in the loss (no mask); the epoch's train_loss is the
    # node-weighted mean of the batch losses
    train_graphs = shipped['dag-distance']['train']
    assert sum(c[1] for c in calls) == sum(train_graphs[i].num_nodes for i in range(20))
    assert all(c[1] == c[2] for c in calls) and len(calls) == 3
    with open(out / 'metrics.csv') as f:
        row = next(csv.DictReader(f))
    expected = sum(c[0] * c[1] for c in calls) / sum(c[1] for c in calls)
    assert float(row['train_loss']) == pytest.approx(expected, rel=1e-6)
    # the test accuracy is over every node of the first 20 test graphs
    model = build_model(cfg, dataset_info('dag-distance'))
    model.load_state_dict(torch.load(out / 'checkpoints' / 'best.pt', weights_only=False)['model'])
    model.eval()
    test = shipped['dag-distance']['test']
    hits = total = 0
    with torch.no_grad():
        for i in range(20):
            g = test[i]
            pred = model(Batch.from_data_list([g])).argmax(-1)
            hits += int((pred == g.y).sum())
            total += g.num_nodes
    assert results['test'] == pytest.approx(hits / total, abs=1e-12)


def test_node_inductive_evaluation_sharded_over_ranks(monkeypatch):
    """Under DDP each rank scores every world_size-th graph; the gathered rows are put back in
    graph order, node by node, so the score equals the single-process one."""
    graphs = dd.generate_dag_distance(7, seed=0, min_nodes=3, max_nodes=9, avg_degree=1)
    ds = GraphDataset.from_list(graphs, 'dag-distance', 'val')
    info = dataset_info('dag-distance')

    def model(batch):   # a fixed per-node rule: right on nodes with an even local index
        local = torch.arange(batch.num_nodes) - batch.ptr[batch.batch]
        return torch.nn.functional.one_hot((batch.y + local % 2) % 6, 6).float()

    model.eval = lambda: None
    seen = []
    monkeypatch.setattr(loop, 'score', lambda m, yt, yp: seen.append((yt, yp)) or 0.0)
    loop._Evaluator(ds, 'val', info, 3, 0, D.DistEnv())(model, False)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(D, 'all_gather_objects', lambda obj: [obj])
        ev = loop._Evaluator(ds, 'val', info, 2, 0, D.DistEnv(rank=rank, world_size=2))
        assert ev.indices == list(range(rank, 7, 2))
        captured = []
        monkeypatch.setattr(D, 'all_gather_objects', lambda obj: captured.append(obj) or [obj])
        ev(model, False)
        parts.append(captured[0])
    monkeypatch.setattr(D, 'all_gather_objects', lambda obj: parts)
    loop._Evaluator(ds, 'val', info, 2, 0, D.DistEnv(rank=0, world_size=2))(model, False)
    (y1, p1), (y2, p2) = seen[0], seen[-1]
    assert torch.equal(y1, torch.cat([g.y for g in graphs])) and torch.equal(y1, y2)
    assert torch.equal(p1, p2)
