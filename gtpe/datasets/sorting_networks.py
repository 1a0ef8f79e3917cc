"""``sorting-networks``: does a comparator network sort every input? (Geisler et al.,
"Transformers Meet Directed Graphs", ICML 2023, section 5; their generator is
``script_generate_sorting_network_np.py`` in google-deepmind/digraph_transformer; this is an
independent implementation of the same construction.)

A comparator ``(i, j)`` with ``i < j`` on ``n`` wires puts the minimum of its two values on wire
``i`` and the maximum on wire ``j``. A network (a sequence of comparators) is a *sorting network*
iff it sorts every input; by the 0-1 principle (Knuth, TAOCP 5.3.4) it suffices to check the
``2^n`` inputs in ``{0, 1}^n``. Each 0-1 input is an integer bitmask (bit ``w`` = the value on wire
``w``) and comparator ``(i, j)`` maps bits ``(b_i, b_j)`` to ``(b_i AND b_j, b_i OR b_j)``, applied
with numpy to all distinct current outputs at once. A network sorts iff every output is sorted,
i.e. exactly ``n + 1`` distinct outputs remain (the sorted vectors, ``k`` ones on the top ``k``
wires, ``k = 0..n``).

Construction (as the paper's generator):

- a **positive** on ``n`` wires: draw comparators ``(i, j)``, ``i < j``, uniformly among the wires
  that are still unsorted for some input (never the same comparator twice in a row) until the
  network sorts; a network that needs more than ``max_comparators`` (512) is discarded and drawn
  again;
- its **hard negative**: the same network without its last comparator. It does not sort (the
  positive is stopped at the first comparator after which it sorts), and it differs from a
  sorting network by one comparator;
- val/test (``reverse=True``) also hold the **reversed** network (the comparators in reverse
  order), labelled by brute force (:func:`sorts`).

Train uses 7-11 wires, val 12 and test 13-16 (out-of-distribution sizes, as the paper); the
networks are spread evenly over the wire counts of a split (the paper draws one count per batch).

Graph (one per network): node ``t`` = the ``t``-th comparator, ``x[t] = (i, j)`` long ``[N, 2]``
(no position index: the paper's ``exclude_canonical``), a directed edge from the previous
comparator on wire ``i`` to ``t`` and one from the previous comparator on wire ``j`` to ``t``;
when both are the same comparator there is **one** edge (the paper's graphs keep two parallel
edges). No edge features. ``y`` float ``[1]``: 1.0 for a sorting network, 0.0 otherwise.

Shipped dataset (seed 0; the counts are :data:`SPLIT_STATS`, checked by the tests):

- train: 2,000 networks (400 each on 7, 8, 9, 10, 11 wires) -> 4,000 graphs, 2,000 positive
  (50.0 %), 19-213 nodes per graph (mean 69.9);
- val: 200 networks on 12 wires -> 600 graphs, 200 positive (33.3 %), 87-210 nodes (mean 139.5);
- test: 400 networks (100 each on 13, 14, 15, 16 wires) -> 1,200 graphs, 400 positive (33.3 %),
  114-392 nodes (mean 219.5).

None of the 600 reversed networks sorts, so val/test are one third positive. Chance level
(majority class): 50.0 % / 66.7 % / 66.7 %; brute force (:func:`sorts`) is exact (100 %).
Generation takes about 6 s (measured 5.6-6.1 s on one core of the 2-core development machine;
8.5-11 s while a benchmark kept both cores busy).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DatasetError

__all__ = [
    'GENERATOR_VERSION',
    'MAX_COMPARATORS',
    'MAX_TRIES',
    'MAX_WIRES',
    'SEED',
    'SPLIT_PARAMS',
    'SPLIT_STATS',
    'build',
    'cache_params',
    'generate_sorting_networks',
    'network_edges',
    'random_sorting_network',
    'sorts',
]

GENERATOR_VERSION = 1   # bump when the generated data change (part of the cache key)
SEED = 0                # seed of the shipped dataset
MAX_COMPARATORS = 512   # the paper's limit on the comparators of one network
MAX_WIRES = 20          # 2^20 inputs: memory and time stay small
MAX_TRIES = 1000        # networks over max_comparators in a row before giving up

# what the shipped splits hold (graphs, positives, nodes, edges)
SPLIT_STATS: dict[str, dict[str, int]] = {
    'train': {'graphs': 4000, 'positives': 2000, 'nodes': 279_446, 'edges': 512_162},
    'val': {'graphs': 600, 'positives': 200, 'nodes': 83_674, 'edges': 157_331},
    'test': {'graphs': 1200, 'positives': 400, 'nodes': 263_396, 'edges': 501_418},
}
# split -> arguments of generate_sorting_networks (besides seed); stream k = index of the split
SPLIT_PARAMS: dict[str, dict] = {
    'train': {'num_wires': (7, 8, 9, 10, 11), 'count': 2000, 'reverse': False},
    'val': {'num_wires': (12,), 'count': 200, 'reverse': True},
    'test': {'num_wires': (13, 14, 15, 16), 'count': 400, 'reverse': True},
}


def _check_int(value, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DatasetError(f'sorting-networks: {what} must be an integer, got {value!r}')
    if value < low or (high is not None and value > high):
        bound = f'between {low} and {high}' if high is not None else f'>= {low}'
        raise DatasetError(f'sorting-networks: {what} must be {bound}, got {value}')
    return int(value)


def _check_comparators(comparators, num_wires: int) -> np.ndarray:
    ops = np.asarray(comparators, dtype=np.int64).reshape(-1, 2)
    if ops.size and not ((0 <= ops[:, 0]) & (ops[:, 0] < ops[:, 1])
                         & (ops[:, 1] < num_wires)).all():
        raise DatasetError(f'sorting-networks: every comparator must be (i, j) with '
                           f'0 <= i < j < {num_wires}')
    return ops


_SMALL = 256  # with fewer distinct outputs, dropping duplicates costs more than it saves


class _Outputs:
    """The outputs of a network (prefix) on all ``2^n`` 0-1 inputs, as integer bitmasks (bit
    ``w`` = the value on wire ``w``), duplicates dropped while there are many."""

    def __init__(self, num_wires: int) -> None:
        n = self.n = num_wires
        self.values = np.arange(1 << n, dtype=np.int64)
        k = np.arange(n + 1, dtype=np.int64)
        self.sorted_by_ones = ((1 << n) - 1) ^ ((1 << (n - k)) - 1)  # k ones on the top k wires

    def apply(self, i: int, j: int) -> None:
        """Comparator (i, j), i < j: (b_i, b_j) -> (b_i & b_j, b_i | b_j), i.e. swap the two bits
        where b_i = 1 and b_j = 0."""
        both = (1 << i) | (1 << j)
        v = self.values
        v = v ^ (((v & both) == (1 << i)) * both)  # flip both bits where (b_i, b_j) = (1, 0)
        if len(v) > _SMALL:  # distinct values through a bitmap of all inputs (faster than a sort)
            seen = np.zeros(1 << self.n, dtype=bool)
            seen[v] = True
            v = np.flatnonzero(seen)
        self.values = v

    def wrong_wires(self) -> int:
        """Bitmask of the wires where some output differs from its sorted version; 0 iff the
        network sorts (then exactly the ``n + 1`` sorted vectors remain)."""
        v = self.values
        return int(np.bitwise_or.reduce(v ^ self.sorted_by_ones[np.bitwise_count(v)]))


def sorts(comparators: Sequence[tuple[int, int]] | np.ndarray, num_wires: int) -> bool:
    """Whether the network (comparators ``(i, j)``, ``i < j``, applied in order) sorts every input
    on ``num_wires`` wires (checked on all ``2^num_wires`` 0-1 inputs)."""
    num_wires = _check_int(num_wires, 'num_wires', 1, MAX_WIRES)
    out = _Outputs(num_wires)
    for i, j in _check_comparators(comparators, num_wires).tolist():
        out.apply(i, j)
    return out.wrong_wires() == 0


def random_sorting_network(num_wires: int, rng: np.random.Generator,
                           max_comparators: int = MAX_COMPARATORS) -> list[tuple[int, int]] | None:
    """A random sorting network on ``num_wires`` wires (the paper's sampler, see the module
    docstring), or ``None`` when it needs more than ``max_comparators``. It sorts, and it does
    not sort without its last comparator."""
    n = num_wires
    out = _Outputs(n)
    unsorted = list(range(n))
    ops: list[tuple[int, int]] = []
    last = None
    uniform: list[float] = []
    while len(ops) < max_comparators:
        if len(uniform) < 2:
            uniform = rng.random(256).tolist()[::-1]
        m = len(unsorted)  # >= 2: an unsorted 0-1 vector differs from its sorted one in 2+ wires
        a, b = int(uniform.pop() * m), int(uniform.pop() * (m - 1))  # two distinct positions
        b += b >= a
        i, j = sorted((unsorted[a], unsorted[b]))
        if (i, j) == last:  # a repeated comparator does nothing
            continue
        last = (i, j)
        ops.append((i, j))
        out.apply(i, j)
        wrong = out.wrong_wires()
        if wrong == 0:
            return ops
        unsorted = [w for w in range(n) if wrong >> w & 1]
    return None


def network_edges(comparators: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """``edge_index [2, E]`` of a network: previous comparator on wire ``i`` -> ``t`` and previous
    comparator on wire ``j`` -> ``t`` (one edge when both are the same comparator), ordered by
    target, then source."""
    last: dict[int, int] = {}
    src, dst = [], []
    for t, (i, j) in enumerate(np.asarray(comparators, dtype=np.int64).reshape(-1, 2).tolist()):
        preds = {last[w] for w in (i, j) if w in last}
        for p in sorted(preds):
            src.append(p)
            dst.append(t)
        last[i] = last[j] = t
    return np.array([src, dst], dtype=np.int64).reshape(2, -1)


def _graph(comparators, label: bool):
    import torch
    from torch_geometric.data import Data
    ops = np.asarray(comparators, dtype=np.int64).reshape(-1, 2)
    return Data(x=torch.from_numpy(ops.copy()),
                edge_index=torch.from_numpy(network_edges(ops)),
                y=torch.tensor([float(label)]))


def _check_wires(num_wires) -> tuple[int, ...]:
    wires = (num_wires,) if isinstance(num_wires, (int, np.integer)) \
        and not isinstance(num_wires, bool) else num_wires
    try:
        wires = tuple(wires)
    except TypeError:
        raise DatasetError(f'sorting-networks: num_wires must be an integer or a list of them, '
                           f'got {num_wires!r}') from None
    if not wires:
        raise DatasetError('sorting-networks: num_wires is empty')
    # 3 at least: on 2 wires the hard negative would be the empty network (a graph of 0 nodes)
    return tuple(_check_int(w, 'num_wires', 3, MAX_WIRES) for w in wires)


def generate_sorting_networks(num_wires: int | Sequence[int], count: int, seed: int, *,
                              reverse: bool = False, max_comparators: int = MAX_COMPARATORS,
                              stream: int = 0, progress: bool = False,
                              stats: dict | None = None) -> list:
    """``count`` random sorting networks, each followed by its hard negative and (``reverse``)
    its reversed network, as PyG ``Data`` graphs (see the module docstring).

    Args:
        num_wires: wire counts (3 to 20); the networks are spread evenly over them, in the order
            given (the first ``count % len(num_wires)`` counts get one more).
        count: number of sorting networks (>= 1); the result has ``2 * count`` graphs
            (``3 * count`` with ``reverse``): positive, hard negative[, reversed] per network.
        seed: non-negative integer; with ``stream`` (non-negative) it fixes the result
            (``np.random.SeedSequence(seed, spawn_key=(stream,))``; no global random state).
        reverse: also add each reversed network, labelled by brute force.
        max_comparators: networks needing more comparators are discarded and drawn again
            (:class:`DatasetError` after :data:`MAX_TRIES` in a row).
        progress: show a progress bar (stderr).
        stats: filled with ``discarded`` (networks over the limit) and ``reversed_sorting``
            (reversed networks that sort).
    Raises:
        DatasetError: impossible parameters.
    """
    from gtpe._progress import progress_bar

    wires = _check_wires(num_wires)
    count = _check_int(count, 'count', 1)
    seed = _check_int(seed, 'seed', 0)
    stream = _check_int(stream, 'stream', 0)
    # a sorting network on n wires needs at least n - 1 comparators (to connect all wires)
    max_comparators = _check_int(max_comparators, 'max_comparators', max(wires) - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    per_size = [count // len(wires) + (k < count % len(wires)) for k in range(len(wires))]
    graphs, discarded, reversed_sorting = [], 0, 0
    with progress_bar(total=count, desc='sorting-networks: networks', unit='net',
                      enabled=progress) as bar:
        for n, m in zip(wires, per_size):
            for _ in range(m):
                ops, tries = random_sorting_network(n, rng, max_comparators), 1
                while ops is None:
                    discarded += 1
                    if tries == MAX_TRIES:
                        raise DatasetError(
                            f'sorting-networks: max_comparators={max_comparators} is too small '
                            f'for {n} wires ({MAX_TRIES} random networks in a row needed more)')
                    ops, tries = random_sorting_network(n, rng, max_comparators), tries + 1
                graphs.append(_graph(ops, True))
                graphs.append(_graph(ops[:-1], False))
                if reverse:
                    back = ops[::-1]
                    ok = sorts(back, n)
                    reversed_sorting += ok
                    graphs.append(_graph(back, ok))
                bar.update(1)
    if stats is not None:
        stats.update(discarded=discarded, reversed_sorting=int(reversed_sorting))
    return graphs


def cache_params(seed: int = SEED) -> dict:
    """What the generated data depend on (part of the cache key)."""
    return {'generator': 'sorting_networks', 'version': GENERATOR_VERSION, 'seed': seed,
            'max_comparators': MAX_COMPARATORS,
            'splits': {s: {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}
                       for s, p in SPLIT_PARAMS.items()}}


def build(seed: int = SEED, progress: bool = True) -> dict:
    """The shipped splits (:data:`SPLIT_PARAMS`, split ``k`` on stream ``k``) as collated storages
    ``{'splits': {split: {'data', 'slices'}}, 'meta': {...}}``."""
    from .base import storage_from_list

    splits, meta = {}, {'positives': {}, 'graphs': {}, 'discarded': 0}
    for k, (split, params) in enumerate(SPLIT_PARAMS.items()):
        stats: dict = {}
        graphs = generate_sorting_networks(**params, seed=seed, stream=k, progress=progress,
                                           max_comparators=MAX_COMPARATORS, stats=stats)
        splits[split] = storage_from_list(graphs)
        meta['positives'][split] = int(sum(float(g.y) for g in graphs))
        meta['graphs'][split] = len(graphs)
        meta['discarded'] += stats['discarded']
    return {'splits': splits, 'meta': meta}
