"""Atomic file writes, shared by the dataset cache, the PE cache and training checkpoints.

``atomic_write(path, write)`` fills a temporary file ``.gtpe-<name>.<random>.tmp`` in the same folder,
flushes and ``fsync``s it, then moves it over ``path`` with :func:`os.replace` (atomic on POSIX): a
reader — or a run killed at any moment — sees the old complete file or the new complete file, never
a truncated one. The file gets the usual permissions (``0o666`` minus the umask), not ``mkstemp``'s
``0o600``. ``remove_stale_temporaries(folder)`` deletes temporaries left by killed processes: only
files named with gtpe's own prefix (``.gtpe-*.tmp``), never another file of the folder (a user's
``.notes.tmp`` survives).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ['STALE_SECONDS', 'TEMP_GLOB', 'TEMP_PREFIX', 'atomic_write', 'remove_stale_temporaries']

TEMP_PREFIX = '.gtpe-'  # atomic_write's temporaries: .gtpe-<name>.<random>.tmp
TEMP_GLOB = TEMP_PREFIX + '*.tmp'  # what remove_stale_temporaries may delete
# where other processes may be writing (shared caches): a temporary untouched this long belongs
# to a killed writer
STALE_SECONDS = 3600


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any],
                 binary: bool = True) -> None:
    """Create or replace ``path`` atomically with what ``write(fileobj)`` writes. On any error
    (or interruption) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{path.name}.', suffix='.tmp',
                               dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 0.0) -> int:
    """Delete ``atomic_write`` temporaries (``.gtpe-*.tmp``, nothing else) in ``folder`` last
    modified more than ``older_than`` seconds ago (``0``: all of them; pass a margin where
    another process may be writing). Returns how many were removed."""
    removed = 0
    now = time.time()
    for tmp in Path(folder).glob(TEMP_GLOB):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
