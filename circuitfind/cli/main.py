"""The ``circuitfind`` command line, thin over the Python API.

Subcommands::

    circuitfind discover --task ioi --threshold 0.01 --out runs/ioi     # find a circuit, write JSON/DOT/SVG
    circuitfind info [--model NAME]                                      # the model's family and graph size
    circuitfind info --supported                                         # every supported model_type (Markdown)
    circuitfind reproduce tracr-reverse                                  # the ACDC paper's sweep, JSON + PNG
    circuitfind view runs/ioi/circuit.json                               # the circuit's explorer, one HTML file
    circuitfind heads --task ioi                                         # every head's role scores
    circuitfind heads --task ioi --classes                               # IOI head classes by path patching
    circuitfind diff --model A --model-b B --task ioi                    # two models' circuits and nodes compared
    circuitfind sweep spec.json [--table]                                # a grid of runs on Ray (circuitfind.sweeps)
    circuitfind report --task ioi --n-boot 20 --out runs/ioi-report      # discover + validate: report.{json,html}
    circuitfind scrub runs/ioi/circuit.json --task ioi                   # causal scrubbing of a saved circuit

Each subcommand is a builder ``add(subparsers)`` that adds its parser (``parents=[common_options()]`` gives it
--model, --device and --no-progress) and sets ``handler=fn`` with ``set_defaults``, where ``fn(args) -> int``
returns the exit code; a :class:`~circuitfind.errors.CircuitfindError` it lets through is reported by
:func:`main`. Builders live in :data:`SUBCOMMANDS`. Handlers only parse, call the library and print (and
``reproduce`` draws its figure through :mod:`circuitfind.cli.plots`).

Exit codes: 0 success, 2 a usage error or any :class:`~circuitfind.errors.CircuitfindError` (printed as
``error: ...`` on stderr, no traceback), 130 interrupted with Ctrl-C, 143 stopped by SIGTERM (in both cases
``discover`` keeps a checkpoint to resume). ``discover`` locks its output folder for the length of the run and
checks that it can write there before it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from circuitfind.algorithms import ACDC, METHODS, SenderOrder, given_options, method_of
from circuitfind.engine.ablations import Ablation
from circuitfind.errors import CheckpointError, CircuitfindError, OutputError, RenderError, TaskError
from circuitfind.fileio import atomic_write, check_writable, lock_folder
from circuitfind.metrics import MetricKind
from circuitfind.sweeps.command import add_sweep_parser
from circuitfind.tasks import BUILTIN, is_task_file, resolve_task, split_task
from circuitfind.tasks.resolve import DEFAULT_HELD_OUT, DEFAULT_N_PROMPTS

__all__ = ["SUBCOMMANDS", "build_parser", "common_options", "main"]

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 130, 143
LOW_RECOVERY = 0.5  # below this fraction of the metric recovered, the summary suggests a lower threshold
CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # pickles of earlier versions: refused, never opened


# --- argument types ---------------------------------------------------------------------------------------------
def _threshold(text: str) -> float:
    """A threshold tau: a number >= 0 (``inf`` removes every edge); NaN and negatives are rejected."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 such as 0.01; got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a number >= 0 (typical values 0.001-0.1 for kl; 'inf' removes every edge); got {text!r}"
        )
    return value


def _fraction(text: str) -> float:
    """A faithfulness target in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] such as 0.8; got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of the metric to keep); got {text!r}")
    return value


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value

    return parse


_non_negative_int = _int_at_least(0, "an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")


# --- shared helpers -----------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The :class:`PatchableModel` of ``--model`` and its tokenizer (``--tokenizer`` when given)."""
    from circuitfind.engine.patchable import resolve_model

    return resolve_model(
        args.model,
        getattr(args, "tokenizer", None),
        device=args.device,
        progress=args.progress,
        dtype=getattr(args, "dtype", None),
    )


def _model_label(args: argparse.Namespace) -> str:
    # "smollm2" is an alias load_model accepts, so a saved circuit names a model it can be reloaded from.
    return args.model if args.model is not None else "smollm2"


def _check_task_arg(task: str) -> None:
    """Fail on an unknown task name or a missing file before the (possibly slow) model load."""
    if is_task_file(task):
        from circuitfind.tasks.jsonio import check_task_file

        try:
            check_task_file(task)
        except TaskError as e:
            raise TaskError(f"{e} (or one of the built-in tasks {_builtins()})") from None
    elif task.strip().lower().replace("_", "-") not in BUILTIN:
        raise TaskError(
            f"unknown task {task!r}; built-in tasks are {_builtins()}, or pass a .json/.jsonl file of prompts "
            "(format: circuitfind.tasks.jsonio)"
        )


def _builtins() -> str:
    return ", ".join(sorted(BUILTIN))


# --- discover -----------------------------------------------------------------------------------------------------
def _add_method_options(p: argparse.ArgumentParser) -> None:
    """--method and how its scores become a circuit (--threshold, --target, --n-edges, --steps)."""
    methods = "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items())
    p.add_argument(
        "--method", choices=list(METHODS), default="acdc", help=f"discovery method (default: acdc). {methods}"
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        metavar="T",
        help="acdc: tau, >= 0 (default 0.01); eap/eap-ig/eap-ig-mask/exact: keep edges whose score (loss change "
        "when removed) is above T; hybrid: the pruning tau in loss units (default: 1%% of the full-to-empty gap)",
    )
    p.add_argument(
        "--target",
        type=_fraction,
        default=None,
        metavar="F",
        help="faithfulness in (0, 1] the circuit must reach: the smallest top-k by score that does (default 0.8 "
        "for the scoring methods and hybrid); checked on prompts the scores never saw, see --select",
    )
    p.add_argument(
        "--select",
        choices=("validate", "train"),
        default=None,
        help="how --target chooses the size of a scoring method's circuit: validate (default; cross-fitted over "
        "up to 4 folds of the discovery prompts, never checked on the prompts that scored it) or train (checked on "
        "the discovery prompts themselves, the rule before validation)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=None,
        metavar="C",
        help="with --select validate: the bootstrap lower bound of the validation faithfulness at confidence C "
        "(e.g. 0.9) must reach --target, instead of its point estimate",
    )
    p.add_argument(
        "--band",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="two-sided target, e.g. 0.8 1.25: LO is the target; a circuit that over-recovers past HI gets the most "
        "negative excluded edges added back until it does not",
    )
    p.add_argument(
        "--n-edges", type=_positive_int, default=None, metavar="N", help="keep the N top-scoring edges instead"
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="integration steps of eap-ig, eap-ig-mask, eap-ig-act and hybrid (default: 5); training steps of "
        "edge-pruning (default: 200)",
    )
    p.add_argument("--lr", type=float, default=None, help="edge-pruning: learning rate of the gate logits (0.1)")
    p.add_argument(
        "--warm-start",
        action="store_const",
        const=True,
        default=None,
        help="edge-pruning: start the gates from EAP-IG scores",
    )


def _add_unit_options(p: argparse.ArgumentParser) -> None:
    """--level, --n-nodes and --by-position: what a scoring method scores and cuts."""
    p.add_argument(
        "--level",
        choices=["edge", "node"],
        default=None,
        help="eap/eap-ig/eap-ig-mask/exact: score and cut single edges (default) or nodes (heads, MLPs, input)",
    )
    p.add_argument("--n-nodes", type=_positive_int, default=None, metavar="N", help="--level node: keep N nodes")
    p.add_argument(
        "--by-position",
        action="store_const",
        const=True,
        default=None,
        help="eap/eap-ig/eap-ig-mask: score and cut (sender, receiver, position) edges; prompts of one template",
    )


def _add_discover(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "discover",
        parents=[common_options()],
        help="find a circuit and write circuit.json, circuit.dot (and circuit.svg with graphviz)",
        description="Find the circuit of a model on a task and write DIR/circuit.json, DIR/circuit.dot and, "
        "when graphviz's `dot` is installed, DIR/circuit.svg. Progress is checkpointed to "
        f"DIR/{CHECKPOINT_NAME}; after Ctrl-C or SIGTERM, run the same command with --resume. One run at a time "
        "may use DIR (it is locked while a run writes there).",
    )
    p.add_argument(
        "--task",
        required=True,
        help=f"a built-in task ({_builtins()}) or a .json/.jsonl file of prompt pairs (strings, or token ids: "
        "clean_ids, corrupted_ids, answer_ids, which need no tokenizer)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH_OR_ID",
        help="a tokenizer folder or Hugging Face id, for a --model folder saved without one (default: the model's)",
    )
    _add_method_options(p)
    _add_unit_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--metric", choices=[m.value for m in MetricKind], default="kl", help="default: kl")
    p.add_argument("--ablation", choices=[a.value for a in Ablation], default="resample", help="default: resample")
    p.add_argument(
        "--n-prompts",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"prompt pairs: generated for a built-in task (default: {DEFAULT_N_PROMPTS}); the first N of a "
        "task file (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of a built-in task's prompts (default: 0)")
    p.add_argument(
        "--held-out",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="N more prompts that discovery never sees, to report the circuit's held-out faithfulness (default: "
        f"{DEFAULT_HELD_OUT} more generated prompts for a built-in task; for a task file the N prompts after "
        "the discovery ones, default 0)",
    )
    p.add_argument(
        "--absolute",
        action="store_const",
        const=True,
        default=None,
        help="remove an edge when |change| < T rather than change < T; cuts rank by |score|",
    )
    p.add_argument("--sender-order", choices=[o.value for o in SenderOrder], default=None, help="default: normal")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="K",
        help="candidate removals per forward (default: 1 on CPU, 8 on GPU)",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="prompts per forward pass: less memory, same result (default: as many as fit 1 GiB of activations)",
    )
    p.add_argument("--resume", action="store_true", help=f"continue from DIR/{CHECKPOINT_NAME}")
    p.add_argument("--html", action="store_true", help="also write DIR/circuit.html, the interactive explorer")
    p.set_defaults(handler=_run_discover)


def _checkpoint_of(out: Path, resume: bool, checkpointed: bool = True) -> Path:
    """The checkpoint path in ``out``; refuses a leftover checkpoint unless resuming, and an old pickle always."""
    legacy = out / LEGACY_CHECKPOINT_NAME
    if legacy.exists():
        raise CheckpointError(
            f"{legacy} is a checkpoint in the old pickle format, which circuitfind no longer opens (unpickling a "
            f"file can run code); expected {CHECKPOINT_NAME}. Delete it and start over, or use another --out"
        )
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() and not resume:
        raise CheckpointError(
            f"{ckpt} exists from an unfinished run; pass --resume to continue it, or delete it / use another "
            "--out to start over"
        )
    if resume and checkpointed and not ckpt.exists():  # methods without checkpoints (minutes) just run
        print(f"note: no checkpoint at {ckpt}; starting from the beginning", file=sys.stderr)
    return ckpt


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as after Ctrl-C (checkpoint written, lock freed)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """For the duration of the block, SIGTERM raises :class:`_Terminated`; the old handler is restored after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the checkpoint write short
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_discover(args: argparse.Namespace) -> int:
    _check_task_arg(args.task)
    check_writable(args.out)  # before the run: a finished run must not be lost to an unwritable folder
    with lock_folder(args.out), _sigterm_as_interrupt():
        ckpt = _checkpoint_of(args.out, args.resume, method_of(args.method).takes("checkpoint"))
        try:
            circuit, model, task, tokenizer = _find_circuit(args, ckpt)
        except KeyboardInterrupt as e:
            what = "terminated" if isinstance(e, _Terminated) else "interrupted"
            if ckpt.exists():
                print(
                    f"{what}: progress saved to {ckpt}; run the same command with --resume to continue",
                    file=sys.stderr,
                )
            else:
                print(f"{what} before the first receiver was finished; nothing to resume", file=sys.stderr)
            return EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPTED
        written, skipped = _write_results(circuit, args.out, ckpt)
        if args.html:  # the explorer runs the model on the discovery prompts: seconds
            written.append(circuit.to_html(args.out / "circuit.html", model=model, task=task, tokenizer=tokenizer))
        held_out = _held_out_line(circuit, model, task, args)
        # Only now: the checkpoint holds the final state, so a failed write above can still be redone with --resume.
        ckpt.unlink(missing_ok=True)

    print(circuit.summary())
    print(_run_line(circuit.stats))
    validation = _validation_line(circuit.stats)
    if validation is not None:
        print(validation)
    if held_out is not None:
        print(held_out)
    if circuit.recovered < LOW_RECOVERY and issubclass(method_of(args.method).options, ACDC):
        print(
            f"note: the circuit recovers only {round(100 * circuit.recovered)}% of the full model's "
            f"{circuit.config.get('metric', 'metric')} on these prompts. Each removal may cost up to the threshold "
            "and the costs add up, so on a deep model a coarse threshold drifts; try a lower --threshold, or "
            "--method hybrid --target 0.8. circuitfind.stats.trace in circuit.json holds the metric after each "
            "layer of receivers"
        )
    elif circuit.stats.get("reached") is False:
        print(f"note: {circuit.stats.get('note', 'the target was not reached')}")
    if skipped:
        print(skipped)
    print("wrote " + ", ".join(map(str, written)))
    return EXIT_OK


def _run_line(stats: dict[str, Any]) -> str:
    """One line on what the run cost."""
    parts = [f"{stats['wall_time_s']:.1f} s wall"]
    if "edges_tested" in stats:
        rate = stats["edges_tested"] / max(stats.get("acdc_time_s", stats["wall_time_s"]), 1e-9)
        parts.append(
            f"{stats.get('forward_passes', 0):,} forward passes, {stats['edges_tested']:,} edges tested "
            f"({rate:,.1f} edges/s)"
        )
    if "probes" in stats:
        parts.append(f"{len(stats['probes'])} exact faithfulness probes")
    if "peak_memory" in stats:
        peak = stats["peak_memory"]
        parts.append(f"peak {'memory' if peak['kind'] == 'rss' else peak['device']} {peak['mib']:,.0f} MiB")
    return ", ".join(parts)


def _held_out_line(circuit: Any, model: Any, task: Any, args: argparse.Namespace) -> str | None:
    """The circuit's faithfulness on the task's held-out prompts, when it has some (built-in tasks do)."""
    if task.n_train is None or task.n_train >= len(task):
        return None
    from circuitfind.evaluate.circuits import faithfulness

    result = faithfulness(model, circuit, task, metric=args.metric, ablation=args.ablation)
    return "\n".join(faithfulness_lines("held-out faithfulness", result, "prompts not used for discovery"))


def faithfulness_lines(label: str, result: dict[str, Any], where: str) -> list[str]:
    """A faithfulness with its interval and its two-sided reading, as printed lines.

    Example:
        >>> row = {"faithfulness": 1.3, "ci": {"lo": 1.1, "hi": 1.5, "level": 0.95}, "deviation": 0.3,
        ...        "over_recovery": True, "n_prompts": 20, "metric": "logit_diff",
        ...        "excluded_negative": [{"edge": "a9.h1->logits", "score": -0.4}]}
        >>> for line in faithfulness_lines("held-out faithfulness", row, "held-out prompts"):
        ...     print(line)
        held-out faithfulness: 1.300 [95% CI 1.100, 1.500] on 20 held-out prompts (logit_diff); |1 - f| = 0.300
        over-recovers (f > 1): edges it excludes work against the behaviour; most negative: a9.h1->logits (-0.4)
    """
    ci = result.get("ci") or {}
    interval = f" [{100 * ci['level']:.0f}% CI {ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else ""
    lines = [
        f"{label}: {result['faithfulness']:.3f}{interval} on {result['n_prompts']} {where} ({result['metric']}); "
        f"|1 - f| = {abs(1 - result['faithfulness']):.3f}"
    ]
    if result.get("over_recovery"):
        worst = ", ".join(f"{e['edge']} ({e['score']:.3g})" for e in result.get("excluded_negative", [])[:5])
        lines.append(
            "over-recovers (f > 1): edges it excludes work against the behaviour"
            + (f"; most negative: {worst}" if worst else "")
        )
    return lines


def _validation_line(stats: dict[str, Any]) -> str | None:
    """The validated cut's figure: the size's faithfulness on prompts its scores never saw."""
    val = stats.get("validation")
    if not val:
        return None
    lo, hi = val["ci"]
    return (
        f"validation faithfulness (size chosen by cross-fitting over {val['folds']} folds): {val['faithfulness']:.3f} "
        f"[{100 * val['ci_level']:.0f}% CI {lo:.3f}, {hi:.3f}] on {val['n_prompts']} discovery prompts, each "
        "checked with scores computed without its fold"
    )


def _task_with_held_out(args: argparse.Namespace, tokenizer: Any) -> Any:
    """The task: ``--n-prompts`` for discovery, then ``--held-out`` more prompts that discovery never sees."""
    return split_task(args.task, tokenizer, n_prompts=args.n_prompts, held_out=args.held_out, seed=args.seed)


def _find_circuit(args: argparse.Namespace, ckpt: Path) -> tuple[Any, Any, Any, Any]:
    """The circuit, and the model, task and tokenizer it was found with."""
    from circuitfind.discovery import discover

    model, tokenizer = _load(args)
    task = _task_with_held_out(args, tokenizer)
    if is_task_file(args.task):  # ids above this model's vocabulary: name the file (a folder may have no tokenizer)
        from circuitfind.tasks import check_task_fits

        check_task_fits(task, model.spec, label=f"task file {args.task}")
    options = discover_options(args)
    if method_of(args.method).takes("checkpoint"):  # the command line checkpoints to DIR
        options.update(checkpoint=ckpt, resume=args.resume)
    circuit = discover(
        model,
        task,
        args.method,
        metric=args.metric,
        ablation=args.ablation,
        tokenizer=tokenizer,
        progress=args.progress,
        **options,
    )
    circuit = circuit.replace(model=_model_label(args))
    if not is_task_file(args.task):
        circuit = circuit.with_config(seed=args.seed)
    return circuit, model, task, tokenizer


def _write_results(circuit: Any, out: Path, ckpt: Path) -> tuple[list[Path], str | None]:
    """Write circuit.json, circuit.dot and (with graphviz) circuit.svg; returns them and a note on a skipped SVG.

    A failed write (full disk, lost permissions) becomes an error that says where the finished run is kept.
    """
    try:
        written = [circuit.save(out / "circuit.json"), atomic_write(out / "circuit.dot", circuit.to_dot())]
        skipped = _render_svg(circuit, out / "circuit.svg", written)
    except OSError as e:
        target = f" {e.filename}" if e.filename else ""
        kept = (
            f"The finished run is kept in {ckpt}: free space or fix the folder, then run the same command with "
            "--resume to write the results without recomputing them"
            if ckpt.exists()
            else "No checkpoint could be kept; rerun once the folder is writable"
        )
        raise OutputError(
            f"the run finished but writing its results{target} in {out} failed: {e.strerror or e}. {kept}"
        ) from None
    return written, skipped


def _render_svg(circuit: Any, path: Path, written: list[Path]) -> str | None:
    """Render the SVG when graphviz is there; returns the line to print when it was skipped."""
    if shutil.which("dot") is None:
        return (
            "SVG skipped: graphviz's `dot` is not installed (apt-get install graphviz, conda install -c "
            "conda-forge graphviz, or brew install graphviz); circuit.dot holds the graph"
        )
    try:
        written.append(circuit.render(path))
    except RenderError as e:
        return f"SVG skipped: {e}"
    return None


# --- info ---------------------------------------------------------------------------------------------------------
def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        parents=[common_options()],
        help="load a model and print its architecture family and graph size",
        description="Load a model and print its adapter family and the size of its graph (senders, receivers, edges); "
        "with --supported, print the table of every supported model_type instead (nothing is loaded).",
    )
    p.add_argument(
        "--supported",
        action="store_true",
        help="print every supported model_type with a reference model and its graph size, as Markdown (the "
        "README's table)",
    )
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from circuitfind.models import REFERENCES
    from circuitfind.models.support import support_markdown, support_row

    if args.supported:
        print(support_markdown())
        return EXIT_OK
    pm, _ = _load(args)
    model = pm.module
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model:  {_model_label(args)} ({type(model).__name__}, {n_params / 1e6:,.1f}M parameters)")
    print(f"family: {pm.spec.family} (model_type {model_type!r})")
    print(f"graph:  {pm.graph.describe()}")
    print(f"device: {pm.device}, dtype {str(pm.dtype).removeprefix('torch.')}")
    if model_type in REFERENCES:
        ref = support_row(model_type)
        print(f"reference of this model_type: {ref.reference}, {ref.n_edges:,} edges (circuitfind info --supported)")
    return EXIT_OK


# --- reproduce ----------------------------------------------------------------------------------------------------
def _add_reproduce(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="the ACDC paper's threshold sweep: ROC against known circuits (gpt2, tracr) or a faithfulness curve",
        description="Reproduce the ACDC paper's threshold sweeps: ROC curves against known circuits (GPT-2 small, "
        "tracr), or held-out faithfulness curves (other models). Writes the points as JSON and, with matplotlib, "
        "the curve as PNG.",
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
    p.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from circuitfind.cli.plots import plot_reproduction
    from circuitfind.reproduce.paper import reproduce

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
    figure = plot_reproduction(res)
    print(f"wrote {res['json']}" + (f" and {figure}" if figure else " (no figure: matplotlib is not installed)"))
    return EXIT_OK


# --- view ---------------------------------------------------------------------------------------------------------
def _add_view(subparsers: argparse._SubParsersAction) -> None:
    from circuitfind.viewer import DEFAULT_MAX_EDGES, DEFAULT_MAX_PROMPTS

    p = subparsers.add_parser(
        "view",
        parents=[common_options()],
        help="write a circuit's interactive explorer: one offline HTML file",
        description="Write the interactive explorer of a saved circuit (circuit.json) as one self-contained HTML "
        "file. With the model and task it also shows attention heatmaps, direct effects and head roles. --model "
        "defaults to the model recorded in the circuit, --task to its task (a built-in task is regenerated with "
        "the recorded prompt count and seed).",
    )
    p.add_argument("circuit", type=Path, help="a circuit.json written by `circuitfind discover` or Circuit.save")
    p.add_argument("--task", default=None, help="a built-in task or a .json/.jsonl task file (default: the circuit's)")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: next to the circuit, .html)")
    p.add_argument("--no-model", action="store_true", help="graph, slider, curve and run record only; no model run")
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="a report.json of `circuitfind report`: colour edges by inclusion frequency (default: the "
                   "report.json beside the circuit, when there is one)")  # fmt: skip
    p.add_argument(
        "--max-edges",
        type=_positive_int,
        default=DEFAULT_MAX_EDGES,
        metavar="N",
        help=f"top edges to embed, the slider's range (default {DEFAULT_MAX_EDGES})",
    )
    p.add_argument(
        "--max-prompts",
        type=_positive_int,
        default=DEFAULT_MAX_PROMPTS,
        metavar="N",
        help=f"task prompts to embed (default {DEFAULT_MAX_PROMPTS})",
    )
    p.set_defaults(handler=_run_view)


def _run_view(args: argparse.Namespace) -> int:
    import time

    from circuitfind.circuit import Circuit

    t0 = time.perf_counter()
    circuit = Circuit.load(args.circuit)
    out = args.out or args.circuit.with_suffix(".html")
    kwargs: dict[str, Any] = {"max_edges": args.max_edges, "max_prompts": args.max_prompts}
    kwargs["frequency"] = _report_frequency(args.report, args.circuit)
    if not args.no_model:
        task = args.task or circuit.config.get("task")
        if not task:
            raise TaskError("the circuit records no task; pass --task NAME_OR_FILE, or --no-model")
        if args.model is None and circuit.model:
            args.model = circuit.model
        pm, tokenizer = _load(args)
        kwargs.update(model=pm, task=task, tokenizer=tokenizer)
    path = circuit.to_html(out, **kwargs)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.2f} MB) in {time.perf_counter() - t0:.1f} s; open it in a browser (no server needed)")
    return EXIT_OK


def _stage_printer() -> Callable[[str], None]:
    """Prints each report stage as it starts, with the seconds since the first (a run cut short shows where)."""
    import time

    t0 = time.perf_counter()
    return lambda s: print(f"report: {s} (at {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def _report_frequency(report: Path | None, circuit_path: Path) -> dict[str, float] | None:
    """Edge inclusion frequencies from ``--report`` or a report.json beside the circuit (None without one)."""
    import json

    path = report if report is not None else circuit_path.with_name("report.json")
    if not path.is_file():
        if report is not None:
            raise OutputError(f"--report {report}: no such file; pass the report.json `circuitfind report` wrote")
        return None
    try:
        return dict(json.loads(path.read_text())["stability"]["edge_frequency"])
    except (ValueError, KeyError, TypeError) as e:
        raise OutputError(
            f"{path} is not a report.json of `circuitfind report` (no stability.edge_frequency: {e})"
        ) from None


# --- heads --------------------------------------------------------------------------------------------------------
def _add_heads(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heads",
        parents=[common_options()],
        help="score every attention head's role: previous-token, duplicate-token, induction, copying, direct effect",
        description="Score every attention head: previous-token, duplicate-token and induction attention on "
        "repeated random tokens, copying through its OV circuit and the unembedding, and (with --task) its direct "
        "effect on the task's logit difference. Prints the top heads per role; --all prints every head.",
    )
    p.add_argument("--task", default=None, help="a built-in task or task file, for the direct-effect column")
    p.add_argument("--n-prompts", type=_positive_int, default=DEFAULT_N_PROMPTS, metavar="N", help="task prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens and the task (default 0)")
    p.add_argument("--top", type=_positive_int, default=5, metavar="N", help="heads shown per role (default 5)")
    p.add_argument("--all", action="store_true", help="print the full table, one row per head")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the table as JSON")
    p.add_argument(
        "--classes",
        action="store_true",
        help="classify the heads on an IOI --task by path patching (name movers, S-inhibition, induction, ...)",
    )
    p.add_argument("--csv", type=Path, default=None, metavar="PATH", help="--classes: also write the table as CSV")
    for name, doc in (("effect", "path effect, fraction of the logit difference"), ("attention", "attention"),
                      ("copying", "OV copying score")):  # fmt: skip
        p.add_argument(f"--{name}-threshold", type=float, default=None, help=f"--classes: {doc} threshold")
    p.set_defaults(handler=_run_heads)


def _run_heads(args: argparse.Namespace) -> int:
    import json
    import time

    from circuitfind.analysis import COLUMNS, head_roles

    if args.task is not None:
        _check_task_arg(args.task)
    t0 = time.perf_counter()
    pm, tokenizer = _load(args)
    t_load = time.perf_counter() - t0
    task = None if args.task is None else resolve_task(args.task, tokenizer, n=args.n_prompts, seed=args.seed)
    if args.classes:
        return _run_head_classes(args, pm, task, t_load)
    bos = getattr(tokenizer, "bos_token_id", None)
    roles = head_roles(pm, task, bos=bos if isinstance(bos, int) else None, seed=args.seed)
    print(_roles_table(roles) if args.all else _top_heads(roles, args.top))
    print()
    for column, doc in COLUMNS.items():
        print(f"{column}: {doc}")
    n_heads = roles.n_layers * roles.n_heads
    print(f"model load {t_load:.1f} s, head roles {time.perf_counter() - t0 - t_load:.1f} s ({n_heads} heads)")
    if args.json is not None:
        print(f"wrote {atomic_write(args.json, json.dumps(roles.to_dict(), indent=1))}")
    return EXIT_OK


def _run_head_classes(args: argparse.Namespace, pm: Any, task: Any, t_load: float) -> int:
    import json
    import time

    from circuitfind.analysis import CLASSES, ClassThresholds, head_classes

    if task is None:
        raise TaskError("--classes needs an IOI task: pass --task ioi (or an IOI task file)")
    given = {k: getattr(args, f"{k}_threshold") for k in ("effect", "attention", "copying")}
    thresholds = ClassThresholds(**{k: v for k, v in given.items() if v is not None})
    t0 = time.perf_counter()
    hc = head_classes(pm, task, thresholds=thresholds, seed=args.seed, progress=args.progress)
    rows = hc.rows()
    for cls, doc in CLASSES.items():
        members = [r for r in rows if r["class"] == cls]
        cells = ", ".join(f"{r['head']} ({r[f'score_{cls}']:.2f})" for r in members) or "-"
        print(f"{cls:<20} {cells}\n{'':<20} ({doc})")
    if args.all:
        cols = [c for c in rows[0] if c not in ("layer", "index")]
        print("\n" + "  ".join(f"{c:>10.10}" for c in cols))
        for r in rows:
            print("  ".join(f"{r[c]:>10.4f}" if isinstance(r[c], float) else f"{r[c]!s:>10.10}" for c in cols))
    t = hc.thresholds
    print(f"\nthresholds: effect {t.effect}, attention {t.attention}, copying {t.copying}; class score = weakest "
          f"condition / its threshold, >= 1 assigns")  # fmt: skip
    print(f"model load {t_load:.1f} s, head classes {time.perf_counter() - t0:.1f} s ({len(rows)} heads, "
          f"{hc.settings['n_prompts']} prompts)")  # fmt: skip
    if args.json is not None:
        print(f"wrote {atomic_write(args.json, json.dumps(hc.to_dict(), indent=1))}")
    if args.csv is not None:
        print(f"wrote {atomic_write(args.csv, hc.to_csv())}")
    return EXIT_OK


def _top_heads(roles: Any, n: int) -> str:
    """The top ``n`` heads of every role (direct effect by size), one line per role."""
    width = max(len(c) for c in roles.scores)
    lines = []
    for column in roles.scores:
        top = roles.top(column, n, absolute=column == "direct_effect")
        cells = "  ".join(f"{name:<7} {score:+.3f}" for name, score in top) or "(no task: not measured)"
        lines.append(f"{column:<{width}}  {cells}")
    return "\n".join(lines)


def _roles_table(roles: Any) -> str:
    cols = list(roles.scores)
    lines = ["head     " + "  ".join(f"{c:>15}" for c in cols)]
    lines += [f"{r['head']:<8} " + "  ".join(f"{r[c]:>15.4f}" for c in cols) for r in roles.rows()]
    return "\n".join(lines)


# --- diff ---------------------------------------------------------------------------------------------------------
def _add_diff(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diff",
        parents=[common_options()],
        help="compare two models of the same structure on a task: circuits, weights, activations, log-probs",
        description="Find both models' circuits on a task with one method and compare them (Jaccard, edges only in "
        "A / only in B), and compare the models node by node: weight difference norms, output differences on the "
        "task's prompts, and the largest per-token log-prob differences. --model is A, --model-b is B; they must "
        "share the graph, tokenizer and vocabulary.",
    )
    p.add_argument("--model-b", required=True, metavar="NAME", help="model B (a Hugging Face id or a folder)")
    p.add_argument("--task", required=True, help="a built-in task or a .json/.jsonl task file")
    _add_method_options(p)
    p.set_defaults(method="eap")
    p.add_argument("--metric", choices=[m.value for m in MetricKind], default="kl", help="default: kl")
    p.add_argument("--n-prompts", type=_positive_int, default=DEFAULT_N_PROMPTS, metavar="N", help="task prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of a built-in task's prompts (default 0)")
    p.add_argument("--top", type=_positive_int, default=10, metavar="N", help="rows shown per table (default 10)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the whole diff as JSON")
    p.add_argument("--html", type=Path, default=None, metavar="PATH", help="write the two-model explorer")
    p.set_defaults(handler=_run_diff)


def _run_diff(args: argparse.Namespace) -> int:
    import json
    import time

    from circuitfind.compare import diff
    from circuitfind.engine.patchable import resolve_model

    _check_task_arg(args.task)
    t0 = time.perf_counter()
    pm_a, tok_a = _load(args)
    pm_b, tok_b = resolve_model(args.model_b, device=args.device, dtype=args.dtype, progress=args.progress)
    task = resolve_task(args.task, tok_a, n=args.n_prompts, seed=args.seed)
    d = diff(pm_a, pm_b, task, tokenizer=tok_a, tokenizer_b=tok_b, method=args.method, metric=args.metric,
             top=max(args.top, 20), progress=args.progress, **discover_options(args))  # fmt: skip
    d = dataclasses.replace(d, model_a=_model_label(args), model_b=args.model_b)
    n = args.top
    print(f"circuits ({args.method}): A {d.circuit_a.n_edges} edges, B {d.circuit_b.n_edges}, Jaccard {d.jaccard:.3f}")
    for label, rows, key in (("only in A", d.only_a, "score_a"), ("only in B", d.only_b, "score_b")):
        print(f"{label} ({len(rows)}): " + (", ".join(f"{r['edge']} ({r[key]:+.3g})" for r in rows[:n]) or "-"))
    for label, rows in (("weights ||A-B||", d.weights), ("outputs ||A-B|| per token", d.activations)):
        print(f"{label}: " + ", ".join(f"{r['node']} {r['diff']:.3g} ({r['relative']:.1%})" for r in rows[:n]))
    print("largest log-prob differences (A - B):")
    for r in d.logprobs[:n]:
        print(f"  prompt {r['prompt']} position {r['position']} {r['token']!r}: {r['logprob_a']:.3f} vs "
              f"{r['logprob_b']:.3f} ({r['diff']:+.3f})")  # fmt: skip
    print(f"diff in {time.perf_counter() - t0:.1f} s")
    if args.json is not None:
        print(f"wrote {atomic_write(args.json, json.dumps(d.to_dict(), indent=1))}")
    if args.html is not None:
        print(f"wrote {d.to_html(args.html)}")
    return EXIT_OK


# --- report -------------------------------------------------------------------------------------------------------
def _add_report(subparsers: argparse._SubParsersAction) -> None:
    from circuitfind.validation.completeness import DEFAULT_PROBES

    spare = argparse.ArgumentParser(add_help=False).add_subparsers()
    _add_discover(spare)  # report takes discover's task and method options, whatever discover adds
    p = subparsers.add_parser(
        "report",
        parents=[spare.choices["discover"]],
        conflict_handler="resolve",
        help="discover a circuit and validate it: held-out CI, stability, completeness, minimality, ablations",
        description="Discover a circuit (discover's options; --method defaults to eap-ig here) and run every check "
        "of circuitfind.validation on it: held-out faithfulness with a bootstrap interval, faithfulness vs size, "
        "stability over --n-boot resamples of the prompts, completeness and minimality (IOI paper; --probes masks "
        "each), and the circuit under resample, mean and zero ablation. Prints a table and writes DIR/circuit.json, "
        "DIR/report.json and DIR/report.html (one offline file). DIR is locked while the report runs.",
    )
    p.add_argument("--n-boot", type=_int_at_least(2, "an integer >= 2"), default=20, metavar="N",
                   help="bootstrap resamples of the prompts for stability (default 20)")  # fmt: skip
    p.add_argument("--probes", type=_int_at_least(4, "an integer >= 4"), default=DEFAULT_PROBES, metavar="N",
                   help=f"masks completeness and minimality may each evaluate (default {DEFAULT_PROBES})")  # fmt: skip
    p.add_argument("--boot-seed", type=int, default=0, help="seed of the resamples and random subsets (default 0)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="processes for the stability resamples (default 1)")  # fmt: skip
    p.add_argument("--stability-cut", choices=["size", "same"], default="size",
                   help="the stability resamples and the rediscovery under each other ablation keep the top-k of their "
                   "own scores with k the run's cut (size, default: one scoring pass each) or rerun the run's own cut, "
                   "size search included (same)")  # fmt: skip
    p.add_argument("--check-ablation", choices=[a.value for a in Ablation], default="mean",
                   help="ablation of completeness and minimality (default mean, as in the IOI paper)")  # fmt: skip
    p.add_argument("--classes", type=Path, default=None, metavar="JSON",
                   help="a JSON file {class: [node names]} (e.g. head classes) for completeness")  # fmt: skip
    p.set_defaults(handler=_run_report, method="eap-ig")


def _run_report(args: argparse.Namespace) -> int:
    import json

    from circuitfind.validation.report import Report, build_report, report_table, write_report

    _check_task_arg(args.task)
    classes = json.loads(args.classes.read_text()) if args.classes is not None else None
    check_writable(args.out)
    with lock_folder(args.out):
        model, tokenizer = _load(args)
        task = _task_with_held_out(args, tokenizer)
        opts = {**discover_options(args), "metric": args.metric, "ablation": args.ablation}
        rep = build_report(model, task, method=args.method, n_boot=args.n_boot, probes=args.probes,
                           seed=args.boot_seed, workers=args.workers, check_ablation=args.check_ablation,
                           stability_cut=args.stability_cut,
                           classes=classes, tokenizer=tokenizer, progress=args.progress,
                           on_stage=_stage_printer(), **opts)  # fmt: skip
        circuit = rep.circuit.replace(model=_model_label(args))
        circuit = circuit if is_task_file(args.task) else circuit.with_config(seed=args.seed)
        written = write_report(Report(circuit, {**rep.data, "model": circuit.model}), args.out)
    print(report_table(rep.data))
    print("wrote " + ", ".join(map(str, written)))
    return EXIT_OK


# --- scrub (causal scrubbing; the subcommand lives in circuitfind.scrubbing.command) ------------------------------
def _add_scrub(subparsers: argparse._SubParsersAction) -> None:
    from circuitfind.scrubbing.command import add_scrub_parser

    add_scrub_parser(subparsers, common_options())


# --- parser and entry point ---------------------------------------------------------------------------------------
SubcommandBuilder = Callable[[argparse._SubParsersAction], None]

SUBCOMMANDS: MappingProxyType[str, SubcommandBuilder] = MappingProxyType(
    {
        "discover": _add_discover,
        "info": _add_info,
        "reproduce": _add_reproduce,
        "view": _add_view,
        "heads": _add_heads,
        "diff": _add_diff,
        "sweep": add_sweep_parser,
        "report": _add_report,
        "scrub": _add_scrub,
    }
)
"""The subcommands: name -> ``add(subparsers)``."""


def common_options() -> argparse.ArgumentParser:
    """The options every model-loading subcommand shares, as a parent parser: --model, --device, --dtype,
    --no-progress.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> sub.add_parser("reproduce", parents=[common_options()]).parse_args([]).progress
        True
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="a Hugging Face id (e.g. gpt2), a folder written by save_pretrained, or smollm2 "
        "(default: the offline SmolLM2-135M-Instruct)",
    )
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cpu)")
    common.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="parameter dtype the model is loaded in (default: float32; bfloat16 halves memory)",
    )
    common.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subcommand per entry of :data:`SUBCOMMANDS`.

    Example:
        >>> build_parser().parse_args(["info", "--model", "gpt2"]).model
        'gpt2'
    """
    parser = argparse.ArgumentParser(
        prog="circuitfind", description="Automated circuit discovery for transformer language models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Args:
        argv: the arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on a usage error or a :class:`CircuitfindError` (``error: ...`` on stderr), 130 when
        interrupted.

    Example:
        >>> main(["discover", "--task", "ioi", "--threshold", "0.05", "--out", "runs/ioi"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors; a return code is easier to test
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return args.handler(args)
    except CircuitfindError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())


def discover_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``discover`` options the user gave on the command line (the method's flags default to None, so a flag
    the method does not take is refused only when given), and edge pruning's seed, which is ``--seed``. The one
    builder of ``discover``'s options for ``discover``, ``diff`` and ``report``.

    Example:
        >>> args = build_parser().parse_args(["discover", "--task", "ioi", "--out", "x", "--n-edges", "5"])
        >>> discover_options(args)
        {'n_edges': 5}
    """
    values = {k: v for k, v in vars(args).items() if k not in ("seed", "resume")}  # the prompts' seed; DIR's run
    if values.get("band") is not None:
        values["band"] = tuple(values["band"])
    options = given_options(values, args.method)
    if "seed" in method_of(args.method).fields and getattr(args, "seed", None) is not None:
        options["seed"] = args.seed  # the gates' noise is seeded by --seed
    return options
