"""Compiling the package's small C helpers at first use, into a cache shared by processes.

Four parts of the package run a C helper where a compiler is at hand, and plain Python,
NumPy or torch where not: the fused linear head's CPU engine (``losses/_native.c``), the
loss's row kernel (``losses/_rows.c``), the divergences' kernel (``info/_divergences.c``)
and the context model's decoder (``coding/_context.c``). Each is compiled by the system's
C compiler (``$CC``, else ``cc``, else ``gcc``) into ``$CROSSENTROPY_CACHE`` (default
``~/.cache/crossentropy``, else a folder in the system's temporary folder where that
cannot be written), under a name keyed by its source, the compiler's version, the flags
and the CPU's features, so that a second process finds it there.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

CACHE_ENV = "CROSSENTROPY_CACHE"
"""Environment variable naming the folder for the compiled helpers."""

WITH_LIBMVEC: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("-DCE_LIBMVEC",), ("-lmvec", "-lm")),
    ((), ("-lm",)),
)
"""Attempts for a helper whose loops call the math library: with glibc's vector
functions (libmvec, declared by the helper under ``CE_LIBMVEC``) first, plain after."""


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _preferred_cache() -> Path:
    return Path(
        os.environ.get(CACHE_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "crossentropy")
    ).expanduser()


def _writable_cache(cache: Path) -> Path:
    """``cache``, made if need be, where it can be written; else a folder of the user's
    in the system's temporary folder."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache)  # noqa: SIM115 (closed just below)
        probe.close()
    except OSError:
        # A cache folder that cannot be written (a read-only home): the system's temporary
        # folder, one per user, so that the helpers still run.
        cache = Path(tempfile.gettempdir(), f"crossentropy-{os.getuid()}")
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def compile_helper(
    source: Path,
    flags: Sequence[str],
    attempts: Sequence[tuple[Sequence[str], Sequence[str]]] = (((), ()),),
    *,
    name: str,
    what: str = "the helper",
) -> Path:
    """The shared library built from ``source``: from the cache, else compiled into it.

    Args:
        source: the C file.
        flags: the compiler's flags (``-shared`` and ``-fPIC`` among them).
        attempts: ``(extra flags, libraries)`` tried in turn until one compiles (a faster
            variant first, a plainer one after).
        name: the file's prefix in the cache (``<name>-<key>.so``).
        what: the helper's name in the error raised when no attempt compiles.

    Raises:
        OSError: no compiler, or every attempt failed (the compilers' last words given).
    """
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found (set $CC)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (version, " ".join(flags), _cpu_features()))
        + b"\0"
        + source.read_bytes()
    ).hexdigest()[:16]
    file_name = f"{name}-{key}.so"
    preferred = _preferred_cache()
    if (preferred / file_name).is_file():  # found even where the folder is read-only
        return preferred / file_name
    cache = _writable_cache(preferred)
    target = cache / file_name
    if target.is_file():
        return target
    failures = []
    for extra, libraries in attempts:
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".so", delete=False) as handle:
            partial = Path(handle.name)
        command = [compiler, *flags, *extra, str(source), "-o", str(partial), *libraries]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
            if done.returncode == 0:
                os.replace(partial, target)  # atomic: concurrent first uses agree
                return target
        finally:
            partial.unlink(missing_ok=True)  # gone already where it became the target
        failures.append(done.stderr.strip()[-500:])
    raise OSError(f"compiling {what} failed: " + " | ".join(failures))


def load_helper(
    source: Path,
    flags: Sequence[str],
    attempts: Sequence[tuple[Sequence[str], Sequence[str]]],
    *,
    name: str,
    what: str,
    prepare: Callable[[ctypes.CDLL], None],
) -> tuple[ctypes.CDLL | None, str | None]:
    """``(library, None)``: the helper compiled (:func:`compile_helper`), loaded, and
    readied by ``prepare`` (which declares its functions' types and checks its results,
    raising AssertionError on a wrong one); or ``(None, why)`` where any of that fails, so
    that the caller runs its plain path and can say why."""
    try:
        path = compile_helper(source, flags, attempts, name=name, what=what)
        library = ctypes.CDLL(str(path))
        prepare(library)
    except (OSError, AssertionError, subprocess.SubprocessError) as error:
        return None, str(error) or type(error).__name__
    return library, None
