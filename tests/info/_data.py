"""Random test distributions and the tolerances each dtype allows against the float64 oracle."""

from __future__ import annotations

import numpy as np

# Relative and absolute tolerance against the float64 reference, per dtype: a few hundred
# ulps in float64, about a hundred ulps of float32 (sums of up to ~1000 float32 terms).
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


def distributions(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    axis: int = -1,
    zero_fraction: float = 0.2,
    dtype: type = np.float64,
) -> np.ndarray:
    """Random distributions along ``axis`` with about ``zero_fraction`` of exact zeros.

    Skewed (cubed uniforms) so that entropies are not all near the maximum; every slice
    keeps at least one positive entry. Normalised in float64, then cast to ``dtype``.
    """
    weights = rng.random(shape) ** 3
    weights[rng.random(shape) < zero_fraction] = 0.0
    moved = np.moveaxis(weights, axis, -1)
    empty = moved.sum(axis=-1) == 0
    moved[empty, 0] = 1.0
    weights = np.moveaxis(moved, -1, axis)
    return (weights / weights.sum(axis=axis, keepdims=True)).astype(dtype)


def positive_distributions(
    rng: np.random.Generator, shape: tuple[int, ...], *, dtype: type = np.float64
) -> np.ndarray:
    """Random distributions along the last axis with every entry > 0."""
    weights = rng.random(shape) + 1e-3
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(dtype)


def term_sizes(name: str, p: np.ndarray, q: np.ndarray, base: float = 2) -> np.ndarray:
    """Per row (last axis), the sum of the sizes of divergence ``name``'s terms, in float64
    (of p's and of q's apart for the Jensen-Shannon divergence, whose two cancel where p
    and q are close): the scale of the rounding error of any way of summing them."""
    p, q = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "kl_divergence":
            sizes = np.where(p > 0, np.abs(p * (np.log(p) - np.log(q))), 0)
        else:
            m = (p + q) / 2
            sizes = np.where(p > 0, np.abs(p * (np.log(p) - np.log(m))), 0)
            sizes += np.where(q > 0, np.abs(q * (np.log(q) - np.log(m))), 0)
    return sizes.sum(axis=-1) / abs(np.log(base))


def assert_same_divergence(
    name: str, actual, expected, p, q, *, base: float = 2, dtype: type = np.float64
) -> None:
    """Two computations of divergence ``name`` of ``p`` and ``q`` (the blocked path's and
    the plain path's) agree: within 16 sqrt(n) roundings of ``dtype`` of the sum of the
    terms' sizes (:func:`term_sizes`), and infinite in the same rows. The compiled kernel
    forms the terms with other logs and sums them in float64, so its numbers are not
    NumPy's to the bit; a wrong or missing term would miss by far more than this."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    p, q = np.asarray(p), np.asarray(q)
    sizes = term_sizes(name, p, q, base)
    bound = 16 * np.sqrt(p.shape[-1]) * np.finfo(dtype).eps * sizes
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    difference = np.abs(actual[finite] - expected[finite])
    assert np.all(difference <= bound[finite]), (difference - bound[finite]).max()
