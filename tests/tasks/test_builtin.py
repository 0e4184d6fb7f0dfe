"""The built-in tasks by name (tasks/builtin.py): each well formed on the SmolLM2 tokenizer (prompts, padding,
answer positions against the tokens), deterministic in the seed, and ``get_task``'s names."""

from __future__ import annotations

import pytest

from circuitfind.errors import TaskError
from circuitfind.tasks import BUILTIN, get_task
from tests.toy_tasks import same_task, token_ids


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_task_is_well_formed(tok, name):
    task = get_task(name, tok, n=40, seed=0)
    n = task.clean_ids.shape[0]
    assert n == 40 == len(task) and task.answers.shape[0] == 40
    assert task.answer_pos.tolist() == (task.lengths - 1).tolist()
    pad = tok.pad_token_id
    assert (task.clean_ids[task.attention_mask == 0] == pad).all()
    assert (task.corrupted_ids[task.attention_mask == 0] == pad).all()
    assert (task.clean_ids[:, 0] == tok.bos_token_id).all()  # BOS by default
    for i in range(n):
        answers = {a for a in task.answers[i].tolist() if a >= 0}
        wrong = {a for a in task.wrong_answers[i].tolist() if a >= 0}
        assert answers and wrong and not answers & wrong
    if name != "induction":  # prompts are strings that re-tokenise to the ids, pair by pair
        for i in range(n):
            clean = [tok.bos_token_id, *token_ids(tok, task.prompts[i])]
            corrupted = [tok.bos_token_id, *token_ids(tok, task.corrupted_prompts[i])]
            assert len(clean) == len(corrupted) == int(task.lengths[i])
            assert task.clean_ids[i, : len(clean)].tolist() == clean
            assert task.corrupted_ids[i, : len(corrupted)].tolist() == corrupted


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_task_is_deterministic_in_the_seed(tok, name):
    a, b, c = (get_task(name, tok, n=12, seed=s) for s in (5, 5, 6))
    assert same_task(a, b)
    assert not same_task(a, c)


def test_get_task_names(tok):
    assert get_task("greater_than", tok, n=3).name == "greater-than"
    with pytest.raises(TaskError, match="greater-than, induction, ioi"):
        get_task("docstring", tok)
