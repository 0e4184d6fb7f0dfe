"""Exact edge and node scores (algorithms/exact.py): one single-edge patched forward each, batching and candidate
sets change nothing; a NaN metric or NaN logits name the edge (or node) being removed and the prompt chunk (issue
19, item 11)."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import ExactOptions, run_exact
from circuitfind.algorithms.acdc import FastEvaluator
from circuitfind.algorithms.exact import exact_plan
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, MetricError
from circuitfind.tasks import Task
from tests.models_tiny import tiny_gpt2
from tests.toy_problems import NAMES, loss_at, problem_of, some_edges


def _exact_case():
    pm = PatchableModel(tiny_gpt2(n_layer=2, n_head=2, n_embd=16))
    clean = torch.tensor([[1, 2, 3, 4]] * 4)
    corrupted = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7, 10], [5, 6, 7, 13]])
    task = Task("t", clean, corrupted, torch.ones_like(clean), torch.full((4,), 3), torch.tensor([[11]] * 4),
                torch.tensor([[12]] * 4))  # fmt: skip
    return pm, task


def test_a_nan_metric_under_exact_names_the_edge_and_the_prompt_chunk():
    pm, task = _exact_case()
    with torch.no_grad():
        full = pm.module(task.clean_ids).logits[3, -1].clone()

    def metric(logits):  # (B, V): NaN as soon as prompt 3's logits move away from the full model's
        return (logits[:, 11] - logits[:, 12]).mean() + torch.sqrt(1e-3 - (logits[3] - full).abs().max())

    first = exact_plan(pm.graph)[0]  # the first edge exact scoring removes: it moves every prompt's logits
    edge = pm.graph.edge(first.senders[0], first.receiver).name
    with pytest.raises(MetricError) as e:
        cf.discover(pm, task, method="exact", chunk_size=2, metric=metric, n_edges=3, progress=False)
    assert f"during exact scoring, removing edge {edge} (receiver logits): prompt chunk 2 of 2 (prompts 2..3)" in str(
        e.value
    )
    assert "its logits are finite but the metric is not" in str(e.value)
    with pytest.raises(MetricError, match=r"during exact node scoring, removing node (input|[am]\d+(\.h\d+)?):"):
        cf.discover(pm, task, method="exact", level="node", chunk_size=2, metric=metric, n_nodes=2, progress=False)


def test_nan_logits_under_exact_name_the_prompt(monkeypatch):
    pm, task = _exact_case()
    g = pm.graph
    real = FastEvaluator.chunk_logits

    def nan_on_prompt_3(self, masks):  # a model whose logits on prompt 3 go NaN when input->logits is removed
        out = real(self, masks)
        hit = ~masks[:, g.sender_index("input"), g.logits_receiver]
        out[1][hit, 1] = float("nan")
        return out

    monkeypatch.setattr(FastEvaluator, "chunk_logits", nan_on_prompt_3)
    with pytest.raises(MetricError, match=r"removing edge input->logits \(receiver logits\): prompt chunk 2 of 2 "
                       r"\(prompts 2\.\.3\) has NaN or infinite logits, on prompt\(s\) 3"):  # fmt: skip
        cf.discover(pm, task, method="exact", chunk_size=2, metric="logit_diff", n_edges=3, progress=False)


# --- exact scores --------------------------------------------------------------------------------------------
EXACT: dict[tuple[str, str], torch.Tensor] = {}


def exact_scores(name: str, metric: str) -> torch.Tensor:
    """Every edge's exact score, batched (computed once per model and metric)."""
    if (name, metric) not in EXACT:
        EXACT[name, metric] = run_exact(problem_of(name, metric), ExactOptions(batch_size=4)).scores
    return EXACT[name, metric]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_exact_scores_are_single_edge_patched_forwards(name, metric):
    p = problem_of(name, metric)
    g = p.pm.graph
    scores = exact_scores(name, metric)
    assert not scores[g.edge_mask].isnan().any()
    assert torch.equal(scores[~g.edge_mask], torch.zeros_like(scores[~g.edge_mask]))
    full = g.full_mask()
    with torch.no_grad():
        l_full = float(loss_at(p, full))
        for e in some_edges(g, 8, seed=2):
            without = full.clone()
            without[e] = False
            assert float(scores[e]) == pytest.approx(float(loss_at(p, without)) - l_full, rel=1e-9, abs=1e-12)
    assert float(scores[g.edge_mask].abs().max()) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_exact_candidates_unbatched_equal_the_full_batched_run(name):
    p = problem_of(name, "kl")
    g = p.pm.graph
    edges = g.edge_mask.nonzero()
    chosen = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(3))[:30]]
    cand = torch.zeros_like(g.edge_mask)
    cand[chosen[:, 0], chosen[:, 1]] = True
    cand[:, g.logits_receiver] = g.edge_mask[:, g.logits_receiver]  # a whole receiver
    cand[g.n_senders - 1, 0] = True  # the last MLP -> the first q: not an edge, ignored
    assert not g.edge_mask[g.n_senders - 1, 0]
    result = run_exact(p, ExactOptions(batch_size=1, candidates=cand))
    full = exact_scores(name, "kl")
    want = cand & g.edge_mask
    torch.testing.assert_close(result.scores[want], full[want], rtol=1e-9, atol=1e-12)
    assert result.scores[g.edge_mask & ~want].isnan().all()
    assert float(result.scores[g.n_senders - 1, 0]) == 0.0
    assert result.stats["edges_scored"] == int(want.sum())


def test_exact_refuses_bad_batch_size():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigError):
            ExactOptions(batch_size=bad)
