"""The families of issue 12 (Gemma 1/2/3, Qwen3, Qwen2 without bias, OLMo-2, Phi-3, GPT-J, OPT, MoE) under the
same invariants as the first three: all edges kept equals the HF model, none kept equals the HF run on the
corrupted prompts, random masks equal the slow per-receiver reference, fast ACDC equals plain ACDC. Prompts are
longer than the sliding windows; one is left-padded, one right-padded. Each quirk is shown to change the numbers
(so the invariants could not pass with the quirk ignored), and unsupported variants are refused.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitfind.algorithms import AcdcOptions, run_acdc_fast, run_acdc_plain
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import UnsupportedModelError
from circuitfind.models.spec import RotaryStyle
from circuitfind.problem import prepare_problem
from circuitfind.tasks import Task
from tests.algorithms.test_acdc import _assert_same
from tests.families_tiny import NEW_FAMILIES, WINDOW, gemma2, gemma3, olmo2, olmoe, opt, phi3, qwen3
from tests.models_tiny import VOCAB, randomize_biases, tiny_mistral, tiny_qwen2
from tests.reference_forward import assert_close, reference_forward


def randomized(model):
    randomize_biases(model)
    return model


B, T = 4, 10  # T > WINDOW: the windows cut
MODELS = {name: make() for name, make in NEW_FAMILIES.items()} | {
    "mistral-long": tiny_mistral(sliding_window=WINDOW),
    "qwen2-bias": randomized(
        tiny_qwen2(sliding_window=WINDOW, initializer_range=0.2)
    ),  # random q/k/v biases, window on layers 1-2
}
NAMES = sorted(MODELS)


def _ids(seed=0, b=B, t=T):
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _padded() -> torch.Tensor:
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :3] = 0  # left padding
    am[3, 7:] = 0  # right padding
    return am


def _task() -> Task:
    """Random clean and corrupted prompts of length T (one right-padded: tasks are right-padded), random answers."""
    g = torch.Generator().manual_seed(0)
    am = torch.ones(B, T, dtype=torch.long)
    am[3, 7:] = 0
    answers, wrong = (torch.randint(1, VOCAB, (B, 1), generator=g) for _ in range(2))
    wrong = torch.where(wrong == answers, wrong % (VOCAB - 1) + 1, wrong)  # a wrong answer is never the answer
    return Task("toy", _ids(0), _ids(1), am, am.sum(1) - 1, answers, wrong)


def _hf(model, ids, am=None):
    am = torch.ones_like(ids) if am is None else am
    with torch.no_grad():
        return model(ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0)).logits


@pytest.mark.parametrize("name", NAMES)
def test_all_edges_kept_equals_hf_and_none_kept_equals_the_corrupted_run(name):
    model = MODELS[name]
    pm = PatchableModel(model)
    clean, corrupt, am = _ids(0), _ids(1), _padded()
    full, empty = pm.graph.full_mask(), torch.zeros_like(pm.graph.full_mask())
    with torch.no_grad():
        kept = pm.forward(clean, pm.ablation("resample", corrupt, am), full, attention_mask=am)
        none = pm.forward(clean, pm.ablation("resample", corrupt, am), empty, attention_mask=am)
        mean = pm.forward(clean, pm.ablation("mean", corrupt, am), full, attention_mask=am)
    real = am.bool()
    assert_close(kept[real], _hf(model, clean, am)[real])
    assert_close(mean[real], _hf(model, clean, am)[real])
    assert_close(none[real], _hf(model, corrupt, am)[real])


@pytest.mark.parametrize("name", NAMES)
def test_random_masks_match_the_slow_reference(name):
    pm = PatchableModel(MODELS[name])
    g = pm.graph
    clean, am = _ids(0), _padded()
    abl = pm.ablation("resample", _ids(2), am)
    gen = torch.Generator().manual_seed(3)
    masks = [torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.5, torch.rand(g.n_senders, g.n_receivers)]
    for mask in masks:
        with torch.no_grad():
            out = pm.forward(clean, abl, mask, attention_mask=am)
            ref = reference_forward(pm.spec, g, clean, abl.outputs, mask.float(), attention_mask=am)
        assert_close(out[am.bool()], ref[am.bool()])


@pytest.mark.parametrize("name", NAMES)
def test_stacked_and_restarted_forwards_equal_direct_ones(name):
    """K candidate masks in one pass, and a pass restarted from a prefix cache, equal separate full passes."""
    pm = PatchableModel(MODELS[name])
    g = pm.graph
    clean, abl = _ids(0), pm.ablation("resample", _ids(1))
    masks = torch.rand(3, g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(7)) < 0.6
    pos = torch.full((B,), T - 1)
    with torch.no_grad():
        stacked = pm.forward(clean, abl, masks, positions=pos)
        direct = torch.stack([pm.forward(clean, abl, m, positions=pos) for m in masks])
        _, diffs = pm.forward_with_diffs(clean, abl, masks[0], positions=pos)
        restarted = pm.forward(
            clean, abl, masks[0], positions=pos, start_layer=1, cache=pm.prefix_cache(diffs, abl, masks[0], 1)
        )
    assert_close(stacked, direct, 1e-5)
    assert_close(restarted, direct[0], 1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fast_acdc_equals_plain_acdc(name):
    pm = PatchableModel(MODELS[name])
    problem = prepare_problem(pm, _task(), metric="kl", ablation="resample")[0]
    opts = AcdcOptions(threshold=0.1 if name == "gemma3" else 0.005, batch_size=4)  # gemma3's edges all matter
    plain, fast = run_acdc_plain(problem, opts), run_acdc_fast(problem, opts)
    _assert_same(plain, fast)
    assert 0 < int(fast.mask.sum()) < int(pm.graph.edge_mask.sum()), "the threshold keeps all or nothing"


# --- every quirk changes the numbers: an adapter that ignored it could not pass the tests above ----------------
def _without(spec, layer_field=None, value=None, **arch):
    if layer_field is not None:
        layers = tuple(dataclasses.replace(lay, **{layer_field: value}) for lay in spec.layers)
        spec = dataclasses.replace(spec, layers=layers)
    return dataclasses.replace(spec, **arch)


QUIRKS = {
    "gemma2 attention soft-cap": ("gemma2", dict(layer_field="attn_softcap")),
    "gemma2 final soft-cap": ("gemma2", dict(final_softcap=None)),
    "gemma2 post-attention norm": ("gemma2", dict(layer_field="attn_out_scale")),
    "gemma2 sliding window": ("gemma2", dict(layer_field="sliding_window")),
    "gemma3 q/k norms": ("gemma3", dict(layer_field="q_norm")),
    "gemma3 local rotary base": ("gemma3", dict(layer_field="rotary")),
    "qwen3 q/k norms": ("qwen3", dict(layer_field="k_norm")),
    "olmo2 whole-projection q norm": ("olmo2", dict(layer_field="q_norm")),
    "olmo2 post-attention norm": ("olmo2", dict(layer_field="attn_out_scale")),
    "olmoe whole-projection k norm": ("olmoe", dict(layer_field="k_norm")),
    "phi3 sliding window": ("phi3", dict(layer_field="sliding_window")),
    "gptj interleaved rotary": ("gptj", dict(rotary_style=RotaryStyle.HALF)),
    "mistral sliding window": ("mistral-long", dict(layer_field="sliding_window")),
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_each_quirk_changes_the_logits(quirk):
    name, change = QUIRKS[quirk]
    model = MODELS[name]
    pm = PatchableModel(model)
    if change.get("layer_field") == "rotary":  # every layer on the global rotary
        global_rotary = pm.spec.layers[-1].rotary
        assert pm.spec.layers[0].rotary is not global_rotary
        change = dict(layer_field="rotary", value=global_rotary)
    ablated = PatchableModel(_without(pm.spec, **change))
    clean = _ids(0)
    with torch.no_grad():
        out = ablated.forward(clean, ablated.ablation("zero"), ablated.graph.full_mask())
    assert float((out - _hf(model, clean)).abs().max()) > 1e-3


def test_gemma3_rotary_bases_differ_by_layer_type():
    pm = PatchableModel(MODELS["gemma3"])
    pos = torch.arange(T)[None]
    local, global_ = (pm.spec.layers[i].rotary(pos, torch.float32)[0] for i in (0, 1))
    assert not torch.allclose(local, global_)
    assert [lay.sliding_window for lay in pm.spec.layers] == [WINDOW, None]


# --- refused variants ----------------------------------------------------------------------------------------
def test_post_ln_opt_is_refused():
    with pytest.raises(UnsupportedModelError, match="do_layer_norm_before=False"):
        PatchableModel(opt(do_layer_norm_before=False))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: olmoe(clip_qkv=2.0), "clip_qkv"),
        (lambda: gemma3(use_bidirectional_attention=True), "use_bidirectional_attention"),
        (lambda: olmo2(attention_bias=True), "attention_bias"),
        (lambda: qwen3(layer_types=["full_attention", "chunked_attention"]), "chunked_attention"),
        (lambda: gemma2(layer_types=["sliding_attention", "chunked_attention"]), "chunked_attention"),
        (lambda: phi3(sliding_window=0), "sliding_window"),
    ],
)
def test_unsupported_variants_are_refused(make, match):
    with pytest.raises(UnsupportedModelError, match=match):
        PatchableModel(make())


# --- attribution: the gradient engine through the new q/k norms, soft-caps, output norms and rotaries ----------
GRADIENT_FAMILIES = ("gemma2", "gemma3", "gptj", "olmo2", "olmoe", "qwen3")


@pytest.fixture(scope="module")
def problems():
    from tests.families_tiny import in_float64
    from tests.toy_problems import toy_task

    out = {}
    for name in GRADIENT_FAMILIES:
        pm = PatchableModel(in_float64(NEW_FAMILIES[name]()))
        out[name] = prepare_problem(pm, toy_task(), metric="logit_diff", ablation="resample")[0]
    return out


@pytest.mark.parametrize("name", GRADIENT_FAMILIES)
def test_edge_gradients_equal_autograd_through_the_patched_forward(problems, name):
    from circuitfind.engine.gradients import Point, edge_gradients
    from tests.toy_problems import assert_close_rel, mask_grad, uniform

    p = problems[name]
    got = edge_gradients(p, [Point(mask_scale=0.7, input_scale=0.6)], chunk_size=2)
    ref = mask_grad(p, uniform(p, 0.7, 0.6))
    ref[0] *= 0.6  # the input's edges multiply the already scaled input diff (see tests/engine/test_gradients.py)
    assert_close_rel(got.grad, ref, 1e-6)


# not OLMoE: HF's router takes its softmax in float32 even in a float64 model, too coarse for finite differences
@pytest.mark.parametrize("name", [n for n in GRADIENT_FAMILIES if n != "olmoe"])
def test_eap_equals_finite_differences_of_the_mask(problems, name):
    from circuitfind.algorithms import run_eap
    from tests.toy_problems import central_difference, some_edges

    p = problems[name]
    scores = run_eap(p).scores
    full = p.pm.graph.full_mask().double()
    edges = some_edges(p.pm.graph, 6)
    fd = torch.tensor([central_difference(p, full, e) for e in edges])
    assert fd.abs().max() > 1e-2
    torch.testing.assert_close(torch.tensor([float(scores[e]) for e in edges]), -fd, rtol=1e-3, atol=1e-6)
