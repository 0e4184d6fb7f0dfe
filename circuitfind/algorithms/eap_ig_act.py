"""``eap-ig-act``: EAP-IG along the activations (MIB's EAP-IG-activations), one sender layer at a time.

The senders are taken in groups, one per layer of the residual stream: ``input``, the heads of layer L (all
together), the MLP of layer L. For a group, its outputs are interpolated between ablated and clean,

    out_s(a) = ablated_s + a * (clean_s - ablated_s)        (every sender s of the group, to every receiver)

while every other sender computes live from what it reads. That is the edge mask with the group's rows at ``a``
and every other entry 1, so the gradient at a point is ``d loss / d mask[s, r] = (clean_s - ablated_s) . d loss /
d input_r``. The score of ``s -> r`` is its right Riemann sum over ``a = k / steps``, ``k = 1..steps``:

    score(s -> r) = -(1 / steps) sum_k (clean_s - ablated_s) . d loss / d input_r  at  out_group(k / steps)

One step is the clean model: EAP exactly. By IG's completeness the scores of one group's edges sum to
``loss(group removed) - loss(full)`` (every edge out of the group ablated) as ``steps`` grows.

Cost: ``(1 + 2 * n_layers) * steps`` forward-backward passes (SmolLM2-135M: 61 x steps), each restarted at its
group's layer from one clean pass per prompt chunk, so a pass costs the layers above its group only (about half
a full pass on average), plus one clean forward per chunk. Memory as ``eap-ig``: the receivers' input gradients
of one chunk ``(R, b, T, D)`` and the clean sender diffs; nothing per edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.algorithms.base import (
    MethodOptions,
    MethodResult,
    NullProgress,
    Progress,
    RunContext,
    ScoreResult,
    check_steps,
)
from circuitfind.algorithms.eap import EapOptions
from circuitfind.engine.attention import attend, attention_biases, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.gradients import Point, _contract, _forward, _receiver_grads
from circuitfind.engine.memory import PassKind
from circuitfind.engine.patchable import _frozen
from circuitfind.errors import check_int
from circuitfind.problem import Problem

__all__ = ["EAPIGAct", "SenderGroup", "activation_gradients", "run", "run_eap_ig_act", "sender_groups"]


@dataclass(frozen=True)
class EAPIGAct(MethodOptions):
    """EAP-IG along the activations as a method object (name ``"eap-ig-act"``).

    Attributes:
        steps: points per sender layer (right Riemann sum; 1 is EAP).

    Example:
        >>> EAPIGAct(steps=3).units()
        'edge'
    """

    steps: int = 5

    def __post_init__(self) -> None:
        check_steps(self.steps)


def run(problem: Problem, options: EAPIGAct, context: RunContext) -> MethodResult:
    """The registry's entry for ``eap-ig-act``: :func:`run_eap_ig_act`.

    Example:
        >>> run(problem, EAPIGAct(steps=1), RunContext()).stats["passes"]  # 3 sender groups, 1 step each
        3
    """
    return run_eap_ig_act(problem, EapOptions(steps=options.steps), context.progress)


@dataclass(frozen=True)
class SenderGroup:
    """Senders ``first .. stop - 1`` whose outputs are interpolated together.

    Attributes:
        first, stop: the sender index range.
        layer: the layer of the group (-1 for ``input``).
        mlp: True for an MLP, False for a layer's heads (and ``input``).
    """

    first: int
    stop: int
    layer: int
    mlp: bool


def sender_groups(graph) -> list[SenderGroup]:
    """The groups in sender order: ``input``, then per layer its heads and its MLP.

    Example:
        >>> [(gr.first, gr.stop) for gr in sender_groups(pm.graph)]  # 1 layer, 2 heads
        [(0, 1), (1, 3), (3, 4)]
    """
    groups = [SenderGroup(0, 1, -1, False)]
    for layer in range(graph.n_layers):
        h0 = graph.head_sender(layer, 0)
        groups.append(SenderGroup(h0, h0 + graph.n_heads, layer, False))
        groups.append(SenderGroup(graph.mlp_sender(layer), graph.mlp_sender(layer) + 1, layer, True))
    return groups


def run_eap_ig_act(problem: Problem, opts: EapOptions | None = None, progress: Progress | None = None) -> ScoreResult:
    """EAP-IG-activations scores for every edge (``steps`` points per sender layer).

    Example:
        >>> result = run_eap_ig_act(problem, EapOptions(steps=3))
        >>> result.scores.shape, result.stats["passes"]  # (senders, receivers); 3 groups x 3 steps
        (torch.Size([4, 8]), 9)
    """
    opts = opts or EapOptions()
    m = check_steps(opts.steps)
    progress = progress or NullProgress()
    n_groups = len(sender_groups(problem.pm.graph))
    progress.set_description(f"EAP-IG act ({m} steps x {n_groups} layers)")
    progress.reset(total=problem.clean_ids.shape[0] * n_groups * m)
    grad = activation_gradients(problem, m, chunk_size=opts.chunk_size, on_pass=progress.update)
    scores = (-grad).cpu()
    scores[~problem.pm.graph.edge_mask] = 0.0
    return ScoreResult(scores, {"passes": n_groups * m, "steps": m, "sender_groups": n_groups})


def activation_gradients(problem: Problem, steps: int, *, chunk_size: int | None = None, on_pass=None) -> Tensor:
    """``(S, R)`` float64: per sender group, ``(1 / steps) sum_k d loss / d mask[s, r]`` at the mask whose group
    rows are ``k / steps`` (every other entry 1), for the group's senders ``s``; zero off the graph's edges.

    Args:
        problem: the prepared problem.
        steps: points per group (right Riemann sum).
        chunk_size: prompts per pass (default ``problem.chunk_size``, else sized as ``eap-ig``).
        on_pass: called with the number of prompts after each forward-backward pass.

    Example:
        >>> from circuitfind.algorithms.eap import run_eap
        >>> grad = activation_gradients(problem, 1)  # at the clean model: EAP's gradient
        >>> bool(torch.allclose(-grad, run_eap(problem).scores.to(grad.dtype)))
        True
    """
    pm, g = problem.pm, problem.pm.graph
    steps = check_steps(steps)
    B = problem.clean_ids.shape[0]
    chunk = chunk_size or problem.prompts_per_pass(PassKind.ATTRIBUTION)
    chunk = check_int(chunk, "chunk_size", what="prompts per pass")
    groups = sender_groups(g)
    alphas = [k / steps for k in range(1, steps + 1)]
    whole = chunk >= B or problem.separable
    cots = (
        None
        if whole
        else {(i, a): _whole_batch_cot(problem, gr, a, chunk) for i, gr in enumerate(groups) for a in alphas}
    )
    grad = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64, device=pm.device)
    for start in range(0, B, chunk):
        rows = slice(start, min(start + chunk, B))
        with torch.no_grad():
            diffs = _forward(problem, Point(), rows, False)[2]  # (S, b, T, D) clean minus ablated
        for i, group in enumerate(groups):
            receiver_grads = None
            for a in alphas:
                cot = None if cots is None else cots[i, a][rows]
                taps, tap_grads = _group_pass_grads(problem, rows, diffs, group, a, cot)
                receiver_grads = _receiver_grads(pm, tap_grads, taps, 1.0 / steps, receiver_grads)
                if on_pass is not None:
                    on_pass(rows.stop - rows.start)
            assert receiver_grads is not None  # steps >= 1: every point added to it
            _contract(pm, grad[group.first : group.stop], diffs[group.first : group.stop], receiver_grads)
    return grad * g.edge_mask.to(grad.device)


def _group_pass_grads(problem, rows: slice, diffs: Tensor, group: SenderGroup, a: float, cot: Tensor | None):
    """One forward-backward at ``group``'s point ``a``: the taps and ``d loss / d tap`` for each (a dict)."""
    with torch.enable_grad():
        logits, taps = _group_forward(problem, rows, diffs, group, a, True)
        if cot is not None:
            out = logits
        else:  # a mean over prompts: the whole batch's loss with these rows in place is exact for them
            B = problem.clean_ids.shape[0]
            where = torch.arange(rows.start, rows.stop, device=logits.device)
            out = problem.loss(logits.new_zeros((B, logits.shape[-1])).index_copy(0, where, logits).unsqueeze(0))[0]
        grads = torch.autograd.grad(out, list(taps.values()), grad_outputs=cot, allow_unused=True)
    return taps, dict(zip(taps, grads, strict=True))


def _whole_batch_cot(problem, group: SenderGroup, a: float, chunk: int) -> Tensor:
    """``d loss / d logits`` ``(B, V')`` at the point, from every chunk's logits (a loss that is not a mean)."""
    B = problem.clean_ids.shape[0]
    parts = []
    with torch.no_grad():
        for start in range(0, B, chunk):
            rows = slice(start, min(start + chunk, B))
            diffs = _forward(problem, Point(), rows, False)[2]
            parts.append(_group_forward(problem, rows, diffs, group, a, False)[0])
    logits = torch.cat(parts).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(problem.loss(logits.unsqueeze(0))[0], logits)
    return grad


def _group_forward(problem, rows: slice, diffs: Tensor, group: SenderGroup, a: float, taps: bool):
    """The clean forward with ``group``'s outputs at ``ablated + a * diff``, restarted at the group's layer from
    the clean ``diffs (S, b, T, D)``. Returns ``(logits (b, V'), taps)``; taps (receiver inputs and q/k/v, as
    :func:`circuitfind.engine.gradients._forward` names them) only downstream of the group, all carrying autograd."""
    pm, g = problem.pm, problem.pm.graph
    ablated = problem.ablated.select(rows, problem.clean_ids.shape[0])
    outputs, bases = ablated.outputs, ablated.bases
    tapped: dict[str, Tensor] = {}

    def tap(name: str, t: Tensor) -> Tensor:
        if taps:
            tapped[name] = t
        return t

    with _frozen(pm.module), torch.set_grad_enabled(taps):
        own = (a * diffs[group.first : group.stop]).requires_grad_(taps)  # (n, b, T, D): autograd starts here
        acc = diffs[: group.first].sum(0) if group.first else torch.zeros_like(diffs[0])  # senders below
        layer = group.layer
        if group.layer < 0 or group.mlp:
            acc = acc + own.sum(0)
        else:  # the heads of `layer`: its MLP reads them (sequential blocks) or not (parallel)
            head_sum, m = own.sum(0), g.mlp_sender(layer)
            if g.parallel:
                mlp = diffs[m]
            else:
                xm = tap(f"m{layer}", bases[2 * layer + 1] + acc + head_sum)
                lay = pm.spec.layers[layer]
                mlp = lay.mlp(lay.mlp_norm(xm)) - outputs[m]
            acc = acc + head_sum + mlp
        acc = _layers_from(problem, rows, outputs, bases, acc, layer + 1, tap)
        final = tap("final", bases[2 * g.n_layers] + acc)  # (b, T, D)
        b = final.shape[0]
        at = final[torch.arange(b, device=pm.device), problem.positions[rows].to(pm.device)]  # (b, D)
        logits = pm.spec.logits(pm.spec.final_norm(at), problem.vocab)  # (b, V')
    return logits, tapped


def _layers_from(problem, rows: slice, outputs: Tensor, bases: Tensor, acc: Tensor, start: int, tap) -> Tensor:
    """Blocks ``start ..`` of the all-kept forward on the running diff sum ``acc (b, T, D)``; returns the new sum."""
    pm, g, spec = problem.pm, problem.pm.graph, problem.pm.spec
    am = problem.attention_mask[rows].to(pm.device)
    pos_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
    biases = attention_biases(pm.spec, am, 1, dtype=pm.dtype, device=pm.device)
    rot = rotary_tables(pm.spec, pos_ids, pm.dtype)
    H = spec.n_heads
    for layer in range(start, g.n_layers):
        lay, first = spec.layers[layer], g.head_sender(layer, 0)
        x = tap(f"x{layer}", bases[2 * layer] + acc)  # (b, T, D)
        q, k, v = project_qkv(lay, lay.attn_norm(x)[None, None])  # (1, b, H, T, E) each
        q, k, v = tap(f"q{layer}", q), tap(f"k{layer}", k), tap(f"v{layer}", v)
        z = attend(pm.spec, lay, q, k, v, rot, biases[lay.sliding_window])
        head_sum = (head_outputs(lay, z)[0] - outputs[first : first + H]).sum(0)  # (b, T, D)
        xm = tap(f"m{layer}", bases[2 * layer + 1] + (acc if g.parallel else acc + head_sum))
        acc = acc + head_sum + lay.mlp(lay.mlp_norm(xm)) - outputs[g.mlp_sender(layer)]
    return acc
