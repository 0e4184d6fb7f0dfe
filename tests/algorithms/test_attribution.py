"""Attribution scores against the exact patched forward (``pm.forward``, float masks, autograd) as the slow twin.

Convention under test: every score is the loss change when the edge alone is removed (loss = -metric for a task
metric, KL as is), so a gradient method's score is ``-d loss / d mask`` and higher is more important.

* EAP equals central finite differences of the mask (float64), and :func:`edge_gradients` at any uniform point
  equals autograd through ``pm.forward`` with that float mask, whatever the chunking and separability.
* EAP-IG: one step is EAP; the receiver gradients averaged over the input path, times the clean diffs, equal
  the same product built from autograd (input row: mask gradients; MLP and logits columns: gradients of the
  group bases); scores converge as steps grow.
* EAP-IG along the mask: per edge, the right Riemann sum of autograd mask gradients; in total, ``L(empty) -
  L(full)`` (IG's completeness).
* Exact scores: one single-edge patched forward each; batching and candidate sets change nothing.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from einops import einsum

from circuitfind.algorithms import EapOptions, ExactOptions, run_eap, run_eap_ig, run_eap_ig_mask, run_exact
from circuitfind.engine.gradients import Point, edge_gradients
from circuitfind.errors import ConfigError
from tests.toy_problems import NAMES, N, loss_at, problem_of


def mask_grad(problem, mask: torch.Tensor) -> torch.Tensor:
    """``d loss / d mask`` ``(S, R)`` by autograd through ``pm.forward`` at the float mask ``mask``."""
    m = mask.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(problem, m), m)
    return grad


def uniform(problem, a: float, input_scale: float = 1.0) -> torch.Tensor:
    """The float mask of :class:`Point` ``(a, input_scale)``: every edge ``a``, the input's edges ``a * c``."""
    m = problem.pm.graph.full_mask().double() * a
    m[0] *= input_scale
    return m


def some_edges(graph, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` random edges, plus one into a q, one into an MLP and one into the logits (all receiver kinds)."""
    edges = graph.edge_mask.nonzero()
    picked = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(seed))[:n]].tolist()
    for r in (graph.head_receiver(1, 2, "q"), graph.mlp_receiver(1), graph.logits_receiver):
        picked.append([int(graph.edge_mask[:, r].nonzero()[-1]), r])
    return [tuple(e) for e in picked]


def central_difference(problem, at: torch.Tensor, edge: tuple[int, int], h: float = 1e-4) -> float:
    up, down = at.clone(), at.clone()
    up[edge] += h
    down[edge] -= h
    with torch.no_grad():
        return float(loss_at(problem, up) - loss_at(problem, down)) / (2 * h)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal up to ``rel`` times the largest expected magnitude (entries near 0 are compared absolutely)."""
    scale = float(expected.abs().max())
    assert scale > 0, "the reference is all zeros: the test would prove nothing"
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"max difference {err:.3g} > {rel:g} x {scale:.3g}"


# --- EAP and the gradient engine -----------------------------------------------------------------------------
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


# --- EAP-IG along the inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_eap_ig_with_one_step_is_eap(name, metric):
    p = problem_of(name, metric)
    torch.testing.assert_close(run_eap_ig(p, EapOptions(steps=1)).scores, run_eap(p).scores, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_eap_ig_is_the_average_input_path_gradient_times_the_clean_diffs(name):
    """Independent twin: at input scale ``c = k / m`` the receiver gradient ``d loss / d input_r`` comes from
    autograd through ``pm.forward``: for the input's own edges as the mask gradient (the input diff is the same
    at every point), for the MLP and logits receivers (alone in their group) as the gradient of the group base."""
    p = problem_of(name, "kl")
    pm, g, m = p.pm, p.pm.graph, 3
    with torch.no_grad():
        _, clean_diffs = pm.forward_with_diffs(p.clean_ids, p.ablated, g.full_mask(), attention_mask=p.attention_mask)
    cols = [g.mlp_receiver(layer) for layer in range(g.n_layers)] + [g.logits_receiver]
    groups = [int(g.receiver_groups[r]) for r in cols]
    ref_row = torch.zeros(g.n_receivers, dtype=torch.float64)  # the input's edges
    ref_cols = torch.zeros(g.n_senders, len(cols), dtype=torch.float64)  # the edges into the MLPs and logits
    for k in range(1, m + 1):
        mask = uniform(p, 1.0, k / m).requires_grad_(True)
        delta = torch.zeros_like(p.ablated.bases, requires_grad=True)  # (G, B, T, D)
        shifted = dataclasses.replace(p.ablated, bases=p.ablated.bases + delta)
        g_mask, g_base = torch.autograd.grad(loss_at(p, mask, shifted), [mask, delta])
        ref_row -= g_mask[0] / m  # score = -d loss / d mask, averaged over the m points
        ref_cols -= einsum(clean_diffs, g_base[groups], "s b t d, c b t d -> s c") * g.edge_mask[:, cols] / m
    got = run_eap_ig(p, EapOptions(steps=m, chunk_size=2)).scores
    assert_close_rel(got[0], ref_row, 1e-6)
    assert_close_rel(got[:, cols], ref_cols, 1e-6)
    assert_close_rel(ref_cols[0], ref_row[cols], 1e-9)  # the two twins agree where they overlap


@pytest.mark.parametrize("name", NAMES)
def test_eap_ig_converges_as_steps_grow(name):
    p = problem_of(name, "logit_diff")
    s = {m: run_eap_ig(p, EapOptions(steps=m)).scores for m in (2, 4, 16, 32)}
    coarse = float((s[2] - s[4]).abs().max())
    fine = float((s[16] - s[32]).abs().max())
    assert coarse > 1e-3, "the path is too straight to show convergence"
    assert fine < 0.25 * coarse, f"steps 16 -> 32 changed scores by {fine:.3g}, 2 -> 4 by {coarse:.3g}"


# --- EAP-IG along the mask -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_eap_ig_mask_is_the_right_riemann_sum_of_mask_gradients(name):
    p = problem_of(name, "logit_diff")
    m = 4
    ref = -sum(mask_grad(p, uniform(p, k / m)) for k in range(1, m + 1)) / m
    assert_close_rel(run_eap_ig_mask(p, EapOptions(steps=m, chunk_size=3)).scores, ref, 1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_eap_ig_mask_scores_sum_to_the_loss_gap(name, metric):
    """IG's completeness: the scores sum to L(empty) - L(full) (= m(full) - m(empty) for a task metric).

    The right Riemann sum's remainder is about (L'(1) - L'(0)) / 2m along the path. With 64 steps that is
    within 1% of the gap for KL and GPT-2, but up to 6% where the tiny models' logit difference moves little
    between full and empty and bends on the way (Llama, NeoX); removing the 1/m term by Richardson
    extrapolation (2 S_64 - S_32) lands within 1% everywhere.
    """
    p = problem_of(name, metric)
    g = p.pm.graph
    with torch.no_grad():
        gap = float(loss_at(p, torch.zeros_like(g.edge_mask)) - loss_at(p, g.full_mask()))
    total = {m: float(run_eap_ig_mask(p, EapOptions(steps=m)).scores.sum()) for m in (32, 64)}
    assert total[64] == pytest.approx(gap, rel=0.01 if metric == "kl" or name == "gpt2" else 0.1)
    assert 2 * total[64] - total[32] == pytest.approx(gap, rel=0.01)


# --- exact scores --------------------------------------------------------------------------------------------
EXACT: dict[tuple[str, str], torch.Tensor] = {}


def exact_scores(name: str, metric: str) -> torch.Tensor:
    """Every edge's exact score, batched (computed once per model and metric)."""
    if (name, metric) not in EXACT:
        EXACT[name, metric] = run_exact(problem_of(name, metric), ExactOptions(batch_size=4)).scores
    return EXACT[name, metric]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_exact_scores_are_single_edge_patched_forwards(name, metric):
    p = problem_of(name, metric)
    g = p.pm.graph
    scores = exact_scores(name, metric)
    assert not scores[g.edge_mask].isnan().any()
    assert torch.equal(scores[~g.edge_mask], torch.zeros_like(scores[~g.edge_mask]))
    full = g.full_mask()
    with torch.no_grad():
        l_full = float(loss_at(p, full))
        for e in some_edges(g, 8, seed=2):
            without = full.clone()
            without[e] = False
            assert float(scores[e]) == pytest.approx(float(loss_at(p, without)) - l_full, rel=1e-9, abs=1e-12)
    assert float(scores[g.edge_mask].abs().max()) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_exact_candidates_unbatched_equal_the_full_batched_run(name):
    p = problem_of(name, "kl")
    g = p.pm.graph
    edges = g.edge_mask.nonzero()
    chosen = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(3))[:30]]
    cand = torch.zeros_like(g.edge_mask)
    cand[chosen[:, 0], chosen[:, 1]] = True
    cand[:, g.logits_receiver] = g.edge_mask[:, g.logits_receiver]  # a whole receiver
    cand[g.n_senders - 1, 0] = True  # the last MLP -> the first q: not an edge, ignored
    assert not g.edge_mask[g.n_senders - 1, 0]
    result = run_exact(p, ExactOptions(batch_size=1, candidates=cand))
    full = exact_scores(name, "kl")
    want = cand & g.edge_mask
    torch.testing.assert_close(result.scores[want], full[want], rtol=1e-9, atol=1e-12)
    assert result.scores[g.edge_mask & ~want].isnan().all()
    assert float(result.scores[g.n_senders - 1, 0]) == 0.0
    assert result.stats["edges_scored"] == int(want.sum())


def test_exact_refuses_bad_batch_size():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigError):
            ExactOptions(batch_size=bad)


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
