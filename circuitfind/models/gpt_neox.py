"""GPT-NeoX / Pythia: parallel attention and MLP (``use_parallel_residual``), partial rotary, LayerNorm.

The fused ``query_key_value`` projection is laid out per head as ``[q | k | v]`` blocks of ``E`` rows each.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from circuitfind.models.spec import ArchSpec, AttentionWeights, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("gpt_neox",)
REFERENCES = MappingProxyType({"gpt_neox": Reference("EleutherAI/pythia-160m", 12, 12, parallel=True)})


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``GPTNeoXForCausalLM``'s weights."""
    cfg = model.config
    body = model.gpt_neox
    H, D = cfg.num_attention_heads, cfg.hidden_size
    E = D // H
    layers = []
    for block in body.layers:
        att = block.attention
        w = att.query_key_value.weight.reshape(H, 3, E, D)  # (3D, D) rows: head-major, then q/k/v
        b = att.query_key_value.bias.reshape(H, 3, E) if att.query_key_value.bias is not None else None
        w_q, w_k, w_v = (w[:, j].transpose(1, 2) for j in range(3))  # (H, D, E)
        b_q, b_k, b_v = (None, None, None) if b is None else (b[:, j] for j in range(3))
        w_o = att.dense.weight.T.reshape(H, E, D)
        attn = AttentionWeights(w_q, w_k, w_v, w_o, b_q, b_k, b_v, att.dense.bias)
        layers.append(LayerSpec(attn, block.input_layernorm, block.post_attention_layernorm, block.mlp, E**-0.5))

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.embed_in(ids)

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
        final_norm=body.final_layer_norm,
        unembed=model.get_output_embeddings(),
        rotary=rotary,
        parallel=bool(cfg.use_parallel_residual),
        family="gpt_neox",
        vocab_size=body.embed_in.num_embeddings,
        n_outputs=model.get_output_embeddings().out_features,
    )
