"""``discover()``: from a model and a task to a :class:`Circuit`, with progress, checkpoints and resume.

The method is a registry entry (:mod:`circuitfind.algorithms.registry`) run behind one protocol; what is left here
is the orchestration: prepare the problem, run the method, cut its scores into a circuit (or keep the circuit it
decided), and record what was done.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from circuitfind.algorithms.base import (
    MethodOptions,
    MethodResult,
    NullProgress,
    RunContext,
    probe_reporter,
)
from circuitfind.algorithms.checkpoint import fingerprint
from circuitfind.algorithms.registry import Plan, plan
from circuitfind.algorithms.units import node_cut, position_cut
from circuitfind.circuit import Circuit
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.memory import check_chunk_size, peak_memory
from circuitfind.engine.patchable import PatchableModel, resolve_model
from circuitfind.errors import ConfigError
from circuitfind.metrics import Metric
from circuitfind.problem import Faithfulness, Problem, prepare_problem
from circuitfind.selection.bootstrap import faithfulness_interval
from circuitfind.selection.cuts import above_threshold, edge_ranking, prune_dangling, smallest_faithful, top_n
from circuitfind.selection.rule import SIZE_RULES, Cut
from circuitfind.selection.validated import (
    Fold,
    PromptValues,
    SelectOptions,
    band_on_train,
    complement,
    fold_indices,
    validated_cut,
)
from circuitfind.tasks import Task, resolve_task
from circuitfind.tasks.templates import template_labels

__all__ = ["discover"]


def discover(
    model: nn.Module | PatchableModel | str,
    task: Any,
    method: str | MethodOptions = "acdc",
    *,
    cut: Cut | None = None,
    metric: Any = "kl",
    ablation: Ablation | str = "resample",
    tokenizer: Any = None,
    progress: bool = True,
    **options: Any,
) -> Circuit:
    """Find the circuit of ``model`` on ``task``, with any method, as one :class:`Circuit`.

    Methods (a name, or a method object of :mod:`circuitfind.algorithms` such as ``ACDC(threshold=0.05)`` or
    ``EAPIG(steps=5)``; a name with keyword options finds the same circuit as the object with those fields):

    * ``acdc`` / ``ACDC`` -- ACDC, fast and exact (``acdc-plain`` / ``ACDCPlain``: one full forward per edge);
    * ``eap`` / ``EAP``, ``eap-ig`` / ``EAPIG``, ``eap-ig-mask`` / ``EAPIGMask``, ``eap-ig-act`` / ``EAPIGAct`` --
      attribution scores for every edge from gradients;
    * ``edge-pruning`` / ``EdgePruning`` -- learned hard-concrete edge masks; ``n_edges`` is its budget (scores:
      gate logits);
    * ``exact`` / ``Exact`` -- each edge's exact loss change when it alone is removed (``candidates`` restricts it);
    * ``hybrid`` / ``Hybrid`` -- EAP-IG picks faithful candidates, exact ACDC-style tests prune them, the result
      provably reaches ``target`` on the discovery prompts.

    How the circuit is cut from the scores (every score is the loss change when the edge alone is removed, so
    higher is more important): ``threshold`` (score above it; for ACDC its tau, default 0.01), ``n_edges`` (the
    top n) or ``target``. Scoring methods take one of the three (default: ``target=0.8``); ACDC's effects can be
    cut by ``n_edges`` or ``target`` too. Edges with no kept path from the input (under resample ablation) or to
    the logits are dropped from every cut circuit; they cannot change the logits.

    How a ``target`` cut of a scoring method chooses its size (``select``): ``"validate"`` (default) never checks
    a size on the prompts that scored it: the discovery prompts are dealt into up to 4 folds (seeded shuffle), the
    method scores without each fold and cuts circuits that are checked on that fold, and the size is twice the
    smallest probed k0 whose pooled validation faithfulness reaches ``target`` at k0 and at every larger size
    probed (``confidence=c``: its bootstrap lower bound must; twice: off the steep part of the curve); the circuit
    is the top 2 k0 of the scores on all discovery prompts. See :mod:`circuitfind.selection.validated`.
    ``"train"``: the smallest top-k whose faithfulness on the discovery prompts reaches it, by bisection (the rule
    before validation). ACDC keeps its threshold (and its target cut the train rule); the hybrid keeps its
    guarantee on the discovery prompts and reports the cross-fitted figure beside it. Every probe is in
    ``circuit.stats["probes"]``; the validation figure, its interval and its probes in
    ``circuit.stats["validation"]``. Fewer than 4 discovery prompts fall back to ``"train"``
    (``circuit.config["select_note"]`` says so).

    Args:
        model: a transformers causal LM, a :class:`PatchableModel`, or a name for :func:`load_model`.
        task: a :class:`Task`, a built-in task name (``ioi``, ``greater-than``, ``induction``), a JSON path, or
            a dict of strings / tensors (see :func:`circuitfind.tasks.resolve_task`). The train split is used.
        method: a method name (above) or a method object.
        cut: a :class:`~circuitfind.selection.rule.Cut` (the cut options below as one object), or None.
        metric: ``kl`` (KL of the circuit from the full model at the answer position; default), ``logit_diff``,
            ``prob_diff``, or a callable on logits ``(B, V)`` returning a loss to minimise.
        ablation: ``resample`` (the paired corrupted prompts; default), ``mean`` (over ``reference`` or the
            task's clean prompts), ``zero``.
        tokenizer: needed when the task is given as strings or a name.
        progress: show a progress bar.
        **options: each goes, by its name, to the method's options when they have that field, else to the cut,
            else to the problem; an option the method does not take is a :class:`ConfigError` (None: not set).

            - the cut (:class:`Cut`): ``threshold``, ``n_edges``, ``target`` (faithfulness in (0, 1] on the
              discovery prompts), ``n_nodes`` (at ``level="node"``), ``select`` (``"validate"``, default, or
              ``"train"``, see above), ``confidence`` (with ``select="validate"``: the size by the bootstrap lower
              bound at this confidence, e.g. 0.9), ``band`` (``(lo, hi)``, e.g. ``(0.8, 1.25)``: ``lo`` is the
              target; a circuit past ``hi`` gets the most negative excluded edges added back until f <= hi;
              ``circuit.stats["in_band"]``), ``absolute`` (rank by ``|score|``).
            - the problem (every method): ``chunk_size`` (prompts per forward pass; None: as many as fit 1 GiB of
              activations, see :mod:`circuitfind.engine.memory`; results do not depend on it beyond rounding;
              ``circuit.stats["peak_memory"]`` records the peak), ``reference`` (mean ablation's reference task).
            - the methods' own fields: ``steps`` (``eap-ig``, ``eap-ig-mask``, ``eap-ig-act``, ``hybrid``: 5
              integration steps, 1 step of ``eap-ig`` is EAP; ``edge-pruning``: 200 training steps),
              ``threshold`` / ``absolute`` / ``sender_order`` (``normal`` or ``reverse``) / ``batch_size``
              (candidate removals per forward; None: 1 on CPU, 8 on GPUs) of ACDC and the hybrid (also
              ``exact``'s ``batch_size``), ``target`` of the hybrid, ``checkpoint`` / ``resume`` (ACDC: a file
              checkpointed every 30 s and on interrupt or crash, and continuing from it), ``candidates``
              (``exact``: ``(S, R)`` bool, the edges it scores), ``level`` (``"node"``: score and cut heads, MLPs
              and the input as units, the circuit records ``node_mask`` / ``node_scores``), ``by_position``
              (``eap``, ``eap-ig``, ``eap-ig-mask``: cut (sender, receiver, position) edges; prompts of one
              template), ``lr`` / ``seed`` / ``warm_start`` (``edge-pruning``: Adam's learning rate, default 0.1;
              the gates' noise seed, default 0; start from EAP-IG scores). See each method object's fields.

    Returns:
        the :class:`Circuit` with per-edge scores, metric values and per-method statistics.

    Example:
        >>> model, tok = circuitfind.load_model()  # doctest: +SKIP
        >>> circuit = circuitfind.discover(model, "ioi", tokenizer=tok, method="eap-ig", target=0.8)  # doctest: +SKIP
        >>> same = circuitfind.discover(model, "ioi", circuitfind.algorithms.EAPIG(steps=5), tokenizer=tok,
        ...                             cut=circuitfind.algorithms.Cut(target=0.8))  # doctest: +SKIP
        >>> print(circuit.summary())  # doctest: +SKIP
    """
    chosen = plan(method, cut, options)
    check_chunk_size(chosen.problem.get("chunk_size"))
    kind = Ablation.parse(ablation)  # validated before any model loads
    model_name = model if isinstance(model, str) else ""
    pm, tokenizer = resolve_model(model, tokenizer)
    _check_size(chosen.cut, pm)
    chosen = dataclasses.replace(chosen, options=chosen.options.resolved(pm.device))
    model_name = model_name or getattr(getattr(pm.module, "config", None), "_name_or_path", "") or pm.spec.family
    task = resolve_task(task, tokenizer).train()
    t0 = time.perf_counter()
    run = _prepare(pm, task, chosen, metric, kind, progress)
    try:
        result = chosen.method.run(run.problem, chosen.options, run.context)
        mask, stats = _circuit_mask(run, result)
    finally:
        if run.bar is not None:
            run.bar.close()
    stats["wall_time_s"] = time.perf_counter() - t0
    return _circuit_of(pm, run, mask, result.scores, stats, model_name)


def _check_size(cut: Cut, pm: PatchableModel) -> None:
    n = cut.n_edges
    if n is not None and n > pm.graph.n_edges:
        raise ConfigError(f"n_edges must be between 1 and {pm.graph.n_edges:,} (this graph's edges); got {n:,}")


@dataclass(frozen=True)
class _Run:
    """What the steps of one :func:`discover` share."""

    problem: Problem
    bound: Metric
    config: dict[str, Any]
    plan: Plan
    from_input: bool  # a node with no kept input outputs its ablated value only under resample ablation
    bar: Any
    context: RunContext
    fold_problem: Any = None  # prompt indices -> (Problem, Metric) of those prompts; set: the validated cut
    position_labels: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)  # Circuit fields of node / position circuits, set by their cut

    @property
    def cut(self) -> Cut:
        return self.plan.cut

    @property
    def target(self) -> float:
        """The target of a target cut (only asked for where the cut is one)."""
        target = self.plan.cut.target
        assert target is not None, "a target cut"
        return target

    @property
    def absolute(self) -> bool:
        return bool(self.plan.cut.absolute)

    @property
    def faith(self) -> Faithfulness:
        return self.context.faithfulness(self.problem)

    def fold_context(self) -> RunContext:
        """A context for a rerun of the method on a fold's problem (its own evaluator, the same bar)."""
        return RunContext(progress=self.context.progress, metric=self.bound)


def _prepare(pm: PatchableModel, task: Task, chosen: Plan, metric: Any, kind: Ablation, progress: bool) -> _Run:
    """The problem, the recorded config and the run context of one discovery."""
    units = chosen.options.units()
    labels = template_labels(task) if units == "position" else None  # refuses prompts that do not align
    problem, bound = prepare_problem(pm, task, metric=metric, ablation=kind, **chosen.problem)
    config = _config(chosen, bound, kind, task)
    validated = _select_config(config, chosen)
    bar = _progress_bar(progress)

    def run_id() -> str:
        return fingerprint(config, task, problem, pm, metric=metric)

    context = RunContext(progress=bar or NullProgress(), metric=bound, run_id=run_id)
    folds = _fold_problems(pm, task, metric, kind, chosen.problem) if validated else None
    return _Run(problem, bound, config, chosen, kind is Ablation.RESAMPLE, bar, context, folds, labels)


def _config(chosen: Plan, bound: Metric, kind: Ablation, task: Task) -> dict[str, Any]:
    """The run's options as recorded in the circuit (and fingerprinted for ACDC's checkpoints)."""
    cut = {k: v for k, v in chosen.cut.given.items() if k in SIZE_RULES or k == "absolute"}
    return {
        "method": chosen.method.name,
        **chosen.options.config(),
        **cut,
        "metric": bound.name,
        "ablation": kind.value,
        "task": task.name,
        "n_prompts": len(task),
    }


def _select_config(config: dict[str, Any], chosen: Plan) -> bool:
    """Record how a target cut chooses its size; returns whether the validated cut runs.

    Node and position cuts keep their own target search; fewer than 4 discovery prompts fall back to the train rule.
    """
    if "select" not in chosen.method.cuts or chosen.options.units() != "edge":
        return False
    if chosen.cut.size_rule not in (None, "target"):  # None: a method that decides (the hybrid's target is its own)
        return False
    n = config["n_prompts"]
    select = chosen.cut.select or "validate"
    if select == "validate" and n < 4:  # two folds of two: too few prompts to validate on
        select = "train"
        config["select_note"] = f"{n} discovery prompts: too few for two folds of 2; size chosen on them"
    band = None if chosen.cut.band is None else list(chosen.cut.band)
    config.update(select=select, confidence=chosen.cut.confidence, band=band)
    return select == "validate"


def _fold_problems(pm: PatchableModel, task: Task, metric: Any, kind: Ablation, problem: dict[str, Any]):
    """Prompt indices -> ``(Problem, Metric)`` of those discovery prompts (mean ablation: all prompts' means)."""
    reference = problem.get("reference")
    ref = task if reference is None and kind is Ablation.MEAN else reference
    chunk_size = problem.get("chunk_size")

    def make(idx: torch.Tensor) -> tuple[Problem, Metric]:
        fold_metric = metric.subset(idx) if hasattr(metric, "subset") else metric  # bound to per-prompt data
        subset = task.subset(idx)
        return prepare_problem(pm, subset, metric=fold_metric, ablation=kind, reference=ref, chunk_size=chunk_size)

    return make


def _circuit_of(pm: PatchableModel, run: _Run, mask, scores, stats: dict[str, Any], model_name) -> Circuit:
    """The :class:`Circuit` of a finished run: metric values on the discovery prompts, memory, dtype and device."""
    faith = run.faith
    stats["peak_memory"] = peak_memory(pm.device).to_dict()  # the process's peak so far (nothing is reset)
    stats["dtype"], stats["device"] = str(pm.dtype).removeprefix("torch."), str(pm.device)
    stats["exact_evaluations"] = faith.calls
    value = run.context.value_of
    return Circuit(
        graph=pm.graph,
        mask=mask.any(dim=-1) if mask.dim() == 3 else mask,  # a position mask's projection
        scores=scores.float(),
        metric_full=value(faith.loss_full),
        metric_empty=value(faith.loss_empty),
        metric_circuit=value(faith.loss(mask, "on the circuit found")),
        config=run.config,
        stats=stats,
        model=str(model_name),
        **run.extra,
    )


# --- from the method's result to the circuit ------------------------------------------------------------------
def _circuit_mask(run: _Run, result: MethodResult) -> tuple[torch.Tensor, dict[str, Any]]:
    """The circuit of the method's result: a unit cut, the circuit the method decided, or a cut of its scores."""
    faith = run.faith
    units = run.plan.options.units()
    if units == "node":
        mask, cut = _cut_nodes(run, result, faith)
    elif units == "position":
        mask, cut = _cut_positions(run, result, faith)
    elif result.mask is not None and run.cut.size_rule is None:
        mask, cut = result.mask, {}
        if run.fold_problem is not None:  # its guarantee holds on the discovery prompts; the validation beside it
            cut["validation"] = _decided_validation(run)
    elif run.fold_problem is not None:
        mask, cut = _validated(run, result.scores, faith)
    else:
        mask, cut = _cut(run, result.scores, faith)
        if run.cut.upper is not None and run.cut.target is not None:
            mask, cut = _train_band(run, result.scores, faith, mask, cut)
    return mask, {**result.stats, **cut}


def _decided_validation(run: _Run) -> dict[str, Any]:
    """The method rerun without each fold of the discovery prompts, its circuit checked on that fold (pooled)."""
    n = run.problem.clean_ids.shape[0]
    folds = fold_indices(n)
    values = [PromptValues(*run.fold_problem(idx)) for idx in folds]
    masks = []
    for idx in folds:
        scoring, _ = run.fold_problem(complement(n, idx))
        mask = run.plan.method.run(scoring, run.plan.options, run.fold_context()).mask
        assert mask is not None, "a method that decides returns its circuit"
        masks.append(mask)
    circuit = torch.cat([v(m) for v, m in zip(values, masks, strict=True)])
    full, empty = torch.cat([v.full for v in values]), torch.cat([v.empty for v in values])
    ci = faithfulness_interval(circuit, full, empty)
    return {
        "faithfulness": float((circuit.mean() - empty.mean()) / (full.mean() - empty.mean())),
        "ci": [ci.lo, ci.hi],
        "ci_level": ci.level,
        "n_prompts": int(full.numel()),
        "folds": len(folds),
        "fold_edges": [int(m.sum()) for m in masks],
        "rule": f"the {run.plan.method.name} rerun without each fold, its circuit checked on that fold's prompts",
    }


def _validated(run: _Run, scores: torch.Tensor, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The validated cut: the method rerun without each fold, its ranking checked on that fold's prompts."""
    g, n = run.problem.pm.graph, run.problem.clean_ids.shape[0]
    folds = []
    for j, idx in enumerate(fold_indices(n)):
        run.context.progress.set_description(f"{run.plan.method.name} without fold {j + 1}")
        scoring, _ = run.fold_problem(complement(n, idx))
        other = run.plan.method.run(scoring, run.plan.options, run.fold_context()).scores.double()  # NaN: last
        folds.append(Fold(other, edge_ranking(g, other, absolute=run.absolute), PromptValues(*run.fold_problem(idx))))
    target = run.target
    sel = SelectOptions(target=target, confidence=run.cut.confidence, upper=run.cut.upper)
    desc = f"smallest circuit with validation faithfulness >= {target}"
    on_probe = probe_reporter(run.context.progress, target, desc)
    return validated_cut(
        g, scores, faith, folds, sel, absolute=run.absolute, from_input=run.from_input, on_probe=on_probe
    )


def _train_band(run: _Run, scores, faith: Faithfulness, mask: torch.Tensor, cut: dict) -> tuple[torch.Tensor, dict]:
    """``select="train"`` with a band: negative edges added back until f on the discovery prompts is <= hi."""
    ranked = scores.double()  # NaN (untested) ranks last and is never a negative edge to add back
    probes = cut.setdefault("probes", [])
    lower, upper = run.target, run.cut.upper
    assert upper is not None, "a band"
    grown, m, ok = band_on_train(
        run.problem.pm.graph, ranked, mask, faith, upper, lower=lower, from_input=run.from_input, probes=probes
    )
    f = float(faith(grown)) if m else cut["faithfulness"]
    return grown, {**cut, "m": m, "faithfulness": f, "band": [lower, upper], "in_band": ok and f >= lower}


def _cut(run: _Run, scores: torch.Tensor, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The circuit cut from ``scores`` (dangling edges dropped) and what the cut did; untested (NaN) edges rank
    last (:func:`circuitfind.selection.edge_ranking` owns the rule)."""
    graph, cut, absolute = run.problem.pm.graph, run.cut, run.absolute
    if cut.target is not None:
        desc = f"smallest circuit with faithfulness >= {cut.target}"
        on_probe = probe_reporter(run.context.progress, cut.target, desc)
        found = smallest_faithful(
            graph, scores, faith, cut.target, absolute=absolute, from_input=run.from_input, on_probe=on_probe
        )
        info = {"probes": found.probes, "faithfulness": found.faithfulness, "reached": found.reached, "k": found.k}
        if not found.reached:
            info["note"] = found.message
        return found.mask, info
    if cut.n_edges is not None:
        chosen = top_n(graph, scores, cut.n_edges, absolute=absolute)
    else:
        assert cut.threshold is not None, "a cut has a size rule once planned"
        chosen = above_threshold(graph, scores, cut.threshold, absolute=absolute)
    return prune_dangling(graph, chosen, from_input=run.from_input), {"selected_before_pruning": int(chosen.sum())}


# --- node-level and position-aware circuits (level="node", by_position=True) ---------------------------------
def _unit_probe_reporter(run: _Run, units: str):
    """The progress reporter of a target search over nodes or position-edges (None without a target)."""
    target = run.cut.target
    if target is None:
        return None
    return probe_reporter(run.context.progress, target, f"fewest {units} with faithfulness >= {target}")


def _cut_nodes(run: _Run, result: MethodResult, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The node-level circuit cut from the method's node scores; its nodes go into the circuit."""
    if result.node_scores is None:
        raise ConfigError(f"{run.plan.method.name} returned no node scores at level='node'")
    cut = node_cut(
        run.problem.pm.graph,
        result.node_scores,
        faith,
        threshold=run.cut.threshold,
        n=run.cut.n_nodes,
        target=run.cut.target,
        absolute=run.absolute,
        from_input=run.from_input,
        on_probe=_unit_probe_reporter(run, "nodes"),
    )
    run.extra.update(node_mask=cut.units, node_scores=result.node_scores.float())
    return cut.mask, {**cut.info, "n_nodes": int(cut.units.sum())}


def _cut_positions(run: _Run, result: MethodResult, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The position-aware circuit cut from the method's ``(S, R, T)`` scores: an ``(S, R, T)`` mask."""
    if result.position_scores is None:
        raise ConfigError(f"{run.plan.method.name} returned no position scores with by_position=True")
    cut = position_cut(
        run.problem.pm.graph,
        result.position_scores,
        faith,
        threshold=run.cut.threshold,
        n=run.cut.n_edges,
        target=run.cut.target,
        absolute=run.absolute,
        from_input=run.from_input,
        on_probe=_unit_probe_reporter(run, "position-edges"),
    )
    run.extra.update(
        position_mask=cut.mask, position_scores=result.position_scores.float(), position_labels=run.position_labels
    )
    return cut.mask, {**cut.info, "n_position_edges": int(cut.mask.sum())}


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=1, desc="discover", dynamic_ncols=True)
