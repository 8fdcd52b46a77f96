"""The information measures: information, entropy, cross-entropy, KL and JS divergences."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from crossentropy._tensors import functorch_active, readable
from crossentropy.info import _blocked
from crossentropy.info._validate import (
    _check_entries,
    _to_numpy,
    as_float_array,
    as_float_pair,
    broadcast_shape,
    check_axis,
    check_base,
    check_flag,
    check_keepdims,
    check_outcomes,
    log_function,
    promote_pair,
    validate_distribution,
)

__all__ = [
    "binary_entropy",
    "cross_entropy",
    "entropy",
    "information",
    "js_divergence",
    "kl_divergence",
    "normalize",
    "perplexity",
]


def _finish(result: Any) -> Any:
    """NumPy 0-d results become NumPy scalars (``np.float64`` is a Python ``float``)."""
    if isinstance(result, np.ndarray) and result.ndim == 0:
        return result[()]
    return result


_NP = array_api_compat.array_namespace(np.empty(0))
"""The array-API namespace of NumPy arrays: the blocked path's blocks are NumPy's, whatever
kind of array they were read from."""


def _host(array: Any) -> np.ndarray | None:
    """The blocked path's view of ``array``: a NumPy array itself; for a torch tensor in
    the CPU's memory whose result needs no gradient, a NumPy array over the same memory (no
    copy); else None (the array's own library computes). torch's own operations on a large
    tensor allocate a temporary as large as the input for each step of a measure (several
    GB for a KL divergence of a 400 MB pair) and run 3-8 times longer than the blocked
    path on the same memory."""
    if isinstance(array, np.ndarray):
        return array
    torch = sys.modules.get("torch")
    if torch is None or type(array) is not torch.Tensor:  # subclasses (fake tensors) keep theirs
        return None
    if torch.compiler.is_compiling() or functorch_active():  # traced: torch's operations
        return None
    if (
        array.device.type != "cpu"
        or array.layout != torch.strided
        or array.dtype not in (torch.float64, torch.float32, torch.float16)
        or array.is_conj()
        or array.is_neg()
        or (array.requires_grad and torch.is_grad_enabled())
    ):
        return None
    return array.detach().numpy()


def _as_kind(like: Any, result: np.ndarray) -> Any:
    """A blocked result in the kind of the input ``like``: a NumPy scalar for 0-d NumPy
    results (:func:`_finish`), a tensor over the same memory for a torch input."""
    if isinstance(like, np.ndarray):
        return _finish(result)
    torch = sys.modules["torch"]  # like is a tensor: torch is imported
    return torch.from_numpy(np.ascontiguousarray(result))


def _zero(xp: Any, like: Any) -> Any:
    """A 0-d zero of ``like``'s dtype and device, for ``where``."""
    return xp.zeros((), dtype=like.dtype, device=_device(like))


def _quiet(array: Any, **ignore: Any) -> contextlib.AbstractContextManager[Any]:
    """NumPy's ``errstate(**ignore)``, for NumPy arrays and the array libraries built on
    NumPy (array-api-strict's arrays warn through it); nothing for torch, which does not
    warn, and whose tracers (torch.compile's) cannot enter NumPy's error state."""
    if array_api_compat.is_torch_array(array):
        return contextlib.nullcontext()
    return np.errstate(**ignore)


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


def _checks_values(validate: Any, *arrays: Any) -> bool:
    """Whether to check the values: ``validate`` (a bool) and every array has values to
    read (:func:`crossentropy._tensors.readable`): a torch meta or fake tensor has none
    (shapes only), nor has one inside a ``torch.func`` transform such as ``vmap``."""
    return check_flag(validate, "validate") and all(readable(a) for a in arrays)


def _as_pair(p: Any, q: Any) -> tuple[Any, Any, Any]:
    """``(xp, p, q)``: both inputs as floating arrays of one kind, each in its own dtype
    (for its checks; :func:`promote_pair` gives the common one for the plain path, and
    the blocked path widens the narrower one block by block, with no copy of the
    whole)."""
    return as_float_pair(p, q, promote=False)


def _prepare_pair(xp: Any, p: Any, q: Any, axis: Any, *, values: bool) -> int:
    """Check two distributions reduced along ``axis`` of their broadcast shape; returns the
    axis as a non-negative index. Each is checked in its own dtype, against that dtype's
    tolerance: a float16 model output beside float64 targets is held to float16's rule,
    and its message names float16. ``values=False`` checks the shapes only."""
    shape = broadcast_shape(p, q)
    ax = check_axis(axis, len(shape), subject="`p` and `q` broadcast together")
    for name, array in (("p", p), ("q", q)):
        own = ax - (len(shape) - array.ndim)
        if not values:
            if own >= 0:
                check_outcomes(array, name, own, axis_label=axis)
            continue
        if own >= 0 and array.shape[own] == shape[ax]:
            validate_distribution(xp, array, name, own, axis_label=axis)
            continue
        try:
            validate_distribution(xp, xp.broadcast_to(array, shape), name, ax, axis_label=axis)
        except ValueError as error:
            message = str(error)
            if "must sum to 1" not in message:
                raise
            # The entries were repeated along the outcomes: say so, as "a sum of 2" for
            # p = [1.0] would puzzle, and normalising is not the fix.
            other = "q" if name == "p" else "p"
            raise ValueError(
                f"{message.split('; normalise explicitly')[0]}: `{name}` of shape "
                f"{tuple(array.shape)} has one outcome along axis {axis}, repeated to the "
                f"{shape[ax]} outcomes of `{other}`; give both the same number of outcomes"
            ) from None
    return ax


def information(p: Any, *, base: float = 2, validate: bool = True) -> Any:
    """Information (surprisal) of events with probabilities ``p``: ``-log_base p``, elementwise.

    The number of bits (for ``base=2``) that an ideal code spends on an event of
    probability p: 1 bit for p = 1/2, 0 for a certain event, +inf for p = 0 (an impossible
    event has no finite code).

    Args:
        p: probabilities in [0, 1], any shape; a NumPy array, a torch tensor, any array-API
            array, or a Python number or sequence.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        validate: check the values (entries finite and >= 0, at most 1). ``False`` skips
            these checks, and with them every read of the values on the host, so that
            ``torch.func.vmap``, ``torch.compile(fullgraph=True)`` and
            ``torch.autograd.gradcheck`` on raw inputs work; the checks of shapes, ``base``
            and dtype still run. Invalid values then give undefined numbers. Torch meta
            tensors skip the value checks on their own (shapes only) and give a meta result.

    Returns:
        An array of ``p``'s shape, kind and device (a NumPy scalar for a 0-d NumPy result):
        the information in bits (or units of ``base``). Integer and boolean input is
        computed in the default float (float64 for NumPy).

    Raises:
        ValueError: an entry is NaN, infinite, negative or above 1; ``base`` is not a finite
            number > 0 and != 1.
        TypeError: ``p`` is not made of real numbers; ``base`` is not a real number.

    Examples:
        The seed's information table (``SEED.md``): uniform words carry 2 bits, the
        skewed distribution 1, 2.32, 2.32 and 3.32 bits.

        >>> from crossentropy import info
        >>> info.information([0.25, 0.5, 0.2, 0.1]).round(6).tolist()
        [2.0, 1.0, 2.321928, 3.321928]
        >>> print(info.information(0.5, base=4))
        0.5

    References:
        C. E. Shannon, "A Mathematical Theory of Communication", Bell System Technical
        Journal 27 (1948), section 6.
    """
    b = check_base(base)
    xp, array = as_float_array(p, "p")
    if _checks_values(validate, array):
        _check_entries(xp, array, "p", upper=1.0)
    with _quiet(array, divide="ignore", invalid="ignore"):  # invalid: unchecked values
        return _finish(0.0 - log_function(xp, b)(array))


def entropy(
    p: Any, *, axis: int = -1, base: float = 2, keepdims: bool = False, validate: bool = True
) -> Any:
    """Shannon entropy H(P) = -Σ p(x) log_base p(x) along ``axis``, with 0 · log 0 = 0.

    The expected information of an outcome drawn from P, and the least average number of
    bits per outcome any lossless code for P can reach (in the long run). It is 0 for a
    certain outcome and log_base n for n equally likely outcomes, its maximum.

    Large NumPy inputs, and torch tensors in the CPU's memory whose result needs no
    gradient (float32/float64, at least 2**18 entries), take a blocked path on a thread
    pool that equals ``-sum(where(p > 0, p * log_base(p), 0), axis=axis)`` with the same
    checks, as :func:`cross_entropy` describes.

    Args:
        p: distributions along ``axis`` (entries >= 0 summing to 1), e.g. (N, V) for N
            distributions over V outcomes; NumPy, torch, any array-API array, or a sequence.
        axis: the axis of outcomes.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        keepdims: keep the reduced axis with length 1.
        validate: check the values (entries finite and >= 0, sums within the dtype's
            tolerance of 1). ``False`` skips these checks, and with them every read of the
            values on the host, so that ``torch.func.vmap``,
            ``torch.compile(fullgraph=True)`` and ``torch.autograd.gradcheck`` on raw inputs
            work; the checks of shapes, ``axis``, ``base`` and dtype still run. Invalid
            values then give undefined numbers. Torch meta tensors skip the value checks on
            their own (shapes only) and give a meta result.

    Returns:
        The entropy in bits (or units of ``base``), of ``p``'s kind, device and floating
        dtype, with ``axis`` removed (a NumPy scalar for one NumPy distribution).

    Raises:
        ValueError: ``p`` has a negative, NaN or infinite entry, a sum off 1 beyond the
            dtype's tolerance (see ``info.normalize``), no outcomes along ``axis``; ``axis``
            is out of range; ``base`` is not a finite number > 0 and != 1.
        TypeError: ``p`` is not made of real numbers; ``axis`` is not an integer (a bool is
            not one); ``base`` is not a real number; ``keepdims`` is not a bool.

    Examples:
        The seed's word distribution and its two prize boxes (``SEED.md``):

        >>> from crossentropy import info
        >>> print(info.entropy([0.5, 0.2, 0.2, 0.1]))
        1.7609640474436812
        >>> info.entropy([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]).round(3).tolist()
        [1.157, 1.571]
        >>> print(info.entropy([0.25, 0.25, 0.25, 0.25]))
        2.0

    References:
        C. E. Shannon (1948), section 6; T. M. Cover and J. A. Thomas, "Elements of
        Information Theory", 2nd ed., Wiley 2006, chapter 2.
    """
    b = check_base(base)
    keepdims = check_keepdims(keepdims)
    xp, array = as_float_array(p, "p")
    ax = check_axis(axis, array.ndim, "p")
    values = _checks_values(validate, array)
    host = _host(array)
    if host is not None and _blocked.eligible(host, axis=ax):
        result = _blocked.along(
            [host], ax, lambda x: _blocked.reduce_rows(x, None, base=b, check=values)
        )
        if result is not None:
            return _as_kind(array, np.expand_dims(result, ax) if keepdims else result)
    if values:
        validate_distribution(xp, array, "p", ax, axis_label=axis)
    else:
        check_outcomes(array, "p", ax, axis_label=axis)
    log = log_function(xp, b)
    with _quiet(array, divide="ignore", invalid="ignore"):
        present = array > 0
        logs = log(_where_else_one(xp, present, array))
        terms = xp.where(present, array * logs, _zero(xp, logs))
        return _finish(0.0 - xp.sum(terms, axis=ax, keepdims=keepdims))


def cross_entropy(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float = 2,
    keepdims: bool = False,
    validate: bool = True,
) -> Any:
    """Cross-entropy H(P, Q) = -Σ p(x) log_base q(x) along ``axis``; math order: P is the truth.

    The average number of bits spent on data drawn from P by a code built for Q. Terms
    with p(x) = 0 count 0 (whatever q(x) is); p(x) > 0 where q(x) = 0 gives +inf. It equals
    H(P) + D(P‖Q), so it is at least H(P), with equality only when Q = P (Gibbs'
    inequality). With a one-hot P it is the classification loss -log_base q(true class).

    Large NumPy inputs of one shape, or one row against many (a ``q`` of shape (V,)
    beside a ``p`` of shape (N, V), or the other way round), and such torch tensors in
    the CPU's memory whose result needs no gradient (float32/float64, at least 2**18
    entries), take a blocked path on a thread pool that equals
    ``-sum(where(p > 0, p * log_base(q), 0), axis=axis)`` with the same checks and makes no
    temporary the size of the input. It reads arrays that are C-contiguous with ``axis``
    last in place (along the last axis, or a transposed view along axis 0), and copies
    others (another axis, SciPy's default being 0; a strided view) in chunks of 16 MiB
    with the axis moved last. A single row broadcasts against C-contiguous arrays along
    their last axis.

    Args:
        p: the true distributions along ``axis``, e.g. (N, V); NumPy, torch, any array-API
            array, or a sequence.
        q: the model's distributions, broadcastable with ``p``.
        axis: the axis of outcomes in the broadcast shape.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        keepdims: keep the reduced axis with length 1.
        validate: check the values (entries finite and >= 0, each sum within its dtype's
            tolerance of 1). ``False`` skips these checks, and with them every
            read of the values on the host, so that ``torch.func.vmap``,
            ``torch.compile(fullgraph=True)`` and ``torch.autograd.gradcheck`` on raw inputs
            work; the checks of shapes, ``axis``, ``base`` and dtype still run. Invalid
            values then give undefined numbers. Torch meta tensors skip the value checks on
            their own (shapes only) and give a meta result.

    Returns:
        H(P, Q) in bits (or units of ``base``) with ``axis`` removed from the broadcast
        shape; of the inputs' kind and device, in their common floating dtype.

    Raises:
        ValueError: ``p`` or ``q`` has a negative, NaN or infinite entry, a sum off 1, no
            outcomes; the shapes don't broadcast; ``axis`` or ``base`` is invalid.
        TypeError: an input is not made of real numbers, or the two are arrays of
            different kinds (NumPy and torch); ``axis`` is not an integer; ``base`` is not a
            real number; ``keepdims`` is not a bool.

    Examples:
        The seed's classification example: a cat (one-hot label) predicted as
        [0.2, 0.7, 0.1] costs -log2 0.7 bits; the word distribution coded for uniform words
        costs 2 bits per word (``SEED.md``).

        >>> from crossentropy import info
        >>> print(info.cross_entropy([0, 1, 0], [0.2, 0.7, 0.1]))
        0.5145731728297583
        >>> print(round(info.cross_entropy([0.5, 0.2, 0.2, 0.1], [0.25] * 4), 12))
        2.0
        >>> print(info.cross_entropy([0.5, 0.5], [1.0, 0.0]))
        inf

    References:
        T. M. Cover and J. A. Thomas, "Elements of Information Theory", 2nd ed. (2006),
        sections 2.3 and 5.4 (the cost of coding with the wrong distribution).
    """
    b = check_base(base)
    keepdims = check_keepdims(keepdims)
    xp, p_own, q_own = _as_pair(p, q)
    values = _checks_values(validate, p_own, q_own)
    blocked = _try_blocked(
        xp,
        (p_own, q_own),
        axis,
        keepdims,
        values,
        lambda p, q, check: _blocked.reduce_rows(p, q, base=b, check=check),
    )
    if blocked is not None:
        return blocked
    p_array, q_array = promote_pair(xp, p_own, q_own)
    ax = _prepare_pair(xp, p_own, q_own, axis, values=values)
    log = log_function(xp, b)
    with _quiet(p_array, divide="ignore", invalid="ignore"):
        present = p_array > 0
        logs = log(_where_else_one(xp, present, q_array))
        terms = xp.where(present, p_array * logs, _zero(xp, logs))
        return _finish(0.0 - xp.sum(terms, axis=ax, keepdims=keepdims))


def _try_blocked(
    xp: Any,
    arrays: tuple[Any, Any],
    axis: Any,
    keepdims: bool,
    values: bool,
    reduce: Callable[[Any, Any, bool], Any],
) -> Any:
    """The blocked path's result for two large arrays of one shape, or a single row and a
    large array, that it reads (see
    :func:`_host` and :func:`crossentropy.info._blocked.eligible`), reduced by
    ``reduce(p, q, check)`` along the last axis; ``None`` where that path does not apply
    or finds input to reject (the plain path then checks it and raises the detailed
    error).

    ``arrays`` is ``(p, q)`` as :func:`_as_pair` gives them, each in its own dtype (a
    float32 input beside a float64 one is widened by the blocked path block by block).
    ``check`` asks the blocked path to check the row sums: where ``values`` is on and both
    inputs share a dtype. Inputs of two dtypes are checked here first, each in its own
    dtype against its own tolerance, as the plain path checks them, and the blocked path
    then skips the sums; with ``values`` off it skips them too."""
    p, q = arrays
    host_p, host_q = _host(p), _host(q)
    if host_p is None or host_q is None or not host_p.ndim or not host_q.ndim:
        return None
    # One shape, or a single row beside many: then the result has the other's shape.
    full, full_host = (p, host_p) if host_p.size >= host_q.size else (q, host_q)
    if full_host.ndim < max(host_p.ndim, host_q.ndim):
        return None  # a single row with more axes than the full array: the plain path
    ax = check_axis(axis, full_host.ndim, subject="`p` and `q` broadcast together")
    if not _blocked.eligible(host_p, host_q, axis=ax):
        return None
    check = values
    if values and p.dtype != q.dtype:
        _prepare_pair(xp, p, q, axis, values=True)
        check = False
    result = _blocked.along([host_p, host_q], ax, lambda a, b: reduce(a, b, check))
    if result is None:
        return None
    return _as_kind(full, np.expand_dims(result, ax) if keepdims else result)


def _where_else_one(xp: Any, present: Any, x: Any) -> Any:
    """``x`` where ``present``, else 1: the log of an outcome that never happens is then 0,
    so that the masked branch of ``where`` holds no -inf or NaN, nor passes one to a
    gradient (torch autograd differentiates both branches)."""
    return xp.where(present, x, xp.ones((), dtype=x.dtype, device=_device(x)))


def _relative_terms(
    xp: Any,
    p: Any,
    q: Any,
    log: Any,
    base: float,
    difference: Any = None,
    *,
    branches: bool = True,
) -> Any:
    """Elementwise p · log(p / q), 0 where p = 0, +inf where p > 0 = q (no overflow in p/q).

    Where p and q are within a factor 2 of each other the log is taken as
    log1p((p - q) / q), with p - q exact there (Sterbenz's lemma) or given as
    ``difference``: log(p / q) would round the ratio to a float next to 1 and lose the
    digits of a small divergence. ``branches=True`` skips each mend that no entry needs
    (one read of the values on the host each); ``False`` applies both everywhere, with
    the same numbers, for tracing (vmap, torch.compile) and meta tensors.
    """
    present = p > 0
    p_safe = _where_else_one(xp, present, p)
    q_safe = _where_else_one(xp, present, q)
    ratio = p_safe / q_safe
    log_ratio = log(ratio)
    infinite = xp.isinf(ratio)
    if not branches or bool(xp.any(infinite)):
        overflow = infinite & (q_safe > 0)
        log_ratio = xp.where(overflow, log(p_safe) - log(q_safe), log_ratio)
    near = (q_safe <= p_safe * 2.0) & (p_safe <= q_safe * 2.0)
    if not branches or bool(xp.any(near)):
        zero = _zero(xp, ratio)
        # A given p - q is masked as p and q are: where p = 0 (p_safe = q_safe = 1) an
        # unmasked p - q = -1 would make log1p(-1) = -inf in the branch ``where`` drops,
        # and its gradient 0 · inf = NaN.
        difference = p_safe - q_safe if difference is None else xp.where(present, difference, zero)
        step = xp.where(near, difference / q_safe, zero)
        log1p = xp.log1p(step)
        if base != math.e:
            log1p = log1p * (1.0 / math.log(base))
        log_ratio = xp.where(near, log1p, log_ratio)
    return xp.where(present, p * log_ratio, _zero(xp, ratio))


def kl_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float = 2,
    keepdims: bool = False,
    validate: bool = True,
) -> Any:
    """Kullback-Leibler divergence D(P‖Q) = Σ p(x) log_base(p(x) / q(x)) along ``axis``.

    The extra bits per outcome paid for coding data from P with a code built for Q:
    D(P‖Q) = H(P, Q) - H(P) >= 0, zero exactly when Q = P (computed as exactly 0.0). Terms
    with p(x) = 0 count 0; p(x) > 0 where q(x) = 0 gives +inf. It is not symmetric. Each
    term is p log(p/q), not a difference of two sums, and where p and q are within a
    factor 2 the log is log1p((p - q) / q), so small divergences keep their digits: the
    relative error is about 1e-16 / δ when p and q differ by a relative δ (H(P, Q) - H(P)
    would lose about 1e-16 / δ²). Rounding can still leave a value of order -1e-16 where
    the true value is 0.

    Large inputs of one shape, or one row against many (NumPy or CPU torch, as for
    :func:`cross_entropy`), form the same terms block by block on a thread pool, while
    each block is in cache, in a compiled kernel where a C compiler is at hand (float64
    terms, glibc's vector logs): numbers within a few roundings of the terms' sizes of
    those of smaller inputs, which NumPy's operations form.

    Args:
        p: the true distributions along ``axis``, e.g. (N, V).
        q: the model's distributions, broadcastable with ``p``.
        axis: the axis of outcomes in the broadcast shape.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        keepdims: keep the reduced axis with length 1.
        validate: check the values (entries finite and >= 0, each sum within its dtype's
            tolerance of 1). ``False`` skips these checks, and with them every
            read of the values on the host, so that ``torch.func.vmap``,
            ``torch.compile(fullgraph=True)`` and ``torch.autograd.gradcheck`` on raw inputs
            work; the checks of shapes, ``axis``, ``base`` and dtype still run. Invalid
            values then give undefined numbers. Torch meta tensors skip the value checks on
            their own (shapes only) and give a meta result.

    Returns:
        D(P‖Q) in bits (or units of ``base``), ``axis`` removed from the broadcast shape.

    Raises:
        ValueError: as :func:`cross_entropy`.
        TypeError: as :func:`cross_entropy`.

    Examples:
        >>> from crossentropy import info
        >>> p = [0.5, 0.2, 0.2, 0.1]
        >>> print(info.kl_divergence(p, p))
        0.0
        >>> print(round(info.kl_divergence(p, [0.25] * 4), 12))  # 2 - H(P)
        0.239035952556

    References:
        S. Kullback and R. A. Leibler, "On Information and Sufficiency", Annals of
        Mathematical Statistics 22 (1951); Cover and Thomas (2006), section 2.3.
    """
    b = check_base(base)
    keepdims = check_keepdims(keepdims)
    xp, p_own, q_own = _as_pair(p, q)
    values = _checks_values(validate, p_own, q_own)

    def terms_in(ns: Any) -> Callable[[Any, Any], Any]:
        """The elementwise terms for arrays of namespace ``ns``."""
        log = log_function(ns, b)
        return lambda p_rows, q_rows: _relative_terms(ns, p_rows, q_rows, log, b, branches=values)

    host_terms = terms_in(_NP)  # the blocked path's blocks are NumPy's
    blocked = _try_blocked(
        xp,
        (p_own, q_own),
        axis,
        keepdims,
        values,
        lambda p, q, check: _blocked.reduce_terms(p, q, host_terms, check=check, native=("kl", b)),
    )
    if blocked is not None:
        return blocked
    p_array, q_array = promote_pair(xp, p_own, q_own)
    ax = _prepare_pair(xp, p_own, q_own, axis, values=values)
    with _quiet(p_array, divide="ignore", invalid="ignore", over="ignore"):
        return _finish(xp.sum(terms_in(xp)(p_array, q_array), axis=ax, keepdims=keepdims))


def js_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float = 2,
    keepdims: bool = False,
    validate: bool = True,
) -> Any:
    """Jensen-Shannon divergence ½ D(P‖M) + ½ D(Q‖M) with M = (P + Q) / 2, along ``axis``.

    Symmetric, always finite (M > 0 wherever P or Q is), between 0 and 1 bit (log_base 2
    in general); 0 exactly when P = Q. This is the divergence itself, not its square root
    (the Jensen-Shannon distance that ``scipy.spatial.distance.jensenshannon`` returns).
    With d = (p - q) / (p + q), the terms p log(p / m) and q log(q / m) are p log1p(d)
    and q log1p(-d) (the log of the ratio 2p / (p + q) where p < q / 3, whose d would
    lose digits), so small divergences keep their digits too, as in
    :func:`kl_divergence`; large inputs take the same blocked path.

    Args:
        p: distributions along ``axis``, e.g. (N, V).
        q: distributions broadcastable with ``p``.
        axis: the axis of outcomes in the broadcast shape.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        keepdims: keep the reduced axis with length 1.
        validate: check the values (entries finite and >= 0, each sum within its dtype's
            tolerance of 1). ``False`` skips these checks, and with them every
            read of the values on the host, so that ``torch.func.vmap``,
            ``torch.compile(fullgraph=True)`` and ``torch.autograd.gradcheck`` on raw inputs
            work; the checks of shapes, ``axis``, ``base`` and dtype still run. Invalid
            values then give undefined numbers. Torch meta tensors skip the value checks on
            their own (shapes only) and give a meta result.

    Returns:
        JS(P, Q) in bits (or units of ``base``), ``axis`` removed from the broadcast shape.

    Raises:
        ValueError: as :func:`cross_entropy`.
        TypeError: as :func:`cross_entropy`.

    Examples:
        >>> from crossentropy import info
        >>> print(info.js_divergence([1, 0], [0, 1]))  # disjoint supports: the maximum
        1.0
        >>> print(info.js_divergence([0.5, 0.5], [0.5, 0.5]))
        0.0

    References:
        J. Lin, "Divergence Measures Based on the Shannon Entropy", IEEE Transactions on
        Information Theory 37 (1991).
    """
    b = check_base(base)
    keepdims = check_keepdims(keepdims)
    xp, p_own, q_own = _as_pair(p, q)
    values = _checks_values(validate, p_own, q_own)

    def terms_in(ns: Any) -> Callable[[Any, Any], Any]:
        """The elementwise terms for arrays of namespace ``ns``, in nats, twice JS's."""

        def terms(p_rows: Any, q_rows: Any) -> Any:
            # p log(p / m) with m = (p + q) / 2 is p log1p(d) with d = (p - q) / (p + q),
            # and q log(q / m) is q log1p(-d): p - q, not 2p - (p + q), keeps the digits of
            # a small divergence, and no p + q is halved (which would round the smallest
            # subnormal to 0). Where p < q / 3 (d < -1/2) log1p(d) would lose digits to
            # the rounding of d, and the log is taken of the ratio 2p / (p + q) instead.
            zero = _zero(ns, p_rows)
            present_p, present_q = p_rows > 0, q_rows > 0
            total = _where_else_one(ns, present_p | present_q, p_rows + q_rows)
            d = (p_rows - q_rows) / total
            # Masked where the term is 0: no -inf or NaN in the branch ``where`` drops,
            # nor in its gradient (torch autograd differentiates both branches).
            d_p = ns.where(present_p, d, zero)
            d_q = ns.where(present_q, 0.0 - d, zero)

            def log_of_ratio(x: Any, d_x: Any) -> Any:
                """log(2x / (p + q)): log1p(d_x), or the log of the ratio where d_x < -1/2."""
                log_x = ns.log1p(d_x)
                far = d_x < -0.5
                if values and not bool(ns.any(far)):
                    return log_x
                ratio = _where_else_one(ns, far, (x * 2.0) / total)
                return ns.where(far, ns.log(ratio), log_x)

            return ns.where(present_p, p_rows * log_of_ratio(p_rows, d_p), zero) + ns.where(
                present_q, q_rows * log_of_ratio(q_rows, d_q), zero
            )

        return terms

    host_terms = terms_in(_NP)  # the blocked path's blocks are NumPy's
    scale = 0.5 / math.log(b)  # JS = ½ Σ terms, in units of the base

    def reduce(p_rows: Any, q_rows: Any, check: bool) -> Any:
        sums = _blocked.reduce_terms(p_rows, q_rows, host_terms, check=check, native=("js", b))
        return None if sums is None else sums * scale

    blocked = _try_blocked(xp, (p_own, q_own), axis, keepdims, values, reduce)
    if blocked is not None:
        return blocked
    p_array, q_array = promote_pair(xp, p_own, q_own)
    ax = _prepare_pair(xp, p_own, q_own, axis, values=values)
    with _quiet(p_array, divide="ignore", invalid="ignore", over="ignore"):
        terms = terms_in(xp)(p_array, q_array)
        return _finish(xp.sum(terms, axis=ax, keepdims=keepdims) * scale)


def binary_entropy(p: Any, *, base: float = 2, validate: bool = True) -> Any:
    """Binary entropy h(p) = -p log_base p - (1 - p) log_base(1 - p), elementwise.

    The entropy of a coin that shows heads with probability p: 0 at p = 0 and p = 1,
    1 bit at p = 1/2, symmetric about 1/2. (This, not -p log p, is the "uncertainty of an
    event" the seed describes; see ``SEED.md``, erratum 6.) ``log1p`` keeps the digits of
    the second term for small p.

    Args:
        p: probabilities in [0, 1], any shape.
        base: the logarithm's base: 2 for bits (default), ``math.e`` for nats.
        validate: check the values (entries finite and >= 0, at most 1). ``False`` skips
            these checks, and with them every read of the values on the host, so that
            ``torch.func.vmap``, ``torch.compile(fullgraph=True)`` and
            ``torch.autograd.gradcheck`` on raw inputs work; the checks of shapes, ``base``
            and dtype still run. Invalid values then give undefined numbers. Torch meta
            tensors skip the value checks on their own (shapes only) and give a meta result.

    Returns:
        h(p) in bits (or units of ``base``), of ``p``'s shape, kind and device.

    Raises:
        ValueError: an entry is NaN, infinite, negative or above 1; ``base`` is invalid.
        TypeError: ``p`` is not made of real numbers; ``base`` is not a real number.

    Examples:
        >>> from crossentropy import info
        >>> info.binary_entropy([0.0, 0.5, 1.0]).tolist()
        [0.0, 1.0, 0.0]
        >>> print(round(info.binary_entropy(0.1), 12))
        0.468995593589

    References:
        Cover and Thomas (2006), section 2.1 (Example 2.1.1).
    """
    b = check_base(base)
    xp, array = as_float_array(p, "p")
    if _checks_values(validate, array):
        _check_entries(xp, array, "p", upper=1.0)
    zero = _zero(xp, array)
    with _quiet(array, divide="ignore", invalid="ignore"):
        heads = xp.where(array > 0, array * xp.log(_where_else_one(xp, array > 0, array)), zero)
        rest = 1.0 - array
        tails = xp.where(rest > 0, rest * xp.log1p(-xp.where(rest > 0, array, zero)), zero)
        nats = 0.0 - (heads + tails)
        result = nats if b == math.e else nats / math.log(b)
    return _finish(result)


def perplexity(p: Any, *, axis: int = -1, keepdims: bool = False, validate: bool = True) -> Any:
    """Perplexity 2 ** H(P) (in bits; the same in every base): the effective number of outcomes.

    A distribution with perplexity k is as hard to predict as k equally likely outcomes:
    n for the uniform distribution over n, 1 for a certain outcome. Input in float32,
    float16 or bfloat16 is computed in float64 where its library has float64 on its device
    (NumPy, torch outside Apple's MPS, array-API libraries that report it) and rounded once
    to its dtype (correctly rounded in practice: a uniform float32 distribution over 10
    outcomes gives exactly 10); float64 input is computed in float64, within a few ulps (so
    ``perplexity([0.1] * 10)`` is 9.999999999999998). Large inputs (NumPy, or CPU torch
    needing no gradient) take the blocked path of :func:`entropy` (float16 too), which
    widens one block at a time to float64.

    Args:
        p: distributions along ``axis``, e.g. (N, V).
        axis: the axis of outcomes.
        keepdims: keep the reduced axis with length 1.
        validate: check the values (entries finite and >= 0, sums within the dtype's
            tolerance of 1). ``False`` skips these checks, and with them every read of the
            values on the host, so that ``torch.func.vmap``,
            ``torch.compile(fullgraph=True)`` and ``torch.autograd.gradcheck`` on raw inputs
            work; the checks of shapes, ``axis`` and dtype still run. Invalid values then
            give undefined numbers. Torch meta tensors skip the value checks on their own
            (shapes only) and give a meta result.

    Returns:
        The perplexity (a count, no unit), ``axis`` removed, of ``p``'s kind and dtype
        (+inf in float16 above its largest number, 65504).

    Raises:
        ValueError: as :func:`entropy`.
        TypeError: as :func:`entropy`.

    Examples:
        >>> from crossentropy import info
        >>> print(info.perplexity([0.25, 0.25, 0.25, 0.25]))
        4.0
        >>> print(round(info.perplexity([0.5, 0.2, 0.2, 0.1]), 6))
        3.389245

    References:
        F. Jelinek, R. L. Mercer, L. R. Bahl and J. K. Baker, "Perplexity - a measure of the
        difficulty of speech recognition tasks", JASA 62 (1977).
    """
    keepdims = check_keepdims(keepdims)
    xp, array = as_float_array(p, "p")
    ax = check_axis(axis, array.ndim, "p")
    values = _checks_values(validate, array)
    host = _host(array)
    if host is not None and _blocked.eligible(host, axis=ax, widen=True):
        # Each block is widened to float64 in turn (no float64 copy of the whole array),
        # its sums checked in p's own dtype as validate_distribution checks them.
        bits = _blocked.along(
            [host], ax, lambda x: _blocked.reduce_rows(x, None, base=2, check=values, widen=True)
        )
        if bits is not None:
            with np.errstate(over="ignore"):  # 2 ** 16 outcomes overflow float16: +inf
                result = (2.0**bits).astype(host.dtype, copy=False)
            return _as_kind(array, np.expand_dims(result, ax) if keepdims else result)
    if values:
        validate_distribution(xp, array, "p", ax, axis_label=axis)
    wide = _widened(xp, array)
    # Checked above in p's own dtype: the entropy of the widened copy needs no second check.
    bits = entropy(wide, axis=axis, base=2, keepdims=keepdims, validate=False)
    with _quiet(bits, over="ignore"):  # 2 ** 16 outcomes overflow float16: +inf
        result = 2.0**bits
        if wide is not array:
            result = xp.astype(result, array.dtype)
    return _finish(result)


def _widened(xp: Any, array: Any) -> Any:
    """``array`` in float64 where it is narrower and its library has float64 on its
    device (not Apple's MPS, nor an array-API library without it); else ``array``."""
    if not _is_half(array.dtype) and str(array.dtype).rsplit(".", 1)[-1] != "float32":
        return array
    if array_api_compat.is_torch_array(array):
        wide = array.device.type != "mps"
    elif isinstance(array, np.ndarray):
        wide = True
    else:
        try:
            wide = "float64" in xp.__array_namespace_info__().dtypes(device=_device(array))
        except (AttributeError, TypeError, ValueError):  # no inspection API: keep it as is
            wide = False
    return xp.astype(array, xp.float64) if wide else array


def normalize(x: Any, *, axis: int = -1, validate: bool = True) -> Any:
    """Scale non-negative weights ``x`` along ``axis`` so that they sum to 1: x / Σ x.

    The explicit way to turn counts or weights into a distribution; the measures never do
    it silently. Integer counts are converted to the default float. Half-precision
    weights (float16, bfloat16) are summed and divided in float32 and the result is
    rounded back, so a total beyond float16's range (65504) still gives the right
    distribution.

    Args:
        x: finite, non-negative weights, with a positive sum along ``axis``.
        axis: the axis of outcomes.
        validate: check the values (entries finite and >= 0, a positive sum along ``axis``).
            ``False`` skips these checks, and with them every read of the values on the host
            (``torch.func.vmap``, ``torch.compile(fullgraph=True)``); the checks of shapes,
            ``axis`` and dtype still run. Invalid values then give undefined numbers. Torch
            meta tensors skip the value checks on their own.

    Returns:
        Distributions of ``x``'s shape, kind and device (floating).

    Raises:
        ValueError: ``x`` has a negative, NaN or infinite entry, nothing along ``axis``, or a
            slice along ``axis`` that is all zero; ``axis`` is out of range.
        TypeError: ``x`` is not made of real numbers; ``axis`` is not an integer.

    Examples:
        The seed's message ``A B C A A D A B C A`` has counts 5, 2, 2, 1:

        >>> from crossentropy import info
        >>> info.normalize([5, 2, 2, 1]).tolist()
        [0.5, 0.2, 0.2, 0.1]
    """
    xp, array = as_float_array(x, "x")
    ax = check_axis(axis, array.ndim, "x")
    if array.shape[ax] == 0:
        raise ValueError(
            f"`x` must have at least one entry along axis {axis}; got shape {tuple(array.shape)}"
        )
    values = _checks_values(validate, array)
    if values:
        _check_entries(xp, array, "x", upper=None)
    # Half-precision weights are summed and divided in float32: a float16 total overflows
    # past 65504 (ones over 2**16 outcomes), and it would round away the small weights.
    work = xp.astype(array, xp.float32) if _is_half(array.dtype) else array
    with _quiet(work, over="ignore"):
        totals = xp.sum(work, axis=ax, keepdims=True)
    if values and math.prod(array.shape) and not bool(xp.all(totals > 0)):
        zero_at = np.argwhere(~(_to_numpy(totals) > 0))[0]
        index = tuple(int(i) for n, i in enumerate(zero_at) if n != ax)
        where = f" at index {index}" if index else ""
        raise ValueError(
            f"`x` must have a positive sum along axis {axis} (a distribution needs some "
            f"weight); got all zeros{where}"
        )
    if not values and math.prod(array.shape):
        # The same mend without reading the values: rows whose sum overflowed are scaled
        # by their maximum first (the rest by 1).
        overflowed = xp.isinf(totals)
        one = xp.ones((), dtype=work.dtype, device=_device(work))
        work = work / xp.where(overflowed, xp.max(work, axis=ax, keepdims=True), one)
        totals = xp.sum(work, axis=ax, keepdims=True)
    elif math.prod(array.shape) and bool(xp.any(xp.isinf(totals))):  # the sum overflowed
        work = work / xp.max(work, axis=ax, keepdims=True)
        totals = xp.sum(work, axis=ax, keepdims=True)
    with _quiet(work, divide="ignore", invalid="ignore"):  # unchecked values only
        result = work / totals
    return result if work is array else xp.astype(result, array.dtype)


def _is_half(dtype: Any) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (NumPy's or torch's, by name)."""
    return str(dtype).rsplit(".", 1)[-1] in ("float16", "bfloat16")
