"""A deliberately slow causal-scrubbing evaluator written for clarity, used only by tests.

One draw at a time, one prompt at a time, recursively: ``value(sender, context)`` computes a node on its
context's prompt from its receivers' inputs, and every receiver input is an explicit Python sum over its
upstream senders of (kept, unlabelled) the sender's value in the same context, (kept, labelled) its value in
the child context the plan gives, or (left out) its clean output on the plan's resampled prompt for that edge.
Attention is written out per head (GPT-2 family only: no rotary, no q/k norms). It shares nothing with
circuitfind.scrubbing except the plan (the draws) and with the engine nothing but the ArchSpec's weights.
"""

from __future__ import annotations

import torch


class ReferenceScrub:
    def __init__(self, spec, graph, task, kept, labelled, plan):
        self.spec, self.g, self.task, self.kept, self.labelled, self.plan = spec, graph, task, kept, labelled, plan
        self.clean_cache: dict = {}

    # --- one node on one prompt, from a function giving each receiver's input --------------------------------
    def _node(self, s: int, prompt: int, receiver_input):
        g, spec = self.g, self.spec
        ids = self.task.clean_ids[prompt]
        am = self.task.attention_mask[prompt]
        if s == g.input_sender:
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            return spec.embed(ids[None], pos[None])[0]
        sender = g.senders[s]
        lay = spec.layers[sender.layer]
        if sender.kind.value == "mlp":
            return lay.mlp(lay.mlp_norm(receiver_input(g.mlp_receiver(sender.layer))))
        a, h, T = lay.attn, sender.head, ids.shape[0]
        proj = {}
        for ch, w, b in (("q", a.W_Q, a.b_Q), ("k", a.W_K, a.b_K), ("v", a.W_V, a.b_V)):
            x = lay.attn_norm(receiver_input(g.head_receiver(sender.layer, h, ch)))
            proj[ch] = x @ w[h] + (0 if b is None else b[h])
        scores = proj["q"] @ proj["k"].T * lay.attn_scale
        allowed = torch.ones(T, T, dtype=torch.bool).tril() & am.bool()[None, :]
        p = torch.softmax(scores.masked_fill(~allowed, -1e30), dim=-1)
        return p @ proj["v"] @ a.W_O[h]

    def _const(self, r: int):
        """Biases that belong to no node upstream of receiver ``r`` (attention output biases of lower layers)."""
        g, spec = self.g, self.spec
        layer, total = g.receiver_layer(r), torch.zeros(spec.d_model)
        is_mlp = r < g.n_receivers - 1 and r == g.mlp_receiver(layer)
        for lo in range(g.n_layers):
            b = spec.layers[lo].attn.b_O
            if b is not None and (lo < layer or (lo == layer and is_mlp and not g.parallel)):
                total = total + b
        return total

    def clean(self, s: int, prompt: int):
        key = (s, prompt)
        if key not in self.clean_cache:

            def inp(r):
                ups = [t for t in range(self.g.n_senders) if self.g.edge_mask[t, r]]
                return self._const(r) + sum(self.clean(t, prompt) for t in ups)

            self.clean_cache[key] = self._node(s, prompt, inp)
        return self.clean_cache[key]

    # --- one draw -------------------------------------------------------------------------------------------
    def draw_logits(self, d: int):
        plan, g = self.plan, self.g
        memo: dict = {}

        def left_out_prompt(c, t, r):
            return int(plan.edge_prompts[c, t, r, d]) if plan.independent else int(plan.resamples[d])

        def receiver_input(r, c):
            total = self._const(r)
            for t in range(g.n_senders):
                if not g.edge_mask[t, r]:
                    continue
                if not self.kept[t, r]:
                    total = total + self.clean(t, left_out_prompt(c, t, r))
                elif self.labelled[t]:
                    child = plan.tree.children[(c, t, r if plan.independent else -1)]
                    total = total + value(t, child)
                else:
                    total = total + value(t, c)
            return total

        def value(s, c):
            if (s, c) not in memo:
                memo[(s, c)] = self._node(s, int(plan.prompts[c, d]), lambda r: receiver_input(r, c))
            return memo[(s, c)]

        final = receiver_input(g.logits_receiver, 0)
        pos = int(self.task.answer_pos[int(plan.originals[d])])
        return self.spec.logits(self.spec.final_norm(final[pos][None]))[0]
