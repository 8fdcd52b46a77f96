"""The losses as plain differentiable torch operations, for what the fast paths cannot do.

The fast paths of :mod:`crossentropy.losses` compute each gradient directly (in the forward
pass or chunk by chunk) and hand it to autograd as a constant block. That is right for
``loss.backward()``, but a gradient that is itself to be differentiated (a gradient
penalty, a Hessian-vector product, meta-learning: ``torch.autograd.grad(...,
create_graph=True)``) must be a function of the inputs that autograd can follow.

So every autograd function of the package checks, in its backward pass, whether autograd
is building a graph (``torch.is_grad_enabled()`` is True there exactly when
``create_graph=True``). If it is, the function recomputes its outputs from the saved
inputs with :func:`composite_rows`, which spells the loss out in torch operations that are
differentiable to any order, and differentiates that with ``create_graph=True``. The
first-order path is untouched; the second-order one costs what eager torch costs (it
holds the softmax and, for a fused head, the logits).

The same formulas serve the calls that the autograd functions cannot serve at all
(:func:`traced`): inside ``torch.func`` transforms (``grad``, ``vmap``, ``hessian``...),
for inputs carrying a forward-mode tangent, and for class weights that require a gradient.
The public functions then compute the loss through them from the start.

Functions whose second-order path is not built (the losses over ``torch.distributed``)
use :func:`first_order_only`: the gradient they return is then connected to their
inputs through a node that raises a clear error if anything differentiates it, instead
of being a constant that would silently drop the second-order terms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from crossentropy._tensors import functorch_active, is_fake
from crossentropy.losses._kernel import accumulation_dtype


class CompositeRows(NamedTuple):
    """Per-row ``loss`` (units of ``base``), ``logsumexp`` (nats) and ``entropy`` (units of
    ``base``, or None), in the accumulation dtype, all differentiable."""

    loss: torch.Tensor
    logsumexp: torch.Tensor
    entropy: torch.Tensor | None


def composite_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    with_entropy: bool = False,
) -> CompositeRows:
    """What :func:`crossentropy.losses._kernel.cross_entropy_rows` computes, as a graph.

    The same formulas (see that function): with ``z`` the (soft-capped) logits, ``log p =
    z - lse``, class weights ``w`` and smoothing ``eps``, the loss of an index target ``y``
    is ``[(1 - eps) w_y (-log p_y) + (eps / V) sum_c w_c (-log p_c) + z_loss w_y lse**2] /
    ln b`` and that of probabilities ``t`` is ``[-sum_c q_c log p_c + z_loss lse**2] /
    ln b`` with ``q = w ((1 - eps) t + eps / V)``. Every row must hold a valid class.
    Differentiable to any order in ``logits``, in the class weights and (for
    probabilities) in ``targets``.

    Examples:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
        >>> rows = composite_rows(z, torch.tensor([0]))
        >>> bool(torch.allclose(rows.loss, torch.nn.functional.cross_entropy(z, torch.tensor([0]))))
        True
        >>> (g,) = torch.autograd.grad(rows.loss.sum(), z, create_graph=True)
        >>> bool(g.requires_grad)
        True
    """
    acc = accumulation_dtype(logits.dtype)
    x = logits.to(acc)
    z = softcap * torch.tanh(x / softcap) if softcap is not None else x
    num_classes = z.shape[1]
    lse = torch.logsumexp(z, 1)
    log_p = z - lse.unsqueeze(1)
    eps = float(label_smoothing)
    w = None if weight is None else weight.to(device=z.device, dtype=acc)
    if targets.is_floating_point():
        q = targets.to(acc)
        if eps > 0:
            q = (1.0 - eps) * q + eps / num_classes
        if w is not None:
            q = q * w
        # A class of no target mass adds 0 even at a logit of -inf (0 * -inf: 0), in the
        # value and in the derivatives: log p is masked only where it is -inf.
        masked = (q == 0) & (log_p == -math.inf)
        loss = -(q * torch.where(masked, 0.0, log_p)).sum(1)
        if z_loss > 0:
            loss = loss + z_loss * lse.square()
    else:
        y = targets.long().unsqueeze(1)
        nll = -log_p.gather(1, y).squeeze(1)
        w_y = None if w is None else w[y.squeeze(1)]
        loss = (1.0 - eps) * (nll if w_y is None else nll * w_y)
        if eps > 0:
            smooth = -(log_p.sum(1) if w is None else log_p @ w)
            loss = loss + (eps / num_classes) * smooth
        if z_loss > 0:
            term = z_loss * lse.square()
            loss = loss + (term if w_y is None else term * w_y)
    entropy = None
    if with_entropy:
        # 0 log 0 = 0 at logits of -inf, in the value and in every derivative (a where on
        # log p, not on the product, whose derivative would be 0 * -inf).
        p = log_p.exp()
        entropy = -(p * torch.where(p > 0, log_p, 0.0)).sum(1)
    inv_ln_b = 1.0 / math.log(base)
    if inv_ln_b != 1.0:
        loss = loss * inv_ln_b
        entropy = None if entropy is None else entropy * inv_ln_b
    return CompositeRows(loss, lse, entropy)


def differentiate(
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor | None],
    inputs: Sequence[torch.Tensor | None],
    needs: Sequence[bool],
) -> list[torch.Tensor | None]:
    """Gradients of ``outputs`` (weighted by ``grad_outputs``) with respect to the
    ``inputs`` whose ``needs`` flag is set, as a graph (``create_graph=True``); None for the
    others."""
    wanted = [
        (i, x)
        for i, (x, need) in enumerate(zip(inputs, needs, strict=True))
        if need and x is not None
    ]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if g is not None]
    if not wanted or not pairs:
        return result
    grads = torch.autograd.grad(
        [o for o, _ in pairs],
        [x for _, x in wanted],
        [g for _, g in pairs],
        create_graph=True,
        allow_unused=True,
    )
    for (i, x), g in zip(wanted, grads, strict=True):
        result[i] = g if g is not None else torch.zeros_like(x)
    return result


def traced(*tensors: object, constants: tuple[object, ...] = ()) -> bool:
    """Whether the losses must compute through plain torch operations: inside a
    ``torch.func`` transform, when an input carries a forward-mode tangent
    (``torch.autograd.forward_ad``), which the autograd functions do not propagate, or
    when one of ``constants`` (the class weights, which the autograd functions treat as
    constants) requires a gradient while grad mode is on, or for fake tensors
    (``FakeTensorMode``, ``torch.export``), whose values the autograd functions would read."""
    if functorch_active():
        return True
    if any(isinstance(t, torch.Tensor) and is_fake(t) for t in tensors):
        return True
    if torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in constants
    ):
        return True
    from torch.autograd import forward_ad

    if getattr(forward_ad, "_current_level", 0) < 0:
        return False  # no dual level is entered, so no tensor carries a tangent
    return any(
        isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
        for t in (*tensors, *constants)
    )


def graph_kept() -> bool:
    """Inside a backward pass: whether autograd keeps the graph afterwards
    (``retain_graph=True``). References kept on ``ctx`` for a later pass are dropped when it
    does not, so that they do not outlive the backward pass while the loss is still
    referenced; where torch does not say, they are kept."""
    ask = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if ask is None:
        return True
    try:
        return bool(ask())
    except RuntimeError:  # not inside a backward pass
        return True


# ---------------------------------------------------------------------------------------
# A clear error where the second-order path is not built.


class _FirstOrderOnly(torch.autograd.Function):
    """Passes a gradient through; differentiating it raises (see :func:`first_order_only`)."""

    @staticmethod
    def forward(ctx, name, grad, *inputs):
        ctx.name = name
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"{ctx.name} has no second derivative: its gradient was formed directly, so "
            "differentiating it (create_graph=True, then another backward pass) is not "
            "supported; compute the loss without group= (or from gathered logits with "
            "crossentropy.losses.cross_entropy) where gradients of gradients are needed"
        )


def first_order_only(name: str) -> Callable:
    """Decorate an autograd ``backward`` whose result must not be differentiated again.

    The wrapped backward runs without building a graph. When autograd is building one
    (``create_graph=True``) and any of the inputs the forward pass kept in ``ctx.anchors``
    (references, not copies) requires a gradient, each gradient returned is passed through
    a node connected to those inputs whose backward raises a ``NotImplementedError`` naming
    ``name``: a second backward pass fails loudly instead of treating the gradient as a
    constant.
    """

    def decorate(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def wrapper(ctx, *grad_outputs):
            building = torch.is_grad_enabled()
            with torch.no_grad():
                grads = backward(ctx, *grad_outputs)
            anchors = getattr(ctx, "anchors", ())
            if not graph_kept():
                ctx.anchors = ()
            if not building:
                return grads
            sources = [t for t in anchors if t is not None and t.requires_grad]
            sources += [g for g in grad_outputs if g is not None and g.requires_grad]
            if not sources:
                return grads
            return tuple(
                _FirstOrderOnly.apply(name, g, *sources) if isinstance(g, torch.Tensor) else g
                for g in grads
            )

        return wrapper

    return decorate


__all__ = [
    "CompositeRows",
    "composite_rows",
    "differentiate",
    "first_order_only",
    "functorch_active",
    "graph_kept",
    "traced",
]
