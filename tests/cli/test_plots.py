"""plots: a figure for each kind of reproduce result, next to its JSON; None without matplotlib."""

from __future__ import annotations

import pytest

from circuitfind.cli import plots

ROC = {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.9, 1.0], "auc": 0.95}
RESULTS = {
    "tracr": {"model": "tracr-reverse", "task": "tracr-reverse", "runs": {"zero": {**ROC, "ground_truth": "gt"}}},
    "gpt2": {"model": "gpt2", "task": "ioi", **ROC},
    "faithfulness": {
        "model": "smollm2",
        "task": "ioi",
        "points": [
            {"threshold": 0.1, "fraction": 0.01, "faithfulness": 0.6},
            {"threshold": 0.0, "fraction": 1.0, "faithfulness": 1.0},
        ],
    },
}


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_plot_reproduction_draws_next_to_the_json(tmp_path, kind):
    pytest.importorskip("matplotlib")
    result = {**RESULTS[kind], "json": str(tmp_path / f"{kind}.json")}
    path = plots.plot_reproduction(result)
    assert path == tmp_path / f"{kind}.png" and path.stat().st_size > 0


def test_without_matplotlib_nothing_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "new_figure", lambda size: None)
    result = {**RESULTS["gpt2"], "json": str(tmp_path / "roc.json")}
    assert plots.plot_reproduction(result) is None and not any(tmp_path.iterdir())
