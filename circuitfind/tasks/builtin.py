"""The built-in task generators by name, and :func:`get_task`."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import Task
from circuitfind.tasks.greater_than import make_greater_than
from circuitfind.tasks.induction import make_induction
from circuitfind.tasks.ioi import make_ioi

__all__ = ["BUILTIN", "get_task"]

BUILTIN: MappingProxyType[str, Callable[..., Task]] = MappingProxyType(
    {"ioi": make_ioi, "greater-than": make_greater_than, "induction": make_induction}
)
"""The built-in task generators by name."""


def get_task(
    name: str, tokenizer: Any, n: int = 100, seed: int = 0, n_train: int | None = None, **options: Any
) -> Task:
    """Generate the built-in task ``name`` for ``tokenizer``.

    Args:
        name: a key of :data:`BUILTIN` (``"greater_than"`` is accepted for ``"greater-than"``).
        tokenizer: the tokenizer of the model the task is for.
        n: number of prompt pairs.
        seed: the data depends on this seed only.
        n_train: size of the train split (the first prompts); ``None`` = all.
        options: passed to the generator (IOI: ``template=``, ``order=`` for one template group).

    Raises:
        TaskError: unknown name (the message lists the known ones), or the generator's own errors.

    Example:
        >>> task = get_task("ioi", tokenizer, n=100, seed=0, n_train=80)  # doctest: +SKIP
        >>> len(task.train()), len(task.held_out())  # doctest: +SKIP
        (80, 20)
    """
    key = name.strip().lower().replace("_", "-")
    if key not in BUILTIN:
        raise TaskError(
            f"unknown task {name!r}; built-in tasks are {', '.join(sorted(BUILTIN))}. "
            "For your own prompts use from_json(path, tokenizer) or Task.from_strings(...)"
        )
    return BUILTIN[key](tokenizer, n=n, seed=seed, n_train=n_train, **options)
