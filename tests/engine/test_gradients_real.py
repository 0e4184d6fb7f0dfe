"""Edge-mask gradients on the real default model (SmolLM2-135M-Instruct, GQA): slow, run with -m slow."""

from __future__ import annotations

import pytest

from circuitfind.engine.gradients import Point, edge_gradients
from circuitfind.engine.patchable import PatchableModel
from circuitfind.models import load_model
from circuitfind.problem import prepare_problem
from circuitfind.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model(progress=False)


def test_edge_gradients_equal_autograd_through_the_patched_forward_on_smollm2(smollm2):
    """The shared-pass gradients (q/k/v taps pulled back through RMSNorm, GQA k/v per query head) equal autograd
    through the patched forward with a float mask, on the real weights."""
    model, tok = smollm2
    pm = PatchableModel(model)
    task = get_task("ioi", tok, n=3, seed=0)
    problem, _ = prepare_problem(pm, task, metric="logit_diff")
    point = Point(mask_scale=0.7)
    mask = (pm.graph.full_mask().float() * point.mask_scale).requires_grad_(True)
    logits = pm.forward(
        problem.clean_ids,
        problem.ablated,
        mask,
        attention_mask=problem.attention_mask,
        positions=problem.positions,
        vocab=problem.vocab,
    )
    problem.loss(logits.unsqueeze(0))[0].backward()
    want = (mask.grad * pm.graph.edge_mask).double()
    got = edge_gradients(problem, [point], chunk_size=2).grad
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
