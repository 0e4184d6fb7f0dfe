"""Every config flag that changes a model's numbers, checked through the adapter.

Each test first shows that the flag really changes the HF model's logits (same weights, flag flipped), so that
it cannot pass by accident, then that all edges kept reproduces the HF logits with the flag set (and no edge
kept the corrupted run).
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import UnsupportedModelError
from tests.models_tiny import VOCAB, randomize_biases

B, T = 3, 6
INIT = 0.3  # large enough weights that attention is far from uniform and every flag shows in the logits

GPT2 = dict(
    n_layer=3,
    n_head=4,
    n_embd=32,
    vocab_size=VOCAB,
    n_positions=16,
    bos_token_id=0,
    eos_token_id=0,
    initializer_range=INIT,
)
NEOX = dict(
    num_hidden_layers=3,
    num_attention_heads=4,
    hidden_size=32,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=16,
    rotary_pct=0.25,
    bos_token_id=0,
    eos_token_id=0,
    initializer_range=INIT,
)
LLAMA = dict(
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_size=32,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=16,
    initializer_range=INIT,
)
BUILD = {
    "gpt2": (GPT2Config, GPT2LMHeadModel, GPT2),
    "neox": (GPTNeoXConfig, GPTNeoXForCausalLM, NEOX),
    "llama": (LlamaConfig, LlamaForCausalLM, LLAMA),
}


def _build(family: str, seed: int = 0, **flags) -> torch.nn.Module:
    config_cls, model_cls, base = BUILD[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**base, **flags})).eval()
    randomize_biases(model)
    return model


def _twin(model: torch.nn.Module, family: str, **flags) -> torch.nn.Module:
    """The same weights under other flags."""
    other = _build(family, seed=1, **flags)
    other.load_state_dict(model.state_dict())
    return other


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _hf(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _assert_changes_logits(model: torch.nn.Module, other: torch.nn.Module) -> None:
    ids = _ids(0)
    gap = float((_hf(model, ids) - _hf(other, ids)).abs().max())
    assert gap > 1e-2, f"the flag changes the HF logits by only {gap:.1e}: the test would prove nothing"


def _assert_exact(model: torch.nn.Module) -> None:
    """All edges kept == the HF model on the clean prompts; none kept == the HF model on the corrupted ones."""
    pm = PatchableModel(model)
    clean, corrupt = _ids(0), _ids(1)
    abl = pm.ablation("resample", corrupt)
    with torch.no_grad():
        full = pm.forward(clean, abl, pm.graph.full_mask())
        empty = pm.forward(clean, abl, torch.zeros_like(pm.graph.full_mask()))
    torch.testing.assert_close(full, _hf(model, clean), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(empty, _hf(model, corrupt), atol=1e-4, rtol=1e-4)


# --- GPT-2 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,flipped",
    [
        ({"scale_attn_weights": False}, {"scale_attn_weights": True}),
        ({"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_by_inverse_layer_idx": False}),
        (
            {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True},
            {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": False},
        ),
    ],
    ids=["no-1/sqrt(d)", "1/layer", "1/layer-only"],
)
def test_gpt2_attention_scaling_flags(flags, flipped):
    model = _build("gpt2", **flags)
    _assert_changes_logits(model, _twin(model, "gpt2", **flipped))
    _assert_exact(model)


def test_gpt2_reorder_and_upcast_attn_changes_nothing_in_float32_and_is_refused():
    """It only reorders the scaling and upcasts to float32: no change to the numbers of a float32 model."""
    model = _build("gpt2", reorder_and_upcast_attn=True, attn_implementation="eager")
    plain = _twin(model, "gpt2", attn_implementation="eager")
    torch.testing.assert_close(_hf(model, _ids(0)), _hf(plain, _ids(0)), atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedModelError, match="reorder_and_upcast_attn"):
        PatchableModel(model)


def test_gpt2_biases():
    model = _build("gpt2")  # every bias random and nonzero
    unbiased = _twin(model, "gpt2")
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    _assert_changes_logits(model, unbiased)
    _assert_exact(model)


# --- GPT-NeoX -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pct,other", [(0.25, 1.0), (0.5, 0.25), (1.0, 0.25)])
def test_neox_rotary_fraction(pct, other):
    model = _build("neox", rotary_pct=pct)
    _assert_changes_logits(model, _twin(model, "neox", rotary_pct=other))
    _assert_exact(model)


@pytest.mark.parametrize("parallel", [True, False])
def test_neox_parallel_residual(parallel):
    model = _build("neox", use_parallel_residual=parallel)
    _assert_changes_logits(model, _twin(model, "neox", use_parallel_residual=not parallel))
    assert PatchableModel(model).graph.parallel == parallel
    _assert_exact(model)


def test_neox_biases():
    model = _build("neox")
    unbiased = _twin(model, "neox")
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    _assert_changes_logits(model, unbiased)
    _assert_exact(model)


def test_neox_without_attention_bias():
    model = _build("neox", attention_bias=False)
    assert model.gpt_neox.layers[0].attention.query_key_value.bias is None
    _assert_exact(model)


# --- Llama --------------------------------------------------------------------------------------------------
def test_llama_head_dim_other_than_hidden_over_heads():
    model = _build("llama", head_dim=16)  # hidden 32 / 4 heads would be 8
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 16  # HF really uses head_dim
    assert PatchableModel(model).spec.d_head == 16
    _assert_exact(model)


@pytest.mark.parametrize("flag", ["attention_bias", "mlp_bias"])
def test_llama_biases(flag):
    model = _build("llama", **{flag: True})  # randomize_biases makes them nonzero
    unbiased = _twin(model, "llama", **{flag: True})
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    _assert_changes_logits(model, unbiased)
    _assert_exact(model)


# --- flags the adapters pass through the model's own modules (rotary, activations) ---------------------------
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
ROPE = {
    "theta": {"rope_theta": 50.0},
    "linear": {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
    "llama3": {"rope_parameters": {**LLAMA3_ROPE, "original_max_position_embeddings": 4, "rope_theta": 10000.0}},
}


@pytest.mark.parametrize("rope", sorted(ROPE))
def test_llama_rotary_variants(rope):
    model = _build("llama", **ROPE[rope])
    _assert_changes_logits(model, _twin(model, "llama"))
    _assert_exact(model)


def test_neox_rotary_base():
    # a quarter of 8 dims rotated is one frequency, base**0 = 1 whatever the base: rotate all dims here
    model = _build("neox", rotary_pct=1.0, rotary_emb_base=50)
    _assert_changes_logits(model, _twin(model, "neox", rotary_pct=1.0))
    _assert_exact(model)


@pytest.mark.parametrize(
    "family,flag", [("gpt2", "activation_function"), ("neox", "hidden_act"), ("llama", "hidden_act")]
)
def test_activation_function(family, flag):
    model = _build(family, **{flag: "relu"})
    _assert_changes_logits(model, _twin(model, family))
    _assert_exact(model)
