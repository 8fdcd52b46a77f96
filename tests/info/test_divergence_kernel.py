"""The compiled divergence kernel (``info/_divergences.c``) against an oracle in 40 digits
(mpmath), against the plain path, on bad input, and its fallbacks."""

from __future__ import annotations

import ctypes
import math
import os
import shutil

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import info
from crossentropy.info import _blocked, _native
from tests.info._data import assert_same_divergence, distributions

needs_kernel = pytest.mark.skipif(
    not _native.available(),
    reason=f"no divergence kernel here: {_native.unavailable_reason()}",
)


def test_a_machine_with_a_compiler_uses_the_kernel():
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here")
    assert _native.available(), _native.unavailable_reason()


CASES = [("kl", 2.0), ("kl", math.e), ("kl", 10.0), ("kl", 0.5), ("js", math.e)]


def _exact(kind: str, p_row, q_row, base: float) -> tuple[float, float]:
    """The kernel's row sum (KL in units of ``base``; JS in nats, twice the divergence)
    and the sum of the sizes of its terms, in 40 digits."""
    with mpmath.workdps(40):
        total, size = mpmath.mpf(0), mpmath.mpf(0)
        for pj, qj in zip(p_row.tolist(), q_row.tolist(), strict=True):
            p, q = mpmath.mpf(pj), mpmath.mpf(qj)
            if kind == "kl":
                if p == 0:
                    continue
                if q == 0:  # an infinite divergence, negative in a base below 1
                    return (math.inf if base > 1 else -math.inf), math.inf
                term = p * mpmath.log(p / q) / mpmath.log(base)
                total, size = total + term, size + abs(term)
            else:
                m = (p + q) / 2
                for x in (p, q):
                    if x > 0:
                        term = x * mpmath.log(x / m)
                        total, size = total + term, size + abs(term)
        return float(total), float(size)


def _rows(rng: np.random.Generator, n: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Rows that take every branch: far apart, within a relative 1e-9 (log1p), zeros in
    p, in q and in both, q subnormal beside p (p / q overflows), q a hundred times p."""
    p = rng.random((7, n)) ** 3 + 1e-3
    q = rng.random((7, n)) ** 3 + 1e-3
    q[1] = p[1] * (1 + 1e-9 * rng.standard_normal(n))
    p[2, 1::3] = 0.0  # from the second entry on: every row keeps some mass
    q[3, 1::4] = 0.0
    p[4, 1::2] = q[4, 1::2] = 0.0
    q[6] = p[6]
    q[6, ::2] *= 100
    p, q = (x / x.sum(axis=1, keepdims=True) for x in (p, q))
    tiny = np.finfo(dtype).smallest_subnormal
    q[5, 0] = tiny  # p / q overflows there (the row's sum moves by less than a rounding)
    return p.astype(dtype), q.astype(dtype)


@needs_kernel
@pytest.mark.parametrize(("kind", "base"), CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7, 511, 512, 513, 1300])
def test_kernel_against_40_digits(rng, kind, base, dtype, n):
    p, q = _rows(rng, n, dtype)
    for p_rows, q_rows in ((p, q), (p[:1], q), (p, q[6:7])):  # one row against many too
        out = np.full(max(len(p_rows), len(q_rows)), np.nan)
        assert _native.divergence_rows(kind, p_rows, q_rows, out, base)
        for i, got in enumerate(out):
            exact, size = _exact(kind, p_rows[min(i, len(p_rows) - 1)],
                                 q_rows[min(i, len(q_rows) - 1)], base)  # fmt: skip
            if math.isinf(exact):
                assert got == exact
            else:  # a few roundings of float64 per term at most
                assert abs(got - exact) <= 4 * math.sqrt(n) * 2.0**-52 * size, (i, got, exact)


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("where", ["p", "q"])
@pytest.mark.parametrize("bad", [-1e-3, np.nan])
@pytest.mark.parametrize("kind", ["kl", "js"])
def test_kernel_refuses_negative_and_nan_entries(kind, bad, where, dtype):
    p = np.full((3, 600), 1 / 600, dtype=dtype)
    q = p.copy()
    (p if where == "p" else q)[2, 599] = bad
    assert not _native.divergence_rows(kind, p, q, np.empty(3), 2.0)
    zero = np.full((3, 600), 1 / 600, dtype=dtype)
    zero[0, 0] = -0.0  # a negative zero is a zero
    assert _native.divergence_rows(kind, zero, zero[1:2].copy(), np.empty(3), 2.0)


@needs_kernel
@pytest.mark.parametrize("name", ["kl_divergence", "js_divergence"])
def test_bad_entries_get_the_plain_path_s_error(rng, monkeypatch, name):
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    p = distributions(rng, (300, 40))
    q = distributions(rng, (300, 40), zero_fraction=0.0)
    q[250, 7] = -0.25
    negative = r"`q` must be non-negative; got -0.25 at index \(250, 7\)"
    with pytest.raises(ValueError, match=negative):
        getattr(info, name)(p, q)
    q[250, 7] = np.nan
    with pytest.raises(ValueError, match=r"`q` must .*NaN"):
        getattr(info, name)(p, q)
    # Unchecked, the kernel still refuses the NaN, and the plain path's NaN stays in its row.
    unchecked = getattr(info, name)(p, q, validate=False)
    assert np.isnan(unchecked[250])
    assert np.isfinite(np.delete(unchecked, 250)).all()


@st.composite
def _pairs(draw):
    rows = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    weight = st.one_of(
        st.just(0.0),
        st.sampled_from([5e-324, 1e-300, 1e-30]),
        st.floats(1e-6, 1.0),
    )
    arrays = []
    for _ in range(2):
        x = np.array(draw(st.lists(weight, min_size=rows * n, max_size=rows * n)))
        x = x.reshape(rows, n)
        x[:, 0] += (x.sum(axis=1) == 0) * 1.0  # every row has some mass
        arrays.append(x / x.sum(axis=1, keepdims=True))
    return arrays


@needs_kernel
@given(_pairs(), st.sampled_from(["kl_divergence", "js_divergence"]), st.sampled_from([2, math.e]))
def test_kernel_agrees_with_the_plain_path(pair, name, base):
    p, q = pair
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_blocked, "MIN_ELEMENTS", 1)
        blocked = getattr(info, name)(p, q, base=base, validate=False)
        patch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)
        plain = getattr(info, name)(p, q, base=base, validate=False)
    assert_same_divergence(name, blocked, plain, p, q, base=base)


@pytest.mark.parametrize("name", ["kl_divergence", "js_divergence"])
def test_off_uses_numpy_s_terms(rng, monkeypatch, name):
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(_native, "NATIVE", "off")
    monkeypatch.setattr(_native, "divergence_rows", _never_called)
    p = distributions(rng, (200, 50))
    q = distributions(rng, (200, 50), zero_fraction=0.0)
    got = getattr(info, name)(p, q)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)
    np.testing.assert_array_equal(got, getattr(info, name)(p, q))  # NumPy's numbers


def _never_called(*args):
    raise AssertionError("the kernel ran")


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setattr(_native, "NATIVE", "on")
    with pytest.raises(ValueError, match="NATIVE must be 'auto' or 'off'; got 'on'"):
        _native.available()


@pytest.fixture
def fresh_library():
    """A fresh look for the compiled kernel, and another after the test (made at the next
    use, once the test's patches are undone)."""
    _native._library.cache_clear()
    yield
    _native._library.cache_clear()


def test_without_a_compiler_numpy_s_terms_run_and_say_why(rng, monkeypatch, fresh_library):
    def no_compiler(*args, **kwargs):
        raise OSError("no C compiler found (set $CC)")

    monkeypatch.setattr(_native._build, "compile_helper", no_compiler)
    assert not _native.available()
    assert _native.unavailable_reason() == "no C compiler found (set $CC)"
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", 1)
    p = distributions(rng, (100, 30))
    q = distributions(rng, (100, 30), zero_fraction=0.0)
    got = info.kl_divergence(p, q)
    monkeypatch.setattr(_blocked, "MIN_ELEMENTS", p.size + 1)
    np.testing.assert_array_equal(got, info.kl_divergence(p, q))


class _Writes:
    """A stand-in library whose kernel writes ``value`` into every row."""

    def __init__(self, value: float) -> None:
        self.value = value

    def ce_divergence_rows(self, kind, f32, p, p_step, q, q_step, rows, n, bits, scale, out):
        np.ctypeslib.as_array((ctypes.c_double * rows).from_address(out))[:] = self.value
        return 0


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_the_self_check_refuses_a_wrong_kernel(value):
    with pytest.raises(AssertionError, match="disagrees with the reference"):
        _native._self_check(_Writes(value))
