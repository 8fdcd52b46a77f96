"""`losses.cross_entropy_stats`: per-token loss, log-sum-exp and entropy, and their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossentropy.losses import TokenStats, cross_entropy, cross_entropy_stats
from tests.losses.reference_losses import reference_entropy

TOL = 1e-10


def _inputs(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    token_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    targets = torch.randint(0, shape[0 if len(shape) == 1 else 1], token_shape, generator=gen)
    return logits, targets


@pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 6, 3)])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"base": 2.0},
        {"softcap": 2.0, "z_loss": 1e-2, "label_smoothing": 0.2},
        {"weight": "w", "ignore_index": 1},
    ],
)
def test_stats_match_loss_logsumexp_and_entropy(shape, options):
    logits, targets = _inputs(shape, len(shape))
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    stats = cross_entropy_stats(logits, targets, **options)
    assert isinstance(stats, TokenStats)
    token_shape = targets.shape
    assert stats.loss.shape == stats.logsumexp.shape == stats.entropy.shape == token_shape
    torch.testing.assert_close(
        stats.loss, cross_entropy(logits, targets, reduction="none", **options), rtol=0, atol=TOL
    )
    softcap = options.get("softcap")
    base = options.get("base", math.e)
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    class_dim = 0 if logits.dim() == 1 else 1
    torch.testing.assert_close(stats.logsumexp, torch.logsumexp(z, class_dim), rtol=0, atol=TOL)
    expected_entropy = reference_entropy(logits.numpy(), softcap=softcap, base=base)
    np.testing.assert_allclose(stats.entropy.numpy(), expected_entropy, rtol=0, atol=TOL)
    # A second oracle: torch.distributions.
    categorical = torch.distributions.Categorical(logits=z.movedim(class_dim, -1))
    torch.testing.assert_close(
        stats.entropy, categorical.entropy() / math.log(base), rtol=0, atol=TOL
    )


def test_ignored_tokens_have_zero_loss_but_keep_lse_and_entropy():
    logits, targets = _inputs((4, 5), 3)
    targets[1] = -100
    stats = cross_entropy_stats(logits, targets)
    assert stats.loss[1] == 0
    torch.testing.assert_close(stats.logsumexp[1], torch.logsumexp(logits[1], 0))
    assert stats.entropy[1] > 0


def test_probability_targets_stats():
    logits, _ = _inputs((4, 5), 4)
    probs = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    stats = cross_entropy_stats(logits, probs)
    expected = torch.nn.functional.cross_entropy(logits, probs, reduction="none")
    torch.testing.assert_close(stats.loss, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_stats_gradcheck(softcap, kind):
    logits, targets = _inputs((3, 5), 6)
    targets[0] = -100
    if kind == "probs":
        targets = torch.softmax(torch.randn(3, 5, dtype=torch.float64), 1)
    weights = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)

    def combined(x):
        stats = cross_entropy_stats(
            x, targets, softcap=softcap, z_loss=1e-2, label_smoothing=0.1, base=2.0
        )
        return (stats.loss * weights).sum() + stats.logsumexp.sum() - 2 * stats.entropy.sum()

    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(combined, (x,))
    # Each output alone, too (the others' upstream gradients are then zero).
    for field in range(3):
        assert torch.autograd.gradcheck(
            lambda v, f=field: cross_entropy_stats(v, targets, softcap=softcap)[f].sum(), (x,)
        )


def test_stats_in_low_precision_are_float32_accurate():
    logits = (torch.randn(8, 300, dtype=torch.float64) * 5).to(torch.bfloat16)
    targets = torch.arange(8)
    stats = cross_entropy_stats(logits, targets)
    assert stats.entropy.dtype == torch.bfloat16
    exact = reference_entropy(logits.double().numpy())
    np.testing.assert_allclose(stats.entropy.double().numpy(), exact, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("create_graph", [False, True])
def test_masked_logits_give_finite_gradients(create_graph):
    """Logits of -inf (a masked vocabulary) have probability 0 and contribute 0 log 0 = 0
    to the entropy: its gradient (formed directly, or as a graph) is finite and equals
    the formula's, 0 at the masked classes, never NaN from 0 * -inf."""
    logits = torch.tensor([[0.0, -math.inf, 1.0, 0.5], [0.5, 0.2, 0.1, -1.0]], dtype=torch.float64)
    targets = torch.tensor([2, 0])
    upstream = torch.tensor([0.7, -1.3], dtype=torch.float64)
    z = logits.clone().requires_grad_(True)
    stats = cross_entropy_stats(z, targets, base=2)
    (grad,) = torch.autograd.grad(
        (stats.entropy * upstream).sum() + stats.logsumexp.sum(), z, create_graph=create_graph
    )
    x = logits.clone().requires_grad_(True)
    log_p = torch.log_softmax(x, 1)
    p = log_p.exp()
    entropy = -(p * torch.where(p > 0, log_p, 0.0)).sum(1) / math.log(2)
    (expected,) = torch.autograd.grad((entropy * upstream).sum() + torch.logsumexp(x, 1).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad[0, 1] == 0
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
