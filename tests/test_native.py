"""gtpe._native: C kernels compiled once per machine, cached, with a clean fallback."""

import ctypes
import hashlib
import os
import stat
from pathlib import Path

import pytest

from gtpe import _native

# Building needs a C compiler; without one only the fallback can be (and is) tested.
needs_cc = pytest.mark.skipif(_native._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path and no kernels loaded in this process."""
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_refused_folders", set())
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
    stale = fresh / "cache" / ".gtpe-twice-0123.so.k1ll3d.tmp"  # (atomic_write's naming)
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


# -- a private cache, owned and checked libraries (issue 9, point 8) ----------------------------
# A library loaded in this process must never be rewritten in place (its pages are mapped), and
# dlopen returns the loaded one for a path it has seen: planted files go to a second cache.


def _libraries(cache):
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def _plant(built, cache, content=lambda data: data):
    """Copy the libraries of the ``built`` cache into a new private ``cache`` (same names),
    their bytes passed through ``content``; returns the planted paths."""
    cache.mkdir(mode=0o700)
    planted = []
    for lib in _libraries(built):
        (cache / lib.name).write_bytes(content(lib.read_bytes()))
        (cache / lib.name).chmod(0o700)
        planted.append(cache / lib.name)
    assert planted
    return planted


@pytest.fixture
def dlopened(monkeypatch):
    """The sha256 of the bytes behind every path handed to ``ctypes.CDLL``, as they were then."""
    seen = []
    real = ctypes.CDLL

    def spy(name, *args, **kwargs):
        seen.append(hashlib.sha256(Path(name).read_bytes()).hexdigest())
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", spy)
    return seen


def _as_foreign(monkeypatch):
    """Every regular file appears owned by another user (the folder stays ours)."""
    for name in ("stat", "lstat", "fstat"):
        real = getattr(os, name)

        def fake(*args, _real=real, **kwargs):
            st = _real(*args, **kwargs)
            if stat.S_ISREG(st.st_mode):
                st = os.stat_result((*st[:4], st.st_uid + 1, *st[5:10]))
            return st

        monkeypatch.setattr(os, name, fake)


@needs_cc
def test_fresh_build_makes_a_private_folder_and_library(fresh, monkeypatch):
    """The folder (below missing parents) is created 0700 and the library is not writable by
    group/others, even under umask 000."""
    cache = fresh / "a" / "b" / "native"
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(cache))
    old = os.umask(0)
    try:
        assert _native.load(_source(fresh)).twice(3) == 6
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (lib,) = _libraries(cache)
    assert lib.stat().st_uid == os.getuid() and lib.stat().st_mode & 0o077 == 0


@needs_cc
def test_default_cache_folder_open_to_others_is_tightened(fresh, monkeypatch):
    monkeypatch.delenv("GTPE_NATIVE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh / "xdg"))
    cache = fresh / "xdg" / "gtpe" / "native"
    cache.mkdir(parents=True)
    cache.chmod(0o755)  # as older gtpe versions made it
    assert _native.load(_source(fresh)).twice(3) == 6
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert _libraries(cache)


@needs_cc
def test_chosen_cache_folder_open_to_others_is_never_changed(fresh):
    """GTPE_NATIVE_CACHE at a shared folder (setgid, group-writable): its mode is left alone and
    the libraries go into a private subfolder gtpe-native-<uid>."""
    cache = fresh / "cache"
    cache.mkdir()
    cache.chmod(0o2775)
    assert _native.load(_source(fresh)).twice(3) == 6
    assert stat.S_IMODE(cache.stat().st_mode) == 0o2775
    private = cache / f"gtpe-native-{os.getuid()}"
    assert stat.S_IMODE(private.stat().st_mode) & 0o777 == 0o700 and _libraries(private)
    private.chmod(0o777)  # the private subfolder itself opened up: refused, not changed
    _native._loaded.clear()
    with pytest.warns(RuntimeWarning, match="open to group or others"):
        assert _native.load(_source(fresh), {"OTHER": "1"}) is None
    assert stat.S_IMODE(private.stat().st_mode) & 0o777 == 0o777


@needs_cc
def test_cache_folder_of_another_user_is_refused(fresh, monkeypatch, dlopened):
    cache = fresh / "cache"
    cache.mkdir(mode=0o750)
    uid = cache.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.warns(RuntimeWarning, match="owned by another user") as rec:
        assert _native.load(_source(fresh)) is None
        assert _native.load(_source(fresh), {"OTHER": "1"}) is None
    assert len(rec) == 1  # once per folder
    assert not list(cache.iterdir()) and not dlopened  # nothing built, nothing loaded
    assert stat.S_IMODE(cache.stat().st_mode) == 0o750  # and left as it was


@needs_cc
@pytest.mark.parametrize("where", ["cache", "cache/native"])
def test_cache_path_that_is_not_a_folder_is_refused(fresh, monkeypatch, dlopened, where):
    """$GTPE_NATIVE_CACHE is a file, or below one: one warning, nothing built or loaded."""
    (fresh / "cache").write_text("a file")
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / where))
    with pytest.warns(RuntimeWarning, match="kernel cache") as rec:
        assert _native.load(_source(fresh)) is None
    assert len(rec) == 1 and not dlopened
    assert (fresh / "cache").read_text() == "a file"


@needs_cc
@pytest.mark.parametrize("problem", ["writable", "foreign", "symlink"])
def test_library_writable_by_others_or_foreign_is_refused(fresh, monkeypatch, dlopened, problem):
    src = _source(fresh)
    assert _native.load(src).twice(1) == 2
    (lib,) = _plant(fresh / "cache", fresh / "planted")
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / "planted"))
    monkeypatch.setattr(_native, "_loaded", {})
    dlopened.clear()
    if problem == "writable":
        lib.chmod(0o666)  # (mode bits, not a write attempt: the tests may run as root)
        match = "writable by group or others"
    elif problem == "symlink":  # to a library that is fine itself
        lib.unlink()
        lib.symlink_to(_libraries(fresh / "cache")[0])
        match = "not a regular file"
    else:
        _as_foreign(monkeypatch)
        match = "owned by another user"
    with pytest.warns(RuntimeWarning, match=match) as rec:
        assert _native.load(src) is None
    assert len(rec) == 1 and str(lib) in str(rec[0].message)
    assert not dlopened and os.path.lexists(lib)  # never loaded, nor removed


@needs_cc
def test_library_content_hash_is_checked_before_loading(fresh, monkeypatch, dlopened):
    """One byte changed after the build: not loaded; rebuilt once, with one warning."""
    src = _source(fresh)
    assert _native.load(src).twice(1) == 2
    (good,) = [p.read_bytes() for p in _libraries(fresh / "cache")]
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # (in the section headers: the dynamic loader would still accept it)
    _plant(fresh / "cache", fresh / "planted", lambda _: bytes(bad))
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / "planted"))
    monkeypatch.setattr(_native, "_loaded", {})
    dlopened.clear()
    with pytest.warns(RuntimeWarning, match="sha256") as rec:
        assert _native.load(src).twice(2) == 4
    assert len(rec) == 1
    assert dlopened == [hashlib.sha256(good).hexdigest()]  # the rebuilt library, not `bad`
    assert [p.read_bytes() for p in _libraries(fresh / "planted")] == [good]


@needs_cc
def test_libraries_of_concurrent_builds_coexist(fresh, monkeypatch):
    """Two complete builds of the same key with different bytes (as from two DDP ranks): each is
    named by its own hash, both pass the check, no warning."""
    import warnings

    src = _source(fresh)
    assert _native.load(src).twice(1) == 2
    (lib,) = _libraries(fresh / "cache")
    good = lib.read_bytes()
    other = good + b"\0" * 8  # (trailing bytes: still a valid library)
    digest = hashlib.sha256(good).hexdigest()
    lib.with_name(lib.name.replace(digest, hashlib.sha256(other).hexdigest())).write_bytes(other)
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / "planted"))
    _plant(fresh / "cache", fresh / "planted")
    monkeypatch.setattr(_native, "_loaded", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.load(src).twice(3) == 6
    assert len(_libraries(fresh / "planted")) == 2


@needs_cc
def test_load_failures_warn_once_and_return_none(fresh, monkeypatch):
    """A library that passes the checks but that dlopen rejects, or that lacks a symbol the
    caller needs: one warning, ``None`` (the caller's torch path)."""
    src = _source(fresh)
    assert _native.load(src, symbols=["twice"]).twice(1) == 2
    monkeypatch.setattr(_native, "_loaded", {})
    with pytest.warns(RuntimeWarning, match="lacks the symbol 'thrice'") as rec:
        assert _native.load(src, symbols=["twice", "thrice"]) is None
    assert len(rec) == 1
    # garbage under a name that matches its own hash (as if written there by this user)
    garbage = b"not an ELF file"
    (lib,) = _libraries(fresh / "cache")
    good_hash = hashlib.sha256(lib.read_bytes()).hexdigest()
    assert good_hash in lib.name
    # a new file: the loaded library's inode (mapped in this process) is never written
    lib.unlink()
    lib.with_name(lib.name.replace(good_hash, hashlib.sha256(garbage).hexdigest())).write_bytes(
        garbage)
    (lib,) = _libraries(fresh / "cache")
    lib.chmod(0o700)
    monkeypatch.setattr(_native, "_loaded", {})
    with pytest.warns(RuntimeWarning, match="cannot load") as rec:
        assert _native.load(src) is None
    assert len(rec) == 1


@needs_cc
def test_planted_library_does_not_break_full_attention(fresh, monkeypatch):
    """Another library (without the kernel's symbols) where the kernel was built: never loaded;
    FullAttention warns once and still equals the padded reference."""
    import warnings

    import torch

    from gtpe.nn import FullAttention
    from gtpe.nn.attention import full

    monkeypatch.setattr(full, "_kernels", {})
    torch.manual_seed(0)
    kern = FullAttention(8, heads=2, strategy="kernel").double()
    ref = FullAttention(8, heads=2, strategy="pad").double()
    ref.load_state_dict(kern.state_dict())
    x = torch.randn(11, 8, dtype=torch.float64)
    batch = torch.tensor([0] * 4 + [1] * 7)
    kern(x, batch)  # builds the float64 kernel into the fresh cache
    wrong = fresh / "wrong.so"
    cc = [_native._compiler(), "-shared", "-fPIC", str(_source(fresh)), "-o", str(wrong)]
    assert _native.subprocess.run(cc).returncode == 0
    _plant(fresh / "cache", fresh / "planted", lambda _: wrong.read_bytes())
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / "planted"))
    monkeypatch.setattr(full, "_kernels", {})
    monkeypatch.setattr(_native, "_loaded", {})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = kern(x, batch)
    assert [w.category for w in rec] == [RuntimeWarning], [str(w.message) for w in rec]
    torch.testing.assert_close(out, ref(x, batch))


@needs_cc
def test_full_attention_checks_the_kernel_symbols(fresh, monkeypatch):
    """A library under a name that matches its own bytes (as this user could write) but without
    the kernel's functions: FullAttention warns once and computes on the torch path."""
    import warnings

    import torch

    from gtpe.nn import FullAttention
    from gtpe.nn.attention import full

    monkeypatch.setattr(full, "_kernels", {})
    monkeypatch.setattr(_native, "torch_uses_gnu_openmp", lambda: False)  # one build, no -fopenmp
    torch.manual_seed(0)
    kern = FullAttention(8, heads=2, strategy="kernel").double()
    ref = FullAttention(8, heads=2, strategy="pad").double()
    ref.load_state_dict(kern.state_dict())
    x = torch.randn(11, 8, dtype=torch.float64)
    batch = torch.tensor([0] * 4 + [1] * 7)
    kern(x, batch)  # builds the float64 kernel: its name gives the build key
    wrong = fresh / "wrong.so"
    cc = [_native._compiler(), "-shared", "-fPIC", str(_source(fresh)), "-o", str(wrong)]
    assert _native.subprocess.run(cc).returncode == 0
    data = wrong.read_bytes()
    (fresh / "planted").mkdir(mode=0o700)
    (lib,) = _libraries(fresh / "cache")
    name = lib.name[: -len("0" * 64 + lib.suffix)] + hashlib.sha256(data).hexdigest() + lib.suffix
    (fresh / "planted" / name).write_bytes(data)
    (fresh / "planted" / name).chmod(0o700)
    monkeypatch.setenv("GTPE_NATIVE_CACHE", str(fresh / "planted"))
    monkeypatch.setattr(full, "_kernels", {})
    monkeypatch.setattr(_native, "_loaded", {})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = kern(x, batch)
    assert len(rec) == 1 and "lacks the symbol" in str(rec[0].message)
    torch.testing.assert_close(out, ref(x, batch))
    assert full._kernels[torch.float64] is None
