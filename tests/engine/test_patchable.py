"""The edge-masked forward: invariants against the HF model and against the slow reference."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.ablations import Ablation
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ShapeError, UnsupportedModelError
from tests.models_tiny import FAMILIES, VOCAB, randomize_biases, tiny_gpt2, tiny_mistral, tiny_neox, tiny_qwen2
from tests.reference_forward import assert_close, reference_forward

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
