"""EAP-IG along the activations against the exact patched forward (``pm.forward``, float masks) as the slow twin.

Interpolating one sender layer's outputs between ablated and clean is the edge mask with that layer's rows at
``a`` (every other entry 1); the score of ``s -> r`` is minus the right Riemann sum of ``d loss / d mask[s, r]``
at those masks. Checked against central finite differences of the loss, against EAP at one step, by
convergence in ``steps`` and by IG's completeness per sender layer.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitfind.algorithms import EapOptions, run_eap, run_eap_ig_act
from circuitfind.algorithms.eap_ig_act import activation_gradients, sender_groups
from circuitfind.errors import ConfigError
from tests.toy_problems import NAMES, loss_at, problem_of


def group_mask(problem, group, a: float) -> torch.Tensor:
    m = problem.pm.graph.full_mask().double()
    m[group.first : group.stop] = a
    return m


def central_difference(problem, at: torch.Tensor, edge: tuple[int, int], h: float = 1e-4) -> float:
    up, down = at.clone(), at.clone()
    up[edge] += h
    down[edge] -= h
    with torch.no_grad():
        return float(loss_at(problem, up) - loss_at(problem, down)) / (2 * h)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_is_eap(name):
    p = problem_of(name, "logit_diff")
    got, eap = run_eap_ig_act(p, EapOptions(steps=1)).scores, run_eap(p).scores
    assert float(eap.abs().max()) > 1e-2
    torch.testing.assert_close(got, eap, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_riemann_sums_of_finite_differences(name):
    """Two steps: the score is minus the mean of d loss / d mask[s, r] at the group's rows 0.5 and 1 (central
    differences of the loss through pm.forward), for edges out of input, a layer's heads and an MLP."""
    p = problem_of(name, "logit_diff")
    g = p.pm.graph
    scores = run_eap_ig_act(p, EapOptions(steps=2, chunk_size=2)).scores
    groups = {gr.first: gr for gr in sender_groups(g)}
    edges = [
        (0, g.head_receiver(1, 1, "k")),
        (g.head_sender(0, 2), g.mlp_receiver(0)),  # a head into its own layer's MLP (parallel: not an edge)
        (g.head_sender(1, 3), g.head_receiver(2, 0, "v")),
        (g.mlp_sender(1), g.logits_receiver),
        (g.mlp_sender(0), g.head_receiver(2, 3, "q")),
    ]
    edges = [e for e in edges if g.edge_mask[e]]
    for s, r in edges:
        group = next(gr for first, gr in groups.items() if first <= s < gr.stop)
        fd = [central_difference(p, group_mask(p, group, a), (s, r)) for a in (0.5, 1.0)]
        assert max(abs(v) for v in fd) > 1e-3, "this edge barely matters; pick another"
        assert float(scores[s, r]) == pytest.approx(-(fd[0] + fd[1]) / 2, rel=1e-4, abs=1e-7), g.edge_name(s, r)


@pytest.mark.parametrize("name", NAMES)
def test_scores_converge_and_each_layer_sums_to_its_removal(name):
    """IG's completeness, per sender layer: the scores of a group's edges sum to loss(group's rows 0) -
    loss(full); the right sum's 1/m error is removed by Richardson extrapolation (2 S_2m - S_m)."""
    p = problem_of(name, "logit_diff")
    g = p.pm.graph
    s = {m: run_eap_ig_act(p, EapOptions(steps=m)).scores for m in (2, 4, 32, 64)}
    coarse, fine = float((s[2] - s[4]).abs().max()), float((s[32] - s[64]).abs().max())
    assert coarse > 1e-3, "the paths are too straight to show convergence"
    assert fine < 0.25 * coarse
    with torch.no_grad():
        full = float(loss_at(p, g.full_mask()))
        for group in sender_groups(g):
            gap = float(loss_at(p, group_mask(p, group, 0.0))) - full
            total = 2 * s[64][group.first : group.stop].sum() - s[32][group.first : group.stop].sum()
            assert float(total) == pytest.approx(gap, rel=0.02, abs=1e-6), group


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_chunks_and_a_loss_that_is_not_a_mean_change_nothing(name):
    base = problem_of(name, "kl")
    squared = dataclasses.replace(base, loss=lambda lg: base.loss(lg) ** 2, separable=False)
    whole = run_eap_ig_act(squared, EapOptions(steps=2)).scores
    assert float(whole.abs().max()) > 1e-6
    torch.testing.assert_close(run_eap_ig_act(squared, EapOptions(steps=2, chunk_size=2)).scores, whole)
    wrong = run_eap_ig_act(dataclasses.replace(squared, separable=True), EapOptions(steps=2, chunk_size=2)).scores
    assert float((wrong - whole).abs().max()) > 1e-3 * float(whole.abs().max())


def test_activation_gradients_refuses_zero_steps():
    # no point on the path used to reach the contraction with no gradient and fail there (a TypeError)
    p = problem_of("gpt2", "logit_diff")
    with pytest.raises(ConfigError, match="steps.*got 0"):
        activation_gradients(p, 0)
