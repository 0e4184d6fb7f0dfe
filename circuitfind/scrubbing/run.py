""":func:`scrub`: causal scrubbing of a hypothesis on a task, and its :class:`ScrubResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.engine.memory import PASS_BUDGET_BYTES
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError
from circuitfind.metrics import make_metric
from circuitfind.scrubbing.forward import draws_per_pass, joint_logits, treeified_logits
from circuitfind.scrubbing.hypothesis import Hypothesis
from circuitfind.scrubbing.plan import ScrubPlan, make_plan
from circuitfind.selection.bootstrap import bootstrap_interval
from circuitfind.tasks import check_task_fits, resolve_task

__all__ = ["ScrubResult", "scrub"]


@dataclass(frozen=True, eq=False)
class ScrubResult:
    """What :func:`scrub` measured.

    Attributes:
        metric: the scrubbed metric, mean over draws.
        full: the model's metric on the same draws' original prompts.
        random: the metric with everything resampled (the empty hypothesis, same draws and mode).
        recovered: ``(metric - random) / (full - random)``.
        interval: bootstrap interval of ``recovered`` over the original prompts (a
            :class:`~circuitfind.validation.Interval`).
        metric_name: the metric used.
        n_samples: number of (prompt, resample) draws.
        independent: the sampling mode.
        n_contexts: model evaluations per draw (1 + one per labelled node per consuming context).
        per_draw: ``scrubbed``, ``full`` and ``random`` ``(B,)`` float64 values, one per draw.
        plan: the draws (original prompt, resampled prompt, context prompts) for reproducing a value.
        contributions: with ``contributions=True``: node name -> ``metric`` and ``recovered`` with that node
            also resampled (its outgoing kept edges removed) on the same draws, and ``drop``, the loss of
            recovered fraction; else None.
    """

    metric: float
    full: float
    random: float
    recovered: float
    interval: Any
    metric_name: str
    n_samples: int
    independent: bool
    n_contexts: int
    per_draw: dict[str, Tensor]
    plan: ScrubPlan
    contributions: dict[str, dict[str, float]] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no per-draw values).

        Example:
            >>> from circuitfind.scrubbing import Hypothesis, scrub
            >>> r = scrub(pm, Hypothesis(pm.graph.full_mask()), task, n_samples=6, n_boot=50)
            >>> sorted(r.to_dict())[:4]
            ['contributions', 'full', 'independent', 'interval']
        """
        return {
            "metric": self.metric,
            "full": self.full,
            "random": self.random,
            "recovered": self.recovered,
            "interval": self.interval.to_dict(),
            "metric_name": self.metric_name,
            "n_samples": self.n_samples,
            "independent": self.independent,
            "n_contexts": self.n_contexts,
            "contributions": self.contributions,
            "notes": list(self.notes),
        }


def _per_draw(spec: Any, logits: Tensor, originals: Tensor, task, clean_logits: Tensor) -> Tensor:
    """``(K, B)`` float64 metric of each draw's logits ``(K, B, V)`` against its original prompt's answers."""
    K, B, V = logits.shape
    out = torch.empty(K, B, dtype=torch.float64)
    for p in originals.unique().tolist():  # one bound metric per original prompt, every draw of it at once
        rows = (originals == p).nonzero().flatten()
        one = slice(p, p + 1)
        m = make_metric(
            spec, clean_logits=clean_logits[one], answers=task.answers[one], wrong_answers=task.wrong_answers[one]
        )
        values = m(logits[:, rows.to(logits.device)].reshape(K * len(rows), 1, V))
        out[:, rows] = values.detach().double().cpu().reshape(K, len(rows))
    return out


def _recovered(scr: Tensor, full: Tensor, rand: Tensor) -> float:
    span = float(full.mean() - rand.mean())
    return float(scr.mean() - rand.mean()) / span if span != 0 else math.nan


def _interval(scr: Tensor, full: Tensor, rand: Tensor, originals: Tensor, n_boot: int, level: float, seed: int):
    """Percentile interval of recovered, resampling original prompts (each with all its draws)."""
    prompts, which = originals.unique(return_inverse=True)
    P = len(prompts)
    sums = torch.zeros(3, P, dtype=torch.float64).index_add_(1, which, torch.stack([scr, full, rand]))

    def statistic(idx: Tensor) -> float:
        s, f, r = torch.bincount(idx, minlength=P).double() @ sums.T
        return float((s - r) / (f - r)) if f != r else math.nan

    return bootstrap_interval(statistic, P, n_boot=n_boot, level=level, seed=seed)


def _node_masks(graph, kept: Tensor) -> tuple[list[str], Tensor]:
    """The hypothesis' nodes (senders with a kept outgoing edge) and ``(K, S, R)`` masks without each."""
    nodes = kept.any(1).nonzero().flatten().tolist()
    masks = torch.stack([graph.without_nodes(kept, [s]) for s in nodes]) if nodes else kept[None][:0]
    return [graph.sender_names[s] for s in nodes], masks


class _Scrubber:
    """One scrub's prepared state: the model, the task on its device, the plan and the clean runs."""

    def __init__(self, pm, task, hyp, plan: ScrubPlan, spec: Any, budget: int) -> None:
        self.pm, self.task, self.hyp, self.plan, self.spec = pm, task, hyp, plan, spec
        full = pm.graph.full_mask()
        with torch.no_grad():
            self.clean = pm.ablation("resample", task.clean_ids, task.attention_mask)  # clean sender outputs
            zero = pm.ablation("zero")
            self.clean_logits = pm.forward(
                task.clean_ids, zero, full, attention_mask=task.attention_mask, positions=task.answer_pos
            )  # (N, V)
        self.labelled = hyp.labelled_mask(pm.graph.n_senders)
        self.budget = budget

    def values(self, masks: Tensor) -> Tensor:
        """``(K, B)`` scrubbed per-draw metric values under ``masks`` ``(K, S, R)``."""
        plan = self.plan
        if plan.independent:
            rows = [treeified_logits(self.pm, self.task, plan, m, self.labelled, self.clean.outputs) for m in masks]
            logits = torch.stack(rows)
        else:
            per_pass = draws_per_pass(self.pm, plan.tree.n, len(masks), self.task.seq_len, self.budget)
            logits = joint_logits(self.pm, self.task, plan, masks.to(self.pm.device), self.clean, per_pass)
        return _per_draw(self.spec, logits, plan.originals, self.task, self.clean_logits)

    def baselines(self) -> tuple[Tensor, Tensor]:
        """``(B,)`` full-model and everything-resampled per-draw values on the plan's draws."""
        o = self.plan.originals
        full = _per_draw(self.spec, self.clean_logits[o.to(self.pm.device)][None], o, self.task, self.clean_logits)[0]
        if self.plan.independent:
            empty = torch.zeros_like(self.hyp.kept)
            return full, self.values(empty[None])[0]
        res = self.plan.resamples.to(self.pm.device)
        return full, _per_draw(self.spec, self.clean_logits[res][None], o, self.task, self.clean_logits)[0]


def scrub(
    model: Any,
    hypothesis: Hypothesis,
    task: Any,
    *,
    metric: Any = None,
    n_samples: int = 200,
    seed: int = 0,
    independent: bool = False,
    contributions: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    tokenizer: Any = None,
    memory_budget: int = PASS_BUDGET_BYTES,
) -> ScrubResult:
    """Causal scrubbing (Chan et al. 2022): how much of the metric survives resampling what ``hypothesis`` says
    cannot matter.

    Each of ``n_samples`` draws takes an original prompt (every prompt of the task equally often) and evaluates
    the model on it with: edges outside the hypothesis carrying the sender's clean output on another prompt
    (joint: the same one other prompt for every left-out edge of the draw; ``independent=True``: a separate one
    for each edge into each receiver); a node with labels run on a prompt that agrees with the prompt of the
    context consuming it on the node's labels, recursively (its own kept inputs come from that prompt, or
    from prompts that agree with it on theirs); a node without labels run on its consumer's prompt. All
    prompts of a draw have the original's length. See the README section "Causal scrubbing" for the details
    and what independent mode does not treeify.

    Args:
        model: a :class:`~circuitfind.PatchableModel`, a transformers model, or a name for ``load_model``.
        hypothesis: the :class:`Hypothesis`; its labels index the prompts of ``task``, in order.
        task: a :class:`~circuitfind.Task` (every prompt is used: pass ``task.held_out()`` to choose a split),
            or what :func:`~circuitfind.tasks.resolve_task` accepts.
        metric: ``logit_diff``, ``prob_diff``, ``kl`` or a callable on one draw's logits ``(1, V)``; default
            the task's metric.
        n_samples: the number of (prompt, resample) draws.
        seed: seeds the draws and the bootstrap.
        independent: a separate resampled prompt for every left-out edge into every receiver (and a separate
            child evaluation of a labelled node for every consuming receiver); slower, for small models.
        contributions: also resample each node of the hypothesis in turn (same draws) and report the change.
        n_boot, level: the bootstrap interval of ``recovered`` (resampling original prompts).
        tokenizer: for tasks given by name.
        memory_budget: activation bytes one joint pass may hold (sets the draws per pass).

    Returns:
        a :class:`ScrubResult`.

    Example:
        >>> from circuitfind.scrubbing import Hypothesis
        >>> r = scrub(pm, Hypothesis(pm.graph.full_mask()), task, n_samples=30, seed=0)
        >>> abs(r.metric - r.full) < 1e-4, round(r.recovered, 4)  # every edge, no labels: exactly the model
        (True, 1.0)
    """
    if not isinstance(hypothesis, Hypothesis):
        raise ConfigError(f"scrub needs a Hypothesis; got {type(hypothesis).__name__}. Wrap it: Hypothesis(edges=...)")
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer)
    check_task_fits(task, pm.spec)
    task = task.to(pm.device)
    hyp = hypothesis.resolve(pm.graph, len(task))
    plan = make_plan(pm.graph, hyp, task.attention_mask, n_samples, seed, bool(independent))
    spec = task.metric if metric is None else metric
    sc = _Scrubber(pm, task, hyp, plan, spec, memory_budget)
    return _result(sc, contributions, n_boot, level, seed)


def _result(sc: _Scrubber, contributions: bool, n_boot: int, level: float, seed: int) -> ScrubResult:
    plan, graph = sc.plan, sc.pm.graph
    names, node_masks = _node_masks(graph, sc.hyp.kept) if contributions else ([], None)
    masks = sc.hyp.kept[None] if node_masks is None else torch.cat([sc.hyp.kept[None], node_masks])
    values = sc.values(masks)
    full, rand = sc.baselines()
    scr = values[0]
    contrib = None
    if contributions:
        rec = _recovered(scr, full, rand)
        contrib = {}
        for name, v in zip(names, values[1:], strict=True):
            r = _recovered(v, full, rand)
            contrib[name] = {"metric": float(v.mean()), "recovered": r, "drop": rec - r}
    notes = tuple(
        f"{graph.sender_names[s]} has labels but no kept outgoing edge: its labels are not used"
        for s in sc.hyp.labels
        if not bool(sc.hyp.kept[s].any())
    )
    if plan.unpaired:
        notes += (f"prompts {list(plan.unpaired)} have no other prompt of their length and were not used",)
    return ScrubResult(
        metric=float(scr.mean()),
        full=float(full.mean()),
        random=float(rand.mean()),
        recovered=_recovered(scr, full, rand),
        interval=_interval(scr, full, rand, plan.originals, n_boot, level, seed),
        metric_name=getattr(sc.spec, "value", None) or str(getattr(sc.spec, "__name__", sc.spec)),
        n_samples=plan.n_samples,
        independent=plan.independent,
        n_contexts=plan.tree.n,
        per_draw={"scrubbed": scr, "full": full, "random": rand},
        plan=plan,
        contributions=contrib,
        notes=notes,
    )
