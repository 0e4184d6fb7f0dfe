"""Benchmark: IOI head classes by path patching for every head of the default model.

Measures :func:`circuitfind.analysis.head_classes` on the default model (SmolLM2-135M, 270 heads) with the IOI
task: wall and CPU seconds after the model is loaded, with torch on ``--threads`` threads, and prints the classes
with their scores (the README's table). Writes the whole table (every head's measures, scores and class) to the
JSON file, and as CSV beside it.

Usage (hold the heavy lock on a shared machine):
    OMP_NUM_THREADS=2 flock /tmp/cf-heavy.lock python benchmarks/bench_head_classes.py [--n-prompts 20]
        [--model NAME] [--threads 2] [--out benchmarks/results/bench_head_classes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from circuitfind import PatchableModel, load_model
from circuitfind.analysis import CLASSES, head_classes
from circuitfind.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the offline default model")
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_head_classes.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(args.model, progress=False)
    pm = PatchableModel(model)
    task = get_task("ioi", tok, n=args.n_prompts, seed=args.seed)
    t_load = time.perf_counter() - t0
    wall, cpu = time.perf_counter(), time.process_time()
    hc = head_classes(pm, task, tokenizer=tok, seed=args.seed, progress=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = hc.rows()
    print("\n| class | heads (score) |\n|---|---|")
    for cls in CLASSES:
        members = sorted((r for r in rows if r["class"] == cls), key=lambda r: -r[f"score_{cls}"])
        print(f"| {cls} | " + (", ".join(f"{r['head']} ({r[f'score_{cls}']:.2f})" for r in members) or "-") + " |")
    n_heads = pm.graph.n_layers * pm.graph.n_heads
    load1 = os.getloadavg()[0]
    print(
        f"\n{n_heads} heads, {len(task)} prompts: {wall:.1f} s wall, {cpu:.1f} s CPU (torch threads {args.threads}, "
        f"load average {load1:.1f}); model load {t_load:.1f} s; logit diff {hc.settings['metric_full']:.3f} "
        f"full vs {hc.settings['metric_empty']:.3f} ablated"
    )
    result = {
        "model": args.model or "smollm2",
        "n_heads": n_heads,
        "n_prompts": len(task),
        "threads": args.threads,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "load_average": round(load1, 2),
        "model_load_s": round(t_load, 2),
        "members": {c: hc.members(c) for c in CLASSES},
        "table": hc.to_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    csv_path = args.out.with_suffix(".csv")
    csv_path.write_text(hc.to_csv())
    print(f"wrote {args.out} and {csv_path}")


if __name__ == "__main__":
    main()
