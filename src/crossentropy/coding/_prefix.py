"""Prefix codes: Huffman, fixed length, the Kraft sum, and ambiguity witnesses."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from crossentropy._errors import DecodeError

__all__ = [
    "Ambiguity",
    "PrefixCode",
    "find_ambiguity",
    "fixed_length_code",
    "huffman_code",
    "is_prefix_free",
    "kraft_sum",
]


class Ambiguity(NamedTuple):
    """A bit string that splits into codewords in two different ways.

    Attributes:
        bits: the bit string, e.g. ``"1110"``.
        first: one parse, as the sequence of codewords (or symbols) it reads.
        second: another parse of the same bits.
    """

    bits: str
    first: tuple[Any, ...]
    second: tuple[Any, ...]


def _check_codewords(codewords: Iterable[str], name: str = "codewords") -> list[str]:
    words = list(codewords)
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"`{name}` must be strings of '0' and '1'; got {word!r}")
        if not word or set(word) - {"0", "1"}:
            raise ValueError(f"`{name}` must be non-empty strings of '0' and '1'; got {word!r}")
    return words


def _words_of(codewords: Mapping[Hashable, str] | Iterable[str]) -> list[str]:
    if isinstance(codewords, Mapping):
        return _check_codewords(codewords.values())
    if isinstance(codewords, str):
        raise TypeError(
            "`codewords` must be a mapping symbol -> codeword or a sequence of codewords; "
            f"got the single string {codewords!r}"
        )
    try:
        words = iter(codewords)
    except TypeError:
        raise TypeError(
            "`codewords` must be a mapping symbol -> codeword or a sequence of codewords; "
            f"got {type(codewords).__name__}"
        ) from None
    return _check_codewords(words)


def kraft_sum(lengths: Iterable[int] | Mapping[Hashable, int]) -> float:
    """The Kraft sum Σ 2^(−l) of a list of codeword lengths.

    A prefix code (indeed any uniquely decodable code) with these lengths exists if and
    only if the sum is at most 1 (Kraft–McMillan); a complete code has sum exactly 1.

    The sum is formed exactly (in integers) and rounded *up* to a float, so that
    ``kraft_sum(lengths) <= 1`` decides Kraft's inequality exactly: a sum such as
    1 + 2^-100 (lengths 1, 1, 100) is a float above 1, not 1.0.

    Args:
        lengths: codeword lengths in bits, non-negative integers (a mapping's values are used).

    Returns:
        The sum, a float: exact when it is representable (as for every complete code),
        else the next float above it.

    Raises:
        ValueError: a length is negative or not an integer.
        TypeError: ``lengths`` is not an iterable of lengths.

    Examples:
        >>> kraft_sum([1, 2, 3, 3])            # Huffman for [.5, .2, .2, .1]
        1.0
        >>> kraft_sum([1, 2, 2, 3])            # the seed's code 2: no prefix code has these
        1.125
        >>> kraft_sum([1, 1, 100]) > 1         # no prefix code has these either
        True

    References:
        Cover & Thomas, *Elements of Information Theory*, 2nd ed., theorem 5.2.1.
    """
    if isinstance(lengths, Mapping):
        values = list(lengths.values())
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise TypeError(
                f"`lengths` must be an iterable of codeword lengths; got {lengths!r}"
            ) from None
    counts: dict[int, int] = {}
    for length in values:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"`lengths` must be non-negative integers; got {length!r}")
        counts[int(length)] = counts.get(int(length), 0) + 1
    if not counts:
        return 0.0
    # Σ c_l 2^-l = numerator / 2^longest, in integers (Horner over the lengths).
    numerator = 0
    previous = 0
    for length in sorted(counts):
        numerator = (numerator << (length - previous)) + counts[length]
        previous = length
    exact = Fraction(numerator, 1 << previous)
    total = float(exact)  # correctly rounded to nearest
    if Fraction(total) < exact:
        total = math.nextafter(total, math.inf)
    return total


def is_prefix_free(codewords: Mapping[Hashable, str] | Iterable[str]) -> bool:
    """Whether no codeword is a prefix of another (so decoding needs no lookahead).

    Args:
        codewords: a mapping symbol → codeword, or a sequence of codewords, each a
            non-empty string of ``'0'`` and ``'1'``. Two equal codewords count as a
            violation.

    Returns:
        ``True`` when the code is prefix-free.

    Raises:
        ValueError: a codeword is empty or holds a character other than 0 and 1.
        TypeError: ``codewords`` is not a mapping or a sequence of strings (a single
            string included), or a codeword is not a string.

    Examples:
        >>> is_prefix_free({"A": "0", "B": "10", "C": "110", "D": "111"})
        True
        >>> is_prefix_free({"A": "0", "B": "10", "C": "11", "D": "111"})
        False
    """
    words = sorted(_words_of(codewords))
    # In sorted order a word that is a prefix of another sits directly before some word it
    # prefixes, so comparing neighbours suffices.
    return all(not b.startswith(a) for a, b in itertools.pairwise(words))


def find_ambiguity(codewords: Mapping[Hashable, str] | Iterable[str]) -> Ambiguity | None:
    """A shortest bit string with two parses into codewords, or ``None`` if there is none.

    Runs the Sardinas–Patterson test as a breadth-first search over dangling suffixes,
    keeping both parses, so that when the code is not uniquely decodable it returns a
    concrete witness. A code can fail to be prefix-free and still be uniquely decodable
    (``{0, 01}``): then the result is ``None``.

    Args:
        codewords: a mapping symbol → codeword (parses are given as symbols) or a
            sequence of codewords (parses are given as codewords).

    Returns:
        An :class:`Ambiguity` ``(bits, first, second)``, or ``None``.

    Raises:
        ValueError: a codeword is empty or not made of 0 and 1.
        TypeError: as :func:`is_prefix_free`.

    Examples:
        >>> find_ambiguity({"A": "0", "B": "10", "C": "11", "D": "111"})
        Ambiguity(bits='1110', first=('C', 'B'), second=('D', 'A'))
        >>> find_ambiguity(["0", "01"]) is None
        True

    References:
        A. A. Sardinas and G. W. Patterson, "A necessary and sufficient condition for the
        unique decomposition of coded messages", IRE Convention Record, 1953.
    """
    if isinstance(codewords, Mapping):
        items = [(word, symbol) for symbol, word in codewords.items()]
        _check_codewords(word for word, _ in items)
    else:
        items = [(word, word) for word in _words_of(codewords)]
    seen_words: dict[str, Any] = {}
    for word, label in items:
        if word in seen_words:
            return Ambiguity(word, (seen_words[word],), (label,))
        seen_words[word] = label
    # State: the parse that is behind, the one ahead, and the dangling suffix by which
    # the ahead parse leads. Searching in order of the ahead parse's bit length makes the
    # first witness found a shortest one.
    word_of = {label: word for word, label in items}
    heap: list[tuple[int, int, str, tuple, tuple]] = []
    tick = 0
    for u, lu in items:
        for v, lv in items:
            if u != v and v.startswith(u):
                heapq.heappush(heap, (len(v), tick, v[len(u) :], (lu,), (lv,)))
                tick += 1
    visited: set[str] = set()
    while heap:
        cost, _, dangling, behind, ahead = heapq.heappop(heap)
        if dangling in visited:
            continue
        visited.add(dangling)
        for w, lw in items:
            if w == dangling:
                first, second = (*behind, lw), ahead
                lengths = (
                    tuple(len(word_of[x]) for x in first),
                    tuple(len(word_of[x]) for x in second),
                )
                if lengths[1] < lengths[0]:
                    first, second = second, first
                return Ambiguity("".join(word_of[x] for x in ahead), first, second)
            if dangling.startswith(w):
                heapq.heappush(heap, (cost, tick, dangling[len(w) :], (*behind, lw), ahead))
            elif w.startswith(dangling):
                heapq.heappush(
                    heap,
                    (cost + len(w) - len(dangling), tick, w[len(dangling) :], ahead, (*behind, lw)),
                )
            tick += 1
    return None


def _check_probabilities(probabilities: Any) -> tuple[list[Hashable], np.ndarray]:
    if isinstance(probabilities, Mapping):
        symbols = list(probabilities.keys())
        values: Any = list(probabilities.values())
    else:
        symbols = None
        values = probabilities
    try:
        raw = np.asarray(values)
    except (TypeError, ValueError):
        raw = np.asarray([None])  # ragged: reported below
    if raw.dtype.kind not in "biuf":
        raise TypeError(
            "`probabilities` must be a mapping symbol -> probability or a 1-D array of "
            f"real numbers; got {probabilities!r:.100}"
        )
    if symbols is not None and raw.ndim != 1:
        raise TypeError(f"`probabilities` must map symbols to numbers; got {probabilities!r:.100}")
    p = raw.astype(np.float64)
    if p.ndim != 1:
        raise ValueError(f"`probabilities` must be a mapping or a 1-D array; got shape {p.shape}")
    if symbols is None:
        symbols = list(range(p.shape[0]))
    if p.size == 0:
        raise ValueError("`probabilities` must have at least one symbol; got none")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"`probabilities` must be finite and non-negative; got {p.tolist()}")
    total = float(p.sum())
    # Relative to the input's precision, so that float32 or float16 probabilities
    # normalised in their own dtype are accepted; V · eps(float64) bounds the rounding of
    # the float64 sum itself, which matters only for tens of millions of symbols.
    precision = raw.dtype if raw.dtype.kind == "f" else np.dtype(np.float64)
    tolerance = max(float(np.finfo(precision).eps) ** 0.5, p.size * float(np.finfo(np.float64).eps))
    if abs(total - 1.0) > tolerance:
        raise ValueError(
            f"`probabilities` must sum to 1; got sum {total!r}; normalise with `info.normalize(p)`"
        )
    return symbols, p


def huffman_code(probabilities: Mapping[Hashable, float] | Any) -> PrefixCode:
    """The Huffman code of a distribution, with canonical codewords.

    Huffman's algorithm merges the two least probable nodes until one tree remains; the
    depths are optimal codeword lengths (least expected length among all prefix codes),
    so ``H(p) <= expected_length(p) < H(p) + 1``.

    Tie-break (deterministic): nodes are ordered by probability; among equal
    probabilities a symbol listed *later* is merged first, and merged nodes are merged
    after single symbols (the rule that also keeps the longest codeword short). So a
    symbol never gets a longer codeword than a later-listed symbol of equal probability.
    Codewords are then assigned canonically: symbols sorted by (length, listing order)
    receive consecutive binary numbers, so the code depends only on the lengths.

    A one-symbol alphabet gets the codeword ``"0"`` (one bit per symbol, so that a
    message's length is still readable from its bits). Symbols of probability 0 get
    (long) codewords too, so every symbol of the alphabet can be encoded.

    Args:
        probabilities: a mapping symbol → probability, or a 1-D array of V
            probabilities (the symbols are then ``0 .. V-1``). Must be non-negative and
            sum to 1 within ``sqrt(eps)`` of the input's float dtype (1.5e-8 for float64
            and for integers, 3.5e-4 for float32), as :mod:`crossentropy.info` asks, or
            within V · 2^-52 if that is larger.

    Returns:
        A :class:`PrefixCode`.

    Raises:
        ValueError: empty, negative, non-finite, or not summing to 1.
        TypeError: a probability is not a number.

    Examples:
        >>> code = huffman_code({"A": .5, "B": .2, "C": .2, "D": .1})
        >>> code.codewords
        {'A': '0', 'B': '10', 'C': '110', 'D': '111'}
        >>> round(code.expected_length({"A": .5, "B": .2, "C": .2, "D": .1}), 6)
        1.8
        >>> len(code.encode("ABCAADABCA"))     # the seed's message: 18 bits
        18

    References:
        D. A. Huffman, "A method for the construction of minimum-redundancy codes",
        Proc. IRE 40(9), 1952. E. S. Schwartz and B. Kallick, "Generating a canonical
        prefix encoding", CACM 7(3), 1964.
    """
    symbols, p = _check_probabilities(probabilities)
    n = len(symbols)
    if n == 1:
        return PrefixCode({symbols[0]: "0"})
    # Heap entries: (weight, -rank, node id). Leaves have rank = listing index (popped
    # latest-listed first among ties); merged nodes have negative ranks (popped last).
    heap: list[tuple[float, int, int]] = [(float(p[i]), -i, i) for i in range(n)]
    heapq.heapify(heap)
    children: dict[int, tuple[int, int]] = {}
    next_id = n
    merged = 0
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        merged += 1
        children[next_id] = (a, b)
        heapq.heappush(heap, (w1 + w2, merged, next_id))
        next_id += 1
    lengths = [0] * n
    stack = [(heap[0][2], 0)]
    while stack:
        node, depth = stack.pop()
        if node < n:
            lengths[node] = depth
        else:
            a, b = children[node]
            stack.append((a, depth + 1))
            stack.append((b, depth + 1))
    return PrefixCode.canonical(dict(zip(symbols, lengths, strict=True)))


def fixed_length_code(symbols: Iterable[Hashable]) -> PrefixCode:
    """The fixed-length code: ``ceil(log2 V)`` bits per symbol (at least 1), in listing order.

    Args:
        symbols: the V distinct symbols (an iterable such as ``"ABCD"`` or a list).

    Returns:
        A :class:`PrefixCode` whose i-th symbol gets the binary number i.

    Raises:
        ValueError: no symbols, or a repeated symbol.
        TypeError: ``symbols`` is not iterable, or a symbol is not hashable.

    Examples:
        >>> fixed_length_code("ABCD").codewords        # the seed's code 1
        {'A': '00', 'B': '01', 'C': '10', 'D': '11'}
        >>> len(fixed_length_code("ABCD").encode("ABCAADABCA"))
        20
    """
    try:
        items = list(symbols)
        distinct = len(set(items))
    except TypeError:
        raise TypeError(
            f"`symbols` must be an iterable of hashable symbols; got {symbols!r:.100}"
        ) from None
    if not items:
        raise ValueError("`symbols` must hold at least one symbol; got none")
    if distinct != len(items):
        raise ValueError(f"`symbols` must be distinct; got {items!r}")
    width = max(1, (len(items) - 1).bit_length())
    return PrefixCode({s: format(i, f"0{width}b") for i, s in enumerate(items)})


class PrefixCode:
    """A prefix code: a mapping symbol → codeword, with encoding and decoding.

    Args:
        codewords: a mapping symbol → codeword (a non-empty string of ``'0'``/``'1'``).
            The code must be prefix-free, so that decoding is instantaneous.

    Raises:
        ValueError: the mapping is empty, a codeword is empty or holds a character other
            than 0 and 1, or the code is not prefix-free; the message gives a concrete
            ambiguous bit string when one exists (see :func:`find_ambiguity`).
        TypeError: ``codewords`` is not a mapping, or a codeword is not a string.

    Examples:
        >>> PrefixCode({"A": "0", "B": "10", "C": "11", "D": "111"})
        Traceback (most recent call last):
        ...
        ValueError: `codewords` must be prefix-free; got '11' (C) a prefix of '111' (D), \
Kraft sum 1.125 > 1; '1110' reads as C B and as D A
        >>> code = PrefixCode({"A": "0", "B": "10", "C": "110", "D": "111"})
        >>> code.decode(code.encode("ABCAADABCA")) == list("ABCAADABCA")
        True
    """

    def __init__(self, codewords: Mapping[Hashable, str]) -> None:
        if not isinstance(codewords, Mapping):
            raise TypeError(
                f"`codewords` must be a mapping symbol -> codeword; got {type(codewords).__name__}"
            )
        if not codewords:
            raise ValueError("`codewords` must hold at least one symbol; got none")
        _check_codewords(codewords.values())
        if not is_prefix_free(codewords):
            raise ValueError(_prefix_violation(codewords))
        self._codewords = dict(codewords)
        self._decode_table = {word: symbol for symbol, word in self._codewords.items()}

    @classmethod
    def canonical(cls, lengths: Mapping[Hashable, int]) -> PrefixCode:
        """The canonical prefix code with the given lengths (symbols in listing order).

        Symbols sorted by (length, listing order) get consecutive binary numbers, each
        shifted left when the length grows.

        Raises:
            ValueError: no symbols, a length is not a positive integer, or the Kraft sum
                exceeds 1.
            TypeError: ``lengths`` is not a mapping.

        Examples:
            >>> PrefixCode.canonical({"x": 2, "y": 1, "z": 2}).codewords
            {'x': '10', 'y': '0', 'z': '11'}
        """
        if not isinstance(lengths, Mapping):
            raise TypeError(
                f"`lengths` must be a mapping symbol -> length; got {type(lengths).__name__}"
            )
        if not lengths:
            raise ValueError("`lengths` must hold at least one symbol; got none")
        for symbol, length in lengths.items():
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
                raise ValueError(
                    f"`lengths` must be positive integers; got {length!r} for {symbol!r}"
                )
        if kraft_sum(lengths) > 1.0:
            raise ValueError(f"`lengths` must have Kraft sum <= 1; got {kraft_sum(lengths)!r}")
        keys = list(lengths.keys())
        values = list(lengths.values())
        order = sorted(range(len(values)), key=lambda i: (values[i], i))
        words: dict[Hashable, str] = {}
        code = 0
        previous = values[order[0]]
        for rank, i in enumerate(order):
            length = int(values[i])
            if rank:
                code = (code + 1) << (length - previous)
            words[keys[i]] = format(code, f"0{length}b")
            previous = length
        return cls({key: words[key] for key in keys})

    @property
    def codewords(self) -> dict[Hashable, str]:
        """A copy of the mapping symbol → codeword, in listing order."""
        return dict(self._codewords)

    @property
    def lengths(self) -> dict[Hashable, int]:
        """The mapping symbol → codeword length in bits."""
        return {s: len(w) for s, w in self._codewords.items()}

    @property
    def symbols(self) -> list[Hashable]:
        """The symbols, in listing order."""
        return list(self._codewords)

    def expected_length(self, probabilities: Mapping[Hashable, float] | Any) -> float:
        """The mean codeword length Σ p(x) l(x) in bits per symbol.

        Args:
            probabilities: a mapping symbol → probability over this code's symbols, or an
                array aligned with :attr:`symbols`.

        Returns:
            Bits per symbol.

        Raises:
            ValueError: not a distribution over this code's symbols (an unknown symbol,
                the wrong number of entries, a negative or non-finite entry, a sum off 1).
            TypeError: a probability is not a real number.
        """
        if isinstance(probabilities, Mapping):
            unknown = set(probabilities) - set(self._codewords)
            if unknown:
                raise ValueError(
                    f"`probabilities` must be over the code's symbols; got unknown {unknown!r}"
                )
            p = [probabilities.get(s, 0.0) for s in self._codewords]
        else:
            p = probabilities
        _, values = _check_probabilities(p)
        if values.shape[0] != len(self._codewords):
            raise ValueError(
                f"`probabilities` must have one entry per symbol ({len(self._codewords)}); "
                f"got {values.shape[0]}"
            )
        lengths = np.array([len(w) for w in self._codewords.values()], dtype=np.float64)
        return float(values @ lengths)

    def encode(self, symbols: Iterable[Hashable]) -> str:
        """The concatenated codewords of ``symbols``, as a string of ``'0'`` and ``'1'``.

        Raises:
            ValueError: a symbol is not in the code.
            TypeError: ``symbols`` is not iterable.
        """
        try:
            items = iter(symbols)
        except TypeError:
            raise TypeError(
                f"`symbols` must be an iterable of symbols; got {type(symbols).__name__}"
            ) from None
        out = []
        for position, symbol in enumerate(items):
            try:
                out.append(self._codewords[symbol])
            except (KeyError, TypeError):
                raise ValueError(
                    f"`symbols` must be symbols of this code; got {symbol!r} at position {position}"
                ) from None
        return "".join(out)

    def decode(self, bits: str) -> list[Hashable]:
        """The symbols whose codewords concatenate to ``bits``.

        Raises:
            DecodeError: ``bits`` holds a character other than 0/1, ends inside a
                codeword, or holds a pattern that is no codeword (an incomplete code).
            TypeError: ``bits`` is not a string.
        """
        if not isinstance(bits, str):
            raise TypeError(f"`bits` must be a string of '0' and '1'; got {type(bits).__name__}")
        bad = set(bits) - {"0", "1"}
        if bad:
            raise DecodeError(f"`bits` must hold only '0' and '1'; got {sorted(bad)!r}")
        longest = max(len(w) for w in self._decode_table)
        table = self._decode_table
        out: list[Hashable] = []
        start = 0
        end = 1
        n = len(bits)
        while start < n:
            if end > n:
                raise DecodeError(
                    f"`bits` ends inside a codeword: {bits[start:]!r} is left after "
                    f"{len(out)} symbols"
                )
            symbol_found = table.get(bits[start:end], _MISSING)
            if symbol_found is not _MISSING:
                out.append(symbol_found)
                start = end
                end = start + 1
            elif end - start >= longest:
                raise DecodeError(
                    f"`bits` holds {bits[start:end]!r} at bit {start}, which starts no "
                    "codeword (the code is not complete)"
                )
            else:
                end += 1
        return out

    def __repr__(self) -> str:
        return f"PrefixCode({self._codewords!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrefixCode):
            return NotImplemented
        return list(self._codewords.items()) == list(other._codewords.items())

    def __hash__(self) -> int:
        return hash(tuple(self._codewords.items()))


_MISSING = object()


def _prefix_violation(codewords: Mapping[Hashable, str]) -> str:
    items = list(codewords.items())
    pair = None
    for sa, a in items:
        for sb, b in items:
            if sa != sb and b.startswith(a):
                pair = (sa, a, sb, b)
                break
        if pair:
            break
    assert pair is not None  # only called when the code is not prefix-free
    sa, a, sb, b = pair
    relation = "equal to" if a == b else "a prefix of"
    message = f"`codewords` must be prefix-free; got {a!r} ({sa}) {relation} {b!r} ({sb})"
    total = kraft_sum(len(w) for w in codewords.values())
    if total > 1:
        message += f", Kraft sum {total!r} > 1"
    witness = find_ambiguity(codewords)
    if witness is not None:
        message += (
            f"; {witness.bits!r} reads as {' '.join(map(str, witness.first))} "
            f"and as {' '.join(map(str, witness.second))}"
        )
    else:
        message += "; the code is uniquely decodable but needs lookahead"
    return message
