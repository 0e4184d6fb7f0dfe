"""One edge-masked forward pass, step by step: embedding, receiver inputs, attention, MLP, unembedding.

:meth:`PatchableModel.forward <circuitfind.engine.patchable.PatchableModel.forward>` validates its arguments and hands
them to a :class:`MaskedForward`, which holds the state of that one pass (the sender diffs computed so far, and
whether only the answer positions are still carried) and runs the blocks in order. Each receiver's input is

    input_r = base_r + sum_{s upstream of r} mask[s, r] * (live_s - ablated_s)

(see :mod:`circuitfind.engine.patchable`); the bookkeeping that makes the sum cheap is in
:mod:`circuitfind.engine.receivers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum
from torch import Tensor

from circuitfind.engine.attention import attend, attention_biases, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.receivers import DiffStore, distinct_columns, mix_onto, mix_rows

__all__ = ["MaskedForward", "PassInputs"]

# Bytes of receiver inputs the chunked q/k/v path mixes, norms and projects at once (a few MB: the CPU's cache)
QKV_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class PassInputs:
    """The validated inputs of one pass.

    Attributes:
        ids: ``(B, T)`` clean token ids.
        attention_mask: ``(B, T)``, 1 for real tokens.
        position_ids: ``(B, T)``.
        positions: ``(B,)`` the position to return logits at per prompt, or None for all positions.
    """

    ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    positions: Tensor | None


class MaskedForward:
    """The state and steps of one masked forward over ``K`` masks at once.

    Args:
        pm: the :class:`~circuitfind.engine.patchable.PatchableModel`.
        inputs: validated token inputs.
        ablated: the ablated sender outputs.
        M: ``(K, S, R)`` float mask (non-edges already zeroed), or ``(K, S, R, T)``: one per position.
        start_layer: first block computed; below it everything comes from ``cache``.
        cache: a :class:`~circuitfind.engine.patchable.PrefixCache` (required when ``start_layer > 0``).
        grad: build the autograd graph (mask or ablated outputs need gradients).
        keep_positions: compute every position to the top (the caller wants every sender's diffs).
    """

    def __init__(self, pm, inputs: PassInputs, ablated, M: Tensor, *, start_layer, cache, grad, keep_positions):
        self.pm, self.g, self.spec = pm, pm.graph, pm.spec
        self.inputs, self.ablated, self.M = inputs, ablated, M
        self.K = M.shape[0]
        self.B, self.T = inputs.ids.shape
        self.start_layer, self.cache, self.grad = start_layer, cache, grad
        self.rows = torch.arange(self.B, device=pm.device)
        self.selected = False  # True once only the answer positions are carried
        if start_layer == 0:
            emb = self.spec.embed(inputs.ids, inputs.position_ids)  # (B, T, D)
            self.pre = (emb - ablated.outputs[0]).unsqueeze(0)  # (1, B, T, D)
            self.partial, self.start_inputs = None, None
        else:
            self.pre, self.partial, self.start_inputs = cache.diffs, cache.partial, cache.start_inputs
        self.s_pre = self.pre.shape[0]
        self.pre_total = None if grad or start_layer > 0 else self.pre.sum(0, keepdim=True)  # (1, B, T, D)
        self.post = DiffStore(
            self.K, self.g.n_senders - self.s_pre, (self.B, self.T, self.spec.d_model), self.pre, grad
        )
        self.attn_bias = attention_biases(  # window -> (K*B, 1, T, T)
            pm.spec, inputs.attention_mask, self.K, self.spec.layers[start_layer:], dtype=pm.dtype, device=pm.device
        )
        self.rot = rotary_tables(pm.spec, inputs.position_ids, pm.dtype)  # (cos, sin) per distinct rotary of the layers
        self.top = self._top_mixing_layer(keep_positions)

    # --- the pass ----------------------------------------------------------------------------------
    def run(self, vocab: Tensor | None) -> Tensor:
        """Logits ``(K, B, V)`` at the answer positions, or ``(K, B, T, V)`` without positions."""
        if self.top < self.start_layer:
            self.select_positions()
        for layer in range(self.start_layer, self.spec.n_layers):
            self.attention_layer(layer)
            if layer == self.top:
                self.select_positions()
            self.mlp_layer(layer)
        return self.unembed(vocab)

    def diffs(self) -> Tensor:
        """``(S, B, T, D)`` live-minus-ablated outputs of every sender (single mask, after :meth:`run`)."""
        return torch.cat([self.pre, self.post.first(self.post.n)[0]], dim=0) if self.post.n else self.pre

    # --- position selection ------------------------------------------------------------------------
    def _top_mixing_layer(self, keep_positions: bool) -> int:
        """The highest block with a live head: above it nothing mixes positions, so from there on only the
        answer positions are computed (exact; only without autograd and when positions are given)."""
        if self.grad or self.inputs.positions is None or keep_positions or self.M.dim() == 4:
            return self.spec.n_layers  # (a position mask weighs every position: none is dropped)
        top = self.start_layer - 1
        row_live = self.M.any(dim=2).any(dim=0)  # (S,)
        for layer in range(self.start_layer, self.spec.n_layers):
            first = self.g.head_sender(layer, 0)
            if bool(row_live[first : first + self.spec.n_heads].any()):
                top = layer
        return top

    def sel(self, x: Tensor) -> Tensor:
        """``(..., B'|B, T'|T, D) -> (..., B'|B, 1, D)`` once only the answer positions are carried."""
        if not self.selected or x.shape[-2] == 1:
            return x
        x = x.expand(*x.shape[:-3], self.B, *x.shape[-2:])
        return x[..., self.rows, self.inputs.positions, :].unsqueeze(-2)

    def select_positions(self) -> None:
        """From now on carry only the answer position of every prompt."""
        self.selected = True
        self.pre = self.sel(self.pre)
        self.pre_total = self.pre.sum(0, keepdim=True)
        self.partial = None if self.partial is None else self.sel(self.partial)
        self.start_inputs = None if self.start_inputs is None else self.sel(self.start_inputs)
        self.post.select_positions(self.sel)

    # --- receiver inputs ---------------------------------------------------------------------------
    def receiver_inputs(self, cols: slice | Tensor, layer: int) -> Tensor:
        """Inputs ``(K, C|1, B, T, D)`` of the receivers ``cols`` (a slice or an index tensor) of ``layer``."""
        if self.K == 1 and self.M.dim() == 3 and not self.grad:
            return self._one_mask_inputs(cols, layer).unsqueeze(0)
        g = self.g
        first = cols.start if isinstance(cols, slice) else int(cols[0])
        n_up = int(g.n_upstream[first])
        if self.partial is not None and layer > self.start_layer:
            x = self.partial[_shift(cols, g.receivers_from(self.start_layer + 1))].unsqueeze(0)
        elif self.start_inputs is not None and layer == self.start_layer:
            x = self._start_layer_inputs(cols)
        else:
            base = self.sel(self.ablated.bases[int(g.receiver_groups[first])])  # (B'|B, T'|T, D)
            mixed = mix_rows(self.pre.unsqueeze(0), self.M[:, : min(n_up, self.s_pre), cols], self.pre_total, self.grad)
            x = base.unsqueeze(0).unsqueeze(0) + mixed
        if n_up > self.s_pre:
            n = n_up - self.s_pre
            total = None if self.grad else self.post.total(n)
            x = x + mix_rows(self.post.first(n), self.M[:, self.s_pre : n_up, cols], total, self.grad)
        return x.expand(self.K, *x.shape[1:])  # inputs shared by all K candidates stay views

    def _one_mask_inputs(self, cols: slice | Tensor, layer: int, rows: slice | None = None) -> Tensor:
        """:meth:`receiver_inputs` for one ``(S, R)`` mask without autograd: ``(C|1, b, T, D)`` in one buffer,
        each product from the cheaper of the kept and the removed senders (:func:`mix_onto`); only the prompts
        ``rows`` (None: all)."""
        g = self.g
        first = cols.start if isinstance(cols, slice) else int(cols[0])
        n_up, s_pre = int(g.n_upstream[first]), self.s_pre
        w = self.M[0, :n_up, cols]  # (n_up, C)
        n_post = max(0, n_up - s_pre)
        parts = [(_prompts(self.post.first(n_post)[0], rows), w[s_pre:])] if n_post else []
        post_total = _prompts(self.post.total(n_post), rows) if n_post else None  # (1, b, T, D)
        total: Tensor | None = post_total
        if self.partial is not None and layer > self.start_layer:
            x0 = _prompts(self.partial[_shift(cols, g.receivers_from(self.start_layer + 1))], rows)  # (C, b, T, D)
        elif self.start_inputs is not None and layer == self.start_layer:
            x0 = self._start_layer_inputs(cols, rows)[0]
        else:
            x0 = _prompts(self.sel(self.ablated.bases[int(g.receiver_groups[first])]).unsqueeze(0), rows)
            parts.insert(0, (_prompts(self.pre, rows), w[: min(n_up, s_pre)]))
            pre_total = self.pre.sum(0, keepdim=True) if self.pre_total is None else self.pre_total  # (1, B, T, D)
            total = _prompts(pre_total, rows) if post_total is None else _prompts(pre_total, rows) + post_total
        return mix_onto(x0, parts, total)

    def _start_layer_inputs(self, cols: slice | Tensor, rows: slice | None = None) -> Tensor:
        """The cached inputs of the start layer's receivers, corrected where this mask differs from the cache's."""
        rel = _shift(cols, self.g.receivers_from(self.start_layer))
        assert self.start_inputs is not None  # callers check it: a pass restarted from a cache
        x = _prompts(self.start_inputs[rel], rows).unsqueeze(0)
        delta = self.M[:, : self.s_pre, cols] - self.cache.start_mask[:, rel]  # (K, S_pre, C)
        changed = (delta != 0).any(dim=2).any(dim=0).nonzero().squeeze(1)
        if len(changed):
            x = x + einsum(_prompts(self.pre[changed], rows), delta[:, changed], "s b t d, k s c -> k c b t d")
        return x

    # --- blocks ------------------------------------------------------------------------------------
    def attention_layer(self, layer: int) -> None:
        """Every head of ``layer`` with a kept outgoing edge, on its own q/k/v inputs; the rest get diff 0."""
        g, H = self.g, self.spec.n_heads
        first, r0 = g.head_sender(layer, 0), g.receivers_from(layer)
        # Without autograd, a sender whose outgoing edges are all removed cannot affect anything: it is not
        # computed and its diff is 0 (exact, since every receiver weighs it by 0).
        live = None if self.grad else self.M[:, first : first + H].flatten(2).any(dim=2).any(dim=0)  # (H,)
        # a norm on the attention output couples the heads: then every head is computed
        if live is None or bool(live.all()) or self.spec.layers[layer].attn_out_scale is not None:
            self.post.append(self._heads(layer, slice(r0, r0 + 3 * H), None) - self.ablated.outputs[first : first + H])
            return
        idx = live.nonzero().squeeze(1)
        values = None
        if len(idx):
            cols = torch.cat([r0 + idx, r0 + H + idx, r0 + 2 * H + idx])
            values = self._heads(layer, cols, idx) - self.ablated.outputs[first + idx]
        self.post.append_some(H, idx, values)

    def _heads(self, layer: int, cols: slice | Tensor, heads: Tensor | None) -> Tensor:
        """Outputs ``(K, h, B, T, D)`` of the given heads (all if None) from their receivers ``cols``.

        Receivers whose upstream weights agree (all kept, or the untouched ones of an ACDC test) share one input,
        one norm and one projection per head group; the rest get their own.
        """
        lay = self.spec.layers[layer]
        which = None
        if not self.grad:
            idx = torch.arange(cols.start, cols.stop, device=self.M.device) if isinstance(cols, slice) else cols
            shared = distinct_columns(self.M[:, : int(self.g.n_upstream[int(idx[0])]), idx])
            cols, which = (cols, None) if shared is None else (idx[shared[0]], shared[1])
        q, k, v = self._qkv(layer, cols, heads, which)
        z = attend(self.pm.spec, lay, q, k, v, self.rot, self.attn_bias[lay.sliding_window])  # (K, B, h, T, E)
        return head_outputs(lay, z, heads)

    def _qkv(self, layer: int, cols: slice | Tensor, heads: Tensor | None, which: Tensor | None) -> tuple:
        """q, k, v ``(K, B, h, T, E)`` from the receivers ``cols`` (``which``: as for :func:`project_qkv`).

        With one mask and no autograd the inputs, their norm and the projections run a few prompts at a time:
        every step is per position, and a chunk's inputs stay in the CPU's cache between the mixing that writes
        them and the norm and projection that read them (the unchunked inputs are tens of MB per layer).
        """
        lay = self.spec.layers[layer]
        n_cols = cols.stop - cols.start if isinstance(cols, slice) else len(cols)
        per_prompt = n_cols * self.pre.shape[-2] * self.spec.d_model * self.pre.element_size()
        step = max(1, QKV_CHUNK_BYTES // per_prompt)
        if self.K > 1 or self.grad or self.M.dim() == 4 or step >= self.B:
            x = lay.attn_norm(self.receiver_inputs(cols, layer))  # (K, 3h|U|1, B, T, D)
            return project_qkv(lay, x, heads, None if x.shape[1] == 1 else which)
        pieces = []
        for b in range(0, self.B, step):
            x = lay.attn_norm(self._one_mask_inputs(cols, layer, slice(b, b + step)).unsqueeze(0))  # (1, C|1, b, T, D)
            pieces.append(project_qkv(lay, x, heads, None if x.shape[1] == 1 else which))
        return tuple(torch.cat([p[j] for p in pieces], dim=1) for j in range(3))

    def mlp_layer(self, layer: int) -> None:
        """The MLP of ``layer`` when it has a kept outgoing edge (or under autograd); otherwise diff 0."""
        lay, mlp_s = self.spec.layers[layer], self.g.mlp_sender(layer)
        if not (self.grad or bool(self.M[:, mlp_s].any())):
            self.post.append_some(1, torch.zeros(0, dtype=torch.long), None)
            return
        r = self.g.mlp_receiver(layer)
        x = self.receiver_inputs(slice(r, r + 1), layer)[:, 0]  # (K, B, T, D)
        out = lay.mlp(lay.mlp_norm(x))
        self.post.append((out - self.sel(self.ablated.outputs[mlp_s])).unsqueeze(1))

    def unembed(self, vocab: Tensor | None) -> Tensor:
        """Logits ``(K, B, [T,] V)`` of the logits receiver's input (only the columns ``vocab`` if given)."""
        r = self.g.logits_receiver
        final = self.receiver_inputs(slice(r, r + 1), self.g.n_layers)[:, 0]  # (K, B, T|1, D)
        if self.selected:
            final = final[:, :, 0]  # (K, B, D)
        elif self.inputs.positions is not None:
            final = final[:, self.rows, self.inputs.positions]  # (K, B, D)
        return self.spec.logits(self.spec.final_norm(final), vocab)


def _prompts(x: Tensor, rows: slice | None) -> Tensor:
    """``x (n, B|1, ...)`` restricted to the prompts ``rows`` (a broadcast prompt axis stays as it is)."""
    return x if rows is None or x.shape[1] == 1 else x[:, rows]


def _shift(cols: slice | Tensor, offset: int) -> slice | Tensor:
    """Receiver indices ``cols`` relative to ``offset``."""
    return cols - offset if isinstance(cols, Tensor) else slice(cols.start - offset, cols.stop - offset)
