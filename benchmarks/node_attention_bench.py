"""SGFormer and Polynormer layers: gtpe's modules against PyG's own, forward + backward.

    python benchmarks/node_attention_bench.py [--nodes 100000] [--graphs 8] [--graph-nodes 500]
        [--channels 64] [--rounds 5] [--steps 3] [--threads 1] [--device cpu|cuda]
        [--clock wall|cpu]

Rows (each gtpe module gets PyG's weights, so that the outputs can be compared):

* ``sgformer`` -- :class:`gtpe.nn.attention.SGFormerAttention` with ``qk_norm='node'`` (PyG's
  normalisation, built by ``from_pyg``) vs ``torch_geometric.nn.attention.SGFormerAttention``
  (1 head of ``channels``, as PyG's ``SGFormer`` model);
* ``sgformer paper`` -- the same gtpe module with the paper's Frobenius norm (``'graph'``;
  other math: timed only) vs the same PyG module;
* ``polynormer hH`` -- :class:`gtpe.nn.attention.PolynormerAttention` (``from_pyg``) vs
  ``torch_geometric.nn.attention.PolynormerAttention`` with H heads;
* ``poly local`` -- :class:`gtpe.nn.attention.PolynormerLocal` (GAT) vs the local layer of
  PyG's ``Polynormer`` model run from its own modules (``h_lins``, ``GATConv``, ``lins``,
  ``lns``, as in its ``forward``).

Inputs: one random graph of ``--nodes`` nodes (mean in-degree 10 for the local layer), and a
batch of ``--graphs`` graphs of ``--graph-nodes`` nodes each (equal sizes; PyG pads graphs to
the largest one and counts the padding, so unequal sizes would give other outputs).  PyG's
attention modules take a dense ``[B, L, C]`` batch: on a batch of graphs its rows include
``to_dense_batch`` and the ``x[mask]`` back to nodes, as PyG's ``SGFormer`` / ``Polynormer``
models do.  Each step is forward + backward of ``(out * w).sum()`` with gradients to the input.
The rows are timed interleaved (``--rounds`` rounds of ``--steps`` steps after a warm-up);
the table gives the median step time of each side, ``PyG / gtpe`` (> 1: gtpe is faster), and
the largest output difference (``max |diff|``) measured before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from torch_geometric.nn.attention import PolynormerAttention as PyGPolynormer  # noqa: E402
from torch_geometric.nn.attention import SGFormerAttention as PyGSGFormer  # noqa: E402
from torch_geometric.nn.models import Polynormer as PyGPolynormerModel  # noqa: E402
from torch_geometric.utils import to_dense_batch  # noqa: E402

from gtpe.nn.attention.polynormer import PolynormerAttention, PolynormerLocal  # noqa: E402
from gtpe.nn.attention.sgformer import SGFormerAttention  # noqa: E402

Fn = Callable[[torch.Tensor], torch.Tensor]


def pyg_dense(module: torch.nn.Module, batch: torch.Tensor | None) -> Fn:
    """PyG's attention on node features: one graph as [1, N, C]; a batch via to_dense_batch."""
    if batch is None:
        return lambda x: module(x.unsqueeze(0))[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        xd, mask = to_dense_batch(x, batch)
        return module(xd, mask)[mask]

    return run


def pyg_local_layer(model: PyGPolynormerModel, edge_index: torch.Tensor) -> Fn:
    """The body of the local loop of PyG's Polynormer.forward (layer 0, eval, no pre_ln/post_bn)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        h = F.relu(model.h_lins[0](x))
        x = F.relu(model.local_convs[0](x, edge_index) + model.lins[0](x))
        return (1 - model.beta) * model.lns[0](h * x) + model.beta * x

    return run


def local_pair(C: int, heads: int, edge_index: torch.Tensor, device: str) -> tuple[Fn, Fn]:
    torch.manual_seed(0)
    pyg = PyGPolynormerModel(C, C // heads, 2, local_layers=1, global_layers=1, heads=heads,
                             beta=0.9, post_bn=False, local_attn=True).to(device)
    m = PolynormerLocal(C, heads=heads, beta=0.9, conv="gat").to(device)
    lc = pyg.local_convs[0]
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat([pyg.h_lins[0].weight, pyg.lins[0].weight, lc.lin.weight]))
        m.in_proj_bias.copy_(torch.cat([pyg.h_lins[0].bias, pyg.lins[0].bias]))
        m.att_src.copy_(lc.att_src[0])
        m.att_dst.copy_(lc.att_dst[0])
        m.norm.load_state_dict(pyg.lns[0].state_dict())
    return (lambda x: m(x, edge_index)), pyg_local_layer(pyg, edge_index)


def rows_for(C: int, batch: torch.Tensor | None, edge_index: torch.Tensor | None, device: str
             ) -> dict[str, tuple[Fn, Fn, bool]]:
    """name -> (gtpe, PyG, same math)."""
    rows: dict[str, tuple[Fn, Fn, bool]] = {}
    torch.manual_seed(0)
    sg = PyGSGFormer(C, heads=1, head_channels=C).to(device)
    ours = SGFormerAttention.from_pyg(sg)
    paper = SGFormerAttention(C, heads=1, bias=False, qk_norm="graph").to(device)
    paper.load_state_dict(ours.state_dict())
    rows["sgformer"] = (lambda x: ours(x, batch), pyg_dense(sg, batch), True)
    rows["sgformer paper"] = (lambda x: paper(x, batch), pyg_dense(sg, batch), False)
    for heads in (1, 4):
        torch.manual_seed(0)
        pn = PyGPolynormer(C, heads=heads, head_channels=C // heads).to(device)
        mine = PolynormerAttention.from_pyg(pn)
        rows[f"polynormer h{heads}"] = (
            lambda x, mine=mine: mine(x, batch), pyg_dense(pn, batch), True
        )
    if edge_index is not None:
        g, p = local_pair(C, 1, edge_index, device)
        rows["poly local"] = (g, p, True)
    return rows


def bench_case(title: str, x: torch.Tensor, rows: dict[str, tuple[Fn, Fn, bool]], args) -> None:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    w = torch.randn_like(x)
    diffs = {}
    for name, (g, p, same) in rows.items():
        with torch.no_grad():
            diffs[name] = (g(x) - p(x)).abs().max().item() if same else None

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def step(fn: Fn) -> float:
        xi = x.detach().requires_grad_()
        sync()
        t0 = clock()
        (fn(xi) * w).sum().backward()
        sync()
        return clock() - t0

    times: dict[tuple[str, int], list[float]] = {}
    for name, (g, p, _) in rows.items():  # warm-up
        step(g)
        step(p)
    for _ in range(args.rounds):
        for name, (g, p, _) in rows.items():
            for side, fn in ((0, g), (1, p)):
                times.setdefault((name, side), []).extend(step(fn) for _ in range(args.steps))
    print(f"\n{title}")
    print(f"{'row':<16} {'gtpe ms':>10} {'PyG ms':>10} {'PyG/gtpe':>9} {'max |diff|':>11}")
    for name in rows:
        tg = statistics.median(times[(name, 0)])
        tp = statistics.median(times[(name, 1)])
        d = diffs[name]
        ds = f"{d:11.1e}" if d is not None else f"{'(other math)':>11}"
        print(f"{name:<16} {tg * 1e3:>10.2f} {tp * 1e3:>10.2f} {tp / tg:>9.2f} {ds}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--degree", type=int, default=10)
    ap.add_argument("--graphs", type=int, default=8)
    ap.add_argument("--graph-nodes", type=int, default=500)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (steadier on a shared CPU machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, C = args.device, args.channels
    g = torch.Generator().manual_seed(0)
    print(f"{C} channels, device {dev}, {torch.get_num_threads()} thread(s), forward + backward, "
          f"median {args.clock} time of {args.rounds} x {args.steps} interleaved steps; "
          f"torch {torch.__version__}")

    N = args.nodes
    x = torch.randn(N, C, generator=g).to(dev)
    ei = torch.randint(0, N, (2, N * args.degree), generator=g)
    ei = ei[:, ei[0] != ei[1]].to(dev)
    bench_case(f"one graph: {N} nodes, {ei.size(1)} edges (local layer)", x,
               rows_for(C, None, ei, dev), args)

    B, n = args.graphs, args.graph_nodes
    xb = torch.randn(B * n, C, generator=g).to(dev)
    batch = torch.arange(B).repeat_interleave(n).to(dev)
    bench_case(f"batch: {B} graphs x {n} nodes", xb, rows_for(C, batch, None, dev), args)


if __name__ == "__main__":
    main()
