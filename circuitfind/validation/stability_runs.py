"""Where :func:`circuitfind.validation.stability` runs its resamples: here, in forked processes, or on Ray.

Every path runs the same thing per resample (:func:`discover_resample`): the train split's prompts picked by the
resample's indices, :func:`circuitfind.discover` on them, the circuit's kept edges back as a bool mask.

* :func:`run_local`: in this process (``workers=1``) or in ``workers`` forked processes, each with its share of
  torch's threads (a fork shares the model's weights with this process until they are written, which they are
  not; each process holds its own activations).
* :func:`run_on_ray`: one sweep cell per resample (:func:`stability_cell`), through :func:`circuitfind.sweep`,
  so a cluster's workers load the model once and take resample after resample.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import Tensor

from circuitfind.discovery import discover
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import CircuitfindError, ConfigError
from circuitfind.selection.bootstrap import resample_indices
from circuitfind.sweeps import sweep
from circuitfind.sweeps.cell import build_task
from circuitfind.sweeps.spec import Cell
from circuitfind.tasks import resolve_task

__all__ = ["build_named_task", "discover_resample", "run_local", "run_on_ray", "stability_cell"]


def build_named_task(task: Any, tokenizer: Any, n_prompts: int, held_out: int, task_seed: int) -> Any:
    """A :class:`Task` as given, or a task name / file built as a sweep cell builds it (the same prompts here
    and on Ray): ``n_prompts`` for discovery, then ``held_out`` more."""
    if not isinstance(task, str):
        return resolve_task(task, tokenizer)
    return build_task(Cell(model="", task=task, n_prompts=n_prompts, held_out=held_out, seed=task_seed), tokenizer)


def discover_resample(pm: Any, train: Any, rows: Tensor, method: str, options: dict[str, Any]) -> Tensor:
    """The ``(S, R)`` bool circuit :func:`circuitfind.discover` finds on the prompts ``rows`` of ``train``."""
    return discover(pm, train.subset(rows), method=method, progress=False, **options).mask.cpu()


def run_local(pm, train, draws: Tensor, method: str, options: dict[str, Any], workers: int, progress: bool) -> Tensor:
    """``(n_boot, S, R)`` bool: the circuit of each resample (rows of ``draws``), here or in forked processes."""
    bar = _bar(len(draws), progress)
    try:
        if workers == 1 or len(draws) == 1:
            out = []
            for rows in draws:
                out.append(discover_resample(pm, train, rows, method, options))
                bar.update()
            return torch.stack(out)
        return _run_forked(pm, train, draws, method, options, min(workers, len(draws)), bar)
    finally:
        bar.close()


def _run_forked(pm, train, draws: Tensor, method: str, options: dict[str, Any], workers: int, bar) -> Tensor:
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        raise ConfigError("workers > 1 needs the 'fork' start method (Linux, macOS); pass workers=1 here")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    threads = max(1, torch.get_num_threads() // workers)
    shares = [list(range(w, len(draws), workers)) for w in range(workers)]
    procs = [ctx.Process(target=_worker, args=(pm, train, draws, s, method, options, threads, queue)) for s in shares]
    for p in procs:
        p.start()
    shape = tuple(pm.graph.edge_mask.shape)
    masks: dict[int, Tensor] = {}
    try:
        while len(masks) < len(draws):
            b, flat, error = _next_result(queue, procs)
            if error is not None:
                raise CircuitfindError(f"resample {b} failed in its worker process: {error}")
            mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
            mask[torch.tensor(flat, dtype=torch.long)] = True
            masks[b] = mask.view(shape)
            bar.update()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
            else:
                p.join(timeout=1.0)
    return torch.stack([masks[b] for b in range(len(draws))])


def _next_result(queue, procs) -> tuple[int, Any, str | None]:
    """The next ``(resample, edges, error)`` from the workers; a worker that died without reporting is an error."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=5.0)
        except queues.Empty:
            dead = [p.exitcode for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise CircuitfindError(
                    f"a stability worker process died (exit code {dead[0]}; -9 is usually out of memory); rerun "
                    "with fewer workers (workers=1 runs the resamples in this process)"
                ) from None


def _worker(pm, train, draws, share, method, options, threads, queue) -> None:  # in the forked process
    torch.set_num_threads(threads)
    for b in share:
        try:
            mask = discover_resample(pm, train, draws[b], method, options)
            queue.put((b, mask.flatten().nonzero().flatten().tolist(), None))
        except Exception as e:  # reported to the parent, which raises it
            queue.put((b, None, f"{type(e).__name__}: {e}"))
            return


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="stability: resamples", disable=not enabled, dynamic_ncols=True)


# --- Ray ------------------------------------------------------------------------------------------------------
def stability_cell(cell: Any, pm: Any, tokenizer: Any) -> dict[str, Any]:
    """A sweep cell function: the circuit of resample ``cell.options["resample"]`` (drawn from
    ``cell.options["seed"]`` over ``cell.options["n_boot"]`` resamples) of the cell's discovery prompts."""
    opts = cell.options
    train = build_task(cell, tokenizer).train()
    rows = resample_indices(len(train), opts["n_boot"], opts["seed"])[opts["resample"]]
    mask = discover_resample(pm, train, rows, cell.method, opts["discover"])
    edges = mask.flatten().nonzero().flatten().tolist()
    return {"metrics": {"n_edges": len(edges), "edges": edges}}


def run_on_ray(spec: dict[str, Any], method, n_boot, seed, options, address, out, progress) -> tuple[Any, Any, Tensor]:
    """The resamples as sweep cells on the cluster at ``address``; returns the local model, task and masks."""
    model, task = spec["model"], spec["task"]
    if not isinstance(model, str) or not isinstance(task, str):
        raise ConfigError(
            "stability on a Ray cluster (address=...) needs model and task as names or paths the workers can load "
            f"(e.g. 'smollm2', 'ioi'); got {type(model).__name__} and {type(task).__name__}"
        )
    base = {"model": model, "task": task, "method": method, "seed": spec["task_seed"], "n_prompts": spec["n_prompts"]}
    base |= {"held_out": spec["held_out"], "cpr_cmd": False}
    opts = {"n_boot": n_boot, "seed": seed, "discover": options}
    grid = [{**base, "options": {**opts, "resample": b}} for b in range(n_boot)]
    with tempfile.TemporaryDirectory(prefix="cf-stability-") as tmp:
        folder = os.fspath(out) if out is not None else tmp
        res = sweep({"out": folder, "grid": grid}, address=address, progress=progress, cell_fn=stability_cell)
        rows = {r["spec"]["options"]["resample"]: r for r in res.rows()}
    pm, tokenizer = resolve_model(model)
    full_task = build_named_task(task, tokenizer, spec["n_prompts"], spec["held_out"], spec["task_seed"])
    return pm, full_task, _masks_of(rows, n_boot, (pm.graph.n_senders, pm.graph.n_receivers))


def _masks_of(rows: dict[int, dict[str, Any]], n_boot: int, shape: tuple[int, int]) -> Tensor:
    failed = [b for b in range(n_boot) if b not in rows or rows[b].get("status") != "done"]
    if failed:
        first = rows.get(failed[0], {}).get("error", "no row came back")
        raise CircuitfindError(
            f"{len(failed)} of {n_boot} resamples failed on the cluster (resample {failed[0]}: {first})"
        )
    out = torch.zeros(n_boot, shape[0] * shape[1], dtype=torch.bool)
    for b in range(n_boot):
        out[b, torch.tensor(rows[b]["metrics"]["edges"], dtype=torch.long)] = True
    return out.view(n_boot, *shape)
