"""Benchmark: the path one ``cf.evaluate.faithfulness`` call takes through the package (issue 20: "down the
layers, not back and forth"), traced with ``sys.setprofile`` on a tiny random GPT-2.

Two counts, both restricted to circuitfind's own frames:

- **calls**: every distinct call from one file of the package into another (caller function -> callee function,
  counted once however often loops over layers, chunks and masks repeat it), in the order first made; a
  *callback* is such a call from a lower layer into a higher one (README layer order; inside the engine:
  ``patchable`` above ``forward`` / ``gradients`` above the kernels and stores). The table also splits them by
  which unit calls which, and lists the units ``evaluate/`` itself calls into.
- **stops**: the files execution passes through, calls *and* returns of those distinct calls, consecutive
  stops in one file merged; a *climb* is a stop in a higher layer than the stop before (returning up a layer to
  be sent down again: the back and forth).

Usage:
    python benchmarks/trace_layers.py [--out benchmarks/results/trace_layers.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf

ROOT = str(Path(cf.__file__).parent) + "/"
LAYERS = (("errors", "fileio"), ("graph", "export"), ("models",), ("engine",), ("metrics", "tasks"), ("problem",))
LAYERS += (("selection",), ("algorithms",), ("circuit", "evaluate"), ("discovery",))
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
ENGINE = {"patchable": 0.3, "forward": 0.2, "gradients": 0.2}  # the rest of the engine (kernels, stores): 0.1


def _module(filename: str) -> str:
    return filename[len(ROOT) :].removesuffix(".py").replace("/", ".")


def _unit(module: str) -> str:
    return module.split(".")[0]


def _rank(module: str) -> float:
    parts = module.split(".")
    extra = ENGINE.get(parts[1], 0.1) if parts[0] == "engine" and len(parts) > 1 else 0.0
    return LAYER.get(parts[0], 99) + extra


def _caller(frame: FrameType) -> FrameType | None:
    c = frame.f_back
    while c is not None and not c.f_code.co_filename.startswith(ROOT):
        c = c.f_back
    return c


def _setup() -> tuple[cf.PatchableModel, torch.Tensor, cf.Task]:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=61, n_positions=16, bos_token_id=0, eos_token_id=0)
    pm = cf.PatchableModel(GPT2LMHeadModel(cfg).eval())
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, 61, (2, 6, 5), generator=g)
    am = torch.ones(6, 5, dtype=torch.long)
    answers, wrong = torch.randint(1, 61, (2, 6, 1), generator=g)
    task = cf.Task("toy", clean, corrupt, am, am.sum(1) - 1, answers, wrong, metric="logit_diff")
    mask = pm.graph.full_mask().clone()
    mask[0] = False
    return pm, mask, task


def trace() -> dict[str, Any]:
    """Trace one faithfulness call (after a warm-up call) and count its calls and stops."""
    pm, mask, task = _setup()
    cf.evaluate.faithfulness(pm, mask, task, n_boot=10)
    calls: list[tuple[str, str, str]] = []
    stream: list[str] = []
    seen: set[tuple[Any, Any]] = set()
    live: set[int] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return") or not frame.f_code.co_filename.startswith(ROOT):
            return
        c = _caller(frame)
        if c is None:
            return
        a, b = _module(c.f_code.co_filename), _module(frame.f_code.co_filename)
        if event == "call" and (c.f_code, frame.f_code) not in seen:
            seen.add((c.f_code, frame.f_code))
            live.add(id(frame))
            stream.append(b)
            if a != b:
                calls.append((a, b, frame.f_code.co_qualname))
        elif event == "return" and id(frame) in live:
            live.discard(id(frame))
            stream.append(a)

    sys.setprofile(profile)
    try:
        cf.evaluate.faithfulness(pm, mask, task, n_boot=10)
    finally:
        sys.setprofile(None)
    stops = ["evaluate.circuits"]
    for m in stream:
        if m != stops[-1]:
            stops.append(m)
    return {
        "calls": len(calls),
        "call_files": len({b for _, b, _ in calls} | {"evaluate.circuits"}),
        "callbacks": [f"{a} -> {b}.{f}" for a, b, f in calls if _rank(b) > _rank(a)],
        "calls_by_unit": {f"{a} -> {b}": n for (a, b), n in Counter((_unit(a), _unit(b)) for a, b, _ in calls).items()},
        "evaluate_calls_into": dict(Counter(_unit(b) for a, b, _ in calls if a.startswith("evaluate"))),
        "stops": len(stops),
        "stop_files": len(set(stops)),
        "climbs": sum(_rank(b) > _rank(a) for a, b in zip(stops, stops[1:], strict=False)),
        "entries_per_file": dict(Counter(stops).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trace_layers.json"))
    args = parser.parse_args()
    r = trace()
    print("| count | value |\n|---|---:|")
    for key in ("calls", "call_files", "stops", "stop_files", "climbs"):
        print(f"| {key} | {r[key]} |")
    print(f"| callbacks | {len(r['callbacks'])} |")
    print("\nevaluate/ calls into:", r["evaluate_calls_into"])
    print("calls by unit:", r["calls_by_unit"])
    print("callbacks:", r["callbacks"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
