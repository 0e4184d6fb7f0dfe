"""``discover()``: from a model and a task to a :class:`Circuit`, with progress, checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from circuitfind.algorithms import METHODS, AcdcOptions, AcdcState, Problem, SenderOrder
from circuitfind.circuit import Circuit
from circuitfind.errors import CheckpointError, ConfigError, TaskError
from circuitfind.metrics import Metric, make_metric, metric_site
from circuitfind.patching import Ablation, PatchableModel
from circuitfind.tasks import BUILTIN, Task, check_task_fits, from_json, get_task, task_from_tensors

__all__ = ["discover", "prepare_task", "prepare_problem"]

CHECKPOINT_EVERY_S = 30.0


def prepare_task(task: Any, tokenizer: Any = None, *, n: int = 20, seed: int = 0) -> Task:
    """Accept a :class:`Task`, a built-in task name, a JSON path, or a dict of strings/tensors.

    Dicts: ``{"clean": [...], "corrupted": [...], "answers": [...], "wrong_answers": [...]}`` of strings (needs
    ``tokenizer``), or of tensors ``{"clean_ids", "corrupted_ids", "answer_pos", "answers", "wrong_answers"}``.
    """
    if isinstance(task, Task):
        return task
    if isinstance(task, (str, Path)):
        name = str(task)
        if name.replace("_", "-") in BUILTIN or not name.endswith((".json", ".jsonl")):
            _need_tokenizer(tokenizer, f"the built-in task {name!r}")
            return get_task(name, tokenizer, n=n, seed=seed)
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


def prepare_problem(
    pm: PatchableModel,
    task: Task,
    *,
    metric: Any = "kl",
    ablation: Ablation | str = Ablation.RESAMPLE,
    reference: Task | None = None,
) -> tuple[Problem, Metric]:
    """Check the task fits the model, move it to the model's device, build the ablation and bind the metric."""
    if reference is not None and not isinstance(reference, Task):
        raise TaskError(
            f"reference must be a Task (the reference batch of mean ablation); got {type(reference).__name__}. "
            "Build one with prepare_task(...) or Task.from_strings(...)."
        )
    check_task_fits(task, pm.spec)
    if reference is not None:
        check_task_fits(reference, pm.spec, label="the reference task")
    task = task.to(pm.device)
    kind = Ablation.parse(ablation)
    if kind is Ablation.RESAMPLE:
        abl = pm.ablation(kind, task.corrupted_ids, task.attention_mask)
    elif kind is Ablation.MEAN:
        ref = (reference or task).to(pm.device)
        abl = pm.ablation(kind, ref.clean_ids, ref.attention_mask)
    else:
        abl = pm.ablation(kind)
    with torch.no_grad():
        clean_logits = pm.forward(
            task.clean_ids,
            abl,
            pm.graph.full_mask(),
            attention_mask=task.attention_mask,
            positions=task.answer_pos,
        )
    bound = make_metric(metric, clean_logits=clean_logits, answers=task.answers, wrong_answers=task.wrong_answers)
    with metric_site("on the full model (every edge kept)"):  # before any algorithm runs on a broken metric
        bound(clean_logits)
    if bound.columns is not None:  # logit difference: unembed only the answer tokens
        loss, vocab = bound.column_loss, bound.columns.to(pm.device)
    else:
        loss, vocab = bound.loss, None
    problem = Problem(pm, task.clean_ids, task.attention_mask, task.answer_pos, abl, loss, vocab=vocab)
    return problem, bound


def _metric_of(problem: Problem, metric: Metric, mask: torch.Tensor, where: str) -> float:
    with torch.no_grad(), metric_site(where):
        logits = problem.pm.forward(
            problem.clean_ids,
            problem.ablated,
            mask,
            attention_mask=problem.attention_mask,
            positions=problem.positions,
        )
    return float(metric(logits))


def _fingerprint(config: dict[str, Any], problem: Problem) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for t in (problem.clean_ids, problem.attention_mask, problem.positions):
        h.update(t.cpu().numpy().tobytes())
    h.update(problem.ablated.outputs[:, :1, :1, :8].float().cpu().numpy().tobytes())  # model/ablation identity
    return h.hexdigest()[:16]


class _Checkpointer:
    """Keeps the last receiver-boundary state; writes it atomically every so often and on interrupt."""

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.last: AcdcState | None = None
        self.written_at = time.monotonic()

    def update(self, state: AcdcState) -> None:
        self.last = state.copy()
        if self.path is not None and time.monotonic() - self.written_at > CHECKPOINT_EVERY_S:
            self.write()

    def write(self) -> None:
        if self.path is None or self.last is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"fingerprint": self.fingerprint, "state": vars(self.last)}, tmp)
        os.replace(tmp, self.path)
        self.written_at = time.monotonic()

    def load(self) -> AcdcState | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = torch.load(self.path, weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}. Delete it to start over.") from exc
        if data.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a different run (model, task or options differ); "
                "use the same options to resume, or delete it / choose another --out to start over"
            )
        return AcdcState(**data["state"])


def discover(
    model: nn.Module | PatchableModel | str,
    task: Any,
    *,
    method: str = "acdc",
    threshold: float = 0.01,
    metric: Any = "kl",
    ablation: Ablation | str = "resample",
    tokenizer: Any = None,
    absolute: bool = False,
    sender_order: SenderOrder | str = "normal",
    batch_size: int | None = None,
    reference: Task | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Circuit:
    """Find the circuit of ``model`` on ``task`` with ACDC.

    Args:
        model: a transformers causal LM, a :class:`PatchableModel`, or a name for :func:`load_model`.
        task: a :class:`Task`, a built-in task name (``ioi``, ``greater-than``, ``induction``), a JSON path, or
            a dict of strings / tensors (see :func:`prepare_task`). The train split is used.
        method: ``acdc`` (fast, exact) or ``acdc-plain`` (one full forward per edge; for checking).
        threshold: tau, >= 0. ``math.inf`` removes every edge.
        metric: ``kl`` (KL of the circuit from the full model at the answer position; default), ``logit_diff``,
            ``prob_diff``, or a callable on logits ``(B, V)`` returning a loss to minimise.
        ablation: ``resample`` (the paired corrupted prompts; default), ``mean`` (over ``reference`` or the
            task's clean prompts), ``zero``.
        tokenizer: needed when the task is given as strings or a name.
        absolute: remove an edge when |change| < tau rather than change < tau.
        sender_order: ``normal`` or ``reverse``.
        batch_size: candidate removals per forward pass (fast path); None: 1 on CPU (larger batches fall out
            of cache there), 8 on GPUs.
        checkpoint: a file to checkpoint to (every 30 s and on interrupt or crash).
        resume: continue from ``checkpoint`` if it exists (same model, task and options).
        progress: show a progress bar.

    Returns:
        the :class:`Circuit` with per-edge effects, metric values and run statistics.

    Example:
        >>> model, tok = circuitfind.load_model()  # doctest: +SKIP
        >>> circuit = circuitfind.discover(model, "ioi", tokenizer=tok, threshold=0.05)  # doctest: +SKIP
        >>> print(circuit.summary())  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    try:
        order = sender_order if isinstance(sender_order, SenderOrder) else SenderOrder(str(sender_order))
    except ValueError:
        raise ConfigError(f"unknown sender_order {sender_order!r}; expected 'normal' or 'reverse'") from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ConfigError(f"threshold must be a number >= 0; got {threshold!r}")
    # validate before any model loads
    AcdcOptions(threshold=float(threshold), absolute=absolute, batch_size=1 if batch_size is None else batch_size)
    kind = Ablation.parse(ablation)
    model_name = model if isinstance(model, str) else ""
    if isinstance(model, str):
        from circuitfind.models import load_model

        model, loaded_tok = load_model(model)
        tokenizer = tokenizer or loaded_tok
    pm = model if isinstance(model, PatchableModel) else PatchableModel(model)
    if batch_size is None:
        batch_size = 1 if pm.device.type == "cpu" else 8
    opts = AcdcOptions(threshold=float(threshold), absolute=absolute, sender_order=order, batch_size=batch_size)
    model_name = model_name or getattr(getattr(pm.module, "config", None), "_name_or_path", "") or pm.spec.family
    task = prepare_task(task, tokenizer).train()

    t0 = time.perf_counter()
    problem, bound = prepare_problem(pm, task, metric=metric, ablation=kind, reference=reference)
    config = {
        "method": method,
        "threshold": opts.threshold,
        "absolute": absolute,
        "sender_order": order.value,
        "metric": bound.name,
        "ablation": kind.value,
        "task": task.name,
        "n_prompts": len(task),
        "batch_size": batch_size,
    }
    ckpt = _Checkpointer(Path(checkpoint) if checkpoint else None, _fingerprint(config, problem))
    state = ckpt.load() if resume else None
    bar = _progress_bar(pm.graph.n_receivers, progress, state)

    def on_boundary(st: AcdcState, done: int, total: int) -> None:
        ckpt.update(st)
        if bar is not None:
            bar.n = done
            # the metric of the current subgraph: watching it drift from the full model's is the first sign
            # that the threshold is too coarse for a faithful circuit
            value = _value_of(bound, st.current)
            bar.set_postfix(kept=int(st.mask.sum()), tested=st.edges_tested, metric=f"{value:.4g}", refresh=False)
            bar.refresh()

    try:
        state = METHODS[method](problem, opts, state=state, on_boundary=on_boundary)
    except BaseException:
        ckpt.write()  # Ctrl-C or a crash: keep everything up to the last finished receiver
        raise
    finally:
        if bar is not None:
            bar.close()
    ckpt.last = state
    ckpt.write()

    empty = torch.zeros_like(state.mask)
    stats = {
        "wall_time_s": time.perf_counter() - t0,
        "acdc_time_s": state.elapsed_s,
        "forward_passes": state.forward_passes,
        "edges_tested": state.edges_tested,
        "candidates_evaluated": state.candidates_evaluated,
        "edges_per_s": state.edges_tested / max(state.elapsed_s, 1e-9),
        # per finished layer of receivers (logits first): the metric of the subgraph so far
        "trace": [
            {"metric": _value_of(bound, e["loss"]), **{k: v for k, v in e.items() if k != "loss"}} for e in state.trace
        ],
    }
    return Circuit(
        graph=pm.graph,
        mask=state.mask,
        scores=state.effects,
        metric_full=_metric_of(problem, bound, pm.graph.full_mask(), "on the full model"),
        metric_empty=_metric_of(problem, bound, empty, "on the empty circuit (every edge ablated)"),
        metric_circuit=_metric_of(problem, bound, state.mask, "on the circuit found"),
        config=config,
        stats=stats,
        model=str(model_name),
    )


def _value_of(metric: Metric, loss: float) -> float:
    """The metric's value from ACDC's loss (task metrics are minimised negated)."""
    return -loss if metric.higher_is_better else loss


def _progress_bar(total: int, enabled: bool, state: AcdcState | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="ACDC receivers", unit="recv", dynamic_ncols=True)
    if state is not None:
        bar.n = state.next_receiver
    return bar
