"""Causal scrubbing (Chan et al. 2022): test a hypothesis, a circuit plus the features its nodes compute, by
resampling everything it says cannot matter and measuring how much of the metric survives.

* :class:`Hypothesis`: edges (a circuit or mask) and per-node labels.
* :func:`scrub`: the scrubbed metric, the full and everything-resampled baselines, the recovered fraction with
  a bootstrap interval, per-node contributions on request (:class:`ScrubResult`).
* :mod:`~circuitfind.scrubbing.plan`: the contexts a hypothesis needs and the seeded draws;
  :mod:`~circuitfind.scrubbing.forward`: the batched scrubbed forward passes.
"""

from circuitfind.scrubbing.hypothesis import Hypothesis
from circuitfind.scrubbing.run import ScrubResult, scrub

__all__ = ["Hypothesis", "ScrubResult", "scrub"]
