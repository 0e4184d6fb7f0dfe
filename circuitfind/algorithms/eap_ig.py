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

from circuitfind.algorithms.base import Progress, ScoreResult, check_steps
from circuitfind.algorithms.eap import EapOptions, gradient_scores
from circuitfind.engine.gradients import Point
from circuitfind.problem import Problem

__all__ = ["run_eap_ig", "run_eap_ig_mask"]


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
