"""The tour's coding section: the seed's codes checked, and cross-entropy measured as bits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["coding_section"]

WORDS = ("A", "B", "C", "D")
P = (0.5, 0.2, 0.2, 0.1)
MESSAGE = "ABCAADABCA"
#: The seed's "code 2" (not decodable).
SEED_CODE_2 = {"A": "0", "B": "10", "C": "11", "D": "111"}
#: The bit string the seed prints for the message under code 2.
SEED_CODE_2_BITS = "0 10 11 0 0 111 0 01 10 0"
#: The models Q of the seed's cross-entropy table (SEED.md).
MODELS_Q = {
    "uniform": (0.25, 0.25, 0.25, 0.25),
    "[.1, .2, .2, .5]": (0.1, 0.2, 0.2, 0.5),
    "[.4, .3, .2, .1]": (0.4, 0.3, 0.2, 0.1),
    "[.7, .1, .1, .1]": (0.7, 0.1, 0.1, 0.1),
}
SAMPLE_SIZE = 100_000
SAMPLE_SEED = 1948


def _record(tour: Any, key: str, value: float) -> float:
    record = getattr(tour, "value", None)
    if record is not None:
        record(f"coding.{key}", value)
    return float(value)


def coding_section(tour: Any) -> None:
    """Codes for the seed's toy language, then P-data coded with four models Q.

    Every number is computed here: code lengths from the codes, entropies from
    :mod:`crossentropy.info`, and measured sizes from the real coder output.

    Args:
        tour: the tour's reporter (``section``, ``text``, ``table``, ``erratum``,
            ``figure``).
    """
    from crossentropy import coding, info

    p = np.array(P)
    p_map = dict(zip(WORDS, P, strict=True))
    entropy = float(info.entropy(p))
    code1 = coding.fixed_length_code(WORDS)
    huffman = coding.huffman_code(p_map)
    code1_bits = _record(tour, "code1_bits", len(code1.encode(MESSAGE)))
    code2_bits = _record(tour, "code2_bits", sum(len(SEED_CODE_2[w]) for w in MESSAGE))
    huffman_bits = _record(tour, "huffman_bits", len(huffman.encode(MESSAGE)))
    kraft2 = _record(tour, "code2_kraft", coding.kraft_sum(len(w) for w in SEED_CODE_2.values()))
    witness = coding.find_ambiguity(SEED_CODE_2)
    huffman_mean = _record(tour, "huffman_bits_per_word", huffman.expected_length(p_map))
    _record(tour, "entropy_P", entropy)

    tour.section("Coding: the bits made real")
    tour.text(
        f"The seed's toy language has four words with frequencies P = {list(P)}. A code "
        "gives each word a string of bits; it is usable only if a string of codewords "
        "can be split back into words. Prefix codes (no codeword begins another) split "
        "without lookahead, and Kraft's inequality sum 2^-l <= 1 says which lengths "
        "a prefix code can have."
    )
    code2_note = "invalid" if kraft2 > 1 else "ok"
    rows = []
    for word in WORDS:
        rows.append(
            [
                word,
                f"{p_map[word]:.1f}",
                f"{float(info.information(p_map[word])):.1f}",
                code1.codewords[word],
                SEED_CODE_2[word],
                huffman.codewords[word],
            ]
        )
    rows.append(
        ["message bits", "", "", f"{code1_bits:.0f}", f"{code2_bits:.0f}", f"{huffman_bits:.0f}"]
    )
    rows.append(
        [
            "Kraft sum",
            "",
            "",
            f"{coding.kraft_sum(code1.lengths):.3f}",
            f"{kraft2:.3f} ({code2_note})",
            f"{coding.kraft_sum(huffman.lengths):.3f}",
        ]
    )
    tour.table(
        ["word", "p", "bits -log2 p", "code 1", "seed's code 2", "Huffman"],
        rows,
        title=f"Three codes for the message {' '.join(MESSAGE)}",
    )
    assert witness is not None  # the seed's code 2 is ambiguous (checked in the tests)
    tour.text(
        f"Code 2 is not a code: {SEED_CODE_2['C']!r} (C) begins {SEED_CODE_2['D']!r} (D), "
        f"its Kraft sum is {kraft2:.3f} > 1, and the bits {witness.bits!r} read as "
        f"{' '.join(witness.first)} and as {' '.join(witness.second)}. Its "
        f"{code2_bits / len(MESSAGE):.1f} bits/word is below the entropy {entropy:.3f}, "
        "which no lossless code can beat."
    )
    tour.erratum(
        f"code 2 (A=0, B=10, C=11, D=111) codes the message in {code2_bits:.0f} bits, "
        f"{100 * (1 - code2_bits / code1_bits):.0f} % fewer than code 1",
        f"code 2 cannot be decoded (Kraft sum {kraft2:.3f} > 1; {witness.bits} = "
        f"{' '.join(witness.first)} = {' '.join(witness.second)}). The best prefix code is "
        f"Huffman's, {_words(huffman.codewords)}: {huffman_bits:.0f} bits, "
        f"{100 * (1 - huffman_bits / code1_bits):.0f} % fewer than code 1",
    )
    correct_bits = " ".join(SEED_CODE_2[w] for w in MESSAGE)
    wrong = [
        i + 1
        for i, (a, b) in enumerate(zip(SEED_CODE_2_BITS.split(), correct_bits.split(), strict=True))
        if a != b
    ]
    tour.erratum(
        f"the message under code 2 is {SEED_CODE_2_BITS}",
        f"words {' and '.join(map(str, wrong))} are mis-encoded; code 2 gives {correct_bits}",
    )
    tour.text(
        f"Huffman's lengths {list(huffman.lengths.values())} spend {huffman_mean:.1f} "
        f"bits/word on P, within one bit of the entropy H(P) = {entropy:.3f} "
        "(H <= L < H + 1). Whole bits per word are the only loss left; an arithmetic "
        "coder removes it on long messages."
    )

    rng = np.random.default_rng(SAMPLE_SEED)
    sample = rng.choice(len(P), size=SAMPLE_SIZE, p=p)
    coded = coding.arithmetic_encode(sample, p)
    measured = _record(tour, "arithmetic_bits_per_symbol_P", 8 * len(coded) / SAMPLE_SIZE)
    ideal = coding.information_content(sample, p) / SAMPLE_SIZE
    huffman_sample = len(huffman.encode(np.array(WORDS)[sample].tolist())) / SAMPLE_SIZE
    tour.text(
        f"A sample of {SAMPLE_SIZE:,} words drawn from P (seed {SAMPLE_SEED}), coded with "
        f"the range coder and the model P, takes {len(coded):,} bytes: {measured:.4f} "
        f"bits/word, against its information content {ideal:.4f} bits/word and the "
        f"entropy {entropy:.4f}. Huffman spends {huffman_sample:.4f}."
    )

    rows = []
    plotted = []
    for name, q in MODELS_Q.items():
        q_array = np.array(q)
        data = coding.arithmetic_encode(sample, q_array)
        bits = 8 * len(data) / SAMPLE_SIZE
        cross = float(info.cross_entropy(p, q_array))
        kl = float(info.kl_divergence(p, q_array))
        huffman_q = coding.huffman_code(q_array).expected_length(p)
        _record(tour, f"measured_bits_Q_{name}", bits)
        _record(tour, f"cross_entropy_Q_{name}", cross)
        rows.append(
            [
                name,
                f"{bits:.4f}",
                f"{cross:.6f}",
                f"{kl:.6f}",
                f"{bits - entropy:+.4f}",
                f"{huffman_q:.2f}",
            ]
        )
        plotted.append((name, cross, bits))
    tour.table(
        [
            "model Q",
            "measured bits/word",
            "H(P, Q)",
            "D(P||Q)",
            "measured - H(P)",
            "Huffman(Q) on P",
        ],
        rows,
        title=f"{SAMPLE_SIZE:,} words from P coded with a model Q (H(P) = {entropy:.6f})",
    )
    tour.text(
        "The coder built for Q spends H(P, Q) = H(P) + D(P||Q) bits per word on data "
        "from P: the divergence is the price of the wrong model, paid in bits."
    )
    spreads = {
        name: spread
        for name, q in MODELS_Q.items()
        if (spread := _optimal_code_costs(q, p))[0] != spread[1]
    }
    if spreads:
        ranges = "; ".join(f"{name}: {lo:.2f} to {hi:.2f}" for name, (lo, hi) in spreads.items())
        tour.text(
            "Where Q has ties, several prefix codes are optimal for Q, and they can spend "
            f"different numbers of bits on P ({ranges} bits/word); the last column is the "
            "code coding.huffman_code builds."
        )
    _figure(tour, plotted, entropy)


def _optimal_code_costs(q: tuple[float, ...], p: np.ndarray) -> tuple[float, float]:
    """Least and most bits per word on P among the prefix codes optimal for Q.

    Every complete set of codeword lengths (Kraft sum 1) up to len(Q) - 1 bits is tried;
    those with Q's least expected length are the optimal codes. Exact for these few
    symbols, in rationals.
    """
    from fractions import Fraction
    from itertools import product

    q_exact = [Fraction(x).limit_denominator(10**6) for x in q]
    p_exact = [Fraction(float(x)).limit_denominator(10**6) for x in p]
    complete = [
        lengths
        for lengths in product(range(1, len(q)), repeat=len(q))
        if sum(Fraction(1, 2**n) for n in lengths) == 1
    ]
    best = min(sum(w * n for w, n in zip(q_exact, ls, strict=True)) for ls in complete)
    costs = [
        sum(w * n for w, n in zip(p_exact, ls, strict=True))
        for ls in complete
        if sum(w * n for w, n in zip(q_exact, ls, strict=True)) == best
    ]
    return float(min(costs)), float(max(costs))


def _words(codewords: dict) -> str:
    return ", ".join(f"{symbol}={word}" for symbol, word in codewords.items())


def _figure(tour: Any, plotted: list[tuple[str, float, float]], entropy: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tour.figure("coding_cross_entropy")
    figure, axes = plt.subplots(figsize=(6, 4))
    names = [name for name, _, _ in plotted]
    positions = np.arange(len(plotted))
    axes.bar(positions - 0.2, [c for _, c, _ in plotted], width=0.4, label="H(P, Q)")
    axes.bar(positions + 0.2, [b for _, _, b in plotted], width=0.4, label="measured")
    axes.axhline(entropy, color="black", linestyle="--", linewidth=1, label="H(P)")
    axes.set_xticks(positions, names)
    axes.set_xlabel("model Q")
    axes.set_ylabel("bits per word")
    axes.set_title("P-data coded with Q: the coder spends H(P, Q)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
