"""Bad inputs fail up front with a CircuitfindError that says what was expected and what was found."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import GPT2Config, GPT2Model

import circuitfind as cf
from circuitfind.cli.main import main
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ModelLoadError, TaskError, UnsupportedModelError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.tasks import Task, from_json, resolve_task, to_json
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


# --- task files and task dicts (item 11) ---------------------------------------------------------------------
class _CharTokenizer:
    """One token per character: enough to tokenise string task files without a download."""

    bos_token_id = None
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}


ITEMS = [{"clean": "Zoë ab", "corrupted": "Zoë cd", "answers": "e", "wrong_answers": "f"}]


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
        from_json(path, _CharTokenizer())


def test_a_utf8_task_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ITEMS, ensure_ascii=False).encode())
    assert len(from_json(path, _CharTokenizer())) == 1


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
        resolve_task(make(_task()))


def test_answers_given_as_ints_are_a_task_error():
    with pytest.raises(TaskError, match=r"pair 0: each answer entry must be a string.*got int 5.*token ids"):
        Task.from_strings(_CharTokenizer(), ["ab"], ["cd"], answers=[5])


# --- options and models given to discover (item 11) ---------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": True}, r"batch_size .*must be a positive integer.*True"),
        ({"batch_size": 0}, r"batch_size .*must be a positive integer.*0"),
        ({"absolute": "no"}, r"absolute must be True or False; got 'no'"),
    ],
)
def test_bad_option_types_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cf.discover(GPT2, _task(), progress=False, **kwargs)


def test_a_base_model_without_lm_head_is_refused():
    base = GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=VOCAB))
    with pytest.raises(UnsupportedModelError, match=r"GPT2Model is a base model without a language-model head"):
        cf.discover(base, _task(), progress=False)


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = tiny_gpt2()
    with pytest.raises(ModelLoadError, match=r"on the meta device"):
        cf.discover(model, _task(), progress=False)


# --- the command line with a model folder saved without a tokenizer (item 11) -----------------------------------
@pytest.fixture(scope="module")
def bare_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bare-gpt2")
    tiny_gpt2(n_layer=2, n_head=2, n_embd=16).save_pretrained(path)
    return path


def _cli(model_dir, task, out, *extra):
    argv = ["discover", "--model", str(model_dir), "--task", str(task), "--out", str(out), "--no-progress"]
    return main([*argv, "--threshold", "0.01", *extra])


def test_cli_runs_a_token_id_task_file_without_a_tokenizer(bare_model_dir, tmp_path, capsys):
    task_file = tmp_path / "ids.json"
    to_json(_task(), task_file)
    assert _cli(bare_model_dir, task_file, tmp_path / "run") == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "circuit.json").is_file()


def test_cli_without_a_tokenizer_says_how_to_pass_one(bare_model_dir, tmp_path, capsys):
    task_file = tmp_path / "strings.json"
    task_file.write_text(json.dumps(ITEMS))
    for task in ("ioi", task_file):
        assert _cli(bare_model_dir, task, tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert "error: " in err and "--tokenizer" in err and "Traceback" not in err


def test_cli_tokenizer_option_is_used(bare_model_dir, tmp_path, monkeypatch):
    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        return tiny_gpt2(), None

    monkeypatch.setattr("circuitfind.models.load_model", fake_load)
    task_file = tmp_path / "ids.json"
    to_json(_task(), task_file)
    assert _cli(bare_model_dir, task_file, tmp_path / "run", "--tokenizer", "some/tokenizer") == 0
    assert seen["tokenizer"] == "some/tokenizer"
