"""Gemma, Gemma-2, Gemma-3 (text): scaled embeddings, (1 + weight) RMSNorm, GeGLU MLP, multi-query attention.

What changes the numbers, and where it is handled:
- the embedding is multiplied by ``sqrt(d_model)`` in the model's dtype: HF's own scaled-embedding module is the
  ``input`` sender, so the rounding is HF's;
- ``(1 + weight)`` RMSNorms: the model's own norm modules are the callables;
- Gemma-2/3 sandwich norms: ``post_attention_layernorm`` normalises the *sum* of the heads, so it becomes the
  layer's ``attn_out_scale`` (each head's output times the scale computed from the sum; the heads still sum to
  the block's output); ``pre_feedforward_layernorm`` is the MLP's input norm and ``post_feedforward_layernorm``
  part of the MLP node;
- attention-logit soft-capping (Gemma-2 only: HF's Gemma-3 ignores ``attn_logit_softcapping``), final-logit
  soft-capping, ``query_pre_attn_scalar`` (the attention scale);
- sliding-window layers from ``config.layer_types``; Gemma-3's per-head q/k norms and its per-layer-type rotary
  (a different base for local and global layers).
"""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.decoder import Windows, attention_weights, check_unset, dims, rms_scale, rotary_of, windows
from circuitfind.models.spec import ArchSpec, Fn, HeadNorm, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
REFERENCES = MappingProxyType(
    {
        "gemma": Reference("google/gemma-2b", 18, 8),
        "gemma2": Reference("google/gemma-2-2b", 26, 8),
        "gemma3_text": Reference("google/gemma-3-1b-pt", 26, 4),
    }
)


def _sandwich_mlp(mlp: HFModule, post: HFModule) -> Fn:
    def apply(x: Tensor) -> Tensor:
        return post(mlp(x))

    return apply


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``GemmaForCausalLM``, ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM`` (text-only)."""
    cfg = model.config
    check_unset(cfg, use_bidirectional_attention=(False, None))
    body = model.model
    if not hasattr(body.embed_tokens, "embed_scale"):
        raise UnsupportedModelError(
            f"expected Gemma's scaled embedding module (times sqrt(d_model)); found {type(body.embed_tokens).__name__}"
        )
    H, _, D, E = dims(cfg)
    first = cfg.model_type == "gemma"
    scale = E**-0.5 if first else cfg.query_pre_attn_scalar**-0.5
    # HF's Gemma-3 attention never passes config.attn_logit_softcapping on: only Gemma-2 caps attention logits
    softcap = getattr(cfg, "attn_logit_softcapping", None) if cfg.model_type == "gemma2" else None
    policy = Windows.NONE if first else Windows.LAYER_TYPES
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    # Gemma-3: one rotary per layer type (its module takes the type); the others: one for all layers
    per_type = hasattr(body.rotary_emb, "layer_types")
    rotaries = {t: rotary_of(body.rotary_emb, t) for t in set(types)} if per_type else {}
    layers = []
    for i, (block, window) in enumerate(zip(body.layers, windows(cfg, len(body.layers), policy), strict=True)):
        sa = block.self_attn
        attn = attention_weights(sa, cfg)
        q_norm = HeadNorm(sa.q_norm) if hasattr(sa, "q_norm") else None
        k_norm = HeadNorm(sa.k_norm) if hasattr(sa, "k_norm") else None
        if first:
            norms, mlp, out_scale = (block.input_layernorm, block.post_attention_layernorm), block.mlp, None
        else:
            if attn.b_O is not None:
                raise UnsupportedModelError("a Gemma-2/3 o_proj bias inside the post-attention norm is not supported")
            norms = (block.input_layernorm, block.pre_feedforward_layernorm)
            mlp = _sandwich_mlp(block.mlp, block.post_feedforward_layernorm)
            out_scale = rms_scale(block.post_attention_layernorm, offset=1.0)
        layers.append(
            LayerSpec(
                attn,
                *norms,
                mlp,
                scale,
                window,
                q_norm=q_norm,
                k_norm=k_norm,
                attn_softcap=softcap,
                attn_out_scale=out_scale,
                rotary=rotaries.get(types[i]),
            )
        )

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.embed_tokens(ids)  # HF's scaled embedding: times sqrt(d_model) in the weight's dtype

    return ArchSpec(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=body.norm,
        unembed=model.lm_head,
        rotary=None if per_type else rotary_of(body.rotary_emb),
        family="gemma",
        vocab_size=body.embed_tokens.num_embeddings,
        n_outputs=model.lm_head.out_features,
        final_softcap=getattr(cfg, "final_logit_softcapping", None),
    )
