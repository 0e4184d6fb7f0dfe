"""One cell of a sweep, in one process: discover on the cell's prompts, evaluate on its held-out prompts.

:func:`run_cell` is what a sweep worker calls for every cell (a sweep may pass its own function of the same
signature). :class:`ModelWorker` is the worker itself: it loads its model once and runs cell after cell on it
(the sweep makes it a Ray actor; it is a plain class, so it runs and tests without Ray too).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from circuitfind.algorithms.acdc import FastEvaluator
from circuitfind.algorithms.exact import exact_plan, score_batches
from circuitfind.discovery import discover
from circuitfind.engine.memory import peak_memory, reset_peak_memory
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import TaskError
from circuitfind.evaluate.circuits import cpr_cmd_of_scores, faithfulness
from circuitfind.models import load_model
from circuitfind.problem import prepare_problem
from circuitfind.sweeps.spec import Cell
from circuitfind.sweeps.store import STATUS_DONE, STATUS_FAILED
from circuitfind.tasks import is_task_file, split_task

__all__ = ["CellFn", "ModelWorker", "build_task", "run_cell"]

CellFn = Callable[[Cell, Any, Any], dict[str, Any]]
"""``(cell, patchable_model, tokenizer) -> {"metrics": {...}, "circuit": circuit.to_dict(), "discover_s",
"evaluate_s"}``."""


def build_task(cell: Cell, tokenizer: Any) -> Any:
    """The cell's task: ``n_prompts`` for discovery (its train split), then ``held_out`` more.

    A built-in task generates ``n_prompts + held_out`` prompts from ``seed``; a task file gives its first ones.

    Example:
        >>> task = build_task(Cell(model="smollm2", task="ioi", n_prompts=16, held_out=16), tok)  # doctest: +SKIP
        >>> len(task.train()), len(task.held_out())  # doctest: +SKIP
        (16, 16)
    """
    if tokenizer is None and not is_task_file(cell.task):
        raise TaskError(
            f"the built-in task {cell.task!r} must be tokenised but the model {cell.model!r} has no tokenizer; "
            "save one with the model (tokenizer.save_pretrained) or use a task file of token ids"
        )
    return split_task(cell.task, tokenizer, n_prompts=cell.n_prompts, held_out=cell.held_out, seed=cell.seed)


def run_cell(cell: Cell, pm: Any, tokenizer: Any) -> dict[str, Any]:
    """Discover the cell's circuit and measure it on the held-out prompts.

    Measured: faithfulness and KL(full || circuit) of the circuit; with ``cell.cpr_cmd``, MIB's CPR and CMD of
    the cell's edge scores (ACDC: its per-edge effects, untested edges last), all on the held-out prompts with
    the cell's ablation and ``eval_metric`` (default: the task's own metric).

    Example:
        >>> out = run_cell(Cell(model="smollm2", task="ioi", method="eap-ig"), pm, tok)  # doctest: +SKIP
        >>> out["metrics"]["faithfulness"]  # doctest: +SKIP
    """
    task = build_task(cell, tokenizer)
    torch.manual_seed(cell.seed)
    t0 = time.perf_counter()
    circuit = discover(
        pm,
        task,
        cell.method,
        metric=cell.metric,
        ablation=cell.ablation,
        tokenizer=tokenizer,
        progress=False,
        **cell.discover_options(),
    )
    circuit = circuit.replace(model=cell.model).with_config(seed=cell.seed)
    t1 = time.perf_counter()
    held = faithfulness(pm, circuit, task, metric=cell.eval_metric, ablation=cell.ablation)
    metrics: dict[str, Any] = {
        "faithfulness": held["faithfulness"],
        "faithfulness_ci": held["ci"],
        "kl": held["kl_full_circuit"],
        "n_edges": circuit.n_edges,
        "fraction": circuit.fraction,
        "eval_metric": held["metric"],
        "metric_full": held["metric_full"],
        "metric_empty": held["metric_empty"],
        "metric_circuit": held["metric_circuit"],
        "n_held_out": held["n_prompts"],
        "recovered_train": circuit.recovered,
        "discover_stats": {k: v for k, v in circuit.stats.items() if isinstance(v, (int, float, bool, str))},
    }
    if cell.cpr_cmd and bool(torch.isfinite(circuit.scores[pm.graph.edge_mask]).any()):
        curve = cpr_cmd_of_scores(pm, circuit.scores, task, metric=cell.eval_metric, ablation=cell.ablation)
        metrics.update(
            cpr=curve["cpr"],
            cmd=curve["cmd"],
            cpr_ci=curve["cpr_ci"],
            cmd_ci=curve["cmd_ci"],
            curve={k: curve[k] for k in ("fractions", "faithfulness_signed", "faithfulness_abs", "n_edges")},
        )
    return {
        "metrics": metrics,
        "circuit": circuit.to_dict(),
        "discover_s": t1 - t0,
        "evaluate_s": time.perf_counter() - t1,
    }


class ModelWorker:
    """Runs cells on one model, loaded on first use and kept (one per Ray actor).

    A model that fails to load fails every cell given to this worker with the same error, without retrying.

    Example:
        >>> w = ModelWorker("smollm2", "cpu", threads=1)  # doctest: +SKIP
        >>> row = w.run(cell)  # doctest: +SKIP
    """

    def __init__(self, model: Any, device: str = "cpu", threads: int | None = None) -> None:
        self.model_source = model  # a name or folder for load_model, or a model object
        self.device = device
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.pm: PatchableModel | None = None
        self.tokenizer: Any = None
        self.load_error: BaseException | None = None
        self.load_s = 0.0
        self.problems: dict[str, Any] = {}  # exact scoring: key -> (problem, evaluator)

    def ensure_model(self) -> float:
        """Load the model if not yet done; returns the seconds it took now (0 when it was loaded already)."""
        if self.pm is not None:
            return 0.0
        if self.load_error is not None:
            raise self.load_error
        t0 = time.perf_counter()
        try:
            model, self.tokenizer = load_model(self.model_source, device=self.device, progress=False)
            self.pm = PatchableModel(model)
        except BaseException as e:
            self.load_error = e
            raise
        return time.perf_counter() - t0

    def loaded(self) -> PatchableModel:
        """The model, loaded on first use (:meth:`ensure_model`)."""
        self.ensure_model()
        assert self.pm is not None  # ensure_model loads it or raises
        return self.pm

    def run(self, cell: Cell, cell_fn: CellFn | None = None, attempt: int = 1) -> dict[str, Any]:
        """Run one cell; returns its store row plus ``circuit`` (the circuit's JSON dict) when it is done.

        A cell that raises is returned as ``status="failed"`` with its error; the worker goes on.
        """
        _reset_peak_memory()
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "cell_id": cell.id,
            "attempts": attempt,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        try:
            row["load_s"] = self.ensure_model()
            out = (cell_fn or run_cell)(cell, self.loaded(), self.tokenizer)
            row.update(
                status=STATUS_DONE,
                metrics=out["metrics"],
                discover_s=out.get("discover_s"),
                evaluate_s=out.get("evaluate_s"),
                circuit=out.get("circuit"),
            )
        except Exception as e:  # the cell's own failure: recorded, the sweep goes on
            row.update(status=STATUS_FAILED, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        row["wall_s"] = time.perf_counter() - t0
        row["peak_rss_mb"], row["peak_gpu_mb"] = _peak_memory_mb()
        return row

    # --- exact scoring shards (circuitfind.sweeps.exact) ---------------------------------------------------
    def exact_plan(self, batch_size: int, candidates: Any) -> list[Any]:
        return exact_plan(self.loaded().graph, candidates, batch_size)

    def exact_shard(self, key: str, recipe: dict[str, Any], batches: list[Any]) -> tuple[list[Any], float]:
        """Score ``batches`` (one forward each) of the problem ``recipe`` builds; returns the score changes per
        batch and the full model's loss. The problem and its evaluator are built once per ``key``."""
        pm = self.loaded()
        if key not in self.problems:
            problem, _ = prepare_problem(pm, recipe["task"], metric=recipe["metric"], ablation=recipe["ablation"])
            # the same prompt chunks as the single-process run: sized by the masks a pass stacks
            ev = FastEvaluator(problem, masks=recipe.get("batch_size", 1))
            self.problems = {key: (problem, ev)}  # one problem at a time: bounded memory
        problem, ev = self.problems[key]
        return score_batches(problem, batches, ev), ev.loss_full

    def where(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


def _reset_peak_memory() -> None:
    """Reset the CPU peak (and the CUDA peak when there is a GPU), so a cell measures its own."""
    reset_peak_memory()
    if torch.cuda.is_available():
        reset_peak_memory("cuda")


def _peak_memory_mb() -> tuple[float, float | None]:
    """The cell's peak resident set and, with a GPU, its peak CUDA allocation, in MiB."""
    gpu = peak_memory("cuda").mib if torch.cuda.is_available() else None
    return peak_memory().mib, gpu
