"""A float64 reference for the softmax cross-entropy loss, written as the math reads.

Plain NumPy loops over tokens and classes, no tricks beyond subtracting the row maximum
inside log-sum-exp. The gradient is the closed form d(-log p_c)/dz = p - e_c, summed with
the weights of the formula, times the soft-capping chain rule 1 - tanh(x / c)**2.
Slow by design: use it on small inputs only.

:func:`composed_torch_loss` is a second, independent form for torch tensors: the loss put
together from torch's own ``F.cross_entropy`` and ``logsumexp``, differentiable by
autograd, for the options torch lacks as well (z-loss, soft-capping, base).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _tokens_last(logits: np.ndarray, targets: np.ndarray, probs: bool):
    """Move the class dimension (dim 1, or dim 0 for a single token) last, flatten tokens."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if logits.ndim == 1:
        c = logits.shape[0]
        return logits.reshape(1, c), (targets.reshape(1, c) if probs else targets.reshape(1)), ()
    c = logits.shape[1]
    token_shape = (logits.shape[0], *logits.shape[2:])
    flat = np.moveaxis(logits, 1, -1).reshape(-1, c)
    flat_targets = np.moveaxis(targets, 1, -1).reshape(-1, c) if probs else targets.reshape(-1)
    return flat, flat_targets, token_shape


def reference_cross_entropy(
    logits,
    targets,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    base=math.e,
):
    """Loss and its gradient with respect to the logits, both float64 NumPy arrays.

    Per token with logits x, z = softcap * tanh(x / softcap) (or x), lse = log sum exp z,
    log p = z - lse, weights w (ones by default), eps = label_smoothing, C classes:

    - index target y (not ignore_index):
      loss = (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c) + z_loss w_y lse^2
    - probabilities t: t' = (1 - eps) t + eps / C,
      loss = sum_c w_c t'_c (-log p_c) + z_loss lse^2

    all divided by ln(base). "mean" divides the sum by sum of w_y over counted tokens
    (index targets) or by the number of tokens (probabilities); a zero denominator gives 0.
    Ignored tokens have loss 0 and gradient 0.

    Returns:
        (loss, grad): loss is a float (mean/sum) or an array of the per-token shape; grad has
        the logits' shape and is the gradient of loss.sum().
    """
    probs = np.issubdtype(np.asarray(targets).dtype, np.floating)
    x, t, token_shape = _tokens_last(logits, targets, probs)
    n, c = x.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = float(label_smoothing)
    ln_b = math.log(base)

    losses = np.zeros(n)
    grads = np.zeros((n, c))  # d loss_i / d x_i
    counted = np.zeros(n)  # the mean's denominator terms
    for i in range(n):
        if softcap is not None:
            tanh = np.array([math.tanh(x[i, k] / softcap) for k in range(c)])
            z = softcap * tanh
        else:
            tanh = None
            z = x[i].copy()
        m = max(z)
        lse = m + math.log(sum(math.exp(z[k] - m) for k in range(c)))
        log_p = np.array([z[k] - lse for k in range(c)])
        p = np.exp(log_p)

        def d_neg_log_p(k, p=p):
            e = np.zeros(c)
            e[k] = 1.0
            return p - e

        if probs:
            tt = (1 - eps) * t[i].astype(np.float64) + eps / c
            loss = sum(w[k] * tt[k] * -log_p[k] for k in range(c)) + z_loss * lse**2
            grad = sum(w[k] * tt[k] * d_neg_log_p(k) for k in range(c)) + 2 * z_loss * lse * p
            counted[i] = 1.0
        else:
            y = int(t[i])
            if y == ignore_index:
                continue
            loss = (1 - eps) * w[y] * -log_p[y]
            loss += (eps / c) * sum(w[k] * -log_p[k] for k in range(c))
            loss += z_loss * w[y] * lse**2
            grad = (1 - eps) * w[y] * d_neg_log_p(y)
            grad = grad + (eps / c) * sum(w[k] * d_neg_log_p(k) for k in range(c))
            grad = grad + 2 * z_loss * w[y] * lse * p
            counted[i] = w[y]
        if tanh is not None:
            grad = grad * (1 - tanh**2)
        losses[i] = loss / ln_b
        grads[i] = grad / ln_b

    if reduction == "none":
        loss_out = losses.reshape(token_shape)
        grad_flat = grads
    elif reduction == "sum":
        loss_out = float(losses.sum())
        grad_flat = grads
    else:
        denominator = counted.sum()
        if denominator == 0:
            loss_out, grad_flat = 0.0, np.zeros_like(grads)
        else:
            loss_out = float(losses.sum() / denominator)
            grad_flat = grads / denominator
    if np.asarray(logits).ndim == 1:
        grad_out = grad_flat.reshape(c)
    else:
        shape = np.asarray(logits).shape
        moved = (shape[0], *shape[2:], c)
        grad_out = np.moveaxis(grad_flat.reshape(moved), -1, 1)
    return loss_out, grad_out


def reference_entropy(logits, *, softcap=None, base=math.e):
    """Entropy -sum_c p_c log p_c of softmax(z) per token (class dim 1, or 0 if 1-D)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        flat = logits.reshape(1, -1)
    else:
        flat = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])
    out = []
    for row in flat:
        z = softcap * np.tanh(row / softcap) if softcap is not None else row
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        p = [math.exp(v - lse) for v in z]
        out.append(-sum(pk * math.log(pk) for pk in p if pk > 0) / math.log(base))
    shape = () if logits.ndim == 1 else (logits.shape[0], *logits.shape[2:])
    return np.array(out).reshape(shape)


def composed_torch_loss(
    logits,
    targets,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    base=math.e,
    validate=True,
):
    """Single-process loss from torch ops: F.cross_entropy per token on the soft-capped
    logits, plus ``z_loss * w_y * logsumexp**2``, over ``ln(base)``, then torch's weighted
    mean (0 for an all-ignored batch)."""
    del validate
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    num_classes = z.shape[-1]
    z2 = z.reshape(-1, num_classes)
    flat = targets.reshape(-1)
    per = F.cross_entropy(
        z2,
        flat,
        weight=weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    counted = flat != ignore_index
    if weight is None:
        w_y = counted.to(z.dtype)
    else:
        w_y = weight[flat.clamp(0, num_classes - 1)] * counted
    if z_loss:
        per = per + z_loss * w_y * torch.logsumexp(z2, dim=1).square()
    per = per / math.log(base)
    if reduction == "none":
        return per.reshape(targets.shape)
    if reduction == "sum":
        return per.sum()
    denominator = w_y.sum()
    return per.sum() / denominator if denominator > 0 else per.sum() * 0.0
