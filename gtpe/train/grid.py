"""The grid of ``gtpe bench``: grid files, cells, seeds, the parameter budget and shards.

A grid file (``configs/bench/*.yaml``)::

    base: ../zinc/gps+none.yaml      # experiment config, relative to the grid file
    set:                             # overrides applied to every run (optional)
      train.epochs: 30
    grid:                            # cartesian product of the axes (first axis varies slowest)
      pe:                            # axis with named values: label -> overrides
        none: {}
        rwse: {model.pe.rwse: {walk_length: 20, dim: 16}}
      model.attn: [full, linear]     # axis over one key: a list of values
      model:                         # a value may name its own base config (``base:``,
        gcn: {}                      # relative to the grid file; at most one axis per cell)
        sgformer: {base: ../cora/sgformer.yaml, train.lr: 0.01}
    seeds: [0, 1, 2]                 # each cell once per seed (default: the base's train.seed)
    budget: {params: 500000}         # per cell the widest model.channels within the budget
    baselines: {pe: none}            # axis -> label the report compares the others with

``seeds`` (``--seeds`` wins): distinct integers in ``[0, 2**63 - 1]``; run ``s`` of a cell has
``train.seed = s``. Without seeds each cell runs once with its own ``train.seed``.
``budget`` (``--budget-params`` wins): per cell, the largest ``model.channels`` (a multiple of
``model.heads`` when there is attention, larger than the concatenated PE dims) whose model has at
most that many parameters (:func:`channels_for_budget`); no data is loaded for this.
``baselines`` (default: every axis that has a label ``none`` -> ``none``) must name labels of
their axes. Bad input (an unknown key, an empty axis, a bad seed list, budget or shard, a cell
whose smallest model exceeds the budget) is one :class:`ConfigError`.

Every run of a cell has the same *experiment* (:func:`gtpe.train.config.experiment_hash` of its
config: seed and machine keys aside), which identifies the cell in ``bench.json``/``cell.json``.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.config import (
    ExperimentConfig,
    experiment_hash,
    load_config,
    parse_override,
    read_yaml,
)

__all__ = [
    'BenchCell',
    'BenchRun',
    'Grid',
    'channels_for_budget',
    'check_budget',
    'check_seeds',
    'expand_grid',
    'in_shard',
    'load_grid',
    'param_count',
    'parse_shard',
    'plan_runs',
]

_GRID_KEYS = ('base', 'set', 'grid', 'seeds', 'budget', 'baselines')
_SEED_RANGE = '[0, 2**63 - 1]'

Point = tuple[str, list[tuple[str, Any]]]  # (label, overrides)


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
    index: int  # the cell's index in the grid
    seed: int
    channels: int
    budget_params: int | None
    config: ExperimentConfig
    experiment: str  # experiment_hash of config (the same for every seed of the cell)

    @property
    def rel_dir(self) -> Path:
        """The run's folder relative to the bench output folder."""
        return Path('runs') / self.cell.name / f'seed-{self.seed}'

    def cell_json(self) -> dict:
        """The content of the run's ``cell.json``."""
        return {'cell': self.cell.name, 'labels': dict(self.cell.labels), 'seed': self.seed,
                'channels': self.channels, 'budget_params': self.budget_params,
                'experiment': self.experiment}


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
# options


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
        raise ConfigError(f'--shard {i}/{n}: expected i/n with 1 <= i <= n (shards are '
                          f'numbered from 1)')
    return i, n


def in_shard(cell_index: int, shard: tuple[int, int] | None) -> bool:
    """Whether the cell with (0-based) index ``cell_index`` belongs to ``shard = (i, n)``:
    ``cell_index % n == i - 1``, so every seed of a cell runs in the same shard."""
    return shard is None or cell_index % shard[1] == shard[0] - 1


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


def _read_grid_file(grid_path: Path) -> dict:
    data = read_yaml(grid_path)
    if not isinstance(data, dict):
        raise ConfigError(f'{grid_path}: expected a mapping with keys {", ".join(_GRID_KEYS)}')
    for key in data:
        if key not in _GRID_KEYS:
            m = difflib.get_close_matches(str(key), _GRID_KEYS, n=1)
            hint = f" (did you mean '{m[0]}'?)" if m else ''
            raise ConfigError(f'{grid_path}: {key}: unknown key{hint}')
    if 'base' not in data or not isinstance(data['base'], str):
        raise ConfigError(f'{grid_path}: base: missing (path of the base experiment config)')
    return data


def _parse_axes(grid: Any, grid_path: Path) -> list[tuple[str, list[Point]]]:
    """The grid's axes: ``[(axis, [(label, overrides), ...]), ...]`` in file order."""
    if not isinstance(grid, dict):
        raise ConfigError(f'{grid_path}: grid: expected a mapping of axes')
    axes = []
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
    return axes


def _cell_base(combo: tuple[Point, ...], axes: list[tuple[str, list[Point]]], base: Any,
               grid_path: Path) -> tuple[Any, list[tuple[str, Any]]]:
    """The cell's base config (the grid's, or the one an axis value names with ``base:``) and
    the axis values' other overrides."""
    own = [(axis, label, v) for (axis, _), (label, ov) in zip(axes, combo)
           for k, v in ov if k == 'base']
    if len(own) > 1:
        (a1, l1, _), (a2, l2, _) = own[:2]
        raise ConfigError(f'{grid_path}: grid.{a1}.{l1} and grid.{a2}.{l2} both set base; '
                          f'at most one axis value of a cell may name a base config')
    if own:
        axis, label, path = own[0]
        if not isinstance(path, str):
            raise ConfigError(f'{grid_path}: grid.{axis}.{label}.base: expected a path, got '
                              f'{path!r}')
        p = Path(path) if Path(path).is_absolute() else grid_path.parent / path
        if not p.is_file():
            raise ConfigError(f'{grid_path}: grid.{axis}.{label}.base: no such file {p}')
        base = read_yaml(p)
    return base, [kv for _, ov in combo for kv in ov if kv[0] != 'base']


def _make_cells(axes: list[tuple[str, list[Point]]], base: Any, common: list, cli: list,
                grid_path: Path) -> list[BenchCell]:
    """One validated cell per combination of the axes' labels (first axis slowest)."""
    cells: list[BenchCell] = []
    names: dict[str, dict] = {}
    for combo in itertools.product(*[points for _, points in axes]):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combo)}
        cell_base, own = _cell_base(combo, axes, base, grid_path)
        sets = list(common) + own + cli
        try:
            config = load_config(data=cell_base, overrides=sets)
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
    return cells


def _budget_of(budget: Any, grid_path: Path) -> int | None:
    if budget is None:
        return None
    if not isinstance(budget, dict) or set(budget) != {'params'}:
        raise ConfigError(f'{grid_path}: budget: expected {{params: N}}, got {budget!r}')
    return check_budget(budget['params'], f'{grid_path}: budget.params')


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


def load_grid(grid_path: str | os.PathLike, overrides: Iterable[str] = ()) -> Grid:
    """Parse and check a grid file (every cell's config is validated, ``overrides`` are
    ``key=value`` strings applied last, as ``--set``)."""
    grid_path = Path(grid_path)
    data = _read_grid_file(grid_path)
    base_path = Path(data['base'])
    if not base_path.is_absolute():
        base_path = grid_path.parent / base_path
    common = _overrides_of(data.get('set'), f'{grid_path}: set')
    cli = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    axes = _parse_axes(data.get('grid') or {}, grid_path)
    cells = _make_cells(axes, read_yaml(base_path), common, cli, grid_path)
    values = {axis: [label for label, _ in points] for axis, points in axes}
    seeds = data.get('seeds')
    seeds = check_seeds(seeds, f'{grid_path}: seeds') if seeds is not None else None
    return Grid(path=grid_path, axes=list(values), values=values, cells=cells, seeds=seeds,
                budget_params=_budget_of(data.get('budget'), grid_path),
                baselines=_baselines(data.get('baselines'), values, grid_path))


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
    from gtpe.models import model_class
    from gtpe.models.config import GPSModelConfig

    info = dataset_info(dataset)
    config = GPSModelConfig.from_dict(json.loads(model_json))
    with torch.random.fork_rng(devices=[]):  # some layers draw at construction: keep the RNG
        model = model_class(config)(
            config, out_dim=info.num_tasks, node_input=info.node_input,
            node_in_dim=info.node_in_dim, edge_input=info.edge_input,
            edge_in_dim=info.edge_in_dim, graph_level=info.level == 'graph',
            directed=info.directed)
    return sum(p.numel() for p in model.parameters())


def param_count(config: ExperimentConfig, channels: int | None = None) -> int:
    """Parameters of :func:`gtpe.train.loop.build_model` for ``config`` (with ``model.channels =
    channels`` when given); built on the CPU, no data loaded, cached by config."""
    model = config.model.to_dict()
    if channels is not None:
        model['channels'] = channels
    return _param_count(json.dumps(model, sort_keys=True), config.dataset.name)


def _bracket(fits, k_min: int, guess: int) -> tuple[int, int]:
    """``(lo, hi)`` with ``fits(lo)`` and not ``fits(hi)``, galloping from ``guess``."""
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
    return lo, hi


def channels_for_budget(config: ExperimentConfig, budget: int, where: str = 'model') -> int:
    """The largest ``model.channels`` whose model has at most ``budget`` parameters.

    Widths are multiples of ``model.heads`` when the model has attention (any integer without)
    and larger than the concatenated PE dims; the parameter count grows with the width, so a
    search finds it: galloping from a guess (the count grows about quadratically with the width)
    to bracket the answer, then bisection. :class:`ConfigError` (naming ``where``) when even the
    smallest width exceeds the budget."""
    m = config.model
    step = m.heads if m.attn is not None else 1
    # GPSModel and its PyG twin concatenate the PE dims to the node embedding; TokenGT does not
    concat = m.pe.concat_dim if m.arch in ('gps', 'pyg-gps') else 0
    k_min = concat // step + 1  # smallest k with k * step > concat dims

    def fits(k: int) -> bool:
        return param_count(config, k * step) <= budget

    if not fits(k_min):
        raise ConfigError(f'{where}: even the smallest model.channels ({k_min * step}) has '
                          f'{param_count(config, k_min * step):,} parameters, more than the '
                          f'budget of {budget:,}')
    k0 = max(k_min, m.channels // step)
    guess = max(k_min, int(k0 * math.sqrt(budget / param_count(config, k0 * step))))
    lo, hi = _bracket(fits, k_min, guess)
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
    for index, cell in enumerate(grid.cells):
        channels = cell.config.model.channels
        if budget is not None:
            where = f'{grid.path} [{cell.name}]: budget {budget:,} parameters'
            channels = channels_for_budget(cell.config, budget, where)
        cell_seeds = seeds if seeds is not None else [cell.config.train.seed]
        experiment = experiment_hash(_with(cell.config, channels, cell_seeds[0]).to_dict())
        for seed in cell_seeds:
            runs.append(BenchRun(cell=cell, index=index, seed=seed, channels=channels,
                                 budget_params=budget, config=_with(cell.config, channels, seed),
                                 experiment=experiment))
    return runs
