"""Facts about torch tensors that both ``info`` and ``losses`` need, without importing torch
for callers that never use it: whether a tensor's values can be read.

A meta tensor and a fake tensor (``FakeTensorMode``, which ``torch.export`` traces with)
have a shape and a dtype but no values; inside a ``torch.func`` transform (``vmap``,
``grad``, ``jacrev``...) the tensors are wrapped and their values are not handed out.
Checks that read values are skipped for them, and the losses compute through plain torch
operations that need none.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ``jvp``...) is
    running (False where torch was never imported)."""
    torch = sys.modules.get("torch")
    functorch = getattr(getattr(torch, "_C", None), "_functorch", None)
    peek = getattr(functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


@functools.cache
def _fake_test() -> Callable[[Any], bool] | None:
    """torch's test for fake tensors (a private module: None where it is missing, and then
    no tensor counts as fake, so that export fails as before instead of anything worse)."""
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - a torch without them
        return None
    return is_fake


def is_fake(tensor: Any) -> bool:
    """Whether ``tensor`` (a torch tensor) is a fake one (``FakeTensorMode``,
    ``torch.export``). Plain tensors are told apart by their type alone."""
    if type(tensor) is sys.modules["torch"].Tensor:
        return False
    test = _fake_test()
    return test is not None and bool(test(tensor))


def without_values(tensor: Any) -> bool:
    """Whether ``tensor`` (a torch tensor) has a shape but no values to read: a meta tensor,
    or a fake one."""
    return tensor.device.type == "meta" or is_fake(tensor)


def readable(array: Any) -> bool:
    """Whether the entries of ``array`` (of any array kind) can be read: not for a torch
    tensor without values (:func:`without_values`) nor for one inside a ``torch.func``
    transform."""
    torch = sys.modules.get("torch")  # no torch imported: no torch tensor
    if torch is None or not isinstance(array, torch.Tensor):
        return True
    return not (functorch_active() or without_values(array))
