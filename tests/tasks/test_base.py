"""The Task type (tasks/base.py): validation, splits and subsets, :meth:`Task.from_strings`; answers that are also
wrong answers, token ids and lengths against the model and malformed task dicts, each a clear TaskError."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import TaskError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.tasks import Task, from_json, resolve_task
from tests.models_tiny import VOCAB, tiny_gpt2, tiny_llama
from tests.toy_tasks import CharTokenizer, CountingTokenizer, random_task, string_item, two_prompt_task, with_id

GPT2 = tiny_gpt2()  # 64 learned positions


# --- an answer equal to its wrong answer (issue 19, item 10) ------------------------------------------------------
def test_an_answer_equal_to_its_wrong_answer_is_refused_naming_the_item(tmp_path):
    tok = CountingTokenizer()
    with pytest.raises(TaskError, match=r"pair 1: token id \d+ is both a correct and a wrong answer.*0 whatever"):
        Task.from_strings(tok, ["ab", "ab"], ["cd", "cd"], ["e", "e"], ["f", "e"])
    path = tmp_path / "same.json"
    path.write_text(json.dumps([string_item(0), string_item(1), {**string_item(2), "wrong_answers": ["f", "e"]}]))
    with pytest.raises(TaskError, match=r"^same\.json: item 2: token id \d+ is both a correct and a wrong answer"):
        from_json(path, tok)
    ids = {"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5], "wrong_answer_ids": [5]}
    path.write_text(json.dumps([ids]))
    with pytest.raises(TaskError, match=r"^same\.json: item 0: token id 5 is both"):
        from_json(path, None)
    one = torch.tensor([[1, 2]])
    with pytest.raises(TaskError, match=r"prompt 0: token id 5 is both"):
        Task("t", one, one, torch.ones_like(one), torch.tensor([1]), torch.tensor([[5]]), torch.tensor([[5]]))
    # different answers still make a task, and the metric sees them
    assert Task.from_strings(tok, ["ab"], ["cd"], ["e"], ["f"]).wrong_answers.tolist() == [[1 + ord("f") % 60]]


# --- token ids and lengths against the model (check_task_fits) ----------------------------------------------------
@pytest.mark.parametrize(
    "task,metric,message",
    [
        (with_id("clean_ids", 1, 2, VOCAB + 5), "kl", rf"prompt 1 holds token id {VOCAB + 5} in clean_ids.*61 tokens"),
        (with_id("corrupted_ids", 2, 0, -3), "kl", r"prompt 2 holds token id -3 in corrupted_ids"),
        (with_id("answers", 0, 0, VOCAB), "kl", rf"prompt 0 holds token id {VOCAB} in answers.*ids 0\.\.60"),
        (with_id("wrong_answers", 2, 0, 1000), "logit_diff", r"prompt 2 holds token id 1000 in wrong_answers"),
        (random_task(t=70), "kl", r"prompt 0 has 70 tokens, but the model takes at most 64 positions"),
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
    bad = with_id("clean_ids", 0, 1, VOCAB)
    with pytest.raises(TaskError, match=r"the reference task: prompt 0 holds token id 61"):
        cf.discover(pm, random_task(), ablation="mean", reference=bad, progress=False)
    with pytest.raises(TaskError, match=r"reference must be a Task.*got list"):
        cf.discover(pm, random_task(), ablation="mean", reference=[[1, 2, 3]], progress=False)

# --- task dicts and string answers (task_from_tensors, Task.from_strings) ---------------------------------------
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda t: {"clean_ids": t.clean_ids}, r"needs 'corrupted_ids'"),
        (lambda t: {"clean_ids": t.clean_ids.tolist(), "corrupted_ids": t.corrupted_ids}, r"must be a torch.Tensor"),
        (lambda t: {"clean_ids": t.clean_ids[0], "corrupted_ids": t.corrupted_ids[0]}, r"must be \(N, T\).*\(6,\)"),
        (lambda t: {"clean_ids": t.clean_ids, "corrupted_ids": t.corrupted_ids, "answer_ids": 1}, "unknown key"),
    ],
)
def test_malformed_task_dicts_are_task_errors(make, message):
    with pytest.raises(TaskError, match=message):
        resolve_task(make(random_task()))


def test_answers_given_as_ints_are_a_task_error():
    with pytest.raises(TaskError, match=r"pair 0: each answer entry must be a string.*got int 5.*token ids"):
        Task.from_strings(CharTokenizer(), ["ab"], ["cd"], answers=[5])


# --- the Task type: validation, splits, from_strings -----------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clean_ids": torch.tensor([[5, 6, 7], [5, 6, 0]], dtype=torch.int32)}, "dtype torch.long"),
        ({"corrupted_ids": torch.tensor([[5, 8, 7]])}, "shape of clean_ids"),
        ({"answer_pos": torch.tensor([2, 2])}, "answer_pos\\[1\\] = 2"),
        ({"answers": torch.tensor([[9], [-1]])}, "prompt 1 has no answer"),
        ({"attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}, "right-padded"),
        ({"metric": "accuracy"}, "logit_diff, prob_diff"),
        ({"n_train": 3}, "n_train"),
        ({"prompts": ("only one",)}, "one string per prompt"),
        ({"clean_ids": torch.zeros(0, 3, dtype=torch.long)}, "N, T >= 1"),
    ],
)
def test_task_validation(changes, message):
    with pytest.raises(TaskError, match=message):
        two_prompt_task(**changes)


def test_splits_subset_and_device():
    task = two_prompt_task(n_train=1, prompts=("a", "b"))
    assert len(task.train()) == 1 and task.train().prompts == ("a",)
    assert task.held_out().clean_ids.tolist() == [[5, 6, 0]] and task.held_out().n_train is None
    with pytest.raises(TaskError, match="no held-out split"):
        two_prompt_task().held_out()
    assert two_prompt_task().train() is not None and len(two_prompt_task().train()) == 2
    assert task.subset(torch.tensor([True, False])).answers.tolist() == [[9, -1]]
    assert task.subset([1, 0]).prompts == ("b", "a")
    assert task.to("cpu").clean_ids.device.type == "cpu"
    with pytest.raises(TaskError, match="out of range"):
        task.subset([2])


def test_from_strings_errors(tok):
    clean = ["When Mary and John went to the store, John gave a drink to"]
    with pytest.raises(TaskError, match="empty task"):
        Task.from_strings(tok, [], [])
    with pytest.raises(TaskError, match="1 clean prompts but 2 corrupted"):
        Task.from_strings(tok, clean, clean * 2, [" Mary"])
    short = "When Anna went to the store, Mike gave a drink to"
    with pytest.raises(TaskError) as err:
        Task.from_strings(tok, clean * 3, [clean[0], short, short], [" Mary"] * 3)
    msg = str(err.value)
    assert "pair 1:" in msg and "15 vs 13 tokens" in msg and short in msg and clean[0] in msg and "pair 2" not in msg
    with pytest.raises(TaskError, match=r"answer ' Maryland Bartholomew' is \d+ tokens"):
        Task.from_strings(tok, clean, clean, [[" Mary", " Maryland Bartholomew"]])
    with pytest.raises(TaskError, match="unknown task metric 'kl'"):
        Task.from_strings(tok, clean, clean, [" Mary"], metric="kl")
    with pytest.raises(TaskError, match="sequence of prompt strings"):
        Task.from_strings(tok, clean[0], clean[0], [" Mary"])


def test_from_strings_bos_and_no_answers(tok):
    clean = ["When Mary and John went to the store, John gave a drink to"]
    with_bos = Task.from_strings(tok, clean, clean, [" Mary"], [" John"])
    without = Task.from_strings(tok, clean, clean, [" Mary"], prepend_bos=False)
    assert with_bos.clean_ids[0, 0] == tok.bos_token_id and with_bos.seq_len == without.seq_len + 1
    assert without.wrong_answers.shape == (1, 0)
    bare = Task.from_strings(tok, clean, clean)
    assert bare.answers.tolist() == [[-1]] and not bare.has_answers and with_bos.has_answers
    assert not two_prompt_task(answers=torch.zeros(2, 0, dtype=torch.long)).has_answers
