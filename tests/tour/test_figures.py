"""The figure functions: each writes a readable PNG, deterministically, without pyplot state."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from crossentropy import plot
from tests import reference

matplotlib = pytest.importorskip("matplotlib")


def _draw_all(folder):
    images = np.arange(3 * 64, dtype=float).reshape(3, 8, 8) % 17
    uniform = np.full((3, 10), 0.1)
    peaked = np.full((3, 10), 0.01)
    peaked[:, [2, 0, 4]] = 0.91
    return [
        plot.plot_information_term(path=folder / "term.png"),
        plot.plot_binary_entropy(path=folder / "binary.png", marks={"coin": 0.5}),
        plot.plot_entropy_terms(
            {"A": [0.1, 0.2, 0.7], "B": [0.3, 0.3, 0.4]}, path=folder / "boxes.png"
        ),
        plot.plot_cross_entropy_gap(
            [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.2, 0.5], path=folder / "gap.png"
        ),
        plot.plot_loss_curve([3.3, 1.0, 0.5], [3.4, 1.1, 0.6], path=folder / "curve.png"),
        plot.plot_predictions(
            images, [2, 0, 4], uniform, peaked, path=folder / "nested" / "predictions.png"
        ),
    ]


def test_every_figure_is_a_png_and_deterministic(tmp_path):
    backend = matplotlib.get_backend()
    first = _draw_all(tmp_path / "one")
    second = _draw_all(tmp_path / "two")
    for path_one, path_two in zip(first, second, strict=True):
        data = path_one.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert data == path_two.read_bytes(), path_one.name
        height, width = matplotlib.image.imread(path_one).shape[:2]
        assert width >= 400
        assert height >= 300
    # Figures are rendered by the Agg canvas directly: no pyplot, no backend switch.
    assert matplotlib.get_backend() == backend
    assert (
        "matplotlib.pyplot" not in sys.modules
        or sys.modules["matplotlib.pyplot"].get_fignums() == []
    )


def test_importing_plot_does_not_import_matplotlib():
    import subprocess

    code = "import crossentropy.plot, sys; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the plot functions save, kept for inspection."""
    from crossentropy.plot import _figures

    figures = []
    save = _figures._save

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(_figures, "_save", keep)
    return figures


def _term(x: float) -> float:
    return 0.0 if x == 0 else x * reference.information(x)


def test_information_term_curve_and_peak(tmp_path, drawn):
    plot.plot_information_term(path=tmp_path / "term.png")
    axes = drawn[0].axes[0]
    x, y = (np.asarray(v, dtype=float) for v in axes.lines[0].get_data())
    np.testing.assert_allclose(y, [_term(v) for v in x], rtol=0, atol=1e-15)
    # SEED.md: the peak is at 1/e = 0.36787944117144233, of height 0.530737845423043.
    assert any(
        text.get_text() == "peak at x = 1/e = 0.368\nheight 1/(e ln 2) = 0.531 bits"
        for text in axes.texts
    )
    peak_x, peak_y = (float(v[0]) for v in axes.lines[1].get_data())
    assert peak_x == pytest.approx(0.36787944117144233, abs=1e-15)
    assert peak_y == pytest.approx(0.530737845423043, abs=1e-15)


def test_binary_entropy_marks(tmp_path, drawn):
    marks = {"eating today": 0.99, "coin flip": 0.5}
    plot.plot_binary_entropy(path=tmp_path / "binary.png", marks=marks)
    axes = drawn[0].axes[0]
    x, y = (np.asarray(v, dtype=float) for v in axes.lines[0].get_data())
    np.testing.assert_allclose(y, [reference.binary_entropy(v) for v in x], rtol=0, atol=1e-15)
    texts = [text.get_text() for text in axes.texts]
    for (label, p), line in zip(marks.items(), axes.lines[1:], strict=True):
        height = reference.binary_entropy(p)
        assert f"{label}\nH = {height:.3f}" in texts
        assert float(line.get_ydata()[0]) == pytest.approx(height, abs=1e-15)


def test_entropy_terms_bars_and_legend(tmp_path, drawn):
    boxes = {"box A": [0.1, 0.2, 0.7], "box B": [0.3, 0.3, 0.4]}
    plot.plot_entropy_terms(boxes, path=tmp_path / "boxes.png")
    axes = drawn[0].axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    expected = [_term(p) for box in boxes.values() for p in box]
    np.testing.assert_allclose(heights, expected, rtol=0, atol=1e-15)
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    # SEED.md section 6: H(A) = 1.157, H(B) = 1.571 bits; box A's 0.7 term is 0.360.
    assert labels == ["box A: H = 1.157 bits", "box B: H = 1.571 bits"]
    assert "p=0.7\n0.360" in [text.get_text() for text in axes.texts]


def test_cross_entropy_gap_moves_q_from_p_to_r(tmp_path, drawn):
    p, far = [0.5, 0.2, 0.2, 0.1], [0.1, 0.2, 0.2, 0.5]
    plot.plot_cross_entropy_gap(p, far, path=tmp_path / "gap.png", steps=11)
    axes = drawn[0].axes[0]
    t, cross = (np.asarray(v, dtype=float) for v in axes.lines[0].get_data())
    expected = [
        reference.cross_entropy(p, [(1 - s) * a + s * b for a, b in zip(p, far, strict=True)])
        for s in t
    ]
    np.testing.assert_allclose(cross, expected, rtol=0, atol=1e-12)
    # SEED.md: H(P) = 1.761 at t = 0 (Q = P), H(P, R) = 2.689735 at t = 1.
    assert cross[0] == pytest.approx(1.7609640474436812, abs=1e-12)
    assert cross[-1] == pytest.approx(2.689735, abs=1e-6)
    floor = float(axes.lines[1].get_ydata()[0])
    assert floor == pytest.approx(1.7609640474436812, abs=1e-12)


def test_loss_curve_and_predictions_draw_their_data(tmp_path, drawn):
    train, test = [3.3, 1.0, 0.5], [3.4, 1.1, 0.6]
    plot.plot_loss_curve(train, test, path=tmp_path / "curve.png", floor=3.3219)
    axes = drawn[0].axes[0]
    assert [list(line.get_ydata()) for line in axes.lines[:2]] == [train, test]
    before = np.full((2, 10), 0.1)
    after = np.full((2, 10), 0.02)
    after[0, 3] = after[1, 7] = 0.82
    after[1, 3] = 0.02
    plot.plot_predictions(np.zeros((2, 8, 8)), [3, 5], before, after, path=tmp_path / "p.png")
    titles = [axes.get_title() for axes in drawn[1].axes[:2]]
    assert titles == [
        f"true class 3\nCE after = {reference.information(0.82):.3f} bits",
        f"true class 5\nCE after = {reference.information(0.02):.3f} bits",
    ]
