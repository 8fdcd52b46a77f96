"""Measures of distributions, in bits: information, entropy, cross-entropy and divergences.

**Information.** An event of probability p carries ``information(p) = -log2 p`` bits:
the length of its codeword in an ideal code. A certain event carries 0 bits, a fair coin's
side 1 bit, an impossible event infinitely many. The rarer the event, the bigger the
surprise and the more bits it takes.

**Entropy.** ``entropy(p)``, H(P) = -Σ p(x) log2 p(x), is the information expected from
one outcome of P: the least average number of bits per outcome that any lossless code for
P can reach (Shannon's source coding theorem; reached in the long run, by arithmetic coding
or long blocks, while a symbol-by-symbol code such as Huffman's stays within one bit of
it). It is 0 when one outcome is certain and log2 n, its maximum, when n outcomes are
equally likely. The seed's words A, B, C, D with frequencies 0.5, 0.2, 0.2, 0.1 have
H = 1.761 bits per word, below the 2 bits of a fixed-length code.

**Cross-entropy.** ``cross_entropy(p, q)``, H(P, Q) = -Σ p(x) log2 q(x), is the average
code length when data come from P but the code was built for Q (codewords of -log2 q(x)
bits). It is the loss that trains classifiers: P is the label, Q the prediction, and with
a one-hot label only -log2 q(true class) remains.

**KL divergence.** ``kl_divergence(p, q)``, D(P‖Q) = Σ p(x) log2(p(x)/q(x)), is the
overhead of the wrong code: H(P, Q) = H(P) + D(P‖Q). Gibbs' inequality D ≥ 0 makes
H(P, Q) ≥ H(P), with equality only when Q = P; that is why minimising cross-entropy pulls
the model towards the data. ``js_divergence`` is its symmetric, bounded cousin.

Conventions, as in Cover and Thomas: 0 · log 0 = 0 (an outcome that never happens costs
nothing); p > 0 where q = 0 gives +inf (the code has no word for an outcome that happens).
Every function takes NumPy arrays, Python sequences or any array-API array such as a torch
tensor, and returns the input's kind on the input's device, in its floating dtype (integer
and boolean input is computed in the library's default float: float64 for NumPy, the
default dtype for torch). Reductions run along ``axis=-1``; ``p`` and ``q`` broadcast.
Units: bits by default (``base=2``); ``base=math.e`` gives nats, the unit of the
frameworks' losses (:mod:`crossentropy.losses` speaks nats by default).

Bad input raises an error that names the argument, the rule and what was seen: negative,
NaN or infinite entries, sums off 1 beyond the tolerance of the argument's own dtype
(``sqrt(eps)``: 1.5e-8 in float64, 3.5e-4 in float32; a float16 ``p`` beside a float64
``q`` is checked as float16, and the two are then computed in float64), shapes that
don't broadcast, no outcomes, an invalid ``base`` or ``axis`` (``ValueError``); input
that is not real numbers, a NumPy masked array (pass ``p.filled(0)`` or
``p.compressed()``), an ``axis`` that is not an integer, a ``base`` that is not a real
number (``TypeError``). Nothing is normalised silently: :func:`normalize` is the explicit
way.

Gradients (torch autograd) follow the convention 0 · log 0 = 0 as written: a term whose
weight p(x) is 0 is masked with ``where`` and contributes neither value nor gradient. So
at p(x) = 0 the gradient with respect to p(x) is 0 in :func:`entropy`,
:func:`cross_entropy` and :func:`kl_divergence` (the one-sided derivative is +inf for
the entropy term, -inf for the KL term, -log q(x) for cross-entropy), and nothing flows to
q(x) from an outcome with p(x) = 0. In :func:`js_divergence` the terms of P at p(x) = 0
are masked and those of Q keep their gradient. :func:`binary_entropy` at p = 0 (p = 1)
keeps the gradient of its other term, 1/ln(base) (-1/ln(base)), where the derivative
is +inf (-inf). Gradients are finite wherever the value is.

The value checks (signs, NaN, sums) read the values on the host. ``validate=False`` skips
them, for ``torch.func.vmap``, ``torch.compile(fullgraph=True)`` and
``torch.autograd.gradcheck`` on raw inputs, while the checks of shapes, ``axis``, ``base``
and dtype still run; invalid values then give undefined numbers. Torch tensors whose
values cannot be read skip the value checks on their own: meta tensors (shape checks only,
and a meta result), fake tensors (``FakeTensorMode``, ``torch.export``) and tensors inside
a ``torch.func`` transform (``vmap``, ``grad``), as the losses do. Sparse torch tensors
are refused (``TypeError``; pass ``p.to_dense()``).

Examples:
    The seed's numbers (``SEED.md``):

    >>> from crossentropy import info
    >>> p = [0.5, 0.2, 0.2, 0.1]
    >>> info.information(p).round(3).tolist()
    [1.0, 2.322, 2.322, 3.322]
    >>> print(info.entropy(p))
    1.7609640474436812
    >>> print(round(info.cross_entropy(p, [0.1, 0.2, 0.2, 0.5]), 6))
    2.689735
    >>> h_pq = info.cross_entropy(p, [0.4, 0.3, 0.2, 0.1])
    >>> bool(abs(h_pq - (info.entropy(p) + info.kl_divergence(p, [0.4, 0.3, 0.2, 0.1]))) < 1e-15)
    True

References:
    C. E. Shannon, "A Mathematical Theory of Communication", Bell System Technical Journal
    27 (1948), 379-423 and 623-656.
    T. M. Cover and J. A. Thomas, "Elements of Information Theory", 2nd ed., Wiley (2006),
    chapters 2 and 5.
"""

from crossentropy.info._measures import (
    binary_entropy,
    cross_entropy,
    entropy,
    information,
    js_divergence,
    kl_divergence,
    normalize,
    perplexity,
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
