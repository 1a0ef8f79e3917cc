"""Worker processes of ``gtpe bench --workers N``: core sets, GPU slots, the worker environment,
the process pool and the worker's entry point (``python -m gtpe.train.workers SPEC_JSON``).

Each worker process trains one run with ``threads`` torch threads, pinned to its own cores when
there are enough (:func:`cpu_sets`), on the GPU of its slot (:func:`gpu_for_slot`); it runs in a
session of its own (so a Ctrl-C in the terminal reaches only the parent) and the parent stops it
and its children with :func:`stop` (``SIGTERM`` to its process group, ``SIGKILL`` after a grace
period). Its output goes to a log file; its exit status is 0 when the run finished,
:data:`DIVERGED_EXIT` when it diverged and 1 on any other error (the traceback in the log).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    'DIVERGED_EXIT',
    'Job',
    'available_cores',
    'cpu_sets',
    'describe_exit',
    'gpu_for_slot',
    'run_pool',
    'stop',
    'visible_gpus',
    'worker_command',
    'worker_env',
]

DIVERGED_EXIT = 3  # exit status of `gtpe train` and of a worker whose run diverged
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL when stopping workers
_POLL_SECONDS = 0.05


# ---------------------------------------------------------------------------------------------
# cores, GPUs, environment


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_sets(workers: int, threads: int, cores: Sequence[int]) -> list[list[int]] | None:
    """Disjoint core sets for the worker slots (``threads`` cores each), or ``None`` when there are
    fewer cores than ``workers * threads`` (then the workers are not pinned)."""
    if workers * threads > len(cores):
        return None
    return [list(cores[k * threads:(k + 1) * threads]) for k in range(workers)]


def gpu_for_slot(slot: int, visible: Sequence[str]) -> str | None:
    """The GPU of worker slot ``slot`` (``CUDA_VISIBLE_DEVICES`` value): the visible GPUs round
    robin, ``None`` without GPUs."""
    return visible[slot % len(visible)] if visible else None


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (``[]`` without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get('CUDA_VISIBLE_DEVICES')
    if env is not None:
        return [d.strip() for d in env.split(',') if d.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(threads: int, gpu: str | None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: ``base`` (default: this process's) with
    ``OMP_NUM_THREADS = threads``, ``OMP_WAIT_POLICY = PASSIVE`` unless ``base`` sets it (workers
    share the machine), ``CUDA_VISIBLE_DEVICES = gpu`` when given, and this gtpe first on
    ``PYTHONPATH`` (the workers import the same package)."""
    env = dict(os.environ if base is None else base)
    env['OMP_NUM_THREADS'] = str(threads)
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = gpu
    root = str(Path(__file__).resolve().parents[2])
    old = env.get('PYTHONPATH')
    env['PYTHONPATH'] = root + (os.pathsep + old if old else '')
    return env


def worker_command(spec: dict) -> list[str]:
    """The command of a worker that trains the run ``spec`` (see :func:`_worker_main`)."""
    return [sys.executable, '-m', 'gtpe.train.workers', json.dumps(spec)]


def describe_exit(returncode: int) -> str:
    """``'exit status 1'``, or ``'killed by signal 9 (out of memory?)'`` for a negative status."""
    if returncode >= 0:
        return f'exit status {returncode}'
    sig = -returncode
    return f'killed by signal {sig}' + (' (out of memory?)' if sig == signal.SIGKILL else '')


# ---------------------------------------------------------------------------------------------
# the pool


@dataclass
class Job:
    """One worker process to start: its command, environment, log file, a file descriptor the
    worker inherits (and so holds until it exits: a lock) and the caller's ``data``."""
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    keep_fd: int | None = None
    data: Any = None


def _start(job: Job) -> subprocess.Popen:
    """Start ``job`` in a new session; the parent's copies of its log and ``keep_fd`` are closed."""
    try:
        with open(job.log_path, 'ab') as logfile:
            return subprocess.Popen(job.argv, stdout=logfile, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=job.env,
                                    start_new_session=True,
                                    pass_fds=(job.keep_fd,) if job.keep_fd is not None else ())
    finally:
        if job.keep_fd is not None:
            os.close(job.keep_fd)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(procs: Sequence[subprocess.Popen], grace: float | None = None) -> None:
    """Stop the workers ``procs`` and their children: ``SIGTERM`` to each one's process group,
    then ``SIGKILL`` to the groups still running after ``grace`` seconds (default
    :data:`GRACE_SECONDS`)."""
    grace = GRACE_SECONDS if grace is None else grace
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def run_pool(slots: int, next_job: Callable[[int], Job | None],
             on_exit: Callable[[Job, int, float], None]) -> None:
    """Run jobs in up to ``slots`` worker processes at a time until ``next_job(slot)`` returns
    ``None``; ``on_exit(job, returncode, seconds)`` is called as each one ends. On any exception
    (``KeyboardInterrupt`` included) the running workers are stopped (:func:`stop`)."""
    running: dict[int, tuple[subprocess.Popen, Job, float]] = {}
    more = True
    try:
        while more or running:
            for slot in range(slots):
                if more and slot not in running:
                    job = next_job(slot)
                    if job is None:
                        more = False
                    else:
                        running[slot] = (_start(job), job, time.perf_counter())
            if running:
                time.sleep(_POLL_SECONDS)
            for slot, (proc, job, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    on_exit(job, proc.returncode, time.perf_counter() - t0)
    finally:
        stop([proc for proc, _, _ in running.values()])


# ---------------------------------------------------------------------------------------------
# worker process entry point: python -m gtpe.train.workers SPEC_JSON


def _cores_text() -> str:
    return ','.join(map(str, available_cores()))


def _worker_main(argv: Sequence[str]) -> int:
    """Train one run described by the JSON ``argv[0]`` (``config``, ``run_dir``, ``resume``,
    ``progress``, ``threads``, ``cpus``): exit status 0 when it finished, :data:`DIVERGED_EXIT`
    when it diverged, 1 on any other error (traceback in the log)."""
    spec = json.loads(argv[0])
    if spec.get('cpus') and hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, spec['cpus'])  # before torch starts its threads
    import torch

    from gtpe.train.config import ExperimentConfig
    from gtpe.train.loop import TrainingDiverged, train
    torch.set_num_threads(int(spec['threads']))
    config = ExperimentConfig.from_dict(spec['config'])
    print(f'gtpe bench worker: {spec["run_dir"]} (pid {os.getpid()}, '
          f'{torch.get_num_threads()} threads, cores {_cores_text()}, '
          f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "unset")})', flush=True)
    try:
        train(config, spec['run_dir'], resume=bool(spec['resume']), progress=bool(spec['progress']),
              log=functools.partial(print, flush=True))
    except TrainingDiverged as exc:
        print(f'gtpe: error: {exc}', flush=True)
        return DIVERGED_EXIT
    return 0


if __name__ == '__main__':
    sys.exit(_worker_main(sys.argv[1:]))
