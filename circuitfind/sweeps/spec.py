"""Sweep specs: a JSON grid of discovery runs, checked field by field and expanded into :class:`Cell` s.

A spec is a JSON object::

    {
      "out": "runs/sweep",                      # results.sqlite and circuits/ go here
      "defaults": {"n_prompts": 16, "held_out": 16, "metric": "logit_diff"},
      "grid": [                                 # one grid, or a list of grids (their union)
        {"model": "smollm2", "task": ["ioi", "greater-than"], "method": "eap-ig", "target": [0.6, 0.8]},
        {"model": "smollm2", "task": "ioi", "method": "acdc", "threshold": [0.1, 0.03]}
      ],
      "workers": 2,                             # optional: cells at once (default: as many as the CPUs allow)
      "max_retries": 2,                         # optional: reruns of a cell whose worker died (default 2)
      "max_cells": 10000                        # optional: refuse a spec whose grids expand to more cells
    }

Each grid maps a cell field to one value or a list of values; its cells are the cartesian product, with the
fields it does not name taken from ``defaults`` and then from :data:`CELL_DEFAULTS`. Every cell has an id, a hash
of its fields that change the result (not ``num_cpus``), so a rerun finds the cells it already finished.

A malformed spec raises :class:`SpecError` naming the field (``grid[1].threshold``, ``defaults.seed``...). The
cells are counted before any is built: a spec whose grids hold more than ``max_cells`` (default
:data:`DEFAULT_MAX_CELLS`; ``circuitfind sweep --max-cells N``) is refused with the count, at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitfind.algorithms.registry import METHODS, given_options, plan
from circuitfind.engine.ablations import Ablation
from circuitfind.errors import ConfigError, check_int, check_optional_int
from circuitfind.metrics import MetricKind
from circuitfind.tasks import BUILTIN, is_task_file

__all__ = [
    "CELL_DEFAULTS",
    "CELL_FIELDS",
    "DEFAULT_MAX_CELLS",
    "Cell",
    "SpecError",
    "SweepSpec",
    "load_spec",
    "parse_spec",
]

SPEC_KEYS = ("out", "defaults", "grid", "workers", "max_retries", "name", "max_cells")
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_CELLS = 10_000
"""The most cells a spec may expand to unless it says otherwise (``max_cells``): a typo such as a list of a
million seeds is refused in milliseconds instead of building the cells for a minute first."""


CELL_OPTIONS = ("threshold", "n_edges", "target", "steps", "batch_size", "absolute")
"""The :class:`Cell` fields that are ``discover`` options (see :meth:`Cell.discover_options`)."""


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the field (e.g. ``grid[0].threshold``)."""


@dataclass(frozen=True)
class Cell:
    """One discovery run of a sweep: discover on ``n_prompts`` prompts, evaluate on ``held_out`` more.

    Attributes:
        model: a name or folder for :func:`circuitfind.load_model` (``smollm2``, ``gpt2``, ``path/to/dir``).
        task: a built-in task (``ioi``, ``greater-than``, ``induction``) or a ``.json`` / ``.jsonl`` task file.
        method: a :data:`circuitfind.algorithms.METHODS` name.
        threshold, n_edges, target: how the circuit is cut (at most one for scoring methods; see ``discover``).
        ablation: ``resample``, ``mean`` or ``zero``.
        metric: the discovery metric (``kl``, ``logit_diff``, ``prob_diff``).
        eval_metric: the held-out evaluation's metric; None: the task's own.
        seed: the prompts' seed (built-in tasks) and torch's seed for the cell.
        n_prompts: discovery prompts (a task file: its first ``n_prompts``).
        held_out: prompts after those that discovery never sees, for the evaluation.
        steps: integration steps (EAP-IG, mask IG, hybrid).
        batch_size: candidate removals per forward (None: discover's default).
        absolute: ACDC / hybrid: remove when ``|change| < threshold``; cuts rank by ``|score|``.
        cpr_cmd: also measure MIB's CPR and CMD of the cell's edge scores on the held-out prompts.
        num_cpus, num_gpus: what a worker running the cell reserves (a GPU cell runs on ``cuda``).
        options: free-form JSON options for a custom cell function (``sweep(..., cell_fn=...)``); part of the
            cell's id, ignored by the default :func:`~circuitfind.sweeps.cell.run_cell`.
    """

    model: str
    task: str
    method: str = "acdc"
    threshold: float | None = None
    n_edges: int | None = None
    target: float | None = None
    ablation: str = "resample"
    metric: str = "kl"
    eval_metric: str | None = None
    seed: int = 0
    n_prompts: int = 20
    held_out: int = 20
    steps: int = 5
    batch_size: int | None = None
    absolute: bool = False
    cpr_cmd: bool = True
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    options: dict[str, Any] | None = None

    def __hash__(self) -> int:  # ``options`` is a dict: hash by the id, which covers it
        return hash(self.id)

    @property
    def id(self) -> str:
        """16 hex digits of SHA-256 over the fields that determine the result (all but ``num_cpus``)."""
        key = {k: v for k, v in self.as_dict().items() if k != "num_cpus"}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    @property
    def worker_key(self) -> tuple[str, float, float]:
        """Cells with one key share workers: the model loaded once, the same resources."""
        return (self.model, self.num_cpus, self.num_gpus)

    def discover_options(self) -> dict[str, Any]:
        """The cell's ``discover`` options: each one set, and one left at the cell's default only when the method
        takes it (a cell's default ``steps=5`` is not passed to ACDC; ``steps=10`` with ACDC is refused).

        Example:
            >>> Cell(model="gpt2", task="ioi", method="acdc", threshold=0.05).discover_options()
            {'threshold': 0.05, 'absolute': False}
            >>> Cell(model="gpt2", task="ioi", method="eap").discover_options()  # EAP takes no steps
            {'absolute': False}
        """
        defaults = {f.name: f.default for f in dataclasses.fields(Cell)}
        return given_options({name: getattr(self, name) for name in CELL_OPTIONS}, self.method, defaults)

    @property
    def cut(self) -> str:
        """The cut as text: ``threshold=0.01``, ``target=0.8``, ``n_edges=50`` or ``default``."""
        for name in ("threshold", "target", "n_edges"):
            value = getattr(self, name)
            if value is not None:
                return f"{name}={value:g}"
        return "default"

    @property
    def label(self) -> str:
        return f"{Path(self.model).name or self.model} {self.task} {self.method} {self.cut} seed={self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CELL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Cell))
CELL_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Cell) if f.default is not dataclasses.MISSING
}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: its cells (in grid order, no duplicates), where results go, and how to run them.

    Example:
        >>> spec = parse_spec({"out": "runs/s", "grid": {"model": "smollm2", "task": "ioi", "seed": [0, 1]}})
        >>> len(spec.cells), spec.cells[1].seed
        (2, 1)
    """

    cells: tuple[Cell, ...]
    out: Path
    workers: int | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    name: str = "sweep"

    @property
    def store_path(self) -> Path:
        return self.out / "results.sqlite"

    @property
    def circuit_dir(self) -> Path:
        return self.out / "circuits"


def load_spec(
    path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, max_cells: int | None = None
) -> SweepSpec:
    """Read and check a spec file (JSON, UTF-8); ``out`` overrides its ``out``, ``max_cells`` its ``max_cells``.

    Example:
        >>> spec = load_spec("examples/sweep.json")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    where = f"the sweep spec {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{where} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); a spec is a JSON file: "
            "pass the .json spec, not a binary or a results file"
        ) from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise SpecError(f"{where} is JSON nested too deeply to read (thousands of levels)") from None
    if isinstance(data, dict):
        data = {**data, **({"out": str(out)} if out is not None else {})}
        data = {**data, **({"max_cells": max_cells} if max_cells is not None else {})}
    return parse_spec(data, default_name=path.stem)


def parse_spec(data: Any, *, default_name: str = "sweep") -> SweepSpec:
    """Check a spec given as a dict and expand its grids into cells (see the module docstring).

    Raises:
        SpecError: a missing, unknown or ill-typed field; the message names it and says what was expected.

    Example:
        >>> try:
        ...     parse_spec({"out": "o", "grid": {"model": "m", "task": "ioi", "seed": "0"}})
        ... except SpecError as e:
        ...     print(e)
        spec field 'grid.seed' must be an integer; got '0'. Pass 0 as a number, not a string
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"a sweep spec must be a JSON object with 'out' and 'grid'; got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"unknown spec field(s) {unknown}; expected some of {list(SPEC_KEYS)}")
    if not isinstance(data.get("out"), str) or not data["out"].strip():
        raise SpecError(f"spec field 'out' must be a folder path (results.sqlite goes there); got {data.get('out')!r}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise SpecError(f"spec field 'defaults' must be an object of cell fields; got {type(defaults).__name__}")
    for key, value in defaults.items():
        _check_field(f"defaults.{key}", key, value)
    grids = data.get("grid")
    if isinstance(grids, Mapping):
        grids = [grids]
    if not isinstance(grids, list) or not grids:
        raise SpecError("spec field 'grid' must be an object of cell fields (or a non-empty list of them)")
    _check_cell_count(grids, data.get("max_cells", DEFAULT_MAX_CELLS))
    cells: dict[str, Cell] = {}
    for i, grid in enumerate(grids):
        where = f"grid[{i}]" if len(grids) > 1 or isinstance(data["grid"], list) else "grid"
        for cell in _expand(where, grid, defaults):
            cells.setdefault(cell.id, cell)
    workers = check_optional_int(data.get("workers"), "spec field 'workers'", what="cells at once", error=SpecError)
    retries = check_int(
        data.get("max_retries", DEFAULT_MAX_RETRIES), "spec field 'max_retries'", minimum=0, error=SpecError
    )
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise SpecError(f"spec field 'name' must be a string; got {name!r}")
    return SweepSpec(tuple(cells.values()), Path(data["out"]).expanduser().absolute(), workers, retries, name)


def _check_cell_count(grids: list[Any], max_cells: Any) -> None:
    """Refuse, before building any cell, grids whose cartesian products hold more than ``max_cells`` cells."""
    check_int(max_cells, "spec field 'max_cells'", error=SpecError)
    sizes = [
        math.prod(len(v) if isinstance(v, list) else 1 for v in g.values()) for g in grids if isinstance(g, Mapping)
    ]
    total = sum(sizes)
    if total > max_cells:
        per_grid = f" ({' + '.join(f'{n:,}' for n in sizes)} over {len(sizes)} grids)" if len(sizes) > 1 else ""
        raise SpecError(
            f"the spec's grids expand to {total:,} cells{per_grid}, more than max_cells = {max_cells:,}; check the "
            "lists in 'grid' (each list multiplies the count), or raise the limit with the spec field 'max_cells' "
            "or `circuitfind sweep --max-cells N`"
        )


def _expand(where: str, grid: Any, defaults: Mapping[str, Any]) -> list[Cell]:
    if not isinstance(grid, Mapping) or not grid:
        raise SpecError(f"spec field '{where}' must be a non-empty object of cell fields; got {grid!r}")
    axes: dict[str, list[Any]] = {}
    for key, value in grid.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise SpecError(f"spec field '{where}.{key}' is an empty list; give at least one value")
        for j, v in enumerate(values):
            _check_field(f"{where}.{key}" + (f"[{j}]" if isinstance(value, list) else ""), key, v)
        axes[key] = values
    base = {**CELL_DEFAULTS, **defaults}
    for required in ("model", "task"):
        if required not in axes and required not in base:
            raise SpecError(f"spec field '{where}.{required}' is missing (and not in 'defaults'); every cell needs one")
    cells = []
    for combo in itertools.product(*axes.values()):
        fields = {**base, **dict(zip(axes, combo, strict=True))}
        fields["model"] = _local_path(fields["model"])
        fields["task"] = _local_path(fields["task"]) if is_task_file(fields["task"]) else fields["task"]
        for name in ("threshold", "target", "num_cpus", "num_gpus"):
            if fields[name] is not None:
                fields[name] = float(fields[name])
        cell = Cell(**fields)
        _check_cell(where, cell, axes)
        cells.append(cell)
    return cells


def _local_path(text: str) -> str:
    """Existing local paths become absolute (workers may run elsewhere); names stay as they are."""
    p = Path(text).expanduser()
    return str(p.absolute()) if p.exists() else text


def _check_field(where: str, key: str, value: Any) -> None:
    """One value of one cell field, checked on its own (types and ranges)."""

    def fail(expected: str) -> None:
        raise SpecError(f"spec field '{where}': expected {expected}; got {value!r}")

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

    if key not in CELL_FIELDS:
        raise SpecError(f"unknown cell field '{where}'; expected one of {list(CELL_FIELDS)}")
    if key in ("model", "task") and (not isinstance(value, str) or not value.strip()):
        fail("a non-empty string")
    if key == "task" and not is_task_file(value) and value.strip().lower().replace("_", "-") not in BUILTIN:
        fail(f"a built-in task ({', '.join(sorted(BUILTIN))}) or a .json/.jsonl task file")
    if key == "method" and value not in METHODS:
        fail(f"one of {sorted(METHODS)}")
    if key == "ablation" and value not in [a.value for a in Ablation]:
        fail(f"one of {[a.value for a in Ablation]}")
    if key in ("metric", "eval_metric") and not (
        value in [m.value for m in MetricKind] or (key == "eval_metric" and value is None)
    ):
        fail(f"one of {[m.value for m in MetricKind]}")
    if key == "threshold" and value is not None and not is_num(value):
        fail("a number (or null)")
    if key == "target" and value is not None and not (is_num(value) and 0 < value <= 1):
        fail("a faithfulness in (0, 1] (or null)")
    field = f"spec field '{where}'"
    if key in ("n_edges", "batch_size"):
        check_optional_int(value, field, error=SpecError)
    if key == "seed":
        check_int(value, field, minimum=None, error=SpecError)
    if key in ("n_prompts", "steps"):
        check_int(value, field, error=SpecError)
    if key == "held_out":
        check_int(value, field, what="held-out prompts the cell is evaluated on", error=SpecError)
    if key in ("absolute", "cpr_cmd") and not isinstance(value, bool):
        fail("true or false")
    if key == "num_cpus" and not (is_num(value) and value > 0):
        fail("a number > 0")
    if key == "num_gpus" and not (is_num(value) and value >= 0):
        fail("a number >= 0")
    if key == "options" and value is not None and not isinstance(value, Mapping):
        fail("an object (options for a custom cell function) or null")


def _check_cell(where: str, cell: Cell, axes: Mapping[str, Any]) -> None:
    """The rules across fields (one cut for scoring methods, ...), as ``discover`` applies them."""
    try:
        plan(cell.method, None, cell.discover_options())
    except ConfigError as e:
        named = [k for k in ("method", *CELL_OPTIONS) if k in axes]
        fields = ", ".join(f"'{where}.{k}'" for k in named) or f"'{where}'"
        raise SpecError(f"spec field(s) {fields}: the cell {cell.label!r} is invalid: {e}") from None
