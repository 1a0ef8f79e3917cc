"""Experiment configuration: dataclasses that mirror the YAML files 1:1.

An experiment YAML has three sections::

    dataset: {name: zinc, root: null, limit: null}
    model:   {channels: 64, num_layers: 4, local: gine, attn: full, pe: {rwse: {walk_length: 20}}}
    train:   {epochs: 100, batch_size: 32, lr: 1.0e-3, scheduler: cosine, warmup_epochs: 5}

Node-level datasets (one graph with ``train_mask``/``val_mask``/``test_mask``: Cora, CiteSeer,
ogbn-*, sbm-*) train full-batch by default; ``train.loader: neighbor`` with ``train.fanouts``
samples the neighbourhoods of ``batch_size`` training nodes per step instead.
``train.patience`` stops any run early. Options that only make sense for one kind of dataset
are errors on the other (:func:`check_dataset_options`, called by :func:`load_config`).

``model`` is :class:`gtpe.models.config.GPSModelConfig`. Unknown keys, wrong types and missing
required keys raise :class:`ConfigError` naming the full key path (with a close match suggested).
Overrides ``key.path=value`` (``gtpe train --set``) are parsed as YAML scalars, so
``--set model.pe.rwse.dim=8`` sets an int and ``--set model.pe.rwse=null`` removes the encoding.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gtpe.models.config import OMIT_IF_DEFAULT, GPSModelConfig
from gtpe.train._dataclass_io import ConfigError, from_dict, set_path, to_dict

Overrides = Iterable[str | tuple[str, Any]] | Mapping[str, Any] | str

__all__ = [
    'MACHINE_KEYS',
    'ConfigError',
    'DatasetConfig',
    'ExperimentConfig',
    'TrainConfig',
    'apply_overrides',
    'check_dataset_options',
    'experiment_hash',
    'load_config',
    'parse_override',
    'read_yaml',
]


@dataclass
class DatasetConfig:
    """Which dataset to train on.

    Args:
        name: a name from ``gtpe datasets`` (e.g. ``zinc``).
        root: data root (default: ``$GTPE_DATA_ROOT`` or ``./datasets``).
        limit: optional cap on the number of graphs per split (first ``limit`` graphs of each
            split; for smoke runs and tests; on node-inductive datasets it counts graphs too).
            An error for node-level datasets (one graph: nothing to cap).
        normalize_features: divide each node's float features by their sum (rows summing to
            1, zero rows kept; PyG's ``NormalizeFeatures``, the preprocessing of Kipf &
            Welling's Planetoid experiments). Only for datasets with float node features
            (``node_input: linear``).
    """
    name: str
    root: str | None = None
    limit: int | None = None
    normalize_features: bool = field(default=False, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self):
        if not self.name:
            raise ValueError('name must not be empty')
        if self.limit is not None and self.limit < 1:
            raise ValueError(f'limit must be a positive integer or null, got {self.limit}')


@dataclass
class TrainConfig:
    """Optimisation settings.

    The learning rate follows ``scheduler``: ``'cosine'`` warms up linearly over
    ``W`` epochs (lr * (e+1)/(W+1) in epoch e) and then decays with a half cosine from ``lr`` to
    ``min_lr`` over the remaining epochs (stepped once per epoch, as GraphGPS); ``'none'`` keeps
    ``lr`` constant. ``W = min(warmup_epochs, epochs // 5)`` (:attr:`effective_warmup_epochs`):
    warmup never takes more than a fifth of the run, so a short run (``--set train.epochs=3``:
    no warmup) trains at ``lr`` instead of staying in warmup; ``gtpe train`` prints a one-line
    notice (:meth:`warmup_notice`) when it caps.

    ``seed`` (an integer in ``[0, 2**63 - 1]``) seeds python, numpy and torch; the training order
    of epoch ``e`` is drawn from its own generator seeded with ``(seed, e)``. On the CPU, runs
    (and resumed runs) are bitwise reproducible; on CUDA, scatter/index_add use atomics, so set
    ``deterministic: true`` (``torch.use_deterministic_algorithms``, warn-only; also export
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) for reproducible GPU runs at some speed cost.
    ``batch_size`` is per process under ``torchrun``.

    Node-level datasets (one graph with masks): ``loader`` is ``'full'`` (the default there: one
    step per epoch on the whole graph, loss on the training mask) or ``'neighbor'``: steps over
    mini-batches of ``batch_size`` training nodes, each with its sampled neighbourhood,
    ``fanouts[l]`` neighbours per node at hop ``l + 1`` (one per layer, ``-1``: all), uniformly
    without replacement (PyG ``NodeLoader`` semantics: the sampled edges point towards the
    seeds). Evaluation is full-batch when the graph fits in memory, else neighbour-sampled over
    the evaluated nodes with the same fan-outs (a fixed sample). Both keys are errors on
    graph-level datasets, which keep batching ``batch_size`` graphs.

    ``patience``: stop when the validation metric has not improved for ``patience`` epochs
    (``null``: train all ``epochs``); the best-validation epoch is what ``results.json``
    reports (its ``test``) and ``checkpoints/best.pt`` holds.
    """
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal['adamw', 'adam'] = 'adamw'
    scheduler: Literal['cosine', 'none'] = 'cosine'
    warmup_epochs: int = 5
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    device: Literal['auto', 'cpu', 'cuda'] = 'auto'
    num_workers: int = 0
    deterministic: bool = False
    loader: Literal['full', 'neighbor'] | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    fanouts: list[int] | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    patience: int | None = field(default=None, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch_size must be >= 1, got {self.batch_size}'),
            (0 < self.lr < math.inf, f'lr must be finite and > 0, got {self.lr}'),
            (0 <= self.weight_decay < math.inf,
             f'weight_decay must be finite and >= 0, got {self.weight_decay}'),
            (self.warmup_epochs >= 0, f'warmup_epochs must be >= 0, got {self.warmup_epochs}'),
            (0 <= self.min_lr <= self.lr, f'min_lr must be in [0, lr], got {self.min_lr}'),
            (self.grad_clip is None or 0 < self.grad_clip < math.inf,
             f'grad_clip must be finite and > 0, or null, got {self.grad_clip}'),
            (self.num_workers >= 0, f'num_workers must be >= 0, got {self.num_workers}'),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                not 0 <= self.seed < 2**63:  # the range torch.manual_seed and numpy accept
            raise ValueError(f'TrainConfig.seed must be an integer in [0, 2**63 - 1], '
                             f'got {self.seed!r}')
        if self.patience is not None and (isinstance(self.patience, bool)
                                          or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f'TrainConfig.patience must be a positive integer (epochs without '
                             f'a better validation metric) or null, got {self.patience!r}')
        if self.fanouts is not None:
            self.fanouts = list(self.fanouts)
            if not self.fanouts or any(isinstance(k, bool) or not isinstance(k, int)
                                       or not (k >= 1 or k == -1) for k in self.fanouts):
                raise ValueError(f'TrainConfig.fanouts must be a list of neighbour counts, one '
                                 f'per layer, each >= 1 or -1 (all), got {self.fanouts!r}')
        if self.loader == 'neighbor' and self.fanouts is None:
            raise ValueError("TrainConfig.loader: 'neighbor' needs train.fanouts, one neighbour "
                             "count per layer (e.g. [10, 10]; -1 takes all neighbours)")
        if self.fanouts is not None and self.loader != 'neighbor':
            raise ValueError(f"TrainConfig.fanouts: only used with train.loader: neighbor (got "
                             f"loader {self.loader or 'null'}); set train.loader: neighbor or "
                             f"remove train.fanouts")

    @property
    def effective_warmup_epochs(self) -> int:
        """Warmup epochs actually used: ``min(warmup_epochs, epochs // 5)``."""
        return min(self.warmup_epochs, self.epochs // 5)

    def warmup_notice(self) -> str | None:
        """The line ``gtpe train`` prints when the cosine warmup is capped, else ``None``."""
        if self.scheduler != 'cosine' or self.effective_warmup_epochs == self.warmup_epochs:
            return None
        return (f'train.warmup_epochs={self.warmup_epochs} capped to '
                f'{self.effective_warmup_epochs} (at most epochs // 5 = {self.epochs // 5} of '
                f'{self.epochs} epochs)')


@dataclass
class ExperimentConfig:
    """A whole experiment: ``dataset``, ``model`` and ``train`` sections."""
    dataset: DatasetConfig
    model: GPSModelConfig = field(default_factory=GPSModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        fanouts = self.train.fanouts
        if fanouts is None:
            return
        from gtpe.models import model_class  # a model class may sample other hops than layers

        hops = getattr(model_class(self.model), 'fanout_hops', None)
        if hops is not None:
            if len(fanouts) != hops(self.model):
                raise ConfigError(f'train.fanouts: {len(fanouts)} fan-outs {fanouts} for '
                                  f'model.arch = {self.model.arch}, which samples '
                                  f'{hops(self.model)} hops; give one per hop')
        elif len(fanouts) != self.model.num_layers:
            raise ConfigError(f'train.fanouts: {len(fanouts)} fan-outs {fanouts} for '
                              f'model.num_layers = {self.model.num_layers}; give one per layer')

    @classmethod
    def from_dict(cls, data: Any) -> ExperimentConfig:
        """Build from plain (YAML) data; raises :class:`ConfigError` on any problem."""
        if not isinstance(data, dict):
            raise ConfigError('config: expected a mapping with sections dataset, model, train')
        return from_dict(cls, data)

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-able) that :meth:`from_dict` reads back to an equal config."""
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file; missing/unreadable files and syntax errors raise :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f'{path}: no such file') from None
    except IsADirectoryError:
        raise ConfigError(f'{path}: is a directory, expected a YAML file') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'{path}: cannot read ({exc.__class__.__name__}: {exc})') from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark else ''
        problem = getattr(exc, 'problem', None) or str(exc).splitlines()[0]
        raise ConfigError(f'{path}: invalid YAML{where}: {problem}') from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.pe.rwse.dim=8'`` -> ``('model.pe.rwse.dim', 8)`` (value parsed as YAML)."""
    key, sep, raw = text.partition('=')
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f'--set {text!r}: expected key=value (e.g. model.channels=64)')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f'--set {text!r}: value is not valid YAML') from None
    return key, value


def _override_items(overrides: Any) -> list:
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    return list(overrides)


def apply_overrides(data: dict, overrides: Overrides) -> dict:
    """Apply overrides to plain config data in place (and return it): ``key=value`` strings,
    ``(key, value)`` pairs, or a mapping ``{key: value}``."""
    for item in _override_items(overrides):
        key, value = parse_override(item) if isinstance(item, str) else item
        set_path(data, key, value)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Overrides = (),
                data: dict | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from a YAML file (or plain ``data``) plus overrides.

    ``overrides`` are applied in order, like ``gtpe train --set``: ``['train.epochs=3']``
    (values parsed as YAML), ``[('train.epochs', 3)]``, ``{'train.epochs': 3}`` or a single
    ``'train.epochs=3'``. Also checks that ``dataset.name`` is a known dataset.
    """
    if data is None:
        data = read_yaml(path) if path is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path or "config"}: expected a mapping with sections dataset, model, '
                          f'train, got {type(data).__name__}')
    data = apply_overrides(_deepcopy(data), overrides)
    config = ExperimentConfig.from_dict(data)
    _check_dataset_name(config.dataset.name)
    check_dataset_options(config)
    return config


def check_dataset_options(config: ExperimentConfig, info: Any = None) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for an option that does not apply
    to the dataset's kind: ``dataset.limit`` on a node-level dataset (one graph),
    ``train.loader`` / ``train.fanouts`` on a graph-level or node-inductive one (many graphs),
    ``dataset.normalize_features`` without float node features. ``info``: the dataset's
    :class:`~gtpe.datasets.DatasetInfo` (looked up by name when not given)."""
    if info is None:
        from gtpe.datasets import dataset_info
        info = dataset_info(config.dataset.name)
    dc, tc = config.dataset, config.train
    if info.level == 'node' and dc.limit is not None:
        raise ConfigError(f'dataset.limit: {info.name} is a node-level dataset (one graph with '
                          f'train/val/test masks), there are no graphs to limit; remove '
                          f'dataset.limit')
    if info.level != 'node':
        kind = 'graph-level' if info.level == 'graph' else 'node-inductive (many graphs)'
        for key, value in (('loader', tc.loader), ('fanouts', tc.fanouts)):
            if value is not None:
                raise ConfigError(f'train.{key}: only for node-level datasets (one graph with '
                                  f'masks); {info.name} is {kind} and trains on batches of '
                                  f'train.batch_size graphs; remove train.{key}')
    if dc.normalize_features and info.node_input != 'linear':
        raise ConfigError(f'dataset.normalize_features: {info.name} has no float node features '
                          f'(node_input {info.node_input!r}); remove it')


def _check_dataset_name(name: str) -> None:
    """:class:`ConfigError` for a name :func:`gtpe.datasets.load_dataset` would not accept (it
    accepts the listed names, their aliases and every size of the ``sbm-<N>`` family)."""
    try:
        from gtpe.datasets.errors import DatasetError
        from gtpe.datasets.info import resolve_name
    except ImportError:  # pragma: no cover - datasets package unavailable
        return
    try:
        resolve_name(name)
    except DatasetError as e:
        raise ConfigError(f'dataset.name: {e}') from None


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def config_equal_except(a: dict, b: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Dotted key paths where the plain configs ``a`` and ``b`` differ (``ignore``d paths skipped)."""
    ignore = set(ignore)
    diffs: list[str] = []

    def walk(x, y, path):
        if path in ignore:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k), y.get(k), f'{path}.{k}' if path else str(k))
        elif x != y:
            diffs.append(path or 'config')

    walk(a, b, '')
    return diffs


# Config keys that do not change what a run computes, only where or how fast it runs: a bench
# run (or shard) made with other values of these is the same experiment.
MACHINE_KEYS = ('train.device', 'train.num_workers', 'dataset.root')


def experiment_hash(config: dict, ignore: Iterable[str] = ('train.seed',)) -> str:
    """sha256 (hex, 16 characters) of the plain config ``config`` without the ``ignore``d dotted
    paths and :data:`MACHINE_KEYS`: two configs get the same hash exactly when
    :func:`config_equal_except` finds no difference outside those paths (``gtpe bench`` uses it
    to tell whether runs of a cell, from any seed, shard or folder, belong to one experiment)."""
    import hashlib
    import json

    skip = set(ignore) | set(MACHINE_KEYS)

    def strip(x, path):
        if isinstance(x, dict):
            return {str(k): strip(v, f'{path}.{k}' if path else str(k)) for k, v in x.items()
                    if (f'{path}.{k}' if path else str(k)) not in skip}
        return x

    text = json.dumps(strip(config, ''), sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

