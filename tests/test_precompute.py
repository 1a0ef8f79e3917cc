import glob
import importlib
import os

import pytest
import torch
from torch_geometric.data import Batch, Data
import torch_geometric.transforms as T
from torch_geometric.transforms import BaseTransform, Compose

from gtpe.transforms import AddExpanderEdges, AddLapPE, AddRRWP, AddRWSE, precompute

# the module (gtpe.transforms.precompute is also the name of the function)
pc = importlib.import_module('gtpe.transforms.precompute')


class AddDegree(BaseTransform):
    """A plain (not batch-aware) transform: runs graph by graph inside precompute."""

    def forward(self, data):
        data.deg = torch.bincount(data.edge_index[0], minlength=data.num_nodes)
        return data


def make_graphs(num=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num):
        n = int(torch.randint(1, 15, (1,), generator=g))
        m = int(torch.randint(0, 3 * n, (1,), generator=g))
        ei = torch.randint(0, n, (2, m), generator=g)
        out.append(Data(x=torch.randn(n, 3, generator=g), edge_index=ei,
                        y=torch.tensor([float(i)])))
    return out


TRANSFORMS = [AddRWSE(5), AddDegree(), AddRRWP(4), AddExpanderEdges(2, seed=3)]


def assert_same(a, b):
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('batch_size', [1, 5, 100])
def test_equals_per_graph_transforms(batch_size):
    ds = make_graphs()
    before = [d.clone() for d in ds]
    out = precompute(ds, TRANSFORMS, batch_size=batch_size, progress=False)
    ref = [Compose(TRANSFORMS)(d.clone()) for d in ds]
    assert len(out) == len(ds)
    for o, r in zip(out, ref):
        assert_same(o, r)
    for d, b in zip(ds, before):                       # inputs not mutated
        assert_same(d, b)
    out2 = precompute(ds, Compose(TRANSFORMS), batch_size=batch_size, progress=False)
    for o, r in zip(out2, ref):
        assert_same(o, r)


def test_cache_hit_invalidation_and_corruption(tmp_path, monkeypatch):
    ds = make_graphs(11)
    out = precompute(ds, TRANSFORMS, cache_dir=tmp_path, progress=False)
    files = glob.glob(str(tmp_path / 'pe-*.pt'))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError('recomputed although cached')
    monkeypatch.setattr(pc, '_compute', boom)
    hit = precompute(ds, TRANSFORMS, cache_dir=tmp_path, progress=False)   # cache hit
    for a, b in zip(hit, out):
        assert_same(a, b)
    monkeypatch.undo()

    # a parameter change, a version change and a data change select new entries
    precompute(ds, [AddRWSE(6)] + TRANSFORMS[1:], cache_dir=tmp_path, progress=False)
    assert len(glob.glob(str(tmp_path / 'pe-*.pt'))) == 2
    ds2 = [d.clone() for d in ds]
    ds2[3].x[0, 0] += 1.0
    assert pc.cache_key(ds2, TRANSFORMS) != pc.cache_key(ds, TRANSFORMS)
    import gtpe
    k = pc.cache_key(ds, TRANSFORMS)
    monkeypatch.setattr(gtpe, '__version__', '999')
    assert pc.cache_key(ds, TRANSFORMS) != k
    monkeypatch.undo()

    # corrupt entries (flipped byte, truncated, garbage) are detected and rebuilt
    path = pc.cache_path(str(tmp_path), pc.cache_key(ds, TRANSFORMS))
    assert path in files
    for corrupt in ('flip', 'truncate', 'garbage'):
        raw = open(path, 'rb').read()
        if corrupt == 'flip':
            raw = raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:]
        elif corrupt == 'truncate':
            raw = raw[:len(raw) // 2]
        else:
            raw = b'not a cache file'
        open(path, 'wb').write(raw)
        with pytest.warns(UserWarning, match='corrupt'):
            again = precompute(ds, TRANSFORMS, cache_dir=tmp_path, progress=False)
        for a, b in zip(again, out):
            assert_same(a, b)
        assert pc._read_entry(path) is not None                  # rewritten, valid


def test_failed_cache_write_warns_and_returns_the_result(tmp_path, monkeypatch):
    # a write that fails half-way leaves no partial or temporary file and loses no result
    ds = make_graphs(5)
    ref = precompute(ds, [AddRWSE(3)], progress=False)

    def fail(*a, **k):
        raise OSError('disk full')
    monkeypatch.setattr(pc.os, 'fsync', fail)
    with pytest.warns(UserWarning, match=r'could not write the cache entry .*disk full.*'
                                         r'returning the computed result'):
        out = precompute(ds, [AddRWSE(3)], cache_dir=tmp_path, progress=False)
    for a, b in zip(out, ref):
        assert_same(a, b)
    assert os.listdir(tmp_path) == []                            # no partial or tmp file


def test_unwritable_cache_dir_warns_and_returns_the_result(tmp_path):
    # a folder under a regular file cannot be created, even by root
    (tmp_path / 'somefile').write_text('a user file')
    ds = make_graphs(4)
    with pytest.warns(UserWarning, match=r'precompute: could not write the cache entry '
                                         r'.*somefile.*returning the computed result'):
        out = precompute(ds, [AddRWSE(3)], cache_dir=tmp_path / 'somefile' / 'sub',
                         progress=False)
    ref = precompute(ds, [AddRWSE(3)], progress=False)
    for a, b in zip(out, ref):
        assert_same(a, b)
    assert (tmp_path / 'somefile').read_text() == 'a user file'


def test_cache_cleanup_keeps_a_users_temporary_files(tmp_path):
    import time
    user = tmp_path / '.notes.tmp'
    user.write_text('my notes')
    ours = tmp_path / '.gtpe-pe-0123.pt.k1ll3d.tmp'          # what a killed writer leaves
    ours.write_bytes(b'half')
    old = time.time() - 3 * 3600
    for p in (user, ours):
        os.utime(p, (old, old))
    precompute(make_graphs(3), [AddRWSE(3)], cache_dir=tmp_path, progress=False)
    assert user.read_text() == 'my notes' and not ours.exists()


def test_graphs_with_and_without_edge_weight_are_an_error():
    ds = make_graphs(9)
    for i in (0, 2, 3, 5, 6, 7, 8):
        ds[i].edge_weight = torch.ones(ds[i].edge_index.size(1))
    for ts in ([AddRWSE(3)], [AddDegree(), AddLapPE(2)], [AddRRWP(3)]):
        with pytest.raises(ValueError, match=r"precompute: 2 of 9 graphs have no 'edge_weight' "
                                             r"\(graph indices \[1, 4\]\)"):
            precompute(ds, ts, progress=False)
    # transforms that never read edge_weight take the mix as before
    for ts in ([AddExpanderEdges(2)], [AddDegree()], [T.AddSelfLoops()]):
        out = precompute(ds, ts, progress=False)
        assert [('edge_weight' in d) for d in out] == [('edge_weight' in d) for d in ds]
    # the other order: the first graph unweighted
    ds = make_graphs(4)
    ds[3].edge_weight = torch.ones(ds[3].edge_index.size(1))
    with pytest.raises(ValueError, match=r"3 of 4 graphs have no 'edge_weight' "
                                         r"\(graph indices \[0, 1, 2\]\)"):
        precompute(ds, [AddRWSE(3)], progress=False)


def test_progress_lines_in_a_log(monkeypatch, capsys):
    # not a terminal (captured stderr): plain lines at least every GTPE_PROGRESS_INTERVAL s
    import re
    import time
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')

    class Slow(BaseTransform):
        def forward(self, data):
            time.sleep(0.03)
            return data
    precompute(make_graphs(12), [Slow()], batch_size=2, progress=True)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('precompute: ')]
    assert re.match(r'precompute: \d+/12 graph \(\d+%\), \d+ s', lines[0]), lines
    assert any(ln.endswith(' s left') for ln in lines), lines
    assert lines[-1].startswith('precompute: 12/12 graph (100%)') and lines[-1].endswith('done')
    assert len(lines) >= 3, lines                        # intermediate lines too
    assert '\r' not in err
    precompute(make_graphs(3), [Slow()], progress=False)
    assert capsys.readouterr().err == ''


def test_errors():
    with pytest.raises(ValueError):
        precompute(make_graphs(2), [AddRWSE(3)], batch_size=0)
    with pytest.raises(ValueError):
        precompute(make_graphs(2), [42])


def test_weighted_graphs_and_thread_count():
    # every graph weighted: the transforms' light collate carries edge_weight
    from gtpe.transforms import AddLapPE
    ds = make_graphs(17, seed=4)
    g = torch.Generator().manual_seed(2)
    for d in ds:
        d.edge_weight = torch.rand(d.edge_index.size(1), generator=g) + 0.1
    ts = [AddLapPE(3), AddRWSE(4), AddRRWP(3)]
    light = pc._light_batch(ds[:4], {'edge_weight'})            # the fast collate is used
    full = Batch.from_data_list(ds[:4])
    for key in ('edge_index', 'edge_weight', 'ptr', 'batch'):
        assert torch.equal(light[key], full[key]), key
    assert light.num_nodes == full.num_nodes and light.num_graphs == 4
    threads = torch.get_num_threads()
    out = precompute(ds, ts, batch_size=6, progress=False)
    assert torch.get_num_threads() == threads
    ref = [Compose(ts)(d.clone()) for d in ds]
    for o, r in zip(out, ref):
        assert_same(o, r)
    # unweighted per-graph results differ (the weights were used)
    plain = [d.clone() for d in ds]
    for d in plain:
        del d.edge_weight
    out2 = precompute(plain, [AddRWSE(4)], progress=False)
    assert any(not torch.equal(a.rwse, b.rwse) for a, b in zip(out, out2))
