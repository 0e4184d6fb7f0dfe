"""Benchmark: plain sequential ACDC against fast ACDC (restart from cache, answer positions only, speculation).

(a) a 4-layer, 8-head GPT-2-architecture model with seeded random weights on a synthetic task (20 prompts of
    random tokens, corrupted = other random tokens), KL metric, resample ablation: both paths run to the end and
    their circuits are compared edge by edge.
(b) the offline default model (SmolLM2-135M-Instruct) on IOI with 20 prompts: the fast path runs to the end
    (or until ``--budget-min``, then the rate so far is reported); the plain path costs one full forward per
    tested edge, so it is measured on ``--plain-sample`` edges and extrapolated to the fast run's edge count.

Usage:
    python benchmarks/bench_acdc.py [--part a|b|ab] [--threshold-b 0.05] [--batch-sizes 1,4,8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import circuitfind as cf
from circuitfind.algorithms import AcdcOptions, run_acdc_fast, run_acdc_plain
from circuitfind.engine.patchable import PatchableModel
from circuitfind.problem import prepare_problem
from circuitfind.tasks import Task


def _synthetic_task(vocab: int, n: int = 20, t: int = 16, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(vocab, (n, t), generator=g)
    corrupt = torch.randint(vocab, (n, t), generator=g)
    empty = torch.zeros(n, 0, dtype=torch.long)
    am = torch.ones(n, t, dtype=torch.long)
    return Task("random-tokens", clean, corrupt, am, torch.full((n,), t - 1), empty, empty)


def _row(label: str, state, seconds: float, same: bool | None) -> dict:
    return {
        "run": label,
        "seconds": seconds,
        "forward_passes": state.forward_passes,
        "edges_tested": state.edges_tested,
        "edges_per_s": state.edges_tested / seconds,
        "edges_kept": int(state.mask.sum()),
        "identical_to_plain": same,
    }


def part_a(threshold: float, batch_sizes: list[int], device: str = "cpu") -> list[dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=8, n_embd=256, vocab_size=2000, n_positions=64)).eval()
    pm = PatchableModel(cf.load_model(model, device=device)[0])
    problem, _ = prepare_problem(pm, _synthetic_task(2000), metric="kl")
    t = time.perf_counter()
    plain = run_acdc_plain(problem, AcdcOptions(threshold=threshold))
    rows = [_row("(a) plain sequential", plain, time.perf_counter() - t, None)]
    for k in batch_sizes:
        t = time.perf_counter()
        fast = run_acdc_fast(problem, AcdcOptions(threshold=threshold, batch_size=k))
        secs = time.perf_counter() - t
        same = bool(torch.equal(fast.mask, plain.mask)) and bool(
            torch.nan_to_num(fast.effects - plain.effects).abs().max() <= 1e-5
        )
        rows.append(_row(f"(a) fast, batch {k}", fast, secs, same))
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
        r["model"] = f"gpt2-4L-8H random ({pm.graph.n_edges} edges), tau={threshold}"
    return rows


class _OutOfBudget(Exception):
    pass


def part_b(threshold: float, batch_size: int, plain_sample: int, budget_min: float, device: str = "cpu") -> list[dict]:
    model, tok = cf.load_model(progress=False, device=device)
    task = cf.tasks.get_task("ioi", tok, n=20, seed=0)
    pm = PatchableModel(model)
    problem, _ = prepare_problem(pm, task, metric="kl")
    # plain: one full forward (all positions) per tested edge; time a sample of them
    t = time.perf_counter()
    rows_idx = torch.arange(len(task), device=pm.device)
    with torch.no_grad():
        for _ in range(plain_sample):
            logits = pm.forward(
                problem.clean_ids, problem.ablated, pm.graph.full_mask(), attention_mask=problem.attention_mask
            )
            problem.loss(logits[rows_idx, problem.positions].unsqueeze(0))
    per_plain = (time.perf_counter() - t) / plain_sample
    progress: dict = {}
    t = time.perf_counter()

    def on_boundary(state, done: int, total: int) -> None:
        progress.update(done=done, total=total, state=state.copy(), seconds=time.perf_counter() - t)
        if done % 28 == 0:
            print(
                f"  {done}/{total} receivers, {state.edges_tested} tested, {int(state.mask.sum())} kept, "
                f"{time.perf_counter() - t:.0f} s",
                flush=True,
            )
        if time.perf_counter() - t > budget_min * 60:
            raise _OutOfBudget

    finished = True
    try:
        state = run_acdc_fast(problem, AcdcOptions(threshold=threshold, batch_size=batch_size), on_boundary=on_boundary)
    except _OutOfBudget:
        finished, state = False, progress["state"]
    secs = progress.get("seconds", time.perf_counter() - t)
    plain_est = per_plain * state.edges_tested
    label = f"SmolLM2-135M IOI, 20 prompts, tau={threshold} ({pm.graph.n_edges} edges)"
    status = "finished" if finished else f"stopped at the {budget_min:.0f}-min budget: {progress['done']}/841 receivers"
    return [
        {
            "model": label,
            "run": "(b) plain sequential (estimated)",
            "seconds": plain_est,
            "forward_passes": state.edges_tested,
            "edges_tested": state.edges_tested,
            "edges_per_s": 1 / per_plain,
            "edges_kept": int(state.mask.sum()),
            "identical_to_plain": None,
            "speedup": 1.0,
            "note": f"{per_plain:.3f} s per full forward x edges the fast run tested",
        },
        {
            "model": label,
            "run": f"(b) fast, batch {batch_size}",
            "seconds": secs,
            "forward_passes": state.forward_passes,
            "edges_tested": state.edges_tested,
            "edges_per_s": state.edges_tested / secs,
            "edges_kept": int(state.mask.sum()),
            "identical_to_plain": None,
            "speedup": plain_est / secs,
            "status": status,
        },
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="ab")
    ap.add_argument("--threshold-a", type=float, default=0.01)
    ap.add_argument("--threshold-b", type=float, default=0.05)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--batch-b", type=int, default=1)
    ap.add_argument("--plain-sample", type=int, default=5)
    ap.add_argument("--budget-min", type=float, default=40.0)
    ap.add_argument("--out", default="benchmarks/results/bench_acdc.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    if "a" in args.part:
        rows = [r for r in rows if not r["run"].startswith("(a)")]
        rows += part_a(args.threshold_a, [int(k) for k in args.batch_sizes.split(",")], args.device)
    if "b" in args.part:
        rows = [r for r in rows if not r["run"].startswith("(b)")]
        rows += part_b(args.threshold_b, args.batch_b, args.plain_sample, args.budget_min, args.device)
    print(
        f"{'model':58} {'run':34} {'seconds':>9} {'fwd':>7} {'tested':>7} {'edges/s':>8} {'kept':>6} "
        f"{'speedup':>7} same"
    )
    for r in rows:
        print(
            f"{r['model'][:58]:58} {r['run']:34} {r['seconds']:9.1f} {r['forward_passes']:7d} "
            f"{r['edges_tested']:7d} {r['edges_per_s']:8.1f} {r['edges_kept']:6d} {r['speedup']:7.2f} "
            f"{r['identical_to_plain']}"
        )
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
