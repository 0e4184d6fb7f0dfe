"""`circuitfind scrub` (scrubbing/command.py): a saved circuit scrubbed on the held-out prompts, and broken
labels files, draws and circuit files each a clear error. Tiny GPT-2s with SmolLM2's tokenizer, saved as folders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf
from circuitfind.cli.main import main
from circuitfind.tasks import get_task


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """A tiny GPT-2 folder with SmolLM2's tokenizer and an IOI circuit of it, saved."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=16, n_positions=64,
                        initializer_range=0.5, bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    circuit = cf.discover(model, get_task("ioi", tok, n=4), method="eap", n_edges=10, metric="logit_diff")
    path = circuit.replace(model=str(root / "tiny")).with_config(task="ioi").save(root / "circuit.json")
    return root, path


def test_cli_scrubs_a_saved_circuit_on_the_held_out_prompts(tok, tmp_path, capsys):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=2, n_embd=16, n_positions=64, initializer_range=0.5)
    model_dir = tmp_path / "tiny"
    GPT2LMHeadModel(config).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    task = get_task("ioi", tok, n=16, seed=0, n_train=4)
    circuit = cf.discover(model, task, method="eap", n_edges=30, metric="logit_diff", progress=False)
    path = circuit.replace(model=str(model_dir)).with_config(task="ioi").save(tmp_path / "circuit.json")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a1.h0": [tok.decode(int(a)) for a in task.held_out().answers[:, 0]]}))
    argv = ["scrub", str(path), "--n-prompts", "4", "--held-out", "12", "--draws", "24", "--labels", str(labels)]
    assert main([*argv, "--json", str(tmp_path / "scrub.json")]) == 0
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "scrub.json").read_text())
    expected = cf.scrub(model, cf.Hypothesis(circuit, json.loads(labels.read_text())), task.held_out(), n_samples=24)
    assert written["recovered"] == pytest.approx(expected.recovered, abs=1e-6)
    assert written["n_samples"] == 24 and f"recovered {expected.recovered:.4f}" in out


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"a0.h1": [0, 1', "is not valid JSON"),
        (b"\xff\xfe\x00\x81binary", "cannot be read as JSON text"),
        ('[["a0.h1", [0]]]', "holds a JSON list"),
        (None, "is a directory"),
        ("missing", "does not exist"),
    ],
)
def test_cli_scrub_labels_file_that_is_broken_is_a_clear_error(saved, tmp_path, capsys, content, message):
    root, circuit = saved
    labels = tmp_path / "labels.json"
    if content is None:
        labels.mkdir()
    elif isinstance(content, bytes):
        labels.write_bytes(content)
    elif content != "missing":
        labels.write_text(content)
    argv = ["scrub", str(circuit), "--n-prompts", "2", "--held-out", "8", "--draws", "4", "--no-progress"]
    assert main([*argv, "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert message in err and "node name -> one label per scrubbed prompt" in err


@pytest.mark.parametrize("argv, message", [
    (["--draws", "-1"], "n_samples (draws of (prompt, resample)) must be a positive integer; got -1"),
    (["--draws", "0"], "must be a positive integer; got 0"),
])  # fmt: skip
def test_cli_scrub_bad_draws_are_a_clear_error(saved, capsys, argv, message):
    root, circuit = saved
    assert main(["scrub", str(circuit), "--n-prompts", "2", "--held-out", "8", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_scrub_of_a_missing_circuit_file_is_a_clear_error(tmp_path, capsys):
    assert main(["scrub", str(tmp_path / "nope.json"), "--task", "ioi", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
