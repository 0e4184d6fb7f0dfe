"""Benchmark: peak memory of circuit discovery on models of 0.5B to 3B parameters (Llama and Qwen2.5 shapes).

Each model is built from its published config with random weights, directly in the target dtype (no float32 copy,
no transformers init: parameters are allocated uninitialised and filled with N(0, 0.02), norms with 1), in its own
subprocess so that the peaks of different models do not mix. For each model it measures, on ``--prompts`` random
prompts of ``--seq`` tokens with the logit-difference metric and resample ablation:

* ``ablation``: building the problem (every sender's output on the corrupted prompts, the clean run);
* ``masked forward``: one edge-masked forward with a random half of the edges removed (every receiver its own
  input: the expensive case);
* ``ACDC edge test``: fast ACDC's evaluator built and restarted at layer 0 (its largest cache), then one candidate
  removal tested;
* ``EAP-IG``: EAP-IG-inputs with ``--steps`` steps.

Memory is the peak above what was resident before the step (CPU: the process's VmHWM after resetting it through
/proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated after a reset), plus the model's own resident size.
The estimate columns are :func:`circuitfind.engine.memory.estimate`.

Usage:
    python benchmarks/bench_memory.py [--models qwen2.5-0.5b,llama-3.2-1b] [--dtypes bfloat16,float32]
        [--device cpu] [--prompts 4] [--seq 16] [--steps 2] [--out benchmarks/results/bench_memory.json]
    python benchmarks/bench_memory.py --table    # print the table of the saved results

Llama-3.1-8B is extrapolated, not measured: for each step, the largest ratio of measured peak to the estimate terms
that step holds (over the measured models of that dtype) times 8B's estimate; its model column is a linear fit of
the measured models' resident memory on their weight bytes (the parameters plus the k/v weights the adapter repeats
per query head).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Published configs (config.json of each Hugging Face repository); only the shape matters here.
_QWEN25 = dict(
    model_type="qwen2",
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
)
_LLAMA32 = dict(
    model_type="llama",
    vocab_size=128256,
    tie_word_embeddings=True,
    rope_theta=5e5,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
MODELS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        _QWEN25,
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
    ),
    "llama-0.5b": dict(  # no released model: Llama-3.2's shape scaled down to ~0.5B parameters
        _LLAMA32,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=4096,
        head_dim=64,
    ),
    "llama-3.2-1b": dict(
        _LLAMA32,
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        head_dim=64,
    ),
    "qwen2.5-1.5b": dict(
        _QWEN25,
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
    ),
    "qwen2.5-3b": dict(
        _QWEN25,
        hidden_size=2048,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        intermediate_size=11008,
    ),
    "llama-3.2-3b": dict(
        _LLAMA32,
        hidden_size=3072,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        intermediate_size=8192,
        head_dim=128,
    ),
}
STEPS = ("ablation", "masked forward", "ACDC edge test", "EAP-IG")
# Extrapolated, not measured: Llama-3.1-8B's published config.
EXTRAPOLATED: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        _LLAMA32,
        tie_word_embeddings=False,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        head_dim=128,
    ),
}
# which terms of circuitfind.engine.memory.estimate each measured step holds
STEP_TERMS = {
    "ablation": ("ablation", "forward_pass"),
    "masked forward": ("forward_pass",),
    "ACDC edge test": ("acdc_caches", "forward_pass"),
    "EAP-IG": ("attribution_pass",),
}


def n_params(cfg: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen2 config (tied embeddings counted once)."""
    D, L, H, KV = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E = cfg.get("head_dim") or D // H
    attn = D * H * E * 2 + D * KV * E * 2 + (H * E + 2 * KV * E if cfg["model_type"] == "qwen2" else 0)
    per_layer = attn + 3 * D * cfg["intermediate_size"] + 2 * D
    emb = cfg["vocab_size"] * D * (1 if cfg["tie_word_embeddings"] else 2)
    return L * per_layer + emb + D


def _rss() -> int:
    from circuitfind.engine.memory import resident_bytes

    return resident_bytes() or 0


def build(name: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The model with random weights, allocated in ``dtype`` on ``device`` without any initialisation pass."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    spec = dict(MODELS[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), device:
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()  # skipped with the initialisation: lm_head must be the embedding again, not a copy
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.fill_(1.0)
            elif pname.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def _measure(device: torch.device, fn) -> tuple[Any, dict[str, float]]:
    from circuitfind.engine.memory import peak_memory, reset_peak_memory

    reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t
    return out, {"seconds": round(secs, 2), "peak_above_mib": round((peak_memory(device).bytes - before) / 2**20, 1)}


def run_one(name: str, dtype_name: str, device_name: str, prompts: int, seq: int, steps: int) -> dict[str, Any]:
    """Measure one model in this process (the parent runs each in a fresh one)."""
    import transformers  # noqa: F401 -- imported before the baseline, so its own memory is not the model's

    from circuitfind.algorithms import EapOptions, run_eap_ig
    from circuitfind.algorithms.acdc import FastEvaluator
    from circuitfind.engine.memory import estimate, peak_memory
    from circuitfind.engine.patchable import PatchableModel
    from circuitfind.models.loading import parse_dtype
    from circuitfind.problem import prepare_problem
    from circuitfind.tasks import Task

    dtype, device = parse_dtype(dtype_name), torch.device(device_name)
    start = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss()
    t0 = time.perf_counter()
    model = build(name, dtype, device)
    pm = PatchableModel(model)
    resident = (torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss()) - start
    build_s = time.perf_counter() - t0
    g = pm.graph
    gen = torch.Generator().manual_seed(0)
    vocab = MODELS[name]["vocab_size"]
    clean = torch.randint(1000, vocab, (prompts, seq), generator=gen)
    corrupt = torch.randint(1000, vocab, (prompts, seq), generator=gen)
    am = torch.ones(prompts, seq, dtype=torch.long)
    answers = torch.randint(1000, vocab, (prompts, 1), generator=gen)
    wrong = torch.randint(1000, vocab, (prompts, 1), generator=gen)
    task = Task("random", clean, corrupt, am, am.sum(1) - 1, answers, wrong).to(device)

    row: dict[str, Any] = {
        "model": name,
        "dtype": dtype_name,
        "device": str(device),
        "params": n_params(MODELS[name]),
        "params_counted": sum(p.numel() for p in model.parameters()),
        "senders": g.n_senders,
        "receivers": g.n_receivers,
        "edges": g.n_edges,
        "prompts": prompts,
        "seq": seq,
        "eap_ig_steps": steps,
        "build_s": round(build_s, 1),
        "model_resident_mib": round(resident / 2**20, 1),
        "estimate_mib": {k: round(v / 2**20, 1) for k, v in estimate(pm, prompts, seq).items() if k != "chunk_size"},
    }
    problem, m = _measure(device, lambda: prepare_problem(pm, task, metric="logit_diff")[0])
    row["ablation"] = m
    full = g.full_mask()
    half = full & (torch.rand(full.shape, generator=gen) < 0.5)

    def masked() -> torch.Tensor:
        with torch.no_grad():
            return pm.forward(
                problem.clean_ids,
                problem.ablated,
                half,
                attention_mask=problem.attention_mask,
                positions=problem.positions,
                vocab=problem.vocab,
            )

    _, row["masked forward"] = _measure(device, masked)

    def acdc_test() -> float:
        ev = FastEvaluator(problem)
        ev.start_layer(0, full)
        cand = full.clone()
        cand[0, g.receivers_from(0)] = False  # input -> the first head's q
        return float(ev.losses(cand.unsqueeze(0))[0])

    _, row["ACDC edge test"] = _measure(device, acdc_test)
    _, row["EAP-IG"] = _measure(device, lambda: run_eap_ig(problem, EapOptions(steps=steps)))
    row["peak_total_mib"] = round((peak_memory(device).bytes if device.type == "cuda" else _hwm_lifetime()) / 2**20, 1)
    return row


def _hwm_lifetime() -> int:
    from circuitfind.engine.memory import lifetime_peak_rss

    return lifetime_peak_rss()


def _available_bytes(device: torch.device) -> int:
    from circuitfind.engine.memory import available_bytes

    free = available_bytes(device)
    return 1 << 62 if free is None else free


def _needed_bytes(name: str, dtype: torch.dtype) -> int:
    cfg = MODELS[name]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E = cfg.get("head_dim") or cfg["hidden_size"] // H
    gqa_copies = 2 * cfg["num_hidden_layers"] * cfg["hidden_size"] * (H - KV) * E  # per-head k/v views repeated
    return int((n_params(cfg) + gqa_copies) * dtype.itemsize * 1.15 + 2 * 2**30)


def _weights_bytes(cfg: dict[str, Any], dtype: torch.dtype) -> int:
    """The parameters plus the per-query-head k/v weights the Llama adapter repeats for GQA."""
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E = cfg.get("head_dim") or cfg["hidden_size"] // H
    gqa_copies = 2 * cfg["num_hidden_layers"] * cfg["hidden_size"] * (H - KV) * E
    return (n_params(cfg) + gqa_copies) * dtype.itemsize


def estimate_of(cfg: dict[str, Any], dtype: torch.dtype, prompts: int, seq: int) -> dict[str, int]:
    """:func:`circuitfind.engine.memory.estimate` from a config alone (no weights built)."""
    from types import SimpleNamespace

    from circuitfind.engine.memory import estimate
    from circuitfind.graph import Graph

    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    spec = SimpleNamespace(d_model=cfg["hidden_size"], n_layers=L)
    return estimate(SimpleNamespace(graph=Graph(L, H), spec=spec, dtype=dtype, module=None), prompts, seq)


def extrapolate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for :data:`EXTRAPOLATED`: each measured step's peak over its estimate terms (the largest ratio of the
    measured models of the same dtype and prompt shape), times the target model's estimate."""
    from circuitfind.graph import Graph
    from circuitfind.models.loading import parse_dtype

    out = []
    for dtype_name in sorted({r["dtype"] for r in rows if "skipped" not in r and "extrapolated" not in r}):
        dtype = parse_dtype(dtype_name)
        measured = [r for r in rows if r["dtype"] == dtype_name and "skipped" not in r and "extrapolated" not in r]
        measured = [r for r in measured if r["model"] in MODELS]
        if not measured:
            continue
        prompts, seq = measured[0]["prompts"], measured[0]["seq"]
        measured = [r for r in measured if (r["prompts"], r["seq"]) == (prompts, seq)]

        for name, cfg in EXTRAPOLATED.items():
            est = estimate_of(cfg, dtype, prompts, seq)
            slope, intercept = _fit(
                [_weights_bytes(MODELS[r["model"]], dtype) / 2**20 for r in measured],
                [r["model_resident_mib"] for r in measured],
            )
            row: dict[str, Any] = {
                "model": name,
                "dtype": dtype_name,
                "device": measured[0]["device"],
                "extrapolated": f"from {', '.join(r['model'] for r in measured)}: steps by the largest "
                "measured / estimated ratio, the model by a linear fit of resident memory on weight bytes",
                "params": n_params(cfg),
                "edges": Graph(cfg["num_hidden_layers"], cfg["num_attention_heads"]).n_edges,
                "prompts": prompts,
                "seq": seq,
                "model_resident_mib": round(slope * _weights_bytes(cfg, dtype) / 2**20 + intercept, 1),
            }
            for step, terms in STEP_TERMS.items():
                k = max(_ratio(r, step, dtype) for r in measured)
                row[step] = {"seconds": None, "peak_above_mib": round(k * sum(est[t] for t in terms) / 2**20, 1)}
            overhead = max(
                r["peak_total_mib"] - r["model_resident_mib"] - max(r[s]["peak_above_mib"] for s in STEPS)
                for r in measured
            )
            row["peak_total_mib"] = round(
                row["model_resident_mib"] + max(row[s]["peak_above_mib"] for s in STEPS) + overhead, 1
            )
            out.append(row)
    return out


def _fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept`` (slope from the mean ratio when there is one point)."""
    if len(x) < 2:
        return y[0] / x[0], 0.0
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
    return slope, my - slope * mx


def _ratio(row: dict[str, Any], step: str, dtype: torch.dtype) -> float:
    """A measured step's peak over the estimate terms it holds."""
    est = estimate_of(MODELS[row["model"]], dtype, row["prompts"], row["seq"])
    return row[step]["peak_above_mib"] * 2**20 / sum(est[t] for t in STEP_TERMS[step])


def _secs(step: dict[str, Any]) -> str:
    return "-" if step["seconds"] is None else f"{step['seconds']:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | dtype | params | edges | model MiB | ablation MiB | masked fwd MiB | ACDC test MiB (s) "
        "| EAP-IG MiB (s) | peak total MiB |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | | | | | | | | skipped: {r['skipped']} |")
            continue
        label = f"{r['model']} (extrapolated)" if "extrapolated" in r else r["model"]
        lines.append(
            f"| {label} | {r['dtype']} | {r['params'] / 1e9:.2f}B | {r['edges']:,} | "
            f"{r['model_resident_mib']:,.0f} | {r['ablation']['peak_above_mib']:,.0f} | "
            f"{r['masked forward']['peak_above_mib']:,.0f} | "
            f"{r['ACDC edge test']['peak_above_mib']:,.0f} ({_secs(r['ACDC edge test'])}) | "
            f"{r['EAP-IG']['peak_above_mib']:,.0f} ({_secs(r['EAP-IG'])}) | {r['peak_total_mib']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--dtypes", default="bfloat16", help="comma-separated: float32, bfloat16, float16")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="EAP-IG steps (memory does not grow with them)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_memory.json"))
    ap.add_argument("--table", action="store_true", help="print the saved results and exit")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child mode: one model, JSON on stdout
    args = ap.parse_args()

    if args.one:
        print(json.dumps(run_one(args.models, args.dtypes, args.device, args.prompts, args.seq, args.steps)))
        return
    saved = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    saved["rows"] = [r for r in saved["rows"] if "extrapolated" not in r]
    if args.table:
        print(table(saved["rows"] + extrapolate(saved["rows"])))
        return
    from circuitfind.models.loading import parse_dtype

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here")
    rows = []
    for dtype_name in args.dtypes.split(","):
        for name in args.models.split(","):
            if name not in MODELS:
                sys.exit(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
            need, free = _needed_bytes(name, parse_dtype(dtype_name)), _available_bytes(device)
            if need > free:
                note = f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
                print(f"{name} {dtype_name}: skipped ({note})", flush=True)
                rows.append({"model": name, "dtype": dtype_name, "device": str(device), "skipped": note})
                continue
            cmd = [sys.executable, __file__, "--one", "--models", name, "--dtypes", dtype_name, "--device", args.device]
            cmd += ["--prompts", str(args.prompts), "--seq", str(args.seq), "--steps", str(args.steps)]
            print(f"{name} {dtype_name}: running ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                if done.returncode < 0:
                    reason = f"killed by signal {-done.returncode} (out of memory?)"
                print(f"  failed: {reason}", flush=True)
                rows.append({"model": name, "dtype": dtype_name, "device": str(device), "skipped": reason})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(table([row]).splitlines()[-1], flush=True)
            rows.append(row)
    keys = {(r["model"], r["dtype"], r["device"]) for r in rows}
    merged = [r for r in saved["rows"] if (r["model"], r["dtype"], r["device"]) not in keys] + rows
    order = {name: i for i, name in enumerate(MODELS)}
    merged.sort(key=lambda r: (r["device"], r["dtype"], order.get(r["model"], 99)))
    merged += extrapolate(merged)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "rows": merged,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(merged))


if __name__ == "__main__":
    main()
