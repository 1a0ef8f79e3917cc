"""``torchrun --nproc_per_node=2 -m gtpe.cli train ...`` on CPU (Gloo): DDP + DistributedSampler,
only rank 0 writes, metrics are computed over every validation/test graph exactly once; a run
that diverges on one rank stops on every rank, with a complete ``results.json``."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist
import yaml

from gtpe.train.distributed import DistEnv, all_gather_objects, all_reduce_sum, init_distributed

CONFIG = {
    'dataset': {'name': 'zinc', 'limit': 40},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2,
              'pe': {'rwse': {'walk_length': 6, 'dim': 4}}},
    'train': {'epochs': 2, 'batch_size': 8, 'lr': 3e-3, 'warmup_epochs': 0, 'device': 'cpu'},
}


# A NaN loss on rank 1 alone (epoch 2, batch 1: 20 graphs per rank, 3 batches per epoch), and a
# slow results.json write on rank 0: rank 1 must not exit (so that the torchrun agent stops
# rank 0) before that write is done.
POISONED_CLI = textwrap.dedent('''
    import os, sys, time
    import gtpe.train.loop as loop
    rank = int(os.environ['RANK'])
    original, calls = loop.compute_loss, [0]
    def compute_loss(*args, **kwargs):
        calls[0] += 1
        loss = original(*args, **kwargs)
        return loss * float('nan') if rank == 1 and calls[0] == 4 else loss
    loop.compute_loss = compute_loss
    write = loop.atomic_write_text
    def slow_write(path, text):
        if rank == 0 and path.name == 'results.json':
            time.sleep(3)
        write(path, text)
    loop.atomic_write_text = slow_write
    from gtpe.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _torchrun(tmp_path, out, *program):
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items()
           if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         *program, 'train', str(cfg), '--out', str(out), '--quiet'],
        env=env, capture_output=True, text=True, check=False, timeout=300)


def test_single_process_defaults(monkeypatch):
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    env = init_distributed('cpu')
    assert env == DistEnv(rank=0, world_size=1, local_rank=0, device=env.device)
    assert env.is_main and not env.distributed and env.device.type == 'cpu'
    assert all_reduce_sum([1.0, 2.0], env.device) == [1.0, 2.0]
    assert all_gather_objects('x') == ['x']
    assert not dist.is_initialized()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason='torch.distributed with Gloo is not available in this build')
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / 'ddp'
    proc = _torchrun(tmp_path, out, '-m', 'gtpe.cli')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # rank 0 alone prints the summary and writes the files
    assert proc.stdout.count('test mae: ') == 1
    results = json.loads((out / 'results.json').read_text())
    assert results['world_size'] == 2 and results['epochs'] == 2
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert results['test'] == float(rows[results['best_epoch'] - 1]['test_mae'])
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['best.pt', 'last.pt']


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason='torch.distributed with Gloo is not available in this build')
def test_torchrun_divergence_on_one_rank_stops_all_with_results(tmp_path):
    script = tmp_path / 'poisoned_cli.py'
    script.write_text(POISONED_CLI)
    out = tmp_path / 'ddp'
    proc = _torchrun(tmp_path, out, str(script))  # finishes: no rank hangs
    log = proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.returncode == 1, log  # torchrun's own status when a worker failed ...
    assert 'exitcode  : 3' in proc.stderr, log  # ... with gtpe's status 3 in its report
    assert 'gtpe: error: training diverged in epoch 2, batch 1: loss is not finite' in proc.stderr
    results = json.loads((out / 'results.json').read_text())  # rank 0 was not stopped mid-write
    assert results['status'] == 'diverged' and results['world_size'] == 2
    assert results['diverged'] == {'epoch': 2, 'batch': 1, 'reason': 'loss is not finite'}
    assert results['epochs'] == 1
    with open(out / 'metrics.csv') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['1']
