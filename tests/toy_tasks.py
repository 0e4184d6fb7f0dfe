"""Small random tasks, one-token-per-character tokenizers and task-file items for the tests of bad input (no
download): a task that fits the tiny models, and copies of it with one token id changed."""

from __future__ import annotations

import dataclasses

import torch

from circuitfind.tasks import Task
from tests.models_tiny import VOCAB

N, T = 3, 6

# a string task-file item whose text is not ASCII (what the UTF-8 checks of task files read)
ITEMS = [{"clean": "Zoë ab", "corrupted": "Zoë cd", "answers": "e", "wrong_answers": "f"}]


def random_task(t: int = T) -> Task:
    """``N`` random clean and corrupted prompts of ``t`` tokens, answered at the last one."""
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (2, N, t), generator=g)
    answers, wrong = torch.randint(1, VOCAB, (2, N, 1), generator=g)
    return Task("toy", clean, corrupt, torch.ones(N, t, dtype=torch.long), torch.full((N,), t - 1), answers, wrong)


def with_id(field: str, i: int, j: int, value: int) -> Task:
    """:func:`random_task` with ``field[i, j]`` set to ``value``."""
    t = random_task()
    ids = getattr(t, field).clone()
    ids[i, j] = value
    return dataclasses.replace(t, **{field: ids})


class CharTokenizer:
    """One token per character: enough to tokenise string task files without a download."""

    bos_token_id = None
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}


class CountingTokenizer:
    """One token per character, counting the texts it tokenises (no download)."""

    bos_token_id = None
    pad_token_id = 0

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text, add_special_tokens=False):
        self.calls += 1
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}

    def __len__(self) -> int:
        return VOCAB


def string_item(i: int) -> dict:
    """Task-file item ``i`` in the string form (prompts of three characters)."""
    return {"clean": f"ab{i % 10}", "corrupted": f"cd{i % 10}", "answers": "e", "wrong_answers": "f"}


TENSOR_FIELDS = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos", "answers", "wrong_answers")


def same_task(a: Task, b: Task) -> bool:
    """Every tensor field and the prompt strings equal."""
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in TENSOR_FIELDS) and a.prompts == b.prompts


def token_ids(tok, text: str) -> list[int]:
    """``text``'s token ids, without special tokens."""
    return tok(text, add_special_tokens=False)["input_ids"]


def two_prompt_task(**changes) -> Task:
    """A hand-written two-prompt task (the second right-padded, with two answers), with ``changes`` applied."""
    fields = dict(
        name="toy",
        clean_ids=torch.tensor([[5, 6, 7], [5, 6, 0]]),
        corrupted_ids=torch.tensor([[5, 8, 7], [5, 9, 0]]),
        attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        answer_pos=torch.tensor([2, 1]),
        answers=torch.tensor([[9, -1], [3, 4]]),
        wrong_answers=torch.tensor([[4], [9]]),
    )
    fields.update(changes)
    return Task(**fields)
