"""``crossentropy compress``, ``decompress`` and ``entropy``: thin wrappers over ``coding``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from crossentropy import coding

__all__ = ["register"]

_PROGRESS_BYTES = 1 << 20

#: The --force help of ``compress`` and ``decompress``.
_FORCE_HELP = (
    "replace OUT if it is an existing file (through a symbolic link: the file the link "
    "resolves to), or write into OUT if it is a block device (a disk); a FIFO, a "
    "character device or an open descriptor (/dev/stdout, /dev/fd/N) is written into "
    "without it"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compress``, ``decompress`` and ``entropy`` subcommands."""
    parser = subparsers.add_parser(
        "compress",
        help="compress a file with an entropy model and a range coder",
        description="Compress IN into OUT ('-' is stdin/stdout) in a checked container.",
    )
    parser.add_argument("input", metavar="IN", help="file to compress, or '-' for stdin")
    parser.add_argument("output", metavar="OUT", help="file to write, or '-' for stdout")
    parser.add_argument(
        "--model", choices=coding.MODELS, default="order0", help="entropy model (default: order0)"
    )
    parser.add_argument("--force", action="store_true", help=_FORCE_HELP)
    parser.set_defaults(func=_compress)

    parser = subparsers.add_parser(
        "decompress",
        help="restore a file made by `crossentropy compress`",
        description="Decompress IN into OUT ('-' is stdin/stdout); checks every checksum.",
    )
    parser.add_argument("input", metavar="IN", help="container to read, or '-' for stdin")
    parser.add_argument("output", metavar="OUT", help="file to write, or '-' for stdout")
    parser.add_argument("--force", action="store_true", help=_FORCE_HELP)
    parser.set_defaults(func=_decompress)

    parser = subparsers.add_parser(
        "entropy",
        help="bits per byte of files: entropy, Huffman, our coders, gzip/bz2/xz",
        description=(
            "For each file: size, order-0 entropy, Huffman and our coders' measured sizes "
            "in bits per byte, beside gzip -9, bz2 -9 and xz -9 (n/a for an empty file, "
            "where bits per byte are undefined; --json also gives every size in bytes)."
        ),
    )
    parser.add_argument(
        "files", metavar="FILE", nargs="+", help="files to measure ('-' reads stdin once)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_entropy)


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


# /proc/<pid>/fd, /proc/self/fd, /proc/<pid>/task/<tid>/fd: their entries are open
# descriptors (/dev/fd/N, /dev/stdout), not files to replace.
_DESCRIPTOR_FOLDER = re.compile(r"/proc/(?:[^/]+/)*fd")
_MAX_LINKS = 40


class _Output(NamedTuple):
    """Where OUT's bytes go: ``path`` replaced atomically (a regular file, or none yet),
    or written straight into (``stream``: a FIFO, a device, an open descriptor; a block
    device from its start, the others appended to, as the shell's ``>>`` would)."""

    path: Path
    stream: bool
    block: bool = False


def _is_block_device(mode: int) -> bool:
    """Whether an OUT of this ``st_mode`` is a block device (a disk, a partition): written
    into only with ``--force``, where a FIFO or a character device needs none."""
    return stat.S_ISBLK(mode)


def _resolved(name: str) -> tuple[str, bool]:
    """OUT's path after following its symbolic links as the kernel does, and whether it
    names an open descriptor (an entry of /proc/<pid>/fd: /dev/stdout, /dev/fd/N), which
    is not followed further (its "link" names the open file, maybe a pipe).

    Nothing is normalised lexically: ``a/../b`` where ``a`` is a link to a folder means
    the parent of that folder, as for the kernel. Each folder is resolved with
    :func:`os.path.realpath`, and each link's text is joined to its folder unnormalised,
    so its own ``..`` are resolved by the next folder's realpath.
    """
    path = os.path.join(os.getcwd(), name)  # not abspath: it would collapse `..`
    for _ in range(_MAX_LINKS):
        folder = os.path.realpath(os.path.dirname(path))
        if _DESCRIPTOR_FOLDER.fullmatch(folder):
            return os.path.join(folder, os.path.basename(path)), True
        path = os.path.join(folder, os.path.basename(path))
        if not os.path.islink(path):
            return path, False
        path = os.path.join(folder, os.readlink(path))
    raise ValueError(f"OUT must not be a loop of symbolic links; got {name}")


def _output(name: str, *, force: bool, source: str) -> _Output:
    """How to write OUT; refuses a directory, a missing folder, OUT == IN (whatever OUT
    is: a file, a FIFO, an open descriptor such as /dev/stdout), an existing regular file
    (or a link to one) and a block device without ``force``.

    A symbolic link is followed to the file it resolves to (and that file is replaced,
    never the link). A FIFO, a character device or an open descriptor (/dev/stdout,
    /dev/fd/N) is written into as it is, like a pipe, with or without ``force``.
    """
    path, descriptor = _resolved(name)
    target = Path(path)
    if descriptor:
        if _same_file(target, source):
            raise ValueError(f"OUT must differ from IN; {name} is open on IN")
        return _Output(target, stream=True)
    if not target.parent.is_dir():
        raise ValueError(f"OUT must be in an existing directory; {target.parent} does not exist")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise ValueError(f"OUT must be a file, not a directory; got {name}")
    if mode is not None and _same_file(target, source):
        raise ValueError(f"OUT must differ from IN; both are {name}")
    if mode is not None and _is_block_device(mode):
        if not force:
            raise ValueError(f"{name} is a block device; pass --force to write into it")
        return _Output(target, stream=True, block=True)
    if mode is not None and not stat.S_ISREG(mode):
        return _Output(target, stream=True)
    if (mode is not None or os.path.lexists(name)) and not force:
        raise ValueError(f"{name} exists; pass --force to overwrite it")
    return _Output(target, stream=False)


def _same_file(target: Path, source: str) -> bool:
    """Whether OUT is IN: the same file, FIFO, device or descriptor's file (for IN '-',
    stdin's). A character device or a socket is never "the same": reading a terminal, or
    a connection, and writing to it loses nothing (``compress /dev/stdin /dev/stdout``)."""
    try:
        if source == "-":
            mine, theirs = os.stat(target), os.fstat(0)
            same = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
        else:
            mine = os.stat(target)
            same = os.path.samefile(target, source)
    except OSError:
        return False
    return same and not (stat.S_ISCHR(mine.st_mode) or stat.S_ISSOCK(mine.st_mode))


def _write_all(write: Callable[[memoryview], int | None], data: bytes) -> None:
    """``write`` until every byte of ``data`` is written; a write that makes no progress
    is an error (a short write must never pass for success)."""
    view = memoryview(data)
    while view:
        written = write(view)
        if not written:
            raise OSError(errno.EIO, f"the write stopped with {len(view)} bytes left")
        view = view[written:]


def _write(name: str, data: bytes, *, force: bool, source: str) -> None:
    """Write ``data`` to OUT: stdout, straight into a FIFO, device or descriptor, or
    atomically to a regular file (a temporary file in the same folder, renamed)."""
    if name == "-":  # with fd 1 closed, `main` has put a stdout here that refuses writes
        sys.stdout.flush()
        _write_all(sys.stdout.buffer.write, data)
        sys.stdout.buffer.flush()
        return
    output = _output(name, force=force, source=source)
    if output.stream:
        # No O_CREAT, no O_TRUNC: it exists and is not a regular file, or it is an open
        # descriptor (/dev/stdout), whose file the shell truncated or opened to append.
        # A block device is written from its start (O_APPEND would start at its end).
        flags = os.O_WRONLY | os.O_NOCTTY | (0 if output.block else os.O_APPEND)
        descriptor = os.open(output.path, flags)
        try:
            _write_all(lambda view: os.write(descriptor, view), data)
        finally:
            os.close(descriptor)
        return
    target = output.path
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _write_all(handle.write, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _new_file_mode(target))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _new_file_mode(target: Path) -> int:
    """The mode a plain ``open(target, "wb")`` would give (kept when overwriting)."""
    if target.exists():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _compress(args: argparse.Namespace) -> int:
    _check_output(args)
    data = _read(args.input)
    progress = _ByteProgress(args.input, "compressing")
    try:
        blob = coding.compress(data, model=args.model, progress=progress)
    finally:
        progress.close()
    _write(args.output, blob, force=args.force, source=args.input)
    return 0


def _decompress(args: argparse.Namespace) -> int:
    _check_output(args)
    blob = _read(args.input)
    progress = _ByteProgress(args.input, "decompressing")
    try:
        data = coding.decompress(blob, progress=progress)
    finally:
        progress.close()
    _write(args.output, data, force=args.force, source=args.input)
    return 0


def _check_output(args: argparse.Namespace) -> None:
    # Refuse before reading IN (a FIFO that is OUT too would block the read for ever)
    # and the (possibly long) work, and again when writing.
    if args.output != "-":
        _output(args.output, force=args.force, source=args.input)


def _bar(fraction: float) -> str:
    filled = int(20 * fraction)
    return f"[{'#' * filled}{'.' * (20 - filled)}]"


def _clear_line(width: int) -> None:
    sys.stderr.write("\r" + " " * width + "\r")
    sys.stderr.flush()


class _ByteProgress:
    """``progress(done, total)`` of the coders as one line on stderr: a bar, the percent
    done and the time left (only on a terminal, for 1 MiB or more)."""

    def __init__(self, name: str, verb: str) -> None:
        self.name = name
        self.verb = verb
        self.start = time.monotonic()
        self.width = 0

    def __call__(self, done: int, total: int) -> None:
        if total < _PROGRESS_BYTES or not sys.stderr.isatty():
            return
        elapsed = time.monotonic() - self.start
        left = ""
        if 0 < done < total and elapsed >= 1.0:  # a rate worth extrapolating
            left = f", {elapsed * (total - done) / done:.0f} s left"
        line = (
            f"{self.name}: {self.verb} {_bar(done / total)} {100 * done // total:3d}% "
            f"of {total / 1e6:.1f} MB{left}"
        )
        self.width = max(self.width, len(line))
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.width:
            _clear_line(self.width)


class _Progress:
    """A one-line progress indication on stderr (only on a terminal, for large files)."""

    def __init__(self, name: str, size: int) -> None:
        self.enabled = sys.stderr.isatty() and size >= _PROGRESS_BYTES
        self.name = name
        self.steps = 3 + len(coding.MODELS) + 1
        self.done = 0

    def __call__(self, step: str) -> None:
        if not self.enabled:
            return
        sys.stderr.write(f"\r{self.name}: {_bar(self.done / self.steps)} {step:<8}")
        sys.stderr.flush()
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            _clear_line(len(self.name) + 40)


def _per_byte(value: float | None) -> str:
    """A bits-per-byte cell: ``n/a`` where it is undefined (an empty file)."""
    return "n/a" if value is None else f"{value:.3f}"


def _entropy(args: argparse.Namespace) -> int:
    reports = []
    if args.files.count("-") > 1:
        raise ValueError("FILE '-' (stdin) can be read once; got it more than once")
    for name in args.files:
        data = _read(name)
        progress = _Progress(name, len(data))
        try:
            report = coding.entropy_report(data, progress=progress)
        finally:
            progress.close()
        reports.append({"file": name, **report})
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    columns = ["size", "entropy", "huffman", *coding.MODELS, "gzip", "bz2", "xz"]
    headers = [
        "file",
        "size (B)",
        "entropy",
        "Huffman",
        *coding.MODELS,
        "gzip -9",
        "bz2 -9",
        "xz -9",
    ]
    rows = [[r["file"], str(r["size"]), *(_per_byte(r[c]) for c in columns[1:])] for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    empty = (
        "; n/a: an empty file, --json gives the sizes"
        if any(not r["size"] for r in reports)
        else ""
    )
    print(f"bits per byte (sizes of our coders and gzip/bz2/xz include their headers{empty})")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return 0
