"""The sweep command's drawing: a figure of its own, never the process's matplotlib state."""

from __future__ import annotations

import pytest

from circuitfind.sweeps.command import plot_faithfulness_vs_size

matplotlib = pytest.importorskip("matplotlib")


def _row(method: str, fraction: float, f: float) -> dict:
    return {"status": "done", "task": "ioi", "method": method, "model": "m", "cut": f"n_edges={fraction}",
            "fraction": fraction, "faithfulness": f}  # fmt: skip


def test_drawing_a_sweep_plot_leaves_the_backend_and_pyplot_unchanged(tmp_path):
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # a backend the plot must not replace by Agg
    try:
        figures = plt.get_fignums()
        rows = [_row("eap", 0.01, 0.5), _row("eap", 0.1, 0.9), _row("eap-ig", 0.01, 0.7)]
        path = plot_faithfulness_vs_size(rows, tmp_path / "f.png")
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == figures  # no pyplot figure left open (or created)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG was still written
    finally:
        matplotlib.use(before)
