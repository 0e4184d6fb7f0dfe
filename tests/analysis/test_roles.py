"""Head analysis: attention patterns against HF's own, direct effects that add up, and role scores that find
planted heads (a previous-token head, a duplicate-token head, an induction pair, an identity-OV copying head)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from circuitfind.analysis import (
    COLUMNS,
    attention_patterns,
    clean_run,
    copying_scores,
    direct_effects,
    head_roles,
    logit_diff_of,
    repeated_tokens,
)
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import UnsupportedModelError
from circuitfind.models.norms import frozen_norm, split_norm
from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec
from circuitfind.tasks import Task
from tests.families_tiny import NEW_FAMILIES
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2, tiny_llama, tiny_mistral, tiny_neox
from tests.toy_problems import toy_task

MAKERS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "neox": tiny_neox, "mistral": tiny_mistral}
# every adapter: the first families and issue 12's (Gemma 1/2/3, Qwen3, OLMo-2, Phi-3, GPT-J, OPT, MoE)
ALL = {name: lambda make=make: make(init=0.2) for name, make in MAKERS.items() if name != "mistral"}
ALL |= {"mistral": tiny_mistral, **NEW_FAMILIES}


def _model(name):
    model = ALL[name]()
    randomize_biases(model)
    return model.eval()


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (3, 9))
    am = torch.ones_like(ids)
    am[2, 5:] = 0  # a right-padded prompt
    return ids, am


# --- attention patterns and direct effects on the real adapters --------------------------------------------
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_attention_patterns_match_hf(name):
    model = _model(name)
    model.set_attn_implementation("eager")  # HF returns attention weights only from eager attention
    ids, am = _prompts()
    with torch.no_grad():
        ref = model(ids, attention_mask=am, output_attentions=True).attentions  # L x (B, H, T, T)
    ours = attention_patterns(PatchableModel(model), ids, am)  # (L, B, H, T, T)
    real = am.bool()[:, None, :, None]  # padded query rows are not compared
    for layer, hf in enumerate(ref):
        assert torch.allclose(ours[layer].masked_fill(~real, 0), hf.masked_fill(~real, 0), atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_clean_run_matches_the_patched_forward_and_hf(name):
    """The plain forward (fast path) against the patched forward's sender outputs and HF's logits."""
    model = _model(name)
    pm = PatchableModel(model)
    ids, am = _prompts()
    run = clean_run(pm, ids, am)
    with torch.no_grad():
        ref = pm.sender_outputs(ids, am)  # (S, B, T, D)
        hf = model(ids, attention_mask=am).logits
    real = am.bool()[None, :, :, None]
    assert torch.allclose(run.outputs.masked_fill(~real, 0), ref.masked_fill(~real, 0), atol=1e-4)
    logits = pm.spec.logits(pm.spec.final_norm(run.final))
    assert torch.allclose(logits[am.bool()], hf[am.bool()], atol=1e-4)
    at = clean_run(pm, ids, am, positions=am.sum(1) - 1)
    assert torch.allclose(at.outputs[:, :, 0], run.outputs[:, torch.arange(3), am.sum(1) - 1], atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_direct_effects_add_up_to_the_logit_difference(name):
    pm = PatchableModel(_model(name))
    task = toy_task()
    de = direct_effects(pm, task)  # (S, N)
    assert de.shape == (pm.graph.n_senders, len(task))
    run = clean_run(pm, task.clean_ids, task.attention_mask, task.answer_pos)
    final, spec = run.final[:, 0], dataclasses.replace(pm.spec, final_softcap=None)  # (N, D); logits before a cap
    with torch.no_grad():
        full = logit_diff_of(spec.logits(spec.final_norm(final)), task.answers, task.wrong_answers)  # (N,)
        # what no sender carries: the constant biases through the frozen final norm, plus the norm's own bias
        const = pm.ablation("zero").bases[-1].reshape(1, -1)
        normed_const = frozen_norm(spec.final_norm, final)(const.expand_as(final))
        bias = split_norm(spec.final_norm, pm.spec.d_model).bias
        rest = normed_const + (0 if bias is None else bias)
        rest_diff = logit_diff_of(spec.logits(rest), task.answers, task.wrong_answers)
    assert torch.allclose(de.sum(0) + rest_diff, full, atol=1e-4)


def test_direct_effect_by_hand_on_rms_norm():
    """One component through a frozen RMSNorm and a linear unembedding, computed by hand."""
    norm = tiny_llama().model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, norm.weight.shape[0]))
    full, part = torch.randn(32), torch.randn(32)
    rms = math.sqrt(float((full**2).mean()) + norm.variance_epsilon)
    assert torch.allclose(frozen_norm(norm, full)(part), part * norm.weight / rms, atol=1e-6)
    parts = split_norm(norm, 32)
    assert torch.allclose(parts.linear(full) / parts.scale(full), norm(full), atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="LayerNorm, RMSNorm"):
        split_norm(nn.ReLU(), 8)


def test_logit_diff_of_by_hand():
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0], [3.0, 0.0, 1.0, 7.0]])
    answers = torch.tensor([[1, -1], [0, 3]])
    wrong = torch.tensor([[0, 2], [2, -1]])
    assert logit_diff_of(logits, answers, wrong).tolist() == [5.0 - 1.5, 5.0 - 1.0]


# --- planted heads --------------------------------------------------------------------------------------------
V, P = 16, 24  # tokens, positions
TOK, POS, PREV = slice(0, V), slice(V, V + P), slice(V + P, 2 * V + P)  # residual subspaces
D, E, ALPHA = 2 * V + P, V + P, 30.0


def _planted_spec() -> ArchSpec:
    """Two layers of four heads on one-hot token and position embeddings, identity norms, no MLPs.

    a0.h0 attends to the previous token and writes that token into the PREV subspace; a0.h1 attends to the
    earlier copy of its own token; a0.h2 attends evenly and has an identity OV circuit on the token subspace;
    a1.h0 matches its token against PREV (written by a0.h0): with a0.h0 an induction pair. The rest are zero.
    """
    H = 4
    w = {n: torch.zeros(2, H, D, E) for n in ("Q", "K", "V")}
    w_o = torch.zeros(2, H, E, D)
    eye_v, eye_p = torch.eye(V), torch.eye(P)
    # a0.h0: query at position i matches key at i - 1; OV copies the key's token into PREV
    w["Q"][0, 0, POS, :P] = ALPHA * eye_p
    w["K"][0, 0, POS, :P] = torch.diag(torch.ones(P - 1), 1)  # key at j answers queries at j + 1
    w["V"][0, 0, TOK, :V] = eye_v
    w_o[0, 0, :V, PREV] = eye_v
    # a0.h1: same token, but not itself
    w["Q"][0, 1, TOK, :V] = ALPHA * eye_v
    w["K"][0, 1, TOK, :V] = eye_v
    w["Q"][0, 1, POS, V : V + P] = ALPHA * eye_p
    w["K"][0, 1, POS, V : V + P] = -eye_p
    # a0.h2: uniform attention, identity OV on the token subspace
    w["V"][0, 2, TOK, :V] = eye_v
    w_o[0, 2, :V, TOK] = eye_v
    # a1.h0: query token against the key's PREV (the token before the key)
    w["Q"][1, 0, TOK, :V] = ALPHA * eye_v
    w["K"][1, 0, PREV, :V] = eye_v

    def zero_mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    layers = tuple(
        LayerSpec(AttentionWeights(*(w[n][i] for n in "QKV"), w_o[i]), nn.Identity(), nn.Identity(), zero_mlp, 1.0)
        for i in range(2)
    )

    def embed(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, D)
        out[..., TOK] = torch.nn.functional.one_hot(ids, V).float()
        out[..., POS] = torch.nn.functional.one_hot(position_ids, P).float()
        return out

    def unembed(x: torch.Tensor) -> torch.Tensor:
        return x[..., TOK]

    return ArchSpec(
        n_layers=2,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=layers,
        embed=embed,
        final_norm=nn.Identity(),
        unembed=unembed,
        vocab_size=V,
        n_outputs=V,
        max_positions=P,
    )


@pytest.fixture(scope="module")
def planted():
    pm = PatchableModel(_planted_spec())
    return pm, head_roles(pm, n_seqs=6, length=10, bos=0, sample=V)


@pytest.mark.parametrize(
    ("column", "head"),
    [("previous_token", "a0.h0"), ("duplicate_token", "a0.h1"), ("induction", "a1.h0"), ("copying", "a0.h2")],
)
def test_planted_head_scores_highest(planted, column, head):
    _, roles = planted
    (best, score), (_, second) = roles.top(column, 2)
    assert best == head, roles.top(column, 4)
    assert score > 0.9 and second < 0.5 * score


def test_role_table(planted):
    pm, roles = planted
    rows = roles.rows()
    assert len(rows) == pm.graph.n_layers * pm.graph.n_heads
    assert rows[5]["head"] == "a1.h1" and rows[5]["layer"] == 1 and rows[5]["index"] == 1
    assert set(rows[0]) == {"head", "layer", "index", *COLUMNS}
    assert all(math.isnan(r["direct_effect"]) for r in rows)  # no task given
    d = roles.to_dict()
    assert d["columns"] == dict(COLUMNS) and d["rows"][0]["direct_effect"] is None


def test_direct_effect_column_with_a_task(planted):
    pm, _ = planted
    # prompt "3 5 3": a0.h2 (uniform attention, identity OV) writes the tokens it sees; the answer is 3, wrong 5
    ids = torch.tensor([[3, 5, 3]])
    task = Task("t", ids, ids, torch.ones_like(ids), torch.tensor([2]), torch.tensor([[3]]), torch.tensor([[5]]))
    roles = head_roles(pm, task, n_seqs=2, length=5, bos=0, sample=V)
    de = roles.scores["direct_effect"]
    assert de[0, 2] == pytest.approx(2 / 3 - 1 / 3)  # a0.h2: mean of the one-hots of 3, 5, 3
    assert de[0, 0] == 0 and de[1, 0] == 0  # their outputs live outside the token subspace


def test_repeated_tokens_are_distinct_halves():
    ids = repeated_tokens(50, n_seqs=3, length=7, bos=0, seed=1)
    assert ids.shape == (3, 15) and bool((ids[:, 0] == 0).all())
    assert bool((ids[:, 1:8] == ids[:, 8:]).all())
    assert all(len(set(row[1:8].tolist())) == 7 and 0 not in row[1:].tolist() for row in ids)


def test_copying_scores_random_model_is_low():
    pm = PatchableModel(tiny_llama())
    s = copying_scores(pm, sample=VOCAB)
    assert s.shape == (3, 4) and float(s.max()) < 0.6
