"""ACDC across thresholds: :func:`threshold_sweep` (cached and resumable) and :func:`roc_sweep` against a ground
truth. Orchestration over :func:`circuitfind.discover`, kept out of :mod:`circuitfind.evaluate` (which only
measures circuits it is given)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from circuitfind.algorithms.checkpoint import fingerprint
from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.engine.patchable import PatchableModel, resolve_model
from circuitfind.errors import ConfigError
from circuitfind.evaluate.scores import auc, roc_from_circuits
from circuitfind.graph import Graph
from circuitfind.problem import prepare_problem
from circuitfind.tasks import Task, resolve_task

__all__ = ["roc_sweep", "threshold_sweep"]


def _cache_base(pm: PatchableModel, task: Task, discover_kw: dict[str, Any]) -> str:
    """The task fingerprint of the sweep's runs without their threshold
    (:func:`circuitfind.algorithms.checkpoint.fingerprint`: the train split's ids, masks, positions, answers and
    wrong answers, the metric, the ablation's reference outputs and every weight), computed once: hashing the
    weights is the costly part."""
    kw = {k: v for k, v in discover_kw.items() if k != "progress"}
    train = task.train()
    problem, _ = prepare_problem(
        pm,
        train,
        metric=kw.get("metric", "kl"),
        ablation=kw.get("ablation", "resample"),
        reference=kw.get("reference"),
        chunk_size=kw.get("chunk_size"),
    )
    config = {
        "sweep": "acdc-threshold",
        "graph": pm.graph.describe(),
        "task": task.name,
        **{k: _metric_label(v) if k == "metric" else v for k, v in kw.items() if k != "reference"},
    }
    return fingerprint(config, train, problem, pm, metric=kw.get("metric"))


def _digest(base: str, tau: float) -> str:
    return hashlib.sha256(f"{base}|threshold={float(tau)!r}".encode()).hexdigest()[:16]


def _metric_label(metric: Any) -> str:
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def threshold_sweep(
    model: nn.Module | PatchableModel | str,
    task: Any,
    thresholds: Sequence[float],
    *,
    tokenizer: Any = None,
    cache_dir: str | Path | None = None,
    on_circuit: Callable[[float, Circuit], None] | None = None,
    **discover_kw: Any,
) -> list[Circuit]:
    """ACDC (through :func:`circuitfind.discover`) once per threshold.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name (loaded once for the whole sweep).
        task: anything :func:`circuitfind.discover` accepts; its train split is used.
        thresholds: the taus, run in the given order.
        tokenizer: for tasks given by name or as strings.
        cache_dir: if given, each circuit is saved there as JSON and reused by a later sweep with the same task
            fingerprint (:func:`circuitfind.algorithms.checkpoint.fingerprint`: prompts, answers, wrong answers, metric,
            ablation reference and the model's weights), threshold and options, and each ACDC run checkpoints
            there (``.ckpt``), so an interrupted sweep resumes where it stopped, even in the middle of a run.
        on_circuit: called with ``(threshold, circuit)`` after each threshold (e.g. to write partial results).
        **discover_kw: passed to :func:`circuitfind.discover` (``metric``, ``ablation``, ``batch_size``,
            ``progress``: a progress bar per run, off by default).

    Returns:
        one :class:`Circuit` per threshold, in the order of ``thresholds``.

    Example:
        >>> circuits = threshold_sweep(pm, task, [0.01, 0.1], ablation="zero")
        >>> [c.config["threshold"] for c in circuits]
        [0.01, 0.1]
    """
    if not len(thresholds):
        raise ConfigError("thresholds is empty; give at least one threshold, e.g. [0.01, 0.1]")
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer)
    discover_kw.setdefault("progress", False)
    cache = None if cache_dir is None else (Path(cache_dir), _cache_base(pm, task, discover_kw))
    circuits = []
    for tau in thresholds:
        path = None
        if cache is not None:
            folder, base = cache
            path = folder / f"acdc_{task.name}_{_digest(base, tau)}.json"
        if path is not None and path.exists():
            circuit = Circuit.load(path)
        elif path is not None:  # checkpointed: an interrupted run resumes from its last finished receiver
            ckpt = path.with_suffix(".ckpt")
            circuit = discover(pm, task, threshold=float(tau), checkpoint=ckpt, resume=True, **discover_kw)
            circuit.save(path)
            ckpt.unlink(missing_ok=True)
        else:
            circuit = discover(pm, task, threshold=float(tau), **discover_kw)
        circuits.append(circuit)
        if on_circuit is not None:
            on_circuit(float(tau), circuit)
    return circuits


def _truth_mask(graph: Graph, truth_edges: set[str] | Sequence[str] | Tensor) -> Tensor:
    if isinstance(truth_edges, Tensor):
        graph.check_mask(truth_edges)
        return truth_edges.bool().cpu() & graph.edge_mask
    return graph.mask_of(sorted(truth_edges))


def roc_sweep(
    model: nn.Module | PatchableModel | str,
    task: Any,
    thresholds: Sequence[float],
    truth_edges: set[str] | Sequence[str] | Tensor,
    **discover_kw: Any,
) -> dict[str, Any]:
    """ACDC at each threshold, then the ROC of those circuits against a ground truth and its area.

    Each circuit is one (FPR, TPR) point; the curve adds (0, 0) and (1, 1) and is sorted by FPR
    (:func:`roc_from_circuits`), as in the ACDC paper.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name.
        task: the task (its train split is used for discovery).
        thresholds: the ACDC thresholds.
        truth_edges: edge names of the ground-truth circuit, or its ``(S, R)`` bool mask.
        **discover_kw: passed to :func:`threshold_sweep` / :func:`circuitfind.discover` (``metric``,
            ``ablation``, ``tokenizer``, ``cache_dir``...).

    Returns:
        ``{"auc", "auc_pessimistic", "fpr", "tpr", "points", "n_truth", "n_graph_edges", "circuits"}``;
        ``points`` has one ``{"threshold", "n_edges", "fraction", "fpr", "tpr"}`` per threshold.

    Example:
        >>> res = roc_sweep(pm, task, [1e-3, 1e-2, 1e-1], ioi_ground_truth())  # doctest: +SKIP
        >>> round(res["auc"], 3)  # doctest: +SKIP
        0.869
    """
    tokenizer = discover_kw.pop("tokenizer", None)
    pm, tokenizer = resolve_model(model, tokenizer)
    truth = _truth_mask(pm.graph, truth_edges)
    circuits = threshold_sweep(pm, task, thresholds, tokenizer=tokenizer, **discover_kw)
    g = pm.graph
    fpr, tpr = roc_from_circuits([c.mask for c in circuits], truth, g.edge_mask)
    n_pos = int(truth.sum())
    n_neg = g.n_edges - n_pos
    points = []
    for tau, c in zip(thresholds, circuits, strict=True):
        kept = c.mask & g.edge_mask
        points.append(
            {
                "threshold": float(tau),
                "n_edges": c.n_edges,
                "fraction": c.fraction,
                "fpr": int((kept & ~truth).sum()) / n_neg,
                "tpr": int((kept & truth).sum()) / n_pos,
            }
        )
    return {
        "auc": auc(fpr, tpr),
        "auc_pessimistic": auc(fpr, tpr, pessimistic=True),
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "points": points,
        "n_truth": n_pos,
        "n_graph_edges": g.n_edges,
        "circuits": circuits,
    }
