"""Sweep throughput on this machine: cells per minute and exact-scoring edges per second, with 1 and 2 workers.

1. Cells per minute: one sweep of the default model (SmolLM2-135M) on IOI (8 discovery + 8 held-out prompts,
   logit difference, resample ablation), EAP cut at n_edges 100 / 300 / 1000, seeds 0 and 1 (6 cells; no CPR/CMD),
   run into a fresh store with ``workers`` = 1 and then 2 (each worker 1 CPU and 1 torch thread). The wall time
   counts everything after Ray is up: starting the workers, loading the model once per worker, the cells.
2. Exact edges per second: ``--edges`` random edges into the top three layers' receivers and the logits, scored
   in this process (:func:`run_exact`, 1 thread, the reference) and by :func:`circuitfind.sweeps.exact_scores`
   with 1 and 2 workers (1 thread each; wall time includes starting the workers and loading the model); the
   scores are compared with the reference (bit for bit expected).

One local Ray (2 CPUs) serves every run. The machine's 2 cores are shared with other jobs: read the ratios, not
the absolute numbers, and rerun for a second sample. Prints a table and writes
``benchmarks/results/bench_sweep.json``.

    python benchmarks/bench_sweep.py             # about 5-10 minutes here
    python benchmarks/bench_sweep.py --quick     # 2 cells, 24 edges: a pipeline check (results/quick/)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from circuitfind.algorithms import ExactOptions, run_exact  # noqa: E402
from circuitfind.engine.patchable import PatchableModel  # noqa: E402
from circuitfind.fileio import atomic_write  # noqa: E402
from circuitfind.models import load_model  # noqa: E402
from circuitfind.problem import prepare_problem  # noqa: E402
from circuitfind.sweeps import exact_scores, parse_spec, sweep  # noqa: E402
from circuitfind.tasks import get_task  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 cells and 24 edges (pipeline check)")
    p.add_argument("--edges", type=int, default=480, help="edges scored exactly (default 480)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/bench_sweep.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.edges = 24
        args.out = args.out or ROOT / "benchmarks" / "results" / "quick" / "bench_sweep.json"
    args.out = args.out or ROOT / "benchmarks" / "results" / "bench_sweep.json"
    return args


def bench_cells(workers: int, quick: bool) -> dict[str, Any]:
    grid = {"model": "smollm2", "task": "ioi", "method": "eap", "n_edges": [100, 300, 1000], "seed": [0, 1]}
    if quick:
        grid.update(n_edges=100)
    defaults = {"n_prompts": 8, "held_out": 8, "metric": "logit_diff", "cpr_cmd": False}
    with tempfile.TemporaryDirectory() as out:
        spec = parse_spec({"out": out, "defaults": defaults, "grid": grid})
        t0 = time.perf_counter()
        res = sweep(spec, workers=workers, progress=False)
        wall = time.perf_counter() - t0
        rows = res.rows()
    done = [r for r in rows if r["status"] == "done"]
    return {
        "workers": workers,
        "cells": len(rows),
        "done": len(done),
        "wall_s": wall,
        "cells_per_min": 60 * len(done) / wall,
        "cell_s_mean": sum(r["wall_s"] for r in done) / max(len(done), 1),
        "model_loads": sum(1 for r in done if (r["load_s"] or 0) > 0),
        "load_s_total": sum(r["load_s"] or 0 for r in done),
        "peak_rss_mb_max": max((r["peak_rss_mb"] or 0 for r in done), default=None),
        "errors": [r["error"] for r in rows if r["status"] != "done"],
    }


def _candidates(pm: PatchableModel, n: int) -> torch.Tensor:
    """``n`` random edges into the receivers of the top three layers and the logits (cheap tests)."""
    g = pm.graph
    top = torch.zeros_like(g.edge_mask)
    for layer in range(g.n_layers - 3, g.n_layers):
        top[:, list(g.receivers_of_layer(layer))] = True
    top[:, g.logits_receiver] = True
    pool = (g.edge_mask & top).flatten().nonzero().squeeze(1)
    pick = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(0))[:n]]
    mask = torch.zeros(g.edge_mask.numel(), dtype=torch.bool)
    mask[pick] = True
    return mask.view(g.edge_mask.shape)


def bench_exact(n_edges: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    model, tok = load_model(progress=False)
    pm = PatchableModel(model)
    task = get_task("ioi", tok, n=8, seed=0)
    candidates = _candidates(pm, n_edges)
    t0 = time.perf_counter()
    problem, _ = prepare_problem(pm, task, metric="logit_diff")
    ref = run_exact(problem, ExactOptions(batch_size=1, candidates=candidates))
    wall = time.perf_counter() - t0
    rows = [{"run": "in-process run_exact (no Ray)", "workers": 1, "edges": n_edges, "wall_s": wall}]
    for workers in (1, 2):
        t0 = time.perf_counter()
        res = exact_scores("smollm2", task, metric="logit_diff", candidates=candidates, workers=workers, progress=False)
        wall = time.perf_counter() - t0
        same = torch.equal(res.scores.isnan(), ref.scores.isnan()) and torch.equal(
            res.scores.nan_to_num(), ref.scores.nan_to_num()
        )
        diff = float((res.scores - ref.scores).nan_to_num().abs().max())
        rows.append(
            {
                "run": "exact_scores on Ray",
                "workers": workers,
                "edges": n_edges,
                "wall_s": wall,
                "shards": res.stats["shards"],
                "equal_bit_for_bit": same,
                "max_abs_diff": diff,
            }
        )
    for r in rows:
        r["edges_per_s"] = r["edges"] / r["wall_s"]
    return rows


def print_table(data: dict[str, Any]) -> None:
    print("| workers | cells | wall s | cells/min | mean cell s | model loads | peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in data["cells"]:
        print(
            f"| {r['workers']} | {r['done']}/{r['cells']} | {r['wall_s']:.1f} | {r['cells_per_min']:.2f} | "
            f"{r['cell_s_mean']:.1f} | {r['model_loads']} | {r['peak_rss_mb_max']:.0f} |"
        )
    print()
    print("| exact scoring | workers | edges | wall s | edges/s | same scores |")
    print("|---|---:|---:|---:|---:|---|")
    for r in data["exact"]:
        same = "reference" if "equal_bit_for_bit" not in r else ("bit for bit" if r["equal_bit_for_bit"] else
                                                                  f"max diff {r['max_abs_diff']:.2g}")  # fmt: skip
        print(f"| {r['run']} | {r['workers']} | {r['edges']} | {r['wall_s']:.1f} | {r['edges_per_s']:.2f} | {same} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        },
    )
    try:
        data: dict[str, Any] = {"machine": "2 cores shared with other jobs (noisy)", "cells": [], "exact": []}
        for workers in (1, 2):
            print(f"cells, {workers} worker(s) ...", flush=True)
            data["cells"].append(bench_cells(workers, args.quick))
        print("exact scoring ...", flush=True)
        data["exact"] = bench_exact(args.edges)
    finally:
        ray.shutdown()
    data["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(data, indent=1) + "\n")
    print_table(data)
    print(f"\nwrote {args.out} (load average at the end: {', '.join(f'{x:.1f}' for x in data['load_average'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
