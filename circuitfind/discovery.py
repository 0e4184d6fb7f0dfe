"""``discover()``: from a model and a task to a :class:`Circuit`, with progress, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuitfind.algorithms import METHODS, AcdcOptions, AcdcState, MethodKind, SenderOrder
from circuitfind.algorithms.base import NullProgress, ScoreResult, check_steps, probe_reporter
from circuitfind.algorithms.checkpoint import Checkpointer, fingerprint
from circuitfind.algorithms.eap import EapOptions
from circuitfind.algorithms.edge_pruning import EdgePruningOptions
from circuitfind.algorithms.exact import ExactOptions, layer_cost
from circuitfind.algorithms.hybrid import HybridOptions, check_target, run_hybrid
from circuitfind.algorithms.units import check_level, node_cut, position_cut
from circuitfind.circuit import Circuit
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.memory import check_chunk_size, peak_memory
from circuitfind.engine.patchable import PatchableModel, resolve_model
from circuitfind.errors import ConfigError
from circuitfind.metrics import Metric
from circuitfind.problem import Faithfulness, Problem, prepare_problem
from circuitfind.selection.bootstrap import faithfulness_interval
from circuitfind.selection.cuts import above_threshold, edge_ranking, prune_dangling, smallest_faithful, top_n
from circuitfind.selection.validated import (
    Fold,
    PromptValues,
    SelectOptions,
    band_on_train,
    check_band,
    complement,
    fold_indices,
    validated_cut,
)
from circuitfind.tasks import Task, resolve_task
from circuitfind.tasks.templates import template_labels

__all__ = ["discover"]


DEFAULT_TARGET = 0.8  # the faithfulness a scoring method's circuit must reach when no cut is given
SCORING_METHODS = {name for name, m in METHODS.items() if m.kind is MethodKind.SCORES}
SELECT_RULES = ("validate", "train")  # how a target cut chooses its size (circuitfind.selection.validated)


def _config(
    method, tau, n_edges, target, steps, absolute, order, bound, kind, task, batch_size, train
) -> dict[str, Any]:
    """The run's options as recorded in the circuit (and fingerprinted for ACDC's checkpoints)."""
    config = {
        "method": method,
        "threshold": tau,
        "absolute": absolute,
        "sender_order": order.value,
        "metric": bound.name,
        "ablation": kind.value,
        "task": task.name,
        "n_prompts": len(task),
        "batch_size": batch_size,
    }
    if n_edges is not None:
        config["n_edges"] = n_edges
    cut_by_target = METHODS[method].kind is not MethodKind.CIRCUIT and tau is None and n_edges is None
    if target is not None or cut_by_target:
        config["target"] = DEFAULT_TARGET if target is None else float(target)
    if method in {"eap-ig", "eap-ig-mask", "eap-ig-act", "hybrid", "edge-pruning"}:
        config["steps"] = steps
    config.update({k: v for k, v in train.items() if v is not None})
    return config


TRAINING_OPTIONS = {"lr": "lr", "seed": "seed", "warm_start": "warm_start"}  # discover's name -> options field
DEFAULT_STEPS = {"edge-pruning": EdgePruningOptions.steps}  # training steps; integration steps default to 5


def _check_training(method: str, train: dict[str, Any]) -> None:
    """Refuse training options (``lr``, ``seed``, ``warm_start``) for a method that does not train."""
    given = sorted(k for k, v in train.items() if v is not None)
    if given and method != "edge-pruning":
        raise ConfigError(
            f"{', '.join(given)} only apply to the learned-mask method edge-pruning; {method} does not train. "
            "Drop them or pass method='edge-pruning'"
        )


def _check_selection(method: str, threshold: Any, n_edges: Any, target: Any, steps: Any) -> None:
    """Refuse bad or conflicting selection arguments before any model is loaded."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ConfigError(f"threshold must be a number >= 0; got {threshold!r}")
    if threshold is not None and (threshold != threshold or (threshold < 0 and method not in SCORING_METHODS)):
        raise ConfigError(f"threshold must be a number >= 0; got {threshold!r}")
    if n_edges is not None and (isinstance(n_edges, bool) or not isinstance(n_edges, int) or n_edges < 1):
        raise ConfigError(f"n_edges must be an integer >= 1 (the number of edges to keep); got {n_edges!r}")
    if target is not None:
        check_target(target)
    if steps is not None:
        check_steps(steps)
    given = [name for name, v in (("threshold", threshold), ("n_edges", n_edges), ("target", target)) if v is not None]
    if method in SCORING_METHODS and len(given) > 1:
        raise ConfigError(
            f"{method} turns scores into a circuit one way: pass one of threshold, n_edges or target; got "
            f"{' and '.join(given)}"
        )
    if method.startswith("acdc") and n_edges is not None and target is not None:
        raise ConfigError("pass n_edges or target (a circuit chosen from ACDC's effects), not both")
    if method == "hybrid" and n_edges is not None:
        raise ConfigError("the hybrid method finds the smallest circuit that reaches target; n_edges does not apply")


def _check_select(select: Any, confidence: Any, band: Any, target: Any, threshold: Any, n_edges: Any) -> Any:
    """Refuse a bad ``select`` / ``confidence`` / ``band``; returns ``target`` (``band[0]`` when only a band)."""
    if select not in SELECT_RULES:
        raise ConfigError(f"select must be one of {list(SELECT_RULES)}; got {select!r}")
    if confidence is not None and select != "validate":
        raise ConfigError("confidence= is the lower bound of the validated cut; it needs select='validate'")
    checked = check_band(band, target)
    if checked is not None and (threshold is not None or n_edges is not None):
        raise ConfigError("band= bounds a target cut; it does not apply with threshold or n_edges")
    SelectOptions(target=0.5, confidence=confidence)  # raises on a bad confidence
    return checked[0] if checked is not None and target is None else target


def discover(
    model: nn.Module | PatchableModel | str,
    task: Any,
    *,
    method: str = "acdc",
    threshold: float | None = None,
    n_edges: int | None = None,
    target: float | None = None,
    steps: int | None = None,
    metric: Any = "kl",
    ablation: Ablation | str = "resample",
    tokenizer: Any = None,
    absolute: bool = False,
    sender_order: SenderOrder | str = "normal",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    reference: Task | None = None,
    candidates: torch.Tensor | None = None,
    level: str = "edge",
    n_nodes: int | None = None,
    by_position: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    select: str = "validate",
    confidence: float | None = None,
    band: tuple[float, float] | None = None,
    lr: float | None = None,
    seed: int | None = None,
    warm_start: bool | None = None,
) -> Circuit:
    """Find the circuit of ``model`` on ``task``, with any method, as one :class:`Circuit`.

    Methods (see ``circuitfind.algorithms``):

    * ``acdc`` -- ACDC, fast and exact (``acdc-plain``: one full forward per edge, for checking);
    * ``eap``, ``eap-ig``, ``eap-ig-mask``, ``eap-ig-act`` -- attribution scores for every edge from gradients;
    * ``edge-pruning`` -- learned hard-concrete edge masks; ``n_edges`` is its budget (scores: gate logits);
    * ``exact`` -- each edge's exact loss change when it alone is removed (``candidates`` restricts it);
    * ``hybrid`` -- EAP-IG picks faithful candidates, exact ACDC-style tests prune them, the result provably
      reaches ``target`` on the discovery prompts.

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
    before validation). ACDC keeps its threshold (and its
    target cut the train rule); the hybrid keeps its guarantee on the discovery prompts and reports the
    cross-fitted figure beside it. Every probe is in ``circuit.stats["probes"]``; the validation figure, its
    interval and its probes in ``circuit.stats["validation"]``. Fewer than 4 discovery prompts fall back to
    ``"train"`` (``circuit.config["select_note"]`` says so).

    Args:
        model: a transformers causal LM, a :class:`PatchableModel`, or a name for :func:`load_model`.
        task: a :class:`Task`, a built-in task name (``ioi``, ``greater-than``, ``induction``), a JSON path, or
            a dict of strings / tensors (see :func:`circuitfind.tasks.resolve_task`). The train split is used.
        method: one of the methods above.
        threshold: see above; ``math.inf`` with ACDC removes every edge.
        n_edges: keep the top ``n_edges`` edges by score.
        target: faithfulness in (0, 1] the circuit must reach on the discovery prompts.
        steps: integration steps of ``eap-ig``, ``eap-ig-mask``, ``eap-ig-act`` and ``hybrid`` (default 5; 1 step of
            ``eap-ig`` or ``eap-ig-act`` is EAP); training steps of ``edge-pruning`` (default 200).
        metric: ``kl`` (KL of the circuit from the full model at the answer position; default), ``logit_diff``,
            ``prob_diff``, or a callable on logits ``(B, V)`` returning a loss to minimise.
        ablation: ``resample`` (the paired corrupted prompts; default), ``mean`` (over ``reference`` or the
            task's clean prompts), ``zero``.
        tokenizer: needed when the task is given as strings or a name.
        absolute: ACDC and hybrid: remove an edge when |change| < tau; cuts rank by |score|.
        sender_order: ``normal`` or ``reverse`` (ACDC and hybrid).
        batch_size: candidate removals per forward pass (ACDC, exact, hybrid); None: 1 on CPU, 8 on GPUs.
        chunk_size: prompts per forward pass, for every method (None: as many as fit 1 GiB of activations; see
            :mod:`circuitfind.engine.memory` for what is held per pass and what for all prompts). Results do not depend
            on it beyond float rounding. ``circuit.stats["peak_memory"]`` records the peak reached.
        candidates: ``(S, R)`` bool, the edges ``exact`` scores (default all).
        level: ``"edge"`` (default) or ``"node"`` (scoring methods): score and cut heads, MLPs and the input as
            units, removing a node removing all its outgoing edges; the cut is over nodes (``n_nodes`` instead
            of ``n_edges``) and the circuit records ``node_mask`` and ``node_scores`` and holds the induced edges.
        n_nodes: at ``level="node"``, keep the top ``n_nodes`` nodes by score.
        by_position: attribution methods: score every edge at every position of the prompts (which must share
            one template), cut over (sender, receiver, position) edges; see :mod:`circuitfind.algorithms.positions`.
        checkpoint: ACDC: a file to checkpoint to (every 30 s and on interrupt or crash).
        resume: ACDC: continue from ``checkpoint`` if it exists (same model, task and options).
        progress: show a progress bar.
        select: ``"validate"`` (default) or ``"train"``, see above.
        confidence: with ``select="validate"``, choose the size by the bootstrap lower bound of the validation
            faithfulness at this confidence (e.g. 0.9) instead of its point estimate.
        band: ``(lo, hi)``, e.g. ``(0.8, 1.25)``: ``lo`` is the target; when the circuit over-recovers past
            ``hi`` (f > hi, it leaves out edges that work against the behaviour), the most negative excluded edges
            are added back until f <= hi (on the validation prompts, or the discovery prompts with
            ``select="train"``); ``circuit.stats["in_band"]`` says whether it got there.
        lr, seed, warm_start: ``edge-pruning`` only (refused for other methods): Adam's learning rate on the gate
            logits (default 0.1), the seed of the gates' noise (default 0), and whether to start the gates from
            EAP-IG scores (default False). See :mod:`circuitfind.algorithms.edge_pruning`.

    Returns:
        the :class:`Circuit` with per-edge scores, metric values and per-method statistics.

    Example:
        >>> model, tok = circuitfind.load_model()  # doctest: +SKIP
        >>> circuit = circuitfind.discover(model, "ioi", tokenizer=tok, method="eap-ig", target=0.8)  # doctest: +SKIP
        >>> print(circuit.summary())  # doctest: +SKIP
    """
    _check_selection(method, threshold, n_edges, target, steps)
    target = _check_select(select, confidence, band, target, threshold, n_edges)
    _check_units(method, level, n_nodes, n_edges, by_position, threshold, target)
    train = {"lr": lr, "seed": seed, "warm_start": warm_start}
    _check_training(method, train)
    steps = DEFAULT_STEPS.get(method, 5) if steps is None else steps
    check_chunk_size(chunk_size)
    order = _sender_order(sender_order)
    tau = 0.01 if threshold is None and method.startswith("acdc") else threshold
    # validate before any model loads
    AcdcOptions(threshold=tau or 0.0, absolute=absolute, batch_size=1 if batch_size is None else batch_size)
    kind = Ablation.parse(ablation)
    model_name = model if isinstance(model, str) else ""
    pm, tokenizer = resolve_model(model, tokenizer)
    if n_edges is not None and n_edges > pm.graph.n_edges:
        raise ConfigError(f"n_edges must be between 1 and {pm.graph.n_edges:,} (this graph's edges); got {n_edges:,}")
    if batch_size is None:
        batch_size = 1 if pm.device.type == "cpu" else 8
    model_name = model_name or getattr(getattr(pm.module, "config", None), "_name_or_path", "") or pm.spec.family
    task = resolve_task(task, tokenizer).train()
    labels = template_labels(task) if by_position else None  # refuses prompts that do not align

    t0 = time.perf_counter()
    problem, bound = prepare_problem(pm, task, metric=metric, ablation=kind, reference=reference, chunk_size=chunk_size)
    config = _config(method, tau, n_edges, target, steps, absolute, order, bound, kind, task, batch_size, train)
    _unit_config(config, level, n_nodes, by_position, target)
    validated = _select_config(config, method, select, confidence, band, level == "edge" and not by_position)
    run = _Run(
        problem=problem,
        bound=bound,
        config=config,
        threshold=tau,
        n_edges=n_edges,
        target=config.get("target"),
        absolute=absolute,
        from_input=kind is Ablation.RESAMPLE,  # a node with no input edge outputs its ablated value only then
        bar=_progress_bar(progress),
        upper=None if band is None else float(band[1]),
        confidence=confidence if validated else None,
        fold_problem=_fold_problems(pm, task, metric, kind, reference, chunk_size) if validated else None,
        level=level,
        n_nodes=n_nodes,
        by_position=by_position,
        position_labels=labels,
    )
    try:
        mask, scores, stats, faith = _dispatch(
            run, method, threshold, steps, batch_size, absolute, order, candidates, task, metric, checkpoint, resume
        )
    finally:
        if run.bar is not None:
            run.bar.close()
    stats["wall_time_s"] = time.perf_counter() - t0
    return _circuit_of(pm, run, mask, scores, stats, faith, model_name)


def _select_config(config: dict[str, Any], method: str, select: str, confidence, band, edge_cut: bool) -> bool:
    """Record how a target cut chooses its size; returns whether the validated cut runs.

    Node and position cuts keep their own target search; fewer than 4 discovery prompts fall back to the train rule.
    """
    if "target" not in config or METHODS[method].kind is MethodKind.CIRCUIT or not edge_cut:
        return False
    n = config["n_prompts"]
    if select == "validate" and n < 4:  # two folds of two: too few prompts to validate on
        select = "train"
        config["select_note"] = f"{n} discovery prompts: too few for two folds of 2; size chosen on them"
    config.update(select=select, confidence=confidence, band=list(check_band(band, None) or []) or None)
    return select == "validate"


def _fold_problems(pm, task: Task, metric, kind: Ablation, reference: Task | None, chunk_size):
    """Prompt indices -> ``(Problem, Metric)`` of those discovery prompts (mean ablation: all prompts' means)."""
    ref = task if reference is None and kind is Ablation.MEAN else reference

    def make(idx: torch.Tensor) -> tuple[Problem, Metric]:
        return prepare_problem(pm, task.subset(idx), metric=metric, ablation=kind, reference=ref, chunk_size=chunk_size)

    return make


def _sender_order(value: SenderOrder | str) -> SenderOrder:
    try:
        return value if isinstance(value, SenderOrder) else SenderOrder(str(value))
    except ValueError:
        raise ConfigError(f"unknown sender_order {value!r}; expected 'normal' or 'reverse'") from None


def _circuit_of(pm: PatchableModel, run: _Run, mask, scores, stats: dict[str, Any], faith, model_name) -> Circuit:
    """The :class:`Circuit` of a finished run: metric values on the discovery prompts, memory, dtype and device."""
    stats["peak_memory"] = peak_memory(pm.device).to_dict()  # the process's peak so far (nothing is reset)
    stats["dtype"], stats["device"] = str(pm.dtype).removeprefix("torch."), str(pm.device)
    stats["exact_evaluations"] = faith.calls
    bound = run.bound
    return Circuit(
        graph=pm.graph,
        mask=mask.any(dim=-1) if mask.dim() == 3 else mask,  # a position mask's projection
        scores=scores.float(),
        metric_full=_value_of(bound, faith.loss_full),
        metric_empty=_value_of(bound, faith.loss_empty),
        metric_circuit=_value_of(bound, faith.loss(mask, "on the circuit found")),
        config=run.config,
        stats=stats,
        model=str(model_name),
        **run.extra,
    )


def _dispatch(run, method, threshold, steps, batch_size, absolute, order, candidates, task, metric, ckpt, resume):
    """Build the method's options object and run it: ``(mask, scores, stats, Faithfulness)``."""
    kind_of = METHODS[method].kind
    if kind_of is MethodKind.CIRCUIT:
        opts = AcdcOptions(threshold=float(run.threshold), absolute=absolute, sender_order=order, batch_size=batch_size)
        return _discover_acdc(run, method, opts, task, metric, ckpt, resume)
    if method == "edge-pruning":
        given = {TRAINING_OPTIONS[k]: v for k, v in run.config.items() if k in TRAINING_OPTIONS}
        budget = run.n_nodes if run.level == "node" else run.n_edges  # at node level the budget counts nodes
        opts = EdgePruningOptions(n_edges=budget, steps=steps, **given)
        return _discover_scores(run, method, _unit_options(opts, run))
    if kind_of is MethodKind.HYBRID:
        opts = HybridOptions(
            target=run.target,
            threshold=threshold,
            steps=steps,
            batch_size=batch_size,
            absolute=absolute,
            sender_order=order,
            from_input=run.from_input,
        )
        return _discover_hybrid(run, opts)
    opts = ExactOptions(batch_size, candidates) if method == "exact" else EapOptions(steps=steps)
    return _discover_scores(run, method, _unit_options(opts, run))


@dataclass(frozen=True)
class _Run:
    """What every method's branch of :func:`discover` shares."""

    problem: Problem
    bound: Metric
    config: dict[str, Any]
    threshold: float | None
    n_edges: int | None
    target: float | None
    absolute: bool
    from_input: bool
    bar: Any
    upper: float | None = None  # the band's upper end
    confidence: float | None = None
    fold_problem: Any = None  # prompt indices -> (Problem, Metric) of those prompts; set: the validated cut
    level: str = "edge"
    n_nodes: int | None = None
    by_position: bool = False
    position_labels: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)  # Circuit fields of node / position circuits, set by their cut

    def cut(self, scores: torch.Tensor, faith: Faithfulness, threshold: float | None) -> tuple[torch.Tensor, dict]:
        return _cut(  # untested (NaN) edges rank last: circuitfind.selection.edge_ranking owns the rule
            self.problem.pm.graph,
            scores,
            faith,
            threshold=threshold,
            n_edges=self.n_edges,
            target=self.target,
            absolute=self.absolute,
            from_input=self.from_input,
            bar=self.bar,
        )


def _discover_acdc(run: _Run, method, opts, task, metric, checkpoint, resume):
    pm = run.problem.pm
    state = _run_acdc(method, run.problem, run.bound, opts, run.config, task, pm, metric, checkpoint, resume, run.bar)
    faith = Faithfulness(run.problem)
    mask, stats = state.mask, _acdc_stats(state, run.bound)
    if run.n_edges is not None or run.target is not None:  # a circuit cut from ACDC's effects instead
        mask, cut = run.cut(state.effects, faith, None)
        stats.update(cut)
    return mask, state.effects, stats, faith


def _discover_hybrid(run: _Run, opts: HybridOptions):
    faith = Faithfulness(run.problem)
    result = run_hybrid(run.problem, opts, faith, run.bar)
    stats = {**result.stats, "probes": result.probes, "faithfulness": result.faithfulness, "reached": result.reached}
    if run.fold_problem is not None:  # the guarantee holds on the discovery prompts; the validation figure beside it
        stats["validation"] = _hybrid_validation(run, opts)
    return result.mask, result.scores, stats, faith


def _hybrid_validation(run: _Run, opts: HybridOptions) -> dict[str, Any]:
    """The hybrid rerun without each fold of the discovery prompts, its circuit checked on that fold (pooled)."""
    n = run.problem.clean_ids.shape[0]
    folds = fold_indices(n)
    values = [PromptValues(*run.fold_problem(idx)) for idx in folds]
    masks = []
    for idx in folds:
        scoring, _ = run.fold_problem(complement(n, idx))
        masks.append(run_hybrid(scoring, opts, Faithfulness(scoring), run.bar).mask)
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
        "rule": "the hybrid rerun without each fold, its circuit checked on that fold's prompts",
    }


def _discover_scores(run: _Run, method: str, opts):
    result: ScoreResult = METHODS[method].run(run.problem, opts, run.bar)
    faith = Faithfulness(run.problem)
    if run.level == "node":
        mask, cut = _cut_nodes(run, method, result, faith)
    elif run.by_position:
        mask, cut = _cut_positions(run, method, result, faith)
    elif run.fold_problem is not None:
        mask, cut = _validated(run, method, opts, result.scores, faith)
    else:
        mask, cut = run.cut(result.scores, faith, run.threshold)
        if run.upper is not None and run.target is not None:
            mask, cut = _train_band(run, result.scores, faith, mask, cut)
    return mask, result.scores, {**result.stats, **cut}, faith


def _validated(run: _Run, method: str, opts, scores: torch.Tensor, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The validated cut: the method rerun without each fold, its ranking checked on that fold's prompts."""
    g, n = run.problem.pm.graph, run.problem.clean_ids.shape[0]
    folds = []
    for j, idx in enumerate(fold_indices(n)):
        if run.bar is not None:
            run.bar.set_description(f"{method} without fold {j + 1}")
        scoring, _ = run.fold_problem(complement(n, idx))
        other = METHODS[method].run(scoring, opts, run.bar).scores.double()  # NaN: untested, ranked last
        folds.append(Fold(other, edge_ranking(g, other, absolute=run.absolute), PromptValues(*run.fold_problem(idx))))
    sel = SelectOptions(target=run.target, confidence=run.confidence, upper=run.upper)
    desc = f"smallest circuit with validation faithfulness >= {run.target}"
    on_probe = probe_reporter(run.bar or NullProgress(), run.target, desc)
    return validated_cut(
        g, scores, faith, folds, sel, absolute=run.absolute, from_input=run.from_input, on_probe=on_probe
    )


def _train_band(run: _Run, scores, faith: Faithfulness, mask: torch.Tensor, cut: dict) -> tuple[torch.Tensor, dict]:
    """``select="train"`` with a band: negative edges added back until f on the discovery prompts is <= hi."""
    ranked = scores.double()  # NaN (untested) ranks last and is never a negative edge to add back
    probes = cut.setdefault("probes", [])
    grown, m, ok = band_on_train(
        run.problem.pm.graph,
        ranked,
        mask,
        faith,
        run.upper,
        lower=run.target,
        from_input=run.from_input,
        probes=probes,
    )
    f = float(faith(grown)) if m else cut["faithfulness"]
    return grown, {**cut, "m": m, "faithfulness": f, "band": [run.target, run.upper], "in_band": ok and f >= run.target}


# --- node-level and position-aware circuits (level="node", by_position=True) ---------------------------------
def _check_units(method, level, n_nodes, n_edges, by_position, threshold, target) -> None:
    """Refuse a bad ``level`` / ``n_nodes`` / ``by_position`` before any model is loaded."""
    check_level(level)
    if not isinstance(by_position, bool):
        raise ConfigError(f"by_position must be True or False; got {by_position!r}")
    if (level == "node" or by_position) and method not in SCORING_METHODS:
        what = "level='node'" if level == "node" else "by_position=True"
        raise ConfigError(f"{what} needs a scoring method ({', '.join(sorted(SCORING_METHODS))}); got {method!r}")
    if level == "node" and by_position:
        raise ConfigError("level='node' and by_position=True do not combine: choose nodes or position-edges")
    if n_nodes is not None:
        if level != "node":
            raise ConfigError("n_nodes cuts a node-level circuit: pass level='node' with it (or n_edges for edges)")
        if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 1:
            raise ConfigError(f"n_nodes must be an integer >= 1 (the number of nodes to keep); got {n_nodes!r}")
        if threshold is not None or target is not None:
            raise ConfigError("pass one of threshold, n_nodes or target; got more than one")
    if level == "node" and n_edges is not None:
        raise ConfigError("at level='node' the cut counts nodes: pass n_nodes (or threshold / target), not n_edges")


def _unit_config(config: dict[str, Any], level: str, n_nodes: int | None, by_position: bool, target) -> None:
    """Record the unit options in the run's config (a top-``n_nodes`` cut is not a target cut)."""
    if level != "edge":
        config["level"] = level
    if n_nodes is not None:
        config["n_nodes"] = n_nodes
        if target is None:
            config.pop("target", None)
    if by_position:
        config["by_position"] = True


def _unit_options(opts, run: _Run):
    """The method's options with ``level`` / ``by_position`` set; a method without them refuses clearly."""
    changes = {"level": run.level} if run.level != "edge" else {}
    if run.by_position:
        changes["by_position"] = True
    missing = [k for k in changes if k not in {f.name for f in dataclasses.fields(opts)}]
    if missing:
        raise ConfigError(f"{run.config['method']} does not support {missing[0]}={changes[missing[0]]!r}")
    return dataclasses.replace(opts, **changes) if changes else opts


def _unit_probe_reporter(run: _Run, units: str):
    """The progress reporter of a target search over nodes or position-edges (None without a target)."""
    if run.target is None:
        return None
    return probe_reporter(run.bar or NullProgress(), run.target, f"fewest {units} with faithfulness >= {run.target}")


def _cut_nodes(run: _Run, method: str, result: ScoreResult, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The node-level circuit cut from the method's node scores; its nodes go into the circuit."""
    if result.node_scores is None:
        raise ConfigError(f"{method} returned no node scores at level='node'")
    on_probe = _unit_probe_reporter(run, "nodes")
    cut = node_cut(
        run.problem.pm.graph,
        result.node_scores,
        faith,
        threshold=run.threshold,
        n=run.n_nodes,
        target=run.target,
        absolute=run.absolute,
        from_input=run.from_input,
        on_probe=on_probe,
    )
    run.extra.update(node_mask=cut.units, node_scores=result.node_scores.float())
    return cut.mask, {**cut.info, "n_nodes": int(cut.units.sum())}


def _cut_positions(run: _Run, method: str, result: ScoreResult, faith: Faithfulness) -> tuple[torch.Tensor, dict]:
    """The position-aware circuit cut from the method's ``(S, R, T)`` scores: an ``(S, R, T)`` mask."""
    if result.position_scores is None:
        raise ConfigError(f"{method} returned no position scores with by_position=True")
    on_probe = _unit_probe_reporter(run, "position-edges")
    cut = position_cut(
        run.problem.pm.graph,
        result.position_scores,
        faith,
        threshold=run.threshold,
        n=run.n_edges,
        target=run.target,
        absolute=run.absolute,
        from_input=run.from_input,
        on_probe=on_probe,
    )
    run.extra.update(
        position_mask=cut.mask, position_scores=result.position_scores.float(), position_labels=run.position_labels
    )
    return cut.mask, {**cut.info, "n_position_edges": int(cut.mask.sum())}


def _cut(graph, scores, faith, *, threshold, n_edges, target, absolute, from_input, bar) -> tuple[torch.Tensor, dict]:
    """The circuit cut from ``scores`` (dangling edges dropped) and what the cut did."""
    if target is not None:
        on_probe = probe_reporter(bar or NullProgress(), target, f"smallest circuit with faithfulness >= {target}")
        found = smallest_faithful(
            graph, scores, faith, target, absolute=absolute, from_input=from_input, on_probe=on_probe
        )
        info = {"probes": found.probes, "faithfulness": found.faithfulness, "reached": found.reached, "k": found.k}
        if not found.reached:
            info["note"] = found.message
        return found.mask, info
    if n_edges is not None:
        chosen = top_n(graph, scores, n_edges, absolute=absolute)
    else:
        chosen = above_threshold(graph, scores, threshold, absolute=absolute)
    return prune_dangling(graph, chosen, from_input=from_input), {"selected_before_pruning": int(chosen.sum())}


def _run_acdc(method, problem, bound, opts, config, task, pm, metric, checkpoint, resume, bar) -> AcdcState:
    run_id = fingerprint(config, task, problem, pm, metric=metric)
    ckpt = Checkpointer(Path(checkpoint) if checkpoint else None, run_id, (pm.graph.n_senders, pm.graph.n_receivers))
    state = ckpt.load() if resume else None
    work = _AcdcWork(pm.graph, state)
    if bar is not None:
        bar.set_description("ACDC")
        bar.reset(total=work.remaining(state))

    def on_boundary(st: AcdcState, done: int, total: int) -> None:
        ckpt.update(st)
        if bar is not None:
            # progress counts tests weighted by their cost; the total is re-estimated from the edges still alive,
            # so the ETA follows the work actually left (dead nodes' receivers are skipped without tests)
            bar.n = work.advance(st)
            bar.total = bar.n + work.remaining(st)
            # the metric of the current subgraph: watching it drift from the full model's is the first sign
            # that the threshold is too coarse for a faithful circuit
            value = _value_of(bound, st.current)
            bar.set_postfix(kept=int(st.mask.sum()), tested=st.edges_tested, metric=f"{value:.4g}", refresh=False)
            bar.refresh()

    try:
        state = METHODS[method].run(problem, opts, state=state, on_boundary=on_boundary)
    except BaseException:
        ckpt.write()  # Ctrl-C or a crash: keep everything up to the last finished receiver
        raise
    ckpt.last = state
    ckpt.write()
    return state


class _AcdcWork:
    """ACDC's work in test-cost units (:func:`layer_cost` per tested edge): what is done, and an estimate of what
    is left from the edges still alive (a receiver whose node has no outgoing edge left is skipped untested)."""

    def __init__(self, graph, state: AcdcState | None) -> None:
        self.g = graph
        R = graph.n_receivers
        self.cost = torch.tensor([layer_cost(graph.n_layers, graph.receiver_layer(r)) for r in range(R)])
        self.owner = torch.tensor([_owner(graph, r) for r in range(R)])
        self.tested = 0 if state is None else state.edges_tested
        self.work = 0.0

    def advance(self, state: AcdcState) -> float:
        """Add the tests made at the receiver just finished; returns the work done so far."""
        r = self.g.n_receivers - state.next_receiver  # receivers are visited from the last index down
        self.work += (state.edges_tested - self.tested) * float(self.cost[r])
        self.tested = state.edges_tested
        return self.work

    def remaining(self, state: AcdcState | None) -> float:
        mask = self.g.full_mask() if state is None else state.mask
        left = self.g.n_receivers - (0 if state is None else state.next_receiver)  # receivers 0..left-1 to visit
        owned = self.owner >= 0
        alive = torch.ones(self.g.n_receivers, dtype=torch.bool)
        alive[owned] = mask[self.owner[owned]].any(dim=1)
        tests = mask[:, :left].sum(0) * alive[:left]
        return float((tests * self.cost[:left]).sum())


def _owner(graph, r: int) -> int:
    rec = graph.receivers[r]
    if rec.node.layer >= graph.n_layers:
        return -1
    return graph.mlp_sender(rec.node.layer) if rec.channel is None else graph.head_sender(rec.node.layer, rec.node.head)


def _acdc_stats(state: AcdcState, bound: Metric) -> dict[str, Any]:
    return {
        "acdc_time_s": state.elapsed_s,
        "forward_passes": state.forward_passes,
        "edges_tested": state.edges_tested,
        "candidates_evaluated": state.candidates_evaluated,
        "edges_per_s": state.edges_tested / max(state.elapsed_s, 1e-9),
        # per finished layer of receivers (logits first): the metric of the subgraph so far
        "trace": [
            {"metric": _value_of(bound, e["loss"]), **{k: v for k, v in e.items() if k != "loss"}} for e in state.trace
        ],
    }


def _value_of(metric: Metric, loss: float) -> float:
    """The metric's value from ACDC's loss (task metrics are minimised negated)."""
    return -loss if metric.higher_is_better else loss


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=1, desc="discover", dynamic_ncols=True)
