"""``load_dataset``: build (once) and load a dataset. ``describe``, ``datasets_table`` and
``data_root`` live in the torch-free :mod:`gtpe.datasets.catalog` and are re-exported here."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gtpe._progress import heartbeat

from . import cache as _cache
from . import ogbn
from .base import SPLITS, GraphDataset
from .catalog import DATA_ROOT_ENV, data_root, datasets_table, describe
from .errors import DatasetError
from .info import dataset_info, generator_args
from .mirror import mirror_paths, mirror_root

_SMILES_DATASETS = ('ogbg-molhiv', 'peptides-func')
# wall time of a build from the mirror on a 2-core machine (datasets/README.md, "Build and load times")
_BUILD_TIME = {'ogbg-molhiv': 'about a minute', 'peptides-func': 'one to two minutes',
               'sorting-networks': 'about 6-10 s', 'dag-distance': 'about a second'}
# sbm-<N>: about 4 s per million nodes, generation and cache together (datasets/README.md)
_SBM_SECONDS_PER_MILLION = 4

log = logging.getLogger('gtpe.datasets')

__all__ = ['DATA_ROOT_ENV', 'data_root', 'datasets_table', 'describe', 'load_dataset']


def _gtpe_version() -> str:
    import gtpe
    return getattr(gtpe, '__version__', '0')


def _generator(name: str):
    """The module that generates ``name`` locally (``None`` for downloaded datasets)."""
    import importlib
    module = dataset_info(name).generator
    return importlib.import_module(f'{__package__}.{module}') if module else None


def _source_key(name: str) -> tuple[str, dict | None, dict]:
    """(kind, mirror files or None, cache key) for the current environment. Generated datasets:
    kind ``'generated'``, keyed by the generator's version, seed and parameters and numpy's
    version (its random streams); ``$GTPE_MIRROR`` plays no part."""
    key: dict[str, Any] = {'format': _cache.FORMAT_VERSION, 'gtpe': _gtpe_version(),
                           'dataset': name}
    generator = _generator(name)
    if generator is not None:
        import numpy
        key['source'] = 'generated'
        key['generator'] = generator.cache_params(**generator_args(name))
        key['numpy'] = numpy.__version__
        return 'generated', None, key
    mirror = None if dataset_info(name).official_only else mirror_root()
    if mirror is not None:
        verify = os.environ.get('GTPE_MIRROR_VERIFY', '1').strip() != '0'
        files = mirror_paths(name, mirror, verify=verify)
        key['source'] = 'mirror'
        key['files'] = {rel: digest for rel, (_, digest) in sorted(files.items())}
        if name in _SMILES_DATASETS:  # features are computed by RDKit: its version matters
            import rdkit
            key['rdkit'] = rdkit.__version__
        return 'mirror', {rel: path for rel, (path, _) in files.items()}, key
    import torch_geometric
    key['source'] = 'official'
    key['torch_geometric'] = torch_geometric.__version__
    if name == 'ogbg-molhiv' or name in ogbn.NAMES:
        import ogb
        key['ogb'] = ogb.__version__
    return 'official', None, key


def _build(name: str, kind: str, files: dict | None, folder: Path, progress: bool,
           resume_dir: Path | None = None) -> dict:
    from . import molhiv, peptides, planetoid, zinc
    if kind == 'generated':
        return _generator(name).build(progress=progress, **generator_args(name))
    if kind == 'mirror':
        if name == 'zinc':
            return zinc.build_mirror(files, progress)
        if name == 'ogbg-molhiv':
            return molhiv.build_mirror(files, progress, resume_dir)
        if name == 'peptides-func':
            return peptides.build_mirror(files, progress, resume_dir)
        return planetoid.build_mirror(name, files, folder / 'mirror', progress)
    official = folder / 'official'
    try:
        if name == 'zinc':
            return zinc.build_official(official, progress)
        if name == 'ogbg-molhiv':
            return molhiv.build_official(official, progress)
        if name == 'peptides-func':
            return peptides.build_official(official, progress)
        if name in ogbn.NAMES:     # no mirror: says where to put OGB's files when offline
            return ogbn.build_official(name, official, progress)
        return planetoid.build_official(name, official, progress)
    except urllib.error.URLError as exc:  # no network, proxy, DNS: say what to do instead
        raise DatasetError(
            f"{name}: cannot download the official files ({exc.reason}); on a machine "
            f"without internet set GTPE_MIRROR to a folder laid out like the staged mirror "
            f"(see datasets/README.md)") from exc


def _stats(splits: dict) -> dict:
    out: dict[str, Any] = {'splits': {}, 'num_nodes': 0, 'num_edges': 0}
    for split, st in splits.items():
        slices = st['slices']
        out['splits'][split] = int(slices['x'].numel() - 1)
        out['num_nodes'] += int(slices['x'][-1])
        out['num_edges'] += int(slices['edge_index'][-1])
    out['num_graphs'] = sum(out['splits'].values())
    return out


def _generated_time(name: str) -> str:
    """Expected generation time of a family member (``sbm-<N>``)."""
    seconds = _SBM_SECONDS_PER_MILLION * dataset_info(name).num_nodes / 1e6
    return 'about a second' if seconds < 1.5 else f'about {seconds:.0f} s'


def _build_notice(name: str, kind: str, folder: Path, reason: str) -> str:
    """One line saying that a (long, first-time) build starts: what, from where, into where."""
    info = dataset_info(name)
    if kind == 'generated':
        took = _BUILD_TIME.get(name) or _generated_time(name)
        if reason == 'missing':
            return (f'gtpe: generating {name} (gtpe.datasets.{info.generator}, seed '
                    f'{_generator(name).SEED}) into {folder} (first time only, {took})')
        return f'gtpe: regenerating {name} into {folder} ({reason}, {took})'
    if kind == 'mirror':
        source = f'the mirror {mirror_root() / info.mirror_dir}'
        took = _BUILD_TIME.get(name, 'a few seconds')
    else:
        source, took = f'the official source {info.source}', 'download, then processing'
    if reason == 'missing':
        return f'gtpe: building {name} from {source} into {folder} (first time only, {took})'
    return f'gtpe: rebuilding {name} from {source} into {folder} ({reason}, {took})'


def _load_base(name: str, root: Path, progress: bool = True) -> tuple[dict, str]:
    """The processed splits of ``name`` (from the cache, or built and cached) and a status."""
    folder = root / name
    kind, files, key = _source_key(name)
    obj, reason = _cache.load_cached(folder / 'processed', key)
    if obj is not None:
        return obj, 'hit'
    if reason != 'missing':
        log.warning('gtpe: rebuilding the %s cache in %s (%s)', name, folder / 'processed', reason)
    if progress:
        print(_build_notice(name, kind, folder, reason), file=sys.stderr, flush=True)
    # finished RDKit chunks of an interrupted build are kept here (keyed by the source) and reused
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    resume_dir = folder / 'processed' / f'partial-{digest}'
    start = time.perf_counter()
    built = _build(name, kind, files, folder, progress, resume_dir)
    seconds = time.perf_counter() - start
    with heartbeat(f'{name}: writing the cache', progress):
        obj = {'splits': {s: {'data': _cache.compact(st['data']),
                              'slices': _cache.compact(st['slices'])}
                          for s, st in built['splits'].items()},
               'meta': built.get('meta', {})}
        info = {'stats': _stats(built['splits']), 'build_seconds': round(seconds, 3),
                'source_paths': {rel: str(p) for rel, p in (files or {}).items()}}
        _cache.save_cached(folder / 'processed', key, obj, info)
    for stale in (folder / 'processed').glob('partial-*'):
        shutil.rmtree(stale, ignore_errors=True)
    return obj, f'built ({reason})'


def _apply_pre_transform(name: str, level: str, datasets: dict, pre_transform, root: Path,
                         status: str, progress: bool = True,
                         stats: dict[str, Any] | None = None) -> dict:
    from gtpe.transforms.precompute import precompute

    keys = ('graph',) if level == 'node' else SPLITS
    parts = [datasets['train']] if level == 'node' else [datasets[s] for s in SPLITS]
    graphs = [ds.get(i) for ds in parts for i in range(len(ds))]
    out = precompute(graphs, pre_transform, cache_dir=str(root / name / 'pe'), progress=progress,
                     stats=stats)
    result, start = {}, 0
    for key, ds in zip(keys, parts):
        result[key] = GraphDataset.from_list(out[start:start + len(ds)], name, ds.split,
                                             cache_status=status)
        start += len(ds)
    if level == 'node':
        return {s: result['graph'] for s in SPLITS}
    return result


def load_dataset(name: str, root: str | os.PathLike | None = None,
                 pre_transform: Callable | Sequence[Callable] | None = None,
                 transform: Callable | None = None, *, progress: bool = True,
                 precompute_stats: dict[str, Any] | None = None) -> dict[str, GraphDataset]:
    """Load ``name`` as ``{'train', 'val', 'test'}`` PyG datasets.

    Sources: the offline mirror in ``$GTPE_MIRROR`` when set (files checked against their sha256),
    else the official loaders (PyG ``ZINC``/``LRGBDataset``/``Planetoid``, OGB);
    ``ogbn-arxiv`` and ``ogbn-products`` always come from OGB's download (no mirror exists;
    :mod:`gtpe.datasets.ogbn` says where to put the files offline); ``sorting-networks``,
    ``dag-distance`` and ``sbm-<N>`` are generated locally from their fixed seed (no download;
    the mirror plays no part). The processed result is cached under
    ``<root>/<name>/processed`` and rebuilt when stale or corrupt; ``root`` is the argument, else
    ``$GTPE_DATA_ROOT``, else ``$XDG_CACHE_HOME/gtpe`` (default ``~/.cache/gtpe``), never the
    current folder (:func:`data_root`). Node-level datasets return
    the same one-graph dataset (with ``train_mask``/``val_mask``/``test_mask``) under all three
    keys; graph-level and node-inductive ones one dataset of graphs per split.

    ``pre_transform`` (a transform, a list of them or a ``Compose``) runs once over all graphs via
    ``gtpe.precompute(..., cache_dir=<root>/<name>/pe)``; ``transform`` runs on every access.
    ``precompute_stats`` (a dict), when given with a ``pre_transform``, is filled with that
    precompute's cost over all the dataset's graphs (its ``stats``: ``seconds``, ``bytes``,
    ``num_graphs``, ``cached``).

    Progress goes to stderr: a build starts with one line (``gtpe: building <name> from <source>
    into <folder> (first time only, ...)``), then counted work shows a bar (plain lines in a log)
    and phases without a count print ``<name>: <phase>: working, N s``, at least every
    ``$GTPE_PROGRESS_INTERVAL`` seconds (default 10). A cached load prints nothing (apart from
    ``pre_transform``'s precompute progress). ``progress=False`` hides all of it.
    """
    info = dataset_info(name)
    root = data_root(root)
    obj, status = _load_base(info.name, root, progress)
    built = {s: GraphDataset.from_storage({'data': _cache.expand(st['data']),
                                           'slices': _cache.expand(st['slices'])},
                                          info.name, s if s in SPLITS else 'all',
                                          cache_status=status)
             for s, st in obj['splits'].items()}
    if info.level == 'node':
        datasets = {s: built['graph'] for s in SPLITS}
    else:
        datasets = {s: built[s] for s in SPLITS}
    if isinstance(pre_transform, (list, tuple)) and len(pre_transform) == 0:
        pre_transform = None
    if pre_transform is not None:
        datasets = _apply_pre_transform(info.name, info.level, datasets, pre_transform, root,
                                        status, progress, precompute_stats)
    for ds in {id(d): d for d in datasets.values()}.values():
        ds.transform = transform
    return datasets
