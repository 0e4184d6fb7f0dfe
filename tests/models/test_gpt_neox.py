"""The GPT-NeoX adapter (models/gpt_neox.py): every config flag that changes the numbers, checked through the
adapter (tests/models/flagged.py says how)."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from tests.models.flagged import assert_changes_logits, assert_exact, build, twin


@pytest.mark.parametrize("pct,other", [(0.25, 1.0), (0.5, 0.25), (1.0, 0.25)])
def test_neox_rotary_fraction(pct, other):
    model = build("neox", rotary_pct=pct)
    assert_changes_logits(model, twin(model, "neox", rotary_pct=other))
    assert_exact(model)


@pytest.mark.parametrize("parallel", [True, False])
def test_neox_parallel_residual(parallel):
    model = build("neox", use_parallel_residual=parallel)
    assert_changes_logits(model, twin(model, "neox", use_parallel_residual=not parallel))
    assert PatchableModel(model).graph.parallel == parallel
    assert_exact(model)


def test_neox_biases():
    model = build("neox")
    unbiased = twin(model, "neox")
    with torch.no_grad():
        for name, p in unbiased.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    assert_changes_logits(model, unbiased)
    assert_exact(model)


def test_neox_without_attention_bias():
    model = build("neox", attention_bias=False)
    assert model.gpt_neox.layers[0].attention.query_key_value.bias is None
    assert_exact(model)


def test_neox_rotary_base():
    # a quarter of 8 dims rotated is one frequency, base**0 = 1 whatever the base: rotate all dims here
    model = build("neox", rotary_pct=1.0, rotary_emb_base=50)
    assert_changes_logits(model, twin(model, "neox", rotary_pct=1.0))
    assert_exact(model)


def test_activation_function_relu():
    model = build("neox", **{"hidden_act": "relu"})
    assert_changes_logits(model, twin(model, "neox"))
    assert_exact(model)
