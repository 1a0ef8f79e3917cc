"""gtpe.train.report: collecting bench folders, statistics, CSVs, report.md, the terminal table.
Fake bench folders only (tests/bench_fakes.py): no training."""
import csv
import json
import math
import os
from pathlib import Path

import pytest
from bench_fakes import fake_config, make_bench, make_meta, write_meta, write_run
from scipy import stats

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.config import experiment_hash
from gtpe.train.report import (
    bench_title,
    collect,
    compare,
    describe,
    fmt_mean_std,
    fmt_p,
    format_table,
    holm,
    is_finished,
    summarize,
    write_report,
)

GRID = {('none', 'gine'): [0.50, 0.52, 0.51], ('none', 'gps'): [0.45, 0.46, 'div'],
        ('lap', 'gine'): [0.40, 0.41, 0.39], ('lap', 'gps'): [0.30, 0.31, None]}
RWSE = {'pe': {'rwse': {'walk_length': 6, 'dim': 4}}}


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
    c = compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], higher_is_better=True)
    assert c['verdict'] == 'within noise' and c['p'] >= 0.05 and c['delta'] == pytest.approx(0.0)
    none = {'delta_ci95_low': None, 'delta_ci95_high': None, 'p': None, 'verdict': 'n/a'}
    assert compare([1.0, 1.0], [1.0, 1.0], True) == {  # no p-value
        'delta': 0.0, 'delta_pct': 0.0, **none}
    assert compare([1.0], [2.0, 3.0], True) == {'delta': -1.5, 'delta_pct': -60.0, **none}
    assert compare([], [2.0, 3.0], True) == {'delta': None, 'delta_pct': None, **none}
    assert compare([1.0, 2.0], [0.0, 0.0], True)['delta_pct'] is None  # baseline mean 0


def test_compare_gives_the_welch_interval_of_the_difference_and_delta_percent():
    a, b = [0.30, 0.32, 0.31, 0.29], [0.40, 0.45, 0.38]
    c = compare(a, b, higher_is_better=False)
    welch = stats.ttest_ind(a, b, equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert (c['delta_ci95_low'], c['delta_ci95_high']) == (pytest.approx(low, rel=1e-12),
                                                          pytest.approx(high, rel=1e-12))
    # by hand: Welch-Satterthwaite degrees of freedom
    va, vb = stats.tvar(a) / 4, stats.tvar(b) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert c['delta_ci95_low'] == pytest.approx(c['delta'] - half, rel=1e-9)
    base = sum(b) / 3
    assert c['delta_pct'] == pytest.approx(100 * (sum(a) / 4 - base) / base)
    assert c['p'] == pytest.approx(welch.pvalue) and c['verdict'] == 'better'


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_holm_p_is_over_every_comparison_of_the_report(tmp_path):
    tests = {(pe, m): [v + d, v + 2 * d, v + 3 * d] for (pe, v) in (('none', 1.0), ('lap', 1.5))
             for m, d in (('none', 0.01), ('gps', 0.02))}
    make_bench(tmp_path, tests)
    meta, rows, _ = collect_quiet([tmp_path])
    assert meta['baselines'] == {'pe': 'none', 'model': 'none'}
    summary = summarize(meta, rows)
    found = [(r['cell'], a) for r in summary for a in ('pe', 'model')
             if r[f'vs_{a}_p'] is not None]
    assert len(found) == 4
    ps = [by_cell(summary)[c][f'vs_{a}_p'] for c, a in found]
    for (c, a), adjusted in zip(found, holm(ps)):
        row = by_cell(summary)[c]
        assert row[f'vs_{a}_p_holm'] == pytest.approx(adjusted)
        assert row[f'vs_{a}_p_holm'] >= row[f'vs_{a}_p']
    assert by_cell(summary)['pe-none_model-none']['vs_pe_p_holm'] is None  # the baseline
    assert 'This report makes 4 comparison(s)' in render(tmp_path, meta, rows)


def test_pivot_arrows_name_the_axis_when_several_baselines(tmp_path):
    tests = {(pe, m): [v + d, v + 2 * d, v + 3 * d] for (pe, v) in (('none', 1.0), ('lap', 1.5))
             for m, d in (('none', 0.01), ('gps', 0.02))}
    make_bench(tmp_path, tests)
    meta, rows, _ = collect_quiet([tmp_path])
    md = render(tmp_path, meta, rows)
    assert '| lap | 1.52 ± 0.01 pe↑ | 1.54 ± 0.02 pe↑ |' in md  # model gps: within noise
    assert '| none | **1.02 ± 0.01** | 1.04 ± 0.02 |' in md
    assert 'so here ↓ is better and ↑ is worse' in md


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
    assert none['train_seconds_per_epoch'] == pytest.approx(1.6)
    assert none['peak_memory_increase_mb'] == 100.0 and none['peak_memory_kind'] == 'rss'
    assert none['labels'] == {'pe': 'none'} and none['values'] == [1.0, 2.0, 3.0]
    assert none['epochs'] == 2
    for key in ('seconds_per_epoch', 'train_seconds_per_epoch', 'peak_memory_mb',
                'peak_memory_increase_mb', 'peak_memory_kind', 'precompute_seconds',
                'pe_bytes_per_graph'):
        assert lap[key] is None


def test_memory_kinds_are_not_mixed_in_a_cell(tmp_path):
    make_bench(tmp_path, {('none',): [1.0, 2.0, 3.0], ('lap',): [1.0, 2.0]}, axes=('pe',))
    write_run(tmp_path, {'pe': 'none'}, 2, 3.0, memory_kind='cuda', peak_mb=50, start_mb=10)
    write_run(tmp_path, {'pe': 'lap'}, 1, 2.0, start_mb=None)  # an older run: no start
    meta, rows, _ = collect_quiet([tmp_path])
    assert [(r['peak_memory_kind'], r['peak_memory_increase_mb']) for r in rows] == [
        ('rss', 100.0), ('rss', 100.0), ('cuda', 40.0), ('rss', 100.0), ('rss', None)]
    none, lap = summarize(meta, rows)
    assert none['peak_memory_kind'] == 'mixed'
    assert none['peak_memory_mb'] is none['peak_memory_increase_mb'] is None
    assert (lap['peak_memory_kind'], lap['peak_memory_mb']) == ('rss', 300.0)
    assert lap['peak_memory_increase_mb'] == 100.0  # the run that has it
    write_report(tmp_path, meta, rows, figures=False)
    md = (tmp_path / 'report.md').read_text()
    assert '| none | 3 | 0 | 2 ± 1 | [-0.4841, 4.484] | 1,000 | 16 | 1.5 | 1.2 |  |  | mixed |' in md
    assert 'Peak RSS includes the Python/torch baseline' in md
    assert '`gtpe bench --workers 1` trains every run in the one bench process' in md
    assert 'RSS is not comparable across cells' in md and 'fresh process' in md
    _, cells = read_csv(tmp_path / 'summary.csv')
    assert cells[0]['peak_memory_kind'] == 'mixed' and cells[0]['peak_memory_mb'] == ''


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
    assert meta2['collected_from'] == [str(tmp_path / 'a'), str(tmp_path / 'b')]
    assert {k: v for k, v in meta2.items() if k != 'collected_from'} == {
        k: v for k, v in meta1.items() if k != 'collected_from'}

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
    write_meta(tmp_path / 'e', {**json.loads((tmp_path / 'a' / 'bench.json').read_text()),
                                'higher_is_better': True})
    with pytest.raises(ConfigError, match='higher_is_better'):
        collect([tmp_path / 'a', tmp_path / 'e'])
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
                    'peak_memory_increase_mb', 'peak_memory_kind', 'precompute_seconds',
                    'pe_bytes_per_graph', 'run_dir']
    assert len(results) == 12
    first = results[0]
    assert first['run_dir'] == 'runs/pe-none_model-gine/seed-0'
    assert float(first['test']) == 0.50 and float(first['peak_memory_mb']) == 300.0
    assert float(first['peak_memory_increase_mb']) == 100.0
    assert first['peak_memory_kind'] == 'rss'
    old = [r for r in results if r['cell'] == 'pe-lap_model-gps' and r['seed'] == '2'][0]
    assert old['seconds_per_epoch'] == old['peak_memory_mb'] == old['precompute_seconds'] == ''
    div = [r for r in results if r['status'] == 'diverged'][0]
    assert div['test'] == '' and div['cell'] == 'pe-none_model-gps'
    head, cells = read_csv(tmp_path / 'summary.csv')
    assert head == ['cell', 'pe', 'model', 'n', 'n_diverged', 'mean', 'std', 'ci95_low',
                    'ci95_high', 'best_val_mean', 'num_params', 'channels', 'seconds_per_epoch',
                    'train_seconds_per_epoch', 'peak_memory_mb', 'peak_memory_increase_mb',
                    'peak_memory_kind', 'precompute_seconds', 'pe_bytes_per_graph',
                    'vs_pe_delta', 'vs_pe_delta_pct', 'vs_pe_delta_ci95_low',
                    'vs_pe_delta_ci95_high', 'vs_pe_p', 'vs_pe_p_holm', 'vs_pe_verdict']
    assert [c['cell'] for c in cells] == [c['cell'] for c in meta['cells']]
    assert float(cells[0]['mean']) == summary[0]['mean']
    assert cells[0]['vs_pe_verdict'] == 'baseline' and cells[0]['vs_pe_p'] == ''
    assert cells[3]['vs_pe_verdict'] == 'better'
    assert float(cells[0]['train_seconds_per_epoch']) == pytest.approx(1.2)
    assert float(cells[3]['vs_pe_p_holm']) == pytest.approx(summary[3]['vs_pe_p_holm'])
    assert float(cells[3]['vs_pe_delta_ci95_low']) < float(cells[3]['vs_pe_delta']) < float(
        cells[3]['vs_pe_delta_ci95_high'])


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
    make_bench(tmp_path, GRID, models={('lap', 'gine'): RWSE, ('lap', 'gps'): RWSE})
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows, figures=False)
    md = (tmp_path / 'report.md').read_text()
    assert md.startswith('# Benchmark — zinc: test mae (lower is better)')
    assert "Welch's two-sided t-test" in md and 'p < 0.05' in md and 'n = 2/3' in md
    assert 'medians per run' in md
    assert (f'gtpe bench configs/bench/fake.yaml --out {tmp_path} --set train.epochs=2 '
            '--seeds 0,1,2\n') in md
    assert 'gtpe report' not in md and 'merged from' not in md
    assert 'The machine this report was written on' in md and '- torch ' in md
    # pivot: pe rows x model columns, the best (lowest) in bold, the verdicts as arrows
    assert '| pe \\ model | gine | gps |' in md
    assert '| none | 0.51 ± 0.01 | 0.455 ± 0.0071 |' in md
    assert '| lap | 0.4 ± 0.01 ↓ | **0.305 ± 0.0071** ↓ |' in md
    assert 'so here ↓ is better and ↑ is worse' in md
    # baseline table: Δ, Δ %, Welch CI of Δ, p, Holm p, verdict, cost ratios
    assert '### vs pe=none' in md
    assert ('| lap | gine | 0.4 ± 0.01 | 0.51 ± 0.01 | -0.11 | -21.6% | [-0.133, -0.0873] | '
            '<0.001 | <0.001 | better | 1.00× | +0 | 1.00× |') in md
    p = fmt_p(stats.ttest_ind([0.30, 0.31], [0.45, 0.46], equal_var=False).pvalue)
    assert (f'| lap | gps | 0.305 ± 0.0071 | 0.455 ± 0.0071 | -0.15 | -33.0% | [-0.18, -0.12] '
            f'| {p} | {p} | better |') in md  # the larger of 2 p-values: Holm keeps it
    assert 'This report makes 2 comparison(s)' in md
    assert 'with ~50 tests at 0.05, about 2-3 are expected unadjusted' in md
    assert 'Holm-adjusted over all 2 comparisons of this report' in md
    # summary row: n, diverged, mean ± std, CI, params, channels, s/epoch, train s/epoch,
    # peak MB, MB over start, memory kind, precompute, KB
    assert '| none | gps | 2 | 1 | 0.455 ± 0.0071 | [0.3915, 0.5185] | 1,000 | 16 | 1.5 | ' \
           '1.2 | 300 | 100 | rss | 3 | 2 |' in md
    # cost per PE: grouped by the transforms of the runs' configs
    assert '## Cost per PE' in md and 'train+val+test after `dataset.limit`' in md
    assert 'the RRWP that GRIT (`attn: grit`) adds' in md and 'Exphormer' in md
    assert '| none | none/gine, none/gps | 3 | 2 |' in md
    assert "| `AddRWSE(walk_length=6, method='auto'" in md and '| lap/gine, lap/gps | 3 | 2 |' in md
    assert '10 of 12 runs (4 cells × 3 seeds)' in md
    assert '- `pe-none_model-gps` seed 2: diverged (epoch 2: loss is nan)' in md
    assert '- `pe-lap_model-gps` seed 2: missing: not in this folder (' in md
    assert 'run by another shard into another folder' in md
    assert '## Figures' not in md and not (tmp_path / 'figures').exists()


def test_cost_per_pe_groups_by_the_transforms_not_by_the_label(tmp_path):
    models = {('rwse', 'gine'): RWSE, ('rwse', 'grit'): {**RWSE, 'attn': 'grit'},
              ('none', 'grit'): {'attn': 'grit'}, ('none', 'exphormer'): {'attn': 'exphormer'},
              ('walk', 'gine'): RWSE, ('bad', 'gine'): {'channels': 4, **RWSE}}
    make_bench(tmp_path, {k: [1.0] for k in models}, seeds=(0,), models=models,
               run_kw={('walk', 'gine'): {'precompute_seconds': 5.0}})
    meta, rows, warnings = collect_quiet([tmp_path])
    assert warnings == []
    md = render(tmp_path, meta, rows)
    section = md[md.index('## Cost per PE'):md.index('## Diverged')]
    lines = [line for line in section.splitlines() if line.startswith('| ')][2:]
    assert len(lines) == 5
    assert lines[0].startswith("| `AddRWSE(walk_length=6, method='auto'")
    assert lines[0].endswith(' | rwse/gine, walk/gine | 4 | 2 |')  # the median of 3 and 5
    assert lines[1].startswith("| `AddRWSE(") and ' + `AddRRWP(walk_length=21' in lines[1]
    assert lines[1].endswith(' | rwse/grit | 3 | 2 |')
    assert lines[2] == '| `AddRRWP(walk_length=21, dense_max_nodes=128)` | none/grit | 3 | 2 |'
    assert lines[3].startswith('| `AddExpanderEdges(degree=3') and 'none/exphormer' in lines[3]
    # channels 4 with an RWSE of dim 4 is not a valid model config: transforms unknown
    assert lines[4].startswith('| unknown (') and 'bad/gine' in lines[4]


def test_no_cost_per_pe_without_transforms(tmp_path):
    make_bench(tmp_path, {('none',): [1.0], ('x',): [None]}, axes=('pe',), seeds=(0,),
               models={('x',): RWSE})  # the cell with a transform has no run
    meta, rows, _ = collect_quiet([tmp_path])
    assert '## Cost per PE' not in render(tmp_path, meta, rows)
    make_bench(tmp_path / 'b', {('none',): [1.0], ('x',): [2.0]}, axes=('pe',), seeds=(0,),
               models={('x',): {'channels': 2, **RWSE}})  # transforms unknown: shown
    meta, rows, _ = collect_quiet([tmp_path / 'b'])
    assert '| unknown (a model config this gtpe cannot read) | x |' in render(
        tmp_path / 'b', meta, rows)


def render(out, meta, rows):
    write_report(out, meta, rows, figures=False)
    return (out / 'report.md').read_text()


def test_report_embeds_only_figures_drawn_with_it(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows)
    md = (tmp_path / 'report.md').read_text()
    for name in ('heatmap', 'bars', 'cost'):
        assert f'![{name}](figures/{name}.png) ([svg](figures/{name}.svg))' in md
        assert (tmp_path / 'figures' / f'{name}.svg').is_file()
    for name in ('heatmap', 'bars', 'cost'):
        os.utime(tmp_path / 'figures' / f'{name}.png', (0, 1_000_000_000 + len(name)))
    write_report(tmp_path, meta, rows, figures=False)  # e.g. after one more run of a bench
    md = (tmp_path / 'report.md').read_text()
    assert '](figures/' not in md
    assert ('Not linked: the figures in `figures/` are from the last complete write '
            '(2001-09-09 01:46:47 UTC) and may not match these tables.') in md
    (tmp_path / 'figures' / 'heatmap.png').unlink()
    (tmp_path / 'figures' / 'bars.png').unlink()
    assert '(2001-09-09 01:46:44 UTC)' in render(tmp_path, meta, rows)  # cost.png's time


def test_report_without_pe_axis_or_second_axis(tmp_path):
    make_bench(tmp_path, {('full',): [1.0, 1.1], ('none',): [2.0, 2.1]}, axes=('model.attn',),
               seeds=(0, 1), higher=True, metric='auroc', sets=())
    meta = json.loads((tmp_path / 'bench.json').read_text())
    write_meta(tmp_path, {**meta, 'budget_params': 50000})
    meta, rows, _ = collect_quiet([tmp_path])
    write_report(tmp_path, meta, rows, figures=False)
    md = (tmp_path / 'report.md').read_text()
    assert '(higher is better)' in md and '### vs attn=none' in md
    assert (f'gtpe bench configs/bench/fake.yaml --out {tmp_path} --seeds 0,1 '
            '--budget-params 50000\n') in md
    assert '## Cost per PE' not in md and '(rows) ×' not in md
    assert '4 of 4 runs' in md and 'None.' in md
    head, _ = read_csv(tmp_path / 'summary.csv')
    assert head[1] == 'model.attn' and head[-7:] == [
        'vs_model.attn_delta', 'vs_model.attn_delta_pct', 'vs_model.attn_delta_ci95_low',
        'vs_model.attn_delta_ci95_high', 'vs_model.attn_p', 'vs_model.attn_p_holm',
        'vs_model.attn_verdict']


def test_format_table_is_aligned_and_fits_120_columns(tmp_path):
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    text = format_table(meta, summarize(meta, rows))
    lines = text.splitlines()
    assert lines[0].startswith('zinc: test mae (lower is better)')
    assert len(lines) == 3 + 4 and max(map(len, lines)) <= 120
    head = lines[1]
    for word in ('pe', 'model', 'n', 'div', 'mae mean ± std', 'vs pe=none', 'params', 's/epoch',
                 'train s/epoch'):
        assert word in head
    assert 'better (p<0.001)' in lines[5]
    assert lines[3].split()[:5] == ['none', 'gine', '3', '0', '0.51']
    assert lines[3].split()[-3:] == ['1,000', '1.5', '1.2']  # params, s/epoch, train s/epoch
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
    assert '0 of 2 runs' in md and md.count(': missing: not in this folder (') == 2
    collected = {'collected_from': [str(tmp_path)], 'skipped_runs': []}
    assert {**json.loads((tmp_path / 'bench.json').read_text()), **collected} == meta


# --- one experiment per cell -----------------------------------------------------------------

def test_runs_of_another_config_are_skipped_with_a_warning_and_listed(tmp_path):
    make_bench(tmp_path, {('none',): [1.0, 2.0, 3.0], ('lap',): [4.0, 5.0, 6.0]}, axes=('pe',))
    write_run(tmp_path, {'pe': 'none'}, 1, 9.0, config_epochs=3, epochs=3)  # other settings
    write_run(tmp_path, {'pe': 'lap'}, 2, 9.0, model=RWSE)
    # machine keys and the seed do not make another experiment
    run = tmp_path / 'runs' / 'pe-lap' / 'seed-0' / 'results.json'
    results = json.loads(run.read_text())
    results['config']['train']['device'] = 'cuda'
    results['config']['dataset']['root'] = '/elsewhere'
    run.write_text(json.dumps(results))
    meta, rows, warnings = collect_quiet([tmp_path])
    assert [(r['cell'], r['seed'], r['test']) for r in rows] == [
        ('pe-none', 0, 1.0), ('pe-none', 2, 3.0), ('pe-lap', 0, 4.0), ('pe-lap', 1, 5.0)]
    assert len(warnings) == 2 and all('run with other settings); skipped' in w for w in warnings)
    assert 'pe-lap/seed-2' in warnings[0] and 'pe-none/seed-1' in warnings[1]  # folder order
    skipped = meta['skipped_runs']
    assert [(s['cell'], s['seed']) for s in skipped] == [('pe-lap', 2), ('pe-none', 1)]
    assert skipped[1]['expected'] == experiment_hash(fake_config())
    assert skipped[1]['experiment'] == experiment_hash(fake_config(epochs=3))
    assert by_cell(summarize(meta, rows))['pe-none']['mean'] == 2.0  # 9.0 not averaged in
    md = render(tmp_path, meta, rows)
    assert "- 2 run(s) skipped: their config is not their cell's experiment" in md
    assert f"  - `{(tmp_path / 'runs/pe-lap/seed-2').resolve()}`: experiment " in md


def test_bench_json_without_experiment_is_not_checked(tmp_path):
    make_bench(tmp_path, {('none',): [1.0, 2.0]}, axes=('pe',), seeds=(0, 1), experiment=False)
    write_run(tmp_path, {'pe': 'none'}, 1, 9.0, config_epochs=3, epochs=3)
    meta, rows, warnings = collect_quiet([tmp_path])
    assert [r['test'] for r in rows] == [1.0, 9.0] and warnings == []
    assert meta['skipped_runs'] == []


def test_folders_with_other_experiments_are_refused(tmp_path):
    tests = {('none',): [1.0], ('lap',): [2.0]}
    make_bench(tmp_path / 'a', tests, axes=('pe',), seeds=(0,))
    make_bench(tmp_path / 'b', tests, axes=('pe',), seeds=(1,), config_epochs=3)
    with pytest.raises(ConfigError, match='cell pe-none is experiment .* it is .*not the same'):
        collect([tmp_path / 'a', tmp_path / 'b'])
    # a cell only in one folder cannot disagree; the common one agrees
    make_bench(tmp_path / 'c', {('none',): [1.0], ('rwse',): [2.0]}, axes=('pe',), seeds=(1,),
               models={('rwse',): RWSE})
    meta, rows, _ = collect_quiet([tmp_path / 'a', tmp_path / 'c'])
    assert meta['values'] == {'pe': ['none', 'lap', 'rwse']} and len(rows) == 4


@pytest.mark.parametrize('key, value', [('budget_params', 50000),
                                        ('set', ['train.epochs=2', 'train.device=cuda'])])
def test_budget_and_set_may_differ_only_when_the_hashes_agree(tmp_path, key, value):
    tests = {('none',): [1.0], ('lap',): [2.0]}
    make_bench(tmp_path / 'a', tests, axes=('pe',), seeds=(0,))
    make_bench(tmp_path / 'b', tests, axes=('pe',), seeds=(1,))
    meta_b = json.loads((tmp_path / 'b' / 'bench.json').read_text())
    write_meta(tmp_path / 'b', {**meta_b, key: value})
    meta, rows, _ = collect_quiet([tmp_path / 'a', tmp_path / 'b'])  # same hashes: merged
    assert meta[key] == make_meta(['pe'], {'pe': ['none', 'lap']})[key]  # the first's
    assert len(rows) == 4
    md = render(tmp_path / 'out', meta, rows)
    assert 'This report: merged from 2 folders' in md
    # an older bench.json (no hashes): refused
    write_meta(tmp_path / 'b', {**meta_b, key: value,
                                'cells': [{k: v for k, v in c.items() if k != 'experiment'}
                                          for c in meta_b['cells']]})
    with pytest.raises(ConfigError, match=f'{key} .* differs from .*no common cell has '
                                          'experiment hashes'):
        collect([tmp_path / 'a', tmp_path / 'b'])
    # no common cell: nothing shows they are the same experiment
    make_bench(tmp_path / 'c', {('rwse',): [1.0]}, axes=('pe',), seeds=(1,))
    meta_c = json.loads((tmp_path / 'c' / 'bench.json').read_text())
    write_meta(tmp_path / 'c', {**meta_c, key: value})
    with pytest.raises(ConfigError, match=key):
        collect([tmp_path / 'a', tmp_path / 'c'])


def test_is_finished():
    config = fake_config(seed=3, epochs=2)
    done = {'status': 'completed', 'epochs': 2, 'config': config}
    assert is_finished(done) and is_finished(done, config)
    assert not is_finished({**done, 'epochs': 1})
    assert is_finished({**done, 'epochs': 1, 'status': 'diverged'})
    # early stopping (train.patience) ends a run before train.epochs: finished too
    assert is_finished({**done, 'epochs': 1, 'stopped_early': True}, config)
    assert not is_finished({**done, 'epochs': 1, 'stopped_early': False}, config)
    assert not is_finished({'status': 'completed', 'epochs': 2})  # no config: no epochs
    # with a config: the run's config must be it, machine keys aside (not the seed)
    moved = fake_config(seed=3, epochs=2)
    moved['train']['device'] = 'cuda:1'
    moved['train']['num_workers'] = 4
    moved['dataset']['root'] = '/data'
    assert is_finished(done, moved)
    assert not is_finished(done, fake_config(seed=4, epochs=2))
    assert not is_finished({**done, 'status': 'diverged'}, fake_config(epochs=2, channels=8))
    assert not is_finished({'status': 'diverged', 'epochs': 1}, config)  # no config to compare
    # the epochs to reach are the given config's
    assert not is_finished({**done, 'config': fake_config(seed=3, epochs=3)},
                           fake_config(seed=3, epochs=2))


def test_the_same_folder_twice_is_read_once(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0, 2.0]}, axes=('pe',), seeds=(0, 1))
    alias = tmp_path / 'a' / '..' / 'a'
    meta, rows, warnings = collect_quiet([tmp_path / 'a', alias, tmp_path / 'a'])
    assert warnings == [] and len(rows) == 2
    assert meta['collected_from'] == [str(tmp_path / 'a')]
    md = render(tmp_path / 'a', meta, rows)
    assert 'gtpe report' not in md and 'merged from' not in md


def test_merged_report_shows_the_report_and_the_bench_command(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0]}, axes=('pe',), seeds=(0,))
    make_bench(tmp_path / 'b b', {('none',): [2.0]}, axes=('pe',), seeds=(1,))
    meta, rows, _ = collect_quiet([tmp_path / 'a', tmp_path / 'b b'])
    md = render(tmp_path / 'all', meta, rows)
    command = md[md.index('## Command'):md.index('## Machine')]
    assert (f"    gtpe report {tmp_path / 'a'} '{tmp_path / 'b b'}' --out {tmp_path / 'all'}\n"
            in command)
    assert 'This report: merged from 2 folders' in command
    assert (f"    gtpe bench configs/bench/fake.yaml --out {tmp_path / 'a'} --set train.epochs=2 "
            '--seeds 0,1\n') in command
    assert ': missing: not in these folders (' not in md  # nothing missing
    # one folder reported elsewhere: the report command, no merge
    meta, rows, _ = collect_quiet([tmp_path / 'a'])
    md = render(tmp_path / 'elsewhere', meta, rows)
    assert f"    gtpe report {tmp_path / 'a'} --out {tmp_path / 'elsewhere'}\n" in md
    assert 'This report: the runs were made by' in md and 'merged from' not in md


def test_missing_runs_of_merged_folders_say_these_folders(tmp_path):
    make_bench(tmp_path / 'a', {('none',): [1.0, None]}, axes=('pe',), seeds=(0, 1))
    make_bench(tmp_path / 'b', {('none',): [None, None]}, axes=('pe',), seeds=(0, 1))
    meta, rows, _ = collect_quiet([tmp_path / 'a', tmp_path / 'b'])
    md = render(tmp_path / 'a', meta, rows)
    assert '- `pe-none` seed 1: missing: not in these folders (' in md


# --- one helper each, small functions --------------------------------------------------------

def test_one_title_helper_for_tables_and_figures(tmp_path):
    from gtpe.train import figures, report
    make_bench(tmp_path, GRID)
    meta, rows, _ = collect_quiet([tmp_path])
    title = bench_title(meta)
    assert title == 'zinc: test mae (lower is better)'
    assert format_table(meta, summarize(meta, rows)).startswith(title + ', ')
    assert figures._title(meta).startswith(title + ', ')
    assert bench_title({**meta, 'higher_is_better': True}).endswith('(higher is better)')
    for twin in ('_short', '_median', '_direction'):
        assert not hasattr(report, twin) and not hasattr(figures, twin)


def test_functions_are_small_and_lines_short():
    import ast
    import inspect

    from gtpe.train import cost, figures, report
    for module in (report, figures, cost):
        source = inspect.getsource(module)
        assert max(len(line) for line in source.splitlines()) <= 100, module.__name__
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 50, (module.__name__, node.name)
            if isinstance(node, ast.FunctionDef) and node.name.startswith('_md_'):
                assert node.end_lineno - node.lineno < 40, node.name
    assert report.render_markdown.__code__.co_firstlineno  # still there, now small
