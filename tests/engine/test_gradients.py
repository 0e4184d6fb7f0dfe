"""Edge-mask gradients for every edge at once (engine/gradients.py) against autograd through ``pm.forward`` with a
float mask and against central finite differences (float64), whatever the chunking, separability, points and
sliding windows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitfind.algorithms import run_eap
from circuitfind.engine.gradients import Point, edge_gradients
from circuitfind.errors import ConfigError
from tests.toy_problems import (
    NAMES,
    N,
    assert_close_rel,
    central_difference,
    loss_at,
    mask_grad,
    problem_of,
    some_edges,
    uniform,
)


@pytest.mark.parametrize("name", NAMES)
def test_kl_gradients_equal_finite_differences_inside_the_path(name):
    p = problem_of(name, "kl")
    # the full model is KL's minimum: every EAP score is 0 there (the docstring tells KL users to take eap-ig)
    assert float(run_eap(p).scores.abs().max()) < 1e-9
    at = uniform(p, 0.5)
    grad = edge_gradients(p, [Point(mask_scale=0.5)]).grad
    edges = some_edges(p.pm.graph, 6, seed=1)
    fd = torch.tensor([central_difference(p, at, e) for e in edges])
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(torch.tensor([float(grad[e]) for e in edges]), fd, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
@pytest.mark.parametrize("chunk", [2, N])  # smaller than the batch (uneven chunks) and the whole batch
@pytest.mark.parametrize("separable", [True, False])
def test_edge_gradients_equal_autograd_through_the_patched_forward(name, metric, chunk, separable):
    p = dataclasses.replace(problem_of(name, metric), separable=separable)
    for a, c in ((0.7, 1.0), (0.6, 0.3)):
        got = edge_gradients(p, [Point(mask_scale=a, input_scale=c)], chunk_size=chunk)
        at = uniform(p, a, c)
        ref = mask_grad(p, at)
        # Point's input edges multiply the input diff already scaled by c: d loss / d (their mask) is c times
        # the gradient with respect to pm.forward's mask entry, which multiplies the unscaled diff
        ref[0] *= c
        assert_close_rel(got.grad, ref, 1e-6)
        with torch.no_grad():
            assert got.losses[0] == pytest.approx(float(loss_at(p, at)), rel=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_chunking_is_exact_for_a_loss_that_is_not_a_mean_over_prompts(name):
    base = problem_of(name, "logit_diff")
    squared = dataclasses.replace(base, loss=lambda lg: base.loss(lg) ** 2, separable=False)
    ref = mask_grad(squared, uniform(squared, 0.8))
    for chunk in (1, 2, 3):
        assert_close_rel(edge_gradients(squared, [Point(mask_scale=0.8)], chunk_size=chunk).grad, ref, 1e-6)
    # the same loss wrongly declared separable gives wrong gradients when chunked: the flag matters
    wrong = edge_gradients(dataclasses.replace(squared, separable=True), [Point(mask_scale=0.8)], chunk_size=2)
    assert float((wrong.grad - ref).abs().max()) > 1e-3 * float(ref.abs().max())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("separable", [True, False])
def test_several_points_are_weighted_and_summed(name, separable):
    p = dataclasses.replace(problem_of(name, "kl"), separable=separable)
    points, weights = [Point(mask_scale=0.3), Point(mask_scale=0.9, input_scale=0.5)], [0.25, -2.0]
    got = edge_gradients(p, points, weights, chunk_size=3).grad
    ref = 0.25 * mask_grad(p, uniform(p, 0.3))
    g2 = mask_grad(p, uniform(p, 0.9, 0.5))
    g2[0] *= 0.5
    assert_close_rel(got, ref - 2.0 * g2, 1e-6)


def test_edge_gradients_refuse_bad_arguments():
    p = problem_of("gpt2")
    for kwargs in ({"chunk_size": 0}, {"chunk_size": True}, {"chunk_size": 1.5}, {"weights": [1.0, 2.0]}):
        with pytest.raises(ConfigError):
            edge_gradients(p, [Point()], **kwargs)
    with pytest.raises(ConfigError):
        edge_gradients(p, [])


@pytest.mark.parametrize("make", ["mistral", "qwen2"])
def test_edge_gradients_honour_sliding_windows(make):
    """With a window shorter than the prompts, the shared-pass gradients still equal autograd through the patched
    forward (which applies the window exactly as HF does)."""
    from circuitfind.engine.patchable import PatchableModel
    from circuitfind.problem import prepare_problem
    from tests.models_tiny import tiny_mistral, tiny_qwen2
    from tests.toy_problems import toy_task

    model = (tiny_mistral if make == "mistral" else tiny_qwen2)(sliding_window=3).double()
    pm = PatchableModel(model)
    p, _ = prepare_problem(pm, toy_task(), metric="logit_diff")
    got = edge_gradients(p, [Point(mask_scale=0.7)], chunk_size=2)
    assert_close_rel(got.grad, mask_grad(p, uniform(p, 0.7)), 1e-6)
