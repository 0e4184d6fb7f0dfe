"""Reproducing the ACDC paper's threshold sweeps: ROC curves against known circuits, or faithfulness curves.

Three settings, one pipeline (ACDC at log-spaced thresholds, then a curve, a figure and a JSON of the points):

* ``model_name="gpt2"`` (GPT-2 small): KL metric, resample ablation, ROC/AUC against the paper's IOI or
  greater-than circuit (:mod:`circuitfind.tasks.ground_truth`) -> ``roc_<task>_gpt2.png`` / ``.json``. Needs the
  GPT-2 weights in the local Hugging Face cache (they cannot be downloaded on an offline machine).
* the default model (``None`` / ``"default"``, SmolLM2-135M): no ground truth exists, so the curve is the
  held-out faithfulness (task metric) of each threshold's circuit against its fraction of edges
  -> ``faithfulness_<task>_smollm2.png`` / ``.json``.
* ``"tracr-reverse"`` / ``"tracr-proportion"``: compiled RASP programs whose circuits are known exactly
  (:mod:`circuitfind.models.tracr`). ACDC runs with zero and with resample ablation
  -> ``roc_tracr-<name>.png`` / ``.json``. See :func:`tracr_setup` for the data and metric and
  :func:`tracr_ground_truth` for which ground truth is scored under which ablation.

Each ACDC circuit is cached as JSON under ``<out_dir>/circuits/`` so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, ModelLoadError
from circuitfind.fileio import atomic_write
from circuitfind.patching import Ablation, PatchableModel
from circuitfind.tasks import Task

__all__ = [
    "DEFAULT_THRESHOLDS",
    "TracrSetup",
    "add_reproduce_parser",
    "new_figure",
    "output_mse",
    "reproduce",
    "run_reproduce",
    "tracr_ground_truth",
    "tracr_setup",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(10 ** (-4 + 4 * i / 9) for i in range(10))
"""Ten thresholds log-spaced from 1e-4 to 1, like the ACDC paper's sweeps."""

_PAPER_PROMPTS = 100  # the ACDC paper's IOI / greater-than data size
_DEFAULT_PROMPTS = 40  # default model: half for discovery, half held out
_TRACR_DEFAULT_SEQUENCES = {"reverse": None, "proportion": 64}  # None = every sequence


# --- tracr -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TracrSetup:
    """A tracr model with the task and metric ACDC runs on.

    Attributes:
        name: ``reverse`` or ``proportion``.
        pm: the patchable model.
        task: one prompt per (input sequence, output position); no held-out split.
        metric: :func:`output_mse` bound to the full model's outputs on ``task``.
        meta: the fixture's metadata (vocabularies, ground truths...).
    """

    name: str
    pm: PatchableModel
    task: Task
    metric: Callable[[Tensor], Tensor]
    meta: dict[str, Any]


def output_mse(reference: Tensor) -> Callable[[Tensor], Tensor]:
    """The ACDC paper's L2 metric for tracr: mean squared error of the outputs against ``reference``.

    Args:
        reference: ``(B, V)`` the full model's outputs at the prompts' answer positions.

    Returns:
        a callable on logits ``(B, V)`` returning the mean over prompts and output entries of
        ``(logits - reference) ** 2`` (a loss to minimise; 0 for the full model).

    Example:
        >>> mse = output_mse(torch.tensor([[1.0, 0.0]]))
        >>> float(mse(torch.tensor([[0.0, 0.0]])))
        0.5
    """
    ref = reference.detach().float()

    def tracr_mse(logits: Tensor) -> Tensor:
        return ((logits.float() - ref.to(logits.device)) ** 2).mean()

    return tracr_mse


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    """A random permutation without fixed points (every prompt is paired with another one)."""
    if n < 2:
        raise ConfigError(f"resample pairs need at least 2 input sequences; got {n}")
    while True:
        perm = torch.randperm(n, generator=gen)
        if not bool((perm == torch.arange(n)).any()):
            return perm


def tracr_setup(name: str, *, n_sequences: int | None = None, seed: int = 0) -> TracrSetup:
    """Load a packaged tracr model and build the task ACDC runs on (as in ``acdc/tracr_task/utils.py``).

    Inputs. ``reverse``: every sequence of 3 tokens over {a, b, c} after BOS (27 sequences, 4 positions each,
    the length ACDC used; ACDC took only the 6 permutations). ``proportion``: a sample of the 256 sequences of
    4 tokens over {w, x, y, z} (64 by default; ACDC used 50). The corrupted input of sequence ``i`` is another
    sequence of the set (a random pairing without fixed points), as ACDC paired them.

    One prompt per (sequence, output position): the engine's metrics read one position per prompt, and tracr
    writes an output at every non-BOS position, so each prompt reads one of them (``answer_pos`` = that
    position) and the metric averages over all of them -- exactly ACDC's metric over ``logits[:, 1:]``.

    Metric: :func:`output_mse` against the full model (ACDC's ``l2``). KL is not used: reverse's outputs are
    one-hot values rather than logits (ACDC's code refuses KL for it) and proportion's output is one number.

    Args:
        name: ``reverse`` or ``proportion`` (a ``tracr-`` prefix is accepted).
        n_sequences: how many input sequences (a seeded sample); None = the default above.
        seed: seeds the sample and the pairing.

    Example:
        >>> setup = tracr_setup("reverse")
        >>> len(setup.task), setup.task.seq_len
        (81, 4)
    """
    from circuitfind.models.tracr import TRACR_MODELS, TracrTokenizer, load_tracr

    name = name.removeprefix("tracr-")
    if name not in TRACR_MODELS:
        raise ConfigError(f"unknown tracr model {name!r}; expected one of {', '.join(TRACR_MODELS)}")
    spec, meta = load_tracr(name)
    tok = TracrTokenizer(meta)
    pm = PatchableModel(spec)
    gen = torch.Generator().manual_seed(int(seed))
    alphabet, length = (("a", "b", "c"), 3) if name == "reverse" else (("w", "x", "y", "z"), 4)
    seqs = [list(s) for s in itertools.product(alphabet, repeat=length)]
    n = _TRACR_DEFAULT_SEQUENCES[name] if n_sequences is None else n_sequences
    if n is not None:
        if not 2 <= n <= len(seqs):
            raise ConfigError(f"n_sequences for tracr-{name} must be in 2..{len(seqs)}; got {n}")
        pick = torch.randperm(len(seqs), generator=gen)[:n].sort().values
        seqs = [seqs[i] for i in pick]
    ids = tok.encode(seqs)  # (N, T)
    corrupted = ids[_derangement(len(seqs), gen)]  # (N, T)
    n_pos = ids.shape[1] - 1  # outputs at positions 1..T-1
    clean_ids = ids.repeat_interleave(n_pos, dim=0)  # (N * P, T)
    corrupted_ids = corrupted.repeat_interleave(n_pos, dim=0)
    positions = torch.arange(1, n_pos + 1).repeat(len(seqs))  # (N * P,)
    none = torch.zeros(len(positions), 0, dtype=torch.long)  # no answer tokens: only model-based metrics
    task = Task(
        name=f"tracr-{name}",
        clean_ids=clean_ids,
        corrupted_ids=corrupted_ids,
        attention_mask=torch.ones_like(clean_ids),
        answer_pos=positions,
        answers=none,
        wrong_answers=none,
        seed=seed,
    )
    with torch.no_grad():
        ref = pm.forward(clean_ids, pm.ablation("zero"), pm.graph.full_mask(), positions=positions)  # (B, V)
    return TracrSetup(name, pm, task, output_mse(ref), meta)


def tracr_ground_truth(meta: dict[str, Any], ablation: Ablation | str) -> tuple[str, list[str]]:
    """Which of the fixture's ground truths to score ACDC against under ``ablation``, and its edges.

    * resample / mean: ``ground_truth``, the RASP data flow. The auxiliary edges (``ground_truth_aux``) carry
      only input-independent values ('one', BOS attention), which resampling cannot change.
    * zero: ``ground_truth_acdc``, the circuit ACDC's reference code scores its zero-ablation runs against;
      it is ``ground_truth`` plus the auxiliary edges whose zeroing changes the output (for reverse:
      ``input->a0.h0<v>`` and ``input->m0``; ``ground_truth`` + all of ``ground_truth_aux`` would also count
      three edges whose zeroing changes nothing).

    Example:
        >>> from circuitfind.models.tracr import load_tracr
        >>> tracr_ground_truth(load_tracr("reverse")[1], "zero")[0]
        'ground_truth_acdc'
    """
    kind = Ablation.parse(ablation)
    key = "ground_truth_acdc" if kind is Ablation.ZERO else "ground_truth"
    return key, list(meta[key])


def _reproduce_tracr(
    name: str, thresholds: Sequence[float], out_dir: Path, n_sequences: int | None, seed: int, log: Callable
) -> dict[str, Any]:
    from circuitfind.evaluate import auc, roc_from_circuits
    from circuitfind.threshold_sweeps import roc_sweep

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
    stem = f"roc_tracr-{setup.name}"
    curves = {f"{abl} ablation vs {r['ground_truth']}": r for abl, r in runs.items()}
    figure = _plot_roc(curves, f"ACDC on tracr-{setup.name} (L2 metric)", out_dir / f"{stem}.png")
    return _finish(data, out_dir / f"{stem}.json", figure)


# --- language models ---------------------------------------------------------------------------------------
def _paper_truth(task_name: str) -> Callable | None:
    from circuitfind.tasks.ground_truth import greater_than_ground_truth, ioi_ground_truth

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
    from circuitfind.models import load_model
    from circuitfind.tasks import get_task
    from circuitfind.threshold_sweeps import roc_sweep

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
    figure = _plot_roc(
        {"ACDC, KL, resample": res}, f"ACDC on GPT-2 small: {task_name}", out_dir / f"roc_{task_name}_gpt2.png"
    )
    return _finish(data, out_dir / f"roc_{task_name}_gpt2.json", figure)


def _model_label(model_name: str | None) -> str:
    from circuitfind.models.loading import DEFAULT_MODEL_ALIASES

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
    from circuitfind.evaluate import faithfulness
    from circuitfind.models import load_model
    from circuitfind.tasks import get_task
    from circuitfind.threshold_sweeps import threshold_sweep

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
    figure = _plot_faithfulness(
        points, f"ACDC on {label}: {task.name}", out_dir / f"faithfulness_{task.name}_{label}.png"
    )
    return _finish(data, json_path, figure)


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
    """Run the ACDC threshold sweep of the paper and write its curve (PNG) and points (JSON).

    Args:
        task_name: ``ioi``, ``greater-than`` or ``induction``; for tracr, ``reverse`` / ``proportion`` (or the
            ``tracr-`` names, in which case ``model_name`` may stay at its default).
        model_name: ``"gpt2"`` (ROC against the paper's circuits), ``None`` / ``"default"`` (faithfulness curve
            on SmolLM2-135M), another model name (faithfulness curve), or ``"tracr-reverse"`` /
            ``"tracr-proportion"`` (ROC against the compiled circuit, zero and resample ablation).
        thresholds: the ACDC thresholds; default :data:`DEFAULT_THRESHOLDS` (1e-4 .. 1, log-spaced).
        out_dir: where the figure, the JSON and the cached circuits (``circuits/``) go.
        n_prompts: prompts (tracr: input sequences); default 100 for GPT-2 (the paper's), 40 for other
            models (half held out), every / 64 sequences for tracr reverse / proportion.
        seed: seeds the task data.
        progress: print one line per threshold to stderr.
        device: where to run the language models (default CPU); tracr models run on the CPU.

    Returns:
        the data written to the JSON, plus ``"json"`` and ``"figure"`` paths (``figure`` is None when
        matplotlib is missing).

    Raises:
        ModelLoadError: GPT-2 small is not available locally (the message says how to get it).
        ConfigError: an unknown task / model combination.

    Example:
        >>> res = reproduce("reverse", "tracr-reverse", out_dir="figures")  # doctest: +SKIP
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
    from circuitfind.models.tracr import TRACR_MODELS

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


def _finish(data: dict[str, Any], json_path: Path, figure: Path | None) -> dict[str, Any]:
    data["figure"] = None if figure is None else str(figure)
    _write_json(json_path, data)
    return {**data, "json": str(json_path)}


def new_figure(size: tuple[float, float]):
    """A pyplot-free matplotlib figure (the Agg canvas; no global backend change), or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _plot_roc(curves: dict[str, dict[str, Any]], title: str, path: Path) -> Path | None:
    fig = new_figure((4.8, 4.5))
    if fig is None:
        return None
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    for label, res in curves.items():
        ax.plot(res["fpr"], res["tpr"], marker="o", ms=3, label=f"{label} (AUC {res['auc']:.3f})")
    ax.set(xlabel="false positive rate (edges)", ylabel="true positive rate (edges)", title=title)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _plot_faithfulness(points: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    fig = new_figure((5.2, 4.0))
    if fig is None or not points:
        return None
    ax = fig.add_subplot()
    pts = sorted(points, key=lambda p: p["fraction"])
    xs = [max(p["fraction"], 1e-6) for p in pts]
    ax.plot(xs, [p["faithfulness"] for p in pts], marker="o")
    for p, x in zip(pts, xs, strict=True):
        ax.annotate(
            f"τ={p['threshold']:.2g}", (x, p["faithfulness"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    ax.axhline(1.0, ls=":", color="grey", lw=1)
    ax.axhline(0.0, ls=":", color="grey", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="circuit size (fraction of edges)", ylabel="held-out faithfulness (task metric)", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --- command line ------------------------------------------------------------------------------------------
def add_reproduce_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to a CLI's subparsers; its handler (``handler=``) is :func:`run_reproduce`.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> p = add_reproduce_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["reproduce", "ioi", "--model", "smollm2"]).model
        'smollm2'
    """
    p = subparsers.add_parser(
        "reproduce",
        help="the ACDC paper's threshold sweep: ROC against known circuits (gpt2, tracr) or a faithfulness curve",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("task", help="ioi | greater-than | induction | tracr-reverse | tracr-proportion")
    p.add_argument(
        "--model",
        default="gpt2",
        metavar="NAME",
        help="gpt2 (default; ROC, needs the weights in the local HF cache) | smollm2 (the offline default model: "
        "faithfulness curve) | another HF id or folder (faithfulness curve) | tracr-reverse | tracr-proportion",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cpu)")
    p.add_argument("--thresholds", type=float, nargs="+", default=None, help="ACDC thresholds (default 1e-4 .. 1)")
    p.add_argument("--out-dir", default="figures", help="where figures, JSON and cached circuits go")
    p.add_argument("--n-prompts", type=int, default=None, help="prompts (tracr: input sequences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-threshold progress lines")
    p.set_defaults(handler=run_reproduce)
    return p


def run_reproduce(args: argparse.Namespace) -> int:
    """Run :func:`reproduce` from parsed arguments and print where the results went; returns 0.

    A :class:`~circuitfind.errors.CircuitfindError` is let through for the CLI's ``main`` to report.
    """
    res = reproduce(
        args.task,
        args.model,
        thresholds=args.thresholds,
        out_dir=args.out_dir,
        n_prompts=args.n_prompts,
        seed=args.seed,
        progress=args.progress,
        device=args.device,
    )
    if "runs" in res:
        for abl, run in res["runs"].items():
            print(f"{res['model']} {abl}: AUC {run['auc']:.3f} vs {run['ground_truth']}")
    elif "auc" in res:
        print(f"{res['task']} {res['model']}: AUC {res['auc']:.3f}")
    else:
        for p in res["points"]:
            size = f"{p['n_edges']} edges ({100 * p['fraction']:.2f}%)"
            print(f"threshold {p['threshold']:.3g}: {size}, faithfulness {p['faithfulness']:.3f}")
    print(f"wrote {res['json']}" + (f" and {res['figure']}" if res["figure"] else ""))
    return 0
