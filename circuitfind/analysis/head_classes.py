"""IOI head classes by path patching, as the IOI paper (Wang et al. 2022) found them by hand.

Every head gets *measures* (columns of :data:`MEASURES`) and, from them, one *score* per class
(:data:`CLASSES`); a head is assigned the class with the highest score of at least 1, or none.

Path effects are edge-mask path patches (:class:`~circuitfind.analysis.path_patching.PathPatcher`) under the
task's ablation (resample: the ABC prompts), as the drop of the logit difference when the edges are removed,
divided by the model's span ``m(full) - m(empty)`` (so 0.1 is a tenth of what the whole model does). The steps
follow the paper, each using the heads the step before found:

1. ``direct``: the edges ``h -> logits`` (the direct path through the residual stream);
2. ``backup``: ``direct`` again with the name movers removed as nodes (``Graph.without_nodes``), minus
   ``direct``: the effect that appears when the name movers are gone;
3. ``via_name_mover_q``: the edges ``h -> NM<q>`` into every name mover's query;
4. ``via_s_inhibition_kv``: the edges ``h -> SI<k>``, ``h -> SI<v>`` into every S-inhibition head;
5. ``via_induction_kv``: the edges ``h -> IND<k>``, ``h -> IND<v>`` into every induction head.

Attention signatures are read on the clean prompts (mean over prompts) at the positions
:func:`~circuitfind.tasks.ioi_positions` labels: ``attn_io`` (END -> IO), ``attn_s`` (END -> S1 plus
END -> S2), ``attn_s2_s1`` (S2 -> S1), ``attn_s2_s1plus1`` (S2 -> the token after S1) and ``attn_prev``
(the token after S1 -> S1). ``copying`` and ``anti_copying`` are the OV-circuit scores of
:func:`~circuitfind.analysis.roles.copying_scores` (own logit in the top / bottom 5).

A class's score is the smallest of ``value / threshold`` over its conditions (:data:`RULES`), so a score of
at least 1 means every condition holds; thresholds are :class:`ClassThresholds`. Effects enter with their
sign (the negative name mover's ``direct`` negated). A head takes the passing class with the highest score,
except that a (negative) name mover is never a backup name mover.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from circuitfind.analysis.activations import attention_patterns
from circuitfind.analysis.path_patching import PathPatcher
from circuitfind.analysis.roles import copying_scores
from circuitfind.engine.patchable import PatchableModel, resolve_model
from circuitfind.errors import ConfigError
from circuitfind.graph import Node, NodeKind
from circuitfind.problem import Problem, prepare_problem
from circuitfind.tasks import Task, ioi_positions, resolve_task

__all__ = ["CLASSES", "MEASURES", "RULES", "ClassThresholds", "HeadClasses", "head_classes"]

CLASSES: MappingProxyType[str, str] = MappingProxyType(
    {
        "name_mover": "direct effect on the logit difference, attends END -> IO, copies what it attends to",
        "negative_name_mover": "negative direct effect, attends END -> IO, suppresses what it attends to",
        "backup_name_mover": "direct effect that appears when the name movers are removed",
        "s_inhibition": "effect through the name movers' queries, attends END -> S",
        "induction": "effect through the S-inhibition heads' keys/values, attends S2 -> the token after S1",
        "duplicate_token": "effect through the S-inhibition heads' keys/values, attends S2 -> S1",
        "previous_token": "effect through the induction heads' keys/values, attends from the token after S1 to S1",
    }
)
"""The IOI paper's head classes, with what defines each."""

MEASURES: MappingProxyType[str, str] = MappingProxyType(
    {
        "direct": "path patch h -> logits (fraction of m(full) - m(empty))",
        "direct_without_nm": "path patch h -> logits with the name movers removed as nodes",
        "backup": "direct_without_nm - direct",
        "via_name_mover_q": "path patch h -> the name movers' queries",
        "via_s_inhibition_kv": "path patch h -> the S-inhibition heads' keys and values",
        "via_induction_kv": "path patch h -> the induction heads' keys and values",
        "attn_io": "attention END -> IO",
        "attn_s": "attention END -> S1 plus END -> S2",
        "attn_s2_s1": "attention S2 -> S1",
        "attn_s2_s1plus1": "attention S2 -> the token after S1",
        "attn_prev": "attention from the token after S1 to S1",
        "copying": "OV circuit: fraction of tokens whose own logit is in the top 5",
        "anti_copying": "OV circuit: fraction of tokens whose own logit is in the bottom 5",
    }
)
"""The measured columns of :class:`HeadClasses`, with how each is measured."""

RULES: MappingProxyType[str, tuple[tuple[str, str, int], ...]] = MappingProxyType(
    {
        "name_mover": (("direct", "effect", 1), ("attn_io", "attention", 1), ("copying", "copying", 1)),
        "negative_name_mover": (("direct", "effect", -1), ("attn_io", "attention", 1), ("anti_copying", "copying", 1)),
        "backup_name_mover": (("backup", "effect", 1),),
        "s_inhibition": (("via_name_mover_q", "effect", 1), ("attn_s", "attention", 1)),
        "induction": (("via_s_inhibition_kv", "effect", 1), ("attn_s2_s1plus1", "attention", 1)),
        "duplicate_token": (("via_s_inhibition_kv", "effect", 1), ("attn_s2_s1", "attention", 1)),
        "previous_token": (("via_induction_kv", "effect", 1), ("attn_prev", "attention", 1)),
    }
)
"""Class -> its conditions ``(measure, threshold name, sign)``: ``sign * measure >= threshold`` each."""


@dataclass(frozen=True)
class ClassThresholds:
    """The thresholds of :data:`RULES` (see the README for how the defaults were chosen).

    Attributes:
        effect: a path effect, as a fraction of the model's span ``m(full) - m(empty)``.
        attention: a mean attention probability.
        copying: an OV copying (or anti-copying) score; random heads score about ``5 / sample``.
    """

    effect: float = 0.04
    attention: float = 0.2
    copying: float = 0.3

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"threshold {name} must be a positive number; got {value!r}")


@dataclass(frozen=True)
class HeadClasses:
    """The "wiki of heads": every head's measures, class scores and assigned class.

    Attributes:
        n_layers, n_heads: the model's blocks and query heads.
        measures: :data:`MEASURES` name -> ``(L, H)`` float tensor (NaN: not measurable, e.g. no path).
        scores: :data:`CLASSES` name -> ``(L, H)``; at least 1 means the head meets every condition.
        classes: per head (layer-major), its class or ``""``.
        thresholds: the thresholds used.
        settings: prompts, ablation, the model's span and logit differences, sample sizes.

    Example:
        >>> measures = {"direct": torch.tensor([[0.5, 0.0]])}
        >>> hc = HeadClasses(1, 2, measures, {}, ("name_mover", ""), ClassThresholds(), {})
        >>> hc.members("name_mover"), hc.rows()[0]["class"]
        (['a0.h0'], 'name_mover')
    """

    n_layers: int
    n_heads: int
    measures: dict[str, Tensor]
    scores: dict[str, Tensor]
    classes: tuple[str, ...]
    thresholds: ClassThresholds
    settings: dict[str, Any]

    def head_name(self, i: int) -> str:
        return Node(NodeKind.HEAD, *divmod(i, self.n_heads)).name

    def members(self, cls: str) -> list[str]:
        """The heads assigned ``cls``, in layer-then-head order."""
        return [self.head_name(i) for i, c in enumerate(self.classes) if c == cls]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: ``head``, ``layer``, ``index``, ``class``, the measures and ``score_<class>``."""
        out = []
        for i, c in enumerate(self.classes):
            layer, h = divmod(i, self.n_heads)
            row: dict[str, Any] = {"head": self.head_name(i), "layer": layer, "index": h, "class": c}
            row.update({m: float(t[layer, h]) for m, t in self.measures.items()})
            row.update({f"score_{k}": float(t[layer, h]) for k, t in self.scores.items()})
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: classes, measures (with docs), thresholds, settings and the rows (NaN as None)."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows()]
        return {
            "classes": dict(CLASSES),
            "measures": {m: MEASURES[m] for m in self.measures},
            "thresholds": asdict(self.thresholds),
            "settings": self.settings,
            "members": {c: self.members(c) for c in CLASSES},
            "rows": rows,
        }

    def to_csv(self) -> str:
        """The rows as CSV text (a header, then one line per head; NaN as an empty cell)."""
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        return buf.getvalue()


def class_score(cls: str, measures: dict[str, Tensor], thresholds: ClassThresholds) -> Tensor:
    """``(L, H)``: the smallest ``sign * value / threshold`` over the conditions of ``cls`` (NaN propagates)."""
    th = asdict(thresholds)
    parts = [sign * measures[m] / th[kind] for m, kind, sign in RULES[cls]]
    out = parts[0]
    for p in parts[1:]:
        out = torch.minimum(out, p)
    return out


def _signatures(pm, task, positions: dict[str, Tensor], sample: int, seed: int) -> dict[str, Tensor]:
    """The attention and OV measures of every head, ``(L, H)`` each."""
    pats = attention_patterns(pm, task.clean_ids, task.attention_mask).float().cpu()  # (L, B, H, T, T)
    rows = torch.arange(pats.shape[1])
    io_, s1, s2, end = (positions[k] for k in ("IO", "S1", "S2", "END"))

    def att(q: Tensor, k: Tensor) -> Tensor:  # mean over prompts of attention q -> k, (L, H)
        return pats[:, rows, :, q, k].mean(0)

    return {
        "attn_io": att(end, io_),
        "attn_s": att(end, s1) + att(end, s2),
        "attn_s2_s1": att(s2, s1),
        "attn_s2_s1plus1": att(s2, s1 + 1),
        "attn_prev": att(s1 + 1, s1),
        "copying": copying_scores(pm, sample=sample, seed=seed),
        "anti_copying": copying_scores(pm, sample=sample, seed=seed, negative=True),
    }


def head_classes(
    model,
    task,
    *,
    tokenizer: Any = None,
    thresholds: ClassThresholds | None = None,
    ablation: str = "resample",
    copy_sample: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> HeadClasses:
    """Classify every head of a model on an IOI task by path patching (see the module docstring).

    Args:
        model: a :class:`~circuitfind.engine.patchable.PatchableModel`, a transformers model, or a name for
            :func:`circuitfind.load_model`.
        task: an IOI :class:`~circuitfind.tasks.Task` (e.g. ``get_task("ioi", tok, n=20)``) or ``"ioi"`` (then
            ``tokenizer`` is needed); its train split is used, and every prompt must carry IO and S twice.
        tokenizer: for a task given by name.
        thresholds: the class rules' thresholds (default :class:`ClassThresholds`).
        ablation: what removed edges carry (``resample``: the ABC prompts; ``mean``; ``zero``).
        copy_sample: tokens sampled for the OV copying scores.
        seed: seed of the copying sample.
        progress: show a progress bar over the path patches.

    Returns:
        the :class:`HeadClasses` table.

    Example:
        >>> hc = head_classes(pm, ioi_task)  # doctest: +SKIP
        >>> hc.members("name_mover")  # doctest: +SKIP
        ['a9.h6', 'a9.h9', 'a10.h0']
    """
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer).train()
    thresholds = ClassThresholds() if thresholds is None else thresholds
    positions = ioi_positions(task)
    measures = _signatures(pm, task, positions, copy_sample, seed)
    problem = _problem(pm, task, ablation)
    bar = _bar(progress)
    try:
        settings = _path_steps(PathPatcher(problem, progress=bar), measures, thresholds)
    finally:
        if bar is not None:
            bar.close()
    scores = {c: class_score(c, measures, thresholds) for c in CLASSES}
    settings.update({"n_prompts": len(task), "ablation": ablation, "copy_sample": copy_sample, "seed": seed})
    g = pm.graph
    return HeadClasses(g.n_layers, g.n_heads, measures, scores, _assign(scores), thresholds, settings)


def _problem(pm: PatchableModel, task: Task, ablation: str) -> Problem:
    """The task on the model for path patching: its ablation and the logit difference on the answer columns."""
    return prepare_problem(pm, task, metric="logit_diff", ablation=ablation)[0]


def _path_steps(pp: PathPatcher, measures: dict[str, Tensor], thresholds: ClassThresholds) -> dict[str, Any]:
    """Steps 1-5 of the module docstring: fills ``measures`` with the path effects; returns the span."""
    g = pp.graph
    heads = [g.head_sender(layer, h) for layer in range(g.n_layers) for h in range(g.n_heads)]
    full = g.full_mask()
    m_full, m_empty = -pp.loss(full), -pp.loss(torch.zeros_like(full))
    span = m_full - m_empty
    if not span > 0:
        raise ConfigError(
            f"the model's logit difference on the task ({m_full:.4g}) is not above the ablated run's "
            f"({m_empty:.4g}): it does not do IOI on these prompts, so no head can explain it"
        )

    def effect(base: Tensor, receivers: list[int]) -> Tensor:  # (L, H) fractions of the span
        if pp.progress is not None:  # each step's size is known once the step before has found its heads
            pp.progress.total += pp.n_candidates(base, heads, receivers)
            pp.progress.refresh()
        return (pp.effects(base, heads, receivers)[heads] / span).float().reshape(g.n_layers, g.n_heads)

    def members(cls: str) -> list[tuple[int, int]]:
        return [tuple(ix) for ix in (class_score(cls, measures, thresholds) >= 1).nonzero().tolist()]

    def inputs(cls: str, channels: str) -> list[int]:
        return [g.head_receiver(layer, h, c) for layer, h in members(cls) for c in channels]

    measures["direct"] = effect(full, [g.logits_receiver])
    movers = [g.head_sender(layer, h) for layer, h in members("name_mover")]
    measures["direct_without_nm"] = effect(g.without_nodes(full, movers), [g.logits_receiver])
    measures["backup"] = measures["direct_without_nm"] - measures["direct"]
    measures["via_name_mover_q"] = effect(full, inputs("name_mover", "q"))
    measures["via_s_inhibition_kv"] = effect(full, inputs("s_inhibition", "kv"))
    measures["via_induction_kv"] = effect(full, inputs("induction", "kv"))
    return {"metric_full": m_full, "metric_empty": m_empty, "span": span}


def _assign(scores: dict[str, Tensor]) -> tuple[str, ...]:
    """Per head: the class with the highest score of at least 1 (the first of :data:`CLASSES` on ties), or "".

    A head that passes the name mover or negative name mover rule is not a backup name mover: a negative name
    mover whose suppression shrinks once the name movers are gone also shows a positive ``backup`` effect."""
    names = list(CLASSES)
    stacked = torch.stack([scores[c].flatten() for c in names])  # (C, L*H)
    stacked = torch.nan_to_num(stacked, nan=-math.inf)
    mover = (stacked[names.index("name_mover")] >= 1) | (stacked[names.index("negative_name_mover")] >= 1)
    stacked[names.index("backup_name_mover"), mover] = -math.inf
    best, which = stacked.max(0)
    return tuple(names[int(w)] if float(b) >= 1 else "" for b, w in zip(best, which, strict=True))


def _bar(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, desc="head classes", unit="patch", dynamic_ncols=True)
