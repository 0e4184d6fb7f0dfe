"""Per-position labels of templated prompts, for position-aware circuits (``by_position=True``).

A prompt built from a template (IOI's ``"When {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to"``)
gets one label per token: the slot's name for tokens a slot filled (IOI: ``IO``, ``S1``, ``S2``, ``PLACE``,
``OBJECT``; greater-than: ``NOUN``, ``XX``, ``YY``), the token's text for the template's own words, ``BOS``
for the BOS token, ``END`` for the last real token and ``<pad>`` for padding. A repeated label gets ``#2``,
``#3`` ... so each is unique within the prompt. Prompts with equal label sequences belong to one template group:
position ``t`` means the same thing in each, so one ``(S, R, T)`` position mask applies to all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import encode

__all__ = ["PAD_LABEL", "slot_labels", "template_groups", "template_labels", "with_labels"]

PAD_LABEL = "<pad>"
"""The label of a padding position."""

_SLOT = re.compile(r"\{(\w+)\}")


def slot_labels(
    tokenizer: Any, template: str, values: Mapping[str, str], names: Mapping[str, str] | None = None, bos: int = 0
) -> list[str]:
    """One label per token of ``template.format(**values)`` (tokenised without special tokens, as
    :meth:`Task.from_strings <circuitfind.tasks.Task.from_strings>` does), after ``bos`` BOS tokens.

    The prompt is tokenised piece by piece (a cumulative prefix at a time): the tokens a piece adds, or changes
    when it merges with the text before it, take the piece's label: the slot's name (``names`` may rename a
    slot: ``{"N1": "IO"}``; a slot spanning several tokens labels them ``NAME``, ``NAME.2``...) or the token's
    text. The last token is ``END``; repeats get ``#2``, ``#3``...

    Example:
        >>> slot_labels(tok, "When {A} left, {B} cried", {"A": "Mary", "B": "John"}, bos=1)  # doctest: +SKIP
        ['BOS', 'When', 'A', 'left', ',', 'B', 'END']
    """
    labels: list[str] = []
    done: list[int] = []
    text = ""
    for i, piece in enumerate(_SLOT.split(template)):
        is_slot = i % 2 == 1
        text += values[piece] if is_slot else piece
        ids = encode(tokenizer, text)
        same = 0
        while same < min(len(done), len(ids)) and done[same] == ids[same]:
            same += 1
        labels = labels[:same]
        for j, tok in enumerate(ids[same:]):
            if is_slot:
                name = (names or {}).get(piece, piece)
                labels.append(name if j == 0 else f"{name}.{j + 1}")
            else:
                labels.append(_token_text(tokenizer, tok))
        done = ids
    if labels:
        labels[-1] = "END"
    return _unique(["BOS"] * bos + labels)


def with_labels(task: Any, rows: Sequence[Sequence[str]]) -> Any:
    """``task`` with ``position_labels``: each prompt's labels padded with :data:`PAD_LABEL` to ``T``. Should a
    row not match its prompt's token count (a tokenizer that splits the template unexpectedly), the task is
    returned without labels rather than with wrong ones."""
    import dataclasses

    lengths = task.attention_mask.sum(dim=1).tolist()
    if len(rows) != len(task) or any(len(r) != n for r, n in zip(rows, lengths, strict=True)):
        return task
    padded = tuple(tuple(r) + (PAD_LABEL,) * (task.seq_len - len(r)) for r in rows)
    return dataclasses.replace(task, position_labels=padded)


def _token_text(tokenizer: Any, token: int) -> str:
    text = tokenizer.decode([token]).strip()
    return text or "_"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def template_groups(labels: Sequence[Sequence[str]]) -> list[list[int]]:
    """The prompts grouped by their label sequence (one group per template), in order of first appearance.

    Example:
        >>> template_groups([("BOS", "IO", "END"), ("BOS", "S1", "END"), ("BOS", "IO", "END")])
        [[0, 2], [1]]
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(labels):
        groups.setdefault(tuple(row), []).append(i)
    return list(groups.values())


def template_labels(task: Any) -> tuple[str, ...]:
    """The one label sequence every prompt of ``task`` shares (the positions of a position-aware circuit).

    A task without labels (a custom task) gets ``t0 .. t{T-1}`` when every prompt has the same length and the
    same answer position.

    Raises:
        TaskError: the prompts do not align (several template groups, or unlabelled prompts of different
            lengths); the message says how to pick one group.

    Example:
        >>> template_labels(task)  # the doctest toy task: 4 tokens, no labels
        ('t0', 't1', 't2', 't3')
    """
    rows = task.position_labels
    if rows:
        groups = template_groups(rows)
        if len(groups) == 1:
            return tuple(rows[0])
        sizes = ", ".join(f"{len(g)} prompts like prompt {g[0]}" for g in groups[:6])
        raise TaskError(
            f"position-aware circuits need prompts that share one template, position for position; task "
            f"{task.name!r} has {len(groups)} template groups ({sizes}{', ...' if len(groups) > 6 else ''}). "
            "Pick one: task.subset(circuitfind.tasks.templates.template_groups(task.position_labels)[0]), or "
            "build one group (get_task('ioi', tok, template=0, order='ABBA'))"
        )
    lengths = task.attention_mask.sum(dim=1)
    if bool((lengths != task.seq_len).any()) or bool((task.answer_pos != task.answer_pos[0]).any()):
        raise TaskError(
            f"position-aware circuits need prompts that align position for position; task {task.name!r} has no "
            f"position labels and its prompts differ in length ({sorted(set(lengths.tolist()))} tokens) or "
            "answer position. Give prompts of one template and one length"
        )
    return tuple(f"t{t}" for t in range(task.seq_len))
