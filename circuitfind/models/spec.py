"""The architecture-neutral view of a transformer that the patched forward runs on.

An adapter (one small module per family in this package) turns a model into an :class:`ArchSpec`: per-head
attention weights as tensors, plus the model's own norm, MLP, embedding and unembedding modules as callables.
The core never names an architecture; it only sees this spec. Weight tensors are views of the model's own
parameters where the layout allows, so building a spec copies little and changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from einops import einsum, rearrange
from torch import Tensor

__all__ = [
    "ArchSpec",
    "Reference",
    "AttentionWeights",
    "HFModule",
    "HeadNorm",
    "LayerSpec",
    "ProjectionNorm",
    "RMSScale",
    "RotaryStyle",
    "rotate_every_two",
    "rotate_half",
]

Fn = Callable[[Tensor], Tensor]
HFModule: TypeAlias = Any
"""A Hugging Face model, submodule or config, read by attribute name (``model.model.layers[i].self_attn``).

Which attributes exist depends on the family and the transformers version (``nn.Module.__getattr__`` is typed
``Tensor | Module``), so the adapters' attribute walks are not type-checked; each adapter's tests check it against
the model's own forward."""
RotaryFn = Callable[[Tensor, torch.dtype], tuple[Tensor, Tensor]]


class RotaryStyle(enum.Enum):
    """How rotary embeddings pair the dimensions of q and k."""

    HALF = "half"
    """Dimension ``i`` with ``i + rotary_dim / 2`` (``rotate_half``: Llama, GPT-NeoX, Gemma, Phi-3...)."""
    INTERLEAVED = "interleaved"
    """Dimension ``2i`` with ``2i + 1`` (``rotate_every_two``: GPT-J); cos/sin come repeated per pair."""


@dataclass(frozen=True)
class Reference:
    """A named public model of a family, for the table of support (sizes from its published config).

    Attributes:
        name: the Hugging Face id.
        n_layers, n_heads: its blocks and query heads (all the graph's size depends on, with ``parallel``).
        parallel: attention and MLP read the same residual (no head -> MLP edge within a layer).
    """

    name: str
    n_layers: int
    n_heads: int
    parallel: bool = False


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
class HeadNorm:
    """A q or k norm applied to each head's projection on its own (Qwen3, Gemma-3): ``norm`` acts on ``(..., E)``."""

    norm: Fn

    def __call__(self, raw: Tensor, x: Tensor, heads: Tensor | None) -> Tensor:
        return self.norm(raw)


@dataclass(frozen=True)
class ProjectionNorm:
    """An RMSNorm over a whole q or k projection, all heads together (OLMo-2, OLMoE).

    It couples the heads: head ``h``'s query depends on the projections of every head. With per-receiver inputs
    (the patched forward), head ``h``'s query is computed from its own receiver's input alone: the whole
    projection of that input is normed and head ``h``'s slice kept, so all edges kept equals the model.

    Attributes:
        weight: ``(G * E,)`` the norm's weight over the un-repeated projection (``G`` = key/value heads for k).
        eps: the norm's epsilon.
        W: ``(G, D, E)`` the un-repeated projection weights; ``b``: ``(G, E)`` or None.
        group: query heads per projection head (``H / G``; 1 for q).
    """

    weight: Tensor
    eps: float
    W: Tensor
    b: Tensor | None = None
    group: int = 1

    def __call__(self, raw: Tensor, x: Tensor, heads: Tensor | None) -> Tensor:
        """``raw (K, B, h, T, E)``: the heads' own projections of ``x (K, h|1, B, T, D)`` (normed inputs)."""
        f = torch.promote_types(raw.dtype, torch.float32)  # HF computes these norms in float32 at least
        full = einsum(x.to(f), self.W.to(f), "k r b t d, g d e -> k r b t g e")
        if self.b is not None:
            full = full + self.b.to(f)
        var = rearrange(full.pow(2).mean(dim=(-2, -1)), "k r b t -> k b r t")[..., None]  # (K, B, h|1, T, 1)
        G, E = self.W.shape[0], self.W.shape[2]
        w = self.weight.reshape(G, E).repeat_interleave(self.group, dim=0)  # (H, E)
        w = w if heads is None else w[heads]
        normed = raw.to(f) * torch.rsqrt(var + self.eps)
        return (w.to(f)[:, None, :] * normed).to(raw.dtype)


@dataclass(frozen=True)
class RMSScale:
    """The per-position multiplier an RMSNorm applies: ``norm(s) == s * RMSScale(...)(s)``.

    Used for a norm on the attention output (Gemma-2/3 sandwich norms, OLMo-2 post-norms): that norm acts on the
    sum of the layer's heads, so each head's output is multiplied by the scale computed from that sum and the
    heads still sum to the block's output. ``offset`` is 1 for Gemma's ``(1 + weight)`` norms.
    """

    weight: Tensor
    eps: float
    offset: float = 0.0

    def __call__(self, s: Tensor) -> Tensor:
        f = torch.promote_types(s.dtype, torch.float32)  # HF computes RMSNorms in float32 at least
        r = torch.rsqrt(s.to(f).pow(2).mean(-1, keepdim=True) + self.eps)
        return (r * (self.offset + self.weight.to(f))).to(s.dtype)


@dataclass(frozen=True)
class LayerSpec:
    """One transformer block.

    ``attn_norm`` and ``mlp_norm`` act on the last axis of any shape (identity for models without norms);
    ``mlp`` maps ``(..., D) -> (..., D)`` on the *normed* input and includes its output bias.
    ``sliding_window``: with a window ``w``, query ``i`` sees key ``j`` only when ``i - j < w`` (HF's
    convention for Mistral and Qwen2); None: every earlier key (plain causal attention).

    Optional quirks (the defaults leave a plain pre-norm block):
        q_norm, k_norm: ``(raw (K, B, h, T, E), x (K, h|1, B, T, D), heads) -> (K, B, h, T, E)``: a norm on the
            projections before rotary (:class:`HeadNorm` or :class:`ProjectionNorm`).
        attn_softcap: attention logits become ``cap * tanh(logits / cap)`` before the mask (Gemma-2).
        attn_out_scale: ``(sum of the layer's head outputs (..., D)) -> multiplier (..., D)``: a norm on the
            attention output, applied to every head's output (:class:`RMSScale`); needs ``attn.b_O`` None.
        rotary: this layer's rotary tables when they differ from the model's (Gemma-3's local layers).
    """

    attn: AttentionWeights
    attn_norm: Fn
    mlp_norm: Fn
    mlp: Fn
    attn_scale: float
    sliding_window: int | None = None
    q_norm: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    k_norm: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    attn_softcap: float | None = None
    attn_out_scale: Fn | None = None
    rotary: RotaryFn | None = None


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
        rotary_style: how rotary pairs dimensions (:class:`RotaryStyle`).
        final_softcap: logits become ``cap * tanh(logits / cap)`` (Gemma-2).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    layers: tuple[LayerSpec, ...]
    embed: Callable[[Tensor, Tensor], Tensor]
    final_norm: Fn
    unembed: Fn
    rotary: RotaryFn | None = None
    parallel: bool = False
    causal: bool = True
    family: str = ""
    vocab_size: int | None = None
    n_outputs: int | None = None
    max_positions: int | None = None
    rotary_style: RotaryStyle = RotaryStyle.HALF
    final_softcap: float | None = None

    def logits(self, x: Tensor, vocab: Tensor | None = None) -> Tensor:
        """The unembedding of ``x (..., D)``: all columns ``(..., V)``, or only the token ids ``vocab`` ``(..., n)``.

        With a linear unembedding only the needed rows of its weight are multiplied (a metric that reads a few
        answer tokens then skips the full-vocabulary product); otherwise the full logits are sliced.
        """
        if vocab is None:
            out = self.unembed(x)
        elif isinstance(self.unembed, torch.nn.Linear):
            out = x @ self.unembed.weight[vocab].T
            out = out if self.unembed.bias is None else out + self.unembed.bias[vocab]
        else:
            out = self.unembed(x)[..., vocab]
        if self.final_softcap is not None:
            out = torch.tanh(out / self.final_softcap) * self.final_softcap
        return out

    def layer_rotary(self, layer: int) -> RotaryFn | None:
        """The rotary tables of block ``layer``: its own, else the model's (None: no rotary)."""
        own = self.layers[layer].rotary
        return own if own is not None else self.rotary


def rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the last axis, the rotary convention of Llama and GPT-NeoX."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: Tensor) -> Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)`` on the last axis, GPT-J's rotary convention."""
    pairs = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1)
    return pairs.flatten(-2)
