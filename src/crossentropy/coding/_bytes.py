"""The one rule for the byte strings the coders take: any bytes-like object."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bytes"]


def as_bytes(data: Any, name: str) -> bytes:
    """The bytes of ``data``: bytes, bytearray, memoryview, array.array, a NumPy array or
    anything else with the buffer protocol.

    The bytes are the buffer's raw memory in C order, ``memoryview(data).tobytes()``,
    whatever the size of its items (as ``zlib.compress`` and ``hashlib`` read them): a
    uint8 array gives its values, an int64 array eight bytes per item.

    Raises:
        TypeError: ``data`` has no buffer (a str, a list, None); the message names ``name``.
    """
    if isinstance(data, bytes):
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"`{name}` must be bytes or another bytes-like object (bytearray, memoryview, "
            f"a NumPy array); got {type(data).__name__}"
        ) from None
    with view:
        return view.tobytes()
