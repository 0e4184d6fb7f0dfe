"""``sweep()``: run a spec's cells on Ray workers into the results store, skipping cells already done."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitfind.errors import ConfigError, check_optional_int
from circuitfind.fileio import atomic_write, check_writable, lock_folder
from circuitfind.sweeps.cell import CellFn, ModelWorker
from circuitfind.sweeps.ray_pool import ActorPool, Done, connect
from circuitfind.sweeps.spec import Cell, SweepSpec, load_spec, parse_spec
from circuitfind.sweeps.store import STATUS_DONE, STATUS_FAILED, ResultsStore

__all__ = ["SweepResult", "store_row", "sweep"]


@dataclass(frozen=True)
class SweepResult:
    """What a :func:`sweep` call did.

    Attributes:
        store: the results store's path (``out/results.sqlite``).
        cells: the spec's cell ids, in spec order.
        skipped: cells finished (done, or failed unless ``retry_failed``) before this call.
        done, failed: cells this call finished, and those that failed (their error is in the store).
        retried: calls retried after their worker died.
    """

    store: Path
    cells: tuple[str, ...]
    skipped: int
    done: int
    failed: int
    retried: int

    def rows(self) -> list[dict[str, Any]]:
        """The store's rows of this spec's cells, in spec order."""
        with ResultsStore(self.store) as store:
            return store.rows(list(self.cells))


def sweep(
    spec: SweepSpec | dict[str, Any] | str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    cell_fn: CellFn | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    wait: bool = False,
) -> SweepResult:
    """Run every cell of ``spec`` not yet done, on Ray, into ``out/results.sqlite`` and ``out/circuits/``.

    Each cell discovers a circuit, evaluates it on held-out prompts (faithfulness, KL; CPR/CMD of its scores)
    and saves it as ``circuits/<cell id>.json`` (see :func:`circuitfind.sweeps.cell.run_cell`). Workers are Ray
    actors that load their model once and run cell after cell; each reserves the cell's ``num_cpus`` /
    ``num_gpus``. A cell whose worker dies is retried (``max_retries`` times) on a new worker; a cell that fails
    by itself (a missing task file, a model that cannot load) is recorded ``failed`` with its error and the sweep
    goes on. Every finished cell is committed to the store when it arrives, so Ctrl-C loses none, and a rerun
    skips the cells finished, done or failed (``retry_failed`` runs the failed ones again); with nothing left to
    run it does not start Ray. The sweep holds the lock of its ``out`` folder (the one ``discover --out`` holds,
    :func:`circuitfind.fileio.lock_folder`) from reading the store to its last row, so two sweeps on one store
    never run a cell twice: the second says who holds it and stops, or with ``wait`` waits for it and then runs
    only what the first did not finish.

    Args:
        spec: a :class:`SweepSpec`, a spec dict, or a spec file (see :mod:`circuitfind.sweeps.spec`).
        address: a Ray cluster to join (default ``$RAY_ADDRESS``; none: Ray starts in this process).
        workers: cells at once (default: the spec's ``workers``, else as many as the cluster's CPUs and GPUs
            allow).
        progress: one progress bar over the cells, with an ETA from the cells finished so far.
        retry_failed: run the cells recorded as failed again (after fixing what failed them).
        cell_fn: what a worker runs per cell (default :func:`~circuitfind.sweeps.cell.run_cell`), same
            signature; a module-level function (workers import it).
        on_row: called with each row once it is stored (a dict of the store's columns).
        wait: when another sweep (or run) holds ``out``, wait for it instead of raising :class:`OutputError`.

    Returns:
        a :class:`SweepResult`; ``.rows()`` reads the rows back.

    Example:
        >>> res = circuitfind.sweep("examples/sweep.json")  # doctest: +SKIP
        >>> [(r["method"], r["faithfulness"]) for r in res.rows()]  # doctest: +SKIP
    """
    if not isinstance(spec, SweepSpec):
        spec = parse_spec(spec) if isinstance(spec, dict) else load_spec(spec)
    check_optional_int(workers, "workers", what="cells at once")
    check_writable(spec.circuit_dir)
    ids = tuple(c.id for c in spec.cells)
    with _locked(spec.out, wait, progress), ResultsStore(spec.store_path) as store:
        finished = store.finished_ids(include_failed=not retry_failed)
        todo = [c for c in spec.cells if c.id not in finished]
        counts = {"done": 0, "failed": 0, "retried": 0}
        if todo:
            _run(spec, todo, store, workers or spec.workers, address, progress, cell_fn, on_row, counts)
    return SweepResult(spec.store_path, ids, len(spec.cells) - len(todo), counts["done"], counts["failed"],
                       counts["retried"])  # fmt: skip


def _locked(out: Path, wait: bool, progress: bool):
    """The lock on ``out`` for the whole sweep; while waiting for it, one line on stderr (with progress on)."""

    def waiting(holder: str) -> None:
        if progress:
            print(f"sweep: waiting for the run that holds {str(out)!r} ({holder})", file=sys.stderr, flush=True)

    fix = "rerun with --wait (sweep(..., wait=True)) to wait for it, then run only the cells it left; or choose"
    fix += " another out"
    return lock_folder(out, wait=wait, on_wait=waiting, fix=fix)


def _run(spec, todo, store, workers, address, progress, cell_fn, on_row, counts) -> None:
    with connect(address) as ray:
        slots = workers or _slots(ray, todo)
        _check_feasible(ray, todo)

        def make(key: tuple[str, float, float]) -> Any:
            model, cpus, gpus = key
            actor = ray.remote(ModelWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
            return actor.remote(model, "cuda" if gpus > 0 else "cpu", threads=max(1, int(cpus)))

        def call(actor: Any, job: tuple[Cell, int]) -> Any:
            cell, attempt = job
            return actor.run.remote(cell, cell_fn, attempt)

        pool = ActorPool(ray, slots, make, call)
        for cell in todo:
            pool.submit(cell.worker_key, (cell, 1))
        bar = _CellBar(len(todo), slots, progress)
        bar.track(todo)
        try:
            while pool.pending:
                for d in pool.wait(timeout=1.0):
                    row = _row_of(d, spec, pool, counts)
                    if row is None:
                        continue
                    row = store_row(store, spec, row)
                    counts[row["status"]] += 1
                    bar.finished(d.job[0], row)
                    if on_row is not None:
                        on_row(row)
                bar.tick([(job[0], elapsed) for job, elapsed in pool.running_jobs()])
        finally:
            bar.close()
            pool.close()


def _row_of(d: Done, spec: SweepSpec, pool: ActorPool, counts: dict[str, int]) -> dict[str, Any] | None:
    """The row of a finished call; None when the call is retried (its worker died and retries are left)."""
    cell, attempt = d.job
    if d.error is None:
        return d.result
    if d.died and attempt <= spec.max_retries:
        counts["retried"] += 1
        pool.submit(cell.worker_key, (cell, attempt + 1), first=True)
        return None
    what = f"the worker died {attempt} time(s)" if d.died else "the worker call failed"
    return {
        "cell_id": cell.id,
        "status": STATUS_FAILED,
        "error": f"{what}: {type(d.error).__name__}: {d.error}",
        "attempts": attempt,
    }


def store_row(store: ResultsStore, spec: SweepSpec, row: dict[str, Any]) -> dict[str, Any]:
    """Write the cell's circuit (atomically) and then its row (one transaction), so a row never names a missing
    circuit file; returns the row as stored.

    Example:
        >>> row = store_row(store, spec, worker.run(spec.cells[0]))  # doctest: +SKIP
    """
    row = dict(row)
    cell = next(c for c in spec.cells if c.id == row["cell_id"])
    circuit = row.pop("circuit", None)
    if circuit is not None:
        path = spec.circuit_dir / f"{cell.id}.json"
        atomic_write(path, json.dumps(circuit, allow_nan=False))
        row["circuit_path"] = str(path)
    metrics = row.get("metrics") or {}
    row.update(
        model=cell.model,
        task=cell.task,
        method=cell.method,
        cut=cell.cut,
        seed=cell.seed,
        spec=cell.as_dict(),
        **{k: metrics.get(k) for k in ("faithfulness", "kl", "cpr", "cmd", "n_edges", "fraction")},
        **{
            f"{k}_{end}": (metrics.get(f"{k}_ci") or {}).get(end)
            for k in ("faithfulness", "cpr", "cmd")
            for end in ("lo", "hi")
        },
    )
    store.put(row)
    return row


def _slots(ray: Any, cells: list[Cell]) -> int:
    """Cells at once: as many workers as the cluster's CPUs (and GPUs) hold."""
    res = ray.cluster_resources()
    cpus = max(c.num_cpus for c in cells)
    gpus = max(c.num_gpus for c in cells)
    n = int(res.get("CPU", 1) // cpus)
    if gpus > 0:
        n = min(n, int(res.get("GPU", 0) // gpus))
    return max(1, n)


def _check_feasible(ray: Any, cells: list[Cell]) -> None:
    res = ray.cluster_resources()
    for field, key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = max(getattr(c, field) for c in cells)
        if need > res.get(key, 0):
            raise ConfigError(
                f"cell field '{field}' asks for {need:g} per cell but the Ray cluster has {res.get(key, 0):g} "
                f"{key}s in all; lower '{field}' in the spec or join a bigger cluster (--address / RAY_ADDRESS)"
            )


class _CellBar:
    """One bar over the cells. Its ETA is the work left divided by the workers: over the cells not finished, the
    mean time of finished cells of the same model and method (else of any cell), less the time the running ones
    have already run. Cells of one method cost alike, across methods not (ACDC takes far longer than EAP)."""

    def __init__(self, total: int, slots: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc="sweep",
                unit="cell",
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} cells [{elapsed}{postfix}]",
            )
        self.slots = slots
        self.times: dict[tuple[str, str], list[float]] = {}
        self.left: dict[tuple[str, str], int] = {}
        self.failed = 0

    def _group(self, cell: Cell) -> tuple[str, str]:
        return (cell.model, cell.method)

    def track(self, cells: list[Cell]) -> None:
        for c in cells:
            self.left[self._group(c)] = self.left.get(self._group(c), 0) + 1

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        g = self._group(cell)
        self.left[g] = self.left.get(g, 1) - 1
        if row.get("status") == STATUS_DONE and row.get("wall_s"):
            self.times.setdefault(g, []).append(float(row["wall_s"]))
        self.failed += row.get("status") == STATUS_FAILED
        if self.bar is not None:
            self.bar.update(1)

    def eta_s(self, running: list[tuple[Cell, float]]) -> float:
        """Seconds left (NaN until a cell has finished); ``running``: (cell, seconds it has run)."""
        every = [t for ts in self.times.values() for t in ts]
        if not every:
            return math.nan
        overall = sum(every) / len(every)

        def expected(g: tuple[str, str]) -> float:
            return sum(self.times[g]) / len(self.times[g]) if g in self.times else overall

        work = sum(n * expected(g) for g, n in self.left.items() if n > 0)
        work -= sum(min(elapsed, expected(self._group(cell))) for cell, elapsed in running)
        busy = min(self.slots, max(1, sum(self.left.values())))  # fewer cells left than workers: some idle
        return max(work, 0.0) / busy

    def tick(self, running: list[tuple[Cell, float]]) -> None:
        if self.bar is None:
            return
        eta = self.eta_s(running)
        text = "?" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        self.bar.set_postfix_str(f"ETA {text}, {len(running)} running, {self.failed} failed", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
