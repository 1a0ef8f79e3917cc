"""``gtpe bench``: run a grid of experiments (cells x seeds), in parallel or sharded, and report.

The grid file, seeds, parameter budget and baselines: :mod:`gtpe.train.grid`. The output folder
``OUT`` (:mod:`gtpe.train.benchdir`):

- ``bench.json``: the grid's description (axes, labels, cells with their experiment hashes,
  seeds, budget, baselines, metric); written when absent. An existing one must describe the same
  grid (the cells' labels and experiments; the grid path, ``--set`` strings and seeds aside), so
  shards and reruns may share ``OUT``; other seeds are added to it;
- ``runs/<cell>/seed-<s>/``: one :func:`gtpe.train.train` output folder per run, with
  ``cell.json`` (cell, labels, seed, channels, budget, experiment) written before the run starts
  and, for runs in worker processes, ``log.txt`` (their output);
- ``results.csv``, ``summary.csv``, ``report.md`` and ``figures/`` (:mod:`gtpe.train.report`),
  built from every finished run in ``OUT`` under ``OUT/.report.lock``, so the shard that ends
  last leaves the full report. They are rewritten (without figures) after each run, where a
  failure is one warning line, and with figures at the end.

Before any run starts, each distinct set of positional encodings (dataset, ``dataset.limit``,
root, transforms) of the runs to train is computed once in this process (one line each), so the
runs read it from the cache and its ``precompute_seconds`` is measured without contention.

A finished run with the same config (:data:`~gtpe.train.config.MACHINE_KEYS` aside) is reused;
an interrupted one resumes from its checkpoint; a run whose folder holds a run made with another
config, or an ``OUT`` that holds another grid or a bench of an older gtpe, stops the bench before
anything runs. ``overwrite=True`` reruns this grid's runs instead; without a shard it also
replaces another grid's ``bench.json`` and deletes the run folders (those with a ``cell.json``)
that are not runs of the new grid; with a shard it refuses a changed grid. A run is trained only
while this process holds its ``.lock``; a run locked by another process is skipped (not a
failure). A run that diverges (non-finite loss, see :mod:`gtpe.train.loop`) is kept (``status``
``diverged``) and the grid goes on. A run that fails (any error, a :class:`ConfigError` included)
is reported (its error; from a worker, the end of its log) and the others go on;
:class:`BenchFailed` lists the failed runs at the end.

``shard=(i, n)`` runs the cells whose (0-based) index ``c`` in grid order has ``c % n == i - 1``,
each with all its seeds. ``workers > 1`` runs each run in its own process
(:mod:`gtpe.train.workers`: ``threads`` torch threads each, default ``cores // workers``, pinned
to their own cores when there are enough, one GPU per worker slot round robin, with a warning when
workers share GPUs). ``SIGTERM`` stops the bench like Ctrl-C (``KeyboardInterrupt``), workers
included.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtpe.train import benchdir
from gtpe.train import workers as _workers
from gtpe.train._dataclass_io import ConfigError
from gtpe.train.config import ExperimentConfig, parse_override
from gtpe.train.grid import (
    BenchCell,
    BenchRun,
    Grid,
    channels_for_budget,
    check_budget,
    check_seeds,
    expand_grid,
    in_shard,
    load_grid,
    param_count,
    parse_shard,
    plan_runs,
)
from gtpe.train.workers import (
    DIVERGED_EXIT,
    available_cores,
    cpu_sets,
    gpu_for_slot,
    visible_gpus,
    worker_env,
)

__all__ = [
    'BenchCell',
    'BenchFailed',
    'BenchRun',
    'Grid',
    'channels_for_budget',
    'cpu_sets',
    'expand_grid',
    'gpu_for_slot',
    'load_grid',
    'param_count',
    'parse_shard',
    'plan_runs',
    'run_bench',
    'worker_env',
]


class BenchFailed(RuntimeError):
    """Some runs of a bench failed (the others finished and the report was written)."""

    def __init__(self, message: str, failed: list[str]):
        super().__init__(message)
        self.failed = failed


# ---------------------------------------------------------------------------------------------
# progress lines


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m{s % 60:02d}s'
    return f'{s // 3600}h{s % 3600 // 60:02d}m'


def _outcome(results: dict | None) -> str:
    """A run's outcome, the same for a fresh and a reused run."""
    if results is None:
        return 'no results'
    if results.get('status') == 'diverged':
        return f"diverged in epoch {(results.get('diverged') or {}).get('epoch')}"
    from gtpe.train.loop import format_summary
    return format_summary(results)


class _Progress:
    """The parent's start/end lines: ``[j/n]`` (this shard's runs), duration and ETA."""

    def __init__(self, total: int, workers: int, log: Callable[[str], None]):
        self.total, self.workers, self.log = total, workers, log
        self.done, self.trained, self.seconds = 0, 0, 0.0

    def start(self, j: int, run: BenchRun) -> None:
        self.log(f'[{j}/{self.total}] {run.cell.name} seed {run.seed}: start')

    def end(self, j: int, run: BenchRun, what: str, seconds: float | None,
            detail: str = '') -> None:
        self.done += 1
        if seconds is not None:
            self.trained += 1
            self.seconds += seconds
        left = self.total - self.done
        eta = ''
        if left and self.trained:
            per_run = self.seconds / self.trained
            eta = f', ETA {_fmt_seconds(per_run * left / min(self.workers, left))}'
        took = f' in {_fmt_seconds(seconds)}' if seconds is not None else ''
        self.log(f'[{j}/{self.total}] {run.cell.name} seed {run.seed}: {what}{took} '
                 f'({self.done}/{self.total} done{eta})' + (f'\n{detail}' if detail else ''))


# ---------------------------------------------------------------------------------------------
# preparing: options, bench.json, run folders


@dataclass
class _Plan:
    """A prepared bench: what runs here and how."""
    out: Path
    meta: dict
    mine: list[BenchRun]  # this shard's runs, in grid order
    overwrite: bool
    workers: int
    threads: int | None
    progress: bool
    log: Callable[[str], None]
    bar: _Progress
    todo: list[tuple[int, BenchRun]] = field(default_factory=list)  # ([j/n], run)
    failed: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _check_options(workers: Any, threads: Any, shard: Any, seeds: Any,
                   budget_params: Any) -> tuple[Any, Any, Any]:
    """The checked ``(shard, seeds, budget_params)``; :class:`ConfigError` on bad options."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f'--workers: expected a positive integer, got {workers!r}')
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f'--threads: expected a positive integer, got {threads!r}')
    shard = parse_shard(shard)
    if seeds is not None:
        seeds = check_seeds(list(seeds), '--seeds')
    if budget_params is not None:
        budget_params = check_budget(budget_params, '--budget-params')
    return shard, seeds, budget_params


def _warn_overridden(overrides: Sequence[Any], seeds: Sequence[int] | None,
                     budget: int | None, log: Callable[[str], None]) -> None:
    """One warning line per ``--set`` that the seeds or the budget override."""
    keys = {parse_override(o)[0] if isinstance(o, str) else o[0] for o in overrides}
    if 'model.channels' in keys and budget is not None:
        log(f'warning: --set model.channels is ignored: the budget of {budget:,} parameters '
            f"picks each cell's width")
    if 'train.seed' in keys and seeds is not None:
        log(f'warning: --set train.seed is ignored: every cell runs with the seeds '
            f'{", ".join(map(str, seeds))}')


def _prepare_out(out: Path, runs: list[BenchRun], mine: list[BenchRun], meta: dict,
                 overwrite: bool, shard: Any, log: Callable[[str], None]) -> None:
    """Check ``out`` against the grid (nothing written on error), then write ``bench.json`` and,
    for an overwritten grid, delete the old grid's run folders."""
    benchdir.check_old_layout(out)
    if not overwrite:  # first: the clearer message when the user changed a --set
        benchdir.check_run_folders(out, mine)
    changed = benchdir.check_bench_json(out, meta, overwrite, shard)
    benchdir.write_bench_json(out, meta, replace=changed)
    if changed:
        benchdir.prune_runs(out, runs, log)


def _prepare_runs(plan: _Plan) -> None:
    """Write each run's ``cell.json``; log the finished runs, queue the others in ``todo``."""
    for j, run in enumerate(plan.mine, 1):
        run_dir = plan.out / run.rel_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if benchdir.read_json(run_dir / 'cell.json') != run.cell_json():
            benchdir.write_json(run_dir / 'cell.json', run.cell_json())
        results = None if plan.overwrite else benchdir.finished_results(run_dir, run.config)
        if results is None:
            plan.todo.append((j, run))
        else:
            plan.bar.end(j, run, f'already done: {_outcome(results)}', None)


def _prepare(grid: str | os.PathLike, out: Path, overrides: list, seeds: Any, workers: int,
             threads: Any, shard: Any, overwrite: bool, budget_params: Any, progress: bool,
             log: Callable[[str], None]) -> _Plan:
    """Check everything (nothing written on error), then prepare ``out`` and the runs."""
    from gtpe.train import report  # noqa: F401 - before anything is written: a broken install

    shard, seeds, budget_params = _check_options(workers, threads, shard, seeds, budget_params)
    g = load_grid(grid, overrides)
    runs = plan_runs(g, seeds, budget_params)
    _warn_overridden(overrides, seeds if seeds is not None else g.seeds,
                     runs[0].budget_params, log)
    meta = benchdir.bench_meta(g, runs, overrides, str(grid))
    mine = [r for r in runs if in_shard(r.index, shard)]
    _prepare_out(out, runs, mine, meta, overwrite, shard, log)
    if shard is not None:
        cells = len({r.cell.name for r in mine})
        log(f'shard {shard[0]}/{shard[1]}: {cells} of {len(g.cells)} cells, {len(mine)} of '
            f'{len(runs)} runs')
    plan = _Plan(out=out, meta=meta, mine=mine, overwrite=overwrite, workers=workers,
                 threads=threads, progress=progress, log=log,
                 bar=_Progress(len(mine), workers, log))
    _prepare_runs(plan)
    return plan


# ---------------------------------------------------------------------------------------------
# running


def _pe_sets(todo: list[tuple[int, BenchRun]]) -> dict[tuple, ExperimentConfig]:
    """One config per distinct (dataset, limit, root, transforms) of the runs."""
    sets: dict[tuple, ExperimentConfig] = {}
    for _, run in todo:
        c = run.config
        key = (c.dataset.name, c.dataset.limit, c.dataset.root,
               tuple(repr(t) for t in c.model.transforms()))
        sets.setdefault(key, c)
    return sets


def _precompute(plan: _Plan) -> None:
    """Load the data of each distinct PE set once, computing (and caching) its encodings; a
    failure is one warning line (its runs fail with the error)."""
    from gtpe.train import loop

    for (name, limit, _, transforms), config in _pe_sets(plan.todo).items():
        if transforms:
            part = f' (first {limit} graphs per split)' if limit is not None else ''
            plan.log(f'precomputing {", ".join(transforms)} for {name}{part} ...')
        try:
            loop.load_data(config, progress=plan.progress)
        except Exception as exc:  # noqa: BLE001 - the runs report it
            plan.log(f'warning: loading {name} failed ({exc.__class__.__name__}: {exc}); its '
                     f'runs will fail')


def _started(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a started run (resumed, not started again)."""
    return any((run_dir / name).exists() for name in ('results.json', 'checkpoints/last.pt'))


def _claim(plan: _Plan, j: int, run: BenchRun) -> int | None:
    """Lock the run's folder to train it: the lock's file descriptor, or ``None`` (and its line)
    when another process holds the lock or the run is finished by now."""
    run_dir = plan.out / run.rel_dir
    fd = benchdir.try_lock_run(run_dir)
    if fd is None:
        plan.skipped.append(str(run.rel_dir))
        plan.bar.end(j, run, 'running in another process, skipped', None)
        return None
    if plan.overwrite:
        benchdir.clear_run(run_dir)
        return fd
    results = benchdir.finished_results(run_dir, run.config)
    if results is not None:  # finished by another process since we looked
        os.close(fd)
        plan.bar.end(j, run, f'already done: {_outcome(results)}', None)
        return None
    return fd


def _after_run(plan: _Plan) -> None:
    """The report without figures; an error is one warning line (the runs go on)."""
    try:
        benchdir.write_report(plan.out, [plan.out], figures=False, log=plan.log)
    except Exception as exc:  # noqa: BLE001 - the final report is written at the end
        plan.log(f'warning: could not update the report ({exc.__class__.__name__}: {exc}); '
                 f'going on')


def _train_one(plan: _Plan, j: int, run: BenchRun) -> None:
    from gtpe.train import loop

    run_dir = plan.out / run.rel_dir
    plan.bar.start(j, run)
    t0 = time.perf_counter()
    try:
        results = loop.train(run.config, run_dir, resume=_started(run_dir),
                             progress=plan.progress, log=plan.log)
    except loop.TrainingDiverged as exc:
        plan.log(f'  {exc}')
        results = exc.results
    except Exception as exc:  # noqa: BLE001 - one run failed: the others go on
        plan.failed.append((j, str(run.rel_dir)))
        if os.environ.get('GTPE_DEBUG', '') not in ('', '0'):
            import traceback
            traceback.print_exc()
        plan.bar.end(j, run, f'FAILED: {exc.__class__.__name__}: {exc}', time.perf_counter() - t0)
        return
    plan.bar.end(j, run, _outcome(results), time.perf_counter() - t0)
    _after_run(plan)


def _run_in_process(plan: _Plan) -> None:
    import torch

    before = torch.get_num_threads()
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    try:
        for j, run in plan.todo:
            fd = _claim(plan, j, run)
            if fd is None:
                continue
            try:
                _train_one(plan, j, run)
            finally:
                os.close(fd)
    finally:
        torch.set_num_threads(before)


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors='replace').splitlines()
    except OSError:
        return '  (no log)'
    return '\n'.join(f'  | {line}' for line in text[-lines:])


def _worker_done(plan: _Plan, job: _workers.Job, returncode: int, seconds: float) -> None:
    j, run = job.data
    if returncode in (0, DIVERGED_EXIT):
        results = benchdir.read_json(plan.out / run.rel_dir / 'results.json')
        plan.bar.end(j, run, _outcome(results), seconds)
        _after_run(plan)
        return
    plan.failed.append((j, str(run.rel_dir)))
    plan.bar.end(j, run, f'FAILED ({_workers.describe_exit(returncode)})', seconds,
                 f'  the end of {job.log_path}:\n' + _log_tail(job.log_path))


def _gpus(plan: _Plan, slots: int) -> list[str]:
    """The visible GPUs; a warning when the CUDA runs' workers must share them."""
    gpus = visible_gpus()
    if gpus and slots > len(gpus) and any(r.config.train.device != 'cpu' for _, r in plan.todo):
        plan.log(f'warning: {slots} workers share {len(gpus)} GPU{"s" * (len(gpus) > 1)}: the '
                 f'runs on one GPU compete for its memory and time')
    return gpus


def _run_in_workers(plan: _Plan) -> None:
    slots = min(plan.workers, len(plan.todo))
    threads = plan.threads or max(1, len(available_cores()) // plan.workers)
    plan.log(f'{slots} worker process{"es" * (slots > 1)}, {threads} torch '
             f'thread{"s" * (threads > 1)} each')
    cores = cpu_sets(slots, threads, available_cores()) \
        if hasattr(os, 'sched_setaffinity') else None
    gpus = _gpus(plan, slots)
    pending = deque(plan.todo)

    def next_job(slot: int) -> _workers.Job | None:
        while pending:
            j, run = pending.popleft()
            fd = _claim(plan, j, run)
            if fd is None:
                continue
            run_dir = plan.out / run.rel_dir
            spec = {'config': run.config.to_dict(), 'run_dir': str(run_dir.resolve()),
                    'resume': _started(run_dir), 'progress': plan.progress, 'threads': threads,
                    'cpus': cores[slot] if cores else None}
            gpu = gpu_for_slot(slot, gpus) if run.config.train.device != 'cpu' else None
            plan.bar.start(j, run)
            return _workers.Job(argv=_workers.worker_command(spec), env=worker_env(threads, gpu),
                               log_path=run_dir / 'log.txt', keep_fd=fd, data=(j, run))
        return None

    _workers.run_pool(slots, next_job, functools.partial(_worker_done, plan))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """``SIGTERM`` raises ``KeyboardInterrupt`` (in the main thread only), so that it stops the
    bench as Ctrl-C does: worker processes stopped, checkpoints kept; the old handler after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _finish(plan: _Plan) -> list[dict]:
    """The final report (with figures) and its table; :class:`BenchFailed` when runs failed."""
    meta, rows, summary = benchdir.write_report(plan.out, [plan.out], figures=True, log=plan.log)
    if rows:
        plan.log('')
    benchdir.show_report(plan.out, meta, rows, summary, True, plan.log)
    if plan.skipped:
        n = len(plan.skipped)
        plan.log(f'{n} run{"s" * (n > 1)} skipped (running in another process): '
                 f'{", ".join(plan.skipped)}')
    if plan.failed:
        names = [name for _, name in sorted(plan.failed)]
        where = ' (see log.txt in their folders)' if plan.workers > 1 else ''
        raise BenchFailed(f'{len(names)} of {len(plan.mine)} runs failed: {", ".join(names)}'
                          f'{where}', names)
    return rows


def run_bench(grid: str | os.PathLike, out: str | os.PathLike, overrides: Iterable[str] = (),
              seeds: Sequence[int] | None = None, workers: int = 1, threads: int | None = None,
              shard: str | tuple[int, int] | None = None, overwrite: bool = False,
              budget_params: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Run the grid's runs (this shard's) into ``out`` and write the report; returns the rows of
    every finished run in ``out`` (:func:`gtpe.train.report.collect`).

    Everything is checked (grid, seeds, budget, shard, workers, ``out``'s bench.json and run
    folders) before anything is written. See the module docstring for the options.

    Raises:
        ConfigError: bad input (nothing written).
        BenchFailed: some runs failed (the others ran and the report is written).
    """
    log = log or functools.partial(print, flush=True)
    plan = _prepare(grid, Path(out), list(overrides), seeds, workers, threads, shard, overwrite,
                    budget_params, progress, log)
    with _sigterm_interrupts():
        _precompute(plan)
        if workers == 1:
            _run_in_process(plan)
        elif plan.todo:
            _run_in_workers(plan)
    return _finish(plan)
