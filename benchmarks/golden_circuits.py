"""Golden circuits: the kept edges of the benchmark tasks' circuits, recorded to compare two trees of the library.

Issue 20 (the house redesign) must leave every circuit unchanged. This script discovers, with the public API only
(``cf.discover``, ``cf.evaluate.faithfulness``, ``cf.PatchableModel``, ``cf.Task``, ``cf.tasks``), so that it runs
on the tree before the redesign as well as after it:

* ``tiny-<family>-<method>``: ACDC (tau 0.01 and 0.05), EAP-IG (top 20 and target 0.8) and the hybrid (target 0.8)
  on the tiny float64 models the tests use (``tests/models_tiny.py``: GPT-2, Llama with GQA, GPT-NeoX; weights
  at init 0.2 with random biases, as ``tests/toy_problems.py``), and on the same models in float32
  (``tiny-<family>-f32-...``), on the toy task whose answers are the model's own
  top tokens (``toy_problems.natural_task``), logit difference, resample ablation;
* ``tracr-<name>-<method>``: ACDC (tau 0.01) and EAP-IG (top 10) on both tracr models
  under zero ablation with their L2 metric;
* ``main-job`` (unless ``--no-real``): the README's quick start on the default model -- IOI, 20 + 20 prompts,
  EAP-IG, ``metric="logit_diff"``, ``target=0.8``, the validated cut -- and ``main-job-train95``, the old cut at
  target 0.95 on the discovery prompts (the 280-edge circuit of issue 20).

Each record holds the sorted kept edge names, their scores, the ten best-scored excluded edges (to explain a
tie that flips at a threshold), the size and the faithfulness (held-out where the task has a split).

Usage:
    # record (the real model: hold the heavy lock); PYTHONPATH picks the tree under test
    flock /tmp/cf-heavy.lock env OMP_NUM_THREADS=2 PYTHONPATH=/path/to/tree python benchmarks/golden_circuits.py \
        --label before
    python benchmarks/golden_circuits.py --compare before after   # the table of differences
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import circuitfind as cf

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = ("gpt2", "llama", "neox")
N, T = 5, 8  # the toy task's prompts and tokens (tests/toy_problems.py)


def _tiny_pm(family: str, float32: bool = False) -> cf.PatchableModel:
    """The tests' tiny float64 model of ``family``: init 0.2, random biases (``toy_problems._pm``); or in float32
    (where a reordered sum can flip a near tie)."""
    sys.path.insert(0, str(Path(cf.__file__).resolve().parent.parent))  # the tree's tests/models_tiny.py
    from tests.models_tiny import FAMILIES as MAKERS
    from tests.models_tiny import in_float64, randomize_biases

    model = MAKERS[family](init=0.2)
    randomize_biases(model)
    return cf.PatchableModel(model if float32 else in_float64(model))


def _natural_task(pm: cf.PatchableModel, seed: int = 0) -> cf.Task:
    """``toy_problems.natural_task``: random prompts (one right-padded), the model's top clean token as the
    answer and its top corrupted token (not the answer) as the wrong answer."""
    g = torch.Generator().manual_seed(seed)
    from tests.models_tiny import VOCAB as vocab  # _tiny_pm put the tree on sys.path

    clean = torch.randint(1, vocab, (N, T), generator=g)
    corrupt = torch.randint(1, vocab, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    am[1, 6:] = 0
    pos = am.sum(1) - 1
    with torch.no_grad():
        full, zero = pm.graph.full_mask(), pm.ablation("zero")
        top_clean = pm.forward(clean, zero, full, attention_mask=am, positions=pos)
        top_corrupt = pm.forward(corrupt, zero, full, attention_mask=am, positions=pos)
    answers = top_clean.argmax(-1, keepdim=True)  # (N, 1)
    second = top_corrupt.topk(2, dim=-1).indices  # (N, 2)
    wrong = torch.where(second[:, :1] == answers, second[:, 1:], second[:, :1])
    return cf.Task("natural", clean, corrupt, am, pos, answers, wrong)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _record(circuit: cf.Circuit, faith: dict[str, Any], seconds: float, call: dict[str, Any]) -> dict[str, Any]:
    """Kept edges with their scores, the ten best-scored excluded edges, size and faithfulness."""
    graph, mask = circuit.graph, circuit.mask.bool()
    scores = circuit.scores.double() if circuit.scores is not None else torch.full(mask.shape, float("nan"))
    kept = {graph.edge_name(int(s), int(r)): _finite(float(scores[s, r])) for s, r in mask.nonzero().tolist()}
    free = graph.edge_mask.bool() & ~mask
    ranked = torch.where(free & scores.isfinite(), scores, torch.tensor(-math.inf, dtype=scores.dtype)).flatten()
    top = ranked.topk(min(10, int(free.sum()))).indices.tolist()
    cols = mask.shape[1]
    excluded = [
        [graph.edge_name(i // cols, i % cols), _finite(float(ranked[i]))] for i in top if math.isfinite(ranked[i])
    ]
    return {
        "call": call,
        "n_edges": circuit.n_edges,
        "edges": sorted(kept),
        "scores": kept,
        "best_excluded": excluded,
        "faithfulness": _finite(float(faith["faithfulness"])),
        "split": faith.get("split"),
        "recovered": _finite(float(circuit.recovered)),
        "seconds": round(seconds, 2),
    }


def _run(pm: Any, task: Any, call: dict[str, Any], faith_kw: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    circuit = cf.discover(pm, task, progress=False, **call)
    seconds = time.perf_counter() - t0
    faith = cf.evaluate.faithfulness(pm, circuit, task, **faith_kw)
    printable = {k: v for k, v in call.items() if not callable(v)}
    return _record(circuit, faith, seconds, printable)


def tiny_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    """Name -> a thunk recording that circuit (ACDC, EAP-IG, hybrid on each tiny family)."""
    calls = {
        "acdc-0.01": dict(method="acdc", threshold=0.01),
        "acdc-0.05": dict(method="acdc", threshold=0.05),
        "eap-ig-top20": dict(method="eap-ig", n_edges=20),
        "eap-ig-target0.8": dict(method="eap-ig", target=0.8, select="train"),
        "hybrid-target0.8": dict(method="hybrid", target=0.8),
    }
    cases: dict[str, Callable[[], dict[str, Any]]] = {}
    for family, float32 in [(f, False) for f in FAMILIES] + [(f, True) for f in FAMILIES]:
        state: dict[str, Any] = {}

        def thunk(call=None, family=family, float32=float32, state=state):
            if not state:
                state["pm"] = pm = _tiny_pm(family, float32)
                state["task"] = _natural_task(pm)
            kw = dict(metric="logit_diff", ablation="resample")
            return _run(state["pm"], state["task"], {**call, **kw}, kw)

        for name, call in calls.items():
            cases[f"tiny-{family}{'-f32' if float32 else ''}-{name}"] = lambda call=call, thunk=thunk: thunk(call)
    return cases


def tracr_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    """ACDC, EAP-IG and the hybrid on both tracr models, zero ablation, their L2 metric."""
    from circuitfind.tasks.tracr import tracr_setup

    calls = {
        "acdc-0.01": dict(method="acdc", threshold=0.01),
        "eap-ig-top10": dict(method="eap-ig", n_edges=10),
    }  # the hybrid with tracr's bound L2 metric fails on both trees (a shape mismatch: 21 vs 81 prompts)
    cases: dict[str, Callable[[], dict[str, Any]]] = {}
    for name, n_seq in (("reverse", None), ("proportion", 16)):
        state: dict[str, Any] = {}

        def thunk(call, name=name, n_seq=n_seq, state=state):
            if not state:
                state["setup"] = tracr_setup(name, n_sequences=n_seq, seed=0)
            s = state["setup"]
            kw = dict(metric=s.metric, ablation="zero")
            return _run(s.pm, s.task, {**call, **kw}, kw)

        for label, call in calls.items():
            cases[f"tracr-{name}-{label}"] = lambda call=call, thunk=thunk: thunk(call)
    return cases


def real_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    """The README's main job on the default model, and the old 280-edge cut (target 0.95 on the train split)."""
    state: dict[str, Any] = {}

    def thunk(call):
        if not state:
            model, tok = cf.load_model()
            state["model"] = model
            state["task"] = cf.tasks.get_task("ioi", tok, n=40, seed=0, n_train=20)
        kw = dict(metric="logit_diff")
        return _run(state["model"], state["task"], {**call, **kw}, kw)

    return {
        "main-job": lambda: thunk(dict(method="eap-ig", target=0.8)),
        "main-job-train95": lambda: thunk(dict(method="eap-ig", target=0.95, select="train")),
    }


def record(label: str, real: bool, only: list[str] | None) -> Path:
    cases = {**tiny_cases(), **tracr_cases(), **(real_cases() if real else {})}
    if only:
        cases = {k: v for k, v in cases.items() if any(o in k for o in only)}
    out = {
        "label": label,
        "tree": str(Path(cf.__file__).resolve().parent.parent),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "circuits": {},
    }
    path = RESULTS / f"golden_circuits_{label}.json"
    if path.exists():  # a run with --only adds to (or redoes part of) an earlier run of the same label
        out["circuits"] = json.loads(path.read_text())["circuits"]
    for name, thunk in cases.items():
        rec = thunk()
        out["circuits"][name] = rec
        print(f"{name:34s} {rec['n_edges']:6d} edges  f {rec['faithfulness']}  ({rec['seconds']} s)", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")  # after every circuit: an interrupted run keeps its part
    return path


def compare(a: str, b: str) -> list[dict[str, Any]]:
    """One row per circuit in both files: sizes, edges only in A / only in B, same or not, the faithfulness."""
    ra = json.loads((RESULTS / f"golden_circuits_{a}.json").read_text())["circuits"]
    rb = json.loads((RESULTS / f"golden_circuits_{b}.json").read_text())["circuits"]
    rows = []
    for name in [n for n in ra if n in rb]:
        ea, eb = set(ra[name]["edges"]), set(rb[name]["edges"])
        rows.append(
            {
                "circuit": name,
                "edges_a": len(ea),
                "edges_b": len(eb),
                "only_a": sorted(ea - eb),
                "only_b": sorted(eb - ea),
                "same": ea == eb,
                "f_a": ra[name]["faithfulness"],
                "f_b": rb[name]["faithfulness"],
            }
        )
    print(f"| circuit | edges {a} | edges {b} | only {a} | only {b} | same | f {a} | f {b} | abs diff f |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        fa = "-" if r["f_a"] is None else f"{r['f_a']:.6f}"
        fb = "-" if r["f_b"] is None else f"{r['f_b']:.6f}"
        same = "yes" if r["same"] else "**no**"
        diff = "-" if r["f_a"] is None or r["f_b"] is None else f"{abs(r['f_a'] - r['f_b']):.1e}"
        print(
            f"| {r['circuit']} | {r['edges_a']} | {r['edges_b']} | {len(r['only_a'])} | {len(r['only_b'])} | "
            f"{same} | {fa} | {fb} | {diff} |"
        )
    for r in rows:
        for side, key, rec in (("only " + a, "only_a", ra), ("only " + b, "only_b", rb)):
            for e in r[key]:
                score = rec[r["circuit"]]["scores"].get(e)
                print(f"  {r['circuit']}: {side}: {e} (score {score})")
    missing = sorted(set(ra) ^ set(rb))
    if missing:
        print("in one file only:", ", ".join(missing))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", help="record the circuits of the imported tree as golden_circuits_<label>.json")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the differences between two labels")
    ap.add_argument("--no-real", action="store_true", help="skip the default-model main job")
    ap.add_argument("--only", nargs="*", help="record only the circuits whose name contains one of these")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.label:
        print("wrote", record(args.label, real=not args.no_real, only=args.only))
    else:
        ap.error("give --label or --compare")


if __name__ == "__main__":
    main()
