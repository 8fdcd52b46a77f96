"""Edge cases at the limits of floating point and of the input types: subnormal
probabilities, half and bfloat16 error paths, and the options' own type checks."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import info

scipy_distance = pytest.importorskip("scipy.spatial.distance")

# The smallest positive (subnormal) number of each NumPy float dtype.
SMALLEST = {dtype: np.finfo(dtype).smallest_subnormal for dtype in (np.float16, np.float32)}
SMALLEST[np.float64] = np.finfo(np.float64).smallest_subnormal


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_js_stays_finite_at_the_smallest_subnormal(xp, dtype):
    # p = [1, s], q = [1, 0] with s the smallest subnormal: halving p + q = s would round
    # the mixture to 0 and make the term s log(s / 0) infinite. JS is at most the total
    # variation distance s / 2 (Lin 1991), so it must be 0 or s once rounded.
    s = SMALLEST[dtype]
    p = xp.asarray(np.array([1.0, s], dtype=dtype), dtype)
    q = xp.asarray(np.array([1.0, 0.0], dtype=dtype), dtype)
    for got in (info.js_divergence(p, q), info.js_divergence(q, p)):
        value = float(xp.to_numpy(got))
        assert 0.0 <= value <= float(s)


@given(
    st.lists(
        st.sampled_from([0.0, 1.0, 2.0, 3.0, 1e-3, 0.25]),
        min_size=2,
        max_size=8,
    ).filter(lambda w: sum(w) > 0),
    st.data(),
)
def test_js_with_subnormal_entries_matches_scipy_in_float64(weights, data):
    # float32 distributions whose zeros are partly replaced by float32 subnormals; float64
    # holds every float32 value exactly, so SciPy on the upcast arrays is the oracle.
    n = len(weights)
    p = np.asarray(weights, dtype=np.float32)
    p /= p.sum()
    tiny = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    q = np.where(np.asarray(tiny) > 0, np.asarray(tiny, np.float32) * SMALLEST[np.float32], 0)
    q = q.astype(np.float32)
    q[data.draw(st.integers(0, n - 1))] = 1.0
    q[q == 1.0] -= q.sum() - 1.0  # the subnormals vanish from the sum in float32
    got = info.js_divergence(p, q)
    assert got.dtype == np.float32
    expected = scipy_distance.jensenshannon(p.astype(np.float64), q.astype(np.float64), base=2)
    assert np.isfinite(got)
    assert float(got) == pytest.approx(expected**2, rel=1e-5, abs=1e-6)


BFLOAT16_BAD = [
    ([0.5, 0.375], "entropy", r"`p` must sum to 1 along axis -1 \(within [0-9.e-]+ for bfloat16\)"),
    ([-0.5, 1.5], "entropy", r"`p` must be non-negative; got -0\.5 at index \(0,\)"),
    ([float("nan"), 1.0], "entropy", r"`p` must contain no NaN; got 1 NaN entry"),
    ([0.5, 1.5], "information", r"`p` must contain probabilities in \[0, 1\]; got 1\.5 at"),
    ([0.5, 1.5], "binary_entropy", r"`p` must contain probabilities in \[0, 1\]; got 1\.5 at"),
    ([-1.0, 1.0], "normalize", r"`x` must be non-negative; got -1 at index \(0,\)"),
]


@pytest.mark.parametrize(("values", "name", "message"), BFLOAT16_BAD)
def test_bfloat16_bad_input_gets_the_message_not_a_conversion_error(values, name, message):
    # NumPy has no bfloat16: the message's NumPy copy of the values used to fail first.
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=message):
        getattr(info, name)(torch.tensor(values, dtype=torch.bfloat16))


def test_bfloat16_pair_names_the_bad_argument():
    torch = pytest.importorskip("torch")
    good = torch.tensor([0.5, 0.5], dtype=torch.bfloat16)
    bad = torch.tensor([0.5, 0.625], dtype=torch.bfloat16)
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        with pytest.raises(ValueError, match=r"`q` must sum to 1 .* for bfloat16\); got a sum"):
            getattr(info, name)(good, bad)


def test_bfloat16_distributions_rounded_from_exact_ones_are_accepted():
    # Rounding each entry of an exact distribution to bfloat16 (8 significant bits) can
    # leave a bfloat16 sum of 1 - 2^-8 or 1 + 2^-7; normalising in bfloat16 cannot mend
    # that, so the tolerance must admit it (sqrt(eps) of bfloat16, the losses' rule too).
    torch = pytest.importorskip("torch")
    from crossentropy.info._validate import sum_tolerance
    from crossentropy.losses._options import probability_sum_tolerance

    assert sum_tolerance(torch.bfloat16) == probability_sum_tolerance(torch.bfloat16)
    assert sum_tolerance(torch.bfloat16) == pytest.approx(2**-3.5, rel=1e-15)
    generator = torch.Generator().manual_seed(0)
    off = []
    for size in (3, 5, 7):
        for _ in range(100):
            p = torch.softmax(2 * torch.randn(size, generator=generator, dtype=torch.float64), 0)
            rounded = p.to(torch.bfloat16)
            if rounded.sum().item() != 1.0:
                off.append(rounded)
    assert off, "no rounded distribution summed off 1: the case is not exercised"
    for rounded in off:
        exact = rounded.double()
        expected = -(exact * torch.log2(exact)).sum().item()
        got = info.entropy(rounded)
        assert got.dtype == torch.bfloat16
        assert got.item() == pytest.approx(expected, rel=2**-7)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1 + 2**-52, "1.0000000000000002"),  # the next float64 after 1, not a rounded "1"
        (np.float32(1.1), "1.1"),  # float32's own shortest text, not 1.100000023841858
        (np.float16(1.001), "1.001"),
    ],
)
def test_a_probability_above_one_is_shown_with_the_digits_that_break_the_rule(value, shown):
    with pytest.raises(ValueError, match=rf"in \[0, 1\]; got {shown.replace('.', '[.]')} at"):
        info.information(value)


@pytest.mark.parametrize("keepdims", ["no", None, 1, [True]])
def test_keepdims_must_be_a_bool(xp, keepdims):
    p = xp.asarray([[0.5, 0.5]])
    calls = [
        lambda: info.entropy(p, keepdims=keepdims),
        lambda: info.cross_entropy(p, p, keepdims=keepdims),
        lambda: info.kl_divergence(p, p, keepdims=keepdims),
        lambda: info.js_divergence(p, p, keepdims=keepdims),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"`keepdims` must be True or False; got "):
            call()


def test_keepdims_accepts_numpy_bools(xp):
    p = xp.asarray([[0.5, 0.5]])
    assert tuple(info.entropy(p, keepdims=np.True_).shape) == (1, 1)
    assert tuple(info.entropy(p, keepdims=np.False_).shape) == (1,)


@pytest.mark.parametrize(
    ("p", "q", "name", "seen"),
    [
        ([1.0], [0.5, 0.5], "p", r"`p` of shape \(1,\) has one outcome along axis -1, repeated"),
        (1.0, [0.5, 0.5], "p", r"`p` of shape \(\) has one outcome along axis -1, repeated"),
        ([0.5, 0.5], [[1.0], [1.0]], "q", r"`q` of shape \(2, 1\) has one outcome along axis"),
    ],
)
def test_a_distribution_repeated_along_the_outcomes_is_explained(xp, p, q, name, seen):
    # p = [1.0] sums to 1; broadcast against two outcomes it is [1, 1], which does not:
    # the message says so instead of suggesting `normalize`.
    for measure in ("cross_entropy", "kl_divergence", "js_divergence"):
        with pytest.raises(ValueError, match=rf"^`{name}` must sum to 1 .*got a sum of 2") as error:
            getattr(info, measure)(xp.asarray(p), xp.asarray(q))
        message = str(error.value)
        assert re.search(seen, message)
        assert "give both the same number of outcomes" in message
        assert "normalize" not in message


def test_a_uniform_distribution_may_still_be_given_by_one_repeated_value(xp):
    # Repeating 1/n along n outcomes does give a distribution: that stays allowed.
    got = info.cross_entropy(xp.asarray(0.25), xp.asarray([0.25] * 4))
    assert float(xp.to_numpy(got)) == 2.0  # -log2(1/4), SEED.md's uniform words


@given(st.lists(st.fractions(min_value=0, max_value=1), min_size=1, max_size=8))
def test_fractions_are_read_as_the_real_numbers_they_are(weights):
    # They used to be refused with "must be an array of real numbers; got list [Fraction...]".
    total = sum(weights)
    if total == 0:
        weights, total = [Fraction(1)], Fraction(1)
    p = [w / total for w in weights]  # an exact distribution
    as_floats = [float(v) for v in p]
    assert info.entropy(p) == info.entropy(as_floats)
    assert info.entropy(np.array(p, dtype=object)) == info.entropy(as_floats)
    assert info.information(p).tolist() == info.information(as_floats).tolist()
    assert info.normalize(weights).tolist() == info.normalize([float(w) for w in weights]).tolist()


def test_decimals_and_big_integers():
    assert info.entropy([Decimal("0.5"), Decimal("0.5")]) == 1.0
    big = [10**30, 3 * 10**30]  # beyond int64: an object array before conversion
    assert info.normalize(big).tolist() == info.normalize([float(v) for v in big]).tolist()
    np.testing.assert_allclose(info.normalize(big), [0.25, 0.75], rtol=1e-15)
    with pytest.raises(ValueError, match=r"`x` must hold numbers within the float64 range"):
        info.normalize([10**400, 1])
    for bad in ([Fraction(1, 2), "a"], [None, Fraction(1, 2)], [Fraction(1, 2), 1j]):
        with pytest.raises(TypeError, match=r"`p` must be an array of real numbers; got list"):
            info.entropy(bad)


def _kl_decimal(p, q) -> float:
    """Σ p ln(p / q) / ln 2 of the given floats, in 50-digit decimal arithmetic."""
    from decimal import Decimal, localcontext

    with localcontext() as context:
        context.prec = 50
        total = sum(
            (Decimal(a) * (Decimal(a) / Decimal(b)).ln() for a, b in zip(p, q, strict=True) if a),
            Decimal(0),
        )
        return float(total / Decimal(2).ln())


def _js_decimal(p, q) -> float:
    from decimal import Decimal, localcontext

    with localcontext() as context:
        context.prec = 50
        m = [(Decimal(a) + Decimal(b)) / 2 for a, b in zip(p, q, strict=True)]
        terms = [
            Decimal(x) * (Decimal(x) / y).ln()
            for pair in ((p, m), (q, m))
            for x, y in zip(*pair, strict=True)
            if x
        ]
        return float(sum(terms, Decimal(0)) / 2 / Decimal(2).ln())


@pytest.mark.parametrize("spread", [1e-3, 1e-5, 1e-7])
def test_small_divergences_keep_their_digits(xp, rng, spread):
    # Near Q = P a term log(p / q) would round the ratio to a float next to 1 and lose
    # the digits (a relative error of 1e-5 at spread 1e-5, of order 1 at 1e-7).
    for _ in range(5):
        q = rng.dirichlet(np.ones(6))
        p = q * (1 + spread * rng.standard_normal(6))
        p /= p.sum()
        kl = float(info.kl_divergence(xp.asarray(p), xp.asarray(q)))
        js = float(info.js_divergence(xp.asarray(p), xp.asarray(q)))
        tolerance = 1e-15 / spread  # about eps / spread: the rounding of p - q itself
        assert kl == pytest.approx(_kl_decimal(p, q), rel=tolerance, abs=0)
        assert js == pytest.approx(_js_decimal(p, q), rel=tolerance, abs=0)


@pytest.mark.parametrize("ratio", [1e-12, 1e-3, 0.2, 0.34, 0.5, 3.0, 1e9])
def test_js_keeps_its_digits_on_both_sides_of_the_log1p_branch(xp, ratio):
    # Each term switches from log1p(d) to the log of 2p / (p + q) where p < q / 3: entries
    # at ratios p / q far below, near and above 1/3 all agree with exact decimal arithmetic.
    q = np.array([0.25, 0.25, 0.5])
    p = np.array([0.25 * ratio, 0.25, 0.5])
    p /= p.sum()
    js = float(info.js_divergence(xp.asarray(p), xp.asarray(q)))
    assert js == pytest.approx(_js_decimal(p, q), rel=1e-14, abs=0)
