"""Peptides-func from the mirror: LRGB counts, PyG ``LRGBDataset`` format and split order, label
statistics, and graphs equal to ``ogb.utils.smiles2graph`` of the matching rows."""
import csv
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ogb.utils import smiles2graph as ogb_smiles2graph

from gtpe.datasets import load_dataset

MIRROR = Path(os.environ.get('GTPE_MIRROR')
              or Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data').resolve()


@pytest.fixture(scope='module')
def pep(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / 'gtpe-datasets'
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('GTPE_MIRROR', str(MIRROR))
        return load_dataset('peptides-func', root=root)


def test_counts_and_format(pep):
    assert {k: len(v) for k, v in pep.items()} == {'train': 10_873, 'val': 2_331, 'test': 2_331}
    g = pep['val'][0]
    assert g.x.dtype == g.edge_index.dtype == g.edge_attr.dtype == torch.long
    assert g.x.size(1) == 9 and g.edge_attr.size(1) == 3
    assert g.y.shape == (1, 10) and g.y.dtype == torch.float32
    assert sorted(g.keys()) == ['edge_attr', 'edge_index', 'x', 'y']
    y = torch.cat([ds._data.y for ds in pep.values()])
    assert y.shape == (15_535, 10)
    assert y.sum(0).long().tolist() == [1378, 545, 995, 969, 9745, 3077, 1662, 2866, 299, 4044]
    n = sum(int(ds._data.x.size(0)) for ds in pep.values())
    e = sum(int(ds._data.edge_index.size(1)) for ds in pep.values())
    assert n / 15_535 == pytest.approx(150.94, abs=0.01)     # LRGB: ~150.94 nodes
    assert e / 15_535 == pytest.approx(307.30, abs=0.01)     # LRGB: ~307.30 edges


def test_split_order_and_graphs(pep):
    split = json.loads((MIRROR / 'peptides_func' / 'splits_random_stratified_peptide.json')
                       .read_text())
    with gzip.open(MIRROR / 'peptides_func' / 'peptide_multi_class_dataset.csv.gz', 'rt',
                   newline='') as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    rng = np.random.default_rng(1)
    for s in ('train', 'val', 'test'):
        labels = torch.tensor([json.loads(rows[i]['labels']) for i in split[s]],
                              dtype=torch.float32)
        assert torch.equal(pep[s]._data.y, labels)       # ascending rows of the split file
        for k in [0, len(split[s]) - 1] + rng.choice(len(split[s]), 6, replace=False).tolist():
            ref = ogb_smiles2graph(rows[split[s][k]]['smiles'])
            g = pep[s][k]
            assert torch.equal(g.x, torch.from_numpy(ref['node_feat']))
            assert torch.equal(g.edge_index, torch.from_numpy(ref['edge_index']))
            assert torch.equal(g.edge_attr, torch.from_numpy(ref['edge_feat']))
