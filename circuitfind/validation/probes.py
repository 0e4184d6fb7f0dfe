"""Node-removal probes: the metric of a circuit (or of the whole model) with a set of nodes removed.

``F(X \\ K)`` is the task metric when the edge set ``X`` is kept, every other edge is ablated, and the nodes of
``K`` are removed as well (:meth:`circuitfind.graph.Graph.without_nodes`: all of a node's outgoing edges
ablated, the one definition of node removal). :class:`NodeProbes` evaluates many such masks with one
evaluator (the ablation is built once; masks go through the patched forward many per pass) and counts every
mask it evaluates against a budget, so completeness and minimality can say what they spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, check_int
from circuitfind.evaluate.circuits import DEFAULT_MEMORY_BUDGET, _Evaluator

__all__ = ["NodeProbes", "circuit_nodes", "check_probes"]


def check_probes(probes: Any, least: int = 1) -> int:
    """``probes`` as an int >= ``least``, or a :class:`ConfigError`."""
    return check_int(probes, "probes", minimum=least, what="the budget of masks to evaluate")


def circuit_nodes(graph: Any, mask: Tensor) -> list[int]:
    """Sender indices of the circuit's nodes that may be removed: heads and MLPs with a kept outgoing edge
    (``input`` is not a removable node: without it nothing is computed).

    Example:
        >>> [pm.graph.sender_names[s] for s in circuit_nodes(pm.graph, pm.graph.full_mask())]
        ['a0.h0', 'a0.h1', 'm0']
    """
    kept = (mask.bool().cpu() & graph.edge_mask).any(dim=1)  # (S,)
    kept[graph.input_sender] = False
    return kept.nonzero().flatten().tolist()


class NodeProbes:
    """``F(X \\ K)`` for many ``(X, K)``, counted against ``budget`` masks.

    Args:
        pm: the :class:`PatchableModel`.
        task: the prompts (the held-out split when the task has one, as :func:`circuitfind.evaluate.faithfulness`).
        metric: the metric (default the task's); ablation: what removed edges and nodes carry.
        budget: masks this object may evaluate (the full and empty references of every pass included).
    """

    def __init__(self, pm: Any, task: Any, *, metric: Any, ablation: str, budget: int) -> None:
        self.pm, self.graph = pm, pm.graph
        self.ev = _Evaluator(
            pm, task, metric, ablation, reference=None, batch_masks=None, memory_budget=DEFAULT_MEMORY_BUDGET
        )
        self.budget = check_probes(budget, least=3)
        self.used = 0
        self.m_full = self.m_empty = float("nan")
        self.ev.run([])  # the references: m(N), m(empty)
        self.used += 2
        self.m_full, self.m_empty = self.ev.m_full, self.ev.m_empty

    @property
    def left(self) -> int:
        """Masks the budget still allows in one more pass (its two reference masks taken off)."""
        return max(0, self.budget - self.used - 2)

    @property
    def span(self) -> float:
        """``|m(N) - m(empty)|``, the unit gaps are reported in (as faithfulness is)."""
        return abs(self.m_full - self.m_empty)

    def values(self, pairs: Sequence[tuple[Tensor, Iterable[int]]]) -> list[float]:
        """The metric of each ``(mask, nodes removed)`` pair, in one evaluator call; raises past the budget."""
        if not pairs:
            return []
        if self.used + len(pairs) + 2 > self.budget:
            raise ConfigError(f"{len(pairs)} more probes would pass the budget of {self.budget} ({self.used} used)")
        masks = [self.graph.without_nodes(m, torch.tensor(sorted(k), dtype=torch.long)) for m, k in pairs]
        rows = self.ev.run(masks)
        self.used += len(masks) + 2
        return [float(r["metric_circuit"]) for r in rows]

    def info(self) -> dict[str, Any]:
        """What was spent, and the references."""
        return {
            "probes_used": self.used,
            "probe_budget": self.budget,
            "metric": self.ev.metric.name if self.ev.metric is not None else None,
            "metric_full": self.m_full,
            "metric_empty": self.m_empty,
            "ablation": self.ev.kind.value,
            "split": self.ev.split,
            "n_prompts": len(self.ev.task),
        }
