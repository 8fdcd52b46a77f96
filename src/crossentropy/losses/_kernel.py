"""Per-row softmax cross-entropy on a 2-D block of logits: loss, log-sum-exp, gradient.

This is the computation every loss in :mod:`crossentropy.losses` shares. It takes a block
of logits of shape (n, V) whose rows all count (the caller removes or masks ignored
tokens) and returns, per row, the loss, the log-sum-exp and optionally the entropy of the
predicted distribution, and optionally the gradient of ``sum_i grad_scale_i * loss_i``
with respect to the block.

The block is processed a few rows at a time so that each slice of rows stays in cache
while it is visited several times; every operation on a slice is one of torch's
multithreaded kernels, in place where possible. Per slice: the row maximum, the target
logit and (with smoothing) a weighted row sum are read first, then torch's fused softmax
is written straight into the gradient buffer, which is then scaled and corrected in place.
The log-sum-exp comes for free from the softmax: at the row's arg-max the probability is
``exp(m - lse) = 1 / sum_c exp(z_c - m)``, so ``lse = m - log(max_c p_c)``, accurate
because that probability is at least ``1 / V``. Half-precision logits are converted to
float32 one slice at a time; the gradient is written in the logits' dtype.

On CUDA, when Triton is installed, the rows go instead to one Triton program per row
(:mod:`crossentropy.losses._triton`), which reads the logits twice and writes the gradient
once; ``TRITON`` below says where. On the CPU, blocks (n, V) or (n, V, S) of float32,
bfloat16 or float16 logits with class-index targets, or rows (n, V) with class
probabilities of their dtype or float32, without soft-capping (and without the entropy
for (n, V, S)), go to a compiled row kernel (:mod:`crossentropy.losses._rows`), which
makes the same numbers in three vectorised passes per row, where a C compiler is at
hand; the torch operations below are its reference and its fallback.
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch

from crossentropy.losses import _rows

TRITON = "auto"
"""Where rows go to the Triton kernel (:mod:`crossentropy.losses._triton`):
``"auto"`` (CUDA tensors, when Triton is installed), ``"always"`` (any device: with
``TRITON_INTERPRET=1`` Triton's interpreter runs it on the CPU, as the tests do) or
``"never"`` (the torch operations below, everywhere). Under ``"auto"``, a device on which
Triton fails to build or run the kernel gets one warning and the torch operations from
then on."""

_TRITON_FAILED: str | None = None
"""Why the Triton kernel was given up under ``"auto"`` (None while it has not been)."""

T = TypeVar("T")

_SLICE_ELEMENTS = 1 << 20  # 4 MiB of float32 per row slice: stays in the last-level cache
_DEVICE_SLICE_ELEMENTS = 1 << 26  # on accelerators: large launches, 256 MiB float32 workspace


class RowTerms(NamedTuple):
    """What :func:`cross_entropy_rows` returns; ``entropy`` and ``grad`` may be None.

    Attributes:
        loss: (n,) per-row loss in units of ``base`` (float32; float64 for float64 logits);
            (n, S) for logits (n, V, S), as every per-row result.
        logsumexp: (n,) per-row ``log(sum_c exp(z_c))`` of the (soft-capped) logits, in nats,
            same dtype as ``loss``.
        entropy: (n,) entropy of ``softmax(z)`` per row in units of ``base``, or None when not
            requested.
        grad: Gradient of ``sum_i grad_scale_i * loss_i`` with respect to the logits,
            in the logits' dtype, or None when ``grad_scale`` is None.
    """

    loss: torch.Tensor
    logsumexp: torch.Tensor
    entropy: torch.Tensor | None
    grad: torch.Tensor | None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel computes in for logits of ``dtype``: float64 stays, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def triton_installed() -> bool:
    """Whether the Triton kernel can be imported (Triton is installed)."""
    try:
        import crossentropy.losses._triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(device: torch.device) -> bool:
    """Whether rows of logits on ``device`` go to the Triton kernel."""
    if TRITON not in ("auto", "always", "never"):
        raise ValueError(f"TRITON must be 'auto', 'always' or 'never'; got {TRITON!r}")
    if TRITON == "never":
        return False
    if TRITON == "always":
        if not triton_installed():
            raise RuntimeError("TRITON = 'always' but Triton is not installed")
        return True
    return device.type == "cuda" and _TRITON_FAILED is None and triton_installed()


def _give_up_triton(error: Exception) -> None:
    global _TRITON_FAILED
    _TRITON_FAILED = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"crossentropy: the Triton row kernel failed on this device ({_TRITON_FAILED}); the "
        "losses compute with torch operations from now on (set "
        "crossentropy.losses._kernel.TRITON = 'never' to skip the attempt)",
        RuntimeWarning,
        stacklevel=3,
    )


def try_triton(launch: Callable[[], T]) -> T | None:
    """``launch()`` of a Triton kernel, or None where Triton could not build or run it on
    this device under ``TRITON = "auto"`` (then given up, with one warning; the error
    comes before the launch, so nothing was written). Under ``"always"`` it is raised."""
    from crossentropy.losses import _triton

    try:
        return launch()
    except _triton.KERNEL_ERRORS as error:
        if TRITON == "always":
            raise
        _give_up_triton(error)
        return None


def row_scale(
    grad_scale: torch.Tensor | float,
    rows: tuple[int, ...],
    inv_ln_b: float,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | float:
    """``grad_scale / ln(base)`` for each row of a block with per-row shape ``rows``: a
    tensor (a scalar one included) as a tensor of that shape and ``dtype``; a Python
    number stays a number (the same factor for every row, the common case, with no
    per-row tensor to build)."""
    if not isinstance(grad_scale, torch.Tensor):
        return float(grad_scale) * inv_ln_b
    scale = grad_scale.to(dtype=dtype, device=device)
    if scale.dim() > 0 and tuple(scale.shape) != rows:
        raise ValueError(
            f"`grad_scale` must be a scalar or have shape {rows}; got {tuple(scale.shape)}"
        )
    return (scale * inv_ln_b).expand(rows).contiguous()


def index_grad_coefficients(
    scale: torch.Tensor | float,
    weight: torch.Tensor | None,
    w_target: torch.Tensor | None,
    eps: float,
    z_loss: float,
    num_classes: int,
) -> tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float, torch.Tensor | float]:
    """The per-row coefficients of the gradient for class-index targets, which do not
    depend on the logits: ``(p_coef, target_coef, z_coef, smooth_coef)`` such that the
    gradient of row ``i`` is ``(p_coef + z_coef * lse) * p - target_coef * onehot(y)
    - smooth_coef * w`` (see :func:`cross_entropy_rows`). ``scale`` is ``grad_scale /
    ln(base)`` per row (or one number); ``w_target`` is ``weight[y]``. Numbers stay numbers
    where no per-row tensor enters."""
    if weight is None:
        p_coef: torch.Tensor | float = scale
        target_coef: torch.Tensor | float = (1.0 - eps) * scale
        z_coef: torch.Tensor | float = (2.0 * z_loss) * scale
    else:
        assert w_target is not None  # weight[y]
        p_coef = ((1.0 - eps) * w_target + (eps / num_classes) * weight.sum()) * scale
        target_coef = (1.0 - eps) * w_target * scale
        z_coef = (2.0 * z_loss) * w_target * scale
    return p_coef, target_coef, z_coef, (eps / num_classes) * scale


def index_loss(
    row_max: torch.Tensor,
    log_sum: torch.Tensor,
    z_target: torch.Tensor,
    w_dot_z: torch.Tensor | None,
    weight: torch.Tensor | None,
    w_target: torch.Tensor | None,
    eps: float,
    z_loss: float,
    num_classes: int,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-row loss in nats for class-index targets from a row's statistics: its max
    ``m``, ``log sum_c exp(z_c - m)``, the target logit, and (for ``eps`` > 0) ``sum_c w_c
    z_c`` (``sum_c z_c`` without weights); see :func:`cross_entropy_rows`. ``lse``, ``m +
    log sum_c exp(z_c - m)``, is formed here where the smoothing or z-loss term needs it and
    the caller has not."""
    nll = (row_max - z_target) + log_sum  # lse - z_y, without cancellation
    loss = nll * w_target if w_target is not None else nll
    if lse is None and (eps > 0 or z_loss > 0):
        lse = row_max + log_sum
    if eps > 0:
        assert lse is not None  # formed above
        assert w_dot_z is not None  # formed whenever eps > 0
        loss = (1.0 - eps) * loss
        total_w = weight.sum() if weight is not None else float(num_classes)
        # sum_c w_c (lse - z_c) = W lse - sum_c w_c z_c
        loss = loss + (eps / num_classes) * (total_w * lse - w_dot_z)
    if z_loss > 0:
        assert lse is not None  # formed above
        zterm = z_loss * lse.square()
        loss = loss + (zterm * w_target if w_target is not None else zterm)
    return loss


def probability_loss(
    q_sum: torch.Tensor, q_dot_z: torch.Tensor, lse: torch.Tensor, z_loss: float
) -> torch.Tensor:
    """The per-row loss in nats for class-probability targets from a row's statistics: ``sum_c
    q_c (lse - z_c) = (sum_c q_c) lse - sum_c q_c z_c``, plus ``z_loss * lse**2`` (see
    :func:`cross_entropy_rows`)."""
    loss = q_sum * lse - q_dot_z
    if z_loss > 0:
        loss = loss + z_loss * lse.square()
    return loss


def _in_base(
    loss: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    grad: torch.Tensor | None,
    inv_ln_b: float,
) -> RowTerms:
    """The results in units of the base (``inv_ln_b = 1 / ln(base)``): loss and entropy
    scaled, the log-sum-exp left in nats."""
    if inv_ln_b != 1.0:
        loss = loss * inv_ln_b
        if entropy is not None:
            entropy = entropy * inv_ln_b
    return RowTerms(loss, lse, entropy, grad)


def default_slice_rows(num_classes: int, device: torch.device | str = "cpu") -> int:
    """Rows processed together for a vocabulary of ``num_classes`` on ``device``.

    On CPU about 4 MiB of float32, so that a slice stays in cache while it is visited, and
    at least as many rows as torch has threads (the fused softmax parallelises over rows).
    On accelerators 2**26 elements, so that each launch is large and the float32
    workspace (for half-precision logits) stays at 256 MiB.
    """
    if torch.device(device).type == "cpu":
        return max(torch.get_num_threads(), _SLICE_ELEMENTS // max(num_classes, 1))
    return max(1, _DEVICE_SLICE_ELEMENTS // max(num_classes, 1))


def target_dot(
    q: torch.Tensor,
    z: torch.Tensor,
    out: torch.Tensor,
    dim: int = -1,
    *,
    look: bool | None = None,
) -> None:
    """``out = sum_c q_c z_c`` along ``dim``, with a class of no target mass adding 0 whatever
    its logit: 0 * -inf is 0 there (a masked class, logit -inf, that the target gives no
    probability), not NaN. A NaN logit still makes the row's log-sum-exp, and so its loss,
    NaN. ``look`` (by default: on the CPU) forms the masked product only for a slice whose
    plain product is NaN, which reads a value on the host; otherwise it is always formed
    (no synchronisation, as on a GPU)."""
    if look is None:
        look = out.device.type == "cpu"
    if look:
        torch.linalg.vecdot(q, z, dim=dim, out=out)
        if not bool(out.isnan().any()):
            return
    torch.linalg.vecdot(q, torch.where(q == 0, 0.0, z), dim=dim, out=out)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _column(value: torch.Tensor | float, part, rows: int) -> torch.Tensor | float:
    """A slice's ``rows`` rows (``part``) of a per-row factor as a column that broadcasts
    over the slice; a Python number (the same factor for every row) as it is."""
    if isinstance(value, torch.Tensor):
        return part(value).unsqueeze(1)
    return value


def cross_entropy_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    grad_scale: torch.Tensor | float | None = None,
    out: torch.Tensor | None = None,
    with_entropy: bool = False,
    slice_rows: int | None = None,
) -> RowTerms:
    """Softmax cross-entropy per row of a logits block, with its gradient if asked.

    With ``z = softcap * tanh(logits / softcap)`` (or ``z = logits``), ``lse = log sum_c
    exp(z_c)``, ``p = softmax(z)``, class weights ``w`` (ones when None), ``W = sum_c w_c``,
    smoothing ``eps`` and ``ln_b = log(base)``, the loss of row ``i`` is

    - class-index targets ``y`` (torch's formula, per token, before any reduction)::

          loss = [(1 - eps) w_y (lse - z_y) + (eps / V) sum_c w_c (lse - z_c)
                  + z_loss * w_y * lse**2] / ln_b

    - class-probability targets ``t`` (smoothed to ``t' = (1 - eps) t + eps / V``, weighted
      ``q = w * t'``)::

          loss = [sum_c q_c (lse - z_c) + z_loss * lse**2] / ln_b

    The z-loss term carries the token's class weight ``w_y`` for index targets, so that a
    weighted mean weighs each token's whole loss alike; probability targets have no single
    class and their z-loss term is unweighted. The gradient with respect to ``z`` is
    ``[(a + 2 z_loss w_y lse) p - (1 - eps) w_y onehot(y) - (eps / V) w] / ln_b`` with
    ``a = (1 - eps) w_y + (eps / V) W`` (index targets) or ``[(sum_c q_c + 2 z_loss lse) p
    - q] / ln_b`` (probability targets); with soft-capping it is multiplied by
    ``1 - tanh(logits / softcap)**2``. Every row of ``targets`` must be a valid class: the
    kernel does not know ``ignore_index``. To skip ignored rows without copying the block,
    give them any valid class and a ``grad_scale`` of 0 (their gradient rows are then 0)
    and discard their loss, as :func:`crossentropy.losses.cross_entropy` does.

    Args:
        logits: (n, V) floating-point logits (float64, float32, bfloat16 or float16); or
            (n, V, S), the classes along dimension 1 and S positions per row (an image's
            (N, C, H * W) view), each position a row of its own. Per-row shapes below are
            then (n, S).
        targets: (n,) integer class indices in [0, V), or (n, V) floating-point class
            probabilities (the logits' shape).
        weight: (V,) nonnegative class weights, or None.
        label_smoothing: Smoothing ``eps`` in [0, 1].
        z_loss: Coefficient of the per-row ``lse**2`` penalty, >= 0.
        softcap: Soft-capping constant > 0, or None.
        base: Logarithm base of ``loss``, ``entropy`` and ``grad`` (``math.e``: nats).
        grad_scale: None for no gradient; else a scalar or an (n,) tensor of per-row factors
            ``s_i``: the gradient returned is that of ``sum_i s_i * loss_i``.
        out: Optional tensor of the logits' shape and dtype to write the gradient into; it
            may be ``logits`` itself, whose values are then overwritten by the gradient (the
            memory of one block instead of two). Without it a new tensor is allocated.
        with_entropy: Also return the entropy of ``softmax(z)`` per row.
        slice_rows: Rows processed together (default :func:`default_slice_rows`).

    Returns:
        :class:`RowTerms` ``(loss, logsumexp, entropy, grad)``; loss and entropy in units of
        ``base``, log-sum-exp in nats; per-row results in float32 (float64 for float64
        logits), the gradient in the logits' dtype.

    Raises:
        ValueError: ``logits`` not 2-D or 3-D, or ``targets``/``weight``/``grad_scale``/``out`` of a
            shape that does not match it.

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
        >>> terms = cross_entropy_rows(logits, torch.tensor([0]), grad_scale=1.0)
        >>> expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
        >>> bool(torch.allclose(terms.loss[0], expected))
        True
        >>> bool(torch.allclose(terms.grad, torch.softmax(logits, 1) - torch.tensor([1, 0, 0])))
        True
    """
    if logits.dim() not in (2, 3):
        raise ValueError(
            f"`logits` must be 2-D (n, V) or 3-D (n, V, S); got shape {tuple(logits.shape)}"
        )
    n, num_classes = logits.shape[:2]
    inner = tuple(logits.shape[2:])  # () for rows, (S,) for S positions per row
    rows_shape = (n, *inner)
    probs = targets.is_floating_point()
    if probs:
        if targets.shape != logits.shape:
            raise ValueError(
                f"`targets` (probabilities) must have the logits' shape {tuple(logits.shape)}; "
                f"got {tuple(targets.shape)}"
            )
    elif tuple(targets.shape) != rows_shape:
        raise ValueError(f"`targets` must have shape {rows_shape}; got {tuple(targets.shape)}")
    if weight is not None and weight.shape != (num_classes,):
        raise ValueError(f"`weight` must have shape ({num_classes},); got {tuple(weight.shape)}")
    if out is not None and (out.shape != logits.shape or out.dtype != logits.dtype):
        raise ValueError(
            f"`out` must have the logits' shape {tuple(logits.shape)} and dtype {logits.dtype}; "
            f"got {tuple(out.shape)} and {out.dtype}"
        )

    device = logits.device
    if not inner and use_triton(device):
        from crossentropy.losses import _triton

        terms = try_triton(
            lambda: _triton.triton_rows(
                logits,
                targets,
                weight=weight,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
                base=base,
                grad_scale=grad_scale,
                out=out,
                with_entropy=with_entropy,
            )
        )
        if terms is not None:
            return terms
    if (
        softcap is None
        and (not with_entropy or not inner)
        and device.type == "cpu"
        and logits.dtype in _rows.DTYPES
        and (not probs or (not inner and targets.dtype in (logits.dtype, torch.float32)))
        and (out is None or (out.is_contiguous() and logits.is_contiguous()))
        and _rows.available()
    ):
        compiled = _compiled_probability_rows if probs else _compiled_rows
        return compiled(
            logits, targets, weight, float(label_smoothing), float(z_loss), base, grad_scale, out,
            with_entropy,
        )  # fmt: skip
    acc = accumulation_dtype(logits.dtype)
    want_grad = grad_scale is not None
    eps = float(label_smoothing)
    zl = float(z_loss)
    inv_ln_b = 1.0 / math.log(base)
    logits = logits if logits.is_contiguous() else logits.contiguous()
    w_class = None  # the class weights, shaped to broadcast along the class dimension
    if weight is not None:
        weight = weight.to(device=device, dtype=acc)
        w_class = weight.reshape(num_classes, *(1 for _ in inner))

    # Per-row results, filled slice by slice.
    row_max = torch.empty(rows_shape, dtype=acc, device=device)
    # log sum_c exp(z_c - m) >= 0
    neg_log_pmax = torch.empty(rows_shape, dtype=acc, device=device)
    entropy = torch.empty(rows_shape, dtype=acc, device=device) if with_entropy else None
    if probs:
        q_sum = torch.empty(rows_shape, dtype=acc, device=device)  # sum_c q_c
        q_dot_z = torch.empty(rows_shape, dtype=acc, device=device)  # sum_c q_c z_c
    else:
        y = targets.to(device=device, dtype=torch.long)
        z_target = torch.empty(rows_shape, dtype=acc, device=device)
        w_target = weight[y] if weight is not None else None
        w_dot_z = torch.empty(rows_shape, dtype=acc, device=device) if eps > 0 else None
    rows = slice_rows or default_slice_rows(num_classes * math.prod(inner), device)
    if grad_scale is not None:
        # The gradient is of sum_i scale_i * loss_i; a per-row scale enters every
        # coefficient below, a number keeps them numbers.
        scale = row_scale(grad_scale, rows_shape, inv_ln_b, acc, device)
        grad = out if out is not None else torch.empty_like(logits)
        if not probs:
            p_coef, target_coef, z_coef, smooth_coef = index_grad_coefficients(
                scale, weight, w_target, eps, zl, num_classes
            )
            # scatter_add_ takes a tensor: a per-row column, or for a Python number a
            # column as tall as a slice, made below.
            per_row_target = isinstance(target_coef, torch.Tensor)
            neg_target_coef = (
                (-target_coef).unsqueeze(1)
                if isinstance(target_coef, torch.Tensor)
                else -target_coef
            )
    else:
        grad = None

    # Every slice-sized buffer is allocated once: a fresh allocation per slice would be
    # returned to the system and faulted in again each time. Half-precision logits are
    # converted into a float32 slice buffer.
    need_z_buf = softcap is not None or logits.dtype != acc
    need_p_buf = grad is None or grad.dtype != acc
    if (
        slice_rows is None
        and device.type != "cpu"
        and not (need_z_buf or need_p_buf or probs or with_entropy)
    ):
        rows = max(n, 1)  # no workspace to bound: one launch per operation over the block
    width = (min(rows, n), num_classes, *inner)
    z_buf = torch.empty(width, dtype=acc, device=device) if need_z_buf else None
    t_buf = torch.empty(width, dtype=acc, device=device) if softcap is not None else None
    p_buf = torch.empty(width, dtype=acc, device=device) if need_p_buf else None
    q_buf = torch.empty(width, dtype=acc, device=device) if probs else None
    e_buf = torch.empty(width, dtype=acc, device=device) if with_entropy else None
    if want_grad and not probs and not isinstance(neg_target_coef, torch.Tensor):
        neg_target_coef = torch.full(
            (width[0], 1, *inner), neg_target_coef, dtype=acc, device=device
        )

    y_col = None if probs else y.unsqueeze(1)
    z_target_col = None if probs else z_target.unsqueeze(1)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        b = r1 - r0
        # Views of rows r0:r1 of the per-row arrays and of the first b rows of the slice
        # buffers; a block processed as one slice uses the tensors themselves (slicing a
        # tensor costs about a microsecond, which small blocks notice).
        part = _whole if b == n else operator.itemgetter(slice(r0, r1))
        head = _whole if b == width[0] else operator.itemgetter(slice(0, b))
        xb = part(logits)
        # z: the logits after soft-capping, in the accumulation dtype.
        if softcap is not None:
            assert t_buf is not None  # both allocated for a softcap
            assert z_buf is not None
            tanh_b = head(t_buf)
            tanh_b.copy_(xb)
            tanh_b.div_(softcap).tanh_()
            zb = torch.mul(tanh_b, softcap, out=head(z_buf))
        elif z_buf is not None:
            zb = head(z_buf)
            zb.copy_(xb)
        else:
            zb = xb
        if p_buf is not None:
            pb = head(p_buf)
        else:
            assert grad is not None  # no buffer: the softmax is formed in the gradient
            pb = part(grad)
        # Vectorised max-reductions (torch.max with indices is not vectorised on CPU).
        max_b = part(row_max)
        torch.amax(zb, 1, out=max_b)
        if probs:
            assert q_buf is not None
            qb = head(q_buf)
            qb.copy_(part(targets))
            if eps > 0:
                qb.mul_(1.0 - eps).add_(eps / num_classes)
            if w_class is not None:
                qb.mul_(w_class)
            torch.sum(qb, 1, out=part(q_sum))
            target_dot(qb, zb, part(q_dot_z), dim=1)
        else:
            assert y_col is not None
            assert z_target_col is not None
            yb = part(y_col)
            torch.gather(zb, 1, yb, out=part(z_target_col))
            if w_dot_z is not None:
                if weight is None:
                    torch.sum(zb, 1, out=part(w_dot_z))
                elif inner:
                    torch.matmul(weight, zb, out=part(w_dot_z))  # (V) @ (b, V, S): (b, S)
                else:
                    torch.mv(zb, weight, out=part(w_dot_z))
        torch.softmax(zb, 1, out=pb)
        pmax = part(neg_log_pmax)
        torch.amax(pb, 1, out=pmax)  # max_c p_c = exp(m - lse) = 1 / sum_c exp(z_c - m)
        pmax.log_().neg_()
        if entropy is not None:
            assert e_buf is not None
            torch.sum(torch.special.entr(pb, out=head(e_buf)), 1, out=part(entropy))
        if grad is None:
            continue
        # Gradient of the slice, in place over the softmax.
        scale_b = _column(scale, part, b)
        if probs:
            coef = part(q_sum).unsqueeze(1)
            if zl > 0:
                coef = coef + (2.0 * zl) * (max_b + pmax).unsqueeze(1)
            pb.mul_(coef * scale_b)
            qb.mul_(scale_b)
            pb.sub_(qb)
        else:
            coef = _column(p_coef, part, b)
            if zl > 0:
                coef = coef + _column(z_coef, part, b) * (max_b + pmax).unsqueeze(1)
            if isinstance(coef, torch.Tensor) or coef != 1.0:
                pb.mul_(coef)
            assert isinstance(neg_target_coef, torch.Tensor)  # made a column above
            pb.scatter_add_(
                1, yb, part(neg_target_coef) if per_row_target else head(neg_target_coef)
            )
            if eps > 0:
                smooth_b = _column(smooth_coef, part, b)
                if w_class is None:
                    pb.sub_(smooth_b)
                elif isinstance(smooth_b, torch.Tensor):
                    pb.addcmul_(smooth_b, w_class, value=-1.0)
                else:
                    pb.add_(w_class, alpha=-smooth_b)
        if softcap is not None:
            tanh_b.mul_(tanh_b)
            pb.addcmul_(pb, tanh_b, value=-1.0)
        if need_p_buf:
            part(grad).copy_(pb)

    lse = row_max + neg_log_pmax
    if probs:
        loss = probability_loss(q_sum, q_dot_z, lse, zl)
    else:
        loss = index_loss(
            row_max, neg_log_pmax, z_target, w_dot_z, weight, w_target, eps, zl, num_classes,
            lse,
        )  # fmt: skip
    return _in_base(loss, lse, entropy, grad, inv_ln_b)


def _compiled_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    zl: float,
    base: float,
    grad_scale: torch.Tensor | float | None,
    out: torch.Tensor | None,
    with_entropy: bool,
) -> RowTerms:
    """:func:`cross_entropy_rows` for a CPU block (n, V) or (n, V, S) with class-index
    targets and no soft-capping (and the entropy for rows only), on the compiled row kernel
    (:mod:`._rows`): the same statistics, coefficients and loss formula as the torch
    operations."""
    num_classes = logits.shape[1]
    rows_shape = (logits.shape[0], *logits.shape[2:])
    logits = logits if logits.is_contiguous() else logits.contiguous()
    inv_ln_b = 1.0 / math.log(base)
    y = targets.to(dtype=torch.long)
    if weight is not None:
        weight = weight.to(dtype=torch.float32)
    w_target = weight[y] if weight is not None else None
    coefficients = None
    grad = None
    if grad_scale is not None:
        scale = row_scale(grad_scale, rows_shape, inv_ln_b, torch.float32, logits.device)
        coefficients = index_grad_coefficients(scale, weight, w_target, eps, zl, num_classes)
        grad = out if out is not None else torch.empty_like(logits)
    stats = _rows.rows(
        logits, y, weight=weight, smoothing=eps > 0, coefficients=coefficients, grad=grad,
        entropy=with_entropy,
    )  # fmt: skip
    lse = stats.row_max + stats.log_sum
    loss = index_loss(
        stats.row_max, stats.log_sum, stats.z_target, stats.w_dot_z, weight, w_target, eps, zl,
        num_classes, lse,
    )  # fmt: skip
    return _in_base(loss, lse, stats.entropy, grad, inv_ln_b)


def _compiled_probability_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    zl: float,
    base: float,
    grad_scale: torch.Tensor | float | None,
    out: torch.Tensor | None,
    with_entropy: bool,
) -> RowTerms:
    """:func:`cross_entropy_rows` for a CPU block (n, V) with class-probability targets (of
    the logits' dtype or float32) and no soft-capping, on the compiled row kernel: the same
    statistics and loss formula as the torch operations."""
    n = logits.shape[0]
    logits = logits if logits.is_contiguous() else logits.contiguous()
    inv_ln_b = 1.0 / math.log(base)
    scale = None
    grad = None
    if grad_scale is not None:
        scale = row_scale(grad_scale, (n,), inv_ln_b, torch.float32, logits.device)
        grad = out if out is not None else torch.empty_like(logits)
    stats = _rows.probability_rows(
        logits, targets.contiguous(), weight=weight, label_smoothing=eps, z_loss=zl,
        scale=scale, grad=grad, entropy=with_entropy,
    )  # fmt: skip
    lse = stats.row_max + stats.log_sum
    loss = probability_loss(stats.q_sum, stats.q_dot_z, lse, zl)
    return _in_base(loss, lse, stats.entropy, grad, inv_ln_b)


__all__ = [
    "RowTerms",
    "accumulation_dtype",
    "cross_entropy_rows",
    "default_slice_rows",
    "index_grad_coefficients",
    "index_loss",
    "probability_loss",
    "target_dot",
]
