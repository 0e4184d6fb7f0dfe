"""GPT-J: parallel attention and MLP reading one LayerNorm, interleaved partial rotary, biased unembedding.

What changes the numbers, and where it is handled:
- the block is ``x + attn(ln_1(x)) + mlp(ln_1(x))``: parallel graph, ``ln_1`` is both receivers' norm;
- rotary pairs dimensions ``(2i, 2i+1)`` (``rotate_every_two``) over the first ``rotary_dim`` dims of each head;
  cos/sin are HF's own sinusoid table, repeated per pair as HF does.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.decoder import per_head
from circuitfind.models.spec import ArchSpec, AttentionWeights, HFModule, LayerSpec, Reference, RotaryStyle

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("gptj",)
REFERENCES = MappingProxyType({"gptj": Reference("EleutherAI/gpt-j-6b", 28, 16, parallel=True)})


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of a ``GPTJForCausalLM``."""
    cfg = model.config
    body = model.transformer
    H, D = cfg.n_head, cfg.n_embd
    E = D // H
    if cfg.rotary_dim is None or cfg.rotary_dim > E or cfg.rotary_dim % 2:
        raise UnsupportedModelError(
            f"GPT-J with rotary_dim={cfg.rotary_dim!r}: circuitfind needs an even rotary_dim of at most the head "
            f"size {E} (HF builds a table of the model width when it is None, which only fits one head)"
        )
    layers = []
    for block in body.h:
        att = block.attn
        w_q, _ = per_head(att.q_proj, H, E, 1)
        w_k, _ = per_head(att.k_proj, H, E, 1)
        w_v, _ = per_head(att.v_proj, H, E, 1)
        attn = AttentionWeights(w_q, w_k, w_v, att.out_proj.weight.T.reshape(H, E, D), b_O=att.out_proj.bias)
        layers.append(LayerSpec(attn, block.ln_1, block.ln_1, block.mlp, E**-0.5))

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.wte(ids)

    def rotary(position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        probe = torch.empty(0, dtype=dtype, device=position_ids.device)
        sin, cos = body.rotary_emb(probe, position_ids)  # (B, T, rotary_dim / 2) each
        return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)

    return ArchSpec(
        n_layers=cfg.n_layer,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=body.ln_f,
        unembed=model.lm_head,
        rotary=rotary,
        parallel=True,
        family="gptj",
        vocab_size=body.wte.num_embeddings,
        n_outputs=model.lm_head.out_features,
        max_positions=body.rotary_emb.max_positions,
        rotary_style=RotaryStyle.INTERLEAVED,
    )
