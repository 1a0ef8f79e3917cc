"""benchmarks/node_scale.py runs on a tiny sbm graph (so that the script cannot rot): every
stage in-process (full-batch and mini-batch), the driver end to end on one cheap stage."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("node_scale", ROOT / "benchmarks" / "node_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from gtpe.datasets.sbm import generate_sbm

    path = tmp_path_factory.mktemp("node_scale") / "sbm-300.pt"
    torch.save(generate_sbm(300), path)
    return str(path)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _worker_args(bench, graph, stage, *extra):
    return bench.parse_args(["--worker", stage, "--graph", graph, "--threads", "1",
                             "--hidden", "16", *extra])


@pytest.mark.parametrize("stage", ["rwse", "lappe", "expander"])
def test_pe_stages(bench, graph, stage, one_thread):
    info = bench.run_stage(_worker_args(bench, graph, stage))
    assert info["nodes"] == 300 and info["edges"] == 3000 and info["mode"] == "-"
    width = {"rwse": 20, "lappe": 8, "expander": 1800}[stage]  # expander: [2, 2 d N]
    assert width in info["out_shape"][0]
    assert len(info["times"]) == 1 and info["times"][0] > 0
    assert info["peak"] >= info["base"] > 0


@pytest.mark.parametrize("mode", ["full", "mini"])
@pytest.mark.parametrize("stage", ["exphormer", "polynormer", "polynormer-pyg", "sgformer",
                                   "sgformer-pyg"])
def test_training_stages(bench, graph, stage, mode, one_thread):
    info = bench.run_stage(_worker_args(bench, graph, stage, "--mode", mode,
                                        "--batch-size", "64", "--fanouts", "3,2",
                                        "--repeats", "2" if mode == "full" else "1"))
    assert info["mode"] == mode
    # 180 training nodes: one full-batch step, or ceil(180 / 64) = 3 mini-batches
    assert info["batches"] == (1 if mode == "full" else 3)
    if mode == "mini":
        assert 64 < info["subgraph_nodes_mean"] <= 300
    assert torch.isfinite(torch.tensor(info["loss"]))
    assert len(info["times"]) == (2 if mode == "full" else 1)
    assert all(t > 0 for t in info["times"]) and info["peak"] >= info["base"]


def test_auto_mode(bench):
    # full-batch while the estimate fits the budget, mini-batch above it
    per_node = bench.MODEL_BYTES_PER_NODE["sgformer"]
    fits = int(2**30 / per_node)
    assert bench.pick_mode("sgformer", fits, 64, "auto", 1.0) == "full"
    assert bench.pick_mode("sgformer", fits + 1000, 64, "auto", 1.0) == "mini"
    assert bench.pick_mode("sgformer", fits, 128, "auto", 1.0) == "mini"  # activations ~ C
    assert bench.pick_mode("sgformer", 10**9, 64, "full", 1.0) == "full"
    # a pair runs the same way: gtpe's Polynormer alone would fit, PyG's does not
    n = int(2**30 / bench.MODEL_BYTES_PER_NODE["polynormer"])
    assert bench.full_batch_bytes("polynormer-pyg", n, 64) > 2**30
    assert bench.pick_mode("polynormer", n, 64, "auto", 1.0) == "mini"


def test_driver_end_to_end(bench, tmp_path, capsys, monkeypatch):
    # the driver: machine/version/command header, one stage in a fresh subprocess, the table
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out_json = tmp_path / "rows.json"
    rows = bench.main(["--nodes", "200", "--stages", "expander", "--threads", "1",
                       "--workdir", str(tmp_path), "--json", str(out_json)])
    text = capsys.readouterr().out
    assert "error" not in rows[0], rows
    assert rows[0]["stage"] == "expander" and rows[0]["nodes"] == 200
    assert "machine: " in text and "torch_geometric 2." in text and "--nodes 200" in text
    assert "| expander edges (degree 3) | - |" in text
    assert out_json.exists() and (tmp_path / "sbm-200.pt").exists()


def _small_graph(n=60, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 6 * n), generator=g)
    ei = ei[:, ei[0] != ei[1]]  # no self-loops (gtpe's GCN and GCNConv treat them differently)
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)
    return torch.randn(n, c, generator=g, dtype=torch.float64), ei


def test_sgformer_assembly_equals_pyg(bench):
    # the gtpe-layer SGFormer computes PyG's SGFormer given PyG's weights (eval; float32:
    # PyG's SGFormerAttention makes a float32 tensor inside, so it does not run in float64)
    from gtpe.nn.attention import SGFormerAttention

    x, ei = _small_graph()
    x = x.float()
    torch.manual_seed(0)
    pyg, fwd_pyg = bench.build_model("sgformer-pyg", 16, 16, 5)
    ours, fwd_ours = bench.build_model("sgformer", 16, 16, 5)
    pyg, ours = pyg.eval(), ours.eval()
    t, g = pyg.trans_conv, pyg.graph_conv
    with torch.no_grad():
        ours.t_fc.load_state_dict(t.fcs[0].state_dict())
        ours.g_fc.load_state_dict(g.fcs[0].state_dict())
        ours.fc.load_state_dict(pyg.fc.state_dict())
        for mine, theirs in ((ours.t_norms, t.bns), (ours.g_norms, g.bns)):
            for a, b in zip(mine, theirs, strict=True):
                a.load_state_dict(b.state_dict())
        for i, attn in enumerate(t.attns):
            ours.attns[i] = SGFormerAttention.from_pyg(attn)
        for a, b in zip(ours.convs, g.convs, strict=True):
            a.lin.weight.copy_(b.lin.weight)
            a.bias.copy_(b.bias)
        for bn in list(ours.g_norms) + list(g.bns):  # non-trivial running statistics
            bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 16))
            bn.running_var.copy_(torch.linspace(0.5, 2.0, 16))
    d = SimpleNamespace(x=x, edge_index=ei, num_nodes=x.size(0))
    torch.testing.assert_close(fwd_ours(ours.eval(), d), fwd_pyg(pyg, d), rtol=1e-5, atol=1e-5)


def test_polynormer_assembly_equals_pyg(bench):
    # with as many input features as channels (no encoder) the gtpe-layer Polynormer computes
    # PyG's Polynormer (local + global layers) given PyG's weights (eval, float64)
    from gtpe.nn.attention import PolynormerAttention

    x, ei = _small_graph()
    torch.manual_seed(0)
    pyg, fwd_pyg = bench.build_model("polynormer-pyg", 16, 16, 5)
    ours, fwd_ours = bench.build_model("polynormer", 16, 16, 5)
    pyg, ours = pyg.double().eval(), ours.double().eval()
    assert isinstance(ours.encoder, torch.nn.Identity)
    with torch.no_grad():
        for i, layer in enumerate(ours.local):
            conv = pyg.local_convs[i]
            layer.in_proj_weight.copy_(torch.cat([pyg.h_lins[i].weight, pyg.lins[i].weight,
                                                  conv.lin.weight]))
            # GCNConv's bias is added to lins[i](x): it folds into b_L
            layer.in_proj_bias.copy_(torch.cat([pyg.h_lins[i].bias, pyg.lins[i].bias + conv.bias]))
            layer.norm.load_state_dict(pyg.lns[i].state_dict())
            pyg.post_bns[i].running_mean.copy_(torch.linspace(-0.3, 0.3, 16))
            pyg.post_bns[i].running_var.copy_(torch.linspace(0.5, 1.5, 16))
            layer.bn.load_state_dict(pyg.post_bns[i].state_dict())
        for i, attn in enumerate(pyg.global_attn):
            ours.glob[i] = PolynormerAttention.from_pyg(attn).double()
        ours.ln.load_state_dict(pyg.ln.state_dict())
        ours.head.load_state_dict(pyg.pred_global.state_dict())
    d = SimpleNamespace(x=x, edge_index=ei, num_nodes=x.size(0))
    torch.testing.assert_close(fwd_ours(ours.eval(), d), fwd_pyg(pyg, d), rtol=1e-9, atol=1e-9)


def test_unknown_stage(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--stages", "rwse,nope"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
