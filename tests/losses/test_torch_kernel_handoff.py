"""Small CPU blocks go to torch's own kernel (``TORCH_KERNEL_ELEMENTS``): where they do, the
values and gradients are this package's kernel's and the float64 reference's; where an
option or a case is one torch has not, or treats otherwise, this package's kernel runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import crossentropy.losses._cross_entropy as module
from crossentropy.losses import CrossEntropyLoss, cross_entropy
from tests.losses.reference_losses import reference_cross_entropy

pytestmark = pytest.mark.torch_kernel_handoff


@pytest.fixture
def kernels(monkeypatch):
    """Counts of the calls that reach torch's kernel and this package's."""
    counts = {"torch": 0, "ours": 0}
    torch_kernel, our_kernel = F.cross_entropy, module.cross_entropy_rows

    def to_torch(*args, **kwargs):
        counts["torch"] += 1
        return torch_kernel(*args, **kwargs)

    def to_ours(*args, **kwargs):
        counts["ours"] += 1
        return our_kernel(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", to_torch)
    monkeypatch.setattr(module, "cross_entropy_rows", to_ours)
    return counts


def _value_and_grad(logits, targets, **options):
    x = logits.detach().clone().requires_grad_()
    loss = cross_entropy(x, targets, **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@st.composite
def cases(draw):
    c = draw(st.integers(1, 12))
    one_token = draw(st.booleans())
    n = 1 if one_token else draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=generator) * 3).to(dtype)
    probabilities = draw(st.booleans())
    if probabilities:  # rows of zeros too (a common mask), which both take
        targets = torch.softmax(torch.randn(n, c, generator=generator, dtype=dtype) * 2, 1)
        if n > 1 and draw(st.booleans()):
            targets[0] = 0.0
    else:
        targets = torch.randint(0, c, (n,), generator=generator)
    options = {
        "reduction": reduction,
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 1.0])),
        "base": draw(st.sampled_from([math.e, 2.0, 10.0])),
    }
    # Under "mean" class weights stay ours; ignored tokens go to torch beside a counted one.
    if (reduction != "mean" or probabilities) and draw(st.booleans()):
        weight_dtype = draw(st.sampled_from([dtype, torch.float64, torch.float32]))
        options["weight"] = torch.rand(c, generator=generator, dtype=weight_dtype) + 0.1
    if n > 1 and not probabilities and draw(st.booleans()):
        ignored = draw(st.sampled_from([-100, -1, c + 3] + ([0] if c > 1 else [])))
        targets[0] = options["ignore_index"] = ignored
        if ignored == 0:  # a class: ignored wherever it stands; the other tokens counted
            targets[1:] = targets[1:].clamp(min=1)
    if one_token and draw(st.booleans()):
        logits, targets = logits[0], targets[0]  # (C) logits and a 0-d target
    return logits, targets, options


@given(cases())
def test_handed_off_blocks_equal_our_kernel_and_the_reference(case):
    logits, targets, options = case
    counts = {"torch": 0}
    torch_kernel = F.cross_entropy

    def to_torch(*args, **kwargs):
        counts["torch"] += 1
        return torch_kernel(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "cross_entropy", to_torch)
        value, grad = _value_and_grad(logits, targets, **options)
    assert counts["torch"] == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "TORCH_KERNEL_ELEMENTS", 0)
        own_value, own_grad = _value_and_grad(logits, targets, **options)
    # Both compute half types in float32 and round once: at most an ulp of the dtype
    # apart, where the float32 values straddle a rounding boundary.
    tight = {
        torch.float64: {"rtol": 1e-12, "atol": 1e-12},
        torch.float32: {"rtol": 2e-6, "atol": 2e-6},
        torch.bfloat16: {"rtol": 2**-7, "atol": 1e-5},
        torch.float16: {"rtol": 2**-10, "atol": 1e-6},
    }[logits.dtype]
    assert value.dtype == grad.dtype == logits.dtype
    torch.testing.assert_close(value, own_value, **tight)
    torch.testing.assert_close(grad, own_grad, **tight)
    numpy_options = dict(options)
    if "weight" in numpy_options:
        numpy_options["weight"] = numpy_options["weight"].double().numpy()
    flat_logits = logits.reshape(-1, logits.shape[-1]).double().numpy()
    flat_targets = targets.reshape(flat_logits.shape if targets.is_floating_point() else -1)
    expected, expected_grad = reference_cross_entropy(
        flat_logits,
        flat_targets.double().numpy() if targets.is_floating_point() else flat_targets.numpy(),
        **numpy_options,
    )
    loose = {
        torch.float64: {"rtol": 1e-10, "atol": 1e-12},
        torch.float32: {"rtol": 1e-5, "atol": 1e-6},
        torch.bfloat16: {"rtol": 2**-7, "atol": 1e-4},
        torch.float16: {"rtol": 2**-10, "atol": 1e-5},
    }[logits.dtype]
    value = value.double().numpy().reshape(np.shape(expected))
    np.testing.assert_allclose(value, expected, **loose)
    np.testing.assert_allclose(grad.double().reshape(-1, logits.shape[-1]), expected_grad, **loose)


def test_the_module_hands_off_too(kernels):
    logits = torch.randn(8, 5, requires_grad=True)
    targets = torch.randint(0, 5, (8,))
    loss = CrossEntropyLoss(label_smoothing=0.1, base=2)(logits, targets)
    loss.backward()
    assert kernels == {"torch": 1, "ours": 0}
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1) / math.log(2)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "case",
    [
        "z_loss",
        "softcap",
        "wider_probabilities",
        "spatial",
        "mean_with_weight",
        "weight_needing_grad",
        "large",
    ],
)
def test_cases_torch_has_not_or_treats_otherwise_stay_ours(kernels, case):
    n, c = (512, 1024) if case == "large" else (6, 5)
    logits = torch.randn(n, c)
    targets = torch.randint(1, c, (n,))
    options: dict = {}
    if case == "z_loss":
        options["z_loss"] = 1e-3
    elif case == "softcap":
        options["softcap"] = 5.0
    elif case == "wider_probabilities":  # torch's loss would be float64, ours is float32
        targets = torch.softmax(torch.randn(n, c, dtype=torch.float64), 1)
    elif case == "spatial":
        logits, targets = torch.randn(2, c, 3), torch.randint(0, c, (2, 3))
    elif case == "mean_with_weight":
        options["weight"] = torch.rand(c)
    elif case == "weight_needing_grad":
        options["weight"] = torch.rand(c).requires_grad_()
        options["reduction"] = "sum"
    loss = cross_entropy(logits.requires_grad_(), targets, **options)
    if case == "weight_needing_grad":  # the plain formulas, which give the weight its gradient
        loss.backward()
        assert options["weight"].grad is not None
        assert kernels == {"torch": 0, "ours": 0}
    else:
        assert kernels == {"torch": 0, "ours": 1}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_empty_or_all_ignored_batch_still_gives_zero_not_nan(kernels, reduction):
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = cross_entropy(logits, torch.full((3,), -100), reduction=reduction)
    loss.sum().backward()
    assert bool((loss == 0).all())
    assert bool((logits.grad == 0).all())
    empty = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    loss = cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction=reduction)
    loss.sum().backward()
    assert bool((loss == 0).all())
    assert kernels["torch"] == (1 if reduction != "mean" else 0)  # all ignored, not mean


def test_bad_targets_get_our_error_before_the_hand_off(kernels):
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"`targets` must be class indices in \[0, 3\)"):
        cross_entropy(logits, torch.tensor([0, 1, 3, 2]))
    assert kernels == {"torch": 0, "ours": 0}


def test_second_order_through_the_hand_off_equals_torchs():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 3, 1, 2, 2])
    grads = []
    for loss_fn in (cross_entropy, F.cross_entropy):
        (grad,) = torch.autograd.grad(loss_fn(x, targets), x, create_graph=True)
        (penalty_grad,) = torch.autograd.grad(grad.square().sum(), x)
        grads.append(penalty_grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_probability_targets_get_the_same_gradient_through_the_hand_off(kernels, monkeypatch):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    teacher = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    grads = []
    for elements in (module.TORCH_KERNEL_ELEMENTS, 0):
        monkeypatch.setattr(module, "TORCH_KERNEL_ELEMENTS", elements)
        x = logits.clone().requires_grad_()
        t = teacher.clone().requires_grad_()
        loss = cross_entropy(x, torch.softmax(t, 1), label_smoothing=0.1, base=2)
        grads.append(torch.autograd.grad(loss, (x, t)))
    assert kernels == {"torch": 1, "ours": 1}
    for handed, own in zip(*grads, strict=True):
        torch.testing.assert_close(handed, own, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", ["masked", "all_masked", "nan", "posinf"])
def test_edge_values_give_our_kernels_numbers(monkeypatch, case, reduction, label_smoothing):
    # Classes masked to -inf (the target among them in one row), a row of -inf only, a NaN
    # and a +inf logit: the same loss and gradient, inf and NaN included, on both paths.
    inf = math.inf
    logits = {
        "masked": [[0.0, -inf, 1.0], [2.0, 0.5, -inf]],
        "all_masked": [[-inf, -inf, -inf], [2.0, 0.5, 0.1]],
        "nan": [[0.0, math.nan, 1.0], [2.0, 0.5, 0.2]],
        "posinf": [[0.0, inf, 1.0], [2.0, 0.5, 0.2]],
    }[case]
    targets = torch.tensor([0, 1])
    results = []
    for elements in (module.TORCH_KERNEL_ELEMENTS, 0):
        monkeypatch.setattr(module, "TORCH_KERNEL_ELEMENTS", elements)
        results.append(
            _value_and_grad(
                torch.tensor(logits), targets, reduction=reduction, label_smoothing=label_smoothing
            )
        )
    for handed, own in zip(*results, strict=True):
        torch.testing.assert_close(handed, own, equal_nan=True)


@pytest.mark.parametrize(
    ("n", "dtype", "probabilities", "to_torch"),
    [
        (64, torch.float32, False, True),  # 64000 logits: at most ROW_KERNEL_ELEMENTS
        (128, torch.float32, False, True),  # above, but the short path's (SMALL_CALL_ELEMENTS)
        (256, torch.float32, False, False),  # above both: the row kernel, where it runs
        (128, torch.bfloat16, False, False),
        (128, torch.float64, False, True),  # a dtype the row kernel does not read
        (128, torch.float32, True, False),  # probability targets of the logits' dtype
        (64, torch.float32, True, True),
    ],
)
def test_blocks_the_row_kernel_serves_go_to_it_above_its_threshold(
    kernels, n, dtype, probabilities, to_torch
):
    from crossentropy.losses import _rows

    assert module.ROW_KERNEL_ELEMENTS < 128 * 1000 <= module.SMALL_CALL_ELEMENTS
    assert module.SMALL_CALL_ELEMENTS < 256 * 1000 <= module.TORCH_KERNEL_ELEMENTS
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 1000, generator=g).to(dtype)
    targets = (
        torch.softmax(torch.randn(n, 1000, generator=g), 1).to(dtype)
        if probabilities
        else torch.randint(0, 1000, (n,), generator=g)
    )
    loss, grad = _value_and_grad(logits, targets)
    expected_torch = to_torch or not _rows.available()
    assert (kernels["torch"], kernels["ours"]) == ((1, 0) if expected_torch else (0, 1))
    x = logits.detach().double().requires_grad_()
    want = F.cross_entropy(x, targets.double() if probabilities else targets)
    (want_grad,) = torch.autograd.grad(want, x)
    rtol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(loss.double(), want.detach(), rtol=rtol, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=rtol * 10, atol=rtol * 1e-3)


@pytest.fixture
def full_checks(monkeypatch):
    """Counts of the calls that take the full checks (``_begin``)."""
    count = [0]
    begin = module._begin

    def counted(*args, **kwargs):
        count[0] += 1
        return begin(*args, **kwargs)

    monkeypatch.setattr(module, "_begin", counted)
    return count


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1])
def test_the_common_small_call_goes_to_torch_before_the_full_checks(
    monkeypatch, kernels, full_checks, reduction, dtype, label_smoothing
):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 10, generator=g, dtype=dtype)
    targets = torch.randint(0, 10, (32,), generator=g)
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    loss, grad = _value_and_grad(logits, targets, **options)
    assert (kernels["torch"], kernels["ours"], full_checks[0]) == (1, 0, 0)
    module_loss = CrossEntropyLoss(**options)(logits, targets)  # the module too
    torch.testing.assert_close(module_loss, loss)
    assert (kernels["torch"], full_checks[0]) == (2, 0)
    monkeypatch.setattr(module, "TORCH_KERNEL_ELEMENTS", 0)  # this package's kernel now
    own_loss, own_grad = _value_and_grad(logits, targets, **options)
    assert (kernels["ours"], full_checks[0]) == (1, 1)
    assert loss.dtype == own_loss.dtype == dtype
    torch.testing.assert_close(loss, own_loss)
    torch.testing.assert_close(grad, own_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("ignore_index", "ignored"),
    [(-100, [0, 5, 6]), (0, [1, 2]), (9, [3]), (4, [0, 7]), (-1, [])],
    ids=["padding", "the least class", "the largest class", "a middle class", "none"],
)
def test_small_calls_with_ignored_tokens_take_the_short_path(
    monkeypatch, kernels, full_checks, reduction, ignore_index, ignored
):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 10, generator=g)
    targets = torch.tensor([1, 2, 3, 5, 6, 7, 8, 4])  # no 0, 9 or -1: those stand for ignored
    targets[ignored] = ignore_index
    loss, grad = _value_and_grad(logits, targets, ignore_index=ignore_index, reduction=reduction)
    assert (kernels["torch"], full_checks[0]) == (1, 0)
    monkeypatch.setattr(module, "TORCH_KERNEL_ELEMENTS", 0)  # this package's kernel now
    own_loss, own_grad = _value_and_grad(
        logits, targets, ignore_index=ignore_index, reduction=reduction
    )
    assert (kernels["ours"], full_checks[0]) == (1, 1)
    torch.testing.assert_close(loss, own_loss)
    torch.testing.assert_close(grad, own_grad)
    assert bool((grad[ignored] == 0).all())


def test_a_mean_with_ignored_tokens_goes_to_torch_after_the_full_checks(kernels, full_checks):
    # In bits: not the short path's, but torch's kernel still computes it, the base a factor.
    logits = torch.randn(6, 5, dtype=torch.float64)
    targets = torch.tensor([0, -100, 4, 3, -100, 1])
    loss, grad = _value_and_grad(logits, targets, base=2)
    assert (kernels["torch"], kernels["ours"], full_checks[0]) == (1, 0, 1)
    expected = F.cross_entropy(logits, targets) / math.log(2)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert bool((grad[[1, 4]] == 0).all())


def test_a_small_half_call_under_autocast_gives_a_float32_loss(kernels, full_checks):
    logits = torch.randn(16, 7).bfloat16()
    targets = torch.randint(0, 7, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cross_entropy(logits, targets)
    assert (kernels["torch"], full_checks[0]) == (1, 0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), targets))


def _other_calls():
    """Calls the short path leaves to the full checks, each with what they give."""
    logits = torch.randn(8, 5)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    return {
        "every token ignored": (logits, torch.full((8,), -100), {}),
        "every token ignored, ignore_index a class": (
            logits,
            torch.full((8,), 4),
            {"ignore_index": 4},
        ),
        "a class weight": (logits, targets, {"weight": torch.rand(5)}),
        "z-loss": (logits, targets, {"z_loss": 1e-3}),
        "soft-capping": (logits, targets, {"softcap": 5.0}),
        "bits": (logits, targets, {"base": 2}),
        "float16 logits above ROW_KERNEL_ELEMENTS": (
            torch.randn(80, 1000).half(),
            torch.randint(0, 1000, (80,)),
            {},
        ),
        "int32 targets": (logits, targets.int(), {}),
        "one token": (logits[0], targets[0], {}),
        "an image": (logits.reshape(2, 5, 4), targets[:8].reshape(2, 4) % 5, {}),
        "probabilities": (logits, torch.softmax(torch.randn(8, 5), 1), {}),
    }


@pytest.mark.parametrize("case", list(_other_calls()))
def test_other_calls_take_the_full_checks(full_checks, case):
    logits, targets, options = _other_calls()[case]
    loss = cross_entropy(logits, targets, **options)
    assert full_checks[0] == 1
    reference = cross_entropy(logits.double(), targets, **options)  # the full path again
    torch.testing.assert_close(loss.double(), reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("targets", "options", "message"),
    [
        (torch.tensor([0, 1, 5]), {}, r"class indices in \[0, 5\).*got 5"),
        (torch.tensor([0, -1, 2]), {}, r"class indices in \[0, 5\).*got -1"),
        (torch.tensor([0, 1, 2]), {"reduction": "average"}, "reduction"),
        (torch.tensor([0, 1, 2]), {"label_smoothing": 1.5}, "label_smoothing"),
        (torch.tensor([0, 1, 2]), {"label_smoothing": float("nan")}, "label_smoothing"),
        (torch.tensor([0, 1, 2]), {"ignore_index": 1.0}, "ignore_index"),
        (torch.tensor([0, 1]), {}, r"`targets` must have shape \(3,\)"),
    ],
)
def test_bad_small_calls_get_the_full_checks_errors(full_checks, targets, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cross_entropy(torch.randn(3, 5), targets, **options)
    assert full_checks[0] == 1


def test_transforms_and_dual_levels_take_the_full_path(full_checks):
    from torch.autograd import forward_ad

    logits, targets = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    grad = torch.func.grad(lambda z: cross_entropy(z, targets))(logits)
    torch.testing.assert_close(grad, (torch.softmax(logits, 1) - F.one_hot(targets, 3)) / 4)
    assert full_checks[0] == 1
    tangent = torch.randn_like(logits)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(logits, tangent)
        derivative = forward_ad.unpack_dual(cross_entropy(dual, targets)).tangent
    assert full_checks[0] == 2
    torch.testing.assert_close(derivative, (grad * tangent).sum())
