"""Circuits out of (and back into) circuitfind: JSON, DOT text, networkx, and images through graphviz.

The JSON layout is the MIB / EAP-IG graph file, so circuits move between the tools unchanged::

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false},
     "nodes": {"input": true, "a0.h1": false, ...},
     "edges": {"input->a0.h1<q>": {"score": 0.013, "in_graph": true}, ...},
     "circuitfind": {"version": 1, "model": ..., "config": ..., "stats": ...,
                     "metric_full": ..., "metric_empty": ..., "metric_circuit": ...}}

Every edge of the graph is listed, kept or not, so attribution scores survive the trip; a NaN score (never
tested) is written as ``null``. The file is strict JSON: other non-finite numbers (a threshold of ``inf``, an
infinite metric) are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"`` and read back as floats (NaN
metrics as ``null``). The ``circuitfind`` block is ours; files without it (EAP-IG's) load with NaN metrics and
empty metadata.

DOT text needs nothing installed; only :func:`render` runs graphviz's ``dot`` binary (the ``graphviz`` Python
package is never needed).

This module works on anything with a :class:`~circuitfind.circuit.Circuit`'s fields (:class:`CircuitData`) and
never imports :mod:`circuitfind.circuit`: ``Circuit``'s methods call it, and the readers return the fields that
``Circuit.from_dict`` / ``Circuit.load`` build the circuit from. Every node and edge name comes from the
:class:`~circuitfind.graph.Graph`.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from circuitfind.errors import ConfigError, RenderError, ShapeError, check_int
from circuitfind.fileio import atomic_write
from circuitfind.graph import Channel, Graph, NodeKind, position_edge_name

if TYPE_CHECKING:
    import networkx

__all__ = [
    "FORMAT_VERSION",
    "RENDER_FORMATS",
    "CircuitData",
    "fields_from_json_dict",
    "fields_from_json_file",
    "render",
    "save_json",
    "to_dot",
    "to_json_dict",
    "to_networkx",
]

FORMAT_VERSION = 1
"""Version of the ``circuitfind`` block of the JSON file; readers refuse newer versions."""

RENDER_FORMATS = ("svg", "png", "pdf", "jpg", "jpeg", "gif", "ps", "eps")
"""Output formats :func:`render` passes to ``dot -T``."""

# q red, k green, v blue; edges into MLPs and the logits gray.
_CHANNEL_COLORS = {Channel.Q: "#d62728", Channel.K: "#2ca02c", Channel.V: "#1f77b4", None: "#7f7f7f"}
# ColorBrewer Pastel1 / Set3: head fill per layer, cycling.
_LAYER_COLORS = ("#b3cde3", "#ccebc5", "#decbe4", "#fed9a6", "#ffffcc", "#e5d8bd", "#fddaec", "#8dd3c7")
_INPUT_COLOR = "#d9d9d9"
_MLP_COLOR = "#fbb4ae"
_LOGITS_COLOR = "#fff2ae"
_RANKDIRS = ("TB", "BT", "LR", "RL")
# Non-finite floats in strict JSON, and back.
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
# A circuit file describes a real model: these bounds refuse absurd layouts before anything is allocated.
MAX_LAYERS = MAX_HEADS = 1000
MAX_LAYOUT = 2 * 10**8  # senders x receivers of the dense (S, R) tensors; Llama-3.1-70B needs 8e7


class CircuitData(Protocol):
    """What the writers read from a circuit: the fields of :class:`~circuitfind.circuit.Circuit`."""

    # Read-only members (properties), so that a frozen dataclass satisfies the protocol.
    @property
    def graph(self) -> Graph: ...
    @property
    def mask(self) -> torch.Tensor: ...  # (S, R) bool
    @property
    def scores(self) -> torch.Tensor: ...  # (S, R) float
    @property
    def metric_full(self) -> float: ...
    @property
    def metric_empty(self) -> float: ...
    @property
    def metric_circuit(self) -> float: ...
    @property
    def config(self) -> Mapping[str, Any]: ...
    @property
    def stats(self) -> Mapping[str, Any]: ...
    @property
    def model(self) -> str: ...
    @property
    def n_edges(self) -> int: ...
    @property
    def node_mask(self) -> torch.Tensor | None: ...  # (S,) bool: a node-level circuit
    @property
    def node_scores(self) -> torch.Tensor | None: ...  # (S,) float
    @property
    def position_mask(self) -> torch.Tensor | None: ...  # (S, R, T) bool: a position-aware circuit
    @property
    def position_scores(self) -> torch.Tensor | None: ...  # (S, R, T) float, set with position_mask
    @property
    def position_labels(self) -> tuple[str, ...] | None: ...  # T labels, set with position_mask


def _positions(circuit: CircuitData) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """``(position_mask (S, R, T), position_scores (S, R, T), T labels)`` of a position-aware circuit, else None."""
    mask, scores, labels = circuit.position_mask, circuit.position_scores, circuit.position_labels
    if mask is None:
        return None
    if scores is None or labels is None:
        raise ShapeError("a circuit with a position_mask needs position_scores and position_labels too")
    return mask, scores, list(labels)


@lru_cache(maxsize=8)
def _flat_index(graph: Graph) -> dict[str, int]:
    """Edge name -> its flat ``s * R + r`` position in an ``(S, R)`` tensor, for every edge of the graph."""
    edge_s, edge_r = graph.edge_mask.nonzero(as_tuple=True)  # (E,), (E,) sender-major, as graph.edge_names
    return dict(zip(graph.edge_names, (edge_s * graph.n_receivers + edge_r).tolist(), strict=True))


# --- JSON ---------------------------------------------------------------------------------------------------
def _number(x: float) -> float | str:
    """``x`` as strict JSON: finite floats as they are, ``inf``, ``-inf`` and NaN as strings."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _jsonable(value: Any) -> Any:
    """A strict-JSON copy of a config/stats value (enums by value, non-finite floats as ``"inf"``/``"-inf"``/
    ``"nan"``, paths and other objects as text)."""
    if isinstance(value, float):
        return _number(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k.value if isinstance(k, enum.Enum) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and 0-d arrays
        return _jsonable(value.tolist())
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return str(value)


def _float_or_none(x: float) -> float | str | None:
    x = float(x)
    return None if math.isnan(x) else _number(x)


def _restored(value: Any) -> Any:
    """The inverse of :func:`_jsonable` for non-finite floats: ``"inf"``, ``"-inf"``, ``"nan"`` become floats."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def _score(value: Any) -> float | None:
    """A number, ``null`` (NaN) or one of the non-finite strings as a float; None when it is none of those."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        return _NONFINITE.get(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def to_json_dict(circuit: CircuitData) -> dict[str, Any]:
    """The circuit as a JSON-ready dict in the MIB / EAP-IG layout, with circuitfind's metadata.

    All edges of the graph are listed (NaN scores as ``None``), so :func:`fields_from_json_dict` restores the mask,
    the scores on every edge, the metrics, config and stats exactly. Scores off the graph's edges are not
    stored and come back NaN.

    Example:
        >>> d = circuit.to_dict()
        >>> sorted(d["edges"]["a0.h1->logits"])
        ['in_graph', 'score']
    """
    graph = circuit.graph
    edge_s, edge_r = graph.edge_mask.nonzero(as_tuple=True)  # (E,), (E,) sender-major, as graph.edge_names
    scores = circuit.scores[edge_s, edge_r].tolist()  # (E,)
    kept = circuit.mask[edge_s, edge_r].tolist()  # (E,)
    # ``s - s == 0`` holds exactly for finite floats; it is the cheap test for 100k+ edges.
    edges = {
        name: {"score": s if s - s == 0 else (None if s != s else _number(s)), "in_graph": k}
        for name, s, k in zip(graph.edge_names, scores, kept, strict=True)
    }
    positions = _positions_json(circuit)
    return {
        "cfg": {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": graph.parallel},
        "nodes": _nodes_json(circuit),
        "edges": edges,
        **({"positions": positions} if positions else {}),
        "circuitfind": {
            "version": FORMAT_VERSION,
            "model": circuit.model,
            "config": _jsonable(circuit.config),
            "stats": _jsonable(circuit.stats),
            "metric_full": _float_or_none(circuit.metric_full),
            "metric_empty": _float_or_none(circuit.metric_empty),
            "metric_circuit": _float_or_none(circuit.metric_circuit),
        },
    }


def _nodes_json(circuit: CircuitData) -> dict[str, Any]:
    """The 'nodes' entry: ``{name: in_graph}``; for a node-level circuit ``{name: {"in_graph", "score"}}`` (the
    EAP-IG node layout), the kept nodes being its units and ``logits`` always in."""
    graph = circuit.graph
    node_mask = circuit.node_mask
    if node_mask is None:
        return dict(zip(graph.node_names, graph.nodes_touched(circuit.mask).tolist(), strict=True))
    scores = circuit.node_scores
    values = [math.nan] * graph.n_senders if scores is None else scores.tolist()
    out = {
        name: {"in_graph": bool(k), "score": _float_or_none(v)}
        for name, k, v in zip(graph.sender_names, node_mask.tolist(), values, strict=True)
    }
    out[graph.node_names[-1]] = {"in_graph": True, "score": None}
    return out


def _positions_json(circuit: CircuitData) -> dict[str, Any] | None:
    """The 'positions' entry of a position-aware circuit: ``{"labels": [T labels], "edges": {edge name:
    {"scores": [T scores], "in_graph": [labels of the positions it is kept at]}}}`` for every edge; else None."""
    positions = _positions(circuit)
    if positions is None:
        return None
    (mask, position_scores, labels), graph = positions, circuit.graph
    edge_s, edge_r = graph.edge_mask.nonzero(as_tuple=True)  # (E,), (E,) sender-major, as graph.edge_names
    scores = position_scores[edge_s, edge_r].tolist()  # (E, T)
    kept = mask[edge_s, edge_r].tolist()  # (E, T)
    edges = {
        name: {
            "scores": [x if x - x == 0 else (None if x != x else _number(x)) for x in row],
            "in_graph": [label for label, k in zip(labels, on, strict=True) if k],
        }
        for name, row, on in zip(graph.edge_names, scores, kept, strict=True)
    }
    return {"labels": labels, "edges": edges}


def _position_fields(graph: Graph, positions: Any) -> dict[str, Any]:
    """``position_mask``, ``position_scores`` and ``position_labels`` from a 'positions' entry (or none)."""
    if positions is None:
        return {}
    labels = positions.get("labels") if isinstance(positions, dict) else None
    edges = positions.get("edges") if isinstance(positions, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not isinstance(edges, dict):
        raise ConfigError("'positions' must be {'labels': [str, ...], 'edges': {name: {'scores', 'in_graph'}}}")
    T, at = len(labels), {label: t for t, label in enumerate(labels)}
    mask = torch.zeros(graph.n_senders, graph.n_receivers, T, dtype=torch.bool)
    scores = torch.full((graph.n_senders, graph.n_receivers, T), math.nan)
    for name, entry in edges.items():
        s, r = graph.edge_index(name) if name in _flat_index(graph) else (None, None)
        values = entry.get("scores") if isinstance(entry, dict) else None
        if s is None or not isinstance(values, list) or len(values) != T:
            raise ConfigError(f"'positions.edges' entry {name!r} must be an edge with {T} scores; got {entry!r}")
        scores[s, r] = torch.tensor([math.nan if _score(v) is None else _score(v) for v in values])
        for label in entry.get("in_graph", []):
            if label not in at:
                raise ConfigError(f"'positions.edges.{name}.in_graph' names {label!r}, not one of {labels}")
            mask[s, r, at[label]] = True
    return {"position_mask": mask, "position_scores": scores, "position_labels": tuple(labels)}


def _node_fields(graph: Graph, data: dict[str, Any], nodes_on: torch.Tensor | None) -> dict[str, Any]:
    """``node_mask`` / ``node_scores`` of a node-level circuit file (nodes but no edges, or written at
    ``level="node"``); empty for an edge-level one."""
    meta = data.get("circuitfind") or {}
    config = meta.get("config") if isinstance(meta, dict) else None
    node_level = "edges" not in data or (isinstance(config, dict) and config.get("level") == "node")
    if nodes_on is None or not node_level:
        return {}
    nodes = data["nodes"]
    scores = torch.full((graph.n_senders,), math.nan)
    if isinstance(nodes, dict):
        for i, name in enumerate(graph.sender_names):
            entry = nodes.get(name)
            value = _score(entry.get("score")) if isinstance(entry, dict) else None
            if value is not None:
                scores[i] = value
    has_scores = bool(scores.isfinite().any())
    return {"node_mask": nodes_on[: graph.n_senders].clone(), "node_scores": scores if has_scores else None}


def _graph_from_cfg(cfg: Any) -> Graph:
    if not isinstance(cfg, dict):
        raise ConfigError(f"a circuit file needs a 'cfg' object with n_layers and n_heads; got {cfg!r}")
    values = {}
    for key, most in (("n_layers", MAX_LAYERS), ("n_heads", MAX_HEADS)):
        values[key] = check_int(cfg.get(key), f"'cfg.{key}'", minimum=1, maximum=most)
    parallel = cfg.get("parallel_attn_mlp", False)
    if not isinstance(parallel, bool):
        raise ConfigError(f"'cfg.parallel_attn_mlp' must be true or false; got {parallel!r}")
    L, H = values["n_layers"], values["n_heads"]
    senders, receivers = 1 + L * (H + 1), L * (3 * H + 1) + 1  # the graph's layout (REFERENCE §1)
    if senders * receivers > MAX_LAYOUT:
        raise ConfigError(
            f"'cfg' describes a graph of {L} layers x {H} heads ({senders:,} senders x {receivers:,} receivers), "
            f"larger than any model circuitfind handles (at most {MAX_LAYOUT:,} sender-receiver pairs); "
            "check n_layers and n_heads"
        )
    return Graph(L, H, parallel=parallel)


def _unknown_edge(graph: Graph, name: str) -> ConfigError:
    try:
        graph.edge_index(name)
        reason = "not an edge of this graph"  # unreachable: the name table holds every edge
    except ConfigError as e:
        reason = str(e)
    return ConfigError(
        f"edge {name!r} of the circuit file does not fit the graph in 'cfg' ({graph.describe()}): {reason}"
    )


def _nodes_in_graph(graph: Graph, nodes: Any) -> torch.Tensor:
    """``(S + 1,)`` bool from the 'nodes' entry: ``{name: bool}``, ``{name: {"in_graph": bool}}`` or names."""
    names = graph.node_names
    index = {n: i for i, n in enumerate(names)}
    if isinstance(nodes, list):
        nodes = dict.fromkeys(nodes, True)
    if not isinstance(nodes, dict):
        raise ConfigError(f"'nodes' must map node names to in_graph flags; got {type(nodes).__name__}")
    on = torch.zeros(len(names), dtype=torch.bool)
    for name, entry in nodes.items():
        if name not in index:
            raise ConfigError(
                f"node {name!r} of the circuit file is not a node of the graph in 'cfg' "
                f"({graph.describe()}); expected 'input', 'a{{L}}.h{{H}}', 'm{{L}}' or 'logits'"
            )
        flag = entry.get("in_graph", False) if isinstance(entry, dict) else entry
        if not isinstance(flag, bool | int):
            raise ConfigError(f"node {name!r}: expected true/false or {{'in_graph': true/false}}; got {entry!r}")
        on[index[name]] = bool(flag)
    return on


def fields_from_json_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a :class:`~circuitfind.circuit.Circuit` from a dict of :func:`to_json_dict` or an EAP-IG
    graph dict (``Circuit.from_dict`` builds the circuit from them).

    Edges missing from the file are not kept and score NaN, as do the graph's non-edges. A file with nodes
    but no ``edges`` (a node-level circuit) keeps every edge between nodes that are in the graph.

    Raises:
        ConfigError: the dict is malformed, or names an edge or node that the graph in ``cfg`` lacks.

    Example:
        >>> fields = fields_from_json_dict({"cfg": {"n_layers": 1, "n_heads": 1}, "edges": {"input->m0": True}})
        >>> int(fields["mask"].sum()), fields["model"]
        (1, '')
    """
    if not isinstance(data, dict) or "cfg" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"a circuit file is an object with 'cfg', 'nodes' and 'edges'; got {found}")
    graph = _graph_from_cfg(data["cfg"])
    nodes_on = _nodes_in_graph(graph, data["nodes"]) if "nodes" in data else None
    if "edges" in data:
        mask, scores = _edges_from_json(graph, data["edges"])
    elif nodes_on is not None:
        # EAP-IG's node level: every outgoing edge of a kept node whose receiving node is kept too.
        mask = graph.induced_by_nodes(nodes_on[: graph.n_senders])  # logits are always in the graph
        scores = torch.full(mask.shape, float("nan"))
    else:
        raise ConfigError("a circuit file needs 'edges' (or, for a node-level circuit, 'nodes'); found neither")
    fields = {"graph": graph, "mask": mask, "scores": scores, **_metadata_from_json(data.get("circuitfind") or {})}
    return {**fields, **_node_fields(graph, data, nodes_on), **_position_fields(graph, data.get("positions"))}


def _edges_from_json(graph: Graph, edges: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(S, R)`` mask and scores of the 'edges' entry: ``{name: {"score": ..., "in_graph": ...}}``."""
    if not isinstance(edges, dict):
        raise ConfigError(f"'edges' must map edge names to {{score, in_graph}}; got {type(edges).__name__}")
    flat_of = _flat_index(graph)
    flat, score_list, kept = [], [], []
    for name, entry in edges.items():
        i = flat_of.get(name)
        if i is None:
            raise _unknown_edge(graph, name)
        if isinstance(entry, dict):
            s, k = entry.get("score"), entry.get("in_graph", False)
        elif isinstance(entry, bool):
            s, k = None, entry
        else:
            raise ConfigError(f"edge {name!r}: expected {{'score': float|null, 'in_graph': bool}}; got {entry!r}")
        score = _score(s)
        if not isinstance(k, bool | int) or score is None:
            raise ConfigError(
                f'edge {name!r}: expected {{\'score\': float|null|"inf"|"-inf"|"nan", \'in_graph\': bool}}; '
                f"got {entry!r}"
            )
        flat.append(i)
        score_list.append(score)
        kept.append(bool(k))
    n_flat = graph.n_senders * graph.n_receivers
    mask = torch.zeros(n_flat, dtype=torch.bool)
    scores = torch.full((n_flat,), float("nan"))
    idx = torch.tensor(flat, dtype=torch.long)
    mask[idx] = torch.tensor(kept, dtype=torch.bool)
    scores[idx] = torch.tensor(score_list, dtype=torch.float64).float()
    return mask.view(graph.n_senders, graph.n_receivers), scores.view(graph.n_senders, graph.n_receivers)


def _metadata_from_json(meta: Any) -> dict[str, Any]:
    """The metrics, config, stats and model of the 'circuitfind' entry (NaN / empty where it is missing)."""
    if not isinstance(meta, dict):
        raise ConfigError(f"'circuitfind' must be an object; got {type(meta).__name__}")
    version = meta.get("version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"the circuit file has format version {version!r}; this circuitfind reads versions up to "
            f"{FORMAT_VERSION}. Upgrade circuitfind to load it."
        )
    out: dict[str, Any] = {}
    for key in ("metric_full", "metric_empty", "metric_circuit"):
        out[key] = _score(meta.get(key))
        if out[key] is None:
            expected = 'a number, null, "inf", "-inf" or "nan"'
            raise ConfigError(f"'circuitfind.{key}' must be {expected}; got {meta[key]!r}")
    for key in ("config", "stats"):
        if not isinstance(meta.get(key) or {}, dict):
            raise ConfigError(f"'circuitfind.{key}' must be an object; got {type(meta[key]).__name__}")
        out[key] = _restored(copy.deepcopy(meta.get(key) or {}))
    return {**out, "model": str(meta.get("model") or "")}


def save_json(circuit: CircuitData, path: str | os.PathLike[str]) -> Path:
    """Write the circuit as JSON (:func:`to_json_dict`), atomically: a reader never sees half a file.

    Parent directories are created. Returns the path written.

    Example:
        >>> save_json(circuit, tmp_path / "runs" / "circuit.json").name
        'circuit.json'
    """
    return atomic_write(path, json.dumps(to_json_dict(circuit), allow_nan=False))  # strict JSON: no NaN/Infinity


def fields_from_json_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fields of a circuit written by :func:`save_json`, or of an EAP-IG / MIB graph JSON file
    (``Circuit.load`` builds the circuit from them).

    Raises:
        ConfigError: the file is missing, is not JSON, or does not describe a circuit (the message names the
            file and the reason).

    Example:
        >>> fields = fields_from_json_file(circuit.save(tmp_path / "circuit.json"))
        >>> int(fields["mask"].sum()) == circuit.n_edges
        True
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"circuit file {str(path)!r} {what}; expected a JSON file written by Circuit.save")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"circuit file {str(path)!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"circuit file {str(path)!r} cannot be read: {e}") from None
    try:
        return fields_from_json_dict(data)
    except ConfigError as e:
        raise ConfigError(f"circuit file {str(path)!r}: {e}") from None


# --- DOT and networkx -------------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node_attrs(graph: Graph, i: int) -> dict[str, str]:
    if i == graph.n_senders:
        return {"shape": "doubleoctagon", "fillcolor": _LOGITS_COLOR}
    node = graph.senders[i]
    if node.kind is NodeKind.INPUT:
        return {"shape": "box", "fillcolor": _INPUT_COLOR}
    if node.kind is NodeKind.MLP:
        return {"shape": "box", "fillcolor": _MLP_COLOR}
    return {"shape": "ellipse", "fillcolor": _LAYER_COLORS[node.layer % len(_LAYER_COLORS)]}


def _attrs(attrs: Mapping[str, str | float]) -> str:
    return ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items())


def to_dot(circuit: CircuitData, *, scores: bool = True, rankdir: str = "BT") -> str:
    """The circuit as Graphviz DOT text; nothing needs to be installed to write it.

    Only nodes that touch a kept edge appear: ``input`` (gray box), heads (ellipses filled by layer), MLPs
    (red boxes), ``logits`` (double octagon). Edges into a head's query, key and value are red, green and blue
    and labelled ``q``/``k``/``v``; edges into MLPs and the logits are gray. A position-aware circuit draws one
    edge per kept position, labelled with the position (``q @S2``). With ``scores``, labels carry the
    edge's score and pen width grows with ``|score|`` (edges with a NaN score get neither). The heads of one
    layer share a rank.

    Args:
        circuit: the circuit to draw.
        scores: show scores (label and pen width).
        rankdir: layout direction, ``"BT"`` (input at the bottom), ``"TB"``, ``"LR"`` or ``"RL"``.

    Example:
        >>> (tmp_path / "circuit.dot").write_text(circuit.to_dot()) > 0
        True
        >>> # dot -Tsvg circuit.dot -o circuit.svg
    """
    if rankdir not in _RANKDIRS:
        raise ConfigError(f"rankdir must be one of {_RANKDIRS}; got {rankdir!r}")
    graph = circuit.graph
    names = graph.node_names
    on = graph.nodes_touched(circuit.mask).tolist()
    lines = [
        "digraph circuit {",
        f"  rankdir={rankdir};",
        '  graph [fontname="Helvetica"];',
        '  node [style="filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize="9", arrowsize="0.6"];',
    ]
    if circuit.model:
        lines.append(f"  label={_q(f'{circuit.model}: {circuit.n_edges} edges')}; labelloc=t;")
    for i, kept in enumerate(on):
        if kept:
            lines.append(f"  {_q(names[i])} [{_attrs(_node_attrs(graph, i))}];")
    for layer in range(graph.n_layers):
        senders = [graph.head_sender(layer, h) for h in range(graph.n_heads)]
        if graph.parallel:  # a parallel MLP reads the same residual stream as the heads
            senders.append(graph.mlp_sender(layer))
        members = [names[i] for i in senders if on[i]]
        if len(members) > 1:
            lines.append("  { rank=same; " + " ".join(f"{_q(m)};" for m in members) + " }")

    drawn = _drawn_edges(circuit)
    finite = [abs(x) for *_, x in drawn if math.isfinite(x)]
    top = max(finite, default=0.0)
    for s, r, at, score in drawn:
        receiver = graph.receivers[r]
        channel = receiver.channel
        color = _CHANNEL_COLORS[channel]
        label = (channel.value if channel is not None else "") + ("" if at is None else f" @{at}")
        attrs: dict[str, str | float] = {"color": color, "fontcolor": color}
        if scores and math.isfinite(score):
            label = f"{label} {score:.3g}".strip()
            attrs["penwidth"] = f"{0.5 + 4.5 * abs(score) / top:.2f}" if top > 0 else "1"
        if label:
            attrs["label"] = label
        attrs["tooltip"] = graph.edge_name(s, r) if at is None else position_edge_name(graph.edge_name(s, r), at)
        lines.append(f"  {_q(names[s])} -> {_q(receiver.node.name)} [{_attrs(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _drawn_edges(circuit: CircuitData) -> list[tuple[int, int, str | None, float]]:
    """``(sender, receiver, position label or None, score)`` of every kept edge (position-edge), sender-major."""
    positions = _positions(circuit)
    if positions is None:
        s_idx, r_idx = circuit.mask.nonzero(as_tuple=True)  # (K,), (K,) sender-major
        scores = circuit.scores[s_idx, r_idx].tolist()
        return [(s, r, None, x) for s, r, x in zip(s_idx.tolist(), r_idx.tolist(), scores, strict=True)]
    mask, position_scores, labels = positions
    s_idx, r_idx, t_idx = mask.nonzero(as_tuple=True)
    scores = position_scores[s_idx, r_idx, t_idx].tolist()
    rows = zip(s_idx.tolist(), r_idx.tolist(), t_idx.tolist(), scores, strict=True)
    return [(s, r, labels[t], x) for s, r, t, x in rows]


def to_networkx(circuit: CircuitData) -> networkx.MultiDiGraph:
    """The kept edges as a ``networkx.MultiDiGraph`` from sender node to receiving node.

    Nodes carry ``kind`` (``"input"``, ``"head"``, ``"mlp"``, ``"logits"``), ``layer`` and ``head`` (-1 where
    they do not apply; the logits sit at ``layer = n_layers``). Edges are keyed by the edge name and carry
    ``name``, ``channel`` (``"q"``, ``"k"``, ``"v"`` or None) and ``score``; q, k and v edges between the same
    two nodes stay separate.

    Example:
        >>> g = circuit.to_networkx()
        >>> g.number_of_edges() == circuit.n_edges
        True
    """
    import networkx as nx

    graph = circuit.graph
    out = nx.MultiDiGraph(model=circuit.model, n_layers=graph.n_layers, n_heads=graph.n_heads, parallel=graph.parallel)
    on = graph.nodes_touched(circuit.mask).tolist()
    for i, kept in enumerate(on):
        if kept:
            node = graph.senders[i] if i < graph.n_senders else graph.receivers[graph.logits_receiver].node
            out.add_node(node.name, kind=node.kind.value, layer=node.layer, head=node.head)
    s_idx, r_idx = circuit.mask.nonzero(as_tuple=True)  # (K,), (K,)
    kept_scores = circuit.scores[s_idx, r_idx].tolist()
    for s, r, score in zip(s_idx.tolist(), r_idx.tolist(), kept_scores, strict=True):
        edge = graph.edge(s, r)
        channel = edge.receiver.channel
        out.add_edge(
            edge.sender.name,
            edge.receiver.node.name,
            key=edge.name,
            name=edge.name,
            channel=None if channel is None else channel.value,
            score=score,
        )
    return out


# --- images -------------------------------------------------------------------------------------------------
def render(circuit: CircuitData, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Draw the circuit to an image with graphviz's ``dot`` binary.

    Args:
        circuit: the circuit to draw (see :func:`to_dot` for the style).
        path: the file to write; parent directories are created.
        fmt: ``svg``, ``png``, ``pdf``... (see :data:`RENDER_FORMATS`); inferred from the suffix when None.

    Raises:
        RenderError: ``dot`` is not installed, or it failed (its stderr is in the message).
        ConfigError: the format is unknown or cannot be inferred.

    Example:
        >>> circuit.render("figures/ioi_circuit.svg")  # doctest: +SKIP
        PosixPath('figures/ioi_circuit.svg')
    """
    path = Path(path).expanduser()
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in RENDER_FORMATS:
        raise ConfigError(
            f"cannot render {str(path)!r}: format {fmt or '(none)'!r} is not one of {RENDER_FORMATS}; "
            f"give the path a suffix such as .svg, or pass fmt='svg'"
        )
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError(
            "rendering needs graphviz's `dot` binary, which is not installed (not on PATH). "
            "Install graphviz: `apt-get install graphviz`, `conda install -c conda-forge graphviz` "
            "or `brew install graphviz`. "
            "Without it, circuit.to_dot() still writes the DOT text: "
            "Path('circuit.dot').write_text(circuit.to_dot())."
        )
    try:
        proc = subprocess.run(
            [dot, f"-T{fmt}"],
            input=to_dot(circuit).encode(),
            capture_output=True,
            check=False,
        )
    except OSError as e:
        raise RenderError(f"could not run graphviz's dot ({dot}): {e}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise RenderError(f"graphviz's dot failed with exit code {proc.returncode} writing {str(path)!r}: {stderr}")
    return atomic_write(path, proc.stdout)  # through the one writer: atomic, and the umask's permissions
