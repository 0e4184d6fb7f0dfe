"""The explorer's embedded data: a circuit's ranked edges and run record, plus the model data, as one JSON dict.

Layout (``version`` 1)::

    {"version": 1, "model": str,
     "graph": {"n_layers", "n_heads", "parallel", "n_edges",
               "nodes": {"name", "kind", "layer", "head"},        # S + 1 each: the senders, then the logits
               "receivers": {"node", "channel", "name"}},         # R each: node index, "q"/"k"/"v" or null
     "edges": {"s": [...], "r": [...], "score": [...], "n_ranked": m},   # sender / receiver indices
               # a position-aware circuit adds "at": [labels of each edge's kept positions, "S2,END"]
     "kept": [...],                      # indices into "edges" of the saved circuit's edges
     "ranking": {"absolute", "from_input", "cap", "n_scored"},
     "circuit": {"n_edges", "k", "metric", "metric_full", "metric_empty", "metric_circuit", "recovered",
                 "method", "config", "stats", "probes", "trace", "target"},
     "task": {"name", "prompts": [{"clean", "corrupted", "tokens", "answer_pos", "answers", "wrong"}]},
     "attention": {"encoding": "...", "data": [base64 per prompt]},
     "direct": {"mean": [S], "per_prompt": [[N] x S]},
     "roles": {"columns": {name: doc}, "scores": {name: [L*H]}, "settings": {...}}}

The first ``n_ranked`` edges are the circuit's top edges by score, best first, exactly as
:func:`circuitfind.selection.edge_ranking` orders them (signed, or by ``|score|`` when the run was
``absolute``; unscored edges are not ranked): the explorer's top-k is the first k of them. At most
``cap`` are embedded; kept edges outside them follow. Node and receiver names, kinds and places come from
:mod:`circuitfind.graph`, so the explorer never spells a name or recomputes the index layout itself.
Attention probabilities are stored as bytes (``round(255 p)``), the lower triangle of each head's ``n x n``
pattern, layer by layer and head by head.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import torch

from circuitfind.errors import ConfigError, check_int
from circuitfind.export import _jsonable
from circuitfind.graph import Graph
from circuitfind.selection.cuts import edge_ranking
from circuitfind.viewer.data import ExplorerData

__all__ = ["DEFAULT_MAX_EDGES", "PAYLOAD_VERSION", "build_payload", "ranked_edges"]

PAYLOAD_VERSION = 1
DEFAULT_MAX_EDGES = 5000
"""Ranked edges the explorer embeds (its slider's range). 5,000 of the default model's 123,211 edges take about
100 kB and redraw in well under a second; the whole ranking stays in circuit.json."""

_SIG = 6  # significant digits of embedded scores (the order is fixed by the ranking, not by these)


def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{_SIG}g}")


def ranked_edges(circuit, cap: int = DEFAULT_MAX_EDGES) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The circuit's scored edges, best first, at most ``cap`` of them: ``(sender, receiver)`` index tensors and
    the number of edges that have a score (not NaN).

    Example:
        >>> s, r, n = ranked_edges(circuit, 3)
        >>> len(s), n, circuit.graph.n_edges
        (3, 13, 13)
    """
    g = circuit.graph
    absolute = bool(circuit.config.get("absolute", False))
    scored = ~torch.isnan(circuit.scores) & g.edge_mask  # NaN: never tested or scored, ranked last, not embedded
    order = edge_ranking(g, circuit.scores, absolute=absolute)  # (E,) flat indices, as discovery ranks them
    n_scored = int(scored.sum())
    order = order[: min(cap, n_scored)]
    R = g.n_receivers
    return order // R, order % R, n_scored


def _encode_patterns(patterns: torch.Tensor) -> str:
    """``(L, H, n, n)`` probabilities -> base64 bytes of the lower triangles, layer, head, query, key order."""
    L, H, n, _ = patterns.shape
    rows, cols = torch.tril_indices(n, n)  # query-major: (0,0), (1,0), (1,1), ...
    tri = patterns[:, :, rows, cols]  # (L, H, n(n+1)/2)
    q = (tri.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def _circuit_part(circuit) -> dict[str, Any]:
    stats = dict(circuit.stats)
    probes = stats.pop("probes", None) or []
    trace = stats.pop("trace", None) or []
    stats.pop("losses_at_points", None)
    rec = circuit.recovered
    # the explorer opens on the top k, dangling edges hidden: the run's own k, else the edges a top-n or threshold
    # cut selected before pruning (the top k of the same ranking), so that it opens on the circuit as cut
    k = stats.get("k", stats.get("selected_before_pruning"))
    return {
        "n_edges": circuit.n_edges,
        "k": k,
        "metric": circuit.config.get("metric", "metric"),
        "metric_full": _round(circuit.metric_full),
        "metric_empty": _round(circuit.metric_empty),
        "metric_circuit": _round(circuit.metric_circuit),
        "recovered": _round(rec) if rec == rec else None,
        "method": circuit.config.get("method", ""),
        "target": circuit.config.get("target"),
        "config": _jsonable(circuit.config),
        "stats": _jsonable(stats),
        "probes": _jsonable(probes),
        "trace": _jsonable(trace),
    }


def _data_part(data: ExplorerData, n_layers: int, n_heads: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": {
            "name": data.task,
            "prompts": [
                {
                    "clean": p.clean,
                    "corrupted": p.corrupted,
                    "tokens": list(p.tokens),
                    "answer_pos": p.answer_pos,
                    "answers": list(p.answers),
                    "wrong": list(p.wrong),
                }
                for p in data.prompts
            ],
        }
    }
    for pat, view in zip(data.patterns, data.prompts, strict=True):
        n = len(view.tokens)
        if tuple(pat.shape) != (n_layers, n_heads, n, n):
            raise ConfigError(
                f"attention patterns must be (L, H, n, n) = {(n_layers, n_heads, n, n)}; got {tuple(pat.shape)}"
            )
    out["attention"] = {
        "encoding": "base64 uint8 round(255 p); per prompt: layer, head, query i, key j <= i",
        "data": [_encode_patterns(p.float()) for p in data.patterns],
    }
    if data.direct is not None:
        out["direct"] = {
            "mean": [_round(x) for x in data.direct.mean(-1).tolist()],
            "per_prompt": [[_round(x) for x in row] for row in data.direct.tolist()],
        }
    if data.roles is not None:
        out["roles"] = {
            "columns": {c: d for c, d in data.roles.to_dict()["columns"].items()},
            "scores": {c: [_round(x) for x in t.flatten().tolist()] for c, t in data.roles.scores.items()},
            "settings": _jsonable(data.roles.settings),
        }
    if data.classes is not None:
        out["classes"] = _classes_part(data.classes, n_layers, n_heads)
    return out


def _classes_part(hc: Any, n_layers: int, n_heads: int) -> dict[str, Any]:
    """IOI head classes: one class per head (layer-major, "" for none), the class scores and the thresholds."""
    if (hc.n_layers, hc.n_heads) != (n_layers, n_heads):
        raise ConfigError(
            f"head classes are for {hc.n_layers} x {hc.n_heads} heads but the circuit's graph has "
            f"{n_layers} x {n_heads}; classify the heads of the circuit's own model"
        )
    return {
        "class": list(hc.classes),
        "scores": {c: [_round(x) for x in t.flatten().tolist()] for c, t in hc.scores.items()},
        "thresholds": _jsonable(hc.to_dict()["thresholds"]),
    }


def _graph_section(g: Graph) -> dict[str, Any]:
    """The graph's size, and its nodes and receivers as :mod:`circuitfind.graph` names and places them."""
    nodes = [*g.senders, g.receivers[g.logits_receiver].node]  # (S + 1,), the order of g.node_names
    return {
        "n_layers": g.n_layers,
        "n_heads": g.n_heads,
        "parallel": g.parallel,
        "n_edges": g.n_edges,
        "nodes": {
            "name": list(g.node_names),
            "kind": [n.kind.value for n in nodes],
            "layer": [n.layer for n in nodes],
            "head": [n.head for n in nodes],
        },
        "receivers": {
            "node": g.receiver_nodes.tolist(),
            "channel": [None if r.channel is None else r.channel.value for r in g.receivers],
            "name": list(g.receiver_names),
        },
    }


def build_payload(
    circuit,
    data: ExplorerData | None = None,
    *,
    max_edges: int = DEFAULT_MAX_EDGES,
    frequency: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The explorer's JSON dict for ``circuit`` (see the module docstring for the layout).

    Args:
        circuit: a :class:`~circuitfind.circuit.Circuit`.
        data: model data from :func:`~circuitfind.viewer.data.collect`, or None (graph and run record only).
        max_edges: ranked edges to embed.
        frequency: ``{edge name: inclusion frequency}`` from a stability run (``report.json``); when given, the
            explorer colours edges by it (``edges.frequency``, 0 for edges never kept).

    Example:
        >>> payload = build_payload(circuit)
        >>> payload["edges"]["n_ranked"], len(payload["kept"])
        (13, 4)
    """
    check_int(max_edges, "max_edges", what="edges shown")
    g = circuit.graph
    s_idx, r_idx, n_scored = ranked_edges(circuit, max_edges)
    flat = (s_idx * g.n_receivers + r_idx).tolist()
    position = {f: i for i, f in enumerate(flat)}
    kept_s, kept_r = circuit.mask.nonzero(as_tuple=True)
    kept_flat = (kept_s * g.n_receivers + kept_r).tolist()
    extra = [f for f in kept_flat if f not in position]  # kept edges outside the ranked cap
    all_flat = flat + extra
    position.update({f: len(flat) + i for i, f in enumerate(extra)})
    scores = circuit.scores.flatten()[torch.tensor(all_flat, dtype=torch.long)].tolist() if all_flat else []
    payload: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "model": circuit.model,
        "graph": _graph_section(g),
        "edges": {
            "s": [f // g.n_receivers for f in all_flat],
            "r": [f % g.n_receivers for f in all_flat],
            "score": [_round(x) for x in scores],
            "n_ranked": len(flat),
        },
        "kept": sorted(position[f] for f in kept_flat),
        "ranking": {
            "absolute": bool(circuit.config.get("absolute", False)),
            "from_input": str(circuit.config.get("ablation", "resample")) == "resample",
            "cap": max_edges,
            "n_scored": n_scored,
        },
        "circuit": _circuit_part(circuit),
    }
    if frequency is not None:
        names = [g.edge_name(f // g.n_receivers, f % g.n_receivers) for f in all_flat]
        payload["edges"]["frequency"] = [_round(float(frequency.get(n, 0.0))) for n in names]
    if circuit.position_mask is not None:
        payload["edges"]["at"] = _position_labels_of(circuit, all_flat)
    if data is not None:
        payload.update(_data_part(data, g.n_layers, g.n_heads))
    return payload


def _position_labels_of(circuit, flat: list[int]) -> list[str]:
    """Per embedded edge of a position-aware circuit, the labels of the positions it is kept at (else the one
    it scores highest at), joined by commas: the explorer shows them after the edge's name."""
    R = circuit.graph.n_receivers
    labels = circuit.position_labels
    out = []
    for f in flat:
        s, r = divmod(f, R)
        kept = circuit.position_mask[s, r].nonzero().flatten().tolist()
        if not kept:
            kept = [int(circuit.position_scores[s, r].nan_to_num(nan=float("-inf")).argmax())]
        out.append(",".join(labels[t] for t in kept))
    return out
