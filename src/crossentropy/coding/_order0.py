"""The order-0 model: the file's own byte frequencies, stored in the header.

Parameters: a 32-byte bitmap of the byte values present, then each present value's count
as an unsigned LEB128 varint. The coder sees only the present values (a compact
alphabet), so no probability is spent on bytes that never occur.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crossentropy._errors import DecodeError
from crossentropy.coding._arithmetic import (
    _DECODE_CHUNK,
    _bytes_to_words,
    _categorical,
    _most_symbols,
    _quiet,
    _words_to_bytes,
)

__all__ = ["decode", "encode", "frequencies"]


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for value in values.tolist():
        while True:
            byte = value & 0x7F
            value >>= 7
            if value:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


def _read_varints(raw: bytes, count: int) -> list[int]:
    values = []
    value = shift = 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise DecodeError("corrupt order0 parameters: a count is too long")
        if not byte & 0x80:
            values.append(value)
            value = shift = 0
    if shift or len(values) != count:
        raise DecodeError(
            f"corrupt order0 parameters: {len(values)} counts for {count} byte values"
        )
    return values


def frequencies(data: np.ndarray) -> np.ndarray:
    """The count of each byte value 0..255 (int64, shape (256,))."""
    return np.bincount(data, minlength=256).astype(np.int64)


def encode(data: np.ndarray, report: Callable[[int], object] = _quiet) -> tuple[bytes, bytes]:
    """(parameters, payload) for the bytes ``data`` (uint8, shape (N,)); one pass, so
    ``report`` (bytes done) hears nothing before the end, which the caller reports."""
    counts = frequencies(data)
    present = counts > 0
    params = np.packbits(present, bitorder="little").tobytes() + _varints(counts[present])
    if int(present.sum()) <= 1:  # zero or one distinct value: the counts say it all
        return params, b""
    import constriction

    rank = np.cumsum(present) - 1
    probabilities = counts[present] / data.size
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(rank[data].astype(np.int32), _categorical(probabilities))
    return params, _words_to_bytes(encoder.get_compressed())


def decode(
    params: bytes, payload: bytes, n: int, report: Callable[[int], object] = _quiet
) -> np.ndarray:
    """The N bytes coded by :func:`encode` (uint8 array); ``report(bytes done)`` after
    each chunk."""
    if len(params) < 32:
        raise DecodeError("corrupt order0 parameters: shorter than the 32-byte bitmap")
    present = np.unpackbits(np.frombuffer(params[:32], dtype=np.uint8), bitorder="little")
    values = np.flatnonzero(present)
    counts = np.array(_read_varints(params[32:], values.size), dtype=np.int64)
    if n == 0:
        if values.size or payload:
            raise DecodeError("corrupt container: an empty original with order0 data")
        return np.zeros(0, dtype=np.uint8)
    if values.size == 0 or np.any(counts <= 0) or int(counts.sum()) != n:
        raise DecodeError(
            f"corrupt order0 parameters: the counts sum to {int(counts.sum())}, not {n}"
        )
    if values.size == 1:
        if payload:
            raise DecodeError("corrupt container: a one-value original with order0 data")
        return np.full(n, values[0], dtype=np.uint8)
    import constriction

    words = _bytes_to_words(payload)
    # The header's counts and length can be forged consistently (the header checksum is
    # no signature); the payload bounds the length before anything of size N is allocated.
    most = _most_symbols(words.size, values.size)
    if n > most:
        raise DecodeError(
            f"corrupt order0 payload: {len(payload)} bytes cannot hold {n} bytes of "
            f"{values.size} values (at most {most})"
        )
    decoder = constriction.stream.queue.RangeDecoder(words)
    model = _categorical(counts / n)
    out = np.empty(n, dtype=np.uint8)
    for start in range(0, n, _DECODE_CHUNK):  # constriction allocates a chunk at a time
        stop = min(n, start + _DECODE_CHUNK)
        out[start:stop] = values[decoder.decode(model, stop - start)]
        report(stop)
    return out
