"""The training loop behind ``gtpe train``: seeded, resumable, best-on-validation selection.

Outputs in ``out_dir`` (rank 0 only):

- ``config.yaml``: the resolved experiment config;
- ``metrics.csv``: one row per epoch: ``epoch, train_loss, val_<metric>, test_<metric>, lr, seconds``;
- ``checkpoints/last.pt`` (every epoch) and ``checkpoints/best.pt`` (best validation metric),
  both written atomically. ``last.pt`` holds model, optimizer, scheduler, the RNG states of
  python/numpy/torch (every rank), the epoch, the best so far and the metric rows, so
  ``resume=True`` after a kill continues exactly: same epochs and same values as a run that was
  never interrupted (the ``seconds`` column aside);
- ``results.json``: best validation metric, test metric at the best validation epoch, epochs,
  number of parameters, seconds and the config.

Losses (by the dataset's task): regression -> L1 (ZINC MAE); binary/multilabel ->
``BCEWithLogits`` with NaN labels masked out; multiclass -> cross entropy (on the split's node mask
for node-level datasets).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gtpe._atomic import remove_stale_temporaries
from gtpe.train import distributed as D
from gtpe.train._dataclass_io import ConfigError
from gtpe.train.checkpoint import (
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from gtpe.train.config import ExperimentConfig, config_equal_except

__all__ = [
    'build_model',
    'compute_loss',
    'format_summary',
    'load_data',
    'lr_factor',
    'seed_everything',
    'train',
]

# Config keys that may differ between an interrupted run and its resumption.
_RESUME_MAY_DIFFER = ('train.device', 'train.num_workers')
_OUTPUT_FILES = ('results.json', 'metrics.csv', 'config.yaml', 'checkpoints/last.pt',
                 'checkpoints/best.pt')


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, scheduler: str,
              min_factor: float = 0.0) -> float:
    """Multiplier of the base lr in (0-based) ``epoch``: linear warmup then half-cosine decay."""
    if scheduler == 'none':
        return 1.0
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(1, epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def compute_loss(task: str, out: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Training loss for ``task`` (see module docstring). ``out`` are raw model outputs."""
    if mask is not None:
        out, y = out[mask], y[mask]
    if task == 'multiclass':
        return F.cross_entropy(out, y.view(-1).long())
    y = y.reshape(out.shape).to(out.dtype)
    if task == 'regression':
        return F.l1_loss(out, y)
    if task in ('binary', 'multilabel'):
        valid = ~torch.isnan(y)
        return F.binary_cross_entropy_with_logits(out[valid], y[valid])
    raise ValueError(f'unknown task {task!r}')


def load_data(config: ExperimentConfig, progress: bool = True) -> tuple[Any, dict]:
    """``(DatasetInfo, {'train','val','test'})`` with the model's PE transforms precomputed.

    Without ``dataset.limit`` the transforms go to :func:`gtpe.datasets.load_dataset` as
    ``pre_transform`` (cached there). With a limit (graph-level datasets) only the first ``limit``
    graphs of each split are kept and the transforms are computed for them alone with
    :func:`gtpe.precompute` (cached under ``<root>/<name>/pe``).
    """
    from gtpe.datasets import dataset_info, load_dataset

    dc = config.dataset
    info = dataset_info(dc.name)
    transforms = list(config.model.transforms())
    if dc.limit is None or info.level == 'node':
        splits = load_dataset(dc.name, root=dc.root, pre_transform=transforms or None,
                              progress=progress)
        return info, dict(splits)

    splits = load_dataset(dc.name, root=dc.root, progress=progress)
    out = {}
    for key in ('train', 'val', 'test'):
        ds = splits[key]
        subset = [ds[i] for i in range(min(dc.limit, len(ds)))]
        if transforms:
            from gtpe.datasets import data_root
            from gtpe.transforms import precompute
            cache = data_root(dc.root) / dc.name / 'pe'
            subset = precompute(subset, transforms, cache_dir=cache, progress=progress)
        out[key] = subset
        _check_metric_defined(info, key, subset, dc.limit)
    return info, out


def _check_metric_defined(info: Any, split: str, graphs: list, limit: int) -> None:
    """ROC-AUC / AP need a label with both classes: fail before training, not after an epoch."""
    if info.metric not in ('rocauc', 'ap') or not graphs:
        return
    y = torch.cat([g.y.reshape(1, -1).double() for g in graphs])
    if not bool(((y == 1).any(0) & (y == 0).any(0)).any()):
        raise ValueError(f'dataset.limit={limit}: the first {len(graphs)} {split} graphs of '
                         f'{info.name} have no label with both classes, so {info.metric} is '
                         f'undefined; raise dataset.limit')


def build_model(config: ExperimentConfig, info: Any) -> torch.nn.Module:
    """:class:`gtpe.models.GPSModel` sized for the dataset described by ``info``."""
    from gtpe.models import GPSModel
    return GPSModel(config.model, out_dim=info.num_tasks, node_input=info.node_input,
                    node_in_dim=info.node_in_dim, edge_input=info.edge_input,
                    edge_in_dim=info.edge_in_dim, graph_level=info.level == 'graph')


def _fused_devices() -> set[str]:
    try:  # the list torch itself checks fused=True against (private helper: guard it)
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return set(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
        return {'cuda', 'cpu'}


def optimizer_impl(params: list[torch.Tensor]) -> dict[str, bool]:
    """Implementation keywords for Adam/AdamW: ``{'fused': True}`` when every parameter is a
    dense floating-point tensor on a device with fused kernels (CPU and CUDA in torch >= 2.4; one
    kernel for all parameters instead of ~10 per tensor), else ``{}`` (torch's default: the
    ``foreach`` kernels where they exist, the per-tensor loop elsewhere)."""
    devices = _fused_devices()
    if params and all(p.device.type in devices and torch.is_floating_point(p)
                      and not p.is_sparse for p in params):
        return {'fused': True}
    return {}


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``name='adam'``) or ``AdamW`` (``'adamw'``), fused when the
    parameters allow it (:func:`optimizer_impl`)."""
    params = list(params)
    opt_cls = torch.optim.AdamW if name == 'adamw' else torch.optim.Adam
    impl = optimizer_impl(params)
    try:
        return opt_cls(params, lr=lr, weight_decay=weight_decay, **impl)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - torch without fused
        return opt_cls(params, lr=lr, weight_decay=weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimizer's implementation
    (``fused``/``foreach``; the checkpoint may come from another device or version) and, for
    fused, the ``step`` counters where fused kernels need them (float32 on the parameter's
    device).  Values are loaded unchanged, so the resumed run continues exactly."""
    impl = {k: [g.get(k) for g in optimizer.param_groups] for k in ('fused', 'foreach')}
    optimizer.load_state_dict(state)
    for i, group in enumerate(optimizer.param_groups):
        for k, values in impl.items():
            if k in group:
                group[k] = values[i]
        if group.get('fused'):
            for p in group['params']:
                st = optimizer.state.get(p)
                if st and torch.is_tensor(st.get('step')):
                    st['step'] = st['step'].to(dtype=torch.float32, device=p.device)


def format_summary(results: dict) -> str:
    m = results['metric']
    return (f"test {m}: {results['test']:.4f} (best val {results['best_val']:.4f} "
            f"at epoch {results['best_epoch']})")


def _is_better(value: float, best: float | None, higher: bool) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if higher else value < best


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume or overwrite:
        return
    existing = [name for name in ('results.json', 'checkpoints/last.pt') if (out / name).exists()]
    if existing:
        raise ConfigError(f'{out}: already holds a run ({existing[0]}); pass --resume to continue '
                          f'it, --overwrite to start again, or choose another --out')


def _write_metrics_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


class _Evaluator:
    """Predictions of ``model`` on one split; sharded round-robin over ranks when distributed."""

    def __init__(self, dataset, split: str, info, batch_size: int, num_workers: int, env):
        from torch_geometric.loader import DataLoader
        self.split, self.info, self.env = split, info, env
        self.node_level = info.level == 'node'
        n = len(dataset)
        self.indices = list(range(env.rank, n, env.world_size)) if not self.node_level else None
        ds = dataset if self.node_level else torch.utils.data.Subset(dataset, self.indices)
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=False,
                                 num_workers=num_workers)

    @torch.no_grad()
    def __call__(self, model, progress: bool) -> float:
        from gtpe.datasets.metrics import evaluate
        model.eval()
        ys, preds = [], []
        it = tqdm(self.loader, desc=f'eval {self.split}', leave=False,
                  disable=not progress, dynamic_ncols=True)
        for batch in it:
            batch = batch.to(self.env.device)
            out = model(batch)
            y = batch.y
            if self.node_level:
                mask = getattr(batch, f'{self.split}_mask')
                out, y = out[mask], y[mask]
            if self.info.task != 'multiclass':
                y = y.reshape(out.shape)
            ys.append(y.detach().cpu())
            preds.append(out.detach().float().cpu())
        y_true, y_pred = torch.cat(ys), torch.cat(preds)
        if self.env.distributed and not self.node_level:
            parts = D.all_gather_objects((self.indices, y_true, y_pred))
            order = torch.tensor([i for p in parts for i in p[0]]).argsort()
            y_true = torch.cat([p[1] for p in parts])[order]
            y_pred = torch.cat([p[2] for p in parts])[order]
        return float(evaluate(self.info.metric, y_true, y_pred))


def train(config: ExperimentConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = None) -> dict:
    """Train ``config`` and write the outputs described in the module docstring to ``out_dir``.

    Args:
        resume: continue from ``out_dir/checkpoints/last.pt`` if it exists (else start afresh).
        overwrite: discard a previous run in ``out_dir`` (otherwise an existing run is an error).
        progress: show tqdm bars.
        log: called with each progress line (default: print on rank 0).
    Returns:
        the ``results.json`` content.
    """
    out = Path(out_dir)
    _check_out_dir(out, resume, overwrite)
    progress = progress and sys.stderr.isatty()  # no bars in logs (tqdm's own convention)
    tc = config.train
    env = D.init_distributed(tc.device)
    try:
        return _train(config, out, env, resume, overwrite, progress and env.is_main,
                      log or (print if env.is_main else (lambda s: None)))
    finally:
        D.cleanup()


def _train(config, out: Path, env: D.DistEnv, resume: bool, overwrite: bool, progress: bool,
           log: Callable[[str], None]) -> dict:
    from torch_geometric.loader import DataLoader

    tc = config.train
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(tc.seed)
    info, splits = load_data(config, progress=progress)

    model = build_model(config, info).to(env.device)
    num_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator()
    if env.distributed:
        sampler = torch.utils.data.DistributedSampler(
            splits['train'], num_replicas=env.world_size, rank=env.rank, shuffle=True,
            seed=tc.seed)
        train_loader = DataLoader(splits['train'], batch_size=tc.batch_size, sampler=sampler,
                                  num_workers=tc.num_workers)
    else:
        sampler = None
        train_loader = DataLoader(splits['train'], batch_size=tc.batch_size, shuffle=True,
                                  num_workers=tc.num_workers, generator=gen)
    evals = {s: _Evaluator(splits[s], s, info, tc.batch_size, tc.num_workers, env)
             for s in ('val', 'test')}

    # Dry forward pass: a model/dataset mismatch fails here, before any output is written.
    model.eval()
    with torch.no_grad():
        for probe in evals['val'].loader:
            model(probe.to(env.device))
            break

    optimizer = make_optimizer(tc.optimizer, model.parameters(), tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, tc.epochs, tc.warmup_epochs, tc.scheduler,
                                       tc.min_lr / tc.lr))
    ddp_model = model
    if env.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == 'cuda' else None,
            find_unused_parameters=True)

    seed_everything(tc.seed + env.rank)
    start_epoch, best_epoch, best_val, rows = 0, None, None, []
    ckpt_dir = out / 'checkpoints'
    cfg_dict = config.to_dict()
    last = ckpt_dir / 'last.pt'
    if resume and last.exists():
        state = load_checkpoint(last)  # on the CPU: RNG states must stay there
        diffs = config_equal_except(state['config'], cfg_dict, _RESUME_MAY_DIFFER)
        if diffs:
            raise ConfigError(f'--resume: config differs from the checkpoint in {last} at '
                              f'{", ".join(diffs)}; use the same config or another --out')
        model.load_state_dict(state['model'])
        load_optimizer_state(optimizer, state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        start_epoch, best_epoch, best_val = state['epoch'], state['best_epoch'], state['best_val']
        rows = list(state['rows'])
        rng = state['rng']
        if len(rng) == env.world_size:
            set_rng_state(rng[env.rank])
        else:
            log(f'warning: checkpoint from {len(rng)} processes, now {env.world_size}: '
                f'RNG streams are re-seeded, the run will not match an uninterrupted one')
            seed_everything(tc.seed + 7919 * start_epoch + env.rank)
        log(f'resuming {out} after epoch {start_epoch}/{tc.epochs}')
    elif resume:
        log(f'no checkpoint in {ckpt_dir}: starting from scratch')

    if env.is_main:
        if overwrite:
            for name in _OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, ckpt_dir):  # left by a process killed in the middle of a write
            remove_stale_temporaries(folder)
        atomic_write_text(out / 'config.yaml', config.to_yaml())
    metric, higher = info.metric, bool(info.higher_is_better)

    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        gen.manual_seed(tc.seed * 1_000_003 + epoch)
        lr = optimizer.param_groups[0]['lr']
        ddp_model.train()
        total, count = 0.0, 0
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{tc.epochs}', leave=False,
                   disable=not progress, dynamic_ncols=True)
        for batch in bar:
            batch = batch.to(env.device)
            out_t = ddp_model(batch)
            mask = batch.train_mask if info.level == 'node' else None
            loss = compute_loss(info.task, out_t, batch.y, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            n = batch.num_graphs if info.level == 'graph' else 1
            total += loss.item() * n
            count += n
            bar.set_postfix(loss=f'{total / max(count, 1):.4f}', refresh=False)
        total, count = D.all_reduce_sum([total, float(count)], env.device)
        train_loss = total / max(count, 1.0)
        val = evals['val'](model, progress)
        test = evals['test'](model, progress)
        scheduler.step()
        improved = _is_better(val, best_val, higher)
        if improved:
            best_epoch, best_val = epoch + 1, val
        rows.append({'epoch': epoch + 1, 'train_loss': float(train_loss), f'val_{metric}': val,
                     f'test_{metric}': test, 'lr': float(lr),
                     'seconds': round(time.perf_counter() - t0, 3)})
        rng = D.all_gather_objects(get_rng_state())
        if env.is_main:
            if improved:
                save_checkpoint(ckpt_dir / 'best.pt', {
                    'model': model.state_dict(), 'epoch': epoch + 1, f'val_{metric}': val,
                    'config': cfg_dict})
            save_checkpoint(last, {
                'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'rng': rng, 'epoch': epoch + 1,
                'best_epoch': best_epoch, 'best_val': best_val, 'rows': rows,
                'config': cfg_dict})
            _write_metrics_csv(out / 'metrics.csv', rows)
        log(f'epoch {epoch + 1:>3}/{tc.epochs}  loss {train_loss:.4f}  val {metric} {val:.4f}  '
            f'test {metric} {test:.4f}  lr {lr:.2e}  {rows[-1]["seconds"]:.1f}s'
            + ('  *' if improved else ''))
        D.barrier()

    best_row = rows[best_epoch - 1] if best_epoch is not None else rows[-1]
    results = {
        'dataset': config.dataset.name, 'metric': metric, 'higher_is_better': higher,
        'best_epoch': best_row['epoch'], 'best_val': best_row[f'val_{metric}'],
        'test': best_row[f'test_{metric}'], 'epochs': len(rows), 'num_params': num_params,
        'seconds': round(sum(r['seconds'] for r in rows), 3), 'world_size': env.world_size,
        'device': str(env.device), 'config': cfg_dict,
    }
    if env.is_main:
        atomic_write_text(out / 'results.json', json.dumps(results, indent=2) + '\n')
        log(format_summary(results))
    return results

