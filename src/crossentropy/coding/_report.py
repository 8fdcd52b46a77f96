"""A file's bits per byte under every measure and coder: what ``crossentropy entropy`` prints."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from typing import Any

import numpy as np

from crossentropy.coding._bytes import as_bytes
from crossentropy.coding._container import MODELS, compress
from crossentropy.coding._prefix import huffman_code

__all__ = ["entropy_report"]


def entropy_report(
    data: bytes, *, progress: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Bits per byte of ``data`` under each measure and coder.

    Args:
        data: the bytes to measure (any bytes-like object, as for :func:`compress`).
        progress: an optional callable ``progress(step_name)`` called before each step.

    Returns:
        A dict: ``size`` (bytes), ``entropy`` (order-0 entropy, bits/byte), ``huffman``
        (a Huffman code of the byte frequencies, bits/byte, code table not counted), one
        key per model of :data:`MODELS` (the container's real size, header
        included, in bits/byte), and ``gzip``, ``bz2``, ``xz`` (level 9, bits/byte);
        then the sizes themselves: ``huffman_bits`` (the Huffman-coded data, in bits),
        and ``<coder>_bytes`` for each model and for gzip, bz2 and xz (in bytes, headers
        included). Bits per byte are undefined for an empty input: every per-byte figure
        is then ``None``, while the sizes are still given (gzip's header alone is 20
        bytes).

    Raises:
        TypeError: ``data`` is not bytes-like.

    Examples:
        >>> report = entropy_report(b"")
        >>> report["order0"], report["gzip_bytes"], report["order0_bytes"] > 0
        (None, 20, True)
    """
    from crossentropy import info

    data = as_bytes(data, "data")
    size = len(data)
    report: dict[str, Any] = {"size": size}
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)

    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    def per_byte(n_bytes: int) -> float | None:
        return 8 * n_bytes / size if size else None

    step("entropy")
    if size:
        p = counts / size
        report["entropy"] = float(info.entropy(p))
        present = {int(b): float(p[b]) for b in np.flatnonzero(counts)}
        code = huffman_code(present)
        report["huffman"] = code.expected_length(present)
        huffman_bits = sum(int(counts[b]) * len(code.codewords[b]) for b in present)
    else:
        report["entropy"] = report["huffman"] = None
        huffman_bits = 0
    sizes: dict[str, int] = {}
    for model in MODELS:
        step(model)
        sizes[model] = len(compress(data, model=model))
    step("gzip")
    sizes["gzip"] = len(gzip.compress(data, compresslevel=9, mtime=0))
    step("bz2")
    sizes["bz2"] = len(bz2.compress(data, compresslevel=9))
    step("xz")
    sizes["xz"] = len(lzma.compress(data, preset=9))
    report.update({name: per_byte(n_bytes) for name, n_bytes in sizes.items()})
    report["huffman_bits"] = huffman_bits
    report.update({f"{name}_bytes": n_bytes for name, n_bytes in sizes.items()})
    return report
