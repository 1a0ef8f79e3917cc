"""Scatter backends of :mod:`gtpe.nn.ops`: torch native vs torch-scatter, in one run.

    python benchmarks/scatter_bench.py [--repeat 7] [--threads 1]

``gtpe.nn.ops`` picks its backend once, at import, from ``GTPE_SCATTER_BACKEND`` (default
``torch``), so every backend runs in its own subprocess. Each row times forward + backward of one
op on two sizes: a ZINC mini-batch (batch 32: ~740 nodes, ~1,600 edges, 64 channels / 4 heads x 16)
and a large graph (100,000 nodes, 1,000,000 edges). Times are medians of ``--repeat`` runs after a
warm-up; the ratio is torch-scatter time / torch time (> 1: torch native is faster). A backend
that is not installed is reported as such (``pip install torch-scatter --no-build-isolation``
builds it from source, about 6 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = {'zinc batch': (740, 1_600), '100k / 1M': (100_000, 1_000_000)}
OPS = ('scatter_sum', 'scatter_max', 'scatter_softmax', 'edge_aggregate')


def worker(repeat: int, threads: int) -> dict:
    import torch

    from gtpe.nn import ops
    torch.set_num_threads(threads)
    heads, dim = 4, 16
    out: dict = {'backend': ops.backend()}
    for size, (n, e) in SIZES.items():
        g = torch.Generator().manual_seed(0)
        src = torch.randint(0, n, (e,), generator=g)
        dst = torch.randint(0, n, (e,), generator=g)
        feats = torch.randn(e, heads * dim, generator=g).requires_grad_()
        scores = torch.randn(e, heads, generator=g).requires_grad_()
        values = torch.randn(n, heads, dim, generator=g).requires_grad_()
        calls = {
            'scatter_sum': lambda: ops.scatter_sum(feats, dst, n),
            'scatter_max': lambda: ops.scatter_max(feats, dst, n),
            'scatter_softmax': lambda: ops.scatter_softmax(scores, dst, n),
            'edge_aggregate': lambda: ops.edge_aggregate(values, scores.softmax(-1), src, dst, n),
        }
        for name, fn in calls.items():
            times = []
            for i in range(repeat + 1):
                t = time.perf_counter()
                fn().sum().backward()
                if i:  # the first run is a warm-up
                    times.append(time.perf_counter() - t)
            out[f'{size}|{name}'] = statistics.median(times)
    return out


def run(backend: str, args) -> dict:
    env = dict(os.environ, GTPE_SCATTER_BACKEND=backend,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, __file__, '--worker', '--repeat', str(args.repeat),
                        '--threads', str(args.threads)], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        lines = (p.stderr or '').strip().splitlines()
        return {'error': lines[-1] if lines else f'rc={p.returncode}'}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeat', type=int, default=7)
    ap.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeat, args.threads)))
        return
    native, ext = run('torch', args), run('torch_scatter', args)
    print(f'scatter_bench (forward + backward, medians of {args.repeat}, torch threads '
          f'{args.threads})')
    if 'error' in native:
        sys.exit(f'torch backend failed: {native["error"]}')
    if 'error' in ext:
        print(f'torch-scatter: not measured ({ext["error"]})')
    print(f"| {'size':10} | {'op':15} | {'torch ms':>9} | {'torch-scatter ms':>16} | {'ratio':>6} |")
    print(f"|{'-' * 12}|{'-' * 17}|{'-' * 11}|{'-' * 18}|{'-' * 8}|")
    for size in SIZES:
        for op in OPS:
            key = f'{size}|{op}'
            t = native[key] * 1e3
            s = ext.get(key)
            cell = f'{s * 1e3:16.3f}' if s is not None else f"{'-':>16}"
            ratio = f'{s * 1e3 / t:6.2f}' if s is not None else f"{'-':>6}"
            print(f'| {size:10} | {op:15} | {t:9.3f} | {cell} | {ratio} |')


if __name__ == '__main__':
    main()
