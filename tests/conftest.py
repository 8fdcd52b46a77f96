"""Shared test configuration: the Hypothesis profiles, the slow-test switch, array backends."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Without a GPU, Triton kernels run in Triton's interpreter on the CPU (the variable must be
# set before Triton is imported).
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the test environment
        pass
    else:
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"

# `ci` is deterministic: the same examples on every run and machine.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="heavy size; `make test-all` (--runslow) runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _backends() -> list[str]:
    names = ["numpy"]
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is in the test environment
        pass
    else:
        names.append("torch")
    try:
        import array_api_strict  # noqa: F401
    except ImportError:  # pragma: no cover - array-api-strict is in the test environment
        pass
    else:
        names.append("array_api_strict")
    return names


class Backend:
    """One array library: makes arrays from NumPy data and converts results back."""

    def __init__(self, name: str):
        self.name = name

    def asarray(self, data, dtype=np.float64):
        array = np.asarray(data, dtype=dtype)
        if self.name == "numpy":
            return array
        if self.name == "array_api_strict":
            import array_api_strict

            if array.dtype == np.float16:
                pytest.skip("the array API standard has no float16")
            return array_api_strict.asarray(array.copy())
        import torch

        return torch.from_numpy(array.copy())

    def to_numpy(self, value) -> np.ndarray:
        if self.name == "torch":
            return value.detach().cpu().numpy()
        if self.name == "array_api_strict":
            import array_api_strict

            return np.asarray(array_api_strict.asarray(value)._array)
        return np.asarray(value)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=_backends())
def xp(request: pytest.FixtureRequest) -> Backend:
    """Each array backend the measures must support: NumPy, torch, and array-api-strict
    (the standard's reference library: only what the standard promises)."""
    return Backend(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, so every random test is reproducible."""
    return np.random.default_rng(20231126)


@pytest.fixture
def logging_compiler(tmp_path):
    """``(compiler, log)``: a ``cc`` that appends each command line to ``log`` and then
    compiles, to count the compilations of the C helpers (:mod:`crossentropy._build`)."""
    log = tmp_path / "calls"
    compiler = tmp_path / "cc"
    compiler.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec cc "$@"\n')
    compiler.chmod(0o755)
    return compiler, log
