"""Metrics: the answer-column form of logit difference equals the full-vocabulary one."""

from __future__ import annotations

import pytest
import torch

from circuitfind.errors import ConfigError
from circuitfind.metrics import make_metric


def test_logit_diff_on_columns_equals_full_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 50, generator=g)  # (K, B, V)
    answers = torch.tensor([[5, 9], [9, -1], [40, -1], [2, 3]])  # several answers, padded with -1
    wrong = torch.tensor([[9, -1], [5, 7], [1, -1], [3, 49]])  # a token can be right for one prompt, wrong for another
    m = make_metric("logit_diff", answers=answers, wrong_answers=wrong)
    assert m.columns is not None and m.columns.tolist() == sorted({1, 2, 3, 5, 7, 9, 40, 49})
    assert torch.allclose(m.column_loss(logits[..., m.columns]), m.loss(logits), atol=1e-6)
    by_hand = torch.stack(
        [
            torch.stack(
                [
                    logits[k, b, [a for a in answers[b].tolist() if a >= 0]].mean()
                    - logits[k, b, [w for w in wrong[b].tolist() if w >= 0]].mean()
                    for b in range(4)
                ]
            ).mean()
            for k in range(3)
        ]
    )
    assert torch.allclose(m(logits), by_hand, atol=1e-6)


def test_metrics_that_read_every_column_have_none():
    answers, wrong = torch.tensor([[1]]), torch.tensor([[2]])
    prob = make_metric("prob_diff", answers=answers, wrong_answers=wrong)
    kl = make_metric("kl", clean_logits=torch.randn(1, 5))
    for m in (prob, kl):
        assert m.columns is None
        with pytest.raises(ConfigError, match="whole vocabulary"):
            m.column_loss(torch.randn(1, 1, 2))
