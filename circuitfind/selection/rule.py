"""How scores become a circuit: :class:`Cut`, one small frozen object ``discover`` takes as ``cut=``.

A cut has at most one size rule (``threshold``, ``n_edges``, ``target`` or ``n_nodes``) and says how a target
cut chooses its size (``select``, ``confidence``, ``band``; see :mod:`circuitfind.selection.validated`) and how
scores rank (``absolute``). Fields left None are not set: ``discover`` refuses a set field the method does not
take, and fills the defaults (a scoring method with no size rule cuts at ``target=0.8``).

Layer: selection (needs nothing above the graph).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from circuitfind.errors import ConfigError, check_optional_int
from circuitfind.selection.validated import SelectOptions, check_band

__all__ = ["SELECT_RULES", "SIZE_RULES", "Cut", "check_target"]

SELECT_RULES = ("validate", "train")
"""How a target cut chooses its size: cross-fitted on folds of the discovery prompts, or on the prompts themselves."""
SIZE_RULES = ("threshold", "n_edges", "target", "n_nodes")
"""The fields of :class:`Cut` that fix the circuit's size: at most one is set."""


def check_target(target: Any, name: str = "target") -> float:
    """``target`` as a float in (0, 1], or a :class:`ConfigError`.

    Example:
        >>> check_target(0.8)
        0.8
    """
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < float(target) <= 1:
        raise ConfigError(f"{name} must be a faithfulness in (0, 1], e.g. 0.8; got {target!r}")
    return float(target)


@dataclass(frozen=True)
class Cut:
    """How a method's scores become a circuit.

    Attributes:
        threshold: keep the edges (nodes, position-edges) whose score is above it (any number but NaN).
        n_edges: keep the top ``n_edges`` edges (position-edges with ``by_position=True``).
        target: the smallest top-k whose exact faithfulness reaches it, in (0, 1].
        n_nodes: at ``level="node"``: keep the top ``n_nodes`` nodes.
        select: how a target cut chooses its size: ``"validate"`` (None: the default) or ``"train"``.
        confidence: with ``select="validate"``: the bootstrap lower bound at this confidence must reach the target.
        band: ``(lo, hi)``: ``lo`` is the target; a circuit past ``hi`` gets its most negative excluded edges back.
        absolute: rank by ``|score|`` (None: signed).

    Example:
        >>> Cut(target=0.8).size_rule, Cut(band=(0.8, 1.25)).target  # a band's lo is the target
        ('target', 0.8)
        >>> Cut(n_edges=5, target=0.8)
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: a circuit is cut from the scores one way: pass one of threshold, n_edges or \
target (n_nodes at level='node'); got n_edges and target
    """

    threshold: float | None = None
    n_edges: int | None = None
    target: float | None = None
    n_nodes: int | None = None
    select: str | None = None
    confidence: float | None = None
    band: tuple[float, float] | None = None
    absolute: bool | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or math.isnan(t)):
            raise ConfigError(f"threshold must be a number (a score; math.inf keeps nothing); got {t!r}")
        check_optional_int(self.n_edges, "n_edges", what="the number of edges to keep")
        check_optional_int(self.n_nodes, "n_nodes", fix="the number of nodes to keep")
        if self.target is not None:
            check_target(self.target)
        if self.absolute is not None and not isinstance(self.absolute, bool):
            raise ConfigError(f"absolute must be True or False; got {self.absolute!r}")
        self._check_select()
        given = [name for name in SIZE_RULES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(
                "a circuit is cut from the scores one way: pass one of threshold, n_edges or target (n_nodes at "
                "level='node'); got " + " and ".join(given)
            )

    def _check_select(self) -> None:
        if self.select is not None and self.select not in SELECT_RULES:
            raise ConfigError(f"select must be one of {list(SELECT_RULES)}; got {self.select!r}")
        if self.confidence is not None and self.select == "train":
            raise ConfigError("confidence= is the lower bound of the validated cut; it needs select='validate'")
        SelectOptions(target=0.5, confidence=self.confidence)  # raises on a bad confidence
        band = check_band(self.band, self.target)
        if band is None:
            return
        if self.threshold is not None or self.n_edges is not None or self.n_nodes is not None:
            raise ConfigError("band= bounds a target cut; it does not apply with threshold, n_edges or n_nodes")
        object.__setattr__(self, "band", band)
        object.__setattr__(self, "target", band[0])

    @property
    def size_rule(self) -> str | None:
        """The one size field that is set (``"threshold"``, ``"n_edges"``, ``"target"``, ``"n_nodes"``), or None."""
        return next((name for name in SIZE_RULES if getattr(self, name) is not None), None)

    @property
    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @property
    def upper(self) -> float | None:
        """The band's upper end (None: no band)."""
        return None if self.band is None else self.band[1]
