"""The :class:`Hypothesis` of causal scrubbing: a set of edges plus, for some nodes, the feature they compute.

A hypothesis says which edges matter (everything else may be resampled from another prompt) and, for a node
with ``labels``, that the node computes only that feature of the input (prompts with equal labels are
interchangeable for it). A node without labels is claimed to depend on its whole input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.circuit import Circuit
from circuitfind.errors import ConfigError, ShapeError

__all__ = ["Hypothesis", "ResolvedHypothesis"]


@dataclass(frozen=True, eq=False)
class Hypothesis:
    """Edges that matter and the features some nodes compute.

    Args:
        edges: a :class:`~circuitfind.Circuit` or an ``(S, R)`` bool mask (True = the edge is in the hypothesis).
        features: sender name (``"a0.h1"``, ``"m3"``, ``"input"``) -> one label per prompt of the task that
            :func:`~circuitfind.scrub` is given (a sequence of hashable values or a 1-D tensor). Prompts with
            equal labels are interchangeable for that node. Nodes not named depend on their whole input.

    Example:
        >>> h = Hypothesis(circuit, features={"a0.h1": [0, 1, 0]})
        >>> h.labelled
        ('a0.h1',)
    """

    edges: Any
    features: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> tuple[str, ...]:
        """The names of the nodes with labels."""
        return tuple(self.features)

    def resolve(self, graph, n_prompts: int) -> ResolvedHypothesis:
        """The hypothesis as tensors on ``graph`` for a task of ``n_prompts`` prompts (checked).

        Example:
            >>> r = Hypothesis(circuit, {"a0.h1": ["x", "y", "x"]}).resolve(pm.graph, 3)
            >>> r.labels[pm.graph.sender_index("a0.h1")].tolist()
            [0, 1, 0]
        """
        kept = _edge_mask(graph, self.edges)
        if not isinstance(self.features, Mapping):
            raise ConfigError(
                f"Hypothesis features must be a mapping of node name -> one label per prompt; got "
                f"{type(self.features).__name__}. Pass {{}} for a hypothesis without labels"
            )
        labels: dict[int, Tensor] = {}
        for name, values in self.features.items():
            if not isinstance(name, str) or name not in graph.sender_names:
                raise ConfigError(
                    f"features names a node {name!r} that is not a sender of this model's graph; expected a "
                    f"sender name such as {graph.sender_names[min(1, graph.n_senders - 1)]!r} (graph.sender_names)"
                )
            labels[graph.sender_index(name)] = _codes(name, values, n_prompts)
        return ResolvedHypothesis(kept, labels)


@dataclass(frozen=True, eq=False)
class ResolvedHypothesis:
    """A hypothesis on one graph and task.

    Attributes:
        kept: ``(S, R)`` bool, the hypothesis' edges (non-edges False).
        labels: sender index -> ``(N,)`` long label codes (equal codes = interchangeable prompts).
    """

    kept: Tensor
    labels: dict[int, Tensor]

    def labelled_mask(self, n_senders: int) -> Tensor:
        """``(S,)`` bool: which senders have labels."""
        out = torch.zeros(n_senders, dtype=torch.bool)
        out[list(self.labels)] = True
        return out


def _edge_mask(graph, edges: Any) -> Tensor:
    if isinstance(edges, Circuit):
        mask = edges.mask
    elif isinstance(edges, Tensor):
        mask = edges
    else:
        raise ConfigError(
            f"Hypothesis edges must be a Circuit or an (S, R) bool mask; got {type(edges).__name__}. "
            "Use graph.full_mask() for every edge, or graph.mask_of([...edge names]) for a list of names."
        )
    graph.check_mask(mask)
    if mask.dim() != 2:
        raise ShapeError(f"Hypothesis edges must be one (S, R) mask; got shape {tuple(mask.shape)}")
    return (mask.detach().cpu() != 0) & graph.edge_mask


def _codes(name: str, values: Any, n: int) -> Tensor:
    """``(n,)`` long codes of one node's labels (equal labels, equal codes)."""
    if isinstance(values, Tensor):
        if values.dim() != 1:
            raise ShapeError(f"labels of {name!r} must be 1-D (one per prompt); got shape {tuple(values.shape)}")
        values = values.tolist()
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ConfigError(
            f"labels of {name!r} must be a sequence with one label per prompt; got {type(values).__name__}"
        )
    if len(values) != n:
        raise ShapeError(
            f"labels of {name!r} have {len(values)} entries but the task has {n} prompts; give one label per "
            "prompt, in the task's order"
        )
    index: dict[Any, int] = {}
    try:
        codes = [index.setdefault(v, len(index)) for v in values]
    except TypeError:
        raise ConfigError(f"labels of {name!r} must be hashable (numbers, strings, tuples)") from None
    return torch.tensor(codes, dtype=torch.long)
