"""The generated ``sbm-<N>`` family: determinism (bitwise, pinned digest), counts, degree, class
balance, the intra/inter ratio, masks, class-correlated features, the name grammar, the cache and
the progress bar. Nothing here generates more than 20,000 nodes."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.utils import coalesce, is_undirected

import gtpe._progress
from gtpe.datasets import DatasetError, dataset_info, datasets_table, describe, list_datasets
from gtpe.datasets import load_dataset
from gtpe.datasets import sbm
from gtpe.datasets.info import resolve_name

README = Path(__file__).resolve().parents[1] / 'datasets' / 'README.md'
KEYS = ('x', 'edge_index', 'y', 'train_mask', 'val_mask', 'test_mask')
# sha256 over the tensors' bytes (KEYS order) of sbm-1000, seed 0, with numpy 2.x's PCG64 streams.
# If this fails after a numpy upgrade, numpy changed a random stream: bump GENERATOR_VERSION.
DIGEST_1000 = '7764cc5b815b619fdd2388f4df80d8b1a801ae6e6aabefd5e316b90d828c91a6'


def _digest(data) -> str:
    h = hashlib.sha256()
    for key in KEYS:
        h.update(data[key].numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def g20k():
    return sbm.generate_sbm(20_000)


def test_deterministic_bitwise_and_pinned(tmp_path):
    a = load_dataset('sbm-1000', root=tmp_path / 'a', progress=False)['train'][0]
    b = load_dataset('sbm_1k', root=tmp_path / 'b', progress=False)['train'][0]
    direct = sbm.generate_sbm(1000)
    for key in KEYS:
        assert a[key].dtype == direct[key].dtype
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes() == \
            direct[key].numpy().tobytes(), key
    assert _digest(a) == DIGEST_1000
    assert _digest(sbm.generate_sbm(1000, seed=1)) != DIGEST_1000
    assert not torch.equal(sbm.generate_sbm(1001).y[:1000], direct.y)   # N is in the stream


@pytest.mark.parametrize('n', [100, 1001, 20_000])
def test_counts_degree_balance_and_ratio(n, g20k):
    g = g20k if n == 20_000 else sbm.generate_sbm(n)
    info = dataset_info(f'sbm-{n}')
    ei, y = g.edge_index, g.y
    assert g.num_nodes == info.num_nodes == n
    assert ei.size(1) == info.num_edges == 10 * n                  # mean degree exactly 10
    assert g.x.shape == (n, info.num_node_features) == (n, 16) and g.x.dtype == torch.float32
    assert ei.dtype == torch.long and y.dtype == torch.long
    assert not (ei[0] == ei[1]).any()                               # no self-loops
    assert torch.equal(coalesce(ei, num_nodes=n), ei)               # sorted, no duplicates
    assert is_undirected(ei, num_nodes=n)                           # both directions listed
    assert int(torch.bincount(ei[0], minlength=n).sum()) == 10 * n
    # blocks = classes, sizes N // 10 or N // 10 + 1
    sizes = torch.bincount(y, minlength=10).tolist()
    assert sizes == sbm.block_sizes(n) and max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    assert info.num_tasks == 10 and int(y.max()) == 9
    # intra/inter counts from the data against the documented rounding and ratio p_in/p_out = 9
    intra = int((y[ei[0]] == y[ei[1]]).sum()) // 2
    inter = ei.size(1) // 2 - intra
    pairs_in = sum(s * (s - 1) // 2 for s in sizes)
    pairs_out = n * (n - 1) // 2 - pairs_in
    expected = round(5 * n * 9 * pairs_in / (9 * pairs_in + pairs_out))
    assert (intra, inter) == sbm.edge_counts(n) and intra == expected
    assert (intra / pairs_in) / (inter / pairs_out) == pytest.approx(9, rel=0.01)


def test_documented_homophily():
    def rate(n):
        m_in, m_out = sbm.edge_counts(n)
        return m_in / (m_in + m_out)
    assert f'{rate(100):.3f}' == '0.474' and f'{rate(10_000):.4f}' == '0.4997'
    assert rate(10_000_000) == pytest.approx(9 / (9 + 10 - 1), abs=1e-4)
    doc = re.sub(r'\s+', ' ', sbm.__doc__)
    assert '0.474 at ``N = 100``, 0.4997 at ``N = 10,000``' in doc


@pytest.mark.parametrize('n', [100, 1001, 20_000])
def test_masks_disjoint_covering_random(n, g20k):
    g = g20k if n == 20_000 else sbm.generate_sbm(n)
    masks = [g[f'{s}_mask'] for s in ('train', 'val', 'test')]
    assert all(m.dtype == torch.bool and m.shape == (n,) for m in masks)
    assert torch.stack(masks).sum(0).eq(1).all()                     # disjoint and covering
    counts = [int(m.sum()) for m in masks]
    assert counts == [6 * n // 10, 2 * n // 10, n - 6 * n // 10 - 2 * n // 10]
    assert dict(zip(('train', 'val', 'test'), counts)) == dataset_info(f'sbm-{n}').splits
    assert not masks[0][: counts[0]].all()                           # not a prefix: random
    if n == 20_000:   # random over the classes too: every class 60 % +- 3 % in train
        rates = torch.bincount(g.y[masks[0]], minlength=10) / torch.bincount(g.y, minlength=10)
        assert ((rates - 0.6).abs() < 0.03).all()


def test_features_are_class_correlated(g20k):
    from scipy import integrate, stats

    x, y = g20k.x.double(), g20k.y
    # class means: 1.5 on feature y, 0 elsewhere (noise N(0, 1); 2,000 nodes per class)
    means = torch.stack([x[y == c].mean(0) for c in range(10)])       # [C, F]
    target = torch.zeros(10, 16, dtype=torch.float64)
    target[range(10), range(10)] = sbm.MEAN_SHIFT
    assert (means - target).abs().max() < 0.1
    # the Bayes rule on a node's own features (argmax of the first 10) is right 50.9 % of the time
    bayes = integrate.quad(lambda z: stats.norm.pdf(z) * stats.norm.cdf(z + 1.5) ** 9, -12, 12)[0]
    assert f'{100 * bayes:.1f} %' == '50.9 %' and '= 50.9 %' in sbm.__doc__
    acc = float((x[:, :10].argmax(1) == y).double().mean())
    assert acc == pytest.approx(bayes, abs=0.015)                    # 20k nodes: sd 0.0035
    # a linear probe (least squares on one-hot targets, fitted on train) does as well on test
    tr, te = g20k.train_mask, g20k.test_mask
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.linalg.lstsq(design[tr], torch.nn.functional.one_hot(y[tr], 10).double()).solution
    probe = float(((design[te] @ w).argmax(1) == y[te]).double().mean())
    assert probe > 0.45                                              # chance 0.1


@pytest.mark.parametrize('name, canonical', [
    ('sbm-1000', 'sbm-1000'), ('SBM_10k', 'sbm-10000'), ('sbm-1m', 'sbm-1000000'),
    ('sbm-0100', 'sbm-100'), ('sbm-10000000', 'sbm-10000000'), (' sbm-2500 ', 'sbm-2500'),
])
def test_name_grammar(name, canonical):
    assert resolve_name(name) == canonical
    assert dataset_info(name).name == canonical


@pytest.mark.parametrize('name, fragment', [
    ('sbm-0', "dataset 'sbm-0': 0 nodes is out of range"),
    ('sbm-99', "dataset 'sbm-99': 99 nodes is out of range"),
    ('sbm-11m', "dataset 'sbm-11m': 11,000,000 nodes is out of range"),
    ('sbm-abc', "unknown dataset 'sbm-abc': sbm-<N> takes a node count"),
    ('SBM-1.5m', "unknown dataset 'SBM-1.5m': sbm-<N> takes a node count"),
    ('sbm-', "unknown dataset 'sbm-': sbm-<N> takes a node count"),
])
def test_bad_names_are_one_clear_line(name, fragment, tmp_path):
    for call in (lambda: dataset_info(name),
                 lambda: load_dataset(name, root=tmp_path, progress=False)):
        with pytest.raises(DatasetError) as excinfo:
            call()
        msg = str(excinfo.value)
        assert '\n' not in msg and msg.startswith(fragment), msg
        assert 'from 100 to 10,000,000' in msg and 'sbm-1m' in msg
    assert not any(tmp_path.iterdir())                              # nothing generated
    with pytest.raises(DatasetError, match=r'known datasets: .*, sbm-<N>\)'):
        dataset_info('sbn')


@pytest.mark.parametrize('kwargs, message', [
    ({'num_nodes': 99}, 'num_nodes must be in [100, 10,000,000], got 99'),
    ({'num_nodes': 1000.0}, 'num_nodes must be an integer, got 1000.0'),
    ({'num_nodes': True}, 'num_nodes must be an integer'),
    ({'num_nodes': 1000, 'seed': -1}, 'seed must be a non-negative integer, got -1'),
])
def test_generator_bad_input(kwargs, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        sbm.generate_sbm(**kwargs)
    assert sbm.generate_sbm(np.int64(100)).num_nodes == 100


def test_registry_listing_cache_and_notice(tmp_path, monkeypatch, capsys):
    listed = [f'sbm-{n}' for n in sbm.LISTED_SIZES]
    assert list_datasets()[-4:] == listed
    table = datasets_table(root=tmp_path)
    row = next(r for r in table.splitlines() if r.startswith('sbm-1000000 '))
    assert '600,000/200,000/200,000 nodes' in row and 'generated' in row
    info = dataset_info('sbm-1m')
    assert (info.level, info.task, info.metric, info.node_input, info.node_in_dim,
            info.edge_input, info.generator, info.directed) == \
        ('node', 'multiclass', 'accuracy', 'linear', 16, None, 'sbm', False)
    monkeypatch.setenv('GTPE_MIRROR', str(tmp_path / 'no-such-mirror'))  # plays no part
    ds = load_dataset('sbm-1000', root=tmp_path)
    err = capsys.readouterr().err
    assert f'gtpe: generating sbm-1000 (gtpe.datasets.sbm, seed 0) into {tmp_path / "sbm-1000"} ' \
           f'(first time only, about a second)' in err
    assert ds['train'] is ds['val'] is ds['test'] and len(ds['train']) == 1
    again = load_dataset('sbm-1k', root=tmp_path)
    assert capsys.readouterr().err == '' and again['val'].cache_status == 'hit'
    manifest = json.loads((tmp_path / 'sbm-1000' / 'processed' / 'manifest.json').read_text())
    assert manifest['key']['generator'] == sbm.cache_params(1000)
    assert manifest['key']['numpy'] == np.__version__
    d = describe('sbm-1000', root=tmp_path)
    assert d['source_kind'] == 'generated' and d['cached'] and d['num_edges'] == 10_000
    monkeypatch.setattr(sbm, 'GENERATOR_VERSION', sbm.GENERATOR_VERSION + 1)
    rebuilt = load_dataset('sbm-1000', root=tmp_path, progress=False)
    assert rebuilt['train'].cache_status == 'built (stale: generator changed)'
    assert _digest(rebuilt['train'][0]) == DIGEST_1000


def test_progress_bar_over_the_edges_for_big_n(monkeypatch):
    bars = []
    real = gtpe._progress.progress_bar

    def spy(*args, **kwargs):
        bar = real(*args, **kwargs)
        bars.append((kwargs, bar))
        return bar

    monkeypatch.setattr(gtpe._progress, 'progress_bar', spy)
    assert sbm.PROGRESS_MIN_NODES == 100_000 and 'from ``N >= 100,000``' in sbm.__doc__
    sbm.generate_sbm(1000, progress=True)
    assert bars[-1][0]['enabled'] is False                          # small: no bar
    monkeypatch.setattr(sbm, 'PROGRESS_MIN_NODES', 1000)
    sbm.generate_sbm(1000, progress=True)
    kwargs, bar = bars[-1]
    assert kwargs['enabled'] is True and kwargs['desc'] == 'sbm-1000: edges'
    assert kwargs['total'] == bar.n == 5000                         # every edge counted once
    sbm.generate_sbm(1000, progress=False)
    assert bars[-1][0]['enabled'] is False
    for name in ('sbm-1000', 'sbm-1000000'):
        assert f'`{name}`' in README.read_text()
