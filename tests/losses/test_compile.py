"""The losses inside ``torch.compile``: the same values and gradients as eager.

The losses are autograd functions that read tensor values on the host (target checks, the
targets' range), so Dynamo breaks the graph around them; what matters to a user is that a
compiled training step runs and computes what the eager one does, on each backend.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from crossentropy.losses import CrossEntropyLoss, cross_entropy, linear_cross_entropy

BACKENDS = [
    "eager",
    "aot_eager",
    pytest.param(
        "inductor",
        marks=pytest.mark.skipif(
            shutil.which("c++") is None and shutil.which("g++") is None,
            reason="inductor on the CPU needs a C++ compiler",
        ),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_step_computes_what_the_eager_one_does(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 10).double()
    hidden = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 10, (32,), generator=gen)
    targets[::5] = -100
    module = CrossEntropyLoss(label_smoothing=0.1, base=2)

    def step(h, y):
        logits = head(h)
        return (
            cross_entropy(logits, y, z_loss=1e-3)
            + module(logits, y)
            + linear_cross_entropy(h, head.weight, y, bias=head.bias, softcap=5.0)
        )

    compiled = torch.compile(step, backend=backend)
    results = []
    for fn in (compiled, step):
        loss = fn(hidden, targets)
        grads = torch.autograd.grad(loss, [head.weight, head.bias])
        results.append((loss, *grads))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
