"""What a training run costs: peak memory of the process and the per-epoch medians that go into
``results.json``'s ``cost`` (see :mod:`gtpe.train.loop`).

Peak memory is measured per process (under DDP, rank 0 reports its own): on CUDA the peak of
``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache); elsewhere the peak
resident set size (RSS) of the process, whose high-water mark Linux resets when ``5`` is written
to ``/proc/self/clear_refs`` and reports as ``VmHWM`` in ``/proc/self/status``. The memory at the
start of the run (:func:`current_memory_bytes`, before the data is loaded) is kept next to the
peak: a process's RSS includes the Python/torch baseline (and, in a process that trained before,
what the earlier runs left), so ``peak - start`` is what this run added.
"""
from __future__ import annotations

import statistics
import sys

import torch

__all__ = ['current_memory_bytes', 'median_of', 'memory_kind', 'peak_memory_bytes',
           'reset_peak_memory', 'run_cost']


def memory_kind(device: torch.device) -> str:
    """``'cuda'`` (allocated tensor memory on the GPU) or ``'rss'`` (the process's host memory)."""
    return 'cuda' if device.type == 'cuda' else 'rss'


def reset_peak_memory(device: torch.device) -> bool:
    """Start measuring the peak from now on: ``torch.cuda.reset_peak_memory_stats`` on CUDA; on
    the host, reset the RSS high-water mark (Linux: ``5`` to ``/proc/self/clear_refs``). Returns
    whether it was reset; if not (no ``/proc``, or it cannot be written), the peak that
    :func:`peak_memory_bytes` reports is the process's peak since it started."""
    if memory_kind(device) == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory in bytes since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated``
    on CUDA; on the host ``VmHWM`` of ``/proc/self/status``, else (no ``/proc``)
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak since the process started; KiB on
    Linux, bytes on macOS); ``None`` where neither exists."""
    if memory_kind(device) == 'cuda':
        return int(torch.cuda.max_memory_allocated(device))
    peak = _proc_status_bytes('VmHWM')
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == 'darwin' else int(peak) * 1024


def current_memory_bytes(device: torch.device) -> int | None:
    """Memory in use now, of the same kind as :func:`peak_memory_bytes`:
    ``torch.cuda.memory_allocated`` on CUDA, else ``VmRSS`` of ``/proc/self/status``; ``None``
    without ``/proc``."""
    if memory_kind(device) == 'cuda':
        return int(torch.cuda.memory_allocated(device))
    return _proc_status_bytes('VmRSS')


def _proc_status_bytes(field: str) -> int | None:
    """``field`` of ``/proc/self/status`` (a line like ``VmRSS:  123456 kB``) in bytes; ``None``
    without ``/proc`` or that line."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(f'{field}:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def median_of(rows: list[dict], key: str) -> float | None:
    """Median of ``row[key]`` over the rows that have a number there (a checkpoint of an older
    gtpe has no ``train_seconds``); ``None`` when none has."""
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return float(statistics.median(values)) if values else None


def run_cost(rows: list[dict], precompute: dict | None, device: torch.device,
             peak_memory: int | None, memory_at_start: int | None = None) -> dict:
    """``results.json``'s ``cost`` (described in :mod:`gtpe.train.loop`) from the metric rows,
    the PE precompute stats of :func:`gtpe.train.loop.load_data`, the measured peak and the
    memory in use when the run started."""
    pre = precompute or {}
    seconds, nbytes, graphs = pre.get('seconds'), pre.get('bytes'), pre.get('num_graphs') or 0
    return {
        'precompute_seconds': None if seconds is None else float(seconds),
        'pe_bytes_per_graph': (None if nbytes is None
                               else float(nbytes) / graphs if graphs else 0.0),
        'seconds_per_epoch': median_of(rows, 'seconds'),
        'train_seconds_per_epoch': median_of(rows, 'train_seconds'),
        'peak_memory_bytes': peak_memory,
        'memory_at_start_bytes': memory_at_start,
        'peak_memory_kind': memory_kind(device),
        'threads': torch.get_num_threads(),
    }
