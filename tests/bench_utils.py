"""Helpers of the ``gtpe bench`` tests: a tiny ZINC grid (32 graphs per split, 1 epoch,
16 channels, 1 layer), the command in this process, and results.csv/summary.csv rows without the
columns that depend on the machine's load or on where the run lives."""
import contextlib
import csv
import io
from pathlib import Path

import yaml

from gtpe.cli import main

BASE = {
    'dataset': {'name': 'zinc', 'limit': 32},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'pool': 'add'},
    'train': {'epochs': 1, 'batch_size': 16, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu',
              'seed': 5},
}
GRID = ('base: base.yaml\n'
        'grid:\n'
        '  pe:\n'
        '    none: {}\n'
        '    rwse: {model.pe.rwse: {walk_length: 6, dim: 4}}\n'
        'seeds: [0, 1]\n')
ONE_CELL = 'base: base.yaml\ngrid:\n  pe: {none: {}}\nseeds: [0]\n'


def write_grid(folder: Path, grid: str = GRID, base: dict = BASE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'base.yaml').write_text(yaml.safe_dump(base))
    (folder / 'grid.yaml').write_text(grid)
    return folder / 'grid.yaml'


def gtpe(*argv) -> tuple[int, str, str]:
    """``gtpe ARGV`` in this process (usable outside a test's capsys): (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def volatile(column: str) -> bool:
    """Columns that depend on the machine's load (time, memory) or on where the run lives."""
    return column == 'run_dir' or 'seconds' in column or column.startswith('peak_memory')


def stable(rows: list[dict]) -> list[dict]:
    """results.csv/summary.csv rows without the volatile columns, sorted by cell and seed."""
    return sorted(({k: v for k, v in r.items() if not volatile(k)} for r in rows),
                  key=lambda r: (r['cell'], int(r.get('seed') or 0)))
