"""Llama family (Llama, Mistral, Qwen2/2.5, Qwen3, SmolLM2): RMSNorm, rotary, grouped-query attention, gated MLP.

GQA follows the MIB convention: every query head gets its own k and v receiver, as if the shared key/value
weights were copied per query head (query head h reads kv head ``h // (H / KV)``, as HF's ``repeat_kv``).
Qwen2 has q/k/v biases (any Linear bias is read, zero or not); Qwen3 norms each head's q and k (RMSNorm over
the head's dims, before rotary).

Sliding-window attention follows HF per family: Mistral applies ``config.sliding_window`` to every layer; Qwen2
and Qwen3 only to the layers ``config.layer_types`` marks ``"sliding_attention"`` (derived by HF from
``use_sliding_window`` and ``max_window_layers``); Llama has none. Any other layer type is refused.
"""

from __future__ import annotations

from types import MappingProxyType

from torch import nn

from circuitfind.models.decoder import Windows, attention_weights, decoder_spec, dims, windows
from circuitfind.models.spec import ArchSpec, HeadNorm, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REFERENCES = MappingProxyType(
    {
        "llama": Reference("meta-llama/Llama-3.1-8B", 32, 32),
        "mistral": Reference("mistralai/Mistral-7B-v0.1", 32, 32),
        "qwen2": Reference("Qwen/Qwen2.5-0.5B", 24, 14),
        "qwen3": Reference("Qwen/Qwen3-0.6B", 28, 16),
    }
)
_WINDOWS = {
    "llama": Windows.NONE,
    "mistral": Windows.EVERY_LAYER,
    "qwen2": Windows.LAYER_TYPES,
    "qwen3": Windows.LAYER_TYPES,
}


def _head_norm(norm: nn.Module | None) -> HeadNorm | None:
    return None if norm is None else HeadNorm(norm)


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``LlamaForCausalLM``-style model (``model.model.layers[i].self_attn.q_proj``...)."""
    cfg = model.config
    body = model.model
    H, _, D, E = dims(cfg)
    layers = []
    policy = _WINDOWS[cfg.model_type]
    for block, window in zip(body.layers, windows(cfg, len(body.layers), policy), strict=True):
        sa = block.self_attn
        q_norm, k_norm = (_head_norm(getattr(sa, name, None)) for name in ("q_norm", "k_norm"))  # Qwen3
        norms = (block.input_layernorm, block.post_attention_layernorm)
        attn = attention_weights(sa, cfg)
        layers.append(LayerSpec(attn, *norms, block.mlp, E**-0.5, window, q_norm=q_norm, k_norm=k_norm))

    return decoder_spec(model, layers, "llama")
