"""EAP (algorithms/eap.py) against central finite differences of the mask through ``pm.forward`` (float64).

Convention under test: every score is the loss change when the edge alone is removed (loss = -metric for a task
metric, KL as is), so a gradient method's score is ``-d loss / d mask`` and higher is more important.
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.algorithms import run_eap
from tests.toy_problems import (
    NAMES,
    central_difference,
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
