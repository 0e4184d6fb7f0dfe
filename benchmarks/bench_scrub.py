"""Benchmark: causal scrubbing of the main job's IOI circuit on the default model.

The main job's circuit: EAP-IG (5 steps) on 20 IOI prompts, the smallest top-k whose faithfulness there reaches
0.95, logit difference (``scripts/main.sh``). It is then scrubbed with no labels (every node depends on its whole
input) on the 20 held-out prompts, ``--draws`` (prompt, resample) draws, joint mode. Two more rows add labels
to the circuit's head with the largest score into the logits: the IO name (the feature a name mover would
copy) and, as a control, the subject's name. Wall time covers ``cf.scrub`` only (clean runs, draws, the
scrubbed passes and the bootstrap); discovery is timed separately.

Usage (real model: hold the heavy lock):
    flock /tmp/cf-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/bench_scrub.py [--draws 200]
        [--out benchmarks/results/bench_scrub.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import circuitfind as cf


def _row(name: str, result, seconds: float, n_edges: int) -> dict:
    return {
        "hypothesis": name,
        "edges": n_edges,
        "draws": result.n_samples,
        "contexts": result.n_contexts,
        "metric": round(result.metric, 4),
        "full": round(result.full, 4),
        "random": round(result.random, 4),
        "recovered": round(result.recovered, 4),
        "ci95": [round(result.interval.lo, 4), round(result.interval.hi, 4)],
        "seconds": round(seconds, 2),
    }


def _labels(task, tok, which: str) -> list[str]:
    """Per prompt, the IO name (the answer) or the subject's name (the wrong answer)."""
    ids = task.answers[:, 0] if which == "io" else task.wrong_answers[:, 0]
    return [tok.decode(int(a)) for a in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/bench_scrub.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = cf.load_model()
    task = cf.tasks.get_task("ioi", tok, n=40, seed=0, n_train=20)
    t0 = time.perf_counter()
    circuit = cf.discover(model, task, method="eap-ig", target=0.95, metric="logit_diff", progress=False)
    discover_s = time.perf_counter() - t0
    pm = cf.PatchableModel(model)
    held = task.held_out()
    rows = []
    t0 = time.perf_counter()
    res = cf.scrub(pm, cf.Hypothesis(circuit), held, metric="logit_diff", n_samples=args.draws, seed=0)
    rows.append(_row("circuit, no labels", res, time.perf_counter() - t0, circuit.n_edges))
    g = pm.graph
    print(f"discovery (EAP-IG, target 0.95): {circuit.n_edges} edges in {discover_s:.1f} s", flush=True)
    print(rows[0], flush=True)
    heads = [s for s in range(g.n_senders) if g.sender_names[s].startswith("a") and circuit.mask[s, g.logits_receiver]]
    if heads:
        head = g.sender_names[max(heads, key=lambda s: float(circuit.scores[s, g.logits_receiver]))]
        for which in ("io", "s"):
            hyp = cf.Hypothesis(circuit, {head: _labels(held, tok, which)})
            t0 = time.perf_counter()
            res = cf.scrub(pm, hyp, held, metric="logit_diff", n_samples=args.draws, seed=0)
            rows.append(_row(f"{head} labelled by {which}", res, time.perf_counter() - t0, circuit.n_edges))
    cols = ["hypothesis", "edges", "draws", "contexts", "metric", "full", "random", "recovered", "ci95", "seconds"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(), "discover_s": round(discover_s, 1)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
