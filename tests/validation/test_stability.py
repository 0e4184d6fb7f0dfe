"""Stability (validation/stability.py): inclusion statistics by hand, exact frequencies on a deterministic case
of the planted model (tests/validation/planted.py), reproducible from the seed, forked workers equal one process."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.tasks import Task
from circuitfind.validation.stability import inclusion_frequency, mean_jaccard, stability, stable_core
from tests.validation.planted import planted_spec, planted_task


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    return PatchableModel(planted_spec())


def test_inclusion_statistics_by_hand():
    from circuitfind.graph import Graph

    g = Graph(1, 1)
    a, b, c = (g.mask_of(e) for e in (["input->logits", "a0.h0->logits"], ["input->logits"],
                                      ["input->logits", "m0->logits"]))  # fmt: skip
    f = inclusion_frequency([a, b, c], g)
    assert float(f[g.edge_index("input->logits")]) == 1.0
    assert float(f[g.edge_index("a0.h0->logits")]) == pytest.approx(1 / 3)
    assert float(f.sum()) == pytest.approx(1 + 2 / 3)
    # pairs: (a, b) 1/2, (a, c) 1/3, (b, c) 1/2
    assert mean_jaccard([a, b, c], g) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert stable_core(f, 0.8).sum() == 1 and bool(stable_core(f, 0.3).sum() == 3)


def test_stability_frequencies_are_exact_on_a_deterministic_case(pm):
    # every prompt of this task is the same pair, so every resample is the same task and EAP's top 3 edges are
    # the same circuit each time: frequency exactly 1 on it, 0 elsewhere, Jaccard 1
    one = planted_task().subset([0] * 6)
    task = Task("same", one.clean_ids, one.corrupted_ids, one.attention_mask, one.answer_pos, one.answers,
                one.wrong_answers, n_train=4)  # fmt: skip
    from circuitfind.discovery import discover

    ref = discover(pm, task, method="eap", n_edges=3, metric="logit_diff", progress=False).mask
    st = stability(pm, task, method="eap", n_edges=3, metric="logit_diff", n_boot=4, progress=False)
    assert torch.equal(st.frequency, ref.double())
    assert st.jaccard_mean == 1.0 and torch.equal(st.core, ref)
    assert set(st.edge_frequency().values()) == {1.0} and len(st.core_edges) == int(ref.sum()) >= 2
    assert st.core_heldout["n_prompts"] == 2


def test_stability_frequencies_count_resamples(pm):
    # resample b is discovery on the prompts resample_indices(n, n_boot, seed)[b] of the train split
    task = planted_task(n_train=8)
    st = stability(pm, task, method="eap", n_edges=5, metric="logit_diff", n_boot=5, seed=3, progress=False)
    from circuitfind.discovery import discover
    from circuitfind.selection.bootstrap import resample_indices

    draws = resample_indices(8, 5, seed=3)
    assert torch.equal(st.resamples, draws)
    masks = [discover(pm, task.train().subset(r), method="eap", n_edges=5, metric="logit_diff",
                      progress=False).mask for r in draws]  # fmt: skip
    assert torch.equal(st.masks, torch.stack(masks))
    assert torch.allclose(st.frequency, torch.stack(masks).double().mean(0))


def test_stability_reproduces_from_the_seed(pm):
    task = planted_task(n_train=8)
    kw = {"method": "eap-ig", "steps": 2, "n_edges": 4, "metric": "logit_diff", "n_boot": 3, "progress": False}
    a, b, c = stability(pm, task, seed=1, **kw), stability(pm, task, seed=1, **kw), stability(pm, task, seed=2, **kw)
    assert torch.equal(a.masks, b.masks) and a.to_dict()["edge_frequency"] == b.to_dict()["edge_frequency"]
    assert not torch.equal(a.resamples, c.resamples)


def test_stability_in_forked_workers_matches_one_process(pm):
    task = planted_task(n_train=8)
    kw = {"method": "eap", "n_edges": 4, "metric": "logit_diff", "n_boot": 4, "seed": 0, "progress": False}
    assert torch.equal(stability(pm, task, workers=2, **kw).masks, stability(pm, task, **kw).masks)
