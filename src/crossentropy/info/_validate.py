"""Input checks for the information measures, reusable by the rest of the package.

Every check raises ``ValueError`` (bad values or shapes) or ``TypeError`` (not real numbers)
with the wording "`name` must <rule>; got <what was seen>", plus the fix where it helps.
Nothing here changes a value: a distribution that does not sum to 1 is rejected, never
normalised behind the caller's back.
"""

from __future__ import annotations

import contextlib
import decimal
import math
import numbers
from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "as_float_array",
    "as_float_pair",
    "broadcast_shape",
    "check_axis",
    "check_base",
    "check_distribution",
    "check_flag",
    "check_keepdims",
    "check_outcomes",
    "check_probabilities",
    "log_function",
    "promote_pair",
    "sum_tolerance",
]


def sum_tolerance(dtype: Any) -> float:
    """How far from 1 a distribution's sum may be in ``dtype``: the square root of its epsilon.

    That is 1.5e-8 for float64, 3.5e-4 for float32, 0.031 for float16 and 0.088 for
    bfloat16: far above the rounding of a sum computed in the dtype, far below any real
    mistake (0.9 instead of 1) in the wider types. A bfloat16 distribution rounded entry by
    entry from an exact one sums to 1 - 2^-8 or 1 + 2^-7 often enough (one softmax in a
    hundred over a few classes) that a tighter bound would refuse it, and
    :func:`normalize` in bfloat16 could not mend it.
    """
    name = str(dtype).rsplit(".", 1)[-1]
    if name == "bfloat16":  # no NumPy twin; 8 significant bits
        return math.sqrt(2.0**-7)
    return math.sqrt(float(np.finfo(_numpy_dtype(dtype)).eps))


def _numpy_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype matching a NumPy or torch floating dtype (by its name)."""
    if isinstance(dtype, np.dtype):
        return dtype
    name = str(dtype).rsplit(".", 1)[-1]
    try:
        return np.dtype(name)
    except TypeError:  # e.g. torch.bfloat16: no NumPy twin
        return np.dtype(np.float32) if "bfloat16" in name else np.dtype(np.float64)


def _describe(x: Any) -> str:
    """A short description of a rejected input for an error message."""
    if isinstance(x, np.ndarray):
        return f"an array of dtype {x.dtype}"
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        return f"{type(x).__name__} of dtype {dtype}"
    text = repr(x)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(x).__name__} {text}"


def _default_float(xp: Any, x: Any) -> Any:
    """The library's default floating dtype: float64 for NumPy, the default dtype for torch."""
    if array_api_compat.is_torch_array(x):
        import torch

        return torch.get_default_dtype()
    try:
        return xp.__array_namespace_info__().default_dtypes()["real floating"]
    except (AttributeError, KeyError, TypeError):
        return xp.float64


def as_float_array(x: Any, name: str, *, like: Any = None) -> tuple[ModuleType, Any]:
    """Convert ``x`` to a real floating array of its own kind; returns ``(namespace, array)``.

    Arrays (NumPy, torch, any array-API library) keep their kind, device and floating
    dtype. Python numbers and sequences become NumPy arrays, or arrays of the kind,
    device and floating dtype of ``like`` when it is given (so that a list pairs with a
    float32 torch tensor as a float32 tensor); numbers of any real type (``int``,
    ``float``, ``Fraction``, ``Decimal``), also in a NumPy object array, are read as
    float64 first. Integer and
    boolean input is promoted to the library's default float (float64 for NumPy, torch's
    default dtype for torch).

    Raises:
        TypeError: ``x`` is not made of real numbers (strings, objects, complex numbers),
            is a NumPy masked array (its mask would be lost), or is a sparse torch tensor.
        ValueError: ``x`` is a ragged sequence.
    """
    if isinstance(x, (str, bytes)):
        raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(x)}")
    if array_api_compat.is_torch_array(x) and str(getattr(x, "layout", "")) != "torch.strided":
        raise TypeError(
            f"`{name}` must be a dense tensor; got a sparse tensor (layout {x.layout}); "
            f"pass `{name}.to_dense()`"
        )
    if isinstance(x, np.ma.MaskedArray):
        # Some NumPy functions honour the mask and others drop it: the checks and the
        # measure would not see the same numbers.
        raise TypeError(
            f"`{name}` must be a plain array: NumPy masked arrays are not supported; got a "
            f"masked array of dtype {x.dtype}; pass `{name}.filled(0)` to count the masked "
            f"entries as 0, or `{name}.compressed()` to drop them"
        )
    if isinstance(x, np.ndarray) and x.dtype.kind == "O":  # an object array of Fractions
        xp = array_api_compat.array_namespace(x)
        array = _from_sequence(x, name)
    elif array_api_compat.is_array_api_obj(x):
        xp = array_api_compat.array_namespace(x)
        array = x
    elif like is not None:
        xp = array_api_compat.array_namespace(like)
        array = _from_sequence(x, name)
        if xp.isdtype(like.dtype, "real floating"):
            array = xp.asarray(array, dtype=like.dtype, device=array_api_compat.device(like))
        else:
            array = xp.asarray(array, device=array_api_compat.device(like))
    else:
        xp = array_api_compat.array_namespace(np.empty(0))
        array = _from_sequence(x, name)
    dtype = array.dtype
    if isinstance(dtype, np.dtype) and dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(x)}")
    if xp.isdtype(dtype, "real floating"):
        return xp, array
    if xp.isdtype(dtype, ("integral", "bool")):
        return xp, xp.astype(array, _default_float(xp, array))
    raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(x)}")


def _from_sequence(x: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(x)
    except ValueError:
        raise ValueError(
            f"`{name}` must be a rectangular array of numbers; got a ragged sequence "
            "(rows of different lengths)"
        ) from None
    except TypeError as error:
        raise TypeError(
            f"`{name}` must be an array of real numbers; got {_describe(x)} ({error})"
        ) from None
    if array.dtype.kind == "O" and array.size and all(_is_real(v) for v in array.flat):
        # Fractions, Decimals and integers beyond int64 are real numbers too: as float64.
        try:
            array = array.astype(np.float64)
        except OverflowError:
            raise ValueError(
                f"`{name}` must hold numbers within the float64 range (up to about 1.8e308); "
                f"got {_describe(x)}"
            ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be an array of real numbers; got {_describe(x)}")
    return array


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, decimal.Decimal))


def as_float_pair(
    p: Any, q: Any, names: tuple[str, str] = ("p", "q"), *, promote: bool = True
) -> tuple[Any, Any, Any]:
    """Convert two inputs to floating arrays of one kind and one dtype: ``(xp, p, q)``.

    Python sequences take the kind of the other argument when it is an array. Two arrays
    of different kinds (a NumPy array and a torch tensor) are rejected rather than moved.
    With ``promote=False`` each keeps its own floating dtype (so that each can be checked
    against its own dtype's tolerance; :func:`promote_pair` then gives the common one).
    """
    p_is_array = array_api_compat.is_array_api_obj(p)
    q_is_array = array_api_compat.is_array_api_obj(q)
    xp, p_array = as_float_array(p, names[0], like=q if q_is_array and not p_is_array else None)
    _, q_array = as_float_array(q, names[1], like=p_array if not q_is_array else None)
    try:
        xq = array_api_compat.array_namespace(q_array)
    except TypeError:  # pragma: no cover - array_namespace accepts any single array
        xq = None
    if xq is not xp:
        raise TypeError(
            f"`{names[0]}` and `{names[1]}` must be arrays of one kind; got "
            f"{type(p_array).__module__}.{type(p_array).__name__} and "
            f"{type(q_array).__module__}.{type(q_array).__name__}; convert one to the other's"
            " kind first"
        )
    if promote:
        p_array, q_array = promote_pair(xp, p_array, q_array)
    return xp, p_array, q_array


def promote_pair(xp: Any, p: Any, q: Any) -> tuple[Any, Any]:
    """``p`` and ``q`` in their common floating dtype (unchanged where they share one)."""
    if p.dtype == q.dtype:
        return p, q
    common = xp.result_type(p.dtype, q.dtype)
    return xp.astype(p, common), xp.astype(q, common)


def broadcast_shape(p: Any, q: Any, names: tuple[str, str] = ("p", "q")) -> tuple[int, ...]:
    """The shape ``p`` and ``q`` broadcast to, or a ``ValueError`` naming both shapes."""
    shape_p, shape_q = tuple(p.shape), tuple(q.shape)
    try:
        return tuple(np.broadcast_shapes(shape_p, shape_q))
    except ValueError:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have shapes that broadcast together; got "
            f"{shape_p} and {shape_q}; give them the same length along the axis of outcomes"
        ) from None


def check_axis(axis: Any, ndim: int, name: str = "p", *, subject: str | None = None) -> int:
    """Return ``axis`` as a non-negative index into ``ndim`` dimensions, or raise.

    Raises:
        TypeError: ``axis`` is not an integer.
        ValueError: ``axis`` is outside ``[-ndim, ndim - 1]`` (or ``name`` is a scalar).
    """
    subject = f"`{name}`" if subject is None else subject
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"`axis` must be an integer; got {_describe(axis)}")
    axis = int(axis)
    if ndim == 0:
        raise ValueError(
            f"`axis` must index an axis of outcomes, but {subject} is a scalar (0 dimensions); "
            f"got axis={axis}; pass the distribution as a 1-D array"
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`axis` must be in [{-ndim}, {ndim - 1}] for {subject} with {ndim} "
            f"dimension{'s' if ndim != 1 else ''}; got {axis}"
        )
    return axis % ndim


def check_keepdims(keepdims: Any) -> bool:
    """Return ``keepdims`` as a bool after checking it is one (``True``/``False``).

    Raises:
        TypeError: ``keepdims`` is not a bool (a string such as ``"no"`` would be truthy).
    """
    return check_flag(keepdims, "keepdims")


def check_flag(value: Any, name: str) -> bool:
    """Return the option ``name`` as a bool after checking it is one (``True``/``False``).

    A NumPy bool is one. The message names a refused value's type in full
    (``numpy.int64``, not ``int64``; ``str``), so that it never reads "got bool".

    Raises:
        TypeError: ``value`` is not a bool (a string such as ``"no"`` would be truthy).
    """
    if not isinstance(value, (bool, np.bool_)):
        kind = type(value)
        named = kind.__qualname__
        if kind.__module__ != "builtins":
            named = f"{kind.__module__}.{named}"
        raise TypeError(f"`{name}` must be True or False; got {named}")
    return bool(value)


def check_base(base: Any) -> float:
    """Return ``base`` as a float after checking it is finite, positive and not 1.

    A Python or NumPy real number, or a 0-d array of a real dtype (NumPy, torch, any
    array-API library; read with ``float()``).

    Raises:
        TypeError: ``base`` is not a real number (a bool, a complex number, an array with
            dimensions).
        ValueError: ``base <= 0``, ``base == 1``, or ``base`` is not finite.
    """
    if _is_real_scalar_array(base):
        # A tensor on the meta device has no value: it stays, and is refused below.
        with contextlib.suppress(RuntimeError, TypeError, ValueError):
            base = float(base)
    if isinstance(base, (str, bytes, bool)) or not isinstance(base, numbers.Real):
        shape = getattr(base, "shape", None)
        shown = f" of shape {tuple(shape)}" if shape else ""
        raise TypeError(
            f"`base` must be a real number (2 for bits, math.e for nats); got "
            f"{_describe(base)}{shown}"
        )
    value = float(base)
    if not (math.isfinite(value) and value > 0 and value != 1):
        raise ValueError(
            f"`base` must be a finite number > 0 and != 1 (2 for bits, math.e for nats); "
            f"got {base!r}"
        )
    return value


def _is_real_scalar_array(x: Any) -> bool:
    """Whether ``x`` is a 0-d array (not a NumPy scalar) of an integer or real floating dtype."""
    if isinstance(x, np.generic) or not array_api_compat.is_array_api_obj(x):
        return False
    if getattr(x, "ndim", None) != 0:
        return False
    try:
        xp = array_api_compat.array_namespace(x)
        return bool(xp.isdtype(x.dtype, ("integral", "real floating")))
    except (TypeError, ValueError):
        return False


def log_function(xp: Any, base: float) -> Callable[[Any], Any]:
    """``log_base`` as an elementwise function of ``xp`` arrays (exact ``log2`` for base 2)."""
    if base == 2:
        return xp.log2
    if base == math.e:
        return xp.log
    scale = 1.0 / math.log(base)
    return lambda x: xp.log(x) * scale


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a small array, for error messages only (bfloat16, which NumPy lacks,
    is widened to float32 exactly)."""
    if array_api_compat.is_torch_array(x):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy()
    return np.asarray(x)


def _dtype_name(dtype: Any) -> str:
    """The dtype's own name for messages: ``float32``, ``bfloat16``."""
    return str(dtype).rsplit(".", 1)[-1]


def _where(flat_mask: np.ndarray, shape: tuple[int, ...]) -> str:
    """The index of the first true entry of ``flat_mask`` in an array of ``shape``."""
    index = np.unravel_index(int(np.argmax(flat_mask)), shape) if shape else ()
    return str(tuple(int(i) for i in index))


def _check_entries(xp: Any, array: Any, name: str, *, upper: float | None) -> None:
    """Entries must be finite (no NaN, no inf) and at least 0 (and at most ``upper``)."""
    if math.prod(array.shape) == 0:
        return
    lowest = xp.min(array)
    highest = xp.max(array)
    ok_low = bool(lowest >= 0)  # False for NaN too
    ok_high = bool(highest <= upper) if upper is not None else bool(highest < math.inf)
    if ok_low and ok_high:
        return
    values = _to_numpy(array)
    shape = tuple(values.shape)
    flat = values.reshape(-1)
    nan = np.isnan(flat)
    if nan.any():
        raise ValueError(
            f"`{name}` must contain no NaN; got {int(nan.sum())} NaN "
            f"entr{'y' if nan.sum() == 1 else 'ies'}, the first at index {_where(nan, shape)}"
        )
    inf = np.isinf(flat)
    if inf.any():
        raise ValueError(
            f"`{name}` must contain only finite numbers; got {flat[inf][0]} at index "
            f"{_where(inf, shape)}"
        )
    negative = flat < 0
    if negative.any():
        raise ValueError(
            f"`{name}` must be non-negative; got {flat[negative][0]:.10g} at index "
            f"{_where(negative, shape)} ({int(negative.sum())} negative in all)"
        )
    above = flat > upper
    # str() gives the shortest text that reads back as the value: 1.0000000000000002, not
    # a rounded 1 that looks allowed.
    raise ValueError(
        f"`{name}` must contain probabilities in [0, 1]; got {flat[above][0]!s} at index "
        f"{_where(above, shape)}"
    )


def check_probabilities(array: Any, name: str = "p") -> Any:
    """Check that every entry is a probability in [0, 1] (no NaN, no inf); returns the array.

    Accepts whatever :func:`as_float_array` accepts and returns the converted array.
    """
    xp, array = as_float_array(array, name)
    _check_entries(xp, array, name, upper=1.0)
    return array


def check_distribution(p: Any, name: str = "p", axis: int = -1) -> Any:
    """Check that ``p`` holds probability distributions along ``axis``; returns it as floats.

    The rules: at least one outcome along ``axis``; every entry finite and non-negative;
    every sum along ``axis`` within :func:`sum_tolerance` of 1. The input is converted
    with :func:`as_float_array` (same kind and device; integers become floats) and is
    otherwise returned unchanged.

    Args:
        p: the distributions, any shape; ``axis`` indexes the outcomes.
        name: the argument's name, used in the error message.
        axis: the axis of outcomes.

    Returns:
        ``p`` as a floating array of its own kind.

    Raises:
        TypeError: ``p`` is not made of real numbers, or ``axis`` is not an integer.
        ValueError: ``p`` breaks one of the rules, or ``axis`` is out of range.

    Examples:
        >>> from crossentropy.info._validate import check_distribution
        >>> check_distribution([0.5, 0.5]).tolist()
        [0.5, 0.5]
        >>> check_distribution([0.5, 0.6])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `p` must sum to 1 along axis -1 (within 1.49e-08 for float64); got ... 1.1...
    """
    xp, array = as_float_array(p, name)
    validate_distribution(xp, array, name, check_axis(axis, array.ndim, name), axis_label=axis)
    return array


def check_outcomes(array: Any, name: str, axis: int, *, axis_label: int | None = None) -> None:
    """The shape rule of a distribution: at least one outcome along ``axis`` (non-negative)."""
    if array.shape[axis] == 0:
        label = axis - array.ndim if axis_label is None else axis_label
        raise ValueError(
            f"`{name}` must have at least one outcome along axis {label}; got shape "
            f"{tuple(array.shape)}"
        )


def validate_distribution(
    xp: Any, array: Any, name: str, axis: int, *, axis_label: int | None = None
) -> None:
    """:func:`check_distribution` on an already converted array and a non-negative ``axis``."""
    label = axis - array.ndim if axis_label is None else axis_label
    check_outcomes(array, name, axis, axis_label=label)
    if math.prod(array.shape) == 0:
        return
    _check_entries(xp, array, name, upper=None)
    sums = xp.sum(array, axis=axis)
    tolerance = sum_tolerance(array.dtype)
    deviation = xp.abs(sums - 1)
    if bool(xp.max(deviation) <= tolerance):
        return
    deviation_np = _to_numpy(deviation)
    sums_np = _to_numpy(sums)
    worst = np.unravel_index(int(np.argmax(deviation_np)), deviation_np.shape)
    where = ""
    if deviation_np.ndim:
        bad = int(np.sum(~(deviation_np <= tolerance)))
        where = (
            f" at index {tuple(int(i) for i in worst)} ({bad} of {deviation_np.size} sums are off)"
        )
    raise ValueError(
        f"`{name}` must sum to 1 along axis {label} (within {tolerance:.3g} for "
        f"{_dtype_name(array.dtype)}); got a sum of {float(sums_np[worst]):.10g}{where}; "
        f"normalise explicitly with `crossentropy.info.normalize({name})` if the values are weights"
    )
