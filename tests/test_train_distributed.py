"""``torchrun --nproc_per_node=2 -m gtpe.cli train ...`` on CPU (Gloo): DDP + DistributedSampler,
only rank 0 writes, metrics are computed over every validation/test graph exactly once."""
import csv
import json
import os
import subprocess
import sys

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
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / 'ddp'
    env = {k: v for k, v in os.environ.items()
           if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         '-m', 'gtpe.cli', 'train', str(cfg), '--out', str(out), '--quiet'],
        env=env, capture_output=True, text=True, check=False, timeout=300)
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
