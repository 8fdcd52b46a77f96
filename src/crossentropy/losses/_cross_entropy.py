"""Placeholder until the loss lands (issue 3)."""

from typing import NamedTuple


class TokenStats(NamedTuple):
    """Per-token statistics (placeholder)."""

    loss: object
    logsumexp: object
    entropy: object


def cross_entropy(*args, **kwargs):
    raise NotImplementedError("crossentropy.losses.cross_entropy is not built yet")


def cross_entropy_stats(*args, **kwargs):
    raise NotImplementedError("crossentropy.losses.cross_entropy_stats is not built yet")


class CrossEntropyLoss:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("crossentropy.losses.CrossEntropyLoss is not built yet")
