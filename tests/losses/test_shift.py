"""``shift=``: a causal language model's head scores position t against target t + shift.

Oracle: the same loss on ``hidden[..., :-shift, :]`` and ``targets[..., shift:]``, and
torch's ``F.cross_entropy`` on the sliced logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossentropy.losses import LinearCrossEntropyLoss, linear_cross_entropy

F64 = torch.float64


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, 5, dtype=F64, generator=gen)
    weight = torch.randn(11, 5, dtype=F64, generator=gen)
    targets = torch.randint(0, 11, (2, 7), generator=gen)
    targets[1, 3] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shift", [1, 3])
def test_shift_equals_slicing(impl, reduction, shift):
    hidden, weight, targets = _data()
    results = []
    for shifted in (True, False):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        if shifted:
            loss = linear_cross_entropy(
                h, w, targets, reduction=reduction, impl=impl, chunk_size=4, shift=shift
            )
        else:
            loss = linear_cross_entropy(
                h[..., :-shift, :], w, targets[..., shift:], reduction=reduction, impl=impl
            )
        loss.sum().backward()
        results.append((loss.detach(), h.grad, w.grad))
    (loss, h_grad, w_grad), (expected, h_expected, w_expected) = results
    if reduction == "none":
        assert torch.equal(loss[..., -shift:], torch.zeros(2, shift, dtype=F64))
        loss = loss[..., :-shift]
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h_grad, h_expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w_grad, w_expected, rtol=1e-12, atol=1e-14)
    assert not h_grad[..., -shift:, :].any()
    logits = hidden[..., :-shift, :] @ weight.T
    torch_loss = F.cross_entropy(logits.reshape(-1, 11), targets[..., shift:].reshape(-1))
    if reduction == "mean":
        torch.testing.assert_close(loss, torch_loss, rtol=1e-12, atol=1e-14)


def test_module_shift_and_small_integer_targets():
    """The module passes shift on; uint8 targets work (ignored positions need int64)."""
    hidden, weight, targets = _data(1)
    targets[1, 3] = 4
    module = LinearCrossEntropyLoss(shift=1, impl="chunked")
    assert "shift=1" in repr(module)
    loss = module(hidden, weight, targets.to(torch.uint8))
    logits = (hidden[:, :-1] @ weight.T).reshape(-1, 11)
    expected = F.cross_entropy(logits, targets[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"shift": -1}, ValueError, "`shift` must be an int >= 0; got -1"),
        ({"shift": 1.5}, TypeError, "`shift` must be an int >= 0; got float 1.5"),
        ({"shift": True}, TypeError, "`shift` must be an int >= 0; got bool True"),
        ({"shift": 7}, ValueError, "smaller than the sequence length T = 7"),
    ],
)
def test_bad_shift(kwargs, error, message):
    hidden, weight, targets = _data()
    with pytest.raises(error, match=message):
        linear_cross_entropy(hidden, weight, targets, **kwargs)
    if "T = 7" not in message:  # the module checks shift's type and sign at construction
        with pytest.raises(error, match=message):
            LinearCrossEntropyLoss(**kwargs)
    with pytest.raises(ValueError, match="class-index targets"):
        linear_cross_entropy(hidden, weight, torch.softmax(hidden @ weight.T, -1), shift=1)
    with pytest.raises(ValueError, match=r"\(\.\.\., T, D\)"):
        linear_cross_entropy(hidden[0, 0], weight, targets[0, 0], shift=1)
    with pytest.raises(ValueError, match="`shift` must be an int >= 0"):
        LinearCrossEntropyLoss(shift=-2)
