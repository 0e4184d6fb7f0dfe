"""ACDC behind the one method protocol: checkpoints, resume and honest progress around the search of
:mod:`circuitfind.algorithms.acdc`.

:func:`run` is the registry's entry for ``acdc`` and ``acdc-plain``: it loads the checkpoint when resuming,
reports progress in test-cost units (:class:`AcdcWork`), checkpoints at receiver boundaries and on interrupt or
crash, and returns the circuit ACDC decided with every tested edge's effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitfind.algorithms.acdc import ACDC, AcdcState, run_acdc_fast, run_acdc_plain
from circuitfind.algorithms.base import MethodResult, RunContext
from circuitfind.algorithms.checkpoint import Checkpointer
from circuitfind.algorithms.exact import layer_cost
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.problem import Problem

__all__ = ["AcdcWork", "acdc_stats", "run"]


def run(problem: Problem, options: ACDC, context: RunContext) -> MethodResult:
    """ACDC (fast, or plain for :class:`~circuitfind.algorithms.acdc.ACDCPlain`) with checkpoints and progress.

    Example:
        >>> result = run(problem, ACDC(threshold=0.05, batch_size=2), RunContext())
        >>> result.mask.shape, int(result.stats["edges_tested"]) > 0  # the circuit ACDC decided, its tests
        (torch.Size([4, 8]), True)
    """
    g = problem.pm.graph
    ckpt = Checkpointer(_checkpoint_path(options, context), _run_id(options, context), (g.n_senders, g.n_receivers))
    state = ckpt.load() if options.resume else None
    bar = context.progress
    work = AcdcWork(g, state)
    bar.set_description("ACDC")
    bar.reset(total=work.remaining(state))

    def on_boundary(st: AcdcState, done: int, total: int) -> None:
        ckpt.update(st)
        # progress counts tests weighted by their cost; the total is re-estimated from the edges still alive,
        # so the ETA follows the work actually left (dead nodes' receivers are skipped without tests)
        bar.n = work.advance(st)
        bar.total = bar.n + work.remaining(st)
        # the metric of the current subgraph: watching it drift from the full model's is the first sign
        # that the threshold is too coarse for a faithful circuit
        value = context.value_of(st.current)
        bar.set_postfix(kept=int(st.mask.sum()), tested=st.edges_tested, metric=f"{value:.4g}", refresh=False)
        bar.refresh()

    search = run_acdc_plain if options.plain else run_acdc_fast
    try:
        state = search(problem, options.resolved(problem.pm.device).search_options(), state, on_boundary)
    except BaseException:
        ckpt.write()  # Ctrl-C or a crash: keep everything up to the last finished receiver
        raise
    ckpt.last = state
    ckpt.write()
    return MethodResult(state.effects, acdc_stats(state, context), mask=state.mask)


def _checkpoint_path(options: ACDC, context: RunContext) -> Path | None:
    return Path(options.checkpoint) if options.checkpoint else None


def _run_id(options: ACDC, context: RunContext) -> str:
    """The run's fingerprint, needed only when a checkpoint is written or read."""
    if not options.checkpoint:
        return ""
    if context.run_id is None:
        raise ConfigError(
            "checkpoint= needs the run's fingerprint (model, task, options) to refuse a checkpoint of another run; "
            "run ACDC with a checkpoint through circuitfind.discover"
        )
    return context.run_id()


class AcdcWork:
    """ACDC's work in test-cost units (:func:`layer_cost` per tested edge): what is done, and an estimate of what
    is left from the edges still alive (a receiver whose node has no outgoing edge left is skipped untested)."""

    def __init__(self, graph: Graph, state: AcdcState | None) -> None:
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


def _owner(graph: Graph, r: int) -> int:
    rec = graph.receivers[r]
    if rec.node.layer >= graph.n_layers:
        return -1
    return graph.mlp_sender(rec.node.layer) if rec.channel is None else graph.head_sender(rec.node.layer, rec.node.head)


def acdc_stats(state: AcdcState, context: RunContext) -> dict[str, Any]:
    """A finished search's numbers; the trace's losses read back as the metric's values."""
    return {
        "acdc_time_s": state.elapsed_s,
        "forward_passes": state.forward_passes,
        "edges_tested": state.edges_tested,
        "candidates_evaluated": state.candidates_evaluated,
        "edges_per_s": state.edges_tested / max(state.elapsed_s, 1e-9),
        # per finished layer of receivers (logits first): the metric of the subgraph so far
        "trace": [
            {"metric": context.value_of(e["loss"]), **{k: v for k, v in e.items() if k != "loss"}} for e in state.trace
        ],
    }
