"""Run functions on a group of ``gloo`` processes started by a test, with a hard timeout.

:func:`run_group` starts ``world_size`` processes (forked from a fork server that has
imported torch once, or spawned where there is none), each of which joins a process group
through a ``file://`` rendezvous in the test's own temporary directory (no ports, so tests
running in parallel cannot collide), runs one task function from :data:`TASKS`, and saves
what it returns. The parent collects each rank's result. A group that does not finish in
time is killed and the test fails, so a hang never blocks the suite.

Tasks run many cases in one group so that a test pays the start-up cost once. A
case that raises records ``("error", type name, message)`` instead of stopping the task, so
that tests can check that every rank raised the same error and that the group still works.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_PRELOAD = ["torch", "torch.distributed", "crossentropy.losses", "tests.losses._dist_worker"]
COLLECTIVE_TIMEOUT_S = 30  # a collective that waits longer raises inside the worker
GROUP_TIMEOUT_S = 90  # the whole group is killed after this


def shard_bounds(sizes: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each rank's vocabulary block for shard sizes in rank order."""
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _entry(rank: int, world: int, init_file: str, task: str, payload: object, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    row_kernel = os.environ.get("CROSSENTROPY_TEST_ROW_KERNEL")
    if row_kernel:  # "always": the Triton kernels (in its interpreter without a GPU)
        from crossentropy.losses import _kernel

        _kernel.TRITON = row_kernel
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        result = TASKS[task](rank, world, payload)
    except BaseException:
        result = {"__crash__": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_group(
    world: int, task: str, payload: object, tmp_path: Path, *, timeout_s: float = GROUP_TIMEOUT_S
) -> list[object]:
    """Run ``TASKS[task](rank, world, payload)`` on ``world`` gloo processes.

    Returns the list of per-rank results. Raises AssertionError when a rank crashed
    outside a case or the group did not finish within ``timeout_s`` seconds (its processes
    are then killed).
    """
    out = tmp_path / f"group-{task}-{world}"
    out.mkdir()
    # A fork server that has imported torch and the library once forks every rank, so a
    # group starts in a fraction of a second instead of importing torch per process; the
    # server itself is single-threaded, which makes forking it safe.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if method == "forkserver":
        mp.set_forkserver_preload(_PRELOAD)
    context = mp.start_processes(
        _entry,
        args=(world, str(out / "rendezvous"), task, payload, str(out)),
        nprocs=world,
        join=False,
        start_method=method,
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.2):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise AssertionError(f"the {world}-process group did not finish in time (a hang)")
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "__crash__" in result:
            raise AssertionError(f"rank {rank} crashed:\n{result['__crash__']}")
    return results


def _capture(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # recorded for the parent to check
        return ("error", type(exc).__name__, str(exc))


# --------------------------------------------------------------------------------------
# Tasks. Each receives the full inputs and slices out its own shard.
# --------------------------------------------------------------------------------------


def _vocab_parallel_cases(rank: int, world: int, payload: dict) -> dict:
    from crossentropy.losses import vocab_parallel_cross_entropy

    results = {}
    for case in payload["cases"]:
        start, stop = shard_bounds(case.get("sizes", payload["sizes"]))[rank]

        def one(case=case, start=start, stop=stop):
            logits = case["logits"][..., start:stop].clone().requires_grad_(True)
            options = dict(case["options"])
            targets = case["targets"]
            if targets.is_floating_point():  # class probabilities: this rank's columns
                targets = targets[..., start:stop]
            loss = vocab_parallel_cross_entropy(logits, targets, vocab_start=start, **options)
            upstream = case.get("upstream")
            (loss * upstream if upstream is not None else loss).sum().backward()
            return loss.detach(), logits.grad

        results[case["name"]] = _capture(one)
    return results


def _sharded_linear_cases(rank: int, world: int, payload: dict) -> dict:
    from crossentropy.losses import linear_cross_entropy
    from crossentropy.losses._distributed import sharded_linear_cross_entropy

    results = {}
    for case in payload["cases"]:
        start, stop = shard_bounds(case.get("sizes", payload["sizes"]))[rank]

        def one(case=case, start=start, stop=stop):
            hidden = case["hidden"].clone().requires_grad_(True)
            weight = case["weight"][start:stop].clone().requires_grad_(True)
            bias = case.get("bias")
            if bias is not None:
                bias = bias[start:stop].clone().requires_grad_(True)
            targets = case["targets"]
            if targets.is_floating_point():  # class probabilities: this rank's columns
                targets = targets[..., start:stop]
            if case.get("public"):
                loss = linear_cross_entropy(
                    hidden,
                    weight,
                    targets,
                    bias=bias,
                    group=dist.group.WORLD,
                    **case["options"],
                )
            else:
                loss = sharded_linear_cross_entropy(
                    hidden, weight, targets, bias=bias, **case["options"]
                )
            upstream = case.get("upstream")
            (loss * upstream if upstream is not None else loss).sum().backward()
            return (
                loss.detach(),
                hidden.grad,
                weight.grad,
                None if bias is None else bias.grad,
            )

        results[case["name"]] = _capture(one)
    return results


def _mismatch_cases(rank: int, world: int, payload: dict) -> dict:
    """Each case gives this rank its own arguments; a good call follows each bad one."""
    from crossentropy.losses import vocab_parallel_cross_entropy
    from crossentropy.losses._distributed import sharded_linear_cross_entropy

    results = {}
    for case in payload["cases"]:
        mine = case["per_rank"][rank]
        if case["kind"] == "vocab":
            results[case["name"]] = _capture(
                lambda mine=mine: vocab_parallel_cross_entropy(*mine["args"], **mine["kwargs"])
            )
        else:
            results[case["name"]] = _capture(
                lambda mine=mine: sharded_linear_cross_entropy(*mine["args"], **mine["kwargs"])
            )
        # The group must still be usable after the error: a collective that every rank
        # joins, checked against the expected sum.
        probe = torch.tensor([float(rank + 1)])
        dist.all_reduce(probe)
        results[case["name"] + "/after"] = float(probe) == world * (world + 1) / 2
    return results


def _second_order_cases(rank: int, world: int, payload: dict) -> dict:
    """Per case: the first-order gradients formed with ``create_graph=True``, and what
    differentiating them again does (an error is expected on every rank)."""
    from crossentropy.losses import linear_cross_entropy, vocab_parallel_cross_entropy

    start, stop = shard_bounds(payload["sizes"])[rank]
    results = {}
    for case in payload["cases"]:

        def first(case=case):
            if case["kind"] == "vocab":
                inputs = [case["logits"][..., start:stop].clone().requires_grad_(True)]
                loss = vocab_parallel_cross_entropy(
                    inputs[0], case["targets"], vocab_start=start, **case["options"]
                )
            else:
                inputs = [
                    case["hidden"].clone().requires_grad_(True),
                    case["weight"][start:stop].clone().requires_grad_(True),
                ]
                loss = linear_cross_entropy(
                    *inputs, case["targets"], group=dist.group.WORLD, **case["options"]
                )
            grads = torch.autograd.grad(loss.sum(), inputs, create_graph=True)
            return loss, grads

        def second(case=case):
            _, grads = first(case)
            sum(g.square().sum() for g in grads).backward()
            return True

        results[case["name"]] = _capture(lambda first=first: [g.detach() for g in first()[1]])
        results[case["name"] + "/second"] = _capture(second)
        probe = torch.tensor([float(rank + 1)])
        dist.all_reduce(probe)
        results[case["name"] + "/after"] = float(probe) == world * (world + 1) / 2
    return results


def _stall(rank: int, world: int, payload: dict) -> dict:
    """Rank 0 never joins the collective the others wait in: a hang, for the guard test."""
    if rank == 0:
        time.sleep(payload["sleep_s"])
    else:
        dist.all_reduce(torch.ones(1))
    return {}


TASKS = {
    "vocab_parallel": _vocab_parallel_cases,
    "sharded_linear": _sharded_linear_cases,
    "mismatch": _mismatch_cases,
    "second_order": _second_order_cases,
    "stall": _stall,
}

__all__ = ["TASKS", "run_group", "shard_bounds"]
