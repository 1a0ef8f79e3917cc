"""SGFormerAttention and GraphLayout: dense float64 references from SGFormer's equations, PyG's
module, permutation equivariance, batch isolation, gradients."""

import pytest
import torch

from gtpe.nn.attention.sgformer import GraphLayout, SGFormerAttention

C = 8


def _x(n, seed=0, dtype=torch.float64):
    return torch.randn(n, C, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def _module(heads=1, bias=True, qk_norm="graph", seed=0):
    torch.manual_seed(seed)
    m = SGFormerAttention(C, heads=heads, bias=bias, qk_norm=qk_norm).double()
    return m


def sgformer_dense(x, m):
    """SGFormer Eq. (3)-(4) for ONE graph, with the n x n matrix Q~ K~^T written out."""
    n, H = x.size(0), m.heads
    W = m.in_proj_weight
    b = m.in_proj_bias if m.in_proj_bias is not None else torch.zeros(W.size(0), dtype=x.dtype)
    q, k, v = (x @ W.T + b).view(n, 3, H, C).unbind(1)
    if m.qk_norm == "graph":  # Frobenius norm over all nodes and heads of the graph
        qt, kt = q / q.norm(), k / k.norm()
    else:  # each node's per-head vector
        qt, kt = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    heads = []
    for h in range(H):
        A = qt[:, h] @ kt[:, h].T  # [n, n]
        D = 1 + A.sum(1) / n  # diag(1 + (1/n) Q~ (K~^T 1))
        heads.append((v[:, h] + A @ v[:, h] / n) / D[:, None])
    return torch.stack(heads).mean(0)


def _per_graph_ref(x, batch, m):
    out = torch.empty(x.size(0), C, dtype=x.dtype)
    for g in batch.unique():
        idx = (batch == g).nonzero().view(-1)
        out[idx] = sgformer_dense(x[idx], m)
    return out


@pytest.mark.parametrize("qk_norm", ["graph", "node"])
@pytest.mark.parametrize("heads,bias", [(1, True), (3, False)])
def test_matches_dense_reference(qk_norm, heads, bias):
    m = _module(heads, bias, qk_norm)
    sizes = [3, 1, 7, 5, 40]  # a one-node graph and a large one (size-class buckets)
    x, batch = _x(sum(sizes)), _batch(sizes)
    torch.testing.assert_close(m(x, batch), _per_graph_ref(x, batch, m))
    # one graph (batch None), and an unsorted batch
    torch.testing.assert_close(m(x[:9]), sgformer_dense(x[:9], m))
    perm = torch.randperm(x.size(0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(x[perm], batch[perm]), _per_graph_ref(x, batch, m)[perm])


def test_equal_sizes_and_num_graphs():
    m = _module(2)
    sizes = [6, 6, 6]  # the no-copy [B, L] view path
    x, batch = _x(18), _batch(sizes)
    ref = _per_graph_ref(x, batch, m)
    torch.testing.assert_close(m(x, batch), ref)
    torch.testing.assert_close(m(x, batch, num_graphs=3), ref)


def _pyg():
    from torch_geometric.nn.attention import SGFormerAttention as PyGSGFormer

    torch.manual_seed(0)
    return PyGSGFormer(C, heads=2, head_channels=C, qkv_bias=True)


def test_matches_pyg_with_node_norm():
    from torch_geometric.utils import to_dense_batch

    pyg = _pyg()
    m = SGFormerAttention.from_pyg(pyg)
    assert m.qk_norm == "node" and m.heads == 2
    x = _x(30, dtype=torch.float32)  # PyG's module builds float32 constants
    torch.testing.assert_close(m(x), pyg(x[None])[0], rtol=1e-5, atol=1e-5)
    batch = _batch([10, 10, 10])  # equal sizes: PyG's padding is empty
    xd, mask = to_dense_batch(x, batch)
    torch.testing.assert_close(m(x, batch), pyg(xd, mask)[mask], rtol=1e-5, atol=1e-5)


def test_pyg_counts_padding_for_unequal_graphs():
    """The module docstring's claim: PyG's padded batch differs for graphs of unequal size
    (its n and normaliser count the padding); gtpe gives each graph its own output."""
    from torch_geometric.utils import to_dense_batch

    pyg = _pyg()
    m = SGFormerAttention.from_pyg(pyg)
    x, batch = _x(13, dtype=torch.float32), _batch([3, 10])
    xd, mask = to_dense_batch(x, batch)
    alone = pyg(x[None, :3])[0]
    torch.testing.assert_close(m(x, batch)[:3], alone, rtol=1e-5, atol=1e-5)
    assert (pyg(xd, mask)[mask][:3] - alone).abs().max() > 1e-3


def test_from_pyg_rejects_other_head_size():
    from torch_geometric.nn.attention import SGFormerAttention as PyGSGFormer

    with pytest.raises(ValueError, match="head_channels == channels"):
        SGFormerAttention.from_pyg(PyGSGFormer(C, heads=1, head_channels=4))


@pytest.mark.parametrize("qk_norm", ["graph", "node"])
def test_permutation_equivariance(qk_norm):
    m = _module(2, qk_norm=qk_norm)
    sizes = [4, 9, 2, 6]
    x, batch = _x(sum(sizes)), _batch(sizes)
    g = torch.Generator().manual_seed(3)
    # shuffle the graph order and the nodes inside each graph (batch stays sorted)
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    order = torch.randperm(len(sizes), generator=g).tolist()
    perm = torch.cat([starts[o] + torch.randperm(sizes[o], generator=g) for o in order])
    new_batch = _batch([sizes[o] for o in order])
    torch.testing.assert_close(m(x[perm], new_batch), m(x, batch)[perm])


def test_batch_isolation():
    m = _module(2)
    xg = _x(7, seed=5)
    alone = m(xg)
    for before, after in ([], [3, 50]), ([4, 1], [2]), ([60, 2], []):
        xs = [_x(n, seed=10 + n) for n in before] + [xg] + [_x(n, seed=20 + n) for n in after]
        sizes = before + [7] + after
        out = m(torch.cat(xs), _batch(sizes))
        s = sum(before)
        torch.testing.assert_close(out[s : s + 7], alone)


def test_gradients_reach_every_parameter():
    for qk_norm in ("graph", "node"):
        m = _module(2, qk_norm=qk_norm)
        x = _x(20).requires_grad_()
        m(x, _batch([8, 12])).square().sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("qk_norm", ["graph", "node"])
def test_zero_queries_give_values_not_nan(qk_norm):
    m = _module(1, bias=False, qk_norm=qk_norm)
    with torch.no_grad():
        m.in_proj_weight[:C].zero_()  # W_Q = 0 -> Q = 0
    x = _x(5)
    out = m(x)
    v = x @ m.in_proj_weight[2 * C :].T
    torch.testing.assert_close(out, v)  # Q~ = 0: D = 1, Z' = V


def test_empty_input_and_errors():
    m = _module()
    x = torch.zeros(0, C, dtype=torch.float64, requires_grad=True)
    out = m(x, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, C)
    out.sum().backward()
    with pytest.raises(ValueError, match=r"expected x of shape \[N, 8\]"):
        m(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch must be"):
        m(_x(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        SGFormerAttention(C, qk_norm="row")
    with pytest.raises(ValueError, match="heads must be a positive int"):
        SGFormerAttention(C, heads=0)
    assert repr(m) == "SGFormerAttention(8, heads=1, bias=True, qk_norm='graph')"


def test_reset_parameters_like_linear():
    m = SGFormerAttention(64, heads=2)
    bound = 1 / 64**0.5
    assert m.in_proj_weight.abs().max() <= bound and m.in_proj_bias.abs().max() <= bound
    before = m.in_proj_weight.clone()
    m.reset_parameters()
    assert not torch.equal(before, m.in_proj_weight)


# ----------------------------------------------------------------------------- GraphLayout
@pytest.mark.parametrize(
    "sizes,shuffle",
    [
        ([12], False),  # one graph
        ([5, 5, 5], False),  # equal sizes: [B, L] view
        ([3, 6, 4, 5], False),  # one padded block
        ([2, 1, 40, 3, 0, 9], False),  # size-class blocks, an empty graph
        ([3, 6, 4, 5], True),  # unsorted batch
        ([2, 1, 40, 3, 9], True),
    ],
)
def test_graph_layout_matches_loops(sizes, shuffle):
    batch = _batch(sizes)
    N, B, H = batch.numel(), len(sizes), 2
    if shuffle:
        batch = batch[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(N, H, 3, generator=g), torch.randn(N, H, 3, generator=g)
    v = torch.randn(N, H, 4, generator=g)
    lay = GraphLayout(batch if B > 1 else None, N, B if B > 1 else None)
    ctx = torch.stack([torch.einsum("nhm,nhe->hme", k[batch == b], v[batch == b]) for b in range(B)])
    torch.testing.assert_close(lay.context(k, v), ctx)
    torch.testing.assert_close(lay.apply(q, ctx), torch.einsum("nhm,nhme->nhe", q, ctx[batch]))
    sums = torch.stack([k[batch == b].sum(0) for b in range(B)])
    torch.testing.assert_close(lay.sum(k), sums)
    expanded = lay.expand(sums)
    torch.testing.assert_close(expanded.expand(N, H, 3), sums[batch])
    assert lay.counts.tolist() == torch.bincount(batch, minlength=B).tolist()
    # padded blocks hold at most twice the nodes (memory O(N) however uneven the sizes)
    assert sum(Bc * Lc for *_, Bc, Lc in lay._buckets) <= 2 * N
