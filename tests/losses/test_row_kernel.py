"""The compiled row kernel (``losses/_rows.c``): the torch operations' numbers for every
option it serves, the gradient rounded as torch rounds it, and the torch operations
wherever it does not serve or cannot run."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import losses
from crossentropy._build import CACHE_ENV
from crossentropy.losses import _kernel, _rows
from tests._process import run_fresh

needs_kernel = pytest.mark.skipif(
    not _rows.available(), reason=f"the row kernel is unavailable: {_rows.unavailable_reason()}"
)

HALF = (torch.bfloat16, torch.float16)


def _logits(n: int, v: int, dtype: torch.dtype, seed: int = 0, *positions: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, *positions, generator=g) * 3).to(dtype)


def _both(monkeypatch, logits, targets, **options) -> tuple[_kernel.RowTerms, _kernel.RowTerms]:
    """``cross_entropy_rows`` on the kernel and on the torch operations."""
    kernel = _kernel.cross_entropy_rows(logits.clone(), targets, **options)
    monkeypatch.setattr(_rows, "NATIVE", "off")
    plain = _kernel.cross_entropy_rows(logits.clone(), targets, **options)
    monkeypatch.setattr(_rows, "NATIVE", "auto")
    return kernel, plain


def _count_kernel_calls(monkeypatch) -> list[str]:
    """The names of the kernel's entry points called (class indices, probabilities)."""
    calls: list[str] = []
    for name in ("rows", "probability_rows"):
        entry = getattr(_rows, name)

        def counted(*args, _entry=entry, _name=name, **kwargs):
            calls.append(_name)
            return _entry(*args, **kwargs)

        monkeypatch.setattr(_rows, name, counted)
    return calls


def test_a_machine_with_a_compiler_uses_the_kernel():
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here")
    assert _rows.available(), _rows.unavailable_reason()
    assert _rows.unavailable_reason() is None


# Vocabularies of one block, of several with a short last one, and of a single class.
OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": "w"},
    {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-3},
    {"z_loss": 1e-2, "base": 2.0},
]


@needs_kernel
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    "shape",
    # rows: one block, several with a short last one, a single class; images (n, V, S):
    # two tiles of positions with a short last one, a single position, a single class
    [(7, 10), (5, 2 * 1024 + 37), (3, 1), (2, 21, 70), (3, 5, 1), (2, 1, 9)],
)
@pytest.mark.parametrize("grad_scale", [None, 0.25, "per row"])
def test_kernel_equals_the_torch_operations_in_float32(monkeypatch, options, shape, grad_scale):
    n, v, *positions = shape
    logits = _logits(n, v, torch.float32, 0, *positions)
    targets = torch.randint(0, v, (n, *positions), generator=torch.Generator().manual_seed(1))
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(v, generator=torch.Generator().manual_seed(2)) + 0.1
    if grad_scale == "per row":
        grad_scale = torch.linspace(0.0, 2.0, targets.numel()).reshape(targets.shape)
    calls = _count_kernel_calls(monkeypatch)
    kernel, plain = _both(monkeypatch, logits, targets, grad_scale=grad_scale, **options)
    assert calls == ["rows"]  # the kernel ran the first call, not the second
    torch.testing.assert_close(kernel.loss, plain.loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(kernel.logsumexp, plain.logsumexp, rtol=2e-6, atol=2e-6)
    if grad_scale is None:
        assert kernel.grad is None
    else:
        torch.testing.assert_close(kernel.grad, plain.grad, rtol=1e-5, atol=3e-7)
    # and both against float64, the math as it reads
    z = logits.double()
    w = options.get("weight")
    eps = options.get("label_smoothing", 0.0)
    expected = torch.nn.functional.cross_entropy(
        z, targets, weight=None if w is None else w.double(), label_smoothing=eps,
        reduction="none",
    )  # fmt: skip
    zl = options.get("z_loss", 0.0)
    if zl:
        lse = torch.logsumexp(z, 1)
        expected = expected + zl * lse.square() * (1.0 if w is None else w.double()[targets])
    expected = expected / math.log(options.get("base", math.e))
    torch.testing.assert_close(kernel.loss.double(), expected, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("positions", [(), (70,)])
def test_half_gradient_is_the_float32_gradient_rounded_as_torch_rounds(dtype, options, positions):
    """The kernel widens half logits exactly and computes in float32: its gradient is the
    float32 kernel's gradient on the widened logits as torch converts it, to the last bit
    but one (the two copies of the kernel may vectorise a row's sum with different widths,
    and so round it differently)."""
    n, v = (6, 2 * 1024 + 37) if not positions else (2, 21)
    logits = _logits(n, v, dtype, 0, *positions)
    targets = torch.randint(0, v, (n, *positions), generator=torch.Generator().manual_seed(3))
    targets.view(-1)[0] = v - 1
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(v, generator=torch.Generator().manual_seed(2)) + 0.1
    half = _kernel.cross_entropy_rows(logits, targets, grad_scale=0.5, **options)
    wide = _kernel.cross_entropy_rows(logits.float(), targets, grad_scale=0.5, **options)
    assert half.grad is not None
    assert wide.grad is not None
    assert half.grad.dtype == dtype
    steps = half.grad.view(torch.int16).int() - wide.grad.to(dtype).view(torch.int16).int()
    assert int(steps.abs().max()) <= 1  # same signs here, so a step is one unit in the last place
    torch.testing.assert_close(half.loss, wide.loss, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(half.logsumexp, wide.logsumexp, rtol=1e-6, atol=0.0)


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
def test_half_rounding_of_ties_nan_and_overflow(dtype):
    """Gradients exactly halfway between two values of the half type (both ways of
    breaking the tie), a NaN row and a gradient beyond float16's range: the kernel's
    conversion agrees with torch's, bit for bit. With 32 equal logits every probability is
    1/32 exactly, so a row's gradient off its target is its scale / 32, exactly."""
    v = 32
    half_ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11  # at 1.0
    ties = [1 + half_ulp, 1 + 3 * half_ulp, -(1 + half_ulp), -(1 + 3 * half_ulp)]
    scale = torch.tensor([*(v * t for t in ties), 1.0, 2.0**17 * v])
    logits = torch.zeros(len(scale), v, dtype=dtype)
    logits[4, 3] = float("nan")
    targets = torch.zeros(len(scale), dtype=torch.long)
    half = _kernel.cross_entropy_rows(logits, targets, grad_scale=scale)
    wide = _kernel.cross_entropy_rows(logits.float(), targets, grad_scale=scale).grad
    assert torch.equal(wide[:4, 1], torch.tensor(ties))  # the ties, exactly, in float32
    wide = wide.to(dtype)
    assert wide[0, 1] != wide[1, 1] - 2 * half_ulp  # one tie rounds down, the other up
    nan = wide.isnan()
    assert bool(nan[4].all())
    assert not bool(nan[:4].any() or nan[5].any())
    assert torch.equal(half.grad.isnan(), nan)  # NaN payloads may differ; NaN is NaN
    assert torch.equal(half.grad[~nan].view(torch.int16), wide[~nan].view(torch.int16))
    assert bool(half.grad[5].isinf().any()) == (dtype == torch.float16)  # beyond float16's range
    assert bool(half.loss[4].isnan())


SPECIAL = st.sampled_from([0.0, -1.0, 30.0, -30.0, 1e4, -1e4, -math.inf, math.inf, math.nan])


@needs_kernel
@given(
    n=st.integers(1, 5),
    v=st.integers(1, 1100),
    positions=st.sampled_from([(), (1,), (3,), (67,)]),
    specials=st.lists(st.tuples(st.integers(0, 10**6), SPECIAL), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_kernel_keeps_the_torch_operations_infinities_and_nans(n, v, positions, specials, seed):
    """Masked classes (-inf), overflowing logits (+inf), NaNs and huge values, in rows and
    in images: the same non-finite results in the same places, and close finite ones (the
    gradient at a target is p - 1, where both sides round p near 1 to float32: a few units
    in the last place of 1 apart at most)."""
    if positions:
        v = 1 + v % 40  # images have few classes; their positions are the rows
    logits = _logits(n, v, torch.float32, seed, *positions)
    for at, value in specials:
        logits.view(-1)[at % logits.numel()] = value
    targets = torch.randint(0, v, (n, *positions), generator=torch.Generator().manual_seed(seed))
    kernel = _kernel.cross_entropy_rows(logits, targets, grad_scale=1.0)
    _rows.NATIVE = "off"
    try:
        plain = _kernel.cross_entropy_rows(logits, targets, grad_scale=1.0)
    finally:
        _rows.NATIVE = "auto"
    for got, want in ((kernel.loss, plain.loss), (kernel.logsumexp, plain.logsumexp)):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6, equal_nan=True)
    torch.testing.assert_close(kernel.grad, plain.grad, rtol=1e-5, atol=3e-7, equal_nan=True)


def _probabilities(n: int, v: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of class probabilities: a peaked one, flat ones, a row of zeros (a masked token)
    and rows with classes of no mass."""
    g = torch.Generator().manual_seed(seed)
    t = torch.softmax(torch.randn(n, v, generator=g) * 4, 1)
    t[t < 1e-3] = 0.0
    t = t / t.sum(1, keepdim=True)
    t[n // 2] = 0.0
    return t.to(dtype)


@needs_kernel
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("v", [10, 2 * 1024 + 37])
@pytest.mark.parametrize("grad_scale", [None, 0.25, "per row"])
@pytest.mark.parametrize(
    ("dtype", "target_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
     (torch.bfloat16, torch.float32), (torch.float16, torch.float16),
     (torch.float16, torch.float32)],
)  # fmt: skip
def test_probability_targets_equal_the_torch_operations(
    monkeypatch, options, v, grad_scale, dtype, target_dtype
):
    n = 6
    logits = _logits(n, v, dtype)
    targets = _probabilities(n, v, target_dtype, 1)
    logits[0, targets[0] == 0] = -math.inf  # masked classes, with no mass: they add 0
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(v, generator=torch.Generator().manual_seed(2)) + 0.1
    if grad_scale == "per row":
        grad_scale = torch.linspace(0.0, 2.0, n)
    calls = _count_kernel_calls(monkeypatch)
    kernel, plain = _both(monkeypatch, logits, targets, grad_scale=grad_scale, **options)
    assert calls == ["probability_rows"]  # the kernel ran the first call, not the second
    # the masked classes of row 0 have no mass unless smoothing gives them some
    assert bool(kernel.loss[0].isinf()) == ("label_smoothing" in options)
    tol = {"rtol": 2e-6, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(kernel.loss, plain.loss, **tol)
    torch.testing.assert_close(kernel.logsumexp, plain.logsumexp, **tol)
    if grad_scale is None:
        assert kernel.grad is None
    elif dtype == torch.float32:
        torch.testing.assert_close(kernel.grad, plain.grad, rtol=1e-5, atol=3e-7)
    else:  # both round the same float32 gradient, up to its last bits, to the half type
        torch.testing.assert_close(kernel.grad, plain.grad, rtol=2e-2, atol=1e-6)
    # and against float64, the math as it reads
    z = logits.double()
    w = options.get("weight")
    eps = options.get("label_smoothing", 0.0)
    q = (1 - eps) * targets.double() + eps / v
    if w is not None:
        q = q * w.double()
    lse = torch.logsumexp(z, 1)
    expected = (q * torch.where(q == 0, 0.0, lse[:, None] - z)).sum(1)
    expected = expected + options.get("z_loss", 0.0) * lse.square()
    expected = expected / math.log(options.get("base", math.e))
    torch.testing.assert_close(kernel.loss.double(), expected, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
def test_half_probability_gradient_is_the_float32_gradient_rounded(dtype):
    n, v = 5, 2 * 1024 + 37
    logits = _logits(n, v, dtype)
    targets = _probabilities(n, v, dtype, 3)
    options = {"label_smoothing": 0.1, "z_loss": 1e-3}
    half = _kernel.cross_entropy_rows(logits, targets, grad_scale=0.5, **options)
    wide = _kernel.cross_entropy_rows(logits.float(), targets.float(), grad_scale=0.5, **options)
    assert half.grad is not None
    assert wide.grad is not None
    rounded = wide.grad.to(dtype)
    same_sign = torch.sign(half.grad) == torch.sign(rounded)
    steps = half.grad.view(torch.int16).int() - rounded.view(torch.int16).int()
    assert int(steps[same_sign].abs().max()) <= 1
    assert bool((half.grad[~same_sign].abs() <= 2 * rounded.abs().min().clamp(min=1e-30)).all())
    torch.testing.assert_close(half.loss, wide.loss, rtol=1e-6, atol=0.0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("base", [math.e, 2.0])
def test_entropy_of_the_prediction(monkeypatch, dtype, probabilities, base):
    """The entropy of softmax(z) per row, beside the loss: the torch operations' and the
    float64 one, for flat rows, peaked rows (an entropy near 0, which keeps its digits),
    masked classes and a NaN row."""
    n, v = 6, 2 * 1024 + 37
    logits = _logits(n, v, torch.float32)
    logits[1] *= 30  # peaked
    logits[2, 0] = 200.0  # one class takes nearly all the mass
    logits[3, ::2] = -math.inf  # masked classes
    logits[4, 5] = math.nan
    logits = logits.to(dtype)
    targets = (
        _probabilities(n, v, dtype, 1)
        if probabilities
        else torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(1))
    )
    if not probabilities:
        targets[3] = 1  # an unmasked class
    kernel, plain = _both(
        monkeypatch, logits, targets, grad_scale=1.0, with_entropy=True, base=base
    )
    assert kernel.entropy is not None
    torch.testing.assert_close(kernel.entropy, plain.entropy, rtol=1e-5, atol=1e-6, equal_nan=True)
    z = logits.double()
    p = torch.softmax(z, 1)
    expected = torch.special.entr(p).sum(1) / math.log(base)
    finite = expected.isfinite()
    assert not bool(finite[4])
    assert bool(kernel.entropy[4].isnan())
    torch.testing.assert_close(
        kernel.entropy[finite].double(), expected[finite], rtol=1e-5, atol=1e-7
    )
    # the peaked rows: small entropies, each to a few units in the last place of its own
    assert float(expected[1]) < 0.2 * math.log(v) / math.log(base)  # a flat row: log(v)
    torch.testing.assert_close(kernel.entropy[1].double(), expected[1], rtol=1e-4, atol=0.0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize(("v", "positions"), [(1500, ()), (21, (100,))])
def test_gradient_written_over_the_logits(dtype, v, positions):
    logits = _logits(9, v, dtype, 0, *positions)
    targets = torch.randint(0, v, (9, *positions), generator=torch.Generator().manual_seed(4))
    options = {"grad_scale": 1.0, "label_smoothing": 0.1, "with_entropy": not positions}
    fresh = _kernel.cross_entropy_rows(logits, targets, **options)
    block = logits.clone()
    inplace = _kernel.cross_entropy_rows(block, targets, out=block, **options)
    assert inplace.grad is block
    assert torch.equal(block, fresh.grad)
    assert torch.equal(inplace.loss, fresh.loss)
    if not positions:  # the entropy reads the logits after their exponentials are formed
        assert torch.equal(inplace.entropy, fresh.entropy)


@needs_kernel
@pytest.mark.parametrize("bad", [1000, -1, -100])
@pytest.mark.parametrize("positions", [(), (3,)])
def test_a_target_out_of_range_raises_instead_of_reading_memory(bad, positions):
    logits = _logits(4, 1000, torch.float32, 0, *positions)
    targets = torch.tensor([3, 8, 5, 7]).reshape(4, *(1 for _ in positions)).repeat(1, *positions)
    targets.view(-1)[-2] = bad
    with pytest.raises(IndexError, match=f"target {bad} is out of bounds for 1000 classes"):
        _kernel.cross_entropy_rows(logits, targets, grad_scale=1.0)


@needs_kernel
@pytest.mark.parametrize(
    ("case", "served"),
    [
        ({}, True),
        ({"dtype": torch.bfloat16}, True),
        ({"dtype": torch.float16, "grad": False}, True),
        ({"dtype": torch.float64}, False),
        ({"softcap": 30.0}, False),
        ({"with_entropy": True}, True),
        ({"with_entropy": True, "probabilities": True}, True),
        ({"with_entropy": True, "spatial": True}, False),  # the entropy of images: torch's
        ({"probabilities": True}, True),
        ({"probabilities": True, "dtype": torch.bfloat16}, True),
        ({"probabilities": True, "target_dtype": torch.float64}, False),
        ({"probabilities": True, "spatial": True}, False),
        ({"spatial": True}, True),
        ({"strided_out": True}, False),  # a gradient buffer the kernel cannot write in order
        ({"spatial": True, "dtype": torch.float64}, False),
    ],
)
def test_the_kernel_serves_what_it_computes_and_nothing_else(monkeypatch, case, served):
    calls = _count_kernel_calls(monkeypatch)
    dtype = case.get("dtype", torch.float32)
    logits = _logits(4, 30, dtype)
    targets = torch.tensor([1, 2, 3, 4])
    options = {k: case[k] for k in ("softcap", "with_entropy") if k in case}
    if case.get("probabilities"):
        targets = torch.softmax(_logits(4, 30, torch.float32, 9), 1)
        targets = targets.to(case.get("target_dtype", dtype))
    if case.get("spatial"):
        logits = logits.reshape(2, 30, 2)
        targets = targets.reshape(2, 30, 2) if case.get("probabilities") else targets.reshape(2, 2)
    grad_scale = None if case.get("grad") is False else 1.0
    if case.get("strided_out"):
        options["out"] = torch.empty(30, 4, dtype=dtype).T  # (4, 30), not contiguous
    terms = _kernel.cross_entropy_rows(logits, targets, grad_scale=grad_scale, **options)
    assert len(calls) == int(served)
    if case.get("strided_out"):
        assert terms.grad is options["out"]
        want = _kernel.cross_entropy_rows(logits, targets, grad_scale=1.0).grad
        torch.testing.assert_close(terms.grad, want, rtol=1e-5, atol=3e-7)


@needs_kernel
def test_losses_through_the_kernel_match_torch_end_to_end():
    """``losses.cross_entropy`` on a block past the hand-off to torch's kernel (so on the
    row kernel), every option torch has, against torch's loss and gradient."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 1000, generator=g, requires_grad=True)
    y = torch.randint(0, 1000, (600,), generator=g)
    y[::7] = -100
    w = torch.rand(1000, generator=g) + 0.1
    for reduction in ("mean", "sum", "none"):
        options = {"weight": w, "label_smoothing": 0.05, "reduction": reduction}
        ours = losses.cross_entropy(x, y, **options)
        (ours_grad,) = torch.autograd.grad(ours.sum(), [x])
        theirs = torch.nn.functional.cross_entropy(x, y, **options)
        (their_grad,) = torch.autograd.grad(theirs.sum(), [x])
        torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(ours_grad, their_grad, rtol=1e-4, atol=1e-8)


def test_self_check_refuses_a_kernel_that_writes_nothing():
    class Silent:
        @staticmethod
        def ce_rows(args):
            return -1  # claims success, writes nothing

    with pytest.raises(AssertionError, match="the row kernel's self-check failed"):
        _rows._self_check(Silent())


def test_native_setting_is_checked(monkeypatch):
    monkeypatch.setattr(_rows, "NATIVE", "on")
    with pytest.raises(ValueError, match="NATIVE must be 'auto' or 'off'; got 'on'"):
        _rows.available()


PROBE = """
import torch
from crossentropy import losses
from crossentropy.losses import _rows
x = torch.randn(300, 1000, generator=torch.Generator().manual_seed(0))
y = torch.arange(300)
want = torch.nn.functional.cross_entropy(x, y)
print(bool(torch.allclose(losses.cross_entropy(x, y), want, rtol=1e-5)))
print(_rows.available())
print(_rows.unavailable_reason())
"""


def test_without_a_compiler_the_torch_operations_run_and_say_why(tmp_path):
    out = run_fresh(PROBE, CC="false", **{CACHE_ENV: str(tmp_path)})
    right, compiled, reason = out.splitlines()
    assert (right, compiled) == ("True", "False")
    assert reason.startswith("compiling the row kernel failed")


@needs_kernel
def test_the_kernel_is_compiled_once_into_the_cache(tmp_path, logging_compiler):
    compiler, log = logging_compiler
    cache = tmp_path / "cache"
    for _ in range(2):
        out = run_fresh(PROBE, CC=str(compiler), **{CACHE_ENV: str(cache)})
        assert out.splitlines() == ["True", "True", "None"]
    assert len(list(cache.glob("rows-*.so"))) == 1
    compiles = [line for line in log.read_text().splitlines() if "_rows.c" in line]
    assert len(compiles) == 1, compiles
