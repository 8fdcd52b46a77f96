"""Parity of `losses.cross_entropy` with torch's F.cross_entropy and the float64 reference.

A seeded grid over every option torch has (target kind and shape, reduction, class weights,
ignore_index, label smoothing), forward values and gradients, float64 to 1e-10; then the
options torch lacks (z-loss, soft-capping, base) against the loop reference and gradcheck.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossentropy.losses import CrossEntropyLoss, cross_entropy
from tests.losses.reference_losses import reference_cross_entropy

TOL = 1e-10
C = 7
# logits shapes: (C), (N, C), (N, C, d1, d2)
SHAPES = [(C,), (5, C), (3, C, 2, 3)]


def _token_shape(shape):
    return () if len(shape) == 1 else (shape[0], *shape[2:])


def _make_inputs(shape, kind, ignore_index, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    if kind == "index":
        targets = torch.randint(0, C, _token_shape(shape), generator=gen)
        if targets.dim() > 0:  # ignore about a third of the tokens (not all)
            flat = targets.view(-1)
            flat[1::3] = ignore_index
    else:
        class_dim = 0 if len(shape) == 1 else 1
        targets = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), class_dim)
    return logits, targets


def _weight(seed):
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(C, generator=gen, dtype=torch.float64) + 0.1


INDEX_GRID = list(
    itertools.product(SHAPES, ["mean", "sum", "none"], [False, True], [-100, 2], [0.0, 0.3])
)
PROBS_GRID = list(itertools.product(SHAPES, ["mean", "sum", "none"], [False, True], [0.0, 0.3]))


def _grads(fn, logits, targets, probs_grad):
    x = logits.clone().requires_grad_()
    t = targets.clone().requires_grad_() if probs_grad else targets
    loss = fn(x, t)
    # A fixed, non-trivial upstream gradient so that backward's scaling is exercised.
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (loss * upstream).sum().backward()
    return loss.detach(), x.grad, (t.grad if probs_grad else None)


@pytest.mark.parametrize(
    ("shape", "reduction", "weighted", "ignore_index", "smoothing"), INDEX_GRID
)
def test_parity_index_targets(shape, reduction, weighted, ignore_index, smoothing):
    seed = INDEX_GRID.index((shape, reduction, weighted, ignore_index, smoothing))
    logits, targets = _make_inputs(shape, "index", ignore_index, seed)
    weight = _weight(seed) if weighted else None
    options = {
        "weight": weight,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": smoothing,
    }
    ours = _grads(lambda x, t: cross_entropy(x, t, **options), logits, targets, False)
    theirs = _grads(lambda x, t: F.cross_entropy(x, t, **options), logits, targets, False)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=TOL)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=TOL)
    # The loop reference agrees too (gradient of the plain sum of the loss).
    ref_loss, ref_grad = reference_cross_entropy(
        logits.numpy(),
        targets.numpy(),
        weight=None if weight is None else weight.numpy(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(ours[0].numpy(), ref_loss, rtol=0, atol=TOL)
    x = logits.clone().requires_grad_()
    cross_entropy(x, targets, **options).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("ignore_index", "validate"), [(-100, True), (C + 3, False), (0, True)])
def test_parity_when_no_token_is_ignored(shape, reduction, weighted, ignore_index, validate):
    # Every target is a class and none is ignore_index: the loss reads this from the
    # targets' range (a per-batch factor instead of per-token ones) where it can; with
    # ignore_index=0 inside that range it cannot, and takes the per-token path.
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(1, C, _token_shape(shape), generator=gen)
    targets.view(-1)[:2] = torch.tensor([1, C - 1])  # the range spans ignore_index=0's side
    options = {
        "weight": _weight(4) if weighted else None,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": 0.1,
    }
    ours = _grads(
        lambda x, t: cross_entropy(x, t, validate=validate, **options), logits, targets, False
    )
    theirs = _grads(lambda x, t: F.cross_entropy(x, t, **options), logits, targets, False)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=TOL)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=TOL)


@pytest.mark.parametrize(
    ("targets", "ignore_index", "facts"),
    [
        ([0, 3, 4], -100, (True, True, True)),  # told by the range
        ([0, 3, 4], 7, (True, True, True)),
        ([0, 1, 4], 2, (True, False, True)),  # the range cannot rule 2 out: the per-token path
        ([0, -100, 4], -100, (True, False, True)),  # told element-wise
        ([0, 2, 4], 2, (True, False, True)),
        ([2, 2], 2, (True, False, False)),  # in range, and every token ignored
        ([-100, -100], -100, (True, False, False)),
        ([0, 5, 4], -100, (False, True, True)),
        ([-1, 3], -100, (False, True, True)),
        ([5, -100], -100, (False, False, True)),
        ([], -100, (True, True, False)),
    ],
)
def test_index_facts(targets, ignore_index, facts):
    from crossentropy.losses._cross_entropy import _index_facts

    got = _index_facts(torch.tensor(targets, dtype=torch.long), 5, ignore_index)
    assert got == facts


@pytest.mark.parametrize(("shape", "reduction", "weighted", "smoothing"), PROBS_GRID)
def test_parity_probability_targets(shape, reduction, weighted, smoothing):
    seed = 500 + PROBS_GRID.index((shape, reduction, weighted, smoothing))
    logits, targets = _make_inputs(shape, "probs", -100, seed)
    weight = _weight(seed) if weighted else None
    options = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}
    ours = _grads(lambda x, t: cross_entropy(x, t, **options), logits, targets, True)
    theirs = _grads(lambda x, t: F.cross_entropy(x, t, **options), logits, targets, True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    ref_loss, _ = reference_cross_entropy(
        logits.numpy(),
        targets.numpy(),
        weight=None if weight is None else weight.numpy(),
        reduction=reduction,
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(ours[0].numpy(), ref_loss, rtol=0, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_matches_function_and_torch_module(reduction):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, C, 4, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, C, (6, 4), generator=gen)
    weight = _weight(3)
    ours = CrossEntropyLoss(weight, reduction=reduction, label_smoothing=0.2, ignore_index=1)
    theirs = torch.nn.CrossEntropyLoss(
        weight, reduction=reduction, label_smoothing=0.2, ignore_index=1
    )
    torch.testing.assert_close(ours(logits, targets), theirs(logits, targets), rtol=0, atol=TOL)
    assert "label_smoothing=0.2" in repr(ours)
    assert "weight" in dict(ours.named_buffers())


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_module_passes_z_loss_softcap_and_base_to_the_loss(reduction):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, C, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, C, (6,), generator=gen)
    targets[2] = -100
    options = {"z_loss": 0.05, "softcap": 2.5, "base": 2}
    module = CrossEntropyLoss(reduction=reduction, **options)
    ref_loss, _ = reference_cross_entropy(
        logits.numpy(), targets.numpy(), reduction=reduction, **options
    )
    np.testing.assert_allclose(module(logits, targets).numpy(), ref_loss, rtol=0, atol=TOL)
    assert "base=2" in repr(module)
    assert "softcap=2.5" in repr(module)


def test_uint8_targets_accepted_like_torch():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, C, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 3, 6, 2], dtype=torch.uint8)
    torch.testing.assert_close(
        cross_entropy(logits, targets), F.cross_entropy(logits, targets), rtol=0, atol=TOL
    )


# ---------------------------------------------------------------------------------------
# The options torch does not have: z-loss, soft-capping, base.

EXTRA_GRID = list(
    itertools.product(
        ["index", "probs"],
        ["mean", "sum", "none"],
        [0.0, 1e-2],  # z_loss
        [None, 2.5],  # softcap
        [math.e, 2.0],  # base
    )
)


@pytest.mark.parametrize(("kind", "reduction", "z_loss", "softcap", "base"), EXTRA_GRID)
def test_extras_against_reference(kind, reduction, z_loss, softcap, base):
    seed = 900 + EXTRA_GRID.index((kind, reduction, z_loss, softcap, base))
    logits, targets = _make_inputs((4, C, 3), kind, -100, seed)
    weight = _weight(seed)
    options = {
        "weight": weight,
        "reduction": reduction,
        "label_smoothing": 0.1,
        "z_loss": z_loss,
        "softcap": softcap,
        "base": base,
    }
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, **options)
    loss.sum().backward()
    ref_loss, ref_grad = reference_cross_entropy(
        logits.numpy(), targets.numpy(), **{**options, "weight": weight.numpy()}
    )
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=0, atol=TOL)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "options",
    [
        {"z_loss": 0.05},
        {"softcap": 1.5},
        {"label_smoothing": 0.3, "weight": "w"},
        {"z_loss": 0.05, "softcap": 1.5, "label_smoothing": 0.2, "weight": "w", "base": 2.0},
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_gradcheck_extras(options, reduction, kind):
    logits, targets = _make_inputs((4, 5), kind, -100, 77)
    if kind == "index":
        targets = targets.clamp(0, 4)
    else:
        targets = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    opts = dict(options, reduction=reduction)
    if opts.get("weight") == "w":
        opts["weight"] = torch.rand(5, dtype=torch.float64) + 0.1
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: cross_entropy(v, targets, **opts), (x,))
    if kind == "probs":
        t = targets.clone().requires_grad_()
        fn = lambda v: cross_entropy(logits, v, **opts, validate=False)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (t,))


def test_retain_graph_second_backward_and_scaled_upstream():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(5, C, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, C, (5,), generator=gen)
    loss = cross_entropy(logits, targets, label_smoothing=0.1)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    (3 * loss).backward()  # upstream 3: accumulates 3x the gradient
    torch.testing.assert_close(logits.grad, 4 * first, rtol=0, atol=TOL)


def test_no_grad_computes_no_gradient(monkeypatch):
    import crossentropy.losses._cross_entropy as module

    calls = []
    kernel = module.cross_entropy_rows

    def recording_kernel(*args, **kwargs):
        calls.append(kwargs.get("grad_scale") is not None)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(module, "cross_entropy_rows", recording_kernel)
    logits = torch.randn(3, C, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2])
    with torch.no_grad():
        value = cross_entropy(logits, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.cross_entropy(logits, targets), rtol=0, atol=TOL)
    cross_entropy(logits, targets)  # with grad mode on, the gradient is computed in forward
    cross_entropy(logits.detach(), targets)  # logits without grad: none
    assert calls == [False, True, False]


@pytest.fixture
def gradient_blocks(monkeypatch):
    """The addresses of the gradient blocks the kernel returns, in call order."""
    import crossentropy.losses._cross_entropy as module

    pointers = []
    kernel = module.cross_entropy_rows

    def recording_kernel(*args, **kwargs):
        terms = kernel(*args, **kwargs)
        pointers.append(terms.grad.data_ptr())
        return terms

    monkeypatch.setattr(module, "cross_entropy_rows", recording_kernel)
    return pointers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 33), (4, 33, 5, 3)])
def test_backward_hands_over_the_forward_gradient_without_copy(gradient_blocks, dtype, shape):
    # The gradient block computed in forward becomes logits.grad as it is: no second block.
    # Spatial logits (N, C, H, W) are worked on in their own layout, so this holds for
    # them too, and their gradient is contiguous like them (not a channels-last view).
    logits = torch.randn(shape, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 33, (shape[0], *shape[2:]))
    cross_entropy(logits, targets).backward()
    assert logits.grad.data_ptr() == gradient_blocks[0]
    assert logits.grad.dtype == dtype
    assert logits.grad.is_contiguous()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, C), (2, C, 3)])
def test_backward_scales_the_forward_gradient_in_place(gradient_blocks, reduction, shape):
    # Whatever the upstream gradient (here not 1), a backward pass that does not keep the
    # graph scales the block computed in forward, without allocating a second one.
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, C, _token_shape(shape), generator=gen)
    targets.view(-1)[0] = -100
    loss = cross_entropy(logits, targets, reduction=reduction)
    upstream = torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5
    (grad,) = torch.autograd.grad((loss * upstream).sum(), logits)
    expected_loss = F.cross_entropy(logits, targets, reduction=reduction)
    (expected,) = torch.autograd.grad((expected_loss * upstream).sum(), logits)
    torch.testing.assert_close(grad, expected, rtol=0, atol=TOL)
    assert grad.untyped_storage().data_ptr() == gradient_blocks[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_the_gradient_is_the_only_block_saved_for_backward(dtype, reduction):
    # As documented: backward keeps one (N, V) block, the gradient formed in forward, in the
    # logits' dtype; not the softmax, not a copy of the logits. Everything else is O(N).
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 50, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (8,), generator=gen)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = cross_entropy(logits, targets, reduction=reduction, label_smoothing=0.1)
    blocks = [t for t in saved if t.numel() >= logits.numel()]
    assert len(blocks) == 1
    assert sum(t.numel() for t in saved) <= logits.numel() + 3 * len(targets)
    (block,) = blocks
    assert block.dtype == dtype
    assert block.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr()
    expected_loss = F.cross_entropy(
        logits.double(), targets, reduction=reduction, label_smoothing=0.1
    )
    (expected,) = torch.autograd.grad(expected_loss.sum(), logits)
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    torch.testing.assert_close(block.double(), expected.double(), rtol=tol, atol=tol / 50)
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        cross_entropy(logits, targets, reduction=reduction)
    assert all(t.numel() < logits.numel() for t in saved)
    loss.sum().backward()


def test_small_integer_targets_do_not_wrap_ignore_index():
    # -100 does not fit uint8: a target of 156 must count, not be taken for ignore_index.
    logits = torch.randn(3, 200, dtype=torch.float64)
    targets = torch.tensor([156, 3, 199], dtype=torch.uint8)
    expected = F.cross_entropy(logits, targets.long())
    torch.testing.assert_close(cross_entropy(logits, targets), expected, rtol=0, atol=TOL)
    torch.testing.assert_close(cross_entropy(logits, targets.int()), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(5, C), (2, C, 3)])
def test_gradient_returned_with_a_kept_graph_may_be_changed_in_place(reduction, shape):
    # torch.autograd.grad(..., retain_graph=True) with an upstream 1 must not hand out the
    # block kept for the next pass: clipping it in place used to break (or change) that pass.
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, C, _token_shape(shape), generator=gen)
    loss = cross_entropy(logits, targets, reduction=reduction)
    expected = torch.autograd.grad(F.cross_entropy(logits, targets, reduction=reduction), logits)[0]
    for _ in range(3):
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        torch.testing.assert_close(grad, expected, rtol=0, atol=TOL)
        grad.mul_(-7.0).add_(1.0)  # the caller owns what it was given
    loss.backward(retain_graph=True)
    logits.grad.mul_(3.0)
    loss.backward()
    torch.testing.assert_close(logits.grad, 4 * expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inference_tensors_outside_inference_mode(reduction):
    # Tensors made under torch.inference_mode() have no version counter; torch's loss takes
    # them outside that mode (evaluation code does), and so must this one.
    with torch.inference_mode():
        logits = torch.randn(4, C, dtype=torch.float64)
        targets = torch.tensor([0, 3, -100, 6])
    expected = F.cross_entropy(logits, targets, reduction=reduction)
    torch.testing.assert_close(
        cross_entropy(logits, targets, reduction=reduction), expected, rtol=0, atol=TOL
    )
    with torch.no_grad():
        value = cross_entropy(logits, targets, reduction=reduction, label_smoothing=0.1)
    expected = F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=0.1)
    torch.testing.assert_close(value, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_meta_tensors_give_torch_shapes(reduction, kind):
    # Meta tensors (shape inference, FLOP counting) have no values to validate; the value
    # checks used to call .item() on them and raise where torch's loss works.
    logits = torch.empty(2, C, 3, device="meta", requires_grad=True)
    if kind == "index":
        targets = torch.empty(2, 3, dtype=torch.long, device="meta")
    else:
        targets = torch.empty(2, C, 3, device="meta")
    weight = torch.empty(C, device="meta")
    loss = cross_entropy(logits, targets, weight=weight, reduction=reduction, label_smoothing=0.1)
    expected = F.cross_entropy(
        logits, targets, weight=weight, reduction=reduction, label_smoothing=0.1
    )
    assert (loss.device.type, loss.shape, loss.dtype) == ("meta", expected.shape, expected.dtype)
    loss.sum().backward()
    assert logits.grad.shape == logits.shape


def _upstream_on_ignored(shape, ignored, value):
    upstream = torch.linspace(0.5, 2.0, math.prod(shape), dtype=torch.float64).reshape(shape)
    upstream[ignored] = value
    return upstream


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2, "weight": "rand"}])
@pytest.mark.parametrize("loss_kind", ["loss", "stats", "linear_reference", "linear_chunked"])
def test_non_finite_upstream_on_ignored_tokens_gives_them_zero_gradient(value, options, loss_kind):
    # torch's per-token loss gives an ignored token a zero gradient whatever its upstream
    # gradient (say inf from dividing by a zero count of tokens); ours multiplied the zero
    # row by it and gave NaN, which a weight gradient then spread everywhere.
    from crossentropy.losses import cross_entropy_stats, linear_cross_entropy

    gen = torch.Generator().manual_seed(12)
    if options.get("weight") == "rand":
        options = {**options, "weight": torch.rand(C, generator=gen, dtype=torch.float64)}
    targets = torch.randint(0, C, (2, 3), generator=gen)
    ignored = targets.new_zeros(targets.shape, dtype=torch.bool)
    ignored[0, 1] = ignored[1, 2] = True
    targets[ignored] = -100
    upstream = _upstream_on_ignored(targets.shape, ignored, value)
    if loss_kind.startswith("linear"):
        hidden = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
        head = torch.randn(C, 5, generator=gen, dtype=torch.float64, requires_grad=True)
        inputs = (hidden, head)
        impl = loss_kind.removeprefix("linear_")
        opts = {**options, "class_weight": options.get("weight")}
        opts.pop("weight", None)
        ours = linear_cross_entropy(hidden, head, targets, reduction="none", impl=impl, **opts)
        logits = F.linear(hidden, head).movedim(-1, 1)
    else:
        logits = torch.randn(2, C, 3, generator=gen, dtype=torch.float64, requires_grad=True)
        inputs = (logits,)
        if loss_kind == "stats":
            ours = cross_entropy_stats(logits, targets, **options).loss
        else:
            ours = cross_entropy(logits, targets, reduction="none", **options)
    expected = F.cross_entropy(logits, targets, reduction="none", **options)
    got = torch.autograd.grad(ours, inputs, upstream, retain_graph=True)
    want = torch.autograd.grad(expected, inputs, upstream)
    for g, w in zip(got, want, strict=True):
        assert bool(torch.isfinite(w).all())  # torch's: finite
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # A counted token's non-finite upstream gradient still reaches its own row, as in torch.
    upstream[0, 0] = math.nan
    (got,) = torch.autograd.grad(ours, inputs[:1], upstream)
    row = got[0, 0] if loss_kind.startswith("linear") else got[0, :, 0]
    assert bool(row.isnan().all())
    assert bool(torch.isfinite(got[1]).all())
