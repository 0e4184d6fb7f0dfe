"""The two-model explorer: both circuits of a :class:`~circuitfind.compare.ModelDiff` in one graph.

The graph draws the union of the two circuits; edges only in A, only in B and in both have their own colours
(scores: A's where A kept the edge, else B's). Hovering a node shows its weight and activation differences.
The payload is the explorer's own (:func:`~circuitfind.viewer.payload.build_payload`) plus a ``diff`` part:
``model_a``, ``model_b``, ``jaccard``, ``side`` (per embedded edge: ``"a"``, ``"b"``, ``"ab"`` or ``""``),
per sender ``weight``, ``weight_rel``, ``activation``, ``activation_rel``, and the top ``logprobs``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from circuitfind.fileio import atomic_write
from circuitfind.viewer.html import render_html
from circuitfind.viewer.payload import DEFAULT_MAX_EDGES, _round, build_payload

__all__ = ["diff_html", "diff_payload"]


def _per_sender(graph, rows: list[dict[str, Any]], key: str) -> list[float | None]:
    out: list[float | None] = [None] * graph.n_senders
    for r in rows:
        v = r[key]
        out[graph.sender_index(r["node"])] = _round(v) if isinstance(v, float) and math.isfinite(v) else None
    return out


def diff_payload(d, *, max_edges: int = DEFAULT_MAX_EDGES) -> dict[str, Any]:
    """The explorer's JSON for a :class:`~circuitfind.compare.ModelDiff` (see the module docstring).

    Example:
        >>> from circuitfind.compare import diff
        >>> payload = diff_payload(diff(pm, pm, task, n_edges=5))
        >>> payload["diff"]["jaccard"], sorted(set(payload["diff"]["side"]) - {""})
        (1.0, ['ab'])
    """
    ca, cb = d.circuit_a, d.circuit_b
    g = ca.graph
    scores = torch.where(ca.mask, ca.scores, cb.scores)
    union = ca.replace(mask=ca.mask | cb.mask, scores=scores, model=f"{d.model_a or 'A'} vs {d.model_b or 'B'}")
    payload = build_payload(union, None, max_edges=max_edges)
    sides = []
    for s, r in zip(payload["edges"]["s"], payload["edges"]["r"], strict=True):
        a, b = bool(ca.mask[s, r]), bool(cb.mask[s, r])
        sides.append("ab" if a and b else "a" if a else "b" if b else "")
    payload["diff"] = {
        "model_a": d.model_a or "A",
        "model_b": d.model_b or "B",
        "jaccard": _round(d.jaccard),
        "side": sides,
        "weight": _per_sender(g, d.weights, "diff"),
        "weight_rel": _per_sender(g, d.weights, "relative"),
        "activation": _per_sender(g, d.activations, "diff"),
        "activation_rel": _per_sender(g, d.activations, "relative"),
        "logprobs": d.to_dict()["logprobs"],
    }
    return payload


def diff_html(d, path: str | os.PathLike[str], *, max_edges: int = DEFAULT_MAX_EDGES) -> Path:
    """Write the two-model explorer of ``d`` to ``path`` (one offline HTML file).

    Example:
        >>> from circuitfind.compare import diff
        >>> diff_html(diff(pm, pm, task, n_edges=5), tmp_path / "diff.html").name
        'diff.html'
    """
    title = f"{d.model_a or 'A'} vs {d.model_b or 'B'}: {d.task} circuits"
    return atomic_write(path, render_html(diff_payload(d, max_edges=max_edges), title))
