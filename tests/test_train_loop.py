"""The training loop on a small ZINC subset: loss goes down, outputs, model selection
(the bench tests are in test_bench.py)."""
import csv
import json
import math

import pytest
import torch

from gtpe.datasets import dataset_info
from gtpe.train.checkpoint import load_checkpoint
from gtpe.train.config import ConfigError, load_config
from gtpe.train.loop import build_model, compute_loss, train

TINY = {
    'dataset': {'name': 'zinc', 'limit': 128},
    'model': {'channels': 32, 'num_layers': 2, 'heads': 4, 'pool': 'add',
              'pe': {'rwse': {'walk_length': 8, 'dim': 8}}},
    'train': {'epochs': 3, 'batch_size': 32, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu'},
}


pytestmark = pytest.mark.usefixtures('one_thread')


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_short_run_loss_goes_down_and_writes_outputs(tmp_path, capsys):
    config = load_config(data=TINY)
    out = tmp_path / 'run'
    results = train(config, out, progress=False)
    printed = capsys.readouterr().out

    rows = read_rows(out / 'metrics.csv')
    assert [r['epoch'] for r in rows] == ['1', '2', '3']
    assert list(rows[0]) == ['epoch', 'train_loss', 'val_mae', 'test_mae', 'lr', 'seconds',
                            'train_seconds']
    losses = [float(r['train_loss']) for r in rows]
    assert losses[-1] < losses[0], losses

    # best-on-validation selection (MAE: lower is better); test reported at that epoch
    vals = [float(r['val_mae']) for r in rows]
    best = min(range(3), key=lambda i: vals[i])
    assert results['best_epoch'] == best + 1
    assert results['best_val'] == vals[best]
    assert results['test'] == float(rows[best]['test_mae'])
    saved = json.loads((out / 'results.json').read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved['epochs'] == 3 and saved['metric'] == 'mae' and saved['higher_is_better'] is False
    model = build_model(config, dataset_info('zinc'))
    assert saved['num_params'] == sum(p.numel() for p in model.parameters())
    assert saved['config'] == config.to_dict() and saved['seconds'] > 0
    assert load_config(out / 'config.yaml') == config

    assert f"test mae: {results['test']:.4f} (best val {results['best_val']:.4f} at epoch " \
           f"{results['best_epoch']})" in printed

    last = load_checkpoint(out / 'checkpoints' / 'last.pt')
    assert last['epoch'] == 3 and len(last['rows']) == 3
    assert {'model', 'optimizer', 'scheduler', 'rng'} <= set(last)
    best_ckpt = load_checkpoint(out / 'checkpoints' / 'best.pt')
    assert best_ckpt['epoch'] == results['best_epoch']

    # a finished run is not overwritten by accident; --resume of it changes nothing
    with pytest.raises(ConfigError, match='already holds a run'):
        train(config, out, progress=False)
    again = train(config, out, resume=True, progress=False)
    assert again['test'] == results['test'] and read_rows(out / 'metrics.csv') == rows
    # resuming with a different config is refused
    with pytest.raises(ConfigError, match='config differs from the checkpoint .* train.lr'):
        train(load_config(data=TINY, overrides=['train.lr=0.1']), out, resume=True,
              progress=False)


def test_losses():
    out = torch.tensor([[0.5], [2.0]])
    assert compute_loss('regression', out, torch.tensor([1.0, 1.0])).item() == pytest.approx(0.75)
    # NaN labels are masked out of the BCE
    logits = torch.tensor([[0.0, 3.0], [1.0, -2.0]])
    y = torch.tensor([[1.0, float('nan')], [0.0, 0.0]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert compute_loss('multilabel', logits, y).item() == pytest.approx(ref.item())
    assert not math.isnan(compute_loss('binary', logits[:, :1], y[:, :1]).item())
    # node-level multiclass: cross entropy on the mask only
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    mask = torch.tensor([True, False, True, False, False])
    ref = torch.nn.functional.cross_entropy(logits[mask], y[mask])
    assert compute_loss('multiclass', logits, y, mask).item() == pytest.approx(ref.item())


def test_checkpoint_writes_are_atomic_and_rng_round_trips(tmp_path):
    import random

    import numpy as np

    from gtpe.train.checkpoint import get_rng_state, save_checkpoint, set_rng_state
    path = tmp_path / 'ckpt' / 'last.pt'
    save_checkpoint(path, {'epoch': 1, 'w': torch.ones(3)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        save_checkpoint(path, {'epoch': 2, 'bad': Unpicklable()})
    assert load_checkpoint(path)['epoch'] == 1  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']  # no temporary left

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # a cached gaussian in numpy's state
    save_checkpoint(path, {'rng': get_rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(load_checkpoint(path)['rng'])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def test_limit_without_both_classes_fails_before_training():
    from torch_geometric.data import Data

    from gtpe.train.loop import _check_metric_defined
    info = dataset_info('ogbg-molhiv')
    negatives = [Data(y=torch.tensor([[0]])) for _ in range(5)]
    with pytest.raises(ValueError, match='no label with both classes.*raise dataset.limit'):
        _check_metric_defined(info, 'val', negatives, 5)
    _check_metric_defined(info, 'val', negatives + [Data(y=torch.tensor([[1]]))], 6)
    _check_metric_defined(dataset_info('zinc'), 'val', negatives, 5)  # MAE: always defined


def test_short_run_caps_warmup_and_says_so(tmp_path):
    logged = []
    config = load_config(data=TINY, overrides=['train.scheduler=cosine', 'train.warmup_epochs=10',
                                               'dataset.limit=32'])
    train(config, tmp_path / 'run', progress=False, log=logged.append)
    assert logged[0] == 'train.warmup_epochs=10 capped to 0 (at most epochs // 5 = 0 of 3 epochs)'
    lrs = [float(r['lr']) for r in read_rows(tmp_path / 'run' / 'metrics.csv')]
    assert lrs == pytest.approx([3e-3, 3e-3 * 0.75, 3e-3 * 0.25])  # cosine, no warmup


def test_progress_lines_during_epochs_in_a_log(tmp_path, capsys, monkeypatch):
    """Not a terminal (capsys): plain progress lines appear while an epoch runs, and the data
    loading / precompute phases get ``progress`` passed through."""
    import gtpe.datasets
    import gtpe.transforms
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '1e-9')
    seen = {}
    load_dataset, precompute = gtpe.datasets.load_dataset, gtpe.transforms.precompute

    def spy_load(*args, **kwargs):
        seen['load_dataset'] = kwargs.get('progress')
        return load_dataset(*args, **kwargs)

    def spy_precompute(*args, **kwargs):
        seen['precompute'] = kwargs.get('progress')
        return precompute(*args, **kwargs)

    monkeypatch.setattr(gtpe.datasets, 'load_dataset', spy_load)
    monkeypatch.setattr(gtpe.transforms, 'precompute', spy_precompute)
    config = load_config(data=TINY, overrides=['train.epochs=1', 'dataset.limit=64'])
    train(config, tmp_path / 'run')
    err = capsys.readouterr().err
    assert seen == {'load_dataset': True, 'precompute': True}
    lines = err.splitlines()
    assert 'epoch 1/1: 1/2 batch (50%)' in '\n'.join(lines), err  # a line in the middle
    assert any(line.startswith('eval val: ') for line in lines), err
    assert not any('\r' in line for line in lines)
    quiet = tmp_path / 'quiet'
    train(config, quiet, progress=False)
    assert 'batch' not in capsys.readouterr().err
