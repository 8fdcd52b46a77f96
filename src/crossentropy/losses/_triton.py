"""The per-row kernel of :mod:`crossentropy.losses._kernel` as one Triton program per row.

On a GPU the torch-operation kernel makes about ten passes over the logits, each a
separate launch reading and writing the whole block in device memory. Here one program
handles one row in two passes over its logits:

1. an online log-sum-exp: block by block, the running maximum ``m`` and the sum
   ``s = sum_c exp(z_c - m)``, rescaled whenever the maximum grows; with them the
   entropy's ``sum_c exp(z_c - m) z_c`` and what the targets need: for class indices
   with label smoothing ``sum_c w_c z_c``, for class probabilities ``sum_c q_c`` and
   ``sum_c q_c z_c`` with ``q = w * ((1 - eps) t + eps / V)``. Then ``lse = m + log s``
   and the row's loss, log-sum-exp and entropy;
2. the gradient, written in the logits' dtype (over the logits themselves when asked):
   for class indices ``[(a + 2 z_loss w_y lse) p_c - (eps / V) w_c - (1 - eps) w_y
   [c = y]] * scale / ln b`` with ``p_c = exp(z_c - lse)`` and ``a = (1 - eps) w_y +
   (eps / V) sum_c w_c``; for probabilities ``[(sum_c q_c + 2 z_loss lse) p_c - q_c] *
   scale / ln b``; times ``1 - tanh(x_c / cap)**2`` with soft-capping.

So the logits are read twice and the gradient written once, whatever the options (and
probability targets read twice); the accumulation is in float32 (float64 for float64
logits). The formulas are those of :func:`crossentropy.losses._kernel.cross_entropy_rows`,
which dispatches here on CUDA when Triton is installed (see ``TRITON`` there). Triton's
interpreter (``TRITON_INTERPRET=1``) runs the same programs on the CPU, which is how the
tests check them without a GPU.

The vocabulary-parallel losses split each row across ranks: :func:`_shard_kernel` gives a
rank's share in the same two passes, its local statistics before the all-reduces (see
:mod:`crossentropy.losses._distributed`) and its columns of the gradient after them.

Scalars reach the programs through a small tensor of the accumulation dtype rather than
as arguments, which Triton would pass as float32: float64 rows keep every digit.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.errors import TritonError

from crossentropy.losses._kernel import RowTerms, accumulation_dtype, row_scale

MAX_BLOCK = 8192
"""Most columns a program visits at once (a power of two)."""

KERNEL_ERRORS: tuple[type[Exception], ...] = (TritonError,)
"""What a launch raises when Triton cannot build or run the kernel on this device (a
compilation or assembler error, too few registers or too little shared memory)."""


@triton.jit
def _tanh(a):
    """tanh without cancellation near 0: ``-expm1(-2|a|) / (2 + expm1(-2|a|))``, the
    expm1 by Kahan's formula ``(e - 1) * x / log(e)`` with ``e = exp(x)``, accurate to a
    few ulps given accurate exp and log (Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., section 1.14.1)."""
    x = -2.0 * tl.abs(a)
    e = tl.exp(x)
    edge = (e == 1.0) | (e == 0.0)
    em1 = (e - 1.0) * x / tl.log(tl.where(edge, 0.5, e))
    em1 = tl.where(e == 1.0, x, tl.where(e == 0.0, -1.0, em1))
    t = -em1 / (2.0 + em1)
    return tl.where(a < 0, -t, t)


@triton.jit
def _to_output(g, dtype: tl.constexpr):
    """``g`` rounded to the nearest ``dtype`` value, ties to even. For bfloat16 the
    rounding is done on the bits: GPUs round a float32 to bfloat16 so, but Triton's
    interpreter truncates, and the tests run the interpreter."""
    if dtype == tl.bfloat16:
        bits = g.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(g != g, 0x7FC0, rounded)  # NaN stays NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return g.to(dtype)


@triton.jit
def _target_block(t_row, w_ptr, cols, mask, eps, eps_per_class, ACC, SMOOTH, HAS_WEIGHT):
    """Class probabilities as the loss weighs them, ``q = w * ((1 - eps) t + eps / V)``,
    0 past the row's end."""
    q = tl.load(t_row + cols, mask=mask, other=0.0).to(ACC)
    if SMOOTH:
        q = (1.0 - eps) * q + eps_per_class
    if HAS_WEIGHT:
        q *= tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
    return tl.where(mask, q, 0.0)


@triton.jit
def _row_start(x_ptr, x_stride, y_ptr, t_stride, params_ptr, ACC: tl.constexpr):
    """This program's row, its logits and targets, the parameters every pass reads (eps,
    the soft-cap, eps / V) and a zero of the accumulation dtype. ``params`` holds eps,
    z_loss, softcap, 1 / ln(base), the sum of the class weights and eps / V."""
    row = tl.program_id(0).to(tl.int64)
    eps = tl.load(params_ptr + 0).to(ACC)
    cap = tl.load(params_ptr + 2).to(ACC)
    eps_per_class = tl.load(params_ptr + 5).to(ACC)
    zero = tl.sum(tl.zeros([1], dtype=ACC), axis=0)
    return row, x_ptr + row * x_stride, y_ptr + row * t_stride, eps, cap, eps_per_class, zero


@triton.jit
def _stats_pass(
    x_row,
    t_row,
    w_ptr,
    num_cols,
    eps,
    eps_per_class,
    cap,
    zero,
    ACC: tl.constexpr,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ENTROPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 1 over a row's ``num_cols`` logits, an online log-sum-exp: the maximum ``m``
    and ``s = sum_c exp(z_c - m)``, rescaled as ``m`` grows; with ``ENTROPY`` also
    ``sum_c exp(z_c - m) z_c``; with ``PROBS`` ``sum_c q_c`` and ``sum_c q_c z_c``, else with
    ``SMOOTH`` ``sum_c w_c z_c``. Returns ``(m, s, entropy sum, q sum, weighted z sum)``."""
    m = zero - float("inf")
    s = zero
    sz = zero
    q_sum = zero
    wz = zero
    for start in range(0, num_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < num_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(ACC)
        z = cap * _tanh(x / cap) if SOFTCAP else x
        z = tl.where(mask, z, float("-inf"))
        new_m = tl.maximum(m, tl.max(z, axis=0))
        # A row whose logits so far are all -inf (a masked vocabulary) has m = -inf:
        # shift by 0 then, where z - m would be -inf - -inf.
        shift = tl.where(new_m == float("-inf"), 0.0, new_m)
        e = tl.exp(z - shift)
        rescale = tl.exp(m - shift)
        s = s * rescale + tl.sum(e, axis=0)
        if ENTROPY:
            sz = sz * rescale + tl.sum(e * tl.where(e > 0, z, 0.0), axis=0)  # 0 * -inf: 0
        if PROBS:
            q = _target_block(t_row, w_ptr, cols, mask, eps, eps_per_class, ACC, SMOOTH, HAS_WEIGHT)
            q_sum += tl.sum(q, axis=0)
            wz += tl.sum(q * tl.where(q == 0, 0.0, z), axis=0)  # 0 * -inf: 0
        elif SMOOTH:
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
                wz += tl.sum(w * tl.where(mask, z, 0.0), axis=0)
            else:
                wz += tl.sum(tl.where(mask, z, 0.0), axis=0)
        m = new_m
    return m, s, sz, q_sum, wz


@triton.jit
def _gradient_pass(
    x_row,
    t_row,
    w_ptr,
    g_row,
    num_cols,
    target,
    lse,
    p_coef,
    t_coef,
    s_coef,
    eps,
    eps_per_class,
    cap,
    ACC: tl.constexpr,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 2, the gradient of a row's ``num_cols`` logits into ``g_row``: ``p_coef *
    exp(z_c - lse)``, then for probabilities ``- s_coef * q_c``, for class indices ``+
    t_coef`` at column ``target`` and (with ``SMOOTH``) ``- s_coef * w_c``; times ``1 -
    tanh(x_c / cap)**2`` with soft-capping."""
    for start in range(0, num_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < num_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(ACC)
        if SOFTCAP:
            t = _tanh(x / cap)
            z = cap * t
        else:
            z = x
        g = p_coef * tl.exp(z - lse)
        if PROBS:
            q = _target_block(t_row, w_ptr, cols, mask, eps, eps_per_class, ACC, SMOOTH, HAS_WEIGHT)
            g -= s_coef * q
        else:
            g = tl.where(cols == target, g + t_coef, g)
            if SMOOTH:
                if HAS_WEIGHT:
                    g -= s_coef * tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
                else:
                    g -= s_coef
        if SOFTCAP:
            g = g * (1.0 - t * t)
        tl.store(g_row + cols, _to_output(g, g_row.dtype.element_ty), mask=mask)


@triton.jit
def _rows_kernel(
    x_ptr,
    x_stride,
    y_ptr,
    t_stride,
    w_ptr,
    params_ptr,
    scale_ptr,
    g_ptr,
    g_stride,
    loss_ptr,
    lse_ptr,
    entropy_ptr,
    num_classes,
    ACC: tl.constexpr,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    ZLOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    GRAD: tl.constexpr,
    ENTROPY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row: ``y_ptr`` holds class indices, or with ``PROBS`` rows of probabilities
    (``t_stride`` apart)."""
    row, x_row, t_row, eps, cap, eps_per_class, zero = _row_start(
        x_ptr, x_stride, y_ptr, t_stride, params_ptr, ACC
    )
    zl = tl.load(params_ptr + 1).to(ACC)
    inv_ln_b = tl.load(params_ptr + 3).to(ACC)
    w_sum = tl.load(params_ptr + 4).to(ACC)

    m, s, sz, q_sum, wz = _stats_pass(
        x_row, t_row, w_ptr, num_classes, eps, eps_per_class, cap, zero,
        ACC, PROBS, HAS_WEIGHT, SMOOTH, SOFTCAP, ENTROPY, BLOCK,
    )  # fmt: skip
    lse = m + tl.log(s)
    y = zero.to(tl.int64)
    if PROBS:
        # sum_c q_c (lse - z_c) = (sum_c q_c) lse - sum_c q_c z_c; the z-loss unweighted.
        loss = q_sum * lse - wz
        w_y = zero + 1.0
    else:
        y = tl.load(y_ptr + row)
        x_y = tl.load(x_row + y).to(ACC)
        z_y = cap * _tanh(x_y / cap) if SOFTCAP else x_y
        w_y = tl.load(w_ptr + y).to(ACC) if HAS_WEIGHT else zero + 1.0
        loss = (1.0 - eps) * w_y * (lse - z_y)
        if SMOOTH:
            loss += eps_per_class * (w_sum * lse - wz)
    if ZLOSS:
        loss += zl * w_y * lse * lse
    tl.store(loss_ptr + row, loss * inv_ln_b)
    tl.store(lse_ptr + row, lse)
    if ENTROPY:
        tl.store(entropy_ptr + row, (lse - sz / s) * inv_ln_b)

    if GRAD:
        scale = tl.load(scale_ptr + row).to(ACC)  # grad_scale / ln(base)
        if PROBS:
            a = q_sum
            s_coef = scale
        else:
            a = w_y
            s_coef = eps_per_class * scale
            if SMOOTH:
                a = (1.0 - eps) * w_y + eps_per_class * w_sum
        if ZLOSS:
            a += 2.0 * zl * w_y * lse
        _gradient_pass(
            x_row, t_row, w_ptr, g_ptr + row * g_stride, num_classes, y, lse,
            a * scale, -(1.0 - eps) * w_y * scale, s_coef, eps, eps_per_class, cap,
            ACC, PROBS, HAS_WEIGHT, SMOOTH, SOFTCAP, BLOCK,
        )  # fmt: skip


@triton.jit
def _shard_kernel(
    x_ptr,
    x_stride,
    y_ptr,
    t_stride,
    w_ptr,
    params_ptr,
    max_ptr,
    sums_ptr,
    lse_ptr,
    p_coef_ptr,
    t_coef_ptr,
    s_coef_ptr,
    g_ptr,
    g_stride,
    num_rows,
    shard,
    vocab_start,
    ignore_index,
    ACC: tl.constexpr,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    SOFTCAP: tl.constexpr,
    STATS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row of one rank's columns of a vocabulary-parallel loss.

    ``STATS``: the row's local maximum and, in ``sums`` (3, rows), the sum of
    ``exp(z - max)`` and the two target sums (index targets: the target logit where the
    target is in this shard, else 0, and with smoothing ``sum_c w_c z_c``; probabilities:
    ``sum_c q_c`` and ``sum_c q_c z_c``), all over this rank's columns. Otherwise the
    gradient given the row's global ``lse`` and its coefficients: ``p_coef * p_c`` plus
    ``t_coef`` at the target's column and minus ``s_coef * w_c`` (index targets), or minus
    ``s_coef * q_c`` (probabilities).
    """
    row, x_row, t_row, eps, cap, eps_per_class, zero = _row_start(
        x_ptr, x_stride, y_ptr, t_stride, params_ptr, ACC
    )
    local = zero.to(tl.int64) if PROBS else tl.load(y_ptr + row) - vocab_start
    if STATS:
        m, s, _, q_sum, wz = _stats_pass(
            x_row, t_row, w_ptr, shard, eps, eps_per_class, cap, zero,
            ACC, PROBS, HAS_WEIGHT, SMOOTH, SOFTCAP, False, BLOCK,
        )  # fmt: skip
        first = q_sum  # sum_c q_c, or the target logit where it is in this shard
        if not PROBS:
            y = tl.load(y_ptr + row)
            in_shard = (y != ignore_index) & (local >= 0) & (local < shard)
            x_t = tl.load(x_row + tl.where(in_shard, local, 0)).to(ACC)
            z_t = cap * _tanh(x_t / cap) if SOFTCAP else x_t
            first = tl.where(in_shard, z_t, 0.0)
        tl.store(max_ptr + row, m)
        tl.store(sums_ptr + row, s)
        tl.store(sums_ptr + num_rows + row, first)
        tl.store(sums_ptr + 2 * num_rows + row, wz)
    else:
        _gradient_pass(
            x_row, t_row, w_ptr, g_ptr + row * g_stride, shard, local,
            tl.load(lse_ptr + row).to(ACC),
            tl.load(p_coef_ptr + row).to(ACC),
            zero if PROBS else tl.load(t_coef_ptr + row).to(ACC),
            tl.load(s_coef_ptr + row).to(ACC),
            eps, eps_per_class, cap,
            ACC, PROBS, HAS_WEIGHT, SMOOTH, SOFTCAP, BLOCK,
        )  # fmt: skip


def _operands(logits, targets, grad):
    """What the programs read and write: the logits with unit column stride, the targets
    (class indices as int64, or rows of probabilities in their own dtype), whether they
    are probabilities, and a gradient buffer of unit column stride (``grad`` itself where
    it is one; otherwise :func:`_written_back` copies it into ``grad``)."""
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    probs = targets.is_floating_point()
    if probs:
        y = targets if targets.stride(-1) == 1 else targets.contiguous()
    else:
        y = targets.to(device=logits.device, dtype=torch.long).contiguous()
    g = grad if grad is None or grad.stride(1) == 1 else torch.empty_like(x)
    return x, y, probs, g


def _leading(x, y, probs, weight, params) -> tuple:
    """The arguments both kernels take first: the logits and their row stride, the targets
    and their row stride (0 for class indices), the class weights (any tensor when there
    are none: the programs do not read it) and the parameters."""
    return (x, x.stride(0), y, y.stride(0) if probs else 0, x if weight is None else weight, params)


def _written_back(grad, g) -> None:
    if grad is not None and g is not None and g is not grad:
        grad.copy_(g)


def _options(acc: torch.dtype, num_cols: int) -> dict:
    """The launch options both kernels share, for rows of ``num_cols`` logits."""
    block, warps = _block(num_cols)
    return {
        "ACC": tl.float64 if acc == torch.float64 else tl.float32,
        "BLOCK": block,
        "num_warps": warps,
        # No fused multiply-adds: the same roundings as written, on every Triton version.
        "enable_fp_fusion": False,
    }


def _shard_launch(logits, targets, w_loc, spec, *, stats, lse=None, coefs=None, grad=None):
    """Run :func:`_shard_kernel` over every row of a (n, V_r) block of this rank's logits;
    returns ``(local_max, sums)`` for ``stats``, else writes ``grad``."""
    n, shard = logits.shape
    device = logits.device
    acc = accumulation_dtype(logits.dtype)
    x, y, probs, g = _operands(logits, targets, grad)
    eps = float(spec.label_smoothing)
    cap = 1.0 if spec.softcap is None else float(spec.softcap)
    params = torch.tensor(
        [eps, float(spec.z_loss), cap, 1.0, 0.0, eps / spec.num_classes], dtype=acc, device=device
    )
    w = None if w_loc is None else w_loc.to(device=device, dtype=acc).contiguous()
    local_max = sums = None
    if stats:
        local_max = torch.full((n,), float("-inf"), dtype=acc, device=device)
        sums = torch.zeros(3, n, dtype=acc, device=device)
    if n == 0 or shard == 0:
        return local_max, sums
    p_coef, t_coef, s_coef = coefs if coefs is not None else (None, None, None)
    _shard_kernel[(n,)](
        *_leading(x, y, probs, w, params),
        params if local_max is None else local_max,
        params if sums is None else sums,
        params if lse is None else lse.to(acc).contiguous(),
        params if p_coef is None else p_coef,
        params if t_coef is None else t_coef,
        params if s_coef is None else s_coef,
        x if g is None else g,
        0 if g is None else g.stride(0),
        n,
        shard,
        spec.vocab_start,
        spec.ignore_index,
        PROBS=probs,
        HAS_WEIGHT=w is not None,
        SMOOTH=eps > 0,
        SOFTCAP=spec.softcap is not None,
        STATS=stats,
        **_options(acc, shard),
    )
    _written_back(grad, g)
    return local_max, sums


def shard_stats(logits, targets, w_loc, spec):
    """``(local_max, sums)`` of the first pass of the shard kernels of
    :mod:`crossentropy.losses._distributed` (see :func:`_shard_kernel`)."""
    return _shard_launch(logits, targets, w_loc, spec, stats=True)


def shard_grad(logits, targets, w_loc, spec, lse, p_coef, t_coef, s_coef, grad):
    """Their second pass: the gradient of this rank's columns into ``grad`` (per-row
    coefficients as (n,) tensors of the accumulation dtype; ``t_coef`` unused for
    probabilities)."""
    _shard_launch(
        logits,
        targets,
        w_loc,
        spec,
        stats=False,
        lse=lse,
        coefs=(p_coef, t_coef, s_coef),
        grad=grad,
    )


def _block(num_classes: int) -> tuple[int, int]:
    """(columns per step, warps) for rows of ``num_classes`` logits."""
    block = min(MAX_BLOCK, triton.next_power_of_2(max(num_classes, 1)))
    warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    return block, warps


def triton_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    base: float,
    grad_scale: torch.Tensor | float | None,
    out: torch.Tensor | None,
    with_entropy: bool,
) -> RowTerms:
    """:func:`crossentropy.losses._kernel.cross_entropy_rows`, its arguments checked there;
    the same :class:`RowTerms`."""
    n, num_classes = logits.shape
    device = logits.device
    acc = accumulation_dtype(logits.dtype)
    inv_ln_b = 1.0 / math.log(base)
    want_grad = grad_scale is not None
    loss = torch.empty(n, dtype=acc, device=device)
    lse = torch.empty(n, dtype=acc, device=device)
    entropy = torch.empty(n, dtype=acc, device=device) if with_entropy else None
    grad = None
    scale = None
    if grad_scale is not None:
        scale = row_scale(grad_scale, (n,), inv_ln_b, acc, device)
        if not isinstance(scale, torch.Tensor):  # the programs read one factor per row
            scale = torch.full((n,), scale, dtype=acc, device=device)
        grad = out if out is not None else torch.empty_like(logits)
    if weight is not None:
        weight = weight.to(device=device, dtype=acc).contiguous()
        w_sum = weight.sum().reshape(1)
    else:
        w_sum = torch.full((1,), float(num_classes), dtype=acc, device=device)
    eps = float(label_smoothing)
    head = torch.tensor(
        [eps, float(z_loss), 1.0 if softcap is None else float(softcap), inv_ln_b],
        dtype=acc,
        device=device,
    )
    params = torch.cat([head, w_sum, w_sum.new_full((1,), eps / num_classes)])
    if n == 0:
        return RowTerms(loss, lse, entropy, grad)
    x, y, probs, g = _operands(logits, targets, grad)
    _rows_kernel[(n,)](
        *_leading(x, y, probs, weight, params),
        loss if scale is None else scale,
        x if g is None else g,
        0 if g is None else g.stride(0),
        loss,
        lse,
        loss if entropy is None else entropy,
        num_classes,
        PROBS=probs,
        HAS_WEIGHT=weight is not None,
        SMOOTH=eps > 0,
        ZLOSS=float(z_loss) > 0,
        SOFTCAP=softcap is not None,
        GRAD=want_grad,
        ENTROPY=with_entropy,
        **_options(acc, num_classes),
    )
    _written_back(grad, g)
    return RowTerms(loss, lse, entropy, grad)


__all__ = ["KERNEL_ERRORS", "MAX_BLOCK", "shard_grad", "shard_stats", "triton_rows"]
