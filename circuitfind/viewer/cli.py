"""The ``circuitfind view`` subcommand: a saved circuit to its explorer HTML file.

Registered in :data:`circuitfind.cli.PLUGIN_SUBCOMMANDS`; this module prints, the viewer computes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_view_parser", "run_view"]


def add_view_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``view`` to a CLI's subparsers (handler: :func:`run_view`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_view_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["view", "out/ioi/circuit.json", "--no-model"]).circuit
        PosixPath('out/ioi/circuit.json')
    """
    from circuitfind.cli import common_options
    from circuitfind.viewer import DEFAULT_MAX_EDGES, DEFAULT_MAX_PROMPTS

    p = subparsers.add_parser(
        "view",
        parents=[common_options()],
        help="write a circuit's interactive explorer: one offline HTML file",
        description="Write the interactive explorer of a saved circuit (circuit.json) as one self-contained HTML "
        "file. With the model and task it also shows attention heatmaps, direct effects and head roles. "
        "--model defaults to the model recorded in the circuit, --task to its task (a built-in task is "
        "regenerated with the recorded prompt count and seed).",
    )
    p.add_argument("circuit", type=Path, help="a circuit.json written by `circuitfind discover` or Circuit.save")
    p.add_argument("--task", default=None, help="a built-in task or a .json/.jsonl task file (default: the circuit's)")
    p.add_argument("--out", type=Path, default=None, help="the HTML file (default: next to the circuit, .html)")
    p.add_argument("--no-model", action="store_true", help="graph, slider, curve and run record only; no model run")
    p.add_argument(
        "--max-edges",
        type=int,
        default=DEFAULT_MAX_EDGES,
        metavar="N",
        help=f"top edges to embed, the slider's range (default {DEFAULT_MAX_EDGES})",
    )
    p.add_argument(
        "--max-prompts",
        type=int,
        default=DEFAULT_MAX_PROMPTS,
        metavar="N",
        help=f"task prompts to embed (default {DEFAULT_MAX_PROMPTS})",
    )
    p.set_defaults(handler=run_view)
    return p


def run_view(args: argparse.Namespace) -> int:
    """Load the circuit (and the model and task unless ``--no-model``), write the HTML, print where."""
    from circuitfind.circuit import Circuit
    from circuitfind.errors import ConfigError

    t0 = time.perf_counter()
    circuit = Circuit.load(args.circuit)
    out = args.out or args.circuit.with_suffix(".html")
    kwargs = {"max_edges": args.max_edges, "max_prompts": args.max_prompts}
    if not args.no_model:
        from circuitfind.models import load_model

        task = args.task or circuit.config.get("task")
        if not task:
            raise ConfigError("the circuit records no task; pass --task NAME_OR_FILE, or --no-model")
        model, tokenizer = load_model(args.model or circuit.model or None, device=args.device, progress=args.progress)
        kwargs.update(model=model, task=task, tokenizer=tokenizer)
    path = circuit.to_html(out, **kwargs)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.2f} MB) in {time.perf_counter() - t0:.1f} s; open it in a browser (no server needed)")
    return 0
