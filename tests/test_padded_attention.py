"""benchmarks/padded_attention.py, the peer of train_bench's Graphormer / TokenGT rows: the padded
SDPA attention computes what FullAttention computes (outputs and gradients, with and without an
additive pair bias), against a dense float64 reference of softmax attention within each graph."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from padded_attention import PaddedSDPAAttention, swap_full_attention  # noqa: E402

from gtpe.nn.attention import FullAttention  # noqa: E402
from gtpe.nn.attention.graphormer import GraphormerAttention  # noqa: E402

C, H = 16, 4


def _graphs(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0).tolist()
    pairs = [(s + j, s + i) for s, n in zip(starts, sizes) for j in range(n) for i in range(n)
             if torch.rand((), generator=g) < 0.4]
    x = torch.randn(batch.numel(), C, dtype=torch.float64, generator=g)
    return x, batch, torch.tensor(pairs).t()


def _dense_reference(fa, x, batch, pi, pb, db):
    """softmax_j(<q_i, k_j>/sqrt(d) + b_ij) within each graph; pair_index row 0 = key j, row 1 =
    query i; b = default bias where no pair is listed."""
    N, D = x.size(0), C // H
    q, k, v = (x @ fa.in_proj_weight.t() + fa.in_proj_bias).view(N, 3, H, D).unbind(1)
    s = torch.einsum("ihd,jhd->hij", q, k) / D**0.5
    b = db.view(H, 1, 1).expand(H, N, N).clone()
    b[:, pi[1], pi[0]] = pb.t()
    s = (s + b).masked_fill(batch.view(1, N, 1) != batch.view(1, 1, N), float("-inf"))
    return fa.out_proj(torch.einsum("hij,jhd->ihd", s.softmax(-1), v).reshape(N, C))


def test_padded_equals_full_attention_and_dense_reference():
    torch.manual_seed(0)
    x, batch, pi = _graphs([5, 9, 3, 7])
    pb = torch.randn(pi.size(1), H, dtype=torch.float64, requires_grad=True)
    db = torch.randn(H, dtype=torch.float64, requires_grad=True)
    fa = FullAttention(C, heads=H).double()
    pa = PaddedSDPAAttention(fa)
    assert pa.in_proj_weight is fa.in_proj_weight and pa.out_proj is fa.out_proj
    cases = ({}, dict(pair_index=pi, pair_bias=pb),
             dict(pair_index=pi, pair_bias=pb, default_bias=db),
             dict(pair_index=pi, pair_bias=pb, default_bias=0.3))
    for kw in cases:
        wrt = [fa.in_proj_weight] + ([pb] if kw else [])
        wrt += [db] if isinstance(kw.get("default_bias"), torch.Tensor) else []
        a, b = fa(x, batch, **kw), pa(x, batch, **kw)
        torch.testing.assert_close(a, b)
        for u, w in zip(torch.autograd.grad(a.square().sum(), wrt),
                        torch.autograd.grad(b.square().sum(), wrt)):
            torch.testing.assert_close(u, w)
    ref = _dense_reference(fa, x, batch, pi, pb, db)
    torch.testing.assert_close(pa(x, batch, pair_index=pi, pair_bias=pb, default_bias=db), ref)


def test_swap_and_empty_graph():
    torch.manual_seed(0)
    m = torch.nn.ModuleList([GraphormerAttention(C, heads=H, max_dist=3), FullAttention(C, H)])
    m2 = copy.deepcopy(m)
    assert swap_full_attention(m2) == 2
    assert not any(type(mod) is FullAttention for mod in m2.modules())
    assert sum(isinstance(mod, PaddedSDPAAttention) for mod in m2.modules()) == 2
    fa = FullAttention(C, heads=H).double()
    pa = PaddedSDPAAttention(fa)
    batch = torch.cat([torch.zeros(3, dtype=torch.long), torch.full((4,), 2)])  # graph 1 empty
    x = torch.randn(7, C, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fa(x, batch), pa(x, batch))
    assert torch.isfinite(torch.autograd.grad(pa(x, batch).sum(), x)[0]).all()
