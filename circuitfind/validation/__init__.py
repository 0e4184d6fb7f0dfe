"""Validating a circuit: confidence intervals over prompts (and, beside them, the checks built on them).

* :mod:`circuitfind.selection.bootstrap`: percentile bootstrap intervals from stored per-prompt metric values
  (faithfulness, CPR/CMD, any statistic of a resampled prompt set).
* :mod:`~circuitfind.validation.stability` (``cf.stability``): discovery rerun on bootstrap resamples of the
  prompts: edge inclusion frequencies, mean pairwise Jaccard, the stable core and its held-out faithfulness
  (runs: :mod:`~circuitfind.validation.stability_runs`, here, forked or on Ray).
* :mod:`~circuitfind.validation.completeness`: the IOI paper's completeness and minimality, by node removal
  (:mod:`~circuitfind.validation.probes`), within a probe budget.
* :mod:`~circuitfind.validation.ablations`: one circuit under resample, mean and zero ablation, and the circuit
  each ablation finds.
* :mod:`~circuitfind.validation.report` / :mod:`~circuitfind.validation.report_html`: all of the above for one
  run (``circuitfind report``): ``report.json`` and one offline ``report.html``;
  :mod:`~circuitfind.validation.heldout`: faithfulness rows with their intervals.

Example:
    >>> from circuitfind.validation import faithfulness_interval
    >>> ci = faithfulness_interval([0.8, 0.9, 0.7], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], n_boot=100)
    >>> ci.level, ci.lo <= 0.8 <= ci.hi
    (0.95, True)
"""

from __future__ import annotations

from circuitfind.selection.bootstrap import (
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
