"""PolynormerAttention and PolynormerLocal: dense float64 references from Polynormer's equations,
PyG's modules, permutation equivariance, batch isolation, gradients."""

import pytest
import torch
import torch.nn.functional as F

from gtpe.nn.attention.polynormer import PolynormerAttention, PolynormerLocal

C = 8


def _x(n, seed=0, dtype=torch.float64):
    return torch.randn(n, C, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def _attn(heads=2, beta=0.9, qk_shared=True, qkv_bias=False, seed=0):
    torch.manual_seed(seed)
    m = PolynormerAttention(C, heads=heads, beta=beta, qk_shared=qk_shared, qkv_bias=qkv_bias)
    m = m.double()
    with torch.no_grad():  # non-trivial LayerNorm affine, so that it is tested too
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    return m


def _beta(m):
    if m.beta is None:
        return torch.sigmoid(m.beta_logit)
    return torch.full((C,), m.beta, dtype=torch.float64)


def global_dense(x, m):
    """Polynormer's global layer for ONE graph, with the n x n kernel matrix written out."""
    H, d = m.heads, m.head_dim
    P = m.in_proj_weight.size(0) // C
    Ws = m.in_proj_weight.split(C)
    bq = m.qkv_bias.split(C) if m.qkv_bias is not None else [0.0] * (P - 1)
    Hx = x @ Ws[0].T + m.h_bias  # rows: W_H, W_K, (W_Q,) W_V
    K = torch.sigmoid(x @ Ws[1].T + bq[0])
    V = x @ Ws[-1].T + bq[-1]
    Q = K if m.qk_shared else torch.sigmoid(x @ Ws[2].T + bq[1])
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        S = Q[:, sl] @ K[:, sl].T  # [n, n] sigma(q_i)^T sigma(k_j)
        heads.append(S @ V[:, sl] / S.sum(1, keepdim=True))
    a = torch.cat(heads, 1)
    y = F.layer_norm(a, (C,), m.norm.weight, m.norm.bias) * (Hx + _beta(m))
    return torch.relu(y @ m.out_proj.weight.T + m.out_proj.bias)


def _per_graph(x, batch, fn):
    out = torch.empty(x.size(0), C, dtype=x.dtype)
    for g in batch.unique():
        idx = (batch == g).nonzero().view(-1)
        out[idx] = fn(x[idx])
    return out


@pytest.mark.parametrize(
    "heads,beta,qk_shared,qkv_bias",
    [(1, 0.9, True, False), (2, None, False, True), (4, 0.3, False, False)],
)
def test_global_matches_dense_reference(heads, beta, qk_shared, qkv_bias):
    m = _attn(heads, beta, qk_shared, qkv_bias)
    sizes = [3, 1, 7, 5, 40]
    x, batch = _x(sum(sizes)), _batch(sizes)
    ref = _per_graph(x, batch, lambda xi: global_dense(xi, m))
    torch.testing.assert_close(m(x, batch), ref)
    torch.testing.assert_close(m(x[:9]), global_dense(x[:9], m))
    perm = torch.randperm(x.size(0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(x[perm], batch[perm]), ref[perm])
    eq = _batch([6, 6, 6])  # equal sizes: the [B, L] view path
    torch.testing.assert_close(m(x[:18], eq), _per_graph(x[:18], eq, lambda xi: global_dense(xi, m)))


def _pyg_attn(qk_shared=True, qkv_bias=False):
    from torch_geometric.nn.attention import PolynormerAttention as PyGPolynormer

    torch.manual_seed(0)
    p = PyGPolynormer(C, heads=2, head_channels=C // 2, qk_shared=qk_shared, qkv_bias=qkv_bias)
    with torch.no_grad():
        p.lns.weight.normal_()
        p.lns.bias.normal_()
    return p.double()


@pytest.mark.parametrize("qk_shared,qkv_bias", [(True, False), (False, True)])
def test_global_matches_pyg(qk_shared, qkv_bias):
    from torch_geometric.utils import to_dense_batch

    pyg = _pyg_attn(qk_shared, qkv_bias)
    m = PolynormerAttention.from_pyg(pyg)  # weights permuted from PyG's head-minor layout
    x = _x(30)
    # PyG adds 1e-6 to the normaliser (gtpe does not): agreement to ~1e-7 relative
    torch.testing.assert_close(m(x), pyg(x[None])[0], rtol=1e-6, atol=1e-6)
    batch = _batch([10, 10, 10])
    xd, mask = to_dense_batch(x, batch)
    torch.testing.assert_close(m(x, batch), pyg(xd, mask)[mask], rtol=1e-6, atol=1e-6)


def test_pyg_counts_padded_keys_for_unequal_graphs():
    """The module docstring's claim: PyG's padded batch differs for graphs of unequal size."""
    from torch_geometric.utils import to_dense_batch

    pyg = _pyg_attn()
    m = PolynormerAttention.from_pyg(pyg)
    x, batch = _x(13), _batch([3, 10])
    xd, mask = to_dense_batch(x, batch)
    alone = pyg(x[None, :3])[0]
    torch.testing.assert_close(m(x, batch)[:3], alone, rtol=1e-6, atol=1e-6)
    assert (pyg(xd, mask)[mask][:3] - alone).abs().max() > 1e-4


def test_from_pyg_rejects_mismatched_width():
    from torch_geometric.nn.attention import PolynormerAttention as PyGPolynormer

    with pytest.raises(ValueError, match="channels == heads \\* head_channels"):
        PolynormerAttention.from_pyg(PyGPolynormer(C, heads=2, head_channels=8))


def _shuffle(sizes, seed=3):
    g = torch.Generator().manual_seed(seed)
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    order = torch.randperm(len(sizes), generator=g).tolist()
    perm = torch.cat([starts[o] + torch.randperm(sizes[o], generator=g) for o in order])
    return perm, _batch([sizes[o] for o in order])


def test_global_permutation_equivariance_and_isolation():
    m = _attn(2, None, False, True)
    sizes = [4, 9, 2, 6]
    x, batch = _x(sum(sizes)), _batch(sizes)
    perm, new_batch = _shuffle(sizes)
    torch.testing.assert_close(m(x[perm], new_batch), m(x, batch)[perm])
    xg = _x(7, seed=5)
    alone = m(xg)
    for before, after in ([], [3, 50]), ([4, 1], [2]), ([60, 2], []):
        xs = [_x(n, seed=10 + n) for n in before] + [xg] + [_x(n, seed=20 + n) for n in after]
        out = m(torch.cat(xs), _batch(before + [7] + after))
        s = sum(before)
        torch.testing.assert_close(out[s : s + 7], alone)


@pytest.mark.parametrize("beta,qk_shared,qkv_bias", [(0.9, True, False), (None, False, True)])
def test_global_gradients_reach_every_parameter(beta, qk_shared, qkv_bias):
    m = _attn(2, beta, qk_shared, qkv_bias)
    x = _x(20).requires_grad_()
    m(x, _batch([8, 12])).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_global_dropout_only_in_training():
    m = _attn()
    m.dropout = 0.5
    x = _x(50)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    out, ref = m(x), global_dense(x, m)
    dropped = out == 0
    assert (dropped & (ref != 0)).any()  # dropout zeroed entries that are not zero in eval
    torch.testing.assert_close(out[~dropped], 2 * ref[~dropped])


def test_global_empty_errors_repr():
    m = _attn()
    out = m(torch.zeros(0, C, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, C)
    with pytest.raises(ValueError, match=r"expected x of shape \[N, 8\]"):
        m(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch must be"):
        m(_x(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="beta must be a number in"):
        PolynormerAttention(C, beta=1.5)
    with pytest.raises(ValueError, match="multiple of heads"):
        PolynormerAttention(C, heads=3)
    assert repr(m) == "PolynormerAttention(8, heads=2, beta=0.9, qk_shared=True, dropout=0.0)"
    assert "beta=learned" in repr(_attn(beta=None))


# ----------------------------------------------------------------------------- local
def _graph(n, m_edges, seed=0):
    """Random directed edges without duplicates or self-loops."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, n, (2, m_edges), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    return torch.unique(pairs, dim=1)


def _local(heads=2, beta=0.9, conv="gat", batch_norm=False, seed=0):
    torch.manual_seed(seed)
    m = PolynormerLocal(C, heads=heads, beta=beta, conv=conv, batch_norm=batch_norm).double()
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    return m


def local_dense(x, edge_index, m):
    """Polynormer's local layer with a dense adjacency (A[i, j] = 1 for an edge j -> i)."""
    n, H, d = x.size(0), m.heads, m.head_dim
    Wh, Wl, Wg = m.in_proj_weight.split(C)
    bh, bl = m.in_proj_bias.split(C)
    A = torch.zeros(n, n, dtype=x.dtype)
    A[edge_index[1], edge_index[0]] = 1.0
    G = x @ Wg.T
    if m.conv == "gat":
        agg = []
        for h in range(H):
            Gh = G[:, h * d : (h + 1) * d]
            s = (Gh @ m.att_src[h])[None, :] + (Gh @ m.att_dst[h])[:, None]  # [i, j]
            s = F.leaky_relu(s, 0.2).masked_fill(A == 0, float("-inf"))
            alpha = torch.softmax(s, dim=1).nan_to_num(0.0)  # no in-edges: 0
            agg.append(alpha @ Gh)
        agg = torch.cat(agg, 1)
    else:
        Ah = A + torch.eye(n, dtype=x.dtype)
        dis = Ah.sum(1).rsqrt()
        agg = dis[:, None] * Ah * dis[None, :] @ G
    s = agg + x @ Wl.T + bl
    if m.bn is not None:
        s = m.bn(s)
    xt = torch.relu(s)
    h = torch.relu(x @ Wh.T + bh)
    b = m.beta_vector()
    return (1 - b) * F.layer_norm(h * xt, (C,), m.norm.weight, m.norm.bias) + b * xt


@pytest.mark.parametrize(
    "heads,beta,conv", [(1, 0.9, "gat"), (2, None, "gat"), (4, 0.4, "gat"), (2, 0.5, "gcn")]
)
def test_local_matches_dense_reference(heads, beta, conv):
    m = _local(heads, beta, conv)
    x, ei = _x(25), _graph(25, 80)
    torch.testing.assert_close(m(x, ei), local_dense(x, ei, m))


def _pyg_model(conv, post_bn):
    from torch_geometric.nn.models import Polynormer

    torch.manual_seed(0)
    return Polynormer(
        C, C // 2, 3, local_layers=1, global_layers=1, heads=2, beta=0.7, post_bn=post_bn,
        local_attn=conv == "gat",
    ).double()


@pytest.mark.parametrize("conv,post_bn", [("gat", True), ("gat", False), ("gcn", True)])
def test_local_matches_pyg_polynormer_model(conv, post_bn):
    """One local layer of PyG's Polynormer model (no global layers: ``_global`` is False)."""
    pyg = _pyg_model(conv, post_bn).eval()
    m = PolynormerLocal(C, heads=2, beta=0.7, conv=conv, batch_norm=post_bn).double().eval()
    lc = pyg.local_convs[0]
    with torch.no_grad():
        for mod in (pyg.lns[0],) + ((pyg.post_bns[0],) if post_bn else ()):
            for p in mod.parameters():
                p.normal_()
        if post_bn:
            pyg.post_bns[0].running_mean.normal_()
            pyg.post_bns[0].running_var.uniform_(0.5, 2.0)
            m.bn.load_state_dict(pyg.post_bns[0].state_dict())
        # W_G: GATConv's / GCNConv's lin (both Linear(C, C) without bias)
        m.in_proj_weight.copy_(torch.cat([pyg.h_lins[0].weight, pyg.lins[0].weight, lc.lin.weight]))
        bl = pyg.lins[0].bias + (lc.bias if conv == "gcn" else 0.0)  # GCN's bias folded into b_L
        m.in_proj_bias.copy_(torch.cat([pyg.h_lins[0].bias, bl]))
        if conv == "gat":
            m.att_src.copy_(lc.att_src[0])
            m.att_dst.copy_(lc.att_dst[0])
        m.norm.load_state_dict(pyg.lns[0].state_dict())
    x, ei = _x(25), _graph(25, 80)
    ei = torch.cat([ei, ei.flip(0)], 1).unique(dim=1)  # symmetric (GCNConv's normalisation)
    ref = pyg(x, ei, None)
    out = F.log_softmax(pyg.pred_local(m(x, ei)), dim=-1)
    torch.testing.assert_close(out, ref)


def test_local_permutation_equivariance_and_isolation():
    m = _local(2, None)
    x, ei = _x(20), _graph(20, 60)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(20)
    torch.testing.assert_close(m(x[perm], inv[ei]), m(x, ei)[perm])
    # a graph next to another one (edges offset) gives the same output
    x2, ei2 = _x(9, seed=4), _graph(9, 20, seed=4)
    both = m(torch.cat([x2, x]), torch.cat([ei2, ei + 9], 1))
    torch.testing.assert_close(both[9:], m(x, ei))
    torch.testing.assert_close(both[:9], m(x2, ei2))


@pytest.mark.parametrize("conv,beta,bn", [("gat", 0.9, False), ("gat", None, True), ("gcn", None, False)])
def test_local_gradients_reach_every_parameter(conv, beta, bn):
    m = _local(2, beta, conv, bn)
    x = _x(20).requires_grad_()
    m(x, _graph(20, 60)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_local_node_without_in_edges_and_gcn_cache():
    m = _local(2)
    x = _x(4)
    ei = torch.tensor([[0, 1], [1, 0]])  # nodes 2, 3: no in-edges -> attention sum 0
    ref = local_dense(x, ei, m)
    torch.testing.assert_close(m(x, ei), ref)
    g = _local(2, conv="gcn")
    cache: dict = {}
    out = g(x, ei, cache=cache)
    entries = dict(cache)
    assert "gcn_norm" in entries  # gtpe.nn.local.GCN's entry, shared with GCN layers
    torch.testing.assert_close(g(x, ei, cache=cache), out)
    assert all(cache[k] is v for k, v in entries.items())  # reused, not recomputed


def test_local_errors_repr():
    with pytest.raises(ValueError, match="conv must be one of"):
        PolynormerLocal(C, conv="gin")
    with pytest.raises(ValueError, match="dropout must be in"):
        PolynormerLocal(C, dropout=1.0)
    m = _local()
    with pytest.raises(ValueError, match="edge_index must be"):
        m(_x(3), torch.zeros(3, 2, dtype=torch.long))
    assert repr(m) == (
        "PolynormerLocal(8, heads=2, conv='gat', beta=0.9, dropout=0.0, batch_norm=False)"
    )


@pytest.mark.parametrize("conv,heads", [("gat", 1), ("gat", 3), ("gcn", 2)])
def test_local_csr_and_scatter_agree(conv, heads):
    """Both ``aggregate`` paths: same output and gradients, repeated edges included."""
    torch.manual_seed(0)
    a = PolynormerLocal(6 * heads, heads=heads, beta=None, conv=conv, aggregate="csr").double()
    b = PolynormerLocal(6 * heads, heads=heads, beta=None, conv=conv, aggregate="scatter").double()
    b.load_state_dict(a.state_dict())
    n = 30
    x = torch.randn(n, 6 * heads, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ei = torch.randint(0, n, (2, 120), generator=torch.Generator().manual_seed(3))
    ei = torch.cat([ei, ei[:, :10]], 1)  # repeated edges
    w = torch.randn(n, 6 * heads, dtype=torch.float64)
    outs, grads = [], []
    for m in (a, b):
        xi = x.clone().requires_grad_()
        out = m(xi, ei)
        (out * w).sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb)
    # float32 too (the MKL kernels), and no edges at all
    torch.testing.assert_close(a.float()(x.float(), ei), b.float()(x.float(), ei), rtol=1e-4, atol=1e-5)
    empty = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(a(x.float(), empty), b(x.float(), empty))


def test_local_csr_plan_is_cached():
    m = _local(2)
    x, ei = _x(12), _graph(12, 40)
    cache: dict = {}
    out = m(x, ei, cache=cache)
    plan = cache["polynormer_csr"][3]
    torch.testing.assert_close(m(x, ei, cache=cache), out)
    assert cache["polynormer_csr"][3] is plan
    with pytest.raises(ValueError, match="aggregate must be one of"):
        PolynormerLocal(C, aggregate="sparse")
