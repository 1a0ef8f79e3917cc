"""Tables, statistics and the markdown report of a ``gtpe bench`` output folder.

:func:`collect` reads one or more bench folders (``OUT/bench.json`` and every finished run in
``OUT/runs/<cell>/seed-<s>/``), :func:`summarize` turns the runs into one row per cell (mean,
sample std, 95% t-interval, Welch's t-test against each baseline), :func:`write_report` writes
``results.csv``, ``summary.csv``, ``report.md`` and the figures (:mod:`gtpe.train.figures`), and
:func:`format_table` is the plain-text summary printed at the end of a bench.

Statistics of a cell use the ``test`` value of its completed runs; a diverged run is counted in
``n_diverged`` and left out of the mean. ``std`` is the sample standard deviation (ddof=1),
``ci95_low/high`` = mean -/+ t(0.975, n-1) * std / sqrt(n); both are empty when n < 2.
``vs_<axis>_*``: Welch's two-sided t-test (unequal variances) of the cell's values against the
baseline cell (the same labels except ``<axis>`` = its baseline label); the verdict is ``better``
or ``worse`` when p < 0.05 (in the metric's direction), else ``within noise``; ``baseline`` for the
baseline cell itself and ``n/a`` when either side has fewer than 2 values or the test gives no
p-value (both sides the same constant). Cost columns are per-run medians
(``results.json`` ``cost``), then the median over the cell's runs; a run without ``cost`` (written
by an older gtpe) leaves them empty.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.checkpoint import atomic_write_text

__all__ = [
    'RESULTS_COLUMNS',
    'SUMMARY_COLUMNS',
    'cell_title',
    'collect',
    'compare',
    'describe',
    'fmt_mean_std',
    'fmt_metric',
    'fmt_p',
    'format_table',
    'render_markdown',
    'results_columns',
    'summarize',
    'summary_columns',
    'write_report',
]

# results.csv: cell, <axes...>, then these
RESULTS_COLUMNS = ('seed', 'status', 'metric', 'best_val', 'test', 'best_epoch', 'epochs',
                   'num_params', 'channels', 'seconds', 'seconds_per_epoch',
                   'train_seconds_per_epoch', 'peak_memory_mb', 'precompute_seconds',
                   'pe_bytes_per_graph', 'run_dir')
# summary.csv: cell, <axes...>, then these, then vs_<axis>_{delta,p,verdict} per baseline axis
SUMMARY_COLUMNS = ('n', 'n_diverged', 'mean', 'std', 'ci95_low', 'ci95_high', 'best_val_mean',
                   'num_params', 'channels', 'seconds_per_epoch', 'peak_memory_mb',
                   'precompute_seconds', 'pe_bytes_per_graph')
_COST_KEYS = ('seconds_per_epoch', 'train_seconds_per_epoch', 'precompute_seconds',
              'pe_bytes_per_graph')
ALPHA = 0.05
MB = 2**20  # peak_memory_mb is in MiB


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# collect


def _read_json(path: Path, log: Callable[[str], None]) -> dict | None:
    """The mapping in ``path``; ``None`` (and one warning line) when it is not valid JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log(f'warning: {path}: cannot read it ({exc.__class__.__name__}); skipped')
        return None
    if not isinstance(data, dict):
        log(f'warning: {path}: expected a JSON object; skipped')
        return None
    return data


def _read_meta(folder: Path) -> dict:
    path = folder / 'bench.json'
    if not path.is_file():
        raise ConfigError(f'{folder}: no bench.json (not a gtpe bench output folder)')
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f'{path}: cannot read it ({exc.__class__.__name__})') from None
    if not isinstance(meta, dict) or not isinstance(meta.get('axes'), list):
        raise ConfigError(f'{path}: not a gtpe bench description (no axes)')
    return meta


def _merge_meta(metas: list[tuple[Path, dict]]) -> dict:
    """Union of the folders' cells, values and seeds (first folder's order first)."""
    (first_dir, first), merged = metas[0], json.loads(json.dumps(metas[0][1]))
    for folder, meta in metas[1:]:
        for key in ('axes', 'metric', 'dataset'):
            if meta.get(key) != first.get(key):
                raise ConfigError(f'{folder}: {key} {meta.get(key)!r} differs from '
                                  f'{first_dir}: {first.get(key)!r} (not the same grid)')
        for axis, labels in (meta.get('values') or {}).items():
            have = merged.setdefault('values', {}).setdefault(axis, [])
            have += [v for v in labels if v not in have]
        names = {c['cell'] for c in merged.get('cells', [])}
        merged.setdefault('cells', []).extend(c for c in meta.get('cells', [])
                                              if c['cell'] not in names)
        seeds = merged.setdefault('seeds', [])
        seeds += [s for s in meta.get('seeds', []) if s not in seeds]
        for axis, label in (meta.get('baselines') or {}).items():
            merged.setdefault('baselines', {}).setdefault(axis, label)
    return merged


def _finished(results: dict) -> bool:
    if results.get('status') == 'diverged':
        return True
    epochs = ((results.get('config') or {}).get('train') or {}).get('epochs')
    return epochs is not None and results.get('epochs') == epochs


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _run_row(axes: list[str], cell: dict, results: dict, run_dir: Path) -> dict:
    cost = results.get('cost') or {}
    config = results.get('config') or {}
    peak = cost.get('peak_memory_bytes')
    diverged = results.get('diverged') or {}
    return {
        'cell': cell['cell'], **{a: cell['labels'][a] for a in axes},
        'seed': cell.get('seed'), 'status': results.get('status', 'completed'),
        'metric': results.get('metric'), 'best_val': results.get('best_val'),
        'test': results.get('test'), 'best_epoch': results.get('best_epoch'),
        'epochs': results.get('epochs'), 'num_params': results.get('num_params'),
        'channels': cell.get('channels', (config.get('model') or {}).get('channels')),
        'seconds': results.get('seconds'),
        **{k: cost.get(k) for k in _COST_KEYS},
        'peak_memory_mb': peak / MB if peak is not None else None,
        'run_dir': str(run_dir.resolve()),
        # not in results.csv: for the report and the figures
        'labels': dict(cell['labels']), 'higher_is_better': results.get('higher_is_better'),
        'config_epochs': (config.get('train') or {}).get('epochs'),
        'peak_memory_kind': cost.get('peak_memory_kind'), 'threads': cost.get('threads'),
        'device': results.get('device'),
        'diverged': (f"epoch {diverged.get('epoch')}: {diverged.get('reason')}"
                     if diverged else None),
    }


def _seed_key(seed: Any) -> tuple:
    return (0, seed, '') if isinstance(seed, int) else (1, 0, str(seed))


def collect(dirs: Sequence[str | os.PathLike],
            log: Callable[[str], None] = _stderr) -> tuple[dict, list[dict]]:
    """Read bench output folders: ``(merged bench.json, one row per finished run)``.

    A run counts when its ``results.json`` exists and it finished (its ``epochs`` equals its
    config's ``train.epochs``) or diverged; unfinished runs are skipped silently. A run whose
    ``cell.json``/``results.json`` is not valid JSON, that has no ``cell.json``, or whose cell is
    not one of the grid's, is skipped with one warning line through ``log`` (default: stderr). The
    same cell and seed found twice (e.g. in two folders) is kept once, the first one, with a
    warning. Folders must hold the same grid (axes, metric, dataset), else :class:`ConfigError`;
    a folder without ``bench.json`` is a :class:`ConfigError` too. Rows are in grid order, then
    by seed; their ``run_dir`` is absolute.
    """
    if not dirs:
        raise ConfigError('no bench output folder given')
    folders = [Path(d) for d in dirs]
    metas = [(f, _read_meta(f)) for f in folders]
    meta = _merge_meta(metas)
    axes = list(meta['axes'])
    known = {c['cell'] for c in meta.get('cells', [])}
    rows: list[dict] = []
    seen: dict[tuple[str, Any], Path] = {}
    for folder in folders:
        for run_dir in sorted((folder / 'runs').glob('*/seed-*')):
            if not (run_dir / 'results.json').is_file():
                continue  # not started or still running
            if not (run_dir / 'cell.json').is_file():
                log(f'warning: {run_dir}: no cell.json (not a bench run); skipped')
                continue
            cell = _read_json(run_dir / 'cell.json', log)
            results = _read_json(run_dir / 'results.json', log)
            if cell is None or results is None or not _finished(results):
                continue
            if cell.get('cell') not in known or set(cell.get('labels') or {}) != set(axes):
                log(f'warning: {run_dir}: cell {cell.get("cell")!r} is not in the grid; skipped')
                continue
            key = (cell['cell'], cell.get('seed'))
            if key in seen:
                log(f'warning: {run_dir}: {key[0]} seed {key[1]} already found in {seen[key]}; '
                    f'kept that one')
                continue
            seen[key] = run_dir
            rows.append(_run_row(axes, cell, results, run_dir))
    order = {c['cell']: i for i, c in enumerate(meta.get('cells', []))}
    rows.sort(key=lambda r: (order[r['cell']], _seed_key(r['seed'])))
    return meta, rows


# ---------------------------------------------------------------------------------------------
# statistics


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _values(runs: list[dict]) -> list[float]:
    return [float(r['test']) for r in runs if r['status'] != 'diverged' and _finite(r['test'])]


def describe(values: Sequence[float]) -> dict:
    """``n, mean, std`` (ddof=1) and the 95% t-interval of ``values`` (std/CI ``None`` if n < 2)."""
    from scipy import stats

    n = len(values)
    out: dict[str, Any] = {'n': n, 'mean': None, 'std': None, 'ci95_low': None,
                           'ci95_high': None}
    if n:
        out['mean'] = float(statistics.fmean(values))
    if n >= 2:
        std = float(statistics.stdev(values))
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci95_low=out['mean'] - half, ci95_high=out['mean'] + half)
    return out


def compare(values: Sequence[float], baseline: Sequence[float],
            higher_is_better: bool) -> tuple[float | None, float | None, str]:
    """``(delta, p, verdict)`` of ``values`` against ``baseline`` (Welch's two-sided t-test)."""
    from scipy import stats

    if not values or not baseline:
        return None, None, 'n/a'
    delta = statistics.fmean(values) - statistics.fmean(baseline)
    if len(values) < 2 or len(baseline) < 2:
        return delta, None, 'n/a'
    with warnings.catch_warnings():  # scipy warns on (nearly) constant samples
        warnings.simplefilter('ignore', RuntimeWarning)
        p = float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)
    if not math.isfinite(p):
        return delta, None, 'n/a'
    if p >= ALPHA:
        return delta, p, 'within noise'
    return delta, p, 'better' if (delta > 0) == bool(higher_is_better) else 'worse'


def _cell_key(labels: dict, axes: list[str]) -> tuple:
    return tuple(labels[a] for a in axes)


def summarize(meta: dict, rows: list[dict]) -> list[dict]:
    """One row per cell of ``meta['cells']`` (grid order), with the columns of summary.csv
    (see the module docstring) plus ``labels``, ``values`` and ``epochs`` for the figures."""
    axes = list(meta['axes'])
    higher = bool(meta.get('higher_is_better'))
    baselines = {a: meta['baselines'][a] for a in axes if a in (meta.get('baselines') or {})}
    by_cell: dict[tuple, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(_cell_key(r, axes), []).append(r)
    values = {k: _values(v) for k, v in by_cell.items()}
    out = []
    for cell in meta.get('cells', []):
        labels = cell['labels']
        key = _cell_key(labels, axes)
        runs = by_cell.get(key, [])
        vals = values.get(key, [])
        done = [r for r in runs if r['status'] != 'diverged'] or runs
        best_vals = [float(r['best_val']) for r in runs
                     if r['status'] != 'diverged' and _finite(r['best_val'])]
        row = {'cell': cell['cell'], **{a: labels[a] for a in axes},
               **describe(vals),
               'n_diverged': sum(r['status'] == 'diverged' for r in runs),
               'best_val_mean': statistics.fmean(best_vals) if best_vals else None,
               'num_params': _int(_median([r['num_params'] for r in done])),
               'channels': _int(_median([r['channels'] for r in done])),
               **{k: _median([r[k] for r in runs]) for k in
                  ('seconds_per_epoch', 'peak_memory_mb', 'precompute_seconds',
                   'pe_bytes_per_graph')},
               'labels': dict(labels), 'values': vals,
               'epochs': _int(_median([r.get('config_epochs') for r in runs]))}
        for axis, base_label in baselines.items():
            if labels[axis] == base_label:
                delta, p, verdict = None, None, 'baseline'
            else:
                base_vals = values.get(_cell_key({**labels, axis: base_label}, axes), [])
                delta, p, verdict = compare(vals, base_vals, higher)
            row.update({f'vs_{axis}_delta': delta, f'vs_{axis}_p': p,
                        f'vs_{axis}_verdict': verdict})
        out.append(row)
    return out


def _int(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def _short(axis: str) -> str:
    return axis.split('.')[-1]


def _baseline_axes(meta: dict) -> list[str]:
    return [a for a in meta['axes'] if a in (meta.get('baselines') or {})]


# ---------------------------------------------------------------------------------------------
# formatting


def fmt_metric(v: float | None) -> str:
    """A metric value with 4 significant digits ('' when missing)."""
    return '' if v is None or not math.isfinite(v) else f'{v:.4g}'


def fmt_p(p: float | None) -> str:
    """A p-value as '0.003' ('<0.001' below that, '' when missing)."""
    if p is None:
        return ''
    return '<0.001' if p < 0.001 else f'{p:.3f}'


def fmt_mean_std(row: dict) -> str:
    """'mean ± std' of a summary row, the mean with 4 and the std with 2 significant digits
    ('mean' alone when n < 2, '' when n = 0)."""
    if row.get('mean') is None or not math.isfinite(row['mean']):
        return ''
    if row.get('std') is None:
        return fmt_metric(row['mean'])
    return f"{fmt_metric(row['mean'])} ± {row['std']:.2g}"


def _fmt_num(v: float | None, spec: str = '.3g') -> str:
    return '' if v is None else format(v, spec)


def cell_title(row: dict, axes: Sequence[str]) -> str:
    """The cell's labels joined with '/' (the cell name for a grid without axes)."""
    return '/'.join(str(row[a]) for a in axes) if axes else row['cell']


def _direction(meta: dict) -> str:
    return 'higher is better' if meta.get('higher_is_better') else 'lower is better'


def format_table(meta: dict, summary: list[dict]) -> str:
    """Aligned plain-text summary: cell labels, n, mean ± std, the verdict against each baseline
    (with p), number of parameters and seconds per epoch."""
    axes = list(meta['axes'])
    base_axes = _baseline_axes(meta)
    any_div = any(r['n_diverged'] for r in summary)
    head = [_short(a) for a in axes] + ['n'] + (['div'] if any_div else []) + [
        f"{meta.get('metric', 'test')} mean ± std"] + [
        f'vs {_short(a)}={meta["baselines"][a]}' for a in base_axes] + ['params', 's/epoch']
    body = []
    for r in summary:
        verdicts = []
        for a in base_axes:
            v, p = r[f'vs_{a}_verdict'], r[f'vs_{a}_p']
            p_text = fmt_p(p)
            verdicts.append(v if p is None else
                            f"{v} (p{'' if p_text.startswith('<') else '='}{p_text})")
        body.append([str(r[a]) for a in axes] + [str(r['n'])] + (
            [str(r['n_diverged'])] if any_div else []) + [fmt_mean_std(r)] + verdicts + [
            _fmt_num(r['num_params'], ','), _fmt_num(r['seconds_per_epoch'])])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    numeric = {len(axes), len(axes) + 1} if any_div else {len(axes)}
    numeric |= {len(head) - 2, len(head) - 1}

    def line(cells: list[str]) -> str:
        return '  '.join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = (f"{meta.get('dataset', '')}: test {meta.get('metric', '')} "
             f'({_direction(meta)}), mean ± sample std over seeds')
    return '\n'.join([title, line(head), line(['-' * w for w in widths])]
                     + [line(b) for b in body])


def _md_table(head: list[str], body: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    def esc(s: str) -> str:
        return s.replace('|', '\\|')
    align = ['---:' if i in right else '---' for i in range(len(head))]
    return (['| ' + ' | '.join(esc(h) for h in head) + ' |', '| ' + ' | '.join(align) + ' |']
            + ['| ' + ' | '.join(esc(c) for c in b) + ' |' for b in body])


def _best_index(summary: list[dict], higher: bool) -> int | None:
    scored = [(r['mean'], i) for i, r in enumerate(summary) if r['mean'] is not None]
    if not scored:
        return None
    return (max(scored) if higher else min(scored))[1]


def _machine(rows: list[dict]) -> list[str]:
    """What can be learnt at report time about the machine the report is written on."""
    lines = [f'- platform: {platform.platform()}']
    cpu = None
    try:
        for text in Path('/proc/cpuinfo').read_text().splitlines():
            if text.lower().startswith('model name'):
                cpu = text.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    lines.append(f'- CPU: {cpu or platform.processor() or "unknown"}, '
                 f'{os.cpu_count()} logical cores')
    try:
        import torch
        lines.append(f'- torch {torch.__version__}')
        if any(str(r.get('device') or '').startswith('cuda') for r in rows):
            gpu = (torch.cuda.get_device_name() if torch.cuda.is_available()
                   else 'not visible at report time')
            lines.append(f'- CUDA device: {gpu}')
    except Exception:  # noqa: BLE001 - the report must not fail on a broken torch install
        lines.append('- torch: not importable')
    devices = sorted({str(r['device']) for r in rows if r.get('device')})
    threads = sorted({int(r['threads']) for r in rows if r.get('threads') is not None})
    if devices or threads:
        lines.append('- the runs used: ' + ', '.join(
            ([f"device {'/'.join(devices)}"] if devices else [])
            + ([f"torch threads {'/'.join(map(str, threads))}"] if threads else [])))
    return lines


def _command(out: Path, meta: dict) -> str:
    words = ['gtpe', 'bench', str(meta.get('grid', '<grid>')), '--out', str(out)]
    for s in meta.get('set') or []:
        words += ['--set', str(s)]
    if meta.get('seeds'):
        words += ['--seeds', ','.join(map(str, meta['seeds']))]
    if meta.get('budget_params'):
        words += ['--budget-params', str(meta['budget_params'])]
    return ' '.join(shlex.quote(w) for w in words)


def _pe_axis(axes: list[str]) -> str | None:
    return next((a for a in axes if _short(a) == 'pe'), None)


def render_markdown(out: Path, meta: dict, rows: list[dict], summary: list[dict],
                    figures: Sequence[str] = ()) -> str:
    """The text of report.md (``figures``: paths relative to ``out`` to embed)."""
    axes = list(meta['axes'])
    higher = bool(meta.get('higher_is_better'))
    metric = meta.get('metric', 'metric')
    seeds = meta.get('seeds') or []
    ns = sorted({r['n'] for r in summary if r['n']})
    n_text = '/'.join(map(str, ns)) if ns else '0'
    lines = [f"# Benchmark: {meta.get('dataset', '')}, test {metric} ({_direction(meta)})", '',
             '## How to read this', '',
             f'Each cell of the grid is one configuration trained with {len(seeds)} seed(s) '
             f"({', '.join(map(str, seeds))}); its value is the test {metric} at the epoch with "
             f'the best validation {metric}. "mean ± std" is over the cell\'s completed runs '
             '(std: the sample standard deviation), "95% CI" the '
             'Student-t interval of the mean. A cell is compared with the baseline of an axis '
             '(the cell with the same other labels) by Welch\'s two-sided t-test; it is called '
             f'"better" or "worse" when p < {ALPHA}, else "within noise". With few seeds '
             f'(n = {n_text}) only large differences are detectable: "within noise" does not '
             'mean "equal". '
             'Diverged runs are left out of the mean and listed at the end. Costs are medians '
             'per run (s/epoch: median epoch time, training + evaluation; peak MB: peak memory '
             'in MiB, RSS on CPU, allocated memory on CUDA), then the median over the cell\'s '
             'runs; precompute s and PE KB/graph are the positional-encoding precomputation '
             'time over the whole dataset and the PE tensors\' size per graph.', '',
             '## Command', '', '    ' + _command(out, meta), '']
    lines += ['## Machine', '', 'The machine this report was written on (the runs may have been '
              'trained elsewhere):', ''] + _machine(rows) + ['']

    # summary table
    head = [_short(a) for a in axes] + ['n', 'diverged', f'{metric} mean ± std', '95% CI',
                                        'params', 'channels', 's/epoch', 'peak MB',
                                        'precompute s', 'PE KB/graph']
    body = []
    for r in summary:
        ci = (f"[{fmt_metric(r['ci95_low'])}, {fmt_metric(r['ci95_high'])}]"
              if r['ci95_low'] is not None else '')
        kb = r['pe_bytes_per_graph'] / 1024 if r['pe_bytes_per_graph'] is not None else None
        body.append([str(r[a]) for a in axes] + [
            str(r['n']), str(r['n_diverged']), fmt_mean_std(r), ci,
            _fmt_num(r['num_params'], ','), _fmt_num(r['channels'], 'd'),
            _fmt_num(r['seconds_per_epoch']), _fmt_num(r['peak_memory_mb'], '.0f'),
            _fmt_num(r['precompute_seconds']), _fmt_num(kb)])
    lines += ['## Summary', ''] + _md_table(head, body, set(range(len(axes), len(head)))) + ['']

    if len(axes) == 2:
        a0, a1 = axes
        v0 = list(dict.fromkeys(r[a0] for r in summary))
        v1 = list(dict.fromkeys(r[a1] for r in summary))
        best = _best_index(summary, higher)
        cells = {(r[a0], r[a1]): (i, r) for i, r in enumerate(summary)}
        pivot = []
        for x in v0:
            row = [x]
            for y in v1:
                i, r = cells.get((x, y), (None, None))
                text = fmt_mean_std(r) if r else ''
                row.append(f'**{text}**' if text and i == best else text)
            pivot.append(row)
        lines += [f'## {metric}: {_short(a0)} (rows) × {_short(a1)} (columns)', '',
                  f'Mean ± std; the best cell ({_direction(meta)}) in bold.', '']
        lines += _md_table([f'{_short(a0)} \\ {_short(a1)}'] + v1, pivot) + ['']

    for axis in _baseline_axes(meta):
        base = meta['baselines'][axis]
        s = _short(axis)
        index = {_cell_key(r, axes): r for r in summary}
        head = [_short(a) for a in axes] + [f'{metric} mean ± std', f'{s}={base}', 'Δ mean',
                                            'p', 'verdict']
        body = []
        for r in summary:
            if r[f'vs_{axis}_verdict'] == 'baseline':
                continue
            b = index.get(_cell_key({**r, axis: base}, axes))
            delta = r[f'vs_{axis}_delta']
            body.append([str(r[a]) for a in axes] + [
                fmt_mean_std(r), fmt_mean_std(b) if b else '',
                '' if delta is None else f'{delta:+.4g}', fmt_p(r[f'vs_{axis}_p']),
                r[f'vs_{axis}_verdict']])
        lines += [f'## vs {s}={base}', '',
                  f'Each cell against the cell with {s}={base} and the same other labels '
                  f'(Δ = mean − baseline mean; Welch\'s t-test).', '']
        lines += _md_table(head, body, set(range(len(axes), len(head) - 1))) + ['']

    pe = _pe_axis(axes)
    if pe is not None:
        body = []
        for label in dict.fromkeys(r[pe] for r in summary):
            group = [r for r in summary if r[pe] == label]
            secs = _median([r['precompute_seconds'] for r in group])
            size = _median([r['pe_bytes_per_graph'] for r in group])
            body.append([label, _fmt_num(secs), _fmt_num(None if size is None else size / 1024)])
        lines += ['## Cost per PE', '', 'Counted once per encoding (the cells that share it '
                  'reuse its cached precomputation).', '']
        lines += _md_table([_short(pe), 'precompute s', 'PE KB/graph'], body, {1, 2}) + ['']

    if figures:
        lines += ['## Figures', '']
        for rel in figures:
            if rel.endswith('.png'):
                name = Path(rel).stem
                lines += [f'![{name}]({rel}) ([svg]({rel[:-4]}.svg))', '']

    lines += ['## Diverged and missing runs', '']
    lines += _problems(meta, rows) + ['']
    return '\n'.join(lines)


def _problems(meta: dict, rows: list[dict]) -> list[str]:
    found = {(r['cell'], r['seed']): r for r in rows}
    seeds = meta.get('seeds') or []
    expected = [(c['cell'], s) for c in meta.get('cells', []) for s in seeds]
    out = []
    for cell, seed in expected + [k for k in found if k not in set(expected)]:
        r = found.get((cell, seed))
        if r is None:
            out.append(f'- `{cell}` seed {seed}: missing (not run or not finished)')
        elif r['status'] == 'diverged':
            out.append(f"- `{cell}` seed {seed}: diverged ({r['diverged'] or 'no detail'})")
        elif not _finite(r['test']):
            out.append(f'- `{cell}` seed {seed}: no test value (no finite validation metric)')
    total = len(expected)
    ok = sum(1 for k in expected if k in found and _finite(found[k]['test'])
             and found[k]['status'] != 'diverged')
    return [f'{ok} of {total} runs ({len(meta.get("cells", []))} cells × {len(seeds)} seeds) '
            'finished with a test value.', ''] + (out or ['None.'])


# ---------------------------------------------------------------------------------------------
# files


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n', extrasaction='ignore')
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_value(r.get(c)) for c in columns})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if v is None:
        return ''
    if isinstance(v, float):
        return repr(v)
    return v


def _relative(run_dir: str, out: Path) -> str:
    try:
        return str(Path(run_dir).relative_to(out.resolve()))
    except ValueError:
        return run_dir


def results_columns(meta: dict) -> list[str]:
    """The columns of results.csv."""
    return ['cell', *meta['axes'], *RESULTS_COLUMNS]


def summary_columns(meta: dict) -> list[str]:
    """The columns of summary.csv."""
    vs = [f'vs_{a}_{k}' for a in _baseline_axes(meta) for k in ('delta', 'p', 'verdict')]
    return ['cell', *meta['axes'], *SUMMARY_COLUMNS, *vs]


def write_report(out: str | os.PathLike, meta: dict, rows: list[dict],
                 figures: bool = True) -> list[dict]:
    """Write ``results.csv`` (one row per run; ``run_dir`` relative to ``out`` when inside it,
    else absolute), ``summary.csv`` (one row per cell), ``report.md`` and, when ``figures``, the
    figures in ``out/figures/`` (:func:`gtpe.train.figures.draw_bench_figures`); every file is
    written atomically. report.md embeds the figures that exist in ``out/figures/``. Returns the
    summary rows (:func:`summarize`)."""
    out = Path(out)
    summary = summarize(meta, rows)
    results = [{**r, 'run_dir': _relative(r['run_dir'], out)} for r in rows]
    atomic_write_text(out / 'results.csv', _csv_text(results_columns(meta), results))
    atomic_write_text(out / 'summary.csv', _csv_text(summary_columns(meta), summary))
    if figures:
        from gtpe.train.figures import draw_bench_figures
        draw_bench_figures(out, meta, summary)
    embedded = [f'figures/{name}.png' for name in ('heatmap', 'bars', 'cost')
                if (out / 'figures' / f'{name}.png').is_file()]
    atomic_write_text(out / 'report.md', render_markdown(out, meta, rows, summary, embedded))
    return summary
