"""The validated cut against the train cut: held-out faithfulness with its 95% interval, size and time.

For each task (IOI, greater-than, induction on the default model, 20 discovery + 20 held-out prompts; task files
with their own ``n_train`` split) and each target (0.8, 0.9): ``discover(train, method="eap-ig",
metric="logit_diff", target=t, select=s)`` for ``s`` in ``train`` (the size chosen on the scoring prompts) and
``validate`` (chosen on cross-fitted folds, :mod:`circuitfind.selection.validated`), then the circuit's
faithfulness on the held-out prompts with its bootstrap interval (:func:`circuitfind.evaluate.faithfulness`).
The goal: held-out f in [0.8, 1.25] at <= 1% of edges in under 3 minutes at target 0.8 (column ``goal``).

With ``--curves`` the held-out faithfulness of the final ranking's top-k is also measured at every size the
validated cut probed, beside the validation estimate (what the selection rule is tuned against).

    python benchmarks/validate.py --selection                       # the three built-in tasks
    python benchmarks/validate.py --selection --task ioi --targets 0.8
    python benchmarks/validate.py --selection --task-file benchmarks/tasks/capitals.json
    python benchmarks/validate.py --selection --table                # the table of the results file

Writes ``benchmarks/results/validate_selection.json`` (rows keyed by task, select and target; a rerun replaces
only the rows it measures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import circuitfind as cf
from circuitfind.evaluate.circuits import faithfulness, faithfulness_many
from circuitfind.selection.cuts import edge_ranking, prune_dangling
from circuitfind.tasks import get_task, resolve_task

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("ioi", "greater-than", "induction")
OUT = ROOT / "benchmarks" / "results" / "validate_selection.json"
GOAL = {"lo": 0.8, "hi": 1.25, "fraction": 0.01, "seconds": 180.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, action="append", help="built-in task(s) (repeatable; default: all)")
    p.add_argument("--task-file", type=Path, action="append", default=[], help="task JSON file(s) with n_train")
    p.add_argument(
        "--n-prompts", type=int, default=20, help="discovery prompts of a built-in task (and as many held out)"
    )
    p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--selects", nargs="+", default=["train", "validate"], choices=["train", "validate"])
    p.add_argument("--method", default="eap-ig")
    p.add_argument("--band", type=float, default=None, help="also pass band=(target, BAND)")
    p.add_argument("--confidence", type=float, default=None, help="validated cut by the lower bound at this confidence")
    p.add_argument("--seed", type=int, default=0, help="prompt seed of the built-in tasks")
    p.add_argument("--curves", action="store_true", help="held-out f at every validation probe")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    args = p.parse_args(argv)
    if args.task is None:
        args.task = [] if args.task_file else list(TASKS)
    return args


def _task(name: str | Path, tok: Any, args: argparse.Namespace):
    if isinstance(name, Path):
        task = resolve_task(str(name), tok)
        if task.n_train is None or task.n_train >= len(task):
            raise SystemExit(f"{name}: the task file needs n_train < its {len(task)} prompts (a held-out split)")
        return task
    return get_task(name, tok, n=2 * args.n_prompts, seed=args.seed, n_train=args.n_prompts)


def _held_out_curve(pm: Any, circuit: Any, task: Any, ks: list[int]) -> list[dict[str, Any]]:
    """Held-out f of the top-k (pruned) of the circuit's scores at each k."""
    scores = torch.nan_to_num(circuit.scores.double(), nan=-float("inf"))
    order = edge_ranking(pm.graph, scores)
    masks = []
    for k in ks:
        flat = torch.zeros(scores.numel(), dtype=torch.bool)
        flat[order[:k]] = True
        masks.append(prune_dangling(pm.graph, flat.view(scores.shape)))
    rows = faithfulness_many(pm, masks, task, metric="logit_diff")
    return [
        {"k": k, "held_out": r["faithfulness"], "ci": [r["ci"]["lo"], r["ci"]["hi"]]}
        for k, r in zip(ks, rows, strict=True)
    ]


def run_one(pm: Any, tok: Any, task: Any, label: str, select: str, target: float, args) -> dict[str, Any]:
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"target": target, "select": select}
    if args.band is not None:
        kwargs = {"band": (target, args.band), "select": select}
    if args.confidence is not None and select == "validate":
        kwargs["confidence"] = args.confidence
    circuit = cf.discover(pm, task, tokenizer=tok, method=args.method, metric="logit_diff", progress=False, **kwargs)
    wall = time.perf_counter() - t0
    held = faithfulness(pm, circuit, task, metric="logit_diff")
    st = circuit.stats
    val = st.get("validation") or {}
    f, frac = held["faithfulness"], circuit.fraction
    row = {
        "task": label,
        "select": select,
        "target": target,
        "band": args.band,
        "confidence": args.confidence if select == "validate" else None,
        "n_discovery": len(task.train()),
        "n_held_out": held["n_prompts"],
        "edges": circuit.n_edges,
        "fraction": frac,
        "discovery_f": st.get("faithfulness"),
        "validation_f": val.get("faithfulness"),
        "validation_ci": val.get("ci"),
        "held_out_f": f,
        "held_out_ci": [held["ci"]["lo"], held["ci"]["hi"]],
        "over_recovery": held["over_recovery"],
        "k": st.get("k"),
        "k_crossing": st.get("k_crossing"),
        "margin": st.get("margin"),
        "m": st.get("m", 0),
        "probes": len(st.get("probes", [])),
        "wall_s": wall,
        "goal": bool(GOAL["lo"] <= f <= GOAL["hi"] and frac <= GOAL["fraction"] and wall <= GOAL["seconds"]),
    }
    if args.curves and select == "validate":
        ks = sorted({p["k"] for p in val.get("probes", []) if p.get("m", 0) == 0})
        curve = _held_out_curve(pm, circuit, task, ks)
        by_k = {p["k"]: p for p in val["probes"] if p.get("m", 0) == 0}
        for c in curve:
            c["validation"] = by_k[c["k"]]["faithfulness"]
        row["curve"] = curve
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| task | select | target | edges | % edges | discovery f | validation f [95% CI] | held-out f [95% CI] "
        "| s | goal |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        v = (
            "-"
            if r["validation_f"] is None
            else f"{r['validation_f']:.2f} [{r['validation_ci'][0]:.2f}, {r['validation_ci'][1]:.2f}]"
        )
        h = f"{r['held_out_f']:.2f} [{r['held_out_ci'][0]:.2f}, {r['held_out_ci'][1]:.2f}]"
        tgt = f"{r['target']:g}" + (f" band {r['band']:g}" if r.get("band") else "")
        tgt += f" conf {r['confidence']:g}" if r.get("confidence") else ""
        tgt += f" margin {r['margin']:g}" if r.get("margin") else ""
        lines.append(
            f"| {r['task']} | {r['select']} | {tgt} | {r['edges']:,} | {100 * r['fraction']:.3f} | "
            f"{r['discovery_f']:.2f} | {v} | {h} | {r['wall_s']:.0f} | {'yes' if r['goal'] else 'no'} |"
        )
    return "\n".join(lines)


def _key(r: dict[str, Any]) -> tuple:
    return (r["task"], r["select"], r["target"], r.get("band"), r.get("confidence"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    if args.table:
        print(format_table(old))
        return 0
    torch.manual_seed(0)
    model, tok = cf.load_model()
    pm = cf.PatchableModel(model)
    new = []
    for name in [*args.task, *args.task_file]:
        task = _task(name, tok, args)
        label = name.stem if isinstance(name, Path) else name
        for target in args.targets:
            for select in args.selects:
                row = run_one(pm, tok, task, label, select, target, args)
                new.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
    keys = {_key(r) for r in new}
    rows = [r for r in old if _key(r) not in keys] + new
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"goal": GOAL, "rows": rows}, indent=1))
    print(format_table(new))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
