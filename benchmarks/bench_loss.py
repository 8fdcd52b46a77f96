"""Benchmark: `crossentropy.losses.cross_entropy` vs `torch.nn.functional.cross_entropy`.

Forward + backward of the mean loss on random logits [N, V], and [N, C, H, W] as in
semantic segmentation (21 classes, PASCAL VOC's count, at 256 x 256), with random class
targets, in float32 and bfloat16; and on [N, V] with class-probability targets (a
teacher's distribution, as in distillation; "p" in the table). Small blocks, which
``cross_entropy`` hands to torch's kernel after its checks (``TORCH_KERNEL_ELEMENTS``),
are also timed on our own kernel (``ours_kernel``, the hand-off turned off). Each
(implementation, shape, dtype, targets) case runs in a fresh process
(`_harness.run_fresh`) so that its peak resident memory belongs to it alone; the time is
the best of a few repeats after a warm-up. Ratios compare ours with torch measured in
the same run. Results go to ``benchmarks/results/loss.json``.

    python benchmarks/bench_loss.py  # [32, 10] ... [4096, 128256], [8, 21, 256, 256]
    python benchmarks/bench_loss.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    SMOKE,
    best_time,
    peak_rss_bytes,
    print_table,
    run_fresh,
    write_results,
)

FULL_SHAPES = [
    (32, 10),
    (128, 1000),
    (256, 1000),
    (512, 1000),
    (4096, 32000),
    (4096, 128256),
    (8, 21, 256, 256),
]
# Shapes below this many logits are timed as loops of calls (a call takes microseconds),
# of at most MAX_CALLS calls, repeated at least SMALL_REPEAT times: a small call's time
# varies with the state of torch's thread pool, and the best of many loops is steadier.
LOOP_BELOW = 1 << 24
MAX_CALLS = 4000
SMALL_REPEAT = 15
QUICK_SHAPES = [(512, 8000), (256, 32000), (2, 21, 64, 64)]
# Class-probability targets (a teacher's distribution, for distillation), rows only.
PROBABILITY_SHAPES = [(512, 1000), (4096, 32000)]
QUICK_PROBABILITY_SHAPES = [(512, 8000)]
DTYPES = ["float32", "bfloat16"]
IMPLS = ["torch", "ours"]


def impls_for(shape: tuple[int, ...]) -> list[str]:
    """The implementations timed for a case: our own kernel too where ours hands (N, V)
    blocks to torch's (at most ``_cross_entropy.TORCH_KERNEL_ELEMENTS`` logits)."""
    from crossentropy.losses._cross_entropy import TORCH_KERNEL_ELEMENTS

    small = len(shape) == 2 and shape[0] * shape[1] <= TORCH_KERNEL_ELEMENTS
    return [*IMPLS, "ours_kernel"] if small else IMPLS


def _label(shape: tuple[int, ...], kind: str) -> str:
    """A case's name in the table: its shape, marked "p" for probability targets."""
    return str(list(shape)) + (" p" if kind == "probabilities" else "")


def best_cpu_time(step, *, repeat: int) -> float:
    """The smallest process CPU time (user + system, all threads) of ``repeat`` calls (s)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return min(times)


def run_case(
    impl: str,
    shape: tuple[int, ...],
    dtype_name: str,
    repeat: int,
    threads: int,
    targets_kind: str = "index",
) -> dict:
    """One case in this process: time of forward + backward and peak memory, for logits of
    ``shape`` (N, V) or (N, C, d1, ...), the classes along dimension 1, and class-index
    targets or (``targets_kind="probabilities"``) class probabilities of the logits'
    dtype."""
    import torch
    import torch.nn.functional as F

    from crossentropy.losses import _cross_entropy, cross_entropy

    if impl == "ours_kernel":
        _cross_entropy.TORCH_KERNEL_ELEMENTS = 0  # our own kernel at every size
    if threads:
        torch.set_num_threads(threads)

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    n, v = shape[0], shape[1]
    # Filled in chunks so that no float32 copy of a bfloat16 block raises the peak.
    logits = torch.empty(shape, dtype=dtype)
    step = max(1, 256 * 128256 // (logits.numel() // n))
    for start in range(0, n, step):
        rows = logits[start : start + step]
        rows.copy_(torch.randn(rows.shape, generator=gen, dtype=torch.float32))
    logits.requires_grad_()
    if targets_kind == "probabilities":
        targets = torch.empty(shape, dtype=dtype)
        for start in range(0, n, step):
            rows = targets[start : start + step]
            rows.copy_(torch.softmax(torch.randn(rows.shape, generator=gen), 1))
    else:
        targets = torch.randint(0, v, (n, *shape[2:]), generator=gen)
    inputs_rss = peak_rss_bytes()
    loss_fn = F.cross_entropy if impl == "torch" else cross_entropy

    calls = min(max(1, LOOP_BELOW // logits.numel()), MAX_CALLS)
    if calls > 1:
        repeat = max(repeat, SMALL_REPEAT)

    def step() -> None:
        for _ in range(calls):
            logits.grad = None
            loss = loss_fn(logits, targets)
            loss.backward()

    seconds = best_time(step, repeat=repeat, warmup=1) / calls
    # CPU time of all threads, less sensitive than wall time to other work on the machine.
    cpu_seconds = best_cpu_time(step, repeat=repeat) / calls
    return {
        "impl": impl,
        "shape": list(shape),
        "dtype": dtype_name,
        "targets": targets_kind,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "inputs_rss_bytes": inputs_rss,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--case",
        nargs=4,
        metavar=("IMPL", "SHAPE", "DTYPE", "TARGETS"),
        help="internal (SHAPE: 8x21x256x256; TARGETS: index or probabilities)",
    )
    args = parser.parse_args()

    if args.case:
        impl, shape, dtype, kind = args.case
        shape = tuple(int(size) for size in shape.split("x"))
        print(json.dumps(run_case(impl, shape, dtype, args.repeat, args.threads, kind)))
        return

    shapes = [(shape, "index") for shape in (QUICK_SHAPES if args.quick else FULL_SHAPES)]
    shapes += [
        (shape, "probabilities")
        for shape in (QUICK_PROBABILITY_SHAPES if args.quick else PROBABILITY_SHAPES)
    ]
    if SMOKE:
        shapes, args.repeat = [((64, 500), "index"), ((2, 5, 4, 4), "index")], 1
        shapes.append(((64, 500), "probabilities"))
    cases = []
    for shape, kind in shapes:
        label = _label(shape, kind)
        for dtype in DTYPES:
            for impl in impls_for(shape):
                case = run_fresh(
                    Path(__file__),
                    [
                        "--repeat",
                        str(args.repeat),
                        "--case",
                        impl,
                        "x".join(str(size) for size in shape),
                        dtype,
                        kind,
                    ],
                )
                cases.append(case)
                print(
                    f"  {impl:5s} {label} {dtype:8s} {case['seconds']:.3f} s "
                    f"peak {case['peak_rss_bytes'] / 1e9:.2f} GB",
                    file=sys.stderr,
                )

    rows = []
    comparisons = []
    for shape, kind in shapes:
        for dtype in DTYPES:
            found = {
                c["impl"]: c
                for c in cases
                if (tuple(c["shape"]), c["dtype"], c["targets"]) == (shape, dtype, kind)
            }
            ours, torch_case = found["ours"], found["torch"]
            own = found.get("ours_kernel")
            time_ratio = ours["seconds"] / torch_case["seconds"]
            cpu_ratio = ours["cpu_seconds"] / torch_case["cpu_seconds"]
            memory_ratio = ours["peak_rss_bytes"] / torch_case["peak_rss_bytes"]
            extra_ours = ours["peak_rss_bytes"] - ours["inputs_rss_bytes"]
            extra_torch = torch_case["peak_rss_bytes"] - torch_case["inputs_rss_bytes"]
            comparisons.append(
                {
                    "shape": list(shape),
                    "dtype": dtype,
                    "targets": kind,
                    "time_ratio": time_ratio,
                    "cpu_time_ratio": cpu_ratio,
                    "peak_memory_ratio": memory_ratio,
                    "memory_above_inputs_ratio": extra_ours / extra_torch,
                    "own_kernel_time_ratio": own and own["seconds"] / torch_case["seconds"],
                }
            )
            rows.append(
                [
                    _label(shape, kind),
                    dtype,
                    torch_case["seconds"],
                    ours["seconds"],
                    own["seconds"] if own else "-",
                    round(time_ratio, 2),
                    round(cpu_ratio, 2),
                    round(torch_case["peak_rss_bytes"] / 1e9, 2),
                    round(ours["peak_rss_bytes"] / 1e9, 2),
                    round(memory_ratio, 2),
                    round(extra_ours / extra_torch, 2),
                ]
            )
    print("cross_entropy forward + backward (mean), ours vs torch.nn.functional.cross_entropy")
    print_table(
        [
            "logits",
            "dtype",
            "torch s",
            "ours s",
            "own kernel s",
            "time ratio",
            "cpu-time ratio",
            "torch peak GB",
            "ours peak GB",
            "peak ratio",
            "above-inputs ratio",
        ],
        rows,
    )
    if args.quick:  # smoke run: print only, keep the full results file
        return
    path = write_results(
        "loss",
        {
            "description": "forward + backward of the mean cross-entropy on random logits "
            "[N, V] or [N, C, H, W] (requires_grad) and random class targets, or (targets: "
            "probabilities) softmax rows of random numbers in the logits' dtype; best of "
            f"{args.repeat} after one warm-up; each case in a fresh process; peak = ru_maxrss "
            "of that process (inputs included); above-inputs = peak minus the RSS after the "
            "inputs were created",
            "cases": cases,
            "comparisons": comparisons,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
