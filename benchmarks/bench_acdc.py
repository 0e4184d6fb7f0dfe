"""Benchmark: plain sequential ACDC against fast ACDC (restart from cache, answer positions only, speculation).

(a) a 4-layer, 8-head GPT-2-architecture model with seeded random weights on a synthetic task (20 prompts of
    random tokens, corrupted = other random tokens), KL metric, resample ablation: both paths run to the end and
    their circuits are compared edge by edge.
(b) the offline default model (SmolLM2-135M-Instruct) on IOI with 20 prompts: the fast path runs to the end
    (or until ``--budget-min``, then the rate so far is reported); the plain path costs one full forward per
    tested edge, so it is measured on ``--plain-sample`` edges and extrapolated to the fast run's edge count.
(f) the floor of one exact ACDC test on (a)'s model and task: fast ACDC with batch 1 gives the milliseconds per
    test; the floor is what the model's own layers above the test's receiver cost: one HF block and the
    last-position unembedding are timed, and a test whose receiver sits in layer ``l`` restarts there, so its
    plain cost is ``(n_layers - l)`` blocks plus the unembedding, averaged over the tests the run makes. The
    ratio per-test / floor is issue 20's goal (<= 1.5x, one thread).

Usage:
    python benchmarks/bench_acdc.py [--part a|b|f|ab] [--threshold-b 0.05] [--batch-sizes 1,4,8] [--device cpu]
        [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def _model_a(device: str, n: int = 20, t: int = 16):
    """(a)'s 4-layer GPT-2 model (seeded random weights), its patchable view and the problem on the task."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=8, n_embd=256, vocab_size=2000, n_positions=64)).eval()
    model = cf.load_model(model, device=device)[0]
    pm = PatchableModel(model)
    problem, _ = prepare_problem(pm, _synthetic_task(2000, n, t), metric="kl")
    return model, pm, problem


def _median_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def part_floor(threshold: float, n: int, t: int, device: str = "cpu") -> list[dict]:
    """Milliseconds per exact test of fast ACDC (batch 1) against the plain cost of the layers above it."""
    model, pm, problem = _model_a(device, n, t)
    t = time.perf_counter()
    state = run_acdc_fast(problem, AcdcOptions(threshold=threshold, batch_size=1))
    per_test = 1e3 * (time.perf_counter() - t) / state.forward_passes
    g = pm.graph
    tested = (~torch.isnan(state.effects)).sum(0)  # (R,) tests per receiver
    layers = torch.tensor([g.receiver_layer(r) for r in range(g.n_receivers)])
    blocks_per_test = float(((g.n_layers - layers) * tested).sum() / tested.sum())
    hidden = torch.randn(*problem.clean_ids.shape, model.config.n_embd, device=pm.device)  # (B, T, D)
    last = hidden[:, -1]  # (B, D)
    with torch.no_grad():
        block_ms = _median_ms(lambda: model.transformer.h[0](hidden))
        unembed_ms = _median_ms(lambda: model.lm_head(model.transformer.ln_f(last)))
    floor = blocks_per_test * block_ms + unembed_ms
    B, T = problem.clean_ids.shape
    return [
        {
            "model": f"gpt2-4L-8H random, {B} prompts x {T} tokens, tau={threshold}",
            "run": "(f) fast, batch 1: ms per test vs floor",
            "shape": [B, T],
            "tests": state.forward_passes,
            "ms_per_test": per_test,
            "block_ms": block_ms,
            "unembed_ms": unembed_ms,
            "blocks_per_test": blocks_per_test,
            "floor_ms": floor,
            "ratio": per_test / floor,
        }
    ]


def part_a(threshold: float, batch_sizes: list[int], device: str = "cpu") -> list[dict]:
    _, pm, problem = _model_a(device)
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
    ap.add_argument("--threshold-f", type=float, default=1e-4, help="(f)'s tau: small, so most edges are tested")
    ap.add_argument("--prompts-f", type=int, default=20, help="(f)'s prompts (default: (a)'s 20)")
    ap.add_argument("--tokens-f", type=int, default=16, help="(f)'s tokens per prompt (default: (a)'s 16)")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--batch-b", type=int, default=1)
    ap.add_argument("--plain-sample", type=int, default=5)
    ap.add_argument("--budget-min", type=float, default=40.0)
    ap.add_argument("--out", default="benchmarks/results/bench_acdc.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    if "a" in args.part:
        rows = [r for r in rows if not r["run"].startswith("(a)")]
        rows += part_a(args.threshold_a, [int(k) for k in args.batch_sizes.split(",")], args.device)
    if "b" in args.part:
        rows = [r for r in rows if not r["run"].startswith("(b)")]
        rows += part_b(args.threshold_b, args.batch_b, args.plain_sample, args.budget_min, args.device)
    if "f" in args.part:
        rows = [r for r in rows if not (r["run"].startswith("(f)") and r["shape"] == [args.prompts_f, args.tokens_f])]
        rows += part_floor(args.threshold_f, args.prompts_f, args.tokens_f, args.device)
    _print(rows)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


def _print(rows: list[dict]) -> None:
    print(f"{torch.get_num_threads()} threads")
    for r in rows:
        if r["run"].startswith("(f)"):
            print(
                f"{r['model']}: {r['ms_per_test']:.2f} ms per test ({r['tests']} tests), floor {r['floor_ms']:.2f} ms "
                f"= {r['blocks_per_test']:.2f} blocks x {r['block_ms']:.2f} ms + unembed {r['unembed_ms']:.2f} ms; "
                f"ratio {r['ratio']:.2f}x (goal <= 1.5x)"
            )
    rows = [r for r in rows if not r["run"].startswith("(f)")]
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


if __name__ == "__main__":
    raise SystemExit(main())
