"""Cora and CiteSeer from the mirror: PyG's published counts, public-split masks, one graph under
all three keys, and the edges against an independent read of the raw ``ind.*.graph`` pickle."""
import io
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from gtpe.datasets import load_dataset

MIRROR = Path(os.environ.get('GTPE_MIRROR')
              or Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data').resolve()

EXPECTED = {  # nodes, directed edges, features, classes, train/val/test mask sizes
    'cora': (2_708, 10_556, 1_433, 7, (140, 500, 1_000)),
    'citeseer': (3_327, 9_104, 3_703, 6, (120, 500, 1_000)),
}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / 'gtpe-datasets'


def _load(name, root):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('GTPE_MIRROR', str(MIRROR))
        return load_dataset(name, root=root)


@pytest.mark.parametrize('name', ['cora', 'citeseer'])
def test_counts_and_masks(name, root):
    ds = _load(name, root)
    assert set(ds) == {'train', 'val', 'test'}
    assert ds['train'] is ds['val'] is ds['test'] and len(ds['train']) == 1
    n, e, f, c, masks = EXPECTED[name]
    g = ds['train'][0]
    assert g.num_nodes == n and g.edge_index.size(1) == e
    assert g.x.shape == (n, f) and g.x.dtype == torch.float32
    assert g.y.dtype == torch.long and int(g.y.max()) + 1 == c
    sizes = tuple(int(getattr(g, f'{s}_mask').sum()) for s in ('train', 'val', 'test'))
    assert sizes == masks
    assert not (g.train_mask & g.test_mask).any() and not (g.val_mask & g.test_mask).any()
    assert not (g.edge_index[0] == g.edge_index[1]).any()                 # no self-loops
    assert bool(g.is_undirected())


@pytest.mark.parametrize('name,pyg', [('cora', 'cora'), ('citeseer', 'citeseer')])
def test_edges_match_raw_graph_pickle(name, pyg, root):
    tar_path = MIRROR / 'planetoid' / ('Cora.tar.gz' if name == 'cora' else 'CiteSeer.tar.gz')
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f'ind.{pyg}.graph'))
        adj = pickle.load(io.BytesIO(tar.extractfile(member).read()), encoding='latin1')
    n = EXPECTED[name][0]
    ref = {(int(u), int(v)) for u, vs in adj.items() for v in vs if u != v and u < n and v < n}
    ref |= {(v, u) for u, v in ref}
    g = _load(name, root)['train'][0]
    ours = set(map(tuple, g.edge_index.t().tolist()))
    assert ours == ref
