"""Low-precision logits: accuracy against a float64 reference, extreme values, float32 parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossentropy.losses import cross_entropy, cross_entropy_stats
from tests.losses.reference_losses import reference_cross_entropy

LOW = [torch.bfloat16, torch.float16]


def _logits(n, c, dtype, seed, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "c"), [(64, 1000), (17, 4099)])
def test_low_precision_error_no_worse_than_torch(dtype, seed, n, c):
    logits = _logits(n, c, dtype, seed)
    targets = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))
    # The reference sees exactly the rounded logits, in float64.
    exact = F.cross_entropy(logits.double(), targets, reduction="none")
    ours = cross_entropy(logits, targets, reduction="none")
    theirs = F.cross_entropy(logits, targets, reduction="none")
    assert ours.dtype == dtype
    err_ours = (ours.double() - exact).abs()
    err_theirs = (theirs.double() - exact).abs()
    assert err_ours.sum() <= err_theirs.sum()
    assert err_ours.max() <= err_theirs.max()
    # Ours is the correctly rounded value up to float32 error: within half an ulp of dtype.
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
    assert bool((err_ours <= ulp).all())
    for reduction in ("mean", "sum"):
        exact_r = F.cross_entropy(logits.double(), targets, reduction=reduction)
        ours_r = cross_entropy(logits, targets, reduction=reduction).double()
        theirs_r = F.cross_entropy(logits, targets, reduction=reduction).double()
        assert abs(ours_r - exact_r) <= abs(theirs_r - exact_r)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_gradient_close_to_float64(dtype):
    logits = _logits(33, 257, dtype, 5)
    targets = torch.randint(0, 257, (33,), generator=torch.Generator().manual_seed(5))
    x = logits.clone().requires_grad_()
    cross_entropy(x, targets, label_smoothing=0.1, z_loss=1e-3, softcap=20.0).backward()
    _, ref_grad = reference_cross_entropy(
        logits.double().numpy(), targets.numpy(), label_smoothing=0.1, z_loss=1e-3, softcap=20.0
    )
    assert x.grad.dtype == dtype
    # Each gradient entry is a float32 value rounded once to `dtype`.
    np.testing.assert_allclose(
        x.grad.double().numpy(), ref_grad, rtol=torch.finfo(dtype).eps, atol=1e-7
    )


@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "z_loss": 1e-4}])
def test_extreme_logits_finite_and_correct(dtype, options):
    # Rows with entries of +-1e4: torch's float16 log-softmax path is exact here too, but a
    # naive exp would overflow; the loss is ~2e4 for a target at -1e4.
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 3.0]],
        dtype=torch.float64,
    ).to(dtype)
    targets = torch.tensor([1, 2, 0])
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, reduction="none", **options)
    loss.sum().backward()
    ref_loss, ref_grad = reference_cross_entropy(
        logits.double().numpy(), targets.numpy(), reduction="none", **options
    )
    assert bool(torch.isfinite(loss).all())
    assert bool(torch.isfinite(x.grad).all())
    np.testing.assert_allclose(
        loss.detach().double().numpy(), ref_loss, rtol=torch.finfo(dtype).eps
    )
    np.testing.assert_allclose(
        x.grad.double().numpy(), ref_grad, rtol=torch.finfo(dtype).eps, atol=1e-3
    )
    stats = cross_entropy_stats(logits, targets)
    assert bool(torch.isfinite(stats.entropy).all())
    assert bool(torch.isfinite(stats.logsumexp).all())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_matches_torch(reduction):
    logits = _logits(40, 3001, torch.float32, 9)
    targets = torch.randint(0, 3001, (40,), generator=torch.Generator().manual_seed(9))
    targets[::7] = -100
    weight = torch.rand(3001, generator=torch.Generator().manual_seed(10)) + 0.1
    options = {"reduction": reduction, "weight": weight, "label_smoothing": 0.05}
    x = logits.clone().requires_grad_()
    y = logits.clone().requires_grad_()
    ours = cross_entropy(x, targets, **options)
    theirs = F.cross_entropy(y, targets, **options)
    ours.sum().backward()
    theirs.sum().backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)


def test_float32_large_vocabulary_against_float64():
    # One row slice spans many rows at small V and a fraction of the threads at large V.
    for c in (5, 70_001):
        logits = _logits(6, c, torch.float32, c)
        targets = torch.arange(6) % c
        exact = F.cross_entropy(logits.double(), targets, reduction="none")
        ours = cross_entropy(logits, targets, reduction="none")
        torch.testing.assert_close(ours.double(), exact, rtol=2e-6, atol=1e-6 * math.log(c))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_wider_probability_targets_keep_the_logits_dtype(reduction):
    # As documented: the loss keeps the logits' dtype where torch promotes it to that of
    # wider probability targets; the values agree with torch's, and the targets' gradient
    # comes back in their own dtype.
    logits = _logits(5, 11, torch.float32, 3).requires_grad_()
    gen = torch.Generator().manual_seed(4)
    targets = torch.rand(5, 11, generator=gen, dtype=torch.float64)
    targets = (targets / targets.sum(1, keepdim=True)).requires_grad_()
    ours = cross_entropy(logits, targets, reduction=reduction)
    theirs = F.cross_entropy(logits, targets, reduction=reduction)
    assert ours.dtype == torch.float32
    assert theirs.dtype == torch.float64
    torch.testing.assert_close(ours.double(), theirs, rtol=2e-6, atol=1e-6)
    ours.sum().backward()
    assert logits.grad.dtype == torch.float32
    assert targets.grad.dtype == torch.float64
    (expected,) = torch.autograd.grad(theirs.sum(), targets)
    torch.testing.assert_close(targets.grad, expected, rtol=2e-6, atol=1e-6)
