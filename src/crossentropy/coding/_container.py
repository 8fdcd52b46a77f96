"""``compress``/``decompress``: a self-describing, checksummed container for coded bytes.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"\\x89CEZ"
    4       1     format version (1)
    5       1     length L of the model name
    6       L     model name, ASCII (one of MODELS)
    6+L     4     length M of the model parameters
    10+L    M     model parameters (model-specific bytes)
    10+L+M  8     original length in bytes
    18+L+M  8     BLAKE2b-64 digest of the original bytes
    26+L+M  8     payload length in bytes
    34+L+M  4     CRC-32 of the payload
    38+L+M  4     CRC-32 of every header byte before this field
    42+L+M  ...   payload (the range coder's output)

The header checksum catches any damage to the header, the payload CRC any damage to the
payload before decoding starts, and the digest of the original bytes checks the decoded
result, so a damaged blob raises :class:`DecodeError` rather than returning wrong bytes.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

import numpy as np

from crossentropy._errors import DecodeError
from crossentropy.coding import _context, _order0
from crossentropy.coding._bytes import as_bytes

__all__ = ["MODELS", "compress", "decompress"]

MAGIC = b"\x89CEZ"
VERSION = 1

_ENCODERS: dict[str, Callable[[np.ndarray, Callable[[int], object]], tuple[bytes, bytes]]] = {
    "order0": _order0.encode,
    "context": _context.encode,
}
_DECODERS: dict[str, Callable[[bytes, bytes, int, Callable[[int], object]], np.ndarray]] = {
    "order0": _order0.decode,
    "context": _context.decode,
}

#: The model names :func:`compress` accepts: ``"order0"`` (static byte frequencies,
#: stored in the header) and ``"context"`` (adaptive: each bit predicted from the previous
#: 1, 2, 4 and 6 bytes, blended; only the model's parameters are stored).
MODELS: tuple[str, ...] = tuple(_ENCODERS)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


class _Report:
    """``progress(done, total)`` for each new count of bytes done, or nothing if None."""

    def __init__(self, progress: Callable[[int, int], object] | None, total: int) -> None:
        if progress is not None and not callable(progress):
            raise TypeError(
                "`progress` must be None or a callable progress(done, total); "
                f"got {type(progress).__name__}"
            )
        self.progress = progress
        self.total = total
        self.done = -1
        self.calling = False  # still True after the callable raised: its error, not ours

    def __call__(self, done: int) -> None:
        if self.progress is not None and done != self.done:
            self.done = done
            self.calling = True
            self.progress(done, self.total)
            self.calling = False


def compress(
    data: bytes, *, model: str = "order0", progress: Callable[[int, int], object] | None = None
) -> bytes:
    """Compress bytes with an entropy model and a range coder, into a checked container.

    Args:
        data: the bytes to compress (any length, the empty string included): bytes or
            any bytes-like object (bytearray, memoryview, array.array, a NumPy array),
            whose raw memory is taken as it is, ``memoryview(data).tobytes()``: a uint8
            array gives its values, a wider array all the bytes of each item (as
            ``zlib.compress`` reads it). Plain data only: a buffer of Python objects
            (a NumPy array of dtype object) or of text (dtype ``str_``) is refused.
        model: one of :data:`MODELS`. ``"order0"`` codes each byte with the file's own
            byte frequencies (stored in the header), reaching the order-0 entropy;
            ``"context"`` predicts each bit from the preceding 1, 2, 4 and 6 bytes
            (counts blended), learning as it goes: smaller, and slower (about 2 MB/s
            each way compiled, where a C compiler is at hand; elsewhere its decoder is a
            Python loop per bit, about 0.1 MB/s).
        progress: None, or a callable ``progress(done, total)`` told the bytes of ``data``
            coded so far and their total: ``(0, total)`` first, ``(total, total)`` last,
            increasing in between (after each 1 MiB block of the context model).

    Returns:
        The container bytes (see the module docstring for the layout).

    Raises:
        TypeError: ``data`` is not bytes-like or holds objects or text, ``model`` is not
            a str, or ``progress`` is not callable.
        ValueError: ``model`` is not one of :data:`MODELS`.

    Examples:
        >>> blob = compress(b"")
        >>> decompress(blob)
        b''
        >>> text = b"to be or not to be, that is the question " * 20
        >>> len(compress(text, model="context")) < len(compress(text)) < len(text)
        True
    """
    raw = as_bytes(data, "data")
    if not isinstance(model, str):
        raise TypeError(
            f"`model` must be a str, one of {list(MODELS)}; got {type(model).__name__}: "
            f"{model!r:.80}"
        )
    if model not in _ENCODERS:
        raise ValueError(f"`model` must be one of {list(MODELS)}; got {model!r:.80}")
    report = _Report(progress, len(raw))
    report(0)
    array = np.frombuffer(raw, dtype=np.uint8)
    params, payload = _ENCODERS[model](array, report)
    report(len(raw))
    name = model.encode("ascii")
    header = b"".join(
        [
            MAGIC,
            struct.pack("<BB", VERSION, len(name)),
            name,
            struct.pack("<I", len(params)),
            params,
            struct.pack("<Q", len(raw)),
            _digest(raw),
            struct.pack("<QI", len(payload), zlib.crc32(payload)),
        ]
    )
    return header + struct.pack("<I", zlib.crc32(header)) + payload


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.at = 0

    def take(self, size: int, what: str) -> bytes:
        if self.at + size > len(self.blob):
            raise DecodeError(
                f"truncated container: {what} needs bytes {self.at}..{self.at + size} but "
                f"the blob has {len(self.blob)}"
            )
        chunk = self.blob[self.at : self.at + size]
        self.at += size
        return chunk


def decompress(blob: bytes, *, progress: Callable[[int, int], object] | None = None) -> bytes:
    """The original bytes of a container made by :func:`compress`, checked.

    Args:
        blob: the container bytes (any bytes-like object, as for :func:`compress`).
        progress: None, or a callable ``progress(done, total)`` told the original bytes
            decoded so far and their total (read from the header, once its checksums
            pass): ``(0, total)`` first, ``(total, total)`` last, increasing in between
            (every 4096 bytes for the context model, which decodes sequentially).

    Returns:
        The original bytes; their length and BLAKE2b digest match the header.

    Raises:
        DecodeError: the blob is not a container (wrong magic), of an unknown version or
            model, truncated or with trailing bytes, or damaged (a checksum fails); the
            message says which.
        TypeError: ``blob`` is not bytes-like, or ``progress`` is not callable.

    Examples:
        >>> decompress(compress(b"hello")) == b"hello"
        True
        >>> decompress(b"PK\\x03\\x04")
        Traceback (most recent call last):
        ...
        crossentropy._errors.DecodeError: not a crossentropy container: the magic is \
b'PK\\x03\\x04', expected b'\\x89CEZ'
    """
    blob = as_bytes(blob, "blob")
    report = _Report(progress, 0)
    reader = _Reader(blob)
    if len(blob) < len(MAGIC):
        raise DecodeError(
            f"not a crossentropy container: {len(blob)} bytes is shorter than the magic"
        )
    magic = reader.take(4, "the magic")
    if magic != MAGIC:
        raise DecodeError(
            f"not a crossentropy container: the magic is {magic!r}, expected {MAGIC!r}"
        )
    version, name_length = struct.unpack("<BB", reader.take(2, "the version"))
    name_raw = reader.take(name_length, "the model name")
    (params_length,) = struct.unpack("<I", reader.take(4, "the parameters' length"))
    params = reader.take(params_length, "the model parameters")
    (length,) = struct.unpack("<Q", reader.take(8, "the original length"))
    digest = reader.take(8, "the checksum of the original")
    payload_length, payload_crc = struct.unpack("<QI", reader.take(12, "the payload length"))
    header_end = reader.at
    (header_crc,) = struct.unpack("<I", reader.take(4, "the header checksum"))
    if zlib.crc32(blob[:header_end]) != header_crc:
        raise DecodeError("corrupt container: the header checksum does not match")
    if version != VERSION:
        raise DecodeError(
            f"unsupported container version {version}; this library reads version {VERSION}"
        )
    name = name_raw.decode("ascii", errors="replace")
    if name not in _DECODERS:
        raise DecodeError(f"unknown model {name!r} in the container; known: {list(MODELS)}")
    payload = blob[reader.at :]
    if len(payload) < payload_length:
        raise DecodeError(
            f"truncated container: the payload has {len(payload)} of {payload_length} bytes"
        )
    if len(payload) > payload_length:
        raise DecodeError(f"trailing data: {len(payload) - payload_length} bytes after the payload")
    if zlib.crc32(payload) != payload_crc:
        raise DecodeError("corrupt container: the payload checksum does not match")
    report.total = length
    report(0)
    try:
        out = _DECODERS[name](params, payload, length, report)
    except DecodeError:
        raise
    except (ValueError, IndexError, RuntimeError, AssertionError, struct.error) as error:
        if report.calling:  # raised by the caller's progress callable: theirs to see
            raise
        raise DecodeError(
            f"corrupt container: the {name} payload does not decode ({error})"
        ) from None
    result = np.asarray(out, dtype=np.uint8).tobytes()
    if len(result) != length or _digest(result) != digest:
        raise DecodeError("corrupt container: the decoded bytes fail the checksum")
    report(length)
    return result
