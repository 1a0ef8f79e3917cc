"""Fake ``gtpe bench`` output folders (bench.json, cell.json, results.json, metrics.csv) for the
report and figure tests: no training."""
import itertools
import json
from pathlib import Path

from gtpe.train.config import experiment_hash


def cell_name(labels):
    return '_'.join(f'{a.split(".")[-1]}-{v}' for a, v in labels.items()) or 'base'


def fake_config(seed=0, epochs=2, channels=16, model=None):
    """The ``config`` of a fake run's results.json (``model``: more ``model`` keys)."""
    return {'dataset': {'name': 'zinc', 'root': 'data'},
            'model': {'channels': channels, **(model or {})},
            'train': {'epochs': epochs, 'seed': seed, 'device': 'cpu'}}


def make_meta(axes, values, seeds=(0, 1, 2), baselines=None, metric='mae', higher=False,
              grid='configs/bench/fake.yaml', sets=('train.epochs=2',), models=None,
              experiment=True, config_epochs=2):
    """bench.json; each cell's ``experiment`` is the hash of the config :func:`write_run` writes
    for it (``models``: {labels tuple: model keys}); ``experiment=False``: an older bench.json."""
    cells = []
    for combo in itertools.product(*[values[a] for a in axes]):
        labels = dict(zip(axes, combo))
        cells.append({'cell': cell_name(labels), 'labels': labels})
        if experiment:
            config = fake_config(epochs=config_epochs, model=(models or {}).get(combo))
            cells[-1]['experiment'] = experiment_hash(config)
    if baselines is None:
        baselines = {a: 'none' for a in axes if 'none' in values[a]}
    return {'version': 2, 'grid': grid, 'axes': list(axes),
            'values': {a: list(values[a]) for a in axes}, 'cells': cells, 'seeds': list(seeds),
            'budget_params': None, 'baselines': baselines, 'metric': metric,
            'higher_is_better': higher, 'dataset': 'zinc', 'set': list(sets)}


def write_meta(out, meta):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'bench.json').write_text(json.dumps(meta))
    return out


def write_run(out, labels, seed, test=None, *, status='completed', epochs=2, config_epochs=2,
              metric='mae', higher=False, channels=16, num_params=1000, cost=True,
              seconds_per_epoch=1.5, precompute_seconds=3.0, pe_bytes_per_graph=2048.0,
              best_val=None, metrics_csv=True, model=None, peak_mb=300, start_mb=200,
              memory_kind='rss'):
    """One run folder; ``test=None`` with ``status='diverged'`` writes a diverged run."""
    cell = cell_name(labels)
    run_dir = Path(out) / 'runs' / cell / f'seed-{seed}'
    run_dir.mkdir(parents=True, exist_ok=True)
    config = fake_config(seed, config_epochs, channels, model)
    (run_dir / 'cell.json').write_text(json.dumps({
        'cell': cell, 'labels': labels, 'seed': seed, 'channels': channels,
        'budget_params': None, 'experiment': experiment_hash(config)}))
    results = {'dataset': 'zinc', 'metric': metric, 'higher_is_better': higher,
               'status': status, 'best_epoch': epochs if test is not None else None,
               'best_val': best_val if best_val is not None else test, 'test': test,
               'epochs': epochs, 'num_params': num_params, 'seconds': 3.2, 'world_size': 1,
               'device': 'cpu', 'config': config}
    if status == 'diverged':
        results['diverged'] = {'epoch': epochs + 1, 'batch': 3, 'reason': 'loss is nan'}
    if cost:
        results['cost'] = {'precompute_seconds': precompute_seconds,
                           'pe_bytes_per_graph': pe_bytes_per_graph,
                           'seconds_per_epoch': seconds_per_epoch,
                           'train_seconds_per_epoch': seconds_per_epoch * 0.8,
                           'peak_memory_bytes': None if peak_mb is None else peak_mb * 2**20,
                           'memory_at_start_bytes': (None if start_mb is None
                                                     else start_mb * 2**20),
                           'peak_memory_kind': memory_kind, 'threads': 1}
    (run_dir / 'results.json').write_text(json.dumps(results))
    if metrics_csv:
        lines = [f'epoch,train_loss,val_{metric},test_{metric},lr,seconds,train_seconds']
        for e in range(1, epochs + 1):
            v = (test or 1.0) + 0.1 * (epochs - e)
            lines.append(f'{e},{1.0 / e!r},{v!r},{v + 0.01!r},0.001,1.5,1.2')
        (run_dir / 'metrics.csv').write_text('\n'.join(lines) + '\n')
    return run_dir


def make_bench(out, tests, axes=('pe', 'model'), values=None, seeds=(0, 1, 2), models=None,
               run_kw=None, **meta_kw):
    """A bench folder: ``tests`` maps a tuple of labels (axes order) to a list of test values
    (one per seed; ``'div'`` = diverged, ``None`` = no run). ``models``: {labels tuple: model
    keys} of the cells' configs; ``run_kw``: {labels tuple: more :func:`write_run` keywords}."""
    if values is None:
        values = {a: list(dict.fromkeys(k[i] for k in tests)) for i, a in enumerate(axes)}
    meta = make_meta(list(axes), values, seeds=seeds, models=models, **meta_kw)
    write_meta(out, meta)
    higher = meta['higher_is_better']
    for combo, vals in tests.items():
        labels = dict(zip(axes, combo))
        kw = {'model': (models or {}).get(combo), **(run_kw or {}).get(combo, {})}
        for seed, v in zip(seeds, vals):
            if v is None:
                continue
            if v == 'div':
                write_run(out, labels, seed, None, status='diverged', epochs=1, higher=higher,
                          metric=meta['metric'], **kw)
            else:
                write_run(out, labels, seed, v, higher=higher, metric=meta['metric'], **kw)
    return meta
