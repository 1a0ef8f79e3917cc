"""Atomic file writes, shared by the dataset cache, the PE cache and training checkpoints.

``atomic_write(path, write)`` fills a temporary file in the same folder, flushes and ``fsync``s it,
then moves it over ``path`` with :func:`os.replace` (atomic on POSIX): a reader — or a run killed at
any moment — sees the old complete file or the new complete file, never a truncated one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ['atomic_write']


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any],
                 binary: bool = True) -> None:
    """Create or replace ``path`` atomically with what ``write(fileobj)`` writes. On any error
    (or interruption) the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
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
