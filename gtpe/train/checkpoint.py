"""Atomic checkpoints and RNG state capture for exactly-resumable training.

Checkpoints are written with :func:`gtpe._atomic.atomic_write`, so a kill at any moment leaves
either the old or the new complete file, never a truncated one.
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtpe._atomic import atomic_write

__all__ = [
    'CheckpointError',
    'atomic_write_bytes',
    'atomic_write_text',
    'get_rng_state',
    'load_checkpoint',
    'save_checkpoint',
    'set_rng_state',
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode('utf-8'))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically. ``state`` must be loadable with ``weights_only=True``
    (tensors, numbers, strings, lists/tuples/dicts of those)."""
    atomic_write(path, lambda f: torch.save(state, f))


class CheckpointError(ValueError):
    """A checkpoint (or run folder) that cannot be used; the message names the file and what to
    do about it."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = 'cpu', *,
                    advice: str = '') -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, always with ``weights_only=True``.

    A file that is not one (corrupt, truncated, empty, another program's pickle) raises
    :class:`CheckpointError` ``'<path>: cannot read the checkpoint (...)'`` followed by
    ``advice`` (what the caller suggests doing); torch's own text, which suggests unsafe
    loading, is never shown. A missing file raises :class:`FileNotFoundError`.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, pickle errors
        if isinstance(exc, pickle.UnpicklingError) and 'Unsupported global' in str(exc):
            why = 'it holds Python objects; gtpe reads only tensors and plain data'
        else:
            why = f'corrupt or truncated: {exc.__class__.__name__}'
        raise CheckpointError(f'{path}: cannot read the checkpoint ({why}){advice}') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: not a gtpe checkpoint (expected a mapping, got '
                              f'{type(state).__name__}){advice}')
    return state


def get_rng_state() -> dict[str, Any]:
    """RNG states of python ``random``, numpy's global generator, torch CPU and CUDA."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': [version, list(internal), gauss],
        'numpy': [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
