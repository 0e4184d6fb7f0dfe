"""OLMo-2: post-norm blocks and q/k norms over the whole projection.

What changes the numbers, and where it is handled:
- no norm on a block's input: the residual stream enters attention and MLP as it is (identity input norms);
- ``post_attention_layernorm`` normalises the *sum* of the heads before the residual add: it becomes the layer's
  ``attn_out_scale`` (each head's output times the scale computed from that sum), so heads still sum to HF's;
- ``post_feedforward_layernorm`` is part of the MLP node (it acts on the MLP's output alone);
- ``q_norm`` / ``k_norm`` are RMSNorms over all heads' projections at once (:class:`ProjectionNorm`): head h's
  query is computed from its own receiver's input only.
"""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor, nn

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.decoder import attention_weights, decoder_spec, dims, projection_norms, rms_scale
from circuitfind.models.spec import ArchSpec, Fn, HFModule, LayerSpec, Reference

__all__ = ["MODEL_TYPES", "REFERENCES", "build_spec"]

MODEL_TYPES = ("olmo2",)
REFERENCES = MappingProxyType({"olmo2": Reference("allenai/OLMo-2-0425-1B", 16, 16)})


def _post_normed(mlp: HFModule, post: HFModule) -> Fn:
    def apply(x: Tensor) -> Tensor:
        return post(mlp(x))

    return apply


def build_spec(model: HFModule) -> ArchSpec:
    """Per-head views of an ``Olmo2ForCausalLM``."""
    cfg = model.config
    body = model.model
    H, _, D, E = dims(cfg)
    layers = []
    for block in body.layers:
        sa = block.self_attn
        attn = attention_weights(sa, cfg)
        if attn.b_O is not None:
            raise UnsupportedModelError(
                "OLMo-2 with attention_bias=True puts the o_proj bias inside the post-attention norm, which "
                "circuitfind does not split across heads; use a model with attention_bias=False"
            )
        q_norm, k_norm = projection_norms(sa, cfg)
        layers.append(
            LayerSpec(
                attn,
                nn.Identity(),
                nn.Identity(),
                _post_normed(block.mlp, block.post_feedforward_layernorm),
                E**-0.5,
                q_norm=q_norm,
                k_norm=k_norm,
                attn_out_scale=rms_scale(block.post_attention_layernorm),
            )
        )

    return decoder_spec(model, layers, "olmo2")
