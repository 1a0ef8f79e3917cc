"""The in-memory dataset gtpe returns, and flat (CSR-style) graph arrays to build it fast.

A split is stored as PyG's collated ``(data, slices)`` pair, exactly what
``InMemoryDataset.collate`` produces for a list of graphs, so ``dataset[i]`` gives back the graph.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from .info import SPLITS

__all__ = ['SPLITS', 'GraphArrays', 'GraphDataset', 'storage_from_list']


class GraphDataset(InMemoryDataset):
    """One split of a gtpe dataset: an :class:`~torch_geometric.data.InMemoryDataset` built from a
    collated ``(data, slices)`` pair; usable by :class:`torch_geometric.loader.DataLoader`.

    ``cache_status`` says how it was obtained: ``'hit'`` (processed cache) or
    ``'built (<reason>)'`` (``missing``, ``stale: ...``, ``corrupt: ...``).
    """

    def __init__(self, data: Data, slices: dict[str, Tensor], name: str, split: str,
                 transform: Callable | None = None, cache_status: str = '') -> None:
        super().__init__(None, transform)
        self._data = data
        self.slices = slices
        self.dataset_name = name
        self.split = split
        self.cache_status = cache_status

    @classmethod
    def from_storage(cls, storage: dict, name: str, split: str, **kwargs) -> GraphDataset:
        return cls(Data.from_dict(dict(storage['data'])), dict(storage['slices']), name, split,
                   **kwargs)

    @classmethod
    def from_list(cls, data_list: Sequence[Data], name: str, split: str,
                  **kwargs) -> GraphDataset:
        return cls.from_storage(storage_from_list(data_list), name, split, **kwargs)

    def __repr__(self) -> str:
        return f'{self.dataset_name}({len(self)}, split={self.split!r})'


def storage_from_list(data_list: Sequence[Data]) -> dict:
    """``{'data': {key: tensor}, 'slices': {key: tensor}}`` of ``InMemoryDataset.collate``."""
    from torch_geometric.data.collate import collate

    data_list = list(data_list)
    if not data_list:
        raise ValueError('cannot collate an empty list of graphs')
    # what InMemoryDataset.collate does, also for a single graph (it skips collation there)
    data, slices, _ = collate(data_list[0].__class__, data_list, increment=False,
                              add_batch=False)
    out = {k: v for k, v in data.to_dict().items() if isinstance(v, Tensor)}
    return {'data': out, 'slices': {k: v for k, v in slices.items() if k in out}}


def _segment_gather(ptr: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Flat positions of segments ``idx`` of a CSR pointer ``ptr`` and the new pointer."""
    counts = ptr[idx + 1] - ptr[idx]
    new_ptr = torch.zeros(len(idx) + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=new_ptr[1:])
    flat = torch.repeat_interleave(ptr[idx] - new_ptr[:-1], counts) + torch.arange(int(new_ptr[-1]))
    return flat, new_ptr


@dataclass
class GraphArrays:
    """Many graphs as flat arrays: graph ``g`` has nodes ``x[x_ptr[g]:x_ptr[g+1]]`` and directed edges
    ``edge_index[:, edge_ptr[g]:edge_ptr[g+1]]`` (node ids local to the graph), ``edge_attr`` rows
    aligned with the edges, and target ``y[g]`` (per-graph shape ``y.shape[1:]``, stored with a
    leading 1 as PyG does)."""
    x: Tensor
    x_ptr: Tensor
    edge_index: Tensor
    edge_ptr: Tensor
    edge_attr: Tensor | None
    y: Tensor

    def __len__(self) -> int:
        return self.x_ptr.numel() - 1

    def select(self, idx: Sequence[int] | Tensor) -> GraphArrays:
        idx = torch.as_tensor(idx, dtype=torch.long)
        nodes, x_ptr = _segment_gather(self.x_ptr, idx)
        edges, edge_ptr = _segment_gather(self.edge_ptr, idx)
        return GraphArrays(
            x=self.x[nodes], x_ptr=x_ptr, edge_index=self.edge_index[:, edges],
            edge_ptr=edge_ptr,
            edge_attr=None if self.edge_attr is None else self.edge_attr[edges],
            y=self.y[idx])

    def storage(self) -> dict:
        """The collated ``{'data', 'slices'}`` that ``InMemoryDataset.collate`` gives for these
        graphs (keys in the order x, edge_index, edge_attr, y)."""
        data = {'x': self.x, 'edge_index': self.edge_index}
        slices = {'x': self.x_ptr, 'edge_index': self.edge_ptr}
        if self.edge_attr is not None:
            data['edge_attr'] = self.edge_attr
            slices['edge_attr'] = self.edge_ptr
        data['y'] = self.y
        slices['y'] = torch.arange(len(self) + 1)
        return {'data': data, 'slices': slices}

    def num_nodes(self) -> int:
        return int(self.x_ptr[-1])

    def num_edges(self) -> int:
        return int(self.edge_ptr[-1])


def arrays_from_featurized(featurized: tuple, y: Tensor) -> GraphArrays:
    """:class:`GraphArrays` from the output of :func:`gtpe.datasets.smiles.featurize_smiles`."""
    x, edge_index, edge_attr, num_nodes, num_edges, _ = featurized
    zero = torch.zeros(1, dtype=torch.long)
    return GraphArrays(
        x=torch.from_numpy(x), x_ptr=torch.cat([zero, torch.from_numpy(num_nodes).cumsum(0)]),
        edge_index=torch.from_numpy(edge_index),
        edge_ptr=torch.cat([zero, torch.from_numpy(num_edges).cumsum(0)]),
        edge_attr=torch.from_numpy(edge_attr), y=y)
