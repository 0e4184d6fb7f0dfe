"""The masked forward's sparse branches (engine/forward.py) against the slow reference, in float64.

One mask without autograd mixes each receiver group in one buffer from the cheaper of the kept and the removed
senders, and receivers whose upstream weights agree share one input, norm and projection. Each test builds masks
that drive those branches (mostly kept, mostly removed, mixed per receiver, one removed sender, some receivers
untouched, position masks, a restart from the prefix cache) and checks them against
:func:`tests.reference_forward.reference_forward`, a per-receiver Python loop that shares nothing with the engine.
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine import forward
from circuitfind.engine.patchable import PatchableModel
from tests import families_tiny
from tests.models_tiny import FAMILIES, VOCAB, in_float64, randomize_biases
from tests.reference_forward import assert_close, reference_forward

B, T = 3, 6
TOL = 1e-10  # float64 throughout: the branches must agree with the written-out sums to rounding


def _pm(name: str) -> PatchableModel:
    if name == "qwen3":  # per-head q/k norms: the grouped projection hands each head its own input to the norm
        model = families_tiny.qwen3()
    elif name == "olmo2":  # q/k norms over the whole projection (every head of the receiver's input)
        model = families_tiny.olmo2()
    else:
        model = FAMILIES[name]()
        randomize_biases(model)
    return PatchableModel(in_float64(model))


PMS = {name: _pm(name) for name in [*sorted(FAMILIES), "qwen3", "olmo2"]}


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _masks(pm: PatchableModel) -> dict[str, torch.Tensor]:
    """Masks that each take one branch of the sparse mixing and the shared receivers."""
    g = pm.graph
    gen = torch.Generator().manual_seed(7)
    full = g.full_mask()
    rand = torch.rand(g.n_senders, g.n_receivers, generator=gen)
    layer1 = list(g.receivers_of_layer(1))
    H = g.n_heads
    untouched = full.clone().double()  # layer 1: q of head 0 loses one sender, k of head 1 several, a float
    untouched[g.head_sender(0, 0), layer1[0]] = 0.0
    untouched[: g.senders_before(1) : 2, layer1[H + 1]] = 0.0
    untouched[0, layer1[2 * H]] = 0.25
    one_removed = full.clone()  # exactly one removed sender for one receiver of every kind
    one_removed[0, layer1[0]] = False
    one_removed[g.mlp_sender(0), g.mlp_receiver(1)] = False
    one_removed[g.head_sender(1, 1), g.logits_receiver] = False
    return {
        "mostly kept": full & (rand < 0.9),
        "mostly removed": full & (rand < 0.08),
        "half, mixed per receiver": full & (rand < 0.5),
        "float weights": rand * full,
        "untouched receivers share": untouched,
        "one removed sender": one_removed,
    }


@pytest.fixture(params=["whole batch", "prompt by prompt"])
def chunking(request, monkeypatch):
    """The q/k/v inputs mixed, normed and projected for the whole batch at once, or one prompt at a time."""
    if request.param == "prompt by prompt":
        monkeypatch.setattr(forward, "QKV_CHUNK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("name", sorted(PMS))
def test_sparse_branches_match_the_slow_reference(name, chunking):
    pm = PMS[name]
    clean, corrupt = _ids(0), _ids(1)
    for kind in ("resample", "mean", "zero"):
        abl = pm.ablation(kind, None if kind == "zero" else corrupt)
        for label, mask in _masks(pm).items():
            with torch.no_grad():
                out = pm.forward(clean, abl, mask)
            ref = reference_forward(pm.spec, pm.graph, clean, abl.outputs, mask.double())
            diff = float((out - ref).abs().max().detach())
            assert diff <= TOL, f"{kind}, {label}, {chunking}: max abs difference {diff:.3g}"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_all_kept_is_the_model_and_none_kept_the_corrupted_run(name):
    pm = PMS[name]
    clean, corrupt = _ids(0), _ids(1)
    abl = pm.ablation("resample", corrupt)
    g = pm.graph
    with torch.no_grad():
        assert_close(pm.forward(clean, abl, g.full_mask()), pm.module(clean).logits, TOL)
        none = torch.zeros(g.n_senders, g.n_receivers)
        assert_close(pm.forward(clean, abl, none), pm.module(corrupt).logits, TOL)


@pytest.mark.parametrize("name", ["llama", "olmo2"])
def test_position_masks_with_shared_receivers_match_the_reference(name):
    """A position mask ``(S, R, T)`` whose receivers mostly agree: those share inputs, the others vary by position."""
    pm = PMS[name]
    g = pm.graph
    clean, corrupt = _ids(2), _ids(3)
    abl = pm.ablation("resample", corrupt)
    gen = torch.Generator().manual_seed(11)
    mask = g.full_mask()[..., None].repeat(1, 1, T).double()
    some = list(g.receivers_of_layer(1))[:: g.n_heads + 1]  # a few receivers of layer 1, by position
    mask[:, some] = (torch.rand(g.n_senders, len(some), T, generator=gen) < 0.5).double()
    mask = mask * g.edge_mask[..., None]
    with torch.no_grad():
        out = pm.forward(clean, abl, mask)
    assert_close(out, reference_forward(pm.spec, g, clean, abl.outputs, mask.unsqueeze(-1)), TOL)


@pytest.mark.parametrize("start", [1, 2])
def test_restart_from_the_cache_matches_the_reference(start, chunking):
    """A one-mask restart at ``start`` (the ACDC test): the start layer's cached inputs corrected where the
    mask differs, the partial inputs above it, both mixed sparsely."""
    pm = PMS["llama"]
    g = pm.graph
    clean, corrupt = _ids(4), _ids(5)
    abl = pm.ablation("resample", corrupt)
    pos = torch.tensor([5, 3, 4])
    gen = torch.Generator().manual_seed(13)
    mask = g.full_mask() & (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.3)
    with torch.no_grad():
        _, diffs = pm.forward_with_diffs(clean, abl, mask, positions=pos)
        cache = pm.prefix_cache(diffs, abl, mask, start)
        cand = mask.clone()
        cols = list(g.receivers_of_layer(start))
        cand[: g.senders_before(start), cols[1]] = ~cand[: g.senders_before(start), cols[1]]
        cand[0, cols[-1]] = False
        out = pm.forward(clean, abl, cand, positions=pos, start_layer=start, cache=cache)
    ref = reference_forward(pm.spec, g, clean, abl.outputs, cand.double())
    assert_close(out, ref[torch.arange(B), pos], TOL)
