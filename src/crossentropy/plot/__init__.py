"""Figures for the tour, drawn with matplotlib (imported lazily, inside each function).

Each function draws one figure and saves it as a PNG at ``path``; no pyplot state or
global backend is touched (the Agg canvas renders directly). Needs the ``plot`` extra.
"""

from crossentropy.plot._figures import (
    plot_binary_entropy,
    plot_cross_entropy_gap,
    plot_entropy_terms,
    plot_information_term,
    plot_loss_curve,
    plot_predictions,
)

__all__ = [
    "plot_binary_entropy",
    "plot_cross_entropy_gap",
    "plot_entropy_terms",
    "plot_information_term",
    "plot_loss_curve",
    "plot_predictions",
]
