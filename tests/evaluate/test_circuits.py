"""evaluate: faithfulness endpoints are exact, stacking equals one-by-one, random circuits, sweeps and CPR/CMD."""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind as cf
import circuitfind.discovery
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.evaluate.circuits import (
    cpr_cmd_of_scores,
    excluded_negative,
    faithfulness,
    faithfulness_many,
    random_baseline,
    random_circuits,
)
from circuitfind.graph import Graph
from circuitfind.problem import ablation_for
from circuitfind.tasks import Task
from circuitfind.validation import faithfulness_interval
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2
from tests.toy_problems import PMS, natural_task

N, T, N_TRAIN = 8, 7, 4


def _task(n_train: int | None = N_TRAIN, metric: str = "logit_diff") -> Task:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, VOCAB, (N, T), generator=g)
    corrupt = torch.randint(1, VOCAB, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    am[5, 5:] = 0  # a right-padded held-out prompt
    answers = torch.randint(1, VOCAB, (N, 1), generator=g)
    wrong = torch.randint(1, VOCAB, (N, 1), generator=g)
    return Task("toy", clean, corrupt, am, am.sum(1) - 1, answers, wrong, metric=metric, n_train=n_train)


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    model = tiny_gpt2(n_layer=2, n_head=2, n_embd=16, init=0.2)
    randomize_biases(model)
    return PatchableModel(model)


@pytest.mark.parametrize("ablation", ["resample", "zero", "mean"])
def test_full_is_one_and_empty_is_zero_exactly(pm, ablation):
    full = pm.graph.full_mask()
    r_full = faithfulness(pm, full, _task(), ablation=ablation)
    r_empty = faithfulness(pm, torch.zeros_like(full), _task(), ablation=ablation)
    assert r_full["metric_full"] != r_full["metric_empty"]
    assert r_full["faithfulness"] == 1.0
    assert r_empty["faithfulness"] == 0.0
    assert r_full["kl_full_circuit"] == 0.0 and r_empty["kl_full_circuit"] > 0
    assert r_full["split"] == "held_out" and r_full["n_prompts"] == N - N_TRAIN
    assert r_full["metric"] == "logit_diff" and r_full["n_edges"] == pm.graph.n_edges and r_full["fraction"] == 1.0


def test_stacked_equals_one_by_one(pm):
    masks = random_circuits(pm.graph, 20, 5, seed=3)
    stacked = faithfulness_many(pm, masks, _task())
    single = faithfulness_many(pm, masks, _task(), batch_masks=1)
    for a, b in zip(stacked, single, strict=True):
        assert a["metric_circuit"] == pytest.approx(b["metric_circuit"], abs=1e-5)
        assert a["kl_full_circuit"] == pytest.approx(b["kl_full_circuit"], abs=1e-5)
    one = faithfulness(pm, masks[2], _task())
    assert one["faithfulness"] == pytest.approx(stacked[2]["faithfulness"], abs=1e-5)


def test_metric_choice_and_fallback_to_all_prompts(pm):
    r = faithfulness(pm, pm.graph.full_mask(), _task(n_train=None), metric="kl")
    assert r["split"] == "all" and r["n_prompts"] == N and "no held-out split" in r["note"]
    assert r["metric"] == "kl" and r["metric_full"] == pytest.approx(0.0, abs=1e-6)
    # a callable loss: faithfulness still 1 for the full model and 0 for the empty one
    rows = faithfulness_many(
        pm, [pm.graph.full_mask(), torch.zeros_like(pm.graph.full_mask())], _task(), metric=lambda lg: lg.sum()
    )
    assert [r["faithfulness"] for r in rows] == [1.0, 0.0]


def test_random_circuits_size_and_reproducibility(pm):
    g = pm.graph
    a = random_circuits(g, 17, 6, seed=1)
    b = random_circuits(g, 17, 6, seed=1)
    c = random_circuits(g, 17, 6, seed=2)
    assert len(a) == 6
    assert all(int(m.sum()) == 17 and not bool((m & ~g.edge_mask).any()) for m in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in a}) > 1  # the n circuits differ
    assert int(random_circuits(g, g.n_edges, 1)[0].sum()) == g.n_edges
    assert int(random_circuits(g, 0, 1)[0].sum()) == 0
    state = torch.random.get_rng_state()
    random_circuits(g, 5, 2, seed=9)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    for bad in (-1, g.n_edges + 1, 2.5):
        with pytest.raises(ConfigError):
            random_circuits(g, bad, 1)
    with pytest.raises(ConfigError):
        random_circuits(g, 3, 0)


def test_random_baseline(pm):
    base = random_baseline(pm, 30, _task(), n=4, seed=0)
    assert base["n"] == 4 and len(base["values"]) == 4 and base["n_edges"] == 30
    values = torch.tensor(base["values"], dtype=torch.float64)
    assert base["mean"] == pytest.approx(float(values.mean())) and base["std"] == pytest.approx(float(values.std()))
    assert base == random_baseline(pm, 30, _task(), n=4, seed=0)


def test_cpr_cmd_of_scores(pm):
    scores = torch.randn(pm.graph.n_senders, pm.graph.n_receivers, generator=torch.Generator().manual_seed(0))
    scores[0, 0] = math.nan  # an untested edge ranks last, it does not crash
    res = cpr_cmd_of_scores(pm, scores, _task())
    assert res["faithfulness_signed"][-1] == 1.0 and res["faithfulness_abs"][-1] == 1.0
    assert res["n_edges"] == sorted(res["n_edges"]) and res["n_edges"][-1] == pm.graph.n_edges
    assert math.isfinite(res["cpr"]) and res["cmd"] >= 0


def test_mean_ablation_uses_the_same_reference_in_discover_and_evaluate(pm):
    """One rule for the ablation (circuitfind.problem.ablation_for): a circuit found under mean ablation over a
    reference batch evaluates, on the same prompts with the same reference, to the metric discover recorded;
    averaging over the evaluated prompts instead gives another number (so the test can tell them apart)."""
    task = _task(n_train=None)
    ref = _task(n_train=None).subset(slice(0, 3))
    ref = Task(
        "ref", ref.corrupted_ids, ref.clean_ids, ref.attention_mask, ref.answer_pos, ref.answers, ref.wrong_answers
    )
    circuit = circuitfind.discovery.discover(
        pm, task, method="eap", n_edges=12, metric="logit_diff", ablation="mean", reference=ref, progress=False
    )
    same = faithfulness(pm, circuit, task, metric="logit_diff", ablation="mean", reference=ref)
    other = faithfulness(pm, circuit, task, metric="logit_diff", ablation="mean")
    assert same["metric_circuit"] == pytest.approx(circuit.metric_circuit, rel=1e-5, abs=1e-6)
    assert same["metric_empty"] == pytest.approx(circuit.metric_empty, rel=1e-5, abs=1e-6)
    assert abs(other["metric_empty"] - circuit.metric_empty) > 1e-3


def test_ablation_for_builds_each_kind_from_the_right_prompts(pm):
    task, ref = _task(n_train=None), _task(n_train=None).subset(slice(2, 5))
    by_hand = {
        "resample": pm.ablation("resample", task.corrupted_ids, task.attention_mask),
        "mean": pm.ablation("mean", task.clean_ids, task.attention_mask),
        "zero": pm.ablation("zero"),
    }
    for kind, want in by_hand.items():
        assert torch.equal(ablation_for(pm, task, kind).outputs, want.outputs), kind
    with_ref = ablation_for(pm, task, "mean", reference=ref)
    assert torch.equal(with_ref.outputs, pm.ablation("mean", ref.clean_ids, ref.attention_mask).outputs)
    assert not torch.allclose(with_ref.outputs, by_hand["mean"].outputs)
    with pytest.raises(ConfigError, match="reference"):
        ablation_for(pm, task, "resample", reference=ref)


# --- intervals, per-prompt values, the two-sided reading (on a float64 toy problem) ------------------------------
PM = PMS["gpt2"]
TASK = natural_task(PM)


def _by_hand(mask: torch.Tensor) -> torch.Tensor:
    abl = PM.ablation("resample", TASK.corrupted_ids, TASK.attention_mask)
    with torch.no_grad():
        lg = PM.forward(TASK.clean_ids, abl, mask, attention_mask=TASK.attention_mask, positions=TASK.answer_pos)
    rows = torch.arange(len(TASK))
    return (lg[rows, TASK.answers[:, 0]] - lg[rows, TASK.wrong_answers[:, 0]]).double()


def test_per_prompt_values_are_the_logit_difference_of_each_prompt_and_the_interval_resamples_them():
    g = PM.graph
    circuit = cf.discover(PM, TASK, method="eap", n_edges=40, metric="logit_diff", progress=False)
    res = faithfulness(PM, circuit, TASK, metric="logit_diff", n_boot=500, seed=3)
    pp = res["per_prompt"]
    for key, mask in (("circuit", circuit.mask), ("full", g.full_mask()), ("empty", torch.zeros_like(g.edge_mask))):
        assert pp[key] == pytest.approx(_by_hand(mask).tolist(), abs=1e-9), key
    again = faithfulness_interval(pp["circuit"], pp["full"], pp["empty"], n_boot=500, seed=3)
    assert (res["ci"]["lo"], res["ci"]["hi"]) == pytest.approx((again.lo, again.hi), abs=1e-7)
    assert (
        res["ci"]["n_boot"] == 500
        and res["ci"]["seed"] == 3
        and res["ci"]["lo"] <= res["faithfulness"] <= res["ci"]["hi"]
    )
    f = res["faithfulness"]
    assert res["deviation"] == pytest.approx(abs(1 - f)) and res["over_recovery"] == (f > 1)


def test_excluded_negative_lists_the_most_negative_edges_outside_the_circuit():
    g = Graph(n_layers=1, n_heads=1)
    s = torch.zeros(g.n_senders, g.n_receivers)
    values = {"input->logits": -3.0, "a0.h0->logits": -1.0, "input->m0": -5.0, "m0->logits": 2.0}
    for name, v in values.items():
        s[g.edge_index(name)] = v
    circuit = cf.Circuit(g, g.mask_of(["input->m0", "m0->logits"]), s)  # the -5 edge is inside
    assert excluded_negative(circuit) == [
        {"edge": "input->logits", "score": -3.0},
        {"edge": "a0.h0->logits", "score": -1.0},
    ]
    assert excluded_negative(circuit, n=1) == [{"edge": "input->logits", "score": -3.0}]


def test_cpr_cmd_have_intervals_around_them():
    scores = cf.discover(PM, TASK, method="eap", n_edges=5, metric="logit_diff", progress=False).scores
    res = cpr_cmd_of_scores(PM, scores, TASK, metric="logit_diff", fractions=[0.1, 0.5, 1.0], n_boot=200)
    for name in ("cpr", "cmd"):
        assert res[f"{name}_ci"]["lo"] <= res[name] + 1e-12 and res[name] <= res[f"{name}_ci"]["hi"] + 1e-12
