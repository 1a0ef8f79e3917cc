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
baseline cell (the same labels except ``<axis>`` = its baseline label): ``delta`` = mean -
baseline mean, ``delta_pct`` = 100 * delta / |baseline mean|, ``delta_ci95_low/high`` the Welch
95% interval of the difference, ``p`` and ``p_holm`` (Holm-adjusted over every comparison of the
report, all axes together). The verdict is ``better`` or ``worse`` when the unadjusted p < 0.05 (in
the metric's direction), else ``within noise``; ``baseline`` for the baseline cell itself and
``n/a`` when either side has fewer than 2 values or the test gives no p-value (both sides the same
constant). Cost columns are per-run medians (``results.json`` ``cost``), then the median over the
cell's runs; a run without ``cost`` (written by an older gtpe) leaves them empty. Peak memory is
only summarised over runs of one kind (``rss`` or ``cuda``): a cell whose runs mix them shows
``peak_memory_kind`` ``mixed`` and no memory numbers.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.checkpoint import atomic_write_text
from gtpe.train.config import MACHINE_KEYS, config_equal_except, experiment_hash
from gtpe.train.cost import median_of

__all__ = [
    'RESULTS_COLUMNS',
    'SUMMARY_COLUMNS',
    'VS_COLUMNS',
    'bench_title',
    'cell_title',
    'collect',
    'compare',
    'describe',
    'direction',
    'fmt_mean_std',
    'fmt_metric',
    'fmt_p',
    'format_table',
    'holm',
    'is_finished',
    'render_markdown',
    'results_columns',
    'short_axis',
    'summarize',
    'summary_columns',
    'write_report',
]

# results.csv: cell, <axes...>, then these
RESULTS_COLUMNS = ('seed', 'status', 'metric', 'best_val', 'test', 'best_epoch', 'epochs',
                   'num_params', 'channels', 'seconds', 'seconds_per_epoch',
                   'train_seconds_per_epoch', 'peak_memory_mb', 'peak_memory_increase_mb',
                   'peak_memory_kind', 'precompute_seconds', 'pe_bytes_per_graph', 'run_dir')
# summary.csv: cell, <axes...>, then these, then vs_<axis>_<VS_COLUMNS> per baseline axis
SUMMARY_COLUMNS = ('n', 'n_diverged', 'mean', 'std', 'ci95_low', 'ci95_high', 'best_val_mean',
                   'num_params', 'channels', 'seconds_per_epoch', 'train_seconds_per_epoch',
                   'peak_memory_mb', 'peak_memory_increase_mb', 'peak_memory_kind',
                   'precompute_seconds', 'pe_bytes_per_graph')
VS_COLUMNS = ('delta', 'delta_pct', 'delta_ci95_low', 'delta_ci95_high', 'p', 'p_holm',
              'verdict')
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


_SAME_GRID = ('axes', 'metric', 'higher_is_better', 'dataset')
_SAME_UNLESS_HASHED = ('budget_params', 'set')


def _check_experiments(first_dir: Path, merged: dict, folder: Path, meta: dict) -> bool:
    """ConfigError when a cell of both has two experiment hashes; whether at least one cell is
    common and every common cell has a hash on both sides (then they all agree)."""
    have = {c['cell']: c.get('experiment') for c in merged.get('cells', [])}
    common = [c for c in meta.get('cells', []) if c['cell'] in have]
    for c in common:
        mine, theirs = c.get('experiment'), have[c['cell']]
        if mine and theirs and mine != theirs:
            raise ConfigError(f"{folder}: cell {c['cell']} is experiment {mine}, in {first_dir} "
                              f'it is {theirs} (other settings: not the same experiment)')
    return bool(common) and all(c.get('experiment') and have[c['cell']] for c in common)


def _merge_meta(metas: list[tuple[Path, dict]]) -> dict:
    """Union of the folders' cells, values and seeds (first folder's order first); ConfigError
    when they are not one experiment (see :func:`collect`)."""
    (first_dir, first), merged = metas[0], json.loads(json.dumps(metas[0][1]))
    for folder, meta in metas[1:]:
        for key in _SAME_GRID:
            if meta.get(key) != first.get(key):
                raise ConfigError(f'{folder}: {key} {meta.get(key)!r} differs from '
                                  f'{first_dir}: {first.get(key)!r} (not the same grid)')
        hashed = _check_experiments(first_dir, merged, folder, meta)
        for key in _SAME_UNLESS_HASHED:
            if meta.get(key) != first.get(key) and not hashed:
                raise ConfigError(
                    f'{folder}: {key} {meta.get(key)!r} differs from {first_dir}: '
                    f'{first.get(key)!r}, and no common cell has experiment hashes in both '
                    'bench.json files to show the runs are the same experiment')
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


def is_finished(results: dict, config: dict | None = None) -> bool:
    """Whether a run's ``results.json`` is a finished run: it diverged, it stopped early
    (``train.patience``), or its ``epochs`` equals the config's ``train.epochs`` (``config``,
    else the run's own). With ``config`` (a plain config dict), the run's config must also equal
    it outside :data:`MACHINE_KEYS`."""
    own = results.get('config')
    if config is not None and (not isinstance(own, dict)
                               or config_equal_except(own, config, MACHINE_KEYS)):
        return False
    if results.get('status') == 'diverged' or results.get('stopped_early') is True:
        return True
    epochs = ((config if config is not None else own or {}).get('train') or {}).get('epochs')
    return epochs is not None and results.get('epochs') == epochs


@functools.lru_cache(maxsize=256)
def _transform_reprs(model_json: str) -> tuple[str, ...] | None:
    from gtpe.models.config import GPSModelConfig

    try:
        model = GPSModelConfig.from_dict(json.loads(model_json))
        return tuple(repr(t) for t in model.transforms())
    except (ValueError, TypeError):  # a model config this gtpe cannot read
        return None


def _run_transforms(config: dict) -> tuple[str, ...] | None:
    """The reprs of the transforms a run's model computes (``model.pe``, plus RRWP for
    ``attn='grit'`` and expander edges for ``attn='exphormer'``); ``None`` when unknown."""
    model = config.get('model') if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return None
    return _transform_reprs(json.dumps(model, sort_keys=True))


def _run_row(axes: list[str], cell: dict, results: dict, run_dir: Path) -> dict:
    cost = results.get('cost') or {}
    config = results.get('config') or {}
    peak, start = cost.get('peak_memory_bytes'), cost.get('memory_at_start_bytes')
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
        'peak_memory_increase_mb': (peak - start) / MB if None not in (peak, start) else None,
        'peak_memory_kind': cost.get('peak_memory_kind'),
        'run_dir': str(run_dir.resolve()),
        # not in results.csv: for the report and the figures
        'labels': dict(cell['labels']), 'higher_is_better': results.get('higher_is_better'),
        'config_epochs': (config.get('train') or {}).get('epochs'),
        'threads': cost.get('threads'), 'device': results.get('device'),
        'transforms': _run_transforms(config),
        'diverged': (f"epoch {diverged.get('epoch')}: {diverged.get('reason')}"
                     if diverged else None),
    }


def _seed_key(seed: Any) -> tuple:
    return (0, seed, '') if isinstance(seed, int) else (1, 0, str(seed))


def _unique_folders(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """``dirs`` as paths, each folder once (the same folder by ``resolve()``), in order."""
    seen: dict[Path, Path] = {}
    for d in dirs:
        seen.setdefault(Path(d).resolve(), Path(d))
    return list(seen.values())


def _read_run(run_dir: Path, axes: list[str], known: set[str],
              log: Callable[[str], None]) -> tuple[dict, dict] | None:
    """``(cell.json, results.json)`` of a finished run of the grid, else ``None``."""
    if not (run_dir / 'results.json').is_file():
        return None  # not started or still running
    if not (run_dir / 'cell.json').is_file():
        log(f'warning: {run_dir}: no cell.json (not a bench run); skipped')
        return None
    cell = _read_json(run_dir / 'cell.json', log)
    results = _read_json(run_dir / 'results.json', log)
    if cell is None or results is None or not is_finished(results):
        return None
    if cell.get('cell') not in known or set(cell.get('labels') or {}) != set(axes):
        log(f'warning: {run_dir}: cell {cell.get("cell")!r} is not in the grid; skipped')
        return None
    return cell, results


def _other_experiment(run_dir: Path, cell: dict, results: dict, expected: dict) -> dict | None:
    """The skipped-run entry when the run's config is not its cell's experiment, else ``None``
    (also when the folder's bench.json has no hash: written by an older gtpe)."""
    want = expected.get(cell['cell'])
    got = experiment_hash(results.get('config') or {})
    if not want or got == want:
        return None
    return {'cell': cell['cell'], 'seed': cell.get('seed'), 'run_dir': str(run_dir.resolve()),
            'experiment': got, 'expected': want}


def _collect_folder(folder: Path, folder_meta: dict, meta: dict, seen: dict,
                    log: Callable[[str], None]) -> list[dict]:
    """The rows of the finished runs of one folder (``seen``: (cell, seed) -> run folder so
    far; runs of another experiment go to ``meta['skipped_runs']``)."""
    axes = list(meta['axes'])
    known = {c['cell'] for c in meta.get('cells', [])}
    expected = {c['cell']: c.get('experiment') for c in folder_meta.get('cells', [])}
    rows = []
    for run_dir in sorted((folder / 'runs').glob('*/seed-*')):
        found = _read_run(run_dir, axes, known, log)
        if found is None:
            continue
        cell, results = found
        other = _other_experiment(run_dir, cell, results, expected)
        if other is not None:
            log(f"warning: {run_dir}: its config is experiment {other['experiment']}, not its "
                f"cell's {other['expected']} in {folder / 'bench.json'} (run with other "
                'settings); skipped')
            meta['skipped_runs'].append(other)
            continue
        key = (cell['cell'], cell.get('seed'))
        if key in seen:
            log(f'warning: {run_dir}: {key[0]} seed {key[1]} already found in {seen[key]}; '
                f'kept that one')
            continue
        seen[key] = run_dir
        rows.append(_run_row(axes, cell, results, run_dir))
    return rows


def collect(dirs: Sequence[str | os.PathLike],
            log: Callable[[str], None] = _stderr) -> tuple[dict, list[dict]]:
    """Read bench output folders: ``(merged bench.json, one row per finished run)``.

    A run counts when its ``results.json`` exists and it finished (:func:`is_finished`);
    unfinished runs are skipped silently. A run whose ``cell.json``/``results.json`` is not valid
    JSON, that has no ``cell.json``, or whose cell is not one of the grid's, is skipped with one
    warning line through ``log`` (default: stderr). So is a run whose config's
    :func:`~gtpe.train.config.experiment_hash` is not its cell's ``experiment`` in its folder's
    bench.json (other settings; no check when bench.json has none); those are listed in the
    returned meta's ``skipped_runs`` ({cell, seed, run_dir, experiment, expected}). The same
    folder given twice is read once; the same cell and seed found twice (e.g. in two folders) is
    kept once, the first one, with a warning. Folders must hold the same grid (axes, metric,
    higher_is_better, dataset), their common cells the same experiment hash, and their
    ``budget_params`` and ``set`` may differ only when common cells' hashes show the same
    experiments (the first folder's are kept), else :class:`ConfigError`; a folder without
    ``bench.json`` is a :class:`ConfigError` too. The meta's ``collected_from`` lists the
    folders as given. Rows are in grid order, then by seed; their ``run_dir`` is absolute.
    """
    if not dirs:
        raise ConfigError('no bench output folder given')
    metas = [(f, _read_meta(f)) for f in _unique_folders(dirs)]
    meta = _merge_meta(metas)
    meta['collected_from'] = [str(f) for f, _ in metas]
    meta['skipped_runs'] = []
    rows: list[dict] = []
    seen: dict[tuple[str, Any], Path] = {}
    for folder, folder_meta in metas:
        rows += _collect_folder(folder, folder_meta, meta, seen, log)
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


def compare(values: Sequence[float], baseline: Sequence[float], higher_is_better: bool) -> dict:
    """``values`` against ``baseline`` by Welch's two-sided t-test: ``delta`` (mean difference),
    ``delta_pct`` (% of |baseline mean|), ``delta_ci95_low/high`` (Welch 95% interval of the
    difference), ``p`` and ``verdict`` (see the module docstring); ``None`` where undefined."""
    from scipy import stats

    out: dict[str, Any] = {'delta': None, 'delta_pct': None, 'delta_ci95_low': None,
                           'delta_ci95_high': None, 'p': None, 'verdict': 'n/a'}
    if not values or not baseline:
        return out
    base = statistics.fmean(baseline)
    out['delta'] = delta = statistics.fmean(values) - base
    out['delta_pct'] = 100.0 * delta / abs(base) if base else None
    if len(values) < 2 or len(baseline) < 2:
        return out
    with warnings.catch_warnings():  # scipy warns on (nearly) constant samples
        warnings.simplefilter('ignore', RuntimeWarning)
        test = stats.ttest_ind(values, baseline, equal_var=False)
        p = float(test.pvalue)
        if not math.isfinite(p):
            return out
        low, high = (float(x) for x in test.confidence_interval(0.95))
    out.update(p=p, delta_ci95_low=low, delta_ci95_high=high)
    if p >= ALPHA:
        out['verdict'] = 'within noise'
    else:
        out['verdict'] = 'better' if (delta > 0) == bool(higher_is_better) else 'worse'
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (family-wise error over all of them), in the
    input order: the k-th smallest p times (m - k + 1), made non-decreasing, at most 1."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _cell_key(labels: dict, axes: list[str]) -> tuple:
    return tuple(labels[a] for a in axes)


def _int(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def _memory(runs: list[dict]) -> dict:
    """Peak memory of a cell: medians over its runs when they share one kind, else 'mixed'."""
    kinds = {r['peak_memory_kind'] for r in runs if r.get('peak_memory_kind')}
    if len(kinds) > 1:
        return {'peak_memory_kind': 'mixed', 'peak_memory_mb': None,
                'peak_memory_increase_mb': None}
    return {'peak_memory_kind': next(iter(kinds), None),
            'peak_memory_mb': median_of(runs, 'peak_memory_mb'),
            'peak_memory_increase_mb': median_of(runs, 'peak_memory_increase_mb')}


def _cell_summary(cell: dict, runs: list[dict], axes: list[str]) -> dict:
    """The statistics and costs of one cell (no comparisons)."""
    vals = _values(runs)
    done = [r for r in runs if r['status'] != 'diverged'] or runs
    best_vals = [float(r['best_val']) for r in runs
                 if r['status'] != 'diverged' and _finite(r['best_val'])]
    return {'cell': cell['cell'], **{a: cell['labels'][a] for a in axes},
            **describe(vals),
            'n_diverged': sum(r['status'] == 'diverged' for r in runs),
            'best_val_mean': statistics.fmean(best_vals) if best_vals else None,
            'num_params': _int(median_of(done, 'num_params')),
            'channels': _int(median_of(done, 'channels')),
            **{k: median_of(runs, k) for k in _COST_KEYS}, **_memory(runs),
            'labels': dict(cell['labels']), 'values': vals,
            'epochs': _int(median_of(runs, 'config_epochs')),
            'transforms': next((r['transforms'] for r in runs
                                if r.get('transforms') is not None), None)}


def summarize(meta: dict, rows: list[dict]) -> list[dict]:
    """One row per cell of ``meta['cells']`` (grid order), with the columns of summary.csv
    (see the module docstring) plus ``labels``, ``values``, ``epochs`` and ``transforms`` (the
    reprs of the cell's PE transforms, ``None`` when unknown) for the report and figures."""
    axes = list(meta['axes'])
    higher = bool(meta.get('higher_is_better'))
    by_cell: dict[tuple, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(_cell_key(r, axes), []).append(r)
    out = [_cell_summary(c, by_cell.get(_cell_key(c['labels'], axes), []), axes)
           for c in meta.get('cells', [])]
    values = {_cell_key(s, axes): s['values'] for s in out}
    for row in out:
        for axis in _baseline_axes(meta):
            base_label = meta['baselines'][axis]
            if row[axis] == base_label:
                result = {**{k: None for k in VS_COLUMNS}, 'verdict': 'baseline'}
            else:
                base = values.get(_cell_key({**row, axis: base_label}, axes), [])
                result = compare(row['values'], base, higher)
            row.update({f'vs_{axis}_{k}': result.get(k) for k in VS_COLUMNS})
    tests = [(row, a) for row in out for a in _baseline_axes(meta)
             if row[f'vs_{a}_p'] is not None]
    for (row, a), p in zip(tests, holm([row[f'vs_{a}_p'] for row, a in tests])):
        row[f'vs_{a}_p_holm'] = p
    return out


def short_axis(axis: str) -> str:
    """The last part of a dotted axis name (``model.attn`` -> ``attn``)."""
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


def direction(meta: dict) -> str:
    """'higher is better' or 'lower is better' (the metric's direction)."""
    return 'higher is better' if meta.get('higher_is_better') else 'lower is better'


def bench_title(meta: dict) -> str:
    """'<dataset>: test <metric> (<direction>)', the title of the tables and figures."""
    return f"{meta.get('dataset', '')}: test {meta.get('metric', '')} ({direction(meta)})"


def format_table(meta: dict, summary: list[dict]) -> str:
    """Aligned plain-text summary: cell labels, n, mean ± std, the verdict against each baseline
    (with p), number of parameters, seconds per epoch and training seconds per epoch."""
    axes = list(meta['axes'])
    base_axes = _baseline_axes(meta)
    any_div = any(r['n_diverged'] for r in summary)
    head = [short_axis(a) for a in axes] + ['n'] + (['div'] if any_div else []) + [
        f"{meta.get('metric', 'test')} mean ± std"] + [
        f'vs {short_axis(a)}={meta["baselines"][a]}' for a in base_axes] + [
        'params', 's/epoch', 'train s/epoch']
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
            _fmt_num(r['num_params'], ','), _fmt_num(r['seconds_per_epoch']),
            _fmt_num(r['train_seconds_per_epoch'])])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    numeric = {len(axes), len(axes) + 1} if any_div else {len(axes)}
    numeric |= {len(head) - 3, len(head) - 2, len(head) - 1}

    def line(cells: list[str]) -> str:
        return '  '.join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = f'{bench_title(meta)}, mean ± sample std over seeds'
    return '\n'.join([title, line(head), line(['-' * w for w in widths])]
                     + [line(b) for b in body])


# ---------------------------------------------------------------------------------------------
# report.md: one function per section


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


def _tests(meta: dict, summary: list[dict]) -> int:
    """How many comparisons of the report have a p-value (the Holm family)."""
    return sum(r[f'vs_{a}_p'] is not None for r in summary for a in _baseline_axes(meta))


def _md_reading(meta: dict, summary: list[dict]) -> list[str]:
    """Title and how to read the statistics."""
    metric = meta.get('metric', 'metric')
    seeds = meta.get('seeds') or []
    ns = sorted({r['n'] for r in summary if r['n']})
    n_text = '/'.join(map(str, ns)) if ns else '0'
    return [f'# Benchmark — {bench_title(meta)}', '', '## How to read this', '',
            f'Each cell of the grid is one configuration trained with {len(seeds)} seed(s) '
            f"({', '.join(map(str, seeds))}); its value is the test {metric} at the epoch with "
            f'the best validation {metric}. "mean ± std" is over the cell\'s completed runs '
            '(std: the sample standard deviation), "95% CI" the Student-t interval of the mean. '
            'A cell is compared with the baseline of an axis (the cell with the same other '
            'labels) by Welch\'s two-sided t-test: Δ is the difference of the means with its '
            f'Welch 95% interval; the cell is called "better" or "worse" when p < {ALPHA}, else '
            f'"within noise". With few seeds (n = {n_text}) only large differences are '
            'detectable: "within noise" does not mean "equal". Diverged runs are left out of '
            'the mean and listed at the end.', '']


def _md_costs_note() -> list[str]:
    """How to read the cost and memory columns."""
    return ['Costs are medians per run, then the median over the cell\'s runs. s/epoch: median '
            'epoch time (training + evaluation); train s/epoch: its training part only. '
            'precompute s and PE KB/graph: the positional-encoding precomputation time and the '
            'PE tensors\' size per graph (see "Cost per PE").', '',
            'Memory: peak MB is the peak RSS of the training process on CPU (kind `rss`) or the '
            'peak allocated tensor memory on CUDA (`cuda`); a cell whose runs mix both shows '
            '`mixed` and no number. Peak RSS includes the Python/torch baseline of the process '
            '(a few hundred MB before any data is loaded); "MB over start" subtracts the memory '
            'in use when the run started, before its data was loaded. `gtpe bench --workers 1` '
            'trains every run in the one bench process, which keeps what earlier runs left '
            '(allocator caches, imported modules), so RSS is not comparable across cells there; '
            'with `--workers` >= 2 each run gets a fresh process.', '']


def _bench_command(folder: str, meta: dict) -> str:
    words = ['gtpe', 'bench', str(meta.get('grid', '<grid>')), '--out', folder]
    for s in meta.get('set') or []:
        words += ['--set', str(s)]
    if meta.get('seeds'):
        words += ['--seeds', ','.join(map(str, meta['seeds']))]
    if meta.get('budget_params'):
        words += ['--budget-params', str(meta['budget_params'])]
    return ' '.join(shlex.quote(w) for w in words)


def _md_command(out: Path, meta: dict) -> list[str]:
    """The bench command; for a report of other or several folders, the report command too."""
    folders = meta.get('collected_from') or [str(out)]
    bench = '    ' + _bench_command(folders[0], meta)
    if [Path(f).resolve() for f in folders] == [out.resolve()]:
        return ['## Command', '', bench, '']
    report = ' '.join(shlex.quote(w) for w in ['gtpe', 'report', *folders, '--out', str(out)])
    merged = (f'merged from {len(folders)} folders (their cells are the same experiments); '
              'the runs of the first were made by' if len(folders) > 1
              else 'the runs were made by')
    return ['## Command', '', '    ' + report, '', f'This report: {merged}', '', bench, '']


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


def _md_machine(rows: list[dict]) -> list[str]:
    return (['## Machine', '', 'The machine this report was written on (the runs may have been '
             'trained elsewhere):', ''] + _machine(rows) + [''])


def _md_summary(meta: dict, summary: list[dict]) -> list[str]:
    """One line per cell: statistics and costs."""
    axes = list(meta['axes'])
    head = [short_axis(a) for a in axes] + [
        'n', 'diverged', f"{meta.get('metric', 'metric')} mean ± std", '95% CI', 'params',
        'channels', 's/epoch', 'train s/epoch', 'peak MB', 'MB over start', 'memory',
        'precompute s', 'PE KB/graph']
    body = []
    for r in summary:
        ci = (f"[{fmt_metric(r['ci95_low'])}, {fmt_metric(r['ci95_high'])}]"
              if r['ci95_low'] is not None else '')
        kb = r['pe_bytes_per_graph'] / 1024 if r['pe_bytes_per_graph'] is not None else None
        body.append([str(r[a]) for a in axes] + [
            str(r['n']), str(r['n_diverged']), fmt_mean_std(r), ci,
            _fmt_num(r['num_params'], ','), _fmt_num(r['channels'], 'd'),
            _fmt_num(r['seconds_per_epoch']), _fmt_num(r['train_seconds_per_epoch']),
            _fmt_num(r['peak_memory_mb'], '.0f'), _fmt_num(r['peak_memory_increase_mb'], '.0f'),
            r['peak_memory_kind'] or '', _fmt_num(r['precompute_seconds']), _fmt_num(kb)])
    right = set(range(len(axes), len(head))) - {len(head) - 3}
    return ['## Summary', ''] + _md_table(head, body, right) + ['']


def _marks(meta: dict, row: dict) -> str:
    """' ↑' / ' ↓' for each baseline axis where the cell differs beyond noise (the axis name
    before the arrow when there are several baseline axes)."""
    base_axes = _baseline_axes(meta)
    marks = []
    for a in base_axes:
        if row[f'vs_{a}_verdict'] in ('better', 'worse'):
            arrow = '↑' if row[f'vs_{a}_delta'] > 0 else '↓'
            marks.append(f'{short_axis(a)}{arrow}' if len(base_axes) > 1 else arrow)
    return ''.join(' ' + m for m in marks)


def _md_pivot(meta: dict, summary: list[dict]) -> list[str]:
    """For two axes: mean ± std of the first axis (rows) × the second (columns)."""
    axes = list(meta['axes'])
    if len(axes) != 2:
        return []
    a0, a1 = axes
    v1 = list(dict.fromkeys(r[a1] for r in summary))
    best = _best_index(summary, bool(meta.get('higher_is_better')))
    cells = {(r[a0], r[a1]): (i, r) for i, r in enumerate(summary)}
    pivot = []
    for x in dict.fromkeys(r[a0] for r in summary):
        row = [x]
        for y in v1:
            i, r = cells.get((x, y), (None, None))
            text = fmt_mean_std(r) if r else ''
            row.append((f'**{text}**' if text and i == best else text)
                       + (_marks(meta, r) if r else ''))
        pivot.append(row)
    down, up = ('worse', 'better') if meta.get('higher_is_better') else ('better', 'worse')
    return ([f"## {meta.get('metric', 'metric')}: {short_axis(a0)} (rows) × {short_axis(a1)} "
             '(columns)', '',
             f'Mean ± std; the best cell ({direction(meta)}) in bold. ↑ / ↓: the mean is higher '
             "/ lower than its baseline's beyond noise (Welch's t-test, unadjusted p < "
             f'{ALPHA}; see the tables below), so here ↓ is {down} and ↑ is {up}; no arrow: '
             'within noise or not tested.', '']
            + _md_table([f'{short_axis(a0)} \\ {short_axis(a1)}'] + v1, pivot) + [''])


def _signed(v: float | None, spec: str = '+.4g', suffix: str = '') -> str:
    return '' if v is None else f'{v:{spec}}{suffix}'


def _ratio(a: float | None, b: float | None) -> str:
    return '' if a is None or not b else f'{a / b:.2f}×'


def _memory_delta(row: dict, base: dict) -> str:
    """Peak MB of the cell minus the baseline's ('' unless both are of one kind)."""
    kind = row['peak_memory_kind']
    if kind in (None, 'mixed') or kind != base['peak_memory_kind'] or \
            None in (row['peak_memory_mb'], base['peak_memory_mb']):
        return ''
    return f"{row['peak_memory_mb'] - base['peak_memory_mb']:+.0f}"


def _vs_cells(row: dict, base: dict | None, axis: str) -> list[str]:
    """The comparison columns of one cell against its baseline cell."""
    low, high = row[f'vs_{axis}_delta_ci95_low'], row[f'vs_{axis}_delta_ci95_high']
    costs = (['', '', ''] if base is None else [
        _ratio(row['seconds_per_epoch'], base['seconds_per_epoch']), _memory_delta(row, base),
        _ratio(row['num_params'], base['num_params'])])
    return [fmt_mean_std(base) if base else '', _signed(row[f'vs_{axis}_delta']),
            _signed(row[f'vs_{axis}_delta_pct'], '+.1f', '%'),
            '' if low is None else f'[{low:+.3g}, {high:+.3g}]',
            fmt_p(row[f'vs_{axis}_p']), fmt_p(row[f'vs_{axis}_p_holm']),
            row[f'vs_{axis}_verdict'], *costs]


def _md_comparisons(meta: dict, summary: list[dict]) -> list[str]:
    """The multiple-testing note, then one table per baseline axis."""
    if not _baseline_axes(meta):
        return []
    m = _tests(meta, summary)
    lines = ['## Comparisons with the baselines', '',
             f'This report makes {m} comparison(s). Each one has a {ALPHA:.0%} chance of a false '
             '"better"/"worse" when nothing differs, so false verdicts add up: with ~50 tests at '
             f'{ALPHA}, about 2-3 are expected unadjusted (here about {ALPHA * m:.1f}). The '
             f'verdict uses the unadjusted p; "p (Holm)" is Holm-adjusted over all {m} '
             'comparisons of this report (every baseline axis together): a difference with '
             f'p (Holm) < {ALPHA} survives that correction. Δ = mean − baseline mean, Δ % of '
             "the baseline mean, Δ 95% CI: Welch's interval of the difference. s/epoch × and "
             "params ×: the cell's over the baseline's; peak MB Δ: the difference of the peaks "
             '(only between runs of one memory kind).', '']
    for axis in _baseline_axes(meta):
        lines += _md_baseline(meta, summary, axis)
    return lines


def _md_baseline(meta: dict, summary: list[dict], axis: str) -> list[str]:
    """Every cell of ``summary`` against its baseline of ``axis``."""
    axes = list(meta['axes'])
    base, s = meta['baselines'][axis], short_axis(axis)
    index = {_cell_key(r, axes): r for r in summary}
    head = [short_axis(a) for a in axes] + [
        f"{meta.get('metric', 'metric')} mean ± std", f'{s}={base}', 'Δ', 'Δ %', 'Δ 95% CI',
        'p', 'p (Holm)', 'verdict', 's/epoch ×', 'peak MB Δ', 'params ×']
    body = [[str(r[a]) for a in axes] + [fmt_mean_std(r)]
            + _vs_cells(r, index.get(_cell_key({**r, axis: base}, axes)), axis)
            for r in summary if r[f'vs_{axis}_verdict'] != 'baseline']
    right = set(range(len(axes), len(head))) - {len(head) - 4}
    return ([f'### vs {s}={base}', '',
             f'Each cell against the cell with {s}={base} and the same other labels.', '']
            + _md_table(head, body, right) + [''])


def _transforms_text(transforms: tuple[str, ...] | None) -> str:
    if transforms is None:
        return 'unknown (a model config this gtpe cannot read)'
    return ' + '.join(f'`{t}`' for t in transforms) if transforms else 'none'


def _md_cost_per_pe(meta: dict, summary: list[dict]) -> list[str]:
    """Precompute cost per set of PE transforms of the cells with runs (only when some cell
    computes one, or its transforms are unknown)."""
    groups: dict[tuple[str, ...] | None, list[dict]] = {}
    for r in summary:
        if r['n'] or r['n_diverged']:  # a cell without runs: nothing known
            groups.setdefault(r['transforms'], []).append(r)
    if all(k == () for k in groups):  # no cell computes a transform
        return []
    body = []
    for transforms, cells in groups.items():
        size = median_of(cells, 'pe_bytes_per_graph')
        body.append([_transforms_text(transforms),
                     ', '.join(cell_title(c, meta['axes']) for c in cells),
                     _fmt_num(median_of(cells, 'precompute_seconds')),
                     _fmt_num(None if size is None else size / 1024)])
    return (['## Cost per PE', '',
             "Grouped by the transforms the cells' runs compute, read from their results.json "
             'config: `model.pe`, plus the RRWP that GRIT (`attn: grit`) adds and the expander '
             'edges that Exphormer (`attn: exphormer`) adds. The cells of a group share one '
             'cached precomputation. precompute s: wall seconds of those transforms over '
             'train+val+test after `dataset.limit` (the graphs the runs used), as stored with '
             'the precompute cache (empty: unknown, a cache entry of an older gtpe); '
             "PE KB/graph: the size of the tensors they add, per graph.", '']
            + _md_table(['transforms', 'cells', 'precompute s', 'PE KB/graph'], body, {2, 3})
            + [''])


def _md_figures(figures: Sequence[str], old_figures: str | None) -> list[str]:
    """Links to the figures drawn with this report; for older ones, when they were drawn."""
    if figures:
        lines = ['## Figures', '']
        for rel in figures:
            if rel.endswith('.png'):
                lines += [f'![{Path(rel).stem}]({rel}) ([svg]({rel[:-4]}.svg))', '']
        return lines
    if old_figures:
        return ['## Figures', '',
                f'Not linked: the figures in `figures/` are from the last complete write '
                f'({old_figures}) and may not match these tables. They are redrawn at the end '
                'of `gtpe bench` and by `gtpe report` without `--no-figures`.', '']
    return []


def _md_problems(meta: dict, rows: list[dict]) -> list[str]:
    """Runs skipped for another config, missing, diverged or without a test value."""
    found = {(r['cell'], r['seed']): r for r in rows}
    seeds = meta.get('seeds') or []
    expected = [(c['cell'], s) for c in meta.get('cells', []) for s in seeds]
    where = ('these folders' if len(meta.get('collected_from') or []) > 1 else 'this folder')
    out = []
    for cell, seed in expected + [k for k in found if k not in set(expected)]:
        r = found.get((cell, seed))
        if r is None:
            out.append(f'- `{cell}` seed {seed}: missing: not in {where} (not run or not '
                       'finished yet, or run by another shard into another folder)')
        elif r['status'] == 'diverged':
            out.append(f"- `{cell}` seed {seed}: diverged ({r['diverged'] or 'no detail'})")
        elif not _finite(r['test']):
            out.append(f'- `{cell}` seed {seed}: no test value (no finite validation metric)')
    skipped = meta.get('skipped_runs') or []
    if skipped:
        out += [f'- {len(skipped)} run(s) skipped: their config is not their cell\'s '
                'experiment (run with other settings; not averaged in):']
        out += [f"  - `{s['run_dir']}`: experiment {s['experiment']}, the cell's is "
                f"{s['expected']}" for s in skipped]
    ok = sum(1 for k in expected if k in found and _finite(found[k]['test'])
             and found[k]['status'] != 'diverged')
    return (['## Diverged and missing runs', '',
             f'{ok} of {len(expected)} runs ({len(meta.get("cells", []))} cells × {len(seeds)} '
             'seeds) finished with a test value.', ''] + (out or ['None.']) + [''])


def render_markdown(out: Path, meta: dict, rows: list[dict], summary: list[dict],
                    figures: Sequence[str] = (), old_figures: str | None = None) -> str:
    """The text of report.md (``figures``: paths relative to ``out`` to embed; ``old_figures``:
    when the figures in ``out/figures/``, not embedded, were drawn)."""
    lines = (_md_reading(meta, summary) + _md_costs_note() + _md_command(Path(out), meta)
             + _md_machine(rows) + _md_summary(meta, summary) + _md_pivot(meta, summary)
             + _md_comparisons(meta, summary) + _md_cost_per_pe(meta, summary)
             + _md_figures(figures, old_figures) + _md_problems(meta, rows))
    return '\n'.join(lines)


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
    vs = [f'vs_{a}_{k}' for a in _baseline_axes(meta) for k in VS_COLUMNS]
    return ['cell', *meta['axes'], *SUMMARY_COLUMNS, *vs]


_FIGURES = ('heatmap', 'bars', 'cost')


def _figures_time(out: Path) -> str | None:
    """When the figures in ``out/figures/`` were drawn (UTC), ``None`` when there are none."""
    times = [p.stat().st_mtime for p in (out / 'figures' / f'{n}.png' for n in _FIGURES)
             if p.is_file()]
    if not times:
        return None
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(max(times)))


def write_report(out: str | os.PathLike, meta: dict, rows: list[dict],
                 figures: bool = True) -> list[dict]:
    """Write ``results.csv`` (one row per run; ``run_dir`` relative to ``out`` when inside it,
    else absolute), ``summary.csv`` (one row per cell), ``report.md`` and, when ``figures``, the
    figures in ``out/figures/`` (:func:`gtpe.train.figures.draw_bench_figures`); every file is
    written atomically. report.md embeds the figures only when they are drawn by this call:
    with ``figures=False`` (the writes during a bench) figures left by an earlier write may not
    match the tables, so report.md names the time they were drawn instead of linking them.
    Returns the summary rows (:func:`summarize`)."""
    out = Path(out)
    summary = summarize(meta, rows)
    results = [{**r, 'run_dir': _relative(r['run_dir'], out)} for r in rows]
    atomic_write_text(out / 'results.csv', _csv_text(results_columns(meta), results))
    atomic_write_text(out / 'summary.csv', _csv_text(summary_columns(meta), summary))
    embedded, old = [], None
    if figures:
        from gtpe.train.figures import draw_bench_figures
        draw_bench_figures(out, meta, summary)
        embedded = [f'figures/{name}.png' for name in _FIGURES]
    else:
        old = _figures_time(out)
    text = render_markdown(out, meta, rows, summary, embedded, old)
    atomic_write_text(out / 'report.md', text)
    return summary
