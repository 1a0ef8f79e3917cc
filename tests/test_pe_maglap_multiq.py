"""Multi-q AddMagLapPE (Huang et al., ICLR 2025): blocks equal the single-q transform bit for
bit, a dense complex128 numpy reference per block, validation, precompute and its cache key."""
import importlib

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.transforms import AddMagLapPE, precompute
from test_pe_maglap import dicycle, ref_magnetic_laplacian

pc = importlib.import_module('gtpe.transforms.precompute')


def random_digraphs(sizes, seed=0, density=2):
    gen = torch.Generator().manual_seed(seed)
    return [Data(edge_index=torch.randint(0, n, (2, density * n), generator=gen), num_nodes=n)
            for n in sizes]


def assert_blocks_equal(out, data, k, qs, **kw):
    """Every block of ``out`` is, bit for bit, the single-q transform's output."""
    assert out.maglap_pe.shape == (data.num_nodes, k * len(qs), 2)
    assert out.maglap_eigval.shape == (data.num_nodes, k * len(qs))
    for b, q in enumerate(qs):
        single = AddMagLapPE(k=k, q=q, **kw)(data.clone())
        assert torch.equal(out.maglap_pe[:, b * k:(b + 1) * k], single.maglap_pe)
        assert torch.equal(out.maglap_eigval[:, b * k:(b + 1) * k], single.maglap_eigval)


# ----------------------------------------------------------------------------- output
@pytest.mark.parametrize('q_absolute', [False, True])
def test_blocks_equal_single_q_runs_exactly(q_absolute):
    qs = [0.25, 0.0, 0.1]  # order given is kept; q = 0 (real Laplacian) allowed
    t = AddMagLapPE(k=4, q=qs, q_absolute=q_absolute)
    graphs = random_digraphs([1, 3, 6, 11], seed=1)  # N < k pads columns in every block
    graphs.append(Data(edge_index=dicycle(7), num_nodes=7))
    for g in graphs:
        out = t(g.clone())
        assert out.maglap_pe.dtype == torch.float32 and out.maglap_eigval.dtype == torch.float32
        assert_blocks_equal(out, g, 4, qs, q_absolute=q_absolute)
    small = t(graphs[1].clone())  # 3 nodes, k = 4: column 3 of every block is padding
    for b in range(3):
        assert torch.all(small.maglap_pe[:, 4 * b + 3] == 0)
        assert torch.all(small.maglap_eigval[:, 4 * b + 3] == 0)
        assert torch.all(small.maglap_pe[:, 4 * b:4 * b + 3].abs().sum((0, 2)) > 0)
    # the blocks really differ (q changes the encoding of a directed graph)
    big = t(graphs[3].clone())
    assert not torch.equal(big.maglap_eigval[:, :4], big.maglap_eigval[:, 4:8])


def test_batch_blocks_equal_single_q_runs_and_to_data_list():
    qs = (0.05, 0.3)
    t = AddMagLapPE(k=5, q=qs)
    graphs = random_digraphs([2, 9, 4, 16], seed=2)
    graphs.append(Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=3))
    batch = t(Batch.from_data_list(graphs))
    assert_blocks_equal(batch, Batch.from_data_list(graphs), 5, qs)
    for g, part in zip(graphs, batch.to_data_list()):
        alone = t(g.clone())
        assert torch.equal(part.maglap_pe, alone.maglap_pe)
        assert torch.equal(part.maglap_eigval, alone.maglap_eigval)


def test_dense_float64_reference_two_qs():
    # 6 nodes: a directed path 0->1->2->3, a reciprocal pair 3<->4, 4->5, 5->1 (a cycle with
    # 4 one-way edges: flux 4 * 2 pi q, i.e. 0.8 pi and 1.6 pi = -0.4 pi (mod 2 pi) here)
    ei = torch.tensor([[0, 1, 2, 3, 4, 4, 5], [1, 2, 3, 4, 3, 5, 1]])
    n, k, qs = 6, 4, [0.1, 0.2]
    out = AddMagLapPE(k=k, q=qs, q_absolute=True)(Data(edge_index=ei, num_nodes=n))
    vecs = torch.view_as_complex(out.maglap_pe.contiguous()).numpy().astype(np.complex128)
    for b, q in enumerate(qs):
        lap = ref_magnetic_laplacian(ei.numpy(), n, q, q_absolute=True)
        ref_vals = np.linalg.eigh(lap)[0]
        block = slice(b * k, (b + 1) * k)
        np.testing.assert_allclose(out.maglap_eigval[:, block].numpy(),
                                   np.broadcast_to(ref_vals[:k], (n, k)), atol=1e-6)
        v, lam = vecs[:, block], ref_vals[:k]
        assert np.abs(lap @ v - v * lam).max() < 1e-5          # eigenvectors of L^(q_b)
        np.testing.assert_allclose(v.conj().T @ v, np.eye(k), atol=1e-5)
    # the two potentials give different spectra, so the blocks carry different information
    assert np.abs(np.linalg.eigvalsh(ref_magnetic_laplacian(ei.numpy(), n, 0.1, True))[:k] -
                  np.linalg.eigvalsh(ref_magnetic_laplacian(ei.numpy(), n, 0.2, True))[:k]
                  ).max() > 1e-2


# ----------------------------------------------------------------------------- API
def test_float_q_is_unchanged_and_one_element_list_is_the_same_transform():
    t = AddMagLapPE(k=3, q=0.25)
    assert t.q == 0.25 and type(t.q) is float and t.qs == (0.25,)
    assert repr(t) == ("AddMagLapPE(k=3, q=0.25, q_absolute=False, edge_weight='edge_weight', "
                       "sparse_threshold=2000, sparse_solver='auto')")
    for one in ([0.25], (0.25,)):
        u = AddMagLapPE(k=3, q=one)
        assert type(u.q) is float and u.q == 0.25 and repr(u) == repr(t) and vars(u) == vars(t)
    g = random_digraphs([7], seed=3)[0]
    a, b = t(g.clone()), AddMagLapPE(k=3, q=[0.25])(g.clone())
    assert torch.equal(a.maglap_pe, b.maglap_pe) and torch.equal(a.maglap_eigval, b.maglap_eigval)
    assert pc.cache_key([g], t) == pc.cache_key([g], AddMagLapPE(k=3, q=[0.25]))


def test_multi_q_repr_and_state():
    t = AddMagLapPE(k=2, q=[0.1, 0, 0.5])
    assert t.q == (0.1, 0.0, 0.5) and all(type(v) is float for v in t.q)
    assert t.qs == t.q
    assert repr(t) == ("AddMagLapPE(k=2, q=[0.1, 0.0, 0.5], q_absolute=False, "
                       "edge_weight='edge_weight', sparse_threshold=2000, sparse_solver='auto')")
    assert repr(t) != repr(AddMagLapPE(k=2, q=[0.1, 0.5, 0.0]))


@pytest.mark.parametrize('q', [[], (), [0.1, float('nan')], [0.1, float('inf')], [-0.1],
                               [0.2, -1e-9], ['0.1'], [0.1, None], [True, 0.2], [[0.1]],
                               [0.1, 0.2, 0.1], (0.0, 0), '0.25', None, {0.1, 0.2},
                               np.array([0.1, 0.2]), torch.tensor(0.1)])
def test_invalid_q_lists(q):
    with pytest.raises(ValueError, match='^q must'):
        AddMagLapPE(k=4, q=q)


def test_duplicates_error_names_the_repeat():
    with pytest.raises(ValueError, match='repeat'):
        AddMagLapPE(q=[0.1, 0.2, 0.1])


# ----------------------------------------------------------------------------- precompute
def test_precompute_equals_per_graph_calls_in_any_batch_position():
    t = AddMagLapPE(k=4, q=[0.25, 0.05])
    graphs = random_digraphs([3, 8, 5, 12, 1, 7, 10], seed=4)
    for g in graphs:
        g.x = torch.randn(g.num_nodes, 2)
    per_graph = [t(g.clone()) for g in graphs]
    out = precompute(graphs, t, batch_size=3, progress=False)  # 3 chunks
    for ref, o, g in zip(per_graph, out, graphs):
        assert torch.equal(o.maglap_pe, ref.maglap_pe)
        assert torch.equal(o.maglap_eigval, ref.maglap_eigval)
        assert torch.equal(o.x, g.x)
    order = [6, 2, 0, 5, 1, 4, 3]  # each graph in another chunk and position
    moved = precompute([graphs[i] for i in order], t, batch_size=4, progress=False)
    for i, o in zip(order, moved):
        assert torch.equal(o.maglap_pe, per_graph[i].maglap_pe)
        assert torch.equal(o.maglap_eigval, per_graph[i].maglap_eigval)


def test_precompute_collates_only_the_keys_it_reads(monkeypatch):
    # batch_keys = (edge_index, edge_weight): precompute builds its light Batch, never PyG's
    # full collate (which would fail here)
    t = AddMagLapPE(k=3, q=[0.1, 0.2])
    assert t.batch_keys == ('edge_index', 'edge_weight')
    graphs = random_digraphs([4, 6, 5], seed=5)
    for g in graphs:
        g.edge_weight = torch.rand(g.edge_index.size(1)) + 0.5
    expect = [t(g.clone()) for g in graphs]

    def no_full_collate(*args, **kwargs):
        raise AssertionError('full collate used')

    monkeypatch.setattr(pc.Batch, 'from_data_list', no_full_collate)
    out = precompute(graphs, t, batch_size=8, progress=False)
    for o, ref in zip(out, expect):
        assert torch.equal(o.maglap_pe, ref.maglap_pe)
    del graphs[1].edge_weight  # an attribute it reads on some graphs only: one clear error
    with pytest.raises(ValueError, match='edge_weight'):
        precompute(graphs, t, progress=False)


def test_cache_key_distinguishes_lists_and_shares_equal_ones(tmp_path):
    graphs = random_digraphs([5, 6], seed=6)
    key = lambda q: pc.cache_key(graphs, AddMagLapPE(k=4, q=q))  # noqa: E731
    assert key([0.1, 0.25]) == key((0.1, 0.25)) == key([0.1, 0.25])
    assert key([0, 0.25]) == key([0.0, 0.25])
    assert len({key([0.1, 0.25]), key([0.25, 0.1]), key([0.1, 0.2]), key([0.1, 0.25, 0.3]),
                key(0.1), key(0.25)}) == 6
    # a cached multi-q entry reads back exactly
    t = AddMagLapPE(k=4, q=[0.1, 0.25])
    first = precompute(graphs, t, cache_dir=tmp_path, progress=False)
    stats = {}
    again = precompute(graphs, AddMagLapPE(k=4, q=(0.1, 0.25)), cache_dir=tmp_path,
                       progress=False, stats=stats)
    assert stats['cached'] is True and len(list(tmp_path.glob('pe-*.pt'))) == 1
    for a, b in zip(first, again):
        assert torch.equal(a.maglap_pe, b.maglap_pe) and a.maglap_pe.shape[1] == 8
