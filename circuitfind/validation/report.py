"""The validation report of one discovery run: everything a researcher checks before believing the circuit.

:func:`build_report` discovers the circuit and then measures, in order: its faithfulness on the held-out prompts
with a bootstrap interval; the faithfulness-vs-size curves of its ranking on the discovery and held-out prompts
(and the validation probes of the size selection, when the run recorded them); stability over bootstrap
resamples of the prompts (:mod:`~circuitfind.validation.stability`); completeness and minimality
(:mod:`~circuitfind.validation.completeness`); ablation sensitivity (:mod:`~circuitfind.validation.ablations`).
:func:`write_report` writes ``circuit.json``, ``report.json`` and ``report.html``
(:mod:`~circuitfind.validation.report_html`), each atomically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError, TaskError
from circuitfind.fileio import atomic_write
from circuitfind.selection.cuts import prune_dangling, top_n
from circuitfind.tasks import resolve_task
from circuitfind.validation.ablations import ablation_sensitivity
from circuitfind.validation.completeness import DEFAULT_PROBES, completeness, minimality
from circuitfind.validation.heldout import heldout_rows
from circuitfind.validation.report_html import render_report, summary_rows
from circuitfind.validation.stability import stability

__all__ = ["REPORT_VERSION", "Report", "build_report", "size_curves", "write_report"]

REPORT_VERSION = 1
CUT_OPTIONS = ("threshold", "n_edges", "n_nodes", "target", "band", "select", "confidence")  # how a run cuts
STABILITY_CUTS = ("size", "same")
"""How the reruns of discovery (the stability resamples, and the rediscovery under each other ablation) cut their
rankings: ``size`` (the top-k of each rerun's own scores, k the main run's cut: which edges each rerun ranks
highest at the circuit's size, one scoring pass per rerun) or ``same`` (the main run's own cut options rerun, size
search included: several times the cost, and under an ablation where no small circuit reaches the target the
rerun returns the whole graph, so its Jaccard only says that)."""
CURVE_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # curve sizes, as multiples of the circuit's cut


@dataclass(frozen=True)
class Report:
    """A circuit and its validation report (``data`` is what ``report.json`` holds)."""

    circuit: Circuit
    data: dict[str, Any]


def build_report(
    model: Any,
    task: Any,
    *,
    method: str = "eap-ig",
    n_boot: int = 20,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    workers: int = 1,
    check_ablation: str = "mean",
    stability_cut: str = "size",
    classes: Mapping[str, Sequence[str]] | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
    **discover_options: Any,
) -> Report:
    """Discover the circuit of ``task`` and run every validation check on it.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name.
        task: a task with a held-out split (discovery uses the train split, every held-out figure the rest).
        method: the discovery method; discover_options: the rest of :func:`circuitfind.discover`'s options.
        n_boot: stability's resamples; seed: their seed, and that of the probes' random subsets.
        probes: the budget of completeness and of minimality (masks each may evaluate).
        workers: processes for the stability resamples.
        check_ablation: the ablation of completeness and minimality (``mean``, as in the IOI paper).
        stability_cut: ``size`` or ``same`` (:data:`STABILITY_CUTS`): the cut of the stability resamples and of
            the rediscovery under each other ablation.
        classes: ``{class: [node names]}`` for completeness (e.g. IOI head classes).
        tokenizer: for tasks given by name.
        progress: progress bars; on_stage: called with each stage's name as it starts.

    Returns:
        a :class:`Report`.

    Example:
        >>> import dataclasses
        >>> split = dataclasses.replace(task, n_train=1)  # 1 for discovery, 2 held out
        >>> rep = build_report(pm, split, method="eap", n_edges=4, n_boot=2, probes=12, progress=False)
        >>> rep.data["heldout"]["n_prompts"], rep.data["stability"]["n_boot"], rep.circuit.n_edges <= 4
        (2, 2, True)
    """
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer)
    _check_split(task)
    times: dict[str, float] = {}
    stage = _Stages(times, on_stage)
    opts = dict(discover_options)
    metric, ablation = opts.get("metric", "kl"), opts.get("ablation", "resample")
    with stage("discover"):
        circuit = discover(pm, task, method=method, progress=progress, **opts)
    with stage("held-out"):
        held = heldout_rows(pm, [circuit.mask], task, metric=metric, ablation=ablation)[0]
    with stage("curves"):
        curves = size_curves(pm, circuit, task, metric=metric, ablation=ablation)
    with stage("stability"):
        stab = stability(pm, task, method=method, n_boot=n_boot, seed=seed, workers=workers, progress=progress,
                         **_stability_options(opts, circuit, stability_cut))  # fmt: skip
    with stage("completeness"):
        comp = completeness(pm, circuit, task, ablation=check_ablation, metric=metric, classes=classes,
                            probes=probes, seed=seed)  # fmt: skip
    with stage("minimality"):
        mini = minimality(pm, circuit, task, ablation=check_ablation, metric=metric, probes=probes, seed=seed)
    with stage("ablations"):
        rest = {k: v for k, v in _stability_options(opts, circuit, stability_cut).items() if k != "ablation"}
        abl = ablation_sensitivity(pm, circuit, task, method=method, **rest)
    times["total"] = sum(times.values())
    data = {
        "version": REPORT_VERSION,
        "model": circuit.model,
        "task": task.name,
        "method": method,
        "options": _clean(
            {
                "method": method,
                **opts,
                "n_boot": n_boot,
                "probes": probes,
                "seed": seed,
                "check_ablation": check_ablation,
                "stability_cut": stability_cut,
            }
        ),  # fmt: skip
        "circuit": _circuit_summary(circuit),
        "heldout": _heldout_summary(held),
        "curves": curves,
        "stability": stab.to_dict(),
        "completeness": comp,
        "minimality": mini,
        "ablations": abl,
        "timings_s": times,
    }
    return Report(circuit, _clean(data))


def _stability_options(opts: dict[str, Any], circuit: Circuit, cut: str) -> dict[str, Any]:
    """The discovery options of the stability resamples (see :data:`STABILITY_CUTS`)."""
    if cut not in STABILITY_CUTS:
        raise ConfigError(f"stability_cut must be one of {STABILITY_CUTS}; got {cut!r}")
    if cut == "same":
        return dict(opts)
    k = int(circuit.stats.get("k") or circuit.n_edges or 1)
    return {**{key: v for key, v in opts.items() if key not in CUT_OPTIONS}, "n_edges": k}


class _Stages:
    """``with stage(name):`` times a stage into ``times`` and announces it."""

    def __init__(self, times: dict[str, float], on_stage: Callable[[str], None] | None) -> None:
        self.times, self.on_stage, self.name, self.t0 = times, on_stage, "", 0.0

    def __call__(self, name: str) -> _Stages:
        self.name = name
        return self

    def __enter__(self) -> None:
        if self.on_stage is not None:
            self.on_stage(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.times[self.name] = time.perf_counter() - self.t0


def _check_split(task: Any) -> None:
    try:
        task.held_out()
    except TaskError:
        raise TaskError(
            f"the report needs held-out prompts that discovery never sees; task {task.name!r} has none "
            f"(n_train={task.n_train}, {len(task)} prompts). Build it with n_train < its size, e.g. "
            "get_task(..., n=40, n_train=20), or pass --held-out N on the command line"
        ) from None


def _circuit_summary(circuit: Circuit) -> dict[str, Any]:
    stats = circuit.stats
    return {
        "n_edges": circuit.n_edges,
        "fraction": circuit.fraction,
        "graph_edges": circuit.graph.n_edges,
        "n_nodes": len(circuit.nodes()),
        "discovery_faithfulness": circuit.recovered,
        "discovery_prompts": circuit.config.get("n_prompts"),
        "k": stats.get("k"),
        "target": circuit.config.get("target"),
        "validation": _clean(stats.get("validation")),
        "wall_time_s": stats.get("wall_time_s"),
    }


def _heldout_summary(row: dict[str, Any]) -> dict[str, Any]:
    f = row["faithfulness"]
    return {
        "faithfulness": f,
        "ci": row.get("ci"),
        "abs_one_minus_f": abs(1 - f) if f == f else None,
        "over_recovers": bool(f > 1) if f == f else None,
        "n_prompts": row["n_prompts"],
        "n_edges": row["n_edges"],
        "metric": row["metric"],
        "ablation": row["ablation"],
        "metric_full": row["metric_full"],
        "metric_empty": row["metric_empty"],
        "metric_circuit": row["metric_circuit"],
    }


def size_curves(pm: Any, circuit: Circuit, task: Any, *, metric: Any, ablation: str) -> dict[str, Any]:
    """Faithfulness of the top-k of the circuit's ranking (dangling edges pruned) at sizes around its cut, on
    the discovery and the held-out prompts, with intervals; plus the size selection's validation probes when
    ``circuit.stats`` recorded them.

    Example:
        >>> import dataclasses
        >>> split = dataclasses.replace(task, n_train=2)
        >>> cur = size_curves(pm, circuit, split, metric="logit_diff", ablation="resample")
        >>> len(cur["discovery"]) == len(cur["heldout"]) == len(cur["k"])
        True
    """
    g = pm.graph
    cut = int(circuit.stats.get("k") or circuit.n_edges or 1)
    ks = sorted({min(g.n_edges, max(1, round(cut * s))) for s in CURVE_SCALES})
    scores = circuit.scores.double()  # NaN (untested) ranks last (edge_ranking)
    absolute = bool(circuit.config.get("absolute", False))
    from_input = str(circuit.config.get("ablation", "resample")) == "resample"
    masks = [prune_dangling(g, top_n(g, scores, k, absolute=absolute), from_input=from_input) for k in ks]
    train = heldout_rows(pm, masks, task.train(), metric=metric, ablation=ablation)
    held = heldout_rows(pm, masks, task, metric=metric, ablation=ablation)
    return {
        "k": ks,
        "cut_k": cut,
        "discovery": [_point(r) for r in train],
        "heldout": [_point(r) for r in held],
        "validation": _validation_points(circuit.stats),
    }


def _point(row: dict[str, Any]) -> dict[str, Any]:
    return {"n_edges": row["n_edges"], "faithfulness": row["faithfulness"], "ci": row.get("ci")}


def _validation_points(stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The validated size selection's probes: faithfulness on prompts not used to score them, with intervals
    (``circuit.stats["validation"]["probes"]``; none for ``select="train"`` or a method without a size search).
    The size is the mean over folds of the probe's edges after pruning; add-back probes (``m > 0``) are left out."""
    out = []
    for p in (stats.get("validation") or {}).get("probes") or []:
        f, sizes = p.get("faithfulness"), p.get("n_edges_after_prune") or [p.get("k")]
        if isinstance(f, (int, float)) and not p.get("m") and all(isinstance(n, int) for n in sizes):
            out.append({"n_edges": round(sum(sizes) / len(sizes)), "faithfulness": f, "ci": p.get("ci")})
    return sorted(out, key=lambda p: p["n_edges"])


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, tensors lists, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def report_table(data: dict[str, Any]) -> str:
    """The report's headline figures and ablation rows as a fixed-width text table (what the command prints).

    Example:
        >>> import dataclasses
        >>> rep = build_report(pm, dataclasses.replace(task, n_train=1), method="eap", n_edges=4, n_boot=2, probes=12,
        ...                    metric="logit_diff", progress=False)
        >>> report_table(rep.data).splitlines()[0].startswith("check")
        True
    """
    rows = summary_rows(data)
    for name in ("resample", "mean", "zero"):
        r = data["ablations"].get(name)
        if r:
            rows.append([f"under {name} ablation", f"held-out f {_fmt(r['faithfulness'])}; the circuit found under "
                         f"it: {r['found_n_edges']} edges, Jaccard {_fmt(r['jaccard'])}"])  # fmt: skip
    t = data.get("timings_s", {})
    rows.append(["time", ", ".join(f"{k} {v:.0f} s" for k, v in t.items())])
    width = max(len(r[0]) for r in rows)
    return "\n".join([f"{'check':<{width}}  result"] + [f"{a:<{width}}  {b}" for a, b in rows])


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_report(report: Report, out: str | Path) -> list[Path]:
    """Write ``circuit.json``, ``report.json`` and ``report.html`` into the folder ``out`` (atomically each).

    Example:
        >>> import dataclasses
        >>> rep = build_report(pm, dataclasses.replace(task, n_train=1), method="eap", n_edges=4, n_boot=2, probes=12,
        ...                    metric="logit_diff", progress=False)
        >>> [p.name for p in write_report(rep, tmp_path)]
        ['circuit.json', 'report.json', 'report.html']
    """
    out = Path(out)
    text = json.dumps(report.data, indent=1, allow_nan=False)
    return [
        report.circuit.save(out / "circuit.json"),
        atomic_write(out / "report.json", text + "\n"),
        atomic_write(out / "report.html", render_report(report.data)),
    ]
