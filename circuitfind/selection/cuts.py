"""Choosing circuits from edge scores: rank, cut, prune dangling edges, and search for the smallest faithful one.

Pure tensor algebra on a :class:`~circuitfind.graph.Graph`; no model code. Masks and scores are dense
``(S, R)`` tensors in the graph's (senders, receivers) layout.

* :func:`edge_ranking`: the flat indices of the existing edges, best first, untested (NaN) edges last. The one
  place the ordering is defined (ties broken by position, so every cut of it is nested in the next);
  :func:`top_n`, :func:`top_fraction`, :func:`above_threshold`, :func:`smallest_faithful`,
  :func:`circuitfind.evaluate.scores.top_k_masks`, the cut of ``discover`` and the explorer use it.
* :func:`top_n`, :func:`top_fraction`, :func:`above_threshold`: the usual cuts.
* :func:`prune_dangling`: drop edges that lie on no kept ``input -> logits`` path (EAP-IG issue #16,
  REFERENCE §5: a top-k cut leaves edges out of nodes whose output reaches nothing, and into nodes that see
  nothing but ablated inputs).
* :func:`smallest_faithful`: bisection over the number of top-ranked edges for the smallest circuit whose
  faithfulness (supplied by the caller) reaches a target.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, ShapeError, check_int
from circuitfind.graph import Graph

__all__ = [
    "TargetResult",
    "above_threshold",
    "edge_ranking",
    "gallop_bisect",
    "n_of_fraction",
    "prune_dangling",
    "probes_left",
    "smallest_faithful",
    "top_fraction",
    "top_n",
]


# --- pruning -------------------------------------------------------------------------------------------------
def prune_dangling(graph: Graph, mask: Tensor, *, from_input: bool = True) -> Tensor:
    """The kept edges that can still change the logits: those on some kept ``input -> logits`` path.

    Two kinds of edge are dropped:

    * (always, exact for every ablation) an edge ``s -> r`` whose receiver's node (the head of a q/k/v receiver,
      the MLP of an MLP receiver) has no kept path on to ``logits``: patching it changes that node's output,
      and nothing downstream reads that output through a kept edge.
    * (``from_input=True``) an edge ``s -> r`` whose sender ``s`` is not ``input`` and whose node has no kept
      path from ``input`` into any of its receivers (a head's q, k or v, an MLP's input). Under resample
      ablation such a node sees only corrupted inputs, so it computes exactly its corrupted output: its
      clean-minus-ablated difference is zero and its outgoing edges change nothing. This is exact only for
      resample ablation; under mean or zero ablation the node's output still differs from the ablated value,
      so pass ``from_input=False`` there.

    A node counts as reached when *any* of its receivers has a kept edge from a reached sender (a head reached
    only through its key still changes its output). Computed in one forward pass (reached-from-input, per
    sender) and one backward pass (reaches-logits, per receiver) over the layers in topological order, so no
    fixed-point iteration is needed.

    Args:
        graph: the model's graph.
        mask: ``(S, R)`` bool, the kept edges; entries that are not edges of ``graph`` are ignored.
        from_input: also drop edges out of nodes that no kept path from ``input`` reaches (resample ablation).

    Returns:
        a new ``(S, R)`` bool mask on ``mask``'s device, a subset of ``mask & graph.edge_mask``; ``mask`` is not
        changed.

    Raises:
        ShapeError: ``mask`` is not an ``(S, R)`` bool tensor.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> m = g.mask_of(["input->a0.h0<q>", "input->m0", "m0->logits"])  # a0.h0's output goes nowhere
        >>> [e.name for e in g.edges_of(prune_dangling(g, m))]
        ['input->m0', 'm0->logits']
    """
    graph.check_mask(mask)
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ShapeError(
            f"prune_dangling takes one (senders, receivers) bool mask; got shape {tuple(mask.shape)} and dtype "
            f"{mask.dtype}. Convert a float mask with mask != 0; prune a stack of masks one at a time."
        )
    kept = mask & graph.edge_mask.to(mask.device)  # (S, R)
    H = graph.n_heads

    # forward: reached[s] = some kept path runs from input into one of sender s's receivers
    reached = torch.zeros(graph.n_senders, dtype=torch.bool, device=mask.device)  # (S,)
    reached[0] = True
    for layer in range(graph.n_layers):
        q0 = graph.head_receiver(layer, 0, "q")
        into_qkv = (kept[:, q0 : q0 + 3 * H] & reached[:, None]).any(0)  # (3H,)
        h0 = graph.head_sender(layer, 0)
        reached[h0 : h0 + H] = into_qkv.view(3, H).any(0)
        # after this layer's heads: in sequential blocks the MLP reads them
        reached[graph.mlp_sender(layer)] = (kept[:, graph.mlp_receiver(layer)] & reached).any()

    # backward: alive[r] = receiver r's node has a kept path on to logits
    alive = torch.zeros(graph.n_receivers, dtype=torch.bool, device=mask.device)  # (R,)
    alive[graph.logits_receiver] = True
    for layer in reversed(range(graph.n_layers)):
        # the MLP first: in sequential blocks this layer's heads write into it
        alive[graph.mlp_receiver(layer)] = (kept[graph.mlp_sender(layer)] & alive).any()
        h0 = graph.head_sender(layer, 0)
        heads_alive = (kept[h0 : h0 + H] & alive[None, :]).any(1)  # (H,)
        q0 = graph.head_receiver(layer, 0, "q")
        alive[q0 : q0 + 3 * H] = heads_alive.repeat(3)  # q, k, v of head h share the head's fate

    out = kept & alive[None, :]
    if from_input:
        out &= reached[:, None]
    return out


# --- ranking and cuts ----------------------------------------------------------------------------------------
def edge_ranking(graph: Graph | Tensor, scores: Tensor, *, absolute: bool = False) -> Tensor:
    """Flat indices (into ``S * R``) of the existing edges, best score first, untested (NaN) edges last.

    The one owner of the ranking rule; every cut (:func:`top_n`, :func:`top_fraction`, :func:`above_threshold`,
    :func:`smallest_faithful`, the cut of ``discover``, CPR/CMD's top-k circuits, the explorer's slider) ranks
    through it. A NaN score means the edge was never tested or scored (exact scoring with ``candidates=``, ACDC
    edges of dead nodes): such edges come after every tested edge, under the signed and the absolute ranking
    alike, in position order. Ties are broken by position (stable sort), so the first ``k`` of the ranking are
    nested in the first ``k + 1``. Only existing edges are ranked, even against ``-inf`` scores.

    Args:
        graph: the model's graph, or its ``(S, R)`` bool edge mask (``graph.edge_mask``).
        scores: ``(S, R)`` scores, NaN for untested edges; entries outside the edges are ignored.
        absolute: rank by ``|score|`` (MIB's CMD) instead of the signed score (CPR).

    Returns:
        ``(E,)`` long tensor on ``scores``' device, ``E`` = number of edges.

    Raises:
        ShapeError: shapes differ, or the edge mask is not bool or empty.

    Example:
        >>> s = torch.tensor([[3.0, -5.0], [float("nan"), 3.0]])
        >>> edge_ranking(torch.ones(2, 2, dtype=torch.bool), s).tolist()
        [0, 3, 1, 2]
        >>> edge_ranking(torch.ones(2, 2, dtype=torch.bool), s, absolute=True).tolist()
        [1, 0, 3, 2]
    """
    exists, key = _ranking_key(graph, scores, absolute)
    flat, exists = key.flatten(), exists.flatten()  # (S*R,)
    untested = torch.isnan(flat)
    tested = (exists & ~untested).nonzero().squeeze(1)  # (E_tested,)
    ranked = tested[torch.argsort(flat[tested], descending=True, stable=True)]
    return torch.cat([ranked, (exists & untested).nonzero().squeeze(1)])


def top_n(graph: Graph, scores: Tensor, n: int, *, absolute: bool = False) -> Tensor:
    """The ``n`` best-scoring edges (ties by position, see :func:`edge_ranking`).

    Args:
        graph: the model's graph.
        scores: ``(S, R)`` scores; entries outside ``graph.edge_mask`` are ignored.
        n: number of edges to keep, an int in ``1 .. graph.n_edges``.
        absolute: rank by ``|score|``.

    Returns:
        ``(S, R)`` bool mask with exactly ``n`` existing edges, on ``scores``' device.

    Raises:
        ConfigError: ``n`` out of range or not an int.
        ShapeError: see :func:`edge_ranking`.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> s = torch.arange(g.n_senders * g.n_receivers, dtype=torch.float).view(g.n_senders, g.n_receivers)
        >>> [e.name for e in g.edges_of(top_n(g, s, 2))]
        ['a0.h0->logits', 'm0->logits']
    """
    _check_count(n, graph.n_edges)
    return _first(edge_ranking(graph, scores, absolute=absolute), n, scores)


def top_fraction(graph: Graph, scores: Tensor, fraction: float, *, absolute: bool = False) -> Tensor:
    """The top ``fraction`` of existing edges: ``max(1, round(fraction * graph.n_edges))`` of them.

    Args:
        graph: the model's graph.
        scores: ``(S, R)`` scores; entries outside ``graph.edge_mask`` are ignored.
        fraction: in (0, 1] (MIB uses 0.001 .. 1).
        absolute: rank by ``|score|``.

    Returns:
        ``(S, R)`` bool mask on ``scores``' device.

    Raises:
        ConfigError: ``fraction`` outside (0, 1].
        ShapeError: see :func:`edge_ranking`.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)  # 8 edges
        >>> int(top_fraction(g, torch.zeros(g.n_senders, g.n_receivers), 0.5).sum())
        4
    """
    return _first(edge_ranking(graph, scores, absolute=absolute), n_of_fraction(fraction, graph.n_edges), scores)


def above_threshold(graph: Graph, scores: Tensor, threshold: float, *, absolute: bool = False) -> Tensor:
    """The existing edges whose score (or ``|score|``) is strictly above ``threshold``; untested (NaN) edges never.

    Args:
        graph: the model's graph.
        scores: ``(S, R)`` scores; entries outside ``graph.edge_mask`` are ignored.
        threshold: a real number (not NaN); ``-inf`` keeps every edge.
        absolute: compare ``|score|``.

    Returns:
        ``(S, R)`` bool mask on ``scores``' device; may be empty.

    Raises:
        ConfigError: ``threshold`` is not a real number.
        ShapeError: see :func:`edge_ranking`.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> s = torch.zeros(g.n_senders, g.n_receivers)
        >>> s[g.edge_index("input->logits")] = -2.0
        >>> int(above_threshold(g, s, 1.0).sum()), int(above_threshold(g, s, 1.0, absolute=True).sum())
        (0, 1)
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise ConfigError(f"threshold must be a real number (not NaN); got {threshold!r}")
    exists, key = _ranking_key(graph, scores, absolute)
    return exists & (key > threshold)


def n_of_fraction(fraction: float, n_edges: int) -> int:
    """Number of edges in the top ``fraction`` of ``n_edges``: ``max(1, round(fraction * n_edges))``.

    Example:
        >>> n_of_fraction(0.001, 32491), n_of_fraction(0.00001, 32491)
        (32, 1)
    """
    ok = not isinstance(fraction, bool) and isinstance(fraction, numbers.Real) and 0 < fraction <= 1
    if not ok:
        raise ConfigError(f"fractions of the edges must lie in (0, 1]; got {fraction!r}")
    return max(1, round(fraction * n_edges))


# --- the smallest circuit that reaches a target faithfulness -------------------------------------------------
@dataclass(frozen=True, eq=False)
class TargetResult:
    """The outcome of :func:`smallest_faithful`.

    Attributes:
        mask: ``(S, R)`` bool, the circuit (pruned if pruning was on). Always one that was probed.
        k: number of top-ranked edges it was cut from (before pruning).
        faithfulness: its faithfulness, as the caller's callable returned it.
        reached: whether it reaches the target; False only when even the largest circuit (``k = hi``) falls
            short, in which case ``mask`` is that largest circuit.
        probes: every probe in order: ``{"k", "n_edges_after_prune", "faithfulness"}``.
        message: one line saying what was found.
    """

    mask: Tensor
    k: int
    faithfulness: float
    reached: bool
    probes: list[dict[str, Any]]
    message: str

    @property
    def n_edges(self) -> int:
        """Edges in :attr:`mask`."""
        return int(self.mask.sum())


def smallest_faithful(
    graph: Graph,
    scores: Tensor,
    faithfulness: Callable[[Tensor], float],
    target: float,
    *,
    absolute: bool = False,
    prune: bool = True,
    from_input: bool = True,
    lo: int = 1,
    hi: int | None = None,
    first: int = 16,
    on_probe: Callable[[dict[str, Any]], None] | None = None,
) -> TargetResult:
    """The smallest top-``k`` circuit whose faithfulness reaches ``target``, by bisection over ``k``.

    The circuit of ``k`` is the top ``k`` edges of :func:`edge_ranking`, then :func:`prune_dangling` when
    ``prune``. ``k`` starts at ``first`` and doubles until a circuit reaches the target (small circuits are
    the cheap ones to evaluate); if even ``k = hi`` falls short, it is returned with ``reached=False``. Then
    bisection keeps an interval ``(fail, pass]`` assuming faithfulness grows with ``k``. When it does not, the
    answer may not be the smallest passing ``k``, but it is always a probed circuit that reached the target, and
    the next smaller probe, when there is one, fell short. Costs about ``2 log2(k / first) + log2(first)`` calls
    of ``faithfulness`` for an answer ``k``.

    Args:
        graph: the model's graph.
        scores: ``(S, R)`` edge scores.
        faithfulness: maps a ``(S, R)`` bool circuit to a float, e.g. MIB's ``(m(C) - m(empty)) / (m(N) -
            m(empty))`` from an exact patched forward (REFERENCE §6).
        target: the faithfulness to reach, a float in (0, 1].
        absolute: rank by ``|score|``.
        prune: prune dangling edges from each circuit before measuring it.
        from_input: passed to :func:`prune_dangling`; True is exact only for resample ablation, use False for
            mean or zero ablation.
        lo: smallest ``k`` considered (assumed failing below it), ``>= 1``.
        hi: largest ``k`` considered, ``<= graph.n_edges`` (default: all edges).
        first: the first ``k`` probed (clamped to ``lo..hi``).
        on_probe: called after each probe with its record (for progress bars).

    Returns:
        a :class:`TargetResult`.

    Raises:
        ConfigError: ``target`` outside (0, 1], bad ``lo`` / ``hi``, or ``faithfulness`` returned NaN.
        ShapeError: see :func:`edge_ranking`.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)  # 8 edges
        >>> s = torch.rand(g.n_senders, g.n_receivers)
        >>> res = smallest_faithful(g, s, lambda m: int(m.sum()) / g.n_edges, 0.5, prune=False)
        >>> res.k, res.reached, [p["k"] for p in res.probes]
        (4, True, [8, 4, 2, 3])
    """
    hi = _check_search(graph, target, lo, hi)
    order = edge_ranking(graph, scores, absolute=absolute)  # (E,)
    probes: list[dict[str, Any]] = []
    circuits: dict[int, tuple[Tensor, float]] = {}

    def probe(k: int) -> bool:
        mask = _first(order, k, scores)
        if prune:
            mask = prune_dangling(graph, mask, from_input=from_input)
        f = float(faithfulness(mask))
        if math.isnan(f):
            raise ConfigError(
                f"faithfulness returned NaN for the top {k} edges; it must return a number "
                "(NaN usually means m(full) == m(empty): the task's metric does not separate clean from corrupted)"
            )
        record = {"k": k, "n_edges_after_prune": int(mask.sum()), "faithfulness": f}
        probes.append(record)
        circuits[k] = (mask, f)
        if on_probe is not None:
            on_probe(record)
        return f >= target

    passing, reached = gallop_bisect(probe, lo, hi, first)
    if not reached:
        mask, f = circuits[hi]
        message = (
            f"even the top {hi} edges reach faithfulness {f:.4g} < target {target:g}; "
            "no circuit of this ranking reaches the target"
        )
        return TargetResult(mask, hi, f, False, probes, message)
    mask, f = circuits[passing]
    message = (
        f"the top {passing} of {graph.n_edges} edges ({int(mask.sum())} after pruning) reach faithfulness "
        f"{f:.4g} >= target {target:g} ({len(probes)} probes)"
    )
    return TargetResult(mask, passing, f, True, probes, message)


def gallop_bisect(passes: Callable[[int], bool], lo: int, hi: int, first: int) -> tuple[int, bool]:
    """The search of every target cut: ``k`` doubles from ``first`` (clamped to ``lo..hi``) until ``passes(k)``,
    then bisection keeps ``(failing, passing]``; returns ``(k, True)`` for the probed passing ``k`` it ends on, or
    ``(hi, False)`` when even ``hi`` fails. Galloping from small circuits: they are the cheap ones to evaluate (most
    heads are dead and skipped) and the answer is usually small.

    Example:
        >>> seen = []
        >>> gallop_bisect(lambda k: seen.append(k) or k >= 5, 1, 100, 2), seen
        ((5, True), [2, 4, 8, 6, 5])
    """
    failing, k = lo - 1, min(hi, max(lo, first))
    while not passes(k):
        failing = k
        if k == hi:
            return hi, False
        k = min(hi, 2 * k)
    passing = k  # invariant: passing was probed and passed; failing was probed and failed (or is below lo)
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if passes(mid):
            passing = mid
        else:
            failing = mid
    return passing, True


def _check_search(graph: Graph, target: Any, lo: Any, hi: Any) -> int:
    """Refuse a bad target or range of :func:`smallest_faithful`; returns ``hi`` (default: every edge)."""
    bad_target = isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < float(target) <= 1
    if bad_target:
        raise ConfigError(f"target must be a float in (0, 1] (a faithfulness to reach); got {target!r}")
    hi = graph.n_edges if hi is None else hi
    _check_count(lo, graph.n_edges, name="lo")
    _check_count(hi, graph.n_edges, name="hi")
    if lo > hi:
        raise ConfigError(f"lo must be at most hi; got lo={lo}, hi={hi}")
    return hi


def probes_left(probes: list[dict[str, Any]], target: float, lo: int = 1) -> int:
    """An estimate of the probes :func:`smallest_faithful` still makes after ``probes`` (for progress bars).

    Example:
        >>> probes_left([{"k": 16, "faithfulness": 0.1}, {"k": 32, "faithfulness": 0.9}], 0.8)
        4
    """
    passing = [p["k"] for p in probes if p["faithfulness"] >= target]
    if not passing:  # still galloping: one more doubling, then bisection below it
        k = probes[-1]["k"] if probes else lo
        return 1 + math.ceil(math.log2(max(2, k)))
    best = min(passing)
    failing = max([p["k"] for p in probes if p["faithfulness"] < target and p["k"] < best], default=lo - 1)
    return math.ceil(math.log2(max(1, best - failing)))


# --- helpers -------------------------------------------------------------------------------------------------
def _ranking_key(graph: Graph | Tensor, scores: Tensor, absolute: bool) -> tuple[Tensor, Tensor]:
    """``(exists, key)``: the ``(S, R)`` bool edge mask and float64 ranking key (NaN where untested), both on
    ``scores``' device."""
    if not isinstance(scores, Tensor):
        raise ShapeError(f"scores must be a tensor; got {type(scores).__name__}")
    if isinstance(graph, Graph):
        exists = graph.edge_mask
        if tuple(scores.shape) != tuple(exists.shape):
            raise ShapeError(
                f"scores must have shape (senders, receivers) = {tuple(exists.shape)}; got {tuple(scores.shape)}"
            )
    else:
        exists = graph
        if not isinstance(exists, Tensor) or exists.dtype != torch.bool:
            found = exists.dtype if isinstance(exists, Tensor) else type(exists).__name__
            raise ShapeError(f"expected a Graph or its bool edge mask (graph.edge_mask); got {found}")
        if scores.shape != exists.shape:
            raise ShapeError(f"scores has shape {tuple(scores.shape)} but edge_mask has {tuple(exists.shape)}")
        if not bool(exists.any()):
            raise ShapeError("edge_mask has no edge")
    exists = exists.to(scores.device)
    return exists, (scores.abs() if absolute else scores).double()  # (S, R); NaN stays NaN (untested)


def _first(order: Tensor, k: int, like: Tensor) -> Tensor:
    """``(S, R)`` bool mask, shaped like ``like``, of the first ``k`` flat indices of ``order``."""
    flat = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    flat[order[:k]] = True
    return flat.view(like.shape)


def _check_count(n: int, n_edges: int, name: str = "n") -> None:
    check_int(n, "n_edges" if name == "n" else name, minimum=1, maximum=n_edges, what="top-ranked edges kept")
