"""Reproducing the ACDC paper's threshold sweeps: ROC curves against known circuits, or faithfulness curves.

Three settings, one pipeline (ACDC at log-spaced thresholds, then the points of a curve, returned and written
as JSON):

* ``model_name="gpt2"`` (GPT-2 small): KL metric, resample ablation, ROC/AUC against the paper's IOI or
  greater-than circuit (:mod:`circuitfind.tasks.ground_truth`) -> ``roc_<task>_gpt2.json``. Needs the
  GPT-2 weights in the local Hugging Face cache (they cannot be downloaded on an offline machine).
* the default model (``None`` / ``"default"``, SmolLM2-135M): no ground truth exists, so the curve is the
  held-out faithfulness (task metric) of each threshold's circuit against its fraction of edges
  -> ``faithfulness_<task>_smollm2.json``.
* ``"tracr-reverse"`` / ``"tracr-proportion"``: compiled RASP programs whose circuits are known exactly
  (:mod:`circuitfind.models.tracr`). ACDC runs with zero and with resample ablation
  -> ``roc_tracr-<name>.json``. The data and metric come from :func:`circuitfind.tasks.tracr.tracr_setup`,
  the ground truth from :func:`circuitfind.tasks.ground_truth.tracr_ground_truth`.

Each ACDC circuit is cached as JSON under ``<out_dir>/circuits/`` so an interrupted sweep resumes. The figures
are drawn from the returned data by :func:`circuitfind.cli.plots.plot_reproduction` (``circuitfind reproduce`` does).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ModelLoadError
from circuitfind.evaluate.circuits import auc, faithfulness, roc_from_circuits
from circuitfind.fileio import atomic_write
from circuitfind.models import load_model
from circuitfind.models.loading import DEFAULT_MODEL_ALIASES
from circuitfind.models.tracr import TRACR_MODELS
from circuitfind.reproduce.thresholds import roc_sweep, threshold_sweep
from circuitfind.tasks import get_task
from circuitfind.tasks.ground_truth import greater_than_ground_truth, ioi_ground_truth, tracr_ground_truth
from circuitfind.tasks.tracr import tracr_setup

__all__ = ["DEFAULT_THRESHOLDS", "reproduce"]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(10 ** (-4 + 4 * i / 9) for i in range(10))
"""Ten thresholds log-spaced from 1e-4 to 1, like the ACDC paper's sweeps."""

_PAPER_PROMPTS = 100  # the ACDC paper's IOI / greater-than data size
_DEFAULT_PROMPTS = 40  # default model: half for discovery, half held out


# --- tracr -------------------------------------------------------------------------------------------------
def _reproduce_tracr(
    name: str, thresholds: Sequence[float], out_dir: Path, n_sequences: int | None, seed: int, log: Callable
) -> dict[str, Any]:
    setup = tracr_setup(name, n_sequences=n_sequences, seed=seed)
    g = setup.pm.graph
    truths = {
        "ground_truth": setup.meta["ground_truth"],
        "ground_truth+aux": setup.meta["ground_truth"] + setup.meta["ground_truth_aux"],
        "ground_truth_acdc": setup.meta["ground_truth_acdc"],
    }
    runs = {}
    for ablation in ("zero", "resample"):
        key, truth = tracr_ground_truth(setup.meta, ablation)
        res = roc_sweep(setup.pm, setup.task, thresholds, truth, metric=setup.metric, ablation=ablation)
        circuits = res.pop("circuits")
        masks = [c.mask for c in circuits]
        by_truth = {k: auc(*roc_from_circuits(masks, g.mask_of(v), g.edge_mask)) for k, v in truths.items()}
        for point, c in zip(res["points"], circuits, strict=True):
            point["edges"] = c.edge_names
        runs[ablation] = {"ground_truth": key, **res, "auc_by_ground_truth": by_truth}
        log(f"tracr-{setup.name} {ablation}: AUC {res['auc']:.3f} against {key}")
    data = {
        "model": f"tracr-{setup.name}",
        "task": setup.task.name,
        "metric": "l2 (mean squared error vs the full model's outputs)",
        "n_prompts": len(setup.task),
        "seed": seed,
        "graph": g.describe(),
        "runs": runs,
    }
    return _finish(data, out_dir / f"roc_tracr-{setup.name}.json")


# --- language models ---------------------------------------------------------------------------------------
def _paper_truth(task_name: str) -> Callable | None:
    return {"ioi": ioi_ground_truth, "greater-than": greater_than_ground_truth}.get(task_name)


def _reproduce_gpt2(
    task_name: str,
    thresholds: Sequence[float],
    out_dir: Path,
    n_prompts: int | None,
    seed: int,
    log: Callable,
    device: str | torch.device | None,
) -> dict[str, Any]:
    truth_of = _paper_truth(task_name)
    if truth_of is None:
        raise ConfigError(
            f"the ACDC paper's GPT-2 ground truths cover ioi and greater-than; got {task_name!r}. "
            "For other tasks use model_name=None (faithfulness curve on the default model)"
        )
    try:
        model, tok = load_model("gpt2", device=device, progress=False)
    except ModelLoadError as exc:
        raise ModelLoadError(
            "reproducing the paper's ROC needs GPT-2 small weights (for the default model's faithfulness "
            f"curve instead: reproduce({task_name!r}, None), or --model smollm2 on the command line); {exc}"
        ) from exc
    pm = PatchableModel(model)
    task = get_task(task_name, tok, n=n_prompts or _PAPER_PROMPTS, seed=seed)
    res = roc_sweep(
        pm,
        task,
        thresholds,
        truth_of(pm.graph),
        metric="kl",
        ablation="resample",
        cache_dir=out_dir / "circuits",
        on_circuit=lambda t, c: log(f"{task_name} gpt2 threshold {t:.3g}: {c.n_edges} edges"),
    )
    res.pop("circuits")
    data = {"model": "gpt2", "task": task_name, "metric": "kl", "ablation": "resample", "n_prompts": len(task), **res}
    log(f"{task_name} gpt2: AUC {res['auc']:.3f}")
    return _finish(data, out_dir / f"roc_{task_name}_gpt2.json")


def _model_label(model_name: str | None) -> str:
    if model_name is None or model_name.strip().lower() in DEFAULT_MODEL_ALIASES:
        return "smollm2"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name.strip("/").split("/")[-1])


def _reproduce_faithfulness(
    task_name: str,
    model_name: str | None,
    thresholds: Sequence[float],
    out_dir: Path,
    n_prompts: int | None,
    seed: int,
    log: Callable,
    device: str | torch.device | None,
) -> dict[str, Any]:
    label = _model_label(model_name)
    model, tok = load_model(model_name, device=device, progress=False)
    pm = PatchableModel(model)
    n = n_prompts or _DEFAULT_PROMPTS
    if n < 2:
        raise ConfigError(f"n_prompts must be at least 2 (half discover, half held out); got {n}")
    task = get_task(task_name, tok, n=n, seed=seed, n_train=n // 2)
    json_path = out_dir / f"faithfulness_{task.name}_{label}.json"
    points: list[dict[str, Any]] = []
    data = {
        "model": label,
        "task": task.name,
        "discovery": {"metric": "kl", "ablation": "resample", "n_train": len(task.train())},
        "evaluation": {"metric": task.metric, "ablation": "resample", "n_held_out": len(task.held_out())},
        "graph": pm.graph.describe(),
        "points": points,
    }

    def on_circuit(tau: float, circuit) -> None:
        f = faithfulness(pm, circuit, task)
        points.append({"threshold": tau, **f})
        log(f"{task.name} {label} threshold {tau:.3g}: {circuit.n_edges} edges, faithfulness {f['faithfulness']:.3f}")
        _write_json(json_path, data)  # partial results survive an interrupted sweep

    threshold_sweep(
        pm, task, thresholds, metric="kl", ablation="resample", cache_dir=out_dir / "circuits", on_circuit=on_circuit
    )
    return _finish(data, json_path)


# --- the entry point ---------------------------------------------------------------------------------------
def reproduce(
    task_name: str,
    model_name: str | None = "gpt2",
    *,
    thresholds: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] = "figures",
    n_prompts: int | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run the ACDC threshold sweep of the paper; return the points of its curve and write them as JSON.

    Args:
        task_name: ``ioi``, ``greater-than`` or ``induction``; for tracr, ``reverse`` / ``proportion`` (or the
            ``tracr-`` names, in which case ``model_name`` may stay at its default).
        model_name: ``"gpt2"`` (ROC against the paper's circuits), ``None`` / ``"default"`` (faithfulness curve
            on SmolLM2-135M), another model name (faithfulness curve), or ``"tracr-reverse"`` /
            ``"tracr-proportion"`` (ROC against the compiled circuit, zero and resample ablation).
        thresholds: the ACDC thresholds; default :data:`DEFAULT_THRESHOLDS` (1e-4 .. 1, log-spaced).
        out_dir: where the JSON and the cached circuits (``circuits/``) go.
        n_prompts: prompts (tracr: input sequences); default 100 for GPT-2 (the paper's), 40 for other
            models (half held out), every / 64 sequences for tracr reverse / proportion.
        seed: seeds the task data.
        progress: print one line per threshold to stderr.
        device: where to run the language models (default CPU); tracr models run on the CPU.

    Returns:
        the data written to the JSON, plus its path under ``"json"``; draw it with
        :func:`circuitfind.cli.plots.plot_reproduction`.

    Raises:
        ModelLoadError: GPT-2 small is not available locally (the message says how to get it).
        ConfigError: an unknown task / model combination.

    Example:
        >>> res = reproduce("reverse", "tracr-reverse", out_dir="figures")  # doctest: +SKIP
        >>> res["json"]  # doctest: +SKIP
        'figures/roc_tracr-reverse.json'
        >>> res["runs"]["zero"]["auc"]  # doctest: +SKIP
        1.0
    """
    taus = list(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    if not taus or any(not isinstance(t, (int, float)) or math.isnan(t) or t < 0 for t in taus):
        raise ConfigError(f"thresholds must be a non-empty list of numbers >= 0; got {thresholds!r}")
    out = Path(out_dir)

    def log(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    tracr_name = _tracr_name(task_name, model_name)
    if tracr_name is not None:
        return _reproduce_tracr(tracr_name, taus, out, n_prompts, seed, log)
    task_key = task_name.strip().lower().replace("_", "-")
    if model_name is not None and model_name.strip().lower() == "gpt2":
        return _reproduce_gpt2(task_key, taus, out, n_prompts, seed, log, device)
    return _reproduce_faithfulness(task_key, model_name, taus, out, n_prompts, seed, log, device)


def _tracr_name(task_name: str, model_name: str | None) -> str | None:
    """The tracr program named by the model (``tracr-X``) or the task, or None; a mismatch is an error."""
    task = task_name.strip().lower().removeprefix("tracr-")
    model = (model_name or "").strip().lower()
    if model.startswith("tracr-"):
        name = model.removeprefix("tracr-")
        if task not in (name, "tracr"):
            raise ConfigError(f"the tracr model {model_name!r} runs its own task ({name!r}); got task {task_name!r}")
    elif task_name.strip().lower().startswith("tracr-"):
        name = task
    else:
        return None
    if name not in TRACR_MODELS:
        raise ConfigError(f"unknown tracr program {name!r}; expected one of {', '.join(TRACR_MODELS)}")
    return name


# --- output ------------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finish(data: dict[str, Any], json_path: Path) -> dict[str, Any]:
    _write_json(json_path, data)
    return {**data, "json": str(json_path)}
