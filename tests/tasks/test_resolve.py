"""tasks.resolve.split_task (the one held-out split builder) and jsonio.is_task_file (the one task-file rule)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuitfind.errors import TaskError
from circuitfind.sweeps.cell import build_task
from circuitfind.sweeps.spec import Cell
from circuitfind.tasks import Task, get_task, is_task_file, split_task, task_from_tensors, to_json


def _ids_file(tmp_path: Path, n: int = 5) -> tuple[Path, torch.Tensor]:
    clean = torch.arange(n * 3).reshape(n, 3) + 10  # row i: 10 + 3i, 11 + 3i, 12 + 3i: every row tells its place
    task = task_from_tensors(
        {
            "clean_ids": clean,
            "corrupted_ids": clean + 100,
            "answers": torch.ones(n, 1).long(),
            "wrong_answers": torch.zeros(n, 1).long(),
        }
    )
    path = tmp_path / "ids.json"
    to_json(task, path)
    return path, clean


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("a.json", True), ("b.JSONL", True), (" c.jsonl ", True), (Path("d/e.Json"), True), ("ioi", False),
     ("greater-than", False), ("a.json.bak", False), ("jsonl", False)],
)  # fmt: skip
def test_is_task_file_is_the_suffix_rule_in_any_case(arg, expected):
    assert is_task_file(arg) is expected


def test_a_task_file_splits_into_its_first_prompts_then_the_held_out_ones(tmp_path):
    path, clean = _ids_file(tmp_path)
    task = split_task(path, None, n_prompts=3, held_out=2)
    assert torch.equal(task.train().clean_ids, clean[:3]) and torch.equal(task.held_out().clean_ids, clean[3:])
    task = split_task(path, None, n_prompts=2, held_out=1)  # the file's last 2 prompts are not used
    assert torch.equal(task.train().clean_ids, clean[:2]) and torch.equal(task.held_out().clean_ids, clean[2:3])
    task = split_task(path, None, held_out=2)  # discovery: all but the held-out prompts
    assert torch.equal(task.train().clean_ids, clean[:3]) and torch.equal(task.held_out().clean_ids, clean[3:])
    whole = split_task(path, None)  # a file has no held-out split unless asked for
    assert torch.equal(whole.train().clean_ids, clean) and whole.n_train is None


def test_a_task_file_too_short_for_the_split_is_an_error_naming_the_counts(tmp_path):
    path, _ = _ids_file(tmp_path)
    with pytest.raises(TaskError, match=r"has 5 prompts; the split needs n_prompts \+ held_out = 4 \+ 2"):
        split_task(path, None, n_prompts=4, held_out=2)
    with pytest.raises(TaskError, match="has 5 prompts, too few for 5 held-out prompts"):
        split_task(path, None, held_out=5)
    with pytest.raises(TaskError, match="held_out must be a non-negative integer; got -1"):
        split_task(path, None, n_prompts=2, held_out=-1)


def test_a_built_in_task_generates_n_plus_held_out_prompts(tok):
    task = split_task("ioi", tok, n_prompts=3, held_out=2, seed=1)
    assert (len(task.train()), len(task.held_out())) == (3, 2)
    assert torch.equal(task.clean_ids, get_task("ioi", tok, n=5, seed=1).clean_ids)
    assert len(split_task("ioi", tok).train()) == 20 and len(split_task("ioi", tok).held_out()) == 20  # defaults
    with pytest.raises(TaskError, match="must be tokenised"):
        split_task("ioi", None, n_prompts=3, held_out=2)


def test_a_sweep_cell_and_the_split_builder_give_the_same_prompts(tmp_path):
    path, clean = _ids_file(tmp_path)
    task = build_task(Cell(model="m", task=str(path), n_prompts=3, held_out=1), None)
    assert isinstance(task, Task)
    assert torch.equal(task.train().clean_ids, clean[:3]) and torch.equal(task.held_out().clean_ids, clean[3:4])
    with pytest.raises(TaskError, match=r"has 5 prompts; the split needs n_prompts \+ held_out = 4 \+ 2"):
        build_task(Cell(model="m", task=str(path), n_prompts=4, held_out=2), None)
