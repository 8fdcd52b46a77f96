"""Independent implementations as second oracles: SciPy (and torch's own Categorical entropy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy import info
from tests.info._data import TOLERANCE, distributions, positive_distributions

scipy_stats = pytest.importorskip("scipy.stats")
scipy_distance = pytest.importorskip("scipy.spatial.distance")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3,), (17, 5), (4, 2, 9)])
@pytest.mark.parametrize("base", [2, math.e, 3])
def test_entropy_and_kl_match_scipy(xp, rng, dtype, shape, base):
    p = distributions(rng, shape, dtype=dtype)
    q = positive_distributions(rng, shape, dtype=dtype)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    tol = TOLERANCE[dtype]
    got = xp.to_numpy(info.entropy(xp.asarray(p, dtype), base=base))
    np.testing.assert_allclose(
        got, scipy_stats.entropy(p64, base=base, axis=-1), rtol=tol, atol=tol
    )
    got = xp.to_numpy(info.kl_divergence(xp.asarray(p, dtype), xp.asarray(q, dtype), base=base))
    expected = scipy_stats.entropy(p64, q64, base=base, axis=-1)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    got = xp.to_numpy(info.cross_entropy(xp.asarray(p, dtype), xp.asarray(q, dtype), base=base))
    expected = scipy_stats.entropy(p64, base=base, axis=-1) + expected
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("base", [2, math.e])
def test_js_is_the_square_of_scipys_jensen_shannon_distance(xp, rng, base):
    p = distributions(rng, (12, 8))
    q = distributions(rng, (12, 8))
    got = xp.to_numpy(info.js_divergence(xp.asarray(p), xp.asarray(q), base=base))
    expected = scipy_distance.jensenshannon(p, q, base=base, axis=-1) ** 2
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_entropy_matches_scipy_special_entr(rng):
    scipy_special = pytest.importorskip("scipy.special")
    p = distributions(rng, (20, 33))
    expected = scipy_special.entr(p).sum(axis=-1)  # nats
    np.testing.assert_allclose(info.entropy(p, base=math.e), expected, rtol=1e-12)


def test_entropy_matches_torch_categorical(rng):
    torch = pytest.importorskip("torch")
    p = distributions(rng, (9, 14))
    expected = torch.distributions.Categorical(probs=torch.from_numpy(p)).entropy().numpy()
    np.testing.assert_allclose(info.entropy(p, base=math.e), expected, rtol=1e-12)


def test_binary_entropy_matches_scipy_bernoulli(rng):
    x = rng.random(50)
    expected = scipy_stats.bernoulli(x).entropy() / math.log(2)
    np.testing.assert_allclose(info.binary_entropy(x), expected, rtol=1e-12)
