"""The compiled divergence kernel: the KL and JS terms of a block of rows, summed per row.

On the blocked path (:mod:`crossentropy.info._blocked`) each block of the divergences
took a dozen NumPy passes, one temporary each: the ratio, the masks, ``log`` and
``log1p`` of every entry, the selects. ``_divergences.c`` forms the same terms (its top
comment gives them) in three vectorised loops per piece of a row while the row is in
cache, with glibc's vector ``log``, ``log2`` and ``log1p``. Its numbers are not NumPy's to
the bit (other implementations of the logs, a sum in another order, float64 terms for
float32 input), but they are as close to the exact value: within a few units of the
rounding of the sum of the terms' sizes.

It is compiled at first use by the system's C compiler (``$CC``, else ``cc``) with
``-O3 -march=native`` into ``$CROSSENTROPY_CACHE`` (default ``~/.cache/crossentropy``), as
the package's other helpers are, and checked against an extended-precision reference
before it is used. Without a compiler, or where the check fails, the NumPy terms run
and :func:`unavailable_reason` says why; :data:`NATIVE` set to ``"off"`` asks for them.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import numpy as np

from crossentropy import _build

NATIVE = "auto"
"""Whether the divergences' blocks go to the compiled kernel where it runs (``"auto"``)
or always to NumPy's operations (``"off"``)."""

KINDS = {"kl": 0, "js": 1}
"""The kernel's codes for the two divergences."""

_SOURCE = Path(__file__).with_name("_divergences.c")
# -fno-trapping-math lets the masked divisions be vectorised (their results are selected
# away where unused; no program here reads the floating-point exception flags), and
# -fno-math-errno lets the logs be called on vectors. Neither changes a result's rounding.
_FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-fPIC",
    "-shared",
)
_reason: str | None = None


@functools.cache
def _library() -> ctypes.CDLL | None:
    global _reason
    library, _reason = _build.load_helper(
        _SOURCE,
        _FLAGS,
        _build.WITH_LIBMVEC,
        name="divergences",
        what="the divergence kernel",
        prepare=_prepare,
    )
    return library


def _prepare(library: ctypes.CDLL) -> None:
    library.ce_divergence_rows.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_double,
        ctypes.c_void_p,
    ]
    library.ce_divergence_rows.restype = ctypes.c_int
    _self_check(library)


def available() -> bool:
    """Whether the divergences' blocks go to the compiled kernel (:data:`NATIVE` allows it
    and it runs)."""
    if NATIVE not in ("auto", "off"):
        raise ValueError(f"NATIVE must be 'auto' or 'off'; got {NATIVE!r}")
    return NATIVE == "auto" and _library() is not None


def unavailable_reason() -> str | None:
    """Why the compiled kernel is not in use (None where it is, or not yet looked for)."""
    return _reason


def divergence_rows(kind: str, p: np.ndarray, q: np.ndarray, out: np.ndarray, base: float) -> bool:
    """The sum of each row's terms of divergence ``kind`` into ``out`` (float64, one per
    row): ``"kl"`` in units of ``base``, ``"js"`` in nats and twice the divergence (the
    terms of :func:`crossentropy.info.js_divergence`, which scales them).

    ``p`` and ``q`` are C-contiguous (rows, n) arrays of one dtype, float32 or float64, or
    a single row (1, n) beside the other's rows. Returns False, leaving ``out`` partly
    written, where an entry of either is negative or NaN. Call :func:`available` first.
    """
    library = _library()
    assert library is not None
    return _call(library, kind, p, q, out, base)


def _call(
    library: ctypes.CDLL, kind: str, p: np.ndarray, q: np.ndarray, out: np.ndarray, base: float
) -> bool:
    assert p.dtype == q.dtype
    assert p.dtype in (np.float32, np.float64)
    assert p.flags.c_contiguous
    assert q.flags.c_contiguous
    assert p.shape[1] == q.shape[1]
    rows = max(p.shape[0], q.shape[0])
    assert out.dtype == np.float64
    assert out.shape == (rows,)
    assert out.flags.c_contiguous
    n = p.shape[1]
    status = library.ce_divergence_rows(
        KINDS[kind],
        int(p.dtype == np.float32),
        p.ctypes.data,
        n if p.shape[0] > 1 else 0,
        q.ctypes.data,
        n if q.shape[0] > 1 else 0,
        rows,
        n,
        int(base == 2),
        1.0 / math.log(base),
        out.ctypes.data,
    )
    return status == 0


def _reference(kind: str, p: np.ndarray, q: np.ndarray, base: float) -> tuple[np.ndarray, ...]:
    """The row sums of ``kind``'s terms as :func:`divergence_rows` gives them, and the
    sums of the sizes of the terms (of p's and q's apart for JS, whose two cancel where p
    and q are close), in extended precision (np.longdouble) from the definitions."""
    p, q = (np.broadcast_to(x, np.broadcast_shapes(p.shape, q.shape)) for x in (p, q))
    p, q = p.astype(np.longdouble), q.astype(np.longdouble)

    def log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """log(a / b), through log1p where a and b are close (no digits lost there)."""
        step = (a - b) / b
        return np.where(np.abs(step) < 0.5, np.log1p(step), np.log(a) - np.log(b))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "kl":
            parts = [np.where(p > 0, p * log_ratio(p, q), 0) / np.log(np.longdouble(base))]
        else:
            m = (p + q) / 2
            parts = [np.where(x > 0, x * log_ratio(x, m), 0) for x in (p, q)]
    return sum(part.sum(axis=1) for part in parts), sum(np.abs(part).sum(axis=1) for part in parts)


def _self_check(library: ctypes.CDLL) -> None:
    """Compare the kernel with the extended-precision reference on rows that take every
    branch (p and q far apart, within a relative 1e-9, zeros in p, in q and in both, q
    subnormal beside p so that p / q overflows, one row against many, rows of one entry
    and rows longer than the kernel's blocks), both divergences, both dtypes, bases 2, e
    and 10; raise AssertionError on any difference beyond a few roundings."""
    rng = np.random.default_rng(11)
    for n in (1, 7, 1300):
        p = rng.random((6, n)) ** 3
        q = rng.random((6, n)) ** 3
        q[1] = p[1] * (1 + 1e-9 * rng.standard_normal(n))
        p[2, ::3] = 0.0
        q[3, ::4] = 0.0
        p[4, ::2] = q[4, ::2] = 0.0
        q[5, 0] = 5e-324
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        for dtype in (np.float64, np.float32):
            pd, qd = p.astype(dtype), q.astype(dtype)
            for kind, base in (("kl", 2.0), ("kl", math.e), ("kl", 10.0), ("js", math.e)):
                for p_rows, q_rows in ((pd, qd), (pd[:1], qd)):
                    out = np.empty(max(p_rows.shape[0], q_rows.shape[0]))
                    if not _call(library, kind, p_rows, q_rows, out, base):
                        raise AssertionError("the divergence kernel refused valid rows")
                    exact, size = _reference(kind, p_rows, q_rows, base)
                    exact = exact.astype(np.float64)
                    finite = np.isfinite(exact)
                    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
                        close = np.abs(out - exact) <= 1e-12 * size.astype(np.float64)
                    agree = np.where(finite, close, out == exact)
                    if not agree.all():
                        raise AssertionError(
                            f"the divergence kernel disagrees with the reference ({kind}, "
                            f"{np.dtype(dtype).name}, base {base:g}, {n} entries)"
                        )
    bad = np.full((1, 5), 0.2)
    bad[0, 3] = -0.2
    if _call(library, "kl", bad, np.full((1, 5), 0.2), np.empty(1), 2.0):
        raise AssertionError("the divergence kernel took a negative entry")


__all__ = ["NATIVE", "available", "divergence_rows", "unavailable_reason"]
