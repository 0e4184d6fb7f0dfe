"""Benchmark: ``circuitfind report`` on the default model, timed end to end (the issue's goal: IOI with 20
resamples in under 15 minutes on 2 cores, stable core reported).

Runs the command line as a child process per task (imports, model load, discovery, every check, the files), then
reads its report.json and prints one table: the circuit, held-out faithfulness with its 95% interval, the
stability figures (mean pairwise Jaccard of the resampled circuits, the stable core and its held-out
faithfulness), the completeness gap and minimality (mean ablation), the circuit under the three ablations, and the
wall time with each stage's share. Writes the table as JSON (default ``benchmarks/results/bench_report.json``) and
keeps each run's folder (circuit.json, report.json, report.html) under ``benchmarks/results/report_<task>/``.

Run it under the heavy lock on a shared machine: ``OMP_NUM_THREADS=2 flock /tmp/cf-heavy.lock python
benchmarks/bench_report.py``.

Usage:
    python benchmarks/bench_report.py [--tasks ioi,greater-than] [--n-boot 20] [--probes N] [--workers 1]
        [--stability-cut size|same] [--out benchmarks/results/bench_report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

METRICS = {"ioi": "logit_diff", "greater-than": "prob_diff", "induction": "logit_diff"}
GOAL_S = 15 * 60


def _run(task: str, args: argparse.Namespace, folder: Path) -> dict:
    if folder.exists():
        shutil.rmtree(folder)
    cmd = [sys.executable, "-m", "circuitfind", "report", "--task", task, "--metric", METRICS.get(task, "kl"),
           "--n-boot", str(args.n_boot), "--workers", str(args.workers), "--stability-cut", args.stability_cut,
           "--out", str(folder), "--no-progress"]  # fmt: skip
    if args.probes is not None:
        cmd += ["--probes", str(args.probes)]
    if args.model is not None:
        cmd += ["--model", args.model, "--n-prompts", str(args.n_prompts), "--held-out", str(args.n_prompts)]
    t0 = time.perf_counter()
    before = os.getloadavg()[0]
    # stderr (the stage lines "report: discover", ...) goes straight to ours: a run cut short still shows its stages
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); its error is above")
    print(proc.stdout)
    from circuitfind.engine.memory import lifetime_peak_rss  # the child's peak (getrusage of finished children)

    peak_mb = lifetime_peak_rss(children=True) / 2**20
    data = json.loads((folder / "report.json").read_text())
    return _row(task, data, wall, peak_mb, before, os.getloadavg()[0], cmd)


def _row(task: str, d: dict, wall: float, peak_mb: float, load0: float, load1: float, cmd: list[str]) -> dict:
    c, h, s = d["circuit"], d["heldout"], d["stability"]
    comp, mini, abl = d["completeness"], d["minimality"], d["ablations"]
    return {
        "task": task,
        "command": " ".join(["circuitfind", *cmd[3:]]),
        "edges": c["n_edges"],
        "fraction": c["fraction"],
        "f_discovery": c["discovery_faithfulness"],
        "f_heldout": h["faithfulness"],
        "ci_heldout": h["ci"],
        "n_boot": s["n_boot"],
        "jaccard_mean": s["jaccard_mean"],
        "core_edges": len(s["core_edges"]),
        "f_core_heldout": s["core_heldout_faithfulness"],
        "ci_core_heldout": s["core_heldout_ci"],
        "completeness_gap_f": comp["max_gap_f"],
        "completeness_worst": (comp.get("worst") or {}).get("kind"),
        "completeness_probes": comp["probes_used"],
        "minimality_below": len(mini["below_threshold"]),
        "minimality_nodes": len(mini["nodes"]),
        "minimality_probes": mini["probes_used"],
        "f_resample": abl["resample"]["faithfulness"],
        "f_mean": abl["mean"]["faithfulness"],
        "f_zero": abl["zero"]["faithfulness"],
        "jaccard_mean_ablation": abl["mean"]["jaccard"],
        "jaccard_zero_ablation": abl["zero"]["jaccard"],
        "wall_s": wall,
        "stages_s": d["timings_s"],
        "peak_rss_mb": peak_mb,
        "load_before": load0,
        "load_after": load1,
        "goal_met": wall < GOAL_S and bool(s["core_edges"]),
    }


def projected(row: dict, n_boot: int, probes: int) -> dict:
    """The wall time of the same command at ``n_boot`` resamples and ``probes`` probes, from this run's stages: the
    stability stage scaled by resamples, completeness and minimality by probes used (each resample and each probe
    is the same work again; their fixed setup is scaled too, so the projection errs high)."""
    st = row["stages_s"]
    stab = st["stability"] * n_boot / row["n_boot"]
    comp = st["completeness"] * probes / max(1, row["completeness_probes"])
    mini = st["minimality"] * probes / max(1, row["minimality_probes"])
    total = row["wall_s"] - st["stability"] - st["completeness"] - st["minimality"] + stab + comp + mini
    return {"n_boot": n_boot, "probes": probes, "stability_s": stab, "completeness_s": comp, "minimality_s": mini,
            "wall_s": total, "goal_met": total < GOAL_S}  # fmt: skip


def _f(x, ci=None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def table(rows: list[dict]) -> str:
    head = ("| task | edges | held-out f [95% CI] | Jaccard | core edges | core held-out f | completeness gap | "
            "minimality below 0.01 | f resample / mean / zero | Jaccard mean, zero | wall s | goal |")  # fmt: skip
    lines = [head, "|---|---:|---|---:|---:|---|---:|---:|---|---|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['edges']} ({100 * r['fraction']:.2f}%) | {_f(r['f_heldout'], r['ci_heldout'])} | "
            f"{r['jaccard_mean']:.2f} | {r['core_edges']} | {_f(r['f_core_heldout'], r['ci_core_heldout'])} | "
            f"{_f(r['completeness_gap_f'])} ({r['completeness_worst']}) | {r['minimality_below']} of "
            f"{r['minimality_nodes']} | {_f(r['f_resample'])} / {_f(r['f_mean'])} / {_f(r['f_zero'])} | "
            f"{_f(r['jaccard_mean_ablation'])}, {_f(r['jaccard_zero_ablation'])} | {r['wall_s']:.0f} | "
            f"{'met' if r['goal_met'] else 'missed'} |"
        )
    stages = [f"{r['task']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["stages_s"].items()) for r in rows]
    return "\n".join(lines + [""] + stages)


def compare_workers(k: int, n_boot: int = 4) -> list[dict]:
    """Stability's resamples in one process (torch on 2 threads) vs two forked processes (1 thread each): IOI,
    EAP-IG, the top ``k`` edges of each resample, ``n_boot`` resamples; wall seconds and whether both agree."""
    import torch

    import circuitfind as cf

    model, tok = cf.load_model()
    task = cf.tasks.get_task("ioi", tok, n=40, seed=0, n_train=20)
    out, masks = [], []
    for workers in (1, 2):
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        st = cf.stability(model, task, method="eap-ig", n_edges=k, metric="logit_diff", n_boot=n_boot, seed=0,
                          workers=workers, progress=False)  # fmt: skip
        out.append({"workers": workers, "n_boot": n_boot, "wall_s": time.perf_counter() - t0,
                    "s_per_resample": (time.perf_counter() - t0) / n_boot})  # fmt: skip
        masks.append(st.masks)
    out[1]["same_circuits"] = bool(torch.equal(masks[0], masks[1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="ioi")
    p.add_argument("--n-boot", type=int, default=20)
    p.add_argument("--probes", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--stability-cut", default="size", choices=["size", "same"])
    p.add_argument("--project-boot", type=int, default=20, help="project the wall time to this many resamples")
    p.add_argument("--project-probes", type=int, default=None, help="... and this many probes (default: the CLI's)")
    p.add_argument("--compare-workers", action="store_true", help="also time stability in 1 vs 2 processes")
    p.add_argument("--model", default=None, help="another model folder (a smoke run; default: the default model)")
    p.add_argument("--n-prompts", type=int, default=20, help="with --model: discovery and held-out prompts")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_report.json"))
    args = p.parse_args()
    from circuitfind.validation.completeness import DEFAULT_PROBES

    rows = [_run(t, args, args.out.parent / f"report_{t}") for t in args.tasks.split(",")]
    for r in rows:
        r["projected"] = projected(r, args.project_boot, args.project_probes or DEFAULT_PROBES)
    text = table(rows) + "\n" + "\n".join(
        f"{r['task']}: projected to {r['projected']['n_boot']} resamples and {r['projected']['probes']} probes: "
        f"{r['projected']['wall_s']:.0f} s ({'under' if r['projected']['goal_met'] else 'over'} the 15 min goal)"
        for r in rows
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "table": text}, indent=1) + "\n")
    if args.compare_workers and args.model is None and "ioi" in args.tasks.split(","):
        k = json.loads((args.out.parent / "report_ioi" / "report.json").read_text())["circuit"]["k"]
        workers = compare_workers(int(k or rows[0]["edges"]))
        print("stability workers:", json.dumps(workers))
        args.out.write_text(json.dumps({"rows": rows, "table": text, "workers": workers}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
