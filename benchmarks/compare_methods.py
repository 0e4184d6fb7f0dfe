"""Compare the discovery methods on the default model (SmolLM2-135M) and on the two tracr models (issue 22).

A thin script over the public API: ``cf.discover`` finds each circuit, ``cf.evaluate`` measures it on held-out
prompts, ``cf.sweep`` runs the default-model units as cells (one Ray worker that loads the model once; its store,
``benchmarks/results/sweeps/compare_methods/results.sqlite``, is the results store: a finished unit is skipped on
the next run, so runs can be split by task and method).

Rows (``--methods``; each a library method with options):

* ``eap``; ``eap-ig``, ``eap-ig-mask`` (5 steps); ``eap-ig-act`` (EAP-IG along the activations, ``--act-steps``):
  scores for every edge, cut at ``target=0.8`` on the discovery prompts (``select="train"``);
* ``edge-pruning``: learned hard-concrete gates, ``n_edges=120`` (0.1% of the edges), ``--prune-steps`` steps,
  warm start from EAP-IG, ``lr``, ``lambda_lr`` (the Lagrange multipliers' rate) as given;
* ``exact``: each edge's exact loss change, on the candidates EAP-IG ranks in its top 0.1% (every edge is hours
  here); the other edges have no score (NaN, ranked last);
* ``acdc``: the tracr models only (an ACDC run on the default model is 20-60 minutes here).

Per unit: the wall time of discovery (scores and cut), the peak memory (``circuit.stats["peak_memory"]``: the
process's peak resident set, model included; the sweep resets it when a cell starts), CPR / CMD of the scores on
the held-out prompts with their 95% bootstrap intervals (``cf.evaluate.cpr_cmd_of_scores``), the held-out
faithfulness of the top 0.1% and 1% of edges (read off that curve), and the circuit itself: its size and
held-out faithfulness with its interval. Per LM task also random circuits at 0.1% and 1%
(``cf.evaluate.random_baseline``), and, beside ``edge-pruning``, EAP-IG's top-120 held out. Tracr (zero
ablation, the L2 metric, in this process: seconds): the ROC AUC of each method's scores against the
tracr-derived circuit.

Prints one table, writes it to ``benchmarks/results/compare_methods.json`` and draws one figure,
``figures/compare_methods.png`` (a panel per LM task: held-out faithfulness against circuit size).

Usage (the default model: hold the heavy lock; split by task and method to keep each run short):
    flock /tmp/cf-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/compare_methods.py --tasks ioi \\
        --methods eap eap-ig eap-ig-mask exact
    python benchmarks/compare_methods.py --tasks tracr-reverse tracr-proportion
    python benchmarks/compare_methods.py --table           # the table and figure of what is stored
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import torch

import circuitfind as cf

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results" / "sweeps" / "compare_methods"
OUT_JSON = ROOT / "benchmarks" / "results" / "compare_methods.json"
FIGURE = ROOT / "figures" / "compare_methods.png"
LM_TASKS = ("ioi", "greater-than", "induction")
TRACR = ("tracr-reverse", "tracr-proportion")
ROWS = ("eap", "eap-ig", "eap-ig-mask", "eap-ig-act", "edge-pruning", "exact", "acdc")
BUDGETS = (0.001, 0.01)  # f at 0.1% / 1% of the edges
TARGET, STEPS, PRUNE_EDGES, N_RANDOM = 0.8, 5, 120, 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", choices=(*LM_TASKS, *TRACR), default=[*LM_TASKS, *TRACR])
    p.add_argument("--methods", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--n-prompts", type=int, default=20, help="discovery prompts (as many again held out)")
    p.add_argument("--metric", default="logit_diff", help="discovery and evaluation metric on the LM tasks")
    p.add_argument("--act-steps", type=int, default=STEPS, help="eap-ig-act's integration steps")
    p.add_argument("--prune-steps", type=int, default=120, help="edge-pruning's training steps")
    p.add_argument("--lr", type=float, default=0.1, help="edge-pruning's learning rate on the gate logits")
    p.add_argument("--lambda-lr", type=float, default=1.0, help="edge-pruning's Lagrange multipliers' rate")
    p.add_argument("--no-random", action="store_true", help="no random-circuit baseline")
    p.add_argument("--table", action="store_true", help="print the table and draw the figure of the store; exit")
    return p.parse_args(argv)


def row_options(row: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The library method of a row and its ``discover`` options (the cut included)."""
    cut: dict[str, Any] = {"target": TARGET, "select": "train"}
    return {
        "eap": ("eap", cut),
        "eap-ig": ("eap-ig", {**cut, "steps": STEPS}),
        "eap-ig-mask": ("eap-ig-mask", {**cut, "steps": STEPS}),
        "eap-ig-act": ("eap-ig-act", {**cut, "steps": args.act_steps}),
        "edge-pruning": ("edge-pruning", {"n_edges": PRUNE_EDGES, "steps": args.prune_steps, "lr": args.lr,
                                          "lambda_lr": args.lambda_lr, "warm_start": True, "seed": 0}),
        "exact": ("exact", cut),
        "acdc": ("acdc", {"threshold": 0.01}),
    }[row]  # fmt: skip


# --- one unit: discover, then evaluate held out ------------------------------------------------------------------
def _discover(pm: Any, task: Any, method: str, options: dict[str, Any], kw: dict[str, Any]) -> tuple[Any, dict]:
    """The circuit and what its discovery cost; ``exact`` first takes EAP-IG's top 0.1% as its candidates."""
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if method == "exact" and pm.graph.n_edges > 10_000:  # tracr's graphs are scored whole
        n_cand = max(1, round(0.001 * pm.graph.n_edges))
        ig = cf.discover(pm, task, method="eap-ig", steps=STEPS, n_edges=n_cand, **kw)
        options = {**options, "candidates": ig.mask}
        extra["candidates"] = f"{int(ig.mask.sum())} edges: eap-ig's top {n_cand} (0.1%), dangling ones dropped"
    circuit = cf.discover(pm, task, method=method, **options, **kw)
    extra["wall_s"] = time.perf_counter() - t0
    extra["peak_mib"] = circuit.stats.get("peak_memory", {}).get("mib")
    return circuit, extra


def _held_out(pm: Any, circuit: Any, task: Any, metric: str) -> dict[str, Any]:
    """CPR / CMD with intervals and f at the budgets (from the scores), and the circuit's own held-out f."""
    out: dict[str, Any] = {"n_edges": circuit.n_edges, "fraction": circuit.fraction}
    own = cf.evaluate.faithfulness(pm, circuit, task, metric=metric)  # the store's columns: faithfulness, *_ci
    out["faithfulness"], out["faithfulness_ci"] = own["faithfulness"], _lo_hi(own["ci"])
    scores = circuit.scores
    if scores is not None and bool(torch.isfinite(scores[pm.graph.edge_mask]).any()):
        mib = cf.evaluate.cpr_cmd_of_scores(pm, scores, task, metric=metric)
        out.update(cpr=mib["cpr"], cmd=mib["cmd"], cpr_ci=_lo_hi(mib["cpr_ci"]), cmd_ci=_lo_hi(mib["cmd_ci"]),
                   fractions=list(mib["fractions"]), curve=list(mib["faithfulness_signed"]))  # fmt: skip
        for k in BUDGETS:
            out[f"f@{k:g}"] = mib["faithfulness_signed"][list(mib["fractions"]).index(k)]
    return out


def _top_n_held_out(pm: Any, scores: Any, n: int, task: Any, metric: str) -> dict[str, Any]:
    """The held-out f of the top ``n`` edges of ``scores`` (EAP-IG's top-120, beside edge pruning's 120)."""
    (mask,) = cf.evaluate.top_k_masks(scores.double(), pm.graph.edge_mask, [n / pm.graph.n_edges])
    res = cf.evaluate.faithfulness(pm, mask, task, metric=metric)
    return {"n_edges": n, "faithfulness": res["faithfulness"], "faithfulness_ci": _lo_hi(res["ci"])}


def _lo_hi(ci: dict[str, Any]) -> dict[str, Any]:
    return {"lo": ci["lo"], "hi": ci["hi"]}


def lm_cell(cell: Any, pm: Any, tok: Any) -> dict[str, Any]:
    """The sweep's cell function: one (task, row) unit on the worker's model (``cell.options`` says which)."""
    o = cell.options
    task = cf.tasks.get_task(cell.task, tok, n=cell.n_prompts + cell.held_out, seed=cell.seed, n_train=cell.n_prompts)
    if o["row"] == "random":
        return {"metrics": {"row": "random", **_random(pm, task, cell.metric)}}
    kw = {"metric": cell.metric, "progress": False}
    try:
        circuit, extra = _discover(pm, task, cell.method, o["discover"], kw)
    except TypeError as e:  # an option this circuitfind's discover does not take: say so, in the row
        if "lambda_lr" not in str(e):
            raise
        extra_note = f"lambda_lr={o['discover']['lambda_lr']} not taken by this discover(): the library's 0.01"
        circuit, extra = _discover(pm, task, cell.method, {k: v for k, v in o["discover"].items()
                                                           if k != "lambda_lr"}, kw)  # fmt: skip
        extra["note"] = extra_note
    metrics = {"row": o["row"], **extra, **_held_out(pm, circuit, task, cell.metric)}
    for key in ("trained_faithfulness", "best_step", "reached", "faithfulness"):
        if key in circuit.stats:
            metrics[f"stats_{key}"] = circuit.stats[key]
    if o["row"] == "eap-ig":  # the comparison the issue asks for: EAP-IG's top-120 against edge pruning's 120
        metrics["top120"] = _top_n_held_out(pm, circuit.scores, PRUNE_EDGES, task, cell.metric)
    return {"metrics": metrics, "discover_s": extra["wall_s"]}


def _random(pm: Any, task: Any, metric: str) -> dict[str, Any]:
    out = {}
    for k in BUDGETS:
        n = max(1, round(k * pm.graph.n_edges))
        base = cf.evaluate.random_baseline(pm, n, task, n=N_RANDOM, seed=0, metric=metric)
        out[f"f@{k:g}"] = base["mean"]
    return out


def lm_spec(tasks: list[str], rows: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The sweep spec: one cell per (task, row), two torch threads, one worker (timings measured alone)."""
    cells = []
    for task in tasks:
        for row in (["random"] if not args.no_random else []) + [r for r in rows if r != "acdc"]:
            method, options = ("eap", {}) if row == "random" else row_options(row, args)
            cells.append({"task": task, "method": method, "options": {"row": row, "discover": options}})
    common = {"model": "smollm2", "metric": args.metric, "n_prompts": args.n_prompts, "held_out": args.n_prompts,
              "seed": 0, "steps": STEPS, "cpr_cmd": False, "num_cpus": 2}  # fmt: skip
    return {"out": str(STORE), "defaults": common, "grid": cells, "workers": 1}


# --- tracr: zero ablation, ROC AUC against the tracr-derived circuit (in this process) ---------------------------
def tracr_rows(name: str, rows: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from circuitfind.tasks.ground_truth import tracr_ground_truth
    from circuitfind.tasks.tracr import tracr_setup

    setup = tracr_setup(name.removeprefix("tracr-"))
    g = setup.pm.graph
    _, truth_edges = tracr_ground_truth(setup.meta, "zero")
    truth = g.mask_of(truth_edges)
    out = []
    for row in rows:
        method, options = row_options(row, args)
        if method == "edge-pruning":  # the budget is the ground truth's size; the library's rate (see README)
            options = {**options, "n_edges": int(truth.sum()), "lambda_lr": 0.01}
        kw = {"metric": setup.metric, "ablation": "zero", "progress": False}
        try:
            circuit, extra = _discover(setup.pm, setup.task, method, options, kw)
        except TypeError:
            options = {k: v for k, v in options.items() if k != "lambda_lr"}
            circuit, extra = _discover(setup.pm, setup.task, method, options, kw)
        scores = circuit.scores.double().nan_to_num(nan=-math.inf)[g.edge_mask]  # (E,)
        auc = cf.evaluate.auc(*cf.evaluate.roc_points(scores, truth[g.edge_mask]))
        kept = circuit.mask & g.edge_mask
        out.append({"task": name, "row": row, **extra, "auc": auc, "n_edges": circuit.n_edges,
                    "tpr": int((kept & truth).sum()) / int(truth.sum()),
                    "fpr": int((kept & ~truth).sum()) / int((g.edge_mask & ~truth).sum())})  # fmt: skip
    return out


# --- the table and the figure ---------------------------------------------------------------------------------------
def stored_rows() -> list[dict[str, Any]]:
    """Every finished unit in the sweep's store (its documented ``cells`` table), newest last."""
    path = STORE / "results.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT spec, metrics FROM cells WHERE status = 'done' ORDER BY finished_at").fetchall()
    rows = []
    for spec, metrics in got:
        spec, metrics = json.loads(spec), json.loads(metrics)
        rows.append({"task": spec["task"], "config": spec, **metrics})
    return rows


def _fmt(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _ci(r: dict[str, Any], key: str) -> str:
    ci = r.get(f"{key}_ci")
    return _fmt(r.get(key)) + ("" if not ci or ci.get("lo") is None else f" [{ci['lo']:.2f}, {ci['hi']:.2f}]")


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| task | method | wall s | peak MiB | CPR [95% CI] | CMD [95% CI] | f@0.1% | f@1% | edges | "
    head += "f held-out [95% CI] | AUC | notes |"
    lines = [head, "|" + "---|" * 2 + "---:|" * 9 + "---|"]
    latest = {(r["task"], r["row"]): r for r in rows}  # a rerun replaces the unit's row
    order = {name: i for i, name in enumerate((*ROWS, "random"))}
    for (task, row), r in sorted(latest.items(), key=lambda kv: ((*LM_TASKS, *TRACR).index(kv[0][0]), order[kv[0][1]])):
        notes = [r[k] for k in ("candidates", "note") if r.get(k)]
        if "top120" in r:
            t = r["top120"]
            notes.append(f"top-120 held out {_ci(t, 'faithfulness')}")
        if r.get("stats_trained_faithfulness") is not None:
            notes.append(f"trained f (discovery prompts) {r['stats_trained_faithfulness']:.2f}")
        if "tpr" in r:
            notes.append(f"TPR {r['tpr']:.2f}, FPR {r['fpr']:.2f}")
        f = _ci(r, "faithfulness") if "faithfulness_ci" in r else "-"
        cells = [task, row, _fmt(r.get("wall_s"), "{:.1f}"), _fmt(r.get("peak_mib"), "{:.0f}"), _ci(r, "cpr"),
                 _ci(r, "cmd"), _fmt(r.get("f@0.001")), _fmt(r.get("f@0.01")), _fmt(r.get("n_edges"), "{}"), f,
                 _fmt(r.get("auc"), "{:.3f}"), "; ".join(notes)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """A panel per LM task: each row's signed held-out curve, its circuit (a star) and random circuits."""
    from circuitfind.cli.plots import new_figure

    latest = {(r["task"], r["row"]): r for r in rows}
    tasks = [t for t in LM_TASKS if any(k[0] == t for k in latest)]
    fig = new_figure((5.2 * max(1, len(tasks)), 4.4))
    if fig is None or not tasks:
        return None
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for j, row in enumerate((*ROWS, "random")):
            r = latest.get((task, row))
            if r is None:
                continue
            color = "grey" if row == "random" else f"C{j}"
            if "curve" in r:
                ax.plot([100 * k for k in r["fractions"]], r["curve"], marker=".", color=color, lw=1.2,
                        label=f"{row} (CPR {r['cpr']:.2f})")  # fmt: skip
            if row == "random":
                ax.plot([100 * k for k in BUDGETS], [r["f@0.001"], r["f@0.01"]], ls=":", color=color, label="random")
            if r.get("faithfulness") is not None and r.get("fraction"):
                ax.scatter([100 * r["fraction"]], [r["faithfulness"]], marker="*", s=80, color=color, zorder=3)
        ax.axhline(1.0, ls=":", color="grey", lw=1)
        ax.axhline(0.0, ls=":", color="grey", lw=1)
        ax.set_xscale("log")
        ax.set(xlabel="circuit size (% of edges)", ylabel="held-out faithfulness", title=f"SmolLM2-135M, {task}")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def report(tracr: list[dict[str, Any]]) -> None:
    """Print the table of every stored unit (and this run's tracr rows), write it as JSON, draw the figure."""
    old = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    kept_tracr = {(r["task"], r["row"]): r for r in old.get("tracr", []) + tracr}
    lm = stored_rows() or old.get("lm", [])  # without the store (a fresh checkout): the rows last written
    rows = lm + list(kept_tracr.values())
    lines = table(rows)
    print("\n".join(lines))
    OUT_JSON.write_text(json.dumps({"lm": lm, "tracr": list(kept_tracr.values()), "table": lines},
                                   indent=1, default=float) + "\n")  # fmt: skip
    print(f"wrote {OUT_JSON}", f"and {path}" if (path := figure(rows, FIGURE)) else "(no figure)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracr: list[dict[str, Any]] = []
    if not args.table:
        lm = [t for t in args.tasks if t in LM_TASKS]
        if lm:
            res = cf.sweep(lm_spec(lm, args.methods, args), cell_fn=lm_cell)
            print(f"sweep: {res.done} done, {res.skipped} already stored, {res.failed} failed", flush=True)
            for row in res.rows():
                if row["status"] != "done":
                    print(f"FAILED {row['task']} {row['method']}: {row['error']}\n{row.get('traceback')}")
        for name in (t for t in args.tasks if t in TRACR):
            tracr += tracr_rows(name, args.methods, args)
    report(tracr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
