"""Cuts over units other than single edges: nodes (``level="node"``) and position-edges (``by_position=True``).

A unit cut ranks the units by score (:func:`circuitfind.selection.edge_ranking`, the one ranking, over a flat
unit axis), turns the top ``k`` into an ``(S, R)`` or ``(S, R, T)`` edge mask, drops dangling edges, and chooses
``k`` by ``threshold``, ``n`` or ``target`` exactly as the edge cuts of :mod:`circuitfind.selection` do; the
target search (:func:`smallest_k`) is the same galloping-then-bisection search as
:func:`~circuitfind.selection.smallest_faithful`, over ``k`` units instead of ``k`` edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.selection.cuts import edge_ranking, gallop_bisect, prune_dangling

__all__ = ["LEVELS", "UnitCut", "check_level", "check_units", "node_circuit", "node_cut", "position_cut", "smallest_k"]

LEVELS = ("edge", "node")
"""What a scoring method scores and cuts: single edges, or nodes (heads, MLPs and the input) as units."""


def check_level(level: Any) -> str:
    """``level`` if it is one of :data:`LEVELS`, else a :class:`ConfigError`."""
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {LEVELS} (what is scored and cut); got {level!r}")
    return level


def check_units(level: Any, by_position: Any = False) -> None:
    """Refuse a bad ``level`` / ``by_position`` pair (a method's options check it when built).

    Example:
        >>> check_units("node", True)
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: level='node' and by_position=True do not combine: choose nodes or \
position-edges
    """
    check_level(level)
    if not isinstance(by_position, bool):
        raise ConfigError(f"by_position must be True or False; got {by_position!r}")
    if level == "node" and by_position:
        raise ConfigError("level='node' and by_position=True do not combine: choose nodes or position-edges")


@dataclass(frozen=True, eq=False)
class UnitCut:
    """A cut over units.

    Attributes:
        mask: the edge mask of the circuit (pruned), ``(S, R)`` or ``(S, R, T)`` bool.
        units: ``(n_units,)`` bool, the units kept after pruning.
        info: what the cut did (``k``, probes, faithfulness, reached, ...), for ``circuit.stats``.
    """

    mask: Tensor
    units: Tensor
    info: dict[str, Any]


def node_circuit(graph: Graph, nodes: Tensor, *, from_input: bool = True) -> tuple[Tensor, Tensor]:
    """The node-level circuit of the kept ``nodes`` (``(S,)`` bool): its induced edges with dangling ones
    dropped, and the nodes that still send a kept edge (a node whose output reaches nothing is not in it).

    Example:
        >>> g = Graph(1, 1)
        >>> mask, nodes = node_circuit(g, torch.tensor([True, True, False]))  # input, a0.h0
        >>> nodes.tolist(), [e.name for e in g.edges_of(mask)][3:]
        ([True, True, False], ['input->logits', 'a0.h0->logits'])
    """
    mask = prune_dangling(graph, graph.induced_by_nodes(nodes), from_input=from_input)
    return mask, mask.any(dim=1)


def node_cut(
    graph: Graph,
    node_scores: Tensor,
    faithfulness: Callable[[Tensor], float] | None,
    *,
    threshold: float | None = None,
    n: int | None = None,
    target: float | None = None,
    absolute: bool = False,
    from_input: bool = True,
    on_probe: Callable[[dict[str, Any]], None] | None = None,
) -> UnitCut:
    """A node-level circuit cut from ``(S,)`` node scores by one of ``threshold`` (score above it), ``n`` (the
    top n nodes) or ``target`` (the smallest top-k nodes whose ``faithfulness`` reaches it). NaN scores rank last.

    Example:
        >>> g = Graph(1, 1)
        >>> cut = node_cut(g, torch.tensor([3.0, 1.0, 2.0]), None, n=2)  # input and m0
        >>> cut.units.tolist(), cut.info["k"]
        ([True, False, True], 2)
    """
    key = node_scores.double()  # (S,); NaN (untested) ranks last and is never above a threshold (edge_ranking)
    order = edge_ranking(torch.ones(graph.n_senders, dtype=torch.bool), key, absolute=absolute)  # (S,)

    def circuit_of(k: int) -> tuple[Tensor, Tensor]:
        nodes = torch.zeros(graph.n_senders, dtype=torch.bool)
        nodes[order[:k]] = True
        return node_circuit(graph, nodes, from_input=from_input)

    above = None if threshold is None else int(((key.abs() if absolute else key) > threshold).sum())
    units = "n_nodes", "this graph's nodes"
    return _cut_units(
        graph.n_senders, circuit_of, faithfulness, above=above, n=n, target=target, on_probe=on_probe, units=units
    )


def position_cut(
    graph: Graph,
    position_scores: Tensor,
    faithfulness: Callable[[Tensor], float] | None,
    *,
    threshold: float | None = None,
    n: int | None = None,
    target: float | None = None,
    absolute: bool = False,
    from_input: bool = True,
    on_probe: Callable[[dict[str, Any]], None] | None = None,
) -> UnitCut:
    """A position-aware circuit cut from ``(S, R, T)`` scores over (sender, receiver, position) edges, by one of
    ``threshold``, ``n`` (the top n position-edges) or ``target``. Dangling edges are dropped on the projection
    (an edge is kept at its positions only while ``s -> r`` survives :func:`prune_dangling` of the edges kept at
    any position: exact, as a node whose output reaches nothing at any position changes nothing).

    Example:
        >>> g = Graph(1, 1)
        >>> scores = torch.zeros(g.n_senders, g.n_receivers, 3)
        >>> scores[g.edge_index("input->logits")][2] = 1.0  # input -> logits at the last position
        >>> cut = position_cut(g, scores, None, n=1)
        >>> cut.mask.nonzero().tolist() == [[0, g.logits_receiver, 2]]
        True
    """
    S, R, T = position_scores.shape
    exists = graph.edge_mask[..., None].expand(S, R, T).contiguous()  # (S, R, T)
    key = position_scores.double().cpu()  # NaN (untested) ranks last and is never above a threshold
    order = edge_ranking(exists, key, absolute=absolute)  # (E * T,) flat indices

    def circuit_of(k: int) -> tuple[Tensor, Tensor]:
        flat = torch.zeros(S * R * T, dtype=torch.bool)
        flat[order[:k]] = True
        mask = flat.view(S, R, T)
        mask = mask & prune_dangling(graph, mask.any(dim=-1), from_input=from_input)[..., None]
        return mask, mask.flatten()

    above = None if threshold is None else int(((key.abs() if absolute else key) > threshold)[exists].sum())
    units = "n_edges", "position-edges of this task"
    return _cut_units(
        int(exists.sum()), circuit_of, faithfulness, above=above, n=n, target=target, on_probe=on_probe, units=units
    )


def _cut_units(
    n_units: int,
    circuit_of: Callable[[int], tuple[Tensor, Tensor]],
    faithfulness: Callable[[Tensor], float] | None,
    *,
    above: int | None,
    n: int | None,
    target: float | None,
    on_probe: Callable[[dict[str, Any]], None] | None,
    units: tuple[str, str],
) -> UnitCut:
    """The one cut rule over ranked units: ``target`` (smallest faithful top-k), ``n`` (the top n), or the
    ``above`` units over the threshold. ``units`` names the option and the units for the range error."""
    if target is not None:
        if faithfulness is None:
            raise ConfigError(f"a cut by target faithfulness ({target}) needs a faithfulness function; got None")
        return smallest_k(n_units, circuit_of, faithfulness, target, on_probe=on_probe)
    if n is not None:
        if not 1 <= n <= n_units:
            raise ConfigError(f"{units[0]} must be between 1 and {n_units:,} ({units[1]}); got {n}")
        k = n
    else:
        k = int(above or 0)
    mask, kept = circuit_of(k)
    return UnitCut(mask, kept, {"k": k, "selected_before_pruning": k})


def smallest_k(
    n_units: int,
    circuit_of: Callable[[int], tuple[Tensor, Tensor]],
    faithfulness: Callable[[Tensor], float],
    target: float,
    *,
    first: int = 16,
    on_probe: Callable[[dict[str, Any]], None] | None = None,
) -> UnitCut:
    """The smallest ``k`` whose circuit ``circuit_of(k) -> (mask, units)`` reaches ``target`` faithfulness:
    ``k`` doubles from ``first`` until one does, then bisection (as :func:`~circuitfind.selection.smallest_faithful`;
    the answer is always a probed circuit that reached the target, unless even all units fall short).

    Example:
        >>> units = lambda k: (torch.arange(8) < k, torch.arange(8) < k)
        >>> cut = smallest_k(8, units, lambda m: float(m.sum()) / 8, 0.5, first=2)
        >>> cut.info["k"], [p["k"] for p in cut.info["probes"]]
        (4, [2, 4, 3])
    """
    probes: list[dict[str, Any]] = []
    seen: dict[int, tuple[Tensor, Tensor, float]] = {}

    def probe(k: int) -> bool:
        mask, units = circuit_of(k)
        f = float(faithfulness(mask))
        if math.isnan(f):
            raise ConfigError(f"faithfulness returned NaN for the top {k} units; m(full) == m(empty)?")
        record = {"k": k, "n_edges_after_prune": int(mask.sum()), "n_units": int(units.sum()), "faithfulness": f}
        probes.append(record)
        seen[k] = (mask, units, f)
        if on_probe is not None:
            on_probe(record)
        return f >= target

    passing, reached = gallop_bisect(probe, 1, n_units, first)
    if not reached:
        mask, units, f = seen[passing]
        return UnitCut(mask, units, {"k": passing, "probes": probes, "faithfulness": f, "reached": False})
    mask, units, f = seen[passing]
    return UnitCut(mask, units, {"k": passing, "probes": probes, "faithfulness": f, "reached": True})
