"""What ``discover`` records is each metric of the HF model's logits at every prompt's own answer position.

The full circuit is the clean run and, under resample ablation, the empty circuit is the corrupted run
(REFERENCE §2), so both recorded values can be computed by hand from HF's logits.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2

N, T = 3, 6
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])  # right padding
POS = torch.tensor([5, 3, 4])  # each prompt's last real token
ANSWERS = torch.tensor([[7, -1], [8, 9], [10, -1]])
WRONG = torch.tensor([[11, 12, 13], [14, -1, -1], [15, 16, -1]])


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (N, T), generator=torch.Generator().manual_seed(seed)) * MASK


def _at_answers(model, ids: torch.Tensor) -> torch.Tensor:
    """``(N, V)``: HF's logits at each prompt's answer position."""
    with torch.no_grad():
        logits = model(ids, attention_mask=MASK, position_ids=(MASK.cumsum(-1) - 1).clamp(min=0)).logits
    return torch.stack([logits[n, POS[n]] for n in range(N)])


def _valid(row: torch.Tensor) -> list[int]:
    return [int(i) for i in row if i >= 0]


def _logit_diff(logits: torch.Tensor) -> float:
    return sum(float(logits[n, _valid(ANSWERS[n])].mean() - logits[n, _valid(WRONG[n])].mean()) for n in range(N)) / N


def _prob_diff(logits: torch.Tensor) -> float:
    probs = logits.softmax(-1)
    return sum(float(probs[n, _valid(ANSWERS[n])].sum() - probs[n, _valid(WRONG[n])].sum()) for n in range(N)) / N


def _kl(clean: torch.Tensor, circuit: torch.Tensor) -> float:
    p, q = clean.log_softmax(-1), circuit.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("metric", ["kl", "logit_diff", "prob_diff"])
def test_recorded_metric_values_are_the_hf_logits_metrics(metric):
    model = tiny_gpt2(init=0.2)
    randomize_biases(model)
    clean, corrupted = _ids(0), _ids(1)
    task = Task("toy", clean, corrupted, MASK, POS, ANSWERS, WRONG)
    full, corrupt = _at_answers(model, clean), _at_answers(model, corrupted)
    by_hand = {
        "kl": (0.0, _kl(full, corrupt)),
        "logit_diff": (_logit_diff(full), _logit_diff(corrupt)),
        "prob_diff": (_prob_diff(full), _prob_diff(corrupt)),
    }[metric]
    pm = PatchableModel(model)
    one_edge = torch.zeros_like(pm.graph.full_mask())
    one_edge[pm.graph.edge_index("m2->logits")] = True
    circuit = cf.discover(pm, task, method="exact", candidates=one_edge, n_edges=1, metric=metric, progress=False)
    assert abs(by_hand[1] - by_hand[0]) > 1e-3  # the corruption really moves the metric
    assert (circuit.metric_full, circuit.metric_empty) == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
