"""Tiny random models of the families added for issue 12, each with the quirks that change its numbers switched on.

Every factory takes ``seed`` and ``init`` (the weights' std) and returns an eval-mode model in float32 with 2 layers
and d_model 32. Caps and windows are small so that each quirk changes the logits of these tiny models (the tests
check that it does). Eager attention throughout: HF's own reference path for windows and soft-capping.
"""

from __future__ import annotations

import torch
import transformers as tf

from tests.models_tiny import VOCAB, randomize_biases

WINDOW = 4  # shorter than the long test prompts
COMMON = dict(
    num_hidden_layers=2,
    hidden_size=32,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    tie_word_embeddings=False,
    attn_implementation="eager",
    experts_implementation="eager",  # HF's reference loop over experts (grouped_mm has no float64 kernel)
)
MIXED = ["sliding_attention", "full_attention"]


def _build(cls, cfg_cls, seed: int, init: float, **kw):
    torch.manual_seed(seed)
    model = cls(cfg_cls(**{**COMMON, "initializer_range": init, **kw})).eval()
    randomize_biases(model, seed + 1)
    return model


def gemma(seed=0, init=0.1):
    """Gemma: multi-query attention (4 query heads, 1 key/value head), scaled embedding, (1 + w) norms."""
    kw = dict(num_attention_heads=4, num_key_value_heads=1, head_dim=8, intermediate_size=48)
    return _build(tf.GemmaForCausalLM, tf.GemmaConfig, seed, init, **kw)


def gemma2(seed=0, init=0.3, **overrides):
    """Gemma-2: GQA 4/2, sandwich norms, both soft-caps small enough to bite, sliding layer 0, global layer 1."""
    kw = dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        query_pre_attn_scalar=12,
        attn_logit_softcapping=0.5,
        final_logit_softcapping=3.0,
        sliding_window=WINDOW,
        layer_types=MIXED,
    )
    return _build(tf.Gemma2ForCausalLM, tf.Gemma2Config, seed, init, **{**kw, **overrides})


def gemma3(seed=0, init=0.3, **overrides):
    """Gemma-3 (text): MQA 2/1, per-head q/k norms, local/global rotary bases, sliding layer 0."""
    kw = dict(
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=48,
        query_pre_attn_scalar=10,
        attn_logit_softcapping=0.8,  # HF's Gemma-3 ignores it; so must the adapter
        final_logit_softcapping=3.0,
        sliding_window=WINDOW,
        layer_types=MIXED,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    return _build(tf.Gemma3ForCausalLM, tf.Gemma3TextConfig, seed, init, **{**kw, **overrides})


def qwen3(seed=0, init=0.2, **overrides):
    """Qwen3: 8 query heads on 2 key/value heads, per-head q/k norms, the window on layer 1 only."""
    kw = dict(
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=4,
        intermediate_size=48,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=1,
    )
    return _build(tf.Qwen3ForCausalLM, tf.Qwen3Config, seed, init, **{**kw, **overrides})


def qwen2_nobias(seed=0, init=0.2):
    """Qwen2 whose q/k/v biases are all zero (as some checkpoints ship them), no window."""
    model = _build(
        tf.Qwen2ForCausalLM, tf.Qwen2Config, seed, init, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48,
    )  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def olmo2(seed=0, init=0.2, **overrides):
    """OLMo-2: post-norms, q/k norms over the whole projections, GQA 4/2 (the k norm spans 2 heads)."""
    kw = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=48)
    return _build(tf.Olmo2ForCausalLM, tf.Olmo2Config, seed, init, **{**kw, **overrides})


def phi3(seed=0, init=0.2, **overrides):
    """Phi-3: fused qkv and gate/up, partial rotary (half of each head), sliding window on every layer."""
    kw = dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        sliding_window=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    return _build(tf.Phi3ForCausalLM, tf.Phi3Config, seed, init, **{**kw, **overrides})


def gptj(seed=0, init=0.2):
    """GPT-J: parallel block, interleaved rotary over 4 of each head's 8 dims, biased unembedding."""
    torch.manual_seed(seed)
    cfg = tf.GPTJConfig(
        n_layer=2, n_head=4, n_embd=32, rotary_dim=4, vocab_size=VOCAB, n_positions=64, initializer_range=init,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    model = tf.GPTJForCausalLM(cfg).eval()
    randomize_biases(model, seed + 1)
    return model


def opt(seed=0, init=0.2, project: bool = True, **overrides):
    """OPT pre-LN with 2 heads; ``project``: word embeddings of width 16, with project_in/project_out."""
    torch.manual_seed(seed)
    kw = dict(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, ffn_dim=48, vocab_size=VOCAB,
        max_position_embeddings=64, word_embed_proj_dim=16 if project else 32, init_std=init, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    model = tf.OPTForCausalLM(tf.OPTConfig(**{**kw, **overrides})).eval()
    randomize_biases(model, seed + 1)
    return model


def mixtral(seed=0, init=0.2):
    """Mixtral: 4 experts, top-2 routing, multi-query attention (4/1), sliding window on every layer."""
    kw = dict(
        num_attention_heads=4, num_key_value_heads=1, intermediate_size=24, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=WINDOW,
    )  # fmt: skip
    return _build(tf.MixtralForCausalLM, tf.MixtralConfig, seed, init, **kw)


def qwen2_moe(seed=0, init=0.2):
    """Qwen2-MoE: 4 routed experts (top-2) plus the gated shared expert, q/k/v biases, GQA 4/2."""
    kw = dict(
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=24, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    return _build(tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig, seed, init, **kw)


def qwen3_moe(seed=0, init=0.2):
    """Qwen3-MoE: 4 experts (top-2), per-head q/k norms, GQA 4/2."""
    kw = dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=24, moe_intermediate_size=16,
        num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    return _build(tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig, seed, init, **kw)


def olmoe(seed=0, init=0.2, **overrides):
    """OLMoE: 4 experts (top-2), q/k norms over the whole projections, GQA 4/2."""
    kw = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    return _build(tf.OlmoeForCausalLM, tf.OlmoeConfig, seed, init, **{**kw, **overrides})


NEW_FAMILIES = {
    "gemma": gemma,
    "gemma2": gemma2,
    "gemma3": gemma3,
    "qwen3": qwen3,
    "qwen2-nobias": qwen2_nobias,
    "olmo2": olmo2,
    "phi3": phi3,
    "gptj": gptj,
    "opt": opt,
    "opt-noproject": lambda seed=0, init=0.2: opt(seed, init, project=False),
    "mixtral": mixtral,
    "qwen2_moe": qwen2_moe,
    "qwen3_moe": qwen3_moe,
    "olmoe": olmoe,
}


def in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64 throughout, for finite differences: HF's RMSNorms (Gemma's ``(1 + weight)`` ones
    included) compute in float32 whatever the model's dtype, so they are replaced by float64 twins."""
    import types

    def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def gemma_norm(self, x: torch.Tensor) -> torch.Tensor:
        return rms(x, self.eps) * (1 + self.weight)

    def plain_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms(x, self.variance_epsilon)

    model = model.double()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(gemma_norm if name.startswith("Gemma") else plain_norm, module)
    return model
