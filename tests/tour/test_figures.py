"""The figure functions: each writes a readable PNG, deterministically, without pyplot state."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from crossentropy import plot

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
