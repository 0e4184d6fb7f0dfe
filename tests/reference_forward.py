"""An independent, deliberately slow edge-masked forward written for clarity, used only by tests.

Every receiver's input is built by an explicit Python loop over its upstream senders:
    input_r = constant biases upstream of r + sum_s [ m[s,r] * live_s + (1 - m[s,r]) * ablated_s ]
Attention is written out with an explicit softmax per head. It shares nothing with circuitfind.patching
except the ArchSpec (the model's weights) and the Graph's naming.
"""

from __future__ import annotations

import math

import torch

from circuitfind.graph import Graph
from circuitfind.models.spec import ArchSpec, rotate_half


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

    cos = sin = None
    if spec.rotary is not None:
        cos, sin = spec.rotary(pos, torch.float32)

    def rope(x):  # x (B, T, E)
        if cos is None:
            return x
        rd = cos.shape[-1]
        xr = x[..., :rd]
        return torch.cat([xr * cos + rotate_half(xr) * sin, x[..., rd:]], dim=-1)

    for layer in range(spec.n_layers):
        lay = spec.layers[layer]
        a = lay.attn
        head_outs = []
        for h in range(H):
            xs = {}
            for ch, w, b in (("q", a.W_Q, a.b_Q), ("k", a.W_K, a.b_K), ("v", a.W_V, a.b_V)):
                x = lay.attn_norm(receiver_input(graph.head_receiver(layer, h, ch), const))
                y = x @ w[h]
                xs[ch] = y if b is None else y + b[h]
            q, k, v = rope(xs["q"]), rope(xs["k"]), xs["v"]
            scores = q @ k.transpose(-1, -2) * lay.attn_scale  # (B, T, T)
            allowed = am.bool()[:, None, :].expand(B, T, T)
            if spec.causal:
                allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
            if lay.sliding_window is not None:  # query i sees key j only when i - j < window
                i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
                allowed = allowed & (i - j < lay.sliding_window)
            scores = scores.masked_fill(~allowed, -1e30)
            p = torch.softmax(scores, dim=-1)
            head_outs.append(p @ v @ a.W_O[h])
        live.extend(head_outs)
        const_attn = const + (a.b_O if a.b_O is not None else 0)
        mlp_const = const if graph.parallel else const_attn
        x = lay.mlp_norm(receiver_input(graph.mlp_receiver(layer), mlp_const))
        live.append(lay.mlp(x))
        const = const_attn
    final = receiver_input(graph.logits_receiver, const)
    return spec.unembed(spec.final_norm(final))


def assert_close(a, b, tol=1e-4):
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol}"
    assert not math.isnan(diff)
