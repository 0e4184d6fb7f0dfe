"""Tiny GPT-2, GPT-NeoX and Llama models with config flags set, and the two checks every flag test makes: the flag
really changes the HF model's logits (same weights, flag flipped), so that a test cannot pass by accident, and all
edges kept reproduces the HF logits with the flag set (and no edge kept the corrupted run)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from circuitfind.engine.patchable import PatchableModel
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


def build(family: str, seed: int = 0, **flags) -> torch.nn.Module:
    config_cls, model_cls, base = BUILD[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**base, **flags})).eval()
    randomize_biases(model)
    return model


def twin(model: torch.nn.Module, family: str, **flags) -> torch.nn.Module:
    """The same weights under other flags."""
    other = build(family, seed=1, **flags)
    other.load_state_dict(model.state_dict())
    return other


def ids_of(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def assert_changes_logits(model: torch.nn.Module, other: torch.nn.Module) -> None:
    ids = ids_of(0)
    gap = float((hf_logits(model, ids) - hf_logits(other, ids)).abs().max())
    assert gap > 1e-2, f"the flag changes the HF logits by only {gap:.1e}: the test would prove nothing"


def assert_exact(model: torch.nn.Module) -> None:
    """All edges kept == the HF model on the clean prompts; none kept == the HF model on the corrupted ones."""
    pm = PatchableModel(model)
    clean, corrupt = ids_of(0), ids_of(1)
    abl = pm.ablation("resample", corrupt)
    with torch.no_grad():
        full = pm.forward(clean, abl, pm.graph.full_mask())
        empty = pm.forward(clean, abl, torch.zeros_like(pm.graph.full_mask()))
    torch.testing.assert_close(full, hf_logits(model, clean), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(empty, hf_logits(model, corrupt), atol=1e-4, rtol=1e-4)
