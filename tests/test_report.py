"""gtpe.train.report: collecting bench folders, statistics, CSVs, report.md, the terminal table.
Fake bench folders only (tests/bench_fakes.py): no training."""
import csv
import json
import math
from pathlib import Path

import pytest
from bench_fakes import make_bench, make_meta, write_meta, write_run
from scipy import stats

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.report import (
    collect,
    compare,
    describe,
    fmt_mean_std,
    fmt_p,
    format_table,
    summarize,
    write_report,
)

GRID = {('none', 'gine'): [0.50, 0.52, 0.51], ('none', 'gps'): [0.45, 0.46, 'div'],
        ('lap', 'gine'): [0.40, 0.41, 0.39], ('lap', 'gps'): [0.30, 0.31, None]}


def by_cell(summary):
    return {r['cell']: r for r in summary}


def read_csv(path):
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def collect_quiet(dirs):
    warnings = []
    meta, rows = collect(dirs, log=warnings.append)
    return meta, rows, warnings


# --- statistics ------------------------------------------------------------------------------

def test_mean_std_ci_of_known_numbers(tmp_path):
    make_bench(tmp_path, {('none',): [1.0, 2.0, 3.0], ('lap',): [5.0, None, None]}, axes=('pe',))
    meta, rows, _ = collect_quiet([tmp_path])
    s = by_cell(summarize(meta, rows))
    none = s['pe-none']
    assert (none['n'], none['mean'], none['std']) == (3, 2.0, 1.0)
    half = 4.3026527297 / math.sqrt(3)  # t(0.975, 2)
    assert none['ci95_low'] == pytest.approx(2 - half, rel=1e-10)
    assert none['ci95_high'] == pytest.approx(2 + half, rel=1e-10)
    lap = s['pe-lap']  # n = 1: a mean but no std, no CI, no test
    assert (lap['n'], lap['mean'], lap['std'], lap['ci95_low']) == (1, 5.0, None, None)
    assert lap['vs_pe_verdict'] == 'n/a' and lap['vs_pe_p'] is None
    assert lap['vs_pe_delta'] == 3.0
    assert describe([]) == {'n': 0, 'mean': None, 'std': None, 'ci95_low': None,
                            'ci95_high': None}


@pytest.mark.parametrize('higher, verdict', [(False, 'better'), (True, 'worse')])
def test_welch_p_equals_scipy_and_verdict_follows_direction(tmp_path, higher, verdict):
    a, b = [0.30, 0.32, 0.31, 0.29], [0.40, 0.45, 0.38, 0.41]
    make_bench(tmp_path, {('none',): b, ('lap',): a}, axes=('pe',), seeds=(0, 1, 2, 3),
               higher=higher)
    meta, rows, _ = collect_quiet([tmp_path])
    lap = by_cell(summarize(meta, rows))['pe-lap']
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert lap['vs_pe_p'] == pytest.approx(expected, rel=1e-12) and expected < 0.05
    assert lap['vs_pe_delta'] == pytest.approx(sum(a) / 4 - sum(b) / 4)
    assert lap['vs_pe_verdict'] == verdict
    assert by_cell(summarize(meta, rows))['pe-none']['vs_pe_verdict'] == 'baseline'


def test_compare_within_noise_and_undefined():
    delta, p, verdict = compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], higher_is_better=True)
    assert verdict == 'within noise' and p >= 0.05 and delta == pytest.approx(0.0)
    assert compare([1.0, 1.0], [1.0, 1.0], True) == (0.0, None, 'n/a')  # no p-value
    assert compare([1.0], [2.0, 3.0], True) == (-1.5, None, 'n/a')
    assert compare([], [2.0, 3.0], True) == (None, None, 'n/a')


def test_diverged_runs_excluded_from_mean_and_counted(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    assert [r['status'] for r in rows if r['cell'] == 'pe-none_model-gps'] == [
        'completed', 'completed', 'diverged']
    gps = by_cell(summarize(meta, rows))['pe-none_model-gps']
    assert (gps['n'], gps['n_diverged'], gps['mean']) == (2, 1, pytest.approx(0.455))


def test_baseline_defaults_to_none_and_is_compared_with_same_other_labels(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    lap_gps = by_cell(summarize(meta, rows))['pe-lap_model-gps']
    expected = stats.ttest_ind([0.30, 0.31], [0.45, 0.46], equal_var=False).pvalue
    assert lap_gps['vs_pe_p'] == pytest.approx(expected)
    assert 'vs_model_verdict' not in lap_gps  # model has no 'none' label: no baseline


def test_costs_are_medians_over_the_cells_runs_and_empty_without_cost(tmp_path):
    make_bench(tmp_path, {('none',): [None] * 3, ('lap',): [1.0]}, axes=('pe',))
    for seed, spe in enumerate([1.0, 2.0, 10.0]):
        write_run(tmp_path, {'pe': 'none'}, seed, 1.0 + seed, seconds_per_epoch=spe)
    write_run(tmp_path, {'pe': 'lap'}, 0, 1.0, cost=False)
    meta, rows, _ = collect_quiet([tmp_path])
    none, lap = summarize(meta, rows)
    assert none['seconds_per_epoch'] == 2.0 and none['peak_memory_mb'] == 300.0
    assert none['labels'] == {'pe': 'none'} and none['values'] == [1.0, 2.0, 3.0]
    assert none['epochs'] == 2
    for key in ('seconds_per_epoch', 'peak_memory_mb', 'precompute_seconds',
                'pe_bytes_per_graph'):
        assert lap[key] is None


# --- collect ---------------------------------------------------------------------------------

def test_collect_merges_two_folders_like_one_folder(tmp_path):
    tests = {k: v for k, v in GRID.items()}
    make_bench(tmp_path / 'all', tests)
    make_bench(tmp_path / 'a', {k: v[:2] for k, v in tests.items()}, seeds=(0, 1),
               values={'pe': ['none', 'lap'], 'model': ['gine', 'gps']})
    make_bench(tmp_path / 'b', {k: v[2:] for k, v in tests.items()}, seeds=(2,),
               values={'pe': ['none', 'lap'], 'model': ['gine', 'gps']})
    meta1, rows1, w1 = collect_quiet([tmp_path / 'all'])
    meta2, rows2, w2 = collect_quiet([tmp_path / 'a', tmp_path / 'b'])
    assert w1 == w2 == []
    assert meta2 == meta1

    def strip(rows):
        return [{k: v for k, v in r.items() if k != 'run_dir'} for r in rows]
    assert strip(rows2) == strip(rows1)
    assert [(r['cell'], r['seed']) for r in rows1][:3] == [
        ('pe-none_model-gine', 0), ('pe-none_model-gine', 1), ('pe-none_model-gine', 2)]
    assert all(Path(r['run_dir']).is_absolute() for r in rows2)
    s1 = [{k: v for k, v in r.items()} for r in summarize(meta1, rows1)]
    assert summarize(meta2, rows2) == s1


def test_duplicate_cell_and_seed_kept_once_with_a_warning(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0, 2.0]}, axes=('pe',), seeds=(0, 1))
    make_bench(tmp_path / 'b', {('none',): [9.0]}, axes=('pe',), seeds=(0,))
    meta, rows, warnings = collect_quiet([tmp_path / 'a', tmp_path / 'b'])
    assert sorted(r['test'] for r in rows) == [1.0, 2.0]
    assert len(warnings) == 1 and 'seed 0' in warnings[0] and str(tmp_path / 'a') in warnings[0]


def test_folders_of_different_grids_or_without_bench_json_are_refused(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0]}, axes=('pe',))
    make_bench(tmp_path / 'b', {('none', 'x'): [1.0]}, axes=('pe', 'model'))
    with pytest.raises(ConfigError, match='axes'):
        collect([tmp_path / 'a', tmp_path / 'b'])
    make_bench(tmp_path / 'c', {('none',): [1.0]}, axes=('pe',), metric='auroc', higher=True)
    with pytest.raises(ConfigError, match='metric'):
        collect([tmp_path / 'a', tmp_path / 'c'])
    meta = json.loads((tmp_path / 'c' / 'bench.json').read_text())
    write_meta(tmp_path / 'd', {**meta, 'metric': 'mae', 'higher_is_better': False,
                                'dataset': 'molhiv'})
    with pytest.raises(ConfigError, match='dataset'):
        collect([tmp_path / 'a', tmp_path / 'd'])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match='no bench.json'):
        collect([tmp_path / 'empty'])
    with pytest.raises(ConfigError):
        collect([])


def test_unfinished_corrupt_and_foreign_runs_are_skipped(tmp_path):
    meta = make_bench(tmp_path, {('none',): [1.0, 2.0], ('lap',): [3.0, 4.0]}, axes=('pe',),
                      seeds=(0, 1))
    # an unfinished run (1 of 2 epochs): silently skipped
    write_run(tmp_path, {'pe': 'lap'}, 2, 5.0, epochs=1, config_epochs=2)
    # a started run without results.json: silently skipped
    (tmp_path / 'runs' / 'pe-lap' / 'seed-3').mkdir()
    (tmp_path / 'runs' / 'pe-lap' / 'seed-3' / 'cell.json').write_text('{}')
    # corrupt results.json / cell.json: one warning each
    (tmp_path / 'runs' / 'pe-none' / 'seed-1' / 'results.json').write_text('{"test": 2.')
    (tmp_path / 'runs' / 'pe-lap' / 'seed-0' / 'cell.json').write_text('[1, 2]')
    # no cell.json; a cell that is not in the grid: one warning each
    (tmp_path / 'runs' / 'pe-lap' / 'seed-1' / 'cell.json').unlink()
    write_run(tmp_path, {'pe': 'rwse'}, 0, 7.0)
    _, rows, warnings = collect_quiet([tmp_path])
    assert [(r['cell'], r['seed']) for r in rows] == [('pe-none', 0)]
    assert len(warnings) == 4, warnings
    text = '\n'.join(warnings)
    assert 'pe-none/seed-1/results.json' in text and 'pe-lap/seed-0/cell.json' in text
    assert 'no cell.json' in text and "'pe-rwse' is not in the grid" in text
    assert meta['seeds'] == [0, 1]


def test_collect_warns_on_stderr_by_default(tmp_path, capsys):
    make_bench(tmp_path, {('none',): [1.0]}, axes=('pe',), seeds=(0,))
    (tmp_path / 'runs' / 'pe-none' / 'seed-0' / 'results.json').write_text('oops')
    assert collect([tmp_path])[1] == []
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'results.json' in err


# --- files -----------------------------------------------------------------------------------

def test_csv_columns_as_in_the_contract(tmp_path):
    make_bench(tmp_path, GRID)
    write_run(tmp_path, {'pe': 'lap', 'model': 'gps'}, 2, 0.32, cost=False)  # an older run
    meta, rows, _ = collect_quiet([tmp_path])
    summary = write_report(tmp_path, meta, rows, figures=False)
    head, results = read_csv(tmp_path / 'results.csv')
    assert head == ['cell', 'pe', 'model', 'seed', 'status', 'metric', 'best_val', 'test',
                    'best_epoch', 'epochs', 'num_params', 'channels', 'seconds',
                    'seconds_per_epoch', 'train_seconds_per_epoch', 'peak_memory_mb',
                    'precompute_seconds', 'pe_bytes_per_graph', 'run_dir']
    assert len(results) == 12
    first = results[0]
    assert first['run_dir'] == 'runs/pe-none_model-gine/seed-0'
    assert float(first['test']) == 0.50 and float(first['peak_memory_mb']) == 300.0
    old = [r for r in results if r['cell'] == 'pe-lap_model-gps' and r['seed'] == '2'][0]
    assert old['seconds_per_epoch'] == old['peak_memory_mb'] == old['precompute_seconds'] == ''
    div = [r for r in results if r['status'] == 'diverged'][0]
    assert div['test'] == '' and div['cell'] == 'pe-none_model-gps'
    head, cells = read_csv(tmp_path / 'summary.csv')
    assert head == ['cell', 'pe', 'model', 'n', 'n_diverged', 'mean', 'std', 'ci95_low',
                    'ci95_high', 'best_val_mean', 'num_params', 'channels', 'seconds_per_epoch',
                    'peak_memory_mb', 'precompute_seconds', 'pe_bytes_per_graph',
                    'vs_pe_delta', 'vs_pe_p', 'vs_pe_verdict']
    assert [c['cell'] for c in cells] == [c['cell'] for c in meta['cells']]
    assert float(cells[0]['mean']) == summary[0]['mean']
    assert cells[0]['vs_pe_verdict'] == 'baseline' and cells[0]['vs_pe_p'] == ''
    assert cells[3]['vs_pe_verdict'] == 'better'


def test_write_report_writes_every_file_atomically(tmp_path, monkeypatch):
    import gtpe.train.figures as figures
    import gtpe.train.report as report
    written = []
    for module, name in ((report, 'atomic_write_text'), (figures, 'atomic_write_bytes')):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda path, data, real=real: (
            written.append(path.relative_to(tmp_path).as_posix()), real(path, data)))
    make_bench(tmp_path, GRID)
    write_report(tmp_path, *collect_quiet([tmp_path])[:2])
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')
                   if p.is_file() and 'runs' not in p.parts and p.name != 'bench.json')
    assert sorted(written) == files and len(files) == 3 + 6


def test_run_dir_outside_out_is_absolute(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0, 2.0]}, axes=('pe',), seeds=(0, 1))
    make_bench(tmp_path / 'b', {('none',): [3.0]}, axes=('pe',), seeds=(2,))
    meta, rows, _ = collect_quiet([tmp_path / 'a', tmp_path / 'b'])
    write_report(tmp_path / 'a', meta, rows, figures=False)
    dirs = [r['run_dir'] for r in read_csv(tmp_path / 'a' / 'results.csv')[1]]
    assert dirs[:2] == ['runs/pe-none/seed-0', 'runs/pe-none/seed-1']
    assert dirs[2] == str((tmp_path / 'b' / 'runs' / 'pe-none' / 'seed-2').resolve())


def test_report_md_has_pivot_baseline_table_costs_and_problems(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows, figures=False)
    md = (tmp_path / 'report.md').read_text()
    assert md.startswith('# Benchmark: zinc, test mae (lower is better)')
    assert "Welch's two-sided t-test" in md and 'p < 0.05' in md and 'n = 2/3' in md
    assert 'medians per run' in md
    assert (f'gtpe bench configs/bench/fake.yaml --out {tmp_path} --set train.epochs=2 '
            '--seeds 0,1,2\n') in md
    assert 'The machine this report was written on' in md and '- torch ' in md
    # pivot: pe rows x model columns, the best (lowest) in bold
    assert '| pe \\ model | gine | gps |' in md
    assert '| none | 0.51 ± 0.01 | 0.455 ± 0.0071 |' in md
    assert '| lap | 0.4 ± 0.01 | **0.305 ± 0.0071** |' in md
    # baseline table
    assert '## vs pe=none' in md
    assert '| lap | gine | 0.4 ± 0.01 | 0.51 ± 0.01 | -0.11 | <0.001 | better |' in md
    p = fmt_p(stats.ttest_ind([0.30, 0.31], [0.45, 0.46], equal_var=False).pvalue)
    assert f'| lap | gps | 0.305 ± 0.0071 | 0.455 ± 0.0071 | -0.15 | {p} | better |' in md
    # summary row: n, diverged, mean ± std, CI, params, channels, s/epoch, MB, precompute, KB
    assert '| none | gps | 2 | 1 | 0.455 ± 0.0071 | [0.3915, 0.5185] | 1,000 | 16 | 1.5 | ' \
           '300 | 3 | 2 |' in md
    assert '## Cost per PE' in md and '| lap | 3 | 2 |' in md
    assert '10 of 12 runs (4 cells × 3 seeds)' in md
    assert '- `pe-none_model-gps` seed 2: diverged (epoch 2: loss is nan)' in md
    assert '- `pe-lap_model-gps` seed 2: missing' in md
    assert '## Figures' not in md and not (tmp_path / 'figures').exists()


def test_report_md_embeds_figures_when_drawn(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows)
    md = (tmp_path / 'report.md').read_text()
    for name in ('heatmap', 'bars', 'cost'):
        assert f'![{name}](figures/{name}.png) ([svg](figures/{name}.svg))' in md
        assert (tmp_path / 'figures' / f'{name}.svg').is_file()
    write_report(tmp_path, meta, rows, figures=False)  # the existing figures stay linked
    assert '![heatmap](figures/heatmap.png)' in (tmp_path / 'report.md').read_text()


def test_report_without_pe_axis_or_second_axis(tmp_path):
    make_bench(tmp_path, {('full',): [1.0, 1.1], ('none',): [2.0, 2.1]}, axes=('model.attn',),
               seeds=(0, 1), higher=True, metric='auroc', sets=())
    meta = json.loads((tmp_path / 'bench.json').read_text())
    write_meta(tmp_path, {**meta, 'budget_params': 50000})
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows, figures=False)
    md = (tmp_path / 'report.md').read_text()
    assert '(higher is better)' in md and '## vs attn=none' in md
    assert (f'gtpe bench configs/bench/fake.yaml --out {tmp_path} --seeds 0,1 '
            '--budget-params 50000\n') in md
    assert 'Cost per PE' not in md and '(rows) ×' not in md
    assert '4 of 4 runs' in md and 'None.' in md
    head, _ = read_csv(tmp_path / 'summary.csv')
    assert head[1] == 'model.attn' and head[-3:] == [
        'vs_model.attn_delta', 'vs_model.attn_p', 'vs_model.attn_verdict']


def test_format_table_is_aligned_and_fits_120_columns(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    text = format_table(meta, summarize(meta, rows))
    lines = text.splitlines()
    assert lines[0].startswith('zinc: test mae (lower is better)')
    assert len(lines) == 3 + 4 and max(map(len, lines)) <= 120
    head = lines[1]
    for word in ('pe', 'model', 'n', 'div', 'mae mean ± std', 'vs pe=none', 'params', 's/epoch'):
        assert word in head
    assert 'better (p<0.001)' in lines[5]
    assert lines[3].split()[:5] == ['none', 'gine', '3', '0', '0.51']
    # columns line up: every row's mean starts under the header's
    col = head.index('mae mean')
    assert all(line[col:col + 4].strip()[:1].isdigit() for line in lines[3:])


def test_format_helpers():
    assert fmt_p(0.0031) == '0.003' and fmt_p(0.0004) == '<0.001' and fmt_p(None) == ''
    assert fmt_mean_std({'mean': 0.123456, 'std': 0.012345}) == '0.1235 ± 0.012'
    assert fmt_mean_std({'mean': 0.5, 'std': None}) == '0.5'
    assert fmt_mean_std({'mean': None, 'std': None}) == ''


def test_empty_bench_writes_headers_and_lists_every_run_missing(tmp_path):
    meta = make_meta(['pe'], {'pe': ['none', 'lap']}, seeds=(0,))
    write_meta(tmp_path, meta)
    meta, rows, _ = collect_quiet([tmp_path])
    summary = write_report(tmp_path, meta, rows)
    assert [r['n'] for r in summary] == [0, 0]
    assert read_csv(tmp_path / 'results.csv')[1] == []
    md = (tmp_path / 'report.md').read_text()
    assert '0 of 2 runs' in md and md.count(": missing (") == 2
    assert json.loads((tmp_path / 'bench.json').read_text()) == meta
