"""Every bad input: the right exception and a message naming the argument, rule and value."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from crossentropy import info
from crossentropy.info import _blocked
from crossentropy.info._validate import check_distribution

GOOD = [0.5, 0.5]


@pytest.fixture(params=[False, True], ids=["plain", "blocked"])
def path(request, monkeypatch):
    """The plain path, and the blocked NumPy path forced on small inputs."""
    if request.param:
        monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
        monkeypatch.setattr(_blocked, "BLOCK_ELEMENTS", 4)
    return request.param


BAD_DISTRIBUTIONS = [
    ([[0.5, 0.5], [-0.1, 1.1]], r"`{name}` must be non-negative; got -0\.1 at index \(1, 0\)"),
    ([[0.5, 0.5], [math.nan, 1.0]], r"`{name}` must contain no NaN; got 1 NaN entry"),
    ([[0.5, 0.5], [math.inf, 0.0]], r"`{name}` must contain only finite numbers; got inf"),
    (
        [[0.5, 0.5], [0.6, 0.6]],
        r"`{name}` must sum to 1 along axis -1 \(within 1\.49e-08 for float64\); got a sum of "
        r"1\.2 at index \(1,\) \(1 of 2 sums are off\); normalise explicitly with "
        r"`crossentropy\.info\.normalize\({name}\)`",
    ),
    ([0.3, 0.3, 0.3], r"`{name}` must sum to 1 .*got a sum of 0\.9; normalise explicitly"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_DISTRIBUTIONS)
def test_bad_distributions(xp, bad, message, path):
    bad = np.asarray(bad)
    with pytest.raises(ValueError, match=message.format(name="p")):
        info.entropy(xp.asarray(bad))
    with pytest.raises(ValueError, match=message.format(name="p")):
        info.perplexity(xp.asarray(bad))
    good = xp.asarray(np.full(bad.shape, 1 / bad.shape[-1]))
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        with pytest.raises(ValueError, match=message.format(name="p")):
            getattr(info, name)(xp.asarray(bad), good)
        with pytest.raises(ValueError, match=message.format(name="q")):
            getattr(info, name)(good, xp.asarray(bad))


def test_float32_tolerance_is_looser_but_still_rejects_real_mistakes(xp):
    nearly = np.array([0.5, 0.5 + 1e-4], dtype=np.float32)  # off by 1e-4 < 3.5e-4
    assert float(info.entropy(xp.asarray(nearly, np.float32))) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match=r"within 0\.000345 for float32\); got a sum of 0\.99"):
        info.entropy(xp.asarray([0.5, 0.49], np.float32))
    with pytest.raises(ValueError, match=r"within 1\.49e-08 for float64"):
        info.entropy(xp.asarray([0.5, 0.5 + 1e-4]))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_the_sum_tolerance_is_the_square_root_of_epsilon_inclusive(xp, dtype, path):
    # In float64 and float16 sqrt(eps) is a power of two (2**-26, 2**-5), so sums of exactly
    # 1 +- sqrt(eps) are representable: they are accepted, and one ulp further is refused.
    tol = math.sqrt(np.finfo(dtype).eps)
    ulp_above, ulp_below = np.finfo(dtype).eps, np.finfo(dtype).epsneg
    good = xp.asarray(np.full((2, 2), 0.5), dtype)  # p's shape: the blocked path applies
    for second in (0.5 + tol, 0.5 - tol):
        p = xp.asarray([[0.5, second], [0.5, 0.5]], dtype)
        assert np.isfinite(xp.to_numpy(info.entropy(p))).all()
        for name in ("cross_entropy", "kl_divergence", "js_divergence"):
            assert np.isfinite(xp.to_numpy(getattr(info, name)(good, p))).all()
    for second in (0.5 + tol + ulp_above, 0.5 - tol - ulp_below):
        p = xp.asarray([[0.5, second], [0.5, 0.5]], dtype)
        assert float(np.asarray(second, dtype)) == second  # exact: one ulp past the limit
        with pytest.raises(ValueError, match=r"`p` must sum to 1 along axis -1"):
            info.entropy(p)
        for name in ("cross_entropy", "kl_divergence", "js_divergence"):
            with pytest.raises(ValueError, match=r"`q` must sum to 1 along axis -1"):
                getattr(info, name)(good, p)


def test_float32_sum_tolerance_on_either_side(xp, path):
    # sqrt(eps) of float32 (3.45e-4) is not a float32 number: 1% inside and outside it.
    tol = math.sqrt(np.finfo(np.float32).eps)
    good = xp.asarray(np.full((2, 2), 0.5), np.float32)
    for factor in (0.99, -0.99):
        p = xp.asarray([[0.5, 0.5 + factor * tol], [0.5, 0.5]], np.float32)
        assert np.isfinite(xp.to_numpy(info.entropy(p))).all()
        assert np.isfinite(xp.to_numpy(info.cross_entropy(good, p))).all()
    for factor in (1.01, -1.01):
        p = xp.asarray([[0.5, 0.5 + factor * tol], [0.5, 0.5]], np.float32)
        with pytest.raises(ValueError, match=r"within 0\.000345 for float32"):
            info.entropy(p)
        with pytest.raises(ValueError, match=r"`q` must sum to 1"):
            info.cross_entropy(good, p)


def test_empty_distribution(xp):
    with pytest.raises(
        ValueError,
        match=r"`p` must have at least one outcome along axis -1; got"
        r" shape \(0,\)",
    ):
        info.entropy(xp.asarray(np.zeros(0)))
    with pytest.raises(ValueError, match=r"`p` must have at least one outcome"):
        info.cross_entropy(xp.asarray(np.zeros((2, 0))), xp.asarray(np.zeros((2, 0))))
    with pytest.raises(ValueError, match=r"`x` must have at least one entry along axis -1"):
        info.normalize(xp.asarray(np.zeros(0)))


def test_an_empty_batch_is_fine(xp):
    result = info.entropy(xp.asarray(np.zeros((0, 3))))
    assert tuple(result.shape) == (0,)


def test_shapes_that_do_not_broadcast(xp):
    with pytest.raises(
        ValueError,
        match=r"`p` and `q` must have shapes that broadcast together;"
        r" got \(2,\) and \(3,\)",
    ):
        info.cross_entropy(xp.asarray(GOOD), xp.asarray([1 / 3] * 3))
    with pytest.raises(ValueError, match=r"got \(4, 2\) and \(3, 2\)"):
        info.kl_divergence(xp.asarray(np.full((4, 2), 0.5)), xp.asarray(np.full((3, 2), 0.5)))


@pytest.mark.parametrize("base", [0, -2, 1, 1.0, math.inf, math.nan])
def test_bad_base(xp, base):
    message = r"`base` must be a finite number > 0 and != 1 \(2 for bits, math\.e for nats\); got"
    for call in (
        lambda: info.information(xp.asarray(GOOD), base=base),
        lambda: info.entropy(xp.asarray(GOOD), base=base),
        lambda: info.cross_entropy(xp.asarray(GOOD), xp.asarray(GOOD), base=base),
        lambda: info.kl_divergence(xp.asarray(GOOD), xp.asarray(GOOD), base=base),
        lambda: info.js_divergence(xp.asarray(GOOD), xp.asarray(GOOD), base=base),
        lambda: info.binary_entropy(xp.asarray(GOOD), base=base),
    ):
        with pytest.raises(ValueError, match=message):
            call()


BASE_TAKERS = ["information", "entropy", "cross_entropy", "kl_divergence", "js_divergence"]
BASE_TAKERS += ["binary_entropy"]


def _base_scalars():
    """0-d arrays of real dtypes that mean base 2 or base 4, with the expected value."""
    values = [(np.array(2.0), 2.0), (np.array(4), 4.0), (np.array(2.0, np.float32), 2.0)]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the test environment
        return values
    return [*values, (torch.tensor(2.0), 2.0), (torch.tensor(4), 4.0)]


@pytest.mark.parametrize(("base", "value"), _base_scalars(), ids=repr)
def test_a_zero_dimensional_array_is_a_base(xp, base, value):
    p = xp.asarray([0.5, 0.25, 0.25])
    for name in BASE_TAKERS:
        arguments = (p, p) if name in ("cross_entropy", "kl_divergence", "js_divergence") else (p,)
        got = xp.to_numpy(getattr(info, name)(*arguments, base=base))
        expected = xp.to_numpy(getattr(info, name)(*arguments, base=value))
        np.testing.assert_array_equal(got, expected)
    # The oracle: H = 1.5 bits, 0.75 in base 4.
    assert float(xp.to_numpy(info.entropy(p, base=base))) == 1.5 / math.log2(value)


def test_a_zero_dimensional_base_is_checked_as_a_number(xp):
    p = xp.asarray(GOOD)
    for bad in (np.array(1.0), np.array(0), np.array(-2.0), np.array(math.nan)):
        for base in (bad, xp.asarray(bad)):
            with pytest.raises(ValueError, match=r"`base` must be a finite number > 0 and != 1"):
                info.entropy(p, base=base)
    for bad, seen in (
        (np.array(True), "dtype bool"),
        (np.array(2 + 0j), "dtype complex"),
        (np.array([2.0]), r"dtype float64 of shape \(1,\)$"),
    ):
        with pytest.raises(TypeError, match=rf"`base` must be a real number .*; got .*{seen}"):
            info.entropy(p, base=bad)


# The measures that take each option, and whether they take a pair (p, q).
TAKES = {
    "base": {
        "information": False,
        "entropy": False,
        "cross_entropy": True,
        "kl_divergence": True,
        "js_divergence": True,
        "binary_entropy": False,
    },
    "axis": {
        "entropy": False,
        "perplexity": False,
        "cross_entropy": True,
        "kl_divergence": True,
        "js_divergence": True,
        "normalize": False,
    },
}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("base", value, r"`base` must be a real number") for value in ("e", None, 2j, True)]
    + [("axis", value, r"`axis` must be an integer; got") for value in (0.0, "0", None)],
)
def test_options_of_the_wrong_type(xp, option, value, message):
    p = xp.asarray(GOOD)
    for name, pair in TAKES[option].items():
        arguments = (p, p) if pair else (p,)
        with pytest.raises(TypeError, match=message):
            getattr(info, name)(*arguments, **{option: value})


def test_axis_out_of_range(xp):
    with pytest.raises(
        ValueError,
        match=r"`axis` must be in \[-1, 0\] for `p` with 1 dimension;"
        r" got 1",
    ):
        info.entropy(xp.asarray(GOOD), axis=1)
    with pytest.raises(
        ValueError,
        match=r"`axis` must be in \[-2, 1\] for `p` and `q` broadcast"
        r" together with 2 dimensions; got -3",
    ):
        info.cross_entropy(xp.asarray(GOOD), xp.asarray(np.full((3, 2), 0.5)), axis=-3)
    with pytest.raises(ValueError, match=r"`axis` must be in \[-1, 0\] for `x`"):
        info.normalize(xp.asarray(GOOD), axis=5)
    with pytest.raises(
        ValueError,
        match=r"`axis` must index an axis of outcomes, but `p` is a"
        r" scalar",
    ):
        info.entropy(xp.asarray(1.0))
    with pytest.raises(TypeError, match=r"`axis` must be an integer; got float"):
        info.entropy(xp.asarray(GOOD), axis=0.0)


def test_axis_may_not_be_a_bool(xp):
    # bool is an int subclass: True would silently mean axis 1.
    p = xp.asarray(np.full((2, 2), 0.5))
    for call in (
        lambda: info.entropy(p, axis=True),
        lambda: info.perplexity(p, axis=False),
        lambda: info.cross_entropy(p, p, axis=True),
        lambda: info.kl_divergence(p, p, axis=True),
        lambda: info.js_divergence(p, p, axis=False),
        lambda: info.normalize(p, axis=True),
    ):
        with pytest.raises(TypeError, match=r"`axis` must be an integer; got bool (True|False)$"):
            call()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("0.5,0.5", r"`p` must be an array of real numbers; got str"),
        (["a", "b"], r"`p` must be an array of real numbers; got list"),
        ([None, 1.0], r"`p` must be an array of real numbers; got list"),
        ({"A": 0.5}, r"`p` must be an array of real numbers; got dict"),
        (
            np.array([0.5 + 0j, 0.5]),
            r"`p` must be an array of real numbers; got an array of "
            r"dtype complex128",
        ),
        (object(), r"`p` must be an array of real numbers; got object"),
    ],
)
def test_non_numeric_input(bad, message):
    with pytest.raises(TypeError, match=message):
        info.entropy(bad)
    with pytest.raises(TypeError, match=message):
        info.cross_entropy(bad, GOOD)


# Every measure with its argument names; the second of a pair is q.
ARGUMENTS = {
    "information": ("p",),
    "entropy": ("p",),
    "cross_entropy": ("p", "q"),
    "kl_divergence": ("p", "q"),
    "js_divergence": ("p", "q"),
    "binary_entropy": ("p",),
    "perplexity": ("p",),
    "normalize": ("x",),
}


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_masked_arrays_are_refused_by_name(name):
    # The checks honoured the mask while the measure dropped it: entropy([.5, .5, --])
    # with a hidden 9 gave -8 bits.
    masked = np.ma.array([0.5, 0.5, 9.0], mask=[0, 0, 1])
    plain = np.array([0.5, 0.5, 0.0])
    arguments = ARGUMENTS[name]
    for position, argument in enumerate(arguments):
        values = [plain] * len(arguments)
        values[position] = masked
        with pytest.raises(
            TypeError,
            match=rf"^`{argument}` must be a plain array: NumPy masked arrays are not "
            rf"supported; got a masked array of dtype float64; pass `{argument}\.filled\(0\)`"
            rf" to count the masked entries as 0, or `{argument}\.compressed\(\)` to drop them$",
        ):
            getattr(info, name)(*values)
    with pytest.raises(TypeError, match=r"^`targets` must be a plain array: NumPy masked"):
        check_distribution(masked, "targets")


def test_ragged_sequence():
    with pytest.raises(
        ValueError,
        match=r"`p` must be a rectangular array of numbers; got a"
        r" ragged sequence",
    ):
        info.entropy([[1.0], [0.5, 0.5]])


def test_arrays_of_two_kinds():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        TypeError,
        match=r"`p` and `q` must be arrays of one kind; got "
        r"numpy\.ndarray and torch\.Tensor",
    ):
        info.cross_entropy(np.array(GOOD), torch.tensor(GOOD))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([0.5, 1.5], r"`p` must contain probabilities in \[0, 1\]; got 1\.5 at index \(1,\)"),
        ([-0.5], r"`p` must be non-negative; got -0\.5"),
        ([math.nan], r"`p` must contain no NaN"),
        ([math.inf], r"`p` must contain only finite numbers"),
    ],
)
def test_bad_probabilities_for_elementwise_measures(xp, bad, message):
    with pytest.raises(ValueError, match=message):
        info.information(xp.asarray(bad))
    with pytest.raises(ValueError, match=message):
        info.binary_entropy(xp.asarray(bad))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1.0, -1.0, 2.0], r"`x` must be non-negative; got -1 at index \(1,\)"),
        ([1.0, math.nan], r"`x` must contain no NaN"),
        ([1.0, math.inf], r"`x` must contain only finite numbers"),
        (
            [0.0, 0.0],
            r"`x` must have a positive sum along axis -1 \(a distribution needs some "
            r"weight\); got all zeros$",
        ),
        ([[1.0, 2.0], [0.0, 0.0]], r"got all zeros at index \(1,\)"),
    ],
)
def test_normalize_rejects(xp, bad, message):
    with pytest.raises(ValueError, match=message):
        info.normalize(xp.asarray(bad))


def test_normalize_survives_an_overflowing_sum():
    p = info.normalize([1e308, 1e308])
    np.testing.assert_array_equal(p, [0.5, 0.5])


def test_an_overflowing_row_is_rescaled_by_its_own_maximum(xp):
    # One row's sum overflows; the others keep their tiny weights, which dividing by the
    # largest entry of the whole array would flush to zero.
    weights = [[1e308, 1e308], [1e-300, 3e-300], [2.0, 6.0]]
    expected = [[float(Fraction(w) / sum(map(Fraction, row))) for w in row] for row in weights]
    got = xp.to_numpy(info.normalize(xp.asarray(weights)))
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
    got = xp.to_numpy(info.normalize(xp.asarray(np.transpose(weights)), axis=0))
    np.testing.assert_allclose(got, np.transpose(expected), rtol=1e-15, atol=0)


def test_check_distribution_is_reusable():
    assert check_distribution([[0.5, 0.5], [1.0, 0.0]], "targets").shape == (2, 2)
    assert check_distribution([[0.5, 1.0], [0.5, 0.0]], axis=0).tolist() == [[0.5, 1.0], [0.5, 0.0]]
    with pytest.raises(ValueError, match=r"`targets` must sum to 1 along axis 0"):
        check_distribution([[0.5, 0.5], [1.0, 0.0]], "targets", axis=0)


def test_negative_q_where_p_is_zero_is_still_caught(xp, path):
    p = xp.asarray([[1.0, 0.0], [0.5, 0.5]])
    q = xp.asarray([[1.1, -0.1], [0.5, 0.5]])
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        with pytest.raises(ValueError, match=r"`q` must be non-negative; got -0\.1 at index"):
            getattr(info, name)(p, q)


def test_negative_zero_is_a_zero(xp, path):
    p = xp.asarray([[-0.0, 1.0], [0.5, 0.5]])
    for result in (info.entropy(p), info.cross_entropy(p, p)):
        result = xp.to_numpy(result)
        np.testing.assert_array_equal(result, [0.0, 1.0])
        assert not np.signbit(result).any()  # +0.0, not -0.0 (which compares equal)


@pytest.mark.parametrize(
    ("p", "message"),
    [
        ([-1.0], r"^`p` must be non-negative; got -1 at index \(0,\)"),
        ([math.nan], r"^`p` must contain no NaN; got 2 NaN entries"),
        ([math.inf], r"^`p` must contain only finite numbers; got inf"),
    ],
)
def test_a_repeated_bad_entry_is_reported_as_itself(xp, p, message):
    # Only a sum off 1 is explained as one outcome repeated; other faults keep their message.
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        with pytest.raises(ValueError, match=message) as error:
            getattr(info, name)(xp.asarray(p), xp.asarray(GOOD))
        assert "repeated" not in str(error.value)
        assert "same number of outcomes" not in str(error.value)


def _rounded_oracle(weights: np.ndarray, dtype) -> np.ndarray:
    """x / Σ x in float64 (exact for these weights to far below a half ulp), then rounded."""
    wide = weights.astype(np.float64)
    return (wide / wide.sum(axis=-1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("n", [100_000, 70_000, 5])
def test_normalize_in_float16_never_gives_zeros(xp, rng, n):
    # The float16 total of 100000 ones overflows (max 65504); it used to give x / inf = 0
    # everywhere, and a rescale by the maximum overflowed again.
    for weights in (np.ones((2, n)), rng.random((2, n)) * 4):
        weights = weights.astype(np.float16)
        got = xp.to_numpy(info.normalize(xp.asarray(weights, np.float16)))
        assert got.dtype == np.float16
        expected = _rounded_oracle(weights, np.float16)
        # Divided in float32, then rounded: the oracle's float16 or a neighbour (an ulp of
        # float16, or its smallest subnormal 2**-24 below 2**-14).
        np.testing.assert_allclose(
            got.astype(np.float64), expected.astype(np.float64), rtol=2**-10, atol=2**-24
        )
        assert abs(got.astype(np.float64).sum(axis=-1) - 1).max() < 0.01
    ones = xp.to_numpy(info.normalize(xp.asarray(np.ones(n, np.float16), np.float16)))
    assert (ones == np.float16(1 / n)).all()


def test_normalize_in_bfloat16_stays_right():
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(1)
    for weights in (
        torch.ones(2, 100_000, dtype=torch.bfloat16),
        (torch.rand(3, 1000, generator=generator) * 4).to(torch.bfloat16),
        # a total past float32's range too: rescaled by the row's maximum
        torch.tensor([[3e38, 3e38, 1e38], [1.0, 2.0, 1.0]], dtype=torch.bfloat16),
    ):
        got = info.normalize(weights)
        assert got.dtype == torch.bfloat16
        wide = weights.double()
        expected = (wide / wide.sum(-1, keepdim=True)).to(torch.bfloat16)
        torch.testing.assert_close(got.double(), expected.double(), rtol=2**-7, atol=0)


def _in_dtype(xp, values, dtype):
    """``values`` as an array of ``xp``'s kind in ``dtype`` ("bfloat16": a torch tensor)."""
    if dtype == "bfloat16":
        import torch

        return torch.tensor(np.asarray(values, np.float64)).to(torch.bfloat16)
    return xp.asarray(values, dtype)


def _wide(value) -> np.ndarray:
    """A NumPy float64 copy of an array of either kind (bfloat16 too)."""
    if hasattr(value, "detach"):
        return value.detach().double().cpu().numpy()
    return np.asarray(value, np.float64)


@pytest.mark.parametrize("low", [np.float16, np.float32, "bfloat16"])
def test_each_argument_is_held_to_its_own_dtype_tolerance(xp, low):
    # A softmax rounded to float16 sums to 1 + 6.7e-6: fine for float16 (tolerance 0.031)
    # and float32, but once promoted beside float64 targets it was held to 1.5e-8, and the
    # message named float64, a dtype the caller never gave it.
    if low == "bfloat16" and xp.name != "torch":
        pytest.skip(f"{xp.name} has no bfloat16")
    x = np.random.default_rng(0).normal(size=50)
    # Off 1 by 1e-5 besides the rounding: a float32 sum of a rounded softmax can be closer.
    rounded = _in_dtype(xp, np.exp(x) / np.exp(x).sum() * (1 + 1e-5), low)
    rounded_wide = _wide(rounded)
    assert abs(rounded_wide.sum() - 1) > 1.5e-8  # off by more than float64 allows
    uniform = np.full(50, 1 / 50)
    wide = xp.asarray(uniform, np.float64)
    oracle = {
        "cross_entropy": lambda a, b: -np.sum(a * np.log2(b)),
        "kl_divergence": lambda a, b: np.sum(a * np.log2(a / b)),
        "js_divergence": lambda a, b: (
            (np.sum(a * np.log2(2 * a / (a + b))) + np.sum(b * np.log2(2 * b / (a + b)))) / 2
        ),
    }
    for name, formula in oracle.items():
        for got, expected in (
            (getattr(info, name)(rounded, wide), formula(rounded_wide, uniform)),
            (getattr(info, name)(wide, rounded), formula(uniform, rounded_wide)),
        ):
            assert float(_wide(got)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Beyond its own tolerance it is still refused, and the message names its own dtype.
    bad = _in_dtype(xp, [0.5, 0.375], low)
    two = xp.asarray([0.5, 0.5], np.float64)
    own = "bfloat16" if low == "bfloat16" else np.dtype(low).name
    for name in oracle:
        with pytest.raises(ValueError, match=rf"^`p` must sum to 1 .*for {own}\); got a sum of"):
            getattr(info, name)(bad, two)
        with pytest.raises(ValueError, match=rf"^`q` must sum to 1 .*for {own}\); got a sum of"):
            getattr(info, name)(two, bad)
