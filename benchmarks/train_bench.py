"""Training throughput of GPS models: gtpe vs PyG's GPSConv, plus a large-graph Exphormer row.

    python benchmarks/train_bench.py [--quick] [--steps N] [--rounds R] [--no-scale]

Rows (ZINC 12k train, batch 32, 4 layers, 64 channels, heads 4, same node/edge embeddings,
mean pooling -- a graph token for Graphormer and TokenGT -- and MLP head for every row):

* ``pyg GPSConv(GINEConv, multihead)`` -- ``torch_geometric.nn.GPSConv`` layers;
* ``gtpe gine+full`` -- :class:`gtpe.nn.GPSLayer` (``local='gine', attn='full'``), the same
  computation (see tests/test_nn_gps.py for the 1e-5 equivalence); on CPU its attention runs
  :class:`~gtpe.nn.attention.FullAttention`'s ``'kernel'`` path (the C kernel, compiled on
  first use; on torch's OpenMP threads);
* ``gtpe gine+full (fused)`` / ``(sdpa)`` (``--rows full-fused,full-sdpa``, not in the default
  rows) -- the same model with ``FullAttention(strategy='fused')`` (pure torch: what runs where
  no C compiler is found) or ``strategy='sdpa'`` (size-bucketed
  ``scaled_dot_product_attention``);
* ``pyg GPSConv(GINEConv,performer16)`` -- ``GPSConv(attn_type='performer')`` with
  ``head_channels=16`` (as wide as gtpe's heads; benchmarks/linear_attention_bench.py has the
  default 64-wide heads, a 500-node workload and the approximation errors);
* ``gtpe gine+linear`` / ``gine+exphormer`` / ``grit`` (``local=None, attn='grit'``);
* ``gtpe graphormer`` -- ``GPSModel(local=None, attn='graphormer', pool='token', norm='layer')``
  with ``pe.spd.max_dist = 8`` (Graphormer: spatial bias, centrality encoding, graph token);
  ``padded graphormer`` -- the same model and weights (a deep copy) with every
  ``FullAttention`` swapped for :class:`padded_attention.PaddedSDPAAttention`: the batch padded
  to its largest graph, a dense ``[B, H, L, L]`` float bias and one
  ``scaled_dot_product_attention`` call (how Graphormer's reference code batches);
* ``gtpe tokengt`` -- ``gtpe.models.model_class(cfg)`` for ``arch='tokengt'`` (nodes and edges
  as tokens, Laplacian node identifiers ``k = 8``, full attention, token readout); ``padded
  tokengt`` -- its swapped copy, as above.

Rows with a padded twin (``graphormer``, ``tokengt``) check before timing that the twin's
forward output equals theirs on one batch (eval mode, ``assert_close`` 1e-4), and the table's
``vs padded`` column is padded median / gtpe median (wall); a summary line per pair prints the
wall and CPU ratios against the 1.5x target.

``--busy`` times every row twice and prints two tables: quiet, then with one competing
CPU-bound process (a Python busy loop the script starts and stops) -- the load of a data-loader
worker or a neighbour on a shared machine, under which OpenMP threads that spin between
parallel regions lose their core (``gtpe`` itself sets ``OMP_WAIT_POLICY=PASSIVE``; the header
line says what this run had).

Each step is forward + backward + Adam step on a pre-collated mini-batch (collation and PE
precomputation are excluded). The models are timed interleaved, in ``--rounds`` rounds of
``--steps`` steps each (after warm-up), so that load from other processes hits all rows alike;
graphs/s = batch size / median step time.  The ``vs PyG`` columns are relative to the PyG
multihead row (the linear row: to the PyG performer row).

Scale row: one ``GPSLayer(local='gine', attn='exphormer')`` (64 channels) on a single random
graph with 100,000 nodes and 1,000,000 directed edges (+ a degree-3 expander overlay),
forward + backward (best of 2); wall seconds and peak memory above the inputs (CUDA:
``max_memory_allocated``; CPU: peak resident-set growth, sampled every 2 ms, in a child
process).  Full attention cannot run there: its score matrix alone would be
100,000^2 x 4 heads x 4 bytes = 160 GB per layer.

Data: ``gtpe.datasets.load_dataset('zinc')['train']`` if that works, else the offline mirror
``$GTPE_MIRROR/zinc_subset/zinc_subset.json.gz`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import copy
import time
from collections.abc import Callable

import torch
from torch.nn import Embedding, Linear, ReLU, Sequential

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # padded_attention
os.environ.setdefault("GTPE_MIRROR", os.path.join(os.path.dirname(_REPO), "shared", "data"))

from torch_geometric.data import Batch, Data

BATCH = 32
DEFAULT_ROWS = (
    "pyg", "full", "pyg-performer", "linear", "exphormer", "exphormer-orig", "grit",
    "grit-orig", "graphormer", "graphormer-padded", "tokengt", "tokengt-padded",
)
# rows whose model comes from transformer_model(), and their padded twins (key -> gtpe key)
TRANSFORMERS = ("graphormer", "tokengt")
PADDED = {f"{k}-padded": k for k in TRANSFORMERS}
# rows running ported official layers (benchmarks/*_original.py) -> (gtpe row, target speed-up)
ORIGINAL = {"exphormer-orig": ("exphormer", 1.5), "grit-orig": ("grit", 2.0)}
LAYERS = 4
CHANNELS = 64
HEADS = 4


# ---------------------------------------------------------------------------------------------
def load_zinc_train(limit: int | None) -> list[Data]:
    try:
        from gtpe.datasets import load_dataset

        ds = load_dataset("zinc")["train"]
        n = len(ds) if limit is None else min(limit, len(ds))
        out = [ds[i] for i in range(n)]
        src = "gtpe.datasets"
    except Exception as exc:  # noqa: BLE001 - DATA's loader missing or failing: read the mirror directly
        mirror = os.environ["GTPE_MIRROR"]
        path = os.path.join(mirror, "zinc_subset", "zinc_subset.json.gz")
        with gzip.open(path, "rt") as f:
            tr = json.load(f)["train"]
        n = tr["num_graphs"] if limit is None else min(limit, tr["num_graphs"])
        src_all = torch.tensor(tr["edge_index"][0])
        dst_all = torch.tensor(tr["edge_index"][1])
        x_all = torch.tensor(tr["x"])
        ea_all = torch.tensor(tr["edge_attr"])
        out = []
        for g in range(n):
            a, b = tr["x_ptr"][g], tr["x_ptr"][g + 1]
            c, d = tr["edge_ptr"][g], tr["edge_ptr"][g + 1]
            out.append(
                Data(
                    x=x_all[a:b].view(-1, 1),
                    edge_index=torch.stack([src_all[c:d], dst_all[c:d]]),
                    edge_attr=ea_all[c:d],
                    y=torch.tensor([tr["y"][g]], dtype=torch.float),
                )
            )
        src = f"{path} ({type(exc).__name__} from gtpe.datasets)"
    return out, src


def make_batches(graphs: list[Data], num_batches: int, transforms: list) -> list[Batch]:
    batches = []
    for i in range(num_batches):
        chunk = graphs[(i * BATCH) % len(graphs) :][:BATCH]
        b = Batch.from_data_list(chunk)
        for t in transforms:
            b = t(b)
        batches.append(b)
    return batches


# ---------------------------------------------------------------------------------------------
class PyGGPS(torch.nn.Module):
    """The reference: PyG's GPSConv(GINEConv) stack with the same embeddings and head
    (``attn_type`` and ``attn_kwargs`` as GPSConv's: the multihead row, or the Performer rows of
    the linear attention benchmarks)."""

    def __init__(self, node_vocab: int, edge_vocab: int, attn_type: str = "multihead",
                 attn_kwargs: dict | None = None):
        super().__init__()
        from torch_geometric.nn import GINEConv, GPSConv

        C = CHANNELS
        self.node_emb = Embedding(node_vocab, C)
        self.edge_emb = Embedding(edge_vocab, C)
        self.convs = torch.nn.ModuleList(
            [
                GPSConv(
                    C,
                    GINEConv(Sequential(Linear(C, C), ReLU(), Linear(C, C))),
                    heads=HEADS,
                    attn_type=attn_type,
                    attn_kwargs=attn_kwargs,
                )
                for _ in range(LAYERS)
            ]
        )
        self.head = Sequential(Linear(C, C), ReLU(), Linear(C, 1))

    def forward(self, data: Batch) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        x = self.node_emb(data.x.view(-1))
        e = self.edge_emb(data.edge_attr.view(-1))
        for conv in self.convs:
            x = conv(x, data.edge_index, data.batch, edge_attr=e)
        return self.head(global_mean_pool(x, data.batch, data.num_graphs))


def gtpe_model(local: str | None, attn: str, node_vocab: int, edge_vocab: int):
    from gtpe.models import GPSModel, GPSModelConfig

    cfg = GPSModelConfig(
        channels=CHANNELS, num_layers=LAYERS, local=local, attn=attn, heads=HEADS, pool="mean"
    )
    return GPSModel(
        cfg,
        out_dim=1,
        node_input="embedding",
        node_in_dim=node_vocab,
        edge_input="embedding",
        edge_in_dim=edge_vocab,
    ), cfg


class GtpeEncoder(torch.nn.Module):
    """The input and PE encoders of a gtpe ``GPSModel`` (its ``node_encoder``, ``edge_encoder``,
    ``rrwp_encoder``: the same modules, so the same parameters) as a module whose forward is
    ``model.encode(data)``; the model's layers are not part of it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name in ("node_encoder", "edge_encoder", "rrwp_encoder"):
            setattr(self, name, getattr(model, name))
        self._model = [model]  # not a submodule: its layers stay out of parameters()

    def forward(self, data: Batch) -> dict:
        return self._model[0].encode(data)


def orig_model(key: str, base: torch.nn.Module) -> torch.nn.Module:
    """The ported official layers (``key``: ``'exphormer-orig'`` or ``'grit-orig'``) behind the
    encoders and head of the gtpe ``GPSModel`` ``base`` (shared modules: the rows differ in their
    layers only)."""
    from exphormer_original import OrigExphormerModel
    from grit_original import OrigGritModel

    enc = GtpeEncoder(base)
    if key == "exphormer-orig":
        return OrigExphormerModel(enc, base.head, CHANNELS, LAYERS, HEADS)
    return OrigGritModel(enc, base.head, CHANNELS, LAYERS, HEADS)


def transformer_model(kind: str, node_vocab: int, edge_vocab: int):
    """``kind='graphormer'``: GPSModel(local=None, attn='graphormer', graph token, SPD up to 8);
    ``kind='tokengt'``: the model class of ``arch='tokengt'`` (LapPE k=8 node identifiers)."""
    from gtpe.models import GPSModel, GPSModelConfig, PEConfig

    common = dict(
        channels=CHANNELS, num_layers=LAYERS, local=None, heads=HEADS, norm="layer", pool="token"
    )
    if kind == "graphormer":
        from gtpe.models import SPDConfig

        cfg = GPSModelConfig(attn="graphormer", pe=PEConfig(spd=SPDConfig(max_dist=8)), **common)
        cls = GPSModel
    else:
        from gtpe.models import LapPEConfig, model_class

        cfg = GPSModelConfig(arch="tokengt", attn="full", pe=PEConfig(lap=LapPEConfig(k=8)), **common)
        cls = model_class(cfg)
    model = cls(
        cfg,
        out_dim=1,
        node_input="embedding",
        node_in_dim=node_vocab,
        edge_input="embedding",
        edge_in_dim=edge_vocab,
    )
    return model, cfg


def padded_twin(model: torch.nn.Module, batch: Batch) -> torch.nn.Module:
    """A deep copy of ``model`` (same weights) with every FullAttention replaced by the padded
    SDPA one; checks (eval mode) that its output equals ``model``'s on ``batch``."""
    from padded_attention import swap_full_attention

    twin = copy.deepcopy(model)
    n = swap_full_attention(twin)
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no FullAttention to swap")
    mode = model.training
    model.eval()
    twin.eval()
    with torch.no_grad():
        ref, out = model(batch), twin(batch)
    model.train(mode)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    err = (out - ref).abs().max().item()
    print(
        f"# checked: padded twin of {type(model).__name__} ({n} FullAttention swapped) gives "
        f"the same output on one batch (eval, max |diff| {err:.1e} <= 1e-4)"
    )
    return twin


def make_step(model: torch.nn.Module) -> Callable[[Batch], float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()

    def step(b: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        out = model(b).view(-1)
        loss = (out - b.y).abs().mean()
        loss.backward()
        opt.step()
        if out.is_cuda:  # time the work, not the kernel launches
            torch.cuda.synchronize()

    return step


def time_rows(rows: dict[str, dict], steps: int, rounds: int, warmup: int) -> None:
    for r in rows.values():
        for i in range(warmup):
            r["step"](r["batches"][i % len(r["batches"])])
        r["times"], r["cpu"] = [], []
    for rnd in range(rounds):
        for r in rows.values():
            bs = r["batches"]
            for i in range(steps):
                b = bs[(rnd * steps + i) % len(bs)]
                t0, c0 = time.perf_counter(), time.process_time()
                r["step"](b)
                r["times"].append(time.perf_counter() - t0)
                r["cpu"].append(time.process_time() - c0)


# ---------------------------------------------------------------------------------------------
def scale_row(num_nodes: int, num_edges: int, device: torch.device) -> dict[str, float]:
    """Forward+backward of one GPSLayer(gine, exphormer) on one big random graph."""
    from gtpe.nn import GPSLayer

    g = torch.Generator().manual_seed(0)
    half = num_edges // 2
    s = torch.randint(0, num_nodes, (half,), generator=g)
    d = torch.randint(0, num_nodes, (half,), generator=g)
    edge_index = torch.stack([torch.cat([s, d]), torch.cat([d, s])])
    data = Data(edge_index=edge_index, num_nodes=num_nodes)
    try:
        from gtpe.transforms import AddExpanderEdges

        data = AddExpanderEdges(degree=3)(data)
        exp = data.expander_index
    except Exception:  # noqa: BLE001 - transform not available: random 3-regular-ish overlay
        perm = [torch.randperm(num_nodes, generator=g) for _ in range(3)]
        exp = torch.cat([torch.stack([torch.arange(num_nodes), p]) for p in perm], dim=1)
    C = CHANNELS
    layer = GPSLayer(C, local="gine", attn="exphormer", heads=HEADS).to(device)
    x = torch.randn(num_nodes, C, device=device, requires_grad=True)
    ea = torch.randn(edge_index.size(1), C, device=device)
    edge_index, exp = edge_index.to(device), exp.to(device)
    batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    times, peak = [], 0.0
    for _ in range(2):  # the first call also allocates; report the faster one
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sampler = _PeakRSS() if device.type != "cuda" else None
        t0 = time.perf_counter()
        out = layer(x, edge_index, batch, ea, expander_index=exp, num_graphs=1)
        out.square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del out
        if device.type == "cuda":
            peak = max(peak, (torch.cuda.max_memory_allocated() - base) / 2**30)
        else:
            peak = max(peak, sampler.stop() / 2**30)
    sec = min(times)
    return {"seconds": sec, "peak_gib": peak, "expander_edges": exp.size(1)}


class _PeakRSS:
    """Samples this process's resident set size every 2 ms (Linux /proc); peak growth in bytes."""

    def __init__(self) -> None:
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:  # not Linux: fall back to the lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        return self.peak - self.base


def _scale_child(q, num_nodes, num_edges, device, threads):
    torch.set_num_threads(threads)
    try:
        q.put(scale_row(num_nodes, num_edges, torch.device(device)))
    except Exception as exc:  # noqa: BLE001 - report instead of hanging the parent
        q.put({"error": f"{type(exc).__name__}: {exc}"})


class CompetingProcess:
    """One CPU-bound process (a Python busy loop) running until :meth:`stop`: the load a data
    loader worker, a second run or a neighbour on a shared machine puts on one core."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let it reach its loop before anything is timed

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def print_table(rows: dict[str, dict], keys: dict[str, str]) -> None:
    """The table of timed ``rows`` (``vs PyG``, ``vs padded``) and the padded-pair summary."""
    pad_of: dict[str, str] = {}  # row name -> its padded twin's row name
    for pkey, key in PADDED.items():
        if pkey in keys and key in keys:
            pad_of[keys[key]] = pad_of[keys[pkey]] = keys[pkey]
    orig_of: dict[str, str] = {}  # gtpe row name -> its official twin's row name
    for okey, (key, _) in ORIGINAL.items():
        if okey in keys and key in keys and keys[key] not in orig_of:
            orig_of[keys[key]] = keys[okey]
    print(
        f"{'model':36s} {'params':>7s} {'wall ms':>8s} {'graphs/s':>9s} {'vs PyG':>7s} "
        f"{'cpu ms':>7s} {'vs PyG':>7s} {'vs padded':>9s} {'vs orig':>8s}"
    )
    for key, name in keys.items():
        r = rows[name]
        med = statistics.median(r["times"])
        cpu = statistics.median(r["cpu"])
        gps = BATCH / med
        # the PyG peer: the performer row for the linear row, else the multihead row
        peer = keys.get("pyg-performer" if key == "linear" else "pyg")
        if key == "linear" and peer is None:
            peer = keys.get("pyg")
        ratio = ratio_cpu = "      -"
        if peer is not None:
            ref_med = statistics.median(rows[peer]["times"])
            ref_cpu = statistics.median(rows[peer]["cpu"])
            ratio, ratio_cpu = f"{ref_med / med:6.2f}x", f"{ref_cpu / cpu:6.2f}x"
        pad = orig = "      -"
        if name in pad_of:
            pad = f"{statistics.median(rows[pad_of[name]]['times']) / med:6.2f}x"
        if name in orig_of:
            orig = f"{statistics.median(rows[orig_of[name]]['times']) / med:6.2f}x"
        print(
            f"{name:36s} {r['params']:7d} {med * 1e3:8.2f} {gps:9.1f} {ratio:>7s} "
            f"{cpu * 1e3:7.2f} {ratio_cpu:>7s} {pad:>9s} {orig:>8s}"
        )
    # each gtpe row against its peer: (peer row, gtpe row, peer's label, target speed-up)
    pairs = [(p, k, "padded SDPA", 1.5) for p, k in PADDED.items()]
    pairs += [(o, k, o, target) for o, (k, target) in ORIGINAL.items()]
    for peer, key, label, target in pairs:
        if peer in keys and key in keys:
            g, o = rows[keys[key]], rows[keys[peer]]
            wall = statistics.median(o["times"]) / statistics.median(g["times"])
            cpu = statistics.median(o["cpu"]) / statistics.median(g["cpu"])
            print(
                f"# {key}: {label} / gtpe = {wall:.2f}x wall, {cpu:.2f}x cpu "
                f"(target >= {target}x: {'met' if min(wall, cpu) >= target else 'NOT met'})"
            )


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, small scale graph")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round and row")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help="comma list of rows (pyg, full, full-fused, full-sdpa, pyg-performer, linear, "
        "exphormer, exphormer-orig, grit, grit-orig, "
        "graphormer, graphormer-padded, tokengt, tokengt-padded)",
    )
    ap.add_argument("--no-scale", action="store_true", help="skip the 100k-node Exphormer row")
    ap.add_argument("--scale-nodes", type=int, default=None)
    ap.add_argument("--scale-edges", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--busy",
        action="store_true",
        help="time the rows twice: quiet, then with one competing CPU-bound process",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 20)
    rounds = args.rounds or (2 if args.quick else 5)
    device = torch.device(args.device)
    torch.manual_seed(0)

    graphs, src = load_zinc_train(2000 if args.quick else None)
    node_vocab, edge_vocab = 28, 4
    nb = max(steps * rounds, args.warmup, 8)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    spec = {
        "pyg": ("pyg GPSConv(GINEConv,multihead)", None, None),
        "pyg-performer": ("pyg GPSConv(GINEConv,performer16)", None, None),
        "full": ("gtpe GPSLayer gine+full", "gine", "full"),
        "full-fused": ("gtpe GPSLayer gine+full (fused)", "gine", "full"),
        "full-sdpa": ("gtpe GPSLayer gine+full (sdpa)", "gine", "full"),
        "linear": ("gtpe GPSLayer gine+linear", "gine", "linear"),
        "exphormer": ("gtpe GPSLayer gine+exphormer", "gine", "exphormer"),
        "grit": ("gtpe GPSLayer grit (no local)", None, "grit"),
        "exphormer-orig": ("official Exphormer (port) gine+exph", "gine", "exphormer"),
        "grit-orig": ("official GRIT (port)", None, "grit"),
        "graphormer": ("gtpe graphormer (token, spd 8)", None, None),
        "graphormer-padded": ("padded graphormer (1 sdpa call)", None, None),
        "tokengt": ("gtpe tokengt (token, lap 8)", None, None),
        "tokengt-padded": ("padded tokengt (1 sdpa call)", None, None),
    }
    rows: dict[str, dict] = {}
    keys: dict[str, str] = {}  # row key -> row name, for the 'vs pad' pairs
    base_batches = make_batches(graphs, nb, [])
    built: dict[str, tuple] = {}  # transformer kind -> (model on device, batches on device)

    def build_transformer(kind: str) -> tuple:
        if kind not in built:  # built once for its row and its padded twin (same weights)
            model, cfg = transformer_model(kind, node_vocab, edge_vocab)
            batches = make_batches(graphs, nb, cfg.transforms())
            built[kind] = (model.to(device), [b.to(device) for b in batches])
        return built[kind]

    for key in wanted:
        if key not in spec:
            raise SystemExit(f"train_bench: unknown row {key!r}; choose from {sorted(spec)}")
        name, local, attn = spec[key]
        try:
            if key in TRANSFORMERS:
                model, batches = build_transformer(key)
            elif key in PADDED:
                base, batches = build_transformer(PADDED[key])
                model = padded_twin(base, batches[0])
            elif key in ORIGINAL:  # the ported official layers, gtpe's encoders and head
                base, cfg = gtpe_model(local, attn, node_vocab, edge_vocab)
                model = orig_model(key, base)
                batches = make_batches(graphs, nb, cfg.transforms())
            elif key == "pyg":
                model = PyGGPS(node_vocab, edge_vocab)
                batches = base_batches
            elif key == "pyg-performer":  # the peer of the linear row, heads as wide as gtpe's
                model = PyGGPS(node_vocab, edge_vocab, "performer",
                               {"head_channels": CHANNELS // HEADS})
                batches = base_batches
            else:
                model, cfg = gtpe_model(local, attn, node_vocab, edge_vocab)
                if key in ("full-fused", "full-sdpa"):  # another FullAttention path
                    for layer in model.layers:
                        layer.attn.strategy = key.split("-")[1]
                tfs = cfg.transforms()
                batches = base_batches if not tfs else make_batches(graphs, nb, tfs)
            model = model.to(device)
            batches = [b.to(device) for b in batches]
            params = sum(p.numel() for p in model.parameters())
            rows[name] = {"step": make_step(model), "batches": batches, "params": params}
            keys[key] = name
        except Exception as exc:  # noqa: BLE001 - a broken row must not stop the others
            print(f"# row {name!r} skipped: {type(exc).__name__}: {exc}")

    print(
        f"# data: {src}; {len(graphs)} graphs; batch {BATCH}, {LAYERS} layers, {CHANNELS} "
        f"channels, {HEADS} heads; device {device}; torch threads {torch.get_num_threads()}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    print(
        f"# {rounds} interleaved rounds x {steps} steps per row after {args.warmup} warm-up "
        f"steps; step = forward + backward + Adam"
    )
    print(
        "# wall = median wall-clock ms/step (graphs/s and 'vs PyG' from it); cpu = median "
        "process CPU ms/step (less sensitive to other load)"
    )
    print(
        "# vs padded = median wall ms of the padded-SDPA twin / this row's (gtpe rows with a "
        "padded twin; the padded row itself: 1.00x)"
    )
    print(
        "# vs orig = median wall ms of the ported official layers (exphormer-orig, grit-orig; "
        "benchmarks/*_original.py) / the gtpe row's"
    )
    conditions = ["quiet"] + (["busy"] if args.busy else [])
    for condition in conditions:
        competitor = CompetingProcess() if condition == "busy" else None
        try:
            time_rows(rows, steps, rounds, args.warmup)
        finally:
            if competitor is not None:
                competitor.stop()
        if args.busy:
            what = ("no other process started" if condition == "quiet" else
                    "one competing CPU-bound process (a Python busy loop) running throughout")
            print(f"\n## {condition}: {what}")
        print_table(rows, keys)

    if not args.no_scale:
        n = args.scale_nodes or (10_000 if args.quick else 100_000)
        m = args.scale_edges or (100_000 if args.quick else 1_000_000)
        if device.type == "cuda":
            res = scale_row(n, m, device)
        else:  # child process so that peak RSS is this row's alone
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(
                target=_scale_child, args=(q, n, m, str(device), torch.get_num_threads())
            )
            p.start()
            res = q.get()
            p.join()
        if "error" in res:
            print(f"# scale row failed: {res['error']}")
        else:
            print(
                f"\n{'scale: GPSLayer(gine, exphormer), 1 layer':36s} {n:,} nodes, {m:,} edges "
                f"(+{res['expander_edges']:,} expander): forward+backward "
                f"{res['seconds']:.2f} s, peak memory {res['peak_gib']:.2f} GiB"
            )
            print(
                f"{'scale: GPSLayer(gine, full)':36s} cannot run: the {n:,}^2 x {HEADS} heads "
                f"score matrix alone needs {n * n * HEADS * 4 / 1e9:,.0f} GB per layer"
            )


if __name__ == "__main__":
    main()
