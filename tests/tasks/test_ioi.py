"""The IOI task (tasks/ioi.py): one-token names, the indirect object once and the subject twice, ABC-corrupted."""

from __future__ import annotations

import re

from circuitfind.tasks import make_ioi
from circuitfind.tasks.ioi import NAMES
from tests.toy_tasks import token_ids


def test_ioi_prompts(tok):
    task = make_ioi(tok, n=20, seed=1)
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts, strict=True)):
        io, s = tok.decode(task.answers[i, :1]), tok.decode(task.wrong_answers[i, :1])
        assert len(token_ids(tok, io)) == 1 and len(token_ids(tok, s)) == 1
        words = re.findall(r"\w+", clean)
        assert words.count(s.strip()) == 2 and words.count(io.strip()) == 1
        first = words.index(io.strip()) < words.index(s.strip())
        assert first == (i % 2 == 0)  # ABBA, BABA, ABBA, ...
        names = [w for w in re.findall(r"\w+", corrupted) if w in NAMES]
        assert len(set(names)) == 3 and not {io.strip(), s.strip()} & set(names)
