"""Validate ACDC on the default model (SmolLM2-135M): held-out faithfulness against random circuits of equal size.

For each task (IOI, greater-than, induction):

1. clean check: the full model's task metric on clean and on corrupted prompts, and how often the correct answer
   beats the wrong one (a circuit of a model that cannot do the task means little);
2. a short ACDC sweep (resample ablation, on the train split; by default with the task's own metric, logit
   difference or probability difference, or ``--metric kl``), thresholds from the largest down, stopping once a
   circuit exceeds ``--max-fraction`` of the edges (5%) or recovers ``--enough`` of the metric on the train
   prompts; the chosen circuit is the largest one within the size budget (the sweep is reported either way);
3. held-out faithfulness (task metric) of every sweep circuit, and the mean ± std over ``--n-random`` random
   circuits of the same size;
4. a faithfulness-vs-edges curve at MIB's sizes (0.1% .. 100% of edges): the top-k% edges by the chosen run's
   per-edge ACDC effects (untested edges rank last), with its CPR and CMD, against ``--n-random-curve`` random
   circuits per size.

The tasks run as cells of a :func:`circuitfind.sweep` (one cell per task, on Ray workers that load the model once;
``--workers`` at once, default as many as the CPUs; the store is ``benchmarks/results/sweeps/<results name>/``).
Prints a table, writes ``benchmarks/results/validate.json`` (after every task; tasks already there with the same
settings are skipped, and ACDC circuits are cached under ``benchmarks/results/circuits/``, so an interrupted run
resumes), ``figures/faithfulness_vs_edges_<task>.png``, ``figures/acdc_trace_<task>.png`` (the discovery
metric on the train prompts after each layer of receivers: where a coarse threshold lost it) and, with graphviz's
``dot``, the IOI circuit as ``figures/ioi_circuit_smollm2.svg``.

Cost: an ACDC test costs a forward through every layer above the visited receiver (on one core, 8 prompts of
<= 20 tokens: ~45 ms from the top, ~310 ms from layer 15). The default thresholds' runs take 25-75 min each on
one core; thresholds low enough to keep most of the graph alive through the upper layers take many hours.
``--quick`` checks the pipeline end to end (6 train / 6 held-out prompts, one threshold, one task, 5 random
circuits); its outputs go to ``benchmarks/results/quick/``.

    python benchmarks/validate.py                         # everything
    python benchmarks/validate.py --task ioi --thresholds 0.1 0.03 0.01
    python benchmarks/validate.py --quick --task induction
    python benchmarks/validate.py --table                 # the table of the results file
    python benchmarks/validate.py --selection             # the size selection: train vs validated cut, held-out
                                                          # f with 95% intervals (benchmarks/validate_selection.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import circuitfind as cf  # noqa: E402
from circuitfind.cli.plots import new_figure  # noqa: E402
from circuitfind.evaluate.circuits import (  # noqa: E402
    cpr_cmd_of_scores,
    faithfulness_many,
    random_baseline,
)
from circuitfind.reproduce.thresholds import threshold_sweep  # noqa: E402
from circuitfind.tasks import Task, get_task  # noqa: E402

TASKS = ("ioi", "greater-than", "induction")
# Tried from the largest (smallest circuit, fastest run) down. Task-metric thresholds are in the metric's units:
# logits for IOI and induction (clean-minus-corrupted gaps ~4 and ~7), probability for greater-than (~0.9).
THRESHOLDS = {
    "kl": {name: (0.1, 0.03, 0.01, 0.003) for name in TASKS},
    # induction at 0.2 drifts: each of hundreds of removals may cost up to tau, and on the train prompts the
    # logit difference had fallen from 6.5 to -0.4 a fifth of the way down the model, so the sweep starts lower
    "task": {"ioi": (0.1, 0.03, 0.01), "greater-than": (0.01, 0.003, 0.001), "induction": (0.05, 0.02)},
}
QUICK_THRESHOLD = {"kl": 0.03, "task": 0.1}
MEMORY_BUDGET = 2 << 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, action="append", help="task(s) to run (repeatable; default: all)")
    p.add_argument("--n-prompts", type=int, default=40, help="prompts per task; half discover, half held out")
    p.add_argument(
        "--metric", choices=("task", "kl"), default="task", help="discovery metric: the task's own (default) or KL"
    )
    p.add_argument("--thresholds", type=float, nargs="+", default=None, help="ACDC sweep (default: per task, above)")
    p.add_argument("--max-fraction", type=float, default=0.05, help="largest circuit size wanted (fraction of edges)")
    p.add_argument(
        "--enough", type=float, default=0.9, help="stop the sweep once a circuit recovers this much (train split)"
    )
    p.add_argument("--n-random", type=int, default=20, help="random circuits of the chosen circuit's size")
    p.add_argument("--n-random-curve", type=int, default=5, help="random circuits per size of the MIB curve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="6+6 prompts, one threshold, one task (induction default)")
    p.add_argument("--force", action="store_true", help="rerun tasks already in the results file")
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the tasks")
    p.add_argument("--workers", type=int, default=None, help="tasks at once (default: one per CPU)")
    p.add_argument("--address", default=None, help="a Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/validate.json)")
    p.add_argument("--figures", type=Path, default=None, help="figure folder (default figures/)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_prompts = 12
        args.thresholds = args.thresholds or [QUICK_THRESHOLD[args.metric]]
        args.n_random = min(args.n_random, 5)
        args.task = args.task or ["induction"]
        results = ROOT / "benchmarks" / "results" / "quick"
        args.out = args.out or results / "validate.json"
        args.figures = args.figures or results
    args.task = args.task or list(TASKS)
    if args.thresholds:
        args.thresholds = sorted(args.thresholds, reverse=True)
    args.out = args.out or ROOT / "benchmarks" / "results" / "validate.json"
    args.figures = args.figures or ROOT / "figures"
    return args


# --- measurements --------------------------------------------------------------------------------------------
def _per_prompt(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """``(B,)`` task metric of each prompt: mean correct minus mean wrong logit (or probability)."""
    values = logits.float() if task.metric == "logit_diff" else logits.float().softmax(-1)

    def pick(ids: torch.Tensor, mean: bool) -> torch.Tensor:  # (B, A) ids padded with -1 -> (B,)
        valid = (ids >= 0).float()
        got = values.gather(1, ids.clamp(min=0)) * valid
        return got.sum(1) / valid.sum(1).clamp(min=1) if mean else got.sum(1)

    mean = task.metric == "logit_diff"
    return pick(task.answers, mean) - pick(task.wrong_answers, mean)


def clean_check(pm: cf.PatchableModel, task: Task) -> dict[str, Any]:
    """The unpatched model on clean and corrupted prompts: task metric and fraction of prompts solved."""
    out = {}
    zero = pm.ablation("zero")  # unused under the full mask; the forward needs one
    for label, ids in (("clean", task.clean_ids), ("corrupted", task.corrupted_ids)):
        with torch.no_grad():
            logits = pm.forward(
                ids, zero, pm.graph.full_mask(), attention_mask=task.attention_mask, positions=task.answer_pos
            )
        per = _per_prompt(logits, task)
        out[label] = {"metric": float(per.mean()), "solved": float((per > 0).float().mean())}
    out["metric_name"] = task.metric
    return out


def run_task(pm: cf.PatchableModel, tok: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    task = get_task(name, tok, n=args.n_prompts, seed=args.seed, n_train=args.n_prompts // 2)
    t0 = time.perf_counter()
    check = clean_check(pm, task)
    print(
        f"[{name}] clean check ({task.metric}): clean {check['clean']['metric']:.3f} "
        f"(solved {100 * check['clean']['solved']:.0f}%), corrupted {check['corrupted']['metric']:.3f}",
        flush=True,
    )
    if check["clean"]["metric"] <= check["corrupted"]["metric"]:
        print(f"[{name}] warning: the model does no better on clean than on corrupted prompts", flush=True)

    sweep: list[dict[str, Any]] = []
    circuits = []
    metric = task.metric if args.metric == "task" else "kl"
    for tau in _thresholds(args, name):  # largest threshold first: smallest circuits, fastest runs
        t1 = time.perf_counter()
        (circuit,) = threshold_sweep(
            pm,
            task,
            [tau],
            metric=metric,
            ablation="resample",
            cache_dir=args.out.parent / "circuits",
            progress=False,  # on a sweep worker: the sweep's bar counts the tasks
        )
        circuits.append(circuit)
        sweep.append(
            {
                "threshold": tau,
                "n_edges": circuit.n_edges,
                "fraction": circuit.fraction,
                "discovery_metric": metric,
                "metric_train": circuit.metric_circuit,
                "faithfulness_train": circuit.recovered if metric != "kl" else None,
                "acdc_time_s": circuit.stats.get("acdc_time_s"),
                "wall_s": time.perf_counter() - t1,  # ~0 when the circuit came from the cache
                # the discovery metric on the train prompts after each layer of receivers (logits first)
                "trace": [
                    {k: e[k] for k in ("layer", "metric", "edges_kept", "edges_tested", "elapsed_s")}
                    for e in circuit.stats.get("trace", [])
                ],
            }
        )
        f_train = sweep[-1]["faithfulness_train"]
        print(
            f"[{name}] threshold {tau:g}: {circuit.n_edges} edges ({100 * circuit.fraction:.3f}%)"
            + ("" if f_train is None else f", train faithfulness {f_train:.3f}")
            + f", {sweep[-1]['wall_s']:.0f} s",
            flush=True,
        )
        if circuit.fraction > args.max_fraction or (f_train is not None and f_train >= args.enough):
            break
    within = [i for i, s in enumerate(sweep) if s["fraction"] <= args.max_fraction]
    chosen = within[-1] if within else min(range(len(sweep)), key=lambda i: sweep[i]["fraction"])

    rows = faithfulness_many(pm, circuits, task, memory_budget=MEMORY_BUDGET)
    for s, row, circuit in zip(sweep, rows, circuits, strict=True):
        s["faithfulness"] = row["faithfulness"]
        s["kl_held_out"] = row["kl_full_circuit"]
        base = random_baseline(pm, circuit.n_edges, task, n=args.n_random, seed=args.seed)
        s["random"] = {k: base[k] for k in ("mean", "std", "min", "max", "n")}
    best = sweep[chosen]
    print(f"[{name}] MIB curve of the ACDC effects and random circuits", flush=True)
    mib = cpr_cmd_of_scores(pm, circuits[chosen].scores, task)
    mib["random"] = []
    for n_edges in mib["n_edges"]:
        base = random_baseline(pm, n_edges, task, n=args.n_random_curve, seed=args.seed)
        mib["random"].append({k: base[k] for k in ("mean", "std", "n")})
    result = {
        "config": _config(args, name),
        "n_prompts": len(task),
        "n_train": len(task.train()),
        "n_held_out": len(task.held_out()),
        "metric": task.metric,
        "metric_full_held_out": rows[chosen]["metric_full"],
        "metric_empty_held_out": rows[chosen]["metric_empty"],
        "clean_check": check,
        "chosen_threshold": best["threshold"],
        "within_budget": bool(within),
        "n_edges": best["n_edges"],
        "fraction": best["fraction"],
        "faithfulness": best["faithfulness"],
        "kl_held_out": best["kl_held_out"],
        "random": best["random"],
        "sweep": sweep,
        "mib_curve": mib,
        "wall_s": time.perf_counter() - t0,
    }
    _plot(name, metric, sweep, chosen, mib, args.figures / f"faithfulness_vs_edges_{name}.png")
    _plot_trace(name, metric, sweep, circuits[chosen], args.figures / f"acdc_trace_{name}.png")
    if name == "ioi":
        _render(circuits[chosen], args.figures / "ioi_circuit_smollm2.svg")
    return result


def _thresholds(args: argparse.Namespace, name: str) -> list[float]:
    return list(args.thresholds or THRESHOLDS[args.metric][name])


def _config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {
        "n_prompts": args.n_prompts,
        "thresholds": _thresholds(args, name),
        "max_fraction": args.max_fraction,
        "enough": args.enough,
        "n_random": args.n_random,
        "seed": args.seed,
        "discovery": {"metric": args.metric, "ablation": "resample"},
        "evaluation": {"metric": "task", "ablation": "resample", "split": "held_out"},
    }


# --- output ------------------------------------------------------------------------------------------------
def _plot(name: str, metric: str, sweep: list[dict[str, Any]], chosen: int, mib: dict[str, Any], path: Path) -> None:
    fig = new_figure((5.2, 4.0))
    if fig is None:
        print("matplotlib is not installed: no figure", flush=True)
        return
    ax = fig.add_subplot()
    fr = [n / mib["n_edges"][-1] for n in mib["n_edges"]]
    ax.plot(
        fr, mib["faithfulness_signed"], marker=".", color="C1", label=f"top-k% by ACDC effect (CPR {mib['cpr']:.2f})"
    )
    rnd = mib["random"]
    ax.plot(fr, [r["mean"] for r in rnd], ls="--", color="grey", lw=1, label="random circuits, mean")
    ax.fill_between(
        fr, [r["mean"] - r["std"] for r in rnd], [r["mean"] + r["std"] for r in rnd], color="grey", alpha=0.2, lw=0
    )
    pts = sorted(sweep, key=lambda s: s["fraction"])
    xs = [max(s["fraction"], 1e-6) for s in pts]
    ax.plot(xs, [s["faithfulness"] for s in pts], marker="o", color="C0", label="ACDC circuits (sweep)")
    ax.errorbar(
        xs,
        [s["random"]["mean"] for s in pts],
        yerr=[s["random"]["std"] for s in pts],
        fmt="s",
        ms=4,
        capsize=3,
        color="black",
        label=f"random circuits of ACDC's size (n={pts[0]['random']['n']})",
    )
    for s, x in zip(pts, xs, strict=True):
        ax.annotate(
            f"τ={s['threshold']:g}", (x, s["faithfulness"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    c = sweep[chosen]
    ax.scatter(
        [max(c["fraction"], 1e-6)], [c["faithfulness"]], s=90, facecolors="none", edgecolors="red", label="chosen"
    )
    ax.axvline(0.05, ls=":", color="red", lw=1)
    ax.axhline(1.0, ls=":", color="grey", lw=1)
    ax.axhline(0.0, ls=":", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="circuit size (fraction of edges)", ylabel="held-out faithfulness (task metric)")
    ax.set_title(f"SmolLM2-135M, {name}: ACDC ({metric}, resample)", fontsize=9)
    _save_figure(fig, ax, path)


def _plot_trace(name: str, metric: str, sweep: list[dict[str, Any]], circuit: cf.Circuit, path: Path) -> None:
    """ACDC's discovery metric on the train prompts after each layer of receivers: where the circuit drifted."""
    fig = new_figure((5.2, 3.6))
    if fig is None or not any(s["trace"] for s in sweep):
        return
    ax = fig.add_subplot()
    for i, s in enumerate(sweep):
        if s["trace"]:
            ax.plot(
                [e["layer"] for e in s["trace"]],
                [e["metric"] for e in s["trace"]],
                marker=".",
                color=f"C{i}",
                label=f"τ={s['threshold']:g} ({s['n_edges']} edges)",
            )
    ax.axhline(circuit.metric_full, ls="--", color="green", lw=1, label="full model")
    ax.axhline(circuit.metric_empty, ls="--", color="red", lw=1, label="empty circuit (corrupted)")
    ax.invert_xaxis()  # ACDC walks from the logits (layer n) down to the embeddings
    ax.set(
        xlabel=f"layer whose receivers were just visited ({circuit.graph.n_layers} = logits)",
        ylabel=f"{metric} of the subgraph (train prompts)",
    )
    ax.set_title(f"SmolLM2-135M, {name}: the metric as ACDC removes edges", fontsize=9)
    _save_figure(fig, ax, path)


def _save_figure(fig: Any, ax: Any, path: Path) -> None:
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}", flush=True)


def _render(circuit: cf.Circuit, path: Path) -> None:
    try:
        circuit.render(path)
        print(f"wrote {path}", flush=True)
    except cf.errors.RenderError as exc:  # no graphviz: the numbers still count
        print(f"not rendered: {exc}", flush=True)


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"model": "smollm2", "tasks": {}}


def _save(path: Path, data: dict[str, Any], name: str) -> None:
    """Write task ``name``'s result into the file as it is now (another process may have added tasks meanwhile)."""
    latest = _load(path)
    latest["tasks"][name] = data["tasks"][name]
    data["tasks"] = latest["tasks"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _smallest_faithful(r: dict[str, Any], target: float = 0.8) -> str:
    """The smallest MIB size within the budget whose top-k% circuit (by ACDC effect) reaches ``target``."""
    mib = r.get("mib_curve")
    if mib is None:
        return "-"
    for k, f in zip(mib["fractions"], mib["faithfulness_signed"], strict=True):
        if k <= r["config"]["max_fraction"] and f >= target:
            return f"{100 * k:g}% (f {f:.2f})"
    return f"none <= {100 * r['config']['max_fraction']:g}%"


def print_table(results: dict[str, Any]) -> None:
    cols = ("task", "clean metric", "solved", "tau", "edges", "% edges", "f held-out", "random f (mean ± std)")
    cols += ("CPR", "CMD", "top-k% by effect, f >= 0.8")
    widths = (13, 13, 7, 7, 7, 8, 10, 22, 6, 6, 26)
    head = " ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cols, widths, strict=True)))
    print(head)
    print("-" * len(head))
    for name, r in results["tasks"].items():
        clean, rnd = r["clean_check"]["clean"], r["random"]
        cells = (
            f"{clean['metric']:.3f}",
            f"{100 * clean['solved']:.0f}%",
            f"{r['chosen_threshold']:g}",
            str(r["n_edges"]),
            f"{100 * r['fraction']:.3f}%",
            f"{r['faithfulness']:.3f}",
            f"{rnd['mean']:.3f} ± {rnd['std']:.3f}",
            f"{r['mib_curve']['cpr']:.2f}" if "mib_curve" in r else "-",
            f"{r['mib_curve']['cmd']:.2f}" if "mib_curve" in r else "-",
            _smallest_faithful(r),
        )
        line = " ".join([f"{name:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(cells, widths[1:], strict=True))])
        print(line + ("" if r["within_budget"] else "  (over budget)"))


def validate_cell(cell: Any, pm: cf.PatchableModel, tok: Any) -> dict[str, Any]:
    """The sweep's cell function: one task's whole validation (``cell.options`` holds the arguments)."""
    args = argparse.Namespace(**cell.options["args"])
    args.out, args.figures = Path(args.out), Path(args.figures)
    return {"metrics": {"result": run_task(pm, tok, cell.task, args)}}


def _sweep_spec(args: argparse.Namespace, names: list[str]) -> Any:
    from circuitfind.sweeps import Cell, SweepSpec

    keep = ("n_prompts", "metric", "thresholds", "max_fraction", "enough", "n_random", "n_random_curve", "seed")
    shared = {k: getattr(args, k) for k in keep}
    paths = {"out": str(args.out), "figures": str(args.figures), "no_progress": True}
    cells = tuple(
        Cell(
            model="smollm2",
            task=name,
            method="acdc",
            metric=args.metric,
            seed=args.seed,
            n_prompts=args.n_prompts // 2,
            held_out=args.n_prompts - args.n_prompts // 2,
            options={"args": {**shared, **paths}, "config": _config(args, name)},
        )
        for name in names
    )
    return SweepSpec(cells, args.out.parent / "sweeps" / args.out.stem, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--selection" in argv:  # the validated cut against the train cut (benchmarks/validate_selection.py)
        from validate_selection import main as selection_main

        return selection_main([a for a in argv if a != "--selection"])
    args = parse_args(argv)
    results = _load(args.out)
    if args.table:
        print_table(results)
        return 0
    from circuitfind.sweeps import ResultsStore, sweep

    todo = []
    for name in args.task:
        done = results["tasks"].get(name)
        if done is not None and done.get("config") == _config(args, name) and not args.force:
            print(f"[{name}] already in {args.out}; skipped (--force reruns it)", flush=True)
        else:
            todo.append(name)
    if todo:
        spec = _sweep_spec(args, todo)
        if args.force:
            with ResultsStore(spec.store_path) as store:
                store.forget([c.id for c in spec.cells])

        def on_row(row: dict[str, Any]) -> None:  # each task into validate.json as it finishes
            task = row["task"]
            if row["status"] != "done":
                print(f"[{task}] FAILED: {row['error']}", flush=True)
                return
            results["tasks"][task] = row["metrics"]["result"]
            _save(args.out, results, task)
            print(f"[{task}] done in {row['wall_s']:.0f} s (peak {row['peak_rss_mb']:.0f} MB)", flush=True)

        res = sweep(
            spec,
            address=args.address,
            cell_fn=validate_cell,
            retry_failed=True,
            progress=not args.no_progress,
            on_row=on_row,
        )
        for row in res.rows():  # cells an earlier, interrupted run finished
            if row["status"] == "done" and row["task"] not in results["tasks"]:
                results["tasks"][row["task"]] = row["metrics"]["result"]
                _save(args.out, results, row["task"])
    print()
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
