"""The seed's sections: its tables recomputed by :mod:`crossentropy.info`, its errata marked.

Each function writes one section of the seed (see ``SEED.md``) to a
:class:`~crossentropy.tour.Tour`. No number is typed in: every printed value is computed
here, rounded as the seed rounds it, and recorded (``tour.value``) at full precision.
"""

from __future__ import annotations

import math

import numpy as np

from crossentropy import info

__all__ = [
    "BOX_A",
    "BOX_B",
    "CLASSES",
    "PREDICTIONS_AFTER",
    "PREDICTIONS_BEFORE",
    "SOFT_TARGET",
    "WORDS",
    "WORD_PROBABILITIES",
    "boxes_section",
    "classification_section",
    "cross_entropy_section",
    "entropy_section",
    "entropy_tables_section",
    "information_section",
    "loss_section",
    "soft_targets_section",
    "summary_section",
    "term_section",
    "why_section",
]

# The seed's data (its inputs, not its results).
WORDS = ("A", "B", "C", "D")
WORD_PROBABILITIES = (0.5, 0.2, 0.2, 0.1)
BOX_A = (0.1, 0.2, 0.7)
BOX_B = (0.3, 0.3, 0.4)
PRIZES = ("1st", "2nd", "3rd")
CLASSES = ("dog", "cat", "deer")
PREDICTIONS_BEFORE = ((0.3, 0.2, 0.5), (0.2, 0.7, 0.1), (0.3, 0.4, 0.3))
PREDICTIONS_AFTER = ((0.95, 0.02, 0.03), (0.05, 0.9, 0.05), (0.05, 0.08, 0.87))
SOFT_TARGET = (0.9, 0.05, 0.05)
# The models Q that the cross-entropy table codes P-data with (SEED.md, verified table).
CODING_MODELS = (
    ("uniform", (0.25, 0.25, 0.25, 0.25)),
    ("reversed", (0.1, 0.2, 0.2, 0.5)),
    ("close", (0.4, 0.3, 0.2, 0.1)),
    ("peaked", (0.7, 0.1, 0.1, 0.1)),
)


def _vector(values) -> str:
    return "[" + ", ".join(f"{value:g}" for value in values) + "]"


def _term(p: float) -> float:
    """One outcome's share of the entropy, −p log2 p = p · I(p), with 0 · log 0 = 0."""
    return 0.0 if p == 0 else p * float(info.information(p))


def why_section(tour) -> None:
    """Section 1 of the seed: why cross-entropy."""
    tour.section("Why cross-entropy")
    tour.text(
        "Cross-entropy (CE) is the most common loss in deep learning; every framework "
        "ships it. It comes from information theory, where it counts bits. For training "
        "a model it is enough that CE turns the gap between two distributions, the label "
        "and the prediction, into one number that can be minimised. This tour runs the "
        "seed's walkthrough for real: every number below is computed by crossentropy.info "
        "(in bits, log base 2) and rounded as the seed rounds it; where the seed is wrong "
        "the correction is printed beside it, marked ERRATUM."
    )


def information_section(tour) -> None:
    """Section 2: the information −log2 p of each word, uniform and skewed; surprise."""
    tour.section("Information")
    tour.text(
        "The information of an event is the number of bits needed to represent it: "
        "I(x) = −log2 p(x). The seed's toy language has four words A, B, C, D. If all are "
        "equally likely, each needs 2 bits:"
    )
    uniform = np.full(len(WORDS), 0.25)
    rows = []
    for word, p, bits in zip(WORDS, uniform, np.asarray(info.information(uniform)), strict=True):
        tour.value(f"information.uniform.{word}", bits)
        rows.append([word, f"{p:g}", f"{bits:.1f}", f"{bits:.6f}"])
    tour.table(
        ["word", "p", "information (bits)", "6 decimals"],
        rows,
        title="Uniform words: I = −log2 0.25",
    )
    tour.text(
        "But people say A far more often than D. With the observed frequencies the "
        "frequent word carries little information and the rare one much:"
    )
    skewed = np.asarray(WORD_PROBABILITIES)
    rows = []
    for word, p, bits in zip(WORDS, skewed, np.asarray(info.information(skewed)), strict=True):
        tour.value(f"information.skewed.{word}", bits)
        rows.append([word, f"{p:g}", f"{bits:.1f}", f"{bits:.6f}"])
    tour.table(
        ["word", "p", "information (bits)", "6 decimals"],
        rows,
        title=(
            f"Observed frequencies: A {tour.values['information.skewed.A']:.0f} bit, "
            f"D about {tour.values['information.skewed.D']:.1f} bits"
        ),
    )
    tour.text(
        "Information is also surprise. High probability: obvious, little information "
        "(hearing A wakes nobody up). Low probability: surprising, much information "
        "(an unexpected D makes you listen). The next section turns these bit counts "
        "into real codes."
    )


def entropy_section(tour) -> None:
    """Section 3: entropy as expected information; the three intuitive examples."""
    tour.section("Entropy")
    tour.text(
        "Entropy is the information of a whole distribution: the expected information, "
        "H(P) = Σ p(x) · (−log2 p(x)), the least average number of bits per outcome. "
        "For the four words:"
    )
    p = np.asarray(WORD_PROBABILITIES)
    bits = np.asarray(info.information(p))
    rows = [
        [word, f"{pi:g}", f"{ii:.3f}", f"{pi * ii:.3f}"]
        for word, pi, ii in zip(WORDS, p, bits, strict=True)
    ]
    total = tour.value("entropy.words", info.entropy(p))
    rows.append(["H(P)", "", "", f"{total:.3f}"])
    tour.table(
        ["word", "p", "I = −log2 p", "p · I"],
        rows,
        title="Entropy of the words = expected information (bits)",
    )
    tour.text(
        "Entropy also measures how hard an outcome is to predict. The seed's three "
        "examples are yes/no events, so their entropy is the binary entropy "
        "H(p) = −p log2 p − (1−p) log2 (1−p); the probabilities below are illustrative "
        "(the seed gives none):"
    )
    examples = (
        ("I eat today (near certain)", "eat", "eating today", 0.99),
        ("I win the lottery tomorrow (near certainly not)", "lottery", "lottery win", 1e-7),
        ("a coin flip", "coin", "coin flip", 0.5),
    )
    rows = []
    for label, key, _, probability in examples:
        value = tour.value(f"binary.{key}", info.binary_entropy(probability))
        rows.append([label, f"{probability:g}", f"{value:.3f}", "high" if value > 0.5 else "low"])
    tour.table(
        ["event", "p", "H (bits)", "entropy"],
        rows,
        title="Certain either way: low entropy; a toss-up: high",
    )
    from crossentropy import plot

    plot.plot_binary_entropy(
        path=tour.figure("binary_entropy"),
        marks={mark: probability for _, _, mark, probability in examples},
    )


def boxes_section(tour) -> None:
    """Section 4: probability vs entropy, the two prize boxes."""
    tour.section("Probability vs. entropy: two prize boxes")
    tour.text(
        "Two boxes of 10 tickets each. Box A holds 1, 2 and 7 tickets for the 1st, 2nd "
        "and 3rd prize; box B holds 3, 3 and 4. Probability speaks of one event, entropy "
        "of the whole draw:"
    )
    rows = [[prize, f"{a:g}", f"{b:g}"] for prize, a, b in zip(PRIZES, BOX_A, BOX_B, strict=True)]
    tour.table(["prize", "box A", "box B"], rows, title="Probabilities of each prize")
    tour.text(
        f"Box B gives the better chance of a 1st prize ({BOX_B[0]:g} against {BOX_A[0]:g}), "
        "and it is also "
        "the harder box to predict: in box A the 3rd prize is the safe guess. The next "
        "two sections make 'harder to predict' a number."
    )


def term_section(tour) -> None:
    """Section 5: the term −x log2 x, its maximum, and the errata on its meaning."""
    tour.section("The entropy term −x log2 x")
    argmax = tour.value("term.argmax", math.exp(-1.0))  # d/dx (−x ln x) = 0 at x = 1/e
    peak = tour.value("term.max", _term(argmax))
    grid = np.linspace(0.0, 1.0, 100001)
    grid_terms = grid[1:] * np.asarray(info.information(grid[1:]))
    grid_argmax = float(grid[1:][int(np.argmax(grid_terms))])
    at_one = tour.value("term.at_one", _term(1.0))
    at_zero = tour.value("term.at_zero", _term(0.0))
    tour.text(
        "Entropy adds one term −p log2 p per outcome. As a function −x log2 x of the "
        "probability x on [0, 1] it is 0 at both ends and peaks where its derivative "
        "−log2 x − log2 e is 0, at x = 1/e:"
    )
    tour.table(
        ["x", "−x log2 x (bits)", "how"],
        [
            ["0", f"{at_zero:.3f}", "0 · log 0 = 0 (a convention)"],
            [f"1/e = {argmax:.3f}", f"{peak:.3f}", "the maximum, 1/(e ln 2)"],
            [
                f"{grid_argmax:.3f}",
                f"{_term(grid_argmax):.3f}",
                "largest on a grid of 100001 points",
            ],
            ["1", f"{at_one:.3f}", "a certain outcome needs no bits"],
        ],
        title=f"The term's peak: x = {argmax:.3f}, height {peak:.3f}",
    )
    tour.erratum(
        "uncertainty is 1 at p = 1",
        f"the term is {at_one:.0f} at p = 1: 1 · log2 1 = 0; a certain event is "
        "not uncertain at all",
    )
    tour.erratum(
        "an event of probability near 0 or near 1 gives no information",
        "near 1 yes (−log2 p → 0), but near 0 it carries much information "
        "(−log2 p → ∞); what goes to 0 at both ends is the weighted term −p log2 p, an "
        "outcome's contribution to H, not 'the uncertainty of the event'. The intuition "
        "'certain either way means predictable' is the binary entropy (peak "
        f"{float(info.binary_entropy(0.5)):.0f} bit at p = 0.5), shown in the Entropy section",
    )
    from crossentropy import plot

    plot.plot_information_term(path=tour.figure("entropy_term"))


def entropy_tables_section(tour) -> None:
    """Section 6: the entropy tables of the two boxes."""
    tour.section("Entropy of the two boxes")
    tour.text("Adding each prize's term gives the entropy of each box:")
    for name, box in (("A", BOX_A), ("B", BOX_B)):
        rows = []
        for index, (prize, p) in enumerate(zip(PRIZES, box, strict=True), start=1):
            term = tour.value(f"box{name}.term{index}", _term(p))
            rows.append([prize, f"{p:g}", f"{term:.3f}"])
        total = tour.value(f"box{name}.H", info.entropy(box))
        rows.append(["H", f"{sum(box):g}", f"{total:.3f}"])
        tour.table(["prize", "p", "−p log2 p (bits)"], rows, title=f"Box {name}")
        if name == "A":
            tour.erratum(
                "3rd prize (p = 0.7): 0.361",
                f"{tour.values['boxA.term3']:.3f} "
                f"(= {tour.values['boxA.term3']:.6f}; the sum {total:.3f} is right)",
            )
    tour.text(
        f"Box B ({tour.values['boxB.H']:.3f} bits) is more uncertain than box A "
        f"({tour.values['boxA.H']:.3f} bits): its outcome is harder to predict, although "
        "its odds of a 1st prize are better."
    )
    from crossentropy import coding

    symbol_code = tour.value(
        "boxA.huffman_length", coding.huffman_code(BOX_A).expected_length(BOX_A)
    )
    tour.erratum(
        f"a draw from box A takes {tour.values['boxA.H']:.3f} bits to represent",
        f"{tour.values['boxA.H']:.3f} bits is the least average per draw, reached only "
        "in the long run by coding many draws together (arithmetic coding); one draw "
        f"at a time, the best symbol code (Huffman) spends {symbol_code:.1f} bits per draw",
    )
    from crossentropy import plot

    plot.plot_entropy_terms(
        {"box A": BOX_A, "box B": BOX_B},
        path=tour.figure("box_entropy_terms"),
        outcome_labels=PRIZES,
        outcome_name="prize",
    )


def cross_entropy_section(tour) -> None:
    """Section 7: cross-entropy, CE ≥ H, and the KL divergence as the gap."""
    tour.section("Cross-entropy")
    p = np.asarray(WORD_PROBABILITIES)
    h_p = tour.value("ce.H_P", info.entropy(p))
    tour.text(
        "Data come from P but are coded with a code made for Q. The bits spent per "
        "symbol are the cross-entropy H(P, Q) = −Σ p(x) log2 q(x). It splits into "
        "H(P), the least possible, plus the Kullback-Leibler divergence D(P‖Q), the "
        "bits wasted by using the wrong model. For the words P = "
        f"{_vector(WORD_PROBABILITIES)}:"
    )
    rows = []
    for key, q in (("self", WORD_PROBABILITIES), *CODING_MODELS):
        cross = tour.value(f"ce.{key}", info.cross_entropy(p, q))
        kl = tour.value(f"kl.{key}", info.kl_divergence(p, q))
        tour.value(f"ce.{key}.identity_gap", cross - (h_p + kl))
        rows.append(
            [
                "P itself" if key == "self" else key,
                _vector(q),
                f"{cross:.6f}",
                f"{h_p:.6f}",
                f"{kl:.6f}",
                f"{h_p + kl:.6f}",
            ]
        )
    tour.table(
        ["Q", "q", "H(P, Q)", "H(P)", "D(P‖Q)", "H(P) + D(P‖Q)"],
        rows,
        title="P-data coded with Q: H(P, Q) = H(P) + D(P‖Q) ≥ H(P) (bits)",
    )
    tour.erratum(
        "cross-entropy is always greater than entropy: H(P, Q) > H(P)",
        "H(P, Q) ≥ H(P), with equality if and only if Q = P (Gibbs' inequality: "
        f"D(P‖Q) ≥ 0); above, Q = P gives {tour.values['ce.self']:.6f} = H(P)",
    )
    q = dict(CODING_MODELS)["peaked"]
    forward = tour.value("ce.peaked.forward", info.cross_entropy(p, q))
    backward = tour.value("ce.peaked.backward", info.cross_entropy(q, p))
    tour.erratum(
        "cross-entropy measures the distance between two distributions",
        "it is not a distance: H(P, P) = H(P) is not 0, and it is asymmetric: "
        f"H(P, Q) = {forward:.3f} but H(Q, P) = {backward:.3f} for Q = {_vector(q)}",
    )
    tour.text(
        "The further Q moves from P, the more bits the code wastes. The figure moves Q "
        "from P to the reversed frequencies and shades the gap D(P‖Q) above the floor H(P)."
    )
    from crossentropy import plot

    plot.plot_cross_entropy_gap(
        p, dict(CODING_MODELS)["reversed"], path=tour.figure("cross_entropy_gap")
    )


def loss_section(tour) -> None:
    """Section 8: cross-entropy as a loss."""
    tour.section("Cross-entropy as a loss")
    tour.text(
        "Let P be the label and Q the model's prediction. H(P, Q) is smallest when Q = P "
        "and grows as Q moves away, so training lowers the cross-entropy between the "
        "labels and the predictions; what it lowers is exactly the D(P‖Q) part, since "
        "H(P) of the labels is fixed."
    )


def classification_section(tour) -> None:
    """Section 9: the seed's three-instance classification example, before and after."""
    tour.section("Cross-entropy in classification")
    labels = np.eye(len(CLASSES))
    tour.text(
        f"Classes {list(CLASSES)}; each label is one-hot, so every term but the true "
        "class vanishes and CE = −log2 q(true class). Three instances x1 = dog, "
        "x2 = cat, x3 = deer:"
    )
    tour.erratum(
        "classes [dog, cat, photo]; x2 (cat) = [0, 0, 1]",
        "classes [dog, cat, deer]; x1 (dog) = [1, 0, 0], x2 (cat) = [0, 1, 0], "
        "x3 (deer) = [0, 0, 1]; only these labels give the seed's CE values",
    )
    rows = []
    means = {}
    for stage, predictions in (("before", PREDICTIONS_BEFORE), ("after", PREDICTIONS_AFTER)):
        values = info.cross_entropy(labels, np.asarray(predictions))
        for index, value in enumerate(np.asarray(values), start=1):
            tour.value(f"classification.{stage}.x{index}", value)
        means[stage] = tour.value(f"classification.{stage}.mean", np.mean(values))
    for index, name in enumerate(CLASSES, start=1):
        rows.append(
            [
                f"x{index} ({name})",
                _vector(labels[index - 1].astype(int)),
                _vector(PREDICTIONS_BEFORE[index - 1]),
                f"{tour.values[f'classification.before.x{index}']:.3f}",
                _vector(PREDICTIONS_AFTER[index - 1]),
                f"{tour.values[f'classification.after.x{index}']:.3f}",
            ]
        )
    rows.append(["mean", "", "", f"{means['before']:.3f}", "", f"{means['after']:.3f}"])
    tour.table(
        ["instance", "label P", "prediction before", "CE before", "prediction after", "CE after"],
        rows,
        title="Training raises q(true class) and lowers CE (bits)",
    )
    nats = _mean_loss_in_nats()
    tour.value("classification.before.mean_nats", nats["before"])
    tour.value("classification.after.mean_nats", nats["after"])
    tour.erratum(
        f"mean CE {means['before']:.3f} (log base left implicit)",
        f"{means['before']:.3f} bits; frameworks use ln, so PyTorch (and "
        "crossentropy.losses.CrossEntropyLoss, nats by default) print "
        f"{nats['before']:.4f} nats before and {nats['after']:.4f} after; "
        f"1 bit = ln 2 = {math.log(2):.4f} nats",
    )
    perfect = tour.value("classification.perfect", np.mean(info.cross_entropy(labels, labels)))
    tour.text(
        f"A perfect prediction (Q = the one-hot label) gives CE = {perfect:.1f}: the "
        "true class costs −log2 1 = 0 bits and the other classes have p = 0."
    )
    tour.erratum(
        "0 × ∞ = 0 (the other classes' terms)",
        "that is a convention, not arithmetic: the sum runs only over outcomes with "
        "p > 0 (crossentropy.info does so); in floating point 0 × inf is NaN",
    )


def _mean_loss_in_nats() -> dict[str, float]:
    """The seed's mean CE as PyTorch computes it: our loss in its default unit, nats.

    Without torch (a tour run with ``--no-train`` needs only matplotlib) the same mean
    comes from :func:`crossentropy.info.cross_entropy` with ``base=math.e``.
    """
    try:
        import torch

        from crossentropy.losses import CrossEntropyLoss
    except ImportError:
        labels = np.eye(len(CLASSES))
        return {
            stage: float(np.mean(info.cross_entropy(labels, predictions, base=math.e)))
            for stage, predictions in (("before", PREDICTIONS_BEFORE), ("after", PREDICTIONS_AFTER))
        }

    loss = CrossEntropyLoss()  # nats, like torch.nn.CrossEntropyLoss
    targets = torch.arange(len(CLASSES))
    out = {}
    for stage, predictions in (("before", PREDICTIONS_BEFORE), ("after", PREDICTIONS_AFTER)):
        # log q as logits: softmax(log q) = q because each prediction sums to 1.
        logits = torch.log(torch.tensor(predictions, dtype=torch.float64))
        out[stage] = float(loss(logits, targets))
    return out


def soft_targets_section(tour) -> None:
    """Section 10: soft targets: the least CE is H(P), 0 only for one-hot P."""
    tour.section("Soft targets: how low can the loss go?")
    target = np.asarray(SOFT_TARGET)
    floor = tour.value("soft.H", info.entropy(target))
    self_ce = tour.value("soft.CE", info.cross_entropy(target, target))
    tour.text(
        "The least cross-entropy for a label P is CE(P, P) = H(P). One-hot labels have "
        "H = 0, which is why a classifier's loss can approach 0. A soft label cannot:"
    )
    tour.table(
        ["label P", "H(P)", "CE(P, P)", "least possible loss"],
        [[_vector(SOFT_TARGET), f"{floor:.3f}", f"{self_ce:.3f}", f"{self_ce:.3f} bits"]],
        title="Soft target (e.g. label smoothing)",
    )
    tour.erratum(
        "the cross-entropy loss can go down to 0",
        f"CE(P, P) = H(P), which is 0 only for one-hot P; for {_vector(SOFT_TARGET)} the "
        f"least possible CE is {self_ce:.3f} bits",
    )


def summary_section(tour) -> None:
    """Section 11: the summary."""
    tour.section("Summary")
    tour.table(
        ["quantity", "counts", "example from this tour"],
        [
            [
                "information −log2 p",
                "bits for one event",
                f"word D: {tour.values['information.skewed.D']:.1f} bits",
            ],
            [
                "entropy H(P)",
                "least average bits per outcome of P",
                f"box A {tour.values['boxA.H']:.3f}, box B {tour.values['boxB.H']:.3f}",
            ],
            [
                "cross-entropy H(P, Q)",
                "bits per outcome of P coded with Q",
                f"words with Q uniform: {tour.values['ce.uniform']:.3f}",
            ],
            [
                "KL divergence D(P‖Q)",
                "bits wasted: H(P, Q) − H(P) ≥ 0",
                f"Q uniform: {tour.values['kl.uniform']:.3f}",
            ],
        ],
    )
    tour.text(
        "Cross-entropy is smallest, equal to H(P), exactly when Q = P; that is why it is a "
        "loss. Training lowers it, in bits (base 2) or nats (base e): the same quantity "
        "up to the factor ln 2."
    )
