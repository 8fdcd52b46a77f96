"""Float64 references written as the math reads: plain loops over the outcomes.

Each function takes one distribution (a sequence of Python floats) and follows its
textbook definition term by term, with the conventions of Cover and Thomas (2006):
0 · log 0 = 0, and p > 0 where q = 0 makes the cross-entropy and the divergence infinite.
Sums use ``math.fsum`` (the correctly rounded sum), so the reference is as exact as
float64 allows. ``along`` applies a reference along one axis of NumPy arrays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np


def log(x: float, base: float = 2) -> float:
    """log_base x, with log 0 = -inf (+inf for a base below 1)."""
    if x == 0:
        return -math.inf if base > 1 else math.inf
    if base == 2:
        return math.log2(x)
    return math.log(x) / math.log(base)


def information(p: float, base: float = 2) -> float:
    """I(x) = -log_b p(x)."""
    return -log(p, base)


def entropy(p: Sequence[float], base: float = 2) -> float:
    """H(P) = -Σ_x p(x) log_b p(x), skipping p(x) = 0."""
    terms = []
    for px in p:
        if px > 0:
            terms.append(px * log(px, base))
    return -math.fsum(terms)


def cross_entropy(p: Sequence[float], q: Sequence[float], base: float = 2) -> float:
    """H(P, Q) = -Σ_x p(x) log_b q(x), skipping p(x) = 0; +inf if p(x) > 0 = q(x)."""
    terms = []
    for px, qx in zip(p, q, strict=True):
        if px > 0:
            terms.append(px * log(qx, base))
    return -math.fsum(terms)


def kl_divergence(p: Sequence[float], q: Sequence[float], base: float = 2) -> float:
    """D(P‖Q) = Σ_x p(x) log_b(p(x) / q(x)), skipping p(x) = 0; +inf if p(x) > 0 = q(x)."""
    terms = []
    for px, qx in zip(p, q, strict=True):
        if px > 0:
            if qx == 0:
                return -log(0.0, base)
            terms.append(px * log(px / qx, base))
    return math.fsum(terms)


def js_divergence(p: Sequence[float], q: Sequence[float], base: float = 2) -> float:
    """JS(P, Q) = ½ D(P‖M) + ½ D(Q‖M), M = ½ (P + Q)."""
    m = [(px + qx) / 2 for px, qx in zip(p, q, strict=True)]
    return 0.5 * kl_divergence(p, m, base) + 0.5 * kl_divergence(q, m, base)


def binary_entropy(p: float, base: float = 2) -> float:
    """h(p) = -p log_b p - (1 - p) log_b (1 - p), with 0 · log 0 = 0."""
    return entropy([p, 1 - p], base)


def perplexity(p: Sequence[float]) -> float:
    """2 ** H(P) in bits."""
    return 2.0 ** entropy(p, 2)


def normalize(x: Sequence[float]) -> list[float]:
    """x / Σ x."""
    total = math.fsum(x)
    return [v / total for v in x]


def along(
    fn: Callable[..., float], *arrays: np.ndarray, axis: int = -1, **options: object
) -> np.ndarray:
    """Apply a one-distribution reference along ``axis`` of broadcast float64 arrays."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in arrays))
    moved = [np.moveaxis(a, axis, -1) for a in arrays]
    shape = moved[0].shape[:-1]
    out = np.empty(shape, dtype=np.float64)
    for index in itertools.product(*(range(n) for n in shape)):
        rows = [m[index].tolist() for m in moved]
        out[index] = fn(*rows, **options)
    return out
