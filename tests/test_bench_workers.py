"""``gtpe bench --workers N`` (:mod:`gtpe.train.workers`): cores, GPUs and environment of the
workers, the process pool, stopping workers (SIGTERM to their group, then SIGKILL), a bench's
handling of workers that are killed, of a failing report update and of SIGTERM. The workers here
are small stand-in processes (no torch), so these tests are fast; the tests that train in real
workers are in test_bench.py."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bench_utils import GRID, ONE_CELL, write_grid

from gtpe.train import bench, benchdir, workers
from gtpe.train.bench import BenchFailed, run_bench
from gtpe.train.workers import (
    DIVERGED_EXIT,
    Job,
    cpu_sets,
    describe_exit,
    gpu_for_slot,
    run_pool,
    stop,
    worker_env,
)

REPO = Path(__file__).resolve().parents[1]


def python(code: str) -> list[str]:
    return [sys.executable, '-c', textwrap.dedent(code)]


def fake_workers(monkeypatch, code: str) -> None:
    """Workers run ``code`` (with ``SPEC``, the run's spec, defined) instead of training."""
    def command(spec):
        return python(f'import json\nSPEC = json.loads({json.dumps(spec)!r})\n'
                      + textwrap.dedent(code))
    monkeypatch.setattr(workers, 'worker_command', command)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state == 'Z'


def test_cores_gpus_and_environment():
    assert [gpu_for_slot(k, ['0', '1']) for k in range(5)] == ['0', '1', '0', '1', '0']
    assert gpu_for_slot(3, ['5']) == '5' and gpu_for_slot(0, []) is None
    assert cpu_sets(2, 3, [0, 1, 2, 3, 4, 5, 6]) == [[0, 1, 2], [3, 4, 5]]
    assert cpu_sets(3, 1, [4, 7, 9]) == [[4], [7], [9]]
    assert cpu_sets(2, 2, [0, 1, 2]) is None  # not enough cores: not pinned
    env = worker_env(2, None, {'PATH': '/bin', 'PYTHONPATH': '/x'})
    assert env['OMP_NUM_THREADS'] == '2' and env['OMP_WAIT_POLICY'] == 'PASSIVE'
    assert env['PATH'] == '/bin' and 'CUDA_VISIBLE_DEVICES' not in env
    assert env['PYTHONPATH'] == f'{REPO}{os.pathsep}/x'  # this gtpe first
    user = worker_env(1, '3', {'OMP_WAIT_POLICY': 'ACTIVE', 'OMP_NUM_THREADS': '8'})
    assert user['OMP_WAIT_POLICY'] == 'ACTIVE' and user['OMP_NUM_THREADS'] == '1'
    assert user['CUDA_VISIBLE_DEVICES'] == '3'
    assert describe_exit(1) == 'exit status 1' and describe_exit(DIVERGED_EXIT) == 'exit status 3'
    assert describe_exit(-9) == 'killed by signal 9 (out of memory?)'
    assert describe_exit(-15) == 'killed by signal 15'


def test_pool_runs_jobs_in_their_own_sessions_holding_the_inherited_lock(tmp_path):
    (tmp_path / 'run').mkdir()
    own_session = 'import os, time; assert os.getsid(0) == os.getpid(); time.sleep(0.5)'
    codes = [own_session, 'import sys; sys.exit(3)',
             'import os; os.kill(os.getpid(), 9)']
    jobs = [Job(argv=python(c), env=dict(os.environ), log_path=tmp_path / f'{k}.txt', data=k)
            for k, c in enumerate(codes)]
    jobs[0].keep_fd = benchdir.try_lock_run(tmp_path / 'run')
    exits, locked_while_running = {}, []

    def next_job(slot):
        if not jobs:
            return None
        if len(jobs) == 2:  # job 0 has started: its worker holds the lock, the parent does not
            fd = benchdir.try_lock_run(tmp_path / 'run')
            locked_while_running.append(fd is None)
        return jobs.pop(0)

    run_pool(2, next_job, lambda job, rc, seconds: exits.update({job.data: rc}))
    assert exits == {0: 0, 1: 3, 2: -9} and locked_while_running == [True]
    fd = benchdir.try_lock_run(tmp_path / 'run')  # released when the worker exited
    assert fd is not None
    os.close(fd)


def test_stop_terminates_the_group_then_kills(tmp_path):
    grand = python('''
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        print(p.pid, flush=True)
        time.sleep(60)''')
    stubborn = python('''
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(60)''')
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
             for cmd in (grand, stubborn)]
    grandchild = int(procs[0].stdout.readline())
    assert procs[1].stdout.readline().strip() == 'ready'
    t0 = time.monotonic()
    stop(procs, grace=0.5)
    assert procs[0].returncode == -signal.SIGTERM and procs[1].returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(grandchild)  # the worker's own children are stopped too
    for p in procs:
        p.stdout.close()


def test_a_worker_killed_by_a_signal_is_a_failed_run(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, ONE_CELL.replace('[0]', '[0, 1]'))
    fake_workers(monkeypatch, '''
        import os, signal
        if SPEC['config']['train']['seed'] == 0:
            os.kill(os.getpid(), signal.SIGKILL)''')
    lines = []
    with pytest.raises(BenchFailed) as info:
        run_bench(grid, tmp_path / 'out', workers=2, threads=1, progress=False, log=lines.append)
    assert info.value.failed == ['runs/pe-none/seed-0']
    text = '\n'.join(lines)
    assert '[1/2] pe-none seed 0: FAILED (killed by signal 9 (out of memory?))' in text
    assert '[2/2] pe-none seed 1: no results' in text  # exit 0: not a failure


@pytest.mark.parametrize('workers_', [1, 2])
def test_a_failing_report_update_is_one_warning_and_the_runs_go_on(tmp_path, monkeypatch,
                                                                   workers_):
    from gtpe.train import report
    grid = write_grid(tmp_path, ONE_CELL.replace('[0]', '[0, 1]'))
    if workers_ > 1:
        fake_workers(monkeypatch, 'import time; time.sleep(0.2)')  # both running at once
    write_report, calls = report.write_report, []

    def flaky(*args, **kwargs):
        calls.append(kwargs.get('figures'))
        if len(calls) == 1:
            raise OSError('disk full')
        return write_report(*args, **kwargs)

    monkeypatch.setattr(report, 'write_report', flaky)
    lines = []
    run_bench(grid, tmp_path / 'out', workers=workers_, threads=1, progress=False,
              log=lines.append)
    warnings = [line for line in lines if line.startswith('warning: ')]
    assert warnings == ['warning: could not update the report (OSError: disk full); going on']
    assert calls == [False, False, True] and any('(2/2 done)' in line for line in lines)
    assert (tmp_path / 'out' / 'report.md').is_file()


def test_more_workers_than_gpus_warns_and_slots_get_gpus_round_robin(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, GRID.replace('seeds: [0, 1]', 'seeds: [0]').replace(
        'grid:', 'set: {train.device: auto}\ngrid:'))
    monkeypatch.setattr(bench, 'visible_gpus', lambda: ['7'])
    fake_workers(monkeypatch, '''
        import os, time
        print('gpu', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)
        time.sleep(0.2)''')
    lines = []
    run_bench(grid, tmp_path / 'out', workers=2, threads=1, progress=False, log=lines.append)
    assert 'warning: 2 workers share 1 GPU: the runs on one GPU compete for its memory and ' \
           'time' in lines
    for cell in ('pe-none', 'pe-rwse'):
        assert 'gpu 7' in (tmp_path / 'out' / 'runs' / cell / 'seed-0' / 'log.txt').read_text()


def test_ctrl_c_stops_the_worker_processes(tmp_path, monkeypatch):
    grid = write_grid(tmp_path)
    fake_workers(monkeypatch, 'import time; time.sleep(60)')
    started = []
    popen = workers.subprocess.Popen

    def spy(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def log(line):
        if line.startswith('[2/4]') and line.endswith(': start'):
            raise KeyboardInterrupt  # while the first run's worker is running

    monkeypatch.setattr(workers.subprocess, 'Popen', spy)
    with pytest.raises(KeyboardInterrupt):
        run_bench(grid, tmp_path / 'out', workers=2, threads=1, progress=False, log=log)
    assert len(started) == 1 and started[0].poll() == -signal.SIGTERM


def test_sigterm_to_the_bench_stops_its_workers(tmp_path):
    grid = write_grid(tmp_path, ONE_CELL.replace('[0]', '[0, 1]'))
    out = tmp_path / 'out'
    script = textwrap.dedent(f'''
        import sys
        from gtpe.train import workers
        code = 'import os, time; print(os.getpid(), flush=True); time.sleep(60)'
        workers.worker_command = lambda spec: [sys.executable, '-c', code]
        from gtpe.cli import main
        sys.exit(main(['bench', {str(grid)!r}, '--out', {str(out)!r}, '--workers', '2',
                       '--threads', '1', '--quiet']))''')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    parent = subprocess.Popen([sys.executable, '-c', script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    logs = [out / 'runs' / 'pe-none' / f'seed-{s}' / 'log.txt' for s in (0, 1)]
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            pids = [int(p.read_text()) for p in logs if p.is_file() and p.read_text().strip()]
        assert len(pids) == 2, parent.communicate(timeout=10)
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=30)
        assert parent.returncode == 130 and 'gtpe: interrupted' in err
        assert all(gone(pid) for pid in pids)
    finally:
        parent.kill()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
