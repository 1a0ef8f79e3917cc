"""gtpe.train.figures: bench figures (heatmap, bars, cost) and a run's learning curves, drawn
from fake bench folders (tests/bench_fakes.py): no training."""
import math
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from bench_fakes import make_bench, write_run

from gtpe.train._dataclass_io import ConfigError
from gtpe.train.figures import (
    DPI,
    UNKNOWN_PRECOMPUTE,
    _num,
    cost_seconds,
    draw_bars,
    draw_bench_figures,
    draw_cost,
    draw_heatmap,
    plot_run,
)
from gtpe.train.report import collect, summarize

GRID = {('none', 'gine'): [0.50, 0.52, 0.51], ('none', 'gps'): [0.45, 0.46, 'div'],
        ('lap', 'gine'): [0.40, 0.41, 0.39], ('lap', 'gps'): [0.30, 0.31, None]}
PNG = b'\x89PNG\r\n\x1a\n'


def bench(path, tests=GRID, **kw):
    make_bench(path, tests, **kw)
    meta, rows = collect([path], log=lambda line: None)
    return meta, summarize(meta, rows)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b'IHDR'
    return struct.unpack('>II', data[16:24])


def svg_texts(path):
    root = ET.parse(path).getroot()
    return [''.join(e.itertext()) for e in root.iter('{http://www.w3.org/2000/svg}text')]


def test_bench_figures_are_png_and_svg_with_the_labels(tmp_path):
    meta, summary = bench(tmp_path)
    paths = draw_bench_figures(tmp_path, meta, summary)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f'figures/{n}.{ext}' for n in ('heatmap', 'bars', 'cost') for ext in ('png', 'svg')]
    for name, draw in (('heatmap', draw_heatmap), ('bars', draw_bars), ('cost', draw_cost)):
        w, h = draw(meta, summary).get_size_inches() * DPI
        assert png_size(tmp_path / 'figures' / f'{name}.png') == (round(w), round(h)) > (0, 0)
        texts = svg_texts(tmp_path / 'figures' / f'{name}.svg')
        joined = '\n'.join(texts)
        assert 'zinc: test mae (lower is better)' in joined
        if name == 'cost':
            assert {'none/gine', 'none/gps', 'lap/gine', 'lap/gps'} <= set(texts)
        else:
            assert {'none', 'lap', 'gine', 'gps'} <= set(texts)
    heat = svg_texts(tmp_path / 'figures' / 'heatmap.svg')
    assert {'0.51 ± 0.01', '0.305 ± 0.0071', 'n=2', 'n=3'} <= set(heat)
    assert {'n=3', 'n=2'} <= set(svg_texts(tmp_path / 'figures' / 'bars.svg'))


def test_error_bars_are_the_std(tmp_path):
    meta, summary = bench(tmp_path, {('none',): [1.0, 2.0, 3.0], ('lap',): [2.0, 2.2, 2.4]},
                          axes=('pe',))
    for fig in (draw_bars(meta, summary), draw_cost(meta, summary)):
        bars = [c for c in fig.axes[0].collections if c.get_segments()]
        spans = sorted(float(seg[1][1] - seg[0][1]) for c in bars for seg in c.get_segments())
        assert spans == pytest.approx([2 * 0.2, 2 * 1.0])


def test_svg_is_byte_identical_when_drawn_twice(tmp_path):
    meta, summary = bench(tmp_path / 'b')
    draw_bench_figures(tmp_path / 'one', meta, summary)
    draw_bench_figures(tmp_path / 'two', meta, summary)
    for name in ('heatmap', 'bars', 'cost'):
        one = (tmp_path / 'one' / 'figures' / f'{name}.svg').read_bytes()
        assert one == (tmp_path / 'two' / 'figures' / f'{name}.svg').read_bytes()
        assert b'<dc:date>' not in one


def test_heatmap_annotations_come_from_the_summary(tmp_path):
    meta, summary = bench(tmp_path)
    summary[0]['mean'], summary[0]['std'] = 0.1234, 0.05
    draw_bench_figures(tmp_path, meta, summary)
    texts = svg_texts(tmp_path / 'figures' / 'heatmap.svg')
    assert '0.1234 ± 0.05' in texts and '0.51 ± 0.01' not in texts


@pytest.mark.parametrize('higher', [False, True])
def test_heatmap_best_cell_is_yellow_whatever_the_direction(tmp_path, higher):
    from matplotlib import colormaps
    tests = {('none',): [1.0, 1.1], ('lap',): [2.0, 2.1], ('rwse',): [3.0, 3.1]}
    meta, summary = bench(tmp_path, tests, axes=('pe',), seeds=(0, 1), higher=higher)
    mesh = draw_heatmap(meta, summary).axes[0].collections[0]
    colours = mesh.to_rgba(mesh.get_array()).reshape(-1, 4)
    assert len(colours) == 3  # one axis: a single row
    best = 2 if higher else 0
    assert np.allclose(colours[best], colormaps['viridis'](1.0))
    assert np.allclose(colours[2 - best], colormaps['viridis'](0.0))


def test_heatmap_of_three_axes_joins_the_other_axes_in_the_columns(tmp_path):
    tests = {(pe, m, a): [1.0, 2.0] for pe in ('none', 'lap') for m in ('gine', 'gps')
             for a in ('full', 'linear')}
    meta, summary = bench(tmp_path, tests, axes=('pe', 'model', 'attn'), seeds=(0, 1))
    fig = draw_heatmap(meta, summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ['none', 'lap']
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        'gine/full', 'gine/linear', 'gps/full', 'gps/linear']
    assert ax.get_xlabel() == 'model/attn' and ax.get_ylabel() == 'pe'


def test_cost_x_is_precompute_plus_epochs_times_seconds_per_epoch_log_when_spread(tmp_path):
    row = {'seconds_per_epoch': 2.0, 'precompute_seconds': 5.0, 'epochs': 10}
    assert cost_seconds(row) == 25.0
    assert cost_seconds({**row, 'precompute_seconds': None}) == 20.0
    assert cost_seconds({**row, 'seconds_per_epoch': None}) is None
    meta, summary = bench(tmp_path, {('none',): [1.0, 1.2], ('lap',): [2.0, 2.2]}, axes=('pe',),
                          seeds=(0, 1))
    assert draw_cost(meta, summary).axes[0].get_xscale() == 'linear'
    summary[1]['seconds_per_epoch'] = 100.0
    ax = draw_cost(meta, summary).axes[0]
    assert ax.get_xscale() == 'log'
    xs = sorted({float(line.get_xdata()[0]) for line in ax.lines})  # points and error caps
    assert xs == [3.0 + 1.5 * 2, 3.0 + 100.0 * 2]


def test_unknown_precompute_is_marked_not_silently_zero(tmp_path):
    meta, summary = bench(tmp_path, {('none',): [1.0, 1.2], ('lap',): [2.0, 2.2]}, axes=('pe',),
                          seeds=(0, 1))
    draw_bench_figures(tmp_path, meta, summary)
    texts = svg_texts(tmp_path / 'figures' / 'cost.svg')
    assert {'none', 'lap'} <= set(texts) and UNKNOWN_PRECOMPUTE not in texts
    summary[1]['precompute_seconds'] = None  # runs whose PE cache entry has no cost
    assert cost_seconds(summary[1]) == 1.5 * 2
    draw_bench_figures(tmp_path, meta, summary)
    texts = svg_texts(tmp_path / 'figures' / 'cost.svg')
    assert {'none', 'lap*', UNKNOWN_PRECOMPUTE} <= set(texts)
    assert UNKNOWN_PRECOMPUTE.startswith('* precompute time unknown')


def test_num_takes_numbers_only():
    assert _num(2) == 2.0 and _num(0.5) == 0.5
    for v in (True, False, None, '1.0'):
        assert math.isnan(_num(v))


def test_figures_without_cost_or_runs_still_draw(tmp_path):
    make_bench(tmp_path, {('none',): [None], ('lap',): [None]}, axes=('pe',), seeds=(0,))
    write_run(tmp_path, {'pe': 'none'}, 0, 1.0, cost=False)
    meta, rows = collect([tmp_path])
    summary = summarize(meta, rows)
    draw_bench_figures(tmp_path, meta, summary)
    assert any('no cost data' in t for t in svg_texts(tmp_path / 'figures' / 'cost.svg'))
    assert 'n/a' in svg_texts(tmp_path / 'figures' / 'heatmap.svg')


def test_plot_run_draws_learning_curves(tmp_path):
    run_dir = write_run(tmp_path, {'pe': 'none'}, 0, 0.5, epochs=4, config_epochs=4)
    paths = plot_run(run_dir)
    assert paths == [run_dir / 'curves.png', run_dir / 'curves.svg']
    assert png_size(paths[0]) == (900, 750)
    texts = svg_texts(paths[1])
    for label in ('train loss', 'lr', 'val mae', 'test mae', 'epoch', 'best epoch 4'):
        assert label in texts


def test_plot_run_without_metrics_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match='metrics.csv is missing or empty'):
        plot_run(tmp_path)
    (tmp_path / 'metrics.csv').write_text('epoch,train_loss,val_mae,test_mae,lr,seconds\n')
    with pytest.raises(ConfigError, match='metrics.csv is missing or empty'):
        plot_run(tmp_path)
    (tmp_path / 'metrics.csv').write_text('a,b\n1,2\n')
    with pytest.raises(ConfigError, match='not a gtpe metrics file'):
        plot_run(tmp_path)


def test_matplotlib_is_imported_lazily_and_pyplot_never(tmp_path):
    make_bench(tmp_path, GRID)
    code = (
        'import sys\n'
        'from gtpe.train import figures, report\n'
        "assert 'matplotlib' not in sys.modules\n"
        'meta, rows = report.collect([sys.argv[1]])\n'
        'report.write_report(sys.argv[1], meta, rows)\n'
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, '-c', code, str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / 'figures' / 'heatmap.png').is_file()
