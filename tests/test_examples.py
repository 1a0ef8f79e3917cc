"""The standalone example scripts in ``examples/``.

* Each runs as a user would (``python examples/<name>.py --epochs 1 --limit 64``) in a subprocess
  that inherits ``GTPE_MIRROR`` / ``GTPE_DATA_ROOT`` from ``conftest.py`` (datasets and PE caches
  are shared with the rest of the session): exit status 0, the split sizes ``--limit`` promises,
  the device and thread count, one line per epoch, a finite final test metric.
* Bad ``--limit/--epochs/--threads/--heads`` are argparse errors (exit status 2).
* ``load_splits`` with a limit keeps the first graphs of each split, with the encodings, cached.
* The docstring's ``gtpe train`` comparison command loads; the example's defaults and transforms
  are that config's; with the same weights the example's model computes what ``GPSModel`` does.

A cold session (no datasets built) spends about a minute more here, building ogbg-molhiv and
peptides-func from the mirror's SMILES.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'

# (script, metric name printed by it, dataset)
SCRIPTS = [
    ('zinc_gps.py', 'mae', 'zinc'),
    ('grit_zinc.py', 'mae', 'zinc'),
    ('ogbg_molhiv.py', 'rocauc', 'ogbg-molhiv'),
    ('peptides_func.py', 'ap', 'peptides-func'),
]
# A cold first build of ogbg-molhiv / peptides-func from the mirror takes about a minute each on
# a busy 2-core machine; after that every script finishes in seconds.
TIMEOUT = 600


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd,
                          env=dict(os.environ), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize('script, metric, dataset', SCRIPTS, ids=[s for s, _, _ in SCRIPTS])
def test_example_runs(script: str, metric: str, dataset: str, tmp_path: Path) -> None:
    import torch

    # --device auto (the default) picks CUDA when there is one; the others are pinned to the CPU
    device = 'auto' if script == 'zinc_gps.py' else 'cpu'
    proc = _run(script, '--epochs', '1', '--limit', '64', '--device', device, '--threads', '1',
                cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f'{script} failed:\n{out[-3000:]}\n{proc.stderr[-3000:]}'
    expected = 'cuda' if device == 'auto' and torch.cuda.is_available() else 'cpu'
    assert re.search(rf'^[\d,]+ parameters on {expected}\S* \(torch threads: 1\)$', out, re.M), out
    # --limit: the first 64 graphs of each split
    assert re.search(r'\b64 train / 64 val / 64 test graphs\b', out), out
    # one line per epoch with the validation and test metric
    epochs = re.findall(rf'^epoch\s+(\d+)/1 .*val {metric} (\S+) .*test {metric} (\S+)', out,
                        re.M)
    assert [e for e, _, _ in epochs] == ['1'], out
    assert all(math.isfinite(float(v)) and math.isfinite(float(t)) for _, v, t in epochs), out
    final = re.findall(rf'^test {metric}: (\S+) \(best val (\S+) at epoch (1)\)', out, re.M)
    assert len(final) == 1, out
    assert math.isfinite(float(final[0][0])) and math.isfinite(float(final[0][1]))
    assert not list(tmp_path.iterdir()), 'the example wrote into the current folder'


def _load(script: str):
    """The example as a module (its ``main`` not run), in this process: argument errors are
    checked without paying a Python + torch start-up per case."""
    spec = importlib.util.spec_from_file_location(f'example_{Path(script).stem}', EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('script', [s for s, _, _ in SCRIPTS])
def test_example_rejects_bad_arguments(script: str, capsys) -> None:
    parse_args = _load(script).parse_args
    for args in (['--limit', '0'], ['--epochs', '-1'], ['--threads', '0'], ['--heads', '0']):
        with pytest.raises(SystemExit) as exc:
            parse_args(args)
        assert exc.value.code == 2, args
        err = capsys.readouterr().err
        assert f'argument {args[0]}: expected a positive integer, got {args[1]}' in err, err


def _comparison_commands(script: str) -> list[list[str]]:
    """The ``gtpe train ...`` commands in the example's docstring, as argv after ``gtpe train``
    (a trailing backslash continues a command on the next line)."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text())) or ''
    assert 'example vs config' in doc, f'{script}: the docstring must compare with a config'
    commands, command = [], None
    for line in (raw.strip() for raw in doc.splitlines()):
        if command is not None:
            command += ' ' + line
        elif line.startswith('gtpe train '):
            command = line
        if command is not None and not command.endswith('\\'):
            commands.append(shlex.split(command.replace('\\', ' '))[2:])
            command = None
    assert commands, f'{script}: no `gtpe train ...` comparison command in the docstring'
    return commands


def _overrides(argv: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv)
            if arg == '--set' and not argv[i + 1].startswith(skip)]


@pytest.mark.parametrize('script, metric, dataset', SCRIPTS, ids=[s for s, _, _ in SCRIPTS])
def test_docstring_comparison_matches_defaults(script: str, metric: str, dataset: str) -> None:
    """The docstring's ``gtpe train`` comparison command loads, and the example's defaults are
    that config's hyperparameters (the budget overrides train.epochs / dataset.limit aside)."""
    from gtpe.train import load_config

    module = _load(script)
    args = module.parse_args([])
    for argv in _comparison_commands(script):
        assert load_config(EXAMPLES.parent / argv[0], _overrides(argv)).dataset.name == dataset
        cfg = load_config(EXAMPLES.parent / argv[0],
                          _overrides(argv, skip=('train.epochs=', 'dataset.limit=')))
        m, t = cfg.model, cfg.train
        example = (args.channels, args.layers, args.heads, getattr(args, 'dropout', 0.0),
                   args.attn_dropout, args.batch_size, args.lr, args.weight_decay,
                   args.warmup_epochs, args.epochs, args.seed)
        config = (m.channels, m.num_layers, m.heads, m.dropout, m.attn_dropout, t.batch_size,
                  t.lr, t.weight_decay, t.warmup_epochs, t.epochs, t.seed)
        assert example == config, (script, argv)
        # the same encodings, so both paths also share the PE cache
        assert [repr(tf) for tf in module.TRANSFORMS] == [repr(tf) for tf in m.transforms()]
        # fixed in the scripts: AdamW, warmup + cosine, gradient clipping at 1, no min lr
        assert (t.optimizer, t.scheduler, t.grad_clip, t.min_lr) == ('adamw', 'cosine', 1.0, 0.0)



# The example's model class, built from its parsed arguments.
MODELS = {
    'zinc_gps.py': lambda m, a: m.GPS(a.channels, a.layers, a.heads, a.attn_dropout),
    'grit_zinc.py': lambda m, a: m.GRIT(a.channels, a.layers, a.heads, a.attn_dropout),
    'ogbg_molhiv.py': lambda m, a: m.GPS(a.channels, a.layers, a.heads, a.dropout, a.attn_dropout),
    'peptides_func.py': lambda m, a: m.Exphormer(a.channels, a.layers, a.heads, a.dropout,
                                                 a.attn_dropout),
}
_RENAME = {'atom.weight': 'node_encoder.emb.weight', 'bond.weight': 'edge_encoder.emb.weight',
           'rwse.': 'rwse_encoder.', 'lap.': 'lap_encoder.', 'rrwp.': 'rrwp_encoder.'}
_OGB_TABLES = {'atom.atom_embedding_list.': 'node_encoder.emb.weight',
               'bond.bond_embedding_list.': 'edge_encoder.emb.weight'}


def _library_state(state: dict) -> dict:
    """The example's ``state_dict`` under :class:`gtpe.models.GPSModel`'s names: OGB's per-feature
    embedding tables are stacked into gtpe's one offset table; encoders get the model's names."""
    import torch

    out, tables = {}, {}
    for key, value in state.items():  # state_dict order: OGB tables 0..8 in order
        table = next((t for p, t in _OGB_TABLES.items() if key.startswith(p)), None)
        if table is not None:
            tables.setdefault(table, []).append(value)
            continue
        prefix = next((p for p in _RENAME if key.startswith(p)), '')
        out[_RENAME[prefix] + key[len(prefix):] if prefix else key] = value
    out.update({key: torch.cat(parts) for key, parts in tables.items()})
    return out


def _random_graphs(dataset: str, count: int = 6) -> list:
    """Small random molecules-like graphs with the dataset's feature layout (undirected)."""
    import torch
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    gen, graphs = torch.Generator().manual_seed(0), []
    for i in range(count):
        n = 3 + 4 * i  # sizes 3..23: some below k = 8 (padded LapPE), some above
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        chords = torch.randint(0, n, (2, n // 3), generator=gen)
        chords = chords[:, chords[0] != chords[1]]
        edge_index = to_undirected(torch.cat([ring, chords], 1), num_nodes=n)
        E = edge_index.size(1)
        if dataset == 'zinc':
            x = torch.randint(0, 28, (n, 1), generator=gen)
            edge_attr = torch.randint(0, 4, (E,), generator=gen)
            y = torch.randn(1, generator=gen)
        else:
            x = torch.stack([torch.randint(0, d, (n,), generator=gen)
                             for d in get_atom_feature_dims()], 1)
            edge_attr = torch.stack([torch.randint(0, d, (E,), generator=gen)
                                     for d in get_bond_feature_dims()], 1)
            y = torch.randint(0, 2, (1, 10 if dataset == 'peptides-func' else 1), generator=gen)
        graphs.append(Data(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y.float()))
    return graphs


@pytest.mark.parametrize('script, metric, dataset', SCRIPTS, ids=[s for s, _, _ in SCRIPTS])
def test_example_model_is_the_config_model(script: str, metric: str, dataset: str) -> None:
    """With the comparison config's weights, the example's model computes the same function as
    ``gtpe train``'s GPSModel (same parameters, names aside; same outputs in eval and training
    mode), so the two paths differ only by the random draws."""
    import torch
    from torch_geometric.data import Batch

    import gtpe
    from gtpe.datasets import dataset_info
    from gtpe.models import GPSModel
    from gtpe.train import load_config

    module = _load(script)
    argv = _comparison_commands(script)[0]
    cfg = load_config(EXAMPLES.parent / argv[0], _overrides(argv))
    info = dataset_info(dataset)
    torch.manual_seed(0)
    lib = GPSModel(cfg.model, out_dim=info.num_tasks, node_input=info.node_input,
                   node_in_dim=info.node_in_dim, edge_input=info.edge_input,
                   edge_in_dim=info.edge_in_dim)
    example = MODELS[script](module, module.parse_args([]))
    lib.load_state_dict(_library_state(example.state_dict()), strict=True)
    batch = Batch.from_data_list(gtpe.precompute(_random_graphs(dataset), module.TRANSFORMS,
                                                 progress=False))
    for training in (False, True):
        example.train(training)
        lib.train(training)
        torch.manual_seed(1)  # the same dropout masks / LapPE sign flips in both
        ours = example(batch)
        torch.manual_seed(1)
        theirs = lib(batch).view(ours.shape)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('script, metric, dataset', SCRIPTS, ids=[s for s, _, _ in SCRIPTS])
def test_load_splits_limit_keeps_the_first_graphs(script: str, metric: str, dataset: str) -> None:
    """``load_splits(name, TRANSFORMS, limit)``: the first ``limit`` graphs of each split, each
    with the encodings, cached under ``<data root>/<name>/pe``."""
    import torch

    from gtpe.datasets import data_root, load_dataset

    module = _load(script)
    full = load_dataset(dataset, progress=False)
    encoded = []                       # only the kept graphs are encoded (README: --limit)
    real = module.gtpe.precompute
    module.gtpe.precompute = lambda graphs, *a, **k: encoded.append(len(graphs)) or real(
        graphs, *a, **k)
    try:
        limited = module.load_splits(dataset, module.TRANSFORMS, 3)
    finally:
        module.gtpe.precompute = real
    assert encoded and max(encoded) <= 9, encoded
    probe = module.TRANSFORMS[0](full['train'][0].clone())
    pe_keys = set(probe.keys()) - set(full['train'][0].keys())
    assert pe_keys, script
    for split in ('train', 'val', 'test'):
        assert len(limited[split]) == 3
        for i, graph in enumerate(limited[split]):
            assert torch.equal(graph.x, full[split][i].x)
            assert torch.equal(graph.edge_index, full[split][i].edge_index)
            assert pe_keys <= set(graph.keys()), (split, i)
    assert list((data_root() / dataset / 'pe').glob('pe-*.pt'))
