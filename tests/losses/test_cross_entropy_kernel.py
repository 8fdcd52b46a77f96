"""The per-row kernel `losses._kernel.cross_entropy_rows` that every loss builds on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossentropy.losses._kernel import accumulation_dtype, cross_entropy_rows, default_slice_rows
from tests.losses.reference_losses import reference_cross_entropy, reference_entropy

TOL = 1e-10
OPTION_SETS = [
    {},
    {"label_smoothing": 0.25, "weight": "w"},
    {"z_loss": 1e-2, "softcap": 3.0, "base": 2.0},
    {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0, "weight": "w", "base": 10.0},
]


def _case(n, v, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=gen, dtype=torch.float64) * 4
    if kind == "index":
        targets = torch.randint(0, v, (n,), generator=gen)
    else:
        targets = torch.softmax(torch.randn(n, v, generator=gen, dtype=torch.float64), 1)
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.1
    return logits, targets, weight


def _rows_on_a_copy(logits, targets, scale, in_place, slice_rows, options):
    """The kernel, with the entropy, on a copy of ``logits`` (its gradient written over the
    copy when ``in_place``): the terms and the copy."""
    work = logits.clone()
    terms = cross_entropy_rows(
        work,
        targets,
        grad_scale=scale,
        out=work if in_place else None,
        with_entropy=True,
        slice_rows=slice_rows,
        **options,
    )
    return terms, work


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("slice_rows", [1, 3, None])
@pytest.mark.parametrize("in_place", [False, True])
def test_rows_match_reference(options, kind, slice_rows, in_place):
    n, v = 7, 13
    logits, targets, weight = _case(n, v, kind, 1)
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = weight
    scale = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)  # per-row factors
    terms, work = _rows_on_a_copy(logits, targets, scale, in_place, slice_rows, options)
    ref_options = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in options.items()}
    ref_loss, ref_grad_rows = reference_cross_entropy(
        logits.numpy(), targets.numpy(), reduction="none", **ref_options
    )
    np.testing.assert_allclose(terms.loss.numpy(), ref_loss, rtol=0, atol=TOL)
    np.testing.assert_allclose(
        terms.grad.numpy(), ref_grad_rows * scale.numpy()[:, None], rtol=0, atol=TOL
    )
    if in_place:
        assert terms.grad.data_ptr() == work.data_ptr()
    softcap = options.get("softcap")
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    torch.testing.assert_close(terms.logsumexp, torch.logsumexp(z, 1), rtol=0, atol=TOL)
    entropy = reference_entropy(logits.numpy(), softcap=softcap, base=options.get("base", math.e))
    np.testing.assert_allclose(terms.entropy.numpy(), entropy, rtol=0, atol=TOL)


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("slice_rows", [3, None])
def test_a_number_as_grad_scale_is_that_factor_on_every_row(options, kind, slice_rows):
    # A Python number takes a path of its own (no per-row vectors): it must give what the
    # same factor given per row gives, and scale the gradient by it.
    logits, targets, weight = _case(7, 13, kind, 4)
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = weight
    by_number = cross_entropy_rows(
        logits, targets, grad_scale=-0.75, slice_rows=slice_rows, **options
    )
    per_row = cross_entropy_rows(
        logits,
        targets,
        grad_scale=torch.full((7,), -0.75, dtype=torch.float64),
        slice_rows=slice_rows,
        **options,
    )
    unit = cross_entropy_rows(logits, targets, grad_scale=1.0, slice_rows=slice_rows, **options)
    torch.testing.assert_close(by_number.loss, per_row.loss, rtol=0, atol=TOL)
    torch.testing.assert_close(by_number.grad, per_row.grad, rtol=0, atol=TOL)
    torch.testing.assert_close(by_number.grad, -0.75 * unit.grad, rtol=0, atol=TOL)
    ref_options = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in options.items()}
    _, ref_grad = reference_cross_entropy(
        logits.numpy(), targets.numpy(), reduction="none", **ref_options
    )
    np.testing.assert_allclose(unit.grad.numpy(), ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_place", [False, True])
def test_low_precision_rows_and_in_place_gradient(dtype, in_place):
    logits, targets, _ = _case(9, 300, "index", 2)
    low = logits.to(dtype)
    work = low.clone()
    terms = cross_entropy_rows(
        work, targets, grad_scale=1.0, out=work if in_place else None, slice_rows=4
    )
    assert terms.loss.dtype == accumulation_dtype(dtype) == torch.float32
    assert terms.grad.dtype == dtype
    ref_loss, ref_grad = reference_cross_entropy(
        low.double().numpy(), targets.numpy(), reduction="none"
    )
    np.testing.assert_allclose(terms.loss.numpy(), ref_loss, rtol=1e-6, atol=1e-6)
    # float32 arithmetic (a few ulps), then one rounding to `dtype`
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(
        terms.grad.double().numpy(), ref_grad, rtol=4 * eps, atol=4 * eps / 64
    )


def test_no_gradient_unless_asked_and_shape_errors():
    logits, targets, _ = _case(4, 5, "index", 3)
    terms = cross_entropy_rows(logits, targets)
    assert terms.grad is None
    assert terms.entropy is None
    with pytest.raises(ValueError, match=r"`logits` must be 2-D"):
        cross_entropy_rows(logits[0], targets)
    with pytest.raises(ValueError, match=r"`targets` must have shape \(4,\)"):
        cross_entropy_rows(logits, targets[:3])
    with pytest.raises(ValueError, match=r"`grad_scale` must be a scalar or have shape \(4,\)"):
        cross_entropy_rows(logits, targets, grad_scale=torch.ones(3))
    with pytest.raises(ValueError, match=r"`out` must have the logits' shape"):
        cross_entropy_rows(logits, targets, grad_scale=1.0, out=torch.empty(4, 5))


def test_default_slice_rows():
    assert default_slice_rows(128256) >= torch.get_num_threads()
    assert default_slice_rows(10) * 10 <= 1 << 20
    assert default_slice_rows(1000, "meta") * 1000 <= 1 << 26


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("slice_rows", [1, None])
@pytest.mark.parametrize("scale_kind", ["per position", "number"])
@pytest.mark.parametrize("in_place", [False, True])
def test_rows_with_inner_positions_equal_the_flattened_rows(
    options, kind, slice_rows, scale_kind, in_place
):
    # Logits (n, V, S), the classes along dimension 1 (an image's (N, C, H * W) view), give
    # per position what the rows (n * S, V) of the channels-last copy give.
    n, v, s = 3, 13, 5
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(n, v, s, generator=gen, dtype=torch.float64) * 4
    if kind == "index":
        targets = torch.randint(0, v, (n, s), generator=gen)
        flat_targets = targets.reshape(-1)
    else:
        targets = torch.softmax(torch.randn(n, v, s, generator=gen, dtype=torch.float64), 1)
        flat_targets = targets.movedim(1, -1).reshape(-1, v)
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.1
    options = {k: (weight if x == "w" else x) for k, x in options.items()}
    scale = torch.linspace(-1.0, 2.0, n * s, dtype=torch.float64)
    if scale_kind == "number":
        scale, flat_scale = -0.75, -0.75
    else:
        flat_scale, scale = scale, scale.reshape(n, s)
    terms, work = _rows_on_a_copy(logits, targets, scale, in_place, slice_rows, options)
    flat = cross_entropy_rows(
        logits.movedim(1, -1).reshape(-1, v),
        flat_targets,
        grad_scale=flat_scale,
        with_entropy=True,
        **options,
    )
    for field in ("loss", "logsumexp", "entropy"):
        got = getattr(terms, field)
        assert got.shape == (n, s)
        torch.testing.assert_close(got.reshape(-1), getattr(flat, field), rtol=0, atol=TOL)
    assert terms.grad.shape == (n, v, s)
    expected_grad = flat.grad.reshape(n, s, v).movedim(-1, 1)
    torch.testing.assert_close(terms.grad, expected_grad, rtol=0, atol=TOL)
    if in_place:
        assert terms.grad.data_ptr() == work.data_ptr()
