"""ACDC: recursive path patching (Conmy et al. 2023), exactly as the reference algorithm (REFERENCE §3).

Start with every edge present. Visit receivers in reverse topological order (``logits``, then per layer from
the last: the MLP input, the heads' v inputs, k, q, heads high to low) -- which is simply descending receiver
index in our layout. For one receiver, test its senders from later to earlier (descending sender index: MLP
before heads, heads high to low, ``input`` last; ``reverse`` order flips this). Removing an edge for good when

    loss(H minus e) - loss(H) < threshold        (``absolute``: |...| < threshold)

where H is the current subgraph and the loss is the metric to minimise. A node with no outgoing edge left is
skipped: its incoming edges are removed untested.

Two implementations share the order, the skip rule and the decision rule:

* :func:`run_acdc_plain` -- one full forward per tested edge, written for clarity;
* :func:`run_acdc_fast` -- restarts each test at the receiver's layer from cached activations, computes logits
  only at the answer positions, and evaluates several candidate removals in one pass with speculation
  (candidate j assumes 1..j-1 removed; at the first kept candidate the rest are discarded). Same result.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from circuitfind.algorithms.base import MethodOptions, auto_batch_size
from circuitfind.engine.ablations import AblatedOutputs
from circuitfind.errors import ConfigError, check_int, check_optional_int
from circuitfind.graph import Graph
from circuitfind.metrics import metric_site
from circuitfind.problem import Problem

__all__ = [
    "ACDC",
    "ACDCPlain",
    "SenderOrder",
    "AcdcOptions",
    "AcdcState",
    "receiver_order",
    "sender_order",
    "run_acdc_plain",
    "run_acdc_fast",
    "FastEvaluator",
    "parse_sender_order",
]


class SenderOrder(enum.Enum):
    """The order in which one receiver's senders are tested."""

    NORMAL = "normal"
    """Later layers first; within a layer the MLP before the heads, heads high to low; ``input`` last."""
    REVERSE = "reverse"
    """The opposite: ``input`` first, then layer 0's heads low to high, its MLP, layer 1, ..."""


@dataclass(frozen=True)
class AcdcOptions:
    """ACDC's options.

    Attributes:
        threshold: tau; an edge whose removal raises the loss by less than this is removed.
        absolute: compare |change| with tau instead of the signed change.
        sender_order: see :class:`SenderOrder`.
        batch_size: candidate removals evaluated per forward in the fast path (speculation depth).
    """

    threshold: float
    absolute: bool = False
    sender_order: SenderOrder = SenderOrder.NORMAL
    batch_size: int = 8

    def __post_init__(self) -> None:
        t = self.threshold
        if not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
            raise ConfigError(
                f"threshold must be a number >= 0 (math.inf keeps nothing); got {t!r}. Typical values: 0.001-0.1 for KL"
            )
        check_int(self.batch_size, "batch_size", what="senders tested per pass")
        if not isinstance(self.absolute, bool):
            raise ConfigError(f"absolute must be True or False; got {self.absolute!r}")


@dataclass(frozen=True)
class ACDC(MethodOptions):
    """ACDC as a method object for ``discover(model, task, method=ACDC(...))`` (name ``"acdc"``: fast and exact).

    Attributes:
        threshold: tau, ``>= 0``: an edge whose removal raises the loss by less than this is removed
            (``math.inf`` removes every edge).
        absolute: compare ``|change|`` with tau; a cut of the effects then ranks by ``|effect|`` too.
        sender_order: ``"normal"`` or ``"reverse"`` (:class:`SenderOrder`).
        batch_size: candidate removals per forward (speculation depth); None: 1 on a CPU, 8 on an accelerator.
        checkpoint: a file the run is checkpointed to (every 30 s, and on interrupt or crash); None: none.
        resume: continue from ``checkpoint`` when it exists (same model, task and options).

    Example:
        >>> ACDC(threshold=0.05, sender_order="reverse").sender_order
        <SenderOrder.REVERSE: 'reverse'>
    """

    RECORDLESS: ClassVar[frozenset[str]] = frozenset({"checkpoint", "resume"})
    plain: ClassVar[bool] = False  # the clear, one-full-forward-per-edge implementation (acdc-plain)

    threshold: float = 0.01
    absolute: bool = False
    sender_order: SenderOrder = SenderOrder.NORMAL
    batch_size: int | None = None
    checkpoint: str | Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool):
            raise ConfigError(f"threshold must be a number >= 0 (math.inf keeps nothing); got {self.threshold!r}")
        object.__setattr__(self, "sender_order", parse_sender_order(self.sender_order))
        check_optional_int(self.batch_size, "batch_size", what="removals per forward", fix="or None: automatic")
        self.search_options()  # raises on a bad threshold or absolute
        if not isinstance(self.resume, bool):
            raise ConfigError(f"resume must be True or False; got {self.resume!r}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, Path)):
            raise ConfigError(f"checkpoint must be a file path (str or Path) or None; got {self.checkpoint!r}")

    def search_options(self) -> AcdcOptions:
        """The options of :func:`run_acdc_fast` / :func:`run_acdc_plain` (batch size 1 until resolved)."""
        return AcdcOptions(self.threshold, self.absolute, self.sender_order, self.batch_size or 1)

    def implied_cut(self) -> dict[str, Any]:
        return {"absolute": True} if self.absolute else {}  # a cut of the effects ranks as the search decided

    def resolved(self, device: torch.device) -> ACDC:
        return replace(self, batch_size=auto_batch_size(self.batch_size, device))


@dataclass(frozen=True)
class ACDCPlain(ACDC):
    """ACDC written for clarity (name ``"acdc-plain"``): one full forward per tested edge, the same result as
    :class:`ACDC` (for checks). Same options.

    Example:
        >>> ACDCPlain(threshold=0.05).plain
        True
    """

    plain: ClassVar[bool] = True


def parse_sender_order(value: Any) -> SenderOrder:
    """``value`` as a :class:`SenderOrder` (the enum or its name), or a :class:`ConfigError`."""
    try:
        return value if isinstance(value, SenderOrder) else SenderOrder(str(value))
    except ValueError:
        raise ConfigError(f"unknown sender_order {value!r}; expected 'normal' or 'reverse'") from None


@dataclass
class AcdcState:
    """Everything needed to continue a run: checkpointed at receiver boundaries."""

    mask: Tensor  # (S, R) bool, current subgraph H
    effects: Tensor  # (S, R) float, loss change when tested; NaN if never tested
    current: float  # loss(H)
    next_receiver: int = 0  # position in receiver_order
    edges_tested: int = 0
    forward_passes: int = 0
    candidates_evaluated: int = 0
    elapsed_s: float = 0.0
    done: bool = False
    # one entry per finished layer of receivers (logits first): where the loss drifted, for diagnostics
    trace: list[dict[str, float]] = field(default_factory=list)

    def copy(self) -> AcdcState:
        return replace(self, mask=self.mask.clone(), effects=self.effects.clone(), trace=list(self.trace))


def receiver_order(graph: Graph) -> list[int]:
    """Reverse topological order: ``logits``, then per layer from the last MLP, v, k, q (heads high to low)."""
    return list(range(graph.n_receivers - 1, -1, -1))


def sender_order(
    graph: Graph, receiver: int, order: SenderOrder = SenderOrder.NORMAL, present: Tensor | None = None
) -> list[int]:
    """The senders of ``receiver`` in the order ACDC tests them; with ``present`` (an ``(S, R)`` mask) only those
    whose edge is still in it. A full run never meets an absent one (each receiver is visited once, before any of
    its edges is removed); a run started from a smaller subgraph (the hybrid method) skips them untested."""
    n = int(graph.n_upstream[receiver])
    senders = list(range(n - 1, -1, -1)) if order is SenderOrder.NORMAL else list(range(n))
    if present is None:
        return senders
    column = present[:, receiver].tolist()
    return [s for s in senders if column[s]]


def _receiver_node_sender(graph: Graph, r: int) -> int | None:
    """The sender index of the node that owns receiver ``r`` (None for the logits)."""
    rec = graph.receivers[r]
    if rec.node.layer >= graph.n_layers:
        return None
    if rec.channel is None:
        return graph.mlp_sender(rec.node.layer)
    return graph.head_sender(rec.node.layer, rec.node.head)


_FULL = "during ACDC, on the full model (every edge kept)"


def _testing(graph: Graph, r: int, senders: list[int]) -> Callable:
    """Names the edge whose candidate removal gave a bad metric (``index`` of the stacked candidates)."""

    def label(err) -> str:
        s = senders[err.index] if err.index is not None and err.index < len(senders) else senders[0]
        return f"during ACDC, testing edge {graph.edge(s, r).name} (receiver {graph.receivers[r].name})"

    return label


def _removes(effect: float, opts: AcdcOptions) -> bool:
    return (abs(effect) if opts.absolute else effect) < opts.threshold


def _initial_state(graph: Graph, loss_full: float) -> AcdcState:
    return AcdcState(
        mask=graph.full_mask(),
        effects=torch.full((graph.n_senders, graph.n_receivers), float("nan")),
        current=loss_full,
    )


def _skip_if_dead(graph: Graph, state: AcdcState, r: int) -> bool:
    """Remove ``r``'s incoming edges untested when its node has no outgoing edge left."""
    owner = _receiver_node_sender(graph, r)
    if owner is None or bool(state.mask[owner].any()):
        return False
    state.mask[:, r] = False
    return True


Hook = Callable[[AcdcState, int, int], None]  # (state at a receiver boundary, receivers done, total)


def _visit(graph: Graph, state: AcdcState, on_boundary: Hook | None, visit_one: Callable[[int], None]) -> AcdcState:
    order = receiver_order(graph)
    start = time.perf_counter() - state.elapsed_s
    while state.next_receiver < len(order):
        r = order[state.next_receiver]
        if not _skip_if_dead(graph, state, r):
            visit_one(r)
        state.next_receiver += 1
        state.elapsed_s = time.perf_counter() - start
        layer = graph.receiver_layer(r)
        if state.next_receiver == len(order) or graph.receiver_layer(order[state.next_receiver]) != layer:
            state.trace.append(_trace_entry(layer, state))  # the last receiver of its layer
        if on_boundary is not None:
            on_boundary(state, state.next_receiver, len(order))
    state.done = True
    return state


def _trace_entry(layer: int, state: AcdcState) -> dict[str, float]:
    return {
        "layer": layer,
        "receivers_done": state.next_receiver,
        "loss": state.current,
        "edges_kept": int(state.mask.sum()),
        "edges_tested": state.edges_tested,
        "elapsed_s": round(state.elapsed_s, 3),
    }


def run_acdc_plain(
    problem: Problem, opts: AcdcOptions, state: AcdcState | None = None, on_boundary: Hook | None = None
) -> AcdcState:
    """ACDC written for clarity: one full forward (all positions) per tested edge."""
    pm, graph = problem.pm, problem.pm.graph
    B = problem.clean_ids.shape[0]
    chunks = problem.prompt_chunks()
    if state is None:
        state = _initial_state(graph, 0.0)

    def logits_of(mask: Tensor, rows: slice) -> Tensor:  # (b, V') at the answer positions
        logits = pm.forward(
            problem.clean_ids[rows],
            problem.ablated.select(rows, B),
            mask,
            attention_mask=problem.attention_mask[rows],
            vocab=problem.vocab,
        )  # (b, T, V')
        return logits[torch.arange(logits.shape[0], device=logits.device), problem.positions[rows].to(logits.device)]

    def loss(mask: Tensor) -> float:
        with torch.no_grad():
            logits = torch.cat([logits_of(mask, rows) for rows in chunks])
        state.forward_passes += 1
        return float(problem.loss(logits.unsqueeze(0))[0])

    with metric_site(_FULL):  # a resumed subgraph too: its loss recomputed, not the value a checkpoint claims
        state.current = loss(state.mask)

    def visit(r: int) -> None:
        for s in sender_order(graph, r, opts.sender_order, state.mask):
            state.mask[s, r] = False
            with metric_site(_testing(graph, r, [s])):
                new = loss(state.mask)
            effect = new - state.current
            state.effects[s, r] = effect
            state.edges_tested += 1
            state.candidates_evaluated += 1
            if _removes(effect, opts):
                state.current = new
            else:
                state.mask[s, r] = True

    return _visit(graph, state, on_boundary, visit)


REFRESH_EVERY = 8  # removals between refreshes of the visited layer's cached inputs


class FastEvaluator:
    """Losses of stacked candidate masks, restarting at the visited layer from cached clean activations.

    Prompts are processed in chunks (``problem.chunk_size``); each chunk keeps its own restart cache, and the
    loss is taken once on every chunk's logits, so chunking changes nothing beyond float rounding.
    """

    def __init__(self, problem: Problem, mask: Tensor | None = None, masks: int = 1) -> None:
        """``mask``: the subgraph the run starts from (default all edges). Sender diffs are taken under it, which
        stays exact for the senders below any visited layer as long as only edges into visited layers change.
        ``masks``: the most candidate masks one call of :meth:`losses` stacks (sizes the prompt chunks)."""
        self.p = problem
        pm = problem.pm
        self.chunks = problem.prompt_chunks(masks)
        start = pm.graph.full_mask() if mask is None else mask
        logits, self.clean_diffs = [], []
        with torch.no_grad():
            for rows in self.chunks:
                chunk_logits, diffs = pm.forward_with_diffs(*self._inputs(rows), start, **self._kw(rows))
                logits.append(chunk_logits)
                self.clean_diffs.append(diffs)  # (S, b, T, D) per chunk
        self.full_logits = torch.cat(logits)  # (B, V'): kept to locate a candidate's bad metric (exact scoring)
        with metric_site(_FULL):
            self.loss_full = float(problem.loss(self.full_logits.unsqueeze(0))[0])
        self.layer: int | None = None
        self.caches: list = [None] * len(self.chunks)

    def _inputs(self, rows: slice) -> tuple[Tensor, AblatedOutputs]:
        B = self.p.clean_ids.shape[0]
        return self.p.clean_ids[rows], self.p.ablated.select(rows, B)

    def _kw(self, rows: slice) -> dict:
        p = self.p
        return {"attention_mask": p.attention_mask[rows], "positions": p.positions[rows], "vocab": p.vocab}

    @property
    def start(self) -> int:
        """The block candidates restart at: the visited layer, or 0 (a full forward) before :meth:`start_layer`."""
        return 0 if self.layer is None else self.layer

    def start_layer(self, layer: int, mask: Tensor) -> None:
        """Build the prefix cache for visiting ``layer``'s receivers under the current subgraph."""
        self.layer = layer
        self.removed_since_refresh = 0
        self.caches = [None] * len(self.chunks)  # the old caches go before the new ones are built
        with torch.no_grad():
            for i, rows in enumerate(self.chunks):
                ablated = self._inputs(rows)[1]
                self.caches[i] = self.p.pm.prefix_cache(self.clean_diffs[i], ablated, mask, layer)

    def removed(self, n: int, mask: Tensor) -> None:
        """``n`` edges into the visited layer were removed: refresh its cached inputs now and then, so that
        candidates differ from the cache in few rows."""
        self.removed_since_refresh += n
        if self.removed_since_refresh >= REFRESH_EVERY:
            self.removed_since_refresh = 0
            with torch.no_grad():
                for i, rows in enumerate(self.chunks):
                    self.caches[i] = self.p.pm.refresh_cache(self.caches[i], self._inputs(rows)[1], mask)

    def losses(self, masks: Tensor) -> Tensor:  # (K, S, R) -> (K,)
        return self.p.loss(torch.cat(self.chunk_logits(masks), dim=1)).cpu()

    def chunk_logits(self, masks: Tensor) -> list[Tensor]:  # (K, S, R) -> [(K, b, V')] per prompt chunk
        """The logits :meth:`losses` takes the loss of, one tensor per prompt chunk (``self.chunks``)."""
        with torch.no_grad():
            return [
                self.p.pm.forward(
                    *self._inputs(rows), masks, start_layer=self.start, cache=self.caches[i], **self._kw(rows)
                )  # (K, b, V')
                for i, rows in enumerate(self.chunks)
            ]


def run_acdc_fast(
    problem: Problem, opts: AcdcOptions, state: AcdcState | None = None, on_boundary: Hook | None = None
) -> AcdcState:
    """ACDC with every speed-up; gives exactly :func:`run_acdc_plain`'s result."""
    graph = problem.pm.graph
    ev = FastEvaluator(problem, None if state is None else state.mask, masks=opts.batch_size)
    if state is None:
        state = _initial_state(graph, ev.loss_full)
    else:  # a given subgraph (the hybrid's) or a resumed one: its loss is the evaluator's first pass, not the
        state.current = ev.loss_full  # value a checkpoint claims
    depth = opts.batch_size

    def visit(r: int) -> None:
        nonlocal depth
        layer = graph.receiver_layer(r)
        if ev.layer != layer:
            ev.start_layer(layer, state.mask)
        senders = sender_order(graph, r, opts.sender_order, state.mask)
        i = 0
        while i < len(senders):
            k = min(depth, len(senders) - i)
            cands = state.mask.unsqueeze(0).repeat(k, 1, 1)  # (K, S, R)
            for j in range(k):
                cands[j:, senders[i + j], r] = False  # candidate j assumes candidates before it removed
            with metric_site(_testing(graph, r, senders[i : i + k])):
                losses = ev.losses(cands).tolist()
            state.forward_passes += 1
            state.candidates_evaluated += k
            decided, kept, removed = 0, False, 0
            for j in range(k):
                s = senders[i + j]
                effect = losses[j] - state.current
                state.effects[s, r] = effect
                state.edges_tested += 1
                decided += 1
                if _removes(effect, opts):
                    state.mask[s, r] = False
                    state.current = losses[j]
                    removed += 1
                else:
                    kept = True
                    break
            i += decided
            ev.removed(removed, state.mask)
            # adapt the speculation depth: deeper while removals run on, shallower after a keep
            depth = max(1, depth // 2) if kept else min(opts.batch_size, depth * 2)

    return _visit(graph, state, on_boundary, visit)
