"""Cost of the magnetic Laplacian PE against the symmetric LapPE on directed graphs.

    python benchmarks/maglap_bench.py [--rounds 3] [--k 16] [--limit N] [--threads T]

Data: the training split of the generated ``sorting-networks`` dataset (Geisler et al., 2023;
``gtpe.datasets.load_dataset('sorting-networks')['train']``, built on first use).

Rows, timed interleaved in ``--rounds`` rounds (so that load from other processes hits all rows
alike), medians with [min, max] over the rounds, ratios against the LapPE row:

* precompute over the whole training split with ``gtpe.precompute`` (no cache):
  ``AddLapPE(k)`` (symmetrised graph), ``AddMagLapPE(k, q=0.25)`` (one complex Hermitian
  eigenproblem per graph) and ``AddMagLapPE(k, q=[0.1, 0.25, 0.5])`` (multi-q: three);
* one training epoch (forward + backward + Adam over every training graph, batch 32, pre-collated
  batches, PE precompute excluded) of the same GPS model (GINE on the symmetrised graph + full
  attention, 48 channels, 3 layers) with the LapPE encoder, the MagLapPE encoder (``phase:
  canonical``) and the phase-invariant MagLapPE encoder (``phase: invariant``, multi-q).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
if os.path.isdir(os.path.join(_REPO, '..', 'shared', 'data')):  # offline machines: staged mirror
    os.environ.setdefault('GTPE_MIRROR', os.path.abspath(os.path.join(_REPO, '..', 'shared', 'data')))

from torch_geometric.loader import DataLoader  # noqa: E402

import gtpe  # noqa: E402
from gtpe.datasets import dataset_info, load_dataset  # noqa: E402
from gtpe.models import GPSModel, GPSModelConfig  # noqa: E402
from gtpe.transforms import AddLapPE, AddMagLapPE  # noqa: E402

MULTI_Q = [0.1, 0.25, 0.5]  # as configs/bench/directed_*.yaml


def pe_rows(k: int) -> dict[str, dict]:
    return {
        f'LapPE(k={k})': {'transform': AddLapPE(k=k), 'pe': {'lap': {'k': k, 'dim': 16}}},
        f'MagLapPE(k={k}, q=0.25)': {'transform': AddMagLapPE(k=k, q=0.25),
                                     'pe': {'maglap': {'k': k, 'q': 0.25, 'dim': 16}}},
        f'MagLapPE(k={k}, q={MULTI_Q}), invariant': {
            'transform': AddMagLapPE(k=k, q=MULTI_Q),
            'pe': {'maglap': {'k': k, 'q': MULTI_Q, 'dim': 16, 'phase': 'invariant'}}},
    }


def time_precompute(graphs: list, transform) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = gtpe.precompute(graphs, [transform], progress=False)
    return time.perf_counter() - t0, out


def make_epoch(graphs: list, pe: dict, batch_size: int = 32):
    info = dataset_info('sorting-networks')
    cfg = GPSModelConfig.from_dict({'channels': 48, 'num_layers': 3, 'local': 'gine',
                                    'attn': 'full', 'heads': 4, 'pe': pe})
    torch.manual_seed(0)
    model = GPSModel(cfg, out_dim=info.num_tasks, node_input=info.node_input,
                     node_in_dim=info.node_in_dim, edge_input=info.edge_input,
                     edge_in_dim=info.edge_in_dim, graph_level=True, directed=info.directed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(DataLoader(graphs, batch_size=batch_size, shuffle=False))

    def epoch() -> float:
        model.train()
        t0 = time.perf_counter()
        for b in batches:
            out = model(b)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                out.view(-1), b.y.view(-1).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    return epoch


def fmt(values: list[float], ref: list[float] | None) -> str:
    med = statistics.median(values)
    s = f'{med:8.2f} s  [{min(values):.2f}, {max(values):.2f}]'
    if ref is not None:
        s += f'   {med / statistics.median(ref):5.2f}x'
    return s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--k', type=int, default=16)
    p.add_argument('--limit', type=int, default=None,
                   help='use the first N training graphs only (a smoke test; default: all)')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    graphs = list(load_dataset('sorting-networks', progress=True)['train'])[:args.limit]
    n_nodes = sum(g.num_nodes for g in graphs)
    print(f'sorting-networks train: {len(graphs)} graphs, {n_nodes} nodes; torch '
          f'{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, '
          f'load {os.getloadavg()[0]:.2f}; {args.rounds} rounds interleaved')
    rows = pe_rows(args.k)
    pre: dict[str, list[float]] = {name: [] for name in rows}
    epochs: dict[str, list[float]] = {name: [] for name in rows}
    data: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, row in rows.items():
            seconds, out = time_precompute(graphs, row['transform'])
            pre[name].append(seconds)
            data[name] = out
    runners = {name: make_epoch(data[name], row['pe'])
               for name, row in rows.items()}
    for fn in runners.values():  # warm-up (kernel compilation, allocator)
        fn()
    for _ in range(args.rounds):
        for name, fn in runners.items():
            epochs[name].append(fn())
    ref = next(iter(rows))
    width = max(len(n) for n in rows) + 2
    print(f'\n{"precompute, whole train split":<{width}}  median s [min, max]   vs LapPE')
    for name in rows:
        print(f'{name:<{width}}{fmt(pre[name], None if name == ref else pre[ref])}')
    print(f'\n{"training epoch (GPS, 48 ch, 3 layers)":<{width}}  median s [min, max]   vs LapPE')
    for name in rows:
        print(f'{name:<{width}}{fmt(epochs[name], None if name == ref else epochs[ref])}')


if __name__ == '__main__':
    main()
