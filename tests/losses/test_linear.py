"""The fused linear + cross-entropy head against unfused oracles.

Oracles: (1) a float64 torch computation written as the math reads (logits, soft-cap,
torch's F.cross_entropy with its label smoothing, the z-loss, the base, the mean over
tokens that count), differentiated by autograd; (2) the float64 NumPy loops of
``tests/losses/reference_losses.py`` pushed through the chain rule by hand
(dh = G W, dW = G^T h, db = sum G); (3) ``impl="reference"``, the library's own unfused
path over ``losses.cross_entropy``.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import losses
from crossentropy.losses._linear import (
    AUTO_REFERENCE_ELEMENTS,
    CHUNK_BUDGET_BYTES,
    MIN_CHUNK_ROWS,
    PRODUCT_ROWS,
    plan_chunk_rows,
)
from crossentropy.losses._products import add_weight_grad
from tests.losses.reference_losses import (
    composed_torch_loss,
    reference_cross_entropy,
    reference_entropy,
)

REDUCTIONS = ("mean", "sum", "none")


def oracle(
    hidden,
    weight,
    targets,
    *,
    bias=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    base=math.e,
):
    """The loss as the math reads: the unfused logits into the torch-composed reference."""
    return composed_torch_loss(
        F.linear(hidden, weight, bias),
        targets,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
    )


def make(n, d, v, *, dtype=torch.float64, bias=True, ignored=0.0, seed=0, lead=None):
    g = torch.Generator().manual_seed(seed)
    shape = lead if lead is not None else (n,)
    hidden = torch.randn(*shape, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, v, shape, generator=g)
    if ignored:
        mask = torch.rand(shape, generator=g) < ignored
        targets = torch.where(mask, torch.full_like(targets, -100), targets)
    cast = [t.to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, b)]
    return cast[0], cast[1], cast[2], targets


def value_and_grads(fn, hidden, weight, bias, targets, upstream_seed=1, **options):
    out = fn(hidden, weight, targets, bias=bias, **options)
    params = [t for t in (hidden, weight, bias) if t is not None]
    if out.dim() == 0:
        upstream = torch.ones_like(out)
    else:
        g = torch.Generator().manual_seed(upstream_seed)
        upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, params, upstream)
    return out.detach(), [x.detach() for x in grads]


def assert_same(got, got_grads, want, want_grads, *, rtol, atol):
    """The loss and each gradient agree within the same tolerances."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def fused(hidden, weight, targets, **options):
    return losses.linear_cross_entropy(hidden, weight, targets, impl="chunked", **options)


OPTION_SETS = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 3.0},
    {"base": 2.0},
    {"label_smoothing": 0.2, "z_loss": 0.01, "softcap": 5.0, "base": 10.0},
]
# A covering subset of N in {1, 7, 509}, D in {3, 64, 130}, V in {2, 1000, 50257}: every
# value of each appears, with chunk sizes that divide N and that do not.
SHAPES = [
    (1, 3, 2, None),
    (7, 64, 1000, 3),
    (7, 3, 50257, 2),
    (509, 130, 1000, 64),
    (509, 64, 2, 100),
    (1, 130, 50257, 1),
    (509, 3, 1000, None),
    (7, 130, 2, 7),
]
CASES = [
    (shape, OPTION_SETS[i % len(OPTION_SETS)], REDUCTIONS[i % 3], i % 2 == 0, (0.0, 0.3)[i % 2])
    for i, shape in enumerate(SHAPES * 3)
]


@pytest.mark.parametrize(("shape", "options", "reduction", "with_bias", "ignored"), CASES)
def test_float64_matches_oracle(shape, options, reduction, with_bias, ignored):
    n, d, v, chunk = shape
    hidden, weight, bias, targets = make(n, d, v, bias=with_bias, ignored=ignored, seed=n + d + v)
    opts = {"reduction": reduction, **options}
    got, got_grads = value_and_grads(fused, hidden, weight, bias, targets, chunk_size=chunk, **opts)
    want, want_grads = value_and_grads(oracle, hidden, weight, bias, targets, **opts)
    assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("reduction", "options"),
    [("mean", {}), ("sum", {"label_smoothing": 0.3, "z_loss": 0.05}), ("none", {"softcap": 2.0})],
)
def test_float64_matches_numpy_loops(reduction, options):
    hidden, weight, bias, targets = make(7, 5, 13, ignored=0.3, seed=3)
    loss = fused(hidden, weight, targets, bias=bias, reduction=reduction, chunk_size=3, **options)
    loss.sum().backward()
    logits = (hidden @ weight.T + bias).detach().numpy()
    want, g = reference_cross_entropy(logits, targets.numpy(), reduction=reduction, **options)
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    h, w = hidden.detach().numpy(), weight.detach().numpy()
    np.testing.assert_allclose(hidden.grad.numpy(), g @ w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weight.grad.numpy(), g.T @ h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bias.grad.numpy(), g.sum(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "options", [{}, {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 4.0, "base": 2.0}]
)
def test_matches_reference_impl(reduction, options):
    hidden, weight, bias, targets = make(0, 24, 300, lead=(3, 17), ignored=0.2, seed=5)
    opts = {"reduction": reduction, **options}
    got, got_grads = value_and_grads(fused, hidden, weight, bias, targets, chunk_size=10, **opts)

    def reference(*args, **kw):
        return losses.linear_cross_entropy(*args, impl="reference", **kw)

    want, want_grads = value_and_grads(reference, hidden, weight, bias, targets, **opts)
    assert got.shape == want.shape
    assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_batch(reduction):
    hidden, weight, bias, targets = make(9, 8, 20, seed=7)
    targets = torch.full_like(targets, -100)
    loss = fused(hidden, weight, targets, bias=bias, reduction=reduction)
    assert not torch.isnan(loss).any()
    torch.testing.assert_close(loss, torch.zeros_like(loss), rtol=0, atol=0)
    loss.sum().backward()
    for t in (hidden, weight, bias):
        assert t.grad is not None
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_custom_ignore_index_and_uint8_targets():
    hidden, weight, _, targets = make(40, 6, 9, bias=False, seed=8)
    got = fused(hidden, weight, targets.to(torch.uint8), ignore_index=4)
    want = F.cross_entropy(hidden @ weight.T, targets, ignore_index=4)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("frozen", ["hidden", "weight", "bias", "all"])
def test_partial_requires_grad(frozen):
    hidden, weight, bias, targets = make(33, 10, 50, ignored=0.2, seed=9)
    want, want_grads = value_and_grads(oracle, hidden, weight, bias, targets)
    names = ["hidden", "weight", "bias"]
    tensors = [hidden, weight, bias]
    for name, t in zip(names, tensors, strict=True):
        if frozen in (name, "all"):
            t.requires_grad_(False)
    loss = fused(hidden, weight, targets, bias=bias, chunk_size=8)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=0)
    if frozen == "all":
        assert not loss.requires_grad
        return
    loss.backward()
    for name, t, g in zip(names, tensors, want_grads, strict=True):
        if frozen == name:
            assert t.grad is None
        else:
            torch.testing.assert_close(t.grad, g, rtol=1e-10, atol=1e-14)


def test_no_grad_mode_scaled_upstream_and_second_backward_passes():
    hidden, weight, bias, targets = make(50, 12, 70, ignored=0.1, seed=10)
    with torch.no_grad():
        plain = fused(hidden, weight, targets, bias=bias, chunk_size=16)
    loss = fused(hidden, weight, targets, bias=bias, chunk_size=16)
    torch.testing.assert_close(plain, loss.detach(), rtol=1e-14, atol=0)
    (3.0 * loss).backward(retain_graph=True)
    _, want = value_and_grads(oracle, hidden, weight, bias, targets)
    for t, w in zip((hidden, weight, bias), want, strict=True):
        torch.testing.assert_close(t.grad, 3.0 * w, rtol=1e-10, atol=1e-14)
    # The stored gradients were handed over; a second pass recomputes them.
    (0.5 * loss).backward(retain_graph=True)
    for t, w in zip((hidden, weight, bias), want, strict=True):
        torch.testing.assert_close(t.grad, 3.5 * w, rtol=1e-10, atol=1e-14)
    # reduction="none" recomputes in every backward pass.
    per_token = fused(hidden, weight, targets, bias=bias, reduction="none", chunk_size=16)
    per_token.sum().backward(retain_graph=True)
    per_token.sum().backward()
    count = int((targets != -100).sum())
    for t, w in zip((hidden, weight, bias), want, strict=True):
        torch.testing.assert_close(t.grad, (3.5 + 2 * count) * w, rtol=1e-10, atol=1e-13)


def test_the_weight_gradient_is_adopted_not_copied():
    """The stored gradient tensor itself becomes weight.grad (no V·D copy)."""
    hidden, weight, _, targets = make(40, 8, 30, bias=False, seed=20)
    loss = fused(hidden, weight, targets, chunk_size=16)
    # The address only: holding the tensor would itself force autograd to copy it. A copy
    # is made while the original is alive, so it cannot land at the same address.
    stored = loss.grad_fn.grads[1].data_ptr()
    loss.backward()
    assert weight.grad.data_ptr() == stored


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2, "z_loss": 0.1, "softcap": 1.5}])
def test_gradcheck(reduction, options):
    hidden, weight, bias, targets = make(5, 4, 6, seed=11)
    targets[1] = -100

    def fn(h, w, b):
        return fused(h, w, targets, bias=b, reduction=reduction, chunk_size=2, **options)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), eps=1e-6, atol=1e-8)


def _errors(got, want):
    """Relative error of each tensor: the norm of the difference over the norm of `want`."""
    return [float((a.double() - b).norm() / b.norm()) for a, b in zip(got, want, strict=True)]


@pytest.mark.parametrize(
    ("dtype", "factor"), [(torch.float32, 2.0), (torch.bfloat16, 1.0), (torch.float16, 1.0)]
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_no_worse_than_unfused(dtype, factor, reduction):
    """Error vs a float64 reference: the fused path's is within `factor` of the unfused one.

    Both see the same inputs (values representable in `dtype`); the reference is the
    float64 computation on them. Half types must be no worse at all; float32 is allowed a
    factor 2 for a different order of summation. A scalar loss is also allowed the error
    of rounding the exact value once (half the dtype's epsilon), which no method returning
    that dtype can beat; in float32, four epsilons, for a mean over 231 tokens whose
    per-token losses are each checked exactly as above with ``reduction="none"``.
    """
    h64, w64, b64, targets = make(257, 96, 3000, ignored=0.1, seed=12)
    opts = {"reduction": reduction, "label_smoothing": 0.1}
    low = [t.detach().to(dtype).requires_grad_() for t in (h64, w64, b64)]
    exact = [t.detach().double().requires_grad_() for t in low]
    want_v, want_g = value_and_grads(oracle, exact[0], exact[1], exact[2], targets, **opts)
    got_v, got_g = value_and_grads(fused, low[0], low[1], low[2], targets, chunk_size=64, **opts)

    def unfused(h, w, y, bias=None, **kw):
        return oracle(h, w, y, bias=bias, **kw)

    base_v, base_g = value_and_grads(unfused, low[0], low[1], low[2], targets, **opts)
    assert got_v.dtype == dtype
    assert all(g.dtype == dtype for g in got_g)
    mine = _errors([got_v, *got_g], [want_v, *want_g])
    theirs = _errors([base_v, *base_g], [want_v, *want_g])
    eps = torch.finfo(dtype).eps
    roundoff = 0.0 if got_v.dim() else (4 * eps if dtype == torch.float32 else eps / 2)
    assert mine[0] <= max(factor * theirs[0], roundoff), ("loss", mine[0], theirs[0])
    for name, a, b in zip(("hidden", "weight", "bias"), mine[1:], theirs[1:], strict=True):
        assert a <= factor * b, (name, a, b)


def test_leading_dims_and_stats_match_cross_entropy_stats():
    hidden, weight, bias, targets = make(0, 16, 40, lead=(2, 3, 5), ignored=0.3, seed=13)
    opts = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0, "base": 2.0}
    stats = losses.linear_cross_entropy_stats(
        hidden, weight, targets, bias=bias, chunk_size=4, **opts
    )
    logits = (hidden @ weight.T + bias).detach()
    want = losses.cross_entropy_stats(logits.reshape(-1, 40), targets.reshape(-1), **opts)
    for got, exp in zip(stats, want, strict=True):
        assert got.shape == targets.shape
        assert got.grad_fn is None
        torch.testing.assert_close(got.reshape(-1), exp, rtol=1e-10, atol=1e-12)
    capped = 6.0 * torch.tanh(logits / 6.0)
    torch.testing.assert_close(stats.logsumexp, torch.logsumexp(capped, -1), rtol=1e-12, atol=0)
    entropy = reference_entropy(logits.reshape(-1, 40).numpy(), softcap=6.0, base=2.0)
    np.testing.assert_allclose(stats.entropy.reshape(-1).numpy(), entropy, rtol=1e-10)
    per_token = fused(hidden, weight, targets, bias=bias, reduction="none", **opts)
    torch.testing.assert_close(stats.loss, per_token.detach(), rtol=1e-12, atol=0)


def test_module_matches_function():
    head = torch.nn.Linear(12, 30, dtype=torch.float64)
    hidden = torch.randn(4, 11, 12, dtype=torch.float64)
    targets = torch.randint(0, 30, (4, 11))
    module = losses.LinearCrossEntropyLoss(reduction="sum", z_loss=1e-2, impl="chunked")
    got = module(hidden, head.weight, targets, head.bias)
    want = losses.linear_cross_entropy(
        hidden, head.weight, targets, bias=head.bias, reduction="sum", z_loss=1e-2
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert "reduction='sum'" in repr(module)
    with pytest.raises(ValueError, match="`impl` must be one of"):
        losses.LinearCrossEntropyLoss(impl="fast")
    with pytest.raises(ValueError, match="`chunk_size` must be > 0"):
        losses.LinearCrossEntropyLoss(chunk_size=0)
    with pytest.raises(ValueError, match="`label_smoothing` must be in"):
        losses.LinearCrossEntropyLoss(label_smoothing=2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        # Wrong types are TypeErrors, as in the function (a float chunk_size was a ValueError).
        ({"chunk_size": 2.5}, TypeError, r"`chunk_size` must be None or an int; got float"),
        ({"chunk_size": True}, TypeError, r"`chunk_size` must be None or an int; got bool"),
        # The class weights are checked when the module is built, as CrossEntropyLoss checks
        # its weight (a 2-D or negative class_weight used to pass until the first call).
        (
            {"class_weight": torch.ones(2, 3)},
            ValueError,
            re.escape("`class_weight` must be 1-D, one entry per class; got shape (2, 3)"),
        ),
        (
            {"class_weight": torch.tensor([1.0, -0.5])},
            ValueError,
            r"`class_weight` must be finite and >= 0; got -0.5",
        ),
        (
            {"class_weight": torch.tensor([1, 2])},
            TypeError,
            r"`class_weight` must be a floating-point tensor; got dtype torch.int64",
        ),
        ({"class_weight": [1.0, 2.0]}, TypeError, r"`class_weight` must be None or a torch"),
    ],
)
def test_module_checks_its_options_when_built(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        losses.LinearCrossEntropyLoss(**kwargs)


def test_module_class_weight_values_unchecked_with_validate_false():
    # As with the function, validate=False skips the checks that read values.
    module = losses.LinearCrossEntropyLoss(class_weight=torch.tensor([1.0, -0.5]), validate=False)
    hidden, weight = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1])
    expected = F.cross_entropy(hidden @ weight.T, targets, weight=module.class_weight.double())
    for impl in ("reference", "chunked"):  # the reference path read the values regardless
        module.impl = impl
        got = module(hidden, weight, targets)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_auto_picks_reference_when_tiny_and_chunked_otherwise():
    hidden, weight, _, targets = make(4, 3, 5, bias=False, seed=14)
    tiny = losses.linear_cross_entropy(hidden, weight, targets)
    assert "Chunked" not in type(tiny.grad_fn).__name__
    n = AUTO_REFERENCE_ELEMENTS // 50 + 1
    hidden, weight, _, targets = make(n, 3, 50, bias=False, seed=15)
    big = losses.linear_cross_entropy(hidden, weight, targets)
    assert "Chunked" in type(big.grad_fn).__name__
    torch.testing.assert_close(big, oracle(hidden, weight, targets), rtol=1e-12, atol=0)
    # The documented boundary: N·V equal to AUTO_REFERENCE_ELEMENTS still takes the reference.
    hidden, weight, _, targets = make(AUTO_REFERENCE_ELEMENTS // 64, 3, 64, bias=False, seed=16)
    edge = losses.linear_cross_entropy(hidden, weight, targets)
    assert "Chunked" not in type(edge.grad_fn).__name__
    hidden, weight, _, targets = make(AUTO_REFERENCE_ELEMENTS // 64 + 1, 3, 64, bias=False, seed=17)
    past = losses.linear_cross_entropy(hidden, weight, targets)
    assert "Chunked" in type(past.grad_fn).__name__


def test_group_is_handed_to_the_vocabulary_parallel_head(monkeypatch):
    """With a group, every argument goes to ``_distributed.sharded_linear_cross_entropy``."""
    from crossentropy.losses import _distributed

    hidden, weight, bias, targets = make(4, 3, 5, seed=16)
    seen = {}

    def sharded(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return torch.tensor(1.5)

    monkeypatch.setattr(_distributed, "sharded_linear_cross_entropy", sharded, raising=False)
    group = object()
    class_weight = torch.rand(5, dtype=torch.float64)
    options = {
        "bias": bias,
        "class_weight": class_weight,
        "ignore_index": -7,
        "reduction": "sum",
        "label_smoothing": 0.2,
        "z_loss": 0.1,
        "softcap": 3.0,
        "base": 2.0,
        "chunk_size": 2,
        "impl": "chunked",
        "validate": False,
    }
    out = losses.linear_cross_entropy(hidden, weight, targets, group=group, **options)
    assert float(out) == 1.5
    assert seen["args"][0] is hidden
    assert seen["args"][1] is weight
    assert seen["args"][2] is targets
    assert seen["kwargs"]["group"] is group
    for name, value in options.items():
        passed = seen["kwargs"][name]
        assert passed is value if isinstance(value, torch.Tensor) else passed == value, name


def _bad_inputs():
    h = torch.randn(4, 3)
    w = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 4])
    return [
        ((h, w[:, :2], y), {}, ValueError, r"`hidden` must have shape \(\.\.\., D\) with D = 2"),
        ((h, w, y[:3]), {}, ValueError, r"`targets` must have shape \(4,\)"),
        ((h, w.double(), y), {}, TypeError, "`weight` must have the dtype of `hidden`"),
        ((h.long(), w.long(), y), {}, TypeError, "`hidden` must be float64, float32"),
        ((h, w, y.float()), {}, ValueError, r"shape \(4, 5\) for class probabilities"),
        ((h, w, y.bool()), {}, TypeError, "`targets` must hold integer class indices"),
        ((h, w, torch.full((4, 5), 0.2)), {"ignore_index": 0}, ValueError, "must be negative"),
        ((h, w, torch.full((4, 5), 0.3)), {}, ValueError, "sum to 1 over the class dimension"),
        ((h, w, torch.full((4, 5), -0.2)), {}, ValueError, "finite and >= 0"),
        ((h, w.reshape(15), y), {}, ValueError, r"`weight` must be 2-D \(V, D\)"),
        ((h[:, :0], w[:, :0], y), {}, ValueError, r"V >= 1 and D >= 1; got shape \(5, 0\)"),
        ((h, w, y), {"bias": torch.zeros(4)}, ValueError, r"`bias` must have shape \(5,\)"),
        ((h, w, y), {"bias": torch.zeros(5).double()}, TypeError, "`bias` must have the dtype"),
        ((h, w, torch.tensor([0, 1, 5, -100])), {}, ValueError, r"in \[0, 5\) or ignore_index"),
        ((h, w, torch.tensor([0, 1, -3, 2])), {}, ValueError, "got -3"),
        ((h, w, y), {"impl": "fast"}, ValueError, "`impl` must be one of 'auto'"),
        ((h, w, y), {"chunk_size": 0}, ValueError, "`chunk_size` must be > 0"),
        ((h, w, y), {"chunk_size": -3}, ValueError, "`chunk_size` must be > 0"),
        ((h, w, y), {"chunk_size": 2.5}, TypeError, "`chunk_size` must be None or an int"),
        ((h, w, y), {"reduction": "avg"}, ValueError, "`reduction` must be one of"),
        ((h, w, y), {"base": 1.0}, ValueError, "`base` must be finite"),
        ((h, w, y), {"softcap": 0.0}, ValueError, "`softcap` must be None or a finite"),
        ((h.numpy(), w, y), {}, TypeError, "`hidden` must be a torch.Tensor"),
        ((h, w, y), {"bias": [0.0] * 5}, TypeError, "`bias` must be None or a torch.Tensor"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), _bad_inputs())
def test_bad_input_is_rejected_with_a_message(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        losses.linear_cross_entropy(*args, **{"impl": "chunked", **kwargs})


def test_validate_false_skips_the_target_range_check_only():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3])
    a = losses.linear_cross_entropy(h, w, y, validate=False, impl="chunked")
    b = losses.linear_cross_entropy(h, w, y, validate=True, impl="chunked")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`chunk_size` must be > 0"):
        losses.linear_cross_entropy(h, w, y, validate=False, chunk_size=0)


# ---------------------------------------------------------------------------------------
# The chunk planner.


def test_plan_examples_for_the_benchmark_shapes():
    assert plan_chunk_rows(4096, 1024, 128256) == 256
    assert plan_chunk_rows(4096, 1024, 32000) == 256
    assert plan_chunk_rows(2048, 512, 65536) == 256
    assert plan_chunk_rows(0, 64, 10) == 1


@given(
    n=st.integers(1, 100_000),
    d=st.integers(1, 16_384),
    v=st.integers(1, 4_000_000),
    itemsize=st.sampled_from([2, 4, 8]),
)
def test_plan_properties(n, d, v, itemsize):
    rows = plan_chunk_rows(n, d, v, itemsize=itemsize)
    assert 1 <= rows <= n
    chunks = -(-n // rows)
    # Evened out: no chunk is more than one row short of the others.
    assert chunks * rows - n < chunks
    # The budget holds, unless the 16-row floor is what is left; never more than
    # max(D // 4, PRODUCT_ROWS) rows.
    assert rows * v * itemsize <= CHUNK_BUDGET_BYTES or rows <= MIN_CHUNK_ROWS
    assert rows <= max(d // 4, PRODUCT_ROWS)
    # As many rows as that allows, evened out over the chunks: at most one fewer chunk fits.
    target = min(max(d // 4, PRODUCT_ROWS), max(CHUNK_BUDGET_BYTES // (v * itemsize), 16))
    target = max(target // 16 * 16, 16)
    assert chunks == -(-n // target)


def test_every_chunk_size_gives_the_same_answer():
    hidden, weight, bias, targets = make(37, 9, 23, ignored=0.2, seed=17)
    want, want_grads = value_and_grads(oracle, hidden, weight, bias, targets)
    for chunk in itertools.chain(range(1, 8), (36, 37, 38, 1000)):
        got, got_grads = value_and_grads(fused, hidden, weight, bias, targets, chunk_size=chunk)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_weight_grad_of_half_chunks_accumulates_in_float32():
    """A half-precision chunk gradient (the GPU path) adds into a float32 buffer."""
    g = torch.Generator().manual_seed(18)
    acc = torch.zeros(6, 5)
    want = torch.zeros(6, 5, dtype=torch.float64)
    for _ in range(3):
        grad = torch.randn(4, 6, generator=g).to(torch.bfloat16)
        h = torch.randn(4, 5, generator=g).to(torch.bfloat16)
        add_weight_grad(acc, grad, h)
        want += grad.double().T @ h.double()
    assert acc.dtype == torch.float32
    # Each chunk's product is rounded at most once to bfloat16, the sum over chunks is not.
    torch.testing.assert_close(acc.double(), want, rtol=0, atol=3 * 2**-8 * want.abs().max())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_token_without_batch_dimension(reduction):
    hidden, weight, bias, targets = make(1, 8, 5, seed=19)
    h1, y0 = hidden[0].detach().requires_grad_(), targets[0]
    got, got_grads = value_and_grads(fused, h1, weight, bias, y0, reduction=reduction)
    want, want_grads = value_and_grads(oracle, h1, weight, bias, y0, reduction=reduction)
    assert got.shape == want.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


def test_empty_batch_gives_zero_like_an_all_ignored_one():
    hidden = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = fused(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert hidden.grad.shape == (0, 4)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


# ---------------------------------------------------------------------------------------
# Class-probability targets (distillation): the fused path takes them too.


def probs_oracle(
    hidden,
    weight,
    targets,
    *,
    bias=None,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    base=math.e,
):
    """torch's soft-target cross-entropy on the soft-capped logits, plus the unweighted
    ``z_loss * logsumexp**2`` per token, over ``ln(base)``."""
    logits = F.linear(hidden, weight, bias)
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    num_classes = z.shape[-1]
    z2 = z.reshape(-1, num_classes)
    per = F.cross_entropy(
        z2,
        targets.reshape(-1, num_classes),
        reduction="none",
        label_smoothing=label_smoothing,
    )
    per = (per + z_loss * torch.logsumexp(z2, dim=1).square()) / math.log(base)
    if reduction == "none":
        return per.reshape(z.shape[:-1])
    return per.sum() if reduction == "sum" else per.mean()


def soft_targets(shape, v, seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(*shape, v, generator=g, dtype=torch.float64) ** 4  # peaked, not uniform
    return raw / raw.sum(-1, keepdim=True)


@pytest.mark.parametrize(
    ("shape", "options", "reduction", "with_bias"),
    [
        ((1, 3, 2, None), {}, "mean", True),
        ((7, 64, 1000, 3), {"label_smoothing": 0.1}, "sum", False),
        ((300, 40, 3000, 64), {"z_loss": 1e-3, "softcap": 4.0}, "none", True),
        ((300, 40, 3000, None), {"base": 2.0, "label_smoothing": 0.2}, "mean", False),
        ((33, 5, 1100, 10), {"softcap": 2.0, "base": 10.0}, "none", False),
    ],
)
def test_probability_targets_match_torch_float64(shape, options, reduction, with_bias):
    n, d, v, chunk = shape
    hidden, weight, bias, _ = make(n, d, v, bias=with_bias, seed=n + v)
    targets = soft_targets((n,), v, seed=n + d)
    opts = {"reduction": reduction, **options}
    got, got_grads = value_and_grads(fused, hidden, weight, bias, targets, chunk_size=chunk, **opts)
    want, want_grads = value_and_grads(probs_oracle, hidden, weight, bias, targets, **opts)
    assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-10)


def test_probability_targets_float32_and_leading_dims():
    hidden64, weight64, bias64, _ = make(0, 24, 2500, lead=(3, 70), seed=31)
    targets64 = soft_targets((3, 70), 2500, seed=32)
    exact = [t.detach().float().double().requires_grad_() for t in (hidden64, weight64, bias64)]
    want, want_grads = value_and_grads(
        probs_oracle, *exact[:2], exact[2], targets64.float().double(), label_smoothing=0.05
    )
    low = [t.detach().float().requires_grad_() for t in (hidden64, weight64, bias64)]
    got, got_grads = value_and_grads(
        fused, *low[:2], low[2], targets64.float(), label_smoothing=0.05, chunk_size=50
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    per_token = losses.linear_cross_entropy(*low[:2], targets64.float(), reduction="none")
    assert per_token.shape == (3, 70)


def test_probability_target_stats_match_cross_entropy_stats():
    hidden, weight, bias, _ = make(40, 16, 1500, seed=33)
    targets = soft_targets((40,), 1500, seed=34)
    got = losses.linear_cross_entropy_stats(
        hidden, weight, targets, bias=bias, z_loss=0.01, chunk_size=16
    )
    want = losses.cross_entropy_stats(F.linear(hidden, weight, bias).detach(), targets, z_loss=0.01)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_probability_targets_with_a_gradient_need_the_reference_path():
    hidden, weight, _, _ = make(50, 8, 3000, bias=False, seed=35)
    targets = soft_targets((50,), 3000, seed=36).requires_grad_()
    with pytest.raises(ValueError, match="must not require a gradient on the fused path"):
        losses.linear_cross_entropy(hidden, weight, targets, impl="chunked")
    loss = losses.linear_cross_entropy(hidden, weight, targets, impl="reference")
    (grad_t,) = torch.autograd.grad(loss, [targets])
    want = -torch.log_softmax(hidden.detach() @ weight.detach().T, 1) / 50
    torch.testing.assert_close(grad_t, want, rtol=1e-10, atol=1e-12)
    detached = losses.linear_cross_entropy(hidden, weight, targets.detach(), impl="chunked")
    torch.testing.assert_close(detached, loss.detach(), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------
# Class weights (torch's `weight=` of F.cross_entropy and F.linear_cross_entropy).


def class_weights(v, seed, zero_some=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(v, generator=g, dtype=torch.float64) * 2
    if zero_some:
        w[::5] = 0.0
    return w


@pytest.mark.parametrize(
    ("shape", "options", "reduction", "with_bias", "ignored"),
    [
        ((7, 64, 1000, 3), {}, "mean", True, 0.3),
        ((300, 40, 3000, 64), {"label_smoothing": 0.1, "z_loss": 1e-3}, "mean", False, 0.1),
        ((300, 40, 3000, None), {"softcap": 3.0, "base": 2.0}, "sum", True, 0.0),
        ((33, 5, 1100, 10), {"label_smoothing": 0.2}, "none", False, 0.2),
    ],
)
def test_class_weights_match_torch_float64(shape, options, reduction, with_bias, ignored):
    n, d, v, chunk = shape
    hidden, weight, bias, targets = make(n, d, v, bias=with_bias, ignored=ignored, seed=n + 3)
    cw = class_weights(v, seed=d)
    opts = {"reduction": reduction, **options}
    got, got_grads = value_and_grads(
        fused, hidden, weight, bias, targets, chunk_size=chunk, class_weight=cw, **opts
    )
    want, want_grads = value_and_grads(
        oracle_weighted, hidden, weight, bias, targets, cw=cw, **opts
    )
    assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-10)


def oracle_weighted(hidden, weight, targets, *, bias=None, cw=None, **options):
    return composed_torch_loss(F.linear(hidden, weight, bias), targets, weight=cw, **options)


def test_class_weights_float32_match_torch_linear_cross_entropy():
    """Against torch's own fused loss, which takes the same class weights."""
    hidden64, weight64, bias64, targets = make(257, 48, 2600, ignored=0.1, seed=41)
    cw = class_weights(2600, seed=42, zero_some=False).float()
    low = [t.detach().float().requires_grad_() for t in (hidden64, weight64, bias64)]
    got = losses.linear_cross_entropy(
        low[0], low[1], targets, bias=low[2], class_weight=cw, label_smoothing=0.1
    )
    ref = [t.detach().clone().requires_grad_() for t in low]
    want = F.linear_cross_entropy(
        ref[0],
        ref[1],
        targets,
        linear_bias=ref[2],
        weight=cw,
        label_smoothing=0.1,
        ignore_index=-100,
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got, low)
    want_grads = torch.autograd.grad(want, ref)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


def test_class_weights_with_probability_targets_and_stats():
    hidden, weight, bias, _ = make(60, 12, 1500, seed=43)
    targets = soft_targets((60,), 1500, seed=44)
    cw = class_weights(1500, seed=45)
    for reduction in REDUCTIONS:
        got, got_grads = value_and_grads(
            fused,
            hidden,
            weight,
            bias,
            targets,
            chunk_size=16,
            class_weight=cw,
            reduction=reduction,
            z_loss=0.01,
        )
        want, want_grads = value_and_grads(
            losses.linear_cross_entropy,
            hidden,
            weight,
            bias,
            targets,
            impl="reference",
            class_weight=cw,
            reduction=reduction,
            z_loss=0.01,
        )
        assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-12)
    _, _, _, index_targets = make(60, 12, 1500, ignored=0.2, seed=46)
    stats = losses.linear_cross_entropy_stats(
        hidden, weight, index_targets, bias=bias, class_weight=cw, chunk_size=16
    )
    want = losses.cross_entropy_stats(
        F.linear(hidden, weight, bias).detach(), index_targets, weight=cw
    )
    for a, b in zip(stats, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_zero_total_class_weight_gives_zero_not_nan():
    hidden, weight, bias, targets = make(40, 8, 2000, seed=47)
    cw = torch.ones(2000, dtype=torch.float64)
    cw[targets] = 0.0  # every target's class weighs nothing
    got, got_grads = value_and_grads(fused, hidden, weight, bias, targets, class_weight=cw)
    assert float(got) == 0.0
    assert all(bool((g == 0).all()) for g in got_grads)


@pytest.mark.parametrize("grad_mode", [True, False])
def test_zero_total_class_weight_with_smoothing_gives_zero_in_every_grad_mode(grad_mode):
    # With smoothing a token whose target weighs 0 still has a loss (the smoothing term),
    # but the weighted mean's denominator is 0: the documented result is 0, as from
    # losses.cross_entropy on the unfused logits, with or without autograd.
    hidden, weight, bias, targets = make(40, 8, 2000, seed=51)
    cw = torch.ones(2000, dtype=torch.float64)
    cw[targets] = 0.0
    with torch.set_grad_enabled(grad_mode):
        got = fused(hidden, weight, targets, bias=bias, class_weight=cw, label_smoothing=0.1)
        unfused = losses.cross_entropy(
            F.linear(hidden, weight, bias), targets, weight=cw, label_smoothing=0.1
        )
    per_token = fused(
        hidden, weight, targets, bias=bias, class_weight=cw, label_smoothing=0.1, reduction="none"
    )
    assert float(per_token.detach().abs().sum()) > 0  # the numerator is not 0
    assert float(unfused.detach()) == 0.0
    assert float(got.detach()) == 0.0


def test_weighted_mean_divides_by_a_total_class_weight_below_one():
    # torch's weighted mean divides by sum_i w_{y_i}, however small (here about 0.3).
    hidden, weight, bias, targets = make(6, 8, 300, ignored=0.3, seed=49)
    cw = class_weights(300, seed=50, zero_some=False) * 0.05
    assert 0 < float(cw[targets[targets != -100]].sum()) < 1
    got, got_grads = value_and_grads(
        fused, hidden, weight, bias, targets, class_weight=cw, chunk_size=4
    )
    want, want_grads = value_and_grads(oracle_weighted, hidden, weight, bias, targets, cw=cw)
    assert_same(got, got_grads, want, want_grads, rtol=1e-10, atol=1e-12)


def test_module_keeps_class_weights_as_a_buffer():
    cw = class_weights(50, seed=48)
    loss_fn = losses.LinearCrossEntropyLoss(class_weight=cw)
    assert "class_weight" in dict(loss_fn.named_buffers())
    head = torch.nn.Linear(16, 50, dtype=torch.float64)
    hidden = torch.randn(30, 16, dtype=torch.float64)
    y = torch.randint(0, 50, (30,))
    want = F.cross_entropy(head(hidden), y, weight=cw)
    torch.testing.assert_close(loss_fn(hidden, head.weight, y, head.bias), want)
    with pytest.raises(TypeError, match=r"`class_weight` must be None or a torch\.Tensor"):
        losses.LinearCrossEntropyLoss(class_weight=[1.0] * 50)


@pytest.mark.parametrize(
    ("class_weight", "error", "match"),
    [
        (torch.ones(4), ValueError, r"`class_weight` must have shape \(5,\)"),
        (torch.ones(5, dtype=torch.long), TypeError, "`class_weight` must be a floating-point"),
        (torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]), ValueError, "finite and >= 0; got -1.0"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0]), ValueError, "finite and >= 0"),
        ([1.0] * 5, TypeError, r"`class_weight` must be None or a torch\.Tensor"),
    ],
)
def test_bad_class_weights_are_rejected(class_weight, error, match):
    h, w, y = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 4])
    with pytest.raises(error, match=match):
        losses.linear_cross_entropy(h, w, y, class_weight=class_weight, impl="chunked")
