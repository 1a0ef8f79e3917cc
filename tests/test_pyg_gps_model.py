"""PyGGPSModel (arch pyg-gps): GPSModel on PyG's GPSConv. Equal outputs and gradients at equal
weights (float64, ZINC-like batches), same parameter count, weight round trip, config errors,
Performer redraws, and a tiny ZINC training run through gtpe.train.train."""

import dataclasses
import json

import pytest
import torch
import yaml
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GPSConv
from torch_geometric.nn.attention import PerformerAttention

import gtpe.models.pyg_gps_model as pgm
from gtpe.models import ConfigError, GPSModel, GPSModelConfig, model_class
from gtpe.models.pyg_gps_model import PyGGPSModel
from gtpe.train import load_config, train
from gtpe.transforms import AddRWSE

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = dict(out_dim=1, node_input="embedding", node_in_dim=28, edge_input="embedding",
            edge_in_dim=4)


def zinc_like(sizes=(9, 23, 14, 37, 5, 17), seed=0):
    """Molecule-like graphs of different sizes: a ring with chords, both edge directions,
    atom types in [0, 28), bond types in [0, 4), RWSE(20) from gtpe's transform."""
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for n in sizes:
        s = torch.arange(n)
        chords = torch.randint(0, n, (2, n // 4), generator=g)
        ei = torch.cat([torch.stack([s, (s + 1) % n]), chords], 1)
        ei = ei[:, ei[0] != ei[1]]
        attr = torch.randint(0, 4, (ei.size(1),), generator=g)
        graphs.append(Data(x=torch.randint(0, 28, (n, 1), generator=g),
                           edge_index=torch.cat([ei, ei.flip(0)], 1),
                           edge_attr=torch.cat([attr, attr]), y=torch.randn(1, generator=g)))
    b = AddRWSE(walk_length=20)(Batch.from_data_list(graphs))
    b.rwse = b.rwse.double()
    return b


def config(**kw):
    d = dict(channels=32, num_layers=3, heads=4, dropout=0.2, attn_dropout=0.5, pool="add",
             pe={"rwse": {"walk_length": 20, "dim": 8}})
    d.update(kw)
    return GPSModelConfig.from_dict(d)


def gps_model(cfg, seed=0, **kw):
    """A float64 GPSModel whose BatchNorm statistics have moved off their defaults."""
    torch.manual_seed(seed)
    m = GPSModel(cfg, **{**ARGS, **kw}).double()
    m.train()
    with torch.no_grad():
        for s in (1, 2):
            m(zinc_like(seed=s))
    return m.eval()


@pytest.mark.parametrize("norm,pool", [("batch", "add"), ("layer", "mean"), (None, "add")])
def test_equal_outputs_eval(norm, pool):
    g = gps_model(config(norm=norm, pool=pool))
    p = PyGGPSModel.from_gps(g)
    assert not p.training and p.config.arch == "pyg-gps"
    assert all(isinstance(conv, GPSConv) for conv in p.layers)
    b = zinc_like()
    with torch.no_grad():
        out, ref = p(b), g(b)
    assert out.dtype == torch.float64 and out.shape == (b.num_graphs, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("attn", ["full", "linear"])
def test_same_seed_same_initial_weights(attn):
    cfg = config(attn=attn)
    torch.manual_seed(5)
    g = GPSModel(cfg, **ARGS)
    torch.manual_seed(5)
    p = PyGGPSModel(dataclasses.replace(cfg, arch="pyg-gps"), **ARGS)
    mine = p._gps_state()
    for name, q in g.named_parameters():
        assert torch.equal(mine[name], q), name
    if attn == "full":
        b = zinc_like()
        b.rwse = b.rwse.float()
        with torch.no_grad():
            torch.testing.assert_close(p.eval()(b), g.eval()(b))


def test_equal_outputs_and_gradients_in_training():
    """Train mode (BatchNorm on batch statistics, no dropout): same outputs and the same
    gradient for every parameter."""
    g = gps_model(config(dropout=0.0, attn_dropout=0.0)).train()
    p = PyGGPSModel.from_gps(g)
    assert p.training
    b = zinc_like(seed=3)
    for m in (g, p):
        (m(b) - b.y.view(-1, 1).double()).abs().mean().backward()
    torch.testing.assert_close(p(b), g(b), rtol=0, atol=1e-11)
    grads = p._pyg_state({n: q.grad for n, q in g.named_parameters()})
    for name, q in p.named_parameters():
        torch.testing.assert_close(q.grad, grads[name], rtol=0, atol=1e-10, msg=name)


def test_same_seed_trains_identically_in_float64():
    """Same seed, same batches, no dropout: five Adam steps give the same losses (learning
    parity; in float32 the two implementations' rounding differs, ~1e-7 per step)."""
    cfg = config(dropout=0.0, attn_dropout=0.0)
    models = []
    for arch in ("gps", "pyg-gps"):
        torch.manual_seed(3)
        models.append(model_class(dataclasses.replace(cfg, arch=arch))(
            dataclasses.replace(cfg, arch=arch), **ARGS).double().train())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    for step in range(5):
        b = zinc_like(seed=10 + step)
        losses = []
        for m, opt in zip(models, opts):
            opt.zero_grad()
            loss = (m(b) - b.y.view(-1, 1).double()).abs().mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-12, abs=0), step


def test_no_edge_features_and_directed():
    """Without edge features GINEConv gets zeros (GINE's ReLU(x_j) messages); directed graphs
    are symmetrised as in GPSModel."""
    cfg = config(norm="batch")
    b = zinc_like()
    for kw in ({"edge_input": None}, {"directed": True}):
        g = gps_model(cfg, **kw)
        p = PyGGPSModel.from_gps(g)
        assert p.edge_encoder is None or kw.get("directed")
        with torch.no_grad():
            torch.testing.assert_close(p(b), g(b), rtol=0, atol=1e-11)


@pytest.mark.parametrize("attn", ["full", "linear"])
def test_parameter_count_and_round_trip(attn):
    cfg = config(attn=attn)
    torch.manual_seed(0)
    g = GPSModel(cfg, **ARGS)
    p = model_class(dataclasses.replace(cfg, arch="pyg-gps"))(
        dataclasses.replace(cfg, arch="pyg-gps"), **ARGS)
    assert type(p) is PyGGPSModel
    count = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    assert count(p) == count(g)
    kind = torch.nn.MultiheadAttention if attn == "full" else PerformerAttention
    assert all(isinstance(conv.attn, kind) for conv in p.layers)
    if attn == "linear":  # PyG's Performer with LinearAttention's shapes
        assert p.layers[0].attn.head_channels == 32 // 4 and p.layers[0].attn.q.bias is not None
    back = PyGGPSModel.from_gps(g).to_gps()
    ref = dict(g.named_parameters())
    for name, q in back.named_parameters():
        assert torch.equal(q, ref[name]), name


def test_layer_arguments():
    """heads, dropout, attention dropout and norm reach every GPSConv."""
    for norm, kind in (("batch", torch.nn.BatchNorm1d), ("layer", None), (None, None)):
        model = PyGGPSModel(config(norm=norm, arch="pyg-gps", heads=2), **ARGS)
        assert len(model.layers) == 3
        for conv in model.layers:
            assert (conv.heads, conv.dropout, conv.attn.dropout) == (2, 0.2, 0.5)
            assert conv.mlp[2].p == 0.2 and conv.attn.num_heads == 2
        conv = model.layers[0]
        if norm is None:
            assert conv.norm1 is None and conv.norm3 is None
        elif norm == "batch":
            assert isinstance(conv.norm1.module, kind)
        else:
            assert conv.norm1.mode == "node"


@pytest.mark.parametrize("change,match", [
    ({"local": "gatedgcn"}, "local='gine'"),
    ({"local": None}, "local='gine'"),
    ({"attn": "exphormer"}, "attn_type"),
    ({"attn": None}, "attn_type"),
    ({"attn": "graphormer", "pe": {"spd": {"max_dist": 3}}}, "attn_type"),
    ({"residual": False}, "residual=False"),
    ({"ffn": False}, "ffn=False"),
    ({"arch_options": {"head": "pyg"}}, "arch_options"),
    ({"pe": {"rwse": {"walk_length": 20, "dim": 32}}}, "smaller than channels"),
    ({"pe": {"orf": {"dim": 4}}}, "pe.orf"),
])
def test_config_errors(change, match):
    d = dict(channels=32, num_layers=2, arch="pyg-gps")
    d.update(change)
    with pytest.raises(ConfigError, match=match):
        GPSModelConfig.from_dict(d)


def test_check_config_and_constructor():
    with pytest.raises(ConfigError, match="arch='pyg-gps'"):
        PyGGPSModel.check_config(config())
    with pytest.raises(TypeError, match="GPSModelConfig"):
        PyGGPSModel({"arch": "pyg-gps"}, **ARGS)
    PyGGPSModel.check_config(config(arch="pyg-gps", attn="linear", norm="layer"))


def test_performer_redraws_every_interval(monkeypatch):
    monkeypatch.setattr(pgm, "PERFORMER_REDRAW_INTERVAL", 2)
    torch.manual_seed(0)
    p = PyGGPSModel(config(arch="pyg-gps", attn="linear", num_layers=1), **ARGS).double()
    b = zinc_like()
    mat = lambda: p.layers[0].attn.fast_attn.projection_matrix.clone()  # noqa: E731
    first = mat()
    p.eval()
    p(b)
    assert torch.equal(mat(), first)  # eval never redraws
    p.train()
    for _ in range(2):
        p(b)
        assert torch.equal(mat(), first)
    p(b)  # the third training forward: a new draw
    assert not torch.equal(mat(), first)
    assert int(p.num_train_forwards) == 0


def test_trains_two_epochs_on_zinc(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"name": "zinc", "limit": 48},
        "model": {"arch": "pyg-gps", "channels": 16, "num_layers": 2, "heads": 2,
                  "attn_dropout": 0.5, "pool": "add",
                  "pe": {"rwse": {"walk_length": 8, "dim": 4}}},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": "adam", "scheduler": "none",
                  "grad_clip": None, "device": "cpu"},
    }))
    results = train(load_config(path), tmp_path / "run", progress=False, log=lambda s: None)
    assert results["status"] == "completed" and results["epochs"] == 2
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "completed"
    assert all(torch.isfinite(torch.tensor(v)) for v in (results["best_val"], results["test"]))


def test_pyg_head_is_the_example_models_head():
    # PyG's examples/graph_gps.py: Linear(C, C/2) - ReLU - Linear(C/2, C/4) - ReLU - Linear(C/4, 1)
    from torch.nn import Linear, ReLU

    from gtpe.models import ConfigError, GPSModel, GPSModelConfig
    cfg = GPSModelConfig(channels=64, num_layers=1, head="pyg", pool="add")
    model = GPSModel(cfg, out_dim=1, node_input="embedding", node_in_dim=28,
                     edge_input="embedding", edge_in_dim=4)
    kinds = [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None))
             for m in model.head]
    assert kinds == [("Linear", 64, 32), ("ReLU", None, None), ("Linear", 32, 16),
                     ("ReLU", None, None), ("Linear", 16, 1)]
    assert sum(p.numel() for p in model.head.parameters()) == 2625
    assert isinstance(model.head[0], Linear) and isinstance(model.head[1], ReLU)
    with pytest.raises(ConfigError, match="head='pyg' narrows channels"):
        GPSModelConfig(channels=2, heads=1, head="pyg")
