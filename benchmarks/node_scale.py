"""Node-level scale benchmark on a generated ``sbm-<N>`` graph: wall time and peak memory of
the node encodings and of one training epoch of the linear-time graph transformers.

    python benchmarks/node_scale.py [--nodes 1000000] [--stages rwse,lappe,...]
        [--threads 2] [--repeats 1] [--hidden 64] [--mode auto|full|mini]
        [--batch-size 8192] [--fanouts 5,5] [--max-batches 0] [--mem-budget-gib 16]
        [--workdir DIR] [--json FILE] [--timeout SECONDS]

The graph is ``gtpe.datasets.sbm.generate_sbm(N)`` (mean degree 10: 1,000,000 nodes and
10,000,000 directed edges at the default size), generated once and saved to ``--workdir``.
Every stage then runs in a fresh Python process that loads the graph, builds what the stage
needs (its *setup*: transform, expander edges, model, optimiser, loader), resets the
process's RSS high-water mark (``/proc/self/clear_refs``) and runs the stage ``--repeats``
times.  Reported per stage:

* ``time``: median wall time of the repeats (``min-max`` when ``--repeats > 1``);
* ``base``: resident memory after the setup (graph, model, optimiser state, ...);
* ``peak``: the process's RSS high-water mark during the stage (``VmHWM``; includes ``base``);
* ``peak - base``: what the stage itself added at its peak.

Stages (``--stages``, comma-separated; default all):

* ``rwse``: :class:`gtpe.transforms.AddRWSE` ``(walk_length=20, method='mc')`` (32 walks per
  node, Monte-Carlo, Rao-Blackwellised; ``O(N)`` memory);
* ``lappe``: :class:`gtpe.transforms.AddLapPE` ``(k=8)`` (sparse Lanczos / shift-invert
  solver above 2,000 nodes);
* ``expander``: :class:`gtpe.transforms.AddExpanderEdges` ``(degree=3)`` (Exphormer's overlay,
  the ``exphormer`` stage's input; its setup computes the same edges);
* ``exphormer``: one epoch of Exphormer-GPS: a ``Linear(16, C)`` encoder, ``LAYERS_GPS``
  :class:`gtpe.nn.GPSLayer` ``(C, local='gcn', attn='exphormer', heads=4, norm='batch')``
  (graph edges + the expander overlay + one virtual node) and a ``Linear(C, 10)`` head;
* ``polynormer`` / ``polynormer-pyg``: Polynormer (Deng et al., ICLR 2024) assembled from
  :class:`gtpe.nn.attention.PolynormerLocal` (``conv='gcn'``, ``batch_norm=True``) and
  :class:`gtpe.nn.attention.PolynormerAttention` exactly like PyG's
  ``torch_geometric.nn.models.Polynormer`` (its defaults: GCN local layers, ``post_bn``, 1 head,
  ``beta=0.9``, ``qk_shared=False``), beside PyG's model itself (with ``_global = True``: the
  local and the global layers both run, as after the official warm-up).  ``LAYERS_POLY_LOCAL``
  local and ``LAYERS_POLY_GLOBAL`` global layers.  gtpe's layers map ``C -> C``, so its
  version has a ``Linear(16, C)`` encoder where PyG's first local layer maps ``16 -> C``
  (with ``16`` input features = ``C`` there is none, and the two models compute the same
  function given the same weights: tested);
* ``sgformer`` / ``sgformer-pyg``: SGFormer (Wu et al., NeurIPS 2023) from
  :class:`gtpe.nn.attention.SGFormerAttention` (``qk_norm='node'``, no bias: PyG's math) and
  :class:`gtpe.nn.local.GCN`, assembled exactly like PyG's ``torch_geometric.nn.models.SGFormer``
  (``LAYERS_SG_TRANS`` attention layers, ``LAYERS_SG_GNN`` GCN layers, ``graph_weight=0.5``),
  beside PyG's model (same function given the same weights: tested).

An epoch: Adam (lr 0.01), cross entropy on the training nodes (60 % of the nodes).
``full-batch``: one forward and backward over the whole graph.  ``mini-batch``: the training
nodes in shuffled batches of ``--batch-size`` seeds, each with its neighbour-sampled subgraph
(``--fanouts`` in-edges per node and hop; gtpe's plain-torch
:class:`gtpe.train.node_sampling.UniformNeighborSampler` through ``gtpe.train.node_sampling.neighbor_loader``),
the loss on the seeds; the global attention then runs over the sampled subgraph.
``--mode auto`` (default) picks full-batch when ``MODEL_BYTES_PER_NODE[stage] * N`` (the
measured growth of the stage's peak, see the comment at the constant) fits in
``--mem-budget-gib`` for the stage and for its gtpe / PyG twin, else mini-batch (the two
rows of a pair always run the same way).  ``--max-batches k`` runs only the first ``k``
mini-batches and scales their time to the epoch (the table says so).  Dropout as in PyG's
defaults; the time includes the loader (mini-batch) and the optimiser step.  For a
comparison of times, run on a quiet machine: on a busy one ``--threads 1`` (more threads
than free cores make every OpenMP kernel spin-wait).

The output starts with the machine (CPU model, cores, RAM), the torch / PyG / numpy / scipy
versions and the exact command, then a markdown table for the README.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

PE_STAGES = ("rwse", "lappe", "expander")
MODEL_STAGES = ("exphormer", "polynormer", "polynormer-pyg", "sgformer", "sgformer-pyg")
STAGES = PE_STAGES + MODEL_STAGES

LAYERS_GPS = 2  # Exphormer-GPS layers
LAYERS_POLY_LOCAL = 3  # Polynormer local layers (PyG default 7)
LAYERS_POLY_GLOBAL = 2  # Polynormer global layers (PyG default)
LAYERS_SG_TRANS = 2  # SGFormer attention layers (PyG default)
LAYERS_SG_GNN = 3  # SGFormer GCN layers (PyG default)

# Full-batch peak growth (VmHWM - base) per node of each training stage, bytes, --hidden 64,
# sbm graphs (mean degree 10): the slope between the 30k- and 100k-node runs (1 thread; peak -
# base at 10k / 30k / 100k nodes, GiB: exphormer 0.43 / 1.03 / 3.30, polynormer 0.16 / 0.50 /
# 1.62, polynormer-pyg 0.34 / 0.83 / 2.81, sgformer 0.29 / 0.77 / 2.54, sgformer-pyg 0.26 / 0.54 /
# 2.09).  ``--mode auto`` multiplies it by N (and hidden / 64): at 1,000,000 nodes every pair
# is over 16 GiB (16-32 GiB), so the 1M run trains them mini-batch.
MODEL_BYTES_PER_NODE = {
    "exphormer": 35_000,
    "polynormer": 17_500,
    "polynormer-pyg": 30_500,
    "sgformer": 27_500,
    "sgformer-pyg": 24_000,
}


# ------------------------------------------------------------------------------ memory
# The process's RSS now, its high-water mark (VmHWM) and resetting it: gtpe.train.cost's host
# memory functions (what gtpe train reports), imported when a stage's process measures.
def _host_cost():
    import torch

    from gtpe.train import cost

    return cost, torch.device("cpu")


def rss_bytes() -> int:
    """Current resident set size of this process (0 without ``/proc``)."""
    cost, host = _host_cost()
    return cost.current_memory_bytes(host) or 0


def peak_bytes() -> int:
    """RSS high-water mark of this process since start or the last :func:`reset_peak`."""
    cost, host = _host_cost()
    return cost.peak_memory_bytes(host) or 0


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False if impossible."""
    cost, host = _host_cost()
    return cost.reset_peak_memory(host)


# ------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    import numpy
    import scipy
    import torch
    import torch_geometric

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            if m:
                cpu = m.group(1).strip()
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            ram = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram / 2**30,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "os": platform.platform(),
    }


# ------------------------------------------------------------------------------ models
def build_model(stage: str, in_dim: int, hidden: int, out_dim: int):
    """``(model, forward(model, data) -> log-probabilities [n, out_dim])``."""
    import torch

    if stage == "exphormer":
        return _exphormer_gps(in_dim, hidden, out_dim), lambda m, d: m(d.x, d.edge_index, d.expander_index)
    if stage == "polynormer":
        return _GtpePolynormer(in_dim, hidden, out_dim), lambda m, d: m(d.x, d.edge_index)
    if stage == "sgformer":
        return _GtpeSGFormer(in_dim, hidden, out_dim), lambda m, d: m(d.x, d.edge_index)
    if stage == "polynormer-pyg":
        from torch_geometric.nn.models import Polynormer

        model = Polynormer(in_dim, hidden, out_dim, local_layers=LAYERS_POLY_LOCAL,
                           global_layers=LAYERS_POLY_GLOBAL)
        model._global = True  # local + global layers (after the official warm-up epochs)
    elif stage == "sgformer-pyg":
        from torch_geometric.nn.models import SGFormer

        model = SGFormer(in_dim, hidden, out_dim, trans_num_layers=LAYERS_SG_TRANS,
                         gnn_num_layers=LAYERS_SG_GNN)
    else:
        raise ValueError(f"not a model stage: {stage!r}")

    def forward(m, d):
        batch = torch.zeros(d.num_nodes, dtype=torch.long)
        return m(d.x, d.edge_index, batch)

    return model, forward


def _exphormer_gps(in_dim: int, hidden: int, out_dim: int):
    import torch

    from gtpe.nn import GPSLayer

    class ExphormerGPS(torch.nn.Module):
        """Linear encoder, GPS layers (GCN + Exphormer attention), linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Linear(in_dim, hidden)
            self.layers = torch.nn.ModuleList(
                GPSLayer(hidden, local="gcn", attn="exphormer", heads=4, dropout=0.1,
                         norm="batch", attn_kwargs={"edge_dim": None})
                for _ in range(LAYERS_GPS))
            self.head = torch.nn.Linear(hidden, out_dim)

        def forward(self, x, edge_index, expander_index):
            h = self.encoder(x)
            state: dict = {}
            for layer in self.layers:
                h = layer(h, edge_index, None, expander_index=expander_index, state=state,
                          num_graphs=1)
            return torch.log_softmax(self.head(h), dim=-1)

    return ExphormerGPS()


def _gtpe_polynormer_class():
    import torch
    import torch.nn.functional as F

    from gtpe.nn.attention import PolynormerAttention, PolynormerLocal

    class GtpePolynormer(torch.nn.Module):
        """PyG's ``Polynormer`` (defaults, ``_global = True``) from gtpe's layers: input dropout
        0.15, local layers summed, LayerNorm, global layers, linear head."""

        def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
            super().__init__()
            # PyG's first local layer maps in_dim -> C; gtpe's layers are C -> C
            self.encoder = (torch.nn.Identity() if in_dim == hidden
                            else torch.nn.Linear(in_dim, hidden))
            self.local = torch.nn.ModuleList(
                PolynormerLocal(hidden, heads=1, beta=0.9, conv="gcn", dropout=0.5,
                                batch_norm=True) for _ in range(LAYERS_POLY_LOCAL))
            self.ln = torch.nn.LayerNorm(hidden)
            self.glob = torch.nn.ModuleList(
                PolynormerAttention(hidden, heads=1, beta=0.9, qk_shared=False, dropout=0.5)
                for _ in range(LAYERS_POLY_GLOBAL))
            self.head = torch.nn.Linear(hidden, out_dim)

        def forward(self, x, edge_index):
            x = self.encoder(F.dropout(x, p=0.15, training=self.training))
            cache: dict = {}
            x_local = 0
            for layer in self.local:
                x = layer(x, edge_index, cache=cache)
                x_local = x_local + x
            x = self.ln(x_local)
            for attn in self.glob:
                x = attn(x)
            return torch.log_softmax(self.head(x), dim=-1)

    return GtpePolynormer


def _gtpe_sgformer_class():
    import torch
    import torch.nn.functional as F

    from gtpe.nn.attention import SGFormerAttention
    from gtpe.nn.local import GCN

    class GtpeSGFormer(torch.nn.Module):
        """PyG's ``SGFormer`` (defaults) from gtpe's ``SGFormerAttention`` and ``GCN``."""

        def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
            super().__init__()
            self.t_fc = torch.nn.Linear(in_dim, hidden)
            self.t_norms = torch.nn.ModuleList(
                torch.nn.LayerNorm(hidden) for _ in range(LAYERS_SG_TRANS + 1))
            self.attns = torch.nn.ModuleList(
                SGFormerAttention(hidden, heads=1, bias=False, qk_norm="node")
                for _ in range(LAYERS_SG_TRANS))
            self.g_fc = torch.nn.Linear(in_dim, hidden)
            self.g_norms = torch.nn.ModuleList(
                torch.nn.BatchNorm1d(hidden) for _ in range(LAYERS_SG_GNN + 1))
            self.convs = torch.nn.ModuleList(GCN(hidden) for _ in range(LAYERS_SG_GNN))
            self.fc = torch.nn.Linear(hidden, out_dim)

        def forward(self, x, edge_index):
            drop = lambda t: F.dropout(t, p=0.5, training=self.training)  # noqa: E731
            t = drop(F.relu(self.t_norms[0](self.t_fc(x))))
            prev = [t]
            for i, attn in enumerate(self.attns):
                t = (attn(t) + prev[i]) / 2.0
                t = drop(F.relu(self.t_norms[i + 1](t)))
                prev.append(t)
            g = drop(F.relu(self.g_norms[0](self.g_fc(x))))
            last, cache = g, {}
            for i, conv in enumerate(self.convs):
                g = drop(F.relu(self.g_norms[i + 1](conv(g, edge_index, cache=cache)))) + last
            return torch.log_softmax(self.fc(0.5 * g + 0.5 * t), dim=-1)

    return GtpeSGFormer


def _GtpePolynormer(in_dim, hidden, out_dim):  # noqa: N802
    return _gtpe_polynormer_class()(in_dim, hidden, out_dim)


def _GtpeSGFormer(in_dim, hidden, out_dim):  # noqa: N802
    return _gtpe_sgformer_class()(in_dim, hidden, out_dim)


def full_batch_bytes(stage: str, num_nodes: int, hidden: int) -> float:
    """Estimated full-batch peak above the setup (:data:`MODEL_BYTES_PER_NODE`, linear in
    ``hidden``)."""
    return MODEL_BYTES_PER_NODE[stage] * num_nodes * max(hidden, 16) / 64


def pick_mode(stage: str, num_nodes: int, hidden: int, mode: str, budget_gib: float) -> str:
    """``mode`` unless ``'auto'``: then full-batch if the estimate of the stage *and* of its
    gtpe / PyG twin fits ``budget_gib`` (the two rows of a pair always run the same way)."""
    if mode != "auto":
        return mode
    twins = [s for s in MODEL_STAGES if s.split("-")[0] == stage.split("-")[0]]
    need = max(full_batch_bytes(s, num_nodes, hidden) for s in twins)
    return "full" if need <= budget_gib * 2**30 else "mini"


# ------------------------------------------------------------------------------ worker
def run_stage(args) -> dict:
    """One stage in this (fresh) process; returns the measurements."""
    import torch

    torch.set_num_threads(args.threads)
    data = torch.load(args.graph, weights_only=False)
    N = data.num_nodes
    info: dict = {"stage": args.worker, "nodes": N, "edges": int(data.edge_index.size(1))}
    stage = args.worker

    if stage in PE_STAGES:
        from gtpe.transforms import AddExpanderEdges, AddLapPE, AddRWSE

        transform = {"rwse": lambda: AddRWSE(walk_length=20, method="mc"),
                     "lappe": lambda: AddLapPE(k=8),
                     "expander": lambda: AddExpanderEdges(degree=3)}[stage]()
        info["mode"] = "-"

        def step() -> None:
            out = transform(copy.copy(data))
            info["out_shape"] = [list(v.shape) for k, v in out.items()
                                 if k in ("rwse", "lap_pe", "expander_index")]
            del out
    else:
        from gtpe.train.node_sampling import neighbor_loader as _neighbor_loader

        if stage == "exphormer":
            from gtpe.transforms import AddExpanderEdges

            data = AddExpanderEdges(degree=3)(data)
        mode = pick_mode(stage, N, args.hidden, args.mode, args.mem_budget_gib)
        info["mode"] = mode
        torch.manual_seed(0)
        model, forward = build_model(stage, data.x.size(1), args.hidden, int(data.y.max()) + 1)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        train_nodes = data.train_mask.nonzero().view(-1)
        gen = torch.Generator().manual_seed(0)
        if mode == "mini":
            fanouts = [int(f) for f in args.fanouts.split(",")]
            loader = _neighbor_loader(data, train_nodes, fanouts, args.batch_size,
                                      shuffle=True, generator=gen)
        info["batches"] = 0

        def train_step(batch, seeds) -> None:
            opt.zero_grad(set_to_none=True)
            out = forward(model, batch)
            loss = torch.nn.functional.nll_loss(out[seeds], batch.y[seeds])
            loss.backward()
            opt.step()
            info["loss"] = loss.item()

        def step() -> None:
            if mode == "full":
                train_step(data, train_nodes)
                info["batches"] = 1
                return
            sub_nodes = []
            for batch in loader:
                train_step(batch, slice(0, batch.batch_size))
                sub_nodes.append(batch.num_nodes)
                if args.max_batches and len(sub_nodes) >= args.max_batches:
                    break
            info["batches"] = len(sub_nodes)
            info["batches_per_epoch"] = len(loader)
            info["subgraph_nodes_mean"] = int(statistics.mean(sub_nodes))

        step_setup_peak = peak_bytes()
        info["setup_peak"] = step_setup_peak

    gc.collect()
    info["base"] = rss_bytes()
    info["peak_reset"] = reset_peak()
    times, peaks = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        peaks.append(peak_bytes())
        gc.collect()
    if info.get("batches_per_epoch", 0) > info.get("batches", 0) > 0:
        # --max-batches: the epoch time extrapolated from the batches run
        info["measured_times"] = times
        times = [t * info["batches_per_epoch"] / info["batches"] for t in times]
    info["times"] = times
    info["peak"] = max(peaks)
    return info


# ------------------------------------------------------------------------------ driver
def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _fmt_time(ts: list[float]) -> str:
    med = statistics.median(ts)
    s = f"{med:.2f}" if med < 100 else f"{med:.0f}"
    if len(ts) > 1:
        s += f" ({min(ts):.2f}-{max(ts):.2f})"
    return s


ROW_NAMES = {
    "rwse": "RWSE, Monte-Carlo (K=20, 32 walks)",
    "lappe": "LapPE k=8 (sparse solver)",
    "expander": "expander edges (degree 3)",
    "exphormer": "Exphormer-GPS (gtpe), 1 epoch",
    "polynormer": "Polynormer (gtpe layers), 1 epoch",
    "polynormer-pyg": "Polynormer (PyG 2.8 model), 1 epoch",
    "sgformer": "SGFormer (gtpe layers), 1 epoch",
    "sgformer-pyg": "SGFormer (PyG 2.8 model), 1 epoch",
}


def format_table(rows: list[dict]) -> str:
    lines = ["| stage | mode | time (s) | base RSS (GiB) | peak RSS (GiB) | peak - base (GiB) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        name = ROW_NAMES.get(r["stage"], r["stage"])
        if "error" in r:
            lines.append(f"| {name} | - | failed: {r['error']} | | | |")
            continue
        mode = {"full": "full-batch", "mini": "mini-batch", "-": "-"}[r["mode"]]
        if r["mode"] == "mini":
            n_b, n_e = r["batches"], r["batches_per_epoch"]
            mode += (f" ({n_e} batches" if n_b == n_e else f" (time: {n_b} of {n_e} batches, "
                     f"scaled") + f"; subgraphs ~{r['subgraph_nodes_mean']:,} nodes)"
        lines.append(f"| {name} | {mode} | {_fmt_time(r['times'])} | {_gib(r['base'])} | "
                     f"{_gib(r['peak'])} | {_gib(r['peak'] - r['base'])} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--mode", choices=("auto", "full", "mini"), default="auto")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--fanouts", default="5,5")
    p.add_argument("--max-batches", type=int, default=0,
                   help="mini-batch: run only this many batches and extrapolate the epoch "
                        "time (0: the whole epoch)")
    p.add_argument("--mem-budget-gib", type=float, default=16.0)
    p.add_argument("--workdir", default=None, help="where the graph is saved (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--timeout", type=float, default=None, help="seconds per stage")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--graph", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    args.stage_list = stages
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_stage(args)), flush=True)
        return []
    import torch

    from gtpe.datasets.sbm import generate_sbm

    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in [sys.executable, os.path.relpath(__file__)] + list(argv))
    mi = machine_info()
    print(f"machine: {mi['cpu']}, {mi['cores']} cores, {mi['ram_gib']:.1f} GiB RAM ({mi['os']})")
    print(f"versions: python {mi['python']}, torch {mi['torch']}, torch_geometric "
          f"{mi['torch_geometric']}, numpy {mi['numpy']}, scipy {mi['scipy']}")
    print(f"command: {command}")
    print(f"threads: {args.threads}, repeats: {args.repeats}, hidden: {args.hidden}, "
          f"mode: {args.mode} (budget {args.mem_budget_gib:g} GiB), batch size "
          f"{args.batch_size}, fan-outs {args.fanouts}", flush=True)

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gtpe_node_scale_")
        workdir = tmp.name
    os.makedirs(workdir, exist_ok=True)
    graph = os.path.join(workdir, f"sbm-{args.nodes}.pt")
    if not os.path.exists(graph):
        t0 = time.perf_counter()
        data = generate_sbm(args.nodes, progress=args.nodes >= 100_000)
        torch.save(data, graph)
        print(f"graph: sbm-{args.nodes}: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} "
              f"directed edges (generated in {time.perf_counter() - t0:.1f} s)", flush=True)
        del data
    else:
        print(f"graph: {graph} (reused)")

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    rows = []
    try:
        for stage in args.stage_list:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", stage, "--graph", graph,
                   "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--hidden", str(args.hidden), "--mode", args.mode,
                   "--batch-size", str(args.batch_size), "--fanouts", args.fanouts,
                   "--max-batches", str(args.max_batches),
                   "--mem-budget-gib", str(args.mem_budget_gib)]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                      timeout=args.timeout)
                out = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not out:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    row = {"stage": stage, "error": f"exit {proc.returncode}: {tail[:120]}"}
                    sys.stderr.write(proc.stderr)
                else:
                    row = json.loads(out[-1][len("RESULT "):])
            except subprocess.TimeoutExpired:
                row = {"stage": stage, "error": f"timeout after {args.timeout:g} s"}
            row["process_s"] = time.perf_counter() - t0
            rows.append(row)
            if "error" in row:
                print(f"  {stage}: {row['error']}", flush=True)
            else:
                print(f"  {stage}: {_fmt_time(row['times'])} s, peak {_gib(row['peak'])} GiB "
                      f"(base {_gib(row['base'])}), mode {row['mode']}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print()
    print(f"sbm-{args.nodes} ({args.nodes:,} nodes, {10 * args.nodes:,} directed edges), "
          f"{args.threads} threads:")
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mi, "command": command, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
