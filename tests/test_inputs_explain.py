"""Bad inputs to the issue-23 tools (causal scrubbing, head classes, two-model diff): each gives the right
result or a clear circuitfind error, never a raw traceback or a silently wrong number. Tiny models only."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf
from circuitfind.cli.main import main
from circuitfind.compare import check_comparable
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, tiny_gpt2, tiny_llama, tiny_qwen2
from tests.toy_problems import natural_task


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    return PatchableModel(tiny_gpt2(seed=3, n_layer=2, n_head=2, n_embd=16, init=0.4))


@pytest.fixture(scope="module")
def task() -> Task:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (5, 5), generator=g)
    am = torch.ones_like(ids)
    answers, wrong = torch.randint(1, VOCAB, (2, 5, 1), generator=g)
    return Task("toy", ids, ids, am, am.sum(1) - 1, answers, wrong)


@pytest.mark.parametrize("features", [None, [("a0.h1", [0] * 5)]])
def test_scrub_features_that_are_not_a_mapping_are_a_clear_error(pm, task, features):
    with pytest.raises(ConfigError, match="features must be a mapping of node name"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask(), features), task, n_samples=4)


def test_scrub_refuses_a_huge_n_samples_before_allocating(pm, task):
    with pytest.raises(ConfigError, match="n_samples must be at most 10000"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask()), task, n_samples=10_001)  # 10**13 took all memory


def test_scrub_seed_that_is_not_an_integer_is_a_clear_error(pm, task):
    with pytest.raises(ConfigError, match="seed .* must be an integer; got 'x'"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask()), task, n_samples=4, seed="x")


def test_scrub_contributions_of_the_empty_hypothesis_are_empty(pm, task):
    r = cf.scrub(pm, cf.Hypothesis(torch.zeros_like(pm.graph.full_mask())), task, n_samples=6, contributions=True)
    assert r.contributions == {} and abs(r.metric - r.random) < 1e-5  # nothing kept: the everything-resampled run


def test_diff_of_models_of_different_families_with_one_graph_is_a_clear_error():
    # GPT-2 and Llama of one shape share the graph, but not the weights of a node: the weight table was NaN
    a, b = PatchableModel(tiny_gpt2(seed=0)), PatchableModel(tiny_llama())
    assert a.graph.describe() == b.graph.describe()
    with pytest.raises(ConfigError, match="weights of node a0.h0 differ in layout"):
        check_comparable(a, b)
    with pytest.raises(ConfigError, match="differ in layout"):  # Qwen2's q/k/v biases, Llama has none
        check_comparable(PatchableModel(tiny_llama()), PatchableModel(tiny_qwen2(sliding_window=None)))


def test_diff_of_a_model_with_itself_has_no_differences_and_top_is_checked():
    pm = PatchableModel(tiny_gpt2(seed=3, init=0.2))
    task = natural_task(pm)
    d = cf.diff(pm, pm, task, n_edges=10, metric="logit_diff")
    assert d.jaccard == 1.0 and d.only_a == [] and d.only_b == []
    assert all(r["diff"] == 0.0 for r in d.weights + d.activations + d.logprobs if math.isfinite(r["diff"]))
    assert len(d.logprobs) == 20
    with pytest.raises(ConfigError, match="top .* non-negative integer; got -1"):  # was all rows but the last
        cf.diff(pm, pm, task, top=-1, n_edges=10, metric="logit_diff")


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """A tiny GPT-2 folder with SmolLM2's tokenizer and an IOI circuit of it, saved."""
    from circuitfind.tasks import get_task

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


def test_cli_scrub_missing_circuit_file_and_diff_of_one_model_twice(saved, tmp_path, capsys):
    root, _ = saved
    assert main(["scrub", str(tmp_path / "nope.json"), "--task", "ioi", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "diff.json"
    args = ["diff", "--model", str(root / "tiny"), "--model-b", str(root / "tiny"), "--task", "ioi"]
    assert main([*args, "--n-prompts", "4", "--n-edges", "8", "--json", str(out), "--no-progress"]) == 0
    d = json.loads(out.read_text())
    assert d["jaccard"] == 1.0 and d["only_a"] == [] and d["only_b"] == []
    assert all(r["diff"] in (0.0, None) for r in d["weights"] + d["activations"] + d["logprobs"])
