"""The PE cache key covers every transform's class and full parameter state; transforms whose
state cannot be fingerprinted are computed without the cache (one warning naming them)."""
import dataclasses
import enum
import functools
import glob
import importlib
import os
import pathlib
import random
import re
import threading
import warnings

import numpy as np
import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform, Compose

from gtpe.transforms import AddExpanderEdges, AddLapPE, AddRRWP, AddRWSE, precompute

pc = importlib.import_module('gtpe.transforms.precompute')


def graphs(num=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        n = int(torch.randint(5, 9, (1,), generator=g))
        i = torch.arange(n)
        ring = torch.stack([torch.cat([i, (i + 1) % n]), torch.cat([(i + 1) % n, i])])
        out.append(Data(x=torch.randn(n, 2, generator=g), edge_index=ring))
    return out


class Scale(BaseTransform):
    """A user's transform with a parameter (its repr does not show it)."""

    def __init__(self, factor):
        self.factor = factor

    def forward(self, data):
        data.x = data.x * self.factor
        return data


class Apply(BaseTransform):
    """A user's transform holding a function."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, data):
        return self.fn(data)


class Mode(enum.Enum):
    A = 1
    B = 2


@dataclasses.dataclass
class Opts:
    k: int
    mode: Mode


class Slotted(BaseTransform):
    __slots__ = ('k',)

    def __init__(self, k):
        self.k = k

    def forward(self, data):
        return data


def fp(t):
    return pc.transform_fingerprint(t)


def files(path):
    return sorted(glob.glob(str(path / 'pe-*.pt')))


def test_pyg_random_walk_pe_parameters_select_new_entries(tmp_path):
    # both print 'AddRandomWalkPE()': the old repr key returned the 20-step encoding for 8
    ds = graphs()
    a = precompute(ds, T.AddRandomWalkPE(20), cache_dir=tmp_path, progress=False)
    b = precompute(ds, T.AddRandomWalkPE(8), cache_dir=tmp_path, progress=False)
    assert a[0].random_walk_pe.shape[1] == 20 and b[0].random_walk_pe.shape[1] == 8
    assert len(files(tmp_path)) == 2
    c = precompute(ds, T.AddRandomWalkPE(8), cache_dir=tmp_path, progress=False)   # hit
    assert torch.equal(c[3].random_walk_pe, b[3].random_walk_pe)
    assert len(files(tmp_path)) == 2
    assert fp(T.AddRandomWalkPE(8, attr_name='a')) != fp(T.AddRandomWalkPE(8))


def test_custom_transform_compose_and_laplacian(tmp_path):
    ds = graphs()
    one = precompute(ds, Scale(2.0), cache_dir=tmp_path, progress=False)
    three = precompute(ds, Scale(3.0), cache_dir=tmp_path, progress=False)
    assert torch.equal(three[2].x, ds[2].x * 3.0) and torch.equal(one[2].x, ds[2].x * 2.0)
    # Compose and a list of the same transforms give the same key; the order matters
    assert pc.cache_key(ds, Compose([Scale(2.0), AddRWSE(3)])) == \
        pc.cache_key(ds, [Scale(2.0), AddRWSE(3)])
    assert pc.cache_key(ds, [Scale(2.0), AddRWSE(3)]) != pc.cache_key(ds, [AddRWSE(3), Scale(2.0)])
    # a Compose nested as an attribute is fingerprinted through
    assert fp(Scale(Compose([T.AddRandomWalkPE(3)]))) != fp(Scale(Compose([T.AddRandomWalkPE(4)])))
    lap = [T.AddLaplacianEigenvectorPE(2), T.AddLaplacianEigenvectorPE(3),
           T.AddLaplacianEigenvectorPE(2, is_undirected=True),
           T.AddLaplacianEigenvectorPE(2, which='SA')]
    assert len({fp(t) for t in lap}) == 4
    assert fp(T.AddLaplacianEigenvectorPE(2)) == fp(T.AddLaplacianEigenvectorPE(2))
    precompute(ds, T.AddLaplacianEigenvectorPE(2), cache_dir=tmp_path, progress=False)
    precompute(ds, T.AddLaplacianEigenvectorPE(3), cache_dir=tmp_path, progress=False)
    assert len(files(tmp_path)) == 4


def test_library_versions_are_part_of_the_key(monkeypatch):
    import torch_geometric
    ds = graphs(2)
    before = pc.cache_key(ds, T.AddRandomWalkPE(3))
    monkeypatch.setattr(torch_geometric, '__version__', '0.0.1')
    assert pc.cache_key(ds, T.AddRandomWalkPE(3)) != before
    assert pc.cache_key(ds, T.AddRandomWalkPE(3)) == pc.cache_key(ds, [T.AddRandomWalkPE(3)])


def test_gtpe_transforms_are_fingerprintable_and_every_parameter_counts():
    variants = [AddRWSE(4), AddRWSE(5), AddRWSE(4, method='mc'), AddRWSE(4, seed=1),
                AddRWSE(4, num_walks=3), AddRWSE(4, dense_max_nodes=3),
                AddRRWP(4), AddRRWP(4, dense_max_nodes=5),
                AddExpanderEdges(2), AddExpanderEdges(2, seed=1), AddExpanderEdges(2, tol=0.1),
                AddLapPE(2), AddLapPE(3), AddLapPE(2, normalization=None)]
    keys = [fp(t) for t in variants]
    assert None not in keys and len(set(keys)) == len(variants)
    # the same parameters give the same key in a fresh object (no identity or address)
    assert fp(AddRWSE(4, method='mc')) == keys[2]


def test_value_types_are_distinguished_and_canonical():
    assert len({fp(Scale(v)) for v in (1, 1.0, True, '1', None, (1,), [1], b'1')}) == 8
    assert fp(Scale(0.0)) != fp(Scale(-0.0))
    assert fp(Scale({'a': 1, 'b': 2})) == fp(Scale({'b': 2, 'a': 1}))
    assert fp(Scale({'a': 1})) != fp(Scale({'a': 2}))
    # equal sets iterating in different orders (as sets of strings do across processes with
    # another PYTHONHASHSEED) give one key
    s1, s2 = {8, 16}, {16, 8}
    assert list(s1) != list(s2)
    assert fp(Scale(s1)) == fp(Scale(s2)) == fp(Scale(frozenset(s1)))
    assert fp(Scale({8})) != fp(Scale(s1))
    t = torch.arange(6.0)
    assert fp(Scale(t)) == fp(Scale(t.clone())) != fp(Scale(t.double()))
    assert fp(Scale(t)) != fp(Scale(t.view(2, 3)))
    u = t.clone()
    u[5] = 7
    assert fp(Scale(t)) != fp(Scale(u))
    assert fp(Scale(np.arange(3))) != fp(Scale(np.arange(3).astype(np.int32)))
    assert fp(Scale(np.float32(1))) != fp(Scale(1.0))
    assert fp(Scale(Opts(1, Mode.A))) != fp(Scale(Opts(1, Mode.B)))
    assert fp(Scale(torch.float32)) != fp(Scale(torch.float64))
    assert fp(Slotted(1)) != fp(Slotted(2)) and fp(Slotted(1)) is not None
    assert fp(Scale(torch.Size([2, 3]))) != fp(Scale((2, 3))) != fp(Scale(torch.Size([3, 2])))
    assert fp(Scale(1 + 2j)) != fp(Scale(1 - 2j))
    assert fp(Scale(torch.device('cpu'))) != fp(Scale(torch.device('meta')))
    assert fp(Scale(Data)) != fp(Scale(Compose)) and fp(Scale(Data)) == fp(Scale(Data))
    assert fp(Scale(range(3))) != fp(Scale(range(4))) != fp(Scale(slice(0, 4)))
    assert fp(Scale(pathlib.Path('a'))) != fp(Scale(pathlib.Path('b'))) is not None
    loop = Scale(None)
    loop.factor = loop                                   # a cycle terminates
    assert fp(loop) == fp(loop)
    assert fp(Scale(torch.bfloat16)) is not None and fp(Scale(torch.ones(2).bfloat16())) is not None


@pytest.mark.parametrize('make,what', [
    (lambda: (lambda d: d), 'lambda'),
    (lambda: print, 'function'),
    (lambda: random.Random(0), 'Random'),
    (lambda: torch.Generator().manual_seed(0), 'Generator'),
    (lambda: np.random.default_rng(0), 'Generator'),
    (lambda: threading.Lock(), 'lock'),
    (lambda: np.array([object()]), 'object'),
    (lambda: functools.partial(max, 1), 'partial'),
    (lambda: [1, str.upper], 'function'),
    (lambda: 'abc'.upper, 'function'),
    (lambda: Scale(1).forward, 'function'),
    (lambda: np, 'module'),
    (lambda: torch.eye(2).to_sparse(), 'sparse'),
])
def test_unfingerprintable_state(make, what):
    reason = pc.fingerprint_problem(Scale(make()))
    assert reason is not None and what in reason and 'factor' in reason
    assert fp(Scale(make())) is None


def test_open_file_is_unfingerprintable(tmp_path):
    with open(tmp_path / 'f.txt', 'w') as f:
        assert 'TextIOWrapper' in pc.fingerprint_problem(Scale(f))


def test_lambda_is_computed_without_cache_and_warned_once(tmp_path):
    ds = graphs()

    def add_one(d):
        d.y = torch.ones(1)
        return d
    cases = [(lambda d: add_one(d), r'transform test_precompute_key\.test_lambda.*<lambda> '
                                    r'\(it is a lambda defined at test_precompute_key\.py:\d+'),
             (Apply(lambda d: d), r'transform test_precompute_key\.Apply \(Apply\.fn is a '
                                  r'lambda defined at'),
             ([AddRWSE(3), add_one], r'transform test_precompute_key\..*add_one \(it is a '
                                     r'function')]
    for t, pattern in cases:
        with pytest.warns(UserWarning) as rec:
            out = precompute(ds, t, cache_dir=tmp_path, progress=False, batch_size=2)
        msgs = [str(r.message) for r in rec if 'fingerprint' in str(r.message)]
        assert len(msgs) == 1, msgs
        assert re.search(pattern, msgs[0]), msgs[0]
        assert 'computing without the disk cache' in msgs[0]
        ref = t if isinstance(t, list) else [t]
        assert len(out) == len(ds) and torch.equal(out[2].x, ds[2].x)
        assert [sorted(o.keys()) for o in out] == \
            [sorted(Compose(ref)(d.clone()).keys()) for d in ds]
        assert files(tmp_path) == [] and os.listdir(tmp_path) == []   # nothing written
    # fingerprintable transforms still cache, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        precompute(ds, AddRWSE(3), cache_dir=tmp_path, progress=False)
    assert len(files(tmp_path)) == 1


def test_load_dataset_pre_transform_key():
    # load_dataset's pre_transform goes through precompute's cache (<root>/cora/pe)
    from gtpe.datasets import load_dataset
    a = load_dataset('cora', pre_transform=T.AddRandomWalkPE(3), progress=False)
    b = load_dataset('cora', pre_transform=T.AddRandomWalkPE(2), progress=False)
    assert a['train'][0].random_walk_pe.shape == (2708, 3)
    assert b['train'][0].random_walk_pe.shape == (2708, 2)
