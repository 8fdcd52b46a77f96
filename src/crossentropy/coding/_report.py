"""A file's bits per byte under every measure and coder: what ``crossentropy entropy`` prints."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from typing import Any

import numpy as np

from crossentropy.coding._container import MODELS, compress
from crossentropy.coding._prefix import huffman_code

__all__ = ["entropy_report"]


def entropy_report(
    data: bytes, *, progress: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Bits per byte of ``data`` under each measure and coder.

    Args:
        data: the bytes to measure.
        progress: an optional callable ``progress(step_name)`` called before each step.

    Returns:
        A dict: ``size`` (bytes), ``entropy`` (order-0 entropy, bits/byte), ``huffman``
        (a Huffman code of the byte frequencies, bits/byte, code table not counted), one
        key per model of :data:`MODELS` (the container's real size, header
        included, in bits/byte), and ``gzip``, ``bz2``, ``xz`` (level 9, bits/byte). An
        empty input gives 0 for every per-byte figure.

    Raises:
        TypeError: ``data`` is not bytes-like.
    """
    from crossentropy import info

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"`data` must be bytes; got {type(data).__name__}")
    data = bytes(data)
    size = len(data)
    report: dict[str, Any] = {"size": size}
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)

    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    def per_byte(n_bytes: int) -> float:
        return 8 * n_bytes / size if size else 0.0

    step("entropy")
    if size:
        p = counts / size
        report["entropy"] = float(info.entropy(p))
        present = {int(b): float(p[b]) for b in np.flatnonzero(counts)}
        code = huffman_code(present)
        report["huffman"] = code.expected_length(present)
    else:
        report["entropy"] = 0.0
        report["huffman"] = 0.0
    for model in MODELS:
        step(model)
        report[model] = per_byte(len(compress(data, model=model)))
    step("gzip")
    report["gzip"] = per_byte(len(gzip.compress(data, compresslevel=9, mtime=0)))
    step("bz2")
    report["bz2"] = per_byte(len(bz2.compress(data, compresslevel=9)))
    step("xz")
    report["xz"] = per_byte(len(lzma.compress(data, preset=9)))
    return report
