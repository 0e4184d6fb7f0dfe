"""Llama family (Llama, Mistral, Qwen2, SmolLM2): RMSNorm, rotary, grouped-query attention, gated MLP.

GQA follows the MIB convention: every query head gets its own k and v receiver, as if the shared key/value
weights were copied per query head (query head h reads kv head ``h // (H / KV)``, as HF's ``repeat_kv``).

Sliding-window attention follows HF per family: Mistral applies ``config.sliding_window`` to every layer; Qwen2
only to the layers ``config.layer_types`` marks ``"sliding_attention"`` (derived by HF from
``use_sliding_window`` and ``max_window_layers``); Llama has none. Any other layer type is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec

__all__ = ["MODEL_TYPES", "build_spec"]

MODEL_TYPES = ("llama", "mistral", "qwen2")


def _per_head(linear: nn.Linear, n_heads: int, d_head: int, repeat: int) -> tuple[Tensor, Tensor | None]:
    """``nn.Linear`` (out = H_kv*E, in = D) -> ``(H, D, E)`` weights and ``(H, E)`` bias, repeated for GQA."""
    w = linear.weight.reshape(n_heads, d_head, -1).transpose(1, 2)  # (H_kv, D, E)
    b = None if linear.bias is None else linear.bias.reshape(n_heads, d_head)
    if repeat > 1:
        w = w.repeat_interleave(repeat, dim=0)
        b = None if b is None else b.repeat_interleave(repeat, dim=0)
    return w, b


def _windows(cfg, n_layers: int) -> list[int | None]:
    """Per layer: the sliding window HF's attention applies there, or None for full causal attention."""
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type == "llama" or window is None:
        return [None] * n_layers
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise UnsupportedModelError(f"config.sliding_window must be a positive integer or None; got {window!r}")
    if cfg.model_type == "mistral":  # MistralModel ignores layer_types: one window for every layer
        return [window] * n_layers
    types = getattr(cfg, "layer_types", None) or ["sliding_attention"] * n_layers
    windows = []
    for i, kind in enumerate(types[:n_layers]):
        if kind not in ("full_attention", "sliding_attention"):
            raise UnsupportedModelError(
                f"layer {i} of this {cfg.model_type} model uses attention type {kind!r}; circuitfind handles only "
                "'full_attention' and 'sliding_attention'. Set config.layer_types to those, or add the pattern to "
                "circuitfind/models/llama.py."
            )
        windows.append(window if kind == "sliding_attention" else None)
    return windows


def build_spec(model: nn.Module) -> ArchSpec:
    """Per-head views of a ``LlamaForCausalLM``-style model (``model.model.layers[i].self_attn.q_proj``...)."""
    cfg = model.config
    body = model.model
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    D = cfg.hidden_size
    E = getattr(cfg, "head_dim", None) or D // H
    layers = []
    windows = _windows(cfg, len(body.layers))
    for block, window in zip(body.layers, windows, strict=True):
        sa = block.self_attn
        w_q, b_q = _per_head(sa.q_proj, H, E, 1)
        w_k, b_k = _per_head(sa.k_proj, KV, E, H // KV)
        w_v, b_v = _per_head(sa.v_proj, KV, E, H // KV)
        w_o = sa.o_proj.weight.T.reshape(H, E, D)  # o_proj: (D, H*E)
        attn = AttentionWeights(w_q, w_k, w_v, w_o, b_q, b_k, b_v, sa.o_proj.bias)
        norms = (block.input_layernorm, block.post_attention_layernorm)
        layers.append(LayerSpec(attn, *norms, block.mlp, E**-0.5, sliding_window=window))

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.embed_tokens(ids)

    def rotary(position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        probe = torch.empty(0, dtype=dtype, device=position_ids.device)
        return body.rotary_emb(probe, position_ids)

    return ArchSpec(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=body.norm,
        unembed=model.lm_head,
        rotary=rotary,
        family="llama",
        vocab_size=body.embed_tokens.num_embeddings,
        n_outputs=model.lm_head.out_features,
    )
