"""Benchmark datasets for gtpe: ZINC (12k), ogbg-molhiv, Peptides-func, Cora, CiteSeer.

``load_dataset(name)`` returns ``{'train', 'val', 'test'}`` PyG datasets equal to the official ones
(PyG ``ZINC(subset=True)``, OGB ``ogbg-molhiv``, PyG ``LRGBDataset``, PyG ``Planetoid``), built from
the official sources or, offline, from the mirror folder in ``$GTPE_MIRROR``, and cached under the
data root (``$GTPE_DATA_ROOT`` or ``./datasets``).
"""
from .base import GraphDataset
from .errors import DatasetError
from .info import DatasetInfo, dataset_info, list_datasets
from .load import data_root, datasets_table, describe, load_dataset
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
