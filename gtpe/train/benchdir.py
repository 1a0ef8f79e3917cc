"""The output folder ``OUT`` of ``gtpe bench``: ``bench.json``, run folders, locks and the report.

- ``OUT/bench.json`` (:func:`bench_meta`) describes the grid. Two descriptions are the same grid
  (:func:`same_grid`) when they agree on everything but the grid path, the ``--set`` strings and
  the seeds: the cells are compared by their labels and experiment hashes
  (:func:`gtpe.train.config.experiment_hash`, which ignores the seed and
  :data:`~gtpe.train.config.MACHINE_KEYS`), so ``--set train.device=cpu`` or ``--set
  dataset.root=/scratch`` on one shard, or the same sets in another order, is the same grid. A
  run with other seeds adds its seeds to ``bench.json``.
- ``OUT/runs/<cell>/seed-<s>/``: a run folder, with ``cell.json`` and ``.lock``. A process
  trains a run only while it holds the run's lock (:func:`try_lock_run`).
- ``OUT/.report.lock``: held (:func:`out_lock`) while ``bench.json`` or the report is written, so
  that concurrent shards never interleave their writes and the last writer leaves the full report.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gtpe._atomic import atomic_write
from gtpe.train._dataclass_io import ConfigError
from gtpe.train.config import MACHINE_KEYS, ExperimentConfig, config_equal_except, read_yaml
from gtpe.train.grid import BenchRun, Grid

__all__ = [
    'bench_meta',
    'check_bench_json',
    'check_old_layout',
    'check_run_folders',
    'clear_run',
    'finished_results',
    'out_lock',
    'prune_runs',
    'read_json',
    'show_report',
    'try_lock_run',
    'write_bench_json',
    'write_json',
    'write_report',
]

# bench.json keys that do not change which grid it describes
_NOT_IDENTITY = ('grid', 'set', 'seeds')


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ``None`` when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically."""
    text = json.dumps(data, indent=2) + '\n'
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


# ---------------------------------------------------------------------------------------------
# locks


def try_lock_run(run_dir: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock``: the file descriptor that holds
    it (close it to release; a child process that inherits it holds it until it exits), or
    ``None`` when another process holds it."""
    import fcntl

    fd = os.open(run_dir / '.lock', os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``OUT/.report.lock`` (waiting for it)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / '.report.lock', os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# bench.json


def bench_meta(grid: Grid, runs: list[BenchRun], overrides: Sequence[str],
               grid_arg: str) -> dict:
    """The content of ``OUT/bench.json`` (the same for every shard of the grid)."""
    from gtpe.datasets import dataset_info

    info = dataset_info(grid.cells[0].config.dataset.name)
    experiment = {r.cell.name: r.experiment for r in runs}
    return {
        'version': 2, 'grid': grid_arg, 'axes': list(grid.axes),
        'values': {a: list(v) for a, v in grid.values.items()},
        'cells': [{'cell': c.name, 'labels': dict(c.labels), 'experiment': experiment[c.name]}
                  for c in grid.cells],
        'seeds': list(dict.fromkeys(r.seed for r in runs)),
        'budget_params': runs[0].budget_params if runs else grid.budget_params,
        'baselines': dict(grid.baselines), 'metric': info.metric,
        'higher_is_better': bool(info.higher_is_better), 'dataset': info.name,
        'set': [o if isinstance(o, str) else f'{o[0]}={o[1]}' for o in overrides],
    }


def _differences(old: dict, new: dict) -> list[str]:
    """What makes ``old`` another grid than ``new``: bench.json keys, and for the cells the names
    of those whose labels or experiment differ."""
    keys = sorted(k for k in set(old) | set(new)
                  if k not in _NOT_IDENTITY and k != 'cells' and old.get(k) != new.get(k))
    old_cells = {c.get('cell'): c for c in old.get('cells') or [] if isinstance(c, dict)}
    new_cells = {c['cell']: c for c in new['cells']}
    if list(old_cells) != list(new_cells):
        keys.append('cells')
    else:
        changed = [name for name, c in new_cells.items() if old_cells[name] != c]
        if changed:
            shown = ', '.join(changed[:3]) + (f' and {len(changed) - 3} more'
                                              if len(changed) > 3 else '')
            keys.append(f'the config of cell{"s" * (len(changed) > 1)} {shown}')
    return keys


def same_grid(old: dict, new: dict) -> bool:
    """Whether the bench.json contents ``old`` and ``new`` describe the same grid."""
    return not _differences(old, new)


def check_bench_json(out: Path, meta: dict, overwrite: bool, shard: Any) -> bool:
    """Whether ``OUT/bench.json`` describes another grid than ``meta`` (``False`` when absent).
    :class:`ConfigError` when it does and ``overwrite`` is false, when it does and the run is a
    shard, and when it is unreadable."""
    path = out / 'bench.json'
    if not path.exists():
        return False
    old = read_json(path)
    if not isinstance(old, dict) or not isinstance(old.get('cells'), list):
        raise ConfigError(f'{path}: unreadable (not a bench description); use another --out, or '
                          f'remove it')
    diffs = _differences(old, meta)
    if not diffs:
        return False
    if not overwrite:
        raise ConfigError(f'{out}: holds another grid (bench.json differs in {", ".join(diffs)}); '
                          f'use another --out, or --overwrite to replace it')
    if shard is not None:
        raise ConfigError(f"{out}: --overwrite with --shard would leave the other shards' runs "
                          f'of the old grid in OUT; run it without --shard or use another --out')
    return True


def write_bench_json(out: Path, meta: dict, replace: bool) -> None:
    """Write ``OUT/bench.json`` (under :func:`out_lock`): ``meta`` when absent or ``replace``,
    else the existing one with ``meta``'s seeds added."""
    path = out / 'bench.json'
    with out_lock(out):
        old = None if replace else read_json(path)
        if isinstance(old, dict) and same_grid(old, meta):
            seeds = list(old.get('seeds') or [])
            added = [s for s in meta['seeds'] if s not in seeds]
            if not added:
                return
            meta = {**old, 'seeds': seeds + added}
        write_json(path, meta)


# ---------------------------------------------------------------------------------------------
# run folders


def check_old_layout(out: Path) -> None:
    """:class:`ConfigError` when ``out`` holds a bench written by an older gtpe (one folder per
    cell, ``runs/<cell>/results.json``, or ``results.md`` without ``bench.json``), which this one
    would not reuse."""
    old = next(iter(sorted((out / 'runs').glob('*/results.json'))), None)
    if old is None and (out / 'results.md').exists() and not (out / 'bench.json').exists():
        old = out / 'results.md'
    if old is not None:
        raise ConfigError(f'{out}: holds a bench of an older gtpe ({old.relative_to(out)}; runs '
                          f'are now in runs/<cell>/seed-<s>/), which would be run again; use '
                          f'another --out or move it away')


def _folder_config(run_dir: Path) -> dict | None:
    """The config of the run in ``run_dir`` (finished or interrupted), ``None`` when none."""
    results = read_json(run_dir / 'results.json')
    if isinstance(results, dict) and isinstance(results.get('config'), dict):
        return results['config']
    if not (run_dir / 'checkpoints' / 'last.pt').exists():
        return None
    try:
        data = read_yaml(run_dir / 'config.yaml')
    except ConfigError:
        data = None
    if isinstance(data, dict):
        return data
    from gtpe.train.checkpoint import load_checkpoint
    try:
        return load_checkpoint(run_dir / 'checkpoints' / 'last.pt').get('config')
    except Exception:  # noqa: BLE001 - unreadable: the training loop reports it on resume
        return None


def _get(data: Any, path: str) -> Any:
    for part in path.split('.'):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def check_run_folders(out: Path, runs: list[BenchRun]) -> None:
    """:class:`ConfigError` when run folders hold runs made with another config
    (:data:`~gtpe.train.config.MACHINE_KEYS` aside)."""
    conflicts = []
    for run in runs:
        old = _folder_config(out / run.rel_dir)
        if old is None:
            continue
        diffs = config_equal_except(old, run.config.to_dict(), MACHINE_KEYS)
        if diffs:
            conflicts.append((run, old, diffs))
    if not conflicts:
        return
    run, old, diffs = conflicts[0]
    new = run.config.to_dict()
    shown = ', '.join(f'{p}: {_show(_get(old, p))} -> {_show(_get(new, p))}' for p in diffs[:3])
    more = f' and {len(diffs) - 3} more' if len(diffs) > 3 else ''
    n = len(conflicts)
    raise ConfigError(f'{out}: {n} run{"s were" if n > 1 else " was"} made with another config '
                      f'({shown}{more}, e.g. {run.rel_dir}); pass --overwrite to rerun '
                      f'{"them" if n > 1 else "it"}, or use another --out')


def finished_results(run_dir: Path, config: ExperimentConfig) -> dict | None:
    """The results of the run in ``run_dir`` when it finished with ``config``
    (:func:`gtpe.train.report.is_finished`), else ``None``."""
    from gtpe.train import report

    results = read_json(run_dir / 'results.json')
    if not isinstance(results, dict) or not report.is_finished(results, config.to_dict()):
        return None
    return results


def clear_run(run_dir: Path) -> None:
    """Remove everything in ``run_dir`` but its ``.lock`` and ``cell.json``."""
    for path in run_dir.iterdir():
        if path.name in ('.lock', 'cell.json'):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def prune_runs(out: Path, runs: list[BenchRun], log: Callable[[str], None]) -> None:
    """Delete the run folders in ``OUT/runs`` that are not runs of ``runs`` (only folders that
    hold a ``cell.json``; one that another process is training is kept, with a warning)."""
    keep = {run.rel_dir for run in runs}
    removed = 0
    for cell_json in sorted((out / 'runs').glob('*/*/cell.json')):
        run_dir = cell_json.parent
        if run_dir.relative_to(out) in keep:
            continue
        fd = try_lock_run(run_dir)
        if fd is None:
            log(f'warning: {run_dir}: running in another process; not removed')
            continue
        try:
            shutil.rmtree(run_dir)
        finally:
            os.close(fd)
        removed += 1
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the cell's folder, when now empty
    if removed:
        log(f'--overwrite: removed {removed} run folder{"s" * (removed > 1)} of the old grid')


# ---------------------------------------------------------------------------------------------
# report


def write_report(out: Path, dirs: Sequence[Path], figures: bool,
                 log: Callable[[str], None] | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Collect the runs of the bench folders ``dirs`` and write the report into ``out``
    (:mod:`gtpe.train.report`), holding :func:`out_lock`: ``(meta, rows, summary)``."""
    from gtpe.train import report

    with out_lock(out):
        meta, rows = report.collect(dirs) if log is None else report.collect(dirs, log=log)
        return meta, rows, report.write_report(out, meta, rows, figures=figures)


def show_report(out: Path, meta: dict, rows: list[dict], summary: list[dict], figures: bool,
                log: Callable[[str], None]) -> None:
    """Log the summary table (when there are runs) and the files written."""
    from gtpe.train import report

    if rows:
        log(report.format_table(meta, summary))
    written = [out / n for n in ('results.csv', 'summary.csv', 'report.md')]
    if figures:
        written += sorted((out / 'figures').glob('*.png'))
    log('wrote ' + ', '.join(str(p) for p in written))
