"""Correctness and speed of the fused linear + cross-entropy head on a GPU, in one script.

1. Correctness on a slice (bfloat16 inputs; N=1024 tokens of the full vocabulary, D as in
   the benchmark): ours vs a float64 reference computed from the same bfloat16 values, next
   to the unfused bfloat16 computation's error against that reference (ours must be no
   further); then every option (label smoothing, z-loss, soft-cap, base 2, ignored tokens,
   bias, reduction="none") against ``impl="reference"`` in float32.
2. Speed and memory at N=8192, D=4096, V=128256 in bfloat16, forward + backward: torch eager
   (``F.linear`` + ``F.cross_entropy``), torch's ``F.linear_cross_entropy`` (its chunked
   path), ours (its row kernel in Triton where Triton is installed, and again on torch
   operations), and, when importable, Liger Kernel's fused linear cross-entropy and Cut
   Cross-Entropy. Peak memory is ``torch.cuda.max_memory_allocated`` above the inputs and
   the gradients.
3. ``cross_entropy`` alone on bfloat16 logits [8192, 128256], forward + backward: torch's
   ``F.cross_entropy``, ours with each row kernel, and Liger Kernel's cross-entropy where
   importable.

Runs in well under 5 minutes on an H100. ``--device cpu --quick`` runs the same steps at a
tiny size, to check the script itself on a machine without a GPU.

Usage::

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--out PATH]
                                   [--row-kernel auto|always|never]

``--row-kernel`` sets ``crossentropy.losses._kernel.TRITON`` (default ``auto``: Triton on
CUDA where it is installed); ``always`` with ``TRITON_INTERPRET=1`` runs the Triton row
kernel in Triton's interpreter, to check that arm of the script on a CPU.

``--out`` defaults to ``benchmarks/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine, print_table
from crossentropy import losses
from crossentropy.losses import _kernel

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error: the norm of the difference over the norm of ``b`` (float64)."""
    a = a.detach().double()
    b = b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _loss_and_grads(fn, hidden, weight, targets, bias=None, **options):
    params = [t.detach().clone().requires_grad_() for t in (hidden, weight)]
    b = None if bias is None else bias.detach().clone().requires_grad_()
    out = fn(params[0], params[1], targets, bias=b, **options)
    # A fixed, uneven upstream gradient for reduction="none", the same for every caller.
    steps = torch.arange(out.numel(), device=out.device, dtype=torch.float64)
    upstream = (0.5 + (steps % 7) / 7).to(out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, [*params, *([b] if b is not None else [])], upstream)
    return [out.detach(), *grads]


def _unfused(hidden, weight, targets, bias=None, **options):
    return F.cross_entropy(F.linear(hidden, weight, bias), targets, **options)


def _ours(hidden, weight, targets, bias=None, **options):
    return losses.linear_cross_entropy(
        hidden, weight, targets, bias=bias, impl="chunked", **options
    )


def check_correctness(device: torch.device, n: int, d: int, v: int) -> dict:
    """Errors of ours and of the unfused bfloat16 computation vs float64, and option parity."""
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(n, d, generator=g).to(device, torch.bfloat16)
    weight = (torch.randn(v, d, generator=g) / math.sqrt(d)).to(device, torch.bfloat16)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    targets[::17] = -100
    names = ["loss", "grad_hidden", "grad_weight"]
    exact = _loss_and_grads(_unfused, hidden.double(), weight.double(), targets)
    ours = _loss_and_grads(_ours, hidden, weight, targets)
    unfused = _loss_and_grads(_unfused, hidden, weight, targets)
    bf16 = {}
    ok = True
    for name, e, o, u in zip(names, exact, ours, unfused, strict=True):
        err_ours, err_unfused = _rel(o, e), _rel(u, e)
        # A scalar may differ by one bf16 rounding of the exact value.
        allowed = max(err_unfused, torch.finfo(torch.bfloat16).eps / 2 if e.dim() == 0 else 0)
        bf16[name] = {"ours": err_ours, "unfused_bf16": err_unfused, "ok": err_ours <= allowed}
        ok &= bf16[name]["ok"]

    # Every option, float32, against the library's unfused reference path.
    h32, w32 = hidden.float(), weight.float()
    bias = torch.randn(v, generator=g).to(device)
    option_sets = [
        {"reduction": "mean"},
        {"reduction": "sum", "label_smoothing": 0.1},
        {"reduction": "none", "z_loss": 1e-4},
        {"reduction": "mean", "softcap": 30.0, "base": 2.0},
        {"reduction": "mean", "label_smoothing": 0.1, "z_loss": 1e-4, "softcap": 30.0},
    ]
    options_report = []
    for opts in option_sets:
        for with_bias in (False, True):
            b = bias if with_bias else None

            def reference(h, w, y, bias=None, **kw):
                return losses.linear_cross_entropy(h, w, y, bias=bias, impl="reference", **kw)

            want = _loss_and_grads(reference, h32, w32, targets, b, **opts)
            got = _loss_and_grads(_ours, h32, w32, targets, b, **opts)
            errs = [_rel(a, e) for a, e in zip(got, want, strict=True)]
            passed = max(errs) <= 1e-4
            ok &= passed
            options_report.append(
                {"options": opts, "bias": with_bias, "rel_errors": errs, "ok": passed}
            )
    return {
        "slice": {"N": n, "D": d, "V": v},
        "bfloat16_vs_float64": bf16,
        "float32_options_vs_reference": options_report,
        "ok": bool(ok),
    }


def _with_row_kernel(row_kernel: str, loss_fn):
    """``loss_fn`` with the row kernel chosen by ``_kernel.TRITON`` (see there)."""

    def run(*args):
        previous = _kernel.TRITON
        _kernel.TRITON = row_kernel
        try:  # the losses form their gradients in the forward pass, inside this call
            return loss_fn(*args)
        finally:
            _kernel.TRITON = previous

    return run


def _ours_chunked(h, w, y):
    return losses.linear_cross_entropy(h, w, y, impl="chunked")


def _contenders(device: torch.device) -> tuple[dict, list[str]]:
    """name -> loss function(hidden, weight, targets); plus notes on what was skipped."""
    notes = []
    contenders = {
        "torch eager": lambda h, w, y: F.cross_entropy(F.linear(h, w), y),
        "ours": _ours_chunked,
    }
    if _kernel.use_triton(device):
        contenders["ours, torch-op row kernel"] = _with_row_kernel("never", _ours_chunked)
    try:
        from torch.nn import LinearCrossEntropyOptions

        options = LinearCrossEntropyOptions()
        contenders["torch F.linear_cross_entropy"] = lambda h, w, y: F.linear_cross_entropy(
            h, w, y, options=options
        )
    except ImportError as error:
        notes.append(f"torch F.linear_cross_entropy chunked path unavailable: {error}")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        contenders["Liger Kernel"] = lambda h, w, y: liger_fused_linear_cross_entropy(h, w, y)
    except ImportError as error:
        notes.append(f"Liger Kernel not importable, skipped: {error}")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        contenders["Cut Cross-Entropy"] = lambda h, w, y: cce(h, w, y)
    except ImportError as error:
        notes.append(f"Cut Cross-Entropy not importable, skipped: {error}")
    if device.type != "cuda":
        for name in ("Liger Kernel", "Cut Cross-Entropy"):
            if contenders.pop(name, None) is not None:
                notes.append(f"{name} needs CUDA (Triton), skipped on {device.type}")
    return contenders, notes


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _timed(contenders: dict, leaves: list, inputs: tuple, device, repeat: int, notes) -> dict:
    """Forward + backward of each contender ``fn(*inputs)``: the best of ``repeat`` calls
    after a warm-up, the loss, and the peak memory above the inputs and the gradients of
    ``leaves``. A contender that fails is noted and the others go on."""
    grad_bytes = sum(t.numel() * t.element_size() for t in leaves)
    results = {}
    for name, fn in contenders.items():
        try:
            for leaf in leaves:
                leaf.grad = None
            _sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            times = []
            loss_value = None
            for i in range(repeat + 1):
                for leaf in leaves:
                    leaf.grad = None
                _sync(device)
                start = time.perf_counter()
                loss = fn(*inputs)
                loss.backward()
                _sync(device)
                if i > 0:  # the first call warms up (Triton compiles, allocator grows)
                    times.append(time.perf_counter() - start)
                loss_value = float(loss.detach())
                del loss
            peak = _peak_bytes(device)
            results[name] = {
                "time_s": min(times),
                "loss": loss_value,
                "extra_bytes": None if peak is None else peak - base - grad_bytes,
            }
        except Exception as error:  # a contender failing must not stop the others
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            notes.append(f"{name} failed: {traceback.format_exc(limit=3)}")
    return results


def bench(device: torch.device, n: int, d: int, v: int, repeat: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1)
    hidden = torch.randn(n, d, generator=g).to(device, torch.bfloat16).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / math.sqrt(d)).to(device, torch.bfloat16)
    weight.requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    contenders, notes = _contenders(device)
    results = _timed(contenders, [hidden, weight], (hidden, weight, targets), device, repeat, notes)
    return {
        "shape": {"N": n, "D": d, "V": v, "dtype": "bfloat16"},
        "results": results,
        "notes": notes,
    }


def bench_logits(device: torch.device, n: int, v: int, repeat: int) -> dict:
    """``cross_entropy`` on bfloat16 logits [n, v] against torch's (and Liger Kernel's,
    where importable), with our row kernel in Triton and on torch operations."""
    g = torch.Generator(device="cpu").manual_seed(2)
    logits = torch.randn(n, v, generator=g).to(device, torch.bfloat16).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    notes: list[str] = []
    contenders = {
        "torch F.cross_entropy": F.cross_entropy,
        "ours": losses.cross_entropy,
    }
    if _kernel.use_triton(device):
        contenders["ours, torch-op row kernel"] = _with_row_kernel("never", losses.cross_entropy)
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        if device.type == "cuda":
            contenders["Liger Kernel"] = liger_cross_entropy
    except ImportError as error:
        notes.append(f"Liger Kernel not importable, skipped: {error}")
    results = _timed(contenders, [logits], (logits, targets), device, repeat, notes)
    return {"shape": {"N": n, "V": v, "dtype": "bfloat16"}, "results": results, "notes": notes}


def _print_results(section: dict, baseline: str, title: str) -> None:
    """One benchmark's table: time, time over ``baseline``'s, extra memory, loss."""
    results = section["results"]
    base = results.get(baseline, {})
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "error", "-", "-", "-"])
            continue
        extra = r["extra_bytes"]
        rows.append(
            [
                name,
                r["time_s"],
                r["time_s"] / base["time_s"] if "time_s" in base else "-",
                "-" if extra is None else f"{extra / 2**20:.0f}",
                f"{r['loss']:.5f}",
            ]
        )
    print(title)
    print_table(["impl", "time s", f"x {baseline}", "extra MiB", "loss"], rows)
    for note in section["notes"]:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--row-kernel", choices=("auto", "always", "never"), default="auto")
    args = parser.parse_args(argv)
    _kernel.TRITON = args.row_kernel
    device = torch.device(args.device)
    if args.quick:
        slice_shape, bench_shape, logits_shape = (64, 32, 500), (256, 64, 2000), (256, 2000)
    else:
        slice_shape, bench_shape = (1024, 4096, 128256), (8192, 4096, 128256)
        logits_shape = (8192, 128256)

    started = time.perf_counter()
    report = {"machine": machine(), "device": str(device), "quick": args.quick}
    report["row_kernel"] = "triton" if _kernel.use_triton(device) else "torch operations"
    print(f"row kernel: {report['row_kernel']}")
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    report["correctness"] = check_correctness(device, *slice_shape)
    print(f"correctness on {slice_shape}: {'ok' if report['correctness']['ok'] else 'FAILED'}")
    for name, errs in report["correctness"]["bfloat16_vs_float64"].items():
        print(f"  {name}: ours {errs['ours']:.2e}, unfused bf16 {errs['unfused_bf16']:.2e}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report["benchmark"] = bench(device, *bench_shape, repeat=args.repeat)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report["benchmark_logits"] = bench_logits(device, *logits_shape, repeat=args.repeat)
    report["seconds"] = time.perf_counter() - started
    from crossentropy.losses import _products

    # Which mixed-precision weight-gradient accumulation this torch offered (0: addmm into
    # the float32 buffer, 1: a float32 product then add, 2: a half product then add).
    report["weight_grad_method"] = dict(_products._WEIGHT_GRAD_METHOD)
    print(f"weight-gradient accumulation method: {report['weight_grad_method']}")

    on = report.get("gpu", device)
    _print_results(report["benchmark"], "torch eager", f"fused head {bench_shape} bfloat16 on {on}")
    _print_results(
        report["benchmark_logits"],
        "torch F.cross_entropy",
        f"cross_entropy on logits {logits_shape} bfloat16 on {on}",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0 if report["correctness"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
