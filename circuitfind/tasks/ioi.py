"""Indirect object identification (IOI, Wang et al. 2022), generated for any tokenizer.

A clean prompt names two people, repeats one of them (the subject S) and ends where the other one (the
indirect object IO) is the natural next word: "When Mary and John went to the store, John gave a drink to"
-> " Mary". Both name orders appear: ABBA (IO first) and BABA (S first), alternating.

The corrupted prompt is the ABC distribution of the paper: the same template, place and object, with all three
name slots filled by three fresh names, distinct from each other and from IO and S. Names are single tokens
(with their leading space), so every pair tokenises to the same length; prompts of different templates differ
in length and are right-padded.

Answers: ``" IO"``; wrong answers: ``" S"``; metric: logit difference.
"""

from __future__ import annotations

import random
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import Task, bos_prefix, encode
from circuitfind.tasks.templates import slot_labels, with_labels

__all__ = ["IOI_TEMPLATES", "NAMES", "OBJECTS", "PLACES", "make_ioi", "single_token_words"]

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
    if isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(IOI_TEMPLATES):
        raise TaskError(f"template must be an index in 0..{len(IOI_TEMPLATES) - 1} of IOI_TEMPLATES; got {template!r}")
    return (IOI_TEMPLATES[template],)
