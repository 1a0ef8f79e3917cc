"""Linear attention: gtpe's Performer (FAVOR+) GPS layers vs PyG's ``GPSConv(attn_type='performer')``.

    python benchmarks/linear_attention_bench.py [--quick] [--steps N] [--rounds R] [--threads T]

Two workloads, each a stack of 4 GPS layers (GINE + linear attention, 64 channels, 4 heads,
BatchNorm, the same node/edge embeddings, mean pooling and MLP head), timed as
forward + backward + Adam steps on pre-collated batches, rows interleaved over ``--rounds``:

* ``zinc``: ZINC-12k training batches of 32 molecules (~23 nodes each);
* ``500``: batches of 8 random graphs with 500 nodes and ~2,000 undirected edges each
  (Erdős–Rényi, node/edge categories drawn like ZINC's vocabularies; seeded).

Rows per workload:

* ``pyg performer (head 64)`` -- ``GPSConv(..., attn_type='performer')`` as a user gets it: PyG's
  ``PerformerAttention`` defaults to ``head_channels=64``, so its heads are 64 wide (4 x 64 inner
  channels) whatever ``channels`` is; ReLU random features (``generalized_kernel``);
* ``pyg performer (head 16)`` -- the same with ``attn_kwargs={'head_channels': 16}``, the width of
  gtpe's heads (64 channels / 4 heads): equal model size;
* ``gtpe linear`` -- ``GPSLayer(local='gine', attn='linear')``
  (:class:`gtpe.nn.attention.LinearAttention`: positive orthogonal random features, the
  unbiased estimator of the softmax kernel).

``vs pyg16`` = median wall ms of ``pyg performer (head 16)`` / the row's (> 1: faster).

Approximation error (printed after the timings): for one attention module of each kind on the
``500`` workload's node features (``x ~ N(0, 1)``, 8 graphs x 500 nodes, 5 draws of the random
features and weights), the relative error ``||A(x) - S(x)||_F / ||S(x)||_F`` against exact
softmax attention ``S`` with the module's own projections, ``softmax(q k^T / sqrt(d)) v`` per
graph and head, both before the output projection (PyG's has a random bias at initialisation
that would dominate the norms); beside them the error of uniform attention (the mean of
``v``).  PyG's ReLU features approximate a different kernel than the softmax, so their error
does not go to 0 with more features; gtpe's FAVOR+ features are an unbiased estimator of the
softmax kernel whose error does (tests/test_nn_attention.py::
test_linear_approximates_softmax_attention), but at GraphGPS's default of ``d ln d`` features
(45 for 16-wide heads) their variance is large for inputs of unit scale.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import PyGGPS, load_zinc_train, make_batches, make_step, time_rows  # noqa: E402

from torch_geometric.data import Batch, Data  # noqa: E402

CHANNELS, HEADS, LAYERS = 64, 4, 4
NODE_VOCAB, EDGE_VOCAB = 28, 4


def pyg_performer_gps(head_channels: int | None) -> torch.nn.Module:
    """PyG's GPSConv(GINEConv, performer) stack with the embeddings and head of the gtpe rows
    (``head_channels=None``: PyG's default 64)."""
    kw = {} if head_channels is None else {"head_channels": head_channels}
    return PyGGPS(NODE_VOCAB, EDGE_VOCAB, "performer", kw)


def gtpe_linear_gps() -> torch.nn.Module:
    from gtpe.models import GPSModel, GPSModelConfig

    cfg = GPSModelConfig(channels=CHANNELS, num_layers=LAYERS, local="gine", attn="linear",
                         heads=HEADS, pool="mean")
    return GPSModel(cfg, out_dim=1, node_input="embedding", node_in_dim=NODE_VOCAB,
                    edge_input="embedding", edge_in_dim=EDGE_VOCAB)


def random_graphs(count: int, nodes: int, edges: int, seed: int) -> list[Data]:
    """``count`` Erdős–Rényi graphs with ``nodes`` nodes and ``edges`` undirected edges."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        src = torch.randint(0, nodes, (edges,), generator=g)
        dst = (src + torch.randint(1, nodes, (edges,), generator=g)) % nodes  # no self-loops
        ea = torch.randint(0, EDGE_VOCAB, (edges,), generator=g)
        out.append(Data(x=torch.randint(0, NODE_VOCAB, (nodes, 1), generator=g),
                        edge_index=torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1),
                        edge_attr=torch.cat([ea, ea]), y=torch.randn(1, generator=g)))
    return out


def graph_batches(graphs: list[Data], per_batch: int, count: int) -> list[Batch]:
    return [Batch.from_data_list([graphs[(i * per_batch + j) % len(graphs)]
                                  for j in range(per_batch)]) for i in range(count)]


# ------------------------------------------------------------------------ approximation error
def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for ``[B, H, L, d]`` tensors."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)), -1) @ v


def _rel(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def gtpe_errors(x: torch.Tensor, B: int, L: int, draws: int) -> tuple[float, float]:
    """(error of LinearAttention, error of uniform attention), before the output projection."""
    from gtpe.nn.attention import LinearAttention

    errs, unif = [], []
    for s in range(draws):
        torch.manual_seed(s)
        la = LinearAttention(CHANNELS, HEADS, seed=s).double().eval()
        la.out_proj = torch.nn.Identity()
        q, k, v = (x @ la.in_proj_weight.T + la.in_proj_bias).view(B, L, 3, HEADS, -1) \
            .permute(2, 0, 3, 1, 4)
        exact = _exact(q, k, v).transpose(1, 2).reshape(B * L, CHANNELS)
        errs.append(_rel(la(x, torch.arange(B).repeat_interleave(L)), exact))
        mean_v = v.mean(-2, keepdim=True).expand_as(v).transpose(1, 2).reshape(B * L, CHANNELS)
        unif.append(_rel(mean_v, exact))
    return statistics.mean(errs), statistics.mean(unif)


def pyg_error(x: torch.Tensor, B: int, L: int, draws: int, head_channels: int) -> float:
    """Error of PyG's PerformerAttention before its output projection (whose random bias
    would otherwise dominate the norms)."""
    from torch_geometric.nn.attention import PerformerAttention

    errs = []
    for s in range(draws):
        torch.manual_seed(s)
        pa = PerformerAttention(CHANNELS, HEADS, head_channels=head_channels).double().eval()
        pa.attn_out = torch.nn.Identity()
        h = x.view(B, L, CHANNELS)
        q, k, v = (m(h).view(B, L, HEADS, head_channels).transpose(1, 2)
                   for m in (pa.q, pa.k, pa.v))
        errs.append(_rel(pa(h), _exact(q, k, v).transpose(1, 2).reshape(B, L, -1)))
    return statistics.mean(errs)


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, fewer ZINC graphs")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round and row")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--workloads", default="zinc,500", help="comma list: zinc, 500")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (3 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 5)
    nb = max(steps * rounds, args.warmup, 4)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}; {rounds} interleaved "
          f"rounds x {steps} steps per row after {args.warmup} warm-up steps; step = forward + "
          f"backward + Adam; {LAYERS} layers, {CHANNELS} channels, {HEADS} heads")
    print(f"{'workload':9s} {'model':26s} {'params':>7s} {'wall ms':>8s} {'vs pyg16':>8s} "
          f"{'cpu ms':>8s} {'vs pyg16':>8s}")
    for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if workload == "zinc":
            graphs, _ = load_zinc_train(2000 if args.quick else 10_000)
            batches = make_batches(graphs, nb, [])
            per_batch = 32
        elif workload == "500":
            n = 2 if args.quick else 8
            batches = graph_batches(random_graphs(16, 500, 2000, seed=0), n, nb)
            per_batch = n
        else:
            raise SystemExit(f"linear_attention_bench: unknown workload {workload!r}")
        torch.manual_seed(0)
        models = {"pyg performer (head 64)": pyg_performer_gps(None),
                  "pyg performer (head 16)": pyg_performer_gps(CHANNELS // HEADS),
                  "gtpe linear": gtpe_linear_gps()}
        rows = {name: {"step": make_step(m), "batches": batches,
                       "params": sum(p.numel() for p in m.parameters())}
                for name, m in models.items()}
        time_rows(rows, steps, rounds, args.warmup)
        ref = rows["pyg performer (head 16)"]
        ref_wall, ref_cpu = statistics.median(ref["times"]), statistics.median(ref["cpu"])
        label = f"{workload} ({per_batch}/batch)"
        for name, r in rows.items():
            wall, cpu = statistics.median(r["times"]), statistics.median(r["cpu"])
            print(f"{label:9s} {name:26s} {r['params']:7d} {wall * 1e3:8.2f} "
                  f"{ref_wall / wall:7.2f}x {cpu * 1e3:8.2f} {ref_cpu / cpu:7.2f}x")
    B, L, draws = 8, 500, 2 if args.quick else 5
    x = torch.randn(B * L, CHANNELS, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    print(f"# relative error ||approx - softmax attention||_F / ||softmax attention||_F before "
          f"the output projection, {B} graphs x {L} nodes, x ~ N(0, 1), mean of {draws} draws")
    with torch.no_grad():
        ours, uniform = gtpe_errors(x, B, L, draws)
        print(f"approximation error: gtpe linear {ours:.3f}, "
              f"pyg performer (head 16) {pyg_error(x, B, L, draws, CHANNELS // HEADS):.3f}, "
              f"pyg performer (head 64) {pyg_error(x, B, L, draws, 64):.3f}; uniform "
              f"attention (mean of v, gtpe's projections) {uniform:.3f}")


if __name__ == "__main__":
    main()
