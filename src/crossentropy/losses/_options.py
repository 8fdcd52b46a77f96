"""Validation of the options shared by every loss in :mod:`crossentropy.losses`.

One function, :func:`check_options`, checks the keyword options that ``cross_entropy``,
``linear_cross_entropy`` and ``vocab_parallel_cross_entropy`` have in common, so that each
loss rejects bad options with the same words. Every check here is on Python scalars or on
the shape and dtype of the class-weight tensor; the one value check on a tensor (the class
weights being nonnegative and finite) forces a device synchronisation and is skipped with
``validate=False``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings
from typing import TYPE_CHECKING, Literal, cast, get_args

import numpy as np
import torch

from crossentropy._tensors import readable, without_values

if TYPE_CHECKING:  # read by type checkers only (typing has these from Python 3.11)
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")

Reduction = Literal["mean", "sum", "none"]
"""The reductions every loss accepts: ``"mean"``, ``"sum"`` or ``"none"`` (per token)."""

REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def real_option(value: object) -> object:
    """A 0-d real tensor given for a number option (as torch takes ``label_smoothing``) as
    the Python float it holds; anything else as it is, for :func:`check_options` to judge."""
    if (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and not value.is_complex()
        and value.dtype != torch.bool
        and readable(value)
    ):
        return float(value)
    return value


def legacy_reduction(size_average: object, reduce: object, reduction: Reduction) -> Reduction:
    """The reduction, given torch's deprecated ``size_average`` and ``reduce`` arguments.

    When either is given they decide it as in torch (both true or unset: ``"mean"``,
    ``reduce`` true with ``size_average`` false: ``"sum"``, ``reduce`` false: ``"none"``),
    with a ``FutureWarning`` naming the ``reduction=`` that replaces them; otherwise
    ``reduction`` stands.

    Examples:
        >>> legacy_reduction(None, None, "sum")
        'sum'
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     legacy_reduction(False, None, "mean"), legacy_reduction(None, False, "mean")
        ('sum', 'none')
    """
    if size_average is None and reduce is None:
        return reduction
    # Read by truth value, as torch reads them (a NumPy or 0-d torch bool, 0, 1.0 alike).
    average = True if size_average is None else bool(size_average)
    keep = True if reduce is None else bool(reduce)
    chosen: Reduction = "mean" if average and keep else ("sum" if keep else "none")
    warnings.warn(
        f"`size_average` and `reduce` are deprecated, as in torch; pass reduction={chosen!r} "
        "instead",
        FutureWarning,
        stacklevel=3,
    )
    return chosen


def check_options(
    *,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    base: float,
    weight: torch.Tensor | None,
    num_classes: int,
    ignore_index: int,
    validate: bool = True,
    device: torch.device | None = None,
) -> None:
    """Check the shared loss options; return nothing or raise naming the option.

    The rules:

    - ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``.
    - ``label_smoothing`` is a real number in [0, 1].
    - ``z_loss`` is a real number, finite and >= 0.
    - ``softcap`` is None or a real number, finite and > 0.
    - ``base`` is a real number, finite, > 0 and != 1.
    - ``ignore_index`` is an int (a Python int or an integer scalar; not a bool).
    - ``weight`` is None or a floating-point tensor of shape (V,) with ``V = num_classes``;
      with ``validate=True`` its entries are also checked to be finite and >= 0 (this reads
      the tensor's values, a device synchronisation on accelerators).

    Args:
        reduction: How per-token losses are combined.
        label_smoothing: Smoothing weight epsilon of torch's label smoothing.
        z_loss: Coefficient of the ``logsumexp(logits)**2`` penalty per token.
        softcap: Soft-capping constant ``c`` in ``c * tanh(logits / c)``, or None.
        base: Logarithm base of the loss (``math.e`` for nats, 2 for bits).
        weight: Class weights, shape (V,), or None.
        num_classes: V, the number of classes (size of the class dimension of the logits).
        ignore_index: Target value whose tokens are skipped.
        validate: Whether to run the value check on ``weight`` that reads tensor values.
        device: The device ``weight`` must be on (the logits'), or None not to check.

    Raises:
        ValueError: An option with a bad value or a weight of the wrong shape, with a message
            "`name` must <rule>; got <seen>".
        TypeError: An option of the wrong type (a string base, a float ignore_index, a weight
            that is not a floating-point tensor).

    Examples:
        >>> check_options(reduction="mean", label_smoothing=0.1, z_loss=0.0, softcap=None,
        ...               base=2, weight=None, num_classes=10, ignore_index=-100)
        >>> check_options(reduction="avg", label_smoothing=0.0, z_loss=0.0, softcap=None,
        ...               base=2, weight=None, num_classes=10, ignore_index=-100)
        Traceback (most recent call last):
        ...
        ValueError: `reduction` must be one of 'mean', 'sum', 'none'; got 'avg'
    """
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        allowed = ", ".join(repr(r) for r in REDUCTIONS)
        raise ValueError(f"`reduction` must be one of {allowed}; got {reduction!r}")

    if not _is_real(label_smoothing):
        raise TypeError(
            f"`label_smoothing` must be a real number; got {type(label_smoothing).__name__}"
        )
    if not 0.0 <= float(label_smoothing) <= 1.0:  # also rejects NaN
        raise ValueError(f"`label_smoothing` must be in [0, 1]; got {label_smoothing!r}")

    if not _is_real(z_loss):
        raise TypeError(f"`z_loss` must be a real number; got {type(z_loss).__name__}")
    if not (math.isfinite(float(z_loss)) and float(z_loss) >= 0.0):
        raise ValueError(f"`z_loss` must be finite and >= 0; got {z_loss!r}")

    if softcap is not None:
        if not _is_real(softcap):
            raise TypeError(
                f"`softcap` must be None or a real number; got {type(softcap).__name__}"
            )
        if not (math.isfinite(float(softcap)) and float(softcap) > 0.0):
            raise ValueError(
                f"`softcap` must be None or a finite number > 0; got {softcap!r}; "
                "pass softcap=None to turn soft-capping off"
            )

    if not _is_real(base):
        raise TypeError(f"`base` must be a real number; got {type(base).__name__}")
    if not (math.isfinite(float(base)) and float(base) > 0.0 and float(base) != 1.0):
        raise ValueError(
            f"`base` must be finite, > 0 and != 1; got {base!r}; use math.e for nats, 2 for bits"
        )

    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"`ignore_index` must be an int; got {type(ignore_index).__name__}")

    if weight is not None:
        check_class_weight(weight, num_classes, validate=validate, device=device)


def check_class_weight(
    weight: object,
    num_classes: int,
    *,
    validate: bool,
    name: str = "weight",
    per: str = "one entry per class",
    device: torch.device | None = None,
) -> None:
    """Check a (V,) class-weight tensor: a floating-point tensor of shape (num_classes,),
    on ``device`` when one is given (the logits'), and, with ``validate`` (which reads its
    values), finite and nonnegative entries.

    ``name`` is the argument's name in the messages and ``per`` says what one entry is for.

    Raises:
        TypeError: Not a tensor, or not floating point.
        ValueError: The wrong shape or device, or (with ``validate``) a negative or
            non-finite entry.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"`{name}` must be None or a torch.Tensor; got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {weight.dtype}")
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"`{name}` must have shape ({num_classes},), {per}; got shape {tuple(weight.shape)}"
        )
    if device is not None and weight.device != device:
        raise ValueError(f"`{name}` must be on the logits' device {device}; got {weight.device}")
    if validate and not without_values(weight):
        good = torch.isfinite(weight) & (weight >= 0)
        if not bool(good.all()):
            raise ValueError(
                f"`{name}` must be finite and >= 0; got {weight[~good][0].item()!r} among its "
                "entries"
            )


def check_probability_ignore_index(ignore_index: int) -> None:
    """Class-probability targets have no class index to ignore: ``ignore_index`` must not
    name a class. Any negative value (the default -100, a project-wide -1) is accepted and
    has no effect, as with torch, which raises for a value >= 0."""
    if ignore_index >= 0:
        raise ValueError(
            "`ignore_index` must be negative with class-probability targets (there is no "
            f"class index to ignore; a negative value has no effect); got {ignore_index}"
        )


ZERO_ROW_NOTE = "a row of zeros is accepted too, as a token without a target"
"""The exception to "class probabilities sum to 1", for the messages of every loss."""


def probability_sums_off(sums: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Which tokens' probability sums break the rule: farther from 1 than the tolerance of
    ``dtype`` (:func:`probability_sum_tolerance`) and not exactly 0. A row of zeros is
    accepted as torch takes it: its cross-entropy term is 0 (label smoothing and z-loss
    still apply to it, and ``"mean"`` counts it)."""
    off = (sums - 1).abs() > probability_sum_tolerance(dtype)
    if off.device.type == "cpu" and not bool(off.any()):
        return off  # the common case, without the exemption's two passes
    return off & (sums != 0)


def check_probability_values(targets: torch.Tensor) -> None:
    """Class probabilities are finite and >= 0 (reads the values: a synchronisation)."""
    if targets.numel() == 0:
        return
    # One reduction tells the common case: NaN fails both comparisons, inf the second.
    low, high = torch.stack(torch.aminmax(targets)).tolist()
    if low >= 0 and high < math.inf:
        return
    bad = ~torch.isfinite(targets) | (targets < 0)
    if bool(bad.any()):
        raise ValueError(
            "`targets` must be class probabilities, finite and >= 0; "
            f"got {targets[bad][0].item()!r}"
        )


def probability_sum_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a token's class probabilities of ``dtype`` may sum: the square root of
    the dtype's machine epsilon, and never less than float32's (3.5e-4), so that
    probabilities computed in float32 and then cast to float64 are accepted.

    Examples:
        >>> probability_sum_tolerance(torch.float64) == probability_sum_tolerance(torch.float32)
        True
        >>> round(probability_sum_tolerance(torch.bfloat16), 4)
        0.0884
    """
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return math.sqrt(eps)


def probability_sum_message(total: float, dtype: torch.dtype) -> str:
    """A sum of class probabilities of ``dtype`` for an error message: its shortest exact
    digits in float64 for float64 probabilities, in float32 for the others (which are
    summed in float32 or wider), and its distance from 1 (a sum of 1.0000001 rounded to
    "1" would contradict the message).

    Examples:
        >>> probability_sum_message(1.0009999275207520, torch.float32)
        '1.0009999 (off by 0.001)'
        >>> probability_sum_message(1 + 2**-40, torch.float64)
        '1.0000000000009095 (off by 9.1e-13)'
    """
    value = float(total)
    shown = repr(value) if dtype == torch.float64 else str(np.float32(value))
    return f"{shown} (off by {value - 1.0:.2g})"


def loss_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a loss is returned in for inputs of ``dtype`` on ``device``: the inputs'
    own, except that under autocast (``torch.autocast`` enabled for the device) a half
    dtype gives float32, as torch's ``cross_entropy`` does there (autocast runs it in
    float32). The losses compute in float32 or float64 either way."""
    half = dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if half and autocast_enabled(device) else dtype


def autocast_inputs(*tensors: Unpack[_Ts]) -> tuple[Unpack[_Ts]]:
    """The head's inputs as ``F.linear`` would take them under autocast.

    When ``torch.autocast`` is enabled for the first tensor's device, floating tensors
    (float32 or half) are cast to the autocast dtype (a differentiable cast: gradients
    return in each input's own dtype), so that bfloat16 activations meet float32 master
    weights as they do in an autocast ``nn.Linear``. float64 inputs, non-tensors and
    everything outside autocast are returned unchanged.
    """
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None or not autocast_enabled(first.device):
        return tensors
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tensors):
        return tensors
    try:
        dtype = torch.get_autocast_dtype(first.device.type)
    except AttributeError:  # torch < 2.4
        cpu = first.device.type == "cpu"
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    # A tensor comes back as a tensor and anything else as it is, each in its place.
    return cast(
        "tuple[Unpack[_Ts]]",
        tuple(
            t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for t in tensors
        ),
    )


def no_autocast(device: torch.device):
    """A context in which autocast is off for ``device`` (a no-op where it is off already):
    the losses' own products keep the dtypes they were designed for."""
    if autocast_enabled(device):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def without_autocast(sweep):
    """Decorate a function whose first argument is a tensor so that it runs with autocast
    off on that tensor's device (see :func:`no_autocast`)."""

    @functools.wraps(sweep)
    def wrapper(first, *args, **kwargs):
        with no_autocast(first.device):
            return sweep(first, *args, **kwargs)

    return wrapper


def autocast_enabled(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is enabled for ``device``'s type in this thread."""
    try:
        return bool(torch.is_autocast_enabled(device.type))
    except TypeError:  # torch < 2.4 takes no device type
        if device.type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())
    except RuntimeError:  # a device type autocast does not know (meta, ...): never on
        return False


__all__ = [
    "REDUCTIONS",
    "ZERO_ROW_NOTE",
    "Reduction",
    "autocast_enabled",
    "autocast_inputs",
    "check_class_weight",
    "check_options",
    "check_probability_ignore_index",
    "check_probability_values",
    "legacy_reduction",
    "loss_dtype",
    "no_autocast",
    "probability_sum_message",
    "probability_sum_tolerance",
    "probability_sums_off",
]
