"""The chunk products of the fused head: each engine against float64 matrix products."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import losses
from crossentropy.losses import _native, _products
from crossentropy.losses._products import (
    BLOCK_ROWS,
    ENGINES,
    ChunkProducts,
    choose_engine,
    onednn_available,
)
from tests.losses.reference_losses import composed_torch_loss

AVAILABLE = [e for e in ENGINES if e != "onednn" or onednn_available()]
END_TO_END = [*(["fused"] if _native.available() else []), *AVAILABLE]


def _tensors(rows, d, v, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(v, generator=g, dtype=torch.float64)
    grad = torch.randn(rows, v, generator=g, dtype=torch.float64) / v
    return h, w, b, grad


def _close(got, want, terms, magnitude):
    """float32 products of `terms` summands: error at most a few float32 epsilons times the
    size of the summands, ``magnitude`` = the same sums over their absolute values (the
    result itself may be far smaller, by cancellation; sqrt(terms) growth for random signs
    is well inside this)."""
    bound = 8 * terms * torch.finfo(torch.float32).eps * float(magnitude.max())
    err = float((got.double() - want).abs().max())
    assert err <= bound, (err, bound)


@pytest.mark.parametrize("engine", AVAILABLE)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("rows", "d", "v"), [(5, 70, 2 * BLOCK_ROWS + 37), (17, 3, 11)])
def test_each_product_matches_float64(engine, with_bias, rows, d, v, monkeypatch):
    # Small weight-gradient blocks, so that several blocks and a ragged last one are used.
    monkeypatch.setattr(_products, "WEIGHT_GRAD_BLOCK_BYTES", 4 * d * 300)
    h64, w64, b64, g64 = _tensors(rows, d, v, seed=rows + d + v)
    h, w, b, g = (t.float() for t in (h64, w64, b64, g64))
    products = ChunkProducts(w, b if with_bias else None, rows, engine)
    assert products.engine == engine

    z = torch.full((rows, v), float("nan"))
    products.logits(h, z)
    want_z = h.double() @ w.double().T + (b.double() if with_bias else 0.0)
    size_z = h.double().abs() @ w.double().abs().T + (b.double().abs() if with_bias else 0.0)
    _close(z, want_z, d + 1, size_z)

    _close(products.hidden_grad(g), g.double() @ w.double(), v, g.double().abs() @ w.double().abs())

    dw = torch.full((v, d), float("nan"))
    products.add_weight_grad(dw, g, h, first=True)
    size_dw = g.double().abs().T @ h.double().abs()
    _close(dw, g.double().T @ h.double(), rows, size_dw)
    h2 = torch.flip(h, (0,))
    products.add_weight_grad(dw, g, h2, first=False)
    _close(dw, g.double().T @ (h.double() + h2.double()), 2 * rows, 2 * size_dw)


def _strided_weight(w64, layout):
    """The same (V, D) values in a non-contiguous layout."""
    v, d = w64.shape
    if layout == "transposed":  # a head tied to a (D, V) embedding
        return w64.float().T.contiguous().T
    wide = torch.zeros(v, d + 7, dtype=torch.float32)
    if layout == "row_slice":  # the first D columns of a wider matrix
        wide[:, :d] = w64.float()
        return wide[:, :d]
    spread = torch.zeros(v, 2 * d, dtype=torch.float32)  # every other column
    spread[:, ::2] = w64.float()
    return spread[:, ::2]


@pytest.mark.parametrize("engine", AVAILABLE)
@pytest.mark.parametrize("layout", ["transposed", "row_slice", "every_other_column"])
def test_a_non_contiguous_weight_works(engine, layout):
    """Every layout gives the right products; on oneDNN, which is hundreds of times slower
    on operands that are not dense, the products only ever see dense ones."""
    h64, w64, b64, g64 = _tensors(9, 33, BLOCK_ROWS + 70, seed=5)
    h, g = h64.float(), g64.float()
    w = _strided_weight(w64, layout)
    assert not w.is_contiguous()
    products = ChunkProducts(w, b64.float(), 9, engine)
    if engine == "onednn":
        dense_blocks = products.weight.is_contiguous() or products.weight.T.is_contiguous()
        assert dense_blocks
    z = torch.empty(9, w.shape[0])
    products.logits(h, z)
    size_z = h.double().abs() @ w.double().abs().T + b64.float().double().abs()
    _close(z, h.double() @ w.double().T + b64.float().double(), 34, size_z)
    size_dh = g.double().abs() @ w.double().abs()
    _close(products.hidden_grad(g), g.double() @ w.double(), w.shape[0], size_dh)
    dw = torch.empty(w.shape)
    products.add_weight_grad(dw, g, h, first=True)
    _close(dw, g.double().T @ h.double(), 9, g.double().abs().T @ h.double().abs())


@pytest.mark.parametrize("engine", AVAILABLE)
def test_products_of_a_chunk_slice_of_a_larger_buffer(engine):
    """The fused loop hands over row slices of its buffers; the last chunk is shorter."""
    h64, w64, _, g64 = _tensors(12, 40, BLOCK_ROWS + 5, seed=3)
    h, w, g = h64.float(), w64.float(), g64.float()
    products = ChunkProducts(w, None, 12, engine)
    buffer = torch.zeros(12, w.shape[0])
    products.logits(h[:7], buffer[:7])
    h7, g7, w_ = h64[:7].float().double(), g[:7].double(), w.double()
    _close(buffer[:7], h7 @ w_.T, 40, h7.abs() @ w_.abs().T)
    assert bool((buffer[7:] == 0).all())
    _close(products.hidden_grad(g[:7]), g7 @ w_, w.shape[0], g7.abs() @ w_.abs())


@pytest.mark.parametrize(
    "options",
    [
        {"reduction": "mean"},
        {"reduction": "sum", "label_smoothing": 0.1, "z_loss": 1e-3},
        {"reduction": "none", "softcap": 4.0},
        {"reduction": "mean", "class_weight": "random", "label_smoothing": 0.2},
    ],
)
def test_every_engine_gives_the_float64_answer_end_to_end(options, monkeypatch):
    g = torch.Generator().manual_seed(7)
    n, d, v = 203, 48, 2 * BLOCK_ROWS + 301
    h64 = torch.randn(n, d, generator=g, dtype=torch.float64)
    w64 = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b64 = torch.randn(v, generator=g, dtype=torch.float64)
    y = torch.randint(0, v, (n,), generator=g)
    y[::9] = -100
    if options.get("class_weight") == "random":
        options = {**options, "class_weight": torch.rand(v, generator=g) + 0.5}
    exact = [t.float().double().requires_grad_() for t in (h64, w64, b64)]
    reference_options = {
        ("weight" if k == "class_weight" else k): (o.double() if k == "class_weight" else o)
        for k, o in options.items()
    }
    want = composed_torch_loss(torch.nn.functional.linear(*exact), y, **reference_options)
    upstream = torch.ones_like(want) if want.dim() == 0 else torch.rand(want.shape, generator=g)
    want_grads = torch.autograd.grad(want, exact, upstream)

    results = {}
    for engine in END_TO_END:
        monkeypatch.setattr(_products, "CPU_ENGINE", engine)
        params = [t.float().requires_grad_() for t in (h64, w64, b64)]
        got = losses.linear_cross_entropy(
            params[0], params[1], y, bias=params[2], chunk_size=64, impl="chunked", **options
        )
        grads = torch.autograd.grad(got, params, upstream.float())
        results[engine] = (got, grads)
        torch.testing.assert_close(got.double(), want.detach(), rtol=2e-5, atol=2e-6)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    (v1, g1), *others = results.values()
    for v2, g2 in others:
        torch.testing.assert_close(v1, v2, rtol=2e-5, atol=2e-6)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_engine_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert choose_engine(torch.float64, cpu) == "torch"  # oneDNN has no float64 products
    expected = "onednn" if onednn_available() else "torch"
    assert choose_engine(torch.float32, cpu) == expected
    with torch.backends.mkldnn.flags(enabled=False):
        assert choose_engine(torch.float32, cpu) == "torch"
    monkeypatch.setattr(_products, "CPU_ENGINE", "torch")
    assert choose_engine(torch.float32, cpu) == "torch"
    monkeypatch.setattr(_products, "CPU_ENGINE", "onednn")
    with pytest.raises(RuntimeError, match="oneDNN float32 products are not usable"):
        choose_engine(torch.float64, cpu)
    monkeypatch.setattr(_products, "CPU_ENGINE", "fastest")
    with pytest.raises(ValueError, match="CPU_ENGINE must be 'auto', 'fused', 'onednn' or 'torch'"):
        choose_engine(torch.float32, cpu)


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="`engine` must be one of"):
        ChunkProducts(torch.ones(3, 2), None, 4, "blas")


def test_a_missing_onednn_op_falls_back_to_torch(monkeypatch):
    """Where torch lacks the oneDNN inner product, the probe says so and "auto" takes torch."""

    class NoOps:
        def __getattr__(self, name):
            raise AttributeError(name)

    onednn_available.cache_clear()
    try:
        monkeypatch.setattr(torch.ops, "mkldnn", NoOps())
        assert onednn_available() is False
        assert choose_engine(torch.float32, torch.device("cpu")) == "torch"
    finally:
        monkeypatch.undo()
        onednn_available.cache_clear()


def test_a_head_tied_to_an_embedding_trains_through_the_fused_loss():
    """The weight passed as the transposed view of a (D, V) embedding: the embedding's
    gradient is the float64 one, on whichever engine float32 takes."""
    g = torch.Generator().manual_seed(11)
    n, d, v = 150, 40, BLOCK_ROWS + 123
    embedding = (torch.randn(d, v, generator=g) / math.sqrt(d)).requires_grad_()
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    loss = losses.linear_cross_entropy(hidden, embedding.T, y, chunk_size=64, impl="chunked")
    loss.backward()
    exact = [t.detach().double().requires_grad_() for t in (hidden, embedding)]
    want = torch.nn.functional.cross_entropy(exact[0] @ exact[1], y)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    for got, ref in ((hidden.grad, exact[0].grad), (embedding.grad, exact[1].grad)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_a_half_precision_chunk_starts_the_float32_weight_gradient():
    """The GPU path's case, run on CPU: bfloat16 chunks, a float32 accumulator that starts
    as garbage (first=True must overwrite it, not add to it)."""
    h64, w64, _, g64 = _tensors(6, 5, 7, seed=13)
    h, w, g = (t.to(torch.bfloat16) for t in (h64, w64, g64))
    products = ChunkProducts(w, None, 6, "torch")
    dw = torch.full((7, 5), float("nan"))
    products.add_weight_grad(dw, g, h, first=True)
    want = g.double().T @ h.double()
    torch.testing.assert_close(dw.double(), want, rtol=0, atol=2**-8 * float(want.abs().max()))
    products.add_weight_grad(dw, g, h, first=False)
    torch.testing.assert_close(dw.double(), 2 * want, rtol=0, atol=2**-7 * float(want.abs().max()))


@given(
    rows=st.integers(1, 40),
    d=st.integers(1, 50),
    v=st.integers(1, 2 * BLOCK_ROWS + 50),
    with_bias=st.booleans(),
    grad_block_rows=st.integers(1, 600),
    seed=st.integers(0, 2**16),
)
def test_products_property(rows, d, v, with_bias, grad_block_rows, seed):
    """Any shape, any weight-gradient block size: every engine gives float64's products."""
    h64, w64, b64, g64 = _tensors(rows, d, v, seed)
    h, w, b, g = (t.float() for t in (h64, w64, b64, g64))
    for engine in AVAILABLE:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_products, "WEIGHT_GRAD_BLOCK_BYTES", 4 * d * grad_block_rows)
            products = ChunkProducts(w, b if with_bias else None, rows, engine)
        z = torch.empty(rows, v)
        products.logits(h, z)
        bias = b.double() if with_bias else 0.0
        size_bias = b.double().abs() if with_bias else 0.0
        size_z = h.double().abs() @ w.double().abs().T + size_bias
        _close(z, h.double() @ w.double().T + bias, d + 1, size_z)
        size_dh = g.double().abs() @ w.double().abs()
        _close(products.hidden_grad(g), g.double() @ w.double(), v, size_dh)
        dw = torch.empty(v, d)
        products.add_weight_grad(dw, g, h, first=True)
        products.add_weight_grad(dw, g, h, first=False)
        size_dw = 2 * (g.double().abs().T @ h.double().abs())
        _close(dw, 2 * (g.double().T @ h.double()), 2 * rows, size_dw)
