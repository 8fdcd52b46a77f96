"""Shared benchmark plumbing: timing, fresh-process peak memory, machine facts, results files.

Every benchmark compares ours with the anchors *in one run*, on the same inputs, and reports
ratios, so that the numbers survive a change of machine. Results go to
``benchmarks/results/<name>.json`` with the machine they were measured on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(
    os.environ.get("CROSSENTROPY_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)
"""Where results files go: ``benchmarks/results``, or ``$CROSSENTROPY_BENCH_RESULTS``."""

SMOKE = os.environ.get("CROSSENTROPY_BENCH_SMOKE") == "1"
"""``CROSSENTROPY_BENCH_SMOKE=1``: every benchmark runs at a tiny size, once, so that the
test suite can check that it still runs end to end; its numbers mean nothing."""


def machine() -> dict[str, Any]:
    """Facts about the machine a result was measured on."""
    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for package in ("numpy", "scipy", "torch", "constriction"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            facts[package] = importlib.metadata.version(package)
    return facts


def best_time(fn: Callable[[], object], *, repeat: int = 3, warmup: int = 1) -> float:
    """The best wall time of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls (s)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_fresh(script: Path, args: Sequence[str], *, timeout: float = 1800) -> dict[str, Any]:
    """Run ``script args`` in a fresh interpreter; it must print one JSON object on its last line.

    A fresh process per case makes peak memory (``ru_maxrss``) belong to that case alone.
    """
    completed = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark case {args} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with the machine facts to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {"machine": machine(), "measured": time.strftime("%Y-%m-%d"), **payload}
    if SMOKE:
        document["smoke"] = True
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
