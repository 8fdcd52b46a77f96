"""The three matrix products of a chunked linear head, on the fastest engine at hand.

For a chunk of ``c`` token rows ``h`` (c, D) of a head with weight ``W`` (V, D) the fused
loss needs three products, which are almost all of its time:

- the logits ``z = h @ W.T + b`` (c, V);
- the hidden gradient ``g @ W`` (c, D), from the logits' gradient ``g`` (c, V);
- the weight gradient ``dW += g.T @ h`` (V, D), accumulated over the chunks.

:class:`ChunkProducts` forms them on one of two engines, picked once per call by
:func:`choose_engine`:

``"onednn"`` (float32 on CPU, where torch was built with oneDNN)
    torch's bundled oneDNN inner-product primitive (``torch.ops.mkldnn._linear_pointwise``,
    which computes ``x @ w.T + b`` for plain strided tensors). oneDNN picks its kernels by
    the instruction sets the CPU reports, so it uses AVX-512 wherever the CPU has it, while
    ``torch.mm`` goes to MKL, which takes its AVX2 path on non-Intel CPUs. Measured on a
    2-core AMD EPYC (Zen 5): about 460 GFLOP/s for a 2048³ float32 product against MKL's
    216. The logits are formed in blocks of ``BLOCK_ROWS`` weight rows and the weight
    gradient in blocks of rows of ``dW``, so that each block's fresh output is small and
    cache-resident; the hidden gradient is one product against the transposed view ``W.T``
    (oneDNN reads it in place).

``"torch"`` (every other case: float64, GPUs, a torch without oneDNN, or when asked)
    ``torch.mm``/``addmm`` with the layouts that run fastest on each device: on CPU the
    logits as products of weight blocks with ``h.T`` copied into place and the hidden
    gradient formed transposed; elsewhere plain products.

A third engine, ``"fused"`` (:mod:`crossentropy.losses._native`), forms a whole chunk
(its three products and its softmax) in one native call, without the copies above; the
fused head's sweep takes it through :func:`use_fused` for float32 class-index targets
without soft-capping, where it runs.

``CPU_ENGINE`` (``"auto"``, ``"fused"``, ``"onednn"`` or ``"torch"``) overrides the choice
on CPU, for tests and benchmarks: ``"fused"`` raises where that engine cannot run, and
``"onednn"`` and ``"torch"`` keep the fused head off it. Disabling oneDNN in torch
(``torch.backends.mkldnn.flags(enabled=False)``) makes ``"auto"`` take ``"torch"`` for
:class:`ChunkProducts`; the fused engine loads its own oneDNN and is not affected.
"""

from __future__ import annotations

import functools

import torch

CPU_ENGINE = "auto"
"""Which engine float32 products on CPU use: ``"auto"`` (the fused engine where it serves,
else oneDNN where it works), ``"fused"`` (raise where the fused engine cannot run),
``"onednn"`` (raise if it does not work) or ``"torch"``."""

ENGINES = ("onednn", "torch")
"""The engines of :class:`ChunkProducts`."""

_CHOICES = ("auto", "fused", *ENGINES)

BLOCK_ROWS = 1024
"""Weight rows per product when the logits are formed in blocks (both CPU engines)."""

WEIGHT_GRAD_BLOCK_BYTES = 2**20
"""On the oneDNN engine, bytes of one block of the weight gradient (1 MiB: 256 rows at
D = 1024), formed by one product and added into place. Larger blocks run no faster
(about 376 GFLOP/s for 256 to 1024 rows at D = 1024, c = 256 on a 2-core AVX-512
machine) and oneDNN's temporaries grow with them."""


# ---------------------------------------------------------------------------------------
# Engine choice.


@functools.cache
def onednn_available() -> bool:
    """Whether torch's oneDNN inner product runs here and gives the right answer."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        w = torch.arange(12, dtype=torch.float32).reshape(4, 3)
        m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        plain = op(x, w, None, "none", [], "")
        strided = op(x, m.T, None, "none", [], "")  # a transposed view, read in place
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return False
    return bool(torch.equal(plain, x @ w.T) and torch.equal(strided, x @ m))


def _check_choice() -> None:
    if CPU_ENGINE not in _CHOICES:
        raise ValueError(
            f"CPU_ENGINE must be 'auto', 'fused', 'onednn' or 'torch'; got {CPU_ENGINE!r}"
        )


def use_fused(dtype: torch.dtype, device: torch.device, weight: torch.Tensor) -> bool:
    """Whether a chunked sweep with products of ``dtype`` on ``device`` and this ``weight``
    runs on the fused engine; the caller has checked that its options are ones the engine
    serves (class-index targets, no soft-capping). The engine serves float32 products with
    a contiguous weight on the CPU; other cases keep the other engines, even under
    ``CPU_ENGINE = "fused"``, which raises only where the engine itself cannot run."""
    _check_choice()
    if device.type != "cpu" or CPU_ENGINE in ENGINES:
        return False
    from crossentropy.losses import _native

    if not _native.available():
        if CPU_ENGINE == "fused":
            raise RuntimeError(
                f"CPU_ENGINE = 'fused' but the fused engine cannot run here: "
                f"{_native.unavailable_reason()}"
            )
        return False
    return dtype == torch.float32 and weight.is_contiguous()


def choose_engine(dtype: torch.dtype, device: torch.device) -> str:
    """The engine for products of ``dtype`` on ``device`` (see the module docstring)."""
    _check_choice()
    if device.type != "cpu" or CPU_ENGINE == "torch":
        return "torch"
    enabled = bool(getattr(torch.backends.mkldnn, "enabled", True))
    usable = dtype == torch.float32 and enabled and onednn_available()
    if CPU_ENGINE == "onednn" and not usable:
        raise RuntimeError(
            f"CPU_ENGINE = 'onednn' but oneDNN float32 products are not usable here "
            f"(dtype {dtype}, oneDNN available: {onednn_available()}, enabled: {enabled})"
        )
    return "onednn" if usable else "torch"


# ---------------------------------------------------------------------------------------
# The weight gradient in a wider dtype (shared by both engines and the sharded head).


_WEIGHT_GRAD_METHOD: dict[str, int] = {}


def add_weight_grad(grad_weight: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """``grad_weight += g.T @ h`` with ``grad_weight`` in float32/float64 whatever ``g``'s dtype.

    For half-precision ``g`` and ``h`` (the GPU path) the product is accumulated straight
    into the float32 buffer by a mixed-precision ``addmm`` where torch has one; else the
    chunk's product is formed in float32 and added; else (no mixed-precision product on
    this device) formed in the half dtype, so rounded once per chunk, and added in float32.
    """
    if g.dtype == grad_weight.dtype:
        grad_weight.addmm_(g.T, h)
        return
    key = g.device.type
    methods = (
        lambda: torch.addmm(grad_weight, g.T, h, grad_weight.dtype, out=grad_weight),
        lambda: grad_weight.add_(torch.mm(g.T, h, out_dtype=grad_weight.dtype)),
        lambda: grad_weight.add_(torch.mm(g.T, h)),
    )
    first = _WEIGHT_GRAD_METHOD.get(key, 0)
    for number in range(first, len(methods)):
        try:
            methods[number]()
        except (RuntimeError, TypeError, NotImplementedError):
            if number == len(methods) - 1:
                raise
            continue
        _WEIGHT_GRAD_METHOD[key] = number
        return


# ---------------------------------------------------------------------------------------
# The products of one chunk.


class ChunkProducts:
    """The logits and gradient products of chunks of at most ``max_rows`` token rows.

    Args:
        weight: (V, D) head weight in the compute dtype.
        bias: (V,) bias in the compute dtype, or None.
        max_rows: Most token rows of a chunk (sizes the scratch buffers).
        engine: ``"onednn"`` or ``"torch"`` (see :func:`choose_engine`).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        max_rows: int,
        engine: str,
    ):
        if engine not in ENGINES:
            raise ValueError(f"`engine` must be one of {ENGINES}; got {engine!r}")
        # oneDNN runs at full speed on dense operands only: any other strides (a row slice
        # of a wider matrix, a stride-2 view) send it to a path hundreds of times slower.
        # A contiguous weight is used as it is (its transpose, for the hidden gradient, is
        # dense too); a column-major one (a head tied to a (D, V) embedding, passed as its
        # transposed view) is dense for the hidden gradient and copied block by block for
        # the logits; anything else is copied once.
        self._copy_blocks = False
        if engine == "onednn":
            if not weight.is_contiguous():
                if weight.T.is_contiguous():
                    self._copy_blocks = True
                else:
                    weight = weight.contiguous()
            if bias is not None:
                bias = bias.contiguous()
        self.weight = weight
        self.bias = bias
        self.engine = engine
        num_classes, hidden_dim = weight.shape
        cpu = weight.device.type == "cpu"
        self._blocked_logits = cpu and num_classes > BLOCK_ROWS
        self._scratch = None
        self._dh_scratch = None
        if engine == "torch" and cpu:
            if self._blocked_logits:
                self._scratch = torch.empty(BLOCK_ROWS * max_rows, dtype=weight.dtype)
            self._dh_scratch = torch.empty(hidden_dim * max_rows, dtype=weight.dtype)
        self._grad_block = max(WEIGHT_GRAD_BLOCK_BYTES // (4 * hidden_dim), 16)
        self._linear = torch.ops.mkldnn._linear_pointwise if engine == "onednn" else None

    # -- logits ---------------------------------------------------------------------------

    def logits(self, h: torch.Tensor, out: torch.Tensor) -> None:
        """``out = h @ W.T + b`` for a chunk ``h`` (c, D), into ``out`` (c, V)."""
        w, b = self.weight, self.bias
        if self.engine == "onednn":
            assert self._linear is not None  # set whenever engine == "onednn"
            h = h.contiguous()
            step = BLOCK_ROWS if self._blocked_logits else w.shape[0]
            for v0 in range(0, w.shape[0], step):
                v1 = min(v0 + step, w.shape[0])
                w_block = w[v0:v1].contiguous() if self._copy_blocks else w[v0:v1]
                b_block = None if b is None else b[v0:v1]
                block = self._linear(h, w_block, b_block, "none", [], "")
                out[:, v0:v1].copy_(block)
            return
        if self._scratch is None:
            if b is None:
                torch.matmul(h, w.T, out=out)
            else:
                torch.addmm(b, h, w.T, out=out)
            return
        # CPU, torch engine: (V_block, D) x (D, c) products into a small scratch, copied
        # transposed into place; on CPU that layout runs markedly faster than
        # (c, D) x (D, V) (about 196 vs 163 GFLOP/s at D = 1024, c = 256, V = 128256 on a
        # 2-core AVX-512 machine), and the copy of a cache-sized block is cheap.
        rows = h.shape[0]
        h_t = h.T.contiguous()
        for v0 in range(0, w.shape[0], BLOCK_ROWS):
            v1 = min(v0 + BLOCK_ROWS, w.shape[0])
            block = self._scratch[: (v1 - v0) * rows].view(v1 - v0, rows)
            if b is None:
                torch.mm(w[v0:v1], h_t, out=block)
            else:
                torch.addmm(b[v0:v1].unsqueeze(1), w[v0:v1], h_t, out=block)
            out[:, v0:v1].copy_(block.T)

    # -- hidden gradient -------------------------------------------------------------------

    def hidden_grad(self, g: torch.Tensor) -> torch.Tensor:
        """``g @ W`` (c, D) for a chunk's logit gradient ``g`` (c, V).

        The result may be a view of a scratch buffer, valid until the next call.
        """
        w = self.weight
        if self.engine == "onednn":
            assert self._linear is not None
            return self._linear(g, w.T, None, "none", [], "")
        if self._dh_scratch is None:
            return torch.matmul(g, w)
        # CPU, torch engine: formed transposed, as W.T @ g.T into a (D, c) buffer; faster
        # there than g @ W written straight into rows (about 188 vs 179 GFLOP/s at
        # c = 128, D = 512, V = 65536 on a 2-core AVX-512 machine).
        rows, hidden_dim = g.shape[0], w.shape[1]
        out = self._dh_scratch[: hidden_dim * rows].view(hidden_dim, rows)
        return torch.mm(w.T, g.T, out=out).T

    # -- weight gradient -------------------------------------------------------------------

    def add_weight_grad(
        self, grad_weight: torch.Tensor, g: torch.Tensor, h: torch.Tensor, *, first: bool
    ) -> None:
        """``grad_weight += g.T @ h`` (or ``=`` when ``first``), ``grad_weight`` (V, D) in the
        accumulation dtype (float32, or float64 for float64)."""
        if self.engine == "onednn" and grad_weight.dtype == g.dtype:
            assert self._linear is not None
            h_t = h.T.contiguous()
            step = self._grad_block
            for v0 in range(0, grad_weight.shape[0], step):
                v1 = min(v0 + step, grad_weight.shape[0])
                block = self._linear(g[:, v0:v1].T, h_t, None, "none", [], "")
                if first:
                    grad_weight[v0:v1].copy_(block)
                else:
                    grad_weight[v0:v1].add_(block)
            return
        if first and g.dtype == grad_weight.dtype:
            torch.mm(g.T, h, out=grad_weight)
            return
        if first:
            grad_weight.zero_()
        add_weight_grad(grad_weight, g, h)


__all__ = [
    "BLOCK_ROWS",
    "CPU_ENGINE",
    "ENGINES",
    "ChunkProducts",
    "add_weight_grad",
    "choose_engine",
    "onednn_available",
    "use_fused",
]
