"""EAP (algorithms/eap.py) against central finite differences of the mask through ``pm.forward`` (float64).

Convention under test: every score is the loss change when the edge alone is removed (loss = -metric for a task
metric, KL as is), so a gradient method's score is ``-d loss / d mask`` and higher is more important.
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.algorithms import EapOptions, run_eap, run_eap_ig
from tests.toy_problems import (
    NAMES,
    PMS,
    aligned_task,
    central_difference,
    loss_at,
    problem_of,
    some_edges,
)


@pytest.mark.parametrize("name", NAMES)
def test_eap_equals_finite_differences_of_the_mask(name):
    p = problem_of(name, "logit_diff")
    scores = run_eap(p).scores
    full = p.pm.graph.full_mask().double()
    edges = some_edges(p.pm.graph, 6)
    fd = torch.tensor([central_difference(p, full, e) for e in edges])  # d loss / d mask
    eap = torch.tensor([float(scores[e]) for e in edges])
    assert fd.abs().max() > 1e-2, "the chosen edges barely matter; pick others"
    # score = -d loss / d mask: the loss change when the edge is removed, to first order
    torch.testing.assert_close(eap, -fd, rtol=1e-3, atol=1e-6)
    assert torch.equal(scores[~p.pm.graph.edge_mask], torch.zeros_like(scores[~p.pm.graph.edge_mask]))


# --- per position (by_position=True) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_position_scores_sum_to_the_position_free_scores_and_are_the_gradients(name):
    problem = problem_of(name, task=aligned_task(PMS[name]))
    g = problem.pm.graph
    plain = run_eap(problem).scores
    by_pos = run_eap(problem, EapOptions(by_position=True))
    assert by_pos.position_scores.shape == (g.n_senders, g.n_receivers, 6)
    assert torch.allclose(by_pos.position_scores.sum(-1), plain, atol=1e-9, rtol=0)
    assert torch.allclose(by_pos.scores, plain, atol=1e-9, rtol=0)
    # independently: autograd through the patched forward with an (S, R, T) float mask
    mask = g.full_mask()[..., None].expand(-1, -1, 6).double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(problem, mask), mask)
    assert torch.allclose(by_pos.position_scores, -grad * g.edge_mask[..., None], atol=1e-9, rtol=0)
    assert (by_pos.position_scores[..., 0] != by_pos.position_scores[..., -1]).any()  # positions differ
    ig = run_eap_ig(problem, EapOptions(steps=3, by_position=True))
    assert torch.allclose(ig.position_scores.sum(-1), run_eap_ig(problem, EapOptions(steps=3)).scores, atol=1e-9)
