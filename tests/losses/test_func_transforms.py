"""The losses inside ``torch.func`` transforms: per-sample gradients, Hessians, JVPs.

Inside a transform the losses compute through their plain-torch formulas (the same ones a
second-order backward pass differentiates), so ``grad``, ``vmap``, ``jacrev``, ``jvp``
and ``hessian`` work as they do for torch's own loss. Oracle: torch's
``F.cross_entropy`` under the same transform, and the composed reference for the extras.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

from crossentropy.losses import (
    cross_entropy,
    cross_entropy_stats,
    linear_cross_entropy,
    linear_cross_entropy_stats,
)
from tests.losses.reference_losses import composed_torch_loss

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1, "weight": "w"},
        {"reduction": "sum", "ignore_index": 1},
    ],
)
def test_per_sample_gradients_and_hessians_match_torch(options):
    """vmap(grad) per-sample gradients of a linear model, the Hessian of the loss in the
    logits, and a forward-mode JVP, all equal torch's."""
    gen = torch.Generator().manual_seed(0)
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(6, dtype=F64, generator=gen) + 0.5
    params = {"w": torch.randn(6, 4, dtype=F64, generator=gen), "b": torch.randn(6, dtype=F64)}
    x = torch.randn(5, 4, dtype=F64, generator=gen)
    y = torch.randint(0, 6, (5,), generator=gen)
    logits = torch.randn(3, 6, dtype=F64, generator=gen)
    tangent = torch.randn(3, 6, dtype=F64, generator=gen)
    results = []
    for loss_fn in (cross_entropy, F.cross_entropy):

        def sample_loss(p, xi, yi, loss_fn=loss_fn):
            out = F.linear(xi.unsqueeze(0), p["w"], p["b"])
            return loss_fn(out, yi.unsqueeze(0), **options)

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)

        def on_logits(z, loss_fn=loss_fn):
            return loss_fn(z, y[:3], **options)

        hess = hessian(on_logits)(logits)
        _, forward = jvp(on_logits, (logits,), (tangent,))
        results.append((per_sample["w"], per_sample["b"], hess, forward))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, **TIGHT)


def test_extras_and_probabilities_inside_transforms():
    """z-loss, soft-capping and bits: the gradient from torch.func equals autograd's on the
    composed reference; probability targets too (against torch)."""
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 7, dtype=F64, generator=gen)
    y = torch.randint(0, 7, (4,), generator=gen)
    options = {"z_loss": 0.1, "softcap": 2.0, "base": 2.0, "label_smoothing": 0.05}
    ours = grad(lambda z: cross_entropy(z, y, **options))(logits)
    z = logits.clone().requires_grad_(True)
    composed_torch_loss(z, y, **options).backward()
    torch.testing.assert_close(ours, z.grad, **TIGHT)
    soft = torch.softmax(torch.randn(4, 7, dtype=F64, generator=gen), 1)
    torch.testing.assert_close(
        grad(lambda z: cross_entropy(z, soft, label_smoothing=0.2))(logits),
        grad(lambda z: F.cross_entropy(z, soft, label_smoothing=0.2))(logits),
        **TIGHT,
    )


def test_target_values_are_not_checked_inside_transforms():
    """As documented, a transform cannot inspect the targets: probabilities that do not sum
    to 1, refused outside, are taken as given inside (torch's formula, torch's gradient)."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, dtype=F64, generator=gen)
    unnormalised = torch.rand(3, 5, dtype=F64, generator=gen)
    with pytest.raises(ValueError, match="sum to 1"):
        cross_entropy(logits, unnormalised)
    torch.testing.assert_close(
        grad(lambda z: cross_entropy(z, unnormalised))(logits),
        grad(lambda z: F.cross_entropy(z, unnormalised))(logits),
        **TIGHT,
    )


def test_stats_inside_vmap():
    """cross_entropy_stats under vmap equals the statistics of each sample."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 6, dtype=F64, generator=gen)  # 3 samples of 5 tokens
    y = torch.randint(0, 6, (3, 5), generator=gen)
    batched = vmap(lambda z, t: tuple(cross_entropy_stats(z, t, z_loss=0.1)))(logits, y)
    for i in range(3):
        single = cross_entropy_stats(logits[i], y[i], z_loss=0.1)
        for got, want in zip(batched, single, strict=True):
            torch.testing.assert_close(got[i], want, **TIGHT)


def test_fused_head_inside_transforms():
    """linear_cross_entropy (and its statistics) under grad and vmap: the unfused
    computation, equal to torch's composition."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 4, dtype=F64, generator=gen)
    weight = torch.randn(9, 4, dtype=F64, generator=gen)
    y = torch.randint(0, 9, (6,), generator=gen)
    ours = grad(lambda w: linear_cross_entropy(hidden, w, y, impl="chunked"))(weight)
    theirs = grad(lambda w: F.cross_entropy(F.linear(hidden, w), y))(weight)
    torch.testing.assert_close(ours, theirs, **TIGHT)
    per_sample = vmap(
        grad(lambda w, h, t: linear_cross_entropy(h.unsqueeze(0), w, t.unsqueeze(0))),
        in_dims=(None, 0, 0),
    )(weight, hidden, y)
    for i in range(6):
        single = grad(lambda w, i=i: F.cross_entropy(F.linear(hidden[i : i + 1], w), y[i : i + 1]))(
            weight
        )
        torch.testing.assert_close(per_sample[i], single, **TIGHT)
    stats = vmap(lambda h, t: tuple(linear_cross_entropy_stats(h, weight, t)))(
        hidden.reshape(2, 3, 4), y.reshape(2, 3)
    )
    expected = linear_cross_entropy_stats(hidden, weight, y)
    for got, want in zip(stats, expected, strict=True):
        torch.testing.assert_close(got.reshape(-1), want, **TIGHT)


def test_forward_mode_ad_matches_torch():
    """Dual tensors (torch.autograd.forward_ad): the loss's tangent equals torch's, for the
    plain loss and for the fused head's tangent in the weight direction."""
    import torch.autograd.forward_ad as fwad

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 6, dtype=F64, generator=gen)
    tangent = torch.randn(5, 6, dtype=F64, generator=gen)
    y = torch.tensor([0, 5, -100, 2, 3])
    hidden = torch.randn(5, 3, dtype=F64, generator=gen)
    weight = torch.randn(6, 3, dtype=F64, generator=gen)
    w_tangent = torch.randn(6, 3, dtype=F64, generator=gen)
    tangents = []
    for ce, head in (
        (cross_entropy, lambda h, w: linear_cross_entropy(h, w, y, impl="chunked")),
        (F.cross_entropy, lambda h, w: F.cross_entropy(F.linear(h, w), y)),
    ):
        with fwad.dual_level():
            loss = ce(fwad.make_dual(logits, tangent), y, label_smoothing=0.1)
            fused = head(hidden, fwad.make_dual(weight, w_tangent))
            tangents.append((fwad.unpack_dual(loss).tangent, fwad.unpack_dual(fused).tangent))
    for ours, theirs in zip(*tangents, strict=True):
        torch.testing.assert_close(ours, theirs, **TIGHT)
