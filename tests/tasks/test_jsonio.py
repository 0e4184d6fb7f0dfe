"""Task files (tasks/jsonio.py): round trips, the string forms, errors that name the place; token ids outside int64
or the vocabulary, directories and symlink loops, deep nesting, text that is not UTF-8, and ``max_prompts`` reading
no further than it needs."""

from __future__ import annotations

import json
import os
import re

import pytest

from circuitfind.errors import TaskError
from circuitfind.tasks import BUILTIN, Task, from_json, get_task, to_json
from tests.cli_runs import discover_cli
from tests.models_tiny import VOCAB
from tests.toy_tasks import ITEMS, CharTokenizer, CountingTokenizer, same_task, string_item, two_prompt_task


# --- token ids outside int64 or the vocabulary (issue 19, item 11) ---------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clean_ids", [1, 10**20], r"field 'clean_ids' holds token id 100000000000000000000 at position 1, outside"),
        ("answer_ids", [2**63], r"field 'answer_ids' holds token id 9223372036854775808 at position 0, outside"),
        ("corrupted_ids", [1, VOCAB], rf"field 'corrupted_ids' holds token id {VOCAB} .*vocabulary \({VOCAB} tokens"),
    ],
)
def test_token_ids_outside_int64_or_the_vocabulary_are_task_errors(tmp_path, field, value, message):
    item = {"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5], "wrong_answer_ids": [6], field: value}
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5]}, item]))
    tokenizer = CountingTokenizer() if "vocabulary" in message else None
    with pytest.raises(TaskError, match=rf"^ids\.json: item 1: {message}"):
        from_json(path, tokenizer)


# --- directories, symlink loops, deep nesting, big files (issue 19, item 15) --------------------------------------
def test_a_directory_or_a_symlink_loop_as_task_file_says_what_it_is(bare_model_dir, tmp_path, capsys):
    folder = tmp_path / "tasks.json"
    folder.mkdir()
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.jsonl"
    os.symlink(tmp_path / "gone.jsonl", dangling)
    cases = [(folder, "it is a directory, not a file"), (loop, "symbolic link loop"), (dangling, "link to a file")]
    for path, message in cases:
        with pytest.raises(TaskError, match=message):
            from_json(path, None)
        assert discover_cli(bare_model_dir, path, tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert message in err and "does not exist;" not in err.replace("file that does not exist", ""), err
        assert "Traceback" not in err


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_100000_deep_is_a_task_error(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(TaskError, match=r"nested too deeply"):
        from_json(path, None)
    with pytest.raises(TaskError, match=r"nested too deeply"):
        from_json(path, None, max_prompts=3)


def test_max_prompts_stops_reading_and_tokenising(tmp_path):
    items = [string_item(i) for i in range(6)]
    as_list = tmp_path / "big.json"
    as_list.write_text("[" + ",\n".join(json.dumps(it) for it in items) + ",\n{broken json")
    lines = tmp_path / "big.jsonl"
    lines.write_bytes(b"\n".join(json.dumps(it).encode() for it in items) + b"\n\xff\xfe not json at all\n")
    for path in (as_list, lines):
        tok = CountingTokenizer()
        task = from_json(path, tok, max_prompts=4)
        assert len(task) == 4 and task.prompts == tuple(it["clean"] for it in items[:4])
        assert tok.calls == 4 * 4  # clean, corrupted, answer, wrong answer of 4 prompts: nothing after them
    with pytest.raises(TaskError, match=r"big\.json: not valid JSON \(line 7"):
        from_json(as_list, CountingTokenizer())  # without a limit the whole file is read, and it is broken
    with pytest.raises(TaskError, match=r"big\.jsonl: a task file must be UTF-8 text; found byte 0xff"):
        from_json(lines, CountingTokenizer())
    with_options = tmp_path / "opts.json"
    with_options.write_text(json.dumps({"n_train": 5, "prompts": items}))
    assert from_json(with_options, CountingTokenizer(), max_prompts=3).n_train == 3  # the split is cut with them
    assert from_json(with_options, CountingTokenizer(), max_prompts=6).n_train == 5
    with pytest.raises(TaskError, match="max_prompts must be a positive integer or None; got"):
        from_json(lines, None, max_prompts=0)


# --- text that is not UTF-8 ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "write,message",
    [
        (lambda p: p.write_bytes(json.dumps(ITEMS, ensure_ascii=False).encode("latin-1")), r"byte 0xeb at offset"),
        (lambda p: p.write_text(json.dumps(ITEMS), encoding="utf-16"), r"UTF-16"),
        (lambda p: p.write_text('[{"clean": "a \\ud800 b", "corrupted": "x y z", "answers": "c"}]'), "lone surrogate"),
    ],
)
def test_task_files_that_are_not_utf8_text_are_task_errors(tmp_path, write, message):
    path = tmp_path / "task.json"
    write(path)
    with pytest.raises(TaskError, match=message):
        from_json(path, CharTokenizer())


def test_a_utf8_task_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ITEMS, ensure_ascii=False).encode())
    assert len(from_json(path, CharTokenizer())) == 1


# --- round trips, the string forms, errors that name the place ---------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_json_round_trip(tok, tmp_path, name):
    task = get_task(name, tok, n=10, seed=4, n_train=7)
    to_json(task, tmp_path / "task.json")
    back = from_json(tmp_path / "task.json", None)
    assert same_task(task, back)
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
    assert same_task(from_json(as_list, tok), expected)
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps(ITEM) + "\n\n" + json.dumps(ITEM) + "\n")
    assert same_task(from_json(lines, tok), expected)
    by_content = tmp_path / "t.txt"
    by_content.write_text(json.dumps(ITEM) + "\n" + json.dumps(ITEM))
    assert same_task(from_json(by_content, tok), expected)
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
        to_json(two_prompt_task(), tmp_path / "t.jsonl")
