"""The edge-masked forward: invariants against the HF model and against the slow reference."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitfind.algorithms import EapOptions, run_eap_ig
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ShapeError, UnsupportedModelError
from circuitfind.models.loading import load_model
from circuitfind.problem import Faithfulness, prepare_problem
from tests.families_tiny import NEW_FAMILIES
from tests.models_tiny import FAMILIES, VOCAB, randomize_biases, tiny_gpt2, tiny_mistral, tiny_neox, tiny_qwen2
from tests.reference_forward import assert_close, reference_forward
from tests.toy_problems import natural_task

B, T = 4, 7


def _models():
    out = {}
    for name, make in FAMILIES.items():
        m = make()
        randomize_biases(m)
        out[name] = m
    seq_neox = tiny_neox(parallel=False)
    randomize_biases(seq_neox)
    out["neox-sequential"] = seq_neox
    return out


MODELS = _models()


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]


def _ids(seed=0, b=B, t=T):
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _hf(model, ids, am=None):
    pos = None if am is None else (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(ids, attention_mask=am, position_ids=pos).logits


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_all_edges_kept_equals_hf(model, padding):
    pm = PatchableModel(model)
    ids = _ids()
    am = torch.ones_like(ids)
    if padding == "right":
        am[1, 5:] = 0
        am[2, 3:] = 0
    elif padding == "left":
        am[1, :2] = 0
        am[3, :4] = 0
    for kind in ("zero", "mean", "resample"):
        abl = pm.ablation(kind, None if kind == "zero" else _ids(1))
        with torch.no_grad():
            out = pm.forward(ids, abl, pm.graph.full_mask(), attention_mask=am)
        ref = _hf(model, ids, am)
        real = am.bool()
        assert_close(out[real], ref[real])


def test_no_edges_kept_equals_corrupted_run(model):
    pm = PatchableModel(model)
    clean, corrupt = _ids(0), _ids(1)
    abl = pm.ablation(Ablation.RESAMPLE, corrupt)
    with torch.no_grad():
        out = pm.forward(clean, abl, torch.zeros(pm.graph.n_senders, pm.graph.n_receivers))
    assert_close(out, _hf(model, corrupt))


@pytest.mark.parametrize("kind", ["resample", "mean", "zero"])
def test_random_masks_match_reference(model, kind):
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation(kind, None if kind == "zero" else _ids(2))
    gen = torch.Generator().manual_seed(3)
    masks = [
        torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.5,
        torch.rand(g.n_senders, g.n_receivers, generator=gen),
    ]  # bool half, float interpolation
    s, r = g.edge_index("a0.h1->a1.h0<k>")
    single = g.full_mask()
    single[s, r] = False
    masks.append(single)
    for mask in masks:
        with torch.no_grad():
            out = pm.forward(clean, abl, mask)
            ref = reference_forward(pm.spec, g, clean, abl.outputs, mask.float())
        assert_close(out, ref)


def test_single_edge_removal_only_changes_downstream():
    model = MODELS["gpt2"]
    pm = PatchableModel(model)
    g = pm.graph
    clean, corrupt = _ids(0), _ids(1)
    abl = pm.ablation("resample", corrupt)
    mask = g.full_mask()
    s, r = g.edge_index("input->m2")
    mask[s, r] = False
    with torch.no_grad():
        _, d_full = pm.forward_with_diffs(clean, abl, g.full_mask())
        _, d_cut = pm.forward_with_diffs(clean, abl, mask)
    # every sender below m2 is unchanged; m2 itself changes
    assert torch.equal(d_full[: g.mlp_sender(2)], d_cut[: g.mlp_sender(2)])
    assert not torch.allclose(d_full[g.mlp_sender(2)], d_cut[g.mlp_sender(2)])


@pytest.mark.parametrize("start", [1, 2, 3])
def test_start_from_cache_equals_full_pass(model, start):
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation("resample", _ids(1))
    mask = torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(5)) < 0.7
    pos = torch.tensor([6, 5, 4, 6])
    with torch.no_grad():
        full, diffs = pm.forward_with_diffs(clean, abl, mask, positions=pos)
        cache = pm.prefix_cache(diffs, abl, mask, start)
        # candidates that differ only in receivers of the start layer (and above for the partial's non-prefix)
        cands = mask.repeat(3, 1, 1)
        if start < g.n_layers:
            cols = list(g.receivers_of_layer(start))
            cands[1, :, cols[0]] = False
            cands[2, : g.senders_before(start), cols[-1]] = False
        restarted = pm.forward(clean, abl, cands, positions=pos, start_layer=start, cache=cache)
        direct = torch.stack([pm.forward(clean, abl, c, positions=pos) for c in cands])
    assert_close(restarted[0], full, 1e-5)
    assert_close(restarted, direct, 1e-5)


def test_cache_mismatch_is_detected():
    pm = PatchableModel(MODELS["gpt2"])
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation("resample", _ids(1))
    with torch.no_grad():
        _, diffs = pm.forward_with_diffs(clean, abl, g.full_mask())
    cache = pm.prefix_cache(diffs, abl, g.full_mask(), 2)
    bad = g.full_mask()
    bad[0, g.mlp_receiver(0)] = False  # a receiver below the start layer
    with pytest.raises(ConfigError, match="cache"):
        pm.forward(clean, abl, bad, start_layer=2, cache=cache)
    with pytest.raises(ConfigError, match="PrefixCache"):
        pm.forward(clean, abl, g.full_mask(), start_layer=2)


def test_stacked_masks_equal_separate_passes(model):
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation("resample", _ids(1))
    gen = torch.Generator().manual_seed(7)
    masks = torch.rand(3, g.n_senders, g.n_receivers, generator=gen) < 0.6
    masks[1] = g.full_mask()  # shared inputs (no correction) next to per-candidate ones
    with torch.no_grad():
        stacked = pm.forward(clean, abl, masks)
        assert_close(pm.forward(clean, abl, g.full_mask().repeat(2, 1, 1)), pm.forward(clean, abl, masks[1]), 1e-5)
        for k in range(3):
            assert_close(stacked[k], pm.forward(clean, abl, masks[k]), 1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float_mask_gradient_matches_finite_difference(family):
    model = FAMILIES[family](init=0.3).double()  # larger weights: edges with visible effects
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation("resample", _ids(1))
    mask = torch.full((g.n_senders, g.n_receivers), 0.8, dtype=torch.float64, requires_grad=True)
    pos = torch.full((B,), T - 1)
    out = pm.forward(clean, abl, mask, positions=pos)
    (out**2).sum().backward()
    # an edge into a head input and one into an MLP, both well away from zero gradient
    s, r = g.edge_index("a0.h2->a2.h1<v>")
    # HF's RMSNorm computes in float32 even in a float64 model, so Llama needs a coarse step and tolerance
    eps, tol = (5e-2, 5e-3) if family == "llama" else (1e-5, 1e-6)
    vals = []
    for sign in (1, -1):
        m2 = mask.detach().clone()
        m2[s, r] += sign * eps
        with torch.no_grad():
            vals.append((pm.forward(clean, abl, m2, positions=pos) ** 2).sum())
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert mask.grad[s, r].abs() > 1e-3
    assert abs(mask.grad[s, r].item() - fd.item()) < tol * abs(fd.item())
    assert all(p.grad is None for p in model.parameters()), "gradients leaked into the model"


def test_model_is_left_unchanged():
    model = tiny_gpt2()
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pm = PatchableModel(model)
    abl = pm.ablation("resample", _ids(1))
    pm.forward(_ids(0), abl, pm.graph.full_mask())
    assert model.training
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_bad_inputs_raise_clear_errors():
    pm = PatchableModel(MODELS["llama"])
    g = pm.graph
    clean = _ids(0)
    abl = pm.ablation("resample", _ids(1))
    with pytest.raises(ShapeError, match=r"\(senders, receivers\)"):
        pm.forward(clean, abl, torch.ones(3, 3))
    with pytest.raises(ShapeError, match="same shape"):
        pm.forward(_ids(0, t=T + 2), abl, g.full_mask())
    with pytest.raises(ShapeError, match="long tensor"):
        pm.forward(clean.float(), abl, g.full_mask())
    with pytest.raises(ShapeError, match="positions"):
        pm.forward(clean, abl, g.full_mask(), positions=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="unknown ablation"):
        pm.ablation("gaussian", clean)
    with pytest.raises(ConfigError, match="needs input ids"):
        pm.ablation("resample")


@pytest.mark.parametrize("top_live_layer", [-1, 0, 1])
def test_answer_positions_only_above_the_last_live_head(model, top_live_layer):
    """With every head above some layer dead, only answer positions are computed there; same logits."""
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0)
    am = torch.ones_like(clean)
    am[2, 5:] = 0
    pos = am.sum(1) - 1
    abl = pm.ablation("mean", _ids(3))  # per-position bases and outputs exercise the selection
    mask = torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(9)) < 0.6
    for layer in range(top_live_layer + 1, g.n_layers):
        first = g.head_sender(layer, 0)
        mask[first : first + g.n_heads] = False
    with torch.no_grad():
        every = pm.forward(clean, abl, mask, attention_mask=am)[torch.arange(B), pos]
        answer_only = pm.forward(clean, abl, mask, attention_mask=am, positions=pos)
        stacked = pm.forward(clean, abl, mask.repeat(2, 1, 1), attention_mask=am, positions=pos)
    assert_close(answer_only, every, 1e-5)
    assert_close(stacked[1], every, 1e-5)


def test_vocab_columns_equal_the_sliced_logits(model):
    """Computing only some logit columns (linear unembedding, and a generic one that is sliced) changes nothing."""
    import dataclasses

    pm = PatchableModel(model)
    clean, abl = _ids(0), pm.ablation("resample", _ids(1))
    mask = torch.rand(pm.graph.n_senders, pm.graph.n_receivers, generator=torch.Generator().manual_seed(2)) < 0.5
    vocab = torch.tensor([7, 3, 3, VOCAB - 1])  # unsorted, repeated
    pos = torch.full((B,), T - 1)
    with torch.no_grad():
        full = pm.forward(clean, abl, mask, positions=pos)
        cols = pm.forward(clean, abl, mask.repeat(2, 1, 1), positions=pos, vocab=vocab)
        every = pm.forward(clean, abl, mask, vocab=vocab)
    assert cols.shape == (2, B, len(vocab)) and every.shape == (B, T, len(vocab))
    assert_close(cols[1], full[:, vocab], 1e-5)
    assert_close(every[:, -1], full[:, vocab], 1e-5)
    linear = pm.spec.unembed
    generic = dataclasses.replace(pm.spec, unembed=lambda x: linear(x))
    x = torch.randn(3, pm.spec.d_model)
    assert isinstance(linear, torch.nn.Linear)
    assert_close(generic.logits(x, vocab), linear(x)[:, vocab], 1e-6)
    assert_close(pm.spec.logits(x, vocab), linear(x)[:, vocab], 1e-5)


# --- sliding-window attention (Mistral: every layer; Qwen2: layers >= max_window_layers) ---------------------
WINDOWED = {"mistral": tiny_mistral, "qwen2": tiny_qwen2}


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_sliding_window_all_edges_kept_equals_hf(family):
    model = WINDOWED[family]()
    randomize_biases(model)
    ids = _ids(t=12)  # the window is 4
    am = torch.ones_like(ids)
    am[1, 9:] = 0
    ref = _hf(model, ids, am)
    # the reference really applies the window: the same weights without it give other logits
    plain = WINDOWED[family](sliding_window=None)
    plain.load_state_dict(model.state_dict())
    assert (ref - _hf(plain, ids, am))[am.bool()].abs().max() > 1e-2
    pm = PatchableModel(model)
    with torch.no_grad():
        out = pm.forward(ids, pm.ablation("resample", _ids(1, t=12), am), pm.graph.full_mask(), attention_mask=am)
        corrupted = pm.forward(ids, pm.ablation("resample", _ids(1, t=12)), torch.zeros_like(pm.graph.full_mask()))
    real = am.bool()
    assert float((out - ref)[real].abs().max()) <= 1e-4
    assert float((corrupted - _hf(model, _ids(1, t=12))).abs().max()) <= 1e-4
    assert [lay.sliding_window for lay in pm.spec.layers] == ([4, 4, 4] if family == "mistral" else [None, 4, 4])


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_sliding_window_random_masks_match_reference(family):
    model = WINDOWED[family]()
    pm = PatchableModel(model)
    g = pm.graph
    clean = _ids(0, t=12)
    abl = pm.ablation("resample", _ids(2, t=12))
    gen = torch.Generator().manual_seed(3)
    mask = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.5) & g.edge_mask
    with torch.no_grad():
        out = pm.forward(clean, abl, mask)
        ref = reference_forward(pm.spec, g, clean, abl.outputs, mask.float())
    assert_close(out, ref)


def test_unknown_attention_layer_type_is_refused():
    model = tiny_qwen2(layer_types=["full_attention", "chunked_attention", "sliding_attention"])
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        PatchableModel(model)


# --- half precision: bfloat16 / float16 against float32 within the README's tolerances ("Precision and devices") --
# The stated tolerances of bfloat16 against float32 (README, "Precision and devices").
LOGIT_REL = 0.03  # max |logit error| / max |logit|, all edges kept
HF_FACTOR = 4  # ... and at most this times transformers' own forward's error in that dtype
LOSS_REL = 0.01  # |loss error| / (|loss(full)| + |loss(empty)|)
FAITH_ABS = 0.02  # faithfulness of a circuit, when the full-to-empty gap is not tiny
SPEARMAN = 0.98  # rank correlation of EAP-IG scores over all edges
TOP_OVERLAP = 0.85  # shared fraction of the top 5% of edges by EAP-IG


def _pair(name: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = FAMILIES[name](init=0.2)  # logits of a few units, like a trained model's
    randomize_biases(model)
    return model, load_model(copy.deepcopy(model), dtype=dtype)[0]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_kept_logits_in_half_precision_match_float32(name, dtype):
    m32, m16 = _pair(name, dtype)
    pm = PatchableModel(m16)
    assert pm.dtype == dtype
    task = natural_task(PatchableModel(m32))
    with torch.no_grad():
        ref = m32(task.clean_ids, attention_mask=task.attention_mask).logits
        hf16 = m16(task.clean_ids, attention_mask=task.attention_mask).logits.float()
        abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
        ours = pm.forward(task.clean_ids, abl, pm.graph.full_mask(), attention_mask=task.attention_mask)
    assert ours.dtype == dtype
    real = task.attention_mask.bool()
    err = (ours.float() - ref)[real].abs().max()
    assert err <= LOGIT_REL * ref[real].abs().max()
    # of the order of transformers' own forward in that dtype: the rounding is the dtype's; the patched forward
    # rounds each head's output before summing them (one more rounding per head than a fused o_proj)
    assert err <= HF_FACTOR * (hf16 - ref)[real].abs().max() + 1e-3


MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
ROUTING_FLIPS = 0.05  # MoE: positions whose near-tied top-k experts may route differently in bfloat16


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_every_family_in_bfloat16_tracks_transformers_own_rounding(name):
    m32 = NEW_FAMILIES[name]()
    m16 = load_model(copy.deepcopy(m32), dtype="bfloat16")[0]
    pm = PatchableModel(m16)
    task = natural_task(PatchableModel(m32))
    with torch.no_grad():
        ref = m32(task.clean_ids, attention_mask=task.attention_mask).logits
        hf16 = m16(task.clean_ids, attention_mask=task.attention_mask).logits.float()
        abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
        ours = pm.forward(task.clean_ids, abl, pm.graph.full_mask(), attention_mask=task.attention_mask).float()
    real = task.attention_mask.bool()
    per_position = (ours - ref).abs().amax(-1)[real]  # (positions,)
    within = per_position <= HF_FACTOR * (hf16 - ref)[real].abs().max() + 1e-3
    # a mixture of experts routes each token to its top-k experts: where two are near-tied, bfloat16 rounding may
    # pick the other one (one of 38 positions of the tiny OLMoE), a jump no tolerance on the rounding covers
    assert float(within.float().mean()) >= (1 - ROUTING_FLIPS if name in MOE else 1.0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bfloat16_metric_faithfulness_and_eap_ig_match_float32(name):
    m32, m16 = _pair(name)
    pm32, pm16 = PatchableModel(m32), PatchableModel(m16)
    task = natural_task(pm32)
    p32 = prepare_problem(pm32, task, metric="logit_diff")[0]
    p16 = prepare_problem(pm16, task, metric="logit_diff")[0]
    f32, f16 = Faithfulness(p32), Faithfulness(p16)
    scale = abs(f32.loss_full) + abs(f32.loss_empty)
    assert abs(f16.loss_full - f32.loss_full) <= LOSS_REL * scale
    assert abs(f16.loss_empty - f32.loss_empty) <= LOSS_REL * scale
    g = pm32.graph
    half = torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(0)) > 0.5
    assert abs(f16(half) - f32(half)) <= FAITH_ABS

    s32 = run_eap_ig(p32, EapOptions(steps=5)).scores[g.edge_mask]
    s16 = run_eap_ig(p16, EapOptions(steps=5)).scores[g.edge_mask]
    assert s16.dtype == torch.float64  # scores are accumulated wide whatever the model's dtype
    assert _spearman(s32, s16) >= SPEARMAN
    k = len(s32) // 20
    shared = set(s32.topk(k).indices.tolist()) & set(s16.topk(k).indices.tolist())
    assert len(shared) >= TOP_OVERLAP * k


# --- position-aware masks (S, R, T) against the slow reference --------------------------------------------------------
TP = 6  # tokens per prompt of the position-aware tests


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_position_masks_match_the_slow_reference_and_the_2d_forward(name):
    pm = PatchableModel(MODELS[name])
    g = pm.graph
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, VOCAB, (2, 3, TP), generator=gen)
    abl = pm.ablation("resample", corrupt)
    mask3 = (torch.rand(g.n_senders, g.n_receivers, TP, generator=gen) < 0.5) & g.edge_mask[..., None]
    with torch.no_grad():
        out = pm.forward(clean, abl, mask3)
        ref = reference_forward(pm.spec, g, clean, abl.outputs, mask3.float().unsqueeze(-1))
        assert_close(out, ref)
        # a mask constant over positions is the 2-D mask
        mask2 = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.5) & g.edge_mask
        flat = pm.forward(clean, abl, mask2)
        assert torch.allclose(pm.forward(clean, abl, mask2[..., None].expand(-1, -1, TP)), flat, atol=1e-5)
        # all kept: the model's logits; none kept: the corrupted run
        hf = pm.module(clean).logits
        full = g.full_mask()[..., None].expand(-1, -1, TP).clone()
        assert torch.allclose(pm.forward(clean, abl, full), hf, atol=1e-4)
        corrupted = pm.module(corrupt).logits
        none = torch.zeros(g.n_senders, g.n_receivers, TP, dtype=torch.bool)
        assert torch.allclose(pm.forward(clean, abl, none), corrupted, atol=1e-4)
        # a stack (K, S, R, TP) is the masks one by one, answer positions and vocab columns included
        stack = torch.stack([mask3, ~mask3])
        last, vocab = torch.full((3,), TP - 1), torch.tensor([1, 5])
        many = pm.forward(clean, abl, stack, positions=last, vocab=vocab)
        assert torch.allclose(many[1], pm.forward(clean, abl, ~mask3, positions=last, vocab=vocab), atol=1e-5)
        assert torch.allclose(many[0], out[:, -1, vocab], atol=1e-5)


def test_position_masks_are_checked():
    pm = PatchableModel(MODELS["gpt2"])
    g = pm.graph
    ids = torch.randint(0, VOCAB, (2, TP))
    abl = pm.ablation("resample", ids)
    with pytest.raises(ShapeError, match="one position per token"):
        pm.forward(ids, abl, torch.ones(g.n_senders, g.n_receivers, TP + 1))
