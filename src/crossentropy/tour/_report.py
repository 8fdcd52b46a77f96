"""The tour's reporter: sections, text, tables, errata and figures, printed and recorded.

Every section of the tour writes through one :class:`Tour`. It prints as it goes (with
rich on a terminal, as plain aligned text otherwise) and keeps a record of everything it
printed, so that tests can read the tables and the exact values behind them.
"""

from __future__ import annotations

import io
import math
import pathlib
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

__all__ = ["Erratum", "Figure", "Section", "Table", "Text", "Tour"]

_WIDTH = 88


@dataclass(frozen=True)
class Text:
    """A paragraph of prose."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table of preformatted string cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str | None = None


@dataclass(frozen=True)
class Erratum:
    """What the seed says, and the corrected statement or value printed beside it."""

    seed_says: str
    correct: str


@dataclass(frozen=True)
class Figure:
    """A figure the tour saved (the name as given, the PNG path in the output folder)."""

    name: str
    path: pathlib.Path


@dataclass
class Section:
    """One titled section and the blocks printed under it, in order."""

    title: str
    blocks: list[Text | Table | Erratum | Figure] = field(default_factory=list)

    def tables(self) -> list[Table]:
        """The tables of this section, in order."""
        return [block for block in self.blocks if isinstance(block, Table)]

    def errata(self) -> list[Erratum]:
        """The errata of this section, in order."""
        return [block for block in self.blocks if isinstance(block, Erratum)]


class Tour:
    """Prints the tour and records what it printed.

    Output is deterministic: the same calls give the same text (no times, no absolute
    paths but the output folder's name in the final list of figures).

    Args:
        out: the folder the figures are written to (created on the first figure).
        stream: where the text goes; ``sys.stdout`` when ``None``.
        style: ``"rich"`` (colour and boxes, needs the ``rich`` package), ``"plain"``
            (aligned text) or ``"auto"`` (rich when ``stream`` is a terminal and rich is
            installed, plain otherwise).
        quiet: print nothing (the record is kept all the same).

    Raises:
        ValueError: ``style`` is not one of the three names.

    Examples:
        >>> import io
        >>> buffer = io.StringIO()
        >>> tour = Tour("tour-output", stream=buffer, style="plain")
        >>> tour.section("Information")
        >>> tour.table(["word", "bits"], [["A", "1.0"], ["D", "3.3"]])
        >>> print(buffer.getvalue().strip())
        == 1. Information ==
        <BLANKLINE>
          word  bits
          ----  ----
          A      1.0
          D      3.3
        >>> tour.sections[0].tables()[0].rows
        (('A', '1.0'), ('D', '3.3'))
    """

    def __init__(
        self,
        out: str | pathlib.Path = "tour-output",
        *,
        stream: TextIO | None = None,
        style: Literal["auto", "rich", "plain"] = "auto",
        quiet: bool = False,
    ) -> None:
        if style not in ("auto", "rich", "plain"):
            raise ValueError(f"`style` must be 'auto', 'rich' or 'plain'; got {style!r}")
        self.out = pathlib.Path(out)
        self.sections: list[Section] = []
        self.values: dict[str, float] = {}
        self.quiet = quiet
        self._stream = stream if stream is not None else sys.stdout
        self._console = None
        if style == "auto":
            style = "rich" if _is_terminal(self._stream) and _has_rich() else "plain"
        if style == "rich":
            from rich.console import Console

            self._console = Console(file=self._stream, width=min(_terminal_width(), 110))
        self.style = style

    # -- the interface every section uses -------------------------------------------------

    def section(self, title: str) -> None:
        """Start a new numbered section called ``title``."""
        self.sections.append(Section(str(title)))
        heading = f"{len(self.sections)}. {title}"
        if self._console is not None:
            self._rich_print()
            self._console.rule(f"[bold]{_escape(heading)}[/bold]", align="left")
        else:
            self._write("" if len(self.sections) == 1 else "\n")
            self._write(f"== {heading} ==\n")

    def text(self, text: str) -> None:
        """A paragraph of prose, wrapped to the page width."""
        self._current().blocks.append(Text(str(text)))
        if self._console is not None:
            self._rich_print()
            self._rich_print(_escape(str(text)))
        else:
            self._write("\n" + _wrap(str(text)) + "\n")

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
    ) -> None:
        """A table; the caller formats every cell as a string (rounded as the seed rounds).

        Raises:
            TypeError: a cell or header is not a string.
            ValueError: a row's length differs from the number of headers.
        """
        headers = tuple(headers)
        cells = tuple(tuple(row) for row in rows)
        for cell in headers + tuple(cell for row in cells for cell in row):
            if not isinstance(cell, str):
                raise TypeError(
                    f"table cells must be strings formatted by the caller; got {cell!r}"
                )
        for row in cells:
            if len(row) != len(headers):
                raise ValueError(
                    f"each table row must have {len(headers)} cells like the headers; "
                    f"got {len(row)} in {row!r}"
                )
        self._current().blocks.append(Table(headers, cells, title))
        self._print_table(headers, cells, title)

    def erratum(self, seed_says: str, correct: str) -> None:
        """Mark a correction: what the seed says, and the right statement beside it."""
        self._current().blocks.append(Erratum(str(seed_says), str(correct)))
        if self._console is not None:
            from rich.table import Table as RichTable

            grid = RichTable.grid(padding=(0, 1))
            grid.add_column(no_wrap=True)
            grid.add_column()
            grid.add_row(
                "[bold red]ERRATUM[/bold red] the seed says:",
                f"[red]{_escape(str(seed_says))}[/red]",
            )
            grid.add_row(
                "[bold green]        correct:[/bold green]",
                f"[green]{_escape(str(correct))}[/green]",
            )
            self._rich_print(grid)
        else:
            indent = " " * 24
            self._write(
                _wrap(f"ERRATUM  the seed says: {seed_says}", subsequent=indent)
                + "\n"
                + _wrap(f"         correct:       {correct}", subsequent=indent)
                + "\n"
            )

    def figure(self, name: str) -> pathlib.Path:
        """The PNG path for the figure ``name`` in the output folder (the folder is created).

        The figure is recorded for the list printed at the end of the tour; the caller
        saves it to the returned path.

        Raises:
            ValueError: ``name`` is empty or contains a path separator.
        """
        name = str(name)
        stem = name[:-4] if name.endswith(".png") else name
        if not stem or "/" in stem or "\\" in stem:
            raise ValueError(f"figure `name` must be a plain file name; got {name!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{stem}.png"
        self._current().blocks.append(Figure(name, path))
        return path

    # -- extras for the tour's own sections and for tests ---------------------------------

    def value(self, key: str, value: float) -> float:
        """Record an exact value behind a printed number (tests compare it to SEED.md).

        Returns:
            ``value`` as a float, so that a section can record and use it in one step.

        Raises:
            ValueError: ``key`` was recorded before (each value has one name).
        """
        if key in self.values:
            raise ValueError(f"tour value {key!r} was already recorded")
        self.values[key] = float(value)
        return self.values[key]

    def figures(self) -> list[Figure]:
        """Every figure recorded, in order."""
        return [
            block
            for section in self.sections
            for block in section.blocks
            if isinstance(block, Figure)
        ]

    def find(self, title: str) -> Section:
        """The first section whose title contains ``title`` (case-insensitive).

        Raises:
            KeyError: no section matches.
        """
        for section in self.sections:
            if title.lower() in section.title.lower():
                return section
        raise KeyError(f"no tour section titled like {title!r}")

    def progress(self) -> bool:
        """Whether long work may show a progress bar (rich, on a terminal, not quiet)."""
        return self._console is not None and not self.quiet and self._console.is_terminal

    @property
    def console(self):
        """The rich console, or ``None`` when printing plain text."""
        return self._console

    def listing(self) -> None:
        """Print the list of figures written, relative to the output folder."""
        figures = self.figures()
        if not figures:
            return
        rows = tuple(
            (figure.path.name, section.title)
            for section in self.sections
            for figure in section.blocks
            if isinstance(figure, Figure)
        )
        self._print_table(("figure", "section"), rows, f"Figures in {self.out}/")

    # -- internals -----------------------------------------------------------------------

    def _print_table(
        self, headers: tuple[str, ...], rows: tuple[tuple[str, ...], ...], title: str | None
    ) -> None:
        if self._console is None:
            self._write("\n" + _plain_table(headers, rows, title))
            return
        from rich import box
        from rich.table import Table as RichTable

        rich_table = RichTable(box=box.SIMPLE_HEAD, pad_edge=False)
        for index, header in enumerate(headers):
            numeric = bool(rows) and all(_is_number(row[index]) for row in rows)
            rich_table.add_column(_escape(header), justify="right" if numeric else "left")
        for row in rows:
            rich_table.add_row(*(_escape(cell) for cell in row))
        self._rich_print()
        if title:
            self._rich_print(f"[bold]{_escape(title)}[/bold]")
        self._rich_print(rich_table)

    def _current(self) -> Section:
        if not self.sections:
            self.section("Tour")
        return self.sections[-1]

    def _write(self, text: str) -> None:
        if not self.quiet:
            self._stream.write(text)
            self._stream.flush()

    def _rich_print(self, *objects) -> None:
        if not self.quiet:
            assert self._console is not None  # called only on the rich path
            self._console.print(*objects)

    def __iter__(self) -> Iterator[Section]:
        return iter(self.sections)


def _plain_table(
    headers: tuple[str, ...], rows: tuple[tuple[str, ...], ...], title: str | None
) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if numeric[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(parts)).rstrip()

    out = io.StringIO()
    if title:
        out.write(f"  {title}\n")
    out.write(line(headers) + "\n")
    out.write(line(["-" * width for width in widths]) + "\n")
    for row in rows:
        out.write(line(row) + "\n")
    return out.getvalue()


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == ""
    return math.isfinite(float(cell)) or cell.strip() in ("inf", "-inf")


def _wrap(text: str, *, subsequent: str = "") -> str:
    """``text`` filled to the tour's width, paragraph by paragraph; a number and its unit
    ("20 %") stay on one line (a no-break space while filling: textwrap breaks only at
    ASCII whitespace)."""
    paragraphs = text.replace(" %", "\u00a0%").split("\n")
    return "\n".join(
        textwrap.fill(paragraph, width=_WIDTH, subsequent_indent=subsequent, break_on_hyphens=False)
        if paragraph
        else ""
        for paragraph in paragraphs
    ).replace("\u00a0", " ")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns
