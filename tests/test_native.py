"""gtpe._native: C kernels compiled once per machine, cached, with a clean fallback."""

import ctypes
import os

import pytest

from gtpe import _native

# Building needs a C compiler; without one only the fallback can be (and is) tested.
needs_cc = pytest.mark.skipif(_native._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path and no kernels loaded in this process."""
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_loaded", {})
    return tmp_path


def _source(tmp_path, body="int twice(int x) { return 2 * x; }\n"):
    src = tmp_path / "twice.c"
    src.write_text(body)
    return src


@needs_cc
def test_builds_once_and_reuses_the_cached_library(fresh, monkeypatch):
    src = _source(fresh)
    lib = _native.load(src, {"UNUSED": "1"})
    assert isinstance(lib, ctypes.CDLL) and lib.twice(21) == 42
    built = sorted((fresh / "cache").iterdir())
    assert len(built) == 1 and built[0].suffix in (".so", ".dylib")  # no temporaries left
    mtime = built[0].stat().st_mtime_ns
    # a new process (empty in-memory table) finds the cached file and does not compile again
    monkeypatch.setattr(_native, "_loaded", {})
    calls = []
    real_run = _native.subprocess.run
    monkeypatch.setattr(
        _native.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw)
    )
    assert _native.load(src, {"UNUSED": "1"}).twice(5) == 10
    assert all("-shared" not in c for c in calls)  # only `cc --version`, no build
    assert built[0].stat().st_mtime_ns == mtime
    # other defines or another source text: another library; a build also removes what a killed
    # build left behind (an atomic_write temporary older than the stale margin)
    stale = fresh / "cache" / ".twice-0123.so.k1ll3d.tmp"
    stale.write_bytes(b"half a library")
    os.utime(stale, (1, 1))
    assert _native.load(src, {"UNUSED": "2"}).twice(1) == 2
    assert not stale.exists()
    src.write_text("int twice(int x) { return x + x; }\n")
    monkeypatch.setattr(_native, "_loaded", {})
    assert _native.load(src).twice(4) == 8
    assert len(list((fresh / "cache").iterdir())) == 3


def test_no_compiler_warns_and_returns_none(fresh, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert _native.load(_source(fresh)) is None


@needs_cc
def test_build_error_warns_with_the_compiler_message(fresh):
    with pytest.warns(RuntimeWarning, match="failed") as rec:
        assert _native.load(_source(fresh, "int broken( {\n")) is None
    assert "twice.c" in str(rec[0].message)
    cache = fresh / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # no partial library left behind


def test_disabled_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("GTPE_NATIVE", "0")
    assert not _native.enabled()
    assert _native.load(_source(fresh)) is None
    assert not (fresh / "cache").exists()
