"""Which prompt every part of a scrubbed run reads: the context tree of a hypothesis and the seeded draws.

A *context* is one evaluation of the model on one prompt. The root context runs on the draw's original prompt;
every node with labels that a context consumes through a kept edge is evaluated in a child context, on a
prompt that agrees with the parent context's prompt on that node's labels. Inside a context, nodes without
labels run on the context's prompt, and edges outside the hypothesis carry the sender's clean output on a
resampled prompt. Joint mode (the default): one child context per (context, labelled node) and one resampled
prompt per draw for every left-out edge. Independent mode: one child context per (context, labelled node,
consuming receiver) and one resampled prompt per (context, left-out edge).

Every prompt a draw reads shares the original's length (equal attention masks): only then do positions line
up between prompts. "Another prompt" excludes the prompt itself; a labelled node whose agreeing class has no
other prompt of that length runs on the prompt itself.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, TaskError, check_int

__all__ = ["MAX_CONTEXTS", "MAX_SAMPLES", "ContextTree", "ScrubPlan", "context_tree", "make_plan"]

MAX_CONTEXTS = 256
"""The most contexts (model evaluations per draw) a hypothesis may need; more is refused with a clear error."""

MAX_SAMPLES = 10_000
"""The most draws one scrub may take: the draws' logits are held together (one vocabulary row per draw)."""


@dataclass(frozen=True)
class ContextTree:
    """The contexts a hypothesis needs per draw (no randomness here).

    Attributes:
        parents: parent context of each context (-1 for the root, context 0).
        heads: the labelled sender each context evaluates (-1 for the root, which evaluates the logits).
        children: ``(context, sender, receiver)`` -> child context; the receiver is -1 in joint mode.
        active: ``(C, R)`` bool, receivers whose input a context uses.
    """

    parents: tuple[int, ...]
    heads: tuple[int, ...]
    children: dict[tuple[int, int, int], int]
    active: Tensor

    @property
    def n(self) -> int:
        return len(self.parents)


@dataclass(frozen=True)
class ScrubPlan:
    """The seeded draws of one scrub.

    Attributes:
        tree: the contexts.
        originals: ``(B,)`` the original prompt of each draw (balanced: every eligible prompt equally often, +-1).
        resamples: ``(B,)`` joint mode: the other prompt every left-out edge of the draw reads.
        prompts: ``(C, B)`` the prompt each context runs on (row 0 = ``originals``).
        edge_prompts: independent mode only: ``(C, S, R, B)`` the prompt each left-out edge into each receiver
            reads, per context; None in joint mode.
        independent: the mode.
        unpaired: prompts with no other prompt of their length (never an original, never resampled).
    """

    tree: ContextTree
    originals: Tensor
    resamples: Tensor
    prompts: Tensor
    edge_prompts: Tensor | None
    independent: bool
    unpaired: tuple[int, ...] = ()

    @property
    def n_samples(self) -> int:
        return int(self.originals.shape[0])


def context_tree(graph, kept: Tensor, labelled: Tensor, independent: bool) -> ContextTree:
    """The contexts ``kept`` (``(S, R)`` bool) and ``labelled`` (``(S,)`` bool) need, breadth first.

    Example:
        >>> kept = pm.graph.full_mask()
        >>> labelled = torch.zeros(pm.graph.n_senders, dtype=torch.bool)
        >>> labelled[pm.graph.head_sender(0, 1)] = True
        >>> t = context_tree(pm.graph, kept, labelled, independent=False)
        >>> t.n, t.heads  # the root and one context for the labelled head
        (2, (-1, 2))
    """
    receivers_of = [(graph.receiver_nodes == s).nonzero().flatten().tolist() for s in range(graph.n_senders)]
    parents, heads, children, active = [-1], [-1], {}, []
    c = 0
    while c < len(parents):
        start = [graph.logits_receiver] if heads[c] < 0 else receivers_of[heads[c]]
        used, edges = _walk(start, kept, labelled, receivers_of)
        row = torch.zeros(graph.n_receivers, dtype=torch.bool)
        row[sorted(used)] = True
        active.append(row)
        for s, r in edges:
            key = (c, s, r if independent else -1)
            if key not in children:
                children[key] = len(parents)
                parents.append(c)
                heads.append(s)
        if len(parents) > MAX_CONTEXTS:
            raise ConfigError(
                f"this hypothesis needs more than {MAX_CONTEXTS} model evaluations per draw (labelled nodes feeding "
                "labelled nodes multiply them, and independent=True gives each consuming receiver its own); label "
                "fewer nodes, or use the default joint mode"
            )
        c += 1
    return ContextTree(tuple(parents), tuple(heads), children, torch.stack(active))


def _walk(start: list[int], kept: Tensor, labelled: Tensor, receivers_of: list[list[int]]):
    """Receivers used in one context (from ``start`` down through unlabelled kept senders) and its labelled
    ``(sender, receiver)`` kept edges."""
    used, stack, nodes, edges = set(start), list(start), set(), set()
    while stack:
        r = stack.pop()
        for s in kept[:, r].nonzero().flatten().tolist():
            if labelled[s]:
                edges.add((s, r))
            elif s not in nodes:
                nodes.add(s)
                fresh = [x for x in receivers_of[s] if x not in used]
                used.update(fresh)
                stack.extend(fresh)
    return used, sorted(edges)


def make_plan(graph, hyp, attention_mask: Tensor, n_samples: int, seed: int, independent: bool) -> ScrubPlan:
    """The seeded draws for a resolved hypothesis on a task with ``attention_mask`` ``(N, T)``.

    Example:
        >>> from circuitfind.scrubbing import Hypothesis
        >>> hyp = Hypothesis(pm.graph.full_mask()).resolve(pm.graph, 3)
        >>> plan = make_plan(pm.graph, hyp, task.attention_mask, 6, seed=0, independent=False)
        >>> sorted(plan.originals.tolist()), bool((plan.resamples != plan.originals).all())
        ([0, 0, 1, 1, 2, 2], True)
    """
    check_int(n_samples, "n_samples", what="draws of (prompt, resample)")
    if n_samples > MAX_SAMPLES:
        raise ConfigError(
            f"n_samples must be at most {MAX_SAMPLES} (every draw keeps a row of logits); got {n_samples}. The "
            "interval narrows as 1/sqrt(n_samples): a few thousand draws are plenty"
        )
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ConfigError(f"seed (of the draws) must be an integer; got {seed!r}") from None
    am = attention_mask.cpu()
    same = (am[:, None, :] == am[None, :, :]).all(-1)  # (N, N) prompts whose positions line up
    other = same & ~torch.eye(len(am), dtype=torch.bool)
    eligible = other.any(1).nonzero().flatten()
    if len(eligible) == 0:
        raise TaskError(
            "causal scrubbing resamples from another prompt of the same length, but no two prompts of this task "
            "have the same length (attention mask); use a task with several prompts per template"
        )
    gen = torch.Generator().manual_seed(int(seed))
    tree = context_tree(graph, hyp.kept, hyp.labelled_mask(graph.n_senders), independent)
    rounds = -(-n_samples // len(eligible))
    originals = torch.cat([eligible[torch.randperm(len(eligible), generator=gen)] for _ in range(rounds)])[:n_samples]
    resamples = _pick(other[originals], originals, gen)
    chosen = [originals]
    for c in range(1, tree.n):
        parent = chosen[tree.parents[c]]
        labels = hyp.labels[tree.heads[c]]
        agree = other & (labels[:, None] == labels[None, :])
        chosen.append(_pick(agree[parent], parent, gen))
    prompts = torch.stack(chosen)  # (C, B)
    edge_prompts = _edge_prompts(graph, other, prompts, gen) if independent else None
    unpaired = tuple((~other.any(1)).nonzero().flatten().tolist())
    return ScrubPlan(tree, originals, resamples, prompts, edge_prompts, independent, unpaired)


def _pick(candidates: Tensor, fallback: Tensor, gen: torch.Generator) -> Tensor:
    """One prompt per row, uniform over the row's True ``candidates`` ``(B, N)``; ``fallback`` where none is."""
    empty = ~candidates.any(1)
    weights = candidates.float()
    weights[empty, 0] = 1.0
    picked = torch.multinomial(weights, 1, generator=gen).flatten()
    return torch.where(empty, fallback, picked)


def _edge_prompts(graph, other: Tensor, prompts: Tensor, gen: torch.Generator) -> Tensor:
    """``(C, S, R, B)``: a separate other prompt of the context's prompt's length for every edge and row."""
    C, B = prompts.shape
    S, R = graph.n_senders, graph.n_receivers
    flat = prompts.flatten()  # (C*B,)
    draws = torch.multinomial(other[flat].float(), S * R, replacement=True, generator=gen)  # (C*B, S*R)
    return draws.reshape(C, B, S, R).permute(0, 2, 3, 1).contiguous()
