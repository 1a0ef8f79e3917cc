"""Registry of the datasets gtpe can load: static facts (task, metric, input encoders, published
counts; for the generated datasets the counts of the shipped seed) as :class:`DatasetInfo`, and
name resolution with close-match suggestions (no torch import).

Besides the fixed names there is one family, ``sbm-<N>`` (:mod:`gtpe.datasets.sbm`): any ``N``
from 100 to 10,000,000 (``sbm-10k``, ``sbm-1m`` accepted, canonical ``sbm-<digits>``); its
counts follow from ``N``. :func:`list_datasets` names the sizes in ``sbm.LISTED_SIZES``."""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from . import sbm as _sbm
from .errors import DatasetError

__all__ = ['SPLITS', 'DatasetInfo', 'dataset_info', 'generator_args', 'list_datasets',
           'resolve_name']

SPLITS = ('train', 'val', 'test')


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    ``node_input``/``edge_input`` and ``node_in_dim``/``edge_in_dim`` are the arguments of
    :class:`gtpe.models.GPSModel`: ``'embedding'`` (long ids, ``*_in_dim`` = vocabulary size),
    ``'ogb_atom'``/``'ogb_bond'`` (OGB's 9 atom / 3 bond features, ``*_in_dim`` = feature count),
    ``'linear'`` (float features, ``*_in_dim`` = feature count) or ``None`` (no edge features).
    ``num_tasks`` is the model's output dimension (the number of classes for ``'multiclass'``).
    ``level``: ``'graph'`` (one target per graph), ``'node'`` (one big graph, targets per node,
    splits by ``train_mask``/``val_mask``/``test_mask``) or ``'node-inductive'`` (targets per
    node on many graphs; each split is a list of graphs and every node of them is scored).
    ``splits`` holds graphs per split (graph and node-inductive level) or nodes per mask (node
    level). ``directed``: ``edge_index`` lists each directed edge once, in its direction (not
    symmetrised). ``generator``: the :mod:`gtpe.datasets` module that generates the dataset
    locally from a seed (``''``: downloaded, or read from the mirror). ``mirror_dir`` is ``''``
    for generated datasets and for those read only from their official source
    (:attr:`official_only`: ``ogbn-arxiv``, ``ogbn-products``; no offline mirror exists).
    """
    name: str
    level: str                      # 'graph' | 'node' | 'node-inductive'
    task: str                       # 'regression' | 'binary' | 'multilabel' | 'multiclass'
    metric: str                     # 'mae' | 'rocauc' | 'ap' | 'accuracy'
    higher_is_better: bool
    num_tasks: int
    node_input: str
    node_in_dim: int
    edge_input: str | None
    edge_in_dim: int
    num_graphs: int
    splits: dict = field(default_factory=dict)
    num_node_features: int = 0      # columns of data.x
    num_edge_features: int = 0      # columns of data.edge_attr (0: none; 1 for ZINC's [E] ids)
    num_nodes: int = 0              # published total number of nodes over all graphs
    num_edges: int = 0              # published total number of directed edges
    source: str = ''                # the official loader
    mirror_dir: str = ''            # sub-folder of $GTPE_MIRROR
    citation: str = ''
    directed: bool = False          # edge_index holds directed edges, not symmetrised
    generator: str = ''             # gtpe.datasets.<generator> builds it from a seed

    @property
    def official_only(self) -> bool:
        """Downloaded by the official loader even when ``$GTPE_MIRROR`` is set (no mirror)."""
        return not self.generator and not self.mirror_dir

    @property
    def avg_nodes(self) -> float:
        return self.num_nodes / self.num_graphs

    @property
    def avg_edges(self) -> float:
        return self.num_edges / self.num_graphs

    def to_dict(self) -> dict:
        out = asdict(self)
        out['avg_nodes'] = round(self.avg_nodes, 2)
        out['avg_edges'] = round(self.avg_edges, 2)
        return out


_REGISTRY: dict[str, DatasetInfo] = {
    'zinc': DatasetInfo(
        name='zinc', level='graph', task='regression', metric='mae', higher_is_better=False,
        num_tasks=1, node_input='embedding', node_in_dim=28, edge_input='embedding', edge_in_dim=4,
        num_graphs=12_000, splits={'train': 10_000, 'val': 1_000, 'test': 1_000},
        num_node_features=1, num_edge_features=1, num_nodes=277_864, num_edges=597_970,
        source="torch_geometric.datasets.ZINC(root, subset=True, split=...)",
        mirror_dir='zinc_subset',
        citation='Dwivedi et al., Benchmarking Graph Neural Networks, JMLR 2023'),
    'ogbg-molhiv': DatasetInfo(
        name='ogbg-molhiv', level='graph', task='binary', metric='rocauc', higher_is_better=True,
        num_tasks=1, node_input='ogb_atom', node_in_dim=9, edge_input='ogb_bond', edge_in_dim=3,
        num_graphs=41_127, splits={'train': 32_901, 'val': 4_113, 'test': 4_113},
        num_node_features=9, num_edge_features=3, num_nodes=1_049_163, num_edges=2_259_376,
        source="ogb.graphproppred.PygGraphPropPredDataset('ogbg-molhiv') + get_idx_split()",
        mirror_dir='ogbg_molhiv',
        citation='Hu et al., Open Graph Benchmark, NeurIPS 2020'),
    'peptides-func': DatasetInfo(
        name='peptides-func', level='graph', task='multilabel', metric='ap', higher_is_better=True,
        num_tasks=10, node_input='ogb_atom', node_in_dim=9, edge_input='ogb_bond', edge_in_dim=3,
        num_graphs=15_535, splits={'train': 10_873, 'val': 2_331, 'test': 2_331},
        num_node_features=9, num_edge_features=3, num_nodes=2_344_859, num_edges=4_773_974,
        source="torch_geometric.datasets.LRGBDataset(root, 'peptides-func', split=...)",
        mirror_dir='peptides_func',
        citation='Dwivedi et al., Long Range Graph Benchmark, NeurIPS 2022 D&B'),
    'cora': DatasetInfo(
        name='cora', level='node', task='multiclass', metric='accuracy', higher_is_better=True,
        num_tasks=7, node_input='linear', node_in_dim=1_433, edge_input=None, edge_in_dim=0,
        num_graphs=1, splits={'train': 140, 'val': 500, 'test': 1_000},
        num_node_features=1_433, num_edge_features=0, num_nodes=2_708, num_edges=10_556,
        source="torch_geometric.datasets.Planetoid(root, 'Cora')",
        mirror_dir='planetoid',
        citation='Yang et al., Revisiting Semi-Supervised Learning with Graph Embeddings, ICML 2016'),
    'citeseer': DatasetInfo(
        name='citeseer', level='node', task='multiclass', metric='accuracy', higher_is_better=True,
        num_tasks=6, node_input='linear', node_in_dim=3_703, edge_input=None, edge_in_dim=0,
        num_graphs=1, splits={'train': 120, 'val': 500, 'test': 1_000},
        num_node_features=3_703, num_edge_features=0, num_nodes=3_327, num_edges=9_104,
        source="torch_geometric.datasets.Planetoid(root, 'CiteSeer')",
        mirror_dir='planetoid',
        citation='Yang et al., Revisiting Semi-Supervised Learning with Graph Embeddings, ICML 2016'),
    'sorting-networks': DatasetInfo(
        name='sorting-networks', level='graph', task='binary', metric='accuracy',
        higher_is_better=True, num_tasks=1, node_input='sinusoid', node_in_dim=2,
        edge_input=None, edge_in_dim=0,
        num_graphs=5_800, splits={'train': 4_000, 'val': 600, 'test': 1_200},
        num_node_features=2, num_edge_features=0, num_nodes=626_516, num_edges=1_170_911,
        source='generated locally: gtpe.datasets.sorting_networks.build(seed=0)',
        citation='Geisler et al., Transformers Meet Directed Graphs, ICML 2023',
        directed=True, generator='sorting_networks'),
    'dag-distance': DatasetInfo(
        name='dag-distance', level='node-inductive', task='multiclass', metric='accuracy',
        higher_is_better=True, num_tasks=6, node_input='embedding', node_in_dim=2,
        edge_input=None, edge_in_dim=0,
        num_graphs=4_000, splits={'train': 3_000, 'val': 500, 'test': 500},
        num_node_features=1, num_edge_features=0, num_nodes=119_642, num_edges=238_879,
        source='generated locally: gtpe.datasets.dag_distance.build(seed=0)',
        citation='directed distances as in Geisler et al., Transformers Meet Directed Graphs, '
                 'ICML 2023',
        directed=True, generator='dag_distance'),
    'ogbn-arxiv': DatasetInfo(
        name='ogbn-arxiv', level='node', task='multiclass', metric='accuracy',
        higher_is_better=True, num_tasks=40, node_input='linear', node_in_dim=128,
        edge_input=None, edge_in_dim=0,
        num_graphs=1, splits={'train': 90_941, 'val': 29_799, 'test': 48_603},
        num_node_features=128, num_edge_features=0, num_nodes=169_343, num_edges=1_166_243,
        source="ogb.nodeproppred.NodePropPredDataset('ogbn-arxiv') + get_idx_split()",
        citation='Hu et al., Open Graph Benchmark, NeurIPS 2020', directed=True),
    'ogbn-products': DatasetInfo(
        name='ogbn-products', level='node', task='multiclass', metric='accuracy',
        higher_is_better=True, num_tasks=47, node_input='linear', node_in_dim=100,
        edge_input=None, edge_in_dim=0,
        num_graphs=1, splits={'train': 196_615, 'val': 39_323, 'test': 2_213_091},
        num_node_features=100, num_edge_features=0, num_nodes=2_449_029,
        num_edges=123_718_280,     # 61,859,140 undirected edges, both directions (OGB)
        source="ogb.nodeproppred.NodePropPredDataset('ogbn-products') + get_idx_split()",
        citation='Hu et al., Open Graph Benchmark, NeurIPS 2020'),
}

# Accepted spellings (compared after lower-casing and mapping '_' to '-').
_ALIASES = {
    'zinc-subset': 'zinc', 'zinc12k': 'zinc', 'zinc-12k': 'zinc',
    'molhiv': 'ogbg-molhiv', 'hiv': 'ogbg-molhiv',
    'peptidesfunc': 'peptides-func', 'peptides-functional': 'peptides-func',
    'sorting-network': 'sorting-networks', 'sortingnetworks': 'sorting-networks',
    'dag-distances': 'dag-distance', 'dagdistance': 'dag-distance',
    'arxiv': 'ogbn-arxiv', 'products': 'ogbn-products',
}


@lru_cache(maxsize=64)
def _sbm_info(n: int) -> DatasetInfo:
    return DatasetInfo(
        name=f'sbm-{n}', level='node', task='multiclass', metric='accuracy',
        higher_is_better=True, num_tasks=_sbm.NUM_CLASSES, node_input='linear',
        node_in_dim=_sbm.NUM_FEATURES, edge_input=None, edge_in_dim=0,
        num_graphs=1, splits=_sbm.split_counts(n),
        num_node_features=_sbm.NUM_FEATURES, num_edge_features=0, num_nodes=n,
        num_edges=_sbm.AVG_DEGREE * n,
        source=f'generated locally: gtpe.datasets.sbm.build({n}, seed={_sbm.SEED})',
        citation='Holland, Laskey & Leinhardt, Stochastic blockmodels: First steps, '
                 'Social Networks 1983',
        generator='sbm')


def list_datasets() -> list[str]:
    """The datasets' names (:func:`gtpe.datasets.load_dataset` also accepts every other size of
    the ``sbm-<N>`` family and the aliases)."""
    return list(_REGISTRY) + [f'sbm-{n}' for n in _sbm.LISTED_SIZES]


def resolve_name(name: str) -> str:
    """Canonical dataset name, or :class:`DatasetError` suggesting close matches."""
    if not isinstance(name, str):
        raise DatasetError(f'dataset name must be a string, got {type(name).__name__}')
    key = name.strip().lower().replace('_', '-')
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return key
    n = _sbm.parse_name(key, name)            # DatasetError for a malformed sbm-<N>
    if n is not None:
        return f'sbm-{n}'
    candidates = list(_REGISTRY) + list(_ALIASES)
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ''
    raise DatasetError(f'unknown dataset {name!r}{hint} '
                       f"(known datasets: {', '.join(_REGISTRY)}, sbm-<N>)")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (aliases such as ``'molhiv'`` are accepted)."""
    key = resolve_name(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    return _sbm_info(_sbm.parse_name(key))


def generator_args(name: str) -> dict:
    """Keyword arguments of the generator's ``build``/``cache_params`` that pick the dataset
    (``{'num_nodes': N}`` for ``sbm-<N>``; ``{}`` for the others)."""
    key = resolve_name(name)
    return {} if key in _REGISTRY else {'num_nodes': _sbm.parse_name(key)}
