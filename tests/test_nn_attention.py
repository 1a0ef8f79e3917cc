"""Attention modules: dense float64 references, equivariance, no cross-graph flow, gradients."""

import math

import pytest
import torch

from gtpe.nn.attention import (
    ExphormerAttention,
    FullAttention,
    GRITAttention,
    LinearAttention,
)
from gtpe.nn.attention.grit import complete_pairs
from gtpe.nn.attention.linear import orthogonal_random_features

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
C, H = 8, 2


def _batch(sizes, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), C, generator=g, dtype=dtype).to(device)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
    return x, batch


def _perm(sizes, seed=0):
    """Node permutation that shuffles the order of the graphs and the nodes inside each graph,
    keeping ``batch`` sorted.  Returns (perm, new_sizes): new node k is old node perm[k]."""
    g = torch.Generator().manual_seed(seed)
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    order = torch.randperm(len(sizes), generator=g).tolist()
    perm = torch.cat([starts[o] + torch.randperm(sizes[o], generator=g) for o in order])
    return perm, [sizes[o] for o in order]


def _grad_check_all_params(module, loss):
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


# ----------------------------------------------------------------------------- FullAttention
STRATEGIES = ["auto", "kernel", "fused", "sdpa", "pad", "pairs", "block"]


def _mha_pair(strategy, dtype=torch.float64, bias=True):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(C, H, batch_first=True, bias=bias).to(dtype)
    with torch.no_grad():  # non-zero biases so that they are tested too
        for p in mha.parameters():
            p.normal_()
    fa = FullAttention(C, heads=H, bias=bias, strategy=strategy).to(dtype)
    fa.load_state_dict(mha.state_dict())  # same parameter names and shapes
    return mha, fa


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_matches_torch_mha_per_graph(device, strategy):
    sizes = [3, 1, 7, 5, 5, 40]  # includes a single node graph and one large graph
    mha, fa = _mha_pair(strategy)
    mha, fa = mha.to(device), fa.to(device)
    x, batch = _batch(sizes, device)
    out = fa(x, batch)
    ref = torch.cat(
        [mha(xi[None], xi[None], xi[None], need_weights=False)[0][0] for xi in x.split(sizes)]
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # float32 path too (the default dtype of models)
    mha32, fa32 = _mha_pair(strategy, torch.float32)
    out32 = fa32.to(device)(x.float(), batch)
    ref32 = torch.cat(
        [mha32.to(device)(xi[None], xi[None], xi[None])[0][0] for xi in x.float().split(sizes)]
    )
    torch.testing.assert_close(out32, ref32, rtol=1e-5, atol=1e-5)


def test_full_no_bias_and_single_graph_and_batch_none():
    mha, fa = _mha_pair("auto", bias=False)
    x, _ = _batch([6])
    ref = mha(x[None], x[None], x[None])[0][0]
    torch.testing.assert_close(fa(x, None), ref)
    torch.testing.assert_close(fa(x, torch.zeros(6, dtype=torch.long)), ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_permutation_equivariance_and_isolation(strategy):
    sizes = [4, 9, 2, 6, 30]
    _, fa = _mha_pair(strategy)
    x, batch = _batch(sizes)
    out = fa(x, batch)
    perm, new_sizes = _perm(sizes)
    _, new_batch = _batch(new_sizes)
    torch.testing.assert_close(fa(x[perm], new_batch), out[perm])
    # perturb graph 1 only: all other graphs unchanged, graph 1 changed
    x2 = x.clone()
    x2[batch == 1] += torch.randn_like(x2[batch == 1])
    out2 = fa(x2, batch)
    torch.testing.assert_close(out2[batch != 1], out[batch != 1], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[batch == 1], out[batch == 1])


def test_full_empty_graph_ids_and_gradients():
    # graph id 1 has no nodes (e.g. batch built from a filtered set): must still work
    _, fa = _mha_pair("auto")
    x = torch.randn(5, C, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0, 0, 2, 2, 2])
    out = fa(x, batch)
    assert torch.isfinite(out).all()
    _grad_check_all_params(fa, (out * torch.randn_like(out)).sum())
    assert torch.isfinite(x.grad).all()


def test_full_bucket_planner_groups_by_size():
    from gtpe.nn.attention.full import _plan_buckets

    sizes = [20] * 30 + [0, 400, 500]
    plan = _plan_buckets(sizes, auto=True)
    assert sorted(g for ids, _ in plan for g in ids) == [g for g, n in enumerate(sizes) if n > 0]
    for ids, L in plan:
        assert L == max(sizes[g] for g in ids)
    assert len(plan) >= 2 and any(L == 20 for _, L in plan)  # small graphs not padded to 500
    assert _plan_buckets([10, 12, 11], auto=True) == [([0, 2, 1], 12)]
    assert _plan_buckets([10, 0, 11], auto=False) == [([0, 2], 11)]


def test_full_dropout_train_vs_eval():
    fa = FullAttention(C, heads=H, dropout=0.5).double()
    x, batch = _batch([5, 6])
    fa.eval()
    torch.testing.assert_close(fa(x, batch), fa(x, batch))
    fa.train()
    torch.manual_seed(1)
    a = fa(x, batch)
    torch.manual_seed(2)
    assert not torch.allclose(a, fa(x, batch))


def test_full_errors_and_repr():
    with pytest.raises(ValueError, match="multiple of heads"):
        FullAttention(10, heads=3)
    with pytest.raises(ValueError, match="strategy"):
        FullAttention(8, strategy="nope")
    fa = FullAttention(8, heads=2)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        fa(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    assert repr(fa) == "FullAttention(8, heads=2, dropout=0.0, strategy='auto')"


def test_full_fused_path_gradients_and_buckets():
    """The fused CPU path (custom backward) against autograd through the SDPA path, with several
    size buckets, an empty graph id, and float64 gradcheck."""
    from gtpe.nn.attention.full import _layout, _plan_buckets

    sizes = [20] * 12 + [0, 90, 3, 1]  # the planner splits this into >= 2 buckets
    assert len(_plan_buckets(sizes, auto=True)) >= 2
    _, fused = _mha_pair("fused")
    _, ref = _mha_pair("pad")
    x, batch = _batch(sizes)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    o1, o2 = fused(x1, batch), ref(x2, batch)
    torch.testing.assert_close(o1, o2)
    w = torch.randn_like(o1)
    (o1 * w).sum().backward()
    (o2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (n, p1), p2 in zip(fused.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, msg=n)
    # gradcheck on a small multi-bucket batch (qkv -> output of the fused kernel)
    from gtpe.nn.attention.full import _fused_plan, _FusedAttention

    small = [2, 0, 5, 1, 3]
    b = torch.repeat_interleave(torch.arange(len(small)), torch.tensor(small))
    info = _layout(b, None)
    info["buckets"] = [([3, 0], 2), ([4, 2], 5)]  # force two buckets
    qkv = torch.randn(b.numel(), 3 * C, dtype=torch.float64, requires_grad=True)
    plan = _fused_plan(info, H, qkv, auto=True)
    assert torch.autograd.gradcheck(lambda t: _FusedAttention.apply(t, plan, C // H), (qkv,))


def _require_kernel():
    """Skip only where there is no C compiler at all (that case is the fallback test's); with a
    compiler, a kernel that does not build is a failure."""
    from gtpe import _native
    from gtpe.nn.attention.full import _kernel

    if _native._compiler() is None:
        pytest.skip("no C compiler on this machine: the kernel cannot be built here")
    if _kernel(torch.float32) is None or _kernel(torch.float64) is None:
        pytest.fail("the C kernel could not be built here (see the RuntimeWarning)")


@pytest.mark.parametrize("channels,heads", [(8, 2), (64, 4), (40, 2)])  # head dim 4, 16, 20
def test_full_kernel_matches_dense_reference(channels, heads):
    """The compiled kernel (strategy 'kernel') against the padded SDPA path, float64 and
    float32, with graph sizes that cross vector boundaries (1, 15, 16, 17, 70), an empty graph
    id and head dims below, equal to and above one vector; then a float64 gradcheck."""
    _require_kernel()
    from gtpe.nn.attention.full import _KernelAttention, _KernelPlan

    sizes = [17, 1, 0, 70, 16, 15, 3]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        torch.manual_seed(0)
        kern = FullAttention(channels, heads=heads, strategy="kernel").to(dtype)
        ref = FullAttention(channels, heads=heads, strategy="pad").to(dtype)
        with torch.no_grad():
            kern.in_proj_bias.normal_()
        ref.load_state_dict(kern.state_dict())
        x = torch.randn(batch.numel(), channels, dtype=dtype) * 3
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        o1, o2 = kern(x1, batch), ref(x2, batch)
        torch.testing.assert_close(o1, o2, rtol=tol, atol=tol)
        w = torch.randn_like(o1)
        (o1 * w).sum().backward()
        (o2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=tol, atol=tol)
        for (n, p1), p2 in zip(kern.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p1.grad, p2.grad, rtol=tol, atol=10 * tol, msg=n)
        with torch.no_grad():  # inference keeps no probabilities: same output
            torch.testing.assert_close(kern(x, batch), o1.detach())
    small = [2, 0, 5, 1, 3]
    plan = _KernelPlan(small, heads)
    qkv = torch.randn(sum(small), 3 * channels, dtype=torch.float64, requires_grad=True)
    D = channels // heads
    assert torch.autograd.gradcheck(lambda t: _KernelAttention.apply(t, plan, D, True), (qkv,))


def test_full_kernel_large_scores_and_auto_choice(monkeypatch):
    """Scores of +-1e4 (softmax must subtract the row max; exp underflows to exactly 0); 'auto'
    on CPU runs the kernel, except, when it is single-threaded (built without OpenMP), for
    large batches with more than two torch threads."""
    _require_kernel()
    from gtpe.nn.attention import full

    sizes = [30, 5, 41, 12, 9, 33]
    _, batch = _batch(sizes)
    kern = FullAttention(16, heads=2, strategy="kernel")
    ref = FullAttention(16, heads=2, strategy="pad")
    ref.load_state_dict(kern.state_dict())
    x = torch.randn(batch.numel(), 16) * 300
    torch.testing.assert_close(kern(x, batch), ref(x, batch), rtol=1e-4, atol=1e-3)

    fwd, bwd, _ = full._kernel(torch.float32)
    monkeypatch.setitem(full._kernels, torch.float32, (fwd, bwd, False))  # as if built without OpenMP
    calls = []
    for cls in (full._KernelAttention, full._FusedAttention):
        monkeypatch.setattr(cls, "apply", lambda *a, _f=cls.apply, _n=cls.__name__: calls.append(_n) or _f(*a))
    auto = FullAttention(16, heads=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        auto(x, batch)
        torch.set_num_threads(3)
        auto(x, batch)  # small batch: still the kernel
        monkeypatch.setattr(full, "_KERNEL_SERIAL_MAX", 100)
        auto(x, batch)  # "large" batch, three threads: the multi-threaded matmuls
    finally:
        torch.set_num_threads(threads)
    assert calls == ["_KernelAttention", "_KernelAttention", "_FusedAttention"]


def test_full_kernel_on_torch_openmp_threads():
    """Where torch runs on GNU OpenMP the kernel is built with it, binds to torch's runtime (one
    libgomp in the process) and gives, on two threads, the one-thread result bit for bit."""
    _require_kernel()
    from gtpe import _native
    from gtpe.nn.attention import full

    assert full._kernel(torch.float32)[2] == _native.torch_uses_gnu_openmp()
    if _native.torch_uses_gnu_openmp():
        with open("/proc/self/maps") as f:
            gomps = {line.split()[-1] for line in f if line.rstrip().endswith("/libgomp.so.1")}
        assert len(gomps) == 1, gomps  # (scikit-learn's renamed copy may be there too: another soname)
    sizes = [60, 61, 3, 62, 59]  # 4 heads: ~59k score entries, above the kernel's serial limit
    _, batch = _batch(sizes)
    kern = FullAttention(16, heads=4, strategy="kernel")
    x = torch.randn(batch.numel(), 16)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            xt = x.clone().requires_grad_()
            out = kern(xt, batch)
            out.square().sum().backward()
            results.append((out.detach(), xt.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_full_kernel_falls_back_without_a_compiler(monkeypatch):
    """No C compiler: 'kernel' (and 'auto') warn once and compute the same on the torch path."""
    from gtpe import _native
    from gtpe.nn.attention import full

    monkeypatch.setattr(full, "_kernels", {})
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setenv("CC", "/nonexistent/cc")
    _, kern = _mha_pair("kernel")
    _, ref = _mha_pair("pad")
    x, batch = _batch([4, 7])
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        out = kern(x, batch)
    torch.testing.assert_close(out, ref(x, batch))
    assert full._kernels[torch.float64] is None


def test_full_layout_cache_is_shared():
    """With a shared ``cache`` the batch layout is computed once and reused (same result)."""
    _, fa = _mha_pair("auto")
    x, batch = _batch([4, 9, 2])
    cache = {}
    a = fa(x, batch, cache=cache)
    info = cache["full_attention_layout"]
    assert info["batch"] is batch and info["sizes"] == [4, 9, 2]
    b = fa(x, batch, cache=cache)
    assert cache["full_attention_layout"] is info
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, fa(x, batch))
    _, batch2 = _batch([9, 4, 2])  # another batch tensor: recomputed, not reused
    fa(x, batch2, cache=cache)
    assert cache["full_attention_layout"]["sizes"] == [9, 4, 2]


def test_full_fused_with_dropout_in_training():
    # attention dropout in training uses the SDPA path (fused has no dropout); eval = fused
    fa = FullAttention(C, heads=H, dropout=0.5, strategy="fused").double()
    x, batch = _batch([5, 6])
    fa.eval()
    ref = FullAttention(C, heads=H, strategy="pad").double()
    ref.load_state_dict(fa.state_dict())
    torch.testing.assert_close(fa(x, batch), ref(x, batch))
    fa.train()
    torch.manual_seed(1)
    out = fa(x, batch)
    assert torch.isfinite(out).all() and not torch.allclose(out, ref(x, batch))


def test_full_compiles_aot_eager():
    _, fa = _mha_pair("auto")
    x, batch = _batch([3, 5])
    compiled = torch.compile(fa, backend="aot_eager")
    torch.testing.assert_close(compiled(x, batch), fa(x, batch))


def _relabel(index, perm):
    """Relabel node ids of an index tensor under a node permutation (new k = old perm[k])."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv[index]


def _random_pairs(sizes, p, seed, exclude=None):
    """Random directed intra-graph pairs (no duplicates, none in ``exclude``), [2, M]."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    excl = set() if exclude is None else set(map(tuple, exclude.T.tolist()))
    for n in sizes:
        for i in range(n):
            for j in range(n):
                if torch.rand((), generator=g) < p and (j + start, i + start) not in excl:
                    out.append((j + start, i + start))
        start += n
    return torch.tensor(out, dtype=torch.long).T.reshape(2, -1)


# ----------------------------------------------------------------------------- LinearAttention


def _dense_performer_reference(la, x, batch):
    """Per graph: out = D^-1 phi(Q) phi(K)^T V with phi(u) = exp(W u - |u|^2/2)/sqrt(m)."""
    d, Hh = la.head_dim, la.heads
    W = la.projection_matrix.double()
    qkv = x @ la.in_proj_weight.T + la.in_proj_bias
    outs = []
    for gid in range(int(batch.max()) + 1):
        sel = batch == gid
        q, k, v = qkv[sel].view(-1, 3, Hh, d).unbind(1)
        q, k = q * d**-0.25, k * d**-0.25
        heads = []
        for h in range(Hh):
            phq = torch.exp(q[:, h] @ W.T - (q[:, h] ** 2).sum(-1, keepdim=True) / 2) / math.sqrt(
                W.size(0)
            )
            phk = torch.exp(k[:, h] @ W.T - (k[:, h] ** 2).sum(-1, keepdim=True) / 2) / math.sqrt(
                W.size(0)
            )
            A = phq @ phk.T
            heads.append((A / A.sum(1, keepdim=True)) @ v[:, h])
        outs.append(torch.cat(heads, 1))
    return la.out_proj(torch.cat(outs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [[4, 1, 9, 6], [1, 1, 1, 1, 1, 40]])  # padded / segment path
def test_linear_matches_dense_kernel_reference(device, sizes):
    la = LinearAttention(C, heads=H, num_features=16, seed=3).double().to(device)
    with torch.no_grad():
        la.in_proj_bias.normal_()
    x, batch = _batch(sizes, device)
    out = la(x * 3, batch)  # large inputs: checks the stabilisation
    ref = _dense_performer_reference(la, x * 3, batch)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sizes", [[5, 5, 5], [3, 0, 4], [0, 6]])  # equal sizes: no padding
def test_linear_equal_sizes_and_empty_graphs_match_reference(sizes):
    la = LinearAttention(C, heads=H, num_features=16, seed=4).double()
    with torch.no_grad():
        la.in_proj_bias.normal_()
    x, _ = _batch([n for n in sizes if n], "cpu")
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    out = la(x * 3, batch)
    ref = _dense_performer_reference(la, x * 3, batch.unique(return_inverse=True)[1])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in la.parameters())


def test_linear_approximates_softmax_attention():
    la = LinearAttention(C, heads=H, num_features=4096, seed=0).double().eval()
    fa = FullAttention(C, heads=H).double()
    fa.load_state_dict(
        {k: v for k, v in la.state_dict().items() if k.startswith(("in_proj", "out_proj"))}
    )
    x, batch = _batch([5, 1, 12], seed=1)
    err = (la(x * 0.5, batch) - fa(x * 0.5, batch)).abs()
    assert err.mean() < 0.02 and err.max() < 0.1
    # few features: much worse (the test above is not trivially satisfied)
    few = LinearAttention(C, heads=H, num_features=2, seed=0).double().eval()
    few.load_state_dict({**la.state_dict(), "projection_matrix": few.projection_matrix})
    assert (few(x * 0.5, batch) - fa(x * 0.5, batch)).abs().mean() > err.mean()


def test_linear_orthogonal_features():
    w = orthogonal_random_features(10, 4, torch.Generator().manual_seed(0), torch.float64)
    assert w.shape == (10, 4)
    for blk in (w[0:4], w[4:8]):
        u = blk / blk.norm(dim=1, keepdim=True)
        torch.testing.assert_close(u @ u.T, torch.eye(4, dtype=torch.float64))


def test_linear_redraw_policy_and_determinism():
    x, batch = _batch([3, 4], dtype=torch.float32)
    la = LinearAttention(C, heads=H, redraw_interval=2, seed=7)
    la2 = LinearAttention(C, heads=H, redraw_interval=2, seed=7)
    w0 = la.projection_matrix.clone()
    torch.testing.assert_close(la2.projection_matrix, w0)
    la.eval()
    for _ in range(5):
        la(x, batch)
    torch.testing.assert_close(la.projection_matrix, w0)  # fixed in eval
    la.train()
    la(x, batch)
    la(x, batch)
    torch.testing.assert_close(la.projection_matrix, w0)  # 2 forwards with the first draw
    la(x, batch)
    w1 = la.projection_matrix.clone()
    assert not torch.allclose(w1, w0) and int(la.num_draws) == 2
    la2.train()
    for _ in range(3):
        la2(x, batch)
    torch.testing.assert_close(la2.projection_matrix, w1)  # same seed, same draws
    la3 = LinearAttention(C, heads=H, redraw_interval=2, seed=7)
    la3.load_state_dict(la.state_dict())
    la3.eval()
    torch.testing.assert_close(la3(x, batch), la.eval()(x, batch))
    never = LinearAttention(C, heads=H, redraw_interval=None, seed=7).train()
    for _ in range(3):
        never(x, batch)
    torch.testing.assert_close(never.projection_matrix, w0)


def test_linear_equivariance_isolation_gradients():
    sizes = [4, 9, 2, 6]
    la = LinearAttention(C, heads=H, num_features=8, seed=1).double().eval()
    with torch.no_grad():
        la.in_proj_bias.normal_()
        la.out_proj.bias.normal_()
    x, batch = _batch(sizes)
    out = la(x, batch)
    perm, new_sizes = _perm(sizes)
    torch.testing.assert_close(la(x[perm], _batch(new_sizes)[1]), out[perm])
    x2 = x.clone()
    x2[batch == 1] += 1.0
    out2 = la(x2, batch)
    torch.testing.assert_close(out2[batch != 1], out[batch != 1], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[batch == 1], out[batch == 1])
    _grad_check_all_params(la, (out * torch.randn_like(out)).sum())
    assert (
        repr(la) == "LinearAttention(8, heads=2, num_features=8, dropout=0.0, redraw_interval=1000)"
    )


def test_linear_unsorted_batch():
    la = LinearAttention(C, heads=H, num_features=8, seed=2).double().eval()
    x, batch = _batch([3, 5, 4])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))  # mixes the graphs
    torch.testing.assert_close(la(x[perm], batch[perm]), la(x, batch)[perm])


def test_linear_compiles_aot_eager():
    la = LinearAttention(C, heads=H, seed=0).eval()
    x, batch = _batch([3, 5], dtype=torch.float32)
    torch.testing.assert_close(torch.compile(la, backend="aot_eager")(x, batch), la(x, batch))


# ----------------------------------------------------------------------------- Exphormer


def _exphormer_setup(sizes, seed=0, edge_dim=3, num_virtual=2):
    torch.manual_seed(seed)
    m = ExphormerAttention(C, heads=H, edge_dim=edge_dim, num_virtual=num_virtual).double()
    with torch.no_grad():
        m.in_proj_bias.normal_()
    x, batch = _batch(sizes, seed=seed)
    ei = _random_pairs(sizes, 0.3, seed)
    exp = _random_pairs(sizes, 0.2, seed + 1, exclude=ei)
    g = torch.Generator().manual_seed(seed)
    ea = torch.randn(ei.size(1), edge_dim, generator=g, dtype=torch.float64) if edge_dim else None
    return m, x, batch, ei, ea, exp


def _dense_exphormer(m, x, batch, ei, ea, exp, virtual_x=None):
    N, Cc, Hh, D, V = x.size(0), m.channels, m.heads, m.head_dim, m.num_virtual
    B = int(batch.max()) + 1
    if V == 0:
        vx = x.new_zeros(0, Cc)
    else:
        vx = m.virtual_emb.repeat(B, 1) if virtual_x is None else virtual_x
    h = torch.cat([x, vx])
    M = h.size(0)
    q, k, v = (h @ m.in_proj_weight.T + m.in_proj_bias).view(M, 3, Hh, D).unbind(1)
    E = h.new_zeros(M, M, Cc)  # E[i, j] for edge j -> i
    mask = torch.zeros(M, M, dtype=torch.bool)
    E[ei[1], ei[0]] = m.edge_proj(ea) if ea is not None else m.type_emb[0]
    mask[ei[1], ei[0]] = True
    E[exp[1], exp[0]] = m.type_emb[1]
    mask[exp[1], exp[0]] = True
    for i in range(N):
        for t in range(V):
            vn = N + int(batch[i]) * V + t
            E[vn, i] = E[i, vn] = m.type_emb[2]
            mask[vn, i] = mask[i, vn] = True
    E = E.view(M, M, Hh, D)
    s = torch.einsum("ihd,jhd,ijhd->hij", q, k, E) / math.sqrt(D)
    s = s.masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, -1).nan_to_num(0.0)  # rows without edges -> 0
    out = torch.einsum("hij,jhd->ihd", a, v).reshape(M, Cc)
    out = m.out_proj(out)
    return out[:N], out[N:]


@pytest.mark.parametrize("edge_dim", [None, 3])
@pytest.mark.parametrize("num_virtual", [0, 2])
def test_exphormer_matches_dense_masked_reference(edge_dim, num_virtual):
    sizes = [5, 1, 7]
    m, x, batch, ei, ea, exp = _exphormer_setup(sizes, edge_dim=edge_dim, num_virtual=num_virtual)
    out, vout = m(x, ei, batch, edge_attr=ea, expander_index=exp)
    ref, vref = _dense_exphormer(m, x, batch, ei, ea, exp)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert vout.shape == (len(sizes) * num_virtual, C)
    torch.testing.assert_close(vout, vref, rtol=1e-10, atol=1e-10)
    if num_virtual:
        # the next layer continues from the returned virtual states
        out2, vout2 = m(out, ei, batch, edge_attr=ea, expander_index=exp, virtual_x=vout)
        ref2, vref2 = _dense_exphormer(m, out, batch, ei, ea, exp, virtual_x=vout)
        torch.testing.assert_close(out2, ref2, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(vout2, vref2, rtol=1e-10, atol=1e-10)


def test_exphormer_equivariance_isolation_gradients():
    sizes = [4, 6, 3]
    m, x, batch, ei, ea, exp = _exphormer_setup(sizes, seed=1)
    out, vout = m(x, ei, batch, edge_attr=ea, expander_index=exp)
    perm, new_sizes = _perm(sizes, seed=2)
    _, new_batch = _batch(new_sizes)
    gperm = torch.unique_consecutive(batch[perm])  # new graph k = old graph gperm[k]
    pout, pvout = m(
        x[perm], _relabel(ei, perm), new_batch, edge_attr=ea, expander_index=_relabel(exp, perm)
    )
    torch.testing.assert_close(pout, out[perm])
    torch.testing.assert_close(pvout.view(-1, 2, C), vout.view(-1, 2, C)[gperm])
    x2 = x.clone()
    x2[batch == 1] += 1.0
    out2, vout2 = m(x2, ei, batch, edge_attr=ea, expander_index=exp)
    torch.testing.assert_close(out2[batch != 1], out[batch != 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(vout2[[0, 1, 4, 5]], vout[[0, 1, 4, 5]], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[batch == 1], out[batch == 1])
    _grad_check_all_params(m, (out * torch.randn_like(out)).sum() + vout.sum())


def test_exphormer_errors_and_repr():
    m = ExphormerAttention(C, heads=H, edge_dim=3)
    x = torch.randn(3, C)
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="edge_attr is required"):
        m(x, ei, None)
    with pytest.raises(ValueError, match="virtual_x must be"):
        m(x, ei, None, edge_attr=torch.randn(2, 3), virtual_x=torch.randn(1, 5))
    with pytest.raises(ValueError, match="edge_dim=None"):
        ExphormerAttention(C, heads=H)(x, ei, None, edge_attr=torch.randn(2, 3))
    assert repr(m) == "ExphormerAttention(8, heads=2, dropout=0.0, edge_dim=3, num_virtual=1)"


def test_exphormer_compiles_aot_eager():
    m, x, batch, ei, ea, exp = _exphormer_setup([3, 4], seed=3)
    compiled = torch.compile(m, backend="aot_eager")
    a = compiled(x, ei, batch, edge_attr=ea, expander_index=exp, num_graphs=2)
    b = m(x, ei, batch, edge_attr=ea, expander_index=exp, num_graphs=2)
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- GRIT


def _grit_setup(sizes, seed=0, full_pairs=False, clamp=5.0):
    torch.manual_seed(seed)
    m = GRITAttention(C, heads=H, full_pairs=full_pairs, clamp=clamp, bias=True).double()
    with torch.no_grad():
        for lin in (m.lin_q, m.lin_k, m.lin_v, m.lin_e):
            lin.bias.normal_()
    x, batch = _batch(sizes, seed=seed)
    pi = _random_pairs(sizes, 0.4, seed)
    g = torch.Generator().manual_seed(seed)
    pa = torch.randn(pi.size(1), C, generator=g, dtype=torch.float64)
    return m, x, batch, pi, pa


def _dense_grit(m, x, batch, pi, pa, deg, full):
    """Per graph, dense [n, n] tensors (target i, source j) of the GRIT equations."""
    Hh, D = m.heads, m.head_dim
    outs, pair_out = [], {}
    start = 0
    for gid in range(int(batch.max()) + 1):
        n = int((batch == gid).sum())
        xs = x[start : start + n]
        mask = torch.zeros(n, n, dtype=torch.bool)
        e = x.new_zeros(n, n, m.channels)
        for t in range(pi.size(1)):
            j, i = int(pi[0, t]) - start, int(pi[1, t]) - start
            if 0 <= i < n:
                mask[i, j] = True
                e[i, j] = pa[t]
        if full:
            mask[:] = True
        q = m.lin_q(xs).view(n, 1, Hh, D)
        k = m.lin_k(xs).view(1, n, Hh, D)
        v = m.lin_v(xs).view(n, Hh, D)
        ew, eb = m.lin_e(e).view(n, n, Hh, 2 * D).split(D, -1)
        s = (q + k) * ew
        ehat = torch.relu(torch.sign(s) * torch.sqrt(s.abs()) + eb)  # [i, j, H, D]
        score = (ehat * m.attn_weight).sum(-1)
        if m.clamp is not None:
            score = score.clamp(-m.clamp, m.clamp)
        score = score.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        a = torch.softmax(score, dim=1).nan_to_num(0.0)  # over sources j
        xo = torch.einsum("ijh,jhd->ihd", a, v) + torch.einsum(
            "ijh,ijhd,hdc->ihc", a, ehat, m.edge_value
        )
        xo = xo.reshape(n, m.channels)
        ld = torch.log1p(deg[start : start + n].double()).view(n, 1)
        xo = xo * m.deg_coef[:, 0] + ld * xo * m.deg_coef[:, 1]
        outs.append(m.out_proj(xo))
        eo = m.pair_out_proj(ehat.reshape(n, n, m.channels))
        for i in range(n):
            for j in range(n):
                if mask[i, j]:
                    pair_out[(j + start, i + start)] = eo[i, j]
        start += n
    return torch.cat(outs), pair_out


@pytest.mark.parametrize("full_pairs", [False, True])
@pytest.mark.parametrize("clamp", [5.0, None])
def test_grit_matches_dense_reference(full_pairs, clamp):
    sizes = [4, 1, 5]
    m, x, batch, pi, pa = _grit_setup(sizes, full_pairs=full_pairs, clamp=clamp)
    out, pout, new_pi = m(x, pi, pa, batch)
    deg = torch.bincount(pi[1], minlength=x.size(0))  # documented default degree
    ref, ref_pairs = _dense_grit(m, x, batch, pi, pa, deg, full_pairs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert new_pi.size(1) == len(ref_pairs) == pout.size(0)
    if not full_pairs:
        assert torch.equal(new_pi, pi)
    for t, (j, i) in enumerate(new_pi.T.tolist()):
        torch.testing.assert_close(pout[t], ref_pairs[(j, i)], rtol=1e-10, atol=1e-10)
    # explicit degree (e.g. the graph degree, as in GRIT)
    deg2 = torch.arange(x.size(0)) % 3
    out2, _, _ = m(x, pi, pa, batch, deg=deg2)
    torch.testing.assert_close(
        out2, _dense_grit(m, x, batch, pi, pa, deg2, full_pairs)[0], rtol=1e-10, atol=1e-10
    )


def test_complete_pairs_matches_loop():
    sizes = [3, 1, 4]
    _, _, batch, pi, pa = _grit_setup(sizes)
    pi = torch.cat([pi, pi[:, :1]], 1)  # a duplicate pair: summed
    pa = torch.cat([pa, pa[:1]], 0)
    idx, attr = complete_pairs(pi, pa, batch)
    expect, start = [], 0
    for n in sizes:
        expect += [(j, i) for i in range(start, start + n) for j in range(start, start + n)]
        start += n
    assert idx.T.tolist() == [list(p) for p in expect]
    for t, (j, i) in enumerate(expect):
        sel = (pi[0] == j) & (pi[1] == i)
        torch.testing.assert_close(attr[t], pa[sel].sum(0))
    with pytest.raises(ValueError, match="different graphs"):
        complete_pairs(torch.tensor([[0], [5]]), pa[:1], batch)


@pytest.mark.parametrize("full_pairs", [False, True])
def test_grit_equivariance_isolation_gradients(full_pairs):
    sizes = [4, 5, 3]
    m, x, batch, pi, pa = _grit_setup(sizes, seed=1, full_pairs=full_pairs)
    out, pout, new_pi = m(x, pi, pa, batch)
    perm, new_sizes = _perm(sizes, seed=3)
    pout_p, pout_pp, new_pi_p = m(x[perm], _relabel(pi, perm), pa, _batch(new_sizes)[1])
    torch.testing.assert_close(pout_p, out[perm])
    # pair outputs: match by (old) pair identity
    old = {tuple(p): pout[t] for t, p in enumerate(new_pi.T.tolist())}
    for t, (j, i) in enumerate(new_pi_p.T.tolist()):
        torch.testing.assert_close(pout_pp[t], old[(int(perm[j]), int(perm[i]))])
    x2 = x.clone()
    x2[batch == 1] += 1.0
    out2, pout2, _ = m(x2, pi, pa, batch)
    torch.testing.assert_close(out2[batch != 1], out[batch != 1], rtol=0, atol=1e-12)
    in1 = batch[new_pi[1]] == 1
    torch.testing.assert_close(pout2[~in1], pout[~in1], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[batch == 1], out[batch == 1])
    _grad_check_all_params(
        m, (out * torch.randn_like(out)).sum() + (pout * torch.randn_like(pout)).sum()
    )


def test_grit_errors_and_repr():
    m = GRITAttention(C, heads=H)
    x = torch.randn(3, C)
    with pytest.raises(ValueError, match="pair_attr must be"):
        m(x, torch.tensor([[0], [1]]), torch.randn(1, 3), None)
    assert (
        repr(m)
        == "GRITAttention(8, heads=2, dropout=0.0, full_pairs=False, clamp=5.0, deg_scaler=True)"
    )
    with pytest.raises(ValueError, match="unknown pair_norm 'group'"):
        GRITAttention(C, heads=H, pair_norm="group")
    with pytest.raises(ValueError, match="pair_dropout must be in"):
        GRITAttention(C, heads=H, pair_dropout=1.0)
    with pytest.raises(ValueError, match="pair_residual must be True or False"):
        GRITAttention(C, heads=H, pair_residual=1)
    m2 = GRITAttention(C, heads=H, pair_dropout=0.1, pair_residual=True, pair_norm="layer")
    assert isinstance(m2.pair_norm, torch.nn.LayerNorm)
    assert repr(m2).endswith(
        "deg_scaler=True, pair_dropout=0.1, pair_residual=True, pair_norm='layer')"
    )
    m3 = GRITAttention(C, heads=H, pair_norm="batch", update_pairs=False)
    assert m3.pair_norm is None and m3.pair_out_proj is None


def test_grit_compiles_aot_eager():
    m, x, batch, pi, pa = _grit_setup([3, 4], seed=2)
    compiled = torch.compile(m, backend="aot_eager")
    for a, b in zip(compiled(x, pi, pa, batch), m(x, pi, pa, batch), strict=True):
        torch.testing.assert_close(a, b)


def test_unsorted_batch_rejected_where_sortedness_is_needed():
    x = torch.randn(3, C)
    batch = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match="sorted"):
        FullAttention(C, heads=H)(x, batch)
    with pytest.raises(ValueError, match="sorted"):
        complete_pairs(torch.tensor([[0], [2]]), torch.randn(1, C), batch)


def test_linear_single_graph_path_matches_reference():
    la = LinearAttention(C, heads=H, num_features=12, seed=5).double()
    x, batch = _batch([11])
    ref = _dense_performer_reference(la, x, batch)
    torch.testing.assert_close(la.eval()(x, None), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la(x, batch), ref, rtol=1e-10, atol=1e-10)


def test_signed_sqrt_values_and_gradients():
    from gtpe.nn.attention.grit import signed_sqrt

    s = torch.tensor([-4.0, -0.25, 0.0, 0.25, 9.0], dtype=torch.float64, requires_grad=True)
    y = signed_sqrt(s)
    torch.testing.assert_close(y, torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64))
    y.sum().backward()
    torch.testing.assert_close(
        s.grad, torch.tensor([0.25, 1.0, 0.0, 1.0, 1 / 6], dtype=torch.float64)
    )
    t = torch.tensor([-2.0, -0.3, 0.7, 1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(signed_sqrt, (t,))


def test_exphormer_init_virtual_false_needs_virtual_x():
    m, x, batch, ei, ea, exp = _exphormer_setup([3, 4], seed=4)
    torch.manual_seed(4)
    m2 = ExphormerAttention(C, heads=H, edge_dim=3, num_virtual=2, init_virtual=False).double()
    assert m2.virtual_emb is None and "virtual_emb" not in dict(m2.named_parameters())
    assert len(list(m2.parameters())) == len(list(m.parameters())) - 1
    assert repr(m2).endswith("num_virtual=2, init_virtual=False)")
    with pytest.raises(ValueError, match="virtual_x is required"):
        m2(x, ei, batch, edge_attr=ea, expander_index=exp)
    state = {k: v for k, v in m.state_dict().items() if k != "virtual_emb"}
    m2.load_state_dict(state)
    vx = torch.randn(2 * 2, C, dtype=torch.float64)
    for a, b in zip(
        m2(x, ei, batch, edge_attr=ea, expander_index=exp, virtual_x=vx),
        m(x, ei, batch, edge_attr=ea, expander_index=exp, virtual_x=vx),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("full_pairs", [False, True])
def test_grit_update_pairs_false_passes_pairs_through(full_pairs):
    m, x, batch, pi, pa = _grit_setup([3, 4], seed=6, full_pairs=full_pairs)
    m2 = GRITAttention(C, heads=H, full_pairs=full_pairs, bias=True, update_pairs=False).double()
    assert m2.pair_out_proj is None
    assert not any(n.startswith("pair_out_proj") for n, _ in m2.named_parameters())
    assert repr(m2).endswith("deg_scaler=True, update_pairs=False)")
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if "pair_out_proj" not in k})
    x_ref, _, pi_ref = m(x, pi, pa, batch)
    x_out, pa_out, pi_out = m2(x, pi, pa, batch)
    torch.testing.assert_close(x_out, x_ref, rtol=0, atol=0)
    assert torch.equal(pi_out, pi_ref)
    pa_exp = complete_pairs(pi, pa, batch)[1] if full_pairs else pa
    assert torch.equal(pa_out, pa_exp)
    x_out.square().sum().backward()
    assert all(p.grad is not None for p in m2.parameters())


# ----------------------------------------------------------------------------- additive bias
BIAS_C, BIAS_H = 16, 4  # head dim 4


def _dense_biased_reference(fa, x, batch, pair_index, pair_bias, default_bias):
    """float64, per graph, straight from the equation: softmax(Q K^T / sqrt(d) + B) V with
    B[h, i, j] = pair_bias[m, h] for (j, i) = pair_index[:, m], else default_bias[h]."""
    H, d = fa.heads, fa.head_dim
    W, b = fa.in_proj_weight.double(), fa.in_proj_bias.double()
    default = torch.as_tensor(default_bias, dtype=torch.float64).expand(H)
    outs = []
    for gid in range(int(batch.max()) + 1):
        nodes = torch.nonzero(batch == gid).view(-1)
        n = nodes.numel()
        if n == 0:
            continue
        local = {int(v): t for t, v in enumerate(nodes)}
        B = default.view(H, 1, 1).repeat(1, n, n)
        for m in range(pair_index.size(1)):
            j, i = int(pair_index[0, m]), int(pair_index[1, m])
            if j in local:
                B[:, local[i], local[j]] = pair_bias[m].double()
        q, k, v = (x[nodes].double() @ W.T + b).view(n, 3, H, d).unbind(1)
        S = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d) + B
        outs.append(torch.einsum("hij,jhd->ihd", S.softmax(-1), v).reshape(n, H * d))
    out = torch.cat(outs)
    return out @ fa.out_proj.weight.double().T + fa.out_proj.bias.double()


def _biased_case(sizes, dtype=torch.float64, p=0.5, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(sum(sizes), BIAS_C, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pairs = _random_pairs(sizes, p, seed)
    pair_bias = torch.randn(pairs.size(1), BIAS_H, dtype=dtype) * 2
    default = torch.randn(BIAS_H, dtype=dtype) * 2
    return x, batch, pairs, pair_bias, default


def _biased_module(strategy, dtype=torch.float64):
    torch.manual_seed(1)
    fa = FullAttention(BIAS_C, heads=BIAS_H, strategy=strategy).to(dtype)
    with torch.no_grad():
        fa.in_proj_bias.normal_()
        fa.out_proj.bias.normal_()
    return fa


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_bias_matches_dense_reference(device, strategy):
    """Every strategy with a sparse bias (half of the pairs listed, a per-head default for the
    rest, sizes 1..40 and an empty graph id, several size buckets) equals the dense float64
    equation: 1e-10 in float64, 1e-6 in float32."""
    if strategy == "kernel":
        _require_kernel()
    sizes = [17, 1, 0, 40, 5, 16, 3, 9]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
        x, batch, pairs, pb, db = _biased_case(sizes, dtype)
        fa = _biased_module(strategy, dtype)
        ref = _dense_biased_reference(fa, x, batch, pairs, pb, db)
        fa = fa.to(device)
        out = fa(x.to(device), batch.to(device), pair_index=pairs.to(device),
                 pair_bias=pb.to(device), default_bias=db.to(device))
        torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)
    # a float default, and no default (0), in float64
    x, batch, pairs, pb, _ = _biased_case(sizes)
    fa = _biased_module(strategy).to(device)
    for default in (-1.5, None):
        ref = _dense_biased_reference(fa.cpu(), x, batch, pairs, pb, 0.0 if default is None else default)
        out = fa.to(device)(x.to(device), batch.to(device), pair_index=pairs.to(device),
                            pair_bias=pb.to(device), default_bias=default)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)


def test_full_bias_runs_the_fast_paths(monkeypatch):
    """With a bias, 'auto' on CPU still runs the C kernel, and 'fused'/'sdpa' their own
    functions (not a dense fallback)."""
    _require_kernel()
    from gtpe.nn.attention import full

    calls = []
    for cls in (full._KernelAttention, full._FusedAttention):
        monkeypatch.setattr(cls, "apply", lambda *a, _f=cls.apply, _n=cls.__name__: calls.append(_n) or _f(*a))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(full.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append("sdpa") or sdpa(*a, **k))
    x, batch, pairs, pb, db = _biased_case([5, 9, 9, 30], torch.float32)
    for s in ("auto", "fused", "sdpa"):
        FullAttention(BIAS_C, heads=BIAS_H, strategy=s)(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db)
    assert calls[0] == "_KernelAttention" and calls[1] == "_FusedAttention"
    assert calls[2:] and set(calls[2:]) == {"sdpa"}


@pytest.mark.parametrize("strategy", ["kernel", "fused", "sdpa", "pairs", "block"])
def test_full_bias_gradcheck(strategy):
    """float64 gradcheck with respect to x, pair_bias and default_bias (two graphs, buckets)."""
    if strategy == "kernel":
        _require_kernel()
    x, batch, pairs, pb, db = _biased_case([3, 1, 5], p=0.6)
    fa = _biased_module(strategy)

    def f(x, pb, db):
        return fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db)

    inputs = tuple(t.clone().requires_grad_() for t in (x, pb, db))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_full_bias_kernel_gradients_equal_fused_and_sdpa(dtype, tol):
    """The kernel's hand-written backward (incl. dB = dS) gives the gradients of the fused
    path and of autograd through SDPA, for x, every parameter, pair_bias and default_bias."""
    _require_kernel()
    sizes = [17, 1, 0, 40, 5, 16, 3]
    x0, batch, pairs, pb0, db0 = _biased_case(sizes, dtype)
    w = None
    grads = {}
    for s in ("kernel", "fused", "sdpa"):
        fa = _biased_module(s, dtype)
        x, pb, db = (t.clone().requires_grad_() for t in (x0, pb0, db0))
        out = fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db)
        w = torch.randn_like(out) if w is None else w
        (out * w).sum().backward()
        grads[s] = [out.detach(), x.grad, pb.grad, db.grad] + [p.grad for p in fa.parameters()]
        with torch.no_grad():  # inference (the kernel keeps no probabilities): same output
            torch.testing.assert_close(fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db),
                                       out.detach(), rtol=0 if s == "kernel" else tol,
                                       atol=0 if s == "kernel" else tol)
    for s in ("fused", "sdpa"):
        for a, b in zip(grads["kernel"], grads[s], strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert grads["kernel"][2].abs().sum() > 0 and grads["kernel"][3].abs().sum() > 0


def test_full_bias_equivariance_and_isolation():
    """Relabelling the nodes (graphs and nodes within graphs shuffled) and the pairs alike
    permutes the output; changing one graph's biases changes only that graph's rows."""
    sizes = [4, 9, 2, 6, 30]
    for s in ("kernel", "fused", "sdpa"):
        if s == "kernel":
            _require_kernel()
        x, batch, pairs, pb, db = _biased_case(sizes)
        fa = _biased_module(s)
        out = fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db)
        perm, new_sizes = _perm(sizes)
        _, new_batch = _batch(new_sizes)
        out_p = fa(x[perm], new_batch, pair_index=_relabel(pairs, perm), pair_bias=pb, default_bias=db)
        torch.testing.assert_close(out_p, out[perm], rtol=1e-10, atol=1e-10)
        pb2 = pb.clone()
        in_g1 = batch[pairs[1]] == 1
        pb2[in_g1] += 3.0
        out2 = fa(x, batch, pair_index=pairs, pair_bias=pb2, default_bias=db)
        torch.testing.assert_close(out2[batch != 1], out[batch != 1], rtol=0, atol=1e-12)
        assert not torch.allclose(out2[batch == 1], out[batch == 1])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_no_bias_path_is_untouched_and_zero_bias_is_no_bias(strategy, monkeypatch):
    """Without bias arguments no bias code runs (same code as before the bias existed); a
    zero bias on every pair, or only a default (a constant per row: softmax ignores it), gives
    the no-bias result (bit for bit on the kernel and fused paths)."""
    if strategy == "kernel":
        _require_kernel()
    from gtpe.nn.attention import full

    sizes = [7, 1, 12, 12, 3]
    x, batch, _, _, _ = _biased_case(sizes, torch.float32)
    fa = _biased_module(strategy, torch.float32)
    plain = fa(x, batch)
    all_pairs = _random_pairs(sizes, 1.1, 0)
    zero = torch.zeros(all_pairs.size(1), BIAS_H)
    none = torch.zeros(2, 0, dtype=torch.long)
    for kw in ({"pair_index": all_pairs, "pair_bias": zero},
               {"pair_index": none, "pair_bias": torch.zeros(0, BIAS_H), "default_bias": torch.full((BIAS_H,), 2.5)}):
        out = fa(x, batch, **kw)
        if strategy in ("kernel", "fused", "auto"):
            assert torch.equal(out, plain)
        else:
            torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(full, "_scatter_bias", None)
    monkeypatch.setattr(full, "_bias_pairs", None)
    assert torch.equal(fa(x, batch), plain)


def test_full_bias_dropout_and_cache():
    """Attention dropout in training runs SDPA with the bias (eval: the deterministic result);
    a shared cache checks and places the pairs once per pair_index tensor."""
    from gtpe.nn.attention.full import _layout

    x, batch, pairs, pb, db = _biased_case([5, 6, 11])
    fa = FullAttention(BIAS_C, heads=BIAS_H, dropout=0.5).double()
    ref = _dense_biased_reference(fa, x, batch, pairs, pb, db)
    fa.eval()
    torch.testing.assert_close(fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db), ref)
    fa.train()
    torch.manual_seed(3)
    out = fa(x, batch, pair_index=pairs, pair_bias=pb, default_bias=db)
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)
    fa.eval()
    cache = {}
    a = fa(x, batch, cache, pair_index=pairs, pair_bias=pb, default_bias=db)
    memo = _layout(batch, cache)["bias_pairs"]
    assert memo["index"] is pairs and memo["pos"]
    b = fa(x, batch, cache, pair_index=pairs, pair_bias=pb * 0.5, default_bias=db)
    assert _layout(batch, cache)["bias_pairs"] is memo  # reused
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, _dense_biased_reference(fa, x, batch, pairs, pb * 0.5, db))
    other = pairs[:, :-3].clone()  # another tensor: checked and placed again
    c = fa(x, batch, cache, pair_index=other, pair_bias=pb[:-3], default_bias=db)
    assert _layout(batch, cache)["bias_pairs"]["index"] is other
    torch.testing.assert_close(c, _dense_biased_reference(fa, x, batch, other, pb[:-3], db))


def test_full_bias_bad_input_is_one_clear_error():
    x, batch, pairs, pb, db = _biased_case([4, 5])
    fa = FullAttention(BIAS_C, heads=BIAS_H).double()

    def call(**kw):
        return fa(x, batch, **kw)

    with pytest.raises(ValueError, match=r"needs both pair_index .* \(got only pair_bias\)"):
        call(pair_bias=pb)
    with pytest.raises(ValueError, match=r"\(got only pair_index\)"):
        call(pair_index=pairs)
    with pytest.raises(ValueError, match=r"\(got only default_bias\)"):
        call(default_bias=db)
    with pytest.raises(ValueError, match=r"pair_index must be a long tensor of shape \[2, M\]"):
        call(pair_index=pairs.T, pair_bias=pb)
    with pytest.raises(ValueError, match=r"pair_index must be a long tensor"):
        call(pair_index=pairs.float(), pair_bias=pb)
    with pytest.raises(ValueError, match=rf"pair_bias must be .* \[{pairs.size(1)}, {BIAS_H}\]"):
        call(pair_index=pairs, pair_bias=pb[:, :2])
    with pytest.raises(ValueError, match=r"pair_bias must be a float tensor"):
        call(pair_index=pairs, pair_bias=pb.long())
    with pytest.raises(ValueError, match=rf"default_bias must be .* \[heads\] = \[{BIAS_H}\]"):
        call(pair_index=pairs, pair_bias=pb, default_bias=torch.zeros(BIAS_H + 1))
    with pytest.raises(ValueError, match=r"default_bias must be a float"):
        call(pair_index=pairs, pair_bias=pb, default_bias="far")
    across = pairs.clone()
    across[0, -1] = 0  # key in graph 0, query in graph 1
    with pytest.raises(ValueError, match=r"pairs key 0 and query \d+ of different graphs \(0 and 1\)"):
        call(pair_index=across, pair_bias=pb)
    with pytest.raises(ValueError, match=r"outside \[0, 9\)"):
        call(pair_index=pairs + 1, pair_bias=pb)
    dup = torch.cat([pairs, pairs[:, :1]], 1)
    with pytest.raises(ValueError, match=r"lists the pair \(key \d+, query \d+\) more than once"):
        call(pair_index=dup, pair_bias=torch.cat([pb, pb[:1]]))
    with pytest.raises(ValueError, match="batch must be sorted"):  # with a bias, every strategy
        FullAttention(BIAS_C, heads=BIAS_H, strategy="block").double()(
            x, batch.flip(0), pair_index=pairs, pair_bias=pb)
    with pytest.raises(ValueError, match="x has no nodes"):
        fa(x[:0], batch[:0], pair_index=pairs, pair_bias=pb)
    # an empty batch with no pairs is fine
    assert fa(x[:0], batch[:0], pair_index=pairs[:, :0], pair_bias=pb[:0]).shape == (0, BIAS_C)
