"""The methods frontier on the default model (SmolLM2-135M), IOI, 20 discovery + 20 held-out prompts, logit diff.

Measures the goals of issue 22 side by side, all through the public API:

* ``eap-ig`` (5 steps) and ``eap-ig-act`` (``--act-steps``, default 5): wall time, MIB CPR / CMD of their scores
  on the held-out 20 (:func:`circuitfind.evaluate.cpr_cmd_of_scores`) and the held-out faithfulness of their
  top-120 circuit (0.1% of the edges; dangling edges pruned). Goal: eap-ig-act's CMD below eap-ig's.
* ``edge-pruning`` with a budget of 120 edges (``--prune-steps`` training steps, warm-started from EAP-IG, lr
  ``--lr``): wall time (warm start included), the held-out faithfulness of its circuit, and CPR / CMD of its gate
  logits. Goal: held-out faithfulness >= 0.8 and above EAP-IG's top-120, in <= 15 minutes on 2 cores.

Each part runs alone (``--part scores`` / ``--part pruning``), so that a shared machine's heavy lock is held for
one at a time; rows are merged into ``benchmarks/results/methods_frontier.json`` as they finish.

    flock /tmp/cf-heavy.lock python benchmarks/bench_methods_frontier.py --part scores
    flock /tmp/cf-heavy.lock python benchmarks/bench_methods_frontier.py --part pruning --prune-steps 100
    python benchmarks/bench_methods_frontier.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "methods_frontier.json"
N_PROMPTS, N_TRAIN, BUDGET, METRIC = 40, 20, 120, "logit_diff"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("scores", "pruning"), action="append", help="what to run (default: both)")
    p.add_argument("--act-steps", type=int, default=5, help="eap-ig-act's steps per sender layer")
    p.add_argument("--prune-steps", type=int, default=100, help="edge-pruning's training steps")
    p.add_argument("--lr", type=float, default=0.1, help="edge-pruning's learning rate")
    p.add_argument("--lambda-lr", type=float, default=0.01, help="edge-pruning's Lagrange multipliers' ascent rate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.part = args.part or ["scores", "pruning"]
    return args


def run_method(pm, tok, task, method: str, args: argparse.Namespace, **kw) -> dict[str, Any]:
    """Discover with ``method`` (top-120 cut), then held-out faithfulness of the circuit and CPR / CMD."""
    import circuitfind as cf
    from circuitfind.evaluate.circuits import cpr_cmd_of_scores, faithfulness

    t0 = time.perf_counter()
    if method == "edge-pruning":
        circuit = _prune(pm, task, args, **kw)
    else:
        circuit = cf.discover(
            pm, task, method=method, n_edges=BUDGET, metric=METRIC, progress=not args.no_progress, **kw
        )
    wall = time.perf_counter() - t0
    if not isinstance(circuit, _Found):
        span = circuit.metric_full - circuit.metric_empty
        f_train = (circuit.metric_circuit - circuit.metric_empty) / span
        circuit = _Found(circuit.mask, circuit.scores, circuit.n_edges, f_train, circuit.stats)
    held = faithfulness(pm, circuit.mask, task, metric=METRIC)
    mib = cpr_cmd_of_scores(pm, circuit.scores, task, metric=METRIC)
    row = {
        "method": method,
        "options": {**kw, **({"lambda_lr": args.lambda_lr} if method == "edge-pruning" else {})},
        "wall_s": wall,
        "cpr": mib["cpr"],
        "cmd": mib["cmd"],
        "n_edges": circuit.n_edges,
        "faithfulness_train": circuit.faithfulness_train,
        "faithfulness_held_out": held["faithfulness"],
        "mib": {k: mib[k] for k in ("fractions", "faithfulness_signed", "faithfulness_abs", "n_edges")},
        "threads": args.threads,
    }
    for key in ("trained_faithfulness", "best_step", "steps_run", "train_s", "history", "passes"):
        if key in circuit.stats:
            row[key] = circuit.stats[key]
    if "train_s" in row:
        row["s_per_step"] = row["train_s"] / max(1, row["steps_run"])
    print(
        f"{method}: {wall:.1f} s, CPR {row['cpr']:.3f}, CMD {row['cmd']:.3f}, f@{BUDGET} held-out "
        f"{row['faithfulness_held_out']:.3f} ({row['n_edges']} edges)",
        flush=True,
    )
    return row


@dataclass
class _Found:
    mask: Any
    scores: Any
    n_edges: int
    faithfulness_train: float
    stats: dict[str, Any]


def _prune(pm, task, args, **kw) -> _Found:
    """edge-pruning through its options (``lambda_lr`` is not a ``discover`` parameter): the top-120 gates,
    dangling edges pruned, exactly ``discover``'s cut."""
    from tqdm.auto import tqdm

    from circuitfind.algorithms import EdgePruningOptions, run_edge_pruning
    from circuitfind.problem import prepare_problem
    from circuitfind.selection.cuts import prune_dangling, top_n

    problem, _ = prepare_problem(pm, task.train(), metric=METRIC)
    opts = EdgePruningOptions(n_edges=BUDGET, lambda_lr=args.lambda_lr, **kw)
    with tqdm(total=1, disable=args.no_progress) as bar:
        result = run_edge_pruning(problem, opts, bar)
    mask = prune_dangling(pm.graph, top_n(pm.graph, result.scores, BUDGET))
    st = result.stats
    return _Found(mask, result.scores, int(mask.sum()), st["trained_faithfulness"], st)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print_table(_load(args.out))
        return 0
    import torch

    import circuitfind as cf
    from circuitfind.tasks import get_task

    torch.set_num_threads(args.threads)
    model, tok = cf.load_model()
    pm = cf.PatchableModel(model)
    task = get_task("ioi", tok, n=N_PROMPTS, seed=0, n_train=N_TRAIN)
    results = _load(args.out)
    rows = results.setdefault("rows", {})
    jobs = []
    if "scores" in args.part:
        jobs += [("eap-ig", {"steps": 5}), ("eap-ig-act", {"steps": args.act_steps})]
    if "pruning" in args.part:
        jobs += [("edge-pruning", {"steps": args.prune_steps, "lr": args.lr, "warm_start": True})]
        # options recorded below include lambda_lr
    for method, kw in jobs:
        rows[method] = run_method(pm, tok, task, method, args, **kw)
        results["config"] = {
            "task": "ioi",
            "n_prompts": N_PROMPTS,
            "n_train": N_TRAIN,
            "metric": METRIC,
            "budget": BUDGET,
            "model": "SmolLM2-135M-Instruct (default)",
        }
        _save(args.out, results)
    print_table(results)
    return 0


def print_table(results: dict[str, Any]) -> None:
    rows = results.get("rows", {})
    print(f"| method | options | wall s | CPR | CMD | f@{BUDGET} held-out | edges |")
    print("|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        print(
            f"| {method} | {opts} | {r['wall_s']:.0f} | {r['cpr']:.2f} | {r['cmd']:.2f} | "
            f"{r['faithfulness_held_out']:.3f} | {r['n_edges']} |"
        )


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
