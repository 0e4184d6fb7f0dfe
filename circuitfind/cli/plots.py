"""Figures from results the library computed: ROC and faithfulness curves. matplotlib is optional.

Only the command line (``circuitfind reproduce``) and the scripts in ``benchmarks/`` draw; they import this
module when they draw, and nothing else in the package imports it. It lives in the package rather than in
``benchmarks/`` because the installed ``circuitfind`` command draws too, and ``benchmarks/`` is not installed.
Every function returns None instead of a figure when matplotlib is missing (``pip install circuitfind[plot]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["new_figure", "plot_faithfulness", "plot_reproduction", "plot_roc"]


def new_figure(size: tuple[float, float]):
    """A pyplot-free matplotlib figure (the Agg canvas; no global backend change), or None without matplotlib.

    Example:
        >>> fig = new_figure((4.0, 3.0))
        >>> fig is None or fig.get_size_inches().tolist() == [4.0, 3.0]
        True
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_roc(curves: dict[str, dict[str, Any]], title: str, path: str | Path) -> Path | None:
    """Draw ROC curves (each a dict with ``fpr``, ``tpr`` and ``auc``, labelled by its key) to ``path``.

    Returns:
        ``path``, or None without matplotlib.

    Example:
        >>> plot_roc({"ACDC": {"fpr": [0, 1], "tpr": [0, 1], "auc": 0.5}}, "ROC", "roc.png")  # doctest: +SKIP
        PosixPath('roc.png')
    """
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
    return _save(fig, Path(path))


def plot_faithfulness(points: list[dict[str, Any]], title: str, path: str | Path) -> Path | None:
    """Draw held-out faithfulness against circuit size (points with ``fraction``, ``faithfulness``, ``threshold``).

    Returns:
        ``path``, or None without matplotlib or without points.

    Example:
        >>> pts = [{"threshold": 0.1, "fraction": 0.02, "faithfulness": 0.7}]
        >>> plot_faithfulness(pts, "IOI", "faithfulness.png")  # doctest: +SKIP
        PosixPath('faithfulness.png')
    """
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
    return _save(fig, Path(path))


def plot_reproduction(result: dict[str, Any]) -> Path | None:
    """Draw the figure of a :func:`circuitfind.reproduce.reproduce` result next to its JSON (same name, ``.png``).

    A tracr result (``runs``) gets one ROC curve per ablation, a GPT-2 result (``auc``) its ROC curve, a
    default-model result (``points``) its faithfulness curve.

    Returns:
        the PNG's path, or None without matplotlib.

    Example:
        >>> from circuitfind.reproduce.paper import reproduce  # doctest: +SKIP
        >>> plot_reproduction(reproduce("tracr-reverse", out_dir="figures"))  # doctest: +SKIP
        PosixPath('figures/roc_tracr-reverse.png')
    """
    path = Path(result["json"]).with_suffix(".png")
    model, task = result["model"], result["task"]
    if "runs" in result:
        curves = {f"{abl} ablation vs {run['ground_truth']}": run for abl, run in result["runs"].items()}
        return plot_roc(curves, f"ACDC on {model} (L2 metric)", path)
    if "auc" in result:
        return plot_roc({"ACDC, KL, resample": result}, f"ACDC on GPT-2 small: {task}", path)
    return plot_faithfulness(result["points"], f"ACDC on {model}: {task}", path)
