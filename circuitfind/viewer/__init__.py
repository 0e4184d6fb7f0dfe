"""The circuit explorer: one self-contained, offline HTML file per circuit.

:func:`to_html` writes it (``Circuit.to_html`` and ``circuitfind view`` call it). The file shows the graph
layered by layer with every kept edge (width by ``|score|``, colour by sign, q/k/v inputs told apart), a size
slider that redraws the top-k edges from the stored scores beside the run's faithfulness-vs-size curve, and
node panels with attention heatmaps, direct effects and head roles (:mod:`circuitfind.analysis`).

Example:
    >>> circuit.to_html(tmp_path / "ioi.html", model=pm, task=task).exists()  # tokenizer=tok for token text
    True
"""

from __future__ import annotations

from circuitfind.viewer.data import DEFAULT_MAX_PROMPTS, ExplorerData, PromptView, collect
from circuitfind.viewer.html import render_html, to_html
from circuitfind.viewer.payload import DEFAULT_MAX_EDGES, build_payload, ranked_edges

__all__ = [
    "DEFAULT_MAX_EDGES",
    "DEFAULT_MAX_PROMPTS",
    "ExplorerData",
    "PromptView",
    "build_payload",
    "collect",
    "ranked_edges",
    "render_html",
    "to_html",
]
