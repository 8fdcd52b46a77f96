"""compress/decompress: round trips, sizes against the entropy, and every kind of damage."""

from __future__ import annotations

import array
import gzip
import math
import pathlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy import coding
from crossentropy.coding import DecodeError

TEXT = pathlib.Path(coding.__file__).with_name("_prefix.py").read_bytes()[:6000]


def samples(rng) -> dict[str, bytes]:
    return {
        "empty": b"",
        "one byte": b"\x00",
        "one byte ff": b"\xff",
        "repeated": b"a" * 1000,
        "all 256 values": bytes(range(256)),
        "random": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "text": TEXT,
        "skewed": rng.choice(4, size=3000, p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8).tobytes(),
    }


def order0_entropy_bits(data: bytes) -> float:
    """n · H(byte frequencies), as the formula reads."""
    n = len(data)
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    return -sum(c * math.log2(c / n) for c in counts if c)


def test_models_listed():
    assert coding.MODELS == ("order0", "context")


@pytest.mark.parametrize("model", ["order0", "context"])
def test_round_trip_named_inputs(model, rng):
    for name, data in samples(rng).items():
        blob = coding.compress(data, model=model)
        assert coding.decompress(blob) == data, name
        assert blob[:4] == b"\x89CEZ"


@settings(max_examples=40)
@given(st.binary(max_size=300), st.sampled_from(["order0", "context"]))
def test_round_trip_any_bytes(data, model):
    assert coding.decompress(coding.compress(data, model=model)) == data


def test_accepts_bytearray_and_memoryview():
    data = bytearray(b"hello hello")
    assert coding.decompress(coding.compress(data)) == bytes(data)
    assert coding.decompress(memoryview(coding.compress(memoryview(data)))) == bytes(data)


def test_order0_payload_reaches_entropy(rng):
    data = rng.choice(256, size=200_000, p=rng.dirichlet(np.full(256, 0.3))).astype(np.uint8)
    data = data.tobytes()
    blob = coding.compress(data, model="order0")
    ideal = order0_entropy_bits(data) / 8
    # The header stores the counts; bound the whole container and its payload.
    payload = len(blob) - _header_size(blob)
    assert ideal <= payload <= ideal * 1.001 + 64
    assert len(blob) <= ideal * 1.001 + 64 + 600


def test_context_model_learns_text():
    data = TEXT * 2
    context = len(coding.compress(data, model="context"))
    order0 = len(coding.compress(data, model="order0"))
    assert context < order0
    # The repeated half costs the context model far less than the first.
    first = len(coding.compress(TEXT, model="context"))
    assert context - first < 0.25 * first


def test_context_model_is_vectorised_against_sequential_decoder(rng):
    # The decoder recomputes every probability sequentially; a mismatch of a single
    # float would break the round trip on a long, varied input.
    data = (TEXT + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()) * 2
    assert coding.decompress(coding.compress(data, model="context")) == data


@pytest.mark.parametrize("table_bits", [16, 24])
def test_context_probabilities_match_a_plain_loop(table_bits):
    """The vectorised counts equal counting slot by slot in time order, collisions and all."""
    from crossentropy.coding import _context

    block = np.frombuffer(TEXT[:1500], dtype=np.uint8)
    bits, p = _context.block_probabilities(block, _context.ORDERS, _context.ALPHAS, table_bits)
    counts: dict[tuple[int, int], list[int]] = {}
    history = [0] * max(_context.ORDERS)
    triples = set()
    k = 0
    for byte in block.tolist():
        bases = {}
        contexts = {}
        for j in _context.ORDERS:
            contexts[j] = sum(b << (8 * i) for i, b in enumerate(reversed(history[-j:])))
            bases[j] = _context._context_base(contexts[j], j, table_bits)
        node = 1
        for level in range(8):
            bit = (byte >> (7 - level)) & 1
            q = 0.5
            slots = {}
            for j, alpha in zip(_context.ORDERS, _context.ALPHAS, strict=True):
                slots[j] = bases[j] ^ _context._node_spread(j, table_bits)[node]
                seen, ones = counts.get((j, slots[j]), [0, 0])
                q = (ones + alpha * q) / (seen + alpha)
            assert bits[k] == bit
            assert p[k] == q
            for j in _context.ORDERS:
                triples.add((j, contexts[j], node))
                entry = counts.setdefault((j, slots[j]), [0, 0])
                entry[0] += 1
                entry[1] += bit
            node = 2 * node + bit
            k += 1
        history = [*history[1:], byte]
    # With 2^16 slots some (context, node) pairs share a slot: the test covers collisions.
    if table_bits == 16:
        assert len(counts) < len(triples)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`model` must be one of"):
        coding.compress(b"x", model="order9")
    with pytest.raises(TypeError, match="`data` must be bytes"):
        coding.compress("text")
    with pytest.raises(TypeError, match="`blob` must be bytes"):
        coding.decompress("text")


# -- damage -------------------------------------------------------------------------------


def _header_size(blob: bytes) -> int:
    name_length = blob[5]
    (params_length,) = struct.unpack("<I", blob[6 + name_length : 10 + name_length])
    return 10 + name_length + params_length + 32


def _flip(blob: bytes, bit: int) -> bytes:
    damaged = bytearray(blob)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@pytest.mark.parametrize("model", ["order0", "context"])
def test_every_bit_flip_is_detected(model):
    data = b"the quick brown fox jumps over the lazy dog " * 3
    blob = coding.compress(data, model=model)
    for bit in range(8 * len(blob)):
        with pytest.raises(DecodeError):
            coding.decompress(_flip(blob, bit))


def test_bit_flips_in_header_and_sampled_payload_of_a_large_blob(rng):
    data = rng.choice(40, size=20_000).astype(np.uint8).tobytes()
    blob = coding.compress(data)
    header_bits = 8 * _header_size(blob)
    bits = list(range(header_bits)) + rng.integers(header_bits, 8 * len(blob), 300).tolist()
    for bit in bits:
        with pytest.raises(DecodeError):
            coding.decompress(_flip(blob, bit))


@pytest.mark.parametrize("model", ["order0", "context"])
def test_every_truncation_is_detected(model):
    blob = coding.compress(TEXT[:500], model=model)
    for size in range(len(blob)):
        with pytest.raises(DecodeError):
            coding.decompress(blob[:size])


def test_messages_say_what_is_wrong():
    blob = coding.compress(b"some bytes to compress" * 4)
    with pytest.raises(DecodeError, match="not a crossentropy container"):
        coding.decompress(gzip.compress(b"foreign"))
    with pytest.raises(DecodeError, match="shorter than the magic"):
        coding.decompress(b"\x89C")
    with pytest.raises(DecodeError, match="truncated"):
        coding.decompress(blob[:20])
    with pytest.raises(DecodeError, match="trailing data"):
        coding.decompress(blob + b"\0")
    with pytest.raises(DecodeError, match="header checksum"):
        coding.decompress(_flip(blob, 8 * 12))
    with pytest.raises(DecodeError, match="payload checksum"):
        coding.decompress(_flip(blob, 8 * len(blob) - 1))


def _reseal(blob: bytes, payload: bytes) -> bytes:
    """Replace the payload and recompute both CRCs, as a forger would."""
    size = _header_size(blob)
    header = bytearray(blob[: size - 4])
    header[size - 16 : size - 4] = struct.pack("<QI", len(payload), zlib.crc32(payload))
    return bytes(header) + struct.pack("<I", zlib.crc32(bytes(header))) + payload


@pytest.mark.parametrize("model", ["order0", "context"])
def test_resealed_damage_is_caught_by_the_digest(model, rng):
    data = TEXT[:800]
    blob = coding.compress(data, model=model)
    payload = blob[_header_size(blob) :]
    assert coding.decompress(_reseal(blob, payload)) == data  # the helper itself is right
    for bit in rng.integers(0, 8 * len(payload), 40).tolist():
        damaged = _reseal(blob, _flip(payload, bit))
        with pytest.raises(DecodeError, match="corrupt container"):
            coding.decompress(damaged)


def test_unknown_version_and_model():
    blob = bytearray(coding.compress(b"abc"))
    blob[4] = 9
    header_size = _header_size(bytes(blob))
    blob[header_size - 4 : header_size] = struct.pack(
        "<I", zlib.crc32(bytes(blob[: header_size - 4]))
    )
    with pytest.raises(DecodeError, match="unsupported container version 9"):
        coding.decompress(bytes(blob))
    blob = bytearray(coding.compress(b"abc"))
    assert blob[6:12] == b"order0"
    blob[11:12] = b"7"  # a model name of the same length that no decoder knows
    blob[header_size - 4 : header_size] = struct.pack(
        "<I", zlib.crc32(bytes(blob[: header_size - 4]))
    )
    with pytest.raises(DecodeError, match="unknown model 'order7'"):
        coding.decompress(bytes(blob))


def test_context_model_across_blocks(monkeypatch):
    from crossentropy.coding import _context

    monkeypatch.setattr(_context, "BLOCK", 700)
    data = TEXT[:2500]
    blob = coding.compress(data, model="context")
    assert coding.decompress(blob) == data
    monkeypatch.undo()
    assert len(blob) > len(coding.compress(data, model="context"))  # fresh model per block
    assert coding.decompress(blob) == data  # the block size travels in the header


@pytest.mark.parametrize("model", coding.MODELS)
def test_progress_reports_the_bytes_done_in_order(model, monkeypatch):
    from crossentropy.coding import _context, _order0

    # Small blocks, reports and chunks, so that a short input crosses each of them.
    monkeypatch.setattr(_context, "BLOCK", 700)
    monkeypatch.setattr(_context, "_REPORT_EVERY", 100)
    monkeypatch.setattr(_order0, "_DECODE_CHUNK", 300)
    data = TEXT[:2500]
    seen: dict[str, list] = {"compress": [], "decompress": []}
    blob = coding.compress(
        data, model=model, progress=lambda done, total: seen["compress"].append((done, total))
    )
    assert blob == coding.compress(data, model=model)
    restored = coding.decompress(
        blob, progress=lambda done, total: seen["decompress"].append((done, total))
    )
    assert restored == data
    assert {total for calls in seen.values() for _, total in calls} == {2500}
    done = {kind: [d for d, _ in calls] for kind, calls in seen.items()}
    if model == "order0":  # one pass to encode; decoded a chunk at a time
        assert done["compress"] == [0, 2500]
        assert done["decompress"] == [*range(0, 2500, 300), 2500]
    else:  # encoded a block at a time; decoded with a report every 100 bytes
        assert done["compress"] == [0, 700, 1400, 2100, 2500]
        assert done["decompress"] == [*range(0, 2500, 100), 2500]


def test_progress_of_nothing_and_progress_errors():
    calls = []
    blob = coding.compress(b"", progress=lambda done, total: calls.append((done, total)))
    assert coding.decompress(blob, progress=lambda done, total: calls.append((done, total))) == b""
    assert calls == [(0, 0), (0, 0)]
    with pytest.raises(TypeError, match=r"`progress` must be None or a callable.*got int"):
        coding.compress(b"abc", progress=1)
    with pytest.raises(TypeError, match=r"`progress` must be None or a callable.*got str"):
        coding.decompress(blob, progress="bar")

    def stop(done, total):
        if done:
            raise ValueError("stopped by the caller")

    # An error of the caller's own callable reaches the caller as it is, not as a
    # corrupt container.
    blob = coding.compress(TEXT[:3000], model="context")
    with pytest.raises(ValueError, match="stopped by the caller") as error:
        coding.decompress(blob, progress=stop)
    assert not isinstance(error.value, DecodeError)


def _context_params(
    block=1 << 20, table_bits=24, slack_bits=3, orders=(1, 2), alphas=None, count=None
):
    alphas = (1.0,) * len(orders) if alphas is None else alphas
    count = len(orders) if count is None else count
    return (
        struct.pack("<IBBB", block, table_bits, slack_bits, count)
        + bytes(orders)
        + struct.pack(f"<{len(alphas)}d", *alphas)
    )


@pytest.mark.parametrize(
    "params",
    [
        b"",
        _context_params(orders=(1, 9)),
        _context_params(orders=(2, 1)),
        _context_params(orders=(1,), alphas=(-1.0,)),
        _context_params(block=0),
        _context_params(table_bits=30),
        _context_params(slack_bits=9),
        _context_params(count=3),
        _context_params(orders=()),
    ],
)
def test_context_parameters_are_checked(params):
    from crossentropy.coding import _context

    with pytest.raises(DecodeError, match="corrupt context parameters"):
        _context.decode(params, b"", 1)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["order0", "context"])
def test_large_round_trip(model, rng):
    text = b"".join(
        path.read_bytes()
        for path in sorted(pathlib.Path(coding.__file__).parent.parent.rglob("*.py"))
    )
    data = (text * (1 + 300_000 // max(1, len(text))))[:300_000]
    data += rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    blob = coding.compress(data, model=model)
    assert coding.decompress(blob) == data
    if model == "order0":
        assert len(blob) <= order0_entropy_bits(data) / 8 * 1.001 + 64 + 600


def test_context_parameters_travel_in_the_header(monkeypatch):
    from crossentropy.coding import _context

    monkeypatch.setattr(_context, "ORDERS", (1, 3))
    monkeypatch.setattr(_context, "ALPHAS", (0.5, 4.0))
    data = TEXT[:1500]
    blob = coding.compress(data, model="context")
    monkeypatch.undo()
    assert blob != coding.compress(data, model="context")
    assert coding.decompress(blob) == data


def test_context_model_stores_incompressible_blocks(rng):
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    blob = coding.compress(data, model="context")
    assert len(blob) <= len(data) + 100  # header and a 5-byte block header, no expansion
    assert coding.decompress(blob) == data


def _reseal_length(blob: bytes, length: int) -> bytes:
    """The blob with another original length and a header checksum that matches it."""
    size = _header_size(blob)
    header = bytearray(blob[: size - 4])
    header[size - 32 : size - 24] = struct.pack("<Q", length)
    return bytes(header) + struct.pack("<I", zlib.crc32(bytes(header))) + blob[size:]


@pytest.mark.parametrize("length", [2**40, 2**63 + 5])
def test_forged_length_is_a_decode_error_not_an_allocation(length):
    # A resealed header claiming 2^40 bytes made the context decoder allocate 1 TiB
    # (MemoryError); the payload's block headers bound the length first.
    blob = coding.compress(b"abcabcabd" * 3, model="context")
    assert coding.decompress(_reseal_length(blob, 27)) == b"abcabcabd" * 3
    with pytest.raises(DecodeError, match="corrupt"):
        coding.decompress(_reseal_length(blob, length))
    with pytest.raises(DecodeError, match="corrupt"):
        coding.decompress(_reseal_length(coding.compress(b"abcabcabd"), length))


@pytest.mark.parametrize("model", [["order0"], None, 0, b"order0"])
def test_model_of_another_type_is_a_type_error(model):
    # An unhashable model raised "unhashable type: 'list'"; then None and the others
    # raised ValueError, although their type is what is wrong.
    with pytest.raises(
        TypeError, match=r"`model` must be a str, one of \['order0', 'context'\]; got "
    ):
        coding.compress(b"x", model=model)


BYTES_LIKE = [
    bytearray(b"abracadabra"),
    memoryview(b"abracadabra"),
    np.frombuffer(b"abracadabra", dtype=np.uint8),
    array.array("B", b"abracadabra"),
]


@pytest.mark.parametrize("data", BYTES_LIKE, ids=lambda d: type(d).__name__)
def test_any_bytes_like_object_is_accepted(data):
    # A NumPy uint8 array raised "`data` must be bytes; got ndarray", while a memoryview
    # of any array was taken.
    blob = coding.compress(data)
    assert blob == coding.compress(b"abracadabra")
    assert coding.decompress(np.frombuffer(blob, dtype=np.uint8)) == b"abracadabra"
    assert coding.decompress(memoryview(bytearray(blob))) == b"abracadabra"


def test_wider_items_give_their_raw_bytes():
    """The rule for items wider than a byte: the buffer's raw memory, as zlib reads it."""
    values = np.arange(6, dtype="<i4")
    for data in [values, memoryview(values), values.reshape(2, 3), array.array("i", range(6))]:
        assert coding.decompress(coding.compress(data)) == values.tobytes()
    strided = values[::2]  # not contiguous: its items in order, as memoryview.tobytes()
    assert coding.decompress(coding.compress(strided)) == strided.tobytes()


@pytest.mark.parametrize("data", ["text", [1, 2, 3], None, 7])
def test_data_without_a_buffer_is_a_type_error(data):
    with pytest.raises(TypeError, match="`data` must be bytes or another bytes-like object"):
        coding.compress(data)
    with pytest.raises(TypeError, match="`blob` must be bytes or another bytes-like object"):
        coding.decompress(data)


OBJECTS_OR_TEXT = {
    "object": np.array([None, 1], dtype=object),
    "str_": np.array(["ab", "c"]),
    "object view": memoryview(np.array([None, 1], dtype=object)),
    "str_ view": memoryview(np.array(["ab", "c"])),
    "field of objects": np.zeros(2, dtype=[("a", "<i4"), ("b", "O")]),
    "field of text": np.zeros(2, dtype=[("a", "<i4"), ("b", "U2")]),
    "subarray of text": np.zeros(2, dtype=[("a", "U1", (2,))]),
}


@pytest.mark.parametrize("data", OBJECTS_OR_TEXT.values(), ids=OBJECTS_OR_TEXT.keys())
def test_buffers_of_objects_or_text_are_a_type_error(data):
    # An object array was coded as its PyObject pointers (decompress gave back heap
    # addresses), a str_ array as UCS-4.
    with pytest.raises(TypeError, match="`data` must be a buffer of plain data") as caught:
        coding.compress(data)
    assert "text.encode()" in str(caught.value)
    with pytest.raises(TypeError, match="`blob` must be a buffer of plain data"):
        coding.decompress(data)
    with pytest.raises(TypeError, match="`data` must be a buffer of plain data"):
        coding.entropy_report(data)


def test_plain_structured_buffers_are_still_bytes():
    # Field names that look like the format codes of objects or text are only names.
    data = np.zeros(3, dtype=[("Ow", "<i4"), ("uU", "<f8")])
    for value in (data, memoryview(data)):
        assert coding.decompress(coding.compress(value)) == data.tobytes()
    assert coding.decompress(coding.compress(np.array([b"ab", b"c"]))) == b"abc\0"


def _order0_params(present: dict[int, int]) -> bytes:
    """The order0 parameters: the bitmap of the byte values present, then their counts
    as LEB128 varints (written out here byte by byte)."""
    bitmap = bytearray(32)
    varints = bytearray()
    for value in sorted(present):
        bitmap[value // 8] |= 1 << (value % 8)
        count = present[value]
        while count >= 0x80:
            varints.append(count & 0x7F | 0x80)
            count >>= 7
        varints.append(count)
    return bytes(bitmap) + bytes(varints)


def test_order0_parameters_are_the_documented_layout():
    from crossentropy.coding import _order0

    data = np.frombuffer(b"ab" * 100 + b"c", dtype=np.uint8)
    params, payload = _order0.encode(data)
    assert params == _order0_params({97: 100, 98: 100, 99: 1})
    np.testing.assert_array_equal(_order0.decode(params, payload, data.size), data)


@pytest.mark.parametrize(
    ("params", "payload", "n"),
    [
        (b"\0" * 31, b"", 0),  # shorter than the bitmap
        (_order0_params({97: 3})[:32] + b"\xff" * 9 + b"\x01", b"", 3),  # a 10-byte varint
        (_order0_params({97: 3})[:-1] + b"\x83", b"", 3),  # a varint cut short
        (_order0_params({97: 3}), b"", 4),  # counts that do not sum to the length
        (_order0_params({97: 3}), b"\0\0\0\0", 3),  # one value, yet a payload
        (_order0_params({97: 3}), b"", 0),  # an empty original with counts
        (_order0_params({}), b"\0\0\0\0", 0),  # an empty original with a payload
        (_order0_params({}), b"", 3),  # no values for 3 bytes
        (_order0_params({97: 0, 98: 3}), b"\0\0\0\0", 3),  # a present value counted 0
    ],
    ids=[
        "short bitmap",
        "10-byte varint",
        "varint cut short",
        "counts off the length",
        "one value with payload",
        "empty with counts",
        "empty with payload",
        "no values",
        "zero count",
    ],
)
def test_order0_parameters_are_checked(params, payload, n):
    from crossentropy.coding import _order0

    with pytest.raises(DecodeError, match="corrupt"):
        _order0.decode(params, payload, n)


def _reseal_order0(blob: bytes, present: dict[int, int], length: int) -> bytes:
    """An order0 blob with other counts and original length, its header checksum redone."""
    size = _header_size(blob)
    params = _order0_params(present)
    header = (
        blob[:6]
        + b"order0"
        + struct.pack("<I", len(params))
        + params
        + struct.pack("<Q", length)
        + blob[size - 24 : size - 4]
    )
    return header + struct.pack("<I", zlib.crc32(header)) + blob[size:]


@pytest.mark.parametrize("k", [36, 62])
def test_order0_forged_counts_and_length_are_a_decode_error(k):
    # Counts and length forged to agree (2^k bytes of two values) passed every header
    # check, and the range decoder's allocation of 2^k symbols aborted the interpreter.
    blob = coding.compress(b"ab" * 3)
    assert coding.decompress(_reseal_order0(blob, {97: 3, 98: 3}, 6)) == b"ab" * 3
    forged = _reseal_order0(blob, {97: 2 ** (k - 1), 98: 2 ** (k - 1)}, 2**k)
    with pytest.raises(DecodeError, match="corrupt order0 payload"):
        coding.decompress(forged)


def test_order0_decodes_the_cheapest_messages():
    # 1.2 million zeros and a single one cost a few words: the bound on the length that
    # a payload can hold must admit them (and they span two decoding chunks of 2^20).
    data = bytes(1_200_000) + b"\x01"
    blob = coding.compress(data)
    assert len(blob) - _header_size(blob) <= 16
    assert coding.decompress(blob) == data


def _context_blocks(*blocks: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("<BI", method, len(body)) + body for method, body in blocks)


@pytest.mark.parametrize(
    ("payload", "n", "message"),
    [
        (_context_blocks((1, b"abcde")) + b"\0", 5, "left over"),
        (_context_blocks((1, b"abc")), 5, "block method 1, 3 bytes"),
        (_context_blocks((1, b"abcdef")), 5, "block method 1, 6 bytes"),
        (_context_blocks((2, b"abcde")), 5, "block method 2"),
        (_context_blocks((1, b"abcde"))[:-1], 5, "cut short"),
        (struct.pack("<BI", 0, 9) + b"abcde", 5, "cut short"),
        (_context_blocks((1, b"abcde"), (1, b"f"))[:-2], 6, "block header is missing"),
    ],
    ids=["left over", "stored short", "stored long", "method", "cut", "length", "header"],
)
def test_context_payload_is_checked(payload, n, message):
    from crossentropy.coding import _context

    params = _context_params(block=5, orders=(1, 2, 4, 6))
    assert _context.decode(params, _context_blocks((1, b"abcde")), 5).tobytes() == b"abcde"
    with pytest.raises(DecodeError, match=message):
        _context.decode(params, payload, n)


@pytest.mark.parametrize("model", ["order0", "context"])
def test_container_is_the_documented_layout(model):
    """Every field of the layout table in the module docstring, at its offset."""
    import hashlib

    data = b"ABCAADABCA" * 30
    blob = coding.compress(data, model=model)
    assert blob[:4] == b"\x89CEZ"
    assert blob[4] == 1
    name_length = blob[5]
    assert blob[6 : 6 + name_length] == model.encode("ascii")
    at = 6 + name_length
    (params_length,) = struct.unpack("<I", blob[at : at + 4])
    at += 4 + params_length
    original_length, digest = struct.unpack("<Q8s", blob[at : at + 16])
    assert original_length == len(data)
    assert digest == hashlib.blake2b(data, digest_size=8).digest()
    payload_length, payload_crc, header_crc = struct.unpack("<QII", blob[at + 16 : at + 32])
    header_end = at + 28
    assert header_crc == zlib.crc32(blob[:header_end])
    payload = blob[header_end + 4 :]
    assert len(payload) == payload_length
    assert payload_crc == zlib.crc32(payload)
    assert header_end + 4 == 42 + name_length + params_length
