"""The whole tour, run end to end: its values against SEED.md, its output, its figures.

Golden numbers come from SEED.md's "Verified values" table (float64, bits unless
marked); the others from the float64 reference in ``tests/reference.py``.
"""

from __future__ import annotations

import io
import math

import pytest

from crossentropy.tour import Text, run_tour
from tests import reference

EPOCHS = 3  # a short training keeps the test fast; the default tour trains longer

# SEED.md, "Verified values (float64; bits unless marked)".
SEED_VERIFIED = {
    "information.uniform.A": 2.0,
    "information.skewed.A": 1.0,
    "information.skewed.B": 2.321928094887362,
    "information.skewed.C": 2.321928094887362,
    "information.skewed.D": 3.321928094887362,
    "entropy.words": 1.7609640474436812,
    "term.argmax": 0.36787944117144233,
    "term.max": 0.530737845423043,
    "boxA.term1": 0.33219280948873625,
    "boxA.term2": 0.46438561897747244,
    "boxA.term3": 0.3602012209808308,
    "boxA.H": 1.1567796494470395,
    "boxB.term1": 0.5210896782498619,
    "boxB.term2": 0.5210896782498619,
    "boxB.term3": 0.5287712379549449,
    "boxB.H": 1.5709505944546684,
    "classification.before.x1": 1.7369655941662063,
    "classification.before.x2": 0.5145731728297583,
    "classification.before.x3": 1.7369655941662063,
    "classification.before.mean": 1.3295014537207237,
    "classification.after.x1": 0.07400058144377693,
    "classification.after.x2": 0.15200309344504995,
    "classification.after.x3": 0.2009126939259964,
    "classification.after.mean": 0.14230545627160776,
    "ce.uniform": 2.0,
}
# SEED.md gives these to the digits shown (nats to 4, H(P, Q) to 6 places).
SEED_ROUNDED = {
    "classification.before.mean_nats": (0.9215, 4),
    "classification.after.mean_nats": (0.0986, 4),
    "ce.reversed": (2.689735, 6),
    "ce.close": (1.804936, 6),
    "ce.peaked": (1.918251, 6),
    "soft.CE": (0.569, 3),
}
P_WORDS = [0.5, 0.2, 0.2, 0.1]
MODELS = {
    "self": P_WORDS,
    "uniform": [0.25] * 4,
    "reversed": [0.1, 0.2, 0.2, 0.5],
    "close": [0.4, 0.3, 0.2, 0.1],
    "peaked": [0.7, 0.1, 0.1, 0.1],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("torch", reason="the tour's classifier trains with torch")
    pytest.importorskip("sklearn", reason="the tour's classifier loads scikit-learn's digits")
    out = tmp_path_factory.mktemp("tour")
    buffer = io.StringIO()
    tour = run_tour(out, epochs=EPOCHS, stream=buffer, style="plain")
    return tour, buffer.getvalue(), out


@pytest.mark.parametrize("key", sorted(SEED_VERIFIED))
def test_values_equal_seed_verified(run, key):
    tour, _, _ = run
    assert tour.values[key] == pytest.approx(SEED_VERIFIED[key], abs=1e-12, rel=0)


@pytest.mark.parametrize("key", sorted(SEED_ROUNDED))
def test_values_round_to_seed(run, key):
    tour, _, _ = run
    expected, digits = SEED_ROUNDED[key]
    assert round(tour.values[key], digits) == expected


def test_cross_entropy_table_matches_reference(run):
    tour, _, _ = run
    h_p = reference.entropy(P_WORDS)
    for key, q in MODELS.items():
        assert tour.values[f"ce.{key}"] == pytest.approx(
            reference.cross_entropy(P_WORDS, q), abs=1e-12, rel=0
        )
        assert tour.values[f"kl.{key}"] == pytest.approx(
            reference.kl_divergence(P_WORDS, q), abs=1e-12, rel=0
        )
        # H(P, Q) = H(P) + D(P‖Q), shown numerically by the tour.
        assert abs(tour.values[f"ce.{key}.identity_gap"]) < 1e-12
        assert tour.values[f"ce.{key}"] >= h_p - 1e-12
    assert tour.values["kl.self"] == 0.0
    assert tour.values["ce.peaked.backward"] == pytest.approx(
        reference.cross_entropy(MODELS["peaked"], P_WORDS), abs=1e-12, rel=0
    )


def test_other_values_match_reference(run):
    tour, _, _ = run
    values = tour.values
    assert values["term.at_one"] == 0.0
    assert values["term.at_zero"] == 0.0
    assert values["soft.H"] == pytest.approx(reference.entropy([0.9, 0.05, 0.05]), abs=1e-12, rel=0)
    assert values["soft.CE"] == pytest.approx(values["soft.H"], abs=1e-12, rel=0)
    assert values["classification.perfect"] == 0.0
    for key, p in (("eat", 0.99), ("lottery", 1e-7), ("coin", 0.5)):
        assert values[f"binary.{key}"] == pytest.approx(
            reference.binary_entropy(p), abs=1e-12, rel=0
        )
    # PyTorch's nats are the bits times ln 2 (SEED.md, erratum 7).
    for stage in ("before", "after"):
        assert values[f"classification.{stage}.mean_nats"] == pytest.approx(
            values[f"classification.{stage}.mean"] * math.log(2), abs=1e-12, rel=0
        )
    # A single draw from box A coded with Huffman (lengths 1, 2, 2 for .7, .2, .1): 1.3.
    assert values["boxA.huffman_length"] == pytest.approx(
        0.7 * 1 + 0.2 * 2 + 0.1 * 2, abs=1e-12, rel=0
    )


def test_sections_follow_the_seed(run):
    tour, _, _ = run
    titles = [section.title.lower() for section in tour.sections]
    order = [
        "why",
        "information",
        "coding",
        "entropy",
        "two prize boxes",
        "−x log2 x",
        "entropy of the two boxes",
        "cross-entropy",
        "as a loss",
        "in classification",
        "soft targets",
        "real classifier",
        "summary",
    ]
    positions = []
    for word in order:
        matches = [i for i, title in enumerate(titles) if word in title and i not in positions]
        assert matches, f"no section for {word!r} in {titles}"
        positions.append(matches[0])
    assert positions == sorted(positions)


def test_tables_print_the_seed_rounding(run):
    tour, _, _ = run
    skewed = tour.find("Information").tables()[1]
    assert [row[2] for row in skewed.rows] == ["1.0", "2.3", "2.3", "3.3"]
    uniform = tour.find("Information").tables()[0]
    assert [row[2] for row in uniform.rows] == ["2.0"] * 4
    box_a, box_b = tour.find("Entropy of the two boxes").tables()
    assert [row[2] for row in box_a.rows] == ["0.332", "0.464", "0.360", "1.157"]
    assert [row[2] for row in box_b.rows] == ["0.521", "0.521", "0.529", "1.571"]
    classification = tour.find("in classification").tables()[0]
    assert [row[3] for row in classification.rows] == ["1.737", "0.515", "1.737", "1.330"]
    assert [row[5] for row in classification.rows] == ["0.074", "0.152", "0.201", "0.142"]
    assert classification.rows[1][1] == "[0, 1, 0]"  # x2 is a cat (erratum 3)
    term = tour.find("−x log2 x").tables()[0]
    assert term.rows[1][:2] == ("1/e = 0.368", "0.531")


def test_errata_beside_the_corrected_values(run):
    tour, _, _ = run
    errata = {section.title: section.errata() for section in tour.sections}
    flat = [(title, e.seed_says, e.correct) for title, items in errata.items() for e in items]

    def find(seed_text: str, correct_text: str) -> str:
        for title, seed_says, correct in flat:
            if seed_text in seed_says and correct_text in correct:
                return title
        raise AssertionError(f"no erratum {seed_text!r} → {correct_text!r} in {flat}")

    assert "boxes" in find("0.361", "0.360")
    assert "x log2 x" in find("uncertainty is 1 at p = 1", "the term is 0 at p = 1")
    assert "Cross-entropy" in find("H(P, Q) > H(P)", "H(P, Q) ≥ H(P)")
    assert "classification" in find("x2 (cat) = [0, 0, 1]", "x2 (cat) = [0, 1, 0]")
    assert "classification" in find("1.330", "0.9215 nats")
    assert "Soft" in find("down to 0", "0.569 bits")


def test_output_has_the_key_numbers(run):
    _, text, _ = run
    for number in (
        "1.157",
        "1.571",
        "1.330",
        "0.142",
        "0.9215",
        "0.0986",
        "0.360",
        "0.531",
        "0.368",
        "0.569",
        "1.761",
        "2.689735",
    ):
        assert number in text, number
    assert "ERRATUM" in text


def test_coding_section_is_in_place(run):
    tour, text, _ = run
    coding = tour.find("coding")
    rows = {row[0]: row for table in coding.tables() for row in table.rows}
    assert "message bits" in rows
    assert "18" in rows["message bits"]  # SEED.md: Huffman, 18 bits for the message
    assert "20" in rows["message bits"]
    # SEED.md's verified table: code 1 / code 2 take 20 / 16 bits, Huffman 18 (1.8 bits/word).
    assert tour.values["coding.code1_bits"] == 20
    assert tour.values["coding.code2_bits"] == 16
    assert tour.values["coding.huffman_bits"] == 18
    assert tour.values["coding.huffman_bits_per_word"] == pytest.approx(1.8, abs=1e-12, rel=0)
    # Its place is right after Information (SEED.md section 2 introduces the codes).
    assert tour.sections.index(coding) == tour.sections.index(tour.find("Information")) + 1
    assert "Coding" in text


def test_classifier_section(run):
    tour, _, _ = run
    values = tour.values
    for split in ("train", "test"):
        for stage in ("before", "after"):
            ours = values[f"digits.{split}.{stage}"]
            assert ours == pytest.approx(values[f"digits.{split}.{stage}.sklearn"], abs=1e-6, rel=0)
        assert values[f"digits.{split}.after"] < values[f"digits.{split}.before"]
    table = tour.find("real classifier").tables()[1]
    assert len(table.rows) == 4
    assert table.rows[-1][0] == "mean"


def test_all_figures_written(run):
    tour, text, out = run
    names = {figure.path.name for figure in tour.figures()}
    expected = {
        "entropy_term.png",
        "binary_entropy.png",
        "box_entropy_terms.png",
        "cross_entropy_gap.png",
        "classifier_loss_curve.png",
        "classifier_predictions.png",
    }
    assert expected <= names
    for figure in tour.figures():
        assert figure.path.parent == out
        data = figure.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", figure.path
        assert len(data) > 5000
        assert figure.path.name in text  # the final list names every figure


def test_deterministic_and_without_training(tmp_path):
    outputs = []
    for name in ("one", "two"):
        buffer = io.StringIO()
        run_tour(tmp_path / name, train=False, stream=buffer, style="plain")
        outputs.append(buffer.getvalue().replace(str(tmp_path / name), "OUT"))
    assert outputs[0] == outputs[1]
    assert "real classifier" not in outputs[0]
    assert not (tmp_path / "one" / "classifier_loss_curve.png").exists()


def test_bad_epochs(tmp_path):
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 0; got -1"):
        run_tour(tmp_path, epochs=-1, quiet=True)
    # A bool is refused before anything is printed or written.
    stream = io.StringIO()
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 0; got True"):
        run_tour(tmp_path / "figures", epochs=True, stream=stream, style="plain")
    assert stream.getvalue() == ""
    assert not (tmp_path / "figures").exists()


def test_nats_agree_with_torch(run):
    """The bits-vs-nats erratum: PyTorch's own loss on the seed's predictions."""
    torch = pytest.importorskip("torch")
    tour, _, _ = run
    targets = torch.tensor([0, 1, 2])  # dog, cat, deer (x2 is a cat: erratum 3)
    predictions = {
        "before": [[0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]],
        "after": [[0.95, 0.02, 0.03], [0.05, 0.9, 0.05], [0.05, 0.08, 0.87]],
    }
    for stage, q in predictions.items():
        logits = torch.log(torch.tensor(q, dtype=torch.float64))
        expected = float(torch.nn.functional.cross_entropy(logits, targets))
        assert tour.values[f"classification.{stage}.mean_nats"] == pytest.approx(
            expected, abs=1e-12, rel=0
        )


def test_tour_without_training_needs_no_torch(monkeypatch, tmp_path):
    """With ``train=False`` only matplotlib is required: without torch the nats of the
    classification erratum come from the measures, and the whole output is unchanged."""
    import sys

    with_torch = io.StringIO()
    run_tour(tmp_path / "with", train=False, stream=with_torch, style="plain")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError):
        import torch  # noqa: F401
    without_torch = io.StringIO()
    tour = run_tour(tmp_path / "without", train=False, stream=without_torch, style="plain")
    assert without_torch.getvalue().replace(str(tmp_path / "without"), "OUT") == (
        with_torch.getvalue().replace(str(tmp_path / "with"), "OUT")
    )
    labels = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    before = [[0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]]  # SEED.md's predictions
    expected = sum(-math.log(q[y.index(1)]) for q, y in zip(before, labels, strict=True)) / 3
    assert tour.values["classification.before.mean_nats"] == pytest.approx(expected, rel=1e-14)


def test_optimal_code_spread_on_p():
    """The tour's note on ties: among the prefix codes optimal for Q = [.7, .1, .1, .1],
    P = [.5, .2, .2, .1] costs 1.8 bits/word (lengths 1, 2, 3, 3 with P's likelier words
    short) to 1.9 (lengths 1, 3, 3, 2); untied Q = [.4, .3, .2, .1] has one optimal code.
    Huffman's own code for each Q lies in the range."""
    import numpy as np

    from crossentropy import coding
    from crossentropy.tour._coding import MODELS_Q, _optimal_code_costs

    p = np.array([0.5, 0.2, 0.2, 0.1])
    assert _optimal_code_costs((0.7, 0.1, 0.1, 0.1), p) == pytest.approx((1.8, 1.9))
    low, high = _optimal_code_costs((0.4, 0.3, 0.2, 0.1), p)
    assert low == pytest.approx(high)
    for q in MODELS_Q.values():
        low, high = _optimal_code_costs(q, p)
        cost = coding.huffman_code(np.array(q)).expected_length(p)
        assert low - 1e-12 <= cost <= high + 1e-12


def test_missing_demo_packages_are_named_before_the_tour_starts(monkeypatch, tmp_path, capsys):
    """Without matplotlib (or torch / scikit-learn when training) the tour says which
    package is missing and the install line, before printing anything; the command line
    turns it into one line on stderr and exit 1."""
    import importlib.util
    import io

    from crossentropy import cli
    from crossentropy.tour import run_tour

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("matplotlib", "sklearn") else real(name, *a),
    )
    stream = io.StringIO()
    with pytest.raises(ModuleNotFoundError, match=r"matplotlib \(the figures\).*sklearn"):
        run_tour(tmp_path, stream=stream)
    assert stream.getvalue() == ""
    with pytest.raises(ModuleNotFoundError) as error:
        run_tour(tmp_path, train=False, stream=stream)
    assert "sklearn" not in str(error.value)
    assert "crossentropy[demo]" in str(error.value)
    assert cli.main(["tour", "--no-train", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "matplotlib" in err


# -- every printed cell, to the digits shown -------------------------------------------


def _texts(section) -> list[str]:
    return [block.text for block in section.blocks if isinstance(block, Text)]


def test_information_and_entropy_tables_print_every_cell(run):
    tour, _, _ = run
    skewed = tour.find("Information").tables()[1]
    # SEED.md section 2: A 1.0 bit, D 3.3 bits.
    assert skewed.title == "Observed frequencies: A 1 bit, D about 3.3 bits"
    words = dict(zip("ABCD", P_WORDS, strict=True))
    entropy = next(s for s in tour.sections if s.title == "Entropy")
    table = entropy.tables()[0]
    expected = [
        [word, f"{p:g}", f"{reference.information(p):.3f}", f"{p * reference.information(p):.3f}"]
        for word, p in words.items()
    ]
    expected.append(["H(P)", "", "", "1.761"])  # SEED.md: H = 1.7609640474436812
    assert [list(row) for row in table.rows] == expected
    binary = entropy.tables()[1]
    # SEED.md section 3: eating today and winning the lottery low, a coin flip high.
    assert [row[3] for row in binary.rows] == ["low", "low", "high"]
    assert [row[2] for row in binary.rows] == [
        f"{reference.binary_entropy(p):.3f}" for p in (0.99, 1e-7, 0.5)
    ]


def test_term_table_and_errata_print_the_peak(run):
    tour, _, _ = run
    section = tour.find("−x log2 x")
    table = section.tables()[0]
    # SEED.md: argmax 1/e = 0.36787944117144233, max 1/(e ln 2) = 0.530737845423043;
    # a grid of 100001 points on [0, 1] finds the same peak to three digits.
    assert [list(row[:2]) for row in table.rows] == [
        ["0", "0.000"],
        ["1/e = 0.368", "0.531"],
        ["0.368", "0.531"],
        ["1", "0.000"],
    ]
    assert table.title == "The term's peak: x = 0.368, height 0.531"
    corrections = [erratum.correct for erratum in section.errata()]
    assert any("(peak 1 bit at p = 0.5)" in text for text in corrections)  # SEED.md erratum 6


def test_box_texts_and_symbol_code_erratum(run):
    tour, _, _ = run
    section = tour.find("Entropy of the two boxes")
    # SEED.md section 6: H(A) = 1.157, H(B) = 1.571 bits.
    assert any(
        "Box B (1.571 bits) is more uncertain than box A (1.157 bits)" in text
        for text in _texts(section)
    )
    # SEED.md erratum 12: one draw at a time, a symbol code needs 1.3 bits.
    assert any(e.correct.endswith("spends 1.3 bits per draw") for e in section.errata())
    assert any("the sum 1.157 is right" in e.correct for e in section.errata())


def test_cross_entropy_table_prints_every_cell(run):
    tour, _, _ = run
    section = next(s for s in tour.sections if s.title == "Cross-entropy")
    table = section.tables()[0]
    h_p = reference.entropy(P_WORDS)
    assert [row[0] for row in table.rows] == ["P itself", "uniform", "reversed", "close", "peaked"]
    for row, q in zip(table.rows, MODELS.values(), strict=True):
        kl = reference.kl_divergence(P_WORDS, q)
        assert row[1] == "[" + ", ".join(f"{v:g}" for v in q) + "]"
        assert row[2:] == (
            f"{reference.cross_entropy(P_WORDS, q):.6f}",
            f"{h_p:.6f}",
            f"{kl:.6f}",
            f"{h_p + kl:.6f}",
        )
    peaked = MODELS["peaked"]
    forward = reference.cross_entropy(P_WORDS, peaked)
    backward = reference.cross_entropy(peaked, P_WORDS)
    assert any(
        f"H(P, Q) = {forward:.3f} but H(Q, P) = {backward:.3f}" in e.correct
        for e in section.errata()
    )


def test_classification_table_prints_every_cell(run):
    tour, _, _ = run
    section = tour.find("in classification")
    before = [[0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]]
    after = [[0.95, 0.02, 0.03], [0.05, 0.9, 0.05], [0.05, 0.08, 0.87]]
    names = ["dog", "cat", "deer"]
    rows = section.tables()[0].rows
    for k, (row, name) in enumerate(zip(rows, names, strict=False)):
        label = [0] * 3
        label[k] = 1
        assert row == (
            f"x{k + 1} ({name})",
            "[" + ", ".join(map(str, label)) + "]",
            "[" + ", ".join(f"{v:g}" for v in before[k]) + "]",
            f"{reference.information(before[k][k]):.3f}",
            "[" + ", ".join(f"{v:g}" for v in after[k]) + "]",
            f"{reference.information(after[k][k]):.3f}",
        )
    assert rows[3] == ("mean", "", "", "1.330", "", "0.142")  # SEED.md section 9
    nats = next(e.correct for e in section.errata() if "nats" in e.correct)
    assert f"1 bit = ln 2 = {math.log(2):.4f} nats" in nats
    assert "0.9215 nats before and 0.0986 after" in nats  # SEED.md: PyTorch's means


def test_summary_table_prints_every_cell(run):
    tour, _, _ = run
    rows = tour.find("Summary").tables()[0].rows
    uniform = [0.25] * 4
    assert [row[2] for row in rows] == [
        "word D: 3.3 bits",  # SEED.md: D 3.3 bits
        "box A 1.157, box B 1.571",  # SEED.md section 6
        f"words with Q uniform: {reference.cross_entropy(P_WORDS, uniform):.3f}",
        f"Q uniform: {reference.kl_divergence(P_WORDS, uniform):.3f}",
    ]
    assert rows[2][2].endswith("2.000")  # SEED.md: Q uniform 2.0


def test_coding_section_prints_the_seed_errata(run):
    tour, _, _ = run
    section = tour.find("coding")
    table = section.tables()[0]
    rows = {row[0]: row for row in table.rows}
    # Kraft sums: 4 · 2^-2 = 1 for code 1; 2^-1 + 2^-2 + 2^-2 + 2^-3 = 1.125 > 1 for code 2
    # (SEED.md erratum 1); Huffman's lengths 1, 2, 3, 3 sum to 1.
    assert rows["Kraft sum"][3:] == ("1.000", "1.125 (invalid)", "1.000")
    assert rows["message bits"][3:] == ("20", "16", "18")
    texts = " ".join(_texts(section))
    # SEED.md erratum 1: code 2's 1.6 bits/word is below the entropy 1.761.
    assert "Its 1.6 bits/word is below the entropy 1.761" in texts
    corrections = [e.correct for e in section.errata()]
    seed_says = [e.seed_says for e in section.errata()]
    assert any("16 bits, 20 % fewer than code 1" in text for text in seed_says)
    assert any(text.endswith("18 bits, 10 % fewer than code 1") for text in corrections)
    # SEED.md erratum 2: words 8 and 9 are mis-encoded.
    assert any(
        text == "words 8 and 9 are mis-encoded; code 2 gives 0 10 11 0 0 111 0 10 11 0"
        for text in corrections
    )


def test_coding_section_measures_the_coder_on_its_sample(run):
    """The coded sizes of the 100,000-word sample against its information content
    −Σ log2 q(x_i), counted from the sample itself: a range coder spends at least that
    and only a few bytes more."""
    import numpy as np

    from crossentropy.tour._coding import SAMPLE_SEED, SAMPLE_SIZE

    tour, _, _ = run
    values = tour.values
    sample = np.random.default_rng(SAMPLE_SEED).choice(4, size=SAMPLE_SIZE, p=P_WORDS)
    counts = np.bincount(sample, minlength=4)

    def ideal(q):
        bits = math.fsum(
            int(c) * reference.information(qk) for c, qk in zip(counts, q, strict=True)
        )
        return bits / SAMPLE_SIZE

    slack = 64 / SAMPLE_SIZE  # a few bytes of coder overhead, per word
    measured = values["coding.arithmetic_bits_per_symbol_P"]
    assert ideal(P_WORDS) <= measured <= ideal(P_WORDS) + slack
    section = tour.find("coding")
    table = section.tables()[1]
    h_p = reference.entropy(P_WORDS)
    names = {"uniform": "uniform", "reversed": "[.1, .2, .2, .5]", "close": "[.4, .3, .2, .1]"}
    names["peaked"] = "[.7, .1, .1, .1]"
    # Huffman's code for each Q spends, on P: uniform 2 bits; reversed: D=1 bit, one of
    # B/C 2, A and the other 3 -> .5·3 + .2·3 + .2·2 + .1·1 = 2.6; close: lengths 1, 2, 3, 3
    # -> 1.8; peaked: A=1 bit, the three tied .1 words 2, 3, 3 -> 1.8 or 1.9 for P.
    huffman = {"uniform": {"2.00"}, "reversed": {"2.60"}, "close": {"1.80"}}
    huffman["peaked"] = {"1.80", "1.90"}
    for row, (key, q) in zip(table.rows, list(MODELS.items())[1:], strict=True):
        bits = values[f"coding.measured_bits_Q_{names[key]}"]
        assert ideal(q) <= bits <= ideal(q) + slack, key
        assert values[f"coding.cross_entropy_Q_{names[key]}"] == pytest.approx(
            reference.cross_entropy(P_WORDS, q), abs=1e-12, rel=0
        )
        assert row[0] == names[key]
        assert row[1:5] == (
            f"{bits:.4f}",
            f"{reference.cross_entropy(P_WORDS, q):.6f}",
            f"{reference.kl_divergence(P_WORDS, q):.6f}",
            f"{bits - h_p:+.4f}",
        )
        assert row[5] in huffman[key], key
    # Only the tied Q has several optimal codes, spending 1.8 to 1.9 bits/word on P.
    assert "numbers of bits on P ([.7, .1, .1, .1]: 1.80 to 1.90 bits/word)" in " ".join(
        _texts(section)
    )


def test_classifier_section_prints_every_cell(run):
    """The section's tables against the same training run (it is deterministic) and
    −log2 q(true class) of its three example images."""
    import numpy as np

    from crossentropy.tour import train_digits_classifier

    tour, _, _ = run
    result = train_digits_classifier(epochs=EPOCHS, seed=0)
    section = tour.find("real classifier")
    losses, examples = section.tables()
    assert losses.rows[1][0] == f"test ({result.n_test} images)"
    assert losses.rows[1][1::2] == (f"{result.test_curve[0]:.4f}", f"{result.test_curve[-1]:.4f}")
    before_bits, after_bits = [], []
    for k, label in enumerate(result.example_labels):
        before = reference.information(float(result.example_before[k][label]))
        after = reference.information(float(result.example_after[k][label]))
        before_bits.append(before)
        after_bits.append(after)
        assert tour.values[f"digits.image{k + 1}.before"] == pytest.approx(before, abs=1e-12)
        assert tour.values[f"digits.image{k + 1}.after"] == pytest.approx(after, abs=1e-12)
        top = sorted(range(10), key=lambda c: -result.example_after[k][c])[:3]
        assert examples.rows[k][4] == ", ".join(
            f"{c}: {result.example_after[k][c]:.2f}" for c in top
        )
        assert examples.rows[k][:2] == (f"test image #{result.example_indices[k]}", str(label))
        assert examples.rows[k][3] == f"{before:.3f}"
        assert examples.rows[k][5] == f"{after:.3f}"
    assert examples.rows[3][3] == f"{math.fsum(before_bits) / 3:.3f}"
    assert examples.rows[3][5] == f"{math.fsum(after_bits) / 3:.3f}"
    accuracy = [
        float(np.mean(np.argmax(q, axis=1) == result.test_labels))
        for q in (result.test_before, result.test_after)
    ]
    assert any(
        f"test accuracy {accuracy[0]:.1%}. After training: test accuracy {accuracy[1]:.1%}." in text
        for text in _texts(section)
    )


def test_seed_reaches_the_classifier(tmp_path):
    pytest.importorskip("torch", reason="the tour's classifier trains with torch")
    pytest.importorskip("sklearn", reason="the tour's classifier loads scikit-learn's digits")
    from crossentropy.tour import train_digits_classifier

    tour = run_tour(tmp_path, epochs=0, seed=1, quiet=True)
    expected = train_digits_classifier(epochs=0, seed=1)
    assert tour.values["digits.test.before"] == pytest.approx(
        expected.test_curve[0], abs=1e-12, rel=0
    )
    # Another seed splits and initialises differently.
    assert expected.test_curve[0] != train_digits_classifier(epochs=0, seed=0).test_curve[0]
