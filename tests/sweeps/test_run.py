"""Sweeps on a local Ray with 2 CPUs: the store holds exactly the rows of running each cell alone, a killed
worker's cell is retried, an interrupted sweep resumes to the same store, distributed exact scores equal the
single-process ones, and malformed specs name their field. Tiny random GPT-2s over SmolLM2's tokenizer, saved to
folders that the workers load by path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuitfind.algorithms import ExactOptions, run_exact
from circuitfind.circuit import Circuit
from circuitfind.cli.main import main
from circuitfind.engine.patchable import PatchableModel
from circuitfind.models import load_model
from circuitfind.problem import prepare_problem
from circuitfind.sweeps import ModelWorker, ResultsStore, exact_scores, parse_spec, run_cell, sweep
from circuitfind.sweeps.command import plot_faithfulness_vs_size
from circuitfind.tasks import get_task

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 64, "initializer_range": 0.5}
TIMING_KEYS = ("wall_time_s", "acdc_time_s", "edges_per_s")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (2 CPUs, no dashboard); workers import this checkout (code and tests)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tok, tmp_path_factory):
    """Two random 2-layer GPT-2s (seeds 0 and 1) saved with the tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        eos = tok.eos_token_id
        config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, **TINY)
        path = tmp_path_factory.mktemp(f"tiny-gpt2-{seed}")
        GPT2LMHeadModel(config).eval().save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(str(path))
    return paths


def _spec(models, out, **over):
    grid = {"model": models, "task": "ioi", "method": "acdc", "threshold": [0.01, 0.1], "seed": [0, 1]}
    return {
        "out": str(out),
        "defaults": {"n_prompts": 4, "held_out": 4, "metric": "logit_diff"},
        "grid": [{**grid, **over}, {"model": models[0], "task": "/nonexistent/circuitfind-missing.json"}],
    }


def _comparable(row_or_out: dict) -> dict:
    """A cell's metrics without its timings (which differ run to run)."""
    m = json.loads(json.dumps(row_or_out["metrics"]))  # through JSON, as the store keeps them
    m["discover_stats"] = {k: v for k, v in m["discover_stats"].items() if k not in TIMING_KEYS}
    return m


@pytest.fixture(scope="module")
def full_sweep(ray_session, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-full")
    spec = parse_spec(_spec(models, out))
    return spec, sweep(spec, progress=False)


# --- the sweep -----------------------------------------------------------------------------------------------
def test_sweep_rows_equal_running_each_cell_alone(full_sweep, models):
    spec, res = full_sweep
    assert len(spec.cells) == 9 and (res.done, res.failed, res.skipped, res.retried) == (8, 1, 0, 0)
    rows = res.rows()
    assert [r["cell_id"] for r in rows] == [c.id for c in spec.cells]
    alone = {m: ModelWorker(m) for m in models}
    for cell, row in zip(spec.cells[:8], rows[:8], strict=True):
        assert row["status"] == "done" and row["error"] is None
        assert row["spec"] == cell.as_dict() and row["attempts"] == 1
        out = alone[cell.model].run(cell)
        assert out["status"] == "done"
        assert _comparable(row) == _comparable(out)  # every number, bit for bit (threads: 1 on both sides)
        assert row["faithfulness"] == out["metrics"]["faithfulness"] and row["cpr"] == out["metrics"]["cpr"]
        saved, mine = Circuit.load(row["circuit_path"]), Circuit.from_dict(out["circuit"])
        assert torch.equal(saved.mask, mine.mask)
        assert torch.equal(saved.scores.nan_to_num(7.0), mine.scores.nan_to_num(7.0))
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 0 and row["discover_s"] > 0
    # the cells differ: thresholds and seeds change the circuits
    assert len({r["n_edges"] for r in rows[:8]}) > 1


def test_a_cell_failing_on_its_own_is_recorded_and_the_sweep_goes_on(full_sweep):
    spec, res = full_sweep
    failed = res.rows()[8]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"].startswith("TaskError") and "circuitfind-missing.json" in failed["error"]
    assert "Traceback" in failed["traceback"] and failed["circuit_path"] is None


def test_rerun_skips_finished_cells(full_sweep, monkeypatch):
    spec, res = full_sweep
    before = res.rows()
    import circuitfind.sweeps.run as run_module

    monkeypatch.setattr(run_module, "connect", None)  # nothing left to run: Ray is not even connected
    again = sweep(spec, progress=False)
    assert (again.skipped, again.done, again.failed) == (9, 0, 0)
    assert again.rows() == before  # untouched, finished_at included


def _die_once(cell, pm, tokenizer):
    """Kills its worker process the first time it runs the seed-1 cell at threshold 0.1 (a marker remembers)."""
    marker = Path(cell.model).parent / f"died-{cell.id}"
    if cell.seed == 1 and cell.threshold == 0.1 and not marker.exists():
        marker.write_text("dying\n")
        os._exit(1)
    out = run_cell(cell, pm, tokenizer)
    import circuitfind

    out["metrics"]["code"] = circuitfind.__file__  # which circuitfind the worker imported
    return out


def test_a_killed_worker_has_its_cell_retried(ray_session, models, full_sweep, tmp_path):
    spec = parse_spec(_spec(models[:1], tmp_path))
    res = sweep(spec, cell_fn=_die_once, workers=1, progress=False)
    assert (res.done, res.failed, res.retried) == (4, 1, 1)
    rows = res.rows()
    assert len(rows) == len(spec.cells) == 5  # one row per cell
    with ResultsStore(spec.store_path) as store:
        assert len(store.rows()) == 5
    killed = [r for r in rows if r["attempts"] == 2]
    assert len(killed) == 1 and killed[0]["spec"]["seed"] == 1 and killed[0]["spec"]["threshold"] == 0.1
    assert killed[0]["status"] == "done"
    reference = {r["cell_id"]: r for r in full_sweep[1].rows()}
    for r in rows[:4]:
        assert r["metrics"].pop("code") == str(ROOT / "circuitfind" / "__init__.py")  # this checkout's code
        assert _comparable(r) == _comparable(reference[r["cell_id"]])


def test_an_interrupted_sweep_resumes_to_the_same_store(ray_session, models, full_sweep, tmp_path):
    spec = parse_spec(_spec(models[:1], tmp_path))
    seen = []

    def interrupt_after_two(row):
        seen.append(row["cell_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    with pytest.raises(KeyboardInterrupt):
        sweep(spec, on_row=interrupt_after_two, workers=1, progress=False)
    with ResultsStore(spec.store_path) as store:
        kept = {r["cell_id"]: r for r in store.rows()}
    assert set(kept) == set(seen)  # every row handed over before Ctrl-C is in the store, whole
    res = sweep(spec, workers=1, progress=False)
    assert res.skipped == 2 and res.done + res.failed + res.skipped == 5
    rows = {r["cell_id"]: r for r in res.rows()}
    for cid, r in kept.items():
        assert rows[cid] == r  # skipped, not rerun
    reference = {r["cell_id"]: r for r in full_sweep[1].rows()}
    assert len(rows) == 5 and set(rows) <= set(reference)
    for cid, r in rows.items():
        assert r["status"] == reference[cid]["status"]
        if r["status"] == "done":
            assert _comparable(r) == _comparable(reference[cid])


# --- exact scoring on workers ----------------------------------------------------------------------------------
def test_distributed_exact_scores_equal_the_single_process_run(ray_session, models, tok):
    task = get_task("ioi", tok, n=4, seed=0)
    model, _ = load_model(models[1], progress=False)
    problem, _ = prepare_problem(PatchableModel(model), task, metric="logit_diff")
    g = problem.pm.graph
    candidates = g.edge_mask & (torch.rand(g.edge_mask.shape, generator=torch.Generator().manual_seed(0)) < 0.7)
    single = run_exact(problem, ExactOptions(batch_size=2, candidates=candidates))
    spread = exact_scores(
        models[1], task, metric="logit_diff", candidates=candidates, batch_size=2, workers=2, progress=False
    )
    assert spread.stats["shards"] > 2 and spread.stats["edges_scored"] == int(candidates.sum())
    assert torch.equal(spread.scores.isnan(), single.scores.isnan())
    assert torch.equal(spread.scores.nan_to_num(), single.scores.nan_to_num())  # bit for bit
    assert spread.stats["loss_full"] == single.stats["loss_full"]


# --- table, plot, progress -------------------------------------------------------------------------------------
def test_table_and_plot(full_sweep, tmp_path, capsys):
    spec, res = full_sweep
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"out": str(spec.out), "grid": [c.as_dict() for c in spec.cells]}))
    assert main(["sweep", str(path), "--table", "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    for row in res.rows():
        assert row["cell_id"][:8] in out
    assert "failed" in out and "TaskError" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_faithfulness_vs_size([], tmp_path / "empty.png") is not None


def test_import_circuitfind_does_not_import_ray():
    code = "import sys, circuitfind; circuitfind.sweep; sys.exit('ray' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        == 0
    )


def test_the_eta_counts_the_work_left_per_method_less_what_is_running():
    from circuitfind.sweeps.run import _CellBar
    from circuitfind.sweeps.spec import Cell

    acdc = [Cell(model="m", task="ioi", method="acdc", seed=i) for i in range(3)]
    eap = [Cell(model="m", task="ioi", method="eap", seed=i) for i in range(2)]
    bar = _CellBar(5, slots=2, enabled=False)
    bar.track(acdc + eap)
    assert math.isnan(bar.eta_s([]))  # until a cell has finished
    bar.finished(acdc[0], {"status": "done", "wall_s": 10.0})
    bar.finished(eap[0], {"status": "done", "wall_s": 2.0})
    # left: 2 ACDC cells at 10 s and 1 EAP cell at 2 s; one ACDC cell has run 4 s; 2 workers
    assert bar.eta_s([(acdc[1], 4.0)]) == (2 * 10 + 2 - 4) / 2
    assert bar.eta_s([(acdc[1], 30.0)]) == (2 * 10 + 2 - 10) / 2  # a slow cell is not counted below zero


# --- two sweeps on one store (issue 19 item 2) -----------------------------------------------------------------
def _small_spec(model: str, out: Path) -> dict:
    return {"out": str(out), "grid": {"model": model, "task": "ioi", "method": "eap", "seed": [0, 1, 2, 3]}}


SWEEP_DRIVER = """
import json, sys, ray
from circuitfind.sweeps import sweep
from tests.sweeps.sweep_cells import RUN_LOG, count_run
root, address, spec, log = sys.argv[1:]
ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": root, RUN_LOG: log}})
res = sweep(json.loads(spec), cell_fn=count_run, workers=1, progress=False, wait=True)
print(json.dumps({"skipped": res.skipped, "done": res.done, "failed": res.failed}))
"""


def test_two_sweeps_started_together_on_one_store_run_each_cell_once(ray_session, models, tmp_path):
    out, log = tmp_path / "sweep", tmp_path / "runs.log"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on host gone, started at 2026-01-01T00:00:00+00:00\n")  # a dead holder's
    spec = json.dumps(_small_spec(models[0], out))
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", SWEEP_DRIVER, str(ROOT), address, spec, str(log)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr.decode()[-3000:]
    runs = [line.split()[0] for line in log.read_text().splitlines()]
    cells = [c.id for c in parse_spec(json.loads(spec)).cells]
    assert sorted(runs) == sorted(cells)  # every cell exactly once (old main: each twice, the rows overwritten)
    reports = sorted((json.loads(stdout.decode().splitlines()[-1]) for stdout, _ in results), key=lambda r: r["done"])
    assert reports == [{"skipped": 4, "done": 0, "failed": 0}, {"skipped": 0, "done": 4, "failed": 0}]
    with ResultsStore(out / "results.sqlite") as store:
        assert sorted(r["cell_id"] for r in store.rows()) == sorted(cells)


def test_a_sweep_on_a_held_store_says_who_holds_it_and_stops(ray_session, models, tmp_path, capsys):
    from circuitfind.errors import OutputError
    from circuitfind.fileio import lock_folder
    from tests.sweeps.sweep_cells import RUN_LOG, count_run

    out = tmp_path / "sweep"
    out.mkdir()
    spec = _small_spec(models[0], out)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    os.environ[RUN_LOG] = str(tmp_path / "runs.log")
    try:
        with lock_folder(out):
            with pytest.raises(OutputError, match=rf"in use by another run \(pid {os.getpid()} on host .*--wait"):
                sweep(spec, cell_fn=count_run, workers=1, progress=False)
            assert main(["sweep", str(tmp_path / "spec.json"), "--no-progress"]) == 2
    finally:
        del os.environ[RUN_LOG]
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"(pid {os.getpid()} on host" in err and "--wait" in err
    assert not (tmp_path / "runs.log").exists() and not (out / "results.sqlite").exists()


# --- the problem cache of distributed exact scoring keys on the task fingerprint (issue 19 item 5) -------------
def test_a_workers_problem_cache_is_not_served_for_other_wrong_answers(models, tok):
    import dataclasses

    from circuitfind.sweeps.exact import _recipe_key

    task = get_task("ioi", tok, n=4, seed=0)
    the = tok(" the", add_special_tokens=False)["input_ids"][0]  # not a name: never a correct answer here
    other = dataclasses.replace(task, wrong_answers=torch.full_like(task.wrong_answers, the))
    recipe = {"task": task, "metric": "logit_diff", "ablation": "resample", "batch_size": 1}
    key, key_other = _recipe_key(task, "logit_diff", "resample"), _recipe_key(other, "logit_diff", "resample")
    assert key != key_other  # old main: equal (wrong answers left out)
    worker = ModelWorker(models[0])
    plan = worker.exact_plan(1, None)[:4]
    first, _ = worker.exact_shard(key, recipe, plan)
    again, _ = worker.exact_shard(key_other, {**recipe, "task": other}, plan)
    fresh, _ = ModelWorker(models[0]).exact_shard(key_other, {**recipe, "task": other}, plan)
    assert all(torch.equal(a, f) for a, f in zip(again, fresh, strict=True))  # computed for these wrong answers
    assert not all(torch.equal(a, f) for a, f in zip(again, first, strict=True))
