"""Two-model diff: a copy with one head's output weights zeroed shows that head on top, and clear errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from circuitfind import discover
from circuitfind.compare import check_comparable, diff, logprob_diffs
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.graph import NodeKind
from circuitfind.models.weights import node_weights
from tests.models_tiny import tiny_gpt2, tiny_llama, tiny_qwen2
from tests.toy_problems import natural_task


def _zero_head_output(model, layer: int, head: int):
    """A copy of a GPT-2 with ``W_O`` of one head zeroed (its rows of ``c_proj``, a Conv1D ``(D_in, D_out)``)."""
    b = copy.deepcopy(model)
    e = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        b.transformer.h[layer].attn.c_proj.weight[head * e : (head + 1) * e] = 0.0
    return b


OPTIONS = {"method": "eap", "n_edges": 40, "metric": "logit_diff", "progress": False}


@pytest.fixture(scope="module")
def zeroed():
    a = tiny_gpt2(seed=3, init=0.2)
    pm_a = PatchableModel(a)
    task = natural_task(pm_a)
    # zero the head above layer 0 with the most edges in A's circuit, so that its edges are there to lose
    circuit = discover(pm_a, task, **OPTIONS)
    heads = [e.sender for e in circuit.edges if e.sender.kind is NodeKind.HEAD and e.sender.layer > 0]
    top = max(set(heads), key=heads.count)
    pm_b = PatchableModel(_zero_head_output(a, top.layer, top.head))
    return pm_a, pm_b, task, top, diff(pm_a, pm_b, task, **OPTIONS)


def test_the_zeroed_head_tops_the_weight_table(zeroed):
    pm_a, _, _, head, d = zeroed
    assert d.weights[0]["node"] == head.name
    # only its W_O changed: the difference is exactly the norm of that slice of A's weights
    w_o = pm_a.spec.layers[head.layer].attn.W_O[head.head]
    assert d.weights[0]["diff"] == pytest.approx(float(w_o.norm()), rel=1e-5)
    assert all(r["diff"] == 0.0 for r in d.weights[1:])


def test_the_zeroed_head_tops_the_activation_table(zeroed):
    pm_a, _, _, head, d = zeroed
    top = d.activations[0]
    assert top["node"] == head.name and top["relative"] == pytest.approx(1.0)  # its output is 0 in B
    diffs = {r["node"]: r["diff"] for r in d.activations}
    g = pm_a.graph
    upstream = g.sender_names[: g.head_sender(head.layer, 0)]  # every sender below its layer
    same_layer = [g.sender_names[g.head_sender(head.layer, h)] for h in range(g.n_heads) if h != head.head]
    assert all(diffs[n] == 0.0 for n in [*upstream, *same_layer])  # they see the same input in both models
    assert diffs[f"m{head.layer}"] > 0  # the MLP after it reads its output


def test_its_edges_are_among_the_circuit_differences(zeroed):
    _, _, _, head, d = zeroed
    name = head.name
    in_a = {e.name for e in d.circuit_a.edges if e.sender.name == name}
    assert in_a, "the head should matter in A for this test to mean anything"
    assert not any(e.sender.name == name for e in d.circuit_b.edges)  # its output is zero in B: no edge matters
    only_a = {r["edge"] for r in d.only_a}
    assert in_a <= only_a
    for r in d.only_a:
        if r["edge"] in in_a:
            assert r["score_b"] == pytest.approx(0.0, abs=1e-6)  # in B removing its edge changes nothing
    inter = len(d.circuit_a.edges) - len(d.only_a)
    assert d.jaccard == pytest.approx(inter / (inter + len(d.only_a) + len(d.only_b)))


def test_logprob_differences_by_hand(zeroed):
    pm_a, pm_b, task, _, d = zeroed
    row = d.logprobs[0]
    p, pos = row["prompt"], row["position"]
    ids = task.clean_ids[p : p + 1, : pos + 1]
    tok = int(task.answers[p, 0]) if pos == int(task.answer_pos[p]) else int(task.clean_ids[p, pos + 1])
    zero = pm_a.ablation("zero")
    lp = [
        torch.log_softmax(pm.forward(ids, zero, pm.graph.full_mask())[0, -1].double(), -1)[tok] for pm in (pm_a, pm_b)
    ]
    assert row["token"] == f"#{tok}" and row["diff"] == pytest.approx(float(lp[0] - lp[1]), abs=1e-4)
    assert abs(row["diff"]) >= max(abs(r["diff"]) for r in d.logprobs)
    same = logprob_diffs(pm_a, pm_a, task, top=3)
    assert [r["diff"] for r in same] == [0.0, 0.0, 0.0]


def test_json_and_explorer(zeroed, tmp_path):
    _, _, _, head, d = zeroed
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["weights"][0]["node"] == head.name and out["n_edges_a"] == d.circuit_a.n_edges > 0
    html = d.to_html(tmp_path / "diff.html").read_text()
    assert '"diff":' in html and "only in A" in html


def test_mismatched_models_give_a_clear_error():
    a, b = PatchableModel(tiny_gpt2(n_layer=2)), PatchableModel(tiny_gpt2(n_layer=3))
    with pytest.raises(ConfigError, match="differ in graph: A has 2 layers"):
        check_comparable(a, b)
    c = PatchableModel(tiny_gpt2(n_layer=2, n_embd=48))
    with pytest.raises(ConfigError, match="residual width"):
        diff(a, c, natural_task(a), n_edges=3)

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    with pytest.raises(ConfigError, match="tokenizers differ"):
        check_comparable(a, a, Tok({"a": 0, "b": 1}), Tok({"a": 1, "b": 0}))


def test_gqa_shared_kv_change_goes_to_every_query_head_of_its_group():
    a = tiny_llama(seed=1)
    b = copy.deepcopy(a)
    e = a.config.hidden_size // a.config.num_attention_heads
    with torch.no_grad():
        b.model.layers[0].self_attn.k_proj.weight[:e] += 1.0  # key/value head 0, shared by query heads 0 and 1
    wa, wb = node_weights(PatchableModel(a).spec), node_weights(PatchableModel(b).spec)
    g = PatchableModel(a).graph
    changed = [
        g.sender_names[i]
        for i, (x, y) in enumerate(zip(wa, wb, strict=True))
        if any(not torch.equal(p, q) for p, q in zip(x, y, strict=True))
    ]
    assert changed == ["a0.h0", "a0.h1"]


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
    d = diff(pm, pm, task, n_edges=10, metric="logit_diff")
    assert d.jaccard == 1.0 and d.only_a == [] and d.only_b == []
    assert all(r["diff"] == 0.0 for r in d.weights + d.activations + d.logprobs if math.isfinite(r["diff"]))
    assert len(d.logprobs) == 20
    with pytest.raises(ConfigError, match="top .* non-negative integer; got -1"):  # was all rows but the last
        diff(pm, pm, task, top=-1, n_edges=10, metric="logit_diff")
