"""The tour's reporter: plain rendering, the record, figure paths, and bad input."""

from __future__ import annotations

import io

import pytest

from crossentropy.tour import Erratum, Figure, Table, Text, Tour


def _plain(tmp_path) -> tuple[Tour, io.StringIO]:
    buffer = io.StringIO()
    return Tour(tmp_path / "figs", stream=buffer, style="plain"), buffer


def test_plain_output_is_aligned_and_recorded(tmp_path):
    tour, buffer = _plain(tmp_path)
    tour.section("Entropy")
    tour.text("Expected information.")
    tour.table(
        ["prize", "p", "bits"], [["1st", "0.1", "0.332"], ["3rd", "0.7", "0.360"]], title="Box A"
    )
    tour.erratum("0.361", "0.360")
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "== 1. Entropy =="
    header = next(line for line in lines if "prize" in line)
    row = next(line for line in lines if line.strip().startswith("3rd"))
    # Numeric columns are right-aligned: the last characters line up under the header.
    assert len(header) == len(row)
    assert "ERRATUM  the seed says: 0.361" in buffer.getvalue()
    assert "correct:       0.360" in buffer.getvalue()
    section = tour.sections[0]
    assert section.title == "Entropy"
    assert [type(block) for block in section.blocks] == [Text, Table, Erratum]
    assert section.tables()[0] == Table(
        ("prize", "p", "bits"), (("1st", "0.1", "0.332"), ("3rd", "0.7", "0.360")), "Box A"
    )
    assert section.errata() == [Erratum("0.361", "0.360")]


def test_sections_are_numbered_in_order(tmp_path):
    tour, buffer = _plain(tmp_path)
    for title in ("Why", "Information", "Entropy"):
        tour.section(title)
    assert [s.title for s in tour.sections] == ["Why", "Information", "Entropy"]
    assert "== 3. Entropy ==" in buffer.getvalue()
    assert tour.find("inform") is tour.sections[1]
    with pytest.raises(KeyError, match="no tour section"):
        tour.find("absent")


def test_figure_path_in_the_output_folder_and_recorded(tmp_path):
    tour, _ = _plain(tmp_path)
    tour.section("Figures")
    path = tour.figure("curve")
    assert path == tmp_path / "figs" / "curve.png"
    assert path.parent.is_dir()
    assert tour.figure("bars.png") == tmp_path / "figs" / "bars.png"
    assert tour.figures() == [Figure("curve", path), Figure("bars.png", path.with_name("bars.png"))]


def test_quiet_prints_nothing_but_records(tmp_path):
    buffer = io.StringIO()
    tour = Tour(tmp_path, stream=buffer, style="plain", quiet=True)
    tour.section("S")
    tour.table(["a"], [["1"]])
    assert buffer.getvalue() == ""
    assert tour.sections[0].tables()[0].rows == (("1",),)


def test_rich_style_renders_the_same_cells(tmp_path):
    pytest.importorskip("rich", reason='style="rich" renders with rich (the demo extra)')
    buffer = io.StringIO()
    tour = Tour(tmp_path, stream=buffer, style="rich")
    tour.section("Box [A]")
    tour.table(["prize", "bits"], [["3rd", "0.360"]])
    tour.erratum("0.361", "0.360")
    text = buffer.getvalue()
    for expected in ("Box [A]", "prize", "3rd", "0.360", "ERRATUM", "0.361"):
        assert expected in text
    assert not tour.progress()  # a StringIO is not a terminal


def test_auto_style_is_plain_off_a_terminal(tmp_path):
    tour = Tour(tmp_path, stream=io.StringIO())
    assert tour.style == "plain"
    assert tour.console is None


def test_values_are_recorded_once(tmp_path):
    tour, _ = _plain(tmp_path)
    assert tour.value("h", 1.5) == 1.5
    assert tour.values == {"h": 1.5}
    with pytest.raises(ValueError, match="'h' was already recorded"):
        tour.value("h", 2.0)


def test_bad_input(tmp_path):
    tour, _ = _plain(tmp_path)
    with pytest.raises(ValueError, match="`style` must be 'auto', 'rich' or 'plain'; got 'html'"):
        Tour(tmp_path, style="html")
    with pytest.raises(TypeError, match=r"cells must be strings formatted by the caller; got 0\.5"):
        tour.table(["p"], [[0.5]])
    with pytest.raises(ValueError, match="must have 2 cells like the headers; got 1"):
        tour.table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="figure `name` must be a plain file name; got 'a/b'"):
        tour.figure("a/b")
    with pytest.raises(ValueError, match="figure `name` must be a plain file name; got ''"):
        tour.figure("")


def test_plain_alignment_numbers_right_text_left(tmp_path):
    """A column is numeric, and right-aligned, when every cell is a number or empty (the
    blank cells of a mean row); any other column is left-aligned."""
    tour, buffer = _plain(tmp_path)
    tour.table(
        ["instance", "label", "bits"],
        [["x1", "[1, 0]", "1.737"], ["mean", "", "10.5"], ["x2", "inf", ""]],
    )
    assert buffer.getvalue().splitlines()[-5:] == [
        "  instance  label    bits",
        "  --------  ------  -----",
        "  x1        [1, 0]  1.737",
        "  mean               10.5",
        "  x2        inf",
    ]
