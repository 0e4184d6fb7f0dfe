"""Induction: continue a repeated random sequence of tokens, for any tokenizer.

A clean prompt is ``[BOS] seq seq[:k]`` where ``seq`` is ``L`` distinct "ordinary" tokens drawn at random;
an induction mechanism (find the previous occurrence of the current token, copy what followed it) predicts
``seq[k]``. The corrupted prompt is ``[BOS] seq' seq[:k]`` with ``seq'`` a fresh random sequence sharing no
token with ``seq``: same length, same final tokens, but nothing earlier to copy from.

Answers: ``seq[k]``. Wrong answers: ``seq'[k]``, the token at the same position of the corrupted first half
(what copying would predict on the corrupted prompt; absent from the clean prompt). Metric: logit difference.

"Ordinary" tokens are the vocabulary entries that decode to a single lower-case word of at least three letters
with one leading space (``" house"``) and re-encode to themselves; the rule depends on the vocabulary only, so
a seed gives the same data every time. Prompts are built from token ids directly (not re-tokenised strings).
"""

from __future__ import annotations

import contextlib
import random
import re
import weakref
from typing import Any

from circuitfind.errors import TaskError
from circuitfind.tasks.base import Task, bos_prefix, build_from_ids, pad_id_of

__all__ = ["make_induction", "ordinary_tokens"]

_ORDINARY = re.compile(r"^ [a-z]{3,}$")
# tokenizer -> (vocabulary size, ordinary ids): scanning a 50k vocabulary takes about a second
_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, list[int]]] = weakref.WeakKeyDictionary()


def ordinary_tokens(tokenizer: Any) -> list[int]:
    """Sorted ids of tokens that decode to ``" word"`` (3+ lower-case letters) and re-encode to themselves.

    Example:
        >>> ids = ordinary_tokens(tok)  # doctest: +SKIP
        >>> tok.decode(ids[:3])  # doctest: +SKIP
        ' the and for'
    """
    n_vocab = len(tokenizer)
    try:
        cached = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable or not hashable: no cache
        cached = None
    if cached is not None and cached[0] == n_vocab:
        return list(cached[1])
    ids = _scan(tokenizer, n_vocab)
    with contextlib.suppress(TypeError):
        _CACHE[tokenizer] = (n_vocab, ids)
    return list(ids)


def _scan(tokenizer: Any, n_vocab: int) -> list[int]:
    texts = tokenizer.batch_decode([[i] for i in range(n_vocab)])
    candidates = [(i, t) for i, t in enumerate(texts) if _ORDINARY.match(t)]
    if not candidates:
        return []
    encoded = tokenizer([t for _, t in candidates], add_special_tokens=False)["input_ids"]
    return sorted(i for (i, _), ids in zip(candidates, encoded, strict=True) if list(ids) == [i])


def make_induction(
    tokenizer: Any,
    n: int = 100,
    seed: int = 0,
    n_train: int | None = None,
    *,
    seq_len: int = 10,
    prepend_bos: bool | None = None,
) -> Task:
    """Generate ``n`` induction prompt pairs of repeated random token sequences.

    Args:
        tokenizer: a Hugging Face tokenizer (needs ``len()``, ``batch_decode`` and ``decode``).
        n: number of prompt pairs.
        seed: the data depends on this seed only (``random.Random(seed)``).
        n_train: size of the train split (the first prompts); ``None`` = all.
        seq_len: ``L``, the length of the random sequence; the repeat stops after ``k`` tokens, ``k`` drawn
            from ``2 .. L-1``, so prompts are ``L+2 .. 2L-1`` tokens long (plus BOS).
        prepend_bos: as in :meth:`Task.from_strings`.

    Returns:
        a task with metric ``"logit_diff"``.

    Raises:
        TaskError: ``seq_len < 3``, or the vocabulary has fewer than ``2 * seq_len`` ordinary tokens.

    Example:
        >>> task = make_induction(tok, n=4, seq_len=6)  # doctest: +SKIP
        >>> task.prompts[0]  # doctest: +SKIP
        '<|im_start|> dog river paint ... dog river'
    """
    if n < 1:
        raise TaskError(f"n must be at least 1; got {n}")
    if seq_len < 3:
        raise TaskError(f"seq_len must be at least 3 (a repeat of 2 or more tokens); got {seq_len}")
    pool = ordinary_tokens(tokenizer)
    if len(pool) < 2 * seq_len:
        raise TaskError(
            f"induction needs at least {2 * seq_len} ordinary tokens (' word'); this vocabulary has "
            f"{len(pool)}. Lower seq_len or write the task as a JSON file"
        )
    prefix = bos_prefix(tokenizer, prepend_bos)
    rng = random.Random(seed)
    clean_rows, corrupted_rows, answers, wrong = [], [], [], []
    for _ in range(n):
        both = rng.sample(pool, 2 * seq_len)  # disjoint clean and corrupted first halves
        seq, other = both[:seq_len], both[seq_len:]
        k = rng.randint(2, seq_len - 1)
        clean_rows.append(prefix + seq + seq[:k])
        corrupted_rows.append(prefix + other + seq[:k])
        answers.append([seq[k]])
        wrong.append([other[k]])
    return build_from_ids(
        name="induction",
        clean_rows=clean_rows,
        corrupted_rows=corrupted_rows,
        answer_rows=answers,
        wrong_rows=wrong,
        pad_id=pad_id_of(tokenizer),
        metric="logit_diff",
        seed=seed,
        n_train=n_train,
        prompts=tuple(tokenizer.decode(r) for r in clean_rows),
        corrupted_prompts=tuple(tokenizer.decode(r) for r in corrupted_rows),
    )
