"""ACDC across thresholds (reproduce/thresholds.py): circuits cached and reused, the ROC against a ground truth,
and the cache keyed on the task's fingerprint (answers, wrong answers, weights)."""

from __future__ import annotations

import pytest
import torch

import circuitfind.reproduce.thresholds
from circuitfind.engine.patchable import PatchableModel
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
