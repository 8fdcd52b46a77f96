"""The losses under ``torch.autocast``: torch's policy, exactly.

Autocast runs torch's ``cross_entropy`` in float32 and returns a float32 loss, and casts
the inputs of ``F.linear`` to its lower-precision dtype. Ours do the same: the loss is
float32 (computed from the half-precision logits in float32, never rounded to half),
and the fused head takes bfloat16 activations with float32 master weights as an
autocast ``nn.Linear`` would, while its own products keep their designed dtypes.
Oracles: torch under the same autocast, and float64 on the same rounded inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossentropy.losses import (
    CrossEntropyLoss,
    cross_entropy,
    cross_entropy_stats,
    linear_cross_entropy,
    linear_cross_entropy_stats,
)

BF16 = torch.bfloat16


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1, "reduction": "sum"}, {"reduction": "none", "ignore_index": 3}],
)
def test_cross_entropy_matches_torch_under_autocast(options):
    """Logits from an autocast linear layer: a float32 loss equal to torch's, and the same
    gradients for the layer's parameters."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 50)
    x = torch.randn(24, 16)
    targets = torch.randint(0, 50, (24,))
    results = []
    for loss_fn in (cross_entropy, F.cross_entropy):
        layer.zero_grad()
        with _autocast():
            logits = layer(x)
            loss = loss_fn(logits, targets, **options)
        assert logits.dtype == BF16
        assert loss.dtype == torch.float32
        loss.sum().backward()
        results.append((loss.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_module_and_stats_under_autocast():
    """CrossEntropyLoss and cross_entropy_stats return float32 under autocast, equal to the
    same computation on the logits cast to float32 outside autocast."""
    torch.manual_seed(1)
    logits = torch.randn(10, 30).to(BF16)
    targets = torch.randint(0, 30, (10,))
    with _autocast():
        loss = CrossEntropyLoss(z_loss=1e-3)(logits, targets)
        stats = cross_entropy_stats(logits, targets, softcap=5.0)
    expected_loss = cross_entropy(logits.float(), targets, z_loss=1e-3)
    expected = cross_entropy_stats(logits.float(), targets, softcap=5.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    for got, want in zip(stats, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # Outside autocast a bfloat16 input still gives a bfloat16 loss, as with torch.
    assert cross_entropy(logits, targets).dtype == F.cross_entropy(logits, targets).dtype


@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_head_takes_bfloat16_activations_and_float32_weights(impl, reduction):
    """Under autocast the head casts its inputs as F.linear would: bfloat16 hidden states
    and float32 weights work together, the loss is float32 and equals float64 on the
    rounded inputs, and each gradient comes back in its input's dtype."""
    torch.manual_seed(2)
    hidden = torch.randn(40, 24).to(BF16).requires_grad_(True)
    weight = (0.2 * torch.randn(300, 24)).requires_grad_(True)
    bias = torch.randn(300, requires_grad=True)
    targets = torch.randint(0, 300, (40,))
    targets[5] = -100
    with _autocast():
        loss = linear_cross_entropy(
            hidden, weight, targets, bias=bias, impl=impl, chunk_size=16, reduction=reduction
        )
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert (hidden.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (
        BF16,
        torch.float32,
        torch.float32,
    )
    leaves = [t.detach().to(BF16).double().requires_grad_(True) for t in (hidden, weight, bias)]
    expected = F.cross_entropy(F.linear(*leaves), targets, reduction=reduction)
    expected.sum().backward()
    # The fused path forms the logits in float32 on CPU; the reference rounds them to
    # bfloat16, as F.linear does under autocast.
    tol = {"rtol": 1e-5, "atol": 1e-6} if impl == "chunked" else {"rtol": 2**-7, "atol": 1e-3}
    torch.testing.assert_close(loss.double(), expected.detach(), **tol)
    # Chunked: float32 products of the rounded inputs, then one bfloat16 rounding of the
    # cast inputs' gradients. Reference: eager autocast, whose logits and their gradient
    # are bfloat16 too, so its errors scale with the largest entry.
    for got, want in zip((hidden.grad, weight.grad, bias.grad), leaves, strict=True):
        scale = float(want.grad.abs().max())
        atol = 1e-3 * scale if impl == "chunked" else 2**-6 * scale
        torch.testing.assert_close(got.double(), want.grad, rtol=2**-7, atol=atol)


def test_fused_head_impls_under_autocast():
    """Under autocast impl="reference" is eager torch (bfloat16 logits) and impl="chunked"
    is at least as close to float64 on the same rounded inputs; the statistics function
    agrees with the chunked per-token loss."""
    torch.manual_seed(3)
    hidden = torch.randn(33, 16)
    weight = 0.3 * torch.randn(200, 16)
    targets = torch.randint(0, 200, (33,))
    with _autocast():
        chunked = linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=8)
        reference = linear_cross_entropy(hidden, weight, targets, impl="reference")
        eager = F.cross_entropy(F.linear(hidden, weight), targets)
        stats = linear_cross_entropy_stats(hidden, weight, targets, chunk_size=8)
    assert chunked.dtype == reference.dtype == stats.loss.dtype == torch.float32
    torch.testing.assert_close(reference, eager, rtol=1e-6, atol=0)
    exact = F.cross_entropy(F.linear(hidden.to(BF16).double(), weight.to(BF16).double()), targets)
    assert abs(chunked.double() - exact) <= abs(reference.double() - exact)
    torch.testing.assert_close(stats.loss.mean(), chunked, rtol=1e-6, atol=0)


def test_float64_is_left_alone_under_autocast():
    """Autocast does not touch float64: the fused head gives bit-identical results."""
    torch.manual_seed(4)
    hidden = torch.randn(20, 8, dtype=torch.float64)
    weight = torch.randn(90, 8, dtype=torch.float64)
    targets = torch.randint(0, 90, (20,))
    plain = linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=7)
    with _autocast():
        cast = linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=7)
    assert cast.dtype == torch.float64
    assert torch.equal(plain, cast)


def test_devices_without_autocast():
    """A device type autocast does not know (meta) counts as autocast off, instead of
    autocast's own 'unknown device type' error: half logits there give a half loss."""
    logits = torch.empty(4, 7, dtype=BF16, device="meta")
    targets = torch.empty(4, dtype=torch.long, device="meta")
    loss = cross_entropy(logits, targets)
    assert loss.dtype == F.cross_entropy(logits, targets).dtype == BF16
    assert loss.device.type == "meta"
