"""Completeness and minimality of a circuit, as the IOI paper (Wang et al. 2022) defines them (REFERENCE §8).

``F(X \\ K)``: the task metric with the edges of ``X`` kept, the rest ablated (mean ablation by default, as in the
paper), and the nodes ``K`` removed (all their outgoing edges; :class:`~circuitfind.validation.probes.NodeProbes`).

* :func:`completeness`: for subsets ``K`` of the circuit's nodes, the gap ``|F(C \\ K) - F(M \\ K)|`` between
  the circuit ``C`` and the model ``M``: ``K`` empty, every layer's heads, all the MLPs, each class of
  ``classes``, random subsets (each node with probability 1/2), and a greedy search that grows the ``K`` with
  the largest gap one node at a time. A complete circuit has every gap near 0; the largest one is reported.
* :func:`minimality`: for every node ``v``, the largest ``|F(C \\ (K + v)) - F(C \\ K)|`` over ``K`` empty, ``K``
  = every other node, and random ``K``; nodes below ``threshold`` (in units of ``|F(M) - F(empty)|``) do
  nothing the circuit needs, under any ``K`` tried.

Both spend at most ``probes`` masks (each a full patched forward on the prompts) and say how many they used.
Gaps are given raw (metric units) and as ``gap_f``, divided by ``|F(M) - F(empty)|`` (faithfulness units).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from circuitfind.circuit import Circuit
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError
from circuitfind.graph import NodeKind
from circuitfind.tasks import resolve_task
from circuitfind.validation.probes import NodeProbes, check_probes, circuit_nodes

__all__ = ["DEFAULT_PROBES", "MINIMALITY_THRESHOLD", "completeness", "minimality"]

DEFAULT_PROBES = 100
"""Masks each of completeness and minimality may evaluate by default: an estimated 2-3 minutes each on the default
model's IOI prompts on 2 cores (about 1.5 s per mask), a share of the report's 15-minute goal."""
MINIMALITY_THRESHOLD = 0.01
"""A node whose largest effect stays below this fraction of ``|F(M) - F(empty)|`` is listed as not needed."""
GREEDY_POOL = 8  # candidate nodes tried per step of the greedy search


@dataclass(frozen=True)
class _Ctx:
    probes: NodeProbes
    circuit: torch.Tensor  # (S, R) bool
    full: torch.Tensor  # (S, R) bool
    nodes: list[int]
    names: list[str]
    gen: torch.Generator


def _context(model, circuit, task, *, metric, ablation, probes, seed, tokenizer) -> _Ctx:
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer)
    mask = circuit.mask if isinstance(circuit, Circuit) else circuit
    pm.graph.check_mask(mask)
    if metric is None and isinstance(circuit, Circuit):
        metric = circuit.config.get("metric")
    budget = check_probes(probes, least=4)
    np_ = NodeProbes(pm, task, metric=metric, ablation=ablation, budget=budget)
    nodes = circuit_nodes(pm.graph, mask)
    names = [pm.graph.sender_names[s] for s in nodes]
    gen = torch.Generator().manual_seed(int(seed))
    return _Ctx(np_, mask.bool().cpu() & pm.graph.edge_mask, pm.graph.full_mask(), nodes, names, gen)


# --- completeness ------------------------------------------------------------------------------------------------
def completeness(
    model: Any,
    circuit: Circuit | torch.Tensor,
    task: Any,
    *,
    ablation: str = "mean",
    metric: Any = None,
    classes: Mapping[str, Sequence[str]] | None = None,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The IOI paper's completeness test: ``|F(C \\ K) - F(M \\ K)|`` over subsets ``K`` of the circuit's nodes.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name.
        circuit: a :class:`Circuit` or an ``(S, R)`` mask.
        task: its held-out split is used when it has one (else all prompts).
        ablation: ``mean`` (default, as in the paper), ``resample`` or ``zero``.
        metric: default the circuit's discovery metric, else the task's.
        classes: optional ``{class name: [node names]}``, or the IOI head classes
            (:func:`circuitfind.analysis.head_classes`, or its JSON); each class's nodes in the circuit are one ``K``.
        probes: masks this may evaluate (each ``K`` costs two: ``C \\ K`` and ``M \\ K``).
        seed: seed of the random subsets and of the greedy search's candidates.
        tokenizer: for tasks given by name.

    Returns:
        ``{"max_gap", "max_gap_f", "worst": {kind, nodes, f_circuit, f_model, gap, gap_f}, "probes": [...],
        "probes_used", "probe_budget", "metric", "metric_full", "metric_empty", "ablation", ...}``; ``probes``
        lists every ``K`` tried with ``F(C \\ K)`` and ``F(M \\ K)``.

    Example:
        >>> res = completeness(pm, pm.graph.full_mask(), task, probes=40)
        >>> res["max_gap"], res["probes_used"] <= 40
        (0.0, True)
    """
    ctx = _context(model, circuit, task, metric=metric, ablation=ablation, probes=probes, seed=seed,
                   tokenizer=tokenizer)  # fmt: skip
    found: list[dict[str, Any]] = []
    _try(ctx, [("empty", [])] + _groups(ctx, classes), found, cap=ctx.probes.budget // 2)
    n_random = max(0, (ctx.probes.budget - ctx.probes.used) // 3 // 2)
    _try(ctx, [("random", _random_subset(ctx, ctx.nodes)) for _ in range(n_random)], found)
    _greedy(ctx, found)
    worst = max(found, key=lambda p: p["gap"]) if found else None
    return {
        "max_gap": worst["gap"] if worst else 0.0,
        "max_gap_f": worst["gap_f"] if worst else 0.0,
        "worst": worst,
        "n_nodes": len(ctx.nodes),
        "probes": found,
        **ctx.probes.info(),
    }


def _groups(ctx: _Ctx, classes: Mapping[str, Sequence[str]] | None) -> list[tuple[str, list[int]]]:
    """``K`` = every layer's heads in the circuit, all its MLPs, and each class's nodes in it."""
    g = ctx.probes.graph
    by_layer: dict[int, list[int]] = {}
    mlps = []
    for s in ctx.nodes:
        node = g.senders[s]
        if node.kind is NodeKind.MLP:
            mlps.append(s)
        else:
            by_layer.setdefault(node.layer, []).append(s)
    out = []
    for name, members in class_map(classes).items():  # the caller's classes first: they are why it passed them
        picked = [s for s in ctx.nodes if g.sender_names[s] in set(members)]
        if picked:
            out.append((f"class {name}", picked))
    out += [(f"heads of layer {layer}", heads) for layer, heads in sorted(by_layer.items())]
    if mlps:
        out.append(("MLPs", mlps))
    return out


def class_map(classes: Any) -> dict[str, list[str]]:
    """``{class: [node names]}`` from a mapping, a :class:`~circuitfind.analysis.HeadClasses` (its members), or
    the JSON of ``circuitfind heads --classes --json`` (a dict with ``members``).

    Example:
        >>> class_map({"members": {"name_mover": ["a9.h9"], "induction": []}})
        {'name_mover': ['a9.h9'], 'induction': []}
    """
    if classes is None:
        return {}
    if hasattr(classes, "to_dict"):
        classes = classes.to_dict()
    if isinstance(classes, Mapping) and isinstance(classes.get("members"), Mapping):
        classes = classes["members"]
    if not isinstance(classes, Mapping) or not all(isinstance(v, (list, tuple)) for v in classes.values()):
        raise ConfigError(
            "classes must map each class name to a list of node names ({'name_mover': ['a9.h9', ...]}), or be a "
            f"HeadClasses / the JSON of `circuitfind heads --classes --json`; got {type(classes).__name__}"
        )
    return {str(k): [str(n) for n in v] for k, v in classes.items()}


def _random_subset(ctx: _Ctx, pool: list[int]) -> list[int]:
    keep = torch.rand(len(pool), generator=ctx.gen) < 0.5
    return [s for s, k in zip(pool, keep.tolist(), strict=True) if k]


def _try(ctx: _Ctx, sets: list[tuple[str, list[int]]], found: list[dict[str, Any]], cap: int | None = None) -> None:
    """Evaluate ``F(C \\ K)`` and ``F(M \\ K)`` for as many of ``sets`` as the budget (and ``cap``) allow."""
    room = ctx.probes.left if cap is None else min(ctx.probes.left, cap)
    sets = sets[: room // 2]
    if not sets:
        return
    pairs = [(m, k) for _, k in sets for m in (ctx.circuit, ctx.full)]
    vals = ctx.probes.values(pairs)
    for i, (kind, k) in enumerate(sets):
        found.append(_probe_row(ctx, kind, k, vals[2 * i], vals[2 * i + 1]))


def _probe_row(ctx: _Ctx, kind: str, k: list[int], f_c: float, f_m: float) -> dict[str, Any]:
    gap = abs(f_c - f_m)
    span = ctx.probes.span
    names = [ctx.probes.graph.sender_names[s] for s in sorted(k)]
    return {"kind": kind, "nodes": names, "f_circuit": f_c, "f_model": f_m, "gap": gap,
            "gap_f": gap / span if span > 0 else float("nan")}  # fmt: skip


def _greedy(ctx: _Ctx, found: list[dict[str, Any]]) -> None:
    """Grow ``K`` one node at a time, each step adding the candidate (of up to :data:`GREEDY_POOL` drawn) whose
    ``K`` has the largest gap; stops when the budget or the nodes run out."""
    chosen: list[int] = []
    while ctx.probes.left >= 2:
        rest = [s for s in ctx.nodes if s not in chosen]
        if not rest:
            return
        order = torch.randperm(len(rest), generator=ctx.gen).tolist()
        pool = [rest[i] for i in order[: min(GREEDY_POOL, ctx.probes.left // 2)]]
        step: list[dict[str, Any]] = []
        _try(ctx, [("greedy", [*chosen, v]) for v in pool], step)
        if not step:
            return
        best = max(range(len(step)), key=lambda i: step[i]["gap"])
        chosen.append(pool[best])
        found.extend(step)


# --- minimality --------------------------------------------------------------------------------------------------
def minimality(
    model: Any,
    circuit: Circuit | torch.Tensor,
    task: Any,
    *,
    ablation: str = "mean",
    metric: Any = None,
    threshold: float = MINIMALITY_THRESHOLD,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The IOI paper's minimality test: each node's largest ``|F(C \\ (K + v)) - F(C \\ K)|`` over ``K``.

    ``K`` runs over the empty set, every other node of the circuit (``v`` alone against nothing), then random
    subsets while the budget lasts (each shared by all nodes outside it). The budget is spent in that order, so
    with too few probes some nodes get fewer ``K``; ``tried`` says how many each got.

    Args:
        model, circuit, task, ablation, metric, seed, tokenizer: as in :func:`completeness`.
        threshold: nodes whose largest effect is below ``threshold * |F(M) - F(empty)|`` are listed in
            ``below_threshold``.
        probes: masks this may evaluate.

    Returns:
        ``{"nodes": {name: {"score", "score_f", "k", "tried"}}, "below_threshold": [names], "threshold",
        "probes_used", "probe_budget", "metric", ...}``: ``score`` is the largest effect (metric units), ``score_f``
        the same over ``|F(M) - F(empty)|``, ``k`` the nodes of the ``K`` that gave it.

    Example:
        >>> res = minimality(pm, pm.graph.full_mask(), task, probes=40)
        >>> sorted(res["nodes"]) == ["a0.h0", "a0.h1", "m0"], res["probes_used"] <= 40
        (True, True)
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise ConfigError(f"threshold must be a number >= 0 (a fraction of |F(M) - F(empty)|); got {threshold!r}")
    ctx = _context(model, circuit, task, metric=metric, ablation=ablation, probes=probes, seed=seed,
                   tokenizer=tokenizer)  # fmt: skip
    best: dict[int, dict[str, Any]] = {v: {"score": -1.0, "k": [], "tried": 0} for v in ctx.nodes}
    _minimal_round(ctx, best, [], ctx.nodes)  # K empty
    _minimal_round(ctx, best, None, ctx.nodes)  # K = every other node
    for _ in range(10 * probes):  # bounded: a draw that leaves nothing to test is skipped
        if ctx.probes.left < 2 or len(ctx.nodes) < 2:
            break
        k = _random_subset(ctx, ctx.nodes)
        outside = [v for v in ctx.nodes if v not in k]
        if not k or not outside:
            continue
        if not _minimal_round(ctx, best, k, outside):
            break
    span = ctx.probes.span
    g = ctx.probes.graph
    nodes = {}
    for v, b in best.items():
        score = max(b["score"], 0.0) if b["tried"] else float("nan")
        nodes[g.sender_names[v]] = {"score": score, "score_f": score / span if span > 0 else float("nan"),
                                    "k": [g.sender_names[s] for s in sorted(b["k"])], "tried": b["tried"]}  # fmt: skip
    below = [n for n, r in nodes.items() if r["tried"] and r["score_f"] < threshold]
    return {"nodes": nodes, "below_threshold": below, "threshold": threshold, **ctx.probes.info()}


def _minimal_round(ctx: _Ctx, best: dict[int, dict[str, Any]], k: list[int] | None, nodes: list[int]) -> bool:
    """One ``K`` (None: each node's complement) for as many of ``nodes`` as the budget allows; False if none fit."""
    nodes = nodes[: max(0, ctx.probes.left - 1)]  # one base mask, then one per node
    if not nodes:
        return False
    if k is None:  # F(C \ others) vs F(C \ everything), per node
        pairs = [(ctx.circuit, [s for s in ctx.nodes if s != v]) for v in nodes]
        vals = ctx.probes.values([(ctx.circuit, ctx.nodes), *pairs])
        base, per = [vals[0]] * len(nodes), vals[1:]
        ks = [[s for s in ctx.nodes if s != v] for v in nodes]
    else:
        vals = ctx.probes.values([(ctx.circuit, k)] + [(ctx.circuit, [*k, v]) for v in nodes])
        base, per, ks = [vals[0]] * len(nodes), vals[1:], [k] * len(nodes)
    for v, b0, pv, kk in zip(nodes, base, per, ks, strict=True):
        effect = abs(pv - b0) if k is not None else abs(b0 - pv)
        rec = best[v]
        rec["tried"] += 1
        if effect > rec["score"]:
            rec["score"], rec["k"] = effect, kk
    return True
