"""Exact edge and node scores (algorithms/exact.py): a NaN metric or NaN logits name the edge (or node) being
removed and the prompt chunk (issue 19, item 11)."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms.acdc import FastEvaluator
from circuitfind.algorithms.exact import exact_plan
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import MetricError
from circuitfind.tasks import Task
from tests.models_tiny import tiny_gpt2


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
