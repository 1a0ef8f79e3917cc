"""The ports of the official Exphormer and GRIT layers (benchmarks/exphormer_original.py,
benchmarks/grit_original.py) compute what gtpe's layers compute, so that train_bench's
``vs orig`` ratios compare equal computations.

Weights are copied between the gtpe model of train_bench's ``exphormer`` / ``grit`` rows and
the port (sharing its encoders and head, as train_bench's ``-orig`` rows), float64, train mode
(batch norm on batch statistics), a small batch of random molecules.  Where the official
layer computes something else, the closest equal configuration is compared and the
difference is pinned down:

* Exphormer: the official layer has no biases and no output projection, normalises by
  ``sum exp(clamp(s, +-5)) + 1e-6`` instead of an exact softmax, applies ``E`` to one learned
  embedding per edge kind (gtpe: a learned row per kind) and has separate embeddings for the
  edges into and out of a virtual node.  gtpe with zero biases, identity output projection
  and ``type_emb`` = ``E`` times the port's embeddings (in = out) equals the port with
  ``eps = 0`` whenever no score reaches the clamp (checked); with the official ``eps`` the
  outputs differ by ~1e-6 relative.
* GRIT: gtpe's ``GPSLayer(attn='grit')`` is the official layer, pair stream included
  (``BN_e(e + O_e dropout(e_hat))``): the port equals gtpe's model in every layer's node and
  pair outputs and in all gradients; the port's last layer computes a pair update that nobody
  reads (gtpe's model skips it: no ``pair_out_proj`` / ``pair_norm`` there).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch_geometric.data import Batch, Data

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, _BENCH)

import train_bench  # noqa: E402
from exphormer_original import OrigExphormerAttention, OrigExphormerModel  # noqa: E402
from grit_original import OrigGritLayer, OrigGritModel  # noqa: E402

NODE_VOCAB, EDGE_VOCAB = 28, 4


def _batch(transforms, seed=0, graphs=4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(graphs):
        n = int(torch.randint(6, 12, (1,), generator=g))
        # a path plus a few chords: connected, degrees differ
        und = [(i, i + 1) for i in range(n - 1)]
        for _ in range(3):
            a, b = torch.randint(0, n, (2,), generator=g).tolist()
            if a != b and (a, b) not in und and (b, a) not in und:
                und.append((a, b))
        ei = torch.tensor(und + [(b, a) for a, b in und]).t()
        types = torch.randint(0, EDGE_VOCAB, (len(und),), generator=g)
        d = Data(
            x=torch.randint(0, NODE_VOCAB, (n, 1), generator=g),
            edge_index=ei,
            edge_attr=torch.cat([types, types]),
            y=torch.randn(1, generator=g),
        )
        out.append(d)
    b = Batch.from_data_list(out)
    for t in transforms:
        b = t(b)
    for key in ("rrwp", "rrwp_val"):  # float64 run
        if key in b:
            b[key] = b[key].double()
    return b


def _models(attn: str, local: str | None):
    torch.manual_seed(0)
    model, cfg = train_bench.gtpe_model(local, attn, NODE_VOCAB, EDGE_VOCAB)
    return model.double(), cfg


def _copy(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if dst.bias is not None or src.bias is not None:
            dst.bias.copy_(src.bias)


def _match_exphormer(model, orig: OrigExphormerModel) -> None:
    """Make gtpe's model the closest equal configuration and copy its weights into ``orig``."""
    C = train_bench.CHANNELS
    with torch.no_grad():
        fx = orig.fixer
        fx.virt_edge_out_emb.weight.copy_(fx.virt_edge_in_emb.weight)  # gtpe: one row, both ways
        fx.virt_node_emb.weight.copy_(model.layers[0].attn.virtual_emb)
        for lg, lo in zip(model.layers, orig.layers):
            a, oa = lg.attn, lo.self_attn
            a.in_proj_bias.zero_()
            a.edge_proj.bias.zero_()
            a.out_proj.weight.copy_(torch.eye(C, dtype=a.out_proj.weight.dtype))
            a.out_proj.bias.zero_()
            W = a.in_proj_weight
            oa.Q.weight.copy_(W[:C])
            oa.K.weight.copy_(W[C : 2 * C])
            oa.V.weight.copy_(W[2 * C :])
            oa.E.weight.copy_(a.edge_proj.weight)
            a.type_emb[1].copy_(oa.E(fx.exp_edge_attr.weight[0]))
            a.type_emb[2].copy_(oa.E(fx.virt_edge_in_emb.weight[0]))
            lo.local_model.nn.load_state_dict(lg.local.nn.state_dict())
            lo.local_model.eps.copy_(lg.local.eps)
            for mine, theirs in ((lo.norm1_local, lg.norm1), (lo.norm1_attn, lg.norm2),
                                 (lo.norm2, lg.norm3)):
                mine.load_state_dict(theirs.state_dict())
            _copy(lo.ff_linear1, lg.mlp[0])
            _copy(lo.ff_linear2, lg.mlp[3])


def test_exphormer_port_equals_gtpe():
    model, cfg = _models("exphormer", "gine")
    b = _batch(cfg.transforms())
    orig = train_bench.orig_model("exphormer-orig", model).double()
    _match_exphormer(model, orig)
    for layer in orig.layers:
        layer.self_attn.eps = 0.0
    model.train()
    orig.train()
    ref = model(b)
    out = orig(b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # the clamp was inactive: every score of the first layer is inside (-5, 5)
    kw = orig.encoder(b)
    ei, ea, vh = orig.fixer(b.edge_index, kw["edge_attr"], b.expander_index, b.batch, b.num_graphs)
    att = orig.layers[0].self_attn
    h = torch.cat([kw["x"], vh])
    H, D = att.heads, att.head_dim
    s = (att.K(h).view(-1, H, D)[ei[0]] * att.Q(h).view(-1, H, D)[ei[1]] / D**0.5
         * att.E(ea).view(-1, H, D)).sum(-1)
    assert s.abs().max() < 5
    # with the official 1e-6 the outputs are close, not equal
    for layer in orig.layers:
        layer.self_attn.eps = 1e-6
    out6 = orig(b)
    torch.testing.assert_close(out6, ref, rtol=1e-4, atol=1e-4)
    assert (out6 - ref).abs().max() > 1e-12
    # gradients of the shared encoders agree too (the whole backward is the same computation)
    for layer in orig.layers:
        layer.self_attn.eps = 0.0
    ga = torch.autograd.grad(model(b).sum(), model.node_encoder.parameters())
    gb = torch.autograd.grad(orig(b).sum(), model.node_encoder.parameters())
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_exphormer_port_attention_is_official_math():
    # the port's attention against a dense per-target loop of the official formula
    torch.manual_seed(1)
    att = OrigExphormerAttention(8, 2).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2, 3, 4, 0, 2], [1, 0, 1, 4, 3, 3, 0]])
    ea = torch.randn(7, 8, dtype=torch.float64)
    out, virt = att(x, ei, ea)
    assert virt.shape == (0, 8)
    q, k, v, e = att.Q(x), att.K(x), att.V(x), att.E(ea)
    ref = torch.zeros(5, 8, dtype=torch.float64)
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        for i in range(5):
            cols = (ei[1] == i).nonzero().view(-1)
            w = torch.stack([((k[ei[0, c], sl] * q[i, sl] / 2.0) * e[c, sl]).sum().clamp(-5, 5).exp()
                             for c in cols]) if cols.numel() else torch.zeros(0, dtype=x.dtype)
            num = sum((w[t] * v[ei[0, c], sl] for t, c in enumerate(cols)),
                      torch.zeros(4, dtype=x.dtype))
            ref[i, sl] = num / (w.sum() + 1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def _match_grit_layer(lg, lo: OrigGritLayer) -> None:
    a, oa = lg.attn, lo.attention
    H, D = a.heads, a.head_dim
    with torch.no_grad():
        _copy(oa.Q, a.lin_q)
        _copy(oa.K, a.lin_k)
        _copy(oa.V, a.lin_v)
        _copy(oa.E, a.lin_e)
        oa.Aw.copy_(a.attn_weight.t().reshape(D, H, 1))
        oa.VeRow.copy_(a.edge_value.permute(1, 0, 2))
        lo.deg_coef.copy_(a.deg_coef.view(1, -1, 2))
        _copy(lo.O_h, a.out_proj)
        if a.pair_out_proj is not None:  # gtpe's last layer has no pair update
            _copy(lo.O_e, a.pair_out_proj)
            lo.batch_norm1_e.load_state_dict(a.pair_norm.state_dict())
        lo.batch_norm1_h.load_state_dict(lg.norm2.state_dict())
        lo.batch_norm2_h.load_state_dict(lg.norm3.state_dict())
        _copy(lo.FFN_h_layer1, lg.mlp[0])
        _copy(lo.FFN_h_layer2, lg.mlp[3])


def _grit_twins(lg, lo: OrigGritLayer):
    """``(name, gtpe parameter, port parameter, map)`` for every parameter of ``lg``; ``map``
    takes a port tensor to the gtpe parameter's layout."""
    a, oa = lg.attn, lo.attention
    H, D = a.heads, a.head_dim
    same = lambda t: t  # noqa: E731
    out = [("attn_weight", a.attn_weight, oa.Aw, lambda t: t.reshape(D, H).t()),
           ("edge_value", a.edge_value, oa.VeRow, lambda t: t.permute(1, 0, 2)),
           ("deg_coef", a.deg_coef, lo.deg_coef, lambda t: t.view(-1, 2))]
    mods = [("lin_q", a.lin_q, oa.Q), ("lin_k", a.lin_k, oa.K), ("lin_v", a.lin_v, oa.V),
            ("lin_e", a.lin_e, oa.E), ("out_proj", a.out_proj, lo.O_h),
            ("norm2", lg.norm2, lo.batch_norm1_h), ("norm3", lg.norm3, lo.batch_norm2_h),
            ("mlp.0", lg.mlp[0], lo.FFN_h_layer1), ("mlp.3", lg.mlp[3], lo.FFN_h_layer2)]
    if a.pair_out_proj is not None:
        mods += [("pair_out_proj", a.pair_out_proj, lo.O_e),
                 ("pair_norm", a.pair_norm, lo.batch_norm1_e)]
    for name, mine, theirs in mods:
        for pn, p in mine.named_parameters():
            out.append((f"{name}.{pn}", p, getattr(theirs, pn), same))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_grit_port_equals_gtpe(seed):
    """The faithful port (pair residual and BN_e in every layer) equals gtpe's GRIT model:
    outputs, the batch-norm running statistics, and the gradients of every parameter."""
    model, cfg = _models("grit", None)
    b = _batch(cfg.transforms(), seed=seed)
    orig = train_bench.orig_model("grit-orig", model).double()
    assert isinstance(orig, OrigGritModel)
    assert all(lo.update_e for lo in orig.layers)  # the official configuration
    for lg, lo in zip(model.layers, orig.layers, strict=True):
        _match_grit_layer(lg, lo)
    last = model.layers[-1].attn
    assert last.pair_out_proj is None and last.pair_norm is None
    for lg in model.layers[:-1]:
        assert lg.attn.pair_residual and isinstance(lg.attn.pair_norm, torch.nn.BatchNorm1d)
    model.train()
    orig.train()
    ref = model(b)
    out = orig(b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # the same batch statistics went into the running means and variances
    for lg, lo in zip(model.layers, orig.layers):
        norms = [(lg.norm2, lo.batch_norm1_h), (lg.norm3, lo.batch_norm2_h)]
        if lg.attn.pair_norm is not None:
            norms.append((lg.attn.pair_norm, lo.batch_norm1_e))
        for mine, theirs in norms:
            for buf in ("running_mean", "running_var"):
                torch.testing.assert_close(getattr(mine, buf), getattr(theirs, buf),
                                           rtol=1e-10, atol=1e-12)
    # gradients: the shared encoders and head, and every layer parameter against its twin
    w = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(seed))
    shared = [p for n, p in model.named_parameters() if not n.startswith("layers.")]
    twins = [t for lg, lo in zip(model.layers, orig.layers) for t in _grit_twins(lg, lo)]
    assert len(twins) == sum(1 for n, _ in model.named_parameters() if n.startswith("layers."))
    model.zero_grad()
    (ref * w).sum().backward()
    g_shared = [p.grad.clone() for p in shared]
    g_layers = [p.grad.clone() for _, p, _, _ in twins]
    model.zero_grad()
    orig.zero_grad()
    (out * w).sum().backward()
    for p, g in zip(shared, g_shared):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-10)
    for (name, _, q, f), g in zip(twins, g_layers):
        assert q.grad is not None, name
        torch.testing.assert_close(f(q.grad), g, rtol=1e-9, atol=1e-10, msg=name)
    # the port's last pair update is computed but read by nothing: no gradient
    lo = orig.layers[-1]
    assert all(p.grad is None for m in (lo.O_e, lo.batch_norm1_e) for p in m.parameters())


def test_grit_layer_pair_stream_equals_port():
    """One layer: gtpe's pair output (``state['pair_attr']``) is the official
    ``BN_e(e + O_e e_hat)``, and it differs from the bare projection ``O_e e_hat``."""
    model, cfg = _models("grit", None)
    b = _batch(cfg.transforms(), seed=2)
    orig = train_bench.orig_model("grit-orig", model).double()
    lg, lo = model.layers[0], orig.layers[0]
    _match_grit_layer(lg, lo)
    model.train()
    orig.train()
    kw = model.encode(b)
    state: dict = {}
    x_ref = lg(kw["x"], kw["edge_index"], kw["batch"], kw["edge_attr"], pair_index=kw["pair_index"],
               pair_attr=kw["pair_attr"], state=state, num_graphs=kw["num_graphs"])
    deg = torch.bincount(b.edge_index[0], minlength=b.num_nodes).to(torch.float64)
    x_out, e_out = lo(kw["x"], kw["pair_index"], kw["pair_attr"], torch.log1p(deg).view(-1, 1))
    torch.testing.assert_close(x_out, x_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state["pair_attr"], e_out, rtol=1e-10, atol=1e-10)
    _, e_hat = lo.attention(kw["x"], kw["pair_index"], kw["pair_attr"])
    assert (e_out - lo.O_e(e_hat)).abs().max() > 1e-2


def test_grit_layer_dropout_equals_port():
    """With dropout in training, gtpe's GRIT layer draws the official layer's masks in its
    order (node output before the degree scaler and ``O_h``, pair scores before ``O_e``, once
    in the FFN after the activation): equal outputs under one seed.  The GPS branch convention
    (dropping the attention output after ``W_O``) gives others.  (The attention-weight dropout
    acts at the same place in both, but the official scores are head-major in memory, so
    ``bernoulli_`` fills the same draws into other positions: not comparable mask for mask.)"""
    model, cfg = _models("grit", None)
    b = _batch(cfg.transforms(), seed=3)
    orig = train_bench.orig_model("grit-orig", model).double()
    lg, lo = model.layers[0], orig.layers[0]
    _match_grit_layer(lg, lo)
    lg.dropout = lg.attn.node_dropout = lg.attn.pair_dropout = lg.mlp[2].p = 0.3
    lo.dropout = 0.3
    assert isinstance(lg.mlp[4], torch.nn.Identity)  # GRIT's FFN drops once
    model.train()
    orig.train()
    kw = model.encode(b)
    deg = torch.bincount(b.edge_index[0], minlength=b.num_nodes).to(torch.float64)

    def gtpe_layer():
        state: dict = {}
        torch.manual_seed(7)
        x = lg(kw["x"], kw["edge_index"], kw["batch"], kw["edge_attr"],
               pair_index=kw["pair_index"], pair_attr=kw["pair_attr"], state=state,
               num_graphs=kw["num_graphs"])
        return x, state["pair_attr"]

    x_ref, e_ref = gtpe_layer()
    torch.manual_seed(7)
    x_out, e_out = lo(kw["x"], kw["pair_index"], kw["pair_attr"], torch.log1p(deg).view(-1, 1))
    torch.testing.assert_close(x_out, x_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(e_out, e_ref, rtol=1e-10, atol=1e-10)
    # the dropout acted (another seed gives other outputs) ...
    torch.manual_seed(8)
    x_other, _ = lo(kw["x"], kw["pair_index"], kw["pair_attr"], torch.log1p(deg).view(-1, 1))
    assert (x_other - x_out).abs().max() > 1e-3
    # ... and the GPS placement (dropout after W_O, twice in the FFN) is another function
    lg.attn.node_dropout, lg._branch_dropout, lg.mlp[4] = 0.0, True, torch.nn.Dropout(0.3)
    x_gps, _ = gtpe_layer()
    assert (x_gps - x_ref).abs().max() > 1e-3
