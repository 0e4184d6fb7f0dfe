"""EAP, edge attribution patching (Syed et al. 2023): every edge's first-order loss change from one gradient.

``score(s -> r) = -d loss / d mask[s, r]`` at "all edges kept" ``= (ablated_s - live_s) . d loss / d input_r``,
summed over prompts and positions: the change in the loss when the edge alone is removed, to first order. For a
task metric (loss = -metric) that is ``d metric / d mask``. With KL the full model is KL's minimum, so every EAP
score is 0 there: use ``eap-ig`` with KL.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitfind.algorithms.base import MethodOptions, MethodResult, NullProgress, Progress, RunContext, ScoreResult
from circuitfind.algorithms.nodes import node_scores_of_edges
from circuitfind.algorithms.units import check_level, check_units
from circuitfind.engine.gradients import Point, edge_gradients
from circuitfind.problem import Problem

__all__ = ["EAP", "EapOptions", "run", "run_eap"]


@dataclass(frozen=True)
class EapOptions:
    """Attribution options.

    Attributes:
        steps: points on the integration path (EAP ignores it: one gradient at "all kept").
        chunk_size: prompts per forward-backward pass (None: sized to about 1.5 GB of activations).
        level: ``"edge"``, or ``"node"``: also score every node (the sum of its outgoing edge scores, exactly the
            gradient with respect to a gate on the node's output; see :mod:`circuitfind.algorithms.nodes`).
        by_position: also score every edge at every position, ``(S, R, T)`` (prompts of one template).
    """

    steps: int = 5
    chunk_size: int | None = None
    level: str = "edge"
    by_position: bool = False

    def __post_init__(self) -> None:
        check_level(self.level)


@dataclass(frozen=True)
class EAP(MethodOptions):
    """EAP as a method object (name ``"eap"``): one gradient at "all edges kept".

    Attributes:
        level: ``"edge"``, or ``"node"``: also score every node (the sum of its outgoing edge scores) and cut nodes.
        by_position: score and cut every edge at every position, ``(S, R, T)`` (prompts of one template).

    Example:
        >>> EAP(level="node").units()
        'node'
    """

    level: str = "edge"
    by_position: bool = False

    def __post_init__(self) -> None:
        check_units(self.level, self.by_position)

    def attribution_options(self) -> EapOptions:
        return EapOptions(level=self.level, by_position=self.by_position)


def run(problem: Problem, options: EAP, context: RunContext) -> MethodResult:
    """The registry's entry for ``eap``: :func:`run_eap` with the options' level and positions.

    Example:
        >>> run(problem, EAP(), RunContext()).scores.shape
        torch.Size([4, 8])
    """
    return run_eap(problem, options.attribution_options(), context.progress)


def run_eap(problem: Problem, opts: EapOptions = EapOptions(), progress: Progress | None = None) -> ScoreResult:
    """EAP scores for every edge.

    Example:
        >>> result = run_eap(problem)
        >>> result.scores.shape  # (senders, receivers)
        torch.Size([4, 8])
    """
    return gradient_scores(problem, [Point()], [1.0], clean_diffs=False, opts=opts, progress=progress, name="EAP")


def gradient_scores(problem, points, weights, *, clean_diffs, opts, progress, name) -> ScoreResult:
    """Scores ``-sum_k w_k d loss / d mask`` at ``points``, with a progress bar counting prompts per pass."""
    progress = progress or NullProgress()
    B = problem.clean_ids.shape[0]
    progress.set_description(name)
    progress.reset(total=B * len(points))
    by_position = getattr(opts, "by_position", False)
    result = edge_gradients(
        problem,
        points,
        weights,
        clean_diffs=clean_diffs,
        chunk_size=opts.chunk_size,
        on_pass=progress.update,
        by_position=by_position,
    )
    g = problem.pm.graph
    scores = (-result.grad).cpu()
    scores[~g.edge_mask] = 0.0
    position_scores = scores if by_position else None
    scores = scores.sum(dim=-1) if by_position else scores  # summed over positions: the position-free score
    node_scores = node_scores_of_edges(g, scores) if getattr(opts, "level", "edge") == "node" else None
    stats = {"passes": len(points), "losses_at_points": result.losses}
    return ScoreResult(scores, stats, node_scores=node_scores, position_scores=position_scores)
