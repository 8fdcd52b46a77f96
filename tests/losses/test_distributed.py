"""The vocabulary-parallel losses on real ``gloo`` process groups spawned by the tests.

Each test spawns one group of 2 or 3 processes and runs many cases in it (see
``tests/losses/_dist_worker.py``); the parent computes the single-process oracle and
compares. Oracles: ``torch.nn.functional.cross_entropy`` on the full logits for the options
torch has, the same composed with the soft-cap, z-loss and base written as the math reads
for the others, and ``crossentropy.losses.cross_entropy`` where it is available.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossentropy.losses import cross_entropy, linear_cross_entropy
from tests.losses._dist_worker import run_group, shard_bounds
from tests.losses.reference_losses import composed_torch_loss

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="this torch build has no torch.distributed gloo backend",
    ),
]

V = 11  # vocabulary of the vocab-parallel cases
SHARDS = {2: [4, 7], 3: [2, 5, 4]}  # uneven on purpose
EMPTY_SHARD = [3, 0, 8]  # a rank may hold no rows
LEAD = (3, 5)  # 15 tokens in a (batch, sequence) layout
TOL = {
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    # Half types are compared with the float64 result on the same (rounded) inputs: within
    # one unit in the last place, i.e. only the final rounding to the half type.
    torch.bfloat16: {"rtol": 2**-7, "atol": 1e-6},
    torch.float16: {"rtol": 2**-10, "atol": 1e-6},
}
LOW_PRECISION = (torch.bfloat16, torch.float16)
LOW_PRECISION_CASES = {"plain", "everything"}


TORCH_OPTIONS = {"weight", "ignore_index", "reduction", "label_smoothing", "validate"}


def _grads(fn, tensors, upstream):
    """Value of ``fn(*tensors)`` and the gradients of ``sum(upstream * value)``; half-type
    inputs are computed in float64 (the oracle for the half-type results)."""
    leaves = [
        None if t is None else _upcast(t).detach().clone().requires_grad_(True) for t in tensors
    ]
    upstream = None if upstream is None else _upcast(upstream)
    value = fn(*leaves)
    (value * upstream if upstream is not None else value).sum().backward()
    return value.detach(), [t.grad if t is not None else None for t in leaves]


def _upcast(tensor):
    return tensor.double() if tensor.dtype in LOW_PRECISION else tensor


def _close(label, actual, expected, dtype, failures):
    if dtype in LOW_PRECISION:
        actual, expected = actual.double(), expected.double()
    tol = dict(TOL[dtype])
    if dtype == torch.float32:
        # 1e-6 of the tensor's scale: an entry formed by cancellation (a hidden gradient
        # summed over the vocabulary) carries the rounding error of its largest terms.
        tol["atol"] *= max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
    try:
        torch.testing.assert_close(actual, expected, **tol)
    except AssertionError as exc:
        failures.append(f"{label}: {str(exc).splitlines()[0:4]}")


# --------------------------------------------------------------------------------------
# vocab_parallel_cross_entropy
# --------------------------------------------------------------------------------------


def _agreed_outcomes(results, name, failures):
    """Each rank's ``(loss, *grads)`` of case ``name``, or None (with the failure noted)
    when a rank raised; a failure is also noted when the ranks' losses differ."""
    outcomes = [result[name] for result in results]
    bad = [o for o in outcomes if o[0] != "ok"]
    if bad:
        failures.append(f"{name}: {bad[0]}")
        return None
    losses = [o[1][0] for o in outcomes]
    if not all(torch.equal(losses[0], other) for other in losses[1:]):
        failures.append(f"{name}: ranks returned different losses {losses}")
    return outcomes


def _ran_cases(world, kind, cases, tmp_path, failures):
    """Run ``cases`` on ``world`` gloo ranks with the worker ``kind``; yield each case with
    the loss its ranks agreed on and every rank's ``(loss, *grads)``. Cases a rank failed
    are noted in ``failures`` and not yielded."""
    results = run_group(world, kind, {"sizes": SHARDS[world], "cases": cases}, tmp_path)
    for case in cases:
        outcomes = _agreed_outcomes(results, case["name"], failures)
        if outcomes is not None:
            yield case, outcomes[0][1][0], outcomes


# Group sizes, each with the torch-operation shard kernels, and 2 ranks again with the
# Triton ones (run by Triton's interpreter without a GPU).
ROW_KERNELS = [
    (2, "torch"),
    (3, "torch"),
    pytest.param(
        2,
        "triton",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("triton") is None
            or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
            reason="needs Triton, and its interpreter without a GPU",
        ),
    ),
]


def _use_row_kernel(row_kernel: str, monkeypatch) -> None:
    """The spawned ranks' shard kernels: torch operations, or Triton's."""
    monkeypatch.setenv(
        "CROSSENTROPY_TEST_ROW_KERNEL", "always" if row_kernel == "triton" else "never"
    )


def _vocab_cases(world: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1000 + world)
    cases = []
    for dtype in (torch.float32, torch.float64, *LOW_PRECISION):
        logits = (3.0 * torch.randn(*LEAD, V, generator=gen, dtype=torch.float64)).to(dtype)
        targets = torch.randint(0, V, LEAD, generator=gen)
        targets.view(-1)[:V] = torch.randperm(V, generator=gen)  # every shard has targets
        weight = 0.1 + torch.rand(V, generator=gen, dtype=torch.float64)
        weight = weight.to(torch.float64 if dtype in LOW_PRECISION else dtype)
        some_ignored = targets.clone()
        some_ignored.view(-1)[::4] = -100
        minus_one = targets.clone()
        minus_one.view(-1)[1::3] = -1
        all_ignored = torch.full(LEAD, -100)
        option_sets = [
            ("plain", targets, {}),
            ("weight", targets, {"weight": weight}),
            ("ignore_default", some_ignored, {"weight": weight}),
            ("ignore_minus_one", minus_one, {"ignore_index": -1}),
            ("smoothing", targets, {"label_smoothing": 0.1}),
            ("smoothing_weight_ignore", some_ignored, {"label_smoothing": 0.3, "weight": weight}),
            ("z_loss", targets, {"z_loss": 0.05}),
            ("z_loss_weight", some_ignored, {"z_loss": 0.05, "weight": weight}),
            ("softcap", targets, {"softcap": 2.0}),
            ("base2", targets, {"base": 2}),
            (
                "everything",
                minus_one,
                {
                    "ignore_index": -1,
                    "weight": weight,
                    "label_smoothing": 0.2,
                    "z_loss": 0.03,
                    "softcap": 4.0,
                    "base": 2,
                },
            ),
            ("all_ignored", all_ignored, {}),
            ("all_ignored_options", all_ignored, {"weight": weight, "label_smoothing": 0.1}),
            ("no_validate", some_ignored, {"validate": False, "label_smoothing": 0.1}),
        ]
        for reduction in ("mean", "sum", "none"):
            upstream = None
            if reduction == "none":
                upstream = torch.rand(LEAD, generator=gen, dtype=torch.float64).to(dtype)
            for name, tgt, options in option_sets:
                if dtype in LOW_PRECISION and name not in LOW_PRECISION_CASES:
                    continue
                cases.append(
                    {
                        "name": f"{name}/{reduction}/{dtype}",
                        "logits": logits,
                        "targets": tgt,
                        "options": {**options, "reduction": reduction},
                        "upstream": upstream,
                        "dtype": dtype,
                    }
                )
        if dtype in LOW_PRECISION:
            continue
        # Other layouts: 2-D (N, V), 1-D (V,) with a scalar target, an empty shard.
        flat = logits.reshape(-1, V)
        cases.append(
            {
                "name": f"2d/{dtype}",
                "logits": flat,
                "targets": targets.reshape(-1),
                "options": {"label_smoothing": 0.1},
                "dtype": dtype,
            }
        )
        cases.append(
            {
                "name": f"1d/{dtype}",
                "logits": flat[0],
                "targets": targets.reshape(-1)[0],
                "options": {"z_loss": 0.1},
                "dtype": dtype,
            }
        )
        if world == 3:
            cases.append(
                {
                    "name": f"empty_shard/{dtype}",
                    "logits": logits,
                    "targets": some_ignored,
                    "options": {"weight": weight, "label_smoothing": 0.2, "softcap": 3.0},
                    "sizes": EMPTY_SHARD,
                    "dtype": dtype,
                }
            )
    return cases


@pytest.mark.parametrize(("world", "row_kernel"), ROW_KERNELS)
def test_vocab_parallel_matches_single_process(world, row_kernel, tmp_path, monkeypatch):
    """Loss on every rank and the concatenated local gradients equal the single-process
    loss and gradient, for every option and reduction, float32 (1e-6) and float64."""
    _use_row_kernel(row_kernel, monkeypatch)
    failures: list[str] = []
    ran = _ran_cases(world, "vocab_parallel", _vocab_cases(world), tmp_path, failures)
    for case, loss, outcomes in ran:
        name, dtype = case["name"], case["dtype"]
        grad = torch.cat([o[1][1] for o in outcomes], dim=-1)
        options = case["options"]
        upstream = case.get("upstream")
        weight = options.get("weight")

        def composed(logits, _options=options, _targets=case["targets"]):
            return composed_torch_loss(logits, _targets, **_options)

        ref_loss, (ref_grad,) = _grads(composed, [case["logits"]], upstream)
        _close(f"{name} loss vs composed torch", loss, ref_loss, dtype, failures)
        _close(f"{name} grad vs composed torch", grad, ref_grad, dtype, failures)
        if dtype in LOW_PRECISION:
            continue
        all_ignored = bool((case["targets"] == options.get("ignore_index", -100)).all())
        if set(options) <= TORCH_OPTIONS and not (all_ignored and options["reduction"] == "mean"):
            torch_options = {k: v for k, v in options.items() if k != "validate"}

            def plain(logits, _options=torch_options, _targets=case["targets"]):
                return F.cross_entropy(logits.reshape(-1, V), _targets.reshape(-1), **_options)

            if case["logits"].dim() == 3 or options.get("reduction") != "none":
                flat_up = None if upstream is None else upstream.reshape(-1)
                torch_loss, (torch_grad,) = _grads(plain, [case["logits"]], flat_up)
                if options.get("reduction") == "none":
                    torch_loss = torch_loss.reshape(LEAD)
                _close(f"{name} loss vs F.cross_entropy", loss, torch_loss, dtype, failures)
                _close(f"{name} grad vs F.cross_entropy", grad, torch_grad, dtype, failures)
        if case["logits"].dim() >= 2:

            def ours(logits, _options=options, _targets=case["targets"]):
                return cross_entropy(logits.reshape(-1, V), _targets.reshape(-1), **_options)

            lib_upstream = None if upstream is None else upstream.reshape(-1)
            lib_loss, (lib_grad,) = _grads(ours, [case["logits"]], lib_upstream)
            if options.get("reduction") == "none":
                lib_loss = lib_loss.reshape(case["targets"].shape)
            _close(f"{name} loss vs losses.cross_entropy", loss, lib_loss, dtype, failures)
            _close(f"{name} grad vs losses.cross_entropy", grad, lib_grad, dtype, failures)
        del weight
    assert not failures, "\n".join(failures)


def _probability_reference(logits, targets, options):
    """The loss of class probabilities written as the math reads: ``q = w ((1 - eps) t +
    eps / V)``, ``sum_c q_c (lse - z_c) + z_loss lse**2`` per token over ``ln(base)``, on
    the soft-capped logits; ``mean`` over every token."""
    cap = options.get("softcap")
    z = logits if cap is None else cap * torch.tanh(logits / cap)
    eps = options.get("label_smoothing", 0.0)
    q = (1 - eps) * targets + eps / z.shape[-1]
    if options.get("weight") is not None:
        q = q * options["weight"]
    lse = torch.logsumexp(z, -1)
    terms = torch.where(q == 0, 0.0, q * (lse.unsqueeze(-1) - z))  # 0 at a masked class too
    per = terms.sum(-1) + options.get("z_loss", 0.0) * lse.square()
    per = per / math.log(options.get("base", math.e))
    reduction = options.get("reduction", "mean")
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


def _probability_cases(world: int) -> list[dict]:
    gen = torch.Generator().manual_seed(2000 + world)
    cases = []
    for dtype in (torch.float32, torch.float64):
        logits = (3.0 * torch.randn(*LEAD, V, generator=gen, dtype=torch.float64)).to(dtype)
        sharp = torch.softmax(4.0 * torch.randn(*LEAD, V, generator=gen, dtype=torch.float64), -1)
        one_hot = F.one_hot(torch.randint(0, V, LEAD, generator=gen), V).to(torch.float64)
        weight = (0.1 + torch.rand(V, generator=gen, dtype=torch.float64)).to(dtype)
        # Classes masked to -inf in every shard, which the targets give no mass, and a row
        # of zeros (a token without a target): finite, as if those classes were absent.
        masked_logits = logits.clone()
        masked_logits[..., 1::3] = -math.inf
        masked = sharp.clone()
        masked[..., 1::3] = 0.0
        masked = masked / masked.sum(-1, keepdim=True)
        masked.reshape(-1, V)[1] = 0.0
        option_sets = [
            ("plain", sharp, {}),
            ("one_hot", one_hot, {}),
            ("weight_smoothing", sharp, {"weight": weight, "label_smoothing": 0.2}),
            ("z_loss", sharp, {"z_loss": 0.05}),
            ("softcap_base", sharp, {"softcap": 2.0, "base": 2}),
            (
                "everything",
                sharp,
                {"weight": weight, "label_smoothing": 0.1, "z_loss": 0.03, "softcap": 4.0},
            ),
            ("masked", masked, {}, masked_logits),
            ("masked_weight_z_loss", masked, {"weight": weight, "z_loss": 0.05}, masked_logits),
        ]
        for reduction in ("mean", "sum", "none"):
            upstream = None
            if reduction == "none":
                upstream = torch.rand(LEAD, generator=gen, dtype=torch.float64).to(dtype)
            for name, probs, options, *case_logits in option_sets:
                cases.append(
                    {
                        "name": f"probs/{name}/{reduction}/{dtype}",
                        "logits": case_logits[0] if case_logits else logits,
                        "targets": probs.to(dtype),
                        "options": {**options, "reduction": reduction},
                        "upstream": upstream,
                        "dtype": dtype,
                    }
                )
        if world == 3:
            cases.append(
                {
                    "name": f"probs/empty_shard/{dtype}",
                    "logits": logits,
                    "targets": sharp.to(dtype),
                    "options": {"weight": weight, "label_smoothing": 0.2, "softcap": 3.0},
                    "sizes": EMPTY_SHARD,
                    "dtype": dtype,
                }
            )
    return cases


@pytest.mark.parametrize(("world", "row_kernel"), ROW_KERNELS)
def test_vocab_parallel_probability_targets_match_single_process(
    world, row_kernel, tmp_path, monkeypatch
):
    """Class-probability targets split by columns like the logits: the loss on every rank
    and the concatenated gradients equal the single-process ones (the formula as the math
    reads; torch's F.cross_entropy for the options it has; losses.cross_entropy)."""
    _use_row_kernel(row_kernel, monkeypatch)
    failures: list[str] = []
    ran = _ran_cases(world, "vocab_parallel", _probability_cases(world), tmp_path, failures)
    for case, loss, outcomes in ran:
        name, dtype, options = case["name"], case["dtype"], case["options"]
        grad = torch.cat([o[1][1] for o in outcomes], dim=-1)
        upstream, targets = case.get("upstream"), case["targets"]
        oracles = {
            "formula": lambda z, _o=options, _t=targets: _probability_reference(z, _t, _o),
            "losses.cross_entropy": lambda z, _o=options, _t=targets: cross_entropy(
                z.movedim(-1, 1), _t.movedim(-1, 1), **_o
            ),
        }
        if set(options) <= TORCH_OPTIONS and "masked" not in name:  # torch: 0 * -inf = NaN
            oracles["F.cross_entropy"] = lambda z, _o=options, _t=targets: F.cross_entropy(
                z.movedim(-1, 1), _t.movedim(-1, 1), **_o
            )
        for label, oracle in oracles.items():
            ref_loss, (ref_grad,) = _grads(oracle, [case["logits"]], upstream)
            _close(f"{name} loss vs {label}", loss, ref_loss, dtype, failures)
            _close(f"{name} grad vs {label}", grad, ref_grad, dtype, failures)
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------
# sharded_linear_cross_entropy (and linear_cross_entropy(..., group=...))
# --------------------------------------------------------------------------------------

D = 6  # hidden size of the sharded-linear cases


def _linear_cases(world: int) -> list[dict]:
    gen = torch.Generator().manual_seed(2000 + world)
    cases = []
    for dtype in (torch.float32, torch.float64, *LOW_PRECISION):

        def draw(*shape, scale=1.0, dtype=dtype):
            return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

        hidden = draw(*LEAD, D)
        weight = draw(V, D, scale=1.5)
        bias = draw(V)
        targets = torch.randint(0, V, LEAD, generator=gen)
        targets.view(-1)[:V] = torch.randperm(V, generator=gen)
        some_ignored = targets.clone()
        some_ignored.view(-1)[1::4] = -100
        minus_one = targets.clone()
        minus_one.view(-1)[::3] = -1
        all_ignored = torch.full(LEAD, -100)
        class_weight = draw(V).abs()
        class_weight[::4] = 0.0
        option_sets = [
            ("plain", targets, False, {}),
            ("bias", targets, True, {}),
            ("ignore_default", some_ignored, True, {}),
            ("ignore_minus_one", minus_one, False, {"ignore_index": -1}),
            ("smoothing", some_ignored, False, {"label_smoothing": 0.2}),
            ("z_loss", targets, True, {"z_loss": 0.05}),
            ("softcap", targets, False, {"softcap": 2.0}),
            ("base2", targets, False, {"base": 2}),
            (
                "everything",
                minus_one,
                True,
                {
                    "ignore_index": -1,
                    "label_smoothing": 0.1,
                    "z_loss": 0.02,
                    "softcap": 3.0,
                    "base": 2,
                },
            ),
            ("all_ignored", all_ignored, True, {"label_smoothing": 0.1}),
            (
                "class_weight",
                some_ignored,
                True,
                {"class_weight": class_weight, "label_smoothing": 0.1, "z_loss": 0.02},
            ),
        ]
        for reduction in ("mean", "sum", "none"):
            upstream = None
            if reduction == "none":
                upstream = torch.rand(LEAD, generator=gen, dtype=torch.float64).to(dtype)
            for name, tgt, with_bias, options in option_sets:
                if dtype in LOW_PRECISION and name not in LOW_PRECISION_CASES:
                    continue
                runs = [("chunked", None), ("chunked", 4)]
                # The reference (unfused) path rounds the logits to a half type, so only
                # the fused path is held to the one-rounding bound in half precision.
                full_cases = ("plain", "everything", "all_ignored", "class_weight")
                if name in full_cases and dtype not in LOW_PRECISION:
                    runs.append(("reference", None))
                for impl, chunk in runs:
                    cases.append(
                        {
                            "name": f"{name}/{reduction}/{impl}/{chunk}/{dtype}",
                            "hidden": hidden,
                            "weight": weight,
                            "bias": bias if with_bias else None,
                            "targets": tgt,
                            "options": {
                                **options,
                                "reduction": reduction,
                                "impl": impl,
                                "chunk_size": chunk,
                            },
                            "upstream": upstream,
                            "dtype": dtype,
                        }
                    )
        if dtype in LOW_PRECISION:
            continue
        # Through the public function's `group=` option, with impl="auto".
        for reduction, impl in (("mean", "auto"), ("none", "auto"), ("sum", "chunked")):
            cases.append(
                {
                    "name": f"public/{reduction}/{impl}/{dtype}",
                    "hidden": hidden,
                    "weight": weight,
                    "bias": bias,
                    "targets": some_ignored,
                    "options": {"reduction": reduction, "z_loss": 0.01, "impl": impl},
                    "public": True,
                    "dtype": dtype,
                }
            )
    return cases


def _linear_reference(hidden, weight, bias, targets, options):
    options = {k: v for k, v in options.items() if k not in ("impl", "chunk_size")}
    if "class_weight" in options:
        options["weight"] = options.pop("class_weight")
    return composed_torch_loss(F.linear(hidden, weight, bias), targets, **options)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_linear_matches_single_process(world, tmp_path):
    """Loss on every rank, the full hidden gradient on every rank and the concatenated
    weight and bias shard gradients equal the single-process head's, for every option,
    reduction, chunk size and impl; float32 (1e-6) and float64."""
    failures: list[str] = []
    ran = _ran_cases(world, "sharded_linear", _linear_cases(world), tmp_path, failures)
    for case, loss, outcomes in ran:
        name, dtype = case["name"], case["dtype"]
        hidden_grads = [o[1][1] for o in outcomes]
        for rank, grad in enumerate(hidden_grads[1:], start=1):
            _close(f"{name} hidden grad rank {rank} vs 0", grad, hidden_grads[0], dtype, failures)
        weight_grad = torch.cat([o[1][2] for o in outcomes])
        with_bias = case["bias"] is not None
        tensors = [case["hidden"], case["weight"], case["bias"]]

        def composed(hidden, weight, bias, _case=case):
            return _linear_reference(hidden, weight, bias, _case["targets"], _case["options"])

        ref_loss, ref_grads = _grads(composed, tensors, case.get("upstream"))
        _close(f"{name} loss", loss, ref_loss, dtype, failures)
        _close(f"{name} hidden grad", hidden_grads[0], ref_grads[0], dtype, failures)
        _close(f"{name} weight grad", weight_grad, ref_grads[1], dtype, failures)
        if with_bias:
            bias_grad = torch.cat([o[1][3] for o in outcomes])
            _close(f"{name} bias grad", bias_grad, ref_grads[2], dtype, failures)
    assert not failures, "\n".join(failures)


def _linear_probability_cases() -> list[dict]:
    gen = torch.Generator().manual_seed(4000)
    cases = []
    for dtype in (torch.float32, torch.float64):

        def draw(*shape, scale=1.0, dtype=dtype):
            return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

        hidden, weight, bias = draw(*LEAD, D), draw(V, D, scale=0.7), draw(V)
        probs = torch.softmax(draw(*LEAD, V, scale=3.0, dtype=torch.float64), -1).to(dtype)
        class_weight = (0.1 + torch.rand(V, generator=gen, dtype=torch.float64)).to(dtype)
        option_sets = [
            ("plain", {}),
            (
                "everything",
                {
                    "class_weight": class_weight,
                    "label_smoothing": 0.1,
                    "z_loss": 0.03,
                    "softcap": 4.0,
                    "base": 2,
                },
            ),
        ]
        for reduction, impl, (name, options) in itertools.product(
            ("mean", "sum", "none"), ("chunked", "reference"), option_sets
        ):
            upstream = None
            if reduction == "none":
                upstream = torch.rand(LEAD, generator=gen, dtype=torch.float64).to(dtype)
            cases.append(
                {
                    "name": f"probs/{name}/{reduction}/{impl}/{dtype}",
                    "hidden": hidden,
                    "weight": weight,
                    "bias": bias if name == "everything" else None,
                    "targets": probs,
                    "options": {**options, "reduction": reduction, "impl": impl, "chunk_size": 4},
                    "upstream": upstream,
                    "dtype": dtype,
                    "public": True,
                }
            )
    return cases


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_head_probability_targets_match_single_process(world, tmp_path):
    """Class-probability targets split by columns like the head's rows: loss, hidden
    gradient and the stacked weight and bias gradients equal F.linear composed with the
    formula as the math reads, float32 (1e-6) and float64."""
    failures: list[str] = []
    ran = _ran_cases(world, "sharded_linear", _linear_probability_cases(), tmp_path, failures)
    for case, loss, outcomes in ran:
        name, dtype = case["name"], case["dtype"]
        options = {k: v for k, v in case["options"].items() if k not in ("impl", "chunk_size")}
        if "class_weight" in options:
            options["weight"] = options.pop("class_weight")
        with_bias = case["bias"] is not None

        def formula(hidden, weight, bias, _options=options, _targets=case["targets"]):
            return _probability_reference(F.linear(hidden, weight, bias), _targets, _options)

        tensors = [case["hidden"], case["weight"], case["bias"]]
        ref_loss, ref_grads = _grads(formula, tensors, case.get("upstream"))
        _close(f"{name} loss", loss, ref_loss, dtype, failures)
        _close(f"{name} hidden grad", outcomes[0][1][1], ref_grads[0], dtype, failures)
        weight_grad = torch.cat([o[1][2] for o in outcomes])
        _close(f"{name} weight grad", weight_grad, ref_grads[1], dtype, failures)
        if with_bias:
            bias_grad = torch.cat([o[1][3] for o in outcomes])
            _close(f"{name} bias grad", bias_grad, ref_grads[2], dtype, failures)
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------
# Mismatched inputs: the same clear error on every rank, never a hang
# --------------------------------------------------------------------------------------


def _mismatch_cases() -> list[dict]:
    """Three ranks, shards [2, 5, 4] of V = 11; each case breaks one thing on some rank."""
    gen = torch.Generator().manual_seed(3000)
    sizes = SHARDS[3]
    starts = [0, 2, 7]
    logits = torch.randn(7, V, generator=gen)
    targets = torch.randint(0, V, (7,), generator=gen)
    hidden = torch.randn(7, D, generator=gen)
    weight = torch.randn(V, D, generator=gen)

    def vocab(rank, **changes):
        start = changes.pop("vocab_start", starts[rank])
        local = changes.pop("logits", logits)[:, starts[rank] : starts[rank] + sizes[rank]]
        tgt = changes.pop("targets", targets)
        lead = changes.pop("lead", None)
        if lead is not None:
            local, tgt = local.reshape(*lead, local.shape[-1]), tgt.reshape(lead)
        return {"args": (local, tgt), "kwargs": {"vocab_start": start, **changes}}

    def linear(rank, **changes):
        w = changes.pop("weight", weight)[starts[rank] : starts[rank] + sizes[rank]]
        h = changes.pop("hidden", hidden)
        tgt = changes.pop("targets", targets)
        return {"args": (h, w, tgt), "kwargs": {"impl": "chunked", **changes}}

    def case(name, kind, make, broken, expect, same_message=True, broken_expect=None):
        """``broken`` maps rank -> changes; ``expect``: substrings every rank's error has."""
        per_rank = [make(r, **broken.get(r, {})) for r in range(3)]
        return {
            "name": name,
            "kind": kind,
            "per_rank": per_rank,
            "expect": expect,
            "same_message": same_message,
            "broken_expect": broken_expect,
            "broken_ranks": sorted(broken),
        }

    probs = torch.softmax(torch.randn(7, V, generator=gen), -1)

    def columns(table, rank):
        return table[:, starts[rank] : starts[rank] + sizes[rank]]

    negative = probs.clone()
    negative[2, starts[2]] = -0.5

    out_of_range = targets.clone()
    out_of_range[3] = V
    other_targets = targets.clone()
    other_targets[0] = (targets[0] + 1) % V
    swapped = targets.clone()
    first, second = 0, int((targets != targets[0]).nonzero()[0, 0])
    swapped[[first, second]] = targets[[second, first]]
    return [
        case(
            "tokens",
            "vocab",
            vocab,
            {2: {"logits": logits[:5], "targets": targets[:5]}},
            ["number of tokens", "7 on rank 0", "5 on rank 2"],
        ),
        case("overlap", "vocab", vocab, {1: {"vocab_start": 1}}, ["overlap of 1 rows"]),
        case("gap", "vocab", vocab, {2: {"vocab_start": 9}}, ["gap of 2 rows", "rank 2"]),
        case("first_not_zero", "vocab", vocab, {0: {"vocab_start": 1}}, ["rank 0 starts at 1"]),
        case(
            "probabilities_on_one_rank",
            "vocab",
            vocab,
            {1: {"targets": columns(probs, 1)}},
            ["whether `targets` are class probabilities", "True on rank 1"],
        ),
        case(
            "probabilities_not_summing_to_one",
            "vocab",
            vocab,
            {r: {"targets": columns(1.1 * probs, r)} for r in range(3)},
            ["sum to 1 over the whole vocabulary", "token 0 sums to 1.1"],
        ),
        case(
            "linear_probabilities_on_one_rank",
            "linear",
            linear,
            {1: {"targets": columns(probs, 1)}},
            ["whether `targets` are class probabilities", "True on rank 1"],
        ),
        case(
            "negative_probability_on_one_rank",
            "vocab",
            vocab,
            {2: {"targets": columns(negative, 2)}},
            ["rank(s) 2 rejected"],
            same_message=False,
            broken_expect=("ValueError", "finite and >= 0"),
        ),
        case(
            "option",
            "vocab",
            vocab,
            {1: {"label_smoothing": 0.1}},
            ["`label_smoothing` must be the same on every rank", "0.1 on rank 1"],
        ),
        case(
            "dtype",
            "vocab",
            vocab,
            {0: {"logits": logits.double()}},
            ["dtype of `local_logits`", "torch.float64 on rank 0"],
        ),
        case(
            "targets_out_of_range",
            "vocab",
            vocab,
            {r: {"targets": out_of_range} for r in range(3)},
            ["`targets` must be class indices in [0, 11)", "got 11"],
        ),
        case(
            "targets_differ",
            "vocab",
            vocab,
            {1: {"targets": other_targets}},
            ["the values of `targets` must be the same on every rank", "rank(s) 1 differ"],
        ),
        case(
            "weight_length",
            "vocab",
            vocab,
            {r: {"weight": torch.ones(V - 1)} for r in range(3)},
            ["`weight` must have shape (11,)"],
        ),
        case(
            "bad_reduction_on_one_rank",
            "vocab",
            vocab,
            {2: {"reduction": "avg"}},
            ["rank(s) 2 rejected"],
            same_message=False,
            broken_expect=("ValueError", "`reduction` must be one of"),
        ),
        case(
            "float_targets_of_index_shape_on_one_rank",
            "vocab",
            vocab,
            {0: {"targets": targets.double()}},
            ["rank(s) 0 rejected"],
            same_message=False,
            broken_expect=("ValueError", "must have the shape of `local_logits`, (7, 2)"),
        ),
        case(
            "linear_hidden_size",
            "linear",
            linear,
            {1: {"hidden": hidden[:, :5], "weight": weight[:, :5]}},
            ["hidden size D", "5 on rank 1"],
        ),
        case(
            "linear_tokens",
            "linear",
            linear,
            {0: {"hidden": hidden[:6], "targets": targets[:6]}},
            ["number of tokens", "6 on rank 0"],
        ),
        case(
            "linear_chunk_size",
            "linear",
            linear,
            {2: {"chunk_size": 3}},
            ["`chunk_size`", "3 on rank 2"],
        ),
        case(
            "linear_out_of_range",
            "linear",
            linear,
            {r: {"targets": out_of_range} for r in range(3)},
            ["`targets` must be class indices in [0, 11)"],
        ),
        case(
            "linear_class_weight_values",
            "linear",
            linear,
            {r: {"class_weight": torch.ones(V) * (2.0 if r == 1 else 1.0)} for r in range(3)},
            ["the values of `class_weight` must be the same on every rank"],
        ),
        case(
            "linear_class_weight_length",
            "linear",
            linear,
            {r: {"class_weight": torch.ones(V - 1)} for r in range(3)},
            ["`class_weight` must have shape (11,), one entry per class of the whole"],
        ),
        case(
            "linear_shape_on_one_rank",
            "linear",
            linear,
            {1: {"weight": weight[:, :5]}},
            ["rank(s) 1 rejected"],
            same_message=False,
            broken_expect=("ValueError", "`hidden` must have shape (..., D)"),
        ),
        # The same values in another order: the position-weighted checksum tells them apart.
        case(
            "targets_permuted",
            "vocab",
            vocab,
            {2: {"targets": swapped}},
            ["the values of `targets` must be the same on every rank", "rank(s) 2 differ"],
        ),
        # The same number of tokens and dimensions in another layout, (1, 7) against (7, 1).
        case(
            "leading_shape",
            "vocab",
            vocab,
            {r: {"lead": (1, 7) if r == 1 else (7, 1)} for r in range(3)},
            ["the leading shape of `local_logits` (the tokens)", "rank(s) 1 differ"],
        ),
        *(
            case(f"option_{option}", "vocab", vocab, {rank: {option: value}}, [expect])
            for option, rank, value, expect in (
                ("reduction", 2, "sum", "'sum' on rank 2"),
                ("ignore_index", 0, -1, "-1 on rank 0"),
                ("z_loss", 1, 0.25, "0.25 on rank 1"),
                ("softcap", 1, 5.0, "None on rank 0, 5.0 on rank 1"),
                ("base", 2, 2, "2.0 on rank 2"),
                ("validate", 0, False, "False on rank 0"),
            )
        ),
        # A weight of the wrong length on one rank only: the ranks must agree before any of
        # them checks it against V (else that rank raises while the others wait).
        case(
            "weight_length_on_one_rank",
            "vocab",
            vocab,
            {r: {"weight": torch.ones(V + 1 if r == 1 else V)} for r in range(3)},
            ["the number of entries of `weight`", "12 on rank 1"],
        ),
        case(
            "linear_bias_on_one_rank",
            "linear",
            linear,
            {0: {"bias": torch.zeros(sizes[0])}},
            ["whether `bias` is given", "True on rank 0"],
        ),
        case(
            "linear_class_weight_on_one_rank",
            "linear",
            linear,
            {2: {"class_weight": torch.ones(V)}},
            ["the number of entries of `class_weight`", "11 on rank 2"],
        ),
        case(
            "linear_option_z_loss",
            "linear",
            linear,
            {1: {"z_loss": 0.5}},
            ["`z_loss` must be the same on every rank", "0.5 on rank 1"],
        ),
        case(
            "linear_probabilities_not_summing_to_one",
            "linear",
            linear,
            {r: {"targets": columns(0.9 * probs, r)} for r in range(3)},
            ["sum to 1 over the whole vocabulary", "token 0 sums to", "(off by -0.1)"],
        ),
    ]


def test_mismatched_inputs_raise_the_same_error_on_every_rank(tmp_path):
    """Each broken case raises on every rank (the group finishes: no hang), with a message
    naming what differs, and the group stays usable for the next collective."""
    cases = _mismatch_cases()
    results = run_group(3, "mismatch", {"cases": cases}, tmp_path)
    failures = []
    for case in cases:
        name = case["name"]
        outcomes = [result[name] for result in results]
        for rank, outcome in enumerate(outcomes):
            if not results[rank][name + "/after"]:
                failures.append(f"{name}: rank {rank}: the group was not usable afterwards")
            if outcome[0] != "error":
                failures.append(f"{name}: rank {rank} did not raise")
                continue
            kind, message = outcome[1], outcome[2]
            if case["broken_expect"] is not None and rank in case["broken_ranks"]:
                want_kind, want_text = case["broken_expect"]
                if kind != want_kind or want_text not in message:
                    failures.append(f"{name}: rank {rank}: {kind}: {message}")
                continue
            if kind != "ValueError" or not all(text in message for text in case["expect"]):
                failures.append(f"{name}: rank {rank}: {kind}: {message}")
        if case["same_message"] and len({o[2] for o in outcomes if o[0] == "error"}) > 1:
            failures.append(f"{name}: messages differ between ranks: {outcomes}")
    assert not failures, "\n".join(failures)


def test_second_order_through_the_group_is_a_clear_error(tmp_path):
    """Gradients formed with ``create_graph=True`` are the first-order ones, and
    differentiating them again raises NotImplementedError on every rank (the gradient is
    formed directly; treating it as a constant would silently drop the second-order terms),
    with the group still usable afterwards."""
    torch.manual_seed(7)
    sizes = SHARDS[2]
    logits = torch.randn(*LEAD, V, dtype=torch.float64)
    targets = torch.randint(0, V, LEAD)
    hidden = torch.randn(*LEAD, D, dtype=torch.float64)
    weight = torch.randn(V, D, dtype=torch.float64)
    cases = [
        {"name": "vocab", "kind": "vocab", "logits": logits, "targets": targets, "options": {}},
        {
            "name": "vocab_none",
            "kind": "vocab",
            "logits": logits,
            "targets": targets,
            "options": {"reduction": "none", "z_loss": 0.1},
        },
    ]
    for impl in ("chunked", "reference"):
        cases.append(
            {
                "name": f"linear_{impl}",
                "kind": "linear",
                "hidden": hidden,
                "weight": weight,
                "targets": targets,
                "options": {"impl": impl, "label_smoothing": 0.1},
            }
        )
    results = run_group(2, "second_order", {"sizes": sizes, "cases": cases}, tmp_path)
    failures = []
    for case in cases:
        name = case["name"]
        if case["kind"] == "vocab":
            leaves = [logits.clone().requires_grad_(True)]

            def reference(x, _case=case):
                return cross_entropy(x.reshape(-1, V), targets.reshape(-1), **_case["options"])

        else:
            leaves = [hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)]

            def reference(h, w, _case=case):
                options = {k: v for k, v in _case["options"].items() if k != "impl"}
                return _linear_reference(h, w, None, targets, options)

        expected = torch.autograd.grad(reference(*leaves).sum(), leaves)
        for rank, result in enumerate(results):
            outcome, second = result[name], result[name + "/second"]
            if not result[name + "/after"]:
                failures.append(f"{name}: rank {rank}: the group was not usable afterwards")
            if outcome[0] != "ok":
                failures.append(f"{name}: rank {rank}: first order failed: {outcome}")
                continue
            start, stop = shard_bounds(sizes)[rank]
            shard = (
                [expected[0][..., start:stop]]
                if case["kind"] == "vocab"
                else [
                    expected[0],
                    expected[1][start:stop],
                ]
            )
            for got, want in zip(outcome[1], shard, strict=True):
                _close(f"{name} rank {rank} grad", got, want, torch.float64, failures)
            if second[0] != "error" or second[1] != "NotImplementedError":
                failures.append(f"{name}: rank {rank}: second order gave {second}")
            elif "no second derivative" not in second[2]:
                failures.append(f"{name}: rank {rank}: unclear message {second[2]!r}")
    assert not failures, "\n".join(failures)


def test_uninitialised_group_is_a_clear_error():
    """Without init_process_group the loss says what to do instead of failing deep inside."""
    from crossentropy.losses import vocab_parallel_cross_entropy
    from crossentropy.losses._distributed import sharded_linear_cross_entropy

    if torch.distributed.is_initialized():  # pragma: no cover - another test left a group
        pytest.skip("a default process group exists in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_cross_entropy(
            torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), vocab_start=0
        )
    with pytest.raises(RuntimeError, match="init_process_group"):
        sharded_linear_cross_entropy(
            torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)
        )


# --------------------------------------------------------------------------------------
# A group of one in this process: properties and autograd behaviour, no spawning
# --------------------------------------------------------------------------------------


@pytest.fixture
def group_of_one():
    """A one-process gloo group on an in-memory store, destroyed after the test."""
    import torch.distributed as dist

    if dist.is_initialized():  # pragma: no cover - another test left a group
        pytest.skip("a default process group exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


# The group is shared by every example on purpose: it holds no per-example state.
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 9),
    num_classes=st.integers(1, 13),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.25]),
    z_loss=st.sampled_from([0.0, 0.1]),
    softcap=st.sampled_from([None, 1.5]),
    base=st.sampled_from([math.e, 2.0]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_of_one_equals_the_single_process_loss(
    group_of_one, n, num_classes, reduction, smoothing, z_loss, softcap, base, weighted, seed
):
    """On one rank the vocabulary-parallel loss is the composed single-process loss, values
    and gradients, in float64 (property over shapes and options)."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, num_classes, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, num_classes, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.3] = -100
    weight = torch.rand(num_classes, generator=gen, dtype=torch.float64) if weighted else None
    upstream = torch.rand(n, generator=gen, dtype=torch.float64)
    options = {
        "weight": weight,
        "reduction": reduction,
        "label_smoothing": smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
        "base": base,
    }
    ours, (grad,) = _grads(
        lambda x: vocab_parallel_cross_entropy(x, targets, vocab_start=0, **options),
        [logits],
        upstream if reduction == "none" else None,
    )
    ref, (ref_grad,) = _grads(
        lambda x: composed_torch_loss(x, targets, **options),
        [logits],
        upstream if reduction == "none" else None,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.sampled_from([(1,), (4,), (2, 3)]),
    num_classes=st.integers(1, 13),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.25]),
    z_loss=st.sampled_from([0.0, 0.1]),
    softcap=st.sampled_from([None, 1.5]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_of_one_probability_targets_equal_the_formula(
    group_of_one, lead, num_classes, reduction, smoothing, z_loss, softcap, weighted, seed
):
    """Class-probability targets on one rank: the loss written as the math reads, values
    and gradients, float64 (property over shapes and options)."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(*lead, num_classes, generator=gen, dtype=torch.float64)
    probs = torch.softmax(3 * torch.randn(*lead, num_classes, generator=gen).double(), -1)
    weight = torch.rand(num_classes, generator=gen, dtype=torch.float64) if weighted else None
    upstream = torch.rand(lead, generator=gen, dtype=torch.float64)
    options = {
        "weight": weight,
        "reduction": reduction,
        "label_smoothing": smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
    }
    up = upstream if reduction == "none" else None
    ours, (grad,) = _grads(
        lambda x: vocab_parallel_cross_entropy(x, probs, vocab_start=0, **options), [logits], up
    )
    ref, (ref_grad,) = _grads(lambda x: _probability_reference(x, probs, options), [logits], up)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_group_of_one_masked_classes_and_zero_rows(group_of_one):
    """Probability targets with a row of zeros and classes masked to -inf that they give no
    mass: the single-process loss (finite, torch's value on the unmasked classes), and a
    negative ignore_index has no effect."""
    from crossentropy.losses import cross_entropy, vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    logits[:, 2] = -math.inf
    probs = torch.softmax(torch.randn(5, 6, dtype=torch.float64, generator=gen), -1)
    probs[:, 2] = 0.0
    probs /= probs.sum(1, keepdim=True)
    probs[3] = 0.0
    expected = cross_entropy(logits, probs, reduction="none")
    assert torch.isfinite(expected).all()
    assert expected[3] == 0
    got = vocab_parallel_cross_entropy(
        logits, probs, vocab_start=0, reduction="none", ignore_index=-1
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_group_of_one_probability_target_errors(group_of_one):
    """Probability targets: the shape of the local logits, ignore_index left alone, no
    gradient required (for the sharded head too); each is a clear error."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    logits = torch.randn(3, 5)
    probs = torch.softmax(torch.randn(3, 5), -1)
    with pytest.raises(ValueError, match="must have the shape of `local_logits`, \\(3, 5\\)"):
        vocab_parallel_cross_entropy(logits, probs[:, :4], vocab_start=0)
    with pytest.raises(ValueError, match="`ignore_index` must be negative"):
        vocab_parallel_cross_entropy(logits, probs, vocab_start=0, ignore_index=0)
    with pytest.raises(ValueError, match="must not require a gradient"):
        vocab_parallel_cross_entropy(logits, probs.requires_grad_(True), vocab_start=0)
    with pytest.raises(TypeError, match="integer class indices or floating-point"):
        vocab_parallel_cross_entropy(logits, torch.ones(3, dtype=torch.bool), vocab_start=0)
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    for impl in ("chunked", "reference"):
        with pytest.raises(ValueError, match="must not require a gradient across ranks"):
            linear_cross_entropy(
                hidden, weight, probs.requires_grad_(True), group=group_of_one, impl=impl
            )


@pytest.mark.parametrize("targets", [[-100, -100], [0, 1]])
def test_group_of_one_without_vocabulary_rows_is_an_error(group_of_one, targets):
    """Shards that hold no vocabulary row in all have no softmax: a clear error, not a
    silent loss of 0 or -inf (with or without value checks)."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    for validate in (True, False):
        with pytest.raises(ValueError, match="at least one vocabulary row in all; got 0"):
            vocab_parallel_cross_entropy(
                torch.zeros(2, 0), torch.tensor(targets), vocab_start=0, validate=validate
            )


def test_group_of_one_under_autocast(group_of_one):
    """Under autocast: vocab_parallel_cross_entropy returns a float32 loss equal to
    cross_entropy's there, and the sharded head takes bfloat16 activations with float32
    weights, equal to the single-process fused head under the same autocast."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    torch.manual_seed(21)
    logits = torch.randn(6, 9).to(torch.bfloat16)
    targets = torch.randint(0, 9, (6,))
    hidden = torch.randn(6, 5).to(torch.bfloat16)
    weight = torch.randn(9, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vocab = vocab_parallel_cross_entropy(logits, targets, vocab_start=0)
        single = cross_entropy(logits, targets)
        sharded = linear_cross_entropy(
            hidden, weight, targets, group=group_of_one, impl="chunked", chunk_size=4
        )
        fused = linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=4)
    assert vocab.dtype == sharded.dtype == torch.float32
    torch.testing.assert_close(vocab, single, rtol=1e-6, atol=0)
    torch.testing.assert_close(sharded, fused, rtol=1e-6, atol=0)


def test_group_of_one_refuses_func_transforms(group_of_one):
    """Inside torch.func transforms the losses across ranks say they cannot run there."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    targets = torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match=r"cannot run inside torch\.func transforms"):
        torch.func.grad(lambda z: vocab_parallel_cross_entropy(z, targets, vocab_start=0))(
            torch.randn(2, 3)
        )
    with pytest.raises(RuntimeError, match=r"cannot run inside torch\.func transforms"):
        torch.func.grad(
            lambda w: linear_cross_entropy(torch.randn(2, 4), w, targets, group=group_of_one)
        )(torch.randn(3, 4))


def test_group_of_one_refuses_class_weights_that_require_grad(group_of_one):
    """Across ranks the class weights are constants: one that requires a gradient is a
    clear error, not a gradient silently left empty."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    targets = torch.tensor([0, 2])
    weight = torch.rand(3, requires_grad=True)
    with pytest.raises(ValueError, match="`weight` \\(class weights\\) must not require"):
        vocab_parallel_cross_entropy(torch.randn(2, 3), targets, vocab_start=0, weight=weight)
    with pytest.raises(ValueError, match="`class_weight` \\(class weights\\) must not"):
        linear_cross_entropy(
            torch.randn(2, 4), torch.randn(3, 4), targets, class_weight=weight, group=group_of_one
        )


def test_group_of_one_backward_releases_the_logits(group_of_one):
    """After a backward pass that does not retain the graph, a loss kept for logging does
    not hold its local logits alive."""
    import gc
    import weakref

    from crossentropy.losses import vocab_parallel_cross_entropy

    layer = torch.nn.Linear(4, 5)
    logits = layer(torch.randn(3, 4))
    alive = weakref.ref(logits)
    loss = vocab_parallel_cross_entropy(logits, torch.tensor([0, 4, 2]), vocab_start=0)
    del logits
    loss.backward()
    gc.collect()
    assert alive() is None


def test_group_of_one_shift(group_of_one):
    """shift= works with group= as without (the targets are shifted before the ranks)."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 4, dtype=torch.float64, generator=gen)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=gen)
    targets = torch.randint(0, 7, (2, 6), generator=gen)
    sharded = linear_cross_entropy(hidden, weight, targets, group=group_of_one, shift=2)
    single = linear_cross_entropy(hidden, weight, targets, shift=2)
    torch.testing.assert_close(sharded, single, rtol=1e-12, atol=1e-14)


def test_group_of_one_sharded_head_equals_the_fused_head(group_of_one):
    """On one rank the sharded head is the whole head: it equals linear_cross_entropy."""
    from crossentropy.losses import linear_cross_entropy
    from crossentropy.losses._distributed import sharded_linear_cross_entropy

    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 9, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(13, 5, generator=gen, dtype=torch.float64)
    bias = torch.randn(13, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 13, (2, 9), generator=gen)
    targets[0, ::3] = -100
    upstream = torch.rand(2, 9, generator=gen, dtype=torch.float64)
    class_weight = torch.rand(13, generator=gen, dtype=torch.float64)
    for reduction, cw in itertools.product(("mean", "sum", "none"), (None, class_weight)):
        options = {
            "reduction": reduction,
            "label_smoothing": 0.1,
            "z_loss": 0.01,
            "softcap": 3.0,
            "class_weight": cw,
        }
        up = upstream if reduction == "none" else None

        def sharded(h, w, b, _options=options):
            return sharded_linear_cross_entropy(
                h, w, targets, bias=b, impl="chunked", chunk_size=4, **_options
            )

        def whole(h, w, b, _options=options):
            return linear_cross_entropy(h, w, targets, bias=b, impl="reference", **_options)

        ours, ours_grads = _grads(sharded, [hidden, weight, bias], up)
        ref, ref_grads = _grads(whole, [hidden, weight, bias], up)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        for got, want in zip(ours_grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_backward_passes_with_retain_graph(group_of_one):
    """With retain_graph=True the gradient formed in forward serves any number of backward
    passes (each scaled by its own upstream gradient, the kept block untouched, even when
    a caller changes a returned gradient in place); after a pass that does not retain the
    graph, another one says so. The same for the sharded head's gradients."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 5, 2, 3])
    unit = (torch.softmax(logits.detach(), 1) - F.one_hot(targets, 6)) / 4
    loss = vocab_parallel_cross_entropy(logits, targets, vocab_start=0)
    (2.0 * loss).backward(retain_graph=True)
    torch.testing.assert_close(logits.grad, 2.0 * unit, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    grad.mul_(100.0)  # the caller's copy
    loss.backward()
    torch.testing.assert_close(logits.grad, 3.0 * unit, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()

    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, targets, group=group_of_one, impl="chunked")
    first = torch.autograd.grad(loss, [hidden, weight], retain_graph=True)
    for g in first:
        g.zero_()  # changing a returned copy in place leaves the kept gradients alone
    second = torch.autograd.grad(3.0 * loss, [hidden, weight])
    plain = 3.0 * F.cross_entropy(hidden @ weight.T, targets)
    expected = torch.autograd.grad(plain, [hidden, weight])
    for got, want in zip(second, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        torch.autograd.grad(loss, [hidden, weight])


@pytest.mark.parametrize("head", [None, "chunked"])
def test_per_token_backward_passes_with_retain_graph(group_of_one, head):
    """reduction="none" with retain_graph=True: each backward pass is scaled by its own
    upstream gradient, so two passes with different upstreams give torch's two gradients
    (a first pass that scaled the kept gradient in place would leak into the second)."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(17)
    targets = torch.tensor([0, -100, 5, 2, 3])
    hidden = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    options = {"reduction": "none", "label_smoothing": 0.1}
    if head is None:
        inputs = ((hidden @ weight.T).detach().requires_grad_(True),)
        ours = vocab_parallel_cross_entropy(inputs[0], targets, vocab_start=0, **options)
        expected = F.cross_entropy(inputs[0], targets, **options)
    else:
        inputs = (hidden, weight)
        ours = linear_cross_entropy(
            hidden, weight, targets, impl=head, group=group_of_one, **options
        )
        expected = F.cross_entropy(F.linear(hidden, weight), targets, **options)
    for _ in range(2):
        upstream = 0.5 + torch.rand(5, generator=gen, dtype=torch.float64)
        got = torch.autograd.grad(ours, inputs, upstream, retain_graph=True)
        want = torch.autograd.grad(expected, inputs, upstream, retain_graph=True)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_without_autograd_only_the_loss_is_formed(group_of_one):
    """Under no_grad (or for logits that need no gradient) the loss is the same and no
    gradient is attached."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 6, 0, -100, 3])
    with torch.no_grad():
        loss = vocab_parallel_cross_entropy(logits, targets, vocab_start=0, label_smoothing=0.1)
    expected = F.cross_entropy(logits.detach(), targets, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    assert not loss.requires_grad


def test_int32_targets_and_a_strided_view_of_the_logits(group_of_one):
    """A rank's columns are often a strided view of a bigger tensor, and targets may be
    int32: both give the same loss and gradient as contiguous logits and int64 targets."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(11)
    wide = torch.randn(6, 14, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 6, 3, -100, 2, 5])
    view = wide[:, ::2].requires_grad_(True)
    assert not view.is_contiguous()
    loss = vocab_parallel_cross_entropy(view, targets.int(), vocab_start=0, z_loss=0.1)
    loss.backward()
    dense = wide[:, ::2].contiguous().requires_grad_(True)
    expected = composed_torch_loss(dense, targets, z_loss=0.1)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(view.grad, dense.grad, rtol=1e-12, atol=1e-14)


def test_a_hung_group_fails_the_test_instead_of_blocking(tmp_path):
    """The guard every test above relies on: a group stuck in a collective is killed at
    its deadline and reported, so a hang can never block the suite."""
    with pytest.raises(AssertionError, match="did not finish in time"):
        run_group(2, "stall", {"sleep_s": 60}, tmp_path, timeout_s=2.0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("head", [None, "reference", "chunked"])
def test_non_finite_upstream_on_ignored_tokens_gives_them_zero_gradient(group_of_one, value, head):
    """As torch's per-token loss, an ignored token gets a zero gradient whatever its upstream
    gradient: a NaN or inf there used to make its row NaN (and, through the head, the whole
    weight gradient)."""
    from crossentropy.losses import linear_cross_entropy, vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(13)
    targets = torch.tensor([0, -100, 4, 2, -100])
    upstream = torch.rand(5, generator=gen, dtype=torch.float64)
    upstream[targets == -100] = value
    hidden = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    if head is None:
        logits = (hidden @ weight.T).detach().requires_grad_(True)
        inputs = (logits,)
        ours = vocab_parallel_cross_entropy(
            logits, targets, vocab_start=0, reduction="none", label_smoothing=0.1
        )
    else:
        inputs = (hidden, weight)
        ours = linear_cross_entropy(
            hidden,
            weight,
            targets,
            reduction="none",
            label_smoothing=0.1,
            impl=head,
            group=group_of_one,
        )
    expected = F.cross_entropy(
        F.linear(*inputs) if head else inputs[0],
        targets,
        reduction="none",
        label_smoothing=0.1,
    )
    for got, want in zip(
        torch.autograd.grad(ours, inputs, upstream),
        torch.autograd.grad(expected, inputs, upstream),
        strict=True,
    ):
        assert bool(torch.isfinite(want).all())
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("group", ["world", 0])
@pytest.mark.parametrize("initialised", [False, True])
def test_group_of_the_wrong_type_is_a_type_error_naming_it(request, group, initialised):
    """A group that is not a ProcessGroup is named in a TypeError (torch's own message said
    'Group world is not registered', or, before init_process_group, that torch.distributed
    must be initialised)."""
    from crossentropy.losses import vocab_parallel_cross_entropy

    if initialised:
        request.getfixturevalue("group_of_one")
    else:
        import torch.distributed as dist

        if dist.is_initialized():  # pragma: no cover - another test left a group
            pytest.skip("a default process group exists in this process")
    rule = r"`group` must be None \(the default group\) or a torch.distributed.ProcessGroup; got "
    kind = type(group).__name__
    with pytest.raises(TypeError, match=rule + kind):
        vocab_parallel_cross_entropy(
            torch.zeros(2, 3), torch.tensor([0, 1]), vocab_start=0, group=group
        )
    with pytest.raises(TypeError, match=rule + kind):
        linear_cross_entropy(
            torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor([0, 1]), group=group
        )
