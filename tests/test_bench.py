"""``gtpe bench``: seeds, parameter budget, baselines, bad input, shards, worker processes,
reuse / resume / overwrite, diverged and failed runs, and the ``report`` / ``plot`` commands.
Tiny ZINC runs (32 graphs per split, 1 epoch, 16 channels, 1 layer, 1 thread)."""
import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from cli_utils import one_line, run_main

from gtpe.cli import main
from gtpe.datasets import dataset_info
from gtpe.train import bench
from gtpe.train.bench import (
    channels_for_budget,
    cpu_sets,
    gpu_for_slot,
    load_grid,
    param_count,
    parse_shard,
    plan_runs,
    run_bench,
    worker_env,
)
from gtpe.train.config import ConfigError, load_config
from gtpe.train.loop import build_model, train

REPO = Path(__file__).resolve().parents[1]
BASE = {
    'dataset': {'name': 'zinc', 'limit': 32},
    'model': {'channels': 16, 'num_layers': 1, 'heads': 2, 'pool': 'add'},
    'train': {'epochs': 1, 'batch_size': 16, 'lr': 3e-3, 'scheduler': 'none', 'device': 'cpu'},
}
GRID = ('base: base.yaml\n'
        'grid:\n'
        '  pe:\n'
        '    none: {}\n'
        '    rwse: {model.pe.rwse: {walk_length: 6, dim: 4}}\n'
        'seeds: [0, 1]\n')
# columns that depend on the machine's load or on where the run lives
VOLATILE = {'seconds', 'seconds_per_epoch', 'train_seconds_per_epoch', 'peak_memory_mb',
            'precompute_seconds', 'run_dir'}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def stable(rows: list[dict]) -> list[dict]:
    """results.csv rows without the volatile columns, sorted by cell and seed."""
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows),
                  key=lambda r: (r['cell'], int(r['seed'])))


def budget_between(grid: Path) -> int:
    """A budget whose widest width is 24 for the first cell (16 is the base's)."""
    config = load_grid(grid).cells[0].config
    return param_count(config, 24) + 1


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The tiny grid (2 cells x 2 seeds) with a budget, run in this process."""
    folder = tmp_path_factory.mktemp('ref')
    grid = write_grid(folder)
    budget = budget_between(grid)
    out = folder / 'out'
    code, stdout, err = gtpe('bench', grid, '--out', out, '--budget-params', budget,
                             '--threads', 1, '--quiet')
    assert code == 0, err
    return {'grid': grid, 'out': out, 'budget': budget, 'stdout': stdout}


# ---------------------------------------------------------------------------------------------
# seeds, budget, baselines, outputs


def test_seeds_expand_and_each_run_has_its_seed(reference):
    out = reference['out']
    meta = json.loads((out / 'bench.json').read_text())
    assert meta['seeds'] == [0, 1] and meta['axes'] == ['pe']
    assert meta['cells'] == [{'cell': 'pe-none', 'labels': {'pe': 'none'}},
                             {'cell': 'pe-rwse', 'labels': {'pe': 'rwse'}}]
    assert meta['baselines'] == {'pe': 'none'} and meta['metric'] == 'mae'
    assert meta['budget_params'] == reference['budget'] and meta['dataset'] == 'zinc'
    for cell in ('pe-none', 'pe-rwse'):
        for seed in (0, 1):
            run_dir = out / 'runs' / cell / f'seed-{seed}'
            results = json.loads((run_dir / 'results.json').read_text())
            assert results['config']['train']['seed'] == seed
            info = json.loads((run_dir / 'cell.json').read_text())
            assert info['cell'] == cell and info['seed'] == seed
            assert info['labels'] == {'pe': cell[3:]}
            assert info['budget_params'] == reference['budget']
            assert info['channels'] == results['config']['model']['channels']
    rows = read_rows(out / 'results.csv')
    for r in rows:
        results = json.loads((out / r['run_dir'] / 'results.json').read_text())
        assert float(r['test']) == results['test'] and r['metric'] == 'mae'
    assert [(r['cell'], r['seed']) for r in rows] == [
        ('pe-none', '0'), ('pe-none', '1'), ('pe-rwse', '0'), ('pe-rwse', '1')]
    # seeds: the grid's, else the base's train.seed; --seeds (a list or comma list) wins
    grid = load_grid(reference['grid'])
    assert [r.seed for r in plan_runs(grid)] == [0, 1, 0, 1]
    assert [r.seed for r in plan_runs(grid, seeds=[7])] == [7, 7]
    grid.seeds = None
    assert [r.config.train.seed for r in plan_runs(grid)] == [0, 0]


def test_budget_picks_the_largest_width_and_reports_num_params(reference):
    out, budget = reference['out'], reference['budget']
    info = dataset_info('zinc')
    for r in read_rows(out / 'results.csv'):
        run_dir = out / 'runs' / r['cell'] / f"seed-{r['seed']}"
        config = load_config(run_dir / 'config.yaml')
        channels = config.model.channels
        assert int(r['channels']) == channels and channels % config.model.heads == 0
        assert channels > config.model.pe.concat_dim
        model = build_model(config, info)
        assert int(r['num_params']) == sum(p.numel() for p in model.parameters()) <= budget
        assert param_count(config, channels + config.model.heads) > budget  # the largest
    assert read_rows(out / 'results.csv')[0]['channels'] == '24'


def test_budget_search_without_attention_and_too_small(tmp_path, monkeypatch):
    import gtpe.datasets

    def no_data(*args, **kwargs):
        raise AssertionError('the budget search loaded data')

    monkeypatch.setattr(gtpe.datasets, 'load_dataset', no_data)
    config = load_config(data=BASE, overrides=['model.attn=null', 'model.pe.rwse.dim=4',
                                               'model.channels=7'])
    for budget in (5_000, 20_000, 123_457):
        c = channels_for_budget(config, budget)
        assert param_count(config, c) <= budget < param_count(config, c + 1)
    with pytest.raises(ConfigError, match='smallest model.channels .5. has'):
        channels_for_budget(config, 100, 'cell x')


def test_budget_from_the_grid_file_and_the_option_wins(tmp_path):
    grid = load_grid(write_grid(tmp_path, GRID + 'budget: {params: 20000}\n'))
    assert grid.budget_params == 20_000
    runs = plan_runs(grid)
    assert runs[0].budget_params == 20_000 and runs[0].config.model.channels == runs[0].channels
    assert runs[0].channels == channels_for_budget(grid.cells[0].config, 20_000)
    assert param_count(runs[0].config) <= 20_000
    smaller = plan_runs(grid, budget_params=5_000)
    assert smaller[0].budget_params == 5_000 and smaller[0].channels < runs[0].channels


@pytest.mark.parametrize('path', sorted((REPO / 'configs' / 'bench').glob('*.yaml')),
                         ids=lambda p: p.name)
def test_shipped_grids_fit_the_budgets(path):
    grid = load_grid(path)
    for budget in (500_000, 100_000):
        runs = plan_runs(grid, seeds=[0], budget_params=budget)
        assert len(runs) == len(grid.cells) >= 9
        assert all(param_count(r.config) <= budget for r in runs)
    assert grid.seeds == [0, 1, 2] and set(grid.baselines) == set(grid.axes)


def test_outputs_and_rerun_reuses_finished_runs(reference):
    out = reference['out']
    for name in ('results.csv', 'summary.csv', 'report.md', 'figures/heatmap.png'):
        assert (out / name).is_file(), name
    assert not (out / 'results.md').exists() and not (out / 'results.svg').exists()
    stdout = reference['stdout']
    assert '[1/4] pe-none seed 0: start' in stdout
    assert '[1/4] pe-none seed 0: test mae ' in stdout and '(1/4 done, ETA ' in stdout
    assert '(4/4 done)' in stdout and 'mean ± std' in stdout and 'wrote ' in stdout
    summary = read_rows(out / 'summary.csv')
    assert [(r['cell'], r['n'], r['vs_pe_verdict']) for r in summary][0] == \
        ('pe-none', '2', 'baseline')
    before = read_rows(out / 'results.csv')
    code, stdout, _ = gtpe('bench', reference['grid'], '--out', out, '--budget-params',
                           reference['budget'], '--threads', 1, '--quiet')
    assert code == 0 and stdout.count('already done') == 4 and ': start' not in stdout
    assert stable(read_rows(out / 'results.csv')) == stable(before)


def test_two_axes_cells_in_grid_order(tmp_path):
    text = GRID.replace('seeds:', '  model.attn: [full, null]\nseeds:')
    grid = load_grid(write_grid(tmp_path, text))
    assert grid.axes == ['pe', 'model.attn']
    assert grid.values == {'pe': ['none', 'rwse'], 'model.attn': ['full', 'none']}
    assert [c.name for c in grid.cells] == ['pe-none_attn-full', 'pe-none_attn-none',
                                            'pe-rwse_attn-full', 'pe-rwse_attn-none']
    assert grid.cells[1].config.model.attn is None and grid.cells[2].config.model.pe.rwse.dim == 4
    assert grid.baselines == {'pe': 'none', 'model.attn': 'none'}
    runs = plan_runs(grid)
    assert [(r.cell.name, r.seed) for r in runs[:3]] == [
        ('pe-none_attn-full', 0), ('pe-none_attn-full', 1), ('pe-none_attn-none', 0)]
    assert str(runs[2].rel_dir) == 'runs/pe-none_attn-none/seed-0'


def test_baselines_from_the_grid_file(tmp_path):
    grid = write_grid(tmp_path, GRID + 'baselines: {pe: rwse}\n')
    assert load_grid(grid).baselines == {'pe': 'rwse'}
    grid = write_grid(tmp_path, GRID.replace('none: {}', 'plain: {}'))
    assert load_grid(grid).baselines == {}  # no label 'none'


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit status 2, nothing written


@pytest.mark.parametrize('grid_text, argv, fragment', [
    (GRID + 'seed: [1]\n', [], "seed: unknown key (did you mean 'seeds'?)"),
    (GRID.replace('none: {}', 'none: {model.chanels: 8}'), [], 'model.chanels: unknown key'),
    ('base: base.yaml\ngrid:\n  pe: {}\n', [], 'grid.pe: empty axis'),
    ('base: base.yaml\ngrid:\n  model.attn: []\n', [], 'grid.model.attn: empty axis'),
    (GRID.replace('[0, 1]', '[a, b]'), [], "seeds: expected distinct integers in [0, 2**63 - 1], "
                                           "got str 'a'"),
    (GRID.replace('[0, 1]', '[1, 1]'), [], 'seed 1 appears twice'),
    (GRID.replace('[0, 1]', '[-1]'), [], 'got integer -1'),
    (GRID, ['--seeds', 'a'], "--seeds: expected integers, got 'a'"),
    (GRID, ['--shard', '3/2'], '--shard 3/2: expected i/n with 1 <= i <= n'),
    (GRID, ['--shard', '0/2'], '--shard 0/2: expected i/n with 1 <= i <= n'),
    (GRID, ['--shard', 'x'], '--shard x: expected i/n'),
    (GRID, ['--workers', '0'], '--workers: expected a positive integer, got 0'),
    (GRID, ['--budget-params', '0'], '--budget-params: expected a positive integer'),
    (GRID, ['--budget-params', 'x'], "invalid int value: 'x'"),
    (GRID + 'budget: {params: 1.5e5}\n', [], 'budget.params: expected a positive integer'),
    (GRID + 'budget: {parameters: 10}\n', [], 'budget: expected {params: N}'),
    (GRID, ['--budget-params', '100'], '[pe-none]: budget 100 parameters: even the smallest'),
    (GRID + 'baselines: {pe: lap}\n', [], "baselines: pe: 'lap' is not a label of that axis"),
    (GRID + 'baselines: {model: none}\n', [], 'baselines: model: not an axis of the grid'),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, grid_text, argv, fragment):
    grid = write_grid(tmp_path, grid_text)
    out = tmp_path / 'out'
    code, _, err = run_main(capsys, 'bench', grid, '--out', out, *argv)
    assert code == 2 and fragment in one_line(err)
    assert not out.exists()


def test_bad_grid_values_name_the_cell(capsys, tmp_path):
    grid = write_grid(tmp_path, 'base: base.yaml\ngrid:\n  model.attn: [full, fancy]\n')
    code, _, err = run_main(capsys, 'bench', grid, '--out', tmp_path / 'out')
    line = one_line(err)
    assert code == 2 and 'model.attn=fancy' in line and 'model.attn must be one of' in line
    assert not (tmp_path / 'out').exists()


def test_pure_helpers():
    assert parse_shard('2/3') == (2, 3) and parse_shard(None) is None
    assert [gpu_for_slot(k, ['0', '1']) for k in range(5)] == ['0', '1', '0', '1', '0']
    assert gpu_for_slot(3, ['5']) == '5' and gpu_for_slot(0, []) is None
    assert cpu_sets(2, 3, [0, 1, 2, 3, 4, 5, 6]) == [[0, 1, 2], [3, 4, 5]]
    assert cpu_sets(3, 1, [4, 7, 9]) == [[4], [7], [9]]
    assert cpu_sets(2, 2, [0, 1, 2]) is None  # not enough cores: not pinned
    assert worker_env(2, None) == {'OMP_NUM_THREADS': '2', 'OMP_WAIT_POLICY': 'PASSIVE'}
    assert worker_env(1, '3')['CUDA_VISIBLE_DEVICES'] == '3'


# ---------------------------------------------------------------------------------------------
# shards and worker processes


def test_shards_in_two_folders_report_like_one_run(reference, tmp_path):
    a, b, merged = tmp_path / 'a', tmp_path / 'b', tmp_path / 'merged'
    common = ['--budget-params', reference['budget'], '--threads', 1, '--quiet']
    code, stdout, _ = gtpe('bench', reference['grid'], '--out', a, '--shard', '1/2', *common)
    assert code == 0 and 'shard 1/2: 2 of 4 runs' in stdout
    assert gtpe('bench', reference['grid'], '--out', b, '--shard', '2/2', *common)[0] == 0
    assert sorted(p.parent.name + '/' + p.name for p in (a / 'runs').glob('*/*')) == [
        'pe-none/seed-0', 'pe-rwse/seed-0']  # runs 1 and 3 of (cell, seed fastest)
    assert (a / 'bench.json').read_text() == (b / 'bench.json').read_text()
    code, stdout, _ = gtpe('report', a, b, '--out', merged, '--no-figures')
    assert code == 0 and 'mean ± std' in stdout and not (merged / 'figures').exists()
    assert f'wrote {merged / "results.csv"}, ' in stdout
    ref = stable(read_rows(reference['out'] / 'results.csv'))
    assert stable(read_rows(merged / 'results.csv')) == ref
    code, _, _ = gtpe('report', b, '--no-figures')  # default --out: the first folder
    assert code == 0 and len(read_rows(b / 'results.csv')) == 2
    # shards may share one folder (the grid spelled another way is the same grid): whichever
    # ends last leaves the full report
    other_spelling = f"{reference['grid'].parent}/./{reference['grid'].name}"
    assert gtpe('bench', other_spelling, '--out', a, '--shard', '2/2', *common)[0] == 0
    assert stable(read_rows(a / 'results.csv')) == ref
    # ... but not with another grid description
    code, _, err = gtpe('bench', reference['grid'], '--out', a, '--seeds', '5', *common)
    assert code == 2 and 'holds another grid (bench.json differs in seeds)' in one_line(err)


def test_workers_give_the_same_rows_as_one_process(reference, tmp_path):
    out = tmp_path / 'w'
    code, stdout, err = gtpe('bench', reference['grid'], '--out', out, '--budget-params',
                             reference['budget'], '--workers', 2, '--threads', 1, '--quiet')
    assert code == 0, stdout + err
    assert '2 worker processes, 1 torch thread each' in stdout
    assert stable(read_rows(out / 'results.csv')) == \
        stable(read_rows(reference['out'] / 'results.csv'))
    log = (out / 'runs' / 'pe-none' / 'seed-0' / 'log.txt').read_text()
    assert 'gtpe bench worker: ' in log and '1 threads' in log and 'test mae: ' in log


@pytest.mark.parametrize('workers', [1, 2])
def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, workers, monkeypatch):
    not_a_folder = tmp_path / 'file'  # as dataset.root: loading the data fails
    not_a_folder.write_text('')
    grid = write_grid(tmp_path, 'base: base.yaml\nset: {train.device: auto}\ngrid:\n  data:\n'
                                f'    bad: {{dataset.root: {not_a_folder}}}\n    good: {{}}\n')
    monkeypatch.setattr(bench, 'visible_gpus', lambda: ['7', '9'])  # slot k: GPU k round robin
    out = tmp_path / 'out'
    code, stdout, err = gtpe('bench', grid, '--out', out, '--workers', workers, '--quiet')
    assert code == 1
    where = ' (see log.txt in their folders)' if workers > 1 else ''
    assert one_line(err) == f'gtpe: error: 1 of 2 runs failed: runs/data-bad/seed-0{where}'
    assert [r['cell'] for r in read_rows(out / 'results.csv')] == ['data-good']
    assert (out / 'runs' / 'data-bad' / 'seed-0' / 'cell.json').is_file()  # before the run
    if workers == 1:
        assert 'data-bad seed 0: FAILED: NotADirectoryError: ' in stdout
        return
    assert 'data-bad seed 0: FAILED (exit status 1)' in stdout
    assert str(out / 'runs' / 'data-bad' / 'seed-0' / 'log.txt') in stdout
    assert '  | NotADirectoryError: ' in stdout  # the end of its log
    # default threads: cores // workers; each worker pinned to its own cores when there are enough
    cores = bench.available_cores()
    threads = max(1, len(cores) // 2)
    assert f'2 worker processes, {threads} torch thread' in stdout
    log = (out / 'runs' / 'data-good' / 'seed-0' / 'log.txt').read_text()
    assert f'{threads} threads' in log and 'CUDA_VISIBLE_DEVICES=9)' in log  # the second slot
    if hasattr(bench.os, 'sched_setaffinity') and len(cores) >= 2:
        assert any(f"cores {','.join(map(str, c))}," in log for c in cpu_sets(2, threads, cores))


def test_ctrl_c_stops_the_worker_processes(tmp_path, monkeypatch):
    grid = write_grid(tmp_path)
    started = []
    popen = bench.subprocess.Popen

    def spy(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def log(line):
        if line.startswith('[2/4]') and line.endswith(': start'):
            raise KeyboardInterrupt  # while the first run's worker is running

    monkeypatch.setattr(bench.subprocess, 'Popen', spy)
    with pytest.raises(KeyboardInterrupt):
        run_bench(grid, tmp_path / 'out', workers=2, threads=1, progress=False, log=log)
    assert len(started) == 1 and started[0].poll() is not None


# ---------------------------------------------------------------------------------------------
# reuse, resume, another config, overwrite; diverged runs


def test_interrupted_run_resumes_and_changed_config_needs_overwrite(tmp_path):
    grid = write_grid(tmp_path, 'base: base.yaml\ngrid:\n  pe: {none: {}}\nseeds: [0]\n')
    out = tmp_path / 'out'
    two = ['train.epochs=2']

    def interrupt(line):
        if line.startswith('epoch   1/2'):  # after epoch 1's checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(grid, out, overrides=two, progress=False, log=interrupt)
    run_dir = out / 'runs' / 'pe-none' / 'seed-0'
    assert (run_dir / 'checkpoints' / 'last.pt').exists()
    assert not (run_dir / 'results.json').exists()
    lines = []
    rows = run_bench(grid, out, overrides=two, progress=False, log=lines.append)
    assert any(line.startswith(f'resuming {run_dir} after epoch 1/2') for line in lines)
    reference = train(load_config(run_dir / 'config.yaml'), tmp_path / 'ref', progress=False,
                      log=lambda s: None)
    assert rows[0]['test'] == reference['test'] and rows[0]['epochs'] == 2

    # another train.epochs on the same folder: one clear line, nothing touched
    before = {p: p.stat().st_mtime_ns for p in out.rglob('*')}
    code, _, err = gtpe('bench', grid, '--out', out, '--set', 'train.epochs=3', '--quiet')
    assert code == 2 and one_line(err) == (
        f'gtpe: error: {out}: 1 run was made with another config (train.epochs: 2 -> 3, e.g. '
        f'runs/pe-none/seed-0); pass --overwrite to rerun it, or use another --out')
    assert {p: p.stat().st_mtime_ns for p in out.rglob('*')} == before
    code, _, _ = gtpe('bench', grid, '--out', out, '--set', 'train.epochs=3', '--overwrite',
                      '--quiet')
    assert code == 0
    assert json.loads((run_dir / 'results.json').read_text())['epochs'] == 3
    assert [r['epochs'] for r in read_rows(out / 'results.csv')] == ['3']


def test_bench_keeps_going_after_a_diverged_run(tmp_path, monkeypatch):
    from gtpe.train import report
    grid = write_grid(tmp_path, 'base: base.yaml\ngrid:\n  train.lr: [1.0e+9, 3.0e-3]\n')
    out = tmp_path / 'out'
    figures = []
    write_report = report.write_report

    def spy(*args, **kwargs):
        figures.append(kwargs.get('figures', True))
        return write_report(*args, **kwargs)

    monkeypatch.setattr(report, 'write_report', spy)
    code, stdout, _ = gtpe('bench', grid, '--out', out, '--quiet')
    assert figures == [False, False, True]  # after each run, then with figures at the end
    assert code == 0 and 'training diverged in epoch 1' in stdout
    assert 'lr-1000000000.0 seed 0: diverged' in stdout
    rows = read_rows(out / 'results.csv')
    assert [(r['status'], r['test'] == '') for r in rows] == [('diverged', True),
                                                             ('completed', False)]
    assert 'diverged' in (out / 'report.md').read_text()
    # the diverged run counts as done: running the grid again trains nothing
    code, stdout, _ = gtpe('bench', grid, '--out', out, '--quiet')
    assert code == 0 and stdout.count('already done') == 2


def test_plot_command_prints_the_curves(reference, capsys):
    run_dir = reference['out'] / 'runs' / 'pe-none' / 'seed-0'
    copy = Path(shutil.copytree(run_dir, reference['out'].parent / 'plot-run'))
    code, stdout, _ = run_main(capsys, 'plot', copy)
    assert code == 0
    assert stdout.split() == [str(copy / 'curves.png'), str(copy / 'curves.svg')]


def test_seeds_option_takes_a_list_or_a_comma_list():
    from gtpe.cli import _parse_seeds
    assert _parse_seeds(['0', '1,2']) == [0, 1, 2] and _parse_seeds(None) is None
