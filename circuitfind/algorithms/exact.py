"""Exact edge scores (MIB's EActP): each edge's loss change when it alone is removed from the full model.

``score(e) = loss(full minus e) - loss(full)``, one patched forward per edge, with fast ACDC's machinery: each
test restarts at the receiver's layer from cached activations (the candidate differs from the cache in one row),
computes only the answer positions above the last live head, and several edges can share one pass
(``batch_size``). The cost of a test grows with the number of layers above the receiver, so scoring every edge
of a deep model is a GPU job (123,211 edges of SmolLM2-135M: hours on a 2-core CPU); pass ``candidates`` to score a
subset (the hybrid method scores only its attribution-chosen candidates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from circuitfind.algorithms.acdc import FastEvaluator
from circuitfind.algorithms.base import (
    MethodOptions,
    MethodResult,
    NullProgress,
    Progress,
    RunContext,
    ScoreResult,
    auto_batch_size,
)
from circuitfind.algorithms.nodes import node_layers
from circuitfind.algorithms.units import check_level
from circuitfind.errors import ConfigError, MetricError, check_int
from circuitfind.graph import Graph
from circuitfind.metrics import metric_site
from circuitfind.problem import Faithfulness, Problem

__all__ = [
    "Exact",
    "ExactBatch",
    "ExactOptions",
    "assemble_scores",
    "exact_plan",
    "layer_cost",
    "plan_cost",
    "run",
    "run_exact",
    "run_exact_nodes",
    "score_batches",
]


@dataclass(frozen=True)
class ExactOptions:
    """Exact-scoring options.

    Attributes:
        batch_size: edges evaluated per forward pass (1 is fastest on CPU; 8 or more on a GPU).
        candidates: ``(S, R)`` bool: score only these edges (the rest are NaN); None: every edge.
        level: ``"edge"``, or ``"node"``: score every node instead, one patched forward per node (its outgoing
            edges removed at once); edge scores are then NaN.
    """

    batch_size: int = 1
    candidates: Tensor | None = None
    level: str = "edge"

    def __post_init__(self) -> None:
        check_level(self.level)
        if self.level == "node" and self.candidates is not None:
            raise ConfigError("candidates restricts edge scoring; at level='node' every node is scored")
        check_int(self.batch_size, "batch_size", what="senders tested per pass")


@dataclass(frozen=True)
class Exact(MethodOptions):
    """Exact scoring as a method object (name ``"exact"``).

    Attributes:
        batch_size: edges evaluated per forward pass; None: 1 on a CPU, 8 on an accelerator.
        candidates: ``(S, R)`` bool: score only these edges (the rest are NaN); None: every edge.
        level: ``"edge"``, or ``"node"``: score (and cut) every node, one patched forward per node.

    Example:
        >>> Exact(level="node").units(), Exact(batch_size=4).scoring_options().batch_size
        ('node', 4)
    """

    RECORDLESS: ClassVar[frozenset[str]] = frozenset({"candidates"})

    batch_size: int | None = None
    candidates: Tensor | None = None
    level: str = "edge"

    def __post_init__(self) -> None:
        if self.candidates is not None and not isinstance(self.candidates, Tensor):
            raise ConfigError(f"candidates must be an (S, R) bool tensor (the edges to score); got {self.candidates!r}")
        self.scoring_options()  # raises on a bad batch size, level or candidates

    def scoring_options(self) -> ExactOptions:
        """The options of :func:`run_exact` (batch size 1 until resolved)."""
        return ExactOptions(self.batch_size or 1, self.candidates, self.level)

    def resolved(self, device: torch.device) -> Exact:
        return dataclasses.replace(self, batch_size=auto_batch_size(self.batch_size, device))


def run(problem: Problem, options: Exact, context: RunContext) -> MethodResult:
    """The registry's entry for ``exact``: :func:`run_exact` (or :func:`run_exact_nodes` at node level).

    Example:
        >>> run(problem, Exact(), RunContext()).stats["edges_scored"] == problem.pm.graph.n_edges
        True
    """
    return run_exact(problem, options.resolved(problem.pm.device).scoring_options(), context.progress)


def layer_cost(n_layers: int, layer: int) -> float:
    """Relative cost of one test at a receiver of ``layer`` (``n_layers`` = the logits): the blocks it recomputes
    plus one for the unembedding. Progress bars count in these units, so their ETA follows the real work."""
    return float(n_layers - layer + 1)


@dataclass(frozen=True)
class ExactBatch:
    """One forward pass of exact scoring: the edges ``senders -> receiver`` (of ``layer``), each removed alone.

    Attributes:
        layer: the receiver's layer (``n_layers`` for the logits); the pass restarts there.
        receiver: the receiver index.
        senders: the sender indices, one candidate mask each (the pass's batch).
    """

    layer: int
    receiver: int
    senders: tuple[int, ...]


def exact_plan(graph: Graph, candidates: Tensor | None = None, batch_size: int = 1) -> list[ExactBatch]:
    """The forward passes that score every edge (or the ``candidates``), in :func:`run_exact`'s order: layers from
    the logits down, receivers in index order, senders in index order, ``batch_size`` edges per pass.

    Example:
        >>> plan = exact_plan(graph, batch_size=4)  # doctest: +SKIP
        >>> sum(len(b.senders) for b in plan) == graph.n_edges  # doctest: +SKIP
        True
    """
    check_int(batch_size, "batch_size", what="senders tested per pass")
    todo = graph.edge_mask.clone()
    if candidates is not None:
        graph.check_mask(candidates)
        todo &= candidates.detach().cpu().bool()
    plan = []
    for layer in range(graph.n_layers, -1, -1):
        cols = [graph.logits_receiver] if layer == graph.n_layers else list(graph.receivers_of_layer(layer))
        for r in cols:
            senders = todo[:, r].nonzero().squeeze(1).tolist()
            for i in range(0, len(senders), batch_size):
                plan.append(ExactBatch(layer, r, tuple(senders[i : i + batch_size])))
    return plan


def plan_cost(plan: list[ExactBatch], n_layers: int) -> float:
    """The plan's work in :func:`layer_cost` units (edges weighted by the layers each test recomputes)."""
    return sum(len(b.senders) * layer_cost(n_layers, b.layer) for b in plan)


def score_batches(
    problem: Problem, batches: list[ExactBatch], ev: FastEvaluator | None = None, progress: Progress | None = None
) -> list[Tensor]:
    """Each batch's score changes ``loss(full minus e) - loss(full)``, float64 ``(len(senders),)`` per batch.

    ``ev``: an evaluator of ``problem`` to reuse (its cache restarts at each batch's layer when it differs).
    The same batch gives the same numbers on any worker: it is the same forward with the same shapes.
    """
    progress = progress or NullProgress()
    ev = ev or FastEvaluator(problem, masks=max((len(b.senders) for b in batches), default=1))
    g = problem.pm.graph
    full = g.full_mask()
    out = []
    for b in batches:
        if ev.layer != b.layer:
            ev.start_layer(b.layer, full)
        masks = full.unsqueeze(0).repeat(len(b.senders), 1, 1)  # (K, S, R)
        masks[torch.arange(len(b.senders)), torch.tensor(b.senders), b.receiver] = False
        logits = ev.chunk_logits(masks)  # [(K, b, V')] per prompt chunk
        with metric_site(_exact_site(g, b, ev, logits)):
            losses = problem.loss(torch.cat(logits, dim=1)).cpu()  # (K,)
        out.append(losses.double() - ev.loss_full)  # (K,)
        progress.update(len(b.senders) * layer_cost(g.n_layers, b.layer))
    return out


def _exact_site(graph: Graph, batch: ExactBatch, ev: FastEvaluator, logits: list[Tensor]) -> Callable:
    """Names the edge whose removal gave a bad metric (``index`` of the batch's candidates) and the prompt chunk
    that produced it (see :func:`_bad_chunk`)."""

    def label(err) -> str:
        k = err.index if err.index is not None and err.index < len(batch.senders) else 0
        edge = graph.edge(batch.senders[k], batch.receiver).name
        where = _bad_chunk(ev, [chunk[k] for chunk in logits])
        return f"during exact scoring, removing edge {edge} (receiver {graph.receivers[batch.receiver].name}): {where}"

    return label


def _bad_chunk(ev: FastEvaluator, logits: list[Tensor]) -> str:
    """Which prompt chunk of one candidate's ``logits`` (``[(b, V')]`` per chunk) made its metric non-finite: the
    first holding NaN or infinite logits; else the first whose logits, put among the full model's logits of the
    other prompts, give a non-finite metric (the metric itself, e.g. the log of a probability of 0)."""
    chunks = ev.chunks

    def span(i: int) -> str:
        return f"prompt chunk {i + 1} of {len(chunks)} (prompts {chunks[i].start}..{chunks[i].stop - 1})"

    for i, (rows, chunk) in enumerate(zip(chunks, logits, strict=True)):
        bad = (~torch.isfinite(chunk)).flatten(1).any(dim=1)  # (b,)
        if bool(bad.any()):
            prompts = [rows.start + int(j) for j in bad.nonzero().flatten()]
            shown = ", ".join(map(str, prompts[:10])) + (", ..." if len(prompts) > 10 else "")
            return f"{span(i)} has NaN or infinite logits, on prompt(s) {shown}"
    for i, (rows, chunk) in enumerate(zip(chunks, logits, strict=True)):
        mixed = ev.full_logits.clone()
        mixed[rows] = chunk.to(mixed.device, mixed.dtype)
        try:
            ev.p.loss(mixed.unsqueeze(0))
        except MetricError:
            return (
                f"{span(i)} gives it: its logits are finite but the metric is not (with the full model's logits on "
                "the other prompts)"
            )
    return "the logits of every prompt are finite and no single prompt chunk makes the metric non-finite"


def run_exact(problem: Problem, opts: ExactOptions = ExactOptions(), progress: Progress | None = None) -> ScoreResult:
    """Exact single-edge scores for every edge (or the candidates).

    :func:`circuitfind.sweeps.exact_scores` runs the same :func:`exact_plan` spread over Ray workers.

    Example:
        >>> only = problem.pm.graph.mask_of(["a0.h1->logits", "m0->logits"])
        >>> result = run_exact(problem, ExactOptions(candidates=only))
        >>> int(result.scores[problem.pm.graph.edge_mask].isfinite().sum())  # the other edges are NaN: not scored
        2
    """
    if opts.level == "node":
        return run_exact_nodes(problem, opts.batch_size, progress)
    progress = progress or NullProgress()
    g = problem.pm.graph
    plan = exact_plan(g, opts.candidates, opts.batch_size)
    progress.set_description("exact edge scores")
    progress.reset(total=plan_cost(plan, g.n_layers))
    ev = FastEvaluator(problem, masks=opts.batch_size)
    deltas = score_batches(problem, plan, ev, progress)
    scores = assemble_scores(g, plan, deltas)
    stats = {"forward_passes": len(plan), "edges_scored": sum(len(b.senders) for b in plan), "loss_full": ev.loss_full}
    return ScoreResult(scores, stats)


def assemble_scores(graph: Graph, plan: list[ExactBatch], deltas: list[Tensor]) -> Tensor:
    """The ``(S, R)`` float64 score map of a plan's results: NaN for edges not scored, 0 off the graph."""
    scores = torch.full((graph.n_senders, graph.n_receivers), float("nan"), dtype=torch.float64)
    scores[~graph.edge_mask] = 0.0
    for b, d in zip(plan, deltas, strict=True):
        scores[list(b.senders), b.receiver] = d
    return scores


def run_exact_nodes(problem: Problem, batch_size: int = 1, progress: Progress | None = None) -> ScoreResult:
    """Exact node scores: ``loss(full without node s) - loss(full)`` for every sender ``s``.

    Edge scores are not computed (NaN on the graph's edges); ``node_scores`` holds the result.

    Example:
        >>> result = run_exact_nodes(problem)
        >>> result.node_scores.shape, bool(result.scores[problem.pm.graph.edge_mask].isnan().all())
        (torch.Size([4]), True)
    """
    progress = progress or NullProgress()
    g = problem.pm.graph
    groups = node_layers(g)
    progress.set_description("exact node scores")
    progress.reset(total=sum(len(s) * layer_cost(g.n_layers, max(layer, 0)) for layer, s in groups))
    ev = FastEvaluator(problem, masks=batch_size)
    full = g.full_mask()
    node_scores = torch.full((g.n_senders,), float("nan"), dtype=torch.float64)
    passes = 0
    for layer, senders in groups:
        if layer >= 0:
            ev.start_layer(layer, full)
        for i in range(0, len(senders), batch_size):
            batch = senders[i : i + batch_size]
            masks = torch.stack([g.without_nodes(full, [s]) for s in batch])  # (K, S, R)
            def where(err: MetricError, batch: list[int] = batch) -> str:
                return f"during exact node scoring, removing node {_node(g, batch, err)}"

            with metric_site(where):
                losses = ev.losses(masks) if layer >= 0 else _full_losses(problem, masks)
            node_scores[batch] = losses.double() - ev.loss_full
            passes += 1
            progress.update(len(batch) * layer_cost(g.n_layers, max(layer, 0)))
    scores = torch.full((g.n_senders, g.n_receivers), float("nan"), dtype=torch.float64)
    scores[~g.edge_mask] = 0.0
    stats = {"forward_passes": passes, "nodes_scored": g.n_senders, "loss_full": ev.loss_full, "level": "node"}
    return ScoreResult(scores, stats, node_scores=node_scores)


def _node(graph: Graph, batch: list[int], err) -> str:
    k = err.index if err.index is not None and err.index < len(batch) else 0
    return graph.senders[batch[k]].name


def _full_losses(problem: Problem, masks: Tensor) -> Tensor:
    """``(K,)`` losses of stacked masks from full forwards (every layer computed): the problem's exact evaluator."""
    return Faithfulness(problem).losses(masks)
