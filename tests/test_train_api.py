"""The Python API (``gtpe.train.load_config``, ``gtpe.train.train``, ``gtpe.load_run``) and
``gtpe evaluate``, on tiny runs."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import gtpe
from gtpe.train import load_config, train
from test_readme import code_block
from cli_utils import one_line, run_main

REPO = Path(__file__).resolve().parents[1]
TINY = {
    'dataset': {'name': 'zinc', 'limit': 64},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'dropout': 0.1,
              'pe': {'rwse': {'walk_length': 6, 'dim': 4}}},
    'train': {'epochs': 3, 'batch_size': 16, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu'},
}



pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_readme_python_api_block(tmp_path, monkeypatch, capsys):
    (tmp_path / 'configs').symlink_to(REPO / 'configs')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    code = code_block((REPO / 'README.md').read_text(encoding='utf-8'), '## Python API')
    exec(compile(code, 'README.md:python-api', 'exec'), namespace)  # noqa: S102
    results, model, info = namespace['results'], namespace['model'], namespace['info']
    assert results == json.loads(Path('runs/api/results.json').read_text())
    assert results['status'] == 'completed' and results['epochs'] == 3
    assert not model.training
    assert info.epoch == results['best_epoch'] and info.results == results
    assert info.dataset.name == 'zinc' and info.checkpoint == Path('runs/api/checkpoints/best.pt')
    assert namespace['pred'].shape == (8, 1) and torch.isfinite(namespace['pred']).all()
    assert 'completed mae ' in capsys.readouterr().out


def test_load_config_overrides_forms():
    path = REPO / 'configs' / 'zinc' / 'gps+rwse.yaml'
    as_list = load_config(path, ['train.epochs=3', 'dataset.limit=64'])
    assert load_config(path, {'train.epochs': 3, 'dataset.limit': 64}) == as_list
    assert load_config(path, [('train.epochs', 3), ('dataset.limit', 64)]) == as_list
    assert load_config(path, 'train.epochs=3').train.epochs == 3  # one string: one override


def test_train_accepts_a_config_path(tmp_path, tiny):
    results = train(tiny, tmp_path / 'run', progress=False, log=lambda s: None)
    assert results['status'] == 'completed'
    with pytest.raises(TypeError, match='config must be an ExperimentConfig or a YAML path'):
        train({'dataset': {'name': 'zinc'}}, tmp_path / 'other')


def test_load_run_best_and_last(tmp_path):
    config = load_config(data=TINY)
    out = tmp_path / 'run'
    results = train(config, out, progress=False, log=lambda s: None)
    model, cfg, info = gtpe.load_run(out)
    assert cfg == config and not model.training
    assert info.epoch == results['best_epoch'] and info.results == results
    model_last, _, info_last = gtpe.load_run(out, checkpoint='last', device='cpu')
    assert {p.device.type for p in model_last.parameters()} == {'cpu'}
    assert info_last.epoch == 3
    ref = torch.load(out / 'checkpoints' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(v, ref[k]) for k, v in model_last.state_dict().items())
    with pytest.raises(ValueError, match="checkpoint must be 'best' or 'last', got 'first'"):
        gtpe.load_run(out, checkpoint='first')
    # a checkpoint of another config is refused, naming the differing keys
    (out / 'config.yaml').write_text(load_config(data=TINY, overrides=['train.lr=0.5']).to_yaml())
    with pytest.raises(ValueError, match=r'best\.pt: written for another config .* train\.lr'):
        gtpe.load_run(out)


def test_evaluate_of_non_finite_predictions_is_null(capsys, tmp_path, tiny):
    from gtpe.train.checkpoint import load_checkpoint, save_checkpoint
    out = tmp_path / 'run'
    assert run_main(capsys, 'train', tiny, '--set', 'train.epochs=1', '--out', out,
                    '--quiet')[0] == 0
    best = out / 'checkpoints' / 'best.pt'
    state = load_checkpoint(best)
    state['model'] = {k: v.fill_(float('nan')) if torch.is_floating_point(v) else v
                      for k, v in state['model'].items()}
    save_checkpoint(best, state)
    code, stdout, _ = run_main(capsys, 'evaluate', out, '--json', '--quiet')
    assert code == 0 and json.loads(stdout)['value'] is None


def test_evaluate_matches_results_json(capsys, tmp_path, tiny):
    out = tmp_path / 'run'
    assert run_main(capsys, 'train', tiny, '--out', out, '--quiet')[0] == 0
    results = json.loads((out / 'results.json').read_text())
    metrics = (out / 'metrics.csv').read_text().splitlines()

    code, stdout, _ = run_main(capsys, 'evaluate', out, '--json', '--quiet')
    assert code == 0
    got = json.loads(stdout)
    assert got['split'] == 'test' and got['metric'] == 'mae' and got['checkpoint'] == 'best'
    assert got['epoch'] == results['best_epoch'] and got['value'] == results['test']

    code, stdout, _ = run_main(capsys, 'evaluate', out, '--split', 'val', '--checkpoint', 'last',
                               '--quiet')
    assert code == 0
    last_val = float(metrics[-1].split(',')[2])
    assert stdout.strip() == f'val mae: {last_val:.6g} ({out}, last.pt, epoch 3)'


def test_evaluate_errors_are_one_line(capsys, tmp_path, tiny):
    code, _, err = run_main(capsys, 'evaluate', tmp_path / 'nothing')
    assert code == 2 and 'no such folder' in one_line(err)
    code, _, err = run_main(capsys, 'evaluate', tmp_path)
    line = one_line(err)
    assert code == 2 and 'not a gtpe training run (no config.yaml)' in line

    out = tmp_path / 'run'
    assert run_main(capsys, 'train', tiny, '--set', 'train.epochs=1', '--out', out,
                    '--quiet')[0] == 0
    best = out / 'checkpoints' / 'best.pt'
    best.write_bytes(best.read_bytes()[:100])
    code, _, err = run_main(capsys, 'evaluate', out)
    line = one_line(err)
    assert code == 2 and str(best) in line and '--checkpoint last' in line
    assert 'weights_only' not in line
    os.remove(best)
    code, _, err = run_main(capsys, 'evaluate', out, '--split', 'dev')
    assert code == 2 and "invalid choice: 'dev'" in one_line(err)
    code, _, err = run_main(capsys, 'evaluate', out)
    line = one_line(err)
    assert code == 2 and 'no checkpoints/best.pt' in line and '--checkpoint last' in line
