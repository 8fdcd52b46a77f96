"""The adaptive context model: each bit predicted from the preceding bytes, orders blended.

Each byte is coded as 8 binary decisions, most significant bit first; the decision's
*node* is the bits of the byte seen so far (1, then 2 or 3, ..., up to 255). For each
order j in :data:`ORDERS` the context is the previous j bytes (bytes before the start of
a block count as 0), and the model keeps, per (context, node), how often the bit was 0
or 1 *before* this position. The estimates are blended from low to high order,

    p_0 = 1/2,   p_j = (n1_j + a p_{j-1}) / (n_j + a),

a Dirichlet estimate whose prior is the lower order's prediction (interpolated
smoothing with a constant weight a = :data:`ALPHA`), and the last p is the probability
of a 1 handed to the range coder. The model adapts as it goes, so nothing is stored.

Encoding needs no loop per byte: for every order the (context, node) keys are hashed to
40 bits, combined with the time index into one 63-bit integer and sorted once; within a
run of equal keys, the rank is the count before and an exclusive cumulative sum of the
bits is the count of ones before. Decoding must be sequential (each bit's context depends
on the bits decoded before it) and runs bit by bit in Python with dictionaries of the
same counts: it is about a thousand times slower than encoding.

All arithmetic on probabilities is +, * and / in float64, in the same order on both
sides, so encoder and decoder compute bit-identical probabilities. Data are coded in
blocks of :data:`BLOCK` bytes, each with a fresh model, which bounds the encoder's memory.
"""

from __future__ import annotations

import struct

import numpy as np

from crossentropy._errors import DecodeError
from crossentropy.coding._arithmetic import _bytes_to_words, _words_to_bytes

__all__ = ["ALPHA", "BLOCK", "ORDERS", "block_probabilities", "decode", "encode"]

#: The context orders blended, in bytes.
ORDERS: tuple[int, ...] = (0, 1, 2, 3, 4, 6)
#: The weight of the lower order's prediction in each blend.
ALPHA = 1.0
#: Bytes per independently coded block.
BLOCK = 1 << 20

_MULTIPLIER = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: Fibonacci hashing
_MASK64 = (1 << 64) - 1
_KEY_SHIFT = 24  # keep the top 40 bits of the 64-bit product
_TIME_BITS = 23  # 8 * BLOCK decisions per block
_PARAMS = struct.Struct("<I d B")


def _nodes(block: np.ndarray) -> np.ndarray:
    levels = np.arange(8, dtype=np.uint64)
    nodes = (block[:, None].astype(np.uint64) >> (np.uint64(8) - levels)) | (
        np.uint64(1) << levels
    )
    return nodes.ravel()


def _prior_counts(keys: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position, how often its key occurred before, and with how many ones."""
    size = keys.size
    composite = (keys << np.uint64(_TIME_BITS)) | np.arange(size, dtype=np.uint64)
    composite.sort()
    order = (composite & np.uint64((1 << _TIME_BITS) - 1)).astype(np.intp)
    sorted_keys = composite >> np.uint64(_TIME_BITS)
    index = np.arange(size, dtype=np.int32)
    starts = np.empty(size, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    group_start = np.maximum.accumulate(np.where(starts, index, 0))
    sorted_bits = bits[order].astype(np.int32)
    ones_before = np.cumsum(sorted_bits, dtype=np.int32) - sorted_bits
    seen = np.empty(size, dtype=np.int32)
    ones = np.empty(size, dtype=np.int32)
    seen[order] = index - group_start
    ones[order] = ones_before - ones_before[group_start]
    return seen, ones


def block_probabilities(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bits of a block and the model's probability that each is 1 (vectorised).

    Args:
        block: N bytes (uint8), N <= :data:`BLOCK`.

    Returns:
        ``(bits, p)``: 8N bits (uint8, most significant first) and 8N probabilities
        (float64, strictly between 0 and 1).
    """
    n = block.size
    bits = np.unpackbits(block)
    nodes = _nodes(block)
    padded = np.concatenate([np.zeros(max(ORDERS), dtype=np.uint8), block])
    p = np.full(8 * n, 0.5)
    context = np.zeros(n, dtype=np.uint64)
    for j in range(max(ORDERS) + 1):
        if j > 0:
            previous = padded[max(ORDERS) - j: max(ORDERS) - j + n].astype(np.uint64)
            context |= previous << np.uint64(8 * (j - 1))
        if j not in ORDERS:
            continue
        base = (context * np.uint64(257) + np.uint64(j)) * np.uint64(256)
        keys = ((np.repeat(base, 8) + nodes) * np.uint64(_MULTIPLIER)) >> np.uint64(_KEY_SHIFT)
        seen, ones = _prior_counts(keys, bits)
        p = (ones + ALPHA * p) / (seen + ALPHA)
    return bits, p


def encode(data: np.ndarray) -> tuple[bytes, bytes]:
    """(parameters, payload) for the bytes ``data`` (uint8, shape (N,))."""
    import constriction

    params = _PARAMS.pack(BLOCK, ALPHA, len(ORDERS)) + bytes(ORDERS)
    chunks = []
    for start in range(0, data.size, BLOCK):
        bits, p = block_probabilities(data[start:start + BLOCK])
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(
            bits.astype(np.int32), constriction.stream.model.Bernoulli(perfect=False), p
        )
        words = _words_to_bytes(encoder.get_compressed())
        chunks.append(struct.pack("<I", len(words)) + words)
    return params, b"".join(chunks)


def decode(params: bytes, payload: bytes, n: int) -> np.ndarray:
    """The N bytes coded by :func:`encode` (uint8 array); sequential, bit by bit."""
    size = _PARAMS.size
    if len(params) < size:
        raise DecodeError("corrupt context parameters: too short")
    block, alpha, count = _PARAMS.unpack(params[:size])
    orders = tuple(params[size:])
    if (block, alpha, orders) != (BLOCK, ALPHA, ORDERS) or count != len(orders):
        raise DecodeError(
            f"context parameters (block {block}, alpha {alpha}, orders {orders}) differ "
            f"from this library's ({BLOCK}, {ALPHA}, {ORDERS})"
        )
    out = np.empty(n, dtype=np.uint8)
    at = 0
    for start in range(0, n, BLOCK):
        if at + 4 > len(payload):
            raise DecodeError("truncated context payload: a block length is missing")
        (length,) = struct.unpack("<I", payload[at:at + 4])
        at += 4
        if at + length > len(payload):
            raise DecodeError("truncated context payload: a block is cut short")
        words = _bytes_to_words(payload[at:at + length])
        at += length
        stop = min(n, start + BLOCK)
        out[start:stop] = _decode_block(words, stop - start)
    if at != len(payload):
        raise DecodeError(f"corrupt context payload: {len(payload) - at} bytes left over")
    return out


def _decode_block(words: np.ndarray, n: int) -> list[int]:
    import constriction

    bernoulli = constriction.stream.model.Bernoulli
    decoder = constriction.stream.queue.RangeDecoder(words)
    decode_bit = decoder.decode
    mask64 = _MASK64
    shift = _KEY_SHIFT
    alpha = ALPHA
    node_terms = [(node * _MULTIPLIER) & mask64 for node in range(256)]
    order_masks = [(j, (1 << (8 * j)) - 1) for j in ORDERS]
    tables: list[dict[int, list[int]]] = [{} for _ in ORDERS]
    history_mask = (1 << (8 * max(ORDERS))) - 1
    history = 0
    out = []
    for _ in range(n):
        bases = [
            (((((history & mask) * 257 + j) * 256) * _MULTIPLIER) & mask64, table)
            for (j, mask), table in zip(order_masks, tables, strict=True)
        ]
        node = 1
        while node < 256:
            p = 0.5
            entries = []
            term = node_terms[node]
            for base, table in bases:
                key = ((base + term) & mask64) >> shift
                entry = table.get(key)
                if entry is None:
                    entry = table[key] = [0, 0]
                p = (entry[1] + alpha * p) / (entry[0] + alpha)
                entries.append(entry)
            bit = int(decode_bit(bernoulli(p, perfect=False)))
            for entry in entries:
                entry[0] += 1
                entry[1] += bit
            node = 2 * node + bit
        byte = node - 256
        out.append(byte)
        history = ((history << 8) | byte) & history_mask
    return out
