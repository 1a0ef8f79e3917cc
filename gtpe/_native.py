"""Small C kernels compiled on first use, cached per machine, loaded with :mod:`ctypes`.

gtpe ships plain C sources (no torch headers, no Python API) next to the modules that use them.
:func:`load` compiles one with the system C compiler (``$CC``, else ``cc``) into
``$GTPE_NATIVE_CACHE`` (default ``$XDG_CACHE_HOME/gtpe/native``, i.e. ``~/.cache/gtpe/native``),
keyed by the source, the flags, the compiler and the CPU, so a cache shared between machines
never runs code built for another CPU.  Compiling takes about a second and happens once.

Loading a library runs its code, so nothing is loaded from the cache unchecked:

* The folder is created with mode ``0700``.  The default folder, if ours with other
  permissions (older gtpe versions made it ``0755``), is set to ``0700``.  A folder named by
  ``$GTPE_NATIVE_CACHE`` is never changed: if it is open to group or others (a team's shared
  cache), the libraries go into a private subfolder ``gtpe-native-<uid>`` (``0700``) inside it.
  A folder owned by another user, or that is not a folder, is refused: nothing is built or
  loaded there.  Parent folders are not checked.
* A library that is not a regular file (e.g. a symbolic link), is owned by another user or is
  writable by group or others is refused: never loaded, nor removed.
* A library is named ``<source>-<build key>-<sha256 of its bytes>.so`` and written with
  :func:`gtpe._atomic.atomic_write`, so processes that build at once (DDP ranks) each leave a
  complete file under the hash of its own bytes.  The bytes are hashed again before
  ``dlopen``; a library that no longer matches its name (truncated, damaged, modified) is
  removed, with a warning, and built again once.

These checks keep out other users' files and damaged ones; they cannot tell a library that
the same user wrote under a matching name from one built by gtpe.

When there is no compiler, the build fails, a check refuses a file, ``dlopen`` fails or a
symbol the caller needs is missing, :func:`load` returns ``None`` with one
:class:`RuntimeWarning` (a refused folder: one per process); callers then use their pure-torch
path, which computes the same result more slowly.  Set ``GTPE_NATIVE=0`` to never compile or
load anything.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from gtpe._atomic import STALE_SECONDS, atomic_write, remove_stale_temporaries

__all__ = ["enabled", "load", "torch_uses_gnu_openmp"]

# -fopenmp-simd: only the `#pragma omp simd` hints (no OpenMP runtime, no threads).
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp-simd",
          "-ffp-contract=fast"]
_lock = threading.Lock()
_loaded: dict[tuple, ctypes.CDLL | None] = {}
_refused_folders: set[str] = set()  # cache folders already warned about


def enabled() -> bool:
    """False when ``GTPE_NATIVE=0`` (or ``false``/``no``/``off``)."""
    return os.environ.get("GTPE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    env = os.environ.get("GTPE_NATIVE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gtpe" / "native"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    sig = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    sig.append(line.strip())
                if len(sig) >= 5:
                    break
    except OSError:
        sig.append(platform.processor())
    return "\n".join(sig)


@functools.lru_cache(maxsize=None)
def _toolchain(cc: str) -> str:
    """What a build depends on besides source and flags: the compiler (path and version line),
    the CPU and the platform.  Asked once per process and compiler."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    return "\n".join([cc, *version.stdout.splitlines()[:1], _cpu_signature(), sys.platform])


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def torch_uses_gnu_openmp() -> bool:
    """True when GNU OpenMP (``libgomp.so.1``, torch's parallel backend in the PyPI wheels) is
    loaded in this process.  A library built with ``-fopenmp`` then binds to that same runtime
    (the dynamic loader reuses a loaded soname), so it shares torch's threads and
    ``torch.set_num_threads`` instead of starting a second, competing pool."""
    try:
        with open("/proc/self/maps") as f:  # (other packages' renamed copies do not count)
            return any(line.rstrip().endswith("/libgomp.so.1") for line in f)
    except OSError:  # not Linux
        return False


def load(
    source: Path,
    defines: dict[str, str] | None = None,
    openmp: bool = False,
    symbols: Sequence[str] = (),
) -> ctypes.CDLL | None:
    """Compile ``source`` (a C file) with ``-D`` ``defines`` and load it; ``None`` when disabled
    or when it cannot be built, checked or loaded (a :class:`RuntimeWarning` says why, once per
    source/defines), or when it lacks one of ``symbols`` (the functions the caller will use).
    ``openmp=True``: build with ``-fopenmp`` where :func:`torch_uses_gnu_openmp` (else, or if
    that build fails, without: the ``omp`` pragmas are then ignored)."""
    if not enabled():
        return None
    defines = dict(defines or {})
    openmp = openmp and torch_uses_gnu_openmp()
    key = (str(source), tuple(sorted(defines.items())), os.environ.get("CC"), openmp, tuple(symbols))
    with _lock:
        if key not in _loaded:
            try:
                lib = None
                if openmp:
                    lib = _build_and_load(Path(source), defines, ["-fopenmp"], symbols, quiet=True)
                _loaded[key] = lib or _build_and_load(Path(source), defines, [], symbols)
            except _Refused:  # (warned): no second build beside a library that was refused
                _loaded[key] = None
        return _loaded[key]


def _own_folder(path: Path) -> str | None:
    """Create ``path`` with mode ``0700`` if missing; what is wrong with it, or ``None`` when it
    is a folder owned by this user."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.getuid():
        return f"is owned by another user (uid {st.st_uid}; you are uid {os.getuid()})"
    return None


class _Refused(Exception):
    """The cache folder or a library in it fails the ownership/permission checks."""


def _private_cache() -> Path:
    """The cache folder, created ``0700`` (see the module docstring for a folder open to
    others).  Raises :class:`_Refused` (after one warning per folder and process) when it is
    owned by another user or is not a folder."""
    cache = _cache_dir()
    chosen = bool(os.environ.get("GTPE_NATIVE_CACHE"))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        problem = _own_folder(cache)
        if problem is None:
            if stat.S_IMODE(os.stat(cache).st_mode) & 0o077 == 0:
                return cache
            if not chosen:  # gtpe's own default folder: make it private
                os.chmod(cache, 0o700)
                return cache
            cache = cache / f"gtpe-native-{os.getuid()}"  # the user's folder: never changed
            problem = _own_folder(cache)
            if problem is None and stat.S_IMODE(os.stat(cache).st_mode) & 0o077:
                problem = f"is open to group or others (mode {stat.S_IMODE(os.stat(cache).st_mode):#o})"
            if problem is None:
                return cache
    except OSError as exc:
        problem = f"cannot be created or used ({exc})"
    if str(cache) not in _refused_folders:
        _refused_folders.add(str(cache))
        _warn(
            f"the kernel cache {cache} {problem}, so no kernel is built or loaded from it "
            "(set GTPE_NATIVE_CACHE to a folder of your own)"
        )
    raise _Refused(str(cache))


def _verified(path: Path, digest: str) -> bool:
    """Whether the bytes of the library ``path`` have the sha256 ``digest``.  Raises
    :class:`_Refused` (after a warning) when ``path`` is not a regular file owned by this user
    and unwritable by group and others: such a file is never read, loaded or removed."""
    st = os.lstat(path)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    else:
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.getuid():
                problem = f"is owned by another user (uid {st.st_uid}; you are uid {os.getuid()})"
            elif st.st_mode & 0o022:
                problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):#o})"
            else:
                return hashlib.sha256(f.read()).hexdigest() == digest
    _warn(f"refusing to load {path}, which {problem} (remove it)")
    raise _Refused(str(path))


def _cached(cache: Path, name: re.Pattern) -> Path | None:
    """A library in ``cache`` whose name ``name`` matches and whose content has the sha256 in
    its name.  Mismatched ones (changed after their build) are removed with a warning."""
    for entry in sorted(os.listdir(cache)):
        match = name.fullmatch(entry)
        if match is None:
            continue
        lib = cache / entry
        try:
            if _verified(lib, match[1]):
                return lib
            _warn(
                f"{lib} does not match the sha256 in its name (changed after it was built); "
                "removed it, building it again",
                fallback=False,
            )
            lib.unlink()
        except FileNotFoundError:  # (removed by another process meanwhile)
            continue
    return None


def _build_and_load(
    source: Path, defines: dict[str, str], extra: list[str], symbols: Sequence[str], quiet: bool = False
) -> ctypes.CDLL | None:
    warn = (lambda msg: None) if quiet else _warn
    cc = _compiler()
    what = f"{source.name} ({' '.join(f'{k}={v}' for k, v in sorted(defines.items()))})"
    if cc is None:
        warn(f"no C compiler found (set CC or install gcc) to build {what}")
        return None
    flags = _FLAGS + extra + [f"-D{k}={v}" for k, v in sorted(defines.items())]
    try:
        toolchain = _toolchain(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        warn(f"cannot run the C compiler {cc}: {exc}")
        return None
    h = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), toolchain.encode()):
        h.update(part)
        h.update(b"\0")
    cache = _private_cache()
    # <stem>-<build key>-<sha256 of the library><ext>: one name per content, so processes that
    # build at once (DDP ranks) each write a complete file under its own hash, never a mix
    ext = ".dylib" if sys.platform == "darwin" else ".so"
    prefix = f"{source.stem}-{h.hexdigest()[:16]}-"
    try:
        lib = _cached(cache, re.compile(re.escape(prefix) + "([0-9a-f]{64})" + re.escape(ext)))
        if lib is None:
            with tempfile.TemporaryDirectory(prefix="gtpe-native-") as build:
                out = Path(build) / f"{source.stem}{ext}"
                proc = subprocess.run(
                    [cc, *flags, str(source), "-o", str(out), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                    warn(f"building {what} with {cc} failed:\n" + "\n".join(tail))
                    return None
                data = out.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            lib = cache / f"{prefix}{digest}{ext}"
            atomic_write(lib, lambda f: (os.fchmod(f.fileno(), 0o700), f.write(data)))
            remove_stale_temporaries(cache, older_than=STALE_SECONDS)  # of killed builds
            if not _verified(lib, digest):
                _warn(f"{lib} changed between its build and its loading")
                return None
    except (OSError, subprocess.SubprocessError) as exc:
        warn(f"building {what} with {cc} into {cache} failed: {exc}")
        return None
    try:
        handle = ctypes.CDLL(str(lib))
    except Exception as exc:  # OSError from dlopen, or anything else: the caller's torch path
        warn(f"cannot load {lib}: {exc}")
        return None
    missing = [symbol for symbol in symbols if not hasattr(handle, symbol)]
    if missing:
        warn(f"{lib} lacks the symbol {missing[0]!r}")
        return None
    return handle


def _warn(msg: str, fallback: bool = True) -> None:
    tail = "; using the (slower) pure-torch path instead" if fallback else ""
    warnings.warn(f"gtpe: {msg}{tail}. Set GTPE_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=4)
