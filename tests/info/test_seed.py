"""The verified values of SEED.md (section "Verified values", float64, bits) that `info` gives.

Source of every number in this file: /work/shared/SEED.md, table "Verified values", and
its errata 4, 7 and 9. Full-precision values are checked to 1e-12; values the table gives
to 6 or 4 digits are checked at that rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy import info

WORDS = [0.5, 0.2, 0.2, 0.1]  # A, B, C, D
BOX_A = [0.1, 0.2, 0.7]
BOX_B = [0.3, 0.3, 0.4]
LABELS = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # dog, cat, deer (erratum 3: cat is [0, 1, 0])
BEFORE = [[0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]]
AFTER = [[0.95, 0.02, 0.03], [0.05, 0.9, 0.05], [0.05, 0.08, 0.87]]
TIGHT = 1e-12


def test_information_of_single_words(xp):
    got = xp.to_numpy(info.information(xp.asarray([0.25, 0.5, 0.2, 0.1])))
    expected = [2.0, 1.0, 2.321928094887362, 3.321928094887362]
    np.testing.assert_allclose(got, expected, rtol=0, atol=TIGHT)


def test_entropy_of_the_words(xp):
    assert float(info.entropy(xp.asarray(WORDS))) == pytest.approx(1.7609640474436812, abs=TIGHT)


def test_maximum_of_the_entropy_term():
    x = 1 / math.e
    assert x == pytest.approx(0.36787944117144233, abs=TIGHT)
    peak = x * info.information(x)  # -x log2 x
    assert peak == pytest.approx(0.530737845423043, abs=TIGHT)
    grid = np.linspace(1e-6, 1.0, 200_001)
    terms = grid * info.information(grid)
    assert terms.max() <= peak + TIGHT
    assert grid[np.argmax(terms)] == pytest.approx(1 / math.e, abs=1e-5)


@pytest.mark.parametrize(
    ("box", "terms", "entropy"),
    [
        (BOX_A, [0.33219280948873625, 0.46438561897747244, 0.3602012209808308], 1.1567796494470395),
        (BOX_B, [0.5210896782498619, 0.5210896782498619, 0.5287712379549449], 1.5709505944546684),
    ],
)
def test_prize_boxes(xp, box, terms, entropy):
    p = xp.asarray(box)
    got_terms = xp.to_numpy(p * info.information(p))
    np.testing.assert_allclose(got_terms, terms, rtol=0, atol=TIGHT)
    assert float(info.entropy(p)) == pytest.approx(entropy, abs=TIGHT)


def test_box_a_third_term_is_0_360_not_0_361():  # erratum 4
    assert round(float(0.7 * info.information(0.7)), 3) == 0.360


@pytest.mark.parametrize(
    ("predictions", "per_instance", "mean"),
    [
        (BEFORE, [1.7369655941662063, 0.5145731728297583, 1.7369655941662063], 1.3295014537207237),
        (
            AFTER,
            [0.07400058144377693, 0.15200309344504995, 0.2009126939259964],
            0.14230545627160776,
        ),
    ],
    ids=["before", "after"],
)
def test_classification_cross_entropy(xp, predictions, per_instance, mean):
    ce = info.cross_entropy(xp.asarray(LABELS), xp.asarray(predictions))
    np.testing.assert_allclose(xp.to_numpy(ce), per_instance, rtol=0, atol=TIGHT)
    assert float(xp.to_numpy(ce).mean()) == pytest.approx(mean, abs=TIGHT)


@pytest.mark.parametrize(("predictions", "nats"), [(BEFORE, 0.9215), (AFTER, 0.0986)])
def test_classification_means_in_nats_as_pytorch_prints_them(xp, predictions, nats):
    ce = info.cross_entropy(xp.asarray(LABELS), xp.asarray(predictions), base=math.e)
    assert round(float(xp.to_numpy(ce).mean()), 4) == nats


@pytest.mark.parametrize(
    ("q", "bits"),
    [
        ([0.25, 0.25, 0.25, 0.25], 2.0),
        ([0.1, 0.2, 0.2, 0.5], 2.689735),
        ([0.4, 0.3, 0.2, 0.1], 1.804936),
        ([0.7, 0.1, 0.1, 0.1], 1.918251),
    ],
)
def test_words_coded_with_four_models(xp, q, bits):
    h_pq = float(info.cross_entropy(xp.asarray(WORDS), xp.asarray(q)))
    assert round(h_pq, 6) == bits
    assert h_pq >= 1.7609640474436812  # erratum 8: never below H(P)


def test_soft_target_least_cross_entropy():  # erratum 9: CE(P, P) = H(P) = 0.569 bits
    p = [0.9, 0.05, 0.05]
    assert round(info.cross_entropy(p, p), 3) == 0.569
    assert info.cross_entropy(p, p) == info.entropy(p)
