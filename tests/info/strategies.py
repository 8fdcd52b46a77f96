"""Hypothesis strategies for distributions (float64, with exact zeros among the outcomes)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

WEIGHTS = st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.floats(0.1, 1.0))


@st.composite
def distribution_arrays(
    draw, n=None, *, positive: bool = False, min_size: int = 1, max_size: int = 12
):
    """One float64 distribution of length ``n`` (drawn when None)."""
    if n is None:
        n = draw(st.integers(min_size, max_size))
    element = st.floats(1e-6, 1.0) if positive else WEIGHTS
    weights = np.array(draw(st.lists(element, min_size=n, max_size=n)), dtype=np.float64)
    if weights.sum() == 0:
        weights[draw(st.integers(0, n - 1))] = 1.0
    return weights / weights.sum()


@st.composite
def distribution_pairs(draw, *, q_positive: bool = False, min_size: int = 1):
    """Two distributions over the same number of outcomes."""
    n = draw(st.integers(min_size, 12))
    return draw(distribution_arrays(n)), draw(distribution_arrays(n, positive=q_positive))
