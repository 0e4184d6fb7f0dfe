"""The validated cut of a scoring method: its circuit's size is chosen on prompts the scores never saw.

A cut chosen as "the smallest top-k whose faithfulness reaches the target" on the prompts that produced the
scores is optimistic exactly at that k (REFERENCE §8). The rule here, the default of ``discover(..., target=)``
for every method of kind ``SCORES``:

1. **Folds.** The discovery prompts are shuffled with a fixed seed and dealt round-robin into ``K = min(4, n // 2)``
   folds (at least 2 prompts each; ``n >= 4``). Shuffling matters: built-in tasks alternate their templates (IOI's
   ABBA / BABA), and folds by position would give each ranking only one of them.
2. **Cross-fitting.** For each fold, the method scores every edge on all the *other* folds' prompts; that ranking
   cuts circuits that are checked on this fold's prompts, so every prompt's metric in the check comes from a ranking
   that did not see it (each ranking sees ``(K - 1) / K`` of the prompts, close to the final one).
3. **Validation faithfulness** of a size ``k``: pooled over all prompts, ``(mean C - mean empty) / (mean N -
   mean empty)``, where ``C`` on a prompt is the top-``k`` circuit (pruned) of the ranking that left its fold out;
   with its bootstrap interval (:mod:`circuitfind.selection.bootstrap`).
4. **The crossing.** ``k0`` is the smallest probed size whose statistic reaches the target **and stays at or above
   it at every larger size probed**: galloping doubles ``k`` from ``first`` until ``confirm`` (2) consecutive sizes
   pass, then bisection below the first of them (to ``tol``, 5%). The statistic is the point estimate, or with
   ``confidence=c`` the bootstrap lower bound at confidence ``c``.
5. **The margin.** The size is ``k = margin * k0`` (``margin`` 2). ``k0`` lies on the steepest part of the curve,
   where the faithfulness of another prompt set swings most with the prompts: measured on the default model
   (``benchmarks/validate_selection.py``), the held-out faithfulness at ``k0`` was 0.73-0.87 for a validation
   estimate of 0.81 (two of IOI, greater-than and a capitals task below 0.8), and at ``2 k0`` 0.98-1.03 on the same
   held-out curves, still at most 0.8% of the edges.
6. **The circuit** is the top ``k`` of the ranking computed on *all* discovery prompts, dangling edges pruned;
   its faithfulness on all discovery prompts is reported beside the validation figure of size ``k``.

Requiring the target at the larger probed sizes too keeps a lucky spike of a noisy curve (few prompts, the steep
part of the curve) from choosing the size, and the fold rankings, each from half the prompts, are weaker than the
final one, so the size they need is, if anything, generous.

**Band** (``band=(lo, hi)``, two-sided faithfulness): when the validation faithfulness at ``k`` exceeds ``hi``
(the circuit leaves out edges that work against the behaviour), the ``m`` most negative excluded edges are added
back (:func:`add_back`; edges that pruning would drop again are skipped), ``m`` chosen the same way (smallest
``m`` whose validation faithfulness is at most ``hi``; galloping from 1, then bisection; at most
``max_add`` edges), and the final circuit gets its own ``m`` most negative excluded edges.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, check_int
from circuitfind.graph import Graph
from circuitfind.metrics import Metric
from circuitfind.problem import Faithfulness, Problem
from circuitfind.selection.bootstrap import faithfulness_interval, lower_bound_level
from circuitfind.selection.cuts import edge_ranking, prune_dangling

__all__ = [
    "Fold",
    "PromptValues",
    "SelectOptions",
    "add_back",
    "band_on_train",
    "check_band",
    "circuit_at",
    "complement",
    "fold_indices",
    "nearest_to_band",
    "smallest_stable",
    "validated_cut",
]

MAX_FOLDS = 4
FOLD_SEED = 0


@dataclass(frozen=True)
class SelectOptions:
    """How the validated cut chooses a size.

    Attributes:
        target: the faithfulness to reach, in (0, 1].
        confidence: None: the point estimate must reach ``target``; a number in (0.5, 1): its bootstrap lower
            bound at that confidence must.
        upper: the band's upper end (None: no upper bound).
        first: the first size probed.
        confirm: consecutive passing sizes that end the galloping.
        tol: bisection stops once the failing and passing sizes are within this fraction of the passing one.
        margin: the size returned is ``margin`` times the smallest size that reaches the target (capped at every
            edge), off the steep part of the curve (module docstring); 1 returns that size itself.
        max_add: most edges the band adds back.
        n_boot: bootstrap resamples of every probe's interval.
        seed: their seed.
    """

    target: float
    confidence: float | None = None
    upper: float | None = None
    first: int = 16
    confirm: int = 2
    tol: float = 0.05
    margin: float = 2.0
    max_add: int = 1024
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.confidence is not None:
            lower_bound_level(self.confidence)  # raises on a bad value
        if isinstance(self.margin, bool) or not isinstance(self.margin, numbers.Real) or not self.margin >= 1:
            raise ConfigError(f"margin must be a number >= 1; got {self.margin!r}")
        for name in ("first", "confirm", "max_add"):
            check_int(getattr(self, name), name)


def check_band(band: Any, target: float | None) -> tuple[float, float] | None:
    """``band`` as ``(lo, hi)`` with ``0 < lo <= 1 < hi``, agreeing with ``target`` when both are given.

    Example:
        >>> check_band((0.8, 1.25), None), check_band(None, 0.8)
        ((0.8, 1.25), None)
    """
    if band is None:
        return None
    ok = isinstance(band, (tuple, list)) and len(band) == 2
    ok = ok and all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in band)
    if not ok or not 0 < band[0] <= 1 < band[1] or math.isnan(band[1]):
        raise ConfigError(
            f"band must be a pair (lo, hi) of faithfulness values with 0 < lo <= 1 < hi, e.g. (0.8, 1.25); got {band!r}"
        )
    if target is not None and float(target) != float(band[0]):
        raise ConfigError(f"band[0] is the target: pass band=({target}, {band[1]}) or drop target; got {band!r}")
    return float(band[0]), float(band[1])


def fold_indices(n: int) -> list[Tensor]:
    """The folds of ``n`` discovery prompts: a seeded shuffle dealt round-robin into ``min(4, n // 2)`` folds.

    Raises:
        ConfigError: fewer than 4 prompts (at least two folds of 2).

    Example:
        >>> folds = fold_indices(10)
        >>> [len(f) for f in folds], sorted(torch.cat(folds).tolist()) == list(range(10))
        ([3, 3, 2, 2], True)
    """
    fix = "Give at least 4 discovery prompts, or pass select='train' (the size chosen on the scoring prompts)"
    what = "discovery prompts; the validated cut splits them into two folds of 2 at least"
    check_int(n, "the prompt count", minimum=4, what=what, fix=fix)
    k = min(MAX_FOLDS, n // 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(FOLD_SEED))
    return [perm[j::k].sort().values for j in range(k)]


def complement(n: int, fold: Tensor) -> Tensor:
    """The prompts of ``0..n-1`` outside ``fold`` (what scores the ranking checked on ``fold``).

    Example:
        >>> complement(5, torch.tensor([1, 3])).tolist()
        [0, 2, 4]
    """
    keep = torch.ones(n, dtype=torch.bool)
    keep[fold] = False
    return keep.nonzero().squeeze(1)


class PromptValues:
    """The metric on each of a problem's prompts, for circuits given as ``(S, R)`` masks: the problem's one exact
    evaluator (:class:`circuitfind.problem.Faithfulness` with per-prompt values), one mask per call.

    ``full`` and ``empty`` hold the values with every edge kept and every edge ablated. ``metric``: the bound metric
    of the values (default the problem's own, ``problem.metric``).
    """

    def __init__(self, problem: Problem, metric: Metric | None = None) -> None:
        if metric is not None and metric is not problem.metric:
            problem = dataclasses.replace(problem, metric=metric)
        self.problem, self.metric = problem, problem.metric
        self.ev = Faithfulness(problem, detail=True)
        ref = self.ev.references()
        assert ref.per_prompt is not None
        self.full, self.empty = ref.per_prompt[0], ref.per_prompt[1]

    @property
    def calls(self) -> int:
        """Masks evaluated, the two references included."""
        return self.ev.calls

    def __call__(self, mask: Tensor) -> Tensor:  # (S, R) -> (B,) float64
        values = self.ev.evaluate([mask]).per_prompt
        assert values is not None
        return values[0]


# --- circuits of a ranking -----------------------------------------------------------------------------------
def circuit_at(graph: Graph, scores: Tensor, order: Tensor, k: int, m: int = 0, *, from_input: bool) -> Tensor:
    """The top ``k`` edges of ``order`` with dangling edges pruned, then ``m`` negative edges added back.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> s = torch.zeros(g.n_senders, g.n_receivers)
        >>> s[g.edge_index("input->m0")], s[g.edge_index("m0->logits")] = 2.0, 1.0
        >>> mask = circuit_at(g, s, edge_ranking(g, s), 2, from_input=True)
        >>> [e.name for e in g.edges_of(mask)]
        ['input->m0', 'm0->logits']
    """
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    flat[order[:k].cpu()] = True
    mask = prune_dangling(graph, flat.view(scores.shape), from_input=from_input)
    return add_back(graph, mask, scores, m, from_input=from_input) if m else mask


def _owners(graph: Graph) -> Tensor:
    """``(R,)`` the sender index of the node that owns each receiver (its head or MLP); -1 for ``logits``."""
    out = []
    for rec in graph.receivers:
        layer = rec.node.layer
        if layer >= graph.n_layers:
            out.append(-1)
        else:
            out.append(graph.mlp_sender(layer) if rec.channel is None else graph.head_sender(layer, rec.node.head))
    return torch.tensor(out)


def negative_excluded(graph: Graph, mask: Tensor, scores: Tensor) -> Tensor:
    """Flat indices of the edges outside ``mask`` with a negative score, most negative first (NaN skipped; ties
    by position, as :func:`~circuitfind.selection.edge_ranking` ranks ``-scores``)."""
    s = scores.detach().cpu().double()
    out = graph.edge_mask & ~mask.cpu().bool() & (s < 0)  # (S, R); NaN compares False
    if not bool(out.any()):
        return torch.zeros(0, dtype=torch.long)
    return edge_ranking(out, -s)


def add_back(graph: Graph, mask: Tensor, scores: Tensor, m: int, *, from_input: bool) -> Tensor:
    """``mask`` (pruned) with up to ``m`` of the most negative excluded edges added back.

    Candidates are taken most negative first, each once (the loop is bounded by the number of negative edges);
    a candidate that :func:`~circuitfind.selection.prune_dangling` would drop again (its receiver's node reaches
    no logits, or, with ``from_input``, its sender is reached from no input) is skipped. On a pruned mask a node
    is reached exactly when it has a kept input edge and alive exactly when it has a kept output edge, so each
    test is a lookup; an added edge makes its receiver's node reached and its sender alive.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> s = torch.zeros(g.n_senders, g.n_receivers)
        >>> s[g.edge_index("input->logits")], s[g.edge_index("a0.h0->logits")] = -2.0, -3.0
        >>> grown = add_back(g, g.mask_of(["input->m0", "m0->logits"]), s, 2, from_input=True)
        >>> [e.name for e in g.edges_of(grown)]  # a0.h0 has no input edge: its edge is skipped
        ['input->m0', 'input->logits', 'm0->logits']
    """
    mask = prune_dangling(graph, mask.cpu().bool(), from_input=from_input)
    owner = _owners(graph)  # (R,)
    owned = owner >= 0
    alive = torch.ones(graph.n_receivers, dtype=torch.bool)  # receiver's node has a kept output edge
    alive[owned] = mask[owner[owned]].any(1)
    reached = torch.zeros(graph.n_senders, dtype=torch.bool)  # sender has a kept input edge (input always)
    reached[0] = True
    into = mask.any(0)  # (R,)
    reached[owner[owned & into]] = True
    R, added = graph.n_receivers, 0
    for i in negative_excluded(graph, mask, scores).tolist():
        if added >= m:
            break
        s, r = divmod(i, R)
        if not alive[r] or (from_input and not reached[s]):
            continue
        mask[s, r] = True
        added += 1
        if owner[r] >= 0:
            reached[owner[r]] = True
        alive[owner == s] = True
    return mask


# --- the search ----------------------------------------------------------------------------------------------
def smallest_stable(
    passes: Callable[[int], bool], *, lo: int, hi: int, first: int, confirm: int, tol: float = 0.0
) -> tuple[int, bool]:
    """The smallest probed size that passes while every larger probed size passes too.

    Galloping doubles the size from ``first`` until ``confirm`` consecutive sizes pass (or ``hi`` is reached);
    bisection then searches below the first of that run, keeping the invariant that every probe at or above the
    answer passed, until the failing and passing sizes are adjacent or, with ``tol``, within ``tol`` times the passing
    size of each other. Returns ``(size, found)``; ``(hi, False)`` when not even ``hi`` passes.

    Example:
        >>> curve = {8: 0.5, 16: 0.9, 32: 0.7, 64: 0.85, 128: 0.9}  # a spike at 16 that does not hold
        >>> smallest_stable(lambda k: curve.get(k, 0.8) >= 0.8, lo=1, hi=128, first=8, confirm=2)
        (33, True)
    """
    failing, k, run, start = lo - 1, min(hi, max(lo, first)), 0, None
    while True:
        if passes(k):
            run, start = run + 1, (start if run else k)
        else:
            run, start, failing = 0, None, k
        if run >= confirm or k == hi:
            break
        k = min(hi, 2 * k)
    if start is None:
        return hi, False
    passing = start
    while passing - failing > max(1.0, tol * passing):
        mid = (failing + passing) // 2
        if passes(mid):
            passing = mid
        else:
            failing = mid
    return passing, True


@dataclass(frozen=True)
class Fold:
    """One fold of the cross-fit: a ranking scored on the other folds' prompts, checked on this fold's."""

    scores: Tensor  # (S, R), from the other folds
    order: Tensor  # (E,) its ranking
    values: PromptValues  # on this fold's prompts


class _CrossFit:
    """Validation faithfulness of a size ``(k, m)``, pooled over the folds' check prompts; every probe kept."""

    def __init__(self, graph: Graph, folds: list[Fold], opts: SelectOptions, from_input: bool) -> None:
        self.graph, self.folds, self.opts, self.from_input = graph, folds, opts, from_input
        self.full = torch.cat([f.values.full for f in folds])
        self.empty = torch.cat([f.values.empty for f in folds])
        self.probes: list[dict[str, Any]] = []
        self.seen: dict[tuple[int, int], dict[str, Any]] = {}
        self.level = 0.95 if opts.confidence is None else lower_bound_level(opts.confidence)
        self.crossing = 0  # the smallest size that reaches the target (set by the search)

    def probe(self, k: int, m: int = 0) -> dict[str, Any]:
        if (k, m) in self.seen:
            return self.seen[(k, m)]
        masks = [circuit_at(self.graph, f.scores, f.order, k, m, from_input=self.from_input) for f in self.folds]
        values = torch.cat([f.values(mask) for f, mask in zip(self.folds, masks, strict=True)])
        span = float(self.full.mean() - self.empty.mean())
        f = float(values.mean() - self.empty.mean()) / span if span else math.nan
        if math.isnan(f):
            raise ConfigError(
                "the validation faithfulness is NaN: m(full) == m(empty) on the validation prompts (the metric does "
                "not separate clean from corrupted there); use more prompts or select='train'"
            )
        o = self.opts
        ci = faithfulness_interval(values, self.full, self.empty, n_boot=o.n_boot, level=self.level, seed=o.seed)
        record = {
            "k": k,
            "m": m,
            "n_edges_after_prune": [int(mask.sum()) for mask in masks],
            "faithfulness": f,
            "ci": [ci.lo, ci.hi],
            "ci_level": ci.level,
            "decision": f if o.confidence is None else ci.lo,
            "validation_faithfulness": f,  # the same figures under the names the report reads
            "validation_ci": [ci.lo, ci.hi],
        }
        self.probes.append(record)
        self.seen[(k, m)] = record
        return record


def _choose(cf: _CrossFit, on_probe: Callable[[dict], None] | None) -> tuple[int, int, bool, bool | None]:
    """``(k, m, reached, in_band)`` chosen on the cross-fit (``in_band`` None without an upper bound)."""
    o, g = cf.opts, cf.graph

    def passes_k(k: int) -> bool:
        rec = cf.probe(k)
        if on_probe is not None:
            on_probe(rec)
        return rec["decision"] >= o.target

    k, reached = smallest_stable(passes_k, lo=1, hi=g.n_edges, first=o.first, confirm=o.confirm, tol=o.tol)
    cf.crossing = k
    if reached:
        k = min(g.n_edges, math.ceil(o.margin * k))
    if o.upper is None or cf.probe(k)["faithfulness"] <= o.upper:
        return k, 0, reached, None if o.upper is None else True
    n_neg = min(
        o.max_add,
        max(
            len(negative_excluded(g, circuit_at(g, f.scores, f.order, k, from_input=cf.from_input), f.scores))
            for f in cf.folds
        ),
    )
    if n_neg == 0:
        return k, 0, reached, False
    m, in_band = smallest_stable(
        lambda m: cf.probe(k, m)["faithfulness"] <= o.upper, lo=1, hi=n_neg, first=1, confirm=1
    )
    if not in_band:  # no m brings it under the band: the probed m nearest to it
        tried = {p["m"]: p["faithfulness"] for p in cf.probes if p["k"] == k}
        m = nearest_to_band(tried, o.target, o.upper)
    return k, m, reached, in_band


def _rule(opts: SelectOptions) -> str:
    stat = "faithfulness" if opts.confidence is None else f"{opts.confidence:g}-confidence lower bound"
    return (
        f"{opts.margin:g} x the smallest k whose cross-fitted validation {stat} is >= {opts.target:g} at k and at "
        f"every larger probed size (galloping x2 from {opts.first} to {opts.confirm} passing sizes, then bisection "
        f"to {opts.tol:.0%})"
    )


def validated_cut(
    graph: Graph,
    scores: Tensor,
    faithfulness: Callable[[Tensor], float],
    folds: list[Fold],
    opts: SelectOptions,
    *,
    absolute: bool = False,
    from_input: bool = True,
    on_probe: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The circuit of the validated cut (module docstring) and what the cut did, for ``circuit.stats``.

    Args:
        graph: the model's graph.
        scores: ``(S, R)`` the method's scores on all discovery prompts (NaN: rank last).
        faithfulness: a mask's faithfulness on all discovery prompts (reported, never used to choose).
        folds: the cross-fit, one :class:`Fold` per fold (built by :func:`circuitfind.discover`).
        opts: target, confidence, band.
        absolute: rank by ``|score|``.
        from_input: prune edges no input reaches (exact under resample ablation only).
        on_probe: called with each validation probe (progress bars).

    Returns:
        ``(mask, stats)``; ``stats`` has ``k``, ``m`` (edges added back), ``faithfulness`` (on all discovery
        prompts), ``reached`` (the validation statistic reached the target), ``select``, and ``validation``:
        ``{faithfulness, ci, ci_level, n_prompts, folds, confidence, rule, probes}``.

    Example:
        >>> circuit = discover(pm, task, method="eap", target=0.8, metric="logit_diff")  # doctest: +SKIP
        >>> circuit.stats["validation"]["faithfulness"]  # doctest: +SKIP
    """
    cf = _CrossFit(graph, folds, opts, from_input)
    k, m, reached, in_band = _choose(cf, on_probe)
    ranked = scores.detach().cpu().double()  # NaN: last in edge_ranking, skipped by negative_excluded
    mask = circuit_at(graph, ranked, edge_ranking(graph, ranked, absolute=absolute), k, m, from_input=from_input)
    chosen = cf.probe(k, m)
    stats: dict[str, Any] = {
        "select": "validate",
        "k": k,
        "k_crossing": cf.crossing,
        "margin": opts.margin,
        "m": m,
        "faithfulness": float(faithfulness(mask)),
        "reached": reached,
        "validation": {
            "faithfulness": chosen["faithfulness"],
            "ci": chosen["ci"],
            "ci_level": chosen["ci_level"],
            "n_prompts": int(cf.full.numel()),
            "folds": len(folds),
            "confidence": opts.confidence,
            "rule": _rule(opts),
            "probes": cf.probes,
        },
        "probes": cf.probes,
    }
    if in_band is not None:
        stats["band"] = [opts.target, opts.upper]
        stats["in_band"] = bool(in_band and chosen["faithfulness"] >= opts.target)
    if not reached:
        stats["note"] = (
            f"no size reaches validation faithfulness {opts.target:g} (the largest, every edge, gives "
            f"{chosen['faithfulness']:.4g}); the circuit is the largest probed"
        )
    return mask, stats


def nearest_to_band(f_of_m: dict[int, float], lo: float, hi: float) -> int:
    """The ``m`` whose faithfulness is nearest to ``[lo, hi]`` (0 inside it; ties: the smallest ``m``).

    Example:
        >>> nearest_to_band({0: 1.4, 1: 1.3, 2: 1.1, 4: 1.2}, 0.8, 1.25)
        2
    """
    return min(f_of_m, key=lambda m: (max(lo - f_of_m[m], f_of_m[m] - hi, 0.0), m))


def band_on_train(
    graph: Graph,
    scores: Tensor,
    mask: Tensor,
    faithfulness: Callable[[Tensor], float],
    upper: float,
    *,
    lower: float = 0.0,
    max_add: int = 1024,
    from_input: bool = True,
    probes: list[dict[str, Any]] | None = None,
) -> tuple[Tensor, int, bool]:
    """``select="train"`` with a band: the smallest ``m`` of :func:`add_back` whose faithfulness on the discovery
    prompts is at most ``upper`` (galloping from 1, then bisection; at most ``max_add``); ``lower`` is the band's
    lower end (the target).

    Returns ``(mask, m, in_band)``; ``mask`` unchanged and ``m = 0`` when it is already at most ``upper``. When
    no ``m`` gets there (adding edges need not lower f: the scores are first-order), the probed ``m`` whose
    faithfulness is nearest to ``[lower, upper]`` (:func:`nearest_to_band`), with ``in_band`` False.

    Example:
        >>> g = Graph(n_layers=1, n_heads=1)
        >>> s = torch.zeros(g.n_senders, g.n_receivers)
        >>> s[g.edge_index("input->logits")] = -2.0
        >>> base = g.mask_of(["input->m0", "m0->logits"])
        >>> f = lambda m: 1.5 - 0.5 * int(m[g.edge_index("input->logits")])  # the negative edge brings f to 1
        >>> mask, m, ok = band_on_train(g, s, base, f, 1.25)
        >>> m, ok, int(mask.sum())
        (1, True, 3)
    """
    seen: dict[int, tuple[Tensor, float]] = {}

    def grown(m: int) -> float:
        if m not in seen:
            cand = add_back(graph, mask, scores, m, from_input=from_input)
            seen[m] = (cand, float(faithfulness(cand)))
            if probes is not None:
                probes.append(
                    {"stage": "band", "m": m, "n_edges_after_prune": int(cand.sum()), "faithfulness": seen[m][1]}
                )
        return seen[m][1]

    f0 = float(faithfulness(mask))
    if f0 <= upper:
        return mask, 0, True
    n_neg = min(max_add, len(negative_excluded(graph, mask, scores)))
    if n_neg == 0:
        return mask, 0, False
    m, ok = smallest_stable(lambda m: grown(m) <= upper, lo=1, hi=n_neg, first=1, confirm=1)
    if not ok:
        m = nearest_to_band({0: f0, **{j: f for j, (_, f) in seen.items()}}, lower, upper)
        return (mask if m == 0 else seen[m][0]), m, False
    grown(m)
    return seen[m][0], m, ok
