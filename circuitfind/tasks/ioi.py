"""Indirect object identification (IOI, Wang et al. 2022), generated for any tokenizer.

A clean prompt names two people, repeats one of them (the subject S) and ends where the other one (the
indirect object IO) is the natural next word: "When Mary and John went to the store, John gave a drink to"
-> " Mary". Both name orders appear: ABBA (IO first) and BABA (S first), alternating.

The corrupted prompt is the ABC distribution of the paper: the same template, place and object, with all three
name slots filled by three fresh names, distinct from each other and from IO and S. Names are single tokens
(with their leading space), so every pair tokenises to the same length; prompts of different templates differ
in length and are right-padded.

Answers: ``" IO"``; wrong answers: ``" S"``; metric: logit difference. :func:`ioi_positions` gives each
prompt's token positions of IO, S1, S2 and END (read back from the ids and the answers, so any subset or IOI
task built elsewhere with single-token names has them too).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import TaskError, check_int
from circuitfind.tasks.base import Task, bos_prefix, encode
from circuitfind.tasks.templates import slot_labels, with_labels

__all__ = [
    "IOI_POSITIONS",
    "IOI_TEMPLATES",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "ioi_positions",
    "make_ioi",
    "single_token_words",
]

IOI_POSITIONS: tuple[str, ...] = ("IO", "S1", "S2", "END")
"""The labelled positions of an IOI prompt: the indirect object, the subject's first and second mention, and
the last token (where the answer is read)."""

IOI_TEMPLATES: tuple[str, ...] = (
    "When {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {N1} and {N2} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument, and afterwards {S} said to",
    "After {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
"""IOI templates (after the paper's): ``{N1} and {N2}`` introduce both names, ``{S}`` repeats the subject and
the prompt ends right before the indirect object."""

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "James", "Sarah", "Michael", "David", "Emma",
    "Robert", "Linda", "William", "Laura", "Richard", "Susan", "Joseph", "Karen", "Thomas", "Lisa",
    "Daniel", "Nancy", "Paul", "Anna", "Mark", "Helen", "George", "Kate", "Kevin", "Amy",
    "Brian", "Rachel", "Edward", "Rose", "Jason", "Grace", "Jeff", "Emily", "Ryan", "Julia",
    "Jacob", "Maria", "Gary", "Ruth", "Eric", "Sophie", "Peter", "Lucy", "Frank", "Jessica",
    "Scott", "Anne", "Sam", "Claire", "Adam", "Diana", "Henry", "Jane", "Jack", "Kelly",
    "Steve", "Amanda", "Andrew", "Victoria", "Chris", "Martha", "Patrick", "Alex", "Ben", "Nick",
    "Matt", "Joe", "Dan", "Mike", "Tim", "Max", "Leo", "Sean", "Carl", "Martin",
    "Simon", "Louis", "Oliver", "Charlie", "Harry", "Roger", "Bill", "Jim", "Tony", "Fred",
)  # fmt: skip
"""Candidate first names; each task keeps those that are one token (with a leading space)."""

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "beach",
    "library", "church", "museum", "market", "bank", "hotel", "airport", "theater", "farm", "lake",
)  # fmt: skip
"""Candidate places; each task keeps the single-token ones."""

OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "ball",
    "letter", "gift", "cake", "flower", "key", "bag", "hat", "pen", "phone", "card",
)  # fmt: skip
"""Candidate objects; each task keeps the single-token ones."""


def single_token_words(tokenizer: Any, words: tuple[str, ...]) -> list[str]:
    """The words that are one token with a leading space (``" Mary"``), in their original order.

    Example:
        >>> single_token_words(tok, ("Mary", "Bartholomew"))  # doctest: +SKIP
        ['Mary']
    """
    return [w for w in words if len(encode(tokenizer, " " + w)) == 1]


def make_ioi(
    tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    n_train: int | None = None,
    *,
    prepend_bos: bool | None = None,
    template: int | None = None,
    order: str | None = None,
) -> Task:
    """Generate ``n`` IOI prompt pairs (ABBA and BABA alternating, ABC corruption) for ``tokenizer``.

    Every prompt carries per-position labels (``task.position_labels``: ``IO``, ``S1``, ``S2``, ``PLACE``,
    ``OBJECT``, ``END``, the template's words); prompts of one template and one order share them, so
    ``template=`` and ``order=`` give a task for position-aware circuits.

    Args:
        tokenizer: a Hugging Face tokenizer.
        n: number of prompt pairs.
        seed: the data depends on this seed only (``random.Random(seed)``).
        n_train: size of the train split (the first prompts); ``None`` = all.
        prepend_bos: as in :meth:`Task.from_strings`.
        template: use only ``IOI_TEMPLATES[template]`` (default: a random template per prompt).
        order: ``"ABBA"`` or ``"BABA"`` only (default: alternating).

    Returns:
        a task with metric ``"logit_diff"``, answers ``" IO"`` and wrong answers ``" S"``.

    Raises:
        TaskError: fewer than 5 names, or no place or object, are single tokens for this tokenizer; a bad
            ``template`` or ``order``.

    Example:
        >>> task = make_ioi(tok, n=8, seed=1)  # doctest: +SKIP
        >>> task.prompts[0]  # doctest: +SKIP
        'When Mary and John went to the store, John gave a drink to'
    """
    if n < 1:
        raise TaskError(f"n must be at least 1; got {n}")
    names = single_token_words(tokenizer, NAMES)
    places = single_token_words(tokenizer, PLACES)
    objects = single_token_words(tokenizer, OBJECTS)
    if len(names) < 5 or not places or not objects:
        raise TaskError(
            "IOI needs at least 5 single-token names and one single-token place and object for this "
            f"tokenizer; found {len(names)} names, {len(places)} places, {len(objects)} objects"
        )
    templates = _templates(template)
    if order not in (None, "ABBA", "BABA"):
        raise TaskError(f"order must be 'ABBA', 'BABA' or None (alternating); got {order!r}")
    rng = random.Random(seed)
    clean, corrupted, answers, wrong, labels = [], [], [], [], []
    bos = len(bos_prefix(tokenizer, prepend_bos))
    for i in range(n):
        chosen = rng.choice(templates)
        io, s, c1, c2, c3 = rng.sample(names, 5)  # ABC names: fresh, distinct, not IO or S
        place, obj = rng.choice(places), rng.choice(objects)
        abba = order == "ABBA" or (order is None and i % 2 == 0)  # ABBA, then BABA
        n1, n2 = (io, s) if abba else (s, io)
        values = {"N1": n1, "N2": n2, "S": s, "PLACE": place, "OBJECT": obj}
        clean.append(chosen.format(**values))
        corrupted.append(chosen.format(N1=c1, N2=c2, S=c3, PLACE=place, OBJECT=obj))
        answers.append(" " + io)
        wrong.append(" " + s)
        roles = {"N1": "IO", "N2": "S1"} if abba else {"N1": "S1", "N2": "IO"}
        labels.append(slot_labels(tokenizer, chosen, values, {**roles, "S": "S2"}, bos=bos))
    task = Task.from_strings(
        tokenizer,
        clean,
        corrupted,
        answers,
        wrong,
        name="ioi",
        metric="logit_diff",
        seed=seed,
        n_train=n_train,
        prepend_bos=prepend_bos,
    )
    return with_labels(task, labels)


def _templates(template: int | None) -> tuple[str, ...]:
    if template is None:
        return IOI_TEMPLATES
    last = len(IOI_TEMPLATES) - 1
    template = check_int(
        template, "template", minimum=0, maximum=last, what="an index of IOI_TEMPLATES", error=TaskError
    )
    return (IOI_TEMPLATES[template],)


def ioi_positions(task: Task) -> dict[str, Tensor]:
    """Each prompt's token positions of IO, S1, S2 and END (:data:`IOI_POSITIONS`).

    From the task's ``position_labels`` when it has them (:func:`make_ioi` labels its prompts), else from its ids
    and answers: IO is the first occurrence of the answer token (``" IO"``), S1 and S2 the first and last
    occurrences of the wrong answer token (``" S"``) before END, END the answer position. The second way works
    for any IOI-shaped task whose names are single tokens (a task file, a hand-built one).

    Args:
        task: an IOI task: one answer and one wrong answer per prompt.

    Returns:
        ``{"IO", "S1", "S2", "END"}`` -> ``(N,)`` long positions.

    Raises:
        TaskError: a prompt whose IO token does not occur, or whose S token occurs fewer than twice.

    Example:
        >>> ids = torch.tensor([[0, 5, 1, 6, 2, 6, 3]])  # bos, IO, and, S1, went, S2, to
        >>> one = torch.ones_like(ids)
        >>> t = Task("ioi", ids, ids, one, torch.tensor([6]), torch.tensor([[5]]), torch.tensor([[6]]))
        >>> {k: v.tolist() for k, v in ioi_positions(t).items()}
        {'IO': [1], 'S1': [3], 'S2': [5], 'END': [6]}
    """
    labelled = _from_labels(task)
    if labelled is not None:
        return labelled
    if task.answers.shape[1] < 1 or task.wrong_answers.shape[1] < 1:
        raise TaskError("IOI positions need one answer (IO) and one wrong answer (S) per prompt; the task has none")
    ids, end = task.clean_ids.cpu(), task.answer_pos.cpu()
    T = ids.shape[1]
    before_end = torch.arange(T)[None, :] <= end[:, None]  # (N, T)
    io_at = (ids == task.answers[:, :1].cpu()) & before_end
    s_at = (ids == task.wrong_answers[:, :1].cpu()) & before_end
    bad = (~io_at.any(1)) | (s_at.sum(1) < 2)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise TaskError(
            f"prompt {i} of task {task.name!r} is not IOI-shaped: its answer token (IO) must occur in the prompt "
            "and its wrong answer token (S) twice; found IO "
            f"{int(io_at[i].sum())} times and S {int(s_at[i].sum())} times. Build the task with make_ioi"
        )
    pos = torch.arange(T).expand_as(ids)
    first = torch.where(io_at, pos, T).min(1).values
    s1 = torch.where(s_at, pos, T).min(1).values
    s2 = torch.where(s_at, pos, -1).max(1).values
    return {"IO": first, "S1": s1, "S2": s2, "END": end.clone()}


def _from_labels(task: Task) -> dict[str, Tensor] | None:
    """The positions labelled IO, S1, S2 and END in every prompt's ``position_labels``; None without them."""
    rows = task.position_labels
    if not rows or any(any(k not in row for k in IOI_POSITIONS) for row in rows):
        return None
    return {k: torch.tensor([row.index(k) for row in rows], dtype=torch.long) for k in IOI_POSITIONS}
