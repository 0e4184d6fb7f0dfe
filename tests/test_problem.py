"""problem: the one exact evaluator against plain forwards of the model, K masks in one pass against K single
passes, discover's reported faithfulness against ``cf.evaluate.faithfulness``, and the one chunk formula (sized by
hand; chunked equals unchunked on every caller path) on a tiny float64 GPT-2."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms.eap import EapOptions, run_eap
from circuitfind.algorithms.eap_ig import run_eap_ig
from circuitfind.algorithms.exact import run_exact_nodes
from circuitfind.engine.memory import PassKind, pass_bytes_per_prompt
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.evaluate.circuits import random_circuits
from circuitfind.problem import Faithfulness, prepare_problem
from circuitfind.selection.validated import PromptValues
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2

N, T = 6, 5


@pytest.fixture(scope="module")
def model():
    m = tiny_gpt2(n_layer=2, n_head=2, n_embd=16, init=0.3).double()
    randomize_biases(m)
    return m


@pytest.fixture(scope="module")
def pm(model) -> PatchableModel:
    return PatchableModel(model)


def _task(n_train: int | None = None) -> Task:
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(1, VOCAB, (N, T), generator=g)
    corrupt = torch.randint(1, VOCAB, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    answers = torch.randint(1, VOCAB, (N, 1), generator=g)
    wrong = (answers + torch.randint(0, VOCAB - 3, (N, 1), generator=g)) % (VOCAB - 1) + 1  # never the answer
    return Task("toy", clean, corrupt, am, am.sum(1) - 1, answers, wrong, metric="logit_diff", n_train=n_train)


def _logit_diff(logits: torch.Tensor, task: Task) -> float:
    """Mean over prompts of logit[answer] - logit[wrong] at the last position: logits (B, T, V) of a plain run."""
    last = logits[torch.arange(N), task.answer_pos]  # (B, V)
    return float((last.gather(1, task.answers) - last.gather(1, task.wrong_answers)).mean())


def _hand_faithfulness_without_mlp0(model, task: Task) -> float:
    """(m(C) - m(empty)) / (m(M) - m(empty)) from plain runs of the model: C removes node m0 (every edge out of
    the first MLP), i.e. m0's output patched with its output on the corrupted prompt; empty = the corrupted run."""
    with torch.no_grad():
        m_model = _logit_diff(model(task.clean_ids).logits, task)
        m_empty = _logit_diff(model(task.corrupted_ids).logits, task)
        saved = {}
        mlp = model.transformer.h[0].mlp
        hook = mlp.register_forward_hook(lambda mod, args, out: saved.setdefault("corrupt", out))
        model(task.corrupted_ids)
        hook.remove()
        hook = mlp.register_forward_hook(lambda mod, args, out: saved["corrupt"])
        try:
            m_circuit = _logit_diff(model(task.clean_ids).logits, task)
        finally:
            hook.remove()
    return (m_circuit - m_empty) / (m_model - m_empty)


def test_evaluator_equals_the_hand_ratio_of_plain_forwards(model, pm):
    task = _task()
    g = pm.graph
    circuit = g.without_nodes(g.full_mask(), [g.mlp_sender(0)])
    hand = _hand_faithfulness_without_mlp0(model, task)
    assert 0.05 < abs(1 - hand)  # m0 matters: the ratio is not 1 by construction
    problem, _ = prepare_problem(pm, task, metric="logit_diff")
    assert Faithfulness(problem)(circuit) == pytest.approx(hand, abs=1e-10)
    row = cf.evaluate.faithfulness(pm, circuit, task)  # no held-out split: every prompt, as above
    assert row["split"] == "all" and row["faithfulness"] == pytest.approx(hand, abs=1e-10)


def test_k_masks_in_one_pass_equal_k_single_passes(pm, monkeypatch):
    task = _task()
    problem, metric = prepare_problem(pm, task, metric="logit_diff")
    masks = random_circuits(pm.graph, 12, 5, seed=2)
    passes = []
    forward = PatchableModel.forward

    def counted(self, *args, **kwargs):
        passes.append(args[2].shape)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PatchableModel, "forward", counted)
    stacked = Faithfulness(problem).many(masks)
    assert passes == [(7, *pm.graph.edge_mask.shape)]  # full, empty and the 5 circuits: one pass
    monkeypatch.setattr(PatchableModel, "forward", forward)

    def single(mask: torch.Tensor) -> float:  # one plain pass of one (S, R) mask, the metric by hand
        logits = pm.forward(task.clean_ids, problem.ablated, mask, attention_mask=task.attention_mask)  # (B, T, V)
        return _logit_diff(logits, task)

    full, empty = single(pm.graph.full_mask()), single(torch.zeros_like(pm.graph.edge_mask))
    for f, mask in zip(stacked, masks, strict=True):
        assert f == pytest.approx((single(mask) - empty) / (full - empty), abs=1e-10)
    one_by_one = Faithfulness(problem, masks_per_pass=1)
    assert one_by_one.many(masks) == pytest.approx(stacked, abs=1e-10) and one_by_one.calls == 7


def test_discover_reports_the_faithfulness_evaluate_measures(pm):
    task = _task()
    circuit = cf.discover(pm, task, method="eap", n_edges=15, metric="logit_diff", progress=False)
    row = cf.evaluate.faithfulness(pm, circuit, task, metric="logit_diff")
    assert row["n_prompts"] == N and row["n_edges"] == circuit.n_edges
    assert circuit.recovered == pytest.approx(row["faithfulness"], abs=1e-10)
    assert circuit.metric_circuit == pytest.approx(row["metric_circuit"], abs=1e-10)
    assert circuit.metric_empty == pytest.approx(row["metric_empty"], abs=1e-10)
    target = cf.discover(pm, task, method="eap", target=0.7, select="train", metric="logit_diff", progress=False)
    f = cf.evaluate.faithfulness(pm, target, task, metric="logit_diff")["faithfulness"]
    assert target.stats["faithfulness"] == pytest.approx(f, abs=1e-10) and f >= 0.7


def test_the_chunk_formula_by_hand(pm):
    task = _task()
    per_prompt = pass_bytes_per_prompt(pm, T)
    g, D = pm.graph, pm.spec.d_model
    assert per_prompt == (g.n_senders + 3 * g.receivers_per_layer) * T * D * 8  # float64 slices of (T, D)
    problem, _ = prepare_problem(pm, task, metric="logit_diff", budget=3 * per_prompt)
    assert problem.prompts_per_pass() == 3 and problem.prompt_chunks() == [slice(0, 3), slice(3, 6)]
    assert problem.prompts_per_pass(masks=2) == 1  # two masks: twice the bytes per prompt
    assert problem.masks_per_pass(10) == 1  # one pass of 3 prompts already fills the budget
    roomy, _ = prepare_problem(pm, task, metric="logit_diff", budget=4 * N * per_prompt)
    assert roomy.prompts_per_pass() == N and roomy.masks_per_pass(10) == 4 and roomy.masks_per_pass(2) == 2
    grad = pass_bytes_per_prompt(pm, T, PassKind.ATTRIBUTION)
    assert grad == T * D * (8 * (2 * g.n_senders + 30 * g.n_layers) + 8 * g.n_receivers)
    user, _ = prepare_problem(pm, task, metric="logit_diff", chunk_size=2, budget=3 * per_prompt)
    assert user.prompts_per_pass(PassKind.ATTRIBUTION, masks=5) == 2  # the user's chunk_size wins
    with pytest.raises(ConfigError, match="budget"):
        prepare_problem(pm, task, metric="logit_diff", budget=0)


def _tight(pm, task, **kw):
    """The task prepared with a budget of one prompt of one mask per pass: every caller path chunks."""
    return prepare_problem(pm, task, metric="logit_diff", budget=pass_bytes_per_prompt(pm, T), **kw)[0]


def test_chunked_equals_unchunked_on_every_evaluator_path(pm):
    task = _task()
    whole, tight = prepare_problem(pm, task, metric="logit_diff")[0], _tight(pm, task)
    assert whole.prompt_chunks() == [slice(0, N)] and len(tight.prompt_chunks()) == N
    masks = random_circuits(pm.graph, 10, 4, seed=5)
    assert Faithfulness(tight).many(masks) == pytest.approx(Faithfulness(whole).many(masks), abs=1e-10)
    a, b = Faithfulness(whole, detail=True).evaluate(masks), Faithfulness(tight, detail=True).evaluate(masks)
    torch.testing.assert_close(b.per_prompt, a.per_prompt, rtol=0, atol=1e-10)
    torch.testing.assert_close(b.kl, a.kl, rtol=0, atol=1e-10)
    pv_whole, pv_tight = PromptValues(whole), PromptValues(tight)  # the validated cut's per-prompt values
    torch.testing.assert_close(pv_tight(masks[0]), pv_whole(masks[0]), rtol=0, atol=1e-10)
    torch.testing.assert_close(pv_tight.empty, pv_whole.empty, rtol=0, atol=1e-10)
    rows = cf.evaluate.faithfulness_many(pm, masks, task, memory_budget=pass_bytes_per_prompt(pm, T))
    ref = cf.evaluate.faithfulness_many(pm, masks, task)
    for r, q in zip(rows, ref, strict=True):
        assert r["faithfulness"] == pytest.approx(q["faithfulness"], abs=1e-10)
        assert r["per_prompt"]["circuit"] == pytest.approx(q["per_prompt"]["circuit"], abs=1e-10)


def test_chunked_equals_unchunked_for_attribution_and_exact_node_scores(pm):
    task = _task()
    whole = prepare_problem(pm, task, metric="logit_diff")[0]
    tight = prepare_problem(pm, task, metric="logit_diff", budget=pass_bytes_per_prompt(pm, T, PassKind.ATTRIBUTION))[0]
    assert tight.prompts_per_pass(PassKind.ATTRIBUTION) == 1 and whole.prompts_per_pass(PassKind.ATTRIBUTION) == N
    torch.testing.assert_close(run_eap(tight).scores, run_eap(whole).scores, rtol=0, atol=1e-10)
    ig = EapOptions(steps=2)
    torch.testing.assert_close(run_eap_ig(tight, ig).scores, run_eap_ig(whole, ig).scores, rtol=0, atol=1e-10)
    a, b = run_exact_nodes(whole).node_scores, run_exact_nodes(_tight(pm, task)).node_scores
    torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
