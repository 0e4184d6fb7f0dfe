"""A task prepared on a model: the one owner of what every method and every evaluation runs on.

:class:`Problem` holds the model, the prompts (clean ids, attention mask, answer positions), the ablated sender
outputs, the loss the metric binds and the prompt chunking; :func:`prepare_problem` builds it one way for
``discover``, ``evaluate``, the hybrid, the validated cut and the sweeps; :func:`ablation_for` is the one rule that
turns a task and an ablation kind into ablated outputs.

Layer: above the engine, metrics and tasks; below the algorithms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.engine.ablations import AblatedOutputs, Ablation
from circuitfind.engine.memory import check_chunk_size, forward_slices, prompt_slices, prompts_per_pass
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, TaskError
from circuitfind.metrics import Metric, make_metric, metric_site
from circuitfind.tasks import Task, check_task_fits

__all__ = ["Problem", "ablation_for", "prepare_problem"]


@dataclass
class Problem:
    """What a discovery method needs, prepared once by ``discover``.

    Attributes:
        pm: the patchable model.
        clean_ids: ``(B, T)``; attention_mask ``(B, T)``; positions ``(B,)`` where the metric reads.
        ablated: the ablated sender outputs.
        loss: logits ``(K, B, V)`` -> ``(K,)`` to minimise; with ``vocab``, V is ``len(vocab)``.
        vocab: token ids: the forward computes only these logit columns, all the loss reads; None: every column.
        separable: the loss is a mean over prompts of per-prompt terms (see ``Metric.separable``).
        chunk_size: prompts per forward pass (None: as many as fit :data:`circuitfind.engine.memory.PASS_BUDGET_BYTES`).
            Results do not depend on it beyond float rounding: the loss is always taken on all prompts' logits.
    """

    pm: PatchableModel
    clean_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    ablated: AblatedOutputs
    loss: Callable[[Tensor], Tensor]
    vocab: Tensor | None = None
    separable: bool = False
    extra: dict = field(default_factory=dict)
    chunk_size: int | None = None

    def prompt_chunks(self, masks: int = 1) -> list[slice]:
        """The prompt slices one pass of ``masks`` stacked masks each takes (see :mod:`circuitfind.engine.memory`)."""
        B, T = self.clean_ids.shape
        chunk = self.chunk_size or prompts_per_pass(self.pm, B, T, forward_slices(self.pm, masks))
        return prompt_slices(B, chunk)


def ablation_for(
    pm: PatchableModel,
    task: Task,
    kind: Ablation | str = Ablation.RESAMPLE,
    reference: Task | None = None,
    *,
    chunk_size: int | None = None,
) -> AblatedOutputs:
    """The ablated outputs a run on ``task`` uses: the one rule discovery and evaluation share.

    Args:
        pm: the patchable model.
        task: a :class:`~circuitfind.tasks.Task` (on any device).
        kind: ``resample``: each prompt's corrupted twin; ``mean``: the mean over ``reference``'s clean
            prompts, or over ``task``'s own when no reference is given; ``zero``.
        reference: mean ablation only: the reference batch (a Task). Must be None for other kinds.
        chunk_size: prompts per forward pass computing the outputs (None: all at once).

    Example:
        >>> from circuitfind.problem import ablation_for
        >>> abl = ablation_for(pm, task, "mean", reference=task.subset([0, 1]))  # the mean of two prompts
        >>> abl.outputs.shape  # (senders, 1, positions, d_model): one mean per position
        torch.Size([4, 1, 4, 8])
    """
    kind = Ablation.parse(kind)
    for value, label in ((task, "task"), (reference, "reference")):
        if value is not None and not isinstance(value, Task):
            raise TaskError(
                f"{label} must be a Task; got {type(value).__name__}. Build one with "
                "circuitfind.tasks.resolve_task(...) or Task.from_strings(...)."
            )
    if reference is not None and kind is not Ablation.MEAN:
        raise ConfigError(
            f"reference= is the reference batch of mean ablation, but the ablation is {kind.value!r}; "
            "drop reference= or use ablation='mean'"
        )
    if kind is Ablation.RESAMPLE:
        ids, am = task.corrupted_ids.to(pm.device), task.attention_mask.to(pm.device)
        return pm.ablation(kind, ids, am, chunk_size=chunk_size)
    if kind is Ablation.MEAN:
        ref = reference if reference is not None else task
        ids, am = ref.clean_ids.to(pm.device), ref.attention_mask.to(pm.device)
        return pm.ablation(kind, ids, am, chunk_size=chunk_size)
    return pm.ablation(kind)


def prepare_problem(
    pm: PatchableModel,
    task: Task,
    *,
    metric: Any = "kl",
    ablation: Ablation | str = Ablation.RESAMPLE,
    reference: Task | None = None,
    chunk_size: int | None = None,
) -> tuple[Problem, Metric]:
    """Check the task fits the model, move it to the model's device, build the ablation and bind the metric.

    ``chunk_size``: prompts per forward pass of every method (None: sized by :mod:`circuitfind.engine.memory`)."""
    chunk_size = check_chunk_size(chunk_size)
    if reference is not None and not isinstance(reference, Task):
        raise TaskError(
            f"reference must be a Task (the reference batch of mean ablation); got {type(reference).__name__}. "
            "Build one with circuitfind.tasks.resolve_task(...) or Task.from_strings(...)."
        )
    check_task_fits(task, pm.spec)
    if reference is not None:
        check_task_fits(reference, pm.spec, label="the reference task")
    task = task.to(pm.device)
    chunk = chunk_size or prompts_per_pass(pm, *task.clean_ids.shape, forward_slices(pm))
    abl = ablation_for(pm, task, ablation, reference, chunk_size=chunk)
    with torch.no_grad():
        clean_logits = torch.cat(
            [
                pm.forward(
                    task.clean_ids[rows],
                    abl.select(rows, len(task)),
                    pm.graph.full_mask(),
                    attention_mask=task.attention_mask[rows],
                    positions=task.answer_pos[rows],
                )
                for rows in prompt_slices(len(task), chunk)
            ]
        )
    bound = make_metric(metric, clean_logits=clean_logits, answers=task.answers, wrong_answers=task.wrong_answers)
    with metric_site("on the full model (every edge kept)"):  # before any algorithm runs on a broken metric
        bound(clean_logits)
    if bound.columns is not None:  # logit difference: unembed only the answer tokens
        loss, vocab = bound.column_loss, bound.columns.to(pm.device)
    else:
        loss, vocab = bound.loss, None
    problem = Problem(
        pm,
        task.clean_ids,
        task.attention_mask,
        task.answer_pos,
        abl,
        loss,
        vocab=vocab,
        separable=bound.separable,
        chunk_size=chunk_size,
    )
    return problem, bound
