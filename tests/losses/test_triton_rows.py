"""The Triton row kernel (`losses._triton`) against the torch-operation kernel and the loop
reference. Without a GPU the programs run in Triton's interpreter on the CPU (conftest sets
TRITON_INTERPRET=1), so these tests check the kernel's arithmetic and masking, not its speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from crossentropy.losses import (
    _kernel,
    _triton,
    cross_entropy,
    cross_entropy_stats,
    linear_cross_entropy,
)
from crossentropy.losses._kernel import cross_entropy_rows
from tests.losses.reference_losses import reference_cross_entropy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPTION_SETS = [
    {},
    {"label_smoothing": 0.25, "weight": "w"},
    {"z_loss": 1e-2, "softcap": 3.0, "base": 2.0},
    {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0, "weight": "w", "base": 10.0},
]
# (rtol, atol) of the Triton kernel against the torch kernel, per logits dtype: the two
# sum in different orders (float32: a few ulps of a loss near 10), and bfloat16 gradients
# are rounded once to 8 bits from float32 values that differ in their last bits.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2**-7, 1e-4),
}


def _rows(kernel: str, *args, **kwargs):
    previous = _kernel.TRITON
    _kernel.TRITON = kernel
    try:
        return cross_entropy_rows(*args, **kwargs)
    finally:
        _kernel.TRITON = previous


def _case(n, v, seed, dtype=torch.float64, kind="index"):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen, dtype=torch.float64) * 4).to(dtype)
    if kind == "index":
        targets = torch.randint(0, v, (n,), generator=gen)
    else:  # class probabilities, in the logits' dtype
        noise = torch.randn(n, v, generator=gen, dtype=torch.float64)
        targets = torch.softmax(noise, 1).to(dtype)
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.1
    return logits.to(DEVICE), targets.to(DEVICE), weight.to(DEVICE)


def _assert_terms_close(got, want, dtype):
    rtol, atol = TOLERANCES[dtype]
    for field in ("loss", "logsumexp", "entropy", "grad"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype, field
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=field)


@pytest.fixture
def small_blocks(monkeypatch):
    """Programs that visit 16 columns at a time: rows of 50 take four steps, one partial."""
    monkeypatch.setattr(_triton, "MAX_BLOCK", 16)


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", ["per row", "number", None])
@pytest.mark.parametrize("num_classes", [13, 50])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_rows_match_the_torch_kernel(small_blocks, options, dtype, scale, num_classes, kind):
    logits, targets, weight = _case(7, num_classes, num_classes, dtype, kind)
    options = {k: (weight if v == "w" else v) for k, v in options.items()}
    grad_scale = {
        "per row": torch.linspace(-1.0, 2.0, 7, dtype=torch.float64, device=DEVICE),
        "number": 0.375,
        None: None,
    }[scale]
    kwargs = {"grad_scale": grad_scale, "with_entropy": True, **options}
    got = _rows("always", logits, targets, **kwargs)
    want = _rows("never", logits, targets, **kwargs)
    _assert_terms_close(got, want, dtype)
    if dtype == torch.float64 and scale == "per row":  # and the loop reference, as math reads
        ref_options = {
            k: (v.cpu().numpy() if torch.is_tensor(v) else v) for k, v in options.items()
        }
        ref_loss, ref_grad = reference_cross_entropy(
            logits.cpu().numpy(), targets.cpu().numpy(), reduction="none", **ref_options
        )
        np.testing.assert_allclose(got.loss.cpu().numpy(), ref_loss, rtol=0, atol=1e-10)
        expected = ref_grad * grad_scale.cpu().numpy()[:, None]
        np.testing.assert_allclose(got.grad.cpu().numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gradient_written_over_the_logits(small_blocks, dtype):
    logits, targets, _ = _case(5, 50, 3, dtype)
    want = _rows("never", logits, targets, grad_scale=1.0, label_smoothing=0.1)
    work = logits.clone()
    got = _rows("always", work, targets, grad_scale=1.0, label_smoothing=0.1, out=work)
    assert got.grad.data_ptr() == work.data_ptr()
    _assert_terms_close(got, want, dtype)
    # A block whose rows are not contiguous (a column slice) is read as it is, and a
    # gradient buffer of another layout gets the gradient copied into it.
    wide = torch.zeros(5, 80, dtype=dtype, device=DEVICE)
    wide[:, 10:60] = logits
    column_major = torch.empty(50, 5, dtype=dtype, device=DEVICE).T
    got = _rows(
        "always",
        wide[:, 10:60],
        targets,
        grad_scale=1.0,
        label_smoothing=0.1,
        out=column_major,
    )
    assert got.grad is column_major
    _assert_terms_close(got, want, dtype)


def test_rows_with_masked_vocabulary(small_blocks):
    # -inf logits (a vocabulary mask) in whole steps and in part of one, the first step
    # included: the running maximum starts at -inf, and those classes get p = 0.
    logits, targets, _ = _case(4, 50, 5)
    logits[:, :20] = float("-inf")
    logits[1, 30:35] = float("-inf")
    targets = torch.tensor([20, 25, 49, 40], device=DEVICE)
    for options in ({}, {"z_loss": 1e-2, "softcap": 4.0}):
        kwargs = {"grad_scale": 1.0, "with_entropy": True, **options}
        got = _rows("always", logits, targets, **kwargs)
        want = _rows("never", logits, targets, **kwargs)
        _assert_terms_close(got, want, torch.float64)
        assert torch.isfinite(got.loss).all()
        if not options:  # soft-capping maps -inf to -cap, a finite logit
            assert (got.grad[:, :20] == 0).all()


def test_empty_block():
    logits = torch.empty(0, 9, dtype=torch.float32, device=DEVICE)
    targets = torch.empty(0, dtype=torch.long, device=DEVICE)
    got = _rows("always", logits, targets, grad_scale=1.0, with_entropy=True)
    assert got.loss.shape == got.logsumexp.shape == got.entropy.shape == (0,)
    assert got.grad.shape == (0, 9)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_losses_through_the_triton_kernel(monkeypatch, small_blocks, reduction, kind):
    # The losses built on the row kernel give the same values and gradients through it:
    # cross_entropy with ignored tokens (or probability targets, with their gradient),
    # class weights and every option, its stats, and the fused head (whose chunks the
    # kernel overwrites with their gradient).
    logits, targets, weight = _case(9, 50, 7, kind=kind)
    if kind == "index":
        targets[::4] = -100
    options = {
        "weight": weight,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 6.0,
        "base": 2.0,
        "reduction": reduction,
    }
    hidden = torch.randn(9, 6, dtype=torch.float64, device=DEVICE)
    head = torch.randn(50, 6, dtype=torch.float64, device=DEVICE)
    results = {}
    for kernel in ("never", "always"):
        monkeypatch.setattr(_kernel, "TRITON", kernel)
        x = logits.clone().requires_grad_()
        t = targets.clone().requires_grad_(kind == "probs")
        loss = cross_entropy(x, t, **options)
        loss.backward(torch.ones_like(loss))
        stats = cross_entropy_stats(
            logits, targets, **{k: v for k, v in options.items() if k != "reduction"}
        )
        h = hidden.clone().requires_grad_()
        w = head.clone().requires_grad_()
        fused = linear_cross_entropy(
            h,
            w,
            targets,
            class_weight=weight,
            impl="chunked",
            chunk_size=4,
            **{k: v for k, v in options.items() if k != "weight"},
        )
        fused.backward(torch.ones_like(fused))
        results[kernel] = [loss, x.grad, t.grad, *stats, fused, h.grad, w.grad]
    for got, want in zip(results["always"], results["never"], strict=True):
        if want is None:  # no gradient of class indices
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(_kernel, "TRITON", "auto")
    assert _kernel.use_triton(cpu) is False  # "auto" is for CUDA tensors
    assert _kernel.use_triton(torch.device("cuda")) is True  # Triton is installed here
    monkeypatch.setattr(_kernel, "TRITON", "never")
    assert _kernel.use_triton(torch.device("cuda")) is False
    monkeypatch.setattr(_kernel, "TRITON", "always")
    assert _kernel.use_triton(cpu) is True
    monkeypatch.setattr(_kernel, "triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        _kernel.use_triton(cpu)
    monkeypatch.setattr(_kernel, "TRITON", "auto")
    assert _kernel.use_triton(torch.device("cuda")) is False
    monkeypatch.setattr(_kernel, "TRITON", "sometimes")
    with pytest.raises(ValueError, match="TRITON must be 'auto', 'always' or 'never'"):
        _kernel.use_triton(cpu)


def test_a_kernel_triton_cannot_build_is_given_up_once(monkeypatch):
    # Under "auto" a device where Triton fails to build the kernel warns once and computes
    # with torch operations from then on; under "always" the error reaches the caller.
    from triton.errors import TritonError

    calls = []

    def unbuildable(*args, **kwargs):
        calls.append(args)
        raise TritonError("no kernel for this device")

    logits, targets, _ = _case(4, 9, 11)
    want = _rows("never", logits, targets, grad_scale=1.0)
    monkeypatch.setattr(_triton, "triton_rows", unbuildable)
    monkeypatch.setattr(_kernel, "_TRITON_FAILED", None)
    monkeypatch.setattr(_kernel, "TRITON", "auto")
    # The CPU stands in for a CUDA device: the dispatch asks only whether it failed before.
    monkeypatch.setattr(_kernel, "use_triton", lambda device: _kernel._TRITON_FAILED is None)
    with pytest.warns(RuntimeWarning, match=r"Triton row kernel failed.*no kernel for this"):
        got = cross_entropy_rows(logits, targets, grad_scale=1.0)
    _assert_terms_close(got, want, torch.float64)
    again = cross_entropy_rows(logits, targets, grad_scale=1.0)  # no second attempt
    _assert_terms_close(again, want, torch.float64)
    assert len(calls) == 1
    assert "TritonError: no kernel for this device" in _kernel._TRITON_FAILED
    monkeypatch.setattr(_kernel, "_TRITON_FAILED", None)
    monkeypatch.setattr(_kernel, "TRITON", "always")
    with pytest.raises(TritonError, match="no kernel for this device"):
        cross_entropy_rows(logits, targets, grad_scale=1.0)


def test_the_kernel_compiles_for_nvidia_gpus(tmp_path):
    # The interpreter runs the kernel as Python; a GPU compiles it. Triton's compiler and
    # the ptxas it ships need no GPU: build every variant to a cubin for sm_90 and sm_80.
    ptxas = Path(_triton.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton has no NVIDIA back end")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # build afresh, not from an earlier cache
    script = Path(__file__).with_name("_triton_compile.py")
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("cubin") == 18  # 9 variants of the two kernels, 2 targets


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.2, "weight": "w"},
        {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 4.0, "weight": "w"},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_shard_rows_match_the_torch_shard_kernel(monkeypatch, small_blocks, kind, options, dtype):
    # One rank's columns 20..70 of a vocabulary of 90, targets in and out of the shard
    # and ignored ones; a group of one (the all-reduces leave the local numbers as they
    # are), so the two kernels' local statistics and gradients meet directly.
    from crossentropy.losses import _distributed

    monkeypatch.setattr(_distributed.dist, "all_reduce", lambda *args, **kwargs: None)
    num_classes, start, shard = 90, 20, 50
    logits, targets, weight = _case(6, num_classes, 13, dtype, kind)
    local = logits[:, start : start + shard]
    weight = weight if options.get("weight") == "w" else None
    spec = _distributed._Spec(
        vocab_start=start,
        num_classes=num_classes,
        ignore_index=-100,
        label_smoothing=options.get("label_smoothing", 0.0),
        z_loss=options.get("z_loss", 0.0),
        softcap=options.get("softcap"),
    )
    if kind == "index":
        targets = torch.tensor([0, 25, 69, 70, -100, 44], device=DEVICE)
        shard_rows = _distributed._shard_rows
    else:
        targets = targets[:, start : start + shard].contiguous()
        shard_rows = _distributed._shard_prob_rows
    scale = torch.linspace(0.5, 1.5, 6, dtype=torch.float64, device=DEVICE)
    launches = []
    for name in ("shard_stats", "shard_grad"):
        original = getattr(_triton, name)
        monkeypatch.setattr(
            _triton, name, lambda *a, _f=original, _n=name, **k: launches.append(_n) or _f(*a, **k)
        )
    results = {}
    for kernel in ("never", "always"):
        monkeypatch.setattr(_kernel, "TRITON", kernel)
        rows = shard_rows(local, targets, spec, weight=weight, group=None, grad_scale=scale)
        results[kernel] = rows
    rtol, atol = TOLERANCES[dtype]
    got, want = results["always"], results["never"]
    for field in ("loss", "lse", "grad", "q_sum"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=field)
    assert got.grad.dtype == dtype
    assert launches == ["shard_stats", "shard_grad"]  # both passes ran in Triton


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    num_classes=st.sampled_from([1, 2, 15, 16, 17, 31, 32, 33, 47]),
    kind=st.sampled_from(["index", "probs"]),
    smoothing=st.sampled_from([0.0, 0.3]),
    z_loss=st.sampled_from([0.0, 0.01]),
    softcap=st.sampled_from([None, 2.5]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rows_at_block_edges(n, num_classes, kind, smoothing, z_loss, softcap, weighted, seed):
    # Rows of 16-column steps (MAX_BLOCK patched below) whose length is below, at and just
    # past a multiple of the step: the masks of partial steps against the torch kernel.
    previous = _triton.MAX_BLOCK
    _triton.MAX_BLOCK = 16
    try:
        logits, targets, weight = _case(n, num_classes, seed, kind=kind)
        options = {
            "label_smoothing": smoothing,
            "z_loss": z_loss,
            "softcap": softcap,
            "weight": weight if weighted else None,
        }
        scale = torch.linspace(-1.0, 1.0, n, dtype=torch.float64, device=DEVICE)
        kwargs = {"grad_scale": scale, "with_entropy": True, **options}
        got = _rows("always", logits, targets, **kwargs)
        want = _rows("never", logits, targets, **kwargs)
    finally:
        _triton.MAX_BLOCK = previous
    _assert_terms_close(got, want, torch.float64)


@pytest.mark.parametrize("failing", ["shard_stats", "shard_grad"])
def test_a_shard_kernel_triton_cannot_build_is_given_up_too(monkeypatch, failing):
    from triton.errors import TritonError

    from crossentropy.losses import _distributed

    monkeypatch.setattr(_distributed.dist, "all_reduce", lambda *args, **kwargs: None)
    spec = _distributed._Spec(
        vocab_start=0, num_classes=9, ignore_index=-100, label_smoothing=0.1, z_loss=0.0,
        softcap=None,
    )  # fmt: skip
    logits, targets, _ = _case(4, 9, 17)

    def rows():
        return _distributed._shard_rows(
            logits, targets, spec, weight=None, group=None, grad_scale=1.0
        )

    monkeypatch.setattr(_kernel, "TRITON", "never")
    want = rows()
    monkeypatch.setattr(_kernel, "TRITON", "auto")
    monkeypatch.setattr(_kernel, "_TRITON_FAILED", None)
    monkeypatch.setattr(_distributed, "use_triton", lambda device: _kernel._TRITON_FAILED is None)

    def unbuildable(*args, **kwargs):
        raise TritonError("no shard kernel for this device")

    monkeypatch.setattr(_triton, failing, unbuildable)
    with pytest.warns(RuntimeWarning, match="no shard kernel for this device"):
        got = rows()
    for field in ("loss", "lse", "grad"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-12)


def test_spatial_logits_through_the_triton_kernel(monkeypatch):
    # Logits (N, C, H, W): the Triton kernel reads contiguous rows, so they reach it as the
    # rows of their channels-last copy; the loss and gradient are torch's all the same.
    gen = torch.Generator().manual_seed(21)
    logits = torch.randn(2, 7, 3, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    targets = torch.randint(0, 7, (2, 3, 4), generator=gen).to(DEVICE)
    targets[0, 0] = 255
    monkeypatch.setattr(_kernel, "TRITON", "always")
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, ignore_index=255, label_smoothing=0.1)
    loss.backward()
    y = logits.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(y, targets, ignore_index=255, label_smoothing=0.1)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)
