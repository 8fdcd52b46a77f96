"""The ``crossentropy`` command. It contains no logic: every subcommand calls the public API.

Exit codes: 0 success, 1 bad data (one line on stderr, no traceback), 2 usage, 141
(128 + SIGPIPE, quietly, as a shell reports ``cat``) when the reader of the output
closes it early (``crossentropy decompress big.cez - | head``).
A closed stdout (``>&-``: fd 1 not open, ``sys.stdout`` is None) is no error for a
command that writes nothing to it (``decompress x.cez out >&-`` exits 0); a command
whose output goes to stdout (``measure``, ``entropy``, ``compress IN -``) fails as
``gzip -c >&-`` does: one line on stderr, exit 1.
Each subcommand lives in its own module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed namespace and returning
an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import sys
from collections.abc import Sequence

from crossentropy import __version__

_SUBCOMMAND_MODULES = ("_tour", "_measure", "_coding")


#: The exit status of a command whose output pipe was closed: 128 + SIGPIPE.
_BROKEN_PIPE = 141


class _ClosedStdout(io.TextIOBase):
    """``sys.stdout`` while a command runs with fd 1 closed (Python sets it to None):
    flushing does nothing, writing (text, or bytes through ``buffer``) raises EBADF."""

    def write(self, text: object) -> int:
        raise OSError(errno.EBADF, "stdout is closed (`>&-`); nowhere to write the output")

    @property
    def buffer(self) -> _ClosedStdout:
        return self


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit finds no
    closed pipe to complain about (the Python docs' "Note on SIGPIPE")."""
    if sys.stdout is None:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="crossentropy",
        description="Cross-entropy, exactly: measures in bits, entropy coders, the seed's tour.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"crossentropy.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    closed = sys.stdout is None
    if closed:
        sys.stdout = _ClosedStdout()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return _BROKEN_PIPE
    except (ValueError, TypeError, OSError, ImportError) as error:
        print(f"crossentropy {args.command}: error: {error}", file=sys.stderr)
        return 1
    except MemoryError as error:  # e.g. a container whose original does not fit in memory
        print(f"crossentropy {args.command}: error: out of memory: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"crossentropy {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if closed:
            sys.stdout = None  # type: ignore[assignment]
