"""The ``gtpe`` command.

::

    gtpe datasets                                  table of the known datasets
    gtpe data describe NAME [--json] [--root DIR]  statistics of one dataset
    gtpe train CONFIG [--set key=value ...] [--out DIR] [--resume | --overwrite] [--quiet]
               [--threads N]
    gtpe evaluate DIR [--split test] [--checkpoint best|last] [--json]
                                                   metric of a trained run on a split
    gtpe precompute CONFIG [--set key=value ...]   fill the PE cache of CONFIG's dataset
    gtpe bench GRID --out DIR [--set key=value ...] [--seeds S ...] [--budget-params N]
               [--workers N] [--threads T] [--shard i/n] [--overwrite] [--quiet]
                                                   run a grid of configs (cells x seeds), report
    gtpe report DIR [DIR ...] [--out DIR] [--no-figures]
                                                   report of bench folders (e.g. merged shards)
    gtpe plot RUN_DIR                              learning curves of one run (curves.png/.svg)

Bad input (unknown config key, missing file, unknown dataset, unreadable mirror file, corrupt
checkpoint, ...) prints one line ``gtpe: error: ...`` on stderr and exits with status 2; a
training run that diverged (non-finite loss) prints one line and exits with status 3; ``gtpe
bench`` exits with status 1 when some runs failed (the others finished and were reported);
``GTPE_DEBUG=1`` shows the traceback. Multi-process training: ``torchrun --nproc_per_node=N -m gtpe.cli train ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ['UsageError', 'main']


_EXAMPLES = '''examples:
  gtpe datasets
  gtpe data describe zinc --json
  gtpe train configs/zinc/gps+rwse.yaml --set train.epochs=3 --out runs/demo
  gtpe train configs/zinc/gps+rwse.yaml --out runs/demo --resume
  gtpe evaluate runs/demo --split test --json
  gtpe precompute configs/zinc/gps+lappe.yaml
  gtpe bench configs/bench/zinc_pe.yaml --out runs/bench/zinc_pe --workers 2
  gtpe bench configs/bench/zinc_pe_models.yaml --out runs/bench/models --shard 1/2
  gtpe report runs/bench/models-a runs/bench/models-b --out runs/bench/models
  gtpe plot runs/bench/zinc_pe/runs/pe-none_model-gps-full/seed-0
  torchrun --nproc_per_node=2 -m gtpe.cli train configs/zinc/gps+rwse.yaml   (DDP)

bad input prints one line "gtpe: error: ..." (exit status 2; 3: the training run diverged;
1: some bench runs failed); GTPE_DEBUG=1 shows tracebacks.'''


class UsageError(Exception):
    """Bad command-line usage (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        sub = self.prog.partition(' ')[2]  # 'gtpe train' -> 'train'
        raise UsageError(f'{sub + ": " if sub else ""}{message} (see --help)')


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog='gtpe', description='Graph transformers and positional encodings for PyG.',
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES)
    from gtpe import __version__
    p.add_argument('--version', action='version', version=f'gtpe {__version__}')
    sub = p.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)

    s = sub.add_parser('datasets', help='list the known datasets')
    s.add_argument('--root', help='data root (default: $GTPE_DATA_ROOT or ./datasets)')

    s = sub.add_parser('data', help='inspect a dataset')
    dsub = s.add_subparsers(dest='data_command', metavar='ACTION', parser_class=_Parser)
    d = dsub.add_parser('describe', help='statistics of one dataset')
    d.add_argument('name')
    d.add_argument('--json', action='store_true', help='print JSON')
    d.add_argument('--root', help='data root (default: $GTPE_DATA_ROOT or ./datasets)')

    def add_set(parser):
        parser.add_argument('--set', dest='overrides', action='append', default=[],
                            metavar='KEY=VALUE',
                            help='override a config value, e.g. model.pe.rwse.dim=8 (repeatable; '
                                 'values are YAML)')
        parser.add_argument('--threads', type=int, metavar='N',
                            help='CPU threads for torch (default: torch\'s own choice; 1 is '
                                 'fastest for small models on a busy machine)')

    s = sub.add_parser('train', help='train a model from an experiment config')
    s.add_argument('config', help='experiment YAML (configs/<dataset>/<model>+<pe>.yaml)')
    add_set(s)
    s.add_argument('--out', help='output folder (default: runs/<dataset>/<config name>)')
    g = s.add_mutually_exclusive_group()
    g.add_argument('--resume', action='store_true',
                   help='continue the run in --out from its last checkpoint')
    g.add_argument('--overwrite', action='store_true', help='discard a previous run in --out')
    s.add_argument('--quiet', action='store_true', help='no progress bars')

    s = sub.add_parser('evaluate', help='evaluate a trained run on a split')
    s.add_argument('run', metavar='DIR', help='the --out folder of `gtpe train`')
    s.add_argument('--split', choices=('train', 'val', 'test'), default='test',
                   help='split to evaluate (default: test)')
    s.add_argument('--checkpoint', choices=('best', 'last'), default='best',
                   help='best validation epoch (default) or last finished epoch')
    s.add_argument('--json', action='store_true', help='print JSON')
    s.add_argument('--quiet', action='store_true', help='no progress bars')

    s = sub.add_parser('precompute', help="compute and cache a config's positional encodings")
    s.add_argument('config')
    add_set(s)
    s.add_argument('--quiet', action='store_true', help='no progress bars')

    s = sub.add_parser('bench', help='run a grid of experiments (cells x seeds); write a report')
    s.add_argument('grid', help='grid YAML (configs/bench/*.yaml)')
    s.add_argument('--out', required=True, help='output folder')
    add_set(s)
    s.add_argument('--seeds', nargs='+', metavar='S',
                   help="seeds of every cell, e.g. '0 1 2' or '0,1,2' (default: the grid's "
                        "seeds, else the config's train.seed)")
    s.add_argument('--budget-params', type=int, metavar='N',
                   help='per cell, the widest model.channels with at most N parameters')
    s.add_argument('--workers', type=int, default=1, metavar='N',
                   help='runs at a time (default 1: in this process); N > 1: each run in its '
                        'own process with --threads torch threads (default: cores // N)')
    s.add_argument('--shard', metavar='i/n',
                   help='run only shard i of n (numbered from 1): the cells whose index in grid '
                        'order is i-1 modulo n, each with all its seeds; shards may share --out')
    s.add_argument('--overwrite', action='store_true',
                   help="rerun this grid's (shard's) runs in --out; without --shard, a changed "
                        "grid replaces the old one and its run folders")
    s.add_argument('--quiet', action='store_true', help='no progress bars')

    s = sub.add_parser('report', help='tables, statistics and figures of bench output folders')
    s.add_argument('dirs', nargs='+', metavar='DIR', help='`gtpe bench --out` folders (shards)')
    s.add_argument('--out', help='where to write the report (default: the first DIR)')
    s.add_argument('--no-figures', action='store_true', help='no figures (faster)')

    s = sub.add_parser('plot', help='learning curves of one training run')
    s.add_argument('run', metavar='RUN_DIR', help='a `gtpe train --out` folder (or a bench run)')
    return p


def _default_out(config_path: str, dataset: str) -> Path:
    return Path('runs') / dataset / Path(config_path).stem


def _cmd_datasets(args) -> int:
    from gtpe.datasets import datasets_table
    print(datasets_table(args.root))
    return 0


def _cmd_data(args) -> int:
    if args.data_command != 'describe':
        raise UsageError('gtpe data: expected an action: describe')
    from gtpe.datasets import describe
    info = describe(args.name, root=args.root)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(str(k)) for k in info)
        for key, value in info.items():
            print(f'{key:<{width}}  {value}')
    return 0


def _cmd_train(args) -> int:
    from gtpe.train.config import load_config
    from gtpe.train.loop import train
    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_out(args.config, config.dataset.name)
    train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _cmd_evaluate(args) -> int:
    from gtpe.train.run import evaluate_run
    res = evaluate_run(args.run, split=args.split, checkpoint=args.checkpoint,
                       progress=not args.quiet)
    if args.json:
        print(json.dumps(res, indent=2, allow_nan=False))
    else:
        value = 'nan' if res['value'] is None else f"{res['value']:.6g}"
        print(f"{res['split']} {res['metric']}: {value} ({res['run']}, {res['checkpoint']}.pt, "
              f"epoch {res['epoch']})")
    return 0


def _cmd_precompute(args) -> int:
    import time

    from gtpe.train.config import load_config
    from gtpe.train.loop import load_data
    config = load_config(args.config, args.overrides)
    transforms = list(config.model.transforms())
    t0 = time.perf_counter()
    _, splits = load_data(config, progress=not args.quiet)
    sizes = ', '.join(f'{k} {len(v)}' for k, v in splits.items())
    names = ', '.join(repr(t) for t in transforms) or 'no transforms'
    print(f'{config.dataset.name}: {names} ready ({sizes} graphs, '
          f'{time.perf_counter() - t0:.1f}s)')
    return 0


def _parse_seeds(values: list[str] | None) -> list[int] | None:
    """``['0', '1,2']`` -> ``[0, 1, 2]`` (``--seeds 0 1 2`` or ``--seeds 0,1,2``)."""
    if values is None:
        return None
    seeds = []
    for text in (t for v in values for t in v.split(',')):
        try:
            seeds.append(int(text.strip()))
        except ValueError:
            raise UsageError(f'--seeds: expected integers, got {text.strip()!r}') from None
    return seeds


def _cmd_bench(args) -> int:
    from gtpe.train.bench import BenchFailed, run_bench
    try:
        run_bench(args.grid, args.out, overrides=args.overrides, seeds=_parse_seeds(args.seeds),
                  workers=args.workers, threads=args.threads, shard=args.shard,
                  overwrite=args.overwrite, budget_params=args.budget_params,
                  progress=not args.quiet)
    except BenchFailed as exc:
        print(f'gtpe: error: {exc}', file=sys.stderr)
        return 1
    return 0


def _cmd_report(args) -> int:
    from gtpe.train import benchdir
    out = Path(args.out) if args.out else Path(args.dirs[0])
    figures = not args.no_figures
    meta, rows, summary = benchdir.write_report(out, [Path(d) for d in args.dirs], figures)
    benchdir.show_report(out, meta, rows, summary, figures, print)
    return 0


def _cmd_plot(args) -> int:
    from gtpe.train.figures import plot_run
    for path in plot_run(args.run):
        print(path)
    return 0


_USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ValueError, OSError)


def passive_openmp_waits() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, before torch loads its OpenMP runtime.

    With the default (active) policy, an OpenMP thread spins between parallel regions; when
    another process holds a core (a data loader, a second run, a shared node), the spinning
    threads fight it and a training step of these small models became 15-20x slower on a busy
    2-core machine (measured with ``benchmarks/train_bench.py --threads 2`` under load: gtpe 514
    -> 28 ms/step, PyG's GPSConv 641 -> 49 ms/step).  A no-op once torch is imported (the
    runtime reads the variable when it starts), so :func:`main` calls it first."""
    if 'torch' not in sys.modules:
        os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gtpe`` console script; returns the exit status."""
    passive_openmp_waits()
    debug = os.environ.get('GTPE_DEBUG', '') not in ('', '0')
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args, 'threads', None) is not None:
            if args.threads < 1:
                raise UsageError(f'--threads: expected a positive integer, got {args.threads}')
            import torch
            torch.set_num_threads(args.threads)
        handler = {'datasets': _cmd_datasets, 'data': _cmd_data, 'train': _cmd_train,
                   'evaluate': _cmd_evaluate, 'precompute': _cmd_precompute,
                   'bench': _cmd_bench, 'report': _cmd_report, 'plot': _cmd_plot}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print('gtpe: interrupted (a training run continues with --resume, a bench when run '
              'again)', file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - one clear line, never a traceback wall
        if debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        loop = sys.modules.get('gtpe.train.loop')  # imported by `train` (not here: light start)
        if loop is not None and isinstance(exc, loop.TrainingDiverged):
            from gtpe.train.workers import DIVERGED_EXIT
            print(f'gtpe: error: {message}', file=sys.stderr)
            return DIVERGED_EXIT
        if isinstance(exc, _USER_ERRORS):
            if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
                message = f'{exc.filename}: {message}'
            print(f'gtpe: error: {message}', file=sys.stderr)
            return 2
        hint = '' if debug else ' (set GTPE_DEBUG=1 for the traceback)'
        print(f'gtpe: error: internal error: {exc.__class__.__name__}: {message}{hint}',
              file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
