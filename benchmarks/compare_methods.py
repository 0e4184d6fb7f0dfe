"""Compare the discovery methods on the default model (SmolLM2-135M) and on the two tracr models.

For each task (IOI, greater-than, induction; the task's own metric, logit difference or probability difference,
and resample ablation; the prompt counts, seed and train/held-out split of ``benchmarks/results/validate.json``,
so that ACDC's rows there are comparable) and each method:

* ``eap``, ``eap-ig`` (5 steps), ``eap-ig-mask`` (5 steps): scores for every edge, cut at ``target=0.8``;
* ``exact``: each edge's exact loss change when removed alone, **restricted to a candidate set**: the top 1% of
  edges by EAP-IG (5 steps). Scoring all 123,211 edges is hours on a 2-core CPU; the per-edge cost is measured
  and the full cost extrapolated (in test-cost units: a test at a receiver of layer L recomputes the layers
  above it). Edges outside the candidates have no score (NaN) and rank last;
* ``hybrid`` (target 0.8): EAP-IG candidates, exact ACDC-style pruning, a circuit that provably reaches the
  target on the discovery prompts. Its ``scores`` are its EAP-IG attribution, so its MIB curve is EAP-IG's;
* ``acdc``: read from ``benchmarks/results/validate.json`` (read-only): the circuit at validate's chosen
  threshold (the largest that fits 5% of the edges) and the MIB curve of its per-edge effects. ACDC runs take
  25-75 min per threshold here; ``--acdc-rerun`` reruns it at that threshold instead.

The methods frontier (issue 22), through ``discover``'s public options:

* ``eap-ig-act`` (EAP-IG along the activations, 5 steps) and ``edge-pruning`` (learned hard-concrete edge gates,
  100 steps, EAP-IG warm start, at 0.1% of the edges; on IOI and the tracr models only: minutes per LM task);
* ``eap-ig-node`` / ``exact-node``: ``level="node"`` (heads, MLPs and the input as units; first-order node scores
  / one patched forward per node), cut at the target over nodes. No CPR/CMD (the ranking is over nodes): f@0.1%
  and f@1% are the largest top-k-node circuits whose induced edges fit that many edges; tracr AUC over nodes;
* ``eap-ig-pos``: ``by_position=True`` on prompts of one template (IOI: template 0, ABBA; greater-than as it
  is; induction's prompts differ in length and are skipped), cut over (sender, receiver, position) edges. f@k%
  counts as many position-edges as k% of the edges; beside it, the position-free top edges of the same scores
  summed over positions, on the same prompts.

Intervals (95%, bootstrap over the held-out prompts, :mod:`circuitfind.validation`) are shown where the
evaluation stores per-prompt values.

Per (task, method), as one cell of a :func:`circuitfind.sweep` (a Ray worker that loads the model once and runs
unit after unit; ``--workers`` at once, default 1 so that timings do not mix; each worker reserves ``--threads``
CPUs; the store is ``benchmarks/results/sweeps/<results name>/``):

* wall time of discovery on the train prompts (scores + the ``target=0.8`` cut; for ``exact`` also the EAP-IG
  candidates) and the unit's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` when the unit starts,
  so it counts the loaded model and the unit's own peak) and the peak during discovery alone;
* MIB CPR and CMD of the scores on the held-out prompts (:func:`cpr_cmd_of_scores`), hence the held-out
  faithfulness of the top 1% and top 5% of edges;
* the target circuit (``target=0.8``: the smallest top-k whose exact faithfulness on the train prompts reaches
  0.8): its size and its held-out faithfulness.

Also, per task, random circuits at every MIB size (the curve's baseline); one goal row (EAP-IG, 5 steps, IOI
with 100 prompts, all used for discovery: wall time and peak memory against the goal of < 2 min and < 6 GB);
and, on tracr-reverse and tracr-proportion (zero ablation and ACDC's ground truth for it, as ACDC's exact
recovery in ``figures/roc_tracr-<name>.json``; ``circuitfind.tasks.tracr.tracr_setup`` data and L2 metric), the
ROC AUC of each method's scores against the tracr-derived circuit.

Prints a table and writes ``benchmarks/results/compare_methods.json`` (merged per (task, method) as each unit
finishes; a unit already there with the same settings is skipped unless ``--force``, so runs can be split) and
``figures/compare_methods.png`` (one figure, a panel per task: held-out faithfulness against the fraction of
edges, log axis).
``--quick`` checks the pipeline (8 prompts, one task, 0.01% candidates for exact, 1 random circuit per size)
and writes under ``benchmarks/results/quick/``.

    python benchmarks/compare_methods.py                          # everything (about an hour on 2 cores)
    python benchmarks/compare_methods.py --task ioi --method eap --method eap-ig
    python benchmarks/compare_methods.py --quick
    python benchmarks/compare_methods.py --table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LM_TASKS = ("ioi", "greater-than", "induction")
TRACR = ("tracr-reverse", "tracr-proportion")
GOAL = "goal"
TASKS = (*LM_TASKS, GOAL, *TRACR)
BASE_METHODS = ("eap", "eap-ig", "eap-ig-mask", "exact", "hybrid", "acdc")
# the methods frontier (issue 22): rows that are a library method with options (discover's public API)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "eap-ig-act": ("eap-ig-act", {"steps": 5}),  # EAP-IG along the activations
    "edge-pruning": ("edge-pruning", {"steps": 100, "warm_start": True}),  # learned gates, EDGE_PRUNING_FRACTION
    "eap-ig-node": ("eap-ig", {"steps": 5, "level": "node"}),  # nodes as units, first-order node scores
    "exact-node": ("exact", {"level": "node"}),  # one patched forward per node
    "eap-ig-pos": ("eap-ig", {"steps": 5, "by_position": True}),  # (sender, receiver, position) edges
}
METHODS = (*BASE_METHODS, *VARIANTS)
NODE_ROWS = ("eap-ig-node", "exact-node")
POSITION_ROWS = ("eap-ig-pos",)
EDGE_PRUNING_FRACTION = 0.001  # the goal: 120 edges (0.1%) on IOI
EDGE_PRUNING_TASKS = ("ioi", "tracr-reverse", "tracr-proportion")  # minutes per LM task here: the goal task only
BUDGETS = (0.001, 0.01)  # f at 0.1% / 1% of the edges
N_BOOT = 1000  # bootstrap resamples of the held-out prompts for the intervals (when evaluate stores per-prompt values)
TARGET = 0.8
STEPS = 5
# exact: the top 1% of edges by EAP-IG (1,232 edges). An exact test costs ~0.1 s on 2 free cores (~1 s or more
# when the cores are shared); lower it here if one task's exact run would exceed ~20 min
CANDIDATE_FRACTION = 0.01
N_RANDOM = 5  # random circuits per MIB size (validate.py's --n-random-curve)
DEFAULT_PROMPTS = 40  # validate.py's --n-prompts default, used when validate.json has no row for a task
GOAL_PROMPTS, GOAL_SECONDS, GOAL_BYTES = 100, 120.0, 6 << 30
VALIDATE_JSON = ROOT / "benchmarks" / "results" / "validate.json"
MEMORY_BUDGET = 2 << 30  # activation bytes per stacked evaluation forward (as validate.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, action="append", help="task(s) to run (repeatable; default: all)")
    p.add_argument("--method", choices=METHODS, action="append", help="method(s) to run (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="pipeline check: 8 prompts, one task (ioi by default)")
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    p.add_argument("--plot", action="store_true", help="redraw the figures from the results file and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--acdc-rerun", action="store_true", help="rerun ACDC (hours) instead of reading validate.json")
    p.add_argument("--force", action="store_true", help="rerun units already in the results file")
    p.add_argument("--no-random", action="store_true", help="do not (re)draw the random-circuit baseline")
    p.add_argument("--unit", action="append", metavar="TASK:METHOD", help="run exactly these units (repeatable)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and Ray CPUs) of each worker")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:0, ... (default: cpu)")
    p.add_argument("--workers", type=int, default=1, help="units at once (default 1: timings measured alone)")
    p.add_argument("--address", default=None, help="a Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/...)")
    p.add_argument("--figures", type=Path, default=None, help="figure folder (default figures/)")
    args = p.parse_args(argv)
    args.n_prompts = None  # per task: validate.json's, see _n_prompts
    args.candidate_fraction = CANDIDATE_FRACTION
    args.n_random = N_RANDOM
    args.method = args.method or list(METHODS)
    if args.quick:
        args.n_prompts = 8
        args.candidate_fraction = 0.0001
        args.n_random = 1
        args.task = args.task or ["ioi"]
        results = ROOT / "benchmarks" / "results" / "quick"
        args.out = args.out or results / "compare_methods.json"
        args.figures = args.figures or results
    args.task = args.task or list(TASKS)
    args.out = args.out or ROOT / "benchmarks" / "results" / "compare_methods.json"
    args.figures = args.figures or ROOT / "figures"
    return args


# --- settings ------------------------------------------------------------------------------------------------
def _validate_rows() -> dict[str, Any]:
    if not VALIDATE_JSON.exists():
        return {}
    return json.loads(VALIDATE_JSON.read_text()).get("tasks", {})


def _n_prompts(args: argparse.Namespace, task: str) -> int:
    """validate.json's prompt count for the task (its ACDC rows were measured on those), else validate's default."""
    if args.n_prompts is not None:
        return args.n_prompts
    row = _validate_rows().get(task)
    return int(row["config"]["n_prompts"]) if row else DEFAULT_PROMPTS


def _unit_config(args: argparse.Namespace, task: str, method: str) -> dict[str, Any]:
    """What a unit's result depends on; a stored unit with another config is rerun."""
    cfg: dict[str, Any] = {"seed": args.seed, "threads": args.threads}
    if args.device != "cpu":  # units measured on the CPU keep their stored config
        cfg["device"] = args.device
    if task in LM_TASKS:
        n = _n_prompts(args, task)
        cfg.update(n_prompts=n, n_train=n // 2, metric="task", ablation="resample", evaluation="held_out")
    elif task == GOAL:
        cfg.update(n_prompts=GOAL_PROMPTS, n_train=GOAL_PROMPTS, metric="task", ablation="resample", steps=STEPS)
    else:
        cfg.update(metric="l2 (tracr output_mse)", ablation="zero", ground_truth="ground_truth_acdc")
    if method in ("eap-ig", "eap-ig-mask", "hybrid", "exact"):
        cfg["steps"] = STEPS
    if method not in ("random", GOAL):
        cfg["target"] = TARGET
    if method in VARIANTS:
        base, options = VARIANTS[method]
        cfg.update(library_method=base, options=options)
        if method == "edge-pruning":
            cfg.pop("target")
            cfg["n_edges"] = f"{100 * EDGE_PRUNING_FRACTION:g}% of the edges (tracr: the ground truth's size)"
        if method in POSITION_ROWS and task == "ioi":
            cfg["prompts"] = "one template group: get_task('ioi', ..., template=0, order='ABBA')"
    if method == "exact" and task in LM_TASKS:
        cfg["candidates"] = f"top {100 * args.candidate_fraction:g}% by eap-ig"
    if method == "random":
        cfg["n_random"] = args.n_random
    if method == "acdc":
        if task in TRACR:
            cfg["source"] = f"figures/roc_{task}.json"
        else:
            cfg["source"] = "rerun" if args.acdc_rerun else _rel(VALIDATE_JSON)
    return cfg


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- the sweep's cell: one (task, method) unit ----------------------------------------------------------------
def compare_cell(cell: Any, pm: Any, tok: Any) -> dict[str, Any]:
    """The sweep's cell function: run one unit on the worker's model (``cell.options`` holds the settings)."""
    task, method, opts = cell.task, cell.method, cell.options["opts"]
    if task in TRACR:
        result = _tracr_unit(task, method, opts)
    else:
        result = _lm_unit(task, method, opts, loaded=(pm, tok))
    return {"metrics": {"result": result}}


class _Meter:
    """Wall time and peak RSS of a block, the peak measured from the RSS at its start."""

    def __enter__(self) -> _Meter:
        from circuitfind.engine.memory import reset_peak_memory, resident_bytes

        rss = resident_bytes()
        self.rss_before_mb = None if rss is None else rss / 2**20
        self.reset = reset_peak_memory()  # so that the peak is discovery's alone
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        from circuitfind.engine.memory import peak_memory

        self.wall_s = time.perf_counter() - self.t0
        self.peak_mb = peak_memory().mib if self.reset else None

    def record(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "rss_before_mb": self.rss_before_mb, "peak_rss_discovery_mb": self.peak_mb}


def _load(opts: dict[str, Any], loaded: tuple[Any, Any] | None = None) -> tuple[Any, Any, float]:
    import circuitfind as cf

    if loaded is not None:  # the sweep worker's model, loaded once for all its units
        return loaded[0], loaded[1], 0.0
    t0 = time.perf_counter()
    model, tok = cf.load_model(progress=opts["progress"], device=opts.get("device", "cpu"))
    return cf.PatchableModel(model), tok, time.perf_counter() - t0


def _lm_unit(
    task_name: str, method: str, opts: dict[str, Any], loaded: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    import circuitfind as cf
    from circuitfind.tasks import get_task

    pm, tok, load_s = _load(opts, loaded)
    if task_name == GOAL:
        return _goal_unit(pm, tok, opts, load_s)
    n = opts["n_prompts"]
    one_group = {"template": 0, "order": "ABBA"} if method in POSITION_ROWS and task_name == "ioi" else {}
    task = get_task(task_name, tok, n=n, seed=opts["seed"], n_train=n // 2, **one_group)
    common = {"load_s": load_s, "n_train": len(task.train()), "n_held_out": len(task.held_out())}
    if method == "random":
        return {**common, **_random_unit(pm, task, opts)}
    kw = {"metric": task.metric, "ablation": "resample", "progress": opts["progress"]}
    extra: dict[str, Any] = {}
    with _Meter() as meter:
        if method == "exact":
            circuit, extra = _exact_discovery(pm, task, opts, kw)
        elif method == "acdc":
            circuit, extra = _acdc_discovery(pm, task, opts, kw)
        elif method in VARIANTS:
            circuit = _variant_discovery(pm, task, method, kw)
        else:
            circuit = cf.discover(pm, task, method=method, target=TARGET, steps=STEPS, **kw)
    result = {**common, **meter.record(), **extra}
    if method == "exact":
        result.update(_exact_cost(pm, task, circuit, meter.wall_s - extra["candidates_s"], kw))
    result.update(_evaluate(pm, task, circuit, method))
    return result


def _variant_discovery(pm: Any, task: Any, method: str, kw: dict[str, Any], n_edges: int | None = None) -> Any:
    """A frontier row: its library method with its options, cut at the target (edge pruning: at its edge budget)."""
    import circuitfind as cf
    from circuitfind.selection.cuts import n_of_fraction

    base, options = VARIANTS[method]
    if method == "edge-pruning":
        cut = {"n_edges": n_edges or n_of_fraction(EDGE_PRUNING_FRACTION, pm.graph.n_edges)}
    else:
        cut = {"target": TARGET}
    return cf.discover(pm, task, method=base, **cut, **options, **kw)


def _exact_discovery(pm: Any, task: Any, opts: dict[str, Any], kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """EAP-IG picks the candidates (top fraction of edges), exact scores them, the target cut."""
    import circuitfind as cf
    from circuitfind.selection.cuts import n_of_fraction, top_n

    t0 = time.perf_counter()
    n_cand = n_of_fraction(opts["candidate_fraction"], pm.graph.n_edges)
    ig = cf.discover(pm, task, method="eap-ig", steps=STEPS, n_edges=n_cand, **kw)
    candidates = top_n(pm.graph, ig.scores.double().nan_to_num(nan=-math.inf), n_cand)  # before pruning
    candidates_s = time.perf_counter() - t0
    circuit = cf.discover(pm, task, method="exact", candidates=candidates, target=TARGET, **kw)
    return circuit, {
        "candidates": int(candidates.sum()),
        "candidates_fraction": int(candidates.sum()) / pm.graph.n_edges,
        "candidates_source": f"top {100 * opts['candidate_fraction']:g}% of edges by eap-ig ({STEPS} steps)",
        "candidates_s": candidates_s,
    }


def _exact_cost(pm: Any, task: Any, circuit: Any, exact_s: float, kw: dict[str, Any]) -> dict[str, Any]:
    """Split the exact discovery into scoring and cut, and extrapolate the scoring to every edge.

    The cut's cost is its number of exact evaluations times the measured time of one (two evaluations of the
    target circuit, timed here). The extrapolation counts test-cost units (a test at a receiver of layer L
    recomputes the layers above it), and also naively per edge.
    """
    import torch

    from circuitfind.algorithms.base import Faithfulness
    from circuitfind.algorithms.exact import layer_cost
    from circuitfind.problem import prepare_problem

    g = pm.graph
    problem, _ = prepare_problem(pm, task.train(), metric=kw["metric"], ablation=kw["ablation"])
    faith = Faithfulness(problem)
    t0 = time.perf_counter()
    for _ in range(2):
        faith(circuit.mask)
    per_eval = (time.perf_counter() - t0) / 2
    cut_s = per_eval * (circuit.stats.get("exact_evaluations") or 0)
    scoring_s = max(exact_s - cut_s, 1e-9)
    scored = ~torch.isnan(circuit.scores) & g.edge_mask
    cost = torch.tensor([layer_cost(g.n_layers, g.receiver_layer(r)) for r in range(g.n_receivers)])  # (R,)
    units_scored = float((scored.double() * cost).sum())
    units_all = float((g.edge_mask.double() * cost).sum())
    n_scored = int(scored.sum())
    return {
        "exact_scoring_s": scoring_s,
        "exact_cut_s_estimated": cut_s,
        "seconds_per_exact_evaluation": per_eval,
        "edges_scored": n_scored,
        "s_per_edge": scoring_s / n_scored,
        "full_cost_s_per_edge_extrapolated": scoring_s / n_scored * g.n_edges,
        "full_cost_s_extrapolated": scoring_s / units_scored * units_all,
        "full_cost_note": (
            "exact scoring of all edges, extrapolated from the candidates' scoring time in test-cost units "
            "(layers recomputed per test); the per-edge figure ignores where in the model the candidates sit"
        ),
    }


def _acdc_discovery(pm: Any, task: Any, opts: dict[str, Any], kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``--acdc-rerun``: ACDC at validate's chosen threshold; the target cut of its effects is measured after."""
    import circuitfind as cf

    tau = opts["acdc_threshold"]
    circuit = cf.discover(pm, task, method="acdc", threshold=tau, **kw)
    return circuit, {"threshold": tau}


def _target_cut_of_acdc(pm: Any, task: Any, circuit: Any, kw: dict[str, Any]) -> Any:
    """The smallest top-k of ACDC's effects reaching the target on the train prompts (as ``discover`` cuts)."""
    from circuitfind.algorithms.base import Faithfulness
    from circuitfind.problem import prepare_problem
    from circuitfind.selection.cuts import smallest_faithful

    problem, _ = prepare_problem(pm, task.train(), metric=kw["metric"], ablation=kw["ablation"])
    return smallest_faithful(pm.graph, circuit.scores.double().nan_to_num(nan=-math.inf), Faithfulness(problem), TARGET)


def _evaluate(pm: Any, task: Any, circuit: Any, method: str) -> dict[str, Any]:
    """Held-out: the MIB curve of the scores (CPR/CMD, f at 1% and 5%) and the target circuit's faithfulness."""
    from circuitfind.evaluate.circuits import cpr_cmd_of_scores, faithfulness_many

    if method in NODE_ROWS:
        return _evaluate_nodes(pm, task, circuit)
    if method in POSITION_ROWS:
        return _evaluate_positions(pm, task, circuit)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if method == "hybrid":  # its scores are EAP-IG's (same prompts, steps and seed): the eap-ig row has the curve
        out["scores_note"] = "hybrid's scores are its EAP-IG attribution: CPR/CMD and f@k% are the eap-ig row's"
    else:
        mib = cpr_cmd_of_scores(pm, circuit.scores, task)
        out.update(
            cpr=mib["cpr"],
            cmd=mib["cmd"],
            **_mib_intervals(mib),
            f_at_01pct=_at(mib, 0.001),
            f_at_1pct=_at(mib, 0.01),
            f_at_5pct=_at(mib, 0.05),
            mib_curve={k: mib[k] for k in ("fractions", "n_edges", "faithfulness_signed", "faithfulness_abs")},
            metric_full_held_out=mib["metric_full"],
            metric_empty_held_out=mib["metric_empty"],
        )
    stats = circuit.stats
    if method == "acdc":  # the ACDC circuit itself, then the target cut of its effects
        row = faithfulness_many(pm, [circuit.mask], task, memory_budget=MEMORY_BUDGET)[0]
        out["circuit"] = {"n_edges": circuit.n_edges, "fraction": circuit.fraction, "f_held_out": row["faithfulness"]}
        kw = {"metric": task.metric, "ablation": "resample"}
        cut = _target_cut_of_acdc(pm, task, circuit, kw)
        mask, f_train, reached = cut.mask, cut.faithfulness, cut.reached
    else:
        mask, f_train, reached = (
            circuit.mask,
            stats.get("faithfulness", stats.get("trained_faithfulness")),
            stats.get("reached"),
        )
    row = faithfulness_many(pm, [mask], task, memory_budget=MEMORY_BUDGET)[0]
    out["target_circuit"] = _target_record(pm, mask, row, f_train, reached, stats)
    if method == "hybrid":
        out["hybrid"] = {k: v for k, v in stats.items() if k not in ("probes", "attribution")}
    if "forward_passes" in stats:
        out["forward_passes"] = stats["forward_passes"]
    out["exact_evaluations"] = stats.get("exact_evaluations")
    out["evaluation_s"] = time.perf_counter() - t0
    return out


def _target_record(pm: Any, mask: Any, row: dict[str, Any], f_train: Any, reached: Any, stats: Any) -> dict[str, Any]:
    """The target circuit: size, train and held-out faithfulness (with its interval when the row has one)."""
    n_edges = int(mask.sum())
    return {
        "target": TARGET,
        "n_edges": n_edges,
        "fraction": n_edges / pm.graph.n_edges,
        "f_train": f_train,
        "reached": reached,
        "f_held_out": row["faithfulness"],
        "f_held_out_ci": _row_interval(row),
        "probes": len(stats.get("probes", [])),
    }


def _row_interval(row: dict[str, Any]) -> dict[str, Any] | None:
    """The bootstrap interval of a faithfulness row over the held-out prompts: the row's own (``ci``) or, from its
    per-prompt values, :func:`circuitfind.validation.faithfulness_interval`; None when neither is there."""
    ci = row.get("ci")
    if isinstance(ci, dict) and "lo" in ci:
        return {"lo": ci["lo"], "hi": ci["hi"]}
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return {"lo": ci[0], "hi": ci[1]}
    per = row.get("per_prompt")
    if not per:
        return None
    from circuitfind.validation import faithfulness_interval

    return faithfulness_interval(per["circuit"], per["full"], per["empty"], n_boot=N_BOOT).to_dict()


def _mib_intervals(mib: dict[str, Any]) -> dict[str, Any]:
    """CPR / CMD intervals when :func:`cpr_cmd_of_scores` gives them (the validation issue's bootstrap)."""
    out = {}
    for key in ("cpr", "cmd"):
        for name in (f"{key}_ci", f"{key}_interval"):
            ci = mib.get(name)
            if isinstance(ci, dict) and "lo" in ci:
                out[f"{key}_ci"] = {"lo": ci["lo"], "hi": ci["hi"]}
            elif isinstance(ci, list | tuple) and len(ci) == 2:
                out[f"{key}_ci"] = {"lo": ci[0], "hi": ci[1]}
    return out


def _budget_masks(pm: Any, circuit_of: Any, n_units: int) -> dict[float, tuple[Any, int]]:
    """Per budget of :data:`BUDGETS`, the largest top-k circuit (``circuit_of(k) -> (mask, units)``) whose pruned
    edges fit that fraction of the graph's edges, and its k (galloping then bisection on k: sizes grow with k)."""
    from circuitfind.selection.cuts import n_of_fraction

    out = {}
    for frac in BUDGETS:
        budget = n_of_fraction(frac, pm.graph.n_edges)
        lo, hi = 0, 1
        while hi <= n_units and int(circuit_of(hi)[0].sum()) <= budget:
            lo, hi = hi, 2 * hi
        hi = min(hi, n_units + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if int(circuit_of(mid)[0].sum()) <= budget else (lo, mid)
        out[frac] = (circuit_of(max(lo, 1))[0], max(lo, 1))
    return out


def _evaluate_nodes(pm: Any, task: Any, circuit: Any) -> dict[str, Any]:
    """A node-level circuit, held out: f of the largest top-k-node circuits within 0.1% / 1% of the edges, and of
    the target circuit (its nodes and induced edges). No CPR/CMD: the ranking is over nodes, not edges."""
    import torch

    from circuitfind.algorithms.units import node_circuit
    from circuitfind.evaluate.circuits import faithfulness_many

    t0 = time.perf_counter()
    g = pm.graph
    order = torch.argsort(circuit.node_scores.double().nan_to_num(nan=-math.inf), descending=True, stable=True)

    def circuit_of(k: int) -> tuple[Any, Any]:
        nodes = torch.zeros(g.n_senders, dtype=torch.bool)
        nodes[order[:k]] = True
        return node_circuit(g, nodes)

    budgets = _budget_masks(pm, circuit_of, g.n_senders)
    rows = faithfulness_many(pm, [m for m, _ in budgets.values()] + [circuit.mask], task, memory_budget=MEMORY_BUDGET)
    out = _budget_record(budgets, rows, "n_nodes")
    out["target_circuit"] = {
        **_target_record(pm, circuit.mask, rows[-1], circuit.stats.get("faithfulness"), circuit.stats.get("reached"),
                         circuit.stats),
        "n_nodes": circuit.n_nodes,
    }  # fmt: skip
    out["n_graph_nodes"] = g.n_senders
    out["exact_evaluations"] = circuit.stats.get("exact_evaluations")
    out["evaluation_s"] = time.perf_counter() - t0
    return out


def _budget_record(budgets: dict[float, tuple[Any, int]], rows: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (frac, (mask, k)), row in zip(budgets.items(), rows, strict=False):
        key = "f_at_01pct" if frac == 0.001 else "f_at_1pct"
        out[key] = row["faithfulness"]
        out[f"{key}_detail"] = {unit: k, "n_edges": int(mask.any(-1).sum() if mask.dim() == 3 else mask.sum()),
                                "ci": _row_interval(row)}  # fmt: skip
    return out


def _evaluate_positions(pm: Any, task: Any, circuit: Any) -> dict[str, Any]:
    """A position-aware circuit, held out (prompts of the same template): f of the top position-edges at as many
    position-edges as 0.1% / 1% of the edges, beside the position-free top edges of the same scores summed over
    positions (the same prompts), and the target circuit. No CPR/CMD (a ranking over position-edges)."""
    from circuitfind.algorithms.units import position_cut
    from circuitfind.evaluate.circuits import faithfulness_many
    from circuitfind.selection.cuts import n_of_fraction, prune_dangling, top_n

    t0 = time.perf_counter()
    g = pm.graph
    masks, flat = {}, {}
    for frac in BUDGETS:
        n = n_of_fraction(frac, g.n_edges)
        masks[frac] = (position_cut(g, circuit.position_scores, None, n=n).mask, n)
        flat[frac] = prune_dangling(g, top_n(g, circuit.scores.double().nan_to_num(nan=-math.inf), n))
    stack = [m for m, _ in masks.values()] + list(flat.values()) + [circuit.position_mask]
    rows = faithfulness_many(pm, stack, task, memory_budget=MEMORY_BUDGET)
    out = _budget_record(masks, rows, "n_position_edges")
    out["position_free_same_prompts"] = {
        f"f_at_{'01' if frac == 0.001 else '1'}pct": row["faithfulness"]
        for frac, row in zip(BUDGETS, rows[len(BUDGETS) : 2 * len(BUDGETS)], strict=True)
    }
    n_pos = int(circuit.position_mask.sum())
    target = _target_record(pm, circuit.mask, rows[-1], circuit.stats.get("faithfulness"),
                            circuit.stats.get("reached"), circuit.stats)  # fmt: skip
    out["target_circuit"] = {**target, "n_position_edges": n_pos}
    out["positions"] = list(circuit.position_labels)
    out["top_position_edges"] = _top_position_edges(circuit, 10)
    out["exact_evaluations"] = circuit.stats.get("exact_evaluations")
    out["evaluation_s"] = time.perf_counter() - t0
    return out


def _top_position_edges(circuit: Any, n: int) -> list[dict[str, Any]]:
    """The ``n`` highest-scoring kept position-edges: name and score (where in the template each acts)."""
    from circuitfind.graph import position_edge_name

    g, m = circuit.graph, circuit.position_mask
    s, r, t = m.nonzero(as_tuple=True)
    vals = circuit.position_scores[s, r, t]
    best = vals.argsort(descending=True)[:n].tolist()
    return [
        {"edge": position_edge_name(g.edge_name(int(s[i]), int(r[i])), circuit.position_labels[int(t[i])]),
         "score": float(vals[i])}
        for i in best
    ]  # fmt: skip


def _at(mib: dict[str, Any], fraction: float) -> float:
    return mib["faithfulness_signed"][mib["fractions"].index(fraction)]


def _random_unit(pm: Any, task: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Random circuits at every MIB size: the faithfulness a ranking must beat."""
    from circuitfind.evaluate.circuits import MIB_FRACTIONS, random_baseline
    from circuitfind.selection.cuts import n_of_fraction

    sizes = []
    for k in MIB_FRACTIONS:
        n_edges = n_of_fraction(k, pm.graph.n_edges)
        base = random_baseline(pm, n_edges, task, n=opts["n_random"], seed=opts["seed"])
        sizes.append({"fraction": k, **{key: base[key] for key in ("n_edges", "mean", "std", "min", "max", "n")}})
    return {"sizes": sizes}


def _goal_unit(pm: Any, tok: Any, opts: dict[str, Any], load_s: float) -> dict[str, Any]:
    """EAP-IG (5 steps) on 100 IOI prompts, all for discovery; the cut is a cheap top 1%."""
    import circuitfind as cf
    from circuitfind.selection.cuts import n_of_fraction
    from circuitfind.tasks import get_task

    task = get_task("ioi", tok, n=GOAL_PROMPTS, seed=opts["seed"])
    n_edges = n_of_fraction(0.01, pm.graph.n_edges)
    with _Meter() as meter:
        circuit = cf.discover(
            pm, task, method="eap-ig", steps=STEPS, n_edges=n_edges, metric=task.metric, progress=opts["progress"]
        )
    return {
        "load_s": load_s,
        **meter.record(),
        "n_prompts": len(task),
        "n_edges_cut": circuit.n_edges,
        "cut": "top 1% by score (cheap); the wall time is the attribution plus this cut",
    }


def _tracr_unit(task_name: str, method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """ROC AUC of the method's scores against tracr's ground truth (zero ablation, ACDC's circuit for it)."""
    import torch

    import circuitfind as cf
    from circuitfind.evaluate.scores import auc, roc_points
    from circuitfind.tasks.ground_truth import tracr_ground_truth
    from circuitfind.tasks.tracr import tracr_setup

    setup = tracr_setup(task_name)
    g = setup.pm.graph
    key, truth_edges = tracr_ground_truth(setup.meta, "zero")
    truth = g.mask_of(truth_edges)[g.edge_mask]  # (E,)
    kw = {"metric": setup.metric, "ablation": "zero", "progress": False}
    with _Meter() as meter:
        if method in VARIANTS:
            circuit = _variant_discovery(setup.pm, setup.task, method, kw, n_edges=int(truth.sum()))
        else:
            circuit = cf.discover(setup.pm, setup.task, method=method, target=TARGET, steps=STEPS, **kw)
    if method in NODE_ROWS:
        return {**meter.record(), **_tracr_nodes(g, circuit, g.mask_of(truth_edges).any(dim=1), key)}
    scores = circuit.scores.double().nan_to_num(nan=-math.inf)[g.edge_mask]  # (E,)
    kept = circuit.mask[g.edge_mask]
    return {
        **meter.record(),
        "ground_truth": key,
        "n_truth": int(truth.sum()),
        "n_graph_edges": g.n_edges,
        "n_prompts": len(setup.task),
        "auc": auc(*roc_points(scores, truth)),
        "auc_abs": auc(*roc_points(scores.abs(), truth)),
        "scores_all_zero": bool((scores == 0).all()),
        "target_circuit": {
            "n_edges": int(kept.sum()),
            "tpr": int((kept & truth).sum()) / int(truth.sum()),
            "fpr": int((kept & ~truth).sum()) / int((~truth).sum()),
            "f_train": circuit.stats.get("faithfulness"),
        },
        "torch_threads": torch.get_num_threads(),
    }


def _tracr_nodes(g: Any, circuit: Any, truth: Any, key: str) -> dict[str, Any]:
    """ROC AUC of node scores against the tracr circuit's nodes (the senders of its edges)."""
    from circuitfind.evaluate.scores import auc, roc_points

    scores = circuit.node_scores.double().nan_to_num(nan=-math.inf)  # (S,)
    kept = circuit.node_mask
    return {
        "ground_truth": f"{key} (its nodes: senders of its edges)",
        "n_truth": int(truth.sum()),
        "n_graph_nodes": g.n_senders,
        "auc": auc(*roc_points(scores, truth)),
        "auc_abs": auc(*roc_points(scores.abs(), truth)),
        "unit": "nodes",
        "target_circuit": {
            "n_edges": circuit.n_edges,
            "n_nodes": circuit.n_nodes,
            "tpr": int((kept & truth).sum()) / int(truth.sum()),
            "fpr": int((kept & ~truth).sum()) / max(1, int((~truth).sum())),
            "f_train": circuit.stats.get("faithfulness"),
        },
    }


# --- the parent: units, merging, table, figures ------------------------------------------------------------------
def _opts(task: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    opts = {
        "threads": args.threads,
        "seed": args.seed,
        "progress": False,  # on a sweep worker: the sweep's bar counts the units
        "n_random": args.n_random,
        "candidate_fraction": args.candidate_fraction,
        "n_prompts": _n_prompts(args, task) if task in LM_TASKS else None,
        "device": args.device,
    }
    if method == "acdc":
        row = _validate_rows().get(task)
        opts["acdc_threshold"] = row["chosen_threshold"] if row else 0.1
    return opts


def run_units(units: list[tuple[str, str]], args: argparse.Namespace, on_entry: Any) -> None:
    """Run ``(task, method)`` units as sweep cells; ``on_entry(task, method, entry)`` gets each result (an entry
    ``{"error": ..., "traceback": ...}`` when the unit failed) as it arrives."""
    from circuitfind.sweeps import Cell, ResultsStore, SweepSpec, sweep

    cells = {
        (task, method): Cell(
            model="smollm2",
            task=task,
            method=method,
            seed=args.seed,
            num_cpus=float(args.threads),
            options={"opts": _opts(task, method, args), "config": _unit_config(args, task, method)},
        )
        for task, method in units
    }
    spec = SweepSpec(tuple(cells.values()), args.out.parent / "sweeps" / args.out.stem, workers=args.workers)
    with ResultsStore(spec.store_path) as store:  # units asked for here run again (the JSON decides what is done)
        store.forget([c.id for c in spec.cells])

    def on_row(row: dict[str, Any]) -> None:
        task, method = row["task"], row["method"]
        if row["status"] != "done":
            print(f"[{task}] {method}: FAILED\n{row.get('traceback') or row['error']}", flush=True)
            on_entry(task, method, {"error": row["error"], "traceback": row.get("traceback")})
            return
        entry = dict(row["metrics"]["result"])
        entry.update(peak_rss_mb=row["peak_rss_mb"], process_wall_s=row["wall_s"], worker=row["worker"])
        on_entry(task, method, entry)

    sweep(spec, address=args.address, cell_fn=compare_cell, progress=not args.no_progress, on_row=on_row)


def acdc_from_validate(task: str) -> dict[str, Any] | None:
    """ACDC's row for ``task`` from validate.json (read-only): the chosen threshold's circuit and its MIB curve."""
    r = _validate_rows().get(task)
    if r is None:
        return None
    chosen = next(s for s in r["sweep"] if s["threshold"] == r["chosen_threshold"])
    mib = r["mib_curve"]
    return {
        "source": f"{_rel(VALIDATE_JSON)} (read-only; not rerun)",
        "threshold": r["chosen_threshold"],
        "wall_s": chosen.get("acdc_time_s"),
        "wall_note": "ACDC's own run time at this threshold as validate.py recorded it (acdc_time_s)",
        "peak_rss_mb": None,
        "cpr": mib["cpr"],
        "cmd": mib["cmd"],
        "f_at_1pct": _at(mib, 0.01),
        "f_at_5pct": _at(mib, 0.05),
        "mib_curve": {k: mib[k] for k in ("fractions", "n_edges", "faithfulness_signed", "faithfulness_abs")},
        "circuit": {"n_edges": r["n_edges"], "fraction": r["fraction"], "f_held_out": r["faithfulness"]},
        "target_circuit": None,
        "n_train": r["n_train"],
        "n_held_out": r["n_held_out"],
    }


def random_from_validate(task: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """validate.json's random circuits at the MIB sizes, when they were drawn exactly as this run would draw
    them (same prompts, seed and number per size: :func:`random_baseline` is deterministic)."""
    r = _validate_rows().get(task)
    if r is None or "random" not in r.get("mib_curve", {}):
        return None
    mib = r["mib_curve"]
    same = r["config"]["n_prompts"] == _n_prompts(args, task) and r["config"]["seed"] == args.seed
    if not same or any(x["n"] != args.n_random for x in mib["random"]):
        return None
    sizes = [
        {"fraction": k, "n_edges": n, **x}
        for k, n, x in zip(mib["fractions"], mib["n_edges"], mib["random"], strict=True)
    ]
    return {"source": f"{_rel(VALIDATE_JSON)} mib_curve.random (read-only; same draw)", "sizes": sizes}


def acdc_tracr_from_reproduce(task: str) -> dict[str, Any] | None:
    path = ROOT / "figures" / f"roc_{task}.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text())["runs"]["zero"]
    return {
        "source": f"{_rel(path)} runs.zero (read-only): threshold-sweep ROC of ACDC's circuits, not of scores",
        "ground_truth": run["ground_truth"],
        "auc": run["auc"],
        "n_thresholds": len(run["points"]),
    }


def _load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"model": "SmolLM2-135M-Instruct (circuitfind.load_model())", "tasks": {}}


def _save_unit(path: Path, task: str, method: str, entry: dict[str, Any], settings: dict[str, Any]) -> None:
    """Merge one (task, method) entry into the file as it is now (another run may have added units)."""
    from circuitfind.fileio import atomic_write

    data = _load_results(path)
    data["settings"] = settings
    data["tasks"].setdefault(task, {})[method] = entry
    atomic_write(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "discovery": "train split (first half of the prompts); target cut = smallest top-k with exact train "
        f"faithfulness >= {TARGET}",
        "evaluation": "held-out split, task metric, resample ablation; MIB fractions 0.1%..100%",
        "steps": STEPS,
        "exact_candidates": f"top {100 * args.candidate_fraction:g}% of edges by eap-ig ({STEPS} steps)",
        "acdc": "rerun at validate.json's chosen threshold" if args.acdc_rerun else f"from {_rel(VALIDATE_JSON)}",
        "tracr": "zero ablation, L2 metric (tasks.tracr.tracr_setup), ground truth = ground_truth_acdc",
        "threads": args.threads,
        "cpu": "2 cores shared with other jobs: wall times are noisy",
    }


def _units(args: argparse.Namespace) -> list[tuple[str, str]]:
    from circuitfind.algorithms import METHODS as REGISTERED

    if args.unit:  # an explicit list (a documented subset of the grid)
        units = [tuple(u.split(":", 1)) for u in args.unit]
        bad = [u for u in units if len(u) != 2 or u[0] not in TASKS or u[1] not in (*METHODS, "random")]
        if bad:
            raise SystemExit(f"--unit takes TASK:METHOD with a task of {TASKS} and a method of {METHODS}; got {bad}")
        return sorted(units, key=lambda u: (u == ("ioi", "edge-pruning"), u[1] in ("exact", "exact-node")))
    units = []
    for task in args.task:
        if task == GOAL:
            units.append((GOAL, "eap-ig"))
            continue
        if task in LM_TASKS and not args.no_random:
            units.append((task, "random"))
        for m in args.method:
            if m in VARIANTS and VARIANTS[m][0] not in REGISTERED:
                print(f"[{task}] {m}: method {VARIANTS[m][0]!r} is not in this circuitfind; skipped", flush=True)
            elif m == "edge-pruning" and task not in EDGE_PRUNING_TASKS:
                print(f"[{task}] {m}: run on {', '.join(EDGE_PRUNING_TASKS)} only (minutes per task); skipped")
            elif m in POSITION_ROWS and task not in ("ioi", "greater-than"):
                why = "its prompts differ in length"
                if task in TRACR:
                    why = "the AUC of position-summed scores is eap-ig's"
                print(f"[{task}] {m}: {why}; skipped", flush=True)
            else:
                units.append((task, m))
    return sorted(units, key=lambda u: (u == ("ioi", "edge-pruning"), u[1] == "exact"))  # the longest ones last


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = _load_results(args.out)
    if args.table:
        print_table(results)
        return 0
    if args.plot:
        _plot(results, args.figures / "compare_methods.png")
        return 0
    settings = _settings(args)

    def record(task: str, method: str, entry: dict[str, Any]) -> None:
        entry["config"] = _unit_config(args, task, method)
        _save_unit(args.out, task, method, entry, settings)
        print(f"[{task}] {method}: {_one_line(entry)}", flush=True)
        if task in LM_TASKS:
            _plot(_load_results(args.out), args.figures / "compare_methods.png")

    to_run = []
    for task, method in _units(args):
        config = _unit_config(args, task, method)
        done = results["tasks"].get(task, {}).get(method)
        entry = None
        if method == "acdc" and task in TRACR:  # seconds to rerun, but reproduce's sweep is the reference
            entry = acdc_tracr_from_reproduce(task)
            if entry is None:
                print(f"[{task}] acdc: no figures/roc_{task}.json; skipped", flush=True)
                continue
        elif method == "acdc" and not args.acdc_rerun:
            entry = acdc_from_validate(task)
            if entry is None:
                print(f"[{task}] acdc: no row in {VALIDATE_JSON}; skipped", flush=True)
                continue
        elif done and done.get("config") == config and "error" not in done and not args.force:
            print(f"[{task}] {method}: already in {args.out}; skipped (--force reruns it)", flush=True)
            continue
        elif method == "random" and not args.force:
            entry = random_from_validate(task, args)
        if entry is None:
            to_run.append((task, method))
        else:
            record(task, method, entry)
    if to_run:
        print(f"running {len(to_run)} unit(s) as a sweep: " + ", ".join(f"{t}:{m}" for t, m in to_run), flush=True)
        run_units(to_run, args, record)
    results = _load_results(args.out)
    print()
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


def _one_line(e: dict[str, Any]) -> str:
    if "error" in e:
        return f"error: {e['error']}"
    parts = []
    for key, fmt in (("wall_s", "{:.1f} s"), ("peak_rss_mb", "peak {:.0f} MB"), ("cpr", "CPR {:.2f}")):
        if e.get(key) is not None:
            parts.append(fmt.format(e[key]))
    if e.get("auc") is not None:
        parts.append(f"AUC {e['auc']:.3f}")
    tc = e.get("target_circuit")
    if tc:
        parts.append(f"target circuit {tc['n_edges']} edges")
    return ", ".join(parts) or "done"


# --- table and figures ---------------------------------------------------------------------------------------
def _fmt(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _ci(e: dict[str, Any], key: str) -> str:
    ci = e.get(f"{key}_ci")
    return "" if not ci or ci.get("lo") is None else f" [{ci['lo']:.2f}, {ci['hi']:.2f}]"


def _f01(e: dict[str, Any]) -> Any:
    """f at 0.1% of the edges: stored, or read off the stored MIB curve (rows of earlier runs)."""
    if e.get("f_at_01pct") is not None:
        return e["f_at_01pct"]
    c = e.get("mib_curve")
    return _at(c, 0.001) if c and 0.001 in c["fractions"] else None


def _size(e: dict[str, Any]) -> str:
    tc = e.get("target_circuit") or {}
    if tc.get("n_nodes") is not None:
        return f"{tc['n_nodes']} nodes/{tc['n_edges']}e"
    if tc.get("n_position_edges") is not None:
        return f"{tc['n_position_edges']} pos-e"
    return _fmt(tc.get("n_edges"), "{}")


TABLE_COLS = (
    ("task", 16), ("method", 12), ("wall s", 7), ("peak MB", 7), ("CPR [95% CI]", 18), ("CMD [95% CI]", 18),
    ("f@0.1%", 6), ("f@1%", 6), ("target size", 16), ("f target", 8), ("AUC", 6),
)  # fmt: skip


def _table_line(cells: list[str]) -> str:
    widths = [w for _, w in TABLE_COLS]
    parts = [f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
    return " ".join(parts) + ("  " + cells[len(TABLE_COLS)] if len(cells) > len(TABLE_COLS) else "")


def _table_row(task: str, method: str, e: dict[str, Any], tasks: dict[str, Any]) -> str:
    if "error" in e:
        return f"{task:<16} {method:<12} error: {e['error']}"
    if method == "hybrid":  # its scores are EAP-IG's: the curve numbers are the eap-ig row's
        ig = tasks.get(task, {}).get("eap-ig") or {}
        e = {**e, **{k: ig.get(k) for k in ("cpr", "cmd", "cpr_ci", "cmd_ci", "f_at_01pct", "f_at_1pct", "mib_curve")}}
    tc = e.get("target_circuit") or {}
    cells = [
        task,
        method,
        _fmt(e.get("wall_s"), "{:.1f}"),
        _fmt(e.get("peak_rss_mb"), "{:.0f}"),
        _fmt(e.get("cpr"), "{:.2f}") + _ci(e, "cpr"),
        _fmt(e.get("cmd"), "{:.2f}") + _ci(e, "cmd"),
        _fmt(_f01(e), "{:.2f}"),
        _fmt(e.get("f_at_1pct"), "{:.2f}"),
        _size(e),
        _fmt(tc.get("f_held_out"), "{:.2f}"),
        _fmt(e.get("auc"), "{:.3f}"),
        _notes(method, e),
    ]
    return _table_line(cells).rstrip()


def print_table(results: dict[str, Any]) -> None:
    """One table: every (task, method) row; LM tasks held out, tracr rows with their ROC AUC."""
    tasks = results.get("tasks", {})
    head = _table_line([c for c, _ in TABLE_COLS] + ["notes"])
    print("Held-out (task metric, resample ablation; tracr: zero ablation, L2 metric, AUC against the ground truth);")
    print(f"target circuit: the smallest cut reaching {TARGET} on the train split, its held-out faithfulness")
    print(head)
    print("-" * len(head))
    for task in (*LM_TASKS, *TRACR):
        for method in METHODS:
            e = tasks.get(task, {}).get(method)
            if e is not None:
                print(_table_row(task, method, e, tasks))
        rnd = tasks.get(task, {}).get("random")
        if rnd and "sizes" in rnd:
            by = {s["fraction"]: s["mean"] for s in rnd["sizes"]}
            cells = [task, "random", "", "", "", "", _fmt(by.get(0.001), "{:.2f}"), _fmt(by.get(0.01), "{:.2f}")]
            cells += ["", "", "", f"mean of {rnd['sizes'][0]['n']} random circuits per size"]
            print(_table_line(cells).rstrip())
    goal = tasks.get(GOAL, {}).get("eap-ig")
    if goal and "error" not in goal:
        ok_t, ok_m = goal["wall_s"] < GOAL_SECONDS, goal["peak_rss_mb"] * 2**20 < GOAL_BYTES
        print(
            f"\nGoal: EAP-IG ({STEPS} steps) on IOI, {goal['n_prompts']} prompts all for discovery: "
            f"{goal['wall_s']:.1f} s ({'<' if ok_t else '>='} {GOAL_SECONDS:.0f} s goal), peak RSS "
            f"{goal['peak_rss_mb']:.0f} MB incl. model load, {_fmt(goal.get('peak_rss_discovery_mb'), '{:.0f}')} MB "
            f"during discovery ({'<' if ok_m else '>='} {GOAL_BYTES >> 30} GB goal)"
        )


def _notes(method: str, e: dict[str, Any]) -> str:
    tc = e.get("target_circuit") or {}
    ci = tc.get("f_held_out_ci")
    notes = [f"f target CI [{ci['lo']:.2f}, {ci['hi']:.2f}]"] if ci and ci.get("lo") is not None else []
    return "; ".join(notes + [_method_note(method, e)]).strip("; ")


def _method_note(method: str, e: dict[str, Any]) -> str:
    tc = e.get("target_circuit") or {}
    if "n_truth" in e or "ground_truth" in e:  # tracr
        if tc and tc.get("tpr") is not None:
            return f"target: {tc['n_edges']} edges, TPR {tc['tpr']:.2f}, FPR {tc['fpr']:.2f}" + (
                f" (AUC over {e['unit']})" if e.get("unit") else ""
            )
        if e.get("scores_all_zero"):
            return "all scores 0 (the L2 metric's gradient vanishes at the full model)"
        return "threshold-sweep ROC of ACDC's circuits (figures/roc_*.json)" if e.get("source") else ""
    if method == "acdc":
        c = e.get("circuit") or {}
        src = "validate.json" if "validate" in str(e.get("source", "")) else "rerun"
        return (
            f"tau {e.get('threshold')}: {c.get('n_edges')} edges, f {_fmt(c.get('f_held_out'), '{:.2f}')} ({src}; "
            "curve = top-k by ACDC effect)"
        )
    if method == "exact" and "candidates" in e:
        return (
            f"{e['candidates']} candidates (top {100 * e['candidates_fraction']:.2g}% by EAP-IG); "
            f"{1000 * e['s_per_edge']:.0f} ms/edge, all edges ~{e['full_cost_s_extrapolated'] / 3600:.1f} h"
        )
    if method == "hybrid":
        h = e.get("hybrid", {})
        return f"{h.get('candidates')} candidates, {h.get('edges_tested')} exact tests; CPR..f@1% = eap-ig's"
    if method in NODE_ROWS:
        d = [e.get(k) or {} for k in ("f_at_01pct_detail", "f_at_1pct_detail")]
        return f"f@k: top {d[0].get('n_nodes')} / {d[1].get('n_nodes')} nodes within the edge budget"
    if method in POSITION_ROWS:
        free = e.get("position_free_same_prompts") or {}
        return (
            f"f@k at as many position-edges; position-free on the same prompts "
            f"{_fmt(free.get('f_at_01pct'), '{:.2f}')} / {_fmt(free.get('f_at_1pct'), '{:.2f}')}"
        )
    return ""


def _plot(results: dict[str, Any], path: Path) -> None:
    """The one figure: a panel per LM task, held-out faithfulness against circuit size (% of edges, log axis):
    the edge methods' MIB curves, every target circuit (stars), the node and position rows at their budgets."""
    from circuitfind.cli.plots import new_figure

    tasks = [t for t in LM_TASKS if t in results.get("tasks", {})]
    if not tasks:
        return
    fig = new_figure((5.2 * len(tasks), 4.6))
    if fig is None:
        print("matplotlib is not installed: no figure", flush=True)
        return
    axes = [fig.add_subplot(1, len(tasks), i + 1) for i in range(len(tasks))]
    for ax, task in zip(axes, tasks, strict=True):
        _plot_panel(ax, task, results["tasks"][task])
    axes[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    print(f"wrote {path}", flush=True)


def _color(method: str) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab20"](METHODS.index(method) % 20)


def _plot_panel(ax: Any, task: str, entries: dict[str, Any]) -> None:
    for method in METHODS:
        e = entries.get(method)
        if not e or "mib_curve" not in e or method == "hybrid":
            continue
        c = e["mib_curve"]
        label = f"{method} (CPR {e['cpr']:.2f})" + (" [validate.json]" if method == "acdc" and e.get("source") else "")
        ax.plot([100 * k for k in c["fractions"]], c["faithfulness_signed"], marker=".", color=_color(method),
                label=label, lw=1.2)  # fmt: skip
    for method in METHODS:  # the budget points of node and position rows (no edge curve)
        e = entries.get(method) or {}
        if method in (*NODE_ROWS, *POSITION_ROWS) and e.get("f_at_1pct") is not None:
            xs = [100 * b for b in BUDGETS]
            ax.plot(xs, [e.get("f_at_01pct"), e.get("f_at_1pct")], marker="s" if method in NODE_ROWS else "^",
                    ls=":", color=_color(method), label=f"{method} (at 0.1% / 1% of edges)")  # fmt: skip
    for method in METHODS:  # the target circuits (0.8 on the train prompts), held out
        tc = (entries.get(method) or {}).get("target_circuit")
        if tc and tc.get("f_held_out") is not None:
            ax.scatter([100 * tc["fraction"]], [tc["f_held_out"]], marker="*", s=70, color=_color(method), zorder=3)
    ax.scatter([], [], marker="*", color="black", label=f"target circuit ({TARGET} on train), held out")
    rnd = entries.get("random")
    if rnd and "sizes" in rnd:
        xs = [100 * s["fraction"] for s in rnd["sizes"]]
        ax.plot(xs, [s["mean"] for s in rnd["sizes"]], color="grey", ls=":", label="random circuits (mean)")
    ax.axhline(1.0, ls=":", color="grey", lw=1)
    ax.axhline(0.0, ls=":", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="circuit size (% of edges)", ylabel="held-out faithfulness (task metric)")
    ax.set_title(f"SmolLM2-135M, {task}", fontsize=9)


if __name__ == "__main__":
    raise SystemExit(main())
