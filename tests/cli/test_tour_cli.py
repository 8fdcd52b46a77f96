"""`crossentropy tour` on the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crossentropy.cli import main


def test_tour_returns_0_and_writes_figures(tmp_path, capsys):
    pytest.importorskip("torch", reason="the tour's classifier trains with torch")
    pytest.importorskip("sklearn", reason="the tour's classifier loads scikit-learn's digits")
    out = tmp_path / "figures"
    assert main(["tour", "--out", str(out), "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "ERRATUM" in text  # plain text when stdout is not a terminal
    assert "\x1b[" not in text
    for number in ("1.157", "1.571", "1.330", "0.142", "0.9215"):
        assert number in text
    assert "A real classifier" in text
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert "classifier_loss_curve.png" in pngs
    assert "entropy_term.png" in pngs
    assert all((out / name).stat().st_size > 0 for name in pngs)


def test_no_train_and_quiet(tmp_path, capsys):
    assert main(["tour", "--out", str(tmp_path), "--no-train", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "box_entropy_terms.png").is_file()
    assert not (tmp_path / "classifier_loss_curve.png").exists()


def test_no_train_removes_an_earlier_runs_classifier_figures(tmp_path):
    """A run without the classifier leaves no figure of it from an earlier run behind, and
    touches nothing else in the folder."""
    for name in ("classifier_loss_curve.png", "classifier_predictions.png", "mine.png"):
        (tmp_path / name).write_bytes(b"earlier")
    assert main(["tour", "--out", str(tmp_path), "--no-train", "--quiet"]) == 0
    assert not (tmp_path / "classifier_loss_curve.png").exists()
    assert not (tmp_path / "classifier_predictions.png").exists()
    assert (tmp_path / "mine.png").read_bytes() == b"earlier"


@pytest.mark.parametrize("epochs", ["-1", "many"])
def test_bad_epochs_is_a_usage_error(tmp_path, capsys, epochs):
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--out", str(tmp_path), "--epochs", epochs])
    assert exit_info.value.code == 2
    assert f"must be an integer >= 0; got '{epochs}'" in capsys.readouterr().err


def test_out_is_a_file_is_bad_data(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main(["tour", "--out", str(target), "--no-train"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "`out` must be a folder for the figures; got the file" in captured.err


def test_python_dash_m_has_the_tour():
    done = subprocess.run(
        [sys.executable, "-m", "crossentropy", "tour", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--out", "--epochs", "--no-train", "--quiet"):
        assert option in done.stdout


def test_options_reach_run_tour(monkeypatch, tmp_path):
    """Each option maps to its run_tour argument; the defaults are the documented ones."""
    import pathlib

    import crossentropy.tour

    calls = []
    monkeypatch.setattr(
        crossentropy.tour, "run_tour", lambda out, **options: calls.append((out, options))
    )
    assert main(["tour"]) == 0
    assert main(["tour", "--out", str(tmp_path), "--epochs", "0", "--no-train", "--quiet"]) == 0
    assert main(["tour", "--plain", "--epochs", "7"]) == 0
    assert calls == [
        (
            pathlib.Path("tour-output"),
            {"train": True, "epochs": 20, "style": "auto", "quiet": False},
        ),
        (tmp_path, {"train": False, "epochs": 0, "style": "auto", "quiet": True}),
        (
            pathlib.Path("tour-output"),
            {"train": True, "epochs": 7, "style": "plain", "quiet": False},
        ),
    ]


def test_interrupt_is_exit_130(monkeypatch, capsys):
    import crossentropy.tour

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(crossentropy.tour, "run_tour", interrupted)
    assert main(["tour", "--no-train"]) == 130
    assert capsys.readouterr().err == "crossentropy tour: interrupted\n"
