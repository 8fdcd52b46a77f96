"""Every bad input to `losses.cross_entropy` raises with the argument and what was seen."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from crossentropy.losses import CrossEntropyLoss, cross_entropy, cross_entropy_stats
from crossentropy.losses._options import check_options

LOGITS = torch.zeros(3, 4)
TARGETS = torch.tensor([0, 1, 3])
PROBS = torch.full((3, 4), 0.25)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"targets": torch.tensor([0, 4, 1])},
            ValueError,
            r"`targets` must be class indices in \[0, 4\) or ignore_index=-100; got 4",
        ),
        (
            {"targets": torch.tensor([0, -1, 1])},
            ValueError,
            r"`targets` must be class indices .*; got -1",
        ),
        ({"targets": torch.tensor([0, 5, 1]), "ignore_index": 5}, None, None),
        (
            {"targets": PROBS * 2},
            ValueError,
            r"`targets` must be class probabilities that sum to 1 .*got a sum of 2",
        ),
        (
            {"targets": PROBS - 0.5},
            ValueError,
            r"`targets` must be class probabilities, finite and >= 0; got -0.25",
        ),
        ({"targets": torch.full((3, 4), float("nan"))}, ValueError, r"finite and >= 0; got nan"),
        (
            {"targets": torch.tensor([0, 1])},
            ValueError,
            r"`targets` must have shape \(3,\) for class indices.*got shape \(2,\)",
        ),
        (
            {"targets": torch.full((3, 5), 0.2)},
            ValueError,
            r"`targets` must have the logits' shape \(3, 4\).*got shape \(3, 5\)",
        ),
        (
            {"targets": torch.tensor([True, False, True])},
            TypeError,
            r"`targets` must be integer class indices .*got dtype torch.bool",
        ),
        ({"targets": [0, 1, 2]}, TypeError, r"`targets` must be a torch.Tensor; got list"),
        ({"logits": [[0.0, 1.0]]}, TypeError, r"`logits` must be a torch.Tensor; got list"),
        (
            {"logits": torch.zeros(3, 4, dtype=torch.long)},
            TypeError,
            r"`logits` must be float64, float32, bfloat16 or float16; got dtype torch.int64",
        ),
        ({"logits": torch.tensor(1.0)}, ValueError, r"`logits` must have a class dimension"),
        (
            {"logits": torch.zeros(3, 0)},
            ValueError,
            r"`logits` must have at least one class; got a class dimension of 0",
        ),
        (
            {"logits": torch.zeros(0, 0), "targets": torch.zeros(0, dtype=torch.long)},
            ValueError,
            r"`logits` must have at least one class",
        ),
        (
            {"weight": torch.ones(5)},
            ValueError,
            r"`weight` must have shape \(4,\), one entry per class; got shape \(5,\)",
        ),
        (
            {"weight": torch.ones(2, 2)},
            ValueError,
            r"`weight` must have shape \(4,\).*got shape \(2, 2\)",
        ),
        (
            {"weight": torch.tensor([1.0, -1.0, 1.0, 1.0])},
            ValueError,
            r"`weight` must be finite and >= 0; got -1.0",
        ),
        (
            {"weight": torch.tensor([1.0, float("nan"), 1.0, 1.0])},
            ValueError,
            r"`weight` must be finite and >= 0; got nan",
        ),
        (
            {"weight": torch.tensor([1.0, 1.0, float("inf"), 1.0])},
            ValueError,
            r"`weight` must be finite and >= 0; got inf",
        ),
        (
            {"weight": torch.tensor([1, 1, 1, 1])},
            TypeError,
            r"`weight` must be a floating-point tensor; got dtype torch.int64",
        ),
        (
            {"weight": [1.0, 1.0, 1.0, 1.0]},
            TypeError,
            r"`weight` must be None or a torch.Tensor; got list",
        ),
        ({"label_smoothing": -0.1}, ValueError, r"`label_smoothing` must be in \[0, 1\]; got -0.1"),
        ({"label_smoothing": 1.5}, ValueError, r"`label_smoothing` must be in \[0, 1\]; got 1.5"),
        (
            {"label_smoothing": float("nan")},
            ValueError,
            r"`label_smoothing` must be in \[0, 1\]; got nan",
        ),
        (
            {"label_smoothing": "0.1"},
            TypeError,
            r"`label_smoothing` must be a real number; got str",
        ),
        (
            {"label_smoothing": True},
            TypeError,
            r"`label_smoothing` must be a real number; got bool",
        ),
        ({"z_loss": True}, TypeError, r"`z_loss` must be a real number; got bool"),
        ({"softcap": True}, TypeError, r"`softcap` must be None or a real number; got bool"),
        ({"softcap": 0.0}, ValueError, r"`softcap` must be None or a finite number > 0; got 0.0"),
        ({"softcap": -3.0}, ValueError, r"`softcap` must be None or a finite number > 0; got -3.0"),
        (
            {"softcap": float("inf")},
            ValueError,
            r"`softcap` must be None or a finite number > 0; got inf",
        ),
        (
            {"reduction": "avg"},
            ValueError,
            r"`reduction` must be one of 'mean', 'sum', 'none'; got 'avg'",
        ),
        ({"reduction": None}, ValueError, r"`reduction` must be one of .*; got None"),
        ({"z_loss": -1e-4}, ValueError, r"`z_loss` must be finite and >= 0; got -0.0001"),
        ({"z_loss": float("inf")}, ValueError, r"`z_loss` must be finite and >= 0; got inf"),
        ({"base": 1}, ValueError, r"`base` must be finite, > 0 and != 1; got 1"),
        ({"base": 0}, ValueError, r"`base` must be finite, > 0 and != 1; got 0"),
        ({"base": -2.0}, ValueError, r"`base` must be finite, > 0 and != 1; got -2.0"),
        ({"base": "2"}, TypeError, r"`base` must be a real number; got str"),
        ({"ignore_index": 1.5}, TypeError, r"`ignore_index` must be an int; got float"),
        ({"ignore_index": True}, TypeError, r"`ignore_index` must be an int; got bool"),
        (
            {"targets": PROBS, "ignore_index": 0},
            ValueError,
            r"`ignore_index` must be negative with class-probability targets",
        ),
    ],
)
def test_bad_input_message(kwargs, error, pattern):
    kwargs = dict(kwargs)
    logits = kwargs.pop("logits", LOGITS)
    targets = kwargs.pop("targets", TARGETS)
    if error is None:
        assert torch.isfinite(cross_entropy(logits, targets, **kwargs))
        return
    with pytest.raises(error, match=pattern):
        cross_entropy(logits, targets, **kwargs)
    if "reduction" in kwargs:  # the module checks its options when built
        with pytest.raises(error, match=pattern):
            CrossEntropyLoss(**kwargs)
    else:  # the per-token statistics take the same options
        with pytest.raises(error, match=pattern):
            cross_entropy_stats(logits, targets, **kwargs)


def test_value_checks_are_skipped_with_validate_false_but_shape_checks_are_not():
    # Off-sum probabilities pass through (torch's formula applies to them as given).
    loss = cross_entropy(LOGITS, PROBS * 2, validate=False)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(LOGITS, PROBS * 2))
    with pytest.raises(ValueError, match=r"`targets` must have shape"):
        cross_entropy(LOGITS, torch.tensor([0, 1]), validate=False)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in"):
        cross_entropy(LOGITS, TARGETS, label_smoothing=2.0, validate=False)


def test_module_rejects_bad_options_at_construction():
    with pytest.raises(ValueError, match=r"`softcap` must be None or a finite number > 0"):
        CrossEntropyLoss(softcap=0)
    with pytest.raises(ValueError, match=r"`weight` must be 1-D, one entry per class"):
        CrossEntropyLoss(torch.ones(2, 2))
    with pytest.raises(ValueError, match=re.escape("`weight` must have shape (4,)")):
        CrossEntropyLoss(torch.ones(5))(LOGITS, TARGETS)
    # Wrong types and weight values are refused when the module is built, as documented.
    with pytest.raises(TypeError, match=r"`ignore_index` must be an int; got float"):
        CrossEntropyLoss(ignore_index=1.5)
    with pytest.raises(TypeError, match=r"`weight` must be None or a torch\.Tensor; got list"):
        CrossEntropyLoss([1.0, 2.0])
    with pytest.raises(TypeError, match=r"`weight` must be a floating-point tensor"):
        CrossEntropyLoss(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`weight` must be finite and >= 0; got -1\.0"):
        CrossEntropyLoss(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"`reduction` must be one of .*got 'avg'"):
        CrossEntropyLoss(reduction="avg")


def test_check_options_accepts_the_defaults():
    check_options(
        reduction="mean",
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=None,
        base=2.718281828459045,
        weight=None,
        num_classes=4,
        ignore_index=-100,
    )
    check_options(
        reduction="none",
        label_smoothing=1,
        z_loss=1e-4,
        softcap=30,
        base=2,
        weight=torch.zeros(4),
        num_classes=4,
        ignore_index=0,
    )


def test_float32_probabilities_cast_to_float64_are_accepted():
    # A teacher's softmax in float32, cast to float64 to meet float64 logits, sums to 1 only
    # to float32's precision; torch takes it, and so must the check (float64's own sqrt(eps),
    # 1.5e-8, refused it with "got a sum of 1").
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 1000, generator=gen, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(64, 1000, generator=gen) * 4, 1).double()
    assert float((teacher.sum(1) - 1).abs().max()) > 1.5e-8  # the case the check met
    expected = torch.nn.functional.cross_entropy(logits, teacher)
    torch.testing.assert_close(cross_entropy(logits, teacher), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_probability_sum_error_shows_how_far_from_one(dtype):
    targets = torch.full((3, 4), 0.25, dtype=dtype)
    targets[1, 0] += 0.001  # sums to 1.001, beyond the tolerance 3.5e-4
    with pytest.raises(ValueError, match=r"got a sum of 1\.00(1|09+)\d* \(off by 0\.001\)") as info:
        cross_entropy(torch.zeros(3, 4, dtype=dtype), targets)
    assert "tolerance 0.00035" in str(info.value)
    targets[1, 0] -= 0.001 - 2e-4  # 1.0002: within it
    cross_entropy(torch.zeros(3, 4, dtype=dtype), targets)


def test_float64_probability_sum_error_shows_every_digit_of_the_sum():
    # 1.001 + 2**-30 in float64; rounded to float32 it would read "1.001", hiding the rest.
    targets = torch.full((3, 4), 0.25, dtype=torch.float64)
    targets[1, 0] += 0.001 + 2**-30
    total = math.fsum(targets[1].tolist())
    assert str(np.float32(total)) == "1.001"
    with pytest.raises(ValueError, match=re.escape(f"got a sum of {total!r} (off by 0.001)")):
        cross_entropy(torch.zeros(3, 4, dtype=torch.float64), targets)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [4, 3000])
@pytest.mark.parametrize(
    "offset",
    # relative to the dtype's tolerance: inside, near its edge on both sides, outside;
    # "zero" is a row of zeros (accepted), "tiny" a row of the smallest positive values
    [0.0, 0.5, 0.97, -0.97, 1.03, -1.03, 2.0, "zero", "tiny"],
)
def test_half_probability_sums_are_judged_as_float32_sums_are(dtype, classes, offset):
    """Half-precision targets are summed in their own dtype first (a float32 copy of the
    block is slow); the decision is the exact rule's, on float32 sums, every time."""
    from crossentropy.losses._options import probability_sum_tolerance

    tol = probability_sum_tolerance(dtype)
    g = torch.Generator().manual_seed(classes)
    rows = torch.softmax(torch.randn(3, classes, generator=g), 1).to(dtype)
    if offset == "zero":
        rows[1] = 0
    elif offset == "tiny":
        rows[1] = 0
        rows[1, :3] = torch.finfo(dtype).smallest_normal * 2.0**-4  # subnormal, > 0
    else:
        # scale row 1 so that its float32 sum is 1 + offset * tol
        total = rows[1].float().sum()
        rows[1] = (rows[1].float() * ((1 + offset * tol) / total)).to(dtype)
    sums = rows.float().sum(1)
    exact_ok = bool((((sums - 1).abs() <= tol) | (sums == 0)).all())
    logits = torch.zeros(3, classes)
    if exact_ok:
        cross_entropy(logits, rows)
    else:
        with pytest.raises(ValueError, match="must be class probabilities that sum to 1"):
            cross_entropy(logits, rows)
    # the cases reach both sides of the rule
    if offset in (0.0, 0.5, "zero"):
        assert exact_ok
    if offset in (2.0, "tiny"):
        assert not exact_ok
