"""Discovery methods, one module each, dispatched by name through :data:`METHODS`."""

from __future__ import annotations

from circuitfind.algorithms.acdc import (
    AcdcOptions,
    AcdcState,
    Problem,
    SenderOrder,
    run_acdc_fast,
    run_acdc_plain,
)

__all__ = ["METHODS", "AcdcOptions", "AcdcState", "Problem", "SenderOrder", "run_acdc_fast", "run_acdc_plain"]

METHODS = {
    "acdc": run_acdc_fast,
    "acdc-plain": run_acdc_plain,
}
"""Method name -> ``fn(problem, options, state=None, on_boundary=None) -> AcdcState``."""
