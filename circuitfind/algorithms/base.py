"""What every discovery method shares: the score result and progress reporting. (The exact evaluator of a mask,
:class:`~circuitfind.problem.Faithfulness`, lives with the problem it evaluates and is re-exported here.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from circuitfind.errors import check_int
from circuitfind.problem import Faithfulness
from circuitfind.selection.cuts import probes_left

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
