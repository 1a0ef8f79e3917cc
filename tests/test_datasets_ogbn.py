"""ogbn-arxiv and ogbn-products on tiny folders in OGB's raw format, written here (the network is
never used: ``urlopen`` fails in every test): gtpe's graph equals OGB's own
``NodePropPredDataset`` and the files written, split masks, OGB's evaluator, the registry, and a
clear error instead of a question or a hang when the files are missing or incomplete."""
import gzip
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from gtpe.datasets import DatasetError, dataset_info, describe, load_dataset
from gtpe.datasets import ogbn
from gtpe.datasets.metrics import evaluate

README = Path(__file__).resolve().parents[1] / 'datasets' / 'README.md'

# name -> (features, classes, split folder, add_inverse_edge, extra node files)
LAYOUT = {
    'ogbn-arxiv': (128, 40, 'time', False, ('node_year',)),
    'ogbn-products': (100, 47, 'sales_ranking', True, ()),
}
N, E = 30, 70


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once, as on a machine without internet."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')

    import ogb.utils.url
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    monkeypatch.setattr(ogb.utils.url.ur, 'urlopen', offline)


def _write_csv(path: Path, rows, fmt='{}') -> None:
    with gzip.open(path, 'wt') as f:
        for row in rows:
            f.write(','.join(fmt.format(v) for v in np.atleast_1d(row)) + '\n')


def write_ogb_folder(folder: Path, name: str, seed: int = 0) -> dict:
    """OGB's extracted layout for ``name`` (as in its zip, renamed to ``ogbn_*``): raw/edge,
    node-feat, node-label, num-node-list, num-edge-list (+ node_year), split/<type>/{train,
    valid,test}.csv.gz, processed/, RELEASE_v1.txt. Returns what was written."""
    feats, classes, split_type, _, extra = LAYOUT[name]
    rng = np.random.default_rng(seed)
    raw, split = folder / 'raw', folder / 'split' / split_type
    raw.mkdir(parents=True)
    split.mkdir(parents=True)
    (folder / 'processed').mkdir()
    (folder / 'RELEASE_v1.txt').write_text('version 1 (test fixture)\n')
    edge = np.stack([rng.integers(0, N, E), rng.integers(0, N, E)], axis=1)     # [E, 2]
    x = rng.standard_normal((N, feats)).astype(np.float32)
    y = rng.integers(0, classes, N)
    _write_csv(raw / 'edge.csv.gz', edge)
    _write_csv(raw / 'node-feat.csv.gz', x, '{:.9g}')    # float32 round trip
    _write_csv(raw / 'node-label.csv.gz', y)
    _write_csv(raw / 'num-node-list.csv.gz', [N])
    _write_csv(raw / 'num-edge-list.csv.gz', [E])
    out = {'edge': edge, 'x': x, 'y': y}
    if 'node_year' in extra:
        out['node_year'] = rng.integers(1990, 2021, N)
        _write_csv(raw / 'node_year.csv.gz', out['node_year'])
    perm = rng.permutation(N)
    out['split'] = dict(zip(('train', 'valid', 'test'), np.split(perm, [14, 21])))
    for key, idx in out['split'].items():
        _write_csv(split / f'{key}.csv.gz', idx)
    return out


def _official(root: Path, name: str) -> Path:
    return root / name / 'official'


@pytest.mark.parametrize('name', list(LAYOUT))
def test_graph_equals_ogb_and_the_files(name, tmp_path, capsys):
    from ogb.nodeproppred import NodePropPredDataset

    folder = ogbn.ogb_folder(_official(tmp_path / 'gtpe', name), name)
    written = write_ogb_folder(folder, name)
    # a pickle OGB wrote earlier: torch >= 2.6 cannot read it weights-only; gtpe must not try
    (folder / 'processed' / 'data_processed').write_bytes(b'\x80\x04\x95 stale')
    write_ogb_folder(tmp_path / 'ogb' / name.replace('-', '_'), name)
    ref = NodePropPredDataset(name, root=str(tmp_path / 'ogb'))
    graph, labels = ref[0]
    idx = ref.get_idx_split()

    capsys.readouterr()
    ds = load_dataset(name, root=tmp_path / 'gtpe', progress=False)
    assert capsys.readouterr() == ('', '')          # OGB's prints and bars hidden too
    assert set(ds) == {'train', 'val', 'test'}
    assert ds['train'] is ds['val'] is ds['test'] and len(ds['train']) == 1
    assert ds['train'].cache_status == 'built (missing)'
    g = ds['train'][0]
    assert torch.equal(g.x, torch.from_numpy(graph['node_feat'])) and g.x.dtype == torch.float32
    assert torch.equal(g.x, torch.from_numpy(written['x']))
    assert torch.equal(g.edge_index, torch.from_numpy(graph['edge_index']))
    assert g.edge_index.dtype == torch.long and g.y.dtype == torch.long
    assert torch.equal(g.y, torch.tensor(labels).view(-1))
    assert torch.equal(g.y, torch.from_numpy(written['y']))
    if name == 'ogbn-arxiv':   # OGB's edges as given: directed, not symmetrised
        assert g.edge_index.tolist() == written['edge'].T.tolist()
        assert torch.equal(g.node_year, torch.from_numpy(graph['node_year']).view(-1))
        assert torch.equal(g.node_year, torch.from_numpy(written['node_year']))
    else:                      # OGB's add_inverse_edge: (u, v) then (v, u)
        expected = [[a for u, v in written['edge'] for a in (u, v)],
                    [b for u, v in written['edge'] for b in (v, u)]]
        assert g.edge_index.tolist() == expected and 'node_year' not in g
    assert g.edge_index.size(1) == E * (2 if LAYOUT[name][3] else 1)
    for split, key in (('train', 'train'), ('val', 'valid'), ('test', 'test')):
        mask = getattr(g, f'{split}_mask')
        assert mask.dtype == torch.bool and mask.shape == (N,)
        assert mask.nonzero().view(-1).tolist() == sorted(idx[key].tolist())
        assert sorted(idx[key].tolist()) == sorted(written['split'][key].tolist())
    assert (g.train_mask.int() + g.val_mask.int() + g.test_mask.int()).eq(1).all()
    assert [int(g[f'{s}_mask'].sum()) for s in ('train', 'val', 'test')] == [14, 7, 9]
    assert dataset_info(name).directed == (name == 'ogbn-arxiv')
    # OGB's pickle is gone (gtpe's cache holds the result); the next load is a cache hit
    assert not (folder / 'processed' / 'data_processed').exists()
    again = load_dataset(name, root=tmp_path / 'gtpe', progress=False)
    assert again['test'].cache_status == 'hit'
    assert torch.equal(again['test'][0].edge_index, g.edge_index)


def test_accuracy_equals_ogb_evaluator():
    from ogb.nodeproppred import Evaluator

    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.integers(0, 40, 500))
    logits = torch.from_numpy(rng.standard_normal((500, 40)))
    logits[:200, 0] += 10        # some right, most wrong
    y[:150] = 0
    ogb_acc = Evaluator('ogbn-arxiv').eval({'y_true': y.view(-1, 1),
                                            'y_pred': logits.argmax(1).view(-1, 1)})['acc']
    assert evaluate(dataset_info('ogbn-arxiv').metric, y, logits) == pytest.approx(ogb_acc,
                                                                                   abs=1e-12)
    assert ogbn.ogb_accuracy('ogbn-products', y, logits) == pytest.approx(ogb_acc, abs=1e-12)
    assert 0.3 < ogb_acc < 0.4


def test_registry_against_ogb_master_and_readme(tmp_path):
    readme = re.sub(r'\s+', ' ', README.read_text())
    published = {'ogbn-arxiv': (169_343, 1_166_243, 40, 128, (90_941, 29_799, 48_603)),
                 'ogbn-products': (2_449_029, 2 * 61_859_140, 47, 100,
                                   (196_615, 39_323, 2_213_091))}
    for name, (nodes, edges, classes, feats, split) in published.items():
        info = dataset_info(name)
        meta = ogbn.ogb_meta(name)
        assert int(meta['num classes']) == info.num_tasks == classes
        assert meta['eval metric'] == 'acc' and info.metric == 'accuracy'
        assert meta['add_inverse_edge'] == str(not info.directed)
        assert (info.level, info.num_graphs, info.node_input, info.node_in_dim,
                info.edge_input) == ('node', 1, 'linear', feats, None)
        assert (info.num_nodes, info.num_edges) == (nodes, edges)
        assert tuple(info.splits.values()) == split and sum(split) == nodes
        assert info.official_only and not info.mirror_dir and not info.generator
        assert f"`{name}`" in readme and f'{nodes:,}' in readme
        assert ' / '.join(f'{s:,}' for s in split) in readme
        # GTPE_MIRROR is set in the tests: no mirror exists for these, the source is OGB
        d = describe(name, root=tmp_path)
        assert d['source_kind'] == 'official' and d['mirror'] is None
        assert 'mirror_error' not in d and d['cached'] is False
    assert dataset_info('arxiv').name == 'ogbn-arxiv'
    assert '61,859,140' in readme


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert '\n' not in msg and 'Traceback' not in msg
    return msg


@pytest.mark.parametrize('name', list(LAYOUT))
def test_offline_without_files_is_one_clear_error(name, tmp_path):
    url = ogbn.ogb_meta(name)['url']
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, root=tmp_path, progress=False)
    msg = _one_line_error(excinfo)
    target = ogbn.ogb_folder(_official(tmp_path, name), name)
    assert msg.startswith(f'{name}: cannot download {url} (network disabled in tests)')
    assert 'no offline mirror' in msg and str(target) in msg
    assert isinstance(excinfo.value.__cause__, urllib.error.URLError)
    # leftovers of an interrupted download, and an empty dataset folder (no RELEASE file),
    # are cleared instead of making OGB ask (y/N) on standard input
    zip_path = _official(tmp_path, name) / url.rpartition('/')[2]
    zip_path.write_bytes(b'PK\x03\x04 cut off')
    (target / 'raw').mkdir(parents=True)
    with pytest.raises(DatasetError, match='cannot download'):
        load_dataset(name, root=tmp_path, progress=False)
    assert not zip_path.exists() and not target.exists()


def test_offline_from_the_zip_placed_by_hand(tmp_path):
    """OGB's zip (downloaded elsewhere) in ``official/`` is extracted, not downloaded; OGB saves
    into ``processed/`` without creating it, gtpe creates it."""
    import shutil
    import zipfile

    src = tmp_path / 'src' / 'arxiv'
    written = write_ogb_folder(src, 'ogbn-arxiv')
    shutil.rmtree(src / 'processed')
    official = _official(tmp_path / 'root', 'ogbn-arxiv')
    official.mkdir(parents=True)
    with zipfile.ZipFile(official / 'arxiv.zip', 'w') as zf:
        for path in sorted(src.rglob('*')):
            zf.write(path, path.relative_to(src.parent))
    g = load_dataset('ogbn-arxiv', root=tmp_path / 'root', progress=False)['train'][0]
    assert torch.equal(g.x, torch.from_numpy(written['x']))
    assert g.edge_index.tolist() == written['edge'].T.tolist()
    assert not (official / 'arxiv.zip').exists()                    # OGB removes it
    assert (official / 'ogbn_arxiv' / 'RELEASE_v1.txt').exists()


def test_ogb_questions_and_timeouts_are_guarded():
    import socket

    from ogb.nodeproppred import dataset as ogb_dataset

    before = socket.getdefaulttimeout()
    with ogbn._ogb_guarded('ogbn-products'):
        assert ogb_dataset.decide_download('http://example.invalid/products.zip') is True
        with pytest.raises(DatasetError, match='OGB asked a question on standard input'):
            ogb_dataset.input('Will you update the dataset now? (y/N)')
        assert socket.getdefaulttimeout() == ogbn.DOWNLOAD_TIMEOUT
    assert socket.getdefaulttimeout() == before
    assert not hasattr(ogb_dataset, 'input')


def test_raw_files_without_release_file_are_not_deleted(tmp_path):
    target = ogbn.ogb_folder(_official(tmp_path, 'ogbn-arxiv'), 'ogbn-arxiv')
    write_ogb_folder(target, 'ogbn-arxiv')
    (target / 'RELEASE_v1.txt').unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset('ogbn-arxiv', root=tmp_path, progress=False)
    msg = _one_line_error(excinfo)
    assert f'{target} holds raw files but no RELEASE_v1.txt' in msg
    assert (target / 'raw' / 'edge.csv.gz').exists()


def test_missing_or_broken_raw_file_is_a_dataset_error(tmp_path):
    target = ogbn.ogb_folder(_official(tmp_path, 'ogbn-arxiv'), 'ogbn-arxiv')
    write_ogb_folder(target, 'ogbn-arxiv')
    (target / 'raw' / 'node-feat.csv.gz').unlink()
    with pytest.raises(DatasetError, match=re.escape(f'no node features ({target}')):
        load_dataset('ogbn-arxiv', root=tmp_path, progress=False)
    (target / 'raw' / 'node-feat.csv.gz').write_bytes(b'not gzip')
    with pytest.raises(DatasetError) as excinfo:
        load_dataset('ogbn-arxiv', root=tmp_path, progress=False)
    assert f"cannot read OGB's files in {target}" in _one_line_error(excinfo)
