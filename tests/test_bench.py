"""``gtpe bench`` end to end: seeds, budget, outputs, shards (by cell) into one or several folders,
worker processes, reuse / resume / overwrite, run locks, diverged and failed runs, and the
``report`` / ``plot`` commands. Tiny ZINC runs (32 graphs per split, 1 epoch, 16 channels,
1 layer, 1 thread)."""
import json
import os
import shutil
from pathlib import Path

import pytest
from bench_utils import ONE_CELL, gtpe, read_rows, stable, write_grid
from cli_utils import one_line

from gtpe.datasets import dataset_info
from gtpe.train import bench, benchdir, workers
from gtpe.train.bench import cpu_sets, load_grid, param_count, plan_runs, run_bench
from gtpe.train.checkpoint import save_checkpoint
from gtpe.train.config import experiment_hash, load_config
from gtpe.train.loop import build_model, format_summary, train


pytestmark = pytest.mark.usefixtures('one_thread')


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


def run_results(out: Path, cell: str, seed: int) -> dict:
    return json.loads((out / 'runs' / cell / f'seed-{seed}' / 'results.json').read_text())


# ---------------------------------------------------------------------------------------------
# seeds, budget, outputs, reuse


def test_seeds_expand_and_each_run_has_its_seed_and_experiment(reference):
    out = reference['out']
    meta = json.loads((out / 'bench.json').read_text())
    assert meta['seeds'] == [0, 1] and meta['axes'] == ['pe']
    assert [(c['cell'], c['labels']) for c in meta['cells']] == [
        ('pe-none', {'pe': 'none'}), ('pe-rwse', {'pe': 'rwse'})]
    assert meta['baselines'] == {'pe': 'none'} and meta['metric'] == 'mae'
    assert meta['budget_params'] == reference['budget'] and meta['dataset'] == 'zinc'
    for cell, entry in zip(('pe-none', 'pe-rwse'), meta['cells']):
        for seed in (0, 1):
            run_dir = out / 'runs' / cell / f'seed-{seed}'
            results = json.loads((run_dir / 'results.json').read_text())
            assert results['config']['train']['seed'] == seed
            info = json.loads((run_dir / 'cell.json').read_text())
            assert info['cell'] == cell and info['seed'] == seed
            assert info['labels'] == {'pe': cell[3:]}
            assert info['budget_params'] == reference['budget']
            assert info['channels'] == results['config']['model']['channels']
            # the experiment: the run's config without its seed, the same in both files
            assert info['experiment'] == entry['experiment'] == \
                experiment_hash(results['config'])
    assert meta['cells'][0]['experiment'] != meta['cells'][1]['experiment']
    rows = read_rows(out / 'results.csv')
    for r in rows:
        results = json.loads((out / r['run_dir'] / 'results.json').read_text())
        assert float(r['test']) == results['test'] and r['metric'] == 'mae'
    assert [(r['cell'], r['seed']) for r in rows] == [
        ('pe-none', '0'), ('pe-none', '1'), ('pe-rwse', '0'), ('pe-rwse', '1')]


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


def test_each_pe_set_is_precomputed_once_before_the_runs(reference):
    stdout = reference['stdout']
    lines = [line for line in stdout.splitlines() if line.startswith('precomputing ')]
    assert len(lines) == 1 and lines[0].startswith('precomputing AddRWSE(walk_length=6')
    assert lines[0].endswith(' for zinc (first 32 graphs per split) ...')
    assert stdout.index('precomputing ') < stdout.index(': start')  # before any run


def test_outputs_and_rerun_reuses_finished_runs(reference):
    out = reference['out']
    for name in ('results.csv', 'summary.csv', 'report.md', 'figures/heatmap.png'):
        assert (out / name).is_file(), name
    assert not (out / 'results.md').exists() and not (out / 'results.svg').exists()
    stdout = reference['stdout']
    summary = format_summary(run_results(out, 'pe-none', 0))
    assert '[1/4] pe-none seed 0: start' in stdout
    assert f'[1/4] pe-none seed 0: {summary} in ' in stdout and '(1/4 done, ETA ' in stdout
    assert '(4/4 done)' in stdout and 'mean ± std' in stdout and 'wrote ' in stdout
    summary_rows = read_rows(out / 'summary.csv')
    assert [(r['cell'], r['n'], r['vs_pe_verdict']) for r in summary_rows][0] == \
        ('pe-none', '2', 'baseline')
    before = read_rows(out / 'results.csv')
    code, stdout, _ = gtpe('bench', reference['grid'], '--out', out, '--budget-params',
                           reference['budget'], '--threads', 1, '--quiet')
    assert code == 0 and stdout.count('already done') == 4 and ': start' not in stdout
    assert f'[1/4] pe-none seed 0: already done: {summary} (1/4 done' in stdout  # same outcome
    assert 'precomputing' not in stdout  # nothing to train: no data loaded
    assert stable(read_rows(out / 'results.csv')) == stable(before)


# ---------------------------------------------------------------------------------------------
# shards and worker processes


def test_shards_in_two_folders_report_like_one_run(reference, tmp_path):
    a, b, merged = tmp_path / 'a', tmp_path / 'b', tmp_path / 'merged'
    common = ['--budget-params', reference['budget'], '--threads', 1, '--quiet']
    code, stdout, _ = gtpe('bench', reference['grid'], '--out', a, '--shard', '1/2', *common)
    assert code == 0 and 'shard 1/2: 1 of 2 cells, 2 of 4 runs' in stdout
    # counters within the shard
    assert '[1/2] pe-none seed 0: start' in stdout and '[2/2] pe-none seed 1: test mae: ' in stdout
    assert '/4]' not in stdout and '[3/' not in stdout and '(2/2 done)' in stdout
    assert gtpe('bench', reference['grid'], '--out', b, '--shard', '2/2', *common)[0] == 0
    assert sorted(p.parent.name + '/' + p.name for p in (a / 'runs').glob('*/*')) == [
        'pe-none/seed-0', 'pe-none/seed-1']  # cell 0 with all its seeds
    assert (a / 'bench.json').read_text() == (b / 'bench.json').read_text()
    code, stdout, _ = gtpe('report', a, b, '--out', merged, '--no-figures')
    assert code == 0 and 'mean ± std' in stdout and not (merged / 'figures').exists()
    assert f'wrote {merged / "results.csv"}, ' in stdout
    ref = stable(read_rows(reference['out'] / 'results.csv'))
    assert stable(read_rows(merged / 'results.csv')) == ref
    ref_summary = stable(read_rows(reference['out'] / 'summary.csv'))
    assert stable(read_rows(merged / 'summary.csv')) == ref_summary
    code, _, _ = gtpe('report', b, '--no-figures')  # default --out: the first folder
    assert code == 0 and len(read_rows(b / 'results.csv')) == 2
    # shards may share one folder: the grid spelled another way and machine keys (data root,
    # loader workers) are the same grid; whichever shard ends last leaves the full report
    root = ['--set', f'dataset.root={os.environ["GTPE_DATA_ROOT"]}',
            '--set', 'train.num_workers=0']
    other_spelling = f"{reference['grid'].parent}/./{reference['grid'].name}"
    assert gtpe('bench', other_spelling, '--out', a, '--shard', '2/2', *root, *common)[0] == 0
    assert stable(read_rows(a / 'results.csv')) == ref
    assert stable(read_rows(a / 'summary.csv')) == ref_summary
    code, stdout, _ = gtpe('bench', reference['grid'], '--out', a, *root, *common)
    assert code == 0 and stdout.count('already done') == 4  # runs of either spelling reused
    # ... but not another experiment (here with new seeds, so that no run folder is in the way)
    code, _, err = gtpe('bench', reference['grid'], '--out', a, '--seeds', '9', '--set',
                        'train.lr=0.01', *common)
    assert code == 2 and one_line(err).endswith(
        'holds another grid (bench.json differs in the config of cells pe-none, pe-rwse); use '
        'another --out, or --overwrite to replace it')
    # other seeds are the same grid: they are added
    assert gtpe('bench', reference['grid'], '--out', b, '--seeds', '5', *common)[0] == 0
    assert json.loads((b / 'bench.json').read_text())['seeds'] == [0, 1, 5]


def test_workers_give_the_same_rows_as_one_process(reference, tmp_path):
    out = tmp_path / 'w'
    code, stdout, err = gtpe('bench', reference['grid'], '--out', out, '--budget-params',
                             reference['budget'], '--workers', 2, '--threads', 1, '--quiet')
    assert code == 0, stdout + err
    assert '2 worker processes, 1 torch thread each' in stdout
    assert stdout.count('precomputing ') == 1  # in this process, before the workers
    assert stable(read_rows(out / 'results.csv')) == \
        stable(read_rows(reference['out'] / 'results.csv'))
    log = (out / 'runs' / 'pe-none' / 'seed-0' / 'log.txt').read_text()
    assert 'gtpe bench worker: ' in log and '1 threads' in log and 'test mae: ' in log


def broken_checkpoint(grid: Path, out: Path, cell: str) -> None:
    """An interrupted run of ``cell`` whose checkpoint holds another config than its config.yaml:
    resuming it raises a ConfigError inside the training loop."""
    run = next(r for r in plan_runs(load_grid(grid)) if r.cell.name == cell)
    run_dir = out / run.rel_dir
    (run_dir / 'checkpoints').mkdir(parents=True)
    (run_dir / 'config.yaml').write_text(run.config.to_yaml())
    other = run.config.to_dict()
    other['train']['lr'] = 0.5
    save_checkpoint(run_dir / 'checkpoints' / 'last.pt', {
        'model': {}, 'optimizer': {}, 'scheduler': {}, 'rng': [], 'epoch': 1, 'best_epoch': None,
        'best_val': None, 'rows': [], 'config': other})


@pytest.mark.parametrize('workers_', [1, 2])
def test_failing_runs_are_reported_and_the_others_go_on(tmp_path, workers_, monkeypatch):
    not_a_folder = tmp_path / 'file'  # as dataset.root: loading the data fails
    not_a_folder.write_text('')
    grid = write_grid(tmp_path, 'base: base.yaml\nset: {train.device: auto}\ngrid:\n  data:\n'
                                f'    bad: {{dataset.root: {not_a_folder}}}\n    good: {{}}\n'
                                '    broken: {}\nseeds: [0]\n')
    out = tmp_path / 'out'
    broken_checkpoint(grid, out, 'data-broken')  # a ConfigError while training: a failed run
    monkeypatch.setattr(bench, 'visible_gpus', lambda: ['7', '9'])  # slot k: GPU k round robin
    code, stdout, err = gtpe('bench', grid, '--out', out, '--workers', workers_, '--quiet')
    assert code == 1
    where = ' (see log.txt in their folders)' if workers_ > 1 else ''
    assert one_line(err) == (f'gtpe: error: 2 of 3 runs failed: runs/data-bad/seed-0, '
                             f'runs/data-broken/seed-0{where}')
    assert [r['cell'] for r in read_rows(out / 'results.csv')] == ['data-good']  # any --workers
    assert (out / 'runs' / 'data-bad' / 'seed-0' / 'cell.json').is_file()  # before the run
    assert 'warning: loading zinc failed (NotADirectoryError: ' in stdout  # the parent's load
    if workers_ == 1:
        assert 'data-bad seed 0: FAILED: NotADirectoryError: ' in stdout
        assert 'data-broken seed 0: FAILED: ConfigError: --resume: config differs from the ' \
               'checkpoint' in stdout
        return
    assert 'data-bad seed 0: FAILED (exit status 1)' in stdout
    assert 'data-broken seed 0: FAILED (exit status 1)' in stdout
    assert str(out / 'runs' / 'data-bad' / 'seed-0' / 'log.txt') in stdout
    assert '  | NotADirectoryError: ' in stdout  # the end of its log
    assert '  | gtpe.train._dataclass_io.ConfigError: --resume: config differs' in stdout
    # default threads: cores // workers; each worker pinned to its own cores when there are enough
    cores = workers.available_cores()
    threads = max(1, len(cores) // 2)
    assert f'2 worker processes, {threads} torch thread' in stdout
    log = (out / 'runs' / 'data-good' / 'seed-0' / 'log.txt').read_text()
    assert f'{threads} threads' in log and 'CUDA_VISIBLE_DEVICES=9)' in log  # the second slot
    if hasattr(os, 'sched_setaffinity') and len(cores) >= 2:
        assert any(f"cores {','.join(map(str, c))}," in log for c in cpu_sets(2, threads, cores))


# ---------------------------------------------------------------------------------------------
# reuse, resume, another config, overwrite, locks; diverged runs


def interrupt_after_epoch_1(line):
    if line.startswith('epoch   1/2'):  # after epoch 1's checkpoint
        raise KeyboardInterrupt


def test_interrupted_run_resumes_and_changed_config_needs_overwrite(tmp_path):
    grid = write_grid(tmp_path, ONE_CELL)
    out = tmp_path / 'out'
    two = ['train.epochs=2']
    with pytest.raises(KeyboardInterrupt):
        run_bench(grid, out, overrides=two, progress=False, log=interrupt_after_epoch_1)
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


def test_interrupted_run_resumes_in_a_worker(tmp_path):
    grid = write_grid(tmp_path, ONE_CELL.replace('[0]', '[0, 1]'))
    out, two = tmp_path / 'out', ['train.epochs=2']
    with pytest.raises(KeyboardInterrupt):
        run_bench(grid, out, overrides=two, progress=False, log=interrupt_after_epoch_1)
    code, stdout, err = gtpe('bench', grid, '--out', out, '--set', two[0], '--workers', 2,
                             '--threads', 1, '--quiet')
    assert code == 0, stdout + err
    log = (out / 'runs' / 'pe-none' / 'seed-0' / 'log.txt').read_text()
    assert 'after epoch 1/2' in log and 'resuming ' in log
    run_bench(grid, tmp_path / 'ref', overrides=two, threads=1, progress=False,
              log=lambda s: None)
    assert stable(read_rows(out / 'results.csv')) == \
        stable(read_rows(tmp_path / 'ref' / 'results.csv'))


def test_overwrite_of_a_changed_grid(tmp_path):
    grid = write_grid(tmp_path, ONE_CELL)
    out = tmp_path / 'out'
    assert gtpe('bench', grid, '--out', out, '--set', 'train.lr=0.01', '--quiet')[0] == 0
    for rel in ('runs/pe-old/seed-0', 'runs/pe-none/seed-7'):  # runs of the old grid
        (out / rel).mkdir(parents=True)
        (out / rel / 'cell.json').write_text('{}')
    (out / 'runs' / 'notes' / 'seed-0').mkdir(parents=True)  # not a bench run
    code, _, err = gtpe('bench', grid, '--out', out, '--shard', '1/1', '--overwrite', '--quiet')
    assert code == 2 and "--overwrite with --shard would leave the other shards' runs of the " \
                         'old grid in OUT; run it without --shard or use another --out' in \
        one_line(err)
    code, stdout, _ = gtpe('bench', grid, '--out', out, '--overwrite', '--quiet')
    assert code == 0 and '--overwrite: removed 2 run folders of the old grid' in stdout
    assert sorted(str(p.relative_to(out)) for p in (out / 'runs').glob('*/*')) == [
        'runs/notes/seed-0', 'runs/pe-none/seed-0']
    assert run_results(out, 'pe-none', 0)['config']['train']['lr'] == 3e-3
    assert json.loads((out / 'bench.json').read_text())['set'] == []


@pytest.mark.parametrize('files, fragment', [
    ({'runs/pe-none/results.json': '{}'}, 'holds a bench of an older gtpe '
                                          '(runs/pe-none/results.json; runs are now in '),
    ({'results.md': ''}, 'holds a bench of an older gtpe (results.md; '),
    ({'bench.json': '{"cells": ['}, 'bench.json: unreadable (not a bench description)'),
])
def test_an_out_the_bench_cannot_use_is_one_line(tmp_path, files, fragment):
    grid = write_grid(tmp_path, ONE_CELL)
    out = tmp_path / 'out'
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = sorted(out.rglob('*'))
    code, _, err = gtpe('bench', grid, '--out', out, '--quiet')
    assert code == 2 and fragment in one_line(err)
    assert sorted(out.rglob('*')) == before


@pytest.mark.parametrize('workers_', [1, 2])
def test_a_run_locked_by_another_process_is_skipped(tmp_path, monkeypatch, workers_):
    grid = write_grid(tmp_path, ONE_CELL.replace('[0]', '[0, 1]'))
    out = tmp_path / 'out'
    held = []
    for seed in (0, 1):
        (out / 'runs' / 'pe-none' / f'seed-{seed}').mkdir(parents=True)
        held.append(benchdir.try_lock_run(out / 'runs' / 'pe-none' / f'seed-{seed}'))
    stray = out / 'runs' / 'stray' / 'seed-0'  # collect warns about it, in the bench's log
    stray.mkdir(parents=True)
    (stray / 'results.json').write_text('{"epochs": 1, "config": {"train": {"epochs": 1}}}')
    started = []
    monkeypatch.setattr(workers.subprocess, 'Popen', lambda *a, **k: started.append(a))
    lines = []
    try:
        rows = run_bench(grid, out, overrides=['model.channels=8', 'train.seed=3'], seeds=[0, 1],
                         budget_params=20_000, workers=workers_, threads=1, progress=False,
                         log=lines.append)
    finally:
        for fd in held:
            os.close(fd)
    assert rows == [] and started == []
    assert '[1/2] pe-none seed 0: running in another process, skipped (1/2 done)' in lines
    assert '2 runs skipped (running in another process): runs/pe-none/seed-0, ' \
           'runs/pe-none/seed-1' in lines
    assert "warning: --set model.channels is ignored: the budget of 20,000 parameters picks " \
           "each cell's width" in lines
    assert 'warning: --set train.seed is ignored: every cell runs with the seeds 0, 1' in lines
    assert any(line.startswith('warning: ') and str(stray) in line for line in lines)


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
    assert '[1/2] lr-1000000000.0 seed 5: diverged in epoch 1 in ' in stdout  # base's seed
    rows = read_rows(out / 'results.csv')
    assert [(r['status'], r['test'] == '') for r in rows] == [('diverged', True),
                                                             ('completed', False)]
    assert 'diverged' in (out / 'report.md').read_text()
    # the diverged run counts as done: running the grid again trains nothing
    code, stdout, _ = gtpe('bench', grid, '--out', out, '--quiet')
    assert code == 0 and stdout.count('already done') == 2
    assert '[1/2] lr-1000000000.0 seed 5: already done: diverged in epoch 1 (1/2 done' in stdout


def test_plot_command_prints_the_curves(reference):
    run_dir = reference['out'] / 'runs' / 'pe-none' / 'seed-0'
    copy = Path(shutil.copytree(run_dir, reference['out'].parent / 'plot-run'))
    code, stdout, _ = gtpe('plot', copy)
    assert code == 0
    assert stdout.split() == [str(copy / 'curves.png'), str(copy / 'curves.svg')]
