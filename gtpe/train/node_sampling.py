"""Neighbour sampling of one big graph for node-level training: a plain-torch uniform
sampler for PyG's ``NodeLoader`` (no pyg-lib needed), the seed batches shared by the processes of
a ``torchrun`` job, and the pair attributes of the PE transforms carried into each subgraph.

Used by :mod:`gtpe.train.loop` (``train.loader: neighbor``) and ``benchmarks/node_scale.py``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from torch_geometric.sampler import BaseSampler, SamplerOutput

from gtpe.train._dataclass_io import ConfigError

__all__ = ['PairSubgraph', 'SeedBatches', 'UniformNeighborSampler', 'neighbor_loader']

# Attributes that pair nodes ([2, M] index + per-pair values) written by the PE transforms: a
# neighbour-sampled subgraph keeps the pairs whose both ends it holds (renumbered).
_PAIR_ATTRS = {'expander_index': (), 'rrwp_index': ('rrwp_val',), 'spd_index': ('spd_val',)}
_UNSAMPLEABLE_ATTRS = ('spd_path_index',)


class UniformNeighborSampler(BaseSampler):
    r"""Neighbour sampling in plain torch for PyG's ``NodeLoader`` (what ``NeighborLoader``
    does with ``pyg-lib``, which has no wheels for every torch; this one needs none).

    From the seed nodes, hop ``l`` (``l = 1..L``) takes, for every node first reached at hop
    ``l - 1``, ``fanouts[l-1]`` of its in-edges :math:`j \to i` uniformly without replacement
    (all of them when it has fewer, or when the fan-out is ``-1``); the sources not seen before
    become the next frontier. The subgraph holds the sampled nodes (seeds first, then by hop, in
    order of first appearance) and the sampled edges, directed towards the seeds, as
    ``NeighborLoader(subgraph_type='directional')``: a layer-``L`` model's output at a seed
    depends only on them, and equals the full graph's when every fan-out is ``-1`` (for
    aggregations over the in-edges; GCN's degree normalisation sees the subgraph's degrees).
    Random numbers come from torch's default CPU generator; with ``seed``, each batch's from a
    generator seeded with ``seed`` and the batch's first input position instead, so that a
    batch's sample depends only on its seeds (what several processes that evaluate different
    batches of one node list need to sample what one process samples).
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, fanouts: list[int],
                 seed: int | None = None):
        edge_index = edge_index.cpu()
        dst = edge_index[1]
        self.perm = torch.sort(dst, stable=True).indices  # CSC order: edges grouped by target
        self.src = edge_index[0].index_select(0, self.perm)
        counts = torch.bincount(dst, minlength=num_nodes)
        self.ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.num_nodes = num_nodes
        self.fanouts = list(fanouts)
        self.seed = seed
        self._local = torch.full((num_nodes,), -1, dtype=torch.long)  # reused, reset per call

    def _sample_edges(self, frontier: Tensor, k: int,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(positions in CSC order, target of each)`` of the sampled in-edges of ``frontier``."""
        start = self.ptr.index_select(0, frontier)
        deg = self.ptr.index_select(0, frontier + 1) - start
        if k >= 0:
            take = deg.clamp(max=k)
        else:
            take = deg
        owner = torch.repeat_interleave(torch.arange(frontier.numel()), deg)  # edge -> frontier
        offset = torch.arange(owner.numel()) - torch.repeat_interleave(deg.cumsum(0) - deg, deg)
        pos = start.index_select(0, owner) + offset
        if k >= 0 and bool((deg > k).any()):
            # rank of each edge within its node in a random order; keep the first `k`
            key = owner.to(torch.float64) + torch.rand(owner.numel(), dtype=torch.float64,
                                                       generator=generator)
            order = torch.sort(key).indices
            rank = torch.empty_like(order)
            rank[order] = offset  # offset enumerates 0..deg-1 within each node, in node order
            keep = rank < take.index_select(0, owner)
            pos, owner = pos[keep], owner[keep]
        return pos, frontier.index_select(0, owner)

    def sample_from_nodes(self, index: Any, **kwargs: Any) -> SamplerOutput:
        seeds = index.node.long()
        generator = None
        if self.seed is not None and seeds.numel():
            first = int(index.input_id[0]) if index.input_id is not None else 0
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + first)
        local = self._local
        nodes = [seeds]
        local[seeds] = torch.arange(seeds.numel())
        count = seeds.numel()
        rows, cols, edges, num_nodes, num_edges = [], [], [], [seeds.numel()], []
        frontier = seeds
        try:
            for k in self.fanouts:
                pos, dst = self._sample_edges(frontier, k, generator)
                src = self.src.index_select(0, pos)
                new = src[local.index_select(0, src) < 0]
                if new.numel():  # unique, in order of first appearance
                    uniq, inv = torch.unique(new, return_inverse=True)
                    first = torch.full((uniq.numel(),), new.numel(), dtype=torch.long)
                    first.scatter_reduce_(0, inv, torch.arange(new.numel()), 'amin')
                    new = uniq[torch.argsort(first)]
                    local[new] = torch.arange(count, count + new.numel())
                    count += new.numel()
                nodes.append(new)
                rows.append(local.index_select(0, src))
                cols.append(local.index_select(0, dst))
                edges.append(self.perm.index_select(0, pos))
                num_nodes.append(new.numel())
                num_edges.append(pos.numel())
                frontier = new
            node = torch.cat(nodes)
        finally:
            local[torch.cat(nodes)] = -1
        empty = torch.empty(0, dtype=torch.long)
        return SamplerOutput(
            node=node, row=torch.cat(rows) if rows else empty,
            col=torch.cat(cols) if cols else empty, edge=torch.cat(edges) if edges else empty,
            batch=None, num_sampled_nodes=num_nodes, num_sampled_edges=num_edges,
            metadata=(index.input_id, index.time))

    def sample_from_edges(self, index: Any, neg_sampling: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError('UniformNeighborSampler samples from nodes only')

    @property
    def edge_permutation(self) -> None:
        return None  # SamplerOutput.edge holds ids of the original edge_index


class PairSubgraph:
    """``NodeLoader`` transform: the node pairs of :data:`_PAIR_ATTRS` (taken off the graph
    before sampling) restricted to the sampled nodes and renumbered."""

    def __init__(self, pairs: dict[str, tuple[Tensor, list[Tensor]]], num_nodes: int):
        self.pairs = pairs
        self.num_nodes = num_nodes

    def __call__(self, data: Any) -> Any:
        if not self.pairs:
            return data
        n_id = data.n_id
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local[n_id] = torch.arange(n_id.numel())
        for key, (index, values) in self.pairs.items():
            ends = local[index]
            keep = (ends >= 0).all(0)
            data[key] = ends[:, keep]
            for name, v in zip(_PAIR_ATTRS[key], values):
                data[name] = v[keep]
        return data


class SeedBatches(torch.utils.data.Sampler):
    """Batch sampler of one of ``world_size`` processes over the ``num_seeds`` training (seed)
    nodes of a node-level dataset: the positions ``0..num_seeds-1`` (into the sorted training node
    ids) that this rank trains on in each step of an epoch.

    Each epoch draws one permutation ``torch.randperm(num_seeds, generator=generator)`` (the
    training loop re-seeds ``generator`` per epoch with the same seed on every rank, so every
    rank draws the same one) and cuts it into steps of ``batch_size * world_size`` seeds (the
    last step may hold fewer); rank ``r`` takes the seeds ``r, r + W, r + 2W, ...`` of each step.
    So the union of the ranks' batches in a step is the batch a single process with batch size
    ``batch_size * world_size`` takes in that step (with one process, the batches of a shuffled
    ``batch_size`` loader). A rank whose share of the last step is empty (fewer than ``W`` seeds
    left) gets the step's first seed as padding, so that every rank runs every step (DDP's
    all-reduce); :attr:`steps` tells the loop to give it weight 0.

    :attr:`steps` (filled when an epoch's iteration starts): per step ``(own, step_seeds)``, the
    number of this rank's real seeds (0 for padding) and the positions of all the step's seeds.
    """

    def __init__(self, num_seeds: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.num_seeds, self.batch_size = num_seeds, batch_size
        self.rank, self.world_size, self.generator = rank, world_size, generator
        self.steps: list[tuple[int, Tensor]] = []

    def __len__(self) -> int:
        return -(-self.num_seeds // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Nothing: the permutation comes from ``generator``, which the loop seeds per epoch."""

    def __iter__(self):
        # drawn lazily, on the first batch: a DataLoader given the same generator first draws
        # its base seed from it, exactly as it does before RandomSampler's permutation
        perm = torch.randperm(self.num_seeds, generator=self.generator)
        step = self.batch_size * self.world_size
        self.steps = []
        batches = []
        for start in range(0, self.num_seeds, step):
            chunk = perm[start:start + step]
            own = chunk[self.rank::self.world_size]
            self.steps.append((own.numel(), chunk))
            batches.append((own if own.numel() else chunk[:1]).tolist())
        yield from batches


def neighbor_loader(graph: Any, nodes: Tensor, fanouts: list[int], batch_size: int, *,
                     shuffle: bool, generator: torch.Generator | None = None,
                     num_workers: int = 0, batch_sampler: Any = None,
                     sample_seed: int | None = None) -> Any:
    """PyG ``NodeLoader`` over ``nodes`` (ids of ``graph``) with :class:`UniformNeighborSampler`
    and the pair attributes handled by :class:`PairSubgraph`. Each batch is a ``Data`` whose
    first ``batch_size`` nodes are the seeds (``n_id``: ids in ``graph``); with
    ``batch_sampler`` (a :class:`SeedBatches`, or any iterable of lists), its batches of
    positions into ``nodes`` instead (``batch_size`` and ``shuffle`` unused). ``sample_seed``:
    the sampler's per-batch ``seed``."""
    from torch_geometric.loader import NodeLoader

    bad = [k for k in _UNSAMPLEABLE_ATTRS if k in graph]
    if bad:
        raise ConfigError(f"train.loader: 'neighbor' cannot sample '{bad[0]}' (Graphormer's "
                          f"edge encoding, pe.spd.edge_encoding); use train.loader: full")
    graph = copy.copy(graph)
    pairs = {}
    for key, value_keys in _PAIR_ATTRS.items():
        if key in graph:
            pairs[key] = (graph[key], [graph[v] for v in value_keys])
            for k in (key, *value_keys):
                del graph[k]
    node_sampler = UniformNeighborSampler(graph.edge_index, graph.num_nodes, fanouts,
                                          seed=sample_seed)
    kwargs: dict[str, Any] = dict(num_workers=num_workers, generator=generator)
    if batch_sampler is not None:
        kwargs['batch_sampler'] = batch_sampler
    else:
        kwargs.update(batch_size=batch_size, shuffle=shuffle)
    return NodeLoader(graph, node_sampler=node_sampler, input_nodes=nodes,
                      transform=PairSubgraph(pairs, graph.num_nodes), **kwargs)
