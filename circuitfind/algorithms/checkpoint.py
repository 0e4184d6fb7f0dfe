"""Checkpoints of a discovery run: what identifies a run (its fingerprint) and the state saved to resume it.

A checkpoint is one safetensors file, never a pickle, so loading one cannot run code. Its header metadata
(plain JSON text) holds the format name, the version, the run's fingerprint and the state's numbers and trace;
its two tensors are the state's ``mask`` ``(S, R)`` bool and ``effects`` ``(S, R)`` float. :func:`load_state`
reads the header alone, checks the format and the fingerprint, then checks every field's type and shape before it
builds an :class:`AcdcState`.

The fingerprint (:func:`fingerprint`) is a SHA-256 over everything that determines the result: the options, the
task's tensors (clean and corrupted ids, attention mask, answer positions, answers, wrong answers), the metric's
identity, the mean ablation's reference outputs, and every parameter and buffer of the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from circuitfind.algorithms.acdc import AcdcState
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import CheckpointError, OutputError
from circuitfind.fileio import atomic_write
from circuitfind.problem import Problem
from circuitfind.tasks import Task

__all__ = ["CHECKPOINT_EVERY_S", "FORMAT", "VERSION", "Checkpointer", "fingerprint", "load_state", "save_state"]

FORMAT = "circuitfind.algorithms.checkpoint"
VERSION = 1
CHECKPOINT_EVERY_S = 30.0

# AcdcState's fields by how they are stored: tensors in the safetensors body, the rest as JSON in the header
_TENSOR_FIELDS = ("mask", "effects")
_NUMBER_FIELDS: dict[str, tuple[type, ...]] = {
    "current": (float, int),
    "next_receiver": (int,),
    "edges_tested": (int,),
    "forward_passes": (int,),
    "candidates_evaluated": (int,),
    "elapsed_s": (float, int),
    "done": (bool,),
}
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a bare pickle


# --- fingerprint -------------------------------------------------------------------------------------------
def fingerprint(
    config: dict[str, Any],
    task: Task,
    problem: Problem | None = None,
    model: nn.Module | PatchableModel | None = None,
    *,
    metric: Any = None,
) -> str:
    """A hex SHA-256 of everything that determines a run's result, so a resume cannot mix two runs.

    The one task fingerprint: checkpoints, the threshold-sweep cache and the problem cache of distributed exact
    scoring all key on it, so no cache can serve a result computed for other answers, wrong answers, metric,
    ablation reference or weights.

    Args:
        config: the run's options (method, threshold, metric name, ablation, ...), hashed as sorted JSON.
        task: the prompts actually used (ids, mask, answer positions, answers, wrong answers).
        problem: the prepared problem: its metric positions, and under mean ablation the reference outputs.
            None: the task's answer positions, and no reference outputs (only for a cache whose model is fixed
            and whose mean ablation, if any, is taken over ``task`` itself, e.g. a worker's problem cache).
        model: the model (or its :class:`PatchableModel`); every parameter and buffer is hashed. None: only
            for a cache bound to one model object (a worker's own model).
        metric: the metric as the caller passed it; a callable is identified by its module, name and code.

    Example:
        >>> fp = fingerprint({"method": "acdc", "threshold": 0.01}, task, problem, model)
        >>> len(fp), fp == fingerprint({"method": "acdc", "threshold": 0.02}, task, problem, model)
        (64, False)
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(_metric_identity(metric).encode())
    tensors = {**task.tensors(), "positions": task.answer_pos if problem is None else problem.positions}
    if problem is not None and getattr(problem.ablated, "kind", None) is Ablation.MEAN:  # reference: not in task
        tensors["mean_outputs"] = problem.ablated.outputs
    for name, t in tensors.items():
        _hash_tensor(h, f"task.{name}", t)
    for name, t in _model_tensors(model) if model is not None else ():
        _hash_tensor(h, f"model.{name}", t)
    return h.hexdigest()


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def _metric_identity(metric: Any) -> str:
    if metric is None or isinstance(metric, str) or not callable(metric):
        return f"metric:{metric}"
    code = getattr(metric, "__code__", None)
    # the bytecode with the names and constants it uses: an edited function body changes the identity
    parts = (code.co_code, repr((code.co_consts, code.co_names)).encode()) if code is not None else ()
    body = hashlib.sha256(b"".join(parts)).hexdigest()
    return f"metric:{getattr(metric, '__module__', '')}.{getattr(metric, '__qualname__', type(metric).__name__)}:{body}"


def _model_tensors(model: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Every parameter and buffer of ``model``: a module, a :class:`PatchableModel`, or an ``ArchSpec`` (tracr)."""
    if isinstance(model, PatchableModel):
        yield from _model_tensors(model.module if model.module is not None else model.spec, prefix)
    elif isinstance(model, nn.Module):
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            yield prefix + name, t
    elif isinstance(model, Tensor):
        yield prefix.rstrip("."), model
    elif dataclasses.is_dataclass(model):
        for f in dataclasses.fields(model):
            yield from _model_tensors(getattr(model, f.name), f"{prefix}{f.name}.")
    elif isinstance(model, (tuple, list)):
        for i, item in enumerate(model):
            yield from _model_tensors(item, f"{prefix}{i}.")


# --- saving and loading ------------------------------------------------------------------------------------
def save_state(path: str | Path, state: AcdcState, fingerprint: str) -> Path:
    """Write ``state`` to ``path`` as a safetensors checkpoint of the run ``fingerprint`` (atomically).

    Example:
        >>> state = AcdcState(mask=torch.ones(4, 8, dtype=torch.bool), effects=torch.zeros(4, 8), current=0.0)
        >>> save_state(tmp_path / "checkpoint.safetensors", state, "run-1").name
        'checkpoint.safetensors'
    """
    from safetensors.torch import save

    header = {name: getattr(state, name) for name in _NUMBER_FIELDS}
    header["trace"] = list(state.trace)
    metadata = {"format": FORMAT, "version": str(VERSION), "fingerprint": fingerprint, "state": json.dumps(header)}
    tensors = {name: getattr(state, name).detach().cpu().contiguous() for name in _TENSOR_FIELDS}
    return atomic_write(path, save(tensors, metadata=metadata))


def load_state(path: str | Path, fingerprint: str, shape: tuple[int, int] | None = None) -> AcdcState:
    """Read the state saved by :func:`save_state`, refusing a file of another run or of any other kind.

    The header is read and the fingerprint compared before any tensor is read. Nothing is unpickled.

    Args:
        path: the checkpoint file.
        fingerprint: this run's :func:`fingerprint`; the file must carry the same.
        shape: ``(senders, receivers)`` of this run's graph, to check the tensors against.

    Raises:
        CheckpointError: the file is unreadable, not a circuitfind checkpoint (a pickle is refused unopened),
            of a different run, or malformed; the message says what was expected and what was found.

    Example:
        >>> state = AcdcState(mask=torch.ones(4, 8, dtype=torch.bool), effects=torch.zeros(4, 8), current=0.0)
        >>> path = save_state(tmp_path / "checkpoint.safetensors", state, "run-1")
        >>> bool(load_state(path, "run-1", (4, 8)).mask.all())
        True
        >>> load_state(path, "run-2", (4, 8))
        Traceback (most recent call last):
        ...
        circuitfind.errors.CheckpointError: ...
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            _check_header(path, metadata, fingerprint)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # a pickle, a truncated file, or no safetensors at all: only the header was parsed
        raise CheckpointError(_unreadable(path, e)) from None
    fields = _parse_numbers(path, metadata.get("state", ""))
    fields.update(_check_tensors(path, tensors, shape))
    _check_counters(path, fields, tuple(fields["mask"].shape))
    return AcdcState(**fields)


def _unreadable(path: Path, error: Exception) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head.startswith(_PICKLE_MAGIC):
        return (
            f"checkpoint {path} is a pickle (torch.save) file, as circuitfind wrote before checkpoints became "
            "safetensors; it was not unpickled, because unpickling a file can run code. Expected a safetensors "
            "checkpoint; delete it to start over"
        )
    return (
        f"cannot read checkpoint {path}: expected a safetensors file written by circuitfind; {error}. "
        "Delete it to start over"
    )


def _check_header(path: Path, metadata: dict[str, str], fingerprint: str) -> None:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a circuitfind checkpoint: expected format {FORMAT!r} in its header, found "
            f"{metadata.get('format')!r}. Delete it or choose another --out to start over"
        )
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(
            f"checkpoint {path} has format version {metadata.get('version')!r}; this circuitfind reads version "
            f"{VERSION}. Resume with the circuitfind that wrote it, or delete it to start over"
        )
    if metadata.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run (model weights, prompts, answers, metric or options "
            "differ); use the same model, task and options to resume, or delete it / choose another --out to "
            "start over"
        )


def _parse_numbers(path: Path, text: str) -> dict[str, Any]:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is malformed: {what}. Delete it to start over")

    try:
        header = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"its state is not JSON ({e.msg})") from None
    if not isinstance(header, dict):
        raise bad(f"expected its state to be a JSON object of the run's counters, found {type(header).__name__}")
    fields: dict[str, Any] = {}
    for name, types in _NUMBER_FIELDS.items():
        value = header.get(name)
        if not _is_a(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise bad(f"expected {name!r} to be {want}, found {value!r} ({type(value).__name__})")
        fields[name] = float(value) if float in types else value
    trace = header.get("trace")
    if not isinstance(trace, list) or not all(_is_trace_entry(e) for e in trace):
        raise bad(f"expected 'trace' to be a list of {{name: number}} objects, found {trace!r:.80}")
    fields["trace"] = trace
    return fields


def _is_a(value: Any, types: tuple[type, ...]) -> TypeGuard[float | int]:
    if isinstance(value, bool):  # bool is an int to Python, but not a counter
        return bool in types
    return isinstance(value, types)


def _is_trace_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in entry.items()
    )


def _check_counters(path: Path, fields: dict[str, Any], shape: tuple[int, int]) -> None:
    """Every header number within what the graph allows: a forged ``next_receiver`` would skip or repeat
    receivers (a wrong circuit, exit 0), a NaN ``current`` would keep every edge (a NaN is never below tau)."""
    n_senders, n_receivers = shape

    def refuse(name: str, expected: str, fix: str = "Delete it to start over") -> None:
        raise CheckpointError(
            f"checkpoint {path} is malformed: expected {name!r} to be {expected}; found {fields[name]!r}. {fix}"
        )

    if not 0 <= fields["next_receiver"] <= n_receivers:
        refuse("next_receiver", f"a receiver position in 0 .. {n_receivers} (this graph's receivers)")
    if not math.isfinite(fields["current"]):
        refuse("current", "a finite loss (the loss of the saved circuit)")
    if not (math.isfinite(fields["elapsed_s"]) and fields["elapsed_s"] >= 0):
        refuse("elapsed_s", "a finite number of seconds >= 0")
    for name in ("edges_tested", "forward_passes", "candidates_evaluated"):
        if fields[name] < 0:
            refuse(name, "a count >= 0")
    if fields["edges_tested"] > n_senders * n_receivers:
        refuse("edges_tested", f"at most {n_senders * n_receivers} (each edge is tested once)")


def _check_tensors(path: Path, tensors: dict[str, Tensor], shape: tuple[int, int] | None) -> dict[str, Tensor]:
    found = {name: f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}" for name, t in tensors.items()}
    want_shape = shape if shape is not None else tuple(tensors["mask"].shape) if "mask" in tensors else None
    ok = (
        set(tensors) == set(_TENSOR_FIELDS)
        and want_shape is not None
        and len(want_shape) == 2
        and tensors["mask"].dtype == torch.bool
        and tensors["effects"].is_floating_point()
        and all(tuple(t.shape) == tuple(want_shape) for t in tensors.values())
    )
    if not ok:
        raise CheckpointError(
            f"checkpoint {path} is malformed: expected tensors mask (bool) and effects (float), both of shape "
            f"{want_shape or '(senders, receivers)'}; found {found}. Delete it to start over"
        )
    return dict(tensors)


# --- during a run ------------------------------------------------------------------------------------------
class Checkpointer:
    """Keeps the last receiver-boundary state; writes it atomically every so often and on interrupt.

    Args:
        path: the checkpoint file, or None to keep the state in memory only.
        fingerprint: the run's :func:`fingerprint`.
        shape: ``(senders, receivers)`` of the run's graph (checked on load).

    Example:
        >>> ckpt = Checkpointer(tmp_path / "checkpoint.safetensors", "run-1", (4, 8))
        >>> ckpt.load() is None  # no file yet
        True
    """

    def __init__(self, path: Path | None, fingerprint: str, shape: tuple[int, int] | None = None) -> None:
        self.path, self.fingerprint, self.shape = path, fingerprint, shape
        self.last: AcdcState | None = None
        self.written_at = time.monotonic()

    def update(self, state: AcdcState) -> None:
        self.last = state.copy()
        if self.path is not None and time.monotonic() - self.written_at > CHECKPOINT_EVERY_S:
            self.write()

    def write(self) -> None:
        if self.path is None or self.last is None:
            return
        try:
            save_state(self.path, self.last, self.fingerprint)
        except OSError as e:
            raise OutputError(
                f"cannot write the checkpoint {self.path}: {e.strerror or e}. Free space or fix the folder's "
                "permissions; an older checkpoint there, if any, is unchanged"
            ) from e
        self.written_at = time.monotonic()

    def load(self) -> AcdcState | None:
        if self.path is None or not self.path.exists():
            return None
        return load_state(self.path, self.fingerprint, self.shape)
