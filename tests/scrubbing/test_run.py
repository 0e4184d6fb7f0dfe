"""Causal scrubbing: endpoints against the HF model, expectations against resample ablation over every prompt
pair, a planted feature, and the batched scrub against a slow per-draw recursive reference."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ShapeError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2
from tests.scrubbing.scrub_reference import ReferenceScrub

N, T = 5, 5


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    model = tiny_gpt2(seed=3, n_layer=2, n_head=2, n_embd=16, init=0.4)
    randomize_biases(model)
    return PatchableModel(model)


def _task(n: int = N, lengths: list[int] | None = None) -> Task:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    am = torch.ones(n, T, dtype=torch.long)
    for i, length in enumerate(lengths or []):
        am[i, length:] = 0
    answers, wrong = torch.randint(1, VOCAB, (2, n, 1), generator=g)
    return Task("toy", ids, ids, am, am.sum(1) - 1, answers, wrong)


def _hf_logit_diff(model, task: Task, prompt, answers_of):
    """``(B,)`` logit difference of the HF model on ``prompt[b]``, scored with prompt ``answers_of[b]``'s answers."""
    with torch.no_grad():
        logits = model(task.clean_ids[prompt], attention_mask=task.attention_mask[prompt]).logits
    last = logits[torch.arange(len(prompt)), task.answer_pos[prompt]]
    a, w = task.answers[answers_of, 0], task.wrong_answers[answers_of, 0]
    return (last.gather(1, a[:, None]) - last.gather(1, w[:, None]))[:, 0].double()


def _pairs_task(task: Task) -> Task:
    """Every ordered pair (i, j != i) of prompts: clean i, corrupted j, i's answers (resample ablation's exact mean)."""
    i, j = zip(*[(i, j) for i in range(len(task)) for j in range(len(task)) if i != j], strict=True)
    i, j = torch.tensor(i), torch.tensor(j)
    return Task(
        "pairs",
        task.clean_ids[i],
        task.clean_ids[j],
        task.attention_mask[i],
        task.answer_pos[i],
        task.answers[i],
        task.wrong_answers[i],
    )


def _random_circuit(pm: PatchableModel, p: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(pm.graph.edge_mask.shape, generator=g) < p) & pm.graph.edge_mask


@pytest.mark.parametrize("independent", [False, True])
def test_full_graph_without_labels_is_the_model(pm, independent):
    task = _task(lengths=[5, 5, 4, 4, 5])
    r = cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask()), task, n_samples=20, independent=independent, n_boot=20)
    expected = _hf_logit_diff(pm.module, task, r.plan.originals, r.plan.originals)
    assert torch.allclose(r.per_draw["scrubbed"], expected, atol=1e-4)
    assert abs(r.metric - r.full) < 1e-4 and abs(r.recovered - 1) < 1e-4
    assert sorted(r.plan.originals.tolist()) == sorted(list(range(N)) * 4)  # every prompt equally often


def test_empty_hypothesis_is_the_metric_on_another_prompts_run(pm):
    task = _task(lengths=[5, 5, 4, 4, 3])  # prompt 4 is the only one of its length
    empty = torch.zeros_like(pm.graph.edge_mask)
    r = cf.scrub(pm, cf.Hypothesis(empty), task, n_samples=40, n_boot=20)
    o, res = r.plan.originals, r.plan.resamples
    assert bool((res != o).all()) and bool((task.lengths[res] == task.lengths[o]).all())
    expected = _hf_logit_diff(pm.module, task, res, o)
    assert torch.allclose(r.per_draw["scrubbed"], expected, atol=1e-4)
    assert abs(r.metric - r.random) < 1e-6 and abs(r.recovered) < 1e-6
    assert 4 not in o.tolist() + res.tolist() and r.plan.unpaired == (4,) and "[4]" in r.notes[0]


def test_circuit_without_labels_is_resample_ablation_from_random_prompts(pm):
    task, circuit = _task(), _random_circuit(pm)
    r = cf.scrub(pm, cf.Hypothesis(circuit), task, n_samples=3000, seed=1, n_boot=20)
    o, res = r.plan.originals, r.plan.resamples
    # draw for draw: resample ablation with the drawn prompt as the corrupted one
    drawn = Task(
        "drawn",
        task.clean_ids[o],
        task.clean_ids[res],
        task.attention_mask[o],
        task.answer_pos[o],
        task.answers[o],
        task.wrong_answers[o],
    )
    assert abs(faithfulness(pm, circuit, drawn)["metric_circuit"] - r.metric) < 1e-4
    # the draws are uniform over the ordered pairs of distinct prompts ...
    counts = torch.zeros(N, N).index_put_((o, res), torch.ones(len(o)), accumulate=True)
    assert counts.diagonal().sum() == 0 and counts.sum(1).tolist() == [600.0] * N
    assert (counts + torch.eye(N) * 150 - 150).abs().max() < 60  # 150 expected per pair, sd about 11
    # ... so the mean is resample ablation over every pair, within sampling error
    exact = faithfulness(pm, circuit, _pairs_task(task))["metric_circuit"]
    se = float(r.per_draw["scrubbed"].std()) / math.sqrt(r.n_samples)
    assert abs(r.metric - exact) < 4 * se, (r.metric, exact, se)


def test_constant_labels_make_a_node_behave_as_resampled(pm):
    task = _task()
    head = pm.graph.head_sender(0, 1)
    resampled = pm.graph.without_nodes(pm.graph.full_mask(), [head])
    exact = faithfulness(pm, resampled, _pairs_task(task))["metric_circuit"]
    hyp = cf.Hypothesis(pm.graph.full_mask(), {"a0.h1": ["same"] * N})
    r = cf.scrub(pm, hyp, task, n_samples=3000, seed=2, n_boot=20)
    se = float(r.per_draw["scrubbed"].std()) / math.sqrt(r.n_samples)
    assert abs(r.metric - exact) < 4 * se, (r.metric, exact, se)
    # draw for draw: the head's output is its clean output on the context's prompt, another prompt of the task
    o, other = r.plan.originals, r.plan.prompts[1]
    assert r.n_contexts == 2 and bool((other != o).all())
    drawn = Task(
        "drawn",
        task.clean_ids[o],
        task.clean_ids[other],
        task.attention_mask[o],
        task.answer_pos[o],
        task.answers[o],
        task.wrong_answers[o],
    )
    assert abs(faithfulness(pm, resampled, drawn)["metric_circuit"] - r.metric) < 1e-4
    assert abs(r.metric - r.full) > 0.05  # and the head matters on this model
    # labels that tell every prompt apart: the node depends on its whole input, as without labels
    distinct = cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask(), {"a0.h1": list(range(N))}), task, n_samples=50)
    assert abs(distinct.metric - distinct.full) < 1e-4


# --- a planted model: head a0.h0 copies the first token's identity to the answer logits -------------------
def _planted() -> tuple[PatchableModel, Task]:
    cfg = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=16, n_positions=8, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (model.transformer.h[0].ln_1, model.transformer.h[0].ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        model.transformer.wte.weight.copy_(torch.eye(16))  # token t -> e_t (tied unembedding reads e_t back)
        attn = model.transformer.h[0].attn
        attn.c_attn.weight[1, 32], attn.c_attn.weight[2, 32] = 1.0, -1.0  # head 0's v[0] = x_1 - x_2 (token A)
        attn.c_proj.weight[0, 6], attn.c_proj.weight[0, 7] = 1.0, -1.0  # ... written to the logits of 6 and 7
    # prompts [A, B, C]: A in {1, 2} decides the answer (6 or 7); B in {3, 4} and C in {5, 8, 9} do not
    rows = [(a, b, c) for a in (1, 2) for b in (3, 4) for c in (5, 8, 9)]
    ids = torch.tensor(rows)
    answers = torch.tensor([[6] if a == 1 else [7] for a, _, _ in rows])
    task = Task("planted", ids, ids, torch.ones_like(ids), torch.full((len(rows),), 2), answers, 13 - answers)
    return PatchableModel(model), task


def test_planted_feature_is_recovered_and_a_wrong_one_is_not():
    pm, task = _planted()
    g = pm.graph
    circuit = g.mask_of(["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "a0.h0->logits", "input->logits"])
    first, second = task.clean_ids[:, 0].tolist(), task.clean_ids[:, 1].tolist()
    true = cf.scrub(pm, cf.Hypothesis(circuit, {"a0.h0": first}), task, n_samples=600, contributions=True)
    wrong = cf.scrub(pm, cf.Hypothesis(circuit, {"a0.h0": second}), task, n_samples=600)
    assert true.full > 0.1 and abs(true.recovered - 1) < 1e-4
    assert true.interval.lo > 0.99
    # by hand: the head runs on a prompt with the same B: the same A in 2 of 5 others (random: 5 of 11), so
    # recovered = (-1/5 + 1/11) / (1 + 1/11) = -0.1 in expectation
    assert wrong.recovered < 0.3 and wrong.interval.hi < 0.5
    assert abs(true.contributions["a0.h0"]["drop"] - 1) < 1e-4  # resampling the head loses everything
    assert set(true.contributions) == {"input", "a0.h0"}


# --- the batched scrub equals a slow per-draw recursive evaluation, draw for draw --------------------------
@pytest.mark.parametrize("independent", [False, True])
def test_batched_scrub_equals_slow_reference(pm, independent):
    task = _task(n=6, lengths=[5, 5, 5, 4, 4, 4])
    g = pm.graph
    circuit = _random_circuit(pm, p=0.6, seed=4)
    circuit[g.head_sender(0, 0), g.head_receiver(1, 1, "q")] = True  # a labelled head feeding a labelled head
    circuit[g.head_sender(1, 1), g.logits_receiver] = True
    labels = {
        "a0.h0": [0, 1, 0, 1, 0, 1],
        "a1.h1": [0, 0, 1, 1, 2, 2],
        "m0": [0, 0, 0, 1, 1, 1],
        "input": [0, 0, 1] * 2,
    }
    r = cf.scrub(pm, cf.Hypothesis(circuit, labels), task, n_samples=8, seed=5, independent=independent, n_boot=20)
    assert r.n_contexts > 3  # nested contexts are exercised
    hyp = cf.Hypothesis(circuit, labels).resolve(g, len(task))
    ref = ReferenceScrub(pm.spec, g, task, hyp.kept, hyp.labelled_mask(g.n_senders), r.plan)
    with torch.no_grad():
        logits = torch.stack([ref.draw_logits(d) for d in range(r.n_samples)])
    o = r.plan.originals
    a, w = task.answers[o, 0], task.wrong_answers[o, 0]
    expected = (logits.gather(1, a[:, None]) - logits.gather(1, w[:, None]))[:, 0].double()
    assert torch.allclose(r.per_draw["scrubbed"], expected, atol=1e-5)


def test_independent_mode_draws_a_prompt_per_edge_into_each_receiver(pm):
    task = _task(n=6, lengths=[5, 5, 5, 4, 4, 4])
    r = cf.scrub(pm, cf.Hypothesis(_random_circuit(pm)), task, n_samples=12, independent=True, n_boot=20)
    P, prompts, g = r.plan.edge_prompts, r.plan.prompts, pm.graph  # (C, S, R, B), (C, B)
    edges = g.edge_mask[None, :, :, None].expand_as(P)
    own = prompts[:, None, None, :].expand_as(P)
    assert bool((P != own)[edges].all()) and bool((task.lengths[P] == task.lengths[own]).all())
    for b in range(r.n_samples):  # the left-out edges of one draw read different prompts (2 others each here)
        assert len(P[0, :, :, b][g.edge_mask].unique()) == 2


def test_bad_hypotheses_are_refused_clearly(pm):
    task = _task()
    with pytest.raises(ShapeError, match="5 prompts"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask(), {"a0.h1": [0, 1]}), task, n_samples=4)
    with pytest.raises(ConfigError, match="not a sender"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask(), {"a9.h9": [0] * N}), task, n_samples=4)
    with pytest.raises(ConfigError, match="Circuit or an"):
        cf.Hypothesis([1, 2]).resolve(pm.graph, N)


@pytest.mark.parametrize("features", [None, [("a0.h1", [0] * 5)]])
def test_scrub_features_that_are_not_a_mapping_are_a_clear_error(pm, features):
    with pytest.raises(ConfigError, match="features must be a mapping of node name"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask(), features), _task(), n_samples=4)


def test_scrub_refuses_a_huge_n_samples_before_allocating(pm):
    with pytest.raises(ConfigError, match="n_samples must be at most 10000"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask()), _task(), n_samples=10_001)  # 10**13 took all memory


def test_scrub_seed_that_is_not_an_integer_is_a_clear_error(pm):
    with pytest.raises(ConfigError, match="seed .* must be an integer; got 'x'"):
        cf.scrub(pm, cf.Hypothesis(pm.graph.full_mask()), _task(), n_samples=4, seed="x")


def test_scrub_contributions_of_the_empty_hypothesis_are_empty(pm):
    r = cf.scrub(pm, cf.Hypothesis(torch.zeros_like(pm.graph.full_mask())), _task(), n_samples=6, contributions=True)
    assert r.contributions == {} and abs(r.metric - r.random) < 1e-5  # nothing kept: the everything-resampled run


def test_draws_per_pass_is_the_one_chunk_formula_and_chunked_scrub_equals_one_pass():
    """The joint pass is sized by the memory estimate's routed pass kind; one draw per pass (a budget of 1 byte)
    gives the same values as every draw in one pass, in float64."""
    from circuitfind.engine.memory import PASS_BUDGET_BYTES
    from circuitfind.scrubbing.forward import draws_per_pass

    model = tiny_gpt2(seed=3, n_layer=2, n_head=2, n_embd=16, init=0.4).double()
    randomize_biases(model)
    pm = PatchableModel(model)
    g, D = pm.graph, pm.spec.d_model
    row = (2 * (g.n_senders + 3 * (3 * g.n_heads + 1)) + g.n_senders + 2 * g.n_layers + 1) * T * D * 8  # K = 2
    assert draws_per_pass(pm, 3, 2, T, 6 * row) == 2 and draws_per_pass(pm, 3, 2, T, 6 * row - 1) == 1
    assert draws_per_pass(pm, 3, 2, T, 1) == 1
    task = _task(n=6, lengths=[5, 5, 5, 4, 4, 4])
    hyp = cf.Hypothesis(_random_circuit(pm, p=0.6, seed=4), {"a0.h0": [0, 1, 0, 1, 0, 1], "m0": [0, 0, 0, 1, 1, 1]})
    kw = dict(n_samples=12, seed=5, n_boot=20, contributions=True)
    one = cf.scrub(pm, hyp, task, memory_budget=PASS_BUDGET_BYTES, **kw)
    tight = cf.scrub(pm, hyp, task, memory_budget=1, **kw)
    torch.testing.assert_close(tight.per_draw["scrubbed"], one.per_draw["scrubbed"], rtol=0, atol=1e-10)
    torch.testing.assert_close(tight.per_draw["random"], one.per_draw["random"], rtol=0, atol=1e-10)
    for name, c in one.contributions.items():
        assert tight.contributions[name]["metric"] == pytest.approx(c["metric"], abs=1e-10)
