"""Integrated-gradient edge attribution, two paths.

* ``eap-ig`` (EAP-IG-inputs, Hanna et al. 2024): the receiver gradients are averaged over ``steps`` points on
  the straight line from the ablated to the clean input embedding (right Riemann sum: points ``k / steps``, so one
  step is EAP), and multiplied by the clean sender differences. More faithful than EAP.
* ``eap-ig-mask``: integrated gradients along the edge mask itself, every edge scaled together from 0 (all
  ablated) to 1 (all kept), each point's gradient times that point's own sender differences. By IG's completeness
  the scores sum to ``loss(empty) - loss(full)`` (``metric(full) - metric(empty)`` for a task metric) as
  ``steps`` grows: a built-in check.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitfind.algorithms.base import MethodOptions, MethodResult, Progress, RunContext, ScoreResult, check_steps
from circuitfind.algorithms.eap import EapOptions, gradient_scores
from circuitfind.algorithms.units import check_units
from circuitfind.engine.gradients import Point
from circuitfind.problem import Problem

__all__ = ["EAPIG", "EAPIGMask", "run", "run_eap_ig", "run_eap_ig_mask", "run_mask"]


@dataclass(frozen=True)
class EAPIG(MethodOptions):
    """EAP-IG-inputs as a method object (name ``"eap-ig"``).

    Attributes:
        steps: points on the path from the ablated to the clean input embedding (right Riemann sum; 1 is EAP).
        level: ``"edge"``, or ``"node"``: also score every node (the sum of its outgoing edge scores) and cut nodes.
        by_position: score and cut every edge at every position, ``(S, R, T)`` (prompts of one template).

    Example:
        >>> EAPIG(steps=3).attribution_options().steps
        3
    """

    steps: int = 5
    level: str = "edge"
    by_position: bool = False

    def __post_init__(self) -> None:
        check_steps(self.steps)
        check_units(self.level, self.by_position)

    def attribution_options(self) -> EapOptions:
        return EapOptions(steps=self.steps, level=self.level, by_position=self.by_position)


@dataclass(frozen=True)
class EAPIGMask(EAPIG):
    """Integrated gradients along the edge mask as a method object (name ``"eap-ig-mask"``); the options of
    :class:`EAPIG`, ``steps`` points from every edge ablated to every edge kept.

    Example:
        >>> EAPIGMask(steps=8).steps
        8
    """


def run(problem: Problem, options: EAPIG, context: RunContext) -> MethodResult:
    """The registry's entry for ``eap-ig``: :func:`run_eap_ig`.

    Example:
        >>> run(problem, EAPIG(steps=2), RunContext()).stats["steps"]
        2
    """
    return run_eap_ig(problem, options.attribution_options(), context.progress)


def run_mask(problem: Problem, options: EAPIGMask, context: RunContext) -> MethodResult:
    """The registry's entry for ``eap-ig-mask``: :func:`run_eap_ig_mask`.

    Example:
        >>> run_mask(problem, EAPIGMask(steps=2), RunContext()).stats["steps"]
        2
    """
    return run_eap_ig_mask(problem, options.attribution_options(), context.progress)


def run_eap_ig(problem: Problem, opts: EapOptions | None = None, progress: Progress | None = None) -> ScoreResult:
    """EAP-IG-inputs scores for every edge.

    Example:
        >>> result = run_eap_ig(problem, EapOptions(steps=5))
        >>> result.scores.shape  # (senders, receivers)
        torch.Size([4, 8])
    """
    return _integrated(problem, opts, progress, lambda a: Point(input_scale=a), clean_diffs=True, name="EAP-IG")


def run_eap_ig_mask(problem: Problem, opts: EapOptions | None = None, progress: Progress | None = None) -> ScoreResult:
    """Integrated gradients along the edge mask, for every edge.

    Example:
        >>> from circuitfind.problem import Faithfulness
        >>> result = run_eap_ig_mask(problem, EapOptions(steps=5))
        >>> f = Faithfulness(problem)  # its loss_empty and loss_full
        >>> gap = f.loss_empty - f.loss_full
        >>> abs(float(result.scores.sum()) - gap) < 0.1 * abs(gap)  # completeness, closer as steps grow
        True
    """
    return _integrated(problem, opts, progress, lambda a: Point(mask_scale=a), clean_diffs=False, name="EAP-IG mask")


def _integrated(problem, opts, progress, point_at, *, clean_diffs: bool, name: str) -> ScoreResult:
    """The right Riemann sum over ``point_at(k / m)``, ``k = 1..m``, each point weighted ``1 / m``."""
    opts = opts or EapOptions()
    m = check_steps(opts.steps)
    points = [point_at(k / m) for k in range(1, m + 1)]
    result = gradient_scores(
        problem,
        points,
        [1.0 / m] * m,
        clean_diffs=clean_diffs,
        opts=opts,
        progress=progress,
        name=f"{name} ({m} steps)",
    )
    result.stats["steps"] = m
    return result
