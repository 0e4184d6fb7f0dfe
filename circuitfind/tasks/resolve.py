"""The one place a task argument becomes a :class:`Task`: a Task, a built-in name, a JSON path or a dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import Task, task_from_tensors
from circuitfind.tasks.builtin import BUILTIN, get_task
from circuitfind.tasks.jsonio import from_json

__all__ = ["resolve_task"]


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
        if name.replace("_", "-") in BUILTIN or not name.endswith((".json", ".jsonl")):
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


def _need_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise TaskError(
            f"{what} must be tokenised: pass tokenizer=... (load_model returns one; on the command line "
            "--tokenizer PATH_OR_ID), or give the prompts as token ids"
        )
