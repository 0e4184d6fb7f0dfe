"""Comparing two models of the same structure on a task (a base model and its fine-tune).

* :func:`diff` finds both circuits with one method and compares them, and compares the models node by node
  (weights, activations) and token by token (log-probs): a :class:`ModelDiff` (:mod:`circuitfind.compare.diff`).

It sits above discovery (it runs :func:`circuitfind.discover` on both models), so it is not part of
:mod:`circuitfind.analysis`, which discovery's explorer uses.

Example:
    >>> d = diff(pm, pm, task, n_edges=5)  # a model against itself: nothing differs
    >>> d.jaccard, d.weights[0]["diff"]
    (1.0, 0.0)
"""

from __future__ import annotations

from circuitfind.compare.diff import (
    ModelDiff,
    activation_diffs,
    check_comparable,
    diff,
    logprob_diffs,
    weight_diffs,
)

__all__ = ["ModelDiff", "activation_diffs", "check_comparable", "diff", "logprob_diffs", "weight_diffs"]
