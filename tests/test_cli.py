"""The ``gtpe`` command: data commands, precompute, the example script, and bad input
(one line ``gtpe: error: ...`` on stderr, exit status 2, no traceback, no half-written output)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gtpe.datasets import list_datasets
from cli_utils import run_main

REPO = Path(__file__).resolve().parents[1]
TINY = {
    'dataset': {'name': 'zinc', 'limit': 32},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2,
              'pe': {'rwse': {'walk_length': 6, 'dim': 4}}},
    'train': {'epochs': 1, 'batch_size': 16, 'device': 'cpu'},
}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(TINY))
    return path


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('gtpe: error: ') and 'Traceback' not in err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_datasets_table(capsys):
    code, out, _ = run_main(capsys, 'datasets')
    assert code == 0
    for name in list_datasets():
        assert name in out
    assert 'zinc' in out and 'metric' in out and '10,000/1,000/1,000' in out


def test_data_describe_json(capsys):
    code, out, _ = run_main(capsys, 'data', 'describe', 'zinc', '--json')
    assert code == 0
    info = json.loads(out)
    assert info['name'] == 'zinc' and info['num_graphs'] == 12_000
    assert info['splits'] == {'train': 10_000, 'val': 1_000, 'test': 1_000}
    assert info['task'] == 'regression' and info['metric'] == 'mae'
    code, out, _ = run_main(capsys, 'data', 'describe', 'zinc')
    assert code == 0 and 'num_graphs' in out and '{' not in out.splitlines()[0]


@pytest.mark.parametrize('argv, fragments', [
    (['train', '{cfg}', '--set', 'model.chanels=3'],
     ["model.chanels: unknown key (did you mean 'channels'?)"]),
    (['train', '{cfg}', '--set', 'train.epochs=two'], ['train.epochs: expected an integer']),
    (['train', '{cfg}', '--set', 'model.channels'], ['expected key=value']),
    (['train', '{cfg}', '--set', 'dataset.name=zinx'], ["unknown dataset 'zinx'", "'zinc'"]),
    (['train', '{tmp}/missing.yaml'], ['missing.yaml: no such file']),
    (['train', '{tmp}'], ['is a directory']),
    (['train'], ['train: the following arguments are required: config']),
    (['precompute', '{cfg}', '--set', 'trian.epochs=1'], ["(did you mean 'train'?)"]),
    (['data', 'describe', 'zinx'], ["unknown dataset 'zinx'"]),
    (['bench', '{tmp}/missing.yaml', '--out', '{out}'], ['no such file']),
    (['frobnicate'], ["invalid choice: 'frobnicate'"]),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, tiny, argv, fragments):
    out = tmp_path / 'out'
    argv = [a.format(cfg=tiny, tmp=tmp_path, out=out) for a in argv]
    if argv[0] == 'train' and len(argv) > 1:
        argv += ['--out', str(out)]
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_unreadable_mirror_file(capsys, tmp_path, tiny, monkeypatch):
    mirror = tmp_path / 'mirror'
    shutil.copytree(Path(os.environ['GTPE_MIRROR']) / 'zinc_subset', mirror / 'zinc_subset')
    (mirror / 'zinc_subset' / 'zinc_subset.json.gz').write_bytes(b'not gzip')
    monkeypatch.setenv('GTPE_MIRROR', str(mirror))
    monkeypatch.setenv('GTPE_DATA_ROOT', str(tmp_path / 'root'))
    out = tmp_path / 'out'
    code, _, err = run_main(capsys, 'train', tiny, '--out', out)
    assert_one_line_error(code, err, 'zinc_subset.json.gz')
    assert not out.exists()
    # GTPE_DEBUG=1 shows the traceback
    monkeypatch.setenv('GTPE_DEBUG', '1')
    code, _, err = run_main(capsys, 'train', tiny, '--out', out)
    assert code == 2 and 'Traceback' in err
    assert err.strip().splitlines()[-1].startswith('gtpe: error: ')
    assert not out.exists()


def test_existing_run_needs_resume_or_overwrite(capsys, tmp_path, tiny):
    out = tmp_path / 'run'
    code, stdout, _ = run_main(capsys, 'train', tiny, '--out', out, '--quiet')
    assert code == 0 and 'test mae: ' in stdout
    code, _, err = run_main(capsys, 'train', tiny, '--out', out)
    assert_one_line_error(code, err, 'already holds a run', '--resume', '--overwrite')
    code, stdout, _ = run_main(capsys, 'train', tiny, '--out', out, '--overwrite', '--quiet')
    assert code == 0 and 'test mae: ' in stdout


def test_precompute(capsys, tiny):
    code, out, _ = run_main(capsys, 'precompute', tiny, '--quiet')
    assert code == 0
    assert 'zinc: AddRWSE(walk_length=6' in out and 'train 32, val 32, test 32 graphs' in out


def test_console_script_exit_status_and_stderr(tmp_path, tiny):
    exe = Path(sys.executable).with_name('gtpe')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'gtpe.cli']
    proc = subprocess.run(cmd + ['train', str(tiny), '--set', 'model.chanels=3', '--out',
                                 str(tmp_path / 'out')], capture_output=True, text=True, check=False,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr == "gtpe: error: model.chanels: unknown key (did you mean 'channels'?)\n"
    assert not (tmp_path / 'out').exists()


def test_custom_model_example_runs():
    proc = subprocess.run([sys.executable, str(REPO / 'examples' / 'custom_model.py'),
                           '--limit', '64', '--epochs', '1', '--channels', '16', '--layers', '1'],
                          capture_output=True, text=True, check=False, timeout=120, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    assert 'epoch 1: train loss' in proc.stdout
    mae = float(proc.stdout.split('test mae: ')[1].split()[0])
    assert 0 < mae < 10


@pytest.mark.parametrize('quiet', [True, False])
def test_quiet_hides_every_progress_bar(capsys, tmp_path, monkeypatch, quiet):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '1e-9')  # every step prints a line in a log
    # no dataset.limit: the dataset build and its pre_transform run inside load_dataset
    config = {**TINY, 'dataset': {'name': 'zinc'}}
    path = tmp_path / 'full.yaml'
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv('GTPE_DATA_ROOT', str(tmp_path / 'fresh-root'))
    code, _, err = run_main(capsys, 'precompute', path, *(['--quiet'] if quiet else []))
    assert code == 0
    assert ('precompute' in err) is not quiet, err


@pytest.mark.parametrize('preset', [None, 'ACTIVE'])
def test_gtpe_command_makes_openmp_waits_passive_unless_set(preset):
    """The console script sets OMP_WAIT_POLICY=PASSIVE before torch starts its OpenMP runtime
    (spinning threads collapsed training on a busy machine); a user's own setting is kept."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if preset:
        env['OMP_WAIT_POLICY'] = preset
    code = ("import os, sys\n"
            "from gtpe.cli import main\n"
            "assert 'torch' not in sys.modules\n"
            "main(['datasets'])\n"
            "import torch\n"
            "print('policy=' + os.environ['OMP_WAIT_POLICY'])\n")
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == f"policy={preset or 'PASSIVE'}"
