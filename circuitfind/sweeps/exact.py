"""Exact edge scores (MIB's EActP) spread over Ray workers.

The edges are the forward passes of :func:`~circuitfind.algorithms.exact.exact_plan` (``batch_size`` edges of
one receiver per pass), cut into shards of whole passes within one layer. Each worker loads the model once,
builds the problem (task, metric, ablation) once, and runs its shards with the single-process code
(:func:`~circuitfind.algorithms.exact.score_batches`). A pass is the same computation with the same shapes on
every worker, so the scores equal :func:`~circuitfind.algorithms.exact.run_exact`'s bit for bit when workers use
the same thread count and hardware as the single-process run (the tests check equality); across different CPUs
or BLAS builds expect float rounding differences of the order of 1e-6 of the loss.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from circuitfind.algorithms.base import ScoreResult
from circuitfind.algorithms.checkpoint import fingerprint
from circuitfind.algorithms.exact import ExactBatch, assemble_scores, layer_cost, plan_cost
from circuitfind.engine.ablations import Ablation
from circuitfind.errors import check_int
from circuitfind.sweeps.cell import ModelWorker
from circuitfind.sweeps.ray_pool import ActorPool, connect

__all__ = ["exact_scores", "shard_plan"]

SHARDS_PER_WORKER = 8  # more shards than workers: balanced load and a progress bar that moves


def shard_plan(plan: list[ExactBatch], n_layers: int, n_shards: int) -> list[list[ExactBatch]]:
    """Cut ``plan`` into about ``n_shards`` runs of consecutive passes of equal cost, never across layers (a
    worker restarts its cache once per shard).

    Example:
        >>> shards = shard_plan(exact_plan(graph), graph.n_layers, 16)  # doctest: +SKIP
    """
    per = max(plan_cost(plan, n_layers) / max(n_shards, 1), 1e-9)
    shards: list[list[ExactBatch]] = []
    cost = 0.0
    for b in plan:
        if not shards or cost >= per or shards[-1][-1].layer != b.layer:
            shards.append([])
            cost = 0.0
        shards[-1].append(b)
        cost += len(b.senders) * layer_cost(n_layers, b.layer)
    return shards


def exact_scores(
    model: Any,
    task: Any,
    *,
    metric: Any = "kl",
    ablation: str = "resample",
    candidates: torch.Tensor | None = None,
    batch_size: int = 1,
    workers: int | None = None,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 2,
    progress: bool = True,
) -> ScoreResult:
    """Exact single-edge scores of every edge (or the ``candidates``), computed by Ray workers.

    Equal to ``run_exact(prepare_problem(pm, task, metric=metric, ablation=ablation)[0], ExactOptions(batch_size,
    candidates))`` (see the module docstring for when bit for bit).

    Args:
        model: a name or folder for :func:`circuitfind.load_model` (each worker loads it), or a model object
            (shipped to the workers once).
        task: a :class:`~circuitfind.tasks.Task`; every prompt of it is used (pass ``task.train()`` for a split).
        metric, ablation: as in :func:`circuitfind.discover` (a callable metric must be importable by workers).
        candidates: ``(S, R)`` bool: score only these edges (the rest NaN).
        batch_size: edges per forward pass.
        workers: Ray workers (default: as many as the cluster's CPUs / GPUs hold).
        address: a Ray cluster to join (default ``$RAY_ADDRESS``; none: Ray starts in this process).
        num_cpus, num_gpus: what each worker reserves (a GPU worker runs on ``cuda``).
        max_retries: times a shard is rerun after its worker died.
        progress: a bar over the edges, in cost units (a test recomputes the layers above its receiver), so the
            ETA follows the work left.

    Returns:
        a :class:`~circuitfind.algorithms.base.ScoreResult` (float64 scores; stats: ``forward_passes``,
        ``edges_scored``, ``loss_full``, ``workers``, ``shards``, ``wall_s``, ``edges_per_s``).

    Example:
        >>> res = exact_scores("smollm2", task.train(), metric="logit_diff", candidates=top)  # doctest: +SKIP
    """
    _check(batch_size)
    kind = Ablation.parse(ablation)
    if isinstance(model, torch.nn.Module):
        model = model.cpu()
    recipe = {"task": task, "metric": metric, "ablation": kind.value, "batch_size": batch_size}
    key = _recipe_key(task, metric, kind.value, batch_size)
    t0 = time.perf_counter()
    with connect(address) as ray:
        workers = workers or _workers_that_fit(ray.cluster_resources(), num_cpus, num_gpus)
        source = ray.put(model) if not isinstance(model, (str, os.PathLike)) else str(model)
        device = "cuda" if num_gpus > 0 else "cpu"
        remote = ray.remote(_ShippedModelWorker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)

        planner = remote.remote(source, device, threads=max(1, int(num_cpus)))
        spare = [planner]  # the worker that plans is the pool's first

        def make(_key: Any) -> Any:
            return spare.pop() if spare else remote.remote(source, device, threads=max(1, int(num_cpus)))

        pool = ActorPool(ray, workers, make, lambda actor, job: actor.exact_shard.remote(key, recipe, job[1]))
        try:
            plan, graph = ray.get(planner.exact_plan_and_graph.remote(batch_size, candidates))
        except BaseException:
            ray.kill(planner)
            raise
        n_layers = graph.n_layers
        shards = shard_plan(plan, n_layers, workers * SHARDS_PER_WORKER)
        deltas, loss_full = _run_shards(
            pool, shards, n_layers, max_retries, _edge_bar(plan_cost(plan, n_layers), progress)
        )
        for unused in spare:  # no shard to score: the planner never joined the pool
            ray.kill(unused)
    flat = [d for shard in deltas for d in shard]
    scores = assemble_scores(graph, plan, flat)
    wall = time.perf_counter() - t0
    n_edges = sum(len(b.senders) for b in plan)
    stats = {
        "forward_passes": len(plan),
        "edges_scored": n_edges,
        "loss_full": loss_full,
        "workers": workers,
        "shards": len(shards),
        "wall_s": wall,
        "edges_per_s": n_edges / max(wall, 1e-9),
    }
    return ScoreResult(scores, stats)


def _run_shards(
    pool: ActorPool, shards: list[list[ExactBatch]], n_layers: int, max_retries: int, bar: Any
) -> tuple[list[list[torch.Tensor]], float | None]:
    """Every shard's score changes (in shard order) and the full model's loss; a shard whose worker died is
    rerun on a new worker up to ``max_retries`` times. Closes the pool and the bar."""
    for i, shard in enumerate(shards):
        pool.submit(0, (i, shard, 1))
    deltas: list[Any] = [None] * len(shards)
    loss_full = None
    try:
        while pool.pending:
            for d in pool.wait(timeout=1.0):
                i, shard, attempt = d.job
                if d.error is not None:
                    if d.died and attempt <= max_retries:
                        pool.submit(0, (i, shard, attempt + 1), first=True)
                        continue
                    raise d.error
                deltas[i], loss_full = d.result
                if bar is not None:
                    bar.update(plan_cost(shard, n_layers))
    finally:
        pool.close()
        if bar is not None:
            bar.close()
    return deltas, loss_full


class _ShippedModelWorker(ModelWorker):
    """A :class:`ModelWorker` whose model may come as a Ray object (a model object put once by the driver)."""

    def __init__(self, source: Any, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(source, device, threads)

    def ensure_model(self) -> float:
        if self.pm is None and not isinstance(self.model_source, (str, torch.nn.Module)):
            import ray

            self.model_source = ray.get(self.model_source)
        return super().ensure_model()

    def exact_plan_and_graph(self, batch_size: int, candidates: Any) -> tuple[list[ExactBatch], Any]:
        return self.exact_plan(batch_size, candidates), self.loaded().graph


def _recipe_key(task: Any, metric: Any, ablation: str, batch_size: int = 1) -> str:
    """The key of a worker's problem cache: the task fingerprint
    (:func:`circuitfind.algorithms.checkpoint.fingerprint`) of the recipe, without the weights (a worker's cache
    holds problems of its own model only)."""
    return fingerprint({"ablation": ablation, "batch_size": batch_size}, task, metric=metric)  # metric: by identity


def _edge_bar(total: float, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="exact edge scores (cost units)", dynamic_ncols=True)


def _workers_that_fit(resources: dict[str, float], num_cpus: float, num_gpus: float) -> int:
    """How many workers reserving ``num_cpus`` / ``num_gpus`` each the cluster's ``resources`` hold (at least 1)."""
    workers = max(1, int(resources.get("CPU", 1) // num_cpus))
    return min(workers, int(resources.get("GPU", 0) // num_gpus)) if num_gpus > 0 else workers


def _check(batch_size: Any) -> None:
    check_int(batch_size, "batch_size", what="senders tested per pass")
