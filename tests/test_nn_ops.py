"""gtpe.nn.ops against dense float64 references (segment softmax, sums, max, mean)."""

import pytest
import torch

from gtpe.nn import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _dense_softmax(src, index, num_segments):
    out = torch.zeros_like(src)
    for s in range(num_segments):
        m = index == s
        if m.any():
            out[m] = torch.softmax(src[m], dim=0).nan_to_num(0.0)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("trailing", [(), (3,), (2, 4)])
def test_scatter_softmax_matches_dense(device, trailing):
    g = torch.Generator().manual_seed(0)
    E, S = 40, 7  # segment 6 (and maybe others) empty
    index = torch.randint(0, S - 1, (E,), generator=g)
    src = torch.randn((E,) + trailing, generator=g, dtype=torch.float64) * 30  # large: stability
    out = ops.scatter_softmax(src.to(device), index.to(device), S).cpu()
    ref = _dense_softmax(src, index, S)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # sums to one on every non-empty segment
    sums = ops.scatter_sum(out, index, S)
    nonempty = torch.bincount(index, minlength=S) > 0
    torch.testing.assert_close(sums[nonempty], torch.ones_like(sums[nonempty]))
    assert (sums[~nonempty] == 0).all()


def test_scatter_softmax_masked_and_huge_values():
    index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    ninf = float("-inf")
    src = torch.tensor(
        [1e4, 1e4 - 1.0, ninf, ninf, ninf, -1e4, 0.0, ninf], dtype=torch.float64, requires_grad=True
    )
    out = ops.scatter_softmax(src, index, 4)  # segment 1 fully masked, segment 3 empty
    assert torch.isfinite(out).all()
    e = torch.tensor([1.0, torch.e**-1], dtype=torch.float64)
    torch.testing.assert_close(out[:2], e / e.sum())
    assert out[2] == 0 and out[3] == 0 and out[4] == 0 and out[7] == 0
    torch.testing.assert_close(out[5:7], torch.tensor([0.0, 1.0], dtype=torch.float64))
    (out * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(src.grad).all()
    assert src.grad[3] == 0 and src.grad[4] == 0 and src.grad[2] == 0


def test_scatter_softmax_gradcheck():
    g = torch.Generator().manual_seed(1)
    index = torch.tensor([0, 2, 0, 2, 2, 3, 0])
    src = torch.randn(7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: ops.scatter_softmax(s, index, 5), (src,))
    assert torch.autograd.gradgradcheck(lambda s: ops.scatter_softmax(s, index, 5), (src,))


def test_reductions_match_dense_and_gradcheck():
    g = torch.Generator().manual_seed(2)
    index = torch.tensor([3, 0, 3, 1, 3, 0])
    src = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    S = 5  # segments 2 and 4 empty
    sum_ref = torch.stack([src[index == s].sum(0) for s in range(S)])
    mean_ref = torch.stack(
        [src[index == s].mean(0) if (index == s).any() else src.new_zeros(3) for s in range(S)]
    )
    max_ref = torch.stack(
        [
            src[index == s].max(0).values if (index == s).any() else src.new_zeros(3)
            for s in range(S)
        ]
    )
    torch.testing.assert_close(ops.scatter_sum(src, index, S), sum_ref)
    torch.testing.assert_close(ops.scatter_mean(src, index, S), mean_ref)
    torch.testing.assert_close(ops.scatter_max(src, index, S), max_ref)
    assert ops.segment_count(index, S).tolist() == [2, 1, 0, 3, 0]
    for fn in (ops.scatter_sum, ops.scatter_mean, ops.scatter_max):
        assert torch.autograd.gradcheck(lambda s, fn=fn: fn(s, index, S), (src,))


def test_softmax_bad_index_raises():
    with pytest.raises(ValueError, match="index has 3 entries"):
        ops.scatter_softmax(torch.zeros(4), torch.zeros(3, dtype=torch.long), 1)


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("GTPE_SCATTER_BACKEND", raising=False)
    assert ops._select_backend() == "torch"
    monkeypatch.setenv("GTPE_SCATTER_BACKEND", "Torch")
    assert ops._select_backend() == "torch"
    monkeypatch.setenv("GTPE_SCATTER_BACKEND", "cupy")
    with pytest.raises(ValueError, match="GTPE_SCATTER_BACKEND"):
        ops._select_backend()
    assert ops.backend() in ("torch", "torch_scatter")


def test_softmax_compiles():
    index = torch.tensor([0, 0, 1, 1, 1])
    src = torch.randn(5, 2)
    fn = torch.compile(ops.scatter_softmax, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(src, index, 3), ops.scatter_softmax(src, index, 3))


def test_edge_dot_and_aggregate_match_dense_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    dt = torch.float64
    q = torch.randn(5, 2, 3, generator=g, dtype=dt, requires_grad=True)
    k = torch.randn(4, 2, 3, generator=g, dtype=dt, requires_grad=True)
    w = torch.randn(7, 2, 3, generator=g, dtype=dt, requires_grad=True)
    w1 = torch.randn(1, 2, 3, generator=g, dtype=dt, requires_grad=True)
    a = torch.randn(7, 2, generator=g, dtype=dt, requires_grad=True)
    dst = torch.tensor([0, 1, 1, 4, 4, 4, 2])
    src = torch.tensor([3, 0, 1, 2, 3, 3, 0])
    for wt in (w, w1, None):
        ref = torch.stack(
            [
                (q[i] * k[j] * (1.0 if wt is None else wt[min(e, wt.size(0) - 1)])).sum(-1)
                for e, (i, j) in enumerate(zip(dst.tolist(), src.tolist(), strict=True))
            ]
        )
        torch.testing.assert_close(ops.edge_dot(q, k, dst, src, wt), ref)
    agg_ref = torch.zeros(6, 2, 3, dtype=dt)
    for e, (i, j) in enumerate(zip(dst.tolist(), src.tolist(), strict=True)):
        agg_ref[i] += a[e].unsqueeze(-1) * k[j]
    torch.testing.assert_close(ops.edge_aggregate(k, a, src, dst, 6), agg_ref)
    assert torch.autograd.gradcheck(lambda q, k, w: ops.edge_dot(q, k, dst, src, w), (q, k, w))
    assert torch.autograd.gradcheck(lambda q, k, w: ops.edge_dot(q, k, dst, src, w), (q, k, w1))
    assert torch.autograd.gradgradcheck(lambda q, k: ops.edge_dot(q, k, dst, src, w1), (q, k))
    assert torch.autograd.gradcheck(lambda v, a: ops.edge_aggregate(v, a, src, dst, 6), (k, a))
    assert torch.autograd.gradgradcheck(lambda v, a: ops.edge_aggregate(v, a, src, dst, 6), (k, a))
    with pytest.raises(ValueError, match="weight must have 7 or 1 rows"):
        ops.edge_dot(q, k, dst, src, w[:3])
    with pytest.raises(ValueError, match="same number of edges"):
        ops.edge_aggregate(k, a[:3], src, dst, 6)


def test_torch_scatter_backend_matches_native(monkeypatch):
    pytest.importorskip("torch_scatter")  # optional extra: pip install gtpe[scatter]
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 7, (50,), generator=g)  # segment 7..9 empty
    src = torch.randn(50, 3, 4, generator=g)
    native = [f(src, index, 10) for f in (ops.scatter_sum, ops.scatter_max, ops.scatter_mean,
                                          ops.scatter_softmax)]
    monkeypatch.setattr(ops, "_BACKEND", "torch_scatter")
    ext = [f(src, index, 10) for f in (ops.scatter_sum, ops.scatter_max, ops.scatter_mean,
                                       ops.scatter_softmax)]
    for a, b in zip(native, ext):
        torch.testing.assert_close(a, b)
