"""Fused linear + cross-entropy on CPU: ours vs torch eager vs torch's F.linear_cross_entropy.

Every case runs forward + backward (float32) in a fresh process, so that its peak resident
memory is its own. Reported per case: the best wall time, the peak memory *above the
inputs and their gradients* (peak RSS minus the RSS once the inputs exist, minus the bytes
of the gradients it returns), and the ratios to

- the floor: 6·N·D·V floating-point operations at the float32 matrix-multiply rate of this
  machine, measured in the same run (best of a 2048³ float32 product);
- torch eager: ``F.cross_entropy(F.linear(hidden, weight), targets)``;
- torch's own ``F.linear_cross_entropy`` with ``LinearCrossEntropyOptions()`` (its default
  chunking) and with ``batch_chunk_size`` set to our chunk.

Targets (issue 4): ours <= 1.10x the floor, <= 0.9x eager, <= 1.0x torch's chunked path,
and memory above the inputs and gradients <= 5 % of eager's.

Usage::

    .venv/bin/python benchmarks/bench_linear_ce.py            # N=4096, D=1024, V=32000, 128256
    .venv/bin/python benchmarks/bench_linear_ce.py --quick    # N=2048, D=512, V=65536
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, best_time, print_table, run_fresh, write_results

RESULTS_FILE = RESULTS / "linear_ce.json"

FULL_SHAPES = [(4096, 1024, 32000), (4096, 1024, 128256)]
QUICK_SHAPES = [(2048, 512, 65536)]
TARGETS = {"floor": 1.10, "eager": 0.9, "torch_lce": 1.0, "memory_vs_eager": 0.05}


# ---------------------------------------------------------------------------------------
# One case, in its own process.


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _matmul_rate(size: int = 2048, repeat: int = 3) -> float:
    """Best float32 matrix-multiply rate of this machine (FLOP/s) on a size³ product."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    seconds = best_time(lambda: torch.matmul(a, b, out=out), repeat=repeat, warmup=1)
    return 2 * size**3 / seconds


def run_case(kind: str, n: int, d: int, v: int, repeat: int, warmup: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    if kind == "floor":
        rate = _matmul_rate()
        return {"kind": kind, "rate_flops": rate, "time_s": 6 * n * d * v / rate}

    torch.manual_seed(0)
    hidden = torch.randn(n, d).requires_grad_()
    weight = (torch.randn(v, d) / math.sqrt(d)).requires_grad_()
    targets = torch.randint(0, v, (n,))
    base = max(_rss_now(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    if kind == "ours":
        from crossentropy import losses

        def loss_fn():
            return losses.linear_cross_entropy(hidden, weight, targets, impl="chunked")
    elif kind == "eager":

        def loss_fn():
            return F.cross_entropy(F.linear(hidden, weight), targets)
    elif kind.startswith("torch_lce"):
        from torch.nn import LinearCrossEntropyOptions

        options = (
            LinearCrossEntropyOptions()
            if kind == "torch_lce"
            else LinearCrossEntropyOptions(batch_chunk_size=chunk, chunking_method=None)
        )

        def loss_fn():
            return F.linear_cross_entropy(hidden, weight, targets, options=options)
    else:
        raise ValueError(
            f"`kind` must be floor, ours, eager, torch_lce or torch_lce_chunk; got {kind}"
        )

    losses_seen = []

    def step():
        hidden.grad = None
        weight.grad = None
        loss = loss_fn()
        loss.backward()
        losses_seen.append(float(loss))

    # The first call is untimed and sets the peak; timing follows.
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grads = (hidden.numel() + weight.numel()) * 4
    seconds = best_time(step, repeat=repeat, warmup=max(warmup - 1, 0)) if repeat else first
    peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "kind": kind,
        "time_s": seconds,
        "first_call_s": first,
        "peak_rss_bytes": peak,
        "extra_bytes": peak - base - grads,
        "loss": losses_seen[0],
    }


# ---------------------------------------------------------------------------------------
# The driver.


def bench_shape(n: int, d: int, v: int, *, repeat: int, slow_repeat: int) -> dict:
    from crossentropy.losses._linear import plan_chunk_rows

    script = Path(__file__).resolve()
    chunk = plan_chunk_rows(n, d, v)
    results = {}
    plan = [
        ("floor", repeat),
        ("eager", repeat),
        ("ours", repeat),
        ("torch_lce", slow_repeat),
        ("torch_lce_chunk", slow_repeat),
    ]
    for kind, reps in plan:
        args = ["--case", kind, "--shape", str(n), str(d), str(v)]
        args += ["--repeat", str(reps), "--warmup", "1", "--chunk", str(chunk)]
        print(f"  {kind} ...", file=sys.stderr, flush=True)
        results[kind] = run_fresh(script, args, timeout=3600)
    floor = results["floor"]["time_s"]
    eager = results["eager"]
    ours = results["ours"]
    lce = min(results["torch_lce"]["time_s"], results["torch_lce_chunk"]["time_s"])
    ratios = {
        "vs_floor": ours["time_s"] / floor,
        "vs_eager": ours["time_s"] / eager["time_s"],
        "vs_torch_lce_best": ours["time_s"] / lce,
        "memory_vs_eager": ours["extra_bytes"] / eager["extra_bytes"],
    }
    met = {
        "floor": ratios["vs_floor"] <= TARGETS["floor"],
        "eager": ratios["vs_eager"] <= TARGETS["eager"],
        "torch_lce": ratios["vs_torch_lce_best"] <= TARGETS["torch_lce"],
        "memory_vs_eager": ratios["memory_vs_eager"] <= TARGETS["memory_vs_eager"],
    }
    reference_loss = eager["loss"]
    for kind in ("ours", "torch_lce", "torch_lce_chunk"):
        if abs(results[kind]["loss"] - reference_loss) > 1e-4 * abs(reference_loss):
            raise RuntimeError(f"{kind} loss {results[kind]['loss']} != eager {reference_loss}")
    return {
        "shape": {"N": n, "D": d, "V": v, "dtype": "float32"},
        "chunk_rows": chunk,
        "matmul_rate_gflops": results["floor"]["rate_flops"] / 1e9,
        "floor_s": floor,
        "cases": results,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": met,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2048, D=512, V=65536 only")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per fast case")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        n, d, v = args.shape
        out = run_case(args.case, n, d, v, args.repeat, args.warmup, args.chunk)
        print(json.dumps(out))
        return

    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    # torch's chunked path is several times slower than eager on CPU: time it once.
    runs = [bench_shape(n, d, v, repeat=args.repeat, slow_repeat=0) for n, d, v in shapes]
    rows = []
    for run in runs:
        s = run["shape"]
        eager = run["cases"]["eager"]
        for kind in ("floor", "eager", "torch_lce", "torch_lce_chunk", "ours"):
            case = run["cases"][kind]
            extra = case.get("extra_bytes")
            rows.append(
                [
                    f"{s['N']}x{s['D']}x{s['V']}",
                    kind,
                    case["time_s"],
                    case["time_s"] / run["floor_s"],
                    case["time_s"] / eager["time_s"],
                    "-" if extra is None else f"{extra / 2**20:.0f}",
                    "-" if extra is None else f"{extra / eager['extra_bytes']:.3f}",
                ]
            )
    print_table(
        ["shape", "impl", "time s", "x floor", "x eager", "extra MiB", "extra / eager"], rows
    )
    for run in runs:
        s = run["shape"]
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in run["ratios"].items())
        met = ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in run["targets_met"].items())
        print(
            f"{s['N']}x{s['D']}x{s['V']} (chunk {run['chunk_rows']} rows, matmul "
            f"{run['matmul_rate_gflops']:.0f} GFLOP/s): {ratios}\n  targets: {met}"
        )
    # One results file: the full and the quick sizes each keep their latest run.
    previous = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "{}"
    sections = {k: v for k, v in json.loads(previous).items() if k in ("full", "quick")}
    sections["quick" if args.quick else "full"] = {"runs": runs}
    path = write_results("linear_ce", {"benchmark": "bench_linear_ce", **sections})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
