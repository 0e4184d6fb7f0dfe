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
import os
import platform
import time
from pathlib import Path

import torch

import circuitfind as cf


def _timed(fn):
    """``fn()``, its wall seconds, CPU seconds (this process: robust to other jobs on the machine) and the load."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0, os.getloadavg()[0]


def _row(name: str, result, seconds: float, cpu: float, load: float, n_edges: int) -> dict:
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
        "cpu_s": round(cpu, 2),
        "load": round(load, 1),
    }


def _labels(task, tok, which: str) -> list[str]:
    """Per prompt, the IO name (the answer) or the subject's name (the wrong answer)."""
    ids = task.answers[:, 0] if which == "io" else task.wrong_answers[:, 0]
    return [tok.decode(int(a)) for a in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/bench_scrub.json")
    ap.add_argument("--circuit", default=None, help="a saved circuit.json: skip discovery (default: discover it)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = cf.load_model()
    task = cf.tasks.get_task("ioi", tok, n=40, seed=0, n_train=20)
    t0 = time.perf_counter()
    if args.circuit:
        circuit = cf.Circuit.load(args.circuit)
    else:
        circuit = cf.discover(model, task, method="eap-ig", target=0.95, metric="logit_diff", progress=False)
        circuit.save(Path("out/bench_scrub/circuit.json"))  # 9 MB of scores: not under results/
    discover_s = time.perf_counter() - t0
    pm = cf.PatchableModel(model)
    held = task.held_out()
    rows = []
    res, *timing = _timed(
        lambda: cf.scrub(pm, cf.Hypothesis(circuit), held, metric="logit_diff", n_samples=args.draws, seed=0)
    )
    rows.append(_row("circuit, no labels", res, *timing, circuit.n_edges))
    g = pm.graph
    print(f"discovery (EAP-IG, target 0.95): {circuit.n_edges} edges in {discover_s:.1f} s", flush=True)
    print(rows[0], flush=True)
    heads = [s for s in range(g.n_senders) if g.sender_names[s].startswith("a") and circuit.mask[s, g.logits_receiver]]
    if heads:
        head = g.sender_names[max(heads, key=lambda s: float(circuit.scores[s, g.logits_receiver]))]
        for which in ("io", "s"):
            hyp = cf.Hypothesis(circuit, {head: _labels(held, tok, which)})
            res, *timing = _timed(lambda h=hyp: cf.scrub(pm, h, held, metric="logit_diff", n_samples=args.draws))
            rows.append(_row(f"{head} labelled by {which}", res, *timing, circuit.n_edges))
            print(rows[-1], flush=True)
    cols = ["hypothesis", "edges", "draws", "contexts", "metric", "full", "random", "recovered", "ci95", "seconds"]
    cols += ["cpu_s", "load"]
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
