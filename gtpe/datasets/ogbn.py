"""ogbn-arxiv and ogbn-products (Hu et al., "Open Graph Benchmark", NeurIPS 2020) as OGB's
``ogb.nodeproppred.NodePropPredDataset(name)`` with its official split (``get_idx_split()``): one
graph, ``x``, ``edge_index`` and the labels exactly as OGB returns them, and ``train_mask``/
``val_mask``/``test_mask`` bool ``[N]`` holding OGB's ``'train'``/``'valid'``/``'test'`` node
indices (the masks of gtpe's Planetoid datasets; the order of OGB's index lists is not kept).

- ``ogbn-arxiv``: 169,343 papers; ``x [N,128]`` float32, ``y [N]`` long (40 subject areas; OGB's
  ``[N,1]`` flattened), ``node_year [N]`` long (OGB's ``node_year``), ``edge_index
  [2, 1,166,243]``: the citations as OGB lists them, each once, citing -> cited. gtpe keeps
  them directed (``DatasetInfo.directed``; ``GPSModel(directed=True)`` symmetrises for its
  direction-blind layers, which is what GraphGPS and Exphormer do to arxiv up front). Split by
  year: 90,941 / 29,799 / 48,603.
- ``ogbn-products``: 2,449,029 products; ``x [N,100]`` float32, ``y [N]`` long (47 categories),
  ``edge_index [2, 123,718,280]``: OGB's 61,859,140 co-purchase edges in both directions (OGB's
  ``add_inverse_edge``: ``(u, v)`` then ``(v, u)``). Sales-ranking split: 196,615 / 39,323 /
  2,213,091.

Metric: accuracy, which equals OGB's ``Evaluator(name)`` ``'acc'`` (:func:`ogb_accuracy`).

There is no offline mirror. OGB's own code downloads ``arxiv.zip`` (about 0.08 GB) or
``products.zip`` (about 1.4 GB) from snap.stanford.edu into ``<root>/<name>/official/`` and reads
the extracted ``ogbn_arxiv/``/``ogbn_products/`` folder; the files can also be put there by hand
(OGB's extracted folder, renamed, with its ``RELEASE_v1.txt``). Around OGB, gtpe makes sure
nothing waits on standard input or for ever: OGB's ``y/N`` questions (a download over 1 GB; a
folder without ``RELEASE_v<version>.txt``) are answered before OGB asks them (the download is
what ``load_dataset`` asked for; an incomplete folder without raw files is removed, one with raw
files but no release file is an error naming it), a cut-off zip of an interrupted download is
removed, sockets time out after :data:`DOWNLOAD_TIMEOUT` seconds, and a failed download is a
:class:`DatasetError` saying where to put the files. Offline, OGB also takes the zip itself:
``arxiv.zip``/``products.zip`` placed in ``<root>/<name>/official/`` is extracted instead of
downloaded. OGB's own processed file
(``processed/data_processed``, written with pickle protocol 4, which the weights-only
``torch.load`` of torch >= 2.6 cannot read) is removed before and after the build: gtpe's cache
holds the result.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import urllib.error
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gtpe._progress import heartbeat

from .base import storage_from_list
from .errors import DatasetError

__all__ = ['DOWNLOAD_TIMEOUT', 'NAMES', 'build_official', 'ogb_accuracy', 'ogb_folder',
           'ogb_meta', 'prepare_folder']

NAMES = ('ogbn-arxiv', 'ogbn-products')
DOWNLOAD_TIMEOUT = 120.0      # seconds without a byte before a download is given up
_OGB_SPLITS = {'train': 'train', 'val': 'valid', 'test': 'test'}


def ogb_meta(name: str) -> dict[str, str]:
    """The column of ``name`` in the installed ogb's ``nodeproppred/master.csv`` (read as OGB
    reads it: url, version, split, add_inverse_edge, num classes, ...)."""
    import pandas as pd
    from ogb import nodeproppred

    master = pd.read_csv(Path(nodeproppred.__file__).parent / 'master.csv', index_col=0,
                         keep_default_na=False)
    if name not in master:
        raise DatasetError(f'{name}: not in the installed ogb {_ogb_version()} (master.csv)')
    return {k: str(v) for k, v in master[name].items()}


def _ogb_version() -> str:
    import ogb
    return ogb.__version__


def ogb_folder(official: Path, name: str) -> Path:
    """The folder OGB reads ``name`` from under ``official`` (``ogbn-arxiv`` -> ``ogbn_arxiv``)."""
    return Path(official) / name.replace('-', '_')


def _say(msg: str) -> None:
    print(f'gtpe: {msg}', file=sys.stderr, flush=True)


def prepare_folder(official: Path, name: str) -> Path:
    """Make ``official`` safe for OGB: no question on standard input, no stale pickle.

    A zip named as OGB's download (``arxiv.zip``) that is not a valid zip is removed (cut off by
    an interrupted download; OGB would reuse it); a valid one stays and OGB extracts it instead
    of downloading (an offline route). OGB's ``processed/data_processed`` is removed. A dataset
    folder without ``RELEASE_v<version>.txt`` is removed when it holds no raw files and is a
    :class:`DatasetError` when it does (OGB would ask whether to delete them). Returns the
    dataset folder."""
    meta = ogb_meta(name)
    official = Path(official)
    folder = ogb_folder(official, name)
    zip_path = official / meta['url'].rpartition('/')[2]
    if zip_path.is_file() and not zipfile.is_zipfile(zip_path):
        _say(f'removing {zip_path} (not a valid zip: cut off by an interrupted download)')
        zip_path.unlink()
    release = folder / f"RELEASE_v{meta['version']}.txt"
    if folder.is_dir() and not release.exists():
        if any((folder / 'raw').glob('*.csv.gz')):
            raise DatasetError(
                f'{name}: {folder} holds raw files but no {release.name}: they may be an older '
                f'release (OGB would ask to replace them); add {release.name} if they are '
                f'the current files, else delete {folder}')
        _say(f'removing the incomplete OGB folder {folder} (no {release.name}, no raw files)')
        shutil.rmtree(folder)
    pickle_file = folder / 'processed' / 'data_processed'
    if pickle_file.exists():
        pickle_file.unlink()
    if folder.is_dir():
        (folder / 'processed').mkdir(exist_ok=True)     # OGB saves there without creating it
    return folder


@contextlib.contextmanager
def _ogb_guarded(name: str) -> Iterator[None]:
    """OGB's downloads and questions made safe: no prompt (a question raises), a socket
    timeout, the download announced on stderr, and the extracted folder given the
    ``processed/`` folder that OGB saves into without creating it."""
    from unittest import mock

    from ogb.nodeproppred import dataset as ogb_dataset

    real_extract = ogb_dataset.extract_zip
    download_name = ogb_meta(name)['download_name']

    def extract_zip(path, folder, *args, **kwargs):
        real_extract(path, folder, *args, **kwargs)
        extracted = Path(folder) / download_name
        if extracted.is_dir():
            (extracted / 'processed').mkdir(exist_ok=True)

    def no_question(*args, **kwargs):
        raise DatasetError(f'{name}: OGB asked a question on standard input ({args[:1]}); '
                           f'gtpe does not answer OGB questions')

    def decide_download(url: str) -> bool:   # OGB asks y/N above 1 GB: load_dataset asked
        _say(f'{name}: downloading {url} with OGB')
        return True

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        with mock.patch.object(ogb_dataset, 'decide_download', decide_download), \
                mock.patch.object(ogb_dataset, 'extract_zip', extract_zip), \
                mock.patch.object(ogb_dataset, 'input', no_question, create=True):
            yield
    finally:
        socket.setdefaulttimeout(previous)


def _offline_error(name: str, official: Path, meta: dict, reason) -> DatasetError:
    zip_name = meta['url'].rpartition('/')[2]
    return DatasetError(
        f"{name}: cannot download {meta['url']} ({reason}); there is no offline mirror for "
        f"it: on a machine without internet, put {zip_name} (downloaded elsewhere) into "
        f"{official}, or its extracted {meta['download_name']}/ folder at "
        f"{ogb_folder(official, name)}")


def _load_ogb(name: str, official: Path, meta: dict, progress: bool = True):
    from ogb.nodeproppred import NodePropPredDataset

    official.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.ExitStack()
    if not progress:   # OGB prints and shows tqdm bars itself
        devnull = quiet.enter_context(open(os.devnull, 'w'))
        quiet.enter_context(contextlib.redirect_stdout(devnull))
        quiet.enter_context(contextlib.redirect_stderr(devnull))
    try:
        with quiet, _ogb_guarded(name):
            ds = NodePropPredDataset(name, root=str(official))
            return ds, ds.get_idx_split()
    except urllib.error.URLError as e:
        raise _offline_error(name, official, meta, e.reason) from e
    except (TimeoutError, ConnectionError) as e:
        raise _offline_error(name, official, meta, e) from e
    except zipfile.BadZipFile as e:
        zip_path = official / meta['url'].rpartition('/')[2]
        zip_path.unlink(missing_ok=True)
        raise DatasetError(f'{name}: the downloaded {zip_path.name} is not a valid zip ({e}); '
                           f'removed it, run again') from e
    except RuntimeError as e:   # OGB: 'Stopped downloading due to interruption.', 'No necessary file'
        if 'download' in str(e).lower():
            raise DatasetError(f'{name}: the download of {meta["url"]} stopped ({e}); run '
                               f'again') from e
        raise DatasetError(f"{name}: cannot read OGB's raw files in "
                           f'{ogb_folder(official, name)}: {e}') from e
    except (OSError, ValueError, KeyError, IndexError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{name}: cannot read OGB's files in {ogb_folder(official, name)}: "
                           f'{type(e).__name__}: {e}') from e


def build_official(name: str, official: Path, progress: bool = True) -> dict:
    """``name`` from OGB (downloaded into ``official`` unless its files are there) as the
    collated storage of one graph ``{'splits': {'graph': ...}, 'meta': {...}}``."""
    from torch_geometric.data import Data

    meta = ogb_meta(name)
    official = Path(official)
    folder = prepare_folder(official, name)
    with heartbeat(f'{name}: OGB NodePropPredDataset (download, processing)', progress):
        ds, idx = _load_ogb(name, official, meta, progress)
    with heartbeat(f'{name}: assembling the graph', progress):
        graph, labels = ds[0]
        n = int(graph['num_nodes'])
        labels = np.asarray(labels)
        if graph.get('node_feat') is None:      # OGB reads a missing node-feat file as None
            raise DatasetError(f'{name}: no node features ({folder}/raw/node-feat.csv.gz '
                               f'missing)')
        if labels.shape[0] != n or np.isnan(labels.astype(np.float64)).any():
            raise DatasetError(f'{name}: OGB labels of shape {labels.shape} for {n} nodes, or '
                               f'missing labels, in {folder}')
        attrs = {'x': torch.from_numpy(np.ascontiguousarray(graph['node_feat'])),
                 'edge_index': torch.from_numpy(
                     np.ascontiguousarray(graph['edge_index'], dtype=np.int64)),
                 'y': torch.from_numpy(labels.reshape(-1).astype(np.int64))}
        for key in graph:   # OGB's additional node files (arxiv: node_year [N,1] -> [N])
            if key.startswith('node_') and key != 'node_feat':
                value = np.ascontiguousarray(graph[key])
                attrs[key] = torch.from_numpy(value.reshape(n) if value.size == n else value)
        for split, key in _OGB_SPLITS.items():
            index = torch.from_numpy(np.array(idx[key], dtype=np.int64)).view(-1)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise DatasetError(f"{name}: OGB's {key} split in {folder} has node ids outside "
                                   f'0..{n - 1}')
            mask = torch.zeros(n, dtype=torch.bool)
            mask[index] = True
            if int(mask.sum()) != index.numel():
                raise DatasetError(f"{name}: OGB's {key} split in {folder} repeats node ids")
            attrs[f'{split}_mask'] = mask
        data = Data(**attrs)
        storage = storage_from_list([data])
    (folder / 'processed' / 'data_processed').unlink(missing_ok=True)
    return {'splits': {'graph': storage},
            'meta': {'ogb': _ogb_version(), 'split': meta['split'],
                     'add_inverse_edge': meta['add_inverse_edge'] == 'True'}}


def ogb_accuracy(name: str, y_true, y_pred) -> float:
    """OGB's ``Evaluator(name)`` accuracy: ``y_true [N]`` or ``[N,1]`` class ids, ``y_pred``
    logits ``[N,C]`` (``argmax``) or class ids ``[N]``/``[N,1]``."""
    from ogb.nodeproppred import Evaluator

    y_true = torch.as_tensor(y_true).view(-1, 1)
    y_pred = torch.as_tensor(y_pred)
    if y_pred.dim() == 2 and y_pred.size(1) > 1:
        y_pred = y_pred.argmax(dim=1)
    return float(Evaluator(name).eval({'y_true': y_true, 'y_pred': y_pred.view(-1, 1)})['acc'])
