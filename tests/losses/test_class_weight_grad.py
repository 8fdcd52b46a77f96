"""Gradients with respect to the class weights.

torch gives one for class-probability targets and refuses for class indices. Ours gives
it in both cases, through the plain-torch formulas (the fast paths treat the weights as
constants), instead of leaving ``weight.grad`` silently empty. Oracles: torch for
probabilities, ``gradcheck`` (finite differences, float64) everywhere, and the weighted
mean written out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from crossentropy.losses import cross_entropy, cross_entropy_stats, linear_cross_entropy

F64 = torch.float64


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 5, dtype=F64, generator=gen)
    targets = torch.tensor([0, 4, -100, 2, 2, 1])
    soft = torch.softmax(torch.randn(6, 5, dtype=F64, generator=gen), 1)
    weight = torch.rand(5, dtype=F64, generator=gen) + 0.2
    return logits, targets, soft, weight


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets_weight_gradient_matches_torch(reduction):
    logits, _, soft, weight = _data()
    grads = []
    for loss_fn in (cross_entropy, F.cross_entropy):
        w = weight.clone().requires_grad_(True)
        z = logits.clone().requires_grad_(True)
        loss_fn(z, soft, weight=w, label_smoothing=0.1, reduction=reduction).sum().backward()
        grads.append((w.grad, z.grad))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_index_targets_weight_gradient(reduction):
    """Index targets with ignored tokens, smoothing and z-loss: finite differences agree,
    and for the plain weighted mean the gradient is the quotient rule written out."""
    logits, targets, _, weight = _data(1)
    options = {"reduction": reduction, "label_smoothing": 0.2, "z_loss": 0.1}
    assert gradcheck(
        lambda w: cross_entropy(logits, targets, weight=w, **options),
        (weight.clone().requires_grad_(True),),
    )
    w = weight.clone().requires_grad_(True)
    cross_entropy(logits, targets, weight=w).backward()
    kept = targets != -100
    nll = -torch.log_softmax(logits[kept], 1).gather(1, targets[kept, None]).squeeze(1)
    y = targets[kept]
    total = (weight[y] * nll).sum()
    denominator = weight[y].sum()
    expected = torch.zeros(5, dtype=F64)
    expected.index_add_(0, y, nll / denominator - total / denominator**2)
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-14)


def test_all_ignored_batch_weight_gradient_is_zero_not_nan():
    logits, _, _, weight = _data(2)
    w = weight.clone().requires_grad_(True)
    loss = cross_entropy(logits, torch.full((6,), -100), weight=w)
    loss.backward()
    assert loss.item() == 0
    assert torch.equal(w.grad, torch.zeros_like(weight))


def test_stats_and_fused_head_weight_gradients():
    """cross_entropy_stats' loss and the fused head (class_weight=) pass the gradient to
    the weights too, equal to cross_entropy's."""
    logits, targets, _, weight = _data(3)
    expected_w = weight.clone().requires_grad_(True)
    cross_entropy(logits, targets, weight=expected_w, reduction="sum").backward()
    w = weight.clone().requires_grad_(True)
    cross_entropy_stats(logits, targets, weight=w).loss.sum().backward()
    torch.testing.assert_close(w.grad, expected_w.grad, rtol=1e-12, atol=1e-14)

    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 3, dtype=F64, generator=gen)
    head = torch.randn(5, 3, dtype=F64, generator=gen)
    fused_w = weight.clone().requires_grad_(True)
    linear_cross_entropy(hidden, head, targets, class_weight=fused_w, impl="chunked").backward()
    plain_w = weight.clone().requires_grad_(True)
    cross_entropy(hidden @ head.T, targets, weight=plain_w).backward()
    torch.testing.assert_close(fused_w.grad, plain_w.grad, rtol=1e-12, atol=1e-14)
