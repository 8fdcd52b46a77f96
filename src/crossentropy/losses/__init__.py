"""Training losses on torch tensors. Importing this module is the opt-in to torch.

Losses speak nats by default (``base=math.e``) so that they are drop-in replacements for
the frameworks' own; ``base=2`` gives the loss and its gradient in bits.
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
