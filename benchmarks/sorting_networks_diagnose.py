"""Where the models of a sorting-networks bench succeed and fail: in distribution or not, by kind.

    python benchmarks/sorting_networks_diagnose.py BENCH_DIR [--count 300] [--seed 12345]

For every finished run of a ``gtpe bench`` folder made from
``configs/bench/directed_sorting_networks.yaml``, the best checkpoint (``gtpe.load_run``) is
scored on

* ``in-dist``: fresh networks with the training wire counts (7-11; ``--count`` networks, each
  with its hard negative: balanced, chance 50 %), generated with another seed than the
  dataset's, so none of them was trained on;
* the test split (13-16 wires) split by kind: ``sorting`` (the random sorting networks),
  ``hard neg.`` (the same minus the last comparator), ``reversed`` (the reversed networks, none
  of which sorts), and ``balanced`` = the mean of the accuracy on sorting and non-sorting
  networks (chance 50 %, whatever the class balance).

It prints one row per cell, mean ± std over the seeds (accuracy in %). The question it answers:
does a cell fail to learn the task, or learn it on the training sizes and fail to carry it to
larger networks?
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from torch_geometric.loader import DataLoader  # noqa: E402

import gtpe  # noqa: E402
from gtpe.datasets import load_dataset  # noqa: E402
from gtpe.datasets.sorting_networks import generate_sorting_networks  # noqa: E402


@torch.no_grad()
def predict(model, graphs: list) -> torch.Tensor:
    out = [model(b).view(-1) > 0 for b in DataLoader(graphs, batch_size=64)]
    return torch.cat(out)


def accuracy(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        pred, y = pred[mask], y[mask]
    return float((pred == y).float().mean()) * 100 if y.numel() else float('nan')


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('bench_dir', type=Path)
    p.add_argument('--count', type=int, default=300, help='in-distribution networks (x2 graphs)')
    p.add_argument('--seed', type=int, default=12345)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    fresh = generate_sorting_networks((7, 8, 9, 10, 11), args.count, args.seed)
    test = list(load_dataset('sorting-networks', progress=False)['test'])
    kind = torch.tensor([i % 3 for i in range(len(test))])   # positive, hard negative, reversed
    y_test = torch.tensor([bool(g.y.item()) for g in test])
    y_fresh = torch.tensor([bool(g.y.item()) for g in fresh])

    runs = sorted(p.parent for p in args.bench_dir.glob('runs/*/seed-*/results.json'))
    encoded: dict[str, tuple[list, list]] = {}
    rows: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        model, config, _ = gtpe.load_run(run)
        key = json.dumps([repr(t) for t in config.model.transforms()])
        if key not in encoded:
            ts = config.model.transforms()
            encoded[key] = (gtpe.precompute(fresh, ts, progress=False) if ts else fresh,
                            gtpe.precompute(test, ts, progress=False) if ts else test)
        f, t = encoded[key]
        pf, pt = predict(model, f), predict(model, t)
        sorting, nonsorting = y_test, ~y_test
        r = {'in-dist': accuracy(pf, y_fresh),
             'test': accuracy(pt, y_test),
             'sorting': accuracy(pt, y_test, kind == 0),
             'hard neg.': accuracy(pt, y_test, kind == 1),
             'reversed': accuracy(pt, y_test, kind == 2),
             'balanced': (accuracy(pt, y_test, sorting) + accuracy(pt, y_test, nonsorting)) / 2}
        cell = run.parent.name
        for k, v in r.items():
            rows.setdefault(cell, {}).setdefault(k, []).append(v)
        print(f'{cell}/{run.name}: ' + ', '.join(f'{k} {v:.1f}' for k, v in r.items()),
              file=sys.stderr, flush=True)

    cols = ['in-dist', 'test', 'sorting', 'hard neg.', 'reversed', 'balanced']
    width = max(len(c) for c in rows) + 2
    print(f'accuracy in % (mean ± std over seeds); in-dist: {2 * args.count} fresh graphs with '
          f'7-11 wires (chance 50); test: 13-16 wires (chance 66.7, balanced chance 50)')
    print(f'{"cell":<{width}}' + ''.join(f'{c:>14}' for c in cols) + '   n')
    for cell, r in rows.items():
        cells = []
        for c in cols:
            v = r[c]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f'{statistics.mean(v):7.1f} ± {sd:4.1f}')
        print(f'{cell:<{width}}' + ''.join(f'{c:>14}' for c in cells) + f'   {len(r["test"])}')


if __name__ == '__main__':
    main()
