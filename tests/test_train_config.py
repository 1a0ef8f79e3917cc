"""Experiment configs: YAML <-> dataclasses, errors with key paths, --set overrides, shipped files."""
import copy
import itertools
import math
from pathlib import Path

import pytest
import yaml

from gtpe.models.config import GPSModelConfig, RWSEConfig
from gtpe.train.bench import expand_grid
from gtpe.train.config import (
    ConfigError,
    DatasetConfig,
    ExperimentConfig,
    TrainConfig,
    load_config,
    parse_override,
)
from gtpe.train.loop import lr_factor

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.yaml') if p.parent.name != 'bench')
GRIDS = sorted((REPO / 'configs' / 'bench').glob('*.yaml'))

BASE = {'dataset': {'name': 'zinc'},
        'model': {'channels': 48, 'num_layers': 2, 'pe': {'rwse': {'walk_length': 8}}},
        'train': {'epochs': 3}}


def load(*overrides, data=None):
    return load_config(data=BASE if data is None else data, overrides=list(overrides))


def error_of(*overrides, data=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(*overrides, data=data)
    return str(info.value)


def test_yaml_maps_to_dataclasses():
    c = load()
    assert isinstance(c, ExperimentConfig)
    assert c.dataset == DatasetConfig(name='zinc')
    assert isinstance(c.model, GPSModelConfig) and c.model.channels == 48
    assert c.model.pe.rwse == RWSEConfig(walk_length=8, dim=16)
    assert c.train == TrainConfig(epochs=3)  # everything else: defaults
    # round trip: to_dict -> YAML -> from_dict gives an equal config
    again = ExperimentConfig.from_dict(yaml.safe_load(c.to_yaml()))
    assert again == c and again.to_dict() == c.to_dict()


def test_unknown_key_names_full_path_and_suggests():
    assert error_of('model.chanels=3') == "model.chanels: unknown key (did you mean 'channels'?)"
    assert error_of('model.pe.rwse.walk_lenght=4') == (
        "model.pe.rwse.walk_lenght: unknown key (did you mean 'walk_length'?)")
    assert error_of('train.warmup=2').startswith("train.warmup: unknown key (did you mean "
                                                  "'warmup_epochs'?)")
    data = dict(BASE, trian={'epochs': 2})
    assert error_of(data=data) == "trian: unknown key (did you mean 'train'?)"
    data = dict(BASE, logging={'level': 1})
    assert error_of(data=data) == 'logging: unknown key (known: dataset, model, train)'


def test_wrong_types_are_errors():
    assert error_of('train.epochs=1.5') == 'train.epochs: expected an integer, got float 1.5'
    assert error_of('train.epochs=true').startswith('train.epochs: expected an integer')
    assert error_of('train.lr=fast') == "train.lr: expected a number, got str 'fast'"
    assert error_of('model.dropout=yes').startswith('model.dropout: expected a number')
    assert error_of('train.deterministic=1').startswith('train.deterministic: expected true')
    assert error_of('model.pe=3') == 'model.pe: expected a mapping, got int 3'
    assert error_of('train.scheduler=cosin') == (
        "train.scheduler: expected one of 'cosine', 'none', got str 'cosin' "
        "(did you mean 'cosine'?)")
    assert error_of(data={'model': {}}) == 'dataset: missing required key'
    assert error_of(data={'dataset': {}}) == 'dataset.name: missing required key'
    assert error_of('dataset.name=zinx').startswith(
        "dataset.name: unknown dataset 'zinx'; did you mean 'zinc'?")
    assert error_of('dataset.name=sbm-abc').startswith(
        "dataset.name: unknown dataset 'sbm-abc': sbm-<N> takes a node count")


def test_dataset_names_that_load_are_accepted():
    # load_dataset accepts aliases and every size of the sbm-<N> family, not only the listed ones
    from gtpe.datasets import list_datasets
    for name in ('sbm-5000', 'sbm-12k', 'arxiv', 'ZINC'):
        assert name not in list_datasets()
        assert load(f'dataset.name={name}').dataset.name == name


def test_value_checks_point_at_the_key():
    assert error_of('model.pe.rwse.walk_length=0').startswith('model.pe.rwse.walk_length')
    assert error_of('model.local=gin').startswith('model.local must be one of')
    assert 'divisible by heads' in error_of('model.heads=5')
    assert error_of('train.epochs=0') == 'train: epochs must be >= 1, got 0'
    assert error_of('dataset.limit=0').startswith('dataset: limit must be a positive integer')


def test_set_overrides_are_yaml_typed():
    assert parse_override('model.pe.rwse.dim=8') == ('model.pe.rwse.dim', 8)
    assert parse_override('train.lr=0.01') == ('train.lr', 0.01)
    assert parse_override('model.attn=null') == ('model.attn', None)
    assert parse_override('model.pe.lap={k: 4, dim: 8}') == ('model.pe.lap', {'k': 4, 'dim': 8})
    c = load('model.pe.rwse.dim=8', 'train.lr=1e-3', 'model.attn=linear', 'dataset.limit=64')
    assert c.model.pe.rwse.dim == 8 and c.train.lr == 1e-3 and isinstance(c.train.lr, float)
    assert c.model.attn == 'linear' and c.dataset.limit == 64
    # a section missing from the YAML is created; null removes an encoding
    c = load('model.pe.lap.k=4')
    assert c.model.pe.lap.k == 4 and c.model.pe.lap.dim == 16
    assert load('model.pe.rwse=null').model.pe.rwse is None
    assert load('model.pe.lap=true').model.pe.lap is not None  # `true`: defaults


def test_bad_set_syntax():
    assert error_of('model.channels').startswith("--set 'model.channels': expected key=value")
    assert error_of('=3').startswith("--set '=3': expected key=value")
    assert error_of('model..channels=3').startswith('--set model..channels=...: invalid key')
    assert error_of('model.channels.x=1').startswith('--set model.channels.x: model.channels is')


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r'no such file'):
        load_config(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('dataset: {name: zinc\nmodel: [\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: invalid YAML \(line \d+'):
        load_config(bad)
    scalar = tmp_path / 'scalar.yaml'
    scalar.write_text('42\n')
    with pytest.raises(ConfigError, match='expected a mapping'):
        load_config(scalar)


def test_lr_schedule():
    f = [lr_factor(e, 10, 2, 'cosine') for e in range(10)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in itertools.pairwise(f[2:]))  # cosine decay after warmup
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(5, 10, 2, 'none') == 1.0


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(REPO / 'configs')))
def test_every_shipped_config_loads(path):
    c = load_config(path)
    assert c.dataset.name == path.parent.name
    pe = path.stem.split('+')[1] if '+' in path.stem else 'none'  # <model>[+<pe>].yaml
    assert {'rwse': c.model.pe.rwse, 'lappe': c.model.pe.lap,
            'signnet': c.model.pe.lap}.get(pe, 'none') is not None
    if pe == 'signnet':
        assert c.model.pe.lap.encoder == 'signnet'
    assert len(c.model.transforms()) == (pe != 'none')
    # the dataclasses mirror the YAML 1:1: every key of the file is a field
    assert ExperimentConfig.from_dict(c.to_dict()) == c


def test_shipped_configs_cover_the_issue():
    names = {str(p.relative_to(REPO / 'configs')) for p in CONFIGS}
    for ds in ('zinc', 'ogbg-molhiv', 'peptides-func'):
        assert {f'{ds}/gps+rwse.yaml', f'{ds}/gps+lappe.yaml'} <= names
    assert 'zinc/gps+none.yaml' in names


@pytest.mark.parametrize('path', GRIDS, ids=lambda p: p.name)
def test_every_bench_grid_loads(path):
    axes, runs = expand_grid(path)
    assert axes and len(runs) >= 2
    assert len({r.name for r in runs}) == len(runs)
    assert len({yaml.safe_dump(r.config.to_dict()) for r in runs}) == len(runs)


@pytest.mark.parametrize('value, expected', [
    ('-1', 'train.seed must be an integer in [0, 2**63 - 1], got -1'),
    (str(2**63), f'train.seed must be an integer in [0, 2**63 - 1], got {2**63}'),
    (str(10**20), f'train.seed must be an integer in [0, 2**63 - 1], got {10**20}'),
    ('1e20', "train.seed: expected an integer, got str '1e20'"),
    ('1.5', 'train.seed: expected an integer, got float 1.5'),
    ('true', 'train.seed: expected an integer, got bool True'),
])
def test_out_of_range_seed_is_a_config_error(value, expected):
    assert error_of(f'train.seed={value}') == expected


def test_seed_range_in_code():
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1
    for bad in (-1, 2**63, True, 1.0):
        with pytest.raises(ValueError, match='TrainConfig.seed must be an integer'):
            TrainConfig(seed=bad)


def test_warmup_is_capped_to_a_fifth_of_the_epochs():
    assert TrainConfig(epochs=3, warmup_epochs=10).effective_warmup_epochs == 0
    assert TrainConfig(epochs=20, warmup_epochs=10).effective_warmup_epochs == 4
    assert TrainConfig(epochs=300, warmup_epochs=10).effective_warmup_epochs == 10
    assert TrainConfig(epochs=50, warmup_epochs=0).effective_warmup_epochs == 0
    assert TrainConfig(epochs=3, warmup_epochs=10).warmup_notice() == (
        'train.warmup_epochs=10 capped to 0 (at most epochs // 5 = 0 of 3 epochs)')
    assert TrainConfig(epochs=300, warmup_epochs=10).warmup_notice() is None
    assert TrainConfig(epochs=3, warmup_epochs=10, scheduler='none').warmup_notice() is None


def _quick_look(path):
    """The ``--set`` overrides of the command under the config's ``# Quick look`` comment."""
    text = path.read_text()
    assert '# Quick look' in text, path
    line = next(ln for ln in text.split('# Quick look', 1)[1].splitlines()
                if 'gtpe train' in ln)
    words = line.lstrip('# ').split()
    assert words[:3] == ['gtpe', 'train', str(path.relative_to(REPO))], line  # this config
    return [words[i + 1] for i, w in enumerate(words) if w == '--set']


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(REPO / 'configs')))
def test_quick_look_line_leaves_warmup(path):
    overrides = _quick_look(path)
    assert overrides, path
    tc = load_config(path, overrides).train
    factors = [lr_factor(e, tc.epochs, tc.effective_warmup_epochs, tc.scheduler)
               for e in range(tc.epochs)]
    assert factors[0] == 1.0, factors  # the first epoch trains at the config's lr
    full = load_config(path).train  # the full run keeps its warmup
    assert full.effective_warmup_epochs == full.warmup_epochs and full.warmup_notice() is None


def test_non_finite_numbers_are_config_errors():
    assert error_of('train.lr=.inf') == 'train: lr must be finite and > 0, got inf'
    assert error_of('train.lr=1e999') == 'train: lr must be finite and > 0, got inf'
    assert error_of('train.lr=.nan') == 'train: lr must be finite and > 0, got nan'
    assert error_of('train.weight_decay=.inf').startswith('train: weight_decay must be finite')
    assert error_of('train.grad_clip=.inf').startswith('train: grad_clip must be finite')


def test_experiment_hash_ignores_seed_and_machine_keys_only():
    from gtpe.train.config import experiment_hash
    base = load_config(REPO / 'configs' / 'zinc' / 'gps+none.yaml').to_dict()

    def changed(**paths):
        d = copy.deepcopy(base)
        for path, value in paths.items():
            section, key = path.split('__')
            d[section][key] = value
        return experiment_hash(d)

    h = experiment_hash(base)
    assert len(h) == 16 and h == experiment_hash(copy.deepcopy(base))
    for same in ({'train__seed': 7}, {'train__device': 'cpu'}, {'train__num_workers': 4},
                 {'dataset__root': '/scratch/x'}):
        assert changed(**same) == h, same
    for other in ({'train__epochs': 3}, {'train__lr': 0.5}, {'dataset__limit': 10},
                  {'model__channels': 8}):
        assert changed(**other) != h, other
    assert experiment_hash(base, ignore=()) != experiment_hash({**base, 'train': {
        **base['train'], 'seed': base['train']['seed'] + 1}}, ignore=())


def test_fields_added_later_keep_old_configs_identity():
    """Keys added after configs were saved (model.pe.rwse.undirected, model.pe.maglap.phase) are
    left out of to_dict at their default: a config saved by an older gtpe (without them) keeps
    its experiment hash, so `--resume` and `gtpe bench` folders made before still match."""
    from gtpe.train.config import experiment_hash
    from gtpe.transforms import AddRWSE
    old = load_config(REPO / 'configs/zinc/gps+rwse.yaml').to_dict()
    old['model']['pe']['maglap'] = {'k': 8, 'q': 0.25, 'dim': 16}   # as an older gtpe saved it
    assert 'undirected' not in old['model']['pe']['rwse']
    again = ExperimentConfig.from_dict(old).to_dict()
    assert again == old and experiment_hash(again) == experiment_hash(old)
    new = ExperimentConfig.from_dict(old)
    new.model.pe.rwse.undirected = True
    new.model.pe.maglap.phase = 'invariant'
    d = new.to_dict()
    assert d['model']['pe']['rwse']['undirected'] is True
    assert d['model']['pe']['maglap']['phase'] == 'invariant'
    assert experiment_hash(d) != experiment_hash(old)
    assert ExperimentConfig.from_dict(d) == new
    # the transform's precompute cache key is unchanged too (its state holds no default flag)
    assert 'undirected' not in vars(AddRWSE(20)) and vars(AddRWSE(20, undirected=True))['undirected']
