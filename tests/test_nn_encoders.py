"""PE and feature encoders: shapes, padding masks, sign flips, OGB equivalence, RRWP pairs."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.nn.encoders import (
    EmbeddingEncoder,
    LapPEEncoder,
    LinearEncoder,
    MagLapPEEncoder,
    OGBAtomEncoder,
    OGBBondEncoder,
    RRWPEncoder,
    RWSEEncoder,
)
from gtpe.nn.encoders.lap import padding_mask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and immune to CPU oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def path_graph(n):
    s = torch.arange(n - 1)
    return torch.stack([torch.cat([s, s + 1]), torch.cat([s + 1, s])])


def lap_batch(k=6, sizes=(3, 9, 5)):
    """A Batch with real Laplacian PEs (gtpe.transforms.AddLapPE), graphs smaller than k."""
    from gtpe.transforms import AddLapPE

    t = AddLapPE(k=k)
    return Batch.from_data_list([t(Data(edge_index=path_graph(n), num_nodes=n)) for n in sizes]).to(
        DEVICE
    )


# ------------------------------------------------------------------------------------------
def test_padding_mask_per_graph():
    vec = torch.randn(7, 4)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    vec[:3, 2:] = 0.0  # graph 0 (3 nodes): 2 real eigenvectors
    vec[3:, 3] = 0.0  # graph 1 (4 nodes): 3 real eigenvectors
    vec[4, 1] = 0.0  # a zero *entry* of a real eigenvector is not padding
    pad = padding_mask(vec, batch)
    expected = torch.zeros(7, 4, dtype=torch.bool)
    expected[:3, 2:] = True
    expected[3:, 3] = True
    assert torch.equal(pad, expected)
    nan = vec.clone()
    nan[:3, 2:] = float("nan")  # GraphGPS pads with NaN: also recognised
    assert torch.equal(padding_mask(nan, batch), expected)
    assert torch.equal(padding_mask(vec[:3]), expected[:3])  # batch=None: one graph


@pytest.mark.parametrize("encoder", ["deepset", "transformer"])
def test_lappe_encoder_shapes_masking_eval_determinism(encoder):
    torch.manual_seed(0)
    k = 6
    b = lap_batch(k)
    enc = LapPEEncoder(k, 8, encoder=encoder).to(DEVICE).eval()
    out = enc(b.lap_pe, b.lap_eigval, b.batch, b.num_graphs)
    assert out.shape == (b.num_nodes, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, enc(b.lap_pe, b.lap_eigval, b.batch))  # eval: no flips
    # whatever sits in padded eigenvalue slots is ignored
    pad = padding_mask(b.lap_pe, b.batch)
    assert pad[b.batch == 0].all(dim=0)[2:].all()  # 3-node path: 2 eigenvectors, rest padding
    val = b.lap_eigval.masked_fill(pad, 123.0)
    torch.testing.assert_close(enc(b.lap_pe, val, b.batch), out)
    # node outputs depend on their own graph only
    vec2, val2 = b.lap_pe.clone(), b.lap_eigval.clone()
    vec2[b.batch == 1] *= -1
    val2[b.batch == 1] += 0.5
    out2 = enc(vec2, val2, b.batch)
    keep = b.batch != 1
    torch.testing.assert_close(out2[keep], out[keep])
    assert not torch.allclose(out2[~keep], out[~keep])


@pytest.mark.parametrize("encoder", ["deepset", "transformer"])
def test_lappe_sign_flips_in_training_and_sign_invariant_option(encoder):
    torch.manual_seed(0)
    k = 4
    b = lap_batch(k, sizes=(3, 7, 5))
    enc = LapPEEncoder(k, 8, encoder=encoder).to(DEVICE).train()
    outs = [enc(b.lap_pe, b.lap_eigval, b.batch) for _ in range(8)]
    # random per-batch sign flips: some outputs differ (2^4 flip patterns, 8 draws)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    # ... and each is the eval output of the lap_pe with some column signs flipped
    enc.eval()
    signs = torch.tensor(
        [[1.0 - 2 * ((m >> j) & 1) for j in range(k)] for m in range(2**k)], device=DEVICE
    )
    candidates = [enc(b.lap_pe * s, b.lap_eigval, b.batch) for s in signs]
    assert all(any(torch.allclose(o, c, atol=1e-5) for c in candidates) for o in outs)

    inv = LapPEEncoder(k, 8, encoder=encoder, sign_invariant=True).to(DEVICE)
    for mode in (True, False):
        inv.train(mode)
        ref = inv(b.lap_pe, b.lap_eigval, b.batch)
        flip = torch.tensor([1, -1, -1, 1.0], device=DEVICE)
        torch.testing.assert_close(
            inv(b.lap_pe * flip, b.lap_eigval, b.batch), ref, atol=1e-5, rtol=1e-5
        )


def test_lappe_errors_and_repr():
    enc = LapPEEncoder(4, 8)
    with pytest.raises(ValueError, match="AddLapPE"):
        enc(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="'deepset', 'transformer' or 'signnet'"):
        LapPEEncoder(4, 8, encoder="signet")
    assert "encoder=" in repr(enc)


def test_maglap_encoder():
    torch.manual_seed(0)
    k = 5
    from gtpe.transforms import AddMagLapPE

    t = AddMagLapPE(k=k)
    graphs = []
    for n in (3, 8):  # directed paths + one back edge
        s = torch.arange(n - 1)
        ei = torch.cat([torch.stack([s, s + 1]), torch.tensor([[n - 1], [0]])], 1)
        graphs.append(t(Data(edge_index=ei, num_nodes=n)))
    b = Batch.from_data_list(graphs).to(DEVICE)
    assert b.maglap_pe.shape == (11, k, 2)
    enc = MagLapPEEncoder(k, 8).to(DEVICE).eval()
    out = enc(b.maglap_pe, b.maglap_eigval, b.batch)
    assert out.shape == (11, 8) and torch.isfinite(out).all()
    pad = padding_mask(b.maglap_pe, b.batch)
    assert pad[:3, 3:].all() and not pad[3:].any()  # 3-node graph: 3 eigenvectors
    val = b.maglap_eigval.masked_fill(pad, -7.0)
    torch.testing.assert_close(enc(b.maglap_pe, val, b.batch), out)
    # real and imaginary parts both matter
    im0 = b.maglap_pe.clone()
    im0[..., 1] = 0
    assert not torch.allclose(enc(im0, b.maglap_eigval, b.batch), out)
    inv = MagLapPEEncoder(k, 8, encoder="transformer", sign_invariant=True).to(DEVICE).train()
    ref = inv(b.maglap_pe, b.maglap_eigval, b.batch)
    torch.testing.assert_close(
        inv(-b.maglap_pe, b.maglap_eigval, b.batch), ref, atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="AddMagLapPE"):
        enc(b.maglap_pe[..., 0], b.maglap_eigval)


def test_rwse_encoder():
    from gtpe.transforms import AddRWSE

    d = AddRWSE(walk_length=7)(Data(edge_index=path_graph(6), num_nodes=6)).to(DEVICE)
    enc = RWSEEncoder(7, 5).to(DEVICE).train()
    out = enc(d.rwse)
    assert out.shape == (6, 5)
    bn = torch.nn.functional.batch_norm(d.rwse, None, None, training=True)
    torch.testing.assert_close(out, bn @ enc.lin.weight.T + enc.lin.bias)
    plain = RWSEEncoder(7, 5, batch_norm=False).to(DEVICE)
    torch.testing.assert_close(plain(d.rwse), plain.lin(d.rwse))
    with pytest.raises(ValueError, match="AddRWSE"):
        enc(torch.rand(6, 8, device=DEVICE))


def test_rrwp_encoder_pairs_match_dense_reference():
    torch.manual_seed(0)
    from gtpe.transforms import AddRRWP

    K, C = 4, 6
    b = Batch.from_data_list(
        [AddRRWP(walk_length=K)(Data(edge_index=path_graph(n), num_nodes=n)) for n in (4, 5)]
    ).to(DEVICE)
    enc = RRWPEncoder(K, C).to(DEVICE)
    edge_attr = torch.randn(b.edge_index.size(1), C, device=DEVICE)
    h, pi, pa = enc(b.rrwp, b.rrwp_index, b.rrwp_val, b.edge_index, edge_attr)
    torch.testing.assert_close(h, b.rrwp @ enc.node_lin.weight.T)
    N = b.num_nodes
    dense = torch.zeros(N, N, C, dtype=torch.float64, device=DEVICE)
    dense[b.rrwp_index[0], b.rrwp_index[1]] += (enc.pair_lin(b.rrwp_val)).double()
    dense[b.edge_index[0], b.edge_index[1]] += edge_attr.double()
    present = torch.zeros(N, N, dtype=torch.bool, device=DEVICE)
    present[b.rrwp_index[0], b.rrwp_index[1]] = True
    present[b.edge_index[0], b.edge_index[1]] = True
    assert pi.size(1) == int(present.sum())
    assert torch.equal(
        present[pi[0], pi[1]], torch.ones(pi.size(1), dtype=torch.bool, device=DEVICE)
    )
    torch.testing.assert_close(pa.double(), dense[pi[0], pi[1]], atol=1e-6, rtol=1e-6)
    # without edge features the pairs are rrwp_index itself
    _h2, pi2, pa2 = enc(b.rrwp, b.rrwp_index, b.rrwp_val)
    assert torch.equal(pi2, b.rrwp_index) and pa2.shape == (b.rrwp_index.size(1), C)
    node_only = RRWPEncoder(K, C, pairs=False).to(DEVICE)
    assert node_only.encode_nodes(b.rrwp).shape == (N, C)
    with pytest.raises(ValueError, match="encode_nodes"):
        node_only(b.rrwp, b.rrwp_index, b.rrwp_val)
    with pytest.raises(ValueError, match="AddRRWP"):
        enc(b.rrwp[:, :2], b.rrwp_index, b.rrwp_val)


# ------------------------------------------------------------------------------------------
def test_ogb_encoders_equal_ogb_reference():
    torch.manual_seed(0)
    from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    for mine, theirs, dims in (
        (OGBAtomEncoder(16), AtomEncoder(16), get_atom_feature_dims()),
        (OGBBondEncoder(16), BondEncoder(16), get_bond_feature_dims()),
    ):
        tables = (
            theirs.atom_embedding_list
            if hasattr(theirs, "atom_embedding_list")
            else theirs.bond_embedding_list
        )
        with torch.no_grad():
            mine.emb.weight.copy_(torch.cat([t.weight for t in tables], 0))
        x = torch.stack([torch.randint(0, d, (50,)) for d in dims], 1)
        torch.testing.assert_close(mine(x), theirs(x))
        with pytest.raises(ValueError, match="categorical"):
            mine(x[:, :2])
    # OGB's smiles2graph output goes straight in
    from ogb.utils import smiles2graph

    g = smiles2graph("CC(=O)Oc1ccccc1C(=O)O")
    assert OGBAtomEncoder(8)(torch.from_numpy(g["node_feat"])).shape == (13, 8)
    assert OGBBondEncoder(8)(torch.from_numpy(g["edge_feat"])).shape == (26, 8)


def test_embedding_and_linear_encoders():
    enc = EmbeddingEncoder(10, 4)
    x = torch.randint(0, 10, (7,))
    torch.testing.assert_close(enc(x), enc(x.view(-1, 1)))
    torch.testing.assert_close(enc(x), enc.emb.weight[x])
    with pytest.raises(ValueError, match=r"\[N\] or \[N, 1\]"):
        enc(torch.zeros(7, 2, dtype=torch.long))
    lin = LinearEncoder(3, 4)
    x = torch.randn(5, 3)
    torch.testing.assert_close(lin(x), x @ lin.lin.weight.T + lin.lin.bias)
    with pytest.raises(ValueError, match="3 input features"):
        lin(torch.randn(5, 2))
    assert repr(enc) == "EmbeddingEncoder(10, 4)" and repr(lin) == "LinearEncoder(3, 4)"
