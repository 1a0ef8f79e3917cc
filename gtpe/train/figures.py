"""Figures of a ``gtpe bench`` (heatmap, bars, cost) and of one run (learning curves).

Drawn on matplotlib's Agg canvas (matplotlib is imported inside the functions, pyplot never), each
saved as PNG (150 dpi) and SVG. The SVG output is deterministic: the same
input gives byte-identical files (fixed ``svg.hashsalt``, no date in the metadata), and its text
is kept as ``<text>`` elements (``svg.fonttype: none``), so labels and values can be searched.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.checkpoint import atomic_write_bytes
from gtpe.train.report import bench_title, cell_title, fmt_mean_std, short_axis

__all__ = ['draw_bench_figures', 'plot_run']

_RC = {'svg.hashsalt': 'gtpe', 'svg.fonttype': 'none', 'font.size': 9,
       'font.family': 'DejaVu Sans', 'axes.spines.top': False, 'axes.spines.right': False}
DPI = 150


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout='constrained')
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, base: Path) -> list[Path]:
    """``base``.png and ``base``.svg, written atomically."""
    paths = []
    for fmt, meta in (('png', {'Software': None}), ('svg', {'Date': None, 'Creator': 'gtpe'})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
        path = base.with_suffix(f'.{fmt}')
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _num(v: Any) -> float:
    """``v`` as a float; NaN for anything that is not a number (``None``, a bool, a string)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _grid(meta: dict, summary: Sequence[dict]) -> tuple[list[str], list[str], dict, str, str]:
    """Rows (first axis), columns (the other axes joined with '/'), {(row, col): summary row} and
    the two axis titles. One axis: a single row; no axis: one cell."""
    axes = list(meta['axes'])
    metric = meta.get('metric', 'metric')

    def key(r: dict) -> tuple[str, str]:
        if not axes:
            return metric, r['cell']
        if len(axes) == 1:
            return metric, str(r[axes[0]])
        return str(r[axes[0]]), '/'.join(str(r[a]) for a in axes[1:])

    cells = {key(r): r for r in summary}
    rows = list(dict.fromkeys(k[0] for k in cells))
    cols = list(dict.fromkeys(k[1] for k in cells))
    row_title = short_axis(axes[0]) if len(axes) >= 2 else ''
    col_title = '/'.join(short_axis(a) for a in (axes[1:] if len(axes) >= 2 else axes))
    return rows, cols, cells, row_title, col_title


def _title(meta: dict) -> str:
    return f'{bench_title(meta)}, mean ± std over seeds'


def draw_heatmap(meta: dict, summary: Sequence[dict]) -> Any:
    """Mean metric per cell (rows: first axis, columns: the other axes), annotated with
    'mean ± std' and n; the better end of the colour map is yellow whatever the direction."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    rows, cols, cells, row_title, col_title = _grid(meta, summary)
    values = np.full((len(rows), len(cols)), np.nan)
    for (r, c), s in cells.items():
        values[rows.index(r), cols.index(c)] = _num(s.get('mean'))
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    cmap = colormaps['viridis' if meta.get('higher_is_better') else 'viridis_r'].with_extremes(
        bad='#dddddd')
    norm = Normalize(lo, hi)
    fig = _figure(max(4.0, 1.5 * len(cols) + 2.5), max(2.2, 0.7 * len(rows) + 1.6))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, norm=norm,
                         edgecolors='white', linewidth=1)
    for (r, c), s in cells.items():
        i, j = rows.index(r), cols.index(c)
        v = values[i, j]
        red, green, blue, _ = cmap(norm(v)) if math.isfinite(v) else (0.87, 0.87, 0.87, 1)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        text = f"{fmt_mean_std(s) or 'n/a'}\nn={s.get('n', 0)}"
        ax.text(j + 0.5, i + 0.5, text, ha='center', va='center', fontsize=8,
                color='white' if dark else 'black')
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols, rotation=30 if len(cols) > 4 else 0)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.invert_yaxis()
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    ax.set_title(_title(meta))
    bar = fig.colorbar(mesh, ax=ax)
    bar.set_label(f"test {meta.get('metric', '')} (yellow = better)")
    return fig


def draw_bars(meta: dict, summary: Sequence[dict]) -> Any:
    """Grouped bars of the mean metric (groups: first axis, colours: the other axes), error bars
    = std, each bar labelled with its n."""
    rows, cols, cells, row_title, col_title = _grid(meta, summary)
    if len(meta['axes']) <= 1:  # one series, one group per label
        rows, cols, cells = cols, rows, {(c, r): s for (r, c), s in cells.items()}
        row_title, col_title = col_title, ''
    width = 0.8 / max(1, len(cols))
    fig = _figure(max(4.5, 0.45 * len(rows) * len(cols) + 2.5), 3.6)
    ax = fig.add_subplot()
    for j, col in enumerate(cols):
        xs, means, stds, ns = [], [], [], []
        for i, row in enumerate(rows):
            s = cells.get((row, col))
            if s is None or s.get('mean') is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            means.append(float(s['mean']))
            stds.append(float(s['std']) if s.get('std') is not None else 0.0)
            ns.append(s.get('n', 0))
        bars = ax.bar(xs, means, width * 0.9, yerr=stds, capsize=3, color=f'C{j % 10}',
                      label=col if len(cols) > 1 else None)
        ax.bar_label(bars, [f'n={n}' for n in ns], padding=2, fontsize=7)
    ax.set_xticks(range(len(rows)), rows)
    ax.set_xlabel(row_title)
    ax.set_ylabel(f"test {meta.get('metric', '')} (mean ± std)")
    ax.set_title(_title(meta))
    if len(cols) > 1:
        ax.legend(title=col_title, fontsize=8, frameon=False, loc='upper left',
                  bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    return fig


def cost_seconds(row: dict) -> float | None:
    """The training cost of a cell: PE precompute seconds + epochs × s/epoch; ``None`` without
    s/epoch. An unknown precompute time counts as 0 (:func:`draw_cost` marks those points)."""
    spe = row.get('seconds_per_epoch')
    if spe is None:
        return None
    return float(row.get('precompute_seconds') or 0.0) + float(spe) * float(row.get('epochs') or 1)


UNKNOWN_PRECOMPUTE = '* precompute time unknown (a PE cache entry of an older gtpe): counted as 0'


def draw_cost(meta: dict, summary: Sequence[dict]) -> Any:
    """Mean metric (error bars = std) against training cost (:func:`cost_seconds`), each point
    labelled with its cell, with a '*' and a footnote (:data:`UNKNOWN_PRECOMPUTE`) when its
    precompute time is unknown; log x axis when the costs spread over more than 10x."""
    axes = list(meta['axes'])
    points = [(cost_seconds(s), s) for s in summary if s.get('mean') is not None]
    points = [(x, s) for x, s in points if x is not None and x > 0]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for k, (x, s) in enumerate(points):
        ax.errorbar([x], [s['mean']], yerr=[s['std'] or 0.0], fmt='o', color=f'C{k % 10}',
                    capsize=3)
        star = '*' if s.get('precompute_seconds') is None else ''
        ax.annotate(cell_title(s, axes) + star, (x, s['mean']), xytext=(5, 4),
                    textcoords='offset points', fontsize=7)
    if any(s.get('precompute_seconds') is None for _, s in points):
        fig.supxlabel(UNKNOWN_PRECOMPUTE, fontsize=7)  # kept clear of the axes by the layout
    xs = [x for x, _ in points]
    if xs and max(xs) > 10 * min(xs):
        ax.set_xscale('log')
    if not points:
        ax.text(0.5, 0.5, 'no cost data (runs without cost in results.json)', ha='center',
                va='center', transform=ax.transAxes)
    ax.set_xlabel('training cost, s (PE precompute + epochs × s/epoch)')
    ax.set_ylabel(f"test {meta.get('metric', '')} (mean ± std)")
    ax.set_title(_title(meta))
    ax.margins(x=0.15, y=0.15)
    return fig


def draw_bench_figures(out: str | os.PathLike, meta: dict,
                       summary_rows: Sequence[dict]) -> list[Path]:
    """Draw ``out/figures/{heatmap,bars,cost}.{png,svg}`` from the summary rows
    (:func:`gtpe.train.report.summarize`); returns the paths written."""
    import matplotlib

    folder = Path(out) / 'figures'
    paths: list[Path] = []
    with matplotlib.rc_context(_RC):
        for name, draw in (('heatmap', draw_heatmap), ('bars', draw_bars), ('cost', draw_cost)):
            paths += _save(draw(meta, summary_rows), folder / name)
    return paths


def _read_metrics(path: Path) -> list[dict]:
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        rows = []
    if not rows:
        raise ConfigError(f'{path}: no epochs recorded (metrics.csv is missing or empty); '
                          'nothing to plot')
    return rows


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _metric_panel(ax: Any, epochs: list[float], rows: list[dict], metric: str,
                  best: Any) -> None:
    """Validation and test metric per epoch, the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    ax.plot(epochs, [_float(r[f'val_{metric}']) for r in rows], color='C1', label=f'val {metric}')
    if f'test_{metric}' in rows[0]:
        ax.plot(epochs, [_float(r[f'test_{metric}']) for r in rows], color='C2',
                label=f'test {metric}')
    if isinstance(best, int):
        ax.axvline(best, color='0.7', linewidth=0.8)
        ax.annotate(f'best epoch {best}', (best, 1.0), xycoords=('data', 'axes fraction'),
                    xytext=(3, -10), textcoords='offset points', fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel(metric)
    ax.legend(frameon=False, fontsize=8)


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Learning curves of one training run from its ``metrics.csv``: train loss and lr (twin
    axis) in the top panel, validation and test metric in the bottom one, the best epoch of
    ``results.json`` (when present) marked. Writes ``run_dir/curves.{png,svg}``, returns their
    paths; :class:`ConfigError` when ``metrics.csv`` is missing or has no rows."""
    import matplotlib

    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir / 'metrics.csv')
    val_col = next((c for c in rows[0] if c.startswith('val_')), None)
    if val_col is None or 'epoch' not in rows[0]:
        raise ConfigError(f"{run_dir / 'metrics.csv'}: no epoch/val_<metric> column; "
                          'not a gtpe metrics file')
    metric = val_col[len('val_'):]
    epochs = [_float(r['epoch']) for r in rows]
    best = None
    try:
        best = json.loads((run_dir / 'results.json').read_text()).get('best_epoch')
    except (OSError, ValueError, AttributeError):
        pass
    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 5.0)
        top, bottom = fig.subplots(2, 1, sharex=True)
        lines = top.plot(epochs, [_float(r.get('train_loss')) for r in rows], color='C0',
                         label='train loss')
        top.set_ylabel('train loss')
        if 'lr' in rows[0]:
            twin = top.twinx()
            twin.spines['right'].set_visible(True)
            lines += twin.plot(epochs, [_float(r['lr']) for r in rows], color='0.5',
                               linestyle='--', label='lr')
            twin.set_ylabel('lr')
        top.legend(lines, [line.get_label() for line in lines], frameon=False, fontsize=8,
                   loc='upper right')
        _metric_panel(bottom, epochs, rows, metric, best)
        if isinstance(best, int):
            top.axvline(best, color='0.7', linewidth=0.8)
        top.set_title(f'{run_dir.parent.name}/{run_dir.name}: learning curves')
        return _save(fig, run_dir / 'curves')
