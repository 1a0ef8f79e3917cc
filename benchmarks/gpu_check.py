"""GPU check: every CUDA test, then PE precompute and training speed against PyG on the GPU, one table.

    python benchmarks/gpu_check.py [--budget-s 480] [--dry-run]        (or: make gpu-check)

Without CUDA (``torch.cuda.is_available()`` false) it prints one line, ``gpu_check: no CUDA
device (torch X, CPU-only build); nothing to check`` (or ``built with CUDA Y, no device
visible``), and exits 0.  On a CUDA machine it runs three phases, all within ``--budget-s``
seconds of wall clock (default 480, i.e. 8 minutes, counted from the script's start):

1. **CUDA tests.**  Collects the suite (``pytest --collect-only``) and runs with pytest every
   test that needs CUDA: each node id naming ``cuda`` (any case: the tests a CPU machine skips
   with ``needs CUDA``, the ``[cuda]`` cases of tests parametrised over devices) and every test
   of a module with a device switch, a module-level ``DEVICE = ...cuda...`` line (those modules
   run all their tests on the GPU when there is one).  Row: passed / failed / skipped.  So a
   test that runs on the CPU must not name cuda: tests/test_gpu_check.py checks, on a CPU
   machine, that the ids naming cuda are exactly the tests pytest skips with 'needs CUDA'.
2. **PE precompute.**  ZINC train (10,000 graphs), LapPE(k=8) + RWSE(20): gtpe batched
   (``gtpe.precompute`` on the graphs already moved to the GPU) vs PyG per graph
   (``AddLaplacianEigenvectorPE(k=8, is_undirected=True)`` + ``AddRandomWalkPE(20)`` on the same
   GPU graphs; PyG's LapPE solves with scipy on the CPU).  gtpe: median of up to 3 runs after a
   warm-up; PyG runs graph by graph (at least one) until its time cap (60 s) and is then scaled
   to all graphs (``est.``).  If ZINC cannot be loaded, random ZINC-sized graphs stand in (the
   row says so).
3. **Training.**  ``benchmarks/train_bench.py``'s models (ZINC batch 32, 4 layers, 64 channels,
   4 heads, same embeddings and head): PyG's ``GPSConv(GINEConv, multihead)`` vs gtpe
   ``GPSModel`` gine+full (the same computation), gine+linear, gine+exphormer and grit; one step
   is forward + backward + Adam followed by ``torch.cuda.synchronize()``; the models are timed
   interleaved, 3 rounds x 20 steps after 5 warm-up steps; ms/step is the median.

The speed-up column is PyG's time / gtpe's time (> 1: gtpe is faster).

**Budget.**  Phase 1 may run until half the budget is left, phase 2 until a quarter is left,
phase 3 until it is spent; each phase runs in a child process that is killed at its limit (its
row then says ``timeout (>N s)``; a phase with no time left says ``budget spent``).

**Exit status.**  0 when every selected CUDA test passed (skips allowed) and both benchmarks
produced all their numbers; 1 otherwise (a failed or erroring test, no CUDA test found, a
collection error, a phase that timed out, crashed or had no time left).  The pytest output tail
of a failing run is printed above the table.

``--dry-run`` needs no GPU: it skips phase 1 and runs phases 2-3 on the CPU with tiny sizes (64
graphs, 2 steps per model) to check the script and its table end to end; its numbers mean
nothing.  The caption line above the table names the GPU, torch, CUDA, PyG, gtpe and the commit.
"""
from __future__ import annotations

import time

_T0 = time.monotonic()  # the budget counts from here, imports included

import argparse
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS_LEFT, PE_LEFT = 0.5, 0.25  # fraction of the budget left after phase 1 / phase 2
PYG_CAP_S = 60.0
TRAIN_ROWS = {  # key: (table label, local, attn), as train_bench's rows
    'full': ('GPSLayer gine+full', 'gine', 'full'),
    'linear': ('GPSLayer gine+linear', 'gine', 'linear'),
    'exphormer': ('GPSLayer gine+exphormer', 'gine', 'exphormer'),
    'grit': ('GPSLayer grit (no local)', None, 'grit'),
}
NODE_VOCAB, EDGE_VOCAB = 28, 4  # ZINC atom and bond types, as train_bench
HEADER = ['check', 'gtpe', 'PyG', 'speed-up vs PyG', 'note']


# ----------------------------------------------------------------------------- helpers
def cuda_available() -> bool:
    import warnings

    import torch
    with warnings.catch_warnings():  # a CUDA build without a driver warns; the answer is enough
        warnings.simplefilter('ignore')
        return torch.cuda.is_available()


def no_cuda_line() -> str:
    import torch
    build = ('CPU-only build' if torch.version.cuda is None
             else f'built with CUDA {torch.version.cuda}, no device visible')
    return f'gpu_check: no CUDA device (torch {torch.__version__}, {build}); nothing to check'


def describe_device(device: str) -> str:
    """GPU (or CPU) name and memory, torch, CUDA, cuDNN, PyG and gtpe versions, git commit."""
    import torch
    import torch_geometric

    import gtpe
    if device == 'cuda':
        prop = torch.cuda.get_device_properties(0)
        dev = (f'{prop.name} ({prop.total_memory / 2 ** 30:.0f} GiB, {torch.cuda.device_count()} '
               f'visible), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')
    else:
        dev = f'CPU ({os.cpu_count()} cores)'
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip() or '?'
    except (OSError, subprocess.SubprocessError):
        commit = '?'
    return (f'{dev}; torch {torch.__version__}, PyG {torch_geometric.__version__}, gtpe '
            f'{gtpe.__version__}, commit {commit}')


def sibling(name: str):
    """The module ``benchmarks/<name>.py`` (imported once, by path: benchmarks is no package)."""
    key = f'_gpu_check_{name}'
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f'{name}.py')
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def _run(cmd: list[str], cwd: Path, timeout: float,
         env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """``(returncode, stdout, stderr)`` of ``cmd``; returncode ``None`` when it ran past
    ``timeout`` seconds: then its whole process group is killed."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=max(timeout, 0.1))
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        out, err = p.communicate()
        return None, out, err


def _cell(text: Any) -> str:
    return str(text).replace('|', '/').replace('\n', ' ')


def _short(msg: str, n: int = 90) -> str:
    return msg if len(msg) <= n else msg[:n - 3] + '...'


# ----------------------------------------------------------------------------- phase 1: tests
def collect_test_ids(root: Path, timeout: float, extra_args: list[str] = (),
                     env: dict[str, str] | None = None) -> list[str]:
    """Node ids of the suite under ``root`` (``pytest --collect-only -q``); ``RuntimeError``
    on a collection error or timeout."""
    rc, out, err = _run([sys.executable, '-m', 'pytest', '--collect-only', '-q',
                         '-p', 'no:cacheprovider', *extra_args], root, timeout, env)
    if rc is None:
        raise RuntimeError(f'collection timeout (>{timeout:.0f} s)')
    ids = []
    for ln in out.splitlines():  # the ids, one a line, end at the first blank line
        if not ln.strip():
            break
        if '::' in ln:
            ids.append(ln.rstrip('\n'))
    if rc != 0:
        tail = [ln for ln in (out + err).splitlines() if ln.strip()]
        raise RuntimeError(f'collection failed (pytest exit {rc}): '
                           f'{tail[-1] if tail else "no output"}')
    return ids


_SWITCH = re.compile(r'^DEVICE\s*(?::[^=\n]*)?=[^\n]*cuda', re.M)


def device_switch_files(node_ids: list[str], root: Path) -> set[str]:
    """Test files (as spelled in ``node_ids``) with a module-level ``DEVICE = ...cuda...`` line."""
    out = set()
    for f in dict.fromkeys(i.split('::')[0] for i in node_ids):
        try:
            if _SWITCH.search((Path(root) / f).read_text(encoding='utf-8')):
                out.add(f)
        except OSError:
            pass
    return out


def select_cuda_tests(node_ids: list[str], root: Path) -> list[str]:
    """The ids naming ``cuda`` (any case) and every id of a :func:`device_switch_files` module,
    in collection order."""
    switch = device_switch_files(node_ids, root)
    return [i for i in node_ids if 'cuda' in i.lower() or i.split('::')[0] in switch]


def run_cuda_tests(node_ids: list[str], root: Path, timeout: float) -> dict[str, Any]:
    """Run ``node_ids`` with pytest in ``root``; counts from its JUnit XML report:
    ``selected, passed, failed, skipped, errors, seconds, output`` or, past ``timeout``
    seconds (pytest is killed), ``selected, timeout, seconds, output``."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        xml = os.path.join(tmp, 'junit.xml')
        rc, out, err = _run([sys.executable, '-m', 'pytest', '-q', '-rfE', '-p',
                             'no:cacheprovider', f'--junitxml={xml}', *node_ids], root, timeout)
        res: dict[str, Any] = {'selected': len(node_ids), 'seconds': time.monotonic() - t0,
                               'output': out + err}
        if rc is None:
            res['timeout'] = timeout
            return res
        if not os.path.exists(xml):
            res['error'] = f'pytest exit {rc}, no report'
            return res
        tree = ET.parse(xml).getroot()
        suites = [tree] if tree.tag == 'testsuite' else tree.findall('testsuite')
        tot = {k: sum(int(s.get(k, 0)) for s in suites)
               for k in ('tests', 'failures', 'errors', 'skipped')}
    res.update(failed=tot['failures'], errors=tot['errors'], skipped=tot['skipped'],
               passed=tot['tests'] - tot['failures'] - tot['errors'] - tot['skipped'])
    return res


# ----------------------------------------------------------------------------- phases 2-3: workers
def random_zinc_like(n: int, seed: int = 0):
    """``n`` random molecule-like graphs of ZINC's sizes (9-38 atoms, a random tree plus ~10%
    ring-closing bonds, undirected), atom types < 28, bond types 1-3, one float target."""
    import torch
    from torch_geometric.data import Data
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        nn = int(torch.randint(9, 39, (1,), generator=g))
        child = torch.arange(1, nn)
        parent = (torch.rand(nn - 1, generator=g) * child).long()  # random tree
        extra = max(1, nn // 10)
        a, b = torch.randint(0, nn, (2, extra), generator=g)
        keep = (a - b).abs() > 1
        src, dst = torch.cat([parent, a[keep]]), torch.cat([child, b[keep]])
        pairs = torch.unique(torch.stack([torch.minimum(src, dst), torch.maximum(src, dst)]), dim=1)
        bond = torch.randint(1, EDGE_VOCAB, (pairs.size(1),), generator=g)
        out.append(Data(x=torch.randint(0, NODE_VOCAB, (nn, 1), generator=g),
                        edge_index=torch.cat([pairs, pairs.flip(0)], 1),
                        edge_attr=torch.cat([bond, bond]), y=torch.randn(1, generator=g)))
    return out


def load_graphs(limit: int | None):
    """``(graphs, source)``: ZINC train (train_bench's loader; first ``limit`` graphs), else
    :func:`random_zinc_like` graphs (10,000 or ``limit``) with the reason in ``source``."""
    try:
        graphs, _ = sibling('train_bench').load_zinc_train(limit)
        return graphs, 'ZINC train'
    except Exception as exc:  # noqa: BLE001 - no data on this machine: the check still runs
        n = 10_000 if limit is None else limit
        return random_zinc_like(n), f'random ZINC-sized graphs ({type(exc).__name__}: {exc})'


def _sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


def pe_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase 2 in its own process; ``spec``: device, limit, repeat, seconds (its time limit)."""
    import torch
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE, Compose

    from gtpe.transforms import AddLapPE, AddRWSE, precompute
    end = time.monotonic() + 0.9 * spec['seconds']
    dev = torch.device(spec['device'])
    graphs, src = load_graphs(spec['limit'])
    graphs = [d.to(dev) for d in graphs]
    tfs = [AddLapPE(8), AddRWSE(20)]
    precompute(graphs[:256], tfs, progress=False)  # warm-up: kernels, solver handles
    _sync(dev)
    times: list[float] = []
    while not times or (len(times) < spec['repeat'] and time.monotonic() + times[-1] < end - 5):
        t0 = time.perf_counter()
        precompute(graphs, tfs, progress=False)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    pyg = Compose([AddLaplacianEigenvectorPE(k=8, is_undirected=True), AddRandomWalkPE(20)])
    for d in graphs[:8]:
        pyg(d.clone())
    _sync(dev)
    cap = max(0.0, min(spec.get('pyg_cap_s', PYG_CAP_S), end - time.monotonic()))
    t0, n = time.perf_counter(), 0
    for d in graphs:
        pyg(d.clone())
        n += 1
        if time.perf_counter() - t0 > cap:
            break
    _sync(dev)
    pyg_s = (time.perf_counter() - t0) * len(graphs) / n
    return {'data': src, 'graphs': len(graphs), 'gtpe_s': statistics.median(times),
            'gtpe_runs': len(times), 'pyg_s': pyg_s, 'pyg_graphs_timed': n,
            'device': dev.type}


class _RowError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase 3 in its own process: train_bench's models, synchronised steps; ``spec``: device,
    limit, steps, rounds, warmup, rows."""
    import torch
    tb = sibling('train_bench')
    torch.manual_seed(0)
    dev = torch.device(spec['device'])
    graphs, src = load_graphs(spec['limit'])
    nb = max(spec['steps'] * spec['rounds'], spec['warmup'], 1)
    base = tb.make_batches(graphs, nb, [])
    timed: dict[str, dict] = {}
    rows: dict[str, dict] = {}
    for key in ['pyg', *spec['rows']]:
        try:
            if key == 'pyg':
                model, batches = tb.PyGGPS(NODE_VOCAB, EDGE_VOCAB), base
            else:
                _, local, attn = TRAIN_ROWS[key]
                model, cfg = tb.gtpe_model(local, attn, NODE_VOCAB, EDGE_VOCAB)
                tfs = cfg.transforms()
                batches = base if not tfs else tb.make_batches(graphs, nb, tfs)
            model = model.to(dev)
            step = tb.make_step(model)

            def synced(b, step=step, key=key):
                try:
                    step(b)
                    _sync(dev)  # train_bench's step does not wait for the GPU
                except Exception as exc:
                    raise _RowError(key) from exc
            timed[key] = {'step': synced, 'batches': [b.to(dev) for b in batches]}
            rows[key] = {'params': sum(p.numel() for p in model.parameters())}
        except Exception as exc:  # noqa: BLE001 - a broken row must not stop the others
            rows[key] = {'error': f'{type(exc).__name__}: {exc}'}
    # a row that fails while being timed is reported, the others are timed again without it
    while timed:
        try:
            tb.time_rows(timed, spec['steps'], spec['rounds'], spec['warmup'])
            break
        except _RowError as exc:
            cause = exc.__cause__
            rows[exc.key] = {'error': f'{type(cause).__name__}: {cause}'}
            del timed[exc.key]
    for key, r in timed.items():
        med = statistics.median(r['times'])
        rows[key].update(ms=med * 1e3, graphs_per_s=tb.BATCH / med)
    return {'data': src, 'steps': spec['steps'] * spec['rounds'], 'rows': rows,
            'model': f'batch {tb.BATCH}, {tb.LAYERS} layers, {tb.CHANNELS} ch, {tb.HEADS} heads'}


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run a phase worker (this script, ``--worker``) in a child process with ``timeout``."""
    if timeout < 1:
        return {'not_run': 'budget spent'}
    spec = dict(spec, seconds=timeout)
    rc, out, err = _run([sys.executable, str(Path(__file__).resolve()), '--worker',
                         json.dumps(spec)], ROOT, timeout)
    if rc is None:
        return {'timeout': round(timeout)}
    if rc != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return {'error': lines[-1] if lines else f'worker exit {rc}', 'log': err}
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- table
def _failure(r: dict[str, Any]) -> str | None:
    if 'timeout' in r:
        return f"timeout (>{r['timeout']:.0f} s)"
    if 'not_run' in r:
        return r['not_run']
    if 'error' in r:
        return _short(r['error'])
    return None


def tests_row(r: dict[str, Any] | None) -> tuple[list[str], bool]:
    if r is None:
        return ['CUDA tests', 'not run (dry run)', '-', '-', ''], True
    check = f"CUDA tests ({r['selected']} selected)" if 'selected' in r else 'CUDA tests'
    bad = _failure(r)
    if bad:
        return [check, bad, '-', '-', 'pytest'], False
    cell = f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
    if r['errors']:
        cell += f", {r['errors']} errors"
    ok = r['selected'] > 0 and r['failed'] == 0 and r['errors'] == 0
    return [check, cell, '-', '-', f"pytest, {r['seconds']:.0f} s"], ok


def pe_rows(r: dict[str, Any]) -> tuple[list[list[str]], bool]:
    bad = _failure(r)
    if bad:
        return [['PE precompute: LapPE(8)+RWSE(20)', bad, '-', '-', '']], False
    data = 'ZINC train' if r['data'] == 'ZINC train' else 'random ZINC-sized graphs'
    check = f"PE precompute: {data}, {r['graphs']:,} graphs, LapPE(8)+RWSE(20)"
    est = r['pyg_graphs_timed'] < r['graphs']
    note = (f"gtpe batched, PyG per graph ({r['pyg_graphs_timed']:,} graphs timed"
            f"{', scaled' if est else ''}); data on {r['device']}")
    if data != 'ZINC train':
        note += f"; {_short(r['data'], 60)}"
    return [[check, f"{r['gtpe_s']:.2f} s ({r['graphs'] / r['gtpe_s']:,.0f} graphs/s)",
             f"{r['pyg_s']:.2f} s" + (' (est.)' if est else ''),
             f"{r['pyg_s'] / r['gtpe_s']:.1f}x", note]], True


def train_rows(r: dict[str, Any], keys: list[str]) -> tuple[list[list[str]], bool]:
    bad = _failure(r)
    if bad:
        return [['train step', bad, '-', '-', '']], False

    def cell(x):
        return _failure(x) or f"{x['ms']:.1f} ms ({x['graphs_per_s']:,.0f} graphs/s)"
    rows, ok = [], True
    pyg = r['rows'].get('pyg', {'error': 'missing'})
    ok &= 'ms' in pyg
    for i, key in enumerate(k for k in keys if k != 'pyg'):
        x = r['rows'].get(key, {'error': 'missing'})
        ok &= 'ms' in x
        ratio = f"{pyg['ms'] / x['ms']:.2f}x" if 'ms' in x and 'ms' in pyg else '-'
        note = ''
        if i == 0:
            note = '; '.join(x for x in (
                'ZINC' if r['data'] == 'ZINC train' else 'random graphs', r.get('model'),
                'PyG GPSConv(GINEConv, multihead)', f"median of {r['steps']} steps") if x)
        rows.append([f'train step: {TRAIN_ROWS[key][0]}', cell(x), cell(pyg), ratio, note])
    return rows, ok


def print_table(caption: str, rows: list[list[str]]) -> None:
    rows = [[_cell(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print(caption)
    print()
    print('| ' + ' | '.join(h.ljust(w[i]) for i, h in enumerate(HEADER)) + ' |')
    print('|' + '|'.join('-' * (n + 2) for n in w) + '|')
    for r in rows:
        print('| ' + ' | '.join(c.ljust(w[i]) for i, c in enumerate(r)) + ' |')


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--budget-s', type=float, default=480.0,
                    help='wall-clock seconds for the whole check (default 480)')
    ap.add_argument('--dry-run', action='store_true',
                    help='no GPU needed: skip the CUDA tests, run the benchmarks tiny on the CPU')
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get('threads'):
            import torch
            torch.set_num_threads(spec['threads'])
        res = (pe_worker if spec['phase'] == 'pe' else train_worker)(spec)
        print(json.dumps(res))
        return 0
    if not args.dry_run and not cuda_available():
        print(no_cuda_line())
        return 0
    from gtpe._progress import heartbeat

    deadline = _T0 + args.budget_s
    device = 'cpu' if args.dry_run else 'cuda'

    def left(reserve_fraction: float) -> float:
        return deadline - time.monotonic() - reserve_fraction * args.budget_s

    keys = list(TRAIN_ROWS)
    caption = f"**gpu_check** ({'dry run, tiny sizes, ' if args.dry_run else ''}" \
              f"{describe_device(device)}; budget {args.budget_s:.0f} s)"
    tests = None
    if not args.dry_run:
        with heartbeat('gpu_check: CUDA tests'):
            try:
                ids = collect_test_ids(ROOT, max(left(TESTS_LEFT), 1))
                selected = select_cuda_tests(ids, ROOT)
                tests = (run_cuda_tests(selected, ROOT, left(TESTS_LEFT)) if selected
                         else {'selected': 0, 'error': 'no CUDA test found'})
            except RuntimeError as exc:
                tests = {'error': str(exc)}
    # dry run: one thread, as the tests (tiny models on busy cores run several times faster so)
    small = {'device': device, 'limit': 64 if args.dry_run else None,
             'threads': 1 if args.dry_run else None}
    with heartbeat('gpu_check: PE precompute'):
        pe = run_worker(dict(small, phase='pe', repeat=1 if args.dry_run else 3,
                             pyg_cap_s=1.0 if args.dry_run else PYG_CAP_S), left(PE_LEFT))
    with heartbeat('gpu_check: training'):
        steps = (2, 1, 1) if args.dry_run else (20, 3, 5)
        train = run_worker(dict(small, phase='train', steps=steps[0], rounds=steps[1],
                                warmup=steps[2], rows=keys), left(0.0))
    row, ok_tests = tests_row(tests)
    pe_r, ok_pe = pe_rows(pe)
    tr_r, ok_train = train_rows(train, keys)
    status = 0 if ok_tests and ok_pe and ok_train else 1
    if tests and not ok_tests and tests.get('output'):
        print('\n'.join(tests['output'].splitlines()[-60:]))
    for r in (pe, train):
        if 'log' in r:
            print('\n'.join(r['log'].splitlines()[-20:]))
    print_table(caption, [row, *pe_r, *tr_r])
    print(f'\ngpu_check: {time.monotonic() - _T0:.0f} s of the {args.budget_s:.0f} s budget; '
          f"exit {status}{' (dry run)' if args.dry_run else ''}")
    return status


if __name__ == '__main__':
    sys.exit(main())
