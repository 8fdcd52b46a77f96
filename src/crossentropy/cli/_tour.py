"""``crossentropy tour``: the seed's walkthrough, run for real (see :mod:`crossentropy.tour`)."""

from __future__ import annotations

import argparse
import pathlib


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tour`` subcommand."""
    parser = subparsers.add_parser(
        "tour",
        help="the seed's walkthrough: tables, errata, figures, a trained classifier",
        description=(
            "Walk through the seed section by section: information, codes, entropy, "
            "cross-entropy and KL, cross-entropy as a loss, and a softmax classifier "
            "trained on scikit-learn's digits. Every number is computed, not typed; the "
            "seed's errata are shown beside the corrected values; figures are saved as PNG."
        ),
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("tour-output"),
        metavar="DIR",
        help="folder for the figures (default: tour-output/)",
    )
    parser.add_argument(
        "--epochs",
        type=_epochs,
        default=20,
        metavar="N",
        help="training epochs for the digits classifier (default: 20)",
    )
    parser.add_argument(
        "--no-train", action="store_true", help="skip the trained classifier section"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing; only write the figures"
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain aligned text even on a terminal"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from crossentropy.tour import run_tour

    run_tour(
        args.out,
        train=not args.no_train,
        epochs=args.epochs,
        style="plain" if args.plain else "auto",
        quiet=args.quiet,
    )
    return 0
