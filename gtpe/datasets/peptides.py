"""Peptides-func (Dwivedi et al., "Long Range Graph Benchmark", NeurIPS 2022 D&B) as PyG's
``LRGBDataset(root, 'peptides-func', split)``: 15,535 peptides, x ``[N,9]`` long and edge_attr
``[E,3]`` long (OGB ``smiles2graph``), y ``[1,10]`` float32 (10 binary function labels); split
10,873 / 2,331 / 2,331, graphs of a split in ascending row order (LRGB's stratified split file).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from gtpe._progress import heartbeat

from .base import SPLITS, arrays_from_featurized, storage_from_list
from .mirror import read_gzip_csv, require
from .molhiv import read_split

CSV_FILE = 'peptides_func/peptide_multi_class_dataset.csv.gz'
SPLIT_FILE = 'peptides_func/splits_random_stratified_peptide.json'
NUM_GRAPHS = 15_535
NUM_TASKS = 10


def build_mirror(files: dict[str, Path], progress: bool = True,
                 resume_dir: Path | None = None) -> dict:
    from .smiles import featurize_smiles

    csv_path = files[CSV_FILE]
    with heartbeat(f'peptides-func: reading {csv_path.name}', progress):
        rows = read_gzip_csv(csv_path, ['smiles', 'labels'])
    require(len(rows) == NUM_GRAPHS, csv_path, f'{len(rows)} rows, expected {NUM_GRAPHS}')
    try:
        labels = [json.loads(r['labels']) for r in rows]
    except ValueError as e:
        require(False, csv_path, f'a labels entry is not a list ({e})')
    require(all(isinstance(v, list) and len(v) == NUM_TASKS for v in labels), csv_path,
            f'every labels entry must be a list of {NUM_TASKS} values')
    split = read_split(files[SPLIT_FILE], len(rows), names=('train', 'val', 'test'))
    featurized = featurize_smiles([r['smiles'] for r in rows], progress=progress,
                                  desc='peptides-func: SMILES -> graphs',
                                  resume_dir=resume_dir)
    with heartbeat('peptides-func: assembling the splits', progress):
        y = torch.tensor(labels, dtype=torch.float32)                 # [G, 10]
        graphs = arrays_from_featurized(featurized, y)
        splits = {s: graphs.select(split[s]).storage() for s in SPLITS}
    return {'splits': splits, 'meta': {'fallback_rows': featurized[5]}}


def build_official(folder: Path, progress: bool = True) -> dict:
    from torch_geometric.datasets import LRGBDataset
    splits = {}
    for split in SPLITS:
        with heartbeat(f'peptides-func: PyG LRGBDataset {split} split (download, processing)',
                       progress):
            ds = LRGBDataset(str(folder), 'peptides-func', split=split)
            splits[split] = storage_from_list([ds[i] for i in range(len(ds))])
    return {'splits': splits, 'meta': {}}
