"""Prefix codes: Huffman optimality against brute force, Kraft, canonical form, the seed."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossentropy import coding
from crossentropy.coding import DecodeError

SEED_P = {"A": 0.5, "B": 0.2, "C": 0.2, "D": 0.1}  # SEED.md
SEED_MESSAGE = "ABCAADABCA"
SEED_CODE_2 = {"A": "0", "B": "10", "C": "11", "D": "111"}


def entropy_reference(p) -> float:
    """H(p) in bits, as the formula reads (0 log 0 = 0)."""
    return -sum(x * math.log2(x) for x in p if x > 0)


def brute_force_min_length(p) -> float:
    """The least Σ p_i l_i over all length vectors with Kraft sum <= 1 (lengths 1..n-1)."""
    n = len(p)
    best = math.inf
    for lengths in itertools.product(range(1, n), repeat=n):
        if sum(2.0**-l for l in lengths) <= 1.0:
            best = min(best, sum(pi * li for pi, li in zip(p, lengths, strict=True)))
    return best


def distributions(min_size=1, max_size=8):
    return (
        st.lists(
            st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
            min_size=min_size,
            max_size=max_size,
        )
        .filter(lambda w: sum(w) > 1e-3)
        .map(lambda w: (np.asarray(w) / np.sum(w)).tolist())
    )


# -- the seed ---------------------------------------------------------------------------


def test_seed_huffman_lengths_and_message_bits():
    code = coding.huffman_code(SEED_P)
    assert code.lengths == {"A": 1, "B": 2, "C": 3, "D": 3}  # SEED.md: 1, 2, 3, 3
    assert code.codewords == {"A": "0", "B": "10", "C": "110", "D": "111"}
    assert len(code.encode(SEED_MESSAGE)) == 18  # SEED.md: 18 bits
    assert code.expected_length(SEED_P) == pytest.approx(1.8, abs=1e-12)
    assert code.decode(code.encode(SEED_MESSAGE)) == list(SEED_MESSAGE)


def test_seed_code_1_is_20_bits():
    code = coding.fixed_length_code("ABCD")
    assert code.codewords == {"A": "00", "B": "01", "C": "10", "D": "11"}
    assert len(code.encode(SEED_MESSAGE)) == 20  # SEED.md


def test_seed_code_2_is_invalid_with_kraft_and_witness():
    assert coding.kraft_sum(len(w) for w in SEED_CODE_2.values()) == 1.125  # SEED.md
    assert not coding.is_prefix_free(SEED_CODE_2)
    witness = coding.find_ambiguity(SEED_CODE_2)
    assert witness == ("1110", ("C", "B"), ("D", "A"))  # SEED.md erratum 1
    with pytest.raises(ValueError, match=r"1110.*C B.*D A") as info:
        coding.PrefixCode(SEED_CODE_2)
    assert "1.125" in str(info.value)


def test_array_input_gives_integer_symbols():
    code = coding.huffman_code(np.array([0.5, 0.2, 0.2, 0.1]))
    assert code.lengths == {0: 1, 1: 2, 2: 3, 3: 3}
    assert code.decode(code.encode([0, 3, 2])) == [0, 3, 2]


# -- Huffman optimality -------------------------------------------------------------------


@given(distributions(min_size=2, max_size=6))
def test_huffman_matches_brute_force_optimum(p):
    code = coding.huffman_code(p)
    assert code.expected_length(p) == pytest.approx(brute_force_min_length(p), abs=1e-9)


def test_huffman_optimal_on_seeded_cases(rng):
    for n in (2, 3, 4, 5, 6, 7):
        for _ in range(5):
            p = rng.dirichlet(np.full(n, 0.5)).tolist()
            p[-1] = 1.0 - sum(p[:-1])
            if p[-1] < 0:
                continue
            code = coding.huffman_code(p)
            assert code.expected_length(p) == pytest.approx(brute_force_min_length(p), abs=1e-9)


@given(distributions(min_size=1, max_size=40))
def test_entropy_bound_and_kraft(p):
    code = coding.huffman_code(p)
    length = code.expected_length(p)
    h = entropy_reference(p)
    assert h - 1e-9 <= length < h + 1 + 1e-9
    assert coding.is_prefix_free(code.codewords)
    if len(p) >= 2:
        assert coding.kraft_sum(code.lengths) == 1.0
    else:
        assert code.codewords == {0: "0"}


@given(distributions(min_size=1, max_size=12), st.data())
def test_round_trip(p, data):
    code = coding.huffman_code(p)
    message = data.draw(st.lists(st.integers(0, len(p) - 1), max_size=60))
    bits = code.encode(message)
    assert len(bits) == sum(code.lengths[s] for s in message)
    assert code.decode(bits) == message


def test_canonical_form(rng):
    p = rng.dirichlet(np.ones(30))
    p[-1] = 1.0 - p[:-1].sum()
    code = coding.huffman_code(p)
    ranked = sorted(code.symbols, key=lambda s: (code.lengths[s], s))
    previous = None
    for symbol in ranked:
        word = code.codewords[symbol]
        if previous is not None:
            # Each codeword is the previous one plus 1, shifted to the new length.
            expected = (int(previous, 2) + 1) << (len(word) - len(previous))
            assert int(word, 2) == expected
        previous = word
    assert code.codewords[ranked[0]] == "0" * code.lengths[ranked[0]]


def test_tie_break_prefers_earlier_symbols():
    code = coding.huffman_code({"x": 0.25, "y": 0.25, "z": 0.25, "w": 0.125, "v": 0.125})
    assert code.lengths == {"x": 2, "y": 2, "z": 2, "w": 3, "v": 3}
    code = coding.huffman_code({"C": 0.2, "B": 0.2, "A": 0.5, "D": 0.1})
    assert code.lengths == {"C": 2, "B": 3, "A": 1, "D": 3}


def _optimal_length_vectors(weights):
    """Brute force: every length vector (1..n-1) of Kraft sum <= 1 and least Σ w_i l_i."""
    n = len(weights)
    best, found = math.inf, []
    for lengths in itertools.product(range(1, n), repeat=n):
        if sum(1 << (n - length) for length in lengths) > 1 << n:  # Kraft, in integers
            continue
        cost = sum(w * length for w, length in zip(weights, lengths, strict=True))
        if cost < best:
            best, found = cost, [lengths]
        elif cost == best:
            found.append(lengths)
    return found


@st.composite
def dyadic_weights(draw):
    """Positive integer weights summing to 32, so that w / 32 and every sum of them are
    exact floats and ties between merged and single nodes are real ties."""
    n = draw(st.integers(2, 6))
    cuts = sorted(draw(st.lists(st.integers(1, 31), min_size=n - 1, max_size=n - 1, unique=True)))
    return [b - a for a, b in itertools.pairwise([0, *cuts, 32])]


@given(dyadic_weights())
def test_huffman_ties_give_the_shortest_longest_codeword(weights):
    # Merging merged nodes after single symbols of equal weight (Schwartz, 1964) gives,
    # among all optimal codes, the least longest codeword and the least total length.
    code = coding.huffman_code([w / 32 for w in weights])
    lengths = list(code.lengths.values())
    optimal = _optimal_length_vectors(weights)
    assert tuple(lengths) in optimal
    assert max(lengths) == min(max(v) for v in optimal)
    assert sum(lengths) == min(sum(v) for v in optimal)


def test_huffman_ties_on_the_minimum_variance_example():
    # [.4, .2, .2, .1, .1]: the codes with lengths (1, 2, 3, 4, 4) and (2, 2, 2, 3, 3)
    # are both optimal (2.2 bits); merging merged nodes last gives the second.
    code = coding.huffman_code([0.4, 0.2, 0.2, 0.1, 0.1])
    assert list(code.lengths.values()) == [2, 2, 2, 3, 3]
    assert code.expected_length([0.4, 0.2, 0.2, 0.1, 0.1]) == pytest.approx(
        brute_force_min_length([0.4, 0.2, 0.2, 0.1, 0.1]), abs=1e-12
    )


_STABILITY_SCRIPT = """
import json
from crossentropy import coding
p = {"alpha": .15, "beta": .15, "gamma": .15, "delta": .15, "eps": .1, "zeta": .1,
     "eta": .1, "theta": .05, "iota": .05}
print(json.dumps(coding.huffman_code(p).codewords))
"""


def test_canonical_codes_stable_across_runs():
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _STABILITY_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1]
    assert (
        outputs[0]
        == coding.huffman_code(
            {
                "alpha": 0.15,
                "beta": 0.15,
                "gamma": 0.15,
                "delta": 0.15,
                "eps": 0.1,
                "zeta": 0.1,
                "eta": 0.1,
                "theta": 0.05,
                "iota": 0.05,
            }
        ).codewords
    )


def test_zero_probability_symbols_still_get_codewords():
    code = coding.huffman_code([0.5, 0.5, 0.0])
    assert set(code.lengths) == {0, 1, 2}
    assert code.decode(code.encode([2, 0, 1])) == [2, 0, 1]


# -- fixed length, Kraft, prefix-freeness ---------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 257])
def test_fixed_length(n):
    code = coding.fixed_length_code(range(n))
    width = max(1, math.ceil(math.log2(n)))
    assert set(code.lengths.values()) == {width}
    assert code.symbols == list(range(n))
    assert [int(word, 2) for word in code.codewords.values()] == list(range(n))
    assert coding.is_prefix_free(code.codewords)
    assert code.decode(code.encode(list(range(n)))) == list(range(n))


def test_kraft_sum_values():
    assert coding.kraft_sum([1, 1]) == 1.0
    assert coding.kraft_sum([]) == 0.0
    assert coding.kraft_sum({"a": 3}) == 0.125
    with pytest.raises(ValueError, match="non-negative integers"):
        coding.kraft_sum([1, -1])
    with pytest.raises(ValueError, match="non-negative integers"):
        coding.kraft_sum([1.5])


def _is_prefix_free_reference(words):
    return not any(a != b and b.startswith(a) for a in words for b in words) and len(
        set(words)
    ) == len(words)


@given(st.lists(st.text(alphabet="01", min_size=1, max_size=4), min_size=1, max_size=6))
def test_is_prefix_free_matches_pairwise_reference(words):
    assert coding.is_prefix_free(words) == _is_prefix_free_reference(words)


def _shortest_ambiguous_length(words, limit):
    """Brute force: the shortest bit string with two distinct parses, up to `limit` bits."""
    for length in range(1, limit + 1):
        for bits in itertools.product("01", repeat=length):
            s = "".join(bits)
            parses = [0] * (length + 1)
            parses[0] = 1
            for end in range(1, length + 1):
                parses[end] = sum(
                    parses[end - len(w)]
                    for w in words
                    if len(w) <= end and s[end - len(w) : end] == w
                )
            if parses[length] >= 2:
                return length
    return None


@given(
    st.lists(st.text(alphabet="01", min_size=1, max_size=3), min_size=2, max_size=4, unique=True)
)
def test_find_ambiguity_is_a_shortest_witness(words):
    witness = coding.find_ambiguity(words)
    brute = _shortest_ambiguous_length(words, 9)
    if witness is None:
        assert brute is None
        return
    assert "".join(witness.first) == witness.bits == "".join(witness.second)
    assert witness.first != witness.second
    assert all(w in words for w in witness.first + witness.second)
    assert brute == len(witness.bits)


def test_uniquely_decodable_but_not_prefix_free():
    assert coding.find_ambiguity(["0", "01"]) is None
    with pytest.raises(ValueError, match="uniquely decodable but needs lookahead"):
        coding.PrefixCode({"a": "0", "b": "01"})


def test_duplicate_codewords_are_ambiguous():
    witness = coding.find_ambiguity({"a": "01", "b": "01"})
    assert witness == ("01", ("a",), ("b",))


# -- decoding errors and input validation ---------------------------------------------------


def test_decode_rejects_partial_codeword():
    code = coding.huffman_code(SEED_P)
    with pytest.raises(DecodeError, match="ends inside a codeword"):
        code.decode("01011")
    with pytest.raises(ValueError, match=r"only .0. and .1."):  # DecodeError is a ValueError
        code.decode("0102")


def test_decode_rejects_pattern_of_incomplete_code():
    code = coding.PrefixCode({"a": "0", "b": "10"})
    with pytest.raises(DecodeError, match="starts no codeword"):
        code.decode("011")


def test_encode_rejects_unknown_symbol():
    with pytest.raises(ValueError, match=r"symbols of this code; got 'E' at position 1"):
        coding.huffman_code(SEED_P).encode("AE")


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        ([0.5, 0.6], "sum to 1"),
        ([], "at least one symbol"),
        ([0.5, -0.5, 1.0], "non-negative"),
        ([[0.5, 0.5]], "1-D"),
        ([float("nan"), 1.0], "finite"),
    ],
)
def test_huffman_rejects_bad_probabilities(probabilities, message):
    with pytest.raises(ValueError, match=message):
        coding.huffman_code(probabilities)


def test_prefix_code_rejects_bad_codewords():
    with pytest.raises(ValueError, match="strings of '0' and '1'"):
        coding.PrefixCode({"a": "0", "b": "12"})
    with pytest.raises(TypeError, match="mapping"):
        coding.PrefixCode(["0", "1"])
    with pytest.raises(ValueError, match="Kraft sum"):
        coding.PrefixCode.canonical({"a": 1, "b": 1, "c": 1})


def test_expected_length_checks_distribution():
    code = coding.huffman_code(SEED_P)
    with pytest.raises(ValueError, match="unknown"):
        code.expected_length({"E": 1.0})
    with pytest.raises(ValueError, match="one entry per symbol"):
        code.expected_length([0.5, 0.5])


# -- Kraft sums decided exactly ----------------------------------------------------------


def _kraft_exact(lengths):
    from fractions import Fraction

    return sum((Fraction(1, 2**length) for length in lengths), Fraction(0))


@given(st.lists(st.integers(0, 1200), max_size=12))
def test_kraft_sum_is_the_exact_sum_rounded_up(lengths):
    from fractions import Fraction

    exact = _kraft_exact(lengths)
    total = coding.kraft_sum(lengths)
    assert Fraction(total) >= exact
    assert Fraction(math.nextafter(total, -math.inf)) < exact or total == exact == 0
    assert (total <= 1) == (exact <= 1)


@pytest.mark.parametrize("lengths", [[1, 1, 54], [1, 1, 100], [1, 2, 3, 3, 2000]])
def test_kraft_sum_just_above_one_is_not_one(lengths):
    # The float sum rounded these to 1.0, so `kraft_sum(l) <= 1` wrongly said a prefix
    # code with these lengths exists.
    assert coding.kraft_sum(lengths) > 1
    with pytest.raises(ValueError, match="Kraft sum <= 1"):
        coding.PrefixCode.canonical(dict(enumerate(lengths, start=1)))


def test_kraft_sum_of_a_very_long_codeword_is_not_zero():
    assert 0 < coding.kraft_sum([1100]) == math.ulp(0.0)


def test_canonical_and_kraft_reject_bad_containers():
    with pytest.raises(ValueError, match="at least one symbol"):
        coding.PrefixCode.canonical({})
    with pytest.raises(TypeError, match="`lengths` must be a mapping"):
        coding.PrefixCode.canonical([1, 2, 2])
    with pytest.raises(TypeError, match="`lengths` must be an iterable"):
        coding.kraft_sum(3)


@pytest.mark.parametrize(
    "probabilities", ["abc", {0.5, 0.25}, None, {"a": "x"}, {"a": [0.5, 0.5]}, [[0.5], [0.5, 0]]]
)
def test_huffman_rejects_non_numbers_with_a_named_type_error(probabilities):
    with pytest.raises(TypeError, match="`probabilities` must"):
        coding.huffman_code(probabilities)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_huffman_accepts_distributions_normalised_in_low_precision(dtype):
    # [0.1] * 5 + [0.5] in float32 sums to 1 + 1.5e-8: it was rejected by a float64
    # tolerance.
    p = np.array([0.1] * 5 + [0.5], dtype=dtype)
    p = p / p.sum()
    reference = p.astype(np.float64)
    reference = reference / reference.sum()
    code = coding.huffman_code(p)
    assert code.expected_length(reference) == pytest.approx(
        brute_force_min_length(reference.tolist()), abs=1e-12
    )
    with pytest.raises(ValueError, match="sum to 1"):
        coding.huffman_code(np.array([0.5, 0.4], dtype=dtype))


def test_fixed_length_code_rejects_non_iterables_and_unhashables():
    with pytest.raises(TypeError, match="`symbols` must be an iterable of hashable"):
        coding.fixed_length_code(5)
    with pytest.raises(TypeError, match="`symbols` must be an iterable of hashable"):
        coding.fixed_length_code([[1], [2]])


@pytest.mark.parametrize(
    "lengths",
    [{"a": 0}, {"a": 1, "b": 0}, {"a": -1}, {"a": True, "b": True}, {"a": 1.0, "b": 1}],
)
def test_canonical_rejects_lengths_that_are_not_positive_integers(lengths):
    with pytest.raises(ValueError, match="`lengths` must be positive integers"):
        coding.PrefixCode.canonical(lengths)


def test_kraft_sum_rejects_booleans():
    with pytest.raises(ValueError, match="non-negative integers"):
        coding.kraft_sum([True, True])


def test_fixed_length_code_rejects_repeated_and_missing_symbols():
    with pytest.raises(ValueError, match="`symbols` must be distinct"):
        coding.fixed_length_code("ABA")
    with pytest.raises(ValueError, match="at least one symbol"):
        coding.fixed_length_code([])


@pytest.mark.parametrize("excess", [1e-6, -1e-6, 1e-4])
def test_huffman_rejects_float64_probabilities_a_little_off_one(excess):
    # In float64 a sum off by 1e-6 is not rounding error: the tolerance is about 1.5e-8.
    p = [0.25, 0.25, 0.5 + excess]
    with pytest.raises(ValueError, match="sum to 1"):
        coding.huffman_code(p)
    coding.huffman_code([0.25, 0.25, 0.5 + 1e-12])  # rounding error is accepted


def test_violation_message_of_a_complete_code_claims_no_kraft_excess():
    # {0, 01, 11} has Kraft sum exactly 1 and is uniquely decodable (its reversal is
    # prefix-free), but '0' is a prefix of '01'.
    words = {"a": "0", "b": "01", "c": "11"}
    assert coding.kraft_sum(len(w) for w in words.values()) == 1.0
    with pytest.raises(ValueError, match="prefix-free") as info:
        coding.PrefixCode(words)
    assert "'0' (a) a prefix of '01' (b)" in str(info.value)
    assert "Kraft" not in str(info.value)
    assert "uniquely decodable but needs lookahead" in str(info.value)


def test_encode_rejects_unhashable_symbols_as_unknown():
    with pytest.raises(ValueError, match=r"symbols of this code; got \['A'\] at position 0"):
        coding.huffman_code(SEED_P).encode([["A"]])


@pytest.mark.parametrize("codewords", [None, 3, 1.5])
def test_codewords_that_are_not_a_collection_are_named(codewords):
    for function in (coding.is_prefix_free, coding.find_ambiguity):
        with pytest.raises(TypeError, match=r"`codewords` must be a mapping .* got "):
            function(codewords)


def test_a_single_string_is_not_a_list_of_codewords():
    for function in (coding.is_prefix_free, coding.find_ambiguity):
        with pytest.raises(TypeError, match=r"got the single string '0110'"):
            function("0110")


def test_is_prefix_free_counts_equal_codewords_as_a_violation():
    assert coding.is_prefix_free(["0", "10", "11"])
    assert not coding.is_prefix_free(["0", "10", "10"])
    assert not coding.is_prefix_free({"a": "1", "b": "1"})


def test_prefix_code_rejects_empty_and_non_string_codewords():
    with pytest.raises(ValueError, match="`codewords` must hold at least one symbol; got none"):
        coding.PrefixCode({})
    with pytest.raises(TypeError, match=r"`codewords` must be strings of '0' and '1'; got 0"):
        coding.PrefixCode({"a": 0})
    with pytest.raises(ValueError, match=r"non-empty strings of '0' and '1'; got ''"):
        coding.PrefixCode({"a": ""})


def test_codewords_property_is_a_copy():
    code = coding.huffman_code(SEED_P)
    words = code.codewords
    words["A"] = "1"
    assert code.codewords == {"A": "0", "B": "10", "C": "110", "D": "111"}
    assert code.encode("A") == "0"


def test_encode_of_a_non_iterable_names_the_argument():
    with pytest.raises(TypeError, match=r"`symbols` must be an iterable of symbols; got int"):
        coding.huffman_code(SEED_P).encode(5)


def test_expected_length_rejects_non_numbers_and_bad_sums():
    code = coding.huffman_code(SEED_P)
    with pytest.raises(TypeError, match="real numbers"):
        code.expected_length(["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"must sum to 1; got sum 2\.0"):
        code.expected_length([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="finite and non-negative"):
        code.expected_length([1.5, -0.5, 0.0, 0.0])
    # Symbols a mapping leaves out have probability 0: Σ p l over the others.
    assert code.expected_length({"A": 0.5, "D": 0.5}) == 0.5 * 1 + 0.5 * 3


def test_accessors_keep_listing_order_and_decode_checks_its_type():
    code = coding.PrefixCode({"D": "111", "A": "0", "C": "110", "B": "10"})
    assert code.symbols == ["D", "A", "C", "B"]
    assert code.lengths == {"D": 3, "A": 1, "C": 3, "B": 2}
    assert list(code.codewords) == code.symbols
    assert code.encode("") == ""
    assert code.decode("") == []
    with pytest.raises(TypeError, match=r"`bits` must be a string of '0' and '1'; got bytes"):
        code.decode(b"0110")


@pytest.mark.parametrize("size", [4, 10**4, 10**6])
def test_huffman_sum_tolerance_does_not_grow_with_the_alphabet(size):
    # float64 rounding of such sums is far below 1e-8 (it was once allowed 1e-9 per symbol,
    # so a million probabilities could sum to 1.0009).
    p = np.full(size, 1.0 / size)
    if size <= 10**4:  # building a million-symbol code takes seconds
        coding.huffman_code(p)  # rounding error is accepted
    tolerance = np.sqrt(np.finfo(np.float64).eps)
    for excess in (3 * tolerance, -3 * tolerance, 9e-4):
        with pytest.raises(ValueError, match="`probabilities` must sum to 1"):
            coding.huffman_code(p * (1 + excess))
