"""The training loop behind ``gtpe train``: seeded, resumable, best-on-validation selection.

Outputs in ``out_dir`` (rank 0 only):

- ``config.yaml``: the resolved experiment config;
- ``metrics.csv``: one row per epoch: ``epoch, train_loss, val_<metric>, test_<metric>, lr,
  seconds, train_seconds`` (``seconds``: the whole epoch, training and evaluation;
  ``train_seconds``: its training batches only; empty for the epochs of a resumed run that a
  gtpe without that column ran);
- ``checkpoints/last.pt`` (every epoch) and ``checkpoints/best.pt`` (best validation metric),
  both written atomically. Each holds model, optimizer, scheduler, the RNG states of
  python/numpy/torch (every rank), the epoch, the best so far, the metric rows and the warmup
  epochs the lr schedule uses (``warmup_epochs_used``), so ``resume=True`` after a kill
  continues exactly: same epochs and same values as a run that was never interrupted (the
  ``seconds`` columns aside). Copying ``best.pt`` over ``last.pt`` resumes from the best epoch
  instead (the way out when ``last.pt`` is damaged). A resumed run keeps the warmup it started
  with, also when that differs from today's ``TrainConfig.effective_warmup_epochs`` (a run
  started by gtpe 0.1, which did not cap the warmup: its checkpoints do not record it, so it is
  told from the first epoch's lr; a checkpoint where that is impossible is refused);
- ``results.json`` (always valid JSON: a NaN is written as ``null``): ``status``
  (``'completed'`` or ``'diverged'``), best validation metric, test metric at the best
  validation epoch (``null`` when no epoch had a finite validation metric: a NaN is never
  "best"), epochs, number of parameters, seconds, the config and ``cost``, what the run
  measured (:mod:`gtpe.train.cost`; also in a diverged run):

  - ``precompute_seconds``: wall seconds the PE transforms took over the dataset (all splits)
    when they were computed; when they come from the precompute cache, the seconds stored with
    it (the same number for every run that shares those encodings); ``0.0`` without transforms;
    ``null`` for a cache entry written before gtpe stored it;
  - ``pe_bytes_per_graph``: bytes (``numel * element_size``) of the tensors the transforms
    added or changed, divided by the number of graphs; ``0.0`` without transforms;
  - ``seconds_per_epoch`` / ``train_seconds_per_epoch``: median of ``metrics.csv``'s
    ``seconds`` / ``train_seconds`` (``null`` without a finished epoch);
  - ``peak_memory_bytes`` and ``peak_memory_kind``: ``'rss'``, the peak resident memory of the
    process since :func:`train` started (Linux: its high-water mark is reset at the start; where
    that fails, the peak since the process started), or ``'cuda'``,
    ``torch.cuda.max_memory_allocated`` since the start; under DDP rank 0's own;
  - ``memory_at_start_bytes``: the memory of the same kind in use when :func:`train` started,
    before the data was loaded (RSS: ``VmRSS``, ``null`` without ``/proc``; CUDA:
    ``torch.cuda.memory_allocated``), so ``peak - start`` is what the run added on top of the
    Python/torch baseline (and of what earlier runs in the same process left);
  - ``threads``: ``torch.get_num_threads()``.

Divergence policy: a training step whose loss (on any rank) or gradient norm is not finite is
not applied; the run stops there (also when, after an epoch, the weights or the val/test
predictions are not finite; that epoch is not recorded). The check costs one host sync per step,
after ``backward`` (and one all-reduce of two flags under DDP); without ``train.grad_clip`` the
gradients are not touched. ``results.json`` then has ``status: 'diverged'`` and
``diverged: {epoch, batch, reason}``, ``epochs`` counts the finished epochs, ``metrics.csv`` and
the checkpoints hold those epochs only (their weights are finite), and :func:`train` raises
:class:`TrainingDiverged` (``gtpe train`` prints one line and exits with status 3). Under
``torchrun`` every rank stops at the same step and raises once ``results.json`` is written (no
rank exits before, so the agent cannot stop rank 0 in the middle of that write); ``gtpe train``
reports it on each rank as above (so the line may appear once per process), and ``torchrun``
itself exits with status 1 after its own failure report (which shows the workers' status 3).
``resume=True`` continues from the last finished epoch.

Progress (``progress=True``): :func:`gtpe._progress.progress_bar` bars for the epoch's batches
and the evaluations (tqdm on a terminal; elsewhere a plain line at least every
``$GTPE_PROGRESS_INTERVAL`` seconds, default 10), and the dataset build / PE precompute get
``progress`` too.

Losses (by the dataset's task): regression -> L1 (ZINC MAE); binary/multilabel ->
``BCEWithLogits`` with NaN labels masked out; multiclass -> cross entropy (on the split's node mask
for node-level datasets, over every node of the batch's graphs for node-inductive ones). The
epoch's ``train_loss`` averages the batch losses weighted by graphs (graph level), nodes
(node-inductive) or the step's training (seed) nodes (node level: one graph; under
``torchrun`` each rank's loss is over its share of them, see :mod:`gtpe.train.distributed`).
Evaluation scores every graph of a split (graph level), every node of its graphs
(node-inductive) or the split's mask (node level).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gtpe._atomic import remove_stale_temporaries
from gtpe._progress import progress_bar
from gtpe.train import cost
from gtpe.train import distributed as D
from gtpe.train._dataclass_io import ConfigError
from gtpe.train.node_sampling import SeedBatches as _SeedBatches
from gtpe.train.node_sampling import UniformNeighborSampler  # noqa: F401 (in __all__)
from gtpe.train.node_sampling import neighbor_loader as _neighbor_loader
from gtpe.train.checkpoint import (
    CheckpointError,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from gtpe.train.config import (
    MACHINE_KEYS,
    ExperimentConfig,
    check_dataset_options,
    config_equal_except,
    load_config,
)

__all__ = [
    'TrainingDiverged',
    'UniformNeighborSampler',
    'build_model',
    'compute_loss',
    'format_summary',
    'load_data',
    'lr_factor',
    'score',
    'seed_everything',
    'train',
]

# Config keys that may differ between an interrupted run and its resumption.
_RESUME_MAY_DIFFER = MACHINE_KEYS
_OUTPUT_FILES = ('results.json', 'metrics.csv', 'config.yaml', 'checkpoints/last.pt',
                 'checkpoints/best.pt')
_RESUME_KEYS = ('model', 'optimizer', 'scheduler', 'rng', 'epoch', 'best_epoch', 'best_val',
                'rows', 'config')
_SEED_MOD = 2**63  # derived seeds stay in the range torch.manual_seed accepts


class TrainingDiverged(RuntimeError):
    """Training stopped because a loss, gradient norm or weight was not finite (see the module
    docstring). ``results`` is the ``results.json`` content (``status: 'diverged'``)."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


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


def load_data(config: ExperimentConfig, progress: bool = True,
              stats: dict[str, Any] | None = None) -> tuple[Any, dict]:
    """``(DatasetInfo, {'train','val','test'})`` with the model's PE transforms precomputed.

    Without ``dataset.limit`` the transforms go to :func:`gtpe.datasets.load_dataset` as
    ``pre_transform`` (cached there). With a limit (graph-level and node-inductive datasets; on
    a node-level dataset, one graph, it is an error: :func:`check_dataset_options`) only the
    first ``limit`` graphs of each split are kept and the transforms are computed for them alone
    with :func:`gtpe.precompute` (cached under ``<root>/<name>/pe``).
    ``dataset.normalize_features`` applies PyG's ``NormalizeFeatures`` on access.

    ``stats`` (a dict), when given, is filled with :func:`gtpe.precompute`'s ``stats`` summed
    over the splits: ``seconds`` (``None`` if unknown for a split), ``bytes``, ``num_graphs``
    and ``cached`` (every split from the cache); without transforms ``seconds: 0.0, bytes: 0,
    num_graphs: 0, cached: False``.
    """
    from gtpe.datasets import dataset_info, load_dataset

    dc = config.dataset
    info = dataset_info(dc.name)
    check_dataset_options(config, info)
    transforms = list(config.model.transforms())
    on_access = None
    if dc.normalize_features:
        from torch_geometric.transforms import NormalizeFeatures
        on_access = NormalizeFeatures()
    parts: list[dict[str, Any]] = []
    if dc.limit is None:
        if transforms:
            parts.append({})
        splits = load_dataset(dc.name, root=dc.root, pre_transform=transforms or None,
                              transform=on_access, progress=progress,
                              precompute_stats=parts[0] if parts else None)
        _sum_stats(stats, parts)
        return info, dict(splits)

    splits = load_dataset(dc.name, root=dc.root, transform=on_access, progress=progress)
    out = {}
    for key in ('train', 'val', 'test'):
        ds = splits[key]
        subset = [ds[i] for i in range(min(dc.limit, len(ds)))]
        if transforms:
            from gtpe.datasets import data_root
            from gtpe.transforms import precompute
            cache = data_root(dc.root) / dc.name / 'pe'
            parts.append({})
            subset = precompute(subset, transforms, cache_dir=cache, progress=progress,
                                stats=parts[-1])
        out[key] = subset
        _check_metric_defined(info, key, subset, dc.limit)
    _sum_stats(stats, parts)
    return info, out


def _sum_stats(stats: dict[str, Any] | None, parts: list[dict[str, Any]]) -> None:
    """``stats`` updated with the sum of the precompute ``parts`` (see :func:`load_data`)."""
    if stats is None:
        return
    seconds = [p.get('seconds') for p in parts]
    stats.update(seconds=None if None in seconds else float(sum(seconds)),
                 bytes=sum(p.get('bytes', 0) for p in parts),
                 num_graphs=sum(p.get('num_graphs', 0) for p in parts),
                 cached=bool(parts) and all(p.get('cached') for p in parts))


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
    """The model of ``config.model`` (:func:`gtpe.models.model_class`: :class:`gtpe.models.GPSModel`
    or, ``arch='tokengt'``, :class:`gtpe.models.TokenGTModel`) sized for the dataset described by
    ``info``: pooled output for graph-level datasets, per node otherwise;
    ``directed=info.directed`` (a directed dataset's direction-blind layers get the symmetrised
    graph)."""
    from gtpe.models import model_class
    return model_class(config.model)(
        config.model, out_dim=info.num_tasks, node_input=info.node_input,
        node_in_dim=info.node_in_dim, edge_input=info.edge_input,
        edge_in_dim=info.edge_in_dim, graph_level=info.level == 'graph',
        directed=bool(getattr(info, 'directed', False)))


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


def score(metric: str, y_true: Tensor, y_pred: Tensor) -> float:
    """:func:`gtpe.datasets.evaluate`, or NaN when a prediction is not finite (a diverged model:
    a NaN score is never "best"; scikit-learn's ROC-AUC / AP would raise instead)."""
    from gtpe.datasets import metrics
    if not bool(torch.isfinite(y_pred).all()):
        return float('nan')
    return float(metrics.evaluate(metric, y_true, y_pred))


def _num(value: float | None) -> str:
    return 'nan' if value is None else f'{value:.4f}'


def format_summary(results: dict) -> str:
    """``test <metric>: <value> (best val <value> at epoch <n>)``, the last line of a run."""
    m = results['metric']
    if results.get('best_epoch') is None:
        return f'test {m}: n/a (no epoch had a finite val {m})'
    return (f"test {m}: {_num(results['test'])} (best val {_num(results['best_val'])} "
            f"at epoch {results['best_epoch']})")


def _finite_or_none(obj: Any) -> Any:
    """Plain data with every non-finite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _all_finite(value: float, env: D.DistEnv) -> bool:
    """``value`` is finite on every rank (a NaN anywhere makes the sum NaN)."""
    if env.distributed:
        value = D.all_reduce_sum([value], env.device)[0]
    return math.isfinite(value)


def _check_step(model: torch.nn.Module, loss: Tensor, grad_clip: float | None
                ) -> tuple[bool, bool, float]:
    """After ``loss.backward()``: ``(loss finite on every rank, gradient norm finite, this rank's
    loss)`` with a single host sync. Clips the gradients to a total 2-norm of ``grad_clip`` when
    set (:func:`torch.nn.utils.clip_grad_norm_`, which also gives the norm); otherwise only
    measures it (:func:`torch.nn.utils.get_total_norm`). DDP's gradients are already averaged,
    so the norm is the same on every rank; the loss is not, hence the MIN all-reduce."""
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    loss = loss.detach()
    flags = torch.stack([loss.isfinite(), norm.to(loss.device).isfinite()]).to(torch.float64)
    D.all_reduce_min(flags)
    loss_ok, norm_ok, value = torch.cat([flags, loss.to(torch.float64).view(1)]).tolist()
    return loss_ok == 1.0, norm_ok == 1.0, value


def _checkpoint_warmup(state: dict, tc: Any, path: Path, advice: str) -> int:
    """Warmup epochs the checkpointed run's lr schedule uses: recorded (``warmup_epochs_used``)
    since gtpe 0.2; older checkpoints (gtpe 0.1 did not cap ``train.warmup_epochs``) are told
    apart by the first epoch's lr, ``lr / (W + 1)`` (``lr`` when ``W = 0``)."""
    if 'warmup_epochs_used' in state:
        return int(state['warmup_epochs_used'])
    if tc.scheduler != 'cosine':
        return tc.effective_warmup_epochs
    lr0 = state['rows'][0]['lr'] if state['rows'] else None
    for w in dict.fromkeys((tc.effective_warmup_epochs, tc.warmup_epochs)):
        if lr0 is not None and math.isclose(lr0, tc.lr * lr_factor(0, tc.epochs, w, 'cosine'),
                                            rel_tol=1e-9):
            return w
    raise CheckpointError(f'{path}: cannot tell which lr warmup it was trained with (its epoch 1 '
                          f'lr {lr0!r} matches neither train.warmup_epochs={tc.warmup_epochs} nor '
                          f'its cap {tc.effective_warmup_epochs}){advice}')


def _weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if torch.is_floating_point(t))


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
    """The rows as CSV; a column that some rows lack (``train_seconds`` in the rows of a
    checkpoint written by an older gtpe) is an empty cell there."""
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields, restval='', lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


# -- node-level datasets: full batch or neighbour sampling ------------------------------------

def _num_loss_terms(task: str, y: Tensor) -> int:
    """How many terms :func:`compute_loss` averages over for the labels ``y`` (already masked):
    rows (multiclass), label entries (regression), non-NaN entries (binary / multilabel)."""
    if task == 'multiclass':
        return int(y.shape[0])
    if task in ('binary', 'multilabel'):
        return int((~torch.isnan(y.to(torch.float64))).sum())
    return int(y.numel())


def _share_loss(task: str, out: Tensor, y: Tensor, mask: Tensor | None, step_terms: int,
                world_size: int) -> Tensor:
    r""":func:`compute_loss` of this rank's share of a step's training nodes (``out``/``y``,
    restricted by ``mask``), scaled so that DDP's average of the ranks' gradients is the gradient
    of the single-process loss, the mean over all ``step_terms`` terms of the step:
    :math:`\ell_r = \frac{W}{T}\sum_{i \in r} l_i = \frac{W\,T_r}{T}\,\mathrm{mean}_{i \in r}
    l_i`, so :math:`\frac1W \sum_r \ell_r = \frac1T \sum_i l_i`. A share without terms
    (padding) gives a zero loss that still depends on the model (every rank runs backward)."""
    if world_size == 1:
        return compute_loss(task, out, y, mask)
    own = _num_loss_terms(task, y[mask] if mask is not None else y)
    if own == 0:
        return out.sum() * 0.0
    return compute_loss(task, out, y, mask) * (own * world_size / step_terms)


def _full_batch_bytes(graph: Any, model_config: Any) -> int:
    """Rough float32 memory of a forward pass over the whole graph without gradients: node and
    edge activations of a few layers' worth, plus the dense attention scores of
    ``attn: full | graphormer`` (:math:`N^2` per head)."""
    N, E, C = graph.num_nodes, graph.num_edges, model_config.channels
    total = 4 * C * (3 * E + 12 * N)
    x = getattr(graph, 'x', None)
    if isinstance(x, Tensor):
        total += x.numel() * x.element_size()
    if model_config.attn in ('full', 'graphormer'):
        total += 4 * model_config.heads * N * N
    return int(total)


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == 'cuda':
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - no /proc
        pass
    return 8 * 2**30  # pragma: no cover


class _NodeEvaluator:
    """Metrics of ``model`` on the masks of a node-level dataset's one graph: one forward pass
    over the whole graph for all requested splits (``mode='full'``), or neighbour-sampled
    subgraphs around the evaluated nodes with ``fanouts`` (``'neighbor'``; a fixed sample,
    each batch's drawn from a generator seeded with ``seed`` and the batch's position, so every
    epoch sees the same one and the training's random stream is untouched). With
    ``shard=True`` under ``torchrun``, each process predicts every ``world_size``-th batch and
    the predictions are gathered: every process gets the one-process predictions.
    ``finite`` tells whether the last call's predictions were all finite."""

    def __init__(self, graph: Any, info: Any, env: Any, mode: str = 'full',
                 fanouts: list[int] | None = None, batch_size: int = 1024, seed: int = 0,
                 log: Callable[[str], None] | None = None):
        self.graph, self.info, self.env = graph, info, env
        self.mode, self.fanouts, self.batch_size, self.seed = mode, fanouts, batch_size, seed
        self.log = log or (lambda s: None)
        self._device_graph = None
        self.finite = True

    def _full(self, model) -> Tensor:
        if self._device_graph is None:  # a copy: Data.to moves the tensors in place
            self._device_graph = copy.copy(self.graph).to(self.env.device)
        return model(self._device_graph)

    def predict(self, model, nodes: Tensor, progress: bool = False,
                shard: bool = False) -> Tensor:
        """Model outputs ``[len(nodes), out_dim]`` for the node ids ``nodes`` (eval mode);
        ``shard``: the processes share the batches of the ``'neighbor'`` mode."""
        model.eval()
        with torch.no_grad():
            if self.mode == 'full':
                try:
                    return self._full(model)[nodes.to(self.env.device)].float().cpu()
                except torch.OutOfMemoryError:
                    if self.fanouts is None:
                        raise
                    self._device_graph = None
                    torch.cuda.empty_cache()
                    self.mode = 'neighbor'
                    self.log(f'evaluation: the whole graph does not fit on {self.env.device}; '
                             f'evaluating on neighbour-sampled subgraphs (fan-outs '
                             f'{self.fanouts}) from now on')
            return self._sampled(model, nodes, progress, shard)

    def _sampled(self, model, nodes: Tensor, progress: bool, shard: bool) -> Tensor:
        n, bs = nodes.numel(), self.batch_size
        batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
        ranks = self.env.world_size if shard and self.env.distributed else 1
        mine = batches[self.env.rank::ranks] if ranks > 1 else batches
        loader = _neighbor_loader(self.graph, nodes.cpu(), self.fanouts, bs, shuffle=False,
                                  batch_sampler=mine, sample_seed=self.seed)
        it = progress_bar(loader, desc='eval', unit='batch', enabled=progress,
                          leave=False, dynamic_ncols=True)
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a base seed
            preds = [model(batch.to(self.env.device))[:batch.batch_size].float().cpu()
                     for batch in it]
        positions = [p for b in mine for p in b]
        if ranks > 1:
            parts = D.all_gather_objects((positions, preds))
            positions = [p for part in parts for p in part[0]]
            preds = [t for part in parts for t in part[1]]
        pred = torch.cat(preds)
        out = pred.new_empty((n,) + tuple(pred.shape[1:]))
        out[torch.tensor(positions, dtype=torch.long)] = pred
        return out

    def __call__(self, model, progress: bool, splits: tuple[str, ...] = ('val', 'test'),
                 shard: bool = False) -> dict[str, float]:
        masks = [getattr(self.graph, f'{s}_mask') for s in splits]
        union = masks[0].clone()
        for m in masks[1:]:
            union |= m
        nodes = union.nonzero().view(-1)
        pred = self.predict(model, nodes, progress, shard)
        self.finite = bool(torch.isfinite(pred).all())
        y = self.graph.y
        result = {}
        for s, m in zip(splits, masks):
            rows = m[nodes]  # the split's nodes among the evaluated ones (ascending ids)
            out, yt = pred[rows], y[m]
            if self.info.task != 'multiclass':
                yt = yt.reshape(out.shape)
            result[s] = score(self.info.metric, yt, out)
        return result


def _node_setup(graph: Any, config: Any, info: Any, env: D.DistEnv, gen: torch.Generator,
                log: Callable[[str], None]) -> tuple[Any, Any, _NodeEvaluator]:
    """``(train loader, sampler or None, evaluator)`` of a node-level dataset.

    ``train.loader: full`` (default): the loader is the one graph (on the device) per epoch
    (under ``torchrun`` every rank holds the whole graph; the training loop computes the loss
    on its share of the training nodes).
    ``neighbor``: a :func:`_neighbor_loader` over the training nodes with a
    :class:`_SeedBatches` batch sampler (returned as the sampler): shuffled per epoch with
    ``gen``; under ``torchrun`` each step's seeds are split over the processes.
    Evaluation is full-batch unless the loader is ``neighbor`` and :func:`_full_batch_bytes`
    exceeds half the free memory of the device (on any rank under ``torchrun``), then
    neighbour-sampled with the same fan-outs, each rank its share of the batches.
    """
    tc = config.train
    if (tc.loader or 'full') == 'full':
        evaluator = _NodeEvaluator(graph, info, env, 'full', seed=tc.seed, log=log)
        return [copy.copy(graph).to(env.device)], None, evaluator
    train_nodes = graph.train_mask.nonzero().view(-1)
    sampler = _SeedBatches(train_nodes.numel(), tc.batch_size, env.rank, env.world_size, gen)
    loader = _neighbor_loader(graph, train_nodes, tc.fanouts, tc.batch_size, shuffle=True,
                              generator=gen, num_workers=tc.num_workers, batch_sampler=sampler)
    need, free = _full_batch_bytes(graph, config.model), _free_memory_bytes(env.device)
    mode = 'full' if need <= free // 2 else 'neighbor'
    if 'neighbor' in D.all_gather_objects(mode):  # one mode for all ranks (they shard it)
        mode = 'neighbor'
    if mode == 'neighbor':
        log(f'evaluation on neighbour-sampled subgraphs (fan-outs {tc.fanouts}): a forward pass '
            f'over the whole graph needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free')
    evaluator = _NodeEvaluator(graph, info, env, mode, fanouts=tc.fanouts,
                               batch_size=tc.batch_size, seed=tc.seed, log=log)
    return loader, sampler, evaluator


class _Evaluator:
    """Metric of ``model`` on one split (:func:`score`); sharded round-robin over ranks (by
    graph) when distributed. Node level: the split's mask of the one graph; node-inductive: every
    node of the split's graphs, in graph order. ``finite`` tells whether the last call's
    predictions were all finite."""

    def __init__(self, dataset, split: str, info, batch_size: int, num_workers: int, env):
        from torch_geometric.loader import DataLoader
        self.split, self.info, self.env = split, info, env
        self.node_level = info.level == 'node'
        self.inductive = info.level == 'node-inductive'
        n = len(dataset)
        self.indices = list(range(env.rank, n, env.world_size)) if not self.node_level else None
        ds = dataset if self.node_level else torch.utils.data.Subset(dataset, self.indices)
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=False,
                                 num_workers=num_workers)
        self.finite = True  # whether the last call's predictions were all finite

    @torch.no_grad()
    def __call__(self, model, progress: bool) -> float:
        model.eval()
        ys, preds = [], []
        it = progress_bar(self.loader, desc=f'eval {self.split}', unit='batch',
                          enabled=progress, leave=False, dynamic_ncols=True)
        sizes = []  # rows per graph (node-inductive: its nodes; graph level: 1)
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
            if self.inductive:
                sizes.append(torch.bincount(batch.batch, minlength=batch.num_graphs).cpu())
        y_true, y_pred = torch.cat(ys), torch.cat(preds)
        if self.env.distributed and not self.node_level:
            sizes_t = torch.cat(sizes) if self.inductive else torch.ones(len(self.indices),
                                                                         dtype=torch.long)
            parts = D.all_gather_objects((self.indices, sizes_t, y_true, y_pred))
            graph_ids = torch.tensor([i for p in parts for i in p[0]])
            sizes_t = torch.cat([p[1] for p in parts])
            # every graph's rows in ascending graph order
            row_graph = torch.repeat_interleave(graph_ids, sizes_t)
            order = torch.sort(row_graph, stable=True).indices
            y_true = torch.cat([p[2] for p in parts])[order]
            y_pred = torch.cat([p[3] for p in parts])[order]
        self.finite = bool(torch.isfinite(y_pred).all())
        return score(self.info.metric, y_true, y_pred)


def train(config: ExperimentConfig | str | os.PathLike, out_dir: str | os.PathLike, *,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = None) -> dict:
    """Train ``config`` and write the outputs described in the module docstring to ``out_dir``.

    Args:
        config: an :class:`~gtpe.train.config.ExperimentConfig` (:func:`load_config`) or the
            path of an experiment YAML.
        resume: continue from ``out_dir/checkpoints/last.pt`` if it exists (else start afresh).
        overwrite: discard a previous run in ``out_dir`` (otherwise an existing run is an error).
        progress: show progress on stderr (bars on a terminal, periodic lines elsewhere).
        log: called with each line: epochs, notices, the summary (default: print on rank 0).
    Returns:
        the ``results.json`` content (``status: 'completed'``).
    Raises:
        TrainingDiverged: a loss, gradient norm or weight stopped being finite; the results
            (``status: 'diverged'``) are written and attached to the exception.
    """
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f'train: config must be an ExperimentConfig or a YAML path, got '
                        f'{type(config).__name__} (build one with gtpe.train.load_config)')
    out = Path(out_dir)
    _check_out_dir(out, resume, overwrite)
    tc = config.train
    own_group = not D.is_initialized()  # a process group the caller made is left to it
    env = D.init_distributed(tc.device)
    try:
        return _train(config, out, env, resume, overwrite, progress and env.is_main,
                      log or (print if env.is_main else (lambda s: None)))
    finally:
        if own_group:
            D.cleanup()


def _train(config, out: Path, env: D.DistEnv, resume: bool, overwrite: bool, progress: bool,
           log: Callable[[str], None]) -> dict:
    from torch_geometric.loader import DataLoader

    tc = config.train
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    cost.reset_peak_memory(env.device)
    memory_at_start = cost.current_memory_bytes(env.device)  # before the data is loaded
    seed_everything(tc.seed)
    pe_stats: dict[str, Any] = {}
    info, splits = load_data(config, progress=progress, stats=pe_stats)

    model = build_model(config, info).to(env.device)
    num_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator()
    node_level = info.level == 'node'
    evals: dict[str, Any] = {}
    node_eval: _NodeEvaluator | None = None
    sampled = False  # node level: neighbour loader
    if node_level:
        graph = splits['train'][0]
        train_loader, sampler, node_eval = _node_setup(graph, config, info, env, gen, log)
        sampled = tc.loader == 'neighbor'
        train_nodes = graph.train_mask.nonzero().view(-1)  # ascending ids
        seed_y = graph.y[train_nodes]  # labels by position (sampled: the steps' seeds)
        # full batch: one step over every training node; under torchrun each rank's loss is
        # over its share, the ids train_nodes[rank::world_size] (see _share_loss)
        full_terms = _num_loss_terms(info.task, seed_y)
        own_mask = torch.zeros(graph.num_nodes, dtype=torch.bool)
        own_mask[train_nodes[env.rank::env.world_size]] = True
        own_mask = own_mask.to(env.device)
    elif env.distributed:
        sampler = torch.utils.data.DistributedSampler(
            splits['train'], num_replicas=env.world_size, rank=env.rank, shuffle=True,
            seed=tc.seed)
        train_loader = DataLoader(splits['train'], batch_size=tc.batch_size, sampler=sampler,
                                  num_workers=tc.num_workers)
    else:
        sampler = None
        train_loader = DataLoader(splits['train'], batch_size=tc.batch_size, shuffle=True,
                                  num_workers=tc.num_workers, generator=gen)
    if not node_level:
        evals = {s: _Evaluator(splits[s], s, info, tc.batch_size, tc.num_workers, env)
                 for s in ('val', 'test')}

    # Dry forward pass: a model/dataset mismatch fails here, before any output is written.
    model.eval()
    with torch.no_grad():
        if node_eval is not None:  # a few validation nodes (full batch: the whole graph)
            probe_nodes = node_eval.graph.val_mask.nonzero().view(-1)[:2]
            node_eval.predict(model, probe_nodes)
        for probe in evals['val'].loader if evals else ():
            model(probe.to(env.device))
            break

    optimizer = make_optimizer(tc.optimizer, model.parameters(), tc.lr, tc.weight_decay)
    warmup = tc.effective_warmup_epochs  # a resumed run keeps its checkpoint's (read late below)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, tc.epochs, warmup, tc.scheduler, tc.min_lr / tc.lr))
    ddp_model = model
    if env.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == 'cuda' else None,
            find_unused_parameters=True)

    # Under torchrun each rank draws its own random numbers (dropout, neighbour samples), except
    # for full-batch node-level training: every rank runs the same forward pass over the whole
    # graph, so they share one stream (the same dropout masks as a single process).
    shared_rng = node_level and not sampled
    rank_offset = 0 if shared_rng else env.rank
    seed_everything(tc.seed + rank_offset)
    start_epoch, best_epoch, best_val, rows = 0, None, None, []
    ckpt_dir = out / 'checkpoints'
    cfg_dict = config.to_dict()
    last = ckpt_dir / 'last.pt'
    found = last.exists() if resume else False
    if env.distributed and resume and len(set(D.all_gather_objects(found))) > 1:
        # each machine reads its own --out: resuming needs one that every process sees
        raise ConfigError(f'--resume: {last} exists for some processes but not for others (on '
                          f'several machines --out must be a folder that every machine sees, '
                          f'e.g. on a shared filesystem, to resume)')
    if found:
        best_pt = ckpt_dir / 'best.pt'
        advice = '; start again with --overwrite' + (
            f', or copy {best_pt} over it to resume from the best epoch'
            if best_pt.exists() else '')
        state = load_checkpoint(last, advice=advice)  # on the CPU: RNG states must stay there
        missing = [k for k in _RESUME_KEYS if k not in state]
        if missing:
            raise CheckpointError(f'{last}: not a resumable checkpoint (no '
                                  f'{", ".join(missing)}){advice}')
        diffs = config_equal_except(state['config'], cfg_dict, _RESUME_MAY_DIFFER)
        if diffs:
            raise ConfigError(f'--resume: config differs from the checkpoint in {last} at '
                              f'{", ".join(diffs)}; use the same config or another --out')
        warmup = _checkpoint_warmup(state, tc, last, advice)
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
            seed_everything((tc.seed + 7919 * start_epoch + rank_offset) % _SEED_MOD)
        log(f'resuming {out} after epoch {start_epoch}/{tc.epochs}')
        if warmup != tc.effective_warmup_epochs:
            log(f'the resumed run keeps the warmup of {warmup} epochs it started with (a new run '
                f'would use {tc.effective_warmup_epochs}: train.warmup_epochs='
                f'{tc.warmup_epochs} capped at epochs // 5 since gtpe 0.2)')
    elif resume:
        log(f'no checkpoint in {ckpt_dir}: starting from scratch')
    notice = tc.warmup_notice()
    if notice and warmup == tc.effective_warmup_epochs:
        log(notice)

    if env.is_main:
        if overwrite:
            for name in _OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, ckpt_dir):  # left by a process killed in the middle of a write
            remove_stale_temporaries(folder)
        atomic_write_text(out / 'config.yaml', config.to_yaml())
    metric, higher = info.metric, bool(info.higher_is_better)
    diverged = None
    stopped_early = False

    for epoch in range(start_epoch, tc.epochs):
        # early stopping: `patience` epochs since the best (also right after a resume)
        if tc.patience is not None and epoch - (best_epoch or 0) >= tc.patience:
            stopped_early = True
            break
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(model, 'set_epoch'):  # models whose schedule counts epochs (Polynormer)
            model.set_epoch(epoch)
        gen.manual_seed((tc.seed * 1_000_003 + epoch) % _SEED_MOD)
        lr = optimizer.param_groups[0]['lr']
        ddp_model.train()
        total, count = 0.0, 0
        bar = progress_bar(train_loader, desc=f'epoch {epoch + 1}/{tc.epochs}', unit='batch',
                           enabled=progress, leave=False, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            batch = batch.to(env.device)
            out_t = ddp_model(batch)
            if node_level and sampled:  # the seeds come first; this rank's real ones
                own, step_seeds = sampler.steps[step]
                n = step_seeds.numel()  # the step's seeds over all ranks
                step_terms = (n if env.world_size == 1 else
                              _num_loss_terms(info.task, seed_y[step_seeds]))
                loss = _share_loss(info.task, out_t[:own], batch.y[:own], None, step_terms,
                                   env.world_size)
            elif node_level:
                n = train_nodes.numel()
                loss = _share_loss(info.task, out_t, batch.y,
                                   own_mask if env.distributed else batch.train_mask,
                                   full_terms, env.world_size)
            else:
                loss = compute_loss(info.task, out_t, batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_ok, norm_ok, loss_value = _check_step(model, loss, tc.grad_clip)
            if not (loss_ok and norm_ok):  # the same on every rank: the step is not applied
                diverged = {'epoch': epoch + 1, 'batch': step + 1,
                            'reason': 'loss is not finite' if not loss_ok
                            else 'gradient norm is not finite'}
                break
            optimizer.step()
            if not node_level:
                n = batch.num_graphs if info.level == 'graph' else batch.num_nodes
            else:  # the ranks' (scaled) losses average to the step's loss
                n = n / env.world_size if env.distributed else n
            total += loss_value * n
            count += n
            bar.set_postfix_str(f'loss {total / max(count, 1):.4f}', refresh=False)
        if env.device.type == 'cuda':
            torch.cuda.synchronize(env.device)
        train_seconds = time.perf_counter() - t0
        if diverged is not None:
            bar.set_postfix_str(f"stopped at batch {diverged['batch']}: {diverged['reason']}",
                                refresh=False)
        bar.close()
        if diverged is None and not _all_finite(0.0 if _weights_finite(model) else math.nan, env):
            diverged = {'epoch': epoch + 1, 'batch': len(train_loader),
                        'reason': 'weights are not finite after the epoch'}
        if diverged is not None:
            break
        total, count = D.all_reduce_sum([total, float(count)], env.device)
        train_loss = total / max(count, 1.0)
        if node_eval is not None and env.distributed and node_eval.mode == 'neighbor':
            # every rank evaluates its share of the batches; all get the gathered predictions
            val, test = node_eval(model, progress, shard=True).values()
            finite = node_eval.finite
        elif node_eval is not None:  # one pass for both masks; under torchrun on rank 0 alone
            val, test, finite = math.nan, math.nan, True  # (then broadcast to every rank)
            if env.is_main:  # (a whole graph too large for the device: rank 0 samples alone)
                val, test = node_eval(model, progress).values()
                finite = node_eval.finite
            val, test, finite, node_eval.mode = D.broadcast_object(
                (val, test, finite, node_eval.mode))
        else:
            val = evals['val'](model, progress)
            test = evals['test'](model, progress)
            finite = evals['val'].finite and evals['test'].finite
        if not finite:  # same on every rank (gathered)
            diverged = {'epoch': epoch + 1, 'batch': len(train_loader),
                        'reason': 'the predictions on val/test are not finite after the epoch'}
            break
        scheduler.step()
        improved = _is_better(val, best_val, higher)
        if improved:
            best_epoch, best_val = epoch + 1, val
        rows.append({'epoch': epoch + 1, 'train_loss': float(train_loss), f'val_{metric}': val,
                     f'test_{metric}': test, 'lr': float(lr),
                     'seconds': round(time.perf_counter() - t0, 3),
                     'train_seconds': round(train_seconds, 3)})
        rng = D.all_gather_objects(get_rng_state())
        if env.is_main:
            state = {
                'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'rng': rng, 'epoch': epoch + 1,
                'best_epoch': best_epoch, 'best_val': best_val, 'rows': rows,
                f'val_{metric}': val, 'config': cfg_dict, 'warmup_epochs_used': warmup}
            if improved:  # resumable too: the way out when last.pt is damaged
                save_checkpoint(ckpt_dir / 'best.pt', state)
            save_checkpoint(last, state)
            _write_metrics_csv(out / 'metrics.csv', rows)
        log(f'epoch {epoch + 1:>3}/{tc.epochs}  loss {train_loss:.4f}  val {metric} {val:.4f}  '
            f'test {metric} {test:.4f}  lr {lr:.2e}  {rows[-1]["seconds"]:.1f}s'
            + ('  *' if improved else ''))
        D.barrier()

    if stopped_early:
        log(f'early stopping after epoch {len(rows)}: val {metric} has not improved for '
            f'{tc.patience} epochs (train.patience); best epoch {best_epoch}')
    best_row = rows[best_epoch - 1] if best_epoch is not None else None
    results = {
        'dataset': config.dataset.name, 'metric': metric, 'higher_is_better': higher,
        'status': 'diverged' if diverged else 'completed',
        'best_epoch': best_epoch,
        'best_val': best_row[f'val_{metric}'] if best_row else None,
        'test': best_row[f'test_{metric}'] if best_row else None,
        'epochs': len(rows), 'num_params': num_params,
        'seconds': round(sum(r['seconds'] for r in rows), 3), 'world_size': env.world_size,
        'device': str(env.device),
        'cost': cost.run_cost(rows, pe_stats, env.device, cost.peak_memory_bytes(env.device),
                              memory_at_start),
    }
    if diverged:
        results['diverged'] = diverged
    if tc.patience is not None:
        results['stopped_early'] = stopped_early
    results = _finite_or_none({**results, 'config': cfg_dict})
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / 'results.json',
                          json.dumps(results, indent=2, allow_nan=False) + '\n')
    # under torchrun no rank may return (or raise and exit, so that the agent stops the others)
    # before rank 0 has written results.json
    D.barrier()
    if diverged:
        kept = (f'checkpoints/last.pt holds epoch {len(rows)}' if rows
                else 'no epoch finished, so there is no checkpoint')
        what = ('without applying that step' if 'after the epoch' not in diverged['reason']
                else 'without recording that epoch')
        raise TrainingDiverged(
            f"training diverged in epoch {diverged['epoch']}, batch {diverged['batch']}: "
            f"{diverged['reason']} (train.lr={tc.lr:g}); stopped {what}. "
            f"{out / 'results.json'} has status 'diverged' and {kept}. Lower train.lr"
            f"{' (or set train.grad_clip)' if tc.grad_clip is None else ''} and start again "
            f"with --overwrite", results)
    if env.is_main:
        log(format_summary(results))
    return results
