"""The greater-than task (tasks/greater_than.py) on a per-digit tokenizer (SmolLM2's) and on a GPT-2-like one
that splits numbers in two-digit chunks, and tokenizers without year tokens refused."""

from __future__ import annotations

import re

import pytest

from circuitfind.errors import TaskError
from circuitfind.tasks import make_greater_than
from circuitfind.tasks.greater_than import year_style
from tests.toy_tasks import token_ids


class ToyTwoDigitTokenizer:
    """GPT-2-like splitting for tests: words keep their leading space, numbers split in two-digit chunks."""

    bos_token_id = 0
    eos_token_id = 0
    pad_token_id = None

    def __init__(self, chunk: int = 2) -> None:
        self.pattern = re.compile(rf" ?\d{{1,{chunk}}}| ?[A-Za-z]+| ?[^\sA-Za-z\d]|\s+")
        self.vocab: dict[str, int] = {"<|endoftext|>": 0}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab)) for p in self.pattern.findall(text)]}

    def decode(self, ids: list[int]) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[int(i)] for i in ids)



def test_greater_than_per_digit_on_smollm2(tok):
    assert year_style(tok) == "per_digit"
    digit = {d: token_ids(tok, str(d))[0] for d in range(10)}
    task = make_greater_than(tok, n=30, seed=2)
    assert task.metric == "prob_diff"
    for i, prompt in enumerate(task.prompts):
        start = re.search(r"year (\d{4}) to", prompt).group(1)
        tens = int(start[2])
        assert start[3] == "9" and 1 <= tens <= 8
        assert prompt.endswith(f"to the year {start[:2]}")
        assert task.corrupted_prompts[i] == prompt.replace(start, start[:2] + "01")
        assert [a for a in task.answers[i].tolist() if a >= 0] == [digit[d] for d in range(tens + 1, 10)]
        assert [a for a in task.wrong_answers[i].tolist() if a >= 0] == [digit[d] for d in range(tens + 1)]


def test_greater_than_two_digit_tokenizer():
    tok = ToyTwoDigitTokenizer()
    assert year_style(tok) == "two_digit"
    task = make_greater_than(tok, n=25, seed=0)
    assert task.clean_ids.shape[1] == 13  # BOS + 12 tokens: the year is [' 17', '32']
    for i, prompt in enumerate(task.prompts):
        start = re.search(r"year (\d{4}) to", prompt).group(1)
        yy = int(start[2:])
        assert 3 <= yy <= 97  # 02..98 minus each century's first and last, as in the ACDC reference
        assert task.corrupted_prompts[i] == prompt.replace(start, start[:2] + "01")
        answers = [a for a in task.answers[i].tolist() if a >= 0]
        assert answers == [token_ids(tok, f"{k:02d}")[0] for k in range(yy + 1, 100)]
        assert len([a for a in task.wrong_answers[i].tolist() if a >= 0]) == yy + 1


def test_greater_than_rejects_tokenizers_without_year_tokens():
    with pytest.raises(TaskError, match="tokenises"):
        make_greater_than(ToyTwoDigitTokenizer(chunk=3), n=4)
