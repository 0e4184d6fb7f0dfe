"""Head roles: what each attention head does, scored the way the IOI and induction-head papers measure it.

Attention roles are read on repeated random-token sequences ``[bos] r_1 .. r_n r_1 .. r_n`` (distinct tokens
within ``r``), averaged over sequences:

* ``previous_token``: mean attention from every token (but the first) to the token just before it;
* ``duplicate_token``: mean attention from each token of the second half to its earlier copy (``i -> i - n``);
* ``induction``: mean attention from each token of the second half to the token after its earlier copy
  (``i -> i - n + 1``), the pattern that lets a head predict the repeat.

``copying`` reads the OV circuit alone, as the IOI paper does: for a sample of tokens, the token's
representation goes through the block's norm, the head's value and output weights, the final norm and the
unembedding; the score is the fraction of sampled tokens whose own logit is among the top 5 of the sample's. A
head that copies what it attends to scores near 1; a random one near ``5 / sample``. The representation is the
token's embedding for heads of block 0 and, for later heads, the residual stream after block 0 on the token alone
(the IOI paper's "after the first MLP": many models build their token representation there), minus the sample's
mean, which removes position embeddings and the shared direction.

``direct_effect`` (with a task) is the head's mean direct effect on the task's logit difference
(:func:`~circuitfind.analysis.activations.direct_effects`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from einops import einsum
from torch import Tensor

from circuitfind.analysis.activations import attention_patterns, clean_run, direct_effects
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.graph import Node, NodeKind
from circuitfind.selection.cuts import edge_ranking

__all__ = ["COLUMNS", "HeadRoles", "copying_scores", "head_roles", "repeated_tokens"]

COLUMNS: MappingProxyType[str, str] = MappingProxyType(
    {
        "previous_token": "mean attention to the previous token on repeated random tokens (0..1)",
        "duplicate_token": "mean attention to the earlier copy of the current token on repeated random tokens (0..1)",
        "induction": "mean attention to the token after the earlier copy of the current token (0..1)",
        "copying": "fraction of sampled tokens the head's OV circuit maps to themselves (own logit in the top 5)",
        "direct_effect": "mean direct effect on the task's logit difference, frozen final norm (NaN: no task)",
    }
)
"""The role columns of :class:`HeadRoles`, with what each measures."""

TOP_K_COPY = 5


@dataclass(frozen=True)
class HeadRoles:
    """Role scores of every head: a table with one row per head.

    Attributes:
        n_layers: blocks of the model.
        n_heads: query heads per block.
        scores: column name (see :data:`COLUMNS`) -> ``(L, H)`` float tensor.
        settings: how the scores were measured (sequences, lengths, sample sizes, seed, task).

    Example:
        >>> roles = head_roles(pm, length=3)
        >>> len(roles.top("induction", 1)), roles.scores["induction"].shape
        (1, torch.Size([1, 2]))
    """

    n_layers: int
    n_heads: int
    scores: dict[str, Tensor]
    settings: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head, in layer-then-head order: ``head`` (its name), ``layer``, ``index`` and the scores."""
        out = []
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                row: dict[str, Any] = {"head": Node(NodeKind.HEAD, layer, h).name, "layer": layer, "index": h}
                row.update({c: float(t[layer, h]) for c, t in self.scores.items()})
                out.append(row)
        return out

    def top(self, column: str, n: int = 5, *, absolute: bool = False) -> list[tuple[str, float]]:
        """The ``n`` heads with the highest score in ``column`` (by ``|score|`` with ``absolute``)."""
        if column not in self.scores:
            raise ConfigError(f"unknown role column {column!r}; this table has {sorted(self.scores)}")
        t = self.scores[column].flatten()
        order = edge_ranking(torch.ones(t.shape, dtype=torch.bool), t, absolute=absolute)[:n].tolist()  # NaN last
        heads = [Node(NodeKind.HEAD, *divmod(i, self.n_heads)) for i in order]
        return [(head.name, float(t[i])) for head, i in zip(heads, order, strict=True) if not math.isnan(t[i])]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"columns": {name: doc}, "settings": ..., "rows": [...]}`` (NaN as None)."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows()]
        return {"columns": {c: COLUMNS[c] for c in self.scores}, "settings": self.settings, "rows": rows}


def repeated_tokens(
    vocab_size: int, *, n_seqs: int = 8, length: int = 20, bos: int | None = None, seed: int = 0
) -> Tensor:
    """``(n_seqs, [1 +] 2 * length)`` sequences ``[bos] r r``, ``r`` of ``length`` distinct random tokens.

    Example:
        >>> ids = repeated_tokens(100, n_seqs=2, length=3, bos=0)
        >>> ids.shape, bool((ids[:, 1:4] == ids[:, 4:7]).all())
        (torch.Size([2, 7]), True)
    """
    if length < 2 or length > vocab_size:
        raise ConfigError(f"length must be in 2..{vocab_size} (distinct tokens of the vocabulary); got {length}")
    gen = torch.Generator().manual_seed(seed)
    pool = torch.arange(vocab_size)
    if bos is not None:
        pool = pool[pool != bos]
    halves = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:length]] for _ in range(n_seqs)])
    seqs = torch.cat([halves, halves], dim=1)  # (n, 2 * length)
    if bos is not None:
        seqs = torch.cat([torch.full((n_seqs, 1), bos, dtype=torch.long), seqs], dim=1)
    return seqs


def _attention_roles(patterns: Tensor, length: int, first: int) -> dict[str, Tensor]:
    """Mean attention along the three diagonals, from ``(L, B, H, T, T)`` patterns on ``[bos] r r`` sequences."""
    T = patterns.shape[-1]
    second = torch.arange(first + length, T)  # query positions of the second half

    def diagonal(queries: Tensor, offset: int) -> Tensor:
        return patterns[..., queries, queries - offset].mean(-1).mean(1)  # (L, H)

    return {
        "previous_token": diagonal(torch.arange(first + 1, T), 1),
        "duplicate_token": diagonal(second, length),
        "induction": diagonal(second, length - 1),
    }


def copying_scores(pm: PatchableModel, *, sample: int = 256, seed: int = 0, negative: bool = False) -> Tensor:
    """``(L, H)``: the fraction of ``sample`` random tokens that each head's OV circuit maps to themselves.

    See the module docstring for the path; "maps to itself" means the token's own logit is among the top 5 of
    the sampled tokens' logits. With ``negative`` the OV circuit's logits are negated: the score is then the
    fraction of tokens whose own logit is among the *lowest* 5 (a head that suppresses what it attends to, as
    the IOI paper's negative name movers do).

    Example:
        >>> copying_scores(pm, sample=16).shape
        torch.Size([1, 2])
    """
    spec, g = pm.spec, pm.graph
    vocab = spec.vocab_size or spec.n_outputs
    if vocab is None:
        raise ConfigError("copying scores need the model's vocabulary size (spec.vocab_size); it is unknown")
    n_out = spec.n_outputs or vocab
    n = min(sample, vocab, n_out)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(min(vocab, n_out), generator=gen)[:n].to(pm.device)  # (N,)
    k = TOP_K_COPY
    out = torch.zeros(g.n_layers, g.n_heads)
    with torch.no_grad():
        after0 = clean_run(pm, ids[:, None], n_blocks=1)  # every token alone, through block 0
        emb = after0.outputs[0, :, 0]  # (N, D): the embeddings
        eff = after0.final[:, 0]  # (N, D): the residual stream after block 0
        emb, eff = emb - emb.mean(0, keepdim=True), eff - eff.mean(0, keepdim=True)
        zero = spec.logits(spec.final_norm(torch.zeros_like(emb[:1])), ids)  # (1, N): the logits' bias, if any
        for layer, lay in enumerate(spec.layers):
            x = lay.attn_norm(emb if layer == 0 else eff)  # (N, D)
            v = einsum(x, lay.attn.W_V, "n d, h d e -> h n e")
            if lay.attn.b_V is not None:
                v = v + lay.attn.b_V[:, None]
            o = einsum(v, lay.attn.W_O, "h n e, h e d -> h n d")  # (H, N, D)
            logits = spec.logits(spec.final_norm(o), ids) - zero  # (H, N, N): row = input token, column = output
            logits = -logits if negative else logits
            own = logits.diagonal(dim1=-2, dim2=-1)  # (H, N)
            rivals = (logits >= own[..., None]).sum(-1) - 1  # (H, N): other tokens at least as high (ties count)
            out[layer] = (rivals < k).float().mean(-1).cpu()
    return out


def head_roles(
    pm: PatchableModel,
    task=None,
    *,
    n_seqs: int = 8,
    length: int = 20,
    bos: int | None = None,
    sample: int = 256,
    seed: int = 0,
) -> HeadRoles:
    """Score every head on each role of :data:`COLUMNS`.

    Args:
        pm: the model (a :class:`PatchableModel`; wrap a transformers model with ``PatchableModel(model)``).
        task: a :class:`~circuitfind.tasks.Task` with answers for ``direct_effect`` (its train split); None
            leaves that column NaN.
        n_seqs: repeated random-token sequences.
        length: tokens in each half of a sequence (fewer when the model's learned positions end sooner).
        bos: a token to start every sequence with (e.g. ``tokenizer.bos_token_id``), or None.
        sample: tokens sampled for ``copying``.
        seed: seed of the random tokens.

    Returns:
        the :class:`HeadRoles` table.

    Example:
        >>> roles = head_roles(pm, task, length=3, bos=0)  # real models: bos=tokenizer.bos_token_id
        >>> roles.rows()[1]["head"], roles.top("direct_effect", 1, absolute=True)[0][0] in ("a0.h0", "a0.h1")
        ('a0.h1', True)
    """
    vocab = pm.spec.vocab_size
    if vocab is None:
        raise ConfigError("head roles need the model's vocabulary size (spec.vocab_size); it is unknown")
    if pm.spec.max_positions is not None:  # learned positions: both halves (and the bos) must fit
        length = min(length, (pm.spec.max_positions - (bos is not None)) // 2)
    ids = repeated_tokens(vocab, n_seqs=n_seqs, length=length, bos=bos, seed=seed).to(pm.device)
    patterns = attention_patterns(pm, ids).float().cpu()  # (L, B, H, T, T)
    scores = _attention_roles(patterns, length, 1 if bos is not None else 0)
    scores["copying"] = copying_scores(pm, sample=sample, seed=seed)
    g = pm.graph
    direct = torch.full((g.n_layers, g.n_heads), math.nan)
    if task is not None:
        task = task.train()
        de = direct_effects(pm, task).mean(-1).float().cpu()  # (S,)
        for layer in range(g.n_layers):
            first = g.head_sender(layer, 0)
            direct[layer] = de[first : first + g.n_heads]
    scores["direct_effect"] = direct
    settings = {
        "n_seqs": n_seqs,
        "length": length,
        "bos": bos,
        "copy_sample": int(min(sample, vocab)),
        "copy_top_k": TOP_K_COPY,
        "seed": seed,
        "task": None if task is None else task.name,
        "task_prompts": None if task is None else len(task),
    }
    return HeadRoles(g.n_layers, g.n_heads, scores, settings)
