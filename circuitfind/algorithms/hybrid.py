"""Attribute-then-verify discovery (``method="hybrid"``): attribution picks the candidates, exact tests prune them.

1. EAP-IG scores every edge (``steps`` points).
2. Candidates: the smallest top-k by score whose exact faithfulness on the discovery prompts reaches
   ``candidate_target`` (near 1), by bisection over k. Every edge outside them is removed at once; the probe that
   accepted them is that removal's exact check.
3. ACDC inside the candidates: the same visiting order and decision rule as ACDC (an edge goes when removing it
   raises the loss by less than ``threshold``), testing only candidate edges, each test one exact patched forward
   restarted at the receiver's layer.
4. Repair: if the pruned circuit's exact faithfulness is below ``target``, the pruned edges with the largest ACDC
   effects come back -- the fewest that reach the target, by bisection over their number.

Guarantee: the returned circuit was evaluated exactly on the discovery prompts and its faithfulness there is
``>= target``, unless even every candidate together falls short (then the candidates are returned and
``reached`` is False; with ``candidate_target >= target`` that happens only when the full graph does too). Edges
that cannot matter (no kept path from the input or to the logits) are dropped before every evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from circuitfind.algorithms.acdc import AcdcOptions, AcdcState, SenderOrder, parse_sender_order, run_acdc_fast
from circuitfind.algorithms.base import (
    MethodOptions,
    MethodResult,
    NullProgress,
    Progress,
    RunContext,
    auto_batch_size,
    check_steps,
    probe_reporter,
)
from circuitfind.algorithms.eap import EapOptions
from circuitfind.algorithms.eap_ig import run_eap_ig
from circuitfind.algorithms.exact import layer_cost
from circuitfind.engine.ablations import Ablation
from circuitfind.errors import ConfigError, check_optional_int
from circuitfind.problem import Faithfulness, Problem
from circuitfind.selection.cuts import prune_dangling, smallest_faithful
from circuitfind.selection.rule import check_target

__all__ = ["Hybrid", "HybridOptions", "HybridResult", "check_target", "run", "run_hybrid"]


@dataclass(frozen=True)
class HybridOptions:
    """Options of the attribute-then-verify method.

    Attributes:
        target: faithfulness the returned circuit must reach on the discovery prompts, in (0, 1].
        threshold: ACDC's tau for the pruning, in loss units; None: 1% of ``|loss(empty) - loss(full)|``.
        candidate_target: faithfulness of the candidate set; None: ``max(target, 0.95)``.
        steps: EAP-IG steps.
        batch_size: candidate removals per forward in the pruning.
        chunk_size: prompts per forward-backward pass in the attribution.
        absolute, sender_order: as in ACDC.
        from_input: drop edges with no kept path from the input (exact under resample ablation only).
    """

    target: float = 0.8
    threshold: float | None = None
    candidate_target: float | None = None
    steps: int = 5
    batch_size: int = 1
    chunk_size: int | None = None
    absolute: bool = False
    sender_order: SenderOrder = SenderOrder.NORMAL
    from_input: bool = True

    def __post_init__(self) -> None:
        check_target(self.target)
        if self.candidate_target is not None:
            check_target(self.candidate_target, "candidate_target")
        check_steps(self.steps)


@dataclass(frozen=True)
class Hybrid(MethodOptions):
    """Attribute-then-verify as a method object (name ``"hybrid"``): the circuit it returns reaches ``target``
    on the discovery prompts (see the module docstring).

    Attributes:
        target: faithfulness the returned circuit must reach on the discovery prompts, in (0, 1].
        threshold: ACDC's tau for the pruning, in loss units, ``>= 0``; None: 1% of ``|loss(empty) - loss(full)|``.
        candidate_target: faithfulness of the candidate set; None: ``max(target, 0.95)``.
        steps: EAP-IG steps of the attribution.
        batch_size: candidate removals per forward in the pruning; None: 1 on a CPU, 8 on an accelerator.
        absolute, sender_order: as in ACDC.

    Example:
        >>> Hybrid(target=0.9, steps=3).target
        0.9
    """

    target: float = 0.8
    threshold: float | None = None
    candidate_target: float | None = None
    steps: int = 5
    batch_size: int | None = None
    absolute: bool = False
    sender_order: SenderOrder = SenderOrder.NORMAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender_order", parse_sender_order(self.sender_order))
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0):
            raise ConfigError(f"threshold must be a number >= 0 (the pruning tau in loss units) or None; got {t!r}")
        check_optional_int(self.batch_size, "batch_size", what="removals per forward", fix="or None: automatic")
        if not isinstance(self.absolute, bool):
            raise ConfigError(f"absolute must be True or False; got {self.absolute!r}")
        self.hybrid_options(True)  # raises on a bad target, candidate_target or steps

    def hybrid_options(self, from_input: bool) -> HybridOptions:
        """The options of :func:`run_hybrid` (batch size 1 until resolved)."""
        return HybridOptions(
            target=self.target,
            threshold=self.threshold,
            candidate_target=self.candidate_target,
            steps=self.steps,
            batch_size=self.batch_size or 1,
            absolute=self.absolute,
            sender_order=self.sender_order,
            from_input=from_input,
        )

    def resolved(self, device: torch.device) -> Hybrid:
        return replace(self, batch_size=auto_batch_size(self.batch_size, device))


def run(problem: Problem, options: Hybrid, context: RunContext) -> MethodResult:
    """The registry's entry for ``hybrid``: :func:`run_hybrid` with the context's shared exact evaluator; edges
    without a kept path from the input are dropped only under resample ablation (where that is exact).

    Example:
        >>> result = run(problem, Hybrid(target=0.8), RunContext())
        >>> result.stats["reached"], result.mask.dtype
        (True, torch.bool)
    """
    from_input = getattr(problem.ablated, "kind", None) is Ablation.RESAMPLE
    opts = options.resolved(problem.pm.device).hybrid_options(from_input)
    result = run_hybrid(problem, opts, context.faithfulness(problem), context.progress)
    stats = {**result.stats, "probes": result.probes, "faithfulness": result.faithfulness, "reached": result.reached}
    return MethodResult(result.scores, stats, mask=result.mask)


@dataclass
class HybridResult:
    """The circuit and how it was found.

    Attributes:
        mask: ``(S, R)`` bool, the circuit.
        scores: ``(S, R)`` the EAP-IG scores (the full ranking).
        effects: ``(S, R)`` ACDC's effect of every tested candidate edge (NaN elsewhere).
        faithfulness: exact faithfulness of ``mask`` on the discovery prompts.
        reached: whether it reaches ``target``.
        probes: every exact evaluation made: ``{"stage", "k", "n_edges_after_prune", "faithfulness"}``.
        stats: sizes and counts of each stage.
    """

    mask: Tensor
    scores: Tensor
    effects: Tensor
    faithfulness: float
    reached: bool
    probes: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def run_hybrid(
    problem: Problem, opts: HybridOptions, faith: Faithfulness, progress: Progress | None = None
) -> HybridResult:
    """Attribute, keep the faithful candidates, prune them with exact tests, repair to the target.

    Example:
        >>> faith = Faithfulness(problem)
        >>> result = run_hybrid(problem, HybridOptions(target=0.8), faith)
        >>> result.reached, faith(result.mask) >= 0.8
        (True, True)
    """
    progress = progress or NullProgress()
    g = problem.pm.graph
    probes: list[dict[str, Any]] = []

    attribution = run_eap_ig(problem, EapOptions(steps=opts.steps, chunk_size=opts.chunk_size), progress)
    scores = attribution.scores

    cand_target = opts.candidate_target if opts.candidate_target is not None else max(opts.target, 0.95)
    on_probe = probe_reporter(progress, cand_target, "hybrid: candidates", probes, "candidates")
    cand = smallest_faithful(g, scores, faith, cand_target, from_input=opts.from_input, on_probe=on_probe)
    candidates = cand.mask
    stats: dict[str, Any] = {
        "attribution": attribution.stats,
        "candidate_target": cand_target,
        "candidates": int(candidates.sum()),
        "candidates_faithfulness": cand.faithfulness,
    }
    if not cand.reached:
        stats["note"] = cand.message
        effects = torch.full_like(scores, math.nan)
        return HybridResult(candidates, scores, effects, cand.faithfulness, False, probes, stats)

    gap = abs(faith.loss_empty - faith.loss_full)
    tau = opts.threshold if opts.threshold is not None else 0.01 * gap
    state = AcdcState(
        mask=candidates.clone(),
        effects=torch.full((g.n_senders, g.n_receivers), math.nan),
        current=math.nan,  # run_acdc_fast measures it with the same evaluator as every test
    )
    acdc = AcdcOptions(
        threshold=tau, absolute=opts.absolute, sender_order=opts.sender_order, batch_size=opts.batch_size
    )
    progress.set_description("hybrid: exact pruning")
    per_receiver = candidates.sum(0).tolist()  # (R,) tests still to come, weighted by their cost below
    cost = [layer_cost(g.n_layers, g.receiver_layer(r)) for r in range(g.n_receivers)]
    progress.reset(total=sum(n * c for n, c in zip(per_receiver, cost, strict=True)))

    def on_boundary(st: AcdcState, done: int, total: int) -> None:
        r = g.n_receivers - done  # receivers are visited from the last index down
        progress.update(per_receiver[r] * cost[r])
        progress.set_postfix(kept=int(st.mask.sum()), tested=st.edges_tested, refresh=False)

    state = run_acdc_fast(problem, acdc, state=state, on_boundary=on_boundary)
    pruned = prune_dangling(g, state.mask, from_input=opts.from_input)
    f_pruned = faith(pruned)
    probes.append(
        {
            "stage": "pruned",
            "k": int(state.mask.sum()),
            "n_edges_after_prune": int(pruned.sum()),
            "faithfulness": f_pruned,
        }
    )
    stats.update(
        threshold=tau,
        edges_tested=state.edges_tested,
        acdc_forward_passes=state.forward_passes,
        pruned_edges=int(pruned.sum()),
        pruned_faithfulness=f_pruned,
    )
    mask, f, added = pruned, f_pruned, 0
    if f_pruned < opts.target:
        on_probe = probe_reporter(progress, opts.target, "hybrid: repair", probes, "repair")
        mask, f, added = _repair(g, pruned, candidates, state.effects, faith, opts, on_probe)
    stats["added_back"] = added
    return HybridResult(mask, scores, state.effects, f, f >= opts.target, probes, stats)


def _repair(g, pruned: Tensor, candidates: Tensor, effects: Tensor, faith, opts: HybridOptions, on_probe):
    """The fewest pruned candidates, largest ACDC effect first, whose return lifts the circuit to the target."""
    order = torch.full(effects.shape, -math.inf, dtype=torch.float64)  # non-candidates: never chosen
    back = candidates & ~pruned
    order[back] = torch.nan_to_num(effects[back].double(), nan=-1e300)  # untested (dead) edges last
    order[pruned] = math.inf  # the pruned circuit first
    n_kept, n_cand = int(pruned.sum()), int(candidates.sum())
    lo = min(n_kept + 1, n_cand)  # the pruned circuit itself was measured and fell short
    result = smallest_faithful(
        g, order, faith, opts.target, from_input=opts.from_input, lo=lo, hi=n_cand, first=lo, on_probe=on_probe
    )
    return result.mask, result.faithfulness, int(result.mask.sum()) - int(pruned.sum())
