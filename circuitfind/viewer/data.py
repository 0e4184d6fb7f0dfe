"""What the explorer shows beside the graph, computed from a model and a task: per-prompt tokens and attention
patterns, every sender's direct effect, and the head-role table.

:func:`collect` runs the model; :class:`ExplorerData` is plain tensors and strings, so the payload can also be
built from data computed elsewhere (the budget tests build one of the default model's size without loading it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from circuitfind.analysis import HeadClasses, HeadRoles, attention_patterns, direct_effects, head_roles
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import TaskError, check_int

__all__ = ["DEFAULT_MAX_PROMPTS", "ExplorerData", "PromptView", "collect", "empty"]

DEFAULT_MAX_PROMPTS = 20
"""Task prompts the explorer embeds (their attention patterns are most of the file's size)."""


@dataclass(frozen=True)
class PromptView:
    """One task prompt as the explorer shows it.

    Attributes:
        clean: the clean prompt's text.
        corrupted: the corrupted prompt's text ('' when unknown).
        tokens: ``n`` token strings of the clean prompt (real tokens only).
        answer_pos: the position whose logits the metric reads.
        answers: correct answer strings.
        wrong: wrong answer strings.
    """

    clean: str
    corrupted: str
    tokens: tuple[str, ...]
    answer_pos: int
    answers: tuple[str, ...]
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class ExplorerData:
    """The model-dependent part of the explorer.

    Attributes:
        task: the task's name.
        prompts: one :class:`PromptView` per embedded prompt.
        patterns: per prompt, ``(L, H, n, n)`` attention probabilities on its ``n`` real tokens.
        direct: ``(S, N)`` every sender's direct effect on the logit difference, per prompt (or None).
        roles: the head-role table (or None).
        classes: IOI head classes (:class:`~circuitfind.analysis.HeadClasses`) to show on the heads, or None.
    """

    task: str
    prompts: tuple[PromptView, ...]
    patterns: tuple[Tensor, ...]
    direct: Tensor | None
    roles: HeadRoles | None
    classes: HeadClasses | None = None


def _decode(tokenizer: Any, ids: list[int]) -> str:
    if tokenizer is None:
        return " ".join(f"#{i}" for i in ids)
    return tokenizer.decode(ids)


def _answer_strings(tokenizer: Any, row: Tensor) -> tuple[str, ...]:
    return tuple(_decode(tokenizer, [int(i)]) for i in row.tolist() if i >= 0)


def collect(
    pm: PatchableModel, task, tokenizer: Any = None, *, max_prompts: int = DEFAULT_MAX_PROMPTS, roles: bool = True
) -> ExplorerData:
    """Run the model on the task's first ``max_prompts`` discovery prompts and gather what the explorer shows.

    Args:
        pm: the model.
        task: a :class:`~circuitfind.tasks.Task` (its train split is used).
        tokenizer: for token labels and answer strings; without one tokens show as ``#id``.
        max_prompts: prompts to embed.
        roles: also score every head's roles (:func:`~circuitfind.analysis.head_roles`; a few seconds).

    Example:
        >>> data = collect(pm, task)  # with a tokenizer, tokens show as text
        >>> data.patterns[0].shape, data.prompts[0].tokens[:2]  # (layers, heads, tokens, tokens)
        (torch.Size([1, 2, 4, 4]), ('#16', '#5'))
    """
    check_int(max_prompts, "max_prompts", what="prompts to embed", error=TaskError)
    task = task.train()
    task = task.subset(slice(0, min(max_prompts, len(task))))
    cpu = task.to("cpu")
    patterns_all = attention_patterns(pm, task.clean_ids.to(pm.device), task.attention_mask).float().cpu()
    prompts, patterns = [], []
    for i in range(len(task)):
        n = int(cpu.attention_mask[i].sum())
        ids = cpu.clean_ids[i, :n].tolist()
        clean = task.prompts[i] if task.prompts else _decode(tokenizer, ids)
        corrupted = task.corrupted_prompts[i] if task.corrupted_prompts else ""
        tokens = tuple(_decode(tokenizer, [t]) for t in ids)
        prompts.append(
            PromptView(
                clean=clean,
                corrupted=corrupted,
                tokens=tokens,
                answer_pos=int(cpu.answer_pos[i]),
                answers=_answer_strings(tokenizer, cpu.answers[i]),
                wrong=_answer_strings(tokenizer, cpu.wrong_answers[i]),
            )
        )
        patterns.append(patterns_all[:, i, :, :n, :n])  # (L, H, n, n)
    direct = direct_effects(pm, task).float().cpu() if task.has_answers else None
    table = None
    if roles:
        bos = getattr(tokenizer, "bos_token_id", None)
        table = head_roles(pm, task if task.has_answers else None, bos=bos if isinstance(bos, int) else None)
    return ExplorerData(task.name, tuple(prompts), tuple(patterns), direct, table)


def empty(task: str = "") -> ExplorerData:
    """No model data: the explorer shows the graph, the curve and the run's metrics only."""
    return ExplorerData(task, (), (), None, None)
