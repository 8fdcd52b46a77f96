"""Softmax cross-entropy for PyTorch: a drop-in for ``F.cross_entropy``, faster and leaner.

The loss accepts what :func:`torch.nn.functional.cross_entropy` accepts and gives the same
values and gradients (the few deliberate differences are listed in :func:`cross_entropy`);
it adds a z-loss, logit soft-capping and a choice of logarithm base. Its own
:class:`torch.autograd.Function` computes the gradient during the forward pass (one pass
over the logits, in place over one buffer) and keeps that gradient for the backward pass,
never the softmax (the logits are kept by reference until then, for a second-order pass).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from crossentropy._tensors import without_values
from crossentropy.losses import _rows
from crossentropy.losses._composite import (
    composite_rows,
    differentiate,
    functorch_active,
    graph_kept,
    traced,
)
from crossentropy.losses._kernel import accumulation_dtype, cross_entropy_rows, use_triton
from crossentropy.losses._options import (
    ZERO_ROW_NOTE,
    Reduction,
    check_options,
    check_probability_ignore_index,
    check_probability_values,
    legacy_reduction,
    loss_dtype,
    probability_sum_message,
    probability_sum_tolerance,
    probability_sums_off,
    real_option,
)

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

TORCH_KERNEL_ELEMENTS = 1 << 18
"""Most logits (N·C) for which :func:`cross_entropy` hands a CPU block to torch's own fused
kernel, where the options are ones torch has (see :func:`_torch_kernel_applies`).

Below this size a call's fixed cost dominates: this module's kernel is a few dozen torch
operations and checks in Python. Measured on a 2-core AVX-512 machine, float32, forward +
backward, interleaved in one process, handed to torch (with our checks) / our kernel /
torch alone: [32, 10] 33 / 94 / 21 µs, [128, 1000] 87 / 140 / 72 µs, [256, 1000] 135 /
181 / 117 µs. At [512, 1000] torch's kernel starts to split rows over the threads and
its time varies twofold (249 to 449 µs; handed off, 422 µs) where ours takes 269 µs;
above, ours is the faster and the leaner (one block instead of two). The most common
small call (float32 or float64 rows, class indices in range, no weight nor extra
option) goes to torch's kernel before the full checks (:func:`_plain_small_loss`): at
[32, 10] 27.6 µs against torch's 21.5.

Where the compiled row kernel (:mod:`crossentropy.losses._rows`) serves a block (logits
of float32 or a half type, class indices or probabilities), it is faster than torch's from
:data:`ROW_KERNEL_ELEMENTS` logits, and such a block goes to it from there."""

ROW_KERNEL_ELEMENTS = 1 << 16
"""Most logits for which a block the compiled row kernel serves still goes to torch's
kernel (below :data:`TORCH_KERNEL_ELEMENTS`). Measured on a 2-core AVX-512 machine,
forward + backward, loops of calls in one process, handed to torch / the row kernel:
float32 [64, 1000] 71 / 85 µs, [128, 1000] 141 / 99 µs, [256, 1000] 187 / 124 µs;
bfloat16 [64, 1000] 96 / 87 µs, [256, 1000] 488 / 130 µs. The commonest float32 and
float64 calls go to torch's kernel up to :data:`SMALL_CALL_ELEMENTS` on a shorter path
(half types up to this limit)."""

SMALL_CALL_ELEMENTS = 1 << 17
"""Most logits of the commonest small call (see :func:`_plain_small_loss`) that goes to
torch's kernel after a check of the targets' range alone. Measured on a 2-core AVX-512
machine, float32, forward + backward, loops of calls interleaved in one process (three
processes agreeing), on that path / the row kernel / torch alone: [64, 1000] 58-73 /
59-72 / 50-64 µs, [128, 1000] 103-105 / 117-121 / 95-98 µs, [256, 1000] 157-165 /
150-156 / 151-172 µs (torch alone 352 µs in some rounds, where it splits the rows over
the threads)."""


class TokenStats(NamedTuple):
    """Per-token statistics of a softmax prediction, each shaped like the targets.

    Attributes:
        loss: Cross-entropy of each token with all the options applied (smoothing, class
            weight, z-loss, soft-capping), in units of ``base``; 0 for ignored tokens.
        logsumexp: ``log sum_c exp(z_c)`` of the (soft-capped) logits, in nats, for every
            token (ignored ones included).
        entropy: Entropy of the predicted distribution ``softmax(z)`` in units of ``base``,
            for every token (ignored ones included).
    """

    loss: torch.Tensor
    logsumexp: torch.Tensor
    entropy: torch.Tensor


# ---------------------------------------------------------------------------------------
# Input checking and reshaping to a 2-D (M, V) block.


class _Prepared(NamedTuple):
    logits: torch.Tensor  # as given: (C), (N, C) or (N, C, d1, ..., dk)
    targets: torch.Tensor  # as given (integer class indices as int64)
    probs: bool
    out_shape: tuple[int, ...]  # the per-token shape
    all_counted: bool  # known to have no ignored token (always true of probabilities)
    any_counted: bool = False  # known to have a token that is not ignored (likewise)


def _prepare(
    logits: object, targets: object, ignore_index: int, validate: bool, plain: bool = False
) -> _Prepared:
    """The inputs checked, integer targets as int64; ``plain``: the loss is computed by
    plain torch operations (inside a transform), which need not know ``all_counted``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"`logits` must be a torch.Tensor; got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"`targets` must be a torch.Tensor; got {type(targets).__name__}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"`logits` must be float64, float32, bfloat16 or float16; got dtype {logits.dtype}"
        )
    if logits.dim() == 0:
        raise ValueError(
            "`logits` must have a class dimension, shape (C), (N, C) or (N, C, ...)"
            "; got a 0-d tensor"
        )
    probs = targets.is_floating_point()
    if not probs and (targets.dtype == torch.bool or targets.is_complex()):
        raise TypeError(
            "`targets` must be integer class indices or floating-point class probabilities; "
            f"got dtype {targets.dtype}"
        )
    class_dim = 0 if logits.dim() == 1 else 1
    num_classes = logits.shape[class_dim]
    token_shape = tuple(logits.shape[:class_dim]) + tuple(logits.shape[class_dim + 1 :])
    if probs:
        if targets.shape != logits.shape:
            raise ValueError(
                f"`targets` must have the logits' shape {tuple(logits.shape)} for class "
                f"probabilities, or shape {token_shape} for class indices; "
                f"got shape {tuple(targets.shape)} of dtype {targets.dtype}"
            )
        check_probability_ignore_index(ignore_index)
    elif logits.dim() == 1 and targets.shape == (1,):
        targets = targets.reshape(())  # torch takes a (1,) index for (C) logits too
    if not probs and targets.shape != token_shape:
        raise ValueError(
            f"`targets` must have shape {token_shape} for class indices, or the logits' "
            f"shape {tuple(logits.shape)} for class probabilities; got shape "
            f"{tuple(targets.shape)} of dtype {targets.dtype}"
        )
    if targets.device != logits.device:
        raise ValueError(
            f"`targets` must be on the logits' device {logits.device}; got {targets.device}"
        )
    if num_classes == 0:
        raise ValueError("`logits` must have at least one class; got a class dimension of 0")

    if not probs and targets.dtype != torch.long:
        # Compare with ignore_index in int64: uint8 targets would wrap -100 to 156.
        targets = targets.long()
    all_counted = any_counted = probs
    if not without_values(targets):
        if probs:
            if validate:
                _check_target_values(targets, probs, num_classes, ignore_index)
        # Reading the targets costs a device synchronisation, which validation pays
        # anyway; without it they are read on the CPU only.
        elif validate or (targets.device.type == "cpu" and not plain):
            valid, all_counted, any_counted = _index_facts(targets, num_classes, ignore_index)
            if validate and not valid:
                _raise_bad_index(targets, num_classes, ignore_index)

    return _Prepared(logits, targets, probs, token_shape, all_counted, any_counted)


def _flatten(logits: torch.Tensor, targets: torch.Tensor, probs: bool):
    """(M, V) logits and (M,) or (M, V) targets, the class dimension last."""
    num_classes = logits.shape[0 if logits.dim() == 1 else 1]
    if logits.dim() == 1:
        flat_logits = logits.reshape(1, num_classes)
        flat_targets = targets.reshape(1, num_classes) if probs else targets.reshape(1)
    elif logits.dim() == 2:
        flat_logits, flat_targets = logits, targets
    else:
        flat_logits = logits.movedim(1, -1).reshape(-1, num_classes)
        flat_targets = (
            targets.movedim(1, -1).reshape(-1, num_classes) if probs else targets.reshape(-1)
        )
    return flat_logits, flat_targets


def _unflatten(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A (M, V) gradient back in the layout ``shape`` of the logits it belongs to."""
    if grad.shape == shape:
        return grad  # the block itself, which autograd can adopt as ``.grad`` without a copy
    if len(shape) <= 2:
        return grad.reshape(shape)
    return grad.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _index_facts(
    targets: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[bool, bool, bool]:
    """(every class index is in [0, num_classes) or ``ignore_index``, no index is
    ``ignore_index``, some index is not ``ignore_index``), read from the device once; the
    second is False also where the range cannot rule ``ignore_index`` out.

    On the CPU the range of the targets (one reduction) tells all three in the common
    cases: indices all in range, or ``ignore_index`` at one end of the range (padding's
    -100 is the least), where the range of the counted indices is taken again; elsewhere,
    and on the CPU when the range cannot tell, the element-wise tests travel to the host
    together.
    """
    if targets.numel() == 0:
        return True, True, False
    if targets.device.type == "cpu":
        low, high = torch.stack(torch.aminmax(targets)).tolist()
        if low == high == ignore_index:
            return True, False, False
        if ignore_index in (low, high):
            low, high = torch.stack(torch.aminmax(targets[targets != ignore_index])).tolist()
            return low >= 0 and high < num_classes, False, True
        if low >= 0 and high < num_classes:
            return True, not low <= ignore_index <= high, True
    ignored = targets == ignore_index
    bad = ((targets < 0) | (targets >= num_classes)) & ~ignored
    facts = torch.stack([bad.any(), ignored.any(), ignored.all()]).tolist()
    any_bad, any_ignored, all_ignored = facts
    return not any_bad, not any_ignored, not all_ignored


def _raise_bad_index(targets: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    bad = ((targets < 0) | (targets >= num_classes)) & (targets != ignore_index)
    raise ValueError(
        f"`targets` must be class indices in [0, {num_classes}) or ignore_index="
        f"{ignore_index}; got {targets[bad][0].item()}"
    )


def _half_sums_pass(targets: torch.Tensor, class_dim: int) -> bool:
    """Whether half-precision class probabilities (finite, >= 0: checked) surely pass the
    sum rule, from sums in their own dtype: torch adds half types in float32 and rounds
    the total once, within half a unit of the dtype at 1 for totals below 2, where a sum
    with ``dtype=torch.float32`` first copies the whole block to float32 (25 times
    slower for bfloat16 on CPU). A total within the tolerance less one unit is within
    the tolerance; a total of 0 is a row of zeros where its largest entry is 0. False
    sends the block to the exact check (float32 sums), which decides and words the error."""
    if targets.dtype not in (torch.bfloat16, torch.float16) or targets.device.type != "cpu":
        return False
    sums = targets.sum(class_dim)
    margin = probability_sum_tolerance(targets.dtype) - torch.finfo(targets.dtype).eps
    near_one = (sums.float() - 1).abs() <= margin
    if bool(near_one.all()):
        return True
    zero = ~near_one & (sums == 0)
    if not bool((near_one | zero).all()):
        return False
    return bool((targets.amax(class_dim)[zero] == 0).all())


def _check_target_values(
    targets: torch.Tensor, probs: bool, num_classes: int, ignore_index: int
) -> None:
    if without_values(targets):
        return
    if probs:
        if targets.numel() == 0:
            return
        class_dim = 0 if targets.dim() == 1 else 1
        check_probability_values(targets)
        if _half_sums_pass(targets, class_dim):
            return
        sums = targets.sum(class_dim, dtype=accumulation_dtype(targets.dtype))
        off = probability_sums_off(sums, targets.dtype)
        if bool(off.any()):
            tol = probability_sum_tolerance(targets.dtype)
            raise ValueError(
                "`targets` must be class probabilities that sum to 1 over the class dimension "
                f"(dim {class_dim}, tolerance {tol:.2g}); got a sum of "
                f"{probability_sum_message(sums[off][0].item(), targets.dtype)}; "
                f"divide by the sum to normalise them ({ZERO_ROW_NOTE})"
            )
        return
    valid, _, _ = _index_facts(targets, num_classes, ignore_index)
    if not valid:
        _raise_bad_index(targets, num_classes, ignore_index)


# ---------------------------------------------------------------------------------------
# The autograd function.


def _uniform_factor(tokens: int, reduction: str) -> float:
    """The factor of every token when all count alike: ``1 / tokens`` for ``"mean"`` (0 for
    an empty batch, whose mean is 0), else 1."""
    if reduction == "mean":
        return 1.0 / tokens if tokens else 0.0
    return 1.0


def _row_scales(
    targets: torch.Tensor,
    probs: bool,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    acc: torch.dtype,
    all_counted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | float]:
    """(class targets with ignored rows set to 0, valid mask or None, per-row factor).

    The factor is a Python number, the same for every row, where no row is ignored
    (``all_counted``, always true of probabilities) and no class weight enters it: ``1 /
    n`` for ``"mean"`` (0 for an empty batch), else 1. Otherwise it is an (n,) tensor.
    """
    n = targets.shape[0]
    device = targets.device
    if all_counted and (probs or weight is None):
        return targets, None, _uniform_factor(n, reduction)
    if probs:
        valid = None
        safe = targets
        count = torch.tensor(float(n), dtype=acc, device=device)
        ones = torch.ones(n, dtype=acc, device=device)
        if reduction == "mean":
            return safe, valid, ones / count if n else ones
        return safe, valid, ones
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0).long()
    factor = valid.to(acc)
    if reduction == "mean":
        token_weight = (
            weight.to(device=device, dtype=acc)[safe] * factor if weight is not None else factor
        )
        denominator = token_weight.sum()
        # An empty or all-ignored batch (denominator 0) has mean 0 and gradient 0.
        positive = denominator > 0
        # The division is guarded too: a where over 1 / 0 would give its gradient NaN.
        inverse = torch.where(positive, 1.0 / torch.where(positive, denominator, 1.0), 0.0)
        factor = factor * inverse
    return safe, valid, factor


class _Options(NamedTuple):
    """The loss options shared by the autograd functions and the plain formulas."""

    weight: torch.Tensor | None
    probs: bool
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    base: float

    @property
    def rows(self) -> dict:
        """The options the per-row formulas take, the kernel's and the plain ones alike."""
        return {
            "weight": self.weight,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "softcap": self.softcap,
            "base": self.base,
        }


def _options(weight, probs, ignore_index, label_smoothing, z_loss, softcap, base) -> _Options:
    """The checked options as the functions take them (Python ints and floats)."""
    return _Options(
        weight,
        probs,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        float(base),
    )


class _CrossEntropyFunction(torch.autograd.Function):
    """Loss in forward, its gradient computed there too; backward scales the saved gradient.

    ``logits`` and ``targets`` come as the caller gave them (any layout); the function
    flattens them itself, so that what it saves are the caller's tensors, not copies.
    Logits (N, C, d1, ..., dk) go to the kernel as their (N, C, S) view (with targets of
    the matching layout), the classes kept in place: no channels-last copy of the block,
    whose gradient then has the logits' own layout; except where the kernel runs in
    Triton, whose rows are contiguous.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        options: _Options,
        reduction: str,
        track_grad: bool,
        out_dtype: torch.dtype,
        all_counted: bool,
    ) -> torch.Tensor:
        weight, probs, ignore_index = options.weight, options.probs, options.ignore_index
        # (N, C, S): the positions of spatial logits as an inner dimension of each row.
        inner = (
            (logits.shape[0], logits.shape[1], math.prod(logits.shape[2:]))
            if logits.dim() > 2 and not use_triton(logits.device)
            else None
        )
        acc = accumulation_dtype(logits.dtype)
        if inner is None:
            kernel_logits, flat_targets = _flatten(logits, targets, probs)
            safe, valid, factor = _row_scales(
                flat_targets, probs, weight, ignore_index, reduction, acc, all_counted
            )
            kernel_scale = factor
        elif probs:  # every token counts: only the number of tokens enters the factor
            kernel_logits, safe, valid = logits.reshape(inner), targets.reshape(inner), None
            factor = kernel_scale = _uniform_factor(inner[0] * inner[2], reduction)
        else:  # the per-token targets and factor as (N, S), like the kernel's rows
            kernel_logits = logits.reshape(inner)
            safe, valid, factor = _row_scales(
                targets.reshape(-1), probs, weight, ignore_index, reduction, acc, all_counted
            )
            safe = safe.reshape(inner[0], inner[2])
            kernel_scale = factor
            if isinstance(factor, torch.Tensor):
                kernel_scale = factor.reshape(inner[0], inner[2])
        # needs_input_grad is also True under torch.no_grad(): ask grad mode at call time.
        want_grad = ctx.needs_input_grad[0] and track_grad
        terms = cross_entropy_rows(
            kernel_logits, safe, **options.rows, grad_scale=kernel_scale if want_grad else None
        )
        rows = terms.loss.reshape(-1)
        rows = rows if valid is None else torch.where(valid, rows, 0.0)
        if reduction == "none":
            loss = rows
        elif reduction == "sum":
            loss = rows.sum()
        elif isinstance(factor, torch.Tensor):
            loss = (rows * factor).sum()  # factor = mask / denominator
        else:  # factor = 1 / n (0 for an empty batch, whose mean is 0): torch's sum / n
            loss = rows.mean() if factor else rows.sum()
        ctx.reduction = reduction
        ctx.options = options
        ctx.probs_grad = probs and ctx.needs_input_grad[1] and track_grad
        # The caller's logits, by reference, for a second-order backward pass; they exist
        # during this forward pass anyway, but logits the caller drops stay alive until
        # backward, which releases them unless the graph is retained. Only
        # that pass reads them (and checks they were not modified in place since), so a
        # first-order backward pass works after an in-place change, as with torch.
        # Inference tensors (made under torch.inference_mode) have no version counter.
        ctx.logits = (logits, None if logits.is_inference() else logits._version)
        ctx.logits_shape = logits.shape
        # The layout of the saved gradient: (N, C, S), or rows (M, C) when None.
        ctx.inner = inner
        saved_logits = logits if ctx.probs_grad else None  # the targets' gradient needs them
        factor_tensor = factor if isinstance(factor, torch.Tensor) else None
        ctx.factor = None if factor_tensor is not None else factor
        ctx.save_for_backward(
            terms.grad if want_grad else None, saved_logits, targets, factor_tensor
        )
        ctx.out_dtype = out_dtype
        return loss.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad, logits, targets, factor = ctx.saved_tensors
        factor = ctx.factor if factor is None else factor
        weight, probs, _, label_smoothing, _, softcap, base = ctx.options
        nones = (None,) * 5
        kept, ctx.logits = ctx.logits, (ctx.logits if graph_kept() else None)
        if torch.is_grad_enabled():  # create_graph=True: a gradient to differentiate again
            if kept is None:
                raise RuntimeError(
                    "cross_entropy's logits were released by an earlier backward pass; pass "
                    "retain_graph=True to that pass to differentiate through the loss again"
                )
            logits, version = kept
            if version is not None and logits._version != version:
                raise RuntimeError(
                    "`logits` were modified in place after cross_entropy was computed; a "
                    "gradient built with create_graph=True needs them as they were: modify "
                    "a copy, or call the loss after the change"
                )
            loss = _composite_loss(logits, targets, ctx.options, ctx.reduction)
            needs = (ctx.needs_input_grad[0], probs and ctx.needs_input_grad[1])
            grad_logits, grad_targets = differentiate(
                [loss.to(ctx.out_dtype)], [grad_output], [logits, targets], needs
            )
            return grad_logits, grad_targets, *nones
        grad_logits = grad_targets = None
        if grad is not None:
            if ctx.reduction == "none":
                # An ignored token's row is 0 whatever its upstream gradient, NaN and inf
                # included, as with torch (factor is the mask of counted tokens here).
                # Per token, shaped to broadcast over the classes of the gradient block.
                token = (-1, 1) if ctx.inner is None else (ctx.inner[0], 1, ctx.inner[2])
                upstream = grad_output.reshape(token).to(grad.dtype)
                if isinstance(factor, torch.Tensor):  # else every token counts
                    upstream = torch.where(factor.reshape(token) > 0, upstream, 0.0)
            else:
                upstream = grad_output.to(grad.dtype)
            if graph_kept():
                # A graph kept for another pass keeps the block too: hand out a scaled
                # copy, which the caller may change in place (torch.autograd.grad returns
                # it as is).
                grad_logits = grad * upstream
            elif ctx.reduction != "none" and _is_cpu_one(upstream):
                grad_logits = grad  # loss.backward(): the gradient is the one from forward
            else:
                # The block is released after this pass: scale it in place, on any device
                # and for any upstream gradient, rather than allocate a second block.
                grad_logits = grad.mul_(upstream)
            if ctx.inner is None:
                grad_logits = _unflatten(grad_logits, ctx.logits_shape)
            else:
                grad_logits = grad_logits.reshape(ctx.logits_shape)
        if ctx.probs_grad:
            flat_logits, _ = _flatten(logits, targets, probs)
            grad_targets = _probability_target_grad(
                flat_logits,
                factor,
                grad_output,
                weight,
                label_smoothing,
                softcap,
                base,
                ctx.reduction,
            )
            grad_targets = _unflatten(grad_targets, targets.shape)
        return grad_logits, grad_targets, *nones


def _torch_kernel_applies(prepared: _Prepared, options: _Options, reduction: str) -> bool:
    """Whether torch's own ``F.cross_entropy`` computes this loss, values and gradients
    alike: a small block (at most :data:`TORCH_KERNEL_ELEMENTS` logits, and at most
    :data:`ROW_KERNEL_ELEMENTS` where the compiled row kernel serves it) of logits on the
    CPU (half types computed in float32, as here), (C) or (N, C), with class-index
    targets or class probabilities of the logits' dtype (checked already), no z-loss and
    no soft-capping (the base is a factor applied after), class weights that need no
    gradient (torch gives them none for index targets), and for index targets under
    ``"mean"`` no class weight and some token that is not ignored, so that the
    denominator is the count of counted tokens, and never 0 (torch's mean of an empty or
    all-ignored batch is NaN, this module's 0: no such block goes to torch)."""
    logits = prepared.logits
    weight = options.weight
    return (
        0 < logits.numel() <= TORCH_KERNEL_ELEMENTS
        and logits.device.type == "cpu"
        and logits.dim() <= 2
        # torch's loss takes the dtype of wider probability targets; this module's, the
        # logits' own
        and (not prepared.probs or prepared.targets.dtype == logits.dtype)
        and options.z_loss == 0.0
        and options.softcap is None
        and (weight is None or not weight.requires_grad)
        and not (  # a block the row kernel serves, and large enough that it is faster
            logits.numel() > ROW_KERNEL_ELEMENTS
            and logits.dtype in _rows.DTYPES
            and (not prepared.probs or prepared.targets.dtype in (logits.dtype, torch.float32))
            and _rows.available()
        )
        and (
            reduction != "mean"
            or prepared.probs  # a mean over the tokens, as torch's
            or (prepared.any_counted and weight is None)
        )
    )


def _torch_kernel_loss(prepared: _Prepared, options: _Options, reduction: str) -> torch.Tensor:
    """The loss by torch's ``F.cross_entropy``, where :func:`_torch_kernel_applies`."""
    logits, targets, weight = prepared.logits, prepared.targets, options.weight
    if logits.dtype in (torch.bfloat16, torch.float16):
        # Computed in float32 and rounded once, as this module's kernel computes half
        # types; autograd rounds the gradient back to the logits' dtype.
        logits = logits.float()
        if prepared.probs:
            targets = targets.float()
    if weight is not None and weight.dtype != logits.dtype:
        weight = weight.to(logits.dtype)  # as this module's kernel takes it
    loss = torch.nn.functional.cross_entropy(
        logits,
        targets,
        weight=weight,
        ignore_index=options.ignore_index,
        reduction=reduction,
        label_smoothing=options.label_smoothing,
    )
    return loss if options.base == math.e else loss * (1.0 / math.log(options.base))


def _plain_small_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    base: float,
) -> torch.Tensor | None:
    """The loss of the most common small call, by torch's kernel at once, or None.

    A (N, C) block on the CPU of at most :data:`SMALL_CALL_ELEMENTS` logits (and
    :data:`TORCH_KERNEL_ELEMENTS`, which turns the hand-off off at 0; half types, computed
    in float32 as on the full path, at most :data:`ROW_KERNEL_ELEMENTS`), with
    int64 class indices in [0, C) or ``ignore_index`` (not every one), no class weight,
    no z-loss, soft-capping nor other base, and plain options, outside every transform
    and trace and without a forward-mode tangent (:func:`traced`):
    :func:`_torch_kernel_applies` would send it to torch's kernel after the full checks,
    which for such a call cost more than the loss (about 10 µs at [32, 10]). Here the only
    check that reads values is :func:`_index_facts` (the range of the targets); anything
    else, and every bad input, returns None, and the full path checks, words the error or
    computes."""
    if not (
        type(logits) is torch.Tensor
        and type(targets) is torch.Tensor
        and weight is None
        and softcap is None
        and type(z_loss) in (int, float)
        and z_loss == 0
        and type(base) is float
        and base == math.e
        and type(label_smoothing) in (int, float)
        and 0 <= label_smoothing <= 1
        and reduction in ("mean", "sum", "none")
        and type(ignore_index) is int
        and logits.dim() == 2
        and logits.dtype in _FLOAT_DTYPES
        and logits.device.type == "cpu"
        and 0 < logits.numel() <= min(TORCH_KERNEL_ELEMENTS, SMALL_CALL_ELEMENTS)
        and targets.dtype == torch.int64
        and targets.device.type == "cpu"
        and targets.shape == logits.shape[:1]
        and not torch.compiler.is_compiling()
        and not traced(logits, targets)
    ):
        return None
    half = logits.dtype in (torch.bfloat16, torch.float16)
    if half and logits.numel() > ROW_KERNEL_ELEMENTS:
        return None  # the row kernel is the faster there
    valid, _, any_counted = _index_facts(targets, logits.shape[1], ignore_index)
    if not (valid and any_counted):  # torch's mean of no token is NaN, this module's 0
        return None
    loss = torch.nn.functional.cross_entropy(
        logits.float() if half else logits,  # half types in float32, rounded once
        targets,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
    )
    return loss.to(loss_dtype(logits.dtype, logits.device)) if half else loss


def _is_cpu_one(value: torch.Tensor) -> bool:
    """Whether a scalar upstream gradient is 1, read only where that costs no device sync."""
    return value.device.type == "cpu" and float(value) == 1.0


def _composite_loss(logits, targets, options, reduction):
    """The loss of :class:`_CrossEntropyFunction` as plain torch operations, in the
    accumulation dtype (flat per token for ``"none"``): the graph a second-order backward
    pass differentiates and what ``torch.func`` transforms trace."""
    weight, probs, ignore_index = options.weight, options.probs, options.ignore_index
    flat_logits, flat_targets = _flatten(logits, targets, probs)
    acc = accumulation_dtype(logits.dtype)
    _, valid, factor = _row_scales(flat_targets, probs, weight, ignore_index, reduction, acc)
    rows, _ = _composite_loss_rows(flat_logits, flat_targets, options)
    rows = rows.loss
    if valid is not None:
        rows = torch.where(valid, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return (rows * factor).sum()


def _composite_stats(flat_logits, flat_targets, options):
    """:class:`_StatsFunction`'s three outputs as plain torch operations, in the
    accumulation dtype: the per-token loss (0 at ignored tokens), lse and entropy."""
    rows, valid = _composite_loss_rows(flat_logits, flat_targets, options, with_entropy=True)
    loss = rows.loss if valid is None else torch.where(valid, rows.loss, 0.0)
    return loss, rows.logsumexp, rows.entropy


def _composite_loss_rows(flat_logits, flat_targets, options, *, with_entropy=False):
    """:func:`composite_rows` of flattened inputs under ``options`` (see ``ctx.options``),
    and the mask of rows that count (None for probability targets)."""
    valid = None
    safe = flat_targets
    if not options.probs:
        valid = flat_targets != options.ignore_index
        safe = torch.where(valid, flat_targets, 0)
    rows = composite_rows(flat_logits, safe, **options.rows, with_entropy=with_entropy)
    return rows, valid


def _probability_target_grad(
    logits: torch.Tensor,
    factor: torch.Tensor,
    grad_output: torch.Tensor,
    weight: torch.Tensor | None,
    label_smoothing: float,
    softcap: float | None,
    base: float,
    reduction: str,
) -> torch.Tensor:
    """d loss / d t_c = -(1 - eps) w_c log p_c / ln(base), times each row's factor."""
    acc = accumulation_dtype(logits.dtype)
    z = logits.to(acc)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    grad = torch.log_softmax(z, 1).mul_(-(1.0 - label_smoothing) / math.log(base))
    if weight is not None:
        grad.mul_(weight.to(device=grad.device, dtype=acc))
    upstream = grad_output.to(acc)
    row = factor * (upstream if reduction != "none" else upstream.reshape(-1))
    return grad.mul_(row.reshape(-1, 1))


# ---------------------------------------------------------------------------------------
# Public API.


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    validate: bool = True,
) -> torch.Tensor:
    """Softmax cross-entropy between logits and targets, a drop-in for ``F.cross_entropy``.

    For a token with logits ``z`` over V classes, ``lse = log sum_c exp(z_c)``, the loss of a
    class-index target ``y`` is ``lse - z_y = -log softmax(z)_y`` and that of class
    probabilities ``t`` is ``-sum_c t_c log softmax(z)_c``, in nats (divided by ``ln base``
    for another base). The options follow torch exactly:

    - ``weight`` multiplies the token's loss by ``w_y`` (by ``w_c`` inside the sum for
      probabilities); ``reduction="mean"`` then divides by ``sum_i w_{y_i}`` over counted
      tokens (index targets) or by the number of tokens (probability targets).
    - ``label_smoothing = eps`` mixes the target with the uniform distribution: for index
      targets the loss is ``(1 - eps) w_y (lse - z_y) + (eps / V) sum_c w_c (lse - z_c)``,
      for probabilities ``t`` becomes ``(1 - eps) t + eps / V``.
    - Tokens whose target equals ``ignore_index`` contribute nothing and are not counted.

    Beyond torch:

    - ``z_loss`` adds ``z_loss * lse**2`` per counted token (PaLM), weighted by the token's
      class weight ``w_y`` like the rest of its loss (unweighted for probability targets).
    - ``softcap = c`` replaces the logits by ``c * tanh(logits / c)`` before everything
      (Gemma 2).
    - ``base=2`` gives the loss, and so its gradient, in bits.
    - An empty or all-ignored batch (more generally a zero weighted denominator) under
      ``reduction="mean"`` gives 0 with a zero gradient, where torch gives NaN.

    Under ``torch.autocast`` the loss of half-precision logits is float32, as torch's is
    there (autocast runs its cross-entropy in float32); it is computed from the logits as
    they are, without a float32 copy of them. Outside autocast the loss has the logits'
    dtype, as with torch, except that torch promotes it to the dtype of probability
    targets wider than the logits (float64 targets with float32 logits give torch a
    float64 loss, this function a float32 one).

    A further deliberate difference from torch, a check: with ``validate=True``
    probability targets must be finite, >= 0 and sum to 1 over the classes (torch takes
    any values). A row of zeros is accepted, as torch takes it (a token without a target,
    a common mask for padding): its cross-entropy term is 0, while label smoothing and
    z-loss apply to it as to every row and ``"mean"`` counts it. With probability targets
    ``ignore_index`` must be negative (it has no effect; torch raises for a value >= 0
    too). Integer targets of any integer dtype are accepted (torch takes int64 and uint8
    only).

    The gradient is computed in the forward pass when the logits require it and grad mode
    is on (never under ``torch.no_grad()``), and it is the one new block kept for backward,
    in the logits' dtype; the softmax is not saved. The logits are kept by reference (not
    copied) until the backward pass, for a possible second-order pass: that costs nothing
    while the caller holds them too, but logits the caller drops after the call (``loss =
    cross_entropy(head(h), y)``) stay alive until backward, so that between the two passes
    this loss holds two (N, V) blocks where torch's holds one (its log-softmax). A backward
    pass that does not retain the graph releases them. The backward pass
    returns that block itself, scaled in place by the upstream gradient (for ``"none"``
    row ``i`` of the block is ``d loss_i / d logits_i`` and its row is scaled; for
    ``"mean"`` and ``"sum"`` an upstream gradient of 1 on the CPU, as in
    ``loss.backward()``, leaves it as it is): one multiplication instead of a second
    softmax, and no second block. Backward may run more than once (``retain_graph=True``),
    as with torch; a pass that keeps the graph returns a scaled copy instead. Gradients of
    gradients work too (a gradient penalty, a Hessian-vector product:
    ``torch.autograd.grad(..., create_graph=True)``): then backward recomputes the loss
    from the saved logits as plain torch operations and differentiates that, at eager
    torch's cost. Inside ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``,
    ``jvp``, ``hessian``: per-sample gradients, Hessians) and for inputs with a
    forward-mode tangent (``torch.autograd.forward_ad``) the loss is computed by those
    plain operations from the start; target values are not checked inside transforms (a
    transform cannot inspect them).

    Small blocks on the CPU (at most ``TORCH_KERNEL_ELEMENTS``, 2**18, logits of shape (C)
    or (N, C); half types computed in float32, as here) in options torch has (no z-loss,
    no soft-capping, probability targets of the logits' dtype, and for class indices
    under ``"mean"`` no class weight and some token not ignored) are computed by torch's own
    fused kernel after this function's checks: there a call's fixed cost dominates, and
    torch's is about a quarter of this module's (33 µs against 94 µs forward and
    backward at [32, 10]); its values equal this module's to rounding, and its gradient
    is formed in backward, as torch forms it. The most common of them (rows with class
    indices in range or ignored, such as padding, no class weight and no option beyond
    torch's) go there after a check of the targets' range alone, before the full checks
    (which run for anything else and word every error): 28 µs at [32, 10], torch's own
    22 µs; with padding tokens 36 µs, where the full path took 148 µs.

    Args:
        logits: Unnormalised scores, shape (C), (N, C) or (N, C, d1, ..., dk) with C = V
            classes; float64, float32, bfloat16 or float16 (computed in float32 at least).
        targets: Class indices, shape () / (N) / (N, d1, ..., dk), integer, in [0, C) or
            ``ignore_index``; or class probabilities of the logits' shape, floating point.
        weight: Class weights, shape (C,), finite and >= 0; None for ones. Weights that
            require a gradient get one (torch gives it for probability targets only),
            through the plain-torch formulas.
        size_average: Deprecated, as in torch (use ``reduction``): with ``reduce``, when
            either is given, it sets the reduction as torch's does, with a FutureWarning.
        ignore_index: Target value to skip (class-index targets only).
        reduce: Deprecated, as in torch (use ``reduction``); see ``size_average``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per token, shaped like the
            targets without the class dimension; ignored tokens give 0).
        label_smoothing: Smoothing in [0, 1].
        z_loss: Coefficient of ``lse**2``, >= 0 (1e-4 in PaLM).
        softcap: Soft-capping constant > 0 (30 in Gemma 2), or None.
        base: Logarithm base: ``math.e`` (nats, default) or 2 (bits), > 0 and != 1.
        validate: Check target values (range, probabilities) and weight values; these checks
            read tensor values, a device synchronisation on accelerators. Shape and dtype
            checks always run.

    Returns:
        The loss in units of ``base``, in the logits' dtype (float32 for half-precision
        logits under ``torch.autocast``): a scalar for ``"mean"`` and ``"sum"``, else per
        token.

    Raises:
        ValueError: Targets out of range (and not ``ignore_index``), probability targets
            negative, non-finite or not summing to 1 (nor 0), shapes that do not match,
            0-d logits or zero classes, targets or a weight on another device, a weight of
            the wrong length or with a negative or non-finite entry, ``ignore_index`` >= 0 with
            probability targets, or a bad option (``label_smoothing`` outside [0, 1],
            ``softcap <= 0``, an unknown ``reduction``, ``base`` <= 0 or 1,
            ``z_loss < 0``).
        TypeError: Non-tensor inputs, integer logits, boolean or complex targets, a
            non-floating weight, an option of the wrong type (``ignore_index`` not an
            int, a bool or string where a number is expected).

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
        >>> targets = torch.tensor([0, 2])
        >>> loss = cross_entropy(logits, targets)
        >>> expected = torch.nn.functional.cross_entropy(logits, targets)
        >>> bool(torch.allclose(loss, expected))
        True
        >>> loss.backward()
        >>> grad = (torch.softmax(logits, 1) - torch.nn.functional.one_hot(targets, 3)) / 2
        >>> bool(torch.allclose(logits.grad, grad))
        True
        >>> bits = cross_entropy(torch.zeros(4), torch.tensor(1), base=2)  # uniform over 4
        >>> round(bits.item(), 6)
        2.0

    References:
        Shannon (1948); Cover & Thomas, Elements of Information Theory, ch. 2.
        Szegedy et al. (2016), label smoothing; Chowdhery et al. (2022), PaLM, z-loss;
        Gemma Team (2024), Gemma 2, logit soft-capping.
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    loss = _plain_small_loss(
        logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, base
    )
    if loss is not None:
        return loss
    prepared, options, plain, out_dtype = _begin(
        logits, targets, weight, ignore_index, reduction, label_smoothing, z_loss, softcap, base,
        validate,
    )  # fmt: skip
    if plain:
        loss = _composite_loss(prepared.logits, prepared.targets, options, reduction)
        loss = loss.to(out_dtype)
    elif _torch_kernel_applies(prepared, options, reduction):
        loss = _torch_kernel_loss(prepared, options, reduction).to(out_dtype)
    else:
        loss = _CrossEntropyFunction.apply(
            prepared.logits,
            prepared.targets,
            options,
            reduction,
            torch.is_grad_enabled(),
            out_dtype,
            prepared.all_counted,
        )
    if reduction == "none":
        loss = loss.reshape(prepared.out_shape)
    return loss


def cross_entropy_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    validate: bool = True,
) -> TokenStats:
    """Per-token loss, log-sum-exp and prediction entropy, in one pass over the logits.

    For each token: ``loss`` is what ``cross_entropy(..., reduction="none")`` gives with the
    same options (0 for ignored tokens); ``logsumexp`` is ``log sum_c exp(z_c)`` of the
    (soft-capped) logits in nats; ``entropy`` is ``H(softmax(z)) = lse - sum_c p_c z_c`` in
    units of ``base``. Log-sum-exp and entropy are given for every token, ignored ones
    included, since they describe the prediction, not the target. All three are
    differentiable with respect to the logits (the backward pass recomputes the softmax
    from the saved logits).

    Args:
        logits: Shape (C), (N, C) or (N, C, d1, ..., dk).
        targets: Class indices or class probabilities, as in :func:`cross_entropy`.
        weight: Class weights, shape (C,), or None.
        ignore_index: Target value whose loss is 0.
        label_smoothing: Smoothing in [0, 1].
        z_loss: Coefficient of ``lse**2`` in the loss.
        softcap: Soft-capping constant > 0, or None.
        base: Logarithm base of ``loss`` and ``entropy``.
        validate: As in :func:`cross_entropy`.

    Returns:
        :class:`TokenStats` ``(loss, logsumexp, entropy)``, each of the per-token shape (the
        targets' shape for indices), in the dtype :func:`cross_entropy` gives its loss: the
        logits' dtype, float32 for half-precision logits under ``torch.autocast``.

    Raises:
        ValueError: As :func:`cross_entropy`.
        TypeError: As :func:`cross_entropy`.

    Examples:
        >>> import math, torch
        >>> stats = cross_entropy_stats(torch.zeros(2, 4), torch.tensor([1, 3]), base=2)
        >>> stats.loss.tolist(), stats.entropy.tolist()  # uniform over 4 classes: 2 bits
        ([2.0, 2.0], [2.0, 2.0])
        >>> round(stats.logsumexp[0].item(), 6) == round(math.log(4), 6)
        True
    """
    prepared, options, plain, out_dtype = _begin(
        logits, targets, weight, ignore_index, "none", label_smoothing, z_loss, softcap, base,
        validate,
    )  # fmt: skip
    if plain:
        flat_logits, flat_targets = _flatten(prepared.logits, prepared.targets, prepared.probs)
        stats = _composite_stats(flat_logits, flat_targets, options)
        loss, lse, entropy = (t.to(out_dtype) for t in stats)
    else:
        loss, lse, entropy = _StatsFunction.apply(
            prepared.logits, prepared.targets, options, out_dtype
        )
    shape = prepared.out_shape
    return TokenStats(loss.reshape(shape), lse.reshape(shape), entropy.reshape(shape))


class _StatsFunction(torch.autograd.Function):
    """Per-token loss, lse and entropy; backward recomputes from the saved logits."""

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        options: _Options,
        out_dtype: torch.dtype,
    ):
        weight, probs, ignore_index = options.weight, options.probs, options.ignore_index
        flat_logits, flat_targets = _flatten(logits, targets, probs)
        acc = accumulation_dtype(logits.dtype)
        safe, valid, _ = _row_scales(flat_targets, probs, weight, ignore_index, "none", acc)
        terms = cross_entropy_rows(flat_logits, safe, **options.rows, with_entropy=True)
        assert terms.entropy is not None  # asked for with with_entropy=True
        loss = terms.loss if valid is None else torch.where(valid, terms.loss, 0.0)
        ctx.options = options
        ctx.save_for_backward(logits, targets, terms.entropy)
        ctx.out_dtype = out_dtype
        return loss.to(out_dtype), terms.logsumexp.to(out_dtype), terms.entropy.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_loss, grad_lse, grad_entropy):
        logits, targets, entropy = ctx.saved_tensors
        weight, probs, ignore_index, label_smoothing, _, softcap, base = ctx.options
        nones = (None,) * 2
        flat_logits, flat_targets = _flatten(logits, targets, probs)
        if torch.is_grad_enabled():  # create_graph=True: a gradient to differentiate again
            stats = _composite_stats(flat_logits, flat_targets, ctx.options)
            outputs = [t.to(ctx.out_dtype) for t in stats]
            needs = (ctx.needs_input_grad[0], probs and ctx.needs_input_grad[1])
            grad_logits, grad_targets = differentiate(
                outputs, [grad_loss, grad_lse, grad_entropy], [logits, targets], needs
            )
            return grad_logits, grad_targets, *nones
        acc = accumulation_dtype(logits.dtype)
        safe, _, factor = _row_scales(flat_targets, probs, weight, ignore_index, "none", acc)
        grad_logits = grad_targets = None
        if ctx.needs_input_grad[0]:
            # factor masks the ignored tokens, whose loss gradient is 0 even for a NaN or
            # infinite upstream gradient, as with torch.
            if grad_loss is None:
                scale = torch.zeros_like(factor)
            else:
                scale = torch.where(factor > 0, factor * grad_loss.to(acc).reshape(-1), 0.0)
            grad = cross_entropy_rows(
                flat_logits.to(acc), safe, **ctx.options.rows, grad_scale=scale
            ).grad
            extra = _lse_entropy_grad(flat_logits, entropy, grad_lse, grad_entropy, softcap, base)
            if extra is not None:
                grad.add_(extra)
            grad_logits = _unflatten(grad.to(logits.dtype), logits.shape)
        if ctx.needs_input_grad[1] and probs:
            grad_targets = _probability_target_grad(
                flat_logits,
                factor,
                grad_loss if grad_loss is not None else torch.zeros_like(factor),
                weight,
                label_smoothing,
                softcap,
                base,
                "none",
            )
            grad_targets = _unflatten(grad_targets, targets.shape)
        return grad_logits, grad_targets, *nones


def _lse_entropy_grad(logits, entropy, grad_lse, grad_entropy, softcap, base):
    """Gradient of sum_i (g_lse_i lse_i + g_H_i H_i) with respect to the logits."""
    if grad_lse is None and grad_entropy is None:
        return None
    acc = accumulation_dtype(logits.dtype)
    x = logits.to(acc)
    tanh = torch.tanh(x / softcap) if softcap is not None else None
    z = softcap * tanh if softcap is not None else x
    log_p = torch.log_softmax(z, 1)
    p = log_p.exp()
    grad = torch.zeros_like(p)
    if grad_lse is not None:
        grad.add_(p * grad_lse.to(acc).reshape(-1, 1))
    if grad_entropy is not None:
        # dH/dz_c = -p_c (log p_c + H), H in nats; the entropy output is H / ln(base). A
        # class with p_c = 0 (a logit of -inf) contributes 0, not 0 * -inf.
        h_nats = entropy.to(acc) * math.log(base)
        g = grad_entropy.to(acc).reshape(-1, 1) / math.log(base)
        log_p = log_p.masked_fill_(p == 0, 0.0)
        grad.sub_(p * (log_p + h_nats.reshape(-1, 1)) * g)
    if tanh is not None:
        grad.mul_(1 - tanh.square())
    return grad


def _begin(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: Reduction,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    base: float,
    validate: bool,
) -> tuple[_Prepared, _Options, bool, torch.dtype]:
    """What :func:`cross_entropy` and :func:`cross_entropy_stats` do before computing:
    check the options and the inputs (their values with ``validate``, except inside a
    transform, which cannot read them), and return the prepared inputs, the options,
    whether plain torch operations compute the loss (see :func:`_composite.traced`) and
    the loss's dtype."""
    num_classes = _num_classes(logits)
    checked = validate and not functorch_active()  # a transform cannot read values
    label_smoothing = real_option(label_smoothing)  # type: ignore[assignment]  # checked next
    check_options(
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
        weight=weight,
        num_classes=num_classes,
        ignore_index=ignore_index,
        validate=checked,
        device=logits.device,
    )
    plain = traced(logits, targets, constants=(weight,))
    prepared = _prepare(logits, targets, ignore_index, checked, plain)
    options = _options(weight, prepared.probs, ignore_index, label_smoothing, z_loss, softcap, base)
    return prepared, options, plain, loss_dtype(logits.dtype, logits.device)


def _num_classes(logits: object) -> int:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"`logits` must be a torch.Tensor; got {type(logits).__name__}")
    if logits.dim() == 0:
        raise ValueError(
            "`logits` must have a class dimension, shape (C), (N, C) or (N, C, d1, ...); "
            "got a 0-d tensor"
        )
    return logits.shape[0] if logits.dim() == 1 else logits.shape[1]


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy as a module: a thin wrapper over :func:`cross_entropy`.

    Takes the same options as :func:`cross_entropy`, the first six in the order of
    ``torch.nn.CrossEntropyLoss``; ``weight`` is kept as a buffer so that ``.to(device)``
    moves it with the module.

    Args:
        weight: Class weights, shape (C,), or None.
        size_average: Deprecated, as in torch (use ``reduction``); see :func:`cross_entropy`.
        ignore_index: Target value to skip.
        reduce: Deprecated, as in torch (use ``reduction``); see :func:`cross_entropy`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: Smoothing in [0, 1].
        z_loss: Coefficient of ``lse**2`` per token.
        softcap: Soft-capping constant > 0, or None.
        base: Logarithm base (``math.e``: nats; 2: bits).
        validate: Check target and weight values on every call.

    Raises:
        ValueError: A bad option, at construction.
        TypeError: An option of the wrong type, at construction.

    Examples:
        >>> import torch
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
        >>> expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
        >>> bool(torch.allclose(loss_fn(logits, targets), expected))
        True
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        base: float = math.e,
        validate: bool = True,
    ) -> None:
        super().__init__()
        reduction = legacy_reduction(size_average, reduce, reduction)
        label_smoothing = real_option(label_smoothing)  # type: ignore[assignment]  # checked below
        if isinstance(weight, torch.Tensor) and weight.dim() != 1:
            raise ValueError(
                f"`weight` must be 1-D, one entry per class; got shape {tuple(weight.shape)}"
            )
        check_options(
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            weight=weight,
            num_classes=weight.shape[0]
            if isinstance(weight, torch.Tensor) and weight.dim() == 1
            else 0,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.base = base
        self.validate = validate

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` against ``targets``; see :func:`cross_entropy`."""
        return cross_entropy(
            logits,
            targets,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            base=self.base,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.base != math.e:
            parts.append(f"base={self.base}")
        return ", ".join(parts)


__all__ = ["CrossEntropyLoss", "TokenStats", "cross_entropy", "cross_entropy_stats"]
