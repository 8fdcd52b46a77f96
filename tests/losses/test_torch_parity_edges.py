"""Edges of the drop-in promise: calls torch's cross-entropy takes that the losses take too,
with torch's values and gradients (float64), and the clear errors around them.

- torch's positional order and its deprecated ``size_average``/``reduce``;
- probability targets with a negative ``ignore_index`` (no effect) and rows of zeros;
- (C) logits with a (1,) class index;
- class weights batched by ``vmap``, on another device, or requiring a gradient;
- meta tensors through the fused head;
- logits of -inf at classes the probability targets give no mass (finite, where torch
  gives NaN).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossentropy import losses

DT = torch.float64


def _logits(*shape, seed=0):
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _probs(*shape, seed=1):
    return torch.softmax(_logits(*shape, seed=seed), -1 if len(shape) == 2 else 1)


def _value_and_grad(fn, logits, *args, **kwargs):
    x = logits.clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


def _assert_same_as_torch(args, kwargs, logits, *, ours_kwargs=None):
    ours = _value_and_grad(losses.cross_entropy, logits, *args, **(ours_kwargs or kwargs))
    theirs = _value_and_grad(F.cross_entropy, logits, *args, **kwargs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# torch's call signature.


def test_positional_arguments_in_torch_order():
    logits, targets = _logits(6, 5), torch.tensor([0, 1, 2, 3, 4, -1])
    weight = torch.rand(5, dtype=DT, generator=torch.Generator().manual_seed(2)) + 0.1
    # weight, size_average, ignore_index, reduce, reduction, label_smoothing
    args = (targets, weight, None, -1, None, "sum", 0.2)
    _assert_same_as_torch(args, {}, logits)
    module = losses.CrossEntropyLoss(weight, None, -1, None, "none", 0.2)
    torch.testing.assert_close(
        module(logits, targets),
        torch.nn.CrossEntropyLoss(weight, None, -1, None, "none", 0.2)(logits, targets),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize(
    ("size_average", "reduce", "reduction"),
    [(False, None, "sum"), (None, False, "none"), (True, True, "mean"), (False, False, "none")],
)
def test_deprecated_size_average_and_reduce_as_torch(size_average, reduce, reduction):
    logits, targets = _logits(4, 3), torch.tensor([0, 2, 1, 1])
    kwargs = {"size_average": size_average, "reduce": reduce}
    with pytest.warns(FutureWarning, match=f"pass reduction='{reduction}' instead"):
        ours = losses.cross_entropy(logits, targets, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = F.cross_entropy(logits, targets, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    with pytest.warns(FutureWarning):
        module = losses.CrossEntropyLoss(**kwargs)
    assert module.reduction == reduction


@pytest.mark.parametrize("value", [np.False_, torch.tensor(False), 0, 0.0])
def test_deprecated_arguments_read_by_truth_value_as_torch(value):
    logits, targets = _logits(3, 4), torch.tensor([0, 3, 1])
    with pytest.warns(FutureWarning, match="pass reduction='sum' instead"):
        ours = losses.cross_entropy(logits, targets, size_average=value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = F.cross_entropy(logits, targets, size_average=value)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_no_warning_without_deprecated_arguments():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.cross_entropy(_logits(2, 3), torch.tensor([0, 1]), reduction="sum")


# ---------------------------------------------------------------------------------------
# Probability targets: ignore_index and rows of zeros.


@pytest.mark.parametrize("ignore_index", [-1, -100, -7])
def test_negative_ignore_index_has_no_effect_on_probabilities(ignore_index):
    logits, probs = _logits(5, 4), _probs(5, 4)
    _assert_same_as_torch((probs,), {"ignore_index": ignore_index}, logits)
    hidden, head = _logits(5, 3, seed=3), _logits(4, 3, seed=4)
    plain = losses.linear_cross_entropy(hidden, head, probs, impl="reference")
    fused = losses.linear_cross_entropy(
        hidden, head, probs, ignore_index=ignore_index, impl="chunked"
    )
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reduction": "none"},
        {"reduction": "sum", "label_smoothing": 0.3},
        {"weight": "w", "label_smoothing": 0.1},
    ],
)
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3)])
def test_rows_of_zeros_as_torch(options, shape):
    """A target row of zeros (a masked token) is taken as torch takes it: no cross-entropy
    term, smoothing still applied, counted by the mean."""
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = torch.linspace(0.5, 2.0, 5, dtype=DT)
    logits = _logits(*shape)
    probs = _probs(*shape).clone()
    probs[1] = 0.0
    _assert_same_as_torch((probs,), options, logits)


def test_rows_of_zeros_through_the_fused_head():
    hidden, head = _logits(7, 4, seed=5), _logits(6, 4, seed=6)
    probs = _probs(7, 6).clone()
    probs[[0, 4]] = 0.0
    results = []
    for impl in ("reference", "chunked"):
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        loss = losses.linear_cross_entropy(h, w, probs, impl=impl, chunk_size=3)
        loss.backward()
        results.append((loss, h.grad, w.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(results[1][1][[0, 4]]) == 0  # no gradient for masked tokens


def test_a_sum_off_one_names_the_rows_of_zeros_too():
    probs = _probs(3, 4).clone()
    probs[2] *= 0.5
    with pytest.raises(ValueError, match=r"sum to 1 .*a row of zeros is accepted too"):
        losses.cross_entropy(_logits(3, 4), probs)


# ---------------------------------------------------------------------------------------
# (C) logits with a (1,) class index.


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_single_token_with_a_one_element_index(reduction):
    """torch's forward takes a (1,) index for (C) logits (its backward then fails); ours
    gives the loss and gradient of the 0-d index."""
    logits = _logits(5)
    ours = _value_and_grad(losses.cross_entropy, logits, torch.tensor([3]), reduction=reduction)
    theirs = _value_and_grad(F.cross_entropy, logits, torch.tensor(3), reduction=reduction)
    torch.testing.assert_close(
        ours[0], F.cross_entropy(logits, torch.tensor([3]), reduction=reduction), rtol=1e-12, atol=0
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_single_token_with_two_indices_is_refused():
    with pytest.raises(ValueError, match=r"`targets` must have shape \(\) for class indices"):
        losses.cross_entropy(_logits(5), torch.tensor([3, 1]))


# ---------------------------------------------------------------------------------------
# Class weights: batched, elsewhere, or with a gradient.


def test_vmap_over_class_weights():
    logits, targets = _logits(4, 5), torch.tensor([0, 1, 4, 2])
    weights = torch.rand(3, 5, dtype=DT, generator=torch.Generator().manual_seed(7)) + 0.1
    ours = torch.vmap(lambda w: losses.cross_entropy(logits, targets, weight=w))(weights)
    loop = torch.stack([F.cross_entropy(logits, targets, weight=w) for w in weights])
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=0)


def test_class_weight_on_another_device():
    logits, targets = _logits(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"`weight` must be on the logits' device cpu; got meta"):
        losses.cross_entropy(logits, targets, weight=torch.ones(5, device="meta"))
    with pytest.raises(ValueError, match=r"must be on one device; got \['cpu', 'meta'\]"):
        losses.linear_cross_entropy(
            _logits(3, 2), _logits(5, 2), targets, class_weight=torch.ones(5, device="meta")
        )


def test_targets_are_checked_when_class_weights_require_a_gradient():
    weight = torch.ones(5, dtype=DT, requires_grad=True)
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\) or ignore_index=-100"):
        losses.cross_entropy(_logits(3, 5), torch.tensor([0, 7, 1]), weight=weight)


# ---------------------------------------------------------------------------------------
# Meta tensors and the fused head's choice of path.


@pytest.mark.parametrize("impl", ["auto", "chunked", "reference"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_fused_head_on_meta_tensors(impl, kind):
    hidden = torch.empty(2, 4, 3, device="meta")
    head = torch.empty(6, 3, device="meta")
    shape = (2, 4) if kind == "index" else (2, 4, 6)
    dtype = torch.long if kind == "index" else torch.float32
    targets = torch.empty(shape, dtype=dtype, device="meta")
    loss = losses.linear_cross_entropy(hidden, head, targets, impl=impl, reduction="none")
    assert loss.device.type == "meta"
    assert loss.shape == (2, 4)


def test_auto_takes_the_reference_for_targets_that_require_a_gradient():
    """At a size where "auto" takes the fused path, probability targets that require a
    gradient get one (from the reference) instead of an error."""
    hidden, head = _logits(300, 4, seed=8), _logits(400, 4, seed=9)
    results = []
    for impl in ("auto", "reference"):
        probs = _probs(300, 400).requires_grad_()
        losses.linear_cross_entropy(hidden, head, probs, impl=impl).backward()
        results.append(probs.grad)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="must not require a gradient on the fused path"):
        losses.linear_cross_entropy(hidden, head, _probs(300, 400).requires_grad_(), impl="chunked")


# ---------------------------------------------------------------------------------------
# A class masked to -inf that the targets give no mass.


def _masked_case():
    logits = _logits(4, 6).clone()
    logits[:, [1, 4]] = -math.inf
    probs = _probs(4, 6).clone()
    probs[:, [1, 4]] = 0.0
    probs /= probs.sum(1, keepdim=True)
    return logits, probs


def _masked_reference(logits, probs, label_smoothing=0.0):
    keep = [0, 2, 3, 5]
    log_q = torch.log_softmax(logits[:, keep], 1)
    return -(probs[:, keep] * log_q).sum(1)


@pytest.mark.parametrize("path", ["kernel", "composite", "double_backward"])
def test_masked_classes_give_the_finite_loss(path):
    logits, probs = _masked_case()
    expected = _masked_reference(logits, probs)
    x = logits.clone().requires_grad_()
    weight = torch.ones(6, dtype=DT, requires_grad=path == "composite")
    loss = losses.cross_entropy(x, probs, weight=weight, reduction="none")
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), x, create_graph=path == "double_backward")
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad[:, [1, 4]]) == 0
    if path == "double_backward":
        (second,) = torch.autograd.grad((grad[:, [0, 2]] ** 2).sum(), x)
        assert torch.isfinite(second).all()


def test_masked_classes_through_the_fused_head():
    """The fused head's logits are finite, so mask by a bias of -inf."""
    hidden, head = _logits(5, 3, seed=10), _logits(6, 3, seed=11)
    bias = torch.zeros(6, dtype=DT)
    bias[[1, 4]] = -math.inf
    probs = _probs(5, 6).clone()
    probs[:, [1, 4]] = 0.0
    probs /= probs.sum(1, keepdim=True)
    expected = _masked_reference(hidden @ head.T + bias, probs)
    for impl in ("reference", "chunked"):
        loss = losses.linear_cross_entropy(
            hidden, head, probs, bias=bias, reduction="none", impl=impl
        )
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_a_nan_logit_still_gives_nan():
    logits, probs = _masked_case()
    logits[2, 1] = math.nan  # at a class of no target mass
    loss = losses.cross_entropy(logits, probs, reduction="none")
    assert torch.isnan(loss[2])
    assert torch.isfinite(loss[[0, 1, 3]]).all()


def test_masked_classes_through_the_triton_kernel(monkeypatch):
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    from crossentropy.losses import _kernel

    monkeypatch.setattr(_kernel, "TRITON", "always")
    logits, probs = _masked_case()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss = losses.cross_entropy(logits.to(device), probs.to(device), reduction="none")
    expected = _masked_reference(logits, probs)
    torch.testing.assert_close(loss.cpu(), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------
# Fake tensors (FakeTensorMode) and torch.export.


@pytest.mark.parametrize("validate", [True, False])
def test_fake_tensors_give_shapes(validate):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.randn(4, 5, requires_grad=True)
        index = torch.randint(0, 5, (4,))
        probs = torch.softmax(torch.randn(4, 5), 1)
        loss = losses.cross_entropy(logits, index, validate=validate)
        loss.backward()
        assert loss.shape == ()
        assert logits.grad.shape == (4, 5)
        assert losses.cross_entropy(logits, probs, reduction="none", validate=validate).shape == (
            4,
        )
        hidden, head = torch.randn(4, 3), torch.randn(5, 3)
        fused = losses.linear_cross_entropy(hidden, head, index, impl="chunked", validate=validate)
        assert fused.shape == ()


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(_logits(7, 3, seed=12).float())

    def forward(self, hidden, targets):
        logits = hidden @ self.weight.T
        return (
            losses.cross_entropy(logits, targets, label_smoothing=0.1, z_loss=1e-3),
            losses.linear_cross_entropy(hidden, self.weight, targets, softcap=5.0),
        )


def test_torch_export_computes_what_eager_does():
    model = _Head()
    example = (torch.randn(4, 3), torch.randint(0, 7, (4,)))
    program = torch.export.export(model, example)
    hidden = _logits(4, 3, seed=13).float()  # the example's shape: export specialises it
    targets = torch.tensor([0, 6, 5, -100])
    for exported, eager in zip(
        program.module()(hidden, targets), model(hidden, targets), strict=True
    ):
        torch.testing.assert_close(exported, eager.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("look", [True, False])
def test_target_dot_both_ways(look):
    """The masked dot of the row kernel, as on the CPU (look at the plain product first) and
    as on a GPU (always masked, no synchronisation): the same numbers, 0 * -inf = 0."""
    from crossentropy.losses._kernel import target_dot

    logits, probs = _masked_case()
    logits[3, 0] = math.nan  # a NaN logit where the target has mass stays NaN
    out = torch.empty(4, dtype=DT)
    target_dot(probs, logits, out, look=look)
    keep = [0, 2, 3, 5]
    expected = (probs[:, keep] * logits[:, keep]).sum(1)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0, equal_nan=True)
    assert torch.isnan(out[3])


def test_a_0d_tensor_label_smoothing_is_taken_as_torch_takes_it():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (6,), generator=g)
    smoothing = torch.tensor(0.2)
    want = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    torch.testing.assert_close(
        losses.cross_entropy(logits, targets, label_smoothing=smoothing), want
    )
    module = losses.CrossEntropyLoss(label_smoothing=smoothing)
    assert module.label_smoothing == float(smoothing)  # as torch reads it: float32 0.2
    assert isinstance(module.label_smoothing, float)
    torch.testing.assert_close(module(logits, targets), want)
    # torch refuses a 1-element 1-D tensor there; so do we, naming the argument.
    with pytest.raises(TypeError, match="`label_smoothing` must be a real number; got Tensor"):
        losses.cross_entropy(logits, targets, label_smoothing=torch.tensor([0.2]))
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0, 1\]; got 1.5"):
        losses.cross_entropy(logits, targets, label_smoothing=torch.tensor(1.5))
