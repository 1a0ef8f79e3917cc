"""GPSModel and its config: validation, transforms(), every local x attention x encoding
combination builds, trains a step and sends gradients to every parameter; graph/node level."""

import dataclasses

import pytest
import torch
from torch_geometric.data import Batch, Data

from gtpe.models import (
    ConfigError,
    ExpanderConfig,
    GPSModel,
    GPSModelConfig,
    LapPEConfig,
    MagLapPEConfig,
    PEConfig,
    RRWPConfig,
    RWSEConfig,
)
from gtpe.models.config import SPDConfig
from gtpe.transforms import AddSPD

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and immune to CPU oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LOCALS = ["gine", "dirgine", "gatedgcn", None]
ATTNS = ["full", "linear", "exphormer", "grit", "gt", "graphormer", None]
# PE settings shared by every encoding below, so that one prepared batch serves them all
RWSE, LAP, MAGLAP = (
    RWSEConfig(walk_length=6, dim=4),
    LapPEConfig(k=4, dim=4),
    MagLapPEConfig(k=4, dim=4),
)
RRWP, EXPANDER = RRWPConfig(walk_length=5), ExpanderConfig(degree=2)
SPD = SPDConfig(max_dist=3)
ENCODINGS = {
    "none": PEConfig(),
    "rwse": PEConfig(rwse=RWSE),
    "lap-deepset": PEConfig(lap=LAP),
    "lap-transformer": PEConfig(lap=dataclasses.replace(LAP, encoder="transformer")),
    "lap-signnet": PEConfig(lap=dataclasses.replace(LAP, encoder="signnet")),
    "maglap": PEConfig(maglap=MAGLAP),
    "rrwp": PEConfig(rrwp=RRWP),
    "all": PEConfig(rwse=RWSE, lap=LAP, maglap=MAGLAP, rrwp=RRWP),
}


def molecules(sizes=(5, 9, 2, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        s = torch.arange(n - 1)
        extra = torch.randint(0, n, (2, n // 3), generator=g)
        ei = torch.cat([torch.stack([s, s + 1]), extra], 1)
        ei = ei[:, ei[0] != ei[1]]
        ei = torch.cat([ei, ei.flip(0)], 1)
        out.append(
            Data(
                x=torch.randint(0, 6, (n, 1), generator=g),
                edge_index=ei,
                edge_attr=torch.randint(0, 3, (ei.size(1),), generator=g),
                y=torch.randn(1, generator=g),
            )
        )
    return out


def prepared_batch(config, graphs=None):
    """The batch with exactly the attributes config.transforms() writes."""
    b = Batch.from_data_list(graphs or molecules())
    for t in config.transforms():
        b = t(b)
    return b.to(DEVICE)


def build(config, **kw):
    args = {
        "out_dim": 3,
        "node_input": "embedding",
        "node_in_dim": 6,
        "edge_input": "embedding",
        "edge_in_dim": 3,
    }
    args.update(kw)
    return GPSModel(config, **args).to(DEVICE)


_BATCH = {}


def shared_batch():
    """One batch with every PE attribute the ENCODINGS need (computed once)."""
    if not _BATCH:
        cfg = GPSModelConfig(
            channels=16,
            attn="exphormer",
            pe=PEConfig(rwse=RWSE, lap=LAP, maglap=MAGLAP, rrwp=RRWP, expander=EXPANDER),
        )
        _BATCH["b"] = AddSPD(SPD.max_dist)(prepared_batch(cfg))  # Graphormer's distances
    return _BATCH["b"]


@pytest.mark.parametrize(
    "local,attn", [(loc, att) for loc in LOCALS for att in ATTNS if (loc, att) != (None, None)]
)
def test_every_combination_trains_a_step(local, attn):
    """local x attention x encoding: builds, trains one step, gradients reach every parameter."""
    b = shared_batch()
    for enc, pe in ENCODINGS.items():
        torch.manual_seed(0)
        pe = dataclasses.replace(pe, expander=EXPANDER)
        if attn == "grit":  # GRIT's pairs come from RRWP (the default walk_length 21 otherwise)
            pe = dataclasses.replace(pe, rrwp=RRWP)
        if attn == "graphormer":
            pe = dataclasses.replace(pe, spd=SPD)
        cfg = GPSModelConfig(
            channels=16, num_layers=2, local=local, attn=attn, heads=4, dropout=0.1, pe=pe
        )
        model = build(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train()
        out = model(b)
        assert out.shape == (b.num_graphs, 3), enc
        loss = (out - b.y.view(-1, 1)).square().mean()
        loss.backward()
        # No dead parameters: GPSModel builds Exphormer's virtual-node embedding only in the
        # first layer and no pair-output projection in the last GRIT layer.
        dead = {n for n, p in model.named_parameters() if p.grad is None}
        assert not dead, (enc, sorted(dead))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        changed = sum(not torch.equal(before[n], p) for n, p in model.named_parameters())
        assert changed >= 0.8 * len(before), enc
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(b)).all(), enc


def test_node_level_linear_input_without_edge_features():
    torch.manual_seed(0)
    graphs = [Data(x=torch.randn(g.num_nodes, 11), edge_index=g.edge_index) for g in molecules()]
    for attn in ("full", "exphormer", "grit", "gt", "graphormer"):
        cfg = GPSModelConfig(
            channels=16,
            num_layers=2,
            local="gatedgcn",
            attn=attn,
            pe=PEConfig(rwse=RWSEConfig(walk_length=4, dim=4)),
        )
        b = prepared_batch(cfg, graphs)
        model = build(
            cfg, out_dim=5, node_input="linear", node_in_dim=11, edge_input=None, graph_level=False
        )
        out = model(b)
        assert out.shape == (b.num_nodes, 5)
        out.sum().backward()
        assert model.edge_encoder is None


def test_single_data_object_and_pooling():
    torch.manual_seed(0)
    g = molecules()[1].to(DEVICE)
    b = Batch.from_data_list([g, molecules()[3].to(DEVICE)])
    for pool, reduce in (("add", torch.sum), ("mean", torch.mean)):
        model = build(GPSModelConfig(channels=16, num_layers=2, pool=pool)).eval()
        # a plain Data object (no batch vector) is one graph
        torch.testing.assert_close(model(g), model(Batch.from_data_list([g])))
        # the head reads the pooled final node features of each graph
        kw = model.encode(b)
        assert kw["x"].shape == (b.num_nodes, 16) and kw["num_graphs"] == 2
        x, state = kw["x"], {}
        for layer in model.layers:
            x = layer(x, kw["edge_index"], kw["batch"], kw["edge_attr"], state=state)
        pooled = torch.stack([reduce(x[kw["batch"] == i], dim=0) for i in range(2)])
        torch.testing.assert_close(model(b), model.head(pooled), atol=1e-5, rtol=1e-5)


def test_ogb_inputs():
    from ogb.utils import smiles2graph

    graphs = []
    for smi in ("CC(=O)Oc1ccccc1C(=O)O", "c1ccccc1", "CCN"):
        d = smiles2graph(smi)
        graphs.append(
            Data(
                x=torch.from_numpy(d["node_feat"]),
                edge_index=torch.from_numpy(d["edge_index"]),
                edge_attr=torch.from_numpy(d["edge_feat"]),
                y=torch.zeros(1),
            )
        )
    cfg = GPSModelConfig(channels=16, num_layers=2, local="gine", attn="full")
    b = prepared_batch(cfg, graphs)
    model = build(
        cfg, out_dim=1, node_input="ogb_atom", node_in_dim=9, edge_input="ogb_bond", edge_in_dim=3
    )
    assert model(b).shape == (3, 1)


def test_missing_pe_attribute_is_a_clear_error():
    cfg = GPSModelConfig(channels=32, num_layers=1, pe=PEConfig(rwse=RWSEConfig()))
    model = build(cfg)
    b = Batch.from_data_list(molecules()).to(DEVICE)
    with pytest.raises(ValueError, match="no 'rwse'.*AddRWSE"):
        model(b)
    cfg = GPSModelConfig(channels=16, num_layers=1, attn="exphormer")
    with pytest.raises(ValueError, match="AddExpanderEdges"):
        build(cfg)(b)


# ------------------------------------------------------------------------------------------
def test_config_defaults_match_contract():
    c = GPSModelConfig()
    assert (
        c.channels,
        c.num_layers,
        c.local,
        c.attn,
        c.heads,
        c.dropout,
        c.attn_dropout,
        c.norm,
        c.pool,
    ) == (64, 4, "gine", "full", 4, 0.0, 0.0, "batch", "mean")
    assert c.pe == PEConfig() and c.transforms() == []
    assert (RWSEConfig().walk_length, RWSEConfig().dim) == (20, 16)
    lap = LapPEConfig()
    assert (lap.k, lap.dim, lap.normalization, lap.encoder) == (8, 16, "sym", "deepset")
    assert (MagLapPEConfig().k, MagLapPEConfig().q, MagLapPEConfig().dim) == (8, 0.25, 16)
    assert RRWPConfig().walk_length == 21 and ExpanderConfig().degree == 3


def test_config_transforms():
    import gtpe.transforms as T

    cfg = GPSModelConfig(
        attn="grit",
        pe=PEConfig(
            rwse=RWSEConfig(walk_length=7),
            lap=LapPEConfig(k=5, normalization=None),
            maglap=MagLapPEConfig(k=3, q=0.1),
        ),
    )
    ts = cfg.transforms()
    assert [type(t) for t in ts] == [T.AddRWSE, T.AddLapPE, T.AddMagLapPE, T.AddRRWP]
    assert ts[0].walk_length == 7 and ts[1].k == 5 and ts[2].q == 0.1
    assert ts[3].walk_length == 21  # grit without pe.rrwp: the default RRWP
    ts = GPSModelConfig(attn="exphormer", pe=PEConfig(expander=ExpanderConfig(4))).transforms()
    assert [type(t) for t in ts] == [T.AddExpanderEdges]
    assert GPSModelConfig(attn="full", pe=PEConfig(expander=ExpanderConfig())).transforms() == []


def test_config_from_dict_round_trip_and_errors():
    d = {
        "channels": 32,
        "local": "none",
        "attn": "exphormer",
        "norm": "layer",
        "pe": {"rwse": {"walk_length": 8, "dim": 4}, "lap": None, "expander": {"degree": 4}},
    }
    c = GPSModelConfig.from_dict(d)
    assert c.local is None and c.pe.rwse == RWSEConfig(8, 4) and c.pe.lap is None
    assert GPSModelConfig.from_dict(c.to_dict()) == c
    bad = [
        ({"attn": "performer"}, "attn must be one of"),
        ({"local": "sage"}, "local must be one of"),
        ({"channels": 30, "heads": 4}, "divisible by heads"),
        (
            {"channels": 32, "pe": {"rwse": {"dim": 16}, "lap": {"dim": 16}}},
            "smaller than channels",
        ),
        ({"chanels": 32}, r"unknown key\(s\) \['chanels'\]"),
        ({"pe": {"rwse": {"walk_len": 3}}}, r"PEConfig.rwse: unknown key"),
        ({"pe": {"signnet": {}}}, r"PEConfig: unknown key"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"pool": "max"}, "pool must be one of"),
        ({"norm": "group"}, "norm must be one of"),
        ({"local": None, "attn": None}, "cannot both be None"),
        ({"pe": {"lap": {"encoder": "signet"}}}, "'deepset', 'transformer' or 'signnet'"),
        ({"pe": {"maglap": {"q": -1}}}, "non-negative"),
    ]
    for kw, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            GPSModelConfig.from_dict(kw)
    assert issubclass(ConfigError, ValueError)


def test_config_tokengt_orf_and_edge_encoding_keys():
    """arch / pe.orf / pe.spd.edge_encoding: validated, and left out of to_dict at their
    defaults (so older configs keep their hashes)."""
    import gtpe.transforms as T

    tok = {"arch": "tokengt", "local": None, "attn": "full", "norm": "layer", "pool": "token"}
    c = GPSModelConfig.from_dict({**tok, "pe": {"orf": {"dim": 8}}})
    # TokenGT concatenates no PE: pe.lap.dim is not checked against channels
    assert GPSModelConfig.from_dict({**tok, "channels": 16, "pe": {"lap": {"k": 4}}}).channels == 16
    assert c.arch == "tokengt" and c.pe.orf.dim == 8 and c.transforms() == []
    assert GPSModelConfig.from_dict(c.to_dict()) == c
    assert "arch" not in GPSModelConfig().to_dict() and "orf" not in GPSModelConfig().to_dict()["pe"]
    spd = GPSModelConfig.from_dict({"attn": "graphormer", "pe": {"spd": {"max_dist": 4}}})
    assert "edge_encoding" not in spd.to_dict()["pe"]["spd"]
    (t,) = spd.transforms()
    assert isinstance(t, T.AddSPD) and t.max_dist == 4
    bad = [
        ({"arch": "graphormer"}, "arch must be one of"),
        ({**tok, "local": "gine", "pe": {"orf": {}}}, "has no message passing"),
        ({**tok, "attn": "exphormer", "pe": {"orf": {}}}, "needs attn 'full' or 'linear'"),
        ({**tok, "norm": "batch", "pe": {"orf": {}}}, "set norm: layer"),
        (tok, "needs node identifiers"),
        ({**tok, "pe": {"orf": {}, "lap": {}}}, "needs node identifiers"),
        ({**tok, "pe": {"orf": {}, "rwse": {}}}, "reads only pe.lap or pe.orf"),
        ({"pe": {"orf": {"dim": 4}}}, r"pe.orf .* needs arch='tokengt'"),
        ({"pe": {"orf": {"dim": 0}}}, "ORFConfig.dim must be a positive integer"),
        ({"pool": "token"}, "needs attn='graphormer' or arch='tokengt'"),
        ({"attn": "graphormer", "pe": {"spd": {"edge_encoding": -1}}}, "edge_encoding must be"),
        ({"attn": "graphormer", "pe": {"spd": {"edge_encoding": True}}}, "edge_encoding must be"),
    ]
    for kw, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            GPSModelConfig.from_dict(kw)


def test_model_argument_errors_and_repr():
    cfg = GPSModelConfig(channels=16, num_layers=1)
    with pytest.raises(ValueError, match="unknown node_input"):
        build(cfg, node_input="atoms")
    with pytest.raises(ValueError, match="unknown edge_input"):
        build(cfg, edge_input="bonds")
    with pytest.raises(ValueError, match="vocabulary"):
        build(cfg, node_in_dim=0)
    with pytest.raises(ValueError, match="out_dim"):
        build(cfg, out_dim=0)
    with pytest.raises(TypeError, match="GPSModelConfig"):
        GPSModel(
            {"channels": 16}, out_dim=1, node_input="embedding", node_in_dim=3, edge_input=None
        )
    assert repr(build(cfg)).startswith("GPSModel(channels=16, num_layers=1")
