"""ZINC 12k subset (Dwivedi et al., "Benchmarking Graph Neural Networks", JMLR 2023), as PyG's
``ZINC(root, subset=True, split=...)``: x ``[N,1]`` long atom types (vocabulary 28), edge_index with
both directions sorted by (src, dst) (``adj.nonzero()`` order), edge_attr ``[E]`` long bond types
(1-3, vocabulary 4), y ``[1]`` float32 (penalised logP); 10,000 / 1,000 / 1,000 graphs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gtpe._progress import heartbeat

from .base import SPLITS, GraphArrays, storage_from_list
from .mirror import read_gzip_json, require

MIRROR_FILE = 'zinc_subset/zinc_subset.json.gz'


def _ptr(values, path: Path, what: str, n: int) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.long)
    require(t.dim() == 1 and t.numel() == n + 1 and int(t[0]) == 0 and bool((t[1:] >= t[:-1]).all()),
            path, f'{what} is not a pointer of {n} graphs')
    return t


def build_mirror(files: dict[str, Path], progress: bool = True) -> dict:
    path = files[MIRROR_FILE]
    with heartbeat(f'zinc: reading {path.name}', progress):
        raw = read_gzip_json(path)
    require(isinstance(raw, dict) and all(s in raw for s in SPLITS), path,
            'expected an object with train/val/test')
    splits = {}
    for split in SPLITS:
        part = raw[split]
        try:
            n = int(part['num_graphs'])
            x = torch.as_tensor(part['x'], dtype=torch.long).view(-1, 1)
            x_ptr = _ptr(part['x_ptr'], path, f'{split}.x_ptr', n)
            edge_index = torch.as_tensor(part['edge_index'], dtype=torch.long)
            edge_ptr = _ptr(part['edge_ptr'], path, f'{split}.edge_ptr', n)
            edge_attr = torch.as_tensor(part['edge_attr'], dtype=torch.long)
            y = torch.as_tensor(part['y'], dtype=torch.float32)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            require(False, path, f'split {split!r}: {type(e).__name__}: {e}')
        require(edge_index.dim() == 2 and edge_index.size(0) == 2, path, f'{split}.edge_index shape')
        require(int(x_ptr[-1]) == x.size(0) and int(edge_ptr[-1]) == edge_index.size(1)
                == edge_attr.numel() and y.numel() == n, path, f'{split}: inconsistent lengths')
        splits[split] = GraphArrays(x, x_ptr, edge_index, edge_ptr, edge_attr, y).storage()
    return {'splits': splits, 'meta': {}}


def build_official(folder: Path, progress: bool = True) -> dict:
    from torch_geometric.datasets import ZINC
    splits = {}
    for split in SPLITS:
        with heartbeat(f'zinc: PyG ZINC {split} split (download, processing)', progress):
            ds = ZINC(str(folder), subset=True, split=split)
            splits[split] = storage_from_list([ds[i] for i in range(len(ds))])
    return {'splits': splits, 'meta': {}}
