"""The context model compiled: the same probabilities as NumPy's encoder and the same bytes
as the Python decoder, or not used at all."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import coding
from crossentropy._build import CACHE_ENV
from crossentropy.coding import DecodeError, _context
from tests._process import run_fresh

TEXT = pathlib.Path(coding.__file__).with_name("_prefix.py").read_bytes()[:6000]

needs_native = pytest.mark.skipif(
    _context._native() is None,
    reason=f"the compiled context model is unavailable: {_context.native_unavailable_reason()}",
)


# Tables where slots collide (2^16), larger ones, and exact order-2 tables (2^24); the
# default orders, a set reaching 8 bytes, and one order alone.
TABLES = pytest.mark.parametrize("table_bits", [16, 19, 24])
MODELS = pytest.mark.parametrize(
    ("orders", "alphas"),
    [(_context.ORDERS, _context.ALPHAS), ((1, 3, 8), (0.5, 1.0, 3.25)), ((2,), (1.0,))],
)


def _sample(rng) -> bytes:
    """Text, random bytes and a run."""
    return TEXT[:2500] + rng.integers(0, 256, 700, dtype=np.uint8).tobytes() + b"\0" * 300


def _payload(data: bytes, table_bits: int, orders=_context.ORDERS, alphas=_context.ALPHAS):
    """One block's range-coder words, as the encoder writes them."""
    block = np.frombuffer(data, dtype=np.uint8)
    return _context._range_code(*_context.block_probabilities(block, orders, alphas, table_bits))


def _both(words, n, orders, alphas, table_bits, monkeypatch):
    """(compiled, Python) decodes of one block."""
    native = _context._decode_block(words, n, orders, alphas, table_bits)
    monkeypatch.setattr(_context, "NATIVE", "off")
    python = _context._decode_block(words, n, orders, alphas, table_bits)
    monkeypatch.setattr(_context, "NATIVE", "auto")
    return bytes(np.asarray(native, dtype=np.uint8)), bytes(python)


def test_a_machine_with_a_compiler_decodes_compiled():
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here")
    assert _context._native() is not None, _context.native_unavailable_reason()
    assert _context.native_unavailable_reason() is None


@needs_native
@TABLES
@MODELS
def test_compiled_and_python_decoders_agree(table_bits, orders, alphas, rng, monkeypatch):
    data = _sample(rng)
    words = _payload(data, table_bits, orders, alphas)
    native, python = _both(words, len(data), orders, alphas, table_bits, monkeypatch)
    assert native == python == data


@needs_native
@TABLES
@MODELS
def test_compiled_model_gives_numpys_probabilities_bit_for_bit(table_bits, orders, alphas, rng):
    data = _sample(rng)
    block = np.frombuffer(data, dtype=np.uint8)
    bits, p = _context.block_probabilities(block, orders, alphas, table_bits)
    native_bits, native_p = _context._probabilities_native(
        _context._native(), block, orders, alphas, table_bits
    )
    np.testing.assert_array_equal(native_bits, bits)
    np.testing.assert_array_equal(native_p, p)  # exact: the range coder needs every bit


@needs_native
@given(st.binary(max_size=400))
def test_compiled_and_numpy_encoders_write_the_same_container(data):
    native = coding.compress(data, model="context")
    _context.NATIVE = "off"
    try:
        assert coding.compress(data, model="context") == native
    finally:
        _context.NATIVE = "auto"


@needs_native
@given(st.binary(max_size=400))
def test_compiled_decoder_round_trips_any_bytes(data):
    assert coding.decompress(coding.compress(data, model="context")) == data


@needs_native
def test_compiled_decoder_across_blocks_and_reports(monkeypatch):
    monkeypatch.setattr(_context, "BLOCK", 700)
    monkeypatch.setattr(_context, "_REPORT_EVERY", 100)
    blob = coding.compress(TEXT[:2500], model="context")
    seen = []
    assert coding.decompress(blob, progress=lambda done, total: seen.append(done)) == TEXT[:2500]
    assert seen == [*range(0, 2500, 100), 2500]


@needs_native
def test_compiled_decoder_refuses_what_no_encoder_writes(monkeypatch):
    """A range coder's point that no sequence of bits reaches is an error, on both paths."""
    words = np.full(4, 0xFFFFFFFF, dtype=np.uint32)
    table_bits = 16
    # After a run of likely 0s, all-ones data leaves the decoder's point beyond its range.
    with pytest.raises(DecodeError, match=r"corrupt container: .* not ones the model's encoder"):
        _context._decode_block(words, 200, (1,), (0.001,), table_bits)
    monkeypatch.setattr(_context, "NATIVE", "off")
    with pytest.raises(AssertionError):
        _context._decode_block(words, 200, (1,), (0.001,), table_bits)


@needs_native
def test_damaged_payloads_give_the_same_bytes_or_errors_on_both_paths(rng, monkeypatch):
    words = _payload(TEXT[:1500], 17)
    for trial in range(20):
        damaged = words.copy()
        damaged[rng.integers(0, damaged.size)] ^= np.uint32(1 << int(rng.integers(0, 32)))
        results = []
        for native in ("auto", "off"):
            monkeypatch.setattr(_context, "NATIVE", native)
            try:
                out = _context._decode_block(damaged, 1500, _context.ORDERS, _context.ALPHAS, 17)
                results.append(bytes(np.asarray(out, dtype=np.uint8)))
            except (DecodeError, AssertionError):
                results.append("error")
        assert results[0] == results[1], trial


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setattr(_context, "NATIVE", "on")
    with pytest.raises(ValueError, match=r"NATIVE must be 'auto' or 'off'; got 'on'"):
        _context._decode_block(np.zeros(2, dtype=np.uint32), 1, (1,), (1.0,), 16)


@needs_native
def test_the_self_check_catches_a_decoder_that_differs(monkeypatch):
    library = _context._native()
    real = _context._decode_native

    def off_by_one(*args, **kwargs):
        out = real(*args, **kwargs)
        out[len(out) // 2] ^= 1
        return out

    monkeypatch.setattr(_context, "_decode_native", off_by_one)
    with pytest.raises(AssertionError, match="disagrees with constriction's range coder"):
        _context._self_check(library)


@needs_native
def test_the_self_check_catches_a_model_that_differs(monkeypatch):
    library = _context._native()
    real = _context._probabilities_native

    def nudged(*args, **kwargs):
        bits, p = real(*args, **kwargs)
        p[7] = np.nextafter(p[7], 1.0)  # one ulp
        return bits, p

    monkeypatch.setattr(_context, "_probabilities_native", nudged)
    with pytest.raises(AssertionError, match="compiled context model disagrees with NumPy's"):
        _context._self_check(library)


PROBE = """
from crossentropy import coding
from crossentropy.coding import _context
blob = coding.compress(b"abracadabra " * 50, model="context")
print(coding.decompress(blob) == b"abracadabra " * 50)
print(_context._native() is not None)
print(_context.native_unavailable_reason())
"""


def test_without_a_compiler_the_python_decoder_runs_and_says_why(tmp_path):
    out = run_fresh(PROBE, CC="false", **{CACHE_ENV: str(tmp_path)})
    right, compiled, reason = out.splitlines()
    assert (right, compiled) == ("True", "False")
    assert reason.startswith("compiling the context model failed")


@needs_native
def test_the_model_is_compiled_once_into_the_cache(tmp_path, logging_compiler):
    compiler, log = logging_compiler
    cache = tmp_path / "cache"
    for _ in range(2):
        out = run_fresh(PROBE, CC=str(compiler), **{CACHE_ENV: str(cache)})
        assert out.splitlines() == ["True", "True", "None"]
    assert len(list(cache.glob("context-*.so"))) == 1
    compiles = [line for line in log.read_text().splitlines() if "_context.c" in line]
    assert len(compiles) == 1, compiles
    assert "-ffp-contract=off" in compiles[0]  # no fused multiply-add in the blend
