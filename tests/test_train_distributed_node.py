"""Node-level training under ``torchrun`` (DDP, 2 Gloo processes on CPU): each rank trains on its
share of the training (seed) nodes, and the run equals the single-process one up to float
summation order.

- ``train.loader: full``: every rank runs the same forward pass over the whole graph (one shared
  random stream: the same dropout masks) and takes the loss over its share of the training
  nodes, scaled so that DDP's gradient average is the single-process gradient.
- ``train.loader: neighbor``: the ranks split each step's seeds of one shared permutation, so
  ``batch_size`` on W ranks equals one process with ``batch_size * W`` when a seed's output does
  not depend on the other seeds of its batch (fan-outs -1, no dropout, no batch statistics).

Tolerance (both): per-epoch metrics equal (to 1e-6), train losses to 1e-5 relative, final
weights to 1e-4 relative + 1e-5 absolute (measured: <= 3e-7 absolute after the epochs run here).
"""
import copy
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from gtpe.train.config import load_config
from gtpe.train.node_sampling import SeedBatches as _SeedBatches
from gtpe.train.node_sampling import neighbor_loader as _neighbor_loader
from gtpe.train.loop import (
    _num_loss_terms,
    _share_loss,
    compute_loss,
    train,
)

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'

pytestmark = pytest.mark.usefixtures('one_thread')

# Cora, Kipf's GCN with its dropout 0.5 (on the features and between the layers), full batch
FULL = {'dataset.normalize_features': True, 'model.channels': 16, 'train.device': 'cpu',
        'train.epochs': 6}
# sbm-105 (63 training nodes): GINE (sum over in-edges, no degree normalisation), no dropout,
# every neighbour: a seed's output does not depend on the other seeds of its batch. 10 seeds per
# rank and step, 2 ranks = 20 per step for one process: steps of 20, 20, 20 and 3 seeds (the
# last split 2 + 1, so the ranks' losses need their weights).
NEIGHBOR = {'dataset.name': 'sbm-105', 'model.channels': 16, 'model.local': 'gine',
            'model.fold_linear': False, 'model.dropout': 0.0, 'model.input_dropout': 0.0,
            'train.device': 'cpu', 'train.epochs': 4, 'train.loader': 'neighbor',
            'train.fanouts': [-1, -1], 'train.batch_size': 10}

# One torchrun launch for both runs (each launch costs ~10 s of start-up on a slow machine): the
# driver makes the process group, which train() then uses and leaves alone. It reports no free
# memory, so that the neighbour run evaluates on sampled subgraphs, each rank its share of the
# batches (the single-process run evaluates full batch: equal with fan-outs [-1, -1]).
DRIVER = textwrap.dedent('''
    import sys
    import torch.distributed as dist
    import gtpe.train.loop
    from gtpe.cli import main
    gtpe.train.loop._free_memory_bytes = lambda device: 0
    dist.init_process_group('gloo')
    for cfg, out in zip(sys.argv[1::2], sys.argv[2::2]):
        rc = main(['train', cfg, '--out', out, '--quiet'])
        assert dist.is_initialized()
        if rc:
            sys.exit(rc)
    dist.destroy_process_group()
''')


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in ('seconds', 'train_seconds')}
                for r in csv.DictReader(f)]


def _assert_same_run(single: Path, ddp: Path, metric='accuracy'):
    a, b = _rows(single / 'metrics.csv'), _rows(ddp / 'metrics.csv')
    assert [r['epoch'] for r in a] == [r['epoch'] for r in b] and len(a) >= 4
    for ra, rb in zip(a, b):
        assert ra['lr'] == rb['lr']
        for key in (f'val_{metric}', f'test_{metric}'):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=0, abs=1e-6), (ra, rb)
        assert float(rb['train_loss']) == pytest.approx(float(ra['train_loss']), rel=1e-5)
    ja = json.loads((single / 'results.json').read_text())
    jb = json.loads((ddp / 'results.json').read_text())
    assert (ja['world_size'], jb['world_size']) == (1, 2)
    assert ja['best_epoch'] == jb['best_epoch'] and ja['epochs'] == jb['epochs']
    for key in ('best_val', 'test'):
        assert jb[key] == pytest.approx(ja[key], rel=0, abs=1e-6)
    wa = torch.load(single / 'checkpoints' / 'last.pt', weights_only=False)['model']
    wb = torch.load(ddp / 'checkpoints' / 'last.pt', weights_only=False)['model']
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


# -- the pieces, in one process -----------------------------------------------------------------

def _batches(num_seeds, batch_size, rank, world_size, seed=5):
    sampler = _SeedBatches(num_seeds, batch_size, rank, world_size,
                           torch.Generator().manual_seed(seed))
    return list(sampler), sampler.steps


def test_seed_batches_split_each_step_of_one_permutation_over_the_ranks():
    n, B, W = 13, 3, 2
    single, single_steps = _batches(n, B * W, 0, 1)
    per_rank = [_batches(n, B, r, W) for r in range(W)]
    assert all(len(b) == len(single) == 3 for b, _ in per_rank)  # 6, 6, 1 seeds per step
    for k, step in enumerate(single):
        assert torch.equal(single_steps[k][1], torch.tensor(step))
        for r, (batches, steps) in enumerate(per_rank):
            own, chunk = steps[k]
            assert torch.equal(chunk, torch.tensor(step))  # the same step on every rank
            assert own == len(step[r::W]) and batches[k][:own] == step[r::W]
    # the last step holds one seed: rank 1 gets it as padding, with no real seed
    assert per_rank[1][1][2][0] == 0 and per_rank[1][0][2] == single[2][:1]
    assert sorted(i for b in single for i in b) == list(range(n))


def test_one_process_seed_batches_keep_the_shuffled_loaders_order():
    """With one process the seeds come in the order of the earlier ``shuffle=True`` loader (the
    same generator, seeded the same), so single-process runs are unchanged."""
    from torch_geometric.data import Data
    g = Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]), num_nodes=30)
    nodes = torch.arange(3, 30, 2)
    shuffled = _neighbor_loader(g, nodes, [2], 4, shuffle=True,
                                generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    sampled = _neighbor_loader(g, nodes, [2], 4, shuffle=True, generator=gen,
                               batch_sampler=_SeedBatches(nodes.numel(), 4, 0, 1, gen))
    seeds = [[b.n_id[:b.batch_size].tolist() for b in loader] for loader in (shuffled, sampled)]
    assert seeds[0] == seeds[1] and len(seeds[0]) == 4


@pytest.mark.parametrize('task', ['multiclass', 'binary'])
@pytest.mark.parametrize('num_seeds, world_size', [(7, 3), (2, 3), (8, 2)])
def test_share_losses_average_to_the_single_process_gradient(task, num_seeds, world_size):
    """DDP averages the ranks' gradients: the mean of the ranks' scaled share losses'
    gradients is the gradient of the single-process loss (float64), also with uneven shares,
    an empty share (padding) and labels with NaNs (binary: only the non-NaN entries count)."""
    g = torch.Generator().manual_seed(num_seeds * 10 + world_size)
    x = torch.randn(num_seeds, 5, generator=g, dtype=torch.float64)
    if task == 'multiclass':
        lin = torch.nn.Linear(5, 4).double()
        y = torch.randint(0, 4, (num_seeds,), generator=g)
    else:
        lin = torch.nn.Linear(5, 2).double()
        y = torch.randint(0, 2, (num_seeds, 2), generator=g).double()
        y[torch.rand(num_seeds, 2, generator=g) < 0.3] = float('nan')
        y[0, 0] = 1.0  # at least one label entry
    ref = torch.autograd.grad(compute_loss(task, lin(x), y), list(lin.parameters()))
    terms = _num_loss_terms(task, y)
    for use_mask in (False, True):  # neighbour steps (seeds first) / full batch (a mask)
        mean = [torch.zeros_like(p) for p in lin.parameters()]
        for r in range(world_size):
            if use_mask:
                mask = torch.zeros(num_seeds, dtype=torch.bool)
                mask[r::world_size] = True
                loss = _share_loss(task, lin(x), y, mask, terms, world_size)
            else:
                own = x[r::world_size]
                if own.numel() == 0:  # padding: the step's first seed, weight 0
                    own, y_own = x[:1], y[:0]
                    loss = _share_loss(task, lin(own)[:0], y_own, None, terms, world_size)
                else:
                    loss = _share_loss(task, lin(own), y[r::world_size], None, terms,
                                       world_size)
            assert torch.isfinite(loss)
            for m, grad in zip(mean, torch.autograd.grad(loss, list(lin.parameters()),
                                                         allow_unused=True)):
                if grad is not None:
                    m += grad / world_size
        for m, r_ in zip(mean, ref):
            torch.testing.assert_close(m, r_, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason='torch.distributed with Gloo is not available in this build')
def test_resume_refused_when_only_some_processes_see_the_checkpoint(tmp_path, monkeypatch):
    """On several machines each reads its own ``--out``: a checkpoint that only some of them
    have is an error on every process (not a hang, not a silent restart on the others). Here
    one process, with a Gloo group of one standing in for DDP, is told that the other does not
    see ``last.pt``."""
    from gtpe.train import distributed as D
    from gtpe.train.config import ConfigError

    cfg = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides={**FULL, 'train.epochs': 1})
    train(cfg, tmp_path / 'run', progress=False, log=lambda s: None)
    store = dist.HashStore()
    dist.init_process_group('gloo', rank=0, world_size=1, store=store)
    try:
        monkeypatch.setattr(D, 'init_distributed', lambda device: D.DistEnv(world_size=2))
        monkeypatch.setattr(D, 'all_gather_objects', lambda obj: [obj, not obj])
        with pytest.raises(ConfigError, match='exists for some processes but not for others'):
            train(cfg, tmp_path / 'run', resume=True, progress=False, log=lambda s: None)
        assert dist.is_initialized()  # not train()'s group: left alone
    finally:
        dist.destroy_process_group()


# -- torchrun, 2 Gloo processes -----------------------------------------------------------------

@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason='torch.distributed with Gloo is not available in this build')
def test_two_processes_equal_one(tmp_path):
    full = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=FULL)
    neighbor = load_config(CONFIGS / 'cora' / 'gcn.yaml', overrides=NEIGHBOR)
    neighbor_single = copy.deepcopy(neighbor)
    neighbor_single.train.batch_size = 2 * neighbor.train.batch_size
    files = []
    for name, cfg in (('full', full), ('neighbor', neighbor)):
        path = tmp_path / f'{name}.yaml'
        path.write_text(cfg.to_yaml())
        files += [str(path), str(tmp_path / f'{name}2')]
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items()
           if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         str(driver), *files], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:  # the single-process runs meanwhile
        train(full, tmp_path / 'full1', progress=False, log=lambda s: None)
        train(neighbor_single, tmp_path / 'neighbor1', progress=False, log=lambda s: None)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert stdout.count('test accuracy: ') == 2  # rank 0 alone prints (and writes)
    assert stdout.count('evaluation on neighbour-sampled subgraphs') == 1  # the neighbour run
    for name in ('full', 'neighbor'):
        _assert_same_run(tmp_path / f'{name}1', tmp_path / f'{name}2')
        assert sorted(p.name for p in (tmp_path / f'{name}2' / 'checkpoints').iterdir()) == [
            'best.pt', 'last.pt']
