"""Tasks: built-in generators on the SmolLM2 tokenizer (and a toy GPT-2-style one), validation, JSON I/O."""

from __future__ import annotations

import json
import re

import pytest
import torch

from circuitfind.errors import TaskError
from circuitfind.tasks import (
    BUILTIN,
    Task,
    from_json,
    get_task,
    make_greater_than,
    make_induction,
    make_ioi,
    to_json,
)
from circuitfind.tasks.greater_than import year_style
from circuitfind.tasks.ioi import NAMES

TENSOR_FIELDS = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos", "answers", "wrong_answers")


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


def _same(a: Task, b: Task) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in TENSOR_FIELDS) and a.prompts == b.prompts


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- built-in tasks ------------------------------------------------------------------------------
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
            clean = [tok.bos_token_id, *_encode(tok, task.prompts[i])]
            corrupted = [tok.bos_token_id, *_encode(tok, task.corrupted_prompts[i])]
            assert len(clean) == len(corrupted) == int(task.lengths[i])
            assert task.clean_ids[i, : len(clean)].tolist() == clean
            assert task.corrupted_ids[i, : len(corrupted)].tolist() == corrupted


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_task_is_deterministic_in_the_seed(tok, name):
    a, b, c = (get_task(name, tok, n=12, seed=s) for s in (5, 5, 6))
    assert _same(a, b)
    assert not _same(a, c)


def test_ioi_prompts(tok):
    task = make_ioi(tok, n=20, seed=1)
    for i, (clean, corrupted) in enumerate(zip(task.prompts, task.corrupted_prompts, strict=True)):
        io, s = tok.decode(task.answers[i, :1]), tok.decode(task.wrong_answers[i, :1])
        assert len(_encode(tok, io)) == 1 and len(_encode(tok, s)) == 1
        words = re.findall(r"\w+", clean)
        assert words.count(s.strip()) == 2 and words.count(io.strip()) == 1
        first = words.index(io.strip()) < words.index(s.strip())
        assert first == (i % 2 == 0)  # ABBA, BABA, ABBA, ...
        names = [w for w in re.findall(r"\w+", corrupted) if w in NAMES]
        assert len(set(names)) == 3 and not {io.strip(), s.strip()} & set(names)


def test_greater_than_per_digit_on_smollm2(tok):
    assert year_style(tok) == "per_digit"
    digit = {d: _encode(tok, str(d))[0] for d in range(10)}
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
        assert answers == [_encode(tok, f"{k:02d}")[0] for k in range(yy + 1, 100)]
        assert len([a for a in task.wrong_answers[i].tolist() if a >= 0]) == yy + 1


def test_greater_than_rejects_tokenizers_without_year_tokens():
    with pytest.raises(TaskError, match="tokenises"):
        make_greater_than(ToyTwoDigitTokenizer(chunk=3), n=4)


def test_induction_prompts(tok):
    task = make_induction(tok, n=20, seed=3, seq_len=8)
    bos = 1
    for i in range(len(task)):
        ids = task.clean_ids[i, : int(task.lengths[i])].tolist()[bos:]
        bad = task.corrupted_ids[i, : int(task.lengths[i])].tolist()[bos:]
        seq, k = ids[:8], len(ids) - 8
        assert 2 <= k <= 7 and ids[8:] == seq[:k] and bad[8:] == seq[:k]
        assert len(set(seq)) == 8 and not set(bad[:8]) & set(seq)
        assert task.answers[i].tolist() == [seq[k]] and task.wrong_answers[i].tolist() == [bad[k]]


def test_get_task_names(tok):
    assert get_task("greater_than", tok, n=3).name == "greater-than"
    with pytest.raises(TaskError, match="greater-than, induction, ioi"):
        get_task("docstring", tok)


# --- the Task type -------------------------------------------------------------------------------
def _toy(**changes) -> Task:
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
        _toy(**changes)


def test_splits_subset_and_device():
    task = _toy(n_train=1, prompts=("a", "b"))
    assert len(task.train()) == 1 and task.train().prompts == ("a",)
    assert task.held_out().clean_ids.tolist() == [[5, 6, 0]] and task.held_out().n_train is None
    with pytest.raises(TaskError, match="no held-out split"):
        _toy().held_out()
    assert _toy().train() is not None and len(_toy().train()) == 2
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
    assert not _toy(answers=torch.zeros(2, 0, dtype=torch.long)).has_answers


# --- JSON ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_json_round_trip(tok, tmp_path, name):
    task = get_task(name, tok, n=10, seed=4, n_train=7)
    to_json(task, tmp_path / "task.json")
    back = from_json(tmp_path / "task.json", None)
    assert _same(task, back)
    assert (back.name, back.metric, back.seed, back.n_train) == (
        task.name,
        task.metric,
        task.seed,
        task.n_train,
    )
    assert back.corrupted_prompts == task.corrupted_prompts


ITEM = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupted": "When Anna and Paul went to the store, Mike gave a drink to",
    "answers": " Mary",
    "wrong_answers": [" John"],
}


def test_json_string_forms(tok, tmp_path):
    as_list = tmp_path / "t.json"
    as_list.write_text(json.dumps([ITEM, ITEM]))
    expected = Task.from_strings(tok, [ITEM["clean"]] * 2, [ITEM["corrupted"]] * 2, [" Mary"] * 2, [" John"] * 2)
    assert _same(from_json(as_list, tok), expected)
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps(ITEM) + "\n\n" + json.dumps(ITEM) + "\n")
    assert _same(from_json(lines, tok), expected)
    by_content = tmp_path / "t.txt"
    by_content.write_text(json.dumps(ITEM) + "\n" + json.dumps(ITEM))
    assert _same(from_json(by_content, tok), expected)
    with_options = tmp_path / "opts.json"
    with_options.write_text(json.dumps({"name": "mine", "metric": "prob_diff", "n_train": 1, "prompts": [ITEM, ITEM]}))
    task = from_json(with_options, tok)
    assert (task.name, task.metric, task.n_train) == ("mine", "prob_diff", 1)
    assert from_json(with_options, tok, n_train=None, name="x").n_train is None
    assert from_json(as_list, tok).name == "t"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (
            json.dumps([ITEM, ITEM, ITEM, {"clean": "x", "answers": "y"}]),
            ".json",
            "item 3: field 'corrupted' is missing",
        ),
        (
            json.dumps(ITEM) + "\n\n" + json.dumps({**ITEM, "answers": 3}),
            ".jsonl",
            "line 3: field 'answers' must be",
        ),
        (json.dumps([{**ITEM, "anwsers": " Mary"}]), ".json", "item 0: unknown field 'anwsers'"),
        (json.dumps([{**ITEM, "clean": 7}]), ".json", "item 0: field 'clean' must be a string"),
        ('[{"clean": "a",]', ".json", "not valid JSON \\(line 1"),
        (json.dumps(ITEM) + "\n{oops\n", ".jsonl", "line 2: not valid JSON"),
        (json.dumps({"prompt": [ITEM]}), ".json", "unknown top-level field 'prompt'"),
        (json.dumps({"name": "x"}), ".json", "top-level field 'prompts' is missing"),
        (json.dumps([]), ".json", "the file holds no prompt"),
        (
            json.dumps([ITEM, {**ITEM, "answers": " Maryland Bartholomew"}]),
            ".json",
            "item 1: answer ' Maryland",
        ),
        (
            json.dumps([ITEM, {**ITEM, "corrupted": "When Anna went to the store"}]),
            ".json",
            "item 1: clean and",
        ),
        ("7", ".json", "expected a list of prompt objects"),
    ],
)
def test_json_errors_name_the_place(tok, tmp_path, content, suffix, message):
    path = tmp_path / f"tasks{suffix}"
    path.write_text(content)
    with pytest.raises(TaskError, match=f"^tasks{re.escape(suffix)}: {message}"):
        from_json(path, tok)


def test_json_needs_a_tokenizer_for_strings_and_a_json_path(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([ITEM]))
    with pytest.raises(TaskError, match="need a tokenizer"):
        from_json(path, None)
    with pytest.raises(TaskError, match="cannot read"):
        from_json(tmp_path / "missing.json", None)
    with pytest.raises(TaskError, match=r"\.json path"):
        to_json(_toy(), tmp_path / "t.jsonl")
