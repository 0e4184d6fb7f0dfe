"""Bad inputs fail up front with a CircuitfindError that says what was expected and what was found."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import circuitfind as cf
from circuitfind.errors import TaskError
from circuitfind.evaluate import faithfulness
from circuitfind.patching import PatchableModel
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, tiny_gpt2, tiny_llama

N, T = 3, 6
GPT2 = tiny_gpt2()  # 64 learned positions


def _task(t: int = T) -> Task:
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (2, N, t), generator=g)
    answers, wrong = torch.randint(1, VOCAB, (2, N, 1), generator=g)
    return Task("toy", clean, corrupt, torch.ones(N, t, dtype=torch.long), torch.full((N,), t - 1), answers, wrong)


def _with(field: str, i: int, j: int, value: int) -> Task:
    t = _task()
    ids = getattr(t, field).clone()
    ids[i, j] = value
    return dataclasses.replace(t, **{field: ids})


# --- token ids and lengths against the model (item 6) -------------------------------------------------------
@pytest.mark.parametrize(
    "task,metric,message",
    [
        (_with("clean_ids", 1, 2, VOCAB + 5), "kl", rf"prompt 1 holds token id {VOCAB + 5} in clean_ids.*61 tokens"),
        (_with("corrupted_ids", 2, 0, -3), "kl", r"prompt 2 holds token id -3 in corrupted_ids"),
        (_with("answers", 0, 0, VOCAB), "kl", rf"prompt 0 holds token id {VOCAB} in answers.*ids 0\.\.60"),
        (_with("wrong_answers", 2, 0, 1000), "logit_diff", r"prompt 2 holds token id 1000 in wrong_answers"),
        (_task(t=70), "kl", r"prompt 0 has 70 tokens, but the model takes at most 64 positions"),
    ],
)
def test_task_that_does_not_fit_the_model_is_refused_up_front(task, metric, message):
    with pytest.raises(TaskError, match=message):
        cf.discover(GPT2, task, metric=metric, progress=False)
    with pytest.raises(TaskError, match=message):
        faithfulness(GPT2, PatchableModel(GPT2).graph.full_mask(), task, metric=metric)


def test_rotary_models_have_no_position_limit_and_reference_is_checked():
    pm = PatchableModel(tiny_llama())
    assert pm.spec.max_positions is None and pm.spec.vocab_size == VOCAB
    bad = _with("clean_ids", 0, 1, VOCAB)
    with pytest.raises(TaskError, match=r"the reference task: prompt 0 holds token id 61"):
        cf.discover(pm, _task(), ablation="mean", reference=bad, progress=False)
    with pytest.raises(TaskError, match=r"reference must be a Task.*got list"):
        cf.discover(pm, _task(), ablation="mean", reference=[[1, 2, 3]], progress=False)
