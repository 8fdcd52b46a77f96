"""Arithmetic (range) coding of symbol sequences through constriction's range coder."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossentropy._errors import DecodeError
from crossentropy.coding._bytes import as_bytes
from crossentropy.info._validate import check_flag, sum_tolerance

__all__ = ["arithmetic_decode", "arithmetic_encode", "information_content", "quantized_model"]

# Probabilities are handed to constriction, which rounds them to fixed point (24-bit
# precision in its default range coder) and gives every symbol at least the smallest
# representable probability. The model is checked here first, so that a bad model is a
# clear error and not a silently renormalised one.

#: The most symbols the coder's 24-bit fixed point can give a positive probability each
#: (constriction's leaky quantisation needs V <= 2^24 - 2).
MAX_ALPHABET = (1 << 24) - 2
#: The coder's fixed point: probabilities are multiples of 1 / _TOTAL.
_TOTAL = 1 << 24
#: Symbols decoded per call into constriction, which bounds its own allocations.
_DECODE_CHUNK = 1 << 20


def _quiet(done: int) -> None:
    """A progress report (bytes done so far) that goes nowhere: the coders' default."""


def _categorical(probabilities: np.ndarray | None = None) -> Any:
    import constriction

    if probabilities is None:
        return constriction.stream.model.Categorical(perfect=False)
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def model_sum_tolerance(dtype: np.dtype) -> tuple[np.dtype, float]:
    """``(precision, tolerance)``: how far from 1 the probabilities of a model of ``dtype``
    may sum, for the range coder. The rule of :mod:`crossentropy.info` (the square root of the
    epsilon of the model's own dtype, float64 for integers) with the floor the losses
    use: never less than float32's, 3.45e-4, so that the usual
    ``softmax(logits_f32).astype(np.float64)`` passes (its sums are off by up to ~2e-7).
    The range coder needs no tighter rule: constriction divides every row by its sum
    anyway, as :func:`quantized_model` does. (Huffman's ``expected_length`` multiplies by
    the probabilities as given, so :func:`huffman_code` keeps :mod:`crossentropy.info`'s
    rule.)"""
    precision = dtype if dtype.kind == "f" else np.dtype(np.float64)
    return precision, max(sum_tolerance(precision), sum_tolerance(np.dtype(np.float32)))


def _check_model(model: Any, n: int | None) -> np.ndarray:
    """The model as a float64 array of shape (V,) or (n, V), validated."""
    try:
        raw = np.asarray(model)
    except (TypeError, ValueError):
        raise TypeError(f"`model` must be an array of probabilities; got {model!r:.80}") from None
    if raw.dtype.kind not in "biuf":
        raise TypeError(
            f"`model` must be an array of real probabilities; got dtype {raw.dtype}: {model!r:.80}"
        )
    table = raw.astype(np.float64)
    if table.ndim not in (1, 2):
        raise ValueError(
            "`model` must be one distribution (V,) or one per position (N, V); "
            f"got shape {table.shape}"
        )
    if table.shape[-1] < 1:
        raise ValueError(f"`model` must have at least one symbol; got shape {table.shape}")
    if table.ndim == 2 and n is not None and table.shape[0] != n:
        raise ValueError(f"`model` must have one row per symbol ({n}); got shape {table.shape}")
    if not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError("`model` must hold finite, non-negative probabilities")
    if table.shape[-1] > MAX_ALPHABET:
        raise ValueError(
            f"`model` must have at most {MAX_ALPHABET} symbols (2^24 - 2, the range coder's "
            f"24-bit precision); got {table.shape[-1]}"
        )
    sums = table.sum(axis=-1)
    precision, tolerance = model_sum_tolerance(raw.dtype)
    off = np.abs(sums - 1.0) > tolerance
    if np.any(off):
        where = int(np.argmax(off)) if table.ndim == 2 else None
        seen = float(np.atleast_1d(sums)[where or 0])
        at = f" in row {where}" if where is not None else ""
        raise ValueError(
            f"`model` must sum to 1 over its last axis (within {tolerance:.3g} for "
            f"{precision}: the square root of its epsilon, never less than float32's); "
            f"got sum {seen!r}{at}; normalise it explicitly with "
            "`crossentropy.info.normalize(model)`"
        )
    return table


def _check_symbols(symbols: Any, alphabet: int) -> np.ndarray:
    try:
        array = np.asarray(symbols)
    except (TypeError, ValueError):
        raise TypeError(
            f"`symbols` must be a 1-D sequence of integers; got {symbols!r:.80}"
        ) from None
    if array.size and not np.issubdtype(array.dtype, np.integer):
        # Before the shape: a string such as "ab" is one element of dtype <U2.
        raise TypeError(f"`symbols` must be integers 0 .. V-1; got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"`symbols` must be a 1-D sequence; got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int32)
    bad = (array < 0) | (array >= alphabet)
    if np.any(bad):
        position = int(np.argmax(bad))
        raise ValueError(
            f"`symbols` must lie in 0 .. {alphabet - 1} (the model's alphabet); got "
            f"{int(array[position])} at position {position}"
        )
    return array.astype(np.int32)


def _probabilities_of(symbols: np.ndarray, table: np.ndarray) -> np.ndarray:
    if table.ndim == 1:
        return table[symbols]
    return table[np.arange(symbols.shape[0]), symbols]


def quantized_model(model: Any) -> np.ndarray:
    """The probabilities :func:`arithmetic_encode` really codes with: ``model`` rounded
    to multiples of 2^-24, every symbol at least 2^-24.

    constriction's leaky quantisation (``Categorical(perfect=False)``) gives symbol i
    of a row q (summing to s) the weight

        w_i = floor(C_(i+1) · (2^24 − V) / s) − floor(C_i · (2^24 − V) / s) + 1,

    where C_i = q_0 + … + q_(i−1) is summed in float64 in index order, and the last
    symbol gets the rest of 2^24; the probability is w_i / 2^24. So w_i >= q_i (2^24 − V)
    / s and every q̃_i >= q_i (1 − V · 2^-24) / s: no symbol costs more than
    −log2(1 − V · 2^-24) bits above its information (0.0887 bits for V = 10^6), and
    none more than 24 bits.

    Args:
        model: one distribution (V,) or one per position (N, V), as for
            :func:`arithmetic_encode`.

    Returns:
        float64 probabilities of the model's shape, each a multiple of 2^-24, each row
        summing to exactly 1.

    Examples:
        >>> quantized_model([0.5, 0.5 - 1e-9, 1e-9]).tolist()
        [0.4999999403953552, 0.4999999403953552, 1.1920928955078125e-07]
    """
    table = _check_model(model, None)
    return _quantized(table)


def _quantized(table: np.ndarray) -> np.ndarray:
    alphabet = table.shape[-1]
    if alphabet == 1:  # no coding at all: the one symbol costs 0 bits
        return np.ones_like(table)
    cumulative = np.cumsum(table, axis=-1)  # in index order, as constriction sums
    scale = float(_TOTAL - alphabet) / cumulative[..., -1:]
    before = np.concatenate([np.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1)
    left = np.floor(before * scale).astype(np.int64) + np.arange(alphabet)
    end = np.full_like(left[..., :1], _TOTAL)
    return np.diff(left, axis=-1, append=end) / float(_TOTAL)


def information_content(symbols: Any, model: Any, *, quantized: bool = False) -> float:
    """The information content −log2 Q(message) = −Σ_i log2 q_i(x_i), in bits.

    The ideal code length of the message under the model. It is +inf if a symbol has
    probability 0. With ``quantized=True`` it is the information under the model that
    :func:`arithmetic_encode` really codes with (:func:`quantized_model`): the coded
    size is that many bits plus less than 64 (the flush into whole 32-bit words).

    Args:
        symbols: N integers in ``0 .. V-1``.
        model: one distribution (V,) for every position, or one per position (N, V).
        quantized: measure under the coder's 24-bit quantised model instead of ``model``
            (a bool or a NumPy bool).

    Returns:
        Bits (float).

    Raises:
        ValueError: the model is not a distribution, a symbol is outside the alphabet,
            or the shapes disagree.
        TypeError: the symbols are not integers, the model is not made of real numbers,
            or ``quantized`` is not a bool.

    Examples:
        >>> round(information_content([0, 1, 2, 0, 0, 3, 0, 1, 2, 0], [.5, .2, .2, .1]), 6)
        17.60964
        >>> p = [1 - 1e-12, 1e-12]                 # a rare symbol costs at most 24 bits
        >>> round(information_content([1, 1, 1, 1], p), 1)
        159.5
        >>> information_content([1, 1, 1, 1], p, quantized=True)
        92.0
    """
    quantized = check_flag(quantized, "quantized")
    table = _check_model(model, None)
    array = _check_symbols(symbols, table.shape[-1])
    if table.ndim == 2 and table.shape[0] != array.shape[0]:
        raise ValueError(
            f"`model` must have one row per symbol ({array.shape[0]}); got shape {table.shape}"
        )
    probabilities = _probabilities_of(array, table)
    if quantized:  # a symbol of probability 0 stays unencodable (arithmetic_encode refuses it)
        probabilities = np.where(probabilities > 0, _probabilities_of(array, _quantized(table)), 0)
    with np.errstate(divide="ignore"):
        return float(-np.sum(np.log2(probabilities))) + 0.0  # no -0.0


def arithmetic_encode(symbols: Any, model: Any) -> bytes:
    """Encode symbols with a range coder (constriction) under a fixed or per-position model.

    The coder rounds the model to multiples of 2^-24, giving every symbol at least
    2^-24 (:func:`quantized_model`), and flushes whole 32-bit words. The coded size is
    the information content under that quantised model,
    ``information_content(symbols, model, quantized=True)``, plus less than 64 bits.
    Against the model itself, each symbol costs at most −log2(1 − V · 2^-24) bits more
    than its information −log2 q(x) (the mass the rare symbols take from the likely
    ones: negligible for bytes, 0.0887 bits for V = 10^6, so a message of N likely
    symbols can cost about 0.0887 N bits where its information is near 0), and no symbol
    costs more than 24 bits (a message of symbols rarer than 2^-24 is coded *below* its
    information content).

    Args:
        symbols: N integers in ``0 .. V-1`` (N may be 0).
        model: probabilities, shape (V,) for every position or (N, V) one row per
            position (as a context model or a language model gives). Each row must sum
            to 1 within the square root of its dtype's epsilon, and never less than
            float32's (3.45e-4), so float32 probabilities cast to float64 pass; normalise
            others with :func:`crossentropy.info.normalize`. Tiny probabilities are
            raised to the coder's smallest step, so every symbol of positive
            probability stays encodable.

    Returns:
        The coded bytes (little-endian 32-bit words); ``b""`` for N = 0.

    Raises:
        ValueError: a symbol has probability 0 under its row (the position is named),
            lies outside the alphabet, or the model is not a distribution (of shape (V,)
            or (N, V), rows summing to 1).
        TypeError: the symbols are not integers, or the model is not made of real numbers.

    Examples:
        >>> p = [.5, .2, .2, .1]
        >>> data = arithmetic_encode([0, 1, 2, 0, 0, 3, 0, 1, 2, 0], p)
        >>> len(data) * 8                      # whole 32-bit words; the ideal is 17.6 bits
        32
        >>> arithmetic_decode(data, p, 10).tolist()
        [0, 1, 2, 0, 0, 3, 0, 1, 2, 0]

    References:
        R. Bamler, "Understanding entropy coding with asymmetric numeral systems (ANS):
        a statistician's perspective", 2022 (constriction). G. N. N. Martin, "Range
        encoding", 1979.
    """
    table = _check_model(model, None)
    array = _check_symbols(symbols, table.shape[-1])
    if table.ndim == 2 and table.shape[0] != array.shape[0]:
        raise ValueError(
            f"`model` must have one row per symbol ({array.shape[0]}); got shape {table.shape}"
        )
    return _encode(array, table)


def _encode(array: np.ndarray, table: np.ndarray) -> bytes:
    """:func:`arithmetic_encode` of checked symbols (int32) under a checked model."""
    import constriction

    if array.size == 0:
        return b""
    zero = _probabilities_of(array, table) == 0
    if np.any(zero):
        position = int(np.argmax(zero))
        raise ValueError(
            f"`symbols` must have positive probability under `model`; symbol "
            f"{int(array[position])} at position {position} has probability 0"
        )
    if table.shape[-1] == 1:  # one symbol of probability 1: the message costs 0 bits
        return b""
    encoder = constriction.stream.queue.RangeEncoder()
    if table.ndim == 1:
        encoder.encode(array, _categorical(table))
    else:
        encoder.encode(array, _categorical(), table)
    return _words_to_bytes(encoder.get_compressed())


def arithmetic_decode(data: bytes, model: Any, n: int) -> np.ndarray:
    """Decode ``n`` symbols coded by :func:`arithmetic_encode` with the same model.

    A range coder will read any bytes as *some* message, and happily decodes more
    symbols than were coded (from the zeros past the end). So the decoded symbols are
    encoded again and compared with ``data``: the result is returned only when ``data``
    is exactly what :func:`arithmetic_encode` gives for it (at the cost of one more
    encoding pass). A different model, damaged data or a wrong ``n`` then raise
    :class:`DecodeError` rather than return symbols that do not encode to ``data``. The
    coder's output is not self-delimiting, though: the slack of its last 32-bit word can
    make the same bytes the encoding of a few more (or fewer) likely symbols too, so a
    ``n`` near the true count may decode without error to that other, consistent
    message (see the examples). ``n`` must be known (:func:`compress` stores it).

    Args:
        data: the coded bytes (any bytes-like object, as for :func:`compress`).
        model: the same model as for encoding, shape (V,) or (n, V).
        n: the number of symbols to decode.

    Returns:
        The symbols, an int64 array of shape (n,).

    Raises:
        DecodeError: ``data`` is not whole 32-bit words, the coder rejects it, or it is
            not the encoding of any message of ``n`` symbols under ``model`` (a wrong
            ``n``, another model, or damage that changes the decoded symbols).
        ValueError: ``n`` is not a non-negative integer (a bool or float included); the
            model is not a distribution, or a per-position model has not ``n`` rows.
        TypeError: ``data`` is not bytes-like; the model is not made of real numbers.

    Examples:
        >>> p = [.5, .2, .2, .1]
        >>> data = arithmetic_encode([0, 1, 2, 0, 0, 3, 0, 1, 2, 0], p)
        >>> arithmetic_decode(data, p, 10).tolist()
        [0, 1, 2, 0, 0, 3, 0, 1, 2, 0]
        >>> arithmetic_decode(data, p, 9).tolist()   # these 4 bytes also encode 9 symbols
        [0, 1, 2, 0, 0, 3, 0, 1, 2]
        >>> arithmetic_decode(data, p, 40)
        Traceback (most recent call last):
        ...
        crossentropy._errors.DecodeError: `data` is not the encoding of 40 symbols under \
`model`: re-encoding the decoded symbols gives other bytes (a wrong `n` or model, or \
damaged data)
    """
    import constriction

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"`n` must be a non-negative integer; got {n!r}")
    n = int(n)
    data = as_bytes(data, "data")
    table = _check_model(model, n)
    if n == 0 or table.shape[-1] == 1:
        if len(data):
            raise DecodeError(
                f"`data` must be empty for a message that costs no bits; got {len(data)} bytes"
            )
        return np.zeros(n, dtype=np.int64)
    words = _bytes_to_words(data)
    if table.ndim == 1 and n > _most_symbols(words.size, table.shape[-1]):
        raise DecodeError(
            f"`n` must be at most {_most_symbols(words.size, table.shape[-1])} for "
            f"{len(data)} bytes of data and {table.shape[-1]} symbols (each symbol costs at "
            f"least -log2(1 - (V-1) 2^-24) bits); got {n}"
        )
    out = np.empty(n, dtype=np.int64)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        # In chunks, so that constriction never allocates more than a chunk at once.
        for start in range(0, n, _DECODE_CHUNK):
            stop = min(n, start + _DECODE_CHUNK)
            if table.ndim == 1:
                out[start:stop] = decoder.decode(_categorical(table), stop - start)
            else:
                out[start:stop] = decoder.decode(_categorical(), table[start:stop])
    except (ValueError, RuntimeError, AssertionError) as error:
        raise DecodeError(f"range decoder rejected the data: {error}") from None
    try:
        again = _encode(out.astype(np.int32), table)
    except ValueError:  # a decoded symbol has probability 0: not from the encoder
        again = None
    if again != data:
        raise DecodeError(
            f"`data` is not the encoding of {n} symbols under `model`: re-encoding the "
            "decoded symbols gives other bytes (a wrong `n` or model, or damaged data)"
        )
    return out


def _most_symbols(words: int, alphabet: int) -> int:
    """A safe upper bound on the symbols that ``words`` 32-bit words can encode.

    The coder gives every symbol at least 2^-24, so no symbol is more likely than
    1 - (V-1) 2^-24 and each costs at least c = -log2 of that; a range coder emits a
    word each time its range narrows by 2^32, so a message of I bits of information
    needs more than (I - 64) / 32 words. Twice (32 words + 64) / c is far above that.
    """
    cost = -math.log2(1.0 - (alphabet - 1) * 2.0**-24)
    return int(2 * (32 * words + 64) / cost) + 1


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype="<u4").tobytes()


def _bytes_to_words(data: bytes) -> np.ndarray:
    data = as_bytes(data, "data")
    if len(data) % 4:
        raise DecodeError(f"`data` must be whole 32-bit words; got {len(data)} bytes (truncated?)")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)
