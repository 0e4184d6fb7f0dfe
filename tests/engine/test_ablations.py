"""The ablations pinned against hand computations (REFERENCE §2).

The expected values come from the HF model itself (its final residual, read by a hook on the final norm) or
from per-prompt runs averaged in an explicit loop, never from the ablation code under test. The key identity:
with no edge kept, the logits receiver sees the sum of every sender's ablated output plus the biases that
belong to no node; under mean ablation that sum is the mean of the senders' live outputs, i.e. the mean final
residual of the reference prompts.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.patchable import PatchableModel
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2

N, T = 3, 5
LEFT_PADDED = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])  # (N, T)


def _model():
    model = tiny_gpt2(init=0.2)  # large enough weights that positions and prompts differ visibly
    randomize_biases(model)
    return model


def _ids(seed: int, n: int = N) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def _final_residual(model, ids: torch.Tensor, am: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, T, D)``: the residual stream entering GPT-2's final LayerNorm, from HF's own forward."""
    seen = []
    handle = model.transformer.ln_f.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        pos = None if am is None else (am.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            model(ids, attention_mask=am, position_ids=pos)
    finally:
        handle.remove()
    return seen[0]


def _unembed(model, resid: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(model.transformer.ln_f(resid))


def _empty(pm: PatchableModel) -> torch.Tensor:
    return torch.zeros(pm.graph.n_senders, pm.graph.n_receivers)


def _mean_by_hand(values: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """``(N, T, ...) -> (T, ...)``: at each position, the mean over the prompts with a real token there."""
    out = []
    for t in range(am.shape[1]):
        rows = [values[n, t] for n in range(am.shape[0]) if am[n, t]]
        out.append(sum(rows) / len(rows))
    return torch.stack(out)


def test_zero_ablation_keeps_only_the_biases_of_no_node():
    """No edge kept: every head and MLP output is zero, the attention output biases stay (at every position)."""
    model = _model()
    pm = PatchableModel(model)
    b_o = sum(block.attn.c_proj.bias for block in model.transformer.h).detach()
    assert float(b_o.abs().max()) > 0.05  # the biases are really there
    with torch.no_grad():
        out = pm.forward(_ids(0), pm.ablation("zero"), _empty(pm))  # (N, T, V)
    expected = _unembed(model, b_o)  # (V,)
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)


def test_mean_ablation_averages_each_position_over_the_prompts():
    """Unpadded reference: the default is per position; the empty circuit sees the mean final residual there."""
    model = _model()
    pm = PatchableModel(model)
    ref = _ids(1)
    resid = _final_residual(model, ref)  # (N, T, D)
    per_position = resid.mean(dim=0)  # (T, D)
    pooled = resid.mean(dim=(0, 1))  # (D,)
    assert float((per_position - pooled).abs().max()) > 0.1  # the two readings of "mean" really differ
    with torch.no_grad():
        out = pm.forward(_ids(0), pm.ablation("mean", ref), _empty(pm))  # (N, T, V)
    torch.testing.assert_close(out, _unembed(model, per_position).expand_as(out), atol=1e-4, rtol=0)


def test_mean_ablation_per_position_with_left_padding_excludes_the_pads():
    model = _model()
    pm = PatchableModel(model)
    ref, am = _ids(1), LEFT_PADDED
    resid = _final_residual(model, ref, am)
    with torch.no_grad():
        out = pm.forward(_ids(0), pm.ablation("mean", ref, am, per_position=True), _empty(pm))
    expected = _unembed(model, _mean_by_hand(resid, am))  # (T, V)
    with_pads = _unembed(model, resid.mean(dim=0))
    assert float((expected - with_pads).abs().max()) > 1e-2  # counting the pads would change the answer
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-4, rtol=0)


def test_mean_ablation_sender_outputs_by_hand_with_left_padding():
    """Each sender's mean, per position, over the prompts with a real token there; every prompt run on its own."""
    model = _model()
    pm = PatchableModel(model)
    ref, am = _ids(1), LEFT_PADDED
    live = torch.zeros(pm.graph.n_senders, N, T, pm.spec.d_model)  # (S, N, T, D), pads stay 0 (never read)
    for n in range(N):
        real = am[n].bool()
        with torch.no_grad():
            live[:, n, real] = pm.sender_outputs(ref[n, real][None])[:, 0]  # alone and unpadded
    expected = _mean_by_hand(live.permute(1, 2, 0, 3), am).transpose(0, 1)  # (N, T, S, D) -> (S, T, D)
    got = pm.ablation("mean", ref, am, per_position=True).outputs  # (S, 1, T, D)
    torch.testing.assert_close(got[:, 0], expected, atol=1e-5, rtol=0)
    pooled = pm.ablation("mean", ref, am, per_position=False).outputs  # (S, 1, 1, D)
    by_hand = sum(live[:, n, t] for n in range(N) for t in range(T) if am[n, t]) / int(am.sum())  # (S, D)
    torch.testing.assert_close(pooled[:, 0, 0], by_hand, atol=1e-5, rtol=0)


def _kl(clean_logits: torch.Tensor, circuit_logits: torch.Tensor) -> float:
    """KL(clean || circuit) averaged over prompts: (B, V), (B, V)."""
    p_log, q_log = clean_logits.log_softmax(-1), circuit_logits.log_softmax(-1)
    return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())


def test_discover_mean_ablation_averages_over_the_reference_prompts():
    """``discover(reference=R)`` ablates to the means over R's prompts, not over the task's."""
    model = _model()
    clean, reference = _ids(0), _ids(1, n=4)
    answer_pos = torch.full((N,), T - 1)
    task = Task("toy", clean, _ids(2), torch.ones(N, T, dtype=torch.long), answer_pos, _ids(3)[:, :1], _ids(4)[:, :1])
    ones, last = torch.ones(4, T, dtype=torch.long), torch.full((4,), T - 1)
    ref_task = Task("ref", reference, _ids(5, n=4), ones, last, _ids(6, n=4)[:, :1], _ids(7, n=4)[:, :1])
    with torch.no_grad():
        full = model(clean).logits[:, -1]  # (N, V)
    empty_over = {
        name: _unembed(model, _final_residual(model, ids).mean(dim=0)[-1]).expand(N, -1)  # (N, V)
        for name, ids in (("reference", reference), ("task", clean))
    }
    expected = {name: _kl(full, logits) for name, logits in empty_over.items()}
    assert abs(expected["reference"] - expected["task"]) > 1e-3 * expected["task"]  # the choice is visible
    pm = PatchableModel(model)
    one_edge = torch.zeros_like(pm.graph.full_mask())
    one_edge[pm.graph.edge_index("m2->logits")] = True

    def empty_kl(reference_task):
        circuit = cf.discover(
            pm,
            task,
            method="exact",
            candidates=one_edge,
            n_edges=1,
            ablation="mean",
            reference=reference_task,
            progress=False,
        )
        return circuit.metric_empty

    assert empty_kl(ref_task) == pytest.approx(expected["reference"], rel=1e-4)
    assert empty_kl(None) == pytest.approx(expected["task"], rel=1e-4)  # without one, the task's own prompts
