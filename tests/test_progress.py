"""gtpe._progress: plain periodic lines off a terminal, tqdm on one, nothing when disabled."""
import io
import re
import threading
import time

from gtpe._progress import heartbeat, interval, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_bar_prints_periodic_and_end_lines(monkeypatch):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')
    out = io.StringIO()
    with progress_bar(total=4, desc='precompute', unit='graph', file=out) as bar:
        for _ in range(4):
            time.sleep(0.06)
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert re.match(r'precompute: \d/4 graph \(\d+%\), \d+ s', lines[0]), lines
    assert len(lines) >= 3                          # >= 2 periodic, end
    assert lines[-1].startswith('precompute: 4/4 graph (100%)') and lines[-1].endswith('done')
    assert any('left' in line for line in lines[1:-1])
    assert '\r' not in out.getvalue()


def test_log_bar_is_quiet_for_work_shorter_than_an_interval(monkeypatch):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '100')
    out = io.StringIO()
    assert list(progress_bar(range(5), desc='x', file=out)) == [0, 1, 2, 3, 4]
    with progress_bar(total=3, desc='y', file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ''


def test_disabled_bar_prints_nothing_and_terminal_gets_tqdm():
    out = io.StringIO()
    with progress_bar(total=3, desc='x', enabled=False, file=out) as bar:
        bar.update(3)
    assert list(progress_bar([1, 2], enabled=False, file=out)) == [1, 2]
    assert out.getvalue() == ''
    from tqdm.auto import tqdm
    bar = progress_bar(total=3, desc='x', file=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_heartbeat_beats_while_working_and_stays_quiet_when_short(monkeypatch):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')
    out = io.StringIO()
    with heartbeat('building zinc', file=out):
        time.sleep(0.18)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith('building zinc: working, ')
    assert lines[-1].startswith('building zinc: done in ')
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '100')
    quiet = io.StringIO()
    with heartbeat('fast', file=quiet):
        pass
    assert quiet.getvalue() == ''


def test_interval_reads_the_environment(monkeypatch):
    monkeypatch.delenv('GTPE_PROGRESS_INTERVAL', raising=False)
    assert interval() == 10.0
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', 'abc')
    assert interval() == 10.0
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '2.5')
    assert interval() == 2.5


def test_log_bar_prints_during_a_step_longer_than_the_interval(monkeypatch):
    """One slow step (a big graph, a slow batch) still gets lines while it runs, from the timer;
    closing stops the timer thread."""
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')
    out = io.StringIO()
    with progress_bar(total=2, desc='slow', unit='graph', file=out) as bar:
        bar.update(1)
        time.sleep(0.4)                                  # no update for 8 intervals
        during = out.getvalue().splitlines()
        bar.update(1)
    assert len(during) >= 2 and all(ln.startswith('slow: 1/2 graph (50%)') for ln in during)
    assert out.getvalue().splitlines()[-1].endswith('done')
    assert not any(th.name.startswith('gtpe-progress-') for th in threading.enumerate())
    time.sleep(0.15)
    assert out.getvalue().splitlines()[-1].endswith('done')   # silent after close


def test_abandoned_iteration_closes_the_bar(monkeypatch):
    monkeypatch.setenv('GTPE_PROGRESS_INTERVAL', '0.05')
    out = io.StringIO()
    gen = iter(progress_bar(range(10), desc='x', file=out))
    next(gen)
    gen.close()                                           # a `break` out of the loop
    assert not any(th.name == 'gtpe-progress-x' for th in threading.enumerate())
