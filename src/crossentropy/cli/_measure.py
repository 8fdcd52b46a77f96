"""``crossentropy measure P [Q]``: the information measures of distributions given inline.

Every number comes from :mod:`crossentropy.info`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from fractions import Fraction
from typing import Any

from crossentropy import info
from crossentropy.info._validate import check_base, check_distribution

#: An argument that starts with a minus sign and then a number, inf or nan is a value.
_NEGATIVE_LIST = re.compile(r"-(?:\.?\d|inf|nan)", re.IGNORECASE)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``measure`` subcommand."""
    parser = subparsers.add_parser(
        "measure",
        help="information, entropy, cross-entropy and divergences of distributions given inline",
        description=(
            "Print the information of each outcome under P (and Q), H(P), and with Q also "
            "H(Q), H(P,Q), H(Q,P), D(P||Q), D(Q||P) and the Jensen-Shannon divergence, in "
            "bits unless --base says otherwise. P and Q are comma-separated probabilities "
            "that sum to 1, e.g. 0.5,0.2,0.2,0.1 (fractions such as 1/3 are accepted); "
            "--normalize accepts counts or weights instead."
        ),
        epilog="example: crossentropy measure 0.5,0.2,0.2,0.1 0.25,0.25,0.25,0.25",
    )
    # A list that starts with a minus sign (-0.5,1.5) is P or Q, not an unknown option:
    # argparse's own test reads only a single number such as -0.5 as a value. The test is
    # a private attribute: were a later argparse to drop it, this assignment would do
    # nothing and such a list would need `--` before it again;
    # tests/cli/test_measure.py would show it.
    parser._negative_number_matcher = _NEGATIVE_LIST
    parser.add_argument("p", metavar="P", help="the true distribution, e.g. 0.5,0.2,0.2,0.1")
    parser.add_argument(
        "q", metavar="Q", nargs="?", default=None, help="a model distribution of the same length"
    )
    parser.add_argument(
        "--base",
        type=_base,
        default=2.0,
        metavar="B",
        help="logarithm base: 2 (bits, default), e (nats), 10 (hartleys) or any number",
    )
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="treat P and Q as weights or counts and normalise them first",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object (infinite values are written as the string "inf")',
    )
    parser.set_defaults(func=_run)


def _base(text: str) -> float:
    """``--base``: a number, or ``e``; an invalid base is a usage error (exit 2), as is
    a base that is not a number."""
    if text.strip().lower() == "e":
        return math.e
    try:
        return check_base(float(text))
    except ValueError as error:
        if "`base`" in str(error):
            raise argparse.ArgumentTypeError(str(error)) from None
        raise argparse.ArgumentTypeError(
            f"must be 2, e, 10 or another number; got {text!r}"
        ) from None


def _parse(text: str, name: str) -> list[float]:
    """``"0.5,0.2,1/3"`` -> floats; bad data raises ``ValueError`` (exit 1)."""
    values = []
    for token in text.split(","):
        token = token.strip()
        try:
            values.append(float(Fraction(token)))
        except OverflowError:  # 1e400: beyond float64
            raise ValueError(
                f"`{name}` must be numbers within the float64 range (up to about 1.8e308); "
                f"got {token!r} in {text!r}"
            ) from None
        except (ValueError, ZeroDivisionError):
            try:
                values.append(float(token))  # nan, inf: refused by `info` with its own message
            except ValueError:
                raise ValueError(
                    f"`{name}` must be comma-separated numbers such as 0.5,0.25,0.25; "
                    f"got {token!r} in {text!r}"
                ) from None
    return values


def _distribution(values: list[float], name: str, normalize: bool) -> list[float]:
    """``values`` checked as a distribution (normalised first with ``--normalize``); the
    error names the command's own argument, ``P`` or ``Q``."""
    if normalize:
        try:
            values = [float(v) for v in info.normalize(values)]
        except ValueError as error:
            raise ValueError(str(error).replace("`x`", f"`{name}`", 1)) from None
    try:
        check_distribution(values, name)
    except ValueError as error:
        message = str(error)
        if "normalise explicitly" in message:
            message = message.split("; normalise explicitly")[0]
            message += "; pass --normalize to treat the values as weights or counts"
        raise ValueError(message) from None
    return values


def _unit(base: float) -> tuple[str, str]:
    """The unit's name and the log's symbol for column headers."""
    if base == 2:
        return "bits", "log2"
    if base == math.e:
        return "nats", "ln"
    if base == 10:
        return "hartleys", "log10"
    return f"base-{base:g} units", f"log_{base:g}"


def _number(value: float, base: float) -> str:
    """A measure in the table: 6 decimals from 0.1 up, 7 significant digits below (so that
    2.9e-14 does not read as 0), in magnitude. Every measure has the sign of ``log(base)``:
    >= 0 for a base above 1, <= 0 for a base below 1 (where the log of a probability is
    >= 0). A value of the other sign is rounding where the true value is 0 or nearly
    (-1.3e-17 for a one-ulp D(P||Q)), and prints as 0."""
    sign = 1.0 if base > 1 else -1.0
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value * sign <= 0:
        return "0"
    size = abs(value)
    text = f"{size:.6f}" if 0.1 <= size < 1e15 else f"{size:.7g}"
    return text if sign > 0 else f"-{text}"


def _probability(value: float) -> str:
    """p(x) as the shortest text that reads back as the same float."""
    return repr(float(value))


def _json_number(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def _measures(p: list[float], q: list[float] | None, base: float) -> dict[str, Any]:
    """Every measure the command prints, computed by :mod:`crossentropy.info`."""
    result: dict[str, Any] = {
        "information_p": [float(v) for v in info.information(p, base=base)],
        "H(P)": float(info.entropy(p, base=base)),
    }
    if q is not None:
        result["information_q"] = [float(v) for v in info.information(q, base=base)]
        result["H(Q)"] = float(info.entropy(q, base=base))
        result["H(P,Q)"] = float(info.cross_entropy(p, q, base=base))
        result["H(Q,P)"] = float(info.cross_entropy(q, p, base=base))
        result["D(P||Q)"] = float(info.kl_divergence(p, q, base=base))
        result["D(Q||P)"] = float(info.kl_divergence(q, p, base=base))
        result["JS(P,Q)"] = float(info.js_divergence(p, q, base=base))
    return result


def _run(args: argparse.Namespace) -> int:
    p = _parse(args.p, "P")
    q = None if args.q is None else _parse(args.q, "Q")
    p = _distribution(p, "P", args.normalize)
    q = None if q is None else _distribution(q, "Q", args.normalize)
    if q is not None and len(q) != len(p):
        raise ValueError(f"`Q` must have as many outcomes as `P`; got {len(q)} and {len(p)}")
    measures = _measures(p, q, args.base)
    unit, log = _unit(args.base)
    if args.json:
        document = {
            "unit": unit,
            "base": args.base,
            "p": p,
            "q": q,
            "information": {
                "p": [_json_number(v) for v in measures["information_p"]],
                "q": None if q is None else [_json_number(v) for v in measures["information_q"]],
            },
            "measures": {
                key: _json_number(value)
                for key, value in measures.items()
                if not key.startswith("information")
            },
        }
        print(json.dumps(document, indent=2))
        return 0
    headers = ["outcome", "p(x)", f"-{log} p(x)"]
    columns = [
        [str(i + 1) for i in range(len(p))],
        [_probability(v) for v in p],
        [_number(v, args.base) for v in measures["information_p"]],
    ]
    if q is not None:
        headers[2:2] = ["q(x)"]
        columns[2:2] = [[_probability(v) for v in q]]
        headers.append(f"-{log} q(x)")
        columns.append([_number(v, args.base) for v in measures["information_q"]])
    print(f"information of each outcome ({unit})")
    _table(headers, [list(row) for row in zip(*columns, strict=True)])
    print()
    rows = [
        [key, _number(value, args.base)]
        for key, value in measures.items()
        if not key.startswith("information")
    ]
    _table(["measure", unit], rows)
    return 0


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
