"""A discovered circuit: which edges are kept, their scores, and how the run went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitfind.graph import Edge, Graph

__all__ = ["Circuit"]


@dataclass
class Circuit:
    """The result of a discovery run.

    Attributes:
        graph: the model's graph layout.
        mask: ``(S, R)`` bool, True on the kept edges (always False off the graph's edges).
        scores: ``(S, R)`` float: ACDC's per-edge effect (metric change when the edge was tested; NaN where it
            was never tested), or an attribution method's score.
        metric_full: the metric with every edge kept (the full model).
        metric_empty: the metric with no edge kept (every edge ablated).
        metric_circuit: the metric of the circuit.
        config: the options of the run (method, threshold, metric, ablation...).
        stats: wall time, forward passes, edges tested, ...
        model: a name for the model it was found on.

    Example:
        >>> c = circuitfind.discover(model, task, threshold=0.05)  # doctest: +SKIP
        >>> c.n_edges, c.edge_names[:3]  # doctest: +SKIP
    """

    graph: Graph
    mask: torch.Tensor
    scores: torch.Tensor
    metric_full: float = float("nan")
    metric_empty: float = float("nan")
    metric_circuit: float = float("nan")
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    def __post_init__(self) -> None:
        self.graph.check_mask(self.mask)
        self.graph.check_mask(self.scores)
        self.mask = self.mask.detach().cpu().bool() & self.graph.edge_mask
        self.scores = self.scores.detach().cpu().float()

    @property
    def edges(self) -> list[Edge]:
        """Kept edges, sender-major."""
        return self.graph.edges_of(self.mask)

    @property
    def edge_names(self) -> list[str]:
        return [e.name for e in self.edges]

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def fraction(self) -> float:
        """Kept edges as a fraction of all edges of the graph."""
        return self.n_edges / self.graph.n_edges

    @property
    def recovered(self) -> float:
        """How much of the metric the circuit recovers on the prompts it was found on:
        ``(metric_circuit - metric_empty) / (metric_full - metric_empty)``; 1 for the full model, 0 for the empty
        circuit (for KL, whose full value is 0: ``1 - KL(circuit) / KL(empty)``). NaN when full equals empty."""
        gap = self.metric_full - self.metric_empty
        if not gap or gap != gap:
            return float("nan")
        return (self.metric_circuit - self.metric_empty) / gap

    def nodes(self) -> list[str]:
        """Names of the nodes that touch a kept edge (plus ``input`` and ``logits`` when connected)."""
        from circuitfind.export import circuit_nodes

        return circuit_nodes(self)

    def summary(self) -> str:
        m = self.config.get("metric", "metric")
        rec = self.recovered
        return (
            f"{self.n_edges:,} of {self.graph.n_edges:,} edges kept ({100 * self.fraction:.2f}%); "
            f"{m}: full {self.metric_full:.4g}, circuit {self.metric_circuit:.4g}, empty {self.metric_empty:.4g}"
            + ("" if rec != rec else f" (recovers {round(100 * rec)}%)")
        )

    # --- export (implemented in circuitfind.export) ---------------------------------------------
    def to_dot(self, **kwargs: Any) -> str:
        """Plain DOT text (no graphviz needed); see :func:`circuitfind.export.to_dot`."""
        from circuitfind.export import to_dot

        return to_dot(self, **kwargs)

    def to_networkx(self):
        """A ``networkx.MultiDiGraph`` of the kept edges; see :func:`circuitfind.export.to_networkx`."""
        from circuitfind.export import to_networkx

        return to_networkx(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the MIB / EAP-IG layout plus circuitfind's metadata."""
        from circuitfind.export import to_json_dict

        return to_json_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        from circuitfind.export import from_json_dict

        return from_json_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically); see :func:`circuitfind.export.save_json`."""
        from circuitfind.export import save_json

        return save_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        from circuitfind.export import load_json

        return load_json(path)

    def render(self, path: str | Path, fmt: str | None = None) -> Path:
        """Render to SVG/PNG/PDF with graphviz's ``dot`` binary (a clear error when it is missing)."""
        from circuitfind.export import render

        return render(self, path, fmt)
