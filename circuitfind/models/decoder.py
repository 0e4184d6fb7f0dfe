"""Pieces shared by the adapters of decoder-only families laid out like Llama (``model.model.layers[i]``).

Every function here reads HF module attributes; none knows a family by name. The family modules combine them
and declare which config flags they handle.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
from torch import Tensor, nn

from circuitfind.errors import UnsupportedModelError, check_int
from circuitfind.models.spec import ArchSpec, AttentionWeights, HFModule, LayerSpec, ProjectionNorm, RMSScale

__all__ = [
    "Windows",
    "attention_weights",
    "check_unset",
    "decoder_spec",
    "dims",
    "flat",
    "fused_attention_weights",
    "per_head",
    "projection_norms",
    "rms_scale",
    "rotary_of",
    "windows",
]


def dims(cfg: HFModule) -> tuple[int, int, int, int]:
    """``(H, KV, D, E)``: query heads, key/value heads, model width, head width."""
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    D = cfg.hidden_size
    E = getattr(cfg, "head_dim", None) or D // H
    if H % KV:
        raise UnsupportedModelError(f"{H} query heads cannot share {KV} key/value heads evenly")
    return H, KV, D, E


def per_head(linear: nn.Linear, n_heads: int, d_head: int, repeat: int) -> tuple[Tensor, Tensor | None]:
    """``nn.Linear`` (out = H_kv*E, in = D) -> ``(H, D, E)`` weights and ``(H, E)`` bias, repeated for GQA."""
    return _heads(linear.weight, linear.bias, n_heads, d_head, repeat)


def _heads(w: Tensor, b: Tensor | None, n_heads: int, d_head: int, repeat: int) -> tuple[Tensor, Tensor | None]:
    w = w.reshape(n_heads, d_head, -1).transpose(1, 2)  # (H_kv, D, E)
    b = None if b is None else b.reshape(n_heads, d_head)
    if repeat > 1:
        w = w.repeat_interleave(repeat, dim=0)
        b = None if b is None else b.repeat_interleave(repeat, dim=0)
    return w, b


def attention_weights(sa: HFModule, cfg: HFModule) -> AttentionWeights:
    """Per-head weights of an attention module with ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``.

    GQA follows the MIB convention: query head ``h`` reads key/value head ``h // (H / KV)`` (HF's ``repeat_kv``).
    """
    H, KV, D, E = dims(cfg)
    w_q, b_q = per_head(sa.q_proj, H, E, 1)
    w_k, b_k = per_head(sa.k_proj, KV, E, H // KV)
    w_v, b_v = per_head(sa.v_proj, KV, E, H // KV)
    w_o = sa.o_proj.weight.T.reshape(H, E, D)  # o_proj: (D, H*E)
    return AttentionWeights(w_q, w_k, w_v, w_o, b_q, b_k, b_v, sa.o_proj.bias)


def fused_attention_weights(qkv: nn.Linear, o_proj: nn.Linear, cfg: HFModule) -> AttentionWeights:
    """Per-head weights from one fused projection whose rows are ``[q (H*E) | k (KV*E) | v (KV*E)]`` (Phi-3)."""
    H, KV, D, E = dims(cfg)
    sizes = (H * E, KV * E, KV * E)
    ws = qkv.weight.split(sizes, dim=0)
    bs = (None,) * 3 if qkv.bias is None else qkv.bias.split(sizes)
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = (
        _heads(w, b, n, E, H // n) for w, b, n in zip(ws, bs, (H, KV, KV), strict=True)
    )
    w_o = o_proj.weight.T.reshape(H, E, D)
    return AttentionWeights(w_q, w_k, w_v, w_o, b_q, b_k, b_v, o_proj.bias)


class Windows(enum.Enum):
    """Where a family applies ``config.sliding_window``."""

    NONE = "none"
    """Never (the family has no sliding-window attention)."""
    EVERY_LAYER = "every_layer"
    """Every layer, when the window is set (Mistral, Mixtral, Phi-3: their models ignore ``layer_types``)."""
    LAYER_TYPES = "layer_types"
    """The layers ``config.layer_types`` marks ``"sliding_attention"`` (Qwen2/3, Gemma-2/3)."""


def windows(cfg: HFModule, n_layers: int, policy: Windows) -> list[int | None]:
    """Per layer: the sliding window HF's attention applies there, or None for full causal attention."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["sliding_attention"] * n_layers
    if window == 0 and policy is Windows.LAYER_TYPES and "sliding_attention" not in types[:n_layers]:
        window = None  # Qwen2-MoE writes 0 for "no window"
    if policy is Windows.NONE or window is None:
        return [None] * n_layers
    window = check_int(window, "config.sliding_window", fix="None or 0 means no window", error=UnsupportedModelError)
    if policy is Windows.EVERY_LAYER:
        return [window] * n_layers
    out = []
    for i, kind in enumerate(types[:n_layers]):
        if kind not in ("full_attention", "sliding_attention"):
            raise UnsupportedModelError(
                f"layer {i} of this {cfg.model_type} model uses attention type {kind!r}; circuitfind handles only "
                "'full_attention' and 'sliding_attention'. Set config.layer_types to those, or add the pattern to "
                "its adapter under circuitfind/models/."
            )
        out.append(window if kind == "sliding_attention" else None)
    return out


def rotary_of(rotary_emb: nn.Module, *args) -> Callable[[Tensor, torch.dtype], tuple[Tensor, Tensor]]:
    """The model's own rotary module as ``(position_ids, dtype) -> (cos, sin)`` (extra ``args`` passed on)."""

    def rotary(position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        probe = torch.empty(0, dtype=dtype, device=position_ids.device)
        return rotary_emb(probe, position_ids, *args)

    return rotary


def projection_norms(sa: HFModule, cfg: HFModule) -> tuple[ProjectionNorm, ProjectionNorm]:
    """``sa.q_norm`` and ``sa.k_norm`` as RMSNorms over the whole q and k projections (OLMo-2, OLMoE)."""
    H, KV, _, E = dims(cfg)
    out = []
    for proj, norm, n in ((sa.q_proj, sa.q_norm, H), (sa.k_proj, sa.k_norm, KV)):
        if norm.weight.shape != (n * E,):
            raise UnsupportedModelError(
                f"expected a q/k norm over the whole projection ({n * E} values); found weight "
                f"{tuple(norm.weight.shape)} in {type(norm).__name__}"
            )
        w, b = per_head(proj, n, E, 1)
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        out.append(ProjectionNorm(norm.weight.detach(), eps, w.detach(), None if b is None else b.detach(), H // n))
    return out[0], out[1]


def rms_scale(norm: HFModule, offset: float = 0.0) -> RMSScale:
    """The :class:`RMSScale` of an HF RMSNorm module (epsilon under either of its usual names)."""
    eps = getattr(norm, "variance_epsilon", None)
    eps = getattr(norm, "eps", None) if eps is None else eps
    if eps is None or not isinstance(getattr(norm, "weight", None), Tensor):
        raise UnsupportedModelError(f"{type(norm).__name__} is not an RMSNorm with a weight and an epsilon")
    return RMSScale(norm.weight.detach(), float(eps), offset)


def flat(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module`` (which wants ``(batch, seq, D)``) as a map of ``(..., D) -> (..., D)``, one token per row.

    Mixture-of-experts blocks route each token on its own, so flattening the leading axes changes nothing.
    """

    def apply(x: Tensor) -> Tensor:
        out = module(x.reshape(1, -1, x.shape[-1]).contiguous())
        out = out[0] if isinstance(out, tuple) else out  # some versions also return router logits: dropped
        return out.reshape(x.shape)

    return apply


def check_unset(cfg: HFModule, **expected: tuple) -> None:
    """Refuse a config whose flags (that change the numbers and that the adapter does not handle) are set.

    ``expected``: per config attribute, the values the adapter handles (an absent attribute is fine).
    """
    for name, ok in expected.items():
        value = getattr(cfg, name, ok[0])
        if value not in ok:
            raise UnsupportedModelError(
                f"{cfg.model_type} with config.{name}={value!r} is not supported (circuitfind handles only "
                f"{' or '.join(map(repr, ok))}): the patched forward would differ from the model's. Set it to "
                f"{ok[0]!r}, or extend the adapter under circuitfind/models/."
            )


def decoder_spec(model: HFModule, layers: list[LayerSpec], family: str) -> ArchSpec:
    """The :class:`ArchSpec` of a Llama-laid-out model (``model.model.embed_tokens / norm / rotary_emb``,
    ``model.lm_head``) from its per-layer specs.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
        ...                                  intermediate_size=16, vocab_size=32))
        >>> decoder_spec(m, [], "llama").d_head
        4
    """
    cfg, body = model.config, model.model
    H, _, D, E = dims(cfg)

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        return body.embed_tokens(ids)

    return ArchSpec(
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=body.norm,
        unembed=model.lm_head,
        rotary=rotary_of(body.rotary_emb),
        family=family,
        vocab_size=body.embed_tokens.num_embeddings,
        n_outputs=model.lm_head.out_features,
    )
