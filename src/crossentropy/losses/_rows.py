"""The compiled row kernel: a CPU block's softmax statistics and gradient in one call.

:func:`crossentropy.losses._kernel.cross_entropy_rows` forms a block's loss and gradient
from torch operations, a slice of rows at a time: a max, a gather, the softmax, a max of
the softmax, the coefficients, and for half-precision logits a float32 copy in and a
copy out, each a pass over the slice with its own call and, for a block of 512 rows of
1000 classes, about as much fixed cost as work. This kernel, ``_rows.c``, makes the same
numbers in three vectorised passes over each row while the row is in cache (its top
comment gives them), reading bfloat16 and float16 logits in place and writing the
gradient in their dtype.

It serves the common case: rows (n, V) of float32, bfloat16 or float16 logits on the CPU
with class-index targets, with any class weights, label smoothing, z-loss and base, and
no soft-capping or entropy; and blocks (n, V, S) of the same, an image's classes at each
of its S pixels (segmentation's (N, C, H, W) logits), vectorised across the pixels.
Everything else, and float64, keeps the torch operations.

The kernel is compiled at first use by the system's C compiler (``$CC``, else ``cc``)
with ``-O3 -march=native -fopenmp`` into ``$CROSSENTROPY_CACHE`` (default
``~/.cache/crossentropy``), as the fused head's helper is, and checked against the torch
operations on a block with every term before it is used. Without a compiler, or where
the check fails, the torch operations run and :func:`unavailable_reason` says why;
:data:`NATIVE` set to ``"off"`` asks for them.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path
from typing import NamedTuple

import torch

from crossentropy import _build

NATIVE = "auto"
"""Whether CPU blocks go to the compiled kernel where it runs (``"auto"``) or always to
the torch operations (``"off"``)."""

DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""The logits' dtypes the kernel reads, with its codes for them."""

_SOURCE = Path(__file__).with_name("_rows.c")
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
_reason: str | None = None


class _Args(ctypes.Structure):
    """``ce_rows_args`` of ``_rows.c``, field for field."""

    _fields_ = [
        ("n", ctypes.c_int64),
        ("V", ctypes.c_int64),
        ("S", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
        *((name, ctypes.c_void_p) for name in ("z", "y", "wclass")),
        *((name, ctypes.c_void_p) for name in ("row_max", "log_sum", "z_target", "w_dot_z")),
        *((name, ctypes.c_void_p) for name in ("grad", "pcoef", "zcoef", "tcoef", "scoef")),
        *((name, ctypes.c_float) for name in ("pcoef_all", "zcoef_all", "tcoef_all", "scoef_all")),
        ("t", ctypes.c_void_p),
        ("tdtype", ctypes.c_int64),
        *((name, ctypes.c_float) for name in ("keep", "add", "zl2")),
        ("q_sum", ctypes.c_void_p),
        ("q_dot_z", ctypes.c_void_p),
        ("entropy", ctypes.c_void_p),
    ]


class RowStats(NamedTuple):
    """Per-row results of :func:`rows` (n,), float32: ``row_max`` m, ``log_sum`` ``log
    sum_v exp(z_v - m)``, ``z_target`` the target's logit, ``w_dot_z`` ``sum_v w_v z_v``
    and ``entropy`` the entropy of ``softmax(z)`` in nats (each None unless asked for)."""

    row_max: torch.Tensor
    log_sum: torch.Tensor
    z_target: torch.Tensor
    w_dot_z: torch.Tensor | None
    entropy: torch.Tensor | None = None


@functools.cache
def _library() -> ctypes.CDLL | None:
    global _reason
    library, _reason = _build.load_helper(
        _SOURCE, _FLAGS, _build.WITH_LIBMVEC, name="rows", what="the row kernel", prepare=_prepare
    )
    return library


def _prepare(library: ctypes.CDLL) -> None:
    library.ce_rows.argtypes = [ctypes.POINTER(_Args)]
    library.ce_rows.restype = ctypes.c_int64
    _self_check(library)


def available() -> bool:
    """Whether CPU blocks go to the compiled kernel (:data:`NATIVE` allows it and it runs)."""
    if NATIVE not in ("auto", "off"):
        raise ValueError(f"NATIVE must be 'auto' or 'off'; got {NATIVE!r}")
    return NATIVE == "auto" and _library() is not None


def unavailable_reason() -> str | None:
    """Why the compiled kernel is not in use (None where it is, or not yet looked for)."""
    return _reason


def _coefficient(
    value: torch.Tensor | float, rows: tuple[int, ...]
) -> tuple[torch.Tensor | None, float]:
    """A gradient coefficient as the kernel takes it: a float32 array of one value per row
    (per position of a row), or a number for every row."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return None, float(value)
        return value.to(torch.float32).expand(rows).contiguous(), 0.0
    return None, float(value)


def _give_grad(args: _Args, grad: torch.Tensor | None, logits: torch.Tensor) -> None:
    """Points ``args`` at the gradient buffer, which the callers make in the logits' shape,
    dtype and layout (an internal invariant: the C code writes it through a pointer)."""
    assert grad is not None
    assert grad.shape == logits.shape
    assert grad.dtype == logits.dtype
    assert grad.is_contiguous()
    args.grad = grad.data_ptr()


def _run(library: ctypes.CDLL, args: _Args) -> int:
    """``ce_rows`` on ``args``: -1, or the first row whose class index is out of range;
    MemoryError where a row's buffer could not be allocated."""
    status = int(library.ce_rows(ctypes.byref(args)))
    if status == -2:
        raise MemoryError("the row kernel could not allocate a row's buffer")
    return status


def rows(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    smoothing: bool,
    coefficients: tuple[
        torch.Tensor | float, torch.Tensor | float, torch.Tensor | float, torch.Tensor | float
    ]
    | None,
    grad: torch.Tensor | None,
    entropy: bool = False,
    library: ctypes.CDLL | None = None,
) -> RowStats:
    """The kernel on a contiguous CPU block ``logits`` of a dtype in :data:`DTYPES`, (n, V)
    or (n, V, S) (the classes along dimension 1, each of the S positions a row of its
    own), with targets ``y`` of shape (n,) or (n, S) in [0, V) (checked by the caller; one
    out of range raises IndexError): the rows' statistics, shaped like ``y``, and, given
    ``coefficients`` ``(p_coef, target_coef, z_coef, smooth_coef)`` (see
    :func:`crossentropy.losses._kernel.index_grad_coefficients`), the gradient written
    into ``grad`` (the logits' shape and dtype; it may be ``logits`` itself).
    ``weight`` is (V,) or None; ``smoothing`` asks for ``sum_v w_v z_v``, ``entropy`` (rows
    only) for the entropy of the prediction."""
    found = library or _library()
    if found is None:
        raise RuntimeError(f"the row kernel is unavailable: {unavailable_reason()}")
    n, num_classes = logits.shape[:2]
    positions = math.prod(logits.shape[2:])
    shape = (n, *logits.shape[2:])
    assert logits.dim() in (2, 3)
    assert logits.is_contiguous()
    assert logits.dtype in DTYPES
    assert tuple(y.shape) == shape
    y = y.to(torch.int64).contiguous()
    w = None if weight is None else weight.to(torch.float32).contiguous()
    assert not (entropy and positions != 1)  # the entropy of images: not formed here
    stats = RowStats(
        torch.empty(shape),
        torch.empty(shape),
        torch.empty(shape),
        torch.empty(shape) if smoothing else None,
        torch.empty(shape) if entropy else None,
    )
    args = _Args(
        n=n,
        V=num_classes,
        S=positions,
        dtype=DTYPES[logits.dtype],
        z=logits.data_ptr(),
        y=y.data_ptr(),
        wclass=None if w is None else w.data_ptr(),
        row_max=stats.row_max.data_ptr(),
        log_sum=stats.log_sum.data_ptr(),
        z_target=stats.z_target.data_ptr(),
        w_dot_z=None if stats.w_dot_z is None else stats.w_dot_z.data_ptr(),
        entropy=None if stats.entropy is None else stats.entropy.data_ptr(),
    )
    keep = []
    if coefficients is not None:
        _give_grad(args, grad, logits)
        for name, value in zip(("pcoef", "tcoef", "zcoef", "scoef"), coefficients, strict=True):
            column, number = _coefficient(value, shape)
            if column is not None:
                keep.append(column)
                setattr(args, name, column.data_ptr())
            setattr(args, f"{name}_all", number)
    bad = _run(found, args)
    if bad >= 0:  # the callers check targets; this keeps an unchecked call from lying
        raise IndexError(
            f"target {int(y.reshape(-1)[bad])} is out of bounds for {num_classes} classes"
        )
    return stats


class ProbabilityStats(NamedTuple):
    """Per-row results of :func:`probability_rows` (n,), float32: ``row_max`` m,
    ``log_sum`` ``log sum_v exp(z_v - m)``, ``q_sum`` ``sum_v q_v`` and ``q_dot_z`` ``sum_v
    q_v z_v`` for the smoothed, weighted targets q, and ``entropy`` the entropy of
    ``softmax(z)`` in nats (None unless asked for)."""

    row_max: torch.Tensor
    log_sum: torch.Tensor
    q_sum: torch.Tensor
    q_dot_z: torch.Tensor
    entropy: torch.Tensor | None = None


def probability_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    label_smoothing: float,
    z_loss: float,
    scale: torch.Tensor | float | None,
    grad: torch.Tensor | None,
    entropy: bool = False,
    library: ctypes.CDLL | None = None,
) -> ProbabilityStats:
    """The kernel on a contiguous CPU block ``logits`` (n, V) of a dtype in :data:`DTYPES`
    with class-probability ``targets`` (n, V), contiguous, of the logits' dtype or float32:
    with ``q = weight * ((1 - eps) targets + eps / V)``, the rows' statistics, and, given
    ``scale`` (the gradient's factor per row, a number or (n,)), the gradient ``scale *
    ((q_sum + 2 z_loss lse) softmax(z) - q)`` written into ``grad`` (the logits' shape and
    dtype; it may be ``logits`` itself); ``entropy`` asks for the entropy of the
    prediction."""
    found = library or _library()
    if found is None:
        raise RuntimeError(f"the row kernel is unavailable: {unavailable_reason()}")
    n, num_classes = logits.shape
    assert logits.is_contiguous()
    assert logits.dtype in DTYPES
    assert targets.shape == logits.shape
    assert targets.is_contiguous()
    assert targets.dtype in (logits.dtype, torch.float32)
    w = None if weight is None else weight.to(torch.float32).contiguous()
    eps = float(label_smoothing)
    stats = ProbabilityStats(
        torch.empty(n),
        torch.empty(n),
        torch.empty(n),
        torch.empty(n),
        torch.empty(n) if entropy else None,
    )
    args = _Args(
        n=n,
        V=num_classes,
        S=1,
        dtype=DTYPES[logits.dtype],
        z=logits.data_ptr(),
        wclass=None if w is None else w.data_ptr(),
        row_max=stats.row_max.data_ptr(),
        log_sum=stats.log_sum.data_ptr(),
        t=targets.data_ptr(),
        tdtype=DTYPES[targets.dtype],
        keep=1.0 - eps,
        add=eps / num_classes,
        zl2=2.0 * float(z_loss),
        q_sum=stats.q_sum.data_ptr(),
        q_dot_z=stats.q_dot_z.data_ptr(),
        entropy=None if stats.entropy is None else stats.entropy.data_ptr(),
    )
    keep = None
    if scale is not None:
        _give_grad(args, grad, logits)
        keep, args.pcoef_all = _coefficient(scale, (n,))
        if keep is not None:
            args.pcoef = keep.data_ptr()
    _run(found, args)
    return stats


def _self_check(library: ctypes.CDLL) -> None:
    """A block with every term in each dtype, against float64 torch: a miscompiled kernel
    must not produce numbers."""
    generator = torch.Generator().manual_seed(0)
    n, num_classes = 6, 2 * 1024 + 37  # rows of three blocks, the last one short
    z = torch.randn(n, num_classes, generator=generator, dtype=torch.float64) * 3
    y = torch.randint(0, num_classes, (n,), generator=generator)
    y[0] = num_classes - 1
    w = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.5
    pc = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    tc, zc, sc = 0.75, 0.125, 0.25
    for dtype in DTYPES:
        logits = z.to(dtype)
        z64 = logits.double()
        grad = torch.empty_like(logits)
        stats = rows(
            logits, y, weight=w, smoothing=True, coefficients=(pc, tc, zc, sc), grad=grad,
            library=library,
        )  # fmt: skip
        lse = torch.logsumexp(z64, 1)
        expected_grad = (
            (pc + zc * lse)[:, None] * torch.softmax(z64, 1)
            - tc * torch.nn.functional.one_hot(y, num_classes)
            - sc * w
        )
        checks = {
            "log-sum-exp": ((stats.row_max + stats.log_sum).double(), lse),
            "target logit": (stats.z_target.double(), z64.gather(1, y[:, None])[:, 0]),
            "weighted sum": (stats.w_dot_z.double(), z64 @ w),  # type: ignore[union-attr]
            "gradient": (grad.double(), expected_grad.to(dtype).double()),
        }
        # the same rows as 3 positions of 2 images, (2, V, 3)
        images = logits.reshape(2, 3, num_classes).transpose(1, 2).contiguous()
        image_grad = torch.empty_like(images)
        image_stats = rows(
            images, y.reshape(2, 3), weight=w, smoothing=True,
            coefficients=(pc.reshape(2, 3), tc, zc, sc), grad=image_grad, library=library,
        )  # fmt: skip
        checks["log-sum-exp, images"] = (
            (image_stats.row_max + image_stats.log_sum).double().reshape(-1),
            lse,
        )
        checks["gradient, images"] = (
            image_grad.transpose(1, 2).reshape(n, num_classes).double(),
            expected_grad.to(dtype).double(),
        )
        # probability targets, smoothed and weighted, with a z-loss
        t = torch.softmax(z64 / 2, 1)
        t[1] = 0.0  # a masked row: no target mass at all
        prob_grad = torch.empty_like(logits)
        prob = probability_rows(
            logits, t.float(), weight=w, label_smoothing=0.25, z_loss=0.125, scale=pc,
            grad=prob_grad, library=library,
        )  # fmt: skip
        q = w * (0.75 * t.float().double() + 0.25 / num_classes)
        checks["probability sums"] = (prob.q_sum.double(), q.sum(1))
        checks["probability dot"] = (prob.q_dot_z.double(), (q * z64).sum(1))
        checks["probability gradient"] = (
            prob_grad.double(),
            (pc[:, None] * ((q.sum(1) + 0.25 * lse)[:, None] * torch.softmax(z64, 1) - q))
            .to(dtype)
            .double(),
        )
        for name, (value, expected) in checks.items():
            tolerance = 1e-4 if dtype == torch.float32 else 1e-2
            if not torch.allclose(value, expected, rtol=tolerance, atol=tolerance):
                raise AssertionError(f"the row kernel's self-check failed: {name} ({dtype})")


__all__ = [
    "DTYPES",
    "NATIVE",
    "ProbabilityStats",
    "RowStats",
    "available",
    "probability_rows",
    "rows",
    "unavailable_reason",
]
