"""The seed's walkthrough, reproduced and corrected: ``crossentropy tour``.

The tour follows the seed (``SEED.md``) section by section: information, codes, entropy,
the two prize boxes, the term −x log2 x, cross-entropy and the KL gap, cross-entropy as a
loss and in classification, soft targets, then a real classifier trained with
:class:`crossentropy.losses.CrossEntropyLoss`. Every number is computed by
:mod:`crossentropy.info` (or the loss), rounded as the seed rounds it, and the seed's
errata are printed beside the corrected values. Figures are saved as PNG files.

Needs the ``demo`` extra (torch, scikit-learn, matplotlib, rich).
"""

from __future__ import annotations

import pathlib
from typing import Literal, TextIO

from crossentropy.tour._classifier import (
    CLASSIFIER_FIGURES,
    DigitsResult,
    classifier_section,
    train_digits_classifier,
)
from crossentropy.tour._coding import coding_section
from crossentropy.tour._report import Erratum, Figure, Section, Table, Text, Tour
from crossentropy.tour._seed import (
    boxes_section,
    classification_section,
    cross_entropy_section,
    entropy_section,
    entropy_tables_section,
    information_section,
    loss_section,
    soft_targets_section,
    summary_section,
    term_section,
    why_section,
)

__all__ = [
    "DigitsResult",
    "Erratum",
    "Figure",
    "Section",
    "Table",
    "Text",
    "Tour",
    "classifier_section",
    "coding_section",
    "run_tour",
    "train_digits_classifier",
]


def run_tour(
    out: str | pathlib.Path = "tour-output",
    *,
    train: bool = True,
    epochs: int = 20,
    seed: int = 0,
    stream: TextIO | None = None,
    style: Literal["auto", "rich", "plain"] = "auto",
    quiet: bool = False,
) -> Tour:
    """Run the whole tour: print every section and save the figures into ``out``.

    Args:
        out: folder for the PNG figures (created if missing).
        train: train the digits classifier (the section is skipped when False, and the
            classifier figures an earlier run left in ``out`` are removed).
        epochs: passes over the digits training split.
        seed: seeds the classifier's split, initial weights and batch order.
        stream: where the text goes; standard output when ``None``.
        style: ``"rich"``, ``"plain"`` or ``"auto"`` (rich on a terminal).
        quiet: print nothing; the returned record is complete all the same.

    Returns:
        The :class:`Tour` with the record of every section, table, erratum, figure and
        exact value (``tour.values``).

    Raises:
        ValueError: ``epochs`` is negative, ``style`` unknown, or ``out`` is a file.
        ModuleNotFoundError: a package of the ``demo`` extra that this run needs is
            missing (matplotlib for the figures; torch and scikit-learn to train).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0; got {epochs!r}")
    _require_demo_packages(train)
    if pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
        raise ValueError(f"`out` must be a folder for the figures; got the file {str(out)!r}")
    tour = Tour(out, stream=stream, style=style, quiet=quiet)
    why_section(tour)
    information_section(tour)
    coding_section(tour)  # codes for the four words: the seed's coding, after Information
    entropy_section(tour)
    boxes_section(tour)
    term_section(tour)
    entropy_tables_section(tour)
    cross_entropy_section(tour)
    loss_section(tour)
    classification_section(tour)
    soft_targets_section(tour)
    if train:
        classifier_section(tour, epochs=epochs, seed=seed)
    else:
        # The classifier's figures from an earlier run would otherwise sit beside this
        # run's as if they were part of it.
        for stem in CLASSIFIER_FIGURES:
            pathlib.Path(out, f"{stem}.png").unlink(missing_ok=True)
    summary_section(tour)
    tour.listing()
    return tour


def _require_demo_packages(train: bool) -> None:
    """Fail before the first section, naming every missing package and the install line."""
    import importlib.util

    needed = {"matplotlib": "the figures"}
    if train:
        needed.update({"torch": "the trained classifier", "sklearn": "the digits data"})
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        what = ", ".join(f"{name} ({needed[name]})" for name in missing)
        skip = " (or pass train=False / --no-train to skip the classifier)" if train else ""
        raise ModuleNotFoundError(
            f"the tour needs {what}: install the demo extra, pip install 'crossentropy[demo]'{skip}"
        )
