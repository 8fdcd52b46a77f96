"""Fused linear + softmax cross-entropy: the loss of a vocabulary head without its logits.

A language model's head computes ``logits = hidden @ weight.T + bias`` of shape (N, V) and
then the cross-entropy. For N = 4096 tokens and V = 128256 classes the logits alone are
2.1 GB in float32, and the unfused autograd graph holds two or three tensors of that size.
This module computes the same loss and gradients chunk by chunk over the tokens, so that
only one (chunk, V) block of logits exists at a time.

Per chunk of ``c`` token rows ``h_c`` (ignored tokens are dropped first):

1. ``z = h_c @ weight.T + bias`` into a reused (c, V) buffer;
2. the per-row loss and, over ``z`` in place, the gradient ``g = dloss/dz``, by the shared
   kernel :func:`crossentropy.losses._kernel.cross_entropy_rows`;
3. ``dh_c = g @ weight`` into the rows of the hidden gradient, ``dW += g.T @ h_c``
   accumulated into one float32 (float64 for float64) buffer, and ``db += g.sum(0)``.

That is 6·N·D·V floating-point operations in all, the same as the unfused forward and
backward, done during the forward pass for ``reduction="mean"`` and ``"sum"``; the backward
pass only scales the stored gradients by the incoming gradient. With ``reduction="none"``
the incoming gradient is per token and unknown during the forward pass, so the forward
computes the losses only (2·N·D·V) and the backward recomputes the logits chunk by chunk
(6·N·D·V more).

The three products run on the engine :mod:`crossentropy.losses._products` picks. For
float32 class-index targets without soft-capping on CPU that is, where it runs, the fused
engine of :mod:`crossentropy.losses._native`: one native call per chunk does steps 1-3
with oneDNN's ``sgemm``, the logits kept vocabulary-major and each block's softmax taken
while it is in cache, with no copy of any block. Otherwise torch's bundled oneDNN for
float32 on CPU where torch has it, and ``torch.mm``.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, TypedDict, get_args

import torch
from torch import nn

from crossentropy._tensors import without_values
from crossentropy.losses._composite import differentiate, functorch_active, traced
from crossentropy.losses._kernel import (
    accumulation_dtype,
    cross_entropy_rows,
    index_grad_coefficients,
    index_loss,
    row_scale,
)
from crossentropy.losses._options import (
    Reduction,
    autocast_inputs,
    check_class_weight,
    check_options,
    check_probability_ignore_index,
    loss_dtype,
    no_autocast,
    without_autocast,
)
from crossentropy.losses._products import ChunkProducts, choose_engine, use_fused

Impl = Literal["auto", "chunked", "reference"]
"""How :func:`linear_cross_entropy` computes: ``"chunked"`` (fused), ``"reference"``
(unfused), or ``"auto"`` (chosen from the shapes)."""

IMPLS: tuple[str, ...] = get_args(Impl)

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

CHUNK_BUDGET_BYTES = 128 * 2**20
"""Most bytes one chunk's logits may take when ``chunk_size=None`` (128 MiB)."""

GPU_CHUNK_BUDGET_BYTES = 512 * 2**20
"""The same on a GPU (512 MiB): each chunk re-reads and re-writes the float32 weight
gradient, which costs more there relative to the matrix products, so chunks are larger."""

MIN_CHUNK_ROWS = 16
"""Fewest token rows per chunk the planner picks (fewer only when there are fewer tokens)."""

PRODUCT_ROWS = 256
"""Token rows per chunk from which the chunk's products run near their best rate, unless
the budget says fewer (see :func:`plan_chunk_rows`)."""

AUTO_REFERENCE_ELEMENTS = 1 << 16
"""``impl="auto"`` uses the unfused reference when N·V is at most this (256 KiB of float32
logits): at that size the logits cost nothing worth saving."""


# ---------------------------------------------------------------------------------------
# The chunk planner.


def plan_chunk_rows(
    num_tokens: int,
    hidden_dim: int,
    num_classes: int,
    *,
    itemsize: int = 4,
    budget_bytes: int = CHUNK_BUDGET_BYTES,
) -> int:
    """Token rows per chunk for ``chunk_size=None``: big matrix products, small logits.

    The rule, with N tokens (after ignored ones are dropped), D hidden units, V classes and
    ``itemsize`` bytes per logit of the compute dtype:

    1. ``rows = max(D // 4, PRODUCT_ROWS)`` with ``PRODUCT_ROWS = 256``: each chunk's three
       products are (rows × D) by (D × V) and its relatives, whose small dimension is the
       chunk; they run near their best rate once it has a couple of hundred rows and a
       sizeable fraction of D (measured on a 2-core AVX-512 machine with the fused
       engine: at D = 512, V = 65536 a whole step takes 1.11 s with 158-row chunks, 1.08 s
       with 205 and 1.04 s with 256; at D = 1024, V = 32000 and 128256, 256 to 512 rows
       differ by less than the machine's noise; with the oneDNN engine, at D = 1024,
       V = 32000, 2.47 s with 128 rows and 2.13 s with 256 or 384), and no more rows than
       that, since a chunk's logits are most of the memory;
    2. at most ``budget_bytes // (V * itemsize)`` rows, so one chunk's logits stay
       within the budget (by default ``CHUNK_BUDGET_BYTES``, 128 MiB: 261 rows of float32
       at V = 128256; the fused path passes ``GPU_CHUNK_BUDGET_BYTES``, 512 MiB, on a GPU);
    3. at least ``MIN_CHUNK_ROWS`` (16) rows, rounded down to a multiple of 16;
    4. at most N, and then evened out: ``ceil(N / ceil(N / rows))`` rows, so the last chunk
       is not a sliver.

    The token chunk is the only block; the vocabulary is never split. Splitting it needs
    either a second pass over the weight (8·N·D·V operations instead of 6) or the whole
    row's logits before the gradient can be formed; a 16-row chunk of logits is 8 MiB at
    V = 128256 and exceeds the budget only for V above 2 million classes, where the chunk
    is still 16 rows and the bound O(chunk·V) holds.

    Args:
        num_tokens: N, the tokens that count (ignored ones dropped), >= 0.
        hidden_dim: D, the hidden size.
        num_classes: V, the vocabulary size.
        itemsize: Bytes per logit in the compute dtype (4 for float32 and, on CPU, for the
            half types that are computed in float32; 8 for float64; 2 for half types on GPU).
        budget_bytes: Most bytes of one chunk's logits.

    Returns:
        Rows per chunk, >= 1.

    Examples:
        >>> plan_chunk_rows(4096, 1024, 128256)
        256
        >>> plan_chunk_rows(3000, 512, 65536)  # 12 chunks of 250 rows, not 11 of 256 + 184
        250
        >>> plan_chunk_rows(300, 1024, 32000)  # two chunks of 150, not 256 + 44
        150
        >>> plan_chunk_rows(7, 64, 1000)
        7
    """
    rows = max(hidden_dim // 4, PRODUCT_ROWS)
    rows = min(rows, max(budget_bytes // max(num_classes * itemsize, 1), MIN_CHUNK_ROWS))
    rows = max(rows // MIN_CHUNK_ROWS * MIN_CHUNK_ROWS, MIN_CHUNK_ROWS)
    if num_tokens <= rows:
        return max(num_tokens, 1)
    chunks = -(-num_tokens // rows)
    return -(-num_tokens // chunks)


# ---------------------------------------------------------------------------------------
# Input checking.


def _check_chunk_size(chunk_size: object) -> None:
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"`chunk_size` must be None or an int; got {type(chunk_size).__name__}")
    if chunk_size <= 0:
        raise ValueError(
            f"`chunk_size` must be > 0 (token rows per chunk); got {chunk_size}; "
            "pass chunk_size=None to let the planner choose"
        )


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    base: float,
    chunk_size: object,
    impl: object,
    validate: bool,
    class_weight: torch.Tensor | None = None,
) -> None:
    for name, value in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor; got {type(value).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"`bias` must be None or a torch.Tensor; got {type(bias).__name__}")
    if not isinstance(impl, str) or impl not in IMPLS:
        allowed = ", ".join(repr(i) for i in IMPLS)
        raise ValueError(f"`impl` must be one of {allowed}; got {impl!r}")
    _check_chunk_size(chunk_size)
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"`hidden` must be float64, float32, bfloat16 or float16; got dtype {hidden.dtype}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"`weight` must have the dtype of `hidden` ({hidden.dtype}); got {weight.dtype}; "
            "cast one of them, e.g. weight.to(hidden.dtype)"
        )
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(
            f"`weight` must be 2-D (V, D) in nn.Linear layout with V >= 1 and D >= 1; "
            f"got shape {tuple(weight.shape)}"
        )
    num_classes, hidden_dim = weight.shape
    if hidden.dim() < 1 or hidden.shape[-1] != hidden_dim:
        raise ValueError(
            f"`hidden` must have shape (..., D) with D = {hidden_dim}, the second dimension of "
            f"`weight` {tuple(weight.shape)}; got shape {tuple(hidden.shape)}"
        )
    probs = targets.is_floating_point()
    if targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"`targets` must hold integer class indices (e.g. torch.long) or floating-point "
            f"class probabilities; got dtype {targets.dtype}"
        )
    token_shape = tuple(hidden.shape[:-1])
    if probs:
        if tuple(targets.shape) != (*token_shape, num_classes):
            raise ValueError(
                f"`targets` must have shape {(*token_shape, num_classes)} for class "
                f"probabilities (that of `hidden` with V = {num_classes} in place of D), or "
                f"{token_shape} for class indices; got {tuple(targets.shape)} of dtype "
                f"{targets.dtype}"
            )
        check_probability_ignore_index(ignore_index)
    elif tuple(targets.shape) != token_shape:
        raise ValueError(
            f"`targets` must have shape {token_shape}, that of `hidden` without its last "
            f"dimension (or {(*token_shape, num_classes)} for class probabilities); got "
            f"{tuple(targets.shape)}"
        )
    if bias is not None:
        if bias.dtype != hidden.dtype:
            raise TypeError(
                f"`bias` must have the dtype of `hidden` ({hidden.dtype}); got {bias.dtype}"
            )
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(
                f"`bias` must have shape ({num_classes},), one entry per row of `weight`; "
                f"got {tuple(bias.shape)}"
            )
    tensors = (hidden, weight, targets, bias, class_weight)
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(
            f"`hidden`, `weight`, `targets`, `bias` and `class_weight` must be on one device; "
            f"got {sorted(str(d) for d in devices)}"
        )
    if class_weight is not None:
        check_class_weight(
            class_weight,
            num_classes,
            validate=validate,
            name="class_weight",
            per="one entry per row of `weight`",
        )
    check_options(
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
        weight=None,
        num_classes=num_classes,
        ignore_index=ignore_index,
        validate=validate,
    )
    if validate:
        from crossentropy.losses._cross_entropy import _check_target_values

        flat = targets.reshape(-1, num_classes) if probs else targets
        _check_target_values(flat, probs, num_classes, ignore_index)


# ---------------------------------------------------------------------------------------
# The fused computation.


def _compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the matrix products: half types run in float32 on CPU (where half
    matrix products are emulated and slow) and natively elsewhere."""
    if dtype in (torch.bfloat16, torch.float16) and device.type == "cpu":
        return torch.float32
    return dtype


SLICE_BYTES = 8 * 2**20
"""Bytes of float32 logits the row kernel visits together when it needs scratch buffers."""

GPU_SLICE_BYTES = 128 * 2**20
"""On a GPU, bytes of float32 logits per row-kernel step (its float32 scratch buffers)."""


def _slice_rows(rows: int, num_classes: int, device: torch.device, *, in_place: bool) -> int:
    """Rows the row kernel processes per step, for a chunk of ``rows`` rows.

    When the kernel writes the gradient in place over float32 logits without soft-capping
    it needs no scratch buffer, and one step per chunk is fastest: each of its passes is one
    large multithreaded operation (small steps cost a thread synchronisation each, which
    dominates on a busy CPU). Otherwise its scratch buffers are slice-sized, and a slice of
    about 8 MiB (a quarter of a typical L3 cache) keeps them small. On a GPU a step is
    128 MiB of float32 logits, large enough to fill the device and to bound the scratch.
    """
    if device.type != "cpu":
        return max(GPU_SLICE_BYTES // (4 * num_classes), 1)
    if in_place:
        return rows
    return max(torch.get_num_threads(), SLICE_BYTES // (4 * num_classes), 1)


class _LinearOptions(TypedDict):
    """The loss options of one fused call, as :func:`linear_cross_entropy` normalises them."""

    ignore_index: int
    class_weight: torch.Tensor | None
    reduction: Reduction
    label_smoothing: float
    z_loss: float
    softcap: float | None
    base: float
    out_dtype: torch.dtype


class _KernelOptions(TypedDict, total=False):
    """The keyword options a sweep passes to :func:`cross_entropy_rows`."""

    weight: torch.Tensor | None
    label_smoothing: float
    z_loss: float
    softcap: float | None
    base: float
    slice_rows: int


def _kernel_options(opts: _LinearOptions) -> _KernelOptions:
    return {
        "weight": opts["class_weight"],
        "label_smoothing": opts["label_smoothing"],
        "z_loss": opts["z_loss"],
        "softcap": opts["softcap"],
        "base": opts["base"],
    }


@without_autocast  # the products keep their designed dtypes
def _fused_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    opts: _LinearOptions,
    rows: int | None,
    *,
    grad_scale: torch.Tensor | float | None,
    want: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One chunked sweep over the tokens that count.

    Args:
        hidden: (N, D). weight: (V, D). bias: (V,) or None. targets: (N,) integer.
        opts: the loss options (``ignore_index`` and the kernel's).
        rows: token rows per chunk, or None for :func:`plan_chunk_rows`.
        grad_scale: None (losses only), a float (the same factor for every token), or an
            (N,) tensor of per-token factors: the gradients are those of
            ``sum_i grad_scale_i * loss_i``.
        want: which of (hidden, weight, bias) gradients to form.

    Returns:
        ``(loss, grad_hidden, grad_weight, grad_bias)``: per-token losses (N,) in the
        accumulation dtype (0 for ignored tokens) and the gradients (None when not formed);
        the hidden gradient in hidden's dtype, the weight and bias gradients in the
        accumulation dtype (float32, float64 for float64).
    """
    n_all, hidden_dim = hidden.shape
    num_classes = weight.shape[0]
    device = hidden.device
    acc = accumulation_dtype(hidden.dtype)
    cdt = _compute_dtype(hidden.dtype, device)

    probs = targets.is_floating_point()
    all_kept = probs or bool((keep := targets != opts["ignore_index"]).all())
    if all_kept:
        index = None
        h_kept, y_kept = hidden, targets
    else:
        index = keep.nonzero().squeeze(1)
        h_kept = hidden.index_select(0, index)
        y_kept = targets.index_select(0, index)
    n = h_kept.shape[0]

    grads = grad_scale is not None
    want_h, want_w, want_b = want if grads else (False, False, False)
    loss = torch.zeros(n_all, dtype=acc, device=device)
    grad_hidden = None
    if want_h:
        grad_hidden = (
            torch.empty(n_all, hidden_dim, dtype=hidden.dtype, device=device)
            if all_kept
            else torch.zeros(n_all, hidden_dim, dtype=hidden.dtype, device=device)
        )
    grad_weight = None
    # On a GPU the first chunk writes the weight gradient (ChunkProducts.add_weight_grad
    # with first=True). On the CPU it is zeroed here and every chunk adds to it: the fresh
    # pages are then touched by one parallel fill, not faulted in one by one inside the
    # first chunk's product (2 % of a step at N=2048, D=512, V=65536).
    write_first = device.type != "cpu" and n > 0
    if want_w:
        fill = torch.empty if write_first else torch.zeros
        grad_weight = fill(num_classes, hidden_dim, dtype=acc, device=device)
    grad_bias = torch.zeros(num_classes, dtype=acc, device=device) if want_b else None
    if n == 0:
        return loss, grad_hidden, grad_weight, grad_bias

    if isinstance(grad_scale, torch.Tensor) and index is not None:
        grad_scale = grad_scale.index_select(0, index)

    w_c = weight if weight.dtype == cdt else weight.to(cdt)
    b_c = None if bias is None else (bias if bias.dtype == cdt else bias.to(cdt))
    if rows is None:
        budget = CHUNK_BUDGET_BYTES if device.type == "cpu" else GPU_CHUNK_BUDGET_BYTES
        rows = plan_chunk_rows(
            n, hidden_dim, num_classes, itemsize=w_c.element_size(), budget_bytes=budget
        )
    rows = min(rows, n)
    loss_kept = loss if index is None else torch.empty(n, dtype=acc, device=device)
    if (
        not probs
        and opts["softcap"] is None
        and use_fused(cdt, device, w_c)
        and bool(((y_kept >= 0) & (y_kept < num_classes)).all())  # read without checks
    ):
        _fused_engine_sweep(
            h_kept, y_kept, w_c, b_c, opts, rows, grad_scale, index,
            loss_kept, grad_hidden, grad_weight, grad_bias,
        )  # fmt: skip
        if index is not None:
            loss.index_copy_(0, index, loss_kept)
        return loss, grad_hidden, grad_weight, grad_bias

    logits = torch.empty(rows, num_classes, dtype=cdt, device=device)
    products = ChunkProducts(w_c, b_c, rows, choose_engine(cdt, device))
    kernel_opts = _kernel_options(opts)
    # Probability targets need a float32 copy of each step's targets: slice-sized steps.
    in_place = grads and opts["softcap"] is None and cdt == acc and not probs
    kernel_opts["slice_rows"] = _slice_rows(rows, num_classes, device, in_place=in_place)

    for start in range(0, n, rows):
        stop = min(start + rows, n)
        h_c = h_kept[start:stop]
        if h_c.dtype != cdt:
            h_c = h_c.to(cdt)
        z = logits[: stop - start]
        products.logits(h_c, z)
        scale = grad_scale[start:stop] if isinstance(grad_scale, torch.Tensor) else grad_scale
        terms = cross_entropy_rows(
            z, y_kept[start:stop], grad_scale=scale, out=z if grads else None, **kernel_opts
        )
        loss_kept[start:stop] = terms.loss
        if not grads:
            continue
        g = z  # the kernel wrote the gradient over the logits
        if grad_hidden is not None:  # want_h
            dh = products.hidden_grad(g)
            if index is None:
                grad_hidden[start:stop].copy_(dh)
            else:
                grad_hidden.index_copy_(0, index[start:stop], dh.to(grad_hidden.dtype))
        if grad_weight is not None:  # want_w
            products.add_weight_grad(grad_weight, g, h_c, first=write_first and start == 0)
        if grad_bias is not None:  # want_b
            grad_bias.add_(g.sum(0, dtype=acc))

    if index is not None:
        loss.index_copy_(0, index, loss_kept)
    return loss, grad_hidden, grad_weight, grad_bias


def _per_row(value: torch.Tensor | float, rows: int) -> torch.Tensor:
    """A per-row coefficient as a contiguous (rows,) float32 tensor."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float32).expand(rows).contiguous()
    return torch.full((rows,), value, dtype=torch.float32)


def _fused_engine_sweep(
    h_kept: torch.Tensor,
    y_kept: torch.Tensor,
    w_c: torch.Tensor,
    b_c: torch.Tensor | None,
    opts: _LinearOptions,
    rows: int,
    grad_scale: torch.Tensor | float | None,
    index: torch.Tensor | None,
    loss_kept: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    """:func:`_fused_pass`'s sweep on the fused CPU engine (:mod:`._native`): float32
    products, class-index targets in range, no soft-capping. Writes ``loss_kept`` and the
    gradients asked for, with the row kernel's formulas (:func:`index_grad_coefficients`,
    :func:`index_loss`)."""
    from crossentropy.losses._native import FusedChunks

    n, hidden_dim = h_kept.shape
    num_classes = w_c.shape[0]
    eps = float(opts["label_smoothing"])
    zl = float(opts["z_loss"])
    inv_ln_b = 1.0 / math.log(opts["base"])
    weight = opts["class_weight"]
    weight = None if weight is None else weight.to(torch.float32)
    chunks = FusedChunks(w_c, b_c, weight, rows, smoothing=eps > 0)
    # The hidden gradient is written into place where it can be: every token kept, float32.
    direct = grad_hidden is not None and index is None and grad_hidden.dtype == torch.float32
    dh_buffer = None
    if grad_hidden is not None and not direct:
        dh_buffer = torch.empty(rows, hidden_dim)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        count = stop - start
        h_c = h_kept[start:stop].to(torch.float32)
        y_c = y_kept[start:stop].to(torch.long)
        w_target = None if weight is None else weight[y_c]
        coefficients = None
        dh = None
        if grad_scale is not None:
            part = grad_scale[start:stop] if isinstance(grad_scale, torch.Tensor) else grad_scale
            scale = row_scale(part, (count,), inv_ln_b, torch.float32, h_c.device)
            p_coef, target_coef, z_coef, smooth_coef = index_grad_coefficients(
                scale, weight, w_target, eps, zl, num_classes
            )
            coefficients = (
                _per_row(p_coef, count),
                _per_row(z_coef, count) if zl > 0 else None,
                _per_row(target_coef, count),
                _per_row(smooth_coef, count) if eps > 0 else None,
            )
            if grad_hidden is not None:
                dh = grad_hidden[start:stop] if direct else dh_buffer[:count]  # type: ignore[index]
        stats = chunks.run(
            h_c, y_c, coefficients,
            grad_hidden=dh, grad_weight=grad_weight, grad_bias=grad_bias,
        )  # fmt: skip
        terms = index_loss(
            stats.row_max, stats.log_sum, stats.z_target, stats.w_dot_z,
            weight, w_target, eps, zl, num_classes,
        )  # fmt: skip
        loss_kept[start:stop] = terms * inv_ln_b if inv_ln_b != 1.0 else terms
        if dh is not None and not direct:
            assert grad_hidden is not None
            if index is None:
                grad_hidden[start:stop].copy_(dh)
            else:
                grad_hidden.index_copy_(0, index[start:stop], dh.to(grad_hidden.dtype))


def mean_denominator(
    targets: torch.Tensor, ignore_index: int, class_weight: torch.Tensor | None
) -> float:
    """The denominator of ``"mean"`` for (N,) or (N, V) targets: every row of probability
    targets; else the tokens not ignored, or with class weights the sum of their targets'
    weights (torch's weighted mean)."""
    if targets.is_floating_point():
        return targets.shape[0]
    kept = targets != ignore_index
    if class_weight is None:
        return int(kept.sum())
    return float(class_weight.double()[targets[kept]].sum())


def _is_one(value: torch.Tensor) -> bool:
    return value.numel() == 1 and float(value) == 1.0


def _second_order(ctx, grad_output):
    """The chunked functions' gradients as a graph (``create_graph=True``): from the
    unfused computation (:func:`_reference`) in the compute dtype, which holds the logits."""
    hidden, weight, bias, targets = ctx.saved_tensors
    opts = ctx.opts
    cdt = _compute_dtype(hidden.dtype, hidden.device)
    loss = _reference(
        hidden.to(cdt),
        weight.to(cdt),
        targets,
        bias=None if bias is None else bias.to(cdt),
        weight=opts["class_weight"],
        ignore_index=opts["ignore_index"],
        reduction=opts["reduction"],
        label_smoothing=opts["label_smoothing"],
        z_loss=opts["z_loss"],
        softcap=opts["softcap"],
        base=opts["base"],
    )
    grads = differentiate(
        [loss.to(opts["out_dtype"])],
        [grad_output],
        [hidden, weight, bias],
        ctx.needs_input_grad[:3],
    )
    return (*grads, None, None, None)


class _ChunkedReduced(torch.autograd.Function):
    """``reduction="mean"`` or ``"sum"``: gradients formed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts, rows):
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        keep_count = mean_denominator(targets, opts["ignore_index"], opts["class_weight"])
        if opts["reduction"] == "mean":
            scale = 1.0 / keep_count if keep_count > 0 else 0.0
        else:
            scale = 1.0
        grad_scale = scale if any(want) else None
        loss, dh, dw, db = _fused_pass(
            hidden, weight, bias, targets, opts, rows, grad_scale=grad_scale, want=want
        )
        total = loss.sum() * scale
        # Keep the gradients in the parameters' dtypes (float32 accumulation is finished).
        ctx.grads = (
            dh,
            None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype),
        )
        # The inputs (not copies), for a second backward pass, which recomputes.
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.opts, ctx.rows, ctx.scale = opts, rows, scale
        return total.to(opts["out_dtype"])

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: a gradient to differentiate again
            ctx.grads = None
            return _second_order(ctx, grad_output)
        grads = ctx.grads
        if grads is None:
            # A second pass through the graph (retain_graph=True): the stored gradients were
            # handed over, so form them again, chunk by chunk.
            hidden, weight, bias, targets = ctx.saved_tensors
            want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            scale = ctx.scale * float(grad_output)
            _, dh, dw, db = _fused_pass(
                hidden, weight, bias, targets, ctx.opts, ctx.rows, grad_scale=scale, want=want
            )
            dw = None if dw is None else dw.to(weight.dtype)
            db = None if db is None else db.to(bias.dtype)
            return dh, dw, db, None, None, None
        # Hand the buffers over: holding no reference lets autograd adopt them as .grad
        # instead of copying them (a copy of the weight gradient is V·D more memory).
        ctx.grads = None
        if _is_one(grad_output):
            return grads[0], grads[1], grads[2], None, None, None
        out = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return out[0], out[1], out[2], None, None, None


class _ChunkedPerToken(torch.autograd.Function):
    """``reduction="none"``: losses in the forward pass, gradients recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts, rows):
        loss, _, _, _ = _fused_pass(
            hidden, weight, bias, targets, opts, rows, grad_scale=None, want=(False,) * 3
        )
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.opts = opts
        ctx.rows = rows
        return loss.to(opts["out_dtype"])

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: a gradient to differentiate again
            return _second_order(ctx, grad_output)
        hidden, weight, bias, targets = ctx.saved_tensors
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        scale = grad_output.to(accumulation_dtype(hidden.dtype))
        _, dh, dw, db = _fused_pass(
            hidden, weight, bias, targets, ctx.opts, ctx.rows, grad_scale=scale, want=want
        )
        dw = None if dw is None else dw.to(weight.dtype)
        db = None if db is None else db.to(bias.dtype)
        return dh, dw, db, None, None, None


# ---------------------------------------------------------------------------------------
# Public API.


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    chunk_size: int | None = None,
    impl: Impl = "auto",
    group: torch.distributed.ProcessGroup | None = None,
    validate: bool = True,
    shift: int = 0,
) -> torch.Tensor:
    """Softmax cross-entropy of a linear head, without ever holding the (N, V) logits.

    Spec: ``linear_cross_entropy(hidden, weight, targets, **opts)`` equals
    ``losses.cross_entropy(hidden @ weight.T + bias, targets, **opts)``, values and
    gradients for ``hidden``, ``weight`` and ``bias``, in memory
    O(N·D + V·D + chunk·V) instead of O(N·V).

    The fused path (``impl="chunked"``) runs over chunks of token rows. Tokens whose target
    is ``ignore_index`` are dropped before any matrix product. For each chunk it forms the
    chunk's logits in one reused (chunk, V) buffer, the per-token loss and the logits'
    gradient in place, then ``dhidden`` straight into its rows of the gradient and
    ``dweight += g.T @ h`` into a single float32 buffer (float64 for float64). For
    ``reduction="mean"``/``"sum"`` this happens in the forward pass (6·N·D·V operations in
    all) and backward only scales the stored gradients; for ``reduction="none"`` the
    forward computes the losses and backward recomputes the logits chunk by chunk. The
    first backward pass hands the stored gradients to autograd without a copy; a further
    pass through the same graph (``retain_graph=True``) recomputes them.

    Semantics are those of :func:`crossentropy.losses.cross_entropy`: with class-index
    targets ``"mean"`` divides by the number of tokens that count (with ``class_weight``,
    by the sum of their targets' weights, torch's weighted mean), and an all-ignored batch
    (or a zero total weight) gives 0 with zero gradients; ``"none"`` gives 0 at ignored
    tokens. Class-probability targets (distillation from a teacher's distribution), shaped
    like ``hidden`` with V in place of D, count every token; they must sum to 1 per token
    (or be a row of zeros, as with :func:`cross_entropy`) and, on the fused path, carry no
    gradient (``impl="reference"`` gives the gradient with respect to them too).

    Precision: float64 runs in float64. float32 runs in float32. bfloat16 and float16 run
    their matrix products in float32 on CPU (half products are emulated there) and in their
    own dtype with float32 accumulation on GPU; the softmax and the weight gradient's sum
    over chunks are always float32; the gradients are returned in the inputs' dtypes.
    Under ``torch.autocast`` the inputs are first cast to autocast's dtype, as ``F.linear``
    would cast them (so bfloat16 activations meet float32 master weights), the products
    then run as they do for that dtype, and the loss is float32, as torch's
    cross-entropy is under autocast.

    Chunk size: ``chunk_size=None`` takes :func:`plan_chunk_rows` of (tokens that count,
    D, V): max(D // 4, 160) rows, capped so that a chunk's logits fit in 128 MiB (512 MiB
    on a GPU), at least 16 rows, evened out over the chunks. E.g. 256 rows (131 MB of
    float32 logits) for D = 1024, V = 128256 on CPU.

    Matrix products: float32 on CPU runs on oneDNN (AVX-512 wherever the CPU has it, about
    twice MKL's AVX2 rate on AMD CPUs): for class-index targets without soft-capping on
    the fused engine, which forms a whole chunk in one native call where a oneDNN library
    and a C compiler are at hand (:mod:`crossentropy.losses._native`; ``make setup``
    installs Debian's ``libdnnl2``), else on torch's bundled oneDNN; everything else on
    ``torch.mm``; see :mod:`crossentropy.losses._products`.

    ``impl``: ``"chunked"`` is the fused path; ``"reference"`` the plain unfused
    ``cross_entropy(F.linear(hidden, weight, bias), targets)``, kept as the executable spec;
    ``"auto"`` takes the reference when N·V <= 65536 (256 KiB of float32 logits, nothing
    worth saving) or when probability targets require a gradient (that gradient is itself
    (N, V), and only the reference forms it), and the fused path otherwise. Both give
    gradients of gradients (``create_graph=True``: gradient penalties, Hessian-vector
    products); the fused path forms them from the unfused computation, so that
    second-order pass holds the logits.

    Args:
        hidden: (..., D) floating-point hidden states (float64, float32, bfloat16, float16).
        weight: (V, D) head weight in ``nn.Linear`` layout, hidden's dtype.
        targets: (...) integer class indices in [0, V), or ``ignore_index``, shaped like
            hidden without its last dimension; or (..., V) floating-point class
            probabilities.
        bias: (V,) head bias in hidden's dtype, or None.
        class_weight: (V,) nonnegative class weights (``weight`` of ``nn.CrossEntropyLoss``
            and of torch's ``F.linear_cross_entropy``), or None. Weights that require a
            gradient get one, through the unfused computation.
        ignore_index: Target value whose tokens count for nothing.
        reduction: ``"mean"`` over tokens that count, ``"sum"``, or ``"none"`` (per token).
        label_smoothing: Smoothing weight in [0, 1] (torch's definition).
        z_loss: Coefficient of the ``logsumexp(logits)**2`` penalty per token, >= 0.
        softcap: Soft-capping constant ``c`` of ``c * tanh(logits / c)``, or None.
        base: Logarithm base of the loss (``math.e``: nats; 2: bits).
        chunk_size: Token rows per chunk (> 0), or None for the planner.
        impl: ``"auto"``, ``"chunked"`` or ``"reference"``.
        group: A ``torch.distributed`` process group when ``weight`` holds this rank's rows
            of a head split by vocabulary, or None for a whole head. Class probabilities
            are then this rank's columns of them, shaped (..., V_r).
        validate: Check the target values (a device synchronisation on accelerators).
        shift: For a causal language model, score position t of ``hidden`` (..., T, D)
            against ``targets[..., t + shift]`` (class indices (..., T)); the last ``shift``
            positions count as ignored. The same as passing ``hidden[..., :-shift, :]``
            and ``targets[..., shift:]``, without copying the hidden states; 0 (the
            default) scores each position against its own target.

    Returns:
        The loss in units of ``base``, in hidden's dtype (float32 under ``torch.autocast``
        for inputs it casts to half precision): a scalar for ``"mean"`` and ``"sum"``,
        shaped like ``hidden`` without its last dimension for ``"none"`` (0 at the last
        ``shift`` positions).

    Raises:
        TypeError: A non-tensor input, a dtype that is not floating point (hidden, weight,
            bias, class_weight), boolean or complex targets, ``weight`` or ``bias`` of
            another dtype than ``hidden``, or an option of a wrong type (``chunk_size``,
            ``shift``, ``ignore_index`` not an int, ...).
        ValueError: Shapes that do not fit together, inputs on more than one device, a
            target outside [0, V) that is not ``ignore_index``, probability targets
            negative, non-finite or not summing to 1, or requiring a gradient on the fused
            path, ``ignore_index`` >= 0 with probability targets, class weights
            negative or non-finite, an unknown ``impl`` or ``reduction``,
            ``chunk_size <= 0``, ``shift < 0`` or not below the sequence length, or a bad
            option value.

    Examples:
        >>> import torch
        >>> from crossentropy import losses
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(300, 64, generator=g, dtype=torch.float64, requires_grad=True)
        >>> weight = torch.randn(1000, 64, generator=g, dtype=torch.float64, requires_grad=True)
        >>> targets = torch.randint(0, 1000, (300,), generator=g)
        >>> loss = losses.linear_cross_entropy(hidden, weight, targets, chunk_size=64)
        >>> expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
        >>> bool(torch.allclose(loss, expected, rtol=1e-12))
        True
        >>> loss.backward()
        >>> h2 = hidden.detach().requires_grad_()
        >>> torch.nn.functional.cross_entropy(h2 @ weight.detach().T, targets).backward()
        >>> bool(torch.allclose(hidden.grad, h2.grad, rtol=1e-10, atol=1e-14))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024), the
        fused head that never materialises the logits.
    """
    hidden, weight, bias = autocast_inputs(hidden, weight, bias)
    if not (isinstance(shift, int) and not isinstance(shift, bool) and shift == 0):
        targets = _shifted_targets(hidden, targets, shift, ignore_index)
    if group is not None:
        # Imported here: the vocabulary-parallel module builds on this one.
        from crossentropy.losses._distributed import sharded_linear_cross_entropy

        return sharded_linear_cross_entropy(
            hidden,
            weight,
            targets,
            bias=bias,
            class_weight=class_weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            chunk_size=chunk_size,
            impl=impl,
            group=group,
            validate=validate,
        )
    plain = traced(hidden, weight, bias, targets, constants=(class_weight,))
    _check_inputs(
        hidden,
        weight,
        targets,
        bias,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
        chunk_size=chunk_size,
        impl=impl,
        validate=validate and not functorch_active(),  # a transform cannot read values
        class_weight=class_weight,
    )
    num_classes, hidden_dim = weight.shape
    probs = targets.is_floating_point()
    token_shape = hidden.shape[:-1]
    target_grad = probs and targets.requires_grad and torch.is_grad_enabled()
    if plain or without_values(hidden):
        # Plain torch operations, which the transforms can trace; meta tensors have shapes
        # only, and the reference path propagates them without reading values.
        impl = "reference"
    if impl == "auto":
        tiny = hidden.numel() // max(hidden_dim, 1) * num_classes <= AUTO_REFERENCE_ELEMENTS
        # Probability targets that require a gradient take the reference path at any size:
        # their gradient is itself (N, V), and the fused path does not form it.
        impl = "reference" if tiny or target_grad else "chunked"
    if impl == "chunked" and target_grad:
        raise ValueError(
            "`targets` (class probabilities) must not require a gradient on the fused path "
            "(impl='chunked'): pass targets.detach(), or impl='reference' for the gradient "
            "with respect to the targets"
        )
    if impl == "reference":
        return _reference(
            hidden,
            weight,
            targets,
            bias=bias,
            weight=class_weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
        )
    opts: _LinearOptions = {
        "ignore_index": int(ignore_index),
        "class_weight": None if class_weight is None else class_weight.detach(),
        "reduction": reduction,
        "label_smoothing": float(label_smoothing),
        "z_loss": float(z_loss),
        "softcap": None if softcap is None else float(softcap),
        "base": float(base),
        "out_dtype": loss_dtype(hidden.dtype, hidden.device),
    }
    h2 = hidden.reshape(-1, hidden_dim)
    y = targets.reshape(-1, num_classes) if probs else targets.reshape(-1).to(torch.long)
    rows = None if chunk_size is None else int(chunk_size)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    if not tracked:
        loss, _, _, _ = _fused_pass(
            h2, weight, bias, y, opts, rows, grad_scale=None, want=(False,) * 3
        )
        if reduction == "none":
            return loss.to(opts["out_dtype"]).reshape(token_shape)
        count = (
            mean_denominator(y, opts["ignore_index"], opts["class_weight"])
            if reduction == "mean"
            else 1
        )
        # A zero denominator (all ignored, or targets that all weigh 0) gives 0, as on the
        # tracked path: with smoothing the numerator need not be 0 then.
        total = loss.sum() * (1.0 / count if count > 0 else 0.0)
        return total.to(opts["out_dtype"])
    if reduction == "none":
        return _ChunkedPerToken.apply(h2, weight, bias, y, opts, rows).reshape(token_shape)
    return _ChunkedReduced.apply(h2, weight, bias, y, opts, rows)


def _check_shift(shift: object) -> None:
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral):
        raise TypeError(f"`shift` must be an int >= 0; got {type(shift).__name__} {shift!r}")
    if shift < 0:
        raise ValueError(f"`shift` must be an int >= 0; got {shift}")


def _shifted_targets(hidden: object, targets: object, shift: int, ignore_index: int):
    """``targets`` moved ``shift`` positions back along the sequence (their last
    dimension), the freed positions set to ``ignore_index``."""
    _check_shift(shift)
    if not isinstance(hidden, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return targets  # the input checks that follow name the culprit
    if targets.is_floating_point():
        raise ValueError(
            "`shift` needs class-index targets (shifted positions become ignore_index); got "
            f"floating-point targets of dtype {targets.dtype}: shift class probabilities "
            "yourself"
        )
    if hidden.dim() < 2 or tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            "`shift` needs `hidden` of shape (..., T, D) and `targets` of shape (..., T); "
            f"got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    length = hidden.shape[-2]
    if shift >= length:
        raise ValueError(
            f"`shift` must be smaller than the sequence length T = {length}; got {shift}"
        )
    shifted = torch.full(targets.shape, ignore_index, dtype=torch.long, device=targets.device)
    shifted[..., : length - shift] = targets[..., shift:]
    return shifted


def _reference(hidden, head, targets, *, bias, **options) -> torch.Tensor:
    """The executable spec: the unfused logits, then the loss. The callers have checked the
    target and class-weight values already (or were asked not to: ``validate=False``), so
    :func:`cross_entropy` does not read them again."""
    from crossentropy.losses._cross_entropy import cross_entropy

    options = {**options, "validate": False}
    logits = torch.nn.functional.linear(hidden, head, bias)
    if logits.dim() > 2:
        num_classes = head.shape[0]
        logits = logits.reshape(-1, num_classes)
        probs = targets.is_floating_point()
        flat = targets.reshape(-1, num_classes) if probs else targets.reshape(-1)
        out = cross_entropy(logits, flat, **options)
        return out.reshape(hidden.shape[:-1]) if options["reduction"] == "none" else out
    return cross_entropy(logits, targets, **options)


def linear_cross_entropy_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    chunk_size: int | None = None,
    validate: bool = True,
):
    """Per-token loss, log-sum-exp and prediction entropy of a linear head, chunk by chunk.

    Spec: equals ``losses.cross_entropy_stats(hidden @ weight.T + bias, targets, **opts)``
    in memory O(N·D + V·D + chunk·V). Every token's logits are formed (ignored tokens too,
    since their log-sum-exp and entropy are defined); the loss of an ignored token is 0.
    The results carry no gradient: train with :func:`linear_cross_entropy`.

    Args:
        hidden: (..., D) floating-point hidden states.
        weight: (V, D) head weight in ``nn.Linear`` layout, hidden's dtype.
        targets: (...) integer class indices in [0, V), or ``ignore_index``; or (..., V)
            class probabilities.
        bias: (V,) head bias, or None.
        class_weight: (V,) nonnegative class weights, or None.
        ignore_index: Target value whose tokens get loss 0.
        label_smoothing: Smoothing weight in [0, 1].
        z_loss: Coefficient of the ``logsumexp**2`` penalty per token, >= 0.
        softcap: Soft-capping constant, or None.
        base: Logarithm base of the loss and the entropy.
        chunk_size: Token rows per chunk (> 0), or None for :func:`plan_chunk_rows`.
        validate: Check the target values.

    Returns:
        :class:`crossentropy.losses.TokenStats` ``(loss, logsumexp, entropy)``, each shaped
        like ``hidden`` without its last dimension, in hidden's dtype (float32 under
        ``torch.autocast`` for inputs it casts to half precision): the loss and the entropy
        in units of ``base``, the log-sum-exp in nats.

    Raises:
        TypeError, ValueError: As :func:`linear_cross_entropy`.

    Examples:
        >>> import torch
        >>> from crossentropy import losses
        >>> g = torch.Generator().manual_seed(1)
        >>> hidden = torch.randn(5, 8, generator=g, dtype=torch.float64)
        >>> weight = torch.randn(11, 8, generator=g, dtype=torch.float64)
        >>> stats = losses.linear_cross_entropy_stats(hidden, weight, torch.tensor([1, 2, 3, 4, 5]))
        >>> lse = torch.logsumexp(hidden @ weight.T, dim=1)
        >>> bool(torch.allclose(stats.logsumexp, lse))
        True
    """
    from crossentropy.losses._cross_entropy import TokenStats

    hidden, weight, bias = autocast_inputs(hidden, weight, bias)
    plain = traced(hidden, weight, bias, targets, constants=(class_weight,))
    _check_inputs(
        hidden,
        weight,
        targets,
        bias,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
        chunk_size=chunk_size,
        impl="chunked",
        validate=validate and not functorch_active(),  # a transform cannot read values
        class_weight=class_weight,
    )
    num_classes, hidden_dim = weight.shape
    if plain:  # the unfused statistics, which the transforms can trace
        from crossentropy.losses._cross_entropy import cross_entropy_stats

        probs = targets.is_floating_point()
        b = None if bias is None else bias.detach()
        logits = nn.functional.linear(hidden.detach(), weight.detach(), b)
        stats = cross_entropy_stats(
            logits.reshape(-1, num_classes),
            targets.reshape(-1, num_classes) if probs else targets.reshape(-1),
            weight=class_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            validate=False,
        )
        shape = hidden.shape[:-1]
        return TokenStats(*(t.detach().reshape(shape) for t in stats))
    device = hidden.device
    cdt = _compute_dtype(hidden.dtype, device)
    acc = accumulation_dtype(hidden.dtype)
    probs = targets.is_floating_point()
    with torch.no_grad(), no_autocast(device):
        h2 = hidden.detach().reshape(-1, hidden_dim)
        n = h2.shape[0]
        if probs:
            y_safe = targets.detach().reshape(-1, num_classes)
            keep = torch.ones(n, dtype=torch.bool, device=device)
        else:
            y = targets.reshape(-1).to(torch.long)
            keep = y != ignore_index
            y_safe = torch.where(keep, y, torch.zeros_like(y))
        loss = torch.zeros(n, dtype=acc, device=device)
        lse = torch.zeros(n, dtype=acc, device=device)
        entropy = torch.zeros(n, dtype=acc, device=device)
        if n > 0:
            w_c = weight.detach().to(cdt)
            b_c = None if bias is None else bias.detach().to(cdt)
            rows = chunk_size or plan_chunk_rows(
                n, hidden_dim, num_classes, itemsize=w_c.element_size()
            )
            rows = min(rows, n)
            logits = torch.empty(rows, num_classes, dtype=cdt, device=device)
            products = ChunkProducts(w_c, b_c, rows, choose_engine(cdt, device))
            kernel_opts: _KernelOptions = {
                "weight": class_weight,
                "label_smoothing": float(label_smoothing),
                "z_loss": float(z_loss),
                "softcap": None if softcap is None else float(softcap),
                "base": float(base),
            }
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                z = logits[: stop - start]
                products.logits(h2[start:stop].to(cdt), z)
                terms = cross_entropy_rows(z, y_safe[start:stop], with_entropy=True, **kernel_opts)
                assert terms.entropy is not None  # asked for with with_entropy=True
                loss[start:stop] = terms.loss
                lse[start:stop] = terms.logsumexp
                entropy[start:stop] = terms.entropy
            loss.masked_fill_(~keep, 0.0)
    shape = hidden.shape[:-1]
    dtype = loss_dtype(hidden.dtype, device)
    return TokenStats(
        loss.to(dtype).reshape(shape),
        lse.to(dtype).reshape(shape),
        entropy.to(dtype).reshape(shape),
    )


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`: holds the options, takes the tensors.

    ``forward(hidden, weight, targets, bias=None)`` returns
    ``linear_cross_entropy(hidden, weight, targets, bias=bias, **options)``. The head's
    parameters are passed in rather than owned, because in a language model the head is
    usually an existing ``nn.Linear`` (often tied to the embedding): call
    ``loss_fn(h, model.lm_head.weight, targets, model.lm_head.bias)``.

    Args:
        class_weight: (V,) class weights, or None; kept as a buffer, so it follows the
            module's ``.to(device)``.
        ignore_index, reduction, label_smoothing, z_loss, softcap, base, chunk_size, impl,
        group, validate, shift: As :func:`linear_cross_entropy`; all but ``group`` and
        ``validate`` are checked at construction.

    Examples:
        >>> import torch
        >>> from crossentropy import losses
        >>> head = torch.nn.Linear(16, 50, dtype=torch.float64)
        >>> hidden = torch.randn(4, 9, 16, dtype=torch.float64)
        >>> targets = torch.randint(0, 50, (4, 9))
        >>> loss_fn = losses.LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(hidden, head.weight, targets, head.bias)
        >>> logits = head(hidden).reshape(-1, 50)
        >>> ref = torch.nn.functional.cross_entropy(logits, targets.reshape(-1),
        ...                                         label_smoothing=0.1)
        >>> bool(torch.allclose(loss, ref))
        True
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        class_weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        base: float = math.e,
        chunk_size: int | None = None,
        impl: Impl = "auto",
        group: torch.distributed.ProcessGroup | None = None,
        validate: bool = True,
        shift: int = 0,
    ):
        super().__init__()
        _check_shift(shift)
        check_options(
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            weight=None,
            num_classes=1,
            ignore_index=ignore_index,
            validate=False,
        )
        if not isinstance(impl, str) or impl not in IMPLS:
            allowed = ", ".join(repr(i) for i in IMPLS)
            raise ValueError(f"`impl` must be one of {allowed}; got {impl!r}")
        _check_chunk_size(chunk_size)
        if class_weight is not None:
            # The shape rule needs V, which the module learns from `weight` at each call; the
            # rest is checked here, as CrossEntropyLoss checks its `weight` when built.
            if isinstance(class_weight, torch.Tensor) and class_weight.dim() != 1:
                raise ValueError(
                    "`class_weight` must be 1-D, one entry per class; got shape "
                    f"{tuple(class_weight.shape)}"
                )
            check_class_weight(
                class_weight,
                class_weight.shape[0] if isinstance(class_weight, torch.Tensor) else 0,
                validate=validate,
                name="class_weight",
            )
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.base = base
        self.chunk_size = chunk_size
        self.impl = impl
        self.group = group
        self.validate = validate
        self.shift = int(shift)

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``hidden @ weight.T + bias`` against ``targets``; see the class."""
        return linear_cross_entropy(
            hidden,
            weight,
            targets,
            bias=bias,
            class_weight=self.class_weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            base=self.base,
            chunk_size=self.chunk_size,
            impl=self.impl,
            group=self.group,
            validate=self.validate,
            shift=self.shift,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, base={self.base}, chunk_size={self.chunk_size}, "
            f"impl={self.impl!r}" + (f", shift={self.shift}" if self.shift else "")
        )


__all__ = [
    "CHUNK_BUDGET_BYTES",
    "IMPLS",
    "Impl",
    "LinearCrossEntropyLoss",
    "linear_cross_entropy",
    "linear_cross_entropy_stats",
    "plan_chunk_rows",
]
