"""Benchmark of gtpe's PE transforms against PyTorch Geometric's.

Prints one table.  Every measurement runs in its own subprocess, so the reported peak memory
(``ru_maxrss`` of that process, which includes the ~0.3-0.5 GiB of Python + torch) is honest;
times are medians of ``--repeat`` runs inside that process.

Rows
  * ZINC train (10,000 graphs): LapPE(k=8) + RWSE(20), gtpe batched (``gtpe.precompute``) vs
    PyG per graph (``AddLaplacianEigenvectorPE(k=8, is_undirected=True)`` +
    ``AddRandomWalkPE(20)``), PyG once with torch's default threads and once with one
    thread (on busy cores its tiny per-graph kernels are several times faster so); with
    ``--quick`` PyG runs on the first 1,000 graphs and the time is scaled to 10,000
    (marked ``est.``).
  * ZINC train: LapPE + RWSE + RRWP(21), gtpe total.
  * large random graph (100,000 nodes, 1,000,000 random undirected edges, i.e. ~2,000,000
    directed entries): RWSE(20) gtpe (``method='auto'`` -> Monte-Carlo); PyG's
    ``AddRandomWalkPE`` is not run: its sparse ``P^t`` fills in to a dense ``N x N`` matrix
    (8-byte column index + 4-byte value per entry), shown as ``OOM (est. X GiB)``.
  * large random graph: LapPE(k=8) gtpe vs PyG (subprocess time limit ``--timeout``), with
    the largest eigen-residual ``||L v - lam v||`` of the returned unit vectors (PyG solves in
    float32, gtpe in float64 and stores float32).
  * 100,000-node path: LapPE(k=8) eigenvalues vs the analytic ``1 - cos(pi k / (n - 1))``, and
    scipy's plain ``eigsh(L, k=9, which='SA')`` (what PyG calls) on the same Laplacian, which
    stalls there: its run is cut at ``--path-eigsh-timeout`` seconds.
  * ``--mc-error``: the Monte-Carlo RWSE error against exact on a 5,000-node random graph.

Usage:  python benchmarks/pe_bench.py [--quick] [--repeat 3] [--timeout 600] [--mc-error]
ZINC comes from ``gtpe.datasets.load_dataset('zinc')['train']`` (mirror ``GTPE_MIRROR``,
default ``../shared/data``), falling back to reading ``zinc_subset/zinc_subset.json.gz``.
The machine's load (other processes) is printed with the table: ``seconds`` are wall clock,
``CPU s`` the process CPU time (``time.process_time``, less sensitive to other jobs).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LARGE_N, LARGE_M = 100_000, 1_000_000
if os.path.isdir(os.path.join(ROOT, '..', 'shared', 'data')):  # offline machines: staged mirror
    os.environ.setdefault('GTPE_MIRROR', os.path.abspath(os.path.join(ROOT, '..', 'shared', 'data')))


# ----------------------------------------------------------------------------- data
def mirror() -> str:
    return os.environ.get('GTPE_MIRROR', os.path.join(ROOT, '..', 'shared', 'data'))


def load_zinc_train():
    try:
        from gtpe.datasets import load_dataset
        ds = load_dataset('zinc', root=tempfile.mkdtemp(prefix='pe_bench_'))['train']
        return [ds[i] for i in range(len(ds))]
    except Exception:  # loader missing/broken: read the mirror file (format: SOURCE.md)
        import torch
        from torch_geometric.data import Data
        path = os.path.join(mirror(), 'zinc_subset', 'zinc_subset.json.gz')
        with gzip.open(path, 'rt') as f:
            d = json.load(f)['train']
        x = torch.tensor(d['x'])
        ei = torch.tensor(d['edge_index'])
        ea = torch.tensor(d['edge_attr'])
        y = torch.tensor(d['y'], dtype=torch.float32)
        xp, ep = d['x_ptr'], d['edge_ptr']
        return [Data(x=x[xp[g]:xp[g + 1]].view(-1, 1), edge_index=ei[:, ep[g]:ep[g + 1]],
                     edge_attr=ea[ep[g]:ep[g + 1]], y=y[g:g + 1])
                for g in range(d['num_graphs'])]


def large_graph(n=LARGE_N, m=LARGE_M, seed=0):
    import torch
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, m), generator=g)
    ei = to_undirected(ei[:, ei[0] != ei[1]], num_nodes=n)
    return Data(edge_index=ei, num_nodes=n)


def path_graph(n):
    import torch
    from torch_geometric.data import Data
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    return Data(edge_index=torch.cat([ei, ei.flip(0)], 1), num_nodes=n)


def sym_laplacian(data):
    """scipy CSR ``L = I - D^-1/2 A D^-1/2`` of an unweighted graph (float64, PyG's 'sym')."""
    import numpy as np
    import scipy.sparse as sp
    n = data.num_nodes
    r, c = data.edge_index.numpy()
    adj = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n, n))
    dis = sp.diags(1 / np.sqrt(np.maximum(np.asarray(adj.sum(1)).ravel(), 1)))
    return (sp.identity(n) - dis @ adj @ dis).tocsr()


def lap_residual(data, vecs) -> float:
    """max_j ||L v_j - (v_j^T L v_j) v_j|| of unit columns ``vecs`` (L: :func:`sym_laplacian`)."""
    import numpy as np
    v = vecs.double().numpy()
    v = v / np.linalg.norm(v, axis=0)
    lv = sym_laplacian(data) @ v
    lam = (v * lv).sum(0)
    return float(np.linalg.norm(lv - lam * v, axis=0).max())


# ----------------------------------------------------------------------------- workers
_CPU: list[float] = []


def _timed(fn, repeat):
    times, cpus, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    _CPU.append(statistics.median(cpus))
    return statistics.median(times), out


def worker(name: str, repeat: int, quick: bool) -> dict:
    import torch

    from gtpe.transforms import AddLapPE, AddRRWP, AddRWSE, precompute
    res: dict = {}
    if name.startswith('zinc'):
        data = load_zinc_train()
        res['graphs'] = len(data)
        if name == 'zinc_gtpe':
            sec, _ = _timed(lambda: precompute(data, [AddLapPE(8), AddRWSE(20)],
                                               progress=False), repeat)
        elif name == 'zinc_gtpe_rrwp':
            sec, _ = _timed(lambda: precompute(data, [AddLapPE(8), AddRWSE(20), AddRRWP(21)],
                                               progress=False), repeat)
        elif name in ('zinc_pyg', 'zinc_pyg1'):
            if name == 'zinc_pyg1':
                torch.set_num_threads(1)
            from torch_geometric.transforms import (
                AddLaplacianEigenvectorPE,
                AddRandomWalkPE,
                Compose,
            )
            sub = data[:1000] if quick else data
            t = Compose([AddLaplacianEigenvectorPE(k=8, is_undirected=True),
                         AddRandomWalkPE(20)])
            sec, _ = _timed(lambda: [t(d.clone()) for d in sub], 1)
            if quick:
                res['estimated'] = True
                sec *= len(data) / len(sub)
                _CPU[-1] *= len(data) / len(sub)
        res['seconds'] = sec
    elif name == 'large_rwse':
        d = large_graph()
        sec, out = _timed(lambda: AddRWSE(20)(d.clone()), repeat)
        res.update(seconds=sec, graphs=1, shape=list(out.rwse.shape))
    elif name == 'large_lap_gtpe':
        d = large_graph()
        sec, out = _timed(lambda: AddLapPE(8)(d.clone()), repeat)
        res.update(seconds=sec, graphs=1, residual=lap_residual(d, out.lap_pe))
    elif name == 'large_lap_pyg':
        from torch_geometric.transforms import AddLaplacianEigenvectorPE
        d = large_graph()
        sec, out = _timed(lambda: AddLaplacianEigenvectorPE(k=8, is_undirected=True)(d.clone()),
                          repeat)
        res.update(seconds=sec, graphs=1, residual=lap_residual(d, out.laplacian_eigenvector_pe))
    elif name == 'path_lap':
        n = 100_000
        d = path_graph(n)
        sec, out = _timed(lambda: AddLapPE(8)(d.clone()), 1)
        ana = torch.tensor([1 - math.cos(math.pi * k / (n - 1)) for k in range(1, 9)],
                           dtype=torch.float64)
        err = (out.lap_eigval[0].double() - ana).abs().max().item()
        res.update(seconds=sec, graphs=1, max_eig_err=err)
    elif name == 'path_lap_scipy':
        from scipy.sparse.linalg import eigsh
        lap = sym_laplacian(path_graph(100_000))
        sec, _ = _timed(lambda: eigsh(lap, k=9, which='SA'), 1)
        res.update(seconds=sec, graphs=1)
    elif name == 'mc_error':
        from torch_geometric.utils import to_undirected  # noqa: F401
        d = large_graph(5_000, 50_000, seed=0)
        t0 = time.perf_counter()
        ex = AddRWSE(20, method='exact')(d.clone()).rwse.double()
        t1 = time.perf_counter()
        mc = AddRWSE(20, method='mc')(d.clone()).rwse.double()
        t2 = time.perf_counter()
        e = (mc - ex).abs()
        res.update(seconds=t2 - t1, exact_seconds=t1 - t0, mean_err=e.mean(0).tolist(),
                   max_err=e.max(0).values.tolist(), mean_val=ex.mean(0).tolist())
    else:
        raise SystemExit(f'unknown worker {name}')
    import resource
    if _CPU:
        res['cpu_seconds'] = _CPU[-1]
    res['peak_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return res


def run(name: str, args, timeout: float | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', name,
           '--repeat', str(args.repeat)] + (['--quick'] if args.quick else [])
    timeout = timeout or args.timeout
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
                                    os.environ.get('PYTHONPATH', '')))
    except subprocess.TimeoutExpired:
        return {'timeout': timeout}
    if p.returncode != 0:
        err = (p.stderr or '').strip().splitlines()
        oom = p.returncode in (-9, 137) or any('MemoryError' in ln or 'out of memory' in ln
                                             for ln in err)
        return {'error': 'OOM' if oom else (err[-1] if err else f'rc={p.returncode}')}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- table
def fmt_time(r):
    if 'timeout' in r:
        return f"timeout (>{r['timeout']} s)"
    if 'error' in r:
        return r['error']
    s = f"{r['seconds']:.2f}"
    return s + (' (est.)' if r.get('estimated') else '')


def fmt_cpu(r):
    return f"{r['cpu_seconds']:.2f}" if 'cpu_seconds' in r else '-'


def fmt_rate(r):
    if 'seconds' not in r:
        return '-'
    return f"{r.get('graphs', 1) / r['seconds']:.0f}" if r.get('graphs', 1) > 1 else '-'


def fmt_mem(r):
    return f"{r['peak_gib']:.2f}" if 'peak_gib' in r else '-'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='PyG ZINC on 1,000 graphs (scaled)')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--timeout', type=int, default=600, help='seconds per measurement')
    ap.add_argument('--mc-error', action='store_true', help='also report the MC RWSE error')
    ap.add_argument('--skip-large-pyg', action='store_true')
    ap.add_argument('--path-eigsh-timeout', type=int, default=120,
                    help='seconds given to scipy\'s plain eigsh on the 100k path')
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.quick)))
        return
    import torch
    rows = []
    z_g, z_p, z_r = run('zinc_gtpe', args), run('zinc_pyg', args), run('zinc_gtpe_rrwp', args)
    z_p1 = run('zinc_pyg1', args)

    def speedup(ref):
        return (f"{ref['seconds'] / z_g['seconds']:.1f}x faster" if 'seconds' in z_g and
                'seconds' in ref else '-')
    rows.append(('ZINC train LapPE(8)+RWSE(20)', 'gtpe batched', z_g, ''))
    rows.append(('ZINC train LapPE(8)+RWSE(20)', 'PyG per graph', z_p, speedup(z_p)))
    rows.append(('ZINC train LapPE(8)+RWSE(20)', 'PyG, 1 thread', z_p1, speedup(z_p1)))
    rows.append(('ZINC train LapPE+RWSE+RRWP(21)', 'gtpe batched', z_r, ''))
    lr = run('large_rwse', args)
    rows.append(('100k/1M random: RWSE(20)', 'gtpe auto (MC)', lr, ''))
    est = LARGE_N ** 2 * 12 / 2 ** 30
    rows.append(('100k/1M random: RWSE(20)', 'PyG', {'error': f'OOM (est. {est:.0f} GiB)'},
                 'not run'))
    lg = run('large_lap_gtpe', args)
    lp = {'error': 'skipped'} if args.skip_large_pyg else run('large_lap_pyg', args)
    ratio = (f"{lp['seconds'] / lg['seconds']:.1f}x" if 'seconds' in lg and 'seconds' in lp
             else '-')

    def residual(r):
        return f"resid. {r['residual']:.0e}" if 'residual' in r else ''
    rows.append(('100k/1M random: LapPE(8)', 'gtpe', lg, f'{ratio}, {residual(lg)}'))
    rows.append(('100k/1M random: LapPE(8)', 'PyG', lp, residual(lp)))
    pl = run('path_lap', args)
    note = f"max |eig err| = {pl['max_eig_err']:.1e}" if 'max_eig_err' in pl else ''
    rows.append(('100k path: LapPE(8)', 'gtpe', pl, note))
    ps = run('path_lap_scipy', args, timeout=args.path_eigsh_timeout)
    rows.append(('100k path: LapPE(8)', 'scipy eigsh', ps, ''))

    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    print(f"\npe_bench  (torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, load avg {load[0]:.1f}, repeat "
          f"{args.repeat}{', quick' if args.quick else ''})")
    head = f"| {'case':32} | {'impl':16} | {'seconds':>16} | {'CPU s':>8} | " \
           f"{'graphs/s':>8} | {'peak GiB':>8} | {'ratio / note':>22} |"
    print(head)
    print('|' + '|'.join('-' * (len(c)) for c in head.split('|')[1:-1]) + '|')
    for case, impl, r, note in rows:
        print(f"| {case:32} | {impl:16} | {fmt_time(r):>16} | {fmt_cpu(r):>8} | "
              f"{fmt_rate(r):>8} | "
              f"{fmt_mem(r):>8} | {note:>22} |")
    if args.mc_error:
        r = run('mc_error', args)
        if 'mean_err' in r:
            print(f"\nMC RWSE (num_walks=32) vs exact, 5,000-node random graph (mean degree "
                  f"20): mc {r['seconds']:.1f} s, exact {r['exact_seconds']:.1f} s")
            print('t          ' + ' '.join(f'{t:>7d}' for t in range(1, 21)))
            print('mean value ' + ' '.join(f'{v:7.1e}' for v in r['mean_val']))
            print('mean |err| ' + ' '.join(f'{v:7.1e}' for v in r['mean_err']))
            print('max |err|  ' + ' '.join(f'{v:7.1e}' for v in r['max_err']))
        else:
            print('MC error run failed:', r)


if __name__ == '__main__':
    main()
