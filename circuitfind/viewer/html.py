"""One self-contained HTML file per circuit: the template, its script and style, and the data, inlined.

The file needs no network and no server: open it from ``file://``. The script and style are hand-written
(``circuitfind/viewer/static/``); no JavaScript library is vendored.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError
from circuitfind.fileio import atomic_write
from circuitfind.tasks import resolve_task
from circuitfind.viewer.data import DEFAULT_MAX_PROMPTS, ExplorerData, collect, empty
from circuitfind.viewer.payload import DEFAULT_MAX_EDGES, build_payload

__all__ = ["render_html", "to_html"]

_STATIC = ("explorer.html", "explorer.css", "explorer.js")


def _static(name: str) -> str:
    return resources.files("circuitfind.viewer").joinpath("static", name).read_text(encoding="utf-8")


SCRIPT_ESCAPES = str.maketrans(  # the one rule for JSON embedded in a <script> element
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _script_json(payload: dict[str, Any]) -> str:
    """``payload`` as JSON safe inside a ``<script>`` element: every ``<``, ``>``, ``&``, U+2028 and U+2029 written
    as a ``\\u`` escape. Escaping ``</`` alone is not enough: an HTML parser reads ``<!--<script>`` inside a
    script as the start of an escaped comment and the page goes blank. These characters occur only inside JSON
    strings, where the escapes read back as the same text."""
    text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    return text.translate(SCRIPT_ESCAPES)


def render_html(payload: dict[str, Any], title: str = "circuit") -> str:
    """The HTML text of the explorer for a payload of :func:`~circuitfind.viewer.payload.build_payload`.

    Example:
        >>> text = render_html(build_payload(circuit))
        >>> text.startswith("<!doctype html>"), "__DATA__" in text
        (True, False)
    """
    page, css, js = (_static(n) for n in _STATIC)
    data = _script_json(payload)
    parts = {"__TITLE__": html.escape(title), "__CSS__": css, "__JS__": js, "__DATA__": data}
    out = []
    rest = page
    # one pass over the template's markers, so that nothing inserted is scanned for markers again
    while True:
        hits = [(rest.find(m), m) for m in parts if rest.find(m) >= 0]
        if not hits:
            out.append(rest)
            break
        at, marker = min(hits)
        out.append(rest[:at])
        out.append(parts[marker])
        rest = rest[at + len(marker) :]
    return "".join(out)


def to_html(
    circuit,
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    task: Any = None,
    tokenizer: Any = None,
    data: ExplorerData | None = None,
    max_edges: int = DEFAULT_MAX_EDGES,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    roles: bool = True,
    head_classes: Any = None,
    frequency: dict[str, float] | None = None,
) -> Path:
    """Write the circuit explorer for ``circuit`` to ``path`` (one self-contained HTML file; atomically).

    With a ``model`` and a ``task`` the file also shows each head's attention on the task's prompts, every
    node's direct effect and the head-role table; without them, the graph, the size slider, the
    faithfulness curve and the run's record.

    Args:
        circuit: a :class:`~circuitfind.circuit.Circuit`.
        path: the ``.html`` file to write; parent folders are created.
        model: a transformers model, a :class:`~circuitfind.engine.patchable.PatchableModel`, or a name for
            :func:`~circuitfind.load_model` (then its tokenizer is used).
        task: a :class:`~circuitfind.tasks.Task`, or anything :func:`~circuitfind.tasks.resolve_task` takes
            (a built-in name is generated with the circuit's recorded ``n_prompts`` and ``seed``).
        tokenizer: for token labels (default: the one loaded with a model name).
        data: precomputed model data (instead of ``model`` and ``task``).
        max_edges: top edges to embed, the slider's range (default 5,000).
        max_prompts: task prompts to embed (default 20).
        roles: compute the head-role table (a few seconds).
        head_classes: a :class:`~circuitfind.analysis.HeadClasses` table: heads show their IOI class.
        frequency: ``{edge name: inclusion frequency}`` (``report.json``'s ``stability.edge_frequency``): edges are
            then coloured by how often the stability resamples kept them.

    Returns:
        the path written.

    Example:
        >>> circuit.to_html(tmp_path / "circuit.html", model=pm, task=task).name  # tokenizer=tok for token text
        'circuit.html'
    """
    if data is None and (model is None) != (task is None):
        raise ConfigError(
            "the explorer runs the model on the task's prompts: pass both model= and task= (or neither, for the "
            f"graph and the run's record only); got {'model' if task is None else 'task'} alone"
        )
    if data is None and model is not None:
        pm, tokenizer = resolve_model(model, tokenizer)
        n = int(circuit.config.get("n_prompts") or max_prompts)
        seed = int(circuit.config.get("seed") or 0)
        task = resolve_task(task, tokenizer, n=n, seed=seed)
        data = collect(pm, task, tokenizer, max_prompts=max_prompts, roles=roles)
    if head_classes is not None:
        base = empty(circuit.config.get("task", "")) if data is None else data
        data = dataclasses.replace(base, classes=head_classes)
    payload = build_payload(circuit, data, max_edges=max_edges, frequency=frequency)
    title = f"{circuit.model or 'circuit'}: {circuit.config.get('task', '')} circuit".strip()
    return atomic_write(path, render_html(payload, title))
