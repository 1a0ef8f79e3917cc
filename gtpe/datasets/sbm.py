"""``sbm-<N>``: node classification on a stochastic block model with ``N`` nodes, generated
locally from a fixed seed (a scale benchmark: same task, any size; Holland, Laskey & Leinhardt,
"Stochastic blockmodels: First steps", Social Networks 1983).

Blocks = classes: ``C = 10`` blocks as equal as possible (sizes ``N // C`` or ``N // C + 1``),
labels a uniform random permutation of ``[0, 1, ..., C-1, 0, 1, ...]``. Edges: exactly
``M = 5 N`` undirected edges (mean degree 10; ``edge_index`` lists both directions, ``10 N``
directed edges, sorted by (source, target); no self-loops, no duplicates). Of them
``M_in = round(M r P_in / (r P_in + P_out))`` join two nodes of the same block and
``M_out = M - M_in`` two of different blocks, where ``P_in``/``P_out`` count the node pairs of
each kind and ``r = p_in / p_out = 9`` (:data:`INTRA_INTER_RATIO`). Each kind is a uniformly
random set of distinct pairs of that kind, so the graph is the planted-partition SBM with edge
probabilities ``p_in = M_in / P_in`` and ``p_out = M_out / P_out`` conditioned on its edge
counts. About half of the edges are intra-block (``M_in / M`` -> ``r / (r + C - 1) = 0.5`` as
``N`` grows; 0.474 at ``N = 100``, 0.4997 at ``N = 10,000``).

Features ``x [N, 16]`` float32: standard normal noise, plus ``1.5`` (:data:`MEAN_SHIFT`) on
feature ``y`` (class mean ``1.5 e_y``; features 10-15 are pure noise). The best prediction from a
node's own features alone (``argmax`` of the first 10 features, Bayes-optimal) is right with
probability ``int phi(z) Phi(z + 1.5)^9 dz = 50.9 %``; the graph adds the rest (chance: 10 %).
Masks: a uniform random permutation of the nodes, the first ``6N // 10`` train, the next
``2N // 10`` val, the rest test (disjoint, covering every node).

``N`` from 100 (:data:`MIN_NODES`) to 10,000,000 (:data:`MAX_NODES`). All randomness comes from
``np.random.SeedSequence(seed, spawn_key=(N,))`` (one child stream each for labels, features,
intra edges, inter edges and masks; :data:`SEED` = 0), so for a given ``N`` the data are the same
bytes on every run and machine (with the same numpy version; the cache key holds it). Vectorised
numpy: ``sbm-1000000`` (10 M directed edges) generates in a few seconds with a peak of well under
1 GB (datasets/README.md); a progress bar over the edges shows from ``N >= 100,000``.

This module imports numpy inside its functions only, so the registry (:mod:`.info`) stays light.
"""
from __future__ import annotations

import numbers
import re

from .errors import DatasetError

__all__ = [
    'AVG_DEGREE',
    'GENERATOR_VERSION',
    'INTRA_INTER_RATIO',
    'LISTED_SIZES',
    'MAX_NODES',
    'MEAN_SHIFT',
    'MIN_NODES',
    'NUM_CLASSES',
    'NUM_FEATURES',
    'SEED',
    'block_pairs',
    'build',
    'cache_params',
    'edge_counts',
    'generate_sbm',
    'parse_name',
    'split_counts',
]

GENERATOR_VERSION = 1       # bump when the generated data change (part of the cache key)
SEED = 0                    # seed of the shipped family
NUM_CLASSES = 10            # blocks = classes
NUM_FEATURES = 16
MEAN_SHIFT = 1.5            # class c: mean MEAN_SHIFT on feature c, 0 elsewhere; noise N(0, 1)
AVG_DEGREE = 10             # directed edges per node (M = AVG_DEGREE * N / 2 undirected edges)
INTRA_INTER_RATIO = 9       # p_in / p_out
MIN_NODES = 100
MAX_NODES = 10_000_000
LISTED_SIZES = (1_000, 10_000, 100_000, 1_000_000)   # the sizes list_datasets() names
PROGRESS_MIN_NODES = 100_000
CHUNK = 1 << 20             # edges drawn per call (fixed: part of the random stream's layout)

_NAME = re.compile(r'sbm-(\d+)([km]?)')
_GRAMMAR = ('sbm-<N> takes a node count N from 100 to 10,000,000 in digits, optionally with '
            'k (thousand) or m (million): sbm-1000, sbm-10k, sbm-1m')


def parse_name(key: str, shown: str | None = None) -> int | None:
    """The node count of a family name (lower case, ``'-'`` separators): ``'sbm-1000'``,
    ``'sbm-10k'``, ``'sbm-1m'``; ``None`` if ``key`` does not start with ``'sbm-'``; a
    :class:`DatasetError` naming the grammar when it does but is malformed or out of range
    (``shown``: the name as the user wrote it, for the message)."""
    if not key.startswith('sbm-'):
        return None
    shown = key if shown is None else shown
    m = _NAME.fullmatch(key)
    if m is None:
        raise DatasetError(f'unknown dataset {shown!r}: {_GRAMMAR}')
    n = int(m.group(1)) * {'': 1, 'k': 1_000, 'm': 1_000_000}[m.group(2)]
    if not MIN_NODES <= n <= MAX_NODES:
        raise DatasetError(f'dataset {shown!r}: {n:,} nodes is out of range; {_GRAMMAR}')
    return n


def _check_n(num_nodes) -> int:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral):
        raise DatasetError(f'sbm: num_nodes must be an integer, got {num_nodes!r}')
    n = int(num_nodes)
    if not MIN_NODES <= n <= MAX_NODES:
        raise DatasetError(f'sbm: num_nodes must be in [{MIN_NODES}, {MAX_NODES:,}], got {n:,}')
    return n


def split_counts(num_nodes: int) -> dict[str, int]:
    """Nodes per mask: ``6N // 10`` train, ``2N // 10`` val, the rest test."""
    n = _check_n(num_nodes)
    train, val = 6 * n // 10, 2 * n // 10
    return {'train': train, 'val': val, 'test': n - train - val}


def block_sizes(num_nodes: int) -> list[int]:
    """Nodes per block (class): ``N // C``, the first ``N % C`` blocks one more."""
    n = _check_n(num_nodes)
    return [n // NUM_CLASSES + (c < n % NUM_CLASSES) for c in range(NUM_CLASSES)]


def block_pairs(num_nodes: int) -> tuple[int, int]:
    """``(P_in, P_out)``: node pairs inside one block and across two blocks."""
    n = _check_n(num_nodes)
    p_in = sum(s * (s - 1) // 2 for s in block_sizes(n))
    return p_in, n * (n - 1) // 2 - p_in


def edge_counts(num_nodes: int) -> tuple[int, int]:
    """``(M_in, M_out)``: undirected intra- and inter-block edges (module docstring; exact
    integer rounding, half up)."""
    n = _check_n(num_nodes)
    m = AVG_DEGREE * n // 2
    p_in, p_out = block_pairs(n)
    den = INTRA_INTER_RATIO * p_in + p_out
    m_in = (2 * m * INTRA_INTER_RATIO * p_in + den) // (2 * den)
    return m_in, m - m_in


def cache_params(num_nodes: int, seed: int = SEED) -> dict:
    """What the generated data depend on (part of the cache key)."""
    return {'generator': 'sbm', 'version': GENERATOR_VERSION, 'seed': seed,
            'num_nodes': _check_n(num_nodes),
            'params': {'classes': NUM_CLASSES, 'features': NUM_FEATURES,
                       'mean_shift': MEAN_SHIFT, 'avg_degree': AVG_DEGREE,
                       'ratio': INTRA_INTER_RATIO, 'chunk': CHUNK}}


def _unique_pairs(rng, count: int, draw, num_nodes: int, bar):
    """``count`` distinct undirected pairs as sorted keys ``min * N + max`` (int64): rounds of
    iid draws from ``draw(rng, k) -> (u, v)``, duplicates dropped, until ``count`` remain (a
    uniform random ``count``-subset of the pairs ``draw`` is uniform over). The first round
    draws ``count`` pairs and moves ``bar`` by them; the (small) rounds that replace duplicates
    do not."""
    import numpy as np

    keys, first = np.empty(0, dtype=np.int64), True
    while keys.size < count:
        parts, need = [keys], count - keys.size
        while need > 0:
            k = min(CHUNK, need)
            u, v = draw(rng, k)
            parts.append(np.minimum(u, v) * num_nodes + np.maximum(u, v))
            need -= k
            if first:
                bar.update(k)
        keys, first = _sorted_unique(np.concatenate(parts)), False
    return keys


def _sorted_unique(a):
    """``np.unique`` of an int64 array by sort and compare (numpy 2.4's ``np.unique`` takes
    about 8x longer here)."""
    import numpy as np

    a.sort()
    keep = np.empty(a.size, dtype=bool)
    keep[:1] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def generate_sbm(num_nodes: int, seed: int = SEED, progress: bool = False):
    """The ``sbm-<num_nodes>`` graph as a PyG ``Data``: ``x [N,16]`` float32, ``edge_index
    [2, 10N]`` int64 (both directions, sorted), ``y [N]`` int64 and ``train_mask``/``val_mask``/
    ``test_mask`` bool ``[N]`` (module docstring). ``seed`` (non-negative) fixes everything."""
    import numpy as np
    import torch
    from torch_geometric.data import Data

    from gtpe._progress import progress_bar

    n = _check_n(num_nodes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f'sbm: seed must be a non-negative integer, got {seed!r}')
    rng_y, rng_x, rng_in, rng_out, rng_split = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed, spawn_key=(n,)).spawn(5))
    C = NUM_CLASSES

    y = rng_y.permutation(np.arange(n, dtype=np.int64) % C)                 # [N]
    x = rng_x.standard_normal((n, NUM_FEATURES), dtype=np.float32)          # [N, F]
    x[np.arange(n), y] += np.float32(MEAN_SHIFT)

    sizes = np.bincount(y, minlength=C).astype(np.int64)                   # [C]
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])                    # [C]
    order = np.argsort(y, kind='stable')       # block c = order[start[c]:start[c] + sizes[c]]
    p_in_c = sizes * (sizes - 1) / 2.0
    w_in = p_in_c / p_in_c.sum()
    w_out = sizes * (n - sizes) / float((sizes * (n - sizes)).sum())

    def draw_intra(rng, k):    # block ~ its pairs, then two distinct members
        b = rng.choice(C, size=k, p=w_in)
        a = rng.integers(0, sizes[b])
        c = rng.integers(0, sizes[b] - 1)
        c += c >= a
        return order[start[b] + a], order[start[b] + c]

    def draw_inter(rng, k):    # block of u ~ n_c (N - n_c), u in it, v outside it
        b = rng.choice(C, size=k, p=w_out)
        u = order[start[b] + rng.integers(0, sizes[b])]
        w = rng.integers(0, n - sizes[b])
        w += (w >= start[b]) * sizes[b]
        return u, order[w]

    m_in, m_out = edge_counts(n)
    with progress_bar(total=m_in + m_out, desc=f'sbm-{n}: edges', unit='edge',
                      enabled=progress and n >= PROGRESS_MIN_NODES) as bar:
        keys = np.concatenate([_unique_pairs(rng_in, m_in, draw_intra, n, bar),
                               _unique_pairs(rng_out, m_out, draw_inter, n, bar)])
        u, v = keys // n, keys % n
        directed = np.concatenate([u * n + v, v * n + u])
        del keys, u, v
        directed.sort()
        edge_index = np.stack([directed // n, directed % n])                # [2, 10N]
        del directed

    perm = rng_split.permutation(n)
    counts = split_counts(n)
    masks, lo = {}, 0
    for split, k in counts.items():
        mask = np.zeros(n, dtype=bool)
        mask[perm[lo:lo + k]] = True
        masks[f'{split}_mask'] = torch.from_numpy(mask)
        lo += k
    return Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(edge_index),
                y=torch.from_numpy(y), **masks)


def build(num_nodes: int, seed: int = SEED, progress: bool = True) -> dict:
    """``sbm-<num_nodes>`` as the collated storage of one graph ``{'splits': {'graph': ...},
    'meta': {...}}`` (``meta``: the edge counts and the probabilities they imply)."""
    from .base import storage_from_list

    data = generate_sbm(num_nodes, seed, progress)
    m_in, m_out = edge_counts(num_nodes)
    p_in, p_out = block_pairs(num_nodes)
    meta = {'num_nodes': int(num_nodes), 'intra_edges': m_in, 'inter_edges': m_out,
            'p_in': m_in / p_in, 'p_out': m_out / p_out}
    return {'splits': {'graph': storage_from_list([data])}, 'meta': meta}
