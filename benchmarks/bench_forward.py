"""Benchmark: the edge-masked forward against the plain transformers forward.

Two modes:

- ``--mode ioi`` (the default; issue 20's table): the offline default model (SmolLM2-135M-Instruct) on the 20
  train prompts of ``get_task("ioi", tok, n=40, seed=0, n_train=20)``, resample ablation, last-position logits
  for both the model's own forward (``logits_to_keep=1`` is not used: the answer position differs per prompt
  under right padding, so the plain row gathers the same positions from the hidden states) and the masked
  forward. Rows: the model's own forward, masked with all edges kept, a random half removed, 95% removed
  (seeded).
- ``--mode random``: the offline default and a GPT-2-small-sized config with random weights on 20 random
  prompts x 16 tokens (all positions), the older table.

Times are medians of repeated runs, reported as ratios to the plain forward measured in the same run; peak
memory is the resident-set growth during the call (Linux: VmHWM after resetting it through
/proc/self/clear_refs). ``--threads`` sets ``torch.set_num_threads`` (default 1).

Usage:
    python benchmarks/bench_forward.py [--mode ioi|random] [--threads 1] [--repeats 5] [--device cpu]
        [--dtype float32] [--out benchmarks/results/bench_forward_ioi.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from circuitfind.engine.memory import peak_memory, reset_peak_memory, resident_bytes
from circuitfind.engine.patchable import PatchableModel
from circuitfind.models import load_model
from circuitfind.tasks import get_task

B, T = 20, 16


def measure(fn, repeats: int, device: torch.device | None = None) -> tuple[float, float]:
    """Median seconds and peak resident growth (MiB) of ``fn()`` (CUDA: peak allocated growth)."""
    fn()  # warm-up
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times), (torch.cuda.max_memory_allocated(device) - before) / 2**20
    rss0 = resident_bytes() if reset_peak_memory() else None  # the high-water mark, reset
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    peak = (peak_memory().bytes - rss0) / 2**20 if rss0 is not None else float("nan")
    return statistics.median(times), peak


def bench_model(name: str, model, repeats: int, device: torch.device | None = None) -> list[dict]:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(100, min(vocab, 20000), (B, T), generator=g).to(device)
    corrupt = torch.randint(100, min(vocab, 20000), (B, T), generator=g).to(device)
    pm = PatchableModel(model)
    abl = pm.ablation("resample", corrupt)
    full = pm.graph.full_mask()
    half = full & (torch.rand(full.shape, generator=g) < 0.5)
    with torch.no_grad():
        configs = [
            ("plain transformers forward", lambda: model(clean)),
            ("masked, all edges kept", lambda: pm.forward(clean, abl, full)),
            ("masked, random half removed", lambda: pm.forward(clean, abl, half)),
            ("plain, last position logits", lambda: model(clean, logits_to_keep=1)),
            (
                "masked, all kept, last position",
                lambda: pm.forward(clean, abl, full, positions=torch.full((B,), T - 1, device=device)),
            ),
        ]
        return _timed(name, configs, repeats, device)


def _removed(full: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``full`` with a seeded random ``fraction`` of its edges removed (exactly that many, rounded)."""
    edges = full.nonzero()
    g = torch.Generator().manual_seed(seed)
    drop = edges[torch.randperm(len(edges), generator=g)[: round(fraction * len(edges))]]
    out = full.clone()
    out[drop[:, 0], drop[:, 1]] = False
    return out


def bench_ioi(repeats: int, device: torch.device, dtype: str) -> list[dict]:
    """The IOI rows: 20 prompts, last-position logits for the model's own forward and the masked forward."""
    model, tok = load_model(progress=False, device=device, dtype=dtype)
    task = get_task("ioi", tok, n=40, seed=0, n_train=20).train()
    ids, am = task.clean_ids.to(device), task.attention_mask.to(device)
    pos = task.answer_pos.to(device)
    rows_idx = torch.arange(len(ids), device=device)
    pm = PatchableModel(model)
    abl = pm.ablation("resample", task.corrupted_ids.to(device), am)
    full = pm.graph.full_mask()
    lm_head = model.get_output_embeddings()

    def plain():  # the model's own forward, unembedding only the answer position of every prompt
        hidden = model.base_model(ids, attention_mask=am).last_hidden_state  # (B, T, D)
        return lm_head(hidden[rows_idx, pos])  # (B, V)

    configs = [
        ("plain transformers forward", plain),
        ("masked, all edges kept", lambda: pm.forward(ids, abl, full, attention_mask=am, positions=pos)),
    ]
    for label, frac, seed in (("masked, random half removed", 0.5, 1), ("masked, 95% removed", 0.95, 2)):
        mask = _removed(full, frac, seed)
        configs.append((label, lambda m=mask: pm.forward(ids, abl, m, attention_mask=am, positions=pos)))
    name = f"SmolLM2-135M IOI ({len(ids)} x {ids.shape[1]})"
    with torch.no_grad():
        ref = plain()
        got = pm.forward(ids, abl, full, attention_mask=am, positions=pos)
        print(f"max |masked, all kept - plain| over the answer logits: {float((got - ref).abs().max()):.2e}")
        return _timed(name, configs, repeats, device)


def _timed(name: str, configs, repeats: int, device: torch.device) -> list[dict]:
    rows, base = [], None
    for label, fn in configs:
        secs, peak = measure(fn, repeats, device)
        base = base or secs
        rows.append({"model": name, "config": label, "seconds": secs, "ratio": secs / base, "peak_mib": peak})
    return rows


def bench_random(repeats: int, device: torch.device, dtype: str) -> list[dict]:
    """The random-token rows: the default model and a GPT-2-small config, every position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    models = [
        ("SmolLM2-135M (default)", lambda: load_model(progress=False, device=device, dtype=dtype)[0]),
        (
            "GPT-2 small config, random",
            lambda: load_model(GPT2LMHeadModel(GPT2Config()), device=device, dtype=dtype)[0],
        ),
    ]
    rows = []
    for name, make in models:
        rows += bench_model(name, make(), repeats, device)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("ioi", "random"), default="ioi")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/bench_forward[_ioi].json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.mode == "ioi":
        rows = bench_ioi(args.repeats, device, args.dtype)
        shape = "IOI train split"
    else:
        rows = bench_random(args.repeats, device, args.dtype)
        shape = f"{B} prompts x {T} tokens"
    where = f"{torch.get_num_threads()} threads, {platform.processor() or 'cpu'}" if device.type == "cpu" else device
    print(f"{shape}, {args.dtype}, {where}")
    print(f"{'model':28} {'config':34} {'ms':>9} {'x plain':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['model']:28} {r['config']:34} {1e3 * r['seconds']:9.2f} {r['ratio']:8.2f} {r['peak_mib']:9.0f}")
    suffix = "_ioi" if args.mode == "ioi" else ""
    out = Path(args.out or f"benchmarks/results/bench_forward{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"mode": args.mode, "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype}
    if args.mode == "random":
        meta.update(batch=B, seq=T)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
