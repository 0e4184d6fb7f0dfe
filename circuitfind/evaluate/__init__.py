"""Measuring circuits: faithfulness on held-out prompts (``cf.evaluate.faithfulness``), random baselines,
ROC / AUC against a ground truth and MIB's CPR / CMD.

* :mod:`~circuitfind.evaluate.circuits`: everything that runs the model (faithfulness, baselines, CPR / CMD of a
  method's scores);
* :mod:`~circuitfind.evaluate.scores`: ROC, AUC and CPR / CMD from masks and scores (no model needed).
"""

from __future__ import annotations

from circuitfind.evaluate.circuits import (
    MIB_FRACTIONS,
    auc,
    cpr_cmd,
    cpr_cmd_of_scores,
    excluded_negative,
    faithfulness,
    faithfulness_many,
    random_baseline,
    random_circuits,
    roc_from_circuits,
    roc_points,
    top_k_masks,
)

__all__ = [
    "MIB_FRACTIONS",
    "auc",
    "cpr_cmd",
    "cpr_cmd_of_scores",
    "excluded_negative",
    "faithfulness",
    "faithfulness_many",
    "random_baseline",
    "random_circuits",
    "roc_from_circuits",
    "roc_points",
    "top_k_masks",
]
