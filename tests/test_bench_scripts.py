"""Smoke tests of the benchmark scripts' options that the README promises: ``train_bench.py
--busy`` prints a quiet and a busy table and stops its competing process; the linear-attention
benchmark prints its rows and the approximation errors. Tiny settings: no timing is checked."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import linear_attention_bench  # noqa: E402
import train_bench  # noqa: E402


def test_train_bench_busy_prints_both_conditions_and_stops_the_competitor(monkeypatch):
    started: list[subprocess.Popen] = []
    real = train_bench.CompetingProcess.__init__

    def spy(self):
        real(self)
        started.append(self.proc)

    monkeypatch.setattr(train_bench.CompetingProcess, "__init__", spy)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_bench.main(["--quick", "--no-scale", "--rows", "pyg,full,pyg-performer,linear",
                          "--steps", "1", "--rounds", "1", "--warmup", "1", "--busy",
                          "--threads", "1"])
    text = out.getvalue()
    assert "## quiet: no other process started" in text
    assert "## busy: one competing CPU-bound process" in text
    assert text.count("gtpe GPSLayer gine+linear") == 2 and "OMP_WAIT_POLICY=" in text
    assert len(started) == 1 and started[0].poll() is not None  # started once, and stopped


def test_linear_attention_bench_prints_rows_and_errors():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        linear_attention_bench.main(["--quick", "--workloads", "500", "--steps", "1",
                                     "--rounds", "1", "--warmup", "1", "--threads", "1"])
    text = out.getvalue()
    for row in ("pyg performer (head 64)", "pyg performer (head 16)", "gtpe linear"):
        assert row in text
    assert "approximation error: gtpe linear 0." in text and "uniform attention" in text
