"""The tour's coding section prints the seed's numbers (SEED.md), all computed."""

from __future__ import annotations

import io

import pytest

from crossentropy.tour._coding import MODELS_Q, coding_section
from crossentropy.tour._report import Tour

# SEED.md: P-data coded with Q, H(P, Q) in bits.
SEED_CROSS_ENTROPY = {
    "uniform": 2.0,
    "[.1, .2, .2, .5]": 2.689735,
    "[.4, .3, .2, .1]": 1.804936,
    "[.7, .1, .1, .1]": 1.918251,
}


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    tour = Tour(tmp_path_factory.mktemp("tour"), stream=io.StringIO(), style="plain")
    coding_section(tour)
    return tour


def test_seed_numbers(tour):
    values = tour.values
    assert values["coding.code1_bits"] == 20  # SEED.md
    assert values["coding.code2_bits"] == 16
    assert values["coding.code2_kraft"] == 1.125
    assert values["coding.huffman_bits"] == 18
    assert values["coding.huffman_bits_per_word"] == pytest.approx(1.8, abs=1e-12)
    assert values["coding.entropy_P"] == pytest.approx(1.7609640474436812, rel=1e-12)
    assert values["coding.arithmetic_bits_per_symbol_P"] == pytest.approx(1.761, abs=0.01)


def test_cross_entropy_table(tour):
    assert set(MODELS_Q) == set(SEED_CROSS_ENTROPY)
    for name, expected in SEED_CROSS_ENTROPY.items():
        assert tour.values[f"coding.cross_entropy_Q_{name}"] == pytest.approx(expected, abs=5e-7)
        assert tour.values[f"coding.measured_bits_Q_{name}"] == pytest.approx(expected, abs=0.01)
    table = tour.find("Coding").tables()[-1]
    assert [row[0] for row in table.rows] == list(SEED_CROSS_ENTROPY)
    assert [row[2] for row in table.rows] == [f"{v:.6f}" for v in SEED_CROSS_ENTROPY.values()]


def test_errata_and_figure(tour):
    section = tour.find("Coding")
    errata = section.errata()
    assert any("1110 = C B = D A" in e.correct and "18 bits" in e.correct for e in errata)
    assert any("words 8 and 9" in e.correct and e.correct.endswith("0 10 11 0") for e in errata)
    figures = tour.figures()
    assert len(figures) == 1
    assert figures[0].path.stat().st_size > 0
