"""A discovered circuit: which edges are kept, their scores, and how the run went.

A :class:`Circuit` is immutable: its fields cannot be reassigned and its ``config`` and ``stats`` are read-only
mappings; a change makes a new circuit (:meth:`Circuit.replace`, :meth:`Circuit.with_config`). The formats
(JSON, DOT, networkx, images) live in :mod:`circuitfind.export`, which this module calls and which never
imports it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from circuitfind import export
from circuitfind.errors import MetricError, ShapeError
from circuitfind.graph import Edge, Graph, position_edge_name
from circuitfind.metrics import check_gap

__all__ = ["Circuit"]


@dataclass(frozen=True, eq=False)
class Circuit:
    """The result of a discovery run (frozen: changes make a new one).

    Attributes:
        graph: the model's graph layout.
        mask: ``(S, R)`` bool, True on the kept edges (always False off the graph's edges).
        scores: ``(S, R)`` float: ACDC's per-edge effect (metric change when the edge was tested; NaN where it
            was never tested), or an attribution method's score.
        metric_full: the metric with every edge kept (the full model).
        metric_empty: the metric with no edge kept (every edge ablated).
        metric_circuit: the metric of the circuit.
        config: the options of the run (method, threshold, metric, ablation...); a read-only mapping.
        stats: wall time, forward passes, edges tested, ...; a read-only mapping.
        model: a name for the model it was found on.
        node_mask: ``(S,)`` bool, or None: a node-level circuit (``level="node"``) keeps these senders (heads,
            MLPs, the input) as units; ``mask`` holds its induced edges (between kept nodes, ``logits`` always
            kept) after dangling ones are dropped.
        node_scores: ``(S,)`` float, or None: the loss change when each node is removed (its outgoing edges at
            once); a node-level circuit's edge ``scores`` are NaN where the method scored no edge.
        position_mask: ``(S, R, T)`` bool, or None: a position-aware circuit (``by_position=True``) keeps edge
            ``s -> r`` at position ``t`` only; ``mask`` is then its projection (kept at some position).
        position_scores: ``(S, R, T)`` float, or None: the per-position scores (``scores`` is their sum).
        position_labels: ``T`` labels of the positions (the template's: ``IO``, ``S2``, ``END`` ...), or None.

    The tensors are the circuit's own copies on the CPU; do not change them in place.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> c = Circuit(g, g.mask_of(["input->m0", "m0->logits"]), torch.zeros(g.edge_mask.shape))
        >>> c.n_edges, c.edge_names
        (2, ['input->m0', 'm0->logits'])
        >>> c.with_config(seed=0).config["seed"], c.replace(model="tiny").model
        (0, 'tiny')
    """

    graph: Graph
    mask: torch.Tensor
    scores: torch.Tensor
    metric_full: float = float("nan")
    metric_empty: float = float("nan")
    metric_circuit: float = float("nan")
    config: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""
    node_mask: torch.Tensor | None = None
    node_scores: torch.Tensor | None = None
    position_mask: torch.Tensor | None = None
    position_scores: torch.Tensor | None = None
    position_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.graph.check_mask(self.mask)
        self.graph.check_mask(self.scores)
        self._normalise_nodes()
        self._normalise_positions()
        # A frozen dataclass normalises its fields once, here, through object.__setattr__.
        object.__setattr__(self, "mask", self.mask.detach().cpu().bool() & self.graph.edge_mask)
        object.__setattr__(self, "scores", self.scores.detach().cpu().float())
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))

    def _normalise_nodes(self) -> None:
        """Check and copy the node-level fields (``(S,)`` each) to the CPU."""
        for name, dtype in (("node_mask", torch.bool), ("node_scores", torch.float)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (self.graph.n_senders,):
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ShapeError(f"{name} must have shape (senders,) = ({self.graph.n_senders},); got {found}")
            object.__setattr__(self, name, value.detach().cpu().to(dtype))

    def _normalise_positions(self) -> None:
        """Check and copy the position fields: ``(S, R, T)`` tensors and ``T`` labels, all or none."""
        fields = (self.position_mask, self.position_scores, self.position_labels)
        if all(f is None for f in fields):
            return
        S, R = self.graph.n_senders, self.graph.n_receivers
        labels = tuple(str(x) for x in self.position_labels or ())
        want = (S, R, len(labels))
        mask, scores = (self._position_tensor(name, want) for name in ("position_mask", "position_scores"))
        object.__setattr__(self, "position_mask", mask.detach().cpu().bool() & self.graph.edge_mask[..., None])
        object.__setattr__(self, "position_scores", scores.detach().cpu().float())
        object.__setattr__(self, "position_labels", labels)

    def _position_tensor(self, name: str, want: tuple[int, int, int]) -> torch.Tensor:
        value = getattr(self, name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ShapeError(f"{name} must have shape (senders, receivers, positions) = {want}; got {found}")
        return value

    def _positions(self) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]] | None:
        """``(position_mask, position_scores, position_labels)``, or None: ``__post_init__`` sets all or none."""
        if self.position_mask is None or self.position_scores is None or self.position_labels is None:
            return None
        return self.position_mask, self.position_scores, self.position_labels

    @property
    def position_edge_names(self) -> list[str]:
        """Names of the kept position-edges (``a0.h1->a3.h7<q>@END``), sender-major; empty for other circuits."""
        positions = self._positions()
        if positions is None:
            return []
        mask, _, labels = positions
        s_idx, r_idx, t_idx = mask.nonzero(as_tuple=True)
        return [
            position_edge_name(self.graph.edge_name(s, r), labels[t])
            for s, r, t in zip(s_idx.tolist(), r_idx.tolist(), t_idx.tolist(), strict=True)
        ]

    @property
    def level(self) -> str:
        """``"node"`` for a node-level circuit, else ``"edge"``."""
        return "edge" if self.node_mask is None else "node"

    @property
    def n_nodes(self) -> int:
        """Kept nodes of a node-level circuit (senders; ``logits`` not counted); else senders with a kept edge."""
        kept = self.node_mask if self.node_mask is not None else self.mask.any(dim=1)
        return int(kept.sum())

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy.deepcopy cannot copy a MappingProxyType: rebuild from plain dicts.
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return (type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values))

    # --- new circuits from this one -------------------------------------------------------------
    def replace(self, **changes: Any) -> Circuit:
        """A copy with some fields changed (``dataclasses.replace``); this circuit is left as it is.

        Example:
            >>> circuit.replace(model="tiny").model, circuit.model != "tiny"
            ('tiny', True)
        """
        return dataclasses.replace(self, **changes)

    def with_config(self, **entries: Any) -> Circuit:
        """A copy whose ``config`` has ``entries`` added (or replaced).

        Example:
            >>> circuit.with_config(seed=0).config["seed"], "seed" in circuit.config
            (0, False)
        """
        return dataclasses.replace(self, config={**self.config, **entries})

    # --- what it contains -----------------------------------------------------------------------
    @property
    def edges(self) -> list[Edge]:
        """Kept edges, sender-major."""
        return self.graph.edges_of(self.mask)

    @property
    def edge_names(self) -> list[str]:
        """Names of the kept edges, sender-major."""
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
        circuit (for KL, whose full value is 0: ``1 - KL(circuit) / KL(empty)``). NaN when full and empty do not
        differ beyond rounding (:func:`circuitfind.metrics.check_gap`), rather than a ratio of noise."""
        dtype = getattr(torch, str(self.stats.get("dtype", "float32")), None)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
        try:
            gap = check_gap(self.metric_full, self.metric_empty, dtype)
        except MetricError:
            return float("nan")
        return (self.metric_circuit - self.metric_empty) / gap

    def nodes(self) -> list[str]:
        """Names of the nodes that touch a kept edge, in residual-stream order (``input`` first, ``logits`` last).

        Example:
            >>> g = Graph(2, 2)
            >>> c = Circuit(g, g.mask_of(["input->a1.h0<v>", "a1.h0->logits"]), torch.zeros(g.edge_mask.shape))
            >>> c.nodes()
            ['input', 'a1.h0', 'logits']
        """
        on = self.graph.nodes_touched(self.mask)
        return [self.graph.node_names[i] for i in on.nonzero().flatten().tolist()]

    def summary(self) -> str:
        m = self.config.get("metric", "metric")
        rec = self.recovered
        nodes = "" if self.node_mask is None else f"{self.n_nodes} of {self.graph.n_senders} nodes, "
        positions = self._positions()
        if positions is not None:
            mask, _, labels = positions
            nodes = f"{int(mask.sum()):,} position-edges over {len(labels)} positions, "
        return (
            nodes + f"{self.n_edges:,} of {self.graph.n_edges:,} edges kept ({100 * self.fraction:.2f}%); "
            f"{m}: full {self.metric_full:.4g}, circuit {self.metric_circuit:.4g}, empty {self.metric_empty:.4g}"
            + ("" if rec != rec else f" (recovers {round(100 * rec)}%)")
        )

    # --- export (implemented in circuitfind.export) ---------------------------------------------
    def to_dot(self, **kwargs: Any) -> str:
        """Plain DOT text (no graphviz needed); see :func:`circuitfind.export.to_dot`."""
        return export.to_dot(self, **kwargs)

    def to_networkx(self):
        """A ``networkx.MultiDiGraph`` of the kept edges; see :func:`circuitfind.export.to_networkx`."""
        return export.to_networkx(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the MIB / EAP-IG layout plus circuitfind's metadata."""
        return export.to_json_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        """A circuit from :meth:`to_dict`'s dict or an EAP-IG graph dict; see
        :func:`circuitfind.export.fields_from_json_dict`."""
        return cls(**export.fields_from_json_dict(data))

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically); see :func:`circuitfind.export.save_json`."""
        return export.save_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit written by :meth:`save`, or an EAP-IG / MIB graph JSON file."""
        return cls(**export.fields_from_json_file(path))

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the interactive explorer (one offline HTML file); see :func:`circuitfind.viewer.to_html`."""
        from circuitfind.viewer import to_html

        return to_html(self, path, **kwargs)

    def render(self, path: str | Path, fmt: str | None = None) -> Path:
        """Render to SVG/PNG/PDF with graphviz's ``dot`` binary (a clear error when it is missing)."""
        return export.render(self, path, fmt)
