"""An independent, deliberately slow edge-masked forward written for clarity, used only by tests.

Every receiver's input is built by an explicit Python loop over its upstream senders:
    input_r = constant biases upstream of r + sum_s [ m[s,r] * live_s + (1 - m[s,r]) * ablated_s ]
Attention is written out with an explicit softmax per head; rotary (either pairing), soft-caps and the norm on
the attention output are written out too (the q/k norms are the spec's own callables, one head at a time).
It shares nothing with circuitfind.engine.patchable except the ArchSpec (the model's weights) and the Graph's naming.
"""

from __future__ import annotations

import math

import torch

from circuitfind.graph import Graph
from circuitfind.models.spec import ArchSpec, RotaryStyle, rotate_half


def reference_forward(spec: ArchSpec, graph: Graph, ids, ablated_outputs, mask, attention_mask=None):
    """Logits ``(B, T, V)``. ``ablated_outputs`` is ``(S, B', T', D)``; ``mask`` is ``(S, R)`` float."""
    B, T = ids.shape
    H, D = spec.n_heads, spec.d_model
    am = torch.ones(B, T, dtype=torch.long) if attention_mask is None else attention_mask
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    abl = ablated_outputs.expand(-1, B, T, -1)
    live: list[torch.Tensor] = [spec.embed(ids, pos)]  # live sender outputs, by sender index
    const = torch.zeros(D)

    def receiver_input(r: int, const_r: torch.Tensor) -> torch.Tensor:
        total = const_r.expand(B, T, D).clone()
        for s in range(graph.n_senders):
            if graph.edge_mask[s, r]:
                m = mask[s, r]
                total = total + m * live[s] + (1 - m) * abl[s]
        return total

    dtype = spec.layers[0].attn.W_Q.dtype
    interleaved = spec.rotary_style is RotaryStyle.INTERLEAVED

    def rope(x, layer):  # x (B, T, E)
        fn = spec.layer_rotary(layer)
        if fn is None:
            return x
        cos, sin = fn(pos, dtype)
        rd = cos.shape[-1]
        xr = x[..., :rd]
        if interleaved:  # pairs (2i, 2i+1): (a, b) -> (-b, a)
            turned = torch.stack([-xr[..., 1::2], xr[..., ::2]], dim=-1).reshape(xr.shape)
        else:
            turned = rotate_half(xr)
        return torch.cat([xr * cos + turned * sin, x[..., rd:]], dim=-1)

    def qk_norm(norm, y, x, h):  # y (B, T, E) the head's projection of its own input x (B, T, D)
        if norm is None:
            return y
        return norm(y[None, :, None], x[None, None], torch.tensor([h]))[0, :, 0]

    for layer in range(spec.n_layers):
        lay = spec.layers[layer]
        a = lay.attn
        head_outs = []
        for h in range(H):
            xs = {}
            for ch, w, b in (("q", a.W_Q, a.b_Q), ("k", a.W_K, a.b_K), ("v", a.W_V, a.b_V)):
                x = lay.attn_norm(receiver_input(graph.head_receiver(layer, h, ch), const))
                y = x @ w[h]
                y = y if b is None else y + b[h]
                xs[ch] = qk_norm({"q": lay.q_norm, "k": lay.k_norm}.get(ch), y, x, h)
            q, k, v = rope(xs["q"], layer), rope(xs["k"], layer), xs["v"]
            scores = q @ k.transpose(-1, -2) * lay.attn_scale  # (B, T, T)
            if lay.attn_softcap is not None:
                scores = lay.attn_softcap * torch.tanh(scores / lay.attn_softcap)
            allowed = am.bool()[:, None, :].expand(B, T, T)
            if spec.causal:
                allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
            if lay.sliding_window is not None:  # query i sees key j only when i - j < window
                i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
                allowed = allowed & (i - j < lay.sliding_window)
            scores = scores.masked_fill(~allowed, -1e30)
            p = torch.softmax(scores, dim=-1)
            head_outs.append(p @ v @ a.W_O[h])
        if lay.attn_out_scale is not None:  # a norm on the attention output: its scale from the sum of heads
            scale = lay.attn_out_scale(sum(head_outs))
            head_outs = [o * scale for o in head_outs]
        live.extend(head_outs)
        const_attn = const + (a.b_O if a.b_O is not None else 0)
        mlp_const = const if graph.parallel else const_attn
        x = lay.mlp_norm(receiver_input(graph.mlp_receiver(layer), mlp_const))
        live.append(lay.mlp(x))
        const = const_attn
    final = receiver_input(graph.logits_receiver, const)
    logits = spec.unembed(spec.final_norm(final))
    if spec.final_softcap is not None:
        logits = spec.final_softcap * torch.tanh(logits / spec.final_softcap)
    return logits


def assert_close(a, b, tol=1e-4):
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol}"
    assert not math.isnan(diff)
