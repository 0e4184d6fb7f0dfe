"""Metrics (metrics.py): KL, logit and probability difference and output MSE against hand computations on tiny
tensors; the answer-column form of logit difference equals the full-vocabulary one; NaN values and gaps refused."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, MetricError, TaskError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.metrics import kl_divergence, logit_diff, make_metric, output_mse, prob_diff
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, tiny_gpt2


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


# --- non-finite and malformed metric values ------------------------------------------------------------------
def _tiny_task(n: int = 3, t: int = 6) -> Task:
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (2, n, t), generator=g)
    ones = torch.ones(n, t, dtype=torch.long)
    answers, wrong = torch.randint(1, VOCAB, (2, n, 1), generator=g)
    return Task("toy", clean, corrupt, ones, torch.full((n,), t - 1), answers, wrong)


def _nan_after(calls: int):
    """A loss that is finite for its first ``calls`` calls, NaN afterwards."""
    seen = []

    def flaky(logits):
        seen.append(1)
        return logits[:, 0].mean() * (float("nan") if len(seen) > calls else 1.0)

    return flaky


def test_a_nan_metric_value_raises():
    m = make_metric(lambda lg: lg[:, 0].mean() / 0.0 * 0.0)
    with pytest.raises(MetricError, match="custom|<lambda>") as info:
        m(torch.randn(2, 5))
    assert "nan" in str(info.value)
    kl = make_metric("kl", clean_logits=torch.tensor([[0.0, 1.0]]))
    with pytest.raises(MetricError, match=r"circuit 1 of 3") as info:
        kl.loss(torch.tensor([[[0.0, 1.0]], [[float("nan"), 1.0]], [[0.0, 1.0]]]))
    assert info.value.index == 1


@pytest.mark.parametrize("method", ["acdc", "acdc-plain"])
def test_discover_refuses_a_metric_that_is_nan_on_the_full_model(method):
    with pytest.raises(MetricError, match="on the full model"):
        cf.discover(tiny_gpt2(), _tiny_task(), metric=_nan_after(0), method=method, progress=False)


@pytest.mark.parametrize("method", ["acdc", "acdc-plain"])
def test_discover_names_the_edge_where_the_metric_became_nan(method):
    # calls: prepare_problem's full-model check, ACDC's full-model loss, then the first candidate edge
    with pytest.raises(MetricError, match=r"during ACDC, testing edge m2->logits"):
        cf.discover(tiny_gpt2(), _tiny_task(), metric=_nan_after(2), method=method, progress=False)


def test_evaluate_refuses_a_nan_metric():
    pm = PatchableModel(tiny_gpt2())
    with pytest.raises(MetricError, match="on the full model"):
        faithfulness(pm, pm.graph.full_mask(), _tiny_task(), metric=_nan_after(0))


@pytest.mark.parametrize(
    "result,found",
    [
        (lambda lg: lg[:, 0], r"tensor of shape \(3,\)"),
        (lambda lg: "high", "str 'high'"),
        (lambda lg: None, "NoneType None"),
    ],
)
def test_a_custom_metric_must_return_one_number(result, found):
    with pytest.raises(MetricError, match=found):
        cf.discover(tiny_gpt2(), _tiny_task(), metric=result, progress=False)


# --- task metrics need a wrong answer for every prompt -----------------------------------------------------
def test_logit_diff_by_hand_and_partial_wrong_answers_refused():
    logits = torch.tensor([[0.0, 3.0, 1.0, 5.0], [2.0, 0.5, 4.0, 1.0]])  # (B=2, V=4)
    answers = torch.tensor([[1], [2]])
    m = make_metric("logit_diff", answers=answers, wrong_answers=torch.tensor([[2, 3], [0, -1]]))
    # prompt 0: 3 - (1 + 5) / 2 = 0; prompt 1: 4 - 2 = 2; mean 1
    assert float(m(logits)) == pytest.approx(1.0)
    p = make_metric("prob_diff", answers=answers, wrong_answers=torch.tensor([[2, 3], [0, -1]]))
    probs = logits.softmax(-1)
    by_hand = ((probs[0, 1] - probs[0, 2] - probs[0, 3]) + (probs[1, 2] - probs[1, 0])) / 2
    assert float(p(logits)) == pytest.approx(float(by_hand))
    for kind in ("logit_diff", "prob_diff"):
        with pytest.raises(TaskError, match=r"wrong answer for every prompt; 1 of 2 prompts have none \(prompt 1\)"):
            make_metric(kind, answers=answers, wrong_answers=torch.tensor([[2], [-1]]))
        with pytest.raises(TaskError, match=r"correct answer for every prompt.*prompt 0"):
            make_metric(kind, answers=torch.tensor([[-1], [2]]), wrong_answers=torch.tensor([[2], [1]]))


def test_a_task_with_wrong_answers_for_some_prompts_only_is_refused():
    t = _tiny_task()
    with pytest.raises(TaskError, match=r"prompt 1 has no wrong answer"):
        dataclasses.replace(t, wrong_answers=torch.tensor([[3], [-1], [4]]))


@pytest.mark.parametrize(
    "dtype,want", [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
)
def test_metrics_widen_half_precision_and_keep_float64(dtype, want):
    """Finite differences on a float64 model need the metric in float64: 1e-12 must survive, not round to 0."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 10, generator=g, dtype=torch.float64)  # (K, B, V)
    answers, wrong = torch.tensor([[1], [2], [3]]), torch.tensor([[4], [5], [6]])
    for name in ("kl", "logit_diff", "prob_diff"):
        m = make_metric(name, clean_logits=logits[0].to(dtype), answers=answers, wrong_answers=wrong)
        value = m(logits.to(dtype))
        assert value.dtype == want, name
        if dtype is torch.float64:
            bumped = logits.clone()
            bumped[0, :, 1:4] += 1e-12  # the correct answers' logits
            assert float(m(bumped) - value) != 0.0, name


# --- issue 19 item 3: no metric gap is reported as a perfect circuit -----------------------------------------
def test_check_gap_refuses_a_gap_within_64_eps_of_the_larger_value_or_of_1():
    from circuitfind.metrics import check_gap

    eps32, eps64 = 2.0**-23, 2.0**-52
    floor = 64 * eps32 * 1000.0  # 7.6e-3 for values near 1000
    assert check_gap(1000.0, 1000.0 - 1.01 * floor) == pytest.approx(1.01 * floor)
    with pytest.raises(MetricError, match=r"gap metric\(full\) - metric\(empty\) = -0\.00755 .*= 1000, .*= 1000\.0075"):
        check_gap(1000.0, 1000.0 + 0.99 * floor)
    # KL: m(N) = 0, so the floor is absolute: 64 eps, not 0
    assert check_gap(0.0, 1.01 * 64 * eps32, torch.float32, name="kl") < 0
    with pytest.raises(MetricError, match=r"kl gap kl\(full\) - kl\(empty\) = -7\.5e-06.*kl\(full\) = 0,"):
        check_gap(0.0, 7.5e-6, torch.float32, name="kl")
    # float64 values carry float64 rounding; half precision models compute their metrics in float32
    assert check_gap(1.0, 1.0 + 65 * eps64, torch.float64) < 0
    with pytest.raises(MetricError, match="eps\\(float32\\)"):
        check_gap(1.0, 1.0 + 63 * eps32, torch.bfloat16)
    with pytest.raises(MetricError):
        check_gap(float("nan"), 1.0)


@pytest.mark.parametrize(
    "method,kw",
    [("eap-ig", {"target": 0.5}), ("hybrid", {"target": 0.5}), ("exact", {"target": 0.5}), ("eap", {"n_edges": 4})],
)
def test_identical_clean_and_corrupted_prompts_are_refused_not_faithful(method, kw):
    """Old main: faithfulness 1.0 (eap-ig) or 3.0 (hybrid, exact) from a 7e-9 noise gap."""
    pm = PatchableModel(tiny_gpt2())
    t = _tiny_task()
    same = dataclasses.replace(t, corrupted_ids=t.clean_ids.clone())
    if "target" in kw:
        with pytest.raises(MetricError, match=r"loss gap .* within rounding noise of zero"):
            cf.discover(pm, same, method=method, metric="logit_diff", progress=False, **kw)
    else:  # a cut by count divides by nothing; the circuit's recovered share is NaN, not a ratio of noise
        circuit = cf.discover(pm, same, method=method, metric="logit_diff", progress=False, **kw)
        assert abs(circuit.metric_full - circuit.metric_empty) < 1e-6 and math.isnan(circuit.recovered)
    for metric in ("logit_diff", "kl"):
        with pytest.raises(MetricError, match=rf"{metric} gap {metric}\(full\) - {metric}\(empty\) = .*within"):
            faithfulness(pm, pm.graph.full_mask(), same, metric=metric)


def test_a_callable_metric_gets_per_prompt_values_from_each_prompt_alone():
    def answer_logit(logits):  # (B, V) -> mean over prompts of the logit of token 3
        return logits[:, 3].mean()

    m = make_metric(answer_logit, higher_is_better=True)
    logits = torch.arange(24.0).view(1, 4, 6)  # (K, B, V)
    assert m.per_prompt(logits).tolist() == [[3.0, 9.0, 15.0, 21.0]]
    assert float(m.per_prompt(logits).mean()) == pytest.approx(float(m(logits)[0]))

# --- the metrics pinned against hand computations on tiny tensors ------------------------------------------------
# Each expected value is written out from the definition (REFERENCE §3-§4), with numbers chosen so that the usual
# mistakes -- KL in the wrong direction, a sum where a mean belongs or the reverse -- give a different value.


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


def test_kl_with_the_distributions_swapped_is_the_other_direction():
    """KL(clean || circuit) = 0.0949 and KL(circuit || clean) = 0.1002 by hand: a KL computed the wrong way round
    gives the other value in each order (tolerance 1e-6), so it fails here and in the next test."""
    forward = float(kl_divergence(CIRCUIT[None], CLEAN.log_softmax(-1))[0])
    reverse = float(kl_divergence(CLEAN[None], CIRCUIT.log_softmax(-1))[0])
    assert forward == pytest.approx((KL_0 + KL_1) / 2, abs=1e-6)
    assert reverse == pytest.approx((REVERSE_0 + REVERSE_1) / 2, abs=1e-6)


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
