"""The vocabulary-parallel fused head on CPU: each rank's share on each product engine.

``linear_cross_entropy(hidden, weight_shard, targets, group=...)`` on ``gloo`` ranks
spawned on this machine, each rank with one thread and its contiguous share of the
vocabulary's rows, float32 forward + backward (mean reduction). The contenders are the
same call with the rank's products on each CPU engine (``_products.CPU_ENGINE``): the
fused engine of ``crossentropy.losses._native`` (``fused``, the default where it runs),
torch's bundled oneDNN (``onednn``) and ``torch.mm`` (``torch``). They run in interleaved
rounds in the same processes (best of the rounds each; a step's time is rank 0's, every
step ending in the ranks' shared collectives), and their losses must agree.

Usage::

    .venv/bin/python benchmarks/bench_vocab_parallel.py          # N=2048, D=512, V=65536, 2 ranks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import SMOKE, print_table, write_results

SHAPE = (2048, 512, 65536)
SMOKE_SHAPE = (48, 16, 3000)


def _rank(rank: int, world: int, init: str, shape, engines, rounds: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from crossentropy import losses
    from crossentropy.losses import _native, _products

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n, d, v = shape
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = torch.randn(v, d, generator=g).div_(d**0.5)
    targets = torch.randint(0, v, (n,), generator=g)
    start, stop = v * rank // world, v * (rank + 1) // world
    shard = weight[start:stop].clone().requires_grad_()

    def step(engine: str) -> float:
        _products.CPU_ENGINE = engine
        hidden.grad = None
        shard.grad = None
        loss = losses.linear_cross_entropy(hidden, shard, targets, group=dist.group.WORLD)
        loss.backward()
        return float(loss.detach())

    available = [e for e in engines if e != "fused" or _native.available()]
    values = {engine: step(engine) for engine in available}  # warm-up, and the losses
    best = {engine: float("inf") for engine in available}
    for _ in range(rounds):
        for engine in available:
            dist.barrier()
            begun = time.perf_counter()
            step(engine)
            best[engine] = min(best[engine], time.perf_counter() - begun)
    if rank == 0:
        Path(out).write_text(json.dumps({"times_s": best, "losses": values}))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    shape = SMOKE_SHAPE if SMOKE else SHAPE
    rounds = 1 if SMOKE else args.rounds
    engines = ("fused", "onednn", "torch")
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.json")
        init = f"file://{os.path.join(folder, 'rendezvous')}"
        mp.start_processes(
            _rank,
            args=(args.ranks, init, shape, engines, rounds, out),
            nprocs=args.ranks,
            start_method="spawn",
        )
        result = json.loads(Path(out).read_text())
    times, values = result["times_s"], result["losses"]
    reference = values["onednn"]
    for engine, value in values.items():
        if abs(value - reference) > 1e-4 * abs(reference):
            raise RuntimeError(f"{engine} loss {value} != onednn's {reference}")
    n, d, v = shape
    rows = [
        [f"{n}x{d}x{v}", engine, seconds, seconds / times["onednn"]]
        for engine, seconds in times.items()
    ]
    print(f"{args.ranks} gloo ranks, 1 thread each, each with V/{args.ranks} rows of the head")
    print_table(["shape", "engine", "time s", "x onednn"], rows)
    path = write_results(
        "vocab_parallel",
        {
            "benchmark": "bench_vocab_parallel",
            "shape": {"N": n, "D": d, "V": v, "dtype": "float32"},
            "ranks": args.ranks,
            "threads_per_rank": 1,
            "rounds": rounds,
            "times_s": times,
            "losses": values,
            "ratios_vs_onednn": {e: s / times["onednn"] for e, s in times.items()},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
