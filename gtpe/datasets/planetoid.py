"""Cora and CiteSeer (Yang et al., "Revisiting Semi-Supervised Learning with Graph Embeddings",
ICML 2016) as PyG's ``Planetoid(root, name)`` with the public split: one graph, x float
``[N, F]`` (row-normalised bag of words as stored), y ``[N]`` long, train/val/test masks.

From the mirror the raw ``ind.*`` files are extracted under the data root and processed by PyG's
own ``Planetoid`` class, so the result is PyG's byte for byte.
"""
from __future__ import annotations

import pickle
import shutil
import tarfile
import zlib
from pathlib import Path

from gtpe._progress import heartbeat

from .base import storage_from_list
from .errors import DatasetError

PYG_NAMES = {'cora': 'Cora', 'citeseer': 'CiteSeer'}


def _extract(tar_path: Path, dest: Path, pyg_name: str) -> None:
    try:
        with tarfile.open(tar_path, 'r:gz') as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()) or m.name.startswith(('/', '..')) \
                        or '..' in Path(m.name).parts:
                    raise DatasetError(f'mirror file {tar_path} has an unsafe member {m.name!r}')
            try:
                tar.extractall(dest, filter='data')
            except TypeError:  # Python without extraction filters
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f'cannot read mirror file {tar_path}: not a valid .tar.gz ({e})') from e
    raw = dest / pyg_name / 'raw'
    if not raw.is_dir():
        raise DatasetError(f'mirror file {tar_path} does not contain {pyg_name}/raw/')


def _build(root: Path, pyg_name: str) -> dict:
    from torch_geometric.datasets import Planetoid
    ds = Planetoid(str(root), pyg_name, force_reload=True)
    return {'splits': {'graph': storage_from_list([ds[0]])}, 'meta': {}}


def build_mirror(name: str, files: dict[str, Path], work: Path, progress: bool = True) -> dict:
    """Extract ``<mirror>/planetoid/<Name>.tar.gz`` into ``work`` (fresh) and let PyG process it."""
    pyg_name = PYG_NAMES[name]
    (tar_path,) = files.values()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        with heartbeat(f'{name}: extracting {tar_path.name} and processing it with PyG', progress):
            _extract(tar_path, work, pyg_name)
            return _build(work, pyg_name)
    except (ValueError, OSError, EOFError, IndexError, KeyError, pickle.UnpicklingError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f'cannot process the raw files of {tar_path}: '
                           f'{type(e).__name__}: {e}') from e


def build_official(name: str, folder: Path, progress: bool = True) -> dict:
    with heartbeat(f'{name}: PyG Planetoid (download, processing)', progress):
        return _build(folder, PYG_NAMES[name])
