"""MagLapPEEncoder: num_q (block ids), phase='canonical' unchanged bit for bit, and
phase='invariant' (exact per-column phase invariance, equivariance, isolation, features against
a float64 brute-force reference)."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.nn.encoders import MagLapPEEncoder
from gtpe.nn.encoders.lap import EigenSetEncoder, _random_signs, padding_mask
from gtpe.nn.encoders.maglap import _phase_invariant_features
from gtpe.transforms import AddMagLapPE
from graph_utils import permuted


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digraph(n, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(n - 1)
    ei = torch.cat([torch.stack([s, s + 1]), torch.randint(0, n, (2, n), generator=g)], 1)
    return Data(edge_index=ei, num_nodes=n)


def pe_batch(k=4, q=(0.1, 0.25), sizes=(3, 7, 5)):
    """Batch of directed graphs with (multi-q) MagLapPE; the 3-node graph pads a column."""
    t = AddMagLapPE(k=k, q=list(q))
    return Batch.from_data_list([t(digraph(n, seed=n)) for n in sizes])


def rotate(pe, theta):
    """Multiply column c of ``pe [N, K, 2]`` by e^{i theta_c} (float64, then back to float32)."""
    z = torch.view_as_complex(pe.double().contiguous()) * torch.polar(
        torch.ones_like(theta), theta)
    return torch.view_as_real(z).float()


def old_forward(enc, maglap_pe, maglap_eigval, batch=None, num_graphs=None):
    """The encoder's forward before num_q/phase existed (kept here verbatim as the reference)."""
    pad = padding_mask(maglap_pe, batch, num_graphs)
    vec = torch.nan_to_num(maglap_pe, nan=0.0)
    val = torch.nan_to_num(maglap_eigval, nan=0.0).masked_fill(pad, 0.0)
    if enc.training and enc.sign_flip:
        vec = vec * _random_signs(enc.k, vec).view(1, -1, 1)
    return enc.net(vec, val, pad)


# ----------------------------------------------------------------------------- canonical
@pytest.mark.parametrize("encoder,sign_invariant", [("deepset", False), ("deepset", True),
                                                    ("transformer", False),
                                                    ("transformer", True)])
def test_canonical_single_q_is_the_old_encoder_bit_for_bit(encoder, sign_invariant):
    b = pe_batch(k=5, q=(0.25,))
    torch.manual_seed(3)
    enc = MagLapPEEncoder(5, 8, encoder=encoder, sign_invariant=sign_invariant)
    torch.manual_seed(3)  # the old constructor: one EigenSetEncoder over 3-feature tokens
    old = EigenSetEncoder(3, 8, encoder, None, 2, 4, sign_invariant)
    assert {k: v.shape for k, v in enc.net.state_dict().items()} == \
        {k: v.shape for k, v in old.state_dict().items()}
    for (name, p), (_, q) in zip(enc.net.state_dict().items(), old.state_dict().items()):
        assert torch.equal(p, q), name  # same parameters from the same seed
    assert list(enc.state_dict()) == [f"net.{k}" for k in old.state_dict()]  # checkpoints load
    for training in (False, True):
        enc.train(training)
        torch.manual_seed(11)
        new = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
        torch.manual_seed(11)
        ref = old_forward(enc, b.maglap_pe, b.maglap_eigval, b.batch)
        assert torch.equal(new, ref)
    torch.manual_seed(11)
    assert torch.equal(enc(b.maglap_pe, b.maglap_eigval, b.batch), ref)  # edge_index ignored


def test_multi_q_tokens_carry_their_block():
    k, b = 4, pe_batch(k=4, q=(0.1, 0.25))
    torch.manual_seed(0)
    for phase in ("canonical", "invariant"):
        enc = MagLapPEEncoder(k, 6, num_q=2, phase=phase).eval()
        assert enc.net.in_dim == (3 if phase == "canonical" else 6) + 2
        out = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
        assert out.shape == (15, 6) and torch.isfinite(out).all()
        # swapping the two blocks gives the very same set of (vector, eigenvalue) tokens: only
        # the block id tells them apart
        swap = torch.cat([torch.arange(k, 2 * k), torch.arange(k)])
        other = enc(b.maglap_pe[:, swap], b.maglap_eigval[:, swap], b.batch,
                    edge_index=b.edge_index)
        assert (other - out).abs().max() > 1e-4


def test_multi_q_sign_flips_are_per_column_and_sign_invariant_keeps_block_ids():
    b = pe_batch(k=4, q=(0.1, 0.25))
    torch.manual_seed(0)
    enc = MagLapPEEncoder(4, 6, encoder="transformer", sign_invariant=True, num_q=2).train()
    ref = enc(b.maglap_pe, b.maglap_eigval, b.batch)
    signs = torch.tensor([1, -1, -1, 1, -1, 1, 1, -1.0]).view(1, -1, 1)
    torch.testing.assert_close(enc(b.maglap_pe * signs, b.maglap_eigval, b.batch), ref,
                               atol=1e-5, rtol=1e-5)
    plain = MagLapPEEncoder(4, 6, num_q=2).train()
    outs = {tuple(plain(b.maglap_pe, b.maglap_eigval, b.batch)[0].tolist()) for _ in range(8)}
    assert len(outs) > 1  # random sign flips over the 8 columns in training


# ----------------------------------------------------------------------------- invariant
def brute_force_features(pe, edge_index):
    """float64 loops over the edge list: |z_i|, z_i conj(z_j) summed over in- and out-edges."""
    z = pe[..., 0].double().numpy() + 1j * pe[..., 1].double().numpy()
    n, K = z.shape
    into, out = np.zeros((n, K), complex), np.zeros((n, K), complex)
    for j, i in edge_index.T.tolist():  # edge j -> i
        into[i] += z[i] * np.conj(z[j])
        out[j] += z[j] * np.conj(z[i])
    return np.stack([np.abs(z), into.real, into.imag, out.real, out.imag], -1)


def test_invariant_features_match_brute_force_reference():
    b = pe_batch(k=4, q=(0.1, 0.25))
    feats = _phase_invariant_features(b.maglap_pe, b.edge_index)
    np.testing.assert_allclose(feats.double().numpy(),
                               brute_force_features(b.maglap_pe, b.edge_index), atol=1e-6)
    # sums over the edges as given: a duplicate edge counts twice, a self-loop adds |z_i|^2
    pe = torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]])  # z_0 = 0.6 + 0.8i, z_1 = i
    f = _phase_invariant_features(pe, torch.tensor([[0, 0, 1], [1, 1, 1]]))
    # node 1: in-edges 0->1 twice and 1->1: 2 * i * conj(z_0) + |i|^2 = 2 * (0.8 + 0.6i) + 1
    torch.testing.assert_close(f[1, 0], torch.tensor([1.0, 2.6, 1.2, 1.0, 0.0]))
    torch.testing.assert_close(f[0, 0], torch.tensor([1.0, 0.0, 0.0, 1.6, -1.2]))


@pytest.mark.parametrize("encoder", ["deepset", "transformer"])
def test_invariant_to_a_phase_per_column(encoder):
    b = pe_batch(k=4, q=(0.1, 0.25))
    torch.manual_seed(1)
    enc = MagLapPEEncoder(4, 8, encoder=encoder, num_q=2, phase="invariant").eval()
    ref = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        theta = torch.rand(8, generator=gen, dtype=torch.float64) * 2 * math.pi
        out = enc(rotate(b.maglap_pe, theta), b.maglap_eigval, b.batch,
                  edge_index=b.edge_index)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # ... while the canonical encoder does depend on the phase
    can = MagLapPEEncoder(4, 8, encoder=encoder, num_q=2).eval()
    assert (can(rotate(b.maglap_pe, theta), b.maglap_eigval, b.batch) -
            can(b.maglap_pe, b.maglap_eigval, b.batch)).abs().max() > 1e-4
    # not invariant to mixing two columns (a basis change inside an eigenspace)
    c, s = math.cos(0.7), math.sin(0.7)
    mixed = b.maglap_pe.clone()
    mixed[:, 0], mixed[:, 1] = c * b.maglap_pe[:, 0] - s * b.maglap_pe[:, 1], \
        s * b.maglap_pe[:, 0] + c * b.maglap_pe[:, 1]
    assert (enc(mixed, b.maglap_eigval, b.batch, edge_index=b.edge_index) - ref).abs().max() \
        > 1e-4


def test_invariant_loses_the_phase_between_non_adjacent_nodes():
    # two components: rotating a column on one of them only changes z_i conj(z_j) for pairs
    # across components (never adjacent), and the output not at all
    g = Batch.from_data_list([digraph(5, 1), digraph(6, 2)])
    data = AddMagLapPE(k=3, q=0.2)(Data(edge_index=g.edge_index, num_nodes=11))
    torch.manual_seed(2)
    enc = MagLapPEEncoder(3, 8, phase="invariant").eval()
    ref = enc(data.maglap_pe, data.maglap_eigval, edge_index=data.edge_index)
    part = data.maglap_pe.clone()
    part[5:] = rotate(part[5:], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(enc(part, data.maglap_eigval, edge_index=data.edge_index), ref,
                               atol=1e-5, rtol=0)


def test_invariant_sees_edge_direction():
    b = pe_batch(k=4, q=(0.1, 0.25))
    torch.manual_seed(4)
    enc = MagLapPEEncoder(4, 8, num_q=2, phase="invariant").eval()
    ref = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
    flipped = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index.flip(0))
    assert (flipped - ref).abs().max() > 1e-4  # in- and out-edge sums are separate features


@pytest.mark.parametrize("phase", ["canonical", "invariant"])
def test_permutation_equivariance(phase):
    data = AddMagLapPE(k=4, q=[0.1, 0.3])(digraph(9, seed=5))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(9))
    p = permuted(data, perm)  # node i of p is node perm[i] of data, edges shuffled
    torch.manual_seed(5)
    enc = MagLapPEEncoder(4, 8, encoder="transformer", num_q=2, phase=phase).eval()
    ref = enc(data.maglap_pe, data.maglap_eigval, edge_index=data.edge_index)
    out = enc(data.maglap_pe[perm], data.maglap_eigval[perm], edge_index=p.edge_index)
    torch.testing.assert_close(out, ref[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("phase", ["canonical", "invariant"])
def test_graphs_are_isolated_in_a_batch(phase):
    t = AddMagLapPE(k=4, q=[0.1, 0.25])
    graphs = [t(digraph(n, seed=n)) for n in (3, 7, 5)]  # the 3-node graph pads columns
    torch.manual_seed(6)
    enc = MagLapPEEncoder(4, 8, encoder="transformer", num_q=2, phase=phase).eval()
    for order in ([0, 1, 2], [2, 0, 1]):
        b = Batch.from_data_list([graphs[i] for i in order])
        out = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
        for g, i in enumerate(order):
            alone = enc(graphs[i].maglap_pe, graphs[i].maglap_eigval,
                        edge_index=graphs[i].edge_index)
            torch.testing.assert_close(out[b.ptr[g]:b.ptr[g + 1]], alone, atol=1e-5, rtol=0)


def test_invariant_padded_columns_are_masked():
    b = pe_batch(k=4, q=(0.1, 0.25))
    pad = padding_mask(b.maglap_pe, b.batch)
    assert pad[:3, [3, 7]].all() and pad.sum() == 6  # 3-node graph: one column per block
    torch.manual_seed(7)
    enc = MagLapPEEncoder(4, 8, num_q=2, phase="invariant").eval()
    ref = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
    torch.testing.assert_close(
        enc(b.maglap_pe, b.maglap_eigval.masked_fill(pad, -7.0), b.batch,
            edge_index=b.edge_index), ref)


def test_invariant_makes_no_random_flips_in_training():
    b = pe_batch(k=4, q=(0.1, 0.25))
    enc = MagLapPEEncoder(4, 8, num_q=2, phase="invariant").train()
    state = torch.get_rng_state()
    first = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
    assert torch.equal(torch.get_rng_state(), state)  # no random numbers drawn
    assert torch.equal(enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index),
                       first)


@pytest.mark.parametrize("phase", ["canonical", "invariant"])
@pytest.mark.parametrize("encoder", ["deepset", "transformer"])
def test_gradient_reaches_every_parameter(phase, encoder):
    b = pe_batch(k=4, q=(0.1, 0.25))
    torch.manual_seed(8)
    enc = MagLapPEEncoder(4, 8, encoder=encoder, num_q=2, phase=phase).train()
    out = enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=b.edge_index)
    (out ** 2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- errors
def test_errors_and_repr():
    b = pe_batch(k=4, q=(0.1, 0.25))
    enc = MagLapPEEncoder(4, 8, num_q=2, phase="invariant")
    assert repr(enc) == ("MagLapPEEncoder(k=4, dim=8, encoder='deepset', sign_flip=True, "
                         "num_q=2, phase='invariant')")
    with pytest.raises(ValueError, match="needs the directed edge_index"):
        enc(b.maglap_pe, b.maglap_eigval, b.batch)
    for bad in (b.edge_index.float(), b.edge_index[0], b.edge_index.T.contiguous(),
                b.edge_index + 100, b.edge_index - 100, b.edge_index.tolist()):
        with pytest.raises(ValueError, match="edge_index"):
            enc(b.maglap_pe, b.maglap_eigval, b.batch, edge_index=bad)
    with pytest.raises(ValueError, match=r"maglap_pe \[N, 8, 2\].*num_q=2"):
        enc(b.maglap_pe[:, :4], b.maglap_eigval[:, :4], b.batch, edge_index=b.edge_index)
    with pytest.raises(ValueError, match="AddMagLapPE"):
        MagLapPEEncoder(4, 8)(b.maglap_pe, b.maglap_eigval, b.batch)
    with pytest.raises(ValueError, match="sign_invariant"):
        MagLapPEEncoder(4, 8, sign_invariant=True, phase="invariant")
    for kw in ({"num_q": 0}, {"num_q": 1.5}, {"num_q": True}, {"phase": "canon"},
               {"phase": None}):
        with pytest.raises(ValueError, match="num_q|phase"):
            MagLapPEEncoder(4, 8, **kw)


@pytest.mark.parametrize("phase", ["canonical", "invariant"])
def test_a_graph_and_its_reverse_are_told_apart(phase):
    # same undirected graph, opposite directions: the symmetrised Laplacian (and the magnetic
    # spectrum: L of the reverse is conj(L)) are identical, the pooled encodings are not
    ei = torch.tensor([[0, 1, 2, 0, 3], [1, 2, 3, 2, 4]])
    t = AddMagLapPE(k=3, q=[0.1, 0.25])
    fwd, rev = (t(Data(edge_index=e, num_nodes=5)) for e in (ei, ei.flip(0)))
    torch.testing.assert_close(fwd.maglap_eigval, rev.maglap_eigval, atol=1e-6, rtol=0)
    torch.manual_seed(9)
    enc = MagLapPEEncoder(3, 8, num_q=2, phase=phase).eval()
    pooled = [enc(d.maglap_pe, d.maglap_eigval, edge_index=d.edge_index).sum(0)
              for d in (fwd, rev)]
    assert (pooled[0] - pooled[1]).abs().max() > 1e-3
