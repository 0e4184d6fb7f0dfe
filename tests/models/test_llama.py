"""The Llama adapter (models/llama.py): every config flag that changes the numbers, checked through the adapter
(tests/models/flagged.py says how)."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from tests.models.flagged import assert_changes_logits, assert_exact, build, twin


def test_llama_head_dim_other_than_hidden_over_heads():
    model = build("llama", head_dim=16)  # hidden 32 / 4 heads would be 8
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 16  # HF really uses head_dim
    assert PatchableModel(model).spec.d_head == 16
    assert_exact(model)


@pytest.mark.parametrize("flag", ["attention_bias", "mlp_bias"])
def test_llama_biases(flag):
    model = build("llama", **{flag: True})  # randomize_biases makes them nonzero
    unbiased = twin(model, "llama", **{flag: True})
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    assert_changes_logits(model, unbiased)
    assert_exact(model)


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
ROPE = {
    "theta": {"rope_theta": 50.0},
    "linear": {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
    "llama3": {"rope_parameters": {**LLAMA3_ROPE, "original_max_position_embeddings": 4, "rope_theta": 10000.0}},
}


@pytest.mark.parametrize("rope", sorted(ROPE))
def test_llama_rotary_variants(rope):
    model = build("llama", **ROPE[rope])
    assert_changes_logits(model, twin(model, "llama"))
    assert_exact(model)


def test_activation_function_relu():
    model = build("llama", **{"hidden_act": "relu"})
    assert_changes_logits(model, twin(model, "llama"))
    assert_exact(model)
