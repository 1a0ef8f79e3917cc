"""Runs that go wrong: a diverged loss stops the run with one line and a valid ``results.json``
that says so; NaN metrics are never "best"; corrupt checkpoints name the file and the way out."""
import csv
import json
import math
import shutil
import sys

import pytest
import torch
import yaml

import gtpe.datasets.metrics
import gtpe.train.loop as loop
from gtpe.train.checkpoint import CheckpointError, load_checkpoint
from gtpe.train.config import load_config
from gtpe.train.loop import TrainingDiverged, score, train
from cli_utils import one_line, run_main

TINY = {
    'dataset': {'name': 'zinc', 'limit': 64},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2,
              'pe': {'rwse': {'walk_length': 6, 'dim': 4}}},
    'train': {'epochs': 3, 'batch_size': 16, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu'},
}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(TINY))
    return path


def strict_json(path):
    """``json.loads`` that refuses the bare ``NaN``/``Infinity`` Python writes by default."""
    def refuse(name):
        raise ValueError(f'{path}: invalid JSON constant {name}')
    return json.loads(path.read_text(), parse_constant=refuse)


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --- divergence -------------------------------------------------------------------------------

def test_huge_lr_stops_with_one_line_and_valid_results(capsys, tmp_path, tiny):
    out = tmp_path / 'run'
    code, stdout, err = run_main(capsys, 'train', tiny, '--set', 'train.lr=1e9', '--out', out,
                                 '--quiet')
    assert code == 3, (stdout, err)
    line = one_line(err)
    assert 'diverged' in line and 'not finite' in line and 'train.lr=1e+09' in line
    assert '--overwrite' in line and 'results.json' in line
    results = strict_json(out / 'results.json')  # valid JSON: no bare NaN
    assert results['status'] == 'diverged'
    assert results['diverged']['epoch'] >= 1 and results['diverged']['batch'] >= 1
    assert results['epochs'] == results['diverged']['epoch'] - 1  # completed epochs only
    for r in rows(out / 'metrics.csv') if (out / 'metrics.csv').exists() else []:
        assert math.isfinite(float(r['train_loss']))  # no NaN epoch was recorded as trained
    last = out / 'checkpoints' / 'last.pt'
    if last.exists():
        state = load_checkpoint(last)
        assert all(torch.isfinite(v).all() for v in state['model'].values()
                   if torch.is_floating_point(v))


@pytest.mark.parametrize('reason', ['loss is not finite', 'gradient norm is not finite'])
def test_nan_in_epoch_two_keeps_epoch_one_and_resumes_exactly(tmp_path, monkeypatch, reason):
    config = load_config(data=TINY)
    ref = train(config, tmp_path / 'ref', progress=False, log=lambda s: None)

    original = loop.compute_loss
    calls = {'n': 0}

    def poisoned(task, out, y, mask=None):  # 4 batches per epoch: epoch 2, batch 2 is bad
        calls['n'] += 1
        loss = original(task, out, y, mask)
        if calls['n'] != 6:
            return loss
        if reason.startswith('loss'):
            return loss * float('nan')
        return loss + torch.sqrt(out.sum() * 0)  # value + 0, gradient inf * 0 = NaN

    monkeypatch.setattr(loop, 'compute_loss', poisoned)
    out = tmp_path / 'run'
    with pytest.raises(TrainingDiverged, match=rf'epoch 2, batch 2: {reason}') as exc:
        train(config, out, progress=False, log=lambda s: None)
    saved = strict_json(out / 'results.json')
    assert saved == json.loads(json.dumps(exc.value.results))
    assert saved['status'] == 'diverged' and saved['epochs'] == 1
    assert saved['diverged'] == {'epoch': 2, 'batch': 2, 'reason': reason}
    assert saved['best_epoch'] == 1 and math.isfinite(saved['test'])
    assert [r['epoch'] for r in rows(out / 'metrics.csv')] == ['1']
    assert load_checkpoint(out / 'checkpoints' / 'last.pt')['epoch'] == 1
    assert load_checkpoint(out / 'checkpoints' / 'best.pt')['epoch'] == 1

    # the poisoned step was never applied: resuming continues as if nothing happened
    monkeypatch.setattr(loop, 'compute_loss', original)
    resumed = train(config, out, resume=True, progress=False, log=lambda s: None)
    assert resumed['status'] == 'completed' and 'diverged' not in resumed
    drop = ('seconds', 'cost')  # measured times and memory
    assert {k: v for k, v in resumed.items() if k not in drop} == \
        {k: v for k, v in ref.items() if k not in drop}


def test_non_finite_predictions_stop_the_run(tmp_path):
    # one batch per epoch: the huge step is applied (its loss was finite), then the model's
    # val/test predictions overflow
    config = load_config(data=TINY, overrides=['train.lr=1e9', 'train.batch_size=64'])
    with pytest.raises(TrainingDiverged, match='predictions on val/test are not finite'):
        train(config, tmp_path / 'run', progress=False, log=lambda s: None)
    saved = strict_json(tmp_path / 'run' / 'results.json')
    assert saved['status'] == 'diverged' and saved['epochs'] == 0 and saved['test'] is None
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_non_finite_weights_after_an_epoch_stop_the_run(tmp_path, monkeypatch):
    make = loop.make_optimizer

    def poisoning_optimizer(*args, **kwargs):
        opt = make(*args, **kwargs)
        calls = {'n': 0}

        def poison(optimizer, args, kwargs):
            calls['n'] += 1
            if calls['n'] == 8:  # the last step of epoch 2 leaves an infinite weight
                with torch.no_grad():
                    optimizer.param_groups[0]['params'][0].view(-1)[0] = float('inf')

        opt.register_step_post_hook(poison)
        return opt

    monkeypatch.setattr(loop, 'make_optimizer', poisoning_optimizer)
    out = tmp_path / 'run'
    with pytest.raises(TrainingDiverged, match='epoch 2, batch 4: weights are not finite'):
        train(load_config(data=TINY), out, progress=False, log=lambda s: None)
    saved = strict_json(out / 'results.json')
    assert saved['epochs'] == 1 and saved['best_epoch'] == 1
    assert load_checkpoint(out / 'checkpoints' / 'last.pt')['epoch'] == 1


def test_nan_metric_is_never_best_and_json_stays_valid(tmp_path, monkeypatch):
    calls = {'n': 0}

    def fake_evaluate(metric, y_true, y_pred):  # val, test, val, test, ...
        calls['n'] += 1
        return float('nan') if calls['n'] % 2 else 0.5

    monkeypatch.setattr(gtpe.datasets.metrics, 'evaluate', fake_evaluate)
    out = tmp_path / 'run'
    logged = []
    results = train(load_config(data=TINY), out, progress=False, log=logged.append)
    saved = strict_json(out / 'results.json')
    assert saved['status'] == 'completed' and saved['epochs'] == 3
    assert saved['best_epoch'] is None and saved['best_val'] is None and saved['test'] is None
    assert results['best_epoch'] is None
    assert not (out / 'checkpoints' / 'best.pt').exists()
    assert 'no epoch had a finite val mae' in logged[-1]


def test_score_of_non_finite_predictions_is_nan():
    y = torch.tensor([[0.0], [1.0], [1.0]])
    bad = torch.tensor([[float('nan')], [1.0], [2.0]])
    for metric in ('mae', 'rocauc', 'ap'):  # sklearn would raise on NaN for rocauc / ap
        assert math.isnan(score(metric, y, bad))
    assert score('rocauc', y, torch.tensor([[0.0], [1.0], [2.0]])) == 1.0


# --- corrupt checkpoints ----------------------------------------------------------------------

def _corrupt(path, how):
    data = path.read_bytes()
    if how == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif how == 'garbage':
        path.write_bytes(b'\x00not a checkpoint' * 50)
    elif how == 'empty':
        path.write_bytes(b'')
    elif how == 'unsafe':  # a pickle that weights_only=True refuses (torch suggests unsafe loading)
        import argparse
        torch.save({'model': argparse.Namespace(a=1)}, path)


@pytest.mark.parametrize('how', ['truncated', 'garbage', 'empty', 'unsafe'])
def test_corrupt_last_checkpoint_names_file_and_way_out(capsys, tmp_path, tiny, how,
                                                        monkeypatch):
    calls = {'n': 0}

    def fake_evaluate(metric, y_true, y_pred):  # val, test per epoch: epoch 1 is the best
        calls['n'] += 1
        return 0.1 if calls['n'] <= 2 else 0.9

    monkeypatch.setattr(gtpe.datasets.metrics, 'evaluate', fake_evaluate)
    out = tmp_path / 'run'
    code, _, _ = run_main(capsys, 'train', tiny, '--set', 'train.epochs=2', '--out', out,
                          '--quiet')
    assert code == 0
    last = out / 'checkpoints' / 'last.pt'
    _corrupt(last, how)
    code, _, err = run_main(capsys, 'train', tiny, '--set', 'train.epochs=3', '--out', out,
                            '--resume', '--quiet')
    line = one_line(err)
    assert code == 2
    assert str(last) in line and '--overwrite' in line and 'best.pt' in line
    assert 'weights_only' not in line and 'PytorchStreamReader' not in line

    # the advice works: resume from the best epoch's checkpoint (epoch 1 of 2), which trains
    # epoch 2 again
    assert load_checkpoint(out / 'checkpoints' / 'best.pt')['epoch'] == 1
    shutil.copy(out / 'checkpoints' / 'best.pt', last)
    code, stdout, err = run_main(capsys, 'train', tiny, '--set', 'train.epochs=2', '--out', out,
                                 '--resume', '--quiet')
    assert code == 0, err
    assert 'resuming' in stdout and 'after epoch 1/2' in stdout
    assert 'epoch   1/2' not in stdout and 'epoch   2/2' in stdout
    assert [r['epoch'] for r in rows(out / 'metrics.csv')] == ['1', '2']
    assert load_checkpoint(last)['epoch'] == 2
    results = strict_json(out / 'results.json')
    assert results['status'] == 'completed' and results['epochs'] == 2
    assert results['best_epoch'] == 1


def test_load_checkpoint_errors_are_checkpoint_errors(tmp_path):
    path = tmp_path / 'x.pt'
    path.write_bytes(b'PK\x03\x04 half a zip')
    with pytest.raises(CheckpointError, match=r'x\.pt: cannot read the checkpoint'):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=r'x\.pt: not a gtpe checkpoint'):
        load_checkpoint(path)


# --- seeds ------------------------------------------------------------------------------------

def test_largest_seed_trains(tmp_path):
    config = load_config(data=TINY, overrides=[f'train.seed={2**63 - 1}', 'train.epochs=1'])
    results = train(config, tmp_path / 'run', progress=False, log=lambda s: None)
    assert results['status'] == 'completed'


# --- per-step cost ----------------------------------------------------------------------------

def _host_syncs_from_loop(monkeypatch, config, tmp_path):
    """How many times the loop module itself reads a tensor value into Python during a run."""
    count = {'n': 0}
    for name in ('item', 'tolist', '__float__', '__bool__'):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename == loop.__file__:
                count['n'] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train(config, tmp_path, progress=False, log=lambda s: None)
    monkeypatch.undo()
    return count['n']


@pytest.mark.parametrize('grad_clip', [None, 1.0])
def test_one_host_sync_per_step_and_no_clipping_without_grad_clip(tmp_path, monkeypatch,
                                                                   grad_clip):
    clips = {'n': 0}
    clip = torch.nn.utils.clip_grad_norm_

    def counted_clip(*args, **kwargs):
        clips['n'] += 1
        return clip(*args, **kwargs)

    syncs = []
    for batch_size in (16, 32):  # 4 and 2 training steps (64 graphs, one epoch)
        monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', counted_clip)
        config = load_config(data=TINY, overrides=[f'train.batch_size={batch_size}',
                                                   'train.epochs=1',
                                                   f"train.grad_clip={grad_clip or 'null'}"])
        syncs.append(_host_syncs_from_loop(monkeypatch, config, tmp_path / str(batch_size)))
    assert (syncs[0] - syncs[1]) / 2 == 1, syncs  # per training step: one, after backward
    assert clips['n'] == (0 if grad_clip is None else 4 + 2)


def test_grad_clip_still_clips(tmp_path, monkeypatch):
    norms = []
    make = loop.make_optimizer

    def recording_optimizer(*args, **kwargs):
        opt = make(*args, **kwargs)

        def record(optimizer, args, kwargs):  # the norm of the gradients the step applies
            grads = [p.grad for g in optimizer.param_groups for p in g['params']
                     if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1)
                                                                   for g in grads]))))

        opt.register_step_pre_hook(record)
        return opt

    monkeypatch.setattr(loop, 'make_optimizer', recording_optimizer)
    config = load_config(data=TINY, overrides=['train.grad_clip=1e-3', 'train.epochs=1'])
    train(config, tmp_path / 'run', progress=False, log=lambda s: None)
    assert len(norms) == 4 and max(norms) <= 1e-3 * (1 + 1e-5), norms


# --- resuming a run whose warmup was not capped (gtpe 0.1) ------------------------------------

WARM = ['train.scheduler=cosine', 'train.warmup_epochs=10']  # 3 epochs: capped to 0 since 0.2


def _lrs(out):
    return [float(r['lr']) for r in rows(out / 'metrics.csv')]


def _interrupt_in_epoch_two(monkeypatch):
    original = loop.compute_loss
    calls = {'n': 0}

    def interrupted(*args, **kwargs):  # 4 batches per epoch
        calls['n'] += 1
        if calls['n'] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, 'compute_loss', interrupted)


def test_resume_keeps_the_warmup_the_checkpoint_was_trained_with(tmp_path, monkeypatch):
    from gtpe.train.config import TrainConfig
    config = load_config(data=TINY, overrides=WARM)
    assert config.train.effective_warmup_epochs == 0

    # gtpe 0.1: no cap, and checkpoints without 'warmup_epochs_used'
    with monkeypatch.context() as m:
        m.setattr(TrainConfig, 'effective_warmup_epochs',
                  property(lambda self: self.warmup_epochs))
        m.setattr(TrainConfig, 'warmup_notice', lambda self: None)
        old_ref = train(config, tmp_path / 'old_ref', progress=False, log=lambda s: None)
        _interrupt_in_epoch_two(m)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / 'old', progress=False, log=lambda s: None)
    last = tmp_path / 'old' / 'checkpoints' / 'last.pt'
    state = load_checkpoint(last)
    assert state['epoch'] == 1
    state.pop('warmup_epochs_used', None)
    torch.save(state, last)

    logged = []
    resumed = train(config, tmp_path / 'old', resume=True, progress=False, log=logged.append)
    assert _lrs(tmp_path / 'old') == _lrs(tmp_path / 'old_ref')  # resumed == uninterrupted
    assert _lrs(tmp_path / 'old')[:3] == pytest.approx([3e-3 / 11, 3e-3 * 2 / 11, 3e-3 * 3 / 11])
    drop = ('seconds', 'cost')  # measured times and memory
    assert {k: v for k, v in resumed.items() if k not in drop} == \
        {k: v for k, v in old_ref.items() if k not in drop}
    assert any('keeps the warmup of 10 epochs it started with' in s for s in logged), logged
    assert not any('capped to 0' in s for s in logged), logged
    assert load_checkpoint(last)['warmup_epochs_used'] == 10

    # a run started with the cap records it and resumes with it, silently
    ref = train(config, tmp_path / 'ref', progress=False, log=lambda s: None)
    assert load_checkpoint(tmp_path / 'ref' / 'checkpoints' / 'last.pt')['warmup_epochs_used'] == 0
    with monkeypatch.context() as m:
        _interrupt_in_epoch_two(m)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / 'new', progress=False, log=lambda s: None)
    logged = []
    resumed = train(config, tmp_path / 'new', resume=True, progress=False, log=logged.append)
    assert _lrs(tmp_path / 'new') == _lrs(tmp_path / 'ref') == pytest.approx(
        [3e-3, 3e-3 * 0.75, 3e-3 * 0.25])
    assert {k: v for k, v in resumed.items() if k not in drop} == \
        {k: v for k, v in ref.items() if k not in drop}
    assert not any('keeps the warmup' in s for s in logged), logged


def test_resume_refuses_a_checkpoint_whose_warmup_cannot_be_told(tmp_path, monkeypatch):
    config = load_config(data=TINY, overrides=WARM)
    with monkeypatch.context() as m:
        _interrupt_in_epoch_two(m)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / 'run', progress=False, log=lambda s: None)
    last = tmp_path / 'run' / 'checkpoints' / 'last.pt'
    state = load_checkpoint(last)
    state.pop('warmup_epochs_used')
    state['rows'][0]['lr'] = 1.0  # neither schedule's epoch-1 lr
    torch.save(state, last)
    with pytest.raises(CheckpointError, match=r'last\.pt: .*warmup.*train\.warmup_epochs=10.*'
                                              r'--overwrite'):
        train(config, tmp_path / 'run', resume=True, progress=False, log=lambda s: None)
