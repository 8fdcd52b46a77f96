"""`coding.entropy_report`, checked against the measures and coders it summarises."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from collections import Counter

import pytest

from crossentropy import coding


def _order0_entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


@pytest.mark.parametrize(
    "data",
    [b"A", b"ABCAADABCA", bytes(range(256)) * 3, b"the seed's toy language " * 40],
)
def test_report_matches_its_sources(data: bytes) -> None:
    steps: list[str] = []
    report = coding.entropy_report(data, progress=steps.append)
    assert report["size"] == len(data)
    assert report["entropy"] == pytest.approx(_order0_entropy(data), abs=1e-12)
    if len(set(data)) == 1:  # one symbol still needs a 1-bit codeword: H = 0, L = 1
        assert report["huffman"] == 1.0
    else:
        assert report["entropy"] <= report["huffman"] < report["entropy"] + 1
    for model in coding.MODELS:
        assert report[model] == len(coding.compress(data, model=model)) * 8 / len(data)
    assert report["gzip"] == len(gzip.compress(data, compresslevel=9, mtime=0)) * 8 / len(data)
    assert report["bz2"] == len(bz2.compress(data, compresslevel=9)) * 8 / len(data)
    assert report["xz"] == len(lzma.compress(data, preset=9)) * 8 / len(data)
    assert steps == ["entropy", *coding.MODELS, "gzip", "bz2", "xz"]
    for coder in [*coding.MODELS, "gzip", "bz2", "xz"]:
        assert report[coder] == report[f"{coder}_bytes"] * 8 / len(data)
    code = coding.huffman_code({b: c / len(data) for b, c in Counter(data).items()})
    assert report["huffman_bits"] == len(code.encode(list(data)))
    assert report["huffman"] == pytest.approx(report["huffman_bits"] / len(data), rel=1e-12)


def test_report_of_empty_input_has_sizes_and_no_bits_per_byte() -> None:
    # Bits per byte of b"" are undefined: they were all 0.0, although each coder spends
    # bytes on it (gzip 20, our containers their headers).
    report = coding.entropy_report(b"")
    assert report["size"] == 0
    per_byte = ["entropy", "huffman", *coding.MODELS, "gzip", "bz2", "xz"]
    assert all(report[key] is None for key in per_byte)
    assert report["huffman_bits"] == 0
    for model in coding.MODELS:
        assert report[f"{model}_bytes"] == len(coding.compress(b"", model=model)) > 0
    assert report["gzip_bytes"] == len(gzip.compress(b"", compresslevel=9, mtime=0)) == 20
    assert report["bz2_bytes"] == len(bz2.compress(b"", compresslevel=9))
    assert report["xz_bytes"] == len(lzma.compress(b"", preset=9))


def test_report_names_data_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"`data` must be bytes or .* got str"):
        coding.entropy_report("text")
    assert coding.entropy_report(bytearray(b"ABCA")) == coding.entropy_report(b"ABCA")
