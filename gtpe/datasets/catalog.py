"""What is where, without loading anything: the data root, :func:`describe` and
:func:`datasets_table` (behind ``gtpe datasets``).

This module imports neither torch nor PyG, so listing the datasets takes a fraction of a second.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DatasetError
from .info import SPLITS, dataset_info, list_datasets
from .mirror import MIRROR_ENV, mirror_root

DATA_ROOT_ENV = 'GTPE_DATA_ROOT'
DATA_FILE = 'data.pt'
MANIFEST_FILE = 'manifest.json'

__all__ = ['DATA_FILE', 'DATA_ROOT_ENV', 'MANIFEST_FILE', 'data_root', 'datasets_table', 'describe',
           'read_manifest']


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder that holds processed data, as an absolute path: ``root`` when given, else
    ``$GTPE_DATA_ROOT``, else the user's cache folder ``$XDG_CACHE_HOME/gtpe`` (default
    ``~/.cache/gtpe``), never the current folder. Relative ``root``/``$GTPE_DATA_ROOT`` resolve
    against the current folder; an empty or relative ``$XDG_CACHE_HOME`` is ignored (XDG spec)."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV, '').strip()
        if not root:
            xdg = os.environ.get('XDG_CACHE_HOME', '').strip()
            cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / '.cache'
            return cache / 'gtpe'
    return Path(root).expanduser().absolute()


def read_manifest(folder: Path) -> dict | None:
    """The ``manifest.json`` of a processed-cache folder, or ``None`` if missing or unreadable."""
    try:
        return json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe(name: str, root: str | os.PathLike | None = None) -> dict:
    """JSON-able facts about ``name`` without loading it: registry values, the data folder, the
    source in use (``source_kind``: ``'mirror'``, ``'official'`` (always for the datasets without
    a mirror, ``ogbn-*``) or, for a dataset generated from a seed, ``'generated'``) and, when a
    processed cache exists, the counts it holds."""
    info = dataset_info(name)
    root = data_root(root)
    out = info.to_dict()
    if info.generator:  # generated locally from a seed: the mirror plays no part
        out['source_kind'], out['mirror'] = 'generated', None
    elif info.official_only:  # ogbn-*: no mirror exists, always OGB's download
        out['source_kind'], out['mirror'] = 'official', None
    else:
        try:
            mirror = mirror_root()
            mirror_note = None
        except DatasetError as e:
            mirror, mirror_note = None, str(e)
        out['source_kind'] = 'mirror' if mirror is not None else 'official'
        out['mirror'] = str(mirror / info.mirror_dir) if mirror is not None else None
        if mirror_note:
            out['mirror_error'] = mirror_note
    out['data_dir'] = str(root / info.name)
    manifest = read_manifest(root / info.name / 'processed')
    data_file = root / info.name / 'processed' / DATA_FILE
    cached = bool(manifest) and data_file.is_file() and \
        data_file.stat().st_size == manifest.get('data_size')
    out['cached'] = cached
    if cached:
        out['cache'] = {'stats': manifest.get('stats'), 'build_seconds': manifest.get('build_seconds'),
                        'created': manifest.get('created'),
                        'source': (manifest.get('key') or {}).get('source')}
    return out


def datasets_table(root: str | os.PathLike | None = None) -> str:
    """An aligned text table of all datasets (for ``gtpe datasets``)."""
    header = ('name', 'level', 'graphs', 'task', 'metric', 'splits (train/val/test)', 'source',
              'cached')
    rows = [header]
    for name in list_datasets():
        d = describe(name, root)
        sp = d['splits']
        rows.append((d['name'], d['level'], f"{d['num_graphs']:,}", d['task'], d['metric'],
                     '/'.join(f'{sp[s]:,}' for s in SPLITS)
                     + (' nodes' if d['level'] == 'node' else ''),
                     d['source_kind'], 'yes' if d['cached'] else 'no'))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ['  '.join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    src = os.environ.get(MIRROR_ENV, '').strip()
    lines.append('')
    lines.append(f'data root: {data_root(root)}; source: '
                 + (f'mirror {MIRROR_ENV}={src}' if src else 'official downloads'))
    return '\n'.join(lines)
