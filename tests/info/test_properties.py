"""Hypothesis properties: the identities and inequalities the measures must obey."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import info
from tests.info.strategies import distribution_arrays, distribution_pairs

# Float64 slack for identities between sums of at most a dozen terms of size <= log2(1e9).
SLACK = 1e-12


@given(distribution_pairs())
def test_gibbs_inequality(pair):
    p, q = pair
    h = info.entropy(p)
    h_pq = info.cross_entropy(p, q)
    assert h_pq >= h - SLACK
    assert info.kl_divergence(p, q) >= -SLACK


@given(distribution_arrays())
def test_divergences_vanish_exactly_at_q_equal_p(p):
    assert info.kl_divergence(p, p) == 0.0
    assert info.js_divergence(p, p) == 0.0
    assert info.cross_entropy(p, p) == info.entropy(p)


@given(distribution_pairs())
def test_cross_entropy_is_entropy_plus_divergence(pair):
    p, q = pair
    h_pq = info.cross_entropy(p, q)
    total = info.entropy(p) + info.kl_divergence(p, q)
    if math.isinf(h_pq):
        assert total == math.inf
    else:
        assert abs(h_pq - total) <= SLACK * max(1.0, h_pq)


@given(distribution_arrays())
def test_entropy_between_zero_and_log_n(p):
    h = info.entropy(p)
    assert 0.0 <= h <= math.log2(p.size) + SLACK
    assert 1.0 - SLACK <= info.perplexity(p) <= p.size * (1 + SLACK)


@given(distribution_pairs(), st.sampled_from([math.e, 10.0, 3.0, 0.5]))
def test_change_of_base(pair, base):
    p, q = pair
    factor = math.log(2) / math.log(base)  # log_b x = log2 x * ln 2 / ln b
    for name, args in (
        ("entropy", (p,)),
        ("cross_entropy", (p, q)),
        ("kl_divergence", (p, q)),
        ("js_divergence", (p, q)),
    ):
        bits = getattr(info, name)(*args)
        other = getattr(info, name)(*args, base=base)
        if math.isinf(bits):
            assert other == math.copysign(math.inf, factor)
        else:
            assert abs(other - bits * factor) <= SLACK * max(1.0, abs(other))


@given(distribution_pairs(), st.randoms(use_true_random=False))
def test_permutation_invariance(pair, random):
    p, q = pair
    order = list(range(p.size))
    random.shuffle(order)
    for name, args in (
        ("entropy", (p,)),
        ("cross_entropy", (p, q)),
        ("kl_divergence", (p, q)),
        ("js_divergence", (p, q)),
    ):
        before = getattr(info, name)(*args)
        after = getattr(info, name)(*(a[order] for a in args))
        assert after == before or abs(after - before) <= SLACK * max(1.0, abs(before))


@given(distribution_pairs())
def test_js_is_symmetric_and_bounded_by_one_bit(pair):
    p, q = pair
    js = info.js_divergence(p, q)
    assert -SLACK <= js <= 1.0 + SLACK
    assert abs(js - info.js_divergence(q, p)) <= SLACK


@given(st.floats(0.0, 1.0))
def test_binary_entropy_is_the_entropy_of_a_coin(x):
    h = info.binary_entropy(x)
    assert abs(h - info.entropy([x, 1.0 - x])) <= SLACK
    assert abs(h - info.binary_entropy(1.0 - x)) <= SLACK
    assert 0.0 <= h <= 1.0


@given(
    st.integers(0, 2),
    st.lists(st.integers(1, 5), min_size=3, max_size=3),
    st.integers(0, 2**32 - 1),
)
def test_axis_k_equals_moving_the_axis_last(axis, shape, seed):
    rng = np.random.default_rng(seed)
    weights = rng.random(shape) ** 2 + 1e-12
    p = weights / weights.sum(axis=axis, keepdims=True)
    weights = rng.random(shape) + 1e-3
    q = weights / weights.sum(axis=axis, keepdims=True)
    for name, args in (
        ("entropy", (p,)),
        ("cross_entropy", (p, q)),
        ("kl_divergence", (p, q)),
        ("js_divergence", (p, q)),
    ):
        along = getattr(info, name)(*args, axis=axis)
        moved = getattr(info, name)(*(np.moveaxis(a, axis, -1) for a in args))
        np.testing.assert_allclose(along, moved, rtol=1e-14, atol=1e-15)


@given(distribution_arrays(min_size=2), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_broadcast_equals_explicit_repeat(p, rows, seed):
    rng = np.random.default_rng(seed)
    weights = rng.random((rows, p.size)) + 1e-3
    q = weights / weights.sum(axis=-1, keepdims=True)
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        broadcast = getattr(info, name)(p, q)
        explicit = getattr(info, name)(np.repeat(p[None, :], rows, axis=0), q)
        np.testing.assert_array_equal(broadcast, explicit)
        reversed_ = getattr(info, name)(q, p)
        np.testing.assert_array_equal(
            reversed_, getattr(info, name)(q, np.repeat(p[None, :], rows, axis=0))
        )


@given(st.lists(st.floats(0.0, 1e6), min_size=1, max_size=10).filter(lambda w: sum(w) > 0))
def test_normalize_gives_a_distribution_proportional_to_the_weights(weights):
    p = info.normalize(weights)
    assert abs(p.sum() - 1.0) <= 1e-12
    total = math.fsum(weights)
    np.testing.assert_allclose(p, np.array(weights) / total, rtol=1e-15, atol=0)
    info.entropy(p)  # passes the distribution check
