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
    "check_int",
    "check_optional_int",
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


def check_int(
    value: object,
    name: str,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    what: str = "",
    fix: str = "",
    error: type[CircuitfindError] = ConfigError,
) -> int:
    """``value`` as an int in ``minimum..maximum`` (either bound may be None), or ``error`` saying what was
    expected, what was found and how to fix it. ``True`` / ``False`` are refused (``bool`` is an ``int`` in
    Python, never a count). The one integer check of the package: options, spec fields and file fields all use it.

    Args:
        value: what the user passed.
        name: the option's name as the user wrote it (``"chunk_size"``, ``"spec field 'workers'"``).
        minimum: smallest accepted value (default 1: a positive count); None for any int.
        maximum: largest accepted value; None for no bound.
        what: what the number counts, shown after the name (``"prompts per forward pass"``).
        fix: how to fix it, appended to the message; by default a float holding an integer, or a string of
            digits, suggests the int.
        error: the :class:`CircuitfindError` subclass to raise (e.g. :class:`TaskError` for task data).

    Example:
        >>> check_int(3, "n_boot", minimum=2)
        3
        >>> check_int(0, "workers", what="processes")
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: workers (processes) must be a positive integer; got 0
        >>> check_int(2.0, "steps")
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: steps must be a positive integer; got 2.0. Pass 2 (an int, not a float)
    """
    return _check_int(value, name, minimum, maximum, what, fix, error, optional=False)


def check_optional_int(
    value: object,
    name: str,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    what: str = "",
    fix: str = "",
    error: type[CircuitfindError] = ConfigError,
) -> int | None:
    """:func:`check_int` that also accepts None (and returns it): for options where None means "automatic".

    Example:
        >>> check_optional_int(None, "chunk_size") is None
        True
        >>> check_optional_int(-1, "chunk_size")
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: chunk_size must be a positive integer or None; got -1
    """
    if value is None:
        return None
    return _check_int(value, name, minimum, maximum, what, fix, error, optional=True)


def _check_int(
    value: object,
    name: str,
    minimum: int | None,
    maximum: int | None,
    what: str,
    fix: str,
    error: type[CircuitfindError],
    *,
    optional: bool,
) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return value
    if minimum is not None and maximum is not None:
        expected = f"an integer in {minimum}..{maximum}"
    elif minimum is not None:
        expected = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    else:
        expected = "an integer" if maximum is None else f"an integer <= {maximum}"
    label = f"{name} ({what})" if what else name
    text = f"{label} must be {expected}{' or None' if optional else ''}; got {value!r}"
    if not fix and isinstance(value, float) and value.is_integer():
        fix = f"Pass {int(value)} (an int, not a float)"
    if not fix and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        fix = f"Pass {value.strip()} as a number, not a string"
    raise error(f"{text}. {fix}" if fix else text)
