"""Progress that a person sees on a terminal and in a log file alike.

On a terminal, :func:`progress_bar` is an ordinary tqdm bar.  Anywhere else (a log file, CI, a
Slurm job, a pipe) tqdm's carriage-return updates are unreadable and its default refresh is
silent for long stretches, so the bar becomes a plain line printed at least every
``GTPE_PROGRESS_INTERVAL`` seconds (default 10) while it runs -- from a timer thread, so a step
that takes longer than that (one big graph, a slow batch) still shows the current count -- and
once more when it ends::

    precompute: 4096/12000 graph (34%), 11 s, ~21 s left
    precompute: 12000/12000 graph (100%), 31 s, done

Work shorter than one interval prints nothing (a 300-epoch run of fast epochs does not fill
the log with bars).

:func:`heartbeat` covers phases that have no count (a dataset build that reads one big file): it
prints ``<desc>: working, 20 s`` every interval from a daemon thread, and one line at the end
with the total time.  Both write to ``sys.stderr`` and do nothing when ``enabled`` is
false.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ['INTERVAL_ENV', 'heartbeat', 'interval', 'progress_bar']

INTERVAL_ENV = 'GTPE_PROGRESS_INTERVAL'


def interval() -> float:
    """Seconds between log lines (``$GTPE_PROGRESS_INTERVAL``, default 10)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, '') or 10.0)
    except ValueError:
        value = 10.0
    return value if value > 0 else 10.0


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def _seconds(s: float) -> str:
    return f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min'


class _LogBar:
    """The tqdm subset gtpe uses (``update``, ``set_postfix_str``, ``close``, context manager,
    iteration), printing a whole line every ``every`` seconds while open (from a daemon thread,
    or from :meth:`update` when a step ends after the interval)."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str,
                 file: IO[str], every: float) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, '__len__'):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.file, self.every = total, desc, unit, file, every
        self.n = 0
        self.postfix = ''
        self.start = self.last = time.monotonic()
        self.closed = False
        self.printed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name=f'gtpe-progress-{desc}',
                                       daemon=True)
        self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if not self.closed and time.monotonic() - self.last >= 0.5 * self.every:
                    self.last = time.monotonic()
                    self._line()

    def _line(self, done: bool = False) -> None:
        self.printed = True
        elapsed = time.monotonic() - self.start
        count = f'{self.n}/{self.total}' if self.total is not None else f'{self.n}'
        parts = [f'{self.desc}: {count} {self.unit}']
        if self.total:
            parts[0] += f' ({100.0 * self.n / self.total:.0f}%)'
        parts.append(_seconds(elapsed))
        if not done and self.total and self.n:
            parts.append(f'~{_seconds(elapsed * (self.total - self.n) / self.n)} left')
        if self.postfix:
            parts.append(self.postfix)
        if done:
            parts.append('done')
        print(', '.join(parts), file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                self._line()

    def set_postfix_str(self, s: str = '', refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.printed:
                self._line(done=True)
        self._stop.set()
        if self._timer is not threading.current_thread():
            self._timer.join()

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> _LogBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoBar(_LogBar):
    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable, self.n, self.closed, self.postfix = iterable, 0, True, ''

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        yield from self.iterable

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = '', unit: str = 'it', enabled: bool = True,
                 file: IO[str] | None = None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on a terminal, periodic plain lines elsewhere, nothing when not ``enabled``.

    Use it like tqdm: ``for x in progress_bar(xs, desc=...)`` or ``with progress_bar(total=n) as
    bar: bar.update(k)``.  ``tqdm_kwargs`` go to tqdm on a terminal only.
    """
    file = sys.stderr if file is None else file
    if not enabled:
        return _NoBar(iterable)
    if _is_terminal(file):
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, **tqdm_kwargs)
    return _LogBar(iterable, total, desc, unit, file, interval())


@contextlib.contextmanager
def heartbeat(desc: str, enabled: bool = True, file: IO[str] | None = None) -> Iterator[None]:
    """Print ``<desc>: working, N s`` every :func:`interval` seconds while the block runs, and
    ``<desc>: done in N s`` at its end if it took at least one interval (a short phase stays
    quiet).  Terminal or not: a phase without a count has no bar to show instead."""
    file = sys.stderr if file is None else file
    if not enabled:
        yield
        return
    every = interval()
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            print(f'{desc}: working, {_seconds(time.monotonic() - start)}', file=file,
                  flush=True)

    thread = threading.Thread(target=beat, name=f'gtpe-heartbeat-{desc}', daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        elapsed = time.monotonic() - start
        if elapsed >= every:
            print(f'{desc}: done in {_seconds(elapsed)}', file=file, flush=True)
