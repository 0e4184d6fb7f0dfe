"""What every discovery method shares: the score result, progress reporting and exact faithfulness of a mask."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from circuitfind.errors import check_int
from circuitfind.metrics import check_gap, metric_site
from circuitfind.problem import Problem
from circuitfind.selection.cuts import probes_left

CHUNK_BYTES = 5e8  # sender diffs one evaluation chunk may hold

__all__ = ["Faithfulness", "NullProgress", "Progress", "ScoreResult", "check_steps", "probe_reporter"]


class Progress(Protocol):
    """The part of a ``tqdm`` bar that methods use; ``total`` and ``n`` are in the method's own work units."""

    total: float
    n: float

    def reset(self, total: float | None = None) -> None: ...
    def update(self, n: float = 1) -> Any: ...
    def set_description(self, desc: str | None = None, refresh: bool = True) -> None: ...
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...
    def refresh(self) -> None: ...


class NullProgress:
    """A progress bar that shows nothing."""

    total: float = 0
    n: float = 0

    def reset(self, total: float | None = None) -> None:
        self.total, self.n = total or 0, 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass


def probe_reporter(
    progress: Progress, target: float, desc: str, sink: list[dict[str, Any]] | None = None, stage: str | None = None
) -> Callable[[dict[str, Any]], None]:
    """An ``on_probe`` callback for :func:`~circuitfind.selection.smallest_faithful`: counts probes on the bar,
    whose total is re-estimated after each one (so the ETA follows the search), and appends them to ``sink``."""
    seen: list[dict[str, Any]] = []
    progress.set_description(desc)
    progress.reset(total=probes_left(seen, target))

    def on_probe(probe: dict[str, Any]) -> None:
        seen.append(probe)
        if sink is not None:
            sink.append(probe if stage is None else {"stage": stage, **probe})
        progress.n = len(seen)
        progress.total = len(seen) + probes_left(seen, target)
        progress.set_postfix(k=probe["k"], edges=probe["n_edges_after_prune"], f=f"{probe['faithfulness']:.3f}")

    return on_probe


@dataclass
class ScoreResult:
    """Per-edge scores from an attribution or exact-scoring method.

    Attributes:
        scores: ``(S, R)`` float64 on the CPU: the change in the loss (the metric negated when higher is better; KL
            as is) when the edge alone is removed, exactly or to the method's approximation. Higher means more
            important; entries off the graph's edges are 0, edges a method did not score are NaN.
        stats: the method's own numbers (passes, steps, ...).
        node_scores: ``(S,)`` float64 on the CPU, or None: at ``level="node"``, the loss change when the sender
            node is removed (all its outgoing edges at once; :meth:`Graph.without_nodes`). Higher = more important.
        position_scores: ``(S, R, T)`` float64 on the CPU, or None: with ``by_position=True``, the loss change
            when the edge is removed at one position only; summed over positions it is ``scores``.
    """

    scores: Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    node_scores: Tensor | None = None
    position_scores: Tensor | None = None


def check_steps(steps: Any) -> int:
    """``steps`` as a positive int, or a :class:`ConfigError`."""
    return check_int(steps, "steps", what="points on the integration path")


class Faithfulness:
    """Exact faithfulness of edge masks on a problem's prompts: ``(L(empty) - L(C)) / (L(empty) - L(full))``.

    In the loss (what ACDC minimises) this is MIB's ``(m(C) - m(empty)) / (m(full) - m(empty))`` for a metric to
    maximise and for KL alike. Every call is one patched forward; ``calls`` counts them.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.calls = 0
        pm = problem.pm
        T = problem.clean_ids.shape[1]
        per_prompt = pm.graph.n_senders * T * pm.spec.d_model * pm.dtype.itemsize  # the forward's sender diffs
        self.chunk = problem.chunk_size or max(1, int(CHUNK_BYTES // per_prompt))
        g = problem.pm.graph
        self.loss_full = self.loss(g.full_mask(), "on the full model")
        self.loss_empty = self.loss(torch.zeros_like(g.edge_mask), "on the empty circuit (every edge ablated)")

    def loss(self, mask: Tensor, where: str = "on a circuit evaluated for its faithfulness") -> float:
        """The loss of ``mask`` on all prompts; the forward runs in chunks of prompts (less memory), the loss once
        on all their logits, so the value is the same for any metric."""
        p = self.problem
        B = p.clean_ids.shape[0]
        with torch.no_grad(), metric_site(where):
            logits = torch.cat(
                [
                    p.pm.forward(
                        p.clean_ids[i : i + self.chunk],
                        p.ablated.select(slice(i, i + self.chunk), B),
                        mask,
                        attention_mask=p.attention_mask[i : i + self.chunk],
                        positions=p.positions[i : i + self.chunk],
                        vocab=p.vocab,
                    )
                    for i in range(0, B, self.chunk)
                ]
            )
            value = float(p.loss(logits.unsqueeze(0))[0])
        self.calls += 1
        return value

    def of_loss(self, loss: float) -> float:
        """Faithfulness of a circuit of loss ``loss``; a :class:`MetricError` when full and empty do not differ
        beyond rounding (:func:`circuitfind.metrics.check_gap`)."""
        gap = check_gap(self.loss_full, self.loss_empty, self.problem.pm.dtype, name="loss")  # metric, or -metric
        return (loss - self.loss_empty) / gap

    def __call__(self, mask: Tensor) -> float:
        return self.of_loss(self.loss(mask))
