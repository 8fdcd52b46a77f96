"""The fused CPU engine (``crossentropy.losses._native``): one chunk's products and softmax
in one native call, against float64 formulas and against the other engines."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy import losses
from crossentropy.losses import _native, _products
from tests._process import run_fresh
from tests.losses.reference_losses import composed_torch_loss

AVAILABLE = _native.available()
needs_engine = pytest.mark.skipif(
    not AVAILABLE, reason=f"fused CPU engine unavailable: {_native.unavailable_reason()}"
)
BLOCK = _native.BLOCK_ROWS


def test_engine_runs_where_the_setup_installed_onednn():
    """`make setup` puts Debian's libdnnl beside the environment; there the engine must load
    (a compile failure or a broken library would otherwise only show as skipped tests)."""
    provided = sorted(Path(sys.prefix, "lib").glob("libdnnl.so.*"))
    if not provided and not os.environ.get(_native.ONEDNN_ENV):
        pytest.skip("no oneDNN installed beside this environment")
    assert AVAILABLE, _native.unavailable_reason()


# ---------------------------------------------------------------------------------------
# One chunk against float64.


def _chunk_case(rows, hidden_dim, num_classes, *, seed, bias, weighted, eps, z_loss, scaled):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden_dim, generator=g)
    w = torch.randn(num_classes, hidden_dim, generator=g) / math.sqrt(hidden_dim)
    b = torch.randn(num_classes, generator=g) if bias else None
    cw = torch.rand(num_classes, generator=g) + 0.5 if weighted else None
    y = torch.randint(0, num_classes, (rows,), generator=g)
    y[0] = num_classes - 1  # the last class of the last (partial) block
    if rows > 1:
        y[1] = min(BLOCK, num_classes - 1)  # the first class of the second block
    scale = torch.rand(rows, generator=g) + 0.5 if scaled else torch.ones(rows)
    return h, w, b, cw, y, scale, eps, z_loss


def _float64_chunk(h, w, b, cw, y, scale, eps, z_loss):
    """The statistics and gradients by the formulas of _kernel.cross_entropy_rows."""
    h, w = h.double(), w.double()
    num_classes = w.shape[0]
    z = h @ w.T + (0 if b is None else b.double())
    lse = torch.logsumexp(z, 1)
    weights = torch.ones(num_classes, dtype=torch.float64) if cw is None else cw.double()
    w_y = weights[y]
    s = scale.double()
    p_coef = ((1 - eps) * w_y + eps / num_classes * weights.sum()) * s
    z_coef = 2 * z_loss * w_y * s
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    grad = (p_coef + z_coef * lse)[:, None] * torch.softmax(z, 1)
    grad = (
        grad - ((1 - eps) * w_y * s)[:, None] * onehot - (eps / num_classes * s)[:, None] * weights
    )
    return {
        "lse": lse,
        "z_target": z.gather(1, y[:, None])[:, 0],
        "w_dot_z": z @ weights,
        "grad_hidden": grad @ w,
        "grad_weight": grad.T @ h,
        "grad_bias": grad.sum(0),
        "coefficients": (p_coef, z_coef, (1 - eps) * w_y * s, eps / num_classes * s),
    }


def _run_chunk(case, *, first=True, prefill=float("nan")):
    h, w, b, cw, y, _, eps, z_loss = case
    rows, hidden_dim = h.shape
    want = _float64_chunk(*case)
    chunks = _native.FusedChunks(w, b, cw, rows, smoothing=eps > 0)
    p_coef, z_coef, t_coef, s_coef = (c.float().contiguous() for c in want["coefficients"])
    grad_hidden = torch.full((rows, hidden_dim), prefill)
    grad_weight = torch.full(w.shape, prefill)
    grad_bias = torch.zeros(w.shape[0])
    stats = chunks.run(
        h, y, (p_coef, z_coef if z_loss else None, t_coef, s_coef if eps else None),
        grad_hidden=grad_hidden, grad_weight=grad_weight, first=first, grad_bias=grad_bias,
    )  # fmt: skip
    return want, stats, grad_hidden, grad_weight, grad_bias


def _close(got, want, scale):
    """float32 against float64: errors relative to the size of the terms summed."""
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-6 * max(float(scale), 1.0))


@needs_engine
@pytest.mark.parametrize(
    ("rows", "hidden_dim", "num_classes"),
    [(1, 1, 2), (7, 5, 3), (65, 33, BLOCK), (130, 17, BLOCK + 1), (64, 64, 2 * BLOCK + 5)],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"bias": True},
        {"weighted": True, "scaled": True},
        {"eps": 0.1, "z_loss": 1e-2},
        {"bias": True, "weighted": True, "eps": 0.3, "z_loss": 1e-3, "scaled": True},
    ],
)
def test_chunk_matches_the_float64_formulas(rows, hidden_dim, num_classes, options):
    settings_ = {"bias": False, "weighted": False, "eps": 0.0, "z_loss": 0.0, "scaled": False}
    case = _chunk_case(
        rows, hidden_dim, num_classes, seed=rows + num_classes, **{**settings_, **options}
    )
    want, stats, grad_hidden, grad_weight, grad_bias = _run_chunk(case)
    span = float(want["lse"].abs().max())
    _close(stats.row_max + stats.log_sum, want["lse"], span)
    _close(stats.z_target, want["z_target"], span)
    if stats.w_dot_z is not None:
        _close(stats.w_dot_z, want["w_dot_z"], num_classes * span)
    # Written over a NaN-filled buffer: the first chunk must not read what was there.
    _close(grad_hidden, want["grad_hidden"], float(want["grad_hidden"].abs().max()))
    _close(grad_weight, want["grad_weight"], float(want["grad_weight"].abs().max()))
    _close(grad_bias, want["grad_bias"], float(want["grad_bias"].abs().max()))


@needs_engine
def test_later_chunks_add_to_the_weight_gradient():
    case = _chunk_case(
        20, 9, BLOCK + 7, seed=3, bias=True, weighted=False, eps=0.0, z_loss=0.0, scaled=False
    )
    want, _, _, grad_weight, _ = _run_chunk(case, first=False, prefill=0.25)
    _close(grad_weight, want["grad_weight"] + 0.25, float(want["grad_weight"].abs().max()))


@needs_engine
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    hidden_dim=st.integers(1, 24),
    num_classes=st.integers(2, 2 * BLOCK + 3),
    seed=st.integers(0, 2**16),
    eps=st.sampled_from([0.0, 0.25]),
    weighted=st.booleans(),
)
def test_chunk_property(rows, hidden_dim, num_classes, seed, eps, weighted):
    case = _chunk_case(
        rows, hidden_dim, num_classes, seed=seed, bias=True, weighted=weighted, eps=eps,
        z_loss=1e-3, scaled=True,
    )  # fmt: skip
    want, stats, grad_hidden, grad_weight, _ = _run_chunk(case)
    _close(stats.row_max + stats.log_sum, want["lse"], float(want["lse"].abs().max()))
    _close(grad_hidden, want["grad_hidden"], float(want["grad_hidden"].abs().max()))
    _close(grad_weight, want["grad_weight"], float(want["grad_weight"].abs().max()))


@needs_engine
def test_a_masked_class_has_no_probability_and_a_nan_stays_in_its_row():
    case = list(
        _chunk_case(
            6, 8, BLOCK + 50, seed=5, bias=True, weighted=True, eps=0.2, z_loss=0.0, scaled=False
        )
    )
    h, _, b, _, y = case[:5]
    masked = torch.tensor([3, BLOCK + 10])
    b[masked] = -math.inf
    y[torch.isin(y, masked)] = 0
    want, stats, grad_hidden, _, grad_bias = _run_chunk(tuple(case))
    assert bool(torch.isfinite(stats.row_max + stats.log_sum).all())
    _close(grad_hidden, want["grad_hidden"], float(want["grad_hidden"].abs().max()))
    # A masked class gets only the smoothing term, -(eps / V) * w_v per row.
    _close(grad_bias[masked], want["grad_bias"][masked], 1.0)
    # A row whose whole first block is masked (its running max is -inf there).
    b[:BLOCK] = -math.inf
    y[:] = BLOCK + 20
    want, stats, grad_hidden, _, grad_bias = _run_chunk(tuple(case))
    assert bool(torch.isfinite(stats.row_max + stats.log_sum).all())
    _close(stats.row_max + stats.log_sum, want["lse"], float(want["lse"].abs().max()))
    _close(grad_hidden, want["grad_hidden"], float(want["grad_hidden"].abs().max()))
    _close(grad_bias, want["grad_bias"], 1.0)
    h[2, 0] = math.nan
    _, stats, _, _, _ = _run_chunk(tuple(case))
    lse = stats.row_max + stats.log_sum
    assert bool(lse[2].isnan())
    assert bool(torch.isfinite(lse[[0, 1, 3, 4, 5]]).all())


@needs_engine
def test_one_thread_and_two_agree():
    case = _chunk_case(
        96, 40, 3 * BLOCK, seed=11, bias=True, weighted=True, eps=0.1, z_loss=1e-3, scaled=True
    )
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one, gh1, gw1, _ = _run_chunk(case)
        torch.set_num_threads(2)
        _, two, gh2, gw2, _ = _run_chunk(case)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(one.log_sum, two.log_sum, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh1, gh2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw1, gw2, rtol=1e-5, atol=1e-7)


@needs_engine
@pytest.mark.parametrize(
    ("trans_a", "trans_b"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_gemm_against_torch(trans_a, trans_b):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*((9, 13) if trans_a else (13, 9)), generator=g)
    b = torch.randn(*((5, 9) if trans_b else (9, 5)), generator=g)
    out = torch.ones(13, 5)
    got = _native.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, beta=0.5)
    want = (a.T if trans_a else a).double() @ (b.T if trans_b else b).double() + 0.5
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_engine
def test_gemm_refuses_what_it_cannot_read():
    a = torch.ones(3, 4)
    with pytest.raises(ValueError, match="`a` must be a contiguous 2-D float32 CPU tensor"):
        _native.gemm(a.double(), a, torch.empty(3, 3), trans_b=True)
    with pytest.raises(ValueError, match="`b` must be a contiguous 2-D float32 CPU tensor"):
        _native.gemm(a, a.T, torch.empty(3, 3))
    with pytest.raises(
        ValueError, match=r"shapes do not match: op\(a\) \(3, 4\), op\(b\) \(3, 4\)"
    ):
        _native.gemm(a, a, torch.empty(3, 3))


# ---------------------------------------------------------------------------------------
# The public loss on the engine.


def _count_runs(monkeypatch):
    calls = []
    run = _native.FusedChunks.run

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(_native.FusedChunks, "run", counted)
    return calls


@needs_engine
@pytest.mark.parametrize(
    "options",
    [
        {"reduction": "mean"},
        {"reduction": "sum", "label_smoothing": 0.15, "z_loss": 1e-3, "base": 2.0},
        {"reduction": "none", "class_weight": True, "bias": True},
        {"reduction": "mean", "class_weight": True, "label_smoothing": 0.3, "bias": True},
        {"reduction": "mean", "all_ignored": True},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_on_the_engine(options, dtype, monkeypatch):
    monkeypatch.setattr(_products, "CPU_ENGINE", "fused")
    calls = _count_runs(monkeypatch)
    options = dict(options)
    g = torch.Generator().manual_seed(17)
    n, d, v = 83, 24, BLOCK + 333
    h64 = torch.randn(n, d, generator=g, dtype=torch.float64)
    w64 = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b64 = torch.randn(v, generator=g, dtype=torch.float64) if options.pop("bias", False) else None
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = -100
    if options.pop("all_ignored", False):
        y[:] = -100
    if options.pop("class_weight", False):
        options["class_weight"] = torch.rand(v, generator=g, dtype=torch.float64) + 0.5
    inputs = [t for t in (h64, w64, b64) if t is not None]
    exact = [t.to(dtype).double().requires_grad_() for t in inputs]
    reference = {("weight" if k == "class_weight" else k): o for k, o in options.items()}
    want = composed_torch_loss(torch.nn.functional.linear(*exact), y, **reference)
    upstream = torch.rand(want.shape, generator=g, dtype=torch.float64) + 0.5
    want_grads = torch.autograd.grad(want, exact, upstream)

    params = [t.to(dtype).requires_grad_() for t in inputs]
    ours_options = {k: (o.float() if k == "class_weight" else o) for k, o in options.items()}
    got = losses.linear_cross_entropy(
        params[0], params[1], y, bias=params[2] if len(params) > 2 else None,
        chunk_size=32, impl="chunked", **ours_options,
    )  # fmt: skip
    grads = torch.autograd.grad(got, params, upstream.to(got.dtype))
    kept = int((y != -100).sum())
    sweeps = 2 if options.get("reduction") == "none" else 1  # "none": again in backward
    assert calls == [min(32, kept - s) for s in range(0, kept, 32)] * sweeps
    loose = dtype == torch.bfloat16  # the loss and gradients are rounded to bfloat16
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-2 if loose else 2e-5, atol=2e-6)
    for a, b in zip(grads, want_grads, strict=True):
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(
            a.double(), b, rtol=1e-2 if loose else 1e-4, atol=(1e-2 if loose else 1e-6) * scale
        )


@needs_engine
def test_only_the_gradients_asked_for(monkeypatch):
    monkeypatch.setattr(_products, "CPU_ENGINE", "fused")
    g = torch.Generator().manual_seed(2)
    h = torch.randn(40, 16, generator=g)
    w = torch.randn(1500, 16, generator=g).requires_grad_()
    y = torch.randint(0, 1500, (40,), generator=g)
    (grad_w,) = torch.autograd.grad(losses.linear_cross_entropy(h, w, y, impl="chunked"), [w])
    w64 = w.detach().double().requires_grad_()
    want = torch.nn.functional.cross_entropy(h.double() @ w64.T, y)
    (want_w,) = torch.autograd.grad(want, [w64])
    torch.testing.assert_close(grad_w.double(), want_w, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        value = losses.linear_cross_entropy(h, w, y, impl="chunked")
    torch.testing.assert_close(value.double(), want.detach(), rtol=1e-5, atol=1e-6)


@needs_engine
def test_out_of_range_targets_unchecked_raise_instead_of_reading_memory(monkeypatch):
    monkeypatch.setattr(_products, "CPU_ENGINE", "fused")
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    for bad in (30, -7):
        y = torch.tensor([1, 2, bad, 3])
        with pytest.raises((RuntimeError, IndexError)):
            losses.linear_cross_entropy(h, w, y, impl="chunked", validate=False).backward()


@needs_engine
def test_cases_the_engine_does_not_serve_take_the_other_engines(monkeypatch):
    monkeypatch.setattr(_products, "CPU_ENGINE", "fused")
    calls = _count_runs(monkeypatch)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(10, 6, generator=g)
    w = torch.randn(50, 6, generator=g)
    y = torch.randint(0, 50, (10,), generator=g)
    probs = torch.softmax(torch.randn(10, 50, generator=g), 1)
    for value, want in (
        (losses.linear_cross_entropy(h, w, y, softcap=5.0, impl="chunked"),
         losses.linear_cross_entropy(h, w, y, softcap=5.0, impl="reference")),
        (losses.linear_cross_entropy(h, w, probs, impl="chunked"),
         losses.linear_cross_entropy(h, w, probs, impl="reference")),
        (losses.linear_cross_entropy(h, w.T.contiguous().T, y, impl="chunked"),
         losses.linear_cross_entropy(h, w, y, impl="reference")),
        (losses.linear_cross_entropy(h.double(), w.double(), y, impl="chunked"),
         losses.linear_cross_entropy(h.double(), w.double(), y, impl="reference")),
    ):  # fmt: skip
        torch.testing.assert_close(value.double(), want.double(), rtol=1e-5, atol=1e-6)
    assert calls == []


# ---------------------------------------------------------------------------------------
# Loading, in fresh processes (the engine is looked for once per process).


PROBE = """
import torch
from crossentropy import losses
from crossentropy.losses import _native, _products
print(_native.available())
print(_native.unavailable_reason())
h = torch.randn(5, 4); w = torch.randn(9, 4); y = torch.tensor([0, 1, 2, 3, 8])
want = torch.nn.functional.cross_entropy(h @ w.T, y)
print(bool(torch.allclose(losses.linear_cross_entropy(h, w, y, impl="chunked"), want)))
_products.CPU_ENGINE = "fused"
try:
    losses.linear_cross_entropy(h, w, y, impl="chunked")
except RuntimeError as error:
    print(error)
"""


def test_a_missing_library_leaves_the_engine_off_and_says_why(tmp_path):
    missing = tmp_path / "libdnnl.so.2"
    out = run_fresh(PROBE, **{_native.ONEDNN_ENV: str(missing), _native.CACHE_ENV: str(tmp_path)})
    available, reason, right, error = out.splitlines()
    assert available == "False"
    assert str(missing) in reason
    assert right == "True"  # "auto" falls back to the other engines
    assert "CPU_ENGINE = 'fused' but the fused engine cannot run here:" in error
    assert str(missing) in error


@needs_engine
def test_a_failing_compiler_leaves_the_engine_off_and_says_why(tmp_path):
    out = run_fresh(PROBE, CC="false", **{_native.CACHE_ENV: str(tmp_path)})
    available, reason, right, _ = out.splitlines()
    assert (available, right) == ("False", "True")
    assert "compiling the helper failed" in reason


@needs_engine
def test_the_helper_is_compiled_once_into_the_cache(tmp_path, logging_compiler):
    compiler, log = logging_compiler
    cache = tmp_path / "cache"
    for _ in range(2):
        out = run_fresh(PROBE, CC=str(compiler), **{_native.CACHE_ENV: str(cache)})
        assert out.splitlines()[:3] == ["True", "None", "True"]
    assert len(list(cache.glob("native-*.so"))) == 1
    compiles = [line for line in log.read_text().splitlines() if "_native.c" in line]
    assert len(compiles) == 1, compiles  # the second process found it in the cache


@needs_engine
def test_buffers_of_the_wrong_shape_are_refused_before_the_native_call():
    w = torch.randn(40, 6)
    chunks = _native.FusedChunks(w, None, None, 8, smoothing=False)
    h = torch.randn(8, 6)
    y = torch.zeros(8, dtype=torch.long)
    ones = torch.ones(8)
    with pytest.raises(ValueError, match=r"`grad_weight` must be a contiguous torch.float32"):
        chunks.run(h, y, (ones, None, ones, None), grad_weight=torch.empty(40, 5), first=True)
    with pytest.raises(ValueError, match=r"`y` must be a contiguous torch.int64"):
        chunks.run(h, y.int())
    with pytest.raises(ValueError, match="9 rows exceed the buffers' chunk size"):
        chunks.run(torch.randn(9, 6), torch.zeros(9, dtype=torch.long))


@needs_engine
def test_two_shards_combined_equal_the_whole_head():
    """The vocabulary-parallel use: each shard's stats about its own max, combined as the
    collectives combine them, then each shard's gradient against the global lse."""
    g = torch.Generator().manual_seed(21)
    rows, hidden_dim, split, num_classes = 9, 12, BLOCK + 3, 2 * BLOCK + 40
    h = torch.randn(rows, hidden_dim, generator=g)
    w = torch.randn(num_classes, hidden_dim, generator=g) / math.sqrt(hidden_dim)
    b = torch.randn(num_classes, generator=g)
    y = torch.randint(0, num_classes, (rows,), generator=g)
    y[:2] = torch.tensor([0, num_classes - 1])  # one target in each shard's edge
    shards = [(0, split), (split, num_classes)]
    chunks = [
        _native.FusedChunks(w[a:z].contiguous(), b[a:z], None, rows, smoothing=True)
        for a, z in shards
    ]
    local = []
    for chunk, (first, _) in zip(chunks, shards, strict=True):
        chunk.stats(h, y - first)  # targets as indices into the shard
        local.append(chunk.local_sums())
    row_max = torch.maximum(local[0][0], local[1][0])
    sums = sum(s * torch.stack([torch.exp(m - row_max), torch.ones(rows), torch.ones(rows)])
               for m, s in local)  # fmt: skip
    lse = row_max + sums[0].log()
    want = _float64_chunk(h, w, b, None, y, torch.ones(rows), 0.0, 0.0)
    _close(lse, want["lse"], float(want["lse"].abs().max()))
    _close(sums[1], want["z_target"], float(want["lse"].abs().max()))
    _close(sums[2], want["w_dot_z"], num_classes * float(want["lse"].abs().max()))
    ones = torch.ones(rows)
    grad_hidden = torch.zeros(rows, hidden_dim)
    grad_weight = torch.empty(num_classes, hidden_dim)
    for c, (a, z) in zip(chunks, shards, strict=True):
        part = torch.empty(rows, hidden_dim)
        c.grads(lse, (ones, None, ones, None), grad_hidden=part, grad_weight=grad_weight[a:z],
                first=True)  # fmt: skip
        grad_hidden += part
    _close(grad_hidden, want["grad_hidden"], float(want["grad_hidden"].abs().max()))
    _close(grad_weight, want["grad_weight"], float(want["grad_weight"].abs().max()))


@needs_engine
def test_grads_without_stats_is_refused():
    chunks = _native.FusedChunks(torch.randn(30, 4), None, None, 5, smoothing=False)
    ones = torch.ones(5)
    with pytest.raises(RuntimeError, match=r"grads\(\) needs a chunk swept by stats\(\) first"):
        chunks.grads(ones, (ones, None, ones, None))


@needs_engine
def test_a_cache_folder_that_cannot_be_made_falls_back_to_the_temporary_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_fresh(PROBE, **{_native.CACHE_ENV: str(blocker / "cache")})
    assert out.splitlines()[:3] == ["True", "None", "True"]
