"""Faithfulness of several circuits on one prompt set, each with its bootstrap interval.

The one place the validation checks (stability's core, ablation sensitivity, the report's curves) turn
:func:`circuitfind.evaluate.faithfulness_many` rows into figures with intervals: the interval resamples the
per-prompt metric values the evaluation stored (:func:`circuitfind.selection.bootstrap.faithfulness_intervals`),
so no prompt is run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from circuitfind.evaluate.circuits import faithfulness_many
from circuitfind.selection.bootstrap import faithfulness_intervals

__all__ = ["N_BOOT_CI", "heldout_rows"]

N_BOOT_CI = 1000
"""Resamples of the prompts behind every interval the validation reports."""


def heldout_rows(
    pm: Any,
    masks: Sequence[Tensor],
    task: Any,
    *,
    metric: Any = None,
    ablation: str = "resample",
    n_boot: int = N_BOOT_CI,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`~circuitfind.evaluate.faithfulness_many` rows of ``masks`` (on the task's held-out split when it
    has one, else all its prompts), each with ``ci = [lo, hi]`` (None where no per-prompt values came back).

    Example:
        >>> row = heldout_rows(pm, [circuit.mask], task, metric="logit_diff")[0]
        >>> row["n_prompts"], row["ci"] is None or row["ci"][0] <= row["ci"][1]
        (3, True)
    """
    rows = faithfulness_many(pm, list(masks), task, metric=metric, ablation=ablation)
    per = [r.get("per_prompt") for r in rows]
    if not rows or any(p is None for p in per) or all("ci" in r for r in rows):  # the evaluator's own intervals
        return [{**{k: v for k, v in r.items() if k != "per_prompt"}, "ci": _pair(r.get("ci"))} for r in rows]

    known = [p for p in per if p is not None]  # all of them (checked above)
    cis = faithfulness_intervals(
        [p["circuit"] for p in known], known[0]["full"], known[0]["empty"], n_boot=n_boot, level=level, seed=seed
    )
    out = []
    for r, ci in zip(rows, cis, strict=True):
        slim = {k: v for k, v in r.items() if k != "per_prompt"}
        out.append({**slim, "ci": [ci.lo, ci.hi], "ci_level": level})
    return out


def _pair(ci: Any) -> list[float] | None:
    """An interval as ``[lo, hi]`` (from a dict, an :class:`Interval` or a pair), or None."""
    if ci is None:
        return None
    if isinstance(ci, dict):
        return [ci["lo"], ci["hi"]]
    if hasattr(ci, "lo"):
        return [ci.lo, ci.hi]
    return [float(ci[0]), float(ci[1])]
