"""Mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): the routed expert block is the MLP node.

Routing is part of the node: the block (router, experts, and Qwen2-MoE's gated shared expert) maps each token's
normed input to its output, so it is the MLP callable as it is, applied token by token (router logits dropped).
Attention is each family's: Llama-style for Mixtral, with q/k/v biases for Qwen2-MoE, per-head q/k norms for
Qwen3-MoE, norms over the whole q/k projections for OLMoE (whose ``clip_qkv`` is refused).
"""

from __future__ import annotations

from types import MappingProxyType

from circuitfind.models.decoder import (
    Windows,
    attention_weights,
    check_unset,
    decoder_spec,
    dims,
    flat,
    projection_norms,
    windows,
)
from circuitfind.models.spec import ArchSpec, HeadNorm, HFModule, LayerSpec, ProjectionNorm, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe")
REFERENCES = MappingProxyType(
    {
        "mixtral": Reference("mistralai/Mixtral-8x7B-v0.1", 32, 32),
        "olmoe": Reference("allenai/OLMoE-1B-7B-0924", 16, 16),
        "qwen2_moe": Reference("Qwen/Qwen1.5-MoE-A2.7B", 24, 16),
        "qwen3_moe": Reference("Qwen/Qwen3-30B-A3B", 48, 32),
    }
)
_WINDOWS = {
    "mixtral": Windows.EVERY_LAYER,
    "qwen3_moe": Windows.EVERY_LAYER,
    "qwen2_moe": Windows.LAYER_TYPES,
    "olmoe": Windows.NONE,
}


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``MixtralForCausalLM``, ``Qwen2MoeForCausalLM``, ``Qwen3MoeForCausalLM`` or
    ``OlmoeForCausalLM``."""
    cfg = model.config
    if cfg.model_type == "olmoe":
        check_unset(cfg, clip_qkv=(None,))
    body = model.model
    H, _, D, E = dims(cfg)
    layers = []
    policy = _WINDOWS[cfg.model_type]
    for block, window in zip(body.layers, windows(cfg, len(body.layers), policy), strict=True):
        sa = block.self_attn
        q_norm: HeadNorm | ProjectionNorm | None
        k_norm: HeadNorm | ProjectionNorm | None
        if cfg.model_type == "olmoe":
            q_norm, k_norm = projection_norms(sa, cfg)
        elif hasattr(sa, "q_norm"):
            q_norm, k_norm = HeadNorm(sa.q_norm), HeadNorm(sa.k_norm)
        else:
            q_norm = k_norm = None
        norms = (block.input_layernorm, block.post_attention_layernorm)
        attn = attention_weights(sa, cfg)
        layers.append(LayerSpec(attn, *norms, flat(block.mlp), E**-0.5, window, q_norm=q_norm, k_norm=k_norm))

    return decoder_spec(model, layers, "moe")
