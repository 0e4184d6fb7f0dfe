"""Phi-3: fused q/k/v and gate/up projections, partial rotary, sliding window on every layer.

The fused ``qkv_proj`` rows are ``[q (H*E) | k (KV*E) | v (KV*E)]``; they are split into per-head views. The fused
``gate_up_proj`` lives inside the MLP module, which is the MLP node as it is. ``partial_rotary_factor`` (if the
config has one) is HF's rotary module's business: its cos/sin cover the first dims only, which the patched
forward rotates (the rest passes through), as HF does. ``config.sliding_window`` applies to every layer.
"""

from __future__ import annotations

from types import MappingProxyType

from circuitfind.models.decoder import Windows, decoder_spec, dims, fused_attention_weights, windows
from circuitfind.models.spec import ArchSpec, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("phi3",)
REFERENCES = MappingProxyType({"phi3": Reference("microsoft/Phi-3-mini-4k-instruct", 32, 32)})


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``Phi3ForCausalLM``."""
    cfg = model.config
    body = model.model
    H, _, D, E = dims(cfg)
    layers = []
    for block, window in zip(body.layers, windows(cfg, len(body.layers), Windows.EVERY_LAYER), strict=True):
        sa = block.self_attn
        attn = fused_attention_weights(sa.qkv_proj, sa.o_proj, cfg)
        norms = (block.input_layernorm, block.post_attention_layernorm)
        layers.append(LayerSpec(attn, *norms, block.mlp, E**-0.5, window))

    return decoder_spec(model, layers, "phi3")
