"""The batched scrubbed forward passes: every context of every draw is one batch row.

* :func:`joint_logits` (the default mode) runs on the engine's masked forward. In a draw, every left-out edge
  carries the sender's clean output on the draw's one resampled prompt, so all rows of a draw share one
  ablated batch row; a labelled sender's value is routed from its child context's row
  (:meth:`~circuitfind.engine.patchable.PatchableModel.forward_routed`). The engine's sparse paths (skipped dead
  nodes, answer positions only above the last live head) are kept.
* :func:`treeified_logits` (``independent=True``) builds every receiver's input from its own sources: for
  each upstream sender, the value in this row, in a child context's row, or the clean output on the edge's
  own resampled prompt. One gather per receiver; it is the general and slower path.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from circuitfind.engine.ablations import AblatedOutputs
from circuitfind.engine.attention import attend, attention_biases, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.memory import PassKind, prompts_per_pass
from circuitfind.engine.patchable import _frozen

__all__ = ["draws_per_pass", "joint_logits", "treeified_logits"]


def draws_per_pass(pm, n_contexts: int, n_masks: int, seq_len: int, budget: int) -> int:
    """Draws per joint pass: the rows of one routed pass of ``n_masks`` masks that fit in ``budget`` bytes (the one
    chunk formula, :func:`circuitfind.engine.memory.prompts_per_pass`), ``n_contexts`` rows per draw."""
    rows = prompts_per_pass(pm, sys.maxsize, seq_len, PassKind.ROUTED, n_masks, budget)
    return max(1, rows // n_contexts)


def _routes(plan, draws: slice) -> dict[int, Tensor]:
    """Sender -> ``(C*b,)`` row each row of a chunk of ``b`` draws reads that sender from."""
    b = draws.stop - draws.start
    C = plan.tree.n
    routes: dict[int, Tensor] = {}
    for (c, s, _), child in plan.tree.children.items():
        rows = routes.setdefault(s, torch.arange(C * b))
        rows[c * b : (c + 1) * b] = child * b + torch.arange(b)
    return routes


def joint_logits(pm, task, plan, masks: Tensor, clean: AblatedOutputs, per_pass: int) -> Tensor:
    """``(K, B, V)`` logits of the root context of every draw under ``masks`` ``(K, S, R)`` (joint mode).

    ``clean``: the sender outputs of the task's clean prompts as resample ablation (``pm.ablation``), whose
    rows the drawn resamples index.
    """
    out = []
    B = plan.n_samples
    for start in range(0, B, per_pass):
        draws = slice(start, min(B, start + per_pass))
        b = draws.stop - draws.start
        prompts = plan.prompts[:, draws].flatten().to(pm.device)  # (C*b,) context-major
        res = plan.resamples[draws].repeat(plan.tree.n).to(pm.device)
        ablated = AblatedOutputs(clean.kind, clean.outputs[:, res], clean.bases[:, res])
        logits = pm.forward_routed(
            task.clean_ids[prompts],
            ablated,
            masks,
            _routes(plan, draws),
            attention_mask=task.attention_mask[prompts],
            positions=task.answer_pos[prompts],
        )  # (K, C*b, V)
        out.append(logits[:, :b])
    return torch.cat(out, dim=1)


def _sources(plan, kept: Tensor, labelled: Tensor, r: int, n: int, s_up: int) -> Tensor:
    """``(s_up, C*B)`` pool rows receiver ``r`` reads each upstream sender from, in every row."""
    C, B = plan.prompts.shape
    own = n + torch.arange(C * B)
    src = plan.edge_prompts[:, :s_up, r, :].permute(1, 0, 2).reshape(s_up, C * B).clone()
    for s in kept[:s_up, r].nonzero().flatten().tolist():
        rows = own.clone()
        if labelled[s]:
            for c in range(C):
                child = plan.tree.children.get((c, s, r))
                if child is not None:
                    rows[c * B : (c + 1) * B] = n + child * B + torch.arange(B)
        src[s] = rows
    return src


def _gather_sum(pool: Tensor, src: Tensor, budget: int) -> Tensor:
    """``sum_s pool[s, src[s, b]]`` -> ``(rows, T, D)`` for ``src`` ``(s_up, rows)``, ``budget`` bytes at a time."""
    s_up, rows = src.shape
    src = src.to(pool.device)
    per_row = s_up * pool[0, 0].numel() * pool.element_size()
    step = max(1, budget // max(per_row, 1))
    senders = torch.arange(s_up, device=pool.device)[:, None]
    return torch.cat([pool[senders, src[:, i : i + step]].sum(0) for i in range(0, rows, step)])


def treeified_logits(
    pm, task, plan, kept: Tensor, labelled: Tensor, clean_outputs: Tensor, budget: int = 1 << 28
) -> Tensor:
    """``(B, V)`` root logits with every edge into every receiver read from its own source (independent mode).

    ``clean_outputs``: ``(S, N, T, D)`` the senders' outputs on the task's clean prompts; ``budget``: bytes one
    gather of sender values may hold.
    """
    g, spec = pm.graph, pm.spec
    C, B = plan.prompts.shape
    n = clean_outputs.shape[1]
    prompts = plan.prompts.flatten().to(pm.device)
    ids, am, pos = task.clean_ids[prompts], task.attention_mask[prompts], task.answer_pos[prompts]
    position_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
    const = pm.ablation("zero").bases  # (G, 1, 1, D): the biases that belong to no node
    pool = torch.cat([clean_outputs, clean_outputs.new_zeros((g.n_senders, C * B, *clean_outputs.shape[2:]))], 1)
    active = plan.tree.active.any(0)
    rot = rotary_tables(pm.spec, position_ids, pm.dtype)
    biases = attention_biases(pm.spec, am, 1, dtype=pm.dtype, device=pm.device)

    def inputs(rs: list[int]) -> Tensor:  # (len(rs), C*B, T, D); an unused receiver gets its constant only
        rows = []
        for r in rs:
            x = const[int(g.receiver_groups[r])].expand(C * B, *pool.shape[2:])
            if bool(active[r]):
                x = x + _gather_sum(pool, _sources(plan, kept, labelled, r, n, int(g.n_upstream[r])), budget)
            rows.append(x)
        return torch.stack(rows)

    with _frozen(pm.module), torch.no_grad():
        pool[0, n:] = spec.embed(ids, position_ids)
        for layer in range(g.n_layers):
            lay, H, r0 = spec.layers[layer], g.n_heads, g.receivers_from(layer)
            if bool(active[r0 : r0 + 3 * H].any()):
                x = lay.attn_norm(inputs(list(range(r0, r0 + 3 * H))).unsqueeze(0))  # (1, 3H, C*B, T, D)
                q, k, v = project_qkv(lay, x)
                z = attend(pm.spec, lay, q, k, v, rot, biases[lay.sliding_window])
                first = g.head_sender(layer, 0)
                pool[first : first + H, n:] = head_outputs(lay, z)[0]
            r = g.mlp_receiver(layer)
            if bool(active[r]):
                pool[g.mlp_sender(layer), n:] = lay.mlp(lay.mlp_norm(inputs([r])[0]))
        final = inputs([g.logits_receiver])[0]  # (C*B, T, D)
        final = final[torch.arange(C * B, device=pm.device), pos][:B]
        return spec.logits(spec.final_norm(final), None)
