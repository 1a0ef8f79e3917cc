"""``dag-distance``: directed distance from a marked source in random DAGs (a node-level task
that needs edge direction; in the spirit of the distance tasks of Geisler et al., "Transformers
Meet Directed Graphs", ICML 2023).

Graph: ``n`` nodes (uniform in ``[min_nodes, max_nodes]``), a random order of the nodes (a
uniform permutation) and, for every pair ``u`` before ``v`` in that order, the edge ``u -> v``
with probability ``p = 2 d / (n - 1)``, so the mean out-degree is ``d`` (``avg_degree``); the
result is acyclic and the order is a topological order (Erdős–Rényi DAG). The **source** is the
first node of the order (in-degree 0). ``x`` long ``[N, 1]``: 1 at the source, else 0;
``edge_index`` lists each directed edge once, sorted by (source, target); no edge features.

Target ``y`` long ``[N]``: the directed shortest-path distance ``d(s, v)`` (hops along the edge
direction) clipped to ``max_distance``, or ``max_distance + 1`` when ``v`` is not reachable
from ``s``: class ``k < max_distance`` = distance ``k``, class ``max_distance`` = distance
``>= max_distance``, class ``max_distance + 1`` = unreachable (``max_distance + 2`` classes).

A direction-blind model sees only the symmetrised graph and cannot tell which neighbours are
downstream. Reference accuracies on the shipped data (node accuracy over all nodes of a split;
:data:`BASELINES`, exact, and :data:`BLIND_BAYES`, estimated; the tests check both against
:func:`baselines` of the generated data):

=========================================================== ======= ======= =======
predictor                                                   train   val     test
=========================================================== ======= ======= =======
chance: majority class ('unreachable' in every split)       52.0 %  51.2 %  52.0 %
undirected BFS (the same rule on the symmetrised graph)     47.7 %  47.7 %  46.7 %
best direction-blind predictor (estimate, see below)        72.9 %  72.0 %  72.1 %
directed BFS (defines the labels)                           100 %   100 %   100 %
=========================================================== ======= ======= =======

Undirected BFS is what an exact but direction-blind algorithm predicts; it is not an upper
bound for a learned direction-blind model. The best any direction-blind model can do is the
mode of each node's class distribution given the symmetrised graph and the source
(:func:`direction_blind_posterior`): about 72 % (:data:`BLIND_BAYES`, a Monte-Carlo estimate
with 200 orders per graph; two estimation seeds differ by < 0.5 points; the noisy mode slightly
underestimates the Bayes accuracy, and the splits are finite): a model above about 74 % uses
edge direction.

Shipped dataset (seed 0, ``avg_degree=2``, ``max_distance=4``, 6 classes): 3,000 / 500 / 500
graphs of 20-40 nodes (mean 29.9) in train / val / test, all from the same distribution; class
rates (distance 0, 1, 2, 3, >= 4, unreachable) in train: 3.4, 13.4, 18.4, 9.5, 3.2, 52.0 %.
Generation takes about 1 s (0.75-0.8 s on the 2-core development machine; 1.7-6 s while a
benchmark kept both cores busy).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .errors import DatasetError

__all__ = [
    'BASELINES',
    'BLIND_BAYES',
    'GENERATOR_VERSION',
    'MAX_DISTANCE',
    'NUM_CLASSES',
    'PARAMS',
    'SEED',
    'SPLIT_COUNTS',
    'baselines',
    'bfs_distances',
    'build',
    'cache_params',
    'direction_blind_posterior',
    'distance_labels',
    'generate_dag_distance',
    'random_dag',
]

GENERATOR_VERSION = 1   # bump when the generated data change (part of the cache key)
SEED = 0                # seed of the shipped dataset
MAX_DISTANCE = 4
NUM_CLASSES = MAX_DISTANCE + 2
# arguments of generate_dag_distance shared by the splits, and graphs per split (stream k = split k)
PARAMS: dict = {'min_nodes': 20, 'max_nodes': 40, 'avg_degree': 2.0, 'max_distance': MAX_DISTANCE}
SPLIT_COUNTS: dict[str, int] = {'train': 3000, 'val': 500, 'test': 500}
# Monte-Carlo estimate of the best direction-blind accuracy (baselines(blind_samples=200), mean
# of seeds 0 and 1)
BLIND_BAYES: dict[str, float] = {'train': 0.729, 'val': 0.720, 'test': 0.721}
# exact accuracies of two reference predictors on the shipped splits (rounded to 6 decimals)
BASELINES: dict[str, dict[str, float]] = {
    'train': {'majority': 0.520102, 'undirected_bfs': 0.476679},
    'val': {'majority': 0.511835, 'undirected_bfs': 0.477484},
    'test': {'majority': 0.520394, 'undirected_bfs': 0.466764},
}


def _check_int(value, what: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f'dag-distance: {what} must be an integer, got {value!r}')
    if value < low:
        raise DatasetError(f'dag-distance: {what} must be >= {low}, got {value}')
    return int(value)


def random_dag(num_nodes: int, avg_degree: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, E], order [N])``: an Erdős–Rényi DAG (see the module docstring) whose
    topological order is ``order``; edges sorted by (source, target)."""
    n = num_nodes
    order = rng.permutation(n)
    a, b = np.triu_indices(n, 1)                      # positions a < b in the order
    keep = rng.random(len(a)) < 2.0 * avg_degree / (n - 1)
    edge_index = np.stack([order[a[keep]], order[b[keep]]])
    perm = np.lexsort((edge_index[1], edge_index[0]))
    return edge_index[:, perm].astype(np.int64), order


def bfs_distances(edge_index: np.ndarray, num_nodes: int, source: int) -> np.ndarray:
    """Hop distance from ``source`` along the edges ``edge_index[0] -> edge_index[1]``; -1 where
    unreachable (breadth-first search)."""
    out: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in np.asarray(edge_index).T.tolist():
        out[u].append(v)
    dist = [-1] * num_nodes
    dist[source] = 0
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in out[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return np.array(dist, dtype=np.int64)


def distance_labels(edge_index: np.ndarray, num_nodes: int, source: int,
                    max_distance: int = MAX_DISTANCE, directed: bool = True) -> np.ndarray:
    """The class of every node (module docstring); ``directed=False``: the same rule on the
    symmetrised graph (the undirected-BFS baseline)."""
    edge_index = np.asarray(edge_index)
    if not directed:
        edge_index = np.concatenate([edge_index, edge_index[::-1]], axis=1)
    d = bfs_distances(edge_index, num_nodes, source)
    return np.where(d < 0, max_distance + 1, np.minimum(d, max_distance))


def generate_dag_distance(count: int, seed: int, *, min_nodes: int = PARAMS['min_nodes'],
                          max_nodes: int = PARAMS['max_nodes'],
                          avg_degree: float = PARAMS['avg_degree'],
                          max_distance: int = MAX_DISTANCE, stream: int = 0) -> list:
    """``count`` random DAGs with their distance labels as PyG ``Data`` (``x [N,1]`` long,
    ``edge_index [2,E]``, ``y [N]`` long; see the module docstring).

    ``seed`` (non-negative) and ``stream`` fix the result
    (``np.random.SeedSequence(seed, spawn_key=(stream,))``; no global random state).
    Raises :class:`DatasetError` for impossible parameters: ``count < 1``, ``min_nodes < 2``,
    ``min_nodes > max_nodes``, ``avg_degree`` not in ``(0, (min_nodes - 1) / 2]`` (the edge
    probability must be at most 1), ``max_distance < 1``, a negative seed.
    """
    import torch
    from torch_geometric.data import Data

    count = _check_int(count, 'count', 1)
    seed = _check_int(seed, 'seed', 0)
    stream = _check_int(stream, 'stream', 0)
    min_nodes = _check_int(min_nodes, 'min_nodes', 2)
    max_nodes = _check_int(max_nodes, 'max_nodes', 2)
    max_distance = _check_int(max_distance, 'max_distance', 1)
    if min_nodes > max_nodes:
        raise DatasetError(f'dag-distance: min_nodes ({min_nodes}) > max_nodes ({max_nodes})')
    try:
        avg_degree = float(avg_degree)
    except (TypeError, ValueError):
        raise DatasetError(f'dag-distance: avg_degree must be a number, got {avg_degree!r}') \
            from None
    if not 0 < avg_degree <= (min_nodes - 1) / 2:
        raise DatasetError(f'dag-distance: avg_degree must be in (0, {(min_nodes - 1) / 2:g}] '
                           f'((min_nodes - 1) / 2: an edge probability <= 1), got {avg_degree:g}')
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    graphs = []
    for _ in range(count):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        edge_index, order = random_dag(n, avg_degree, rng)
        source = int(order[0])
        x = torch.zeros(n, 1, dtype=torch.long)
        x[source] = 1
        y = distance_labels(edge_index, n, source, max_distance)
        graphs.append(Data(x=x, edge_index=torch.from_numpy(edge_index),
                           y=torch.from_numpy(y)))
    return graphs


def direction_blind_posterior(edge_index: np.ndarray, num_nodes: int, source: int,
                              samples: int, rng: np.random.Generator,
                              max_distance: int = MAX_DISTANCE) -> np.ndarray:
    """``[N, max_distance + 2]``: Monte-Carlo estimate (``samples`` draws) of each node's class
    distribution given only the symmetrised graph and the source.

    Under the generator every order with the source first is equally likely given the
    symmetrised graph (each node pair's edge probability does not depend on the order), and an
    order fixes every edge's direction (earlier -> later); so the posterior is sampled by drawing
    such orders uniformly. Its per-node mode is the best any direction-blind predictor can do
    (Bayes-optimal)."""
    edge_index = np.sort(np.asarray(edge_index), axis=0)      # forget the direction
    a, b = edge_index
    others = np.array([v for v in range(num_nodes) if v != source], dtype=np.int64)
    votes = np.zeros((num_nodes, max_distance + 2))
    pos = np.empty(num_nodes, dtype=np.int64)
    rows = np.arange(num_nodes)
    for _ in range(samples):
        pos[source] = 0
        pos[rng.permutation(others)] = np.arange(1, num_nodes)
        forward = pos[a] < pos[b]
        oriented = np.stack([np.where(forward, a, b), np.where(forward, b, a)])
        votes[rows, distance_labels(oriented, num_nodes, source, max_distance)] += 1
    return votes / samples


def baselines(graphs, max_distance: int = MAX_DISTANCE, blind_samples: int = 0,
              seed: int = 0) -> dict:
    """Reference accuracies on ``graphs`` (node-level, over all their nodes): ``majority``
    (rate of the most frequent class), ``majority_class``, ``undirected_bfs``
    (:func:`distance_labels` with ``directed=False`` against ``y``) and ``class_rates``, all
    exact; with ``blind_samples > 0`` also ``direction_blind_bayes``, the accuracy of the mode of
    :func:`direction_blind_posterior` (``blind_samples`` orders per graph, ``seed``): an estimate
    of the best accuracy a direction-blind predictor can reach."""
    rng = np.random.default_rng(seed)
    ys, hits, blind = [], 0, 0
    for g in graphs:
        y = g.y.numpy()
        source = int(g.x.view(-1).argmax())
        edge_index = g.edge_index.numpy()
        und = distance_labels(edge_index, g.num_nodes, source, max_distance, directed=False)
        hits += int((und == y).sum())
        if blind_samples > 0:
            post = direction_blind_posterior(edge_index, g.num_nodes, source, blind_samples, rng,
                                             max_distance)
            blind += int((post.argmax(1) == y).sum())
        ys.append(y)
    y = np.concatenate(ys)
    counts = np.bincount(y, minlength=max_distance + 2)
    out = {'num_nodes': int(len(y)), 'majority_class': int(counts.argmax()),
           'majority': float(counts.max() / len(y)), 'undirected_bfs': hits / len(y),
           'class_rates': [float(c / len(y)) for c in counts]}
    if blind_samples > 0:
        out['direction_blind_bayes'] = blind / len(y)
    return out


def cache_params(seed: int = SEED) -> dict:
    """What the generated data depend on (part of the cache key)."""
    return {'generator': 'dag_distance', 'version': GENERATOR_VERSION, 'seed': seed,
            'params': dict(PARAMS), 'splits': dict(SPLIT_COUNTS)}


def build(seed: int = SEED, progress: bool = True) -> dict:
    """The shipped splits (:data:`SPLIT_COUNTS` graphs with :data:`PARAMS`, split ``k`` on stream
    ``k``) as collated storages ``{'splits': {split: {'data', 'slices'}}, 'meta': {...}}``;
    ``meta['baselines']`` holds :func:`baselines` of every split."""
    from gtpe._progress import heartbeat

    from .base import storage_from_list

    splits, meta = {}, {'baselines': {}}
    for k, (split, count) in enumerate(SPLIT_COUNTS.items()):
        with heartbeat(f'dag-distance: generating {split}', progress):
            graphs = generate_dag_distance(count, seed, stream=k, **PARAMS)
            meta['baselines'][split] = baselines(graphs)
            splits[split] = storage_from_list(graphs)
    return {'splits': splits, 'meta': meta}
