"""Helpers for tests that run the ``gtpe`` command in-process."""
from gtpe.cli import main


def run_main(capsys, *argv):
    """``gtpe ARGV...`` in this process: ``(exit status, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err):
    """The single ``gtpe: error: ...`` line of ``err`` (no traceback, no 'internal error')."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gtpe: error: '), err
    assert 'Traceback' not in err and 'internal error' not in err
    return lines[0]
