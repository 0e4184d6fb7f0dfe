"""Reproducing the ACDC paper: threshold sweeps (:mod:`~circuitfind.reproduce.thresholds`, cached and resumable,
with their ROC against a ground truth) and the paper's curves (:mod:`~circuitfind.reproduce.paper`,
``circuitfind reproduce``)."""

from __future__ import annotations

from circuitfind.reproduce.paper import DEFAULT_THRESHOLDS, reproduce

__all__ = ["DEFAULT_THRESHOLDS", "reproduce"]
