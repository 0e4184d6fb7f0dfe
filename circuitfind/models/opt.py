"""OPT (pre-LN): learned positions with an offset of 2, biased q/k/v/out, ReLU MLP, optional project_in/out.

What changes the numbers, and where it is handled:
- positions: HF's own ``OPTLearnedPositionalEmbedding`` adds its offset of 2 to the position ids;
- ``word_embed_proj_dim != hidden_size`` (OPT-350m): ``project_in`` is part of the ``input`` sender and
  ``project_out`` follows the final norm (before the unembedding);
- post-LN blocks (``do_layer_norm_before=False``, OPT-350m) normalise the residual stream itself after each
  sublayer, so a sender's contribution to a later receiver is no longer additive: refused.
"""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor, nn

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.decoder import per_head
from circuitfind.models.norms import NormThenLinear
from circuitfind.models.spec import ArchSpec, AttentionWeights, Fn, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("opt",)
REFERENCES = MappingProxyType({"opt": Reference("facebook/opt-125m", 12, 12)})


def _mlp(block: HFModule) -> Fn:
    def apply(x: Tensor) -> Tensor:
        return block.fc2(block.activation_fn(block.fc1(x)))

    return apply


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of an ``OPTForCausalLM``."""
    cfg = model.config
    if not cfg.do_layer_norm_before:
        raise UnsupportedModelError(
            "OPT with do_layer_norm_before=False (post-LN, e.g. facebook/opt-350m) normalises the residual stream "
            "after every sublayer, so senders' contributions are not additive over the residual stream and edges "
            "cannot be patched exactly; use a pre-LN OPT (opt-125m, opt-1.3b and larger)"
        )
    body = model.model.decoder
    H, D = cfg.num_attention_heads, cfg.hidden_size
    E = D // H
    layers = []
    for block in body.layers:
        sa = block.self_attn
        (w_q, b_q), (w_k, b_k), (w_v, b_v) = (per_head(p, H, E, 1) for p in (sa.q_proj, sa.k_proj, sa.v_proj))
        attn = AttentionWeights(w_q, w_k, w_v, sa.out_proj.weight.T.reshape(H, E, D), b_q, b_k, b_v, sa.out_proj.bias)
        # HF scales q (bias included) by E**-0.5 before the dot product: the same scale on the scores
        layers.append(LayerSpec(attn, block.self_attn_layer_norm, block.final_layer_norm, _mlp(block), E**-0.5))

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        tokens = body.embed_tokens(ids)
        tokens = tokens if body.project_in is None else body.project_in(tokens)
        return tokens + body.embed_positions(None, 0, position_ids=position_ids)

    final = body.final_layer_norm if body.final_layer_norm is not None else nn.Identity()
    final = final if body.project_out is None else NormThenLinear(final, body.project_out)
    return ArchSpec(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=final,
        unembed=model.lm_head,
        family="opt",
        vocab_size=body.embed_tokens.num_embeddings,
        n_outputs=model.lm_head.out_features,
        max_positions=body.embed_positions.num_embeddings - body.embed_positions.offset,
    )
