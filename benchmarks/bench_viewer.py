"""Benchmark: the circuit explorer and the head-role analysis on the default model.

Measures, on one circuit (default: the main job's out/ioi/circuit.json, EAP-IG on IOI):

* ``circuitfind heads``' work on the default model (SmolLM2-135M, 270 heads) with the IOI task: wall and CPU
  seconds of :func:`circuitfind.analysis.head_roles` with torch on 2 threads, after the model is loaded;
* the explorer file: seconds to write it (model run included), its size, and in headless Chromium the time
  from navigation to the drawn graph (median of 3 loads) and to redraw the slider's largest size;
* the top heads per role (for the README).

It also writes the README's screenshots: figures/explorer_ioi.png (the circuit at the run's cut) and
figures/explorer_ioi_head.png (a head's panel with its attention heatmap).

Usage:
    python benchmarks/bench_viewer.py [--circuit out/ioi/circuit.json] [--head a23.h3]
        [--out benchmarks/results/bench_viewer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from circuitfind import Circuit, PatchableModel, load_model
from circuitfind.analysis import head_roles
from circuitfind.tasks import resolve_task


def _driver(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def browse(html: Path, head: str, figures: Path) -> dict:
    """Open times, redraw time, console errors; screenshots into ``figures``."""
    d = _driver(1600, 1250)
    try:
        loads = []
        for _ in range(3):
            d.get(html.resolve().as_uri())
            loads.append(d.execute_script("return window.circuitExplorer.loadMs"))
        t = d.execute_script(
            "const t = performance.now(); window.circuitExplorer.setPrune(false);"
            "window.circuitExplorer.setK(window.circuitExplorer.maxK); return performance.now() - t"
        )
        drawn_max = len(d.execute_script("return window.circuitExplorer.drawnEdgeNames()"))
        d.set_window_size(1600, 1950)  # tall enough for the whole 30-layer graph
        d.get(html.resolve().as_uri())
        figures.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(figures / "explorer_ioi.png"))
        d.set_window_size(1600, 1100)
        d.execute_script("window.circuitExplorer.selectNode(arguments[0])", head)
        d.execute_script("document.getElementById('heatmap-box').scrollIntoView()")
        d.save_screenshot(str(figures / "explorer_ioi_head.png"))
        errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        d.quit()
    return {
        "open_ms_median": statistics.median(loads),
        "open_ms": loads,
        "redraw_max_ms": t,
        "drawn_at_max": drawn_max,
        "console_errors": len(errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--circuit", type=Path, default=Path("out/ioi/circuit.json"))
    ap.add_argument("--head", default="a23.h3", help="the head whose panel the second screenshot shows")
    ap.add_argument("--html", type=Path, default=Path("out/ioi/circuit.html"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_viewer.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    model, tok = load_model(progress=False)
    load_s = time.perf_counter() - t0
    pm = PatchableModel(model)
    circuit = Circuit.load(args.circuit)
    task = resolve_task("ioi", tok, n=int(circuit.config.get("n_prompts", 20)), seed=int(circuit.config.get("seed", 0)))

    wall, cpu = time.perf_counter(), time.process_time()
    roles = head_roles(pm, task, bos=tok.bos_token_id)
    heads_wall, heads_cpu = time.perf_counter() - wall, time.process_time() - cpu

    t = time.perf_counter()
    circuit.to_html(args.html, model=pm, task=task, tokenizer=tok)
    write_s = time.perf_counter() - t
    size_mb = args.html.stat().st_size / 1e6
    browser = browse(args.html, args.head, args.figures)

    top = {c: roles.top(c, 5, absolute=c == "direct_effect") for c in roles.scores}
    result = {
        "circuit": str(args.circuit),
        "edges": circuit.graph.n_edges,
        "kept": circuit.n_edges,
        "load_model_s": load_s,
        "heads_wall_s": heads_wall,
        "heads_cpu_s": heads_cpu,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "html_write_s": write_s,
        "html_mb": size_mb,
        **browser,
        "top_heads": top,
    }
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| model load (cached) | {load_s:.1f} s |")
    print(
        f"| head roles, 270 heads + IOI direct effects (wall / CPU, 2 threads) "
        f"| {heads_wall:.1f} s / {heads_cpu:.1f} s |"
    )
    print(f"| explorer written (model run included) | {write_s:.1f} s |")
    print(f"| explorer file, {circuit.graph.n_edges:,} edges, top 5,000 embedded, 20 prompts | {size_mb:.2f} MB |")
    print(f"| opened in Chromium (navigation to drawn graph, median of 3) | {browser['open_ms_median']:.0f} ms |")
    print(f"| redraw at 5,000 edges | {browser['redraw_max_ms']:.0f} ms |")
    print(f"| console errors | {browser['console_errors']} |")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print()
    print("| role | top heads |")
    print("|---|---|")
    for c, heads in top.items():
        print(f"| {c} | " + ", ".join(f"{h} ({s:.2f})" for h, s in heads) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}, {args.figures / 'explorer_ioi.png'}, {args.figures / 'explorer_ioi_head.png'}")


if __name__ == "__main__":
    main()
