"""Measured cost of a run (issue 10): ``results.json``'s ``cost``, the ``train_seconds`` column of
``metrics.csv``, the PE precompute cost kept with the precompute cache, and the peak memory."""
import csv
import gc
import importlib
import json
import math
import statistics

import pytest
import torch

import gtpe.train.loop as loop
from gtpe.datasets import load_dataset
from gtpe.train import cost
from gtpe.train.checkpoint import load_checkpoint, save_checkpoint
from gtpe.train.config import load_config
from gtpe.train.loop import TrainingDiverged, load_data, train
from gtpe.transforms import AddRWSE, precompute

precompute_module = importlib.import_module('gtpe.transforms.precompute')

WALK = 6
LIMIT = 32
TINY = {
    'dataset': {'name': 'zinc', 'limit': LIMIT},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2,
              'pe': {'rwse': {'walk_length': WALK, 'dim': 4}}},
    'train': {'epochs': 2, 'batch_size': 16, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu'},
}
COST_KEYS = {'precompute_seconds', 'pe_bytes_per_graph', 'seconds_per_epoch',
             'train_seconds_per_epoch', 'peak_memory_bytes', 'peak_memory_kind', 'threads',
             'memory_at_start_bytes'}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """A data root of this module's own, so that the PE cache starts empty (ZINC builds from
    the mirror in about a second)."""
    return tmp_path_factory.mktemp('cost-data')


def config(data_root, **changes):
    data = json.loads(json.dumps(TINY))
    data['dataset']['root'] = str(data_root)
    for section, values in changes.items():
        data[section].update(values)
    return load_config(data=data)


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def rwse_bytes(data_root, limit=None):
    """Bytes of the float32 ``rwse`` [nodes, WALK] of the first ``limit`` graphs of every split,
    and the number of graphs, counted from the data (not from gtpe's bookkeeping)."""
    splits = load_dataset('zinc', root=data_root, progress=False)
    nbytes, graphs = 0, 0
    for ds in splits.values():
        n = len(ds) if limit is None else min(limit, len(ds))
        counts = ds.slices['x'][1:n + 1] - ds.slices['x'][:n]
        nbytes += int(counts.sum()) * WALK * 4
        graphs += n
    return nbytes, graphs


def test_cost_in_results_and_train_seconds_in_metrics(tmp_path, data_root):
    results = train(config(data_root), tmp_path / 'a', progress=False, log=lambda s: None)
    c = results['cost']
    assert set(c) == COST_KEYS
    saved = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert saved['cost'] == c
    assert isinstance(c['precompute_seconds'], float) and c['precompute_seconds'] > 0
    nbytes, graphs = rwse_bytes(data_root, LIMIT)
    assert graphs == 3 * LIMIT
    assert c['pe_bytes_per_graph'] == pytest.approx(nbytes / graphs, rel=1e-12)
    assert isinstance(c['peak_memory_bytes'], int) and c['peak_memory_bytes'] > 0
    assert c['peak_memory_kind'] == 'rss' and c['threads'] == 1
    assert isinstance(c['memory_at_start_bytes'], int)
    assert 0 < c['memory_at_start_bytes'] <= c['peak_memory_bytes']

    metrics = rows(tmp_path / 'a' / 'metrics.csv')
    assert list(metrics[0]) == ['epoch', 'train_loss', 'val_mae', 'test_mae', 'lr', 'seconds',
                                'train_seconds']
    for r in metrics:
        assert 0 < float(r['train_seconds']) <= float(r['seconds'])
    assert c['seconds_per_epoch'] == statistics.median(float(r['seconds']) for r in metrics)
    assert c['train_seconds_per_epoch'] == statistics.median(
        float(r['train_seconds']) for r in metrics)

    # a second run with the same PEs reads them from the cache: the same (stored) cost
    again = train(config(data_root), tmp_path / 'b', progress=False, log=lambda s: None)['cost']
    assert again['precompute_seconds'] == c['precompute_seconds']
    assert again['pe_bytes_per_graph'] == c['pe_bytes_per_graph']

    # cache entries written before the cost was stored: seconds unknown (null), bytes measured
    entries = sorted((data_root / 'zinc' / 'pe').glob('pe-*.pt'))
    saved_entries = {p: p.read_bytes() for p in entries}
    try:
        for p in entries:
            payload = precompute_module._read_entry(str(p))
            del payload['cost']
            precompute_module._write_entry(str(p), payload)
        stats = {}
        load_data(config(data_root), progress=False, stats=stats)
        assert stats['seconds'] is None and stats['cached'] is True
        old = train(config(data_root), tmp_path / 'c', progress=False, log=lambda s: None)
        assert old['cost']['precompute_seconds'] is None
        assert old['cost']['pe_bytes_per_graph'] == c['pe_bytes_per_graph']
    finally:
        for p, blob in saved_entries.items():
            p.write_bytes(blob)


def test_no_transforms_cost_nothing(tmp_path, data_root):
    cfg = config(data_root, model={'pe': {}}, train={'epochs': 1})
    c = train(cfg, tmp_path / 'run', progress=False, log=lambda s: None)['cost']
    assert c['precompute_seconds'] == 0.0 and c['pe_bytes_per_graph'] == 0.0
    stats = {}
    load_data(cfg, progress=False, stats=stats)
    assert stats == {'seconds': 0.0, 'bytes': 0, 'num_graphs': 0, 'cached': False}
    assert isinstance(c['seconds_per_epoch'], float) and c['seconds_per_epoch'] > 0


def test_precompute_stats_computed_cached_and_old_entries(tmp_path, data_root):
    graphs = [load_dataset('zinc', root=data_root, progress=False)['val'][i] for i in range(20)]
    expected = sum(g.num_nodes for g in graphs) * WALK * 4
    t = [AddRWSE(walk_length=WALK)]

    stats = {}
    out = precompute(graphs, t, progress=False, stats=stats)   # no cache
    assert isinstance(out, list) and len(out) == 20
    assert stats['bytes'] == expected and stats['num_graphs'] == 20
    assert stats['cached'] is False and stats['seconds'] > 0

    first, second = {}, {}
    precompute(graphs, t, cache_dir=tmp_path, progress=False, stats=first)
    hit = precompute(graphs, t, cache_dir=tmp_path, progress=False, stats=second)
    assert first['cached'] is False and second['cached'] is True
    assert second == {**first, 'cached': True}
    assert all(torch.equal(a.rwse, b.rwse) for a, b in zip(out, hit))

    # an entry written before the cost was stored: loads, seconds unknown, bytes from the data
    [path] = tmp_path.glob('pe-*.pt')
    payload = precompute_module._read_entry(str(path))
    assert payload['cost'] == {'seconds': first['seconds'], 'bytes': expected,
                               'num_graphs': 20}
    del payload['cost']
    precompute_module._write_entry(str(path), payload)
    old = {}
    again = precompute(graphs, t, cache_dir=tmp_path, progress=False, stats=old)
    assert old == {'seconds': None, 'bytes': expected, 'num_graphs': 20, 'cached': True}
    assert all(torch.equal(a.rwse, b.rwse) for a, b in zip(out, again))


def test_full_dataset_path_gives_precompute_stats(data_root):
    cfg = config(data_root, dataset={'limit': None})
    stats = {}
    _, splits = load_data(cfg, progress=False, stats=stats)
    nbytes, graphs = rwse_bytes(data_root)
    assert sum(len(s) for s in splits.values()) == graphs == stats['num_graphs'] == 12_000
    assert stats['bytes'] == nbytes and stats['seconds'] > 0 and stats['cached'] is False
    direct = {}
    load_dataset('zinc', root=data_root, pre_transform=[AddRWSE(walk_length=WALK)],
                 progress=False, precompute_stats=direct)
    assert direct == {**stats, 'cached': True}


def test_resume_from_rows_without_train_seconds(tmp_path, data_root, monkeypatch):
    cfg = config(data_root)
    original = loop.compute_loss
    calls = {'n': 0}

    def interrupted(*args, **kwargs):  # 2 batches per epoch: stop in epoch 2
        calls['n'] += 1
        if calls['n'] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, 'compute_loss', interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / 'run', progress=False, log=lambda s: None)
    last = tmp_path / 'run' / 'checkpoints' / 'last.pt'
    state = load_checkpoint(last)
    assert state['epoch'] == 1
    for r in state['rows']:  # as written by gtpe before train_seconds
        del r['train_seconds']
    save_checkpoint(last, state)

    results = train(cfg, tmp_path / 'run', resume=True, progress=False, log=lambda s: None)
    metrics = rows(tmp_path / 'run' / 'metrics.csv')
    assert [r['train_seconds'] for r in metrics][0] == ''
    assert list(metrics[0])[-2:] == ['seconds', 'train_seconds']
    c = results['cost']
    assert c['train_seconds_per_epoch'] == float(metrics[1]['train_seconds'])
    assert c['seconds_per_epoch'] == statistics.median(float(r['seconds']) for r in metrics)


def test_diverged_run_has_cost(tmp_path, data_root, monkeypatch):
    original = loop.compute_loss
    calls = {'n': 0}

    def poisoned(*args, **kwargs):  # the first batch of epoch 2 has a NaN loss
        calls['n'] += 1
        loss = original(*args, **kwargs)
        return loss * math.nan if calls['n'] == 3 else loss

    monkeypatch.setattr(loop, 'compute_loss', poisoned)
    with pytest.raises(TrainingDiverged) as exc:
        train(config(data_root), tmp_path / 'run', progress=False, log=lambda s: None)
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert saved['status'] == 'diverged' and saved['epochs'] == 1
    c = saved['cost']
    assert c == exc.value.results['cost'] and set(c) == COST_KEYS
    [row] = rows(tmp_path / 'run' / 'metrics.csv')
    assert c['seconds_per_epoch'] == float(row['seconds'])
    assert c['train_seconds_per_epoch'] == float(row['train_seconds'])
    assert c['precompute_seconds'] > 0 and c['pe_bytes_per_graph'] > 0
    assert c['peak_memory_bytes'] > 0


MB = 1 << 20


def _vm(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_peak_memory_counts_what_happens_after_the_reset(monkeypatch):
    device = torch.device('cpu')
    big = torch.ones(50 * MB)           # 200 MB, touched
    del big
    gc.collect()
    assert _vm('VmHWM') >= _vm('VmRSS') + 150 * MB   # the high-water mark saw it
    assert cost.memory_kind(device) == 'rss'
    if not cost.reset_peak_memory(device):
        pytest.skip('/proc/self/clear_refs cannot be written here')
    before = cost.peak_memory_bytes(device)
    assert 0 < before < _vm('VmRSS') + 50 * MB       # the freed 200 MB do not count
    big = torch.ones(50 * MB)
    del big
    gc.collect()
    assert cost.peak_memory_bytes(device) >= before + 190 * MB

    # without /proc (or where it cannot be written): no reset, the peak since the process began
    def refuse(*args, **kwargs):
        raise PermissionError('no')

    import resource
    monkeypatch.setattr(cost, 'open', refuse, raising=False)
    assert cost.reset_peak_memory(device) is False
    assert cost.peak_memory_bytes(device) == resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_peak_memory_counts_what_happens_after_the_reset():
    device = torch.device('cuda')
    assert cost.memory_kind(device) == 'cuda'
    big = torch.ones(50 * MB, device=device)
    del big
    assert cost.reset_peak_memory(device) is True
    assert cost.peak_memory_bytes(device) == torch.cuda.memory_allocated(device)
    before = cost.peak_memory_bytes(device)
    big = torch.ones(50 * MB, device=device)
    del big
    assert cost.peak_memory_bytes(device) >= before + 200 * MB


def test_memory_at_start_is_read_after_the_reset_and_before_the_data(tmp_path, data_root,
                                                                     monkeypatch):
    calls = []
    monkeypatch.setattr(cost, 'reset_peak_memory', lambda d: calls.append('reset'))
    monkeypatch.setattr(cost, 'current_memory_bytes', lambda d: calls.append('start') or 123)

    class Stop(Exception):
        pass

    def load_data(*args, **kwargs):
        calls.append('data')
        raise Stop

    monkeypatch.setattr(loop, 'load_data', load_data)
    with pytest.raises(Stop):
        train(config(data_root), tmp_path / 'run', progress=False, log=lambda s: None)
    assert calls == ['reset', 'start', 'data']
    c = cost.run_cost([], None, torch.device('cpu'), 456, 123)
    assert (c['peak_memory_bytes'], c['memory_at_start_bytes']) == (456, 123)
    assert cost.run_cost([], None, torch.device('cpu'), 456)['memory_at_start_bytes'] is None


def test_current_memory_is_the_rss_now(monkeypatch):
    device = torch.device('cpu')
    before = cost.current_memory_bytes(device)
    assert abs(before - _vm('VmRSS')) < 20 * MB
    big = torch.ones(50 * MB)           # 200 MB, touched
    assert cost.current_memory_bytes(device) >= before + 190 * MB
    del big

    def refuse(*args, **kwargs):
        raise PermissionError('no')

    monkeypatch.setattr(cost, 'open', refuse, raising=False)
    assert cost.current_memory_bytes(device) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_current_memory_is_allocated_memory():
    device = torch.device('cuda')
    big = torch.ones(50 * MB, device=device)
    assert cost.current_memory_bytes(device) == torch.cuda.memory_allocated(device)
    assert cost.current_memory_bytes(device) >= 200 * MB
    del big
