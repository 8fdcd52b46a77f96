"""Gradients of gradients: gradient penalties, Hessian-vector products, meta-learning.

Every loss forms its first-order gradient directly; with ``create_graph=True`` it must
instead return a gradient autograd can differentiate again. Oracles: torch's own
``F.cross_entropy`` (double-differentiable) for the options torch has, the same composed
with soft-capping, z-loss and base (``composed_torch_loss``) for ours, and
``torch.autograd.gradgradcheck`` (finite differences of the gradient) in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradgradcheck

from crossentropy.losses import (
    cross_entropy,
    cross_entropy_stats,
    linear_cross_entropy,
)
from crossentropy.losses._composite import composite_rows
from crossentropy.losses._kernel import cross_entropy_rows
from tests.losses.reference_losses import composed_torch_loss

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _penalised_grads(loss_fn, params):
    """Gradients of ``loss + sum_p ||d loss / d p||^2`` (a gradient penalty) for ``params``."""
    for p in params:
        p.grad = None
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    (loss + sum(g.square().sum() for g in grads)).backward()
    return [p.grad.clone() for p in params]


def _hvp(loss_fn, inputs, vectors):
    """Hessian-vector products ``H v`` of the scalar ``loss_fn(*inputs)``."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    grads = torch.autograd.grad(loss_fn(*leaves), leaves, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vectors, strict=True))
    return torch.autograd.grad(dot, leaves, allow_unused=True)


# --------------------------------------------------------------------------------------
# cross_entropy against torch, for torch's options


TORCH_CASES = {
    "plain": {},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "weighted": {"weight": "w"},
    "smoothed": {"label_smoothing": 0.2},
    "ignored": {"ignore_index": 1},
    "everything": {"weight": "w", "label_smoothing": 0.1, "ignore_index": 2},
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
@pytest.mark.parametrize("layout", ["tokens", "spatial", "single"])
def test_gradient_penalty_through_a_linear_layer_matches_torch(name, layout):
    """A gradient penalty on a linear model's parameters trains the same as with torch:
    the parameters' gradients of loss + ||grad||^2 agree to 1e-10 (float64)."""
    torch.manual_seed(3)
    classes, features = 5, 4
    options = dict(TORCH_CASES[name])
    if options.get("weight") == "w":
        options["weight"] = torch.rand(classes, dtype=F64) + 0.5
    model = torch.nn.Linear(features, classes, dtype=F64)
    if layout == "tokens":
        x = torch.randn(9, features, dtype=F64)
        targets = torch.randint(0, classes, (9,))

        def logits_of(inp):
            return model(inp)

    elif layout == "spatial":  # (N, C, d): the class dimension in the middle
        x = torch.randn(3, 4, features, dtype=F64)
        targets = torch.randint(0, classes, (3, 4))

        def logits_of(inp):
            return model(inp).movedim(-1, 1)

    else:  # one token, logits of shape (C)
        x = torch.randn(features, dtype=F64)
        targets = torch.tensor(3)

        def logits_of(inp):
            return model(inp)

    params = list(model.parameters())

    def run(loss):
        def fn():
            value = loss(logits_of(x), targets, **options)
            return value.sum() if options.get("reduction") == "none" else value

        return _penalised_grads(fn, params)

    ours = run(cross_entropy)
    theirs = run(F.cross_entropy)
    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


def test_gradient_penalty_with_probability_targets_matches_torch():
    """Soft targets, weighted and smoothed: penalty gradients with respect to the logits and
    to the targets themselves equal torch's."""
    torch.manual_seed(4)
    logits = torch.randn(6, 5, dtype=F64)
    targets = torch.softmax(torch.randn(6, 5, dtype=F64), 1)
    weight = torch.rand(5, dtype=F64) + 0.5
    results = []
    for loss in (cross_entropy, F.cross_entropy):
        z = logits.clone().requires_grad_(True)
        t = targets.clone().requires_grad_(True)
        grads = _penalised_grads(
            lambda loss=loss, z=z, t=t: loss(z, t, weight=weight, label_smoothing=0.15), [z, t]
        )
        results.append(grads)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


def test_the_first_order_gradient_is_the_same_with_create_graph():
    """create_graph=True changes how the gradient is formed, not its value."""
    torch.manual_seed(5)
    logits = torch.randn(7, 6, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 6, (7,))
    options = {"z_loss": 0.1, "softcap": 3.0, "label_smoothing": 0.1, "base": 2}
    (plain,) = torch.autograd.grad(cross_entropy(logits, targets, **options), logits)
    (graph,) = torch.autograd.grad(
        cross_entropy(logits, targets, **options), logits, create_graph=True
    )
    assert graph.requires_grad
    assert not plain.requires_grad
    torch.testing.assert_close(graph, plain, **TIGHT)


# --------------------------------------------------------------------------------------
# The extras (z-loss, soft-capping, base) against torch composed with them


EXTRA_CASES = {
    "z_loss": {"z_loss": 0.1},
    "softcap": {"softcap": 2.5},
    "bits": {"base": 2.0},
    "everything": {
        "z_loss": 0.05,
        "softcap": 3.0,
        "base": 2.0,
        "label_smoothing": 0.1,
        "weight": "w",
        "ignore_index": 0,
    },
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(EXTRA_CASES))
def test_hessian_vector_products_match_the_composed_reference(name, reduction):
    """H v of the loss with respect to the logits equals that of torch's loss composed
    with the extras (soft-cap, z-loss, base), float64 to 1e-10."""
    torch.manual_seed(6)
    options = dict(EXTRA_CASES[name], reduction=reduction)
    if options.get("weight") == "w":
        options["weight"] = torch.rand(7, dtype=F64) + 0.5
    logits = 2 * torch.randn(8, 7, dtype=F64)
    targets = torch.randint(0, 7, (8,))
    vector = torch.randn(8, 7, dtype=F64)

    def scalar(loss):
        return lambda z: loss(z, targets, **options).sum()

    (ours,) = _hvp(scalar(cross_entropy), [logits], [vector])
    (theirs,) = _hvp(scalar(composed_torch_loss), [logits], [vector])
    torch.testing.assert_close(ours, theirs, **TIGHT)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets_kind", ["indices", "probabilities"])
def test_gradgradcheck_cross_entropy(reduction, targets_kind):
    """Finite differences of the gradient agree with the second derivative, every option
    on, class dimension in the middle, with respect to logits and soft targets."""
    torch.manual_seed(8)
    weight = torch.rand(5, dtype=F64) + 0.5
    logits = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    options = {
        "reduction": reduction,
        "weight": weight,
        "label_smoothing": 0.2,
        "z_loss": 0.1,
        "softcap": 2.0,
        "base": 2.0,
        "validate": False,  # finite differences leave the probability simplex
    }
    if targets_kind == "indices":
        targets = torch.randint(0, 5, (2, 3))
        targets[0, 1] = -100
        assert gradgradcheck(lambda z: cross_entropy(z, targets, **options), (logits,))
    else:
        soft = torch.softmax(torch.randn(2, 5, 3, dtype=F64), 1).requires_grad_(True)
        assert gradgradcheck(lambda z, t: cross_entropy(z, t, **options), (logits, soft))


@pytest.mark.parametrize("targets_kind", ["indices", "probabilities"])
def test_gradgradcheck_cross_entropy_stats(targets_kind):
    """All three statistics (loss, log-sum-exp, entropy) are twice differentiable."""
    torch.manual_seed(9)
    logits = torch.randn(4, 6, dtype=F64, requires_grad=True)
    options = {"label_smoothing": 0.1, "z_loss": 0.1, "softcap": 3.0, "base": 2.0}
    if targets_kind == "indices":
        targets = torch.tensor([0, 5, -100, 2])
        assert gradgradcheck(lambda z: tuple(cross_entropy_stats(z, targets, **options)), (logits,))
    else:
        soft = torch.softmax(torch.randn(4, 6, dtype=F64), 1).requires_grad_(True)
        assert gradgradcheck(
            lambda z, t: tuple(cross_entropy_stats(z, t, validate=False, **options)),
            (logits, soft),
        )


def test_entropy_hessian_matches_the_formula():
    """H v of the prediction entropy, against -sum p log p written with torch ops."""
    torch.manual_seed(10)
    logits = torch.randn(5, 4, dtype=F64)
    vector = torch.randn(5, 4, dtype=F64)
    targets = torch.zeros(5, dtype=torch.long)

    def ours(z):
        return cross_entropy_stats(z, targets).entropy.sum()

    def formula(z):
        log_p = torch.log_softmax(z, 1)
        return -(log_p.exp() * log_p).sum()

    torch.testing.assert_close(_hvp(ours, [logits], [vector]), _hvp(formula, [logits], [vector]))


def test_half_precision_second_order_keeps_the_dtype():
    """bfloat16 logits: the graph-built gradient is bfloat16 and its Hessian-vector product
    is within bfloat16 rounding of the float64 one on the same inputs."""
    torch.manual_seed(11)
    logits = torch.randn(6, 9).to(torch.bfloat16)
    targets = torch.randint(0, 9, (6,))
    vector = torch.randn(6, 9).to(torch.bfloat16)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy(z, targets), z, create_graph=True)
    assert grad.dtype == torch.bfloat16
    (hv,) = torch.autograd.grad((grad * vector).sum(), z)
    (expected,) = _hvp(lambda x: cross_entropy(x, targets), [logits.double()], [vector.double()])
    torch.testing.assert_close(hv.double(), expected, rtol=2**-6, atol=2**-8)


# --------------------------------------------------------------------------------------
# The fused head


LINEAR_CASES = {
    "plain": {},
    "everything": {
        "label_smoothing": 0.1,
        "z_loss": 0.05,
        "softcap": 4.0,
        "base": 2.0,
        "class_weight": "w",
    },
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(LINEAR_CASES))
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_head_hessian_vector_products_match_the_unfused_loss(reduction, name, with_bias):
    """H v with respect to hidden, weight and bias of the chunked head (chunks that do not
    divide N, an ignored token) equals that of F.linear composed with the reference loss."""
    torch.manual_seed(12)
    n, d, v = 7, 5, 13
    options = dict(LINEAR_CASES[name], reduction=reduction)
    if options.get("class_weight") == "w":
        options["class_weight"] = torch.rand(v, dtype=F64) + 0.5
    inputs = [torch.randn(n, d, dtype=F64), torch.randn(v, d, dtype=F64)]
    if with_bias:
        inputs.append(torch.randn(v, dtype=F64))
    vectors = [torch.randn_like(x) for x in inputs]
    targets = torch.randint(0, v, (n,))
    targets[3] = -100

    def fused(h, w, b=None):
        loss = linear_cross_entropy(h, w, targets, bias=b, impl="chunked", chunk_size=3, **options)
        return loss.sum()

    def unfused(h, w, b=None):
        reference = dict(options)
        if "class_weight" in reference:
            reference["weight"] = reference.pop("class_weight")
        return composed_torch_loss(F.linear(h, w, b), targets, **reference).sum()

    for got, want in zip(_hvp(fused, inputs, vectors), _hvp(unfused, inputs, vectors), strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradgradcheck_fused_head(reduction):
    torch.manual_seed(13)
    hidden = torch.randn(5, 3, dtype=F64, requires_grad=True)
    weight = torch.randn(4, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(4, dtype=F64, requires_grad=True)
    targets = torch.tensor([0, 3, -100, 1, 2])

    def fn(h, w, b):
        return linear_cross_entropy(
            h, w, targets, bias=b, reduction=reduction, z_loss=0.1, impl="chunked", chunk_size=2
        )

    assert gradgradcheck(fn, (hidden, weight, bias))


def test_fused_head_all_ignored_batch_has_zero_second_derivative():
    """An all-ignored batch: loss 0, gradient 0, and a zero (not NaN) second derivative."""
    hidden = torch.randn(4, 3, dtype=F64, requires_grad=True)
    weight = torch.randn(6, 3, dtype=F64, requires_grad=True)
    targets = torch.full((4,), -100)
    loss = linear_cross_entropy(hidden, weight, targets, impl="chunked")
    grads = torch.autograd.grad(loss, [hidden, weight], create_graph=True)
    second = torch.autograd.grad(sum(g.sum() for g in grads), [hidden, weight], allow_unused=True)
    for g in (*grads, *second):
        assert g is None or (torch.isfinite(g).all() and not g.any())


def test_fused_head_penalty_trains_like_the_unfused_head():
    """A gradient penalty on the head's weight through the fused path gives the weight the
    same gradient as through F.linear + F.cross_entropy, in float32 as well."""
    torch.manual_seed(14)
    hidden = torch.randn(12, 8)
    targets = torch.randint(0, 40, (12,))
    start = 0.3 * torch.randn(40, 8)
    results = []
    for fused in (True, False):
        weight = start.clone().requires_grad_(True)

        def loss_fn(weight=weight, fused=fused):
            if fused:
                return linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=5)
            return F.cross_entropy(F.linear(hidden, weight), targets)

        results.append(_penalised_grads(loss_fn, [weight])[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# The composite formulas equal the kernel's


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    classes=st.integers(1, 9),
    smoothing=st.sampled_from([0.0, 0.3]),
    z_loss=st.sampled_from([0.0, 0.2]),
    softcap=st.sampled_from([None, 1.5]),
    base=st.sampled_from([math.e, 2.0, 10.0]),
    weighted=st.booleans(),
    soft=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_composite_rows_equal_the_kernel(
    rows, classes, smoothing, z_loss, softcap, base, weighted, soft, seed
):
    """The graph formulas and the kernel give the same loss, log-sum-exp and entropy."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, classes, dtype=F64, generator=gen)
    if soft:
        targets = torch.softmax(torch.randn(rows, classes, dtype=F64, generator=gen), 1)
    else:
        targets = torch.randint(0, classes, (rows,), generator=gen)
    weight = torch.rand(classes, dtype=F64, generator=gen) + 0.1 if weighted else None
    options = {
        "weight": weight,
        "label_smoothing": smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
        "base": base,
        "with_entropy": True,
    }
    kernel = cross_entropy_rows(logits, targets, **options)
    graph = composite_rows(logits, targets, **options)
    torch.testing.assert_close(graph.loss, kernel.loss, **TIGHT)
    torch.testing.assert_close(graph.logsumexp, kernel.logsumexp, **TIGHT)
    torch.testing.assert_close(graph.entropy, kernel.entropy, **TIGHT)


def test_in_place_changes_after_the_loss():
    """Changing the logits in place after the loss leaves the first-order gradient working
    (as with torch, whose softmax backward does not read the logits), while a gradient
    built for differentiation refuses with a clear error rather than using new values."""
    torch.manual_seed(15)
    base = torch.randn(4, 5, dtype=F64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3])
    for loss_fn in (cross_entropy, F.cross_entropy):
        logits = base * 1.0
        loss = loss_fn(logits, targets)
        with torch.no_grad():
            logits.mul_(2.0)
        (grad,) = torch.autograd.grad(loss, base)
        (expected,) = torch.autograd.grad(F.cross_entropy(base * 1.0, targets), base)
        torch.testing.assert_close(grad, expected, **TIGHT)
    logits = base * 1.0
    loss = cross_entropy(logits, targets)
    with torch.no_grad():
        logits.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(loss, base, create_graph=True)


def test_masked_logits_second_order_matches_torch():
    """Logits of -inf (masked classes, never the target): the gradient penalty's gradient
    equals torch's and is finite."""
    logits = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(16))
    logits[0, 3] = -math.inf
    logits[2, 1] = -math.inf
    targets = torch.tensor([0, 1, 2, 5])
    results = []
    for loss in (cross_entropy, F.cross_entropy):
        z = logits.clone().requires_grad_(True)
        results.append(_penalised_grads(lambda loss=loss, z=z: loss(z, targets), [z])[0])
    assert torch.isfinite(results[0]).all()
    torch.testing.assert_close(results[0], results[1], **TIGHT)


def test_logits_are_not_kept_alive_by_the_loss_after_backward():
    """The reference kept for a second-order pass holds the logits until backward and is
    dropped by a backward pass that does not retain the graph: a loss kept for logging
    does not hold its logits, as with torch; with retain_graph=True they stay for a later
    create_graph pass."""
    import gc
    import weakref

    layer = torch.nn.Linear(4, 6)
    targets = torch.tensor([0, 1, 2])
    for retain in (False, True):
        logits = layer(torch.randn(3, 4))
        alive = weakref.ref(logits)
        loss = cross_entropy(logits, targets)
        del logits
        gc.collect()
        assert alive() is not None  # kept until backward, as the docstring says
        loss.backward(retain_graph=retain)
        gc.collect()
        assert (alive() is not None) == retain
    (grad,) = torch.autograd.grad(loss, layer.weight, create_graph=True)
    assert grad.requires_grad
    loss = cross_entropy(layer(torch.randn(3, 4)), targets)
    loss.backward(retain_graph=True)
    loss.backward()  # releases the reference
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        torch.autograd.grad(loss, layer.weight, create_graph=True)
