"""Greater-than (Hanna et al. 2023), generated for any tokenizer that splits years one of two known ways.

**Two-digit tokenizers (GPT-2 style)**, where ``" 1732"`` is ``[" 17", "32"]`` and every two-digit string
``"00"`` .. ``"99"`` is one token: the paper's task. Prompt ``"The {noun} lasted from the year {XXYY} to the
year {XX}"`` with start years 1102..1798 whose ``" XXYY"`` tokenises as ``[" XX", "YY"]`` (the first and last
such year of each century left out, as in the ACDC reference). The model should continue with a two-digit
token greater than YY: answers are the tokens ``YY+1 .. 99``, wrong answers ``00 .. YY``; metric
``prob_diff`` (P(year > YY) - P(year <= YY)). The corrupted prompt replaces YY by ``01``.

**Per-digit tokenizers (Llama 1/2 family, SmolLM2)**, which write ``" 1732"`` as ``[" ", "1", "7", "3", "2"]``
(SmolLM2: ``" 2"`` is ``[" ", "2"]``, ``"2"`` is one token, id 34, and the digits ``"0"`` .. ``"9"`` are
the ids 32 .. 41 whether they stand alone or continue a number). The token after ``"... to the year 17"`` is
one digit, the end year's *tens* digit, so the task is adapted: the prompt is ``"The {noun} lasted from the
year {XX}{Y}9 to the year {XX}"`` and the answer is that tens digit. The start year always ends in 9 so that
the two answer sets are exactly right: an end year in the same century is later than ``XXY9`` if and only if
its tens digit is greater than ``Y`` (with any other last digit, a tens digit equal to ``Y`` would be right
for some end years and wrong for others). Answers are the digits ``Y+1 .. 9``, wrong answers ``0 .. Y`` (the
ids of each digit typed right after the prompt). ``Y`` runs over 1..8: both sets are non-empty, and the clean
tens digit differs from the corrupted one. Metric ``prob_diff``. The corrupted prompt replaces the start
year's last two digits by ``01`` (tens digit 0), as in the paper.

Other tokenizers (e.g. Llama 3's groups of up to three digits) raise :class:`~circuitfind.errors.TaskError`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import Task, bos_prefix, encode, pad_rows
from circuitfind.tasks.templates import slot_labels, with_labels

__all__ = ["GREATER_THAN_NOUNS", "make_greater_than", "year_style"]

GREATER_THAN_NOUNS: tuple[str, ...] = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack",
    "attempts", "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma",
    "competition", "confrontation", "consequence", "conspiracy", "construction", "consultation",
    "contact", "contract", "convention", "cooperation", "custody", "deal", "decline", "decrease",
    "demonstrations", "development", "disagreement", "disorder", "dispute", "domination", "dynasty",
    "effect", "effort", "employment", "endeavor", "engagement", "epidemic", "evaluation", "exchange",
    "existence", "expansion", "expedition", "experiments", "fall", "fame", "flights", "friendship",
    "growth", "hardship", "hostility", "illness", "impact", "imprisonment", "improvement",
    "incarceration", "increase", "insurgency", "invasion", "investigation", "journey", "kingdom",
    "marriage", "modernization", "negotiation", "notoriety", "obstruction", "operation", "order",
    "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition",
    "treaty", "trial", "trip", "unemployment", "voyage", "warfare", "work",
)  # fmt: skip
"""Event nouns of the greater-than prompts (the paper's list)."""

_TEMPLATE = "The {noun} lasted from the year {start} to the year {century}"
_CENTURIES = range(11, 18)


def year_style(tokenizer: Any) -> str:
    """How ``tokenizer`` splits years: ``"two_digit"`` (GPT-2), ``"per_digit"`` (SmolLM2) or ``"other"``.

    Example:
        >>> year_style(smollm2_tokenizer)  # doctest: +SKIP
        'per_digit'
    """
    pairs = [encode(tokenizer, f"{i:02d}") for i in range(100)]
    centuries = [encode(tokenizer, f" {c}") for c in _CENTURIES]
    if all(len(p) == 1 for p in pairs) and all(len(c) == 1 for c in centuries):
        return "two_digit"
    digits = _digit_ids(tokenizer)
    if digits is not None and encode(tokenizer, " 1739")[-4:] == [digits[1], digits[7], digits[3], digits[9]]:
        return "per_digit"
    return "other"


def _digit_ids(tokenizer: Any) -> list[int] | None:
    """Id of each digit 0..9 typed right after ``"... to the year 17"``; None if one is not a single token.

    Taken as a continuation of a real prompt rather than from the digit on its own, so that tokenizers which
    prefix a lone ``"5"`` with a space marker (SentencePiece) still give the id the model would emit.
    """
    probe = _TEMPLATE.format(noun="war", start=1739, century=17)
    base = encode(tokenizer, probe)
    ids = []
    for d in range(10):
        full = encode(tokenizer, probe + str(d))
        if len(full) != len(base) + 1 or full[:-1] != base:
            return None
        ids.append(full[-1])
    return ids


def make_greater_than(
    tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    n_train: int | None = None,
    *,
    prepend_bos: bool | None = None,
) -> Task:
    """Generate ``n`` greater-than prompt pairs for ``tokenizer`` (see the module docstring for both styles).

    Args:
        tokenizer: a Hugging Face tokenizer.
        n: number of prompt pairs.
        seed: the data depends on this seed only (``random.Random(seed)``).
        n_train: size of the train split (the first prompts); ``None`` = all.
        prepend_bos: as in :meth:`Task.from_strings`.

    Returns:
        a task with metric ``"prob_diff"``.

    Raises:
        TaskError: the tokenizer splits years neither into two-digit tokens nor into single digits.

    Example:
        >>> task = make_greater_than(tok, n=4)  # doctest: +SKIP
        >>> task.prompts[0]  # doctest: +SKIP
        'The voyage lasted from the year 1749 to the year 17'
    """
    if n < 1:
        raise TaskError(f"n must be at least 1; got {n}")
    style = year_style(tokenizer)
    nouns = [w for w in GREATER_THAN_NOUNS if len(encode(tokenizer, " " + w)) == 1]
    if len(nouns) < 10:  # keep every prompt the same length when the tokenizer allows it
        nouns = list(GREATER_THAN_NOUNS)
    rng = random.Random(seed)
    kw: dict[str, Any] = dict(name="greater-than", metric="prob_diff", seed=seed, n_train=n_train)
    kw["prepend_bos"] = prepend_bos
    if style == "per_digit":
        return _labelled(tokenizer, _per_digit_task(tokenizer, rng, nouns, n, **kw), prepend_bos)
    if style != "two_digit":
        raise TaskError(
            "greater-than needs a tokenizer that writes years as two-digit tokens (' 17', '32') or as "
            f"single digits; this one splits ' 1739' as {encode(tokenizer, ' 1739')}. Write the task as a "
            "JSON file for this tokenizer instead (see circuitfind.tasks.from_json)"
        )
    samples = _two_digit_samples(tokenizer, rng, nouns, n)
    clean, corrupted, answers, wrong = (list(x) for x in zip(*samples, strict=True))
    return _labelled(tokenizer, Task.from_strings(tokenizer, clean, corrupted, answers, wrong, **kw), prepend_bos)


_LABELS = "The {NOUN} lasted from the year {XX}{YY} to the year {XX2}"  # _TEMPLATE with the years split
_PARTS = re.compile(r"The (?P<NOUN>.+) lasted from the year (?P<XX>\d\d)(?P<YY>\d\d) to the year (?P<XX2>\d\d)")


def _labelled(tokenizer: Any, task: Task, prepend_bos: bool | None) -> Task:
    """The task with per-position labels (``NOUN``, ``XX``, ``YY``, ``XX2``, ``END``, the template's words)."""
    bos = len(bos_prefix(tokenizer, prepend_bos))
    rows = []
    for prompt in task.prompts:
        parts = _PARTS.fullmatch(prompt)
        if parts is None:  # unreachable for the prompts built here
            return task
        rows.append(slot_labels(tokenizer, _LABELS, parts.groupdict(), bos=bos))
    return with_labels(task, rows)


def _two_digit_samples(
    tokenizer: Any, rng: random.Random, nouns: list[str], n: int
) -> list[tuple[str, str, list[str], list[str]]]:
    years = []
    for c in _CENTURIES:
        head = encode(tokenizer, f" {c}")[0]
        ok = [
            y
            for y in range(c * 100 + 2, c * 100 + 99)
            if encode(tokenizer, f" {y}") == [head, _pair(tokenizer, y % 100)]
        ]
        # " XX01" must split like the clean years for the corrupted prompt to align
        if encode(tokenizer, f" {c}01") == [head, _pair(tokenizer, 1)]:
            years += ok[1:-1]  # the ACDC reference drops each century's first and last year
    if not years:
        raise TaskError("no year in 1102..1798 tokenises as [' XX', 'YY'] with this tokenizer")
    out = []
    for _ in range(n):
        year, noun = rng.choice(years), rng.choice(nouns)
        c, yy = divmod(year, 100)
        clean = _TEMPLATE.format(noun=noun, start=year, century=c)
        corrupted = _TEMPLATE.format(noun=noun, start=f"{c}01", century=c)
        out.append((clean, corrupted, [f"{i:02d}" for i in range(yy + 1, 100)], [f"{i:02d}" for i in range(yy + 1)]))
    return out


def _pair(tokenizer: Any, i: int) -> int:
    return encode(tokenizer, f"{i:02d}")[0]


def _per_digit_task(tokenizer: Any, rng: random.Random, nouns: list[str], n: int, **kw: Any) -> Task:
    digits = _digit_ids(tokenizer)
    if digits is None:  # year_style checked this; kept for type narrowing
        raise TaskError("digits are not single tokens for this tokenizer")
    clean, corrupted, answers, wrong = [], [], [], []
    for _ in range(n):
        c, tens, noun = rng.choice(_CENTURIES), rng.randint(1, 8), rng.choice(nouns)
        clean.append(_TEMPLATE.format(noun=noun, start=f"{c}{tens}9", century=c))
        corrupted.append(_TEMPLATE.format(noun=noun, start=f"{c}01", century=c))
        answers.append(digits[tens + 1 :])
        wrong.append(digits[: tens + 1])
    # digits go in as ids (continuation tokens), not as strings tokenised on their own
    task = Task.from_strings(tokenizer, clean, corrupted, None, None, **kw)
    return dataclasses.replace(
        task,
        answers=pad_rows(answers, n, min_width=1),  # (N, A): A = 9 - min Y
        wrong_answers=pad_rows(wrong, n, min_width=0),  # (N, W): W = max Y + 1
    )
