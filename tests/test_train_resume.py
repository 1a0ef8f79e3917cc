"""Kill ``gtpe train`` (SIGKILL) after its first epoch checkpoint, resume it with ``--resume``:
the final metrics and results equal those of a run that was never interrupted."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import yaml

from gtpe._atomic import TEMP_PREFIX
from gtpe.train.checkpoint import load_checkpoint

CONFIG = {
    'dataset': {'name': 'zinc', 'limit': 64},
    # dropout > 0 so that the RNG state matters for the resumed epochs
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'dropout': 0.2,
              'pe': {'rwse': {'walk_length': 6, 'dim': 4}}},
    'train': {'epochs': 3, 'batch_size': 16, 'lr': 3e-3, 'warmup_epochs': 1, 'device': 'cpu'},
}

# Runs the CLI with a pause in the first training batch after the first checkpoint exists, so the
# test can kill the process in the middle of epoch 2 (deterministically, no race).
PAUSING_CLI = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import gtpe.train.loop as loop
    out = Path(sys.argv[sys.argv.index('--out') + 1])
    original = loop.compute_loss
    def compute_loss(*args, **kwargs):
        if (out / 'checkpoints' / 'last.pt').exists():
            (out / 'PAUSED').touch()
            time.sleep(600)
        return original(*args, **kwargs)
    loop.compute_loss = compute_loss
    from gtpe.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _rows(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop('seconds')
        r.pop('train_seconds')
    return rows


def _results(path):
    res = json.loads(path.read_text())
    res.pop('seconds')
    res.pop('cost')
    return res


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(CONFIG))
    script = tmp_path / 'pausing_cli.py'
    script.write_text(PAUSING_CLI)
    ref, killed = tmp_path / 'ref', tmp_path / 'killed'
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')  # no oversubscription
    cmd = ['train', str(cfg), '--quiet']

    # the uninterrupted reference and the run to be killed, side by side (separate processes:
    # no global torch state of this test session can leak into either)
    ref_proc = subprocess.Popen([sys.executable, '-m', 'gtpe.cli', *cmd, '--out', str(ref)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    proc = subprocess.Popen([sys.executable, str(script), *cmd, '--out', str(killed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (killed / 'PAUSED').exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, 'no checkpoint after 180 s'
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        # the killed run left one complete epoch behind and no results
        assert not (killed / 'results.json').exists()
        assert load_checkpoint(killed / 'checkpoints' / 'last.pt')['epoch'] == 1
        assert len(_rows(killed / 'metrics.csv')) == 1
        assert not [p for p in (killed / 'checkpoints').iterdir() if p.name.startswith('.')]
        # what a kill in the middle of a checkpoint write leaves (gtpe._atomic's naming)
        stale = killed / 'checkpoints' / f'{TEMP_PREFIX}last.pt.k1ll3d.tmp'
        stale.write_bytes(b'half a checkpoint')

        resumed = subprocess.run([sys.executable, '-m', 'gtpe.cli', *cmd, '--out', str(killed),
                                  '--resume'], env=env, capture_output=True, text=True,
                                 check=False, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert 'resuming' in resumed.stdout and 'after epoch 1/3' in resumed.stdout
        assert 'epoch   1/3' not in resumed.stdout  # epoch 1 is not trained again
        assert not stale.exists()

        ref_out = ref_proc.communicate(timeout=300)[0]
        assert ref_proc.returncode == 0, ref_out
    finally:
        for p in (proc, ref_proc):
            if p.poll() is None:
                p.kill()
                p.wait()

    assert [r['epoch'] for r in _rows(ref / 'metrics.csv')] == ['1', '2', '3']
    assert _rows(killed / 'metrics.csv') == _rows(ref / 'metrics.csv')
    assert _results(killed / 'results.json') == _results(ref / 'results.json')
    summary = [line for line in ref_out.splitlines() if line.startswith('test mae:')]
    assert summary and summary[-1] in resumed.stdout
