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
