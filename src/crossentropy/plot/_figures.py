"""The tour's figures, drawn with matplotlib (imported inside each function).

Each function draws one figure and saves it as a PNG at ``path``. Figures are built with
``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so no pyplot state
and no global backend setting are touched. The curves of the measures are computed by
:mod:`crossentropy.info`.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from crossentropy import info

__all__ = [
    "plot_binary_entropy",
    "plot_cross_entropy_gap",
    "plot_entropy_terms",
    "plot_information_term",
    "plot_loss_curve",
    "plot_predictions",
]

_DPI = 110
_ACCENT = "#c0392b"
_BLUE = "#2e6da4"
_GREY = "#9aa5b1"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software/date metadata: the same figure gives the same bytes on every run.
    figure.savefig(path, dpi=_DPI, metadata={"Software": None})
    return path


def _term(x: np.ndarray) -> np.ndarray:
    """−x log2 x with the convention 0 · log 0 = 0 (x = 0 is an impossible outcome)."""
    out = np.zeros_like(x, dtype=np.float64)
    positive = x > 0
    out[positive] = x[positive] * np.asarray(info.information(x[positive]), dtype=np.float64)
    return out


def plot_information_term(*, path: str | pathlib.Path) -> pathlib.Path:
    """Draw −x log2 x on [0, 1] with its peak (x = 1/e, height 1/(e ln 2)) marked.

    The term is one outcome's contribution to the entropy; it is 0 at both ends.

    Args:
        path: where to save the PNG.

    Returns:
        The path written.
    """
    x = np.linspace(0.0, 1.0, 1001)
    y = _term(x)
    peak_x = math.exp(-1.0)
    peak_y = float(_term(np.array([peak_x]))[0])
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    axes.plot(x, y, color=_BLUE, linewidth=2, label=r"$-x\,\log_2 x$")
    axes.plot([peak_x], [peak_y], "o", color=_ACCENT, zorder=3)
    axes.vlines(peak_x, 0, peak_y, colors=_ACCENT, linestyles=":", linewidth=1)
    axes.annotate(
        f"peak at x = 1/e = {peak_x:.3f}\nheight 1/(e ln 2) = {peak_y:.3f} bits",
        xy=(peak_x, peak_y),
        xytext=(0.40, 0.10),
        textcoords="data",
        arrowprops={"arrowstyle": "->", "color": _ACCENT},
        color=_ACCENT,
    )
    axes.plot([0.0, 1.0], [0.0, 0.0], "s", color="black", markersize=5)
    axes.annotate(
        "0 at x = 1 (the seed\nsays 1): a certain\noutcome adds nothing",
        xy=(1.0, 0.0),
        xytext=(0.78, 0.33),
        arrowprops={"arrowstyle": "->"},
    )
    axes.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 0.62),
        xlabel="probability x",
        ylabel="bits",
        title="The entropy term −x log₂ x",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    return _save(figure, path)


def plot_binary_entropy(
    *, path: str | pathlib.Path, marks: Mapping[str, float] | None = None
) -> pathlib.Path:
    """Draw the binary entropy H(p) = −p log2 p − (1−p) log2 (1−p) on [0, 1].

    Args:
        path: where to save the PNG.
        marks: optional labelled probabilities to mark on the curve.

    Returns:
        The path written.
    """
    x = np.linspace(0.0, 1.0, 1001)
    y = np.asarray(info.binary_entropy(x), dtype=np.float64)
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    axes.plot(x, y, color=_BLUE, linewidth=2, label="H(p), bits")
    for label, probability in (marks or {}).items():
        height = float(info.binary_entropy(float(probability)))
        axes.plot([probability], [height], "o", color=_ACCENT, zorder=3)
        axes.annotate(
            f"{label}\nH = {height:.3f}",
            xy=(probability, height),
            xytext=(-8 if probability > 0.5 else 8, -28 if height > 0.5 else 8),
            textcoords="offset points",
            color=_ACCENT,
            fontsize=9,
            ha="right" if probability > 0.5 else "left",
        )
    axes.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.1),
        xlabel="probability p of the event",
        ylabel="bits",
        title="Binary entropy: certain events are predictable",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    return _save(figure, path)


def plot_entropy_terms(
    boxes: Mapping[str, ArrayLike],
    *,
    path: str | pathlib.Path,
    outcome_labels: Sequence[str] | None = None,
    outcome_name: str = "outcome",
) -> pathlib.Path:
    """Draw each distribution's entropy terms −p log2 p as bars, with H(P) in the legend.

    Args:
        boxes: named distributions, each of the same length K.
        path: where to save the PNG.
        outcome_labels: K outcome names for the x axis.
        outcome_name: what the outcomes are (the x axis's label).

    Returns:
        The path written.
    """
    names = list(boxes)
    arrays = [np.asarray(boxes[name], dtype=np.float64) for name in names]
    k = len(arrays[0])
    labels = list(outcome_labels) if outcome_labels is not None else [str(i) for i in range(k)]
    width = 0.8 / len(names)
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    colours = [_BLUE, _ACCENT, _GREY, "#27ae60"]
    for index, (name, probabilities) in enumerate(zip(names, arrays, strict=True)):
        terms = _term(probabilities)
        total = float(info.entropy(probabilities))
        positions = np.arange(k) + (index - (len(names) - 1) / 2) * width
        bars = axes.bar(
            positions,
            terms,
            width=width * 0.95,
            color=colours[index % 4],
            label=f"{name}: H = {total:.3f} bits",
        )
        for bar, probability, term in zip(bars, probabilities, terms, strict=True):
            axes.annotate(
                f"p={probability:g}\n{term:.3f}",
                xy=(bar.get_x() + bar.get_width() / 2, term),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    axes.set_xticks(np.arange(k), labels)
    axes.set(
        ylim=(0, 0.72),
        xlabel=outcome_name,
        ylabel="−p log₂ p (bits)",
        title="Each outcome's share of the entropy",
    )
    axes.legend(loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_cross_entropy_gap(
    p: ArrayLike,
    far: ArrayLike,
    *,
    path: str | pathlib.Path,
    steps: int = 201,
) -> pathlib.Path:
    """Draw H(P, Q_t) for Q_t = (1 − t) P + t R moving from P to R, above the floor H(P).

    The gap between the curve and the floor is D(P‖Q_t), shaded.

    Args:
        p: the true distribution P (K probabilities).
        far: the distribution R that Q moves towards (K probabilities).
        path: where to save the PNG.
        steps: points on the curve.

    Returns:
        The path written.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    far_arr = np.asarray(far, dtype=np.float64)
    t = np.linspace(0.0, 1.0, steps)
    q = (1.0 - t)[:, None] * p_arr[None, :] + t[:, None] * far_arr[None, :]
    q = np.asarray(info.normalize(q), dtype=np.float64)  # exact sums after mixing
    cross = np.asarray(info.cross_entropy(p_arr, q), dtype=np.float64)
    floor = float(info.entropy(p_arr))
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    axes.plot(t, cross, color=_BLUE, linewidth=2, label="H(P, Q)")
    axes.axhline(
        floor,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"H(P) = {floor:.3f} bits (the floor)",
    )
    axes.fill_between(t, floor, cross, color=_ACCENT, alpha=0.2, label="D(P‖Q), the gap")
    axes.set(
        xlim=(0, 1),
        ylim=(floor - 0.15, float(cross.max()) + 0.15),
        xlabel="t, where Q = (1 − t)·P + t·R",
        ylabel="bits per symbol",
        title=f"Coding P-data with Q: P = {_short(p_arr)}, R = {_short(far_arr)}",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_loss_curve(
    train_bits: ArrayLike,
    test_bits: ArrayLike,
    *,
    path: str | pathlib.Path,
    floor: float | None = None,
) -> pathlib.Path:
    """Draw the mean cross-entropy per epoch (epoch 0 = before training) in bits.

    Args:
        train_bits: E + 1 mean losses on the training split, epoch 0 first.
        test_bits: E + 1 mean losses on the test split.
        path: where to save the PNG.
        floor: an optional reference line (e.g. log2 of the class count, a uniform guess).

    Returns:
        The path written.
    """
    train = np.asarray(train_bits, dtype=np.float64)
    test = np.asarray(test_bits, dtype=np.float64)
    epochs = np.arange(len(train))
    figure = _new_figure(6.4, 4.0)
    axes = figure.subplots()
    axes.plot(epochs, train, color=_BLUE, linewidth=2, marker=".", label="train")
    axes.plot(epochs, test, color=_ACCENT, linewidth=2, marker=".", label="test")
    if floor is not None:
        axes.axhline(
            floor,
            color=_GREY,
            linestyle="--",
            linewidth=1,
            label=f"uniform guess: log₂ 10 = {floor:.3f} bits",
        )
    axes.set(
        xlabel="epoch (0 = before training)",
        ylabel="mean cross-entropy (bits)",
        title="Training lowers the cross-entropy",
        ylim=(0, None),
    )
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(-0.5, len(train) - 0.5)
    axes.grid(alpha=0.3)
    axes.legend(loc="center right")
    return _save(figure, path)


def plot_predictions(
    images: Sequence[ArrayLike] | np.ndarray,
    labels: ArrayLike,
    before: ArrayLike,
    after: ArrayLike,
    *,
    path: str | pathlib.Path,
) -> pathlib.Path:
    """Draw images with their predicted distributions before and after training.

    Args:
        images: M images (2-D arrays).
        labels: M true classes.
        before: M predicted distributions over the V classes, before training.
        after: M predicted distributions after training.
        path: where to save the PNG.

    Returns:
        The path written.
    """
    pictures = [np.asarray(image) for image in images]
    classes_true = np.asarray(labels)
    predicted_before = np.asarray(before, dtype=np.float64)
    predicted_after = np.asarray(after, dtype=np.float64)
    count = len(pictures)
    figure = _new_figure(3.2 * count, 5.6)
    grid = figure.subplots(2, count, squeeze=False, height_ratios=[1.0, 1.1])
    for column in range(count):
        image_axes, bar_axes = grid[0][column], grid[1][column]
        image_axes.imshow(pictures[column], cmap="gray_r", interpolation="nearest")
        image_axes.set_xticks([])
        image_axes.set_yticks([])
        label = int(classes_true[column])
        q_before = predicted_before[column]
        q_after = predicted_after[column]
        bits_after = float(info.information(float(q_after[label])))
        image_axes.set_title(f"true class {label}\nCE after = {bits_after:.3f} bits", fontsize=10)
        classes = np.arange(len(q_after))
        bar_axes.bar(classes - 0.2, q_before, width=0.4, color=_GREY)
        colours = [_ACCENT if c == label else _BLUE for c in classes]
        bar_axes.bar(classes + 0.2, q_after, width=0.4, color=colours)
        bar_axes.set_xticks(classes)
        bar_axes.set(ylim=(0, 1.05), xlabel="class")
        if column == 0:
            from matplotlib.patches import Patch

            bar_axes.set_ylabel("predicted probability")
            keys = [(_GREY, "before"), (_BLUE, "after"), (_ACCENT, "after, true class")]
            handles = [Patch(color=colour, label=text) for colour, text in keys]
            bar_axes.legend(handles=handles, loc="best", fontsize=8)  # clear of the bars
    figure.suptitle(
        "Three test images: predictions before (grey) and after training (true class in red)",
        fontsize=11,
    )
    return _save(figure, path)


def _short(p: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:g}" for value in p) + "]"
