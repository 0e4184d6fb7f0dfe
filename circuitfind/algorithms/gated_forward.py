"""The edge-masked forward for training gates: the same sums as the patched forward, computing only what a
sparse float mask can reach, with autograd.

Every receiver's input is ``base_r + sum_s gate[s, r] * (live_s - ablated_s)``, exactly as in
:mod:`circuitfind.engine.patchable`. A sender none of whose gates is open contributes nothing, so it is not computed
(its diff is 0 and a head or MLP whose output is read by no open gate is skipped), and each receiver mixes only the
senders with an open gate into its layer. Values equal ``pm.forward`` under the same float mask; the gradient
equals ``pm.forward``'s for every open (non-zero) gate; a closed gate gets either the same or 0 (when its sender
is not computed, or not mixed into that layer). That is the gradient learned masks need: a hard-concrete gate at
exactly 0 has zero gradient through its clamp.

On a sparse mask the pass costs the live nodes only (a 120-edge circuit of SmolLM2-135M touches a few dozen of
its 301 nodes), where the patched forward's autograd path computes every node and every dense mixing sum.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

from circuitfind.engine.attention import attend, attention_biases, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.patchable import _frozen

__all__ = ["gated_forward"]


def gated_forward(problem, gates: Tensor) -> Tensor:
    """The final residual of every prompt at its answer position, after the final norm, under float ``gates``.

    Args:
        problem: a :class:`~circuitfind.algorithms.acdc.Problem` (all its prompts form one pass).
        gates: ``(S, R)`` float, zero off the graph's edges (may carry autograd).

    Returns:
        ``(B, D)``: feed it to ``pm.spec.logits(h, vocab)``.

    Example:
        >>> h = gated_forward(problem, pm.graph.full_mask().double())
        >>> logits = pm.spec.logits(h, None)  # (B, V): the full model's logits at the answer positions
        >>> full = pm.forward(problem.clean_ids, problem.ablated, pm.graph.full_mask(), positions=problem.positions)
        >>> bool(torch.allclose(logits.float(), full, atol=1e-5))
        True
    """
    pm, g, spec = problem.pm, problem.pm.graph, problem.pm.spec
    ids = problem.clean_ids.to(pm.device)
    am = problem.attention_mask.to(pm.device)
    pos_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
    outputs, bases = problem.ablated.outputs, problem.ablated.bases  # (S | G, B|1, T|1, D)
    bases = bases.expand(bases.shape[0], *ids.shape, bases.shape[-1])  # (G, B, T, D), a view
    gates = gates.to(pm.device, pm.dtype)
    live = (gates.detach() != 0).any(dim=1).tolist()  # (S,) senders some open gate reads
    diffs: dict[int, Tensor] = {}  # sender -> (B, T, D) live minus ablated, for live senders only
    with _frozen(pm.module):
        if live[0]:
            diffs[0] = spec.embed(ids, pos_ids) - outputs[0]
        biases = attention_biases(pm.spec, am, 1, dtype=pm.dtype, device=pm.device)
        rot = rotary_tables(pm.spec, pos_ids, pm.dtype)
        for layer in range(g.n_layers):
            _heads(pm, problem, layer, gates, diffs, live, biases, rot)
            m, r = g.mlp_sender(layer), g.mlp_receiver(layer)
            if live[m]:
                lay = spec.layers[layer]
                xm = _inputs(bases[2 * layer + 1], diffs, gates[:, r : r + 1])[0]  # (B, T, D)
                diffs[m] = lay.mlp(lay.mlp_norm(xm)) - outputs[m]
        r = g.logits_receiver
        final = _inputs(bases[2 * g.n_layers], diffs, gates[:, r : r + 1])[0]  # (B, T, D)
        at = final[torch.arange(ids.shape[0], device=pm.device), problem.positions.to(pm.device)]  # (B, D)
        return spec.final_norm(at)


def _heads(pm, problem, layer: int, gates: Tensor, diffs: dict, live: list, biases: dict, rot) -> None:
    """The heads of ``layer`` that some open gate reads, each from its own q/k/v inputs, into ``diffs``."""
    g, H, lay = pm.graph, pm.spec.n_heads, pm.spec.layers[layer]
    first, r0 = g.head_sender(layer, 0), g.receivers_from(layer)
    wanted = [h for h in range(H) if live[first + h]]
    if not wanted:
        return
    if lay.attn_out_scale is not None:  # a norm on the attention output couples the heads: compute all of them
        wanted = list(range(H))
    heads = torch.tensor(wanted, device=pm.device)
    cols = torch.cat([r0 + heads, r0 + H + heads, r0 + 2 * H + heads])
    base = problem.ablated.bases[2 * layer].expand(*problem.clean_ids.shape, -1)  # (B, T, D)
    x = _inputs(base, diffs, gates[:, cols])  # (3h, B, T, D)
    pick = None if len(wanted) == H else heads
    q, k, v = project_qkv(lay, lay.attn_norm(x).unsqueeze(0), pick)  # (1, B, h, T, E) each
    z = attend(pm.spec, lay, q, k, v, rot, biases[lay.sliding_window])
    out = head_outputs(lay, z, pick)[0] - problem.ablated.outputs[first + heads]  # (h, B, T, D)
    for j, h in enumerate(wanted):
        if live[first + h]:
            diffs[first + h] = out[j]


def _inputs(base: Tensor, diffs: dict[int, Tensor], w: Tensor) -> Tensor:
    """``base + sum_s w[s, c] * diffs[s]`` -> ``(C, B, T, D)`` over the computed senders with a non-zero weight."""
    senders = [s for s in diffs if bool((w[s].detach() != 0).any())]
    if not senders:
        return base.unsqueeze(0).expand(w.shape[1], *base.shape)
    rows = torch.stack([diffs[s] for s in senders])  # (n, B, T, D)
    return base.unsqueeze(0) + einsum(rows, w[senders], "s b t d, s c -> c b t d")
