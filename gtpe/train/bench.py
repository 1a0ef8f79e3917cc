"""``gtpe bench``: run a grid of experiments (cells x seeds), in parallel or sharded, and report.

A grid file (``configs/bench/*.yaml``)::

    base: ../zinc/gps+none.yaml      # experiment config, relative to the grid file
    set:                             # overrides applied to every run (optional)
      train.epochs: 30
    grid:                            # cartesian product of the axes (first axis varies slowest)
      pe:                            # axis with named values: label -> overrides
        none: {}
        rwse: {model.pe.rwse: {walk_length: 20, dim: 16}}
      model.attn: [full, linear]     # axis over one key: a list of values
    seeds: [0, 1, 2]                 # each cell once per seed (default: the base's train.seed)
    budget: {params: 500000}         # per cell the widest model.channels within the budget
    baselines: {pe: none}            # axis -> label the report compares the others with

``seeds`` (``--seeds`` wins): distinct integers in ``[0, 2**63 - 1]``; run ``s`` of a cell has
``train.seed = s``. Without seeds each cell runs once with its own ``train.seed``.
``budget`` (``--budget-params`` wins): per cell, the largest ``model.channels`` (a multiple of
``model.heads`` when there is attention, larger than the concatenated PE dims) whose model has at
most that many parameters (:func:`channels_for_budget`); no data is loaded for this.
``baselines`` (default: every axis that has a label ``none`` -> ``none``) must name labels of
their axes. Bad input (an unknown key, an empty axis, a bad seed list, budget or option, a cell
whose smallest model exceeds the budget) is one :class:`ConfigError` raised before anything is
written.

Output folder ``OUT``:

- ``bench.json``: the grid's description (axes, labels, cells, seeds, budget, baselines, metric);
  written when absent, and an existing one must describe the same grid (its ``grid`` path aside),
  so shards of one grid may share ``OUT``;
- ``runs/<cell>/seed-<s>/``: one :func:`gtpe.train.train` output folder per run, with
  ``cell.json`` (cell, labels, seed, channels, budget) written before the run starts and, for
  runs in worker processes, ``log.txt`` (their output);
- ``results.csv``, ``summary.csv``, ``report.md`` and ``figures/`` (:mod:`gtpe.train.report`),
  built from every finished run in ``OUT``, so the shard that ends last leaves the full report.
  They are rewritten (without figures) after each run and with figures at the end.

A finished run with the same config is reused; an interrupted one resumes from its checkpoint; a
run whose folder holds a run made with another config stops the bench before anything runs
(``overwrite=True`` discards and reruns this grid's runs instead). A run that diverges
(non-finite loss, see :mod:`gtpe.train.loop`) is kept (``status`` ``diverged``) and the grid goes
on. ``shard=(i, n)`` runs the runs (cells x seeds in grid order, seed fastest) whose index ``k``
has ``k % n == i - 1``. ``workers > 1`` runs each run in its own process (``threads`` torch
threads each, default ``cores // workers``, pinned to their own cores when there are enough, one
GPU per worker slot round robin). A run that fails is reported (its error; from a worker, the end
of its log) and the others go on; :class:`BenchFailed` lists the failed runs at the end.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtpe._atomic import atomic_write
from gtpe.train._dataclass_io import ConfigError
from gtpe.train.config import (
    ExperimentConfig,
    config_equal_except,
    load_config,
    parse_override,
    read_yaml,
)

__all__ = [
    'BenchCell',
    'BenchFailed',
    'BenchRun',
    'Grid',
    'channels_for_budget',
    'cpu_sets',
    'expand_grid',
    'gpu_for_slot',
    'load_grid',
    'parse_shard',
    'plan_runs',
    'run_bench',
]

_GRID_KEYS = ('base', 'set', 'grid', 'seeds', 'budget', 'baselines')
_SEED_RANGE = '[0, 2**63 - 1]'
# config keys that may differ between a run folder and the run (as the training loop's resume)
_MAY_DIFFER = ('train.device', 'train.num_workers')
_DIVERGED = 3  # exit status of a worker whose run diverged (as `gtpe train`)


class BenchFailed(RuntimeError):
    """Some runs of a bench failed (the others finished and the report was written)."""

    def __init__(self, message: str, failed: list[str]):
        super().__init__(message)
        self.failed = failed


@dataclass
class BenchCell:
    """One point of the grid: its label per axis, folder name and config."""
    labels: dict[str, str]
    name: str
    config: ExperimentConfig


@dataclass
class BenchRun:
    """One training run: a cell with one seed (and the width the budget chose)."""
    cell: BenchCell
    seed: int
    channels: int
    budget_params: int | None
    config: ExperimentConfig

    @property
    def rel_dir(self) -> Path:
        """The run's folder relative to the bench output folder."""
        return Path('runs') / self.cell.name / f'seed-{self.seed}'

    def cell_json(self) -> dict:
        return {'cell': self.cell.name, 'labels': dict(self.cell.labels), 'seed': self.seed,
                'channels': self.channels, 'budget_params': self.budget_params}


@dataclass
class Grid:
    """A parsed grid file (:func:`load_grid`): axes with their labels, cells and the options."""
    path: Path
    axes: list[str]
    values: dict[str, list[str]]
    cells: list[BenchCell]
    seeds: list[int] | None
    budget_params: int | None
    baselines: dict[str, str]


# ---------------------------------------------------------------------------------------------
# grid file


def _label(value: Any) -> str:
    if value is None:
        return 'none'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.+=' else '-' for c in name)


def _overrides_of(spec: Any, where: str) -> list[tuple[str, Any]]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: expected a mapping of key.path: value')
    return [(str(k), v) for k, v in spec.items()]


def check_seeds(seeds: Any, where: str) -> list[int]:
    """``seeds`` as a list of distinct integers in ``[0, 2**63 - 1]``, else :class:`ConfigError`."""
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError(f'{where}: expected a non-empty list of distinct integers in '
                          f'{_SEED_RANGE}, got {seeds!r}')
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            kind = 'integer' if isinstance(s, int) and not isinstance(s, bool) else \
                type(s).__name__
            raise ConfigError(f'{where}: expected distinct integers in {_SEED_RANGE}, got '
                              f'{kind} {s!r}')
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if dup is not None:
        raise ConfigError(f'{where}: seed {dup} appears twice')
    return list(seeds)


def check_budget(budget: Any, where: str) -> int:
    """``budget`` as a positive integer number of parameters, else :class:`ConfigError`."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f'{where}: expected a positive integer number of parameters, got '
                          f'{budget!r}')
    return budget


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``'2/3'`` -> ``(2, 3)`` (1-based shard index, number of shards); :class:`ConfigError`
    unless ``1 <= i <= n``."""
    if shard is None:
        return None
    if isinstance(shard, str):
        i_text, sep, n_text = shard.partition('/')
        try:
            i, n = int(i_text), int(n_text)
        except ValueError:
            i = n = None
        if not sep or i is None:
            raise ConfigError(f'--shard {shard}: expected i/n, e.g. 1/4 (the first of 4 shards)')
    else:
        i, n = shard
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f'--shard {i}/{n}: expected i/n with 1 <= i <= n')
    return i, n


def load_grid(grid_path: str | os.PathLike, overrides: Iterable[str] = ()) -> Grid:
    """Parse and check a grid file (every cell's config is validated, ``overrides`` are
    ``key=value`` strings applied last, as ``--set``)."""
    grid_path = Path(grid_path)
    data = read_yaml(grid_path)
    if not isinstance(data, dict):
        raise ConfigError(f'{grid_path}: expected a mapping with keys {", ".join(_GRID_KEYS)}')
    for key in data:
        if key not in _GRID_KEYS:
            import difflib
            m = difflib.get_close_matches(str(key), _GRID_KEYS, n=1)
            hint = f" (did you mean '{m[0]}'?)" if m else ''
            raise ConfigError(f'{grid_path}: {key}: unknown key{hint}')
    if 'base' not in data or not isinstance(data['base'], str):
        raise ConfigError(f'{grid_path}: base: missing (path of the base experiment config)')
    base_path = Path(data['base'])
    if not base_path.is_absolute():
        base_path = grid_path.parent / base_path
    base = read_yaml(base_path)
    common = _overrides_of(data.get('set'), f'{grid_path}: set')
    cli = [parse_override(o) for o in overrides]

    axes: list[tuple[str, list[tuple[str, list[tuple[str, Any]]]]]] = []
    grid = data.get('grid') or {}
    if not isinstance(grid, dict):
        raise ConfigError(f'{grid_path}: grid: expected a mapping of axes')
    for axis, values in grid.items():
        where = f'{grid_path}: grid.{axis}'
        if isinstance(values, list):
            points = [(_label(v), [(str(axis), v)]) for v in values]
        elif isinstance(values, dict):
            points = [(_label(k), _overrides_of(v, f'{where}.{k}')) for k, v in values.items()]
        else:
            raise ConfigError(f'{where}: expected a list of values or a mapping label -> overrides')
        if not points:
            raise ConfigError(f'{where}: empty axis (give it at least one value)')
        labels = [label for label, _ in points]
        dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
        if dup is not None:
            raise ConfigError(f'{where}: label {dup!r} appears twice')
        axes.append((str(axis), points))

    cells: list[BenchCell] = []
    names: dict[str, dict] = {}
    for combo in itertools.product(*[points for _, points in axes]):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combo)}
        sets = list(common) + [kv for _, ov in combo for kv in ov] + cli
        try:
            config = load_config(data=base, overrides=sets)
        except ConfigError as exc:
            where = ', '.join(f'{a}={v}' for a, v in labels.items()) or 'base'
            raise ConfigError(f'{grid_path} [{where}]: {exc}') from None
        name = _safe('_'.join(f'{a.split(".")[-1]}-{v}' for a, v in labels.items()) or 'base')
        if name in names:
            raise ConfigError(f'{grid_path}: cells {names[name]} and {labels} get the same '
                              f'folder name {name!r}; rename a label')
        names[name] = labels
        cells.append(BenchCell(labels=labels, name=name, config=config))
    datasets = list(dict.fromkeys(c.config.dataset.name for c in cells))
    if len(datasets) > 1:
        raise ConfigError(f'{grid_path}: the cells use several datasets ({", ".join(datasets)}); '
                          f'a grid compares runs on one dataset')

    values = {axis: [label for label, _ in points] for axis, points in axes}
    seeds = data.get('seeds')
    seeds = check_seeds(seeds, f'{grid_path}: seeds') if seeds is not None else None
    budget = data.get('budget')
    if budget is not None:
        if not isinstance(budget, dict) or set(budget) != {'params'}:
            raise ConfigError(f'{grid_path}: budget: expected {{params: N}}, got {budget!r}')
        budget = check_budget(budget['params'], f'{grid_path}: budget.params')
    return Grid(path=grid_path, axes=list(values), values=values, cells=cells, seeds=seeds,
                budget_params=budget,
                baselines=_baselines(data.get('baselines'), values, grid_path))


def _baselines(spec: Any, values: dict[str, list[str]], grid_path: Path) -> dict[str, str]:
    if spec is None:
        return {axis: 'none' for axis, labels in values.items() if 'none' in labels}
    if not isinstance(spec, dict):
        raise ConfigError(f'{grid_path}: baselines: expected a mapping axis: label')
    out = {}
    for axis, label in spec.items():
        axis, label = str(axis), _label(label)
        if axis not in values:
            raise ConfigError(f'{grid_path}: baselines: {axis}: not an axis of the grid '
                              f'(axes: {", ".join(values) or "none"})')
        if label not in values[axis]:
            raise ConfigError(f'{grid_path}: baselines: {axis}: {label!r} is not a label of that '
                              f'axis (labels: {", ".join(values[axis])})')
        out[axis] = label
    return out


def expand_grid(grid_path: str | os.PathLike,
                overrides: Iterable[str] = ()) -> tuple[list[str], list[BenchCell]]:
    """Parse a grid file into ``(axis names, cells)``; every cell's config is validated."""
    grid = load_grid(grid_path, overrides)
    return grid.axes, grid.cells


# ---------------------------------------------------------------------------------------------
# parameter budget


@functools.lru_cache(maxsize=4096)
def _param_count(model_json: str, dataset: str) -> int:
    import torch

    from gtpe.datasets import dataset_info
    from gtpe.models.config import GPSModelConfig
    from gtpe.models.gps_model import GPSModel

    info = dataset_info(dataset)
    config = GPSModelConfig.from_dict(json.loads(model_json))
    with torch.random.fork_rng(devices=[]):  # some layers draw at construction: keep the RNG
        model = GPSModel(config, out_dim=info.num_tasks, node_input=info.node_input,
                         node_in_dim=info.node_in_dim, edge_input=info.edge_input,
                         edge_in_dim=info.edge_in_dim, graph_level=info.level == 'graph')
    return sum(p.numel() for p in model.parameters())


def param_count(config: ExperimentConfig, channels: int | None = None) -> int:
    """Parameters of :func:`gtpe.train.loop.build_model` for ``config`` (with ``model.channels =
    channels`` when given); built on the CPU, no data loaded, cached by config."""
    model = config.model.to_dict()
    if channels is not None:
        model['channels'] = channels
    return _param_count(json.dumps(model, sort_keys=True), config.dataset.name)


def channels_for_budget(config: ExperimentConfig, budget: int, where: str = 'model') -> int:
    """The largest ``model.channels`` whose model has at most ``budget`` parameters.

    Widths are multiples of ``model.heads`` when the model has attention (any integer without)
    and larger than the concatenated PE dims; the parameter count grows with the width, so a
    search finds it: galloping from a guess (the count grows about quadratically with the width)
    to bracket the answer, then bisection. :class:`ConfigError` (naming ``where``) when even the
    smallest width exceeds the budget."""
    m = config.model
    step = m.heads if m.attn is not None else 1
    k_min = m.pe.concat_dim // step + 1  # smallest k with k * step > concat dims

    def fits(k: int) -> bool:
        return param_count(config, k * step) <= budget

    if not fits(k_min):
        raise ConfigError(f'{where}: even the smallest model.channels ({k_min * step}) has '
                          f'{param_count(config, k_min * step):,} parameters, more than the '
                          f'budget of {budget:,}')
    k0 = max(k_min, m.channels // step)
    guess = max(k_min, int(k0 * math.sqrt(budget / param_count(config, k0 * step))))
    gap = 1
    if fits(guess):
        lo, hi = guess, guess + gap
        while fits(hi):
            gap *= 2
            lo, hi = hi, hi + gap
    else:
        lo, hi = max(k_min, guess - gap), guess
        while not fits(lo):
            gap *= 2
            lo, hi = max(k_min, lo - gap), lo
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step


def _with(config: ExperimentConfig, channels: int, seed: int) -> ExperimentConfig:
    model = dataclasses.replace(config.model, channels=channels)
    train = dataclasses.replace(config.train, seed=seed)
    return dataclasses.replace(config, model=model, train=train)


def plan_runs(grid: Grid, seeds: Sequence[int] | None = None,
              budget_params: int | None = None) -> list[BenchRun]:
    """Every run of the grid in order (cells in grid order, seed fastest): ``seeds`` and
    ``budget_params`` override the grid file's."""
    seeds = seeds if seeds is not None else grid.seeds
    budget = budget_params if budget_params is not None else grid.budget_params
    runs = []
    for cell in grid.cells:
        channels = cell.config.model.channels
        if budget is not None:
            where = f'{grid.path} [{cell.name}]: budget {budget:,} parameters'
            channels = channels_for_budget(cell.config, budget, where)
        for seed in (seeds if seeds is not None else [cell.config.train.seed]):
            runs.append(BenchRun(cell=cell, seed=seed, channels=channels, budget_params=budget,
                                 config=_with(cell.config, channels, seed)))
    return runs


def bench_meta(grid: Grid, runs: list[BenchRun], overrides: Sequence[str],
               grid_arg: str) -> dict:
    """The content of ``OUT/bench.json`` (the same for every shard of the grid)."""
    from gtpe.datasets import dataset_info

    info = dataset_info(grid.cells[0].config.dataset.name)
    return {
        'version': 2, 'grid': grid_arg, 'axes': list(grid.axes),
        'values': {a: list(v) for a, v in grid.values.items()},
        'cells': [{'cell': c.name, 'labels': dict(c.labels)} for c in grid.cells],
        'seeds': list(dict.fromkeys(r.seed for r in runs)),
        'budget_params': runs[0].budget_params if runs else grid.budget_params,
        'baselines': dict(grid.baselines), 'metric': info.metric,
        'higher_is_better': bool(info.higher_is_better), 'dataset': info.name,
        'set': [o if isinstance(o, str) else f'{o[0]}={o[1]}' for o in overrides],
    }


# ---------------------------------------------------------------------------------------------
# workers: threads, cores, GPUs


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_sets(workers: int, threads: int, cores: Sequence[int]) -> list[list[int]] | None:
    """Disjoint core sets for the worker slots (``threads`` cores each), or ``None`` when there are
    fewer cores than ``workers * threads`` (then the workers are not pinned)."""
    if workers * threads > len(cores):
        return None
    return [list(cores[k * threads:(k + 1) * threads]) for k in range(workers)]


def gpu_for_slot(slot: int, visible: Sequence[str]) -> str | None:
    """The GPU of worker slot ``slot`` (``CUDA_VISIBLE_DEVICES`` value): the visible GPUs round
    robin, ``None`` without GPUs."""
    return visible[slot % len(visible)] if visible else None


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (``[]`` without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get('CUDA_VISIBLE_DEVICES')
    if env is not None:
        return [d.strip() for d in env.split(',') if d.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(threads: int, gpu: str | None) -> dict[str, str]:
    """Environment variables of a worker process: its OpenMP threads (passive waits: workers
    share the machine) and its GPU."""
    env = {'OMP_NUM_THREADS': str(threads), 'OMP_WAIT_POLICY': 'PASSIVE'}
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = gpu
    return env


# ---------------------------------------------------------------------------------------------
# run folders


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _folder_config(run_dir: Path) -> dict | None:
    """The config of the run in ``run_dir`` (finished or interrupted), ``None`` when none."""
    results = _read_json(run_dir / 'results.json')
    if isinstance(results, dict) and isinstance(results.get('config'), dict):
        return results['config']
    if not (run_dir / 'checkpoints' / 'last.pt').exists():
        return None
    try:
        data = read_yaml(run_dir / 'config.yaml')
    except ConfigError:
        data = None
    if isinstance(data, dict):
        return data
    from gtpe.train.checkpoint import load_checkpoint
    try:
        return load_checkpoint(run_dir / 'checkpoints' / 'last.pt').get('config')
    except Exception:  # noqa: BLE001 - unreadable: the training loop reports it on resume
        return None


def _finished_results(run_dir: Path, config: ExperimentConfig) -> dict | None:
    results = _read_json(run_dir / 'results.json')
    if not isinstance(results, dict) or not isinstance(results.get('config'), dict):
        return None
    if config_equal_except(results['config'], config.to_dict(), _MAY_DIFFER):
        return None
    if results.get('epochs') == config.train.epochs or results.get('status') == 'diverged':
        return results
    return None


def _get(data: Any, path: str) -> Any:
    for part in path.split('.'):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _check_run_folders(out: Path, runs: list[BenchRun]) -> None:
    """:class:`ConfigError` when run folders hold runs made with another config."""
    conflicts = []
    for run in runs:
        old = _folder_config(out / run.rel_dir)
        if old is None:
            continue
        diffs = config_equal_except(old, run.config.to_dict(), _MAY_DIFFER)
        if diffs:
            conflicts.append((run, old, diffs))
    if not conflicts:
        return
    run, old, diffs = conflicts[0]
    new = run.config.to_dict()
    shown = ', '.join(f'{p}: {_show(_get(old, p))} -> {_show(_get(new, p))}' for p in diffs[:3])
    more = f' and {len(diffs) - 3} more' if len(diffs) > 3 else ''
    n = len(conflicts)
    raise ConfigError(f'{out}: {n} run{"s were" if n > 1 else " was"} made with another config '
                      f'({shown}{more}, e.g. {run.rel_dir}); pass --overwrite to rerun '
                      f'{"them" if n > 1 else "it"}, or use another --out')


def _same_grid(a: dict, b: dict) -> bool:
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != 'grid'}
    return strip(a) == strip(b)


def _check_bench_json(out: Path, meta: dict, overwrite: bool) -> bool:
    """Whether ``OUT/bench.json`` must be written; :class:`ConfigError` when it describes another
    grid (and ``overwrite`` is false)."""
    path = out / 'bench.json'
    if not path.exists():
        return True
    old = _read_json(path)
    if isinstance(old, dict) and _same_grid(old, meta):
        return False
    if overwrite:
        return True
    keys = sorted(k for k in set(meta) | set(old or {}) if k != 'grid'
                  and (old or {}).get(k) != meta.get(k)) if isinstance(old, dict) else ['all']
    raise ConfigError(f'{out}: holds another grid (bench.json differs in {", ".join(keys)}); '
                      f'use another --out, or --overwrite to replace it')


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2) + '\n'
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


# ---------------------------------------------------------------------------------------------
# running


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m{s % 60:02d}s'
    return f'{s // 3600}h{s % 3600 // 60:02d}m'


def _outcome(results: dict | None) -> str:
    if results is None:
        return 'no results'
    if results.get('status') == 'diverged':
        return 'diverged'
    test = results.get('test')
    return f"test {results.get('metric')} {'n/a' if test is None else f'{test:.4f}'}"


class _Progress:
    """The parent's start/end lines: runs done/total, duration and ETA."""

    def __init__(self, total: int, workers: int, log: Callable[[str], None]):
        self.total, self.workers, self.log = total, workers, log
        self.done, self.trained, self.seconds = 0, 0, 0.0

    def start(self, i: int, run: BenchRun) -> None:
        self.log(f'[{i}/{self.total}] {run.cell.name} seed {run.seed}: start')

    def end(self, i: int, run: BenchRun, what: str, seconds: float | None,
            detail: str = '') -> None:
        self.done += 1
        if seconds is not None:
            self.trained += 1
            self.seconds += seconds
        left = self.total - self.done
        eta = ''
        if left and self.trained:
            per_run = self.seconds / self.trained
            eta = f', ETA {_fmt_seconds(per_run * left / min(self.workers, left))}'
        took = f' in {_fmt_seconds(seconds)}' if seconds is not None else ''
        self.log(f'[{i}/{self.total}] {run.cell.name} seed {run.seed}: {what}{took} '
                 f'({self.done}/{self.total} done{eta})' + (f'\n{detail}' if detail else ''))


def _started(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a started run (resumed, not started again)."""
    return any((run_dir / name).exists() for name in ('results.json', 'checkpoints/last.pt'))


def _train_in_process(run: BenchRun, run_dir: Path, progress: bool,
                      log: Callable[[str], None]) -> dict:
    from gtpe.train.loop import TrainingDiverged, train

    try:
        return train(run.config, run_dir, resume=_started(run_dir), progress=progress, log=log)
    except TrainingDiverged as exc:
        log(f'  {exc}')
        return exc.results


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors='replace').splitlines()
    except OSError:
        return '  (no log)'
    return '\n'.join(f'  | {line}' for line in text[-lines:])


def _worker_command(run: BenchRun, run_dir: Path, progress: bool, threads: int,
                    cpus: list[int] | None) -> list[str]:
    spec = {'config': run.config.to_dict(), 'run_dir': str(run_dir.resolve()),
            'resume': _started(run_dir), 'progress': progress, 'threads': threads, 'cpus': cpus}
    return [sys.executable, '-m', 'gtpe.train.bench', json.dumps(spec)]


def _package_path_env() -> dict[str, str]:
    """``PYTHONPATH`` with this gtpe first, so that workers import the same package."""
    root = str(Path(__file__).resolve().parents[2])
    old = os.environ.get('PYTHONPATH')
    return {'PYTHONPATH': root + (os.pathsep + old if old else '')}


def _run_workers(todo: list[tuple[int, BenchRun]], out: Path, workers: int, threads: int,
                 progress: bool, bar: _Progress, after_run: Callable[[], None]
                 ) -> list[tuple[int, str]]:
    """Run ``todo`` in up to ``workers`` processes at a time; returns the failed runs (index,
    folder)."""
    cores = cpu_sets(workers, threads, available_cores()) if hasattr(os, 'sched_setaffinity') \
        else None
    gpus = visible_gpus()
    pending = deque(todo)
    running: dict[int, tuple[subprocess.Popen, int, BenchRun, float, Any]] = {}
    failed: list[tuple[int, str]] = []
    try:
        while pending or running:
            for slot in range(workers):
                if slot in running or not pending:
                    continue
                i, run = pending.popleft()
                run_dir = out / run.rel_dir
                gpu = gpu_for_slot(slot, gpus) if run.config.train.device != 'cpu' else None
                env = {**os.environ, **_package_path_env(), **worker_env(threads, gpu)}
                cmd = _worker_command(run, run_dir, progress, threads,
                                      cores[slot] if cores else None)
                bar.start(i, run)
                logfile = open(run_dir / 'log.txt', 'ab')  # noqa: SIM115 - closed at the end
                try:
                    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT,
                                            env=env, stdin=subprocess.DEVNULL)
                except BaseException:
                    logfile.close()
                    raise
                running[slot] = (proc, i, run, time.perf_counter(), logfile)
            time.sleep(0.05)
            for slot, (proc, i, run, t0, logfile) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[slot]
                logfile.close()
                run_dir = out / run.rel_dir
                seconds = time.perf_counter() - t0
                if rc in (0, _DIVERGED):
                    bar.end(i, run, _outcome(_read_json(run_dir / 'results.json')), seconds)
                    after_run()
                else:
                    failed.append((i, str(run.rel_dir)))
                    bar.end(i, run, f'FAILED (exit status {rc})', seconds,
                            f'  the end of {run_dir / "log.txt"}:\n'
                            + _log_tail(run_dir / 'log.txt'))
    finally:
        for proc, _, _, _, logfile in running.values():  # Ctrl-C or an error: stop the children
            proc.terminate()
        for proc, _, _, _, logfile in running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logfile.close()
    return failed


def _report_module():
    from gtpe.train import report
    return report


def _write_report(out: Path, figures: bool) -> tuple[dict, list[dict], list[dict]]:
    report = _report_module()
    meta, rows = report.collect([out])
    return meta, rows, report.write_report(out, meta, rows, figures=figures)


def run_bench(grid: str | os.PathLike, out: str | os.PathLike, overrides: Iterable[str] = (),
              seeds: Sequence[int] | None = None, workers: int = 1, threads: int | None = None,
              shard: str | tuple[int, int] | None = None, overwrite: bool = False,
              budget_params: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Run the grid's runs (this shard's) into ``out`` and write the report; returns the rows of
    every finished run in ``out`` (:func:`gtpe.train.report.collect`).

    Everything is checked (grid, seeds, budget, shard, workers, ``out``'s bench.json and run
    folders) before anything is written. See the module docstring for the options.

    Raises:
        ConfigError: bad input (nothing written).
        BenchFailed: some runs failed (the others ran and the report is written).
    """
    log = log or functools.partial(print, flush=True)
    overrides = list(overrides)
    out = Path(out)
    report = _report_module()  # before anything is written: a broken install fails here
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f'--workers: expected a positive integer, got {workers!r}')
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f'--threads: expected a positive integer, got {threads!r}')
    shard = parse_shard(shard)
    if seeds is not None:
        seeds = check_seeds(list(seeds), '--seeds')
    if budget_params is not None:
        budget_params = check_budget(budget_params, '--budget-params')
    g = load_grid(grid, overrides)
    runs = plan_runs(g, seeds, budget_params)
    meta = bench_meta(g, runs, overrides, str(grid))
    mine = [(k + 1, r) for k, r in enumerate(runs) if shard is None or k % shard[1] == shard[0] - 1]
    if not overwrite:  # first: the clearer message when the user changed a --set
        _check_run_folders(out, [r for _, r in mine])
    write_meta = _check_bench_json(out, meta, overwrite)

    out.mkdir(parents=True, exist_ok=True)
    if write_meta:
        _write_json(out / 'bench.json', meta)
    from gtpe.train.loop import format_summary
    todo = []
    bar = _Progress(len(mine), workers, log)
    if shard is not None:
        log(f'shard {shard[0]}/{shard[1]}: {len(mine)} of {len(runs)} runs')
    for i, run in mine:
        run_dir = out / run.rel_dir
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cell = _read_json(run_dir / 'cell.json')
        if cell != run.cell_json():
            _write_json(run_dir / 'cell.json', run.cell_json())
        results = _finished_results(run_dir, run.config)
        if results is None:
            todo.append((i, run))
            continue
        what = (f"diverged in epoch {results['diverged']['epoch']}"
                if results.get('status') == 'diverged' else format_summary(results))
        bar.end(i, run, f'already done: {what}', None)

    def after_run() -> None:
        _write_report(out, figures=False)

    failed: list[tuple[int, str]] = []
    if workers == 1:
        import torch
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for i, run in todo:
                bar.start(i, run)
                t0 = time.perf_counter()
                try:
                    results = _train_in_process(run, out / run.rel_dir, progress, log)
                except ConfigError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one run failed: the others go on
                    failed.append((i, str(run.rel_dir)))
                    if os.environ.get('GTPE_DEBUG', '') not in ('', '0'):
                        import traceback
                        traceback.print_exc()
                    bar.end(i, run, f'FAILED: {exc.__class__.__name__}: {exc}',
                            time.perf_counter() - t0)
                    continue
                bar.end(i, run, _outcome(results), time.perf_counter() - t0)
                after_run()
        finally:
            torch.set_num_threads(before)
    elif todo:
        t = threads if threads is not None else max(1, len(available_cores()) // workers)
        log(f'{min(workers, len(todo))} worker processes, {t} torch thread{"s" * (t > 1)} each')
        failed = _run_workers(todo, out, workers, t, progress, bar, after_run)

    meta, rows, summary = _write_report(out, figures=True)
    if rows:
        log('')
        log(report.format_table(meta, summary))
    written = [out / n for n in ('results.csv', 'summary.csv', 'report.md')]
    written += sorted((out / 'figures').glob('*.png'))
    log('wrote ' + ', '.join(str(p) for p in written))
    if failed:
        names = [name for _, name in sorted(failed)]
        where = ' (see log.txt in their folders)' if workers > 1 else ''
        raise BenchFailed(f'{len(names)} of {len(mine)} runs failed: {", ".join(names)}{where}',
                          names)
    return rows


# ---------------------------------------------------------------------------------------------
# worker process entry point: python -m gtpe.train.bench SPEC_JSON


def _cores_text() -> str:
    return ','.join(map(str, available_cores()))


def _worker_main(argv: Sequence[str]) -> int:
    """Train one run described by the JSON ``argv[0]`` (see :func:`_worker_command`): exit
    status 0 when it finished, 3 when it diverged, 1 on any other error (traceback in the log)."""
    spec = json.loads(argv[0])
    if spec.get('cpus') and hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, spec['cpus'])  # before torch starts its threads
    import torch

    from gtpe.train.loop import TrainingDiverged, train
    torch.set_num_threads(int(spec['threads']))
    config = ExperimentConfig.from_dict(spec['config'])
    print(f'gtpe bench worker: {spec["run_dir"]} (pid {os.getpid()}, '
          f'{torch.get_num_threads()} threads, cores {_cores_text()}, '
          f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "unset")})', flush=True)
    try:
        train(config, spec['run_dir'], resume=bool(spec['resume']), progress=bool(spec['progress']),
              log=functools.partial(print, flush=True))
    except TrainingDiverged as exc:
        print(f'gtpe: error: {exc}', flush=True)
        return _DIVERGED
    return 0


if __name__ == '__main__':
    sys.exit(_worker_main(sys.argv[1:]))
