"""ZINC 12k: counts, PyG ``ZINC(subset=True)`` format, and every graph element-wise against the
mirror's original NEL text records (rebuilt independently here)."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from gtpe.datasets import load_dataset

MIRROR = Path(os.environ.get('GTPE_MIRROR')
              or Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data').resolve()


@pytest.fixture(scope='module')
def zinc(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / 'gtpe-datasets'  # shared by all dataset test files
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('GTPE_MIRROR', str(MIRROR))
        return load_dataset('zinc', root=root)


def _ints(path: Path, cols: int) -> np.ndarray:
    with gzip.open(path, 'rt') as f:
        return np.array(f.read().split(), dtype=np.int64).reshape(-1, cols)


def test_counts_and_format(zinc):
    assert {k: len(v) for k, v in zinc.items()} == {'train': 10_000, 'val': 1_000, 'test': 1_000}
    nodes = {s: int(ds._data.x.size(0)) for s, ds in zinc.items()}
    edges = {s: int(ds._data.edge_index.size(1)) for s, ds in zinc.items()}
    # SOURCE.md: per split nodes / directed edges
    assert nodes == {'train': 231_664, 'val': 23_083, 'test': 23_117}
    assert edges == {'train': 498_558, 'val': 49_692, 'test': 49_720}
    g = zinc['train'][0]
    assert g.x.shape == (29, 1) and g.x.dtype == torch.long
    assert g.edge_index.shape == (2, 64) and g.edge_index.dtype == torch.long
    assert g.edge_attr.shape == (64,) and g.edge_attr.dtype == torch.long
    assert g.y.shape == (1,) and g.y.dtype == torch.float32
    assert g.y.item() == pytest.approx(0.8350356, abs=1e-7)
    assert sorted(g.keys()) == ['edge_attr', 'edge_index', 'x', 'y']
    xs = torch.cat([ds._data.x for ds in zinc.values()])
    assert int(xs.min()) == 0 and int(xs.max()) == 20          # 21 of the 28 atom types occur
    ea = torch.cat([ds._data.edge_attr for ds in zinc.values()])
    assert set(ea.unique().tolist()) == {1, 2, 3}


def test_equals_raw_nel_records(zinc):
    """Rebuild all 12,000 graphs from ZINC_{Nodes,Edges,Labels}.txt.gz and compare x, edge_index
    (values and PyG's adj.nonzero() order), edge_attr and the float32 y exactly."""
    d = MIRROR / 'zinc_subset'
    nodes = _ints(d / 'ZINC_Nodes.txt.gz', 3)                  # graph node atom
    edges = _ints(d / 'ZINC_Edges.txt.gz', 4)                  # graph u v bond (each bond once)
    with gzip.open(d / 'ZINC_Labels.txt.gz', 'rt') as f:
        labels = np.array(f.read().split(), dtype=np.float64).reshape(-1, 2)
    assert len(labels) == 12_000 and (labels[:, 0] == np.arange(12_000)).all()

    # nodes: order by (graph, node id); node ids are 0..n-1 within a graph
    nodes = nodes[np.lexsort((nodes[:, 1], nodes[:, 0]))]
    n_per = np.bincount(nodes[:, 0], minlength=12_000)
    starts = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    assert (nodes[:, 1] == np.arange(len(nodes)) - np.repeat(starts, n_per)).all()
    # directed edges: both directions, sorted by (graph, src, dst)
    both = np.concatenate([edges, edges[:, [0, 2, 1, 3]]])
    both = both[np.lexsort((both[:, 2], both[:, 1], both[:, 0]))]
    e_per = np.bincount(both[:, 0], minlength=12_000)

    ours = [zinc[s] for s in ('train', 'val', 'test')]             # graphs 0-9999, then val, test
    x = torch.cat([ds._data.x for ds in ours]).view(-1).numpy()
    ei = torch.cat([ds._data.edge_index for ds in ours], dim=1).numpy()
    ea = torch.cat([ds._data.edge_attr for ds in ours]).numpy()
    y = torch.cat([ds._data.y for ds in ours]).numpy()
    x_cnt = np.concatenate([np.diff(ds.slices['x'].numpy()) for ds in ours])
    e_cnt = np.concatenate([np.diff(ds.slices['edge_index'].numpy()) for ds in ours])

    np.testing.assert_array_equal(x_cnt, n_per)
    np.testing.assert_array_equal(e_cnt, e_per)
    np.testing.assert_array_equal(x, nodes[:, 2])
    np.testing.assert_array_equal(ei[0], both[:, 1])
    np.testing.assert_array_equal(ei[1], both[:, 2])
    np.testing.assert_array_equal(ea, both[:, 3])
    np.testing.assert_array_equal(y, labels[:, 1].astype(np.float32))
    # per-graph access agrees with the flat arrays (spot check through InMemoryDataset.get)
    g = zinc['test'][999]
    lo = int(zinc['test'].slices['x'][999])
    assert torch.equal(g.x.view(-1), zinc['test']._data.x[lo:].view(-1))


def test_dataloader_batches(zinc):
    batch = next(iter(DataLoader(zinc['val'], batch_size=32)))
    assert batch.num_graphs == 32 and batch.y.shape == (32,)
    assert batch.x.size(0) == sum(zinc['val'][i].num_nodes for i in range(32))
