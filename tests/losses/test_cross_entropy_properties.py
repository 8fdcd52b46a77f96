"""Properties of `losses.cross_entropy`, checked with Hypothesis on float64 inputs.

Shift invariance per row, gradient = softmax - (smoothed) target, change of base, one-hot
targets against `info.cross_entropy`, ignored tokens as if removed, index targets against
one-hot probability targets, the class dimension anywhere against a flat (M, C) call, and
classes masked to -inf (and rows of zeros) in probability targets as if removed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import info
from crossentropy.losses import cross_entropy

TOL = 1e-10


@st.composite
def problems(draw, max_classes=9, max_rows=6):
    """Seeded float64 logits (N, C), class targets and an option set."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    targets = torch.randint(0, c, (n,), generator=gen)
    weight = (
        torch.rand(c, generator=gen, dtype=torch.float64) + 0.05 if draw(st.booleans()) else None
    )
    options = {
        "weight": weight,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
    }
    return logits, targets, options


def _loss_and_grad(logits, targets, **options):
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, **options)
    loss.sum().backward()
    return loss.detach(), x.grad


@given(problems(), st.floats(-1e3, 1e3))
def test_adding_a_constant_per_row_changes_nothing(problem, offset):
    logits, targets, options = problem
    shift = torch.linspace(-1, 1, logits.shape[0], dtype=torch.float64).reshape(-1, 1) * offset
    loss, grad = _loss_and_grad(logits, targets, **options)
    loss_shifted, grad_shifted = _loss_and_grad(logits + shift, targets, **options)
    # The shift is up to 1e3, so compare relative to the logits' rounding.
    atol = 1e-12 * (1 + abs(offset)) * 64
    torch.testing.assert_close(loss_shifted, loss, rtol=1e-12, atol=atol)
    torch.testing.assert_close(grad_shifted, grad, rtol=0, atol=atol)


@given(problems())
def test_gradient_is_softmax_minus_smoothed_target(problem):
    logits, targets, options = problem
    c = logits.shape[1]
    eps = options["label_smoothing"]
    _, grad = _loss_and_grad(logits, targets, label_smoothing=eps, reduction="sum")
    smoothed = (1 - eps) * torch.nn.functional.one_hot(targets, c).double() + eps / c
    expected = torch.softmax(logits, 1) - smoothed
    torch.testing.assert_close(grad, expected, rtol=0, atol=TOL)
    # Probability targets: the gradient is softmax - target, whatever the target.
    target_probs = torch.softmax(torch.randn_like(logits), 1)
    _, grad_p = _loss_and_grad(logits, target_probs, reduction="sum")
    torch.testing.assert_close(grad_p, torch.softmax(logits, 1) - target_probs, rtol=0, atol=TOL)


@given(problems(), st.sampled_from([0.0, 1e-3]), st.sampled_from([None, 3.0]))
def test_base_two_is_nats_over_ln_two(problem, z_loss, softcap):
    logits, targets, options = problem
    options = dict(options, z_loss=z_loss, softcap=softcap)
    nats, grad_nats = _loss_and_grad(logits, targets, **options)
    bits, grad_bits = _loss_and_grad(logits, targets, base=2, **options)
    torch.testing.assert_close(bits, nats / math.log(2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_bits, grad_nats / math.log(2), rtol=1e-12, atol=1e-12)


@given(problems())
def test_one_hot_targets_equal_info_cross_entropy(problem):
    logits, targets, _ = problem
    c = logits.shape[1]
    one_hot = torch.nn.functional.one_hot(targets, c).double()
    expected = info.cross_entropy(
        one_hot.numpy(), torch.softmax(logits, 1).numpy(), axis=-1, base=math.e
    )
    ours = cross_entropy(logits, targets, reduction="none")
    # info works from the probabilities, so it loses accuracy where a probability is tiny.
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)
    bits = cross_entropy(logits, targets, reduction="none", base=2)
    expected_bits = info.cross_entropy(one_hot.numpy(), torch.softmax(logits, 1).numpy())
    np.testing.assert_allclose(bits.numpy(), expected_bits, rtol=1e-9, atol=1e-9)


@given(problems(max_rows=8), st.data())
def test_ignored_tokens_behave_as_if_removed(problem, data):
    logits, targets, options = problem
    n = logits.shape[0]
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if not bool(keep.any()):
        keep[0] = True
    ignore_index = data.draw(st.sampled_from([-100, -1, 0]))
    marked = torch.where(keep, targets, ignore_index)
    if ignore_index == 0:  # class 0 itself ignored: the kept tokens must not use it
        keep = keep & (targets != 0)
        if not bool(keep.any()):
            return
        marked = torch.where(keep, targets, 0)
    loss, grad = _loss_and_grad(logits, marked, ignore_index=ignore_index, **options)
    sub_loss, sub_grad = _loss_and_grad(logits[keep], targets[keep], **options)
    if options["reduction"] == "none":
        torch.testing.assert_close(loss[keep], sub_loss, rtol=0, atol=TOL)
        assert bool((loss[~keep] == 0).all())
    else:
        torch.testing.assert_close(loss, sub_loss, rtol=0, atol=TOL)
    torch.testing.assert_close(grad[keep], sub_grad, rtol=0, atol=TOL)
    assert bool((grad[~keep] == 0).all())


@given(problems(), st.sampled_from([0.0, 1e-2]))
def test_index_targets_equal_one_hot_probability_targets(problem, z_loss):
    logits, targets, options = problem
    if options["reduction"] == "mean":
        # mean divides by sum of target weights for indices, by the count for probabilities
        options = dict(options, reduction="sum", weight=None)
    if options["weight"] is not None:
        z_loss = 0.0  # the z-term carries w_y for index targets only (documented)
    one_hot = torch.nn.functional.one_hot(targets, logits.shape[1]).double()
    loss_i, grad_i = _loss_and_grad(logits, targets, z_loss=z_loss, **options)
    loss_p, grad_p = _loss_and_grad(logits, one_hot, z_loss=z_loss, **options)
    torch.testing.assert_close(loss_i, loss_p, rtol=0, atol=TOL)
    torch.testing.assert_close(grad_i, grad_p, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_class_dimension_anywhere_equals_flat_call(kind):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    if kind == "index":
        targets = torch.randint(0, 5, (2, 3, 4), generator=gen)
        flat_targets = targets.reshape(-1)
    else:
        targets = torch.softmax(torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64), 1)
        flat_targets = targets.movedim(1, -1).reshape(-1, 5)
    options = {"label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 4.0, "reduction": "none"}
    loss, grad = _loss_and_grad(logits, targets, **options)
    flat_loss, flat_grad = _loss_and_grad(
        logits.movedim(1, -1).reshape(-1, 5), flat_targets, **options
    )
    torch.testing.assert_close(loss.reshape(-1), flat_loss, rtol=0, atol=TOL)
    torch.testing.assert_close(grad.movedim(1, -1).reshape(-1, 5), flat_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_or_empty_batch_gives_zero_not_nan(reduction):
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.full((3,), -100)
    loss = cross_entropy(logits, targets, reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    loss.sum().backward()
    assert bool((loss == 0).all())
    assert bool((logits.grad == 0).all())
    empty = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    loss = cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction=reduction)
    loss.sum().backward()
    assert loss.numel() == (0 if reduction == "none" else 1)
    assert bool((loss == 0).all())
    assert empty.grad.shape == (0, 4)


def test_zero_weighted_denominator_gives_zero_not_nan():
    # Tokens that count but whose classes all weigh 0: torch's weighted mean is 0 / 0 = NaN;
    # this loss gives 0 with a zero gradient, smoothing and z-loss terms included.
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 0])
    weight = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    options = {"weight": weight, "label_smoothing": 0.2}
    assert bool(torch.isnan(F.cross_entropy(logits, targets, **options)))
    loss = cross_entropy(logits, targets, z_loss=0.1, **options)
    loss.backward()
    assert loss.item() == 0.0
    assert bool((logits.grad == 0).all())


def test_z_loss_and_softcap_closed_forms():
    # Uniform logits over C classes: lse = log C, loss = log C + z_loss (log C)^2.
    c, z = 6, 0.25
    loss = cross_entropy(torch.zeros(2, c, dtype=torch.float64), torch.tensor([0, 5]), z_loss=z)
    assert abs(loss.item() - (math.log(c) + z * math.log(c) ** 2)) < TOL
    # Soft-capping a logit of 1e6 at 2 gives 2 tanh(5e5) = 2.
    x = torch.tensor([[1e6, 0.0]], dtype=torch.float64)
    loss = cross_entropy(x, torch.tensor([1]), softcap=2.0)
    assert abs(loss.item() - math.log1p(math.exp(2.0))) < TOL


@given(problems(max_classes=8), st.data(), st.sampled_from([0.0, 1e-3]))
def test_masked_classes_and_zero_rows_behave_as_if_removed(problem, data, z_loss):
    """Probability targets: classes whose logits are -inf and whose target mass is 0 are as
    if absent (finite loss, zero gradient there), and a row of zeros is a token without a
    target, in the full problem and in the one without those classes alike."""
    logits, _, options = problem
    options = {**options, "label_smoothing": 0.0, "z_loss": z_loss}  # smoothing gives them mass
    n, c = logits.shape
    masked = data.draw(st.lists(st.booleans(), min_size=c, max_size=c))
    keep = [i for i in range(c) if not masked[i]] or [0]
    masked = [i not in keep for i in range(c)]
    zero_rows = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    probs = torch.zeros(n, c, dtype=torch.float64)
    probs[:, keep] = torch.softmax(torch.randn(n, len(keep), generator=gen, dtype=torch.float64), 1)
    probs[torch.tensor(zero_rows, dtype=torch.bool)] = 0.0
    full = logits.clone()
    full[:, torch.tensor(masked, dtype=torch.bool)] = -math.inf
    loss, grad = _loss_and_grad(full, probs, **options)
    reduced_options = dict(options)
    if options["weight"] is not None:
        reduced_options["weight"] = options["weight"][keep]
    expected, expected_grad = _loss_and_grad(logits[:, keep], probs[:, keep], **reduced_options)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(grad[:, keep], expected_grad, rtol=TOL, atol=TOL)
    assert torch.count_nonzero(grad[:, torch.tensor(masked, dtype=torch.bool)]) == 0
