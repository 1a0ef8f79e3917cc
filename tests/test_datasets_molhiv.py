"""ogbg-molhiv from the mirror: OGB counts, format, scaffold split and labels, graphs equal to
``ogb.utils.smiles2graph``, and the 7 SMILES that RDKit >= 2025.03 rejects equal to the features
RDKit 2024.03.6 gives (fixture made by tests/data/make_molhiv_rdkit2024_rows.py)."""
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
from gtpe.datasets.smiles import mol_from_smiles, smiles2graph

MIRROR = Path(os.environ.get('GTPE_MIRROR')
              or Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data').resolve()
FIXTURE = Path(__file__).parent / 'data' / 'molhiv_rdkit2024_rows.json'
FALLBACK_ROWS = [137, 987, 12882, 18293, 30784, 30785, 35728]


@pytest.fixture(scope='module')
def hiv(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / 'gtpe-datasets'
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('GTPE_MIRROR', str(MIRROR))
        return load_dataset('ogbg-molhiv', root=root)


@pytest.fixture(scope='module')
def rows():
    with gzip.open(MIRROR / 'ogbg_molhiv' / 'HIV.csv.gz', 'rt', newline='') as f:
        return list(csv.DictReader(io.StringIO(f.read())))


@pytest.fixture(scope='module')
def split():
    return json.loads((MIRROR / 'ogbg_molhiv' / 'scaffold_split.json').read_text())


def _graph_equals(g, ref: dict) -> None:
    assert torch.equal(g.x, torch.as_tensor(np.asarray(ref['node_feat']), dtype=torch.long))
    assert torch.equal(g.edge_index,
                       torch.as_tensor(np.asarray(ref['edge_index']), dtype=torch.long).view(2, -1))
    assert torch.equal(g.edge_attr,
                       torch.as_tensor(np.asarray(ref['edge_feat']), dtype=torch.long).view(-1, 3))


def test_counts_split_and_labels(hiv, rows, split):
    assert {k: len(v) for k, v in hiv.items()} == {'train': 32_901, 'val': 4_113, 'test': 4_113}
    pos = {k: int(ds._data.y.sum()) for k, ds in hiv.items()}
    assert pos == {'train': 1_232, 'val': 81, 'test': 130}
    for ours, key in (('train', 'train'), ('val', 'valid'), ('test', 'test')):
        labels = torch.tensor([int(rows[i]['HIV_active']) for i in split[key]])
        assert torch.equal(hiv[ours]._data.y.view(-1), labels)          # split-file order
    g = hiv['train'][0]
    assert g.x.dtype == g.edge_index.dtype == g.edge_attr.dtype == g.y.dtype == torch.long
    assert g.x.size(1) == 9 and g.edge_attr.size(1) == 3 and g.y.shape == (1, 1)
    # OGB: 41,127 graphs, 25.5 nodes and 27.5 (undirected) edges on average
    n = sum(int(ds._data.x.size(0)) for ds in hiv.values())
    e = sum(int(ds._data.edge_index.size(1)) for ds in hiv.values())
    assert n / 41_127 == pytest.approx(25.5, abs=0.05)
    assert e / 2 / 41_127 == pytest.approx(27.5, abs=0.05)


def test_graphs_equal_ogb_smiles2graph(hiv, rows, split):
    # graph 0 of OGB is HIV.csv row 0; it sits at position 0 of the test split list
    pos0 = split['test'].index(0)
    _graph_equals(hiv['test'][pos0], ogb_smiles2graph(rows[0]['smiles']))
    rng = np.random.default_rng(0)
    for ours, key in (('train', 'train'), ('val', 'valid'), ('test', 'test')):
        for k in rng.choice(len(split[key]), 25, replace=False).tolist():
            row = split[key][k]
            if row in FALLBACK_ROWS:
                continue
            _graph_equals(hiv[ours][k], ogb_smiles2graph(rows[row]['smiles']))


def test_fallback_rows_match_rdkit_2024(hiv, rows, split):
    fixture = json.loads(FIXTURE.read_text())
    assert fixture['rdkit_version'].startswith('2024.03')
    assert sorted(int(k) for k in fixture['rows']) == FALLBACK_ROWS
    where = {row: (ours, k) for ours, key in (('train', 'train'), ('val', 'valid'), ('test', 'test'))
             for k, row in enumerate(split[key])}
    for key, ref in fixture['rows'].items():
        row = int(key)
        assert rows[row]['smiles'] == ref['smiles']
        ours, k = where[row]
        g = hiv[ours][k]
        assert g.num_nodes == ref['num_nodes']
        _graph_equals(g, ref)                                  # the dataset graph
        _graph_equals(_as_graph(smiles2graph(ref['smiles'])), ref)   # the function itself


def _as_graph(d):
    from torch_geometric.data import Data
    return Data(x=torch.from_numpy(d['node_feat']), edge_index=torch.from_numpy(d['edge_index']),
                edge_attr=torch.from_numpy(d['edge_feat']))


def test_fallback_is_only_used_when_needed():
    mol, used = mol_from_smiles('CC(=O)Oc1ccccc1C(=O)O')
    assert not used and mol.GetNumAtoms() == 13
    with pytest.raises(ValueError, match='cannot parse'):
        mol_from_smiles('C1CC(')


def test_incomplete_official_download_is_removed_before_ogb_prompts(tmp_path, monkeypatch):
    """A failed/interrupted OGB download (folder without RELEASE_v*.txt) made OGB ask
    'Will you update the dataset now? (y/N)' on stdin: EOFError without a terminal. gtpe removes
    its own incomplete folder first; a complete one is kept."""
    import builtins

    from gtpe.datasets import molhiv

    (tmp_path / 'ogbg_molhiv' / 'raw').mkdir(parents=True)
    (tmp_path / 'ogbg_molhiv_pyg').mkdir()
    assert molhiv.remove_incomplete_ogb_download(tmp_path, 'ogbg-molhiv')
    assert not (tmp_path / 'ogbg_molhiv').exists() and not (tmp_path / 'ogbg_molhiv_pyg').exists()
    done = tmp_path / 'ogbg_molhiv'
    done.mkdir()
    (done / 'RELEASE_v1.txt').write_text('')
    assert not molhiv.remove_incomplete_ogb_download(tmp_path, 'ogbg-molhiv')
    assert done.exists()
    # build_official runs it before OGB: OGB's own constructor then never reads stdin
    (done / 'RELEASE_v1.txt').unlink()

    def no_input(prompt=''):
        raise AssertionError(f'OGB prompted: {prompt!r}')

    class Stop(Exception):
        pass

    def fake_ogb(name, root):  # OGB's constructor, up to its version check
        assert not (tmp_path / 'ogbg_molhiv').exists()
        raise Stop

    monkeypatch.setattr(builtins, 'input', no_input)
    import ogb.graphproppred
    monkeypatch.setattr(ogb.graphproppred, 'PygGraphPropPredDataset', fake_ogb)
    with pytest.raises(Stop):
        molhiv.build_official(tmp_path, progress=False)
