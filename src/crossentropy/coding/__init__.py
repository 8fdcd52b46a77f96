"""Codes that make the bits real: prefix codes, arithmetic coding, and a compressor.

The seed's claim is that entropy and cross-entropy are numbers of bits. This package
measures them. A prefix code assigns each symbol a codeword of ``l(x)`` bits; Kraft's
inequality Σ 2^(−l(x)) ≤ 1 says which lengths are possible, and Huffman's algorithm finds
the lengths of least mean, which lie within one bit of the entropy:
``H(P) <= L < H(P) + 1``. An arithmetic (range) coder removes the rounding to whole bits:
coding a message with a model Q costs −log2 Q(message) bits plus a small constant, so on
data from P it spends H(P, Q) = H(P) + D(P‖Q) bits per symbol in the long run. The
Kullback–Leibler divergence is the price of the wrong model, in bits.

- :func:`huffman_code`, :func:`fixed_length_code`, :class:`PrefixCode`, :func:`kraft_sum`,
  :func:`is_prefix_free`, :func:`find_ambiguity`: symbol codes, checked.
- :func:`arithmetic_encode`, :func:`arithmetic_decode`, :func:`information_content`,
  :func:`quantized_model`: range coding through constriction with a fixed or a
  per-position model. The coder rounds the model to multiples of 2^-24 (every symbol at
  least 2^-24), so it spends the information content under that quantised model plus
  less than 64 bits; for an alphabet of V symbols that is at most −log2(1 − V · 2^-24)
  bits per symbol above −log2 Q (negligible for bytes).
- :func:`compress`, :func:`decompress`, :data:`MODELS`: a self-describing container for
  bytes, with an order-0 model and an adaptive context model (orders 1-6 blended).
- :func:`entropy_report`: a byte string's bits per byte under every measure and coder,
  beside gzip, bz2 and xz.

Corrupt, truncated or foreign coded data raises :class:`DecodeError` (a ``ValueError``).

Examples:
    >>> from crossentropy import coding
    >>> code = coding.huffman_code({"A": .5, "B": .2, "C": .2, "D": .1})
    >>> code.encode("ABCAADABCA")
    '010110001110101100'
    >>> blob = coding.compress(b"abracadabra" * 10)
    >>> coding.decompress(blob) == b"abracadabra" * 10
    True

References:
    C. E. Shannon, "A mathematical theory of communication", 1948. T. M. Cover and
    J. A. Thomas, *Elements of Information Theory*, 2nd ed., 2006, chapter 5.
"""

from crossentropy._errors import DecodeError
from crossentropy.coding._arithmetic import (
    arithmetic_decode,
    arithmetic_encode,
    information_content,
    quantized_model,
)
from crossentropy.coding._container import MODELS, compress, decompress
from crossentropy.coding._prefix import (
    Ambiguity,
    PrefixCode,
    find_ambiguity,
    fixed_length_code,
    huffman_code,
    is_prefix_free,
    kraft_sum,
)
from crossentropy.coding._report import entropy_report

__all__ = [
    "MODELS",
    "Ambiguity",
    "DecodeError",
    "PrefixCode",
    "arithmetic_decode",
    "arithmetic_encode",
    "compress",
    "decompress",
    "entropy_report",
    "find_ambiguity",
    "fixed_length_code",
    "huffman_code",
    "information_content",
    "is_prefix_free",
    "kraft_sum",
    "quantized_model",
]
