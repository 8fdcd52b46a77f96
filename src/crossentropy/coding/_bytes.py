"""The one rule for the byte strings the coders take: any bytes-like object of plain data."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["as_bytes"]


def as_bytes(data: Any, name: str) -> bytes:
    """The bytes of ``data``: bytes, bytearray, memoryview, array.array, a NumPy array or
    anything else with the buffer protocol.

    The bytes are the buffer's raw memory in C order, ``memoryview(data).tobytes()``,
    whatever the size of its items (as ``zlib.compress`` and ``hashlib`` read them): a
    uint8 array gives its values, an int64 array eight bytes per item.

    Only buffers of plain data are accepted: not one of Python objects (a NumPy array of
    dtype object, whose memory holds pointers, meaningless elsewhere and leaking
    addresses), nor of text (a NumPy ``str_`` array, ``array.array("u")``: encode the
    text instead, ``text.encode()``).

    Raises:
        TypeError: ``data`` has no buffer (a str, a list, None), or its items are
            objects or text; the message names ``name``.
    """
    if isinstance(data, bytes):
        return data
    dtype = getattr(data, "dtype", None)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"`{name}` must be bytes or another bytes-like object (bytearray, memoryview, "
            f"a NumPy array); got {type(data).__name__}"
        ) from None
    with view:
        if _holds_objects_or_text(dtype, view.format):
            shown = f"dtype {dtype}" if isinstance(dtype, np.dtype) else f"format {view.format!r}"
            raise TypeError(
                f"`{name}` must be a buffer of plain data (bytes, numbers); got "
                f"{type(data).__name__} of {shown}, whose items are Python objects or "
                "text (encode text first, e.g. `text.encode()`)"
            )
        return view.tobytes()


#: The item codes of a buffer format (PEP 3118) for Python objects ('O') and text
#: ('u', 'w'; NumPy's 'U'), once the field names (":name:") are taken out.
_OBJECTS_OR_TEXT = re.compile(r"[OUuw]")
_FIELD_NAME = re.compile(r":[^:]*:")


def _holds_objects_or_text(dtype: Any, item_format: str) -> bool:
    """Whether a buffer's items are objects or text: by its NumPy ``dtype`` (any field
    included) where it has one, else by its buffer format."""
    if isinstance(dtype, np.dtype):
        return dtype.hasobject or _has_text(dtype)
    return bool(_OBJECTS_OR_TEXT.search(_FIELD_NAME.sub("", item_format)))


def _has_text(dtype: np.dtype) -> bool:
    """Whether a NumPy dtype is, or has a field or subarray of, kind 'U'."""
    if dtype.kind == "U":
        return True
    if dtype.subdtype is not None:
        return _has_text(dtype.subdtype[0])
    return any(_has_text(field[0]) for field in (dtype.fields or {}).values())
