"""Sweeps: grids of discovery runs on Ray, a results store that survives interruption, exact scoring on workers.

* :func:`sweep` runs a spec's cells (model x task x method x cut x ablation x metric x seed x prompts) on Ray
  workers (one model load per worker), evaluates each circuit on held-out prompts and stores one row per cell
  in ``out/results.sqlite`` (:class:`ResultsStore`), its circuit in ``out/circuits/``.
* :func:`exact_scores` computes exact edge scores with the edges spread over Ray workers.

Ray is imported only when a sweep or a distributed scoring runs; ``import circuitfind`` does not import it.

Example:
    >>> import circuitfind as cf
    >>> res = cf.sweep("examples/sweep.json")  # doctest: +SKIP
    >>> res.done, res.skipped  # doctest: +SKIP
"""

from __future__ import annotations

from circuitfind.sweeps.cell import ModelWorker, build_task, run_cell
from circuitfind.sweeps.exact import exact_scores, shard_plan
from circuitfind.sweeps.run import SweepResult, sweep
from circuitfind.sweeps.spec import CELL_DEFAULTS, CELL_FIELDS, Cell, SpecError, SweepSpec, load_spec, parse_spec
from circuitfind.sweeps.store import ResultsStore

__all__ = [
    "CELL_DEFAULTS",
    "CELL_FIELDS",
    "Cell",
    "ModelWorker",
    "ResultsStore",
    "SpecError",
    "SweepResult",
    "SweepSpec",
    "build_task",
    "exact_scores",
    "load_spec",
    "parse_spec",
    "run_cell",
    "shard_plan",
    "sweep",
]
