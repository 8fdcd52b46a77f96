"""The tour's real classifier: softmax regression on scikit-learn's handwritten digits.

The seed's "cross-entropy as a loss" story run on real data. A linear layer followed by
softmax (multinomial logistic regression) is trained on the 8×8 digit images bundled with
scikit-learn (no download) with :class:`crossentropy.losses.CrossEntropyLoss` in bits
(``base=2``). The mean cross-entropy on the training and test splits is measured before
and after training, both with our loss and with ``sklearn.metrics.log_loss`` (nats,
converted to bits), and the seed's three-instance table is redone on three real test
images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from crossentropy import info

__all__ = ["DigitsResult", "classifier_section", "train_digits_classifier"]

NUM_CLASSES = 10
"""The digits 0 to 9."""

CLASSIFIER_FIGURES = ("classifier_loss_curve", "classifier_predictions")
"""The figures the classifier section saves (file stems in the output folder)."""


@dataclass(frozen=True)
class DigitsResult:
    """What training the digits classifier measured. Losses are mean cross-entropies in bits.

    Attributes:
        epochs: passes over the training split.
        n_train: training images.
        n_test: test images.
        train_curve: E + 1 mean training losses (bits), index 0 before training.
        test_curve: E + 1 mean test losses (bits), index 0 before training.
        sklearn_train: ``sklearn.metrics.log_loss`` / ln 2 on the training split,
            (before, after), in bits.
        sklearn_test: the same on the test split.
        accuracy: test accuracy (before, after).
        example_indices: positions in the test split of the three example images.
        example_images: the three images, (3, 8, 8), pixel values 0 to 16.
        example_labels: their true classes.
        example_before: predicted distributions before training, (3, 10).
        example_after: predicted distributions after training, (3, 10).
        test_labels: the true classes of the test split, (n_test,).
        test_before: predicted distributions on the test split before training,
            (n_test, 10).
        test_after: the same after training.
    """

    epochs: int
    n_train: int
    n_test: int
    train_curve: tuple[float, ...]
    test_curve: tuple[float, ...]
    sklearn_train: tuple[float, float]
    sklearn_test: tuple[float, float]
    accuracy: tuple[float, float]
    example_indices: tuple[int, ...]
    example_images: np.ndarray
    example_labels: tuple[int, ...]
    example_before: np.ndarray
    example_after: np.ndarray
    test_labels: np.ndarray
    test_before: np.ndarray
    test_after: np.ndarray


def train_digits_classifier(
    *,
    epochs: int = 20,
    seed: int = 0,
    test_size: float = 0.25,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> DigitsResult:
    """Train softmax regression on the bundled digits with our cross-entropy in bits.

    Deterministic: the split, the initial weights and the batch order are all seeded by
    ``seed``; the arithmetic is float64.

    Args:
        epochs: passes over the training split (0 measures the untrained model only).
        seed: seeds the split, the initial weights and the shuffling.
        test_size: fraction of the images held out (stratified by class).
        batch_size: images per optimiser step.
        learning_rate: Adam's step size.
        on_epoch: called after each epoch with (epoch, train bits, test bits).

    Returns:
        A :class:`DigitsResult` with the losses in bits.

    Raises:
        ValueError: ``epochs`` is negative, or ``batch_size`` or ``learning_rate`` is not
            positive, or ``test_size`` is not in (0, 1).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be an integer >= 0; got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be > 0; got {learning_rate!r}")
    if not 0 < test_size < 1:
        raise ValueError(f"`test_size` must be in (0, 1); got {test_size!r}")

    import torch
    from sklearn.datasets import load_digits
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    from crossentropy.losses import CrossEntropyLoss

    digits = load_digits()
    features = digits.data.astype(np.float64) / 16.0
    x_train, x_test, y_train, y_test, _, test_positions = train_test_split(
        features,
        digits.target,
        np.arange(len(features)),
        test_size=test_size,
        random_state=seed,
        stratify=digits.target,
    )
    images_test = digits.images[test_positions]
    x_train_t = torch.from_numpy(np.ascontiguousarray(x_train))
    x_test_t = torch.from_numpy(np.ascontiguousarray(x_test))
    y_train_t = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    y_test_t = torch.from_numpy(np.asarray(y_test, dtype=np.int64))

    torch.manual_seed(seed)
    model = torch.nn.Linear(features.shape[1], NUM_CLASSES, dtype=torch.float64)
    loss_bits = CrossEntropyLoss(base=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    shuffle = torch.Generator().manual_seed(seed)

    def mean_bits(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss_bits(model(x), y))

    def probabilities(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(x), dim=-1).numpy()

    def sklearn_bits(x: torch.Tensor, y: np.ndarray) -> float:
        nats = log_loss(y, probabilities(x), labels=list(range(NUM_CLASSES)))
        return float(nats) / math.log(2)

    def accuracy() -> float:
        return float(np.mean(probabilities(x_test_t).argmax(axis=1) == y_test))

    # Three test images of different classes: the first three such in the test split.
    chosen: list[int] = []
    for position, label in enumerate(y_test):
        if all(y_test[other] != label for other in chosen):
            chosen.append(position)
        if len(chosen) == 3:
            break
    example_x = x_test_t[chosen]

    train_curve = [mean_bits(x_train_t, y_train_t)]
    test_curve = [mean_bits(x_test_t, y_test_t)]
    sklearn_before = (sklearn_bits(x_train_t, y_train), sklearn_bits(x_test_t, y_test))
    accuracy_before = accuracy()
    example_before = probabilities(example_x)
    test_before = probabilities(x_test_t)

    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_train_t), generator=shuffle)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_bits(model(x_train_t[batch]), y_train_t[batch])
            loss.backward()
            optimiser.step()
        train_curve.append(mean_bits(x_train_t, y_train_t))
        test_curve.append(mean_bits(x_test_t, y_test_t))
        if on_epoch is not None:
            on_epoch(epoch, train_curve[-1], test_curve[-1])

    sklearn_after = (sklearn_bits(x_train_t, y_train), sklearn_bits(x_test_t, y_test))
    return DigitsResult(
        epochs=epochs,
        n_train=len(x_train),
        n_test=len(x_test),
        train_curve=tuple(train_curve),
        test_curve=tuple(test_curve),
        sklearn_train=(sklearn_before[0], sklearn_after[0]),
        sklearn_test=(sklearn_before[1], sklearn_after[1]),
        accuracy=(accuracy_before, accuracy()),
        example_indices=tuple(chosen),
        example_images=np.asarray(images_test[chosen]),
        example_labels=tuple(int(y_test[i]) for i in chosen),
        example_before=example_before,
        example_after=probabilities(example_x),
        test_labels=np.asarray(y_test),
        test_before=test_before,
        test_after=probabilities(x_test_t),
    )


def _top(distribution: np.ndarray, count: int = 3) -> str:
    order = sorted(range(len(distribution)), key=lambda k: (-distribution[k], k))[:count]
    return ", ".join(f"{k}: {distribution[k]:.2f}" for k in order)


def classifier_section(tour, *, epochs: int = 20, seed: int = 0) -> DigitsResult:
    """The tour's section on a real classifier trained with cross-entropy in bits.

    Prints the split, the mean cross-entropy before and after training beside
    ``sklearn.metrics.log_loss``, the seed's three-instance table on real test images,
    and saves the loss curve and the three images as figures.

    Args:
        tour: the :class:`~crossentropy.tour.Tour` to write to.
        epochs: passes over the training split.
        seed: seeds the split, the initial weights and the shuffling.

    Returns:
        The :class:`DigitsResult` that was printed.
    """
    from crossentropy import plot

    tour.section("A real classifier: cross-entropy trains it")
    tour.text(
        "The seed's classification example, on real data: the handwritten digits "
        "(8×8 pixels, classes 0-9) bundled with scikit-learn. A softmax classifier "
        "(one linear layer, then softmax) predicts a distribution Q over the 10 classes; "
        "the label P is one-hot, so each image's cross-entropy is −log2 q(true class). "
        "It is trained with crossentropy.losses.CrossEntropyLoss(base=2): every loss "
        f"below is in bits (multiply by ln 2 = {math.log(2):.4f} for the nats that "
        "PyTorch prints)."
    )
    result = _train_with_progress(tour, epochs=epochs, seed=seed)
    record = tour.value
    keys = ("train", "test")
    curves = (result.train_curve, result.test_curve)
    sklearn = (result.sklearn_train, result.sklearn_test)
    rows = []
    for key, curve, reference in zip(keys, curves, sklearn, strict=True):
        before = record(f"digits.{key}.before", curve[0])
        after = record(f"digits.{key}.after", curve[-1])
        record(f"digits.{key}.before.sklearn", reference[0])
        record(f"digits.{key}.after.sklearn", reference[1])
        size = result.n_train if key == "train" else result.n_test
        rows.append(
            [
                f"{key} ({size} images)",
                f"{before:.4f}",
                f"{reference[0]:.4f}",
                f"{after:.4f}",
                f"{reference[1]:.4f}",
            ]
        )
    record("digits.accuracy.before", result.accuracy[0])
    record("digits.accuracy.after", result.accuracy[1])
    tour.table(
        ["split", "CE before (ours)", "log_loss before", "CE after (ours)", "log_loss after"],
        rows,
        title=f"Mean cross-entropy in bits, before and after {result.epochs} epochs "
        "(sklearn.metrics.log_loss ÷ ln 2 beside ours)",
    )
    tour.text(
        f"Before training the weights are random and the predictions nearly uniform: "
        f"about log2 10 = {float(info.entropy(np.full(NUM_CLASSES, 0.1))):.3f} bits per "
        f"image, test accuracy {result.accuracy[0]:.1%}. After training: test accuracy "
        f"{result.accuracy[1]:.1%}."
    )

    rows = []
    before_bits, after_bits = [], []
    for index, label in enumerate(result.example_labels):
        one_hot = np.eye(NUM_CLASSES)[label]
        before = float(info.cross_entropy(one_hot, result.example_before[index]))
        after = float(info.cross_entropy(one_hot, result.example_after[index]))
        before_bits.append(record(f"digits.image{index + 1}.before", before))
        after_bits.append(record(f"digits.image{index + 1}.after", after))
        rows.append(
            [
                f"test image #{result.example_indices[index]}",
                str(label),
                _top(result.example_before[index]),
                f"{before:.3f}",
                _top(result.example_after[index]),
                f"{after:.3f}",
            ]
        )
    mean_before = record("digits.images.mean.before", float(np.mean(before_bits)))
    mean_after = record("digits.images.mean.after", float(np.mean(after_bits)))
    rows.append(["mean", "", "", f"{mean_before:.3f}", "", f"{mean_after:.3f}"])
    tour.table(
        [
            "instance",
            "true class",
            "prediction before (top 3)",
            "CE before",
            "prediction after (top 3)",
            "CE after",
        ],
        rows,
        title="The seed's three-instance table, on three real test images (CE in bits)",
    )
    tour.text(
        "As in the seed, only the probability given to the true class counts, and the "
        "loss falls as that probability rises. It would be 0 only at q(true class) = 1 "
        "exactly; a confident correct prediction rounds to 0.000 bits, a confident "
        "wrong one costs many bits."
    )
    plot.plot_loss_curve(
        result.train_curve,
        result.test_curve,
        path=tour.figure(CLASSIFIER_FIGURES[0]),
        floor=float(info.entropy(np.full(NUM_CLASSES, 0.1))),
    )
    plot.plot_predictions(
        result.example_images,
        result.example_labels,
        result.example_before,
        result.example_after,
        path=tour.figure(CLASSIFIER_FIGURES[1]),
    )
    return result


def _train_with_progress(tour, *, epochs: int, seed: int) -> DigitsResult:
    if not tour.progress() or epochs == 0:
        return train_digits_classifier(epochs=epochs, seed=seed)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("test CE {task.fields[test]} bits"),
    )
    with Progress(*columns, console=tour.console, transient=True) as progress:
        task = progress.add_task("training", total=epochs, test="…")

        def advance(epoch: int, train: float, test: float) -> None:
            progress.update(task, completed=epoch, test=f"{test:.3f}")

        return train_digits_classifier(epochs=epochs, seed=seed, on_epoch=advance)
