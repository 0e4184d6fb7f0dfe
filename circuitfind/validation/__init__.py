"""Validating a circuit: confidence intervals over prompts (and, beside them, the checks built on them).

* :mod:`circuitfind.validation.bootstrap`: percentile bootstrap intervals from stored per-prompt metric values
  (faithfulness, CPR/CMD, any statistic of a resampled prompt set).

Example:
    >>> from circuitfind.validation import faithfulness_interval
    >>> ci = faithfulness_interval([0.8, 0.9, 0.7], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], n_boot=100)
    >>> ci.level, ci.lo <= 0.8 <= ci.hi
    (0.95, True)
"""

from __future__ import annotations

from circuitfind.validation.bootstrap import (
    Interval,
    bootstrap_interval,
    cpr_cmd_interval,
    faithfulness_interval,
    faithfulness_intervals,
    lower_bound_level,
    resample_indices,
)

__all__ = [
    "Interval",
    "bootstrap_interval",
    "cpr_cmd_interval",
    "faithfulness_interval",
    "faithfulness_intervals",
    "lower_bound_level",
    "resample_indices",
]
