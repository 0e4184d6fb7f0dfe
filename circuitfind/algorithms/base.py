"""What every discovery method shares: the score result and progress reporting. (The exact evaluator of a mask,
:class:`~circuitfind.problem.Faithfulness`, lives with the problem it evaluates and is re-exported here.)"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from circuitfind.errors import check_int
from circuitfind.problem import Faithfulness, Problem
from circuitfind.selection.cuts import probes_left

__all__ = [
    "Faithfulness",
    "MethodOptions",
    "MethodResult",
    "NullProgress",
    "Progress",
    "RunContext",
    "ScoreResult",
    "auto_batch_size",
    "check_steps",
    "probe_reporter",
]


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
class MethodResult:
    """What every method's ``run`` returns: per-edge scores, optionally the circuit it decided, and its numbers.

    Attributes:
        scores: ``(S, R)`` float64 on the CPU: the change in the loss (the metric negated when higher is better; KL
            as is) when the edge alone is removed, exactly or to the method's approximation. Higher means more
            important; entries off the graph's edges are 0, edges a method did not score are NaN.
        stats: the method's own numbers (passes, steps, ...).
        node_scores: ``(S,)`` float64 on the CPU, or None: at ``level="node"``, the loss change when the sender
            node is removed (all its outgoing edges at once; :meth:`Graph.without_nodes`). Higher = more important.
        position_scores: ``(S, R, T)`` float64 on the CPU, or None: with ``by_position=True``, the loss change
            when the edge is removed at one position only; summed over positions it is ``scores``.
        mask: ``(S, R)`` bool, or None: the circuit, for a method that decides its edges itself (ACDC, hybrid);
            ``discover`` returns it unless a cut is asked for.
    """

    scores: Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    node_scores: Tensor | None = None
    position_scores: Tensor | None = None
    mask: Tensor | None = None


ScoreResult = MethodResult  # the name of the scoring methods' result before the one protocol


@dataclass
class RunContext:
    """What a method's ``run`` gets besides its problem and options, from ``discover`` or a caller.

    Attributes:
        progress: the bar the method reports on (:class:`NullProgress`: nothing shown).
        metric: the bound metric (reads a loss back as the metric's value in stats); None: losses as they are.
        run_id: computes the fingerprint of the run (for checkpoints); None: a method that checkpoints refuses.

    The exact faithfulness of masks on the problem (:attr:`faithfulness`) is built on first use and then shared,
    so a method and the cut after it evaluate with one evaluator (one count of exact evaluations).
    """

    progress: Progress = field(default_factory=NullProgress)
    metric: Any = None
    run_id: Callable[[], str] | None = None
    _faith: Faithfulness | None = field(default=None, repr=False)

    def faithfulness(self, problem: Problem) -> Faithfulness:
        """The shared exact evaluator of ``problem`` (built once, on the first call)."""
        if self._faith is None or self._faith.problem is not problem:
            self._faith = Faithfulness(problem)
        return self._faith

    def value_of(self, loss: float) -> float:
        """The metric's value from a loss (task metrics are minimised negated)."""
        return -loss if self.metric is not None and self.metric.higher_is_better else loss


class MethodOptions:
    """What every method's frozen options dataclass answers, so ``discover`` asks instead of naming methods.

    ``units()`` says what the method scores and the cut counts; ``implied_cut()`` the cut fields the options fix
    themselves (edge pruning's budget, ACDC's ranking by ``|effect|``); ``resolved(device)`` fills values chosen
    by the device (batch sizes); ``config()`` is what the circuit records.
    """

    RECORDLESS: ClassVar[frozenset[str]] = frozenset()  # fields the circuit's config does not record
    # Every subclass is a dataclass: declaring what the decorator adds lets dataclasses.fields / replace take one.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def units(self) -> str:
        """``"edge"``, ``"node"`` or ``"position"``."""
        if getattr(self, "by_position", False):
            return "position"
        return "node" if getattr(self, "level", "edge") == "node" else "edge"

    def implied_cut(self) -> dict[str, Any]:
        return {}

    def resolved(self, device: torch.device) -> Any:
        return self

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in self.RECORDLESS and value is not None:
                out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


def auto_batch_size(batch_size: int | None, device: torch.device) -> int:
    """Candidate removals per forward: ``batch_size``, or 1 on a CPU and 8 on an accelerator."""
    if batch_size is not None:
        return batch_size
    return 1 if device.type == "cpu" else 8


def check_steps(steps: Any) -> int:
    """``steps`` as a positive int, or a :class:`ConfigError`."""
    return check_int(steps, "steps", what="points on the integration path")
