"""From scores to circuits: rankings, cuts, the target search and the validated size selection.

* :mod:`~circuitfind.selection.cuts`: the one ranking rule (signed or absolute, NaN last), top-n / fraction /
  threshold cuts, dangling-edge pruning and the smallest faithful top-k;
* :mod:`~circuitfind.selection.validated`: the validated cut (folds, cross-fitted validation faithfulness, the
  stable-size search, the band);
* :mod:`~circuitfind.selection.bootstrap`: percentile bootstrap intervals from stored per-prompt values.

Everything here works on a graph and tensors: it needs no model (a faithfulness callable is passed in).
"""

from __future__ import annotations

from circuitfind.selection.cuts import (
    TargetResult,
    above_threshold,
    edge_ranking,
    n_of_fraction,
    probes_left,
    prune_dangling,
    smallest_faithful,
    top_fraction,
    top_n,
)

__all__ = [
    "TargetResult",
    "above_threshold",
    "edge_ranking",
    "n_of_fraction",
    "probes_left",
    "prune_dangling",
    "smallest_faithful",
    "top_fraction",
    "top_n",
]
