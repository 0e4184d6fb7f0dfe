"""Tiny random models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 61


def tiny_gpt2(
    seed: int = 0, n_layer: int = 3, n_head: int = 4, n_embd: int = 32, init: float = 0.02
) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=init,
    )
    return GPT2LMHeadModel(cfg).eval()


_LLAMA_SHAPE = dict(
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_size=32,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    tie_word_embeddings=False,
)
# the reference for sliding windows: HF's eager attention applies the window through its mask
_LLAMA_LIKE = dict(**_LLAMA_SHAPE, attn_implementation="eager")


def tiny_llama(seed: int = 0, init: float = 0.02) -> LlamaForCausalLM:
    """GQA: 4 query heads sharing 2 key/value heads; untied unembedding."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**_LLAMA_SHAPE, initializer_range=init)).eval()


def tiny_mistral(seed: int = 0, sliding_window: int | None = 4) -> MistralForCausalLM:
    """Sliding-window attention (every layer) with a window shorter than the test prompts."""
    torch.manual_seed(seed)
    return MistralForCausalLM(MistralConfig(sliding_window=sliding_window, **_LLAMA_LIKE)).eval()


def tiny_qwen2(seed: int = 0, sliding_window: int | None = 4, **overrides) -> Qwen2ForCausalLM:
    """Qwen2 with q/k/v biases; the window applies to layers >= max_window_layers (1 here): per-layer masks."""
    torch.manual_seed(seed)
    kw = dict(use_sliding_window=sliding_window is not None, sliding_window=sliding_window, max_window_layers=1)
    return Qwen2ForCausalLM(Qwen2Config(**{**_LLAMA_LIKE, **kw, **overrides})).eval()


def tiny_neox(seed: int = 0, parallel: bool = True, init: float = 0.02) -> GPTNeoXForCausalLM:
    """Parallel attention/MLP and partial rotary (a quarter of each head's dims)."""
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=parallel,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=init,
    )
    return GPTNeoXForCausalLM(cfg).eval()


def randomize_biases(model: torch.nn.Module, seed: int = 1) -> None:
    """Random init leaves biases at zero; make them nonzero so bias handling is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if "norm" in name and name.endswith("weight") or name.endswith(("ln_1.weight", "ln_2.weight")):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)


FAMILIES = {"gpt2": tiny_gpt2, "llama": tiny_llama, "neox": tiny_neox}


def in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64 throughout, for finite differences.

    ``.double()`` alone is not enough: HF's RMSNorm computes in float32 whatever the model's dtype, so a Llama
    loss would carry float32 rounding (about 1e-7) that finite differences divide by the step.
    """
    import types

    def rms_norm_64(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    model = model.double()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_norm_64, module)
    return model
