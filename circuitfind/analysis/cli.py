"""The ``circuitfind heads`` subcommand: every head's role scores, printed as a table.

Registered in :data:`circuitfind.cli.PLUGIN_SUBCOMMANDS`; this module prints, :mod:`circuitfind.analysis`
computes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["add_heads_parser", "format_top", "run_heads"]


def add_heads_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``heads`` to a CLI's subparsers (handler: :func:`run_heads`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_heads_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["heads", "--task", "ioi"]).top
        5
    """
    from circuitfind.cli import common_options

    p = subparsers.add_parser(
        "heads",
        parents=[common_options()],
        help="score every attention head's role: previous-token, duplicate-token, induction, copying, direct effect",
        description="Score every attention head: previous-token, duplicate-token and induction attention on "
        "repeated random tokens, copying through its OV circuit and the unembedding, and (with --task) its direct "
        "effect on the task's logit difference. Prints the top heads per role; --all prints every head.",
    )
    p.add_argument("--task", default=None, help="a built-in task or task file, for the direct-effect column")
    p.add_argument("--n-prompts", type=int, default=20, metavar="N", help="task prompts (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens and the task (default 0)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="heads shown per role (default 5)")
    p.add_argument("--all", action="store_true", help="print the full table, one row per head")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the table as JSON")
    p.set_defaults(handler=run_heads)
    return p


def format_top(roles, n: int) -> str:
    """The top ``n`` heads of every role, one line per role.

    Example:
        >>> print(format_top(roles, 3))  # doctest: +SKIP
        previous_token   a3.h2 0.912  a1.h7 0.655  ...
    """
    width = max(len(c) for c in roles.scores)
    lines = []
    for column in roles.scores:
        top = roles.top(column, n, absolute=column == "direct_effect")
        cells = "  ".join(f"{name:<7} {score:+.3f}" for name, score in top) or "(no task: not measured)"
        lines.append(f"{column:<{width}}  {cells}")
    return "\n".join(lines)


def _format_all(roles) -> str:
    cols = list(roles.scores)
    lines = ["head     " + "  ".join(f"{c:>15}" for c in cols)]
    for row in roles.rows():
        lines.append(f"{row['head']:<8} " + "  ".join(f"{row[c]:>15.4f}" for c in cols))
    return "\n".join(lines)


def run_heads(args: argparse.Namespace) -> int:
    """Load the model (and task), score the heads, print the table."""
    from circuitfind.analysis import COLUMNS, head_roles
    from circuitfind.fileio import atomic_write
    from circuitfind.models import load_model
    from circuitfind.patching import PatchableModel

    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device, progress=args.progress)
    t_load = time.perf_counter() - t0
    task = None
    if args.task is not None:
        from circuitfind.discovery import prepare_task

        task = prepare_task(args.task, tokenizer, n=args.n_prompts, seed=args.seed)
    bos = getattr(tokenizer, "bos_token_id", None)
    roles = head_roles(PatchableModel(model), task, bos=bos if isinstance(bos, int) else None, seed=args.seed)
    t_roles = time.perf_counter() - t0 - t_load
    print(_format_all(roles) if args.all else format_top(roles, args.top))
    print()
    for column, doc in COLUMNS.items():
        print(f"{column}: {doc}")
    print(f"model load {t_load:.1f} s, head roles {t_roles:.1f} s ({roles.n_layers * roles.n_heads} heads)")
    if args.json is not None:
        atomic_write(args.json, json.dumps(roles.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0
