"""The one place a task argument becomes a :class:`Task`: a Task, a built-in name, a JSON path or a dict
(:func:`resolve_task`), and the one place a task name or file becomes discovery prompts followed by held-out ones
(:func:`split_task`: the command line, sweep cells and stability resamples all use it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from circuitfind.errors import TaskError, check_int, check_optional_int
from circuitfind.tasks.base import Task, task_from_tensors
from circuitfind.tasks.builtin import BUILTIN, get_task
from circuitfind.tasks.jsonio import from_json, is_task_file

__all__ = ["DEFAULT_HELD_OUT", "DEFAULT_N_PROMPTS", "resolve_task", "split_task"]

DEFAULT_N_PROMPTS = 20
"""Discovery prompts generated for a built-in task when none is asked for."""
DEFAULT_HELD_OUT = 20
"""Held-out prompts generated after them for a built-in task when none is asked for (a task file: 0)."""


def resolve_task(task: Any, tokenizer: Any = None, *, n: int = 20, seed: int = 0, n_train: int | None = None) -> Task:
    """Accept a :class:`Task`, a built-in task name, a JSON path, or a dict of strings/tensors.

    A built-in task gets ``n`` prompts from ``seed``, the first ``n_train`` of them its train split.

    Dicts: ``{"clean": [...], "corrupted": [...], "answers": [...], "wrong_answers": [...]}`` of strings (needs
    ``tokenizer``), or of tensors ``{"clean_ids", "corrupted_ids", "answer_pos", "answers", "wrong_answers"}``.

    Example:
        >>> import torch
        >>> t = resolve_task({"clean_ids": torch.tensor([[1, 2, 3]]), "corrupted_ids": torch.tensor([[1, 4, 3]]),
        ...                   "answers": torch.tensor([[5]]), "wrong_answers": torch.tensor([[6]])})
        >>> len(t), resolve_task(t) is t
        (1, True)
    """
    if isinstance(task, Task):
        return task
    if isinstance(task, (str, Path)):
        name = str(task)
        if name.replace("_", "-") in BUILTIN or not is_task_file(name):
            _need_tokenizer(tokenizer, f"the built-in task {name!r}")
            return get_task(name, tokenizer, n=n, seed=seed, n_train=n_train)
        return from_json(name, tokenizer)  # a file of token ids needs no tokenizer; from_json says when one does
    if isinstance(task, dict):
        if "clean_ids" in task or "corrupted_ids" in task:
            return task_from_tensors(task)
        _need_tokenizer(tokenizer, "a task given as strings")
        return Task.from_strings(
            tokenizer,
            task.get("clean", []),
            task.get("corrupted", []),
            task.get("answers"),
            task.get("wrong_answers"),
            metric=task.get("metric", "logit_diff"),
        )
    raise TaskError(
        f"task must be a Task, a built-in name ({', '.join(BUILTIN)}), a .json path or a dict; got "
        f"{type(task).__name__}"
    )


def split_task(
    task: str | Path,
    tokenizer: Any = None,
    *,
    n_prompts: int | None = None,
    held_out: int | None = None,
    seed: int = 0,
) -> Task:
    """A built-in task name or a task file as ``n_prompts`` discovery prompts followed by ``held_out`` held-out
    prompts (``task.train()`` / ``task.held_out()``): the one held-out split builder.

    A built-in task generates ``n_prompts + held_out`` prompts from ``seed`` (defaults
    :data:`DEFAULT_N_PROMPTS` and :data:`DEFAULT_HELD_OUT`). A task file gives its first ``n_prompts`` prompts
    (default: all but the held-out ones) and then ``held_out`` more (default 0: no held-out split); it is read
    and tokenised only as far as the split uses it.

    Raises:
        TaskError: a task file with fewer prompts than asked for (or none left for discovery), or a built-in task
            without a tokenizer.

    Example:
        >>> task = split_task("ioi", tok, n_prompts=4, held_out=2)  # doctest: +SKIP
        >>> len(task.train()), len(task.held_out())  # doctest: +SKIP
        (4, 2)
    """
    name = str(task)
    n = check_optional_int(n_prompts, "n_prompts", what="discovery prompts", error=TaskError)
    if not is_task_file(name):
        held = DEFAULT_HELD_OUT if held_out is None else check_int(held_out, "held_out", minimum=0, error=TaskError)
        n = n or DEFAULT_N_PROMPTS
        _need_tokenizer(tokenizer, f"the built-in task {name!r}")
        return get_task(name, tokenizer, n=n + held, seed=seed, n_train=n if held else None)
    held = 0 if held_out is None else check_int(held_out, "held_out", minimum=0, error=TaskError)
    read = from_json(name, tokenizer, max_prompts=None if n is None else n + held)
    n = len(read) - held if n is None else n
    if n < 1:
        raise TaskError(
            f"{name} has {len(read)} prompts, too few for {held} held-out prompts and at least one for discovery; "
            "ask for fewer held-out prompts (--held-out, or the spec's held_out)"
        )
    if len(read) < n + held:
        raise TaskError(
            f"{name} has {len(read)} prompts; the split needs n_prompts + held_out = {n} + {held}. Ask for fewer "
            "(--n-prompts / --held-out, or the spec's fields) or add prompts to the file"
        )
    split = read.subset(slice(0, n + held))
    return dataclasses.replace(split, n_train=n) if held else split


def _need_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise TaskError(
            f"{what} must be tokenised: pass tokenizer=... (load_model returns one; on the command line "
            "--tokenizer PATH_OR_ID), or give the prompts as token ids"
        )
