"""ogbg-molhiv (Hu et al., "Open Graph Benchmark", NeurIPS 2020) as OGB's
``PygGraphPropPredDataset('ogbg-molhiv')``: 41,127 molecules of MoleculeNet's HIV.csv, graph ``i`` is
row ``i``; x ``[N,9]`` long and edge_attr ``[E,3]`` long (OGB ``smiles2graph``), y ``[1,1]`` long
(``HIV_active``); OGB scaffold split 32,901 / 4,113 / 4,113 in the split files' order.

From the mirror the graphs are built with RDKit (:mod:`gtpe.datasets.smiles`, including the lenient
fallback for the 7 SMILES that RDKit >= 2025.03 rejects, so no row is lost).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from gtpe._progress import heartbeat

from .base import SPLITS, GraphArrays, arrays_from_featurized, storage_from_list
from .mirror import read_gzip_csv, read_json, require

CSV_FILE = 'ogbg_molhiv/HIV.csv.gz'
SPLIT_FILE = 'ogbg_molhiv/scaffold_split.json'
NUM_GRAPHS = 41_127


def read_split(path: Path, n: int, names=('train', 'valid', 'test')) -> dict[str, torch.Tensor]:
    """``{'train','val','test'}`` index tensors from a JSON split file; checks a partition of 0..n-1."""
    raw = read_json(path)
    require(isinstance(raw, dict) and all(k in raw for k in names), path,
            f'expected keys {list(names)}')
    out = {}
    for split, key in zip(SPLITS, names):
        try:
            out[split] = torch.as_tensor(raw[key], dtype=torch.long).view(-1)
        except (TypeError, ValueError, RuntimeError) as e:
            require(False, path, f'{key!r} is not a list of integers ({e})')
    allidx = torch.cat(list(out.values()))
    require(allidx.numel() == n and bool((allidx.sort().values == torch.arange(n)).all()), path,
            f'the splits are not a partition of 0..{n - 1}')
    return out


def build_mirror(files: dict[str, Path], progress: bool = True,
                 resume_dir: Path | None = None) -> dict:
    from .smiles import featurize_smiles

    csv_path = files[CSV_FILE]
    with heartbeat(f'ogbg-molhiv: reading {csv_path.name}', progress):
        rows = read_gzip_csv(csv_path, ['smiles', 'HIV_active'])
    require(len(rows) == NUM_GRAPHS, csv_path, f'{len(rows)} rows, expected {NUM_GRAPHS}')
    try:
        labels = [int(r['HIV_active']) for r in rows]
    except (TypeError, ValueError) as e:
        require(False, csv_path, f'HIV_active is not an integer ({e})')
    split = read_split(files[SPLIT_FILE], len(rows))
    featurized = featurize_smiles([r['smiles'] for r in rows], progress=progress,
                                  desc='ogbg-molhiv: SMILES -> graphs',
                                  resume_dir=resume_dir)
    with heartbeat('ogbg-molhiv: assembling the splits', progress):
        y = torch.tensor(labels, dtype=torch.long).view(-1, 1)        # [G, 1]
        graphs = arrays_from_featurized(featurized, y)
        splits = {s: graphs.select(split[s]).storage() for s in SPLITS}
    return {'splits': splits, 'meta': {'fallback_rows': featurized[5]}}


def _ogb_safe_globals():
    from torch_geometric.data.data import Data, DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage
    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage]


def remove_incomplete_ogb_download(folder: Path, name: str) -> bool:
    """Remove OGB's folder for ``name`` under gtpe's own ``folder`` when it lacks OGB's
    ``RELEASE_v<version>.txt`` (a download that was interrupted or failed, e.g. offline).

    OGB would otherwise ask ``Will you update the dataset now? (y/N)`` on standard input, which
    hangs a job or, without a terminal, ends in ``EOFError``.  Returns whether it removed one."""
    import shutil

    import pandas as pd
    from ogb.graphproppred import dataset_pyg

    master = pd.read_csv(Path(dataset_pyg.__file__).parent / 'master.csv', index_col=0,
                         keep_default_na=False)
    release = f"RELEASE_v{master[name]['version']}.txt"
    removed = False
    for sub in ('_'.join(name.split('-')), '_'.join(name.split('-')) + '_pyg'):
        path = Path(folder) / sub
        if path.is_dir() and not (path / release).exists():
            print(f'gtpe: removing the incomplete OGB download {path} (no {release})',
                  file=sys.stderr, flush=True)
            shutil.rmtree(path)
            removed = True
    return removed


def build_official(folder: Path, progress: bool = True) -> dict:
    """Download/process with OGB. ogb 1.3.6 calls ``torch.load`` with torch's defaults, which refuse
    PyG classes since torch 2.6 (``weights_only=True``): allow-list them (as PyG itself does for
    ``Data``). ``add_safe_globals`` only adds; the ``safe_globals`` context manager is not used
    because on exit it also drops classes that were registered before (PyG's ``Data``)."""
    from ogb.graphproppred import PygGraphPropPredDataset
    from torch_geometric.data import Data

    torch.serialization.add_safe_globals(_ogb_safe_globals())
    remove_incomplete_ogb_download(folder, 'ogbg-molhiv')
    with heartbeat('ogbg-molhiv: OGB dataset (download, processing)', progress):
        ds = PygGraphPropPredDataset('ogbg-molhiv', root=str(folder))
        idx = ds.get_idx_split()
    splits = {}
    with heartbeat('ogbg-molhiv: assembling the splits', progress):
        for split, key in zip(SPLITS, ('train', 'valid', 'test')):
            graphs = []
            for i in idx[key].tolist():
                g = ds[i]
                graphs.append(Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y=g.y))
            splits[split] = storage_from_list(graphs)
    return {'splits': splits, 'meta': {}}


__all__ = ['GraphArrays', 'build_mirror', 'build_official', 'read_split',
           'remove_incomplete_ogb_download']
