"""The ACDC paper's curves (reproduce/paper.py): the library computes and writes the points as JSON, and the figure
is drawn from that JSON only when asked (by cli/plots.py)."""

from __future__ import annotations

import importlib.util

from circuitfind.cli.plots import plot_reproduction
from circuitfind.reproduce.paper import reproduce


def test_reproduce_writes_json_and_the_figure_is_drawn_from_it(tmp_path):
    res = reproduce("tracr-proportion", thresholds=[1e-2], out_dir=tmp_path, n_prompts=8, progress=False)
    assert res["runs"]["zero"]["auc"] == 1.0 and res["runs"]["zero"]["ground_truth"] == "ground_truth_acdc"
    assert res["json"] == str(tmp_path / "roc_tracr-proportion.json") and (tmp_path / res["json"]).is_file()
    assert not (tmp_path / "roc_tracr-proportion.png").exists()  # the library computes; drawing is asked for
    figure = plot_reproduction(res)
    if importlib.util.find_spec("matplotlib") is None:  # plot is an optional extra: without it, no figure
        assert figure is None
    else:
        assert figure == tmp_path / "roc_tracr-proportion.png" and figure.is_file()
