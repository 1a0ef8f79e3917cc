"""Processed-data cache (hit, corrupt, stale, atomic writes), mirror errors, pre_transform and
transform handling, and the official-source path of ogbg-molhiv (OGB's own processing and
``torch.load`` under torch's ``weights_only`` default, on a small locally written OGB folder)."""
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import degree

import gtpe.datasets.cache as cache_mod
import gtpe.datasets.load as load_mod
from gtpe.datasets import DatasetError, load_dataset
from gtpe.datasets.cache import atomic_write

MIRROR = Path(os.environ.get('GTPE_MIRROR')
              or Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data').resolve()


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv('GTPE_MIRROR', str(MIRROR))
    monkeypatch.delenv('GTPE_MIRROR_VERIFY', raising=False)


def _same(a, b) -> None:
    """Two splits hold identical collated tensors."""
    da, db = a._data.to_dict(), b._data.to_dict()
    assert da.keys() == db.keys()
    for k in da:
        assert da[k].dtype == db[k].dtype and torch.equal(da[k], db[k]), k
    for k in a.slices:
        assert torch.equal(a.slices[k], b.slices[k]), k


def _boom(*args, **kwargs):
    raise AssertionError('the dataset was rebuilt')


def test_second_load_hits_cache(tmp_path, monkeypatch):
    first = load_dataset('zinc', root=tmp_path)
    assert first['train'].cache_status == 'built (missing)'
    manifest = json.loads((tmp_path / 'zinc' / 'processed' / 'manifest.json').read_text())
    assert manifest['key']['source'] == 'mirror' and manifest['key']['format'] == 1
    assert manifest['stats']['splits'] == {'train': 10_000, 'val': 1_000, 'test': 1_000}
    monkeypatch.setattr(load_mod, '_build', _boom)
    second = load_dataset('zinc', root=tmp_path)
    assert second['train'].cache_status == 'hit'
    for s in ('train', 'val', 'test'):
        _same(first[s], second[s])


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv('GTPE_DATA_ROOT', str(tmp_path / 'envroot'))
    ds = load_dataset('cora')
    assert (tmp_path / 'envroot' / 'cora' / 'processed' / 'manifest.json').is_file()
    assert ds['val'][0].num_nodes == 2_708


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete', 'manifest'])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    first = load_dataset('zinc', root=tmp_path)
    folder = tmp_path / 'zinc' / 'processed'
    data = folder / 'data.pt'
    raw = data.read_bytes()
    if damage == 'truncate':
        data.write_bytes(raw[: len(raw) // 2])
    elif damage == 'flip':                           # same size, one byte changed
        data.write_bytes(raw[:1000] + bytes([raw[1000] ^ 0xFF]) + raw[1001:])
    elif damage == 'delete':
        data.unlink()
    else:
        (folder / 'manifest.json').write_text('{not json')
    again = load_dataset('zinc', root=tmp_path)
    assert again['train'].cache_status.startswith('built (corrupt'), again['train'].cache_status
    for s in ('train', 'val', 'test'):
        _same(first[s], again[s])
    assert load_dataset('zinc', root=tmp_path)['test'].cache_status == 'hit'


def test_stale_manifest_is_rebuilt(tmp_path):
    load_dataset('cora', root=tmp_path)
    path = tmp_path / 'cora' / 'processed' / 'manifest.json'
    manifest = json.loads(path.read_text())
    manifest['key']['gtpe'] = '0.0.0-old'
    path.write_text(json.dumps(manifest))
    again = load_dataset('cora', root=tmp_path)
    assert again['train'].cache_status == 'built (stale: gtpe changed)'
    assert load_dataset('cora', root=tmp_path)['train'].cache_status == 'hit'


def test_changed_source_file_makes_cache_stale(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'
    (mirror / 'zinc_subset').mkdir(parents=True)
    src = MIRROR / 'zinc_subset' / 'zinc_subset.json.gz'
    shutil.copy(src, mirror / 'zinc_subset' / 'zinc_subset.json.gz')
    monkeypatch.setenv('GTPE_MIRROR', str(mirror))
    load_dataset('zinc', root=tmp_path / 'root')
    # same JSON, different gzip bytes: a different source file as far as the cache can tell
    with gzip.open(src, 'rb') as f:
        payload = f.read()
    (mirror / 'zinc_subset' / 'zinc_subset.json.gz').write_bytes(gzip.compress(payload, 1))
    with pytest.raises(DatasetError, match='zinc_subset.json.gz.*not the staged version'):
        load_dataset('zinc', root=tmp_path / 'root')
    monkeypatch.setenv('GTPE_MIRROR_VERIFY', '0')
    again = load_dataset('zinc', root=tmp_path / 'root')
    assert again['train'].cache_status == 'built (stale: files changed)'


def test_atomic_write_keeps_old_file(tmp_path):
    target = tmp_path / 'f.bin'
    target.write_bytes(b'old')

    def fail(f):
        f.write(b'half')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        atomic_write(target, fail)
    assert target.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['f.bin']


def test_failure_mid_write_leaves_no_cache(tmp_path, monkeypatch):
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 partial')
        raise OSError('simulated crash while writing')
    monkeypatch.setattr(cache_mod.torch, 'save', half_save)
    with pytest.raises(OSError, match='simulated crash'):
        load_dataset('zinc', root=tmp_path)
    folder = tmp_path / 'zinc' / 'processed'
    assert not (folder / 'manifest.json').exists() and not (folder / 'data.pt').exists()
    assert [p.name for p in folder.iterdir()] == []                 # no temporary left behind
    monkeypatch.setattr(cache_mod.torch, 'save', real_save)
    assert load_dataset('zinc', root=tmp_path)['train'].cache_status == 'built (missing)'
    # a crash while replacing a valid cache never leaves a manifest vouching for bad data
    manifest = json.loads((folder / 'manifest.json').read_text())
    manifest['key']['gtpe'] = 'older'
    (folder / 'manifest.json').write_text(json.dumps(manifest))
    monkeypatch.setattr(cache_mod.torch, 'save', half_save)
    with pytest.raises(OSError):
        load_dataset('zinc', root=tmp_path)
    assert not (folder / 'manifest.json').exists()
    monkeypatch.setattr(cache_mod.torch, 'save', real_save)
    assert load_dataset('zinc', root=tmp_path)['train'].cache_status == 'built (missing)'


def _mirror_copy(tmp_path, *folders):
    mirror = tmp_path / 'mirror'
    for folder in folders:
        shutil.copytree(MIRROR / folder, mirror / folder)
    return mirror


def test_bad_mirror_files_raise_dataset_error(tmp_path, monkeypatch):
    mirror = _mirror_copy(tmp_path, 'zinc_subset', 'planetoid')
    monkeypatch.setenv('GTPE_MIRROR', str(mirror))
    path = mirror / 'zinc_subset' / 'zinc_subset.json.gz'
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])                       # truncated
    with pytest.raises(DatasetError, match=str(path)):
        load_dataset('zinc', root=tmp_path / 'r')
    monkeypatch.setenv('GTPE_MIRROR_VERIFY', '0')                  # past the checksum: the reader
    with pytest.raises(DatasetError, match=f'{path}.*gzip'):
        load_dataset('zinc', root=tmp_path / 'r')
    path.write_bytes(gzip.compress(b'{"train": [1, 2'))
    with pytest.raises(DatasetError, match=f'{path}.*invalid JSON'):
        load_dataset('zinc', root=tmp_path / 'r')
    path.write_bytes(gzip.compress(b'{"train": {}, "val": {}, "test": {}}'))
    with pytest.raises(DatasetError, match=f'{path}.*unexpected content'):
        load_dataset('zinc', root=tmp_path / 'r')
    tar = mirror / 'planetoid' / 'Cora.tar.gz'
    tar.write_bytes(tar.read_bytes()[:2000])
    with pytest.raises(DatasetError, match=f'{tar}'):
        load_dataset('cora', root=tmp_path / 'r')
    assert not (tmp_path / 'r' / 'zinc' / 'processed' / 'data.pt').exists()
    assert not (tmp_path / 'r' / 'cora' / 'processed' / 'data.pt').exists()
    path.unlink()
    with pytest.raises(DatasetError, match=f'missing.*{path}'):
        load_dataset('zinc', root=tmp_path / 'r')
    monkeypatch.setenv('GTPE_MIRROR', str(tmp_path / 'nowhere'))
    with pytest.raises(DatasetError, match='GTPE_MIRROR'):
        load_dataset('zinc', root=tmp_path / 'r')


def test_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'zync'; did you mean 'zinc'"):
        load_dataset('zync', root=tmp_path)
    with pytest.raises(ValueError, match='ogbg-molhiv'):
        load_dataset('ogbg-molhvi', root=tmp_path)
    assert not (tmp_path / 'zync').exists()


class AddDegree(BaseTransform):
    """Out-degree per node (valid for a single graph and for a Batch alike)."""

    def forward(self, data):
        data.deg = degree(data.edge_index[0], data.num_nodes)
        return data


class Tag(BaseTransform):
    def forward(self, data):
        data.tag = torch.ones(1)
        return data


def test_pre_transform_and_transform(tmp_path):
    plain = load_dataset('zinc', root=tmp_path)
    ds = load_dataset('zinc', root=tmp_path, pre_transform=[AddDegree()], transform=Tag())
    assert plain['train'].cache_status == 'built (missing)' and ds['train'].cache_status == 'hit'
    for s, n in (('train', 10_000), ('val', 1_000), ('test', 1_000)):
        assert len(ds[s]) == n
        for i in (0, n // 2, n - 1):
            g, ref = ds[s][i], plain[s][i]
            assert torch.equal(g.x, ref.x) and torch.equal(g.edge_index, ref.edge_index)
            assert torch.equal(g.deg, degree(ref.edge_index[0], ref.num_nodes))
            assert torch.equal(g.tag, torch.ones(1))               # transform on access
            assert 'tag' not in ds[s]._data                        # ... not stored
    node = load_dataset('cora', root=tmp_path, pre_transform=AddDegree())
    assert node['train'] is node['test']
    g = node['val'][0]
    assert g.deg.shape == (2_708,) and int(g.deg.sum()) == 10_556


# --- official source (no mirror), exercised on a small OGB-format folder ------------------------

def _write_csv_gz(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, 'wt') as f:
        for r in rows:
            f.write(','.join(str(v) for v in np.atleast_1d(r)) + '\n')


def test_official_ogb_path_with_weights_only_torch_load(tmp_path, monkeypatch):
    from ogb.utils import smiles2graph
    smiles = ['CCO', 'c1ccccc1O', 'CC(=O)Nc1ccc(O)cc1', 'C[N+](C)(C)C', 'O=C=O', 'CCN(CC)CC']
    labels = [0, 1, 0, 1, 0, 0]
    graphs = [smiles2graph(s) for s in smiles]
    ogb_dir = tmp_path / 'r' / 'ogbg-molhiv' / 'official' / 'ogbg_molhiv'
    raw = ogb_dir / 'raw'
    _write_csv_gz(raw / 'edge.csv.gz', [e for g in graphs for e in g['edge_index'][:, ::2].T])
    _write_csv_gz(raw / 'edge-feat.csv.gz', [e for g in graphs for e in g['edge_feat'][::2]])
    _write_csv_gz(raw / 'node-feat.csv.gz', [x for g in graphs for x in g['node_feat']])
    _write_csv_gz(raw / 'num-node-list.csv.gz', [g['num_nodes'] for g in graphs])
    _write_csv_gz(raw / 'num-edge-list.csv.gz', [g['edge_index'].shape[1] // 2 for g in graphs])
    _write_csv_gz(raw / 'graph-label.csv.gz', labels)
    split = {'train': [5, 0, 2], 'valid': [4], 'test': [1, 3]}
    for key, idx in split.items():
        _write_csv_gz(ogb_dir / 'split' / 'scaffold' / f'{key}.csv.gz', idx)
    (ogb_dir / 'RELEASE_v1.txt').write_text('')
    monkeypatch.delenv('GTPE_MIRROR')
    ds = load_dataset('ogbg-molhiv', root=tmp_path / 'r')
    assert ds['train'].cache_status == 'built (missing)'
    for ours, key in (('train', 'train'), ('val', 'valid'), ('test', 'test')):
        assert len(ds[ours]) == len(split[key])
        for k, row in enumerate(split[key]):
            g, ref = ds[ours][k], graphs[row]
            assert torch.equal(g.x, torch.from_numpy(ref['node_feat']))
            assert torch.equal(g.edge_index, torch.from_numpy(ref['edge_index']))
            assert torch.equal(g.edge_attr, torch.from_numpy(ref['edge_feat']))
            assert g.y.shape == (1, 1) and g.y.dtype == torch.long and int(g.y) == labels[row]
    manifest = json.loads((tmp_path / 'r' / 'ogbg-molhiv' / 'processed' / 'manifest.json')
                          .read_text())
    assert manifest['key']['source'] == 'official'
    assert load_dataset('ogbg-molhiv', root=tmp_path / 'r')['test'].cache_status == 'hit'
    # the allow-listing only adds classes: PyG's own registration of Data is still there
    from torch_geometric.data import Data
    assert Data in torch.serialization.get_safe_globals()


def test_smiles_build_resumes_from_finished_chunks(tmp_path, monkeypatch):
    import gtpe.datasets.smiles as sm
    smiles = ['CCO', 'c1ccccc1', 'CC(=O)O', 'CCN', 'O=C=O', 'C1CC1', 'CCCl', 'c1ccncc1'] * 3
    ref = sm.featurize_smiles(smiles, num_workers=1, chunk_size=4, progress=False)
    bad = smiles[:20] + ['C1CC(']                          # the last chunk fails to parse
    with pytest.raises(ValueError, match='cannot parse'):
        sm.featurize_smiles(bad + smiles[21:], num_workers=1, chunk_size=4, progress=False,
                            resume_dir=tmp_path)
    assert len(list(tmp_path.glob('chunk_*.npz'))) == 5     # chunks 0..4 were kept
    calls = []
    real = sm.featurize_chunk
    monkeypatch.setattr(sm, 'featurize_chunk', lambda job: calls.append(job[0]) or real(job))
    out = sm.featurize_smiles(smiles, num_workers=1, chunk_size=4, progress=False,
                              resume_dir=tmp_path)
    assert calls == [20]                                    # only the missing chunk is computed
    for a, b in zip(out, ref):
        assert np.array_equal(np.asarray(a), np.asarray(b))
