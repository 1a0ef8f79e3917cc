"""``gtpe bench`` grids (:mod:`gtpe.train.grid`): cells, seeds, the parameter budget, baselines,
shards by cell, experiment hashes, the shipped grids and bad input. No training."""
from pathlib import Path

import pytest
from bench_utils import BASE, GRID, write_grid
from cli_utils import one_line, run_main

from gtpe.train.bench import expand_grid
from gtpe.train.config import ConfigError, experiment_hash, load_config
from gtpe.train.grid import (
    channels_for_budget,
    in_shard,
    load_grid,
    param_count,
    parse_shard,
    plan_runs,
)

REPO = Path(__file__).resolve().parents[1]


def test_seeds_from_the_grid_the_option_or_the_base(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    assert [(r.cell.name, r.seed) for r in plan_runs(grid)] == [
        ('pe-none', 0), ('pe-none', 1), ('pe-rwse', 0), ('pe-rwse', 1)]
    assert [r.config.train.seed for r in plan_runs(grid)] == [0, 1, 0, 1]
    assert [r.seed for r in plan_runs(grid, seeds=[7])] == [7, 7]
    grid.seeds = None  # without seeds: each cell once with the base's train.seed (5)
    assert [(r.seed, r.config.train.seed) for r in plan_runs(grid)] == [(5, 5), (5, 5)]


def test_every_run_of_a_cell_has_the_cells_experiment(tmp_path):
    runs = plan_runs(load_grid(write_grid(tmp_path)))
    for run in runs:
        assert run.experiment == experiment_hash(run.config.to_dict())
        assert run.cell_json() == {'cell': run.cell.name, 'labels': run.cell.labels,
                                   'seed': run.seed, 'channels': 16, 'budget_params': None,
                                   'experiment': run.experiment}
    assert runs[0].experiment == runs[1].experiment != runs[2].experiment == runs[3].experiment
    # machine keys do not change the experiment, a real change does
    machine = plan_runs(load_grid(write_grid(tmp_path), ['train.device=auto',
                                                         'dataset.root=/elsewhere']))
    assert [r.experiment for r in machine] == [r.experiment for r in runs]
    other = plan_runs(load_grid(write_grid(tmp_path), ['train.lr=0.01']))
    assert other[0].experiment != runs[0].experiment


def test_budget_search_without_attention_and_too_small(monkeypatch):
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
    assert smaller[0].experiment != runs[0].experiment  # another width: another experiment


@pytest.mark.parametrize('path', sorted((REPO / 'configs' / 'bench').glob('*.yaml')),
                         ids=lambda p: p.name)
def test_shipped_grids_fit_the_budgets_and_have_the_baselines(path):
    grid = load_grid(path)
    if grid.cells[0].config.dataset.name in ('cora', 'citeseer'):
        # node-level grids: each cell is a shipped config (base: per value), 5 seeds, the GCN
        # config as the baseline
        name = grid.cells[0].config.dataset.name
        assert grid.seeds == [0, 1, 2, 3, 4] and grid.baselines == {'model': 'gcn'}
        for cell in grid.cells:
            label = cell.labels['model'].replace('gps-', 'gps+')
            shipped = load_config(REPO / 'configs' / name / f'{label}.yaml')
            assert cell.config == shipped
        return
    if grid.axes == ['impl', 'recipe']:
        # the learning-parity grid: the same model on gtpe's layers and on PyG's GPSConv
        assert {c.config.model.arch for c in grid.cells} == {'gps', 'pyg-gps'}
        assert grid.seeds == [0, 1, 2, 3, 4] and set(grid.baselines) == set(grid.axes)
        for budget in (500_000, 100_000):
            runs = plan_runs(grid, seeds=[0], budget_params=budget)
            assert all(param_count(r.config) <= budget for r in runs)
        return
    for budget in (500_000, 100_000):
        runs = plan_runs(grid, seeds=[0], budget_params=budget)
        assert len(runs) == len(grid.cells) >= 8
        assert all(param_count(r.config) <= budget for r in runs)
    assert grid.seeds == [0, 1, 2] and set(grid.baselines) == set(grid.axes)
    plain = {(c.config.model.local, c.config.model.attn) for c in grid.cells
             if not list(c.config.model.transforms())}
    if grid.axes == ['model']:
        # one model axis (each model with its paper's encoding): GPS without encoding and the
        # message-passing-only baselines are cells of it
        assert {('gine', 'full'), ('gine', None), ('gatedgcn', None)} <= plain
        return
    assert 'none' in grid.values['pe']
    if 'model' in grid.axes:
        # grids comparing models: message-passing-only GINE and GatedGCN baselines, no encodings
        assert {('gine', None), ('gatedgcn', None)} <= plain
    else:
        # the directed grids compare encodings x local layers inside GPS: the direction-blind
        # local (GINE on the symmetrised graph) without encodings is the baseline cell
        assert grid.baselines == {'pe': 'none', 'local': 'gine'}
        assert ('gine', 'full') in plain and ('dirgine', 'full') in plain


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
    assert expand_grid(write_grid(tmp_path, text))[0] == ['pe', 'model.attn']


def test_an_axis_value_may_name_its_own_base_config(tmp_path):
    import yaml
    other = dict(BASE, model={'channels': 24, 'num_layers': 2, 'heads': 4, 'attn': None})
    (tmp_path / 'other.yaml').write_text(yaml.safe_dump(other))
    text = ('base: base.yaml\nset: {train.epochs: 2}\ngrid:\n  model:\n    gps: {}\n'
            '    plain: {base: other.yaml, model.channels: 32}\n'
            '  pe:\n    none: {}\n    rwse: {model.pe.rwse: {walk_length: 6, dim: 4}}\n')
    grid = load_grid(write_grid(tmp_path, text))
    by_name = {c.name: c.config for c in grid.cells}
    assert by_name['model-gps_pe-none'].model.attn == 'full'
    plain = by_name['model-plain_pe-rwse']
    assert plain.model.attn is None and plain.model.num_layers == 2
    assert plain.model.channels == 32 and plain.model.pe.rwse.dim == 4  # overrides still apply
    assert plain.train.epochs == 2  # and so does the grid's set
    assert load_config(data=other, overrides=[]).model.channels == 24


@pytest.mark.parametrize('values, fragment', [
    ('    a: {base: nowhere.yaml}\n', 'grid.model.a.base: no such file'),
    ('    a: {base: 3}\n', 'grid.model.a.base: expected a path, got 3'),
])
def test_a_bad_base_of_an_axis_value_is_one_error(tmp_path, values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_grid(write_grid(tmp_path, 'base: base.yaml\ngrid:\n  model:\n' + values))


def test_two_axis_values_of_one_cell_cannot_both_name_a_base(tmp_path):
    text = ('base: base.yaml\ngrid:\n  a:\n    x: {base: base.yaml}\n'
            '  b:\n    y: {base: base.yaml}\n')
    with pytest.raises(ConfigError, match='grid.a.x and grid.b.y both set base'):
        load_grid(write_grid(tmp_path, text))


def test_baselines_from_the_grid_file(tmp_path):
    grid = write_grid(tmp_path, GRID + 'baselines: {pe: rwse}\n')
    assert load_grid(grid).baselines == {'pe': 'rwse'}
    grid = write_grid(tmp_path, GRID.replace('none: {}', 'plain: {}'))
    assert load_grid(grid).baselines == {}  # no label 'none'


def test_shards_split_the_cells_with_all_their_seeds():
    assert parse_shard('2/3') == (2, 3) and parse_shard(None) is None
    assert [c for c in range(7) if in_shard(c, (2, 3))] == [1, 4]
    assert all(in_shard(c, None) for c in range(3))
    for n in (1, 2, 3, 5):  # every cell in exactly one shard
        assert sorted(c for i in range(1, n + 1) for c in range(7) if in_shard(c, (i, n))) == \
            list(range(7))


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
    (GRID, ['--shard', '0/4'], '--shard 0/4: expected i/n with 1 <= i <= n (shards are numbered '
                               'from 1)'),
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


def test_seeds_option_takes_a_list_or_a_comma_list():
    from gtpe.cli import _parse_seeds
    assert _parse_seeds(['0', '1,2']) == [0, 1, 2] and _parse_seeds(None) is None
