"""``circuitfind sweep``: run a sweep spec, print its results table, draw faithfulness against circuit size.

    circuitfind sweep spec.json                      # run (or resume) the sweep on a local Ray
    RAY_ADDRESS=head:6379 circuitfind sweep spec.json  # the same spec on a cluster (or --address)
    circuitfind sweep spec.json --table              # the results so far
    circuitfind sweep spec.json --table --plot fig.png

The printing and the drawing (matplotlib, imported when asked) live here; the library returns rows.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from circuitfind.sweeps.run import sweep
from circuitfind.sweeps.spec import load_spec
from circuitfind.sweeps.store import ResultsStore

__all__ = ["add_sweep_parser", "format_table", "plot_faithfulness_vs_size"]

TABLE_COLUMNS = (
    ("cell", 8),
    ("model", 14),
    ("task", 12),
    ("method", 11),
    ("cut", 16),
    ("seed", 4),
    ("status", 6),
    ("f held-out", 10),
    ("KL", 7),
    ("CPR", 6),
    ("CMD", 6),
    ("edges", 7),
    ("% edges", 8),
    ("wall s", 7),
    ("peak MB", 7),
)


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``sweep`` subcommand (registered in :data:`circuitfind.cli.PLUGIN_SUBCOMMANDS`)."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of discoveries on Ray into a results store (resumable), or print/plot its results",
        description="Run every cell of a sweep spec (JSON; see README 'Sweeps') that is not yet done, on a local "
        "Ray started in this process or on the cluster at --address / $RAY_ADDRESS. Results go to OUT/results.sqlite "
        "(one row per cell) and OUT/circuits/. Rerunning skips the cells finished (--retry-failed reruns failed ones); "
        "Ctrl-C keeps every finished cell.",
    )
    p.add_argument("spec", type=Path, help="the sweep spec (JSON)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="override the spec's 'out' folder")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="cells at once (default: the spec's)")
    p.add_argument("--retry-failed", action="store_true", help="run the cells recorded as failed again")
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another sweep holds OUT, wait for it to finish, then run only the cells it left (default: stop)",
    )
    p.add_argument("--table", action="store_true", help="print the results in the store and exit (runs nothing)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="draw faithfulness vs size per method")
    p.add_argument(
        "--max-cells",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse a spec that expands to more than N cells (default: the spec's max_cells, else 10,000)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, out=args.out, max_cells=args.max_cells)
    if not args.table:
        try:
            res = sweep(
                spec,
                address=args.address,
                workers=args.workers,
                progress=args.progress,
                retry_failed=args.retry_failed,
                wait=args.wait,
            )
        except KeyboardInterrupt:
            print(
                f"interrupted: every finished cell is in {spec.store_path}; run the same command to continue",
                file=sys.stderr,
            )
            return 130
        print(
            f"{len(spec.cells)} cells: {res.skipped} finished before, {res.done} done now, {res.failed} failed now"
            + (f", {res.retried} retried after a worker died" if res.retried else "")
        )
    if not spec.store_path.exists():
        print(f"no results yet: {spec.store_path} does not exist (run the sweep first)")
        return 0
    with ResultsStore(spec.store_path) as store:
        rows = store.rows([c.id for c in spec.cells])
    print(format_table(rows))
    for r in rows:
        if r["status"] == "failed":
            print(f"failed {r['cell_id'][:8]}: {r['error']}")
    print(f"store: {spec.store_path}")
    if args.plot is not None:
        written = plot_faithfulness_vs_size(rows, args.plot)
        print(f"wrote {written}" if written else "matplotlib is not installed: no plot (pip install matplotlib)")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table, one line per cell.

    Example:
        >>> print(format_table([]))  # doctest: +ELLIPSIS
        cell ...
    """
    head = " ".join(f"{name:>{w}}" if i >= 5 else f"{name:<{w}}" for i, (name, w) in enumerate(TABLE_COLUMNS))
    lines = [head, "-" * len(head)]
    for r in rows:
        model = Path(r["model"] or "").name or "-"
        cells = (
            r["cell_id"][:8],
            model[-14:],
            r["task"][-12:],
            r["method"],
            r["cut"],
            str(r["seed"]),
            r["status"],
            _num(r["faithfulness"], ".3f"),
            _num(r["kl"], ".3f"),
            _num(r["cpr"], ".2f"),
            _num(r["cmd"], ".2f"),
            _num(r["n_edges"], "d"),
            _num(None if r["fraction"] is None else 100 * r["fraction"], ".2f"),
            _num(r["wall_s"], ".1f"),
            _num(r["peak_rss_mb"], ".0f"),
        )
        widths = [w for _, w in TABLE_COLUMNS]
        lines.append(
            " ".join(f"{c:>{w}}" if i >= 5 else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
    return "\n".join(lines)


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def plot_faithfulness_vs_size(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Held-out faithfulness against circuit size (fraction of edges, log axis), one line per method, one panel
    per task; each point a cell, the line through the mean over seeds of each cut. Returns the path, or None
    without matplotlib.

    Example:
        >>> plot_faithfulness_vs_size(result.rows(), "figures/sweep.png")  # doctest: +SKIP
    """
    try:  # a figure on its own Agg canvas, without pyplot: the process's backend and figures stay as they are
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    done = [r for r in rows if r["status"] == "done" and r["faithfulness"] is not None and r["fraction"]]
    tasks = sorted({r["task"] for r in done}) or ["(no finished cells)"]
    fig = Figure(figsize=(5 * len(tasks), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        by_method: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in done:
            if r["task"] == task:
                by_method[r["method"]][(r["model"], r["cut"])].append(r)
        for i, (method, groups) in enumerate(sorted(by_method.items())):
            color = f"C{i}"
            pts = []
            for group in groups.values():
                xs = [g["fraction"] for g in group]
                ys = [g["faithfulness"] for g in group]
                ax.scatter(xs, ys, s=12, color=color, alpha=0.5)
                pts.append((sum(xs) / len(xs), sum(ys) / len(ys)))
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=method)
        ax.axhline(1.0, ls=":", color="grey", lw=1)
        ax.axhline(0.0, ls=":", color="grey", lw=1)
        ax.set_xscale("log")
        ax.set(xlabel="circuit size (fraction of edges)", ylabel="held-out faithfulness", title=task)
        if by_method:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
