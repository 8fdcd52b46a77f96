"""Every measure against the float64 reference of tests/reference.py, on each backend and dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy import info
from crossentropy.info import _blocked, _native
from tests import reference
from tests.info._data import (
    TOLERANCE,
    assert_same_divergence,
    distributions,
    positive_distributions,
)

DTYPES = [np.float64, np.float32]
# Odd shapes: a single outcome, primes, a batch dimension of 1, three dimensions.
SHAPES = [(1,), (2,), (7,), (5, 13), (1, 31), (3, 4, 11)]
BASES = [2, math.e, 10, 0.5]


def close(actual, expected, dtype) -> None:
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def same_as_plain(name: str, got, plain, p, q, dtype: type = np.float64) -> None:
    """The blocked path's result against the plain path's: bit for bit, but for the
    divergences on the compiled kernel (other logs, float64 sums), which must agree within
    a few roundings of the sum of their terms' sizes."""
    if name in ("kl_divergence", "js_divergence") and _native.available():
        assert_same_divergence(name, got, plain, p, q, dtype=dtype)
    else:
        np.testing.assert_array_equal(got, plain)


@pytest.fixture(params=[False, True], ids=["plain", "blocked"])
def path(request, monkeypatch):
    """Run a test on the plain path and again with the blocked NumPy path forced on small
    inputs (tiny blocks, so that many tasks run on the thread pool)."""
    if request.param:
        monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
        monkeypatch.setattr(_blocked, "BLOCK_ELEMENTS", 32)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_entropy(xp, rng, dtype, shape, path):
    p = distributions(rng, shape, dtype=dtype)
    result = info.entropy(xp.asarray(p, dtype))
    close(xp.to_numpy(result), reference.along(reference.entropy, p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("cross_entropy", reference.cross_entropy),
        ("kl_divergence", reference.kl_divergence),
        ("js_divergence", reference.js_divergence),
    ],
)
def test_pair_measures(xp, rng, dtype, shape, name, ref, path):
    p = distributions(rng, shape, dtype=dtype)
    q = distributions(rng, shape, dtype=dtype)
    q = np.where(p > 0, q, 0).astype(dtype)  # zeros where P has zeros (and some more)
    q = (q / q.sum(axis=-1, keepdims=True)).astype(dtype)
    result = getattr(info, name)(xp.asarray(p, dtype), xp.asarray(q, dtype))
    expected = reference.along(ref, p, q)
    close(xp.to_numpy(result), expected, dtype)


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence"])
def test_infinite_where_q_misses_an_outcome(xp, name, path):
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    q = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    result = xp.to_numpy(getattr(info, name)(xp.asarray(p), xp.asarray(q)))
    expected = reference.along(getattr(reference, name), p, q)
    assert math.isfinite(result[0])
    assert result[1] == math.inf == expected[1]
    np.testing.assert_allclose(result[0], expected[0], rtol=1e-12)


@pytest.mark.parametrize("base", BASES)
def test_bases(xp, rng, base, path):
    p = distributions(rng, (4, 9))
    q = distributions(rng, (4, 9), zero_fraction=0.0)
    for name in ("entropy",):
        got = xp.to_numpy(getattr(info, name)(xp.asarray(p), base=base))
        close(got, reference.along(reference.entropy, p, base=base), np.float64)
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        got = xp.to_numpy(getattr(info, name)(xp.asarray(p), xp.asarray(q), base=base))
        close(got, reference.along(getattr(reference, name), p, q, base=base), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", BASES)
def test_information_and_binary_entropy(xp, rng, dtype, base):
    x = rng.random(23).astype(dtype)
    x[:3] = [0.0, 1.0, 0.5]
    got_information = xp.to_numpy(info.information(xp.asarray(x, dtype), base=base))
    expected_information = [reference.information(float(v), base) for v in x]
    close(got_information, expected_information, dtype)
    got_binary = xp.to_numpy(info.binary_entropy(xp.asarray(x, dtype), base=base))
    close(got_binary, [reference.binary_entropy(float(v), base) for v in x], dtype)


def test_binary_entropy_keeps_digits_for_tiny_p():
    # h(p) = p log2(1/p) + p / ln 2 + O(p^2): the naive (1 - p) log(1 - p) loses the
    # second term for p below the float64 epsilon; log1p keeps it.
    p = 1e-20
    expected = p * math.log2(1 / p) + p / math.log(2)
    # abs=0: approx's default absolute tolerance (1e-12) would swallow the whole value.
    assert info.binary_entropy(p) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_perplexity_and_normalize(xp, rng, dtype, shape):
    p = distributions(rng, shape, dtype=dtype)
    close(
        xp.to_numpy(info.perplexity(xp.asarray(p, dtype))),
        reference.along(reference.perplexity, p),
        dtype,
    )
    weights = (rng.random(shape) * 10).astype(dtype)
    got = xp.to_numpy(info.normalize(xp.asarray(weights, dtype)))
    expected = np.apply_along_axis(reference.normalize, -1, weights.astype(np.float64))
    close(got, expected, dtype)


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_perplexity_and_normalize_along_another_axis(xp, rng, axis):
    p = distributions(rng, (3, 5, 7), axis=axis)
    got = xp.to_numpy(info.perplexity(xp.asarray(p), axis=axis))
    close(got, reference.along(reference.perplexity, p, axis=axis), np.float64)
    weights = rng.random((3, 5, 7)) * 10
    got = xp.to_numpy(info.normalize(xp.asarray(weights), axis=axis))
    close(got, np.apply_along_axis(reference.normalize, axis, weights), np.float64)


def _doubly_stochastic(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random mixture of permutation matrices: every row and every column sums to 1."""
    weights = rng.random(4)
    weights /= weights.sum()
    return sum(w * np.eye(n)[rng.permutation(n)] for w in weights)


def test_axis_0_of_a_doubly_stochastic_matrix_reduces_the_columns(xp, rng, path):
    # Rows and columns both sum to 1, so a reduction along the wrong axis would pass every
    # check; only the values tell the columns' measures from the rows'.
    p = _doubly_stochastic(rng, 6)
    q = _doubly_stochastic(rng, 6) * 0.5 + 0.5 / 6
    for name in ("entropy", "cross_entropy", "kl_divergence", "js_divergence"):
        args = (p,) if name == "entropy" else (p, q)
        for axis in (0, -2):
            got = xp.to_numpy(getattr(info, name)(*(xp.asarray(a) for a in args), axis=axis))
            expected = reference.along(getattr(reference, name), *args, axis=0)
            close(got, expected, np.float64)
        rows = reference.along(getattr(reference, name), *args, axis=1)
        assert not np.allclose(expected, rows)  # the input does tell the two apart


def test_one_numpy_distribution_gives_a_numpy_scalar(path):
    p = np.array([0.5, 0.25, 0.25])
    q = np.array([0.25, 0.25, 0.5])
    for value, expected in (
        (info.entropy(p), reference.entropy(p.tolist())),
        (info.cross_entropy(p, q), reference.cross_entropy(p.tolist(), q.tolist())),
    ):
        assert isinstance(value, np.float64)
        assert value == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", BASES)
def test_kl_where_p_over_q_overflows(xp, dtype, base, path):
    # q's second outcome is the smallest subnormal, so p / q overflows to inf although
    # p (log p - log q) is finite (1074 bits in float64, 149 in float32).
    tiny = np.finfo(dtype).smallest_subnormal
    p = np.array([[0.5, 0.5], [0.25, 0.75]], dtype=dtype)
    q = np.array([[1.0, tiny], [1.0, tiny]], dtype=dtype)
    got = xp.to_numpy(info.kl_divergence(xp.asarray(p, dtype), xp.asarray(q, dtype), base=base))
    # D(P||Q) as the sum of p (log p - log q) in float64: no ratio that could overflow.
    expected = [
        math.fsum(
            pi * (reference.log(pi, base) - reference.log(qi, base))
            for pi, qi in zip(p_row, q_row, strict=True)
        )
        for p_row, q_row in zip(p.tolist(), q.tolist(), strict=True)
    ]
    assert np.isfinite(got).all()
    close(got, expected, dtype)


@pytest.mark.parametrize("axis", [0, 1, 2, -2])
@pytest.mark.parametrize("keepdims", [False, True])
def test_axis_and_keepdims(xp, rng, axis, keepdims, path):
    p = distributions(rng, (3, 5, 7), axis=axis)
    q = distributions(rng, (3, 5, 7), axis=axis, zero_fraction=0.0)
    for name in ("entropy", "cross_entropy", "kl_divergence", "js_divergence"):
        args = (p,) if name == "entropy" else (p, q)
        result = getattr(info, name)(*(xp.asarray(a) for a in args), axis=axis, keepdims=keepdims)
        expected = reference.along(getattr(reference, name), *args, axis=axis)
        if keepdims:
            expected = np.expand_dims(expected, axis)
        assert tuple(result.shape) == expected.shape
        close(xp.to_numpy(result), expected, np.float64)


def test_broadcasting_one_truth_against_many_models(xp, rng):
    p = distributions(rng, (6,))
    q = distributions(rng, (4, 6), zero_fraction=0.0)
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        result = getattr(info, name)(xp.asarray(p), xp.asarray(q))
        expected = reference.along(getattr(reference, name), p[None, :], q)
        assert tuple(result.shape) == (4,)
        close(xp.to_numpy(result), expected, np.float64)
    # Broadcasting along the batch axis with axis=0: (6, 1) against (6, 3).
    p_col = distributions(rng, (6, 1), axis=0)
    q_cols = distributions(rng, (6, 3), axis=0, zero_fraction=0.0)
    result = info.cross_entropy(xp.asarray(p_col), xp.asarray(q_cols), axis=0)
    close(
        xp.to_numpy(result),
        reference.along(reference.cross_entropy, p_col, q_cols, axis=0),
        np.float64,
    )


def _record_results(monkeypatch, name: str, results: list | None = None) -> list:
    """The results of each call of ``_blocked.<name>`` from now on (None: rejected),
    appended to ``results`` (a new list by default)."""
    results = [] if results is None else results
    original = getattr(_blocked, name)

    def recorded(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(_blocked, name, recorded)
    return results


def test_large_input_takes_the_blocked_path_and_agrees_with_scipy(rng, monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    p = distributions(rng, (300, 1000))
    q = distributions(rng, (300, 1000), zero_fraction=0.0)
    assert _blocked.eligible(p, q, axis=1)
    results = _record_results(monkeypatch, "reduce_rows")
    np.testing.assert_allclose(info.entropy(p), scipy_stats.entropy(p, base=2, axis=1), rtol=1e-12)
    expected = scipy_stats.entropy(p, base=2, axis=1) + scipy_stats.entropy(p, q, base=2, axis=1)
    np.testing.assert_allclose(info.cross_entropy(p, q), expected, rtol=1e-12)
    np.testing.assert_allclose(
        info.cross_entropy(p.astype(np.float32), q.astype(np.float32)), expected, rtol=2e-5
    )
    # Each of the three calls was answered by the blocked path, not by the fallback.
    assert len(results) == 3
    assert all(result is not None for result in results)


@pytest.mark.parametrize("kernel", ["auto", "off"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_divergences_take_the_blocked_path_and_equal_the_plain_one(rng, monkeypatch, dtype, kernel):
    # Rows far apart, rows within a relative 1e-7 (the log1p branch), zeros in p, and
    # p / q overflowing, all in one array. On NumPy's operations ("off") the blocked path
    # forms the same terms block by block and sums each row whole, so it gives the plain
    # path's numbers exactly; the compiled kernel agrees within roundings of the terms.
    monkeypatch.setattr(_native, "NATIVE", kernel)
    if kernel == "auto" and not _native.available():
        pytest.skip(f"no divergence kernel here: {_native.unavailable_reason()}")
    kernel_calls = []
    original = _native.divergence_rows
    monkeypatch.setattr(
        _native,
        "divergence_rows",
        lambda *args: kernel_calls.append(args[0]) or original(*args),
    )
    scipy_stats = pytest.importorskip("scipy.stats")
    distance = pytest.importorskip("scipy.spatial.distance")
    p = distributions(rng, (400, 700), dtype=dtype)
    p[50] = 1 / 700
    q = distributions(rng, (400, 700), zero_fraction=0.0, dtype=dtype)
    q[:50] = p[:50] * (1 + 1e-7 * rng.standard_normal((50, 700)))
    q[50] = 1 / 699
    q[50, 0] = np.finfo(dtype).smallest_subnormal  # p / q overflows there
    q = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    assert _blocked.eligible(p, q, axis=1)
    calls = _record_results(monkeypatch, "reduce_terms")
    blocked = {name: getattr(info, name)(p, q) for name in ("kl_divergence", "js_divergence")}
    assert len(calls) == 2
    assert all(result is not None for result in calls)
    assert set(kernel_calls) == ({"kl", "js"} if kernel == "auto" else set())
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    for name, result in blocked.items():
        plain = getattr(info, name)(p, q)
        if kernel == "off":
            np.testing.assert_array_equal(result, plain)
        else:
            assert_same_divergence(name, result, plain, p, q, dtype=dtype)
    assert len(calls) == 2
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    close(blocked["kl_divergence"], scipy_stats.entropy(p64, q64, base=2, axis=1), dtype)
    expected = distance.jensenshannon(p64, q64, base=2, axis=1) ** 2
    close(blocked["js_divergence"], expected, dtype)


@pytest.mark.parametrize("kind", ["uniform", "skewed"])
def test_blocked_path_keeps_float32_accuracy_on_a_long_row(rng, kind):
    # One float32 row of 4,000,037 outcomes: a running float32 dot over it drifts by up to
    # 1e-4 relative, both in the row sum (a valid row would be refused by the blocked path)
    # and in the weighted sum (the entropy itself); a pairwise sum stays near 1e-7.
    scipy_stats = pytest.importorskip("scipy.stats")
    n = 4_000_037
    if kind == "uniform":
        p = np.full(n, 1 / n, dtype=np.float32)
    else:
        p = distributions(rng, (n,), dtype=np.float32)
    q = positive_distributions(rng, (n,), dtype=np.float32)
    assert _blocked.eligible(p, q, axis=0)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    entropy = scipy_stats.entropy(p64, base=2)
    result = _blocked.reduce_rows(p[None, :], None, base=2)
    assert result is not None  # accepted by the blocked path's own row-sum check
    close(result, [entropy], np.float32)
    close(info.entropy(p), entropy, np.float32)
    expected = entropy + scipy_stats.entropy(p64, q64, base=2)
    close(info.cross_entropy(p, q), expected, np.float32)


# Forking a multi-threaded process is the point of this test; Python 3.12+ warns about it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_blocked_path_works_in_a_forked_child(rng):
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    p = distributions(rng, (600, 500))
    expected = info.entropy(p)  # creates the pool in the parent first
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_entropy_in_child, (p,)).get(timeout=60)
    np.testing.assert_array_equal(result, expected)


def _entropy_in_child(p):
    return info.entropy(p)


@pytest.mark.parametrize("shape", [(4, 70_000), (300_000,)])
def test_blocked_path_with_rows_longer_than_a_block(rng, shape):
    scipy_stats = pytest.importorskip("scipy.stats")
    p = distributions(rng, shape)
    q = distributions(rng, shape, zero_fraction=0.0)
    assert _blocked.eligible(p, q, axis=p.ndim - 1)
    assert shape[-1] > _blocked.BLOCK_ELEMENTS
    expected = scipy_stats.entropy(p, base=2, axis=-1)
    np.testing.assert_allclose(info.entropy(p), expected, rtol=1e-12)
    expected = expected + scipy_stats.entropy(p, q, base=2, axis=-1)
    np.testing.assert_allclose(info.cross_entropy(p, q), expected, rtol=1e-12)


def _perplexity_oracle(p) -> float:
    """2 ** H(P) as the math reads, in float64 with a correctly rounded sum."""
    return 2.0 ** -math.fsum(x * math.log2(x) for x in map(float, p) if x > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_perplexity_in_narrow_dtypes_is_the_oracle_rounded_once(xp, rng, dtype):
    # 2 ** H computed in float32 was off by up to 20 ulps (2.4e-6 relative); computed in
    # float64 and rounded once it is the correctly rounded value, so a uniform float32
    # distribution over 10 outcomes gives exactly 10.
    cases = [np.full(n, 1 / n, dtype) for n in range(1, 300)]
    for n in rng.integers(2, 3000, 40):
        cases.append(rng.dirichlet(np.ones(int(n)) * 0.3).astype(dtype))
    tolerance = math.sqrt(np.finfo(dtype).eps)
    cases = [p for p in cases if abs(math.fsum(map(float, p)) - 1) <= tolerance]
    assert len(cases) > 250
    for p in cases:
        got = xp.to_numpy(info.perplexity(xp.asarray(p, dtype)))
        assert got.dtype == dtype
        assert got == dtype(_perplexity_oracle(p)), (len(p), got, _perplexity_oracle(p))
    assert float(xp.to_numpy(info.perplexity(xp.asarray(np.full(10, 0.1), np.float32)))) == 10.0


def test_perplexity_in_bfloat16_is_the_oracle_rounded_once():
    torch = pytest.importorskip("torch")
    for n in (3, 10, 100, 1000):
        p = torch.full((n,), 1 / n, dtype=torch.bfloat16)
        if abs(p.double().sum().item() - 1) > 2**-3.5:
            continue
        expected = torch.tensor(_perplexity_oracle(p.double().tolist()), dtype=torch.float64)
        assert info.perplexity(p).item() == expected.to(torch.bfloat16).item()


def test_perplexity_in_float64_is_within_a_few_ulps(xp):
    for n in range(1, 200):
        got = float(xp.to_numpy(info.perplexity(xp.asarray(np.full(n, 1 / n)))))
        tolerance = 8e-16 * max(1.0, math.log(n))  # a few ulps of H, times H
        assert got == pytest.approx(_perplexity_oracle([1 / n] * n), rel=tolerance)


def test_perplexity_past_the_float16_range_is_inf_without_a_warning(xp):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = info.perplexity(xp.asarray(np.full(2**16, 2.0**-16), np.float16))
        fits = info.perplexity(xp.asarray(np.full(2**15, 2.0**-15), np.float16))
    assert float(xp.to_numpy(big)) == math.inf  # 65536 > 65504, float16's largest number
    assert float(xp.to_numpy(fits)) == 32768.0


def test_perplexity_keepdims(xp, rng):
    for axis in (0, 1, -1):
        p = distributions(rng, (3, 4, 5), axis=axis)
        plain = xp.to_numpy(info.perplexity(xp.asarray(p), axis=axis))
        kept = xp.to_numpy(info.perplexity(xp.asarray(p), axis=axis, keepdims=True))
        assert kept.shape == tuple(np.expand_dims(plain, axis).shape)
        np.testing.assert_array_equal(kept, np.expand_dims(plain, axis))
        entropy_kept = xp.to_numpy(info.entropy(xp.asarray(p), axis=axis, keepdims=True))
        assert kept.shape == entropy_kept.shape
    with pytest.raises(TypeError, match=r"`keepdims` must be True or False; got str"):
        info.perplexity(xp.asarray(p), keepdims="yes")


def _float32_rounded(rng, shape) -> np.ndarray:
    """float32 distributions with rows normalised in float32, whose sums are then off 1 by
    about 1e-7: within float32's tolerance, beyond float64's (1.5e-8)."""
    p = distributions(rng, shape, dtype=np.float32)
    p /= p.sum(axis=-1, keepdims=True)
    off = np.abs(p.astype(np.float64).sum(axis=-1) - 1)
    assert off.max() > 1.5e-8
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_perplexity_of_a_large_narrow_array_takes_the_blocked_path(rng, monkeypatch, dtype):
    # Each block is widened to float64 in turn (no float64 copy of the whole array), and
    # its rows are summed pairwise: the numbers of the plain path on a float64 copy, to
    # the bit, and so the float64 oracle rounded once, as for small inputs.
    p = _float32_rounded(rng, (16, 1 << 14)).astype(dtype)
    p[3] = 0.0
    p[3, :64] = 1 / 64  # a uniform row, exact in both dtypes
    assert _blocked.eligible(p, axis=1, widen=True)
    calls = _record_results(monkeypatch, "reduce_rows")
    blocked = info.perplexity(p)
    kept = info.perplexity(p, keepdims=True)
    unchecked = info.perplexity(p, validate=False)
    assert len(calls) == 3
    assert all(result is not None for result in calls)
    assert blocked.dtype == dtype
    assert blocked[3] == 64
    np.testing.assert_array_equal(kept, blocked[:, None])
    np.testing.assert_array_equal(unchecked, blocked)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    np.testing.assert_array_equal(info.perplexity(p), blocked)
    if dtype == np.float32:  # the oracle is slow: one dtype
        expected = [dtype(_perplexity_oracle(row)) for row in p]
        np.testing.assert_array_equal(blocked, expected)


def test_perplexity_of_a_large_float16_array_past_its_range_is_inf(monkeypatch):
    import warnings

    p = np.full((4, 1 << 16), 2.0**-16, dtype=np.float16)
    calls = _record_results(monkeypatch, "reduce_rows")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = info.perplexity(p)
    assert calls
    assert calls[0] is not None
    assert result.dtype == np.float16
    assert np.all(result == np.inf)  # 65536 > 65504


def test_unvalidated_rows_off_one_take_the_blocked_path(rng, monkeypatch):
    # validate=False is meant for sums that are off (here float32-rounded rows held in
    # float64); the blocked path then skips its sum check instead of falling back to the
    # plain path after a full pass (which built several full-size temporaries).
    p = _float32_rounded(rng, (300, 1000)).astype(np.float64)
    q = positive_distributions(rng, (300, 1000), dtype=np.float32).astype(np.float64)
    assert _blocked.eligible(p, q, axis=1)
    rows = _record_results(monkeypatch, "reduce_rows")
    terms = _record_results(monkeypatch, "reduce_terms")
    names = ("entropy", "cross_entropy", "kl_divergence", "js_divergence")
    results = {
        name: getattr(info, name)(*((p,) if name == "entropy" else (p, q)), validate=False)
        for name in names
    }
    assert len(rows) == 2
    assert len(terms) == 2
    assert all(result is not None for result in rows + terms)
    with pytest.raises(ValueError, match="must sum to 1"):
        info.entropy(p)  # the check is still made where asked for
    assert rows[-1] is None
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    for name in names:
        args = (p,) if name == "entropy" else (p, q)
        plain = getattr(info, name)(*args, validate=False)
        if name in ("kl_divergence", "js_divergence"):
            same_as_plain(name, results[name], plain, p, q)
        else:  # a SIMD dot per row on the blocked path, a pairwise sum on the plain one
            np.testing.assert_allclose(results[name], plain, rtol=1e-13)


def test_a_float32_input_beside_a_float64_one_takes_the_blocked_path(rng, monkeypatch):
    # Each input is checked in its own dtype, against its own tolerance, before the
    # blocked path (which sees both promoted to float64) skips the sums.
    p = _float32_rounded(rng, (300, 1000))
    q = positive_distributions(rng, (300, 1000))
    rows = _record_results(monkeypatch, "reduce_rows")
    terms = _record_results(monkeypatch, "reduce_terms")
    results = [info.cross_entropy(p, q), info.kl_divergence(q, p)]
    assert all(result is not None for result in rows + terms)
    assert len(rows + terms) == 2
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    np.testing.assert_allclose(results[0], info.cross_entropy(p, q), rtol=1e-13)
    same_as_plain("kl_divergence", results[1], info.kl_divergence(q, p), q, p)
    bad = p.copy()
    bad[7] *= 1.01
    with pytest.raises(ValueError, match=r"`p` must sum to 1 .*float32"):
        info.cross_entropy(bad, q)


def test_float64_rows_longer_than_a_blas_dot_equal_the_plain_path(rng, monkeypatch):
    # Rows of more than DOT_ELEMENTS outcomes are summed pairwise, not by a BLAS dot (which
    # OpenBLAS splits across threads that fight the pool's): the plain path's numbers.
    n = 3 * _blocked.DOT_ELEMENTS
    p = distributions(rng, (_blocked.MIN_ELEMENTS // n + 1, n))
    q = positive_distributions(rng, p.shape)
    assert p.shape[-1] > _blocked.DOT_ELEMENTS
    assert _blocked.eligible(p, q, axis=1)
    calls = _record_results(monkeypatch, "reduce_rows")
    blocked = [info.entropy(p), info.cross_entropy(p, q)]
    assert len(calls) == 2
    assert all(result is not None for result in calls)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    np.testing.assert_array_equal(blocked[0], info.entropy(p))
    np.testing.assert_array_equal(blocked[1], info.cross_entropy(p, q))


def test_perplexity_of_a_large_float32_array_allocates_no_float64_copy(rng):
    import tracemalloc

    p = rng.random((500, 20_000), dtype=np.float32)
    p /= p.sum(axis=1, keepdims=True)
    expected = info.perplexity(p[:, :2000] / p[:, :2000].sum(axis=1, keepdims=True))
    assert expected.shape == (500,)  # warms the pool and its buffers
    tracemalloc.start()
    try:
        info.perplexity(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # NumPy reports its allocations to tracemalloc; a float64 copy would be twice p.
    assert peak < p.nbytes / 8, (peak, p.nbytes)


# ---------------------------------------------------------------------------------------
# torch tensors in the CPU's memory take the blocked path through a NumPy view.

MEASURES = ("entropy", "perplexity", "cross_entropy", "kl_divergence", "js_divergence")


def _measure_args(name: str, p, q) -> tuple:
    return (p,) if name in ("entropy", "perplexity") else (p, q)


def _recorded_blocked_calls(monkeypatch) -> list:
    """The results of the blocked path's calls, of either kind, in one list."""
    calls = _record_results(monkeypatch, "reduce_rows")
    return _record_results(monkeypatch, "reduce_terms", calls)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MEASURES)
def test_large_cpu_tensors_take_the_blocked_path_with_numpys_numbers(rng, monkeypatch, name, dtype):
    torch = pytest.importorskip("torch")
    p = distributions(rng, (300, 1000), dtype=dtype)
    q = positive_distributions(rng, (300, 1000), dtype=dtype)
    rows = _record_results(monkeypatch, "reduce_rows")
    terms = _record_results(monkeypatch, "reduce_terms")
    function = getattr(info, name)
    tensors = _measure_args(name, torch.from_numpy(p), torch.from_numpy(q))
    result = function(*tensors)
    kept = function(*tensors, keepdims=True)
    assert len(rows + terms) == 2
    assert all(r is not None for r in rows + terms)
    assert isinstance(result, torch.Tensor)
    assert result.dtype == tensors[0].dtype
    assert result.shape == (300,)
    assert kept.shape == (300, 1)
    # The same blocked computation as for the NumPy arrays: the same numbers, to the bit.
    np.testing.assert_array_equal(result.numpy(), function(*_measure_args(name, p, q)))
    # And those of torch's own operations, which a tensor needing a gradient keeps.
    with_grad = [t.clone().requires_grad_() for t in tensors]
    plain = function(*with_grad)
    assert plain.grad_fn is not None
    assert len(rows + terms) == 3  # only the NumPy call above added to them
    close(result.numpy(), plain.detach().numpy(), dtype)


def test_a_tensor_needing_a_gradient_takes_the_blocked_path_under_no_grad(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    p = torch.from_numpy(distributions(rng, (300, 1000))).requires_grad_()
    rows = _record_results(monkeypatch, "reduce_rows")
    differentiable = info.entropy(p)
    assert not rows
    differentiable.sum().backward()
    assert p.grad is not None
    with torch.no_grad():
        result = info.entropy(p)
    assert len(rows) == 1
    assert result.grad_fn is None
    close(result.numpy(), differentiable.detach().numpy(), np.float64)


def test_tensors_numpy_cannot_view_keep_torchs_operations(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    p = distributions(rng, (300, 1000))
    calls = _recorded_blocked_calls(monkeypatch)
    bfloat16 = torch.from_numpy(p).to(torch.bfloat16)  # no NumPy dtype
    info.entropy(bfloat16, validate=False)
    assert not calls


def test_strided_tensors_and_arrays_take_the_blocked_path_in_chunks(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    p = distributions(rng, (600, 1000))
    expected = info.entropy(p)
    calls = _recorded_blocked_calls(monkeypatch)
    transposed = torch.from_numpy(np.ascontiguousarray(p.T)).T  # not C-contiguous
    np.testing.assert_array_equal(info.entropy(transposed).numpy(), expected)
    np.testing.assert_array_equal(info.entropy(np.asfortranarray(p)), expected)
    np.testing.assert_array_equal(info.entropy(p[::2]), expected[::2])  # every other row
    assert len(calls) == 3


@pytest.mark.parametrize("name", MEASURES)
def test_bad_large_cpu_tensors_get_numpys_error(rng, name):
    torch = pytest.importorskip("torch")
    p = distributions(rng, (300, 1000))
    q = positive_distributions(rng, (300, 1000))
    p[17, 3] = -0.25
    p[17, 4] += 0.25
    function = getattr(info, name)
    rule = r"`p` must be non-negative; got -0.25 at index \(17, 3\)"
    with pytest.raises(ValueError, match=rule) as from_numpy:
        function(*_measure_args(name, p, q))
    with pytest.raises(ValueError, match=rule) as from_torch:
        function(*_measure_args(name, torch.from_numpy(p), torch.from_numpy(q)))
    assert str(from_torch.value) == str(from_numpy.value)


@pytest.mark.parametrize("narrow", ["p", "q"])
@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence", "js_divergence"])
def test_a_float32_input_beside_a_float64_one_is_widened_block_by_block(
    rng, monkeypatch, name, narrow
):
    import tracemalloc

    shape = (2000, 1000)
    p = distributions(rng, shape)
    q = positive_distributions(rng, shape)
    if narrow == "p":
        p = _float32_rounded(rng, shape)
    else:
        q = (q / q.sum(axis=1, keepdims=True)).astype(np.float32)
    function = getattr(info, name)
    function(p, q)  # warms the pool and its buffers
    calls = _recorded_blocked_calls(monkeypatch)
    tracemalloc.start()
    try:
        blocked = function(p, q)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(calls) == 1
    assert calls[0] is not None
    assert blocked.dtype == np.float64
    # A float64 copy of the float32 input (16 MB) would be twice its size; the blocks'
    # temporaries on the pool's threads are a few MB.
    narrow_bytes = (p if narrow == "p" else q).nbytes
    assert peak < narrow_bytes / 2, (peak, narrow_bytes)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    plain = function(p, q)  # on a float64 copy of the narrow input
    assert len(calls) == 1
    if name == "cross_entropy":  # a dot per row on one path, a pairwise sum on the other
        np.testing.assert_allclose(blocked, plain, rtol=1e-13)
    else:
        same_as_plain(name, blocked, plain, p, q)


PAIR_MEASURES = ("cross_entropy", "kl_divergence", "js_divergence")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PAIR_MEASURES)
@pytest.mark.parametrize("row_shape", [(700,), (1, 700), (1, 1, 700)])
@pytest.mark.parametrize("single", ["q", "p"])
def test_one_row_against_many_takes_the_blocked_path(rng, monkeypatch, dtype, name, row_shape,
                                                     single):  # fmt: skip
    """One distribution against each of many rows: the blocked path broadcasts the single
    row against every block, with the numbers of the same call on the row repeated (and
    of the plain path), where before the plain path made full-size temporaries."""
    full = distributions(rng, (3, 130, 700), dtype=dtype)
    full[0, :40] = distributions(rng, (40, 700), zero_fraction=0.0, dtype=dtype)
    row = distributions(rng, (700,), zero_fraction=0.0, dtype=dtype)
    row[0] = np.finfo(dtype).smallest_subnormal  # ratios that overflow
    row = (row / row.sum()).astype(dtype)
    full[1, 7] = row * (1 + 1e-7 * rng.standard_normal(700))  # the log1p branches
    full[1, 7] /= full[1, 7].sum()
    one = row.reshape(row_shape)
    p, q = (full, one) if single == "q" else (one, full)
    measure = getattr(info, name)
    calls = _record_results(
        monkeypatch, "reduce_rows" if name == "cross_entropy" else "reduce_terms"
    )
    got = measure(p, q)
    assert calls
    assert calls[-1] is not None
    assert got.shape == full.shape[:-1]
    repeated = np.ascontiguousarray(np.broadcast_to(row, full.shape))
    expanded = measure(*((full, repeated) if single == "q" else (repeated, full)))
    np.testing.assert_array_equal(got, expanded)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", full.size + 1)  # the plain path now
    if name == "cross_entropy" or not _native.available():
        np.testing.assert_allclose(got, measure(p, q), rtol=1e-13 if dtype == np.float64 else 1e-6)
    else:
        assert_same_divergence(name, got, measure(p, q), p, q, dtype=dtype)
    keep = measure(p, q, keepdims=True)
    assert keep.shape == (*full.shape[:-1], 1)


def test_one_row_against_many_in_two_dtypes_and_as_torch(rng):
    torch = pytest.importorskip("torch")
    full = distributions(rng, (400, 700))
    row = distributions(rng, (700,), zero_fraction=0.0)
    repeated = np.ascontiguousarray(np.broadcast_to(row, full.shape))
    for name in PAIR_MEASURES:
        measure = getattr(info, name)
        expected = measure(full, repeated.astype(np.float32))
        np.testing.assert_array_equal(measure(full, row.astype(np.float32)), expected)
        got = measure(torch.from_numpy(full), torch.from_numpy(row))
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), measure(full, repeated))


def test_a_bad_single_row_gets_the_plain_path_s_error(rng):
    full = distributions(rng, (400, 700))
    row = distributions(rng, (700,), zero_fraction=0.0) * 1.01
    with pytest.raises(ValueError, match=r"`q` must sum to 1 along axis -1.*got a sum of 1.01"):
        info.kl_divergence(full, row)
    row[3] = -0.1
    with pytest.raises(ValueError, match=r"`p` must be non-negative; got -0.1 at index \(3,\)"):
        info.cross_entropy(row, full)


def test_one_row_with_a_zero_where_many_rows_are_positive(rng):
    full = distributions(rng, (400, 700))
    row = distributions(rng, (700,), zero_fraction=0.0)
    row[5] = 0.0
    row /= row.sum()
    full[:10, 5] = 0.0  # these rows put no mass where the row has none
    full[:10] /= full[:10].sum(axis=1, keepdims=True)
    full[10:, 5] = np.maximum(full[10:, 5], 1e-3)
    full[10:] /= full[10:].sum(axis=1, keepdims=True)
    for name in ("cross_entropy", "kl_divergence"):
        got = getattr(info, name)(full, row)
        assert np.isfinite(got[:10]).all()
        assert np.isinf(got[10:]).all()
    assert np.isfinite(info.js_divergence(full, row)).all()


@pytest.mark.parametrize("name", ["entropy", "perplexity", *PAIR_MEASURES])
@pytest.mark.parametrize(("shape", "axis"), [((300, 40), 0), ((5, 300, 7), 1), ((5, 300, 7), 0)])
def test_an_axis_other_than_the_last_takes_the_blocked_path(rng, monkeypatch, name, shape, axis):
    """Distributions along axis 0 (SciPy's default) or any other: the blocked path copies
    chunks with the axis moved last, and gives the numbers of the same call on a copy
    with the axis moved last, bit for bit."""
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(_blocked, "MOVED_CHUNK_ELEMENTS", 300 * 3)  # chunks of 3 rows
    p = distributions(rng, shape, axis=axis)
    q = distributions(rng, shape, axis=axis, zero_fraction=0.0)
    measure = getattr(info, name)
    args = (p,) if name in ("entropy", "perplexity") else (p, q)
    reducer = "reduce_terms" if name in ("kl_divergence", "js_divergence") else "reduce_rows"
    calls = _record_results(monkeypatch, reducer)
    got = measure(*args, axis=axis)
    assert len(calls) > 1  # chunk by chunk
    assert all(result is not None for result in calls)
    moved = [np.ascontiguousarray(np.moveaxis(a, axis, -1)) for a in args]
    np.testing.assert_array_equal(got, measure(*moved))
    assert measure(*args, axis=axis, keepdims=True).shape == (
        *shape[:axis], 1, *shape[axis + 1 :]
    )  # fmt: skip
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)  # the plain path now
    np.testing.assert_allclose(got, measure(*args, axis=axis), rtol=1e-13)


def test_an_axis_other_than_the_last_with_a_bad_column_gets_the_plain_path_s_error(
    rng, monkeypatch
):
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(_blocked, "MOVED_CHUNK_ELEMENTS", 600)
    p = distributions(rng, (300, 40), axis=0)
    p[:, 33] *= 1.01
    with pytest.raises(ValueError, match=r"`p` must sum to 1 along axis 0.*got a sum of 1.01"):
        info.entropy(p, axis=0)


@pytest.mark.parametrize("name", ["entropy", "perplexity", *PAIR_MEASURES])
def test_the_transpose_of_a_c_array_along_axis_0_is_read_in_place(rng, monkeypatch, name):
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    p = distributions(rng, (40, 300))
    q = distributions(rng, (40, 300), zero_fraction=0.0)
    args = (p,) if name in ("entropy", "perplexity") else (p, q)
    measure = getattr(info, name)
    reducer = "reduce_terms" if name in ("kl_divergence", "js_divergence") else "reduce_rows"
    calls = _record_results(monkeypatch, reducer)
    got = measure(*(a.T for a in args), axis=0)
    assert len(calls) == 1  # one call on the arrays themselves: no chunk copies
    assert calls[0] is not None
    np.testing.assert_array_equal(got, measure(*args))


def test_a_strided_single_row_keeps_the_plain_path(rng):
    full = distributions(rng, (400, 700))
    wide = distributions(rng, (1400,), zero_fraction=0.0)
    wide[::2] /= wide[::2].sum()
    row = wide[::2]  # a distribution, not contiguous
    assert not _blocked.eligible(full, row, axis=1)
    np.testing.assert_allclose(
        info.kl_divergence(full, row),
        info.kl_divergence(full, np.ascontiguousarray(row)),
        rtol=1e-13,
    )
