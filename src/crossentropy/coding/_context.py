"""The adaptive context model: each bit predicted from the preceding bytes, orders blended.

Each byte is coded as 8 binary decisions, most significant bit first; the decision's
*node* is the bits of the byte seen so far (1, then 2 or 3, ..., up to 255). For each
order j in :data:`ORDERS` the context is the previous j bytes (bytes before the start of
a block count as 0), and the model keeps, per (context, node), how often the bit was 0
or 1 *before* this position. The estimates are blended from low to high order,

    p = 1/2,   then for each order j:   p = (n1_j + a_j p) / (n_j + a_j),

a Dirichlet estimate whose prior is the lower orders' prediction (interpolated
smoothing; a_j from :data:`ALPHAS`), and the final p is the probability of a 1 handed to
the range coder. The model adapts as it goes, so only its parameters are stored.

The counts live in one table per order: exact for contexts of up to 2 bytes, hashed
(Fibonacci hashing, the node's bit level kept in the low bits of the slot) for longer
ones, with at most 2^TABLE_BITS slots (:data:`TABLE_BITS`), so memory is bounded (0.4 GB to
decode a full block) whatever the data. Colliding contexts share counts; on 1 MiB of
Python sources the model spends about 1.58 bits/byte (1.52 with exact, unbounded
tables), against gzip -9's 1.78. A block that coding would not shrink is stored as is.

Where a C compiler is at hand both directions run compiled (``_context.c``, built at first
use into the package's cache by :mod:`crossentropy._build`): the encoder's probabilities
by one sequential pass, and the decoder with a range decoder of the same quantisation as
constriction's. A self-check confirms both before the first use: the probabilities equal
NumPy's bit for bit and the decoder reads back what constriction wrote. On 1 MiB of
Python sources they take 0.5 s to encode and 0.54 s to decode. Elsewhere (or with
:data:`NATIVE` set to ``"off"``) encoding runs vectorised in NumPy, with no loop per
byte: for every order and bit level the slots are combined with the position into one
integer and sorted; within a run of equal slots, the rank is the count before and an
exclusive cumulative sum of the bits is the count of ones before (0.9 s for the same
MiB). Decoding must then run bit by bit in Python over the same tables, since each bit's
context depends on the bits decoded before it (12 s).

All arithmetic on probabilities is +, * and / in float64, in the same order on both
sides, so encoder and decoder compute bit-identical probabilities. Data are coded in
blocks of :data:`BLOCK` bytes, each with a fresh model, which bounds memory.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import struct
import subprocess
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crossentropy._errors import DecodeError
from crossentropy.coding._arithmetic import _bytes_to_words, _quiet, _words_to_bytes

__all__ = [
    "ALPHAS",
    "BLOCK",
    "NATIVE",
    "ORDERS",
    "SLACK_BITS",
    "TABLE_BITS",
    "block_probabilities",
    "decode",
    "encode",
]

#: The context orders blended, in bytes, lowest first.
ORDERS: tuple[int, ...] = (1, 2, 4, 6)
#: The weight of the lower order's prediction in each order's blend.
ALPHAS: tuple[float, ...] = (1.0, 1.0, 1.5, 2.0)
#: Each order's counts live in a table of at most 2^TABLE_BITS slots (fewer for short
#: blocks): contexts of up to 2 bytes are exact, longer ones hashed.
TABLE_BITS = 24
#: Bytes per independently coded block.
BLOCK = 1 << 20

_TIME_BITS = 20  # BLOCK positions per bit level
_MAX_ORDER = 8
_MULTIPLIER = 0x9E3779B97F4A7C15  # odd, about 2^64 / golden ratio: Fibonacci hashing
_NODE_MULTIPLIER = 0x2545F491
_MASK64 = (1 << 64) - 1
_HEAD = struct.Struct("<IBBB")  # block, table bits, extra slot bits, orders
_REPORT_EVERY = 1 << 12  # bytes decoded between two progress reports (about 50 ms)
_CODED, _STORED = 0, 1


#: Whether the model runs compiled: ``"auto"`` (where it builds and passes its self-check;
#: else NumPy's encoder and Python's decoder) or ``"off"`` (NumPy's and Python's).
NATIVE = "auto"

#: Short blocks get tables of about 8N * 2^SLACK_BITS slots (N bytes), fewer than 2^TABLE_BITS.
SLACK_BITS = 3


def _block_table_bits(n: int, table_bits: int, slack_bits: int) -> int:
    """The table size (log2 slots) for a block of N bytes: 8N * 2^slack_bits slots
    rounded up to a power of two, at least 2^16 and at most 2^table_bits."""
    return min(table_bits, max(16, (8 * n).bit_length() + slack_bits))


def _exact(order: int, table_bits: int) -> bool:
    """Whether (context, node) fits the table as it is (no hashing)."""
    return 8 * order + 8 <= table_bits


def _node_spread(order: int, table_bits: int) -> list[int]:
    """What a node XORs into its context's slot base (the node itself when exact).

    Hashed slots keep the node's bit level in their low 3 bits, so that the levels
    never share a slot: the vectorised encoder counts each level on its own.
    """
    if _exact(order, table_bits):
        return list(range(256))
    mask = (1 << (table_bits - 3)) - 1
    return [
        (((node * _NODE_MULTIPLIER) & mask) << 3) | max(node.bit_length() - 1, 0)
        for node in range(256)
    ]


def _context_base(context: int, order: int, table_bits: int) -> int:
    """The slot base of a context: exact (context << 8) or its Fibonacci hash."""
    if _exact(order, table_bits):
        return context << 8
    return (((context * _MULTIPLIER) & _MASK64) >> (64 - (table_bits - 3))) << 3


def _blend_order(
    keys: np.ndarray,
    bits: np.ndarray,
    p: np.ndarray | None,
    alpha: float,
    time: np.ndarray,
    index: np.ndarray,
) -> np.ndarray:
    """Blend one order into ``p``: (alpha p + ones before) / (seen before + alpha).

    ``keys`` (uint64, below 2^44) are the table slots; a position's counts are over
    the earlier positions with the same key; ``p`` is ``None`` for 1/2 everywhere.
    ``time`` is ``arange`` as uint64 and ``index`` the same as int32 (fewer than 2^20
    positions).
    """
    composite = keys << np.uint64(_TIME_BITS)
    composite |= time
    composite.sort()  # by key, then by time
    order = (composite & np.uint64((1 << _TIME_BITS) - 1)).view(np.int64)
    composite >>= np.uint64(_TIME_BITS)
    starts = np.empty(keys.size, dtype=bool)
    starts[0] = True
    np.not_equal(composite[1:], composite[:-1], out=starts[1:])
    del composite
    firsts = np.flatnonzero(starts).astype(np.int32)
    group_start = np.repeat(firsts, np.diff(firsts, append=np.int32(keys.size)))
    sorted_bits = bits[order]
    ones = np.cumsum(sorted_bits, dtype=np.int32)
    ones -= sorted_bits  # ones strictly before, over the whole array ...
    ones -= ones[group_start]  # ... and within the key's run
    seen = index - group_start
    # In sorted order: q = (alpha p + ones) / (seen + alpha); then back to time order.
    q = np.full(keys.size, 0.5) if p is None else p[order]
    q *= alpha
    q += ones
    q /= seen + alpha
    out = np.empty_like(q)
    out[order] = q
    return out


def block_probabilities(
    block: np.ndarray,
    orders: tuple[int, ...] = ORDERS,
    alphas: tuple[float, ...] = ALPHAS,
    table_bits: int = TABLE_BITS,
) -> tuple[np.ndarray, np.ndarray]:
    """The bits of a block and the model's probability that each is 1 (vectorised).

    The work runs per order and per bit level on arrays of N, which keeps the random
    accesses of sorting and scattering far more within the cache than one pass over 8N
    would. Levels can be treated apart because no slot serves two levels (an exact key
    holds the node, a hashed one the level in its low bits); within a level the counts
    are per slot, collisions included, exactly as the sequential decoder keeps them.

    Args:
        block: N bytes (uint8), N <= :data:`BLOCK`.
        orders: context orders in bytes, increasing, each 1..8.
        alphas: the blend weight of each order.
        table_bits: log2 of the slots per order.

    Returns:
        ``(bits, p)``: 8N bits (uint8, most significant first) and 8N probabilities
        (float64, strictly between 0 and 1), in coding order.
    """
    n = block.size
    top = max(orders)
    padded = np.concatenate([np.zeros(top, dtype=np.uint8), block])
    bits = np.unpackbits(block).reshape(n, 8).T.copy()  # (8 levels, N)
    wide = block.astype(np.uint64)
    p: list[np.ndarray | None] = [None] * 8  # None: 1/2 everywhere
    context = np.zeros(n, dtype=np.uint64)
    blend = dict(zip(orders, alphas, strict=True))
    time = np.arange(n, dtype=np.uint64)
    index = np.arange(n, dtype=np.int32)
    for j in range(1, top + 1):
        context |= padded[top - j : top - j + n].astype(np.uint64) << np.uint64(8 * (j - 1))
        if j not in blend:
            continue
        if _exact(j, table_bits):
            base = context << np.uint64(8)
        else:
            base = (context * np.uint64(_MULTIPLIER)) >> np.uint64(64 - (table_bits - 3))
            base <<= np.uint64(3)
        spread = np.array(_node_spread(j, table_bits), dtype=np.uint64)
        for level in range(8):
            node = (wide >> np.uint64(8 - level)) | np.uint64(1 << level)
            keys = spread[node]
            keys ^= base
            p[level] = _blend_order(keys, bits[level], p[level], blend[j], time, index)
    blended = [level for level in p if level is not None]
    if len(blended) != len(p):  # pragma: no cover - orders is never empty
        raise ValueError("`orders` must name at least one order")
    return bits.T.ravel(), np.stack(blended, axis=1).ravel()


def _range_code(bits: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The range coder's words (uint32) for ``bits``, each a 1 with probability ``p``."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(bits.astype(np.int32), constriction.stream.model.Bernoulli(perfect=False), p)
    return encoder.get_compressed()


def encode(data: np.ndarray, report: Callable[[int], object] = _quiet) -> tuple[bytes, bytes]:
    """(parameters, payload) for the bytes ``data`` (uint8, shape (N,)); ``report(bytes
    done)`` after each block.

    Each block is ``method (u8), length (u32), bytes``: the range coder's words, or the
    block stored as it is when coding would not make it smaller (random data).
    """
    params = (
        _HEAD.pack(BLOCK, TABLE_BITS, SLACK_BITS, len(ORDERS))
        + bytes(ORDERS)
        + struct.pack(f"<{len(ALPHAS)}d", *ALPHAS)
    )
    chunks = []
    for start in range(0, data.size, BLOCK):
        block = data[start : start + BLOCK]
        table_bits = _block_table_bits(block.size, TABLE_BITS, SLACK_BITS)
        native = _use_native()
        if native is None:
            bits, p = block_probabilities(block, ORDERS, ALPHAS, table_bits)
        else:
            bits, p = _probabilities_native(native, block, ORDERS, ALPHAS, table_bits)
        words = _words_to_bytes(_range_code(bits, p))
        if len(words) < block.size:
            chunks.append(struct.pack("<BI", _CODED, len(words)) + words)
        else:
            chunks.append(struct.pack("<BI", _STORED, block.size) + block.tobytes())
        report(start + block.size)
    return params, b"".join(chunks)


def _use_native() -> ctypes.CDLL | None:
    """The compiled model and decoder where :data:`NATIVE` allows them and they run."""
    if NATIVE not in ("auto", "off"):
        raise ValueError(f"NATIVE must be 'auto' or 'off'; got {NATIVE!r}")
    return _native() if NATIVE == "auto" else None


def _read_params(params: bytes) -> tuple[int, int, int, tuple[int, ...], tuple[float, ...]]:
    if len(params) < _HEAD.size:
        raise DecodeError("corrupt context parameters: too short")
    block, table_bits, slack_bits, count = _HEAD.unpack(params[: _HEAD.size])
    if len(params) != _HEAD.size + 9 * count or count == 0:
        raise DecodeError(f"corrupt context parameters: {len(params)} bytes for {count} orders")
    orders = tuple(params[_HEAD.size : _HEAD.size + count])
    alphas = struct.unpack(f"<{count}d", params[_HEAD.size + count :])
    if (
        not 0 < block <= 1 << _TIME_BITS
        or not 16 <= table_bits <= 24
        or not 0 <= slack_bits <= 8
        or any(not 1 <= j <= _MAX_ORDER for j in orders)
        or list(orders) != sorted(set(orders))
        or not all(0 < a < float("inf") for a in alphas)
    ):
        raise DecodeError(
            f"corrupt context parameters: block {block}, table bits {table_bits} "
            f"(+{slack_bits}), orders {orders}, alphas {alphas}"
        )
    return block, table_bits, slack_bits, orders, alphas


def decode(
    params: bytes, payload: bytes, n: int, report: Callable[[int], object] = _quiet
) -> np.ndarray:
    """The N bytes coded by :func:`encode` (uint8 array); sequential, bit by bit, with
    ``report(bytes done)`` every few thousand bytes."""
    block, table_bits, slack_bits, orders, alphas = _read_params(params)
    # Each block carries a 5-byte header, so the payload bounds the length before any
    # allocation (a forged length must not ask for terabytes).
    blocks = -(-n // block)
    if blocks > len(payload) // 5:
        raise DecodeError(
            f"corrupt context payload: {len(payload)} bytes cannot hold the {blocks} blocks "
            f"of {n} bytes"
        )
    out = np.empty(n, dtype=np.uint8)
    at = 0
    for start in range(0, n, block):
        stop = min(n, start + block)
        if at + 5 > len(payload):
            raise DecodeError("truncated context payload: a block header is missing")
        method, length = struct.unpack("<BI", payload[at : at + 5])
        at += 5
        if at + length > len(payload):
            raise DecodeError("truncated context payload: a block is cut short")
        chunk = payload[at : at + length]
        at += length
        if method == _STORED and length == stop - start:
            out[start:stop] = np.frombuffer(chunk, dtype=np.uint8)
        elif method == _CODED:

            def progress(done: int, start: int = start) -> object:
                return report(start + done)

            out[start:stop] = _decode_block(
                _bytes_to_words(chunk),
                stop - start,
                orders,
                alphas,
                _block_table_bits(stop - start, table_bits, slack_bits),
                progress,
            )
        else:
            raise DecodeError(f"corrupt context payload: block method {method}, {length} bytes")
        report(stop)
    if at != len(payload):
        raise DecodeError(f"corrupt context payload: {len(payload) - at} bytes left over")
    return out


def _decode_block(
    words: np.ndarray,
    n: int,
    orders: tuple[int, ...],
    alphas: tuple[float, ...],
    table_bits: int,
    report: Callable[[int], object] = _quiet,
) -> list[int] | np.ndarray:
    native = _use_native()
    if native is not None:
        return _decode_native(native, words, n, orders, alphas, table_bits, report)
    import constriction

    bernoulli = constriction.stream.model.Bernoulli
    decode_bit = constriction.stream.queue.RangeDecoder(words).decode
    # Per order: context mask, weight, node spread, and the seen / ones counts per slot.
    models = []
    for j, alpha in zip(orders, alphas, strict=True):
        zeros = bytes(4 << (8 * j + 8 if _exact(j, table_bits) else table_bits))
        models.append(
            (
                j,
                (1 << (8 * j)) - 1,
                alpha,
                _node_spread(j, table_bits),
                array("I", zeros),
                array("I", zeros),
            )
        )
    history_mask = (1 << (8 * max(orders))) - 1
    if len(models) == 4:
        return _decode_four_orders(
            decode_bit, bernoulli, n, models, table_bits, history_mask, report
        )
    history = 0
    out = []
    for i in range(n):
        if not i % _REPORT_EVERY:
            report(i)
        bases = [
            (_context_base(history & mask, j, table_bits), alpha, spread, seen, ones)
            for j, mask, alpha, spread, seen, ones in models
        ]
        node = 1
        while node < 256:
            p = 0.5
            for base, alpha, spread, seen, ones in bases:
                slot = base ^ spread[node]
                p = (ones[slot] + alpha * p) / (seen[slot] + alpha)
            bit = 1 if decode_bit(bernoulli(p, False)) else 0  # (p, perfect=False)
            for base, _, spread, seen, ones in bases:
                slot = base ^ spread[node]
                seen[slot] += 1
                ones[slot] += bit
            node = 2 * node + bit
        byte = node - 256
        out.append(byte)
        history = ((history << 8) | byte) & history_mask
    return out


def _decode_four_orders(
    decode_bit, bernoulli, n, models, table_bits, history_mask, report
) -> list[int]:
    """:func:`_decode_block`'s loop unrolled for four orders (the default :data:`ORDERS`).

    The same arithmetic in the same order, so the same probabilities bit for bit; the
    orders' tables and weights are held in local variables, which CPython reads several
    times faster than it unpacks them from tuples in a loop.
    """
    (j0, m0, a0, p0, n0, o0), (j1, m1, a1, p1, n1, o1) = models[0], models[1]
    (j2, m2, a2, p2, n2, o2), (j3, m3, a3, p3, n3, o3) = models[2], models[3]
    e0, e1, e2, e3 = (_exact(j, table_bits) for j in (j0, j1, j2, j3))
    multiplier, mask64, shift = _MULTIPLIER, _MASK64, 64 - (table_bits - 3)
    history = 0
    out = []
    for i in range(n):
        if not i % _REPORT_EVERY:
            report(i)
        c = history & m0
        b0 = c << 8 if e0 else (((c * multiplier) & mask64) >> shift) << 3
        c = history & m1
        b1 = c << 8 if e1 else (((c * multiplier) & mask64) >> shift) << 3
        c = history & m2
        b2 = c << 8 if e2 else (((c * multiplier) & mask64) >> shift) << 3
        c = history & m3
        b3 = c << 8 if e3 else (((c * multiplier) & mask64) >> shift) << 3
        node = 1
        while node < 256:
            s0 = b0 ^ p0[node]
            s1 = b1 ^ p1[node]
            s2 = b2 ^ p2[node]
            s3 = b3 ^ p3[node]
            p = (o0[s0] + a0 * 0.5) / (n0[s0] + a0)
            p = (o1[s1] + a1 * p) / (n1[s1] + a1)
            p = (o2[s2] + a2 * p) / (n2[s2] + a2)
            p = (o3[s3] + a3 * p) / (n3[s3] + a3)
            bit = 1 if decode_bit(bernoulli(p, False)) else 0
            n0[s0] += 1
            n1[s1] += 1
            n2[s2] += 1
            n3[s3] += 1
            if bit:
                o0[s0] += 1
                o1[s1] += 1
                o2[s2] += 1
                o3[s3] += 1
            node = 2 * node + bit
        byte = node - 256
        out.append(byte)
        history = ((history << 8) | byte) & history_mask
    return out


# ---------------------------------------------------------------------------------------
# The compiled model: the encoder's probabilities and the decoder.


class _Model(ctypes.Structure):
    """``ctx_model`` of ``_context.c``: the model's tables and the range decoder's state."""

    _fields_ = [
        ("words", ctypes.c_void_p),
        ("num_words", ctypes.c_int64),
        ("next_word", ctypes.c_int64),
        ("lower", ctypes.c_uint64),
        ("range", ctypes.c_uint64),
        ("point", ctypes.c_uint64),
        ("num_orders", ctypes.c_int64),
        ("exact", ctypes.c_int64 * _MAX_ORDER),
        ("context_mask", ctypes.c_uint64 * _MAX_ORDER),
        ("alpha", ctypes.c_double * _MAX_ORDER),
        ("spread", ctypes.c_void_p * _MAX_ORDER),
        ("counts", ctypes.c_void_p * _MAX_ORDER),
        ("hash_shift", ctypes.c_int64),
        ("history", ctypes.c_uint64),
        ("history_mask", ctypes.c_uint64),
    ]


def _zeroed_map(size: int) -> mmap.mmap:
    """``size`` zero bytes in an anonymous map, its pages mapped in one call where the
    system can (Linux's ``MAP_POPULATE``)."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: no flags
        return mmap.mmap(-1, size)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, size, flags=flags)


_NATIVE_SOURCE = Path(__file__).with_name("_context.c")
# No fused multiply-add: the blend must round as NumPy's encoder rounds it.
_NATIVE_FLAGS = ("-O2", "-ffp-contract=off", "-fPIC", "-shared")
_native_reason: str | None = None


def _native_state(
    orders: tuple[int, ...], alphas: tuple[float, ...], table_bits: int
) -> tuple[_Model, list[object]]:
    """A fresh model (empty tables) for the compiled code, and what it points into, which
    must stay alive while it is used."""
    state = _Model()
    state.num_orders = len(orders)
    state.hash_shift = 64 - (table_bits - 3)
    keep: list[object] = []
    for k, (j, alpha) in enumerate(zip(orders, alphas, strict=True)):
        exact = _exact(j, table_bits)
        slots = 1 << (8 * j + 8 if exact else table_bits)
        spread = np.array(_node_spread(j, table_bits), dtype=np.uint32)
        # Per slot: seen, ones. An anonymous map, its zero pages mapped in one call where
        # the system can (the random accesses of a block touch every page anyway): to
        # decode 1 MiB of text takes 0.53 s so, 0.64 s faulting the pages in one by one,
        # and 0.71 s in a NumPy array, which asks for huge pages and stalls on their
        # compaction.
        table = _zeroed_map(8 * slots)
        counts = np.frombuffer(table, dtype=np.uint32)
        keep += [spread, counts, table]
        state.exact[k] = exact
        state.context_mask[k] = (1 << (8 * j)) - 1
        state.alpha[k] = alpha
        state.spread[k] = spread.ctypes.data
        state.counts[k] = counts.ctypes.data
    state.history_mask = (1 << (8 * max(orders))) - 1
    return state, keep


def _decode_native(
    library: ctypes.CDLL,
    words: np.ndarray,
    n: int,
    orders: tuple[int, ...],
    alphas: tuple[float, ...],
    table_bits: int,
    report: Callable[[int], object] = _quiet,
) -> np.ndarray:
    """:func:`_decode_block` on the compiled decoder: the same bytes, far sooner."""
    words = np.ascontiguousarray(words, dtype=np.uint32)
    state, keep = _native_state(orders, alphas, table_bits)
    keep.append(words)
    state.words = words.ctypes.data
    state.num_words = words.size
    library.ctx_start(ctypes.byref(state))
    out = np.empty(n, dtype=np.uint8)
    for start in range(0, n, _REPORT_EVERY):
        report(start)
        count = min(_REPORT_EVERY, n - start)
        status = library.ctx_decode(ctypes.byref(state), out[start:].ctypes.data, count)
        if status != 0:
            # Worded as the container words the Python decoder's failure.
            raise DecodeError(
                "corrupt container: the context payload does not decode (the coded bits "
                "are not ones the model's encoder writes)"
            )
    return out


def _probabilities_native(
    library: ctypes.CDLL,
    block: np.ndarray,
    orders: tuple[int, ...],
    alphas: tuple[float, ...],
    table_bits: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`block_probabilities` on the compiled model: the same numbers, bit for bit."""
    block = np.ascontiguousarray(block, dtype=np.uint8)
    state, keep = _native_state(orders, alphas, table_bits)
    p = np.empty(8 * block.size)
    library.ctx_probabilities(ctypes.byref(state), block.ctypes.data, block.size, p.ctypes.data)
    del keep  # the tables, no longer needed
    return np.unpackbits(block), p


def _self_check(library: ctypes.CDLL) -> None:
    """Compare the compiled model's probabilities with NumPy's, and decode what
    constriction's encoder wrote from them, at table sizes where slots collide and where
    they do not; raise AssertionError on any difference."""
    rng = np.random.default_rng(5)
    vocabulary = [b"entropy", b"cross", b"bits", b"code", b"model", b"the", b"of", b" ", b"\n"]
    text = b" ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), 3000))
    data = np.frombuffer(text + rng.bytes(500) + text[:4000], dtype=np.uint8)
    for table_bits in (16, _block_table_bits(data.size, TABLE_BITS, SLACK_BITS)):
        bits, p = block_probabilities(data, ORDERS, ALPHAS, table_bits)
        native_bits, native_p = _probabilities_native(library, data, ORDERS, ALPHAS, table_bits)
        if not (np.array_equal(native_bits, bits) and np.array_equal(native_p, p)):
            raise AssertionError("the compiled context model disagrees with NumPy's")
        decoded = _decode_native(
            library, _range_code(bits, p), data.size, ORDERS, ALPHAS, table_bits
        )
        if not np.array_equal(decoded, data):
            raise AssertionError(
                "the compiled context decoder disagrees with constriction's range coder"
            )


@functools.cache
def _native() -> ctypes.CDLL | None:
    """The compiled model, or None where it cannot run (:func:`native_unavailable_reason`)."""
    global _native_reason
    from crossentropy import _build

    try:
        path = _build.compile_helper(
            _NATIVE_SOURCE, _NATIVE_FLAGS, name="context", what="the context model"
        )
        library = ctypes.CDLL(str(path))
        library.ctx_start.argtypes = [ctypes.POINTER(_Model)]
        library.ctx_start.restype = None
        library.ctx_decode.argtypes = [ctypes.POINTER(_Model), ctypes.c_void_p, ctypes.c_int64]
        library.ctx_decode.restype = ctypes.c_int
        library.ctx_probabilities.argtypes = [
            ctypes.POINTER(_Model),
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        library.ctx_probabilities.restype = None
        _self_check(library)
    except (OSError, AssertionError, DecodeError, subprocess.SubprocessError) as error:
        _native_reason = str(error) or type(error).__name__
        return None
    _native_reason = None
    return library


def native_unavailable_reason() -> str | None:
    """Why the compiled model is not in use (None where it is, or not yet looked for)."""
    return _native_reason
