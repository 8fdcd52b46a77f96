"""The fast path for large NumPy inputs: entropy, cross-entropy and divergences along the
last axis.

It equals the plain path (``-sum(where(p > 0, p * log(q), 0), axis=-1)`` after the checks
of :mod:`crossentropy.info._validate`) and differs only in how the memory is walked.
The rows are cut into blocks that fit in the L2 cache; for each block one pass sums the
rows (the check that they add to 1, skipped with ``check=False`` where the caller has
checked already or ``validate=False`` asked for no check), one takes the minimum (no
negative entry), one takes the logarithm into a reused buffer, and one ``vecdot`` forms
the weighted sum of each row (in float32 a product and NumPy's pairwise sum, which keeps
long rows accurate). With ``widen`` (the perplexity of float32 and float16 input) each
block is first copied into a float64 buffer, the logarithm is taken there and the
products are summed pairwise: the plain path's numbers on a float64 copy of the whole
array, to the bit, without the copy (a widened p > 0 is at least 2**-149, so p + tiny is
p). Blocks run on a small thread pool (NumPy releases the GIL inside its loops), so the
work uses every core.

The convention 0 · log 0 = 0 needs no mask pass. In the entropy, a block whose minimum is
0 takes the log of p + tiny (tiny: the smallest normal number). At 0 the term becomes
0 · log(tiny) = 0 exactly; p + tiny rounds to p for every p above 2**53 · tiny (about
2e-292 in float64, 2e-31 in float32), and below that a term p · log p moves by at most
p · log(1 + tiny / p) <= tiny, far under the rounding of the sum. In the cross-entropy,
``log(0) = -inf`` makes a row's sum NaN where p = 0 = q, and only blocks that come out
NaN are mended (their logs zeroed where p = 0, while the block is still in cache).
Negative entries fail the per-block minimum of p, or end as NaN (the log of a negative q);
NaN and inf fail the sum check. Whenever anything is off the function returns ``None``
(the first task to see it stops the others) and the caller's full check raises the
detailed error.

The divergences (:func:`reduce_terms`) hand each block to the compiled kernel of
:mod:`crossentropy.info._native` where it runs (the plain path's terms in float64, in three
vectorised loops per piece of a row: about 7 times faster than NumPy's dozen passes, and
as close to the exact sum, not equal to NumPy's to the bit); else they take their
elementwise terms from the caller, who forms them as on the plain path, one block at a
time: several passes over a block in cache instead of over the whole array in memory,
and the plain path's numbers exactly.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from crossentropy.info import _native
from crossentropy.info._validate import sum_tolerance

# Below this many elements the plain path is as fast and has no thread start-up.
MIN_ELEMENTS = 1 << 18
# Elements per block: three float64 blocks of this size (p, q and the logs) fit in a 1 MiB L2.
BLOCK_ELEMENTS = 1 << 15
# Elements per block of the divergences, whose terms are a dozen NumPy temporaries per
# block: at 128 KiB each they are reused from the thread's heap, where 256 KiB ones were
# returned to the system at each free and faulted in again (about 420,000 page faults and
# 0.6 s of system time per kl_divergence of a (100000, 1000) float64 pair).
TERMS_BLOCK_ELEMENTS = 1 << 14
# Elements per chunk of arrays reduced along an axis other than the last: each chunk is
# copied with that axis moved last (16 MiB of float64).
MOVED_CHUNK_ELEMENTS = 1 << 21
# Scratch buffers up to this many elements stay allocated per thread between calls.
KEEP_ELEMENTS = 1 << 20
# Rows longer than this are not handed to a BLAS dot: OpenBLAS splits a ddot of more than
# 10,000 entries across its own threads, which then fight the pool's (10x slower, and
# seconds on a loaded machine); they are summed pairwise as float32 rows are.
DOT_ELEMENTS = 10_000
# Tasks per thread: a few, so that a thread slowed by other work does not hold up the rest.
TASKS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()
_local = threading.local()


def _threads() -> int:
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(os.cpu_count() or 1, 8))


def _executor() -> ThreadPoolExecutor:
    """The shared pool, made on first use, and made again in a forked child (whose copy of
    the parent's pool has no threads behind it)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="crossentropy")
            _pool_pid = os.getpid()
        return _pool


def eligible(*arrays: object, axis: int, widen: bool = False) -> bool:
    """Whether the blocked path applies: large float32/float64 NumPy arrays of one shape
    (float16 too with ``widen``, whose blocks are computed in float64), reduced along any
    axis, of any strides, through :func:`along`. A float32 array beside a float64 one is
    widened block by block by :func:`reduce_rows` and :func:`reduce_terms`. Beside
    C-contiguous arrays reduced along their last axis, the other of a pair may be a
    C-contiguous single row (shape ``(n,)`` or ``(1, ..., 1, n)``: one distribution
    against many), which every block then broadcasts against."""
    hosts = [a for a in arrays if isinstance(a, np.ndarray)]
    if len(hosts) != len(arrays):
        return False
    full = max(hosts, key=lambda a: a.size)
    dtypes = (np.float64, np.float32, np.float16) if widen else (np.float64, np.float32)
    if full.dtype not in dtypes or full.ndim == 0:
        return False
    if full.size < MIN_ELEMENTS or full.shape[axis] == 0:
        return False
    if not all(a.dtype == full.dtype or a.dtype in (np.float64, np.float32) for a in hosts):
        return False
    if all(a.shape == full.shape for a in hosts):
        return True
    # A single row broadcasts along the last axis of C-contiguous arrays only.
    return axis == full.ndim - 1 and all(
        a.flags.c_contiguous and (a.shape == full.shape or _single_row_of(a, full.shape))
        for a in hosts
    )


def along(arrays: Sequence[np.ndarray], axis: int, reduce: Callable[..., Any]) -> Any:
    """``reduce(*arrays)`` (a reducer of this module over the last axis, or ``None`` for
    input it rejects) for arrays that :func:`eligible` passed, reduced along ``axis``.

    Arrays that are C-contiguous with ``axis`` last go to ``reduce`` as they are: along
    the last axis, or the transpose of a C-contiguous array along axis 0. Others (SciPy's
    default is axis 0, distributions as columns; or a strided view) go in chunks of about
    ``MOVED_CHUNK_ELEMENTS``, each a C-contiguous copy with ``axis`` moved last: memory
    for a chunk, not for the arrays. Returns the results in the shape of the arrays
    without ``axis``, or ``None`` as soon as a chunk is rejected."""
    if axis == max(a.ndim for a in arrays) - 1:  # a single row may have fewer axes
        moved = list(arrays)
    else:
        moved = [np.moveaxis(a, axis, -1) for a in arrays]  # views, axis last
    if all(m.flags.c_contiguous for m in moved):
        return reduce(*moved)
    if moved[0].ndim == 1:  # one strided distribution: copied whole
        return reduce(*(np.ascontiguousarray(m) for m in moved))
    rest, n = moved[0].shape[:-1], moved[0].shape[-1]
    step = max(1, MOVED_CHUNK_ELEMENTS // n)
    result = None
    for index in np.ndindex(*rest[:-1]):
        parts = [m[index] for m in moved]  # (rest[-1], n) views
        for b0 in range(0, rest[-1], step):
            chunk = reduce(*(np.ascontiguousarray(part[b0 : b0 + step]) for part in parts))
            if chunk is None:
                return None
            if result is None:
                result = np.empty(rest, dtype=chunk.dtype)
            result[index][b0 : b0 + step] = chunk
    return result


def _single_row_of(a: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether ``a`` is one row that broadcasts to ``shape`` along its last axis."""
    return 0 < a.ndim <= len(shape) and a.shape[-1] == shape[-1] and a.size == shape[-1]


def _block(x: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of ``x`` (rows, n), or its one row where it has one (broadcast)."""
    return x[r0:r1] if x.shape[0] > 1 else x


def _buffer(size: int, dtype: np.dtype, slot: str = "logs") -> np.ndarray:
    """A per-thread scratch buffer of at least ``size`` elements of ``dtype`` (one per
    ``slot``); kept for the next call up to ``KEEP_ELEMENTS``, made fresh above (very long
    rows are one block each)."""
    if size > KEEP_ELEMENTS:
        return np.empty(size, dtype=dtype)
    key = (slot, np.dtype(dtype).char)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buffer = buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = buffers[key] = np.empty(size, dtype=dtype)
    return buffer


def _logarithm(base: float) -> tuple[Callable[..., np.ndarray], float]:
    """The ufunc to apply and the factor that turns its result into log_base."""
    if base == 2:
        return np.log2, 1.0
    if base == math.e:
        return np.log, 1.0
    return np.log, 1.0 / math.log(base)


def _row_dots(
    dtype: np.dtype, *, pairwise: bool = False
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], object]:
    """The weighted sum of each row: NumPy 2's vecdot (SIMD dot per row) in float64; in
    float32 the products go to a scratch buffer and NumPy's pairwise sum adds them, as a
    running float32 dot drifts on long rows (by 1e-4 relative over 4e6 outcomes).
    ``pairwise`` takes the second way in float64 too: the plain path's sum, to the bit
    (and no BLAS dot, for rows longer than ``DOT_ELEMENTS``)."""
    if dtype == np.float64 and hasattr(np, "vecdot") and not pairwise:
        return lambda a, b, out: np.vecdot(a, b, out=out)
    if dtype == np.float64 and not pairwise:  # pragma: no cover - NumPy < 2
        return lambda a, b, out: np.einsum("ij,ij->i", a, b, out=out)

    def summed(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        shape = np.broadcast_shapes(a.shape, b.shape)  # one of them may be a single row
        size = math.prod(shape)
        products = _buffer(size, a.dtype, "products")[:size].reshape(shape)
        np.multiply(a, b, out=products)
        np.add.reduce(products, axis=1, out=out)

    return summed


def _row_sums(dtype: np.dtype, n: int) -> Callable[[np.ndarray, np.ndarray], object]:
    """Row sums for the check that rows add to 1: a dot with ones in float64 (cheaper than
    ``add.reduce``), NumPy's pairwise sum in float32 (a plain float32 dot could drift by more
    than the tolerance on very long rows) and for rows longer than ``DOT_ELEMENTS``."""
    if dtype == np.float64 and hasattr(np, "vecdot") and n <= DOT_ELEMENTS:
        ones = np.ones(n, dtype=dtype)
        return lambda block, out: np.vecdot(block, ones, out=out)
    return lambda block, out: np.add.reduce(block, axis=1, out=out)


def _sums_off(tolerance: float, *sums: np.ndarray | None) -> bool:
    """Whether a row sum in ``sums`` (arrays, or None: not taken) is farther than
    ``tolerance`` from 1; a NaN or an infinite entry makes its row's sum fail too."""
    with np.errstate(invalid="ignore"):
        return any(s is not None and not np.all(np.abs(s - 1) <= tolerance) for s in sums)


def _run(
    p: np.ndarray, q: np.ndarray | None, base: float, *, check: bool, widen: bool
) -> np.ndarray | None:
    """Sum over each row of ``p * log(q or p)`` with 0 · log 0 = 0, or ``None`` where an
    entry is negative (or NaN) or, with ``check``, a row of ``p`` or ``q`` does not sum to
    1 within its dtype's tolerance: the first task that sees one stops the others.

    The sums and the minimum are taken in the inputs' own dtype, as the full check of
    :mod:`crossentropy.info._validate` takes them. With ``widen`` the rest is computed in
    float64, each block widened into a scratch buffer, and each row summed pairwise: the
    plain path's numbers on a float64 copy of the whole array, with memory for a block.
    """
    n = p.shape[1]
    rows = max(p.shape[0], 0 if q is None else q.shape[0])
    log, _ = _logarithm(base)
    mixed = q is not None and q.dtype != p.dtype
    assert not (check and mixed)  # inputs of two dtypes are checked by the caller
    work = np.dtype(np.float64) if widen or mixed else p.dtype
    widened = work != p.dtype or (q is not None and work != q.dtype)
    tolerance = sum_tolerance(p.dtype)
    row_sums = _row_sums(p.dtype, n)
    singles = _single_rows(rows, check, tolerance, p, q)
    if singles is None:
        return None
    single_p, single_q = singles
    # A single row is widened once, and a single q's logs are taken once.
    if single_p and p.dtype != work:
        p = p.astype(work)
    logs_q = None
    if single_q and q is not None:
        q = q.astype(work, copy=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs_q = log(q)
    acc = np.empty(rows, dtype=work)
    block_rows, task_rows, starts = _schedule(rows, n)
    # Widened blocks are summed pairwise: the numbers of the plain path on a float64 copy
    # (which perplexity took before). So are rows too long for the BLAS dot.
    row_dots = _row_dots(work, pairwise=widened or n > DOT_ELEMENTS)
    rejected = threading.Event()

    def task(index: int) -> None:
        start = starts[index]
        stop = min(start + task_rows, rows)
        scratch = _buffer(block_rows * n, work)
        wide_p = _buffer(block_rows * n, work, "wide p") if p.dtype != work else None
        wide_q = (
            _buffer(block_rows * n, work, "wide q") if q is not None and q.dtype != work else None
        )
        # The task's row sums, checked once at its end (per block would cost more calls).
        sums_p = np.empty(stop - start, dtype=p.dtype) if check and not single_p else None
        sums_q = (
            np.empty(stop - start, dtype=p.dtype)
            if check and q is not None and not single_q
            else None
        )
        tiny = np.finfo(work).tiny
        with np.errstate(divide="ignore", invalid="ignore"):
            for r0 in range(start, stop, block_rows):
                if rejected.is_set():
                    return
                r1 = min(r0 + block_rows, stop)
                size = (r1 - r0) * n
                own_p = _block(p, r0, r1)
                own_q = None if q is None else _block(q, r0, r1)
                # p's passes, then q's: each block is read while it is still in cache.
                if sums_p is not None:
                    row_sums(own_p, sums_p[r0 - start : r1 - start])
                lowest = own_p.min()
                if not lowest >= 0:  # a negative entry, or NaN
                    rejected.set()
                    return
                if sums_q is not None and own_q is not None:
                    row_sums(own_q, sums_q[r0 - start : r1 - start])
                block_p = own_p
                if wide_p is not None:
                    block_p = wide_p[:size].reshape(r1 - r0, n)
                    np.copyto(block_p, own_p)
                logs = scratch[:size].reshape(r1 - r0, n)
                if own_q is None:
                    block_q = block_p
                    if lowest == 0:
                        # log(p + tiny) is log p for every normal p > 0 and finite at 0,
                        # where p * log(tiny) = 0: the convention without a mask.
                        np.add(block_p, tiny, out=logs)
                        block_q = logs
                elif wide_q is not None:
                    block_q = wide_q[:size].reshape(r1 - r0, n)
                    np.copyto(block_q, own_q)
                else:
                    block_q = own_q
                if logs_q is None:
                    log(block_q, out=logs)
                dots = acc[r0:r1]
                row_dots(block_p, logs if logs_q is None else logs_q, dots)
                if q is not None and math.isnan(np.add.reduce(dots)):
                    # 0 * log 0 (or the log of a negative q) made a NaN: mend it in cache.
                    if not block_q.min() >= 0:
                        rejected.set()
                        return
                    if logs_q is not None:
                        np.copyto(logs, logs_q)
                    np.copyto(logs, 0.0, where=block_p == 0)
                    row_dots(block_p, logs, dots)
        if _sums_off(tolerance, sums_p, sums_q):
            rejected.set()

    _map(task, len(starts))
    return None if rejected.is_set() else acc


def _single_rows(
    rows: int, check: bool, tolerance: float, *arrays: np.ndarray | None
) -> list[bool] | None:
    """Which of ``arrays`` (each (rows, n), (1, n) or None) is a single row beside
    ``rows`` rows, which every block then broadcasts against; ``None`` where one of those
    fails its checks, taken once here: a negative or NaN entry, or with ``check`` a sum
    farther than ``tolerance`` from 1 (in its own dtype)."""
    singles = [x is not None and rows > 1 and x.shape[0] == 1 for x in arrays]
    for single, x in zip(singles, arrays, strict=True):
        if not single or x is None:
            continue
        if not x.min() >= 0 or (check and _sums_off(tolerance, np.add.reduce(x, axis=1))):
            return None
    return singles


def _schedule(rows: int, n: int, elements: int = BLOCK_ELEMENTS) -> tuple[int, int, list[int]]:
    """(rows per block, rows per task, the first row of each task) for rows of n entries,
    in blocks of about ``elements`` entries."""
    block_rows = max(1, elements // n)
    blocks = -(-rows // block_rows)
    task_rows = block_rows * max(1, -(-blocks // (TASKS_PER_THREAD * _threads())))
    return block_rows, task_rows, list(range(0, rows, task_rows))


def _map(task: Callable[[int], None], count: int) -> None:
    """Run ``task(0)``, ..., ``task(count - 1)`` on the pool (in this thread if one)."""
    if _threads() > 1 and count > 1:
        list(_executor().map(task, range(count)))
    else:
        for index in range(count):
            task(index)


def reduce_rows(
    p: np.ndarray,
    q: np.ndarray | None,
    *,
    base: float,
    check: bool = True,
    widen: bool = False,
) -> np.ndarray | None:
    """``-sum(p * log_base(q), axis=-1)`` (``q = p`` when ``None``) with 0 · log 0 = 0.

    Returns the result of shape ``p.shape[:-1]``, or ``None`` when some input breaks a
    rule (the caller's full check then raises the error). ``check=False`` skips the check
    that rows sum to 1, for a caller that has checked them already or was told not to
    (``validate=False``: rows off 1 are then reduced as they are); negative and NaN entries
    are still refused. ``widen`` computes in float64 (the result's dtype), one block at a
    time, what a float64 copy of float32 or float16 input would give; so does a float32
    input beside a float64 one (which the caller has checked: ``check`` must be off).
    ``p`` and ``q`` must satisfy :func:`eligible`.
    """
    shape = p.shape[:-1] if q is None else np.broadcast_shapes(p.shape, q.shape)[:-1]
    n = p.shape[-1]
    p2 = p.reshape(-1, n)
    q2 = None if q is None else q.reshape(-1, n)
    acc = _run(p2, q2, base, check=check, widen=widen)
    if acc is None:
        return None
    _, scale = _logarithm(base)
    result = np.subtract(0.0, acc, out=acc)  # 0 - x, so that no -0.0 is returned
    if scale != 1.0:
        result *= scale
    return result.reshape(shape)


def reduce_terms(
    p: np.ndarray,
    q: np.ndarray,
    terms: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    check: bool = True,
    native: tuple[str, float] | None = None,
) -> np.ndarray | None:
    """``sum(terms(p, q), axis=-1)``, formed block by block while each block is in cache.

    ``terms`` maps two blocks of rows to the elementwise terms (it runs on the pool's
    threads, under NumPy's error state ignoring division, invalid and overflow warnings,
    as the plain path does). Each row is summed whole by NumPy's pairwise sum, as the
    plain path's ``sum(axis=-1)`` sums it, so the results are the same. Returns ``None``
    when some entry is negative or NaN or, with ``check``, a row is not finite or does not
    sum to 1 (the caller's full check then raises the error); ``check=False`` skips the
    sums, as :func:`reduce_rows` does. ``p`` and ``q`` must satisfy :func:`eligible`.

    ``native``, a divergence's kind and base (``("kl", base)`` or ``("js", base)``), hands
    each block's terms and their sums to the compiled kernel of
    :mod:`crossentropy.info._native` where it runs: the same terms, as close to the exact
    sum but not NumPy's numbers to the bit, several times faster (``terms`` then serves
    where it does not). The row-sum check stays NumPy's, so a row is refused or taken as
    the plain path's check would.
    """
    if native is not None and not _native.available():
        native = None
    shape = np.broadcast_shapes(p.shape, q.shape)[:-1]
    n = p.shape[-1]
    p2 = p.reshape(-1, n)
    q2 = q.reshape(-1, n)
    rows = max(p2.shape[0], q2.shape[0])
    common = np.result_type(p.dtype, q.dtype)
    assert not (check and p.dtype != q.dtype)  # inputs of two dtypes: checked by the caller
    out = np.empty(rows, dtype=common)
    # The kernel keeps no temporaries: its blocks are as large as the entropy's.
    elements = TERMS_BLOCK_ELEMENTS if native is None else BLOCK_ELEMENTS
    block_rows, task_rows, starts = _schedule(rows, n, elements)
    row_sums = _row_sums(p.dtype, n)
    tolerance = sum_tolerance(p.dtype)
    singles = _single_rows(rows, check, tolerance, p2, q2)
    if singles is None:
        return None
    single_p, single_q = singles
    rejected = threading.Event()

    def task(index: int) -> None:
        start = starts[index]
        stop = min(start + task_rows, rows)
        sums_p = np.empty(stop - start, dtype=p.dtype) if check and not single_p else None
        sums_q = np.empty(stop - start, dtype=p.dtype) if check and not single_q else None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for r0 in range(start, stop, block_rows):
                if rejected.is_set():
                    return
                r1 = min(r0 + block_rows, stop)
                block_p, block_q = _block(p2, r0, r1), _block(q2, r0, r1)
                if sums_p is not None:
                    row_sums(block_p, sums_p[r0 - start : r1 - start])
                if sums_q is not None:
                    row_sums(block_q, sums_q[r0 - start : r1 - start])
                if native is None and not (block_p.min() >= 0 and block_q.min() >= 0):
                    rejected.set()
                    return
                # A float32 block beside a float64 one is widened (a block, not the array).
                block_p, block_q = (
                    block_p.astype(common, copy=False),
                    block_q.astype(common, copy=False),
                )
                if native is None:
                    np.add.reduce(terms(block_p, block_q), axis=1, out=out[r0:r1])
                    continue
                # The kernel's sums are float64; a float32 result is rounded from them.
                in_place = common == np.float64
                sums = out[r0:r1] if in_place else np.empty(r1 - r0)
                kind, base = native
                if not _native.divergence_rows(kind, block_p, block_q, sums, base):
                    rejected.set()  # a negative or NaN entry
                    return
                if not in_place:
                    out[r0:r1] = sums
        if _sums_off(tolerance, sums_p, sums_q):
            rejected.set()

    _map(task, len(starts))
    if rejected.is_set():
        return None
    return out.reshape(shape)
