"""The attention kernels, as plain functions of a layer's spec: q/k/v projections, rotary, the masked softmax,
per-head outputs and the additive attention mask.

Every forward that runs attention -- the edge-masked forward (:mod:`circuitfind.engine.forward`), the gradient
taps (:mod:`circuitfind.engine.gradients`), the gated forward of edge pruning, EAP-IG on activations, causal
scrubbing and the attention patterns of :mod:`circuitfind.analysis` -- calls these, so there is one definition of
what a head computes. Shapes: ``K`` stacked masks (or 1), ``B`` prompts, ``h`` heads, ``T`` positions, ``E`` head
dimension, ``D`` model dimension.

Example:
    >>> import torch
    >>> from circuitfind.engine.attention import attention_bias
    >>> bias = attention_bias(pm.spec, torch.tensor([[0, 1, 1]]), 1, dtype=torch.float32, device="cpu")
    >>> (bias[0, 0] == 0).int()  # causal, and the padded key 0 is never attended to
    tensor([[0, 0, 0],
            [0, 1, 0],
            [0, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor

from circuitfind.errors import ConfigError
from circuitfind.models.spec import ArchSpec, RotaryStyle, rotate_every_two, rotate_half

__all__ = [
    "attend",
    "attention_bias",
    "attention_biases",
    "attention_probs",
    "head_outputs",
    "project_qkv",
    "rotary_tables",
]

RotaryTables = dict[Any, tuple[Tensor, Tensor]]
"""``(cos, sin)`` per distinct rotary function of a model's layers (from :func:`rotary_tables`)."""


def project_qkv(
    lay: Any, x: Tensor, heads: Tensor | None = None, which: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``(K, B, h, T, E)`` before rotary, from normed inputs ``x (K, 3h|U|1, B, T, D)``.

    Includes the layer's q/k norms, if any: head ``h``'s query depends on its own receiver's input only.
    ``which (3h,)``: receiver ``j`` of the q, k, v receivers reads ``x[:, which[j]]`` (inputs shared by receivers
    that agree, see :func:`~circuitfind.engine.receivers.distinct_columns`); None: ``x`` has one column per
    receiver, or a single one that all share.
    """
    a = lay.attn
    pairs: tuple[tuple[Tensor, Tensor | None], ...] = ((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V))
    if heads is not None:
        pairs = tuple((w[heads], None if b is None else b[heads]) for w, b in pairs)
    H = pairs[0][0].shape[0]
    qkv = []
    for j, (w, b) in enumerate(pairs):
        norm = (lay.q_norm, lay.k_norm, None)[j]
        xj: Tensor | None
        if x.shape[1] == 1:  # every receiver of the layer sees the same input
            xj, t = x, einsum(x[:, 0], w, "k b t d, h d e -> k b h t e")
        elif which is None:
            xj = x[:, j * H : (j + 1) * H]  # (K, h, B, T, D)
            t = einsum(xj, w, "k h b t d, h d e -> k b h t e")
        else:
            t = _project_grouped(x, w, which[j * H : (j + 1) * H])
            xj = None if norm is None else x[:, which[j * H : (j + 1) * H]]
        t = t if b is None else t + b[:, None, :]
        qkv.append(t if norm is None else norm(t, xj, heads))
    return qkv[0], qkv[1], qkv[2]


def _project_grouped(x: Tensor, w: Tensor, which: Tensor) -> Tensor:
    """``(K, B, h, T, E)``: head ``i``'s projection ``x[:, which[i]] @ w[i]``, one product per distinct input.

    ``x (K, U, B, T, D)``, ``w (h, D, E)``, ``which (h,)``.
    """
    K, _, B, T, _ = x.shape
    out = x.new_empty((K, B, len(which), T, w.shape[-1]))
    for u in which.unique().tolist():
        hs = (which == u).nonzero().squeeze(1)
        out.index_copy_(2, hs, einsum(x[:, u], w[hs], "k b t d, h d e -> k b h t e"))
    return out


def rotary_tables(spec: ArchSpec, position_ids: Tensor, dtype: torch.dtype) -> RotaryTables:
    """``(cos, sin)`` for every distinct rotary of the model's layers, keyed by the rotary (for :func:`attend`)."""
    fns = {fn for i in range(spec.n_layers) if (fn := spec.layer_rotary(i)) is not None}
    return {fn: fn(position_ids, dtype) for fn in fns}


def attend(spec: ArchSpec, lay: Any, q: Tensor, k: Tensor, v: Tensor, rot: Any, attn_bias: Tensor) -> Tensor:
    """``z (K, B, h, T, E)`` from projections ``(K, B, h, T, E)``: rotary, then masked softmax attention.

    ``rot``: from :func:`rotary_tables` (or one ``(cos, sin)`` pair, or None for no rotary).
    """
    if lay.attn_softcap is not None:  # soft-capped logits (Gemma-2): written out, as SDPA has no cap
        return attention_probs(spec, lay, q, k, rot, attn_bias) @ v
    q, k = _rotated(spec, lay, q, k, rot)
    K, B, H, T, E = q.shape
    q, k, v = (t.reshape(K * B, H, T, E) for t in (q, k, v))
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=lay.attn_scale)
    return z.reshape(K, B, H, T, E)


def attention_probs(spec: ArchSpec, lay: Any, q: Tensor, k: Tensor, rot: Any, attn_bias: Tensor) -> Tensor:
    """The attention probabilities ``(K, B, h, T, T)`` (query, key) that :func:`attend` weighs ``v`` by.

    Args:
        spec: the model's spec (its rotary style and default rotary).
        lay: the layer's spec.
        q, k: ``(K, B, h, T, E)`` projections before rotary (from :func:`project_qkv`).
        rot: as for :func:`attend`.
        attn_bias: ``(K*B, 1, T, T)`` from :func:`attention_bias`.
    """
    q, k = _rotated(spec, lay, q, k, rot)
    K, B, H, T, _ = q.shape
    scores = einsum(q, k, "k b h i e, k b h j e -> k b h i j") * lay.attn_scale
    if lay.attn_softcap is not None:
        scores = torch.tanh(scores / lay.attn_softcap) * lay.attn_softcap
    scores = scores + attn_bias.reshape(K, B, 1, T, T)
    return torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)


def head_outputs(lay: Any, z: Tensor, heads: Tensor | None = None) -> Tensor:
    """``(K, h, B, T, D)``: each head's output ``z @ W_O``, times the layer's attention-output norm scale if any.

    A norm on the attention output acts on the sum of *all* the layer's heads, so ``heads`` must then be None.
    """
    w_o = lay.attn.W_O if heads is None else lay.attn.W_O[heads]
    out = einsum(z, w_o, "k b h t e, h e d -> k h b t d")
    if lay.attn_out_scale is None:
        return out
    if heads is not None:
        raise ConfigError("a norm on the attention output needs every head of the layer")
    return out * lay.attn_out_scale(out.sum(1)).unsqueeze(1)


def attention_bias(
    spec: ArchSpec,
    am: Tensor,
    K: int,
    window: int | None = None,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Tensor:
    """Additive ``(K*B, 1, T, T)`` mask: causal (if the model is), padding keys masked, and with a sliding
    ``window`` query ``i`` sees key ``j`` only when ``i - j < window`` (HF's convention)."""
    B, T = am.shape
    allowed = am.bool()[:, None, None, :].expand(B, 1, T, T)
    if spec.causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if window is not None:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).triu(-(window - 1))
    bias = torch.zeros(B, 1, T, T, dtype=dtype, device=device)
    bias = bias.masked_fill(~allowed, torch.finfo(dtype).min)
    return bias.repeat(K, 1, 1, 1)


def attention_biases(
    spec: ArchSpec, am: Tensor, K: int, layers: Any = None, *, dtype: torch.dtype, device: torch.device | str
) -> dict[int | None, Tensor]:
    """:func:`attention_bias` for every distinct sliding window of ``layers`` (default: all of ``spec``'s)."""
    windows = {lay.sliding_window for lay in (spec.layers if layers is None else layers)}
    return {w: attention_bias(spec, am, K, w, dtype=dtype, device=device) for w in windows}


def _rotated(spec: ArchSpec, lay: Any, q: Tensor, k: Tensor, rot: Any) -> tuple[Tensor, Tensor]:
    """``q``, ``k`` ``(K, B, h, T, E)`` with the layer's rotary applied (``rot`` as for :func:`attend`)."""
    if isinstance(rot, dict):
        rot = rot.get(lay.rotary if lay.rotary is not None else spec.rotary)
    if rot is None:
        return q, k
    cos, sin = (c[None, :, None] for c in rot)  # (1, B, 1, T, rot)
    # in the tables' dtype, then back (as HF does when a family's rotary tables stay float32 in bfloat16)
    return _rotate(spec, q, cos, sin).to(q.dtype), _rotate(spec, k, cos, sin).to(k.dtype)


def _rotate(spec: ArchSpec, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    turn = rotate_every_two if spec.rotary_style is RotaryStyle.INTERLEAVED else rotate_half
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + turn(x) * sin
    xr, xp = x[..., :rd], x[..., rd:]
    return torch.cat((xr * cos + turn(xr) * sin, xp), dim=-1)
