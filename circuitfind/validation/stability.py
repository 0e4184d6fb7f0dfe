"""Stability of a discovery run: rerun it on bootstrap resamples of the prompts and count how often each edge is
kept (REFERENCE §8).

* :func:`stability`: ``n_boot`` discoveries, each on a resample (with replacement) of the task's discovery
  prompts, drawn by :func:`circuitfind.selection.bootstrap.resample_indices` from ``seed``. Run in this process,
  in ``workers`` forked processes, or as cells of a sweep on a Ray cluster (``address=``).
* :func:`inclusion_frequency`, :func:`mean_jaccard`, :func:`stable_core`: the model-free statistics of a stack of
  circuits (the fraction of circuits that keep each edge, the mean pairwise Jaccard index, the edges kept by at
  least ``core_level`` of them).

The stable core is then evaluated on the task's held-out prompts (faithfulness with its bootstrap interval), with
the discovery metric and ablation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError, TaskError, check_int
from circuitfind.graph import Graph
from circuitfind.selection.bootstrap import resample_indices
from circuitfind.validation.heldout import heldout_rows
from circuitfind.validation.stability_runs import build_named_task, run_local, run_on_ray

__all__ = [
    "CORE_LEVEL",
    "Stability",
    "inclusion_frequency",
    "mean_jaccard",
    "stability",
    "stable_core",
]

CORE_LEVEL = 0.8
"""An edge is in the stable core when at least this fraction of the resampled circuits keep it."""


# --- the statistics of a stack of circuits (no model) --------------------------------------------------------
def _stack(masks: Sequence[Tensor] | Tensor, graph: Graph) -> Tensor:
    stacked = masks if isinstance(masks, Tensor) else torch.stack([torch.as_tensor(m) for m in masks])
    if stacked.dim() != 3 or stacked.shape[0] == 0:
        raise ConfigError(f"expected a non-empty stack of (S, R) masks; got shape {tuple(stacked.shape)}")
    graph.check_mask(stacked)
    return stacked.bool().cpu() & graph.edge_mask


def inclusion_frequency(masks: Sequence[Tensor] | Tensor, graph: Graph) -> Tensor:
    """``(S, R)`` float64: the fraction of the circuits that keep each edge (0 off the graph's edges).

    Example:
        >>> g = Graph(1, 1)
        >>> a, b = g.mask_of(["input->logits"]), g.mask_of(["input->logits", "a0.h0->logits"])
        >>> f = inclusion_frequency([a, b], g)
        >>> float(f[g.edge_index("input->logits")]), float(f[g.edge_index("a0.h0->logits")])
        (1.0, 0.5)
    """
    return _stack(masks, graph).double().mean(0)


def mean_jaccard(masks: Sequence[Tensor] | Tensor, graph: Graph) -> float:
    """Mean over all pairs of circuits of ``|A & B| / |A | B|`` (two empty circuits count as identical, 1).

    One circuit alone has no pair: the result is 1.0.

    Example:
        >>> g = Graph(1, 1)
        >>> a, b = g.mask_of(["input->logits"]), g.mask_of(["input->logits", "a0.h0->logits"])
        >>> mean_jaccard([a, b], g)
        0.5
    """
    flat = _stack(masks, graph).flatten(1).double()  # (n, S*R)
    n = flat.shape[0]
    if n < 2:
        return 1.0
    inter = flat @ flat.T  # (n, n)
    sizes = flat.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    pairs = torch.triu_indices(n, n, offset=1)
    i, u = inter[pairs[0], pairs[1]], union[pairs[0], pairs[1]]
    jac = torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u))
    return float(jac.mean())


def stable_core(frequency: Tensor, level: float = CORE_LEVEL) -> Tensor:
    """``(S, R)`` bool: the edges whose inclusion frequency is at least ``level``.

    Example:
        >>> stable_core(torch.tensor([[1.0, 0.8, 0.75]]), 0.8).tolist()
        [[True, True, False]]
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
        raise ConfigError(f"core_level must be a number in (0, 1]; got {level!r}")
    return frequency >= float(level) - 1e-12  # 16 of 20 resamples is 0.8 exactly, not 0.7999...


# --- the result ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stability:
    """What :func:`stability` measured.

    Attributes:
        graph: the model's graph (edge names come from it).
        n_boot: resamples run; seed: their seed; resamples: ``(n_boot, n)`` the prompt indices of each.
        masks: ``(n_boot, S, R)`` bool, the circuit found on each resample.
        frequency: ``(S, R)`` float64, the fraction of resamples whose circuit keeps each edge.
        jaccard_mean: mean pairwise Jaccard index of the circuits.
        core_level: the frequency an edge needs to be in the core; core: ``(S, R)`` bool, those edges.
        core_heldout: the core's faithfulness on the held-out prompts (a :func:`circuitfind.evaluate.faithfulness`
            row, with ``ci`` when per-prompt values are there), or None when the task has none.
        options: the discovery options every resample ran with; wall_s: seconds; workers: how it ran.
    """

    graph: Graph
    n_boot: int
    seed: int
    resamples: Tensor
    masks: Tensor
    frequency: Tensor
    jaccard_mean: float
    core_level: float
    core: Tensor
    core_heldout: dict[str, Any] | None
    options: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    workers: str = "1 process"

    @property
    def sizes(self) -> list[int]:
        """Edges of each resample's circuit."""
        return [int(m.sum()) for m in self.masks]

    @property
    def core_edges(self) -> list[str]:
        """Names of the stable core's edges, most frequent first."""
        return [name for name, _ in self._ranked(self.core)]

    def edge_frequency(self) -> dict[str, float]:
        """``{edge name: frequency}`` of every edge some resample kept, most frequent first.

        Example:
            >>> st = stability(pm, task, method="eap", n_edges=3, n_boot=2, metric="logit_diff", progress=False)
            >>> set(st.edge_frequency().values()) <= {0.5, 1.0}  # each edge kept by one resample of two, or both
            True
        """
        return dict(self._ranked(self.frequency > 0))

    def _ranked(self, where: Tensor) -> list[tuple[str, float]]:
        idx = where.nonzero().tolist()
        rows = [(self.graph.edge_name(s, r), float(self.frequency[s, r])) for s, r in idx]
        return sorted(rows, key=lambda x: (-x[1], x[0]))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary the report stores (``report.json["stability"]``)."""
        held = self.core_heldout or {}
        return {
            "n_boot": self.n_boot,
            "seed": self.seed,
            "jaccard_mean": self.jaccard_mean,
            "edge_frequency": self.edge_frequency(),
            "core_level": self.core_level,
            "core_edges": self.core_edges,
            "core_heldout_faithfulness": held.get("faithfulness"),
            "core_heldout_ci": held.get("ci"),
            "core_heldout_n_prompts": held.get("n_prompts"),
            "sizes": self.sizes,
            "options": self.options,
            "wall_s": self.wall_s,
            "workers": self.workers,
        }


# --- the runs ------------------------------------------------------------------------------------------------
def stability(
    model: Any,
    task: Any,
    *,
    method: str = "eap-ig",
    n_boot: int = 20,
    seed: int = 0,
    core_level: float = CORE_LEVEL,
    workers: int = 1,
    address: str | None = None,
    tokenizer: Any = None,
    n_prompts: int = 20,
    held_out: int = 20,
    task_seed: int = 0,
    out: str | None = None,
    progress: bool = True,
    **discover_options: Any,
) -> Stability:
    """Rerun discovery on ``n_boot`` bootstrap resamples of the discovery prompts; edge frequencies and the core.

    Resample ``b`` keeps the prompts ``resample_indices(n, n_boot, seed)[b]`` of the task's train split (with
    replacement, so a prompt may count twice), and runs :func:`circuitfind.discover` on them with ``method`` and
    ``discover_options`` (the same for every resample). The same seed gives the same resamples and, for the
    deterministic methods, the same circuits.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name (a name is needed with ``address``).
        task: a :class:`Task` (its train split is resampled, its held-out split scores the core) or a built-in
            task name / task file, built as a sweep cell builds it (``n_prompts`` + ``held_out`` prompts from
            ``task_seed``).
        method: the discovery method; discover_options: the rest of :func:`circuitfind.discover`'s options
            (``target``, ``n_edges``, ``metric``, ``ablation``, ``steps``...; not ``progress``).
        n_boot: resamples; seed: their seed; core_level: the core's frequency threshold.
        workers: forked processes that share the resamples (each with its share of the torch threads);
            1 runs them here.
        address: a Ray cluster (``"auto"``, ``"HOST:6379"``): the resamples run as cells of
            :func:`circuitfind.sweep` there (``model`` and ``task`` must then be names or paths), with the store
            in ``out`` (default: a temporary folder).
        tokenizer: for a task given by name.
        progress: a progress bar over the resamples.

    Returns:
        a :class:`Stability`.

    Example:
        >>> st = stability(pm, task, method="eap", n_edges=4, n_boot=3, seed=0, metric="logit_diff", progress=False)
        >>> st.n_boot, tuple(st.masks.shape[1:]) == tuple(pm.graph.edge_mask.shape), 0 < st.jaccard_mean <= 1
        (3, True, True)
    """
    _check_options(n_boot, workers, discover_options)
    t0 = time.perf_counter()
    if address is not None:
        spec = {"model": model, "task": task, "n_prompts": n_prompts, "held_out": held_out, "task_seed": task_seed}
        pm, full_task, masks = run_on_ray(spec, method, n_boot, seed, discover_options, address, out, progress)
        how = f"Ray cluster {address}"
    else:
        pm, tokenizer = resolve_model(model, tokenizer)
        full_task = build_named_task(task, tokenizer, n_prompts, held_out, task_seed)
        draws = resample_indices(len(full_task.train()), n_boot, seed)
        masks = run_local(pm, full_task.train(), draws, method, discover_options, workers, progress)
        how = f"{workers} process{'es' if workers > 1 else ''}"
    draws = resample_indices(len(full_task.train()), n_boot, seed)  # the same draws every path made
    return _summarise(pm, full_task, masks, draws, seed, core_level, method, discover_options, how, t0)


def _check_options(n_boot: Any, workers: Any, options: dict[str, Any]) -> None:
    check_int(n_boot, "n_boot", minimum=2, what="resamples to compare")
    check_int(workers, "workers", what="processes")
    for key in ("progress", "tokenizer", "checkpoint", "resume"):
        if key in options:
            raise ConfigError(f"stability sets {key!r} itself for every resample; leave it out of the options")


def _summarise(pm, task, masks, draws, seed, core_level, method, options, how, t0) -> Stability:
    g = pm.graph
    freq = inclusion_frequency(masks, g)
    core = stable_core(freq, core_level)
    return Stability(
        graph=g,
        n_boot=int(masks.shape[0]),
        seed=seed,
        resamples=draws,
        masks=masks,
        frequency=freq,
        jaccard_mean=mean_jaccard(masks, g),
        core_level=float(core_level),
        core=core,
        core_heldout=_core_heldout(pm, core, task, options),
        options={"method": method, **{k: v for k, v in options.items() if _jsonable(v)}},
        wall_s=time.perf_counter() - t0,
        workers=how,
    )


def _core_heldout(pm, core: Tensor, task, options: dict[str, Any]) -> dict[str, Any] | None:
    try:
        held = task.held_out()
    except TaskError:
        return None
    metric = options.get("metric", "kl")
    return heldout_rows(pm, [core], held, metric=metric, ablation=options.get("ablation", "resample"))[0]


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
