"""Cross-entropy over a vocabulary split across the ranks of a ``torch.distributed`` group.

Each rank holds the logits (or the head's weight rows) of a contiguous block of the
vocabulary, ``[vocab_start, vocab_start + V_r)``, the blocks tiling ``[0, V)`` in rank
order. The softmax needs three numbers per token from the whole vocabulary: the row
maximum, the sum of exponentials and the target logit (with label smoothing also the
weighted sum of the logits). Each rank computes its share of them and the group
all-reduces those per-token numbers, never the logits, so the traffic is O(N) per call
whatever V is. With the log-sum-exp known everywhere, each rank forms the gradient of its
own logits in the forward pass, so the backward pass is a local scale and needs no
communication.

Before any data moves the ranks exchange a small metadata vector (token count, shard size
and offset, dtype, every option, and with ``validate=True`` checksums of the targets and
class weights) and check it the same way on every rank, so that a mismatch raises the same
``ValueError`` on every rank, naming what differs, instead of leaving the group waiting.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from crossentropy.losses._composite import first_order_only, functorch_active, graph_kept
from crossentropy.losses._kernel import (
    accumulation_dtype,
    default_slice_rows,
    target_dot,
    try_triton,
    use_triton,
)
from crossentropy.losses._linear import (
    AUTO_REFERENCE_ELEMENTS,
    IMPLS,
    Impl,
    _check_inputs,
    _compute_dtype,
    _is_one,
    mean_denominator,
    plan_chunk_rows,
)
from crossentropy.losses._options import (
    REDUCTIONS,
    ZERO_ROW_NOTE,
    Reduction,
    autocast_inputs,
    check_class_weight,
    check_options,
    check_probability_ignore_index,
    check_probability_values,
    loss_dtype,
    probability_sum_message,
    probability_sum_tolerance,
    probability_sums_off,
    without_autocast,
)
from crossentropy.losses._products import ChunkProducts, choose_engine, use_fused

if TYPE_CHECKING:
    from crossentropy.losses._native import FusedChunks

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_ACCELERATOR_SLICE_ELEMENTS = 1 << 26
_HASH_MODULUS = 65521  # position weights of the checksums cycle through 1 .. 65521


# --------------------------------------------------------------------------------------
# The metadata exchange: one small all_gather, checked identically on every rank.
# --------------------------------------------------------------------------------------


def _float_bits(value: float) -> int:
    """The IEEE-754 bits of a float64, as a signed 64-bit integer (exact and comparable)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


def _dtype_code(dtype: torch.dtype) -> int:
    return _FLOAT_DTYPES.index(dtype) if dtype in _FLOAT_DTYPES else -1


@dataclass(frozen=True)
class _Field:
    """One slot of the metadata vector: its name in messages and how to show its value."""

    label: str
    # "int", "optint" (-1 for None), "float", "dtype", "reduction", "softcap", "bool",
    # "impl", or "hash" (a fingerprint: messages name the ranks that differ, not values)
    kind: str = "int"


def _show(field: _Field, value: int) -> str:
    if field.kind == "float":
        return repr(_bits_float(value))
    if field.kind == "softcap":
        return "None" if value == _float_bits(0.0) else repr(_bits_float(value))
    if field.kind == "dtype":
        return str(_FLOAT_DTYPES[value]) if 0 <= value < len(_FLOAT_DTYPES) else "?"
    if field.kind == "reduction":
        return repr(REDUCTIONS[value]) if 0 <= value < len(REDUCTIONS) else "?"
    if field.kind == "impl":
        return repr(IMPLS[value]) if 0 <= value < len(IMPLS) else "?"
    if field.kind == "bool":
        return str(bool(value))
    if field.kind == "optint":
        return "None" if value == -1 else str(value)
    return str(value)


def _require_group(group: dist.ProcessGroup | None) -> tuple[int, int]:
    process_group = getattr(dist, "ProcessGroup", None)
    if group is not None and process_group is not None and not isinstance(group, process_group):
        raise TypeError(
            "`group` must be None (the default group) or a torch.distributed.ProcessGroup; "
            f"got {type(group).__name__}; pass e.g. torch.distributed.new_group(ranks)"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed must be initialised before a vocabulary-parallel loss is "
            "called; call torch.distributed.init_process_group(...) on every rank first, or "
            "use crossentropy.losses.cross_entropy for logits held by one process"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _refuse_functorch(name: str) -> None:
    if functorch_active():
        raise RuntimeError(
            f"{name} cannot run inside torch.func transforms (grad, vmap, jacrev, ...): it "
            "exchanges values between ranks, which the transforms cannot trace; gather the "
            "logits and use crossentropy.losses.cross_entropy there"
        )


def _refuse_weight_grad(weight: torch.Tensor | None, name: str) -> None:
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"`{name}` (class weights) must not require a gradient across ranks: pass "
            f"{name}.detach(), or compute the loss on one process for their gradient"
        )


def _checksums(values: torch.Tensor) -> torch.Tensor:
    """Two int64 checksums of a tensor's values (sum and position-weighted sum), on device.

    Integer tensors are summed exactly (wrapping on overflow, the same on every rank);
    floating tensors are summed in float64 and their bits compared, which is exact for
    identical inputs on identical devices.
    """
    flat = values.reshape(-1)
    positions = torch.arange(flat.numel(), device=flat.device) % _HASH_MODULUS + 1
    if flat.is_floating_point():
        flat = flat.to(torch.float64)
        sums = torch.stack([flat.sum(), (flat * positions.to(torch.float64)).sum()])
        return sums.view(torch.int64)
    flat = flat.to(torch.int64)
    return torch.stack([flat.sum(), (flat * positions).sum()])


def _exchange(
    fields: dict[str, _Field],
    values: dict[str, int],
    device_values: torch.Tensor | None,
    device_names: tuple[str, ...],
    *,
    device: torch.device,
    group: dist.ProcessGroup | None,
    world: int,
) -> list[dict[str, int]]:
    """All-gather one int64 metadata vector per rank; return each rank's values by name.

    ``values`` are host integers; ``device_values`` (checksums computed on the device, named
    by ``device_names``) are appended without a separate synchronisation.
    """
    host = torch.tensor(
        [values[name] for name in fields if name not in device_names],
        dtype=torch.int64,
        device=device,
    )
    local = host if device_values is None else torch.cat([host, device_values.to(torch.int64)])
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    rows = torch.stack(gathered).cpu().tolist()
    names = [name for name in fields if name not in device_names] + list(device_names)
    return [dict(zip(names, row, strict=True)) for row in rows]


def _raise_on_local_errors(rows: list[dict[str, int]], local_error: Exception | None) -> None:
    """Raise the same error on every rank when any rank's own input checks failed."""
    if local_error is not None:
        raise local_error
    failed = [rank for rank, row in enumerate(rows) if row["error"]]
    if failed:
        which = ", ".join(str(r) for r in failed)
        raise ValueError(
            f"every rank of the group must pass valid inputs; rank(s) {which} rejected "
            "theirs (see the error raised there)"
        )


def _check_same(fields: dict[str, _Field], rows: list[dict[str, int]], names: tuple[str, ...]):
    """Raise one ValueError listing what differs between ranks among the fields ``names``.

    Readable fields (sizes, dtypes, options) are compared first; fingerprints (the shape
    hash and the checksums of values) only when those agree, since a different token count
    makes every fingerprint differ too.
    """
    for stage in ("readable", "fingerprint"):
        problems: dict[str, None] = {}
        for name in names:
            field = fields[name]
            if (field.kind == "hash") != (stage == "fingerprint"):
                continue
            seen = [row[name] for row in rows]
            if len(set(seen)) == 1:
                continue
            if field.kind == "hash":
                odd = [str(r) for r, v in enumerate(seen) if v != seen[0]]
                problems[
                    f"{field.label} must be the same on every rank; rank(s) {', '.join(odd)} "
                    "differ from rank 0"
                ] = None
            else:
                per_rank = ", ".join(f"{_show(field, v)} on rank {r}" for r, v in enumerate(seen))
                problems[f"{field.label} must be the same on every rank; got {per_rank}"] = None
        if problems:
            raise ValueError("; ".join(problems))


def _check_tiling(shard_rows: list[int], starts: list[int]) -> None:
    """The shards must tile [0, V) in rank order: start_r = V_0 + ... + V_{r-1}."""
    expected = 0
    for rank, (start, rows) in enumerate(zip(starts, shard_rows, strict=True)):
        if start != expected:
            if rank == 0:
                detail = f"rank 0 starts at {start}, not 0"
            elif start < expected:
                detail = (
                    f"rank {rank} starts at {start} but rank {rank - 1} ends at {expected} "
                    f"(an overlap of {expected - start} rows)"
                )
            else:
                detail = (
                    f"rank {rank} starts at {start} but rank {rank - 1} ends at {expected} "
                    f"(a gap of {start - expected} rows)"
                )
            raise ValueError(
                "`vocab_start` must equal the number of vocabulary rows held by the lower "
                f"ranks, so that the shards tile [0, V) in rank order; got vocab_start={starts} "
                f"with shard sizes {shard_rows}: {detail}"
            )
        expected += rows


def _check_local_probabilities(targets: torch.Tensor, ignore_index: int, validate: bool) -> None:
    """This rank's columns of class probabilities: finite and >= 0, no ``ignore_index``."""
    check_probability_ignore_index(ignore_index)
    if validate:
        check_probability_values(targets)


def _check_probability_sums(targets: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    """Each token's probabilities, summed over every rank's columns, must be 1 (the same
    decision on every rank: it is made from all-reduced sums)."""
    sums = targets.sum(-1, dtype=torch.float64).reshape(-1)
    if sums.numel() == 0:
        return
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    off = probability_sums_off(sums, targets.dtype)
    if bool(off.any()):
        tol = probability_sum_tolerance(targets.dtype)
        token = int(off.nonzero()[0, 0])
        raise ValueError(
            "`targets` must be class probabilities that sum to 1 over the whole vocabulary "
            f"(every rank's columns together; tolerance {tol:.2g}); token {token} sums to "
            f"{probability_sum_message(float(sums[token]), targets.dtype)}; "
            f"divide by the all-reduced sum to normalise them ({ZERO_ROW_NOTE})"
        )


def _check_target_range(targets: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    flat = targets.reshape(-1)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= num_classes))
    if bool(bad.any()):
        value = int(flat[bad][0])
        raise ValueError(
            f"`targets` must be class indices in [0, {num_classes}) or ignore_index="
            f"{ignore_index}; got {value}"
        )


def _option_values(
    reduction, ignore_index, label_smoothing, z_loss, softcap, base
) -> dict[str, int]:
    return {
        "reduction": REDUCTIONS.index(reduction),
        "ignore_index": int(ignore_index),
        "label_smoothing": _float_bits(label_smoothing),
        "z_loss": _float_bits(z_loss),
        "softcap": _float_bits(0.0 if softcap is None else softcap),
        "base": _float_bits(base),
    }


_OPTION_FIELDS = {
    "reduction": _Field("`reduction`", "reduction"),
    "ignore_index": _Field("`ignore_index`"),
    "label_smoothing": _Field("`label_smoothing`", "float"),
    "z_loss": _Field("`z_loss`", "float"),
    "softcap": _Field("`softcap`", "softcap"),
    "base": _Field("`base`", "float"),
}


def _check_targets_type(
    targets: object, lead_shape: torch.Size, what: str, *, probs_shape: torch.Size
) -> None:
    """Class indices shaped ``lead_shape``, or floating class probabilities shaped
    ``probs_shape`` (this rank's columns)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"`targets` must be a torch.Tensor; got {type(targets).__name__}")
    if targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"`targets` must be integer class indices or floating-point class probabilities; "
            f"got dtype {targets.dtype}"
        )
    if targets.is_floating_point():
        if targets.shape != probs_shape:
            raise ValueError(
                f"`targets` (class probabilities) must have the shape of {what}, "
                f"{tuple(probs_shape)}: this rank's columns of the probabilities; got "
                f"{tuple(targets.shape)}"
            )
        if targets.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "`targets` (class probabilities) must not require a gradient across ranks: "
                "pass targets.detach()"
            )
        return
    if targets.shape != lead_shape:
        raise ValueError(
            f"`targets` must have the shape of {what} without its last dimension, "
            f"{tuple(lead_shape)}; got {tuple(targets.shape)}"
        )


# --------------------------------------------------------------------------------------
# Per-row math on one rank's block of the vocabulary.
# --------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Per-row results for a block of rows."""

    loss: torch.Tensor | None  # (n,) per-row loss in nats, 0 for ignored rows (None: recompute)
    lse: torch.Tensor  # (n,) global log-sum-exp of the (soft-capped) logits
    grad: torch.Tensor | None  # (n, V_r) grad of sum_i scale_i loss_i, in the logits' dtype
    q_sum: torch.Tensor | None = None  # (n,) sum_c q_c over the vocabulary (probabilities)
    # With the fused engine (no grad block): the gradient's per-row coefficients
    # (p_coef, target_coef (negative), smooth_coef), for FusedChunks.grads.
    coefs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class _Spec:
    """The options and shard geometry, fixed for one call."""

    vocab_start: int
    num_classes: int
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None


def _target_weights(targets, counted, weight, acc):
    """w_y for counted rows (1 without class weights), 0 for ignored rows."""
    if weight is None:
        return counted.to(acc)
    picked = weight.to(acc)[targets.clamp(0, weight.shape[0] - 1)]
    return torch.where(counted, picked, torch.zeros((), dtype=acc, device=picked.device))


def _shard_rows(
    logits: torch.Tensor | None,
    targets: torch.Tensor,
    spec: _Spec,
    *,
    weight: torch.Tensor | None,
    group: dist.ProcessGroup | None,
    grad_scale: torch.Tensor | float | None = None,
    lse: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    fused: FusedChunks | None = None,
) -> _Rows:
    """Loss and gradient rows for this rank's columns of a block of logits.

    With ``z`` the (soft-capped) logits, ``w`` the class weights (ones when None), ``W``
    their sum, ``eps`` the smoothing and ``lam`` the z-loss, a counted row's loss is
    ``(1 - eps) w_y (lse - z_y) + (eps / V) (W lse - sum_c w_c z_c) + lam w_y lse**2`` (the
    formula of :func:`crossentropy.losses._kernel.cross_entropy_rows`), and its gradient
    ``[(1 - eps) w_y + eps W / V + 2 lam w_y lse] p - (1 - eps) w_y onehot(y) - (eps / V) w``,
    times ``1 - tanh(logits / softcap)**2`` with soft-capping.

    Pass 1 reads the block a slice of rows at a time (see :func:`_slice_rows`) for the
    local row maximum ``m_r``, ``sum_c exp(z_c - m_r)``, the target logit and the weighted
    logit sum. The group all-reduces the maxima, each rank rescales its sums to the global
    maximum, and one all-reduce sums the three per-row numbers. Pass 2 writes the gradient
    of ``sum_i grad_scale_i * loss_i`` slice by slice into ``out`` (which may be ``logits``
    itself) or a new tensor of the logits' dtype. With ``lse`` given (a recomputation in
    backward) pass 1 and the collectives are skipped. On CUDA with Triton both passes run
    as one Triton program per row (:func:`crossentropy.losses._triton.shard_stats` and
    :func:`~crossentropy.losses._triton.shard_grad`), the collectives between them as here.
    With ``fused`` (the fused CPU engine's chunk, float32, its :meth:`~crossentropy.losses.
    _native.FusedChunks.stats` just taken with this rank's target indices, and ``logits``
    None) pass 1 is the engine's, and ``_Rows`` carries the gradient's coefficients
    (``coefs``) instead of a gradient block: the engine's pass 2 forms the chunk's
    gradients from them (see :func:`_fused_chunk`).
    """
    if fused is not None:
        acc = torch.float32
        n, shard = targets.shape[0], fused.weight.shape[0]
        device = targets.device
    else:
        assert logits is not None  # given whenever the engine is not
        acc = accumulation_dtype(logits.dtype)
        n, shard = logits.shape
        device = logits.device
    eps, lam, num_classes = spec.label_smoothing, spec.z_loss, spec.num_classes
    cap = spec.softcap
    counted = targets != spec.ignore_index
    counted_f = counted.to(acc)
    local_t = targets - spec.vocab_start
    in_shard = counted & (local_t >= 0) & (local_t < shard)
    t_index = local_t.clamp(0, max(shard - 1, 0)).unsqueeze(1)
    w_loc = None
    if weight is not None:
        w_loc = weight[spec.vocab_start : spec.vocab_start + shard].to(device=device, dtype=acc)
        total_w: torch.Tensor | float = weight.to(acc).sum()
    else:
        total_w = float(num_classes)
    w_y = _target_weights(targets, counted, weight, acc)

    rows = min(_slice_rows(device, shard), max(n, 1))
    z_slice = None if logits is None else _z_slicer(logits, cap, rows)

    def fill(r0: int, r1: int, zb: torch.Tensor, sums: torch.Tensor) -> None:
        """The target logit (0 off this shard) and, with smoothing, sum_c w_c z_c."""
        picked = torch.gather(zb, 1, t_index[r0:r1]).squeeze(1)
        sums[1, r0:r1] = torch.where(in_shard[r0:r1], picked, 0.0)
        if eps > 0:
            if w_loc is None:
                torch.sum(zb, 1, out=sums[2, r0:r1])
            else:
                torch.mv(zb, w_loc, out=sums[2, r0:r1])

    triton = shard > 0 and n > 0 and use_triton(device) and fused is None
    loss = None
    if lse is None:
        local = (
            _triton_stats(triton, logits, targets, w_loc, spec)
            if fused is None
            else fused.local_sums()
        )
        if local is None:
            assert z_slice is not None  # logits given
            row_max, sums = _global_row_sums(z_slice, n, shard, rows, acc, device, group, fill)
        else:
            row_max, sums = _reduce_row_sums(local[0], local[1], group)
        sum_exp, z_target, w_dot_z = sums[0], sums[1], sums[2]
        log_sum_exp = sum_exp.log()
        lse = row_max + log_sum_exp
        nll = (row_max - z_target) + log_sum_exp  # lse - z_y without cancellation
        loss = (1.0 - eps) * w_y * nll
        if eps > 0:
            loss = loss + (eps / num_classes) * counted_f * (total_w * lse - w_dot_z)
        if lam > 0:
            loss = loss + lam * w_y * lse.square()
        loss = torch.where(counted, loss, 0.0)

    if grad_scale is None:
        return _Rows(loss, lse, None)
    scale = torch.as_tensor(grad_scale, dtype=acc, device=device).expand(n)
    p_coef = (1.0 - eps) * w_y + counted_f * (eps * total_w / num_classes)
    if lam > 0:
        p_coef = p_coef + (2.0 * lam) * w_y * lse
    p_coef = (p_coef * scale).unsqueeze(1)
    target_coef = (-(1.0 - eps) * w_y * in_shard * scale).unsqueeze(1)
    smooth_coef = counted_f * scale * (eps / num_classes)
    coefs = (p_coef.squeeze(1), target_coef.squeeze(1), smooth_coef.expand(n))
    if fused is not None:
        return _Rows(loss, lse, None, coefs=coefs)
    assert logits is not None  # given whenever the engine is not
    assert z_slice is not None
    grad = out if out is not None else torch.empty_like(logits)
    if _triton_grad(triton, logits, targets, w_loc, spec, lse, coefs, grad):
        return _Rows(loss, lse, grad)
    direct = grad.dtype == acc
    p_buf = None if direct else torch.empty(rows, shard, dtype=acc, device=device)
    if shard > 0:
        column = w_loc if w_loc is not None else torch.ones(shard, dtype=acc, device=device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            zb, tanh_b = z_slice(r0, r1)
            pb = grad[r0:r1] if p_buf is None else p_buf[: r1 - r0]
            torch.sub(zb, lse[r0:r1].unsqueeze(1), out=pb).exp_()
            pb.mul_(p_coef[r0:r1])
            pb.scatter_add_(1, t_index[r0:r1], target_coef[r0:r1])
            if eps > 0:
                pb.addr_(smooth_coef[r0:r1], column, alpha=-1.0)
            if tanh_b is not None:
                tanh_b.square_()
                pb.addcmul_(pb, tanh_b, value=-1.0)
            if not direct:
                grad[r0:r1].copy_(pb)
    return _Rows(loss, lse, grad)


def _global_row_sums(z_slice, n, shard, rows, acc, device, group, fill):
    """Pass 1 of the shard kernels: per row, the global maximum and three global sums.

    Each slice of ``rows`` rows gives its sum of exponentials about its own maximum
    (``sums[0]``) and, through ``fill(r0, r1, z_block, sums)``, the kernel's other two
    per-row sums (``sums[1:]``). The group all-reduces the maxima, each rank rescales its
    sums of exponentials from its own maximum to the global one, and one all-reduce sums
    all three. Returns ``(row_max, sums)``.
    """
    local_max = torch.full((n,), -math.inf, dtype=acc, device=device)
    sums = torch.zeros(3, n, dtype=acc, device=device)
    if shard > 0 and n > 0:
        p_buf = torch.empty(rows, shard, dtype=acc, device=device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            zb, _ = z_slice(r0, r1)
            mb = torch.amax(zb, 1, out=local_max[r0:r1])
            shift = torch.where(mb == -math.inf, 0.0, mb).unsqueeze(1)
            exps = torch.sub(zb, shift, out=p_buf[: r1 - r0]).exp_()
            torch.sum(exps, 1, out=sums[0, r0:r1])
            fill(r0, r1, zb, sums)
        del p_buf
    return _reduce_row_sums(local_max, sums, group)


def _reduce_row_sums(local_max, sums, group):
    """The group's row maxima, and its sums of the three per-row numbers once each rank's
    sums of exponentials are rescaled from its own maximum to the global one."""
    n = local_max.shape[0]
    row_max = local_max.clone()
    if n > 0:
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    sums[0].mul_(torch.where(local_max == -math.inf, 0.0, torch.exp(local_max - row_max)))
    if n > 0:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return row_max, sums


def _triton_stats(triton, logits, targets, w_loc, spec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first pass of a shard kernel in Triton, ``(local_max, sums)``, or None where it
    is not to run (or Triton could not build it)."""
    if not triton:
        return None
    from crossentropy.losses import _triton

    return try_triton(lambda: _triton.shard_stats(logits, targets, w_loc, spec))


def _triton_grad(triton, logits, targets, w_loc, spec, lse, coefs, grad) -> bool:
    """The second pass of a shard kernel in Triton, into ``grad``; whether it ran."""
    if not triton:
        return False
    from crossentropy.losses import _triton

    p_coef, t_coef, s_coef = coefs
    done = try_triton(
        lambda: (
            _triton.shard_grad(logits, targets, w_loc, spec, lse, p_coef, t_coef, s_coef, grad)
            or True
        )
    )
    return done is not None


def _z_slicer(logits: torch.Tensor, cap: float | None, rows: int):
    """A function of ``(r0, r1)`` giving rows ``r0:r1`` of the (soft-capped) logits in the
    accumulation dtype and their ``tanh(logits / cap)`` (None without capping), in buffers
    of ``rows`` rows reused from slice to slice, made at the first call (the Triton
    kernels, where they run, need none)."""
    acc = accumulation_dtype(logits.dtype)
    shape = (rows, logits.shape[1])
    need_z_buf = cap is not None or logits.dtype != acc
    buffers = _LazyBuffers(shape, acc, logits.device)

    def z_slice(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        xb = logits[r0:r1]
        if cap is not None:
            tanh_b = buffers.get("tanh")[: r1 - r0]
            tanh_b.copy_(xb)
            tanh_b.div_(cap).tanh_()
            return torch.mul(tanh_b, cap, out=buffers.get("z")[: r1 - r0]), tanh_b
        if need_z_buf:
            zb = buffers.get("z")[: r1 - r0]
            zb.copy_(xb)
            return zb, None
        return xb, None

    return z_slice


class _LazyBuffers:
    """Scratch buffers of one shape and dtype, each made at its first request."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = shape, dtype, device
        self.made: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.made:
            self.made[name] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self.made[name]


def _shard_prob_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    spec: _Spec,
    *,
    weight: torch.Tensor | None,
    group: dist.ProcessGroup | None,
    grad_scale: torch.Tensor | float | None = None,
    lse: torch.Tensor | None = None,
    q_sum: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> _Rows:
    """:func:`_shard_rows` for class-probability targets, ``targets`` (n, V_r) being this
    rank's columns of them.

    With ``q = w ((1 - eps) t + eps / V)`` and ``Q = sum_c q_c`` over the whole vocabulary,
    a row's loss is ``sum_c q_c (lse - z_c) + lam lse**2 = Q lse - sum_c q_c z_c + lam
    lse**2`` (the z-loss unweighted, as in
    :func:`crossentropy.losses._kernel.cross_entropy_rows`) and its gradient ``(Q + 2 lam
    lse) p - q``, times ``1 - tanh(logits / softcap)**2`` with soft-capping. The group
    all-reduces the row maxima, then per row the sum of exponentials, ``Q`` and ``sum_c q_c
    z_c``; the gradient is written into ``out`` (which may be ``logits`` itself) or a new
    tensor of the logits' dtype. With ``lse`` and ``q_sum`` given (a recomputation in
    backward) the first pass and the collectives are skipped.
    """
    acc = accumulation_dtype(logits.dtype)
    n, shard = logits.shape
    device = logits.device
    eps, lam, num_classes = spec.label_smoothing, spec.z_loss, spec.num_classes
    w_loc = None
    if weight is not None:
        w_loc = weight[spec.vocab_start : spec.vocab_start + shard].to(device=device, dtype=acc)
    rows = min(_slice_rows(device, shard), max(n, 1))
    z_slice = _z_slicer(logits, spec.softcap, rows)
    q_buf = _LazyBuffers((rows, shard), acc, device)

    def q_slice(r0: int, r1: int) -> torch.Tensor:
        qb = q_buf.get("q")[: r1 - r0]
        qb.copy_(targets[r0:r1])
        if eps > 0:
            qb.mul_(1.0 - eps).add_(eps / num_classes)
        if w_loc is not None:
            qb.mul_(w_loc)
        return qb

    def fill(r0: int, r1: int, zb: torch.Tensor, sums: torch.Tensor) -> None:
        """Q = sum_c q_c and sum_c q_c z_c over this rank's columns."""
        qb = q_slice(r0, r1)
        torch.sum(qb, 1, out=sums[1, r0:r1])
        target_dot(qb, zb, sums[2, r0:r1])

    triton = shard > 0 and n > 0 and use_triton(device)
    loss = None
    if lse is None:
        local = _triton_stats(triton, logits, targets, w_loc, spec)
        if local is None:
            row_max, sums = _global_row_sums(z_slice, n, shard, rows, acc, device, group, fill)
        else:
            row_max, sums = _reduce_row_sums(local[0], local[1], group)
        lse = row_max + sums[0].log()
        q_sum = sums[1]
        loss = q_sum * lse - sums[2]
        if lam > 0:
            loss = loss + lam * lse.square()
    if grad_scale is None:
        return _Rows(loss, lse, None, q_sum)
    scale = torch.as_tensor(grad_scale, dtype=acc, device=device).expand(n)
    assert q_sum is not None  # given with lse, or summed above
    p_coef = q_sum + (2.0 * lam) * lse if lam > 0 else q_sum
    p_coef = (p_coef * scale).unsqueeze(1)
    grad = out if out is not None else torch.empty_like(logits)
    coefs = (p_coef.squeeze(1), None, scale.contiguous())
    if _triton_grad(triton, logits, targets, w_loc, spec, lse, coefs, grad):
        return _Rows(loss, lse, grad, q_sum)
    direct = grad.dtype == acc
    p_buf = None if direct else torch.empty(rows, shard, dtype=acc, device=device)
    if shard > 0:
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            zb, tanh_b = z_slice(r0, r1)
            pb = grad[r0:r1] if p_buf is None else p_buf[: r1 - r0]
            torch.sub(zb, lse[r0:r1].unsqueeze(1), out=pb).exp_()
            pb.mul_(p_coef[r0:r1])
            pb.sub_(q_slice(r0, r1).mul_(scale[r0:r1].unsqueeze(1)))
            if tanh_b is not None:
                tanh_b.square_()
                pb.addcmul_(pb, tanh_b, value=-1.0)
            if not direct:
                grad[r0:r1].copy_(pb)
    return _Rows(loss, lse, grad, q_sum)


def _slice_rows(device: torch.device, shard: int) -> int:
    """Rows per slice of the shard kernel: cache-sized on CPU (the shared kernel's rule); on
    accelerators, where each slice costs kernel launches rather than cache misses, slices
    of up to 2**26 elements (256 MiB of float32 temporaries)."""
    if device.type == "cpu":
        return default_slice_rows(max(shard, 1))
    return max(1, _ACCELERATOR_SLICE_ELEMENTS // max(shard, 1))


def _mean_factor(w_y_sum: torch.Tensor) -> torch.Tensor:
    """1 / sum of counted weights, or 0 when nothing counts (an all-ignored batch)."""
    positive = w_y_sum > 0
    return torch.where(positive, 1.0 / torch.where(positive, w_y_sum, 1.0), 0.0)


# --------------------------------------------------------------------------------------
# vocab_parallel_cross_entropy
# --------------------------------------------------------------------------------------


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Forward forms the loss and the local gradient; backward scales the gradient."""

    @staticmethod
    def forward(
        ctx, local_logits, targets, weight, spec, reduction, base, group, want_grad, out_dtype
    ):
        shard = local_logits.shape[-1]
        acc = accumulation_dtype(local_logits.dtype)
        scale = torch.tensor(1.0 / math.log(base), dtype=acc, device=local_logits.device)
        out_shape = targets.shape
        if targets.is_floating_point():
            out_shape = local_logits.shape[:-1]
            tokens = math.prod(out_shape)
            if reduction == "mean":  # every token counts, as in cross_entropy
                scale = scale * _mean_factor(torch.tensor(float(tokens), dtype=acc))
            rows = _shard_prob_rows(
                local_logits.reshape(tokens, shard),
                targets.reshape(tokens, shard),
                spec,
                weight=weight,
                group=group,
                grad_scale=scale if want_grad else None,
            )
        else:
            flat = targets.reshape(-1)
            if reduction == "mean":
                w_y = _target_weights(flat, flat != spec.ignore_index, weight, acc)
                scale = scale * _mean_factor(w_y.sum())
            rows = _shard_rows(
                local_logits.reshape(flat.numel(), shard),
                flat,
                spec,
                weight=weight,
                group=group,
                grad_scale=scale if want_grad else None,
            )
        ctx.reduction = reduction
        # For "none": the tokens that count, whose upstream gradients backward takes (an
        # ignored token's gradient is 0 even for a NaN or infinite upstream, as with torch).
        ctx.counted = None
        if reduction == "none" and not targets.is_floating_point():
            ctx.counted = (targets.reshape(-1) != spec.ignore_index).unsqueeze(1)
        ctx.logits_shape = local_logits.shape
        ctx.anchors = (local_logits,)
        ctx.grad = rows.grad
        ctx.backward_done = False
        if reduction == "none":
            loss = (rows.loss * scale).reshape(out_shape)
        else:
            loss = rows.loss.sum() * scale
        return loss.to(out_dtype)

    @staticmethod
    @first_order_only("vocab_parallel_cross_entropy")
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad is None:
            if ctx.backward_done:
                raise RuntimeError(
                    "vocab_parallel_cross_entropy's gradient was released by an earlier "
                    "backward pass; pass retain_graph=True to that pass to run another"
                )
            return (None,) * 9
        ctx.backward_done = True
        # A graph kept for another pass keeps the unit-upstream gradient and hands out
        # scaled copies (no collective either way); otherwise the block is scaled in place
        # and handed over.
        keep = graph_kept()
        if not keep:
            ctx.grad = None
        if ctx.reduction == "none":
            upstream = grad_output.reshape(-1, 1).to(grad.dtype)
            if ctx.counted is not None:
                upstream = torch.where(ctx.counted, upstream, 0.0)
            grad = grad * upstream if keep else grad.mul_(upstream)
        elif not _is_one(grad_output):
            upstream = grad_output.to(grad.dtype)
            grad = grad * upstream if keep else grad.mul_(upstream)
        elif keep:
            grad = grad.clone()
        return grad.reshape(ctx.logits_shape), *(None,) * 8


_VP_FIELDS = {
    "error": _Field("error", "bool"),
    "probs": _Field("whether `targets` are class probabilities (floating point)", "bool"),
    "tokens": _Field("the number of tokens (the leading dimensions of `local_logits`)"),
    "ndim": _Field("the number of leading dimensions of `local_logits`"),
    "shape": _Field("the leading shape of `local_logits` (the tokens)", "hash"),
    "dtype": _Field("the dtype of `local_logits`", "dtype"),
    "shard": _Field("shard rows"),
    "vocab_start": _Field("`vocab_start`"),
    **_OPTION_FIELDS,
    "weight_dim": _Field("`weight` (its number of dimensions; None when not given)", "optint"),
    "weight_numel": _Field("the number of entries of `weight`", "optint"),
    "validate": _Field("`validate`", "bool"),
    "targets_sum": _Field("the values of `targets`", "hash"),
    "targets_mix": _Field("the values of `targets`", "hash"),
    "weight_sum": _Field("the values of `weight`", "hash"),
    "weight_mix": _Field("the values of `weight`", "hash"),
}
_VP_DEVICE = ("targets_sum", "targets_mix", "weight_sum", "weight_mix")


def _shape_hash(shape: tuple[int, ...]) -> int:
    value = 0
    for size in shape:
        value = (value * 1_000_003 + int(size) + 1) % (1 << 61)
    return value


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_start: int,
    group: dist.ProcessGroup | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    validate: bool = True,
) -> torch.Tensor:
    """Cross-entropy of logits split by vocabulary across the ranks of a process group.

    Spec: equals ``cross_entropy(full_logits, targets, ...)`` computed on one process,
    where ``full_logits`` is the concatenation of every rank's ``local_logits`` along the
    last dimension in rank order; never gathers the logits.

    Rank ``r`` holds the logits of vocabulary entries ``[vocab_start, vocab_start + V_r)``;
    the shards must tile ``[0, V)`` in rank order (rank 0 starts at 0, each next rank where
    the previous one ends) and may have different sizes (an empty shard is allowed). Every
    rank passes the same options and either the same ``targets`` (global class indices) or
    its own columns of class-probability targets (see below). The loss is the one
    of :func:`crossentropy.losses.cross_entropy` for class-index targets: with ``z`` the
    logits (soft-capped to ``softcap * tanh(logits / softcap)`` when ``softcap`` is set),
    ``lse = log sum_c exp(z_c)`` over the whole vocabulary, class weights ``w`` (ones when
    None) summing to ``W``, smoothing ``eps`` and ``lam = z_loss``, a token's loss is
    ``[(1 - eps) w_y (lse - z_y) + (eps / V) sum_c w_c (lse - z_c) + lam w_y lse**2] / ln(base)``.
    ``"mean"`` divides the sum by the summed weights ``w_y`` of the counted tokens (torch's
    weighted mean); a batch in which nothing counts (every token ignored, or a zero total
    weight) gives 0 with a zero gradient, where torch gives NaN.

    Class-probability targets (distillation from a teacher whose logits are split the same
    way) come as this rank's columns, shaped like ``local_logits``: the token's loss is
    ``[sum_c q_c (lse - z_c) + lam lse**2] / ln(base)`` with ``q = w ((1 - eps) t + eps /
    V)``, as in :func:`crossentropy.losses.cross_entropy`, and ``"mean"`` divides by the
    number of tokens. The group all-reduces ``sum_c q_c`` and ``sum_c q_c z_c`` per token
    with the sum of exponentials. With ``validate=True`` each rank checks its columns
    (finite, >= 0) and the all-reduced sum of each token's probabilities must be 1.

    The group all-reduces, per token, the row maximum, then the sum of exponentials, the
    target logit and (with smoothing) ``sum_c w_c z_c``: two collectives of O(N) numbers.
    Each rank then forms the gradient of its own logits in the forward pass (``softmax -
    onehot`` with the smoothing, z-loss, soft-cap and base factors) and keeps it, in the
    logits' dtype, for backward, which scales it and makes no collective (in place, or a
    scaled copy when the graph is retained for more backward passes; a second-order pass,
    differentiating the gradient after ``create_graph=True``, raises
    ``NotImplementedError``). Every rank
    returns the same loss. Memory beyond the logits: that one (N, V_r) gradient plus O(N)
    and a few row slices (cache-sized on CPU, at most 256 MiB on accelerators); the logits
    are read twice (statistics, then gradient), a slice of rows at a time.

    Before any of that the ranks all-gather a small metadata vector (token count and shape,
    shard size and start, logits dtype, every option, and with ``validate=True`` checksums
    of ``targets`` and ``weight``), and check it identically, so mismatched inputs raise
    the same ``ValueError`` on every rank rather than a hang. Works with any backend
    (``gloo`` on CPU, ``nccl`` on GPU); the metadata lives on the logits' device.

    Args:
        local_logits: (..., V_r) this rank's logits (float64, float32, bfloat16 or
            float16); the leading dimensions index the N tokens.
        targets: (...) integer class indices in [0, V) (global, the same on every rank) or
            ``ignore_index``; or (..., V_r) floating-point class probabilities, this rank's
            columns ``[vocab_start, vocab_start + V_r)`` of them (no gradient flows to them).
        vocab_start: Global index of this rank's first vocabulary entry.
        group: Process group the vocabulary is split across; None for the default group.
        weight: (V,) class weights over the whole vocabulary, the same full vector on every
            rank (not a shard), or None; they get no gradient (one that requires it is
            refused in grad mode).
        ignore_index: Target value whose tokens contribute neither loss nor gradient.
        reduction: ``"mean"`` (weighted mean over counted tokens), ``"sum"`` or ``"none"``
            (shape of ``targets``, 0 at ignored tokens).
        label_smoothing: torch's label smoothing epsilon in [0, 1].
        z_loss: Coefficient of ``logsumexp(logits)**2`` per counted token (PaLM), >= 0.
        softcap: Soft-capping constant > 0 (Gemma 2), or None.
        base: Logarithm base of the loss: ``math.e`` for nats, 2 for bits.
        validate: Also check values (targets in range, weights finite and nonnegative, and
            targets and weights identical on every rank); these read tensor values, a device
            synchronisation. Shape, dtype and option checks always run.

    Returns:
        The loss in units of ``base`` (nats by default), in the logits' dtype (float32 for
        half-precision logits under ``torch.autocast``, as torch gives there): a
        scalar for ``"mean"`` and ``"sum"``, shape of ``targets`` for ``"none"``. The same
        on every rank. Gradients flow to ``local_logits`` only.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised, or the call is inside a
            ``torch.func`` transform.
        NotImplementedError: A second-order backward pass (see above).
        TypeError: Logits not a floating-point tensor, targets neither integer nor floating
            point, an option of the wrong type.
        ValueError: Shapes or options that differ between ranks (the message lists each
            rank's value), shards that overlap or leave gaps, targets out of range,
            probabilities that are negative, not finite or do not sum to 1 (or 0) over the ranks,
            class weights that require a gradient in grad mode, and the option errors of
            :func:`crossentropy.losses.cross_entropy`.

    Examples:
        One process is a group of one, which must equal the single-process loss:

        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> targets = torch.tensor([0, 2])
        >>> loss = vocab_parallel_cross_entropy(logits, targets, vocab_start=0)
        >>> expected = torch.nn.functional.cross_entropy(logits, targets)
        >>> bool(torch.allclose(loss, expected))
        True
        >>> dist.destroy_process_group()

        On two ranks each passes its half of the columns, ``logits[:, :2]`` with
        ``vocab_start=0`` on rank 0 and ``logits[:, 2:]`` with ``vocab_start=2`` on rank 1,
        and both get the same loss.

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
        Model Parallelism", 2019 (the vocabulary-parallel cross-entropy).
    """
    _, world = _require_group(group)
    _refuse_functorch("vocab_parallel_cross_entropy")
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"`local_logits` must be a torch.Tensor; got {type(local_logits).__name__}")
    device = local_logits.device

    # Local checks. A failure is held back until after the exchange, so that every rank
    # raises instead of the others waiting for a rank that already left.
    local_error: Exception | None = None
    values: dict[str, int] = {name: 0 for name in _VP_FIELDS}
    device_values = None
    try:
        if local_logits.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                "`local_logits` must be float64, float32, bfloat16 or float16; "
                f"got {local_logits.dtype}"
            )
        if local_logits.dim() < 1:
            raise ValueError("`local_logits` must have at least 1 dimension (..., V_r); got 0")
        lead_shape = local_logits.shape[:-1]
        _check_targets_type(targets, lead_shape, "`local_logits`", probs_shape=local_logits.shape)
        probs = targets.is_floating_point()
        if probs:
            _check_local_probabilities(targets, ignore_index, validate)
        if isinstance(vocab_start, bool) or not isinstance(vocab_start, int):
            raise TypeError(f"`vocab_start` must be an int; got {type(vocab_start).__name__}")
        if vocab_start < 0:
            raise ValueError(f"`vocab_start` must be >= 0; got {vocab_start}")
        if weight is not None and not isinstance(weight, torch.Tensor):
            raise TypeError(f"`weight` must be None or a torch.Tensor; got {type(weight).__name__}")
        _refuse_weight_grad(weight, "weight")
        check_options(
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            weight=None,
            num_classes=0,
            ignore_index=ignore_index,
            validate=False,
        )
        values.update(
            probs=bool(probs),
            tokens=math.prod(lead_shape),
            ndim=len(lead_shape),
            shape=_shape_hash(tuple(lead_shape)),
            dtype=_dtype_code(local_logits.dtype),
            shard=local_logits.shape[-1],
            vocab_start=vocab_start,
            weight_dim=-1 if weight is None else weight.dim(),
            weight_numel=-1 if weight is None else weight.numel(),
            validate=bool(validate),
            **_option_values(reduction, ignore_index, label_smoothing, z_loss, softcap, base),
        )
        if validate:
            # Probability targets are this rank's own columns: nothing to compare.
            no_sums = torch.zeros(2, dtype=torch.int64, device=device)
            parts = [no_sums if probs else _checksums(targets.to(device))]
            parts.append(
                torch.zeros(2, dtype=torch.int64, device=device)
                if weight is None
                else _checksums(weight.to(device))
            )
            device_values = torch.cat(parts)
    except (TypeError, ValueError) as exc:
        local_error = exc
        values["error"] = 1
    if device_values is None:
        device_values = torch.zeros(len(_VP_DEVICE), dtype=torch.int64, device=device)

    rows = _exchange(
        _VP_FIELDS, values, device_values, _VP_DEVICE, device=device, group=group, world=world
    )
    _raise_on_local_errors(rows, local_error)
    same = tuple(n for n in _VP_FIELDS if n not in ("error", "shard", "vocab_start"))
    _check_same(_VP_FIELDS, rows, same)
    shard_rows = [row["shard"] for row in rows]
    _check_tiling(shard_rows, [row["vocab_start"] for row in rows])
    num_classes = sum(shard_rows)
    if num_classes < 1:
        raise ValueError("the shards must hold at least one vocabulary row in all; got 0")
    # Identical on every rank from here on: the inputs checked below were compared above.
    check_options(
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        base=base,
        weight=weight,
        num_classes=num_classes,
        ignore_index=ignore_index,
        validate=validate,
    )
    if validate and probs:
        _check_probability_sums(targets.to(device), group)
    elif validate:
        _check_target_range(targets, num_classes, ignore_index)

    spec = _Spec(
        vocab_start=vocab_start,
        num_classes=num_classes,
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        softcap=None if softcap is None else float(softcap),
    )
    want_grad = torch.is_grad_enabled() and local_logits.requires_grad
    if weight is not None:
        weight = weight.to(device)
    return _VocabParallelCrossEntropy.apply(
        local_logits,
        targets.to(device) if probs else targets.to(device=device, dtype=torch.long),
        weight,
        spec,
        reduction,
        float(base),
        group,
        want_grad,
        loss_dtype(local_logits.dtype, device),
    )


# --------------------------------------------------------------------------------------
# sharded_linear_cross_entropy
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LinearPlan:
    """What the chunked sharded head needs besides the tensors; identical on every rank."""

    spec: _Spec
    reduction: str
    base: float
    rows: int  # token rows per chunk
    group: dist.ProcessGroup | None
    want: tuple[bool, bool, bool]  # gradients wanted for hidden, weight, bias
    class_weight: torch.Tensor | None = None  # (V,) over the whole vocabulary
    out_dtype: torch.dtype | None = None  # of the returned loss (None: hidden's dtype)


def _chunk_rows(z, targets, plan: _LinearPlan, **kwargs) -> _Rows:
    """The shard kernel for a chunk: :func:`_shard_prob_rows` for class probabilities
    (``targets`` (c, V_r), this rank's columns), else :func:`_shard_rows`."""
    if targets.is_floating_point():
        return _shard_prob_rows(
            z, targets, plan.spec, weight=plan.class_weight, group=plan.group, **kwargs
        )
    kwargs.pop("q_sum", None)
    return _shard_rows(z, targets, plan.spec, weight=plan.class_weight, group=plan.group, **kwargs)


def _fused_engine(w_c, b_c, targets, plan: _LinearPlan, rows: int) -> FusedChunks | None:
    """This rank's shard on the fused CPU engine (:mod:`crossentropy.losses._native`), where
    it serves: class-index targets, no soft-capping, float32 products on the CPU, a
    contiguous shard of at least one row."""
    if (
        targets.is_floating_point()
        or plan.spec.softcap is not None
        or w_c.shape[0] == 0
        or rows == 0
        or not use_fused(w_c.dtype, w_c.device, w_c)
    ):
        return None
    from crossentropy.losses._native import FusedChunks

    w_loc = None
    if plan.class_weight is not None:
        start = plan.spec.vocab_start
        w_loc = plan.class_weight[start : start + w_c.shape[0]].to(torch.float32)
    return FusedChunks(w_c, b_c, w_loc, rows, smoothing=plan.spec.label_smoothing > 0)


def _fused_chunk(
    fused: FusedChunks,
    h_c: torch.Tensor,
    y_c: torch.Tensor,
    plan: _LinearPlan,
    *,
    grad_scale,
    lse: torch.Tensor | None = None,
    grad_hidden: torch.Tensor | None = None,
    grad_weight: torch.Tensor | None = None,
    grad_bias: torch.Tensor | None = None,
) -> _Rows:
    """One chunk of the sharded head on the fused engine: its pass 1, the collectives and
    the loss (:func:`_shard_rows`, skipped with ``lse`` given), then, with ``grad_scale``,
    its pass 2 into the gradients given (each added to)."""
    fused.stats(h_c, y_c - plan.spec.vocab_start)
    rows = _chunk_rows(None, y_c, plan, grad_scale=grad_scale, lse=lse, fused=fused)
    if grad_scale is not None:
        assert rows.coefs is not None  # formed whenever grad_scale is given
        p_coef, target_coef, smooth_coef = rows.coefs
        fused.grads(
            rows.lse.to(torch.float32).contiguous(),
            (
                p_coef.contiguous(),
                None,  # the z-loss term is in p_coef already
                (-target_coef).contiguous(),
                smooth_coef.contiguous() if plan.spec.label_smoothing > 0 else None,
            ),
            grad_hidden=grad_hidden,
            grad_weight=grad_weight,
            grad_bias=grad_bias,
        )
    return rows


@without_autocast  # the products keep their designed dtypes
def _sharded_pass(hidden, weight, bias, targets, plan: _LinearPlan, index, *, grad_scale):
    """One sweep over the chunks of kept tokens (``index``) of this rank's vocabulary rows.

    ``grad_scale`` is None (losses only) or a float multiplying every row's gradient (the
    reduction's factor and ``1 / ln(base)``).
    Returns ``(loss, lse, q_sum, dh, dw, db)``: per-kept-token loss in nats, log-sum-exp and
    (probability targets; else None) ``sum_c q_c``, the partial hidden gradient (n, D) of
    this rank's rows (not yet summed over ranks), and the local weight and bias gradients
    in the accumulation dtype, or None where not formed.
    """
    device = hidden.device
    acc = accumulation_dtype(hidden.dtype)
    cdt = _compute_dtype(hidden.dtype, device)
    n = index.numel()
    shard, hidden_dim = weight.shape
    want_h, want_w, want_b = plan.want if grad_scale is not None else (False, False, False)
    h_kept = hidden.index_select(0, index)
    y_kept = targets.index_select(0, index)
    w_c = weight if weight.dtype == cdt else weight.to(cdt)
    b_c = None if bias is None else bias.to(cdt)
    loss = torch.empty(n, dtype=acc, device=device)
    lse = torch.empty(n, dtype=acc, device=device)
    q_sum = torch.empty(n, dtype=acc, device=device) if targets.is_floating_point() else None
    dh = torch.empty(n, hidden_dim, dtype=acc, device=device) if want_h else None
    dw = torch.zeros(shard, hidden_dim, dtype=acc, device=device) if want_w else None
    db = torch.zeros(shard, dtype=acc, device=device) if want_b else None
    grads = want_h or want_w or want_b
    fused = _fused_engine(w_c, b_c, targets, plan, min(plan.rows, n))
    if fused is not None:
        for start in range(0, n, plan.rows):
            stop = min(start + plan.rows, n)
            rows = _fused_chunk(
                fused, h_kept[start:stop].to(cdt), y_kept[start:stop], plan,
                grad_scale=grad_scale if grads else None,
                grad_hidden=None if dh is None else dh[start:stop],
                grad_weight=dw, grad_bias=db,
            )  # fmt: skip
            assert rows.loss is not None  # no lse passed: the loss is formed
            loss[start:stop] = rows.loss
            lse[start:stop] = rows.lse
        return loss, lse, q_sum, dh, dw, db
    logits = torch.empty(min(plan.rows, n), shard, dtype=cdt, device=device)
    products = ChunkProducts(w_c, b_c, min(plan.rows, n), choose_engine(cdt, device))
    for start in range(0, n, plan.rows):
        stop = min(start + plan.rows, n)
        h_c = h_kept[start:stop].to(cdt)
        z = logits[: stop - start]
        products.logits(h_c, z)
        rows = _chunk_rows(
            z, y_kept[start:stop], plan, grad_scale=grad_scale if grads else None, out=z
        )
        assert rows.loss is not None  # no lse passed: the loss is formed
        loss[start:stop] = rows.loss
        lse[start:stop] = rows.lse
        if q_sum is not None:
            assert rows.q_sum is not None  # probability targets
            q_sum[start:stop] = rows.q_sum
        if not grads:
            continue
        g = z  # the chunk's logits were overwritten by their gradient
        if dh is not None:  # want_h
            dh[start:stop] = products.hidden_grad(g)
        if dw is not None:  # want_w
            products.add_weight_grad(dw, g, h_c, first=False)
        if db is not None:  # want_b
            db.add_(g.sum(0, dtype=acc))
    return loss, lse, q_sum, dh, dw, db


@without_autocast
def _sharded_weight_grads(hidden, weight, bias, targets, plan, index, lse, q_sum, scale):
    """Backward of ``reduction="none"``: recompute each chunk's logits and form the local
    weight and bias gradients of ``sum_i scale_i * loss_i``, with no collective (the
    log-sum-exp of every kept token was stored by the forward pass)."""
    device = hidden.device
    acc = accumulation_dtype(hidden.dtype)
    cdt = _compute_dtype(hidden.dtype, device)
    _, want_w, want_b = plan.want
    shard, hidden_dim = weight.shape
    n = index.numel()
    h_kept = hidden.index_select(0, index)
    y_kept = targets.index_select(0, index)
    w_c = weight if weight.dtype == cdt else weight.to(cdt)
    b_c = None if bias is None else bias.to(cdt)
    dw = torch.zeros(shard, hidden_dim, dtype=acc, device=device) if want_w else None
    db = torch.zeros(shard, dtype=acc, device=device) if want_b else None
    fused = _fused_engine(w_c, b_c, targets, plan, min(plan.rows, n))
    if fused is not None:
        for start in range(0, n, plan.rows):
            stop = min(start + plan.rows, n)
            _fused_chunk(
                fused, h_kept[start:stop].to(cdt), y_kept[start:stop], plan,
                grad_scale=scale[start:stop], lse=lse[start:stop],
                grad_weight=dw if want_w else None, grad_bias=db if want_b else None,
            )  # fmt: skip
        return dw, db
    logits = torch.empty(min(plan.rows, n), shard, dtype=cdt, device=device)
    products = ChunkProducts(w_c, b_c, min(plan.rows, n), choose_engine(cdt, device))
    for start in range(0, n, plan.rows):
        stop = min(start + plan.rows, n)
        h_c = h_kept[start:stop].to(cdt)
        z = logits[: stop - start]
        products.logits(h_c, z)
        _chunk_rows(
            z,
            y_kept[start:stop],
            plan,
            grad_scale=scale[start:stop],
            lse=lse[start:stop],
            q_sum=None if q_sum is None else q_sum[start:stop],
            out=z,
        )
        g = z
        if want_w:
            products.add_weight_grad(dw, g, h_c, first=False)
        if want_b:
            db.add_(g.sum(0, dtype=acc))
    return dw, db


def _scatter_rows(values, index, num_tokens, dtype):
    out = torch.zeros((num_tokens, *values.shape[1:]), dtype=dtype, device=values.device)
    return out.index_copy_(0, index, values.to(dtype))


class _ShardedLinearReduced(torch.autograd.Function):
    """``reduction="mean"``/``"sum"``: every gradient formed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, plan, index):
        n = index.numel()
        factor = 1.0 / math.log(plan.base)
        if plan.reduction == "mean":
            # Every rank holds the same targets and the same full class-weight vector.
            total = mean_denominator(targets, plan.spec.ignore_index, plan.class_weight)
            factor = factor / total if total > 0 else 0.0
        loss, _, _, dh, dw, db = _sharded_pass(
            hidden, weight, bias, targets, plan, index, grad_scale=factor
        )
        if dh is not None and n > 0:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=plan.group)
        ctx.anchors = (hidden, weight, bias)
        ctx.grads = (
            None if dh is None else _scatter_rows(dh, index, hidden.shape[0], hidden.dtype),
            None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype),
        )
        return (loss.sum() * factor).to(plan.out_dtype or hidden.dtype)

    @staticmethod
    @first_order_only("linear_cross_entropy with group=")
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_cross_entropy(group=...)'s gradients were released by an earlier "
                "backward pass; pass retain_graph=True to that pass to run another"
            )
        one = _is_one(grad_output)
        keep = graph_kept()  # a kept graph keeps the gradients and hands out copies

        def scaled(g):
            if not one:
                return g * grad_output.to(g.dtype)
            return g.clone() if keep else g

        grads = [None if g is None else scaled(g) for g in ctx.grads]
        if not keep:
            ctx.grads = None
        return grads[0], grads[1], grads[2], None, None, None


class _ShardedLinearPerToken(torch.autograd.Function):
    """``reduction="none"``: the per-token hidden gradient is formed (and summed over ranks)
    in the forward pass; backward scales it and recomputes the local weight gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, plan, index):
        inv_ln_b = 1.0 / math.log(plan.base)
        want_h = plan.want[0]
        hidden_only = _LinearPlan(**{**plan.__dict__, "want": (want_h, False, False)})
        loss, lse, q_sum, dh, _, _ = _sharded_pass(
            hidden, weight, bias, targets, hidden_only, index, grad_scale=inv_ln_b
        )
        if dh is not None and index.numel() > 0:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=plan.group)
        ctx.save_for_backward(hidden, weight, bias, targets, index, lse, q_sum, dh)
        ctx.anchors = (hidden, weight, bias)
        ctx.plan = plan
        out_dtype = plan.out_dtype or hidden.dtype
        return _scatter_rows(loss * inv_ln_b, index, hidden.shape[0], out_dtype)

    @staticmethod
    @first_order_only("linear_cross_entropy with group=")
    def backward(ctx, grad_output):
        hidden, weight, bias, targets, index, lse, q_sum, dh = ctx.saved_tensors
        plan = ctx.plan
        acc = lse.dtype
        scale = grad_output.index_select(0, index).to(acc)
        grad_hidden = None
        if dh is not None:
            grad_hidden = _scatter_rows(
                dh * scale.unsqueeze(1), index, hidden.shape[0], hidden.dtype
            )
        dw = db = None
        if plan.want[1] or plan.want[2]:
            dw, db = _sharded_weight_grads(
                hidden,
                weight,
                bias,
                targets,
                plan,
                index,
                lse,
                q_sum,
                scale / math.log(plan.base),
            )
        return (
            grad_hidden,
            None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype),
            None,
            None,
            None,
        )


class _SumGradOverRanks(torch.autograd.Function):
    """Identity forward; backward all-reduces the gradient (the reference path's partial
    hidden gradients, one per rank's rows, sum to the full one)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        ctx.anchors = (tensor,)
        return tensor.view_as(tensor)

    @staticmethod
    @first_order_only("linear_cross_entropy with group=")
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


_LINEAR_FIELDS = {
    "error": _Field("error", "bool"),
    "probs": _Field("whether `targets` are class probabilities (floating point)", "bool"),
    "tokens": _Field("the number of tokens (the leading dimensions of `hidden`)"),
    "ndim": _Field("the number of leading dimensions of `hidden`"),
    "shape": _Field("the leading shape of `hidden` (the tokens)", "hash"),
    "dtype": _Field("the dtype of `hidden`", "dtype"),
    "hidden_dim": _Field("the hidden size D (last dimension of `hidden` and `weight`)"),
    "shard": _Field("shard rows"),
    "bias": _Field("whether `bias` is given", "bool"),
    **_OPTION_FIELDS,
    "class_weight_numel": _Field("the number of entries of `class_weight`", "optint"),
    "chunk_size": _Field("`chunk_size`", "optint"),
    "impl": _Field("`impl`", "impl"),
    "hidden_grad": _Field("whether `hidden` requires grad", "bool"),
    "validate": _Field("`validate`", "bool"),
    "targets_sum": _Field("the values of `targets`", "hash"),
    "targets_mix": _Field("the values of `targets`", "hash"),
    "class_weight_sum": _Field("the values of `class_weight`", "hash"),
    "class_weight_mix": _Field("the values of `class_weight`", "hash"),
}
_LINEAR_DEVICE = ("targets_sum", "targets_mix", "class_weight_sum", "class_weight_mix")


def sharded_linear_cross_entropy(
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
    group: dist.ProcessGroup | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Fused linear + cross-entropy for a head whose weight is split by vocabulary rows.

    Spec: equals ``linear_cross_entropy(hidden, full_weight, targets, bias=full_bias, ...)``
    on one process, where ``full_weight`` stacks every rank's ``weight`` in rank order;
    never holds the (N, V_r) logits of a rank whole, and never gathers logits.

    Rank ``r`` holds rows ``[s_r, s_r + V_r)`` of the (V, D) head, ``s_r`` being the sum of
    the lower ranks' V_r (found by all-gathering V_r; shards may differ in size). ``hidden``
    and class-index ``targets`` are the same on every rank; class-probability targets come
    as each rank's own columns, shaped (..., V_r) like its logits, with the loss of
    :func:`vocab_parallel_cross_entropy` for them. Tokens whose target is ``ignore_index``
    are dropped first; the rest are taken ``chunk`` rows at a time: each rank forms its
    (chunk, V_r) block of logits, the group all-reduces the per-token row maximum and sums
    as in :func:`vocab_parallel_cross_entropy`, and each rank forms its block's gradient
    and from it its partial ``dhidden = g @ weight`` and its own ``dweight += g.T @ h`` and
    ``dbias += g.sum(0)``. The partial hidden gradients are all-reduced once at the end.
    Memory per rank: O(N·D + V_r·D + chunk·V_r).

    For ``reduction="mean"``/``"sum"`` all gradients are formed in the forward pass (6·N·D·V_r
    operations per rank) and backward scales them. For ``"none"`` the forward forms the
    losses and the per-token hidden gradient, and backward recomputes each chunk's logits
    for the weight gradient; in both cases backward makes no collective. The gradients are
    first-order only: differentiating them again (after ``create_graph=True``) raises
    ``NotImplementedError``.

    The chunk size with ``chunk_size=None`` is
    :func:`crossentropy.losses._linear.plan_chunk_rows` of (tokens that count, D, the
    largest V_r of the group), the same on every rank. ``impl="auto"`` takes the unfused
    reference when (tokens) · V <= 65536, as :func:`linear_cross_entropy` does, and the
    chunked path otherwise; ``"reference"`` forms the local logits with ``F.linear`` and
    calls :func:`vocab_parallel_cross_entropy` (its backward all-reduces the hidden
    gradient, so every rank must run backward). Mismatched shapes or options between ranks
    raise the same ``ValueError`` on every rank (see :func:`vocab_parallel_cross_entropy`).

    Args:
        hidden: (..., D) hidden states, the same on every rank (float64, float32, bfloat16
            or float16).
        weight: (V_r, D) this rank's rows of the head in ``nn.Linear`` layout, hidden's
            dtype.
        targets: (...) global class indices in [0, V) or ``ignore_index``, the same on
            every rank; or (..., V_r) floating-point class probabilities, this rank's
            columns of them (their sums over the ranks must be 1; no gradient flows to them).
        bias: (V_r,) this rank's entries of the head's bias, or None (on every rank).
        class_weight: (V,) class weights over the whole vocabulary, the same full vector on
            every rank, or None; ``"mean"`` is then the weighted mean (torch's).
        ignore_index: Target value whose tokens count for nothing.
        reduction: ``"mean"`` over tokens that count (0 when none does), ``"sum"``, or
            ``"none"`` (per token, 0 at ignored tokens).
        label_smoothing: Smoothing weight in [0, 1] (torch's definition).
        z_loss: Coefficient of ``logsumexp(logits)**2`` per token, >= 0.
        softcap: Soft-capping constant of ``c * tanh(logits / c)``, or None.
        base: Logarithm base of the loss (``math.e``: nats; 2: bits).
        chunk_size: Token rows per chunk (> 0, the same on every rank), or None.
        impl: ``"auto"``, ``"chunked"`` or ``"reference"``.
        group: Process group the vocabulary is split across; None for the default group.
        validate: Check that class indices are in range and identical on every rank, or that
            probabilities are finite, >= 0 and sum to 1 (or 0) over the ranks (reads tensor
            values). Shape, dtype and option checks always run.

    Returns:
        The loss in units of ``base``, in hidden's dtype, the same on every rank: a scalar
        for ``"mean"``/``"sum"``, shaped like ``hidden`` without its last dimension for
        ``"none"``. ``hidden``'s
        gradient is the full one (summed over ranks); ``weight`` and ``bias`` get the
        gradients of this rank's rows.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
        TypeError: Inputs of the wrong type or dtype.
        ValueError: Shapes or options that differ between ranks, shapes that do not fit,
            targets out of range, bad option values.

    Examples:
        >>> import torch, torch.distributed as dist
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden = torch.randn(6, 4, generator=g, dtype=torch.float64)
        >>> weight = torch.randn(5, 4, generator=g, dtype=torch.float64)
        >>> targets = torch.tensor([0, 4, 2, -100, 1, 3])
        >>> loss = sharded_linear_cross_entropy(hidden, weight, targets, impl="chunked")
        >>> expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
        >>> bool(torch.allclose(loss, expected, rtol=1e-12))
        True
        >>> dist.destroy_process_group()

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024);
        Shoeybi et al., "Megatron-LM" (2019), the vocabulary-parallel cross-entropy.
    """
    rank, world = _require_group(group)
    _refuse_functorch("linear_cross_entropy with group=")
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"`hidden` must be a torch.Tensor; got {type(hidden).__name__}")
    device = hidden.device
    hidden, weight, bias = autocast_inputs(hidden, weight, bias)

    local_error: Exception | None = None
    values: dict[str, int] = {name: 0 for name in _LINEAR_FIELDS}
    device_values = None
    try:
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
            validate=False,  # the targets are global: checked after the exchange
        )
        probs = targets.is_floating_point()
        lead_shape = hidden.shape[:-1]
        if probs:
            if targets.requires_grad and torch.is_grad_enabled():
                raise ValueError(
                    "`targets` (class probabilities) must not require a gradient across "
                    "ranks: pass targets.detach()"
                )
            _check_local_probabilities(targets, ignore_index, validate)
        if class_weight is not None:
            if not isinstance(class_weight, torch.Tensor):
                raise TypeError(
                    "`class_weight` must be None or a torch.Tensor; got "
                    f"{type(class_weight).__name__}"
                )
            if not class_weight.is_floating_point() or class_weight.dim() != 1:
                raise TypeError(
                    "`class_weight` must be a 1-D floating-point tensor; got dtype "
                    f"{class_weight.dtype} and shape {tuple(class_weight.shape)}"
                )
            _refuse_weight_grad(class_weight, "class_weight")
        values.update(
            probs=bool(probs),
            tokens=math.prod(lead_shape),
            ndim=len(lead_shape),
            shape=_shape_hash(tuple(lead_shape)),
            dtype=_dtype_code(hidden.dtype),
            hidden_dim=weight.shape[1],
            shard=weight.shape[0],
            bias=bias is not None,
            chunk_size=-1 if chunk_size is None else int(chunk_size),
            impl=IMPLS.index(impl),
            hidden_grad=torch.is_grad_enabled() and hidden.requires_grad,
            validate=bool(validate),
            class_weight_numel=-1 if class_weight is None else class_weight.numel(),
            **_option_values(reduction, ignore_index, label_smoothing, z_loss, softcap, base),
        )
        if validate:
            no_sums = torch.zeros(2, dtype=torch.int64, device=device)
            device_values = torch.cat(
                [
                    no_sums if probs else _checksums(targets.to(device)),
                    torch.zeros(2, dtype=torch.int64, device=device)
                    if class_weight is None
                    else _checksums(class_weight.to(device)),
                ]
            )
    except (TypeError, ValueError) as exc:
        local_error = exc
        values["error"] = 1
    if device_values is None:
        device_values = torch.zeros(len(_LINEAR_DEVICE), dtype=torch.int64, device=device)

    rows = _exchange(
        _LINEAR_FIELDS,
        values,
        device_values,
        _LINEAR_DEVICE,
        device=device,
        group=group,
        world=world,
    )
    _raise_on_local_errors(rows, local_error)
    _check_same(
        _LINEAR_FIELDS, rows, tuple(n for n in _LINEAR_FIELDS if n not in ("error", "shard"))
    )
    shard_rows = [row["shard"] for row in rows]
    num_classes = sum(shard_rows)
    vocab_start = sum(shard_rows[:rank])
    tokens = rows[0]["tokens"]
    if validate and probs:
        _check_probability_sums(targets, group)
    elif validate:
        _check_target_range(targets, num_classes, ignore_index)
    if class_weight is not None:
        # The same vector on every rank (compared above): each rank raises alike.
        check_class_weight(
            class_weight,
            num_classes,
            validate=validate,
            name="class_weight",
            per="one entry per class of the whole vocabulary (the sum of the shards' rows)",
        )
        class_weight = class_weight.detach().to(device)

    if impl == "auto":
        impl = "reference" if tokens * num_classes <= AUTO_REFERENCE_ELEMENTS else "chunked"
    if impl == "reference":
        if values["hidden_grad"]:
            hidden = _SumGradOverRanks.apply(hidden, group)
        logits = torch.nn.functional.linear(hidden, weight, bias)
        return vocab_parallel_cross_entropy(
            logits,
            targets,
            vocab_start=vocab_start,
            group=group,
            weight=class_weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            base=base,
            validate=False,
        )

    hidden_dim = weight.shape[1]
    h2 = hidden.reshape(-1, hidden_dim)
    if probs:  # every token counts
        y = targets.reshape(tokens, weight.shape[0])
        index = torch.arange(tokens, device=device)
    else:
        y = targets.reshape(-1).to(device=device, dtype=torch.long)
        index = (y != ignore_index).nonzero().squeeze(1)
    n = index.numel()
    if chunk_size is None:
        itemsize = torch.empty((), dtype=_compute_dtype(hidden.dtype, device)).element_size()
        chunk = plan_chunk_rows(n, hidden_dim, max(shard_rows), itemsize=itemsize)
    else:
        chunk = int(chunk_size)
    grad_on = torch.is_grad_enabled()
    want = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    plan = _LinearPlan(
        spec=_Spec(
            vocab_start=vocab_start,
            num_classes=num_classes,
            ignore_index=int(ignore_index),
            label_smoothing=float(label_smoothing),
            z_loss=float(z_loss),
            softcap=None if softcap is None else float(softcap),
        ),
        reduction=reduction,
        base=float(base),
        rows=max(chunk, 1),
        group=group,
        want=want,
        class_weight=class_weight,
        out_dtype=loss_dtype(hidden.dtype, device),
    )
    if reduction == "none":
        loss = _ShardedLinearPerToken.apply(h2, weight, bias, y, plan, index)
        return loss.reshape(lead_shape)
    return _ShardedLinearReduced.apply(h2, weight, bias, y, plan, index)


__all__ = ["sharded_linear_cross_entropy", "vocab_parallel_cross_entropy"]
