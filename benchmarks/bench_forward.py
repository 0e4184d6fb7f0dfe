"""Benchmark: the edge-masked forward against the plain transformers forward.

Models: the offline default (SmolLM2-135M-Instruct) and a GPT-2-small-sized config with random weights.
Inputs: 20 prompts x 16 tokens. Rows: plain HF forward, masked forward with every edge kept, masked forward
with a random half of the edges removed (resample ablation). Times are medians of repeated runs, reported
as ratios to the plain forward measured in the same run; peak memory is the resident-set growth during the
call (Linux: VmHWM after resetting it through /proc/self/clear_refs).

Usage:
    python benchmarks/bench_forward.py [--repeats 5] [--device cpu] [--dtype float32]
        [--out benchmarks/results/bench_forward.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.models import load_model

B, T = 20, 16


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


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
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        rss0 = _status_kb("VmRSS")
    except OSError:
        rss0 = None
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    peak = (_status_kb("VmHWM") - rss0) / 1024 if rss0 is not None else float("nan")
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
    rows = []
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
        base = None
        for label, fn in configs:
            secs, peak = measure(fn, repeats, device)
            base = base or secs
            rows.append({"model": name, "config": label, "seconds": secs, "ratio": secs / base, "peak_mib": peak})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/bench_forward.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    args = ap.parse_args(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    models = [
        ("SmolLM2-135M (default)", lambda: load_model(progress=False, device=device, dtype=args.dtype)[0]),
        (
            "GPT-2 small config, random",
            lambda: load_model(GPT2LMHeadModel(GPT2Config()), device=device, dtype=args.dtype)[0],
        ),
    ]
    rows = []
    for name, make in models:
        rows += bench_model(name, make(), args.repeats, device)
    where = f"{torch.get_num_threads()} threads, {platform.processor() or 'cpu'}" if device.type == "cpu" else device
    print(f"{B} prompts x {T} tokens, {args.dtype}, {where}")
    print(f"{'model':28} {'config':34} {'seconds':>8} {'x plain':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['model']:28} {r['config']:34} {r['seconds']:8.3f} {r['ratio']:8.2f} {r['peak_mib']:9.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch": B, "seq": T, "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
