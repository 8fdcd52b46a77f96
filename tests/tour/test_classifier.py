"""The tour's digits classifier: losses against sklearn and a float64 reference, training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy.tour import train_digits_classifier
from tests import reference

pytest.importorskip("torch", reason="the tour's classifier trains with torch")
log_loss = pytest.importorskip("sklearn.metrics").log_loss

EPOCHS = 3


@pytest.fixture(scope="module")
def result():
    return train_digits_classifier(epochs=EPOCHS, seed=0)


def _reference_mean_bits(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over images of H(one-hot label, prediction) in bits, term by term."""
    one_hot = np.eye(probabilities.shape[1])
    return math.fsum(
        reference.cross_entropy(one_hot[label].tolist(), row.tolist())
        for label, row in zip(labels, probabilities, strict=True)
    ) / len(labels)


def test_shapes_and_split(result):
    assert len(result.train_curve) == len(result.test_curve) == EPOCHS + 1
    assert result.n_train + result.n_test == 1797  # sklearn's bundled digits
    assert result.test_before.shape == result.test_after.shape == (result.n_test, 10)
    assert result.example_images.shape == (3, 8, 8)
    assert len(set(result.example_labels)) == 3  # three different classes
    np.testing.assert_allclose(result.test_after.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("stage", "index"), [("before", 0), ("after", -1)])
def test_test_loss_agrees_with_sklearn_and_reference(result, stage, index):
    probabilities = result.test_before if stage == "before" else result.test_after
    ours = result.test_curve[index]  # crossentropy.losses.CrossEntropyLoss(base=2)
    sklearn_bits = log_loss(result.test_labels, probabilities, labels=list(range(10)))
    assert ours == pytest.approx(sklearn_bits / math.log(2), abs=1e-6, rel=0)
    assert ours == pytest.approx(
        _reference_mean_bits(result.test_labels, probabilities), abs=1e-10, rel=0
    )
    assert result.sklearn_test[0 if stage == "before" else 1] == pytest.approx(
        ours, abs=1e-6, rel=0
    )


def test_train_loss_agrees_with_sklearn(result):
    assert result.train_curve[0] == pytest.approx(result.sklearn_train[0], abs=1e-6, rel=0)
    assert result.train_curve[-1] == pytest.approx(result.sklearn_train[1], abs=1e-6, rel=0)


def test_training_lowers_the_loss(result):
    assert result.test_curve[-1] < result.test_curve[0]
    assert result.train_curve[-1] < result.train_curve[0]
    # Untrained: near the uniform guess log2 10; trained: well under a bit per image.
    assert abs(result.test_curve[0] - math.log2(10)) < 0.5
    assert result.test_curve[-1] < 1.0
    assert result.accuracy[1] > 0.85 > result.accuracy[0]


def test_examples_are_rows_of_the_test_predictions(result):
    for row, position in enumerate(result.example_indices):
        assert result.test_labels[position] == result.example_labels[row]
        np.testing.assert_array_equal(result.example_before[row], result.test_before[position])
        np.testing.assert_array_equal(result.example_after[row], result.test_after[position])


def test_deterministic(result):
    again = train_digits_classifier(epochs=EPOCHS, seed=0)
    assert again.train_curve == result.train_curve
    assert again.test_curve == result.test_curve
    np.testing.assert_array_equal(again.test_after, result.test_after)


def test_progress_callback_sees_each_epoch():
    seen = []
    result = train_digits_classifier(epochs=2, on_epoch=lambda *args: seen.append(args))
    assert [epoch for epoch, _, _ in seen] == [1, 2]
    assert [test for _, _, test in seen] == list(result.test_curve[1:])


def test_zero_epochs_measures_the_untrained_model():
    result = train_digits_classifier(epochs=0)
    assert len(result.test_curve) == 1
    np.testing.assert_array_equal(result.test_before, result.test_after)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": -1}, "`epochs` must be an integer >= 0; got -1"),
        ({"epochs": 1.5}, "`epochs` must be an integer >= 0; got 1.5"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1; got 0"),
        ({"learning_rate": 0.0}, "`learning_rate` must be > 0; got 0.0"),
        ({"test_size": 1.0}, r"`test_size` must be in \(0, 1\); got 1.0"),
        ({"test_size": 0.0}, r"`test_size` must be in \(0, 1\); got 0.0"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_digits_classifier(**kwargs)
