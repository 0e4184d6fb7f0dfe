"""A task prepared on a model: the one owner of what every method and every evaluation runs on.

* :class:`Problem` holds the model, the prompts (clean ids, attention mask, answer positions), the ablated sender
  outputs, the bound metric and the loss it minimises, and the **chunk policy**: how many prompts and how many
  stacked masks one pass takes (:meth:`Problem.prompts_per_pass`, :meth:`Problem.masks_per_pass`), from the one
  formula of :func:`circuitfind.engine.memory.prompts_per_pass` (bytes per prompt of a pass kind x prompts <= the
  budget) or the user's ``chunk_size``.
* :func:`prepare_problem` is its only builder, for ``discover``, ``evaluate``, the hybrid, the validated cut,
  the sweeps, the validation probes and the head classes.
* :class:`Faithfulness` is the one exact evaluator of edge masks on a problem: K masks per stacked pass, the full
  model and the empty circuit riding in the first one; ``discover``'s reported faithfulness, every cut's probes
  and :func:`circuitfind.evaluate.faithfulness` all come from it.
* :func:`ablation_for` is the one rule that turns a task and an ablation kind into ablated outputs.

Layer: above the engine, metrics and tasks; below selection and the algorithms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitfind.engine.ablations import AblatedOutputs, Ablation
from circuitfind.engine.memory import (
    PASS_BUDGET_BYTES,
    PassKind,
    check_chunk_size,
    pass_bytes_per_prompt,
    prompt_slices,
    prompts_per_pass,
)
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, TaskError, check_int
from circuitfind.graph import is_position_mask
from circuitfind.metrics import Metric, check_gap, kl_divergence, make_metric, metric_site
from circuitfind.tasks import Task, check_task_fits

__all__ = ["Faithfulness", "MaskValues", "PassKind", "Problem", "ablation_for", "prepare_problem"]

MAX_MASKS_PER_PASS = 64
"""The most masks one stacked pass evaluates, however many the budget would allow."""


@dataclass
class Problem:
    """A task prepared on a model: what every method and every evaluation runs on. Build it with
    :func:`prepare_problem`.

    Attributes:
        pm: the patchable model.
        clean_ids: ``(B, T)`` the clean prompts; ``attention_mask`` ``(B, T)``; ``positions`` ``(B,)`` where the
            metric reads.
        ablated: the ablated sender outputs.
        loss: logits ``(K, B, V)`` -> ``(K,)`` to minimise (the metric, negated when higher is better; KL as is);
            with ``vocab``, V is ``len(vocab)``.
        vocab: token ids: the forward computes only these logit columns, all the loss reads; None: every column.
        separable: the loss is a mean over prompts of per-prompt terms (see ``Metric.separable``).
        chunk_size: the user's prompts per pass for every kind of pass (None: the chunk policy sizes each pass
            to ``budget``). Results do not depend on it beyond float rounding: losses are always taken on all
            prompts' logits.
        metric: the bound metric ``loss`` comes from (per-prompt values, KL); None for a hand-built loss.
        budget: bytes one pass may hold when ``chunk_size`` is None
            (:data:`circuitfind.engine.memory.PASS_BUDGET_BYTES`).

    Example:
        >>> problem.n_prompts, problem.prompt_chunks() == [slice(0, 3)]  # the tiny problem fits one pass
        (3, True)
    """

    pm: PatchableModel
    clean_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    ablated: AblatedOutputs
    loss: Callable[[Tensor], Tensor]
    vocab: Tensor | None = None
    separable: bool = False
    chunk_size: int | None = None
    metric: Metric | None = None
    budget: int = PASS_BUDGET_BYTES

    @property
    def n_prompts(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    def prompts_per_pass(self, kind: PassKind = PassKind.FORWARD, masks: int = 1) -> int:
        """Prompts one pass of ``kind`` with ``masks`` stacked masks takes: the user's ``chunk_size``, else the
        one formula of :func:`circuitfind.engine.memory.prompts_per_pass` within :attr:`budget`."""
        if self.chunk_size is not None:
            return min(self.chunk_size, self.n_prompts)
        return prompts_per_pass(self.pm, self.n_prompts, self.seq_len, kind, masks, self.budget)

    def prompt_chunks(self, masks: int = 1, kind: PassKind = PassKind.FORWARD) -> list[slice]:
        """The prompt slices one pass of ``masks`` stacked masks each takes."""
        return prompt_slices(self.n_prompts, self.prompts_per_pass(kind, masks))

    def masks_per_pass(self, n_masks: int, kind: PassKind = PassKind.FORWARD) -> int:
        """How many of ``n_masks`` masks one pass stacks: as many as fit in :attr:`budget` beside one pass's
        prompts (at least 1, at most :data:`MAX_MASKS_PER_PASS`); the prompts are then chunked for that many."""
        per_mask = pass_bytes_per_prompt(self.pm, self.seq_len, kind, 1) * self.prompts_per_pass(kind, 1)
        return max(1, min(n_masks, MAX_MASKS_PER_PASS, int(self.budget // max(per_mask, 1))))


@dataclass(frozen=True)
class MaskValues:
    """What :meth:`Faithfulness.evaluate` returns for K masks, all on the CPU in float64.

    Attributes:
        loss: ``(K,)`` the problem's loss of each mask on all prompts.
        per_prompt: ``(K, B)`` the metric on each prompt (needs ``detail=True`` and a bound metric), or None.
        kl: ``(K,)`` ``KL(full || circuit)`` at the answer positions (needs ``detail=True``), or None.
    """

    loss: Tensor
    per_prompt: Tensor | None = None
    kl: Tensor | None = None


class Faithfulness:
    """The one exact evaluator of edge masks on a problem's prompts: ``(L(empty) - L(C)) / (L(empty) - L(full))``.

    In the loss (what ACDC minimises) this is MIB's ``(m(C) - m(empty)) / (m(full) - m(empty))`` for a metric to
    maximise and for KL alike. Masks are stacked K per pass (:meth:`Problem.masks_per_pass`, or ``masks_per_pass``)
    and prompts chunked for that K (:meth:`Problem.prompts_per_pass`); the loss is taken once on all prompts'
    logits, so neither changes a value beyond float rounding. The full model and the empty circuit ride in the first
    pass made. ``calls`` counts the masks evaluated (those two included).

    Args:
        problem: the prepared problem.
        detail: also compute each mask's per-prompt metric values (the problem's bound ``metric``) and
            ``KL(full || circuit)``: the forward then computes every logit column, the loss reads its own.
        masks_per_pass: masks one pass stacks (None: the problem's chunk policy).

    Example:
        >>> faith = Faithfulness(problem)
        >>> faith.many(torch.stack([pm.graph.full_mask(), torch.zeros_like(pm.graph.edge_mask)]))  # one pass
        [1.0, 0.0]
        >>> abs(faith(torch.zeros_like(pm.graph.edge_mask))) < 1e-5  # another pass: equal up to float rounding
        True
        >>> faith.calls  # masks evaluated: the two references, then three circuits
        5
    """

    def __init__(self, problem: Problem, *, detail: bool = False, masks_per_pass: int | None = None) -> None:
        if masks_per_pass is not None:
            check_int(masks_per_pass, "batch_masks", what="masks per forward pass")
        if detail and problem.metric is None:
            raise ConfigError("per-prompt values need the problem's bound metric: build it with prepare_problem")
        self.problem, self.detail, self.fixed_masks = problem, detail, masks_per_pass
        self.calls = 0
        self.reference: MaskValues | None = None  # full model, empty circuit
        self.full_logprobs: Tensor | None = None  # (B, V) with detail: the reference of KL

    # --- references ---------------------------------------------------------------------------------------
    def references(self) -> MaskValues:
        """The values of the full model (row 0) and the empty circuit (row 1), computed on first need."""
        if self.reference is None:
            self.evaluate([])
        assert self.reference is not None
        return self.reference

    @property
    def loss_full(self) -> float:
        """The loss with every edge kept."""
        return float(self.references().loss[0])

    @property
    def loss_empty(self) -> float:
        """The loss with every edge ablated."""
        return float(self.references().loss[1])

    def gap(self) -> float:
        """``L(full) - L(empty)`` that faithfulness divides by; a :class:`MetricError` when it is rounding noise."""
        return check_gap(self.loss_full, self.loss_empty, self.problem.pm.dtype, name="loss")

    # --- evaluation ---------------------------------------------------------------------------------------
    def evaluate(
        self, masks: Sequence[Tensor] | Tensor, where: str | None = None, *, references: bool = True
    ) -> MaskValues:
        """The values of K masks ``(S, R)`` or position masks ``(S, R, T)`` (bool; floats interpolate), K per pass.

        Args:
            masks: the circuits.
            where: what a bad metric value is reported as (default: which mask of those given it was; with
                ``references=False`` and no ``where``, the caller's own :func:`~circuitfind.metrics.metric_site`).
            references: let the full model and the empty circuit ride in this pass when they are not known yet
                (always so with ``detail``: KL needs the full model).
        """
        g, T = self.problem.pm.graph, self.problem.seq_len
        masks = list(masks)
        ride = self.reference is None and (references or self.detail)
        refs = [g.full_mask(), torch.zeros_like(g.edge_mask)] if ride else []
        stack = _stack(g, refs + masks, T)
        if not len(stack):
            return MaskValues(torch.zeros(0, dtype=torch.float64))
        per = self.fixed_masks or self.problem.masks_per_pass(len(stack))
        label = references or ride  # else a bad value is left to the caller's metric_site
        parts = [self._pass(stack[i : i + per], i, len(refs), where, label) for i in range(0, len(stack), per)]
        self.calls += len(stack)
        out = MaskValues(
            torch.cat([part[0] for part in parts]),
            None if parts[0][1] is None else torch.cat([part[1] for part in parts if part[1] is not None]),
            None if parts[0][2] is None else torch.cat([part[2] for part in parts if part[2] is not None]),
        )
        if refs:
            self.reference = _rows(out, slice(0, 2))
        return _rows(out, slice(len(refs), None))

    def _pass(
        self, stack: Tensor, start: int, n_refs: int, where: str | None, label: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One stacked pass of ``stack`` ``(K, S, R[, T])`` over every prompt chunk: losses, per-prompt, KL."""
        p = self.problem
        vocab = None if self.detail else p.vocab
        stack = stack.to(p.pm.device) if stack.dtype == torch.bool else stack.to(p.pm.device, p.pm.dtype)
        with torch.no_grad():
            logits = torch.cat(
                [
                    p.pm.forward(
                        p.clean_ids[rows],
                        p.ablated.select(rows, p.n_prompts),
                        stack,
                        attention_mask=p.attention_mask[rows],
                        positions=p.positions[rows],
                        vocab=vocab,
                    )
                    for rows in p.prompt_chunks(stack.shape[0])
                ],
                dim=1,
            )  # (K, B, V')
            if self.detail and self.full_logprobs is None:  # the first pass holds the full model at index 0
                self.full_logprobs = F.log_softmax(logits[0].float(), dim=-1)
            site = (
                metric_site(lambda err: _site(start + (err.index or 0), n_refs, where))
                if label or where is not None
                else contextlib.nullcontext()
            )
            with site:
                cols = logits if vocab is not None or p.vocab is None else logits[..., p.vocab]
                loss = p.loss(cols).detach().double().cpu()
                if not self.detail:
                    return loss, None, None
                assert p.metric is not None and self.full_logprobs is not None
                per_prompt = p.metric.per_prompt(logits).detach().double().cpu()
            kl = kl_divergence(logits, self.full_logprobs).detach().double().cpu()
        return loss, per_prompt, kl

    def losses(self, masks: Sequence[Tensor] | Tensor, where: str | None = None) -> Tensor:
        """``(K,)`` float64: the loss of each mask (the references do not ride along: no faithfulness is asked)."""
        return self.evaluate(masks, where, references=False).loss

    def loss(self, mask: Tensor, where: str = "on a circuit evaluated for its faithfulness") -> float:
        """The loss of one mask on all prompts."""
        return float(self.evaluate([mask], where).loss[0])

    def of_loss(self, loss: float) -> float:
        """Faithfulness of a circuit of loss ``loss``; a :class:`MetricError` when full and empty do not differ
        beyond rounding (:func:`circuitfind.metrics.check_gap`)."""
        return (float(loss) - self.loss_empty) / self.gap()

    def many(self, masks: Sequence[Tensor] | Tensor) -> list[float]:
        """The faithfulness of each of K masks, stacked K per pass (the references in the first when not known)."""
        return [self.of_loss(v) for v in self.evaluate(masks).loss.tolist()]

    def __call__(self, mask: Tensor) -> float:
        return self.of_loss(self.loss(mask))


def _stack(graph: Any, masks: list[Tensor], seq_len: int) -> Tensor:
    """``(K, S, R)`` or, when any mask has a position axis, ``(K, S, R, T)`` (2-D masks repeated over T); bool when
    every mask is bool, else floats that interpolate."""
    for m in masks:
        if not isinstance(m, Tensor):
            raise ConfigError(f"expected (S, R) mask tensors; got {type(m).__name__}")
    positional = any(m.dim() == 3 and is_position_mask(graph, m) for m in masks)
    flat = [m.detach().cpu() for m in masks]
    if positional:
        flat = [m if m.dim() == 3 else m[..., None].expand(-1, -1, seq_len) for m in flat]
    if not flat:
        return torch.zeros(0, *graph.edge_mask.shape, dtype=torch.bool)
    if not all(m.dtype == torch.bool for m in flat):
        flat = [m.float() for m in flat]
    return torch.stack(flat)


def _rows(values: MaskValues, rows: slice) -> MaskValues:
    pick = values.per_prompt, values.kl
    return MaskValues(values.loss[rows], *(None if v is None else v[rows] for v in pick))


def _site(i: int, n_refs: int, where: str | None) -> str:
    """Which evaluated mask a bad metric value belongs to: the references first (when they ride along)."""
    if i < n_refs:
        return "on the full model (every edge kept)" if i == 0 else "on the empty circuit (every edge ablated)"
    return where or f"on circuit {i - n_refs} of those given (0-based)"


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
    budget: int = PASS_BUDGET_BYTES,
) -> tuple[Problem, Metric]:
    """The one builder of a :class:`Problem`: check the task fits the model, move it to the model's device, build
    the ablation and bind the metric (on the full model's logits, which must give a finite value).

    Args:
        pm: the patchable model.
        task: the prompts the problem runs on (all of them: split the task first).
        metric: ``kl``, ``logit_diff``, ``prob_diff`` or a callable (:func:`circuitfind.metrics.make_metric`).
        ablation: what removed edges carry (``resample``, ``mean``, ``zero``).
        reference: mean ablation's reference batch (default: ``task``'s own prompts).
        chunk_size: prompts per pass of every kind (None: the chunk policy sizes each pass to ``budget``).
        budget: bytes one pass may hold when ``chunk_size`` is None.

    Returns:
        ``(problem, metric)``: the problem and its bound metric (also ``problem.metric``).

    Example:
        >>> p, m = prepare_problem(pm, task, metric="logit_diff")
        >>> p.n_prompts, m.name, p.metric is m
        (3, 'logit_diff', True)
    """
    chunk_size = check_chunk_size(chunk_size)
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ConfigError(f"the memory budget must be a positive number of bytes; got {budget!r}")
    if reference is not None and not isinstance(reference, Task):
        raise TaskError(
            f"reference must be a Task (the reference batch of mean ablation); got {type(reference).__name__}. "
            "Build one with circuitfind.tasks.resolve_task(...) or Task.from_strings(...)."
        )
    check_task_fits(task, pm.spec)
    if reference is not None:
        check_task_fits(reference, pm.spec, label="the reference task")
    task = task.to(pm.device)
    n, seq_len = task.clean_ids.shape
    chunk = chunk_size or prompts_per_pass(pm, n, seq_len, PassKind.FORWARD, 1, budget)
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
        metric=bound,
        budget=int(budget),
    )
    return problem, bound
