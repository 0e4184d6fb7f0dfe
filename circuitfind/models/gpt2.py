"""GPT-2: learned positions, LayerNorm, fused QKV in a Conv1D, GELU MLP, sequential blocks."""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.spec import ArchSpec, AttentionWeights, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("gpt2",)
REFERENCES = MappingProxyType({"gpt2": Reference("openai-community/gpt2", 12, 12)})


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``GPT2LMHeadModel``'s weights (Conv1D stores weights as ``(in, out)``)."""
    cfg = model.config
    if getattr(cfg, "reorder_and_upcast_attn", False):
        raise UnsupportedModelError("GPT-2 with reorder_and_upcast_attn=True is not supported; set it to False")
    body = model.transformer
    H, D = cfg.n_head, cfg.n_embd
    E = D // H
    layers = []
    for i, block in enumerate(body.h):
        w = block.attn.c_attn.weight  # (D, 3D): columns are [q | k | v], each head-major
        b = block.attn.c_attn.bias  # (3D,)
        w_q, w_k, w_v = (w[:, j * D : (j + 1) * D].reshape(D, H, E).permute(1, 0, 2) for j in range(3))
        b_q, b_k, b_v = (b[j * D : (j + 1) * D].reshape(H, E) for j in range(3))
        attn = AttentionWeights(
            W_Q=w_q,
            W_K=w_k,
            W_V=w_v,
            W_O=block.attn.c_proj.weight.reshape(H, E, D),  # (D, D) rows are head-major
            b_Q=b_q,
            b_K=b_k,
            b_V=b_v,
            b_O=block.attn.c_proj.bias,
        )
        scale = E**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= i + 1
        layers.append(LayerSpec(attn, block.ln_1, block.ln_2, block.mlp, scale))

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.wte(ids) + body.wpe(position_ids)

    return ArchSpec(
        n_layers=cfg.n_layer,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=body.ln_f,
        unembed=model.lm_head,
        family="gpt2",
        vocab_size=body.wte.num_embeddings,
        n_outputs=model.lm_head.out_features,
        max_positions=body.wpe.num_embeddings,
    )
