"""The GPT-2 adapter (models/gpt2.py): every config flag that changes the numbers, checked through the adapter
(tests/models/flagged.py says how)."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import UnsupportedModelError
from tests.models.flagged import assert_changes_logits, assert_exact, build, hf_logits, ids_of, twin


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
    model = build("gpt2", **flags)
    assert_changes_logits(model, twin(model, "gpt2", **flipped))
    assert_exact(model)


def test_gpt2_reorder_and_upcast_attn_changes_nothing_in_float32_and_is_refused():
    """It only reorders the scaling and upcasts to float32: no change to the numbers of a float32 model."""
    model = build("gpt2", reorder_and_upcast_attn=True, attn_implementation="eager")
    plain = twin(model, "gpt2", attn_implementation="eager")
    torch.testing.assert_close(hf_logits(model, ids_of(0)), hf_logits(plain, ids_of(0)), atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedModelError, match="reorder_and_upcast_attn"):
        PatchableModel(model)


def test_gpt2_biases():
    model = build("gpt2")  # every bias random and nonzero
    unbiased = twin(model, "gpt2")
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    assert_changes_logits(model, unbiased)
    assert_exact(model)


def test_activation_function_relu():
    model = build("gpt2", **{"activation_function": "relu"})
    assert_changes_logits(model, twin(model, "gpt2"))
    assert_exact(model)
