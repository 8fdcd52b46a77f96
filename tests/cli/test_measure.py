"""`crossentropy measure`: the table, --base, --json, --normalize and exit codes on bad data."""

from __future__ import annotations

import argparse
import json
import math
import re
from fractions import Fraction

import pytest

from crossentropy import info
from crossentropy.cli import _measure
from tests import reference

P = "0.5,0.2,0.2,0.1"  # the seed's words (SEED.md)
Q = "0.25,0.25,0.25,0.25"


def run_alone(argv: list[str]) -> int:
    """Run `measure` through a parser of its own (no other subcommand involved)."""
    parser = argparse.ArgumentParser(prog="crossentropy")
    _measure.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["measure", *argv])
    return args.func(args)


def test_table_in_bits(capsys):
    assert run_alone([P, Q]) == 0
    out = capsys.readouterr().out
    assert "information of each outcome (bits)" in out
    # Information of each word: -log2 of 0.5, 0.2, 0.1 (SEED.md: 1.0, 2.3, 3.3).
    assert "1.000000" in out
    assert "2.321928" in out
    assert "3.321928" in out
    rows = dict(line.split() for line in out.splitlines() if line.startswith(("H(", "D(", "JS")))
    p, q = [0.5, 0.2, 0.2, 0.1], [0.25] * 4
    expected = {
        "H(P)": info.entropy(p),
        "H(Q)": info.entropy(q),
        "H(P,Q)": info.cross_entropy(p, q),
        "H(Q,P)": info.cross_entropy(q, p),
        "D(P||Q)": info.kl_divergence(p, q),
        "D(Q||P)": info.kl_divergence(q, p),
        "JS(P,Q)": info.js_divergence(p, q),
    }
    assert set(rows) == set(expected)
    for key, value in expected.items():
        # 6 decimals from 0.1 up, 7 significant digits below.
        assert rows[key] == (f"{value:.6f}" if value >= 0.1 else f"{value:.7g}"), key
    assert rows["JS(P,Q)"] == "0.05860874"
    assert rows["H(P)"] == "1.760964"  # SEED.md: H = 1.7609640474436812
    assert rows["H(P,Q)"] == "2.000000"  # SEED.md: Q uniform gives 2.0


def test_p_alone(capsys):
    assert run_alone([P]) == 0
    out = capsys.readouterr().out
    assert "H(P)" in out
    assert "1.760964" in out
    assert "H(Q)" not in out
    assert "q(x)" not in out


def test_nats_and_infinity(capsys):
    assert run_alone(["0.5,0.5", "1,0", "--base", "e"]) == 0
    out = capsys.readouterr().out
    assert "(nats)" in out
    assert "-ln p(x)" in out
    rows = dict(line.split() for line in out.splitlines() if line.startswith(("H(", "D(", "JS")))
    assert rows["H(P)"] == f"{math.log(2):.6f}"
    assert rows["H(P,Q)"] == "inf"
    assert rows["D(P||Q)"] == "inf"
    assert rows["JS(P,Q)"] == f"{info.js_divergence([0.5, 0.5], [1, 0], base=math.e):.6f}"


def test_json(capsys):
    assert run_alone([P, "0.5,0.5,0,0", "--json", "--base", "10"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["unit"] == "hartleys"
    assert document["base"] == 10
    assert document["p"] == [0.5, 0.2, 0.2, 0.1]
    assert document["information"]["q"][2] == "inf"
    measures = document["measures"]
    assert measures["H(P)"] == pytest.approx(1.7609640474436812 * math.log10(2), abs=1e-12)
    assert measures["H(P,Q)"] == "inf"
    assert measures["H(Q,P)"] == info.cross_entropy([0.5, 0.5, 0, 0], [0.5, 0.2, 0.2, 0.1], base=10)
    assert measures["JS(P,Q)"] == info.js_divergence(
        [0.5, 0.2, 0.2, 0.1], [0.5, 0.5, 0, 0], base=10
    )


def test_normalize_and_fractions(capsys):
    assert run_alone(["5,2,2,1", "1,1,1,1", "--normalize", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["p"] == [0.5, 0.2, 0.2, 0.1]
    assert document["q"] == [0.25] * 4
    assert document["measures"]["H(P,Q)"] == pytest.approx(2.0, abs=1e-12)  # SEED.md
    assert run_alone(["1/3,1/3,1/3", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["measures"]["H(P)"] == pytest.approx(math.log2(3), abs=1e-12)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["0.5,0.6"], r"`P` must sum to 1 .*; pass --normalize to treat the values as weights"),
        (["a,b"], r"`P` must be comma-separated numbers .* got 'a'"),
        ([P, "0.5,0.5"], r"`Q` must have as many outcomes as `P`; got 2 and 4"),
        (["0.5,nan"], r"`P` must contain no NaN"),
        (["1.5,-0.5"], r"`P` must be non-negative"),
        # Q's errors name Q (they used to name `p`, the parameter of the function called).
        ([P, "0.5,0.6"], r"^`Q` must sum to 1 .* got a sum of 1\.1; pass --normalize"),
        ([P, "0.5,nan"], r"^`Q` must contain no NaN"),
        ([P, "1.5,-0.5"], r"^`Q` must be non-negative; got -0\.5"),
        ([P, "0,0", "--normalize"], r"^`Q` must have a positive sum"),
        (["1,-1", "--normalize"], r"^`P` must be non-negative"),
        # Beyond float64: a message, not an OverflowError from Fraction.__float__.
        (["1e400,1"], r"^`P` must be numbers within the float64 range .* got '1e400'"),
    ],
)
def test_bad_data_raises_for_main_to_report(argv, message):
    with pytest.raises(ValueError, match=message):
        run_alone(argv)


def test_through_main_exit_codes(capsys):
    from crossentropy.cli import main

    assert main(["measure", P, Q]) == 0
    assert "1.760964" in capsys.readouterr().out
    assert main(["measure", "0.5,0.6"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crossentropy measure: error: `P` must sum to 1")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as usage:
        main(["measure", P, "--base", "x"])
    assert usage.value.code == 2


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["1e400,1", "--normalize"], 1, r"`P` must be numbers within the float64 range"),
        ([P, "0.5,0.6"], 1, r"`Q` must sum to 1"),
        ([P, "--base", "x"], 2, r"argument --base: must be 2, e, 10 or another number"),
        # An invalid base is a usage error like a base that is not a number (it was exit 1).
        ([P, "--base", "1"], 2, r"argument --base: `base` must be a finite number > 0 and != 1"),
        ([P, "--base", "0"], 2, r"argument --base: `base` must be a finite number > 0"),
        ([P, "--base", "nan"], 2, r"argument --base: `base` must be a finite number > 0"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_the_right_exit_code(capsys, argv, code, message):
    from crossentropy.cli import main

    try:
        got = main(["measure", *argv])
    except SystemExit as usage:
        got = usage.code
    assert got == code
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert re.search(message, last)
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == (1 if code == 1 else 2)  # usage + error


def test_a_rounding_negative_divergence_prints_as_zero(capsys):
    # Q is P with one entry moved by one ulp: D(P||Q) computes to about -1.3e-17 (the true
    # value is about +1e-33), which the table used to print as -0.000000.
    p, q = "0.040406122494584924,0.959593877505415", "0.04040612249458493,0.959593877505415"
    assert (
        float(
            info.kl_divergence([float(v) for v in p.split(",")], [float(v) for v in q.split(",")])
        )
        < 0
    )
    assert run_alone([p, q]) == 0
    out = capsys.readouterr().out
    assert "-0" not in out
    rows = dict(line.split() for line in out.splitlines() if line.startswith(("D(", "JS")))
    assert rows["D(P||Q)"] == "0"
    assert all(abs(float(value)) < 1e-16 for value in rows.values())


@pytest.mark.parametrize(
    ("argv", "rows"),
    [
        # Fixed 6 decimals printed these as 0.000000.
        (["0.5000001,0.4999999", "0.5,0.5"], {"D(P||Q)": 2.9e-14, "JS(P,Q)": 7.2e-15}),
        (["1e-9,0.999999999"], {"H(P)": 3.1e-08}),
    ],
)
def test_small_measures_keep_their_significant_digits(capsys, argv, rows):
    assert run_alone(argv) == 0
    out = capsys.readouterr().out
    printed = dict(line.split() for line in out.splitlines() if line.startswith(("H(", "D(", "JS")))
    p = [float(v) for v in argv[0].split(",")]
    q = [float(v) for v in argv[1].split(",")] if len(argv) > 1 else None
    computed = {
        "H(P)": info.entropy(p),
        "D(P||Q)": q and info.kl_divergence(p, q),
        "JS(P,Q)": q and info.js_divergence(p, q),
    }
    for key, value in rows.items():
        assert printed[key] == f"{computed[key]:.7g}", key
        assert float(printed[key]) == pytest.approx(value, rel=0.05, abs=0), key
        assert len(printed[key].split("e")[0].replace(".", "")) == 7  # significant digits


def test_probabilities_print_as_they_read_back(capsys):
    # %g printed 0.5000001 and 0.4999999 as 0.5 and 0.5.
    values = [0.5000001, 0.4999999]
    assert run_alone([",".join(map(repr, values)), "1/3,2/3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for k in range(2):
        _, p, q, *_ = lines[3 + k].split()
        assert float(p) == values[k]
        assert float(q) == float(Fraction(k + 1, 3))
    assert lines[3].split()[1:3] == ["0.5000001", "0.3333333333333333"]


@pytest.mark.parametrize("argv", [["-0.5,1.5"], [P, "-0.5,0.5,0.5,0.5"], ["-1/2,3/2", "--json"]])
def test_a_list_starting_with_a_minus_sign_is_a_value(capsys, argv):
    # argparse read "-0.5,1.5" as an unknown option: "the following arguments are
    # required: P".
    from crossentropy.cli import main

    assert main(["measure", *argv]) == 1
    captured = capsys.readouterr()
    name = "Q" if len(argv) > 1 and argv[1] != "--json" else "P"
    assert captured.err.startswith(f"crossentropy measure: error: `{name}` must be non-negative")
    assert "-0.5" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_outcome_table_columns(capsys):
    """The outcome table lists p(x), q(x), then the information of each under its own
    distribution, every cell as printed: probabilities as they read back, bits to 6 places."""
    p, q = [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.2, 0.5]
    assert run_alone([",".join(map(str, p)), ",".join(map(str, q))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["outcome", "p(x)", "q(x)", "-log2", "p(x)", "-log2", "q(x)"]
    for k in range(4):
        assert lines[3 + k].split() == [
            str(k + 1),
            repr(p[k]),
            repr(q[k]),
            f"{reference.information(p[k]):.6f}",
            f"{reference.information(q[k]):.6f}",
        ]


def test_a_base_below_one_prints_the_negative_measures(capsys):
    """Below 1 the log of a probability is >= 0, so every measure is <= 0: printed with its
    sign, to the digits shown (not as 0)."""
    assert run_alone(["0.5,0.25,0.25", "0.25,0.25,0.5", "--base", "0.5"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split() for line in out.splitlines() if line.startswith(("H(", "D(", "JS")))
    p, q = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
    expected = {
        "H(P)": -reference.entropy(p),
        "H(P,Q)": -reference.cross_entropy(p, q),
        "D(P||Q)": -reference.kl_divergence(p, q),
    }
    for key, value in expected.items():
        assert rows[key] == f"{value:.6f}"
    assert "-1.000000" in out  # -log_0.5 of 0.5
