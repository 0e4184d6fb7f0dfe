"""Metrics: the answer-column form of logit difference equals the full-vocabulary one."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, MetricError, TaskError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.metrics import make_metric
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
