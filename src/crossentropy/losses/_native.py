"""The fused CPU engine: a chunk's three products and its softmax in two native calls.

:mod:`crossentropy.losses._products` forms a chunk's products on torch's bundled oneDNN,
whose operator returns a fresh tensor: each block of logits is then copied into the
chunk's buffer, each block of the weight gradient is formed apart and added, and the
softmax runs as torch operations over the whole buffer. Those copies and sweeps cost
about a fifth of the time of the products themselves. This engine removes them. It calls
oneDNN's ``dnnl_sgemm`` (a row-major BLAS-like product that writes into any strided
destination and accumulates in place) from a small C helper, ``_native.c``, that keeps
the logits vocabulary-major and takes each block's softmax statistics while the block is
in cache (the algorithm is described at the top of that file).

Where it comes from:

- **oneDNN**: torch's copy hides its symbols, so a separate ``libdnnl`` (oneDNN 2.x or
  3.x) is loaded: the file named by ``$CROSSENTROPY_ONEDNN``, else one in
  ``<sys.prefix>/lib`` (where ``make setup`` puts Debian's ``libdnnl2``), else the
  system's (``apt install libdnnl2`` on Debian and Ubuntu).
- **The helper** is compiled at first use by the system's C compiler (``$CC``, else
  ``cc``) with ``-O3 -march=native -fopenmp`` into ``$CROSSENTROPY_CACHE`` (default
  ``~/.cache/crossentropy``), keyed by its source, the compiler and the CPU's features.
  It shares torch's OpenMP runtime, so ``torch.set_num_threads`` governs it too.

A chunk is two calls: :meth:`FusedChunks.stats` (the logits and each row's statistics
against its own max) and :meth:`FusedChunks.grads` (the gradient against a given
log-sum-exp, and the products). A single head joins them (:meth:`FusedChunks.run`); a
head split by vocabulary across ranks (``linear_cross_entropy(group=...)``) puts its
all-reduces between them, as :mod:`crossentropy.losses._distributed` does.

Either missing, or a self-check against float64 failing, leaves the engine unavailable
and the other engines in use; :func:`unavailable_reason` says why. The engine serves
float32 products on the CPU for class-index targets without soft-capping: the common
case of a language model's head. Everything else keeps the other engines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import subprocess
import sys
from pathlib import Path

import torch

from crossentropy import _build

ONEDNN_ENV = "CROSSENTROPY_ONEDNN"
"""Environment variable naming the oneDNN shared library to load (a ``libdnnl.so`` path)."""

CACHE_ENV = _build.CACHE_ENV
"""Environment variable naming the folder for the compiled helper."""

BLOCK_ROWS = 1024
"""Vocabulary rows per block of a chunk's sweeps: one block of logits of a 256-row chunk
is 1 MiB of float32, which stays in a core's cache between its product and its sweep
(the product of such blocks runs at 430-480 GFLOP/s on a 2-core AVX-512 machine)."""

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")
_reason: str | None = None


class _Args(ctypes.Structure):
    """``ce_chunk_args`` of ``_native.c``, field for field."""

    _fields_ = [
        ("sgemm", ctypes.c_void_p),
        ("c", ctypes.c_int64),
        ("D", ctypes.c_int64),
        ("V", ctypes.c_int64),
        ("block", ctypes.c_int64),
        *((name, ctypes.c_void_p) for name in ("h", "hT", "W", "bias", "wclass", "y", "zT")),
        *((name, ctypes.c_void_p) for name in ("row_max", "log_sum", "z_target", "w_dot_z")),
        *((name, ctypes.c_void_p) for name in ("pcoef", "zcoef", "tcoef", "scoef")),
        ("dh", ctypes.c_void_p),
        ("dW", ctypes.c_void_p),
        ("dW_first", ctypes.c_int),
        ("dbias", ctypes.c_void_p),
        ("ref", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
    ]


# ---------------------------------------------------------------------------------------
# Loading.


def _onednn_candidates() -> list[str]:
    named = os.environ.get(ONEDNN_ENV)
    if named:
        return [named]  # asked for by name: that one or none
    found = [
        str(p) for n in (3, 2) for p in sorted(Path(sys.prefix, "lib").glob(f"libdnnl.so.{n}"))
    ]
    system = ctypes.util.find_library("dnnl")
    return [*found, *([system] if system else [])]


def _load_onednn() -> ctypes.CDLL:
    errors = []
    for path in _onednn_candidates():
        # Debian's build needs an OpenCL loader at load time (never used on the CPU); one
        # beside the library is loaded first.
        opencl = Path(path).with_name("libOpenCL.so.1")
        try:
            if opencl.is_file():
                ctypes.CDLL(str(opencl), mode=ctypes.RTLD_GLOBAL)
            library = ctypes.CDLL(path)
            library.dnnl_sgemm  # noqa: B018 (raises AttributeError where it is missing)
        except (OSError, AttributeError) as error:
            errors.append(f"{path}: {error}")
            continue
        return library
    if not errors:
        raise OSError(f"no oneDNN library found (set ${ONEDNN_ENV}, or install Debian's libdnnl2)")
    raise OSError("; ".join(errors))


def _compile_helper() -> Path:
    # libmvec (glibc, x86-64) gives the vectorised expf; without it the loops stay scalar.
    return _build.compile_helper(
        _SOURCE,
        _FLAGS,
        ((["-DCE_LIBMVEC"], ["-lmvec", "-lm"]), ([], ["-lm"])),
        name="native",
    )


class _Engine:
    """The loaded helper and oneDNN's ``dnnl_sgemm``."""

    def __init__(self) -> None:
        self._onednn = _load_onednn()
        address = ctypes.cast(self._onednn.dnnl_sgemm, ctypes.c_void_p).value
        if not address:
            raise OSError("oneDNN's dnnl_sgemm has no address")
        self.sgemm: int = address
        self._helper = ctypes.CDLL(str(_compile_helper()))
        self._calls = {}
        for name in ("ce_stats", "ce_grads"):
            function = getattr(self._helper, name)
            function.argtypes = [ctypes.POINTER(_Args)]
            function.restype = ctypes.c_int
            self._calls[name] = function

    def call(self, name: str, args: _Args) -> None:
        """``name`` (``"ce_stats"`` or ``"ce_grads"``) of ``_native.c`` on ``args``."""
        args.sgemm = self.sgemm
        status = self._calls[name](ctypes.byref(args))
        if status == -1:
            raise MemoryError("the fused CPU engine could not allocate its per-row arrays")
        if status != 0:
            raise RuntimeError(f"oneDNN's dnnl_sgemm failed with status {status}")


@functools.cache
def engine() -> _Engine | None:
    """The engine, or None where it cannot run here (:func:`unavailable_reason` says why)."""
    global _reason
    if not sys.platform.startswith("linux"):
        _reason = f"the fused CPU engine is built for Linux only (this is {sys.platform})"
        return None
    try:
        found = _Engine()
        _self_check(found)
    except (OSError, RuntimeError, AssertionError, subprocess.SubprocessError) as error:
        _reason = str(error) or type(error).__name__
        return None
    _reason = None
    return found


def unavailable_reason() -> str | None:
    """Why :func:`engine` is None (None when it is available or not yet looked for)."""
    return _reason


def available() -> bool:
    """Whether the fused CPU engine runs here."""
    return engine() is not None


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    beta: float = 0.0,
) -> torch.Tensor:
    """``out = op(a) @ op(b) + beta * out`` on the engine's ``dnnl_sgemm``, for contiguous
    2-D float32 CPU tensors, ``op`` the transpose where asked (read in place). The fused
    engine's own product, exposed for benchmarks and tests."""
    found = engine()
    if found is None:
        raise RuntimeError(f"the fused CPU engine is unavailable: {unavailable_reason()}")
    for name, t in (("a", a), ("b", b), ("out", out)):
        if t.dtype != torch.float32 or t.dim() != 2 or not t.is_contiguous() or t.is_cuda:
            raise ValueError(f"`{name}` must be a contiguous 2-D float32 CPU tensor")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k2 or tuple(out.shape) != (m, n):
        raise ValueError(
            f"shapes do not match: op(a) {(m, k)}, op(b) {(k2, n)}, out {tuple(out.shape)}"
        )
    function = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_char, ctypes.c_char, *(ctypes.c_int64,) * 3, ctypes.c_float,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
        ctypes.c_void_p, ctypes.c_int64,
    )(found.sgemm)  # fmt: skip
    status = function(
        b"T" if trans_a else b"N", b"T" if trans_b else b"N", m, n, k, 1.0,
        a.data_ptr(), a.shape[1], b.data_ptr(), b.shape[1], beta, out.data_ptr(), n,
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"oneDNN's dnnl_sgemm failed with status {status}")
    return out


# ---------------------------------------------------------------------------------------
# One chunk.


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class ChunkRows:
    """Per-row statistics of one chunk (views of reused buffers, valid until the next)."""

    __slots__ = ("log_sum", "row_max", "w_dot_z", "z_target")

    def __init__(self, rows: int, smoothing: bool):
        self.row_max = torch.empty(rows)
        self.log_sum = torch.empty(rows)
        self.z_target = torch.empty(rows)
        self.w_dot_z = torch.empty(rows) if smoothing else None


class FusedChunks:
    """Runs chunks of at most ``max_rows`` rows of a float32 head on the fused engine.

    Args:
        weight: (V, D) contiguous float32 head weight. bias: (V,) float32 or None.
        class_weight: (V,) float32 class weights or None.
        max_rows: Most token rows of a chunk (sizes the buffers).
        smoothing: Whether the rows' ``sum_c w_c z_c`` is needed (label smoothing).
        on: The loaded engine to run on (by default :func:`engine`'s; the self-check at
            load passes the one it checks).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        class_weight: torch.Tensor | None,
        max_rows: int,
        *,
        smoothing: bool,
        on: _Engine | None = None,
    ):
        found = on or engine()
        if found is None:
            raise RuntimeError(f"the fused CPU engine is unavailable: {unavailable_reason()}")
        assert weight.dtype == torch.float32
        assert weight.is_contiguous()
        self._engine = found
        self.weight = weight
        self.bias = None if bias is None else bias.contiguous()
        self.class_weight = None if class_weight is None else class_weight.contiguous()
        num_classes, hidden_dim = weight.shape
        self._zt = torch.empty(num_classes * max_rows)
        self._ht = torch.empty(hidden_dim * max_rows)
        self._ref = torch.empty(-(-num_classes // BLOCK_ROWS) * max_rows)
        self._lse = torch.empty(max_rows)
        self._rows = ChunkRows(max_rows, smoothing)
        self._args: _Args | None = None
        self._keep: tuple[torch.Tensor, ...] = ()
        self._last: ChunkRows | None = None

    def run(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        coefficients: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]
        | None = None,
        *,
        grad_hidden: torch.Tensor | None = None,
        grad_weight: torch.Tensor | None = None,
        first: bool = False,
        grad_bias: torch.Tensor | None = None,
    ) -> ChunkRows:
        """One chunk ``h`` (c, D) float32 with targets ``y`` (c,) int64 in [0, V), the whole
        vocabulary being this head's: :meth:`stats`, then (given ``coefficients``)
        :meth:`grads` against the rows' own log-sum-exp. Returns the rows' statistics."""
        stats = self.stats(h, y)
        if coefficients is not None:
            lse = torch.add(stats.row_max, stats.log_sum, out=self._lse[: h.shape[0]])
            self.grads(
                lse, coefficients, grad_hidden=grad_hidden, grad_weight=grad_weight,
                first=first, grad_bias=grad_bias,
            )  # fmt: skip
        return stats

    def stats(self, h: torch.Tensor, y: torch.Tensor) -> ChunkRows:
        """Sweep 1 of a chunk ``h`` (c, D) float32 with targets ``y`` (c,) int64, indices into
        this head's rows (a row whose target is not among them, a negative one included,
        gets a target logit of 0): the logits, kept for :meth:`grads`, and the rows'
        statistics against their max over this head's rows (views of reused buffers,
        valid until the next chunk)."""
        rows, hidden_dim = h.shape
        h = h.contiguous()
        y = y.contiguous()
        self._check(rows, h=h, y=y)
        h_t = self._ht[: rows * hidden_dim].view(hidden_dim, rows)
        h_t.copy_(h.T)
        stats = self._rows
        args = _Args(
            c=rows,
            D=hidden_dim,
            V=self.weight.shape[0],
            block=BLOCK_ROWS,
            h=_ptr(h),
            hT=_ptr(h_t),
            W=_ptr(self.weight),
            bias=_ptr(self.bias),
            wclass=_ptr(self.class_weight),
            y=_ptr(y),
            zT=_ptr(self._zt),
            row_max=_ptr(stats.row_max),
            log_sum=_ptr(stats.log_sum),
            z_target=_ptr(stats.z_target),
            w_dot_z=_ptr(stats.w_dot_z),
            ref=_ptr(self._ref),
        )
        self._engine.call("ce_stats", args)
        self._args, self._keep = args, (h, y)
        out = ChunkRows.__new__(ChunkRows)
        out.row_max = stats.row_max[:rows]
        out.log_sum = stats.log_sum[:rows]
        out.z_target = stats.z_target[:rows]
        out.w_dot_z = None if stats.w_dot_z is None else stats.w_dot_z[:rows]
        self._last = out
        return out

    def local_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last :meth:`stats` as one rank of a vocabulary-parallel head reports them:
        ``(row_max, sums)``, ``sums`` (3, c) the sum of exponentials about ``row_max``,
        the target logit (0 where the target is another rank's) and ``sum_c w_c z_c`` (0
        without smoothing), new tensors."""
        last = self._last
        if last is None:
            raise RuntimeError("fused engine: local_sums() needs a chunk swept by stats()")
        rows = last.row_max.shape[0]
        sums = torch.zeros(3, rows)
        torch.exp(last.log_sum, out=sums[0])
        sums[1].copy_(last.z_target)
        if last.w_dot_z is not None:
            sums[2].copy_(last.w_dot_z)
        return last.row_max.clone(), sums

    def grads(
        self,
        lse: torch.Tensor,
        coefficients: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None],
        *,
        grad_hidden: torch.Tensor | None = None,
        grad_weight: torch.Tensor | None = None,
        first: bool = False,
        grad_bias: torch.Tensor | None = None,
    ) -> None:
        """Sweep 2 of the chunk :meth:`stats` last swept: its gradient against the rows'
        log-sum-exp ``lse`` (c,) float32 over the whole vocabulary, ``(p_coef + z_coef *
        lse) * p - target_coef * onehot(y) - smooth_coef * w`` with the ``coefficients``
        ``(p_coef, z_coef, target_coef, smooth_coef)``, each (c,) float32 or None where
        that term is absent; then ``grad_hidden`` (c, D) is written, ``grad_weight`` (V, D)
        written (``first``) or added to, ``grad_bias`` (V,) added to, each where given."""
        args = self._args
        if args is None:
            raise RuntimeError("fused engine: grads() needs a chunk swept by stats() first")
        p_coef, z_coef, target_coef, smooth_coef = coefficients
        self._check(  # h and y were checked by stats()
            int(args.c), p_coef=p_coef, z_coef=z_coef, target_coef=target_coef,
            smooth_coef=smooth_coef, lse=lse, grad_hidden=grad_hidden,
            grad_weight=grad_weight, grad_bias=grad_bias,
        )  # fmt: skip
        args.pcoef, args.zcoef = _ptr(p_coef), _ptr(z_coef)
        args.tcoef, args.scoef = _ptr(target_coef), _ptr(smooth_coef)
        args.dh, args.dW, args.dbias = _ptr(grad_hidden), _ptr(grad_weight), _ptr(grad_bias)
        args.dW_first = int(first)
        args.lse = _ptr(lse)
        self._engine.call("ce_grads", args)
        self._args, self._keep = None, ()

    def _check(self, rows: int, **tensors: torch.Tensor | None) -> None:
        """The C helper reads and writes through raw pointers: every buffer given must have
        the shape, dtype and layout it assumes for a chunk of ``rows`` rows (an internal
        invariant, checked for a few microseconds per chunk rather than trusted)."""
        num_classes, hidden_dim = self.weight.shape
        expected = {
            "h": ((rows, hidden_dim), torch.float32),
            "y": ((rows,), torch.int64),
            "grad_hidden": ((rows, hidden_dim), torch.float32),
            "grad_weight": ((num_classes, hidden_dim), torch.float32),
            "grad_bias": ((num_classes,), torch.float32),
        }
        for name, tensor in tensors.items():
            if tensor is None:
                continue
            shape, dtype = expected.get(name, ((rows,), torch.float32))  # per-row arrays
            if (
                tuple(tensor.shape) != shape
                or tensor.dtype != dtype
                or tensor.device.type != "cpu"
                or not tensor.is_contiguous()
            ):
                raise ValueError(
                    f"fused engine: `{name}` must be a contiguous {dtype} CPU tensor of shape "
                    f"{shape}; got {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"
                )
        if not 0 < rows * num_classes <= self._zt.numel():
            raise ValueError(f"fused engine: {rows} rows exceed the buffers' chunk size")


def _self_check(found: _Engine) -> None:
    """A small chunk with every term, against float64 torch: a miscompiled helper or a
    broken library must not produce numbers."""
    generator = torch.Generator().manual_seed(0)
    rows, hidden_dim, num_classes = 5, 7, 2 * BLOCK_ROWS + 3
    h = torch.randn(rows, hidden_dim, generator=generator)
    w = torch.randn(num_classes, hidden_dim, generator=generator)
    b = torch.randn(num_classes, generator=generator)
    y = torch.randint(0, num_classes, (rows,), generator=generator)
    chunks = FusedChunks(w, b, None, rows, smoothing=True, on=found)
    ones = torch.ones(rows)
    grad_h = torch.empty(rows, hidden_dim)
    grad_w = torch.empty(num_classes, hidden_dim)
    grad_b = torch.zeros(num_classes)
    stats = chunks.run(
        h,
        y,
        (ones, None, ones, None),
        grad_hidden=grad_h,
        grad_weight=grad_w,
        first=True,
        grad_bias=grad_b,
    )
    h64, w64, b64 = h.double(), w.double(), b.double()
    z = h64 @ w64.T + b64
    g = torch.softmax(z, 1) - torch.nn.functional.one_hot(y, num_classes)
    checks = {
        "log-sum-exp": ((stats.row_max + stats.log_sum).double(), torch.logsumexp(z, 1)),
        "target logit": (stats.z_target.double(), z.gather(1, y[:, None])[:, 0]),
        "row sums": (stats.w_dot_z.double(), z.sum(1)),  # type: ignore[union-attr]
        "hidden gradient": (grad_h.double(), g @ w64),
        "weight gradient": (grad_w.double(), g.T @ h64),
        "bias gradient": (grad_b.double(), g.sum(0)),
    }
    for name, (value, expected) in checks.items():
        if not torch.allclose(value, expected, rtol=1e-4, atol=1e-3):
            raise RuntimeError(f"the fused CPU engine's self-check failed: {name} is wrong")


__all__ = [
    "BLOCK_ROWS",
    "CACHE_ENV",
    "ONEDNN_ENV",
    "ChunkRows",
    "FusedChunks",
    "available",
    "engine",
    "gemm",
    "unavailable_reason",
]
