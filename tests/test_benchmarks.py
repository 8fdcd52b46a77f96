"""Every benchmark still runs end to end: each script at a tiny size
(``CROSSENTROPY_BENCH_SMOKE=1``) writing its results file to a temporary folder, so that
``make bench`` and the GPU check cannot rot unseen. The numbers of such a run mean
nothing; what is checked is that the script finishes, writes a complete results file, and
that the implementations it times computed the same loss."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_smoke(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CROSSENTROPY_BENCH_SMOKE": "1",
        "CROSSENTROPY_BENCH_RESULTS": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard only: a loaded 2-core machine runs these several times slower
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def numbers(document: object) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(document, bool):
        return []
    if isinstance(document, int | float):
        return [float(document)]
    if isinstance(document, dict):
        return [x for value in document.values() for x in numbers(value)]
    if isinstance(document, list):
        return [x for value in document for x in numbers(value)]
    return []


def load(tmp_path: Path, name: str) -> dict:
    document = json.loads((tmp_path / f"{name}.json").read_text())
    assert document["smoke"] is True
    assert document["machine"]["cpus"] >= 1
    values = numbers(document)
    assert values
    assert all(math.isfinite(x) for x in values), "a results file holds a NaN or inf"
    return document


def test_bench_info(tmp_path):
    run_smoke("bench_info.py", tmp_path)
    document = load(tmp_path, "info")
    assert document["shape"] == [300, 40]
    # Ours agrees with SciPy on the benchmark's own input.
    assert all(error < 1e-9 for error in numbers(document["max_abs_error_vs_scipy_bits"]))


def test_bench_loss(tmp_path):
    pytest.importorskip("torch")
    run_smoke("bench_loss.py", tmp_path)
    document = load(tmp_path, "loss")
    impls = {case["impl"] for case in document["cases"]}
    assert {"torch", "ours"} <= impls
    assert document["comparisons"]


def test_bench_linear_ce(tmp_path):
    pytest.importorskip("torch")
    done = run_smoke("bench_linear_ce.py", tmp_path)
    assert "targets:" in done.stdout
    (run,) = load(tmp_path, "linear_ce")["full"]["runs"]
    assert run["shape"]["N"] == 96
    losses = {kind: case["loss"] for kind, case in run["memory"].items()}
    assert {"eager", "ours"} <= set(losses)
    # Every implementation timed computed the same loss (float32 on the same inputs).
    assert max(losses.values()) - min(losses.values()) <= 1e-5 * abs(losses["eager"])


def test_bench_vocab_parallel(tmp_path):
    pytest.importorskip("torch")
    done = run_smoke("bench_vocab_parallel.py", tmp_path)
    assert "gloo ranks" in done.stdout
    document = load(tmp_path, "vocab_parallel")
    assert document["shape"]["N"] == 48
    assert {"onednn", "torch"} <= set(document["times_s"])
    # Every engine's loss agrees (the script raises otherwise; checked here again).
    values = list(document["losses"].values())
    assert max(values) - min(values) <= 1e-4 * abs(values[0])


def test_bench_coding(tmp_path):
    pytest.importorskip("constriction")
    run_smoke("bench_coding.py", tmp_path)
    document = load(tmp_path, "coding")
    assert document["input"]["bytes"] == 1 << 14
    assert set(document["results"]) >= {"order0", "context", "gzip -9"}


def test_gpu_check_runs_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu_check.json"
    done = run_smoke("gpu_check.py", tmp_path, "--device", "cpu", "--quick", "--out", str(out))
    assert "correctness" in done.stdout
    document = json.loads(out.read_text())
    assert document["machine"]["cpus"] >= 1
    assert "ok" in done.stdout
    assert document["row_kernel"] == "torch operations"


def test_gpu_check_runs_its_triton_arm_in_the_interpreter(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest without a GPU)")
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--quick", "--out", str(out), "--row-kernel", "always"]
    done = run_smoke("gpu_check.py", tmp_path, *args)
    document = json.loads(out.read_text())
    assert document["row_kernel"] == "triton"
    assert document["correctness"]["ok"] is True
    results = document["benchmark"]["results"]
    ours, torch_rows = results["ours"], results["ours, torch-op row kernel"]
    assert "error" not in ours
    assert "error" not in torch_rows
    assert ours["loss"] == pytest.approx(torch_rows["loss"], rel=1e-5, abs=0)
    assert "row kernel: triton" in done.stdout
    logits = document["benchmark_logits"]["results"]
    assert set(logits) >= {"torch F.cross_entropy", "ours", "ours, torch-op row kernel"}
    losses = [r["loss"] for r in logits.values()]  # bfloat16 losses: equal to the last bit
    assert all(loss == pytest.approx(losses[0], rel=2**-7, abs=0) for loss in losses)
