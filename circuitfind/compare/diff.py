"""What differs between two models of the same structure on a task (a base model and its fine-tune).

:func:`diff` finds both circuits with one method and compares them (Jaccard, edges only in A / only in B with
their scores), and compares the models node by node:

* weights: ``||W_A - W_B||`` over the tensors that belong to each node
  (:func:`circuitfind.models.weights.node_weights`: a head's own q/k/v/o slices plus its block's attention
  norm; an MLP's parameters and norm; the embedding table). With grouped-query attention the shared key/value
  weights are repeated per query head, so a change of a shared k/v weight is attributed to every query head of
  its group.
* activations: the mean over the task's clean prompts and real tokens of ``||out_A - out_B||`` of each node's
  output on a clean run (and relative to the mean ``||out_A||``);
* predictions: the largest per-token log-prob differences ``log p_A - log p_B`` of each prompt's next tokens
  (and of the answer at the answer position).

Both models must share the graph (layers, heads, block layout), the residual width, the vocabulary and, when
both are known, the tokenizer's vocabulary: a :class:`~circuitfind.errors.ConfigError` says what differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.analysis.activations import clean_run
from circuitfind.discovery import discover
from circuitfind.engine.patchable import resolve_model
from circuitfind.errors import ConfigError, check_int
from circuitfind.models.weights import node_weights
from circuitfind.selection.cuts import edge_ranking
from circuitfind.tasks import resolve_task
from circuitfind.viewer.diffview import diff_html

__all__ = ["ModelDiff", "activation_diffs", "check_comparable", "diff", "logprob_diffs", "weight_diffs"]

CHUNK = 8  # prompts per clean run when comparing activations


@dataclass(frozen=True)
class ModelDiff:
    """The comparison of two models on one task (all lists sorted, largest first).

    Attributes:
        model_a, model_b: the models' names.
        task: the task's name.
        circuit_a, circuit_b: both :class:`~circuitfind.circuit.Circuit` (same method and cut).
        jaccard: ``|A & B| / |A | B|`` of their edge sets (1.0 when both are empty).
        only_a, only_b: ``{"edge", "score_a", "score_b"}`` for the edges in one circuit only, by ``|score|`` in it.
        weights: ``{"node", "diff", "norm_a", "relative"}`` per node, by ``diff``.
        activations: ``{"node", "diff", "norm_a", "relative"}`` per node, by ``diff``.
        logprobs: ``{"prompt", "position", "token", "logprob_a", "logprob_b", "diff"}`` by ``|diff|``.
    """

    model_a: str
    model_b: str
    task: str
    circuit_a: Any
    circuit_b: Any
    jaccard: float
    only_a: list[dict[str, Any]]
    only_b: list[dict[str, Any]]
    weights: list[dict[str, Any]]
    activations: list[dict[str, Any]]
    logprobs: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None); the circuits as their edge counts and methods (save them separately)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean(
            {
                "model_a": self.model_a,
                "model_b": self.model_b,
                "task": self.task,
                "settings": self.settings,
                "jaccard": self.jaccard,
                "n_edges_a": self.circuit_a.n_edges,
                "n_edges_b": self.circuit_b.n_edges,
                "only_a": self.only_a,
                "only_b": self.only_b,
                "weights": self.weights,
                "activations": self.activations,
                "logprobs": self.logprobs,
            }
        )

    def to_html(self, path, **kwargs):
        """The two-model explorer (:func:`circuitfind.viewer.diffview.diff_html`): both circuits in one graph."""
        return diff_html(self, path, **kwargs)


def _vocab_of(tokenizer: Any) -> dict | None:
    get = getattr(tokenizer, "get_vocab", None)
    return get() if callable(get) else None


def check_comparable(pm_a, pm_b, tokenizer_a: Any = None, tokenizer_b: Any = None) -> None:
    """Raise :class:`ConfigError` unless both models share graph, width, vocabulary and tokenizer.

    Example:
        >>> check_comparable(pm, pm)  # a model is comparable with itself
    """
    sa, sb = pm_a.spec, pm_b.spec
    checks = [
        ("graph", pm_a.graph.describe(), pm_b.graph.describe()),
        ("residual width (d_model)", sa.d_model, sb.d_model),
        ("head width (d_head)", sa.d_head, sb.d_head),
        ("vocabulary size", sa.vocab_size, sb.vocab_size),
        ("logit columns", sa.n_outputs or sa.vocab_size, sb.n_outputs or sb.vocab_size),
    ]
    for what, a, b in checks:
        if a != b:
            raise ConfigError(
                f"the two models differ in {what}: A has {a}, B has {b}. A diff compares models of the same "
                "structure (a base model and its fine-tune); pick two with the same graph, tokenizer and vocabulary"
            )
    _check_weight_layout(pm_a, pm_b)
    va, vb = _vocab_of(tokenizer_a), _vocab_of(tokenizer_b)
    if va is not None and vb is not None and va != vb:
        n = len(set(va.items()) ^ set(vb.items()))
        raise ConfigError(
            f"the two models' tokenizers differ ({n} token/id pairs are not shared): the same ids would be "
            "different text. Compare models that share one tokenizer"
        )


def _check_weight_layout(pm_a, pm_b) -> None:
    """Raise :class:`ConfigError` unless every node has tensors of the same shapes in both models (same family)."""
    wa, wb = node_weights(pm_a.spec), node_weights(pm_b.spec)
    for name, ta, tb in zip(pm_a.graph.sender_names, wa, wb, strict=True):
        sa, sb = [tuple(t.shape) for t in ta], [tuple(t.shape) for t in tb]
        if sa != sb:
            raise ConfigError(
                f"the two models' weights of node {name} differ in layout: A has tensors {sa}, B has {sb} (a "
                "different architecture, biases or MLP). A diff compares models of the same structure (a base "
                "model and its fine-tune); pick two of the same family and configuration"
            )


def weight_diffs(pm_a, pm_b) -> Tensor:
    """``(S, 2)``: per sender, ``||W_A - W_B||`` and ``||W_A||`` over its weights (NaN: it has none).

    Example:
        >>> weight_diffs(pm, pm)[:, 0].nan_to_num().abs().max().item()
        0.0
    """
    wa, wb = node_weights(pm_a.spec), node_weights(pm_b.spec)
    out = torch.full((len(wa), 2), math.nan, dtype=torch.float64)
    for i, (ta, tb) in enumerate(zip(wa, wb, strict=True)):
        if not ta or len(ta) != len(tb):
            continue
        d = sum(float((a.double() - b.to(a.device).double()).pow(2).sum()) for a, b in zip(ta, tb, strict=True))
        n = sum(float(a.double().pow(2).sum()) for a in ta)
        out[i] = torch.tensor([math.sqrt(d), math.sqrt(n)])
    return out


def activation_diffs(pm_a, pm_b, task) -> Tensor:
    """``(S, 2)``: per sender, the mean over real tokens of ``||out_A - out_B||`` and of ``||out_A||``.

    Example:
        >>> activation_diffs(pm, pm, task)[:, 0].abs().max().item()
        0.0
    """
    sums = torch.zeros(pm_a.graph.n_senders, 2, dtype=torch.float64)
    count = 0
    for i in range(0, len(task), CHUNK):
        t = task.subset(slice(i, i + CHUNK))
        oa = clean_run(pm_a, t.clean_ids, t.attention_mask).outputs.double()  # (S, B, T, D)
        ob = clean_run(pm_b, t.clean_ids, t.attention_mask).outputs.double().to(oa.device)
        real = t.attention_mask.to(oa.device).bool()  # (B, T)
        sums[:, 0] += (oa - ob).norm(dim=-1)[:, real].sum(-1).cpu()
        sums[:, 1] += oa.norm(dim=-1)[:, real].sum(-1).cpu()
        count += int(real.sum())
    return sums / max(count, 1)


def _logprobs(pm, t) -> Tensor:  # (B, T, V) log-probs of a clean run
    run = clean_run(pm, t.clean_ids, t.attention_mask)
    with torch.no_grad():
        logits = pm.spec.logits(pm.spec.final_norm(run.final))
        return torch.log_softmax(logits.double(), dim=-1).cpu()


def logprob_diffs(pm_a, pm_b, task, tokenizer: Any = None, top: int = 20) -> list[dict[str, Any]]:
    """The ``top`` largest ``|log p_A - log p_B|`` of each prompt's next tokens (the answer at the answer position).

    Example:
        >>> rows = logprob_diffs(pm, pm, task, top=2)
        >>> len(rows), rows[0]["diff"]
        (2, 0.0)
    """
    found: list[tuple[float, int, int, int, float, float]] = []
    for i in range(0, len(task), CHUNK):
        t = task.subset(slice(i, i + CHUNK)).to("cpu")
        la, lb = _logprobs(pm_a, t), _logprobs(pm_b, t)
        nxt = t.clean_ids.roll(-1, dims=1)  # (B, T): the next token
        rows = torch.arange(len(t))
        nxt[rows, t.answer_pos] = t.answers[:, 0]
        valid = t.attention_mask.bool() & (torch.arange(t.seq_len)[None] <= t.answer_pos[:, None])
        valid &= nxt >= 0
        ga = la.gather(-1, nxt.clamp(min=0)[..., None])[..., 0]
        gb = lb.gather(-1, nxt.clamp(min=0)[..., None])[..., 0]
        for b, p in valid.nonzero().tolist():
            found.append((abs(float(ga[b, p] - gb[b, p])), i + b, p, int(nxt[b, p]), float(ga[b, p]), float(gb[b, p])))
    found.sort(key=lambda x: -x[0])
    return [
        {
            "prompt": prompt,
            "position": pos,
            "token": tokenizer.decode([tok]) if tokenizer is not None else f"#{tok}",
            "logprob_a": a,
            "logprob_b": b,
            "diff": a - b,
        }
        for _, prompt, pos, tok, a, b in found[:top]
    ]


def _edge_rows(graph, mask: Tensor, own: Tensor, other: Tensor) -> list[dict[str, Any]]:
    """``{"edge", "score_a", "score_b"}`` rows for the edges of ``mask`` (``own`` ranks them by ``|score|``)."""
    mask = mask.bool()
    if not bool(mask.any()):
        return []
    R = mask.shape[1]
    order = edge_ranking(mask, own, absolute=True).tolist()  # flat (s * R + r), untested (NaN) last
    return [
        {"edge": graph.edge_name(i // R, i % R), "score": float(own[i // R, i % R]),
         "score_other": float(other[i // R, i % R])}
        for i in order
    ]  # fmt: skip


def _node_rows(names, table: Tensor) -> list[dict[str, Any]]:
    rows = [
        {"node": n, "diff": float(d), "norm_a": float(a), "relative": float(d / a) if a > 0 else math.nan}
        for n, (d, a) in zip(names, table.tolist(), strict=True)
    ]
    return sorted(rows, key=lambda r: -r["diff"] if math.isfinite(r["diff"]) else math.inf)


def diff(
    model_a,
    model_b,
    task,
    *,
    tokenizer: Any = None,
    tokenizer_b: Any = None,
    method: str = "eap",
    top: int = 20,
    progress: bool = False,
    **discover_options: Any,
) -> ModelDiff:
    """Compare two models of the same structure on a task: circuits, weights, activations, predictions.

    Args:
        model_a, model_b: models (:class:`~circuitfind.engine.patchable.PatchableModel`, transformers models, or names
            for :func:`circuitfind.load_model`).
        task: a :class:`~circuitfind.tasks.Task` or a task name / file (names need a tokenizer).
        tokenizer: A's tokenizer (default: the one loaded with A); also used for the task and token text.
        tokenizer_b: B's tokenizer (default: the one loaded with B); checked against A's when both are known.
        method: the discovery method both circuits are found with (:func:`circuitfind.discover`).
        top: log-prob differences kept.
        progress: progress bars of the two discoveries.
        **discover_options: passed to :func:`circuitfind.discover` for both (``n_edges=``, ``target=``,
            ``threshold=``, ``metric=``, ``ablation=``...).

    Returns:
        a :class:`ModelDiff`.

    Raises:
        ConfigError: the models differ in graph, width, vocabulary or tokenizer.

    Example:
        >>> d = diff(pm, pm, task, n_edges=5)
        >>> d.jaccard, d.only_a, d.weights[0]["diff"]
        (1.0, [], 0.0)
    """
    check_int(top, "top", minimum=0, what="log-prob differences kept")
    pm_a, tokenizer = resolve_model(model_a, tokenizer)
    pm_b, tokenizer_b = resolve_model(model_b, tokenizer_b)
    check_comparable(pm_a, pm_b, tokenizer, tokenizer_b)
    task = resolve_task(task, tokenizer)
    circuits = [discover(pm, task, method=method, progress=progress, **discover_options) for pm in (pm_a, pm_b)]
    ma, mb = (c.mask.bool().cpu() & pm_a.graph.edge_mask for c in circuits)
    sa, sb = (c.scores.detach().cpu().double() for c in circuits)
    union = int((ma | mb).sum())
    g = pm_a.graph
    rows_a, rows_b = _edge_rows(g, ma & ~mb, sa, sb), _edge_rows(g, mb & ~ma, sb, sa)
    only_a = [{"edge": r["edge"], "score_a": r["score"], "score_b": r["score_other"]} for r in rows_a]
    only_b = [{"edge": r["edge"], "score_a": r["score_other"], "score_b": r["score"]} for r in rows_b]
    with torch.no_grad():
        weights = _node_rows(g.sender_names, weight_diffs(pm_a, pm_b))
        acts = _node_rows(g.sender_names, activation_diffs(pm_a, pm_b, task))
        lps = logprob_diffs(pm_a, pm_b, task, tokenizer, top=top)
    return ModelDiff(
        model_a=circuits[0].model,
        model_b=circuits[1].model,
        task=task.name,
        circuit_a=circuits[0],
        circuit_b=circuits[1],
        jaccard=int((ma & mb).sum()) / union if union else 1.0,
        only_a=only_a,
        only_b=only_b,
        weights=weights,
        activations=acts,
        logprobs=lps,
        settings={"method": method, "n_prompts": len(task), **{k: repr(v) for k, v in discover_options.items()}},
    )
