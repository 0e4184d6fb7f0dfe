"""Edge-mask gradients at a point where every edge carries the same weight: the engine of the attribution methods.

When every edge's mask value is the same ``a``, every receiver of one group (the q/k/v inputs of a layer, its
MLP input, the logits) sees the same input

    x_group = base_group + a * sum_{s upstream} (out_s - ablated_s)

so one ordinary forward pass computes them all. The gradient of the loss with respect to one edge's mask value is

    d loss / d mask[s, r] = diff_s . d loss / d input_r        (summed over prompts and positions)

and ``d loss / d input_r`` is recovered per receiver from the shared pass: the q, k and v projections of every head
are tapped, their gradients pulled back through the head's own projection and then through the block's norm at
``x_group`` (one batched vector-Jacobian product per layer). Nothing per edge is ever held: the ``(S, R)`` result
is built layer by layer from the senders' diffs.

A :class:`Point` also scales the input embedding between its ablated and clean values (integrated gradients along
the inputs, EAP-IG). Prompts are processed in chunks; for a metric that is not a plain mean over prompts the loss
gradient with respect to the logits is first taken on the whole batch (one forward without autograd), so chunking
never changes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.engine.attention import attend, attention_biases, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.memory import PassKind
from circuitfind.engine.patchable import _frozen
from circuitfind.errors import ConfigError, check_int

__all__ = ["GradientPass", "Point", "edge_gradients"]


@dataclass(frozen=True)
class Point:
    """Where along the path from "every edge ablated" to "the clean model" a gradient is taken.

    Attributes:
        mask_scale: the value of every edge's mask (1: all kept).
        input_scale: the ``input`` sender's output is ``ablated + input_scale * (clean - ablated)``.
    """

    mask_scale: float = 1.0
    input_scale: float = 1.0


@dataclass
class GradientPass:
    """The result of :func:`edge_gradients`.

    Attributes:
        grad: ``(S, R)`` float64: ``sum_k weight_k * d loss / d mask[s, r]`` at the points (zero off the graph's
            edges).
        losses: the loss at each point, over the whole batch.
    """

    grad: Tensor
    losses: list[float]


def _loss_grad(problem, point: Point, chunk: int) -> Tensor:
    """``d loss / d logits`` ``(B, V')`` on the whole batch at ``point`` (logits from forwards without autograd)."""
    B = problem.clean_ids.shape[0]
    with torch.no_grad():
        logits = torch.cat([_forward(problem, point, slice(i, i + chunk), False)[0] for i in range(0, B, chunk)])
    logits = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(problem.loss(logits.unsqueeze(0))[0], logits)
    return grad


def edge_gradients(
    problem,
    points: Sequence[Point] = (Point(),),
    weights: Sequence[float] | None = None,
    *,
    clean_diffs: bool = False,
    chunk_size: int | None = None,
    on_pass: Callable[[int], None] | None = None,
    by_position: bool = False,
) -> GradientPass:
    """``sum_k weights[k] * d loss / d mask`` at uniform masks ``points``, for every edge at once.

    Args:
        problem: a :class:`~circuitfind.problem.Problem` (model, prompts, ablation, loss).
        points: where the gradients are taken.
        weights: one per point (default 1 each).
        clean_diffs: multiply every point's receiver gradients by the clean sender diffs (``live - ablated``
            at "all kept") instead of the point's own diffs: EAP-IG along the inputs. The receiver gradients are
            then summed over the points before the one product with the diffs.
        chunk_size: prompts per pass (default: the problem's chunk policy for an attribution pass,
            ``problem.prompts_per_pass(PassKind.ATTRIBUTION)``); the result does not depend on it.
        on_pass: called with the number of prompts after each forward-backward pass.
        by_position: keep the position axis: ``grad`` is ``(S, R, T)``, the gradient with respect to a per-position
            mask ``mask[s, r, t]`` (summed over prompts only; its sum over ``t`` is the ``(S, R)`` gradient).

    Returns:
        a :class:`GradientPass`.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from circuitfind.problem import Problem
        >>> from circuitfind.engine.patchable import PatchableModel
        >>> pm = PatchableModel(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20)))
        >>> clean, corrupted = torch.randint(20, (2, 3, 4))
        >>> loss = lambda logits: logits[..., 0].mean(-1)  # (K, B, V) -> (K,)
        >>> last = torch.full((3,), 3)  # the position each prompt's metric reads
        >>> problem = Problem(pm, clean, torch.ones_like(clean), last, pm.ablation("resample", corrupted), loss)
        >>> eap_scores = -edge_gradients(problem).grad  # the first-order loss change when each edge alone is removed
        >>> eap_scores.shape  # (senders, receivers)
        torch.Size([4, 8])
    """
    points = list(points)
    weights = [1.0] * len(points) if weights is None else [float(w) for w in weights]
    if not points or len(weights) != len(points):
        raise ConfigError(f"need one weight per point; got {len(points)} points and {len(weights)} weights")
    B = problem.clean_ids.shape[0]
    if chunk_size is None:
        chunk_size = problem.prompts_per_pass(PassKind.ATTRIBUTION)
    chunk = check_int(chunk_size, "chunk_size", what="prompts per pass")
    pm = problem.pm
    g = pm.graph
    shape = (g.n_senders, g.n_receivers, *((problem.clean_ids.shape[1],) if by_position else ()))
    grad = torch.zeros(shape, dtype=torch.float64, device=pm.device)
    contract = _contract_by_position if by_position else _contract
    # d loss / d logits of one chunk: exact per chunk for a mean over prompts; otherwise from the whole batch
    whole = chunk >= B or getattr(problem, "separable", False)
    cots = None if whole else [_loss_grad(problem, p, chunk) for p in points]
    logits_at: list[list[Tensor]] = [[] for _ in points]
    for i in range(0, B, chunk):
        rows = slice(i, min(i + chunk, B))
        b = rows.stop - rows.start
        receiver_grads, diffs = None, None
        for k, (point, weight) in enumerate(zip(points, weights, strict=True)):
            logits, taps, grads, own = _tap_grads(problem, point, rows, None if cots is None else cots[k][rows])
            logits_at[k].append(logits.detach())
            if clean_diffs and point == Point():
                diffs = own  # the clean pass is one of the points (EAP-IG's last): its diffs come for free
            receiver_grads = _receiver_grads(pm, dict(zip(taps, grads, strict=True)), taps, weight, receiver_grads)
            if not clean_diffs:
                contract(pm, grad, own, receiver_grads)
                receiver_grads = None
            if on_pass is not None:
                on_pass(b)
        if clean_diffs:
            if diffs is None:
                with torch.no_grad():
                    diffs = _forward(problem, Point(), rows, False)[2]
            assert receiver_grads is not None  # points is not empty: every point added to it
            contract(pm, grad, diffs, receiver_grads)
    grad *= g.edge_mask.to(grad.device).view(*g.edge_mask.shape, *((1,) if by_position else ()))
    with torch.no_grad():
        losses = [float(problem.loss(torch.cat(lg).unsqueeze(0))[0]) for lg in logits_at]
    return GradientPass(grad, losses)


def _tap_grads(problem, point: Point, rows: slice, cot: Tensor | None):
    """One pass over the prompts ``rows`` at ``point``: its logits, taps, the loss gradients at the taps, and the
    sender diffs. ``cot``: d loss / d logits of these rows (a separable metric, or from the whole batch); None:
    the loss of the whole batch with these rows' logits in place and zeros elsewhere (exact for a mean)."""
    with torch.enable_grad():
        logits, taps, own = _forward(problem, point, rows, True)
        if cot is not None:
            out = logits
        else:
            B = problem.clean_ids.shape[0]
            where = torch.arange(rows.start, rows.stop, device=logits.device)
            out = problem.loss(logits.new_zeros((B, logits.shape[-1])).index_copy(0, where, logits).unsqueeze(0))[0]
        grads = torch.autograd.grad(out, list(taps.values()), grad_outputs=cot, allow_unused=True)
    return logits, taps, grads, own


def _forward(problem, point: Point, rows: slice, taps: bool | None):
    """The uniform-mask forward on prompts ``rows``.

    Returns ``(logits (b, V'), taps, diffs (S, b, T, D))``; with ``taps`` None only the logits are meaningful.
    Taps hold, per layer, the attention group's input, the q/k/v projections and the MLP input, and the logits'
    input; all carry autograd history when ``taps`` is True.
    """
    pm = problem.pm
    spec, g = pm.spec, pm.graph
    B = problem.clean_ids.shape[0]
    ids = problem.clean_ids[rows].to(pm.device)
    am = problem.attention_mask[rows].to(pm.device)
    b, T = ids.shape
    ablated = problem.ablated.select(rows, B)
    outputs, bases = ablated.outputs, ablated.bases  # (S | G, b|1, T|1, D)
    a = float(point.mask_scale)
    pos_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
    buf = torch.empty(g.n_senders, b, T, spec.d_model, dtype=pm.dtype, device=pm.device)
    tapped: dict[str, Tensor] = {}

    def tap(name: str, t: Tensor) -> Tensor:
        if taps:
            tapped[name] = t
        return t

    def note(first: int, d: Tensor) -> None:  # (n, b, T, D) diffs of senders first..first+n
        buf[first : first + d.shape[0]] = d.detach()

    with _frozen(pm.module), torch.set_grad_enabled(bool(taps)):
        emb = spec.embed(ids, pos_ids)  # (b, T, D)
        diff = point.input_scale * (emb - outputs[0])  # (b, T, D)
        if taps:  # the weights are frozen: autograd's graph starts here
            diff = diff.detach().requires_grad_(True)
        note(0, diff.unsqueeze(0))
        acc = diff  # sum of the diffs of every sender so far
        biases = attention_biases(pm.spec, am, 1, dtype=pm.dtype, device=pm.device)
        rot = rotary_tables(pm.spec, pos_ids, pm.dtype)
        H = spec.n_heads
        for layer, lay in enumerate(spec.layers):
            first = g.head_sender(layer, 0)
            x = tap(f"x{layer}", bases[2 * layer] + a * acc)  # (b, T, D)
            q, k, v = project_qkv(lay, lay.attn_norm(x)[None, None])  # (1, b, H, T, E) each
            q, k, v = tap(f"q{layer}", q), tap(f"k{layer}", k), tap(f"v{layer}", v)
            z = attend(pm.spec, lay, q, k, v, rot, biases[lay.sliding_window])  # (1, b, H, T, E)
            heads = head_outputs(lay, z)[0] - outputs[first : first + H]  # (H, b, T, D)
            note(first, heads)
            head_sum = heads.sum(0)  # (b, T, D)
            xm = tap(f"m{layer}", bases[2 * layer + 1] + a * (acc if g.parallel else acc + head_sum))
            mlp = lay.mlp(lay.mlp_norm(xm)) - outputs[g.mlp_sender(layer)]  # (b, T, D)
            note(g.mlp_sender(layer), mlp.unsqueeze(0))
            acc = acc + head_sum + mlp
        final = tap("final", bases[2 * g.n_layers] + a * acc)  # (b, T, D)
        at = final[torch.arange(b, device=pm.device), problem.positions[rows].to(pm.device)]  # (b, D)
        logits = spec.logits(spec.final_norm(at), problem.vocab)  # (b, V')
    return logits, tapped, buf


def _receiver_grads(
    pm, tap_grads: dict[str, Tensor | None], taps: dict[str, Tensor], weight: float, into: Tensor | None
) -> Tensor:
    """``d loss / d input_r`` of every receiver ``(R, b, T, D)``, times ``weight``, added to ``into`` if given."""
    spec, g = pm.spec, pm.graph
    H = spec.n_heads
    x0 = taps["final"]
    # accumulated over points in at least float32: bfloat16 sums of many small gradients lose their low bits
    wide = torch.promote_types(x0.dtype, torch.float32)
    out = x0.new_zeros((g.n_receivers, *x0.shape), dtype=wide) if into is None else into

    def grad_of(name: str) -> Tensor:
        grad = tap_grads[name]
        return grad if grad is not None else torch.zeros_like(taps[name])

    for layer, lay in enumerate(spec.layers):
        # a pass that starts above a receiver (EAP-IG along the activations) has no tap there: its gradient is 0
        if f"m{layer}" in taps:
            out[g.mlp_receiver(layer)].add_(grad_of(f"m{layer}"), alpha=weight)
        if f"x{layer}" not in taps:
            continue
        # per receiver, its own copy of the group's input: each head's q, k, v reads only its own copy, so one
        # vector-Jacobian product through the norm and the projections (q/k norms included) splits the gradient
        x = taps[f"x{layer}"].detach()
        cots = tuple(grad_of(f"{c}{layer}") for c in "qkv")  # (1, b, H, T, E) each
        with torch.enable_grad():
            xs = x.unsqueeze(0).expand(3 * H, *x.shape).clone().requires_grad_(True)  # (3H, b, T, D)
            qkv = project_qkv(lay, lay.attn_norm(xs).unsqueeze(0))
            (per_receiver,) = torch.autograd.grad(qkv, xs, grad_outputs=cots)  # (3H, b, T, D)
        r0 = g.receivers_from(layer)
        out[r0 : r0 + 3 * H].add_(per_receiver, alpha=weight)
    out[g.logits_receiver].add_(grad_of("final"), alpha=weight)
    return out


def _contract(pm, grad: Tensor, diffs: Tensor, receiver_grads: Tensor) -> None:
    """``grad[s, r] += sum over prompts and positions of diffs[s] . receiver_grads[r]``: one matrix product
    (non-edges are computed too and masked later; one large product beats many thin ones)."""
    S, R = diffs.shape[0], receiver_grads.shape[0]
    wide = torch.promote_types(receiver_grads.dtype, torch.float32)  # a bfloat16 product rounds every score
    d = diffs.to(wide).reshape(S, -1)  # (S, b*T*D)
    grad += (d @ receiver_grads.to(wide).reshape(R, -1).T).double()


def _contract_by_position(pm, grad: Tensor, diffs: Tensor, receiver_grads: Tensor) -> None:
    """``grad[s, r, t] += sum over prompts of diffs[s, :, t] . receiver_grads[r, :, t]``: one batched matrix
    product over positions."""
    S, b, T, D = diffs.shape
    wide = torch.promote_types(receiver_grads.dtype, torch.float32)
    d = diffs.to(wide).permute(2, 0, 1, 3).reshape(T, S, b * D)  # (T, S, b*D)
    g = receiver_grads.to(wide).permute(2, 1, 3, 0).reshape(T, b * D, -1)  # (T, b*D, R)
    grad += torch.bmm(d, g).permute(1, 2, 0).double()  # (S, R, T)
