"""Benchmark datasets for gtpe: ZINC (12k), ogbg-molhiv, Peptides-func, Cora, CiteSeer, the large
node-level ogbn-arxiv (directed) and ogbn-products, two directed datasets generated locally from a
seed: ``sorting-networks`` (graph level) and ``dag-distance`` (node level on many graphs,
``level='node-inductive'``), and the generated scale family ``sbm-<N>`` (a stochastic block
model with ``N`` nodes, 100 to 10,000,000).

``load_dataset(name)`` returns ``{'train', 'val', 'test'}`` PyG datasets equal to the official ones
(PyG ``ZINC(subset=True)``, OGB ``ogbg-molhiv``, PyG ``LRGBDataset``, PyG ``Planetoid``, OGB
``NodePropPredDataset``), built from the official sources or, offline, from the mirror folder in
``$GTPE_MIRROR`` (none exists for ``ogbn-*``: OGB's download only), and cached under the
data root (``root=``, else ``$GTPE_DATA_ROOT``, else ``$XDG_CACHE_HOME/gtpe``, default
``~/.cache/gtpe``).

Names are imported on first use, so ``from gtpe.datasets import datasets_table`` (the registry,
``describe``, ``data_root``) loads neither torch nor PyG, RDKit or OGB.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import GraphDataset
    from .catalog import data_root, datasets_table, describe
    from .errors import DatasetError
    from .info import DatasetInfo, dataset_info, list_datasets
    from .load import load_dataset
    from .metrics import evaluate, higher_is_better

__all__ = [
    'DatasetError',
    'DatasetInfo',
    'GraphDataset',
    'data_root',
    'dataset_info',
    'datasets_table',
    'describe',
    'evaluate',
    'higher_is_better',
    'list_datasets',
    'load_dataset',
]

_WHERE = {
    'DatasetError': 'errors',
    'DatasetInfo': 'info',
    'dataset_info': 'info',
    'list_datasets': 'info',
    'GraphDataset': 'base',
    'data_root': 'catalog',
    'datasets_table': 'catalog',
    'describe': 'catalog',
    'load_dataset': 'load',
    'evaluate': 'metrics',
    'higher_is_better': 'metrics',
}


_SUBMODULES = ('base', 'cache', 'catalog', 'dag_distance', 'errors', 'info', 'load', 'metrics',
               'mirror', 'molhiv', 'ogbn', 'peptides', 'planetoid', 'sbm', 'smiles',
               'sorting_networks', 'zinc')


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f'{__name__}.{_WHERE[name]}'), name)
    if name in _SUBMODULES:  # ``gtpe.datasets.metrics.evaluate`` after ``import gtpe.datasets``
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
