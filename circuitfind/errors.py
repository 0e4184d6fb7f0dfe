"""The one exception hierarchy of circuitfind.

Every error says what was expected, what was found and how to fix it. Catch
:class:`CircuitfindError` to handle anything this package raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CircuitfindError",
    "ConfigError",
    "MetricError",
    "ModelLoadError",
    "OutputError",
    "RenderError",
    "ShapeError",
    "TaskError",
    "UnsupportedModelError",
]


class CircuitfindError(Exception):
    """Base class of every error circuitfind raises on purpose."""


class ConfigError(CircuitfindError, ValueError):
    """An option has a value outside what it accepts (threshold, method, metric, ablation...)."""


class ModelLoadError(CircuitfindError):
    """A model could not be found or loaded (unknown name, not cached and no network...)."""


class UnsupportedModelError(CircuitfindError):
    """The model's architecture has no adapter."""


class ShapeError(CircuitfindError, ValueError):
    """A tensor argument has the wrong shape, dtype or device."""


class TaskError(CircuitfindError, ValueError):
    """Task data is malformed: empty, mismatched lengths, multi-token answers, bad JSON..."""


class MetricError(CircuitfindError, ValueError):
    """A metric gave an unusable value: NaN or infinite, or not one number per circuit.

    ``index`` is the first offending circuit of a stacked evaluation (None when unknown), so that callers
    evaluating several candidates at once can name the one that failed.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class CheckpointError(CircuitfindError):
    """A checkpoint cannot be used to resume this run."""


class OutputError(CircuitfindError):
    """An output folder or file cannot be written, or another run holds the output folder."""


class RenderError(CircuitfindError):
    """Rendering a circuit to an image failed (usually: graphviz's `dot` binary is missing)."""
