"""The output folder of ``gtpe bench`` (:mod:`gtpe.train.benchdir`): bench.json identity, seeds
added, refusals, an older layout, pruning an overwritten grid's runs, run locks and the report
lock. No training."""
import json
import os
import threading
import time

import pytest
from bench_utils import GRID, write_grid

from gtpe.train import benchdir
from gtpe.train.config import ConfigError
from gtpe.train.grid import load_grid, plan_runs


def grid_meta(tmp_path, overrides=(), seeds=None, text=GRID):
    grid = load_grid(write_grid(tmp_path / 'grid', text), overrides)
    runs = plan_runs(grid, seeds)
    return runs, benchdir.bench_meta(grid, runs, list(overrides), 'grid.yaml')


def test_bench_json_identity_is_the_cells_not_the_sets(tmp_path):
    runs, meta = grid_meta(tmp_path)
    assert [c['experiment'] for c in meta['cells']] == [runs[0].experiment, runs[2].experiment]
    out = tmp_path / 'out'
    benchdir.write_bench_json(out, meta, replace=False)
    # machine keys, the same sets in another order, another grid path: the same grid
    _, machine = grid_meta(tmp_path, ['train.device=auto', 'dataset.root=/scratch',
                                      'train.num_workers=2'])
    _, a = grid_meta(tmp_path, ['train.lr=0.01', 'train.epochs=2'])
    _, b = grid_meta(tmp_path, ['train.epochs=2', 'train.lr=0.01'])
    assert machine['set'] != meta['set'] and benchdir.same_grid(meta, machine)
    assert a['set'] != b['set'] and benchdir.same_grid(a, b)
    assert not benchdir.check_bench_json(out, {**machine, 'grid': 'other.yaml'}, False, None)
    # a real change is refused, naming the cells
    with pytest.raises(ConfigError, match=r'holds another grid \(bench.json differs in the config '
                                          r'of cells pe-none, pe-rwse\); use another --out, or '
                                          r'--overwrite to replace it'):
        benchdir.check_bench_json(out, a, False, None)
    _, fewer = grid_meta(tmp_path, text=GRID.replace('    rwse', '    #'))
    with pytest.raises(ConfigError, match='differs in values, cells'):
        benchdir.check_bench_json(out, fewer, False, None)
    assert benchdir.check_bench_json(out, a, True, None)  # --overwrite: replace it
    with pytest.raises(ConfigError, match="--overwrite with --shard would leave the other shards' "
                                          "runs of the old grid in OUT; run it without --shard"):
        benchdir.check_bench_json(out, a, True, (1, 2))
    assert not benchdir.check_bench_json(out, meta, True, (1, 2))  # the same grid: fine


def test_other_seeds_are_added_to_bench_json(tmp_path):
    out = tmp_path / 'out'
    _, meta = grid_meta(tmp_path)
    benchdir.write_bench_json(out, meta, replace=False)
    _, more = grid_meta(tmp_path, seeds=[5, 1])
    assert benchdir.same_grid(meta, more)
    benchdir.write_bench_json(out, more, replace=False)
    assert json.loads((out / 'bench.json').read_text())['seeds'] == [0, 1, 5]
    _, other = grid_meta(tmp_path, ['train.lr=0.01'], seeds=[9])
    benchdir.write_bench_json(out, other, replace=True)
    assert json.loads((out / 'bench.json').read_text()) == other


def test_unreadable_bench_json(tmp_path):
    _, meta = grid_meta(tmp_path)
    out = tmp_path / 'out'
    out.mkdir()
    for text in ('{"cells": [', '[1, 2]'):
        (out / 'bench.json').write_text(text)
        with pytest.raises(ConfigError, match=r'bench.json: unreadable \(not a bench '
                                              r'description\)'):
            benchdir.check_bench_json(out, meta, False, None)


@pytest.mark.parametrize('files', [['runs/pe-none/results.json'], ['results.md'],
                                   ['results.md', 'runs/pe-none/metrics.csv']])
def test_a_bench_of_an_older_gtpe_is_named(tmp_path, files):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{}')
    with pytest.raises(ConfigError, match=f'holds a bench of an older gtpe \\({files[0]}; runs '
                                          f'are now in runs/<cell>/seed-<s>/\\)'):
        benchdir.check_old_layout(tmp_path)


def test_no_older_layout_in_a_current_folder(tmp_path):
    (tmp_path / 'runs' / 'pe-none' / 'seed-0').mkdir(parents=True)
    (tmp_path / 'runs' / 'pe-none' / 'seed-0' / 'results.json').write_text('{}')
    (tmp_path / 'bench.json').write_text('{}')
    (tmp_path / 'results.md').write_text('')
    benchdir.check_old_layout(tmp_path)  # no error


def test_run_lock_is_exclusive(tmp_path):
    fd = benchdir.try_lock_run(tmp_path)
    assert fd is not None and benchdir.try_lock_run(tmp_path) is None
    os.close(fd)
    fd = benchdir.try_lock_run(tmp_path)
    assert fd is not None
    os.close(fd)


def test_clear_run_keeps_the_lock_and_cell_json(tmp_path):
    for name in ('.lock', 'cell.json', 'results.json', 'log.txt', 'checkpoints/last.pt'):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('x')
    benchdir.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.lock', 'cell.json']


def test_prune_removes_only_other_bench_runs(tmp_path):
    runs, _ = grid_meta(tmp_path, seeds=[0])
    out = tmp_path / 'out'
    for rel in ('runs/pe-none/seed-0', 'runs/pe-none/seed-1', 'runs/pe-old/seed-0',
                'runs/pe-busy/seed-0'):
        (out / rel).mkdir(parents=True)
        (out / rel / 'cell.json').write_text('{}')
        (out / rel / 'results.json').write_text('{}')
    (out / 'runs' / 'notes' / 'seed-0').mkdir(parents=True)  # not a bench run: no cell.json
    (out / 'runs' / 'README').write_text('mine')
    busy = benchdir.try_lock_run(out / 'runs' / 'pe-busy' / 'seed-0')
    lines = []
    try:
        benchdir.prune_runs(out, runs, lines.append)
    finally:
        os.close(busy)
    left = sorted(str(p.relative_to(out)) for p in (out / 'runs').glob('*/*'))
    assert left == ['runs/notes/seed-0', 'runs/pe-busy/seed-0', 'runs/pe-none/seed-0']
    assert (out / 'runs' / 'README').read_text() == 'mine' and not (out / 'runs/pe-old').exists()
    assert lines == [f'warning: {out}/runs/pe-busy/seed-0: running in another process; not '
                     f'removed', '--overwrite: removed 2 run folders of the old grid']


def test_report_writes_hold_the_report_lock(tmp_path, monkeypatch):
    from gtpe.train import report
    active, most = [0], [0]

    def slow_collect(dirs, log=None):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.2)
        active[0] -= 1
        return {'axes': []}, []

    monkeypatch.setattr(report, 'collect', slow_collect)
    monkeypatch.setattr(report, 'write_report', lambda out, meta, rows, figures: [])
    threads = [threading.Thread(target=benchdir.write_report, args=(tmp_path, [tmp_path], False))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and (tmp_path / '.report.lock').is_file()
