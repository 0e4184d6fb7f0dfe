"""The metrics pinned against hand computations on tiny tensors.

Each expected value is written out from the definition (REFERENCE §3-§4), with numbers chosen so that the usual
mistakes -- KL in the wrong direction, a sum where a mean belongs or the reverse -- give a different value.
"""

from __future__ import annotations

import math

import pytest
import torch

from circuitfind.metrics import kl_divergence, logit_diff, make_metric, output_mse, prob_diff


def _log(*weights: float) -> list[float]:
    """Logits whose softmax is ``weights`` normalised."""
    return [math.log(w) for w in weights]


# --- KL(clean || circuit), the ACDC paper's direction ---------------------------------------------------------
# prompt 0: clean p = (1/4, 1/4, 1/2), circuit q = (1/3, 1/3, 1/3)
# prompt 1: clean p = (1/8, 1/8, 3/4), circuit q = (1/4, 1/4, 1/2)
CLEAN = torch.tensor([_log(1, 1, 2), _log(1, 1, 6)])  # (B=2, V=3)
CIRCUIT = torch.tensor([_log(1, 1, 1), _log(1, 1, 2)])
# sum_v p_v log(p_v / q_v), written out per prompt
KL_0 = 2 * 0.25 * math.log(0.25 / (1 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
KL_1 = 2 * 0.125 * math.log(0.125 / 0.25) + 0.75 * math.log(0.75 / 0.5)
# the other direction, sum_v q_v log(q_v / p_v): what a swapped KL would give
REVERSE_0 = 2 * (1 / 3) * math.log((1 / 3) / 0.25) + (1 / 3) * math.log((1 / 3) / 0.5)
REVERSE_1 = 2 * 0.25 * math.log(0.25 / 0.125) + 0.5 * math.log(0.5 / 0.75)


def test_the_hand_values_tell_the_two_directions_apart():
    assert abs((KL_0 + KL_1) / 2 - (REVERSE_0 + REVERSE_1) / 2) > 1e-3


def test_kl_is_clean_to_circuit_averaged_over_prompts():
    logits = torch.stack([CIRCUIT, CLEAN])  # (K=2, B, V): the circuit, and the full model itself
    got = kl_divergence(logits, CLEAN.log_softmax(-1))
    assert got.tolist() == pytest.approx([(KL_0 + KL_1) / 2, 0.0], abs=1e-6)


def test_the_kl_metric_is_bound_to_the_clean_logits_and_minimised():
    m = make_metric("kl", clean_logits=CLEAN)
    assert not m.higher_is_better
    assert float(m(CIRCUIT)) == pytest.approx((KL_0 + KL_1) / 2, abs=1e-6)
    assert float(m.loss(CIRCUIT)) == pytest.approx((KL_0 + KL_1) / 2, abs=1e-6)  # the loss is KL as it is
    assert float(m(CLEAN + 3.0)) == pytest.approx(0.0, abs=1e-6)  # a shift of all logits is the same distribution


# --- logit difference: mean correct logit minus mean wrong logit, mean over prompts ----------------------------
def test_logit_diff_with_several_answers_by_hand():
    logits = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0], [0.0, 10.0, 20.0, 30.0, 40.0]])  # (B=2, V=5)
    answers = torch.tensor([[3, -1], [1, 4]])
    wrong = torch.tensor([[0, 1, 2], [2, -1, -1]])
    per_prompt = [8 - (1 + 2 + 4) / 3, (10 + 40) / 2 - 20]  # 17/3 and 5 (sums would give 1 and 30)
    expected = sum(per_prompt) / 2
    assert float(logit_diff(logits[None], answers, wrong)[0]) == pytest.approx(expected)
    m = make_metric("logit_diff", answers=answers, wrong_answers=wrong)
    assert m.higher_is_better
    assert float(m(logits)) == pytest.approx(expected)
    assert float(m.loss(logits)) == pytest.approx(-expected)  # ACDC minimises the negated task metric
    assert float(m.column_loss(logits[None, :, m.columns])[0]) == pytest.approx(-expected)  # (K=1, B, columns)


# --- probability difference: total probability of the correct answers minus that of the wrong ones -------------
def test_prob_diff_sums_the_answers_probabilities_by_hand():
    """Greater-than's metric is P(year > YY) - P(year <= YY) (REFERENCE §4): sums over the tokens, not means."""
    logits = torch.tensor([_log(1, 2, 3, 4), _log(4, 3, 2, 1)])  # probabilities 0.1 .. 0.4 and 0.4 .. 0.1
    answers = torch.tensor([[3, -1], [0, 1]])
    wrong = torch.tensor([[0, 1, -1], [2, 3, -1]])
    per_prompt = [0.4 - (0.1 + 0.2), (0.4 + 0.3) - (0.2 + 0.1)]  # 0.1 and 0.4 (means would give 0.25 and 0.2)
    expected = sum(per_prompt) / 2
    assert float(prob_diff(logits[None], answers, wrong)[0]) == pytest.approx(expected, abs=1e-6)
    m = make_metric("prob_diff", answers=answers, wrong_answers=wrong)
    assert m.higher_is_better
    assert float(m(logits)) == pytest.approx(expected, abs=1e-6)
    assert float(m.loss(logits)) == pytest.approx(-expected, abs=1e-6)


# --- the tracr metric: mean squared error of the outputs --------------------------------------------------------
def test_output_mse_is_the_mean_over_prompts_and_outputs():
    reference = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, -1.0]])  # (B=2, V=3)
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, -1.0]])
    squares = [1.0, 0.0, 4.0, 0.0, 9.0, 0.0]  # sum 14; per prompt 5 and 9
    mse = output_mse(reference)
    assert float(mse(logits)) == pytest.approx(sum(squares) / 6)
    assert float(mse(reference)) == 0.0
