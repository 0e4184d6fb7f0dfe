"""ROC/AUC, top-k masks and CPR/CMD on hand-made inputs with known answers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from circuitfind.errors import ConfigError, ShapeError
from circuitfind.evaluate.scores import (
    MIB_FRACTIONS,
    auc,
    cpr_cmd,
    roc_from_circuits,
    roc_points,
    top_k_masks,
)
from circuitfind.graph import Graph


# --- ROC / AUC -----------------------------------------------------------------------------------
def test_perfect_inverted_and_tied_scores():
    truth = torch.tensor([True, True, False, False, False])
    perfect = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert auc(*roc_points(perfect, truth)) == 1.0
    assert auc(*roc_points(-perfect, truth)) == 0.0
    fpr, tpr = roc_points(torch.zeros(5), truth)  # all tied: one diagonal step
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
    assert auc(fpr, tpr) == 0.5


def test_roc_points_known_curve():
    truth = torch.tensor([True, False, True, False])
    fpr, tpr = roc_points(torch.tensor([0.9, 0.8, 0.7, 0.1]), truth)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert auc(fpr, tpr) == pytest.approx(0.75)  # = P(score of a positive > score of a negative)


def test_random_scores_give_auc_near_half():
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(20_000, generator=gen) < 0.1
    scores = torch.rand(20_000, generator=gen)
    assert auc(*roc_points(scores, truth)) == pytest.approx(0.5, abs=0.02)


def test_auc_matches_rank_statistic():
    gen = torch.Generator().manual_seed(1)
    truth = torch.rand(300, generator=gen) < 0.3
    scores = torch.randn(300, generator=gen) + truth.float()
    pos, neg = scores[truth], scores[~truth]
    mann_whitney = (pos[:, None] > neg[None, :]).double().mean().item()
    assert auc(*roc_points(scores, truth)) == pytest.approx(mann_whitney)


def test_pessimistic_auc_matches_acdc_examples():
    cases = [
        ([0, 1], [0, 1], 0.0),
        ([0, 0.5, 1], [0, 0.5, 1], 0.25),
        ([0, 0.25, 0.5, 1], [0, 0.25, 0.5, 1], 5 / 16),
        ([0, 0.25, 0.75, 1], [0, 0.25, 0.5, 1], 4 / 16),
    ]
    for xs, ys, area in cases:
        assert auc(torch.tensor(xs), torch.tensor(ys), pessimistic=True) == pytest.approx(area)


def test_roc_errors():
    with pytest.raises(ConfigError, match="both"):
        roc_points(torch.ones(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="one shape"):
        roc_points(torch.ones(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="NaN"):
        roc_points(torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(ShapeError, match="sorted"):
        auc(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0, 1.0, 1.0]))


def test_roc_from_circuits():
    truth = torch.tensor([[True, True, False], [False, False, False]])
    exists = torch.tensor([[True, True, True], [True, True, False]])  # (1, 2) is not an edge
    circuits = [
        torch.tensor([[True, True, True], [True, True, True]]),  # every edge: (1, 1)
        torch.tensor([[True, False, True], [False, False, True]]),  # 1 TP, 1 FP (non-edge ignored)
        torch.tensor([[True, False, False], [False, False, False]]),  # 1 TP
    ]
    fpr, tpr = roc_from_circuits(circuits, truth, edge_mask=exists)
    assert fpr.tolist() == [0.0, 0.0, 1 / 3, 1.0, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert auc(fpr, tpr) == pytest.approx(0.5 * (1 / 3) + 0.75 * (2 / 3))


def test_roc_of_a_nested_sweep_equals_roc_of_scores():
    gen = torch.Generator().manual_seed(2)
    truth = torch.rand(50, generator=gen) < 0.4
    scores = torch.randn(50, generator=gen)
    circuits = [scores >= t for t in scores.unique()]
    fpr, tpr = roc_from_circuits(circuits, truth)
    assert auc(fpr, tpr) == pytest.approx(auc(*roc_points(scores, truth)))


# --- top-k masks ---------------------------------------------------------------------------------
def test_top_k_masks_on_a_graph():
    graph = Graph(n_layers=2, n_heads=2)
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(graph.n_senders, graph.n_receivers, generator=gen)
    masks = top_k_masks(scores, graph.edge_mask, MIB_FRACTIONS)
    n = graph.n_edges
    assert [int(m.sum()) for m in masks] == [max(1, round(k * n)) for k in MIB_FRACTIONS]
    assert all(not (m & ~graph.edge_mask).any() for m in masks)  # only existing edges
    assert all(bool((a <= b).all()) for a, b in pairwise(masks))  # nested
    assert bool(masks[-1].eq(graph.edge_mask).all())
    best = scores.masked_fill(~graph.edge_mask, -1e9).argmax()
    assert masks[0].flatten()[best]


def test_top_k_masks_with_minus_inf_scores_still_pick_only_edges():
    """Unranked edges (ACDC's untested ones, NaN -> -inf) come last but before anything that is not an edge."""
    graph = Graph(n_layers=2, n_heads=2)
    scores = torch.full((graph.n_senders, graph.n_receivers), -math.inf)
    scores[0, 0] = 1.0
    masks = top_k_masks(scores, graph.edge_mask, (0.5, 1.0))
    assert all(not (m & ~graph.edge_mask).any() for m in masks)
    assert int(masks[0].sum()) == round(0.5 * graph.n_edges) and masks[0][0, 0]
    assert bool(masks[1].eq(graph.edge_mask).all())


def test_top_k_signed_versus_absolute():
    scores = torch.tensor([[3.0, -5.0], [1.0, 2.0]])
    exists = torch.ones(2, 2, dtype=torch.bool)
    (signed,) = top_k_masks(scores, exists, (0.25,))
    (absolute,) = top_k_masks(scores, exists, (0.25,), absolute=True)
    assert signed.nonzero().tolist() == [[0, 0]]
    assert absolute.nonzero().tolist() == [[0, 1]]
    with pytest.raises(ConfigError, match="fractions"):
        top_k_masks(scores, exists, (0.0,))
    with pytest.raises(ShapeError, match="shape"):
        top_k_masks(scores, torch.ones(3, 2, dtype=torch.bool))


# --- CPR / CMD -----------------------------------------------------------------------------------
def test_cpr_cmd_constant_faithfulness():
    assert cpr_cmd([1.0] * 10) == (0.999, 0.0)
    cpr, cmd = cpr_cmd([0.0] * 10)
    assert (cpr, cmd) == (0.0, 0.999)
    cpr, cmd = cpr_cmd([1.5] * 10)
    assert cpr == pytest.approx(1.5 * 0.999) and cmd == pytest.approx(0.5 * 0.999)


def test_cpr_cmd_linear_and_crossing():
    xs = (0.0, 0.5, 1.0)
    assert cpr_cmd([0.0, 0.5, 1.0], xs) == (0.5, 0.5)  # f = x: area x^2/2; |1 - x| area 1/2
    cpr, cmd = cpr_cmd([0.0, 2.0], (0.0, 1.0))  # trapezoid over |1 - f| = 1 at both ends
    assert cpr == 1.0 and cmd == 1.0
    fractions = MIB_FRACTIONS
    cpr, _ = cpr_cmd(list(fractions), fractions)  # f = x is linear, so trapezoids are exact
    assert cpr == pytest.approx((1.0 - 0.001**2) / 2)


def test_cpr_cmd_errors():
    with pytest.raises(ShapeError, match="one faithfulness value per fraction"):
        cpr_cmd([1.0, 1.0])
    with pytest.raises(ConfigError, match="increasing"):
        cpr_cmd([1.0, 1.0], (0.5, 0.1))
    with pytest.raises(ShapeError, match="finite"):
        cpr_cmd([1.0, float("nan")], (0.1, 0.5))
