"""The loss tests check this package's own kernel at every size: the hand-off of small CPU
blocks to torch's kernel (``_cross_entropy.TORCH_KERNEL_ELEMENTS``) is turned off for them,
and ``test_torch_kernel_handoff.py`` checks the hand-off against the kernel."""

from __future__ import annotations

import pytest

from crossentropy.losses import _cross_entropy


@pytest.fixture(autouse=True)
def _own_kernel_at_every_size(request, monkeypatch):
    if request.node.get_closest_marker("torch_kernel_handoff") is None:
        monkeypatch.setattr(_cross_entropy, "TORCH_KERNEL_ELEMENTS", 0)
