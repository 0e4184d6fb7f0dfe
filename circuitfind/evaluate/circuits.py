"""Evaluating circuits with the model: faithfulness, random baselines, ROC sweeps against a ground truth, CPR/CMD.

* :func:`faithfulness` / :func:`faithfulness_many`: on the task's held-out prompts, the metric of the full
  model ``m(N)``, of the empty circuit ``m(empty)`` (every edge ablated) and of the circuit ``m(C)``, the
  faithfulness ``f = (m(C) - m(empty)) / (m(N) - m(empty))`` (REFERENCE §6) and ``KL(full || circuit)`` at the
  answer position. Many circuits are stacked into ``(K, S, R)`` masks and evaluated K at a time.
* :func:`random_circuits` / :func:`random_baseline`: uniform random edge sets of a given size, and the
  faithfulness they reach (what a discovered circuit of that size should beat).
* :func:`threshold_sweep` / :func:`roc_sweep`: ACDC at several thresholds (through :func:`circuitfind.discover`),
  then ROC points and AUC against a ground truth, as the ACDC paper draws them.
* :func:`cpr_cmd_of_scores`: the MIB size sweep of a score map: top-k% circuits -> faithfulness -> CPR/CMD.

The model-free math (:func:`roc_points`, :func:`auc`, :func:`roc_from_circuits`, :func:`top_k_masks`,
:func:`cpr_cmd`) lives in :mod:`circuitfind.evaluate.scores` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from circuitfind.circuit import Circuit
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.memory import PASS_BUDGET_BYTES
from circuitfind.engine.patchable import PatchableModel, resolve_model
from circuitfind.errors import ShapeError, TaskError, check_int
from circuitfind.evaluate.scores import MIB_FRACTIONS, auc, cpr_cmd, roc_from_circuits, roc_points, top_k_masks
from circuitfind.graph import Graph, is_position_mask
from circuitfind.metrics import check_gap, metric_site
from circuitfind.problem import Faithfulness, prepare_problem
from circuitfind.selection.bootstrap import cpr_cmd_interval, faithfulness_intervals
from circuitfind.selection.validated import negative_excluded
from circuitfind.tasks import Task, resolve_task

__all__ = [
    "MIB_FRACTIONS",
    "auc",
    "cpr_cmd",
    "cpr_cmd_of_scores",
    "excluded_negative",
    "faithfulness",
    "faithfulness_many",
    "random_baseline",
    "random_circuits",
    "roc_from_circuits",
    "roc_points",
    "top_k_masks",
]

DEFAULT_MEMORY_BUDGET = PASS_BUDGET_BYTES
"""Bytes of activations one stacked forward may hold (sets how many masks and prompts one pass takes)."""


# --- shared plumbing ---------------------------------------------------------------------------------------
def _eval_split(task: Task) -> tuple[Task, str, str | None]:
    """The held-out split when the task has one, else every prompt (with a note saying so)."""
    try:
        return task.held_out(), "held_out", None
    except TaskError:
        note = f"task {task.name!r} has no held-out split; evaluated on all {len(task)} prompts"
        return task, "all", note


def _default_metric(task: Task, metric: Any) -> Any:
    """The task's own metric, or KL when the task has no answer ids to score it."""
    if metric is not None:
        return metric
    return task.metric if task.has_answers else "kl"


def _mask_of(graph: Graph, circuit_or_mask: Circuit | Tensor) -> Tensor:
    mask = circuit_or_mask.mask if isinstance(circuit_or_mask, Circuit) else circuit_or_mask
    if isinstance(circuit_or_mask, Circuit) and circuit_or_mask.position_mask is not None:
        return circuit_or_mask.position_mask  # (S, R, T): a position-aware circuit is evaluated as such
    if is_position_mask(graph, mask) and mask.dim() == 3:
        return mask
    if not isinstance(mask, Tensor):
        raise ShapeError(f"expected a Circuit or an (S, R) mask tensor; got {type(circuit_or_mask).__name__}")
    graph.check_mask(mask)
    if mask.dim() != 2:
        raise ShapeError(f"expected one (S, R) mask per circuit; got shape {tuple(mask.shape)}")
    return mask


class _Evaluator:
    """Rows of faithfulness of many circuits on one prompt set: the task's evaluation split prepared once
    (:func:`circuitfind.problem.prepare_problem`) and measured by the one exact evaluator
    (:class:`circuitfind.problem.Faithfulness`, K masks per pass, the full and empty circuits in the first).
    """

    def __init__(
        self,
        pm: PatchableModel,
        task: Task,
        metric: Any,
        ablation: Ablation | str,
        *,
        reference: Task | None,
        batch_masks: int | None,
        memory_budget: int,
        chunk_size: int | None = None,
        interval: dict[str, Any] | None = None,
    ) -> None:
        self.pm = pm
        self.task, self.split, self.note = _eval_split(task)
        self.problem, self.metric = prepare_problem(
            pm,
            self.task,
            metric=_default_metric(self.task, metric),
            ablation=ablation,
            reference=reference,
            chunk_size=chunk_size,
            budget=memory_budget,
        )
        self.faith = Faithfulness(self.problem, detail=True, masks_per_pass=batch_masks)
        self.kind = self.problem.ablated.kind
        self.interval = interval
        self.m_full = self.m_empty = math.nan

    def _metric_of(self, loss: Any) -> Any:
        """Metric values from losses (the loss is the metric negated when higher is better, KL as is)."""
        return -loss if self.metric.higher_is_better else loss

    def run(self, masks: Sequence[Tensor]) -> list[dict[str, Any]]:
        values = self.faith.evaluate(masks)
        ref = self.faith.reference
        assert ref is not None and ref.per_prompt is not None and values.per_prompt is not None
        self.m_full, self.m_empty = (float(v) for v in self._metric_of(ref.loss))
        with metric_site(f"on the {self.problem.n_prompts} prompts evaluated ({self.split.replace('_', '-')} split)"):
            check_gap(self.m_full, self.m_empty, self.pm.dtype, name=self.metric.name)  # every ratio divides by it
        self.per_full, self.per_empty = ref.per_prompt[0], ref.per_prompt[1]
        assert values.kl is not None
        rows = [self._row(m, float(loss), float(kl)) for m, loss, kl in zip(masks, values.loss, values.kl, strict=True)]
        if rows:
            _add_intervals(rows, values.per_prompt, self.per_full, self.per_empty, self.interval)
        return rows

    def _row(self, mask: Tensor, loss: float, kl: float) -> dict[str, Any]:
        g = self.pm.graph
        kept = mask.detach().cpu() != 0
        n_edges = int((kept.any(dim=-1) if kept.dim() == 3 else kept)[g.edge_mask].sum())  # position: projected
        f = self.faith.of_loss(loss)  # run() checked the gap (check_gap)
        row = {
            "faithfulness": f,
            "deviation": abs(1 - f),  # two-sided: |1 - f|, MIB's CMD integrand
            "over_recovery": f > 1,  # the circuit leaves out components that work against the behaviour
            "metric": self.metric.name,
            "metric_full": self.m_full,
            "metric_empty": self.m_empty,
            "metric_circuit": float(self._metric_of(loss)),
            "kl_full_circuit": kl,
            "n_edges": n_edges,
            "fraction": n_edges / g.n_edges,
            "ablation": self.kind.value,
            "split": self.split,
            "n_prompts": self.problem.n_prompts,
        }
        if self.note:
            row["note"] = self.note
        return row


def _add_intervals(rows: list[dict], values: Tensor, full: Tensor, empty: Tensor, interval: dict | None) -> None:
    """Each row's per-prompt metric values and the bootstrap interval of its faithfulness (shared resamples)."""
    opts = {"n_boot": 1000, "level": 0.95, "seed": 0, **(interval or {})}
    cis = faithfulness_intervals(values, full, empty, **opts)
    for row, v, ci in zip(rows, values, cis, strict=True):
        row["ci"] = ci.to_dict()
        row["per_prompt"] = {"circuit": v.tolist(), "full": full.tolist(), "empty": empty.tolist()}


def excluded_negative(circuit: Circuit, n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` edges with the most negative scores that ``circuit`` leaves out (best candidates for why f > 1).

    A negative score means removing the edge alone *raises* the metric: the edge works against the behaviour, so a
    circuit without it can recover more than the full model (f > 1).

    Args:
        circuit: a circuit with per-edge scores (NaN scores are skipped).
        n: how many to list.

    Returns:
        ``[{"edge": name, "score": float}, ...]``, most negative first; only edges with a score below 0.

    Example:
        >>> [e["score"] < 0 for e in excluded_negative(circuit, n=2)]
        [True, True]
    """
    g = circuit.graph
    s = circuit.scores.detach().cpu().double()  # (S, R)
    order = negative_excluded(g, circuit.mask, s)[:n]  # most negative first
    R = g.n_receivers
    return [{"edge": g.edge(int(i) // R, int(i) % R).name, "score": float(s.flatten()[i])} for i in order]


# --- faithfulness ------------------------------------------------------------------------------------------
def faithfulness_many(
    model_or_pm: nn.Module | PatchableModel | str,
    masks: Sequence[Circuit | Tensor],
    task: Any,
    *,
    metric: Any = None,
    ablation: Ablation | str = "resample",
    reference: Task | None = None,
    tokenizer: Any = None,
    batch_masks: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    chunk_size: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Faithfulness of many circuits on the task's held-out prompts, ``batch_masks`` circuits per forward pass.

    Args:
        model_or_pm: a :class:`PatchableModel`, a transformers model, or a name for :func:`load_model`.
        masks: circuits or ``(S, R)`` masks (bool; floats interpolate).
        task: a :class:`Task` or anything :func:`circuitfind.tasks.resolve_task` accepts (names and strings
            need ``tokenizer``). Its held-out split is used; without one, every prompt (the result says so).
        metric: ``kl``, ``logit_diff``, ``prob_diff`` or a callable on logits ``(B, V)``. Default: the task's
            metric, or KL when the task has no answer ids.
        ablation: what removed edges carry (``resample``, ``mean``, ``zero``).
        reference: mean ablation's reference batch (default: the evaluated prompts), as in :func:`discover`:
            pass the same one to evaluate a circuit under the ablation it was found with.
        tokenizer: for tasks given by name or as strings.
        batch_masks: masks per forward pass; default: as many as fit in ``memory_budget`` bytes.
        memory_budget: activation bytes a pass may hold (sets the masks per pass when ``batch_masks`` is None, and
            the prompts per pass when ``chunk_size`` is None: :meth:`circuitfind.problem.Problem.masks_per_pass`).
        chunk_size: prompts per forward pass (None: as many as fit in ``memory_budget``); the values do not depend
            on it beyond float rounding.
        n_boot, level, seed: the bootstrap interval of each faithfulness (prompts resampled jointly from the
            stored per-prompt values, :func:`circuitfind.validation.faithfulness_intervals`).

    Returns:
        one dict per circuit: ``faithfulness`` (f), ``deviation`` (|1 - f|), ``over_recovery`` (f > 1),
        ``ci`` (the interval as a dict: ``lo``, ``hi``, ``level``, ``n_boot``, ``seed``), ``per_prompt``
        (``circuit``, ``full``, ``empty``: the metric on each prompt), ``metric_full`` (m(N)), ``metric_empty``
        (m(empty)), ``metric_circuit`` (m(C)), ``kl_full_circuit``, ``n_edges``, ``fraction``, ``metric``,
        ``ablation``, ``split`` (``held_out`` or ``all``), ``n_prompts`` and, when something needs saying,
        ``note``.

    Example:
        >>> rows = faithfulness_many(pm, [pm.graph.full_mask(), torch.zeros_like(pm.graph.edge_mask)], task)
        >>> rows[0]["faithfulness"], abs(rows[1]["faithfulness"])  # every edge kept, none kept
        (1.0, 0.0)
    """
    pm, tokenizer = resolve_model(model_or_pm, tokenizer)
    task = resolve_task(task, tokenizer)
    mask_list = [_mask_of(pm.graph, m) for m in masks]
    ev = _Evaluator(
        pm,
        task,
        metric,
        ablation,
        reference=reference,
        batch_masks=batch_masks,
        memory_budget=memory_budget,
        chunk_size=chunk_size,
        interval={"n_boot": n_boot, "level": level, "seed": seed},
    )
    return ev.run(mask_list)


def faithfulness(
    model_or_pm: nn.Module | PatchableModel | str,
    circuit_or_mask: Circuit | Tensor,
    task: Any,
    *,
    metric: Any = None,
    ablation: Ablation | str = "resample",
    reference: Task | None = None,
    tokenizer: Any = None,
    chunk_size: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Faithfulness ``f = (m(C) - m(empty)) / (m(N) - m(empty))`` of one circuit on the held-out prompts.

    The full model, the empty circuit and the circuit are evaluated in one stacked forward pass.

    Args:
        model_or_pm: a :class:`PatchableModel`, a transformers model, or a name for :func:`load_model`.
        circuit_or_mask: a :class:`Circuit` or an ``(S, R)`` mask.
        task: the task (its held-out split is used; without one, all prompts and a ``note`` says so).
        metric: default the task's metric (KL when the task has no answers); see :func:`faithfulness_many`.
        ablation: ``resample`` (default), ``mean`` or ``zero``.
        reference: mean ablation's reference batch (default: the evaluated prompts).
        tokenizer: for tasks given by name or as strings.
        chunk_size: prompts per forward pass (None: as many as fit in one pass's memory budget).
        n_boot, level, seed: the bootstrap interval over prompts (95%, 1000 resamples, seed 0 by default).

    Returns:
        a dict with ``faithfulness``, its interval ``ci`` and the ``per_prompt`` values it resamples, the
        two-sided figures ``deviation`` (|1 - f|) and ``over_recovery`` (f > 1), ``metric_full``,
        ``metric_empty``, ``metric_circuit``, ``kl_full_circuit`` (KL(full || circuit) at the answer positions),
        sizes and the split used; for a :class:`Circuit` with scores also ``excluded_negative``, the edges with
        the most negative scores it leaves out (:func:`excluded_negative`).

    Example:
        >>> faithfulness(model, circuit, task)["n_edges"] == circuit.n_edges
        True
        >>> faithfulness(model, pm.graph.full_mask(), task)["faithfulness"]
        1.0
        >>> res = faithfulness(model, circuit, task)
        >>> res["ci"]["lo"] <= res["faithfulness"] <= res["ci"]["hi"], len(res["per_prompt"]["circuit"])
        (True, 3)
    """
    row = faithfulness_many(
        model_or_pm,
        [circuit_or_mask],
        task,
        metric=metric,
        ablation=ablation,
        reference=reference,
        tokenizer=tokenizer,
        chunk_size=chunk_size,
        n_boot=n_boot,
        level=level,
        seed=seed,
    )[0]
    if isinstance(circuit_or_mask, Circuit):
        row["excluded_negative"] = excluded_negative(circuit_or_mask)
    return row


# --- random baselines --------------------------------------------------------------------------------------
def random_circuits(graph: Graph, n_edges: int, n: int, seed: int = 0) -> list[Tensor]:
    """``n`` circuits of ``n_edges`` edges each, drawn uniformly from the graph's edges.

    Reproducible: the same seed gives the same circuits (a private ``torch.Generator``; the global RNG is
    untouched).

    Args:
        graph: the model's graph.
        n_edges: edges per circuit, ``0 <= n_edges <= graph.n_edges``.
        n: number of circuits, ``>= 1``.
        seed: the seed of the draw.

    Returns:
        ``n`` bool masks ``(S, R)``.

    Example:
        >>> ms = random_circuits(Graph(2, 2), n_edges=5, n=3, seed=0)
        >>> [int(m.sum()) for m in ms]
        [5, 5, 5]
    """
    check_int(n_edges, "n_edges", minimum=0, maximum=graph.n_edges, what="edges kept, out of the graph's")
    check_int(n, "n", what="number of random circuits")
    gen = torch.Generator().manual_seed(int(seed))
    edges = graph.edge_mask.flatten().nonzero().squeeze(1)  # (E,) flat indices of existing edges
    out = []
    for _ in range(n):
        pick = edges[torch.randperm(edges.numel(), generator=gen)[:n_edges]]
        flat = torch.zeros(graph.edge_mask.numel(), dtype=torch.bool)
        flat[pick] = True
        out.append(flat.view_as(graph.edge_mask))
    return out


def random_baseline(
    pm: nn.Module | PatchableModel | str,
    n_edges: int,
    task: Any,
    n: int = 20,
    seed: int = 0,
    *,
    metric: Any = None,
    ablation: Ablation | str = "resample",
    reference: Task | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Mean and standard deviation of the faithfulness of ``n`` random circuits of ``n_edges`` edges.

    Args:
        pm: the model (see :func:`faithfulness_many`).
        n_edges: size of each random circuit.
        task, metric, ablation, reference, tokenizer: as in :func:`faithfulness_many`.
        n: number of random circuits.
        seed: seed of :func:`random_circuits`.

    Returns:
        ``{"mean", "std", "min", "max", "values", "n", "n_edges", "fraction", "metric", "split", ...}``
        (``std`` is the sample standard deviation; 0 for one circuit).

    Example:
        >>> base = random_baseline(pm, circuit.n_edges, task, n=3)
        >>> base["n"], len(base["values"]), base["n_edges"] == circuit.n_edges
        (3, 3, True)
    """
    pm, tokenizer = resolve_model(pm, tokenizer)
    masks = random_circuits(pm.graph, n_edges, n, seed)
    rows = faithfulness_many(
        pm, masks, task, metric=metric, ablation=ablation, reference=reference, tokenizer=tokenizer
    )
    values = torch.tensor([r["faithfulness"] for r in rows], dtype=torch.float64)
    first = rows[0]
    return {
        "mean": float(values.mean()),
        "std": float(values.std()) if n > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "values": values.tolist(),
        "n": n,
        "n_edges": n_edges,
        "fraction": first["fraction"],
        "seed": seed,
        **{k: first[k] for k in ("metric", "metric_full", "metric_empty", "ablation", "split", "n_prompts")},
    }


# --- CPR / CMD ---------------------------------------------------------------------------------------------
def cpr_cmd_of_scores(
    pm: nn.Module | PatchableModel | str,
    scores: Tensor,
    task: Any,
    *,
    fractions: Sequence[float] = MIB_FRACTIONS,
    metric: Any = None,
    ablation: Ablation | str = "resample",
    reference: Task | None = None,
    tokenizer: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """CPR and CMD of an edge-score map: top-k% circuits, their held-out faithfulness, the areas (MIB).

    CPR ranks edges by signed score, CMD by absolute score (REFERENCE §6). NaN scores (edges ACDC never
    tested) rank last in both.

    Args:
        pm: the model (see :func:`faithfulness_many`).
        scores: ``(S, R)`` edge scores (higher = more important), e.g. ``circuit.scores``.
        task, metric, ablation, reference, tokenizer: as in :func:`faithfulness_many`.
        fractions: circuit sizes as fractions of the edges, increasing (default :data:`MIB_FRACTIONS`).
        n_boot, level, seed: the bootstrap intervals of CPR and CMD (every circuit of the curve recomputed on the
            same resampled prompts, :func:`circuitfind.validation.cpr_cmd_interval`).

    Returns:
        ``{"cpr", "cmd", "cpr_ci", "cmd_ci", "fractions", "faithfulness_signed", "faithfulness_abs", "metric",
        "split", ...}`` (the intervals as dicts with ``lo``, ``hi``, ``level``, ``n_boot``, ``seed``).

    Example:
        >>> res = cpr_cmd_of_scores(pm, circuit.scores, task)
        >>> res["faithfulness_signed"][-1], len(res["fractions"])  # the last fraction keeps every edge
        (1.0, 10)
        >>> res["cpr_ci"]["lo"] <= res["cpr"] <= res["cpr_ci"]["hi"]
        True
    """
    pm, tokenizer = resolve_model(pm, tokenizer)
    pm.graph.check_mask(scores)
    if scores.dim() != 2:
        raise ShapeError(f"scores must be one (S, R) map; got shape {tuple(scores.shape)}")
    s = scores.detach().cpu().double()
    signed = top_k_masks(s, pm.graph.edge_mask, fractions)  # untested (NaN) edges last: edge_ranking's rule
    absolute = top_k_masks(s, pm.graph.edge_mask, fractions, absolute=True)
    rows = faithfulness_many(
        pm, signed + absolute, task, metric=metric, ablation=ablation, reference=reference, tokenizer=tokenizer
    )
    f_signed = [r["faithfulness"] for r in rows[: len(fractions)]]
    f_abs = [r["faithfulness"] for r in rows[len(fractions) :]]
    cpr, _ = cpr_cmd(f_signed, fractions)
    _, cmd = cpr_cmd(f_abs, fractions)
    first = rows[0]
    cpr_ci, cmd_ci = _cpr_cmd_ci(rows, fractions, n_boot=n_boot, level=level, seed=seed)
    return {
        "cpr": cpr,
        "cmd": cmd,
        "cpr_ci": cpr_ci.to_dict(),
        "cmd_ci": cmd_ci.to_dict(),
        "fractions": list(fractions),
        "faithfulness_signed": f_signed,
        "faithfulness_abs": f_abs,
        "n_edges": [r["n_edges"] for r in rows[: len(fractions)]],
        **{k: first[k] for k in ("metric", "metric_full", "metric_empty", "ablation", "split", "n_prompts")},
    }


def _cpr_cmd_ci(rows: list[dict[str, Any]], fractions: Sequence[float], **opts: Any) -> tuple[Any, Any]:
    """CPR / CMD intervals from the rows' stored per-prompt values (signed rows first, then absolute)."""
    k = len(fractions)
    values = torch.tensor([r["per_prompt"]["circuit"] for r in rows], dtype=torch.float64)  # (2K, n)
    pp = rows[0]["per_prompt"]
    return cpr_cmd_interval(values[:k], values[k:], pp["full"], pp["empty"], fractions, **opts)
