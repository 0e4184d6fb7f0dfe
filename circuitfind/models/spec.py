"""The architecture-neutral view of a transformer that the patched forward runs on.

An adapter (one small module per family in this package) turns a model into an :class:`ArchSpec`: per-head
attention weights as tensors, plus the model's own norm, MLP, embedding and unembedding modules as callables.
The core never names an architecture; it only sees this spec. Weight tensors are views of the model's own
parameters where the layout allows, so building a spec copies little and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ArchSpec", "AttentionWeights", "LayerSpec", "rotate_half"]

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AttentionWeights:
    """Per-head attention weights. GQA models repeat the shared k/v weights for every query head.

    Shapes: ``W_Q``, ``W_K``, ``W_V`` are ``(H, D, E)``; biases ``(H, E)`` or None; ``W_O`` is ``(H, E, D)``;
    ``b_O`` is ``(D,)`` or None and belongs to no head (it stays under every ablation).
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor | None = None
    b_K: Tensor | None = None
    b_V: Tensor | None = None
    b_O: Tensor | None = None


@dataclass(frozen=True)
class LayerSpec:
    """One transformer block.

    ``attn_norm`` and ``mlp_norm`` act on the last axis of any shape (identity for models without norms);
    ``mlp`` maps ``(..., D) -> (..., D)`` on the *normed* input and includes its output bias.
    ``sliding_window``: with a window ``w``, query ``i`` sees key ``j`` only when ``i - j < w`` (HF's
    convention for Mistral and Qwen2); None: every earlier key (plain causal attention).
    """

    attn: AttentionWeights
    attn_norm: Fn
    mlp_norm: Fn
    mlp: Fn
    attn_scale: float
    sliding_window: int | None = None


@dataclass(frozen=True)
class ArchSpec:
    """Everything the patched forward needs to know about a model.

    Attributes:
        embed: ``(ids (B, T), position_ids (B, T)) -> (B, T, D)``: the ``input`` sender's output.
        rotary: ``(position_ids (B, T), dtype) -> (cos, sin)`` each ``(B, T, rotary_dim)``, or None
            (learned positions). Rotary is applied to the first ``rotary_dim`` dims of q and k.
        final_norm: the norm before the unembedding (identity for models without norms).
        unembed: ``(..., D) -> (..., vocab)``.
        parallel: attention and MLP of a block read the same residual (GPT-NeoX, GPT-J).
        causal: causal attention (False only for compiled models such as tracr).
        vocab_size: token ids the embedding reads are ``0 .. vocab_size - 1`` (None: unknown, not checked).
        n_outputs: logit columns, i.e. the answer ids the model scores (None: ``vocab_size``).
        max_positions: the longest prompt learned position embeddings allow (None: no limit, e.g. rotary).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    layers: tuple[LayerSpec, ...]
    embed: Callable[[Tensor, Tensor], Tensor]
    final_norm: Fn
    unembed: Fn
    rotary: Callable[[Tensor, torch.dtype], tuple[Tensor, Tensor]] | None = None
    parallel: bool = False
    causal: bool = True
    family: str = ""
    vocab_size: int | None = None
    n_outputs: int | None = None
    max_positions: int | None = None

    def logits(self, x: Tensor, vocab: Tensor | None = None) -> Tensor:
        """The unembedding of ``x (..., D)``: all columns ``(..., V)``, or only the token ids ``vocab`` ``(..., n)``.

        With a linear unembedding only the needed rows of its weight are multiplied (a metric that reads a few
        answer tokens then skips the full-vocabulary product); otherwise the full logits are sliced.
        """
        if vocab is None:
            return self.unembed(x)
        if isinstance(self.unembed, torch.nn.Linear):
            out = x @ self.unembed.weight[vocab].T
            return out if self.unembed.bias is None else out + self.unembed.bias[vocab]
        return self.unembed(x)[..., vocab]


def rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the last axis, the rotary convention of Llama and GPT-NeoX."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
