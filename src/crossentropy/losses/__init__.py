"""Training losses on torch tensors. Importing this module is the opt-in to torch.

Losses speak nats by default (``base=math.e``) so that they are drop-in replacements for
the frameworks' own; ``base=2`` gives the loss and its gradient in bits.

On CUDA, where Triton is installed (torch's CUDA wheels bring it), the per-row work of
every loss (log-sum-exp, loss and gradient of each token's logits; for the
vocabulary-parallel losses, each rank's share of it on either side of the all-reduces)
runs as one Triton program per row; ``crossentropy.losses._kernel.TRITON = "never"`` keeps
it on torch operations.
"""

try:
    import torch  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - the test environment has torch
    raise ModuleNotFoundError(
        "crossentropy.losses needs PyTorch (torch >= 2.1): pip install 'crossentropy[torch]'",
        name="torch",
    ) from error

from crossentropy.losses._cross_entropy import (
    CrossEntropyLoss,
    TokenStats,
    cross_entropy,
    cross_entropy_stats,
)
from crossentropy.losses._distributed import vocab_parallel_cross_entropy
from crossentropy.losses._linear import (
    LinearCrossEntropyLoss,
    linear_cross_entropy,
    linear_cross_entropy_stats,
)

__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "TokenStats",
    "cross_entropy",
    "cross_entropy_stats",
    "linear_cross_entropy",
    "linear_cross_entropy_stats",
    "vocab_parallel_cross_entropy",
]
