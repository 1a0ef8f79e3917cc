"""``gtpe bench``: run a grid of experiments and tabulate/plot the results.

A grid file (``configs/bench/*.yaml``)::

    base: ../zinc/gps+none.yaml      # experiment config, relative to the grid file
    set:                             # overrides applied to every run (optional)
      train.epochs: 30
    grid:                            # cartesian product of the axes (first axis varies slowest)
      pe:                            # axis with named values: label -> overrides
        none: {}
        rwse: {model.pe.rwse: {walk_length: 20, dim: 16}}
      model.attn: [full, linear]     # axis over one key: a list of values

Each run trains into ``OUT/runs/<label>/`` (resumable: a finished run with the same config is
reused, an interrupted one continues from its checkpoint). A run that diverges (non-finite loss,
see :mod:`gtpe.train.loop`) is logged, kept in the table with ``status`` ``diverged`` and no test
value, and counts as finished; the grid goes on with the next run. After every run ``OUT/results.csv``,
``OUT/results.md`` (markdown table, plus a pivot table for two-axis grids) and ``OUT/results.svg``
(bar chart of the test metric, drawn without matplotlib) are rewritten atomically.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.checkpoint import atomic_write_text
from gtpe.train.config import ExperimentConfig, load_config, parse_override, read_yaml

__all__ = ['BenchRun', 'expand_grid', 'render_markdown', 'render_svg', 'run_bench']

_GRID_KEYS = ('base', 'set', 'grid')


@dataclass
class BenchRun:
    """One point of the grid: its labels per axis, directory name and config."""
    labels: dict[str, str]
    name: str
    config: ExperimentConfig


def _label(value: Any) -> str:
    if value is None:
        return 'none'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _overrides_of(spec: Any, where: str) -> list[tuple[str, Any]]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: expected a mapping of key.path: value')
    return [(str(k), v) for k, v in spec.items()]


def expand_grid(grid_path: str | os.PathLike,
                overrides: Iterable[str] = ()) -> tuple[list[str], list[BenchRun]]:
    """Parse a grid file into ``(axis names, runs)``; every run's config is validated."""
    grid_path = Path(grid_path)
    data = read_yaml(grid_path)
    if not isinstance(data, dict):
        raise ConfigError(f'{grid_path}: expected a mapping with keys base, set, grid')
    for key in data:
        if key not in _GRID_KEYS:
            import difflib
            m = difflib.get_close_matches(str(key), _GRID_KEYS, n=1)
            hint = f" (did you mean '{m[0]}'?)" if m else ''
            raise ConfigError(f'{grid_path}: {key}: unknown key{hint}')
    if 'base' not in data or not isinstance(data['base'], str):
        raise ConfigError(f'{grid_path}: base: missing (path of the base experiment config)')
    base_path = Path(data['base'])
    if not base_path.is_absolute():
        base_path = grid_path.parent / base_path
    base = read_yaml(base_path)
    common = _overrides_of(data.get('set'), f'{grid_path}: set')
    cli = [parse_override(o) for o in overrides]

    axes: list[tuple[str, list[tuple[str, list[tuple[str, Any]]]]]] = []
    grid = data.get('grid') or {}
    if not isinstance(grid, dict):
        raise ConfigError(f'{grid_path}: grid: expected a mapping of axes')
    for axis, values in grid.items():
        where = f'{grid_path}: grid.{axis}'
        if isinstance(values, list):
            points = [(_label(v), [(str(axis), v)]) for v in values]
        elif isinstance(values, dict):
            points = [(_label(k), _overrides_of(v, f'{where}.{k}')) for k, v in values.items()]
        else:
            raise ConfigError(f'{where}: expected a list of values or a mapping label -> overrides')
        if not points:
            raise ConfigError(f'{where}: empty axis')
        axes.append((str(axis), points))

    runs = []
    for combo in itertools.product(*[points for _, points in axes]):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combo)}
        sets = list(common) + [kv for _, ov in combo for kv in ov] + cli
        try:
            config = load_config(data=base, overrides=sets)
        except ConfigError as exc:
            where = ', '.join(f'{a}={v}' for a, v in labels.items()) or 'base'
            raise ConfigError(f'{grid_path} [{where}]: {exc}') from None
        name = '_'.join(f'{a.split(".")[-1]}-{v}' for a, v in labels.items()) or 'base'
        runs.append(BenchRun(labels=labels, name=_safe(name), config=config))
    return [a for a, _ in axes], runs


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.+=' else '-' for c in name)


def _fmt(v: Any) -> str:
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return 'nan' if math.isnan(v) else f'{v:.4f}'
    return str(v)


def render_markdown(axes: list[str], rows: list[dict], metric: str, higher: bool) -> str:
    """Markdown table of all runs (and a pivot of the test metric for two-axis grids)."""
    cols = axes + ['best_val', 'test', 'best_epoch', 'epochs', 'num_params', 'seconds', 'status']
    arrow = 'higher is better' if higher else 'lower is better'
    lines = [f'# Benchmark: test {metric} at best validation epoch ({arrow})', '',
             '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows:
        lines.append('| ' + ' | '.join(_fmt(r.get(c, '')) for c in cols) + ' |')
    if len(axes) == 2 and rows:
        a0, a1 = axes
        v0 = list(dict.fromkeys(r[a0] for r in rows))
        v1 = list(dict.fromkeys(r[a1] for r in rows))
        cell = {(r[a0], r[a1]): r['test'] for r in rows}
        lines += ['', f'test {metric}: {a0} (rows) x {a1} (columns)', '',
                  f'| {a0} \\ {a1} | ' + ' | '.join(v1) + ' |', '|' + '---|' * (len(v1) + 1)]
        for x in v0:
            lines.append(f'| {x} | ' + ' | '.join(_fmt(cell[(x, y)]) if (x, y) in cell else ''
                                                  for y in v1) + ' |')
    return '\n'.join(lines) + '\n'


_PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1',
            '#ff9da7', '#9c755f', '#bab0ac']


def render_svg(axes: list[str], rows: list[dict], metric: str, higher: bool) -> str:
    """Grouped bar chart (groups: first axis, colours: second axis) of the test metric, as SVG."""
    if axes:
        group_axis = axes[0]
        series_axis = axes[1] if len(axes) > 1 else None
    else:
        group_axis, series_axis = None, None
    groups = list(dict.fromkeys(r[group_axis] if group_axis else 'base' for r in rows))
    series = list(dict.fromkeys(
        '/'.join(r[a] for a in axes[1:]) if series_axis else metric for r in rows))
    value = {}
    for r in rows:
        g = r[group_axis] if group_axis else 'base'
        s = '/'.join(r[a] for a in axes[1:]) if series_axis else metric
        value[(g, s)] = r['test']
    finite = [v for v in value.values() if isinstance(v, float) and math.isfinite(v)]
    vmax = max(finite + [1e-12]) * 1.1
    bar_w, gap, left, top, plot_h = 22, 18, 70, 50, 240
    group_w = bar_w * len(series) + gap
    width = max(420, left + group_w * max(1, len(groups)) + 20 + 150)
    height = top + plot_h + 90
    title = f'test {metric} ({"higher" if higher else "lower"} is better)'
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11">'),
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="25" font-size="14">{escape(title)}</text>']
    for i in range(6):  # y grid and ticks
        v = vmax * i / 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + group_w * len(groups)}" '
                   f'y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for gi, g in enumerate(groups):
        x0 = left + gi * group_w + gap / 2
        for si, s in enumerate(series):
            v = value.get((g, s))
            if not isinstance(v, float) or not math.isfinite(v):
                continue
            h = plot_h * v / vmax
            x = x0 + si * bar_w
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2}" '
                       f'height="{h:.1f}" fill="{_PALETTE[si % len(_PALETTE)]}">'
                       f'<title>{escape(f"{g} {s}: {v:.4f}")}</title></rect>')
        cx = x0 + bar_w * len(series) / 2
        out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                   f'{escape(g)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + group_w * len(groups)}" '
               f'y2="{top + plot_h}" stroke="black"/>')
    if group_axis:
        out.append(f'<text x="{left + group_w * len(groups) / 2:.1f}" y="{top + plot_h + 36}" '
                   f'text-anchor="middle">{escape(group_axis)}</text>')
    lx = left + group_w * max(1, len(groups)) + 20
    if series_axis:
        out.append(f'<text x="{lx}" y="{top}">{escape("/".join(axes[1:]))}</text>')
    for si, s in enumerate(series):
        y = top + 14 + si * 16
        out.append(f'<rect x="{lx}" y="{y - 9}" width="10" height="10" '
                   f'fill="{_PALETTE[si % len(_PALETTE)]}"/>')
        out.append(f'<text x="{lx + 14}" y="{y}">{escape(s)}</text>')
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def _write_outputs(out: Path, axes: list[str], rows: list[dict], metric: str,
                   higher: bool) -> None:
    cols = ['name'] + axes + ['metric', 'best_val', 'test', 'best_epoch', 'epochs', 'num_params',
                              'seconds', 'status']
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator='\n', extrasaction='ignore')
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(out / 'results.csv', buf.getvalue())
    atomic_write_text(out / 'results.md', render_markdown(axes, rows, metric, higher))
    atomic_write_text(out / 'results.svg', render_svg(axes, rows, metric, higher))


def run_bench(grid_path: str | os.PathLike, out_dir: str | os.PathLike,
              overrides: Iterable[str] = (), progress: bool = True,
              log: Any | None = print) -> list[dict]:
    """Run every point of the grid sequentially; returns the result rows."""
    from gtpe.train.loop import TrainingDiverged, format_summary, train

    axes, runs = expand_grid(grid_path, overrides)
    out = Path(out_dir)
    rows: list[dict] = []
    for i, run in enumerate(runs):
        run_dir = out / 'runs' / run.name
        log(f'[{i + 1}/{len(runs)}] {run.name}')
        results = _finished(run_dir, run.config)
        if results is None:
            resume = (run_dir / 'checkpoints' / 'last.pt').exists()  # interrupted earlier
            try:
                results = train(run.config, run_dir, resume=resume, progress=progress, log=log)
            except TrainingDiverged as exc:
                log(f'  {exc}')
                results = exc.results
        elif results.get('status') == 'diverged':
            log(f"  already done: diverged in epoch {results['diverged']['epoch']}")
        else:
            log(f'  already done: {format_summary(results)}')
        rows.append({'name': run.name, **run.labels, 'metric': results['metric'],
                     'status': results.get('status', 'completed'),
                     'best_val': results['best_val'], 'test': results['test'],
                     'best_epoch': results['best_epoch'], 'epochs': results['epochs'],
                     'num_params': results['num_params'], 'seconds': results['seconds']})
        _write_outputs(out, axes, rows, results['metric'], results['higher_is_better'])
    if rows:
        log(f'wrote {out / "results.csv"}, {out / "results.md"}, {out / "results.svg"}')
    return rows


def _finished(run_dir: Path, config: ExperimentConfig) -> dict | None:
    path = run_dir / 'results.json'
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if results.get('config') != config.to_dict():
        return None
    if results.get('epochs') == config.train.epochs or results.get('status') == 'diverged':
        return results
    return None
