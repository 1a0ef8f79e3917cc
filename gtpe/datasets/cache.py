"""On-disk cache of processed datasets: ``<root>/<name>/processed/{data.pt, manifest.json}``.

Writes are atomic (temporary file in the same folder, ``fsync``, ``os.replace``), the data file first
and the manifest last, so a crash never leaves a cache that looks valid. The manifest records the
format version, gtpe's version, the source (mirror file sha256 sums or the official loader) and the
data file's size and sha256; a cache whose manifest does not match what the current call expects
(stale) or whose data file is missing, truncated or unreadable (corrupt) is rebuilt.

Tensors are stored in the smallest integer type that holds them losslessly (ids and OGB features
fit in int8/int16) and cast back to their recorded dtype on load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from gtpe._atomic import STALE_SECONDS, atomic_write, remove_stale_temporaries

from .catalog import DATA_FILE, MANIFEST_FILE, read_manifest

FORMAT_VERSION = 1

log = logging.getLogger('gtpe.datasets')

__all__ = [
    'DATA_FILE',
    'FORMAT_VERSION',
    'MANIFEST_FILE',
    'atomic_write',
    'atomic_write_json',
    'compact',
    'expand',
    'load_cached',
    'read_manifest',
    'save_cached',
]


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), binary=False)


def _int_dtype(t: torch.Tensor) -> torch.dtype:
    if t.numel() == 0:
        return torch.int8
    lo, hi = int(t.min()), int(t.max())
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return torch.int64


def compact(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``{key: {'t': tensor in a small int type, 'dtype': original dtype name}}``."""
    out = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        dtype = str(t.dtype).replace('torch.', '')
        if t.dtype in (torch.int64, torch.int32, torch.int16):
            t = t.to(_int_dtype(t))
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8)
        out[key] = {'t': t, 'dtype': dtype}
    return out


def expand(stored: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v['t'].to(getattr(torch, v['dtype'])) for k, v in stored.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()


def load_cached(folder: Path, key: dict) -> tuple[Any | None, str]:
    """Load the cached object if its manifest matches ``key`` and the data file is intact.

    Returns ``(obj, 'hit')`` or ``(None, reason)`` with reason one of ``'missing'``,
    ``'stale: ...'`` or ``'corrupt: ...'``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    data_path = folder / DATA_FILE
    if manifest is None:
        if (folder / MANIFEST_FILE).exists():
            return None, 'corrupt: unreadable manifest'
        return None, 'missing'
    if manifest.get('key') != key:
        old = manifest.get('key') or {}
        changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        return None, f"stale: {', '.join(changed) or 'manifest'} changed"
    try:
        size = data_path.stat().st_size
    except OSError:
        return None, 'corrupt: data file missing'
    if size != manifest.get('data_size'):
        return None, f"corrupt: data file has {size} bytes, manifest says {manifest.get('data_size')}"
    if _sha256(data_path) != manifest.get('data_sha256'):
        return None, 'corrupt: data file checksum mismatch'
    try:
        obj = torch.load(data_path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "rebuild"
        return None, f'corrupt: {type(e).__name__}: {e}'
    return obj, 'hit'


def save_cached(folder: Path, key: dict, obj: Any, info: dict | None = None) -> None:
    """Write ``obj`` (tensors, dicts, lists, str/int/float only) and then its manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder, older_than=STALE_SECONDS)  # from killed builds
    data_path = folder / DATA_FILE
    # An old manifest must not vouch for a half-replaced data file: drop it first.
    try:
        (folder / MANIFEST_FILE).unlink()
    except FileNotFoundError:
        pass
    atomic_write(data_path, lambda f: torch.save(obj, f))
    manifest = {
        'key': key,
        'data_file': DATA_FILE,
        'data_size': data_path.stat().st_size,
        'data_sha256': _sha256(data_path),
        'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        **(info or {}),
    }
    atomic_write_json(folder / MANIFEST_FILE, manifest)
