"""The :class:`Task`: paired clean/corrupted prompts, where to read the logits, and the answer tokens.

A task is tensors, not strings: every prompt pair is already tokenised, padded on the right, and checked
(equal lengths within a pair, single-token answers). Build one from strings with :meth:`Task.from_strings`,
from a file with :func:`circuitfind.tasks.from_json`, or take a built-in one from
:func:`circuitfind.tasks.get_task`.

Conventions:

* ``clean_ids[i]`` and ``corrupted_ids[i]`` have the same number of real tokens; both are padded on the right
  with the tokenizer's pad id, so one ``attention_mask`` serves both.
* the metric reads the next-token logits at ``answer_pos[i]`` (the last real token of prompt ``i``).
* ``answers`` / ``wrong_answers`` hold token ids padded with ``-1``; ``wrong_answers`` may have zero columns.
* the first ``n_train`` prompts are the train split, the rest the held-out split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuitfind.errors import TaskError

if TYPE_CHECKING:
    from circuitfind.models.spec import ArchSpec

__all__ = ["PAD_ANSWER", "TASK_METRICS", "Task", "check_task_fits", "task_from_tensors"]

TASK_METRICS: tuple[str, ...] = ("logit_diff", "prob_diff")
"""The task metrics a :class:`Task` may name: mean logit (or probability) of ``answers`` minus that of
``wrong_answers`` at ``answer_pos``."""

PAD_ANSWER = -1
"""Filler in ``answers`` / ``wrong_answers`` rows that have fewer ids than the widest row."""


@dataclass(frozen=True, eq=False)
class Task:
    """Paired clean/corrupted prompts with their answer tokens, validated on construction.

    Attributes:
        name: a short label (``"ioi"``, ``"custom"``...).
        clean_ids: ``(N, T)`` long, right-padded with the tokenizer's pad id.
        corrupted_ids: ``(N, T)`` long, same padding: pair ``i`` has the same number of real tokens.
        attention_mask: ``(N, T)`` long, 1 on real tokens; shared by clean and corrupted.
        answer_pos: ``(N,)`` long, the position whose next-token logits the metric reads.
        answers: ``(N, A)`` long, correct answer ids padded with ``-1``. Every prompt has one, or none has
            (``A = 0`` or all ``-1``: only model-based metrics such as KL can score the task).
        wrong_answers: ``(N, W)`` long, wrong answer ids padded with ``-1`` (``W`` may be 0).
        metric: the task's own metric, one of :data:`TASK_METRICS`.
        seed: the seed the data was generated from (recorded, not used).
        n_train: the first ``n_train`` prompts are the train split; ``None`` = all of them.
        prompts: clean prompt strings for display (empty, or one per prompt).
        corrupted_prompts: corrupted prompt strings for display (empty, or one per prompt).
        position_labels: per prompt, one label per position (``T`` each; empty: none): what each position is in
            the prompt's template (IOI: ``IO``, ``S1``, ``S2``, ``END`` ...; see :mod:`circuitfind.tasks.templates`).

    Example:
        >>> t = Task(
        ...     name="toy",
        ...     clean_ids=torch.tensor([[5, 6, 7]]),
        ...     corrupted_ids=torch.tensor([[5, 8, 7]]),
        ...     attention_mask=torch.ones(1, 3, dtype=torch.long),
        ...     answer_pos=torch.tensor([2]),
        ...     answers=torch.tensor([[9]]),
        ...     wrong_answers=torch.tensor([[4]]),
        ... )
        >>> len(t), t.metric
        (1, 'logit_diff')
    """

    name: str
    clean_ids: Tensor  # (N, T)
    corrupted_ids: Tensor  # (N, T)
    attention_mask: Tensor  # (N, T)
    answer_pos: Tensor  # (N,)
    answers: Tensor  # (N, A)
    wrong_answers: Tensor  # (N, W)
    metric: str = "logit_diff"
    seed: int = 0
    n_train: int | None = None
    prompts: tuple[str, ...] = ()
    corrupted_prompts: tuple[str, ...] = ()
    position_labels: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        # Tuples keep the dataclass frozen in spirit; accept lists from callers.
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "corrupted_prompts", tuple(self.corrupted_prompts))
        object.__setattr__(self, "position_labels", tuple(tuple(str(x) for x in row) for row in self.position_labels))
        _validate(self)
        _check_position_labels(self)

    # --- sizes -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """``T``, the padded width."""
        return int(self.clean_ids.shape[1])

    @property
    def lengths(self) -> Tensor:
        """``(N,)`` long: number of real tokens of each prompt."""
        return self.attention_mask.sum(dim=1)

    @property
    def has_answers(self) -> bool:
        """Whether the prompts carry answer ids (needed by the ``logit_diff`` / ``prob_diff`` metrics)."""
        return bool((self.answers != PAD_ANSWER).any())

    @property
    def device(self) -> torch.device:
        return self.clean_ids.device

    # --- splits and subsets ----------------------------------------------------------------------
    def subset(self, idx: Sequence[int] | Tensor | slice) -> Task:
        """The prompts selected by ``idx`` (ints, a slice, or a long/bool tensor), as a task without a split.

        Example:
            >>> ids = torch.tensor([[5, 6, 7], [5, 8, 7]])
            >>> ones, last, answers = torch.ones_like(ids), torch.tensor([2, 2]), torch.tensor([[9], [9]])
            >>> t = Task("toy", ids, ids.flip(0), ones, last, answers, answers - 1, n_train=1)
            >>> len(t.subset([0, 1])), t.subset([0, 1]).n_train is None
            (2, True)
        """
        rows = torch.arange(len(self))[idx] if isinstance(idx, slice) else _as_rows(idx, len(self))
        if rows.numel() == 0:
            raise TaskError(f"subset of task {self.name!r} selects no prompt; pass at least one index")
        dev_rows = rows.to(self.device)
        pick = rows.tolist()
        return dataclasses.replace(
            self,
            clean_ids=self.clean_ids[dev_rows],
            corrupted_ids=self.corrupted_ids[dev_rows],
            attention_mask=self.attention_mask[dev_rows],
            answer_pos=self.answer_pos[dev_rows],
            answers=self.answers[dev_rows],
            wrong_answers=self.wrong_answers[dev_rows],
            n_train=None,
            prompts=tuple(self.prompts[i] for i in pick) if self.prompts else (),
            corrupted_prompts=tuple(self.corrupted_prompts[i] for i in pick) if self.corrupted_prompts else (),
            position_labels=tuple(self.position_labels[i] for i in pick) if self.position_labels else (),
        )

    def tensors(self) -> dict[str, Tensor]:
        """The task's tensors by field name (clean and corrupted ids, attention mask, answer positions, answers)."""
        return {
            "clean_ids": self.clean_ids,
            "corrupted_ids": self.corrupted_ids,
            "attention_mask": self.attention_mask,
            "answer_pos": self.answer_pos,
            "answers": self.answers,
            "wrong_answers": self.wrong_answers,
        }

    def train(self) -> Task:
        """The train split: the first ``n_train`` prompts, or the whole task when ``n_train`` is None."""
        if self.n_train is None:
            return self
        return self.subset(slice(0, self.n_train))

    def held_out(self) -> Task:
        """The held-out split: the prompts after the first ``n_train``.

        Raises:
            TaskError: the task has no held-out prompts (``n_train`` is None or equals ``len(task)``).
        """
        if self.n_train is None or self.n_train >= len(self):
            raise TaskError(
                f"task {self.name!r} has no held-out split (n_train={self.n_train}, {len(self)} prompts); "
                "build it with n_train smaller than the number of prompts, e.g. get_task(..., n_train=...)"
            )
        return self.subset(slice(self.n_train, len(self)))

    def to(self, device: torch.device | str) -> Task:
        """The same task with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            clean_ids=self.clean_ids.to(device),
            corrupted_ids=self.corrupted_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            answer_pos=self.answer_pos.to(device),
            answers=self.answers.to(device),
            wrong_answers=self.wrong_answers.to(device),
        )

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_strings(
        cls,
        tokenizer: Any,
        clean: Sequence[str],
        corrupted: Sequence[str],
        answers: Sequence[str | Sequence[str]] | None = None,
        wrong_answers: Sequence[str | Sequence[str]] | None = None,
        *,
        name: str = "custom",
        metric: str = "logit_diff",
        seed: int = 0,
        n_train: int | None = None,
        prepend_bos: bool | None = None,
    ) -> Task:
        """Tokenise prompt pairs and their answers into a validated :class:`Task`.

        Prompts are tokenised without the tokenizer's own special tokens; then, when ``prepend_bos`` is true,
        the tokenizer's BOS id is put in front of every prompt. ``prepend_bos=None`` (the default) means "true
        when the tokenizer has a BOS token", so every prompt starts with exactly one BOS whether or not the
        tokenizer would add it by itself. Answers are tokenised as continuations, on their own and without
        special tokens: write ``" Mary"`` with the leading space when the answer follows a space. Each answer
        must be one token.

        Args:
            tokenizer: a Hugging Face tokenizer (anything callable as
                ``tokenizer(text, add_special_tokens=False)["input_ids"]``).
            clean: the clean prompts.
            corrupted: the corrupted prompts, pair ``i`` tokenising to as many tokens as ``clean[i]``.
            answers: per prompt, one answer string or a list of them; ``None`` = no answer tokens (the task
                can then only be scored with a model-based metric such as KL divergence).
            wrong_answers: per prompt, one wrong answer or a list (possibly empty); ``None`` = none.
            name: the task's label.
            metric: one of :data:`TASK_METRICS`.
            seed: recorded on the task.
            n_train: size of the train split (the first prompts); ``None`` = all prompts.
            prepend_bos: put the BOS token first; ``None`` = when the tokenizer has one.

        Returns:
            the task, on the CPU.

        Raises:
            TaskError: empty task, unequal numbers of clean/corrupted prompts, a pair of unequal token
                lengths, an answer that is not one token, an unknown metric.

        Example:
            >>> task = Task.from_strings(
            ...     tok,
            ...     ["When Mary and John went to the store, John gave a drink to"],
            ...     ["When Anna and Paul went to the store, Mike gave a drink to"],
            ...     answers=[" Mary"],
            ...     wrong_answers=[" John"],
            ... )  # doctest: +SKIP
        """
        return build_from_strings(
            tokenizer,
            clean,
            corrupted,
            answers,
            wrong_answers,
            name=name,
            metric=metric,
            seed=seed,
            n_train=n_train,
            prepend_bos=prepend_bos,
        )


# --- building ------------------------------------------------------------------------------------
def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is masked out, so any id works)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def bos_prefix(tokenizer: Any, prepend_bos: bool | None) -> list[int]:
    """``[bos_id]`` or ``[]`` following the ``prepend_bos`` rule of :meth:`Task.from_strings`."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos is None:
        prepend_bos = isinstance(bos, int)
    if not prepend_bos:
        return []
    if not isinstance(bos, int):
        raise TaskError(
            "prepend_bos=True but the tokenizer has no BOS token (bos_token_id is None); "
            "pass prepend_bos=False or use a tokenizer with a BOS token"
        )
    return [bos]


def _default_where(i: int) -> str:
    return f"pair {i}"


def build_from_strings(
    tokenizer: Any,
    clean: Sequence[str],
    corrupted: Sequence[str],
    answers: Sequence[str | Sequence[str]] | None,
    wrong_answers: Sequence[str | Sequence[str]] | None,
    *,
    name: str,
    metric: str,
    seed: int,
    n_train: int | None,
    prepend_bos: bool | None,
    where: Callable[[int], str] = _default_where,
) -> Task:
    """:meth:`Task.from_strings` with a hook naming pair ``i`` in errors (``"line 4"`` for a JSONL file)."""
    _check_metric(metric)
    for label, seq in (("clean", clean), ("corrupted", corrupted)):
        if isinstance(seq, str):
            raise TaskError(f"{label} must be a sequence of prompt strings, not one string; wrap it: [{seq!r}]")
    if len(clean) == 0:
        raise TaskError("empty task: no prompts given; pass at least one clean/corrupted pair")
    if len(clean) != len(corrupted):
        raise TaskError(
            f"{len(clean)} clean prompts but {len(corrupted)} corrupted prompts; "
            "give one corrupted prompt per clean prompt"
        )
    n = len(clean)
    for label, given in (("answers", answers), ("wrong_answers", wrong_answers)):
        if given is not None and (isinstance(given, str) or len(given) != n):
            found = "one string" if isinstance(given, str) else f"{len(given)} entries"
            raise TaskError(f"{label} needs one entry per prompt ({n}); got {found}")

    prefix = bos_prefix(tokenizer, prepend_bos)
    clean_rows, corrupted_rows = [], []
    for i, (c, k) in enumerate(zip(clean, corrupted, strict=True)):
        for label, text in (("clean", c), ("corrupted", k)):
            if not isinstance(text, str):
                raise TaskError(f"{where(i)}: the {label} prompt must be a string; got {type(text).__name__}")
            _check_text(text, where(i), f"{label} prompt")
        c_ids, k_ids = prefix + encode(tokenizer, c), prefix + encode(tokenizer, k)
        if not c_ids:
            raise TaskError(f"{where(i)}: the clean prompt {c!r} tokenises to no token; give a non-empty prompt")
        if len(c_ids) != len(k_ids):
            raise TaskError(
                f"{where(i)}: clean and corrupted prompts tokenise to different lengths "
                f"({len(c_ids)} vs {len(k_ids)} tokens):\n"
                f"  clean     {c!r} -> {_pieces(tokenizer, c_ids)}\n"
                f"  corrupted {k!r} -> {_pieces(tokenizer, k_ids)}\n"
                "Each pair must align token for token: replace words by words of the same token count "
                "(e.g. single-token names with their leading space)."
            )
        clean_rows.append(c_ids)
        corrupted_rows.append(k_ids)

    answer_rows = _answer_rows(tokenizer, answers, n, "answer", where, allow_empty=False)
    wrong_rows = _answer_rows(tokenizer, wrong_answers, n, "wrong answer", where, allow_empty=True)
    return build_from_ids(
        name=name,
        clean_rows=clean_rows,
        corrupted_rows=corrupted_rows,
        answer_rows=answer_rows,
        wrong_rows=wrong_rows,
        pad_id=pad_id_of(tokenizer),
        metric=metric,
        seed=seed,
        n_train=n_train,
        prompts=tuple(clean),
        corrupted_prompts=tuple(corrupted),
        where=where,
    )


def build_from_ids(
    *,
    name: str,
    clean_rows: Sequence[Sequence[int]],
    corrupted_rows: Sequence[Sequence[int]],
    answer_rows: Sequence[Sequence[int]],
    wrong_rows: Sequence[Sequence[int]],
    pad_id: int,
    metric: str = "logit_diff",
    seed: int = 0,
    n_train: int | None = None,
    prompts: Sequence[str] = (),
    corrupted_prompts: Sequence[str] = (),
    answer_pos: Sequence[int] | None = None,
    seq_len: int | None = None,
    where: Callable[[int], str] = _default_where,
) -> Task:
    """Pad per-prompt id lists into a :class:`Task` (answers as last real token unless ``answer_pos``)."""
    n = len(clean_rows)
    if n == 0:
        raise TaskError("empty task: no prompts given; pass at least one clean/corrupted pair")
    for label, rows in (("corrupted", corrupted_rows), ("answer", answer_rows), ("wrong answer", wrong_rows)):
        if len(rows) != n:
            raise TaskError(f"{n} clean prompts but {len(rows)} {label} rows; give one per prompt")
    for i, (right, wrong) in enumerate(zip(answer_rows, wrong_rows, strict=True)):
        _check_answers_differ(right, wrong, where(i))
    lengths = [len(r) for r in clean_rows]
    width = max(lengths) if seq_len is None else seq_len
    clean_ids = torch.full((n, width), pad_id, dtype=torch.long)  # (N, T)
    corrupted_ids = torch.full((n, width), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((n, width), dtype=torch.long)  # (N, T)
    for i, (c, k) in enumerate(zip(clean_rows, corrupted_rows, strict=True)):
        if len(c) != len(k):
            raise TaskError(f"pair {i}: clean has {len(c)} tokens but corrupted has {len(k)}; they must be equal")
        if len(c) > width:
            raise TaskError(f"pair {i}: {len(c)} tokens do not fit in seq_len={width}")
        clean_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        corrupted_ids[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        mask[i, : len(c)] = 1
    pos = [n_tok - 1 for n_tok in lengths] if answer_pos is None else list(answer_pos)
    return Task(
        name=name,
        clean_ids=clean_ids,
        corrupted_ids=corrupted_ids,
        attention_mask=mask,
        answer_pos=torch.tensor(pos, dtype=torch.long),  # (N,)
        answers=pad_rows(answer_rows, n, min_width=1),  # (N, A)
        wrong_answers=pad_rows(wrong_rows, n, min_width=0),  # (N, W)
        metric=metric,
        seed=seed,
        n_train=n_train,
        prompts=tuple(prompts),
        corrupted_prompts=tuple(corrupted_prompts),
    )


def _answer_rows(
    tokenizer: Any,
    answers: Sequence[str | Sequence[str]] | None,
    n: int,
    label: str,
    where: Callable[[int], str],
    *,
    allow_empty: bool,
) -> list[list[int]]:
    if answers is None:
        return [[] for _ in range(n)]
    rows = []
    for i, entry in enumerate(answers):
        if not isinstance(entry, str | list | tuple):
            raise TaskError(
                f"{where(i)}: each {label} entry must be a string or a list of strings; got "
                f"{type(entry).__name__} {entry!r}. Answers are words that are tokenised here; to give token ids, "
                "build the Task from ids (Task(...), or a JSON task file with answer_ids)."
            )
        words = [entry] if isinstance(entry, str) else list(entry)
        if not words and not allow_empty:
            raise TaskError(f"{where(i)}: no {label} given; give at least one {label} string")
        row = []
        for word in words:
            if not isinstance(word, str):
                raise TaskError(f"{where(i)}: each {label} must be a string; got {type(word).__name__} {word!r}")
            _check_text(word, where(i), label)
            ids = encode(tokenizer, word)
            if len(ids) != 1:
                raise TaskError(
                    f"{where(i)}: {label} {word!r} is {len(ids)} tokens {_pieces(tokenizer, ids)}, not one. "
                    "Answers are tokenised on their own as continuations: include the leading space "
                    "(' Mary'), or pick a word that is a single token for this tokenizer."
                )
            row.append(ids[0])
        rows.append(row)
    return rows


def _check_answers_differ(right: Sequence[int], wrong: Sequence[int], where: str) -> None:
    """An id that is both a correct and a wrong answer of one prompt makes its metric meaningless (a single answer
    equal to its wrong answer: identically 0 whatever the circuit)."""
    both = sorted(set(right) & set(wrong) - {PAD_ANSWER})
    if both:
        raise TaskError(
            f"{where}: token id {both[0]} is both a correct and a wrong answer, so the metric (correct minus wrong) "
            "cannot tell the circuits apart on this prompt"
            + (" (it is 0 whatever the circuit)" if set(right) - {PAD_ANSWER} == set(wrong) - {PAD_ANSWER} else "")
            + "; remove it from the wrong answers, or give a different correct answer"
        )


def pad_rows(rows: Sequence[Sequence[int]], n: int, *, min_width: int) -> Tensor:
    """``(n, width)`` long tensor of id rows padded with :data:`PAD_ANSWER`."""
    width = max(min_width, *(len(r) for r in rows))
    out = torch.full((n, width), PAD_ANSWER, dtype=torch.long)  # (N, width)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


def _check_text(text: str, where: str, label: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from an unpaired ``\\ud800`` JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TaskError(
            f"{where}: the {label} {text!r} holds a lone surrogate {text[e.start]!r} at character {e.start}, which "
            "is not valid Unicode; fix the text (in JSON, \\ud800-style escapes must come in high-low pairs)"
        ) from None


_TENSOR_FIELDS = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos", "answers", "wrong_answers")


def task_from_tensors(data: dict[str, Any]) -> Task:
    """A :class:`Task` from a dict of tensors: ``clean_ids``, ``corrupted_ids`` (required, ``(N, T)`` long) and
    optionally ``attention_mask`` (default all ones), ``answer_pos`` (default: last real token), ``answers``,
    ``wrong_answers`` (default none), ``name``, ``metric``.

    Raises:
        TaskError: a required key is missing, a key is unknown, a value is not a tensor or ids are not ``(N, T)``.

    Example:
        >>> task_from_tensors({"clean_ids": torch.tensor([[5, 6]]), "corrupted_ids": torch.tensor([[5, 7]])}).seq_len
        2
    """
    allowed = (*_TENSOR_FIELDS, "name", "metric")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TaskError(f"unknown key {unknown[0]!r} in a task dict of tensors; expected some of {', '.join(allowed)}")
    for key in ("clean_ids", "corrupted_ids"):
        if key not in data:
            raise TaskError(f"a task dict of tensors needs {key!r} (an (N, T) long tensor); it has {sorted(data)}")
    for key in _TENSOR_FIELDS:
        if key in data and not isinstance(data[key], Tensor):
            raise TaskError(
                f"task[{key!r}] must be a torch.Tensor; got {type(data[key]).__name__}. Convert it with "
                "torch.tensor(...), or write the prompts to a JSON task file of ids and pass its path"
            )
    ids = data["clean_ids"]
    if ids.dim() != 2:
        raise TaskError(
            f"task['clean_ids'] must be (N, T), one row per prompt; got shape {tuple(ids.shape)}. "
            "For a single prompt add the batch axis: ids.unsqueeze(0)"
        )
    am = data.get("attention_mask", torch.ones_like(ids))
    empty = torch.zeros(ids.shape[0], 0, dtype=torch.long)
    return Task(
        name=data.get("name", "custom"),
        clean_ids=ids,
        corrupted_ids=data["corrupted_ids"],
        attention_mask=am,
        answer_pos=data.get("answer_pos", am.sum(1) - 1),
        answers=data.get("answers", empty),
        wrong_answers=data.get("wrong_answers", empty),
        metric=data.get("metric", "logit_diff"),
    )


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Token strings for error messages (decoded one by one)."""
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        return [str(i) for i in ids]
    return [decode([i]) for i in ids]


def _as_rows(idx: Sequence[int] | Tensor, n: int) -> Tensor:
    rows = idx if isinstance(idx, Tensor) else torch.as_tensor(list(idx), dtype=torch.long)
    rows = rows.cpu()
    if rows.dtype == torch.bool:
        if rows.shape != (n,):
            raise TaskError(f"a boolean subset index must have shape ({n},); got {tuple(rows.shape)}")
        return rows.nonzero().flatten()
    rows = rows.long().flatten()
    if rows.numel() and (rows.min() < -n or rows.max() >= n):
        raise TaskError(f"subset index out of range for a task of {n} prompts: {rows.tolist()}")
    return rows % n


def check_task_fits(task: Task, spec: ArchSpec, *, label: str = "the task") -> None:
    """Check, once and before any forward pass, that ``task``'s token ids and lengths fit the model of ``spec``.

    Prompt ids (padding included: it is embedded too) must lie in ``0 .. spec.vocab_size - 1``, answer ids in
    ``0 .. spec.n_outputs - 1`` (the logit columns), and no prompt may be longer than ``spec.max_positions``
    (learned position embeddings). Limits the spec leaves None are not checked.

    Raises:
        TaskError: naming the prompt, the field, the id or length, and the model's limit.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from circuitfind.models import spec_for
        >>> spec = spec_for(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20)))
        >>> ids = torch.tensor([[5, 6, 25]])  # 25 is beyond the model's 20 tokens
        >>> task = Task("toy", ids, ids, torch.ones_like(ids), torch.tensor([2]), torch.tensor([[1]]), ids[:, :1])
        >>> check_task_fits(task, spec)
        Traceback (most recent call last):
        ...
        circuitfind.errors.TaskError: the task: prompt 0 holds token id 25 in clean_ids (column 2), but the model's ...
    """
    vocab = spec.vocab_size
    n_out = spec.n_outputs if spec.n_outputs is not None else vocab
    checks = (
        ("clean_ids", task.clean_ids, vocab, "vocabulary has"),
        ("corrupted_ids", task.corrupted_ids, vocab, "vocabulary has"),
        ("answers", task.answers, n_out, "logits cover"),
        ("wrong_answers", task.wrong_answers, n_out, "logits cover"),
    )
    for field, ids, limit, what in checks:
        pad = ids == PAD_ANSWER if field.endswith("answers") else torch.zeros_like(ids, dtype=torch.bool)
        bad = ~pad & ((ids < 0) | (ids >= (limit if limit is not None else torch.iinfo(ids.dtype).max)))
        if bool(bad.any()):
            i, j = (int(x) for x in bad.nonzero()[0])
            span = f"the model's {what} {limit} tokens (ids 0..{limit - 1})" if limit is not None else "ids are >= 0"
            raise TaskError(
                f"{label}: prompt {i} holds token id {int(ids[i, j])} in {field} (column {j}), but {span}. "
                "Build the task with this model's tokenizer: ids from another tokenizer do not fit."
            )
    if spec.max_positions is not None:
        too_long = task.lengths > spec.max_positions
        if bool(too_long.any()):
            i = int(too_long.nonzero()[0])
            raise TaskError(
                f"{label}: prompt {i} has {int(task.lengths[i])} tokens, but the model takes at most "
                f"{spec.max_positions} positions; shorten the prompts or drop the longest ones."
            )


# --- validation ----------------------------------------------------------------------------------
def _check_metric(metric: str) -> None:
    if metric not in TASK_METRICS:
        raise TaskError(f"unknown task metric {metric!r}; expected one of {', '.join(TASK_METRICS)}")


def _check_position_labels(task: Task) -> None:
    rows = task.position_labels
    if rows and (len(rows) != len(task) or any(len(r) != task.seq_len for r in rows)):
        found = f"{len(rows)} rows of lengths {sorted({len(r) for r in rows})}"
        raise TaskError(
            f"position_labels needs one row per prompt ({len(task)}) of one label per position ({task.seq_len}); "
            f"got {found}"
        )


def _validate(task: Task) -> None:
    """Check shapes, dtypes and ranges of a task's tensors; raise :class:`TaskError` on the first problem."""
    _check_metric(task.metric)
    named = task.tensors()
    for field, value in named.items():
        if not isinstance(value, Tensor):
            raise TaskError(f"Task.{field} must be a torch.Tensor; got {type(value).__name__}")
        if value.dtype != torch.long:
            raise TaskError(f"Task.{field} must have dtype torch.long; got {value.dtype}. Convert with .long()")
    devices = {v.device for v in named.values()}
    if len(devices) > 1:
        raise TaskError(f"all tensors of a task must be on one device; found {sorted(map(str, devices))}")
    ids = task.clean_ids
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise TaskError(f"Task.clean_ids must be (N, T) with N, T >= 1; got shape {tuple(ids.shape)}")
    n, t = ids.shape
    for field in ("corrupted_ids", "attention_mask"):
        if named[field].shape != ids.shape:
            raise TaskError(f"Task.{field} must have the shape of clean_ids {(n, t)}; got {tuple(named[field].shape)}")
    for field in ("answers", "wrong_answers"):
        value = named[field]
        if value.dim() != 2 or value.shape[0] != n:
            raise TaskError(f"Task.{field} must be (N={n}, K); got shape {tuple(value.shape)}")
        if value.numel() and bool((value < PAD_ANSWER).any()):
            raise TaskError(f"Task.{field} holds token ids >= 0, padded with {PAD_ANSWER}; found {value.min()}")
    for i, (right, wrong) in enumerate(zip(task.answers.tolist(), task.wrong_answers.tolist(), strict=True)):
        _check_answers_differ(right, wrong, f"prompt {i}")
    for field, label in (("answers", "answer id"), ("wrong_answers", "wrong answer")):
        has = (named[field] != PAD_ANSWER).any(dim=1)  # (N,)
        if bool(has.any()) and not bool(has.all()):
            missing = (~has).nonzero().flatten().tolist()
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise TaskError(
                f"prompt {shown} has no {label} while others do ({len(missing)} of {n} prompts lack one); "
                f"give every prompt a {label.removesuffix(' id')}, or none"
            )
    if task.answer_pos.shape != (n,):
        raise TaskError(f"Task.answer_pos must be (N,) = ({n},); got shape {tuple(task.answer_pos.shape)}")
    mask = task.attention_mask
    if bool(((mask != 0) & (mask != 1)).any()):
        raise TaskError("Task.attention_mask must hold only 0 and 1")
    if bool((mask[:, 0] == 0).any()) or (t > 1 and bool((mask[:, 1:] > mask[:, :-1]).any())):
        raise TaskError("Task.attention_mask must be right-padded: each row is ones (at least one) followed by zeros")
    lengths = mask.sum(dim=1)  # (N,)
    bad = (task.answer_pos < 0) | (task.answer_pos >= lengths)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise TaskError(
            f"answer_pos[{i}] = {int(task.answer_pos[i])} is outside prompt {i}'s {int(lengths[i])} real tokens"
        )
    for field in ("prompts", "corrupted_prompts"):
        value = getattr(task, field)
        if value and len(value) != n:
            raise TaskError(f"Task.{field} must be empty or hold one string per prompt ({n}); got {len(value)}")
    if task.n_train is not None and not (1 <= task.n_train <= n):
        raise TaskError(f"n_train must be None or between 1 and the number of prompts ({n}); got {task.n_train}")
