"""Which end of a pair is GRIT's query, and which random-walk direction it sees.

gtpe stores RRWP as ``rrwp_index[:, m] = (a, b)``, ``rrwp_val[m] = [I, P, ..., P^(K-1)]_ab``
with ``P = D^-1 A`` row-stochastic (``P_ab`` = probability of the step a -> b), and the official
GRIT code (``add_full_rrwp``: ``SparseTensor.from_dense(pe).coo()``) stores the same
(row, col) = (a, b).  Both layers (gtpe ``GRITAttention``, official
``MultiHeadAttentionLayerGritSparse``) read row 0 as the key and row 1 as the query, so the
query ``i`` attending to the key ``j`` sees ``[I, P, ...]_ji`` (walks from the key to the
query) plus the features of the edge j -> i.  The dense reference below writes the paper's
equations (Ma et al., ICML 2023) with that convention, on graphs whose degrees differ so that
``P != P^T``; the tests fail if either side (transform, encoder or layer) flips a pair.
"""
from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.nn import GRITAttention, RRWPEncoder
from gtpe.transforms import AddRRWP

C, H, K = 8, 2, 4


def _graphs() -> list[Data]:
    # star (centre 0, leaves 1, 2, 3) with a path 3-4-5 hanging off leaf 3: degrees 3, 1, 1, 2, 2, 1
    und = [(0, 1), (0, 2), (0, 3), (3, 4), (4, 5)]
    ei = torch.tensor(und + [(b, a) for a, b in und]).t()
    # directed: a cycle 0->1->2->0 with a chord 0->2 and a sink 3 (zero row of P)
    di = torch.tensor([(0, 1), (1, 2), (2, 0), (0, 2), (2, 3)]).t()
    return [Data(edge_index=ei, num_nodes=6), Data(edge_index=di, num_nodes=4)]


def _dense_rrwp(edge_index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T [n, n, K] = [I, P, ..., P^(K-1)]_ab, A [n, n])``, float64, ``A[src, dst] = 1``."""
    A = torch.zeros(n, n, dtype=torch.float64)
    A[edge_index[0], edge_index[1]] += 1.0
    deg = A.sum(1, keepdim=True)
    P = torch.where(deg > 0, A / deg.clamp_min(1.0), torch.zeros_like(A))
    mats = [torch.eye(n, dtype=torch.float64)]
    for _ in range(K - 1):
        mats.append(mats[-1] @ P)
    return torch.stack(mats, -1), A


def _grit_reference(m: GRITAttention, x, E, mask, deg):
    """GRIT's equations on one graph, dense: ``E[i, j]`` is the pair feature seen by the query
    ``i`` for the key ``j``, ``mask[i, j]`` whether ``j`` is in the softmax of ``i``.

    ê_ij = ReLU(ρ((W_Q x_i + W_K x_j) ⊙ W_Ew e_ij) + W_Eb e_ij), α_ij = softmax_j(clamp(w_A·ê_ij)),
    x̂_i = Σ_j α_ij (W_V x_j + W_Ev ê_ij), then the degree scaler and W_O; e'_ij = W_Oe ê_ij.
    """
    n, D = x.size(0), m.head_dim
    q = m.lin_q(x).view(n, 1, H, D)
    k = m.lin_k(x).view(1, n, H, D)
    v = m.lin_v(x).view(n, H, D)
    ew, eb = m.lin_e(E).view(n, n, H, 2 * D).split(D, -1)
    s = (q + k) * ew
    e_hat = torch.relu(torch.sign(s) * s.abs().sqrt() + eb)  # [i, j, H, D]
    score = (e_hat * m.attn_weight).sum(-1).clamp(-m.clamp, m.clamp)
    alpha = torch.softmax(score.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1)
    xh = torch.einsum("ijh,jhd->ihd", alpha, v)
    xh = xh + torch.einsum("ijh,ijhd,hdc->ihc", alpha, e_hat, m.edge_value)
    xh = xh.reshape(n, C)
    ld = torch.log1p(deg).view(n, 1)
    xh = xh * m.deg_coef[:, 0] + ld * xh * m.deg_coef[:, 1]
    return m.out_proj(xh), m.pair_out_proj(e_hat.reshape(n, n, C))


def _setup(seed: int = 0, full_pairs: bool = True):
    torch.manual_seed(seed)
    enc = RRWPEncoder(K, C).double()
    with torch.no_grad():
        enc.pair_lin.bias.normal_()
    m = GRITAttention(C, heads=H, full_pairs=full_pairs, bias=True).double()
    with torch.no_grad():
        for lin in (m.lin_q, m.lin_k, m.lin_v, m.lin_e):
            lin.bias.normal_()
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    x = torch.randn(batch.num_nodes, C, dtype=torch.float64)
    edge_attr = torch.randn(batch.edge_index.size(1), C, dtype=torch.float64)  # per direction
    return enc, m, graphs, batch, x, edge_attr


def _reference(enc, m, graphs, x, edge_attr, deg, transpose=False, full_pairs=True):
    """Per graph, ``E[i, j] = W_p T[j, i] + b_p + e^in(j -> i)`` (the official code's
    convention) or, with ``transpose``, ``W_p T[i, j] + ...`` (the paper read literally).
    Returns the node output and ``{(key, query): pair output}`` (global ids)."""
    outs, pairs, start, e0 = [], {}, 0, 0
    for g in graphs:
        n, ne = g.num_nodes, g.edge_index.size(1)
        T, A = _dense_rrwp(g.edge_index, n)
        T_q = T if transpose else T.transpose(0, 1)  # T_q[i, j]: the walk values query i sees
        walk = (T_q != 0).any(-1)  # RRWP pairs; the others are padded with zeros (as GRIT)
        E = enc.pair_lin(T_q) * walk.unsqueeze(-1)
        E_in = torch.zeros(n, n, C, dtype=torch.float64)
        E_in[g.edge_index[1], g.edge_index[0]] = edge_attr[e0 : e0 + ne]  # edge j -> i at [i, j]
        E = E + E_in
        reach = walk | (A.t() > 0)  # pairs present before completion
        mask = torch.ones(n, n, dtype=torch.bool) if full_pairs else reach
        sl = slice(start, start + n)
        out, pout = _grit_reference(m, x[sl], E, mask, deg[sl])
        outs.append(out)
        for i, j in mask.nonzero().tolist():
            pairs[(j + start, i + start)] = pout[i, j]
        start, e0 = start + n, e0 + ne
    return torch.cat(outs), pairs


def _exact_pairs(graphs):
    """The stored convention of DESIGN.md, exact in float64: column (a, b) = T[a, b]."""
    idx, val, diag, start = [], [], [], 0
    for g in graphs:
        T, _ = _dense_rrwp(g.edge_index, g.num_nodes)
        a, b = (T != 0).any(-1).nonzero(as_tuple=True)
        idx.append(torch.stack([a, b]) + start)
        val.append(T[a, b])
        diag.append(T.diagonal().t())
        start += g.num_nodes
    return torch.cat(diag), torch.cat(idx, 1), torch.cat(val)


def test_graphs_have_unequal_degrees():
    # the premise of every test below: P != P^T on both graphs
    for g in _graphs():
        T, _ = _dense_rrwp(g.edge_index, g.num_nodes)
        assert (T[..., 1] - T[..., 1].t()).abs().max() > 0.3


def test_add_rrwp_stores_row_then_col():
    """``rrwp_val[m] = [I, P, ...]_ab`` with ``a = rrwp_index[0, m]`` (the walk starts at a)."""
    graphs = _graphs()
    for data in [*graphs, Batch.from_data_list(graphs)]:
        out = AddRRWP(K)(data.clone())
        start = 0
        for g in graphs if isinstance(data, Batch) else [data]:
            T, _ = _dense_rrwp(g.edge_index, g.num_nodes)
            sel = (out.rrwp_index[0] >= start) & (out.rrwp_index[0] < start + g.num_nodes)
            a, b = out.rrwp_index[:, sel] - start
            got = out.rrwp_val[sel].double()
            torch.testing.assert_close(got, T[a, b], rtol=0, atol=1e-6)
            assert (got - T[b, a]).abs().max() > 0.3  # the transpose is far off
            # and the pair set is the reachability of a -> b, not b -> a
            assert torch.equal((T != 0).any(-1).nonzero().t(), torch.stack([a, b]))
            start += g.num_nodes


@pytest.mark.parametrize("full_pairs", [True, False])
def test_grit_query_sees_walks_from_key_float64(full_pairs):
    """RRWPEncoder + GRITAttention on the stored convention equal the dense GRIT reference
    with ``E[i, j]`` built from ``T[j, i]`` (the official code), in float64."""
    enc, m, graphs, batch, x, edge_attr = _setup(full_pairs=full_pairs)
    rrwp, rrwp_index, rrwp_val = _exact_pairs(graphs)
    _, pi, pa = enc(rrwp, rrwp_index, rrwp_val, batch.edge_index, edge_attr)
    A_deg = torch.bincount(batch.edge_index[0], minlength=batch.num_nodes).double()  # GRIT
    out, pout, new_pi = m(x, pi, pa, batch.batch, deg=A_deg, num_graphs=batch.num_graphs)
    ref, ref_pairs = _reference(enc, m, graphs, x, edge_attr, A_deg, full_pairs=full_pairs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert new_pi.size(1) == len(ref_pairs)
    for t, (j, i) in enumerate(new_pi.t().tolist()):
        torch.testing.assert_close(pout[t], ref_pairs[(j, i)], rtol=1e-10, atol=1e-10)
    # the paper read literally (query i sees T[i, j]) is a different model on these graphs
    wrong, _ = _reference(enc, m, graphs, x, edge_attr, A_deg, transpose=True,
                          full_pairs=full_pairs)
    assert (out - wrong).abs().max() > 1e-2


def test_flipped_pairs_give_the_transposed_convention():
    """Feeding ``pair_index.flip(0)`` (query = row 0) is the other convention: a different
    result, equal to the reference with ``E[i, j]`` from ``T[i, j]``."""
    enc, m, graphs, batch, x, _ = _setup(seed=1)
    rrwp, rrwp_index, rrwp_val = _exact_pairs(graphs)
    _, pi, pa = enc(rrwp, rrwp_index, rrwp_val)
    deg = torch.bincount(batch.edge_index[0], minlength=batch.num_nodes).double()
    no_edges = torch.zeros(batch.edge_index.size(1), C, dtype=torch.float64)
    out, _, _ = m(x, pi, pa, batch.batch, deg=deg)
    flipped, _, _ = m(x, pi.flip(0), pa, batch.batch, deg=deg)
    assert (out - flipped).abs().max() > 1e-2
    ref_t, _ = _reference(enc, m, graphs, x, no_edges, deg, transpose=True)
    torch.testing.assert_close(flipped, ref_t, rtol=1e-10, atol=1e-10)


def test_pipeline_from_add_rrwp_matches_reference():
    """End to end from the transform's float32 values: AddRRWP -> RRWPEncoder -> GRITAttention."""
    enc, m, graphs, batch, x, edge_attr = _setup(seed=2)
    data = AddRRWP(K)(batch.clone())
    _, pi, pa = enc(data.rrwp.double(), data.rrwp_index, data.rrwp_val.double(),
                    data.edge_index, edge_attr)
    deg = torch.bincount(batch.edge_index[0], minlength=batch.num_nodes).double()
    out, _, _ = m(x, pi, pa, data.batch, deg=deg, num_graphs=data.num_graphs)
    ref, _ = _reference(enc, m, graphs, x, edge_attr, deg)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    wrong, _ = _reference(enc, m, graphs, x, edge_attr, deg, transpose=True)
    assert (out - wrong).abs().max() > 1e-2


def test_gps_layer_injects_the_out_degree_as_grit():
    """GRIT's transform stores the row sums of A (out-degrees); GPSLayer(attn='grit') passes the
    same to the degree injection, which differs from the in-degree on a directed graph."""
    from gtpe.nn import GPSLayer
    from gtpe.transforms import AddRRWP

    edge_index = torch.tensor([[0, 0, 0, 1, 2], [1, 2, 3, 3, 3]])  # out 3,1,1,0 / in 0,1,1,3
    data = AddRRWP(walk_length=3)(Data(edge_index=edge_index, num_nodes=4))
    layer = GPSLayer(8, local=None, attn='grit', heads=2).eval()
    x = torch.randn(4, 8)
    pair_attr = torch.randn(data.rrwp_index.size(1), 8)
    state: dict = {}
    layer(x, edge_index, torch.zeros(4, dtype=torch.long), pair_index=data.rrwp_index,
          pair_attr=pair_attr, state=state)
    assert state['deg'].tolist() == [3.0, 1.0, 1.0, 0.0]
