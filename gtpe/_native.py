"""Small C kernels compiled on first use, cached per machine, loaded with :mod:`ctypes`.

gtpe ships plain C sources (no torch headers, no Python API) next to the modules that use them.
:func:`load` compiles one with the system C compiler (``$CC``, else ``cc``) into
``$GTPE_NATIVE_CACHE`` (default ``~/.cache/gtpe/native``), keyed by the source, the flags,
the compiler and the CPU, so a cache shared between machines never runs code built for another
CPU.  Compiling takes about a second and happens once; the library is written with
:func:`gtpe._atomic.atomic_write`, so concurrent processes (DDP ranks, test workers) are safe.

When there is no compiler or the build fails, :func:`load` returns ``None`` and warns once;
callers then use their pure-torch path, which computes the same result more slowly.  Set
``GTPE_NATIVE=0`` to never compile or load anything.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from gtpe._atomic import STALE_SECONDS, atomic_write, remove_stale_temporaries

__all__ = ["enabled", "load", "torch_uses_gnu_openmp"]

# -fopenmp-simd: only the `#pragma omp simd` hints (no OpenMP runtime, no threads).
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp-simd",
          "-ffp-contract=fast"]
_lock = threading.Lock()
_loaded: dict[tuple, ctypes.CDLL | None] = {}


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


def load(source: Path, defines: dict[str, str] | None = None, openmp: bool = False) -> ctypes.CDLL | None:
    """Compile ``source`` (a C file) with ``-D`` ``defines`` and load it; ``None`` when disabled
    or when it cannot be built (a :class:`RuntimeWarning` says why, once per source/defines).
    ``openmp=True``: build with ``-fopenmp`` where :func:`torch_uses_gnu_openmp` (else, or if
    that build fails, without: the ``omp`` pragmas are then ignored)."""
    if not enabled():
        return None
    defines = dict(defines or {})
    openmp = openmp and torch_uses_gnu_openmp()
    key = (str(source), tuple(sorted(defines.items())), os.environ.get("CC"), openmp)
    with _lock:
        if key not in _loaded:
            lib = _build_and_load(Path(source), defines, ["-fopenmp"], quiet=True) if openmp else None
            _loaded[key] = lib or _build_and_load(Path(source), defines, [])
        return _loaded[key]


def _build_and_load(
    source: Path, defines: dict[str, str], extra: list[str], quiet: bool = False
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
    cache = _cache_dir()
    lib = cache / f"{source.stem}-{h.hexdigest()[:16]}{'.dylib' if sys.platform == 'darwin' else '.so'}"
    if not lib.exists():
        try:
            with tempfile.TemporaryDirectory(prefix="gtpe-native-") as build:
                out = Path(build) / lib.name
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
                atomic_write(lib, lambda f: f.write(out.read_bytes()))
            remove_stale_temporaries(cache, older_than=STALE_SECONDS)  # of killed builds
        except (OSError, subprocess.SubprocessError) as exc:
            warn(f"building {what} with {cc} into {cache} failed: {exc}")
            return None
    try:
        return ctypes.CDLL(str(lib))
    except OSError as exc:
        warn(f"cannot load {lib}: {exc}")
        return None


def _warn(msg: str) -> None:
    warnings.warn(
        f"gtpe: {msg}; using the (slower) pure-torch path instead. Set GTPE_NATIVE=0 to "
        "silence this.",
        RuntimeWarning,
        stacklevel=4,
    )
