"""evaluate: faithfulness endpoints are exact, stacking equals one-by-one, random circuits, sweeps and CPR/CMD."""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind.discovery
import circuitfind.reproduce.thresholds
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.evaluate.circuits import (
    cpr_cmd_of_scores,
    faithfulness,
    faithfulness_many,
    random_baseline,
    random_circuits,
)
from circuitfind.problem import ablation_for
from circuitfind.reproduce.thresholds import roc_sweep, threshold_sweep
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2

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


def test_roc_sweep_and_resume_from_cache(pm, tmp_path, monkeypatch):
    task = _task()
    (c,) = threshold_sweep(pm, task, [0.05], cache_dir=tmp_path, metric="kl")
    assert len(list(tmp_path.glob("*.json"))) == 1 and not list(tmp_path.glob("*.ckpt"))

    def no_discovery(*args, **kwargs):
        raise AssertionError("the cached circuit should have been reused")

    monkeypatch.setattr(circuitfind.reproduce.thresholds, "discover", no_discovery)
    res = roc_sweep(pm, task, [0.05], c.mask, cache_dir=tmp_path, metric="kl", progress=True)  # same cache key
    assert res["auc"] == 1.0 and res["points"][0]["tpr"] == 1.0 and res["points"][0]["fpr"] == 0.0
    assert torch.equal(res["circuits"][0].mask, c.mask)


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


# --- issue 19 item 5: the threshold-sweep cache keys on the one task fingerprint ---------------------------------
def test_threshold_sweep_cache_is_not_served_for_other_answers_wrong_answers_or_weights(tmp_path, monkeypatch):
    import copy
    import dataclasses

    model = tiny_gpt2(n_layer=1, n_head=2, n_embd=8, init=0.2)
    task = _task(n_train=None)
    (first,) = threshold_sweep(model, task, [0.05], cache_dir=tmp_path, metric="logit_diff")
    runs = []

    def counting(*args, **kwargs):
        runs.append(kwargs.get("threshold"))
        return first

    monkeypatch.setattr(circuitfind.reproduce.thresholds, "discover", counting)
    assert threshold_sweep(model, task, [0.05], cache_dir=tmp_path, metric="logit_diff")[0].n_edges == first.n_edges
    assert runs == []  # same fingerprint: served from the cache

    def shifted(ids, avoid):  # other token ids, valid (>= 1) and different from ``avoid`` in every prompt
        for k in range(1, VOCAB):
            new = (ids - 1 + k) % (VOCAB - 1) + 1
            if not bool((new == avoid).any()):
                return new
        raise AssertionError

    heavier = copy.deepcopy(model)
    with torch.no_grad():
        heavier.transformer.h[0].mlp.c_fc.weight[0, 0] += 0.5  # one weight, same model name and config
    variants = [
        (model, dataclasses.replace(task, answers=shifted(task.answers, task.wrong_answers))),
        (model, dataclasses.replace(task, wrong_answers=shifted(task.wrong_answers, task.answers))),
        (heavier, task),
    ]
    for i, (m, t) in enumerate(variants, start=1):
        threshold_sweep(m, t, [0.05], cache_dir=tmp_path, metric="logit_diff")
        assert runs == [0.05] * i, f"variant {i} was served the stale cached circuit"
    assert len(list(tmp_path.glob("acdc_*.json"))) == 1 + 3
